//! The data plane: accept client connections (HTTP/1.1 and HTTP/2), pick an endpoint per request from
//! the current snapshot, and stream the exchange through.
//!
//! Reads routing state only through [`Snapshots`]; never touches discovery or the control loop.
//! Per request: one snapshot load, arithmetic to pick, an `Arc` clone, and pre-resolved metric
//! handles.

mod body;
mod budget;
mod error;
mod head_deadline;
mod replay;
mod request;
mod upgrade;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntCounter;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::metrics::{Metrics, VersionMetrics};
use crate::pick::{pick_role, pick_version, sticky, Rng};
use crate::shutdown::{self, Shutdown};
use crate::snapshot::{health, CanaryStats, Endpoint, Role, Settings, Snapshots};
use crate::upstream::{self, framing, h1, h1::ExchangeError, RequestBody};

use budget::RetryBudget;
use head_deadline::HeadDeadline;
use replay::Replay;

pub use body::{ResponseBody, UpstreamBody};
pub use error::{ClientError, ClientFault, ErrorKind, ProxyError};

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

/// Names the version that served a response, when `expose_version_header` is on.
pub const VERSION_HEADER: header::HeaderName =
    header::HeaderName::from_static("x-tidegate-version");

/// Extra endpoints tried after refused connects, beyond `connect_attempts` (see `handle`).
const REFUSED_CONNECT_RETRIES: u32 = 8;

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
        // One write of head and body copied together: for the small responses that dominate, the
        // copy is cheaper than assembling an iovec array per response (about 400 instructions).
        .writev(false)
        // `timeouts.header_read` is kept by the connection's IO (see `head_deadline`).
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    // Drain: every connection (and upgraded tunnel) task holds a clone of `open`; when the last
    // one is dropped, `all_closed` yields None.
    let (drain, draining) = shutdown::channel();
    let (open, mut all_closed) = mpsc::channel::<()>(1);

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
        // Per connection, not per request: the client address as a header value, and the drain
        // handle an upgraded tunnel keeps.
        let conn = Arc::new(Conn {
            client: request::Client::new(peer.ip()),
            open: open.clone(),
            phase: head_deadline::Phase::new(),
        });
        let io = HeadDeadline::new(stream, conn.clone(), options.header_read_timeout);
        let service = service_fn(move |req| {
            let (forwarder, conn) = (forwarder.clone(), conn.clone());
            async move {
                head_deadline::answering(&conn);
                let response = forwarder.handle(req, &conn).await;
                Ok::<_, Infallible>(head_deadline::answered(response, conn))
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let (open, drained) = (open.clone(), draining.clone().quiet());
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = drained => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    drain.fire();
    drop(open);
    if tokio::time::timeout(options.drain_timeout, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?options.drain_timeout, "drain timed out; closing remaining connections");
    }
}

/// Per-connection state shared by its requests.
struct Conn {
    client: request::Client,
    open: mpsc::Sender<()>,
    /// Answering a request, or waiting for the next head (whose deadline the IO keeps).
    phase: head_deadline::Phase,
}

/// Per-listener state shared by all requests.
struct Forwarder {
    snapshots: Snapshots,
    unrouted: VersionMetrics,
    errors: [IntCounter; ErrorKind::ALL.len()],
    client_errors: [IntCounter; ClientFault::ALL.len()],
    retries: [IntCounter; Retry::REASONS],
    budget: RetryBudget,
    budget_exhausted: IntCounter,
    ejections: IntCounter,
    canary_stats: Arc<CanaryStats>,
}

/// An attempt's result, as passive health sees it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    /// Nothing listens there: ejects at once.
    Refused,
}

/// A connection for one attempt, of the kind the request's path needs.
enum Checked {
    Hyper(upstream::Connection),
    /// With whether it came from the idle pool.
    H1(h1::Connection, bool),
}

impl Checked {
    /// Taken from the idle pool: the peer may have closed it meanwhile, so a failure before any
    /// response byte says nothing about the endpoint's health.
    fn reused(&self) -> bool {
        match self {
            Checked::Hyper(c) => c.reused,
            Checked::H1(_, reused) => *reused,
        }
    }
}

/// A failed attempt, and how the request could be sent again.
struct Failure {
    error: ProxyError,
    again: Option<Again>,
    /// The request (or part of it) may have reached the endpoint.
    sent: bool,
}

