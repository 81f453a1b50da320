//! The immutable routing snapshot and its single writer.
//!
//! Everything a request needs to route lives in one [`Snapshot`] behind one `ArcSwap`: the routable
//! endpoints grouped by role, the precomputed canary threshold and the forwarding settings. The
//! [`Publisher`] is the only writer; readers do one atomic load and never block it.

mod endpoint;
pub mod health;
mod publisher;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::grpc::Codes;
use crate::upstream::Protocol;

pub use endpoint::{Endpoint, InFlight};
pub use publisher::{Desired, Publisher, Snapshots};

/// A workload version as it appears in metrics and `/endpoints` (an image tag, a pod-template-hash).
///
/// Validated once at the edge (config, discovery) so that label values stay a closed, sane set.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(Arc<str>);

/// Why a string is not a usable [`Version`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("version must not be empty")]
    Empty,
    #[error("version is longer than 63 characters")]
    TooLong,
    #[error("version may only contain letters, digits, '.', '_' and '-' (got {0:?})")]
    BadChar(char),
}

impl Version {
    /// Parses a version label: 1-63 characters of `[A-Za-z0-9._-]`, like a Kubernetes label value.
    pub fn new(s: &str) -> Result<Self, VersionError> {
        if s.is_empty() {
            return Err(VersionError::Empty);
        }
        if s.len() > 63 {
            return Err(VersionError::TooLong);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(VersionError::BadChar(c));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A canary weight: the percentage of requests sent to the canary, 0 to 100, decimals allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct Weight(f64);

impl Weight {
    pub const ZERO: Weight = Weight(0.0);

    /// Accepts finite percentages in `0..=100`.
    pub fn new(percent: f64) -> Option<Self> {
        (percent.is_finite() && (0.0..=100.0).contains(&percent)).then_some(Self(percent))
    }

    pub fn percent(self) -> f64 {
        self.0
    }
}

/// Whether the canary or the stable side serves a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Stable,
    Canary,
}

impl Role {
    /// Both roles, in [`Role::index`] order.
    pub const ALL: [Role; 2] = [Role::Stable, Role::Canary];

    /// 0 for stable, 1 for canary: an index into per-role handle arrays.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Stable => "stable",
            Role::Canary => "canary",
        }
    }
}

/// What the control plane knows about an endpoint's fitness for traffic.
///
/// Routing uses the best tier that has any endpoint: `Ready`, else `Warming`, else `Terminating`
/// (the kube-proxy fallback), so a held-back or draining endpoint never causes a 503 while it is
/// the only thing that can serve. `NotReady` never gets traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// Takes new requests.
    Ready,
    /// Ready for less than the minimum ready time: held back while others can serve.
    Warming,
    /// Shutting down but still serving: used only when nothing is ready.
    Terminating,
    /// Known but must get no new requests (readiness probe failing, not yet started).
    NotReady,
}

impl EndpointState {
    /// Routing tiers, best first.
    pub(crate) const TIERS: [EndpointState; 3] = [
        EndpointState::Ready,
        EndpointState::Warming,
        EndpointState::Terminating,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Ready => "ready",
            EndpointState::Warming => "warming",
            EndpointState::Terminating => "terminating",
            EndpointState::NotReady => "not_ready",
        }
    }
}

/// What a discovery source says about one endpoint; the input to a snapshot build.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    pub version: Version,
    pub state: EndpointState,
    /// A human name (a pod name), shown in `/endpoints`.
    pub name: Option<Arc<str>>,
    /// The container image tag behind the version, when the source knows it; for display.
    pub image: Option<Arc<str>>,
    /// How to speak to it, when the source says (an EndpointSlice port's `appProtocol`, a static
    /// endpoint's `protocol`); else `upstream.protocol` applies.
    pub protocol: Option<Protocol>,
}

/// Forwarding settings that a config reload may change; they travel in the snapshot so that a
/// request sees one consistent set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// From the end of the request to the response head.
    pub request_timeout: Duration,
    /// The longest pause between two reads of a client's request body.
    pub body_read_timeout: Duration,
    /// Endpoints tried for one request when connecting fails (1 = no retry).
    pub connect_attempts: u32,
    /// Pin clients to the version they were first served by, with a cookie.
    pub sticky: bool,
    pub retry: RetryPolicy,
    /// Passive outlier ejection; off when `None`.
    pub outlier: Option<health::OutlierPolicy>,
    /// A newly ready endpoint ramps up to its full share over this long; zero switches it off.
    pub slow_start: Duration,
    /// Responses carry `x-tidegate-version` naming the version that served them.
    pub expose_version_header: bool,
    /// An endpoint's response with more header lines than this is refused, on both paths.
    pub max_response_headers: usize,
    /// The protocol of endpoints whose source does not name one.
    pub protocol: Protocol,
    /// HTTP/1.1 connections open to one endpoint at most (in use and idle).
    pub max_connections_per_endpoint: usize,
    /// The gRPC statuses that count as the endpoint's failure (passive health, canary abort).
    pub grpc_failures: Codes,
    /// The gRPC statuses of a trailers-only answer that send the call to another endpoint.
    pub grpc_retry_on: Codes,
}

