//! The client's request body on its way upstream. It must keep arriving: a pause longer than
//! `timeouts.body_read` between two reads is the client's fault (408), not the endpoint's. And it
//! says when it has all been read, so that the response-head timeout runs from the end of the
//! request: a slow but moving upload is never cut off as an upstream timeout.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// A request body's error: the client's connection's, or a stall.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body, watched.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    /// The longest pause between two frames; set when the request is prepared.
    idle: Option<Duration>,
    /// Armed while a frame is awaited (allocated on the first wait only).
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    /// Set once the last frame has been read (see [`ClientBody::watch_end`]).
    ended: Option<Arc<AtomicBool>>,
}

impl ClientBody {
    pub fn new(inner: Incoming) -> Self {
        Self {
            inner,
            idle: None,
            timer: None,
            waiting: false,
            ended: None,
        }
    }

    /// From now on, a pause longer than `idle` between two frames fails the body.
    pub fn set_idle_timeout(&mut self, idle: Duration) {
        self.idle = Some(idle);
    }

    /// A flag that is set once the whole body has been read (at once if it has been).
    pub fn watch_end(&mut self) -> Arc<AtomicBool> {
        let ended = Arc::new(AtomicBool::new(self.inner.is_end_stream()));
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
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            if frame.is_none() || this.inner.is_end_stream() {
                this.end();
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
