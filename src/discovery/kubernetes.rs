//! Kubernetes discovery: watch a Service's EndpointSlices and, when a Deployment is named, its
//! rollout (Deployment, ReplicaSets, and pod labels through metadata-only watches).
//!
//! Fails static: a watch error, a dropped connection, a `410 Gone` or an unreachable API server
//! never empties the endpoint set. A re-list is buffered and applied at once (`InitDone`), and
//! nothing is sent until every watch has completed its first list.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::config::{KubernetesConfig, MinReady};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::snapshot::{EndpointSpec, EndpointState, Version};

use super::rollout::{self, POD_TEMPLATE_HASH};
use super::slices::{self, Condition, Skipped};
use super::{Rollout, Update};

/// Why Kubernetes discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot configure the Kubernetes client: {0}")]
    Client(String),
}

/// Builds the API client: the configured kubeconfig, else `$KUBECONFIG`, `~/.kube/config`, then
/// the in-cluster service account. The read timeout sits above the watch timeout, so a server
/// that accepts connections but never answers is noticed in about 1.5 × `api_timeout`.
pub async fn connect(config: &KubernetesConfig) -> Result<Client, DiscoveryError> {
    let mut client_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                DiscoveryError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| DiscoveryError::Client(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| DiscoveryError::Client(e.to_string()))?,
    };
    client_config.read_timeout = Some(config.api_timeout + config.api_timeout / 2);
    client_config.connect_timeout = Some(config.api_timeout.min(Duration::from_secs(5)));
    Client::try_from(client_config).map_err(|e| DiscoveryError::Client(e.to_string()))
}

/// Records Kubernetes Events on the followed Deployment, where `kubectl describe` shows them.
/// Failures are logged and never affect routing.
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    namespace: String,
    deployment: String,
}

impl EventRecorder {
    pub fn new(client: Client, config: &KubernetesConfig) -> Option<Self> {
        Some(Self {
            client,
            namespace: config.namespace.clone(),
            deployment: config.deployment.clone()?,
        })
    }

    /// A `Warning` Event with reason `CanaryAborted`, sent in the background.
    pub fn canary_aborted(&self, message: String) {
        let this = self.clone();
        tokio::spawn(async move {
            use k8s_openapi::api::core::v1::{Event as KubeEvent, EventSource, ObjectReference};
            use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            let event = KubeEvent {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}.", this.deployment)),
                    namespace: Some(this.namespace.clone()),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: Some("Deployment".into()),
                    name: Some(this.deployment.clone()),
                    namespace: Some(this.namespace.clone()),
                    ..Default::default()
                },
                reason: Some("CanaryAborted".into()),
                message: Some(message),
                type_: Some("Warning".into()),
                source: Some(EventSource {
                    component: Some("tidegate".into()),
                    ..Default::default()
                }),
                reporting_component: Some("tidegate".into()),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now),
                count: Some(1),
                ..Default::default()
            };
            let api = Api::<KubeEvent>::namespaced(this.client, &this.namespace);
            if let Err(error) = api.create(&Default::default(), &event).await {
                tracing::warn!(%error, "cannot record the CanaryAborted event; routing is unaffected");
            }
        });
    }
}

/// One watch event, tagged with its resource.
enum Change {
    Slices(watcher::Result<Event<EndpointSlice>>),
    Pods(watcher::Result<Event<PartialObjectMeta<Pod>>>),
    ReplicaSets(watcher::Result<Event<ReplicaSet>>),
    Deployments(watcher::Result<Event<Deployment>>),
}