/// Which failures of a sent request are retried on another endpoint (only for idempotent,
/// bodyless requests; a failed connect is always retried), and how many retries the budget allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The connection broke before any response byte.
    pub on_reset: bool,
    pub on_502: bool,
    pub on_503: bool,
    /// Retries may add at most this percentage to the requests of the last 10 s (plus a floor).
    pub budget_percent: u32,
    /// Whether sent requests are retried at all (idempotent methods only, either way).
    pub idempotent: bool,
    /// Request bodies up to this size (by Content-Length) are kept so that they can be resent.
    pub max_replay_body: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            on_reset: true,
            on_502: true,
            on_503: true,
            budget_percent: 20,
            idempotent: true,
            max_replay_body: 64 * 1024,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            connect_attempts: 2,
            sticky: false,
            retry: RetryPolicy::default(),
            outlier: None,
            slow_start: Duration::ZERO,
            expose_version_header: false,
            max_response_headers: crate::upstream::framing::DEFAULT_MAX_HEADERS,
            protocol: Protocol::Http1,
            max_connections_per_endpoint: crate::upstream::DEFAULT_MAX_CONNECTIONS,
            grpc_failures: Codes::failures(),
            grpc_retry_on: Codes::default(),
        }
    }
}

/// How the control plane wants traffic split between the roles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Split {
    /// The canary gets this share of requests while both roles have routable endpoints.
    Weighted(Weight),
    /// Every routable endpoint gets an equal share, as a Kubernetes Service would do.
    ByEndpointCount,
}

/// As logs say it: `weighted 10%`, `by endpoint count`.
impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Split::Weighted(weight) => write!(f, "weighted {}%", weight.percent()),
            Split::ByEndpointCount => f.write_str("by endpoint count"),
        }
    }
}

/// One entry of the snapshot's full listing, routable or not.
#[derive(Clone, Debug)]
pub struct Listed {
    pub endpoint: Arc<Endpoint>,
    pub role: Role,
    pub state: EndpointState,
}

/// The cookie that pins a client to the version it was first served by.
pub const STICKY_COOKIE: &str = "tidegate-version";

/// The routable endpoints of one version, for sticky clients.
#[derive(Debug)]
pub struct VersionGroup {
    pub version: Version,
    pub role: Role,
    pub endpoints: Box<[Arc<Endpoint>]>,
}

/// Running totals of the canary's outcomes, kept by the data plane and sampled by the control
/// loop to decide on an automatic abort.
#[derive(Debug, Default)]
pub struct CanaryStats {
    requests: AtomicU64,
    errors: AtomicU64,
}

impl CanaryStats {
    /// Counts one canary response; 5xx (including tidegate's own 502/504) is an error.
    #[inline]
    pub fn record(&self, status: u16) {
        self.record_outcome(status >= 500);
    }

    /// Counts one canary outcome judged otherwise (a gRPC call by its `grpc-status`).
    #[inline]
    pub fn record_outcome(&self, failed: bool) {
        // Relaxed: independent counters, read as a pair only approximately.
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (requests, errors) so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// An immutable view of where traffic may go. Built off the request path by the [`Publisher`].
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    stable: Box<[Arc<Endpoint>]>,
    canary: Box<[Arc<Endpoint>]>,
    /// Requests whose 32-bit random draw is below this go to the canary; in `0..=2^32`.
    canary_threshold: u64,
    split: Split,
    canary_version: Option<Version>,
    settings: Settings,
    listed: Box<[Listed]>,
    tier: EndpointState,
    canary_header: Option<HeaderName>,
    versions: Box<[VersionGroup]>,
}

/// `2^32`: the threshold that sends every draw of a `u32` to the canary.
pub(crate) const ALL_DRAWS: u64 = 1 << 32;

impl Snapshot {
    /// The snapshot before the first endpoint set arrives: nothing is routable.
    pub fn empty(settings: Settings) -> Self {
        Self {
            generation: 0,
            stable: Box::new([]),
            canary: Box::new([]),
            canary_threshold: 0,
            split: Split::ByEndpointCount,
            canary_version: None,
            settings,
            listed: Box::new([]),
            tier: EndpointState::Ready,
            canary_header: None,
            versions: Box::new([]),
        }
    }

