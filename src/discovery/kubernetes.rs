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
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::config::{KubernetesConfig, MinReady};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::snapshot::{EndpointSpec, EndpointState, Version};

use super::pods::{self, Fate, Tombstones};
use super::rollout::{self, POD_TEMPLATE_HASH};
use super::slices::{self, Condition, Skipped};
use super::watch::{watch_resource, CappedBackoff, Recovery};
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

/// The namespace discovery watches: the configured one, else the client's own (a pod's namespace
/// from its service account, or the kubeconfig context's).
pub fn namespace_of(client: &Client, config: &KubernetesConfig) -> String {
    config
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned())
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
            namespace: namespace_of(&client, config),
            client,
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
    let namespace = &namespace_of(&client, &config);
    tracing::info!(namespace, service = %config.service, "watching the Service's EndpointSlices");
    let watch = watcher::Config::default().timeout(
        u32::try_from(config.api_timeout.as_secs())
            .unwrap_or(u32::MAX)
            .max(1),
    );
    let recovery = Recovery::default();
    let mut streams: SelectAll<BoxStream<'static, Change>> = SelectAll::new();
    let service_label = format!("kubernetes.io/service-name={}", config.service);
    streams.push(
        watch_resource(
            Api::<EndpointSlice>::namespaced(client.clone(), namespace),
            watch.clone().labels(&service_label),
            recovery.clone(),
        )
        .map(Change::Slices)
        .boxed(),
    );
    let service_pods = if config.pod_deletion {
        let services = Api::<Service>::namespaced(client.clone(), namespace);
        tokio::select! {
            _ = shutdown.wait() => return,
            selector = service_selector(&services, &config.service) => selector,
        }
    } else {
        None
    };
    // The Service's pods when its selector is known; else, following a Deployment, every pod of
    // any Deployment (they carry this label; ownership is checked later).
    let pod_selector = service_pods.clone().or_else(|| {
        config
            .deployment
            .as_ref()
            .map(|_| POD_TEMPLATE_HASH.to_owned())
    });
    if let Some(selector) = &pod_selector {
        streams.push(
            watch_resource(
                Api::<PartialObjectMeta<Pod>>::namespaced(client.clone(), namespace),
                watch.clone().labels(selector),
                recovery.clone(),
            )
            .map(Change::Pods)
            .boxed(),
        );
    }
    if let Some(deployment) = &config.deployment {
        streams.push(
            watch_resource(
                Api::<ReplicaSet>::namespaced(client.clone(), namespace),
                watch.clone().labels(POD_TEMPLATE_HASH),
                recovery.clone(),
            )
            .map(Change::ReplicaSets)
            .boxed(),
        );
        streams.push(
            watch_resource(
                Api::<Deployment>::namespaced(client.clone(), namespace),
                watch.clone().fields(&format!("metadata.name={deployment}")),
                recovery,
            )
            .map(Change::Deployments)
            .boxed(),
        );
    }

    let pod_path = service_pods.is_some();
    let mut state = State::new(config, metrics, pod_selector.is_some(), pod_path);
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

/// The Service's pod selector, read once at start (retried while the API server does not answer).
/// `None`, with a warning, when the pod-deletion path cannot work: no selector (hand-managed
/// EndpointSlices), no such Service, or no RBAC permission to read it.
async fn service_selector(services: &Api<Service>, name: &str) -> Option<String> {
    let mut backoff = CappedBackoff::default();
    let mut warned = false;
    loop {
        match services.get(name).await {
            Ok(service) => {
                let selector = pods::selector(&service);
                if selector.is_none() {
                    tracing::warn!(service = name, "the Service has no selector: endpoints leave at pod deletion only through the EndpointSlice");
                }
                return selector;
            }
            Err(kube::Error::Api(status)) if matches!(status.code, 403 | 404) => {
                tracing::warn!(service = name, reason = %status.message, "cannot read the Service (grant `get` on services): endpoints leave at pod deletion only through the EndpointSlice");
                return None;
            }
            Err(error) => {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(service = name, %error, "cannot read the Service yet; retrying");
                }
                tokio::time::sleep(backoff.step()).await;
            }
        }
    }
}

