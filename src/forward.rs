//! The data plane: accept client connections (HTTP/1.1 and HTTP/2), pick an endpoint per request from
//! the current snapshot, and stream the exchange through.
//!
//! Reads routing state only through [`Snapshots`]; never touches discovery or the control loop.
//! Per request: one snapshot load, arithmetic to pick, an `Arc` clone, and pre-resolved metric
//! handles. A request's stages, in order: [`request::admit`] → `pick::route` → [`outgoing`]
//! (prepared once) → [`attempt`] (one send through the upstream transport, classified by who is
//! at fault) → [`retry`] (a pure decision) → [`respond`] (the answer and its bookkeeping), with
//! [`outcome`] recording what each attempt meant for its endpoint (a gRPC call's at its end).

mod attempt;
mod body;
mod budget;
mod error;
mod exchange;
mod head_deadline;
mod outcome;
mod outgoing;
mod replay;
mod request;
mod respond;
mod retry;
mod upgrade;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntCounter;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

use crate::config::Limits;
use crate::metrics::{Metrics, VersionMetrics};
use crate::pick::{self, Hints, Rng};
use crate::shutdown::{self, Shutdown};
use crate::snapshot::{health, CanaryStats, Endpoint, Role, Settings, Snapshots};
use crate::tls::Tls;

use attempt::Attempted;
use budget::RetryBudget;
use exchange::Exchange;
use head_deadline::HeadDeadline;
use outcome::Outcomes;
use outgoing::Outgoing;
use retry::{Retry, Tries};

pub use body::{ResponseBody, UpstreamBody};
pub use error::{ClientError, ClientFault, ErrorKind, ProxyError};
pub use exchange::{Logged, Telemetry};

/// Connection-level settings fixed for the life of a listener.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// A client must send a complete HTTP/1 request head within this time.
    pub header_read_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// What one client may hold.
    pub limits: Limits,
}

/// Names the version that served a response, when `expose_version_header` is on.
pub const VERSION_HEADER: header::HeaderName =
    header::HeaderName::from_static("x-tidegate-version");

/// Accepts connections on `listener` until `shutdown`, then drains in-flight requests for at most
/// `drain_timeout`. With `tls`, every connection is a TLS one (its handshake bounded by
/// `header_read_timeout`). Canary outcomes are counted into `canary_stats` for the abort check;
/// each request is reported as `telemetry` says (access log, IDs, spans).
#[allow(clippy::too_many_arguments)] // the listener's parts, each passed once at start
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    snapshots: Snapshots,
    metrics: &Metrics,
    options: ServeOptions,
    canary_stats: Arc<CanaryStats>,
    telemetry: Arc<Telemetry>,
    mut shutdown: Shutdown,
) {
    let forwarder = Arc::new(Forwarder::new(
        snapshots,
        metrics,
        canary_stats,
        &options.limits,
        telemetry,
    ));
    let builder = Arc::new(server_builder(&options.limits));
    let slots = Slots::new(options.limits.max_connections, metrics.client_connections());
    let rejected = metrics.connections_rejected();
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
        let Some(slot) = slots.take() else {
            // At the limit: closed at once (a clean refusal the client sees now), never queued
            // behind connections that may idle for long.
            rejected.inc();
            tracing::debug!(%peer, max = options.limits.max_connections, "connection limit reached; closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            _slot: slot,
            forwarder: forwarder.clone(),
            builder: builder.clone(),
            conn: Conn::new(peer, tls.is_some(), open.clone()),
            drained: draining.clone().quiet(),
            peer,
            timeouts: head_deadline::Timeouts {
                header_read: options.header_read_timeout,
                idle: options.limits.idle_timeout,
            },
        };
        spawn_connection(tls.as_deref(), accepted, stream);
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    drain.fire();
    drop(open);
    if tokio::time::timeout(options.drain_timeout, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_s = options.drain_timeout.as_secs_f64(),
            "drain timed out; closing remaining connections"
        );
    }
}

