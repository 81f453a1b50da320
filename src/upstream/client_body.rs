//! The client's request body on its way upstream. It must keep arriving: a pause longer than
//! `timeouts.body_read` between two reads is the client's fault (408), not the endpoint's. And it
//! says when it has all been read, so that the response-head timeout runs from the end of the
//! request: a slow but moving upload is never cut off as an upstream timeout.
//!
//! Sent on an HTTP/2 stream, it can also come back: it keeps what it has passed on (up to a
//! limit), and when hyper drops it without an answer it returns, rewound, so that a stream the
//! endpoint refused unprocessed (`REFUSED_STREAM`, a `GOAWAY` below it) goes to another endpoint
//! with its body whole — gRPC calls are POSTs whose bodies stream.

use std::collections::VecDeque;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// A request body's error: the client's connection's, or a stall.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body went past `limits.max_request_body` (413: the client's).
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than limits.max_request_body ({0} bytes)")]
pub struct TooLarge(pub u64);

/// A client's request body, watched.
#[derive(Debug)]
pub struct ClientBody {
    /// `None` only in a body that has handed its stream back (see [`ClientBody::keep_for_return`]).
    inner: Option<Incoming>,
    /// Bytes the body may still bring, and the limit they came from (see [`ClientBody::limit`]).
    allowed: Option<(u64, u64)>,
    /// The longest pause between two frames; set when the request is prepared.
    idle: Option<Duration>,
    /// Armed while a frame is awaited (allocated on the first wait only).
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    /// Set once the last frame has been read (see [`ClientBody::watch_end`]).
    ended: Option<Arc<AtomicBool>>,
    /// What was passed on, to give back; `None` on every path but HTTP/2's.
    tape: Option<Box<Tape>>,
    /// Bytes read from the client, counted for the access log (`None` when it is off).
    received: Option<Arc<AtomicU64>>,
}

/// The frames a body passed on, and where it returns to if it is dropped unanswered.
#[derive(Debug, Default)]
struct Tape {
    /// Frames to pass on again before reading on (a returned body's).
    replay: VecDeque<Bytes>,
    replay_trailers: Option<HeaderMap>,
    kept: Vec<Bytes>,
    kept_trailers: Option<HeaderMap>,
    /// Bytes passed on (kept or not), and whether trailers were.
    passed: usize,
    passed_trailers: bool,
    limit: usize,
    /// More than `limit` passed on: the body can no longer come back whole.
    overflowed: bool,
    back: Option<oneshot::Sender<ClientBody>>,
}

impl Tape {
    /// Records a frame passed on; stops once nobody waits for a return (an answer arrived).
    fn keep(&mut self, frame: &Frame<Bytes>) {
        let data = frame.data_ref();
        self.passed += data.map_or(0, Bytes::len);
        self.passed_trailers |= frame.is_trailers();
        if self.overflowed {
            return;
        }
        if self.passed > self.limit || self.back.as_ref().is_none_or(oneshot::Sender::is_closed) {
            self.overflow();
            return;
        }
        match (data, frame.trailers_ref()) {
            (Some(data), _) => self.kept.push(data.clone()),
            (None, Some(trailers)) => self.kept_trailers = Some(trailers.clone()),
            (None, None) => {}
        }
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.kept = Vec::new();
        self.kept_trailers = None;
    }

    fn next_replayed(&mut self) -> Option<Frame<Bytes>> {
        match self.replay.pop_front() {
            Some(data) => Some(Frame::data(data)),
            None => self.replay_trailers.take().map(Frame::trailers),
        }
    }

    fn has_replay(&self) -> bool {
        !self.replay.is_empty() || self.replay_trailers.is_some()
    }
}

impl ClientBody {
    pub fn new(inner: Incoming) -> Self {
        Self {
            inner: Some(inner),
            allowed: None,
            idle: None,
            timer: None,
            waiting: false,
            ended: None,
            tape: None,
            received: None,
        }
    }