/// Watches until `shutdown`, sending a full [`Update`] whenever the routable picture changes.
pub async fn run(
    client: Client,
    config: KubernetesConfig,
    updates: mpsc::Sender<Update>,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) {
    let namespace = config.namespace.as_str();
    let watch = watcher::Config::default().timeout(
        u32::try_from(config.api_timeout.as_secs())
            .unwrap_or(u32::MAX)
            .max(1),
    );
    let mut streams: SelectAll<BoxStream<'static, Change>> = SelectAll::new();
    let service_label = format!("kubernetes.io/service-name={}", config.service);
    streams.push(
        watch_resource(
            Api::<EndpointSlice>::namespaced(client.clone(), namespace),
            watch.clone().labels(&service_label),
        )
        .map(Change::Slices)
        .boxed(),
    );
    if let Some(deployment) = &config.deployment {
        // Pods and ReplicaSets of any Deployment carry this label; ownership is checked later.
        streams.push(
            watch_resource(
                Api::<PartialObjectMeta<Pod>>::namespaced(client.clone(), namespace),
                watch.clone().labels(POD_TEMPLATE_HASH),
            )
            .map(Change::Pods)
            .boxed(),
        );
        streams.push(
            watch_resource(
                Api::<ReplicaSet>::namespaced(client.clone(), namespace),
                watch.clone().labels(POD_TEMPLATE_HASH),
            )
            .map(Change::ReplicaSets)
            .boxed(),
        );
        streams.push(
            watch_resource(
                Api::<Deployment>::namespaced(client.clone(), namespace),
                watch.clone().fields(&format!("metadata.name={deployment}")),
            )
            .map(Change::Deployments)
            .boxed(),
        );
    }

    let mut state = State::new(config, metrics);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut wake: Option<Instant> = None;
    loop {
        let warm_deadline = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let changed = tokio::select! {
            _ = shutdown.wait() => return,
            change = streams.next() => match change {
                Some(change) => state.observe(change),
                None => return,
            },
            _ = warm_deadline => true,
            _ = tick.tick() => {
                state.record_health();
                false
            }
        };
        if changed && state.synced() {
            let (update, next) = state.compute(Instant::now());
            wake = next;
            if state.last_sent.as_ref() != Some(&update) {
                state.last_sent = Some(update.clone());
                if updates.send(update).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A watcher with capped backoff that starts over with a fresh list when the API server answers
/// a watch request with HTTP `410 Gone` (kube's watcher would retry the expired resourceVersion
/// forever; a `410` error *event* it handles itself).
fn watch_resource<K>(
    api: Api<K>,
    config: watcher::Config,
) -> BoxStream<'static, watcher::Result<Event<K>>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let start = move || {
        watcher::watcher(api.clone(), config.clone())
            .backoff(CappedBackoff::default())
            .boxed()
    };
    let first = start();
    futures::stream::unfold(first, move |mut inner| {
        let start = start.clone();
        async move {
            let item = inner.next().await?;
            if is_gone(&item) {
                inner = start();
            }
            Some((item, inner))
        }
    })
    .boxed()
}

fn is_gone<K>(item: &watcher::Result<Event<K>>) -> bool {
    matches!(
        item,
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))) if status.code == 410
    )
}

/// One resource's objects, with a buffer so that a re-list replaces them in one step.
struct Store<K> {
    live: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
    synced: bool,
    healthy: bool,
    errors: IntCounter,
    resource: &'static str,
}

impl<K: ResourceExt> Store<K> {
    fn new(resource: &'static str, metrics: &Metrics) -> Self {
        Self {
            live: BTreeMap::new(),
            relist: None,
            synced: false,
            healthy: true,
            errors: metrics.discovery_error(resource),
            resource,
        }
    }

    /// Applies one watch result; true when the visible set changed.
    fn apply(&mut self, event: watcher::Result<Event<K>>) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                self.errors.inc();
                if self.healthy {
                    tracing::warn!(resource = self.resource, %error, "watch failed; keeping the last known endpoints and retrying");
                }
                self.healthy = false;
                return false;
            }
        };
        if !self.healthy {
            tracing::info!(resource = self.resource, "watch recovered");
        }
        self.healthy = true;
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                if let Some(buffer) = &mut self.relist {
                    buffer.insert(object.name_any(), object);
                }
                false
            }
            Event::InitDone => {
                if let Some(buffer) = self.relist.take() {
                    self.live = buffer;
                }
                self.synced = true;
                true
            }
            Event::Apply(object) => {
                self.live.insert(object.name_any(), object);
                true
            }
            Event::Delete(object) => self.live.remove(&object.name_any()).is_some(),
        }
    }
}

