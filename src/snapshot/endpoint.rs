//! One upstream endpoint's long-lived cell: identity, in-flight count, idle connections and metric
//! handles. Snapshots share it by `Arc`, so its state survives every rebuild that keeps the address.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metrics::VersionMetrics;
use crate::upstream::{Pool, Protocol};

use http::HeaderValue;

use super::health::{Health, VersionHealth};
use super::{EndpointSpec, Version, STICKY_COOKIE};

/// The per-endpoint state that outlives snapshot swaps. All mutable parts are atomics or lock-free.
pub struct Endpoint {
    address: SocketAddr,
    version: Version,
    name: Option<Arc<str>>,
    image: Option<Arc<str>>,
    in_flight: AtomicUsize,
    metrics: Arc<VersionMetrics>,
    pool: Pool,
    /// `Set-Cookie` pinning a client to this endpoint's version, built once per cell.
    sticky_cookie: HeaderValue,
    /// The version as a header value (`x-tidegate-version`), built once per cell.
    version_header: HeaderValue,
    health: Health,
}

impl Endpoint {
    /// A cell for what `spec` describes (its state aside, which belongs to each snapshot), spoken
    /// to in `protocol`.
    pub fn new(
        spec: &EndpointSpec,
        protocol: Protocol,
        metrics: Arc<VersionMetrics>,
        version_health: Arc<VersionHealth>,
    ) -> Self {
        Self {
            address: spec.address,
            version: spec.version.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            in_flight: AtomicUsize::new(0),
            metrics,
            pool: Pool::new(spec.address, protocol),
            sticky_cookie: HeaderValue::try_from(format!(
                "{STICKY_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax",
                spec.version
            ))
            .expect("a version label is a valid cookie value"),
            version_header: HeaderValue::from_str(spec.version.as_str())
                .expect("a version label is a valid header value"),
            health: Health::new(version_health),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address by reference, for formatting without a copy.
    pub fn address_ref(&self) -> &SocketAddr {
        &self.address
    }

    pub fn version(&self) -> &Version {
        &self.version
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn image(&self) -> Option<&str> {
        self.image.as_deref()
    }

    /// Requests sent to this endpoint whose response has not finished yet.
    pub fn in_flight(&self) -> usize {
        // Relaxed: a load-balancing hint; no other memory is published through this counter.
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped (also on cancellation).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        // Relaxed: see `in_flight`.
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn metrics(&self) -> &VersionMetrics {
        &self.metrics
    }

    /// Passive health: consecutive failures and ejection.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The `Set-Cookie` value that pins a client to this endpoint's version.
    pub fn sticky_cookie(&self) -> &HeaderValue {
        &self.sticky_cookie
    }

    /// This endpoint's version, ready to send as `x-tidegate-version`.
    pub fn version_header(&self) -> &HeaderValue {
        &self.version_header
    }

    /// Idle keep-alive connections to this endpoint; dropped (and closed) with the endpoint.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.address)
            .field("version", &self.version)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// RAII in-flight marker; holds the endpoint alive while a request uses it.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Relaxed: see `Endpoint::in_flight`.
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
