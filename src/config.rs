//! The YAML config: raw serde structs (unknown fields rejected) validated into domain types.
//!
//! Every error names the field and, where YAML gives one, the line. Nothing downstream re-parses a
//! string: addresses are `SocketAddr`, durations `Duration`, weights [`Weight`], versions [`Version`].

mod duration;
mod friendly;

pub(crate) use duration::parse as parse_duration;
mod raw;
mod scalar;
mod telemetry;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::grpc::Codes;
use crate::probe::CheckConfig;
use crate::snapshot::health::OutlierPolicy;
use crate::snapshot::{EndpointSpec, EndpointState, RetryPolicy, Settings, Version, Weight};
use crate::upstream::Protocol;

use raw::RawConfig;

/// Why a config was refused. Its `Display` names the file, the field and the line where known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse {
        path: PathBuf,
        /// serde_yaml's message: `field.path: reason at line L column C`.
        message: String,
        line: Option<usize>,
    },
    #[error("invalid config {path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// A validated config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin: AdminConfig,
    pub discovery: DiscoveryConfig,
    pub canary: CanaryConfig,
    pub timeouts: Timeouts,
    pub retries: Retries,
    /// Passive outlier ejection; `None` when switched off with `outlier: null`.
    pub outlier: Option<OutlierPolicy>,
    /// Ramp time of a newly ready endpoint; zero is off.
    pub slow_start: Duration,
    /// Active health checks; off when `None`.
    pub health_check: Option<CheckConfig>,
    /// How often the config file is checked for changes.
    pub reload_interval: Duration,
    /// TLS termination on `listen`: the certificate pairs (the first for clients without SNI).
    /// Changing the files needs no restart (they are reloaded); turning TLS on or off does.
    pub tls: Option<Vec<crate::tls::CertFiles>>,
    /// What a client may hold (`limits:`). Takes effect on restart.
    pub limits: Limits,
    /// Add `x-tidegate-version` (the serving endpoint's version) to every proxied response, so
    /// load tests and clients can tell versions apart without reading bodies.
    pub expose_version_header: bool,
    /// An endpoint's response with more header lines than this is refused (502).
    pub max_response_headers: usize,
    /// How to speak to endpoints whose source does not say (`upstream.protocol`).
    pub protocol: Protocol,
    /// HTTP/1.1 connections open to one endpoint at most.
    pub max_connections_per_endpoint: usize,
    /// The gRPC statuses that count as an endpoint's failure.
    pub grpc_failures: Codes,
    /// The gRPC statuses of a trailers-only answer that are retried on another endpoint.
    pub grpc_retry_on: Codes,
    /// A version's request series leave `/metrics` this long after its last endpoint left
    /// (`metrics.forget_versions_after`).
    pub forget_versions_after: Duration,
    /// One line per request; off when `None`. Takes effect on restart.
    pub access_log: Option<crate::access_log::AccessLogConfig>,
    /// Keep or give every request an ID; off when `None`. Takes effect on restart.
    pub request_id: Option<crate::trace::RequestIdConfig>,
    /// W3C Trace Context and span export. Takes effect on restart.
    pub tracing: crate::trace::TracingConfig,
}

