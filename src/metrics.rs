//! Every Prometheus family tidegate exports, registered once in one non-global registry.
//!
//! Label handles are resolved when an endpoint's version group or a server starts, or on first use,
//! never per request: the request path only calls `inc()` and `observe()`. The one exception is a
//! gRPC call answered with an HTTP status other than 200 (rare), whose series is looked up each time.
//! The two families every request writes are sharded per thread ([`sharded`]).

pub(crate) mod sharded;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::grpc::Code;
use crate::snapshot::{Role, Version};
use sharded::{Counter, Family, Latency};

/// Latency buckets in seconds: sub-millisecond proxying up to the default 30 s request timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// `tidegate_requests_total`'s labels, in the order its series are resolved with.
const REQUEST_LABELS: [&str; 4] = ["version", "code", "role", "grpc_status"];

/// The version label used for requests answered by tidegate itself (nothing was routable).
pub const UNROUTED: &str = "none";

/// How long a version's series outlive its last endpoint unless configured.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Versions seen in snapshots, and when each that left did.
#[derive(Default)]
struct Departed {
    known: std::collections::HashSet<String>,
    since: std::collections::HashMap<String, std::time::Instant>,
    forget_after: Option<Duration>,
}

/// The registry and every family in it.
pub struct Metrics {
    registry: Registry,
    requests: Family<Counter>,
    duration: Family<Latency>,
    endpoints: IntGaugeVec,
    upstream_errors: IntCounterVec,
    client_errors: IntCounterVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounter,
    ejections: IntCounter,
    config_reloads: IntCounterVec,
    tls_reloads: IntCounterVec,
    client_connections: prometheus::IntGauge,
    upstream_connections: IntGauge,
    requests_in_flight: IntGauge,
    /// Versions that left the snapshot, and since when: their series go at the first scrape after
    /// `forget_after` (see [`Metrics::versions_live`]).
    #[allow(clippy::disallowed_types)] // control plane only: each publish and each scrape
    departed: std::sync::Mutex<Departed>,
    connections_rejected: IntCounter,
    tls_expiry: prometheus::IntGaugeVec,
    canary_weight: Gauge,
    rollout_paused: IntGauge,
    canary_weight_configured: Gauge,
    canary_aborted: IntGauge,
    config_errors: IntCounterVec,
    discovery_errors: IntCounterVec,
    discovery_skipped: IntCounterVec,
    discovery_last_sync: Gauge,
    access_log_dropped: IntCounter,
    trace_spans: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(clippy::disallowed_types)] // `departed`: control plane only
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = Family::new(
            "tidegate_requests_total",
            "Requests answered to clients, by the version that served them (\"none\" when \
             tidegate answered itself), HTTP status code, role, and grpc_status: the gRPC status a \
             call ended with (0..16), empty for non-gRPC; counted when the response starts, a gRPC \
             call once its status is known.",
            &REQUEST_LABELS,
        );
        let duration = Family::new(
            "tidegate_request_duration_seconds",
            "Time from receiving a request to the end of its response body, by serving version.",
            &["version", "role"],
        );
        let endpoints = IntGaugeVec::new(
            Opts::new(
                "tidegate_endpoints",
                "Endpoints in the current snapshot by version, role (stable/canary) and state.",
            ),
            &["version", "role", "state"],
        )
        .expect("valid metric definition");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "tidegate_upstream_errors_total",
                "Failed attempts to get a response from an endpoint, by kind (connect, \
                 connect_timeout, timeout, reset, protocol; no_endpoints and saturated, tidegate's \
                 own: nothing routable, or every connection the endpoint may have was busy); \
                 counted per attempt, retried or not.",
            ),
            &["kind"],
        )
        .expect("valid metric definition");
        let client_errors = IntCounterVec::new(
            Opts::new(
                "tidegate_client_errors_total",
                "Requests that failed through the client's own fault, by kind (bad_framing: a \
                 malformed body; body_timeout: the body stalled; aborted: the client hung up \
                 before its answer; bad_request: no or two Host headers; method_not_allowed: \
                 CONNECT). Never held against an endpoint, a canary or the retry budget.",
            ),
            &["kind"],
        )
        .expect("valid metric definition");
        let retries = IntCounterVec::new(
            Opts::new(
                "tidegate_retries_total",
                "Requests sent again to another endpoint, by the reason the previous attempt failed \
                 (connect, reset, 502, 503, saturated).",
            ),
            &["reason"],
        )
        .expect("valid metric definition");
        let retry_budget_exhausted = IntCounter::new(
            "tidegate_retry_budget_exhausted_total",
            "Retries not made because the retry budget (retries.budget_percent of the last 10 s \
             of requests, plus a floor) was spent; the failure went to the client.",
        )
        .expect("valid metric definition");
        let ejections = IntCounter::new(
            "tidegate_ejections_total",
            "Endpoints ejected (left out for a while) after consecutive failures.",
        )
        .expect("valid metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "tidegate_config_reloads_total",
                "Config file changes seen, by result: success (applied) or error (rejected; the \
                 previous config keeps serving).",
            ),
            &["result"],
        )
        .expect("valid metric definition");
        let connections = IntGaugeVec::new(
            Opts::new(
                "tidegate_connections",
                "Connections open now, by side: client (accepted from clients, TLS handshakes \
                 included) and upstream (to the endpoints of the current snapshot, HTTP/1.1 in use \
                 or idle and HTTP/2; counted at scrape time).",
            ),
            &["side"],
        )
        .expect("valid metric definition");
        let client_connections = connections.with_label_values(&["client"]);
        let upstream_connections = connections.with_label_values(&["upstream"]);
        let requests_in_flight = IntGauge::new(
            "tidegate_requests_in_flight",
            "Requests at endpoints of the current snapshot now, from the send to the end of the \
             response body (counted at scrape time).",
        )
        .expect("valid metric definition");
        let connections_rejected = IntCounter::new(
            "tidegate_connections_rejected_total",
            "Client connections closed at once because limits.max_connections were open.",
        )
        .expect("valid metric definition");
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "tidegate_tls_reloads_total",
                "Changes to the TLS certificate files seen, by result: success (new handshakes use \
                 them) or error (they did not load; the previous certificates keep serving).",
            ),
            &["result"],
        )
        .expect("valid metric definition");
        let tls_expiry = prometheus::IntGaugeVec::new(
            Opts::new(
                "tidegate_tls_certificate_expiry_timestamp_seconds",
                "When each configured TLS certificate (by its file) expires, in Unix seconds, for an \
                 alert before it does.",
            ),
            &["name"],
        )
        .expect("valid metric definition");
        let canary_weight = Gauge::new(
            "tidegate_canary_weight",
            "Percentage of requests the current snapshot sends to the canary while both roles \
             have ready endpoints.",
        )
        .expect("valid metric definition");
        let rollout_paused = IntGauge::new(
            "tidegate_rollout_paused",
            "1 while the followed Deployment is paused (kubectl rollout pause), else 0.",
        )
        .expect("valid metric definition");
        let canary_weight_configured = Gauge::new(
            "tidegate_canary_weight_configured",
            "The canary weight in force (admin override, else the Deployment annotation, else \
             canary.weight), in percent, whether or not it applies right now.",
        )
        .expect("valid metric definition");
        let canary_aborted = IntGauge::new(
            "tidegate_canary_aborted",
            "1 while the canary is aborted because of its error rate (its weight is then 0).",
        )
        .expect("valid metric definition");
        let config_errors = IntCounterVec::new(
            Opts::new(
                "tidegate_config_errors_total",
                "Settings ignored because they were invalid, by source (annotation); the previous \
                 value stays in force.",
            ),
            &["source"],
        )
        .expect("valid metric definition");
        let discovery_errors = IntCounterVec::new(
            Opts::new(
                "tidegate_discovery_errors_total",
                "Failed list/watch calls to the Kubernetes API by resource; the last good \
                 endpoint set keeps serving while they last.",
            ),
            &["resource"],
        )
        .expect("valid metric definition");
        let discovery_skipped = IntCounterVec::new(
            Opts::new(
                "tidegate_discovery_skipped_total",
                "Discovered objects or entries ignored because they make no sense (unusable \
                 address type, missing port, unparseable address), by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric definition");
        let discovery_last_sync = Gauge::new(
            "tidegate_discovery_last_sync_timestamp_seconds",
            "Unix time at which every discovery watch was last known healthy and in sync.",
        )
        .expect("valid metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "tidegate_build_info",
                "Always 1; labelled with the tidegate version.",
            ),
            &["version"],
        )
        .expect("valid metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let access_log_dropped = IntCounter::new(
            "tidegate_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up (a stalled stdout, a \
             slow disk) or a write failed; requests never wait for the log.",
        )
        .expect("valid metric definition");
        let trace_spans = IntCounterVec::new(
            Opts::new(
                "tidegate_trace_spans_total",
                "Spans offered for OTLP export, by result: success (the collector took them), \
                 error (it refused or could not be reached) or dropped (the export queue was full).",
            ),
            &["result"],
        )
        .expect("valid metric definition");

        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(endpoints.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(client_errors.clone()),
            Box::new(retries.clone()),
            Box::new(retry_budget_exhausted.clone()),
            Box::new(ejections.clone()),
            Box::new(config_reloads.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(connections),
            Box::new(requests_in_flight.clone()),
            Box::new(connections_rejected.clone()),
            Box::new(tls_expiry.clone()),
            Box::new(canary_weight.clone()),
            Box::new(rollout_paused.clone()),
            Box::new(canary_weight_configured.clone()),
            Box::new(canary_aborted.clone()),
            Box::new(config_errors.clone()),
            Box::new(discovery_errors.clone()),
            Box::new(discovery_skipped.clone()),
            Box::new(discovery_last_sync.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(trace_spans.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry
                .register(collector)
                .expect("each family is registered once");
        }
        // Pre-create the closed label sets so that dashboards see zeros rather than no data.
        for result in ["success", "error"] {
            config_reloads.with_label_values(&[result]);
            tls_reloads.with_label_values(&[result]);
        }
        config_errors.with_label_values(&["annotation"]);
        for result in ["success", "error", "dropped"] {
            trace_spans.with_label_values(&[result]);
        }
        Self {
            registry,
            requests,
            duration,
            endpoints,
            upstream_errors,
            client_errors,
            retries,
            retry_budget_exhausted,
            ejections,
            config_reloads,
            tls_reloads,
            client_connections,
            upstream_connections,
            requests_in_flight,
            departed: std::sync::Mutex::default(),
            connections_rejected,
            tls_expiry,
            canary_weight,
            rollout_paused,
            canary_weight_configured,
            canary_aborted,
            config_errors,
            discovery_errors,
            discovery_skipped,
            discovery_last_sync,
            access_log_dropped,
            trace_spans,
        }
    }

    /// Sets the gauges only a scrape can know: requests in flight at endpoints and open upstream
    /// connections, summed over the current snapshot's endpoints.
    pub fn set_load(&self, in_flight: usize, upstream_connections: usize) {
        self.requests_in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        self.upstream_connections
            .set(i64::try_from(upstream_connections).unwrap_or(i64::MAX));
    }

    /// How long a version's series outlive its last endpoint (10 minutes unless set).
    pub fn set_forget_after(&self, after: Duration) {
        self.lock_departed().forget_after = Some(after);
    }

    /// The versions of the snapshot just published: a version that left is remembered with the
    /// time, one that came back is forgotten as departed.
    pub fn versions_live<'a>(&self, live: impl IntoIterator<Item = &'a str>) {
        let live: std::collections::HashSet<&str> = live.into_iter().collect();
        let mut departed = self.lock_departed();
        let Departed { known, since, .. } = &mut *departed;
        let now = std::time::Instant::now();
        for version in known.iter().filter(|v| !live.contains(v.as_str())) {
            since.entry(version.clone()).or_insert(now);
        }
        since.retain(|version, _| !live.contains(version.as_str()));
        known.extend(live.into_iter().map(str::to_owned));
    }

    /// Removes every request series of versions gone for longer than `forget_after`, so that a
    /// year of rollouts does not grow `/metrics` without end. Runs at scrape time.
    fn forget_departed(&self) {
        let mut departed = self.lock_departed();
        let after = departed.forget_after.unwrap_or(FORGET_AFTER);
        let overdue: Vec<String> = departed
            .since
            .iter()
            .filter(|(_, since)| since.elapsed() >= after)
            .map(|(version, _)| version.clone())
            .collect();
        for version in overdue {
            departed.since.remove(&version);
            departed.known.remove(&version);
            self.requests.remove_where("version", &version);
            self.duration.remove_where("version", &version);
            tracing::info!(%version, "series of a departed version removed from /metrics");
        }
    }

    #[allow(clippy::disallowed_types)] // see `departed`
    fn lock_departed(&self) -> std::sync::MutexGuard<'_, Departed> {
        self.departed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts access log lines dropped (see `access_log`).
    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    /// Spans exported, refused or dropped, by result (see `trace::otlp`).
    pub fn trace_spans(&self) -> IntCounterVec {
        self.trace_spans.clone()
    }

    /// Handles for one version, resolved once and shared by all of its endpoints.
    pub fn version(&self, version: &Version) -> VersionMetrics {
        self.version_label(version.as_str(), Role::ALL.map(Role::as_str))
    }

    /// Handles for requests tidegate answers without an endpoint (version and role `none`).
    pub fn unrouted(&self) -> VersionMetrics {
        self.version_label(UNROUTED, [UNROUTED; 2])
    }

    fn version_label(&self, label: &str, roles: [&'static str; 2]) -> VersionMetrics {
        VersionMetrics {
            label: label.to_owned(),
            roles,
            requests: self.requests.clone(),
            codes: Role::ALL.map(|_| (0..CODES).map(|_| OnceLock::new()).collect()),
            grpc_ok: Role::ALL.map(|_| std::array::from_fn(|_| OnceLock::new())),
            duration: roles.map(|role| self.duration.with_label_values(&[label, role])),
        }
    }

    /// The counter for one upstream error kind; resolve once and keep it.
    pub fn upstream_error(&self, kind: &str) -> IntCounter {
        self.upstream_errors.with_label_values(&[kind])
    }

    /// The counter for one kind of client fault; resolve once and keep it.
    pub fn client_error(&self, kind: &str) -> IntCounter {
        self.client_errors.with_label_values(&[kind])
    }

    /// Retries refused because the budget was spent; resolve once and keep it.
    pub fn retry_budget_exhausted(&self) -> IntCounter {
        self.retry_budget_exhausted.clone()
    }

    /// Ejections; resolve once and keep it.
    pub fn ejections(&self) -> IntCounter {
        self.ejections.clone()
    }

    /// The counter for one retry reason; resolve once and keep it.
    pub fn retry(&self, reason: &str) -> IntCounter {
        self.retries.with_label_values(&[reason])
    }

    /// The gauge of open client connections.
    pub fn client_connections(&self) -> prometheus::IntGauge {
        self.client_connections.clone()
    }

    /// Counts client connections refused at the connection limit.
    pub fn connections_rejected(&self) -> IntCounter {
        self.connections_rejected.clone()
    }

    /// Counts a change to the TLS certificate files (see `tls::watch`).
    pub fn tls_reload(&self, success: bool) {
        let result = if success { "success" } else { "error" };
        self.tls_reloads.with_label_values(&[result]).inc();
    }

    /// Records when the certificate in file `name` expires.
    pub fn set_tls_expiry(&self, name: &str, unix_seconds: i64) {
        self.tls_expiry.with_label_values(&[name]).set(unix_seconds);
    }

    pub fn config_reload(&self, success: bool) {
        let result = if success { "success" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Replaces the endpoint gauges with the given `(version, role, state, count)` rows.
    pub fn set_endpoint_counts<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a str, &'a str, &'a str, i64)>,
    ) {
        self.endpoints.reset();
        for (version, role, state, n) in rows {
            self.endpoints
                .with_label_values(&[version, role, state])
                .set(n);
        }
    }

    /// Sets `tidegate_endpoints{state="ejected"}` from `(version, role, count)` rows (at scrape
    /// time: ejection ends lazily, so only a scrape knows the current count).
    pub fn set_ejected_counts<'a>(&self, rows: impl IntoIterator<Item = (&'a str, &'a str, i64)>) {
        for (version, role, n) in rows {
            self.endpoints
                .with_label_values(&[version, role, "ejected"])
                .set(n);
        }
    }

    pub fn set_canary_weight(&self, percent: f64) {
        self.canary_weight.set(percent);
    }

    pub fn set_canary_weight_configured(&self, percent: f64) {
        self.canary_weight_configured.set(percent);
    }

    pub fn set_canary_aborted(&self, aborted: bool) {
        self.canary_aborted.set(i64::from(aborted));
    }

    /// Counts an invalid setting from `source` that was ignored.
    pub fn config_error(&self, source: &str) {
        self.config_errors.with_label_values(&[source]).inc();
    }

    pub fn set_rollout_paused(&self, paused: bool) {
        self.rollout_paused.set(i64::from(paused));
    }

    /// The error counter for one watched resource; resolve once and keep it.
    pub fn discovery_error(&self, resource: &str) -> IntCounter {
        self.discovery_errors.with_label_values(&[resource])
    }

    pub fn discovery_skipped(&self, reason: &str) {
        self.discovery_skipped.with_label_values(&[reason]).inc();
    }

    /// Records that discovery was in sync at `unix_seconds`.
    pub fn discovery_synced(&self, unix_seconds: f64) {
        self.discovery_last_sync.set(unix_seconds);
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        self.forget_departed();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    /// One gauge of the `tidegate_endpoints` family, for tests and the admin API.
    pub fn endpoint_gauge(&self, version: &str, role: &str, state: &str) -> IntGauge {
        self.endpoints.with_label_values(&[version, role, state])
    }
}

/// Status codes 100..=599 get a lazily resolved counter each.
const CODES: usize = 500;

/// The `grpc_status` label of a response that is not a gRPC call.
const NOT_GRPC: &str = "";

/// The request-path handles of one version: a counter per status code and, for gRPC calls answered
/// 200, per gRPC status (each resolved on first use, then a plain atomic load), and the latency
/// histogram.
pub struct VersionMetrics {
    label: String,
    roles: [&'static str; 2],
    requests: Family<Counter>,
    /// Per role, per status code; non-gRPC responses.
    codes: [Box<[OnceLock<Arc<Counter>>]>; 2],
    /// Per role, per gRPC status; gRPC calls answered HTTP 200 (nearly all of them: a gRPC server
    /// reports failures in `grpc-status`, not in the HTTP status).
    grpc_ok: [[OnceLock<Arc<Counter>>; Code::COUNT]; 2],
    duration: [Arc<Latency>; 2],
}

impl VersionMetrics {
    /// Counts a response with `status` that is not a gRPC call, served in `role`.
    #[inline]
    pub fn count(&self, status: u16, role: Role) {
        let resolve = || self.resolve(status, role, NOT_GRPC);
        match (status as usize).checked_sub(100) {
            Some(i) if i < CODES => self.codes[role.index()][i].get_or_init(resolve).inc(),
            _ => resolve().inc(),
        }
    }

    /// Counts a gRPC call answered with HTTP `status` that ended with `code`, served in `role`.
    /// Only 200 has cached handles: any other status is a proxy or protocol failure, rare enough
    /// to resolve its series each time.
    #[inline]
    pub fn count_grpc(&self, status: u16, code: Code, role: Role) {
        let resolve = || self.resolve(status, role, code.label());
        match status {
            200 => self.grpc_ok[role.index()][code.index()]
                .get_or_init(resolve)
                .inc(),
            _ => resolve().inc(),
        }
    }

    fn resolve(&self, status: u16, role: Role, grpc_status: &str) -> Arc<Counter> {
        self.requests.with_label_values(&[
            self.label.as_str(),
            &status.to_string(),
            self.roles[role.index()],
            grpc_status,
        ])
    }

    /// Records a finished request's duration.
    #[inline]
    pub fn observe(&self, elapsed: Duration, role: Role) {
        self.duration[role.index()].observe(elapsed);
    }
}

#[cfg(test)]
mod tests;
