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

use crate::grpc::{self, Code};
use crate::snapshot::{Endpoint, InFlight, Role};
use crate::upstream::{h1, h2, Sender};

use super::outcome::GrpcVerdict;

/// What tidegate answers clients with.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// How long a finished connection may take to become reusable before it is closed instead.
const REUSE_WAIT: Duration = Duration::from_secs(1);

/// An upstream response body passing through.
pub struct UpstreamBody {
    inner: Inner,
    in_flight: InFlight,
    role: Role,
    start: Instant,
    /// A gRPC call whose `grpc-status` is still to come (in the trailers).
    grpc: Option<Box<GrpcVerdict>>,
}

/// Where the body comes from: hyper's client connection (with its handle, for reuse), or a
/// lean-path connection that the body reads itself.
enum Inner {
    Hyper {
        body: Incoming,
        sender: Option<Sender>,
    },
    H1(h1::ResponseBody),
    /// A stream on a shared HTTP/2 connection, counted on it until the body ends.
    H2 {
        body: Incoming,
        _stream: h2::StreamGuard,
    },
}

/// Why a response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("upstream body: {0}")]
    Io(#[from] std::io::Error),
}

impl UpstreamBody {
    pub(super) fn hyper(
        body: Incoming,
        sender: Sender,
        in_flight: InFlight,
        role: Role,
        start: Instant,
    ) -> Self {
        let inner = Inner::Hyper {
            body,
            sender: Some(sender),
        };
        Self::new(inner, in_flight, role, start)
    }

    fn new(inner: Inner, in_flight: InFlight, role: Role, start: Instant) -> Self {
        Self {
            inner,
            in_flight,
            role,
            start,
            grpc: None,
        }
    }

    pub(super) fn h2(
        body: Incoming,
        stream: h2::StreamGuard,
        in_flight: InFlight,
        role: Role,
        start: Instant,
    ) -> Self {
        let inner = Inner::H2 {
            body,
            _stream: stream,
        };
        Self::new(inner, in_flight, role, start)
    }

    /// Judges the gRPC call by the status its trailers will carry.
    pub(super) fn judge(&mut self, verdict: GrpcVerdict) {
        self.grpc = Some(Box::new(verdict));
    }

    fn settle(&mut self, code: Code) {
        if let Some(verdict) = self.grpc.take() {
            verdict.settle(self.in_flight.endpoint(), self.role, code);
        }
    }

    pub(super) fn h1(
        body: h1::ResponseBody,
        in_flight: InFlight,
        role: Role,
        start: Instant,
    ) -> Self {
        Self::new(Inner::H1(body), in_flight, role, start)
    }

    /// The exchange completed: the connection may serve the next request.
    fn complete(&mut self) {
        match &mut self.inner {
            Inner::Hyper { sender, .. } => {
                if let Some(sender) = sender.take() {
                    reuse(self.in_flight.endpoint(), sender);
                }
            }
            Inner::H1(body) => {
                if let Some(conn) = body.take_reusable() {
                    self.in_flight.endpoint().pool().put_h1(conn);
                }
            }
            // The stream's guard goes with the body; the connection stays shared.
            Inner::H2 { .. } => {}
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = self.get_mut();
        let frame = match &mut this.inner {
            Inner::Hyper { body, sender } => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                // A broken exchange leaves the connection in an unknown state: never reuse it.
                if let Some(Err(_)) = &frame {
                    *sender = None;
                }
                frame.map(|f| f.map_err(UpstreamBodyError::from))
            }
            Inner::H1(body) => {
                ready!(body.poll_frame(cx)).map(|f| f.map_err(UpstreamBodyError::from))
            }
            Inner::H2 { body, .. } => {
                ready!(Pin::new(body).poll_frame(cx)).map(|f| f.map_err(UpstreamBodyError::from))
            }
        };
        if this.grpc.is_some() {
            // The call's status: from its trailers; missing ones are `UNKNOWN` (gRPC over HTTP/2
            // requires them); a broken stream is `UNAVAILABLE`, as a gRPC client reports it.
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        this.settle(grpc::status(trailers).unwrap_or(Code::UNKNOWN));
                    }
                }
                Some(Err(_)) => this.settle(Code::UNAVAILABLE),
                None => this.settle(Code::UNKNOWN),
            }
        }
        // Trailers are always the last frame, and the server may stop polling after them.
        let last = match &frame {
            None => true,
            Some(Ok(frame)) => frame.is_trailers(),
            Some(Err(_)) => false,
        };
        if last {
            this.complete();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper { body, .. } | Inner::H2 { body, .. } => body.is_end_stream(),
            Inner::H1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper { body, .. } | Inner::H2 { body, .. } => body.size_hint(),
            Inner::H1(body) => body.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // The server stops polling once the body reports its end, so completion is also seen here;
        // a body dropped before its end (client went away) takes its connection down with it.
        let ended = self.is_end_stream();
        if ended {
            self.complete();
        }
        if self.grpc.is_some() {
            // Dropped before its status arrived: ended without trailers, or cancelled.
            self.settle(if ended {
                Code::UNKNOWN
            } else {
                Code::CANCELLED
            });
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