/// Bounds on what one client may hold, so that no connection state lasts or grows without end.
/// Fixed for a listener's life.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Client connections open at once at most; a new one beyond is closed at once.
    pub max_connections: usize,
    /// A connection carrying no request this long is closed: HTTP/1.1 between a response and the
    /// next request head, HTTP/2 with no stream open (with a GOAWAY).
    pub idle_timeout: Duration,
    /// An HTTP/2 client connection silent this long is pinged, and closed if the ping goes
    /// unanswered as long: a peer that vanished without closing is noticed.
    pub http2_keepalive: Duration,
    /// Streams one HTTP/2 client may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub http2_max_concurrent_streams: u32,
    /// Streams an HTTP/2 client may open and reset before tidegate accepted them, pending at
    /// once, before the connection is closed: the rapid-reset attack (CVE-2023-44487).
    pub http2_max_pending_resets: usize,
    /// Streams tidegate may reset on one HTTP/2 connection for the client's errors before it
    /// closes the connection.
    pub http2_max_local_resets: usize,
    /// Header lines in a request at most (431 beyond).
    pub max_request_headers: usize,
    /// Bytes in a request head at most: HTTP/1's request line and headers, HTTP/2's header list
    /// (`SETTINGS_MAX_HEADER_LIST_SIZE`). 431 beyond.
    pub max_request_head_size: u32,
    /// Bytes in a request target at most (414 beyond).
    pub max_uri_size: usize,
    /// Bytes in a request body at most (413 beyond); `None` for no limit.
    pub max_request_body: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, mutating admin calls need `Authorization: Bearer <token>`.
    pub token: Option<Arc<str>>,
}

/// Where endpoints come from. An enum so that sources are added side by side.
#[derive(Clone, Debug, PartialEq)]
pub enum DiscoveryConfig {
    /// Endpoints listed in this file; the file is re-read when it changes.
    Static { endpoints: Vec<EndpointSpec> },
    /// A Service's EndpointSlices, and optionally its Deployment's rollout.
    Kubernetes(KubernetesConfig),
}

/// Kubernetes discovery settings. Changing them takes a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesConfig {
    /// `None`: the client's own namespace (a pod's, from its service account; outside a cluster,
    /// the kubeconfig context's), so that one config serves in whatever namespace it is installed.
    pub namespace: Option<String>,
    /// Watch EndpointSlices labelled `kubernetes.io/service-name=<service>`.
    pub service: String,
    /// Which EndpointSlice port to send to; `None` takes each slice's first port.
    pub port: Option<PortRef>,
    /// Enables rollout-aware roles: the newest ReplicaSet is the canary.
    pub deployment: Option<String>,
    /// Else `$KUBECONFIG`, `~/.kube/config`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    pub min_ready: MinReady,
    /// Server-side timeout of each watch; a silent API server is noticed within about 1.5× this.
    pub api_timeout: Duration,
    /// Take an endpoint out of rotation when its pod is being deleted, ahead of the EndpointSlice
    /// (watches the Service's pods, selected by its selector).
    pub pod_deletion: bool,
}

/// An EndpointSlice port, by name or number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Name(String),
    Number(u16),
}

/// How long an endpoint must have been ready before it gets traffic while others can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinReady {
    /// The Deployment's `minReadySeconds` (0 without a Deployment).
    Deployment,
    Fixed(Duration),
}

#[derive(Clone, Debug, PartialEq)]
pub struct CanaryConfig {
    /// The version that is the canary in static mode.
    pub version: Option<Version>,
    pub weight: Weight,
    /// When a followed Deployment's weight applies.
    pub apply: Apply,
    /// A request header that forces the role: `always` → canary, `never` → stable.
    pub header: Option<HeaderName>,
    /// Pin clients to the version they were first served by (cookie `tidegate-version`).
    pub sticky: bool,
    /// Automatic abort on a high canary error rate; off when absent.
    pub abort: Option<AbortConfig>,
}

/// When to abort a canary automatically.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AbortConfig {
    /// 5xx responses and upstream failures over requests, 0 to 1.
    pub max_error_rate: f64,
    /// Fewer canary requests than this in the window never abort.
    pub min_requests: u64,
    pub window: Duration,
}

/// When the canary weight applies to a followed Deployment. (A static file has no rollout to
/// pause, so there the weight always applies.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Apply {
    /// Only while the rollout is paused mid-way (`kubectl rollout pause`); otherwise traffic is
    /// shared by ready endpoint count, as a Service would.
    #[default]
    Paused,
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    /// From sending a request upstream to receiving its response head.
    pub request: Duration,
    /// For a client to send a complete request head (slow clients are cut off).
    pub header_read: Duration,
    /// A client's request body may pause this long between two reads (then 408).
    pub body_read: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retries {
    /// Endpoints tried per request, whatever the failure (1 = never retry).
    pub connect_attempts: u32,
    pub policy: RetryPolicy,
}