    /// Builds a snapshot from a full listing; the entries of the best non-empty tier (see
    /// [`EndpointState`]) become routable.
    pub fn build(
        generation: u64,
        listed: Vec<Listed>,
        split: Split,
        canary_version: Option<Version>,
        settings: Settings,
    ) -> Self {
        let tier = EndpointState::TIERS
            .into_iter()
            .find(|tier| listed.iter().any(|l| l.state == *tier))
            .unwrap_or(EndpointState::Ready);
        let routable = |role| -> Box<[Arc<Endpoint>]> {
            listed
                .iter()
                .filter(|l| l.role == role && l.state == tier)
                .map(|l| l.endpoint.clone())
                .collect()
        };
        let stable = routable(Role::Stable);
        let canary = routable(Role::Canary);
        // Few versions (usually one or two): a linear search beats hashing every endpoint.
        let mut grouped: Vec<(Version, Role, Vec<Arc<Endpoint>>)> = Vec::new();
        let tagged = (stable.iter().map(|ep| (ep, Role::Stable)))
            .chain(canary.iter().map(|ep| (ep, Role::Canary)));
        for (ep, role) in tagged {
            match grouped.iter_mut().find(|(v, _, _)| v == ep.version()) {
                Some((_, _, members)) => members.push(ep.clone()),
                None => grouped.push((ep.version().clone(), role, vec![ep.clone()])),
            }
        }
        let versions: Box<[VersionGroup]> = grouped
            .into_iter()
            .map(|(version, role, endpoints)| VersionGroup {
                version,
                role,
                endpoints: endpoints.into_boxed_slice(),
            })
            .collect();
        let canary_threshold = match split {
            Split::Weighted(w) => (w.percent() / 100.0 * ALL_DRAWS as f64).round() as u64,
            Split::ByEndpointCount if canary.is_empty() && stable.is_empty() => 0,
            Split::ByEndpointCount => {
                ALL_DRAWS * canary.len() as u64 / (canary.len() + stable.len()) as u64
            }
        };
        Self {
            generation,
            stable,
            canary,
            canary_threshold,
            split,
            canary_version,
            settings,
            listed: listed.into_boxed_slice(),
            tier,
            canary_header: None,
            versions,
        }
    }

    /// The routable endpoints of the version named `version` (a cookie's value), if any.
    #[inline]
    pub fn version_group(&self, version: &str) -> Option<&VersionGroup> {
        self.versions.iter().find(|g| g.version.as_str() == version)
    }

    /// Sets the header that lets a request pick its role.
    pub fn with_canary_header(mut self, header: Option<HeaderName>) -> Self {
        self.canary_header = header;
        self
    }

    /// The role a request asks for through the canary header, if it is configured and present:
    /// `always` → canary, `never` → stable.
    #[inline]
    pub fn requested_role(&self, headers: &http::HeaderMap) -> Option<Role> {
        let value = headers.get(self.canary_header.as_ref()?)?;
        match value.as_bytes() {
            b"always" => Some(Role::Canary),
            b"never" => Some(Role::Stable),
            _ => None,
        }
    }

    /// Increases by one with every publish; 0 means no endpoint set has been loaded yet.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Routable endpoints of one role.
    pub fn routable(&self, role: Role) -> &[Arc<Endpoint>] {
        match role {
            Role::Stable => &self.stable,
            Role::Canary => &self.canary,
        }
    }

    /// The percentage of requests this snapshot sends to the canary: the split's share while
    /// both sides have routable endpoints, else all or nothing. The one place the effective
    /// weight is computed: the admin API and `tidegate_canary_weight` report this.
    pub fn canary_share(&self) -> f64 {
        match (self.canary.is_empty(), self.stable.is_empty(), self.split) {
            (true, ..) => 0.0,
            (false, true, _) => 100.0,
            (false, false, Split::Weighted(w)) => w.percent(),
            (false, false, Split::ByEndpointCount) => {
                let (c, s) = (self.canary.len() as f64, self.stable.len() as f64);
                100.0 * c / (c + s)
            }
        }
    }

    pub fn canary_threshold(&self) -> u64 {
        self.canary_threshold
    }

    pub fn split(&self) -> Split {
        self.split
    }

