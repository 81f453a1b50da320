//! The config file as written: serde structs that reject unknown fields, with every scalar
//! validated where the parser can still point at it, and the conversion into the domain types.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

use crate::grpc::{Code, Codes};
use crate::probe::CheckConfig;
use crate::snapshot::health::OutlierPolicy;
use crate::snapshot::{EndpointSpec, EndpointState, RetryPolicy, Version, Weight};
use crate::tls::{CertFiles, Tls};
use crate::upstream::{self, framing, Protocol};

use super::duration::{self, Dur};
use super::scalar::{validated, Scalar};
use super::telemetry::{RawAccessLog, RawRequestId, RawTracing};
use super::{
    AbortConfig, AdminConfig, Apply, CanaryConfig, Config, ConfigError, DiscoveryConfig,
    KubernetesConfig, Limits, MinReady, PortRef, Retries, Timeouts,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
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
    #[serde(default)]
    expose_version_header: bool,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    grpc: RawGrpc,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    access_log: Option<RawAccessLog>,
    #[serde(default)]
    request_id: RawRequestId,
    #[serde(default)]
    tracing: RawTracing,
    #[serde(default)]
    metrics: RawMetrics,
}

/// What `/metrics` keeps.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// A version's series are removed this long after its last endpoint left.
    #[serde(default = "secs::<600>")]
    forget_versions_after: Dur,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            forget_versions_after: secs::<600>(),
        }
    }
}

/// Bounds on what clients may hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(
        default = "default_max_client_connections",
        deserialize_with = "max_client_connections"
    )]
    max_connections: usize,
    /// How long a client connection may carry no request before it is closed.
    #[serde(default = "secs::<60>")]
    idle_timeout: Dur,
    /// How long an HTTP/2 client connection may be silent before tidegate pings it, and how long
    /// the ping may go unanswered before the connection is closed (a peer that vanished).
    #[serde(default = "secs::<20>")]
    http2_keepalive: Dur,
    #[serde(default = "default_streams", deserialize_with = "streams")]
    http2_max_concurrent_streams: u32,
    #[serde(default = "default_pending_resets", deserialize_with = "resets")]
    http2_max_pending_resets: usize,
    #[serde(default = "default_local_resets", deserialize_with = "resets")]
    http2_max_local_resets: usize,
    #[serde(default = "default_header_count", deserialize_with = "header_count")]
    max_request_headers: usize,
    #[serde(default = "default_head_size", deserialize_with = "head_size")]
    max_request_head_size: u64,
    #[serde(default = "default_uri_size", deserialize_with = "size")]
    max_uri_size: u64,
    #[serde(default, deserialize_with = "optional_size")]
    max_request_body: Option<u64>,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: default_max_client_connections(),
            idle_timeout: secs::<60>(),
            http2_keepalive: secs::<20>(),
            http2_max_concurrent_streams: default_streams(),
            http2_max_pending_resets: default_pending_resets(),
            http2_max_local_resets: default_local_resets(),
            max_request_headers: default_header_count(),
            max_request_head_size: default_head_size(),
            max_uri_size: default_uri_size(),
            max_request_body: None,
        }
    }
}

impl RawLimits {
    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.http2_keepalive.0 < Duration::from_millis(100) {
            return Err(("limits.http2_keepalive", "must be at least 100ms"));
        }
        if self.idle_timeout.0 < Duration::from_millis(100) {
            return Err(("limits.idle_timeout", "must be at least 100ms"));
        }
        if !(256..=self.max_request_head_size).contains(&self.max_uri_size) {
            return Err((
                "limits.max_uri_size",
                "must be from 256 bytes to limits.max_request_head_size",
            ));
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout.0,
            http2_keepalive: self.http2_keepalive.0,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            http2_max_pending_resets: self.http2_max_pending_resets,
            http2_max_local_resets: self.http2_max_local_resets,
            max_request_headers: self.max_request_headers,
            // Both checked to fit (at most 1 MiB).
            max_request_head_size: self.max_request_head_size as u32,
            max_uri_size: self.max_uri_size as usize,
            max_request_body: self.max_request_body,
        }
    }
}

