//! The YAML config: raw serde structs (unknown fields rejected) validated into domain types.
//!
//! Every error names the field and, where YAML gives one, the line. Nothing downstream re-parses a
//! string: addresses are `SocketAddr`, durations `Duration`, weights [`Weight`], versions [`Version`].

mod duration;
mod scalar;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

use crate::probe::CheckConfig;
use crate::snapshot::health::OutlierPolicy;
use crate::snapshot::{EndpointSpec, EndpointState, RetryPolicy, Settings, Version, Weight};

use duration::Dur;
use scalar::{validated, Scalar};

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
    pub namespace: String,
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
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retries {
    /// Endpoints tried per request, whatever the failure (1 = never retry).
    pub connect_attempts: u32,
    pub policy: RetryPolicy,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        })?;
        raw.validate(path)
    }

    /// A config with every documented default and the given discovery (for the embedded demo).
    pub fn with_discovery(discovery: DiscoveryConfig) -> Self {
        let mut config = Self::parse(
            "discovery: { static: { endpoints: [] } }",
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
            connect_attempts: self.retries.connect_attempts,
            sticky: self.canary.sticky,
            retry: self.retries.policy,
            outlier: self.outlier,
            slow_start: self.slow_start,
        }
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
                    k.namespace, k.service
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default)]
    admin: RawAdmin,
    // `discovery: { static: ... }` rather than YAML's `!static` tag syntax.
    #[serde(with = "serde_yaml_ng::with::singleton_map")]
    discovery: RawDiscovery,
    #[serde(default)]
    canary: RawCanary,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    retries: RawRetries,
    #[serde(default = "default_outlier")]
    outlier: Option<RawOutlier>,
    #[serde(default = "secs::<0>")]
    slow_start: Dur,
    #[serde(default)]
    health_check: Option<RawHealthCheck>,
    #[serde(default)]
    reload: RawReload,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    listen: SocketAddr,
    #[serde(default, deserialize_with = "token")]
    token: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawDiscovery {
    Static(RawStatic),
    Kubernetes(RawKubernetes),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    #[serde(default = "default_namespace", deserialize_with = "k8s_name")]
    namespace: String,
    #[serde(deserialize_with = "k8s_name")]
    service: String,
    #[serde(default, deserialize_with = "port_ref")]
    port: Option<PortRef>,
    #[serde(default, deserialize_with = "optional_k8s_name")]
    deployment: Option<String>,
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
    #[serde(default = "min_ready_deployment", deserialize_with = "min_ready")]
    min_ready: MinReady,
    #[serde(default = "secs::<30>")]
    api_timeout: Dur,
}

fn default_namespace() -> String {
    "default".to_owned()
}

fn min_ready_deployment() -> MinReady {
    MinReady::Deployment
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn k8s_name_of(s: Scalar<'_>) -> Result<Option<String>, String> {
    match s {
        Scalar::Null => Ok(None),
        Scalar::Str(s)
            if !s.is_empty()
                && s.len() <= 253
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                })
                && !s.starts_with(['-', '.'])
                && !s.ends_with(['-', '.']) =>
        {
            Ok(Some(s.to_owned()))
        }
        _ => Err(
            "must be a Kubernetes object name (lowercase letters, digits, '-' and '.')".to_owned(),
        ),
    }
}

fn k8s_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    validated(d, "a Kubernetes object name", |s| {
        k8s_name_of(s)?.ok_or_else(|| "a name is required".to_owned())
    })
}

fn optional_k8s_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    validated(d, "a Kubernetes object name or null", k8s_name_of)
}

fn port_ref<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PortRef>, D::Error> {
    validated(d, "a port name or number", |s| match s {
        Scalar::Null => Ok(None),
        Scalar::Number(n) if n.fract() == 0.0 && (1.0..=65535.0).contains(&n) => {
            Ok(Some(PortRef::Number(n as u16)))
        }
        Scalar::Str(s)
            if !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Ok(Some(PortRef::Name(s.to_owned())))
        }
        _ => Err("must be a port number from 1 to 65535 or a port name".to_owned()),
    })
}

