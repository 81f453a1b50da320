//! The client's deadline for each request head (`timeouts.header_read`), kept by the connection's
//! IO on one timer for the connection's life ([`crate::deadline`]) instead of hyper's new timer
//! per request (which cost about 1.5k instructions a request, 6% of the proxy's user-space work).
//!
//! The deadline runs while an HTTP/1 connection waits for a request head: from accept, and from the
//! end of each response, until the request reaches the service. It is off while a request is
//! answered (the request's own timeouts apply), after an upgrade, and on HTTP/2.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Response, StatusCode};
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
/// `Relaxed` throughout: on HTTP/1 the service, the response body and the IO are all polled by the
/// connection's own task, so the phase is read where it was written, and it publishes nothing else.
/// (HTTP/2 streams run elsewhere, but the IO ignores the phase there.)
pub(super) struct Phase {
    /// When the connection was accepted: the origin of `wait_started`.
    base: Instant,
    flags: AtomicU8,
    /// Nanoseconds from `base` to the start of the current (or last) wait for a head.
    wait_started: AtomicU64,
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
        }
    }

    fn answering(&self) {
        let flags = self.flags.load(Ordering::Relaxed);
        self.flags.store(flags | Self::ANSWERING, Ordering::Relaxed);
    }

    fn waiting(&self) {
        let started = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.wait_started.store(started, Ordering::Relaxed);
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

/// Marks the connection as answering a request, until the response returned by
/// [`answered`] has been sent (or dropped).
pub(super) fn answering(conn: &Conn) {
    conn.phase.answering();
}

/// Wraps a response so that the connection starts waiting for its next head once the last byte is
/// out. A `101` ends head deadlines on the connection: what follows is the tunnel.
pub(super) fn answered<B>(response: Response<B>, conn: Arc<Conn>) -> Response<Answered<B>> {
    let conn = if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        conn.phase.untimed();
        None
    } else {
        Some(conn)
    };
    response.map(|body| Answered { body, conn })
}

/// A response body that ends its connection's answering phase when it is dropped (hyper drops it
/// once it has written the last frame, or given up on the connection).
pub(super) struct Answered<B> {
    body: B,
    conn: Option<Arc<Conn>>,
}

impl<B> Drop for Answered<B> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.phase.waiting();
        }
    }
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

/// A client connection's IO that fails a read with `TimedOut` when the connection has waited
/// longer than the timeout for a request head.
pub(super) struct HeadDeadline<T> {
    io: T,
    conn: Arc<Conn>,
    timeout: Duration,
    deadline: Deadline,
    /// The wait (its start, as in [`Phase`]) the deadline was set for.
    armed_for: Option<u64>,
    sniffed: Sniffed,
}

impl<T> HeadDeadline<T> {
    pub(super) fn new(io: T, conn: Arc<Conn>, timeout: Duration) -> Self {
        Self {
            io,
            conn,
            timeout,
            deadline: Deadline::default(),
            armed_for: None,
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
            Sniffed::Http2
        } else {
            Sniffed::Preface(matched + n)
        };
    }

    /// Called when a read finds nothing to read: ready with the error once the connection has
    /// waited too long for a head. While a request is answered it keeps a timer pending all the
    /// same (moving it on whenever it fires), because that timer is what wakes the connection to
    /// notice the wait after the response: hyper reads again only when woken.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.sniffed == Sniffed::Http2 {
            return Poll::Pending;
        }
        match self.conn.phase.now() {
            Now::Untimed => Poll::Pending,
            Now::Answering => {
                if self.deadline.poll_passed(cx).is_ready() {
                    self.deadline.set(Instant::now() + self.timeout);
                    let _ = self.deadline.poll_passed(cx);
                }
                Poll::Pending
            }
            Now::Waiting(started) => {
                if self.armed_for != Some(started) {
                    self.armed_for = Some(started);
                    let start = self.conn.phase.base + Duration::from_nanos(started);
                    self.deadline.set(start + self.timeout);
                }
                ready!(self.deadline.poll_passed(cx));
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete request head within timeouts.header_read",
                ))
            }
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
            this.sniff(&buf.filled()[before..]);
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