/// Serves an accepted connection on its own task: over TLS after a handshake bounded by the
/// header-read timeout, else as it is.
fn spawn_connection<D>(tls: Option<&Tls>, accepted: Accepted<D>, stream: tokio::net::TcpStream)
where
    D: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(tls) = tls else {
        tokio::spawn(accepted.serve(stream));
        return;
    };
    let handshake = tls.acceptor().accept(stream);
    let (limit, peer) = (accepted.timeouts.header_read, accepted.peer);
    tokio::spawn(async move {
        match tokio::time::timeout(limit, handshake).await {
            Ok(Ok(stream)) => accepted.serve(stream).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    });
}

/// The client connections open now, under `limits.max_connections`.
struct Slots {
    open: AtomicUsize,
    max: usize,
    gauge: prometheus::IntGauge,
}

impl Slots {
    fn new(max: usize, gauge: prometheus::IntGauge) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            gauge,
        })
    }

    /// A slot for one more connection, if fewer than `max` are open.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        // Relaxed: a count; nothing else is published through it.
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()?;
        self.gauge.inc();
        Some(Slot(self.clone()))
    }
}

/// One open client connection's place; given back when the connection (or its handshake) ends.
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.dec();
    }
}

/// An accepted client connection, ready to be served over whatever carries it (TCP or TLS).
struct Accepted<D> {
    /// Held for the connection's life (its TLS handshake included).
    _slot: Slot,
    forwarder: Arc<Forwarder>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    conn: Arc<Conn>,
    drained: D,
    peer: std::net::SocketAddr,
    timeouts: head_deadline::Timeouts,
}

impl<D: std::future::Future<Output = ()>> Accepted<D> {
    /// Serves the connection's requests until it closes, or drains it on shutdown.
    async fn serve<IO>(self, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Accepted {
            _slot,
            forwarder,
            builder,
            conn,
            drained,
            peer,
            timeouts,
        } = self;
        let _open = conn.open.clone();
        let io = HeadDeadline::new(io, conn.clone(), timeouts);
        let idle = conn.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let (forwarder, conn) = (forwarder.clone(), conn.clone());
            async move {
                let answering = head_deadline::answering(conn, req.version());
                let response = forwarder.handle(req, answering.conn()).await;
                Ok::<_, Infallible>(head_deadline::answered(response, answering))
            }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        tokio::pin!(drained);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = idle.idle.notified() => {
                tracing::debug!(%peer, "idle HTTP/2 connection closed");
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            () = drained => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%peer, %error, "client connection ended with an error");
        }
    }
}

/// The header-line limit hyper applies when none is set.
const HYPER_MAX_HEADERS: usize = 100;

/// The client-side HTTP/1.1 and HTTP/2 server settings. The CONTINUATION flood (CVE-2024-27316
/// family) is bounded by the header list size: h2 stops decoding a header block beyond it.
fn server_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    // hyper's own limit is 100 header lines, kept in an uninitialised array on the stack; any other
    // limit makes it build (and fill) a vector of that size for every request head.
    if limits.max_request_headers != HYPER_MAX_HEADERS {
        http1.max_headers(limits.max_request_headers);
    }
    http1
        // One write of head and body copied together: for the small responses that dominate, the
        // copy is cheaper than assembling an iovec array per response (about 400 instructions).
        .writev(false)
        // The read buffer's cap, so the request head's: hyper answers 431 to a head beyond it.
        .max_buf_size(limits.max_request_head_size as usize)
        // `timeouts.header_read` is kept by the connection's IO (see `head_deadline`).
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive)
        .keep_alive_timeout(limits.http2_keepalive)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(limits.max_request_head_size)
        .max_pending_accept_reset_streams(limits.http2_max_pending_resets)
        .max_local_error_reset_streams(limits.http2_max_local_resets);
    builder
}