/// One resource's objects, with a buffer so that a re-list replaces them in one step.
struct Store<K> {
    live: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
    /// Objects deleted (or missing from a re-list) since last taken; kept only when `Some`.
    removed: Option<Vec<K>>,
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
            removed: None,
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
                    let before = std::mem::replace(&mut self.live, buffer);
                    if let Some(removed) = &mut self.removed {
                        removed.extend(
                            before
                                .into_iter()
                                .filter(|(name, _)| !self.live.contains_key(name))
                                .map(|(_, object)| object),
                        );
                    }
                }
                self.synced = true;
                true
            }
            Event::Apply(object) => {
                self.live.insert(object.name_any(), object);
                true
            }
            Event::Delete(object) => match self.live.remove(&object.name_any()) {
                Some(last) => {
                    if let Some(removed) = &mut self.removed {
                        removed.push(last);
                    }
                    true
                }
                None => false,
            },
        }
    }

    /// Keeps the objects that leave, for [`Store::take_removed`].
    fn keeping_removed(mut self) -> Self {
        self.removed = Some(Vec::new());
        self
    }

    fn take_removed(&mut self) -> Vec<K> {
        self.removed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

struct State {
    config: KubernetesConfig,
    metrics: Arc<Metrics>,
    slices: Store<EndpointSlice>,
    pods: Store<PartialObjectMeta<Pod>>,
    replicasets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
    /// Pods are watched (for versions, the pod-deletion path, or both).
    pods_watched: bool,
    /// Endpoints leave at their pod's deletion, ahead of the slice (`kubernetes.pod_deletion`, and
    /// the Service's selector known).
    pod_path: bool,
    tombstones: Tombstones,
    /// When each ready endpoint turned ready; `None` = already ready when tidegate started.
    ready_since: HashMap<SocketAddr, Option<Instant>>,
    first_sync_done: bool,
    skipped: HashSet<Skipped>,
    last_sent: Option<Update>,
}

impl State {
    fn new(
        config: KubernetesConfig,
        metrics: Arc<Metrics>,
        pods_watched: bool,
        pod_path: bool,
    ) -> Self {
        Self {
            slices: Store::new("endpointslices", &metrics),
            pods: Store::new("pods", &metrics).keeping_removed(),
            pods_watched,
            pod_path,
            tombstones: Tombstones::default(),
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
            Change::Pods(e) => {
                if let Ok(Event::Apply(pod) | Event::InitApply(pod)) = &e {
                    self.tombstones.revive(&pod.name_any());
                }
                let changed = self.pods.apply(e);
                for gone in self.pods.take_removed() {
                    self.tombstones.bury(gone);
                }
                changed
            }
            Change::ReplicaSets(e) => self.replicasets.apply(e),
            Change::Deployments(e) => self.deployments.apply(e),
        };
        self.record_health();
        changed
    }

    /// Every watch has completed its first list.
    fn synced(&self) -> bool {
        self.slices.synced
            && (!self.pods_watched || self.pods.synced)
            && (!self.follows_deployment() || (self.replicasets.synced && self.deployments.synced))
    }

    fn healthy(&self) -> bool {
        self.slices.healthy
            && (!self.pods_watched || self.pods.healthy)
            && (!self.follows_deployment()
                || (self.replicasets.healthy && self.deployments.healthy))
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
            tracing::warn!(skipped = %s, reason = s.reason(), "ignoring an EndpointSlice entry that cannot be used");
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
                let state = match self.condition_of(e.condition, e.pod.as_deref()) {
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
        let listed: HashSet<&str> = observed.iter().filter_map(|e| e.pod.as_deref()).collect();
        self.tombstones.keep_only(&listed);

        let rollout = view.map(|v| Rollout {
            newest: v.newest.as_deref().and_then(|h| Version::new(h).ok()),
            paused: v.paused,
            complete: v.complete,
            weight_annotation: v.weight_annotation,
        });
        (Update::Reset { endpoints, rollout }, wake)
    }

    /// The slice's condition of an endpoint, overruled by what the pod watch knows first: a pod
    /// being deleted serves only as the last resort (as `terminating`), and a deleted pod not at
    /// all.
    fn condition_of(&self, condition: Condition, pod: Option<&str>) -> Condition {
        let fate = match pod {
            Some(pod) if self.pod_path => pods::fate(pod, &self.pods.live, &self.tombstones),
            _ => Fate::Alive,
        };
        match (condition, fate) {
            (_, Fate::Gone) => Condition::NotReady,
            (Condition::Ready, Fate::Deleting) => Condition::ServingTerminating,
            (condition, _) => condition,
        }
    }

    /// The version label of an endpoint: its pod's template hash when following a Deployment
    /// (a deleted pod's from its last state), otherwise the Service name.
    fn version_of(&self, pod: Option<&str>) -> Version {
        let label = if self.follows_deployment() {
            pod.and_then(|p| self.pods.live.get(p).or_else(|| self.tombstones.get(p)))
                .and_then(|p| p.labels().get(POD_TEMPLATE_HASH))
                .map(String::as_str)
                .unwrap_or("unknown")
        } else {
            self.config.service.as_str()
        };
        Version::new(label).unwrap_or_else(|_| Version::new("unknown").expect("a valid label"))
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
}