fn default_max_client_connections() -> usize {
    10_000
}

/// nginx's `http2_max_concurrent_streams`.
fn default_streams() -> u32 {
    128
}

/// h2's default: the rapid-reset bound (CVE-2023-44487).
fn default_pending_resets() -> usize {
    20
}

/// hyper's default.
fn default_local_resets() -> usize {
    1024
}

fn resets<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    whole(d, 100_000)
}

/// hyper's (and so today's) HTTP/1 limit.
fn default_header_count() -> usize {
    100
}

/// Envoy's `max_request_headers_kb` is 60 KiB; nginx's largest header buffer is 8 KiB.
fn default_head_size() -> u64 {
    64 * 1024
}

/// What CDNs accept (nginx takes 8 KiB).
fn default_uri_size() -> u64 {
    16 * 1024
}

/// hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
fn head_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    validated(d, "a size", |s| {
        parse_size(s)
            .ok()
            .filter(|n| (8 * 1024..=1024 * 1024).contains(n))
            .ok_or_else(|| "must be a size from 8KiB to 1MiB".to_owned())
    })
}

fn max_client_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    whole(d, 1_000_000)
}

fn streams<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    whole(d, 10_000).map(|n| n as u32)
}

fn header_count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    whole(d, 1_000)
}

/// A whole number from 1 to `max`.
fn whole<'de, D: Deserializer<'de>>(d: D, max: u32) -> Result<usize, D::Error> {
    validated(d, "a whole number", |s| match s {
        Scalar::Number(n) if n.fract() == 0.0 && (1.0..=f64::from(max)).contains(&n) => {
            Ok(n as usize)
        }
        _ => Err(format!("must be a whole number from 1 to {max}")),
    })
}

/// TLS termination: one pair, or several chosen by SNI (the first for clients without SNI).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    certificates: Vec<RawCertFiles>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl RawTls {
    /// The pairs, with paths relative to the config file's directory, checked to load.
    fn files(self, config: &Path) -> Result<Vec<CertFiles>, String> {
        let dir = config.parent().unwrap_or(Path::new(""));
        let pair = |cert: &Path, key: &Path| CertFiles {
            cert_file: dir.join(cert),
            key_file: dir.join(key),
        };
        let files: Vec<CertFiles> = match (self.cert_file, self.key_file, self.certificates) {
            (Some(cert), Some(key), none) if none.is_empty() => vec![pair(&cert, &key)],
            (None, None, list) if !list.is_empty() => list
                .iter()
                .map(|p| pair(&p.cert_file, &p.key_file))
                .collect(),
            (None, None, _) => return Err("set cert_file and key_file, or certificates".to_owned()),
            (Some(_), Some(_), _) => {
                return Err("set cert_file and key_file, or certificates, not both".to_owned())
            }
            _ => return Err("cert_file and key_file go together".to_owned()),
        };
        Tls::check(&files).map_err(|e| e.to_string())?;
        Ok(files)
    }
}

/// gRPC semantics.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrpc {
    #[serde(default = "Codes::failures", deserialize_with = "failure_codes")]
    failure_codes: Codes,
    #[serde(default, deserialize_with = "retry_on_codes")]
    retry_on: Codes,
}

impl Default for RawGrpc {
    fn default() -> Self {
        Self {
            failure_codes: Codes::failures(),
            retry_on: Codes::default(),
        }
    }
}

fn failure_codes<'de, D: Deserializer<'de>>(d: D) -> Result<Codes, D::Error> {
    codes(d, "grpc.failure_codes")
}

fn retry_on_codes<'de, D: Deserializer<'de>>(d: D) -> Result<Codes, D::Error> {
    codes(d, "grpc.retry_on")
}