struct State {
    config: KubernetesConfig,
    metrics: Arc<Metrics>,
    slices: Store<EndpointSlice>,
    pods: Store<PartialObjectMeta<Pod>>,
    replicasets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
    /// When each ready endpoint turned ready; `None` = already ready when tidegate started.
    ready_since: HashMap<SocketAddr, Option<Instant>>,
    first_sync_done: bool,
    skipped: HashSet<Skipped>,
    last_sent: Option<Update>,
}

impl State {
    fn new(config: KubernetesConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            slices: Store::new("endpointslices", &metrics),
            pods: Store::new("pods", &metrics),
            replicasets: Store::new("replicasets", &metrics),
            deployments: Store::new("deployments", &metrics),
            config,
            metrics,
            ready_since: HashMap::new(),
            first_sync_done: false,
            skipped: HashSet::new(),
            last_sent: None,
        }
    }

    fn follows_deployment(&self) -> bool {
        self.config.deployment.is_some()
    }

    fn observe(&mut self, change: Change) -> bool {
        let changed = match change {
            Change::Slices(e) => self.slices.apply(e),
            Change::Pods(e) => self.pods.apply(e),
            Change::ReplicaSets(e) => self.replicasets.apply(e),
            Change::Deployments(e) => self.deployments.apply(e),
        };
        self.record_health();
        changed
    }

    /// Every watch has completed its first list.
    fn synced(&self) -> bool {
        self.slices.synced
            && (!self.follows_deployment()
                || (self.pods.synced && self.replicasets.synced && self.deployments.synced))
    }

    fn healthy(&self) -> bool {
        self.slices.healthy
            && (!self.follows_deployment()
                || (self.pods.healthy && self.replicasets.healthy && self.deployments.healthy))
    }

    fn record_health(&self) {
        if self.synced() && self.healthy() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.metrics.discovery_synced(now);
        }
    }

    /// The endpoint set as of `now`, and when a warming endpoint next becomes available.
    fn compute(&mut self, now: Instant) -> (Update, Option<Instant>) {
        let (observed, skipped) =
            slices::merge(self.slices.live.values(), self.config.port.as_ref());
        let skipped: HashSet<Skipped> = skipped.into_iter().collect();
        for s in skipped.difference(&self.skipped) {
            tracing::warn!(skipped = ?s, "ignoring an EndpointSlice entry that cannot be used");
            self.metrics.discovery_skipped(s.reason());
        }
        self.skipped = skipped;

        let view = self.config.deployment.as_deref().map(|name| {
            rollout::view(
                name,
                self.deployments.live.get(name),
                self.replicasets.live.values(),
            )
        });
        let min_ready = match self.config.min_ready {
            MinReady::Fixed(d) => d,
            MinReady::Deployment => view.as_ref().map(|v| v.min_ready).unwrap_or_default(),
        };

        let initial = !self.first_sync_done;
        self.first_sync_done = true;
        let mut ready_since = HashMap::with_capacity(observed.len());
        let mut wake: Option<Instant> = None;
        let endpoints = observed
            .iter()
            .map(|e| {
                let state = match e.condition {
                    Condition::Ready => {
                        let since = match self.ready_since.get(&e.address) {
                            Some(since) => *since,
                            None if initial => None,
                            None => Some(now),
                        };
                        ready_since.insert(e.address, since);
                        match since.map(|s| s + min_ready) {
                            Some(available) if available > now => {
                                wake = Some(wake.map_or(available, |w| w.min(available)));
                                EndpointState::Warming
                            }
                            _ => EndpointState::Ready,
                        }
                    }
                    Condition::ServingTerminating => EndpointState::Terminating,
                    Condition::NotReady => EndpointState::NotReady,
                };
                let version = self.version_of(e.pod.as_deref());
                let image = view
                    .as_ref()
                    .and_then(|v| v.images.get(version.as_str()))
                    .map(|tag| Arc::from(tag.as_str()));
                EndpointSpec {
                    address: e.address,
                    version,
                    state,
                    name: e.pod.as_deref().map(Arc::from),
                    image,
                    protocol: e.protocol,
                }
            })
            .collect();
        self.ready_since = ready_since;

        let rollout = view.map(|v| Rollout {
            newest: v.newest.as_deref().and_then(|h| Version::new(h).ok()),
            paused: v.paused,
            complete: v.complete,
            weight_annotation: v.weight_annotation,
        });
        (Update::Reset { endpoints, rollout }, wake)
    }

    /// The version label of an endpoint: its pod's template hash when following a Deployment,
    /// otherwise the Service name.
    fn version_of(&self, pod: Option<&str>) -> Version {
        let label = if self.follows_deployment() {
            pod.and_then(|p| self.pods.live.get(p))
                .and_then(|p| p.labels().get(POD_TEMPLATE_HASH))
                .map(String::as_str)
                .unwrap_or("unknown")
        } else {
            self.config.service.as_str()
        };
        Version::new(label).unwrap_or_else(|_| Version::new("unknown").expect("a valid label"))
    }
}