impl Failure {
    fn timeout(after: Duration) -> Self {
        Self {
            error: ProxyError::Timeout(after),
            again: None,
            sent: true,
        }
    }
}

/// What a retry sends.
enum Again {
    /// The request as it is (the lean path never consumes it).
    Same,
    /// A request handed back unsent, or a replay copy (boxed: retries are the rare path).
    New(Box<Request<RequestBody>>),
}

impl Again {
    fn new(req: Request<RequestBody>) -> Self {
        Again::New(Box::new(req))
    }

    fn apply(self, req: &mut Request<RequestBody>) {
        if let Again::New(again) = self {
            *req = *again;
        }
    }
}

/// Why a request goes round again.
enum Retry {
    /// Nothing reached the endpoint (connect failed, or the request was handed back unsent).
    Failed(ProxyError),
    /// The endpoint answered 502 or 503; this is the answer to fall back on (boxed: rare).
    Status(Box<Response<ResponseBody>>, Arc<Endpoint>, Role),
    /// A pooled keep-alive connection had been closed by the peer: not the endpoint's failure.
    Stale(ProxyError),
}

impl Retry {
    const REASONS: usize = 4;
    const LABELS: [&'static str; Retry::REASONS] = ["connect", "reset", "502", "503"];

    /// The status the failed attempt amounts to, if it was the endpoint's failure.
    fn endpoint_status(&self) -> Option<StatusCode> {
        match self {
            Retry::Failed(e) => Some(e.kind().status()),
            Retry::Status(r, _, _) => Some(r.status()),
            Retry::Stale(_) => None,
        }
    }

    fn reason(&self) -> usize {
        match self {
            Retry::Failed(e) if e.retryable() => 0,
            Retry::Failed(_) | Retry::Stale(_) => 1,
            Retry::Status(r, _, _) if r.status() == StatusCode::BAD_GATEWAY => 2,
            Retry::Status(..) => 3,
        }
    }
}

impl Forwarder {
    fn new(snapshots: Snapshots, metrics: &Metrics, canary_stats: Arc<CanaryStats>) -> Self {
        Self {
            snapshots,
            canary_stats,
            unrouted: metrics.unrouted(),
            errors: ErrorKind::ALL.map(|k| metrics.upstream_error(k.as_str())),
            client_errors: ClientFault::ALL.map(|k| metrics.client_error(k.as_str())),
            retries: Retry::LABELS.map(|reason| metrics.retry(reason)),
            budget: RetryBudget::new(),
            budget_exhausted: metrics.retry_budget_exhausted(),
            ejections: metrics.ejections(),
        }
    }