/// A list of gRPC status names, such as `[UNAVAILABLE, CANCELLED]`.
fn codes<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<Codes, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    let codes = names
        .iter()
        .map(|name| {
            Code::from_name(name).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{field}: {name:?} is not a gRPC status name such as UNAVAILABLE"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Codes::new(codes))
}

/// How tidegate talks to endpoints.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(
        default = "default_max_response_headers",
        deserialize_with = "max_response_headers"
    )]
    max_response_headers: usize,
    #[serde(default, deserialize_with = "protocol")]
    protocol: Protocol,
    #[serde(
        default = "default_max_connections",
        deserialize_with = "max_connections"
    )]
    max_connections_per_endpoint: usize,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            max_response_headers: default_max_response_headers(),
            protocol: Protocol::default(),
            max_connections_per_endpoint: default_max_connections(),
        }
    }
}

fn protocol<'de, D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
    validated(d, "a protocol", |s| match s {
        Scalar::Str(name) => {
            Protocol::from_name(name).ok_or_else(|| "must be `http1` or `h2c`".to_owned())
        }
        _ => Err("must be `http1` or `h2c`".to_owned()),
    })
}

fn optional_protocol<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Protocol>, D::Error> {
    protocol(d).map(Some)
}

fn default_max_connections() -> usize {
    upstream::DEFAULT_MAX_CONNECTIONS
}

fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    validated(d, "a number of connections", |s| match s {
        Scalar::Number(n) if n.fract() == 0.0 && (1.0..=65535.0).contains(&n) => Ok(n as usize),
        _ => Err("must be a whole number from 1 to 65535".to_owned()),
    })
}

fn default_max_response_headers() -> usize {
    framing::DEFAULT_MAX_HEADERS
}

fn max_response_headers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let limit = framing::MAX_HEADERS_LIMIT;
    validated(d, "a number of header lines", |s| match s {
        Scalar::Number(n) if n.fract() == 0.0 && (1.0..=limit as f64).contains(&n) => {
            Ok(n as usize)
        }
        _ => Err(format!("must be a whole number from 1 to {limit}")),
    })
}

/// An IP address and port. A hostname gets the reason it is refused: tidegate routes to the
/// addresses discovery gives it and never resolves names.
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    validated(d, "an IP address and port", |s| match s {
        Scalar::Str(s) => s.trim().parse::<SocketAddr>().map_err(|_| {
            format!(
                "{s:?} is not an IP address and port, such as 10.0.0.5:8080 or [::1]:8080 \
                 (hostnames are not resolved)"
            )
        }),
        _ => Err("must be an IP address and port, such as 10.0.0.5:8080".to_owned()),
    })
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_listen", deserialize_with = "socket_addr")]
    listen: SocketAddr,
    #[serde(default, deserialize_with = "token")]
    token: Option<String>,
    /// A file holding the token (a mounted Secret), so the token need not sit in the config.
    #[serde(default)]
    token_file: Option<PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
            token_file: None,
        }
    }
}