fn min_ready<'de, D: Deserializer<'de>>(d: D) -> Result<MinReady, D::Error> {
    validated(d, "`deployment` or a duration", |s| match s {
        Scalar::Str("deployment") => Ok(MinReady::Deployment),
        Scalar::Str(s) => duration::parse(s)
            .map(MinReady::Fixed)
            .ok_or_else(|| "must be `deployment` or a duration such as 0s or 10s".to_owned()),
        _ => Err("must be `deployment` or a duration such as 0s or 10s".to_owned()),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    #[serde(deserialize_with = "unique_endpoints")]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    address: SocketAddr,
    #[serde(deserialize_with = "version")]
    version: Version,
    #[serde(default = "yes")]
    ready: bool,
    #[serde(default)]
    name: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    #[serde(default, deserialize_with = "optional_version")]
    version: Option<Version>,
    #[serde(default, deserialize_with = "weight")]
    weight: Weight,
    #[serde(default = "apply_paused", deserialize_with = "apply")]
    apply: Apply,
    #[serde(default, deserialize_with = "header_name")]
    header: Option<HeaderName>,
    #[serde(default)]
    sticky: bool,
    #[serde(default)]
    abort: Option<RawAbort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbort {
    #[serde(deserialize_with = "error_rate")]
    max_error_rate: f64,
    #[serde(default = "fifty")]
    min_requests: u64,
    #[serde(default = "secs::<30>")]
    window: Dur,
}

fn fifty() -> u64 {
    50
}

fn error_rate<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    validated(d, "an error rate", |s| match s {
        Scalar::Number(n) if (0.0..=1.0).contains(&n) => Ok(n),
        _ => Err("must be a fraction from 0 to 1, such as 0.05 for 5%".to_owned()),
    })
}

fn apply_paused() -> Apply {
    Apply::Paused
}

fn apply<'de, D: Deserializer<'de>>(d: D) -> Result<Apply, D::Error> {
    validated(d, "`paused` or `always`", |s| match s {
        Scalar::Str("paused") => Ok(Apply::Paused),
        Scalar::Str("always") => Ok(Apply::Always),
        _ => Err("must be `paused` or `always`".to_owned()),
    })
}

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HeaderName>, D::Error> {
    validated(d, "a header name", |s| match s {
        Scalar::Null => Ok(None),
        Scalar::Str(s) => HeaderName::from_bytes(s.as_bytes())
            .map(Some)
            .map_err(|_| format!("{s:?} is not a valid header name")),
        _ => Err("must be a header name".to_owned()),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default = "secs::<1>")]
    connect: Dur,
    #[serde(default = "secs::<30>")]
    request: Dur,
    #[serde(default = "secs::<10>")]
    header_read: Dur,
    #[serde(default = "secs::<30>")]
    drain: Dur,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: secs::<1>(),
            request: secs::<30>(),
            header_read: secs::<10>(),
            drain: secs::<30>(),
        }
    }
}

fn secs<const N: u64>() -> Dur {
    Dur(Duration::from_secs(N))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetries {
    #[serde(default = "two", deserialize_with = "attempts")]
    connect_attempts: u32,
    #[serde(default = "retry_on_default", deserialize_with = "retry_on")]
    on: RetryOn,
    #[serde(default = "twenty", deserialize_with = "percent")]
    budget_percent: u32,
    #[serde(default = "yes")]
    idempotent: bool,
    #[serde(default = "replay_default", deserialize_with = "size")]
    max_replay_body: u64,
}

fn replay_default() -> u64 {
    64 * 1024
}

/// A byte size: a number of bytes, or with a unit (`KiB`, `MiB`, `KB`, `MB`, `B`).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    validated(d, "a size", |s| {
        let parsed = match s {
            Scalar::Number(n) if n >= 0.0 && n.fract() == 0.0 => Some(n as u64),
            Scalar::Str(s) => {
                let s = s.trim();
                let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
                let (number, unit) = s.split_at(split);
                let scale = match unit.trim() {
                    "" | "B" => Some(1),
                    "KiB" => Some(1024),
                    "MiB" => Some(1024 * 1024),
                    "KB" | "kB" => Some(1000),
                    "MB" => Some(1_000_000),
                    _ => None,
                };
                number
                    .parse::<u64>()
                    .ok()
                    .zip(scale)
                    .and_then(|(n, k)| n.checked_mul(k))
            }
            _ => None,
        };
        parsed
            .filter(|n| *n <= 64 * 1024 * 1024)
            .ok_or_else(|| "must be a size up to 64MiB, such as 65536, 64KiB or 1MiB".to_owned())
    })
}