    async fn handle(&self, req: Request<Incoming>, conn: &Conn) -> Response<ResponseBody> {
        let start = Instant::now();
        let now = health::now_ms(start);
        self.budget.deposit(start);
        if let Err(fault) = request::admit(&req) {
            let reason = match fault {
                ClientFault::NotAllowed => "tidegate is a reverse proxy: CONNECT is not forwarded",
                _ => "an HTTP/1.1 request needs exactly one Host header",
            };
            let error = ClientError::refused(fault, reason);
            return self.client_failure(&error, &self.unrouted, Role::Stable, start);
        }
        let mut req = req.map(Either::Left);
        let mut upgrade = upgrade::requested(&mut req);
        // The forwarding headers, when the lean path writes them itself.
        let mut forwarding: Option<request::Forwarding> = None;
        // Read (and kept) on the first attempt, once the settings are known.
        let mut replay: Option<Replay> = None;
        // Set on the first attempt when the request takes the lean path (`upstream::h1`): its
        // body, in memory. Such requests are idempotent and never consumed, so `req` itself is
        // what a retry sends.
        let mut lean: Option<Bytes> = None;
        let mut first_attempt = true;
        let mut rng = Rng::new();
        // Endpoints this request already failed on; allocates only on a retry.
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut stale_retries = 0;
        // Attempts that count against `connect_attempts`, and free ones on refused connects.
        let (mut attempts, mut refused_retries) = (1u32, 0u32);
        // What sent this request round the loop again, and the role it happened in.
        let mut retrying: Option<Retry> = None;
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
                    .and_then(|version| pick_version(&snapshot, version, &mut rng, &tried, now))
                    .or_else(|| pick_role(&snapshot, &mut rng, &tried, requested, now))
                    .map(|(ep, role)| {
                        // A client not (or no longer) pinned to what served it gets a new cookie.
                        let cookie = settings.sticky && pinned != Some(ep.version().as_str());
                        (ep.clone(), role, settings, cookie)
                    })
            };
            let Some((endpoint, role, settings, set_cookie)) = picked else {
                // Every candidate failed: the client hears about the last failure.
                return match (retrying, tried.last()) {
                    (Some(retry), Some(failed)) => {
                        self.give_up(retry, failed.metrics(), failed_role, start)
                    }
                    _ => {
                        let error = ProxyError::NoEndpoints;
                        self.count(&error);
                        self.local_error(&error, &self.unrouted, Role::Stable, start)
                    }
                };
            };
            if std::mem::take(&mut first_attempt) {
                let policy = settings.retry;
                let resendable = policy.idempotent && replay::is_idempotent(req.method());
                if resendable && upgrade.is_none() && req.body().is_end_stream() {
                    // The common case: nothing to copy, the request itself is sent again.
                    forwarding = Some(request::prepare_lean(&mut req, &conn.client));
                    lean = Some(Bytes::new());
                } else {
                    request::prepare(&mut req, &conn.client);
                    request::frame_streamed_body(&mut req);
                    if let Some(upgrade) = &upgrade {
                        upgrade.restore_request_headers(req.headers_mut());
                    }
                    match Replay::capture(&mut req, policy.idempotent, policy.max_replay_body).await
                    {
                        Ok(kept) => replay = kept,
                        Err(error) => {
                            return self.client_failure(&error, endpoint.metrics(), role, start)
                        }
                    }
                    if upgrade.is_none() {
                        lean = replay.as_ref().map(|r| r.body().clone());
                    }
                }
            }
            if let Some(retry) = retrying.take() {
                self.retries[retry.reason()].inc();
                // The client may yet be served, but the attempt still failed where it went.
                if let (Role::Canary, Some(status)) = (failed_role, retry.endpoint_status()) {
                    self.canary_stats.record(status.as_u16());
                }
            }
            let can_retry = attempts < settings.connect_attempts;
            let in_flight = endpoint.begin();
            let checked = match lean {
                Some(_) => endpoint
                    .pool()
                    .checkout_h1(settings.connect_timeout)
                    .await
                    .map(|(conn, reused)| Checked::H1(conn, reused)),
                None => endpoint
                    .pool()
                    .checkout(settings.connect_timeout, settings.max_response_headers)
                    .await
                    .map(Checked::Hyper),
            };
            let connection = match checked {
                Ok(connection) => connection,
                Err(error) => {
                    let refused = error.is_refused();
                    let error = ProxyError::from(error);
                    self.count(&error);
                    let outcome = if refused {
                        Outcome::Refused
                    } else {
                        Outcome::Failed
                    };
                    self.observe_health(&endpoint, &settings, outcome, now);
                    // A refused connect costs nothing and says nothing listens there: during
                    // churn, several pods may be gone at once, so it does not use up an attempt
                    // (unless retries are off altogether).
                    let free = refused
                        && settings.connect_attempts > 1
                        && refused_retries < REFUSED_CONNECT_RETRIES;
                    if free || can_retry {
                        if free {
                            refused_retries += 1;
                        } else {
                            attempts += 1;
                        }
                        tracing::debug!(endpoint = %endpoint.address(), %error, "connect failed; retrying elsewhere");
                        retrying = Some(Retry::Failed(error));
                        failed_role = role;
                        tried.push(endpoint);
                        continue;
                    }
                    return self.local_error(&error, endpoint.metrics(), role, start);
                }
            };
            let reused = connection.reused();
            let exchanged = match connection {
                Checked::Hyper(connection) => {
                    let mut sender = connection.sender;
                    let taken =
                        std::mem::replace(&mut req, Request::new(Either::Right(Full::default())));
                    let sent = tokio::time::timeout(
                        settings.request_timeout,
                        sender.try_send_request(taken),
                    );
                    match sent.await {
                        Ok(Ok(mut response)) => {
                            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                                if let Some(client_side) = upgrade.take() {
                                    self.record(endpoint.metrics(), role, 101);
                                    return client_side.tunnel(
                                        response,
                                        in_flight,
                                        conn.open.clone(),
                                    );
                                }
                            }
                            // What the lean path checks as it parses; dropping the response
                            // closes its connection.
                            if let Err(why) = framing::check(&mut response, false) {
                                return self.local_error(
                                    &ProxyError::Exchange(ExchangeError::Invalid(why)),
                                    endpoint.metrics(),
                                    role,
                                    start,
                                );
                            }
                            // Answered with the canonical reason phrase, as the lean path does.
                            response
                                .extensions_mut()
                                .remove::<hyper::ext::ReasonPhrase>();
                            let response = response.map(|body| {
                                UpstreamBody::hyper(body, sender, in_flight, role, start)
                            });
                            Ok((response, false))
                        }
                        Ok(Err(mut failed)) => {
                            if let Some(fault) = ClientFault::of_exchange(failed.error()) {
                                let error = ClientError {
                                    fault,
                                    source: failed.into_error().into(),
                                };
                                return self.client_failure(
                                    &error,
                                    endpoint.metrics(),
                                    role,
                                    start,
                                );
                            }
                            let unsent = failed.take_message();
                            let error = ProxyError::exchange(failed.into_error());
                            // Safe to send again if it never left, or if it left with nothing to
                            // double (idempotent, no body) and the connection broke before any
                            // response byte.
                            let broke = error.kind() == ErrorKind::Reset && settings.retry.on_reset;
                            let sent = unsent.is_none();
                            let again = unsent
                                .or_else(|| replay.as_ref().filter(|_| broke).map(Replay::request))
                                .map(Again::new);
                            Err(Failure { error, again, sent })
                        }
                        Err(_elapsed) => Err(Failure::timeout(settings.request_timeout)),
                    }
                }
                Checked::H1(connection, _) => {
                    let body = lean.as_deref().unwrap_or_default();
                    let added =
                        forwarding
                            .as_ref()
                            .map_or_else(h1::Added::default, |f| h1::Added {
                                replace: &f.replace[..f.replacing],
                                append: &f.append,
                            });
                    let deadline = tokio::time::Instant::now() + settings.request_timeout;
                    let limit = settings.max_response_headers;
                    match h1::exchange(connection, &req, added, body, deadline, limit).await {
                        Ok(response) => {
                            let clean = response.body().hop_by_hop_removed();
                            let response =
                                response.map(|body| UpstreamBody::h1(body, in_flight, role, start));
                            Ok((response, clean))
                        }
                        Err(ExchangeError::Timeout) => {
                            Err(Failure::timeout(settings.request_timeout))
                        }
                        Err(error) => {
                            // Idempotent by construction: sent again when a reused connection
                            // turns out closed, or when the exchange broke before a response.
                            let closed = reused
                                && matches!(
                                    error,
                                    ExchangeError::Io {
                                        nothing_received: true,
                                        ..
                                    }
                                );
                            let error = ProxyError::from(error);
                            let broke = error.kind() == ErrorKind::Reset && settings.retry.on_reset;
                            let again = (closed || broke).then_some(Again::Same);
                            Err(Failure {
                                error,
                                again,
                                sent: true,
                            })
                        }
                    }
                }
            };
            match exchanged {
                Ok((response, clean)) => {
                    let mut response = response.map(Either::Left);
                    if clean {
                        request::for_client_hop(&mut response);
                    } else {
                        request::prepare_response(&mut response);
                    }
                    if set_cookie {
                        response
                            .headers_mut()
                            .append(header::SET_COOKIE, endpoint.sticky_cookie().clone());
                    }
                    if settings.expose_version_header {
                        response
                            .headers_mut()
                            .insert(VERSION_HEADER, endpoint.version_header().clone());
                    }
                    let status = response.status();
                    self.observe_health(
                        &endpoint,
                        &settings,
                        if status.is_server_error() {
                            Outcome::Failed
                        } else {
                            Outcome::Passed
                        },
                        now,
                    );
                    let policy = settings.retry;
                    let retry_status = (status == StatusCode::BAD_GATEWAY && policy.on_502)
                        || (status == StatusCode::SERVICE_UNAVAILABLE && policy.on_503);
                    let again = (retry_status && can_retry)
                        .then(|| match lean {
                            Some(_) => Some(Again::Same),
                            None => replay.as_ref().map(|r| Again::new(r.request())),
                        })
                        .flatten();
                    if let Some(again) = again {
                        if self.budget.withdraw(Instant::now(), policy.budget_percent) {
                            retrying =
                                Some(Retry::Status(Box::new(response), endpoint.clone(), role));
                            failed_role = role;
                            attempts += 1;
                            tried.push(endpoint);
                            again.apply(&mut req);
                            continue;
                        }
                        self.budget_exhausted.inc();
                    }
                    self.record(endpoint.metrics(), role, status.as_u16());
                    return response;
                }
                Err(Failure { error, again, sent }) => {
                    self.count(&error);
                    let stale = reused && stale_retries < STALE_CONNECTION_RETRIES;
                    if !(stale && again.is_some()) {
                        self.observe_health(&endpoint, &settings, Outcome::Failed, now);
                    }
                    match again {
                        // The peer closed an idle keep-alive connection as we used it.
                        Some(again) if stale => {
                            stale_retries += 1;
                            retrying = Some(Retry::Stale(error));
                            again.apply(&mut req);
                        }
                        Some(again)
                            if can_retry
                                && (!sent || self.spend(settings.retry.budget_percent)) =>
                        {
                            retrying = Some(Retry::Failed(error));
                            failed_role = role;
                            attempts += 1;
                            tried.push(endpoint);
                            again.apply(&mut req);
                        }
                        _ => return self.local_error(&error, endpoint.metrics(), role, start),
                    }
                }
            }
        }
    }

    /// Feeds an attempt's outcome to passive health; may eject the endpoint.
    fn observe_health(
        &self,
        endpoint: &Arc<Endpoint>,
        settings: &Settings,
        outcome: Outcome,
        now: u64,
    ) {
        let Some(policy) = settings.outlier else {
            return;
        };
        if outcome == Outcome::Passed {
            endpoint.health().success();
            return;
        }
        // Failure path only: one more snapshot load to size the version.
        let size = self
            .snapshots
            .load()
            .version_group(endpoint.version().as_str())
            .map_or(1, |g| g.endpoints.len());
        if endpoint
            .health()
            .failure(now, &policy, size, outcome == Outcome::Refused)
        {
            self.ejections.inc();
            tracing::warn!(endpoint = %endpoint.address(), version = %endpoint.version(), "ejected after consecutive failures");
        }
    }

    /// Takes a retry from the budget, counting a refusal.
    fn spend(&self, percent: u32) -> bool {
        let granted = self.budget.withdraw(Instant::now(), percent);
        if !granted {
            self.budget_exhausted.inc();
        }
        granted
    }

    /// The answer when no endpoint is left to retry on: the upstream's own 502/503 if there was
    /// one, else tidegate's error for the last failure.
    fn give_up(
        &self,
        retry: Retry,
        metrics: &VersionMetrics,
        role: Role,
        start: Instant,
    ) -> Response<ResponseBody> {
        match retry {
            Retry::Status(response, endpoint, role) => {
                self.record(endpoint.metrics(), role, response.status().as_u16());
                *response
            }
            Retry::Failed(error) | Retry::Stale(error) => {
                self.local_error(&error, metrics, role, start)
            }
        }
    }

    fn count(&self, error: &ProxyError) {
        self.errors[error.kind().index()].inc();
    }

    /// Counts a response: the metric by version, role and code, and the canary's outcome.
    #[inline]
    fn record(&self, metrics: &VersionMetrics, role: Role, status: u16) {
        metrics.count(status, role);
        if role == Role::Canary {
            self.canary_stats.record(status);
        }
    }

    /// The answer to a request that failed through the client's fault: counted as the client's,
    /// recorded under its status for the version, and kept out of the canary's outcomes. The
    /// connection closes after it: its framing can no longer be trusted.
    fn client_failure(
        &self,
        error: &ClientError,
        metrics: &VersionMetrics,
        role: Role,
        start: Instant,
    ) -> Response<ResponseBody> {
        tracing::debug!(%error, "client request failed");
        self.client_errors[error.fault.index()].inc();
        let status = error.fault.status();
        metrics.count(status.as_u16(), role);
        metrics.observe(start.elapsed(), role);
        let mut response = Response::new(body::local(format!("{error}\n")));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(
            "x-tidegate-error",
            HeaderValue::from_static(error.fault.as_str()),
        );
        if error.fault == ClientFault::NotAllowed {
            // RFC 9110 §15.5.6: a 405 says what is allowed.
            headers.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
            );
        }
        response
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
