//! The client's request as it goes upstream, prepared once: headers rewritten for the hop, and the
//! body either in memory (the lean path: the request itself is what a retry sends) or streaming
//! (hyper's path: sent once, unless a small copy was kept for replay).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;

use crate::grpc;
use crate::snapshot::Settings;
use crate::upstream::{h1, ClientBody, Outbound, Path, RequestBody};

use super::error::ClientError;
use super::replay::{self, Replay};
use super::request::{self, Client, Forwarding};
use super::upgrade::{self, ClientUpgrade};

pub(super) struct Outgoing {
    req: Request<RequestBody>,
    /// The Host that admission found, until the request is prepared.
    host: Option<HeaderValue>,
    /// The client asked for a protocol upgrade (taken when the endpoint agrees).
    pub(super) upgrade: Option<ClientUpgrade>,
    prepared: Option<Prepared>,
    /// The client sent `te: trailers` (a hop-by-hop header, removed as the request is prepared).
    te_trailers: bool,
    /// A gRPC call: its outcome is its `grpc-status`, and tidegate's own errors are gRPC ones.
    pub(super) grpc: Option<GrpcCall>,
    /// The policy lets this request go again after it may have been processed (an idempotent
    /// method, `retries.idempotent`); set when it is prepared.
    idempotent: bool,
}

/// What tidegate needs to know of a gRPC call.
#[derive(Clone, Copy, Debug)]
pub(super) struct GrpcCall {
    /// The client's deadline (`grpc-timeout`), which bounds the wait for the response head.
    pub(super) timeout: Option<Duration>,
}

/// An empty body, for requests that have none.
static NO_BODY: Bytes = Bytes::new();

/// How the request is sent, decided on its first attempt.
enum Prepared {
    /// The body is in memory; the forwarding headers are written with the head.
    Lean(Bytes, Option<Forwarding>),
    /// The body streams; a copy is kept when it may be sent again.
    Streaming(Option<Replay>),
}