impl RawAdmin {
    /// The token, read from `token_file` (relative to the config file's directory) when set.
    fn token(&self, config: &Path) -> Result<Option<String>, String> {
        let Some(file) = &self.token_file else {
            return Ok(self.token.clone());
        };
        if self.token.is_some() {
            return Err("set admin.token or admin.token_file, not both".to_owned());
        }
        let file = config.parent().unwrap_or(Path::new("")).join(file);
        // A token is short; anything past 4 KiB is a wrong file, not a token.
        let text = super::read_limited(&file, 4096)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        match text.trim() {
            "" => Err(format!("{} is empty", file.display())),
            token => Ok(Some(token.to_owned())),
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
    #[serde(default, deserialize_with = "optional_k8s_name")]
    namespace: Option<String>,
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
    #[serde(default = "yes")]
    pod_deletion: bool,
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
#[serde(deny_unknown_fields, try_from = "RawStaticFields")]
struct RawStatic {
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStaticFields {
    #[serde(deserialize_with = "unique_endpoints")]
    endpoints: Vec<RawEndpoint>,
    /// An empty list is meant (every request answered 503, `/readyz` not ready), not a mistake.
    #[serde(default)]
    allow_empty: bool,
}

impl TryFrom<RawStaticFields> for RawStatic {
    type Error = &'static str;

    fn try_from(fields: RawStaticFields) -> Result<Self, Self::Error> {
        if fields.endpoints.is_empty() && !fields.allow_empty {
            return Err(
                "the static endpoint list is empty, so every request would be answered 503; \
                        list at least one endpoint, or set allow_empty: true if that is meant",
            );
        }
        Ok(Self {
            endpoints: fields.endpoints,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    #[serde(deserialize_with = "socket_addr")]
    address: SocketAddr,
    #[serde(deserialize_with = "version")]
    version: Version,
    #[serde(default = "yes")]
    ready: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "optional_protocol")]
    protocol: Option<Protocol>,
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
    #[serde(default = "secs::<60>")]
    body_read: Dur,
    #[serde(default = "secs::<30>")]
    drain: Dur,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: secs::<1>(),
            request: secs::<30>(),
            header_read: secs::<10>(),
            body_read: secs::<60>(),
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
    validated(d, "a size", parse_size)
}

/// A byte size, or `null` for none.
fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    validated(d, "a size or null", |s| match s {
        Scalar::Null => Ok(None),
        s => parse_size(s).map(Some),
    })
}

fn parse_size(s: Scalar<'_>) -> Result<u64, String> {
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

/// The endpoint list, refusing a repeated address as soon as it is read, so that the parser's
/// position (the error's line) is at the repeat rather than at the end of the list.
fn unique_endpoints<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RawEndpoint>, D::Error> {
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = Vec<RawEndpoint>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of endpoints")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut endpoints: Vec<RawEndpoint> = Vec::new();
            let mut seen = HashSet::new();
            while let Some(endpoint) = seq.next_element::<RawEndpoint>()? {
                if !seen.insert(endpoint.address) {
                    let first = endpoints
                        .iter()
                        .position(|e| e.address == endpoint.address)
                        .unwrap_or(0);
                    return Err(serde::de::Error::custom(format!(
                        "endpoint {} repeats the address {} of endpoint {first}",
                        endpoints.len(),
                        endpoint.address
                    )));
                }
                endpoints.push(endpoint);
            }
            Ok(endpoints)
        }
    }
    d.deserialize_seq(Unique)
}

impl RawConfig {
    pub(super) fn validate(self, path: &Path) -> Result<Config, ConfigError> {
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
        if self.timeouts.body_read.0.is_zero() {
            return Err(invalid("timeouts.body_read", "must be greater than 0"));
        }
        if self
            .canary
            .abort
            .as_ref()
            .is_some_and(|a| a.window.0 < Duration::from_secs(1))
        {
            return Err(invalid("canary.abort.window", "must be at least 1s"));
        }
        if let Err((field, reason)) = self.limits.check() {
            return Err(invalid(field, reason));
        }
        if self.reload.interval.0 < Duration::from_millis(10) {
            return Err(invalid("reload.interval", "must be at least 10ms"));
        }
        let tracing = self
            .tracing
            .config()
            .map_err(|(field, reason)| invalid(field, reason))?;
        let token = self
            .admin
            .token(path)
            .map_err(|reason| invalid("admin.token_file", &reason))?;
        let tls = match self.tls {
            Some(tls) => Some(tls.files(path).map_err(|reason| invalid("tls", &reason))?),
            None => None,
        };
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
                    pod_deletion: k.pod_deletion,
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
                        protocol: e.protocol,
                        image: None,
                    })
                    .collect(),
            },
        };
        Ok(Config {
            listen: self.listen,
            admin: AdminConfig {
                listen: self.admin.listen,
                token: token.map(Arc::from),
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
                body_read: self.timeouts.body_read.0,
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
            expose_version_header: self.expose_version_header,
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
            tls,
            limits: self.limits.limits(),
            max_response_headers: self.upstream.max_response_headers,
            protocol: self.upstream.protocol,
            max_connections_per_endpoint: self.upstream.max_connections_per_endpoint,
            grpc_failures: self.grpc.failure_codes,
            grpc_retry_on: self.grpc.retry_on,
            forget_versions_after: self.metrics.forget_versions_after.0,
            access_log: self.access_log.map(RawAccessLog::config),
            request_id: self.request_id.config(),
            tracing,
        })
    }
}