/// Per-connection state shared by its requests.
struct Conn {
    client: request::Client,
    /// The client's address and port, for the access log.
    peer: std::net::SocketAddr,
    open: mpsc::Sender<()>,
    /// Answering a request, or waiting for the next head (whose deadline the IO keeps).
    phase: head_deadline::Phase,
    /// Notified when an HTTP/2 connection has been idle too long: it is closed with a GOAWAY.
    idle: Notify,
}

impl Conn {
    /// Per connection, not per request: the client address as a header value, and the drain
    /// handle an upgraded tunnel keeps.
    fn new(peer: std::net::SocketAddr, tls: bool, open: mpsc::Sender<()>) -> Arc<Self> {
        Arc::new(Self {
            client: request::Client::new(peer.ip(), tls),
            peer,
            open,
            phase: head_deadline::Phase::new(),
            idle: Notify::new(),
        })
    }
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
    /// Shared with gRPC response bodies, which settle their call's outcome at its end.
    outcomes: Arc<Outcomes>,
    limits: request::RequestLimits,
    /// `limits.max_request_body`: a declared length beyond it is refused up front (413), and a
    /// body that streams past it fails as the client's.
    max_body: Option<u64>,
    telemetry: Arc<Telemetry>,
}

/// Counts a request whose client went away before it was answered.
struct Abandoned<'a>(Option<&'a IntCounter>);

impl Abandoned<'_> {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(aborted) = self.0 {
            aborted.inc();
        }
    }
}

/// Where one attempt goes, with the settings of the snapshot it was picked from (one request sees
/// one consistent set of settings per attempt).
struct Routed {
    endpoint: Arc<Endpoint>,
    role: Role,
    set_cookie: bool,
    settings: Settings,
    /// The request's start on the health clock.
    now: u64,
    /// What decided the route, for the access log.
    steer: pick::Steer,
}

impl Forwarder {
    fn new(
        snapshots: Snapshots,
        metrics: &Metrics,
        canary_stats: Arc<CanaryStats>,
        limits: &Limits,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let outcomes = Arc::new(Outcomes {
            snapshots: snapshots.clone(),
            canary_stats,
            ejections: metrics.ejections(),
        });
        Self {
            snapshots,
            outcomes,
            unrouted: metrics.unrouted(),
            errors: ErrorKind::ALL.map(|k| metrics.upstream_error(k.as_str())),
            client_errors: ClientFault::ALL.map(|k| metrics.client_error(k.as_str())),
            retries: Retry::LABELS.map(|reason| metrics.retry(reason)),
            budget: RetryBudget::new(),
            budget_exhausted: metrics.retry_budget_exhausted(),
            limits: request::RequestLimits {
                max_uri: limits.max_uri_size,
                max_headers: limits.max_request_headers,
            },
            max_body: limits.max_request_body,
            telemetry,
        }
    }

    /// Answers a request. A client that hangs up first cancels this future: that is counted as
    /// the client's `aborted`, and the attempt under way is cancelled with it (and the exchange
    /// logged as the client's `DC`).
    async fn handle(&self, req: Request<Incoming>, conn: &Conn) -> Response<Logged<ResponseBody>> {
        let abandoned = Abandoned(Some(&self.client_errors[ClientFault::Aborted.index()]));
        let mut exchange = Exchange::begin(&req, conn.peer, &self.telemetry);
        let response = self.pipeline(req, conn, &mut exchange).await;
        abandoned.answered();
        exchange.answer(response)
    }

