//! The single writer of the snapshot `ArcSwap`, and the cheap reader handle given to everyone else.

use std::collections::HashMap;

use rustc_hash::{FxHashMap, FxHashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use http::HeaderName;
use tokio::sync::watch;

use crate::metrics::{Metrics, VersionMetrics};

use super::health::VersionHealth;

use super::{
    Endpoint, EndpointSpec, EndpointState, Listed, Role, Settings, Snapshot, Split, Version,
};

/// Read side of the snapshot: one atomic load per request, plus a generation counter to await.
#[derive(Clone)]
pub struct Snapshots {
    swap: Arc<ArcSwap<Snapshot>>,
    generation: watch::Receiver<u64>,
}

impl Snapshots {
    /// The current snapshot. Never hold the guard across an `.await`: it pins the old snapshot.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.swap.load()
    }

    /// A receiver that changes whenever a new snapshot is published (value = its generation).
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }
}

/// What the control plane wants the next snapshot to say.
#[derive(Clone, Debug)]
pub struct Desired {
    pub endpoints: Vec<(EndpointSpec, Role)>,
    pub split: Split,
    pub canary_version: Option<Version>,
    /// A request header that forces the role (`always` → canary, `never` → stable).
    pub canary_header: Option<HeaderName>,
    pub settings: Settings,
}

/// Builds snapshots and swaps them in. Owns the map of live endpoint cells so that an endpoint whose
/// address and version are unchanged keeps its in-flight count, pool and metric handles.
pub struct Publisher {
    swap: Arc<ArcSwap<Snapshot>>,
    generation: watch::Sender<u64>,
    // Fx rather than SipHash: keys come from the control plane, not from clients, and a
    // 10,000-endpoint publish hashes every key twice.
    endpoints: FxHashMap<(SocketAddr, Version), Arc<Endpoint>>,
    versions: FxHashMap<Version, (Arc<VersionMetrics>, Arc<VersionHealth>)>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// Creates the swap with an empty snapshot (generation 0) and its reader handle.
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> (Self, Snapshots) {
        let swap = Arc::new(ArcSwap::from_pointee(Snapshot::empty(settings)));
        let (generation, rx) = watch::channel(0);
        let publisher = Self {
            swap: swap.clone(),
            generation,
            endpoints: FxHashMap::default(),
            versions: FxHashMap::default(),
            metrics,
        };
        (
            publisher,
            Snapshots {
                swap,
                generation: rx,
            },
        )
    }

    /// Builds the snapshot for `desired`, swaps it in and returns its generation.
    pub fn publish(&mut self, desired: Desired) -> u64 {
        let generation = *self.generation.borrow() + 1;
        let now = super::health::now_ms(std::time::Instant::now());
        let mut entries = desired.endpoints;
        entries.sort_by_key(|(spec, _)| spec.address);
        entries.dedup_by_key(|(spec, _)| spec.address);

        let mut live = FxHashMap::with_capacity_and_hasher(entries.len(), Default::default());
        let mut live_versions = FxHashSet::default();
        let mut listed = Vec::with_capacity(entries.len());
        for (spec, role) in entries {
            let key = (spec.address, spec.version.clone());
            let protocol = spec.protocol.unwrap_or(desired.settings.protocol);
            // A cell speaks one protocol: an endpoint that changed protocol is a new endpoint.
            let existing = self
                .endpoints
                .remove(&key)
                .filter(|e| e.pool().protocol() == protocol);
            let endpoint = match existing {
                Some(existing) => existing,
                None => {
                    let (metrics, health) = self
                        .versions
                        .entry(spec.version.clone())
                        .or_insert_with(|| {
                            (
                                Arc::new(self.metrics.version(&spec.version)),
                                Arc::default(),
                            )
                        })
                        .clone();
                    Arc::new(Endpoint::new(&spec, protocol, metrics, health))
                }
            };
            if !live_versions.contains(&spec.version) {
                live_versions.insert(spec.version.clone());
            }
            endpoint
                .health()
                .set_ready(spec.state == EndpointState::Ready, now, generation == 1);
            // Draining: a terminating or not-ready endpoint keeps its in-flight requests but no
            // idle connections.
            if matches!(
                spec.state,
                EndpointState::Terminating | EndpointState::NotReady
            ) {
                endpoint.pool().close_idle();
            }
            live.insert(key, endpoint.clone());
            listed.push(Listed {
                endpoint,
                role,
                state: spec.state,
            });
        }
        // Cells not carried over are dropped here (or when their last in-flight request ends),
        // which closes their idle upstream connections.
        self.endpoints = live;
        self.versions.retain(|v, _| live_versions.contains(v));
        self.metrics
            .versions_live(live_versions.iter().map(Version::as_str));

        self.record_gauges(&listed);
        let snapshot = Snapshot::build(
            generation,
            listed,
            desired.split,
            desired.canary_version,
            desired.settings,
        )
        .with_canary_header(desired.canary_header);
        self.metrics.set_canary_weight(snapshot.canary_share());
        self.swap.store(Arc::new(snapshot));
        self.generation.send_replace(generation);
        generation
    }

