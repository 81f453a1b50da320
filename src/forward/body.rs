//! Response bodies: an upstream body streamed through with its bookkeeping, or a local one.
//!
//! The upstream body carries the request's in-flight guard and its connection, so the endpoint counts
//! as busy until the last byte has gone out, and the connection returns to the pool only after a
//! complete exchange.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::snapshot::{Endpoint, InFlight, Role};
use crate::upstream::Sender;

/// What tidegate answers clients with.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// How long a finished connection may take to become reusable before it is closed instead.
const REUSE_WAIT: Duration = Duration::from_secs(1);

/// An upstream response body passing through.
pub struct UpstreamBody {
    inner: Incoming,
    sender: Option<Sender>,
    in_flight: InFlight,
    role: Role,
    start: Instant,
}

impl UpstreamBody {
    pub(super) fn new(
        inner: Incoming,
        sender: Sender,
        in_flight: InFlight,
        role: Role,
        start: Instant,
    ) -> Self {
        Self {
            inner,
            sender: Some(sender),
            in_flight,
            role,
            start,
        }
    }

    /// The exchange completed: the connection may serve the next request.
    fn complete(&mut self) {
        if let Some(sender) = self.sender.take() {
            reuse(self.in_flight.endpoint(), sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.complete(),
            // A broken exchange leaves the connection in an unknown state: never reuse it.
            Some(Err(_)) => this.sender = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // The server stops polling once the body reports its end, so completion is also seen here;
        // a body dropped before its end (client went away) takes its connection down with it.
        if self.inner.is_end_stream() {
            self.complete();
        }
        self.in_flight
            .endpoint()
            .metrics()
            .observe(self.start.elapsed(), self.role);
    }
}

/// Puts a connection back into its endpoint's pool once hyper reports it idle.
fn reuse(endpoint: &Arc<Endpoint>, sender: Sender) {
    if sender.is_ready() {
        endpoint.pool().put(sender);
        return;
    }
    if sender.is_closed() {
        return;
    }
    // The connection task has not yet seen the end of the exchange; wait for it off the
    // response path. Without a runtime (process exit) the connection is simply closed.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let endpoint = endpoint.clone();
        let mut sender = sender;
        runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(REUSE_WAIT, sender.ready()).await {
                endpoint.pool().put(sender);
            }
        });
    }
}

/// A small local response body (errors, admin).
pub(super) fn local(text: impl Into<Bytes>) -> ResponseBody {
    Either::Right(Full::new(text.into()))
}
