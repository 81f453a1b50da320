//! The data plane: accept client connections (HTTP/1.1 and HTTP/2), pick an endpoint per request from
//! the current snapshot, and stream the exchange through.
//!
//! Reads routing state only through [`Snapshots`]; never touches discovery or the control loop.
//! Per request: one snapshot load, arithmetic to pick, an `Arc` clone, and pre-resolved metric
//! handles.

mod body;
mod error;
mod replay;
mod request;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntCounter;
use tokio::net::TcpListener;

use crate::metrics::{Metrics, VersionMetrics};
use crate::pick::{pick_role, pick_version, sticky, Rng};
use crate::shutdown::Shutdown;
use crate::snapshot::{CanaryStats, Endpoint, Role, Snapshots};

use replay::Replay;

pub use body::{ResponseBody, UpstreamBody};
pub use error::{ErrorKind, ProxyError};

/// Connection-level settings fixed for the life of a listener.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// A client must send a complete HTTP/1 request head within this time.
    pub header_read_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
}

/// Extra attempts allowed when a pooled keep-alive connection turns out closed under a request: the
/// peer closing an idle connection is not a failure of the endpoint, so these do not count against
/// `connect_attempts`.
const STALE_CONNECTION_RETRIES: u32 = 2;

/// Accepts connections on `listener` until `shutdown`, then drains in-flight requests for at most
/// `drain_timeout`. Canary outcomes are counted into `canary_stats` for the abort check.
pub async fn serve(
    listener: TcpListener,
    snapshots: Snapshots,
    metrics: &Metrics,
    options: ServeOptions,
    canary_stats: Arc<CanaryStats>,
    mut shutdown: Shutdown,
) {
    let forwarder = Arc::new(Forwarder::new(snapshots, metrics, canary_stats));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let forwarder = forwarder.clone();
        // Per connection, not per request: the client address as a header value.
        let client = request::Client::new(peer.ip());
        let service = service_fn(move |req| {
            let (forwarder, client) = (forwarder.clone(), client.clone());
            async move { Ok::<_, Infallible>(forwarder.handle(req, &client).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; draining in-flight requests"
    );
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?options.drain_timeout, "drain timed out; closing remaining connections");
    }
}

/// Per-listener state shared by all requests.
struct Forwarder {
    snapshots: Snapshots,
    unrouted: VersionMetrics,
    errors: [IntCounter; ErrorKind::ALL.len()],
    connect_retries: IntCounter,
    reset_retries: IntCounter,
    canary_stats: Arc<CanaryStats>,
}

impl Forwarder {
    fn new(snapshots: Snapshots, metrics: &Metrics, canary_stats: Arc<CanaryStats>) -> Self {
        Self {
            snapshots,
            canary_stats,
            unrouted: metrics.unrouted(),
            errors: ErrorKind::ALL.map(|k| metrics.upstream_error(k.as_str())),
            connect_retries: metrics.retry("connect"),
            reset_retries: metrics.retry("reset"),
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        client: &request::Client,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let mut req = req.map(Either::Left);
        request::prepare(&mut req, client);
        let replay = Replay::capture(&req);
        let mut rng = Rng::new();
        // Endpoints this request failed to connect to; allocates only on a retry.
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut stale_retries = 0;
        // The failure that sent this request round the loop again, and the role it happened in.
        let mut retrying: Option<ProxyError> = None;
        let mut failed_role = Role::Stable;
        loop {
            let picked = {
                let snapshot = self.snapshots.load();
                let settings = *snapshot.settings();
                // The canary header beats the sticky cookie, which beats the split.
                let requested = snapshot.requested_role(req.headers());
                let pinned = (settings.sticky && requested.is_none())
                    .then(|| sticky::pinned_version(req.headers()))
                    .flatten();
                pinned
                    .and_then(|version| pick_version(&snapshot, version, &mut rng, &tried))
                    .or_else(|| pick_role(&snapshot, &mut rng, &tried, requested))
                    .map(|(ep, role)| {
                        // A client not (or no longer) pinned to what served it gets a new cookie.
                        let cookie = settings.sticky && pinned != Some(ep.version().as_str());
                        (ep.clone(), role, settings, cookie)
                    })
            };
            let Some((endpoint, role, settings, set_cookie)) = picked else {
                // Every candidate failed: the client hears about the last failure.
                if let (Some(error), Some(failed)) = (&retrying, tried.last()) {
                    return self.local_error(error, failed.metrics(), failed_role, start);
                }
                let error = ProxyError::NoEndpoints;
                self.count(&error);
                return self.local_error(&error, &self.unrouted, Role::Stable, start);
            };
            if let Some(cause) = retrying.take() {
                self.count_retry(&cause);
            }
            let in_flight = endpoint.begin();
            let connection = match endpoint.pool().checkout(settings.connect_timeout).await {
                Ok(connection) => connection,
                Err(error) => {
                    let error = ProxyError::from(error);
                    self.count(&error);
                    if tried.len() + 1 < settings.connect_attempts as usize {
                        tracing::debug!(endpoint = %endpoint.address(), %error, "connect failed; retrying elsewhere");
                        retrying = Some(error);
                        failed_role = role;
                        tried.push(endpoint);
                        continue;
                    }
                    return self.local_error(&error, endpoint.metrics(), role, start);
                }
            };
            let mut sender = connection.sender;
            let sent = tokio::time::timeout(settings.request_timeout, sender.try_send_request(req));
            match sent.await {
                Ok(Ok(mut response)) => {
                    request::prepare_response(&mut response);
                    if set_cookie {
                        response
                            .headers_mut()
                            .append(header::SET_COOKIE, endpoint.sticky_cookie().clone());
                    }
                    self.record(endpoint.metrics(), role, response.status().as_u16());
                    return response.map(|body| {
                        Either::Left(UpstreamBody::new(body, sender, in_flight, role, start))
                    });
                }
                Ok(Err(mut failed)) => {
                    let unsent = failed.take_message();
                    let error = ProxyError::exchange(failed.into_error());
                    self.count(&error);
                    // Safe to send again if it never left, or if it left with nothing to double
                    // (idempotent, no body) and the connection broke before any response byte.
                    let again = unsent.or_else(|| {
                        let broke = error.kind() == ErrorKind::Reset;
                        replay.as_ref().filter(|_| broke).map(Replay::request)
                    });
                    match again {
                        // The peer closed an idle keep-alive connection as we used it.
                        Some(again)
                            if connection.reused && stale_retries < STALE_CONNECTION_RETRIES =>
                        {
                            stale_retries += 1;
                            retrying = Some(error);
                            req = again;
                        }
                        Some(again) if tried.len() + 1 < settings.connect_attempts as usize => {
                            retrying = Some(error);
                            failed_role = role;
                            tried.push(endpoint);
                            req = again;
                        }
                        _ => return self.local_error(&error, endpoint.metrics(), role, start),
                    }
                }
                Err(_elapsed) => {
                    let error = ProxyError::Timeout(settings.request_timeout);
                    self.count(&error);
                    return self.local_error(&error, endpoint.metrics(), role, start);
                }
            }
        }
    }

    fn count(&self, error: &ProxyError) {
        self.errors[error.kind().index()].inc();
    }

    fn count_retry(&self, cause: &ProxyError) {
        match cause.kind() {
            ErrorKind::Connect | ErrorKind::ConnectTimeout => self.connect_retries.inc(),
            _ => self.reset_retries.inc(),
        }
    }

    /// Counts a response: the metric by version, role and code, and the canary's outcome.
    #[inline]
    fn record(&self, metrics: &VersionMetrics, role: Role, status: u16) {
        metrics.count(status, role);
        if role == Role::Canary {
            self.canary_stats.record(status);
        }
    }

    /// tidegate's own answer for a request it could not forward.
    fn local_error(
        &self,
        error: &ProxyError,
        metrics: &VersionMetrics,
        role: Role,
        start: Instant,
    ) -> Response<ResponseBody> {
        let kind = error.kind();
        self.record(metrics, role, kind.status().as_u16());
        metrics.observe(start.elapsed(), role);
        let mut response = Response::new(body::local(format!("{error}\n")));
        *response.status_mut() = kind.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert("x-tidegate-error", HeaderValue::from_static(kind.as_str()));
        response
    }
}
