//! The client's deadlines between requests, kept by the connection's IO on one timer for the
//! connection's life ([`crate::deadline`]) instead of hyper's new timer per request (which cost
//! about 1.5k instructions a request, 6% of the proxy's user-space work).
//!
//! HTTP/1: from accept, the first request head must be complete within `timeouts.header_read`.
//! From the end of each response the connection may idle for `limits.idle_timeout`; once the next
//! head's first bytes arrive, it must be complete within `timeouts.header_read`. No deadline runs
//! while a request is answered (the request's own timeouts apply) or after an upgrade.
//!
//! HTTP/2: the preface is a head like any other (`timeouts.header_read` from accept). After it, a
//! connection with no stream open for `limits.idle_timeout` is asked to close (a GOAWAY, through
//! [`Conn::idle`](super::Conn)); hyper's keep-alive PING notices a peer that vanished.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::deadline::Deadline;

use super::Conn;

/// Where a connection is between requests, as its service sees it: answering a request, waiting
/// for the next head (since when), or untimed for good.
///
/// The wait's start is recorded when it begins (the end of a response), not when the IO next
/// reads: after a response hyper reads again only once something wakes the connection.
///
/// `Relaxed` for HTTP/1: the service, the response body and the IO are all polled by the
/// connection's own task, so the phase is read where it was written, and it publishes nothing else.
/// HTTP/2 streams run on their own tasks: they count themselves in `streams`, and the last one out
/// publishes when the connection went idle.
pub(super) struct Phase {
    /// When the connection was accepted: the origin of `wait_started`.
    base: Instant,
    flags: AtomicU8,
    /// Nanoseconds from `base` to the start of the current (or last) wait for a head, or (HTTP/2)
    /// to when the last stream ended.
    wait_started: AtomicU64,
    /// HTTP/2 streams being answered.
    streams: AtomicU32,
}

/// What the IO should time now.
enum Now {
    /// A wait for a head, begun this long after accept.
    Waiting(u64),
    Answering,
    Untimed,
}

impl Phase {
    const ANSWERING: u8 = 1;
    const UNTIMED: u8 = 2;

    /// Waiting for the first head since accept.
    pub(super) fn new() -> Self {
        Self {
            base: Instant::now(),
            flags: AtomicU8::new(0),
            wait_started: AtomicU64::new(0),
            streams: AtomicU32::new(0),
        }
    }

    fn since_base(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn stream_opened(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    fn stream_closed(&self) {
        self.wait_started
            .store(self.since_base(), Ordering::Relaxed);
        // Release: whoever sees no stream open sees when the last one ended.
        self.streams.fetch_sub(1, Ordering::Release);
    }

    /// Since when (after `base`) an HTTP/2 connection has had no stream open; `None` while one is.
    fn idle_since(&self) -> Option<u64> {
        (self.streams.load(Ordering::Acquire) == 0)
            .then(|| self.wait_started.load(Ordering::Relaxed))
    }

    fn answering(&self) {
        let flags = self.flags.load(Ordering::Relaxed);
        self.flags.store(flags | Self::ANSWERING, Ordering::Relaxed);
    }

    fn waiting(&self) {
        self.wait_started
            .store(self.since_base(), Ordering::Relaxed);
        let flags = self.flags.load(Ordering::Relaxed);
        self.flags
            .store(flags & !Self::ANSWERING, Ordering::Relaxed);
    }

    fn untimed(&self) {
        let flags = self.flags.load(Ordering::Relaxed);
        self.flags.store(flags | Self::UNTIMED, Ordering::Relaxed);
    }

    fn now(&self) -> Now {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & Self::UNTIMED != 0 {
            Now::Untimed
        } else if flags & Self::ANSWERING != 0 {
            Now::Answering
        } else {
            Now::Waiting(self.wait_started.load(Ordering::Relaxed))
        }
    }
}

/// Marks the connection as answering a request (of `version`) until the guard is dropped: with
/// the response body returned by [`answered`] once its last byte is out, or at once if the
/// request is dropped unanswered (an HTTP/2 stream the client reset).
pub(super) fn answering(conn: Arc<Conn>, version: Version) -> Answering {
    let h2 = version == Version::HTTP_2;
    if h2 {
        conn.phase.stream_opened();
    } else {
        conn.phase.answering();
    }
    Answering {
        conn,
        h2,
        upgraded: false,
    }
}

/// A request's part in its connection's phase: dropped, the connection starts waiting for its
/// next head (HTTP/1) or counts one stream fewer (HTTP/2).
pub(super) struct Answering {
    conn: Arc<Conn>,
    h2: bool,
    /// The HTTP/1 connection became a tunnel: nothing is timed any more.
    upgraded: bool,
}

impl Answering {
    /// The connection the request came on.
    pub(super) fn conn(&self) -> &Conn {
        &self.conn
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if self.h2 {
            self.conn.phase.stream_closed();
        } else if !self.upgraded {
            self.conn.phase.waiting();
        }
    }
}

/// Wraps a response so that its request's [`Answering`] ends with its last byte. A `101` ends
/// deadlines on an HTTP/1 connection: what follows is the tunnel.
pub(super) fn answered<B>(
    response: Response<B>,
    mut answering: Answering,
) -> Response<Answered<B>> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS && !answering.h2 {
        answering.conn.phase.untimed();
        answering.upgraded = true;
    }
    response.map(|body| Answered {
        body,
        _answering: answering,
    })
}

/// A response body that holds its request's [`Answering`] (hyper drops it once it has written
/// the last frame, or given up on the request).
pub(super) struct Answered<B> {
    body: B,
    _answering: Answering,
}

impl<B: Body + Unpin> Body for Answered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The HTTP/2 connection preface: a connection that opens with it has no request heads to time.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes said about the protocol.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    /// This many bytes of the HTTP/2 preface so far, nothing else.
    Preface(usize),
    Http1,
    Http2,
}