    /// From now on, keeps up to `limit` bytes of what is passed on; if the body is then dropped
    /// before the receiver is, it comes back through the receiver, rewound to its start. A body
    /// that passed on more than `limit` does not come back.
    pub fn keep_for_return(&mut self, limit: usize) -> oneshot::Receiver<ClientBody> {
        let (back, returned) = oneshot::channel();
        let tape = self.tape.get_or_insert_with(Box::default);
        tape.limit = limit;
        tape.back = Some(back);
        // Nothing passed on yet: whatever stopped the recording before lost nothing.
        if tape.passed == 0 && !tape.passed_trailers {
            tape.overflowed = false;
        }
        returned
    }

    /// The body fails with [`TooLarge`] once more than `max` bytes of it have arrived.
    /// Adds the length of every data frame read from the client to `received`.
    pub fn count_into(&mut self, received: Arc<AtomicU64>) {
        self.received = Some(received);
    }

    pub fn limit(&mut self, max: u64) {
        self.allowed = Some((max, max));
    }

    /// Counts `frame` against the limit in `allowed`: an error once the body has gone past it.
    fn allow(allowed: &mut Option<(u64, u64)>, frame: &Frame<Bytes>) -> Result<(), BodyError> {
        let (Some((left, max)), Some(data)) = (allowed.as_mut(), frame.data_ref()) else {
            return Ok(());
        };
        *left = left.checked_sub(data.len() as u64).ok_or(TooLarge(*max))?;
        Ok(())
    }

    /// From now on, a pause longer than `idle` between two frames fails the body.
    pub fn set_idle_timeout(&mut self, idle: Duration) {
        self.idle = Some(idle);
    }

    /// A flag that is set once the whole body has been read (at once if it has been).
    pub fn watch_end(&mut self) -> Arc<AtomicBool> {
        let ended = Arc::new(AtomicBool::new(self.is_end_stream()));
        self.ended = Some(ended.clone());
        ended
    }

    fn end(&self) {
        if let Some(ended) = &self.ended {
            // Release: pairs with the transport's Acquire load of the same flag.
            ended.store(true, Ordering::Release);
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(tape) = this.tape.as_deref_mut() {
            if let Some(frame) = tape.next_replayed() {
                tape.keep(&frame);
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(&mut *inner).poll_frame(cx) {
            this.waiting = false;
            if let Some(Ok(frame)) = &frame {
                Self::allow(&mut this.allowed, frame)?;
                if let (Some(received), Some(data)) = (&this.received, frame.data_ref()) {
                    // Relaxed: a count read once the exchange has ended.
                    received.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            if frame.is_none() || inner.is_end_stream() {
                this.end();
            }
            if let (Some(tape), Some(Ok(frame))) = (this.tape.as_deref_mut(), &frame) {
                tape.keep(frame);
            }
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        let Some(idle) = this.idle else {
            return Poll::Pending;
        };
        let deadline = Instant::now() + idle;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !std::mem::replace(&mut this.waiting, true) {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let stalled = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the request body paused for more than {idle:?}"),
                );
                Poll::Ready(Some(Err(stalled.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.tape.as_deref().is_some_and(Tape::has_replay)
            && self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, self.tape.as_deref()) {
            (Some(inner), Some(tape)) if tape.has_replay() => {
                let replayed: usize = tape.replay.iter().map(Bytes::len).sum();
                let rest = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + replayed as u64);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + replayed as u64);
                }
                hint
            }
            (Some(inner), _) => inner.size_hint(),
            (None, _) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ClientBody {
    /// Dropped with a return awaited and the whole of what it passed on kept: goes back, rewound.
    fn drop(&mut self) {
        let Some(mut tape) = self.tape.take() else {
            return;
        };
        let Some(back) = tape.back.take() else {
            return;
        };
        if tape.overflowed || back.is_closed() {
            return;
        }
        let mut replay = std::mem::take(&mut tape.kept);
        replay.extend(tape.replay.drain(..));
        let replay_trailers = tape.kept_trailers.take().or(tape.replay_trailers.take());
        let rewound = ClientBody {
            inner: self.inner.take(),
            allowed: self.allowed,
            idle: self.idle,
            timer: None,
            waiting: false,
            ended: None,
            received: self.received.take(),
            tape: Some(Box::new(Tape {
                replay: replay.into(),
                replay_trailers,
                ..Tape::default()
            })),
        };
        // The receiver may have gone meanwhile: then the body is simply dropped.
        let _ = back.send(rewound);
    }
}