    /// A request's pipeline: admit it, then per attempt route → prepare (once) → send through the
    /// upstream transport → classify → decide whether to go again.
    async fn pipeline(
        &self,
        mut req: Request<Incoming>,
        conn: &Conn,
        exchange: &mut Exchange<'_>,
    ) -> Response<ResponseBody> {
        let start = exchange.start();
        let now = health::now_ms(start);
        self.budget.deposit(start);
        let host = match request::admit(&req, &self.limits) {
            Ok(host) => host,
            Err(fault) => return self.refuse(fault, start),
        };
        if let Some(max) = self.max_body {
            if hyper::body::Body::size_hint(req.body()).lower() > max {
                return self.refuse(ClientFault::BodyTooLarge, start);
            }
        }
        exchange.stamp(req.headers_mut());
        let counter = if hyper::body::Body::is_end_stream(req.body()) {
            None // nothing to count: no allocation for a bodiless request
        } else {
            exchange.body_counter()
        };
        let mut out = Outgoing::new(req, host, self.max_body, counter);
        let mut rng = Rng::new();
        let mut tries = Tries::default();
        loop {
            let Some(route) = self.route(&out, &tries, &mut rng, now) else {
                return self.exhausted(tries, out.grpc.is_some(), start, exchange);
            };
            exchange.attempt(route.steer);
            if !out.is_prepared() {
                if let Err(error) = out.prepare(&route.settings, &conn.client).await {
                    let metrics = route.endpoint.metrics();
                    let answer = self.client_failure(&error, metrics, route.role, start);
                    exchange.ended_at(route.endpoint, route.role);
                    return answer;
                }
            }
            if let Some((retry, role)) = tries.take_retry() {
                self.retries[retry.reason()].inc();
                // The client may yet be served, but the attempt still failed where it went.
                if let (Role::Canary, Some(status)) = (role, retry.endpoint_status()) {
                    self.outcomes.canary_stats.record(status.as_u16());
                }
            }
            let failure = match self.attempt(&mut out, &route, conn, start).await {
                Attempted::Done(response) => {
                    exchange.ended_at(route.endpoint, route.role);
                    return response;
                }
                Attempted::Failed(failure) => failure,
            };
            if let Some(answer) = self.settle(failure, &route, &mut tries, &mut out, start) {
                if tries.budget_refused {
                    exchange.flag(crate::access_log::Flags::BUDGET_EXHAUSTED);
                }
                exchange.ended_at(route.endpoint, route.role);
                return answer;
            }
        }
    }

    /// One snapshot load: where this attempt goes.
    fn route(&self, out: &Outgoing, tries: &Tries, rng: &mut Rng, now: u64) -> Option<Routed> {
        let snapshot = self.snapshots.load();
        let hints = Hints {
            headers: out.headers(),
            avoid: tries.avoid(),
            now,
        };
        let route = pick::route(&snapshot, &hints, rng)?;
        Some(Routed {
            endpoint: route.endpoint.clone(),
            role: route.role,
            set_cookie: route.set_cookie,
            settings: *snapshot.settings(),
            now,
            steer: route.steer,
        })
    }

    /// Nothing (more) to route to: the last failure's answer, or 503 if there was none.
    fn exhausted(
        &self,
        tries: Tries,
        grpc: bool,
        start: Instant,
        exchange: &mut Exchange<'_>,
    ) -> Response<ResponseBody> {
        if tries.budget_refused {
            exchange.flag(crate::access_log::Flags::BUDGET_EXHAUSTED);
        }
        match tries.last_failure() {
            Some((retry, failed, role)) => {
                let answer = self.give_up(retry, failed.metrics(), role, grpc, start);
                exchange.ended_at(failed, role);
                answer
            }
            None => {
                let error = ProxyError::NoEndpoints;
                self.count(&error);
                self.local_error(&error, &self.unrouted, Role::Stable, grpc, start)
            }
        }
    }

    /// A request refused before routing (see [`request::admit`]).
    fn refuse(&self, fault: ClientFault, start: Instant) -> Response<ResponseBody> {
        let reason = match fault {
            ClientFault::NotAllowed => "tidegate is a reverse proxy: CONNECT is not forwarded",
            ClientFault::BodyTooLarge => "the request body is larger than limits.max_request_body",
            ClientFault::UriTooLong => "the request target is longer than limits.max_uri_size",
            ClientFault::HeadersTooLarge => {
                "the request has more header lines than limits.max_request_headers"
            }
            _ => "an HTTP/1.1 request needs exactly one Host header",
        };
        let error = ClientError::refused(fault, reason);
        self.client_failure(&error, &self.unrouted, Role::Stable, start)
    }
}