/// A client connection's IO that fails a read with `TimedOut` when an HTTP/1 connection has waited
/// too long for a request head, and asks an idle HTTP/2 connection to close.
pub(super) struct HeadDeadline<T> {
    io: T,
    conn: Arc<Conn>,
    timeouts: Timeouts,
    deadline: Deadline,
    /// The wait (its start, as in [`Phase`]) the deadline was set for.
    armed_for: Option<u64>,
    /// The wait in which the next head's first bytes arrived (its deadline is then the head's).
    head_begun: Option<u64>,
    sniffed: Sniffed,
}

/// The bounds [`HeadDeadline`] keeps.
#[derive(Clone, Copy)]
pub(super) struct Timeouts {
    /// For a request head, from its first byte (from accept for the first).
    pub header_read: Duration,
    /// For a connection carrying no request.
    pub idle: Duration,
}

impl<T> HeadDeadline<T> {
    pub(super) fn new(io: T, conn: Arc<Conn>, timeouts: Timeouts) -> Self {
        Self {
            io,
            conn,
            timeouts,
            deadline: Deadline::default(),
            armed_for: None,
            head_begun: None,
            sniffed: Sniffed::Preface(0),
        }
    }

    fn sniff(&mut self, read: &[u8]) {
        let Sniffed::Preface(matched) = self.sniffed else {
            return;
        };
        let want = &PREFACE[matched..];
        let n = read.len().min(want.len());
        self.sniffed = if read[..n] != want[..n] {
            Sniffed::Http1
        } else if matched + n == PREFACE.len() {
            // The preface's deadline is done with; the idle one starts.
            self.armed_for = None;
            Sniffed::Http2
        } else {
            Sniffed::Preface(matched + n)
        };
    }

    /// Bytes arrived: if they begin the next head after an idle wait, the head's own (usually
    /// shorter) deadline runs from now.
    fn received(&mut self) {
        if self.sniffed == Sniffed::Http2 {
            return;
        }
        if let Now::Waiting(started) = self.conn.phase.now() {
            if started != 0 && self.head_begun != Some(started) {
                self.head_begun = Some(started);
                self.armed_for = Some(started);
                self.deadline
                    .set(Instant::now() + self.timeouts.header_read);
            }
        }
    }

    /// Called when a read finds nothing to read: ready with the error once the connection has
    /// waited too long for a head. While a request is answered it keeps a timer pending all the
    /// same (moving it on whenever it fires), because that timer is what wakes the connection to
    /// notice the wait after the response: hyper reads again only when woken.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.sniffed == Sniffed::Http2 {
            self.poll_idle_h2(cx);
            return Poll::Pending;
        }
        match self.conn.phase.now() {
            Now::Untimed => Poll::Pending,
            Now::Answering => {
                let Timeouts { header_read, idle } = self.timeouts;
                if idle < header_read {
                    // The timer may be armed for the first head, later than this request's end
                    // plus the idle bound (rare: by default the idle bound is the longer).
                    let latest = Instant::now() + idle;
                    if self.deadline.at().is_none_or(|at| at > latest) {
                        self.deadline.set(latest);
                    }
                }
                self.keep_awake(cx, header_read.min(idle));
                Poll::Pending
            }
            Now::Waiting(started) => {
                let start = self.conn.phase.base + Duration::from_nanos(started);
                let Timeouts { header_read, idle } = self.timeouts;
                if self.armed_for != Some(started) {
                    self.armed_for = Some(started);
                    // The first head is timed from accept. After a response, the timer is armed
                    // for the shorter bound first: deadlines move only forward (see `deadline`),
                    // and the next head's usually comes before the idle one.
                    let first = if started == 0 {
                        header_read
                    } else {
                        header_read.min(idle)
                    };
                    self.deadline.set(start + first);
                }
                ready!(self.deadline.poll_passed(cx));
                let idling = started != 0 && self.head_begun != Some(started);
                if idling && start + idle > Instant::now() {
                    self.deadline.set(start + idle);
                    ready!(self.deadline.poll_passed(cx));
                }
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    if idling {
                        "no request within limits.idle_timeout"
                    } else {
                        "no complete request head within timeouts.header_read"
                    },
                ))
            }
        }
    }

    /// Keeps a timer pending that fires every `period`, so that the connection is polled again.
    fn keep_awake(&mut self, cx: &mut Context<'_>, period: Duration) {
        if self.deadline.poll_passed(cx).is_ready() {
            self.deadline.set(Instant::now() + period);
            let _ = self.deadline.poll_passed(cx);
        }
    }

    /// HTTP/2: once no stream has been open for the idle timeout, asks the connection to close
    /// (once). While streams are open the timer still fires each idle period to look again.
    fn poll_idle_h2(&mut self, cx: &mut Context<'_>) {
        if self.armed_for == Some(u64::MAX) {
            return;
        }
        let Some(since) = self.conn.phase.idle_since() else {
            self.armed_for = None;
            self.keep_awake(cx, self.timeouts.idle);
            return;
        };
        if self.armed_for != Some(since) {
            self.armed_for = Some(since);
            let start = self.conn.phase.base + Duration::from_nanos(since);
            self.deadline.set(start + self.timeouts.idle);
        }
        if self.deadline.poll_passed(cx).is_ready() {
            self.armed_for = Some(u64::MAX);
            self.conn.idle.notify_one();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if polled.is_ready() {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.sniff(read);
                this.received();
            }
            return polled;
        }
        this.poll_expired(cx).map(Err)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