/// Exponential backoff from 100 ms, capped at 2 s, with jitter: after an API server outage the
/// first change is applied within a few seconds (kube's default grows to 30 s).
struct CappedBackoff {
    next: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Default for CappedBackoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Iterator for CappedBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        // Up to 25% jitter so that many replicas do not reconnect in lockstep.
        Some(delay + delay.mul_f64(fastrand::f64() * 0.25))
    }
}

impl Backoff for CappedBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": name }, "addressType": "IPv4",
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_replaces_the_set_only_when_complete() {
        let metrics = Metrics::new();
        let mut store = Store::new("endpointslices", &metrics);
        for e in [
            Event::Init,
            Event::InitApply(slice("a")),
            Event::InitApply(slice("b")),
            Event::InitDone,
        ] {
            store.apply(Ok(e));
        }
        assert!(store.synced);
        assert_eq!(store.live.len(), 2);

        // A re-list after 410 Gone: nothing visible changes until InitDone.
        assert!(!store.apply(Ok(Event::Init)));
        assert!(!store.apply(Ok(Event::InitApply(slice("b")))));
        assert_eq!(
            store.live.len(),
            2,
            "a half-listed set must never be visible"
        );
        assert!(store.apply(Ok(Event::InitDone)));
        assert_eq!(
            store.live.keys().collect::<Vec<_>>(),
            ["b"],
            "then it is replaced at once"
        );
    }

    #[test]
    fn watch_errors_keep_the_last_set_and_count() {
        let metrics = Metrics::new();
        let mut store = Store::new("endpointslices", &metrics);
        store.apply(Ok(Event::Init));
        store.apply(Ok(Event::InitApply(slice("a"))));
        store.apply(Ok(Event::InitDone));
        let error = watcher::Error::NoResourceVersion;
        assert!(!store.apply(Err(error)), "an error changes nothing visible");
        assert_eq!(store.live.len(), 1, "fail static: the last set stays");
        assert!(!store.healthy);
        assert_eq!(store.errors.get(), 1);
    }

    #[test]
    fn backoff_is_capped_and_resets() {
        let mut b = CappedBackoff::default();
        let delays: Vec<_> = b.by_ref().take(10).collect();
        assert!(delays[0] >= BACKOFF_MIN && delays[0] < BACKOFF_MIN * 2);
        assert!(
            delays.iter().all(|d| *d <= BACKOFF_MAX + BACKOFF_MAX / 4),
            "{delays:?}"
        );
        assert!(delays[9] >= BACKOFF_MAX, "it grows to the cap");
        b.reset();
        assert!(b.next().unwrap() < BACKOFF_MIN * 2);
    }
}