impl Default for RawRetries {
    fn default() -> Self {
        Self {
            connect_attempts: two(),
            on: retry_on_default(),
            budget_percent: twenty(),
            idempotent: true,
            max_replay_body: replay_default(),
        }
    }
}

/// `retries.on`: which failures of a sent request are retried.
#[derive(Clone, Copy, Default)]
struct RetryOn {
    reset: bool,
    s502: bool,
    s503: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    #[serde(default = "five", deserialize_with = "failures")]
    consecutive_failures: u32,
    #[serde(default = "secs::<10>")]
    base_ejection: Dur,
    #[serde(default = "fifty_percent", deserialize_with = "percent")]
    max_ejected_percent: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(deserialize_with = "check_path")]
    path: http::uri::PathAndQuery,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default = "secs::<2>")]
    interval: Dur,
    #[serde(default = "secs::<1>")]
    timeout: Dur,
    #[serde(default = "two", deserialize_with = "attempts")]
    healthy: u32,
    #[serde(default = "three", deserialize_with = "attempts")]
    unhealthy: u32,
}

fn three() -> u32 {
    3
}

fn check_path<'de, D: Deserializer<'de>>(d: D) -> Result<http::uri::PathAndQuery, D::Error> {
    validated(d, "a path", |s| match s {
        Scalar::Str(p) if p.starts_with('/') => {
            p.parse().map_err(|_| format!("{p:?} is not a valid path"))
        }
        _ => Err("must be a path starting with /".to_owned()),
    })
}

fn default_outlier() -> Option<RawOutlier> {
    Some(RawOutlier {
        consecutive_failures: five(),
        base_ejection: secs::<10>(),
        max_ejected_percent: fifty_percent(),
    })
}

fn five() -> u32 {
    5
}

fn fifty_percent() -> u32 {
    50
}

fn failures<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    validated(d, "a count of failures", |s| match s {
        Scalar::Number(n) if n.fract() == 0.0 && (1.0..=1000.0).contains(&n) => Ok(n as u32),
        _ => Err("must be a whole number from 1 to 1000".to_owned()),
    })
}

fn retry_on_default() -> RetryOn {
    RetryOn {
        reset: true,
        s502: true,
        s503: true,
    }
}

fn twenty() -> u32 {
    20
}

fn retry_on<'de, D: Deserializer<'de>>(d: D) -> Result<RetryOn, D::Error> {
    let items = Vec::<serde_yaml_ng::Value>::deserialize(d)?;
    let mut on = RetryOn::default();
    for item in items {
        match (item.as_str(), item.as_u64()) {
            (Some("reset"), _) => on.reset = true,
            (_, Some(502)) => on.s502 = true,
            (_, Some(503)) => on.s503 = true,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "retries.on: {item:?} is not one of reset, 502, 503"
                )))
            }
        }
    }
    Ok(on)
}

fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    validated(d, "a percentage", |s| match s {
        Scalar::Number(n) if n.fract() == 0.0 && (0.0..=100.0).contains(&n) => Ok(n as u32),
        _ => Err("must be a whole percentage from 0 to 100".to_owned()),
    })
}

fn two() -> u32 {
    2
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReload {
    #[serde(default = "secs::<1>")]
    interval: Dur,
}

impl Default for RawReload {
    fn default() -> Self {
        Self {
            interval: secs::<1>(),
        }
    }
}

/// Longest retry chain accepted: each attempt costs a connect timeout.
const MAX_CONNECT_ATTEMPTS: u32 = 10;

fn attempts<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    validated(d, "a whole number of attempts", |s| match s {
        Scalar::Number(n)
            if n.fract() == 0.0 && (1.0..=f64::from(MAX_CONNECT_ATTEMPTS)).contains(&n) =>
        {
            Ok(n as u32)
        }
        _ => Err(format!(
            "must be a whole number from 1 to {MAX_CONNECT_ATTEMPTS}"
        )),
    })
}

fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<Weight, D::Error> {
    validated(d, "a percentage", |s| match s {
        Scalar::Number(n) => {
            Weight::new(n).ok_or_else(|| format!("must be a percentage from 0 to 100, got {n}"))
        }
        _ => Err("must be a percentage from 0 to 100".to_owned()),
    })
}

fn version_of(s: Scalar<'_>) -> Result<Option<Version>, String> {
    match s {
        Scalar::Str(s) => Version::new(s).map(Some).map_err(|e| e.to_string()),
        Scalar::Number(n) => Version::new(&n.to_string())
            .map(Some)
            .map_err(|e| e.to_string()),
        Scalar::Null => Ok(None),
    }
}

fn version<'de, D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
    validated(d, "a version label", |s| {
        version_of(s)?.ok_or_else(|| "a version is required".to_owned())
    })
}

fn optional_version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Version>, D::Error> {
    validated(d, "a version label or null", version_of)
}

fn token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    validated(d, "a token string", |s| match s {
        Scalar::Str(t) if !t.trim().is_empty() => Ok(Some(t.to_owned())),
        Scalar::Null => Ok(None),
        _ => Err("must be a non-empty string, or null to disable".to_owned()),
    })
}

fn unique_endpoints<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RawEndpoint>, D::Error> {
    let endpoints = Vec::<RawEndpoint>::deserialize(d)?;
    let mut seen = HashSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        if !seen.insert(e.address) {
            return Err(serde::de::Error::custom(format!(
                "endpoint {i} repeats address {}",
                e.address
            )));
        }
    }
    Ok(endpoints)
}