    pub fn canary_version(&self) -> Option<&Version> {
        self.canary_version.as_ref()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every known endpoint, routable or not, in a stable order (by address).
    pub fn listed(&self) -> &[Listed] {
        &self.listed
    }

    /// The state whose endpoints are routable in this snapshot.
    pub fn routable_state(&self) -> EndpointState {
        self.tier
    }

    /// Whether any request could be routed now.
    pub fn has_routable(&self) -> bool {
        !(self.stable.is_empty() && self.canary.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rejects_label_unsafe_strings() {
        assert_eq!(Version::new(""), Err(VersionError::Empty));
        assert_eq!(Version::new("v 1"), Err(VersionError::BadChar(' ')));
        assert_eq!(Version::new(&"a".repeat(64)), Err(VersionError::TooLong));
        assert_eq!(
            Version::new("1.16.1-abc_d").unwrap().as_str(),
            "1.16.1-abc_d"
        );
    }

    fn listed(state: EndpointState, role: Role, n: u8) -> Listed {
        let metrics = crate::metrics::Metrics::new();
        let v = Version::new("v1").unwrap();
        Listed {
            endpoint: Arc::new(Endpoint::new(
                &EndpointSpec {
                    address: SocketAddr::from(([127, 0, 0, n], 80)),
                    version: v.clone(),
                    state,
                    name: None,
                    image: None,
                    protocol: None,
                },
                Protocol::Http1,
                Arc::new(metrics.version(&v)),
                Arc::default(),
            )),
            role,
            state,
        }
    }

    #[test]
    fn the_best_non_empty_tier_is_routable() {
        use EndpointState::*;
        let build = |entries: Vec<Listed>| {
            Snapshot::build(
                1,
                entries,
                Split::ByEndpointCount,
                None,
                Settings::default(),
            )
        };
        let s = build(vec![
            listed(Ready, Role::Stable, 1),
            listed(Warming, Role::Canary, 2),
            listed(Terminating, Role::Stable, 3),
            listed(NotReady, Role::Stable, 4),
        ]);
        assert_eq!(s.routable_state(), Ready);
        assert_eq!(
            s.routable(Role::Stable).len(),
            1,
            "warming/terminating are held back"
        );
        assert!(s.routable(Role::Canary).is_empty());

        let s = build(vec![
            listed(Warming, Role::Canary, 2),
            listed(Terminating, Role::Stable, 3),
        ]);
        assert_eq!(
            s.routable_state(),
            Warming,
            "warming serves rather than a 503"
        );
        assert_eq!(s.routable(Role::Canary).len(), 1);

        let s = build(vec![
            listed(Terminating, Role::Stable, 3),
            listed(NotReady, Role::Stable, 4),
        ]);
        assert_eq!(
            s.routable(Role::Stable).len(),
            1,
            "serving-terminating is the last resort"
        );

        let s = build(vec![listed(NotReady, Role::Stable, 4)]);
        assert!(!s.has_routable(), "not-ready endpoints never get traffic");
    }

    #[test]
    fn the_canary_share_is_what_routing_does() {
        use EndpointState::*;
        let build = |split, entries: Vec<Listed>| {
            Snapshot::build(1, entries, split, None, Settings::default())
        };
        let ten = Split::Weighted(Weight::new(10.0).unwrap());
        let both = || {
            vec![
                listed(Ready, Role::Stable, 1),
                listed(Ready, Role::Stable, 2),
                listed(Ready, Role::Stable, 3),
                listed(Ready, Role::Canary, 4),
            ]
        };
        assert_eq!(build(ten, both()).canary_share(), 10.0);
        assert_eq!(build(Split::ByEndpointCount, both()).canary_share(), 25.0);
        let warming_canary = vec![
            listed(Ready, Role::Stable, 1),
            listed(Warming, Role::Canary, 2),
        ];
        assert_eq!(
            build(ten, warming_canary).canary_share(),
            0.0,
            "a canary with nothing routable gets nothing, whatever the weight"
        );
        let only_canary = vec![listed(Ready, Role::Canary, 2)];
        assert_eq!(build(ten, only_canary).canary_share(), 100.0);
        let snap = build(ten, both());
        let share = snap.canary_threshold() as f64 / ALL_DRAWS as f64 * 100.0;
        assert!(
            (share - snap.canary_share()).abs() < 1e-6,
            "the threshold agrees"
        );
    }

    #[test]
    fn weight_is_a_percentage() {
        assert!(Weight::new(-0.1).is_none());
        assert!(Weight::new(100.1).is_none());
        assert!(Weight::new(f64::NAN).is_none());
        assert_eq!(Weight::new(12.5).unwrap().percent(), 12.5);
    }
}