    fn record_gauges(&self, listed: &[Listed]) {
        let mut counts: HashMap<(&Version, Role, EndpointState), i64> = HashMap::new();
        for l in listed {
            *counts
                .entry((l.endpoint.version(), l.role, l.state))
                .or_default() += 1;
        }
        self.metrics.set_endpoint_counts(
            counts
                .into_iter()
                .map(|((v, role, state), n)| (v.as_str(), role.as_str(), state.as_str(), n)),
        );
    }

    /// The canary's share of requests in the current snapshot (see [`Snapshot::canary_share`]).
    pub fn canary_share(&self) -> f64 {
        self.swap.load().canary_share()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Weight;

    fn spec(addr: &str, version: &str, state: EndpointState) -> EndpointSpec {
        EndpointSpec {
            address: addr.parse().unwrap(),
            version: Version::new(version).unwrap(),
            state,
            name: None,
            image: None,
            protocol: None,
        }
    }

    fn desired(endpoints: Vec<(EndpointSpec, Role)>) -> Desired {
        Desired {
            endpoints,
            split: Split::Weighted(Weight::new(10.0).unwrap()),
            canary_version: None,
            canary_header: None,
            settings: Settings::default(),
        }
    }

    #[test]
    fn unchanged_endpoints_keep_their_cell_across_publishes() {
        let (mut publisher, snapshots) =
            Publisher::new(Settings::default(), Arc::new(Metrics::new()));
        let a = spec("127.0.0.2:80", "v1", EndpointState::Ready);
        let b = spec("127.0.0.3:80", "v1", EndpointState::Ready);
        publisher.publish(desired(vec![
            (a.clone(), Role::Stable),
            (b.clone(), Role::Stable),
        ]));
        let first = snapshots.load().routable(Role::Stable)[0].clone();
        let _held = first.begin();

        let c = spec("127.0.0.4:80", "v2", EndpointState::Ready);
        let generation = publisher.publish(desired(vec![(a, Role::Stable), (c, Role::Canary)]));
        let snap = snapshots.load();
        assert_eq!(generation, 2);
        assert_eq!(snap.generation(), 2);
        let again = &snap.routable(Role::Stable)[0];
        assert!(
            Arc::ptr_eq(&first, again),
            "an unchanged address must keep its endpoint cell"
        );
        assert_eq!(
            again.in_flight(),
            1,
            "in-flight count must survive the swap"
        );
        assert_eq!(snap.routable(Role::Canary).len(), 1);
    }

    #[test]
    fn a_new_version_on_the_same_address_gets_a_fresh_cell() {
        let (mut publisher, snapshots) =
            Publisher::new(Settings::default(), Arc::new(Metrics::new()));
        publisher.publish(desired(vec![(
            spec("127.0.0.2:80", "v1", EndpointState::Ready),
            Role::Stable,
        )]));
        let old = snapshots.load().routable(Role::Stable)[0].clone();
        publisher.publish(desired(vec![(
            spec("127.0.0.2:80", "v2", EndpointState::Ready),
            Role::Stable,
        )]));
        let new = snapshots.load().routable(Role::Stable)[0].clone();
        assert!(
            !Arc::ptr_eq(&old, &new),
            "a pod replaced on a reused IP is a new endpoint"
        );
        assert_eq!(new.version().as_str(), "v2");
    }

    #[test]
    fn not_ready_endpoints_are_listed_but_not_routable() {
        let (mut publisher, snapshots) =
            Publisher::new(Settings::default(), Arc::new(Metrics::new()));
        publisher.publish(desired(vec![
            (
                spec("127.0.0.2:80", "v1", EndpointState::Ready),
                Role::Stable,
            ),
            (
                spec("127.0.0.3:80", "v1", EndpointState::NotReady),
                Role::Stable,
            ),
        ]));
        let snap = snapshots.load();
        assert_eq!(snap.listed().len(), 2);
        assert_eq!(snap.routable(Role::Stable).len(), 1);
        assert_eq!(
            snap.routable(Role::Stable)[0].address().to_string(),
            "127.0.0.2:80"
        );
    }
}