impl RawConfig {
    fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason: reason.to_owned(),
        };
        // Port 0 asks the OS for a free port each time, so two of them never clash.
        if self.admin.listen == self.listen && self.listen.port() != 0 {
            return Err(invalid("admin.listen", "must differ from listen"));
        }
        if self.timeouts.connect.0.is_zero() {
            return Err(invalid("timeouts.connect", "must be greater than 0"));
        }
        if self.timeouts.request.0.is_zero() {
            return Err(invalid("timeouts.request", "must be greater than 0"));
        }
        if self.timeouts.header_read.0.is_zero() {
            return Err(invalid("timeouts.header_read", "must be greater than 0"));
        }
        if self
            .canary
            .abort
            .as_ref()
            .is_some_and(|a| a.window.0 < Duration::from_secs(1))
        {
            return Err(invalid("canary.abort.window", "must be at least 1s"));
        }
        if self.reload.interval.0 < Duration::from_millis(10) {
            return Err(invalid("reload.interval", "must be at least 10ms"));
        }
        let discovery = match self.discovery {
            RawDiscovery::Kubernetes(k) => {
                if k.api_timeout.0 < Duration::from_secs(1) {
                    return Err(invalid(
                        "discovery.kubernetes.api_timeout",
                        "must be at least 1s",
                    ));
                }
                DiscoveryConfig::Kubernetes(KubernetesConfig {
                    namespace: k.namespace,
                    service: k.service,
                    port: k.port,
                    deployment: k.deployment,
                    kubeconfig: k.kubeconfig,
                    min_ready: k.min_ready,
                    api_timeout: k.api_timeout.0,
                })
            }
            RawDiscovery::Static(s) => DiscoveryConfig::Static {
                endpoints: s
                    .endpoints
                    .into_iter()
                    .map(|e| EndpointSpec {
                        address: e.address,
                        version: e.version,
                        state: if e.ready {
                            EndpointState::Ready
                        } else {
                            EndpointState::NotReady
                        },
                        name: e.name.map(Arc::from),
                        image: None,
                    })
                    .collect(),
            },
        };
        Ok(Config {
            listen: self.listen,
            admin: AdminConfig {
                listen: self.admin.listen,
                token: self.admin.token.map(Arc::from),
            },
            discovery,
            canary: CanaryConfig {
                version: self.canary.version,
                weight: self.canary.weight,
                apply: self.canary.apply,
                header: self.canary.header,
                sticky: self.canary.sticky,
                abort: self.canary.abort.map(|a| AbortConfig {
                    max_error_rate: a.max_error_rate,
                    min_requests: a.min_requests,
                    window: a.window.0,
                }),
            },
            timeouts: Timeouts {
                connect: self.timeouts.connect.0,
                request: self.timeouts.request.0,
                header_read: self.timeouts.header_read.0,
                drain: self.timeouts.drain.0,
            },
            health_check: self.health_check.map(|h| CheckConfig {
                path: h.path,
                port: h.port,
                interval: h.interval.0,
                timeout: h.timeout.0,
                healthy: h.healthy,
                unhealthy: h.unhealthy,
            }),
            slow_start: self.slow_start.0,
            outlier: self.outlier.map(|o| OutlierPolicy {
                consecutive_failures: o.consecutive_failures,
                base_ejection: o.base_ejection.0,
                max_ejected_percent: o.max_ejected_percent,
            }),
            retries: Retries {
                connect_attempts: self.retries.connect_attempts,
                policy: RetryPolicy {
                    on_reset: self.retries.on.reset,
                    on_502: self.retries.on.s502,
                    on_503: self.retries.on.s503,
                    budget_percent: self.retries.budget_percent,
                    idempotent: self.retries.idempotent,
                    max_replay_body: self.retries.max_replay_body,
                },
            },
            reload_interval: self.reload.interval.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9901
  token: null
discovery:
  static:
    endpoints:
      - { address: "127.0.0.2:8080", version: v1 }
      - { address: "127.0.0.3:8080", version: v2, ready: false }
canary:
  version: v2
  weight: 10
timeouts: { connect: 1s, request: 30s, header_read: 10s }
retries: { connect_attempts: 2 }
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.canary.weight.percent(), 10.0);
        assert_eq!(c.canary.version.unwrap().as_str(), "v2");
        let DiscoveryConfig::Static { endpoints } = &c.discovery else {
            panic!("static expected")
        };
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[1].state, EndpointState::NotReady);
        assert_eq!(c.timeouts.request, Duration::from_secs(30));
        assert_eq!(c.retries.connect_attempts, 2);
    }

    fn error_of(text: &str) -> (String, Option<usize>) {
        match parse(text).unwrap_err() {
            ConfigError::Parse { message, line, .. } => (message, line),
            other => (other.to_string(), None),
        }
    }

    #[test]
    fn a_bad_address_names_the_field_and_line() {
        let (msg, line) = error_of(&EXAMPLE.replace("127.0.0.3:8080", "127.0.0.3"));
        assert!(
            msg.contains("discovery.static.endpoints[1].address"),
            "{msg}"
        );
        assert_eq!(line, Some(10), "{msg}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let (msg, line) = error_of(&EXAMPLE.replace("weight: 10", "wieght: 10"));
        assert!(msg.contains("unknown field `wieght`"), "{msg}");
        assert!(msg.contains("canary"), "{msg}");
        assert_eq!(line, Some(13), "{msg}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let (msg, _) = error_of(&EXAMPLE.replace("weight: 10", "weight: 120"));
        assert!(
            msg.contains("canary.weight") && msg.contains("0 to 100"),
            "{msg}"
        );
        let (msg, _) = error_of(&EXAMPLE.replace("connect: 1s", "connect: 1 parsec"));
        assert!(msg.contains("timeouts.connect"), "{msg}");
        let (msg, _) = error_of(&EXAMPLE.replace("connect_attempts: 2", "connect_attempts: 0"));
        assert!(msg.contains("retries.connect_attempts"), "{msg}");
        let (msg, _) = error_of(&EXAMPLE.replace("version: v1", "version: \"v 1\""));
        assert!(msg.contains("endpoints[0].version"), "{msg}");
        let (msg, _) = error_of(&EXAMPLE.replace("token: null", "token: \"\""));
        assert!(msg.contains("admin.token"), "{msg}");
    }

    #[test]
    fn duplicate_addresses_are_rejected() {
        let (msg, _) = error_of(&EXAMPLE.replace("127.0.0.3:8080", "127.0.0.2:8080"));
        assert!(msg.contains("repeats address 127.0.0.2:8080"), "{msg}");
    }

    #[test]
    fn cross_field_rules_name_the_field() {
        let err = parse(&EXAMPLE.replace("127.0.0.1:9901", "127.0.0.1:8080")).unwrap_err();
        assert!(
            err.to_string().contains("admin.listen: must differ"),
            "{err}"
        );
    }

    #[test]
    fn kubernetes_discovery_parses_with_defaults() {
        let c = parse(
            "discovery:\n  kubernetes:\n    service: web\n    port: http\n    deployment: web\n",
        )
        .unwrap();
        let DiscoveryConfig::Kubernetes(k) = c.discovery else {
            panic!("kubernetes expected")
        };
        assert_eq!(k.namespace, "default");
        assert_eq!(k.service, "web");
        assert_eq!(k.port, Some(PortRef::Name("http".into())));
        assert_eq!(k.deployment.as_deref(), Some("web"));
        assert_eq!(k.min_ready, MinReady::Deployment);
        assert_eq!(k.api_timeout, Duration::from_secs(30));
        let c = parse("discovery: { kubernetes: { service: web, port: 8080, min_ready: 5s } }")
            .unwrap();
        let DiscoveryConfig::Kubernetes(k) = c.discovery else {
            panic!("kubernetes expected")
        };
        assert_eq!(k.port, Some(PortRef::Number(8080)));
        assert_eq!(k.min_ready, MinReady::Fixed(Duration::from_secs(5)));
    }

    #[test]
    fn kubernetes_discovery_errors_name_the_field() {
        let (msg, line) = error_of("discovery:\n  kubernetes:\n    service: Web_1\n");
        assert!(msg.contains("discovery.kubernetes.service"), "{msg}");
        assert_eq!(line, Some(3), "{msg}");
        let (msg, _) = error_of("discovery: { kubernetes: { service: web, port: 70000 } }");
        assert!(msg.contains("discovery.kubernetes.port"), "{msg}");
        let (msg, _) = error_of("discovery: { kubernetes: { service: web, min_ready: soon } }");
        assert!(msg.contains("discovery.kubernetes.min_ready"), "{msg}");
        let (msg, _) = error_of("discovery: { kubernetes: { service: web, selector: x } }");
        assert!(msg.contains("unknown field `selector`"), "{msg}");
        let (msg, _) = error_of("discovery: { dns: { name: web } }");
        assert!(msg.contains("unknown variant `dns`"), "{msg}");
    }

    #[test]
    fn retry_policy_parses_and_rejects_unknown_causes() {
        let c = parse(
            "discovery: { static: { endpoints: [] } }\nretries: { on: [502], budget_percent: 5 }",
        )
        .unwrap();
        let p = c.retries.policy;
        assert_eq!(
            (p.on_reset, p.on_502, p.on_503, p.budget_percent),
            (false, true, false, 5)
        );
        let (msg, line) =
            error_of("discovery: { static: { endpoints: [] } }\nretries: { on: [reset, 504] }");
        assert!(msg.contains("retries") && msg.contains("504"), "{msg}");
        assert_eq!(line, Some(2), "{msg}");
        let (msg, _) =
            error_of("discovery: { static: { endpoints: [] } }\nretries: { budget_percent: 101 }");
        assert!(msg.contains("retries.budget_percent"), "{msg}");
    }

    #[test]
    fn defaults_are_secure_and_documented() {
        let c = parse("discovery: { static: { endpoints: [] } }").unwrap();
        assert!(
            c.admin.listen.ip().is_loopback(),
            "admin must default to loopback"
        );
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.retries.connect_attempts, 2);
        assert_eq!(c.timeouts.connect, Duration::from_secs(1));
        assert_eq!(c.reload_interval, Duration::from_secs(1));
    }
}