impl Outgoing {
    /// The admitted request, with its Host (see [`request::admit`]), the most its body may bring
    /// (`limits.max_request_body`), and where to count its bytes (for the access log).
    pub(super) fn new(
        req: Request<Incoming>,
        host: Option<HeaderValue>,
        max_body: Option<u64>,
        received: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> Self {
        // gRPC calls are POSTs: other methods skip the header lookup.
        let grpc =
            (req.method() == Method::POST && grpc::is_grpc(req.headers())).then(|| GrpcCall {
                timeout: grpc::timeout(req.headers()),
            });
        let mut req = req.map(|body| {
            let mut body = ClientBody::new(body);
            if let Some(max) = max_body {
                body.limit(max);
            }
            if let Some(received) = received {
                body.count_into(received);
            }
            Either::Left(body)
        });
        let upgrade = upgrade::requested(&mut req);
        Self {
            req,
            host,
            upgrade,
            prepared: None,
            te_trailers: false,
            grpc,
            idempotent: false,
        }
    }

    /// The request's headers, for routing (the canary header, the sticky cookie).
    pub(super) fn headers(&self) -> &HeaderMap {
        self.req.headers()
    }

    pub(super) fn is_prepared(&self) -> bool {
        self.prepared.is_some()
    }

    /// Rewrites the request for the upstream hop and decides its path, under the first attempt's
    /// `settings`. A body kept for replay is read here: a client's failure to send it is the
    /// client's.
    pub(super) async fn prepare(
        &mut self,
        settings: &Settings,
        client: &Client,
    ) -> Result<(), ClientError> {
        let policy = settings.retry;
        let req = &mut self.req;
        let resendable = policy.idempotent && replay::is_idempotent(req.method());
        if resendable && self.upgrade.is_none() && req.body().is_end_stream() {
            // The common case: nothing to copy, the request itself is sent again.
            let forwarding = request::prepare_lean(req, client, self.host.take());
            self.te_trailers = forwarding.te_trailers;
            self.idempotent = true;
            self.prepared = Some(Prepared::Lean(Bytes::new(), Some(forwarding)));
            return Ok(());
        }
        self.te_trailers = request::prepare(req, client, self.host.take());
        // A gRPC stream may be quiet for as long as the application likes (a client streaming
        // now and then); only a plain request body must keep arriving.
        if let (Either::Left(body), None) = (req.body_mut(), self.grpc) {
            body.set_idle_timeout(settings.body_read_timeout);
        }
        request::frame_streamed_body(req);
        if let Some(upgrade) = &self.upgrade {
            upgrade.restore_request_headers(req.headers_mut());
        }
        // A small body is kept whatever the method: a request sent on a pooled connection that
        // the endpoint had closed while idle never reached it, and goes again even if it is a
        // POST. gRPC streams and upgrades stream as they are.
        let any_method = self.grpc.is_none() && self.upgrade.is_none();
        let kept = if resendable || any_method {
            Replay::capture(req, policy.max_replay_body).await?
        } else {
            None
        };
        self.idempotent = resendable;
        self.prepared = Some(match kept {
            Some(kept) if self.upgrade.is_none() => Prepared::Lean(kept.body().clone(), None),
            kept => Prepared::Streaming(kept),
        });
        Ok(())
    }

    /// The connection kind the prepared request needs.
    pub(super) fn path(&self) -> Path {
        match self.prepared {
            Some(Prepared::Lean(..)) => Path::Lean,
            _ => Path::Streaming,
        }
    }

    /// The request for one attempt through an upstream transport.
    pub(super) fn outbound(&mut self, settings: &Settings) -> Outbound<'_> {
        let request_timeout = self.request_timeout(settings);
        let deadline = tokio::time::Instant::now() + request_timeout;
        let (body, added): (&Bytes, _) = match &self.prepared {
            Some(Prepared::Lean(body, Some(f))) => (
                body,
                h1::Added {
                    replace: &f.replace[..f.replacing],
                    append: &f.append,
                },
            ),
            Some(Prepared::Lean(body, None)) => (body, h1::Added::default()),
            _ => (&NO_BODY, h1::Added::default()),
        };
        Outbound {
            request: &mut self.req,
            added,
            body,
            deadline,
            request_timeout,
            max_headers: settings.max_response_headers,
            in_place: matches!(self.prepared, Some(Prepared::Lean(..))),
            te_trailers: self.te_trailers,
            replay_limit: usize::try_from(settings.retry.max_replay_body).unwrap_or(usize::MAX),
        }
    }

    /// How long the response head may take: `timeouts.request`, or the gRPC client's deadline when
    /// that is sooner (nothing is gained by waiting for an answer the client no longer wants).
    pub(super) fn request_timeout(&self, settings: &Settings) -> Duration {
        match self.grpc.and_then(|call| call.timeout) {
            Some(deadline) => deadline.min(settings.request_timeout),
            None => settings.request_timeout,
        }
    }

    /// The request asks to upgrade the connection (HTTP/2 endpoints cannot take that).
    pub(super) fn wants_upgrade(&self) -> bool {
        self.upgrade.is_some()
    }

    /// Whether the request could be sent again after an attempt that took it: the lean path
    /// keeps it, a streamed one needs its `unsent` self back or a kept copy.
    pub(super) fn can_resend(&self, unsent: bool, stale: bool) -> bool {
        let kept = match &self.prepared {
            Some(Prepared::Lean(..)) => true,
            Some(Prepared::Streaming(replay)) => replay.is_some(),
            None => false,
        };
        unsent || (kept && (self.idempotent || stale))
    }

    /// Makes the request ready to send again: the `unsent` request handed back, or a fresh copy
    /// of the kept one (the lean path's request never left).
    pub(super) fn rewind(&mut self, unsent: Option<Box<Request<RequestBody>>>) {
        match (unsent, &self.prepared) {
            (Some(unsent), _) => self.req = *unsent,
            (None, Some(Prepared::Streaming(Some(replay)))) => self.req = replay.request(),
            _ => {}
        }
    }
}