/// A config file larger than this is refused (a mistyped path such as `/dev/zero` would
/// otherwise be read until memory runs out).
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Reads a text file of at most `limit` bytes.
pub(crate) fn read_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(text)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_limited(path, MAX_CONFIG_FILE).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| {
            let (mut message, line) =
                friendly::explain(&e.to_string(), e.location().map(|l| l.line()), text);
            if let (Some(line), false) = (line, message.contains(" at line ")) {
                let _ = write!(message, " at line {line}");
            }
            ConfigError::Parse {
                path: path.to_owned(),
                message,
                line,
            }
        })?;
        raw.validate(path)
    }

    /// A config with every documented default and the given discovery (for the embedded demo).
    pub fn with_discovery(discovery: DiscoveryConfig) -> Self {
        let mut config = Self::parse(
            "discovery: { static: { endpoints: [], allow_empty: true } }",
            Path::new("<defaults>"),
        )
        .expect("the defaults are a valid config");
        config.discovery = discovery;
        config
    }

    /// The forwarding settings this config puts into every snapshot.
    pub fn settings(&self) -> Settings {
        Settings {
            connect_timeout: self.timeouts.connect,
            request_timeout: self.timeouts.request,
            body_read_timeout: self.timeouts.body_read,
            connect_attempts: self.retries.connect_attempts,
            sticky: self.canary.sticky,
            retry: self.retries.policy,
            outlier: self.outlier,
            slow_start: self.slow_start,
            expose_version_header: self.expose_version_header,
            max_response_headers: self.max_response_headers,
            protocol: self.protocol,
            max_connections_per_endpoint: self.max_connections_per_endpoint,
            grpc_failures: self.grpc_failures,
            grpc_retry_on: self.grpc_retry_on,
        }
    }

    /// What is valid but probably not meant: printed by `validate`, logged at start and reload.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let (Some(canary), DiscoveryConfig::Static { endpoints }) =
            (&self.canary.version, &self.discovery)
        {
            if !endpoints.iter().any(|e| &e.version == canary) {
                warnings.push(format!(
                    "canary.version {canary} matches no endpoint in discovery.static.endpoints: \
                     the canary gets no traffic"
                ));
            }
        }
        warnings
    }

    /// One line for `tidegate validate`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "config OK: listen {}, admin {}",
            self.listen, self.admin.listen
        );
        match &self.discovery {
            DiscoveryConfig::Static { endpoints } => {
                let ready = endpoints
                    .iter()
                    .filter(|e| e.state == EndpointState::Ready)
                    .count();
                let _ = write!(
                    s,
                    ", static discovery with {} endpoints ({ready} ready)",
                    endpoints.len()
                );
            }
            DiscoveryConfig::Kubernetes(k) => {
                let _ = write!(
                    s,
                    ", kubernetes discovery of service {}/{}",
                    k.namespace.as_deref().unwrap_or("(its own namespace)"),
                    k.service
                );
                match &k.port {
                    Some(PortRef::Name(name)) => {
                        let _ = write!(s, " port {name}");
                    }
                    Some(PortRef::Number(n)) => {
                        let _ = write!(s, " port {n}");
                    }
                    None => {}
                }
                if let Some(d) = &k.deployment {
                    let _ = write!(s, ", rollout of deployment {d}");
                }
            }
        }
        match &self.canary.version {
            Some(v) => {
                let _ = write!(s, ", canary {v} at {}%", self.canary.weight.percent());
            }
            None => s.push_str(", no canary"),
        }
        s
    }
}

#[cfg(test)]
mod tests;
