//! A simulated Deployment on the fake API server: the objects the deployment, ReplicaSet and
//! EndpointSlice controllers would write, with a real loopback backend per pod.
//!
//! The rolling update follows the deployment controller's rules: never more than
//! `replicas + maxSurge` pods, never fewer than `replicas - maxUnavailable` available ones, a pod
//! is available `minReadySeconds` after it turns ready, and old pods are terminated (endpoint
//! `terminating`, then gone) as the new ones become available. Between steps the controller sleeps
//! until the next pod event is due (a probe passing, minReadySeconds, a grace period ending): the
//! scenario's own clock, not a wait for tidegate.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_api::FakeApi;
use crate::support::*;

const NS: &str = "default";

/// How a rolling update may proceed (absolute pod counts, as the controller resolves percentages).
#[derive(Clone, Copy, Debug)]
pub struct Strategy {
    pub max_surge: usize,
    pub max_unavailable: usize,
}

/// What happens to a pod when it is terminated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Termination {
    /// Keeps serving through a short grace period (a preStop hook), then exits.
    Graceful,
    /// The process dies at the same moment its endpoint turns terminating (no preStop hook).
    Abrupt,
    /// No preStop hook: `sigterm_delay` after the pod's deletion is written (the kubelet noticing
    /// it) the server gets SIGTERM, refuses new connections, closes idle ones, finishes what it
    /// is serving and exits.
    ExitOnSigterm,
}

pub struct Pod {
    pub name: String,
    pub hash: String,
    pub version: String,
    pub backend: Backend,
    created: Instant,
    ready_at: Option<Instant>,
    terminating_since: Option<Instant>,
    /// Its process has exited (it still has an endpoint until the grace period ends).
    exited: bool,
    healthy: bool,
    /// Crashes (process dies, container restarts) once, right after first turning ready.
    crash_pending: bool,
}

impl Pod {
    /// When the pod's readiness probe first passed.
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at
    }
}

struct Set {
    hash: String,
    version: String,
    revision: u64,
    healthy: bool,
}

pub struct Cluster {
    pub api: FakeApi,
    pub name: String,
    replicas: usize,
    strategy: Strategy,
    pub min_ready: Duration,
    pub readiness_delay: Duration,
    pub grace: Duration,
    pub termination: Termination,
    port: u16,
    paused: bool,
    /// The Deployment's `tidegate.io/canary-weight` annotation.
    pub weight_annotation: Option<String>,
    revision: u64,
    sets: Vec<Set>,
    pub pods: Vec<Pod>,
    /// Pods that have exited; kept so that tests can read what they served.
    pub gone: Vec<Pod>,
    /// Processes that crashed (their pods restarted); kept for what they served.
    pub crashed: Vec<Backend>,
    /// Every n-th new pod crashes once right after becoming ready (0: none).
    pub crash_every: usize,
    /// With `Termination::ExitOnSigterm`: how long after a pod's deletion is written its process
    /// gets SIGTERM.
    pub sigterm_delay: Duration,
    /// How far the endpoints controller lags behind pod changes: each EndpointSlice write lands
    /// this long after the pod change it reflects (zero: at once).
    pub slice_lag: Duration,
    next_pod: usize,
    dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn new(name: &str, replicas: usize, strategy: Strategy) -> Cluster {
        let api = FakeApi::start().await;
        // Every pod of the Service listens on one port, each on its own 127.x address.
        let probe = backend("probe").run().await;
        let port = probe.addr.port();
        drop(probe);
        Cluster {
            api,
            name: name.to_owned(),
            replicas,
            strategy,
            min_ready: Duration::ZERO,
            readiness_delay: Duration::from_millis(100),
            grace: Duration::from_millis(150),
            termination: Termination::Graceful,
            port,
            paused: false,
            weight_annotation: None,
            revision: 0,
            sets: Vec::new(),
            pods: Vec::new(),
            gone: Vec::new(),
            crashed: Vec::new(),
            crash_every: 0,
            sigterm_delay: Duration::ZERO,
            slice_lag: Duration::ZERO,
            next_pod: 0,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn kubeconfig(&self) -> std::path::PathBuf {
        self.api.write_kubeconfig(self.dir.path())
    }

    /// tidegate following this Service and Deployment.
    pub fn proxy(&self, extra: &str) -> TestProxy {
        TestProxy::new().kubernetes(
            &self.kubeconfig(),
            &self.name,
            &format!("deployment: {}\napi_timeout: 2s\n{extra}", self.name),
        )
    }

    fn hash_of(version: &str) -> String {
        let mut h = Fnv::new();
        h.update(version.as_bytes());
        format!("{:x}", h.0)[..10].to_owned()
    }

    /// `kubectl create deployment`: all replicas of `version`, ready, before tidegate starts.
    pub async fn deploy(&mut self, version: &str) {
        self.new_set(version, true);
        for _ in 0..self.replicas {
            self.create_pod().await;
        }
        for pod in &mut self.pods {
            pod.ready_at = Some(Instant::now() - self.min_ready - Duration::from_secs(1));
        }
        self.publish();
    }

    fn new_set(&mut self, version: &str, healthy: bool) {
        self.revision += 1;
        let hash = Self::hash_of(version);
        self.sets.retain(|s| s.hash != hash);
        self.sets.push(Set {
            hash,
            version: version.to_owned(),
            revision: self.revision,
            healthy,
        });
    }

    fn newest(&self) -> &Set {
        self.sets
            .iter()
            .max_by_key(|s| s.revision)
            .expect("a ReplicaSet exists")
    }

    async fn create_pod(&mut self) {
        let set = self.newest();
        let (hash, version, healthy) = (set.hash.clone(), set.version.clone(), set.healthy);
        let name = format!("{}-{hash}-{}", self.name, self.next_pod);
        self.next_pod += 1;
        let backend = backend(&version).pod(&name).port(self.port).run().await;
        self.pods.push(Pod {
            name,
            hash,
            version,
            backend,
            created: Instant::now(),
            ready_at: None,
            terminating_since: None,
            exited: false,
            healthy,
            crash_pending: self.crash_every > 0 && self.next_pod.is_multiple_of(self.crash_every),
        });
    }

    fn available(&self, pod: &Pod, now: Instant) -> bool {
        pod.terminating_since.is_none() && pod.ready_at.is_some_and(|r| now >= r + self.min_ready)
    }

    /// When `advance` next has something to do: a probe passing, minReadySeconds running out, a
    /// crash, or a terminating pod's grace period ending.
    fn next_event(&self) -> Option<Instant> {
        self.pods
            .iter()
            .filter_map(|pod| {
                if let Some(since) = pod.terminating_since {
                    let signal = self.termination == Termination::ExitOnSigterm && !pod.exited;
                    return Some(if signal {
                        since + self.sigterm_delay
                    } else {
                        since + self.grace
                    });
                }
                match pod.ready_at {
                    None if pod.healthy => Some(pod.created + self.readiness_delay),
                    None => None,
                    Some(ready) if pod.crash_pending => Some(ready + Duration::from_millis(30)),
                    Some(ready) => Some(ready + self.min_ready),
                }
            })
            .filter(|&at| at > Instant::now())
            .min()
    }

    /// Sleeps until the next pod event, or `limit` if none is due before it.
    async fn until_next_event(&self, limit: Instant) {
        let wake = self.next_event().map_or(limit, |at| at.min(limit));
        tokio::time::sleep_until(wake.into()).await;
    }

    /// Advances pod lifecycles to `now`; true when anything changed.
    async fn advance(&mut self, now: Instant) -> bool {
        let mut changed = false;
        // A crash right after turning ready: the process dies, the kubelet restarts it on the same
        // IP, and the pod is not ready until its probe passes again.
        for i in 0..self.pods.len() {
            let pod = &self.pods[i];
            if pod.crash_pending
                && pod
                    .ready_at
                    .is_some_and(|r| now >= r + Duration::from_millis(30))
            {
                let (ip, version, name) =
                    (pod.backend.addr.ip(), pod.version.clone(), pod.name.clone());
                self.pods[i].backend.kill();
                let restarted = backend(&version)
                    .pod(&name)
                    .ip(ip)
                    .port(self.port)
                    .run()
                    .await;
                let pod = &mut self.pods[i];
                self.crashed
                    .push(std::mem::replace(&mut pod.backend, restarted));
                pod.crash_pending = false;
                pod.ready_at = None;
                pod.created = Instant::now();
                changed = true;
            }
        }
        for pod in &mut self.pods {
            if pod.ready_at.is_none()
                && pod.healthy
                && pod.terminating_since.is_none()
                && now >= pod.created + self.readiness_delay
            {
                pod.ready_at = Some(now);
                changed = true;
            }
        }
        if self.termination == Termination::ExitOnSigterm {
            for pod in &mut self.pods {
                let signalled = pod
                    .terminating_since
                    .is_some_and(|t| now >= t + self.sigterm_delay);
                if signalled && !pod.exited {
                    pod.backend.sigterm();
                    pod.exited = true;
                }
            }
        }
        let grace = self.grace;
        let (done, alive): (Vec<Pod>, Vec<Pod>) = std::mem::take(&mut self.pods)
            .into_iter()
            .partition(|p| p.terminating_since.is_some_and(|t| now >= t + grace));
        self.pods = alive;
        for pod in done {
            pod.backend.kill();
            self.api.delete("Pod", NS, &pod.name);
            self.gone.push(pod);
            changed = true;
        }
        changed
    }

    fn terminate(&mut self, index: usize) {
        let pod = &mut self.pods[index];
        pod.terminating_since = Some(Instant::now());
        if self.termination == Termination::Abrupt {
            pod.backend.kill();
            pod.exited = true;
        }
    }

    /// `kubectl delete pod` of the `index`-th pod, outside any rollout: its deletion is written
    /// now (the slice follows `slice_lag` later); it exits as `termination` says, and is gone
    /// after the grace period once the controller runs again. Returns when the write was made.
    pub fn delete_pod(&mut self, index: usize) -> Instant {
        self.terminate(index);
        self.publish();
        Instant::now()
    }

    /// One pass of the deployment controller; true when the rollout is finished.
    async fn reconcile(&mut self) -> bool {
        let now = Instant::now();
        let newest = self.newest().hash.clone();
        let live = |p: &&Pod| p.terminating_since.is_none();
        let new_count = self
            .pods
            .iter()
            .filter(live)
            .filter(|p| p.hash == newest)
            .count();
        let old_count = self
            .pods
            .iter()
            .filter(live)
            .filter(|p| p.hash != newest)
            .count();
        let new_available = self
            .pods
            .iter()
            .filter(|p| p.hash == newest && self.available(p, now))
            .count();
        if new_available == self.replicas && old_count == 0 {
            return true;
        }
        if self.paused {
            return false;
        }
        let mut total = new_count + old_count;
        let mut created = new_count;
        while created < self.replicas && total < self.replicas + self.strategy.max_surge {
            self.create_pod().await;
            created += 1;
            total += 1;
        }
        let available = self.pods.iter().filter(|p| self.available(p, now)).count();
        let mut removable = available.saturating_sub(self.replicas - self.strategy.max_unavailable);
        // Old pods that are not available go first: removing them costs no capacity.
        let mut order: Vec<usize> = (0..self.pods.len())
            .filter(|&i| self.pods[i].terminating_since.is_none() && self.pods[i].hash != newest)
            .collect();
        order.sort_by_key(|&i| self.available(&self.pods[i], now));
        for i in order {
            if !self.available(&self.pods[i], now) {
                self.terminate(i);
            } else if removable > 0 {
                self.terminate(i);
                removable -= 1;
            }
        }
        false
    }

    /// Runs the controller until the rollout finishes, pauses, or makes no progress for `stuck`.
    async fn drive(&mut self, stuck: Duration) {
        let mut last_progress = Instant::now();
        loop {
            let finished = self.reconcile().await;
            let changed = self.advance(Instant::now()).await;
            self.publish();
            if changed {
                last_progress = Instant::now();
            }
            let settled = self.pods.iter().all(|p| p.terminating_since.is_none());
            if settled && (finished || self.paused) {
                return;
            }
            if last_progress.elapsed() > stuck && settled {
                return;
            }
            if !changed {
                self.until_next_event(last_progress + stuck + Duration::from_millis(1))
                    .await;
            }
        }
    }

    /// `kubectl set image`: roll to `version`; pods of an unhealthy version never become ready.
    pub async fn set_image(&mut self, version: &str, healthy: bool) {
        self.new_set(version, healthy);
        let stuck = self.readiness_delay * 4 + self.min_ready + Duration::from_millis(300);
        self.drive(stuck).await;
    }

    /// `kubectl set image` and `kubectl rollout pause` once `new_ready` new pods are available.
    pub async fn set_image_and_pause_after(&mut self, version: &str, new_ready: usize) {
        self.new_set(version, true);
        let newest = self.newest().hash.clone();
        let deadline =
            Instant::now() + self.readiness_delay * 4 + self.min_ready + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < deadline,
                "the rollout never had {new_ready} new pod(s) available to pause after"
            );
            self.reconcile().await;
            let changed = self.advance(Instant::now()).await;
            let now = Instant::now();
            let available = self
                .pods
                .iter()
                .filter(|p| p.hash == newest && self.available(p, now))
                .count();
            if available >= new_ready {
                self.paused = true;
            }
            self.publish();
            if self.paused && self.pods.iter().all(|p| p.terminating_since.is_none()) {
                return;
            }
            if !changed {
                self.until_next_event(deadline).await;
            }
        }
    }

    /// `kubectl annotate deployment/NAME tidegate.io/canary-weight=VALUE --overwrite`.
    pub fn annotate_weight(&mut self, value: &str) {
        self.weight_annotation = Some(value.to_owned());
        self.publish();
    }

    /// Flips `spec.paused` without letting the controller move (a snapshot of a rollout between
    /// steps).
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        self.publish();
    }

    /// `kubectl rollout resume`.
    pub async fn resume(&mut self) {
        self.paused = false;
        self.publish();
        self.drive(Duration::from_secs(5)).await;
    }

    /// `kubectl scale`: more replicas of the current version.
    pub async fn scale(&mut self, replicas: usize) {
        self.replicas = replicas;
        self.drive(self.readiness_delay * 4 + self.min_ready + Duration::from_millis(300))
            .await;
    }

    /// Adds a pod of the current version and makes it ready, without reading the API (for changes
    /// made while the API server is down; the objects are written by `publish`).
    pub async fn add_ready_pod(&mut self) {
        self.replicas += 1;
        self.create_pod().await;
        if let Some(pod) = self.pods.last_mut() {
            pod.ready_at = Some(Instant::now() - self.min_ready - Duration::from_secs(1));
        }
    }

    /// `kubectl rollout undo`: the previous template becomes newest again and rolls out.
    pub async fn undo(&mut self) {
        let mut sets: Vec<_> = self
            .sets
            .iter()
            .map(|s| (s.revision, s.version.clone()))
            .collect();
        sets.sort();
        let previous = sets[sets.len() - 2].1.clone();
        self.new_set(&previous, true);
        self.drive(Duration::from_secs(5)).await;
    }

    /// Writes every object the controllers own.
    pub fn publish(&self) {
        let template = |version: &str| {
            json!({
                "metadata": { "labels": { "app": self.name } },
                "spec": { "containers": [{ "name": "app", "image": format!("{}:{version}", self.name) }] },
            })
        };
        let newest = self.newest();
        let mut annotations =
            json!({ "deployment.kubernetes.io/revision": newest.revision.to_string() });
        if let Some(weight) = &self.weight_annotation {
            annotations["tidegate.io/canary-weight"] = json!(weight);
        }
        self.api.apply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": self.name, "namespace": NS, "uid": format!("uid-{}", self.name),
                          "annotations": annotations },
            "spec": {
                "replicas": self.replicas, "paused": self.paused,
                "minReadySeconds": self.min_ready.as_secs(),
                "selector": { "matchLabels": { "app": self.name } },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": {
                    "maxSurge": self.strategy.max_surge, "maxUnavailable": self.strategy.max_unavailable } },
                "template": template(&newest.version),
            },
        }));
        for set in &self.sets {
            let pods = self.pods.iter().filter(|p| p.hash == set.hash).count();
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": format!("{}-{}", self.name, set.hash), "namespace": NS,
                    "labels": { "app": self.name, "pod-template-hash": set.hash },
                    "annotations": { "deployment.kubernetes.io/revision": set.revision.to_string() },
                    "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": self.name,
                                          "uid": format!("uid-{}", self.name), "controller": true }],
                },
                "spec": { "replicas": pods, "selector": { "matchLabels": { "app": self.name, "pod-template-hash": set.hash } },
                          "template": template(&set.version) },
                "status": { "replicas": pods },
            });
            self.apply_if_changed(rs);
        }
        self.apply_if_changed(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": self.name, "namespace": NS },
            "spec": { "selector": { "app": self.name },
                      "ports": [{ "name": "http", "port": 80, "targetPort": self.port }] },
        }));
        for pod in &self.pods {
            let mut object = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": pod.name, "namespace": NS,
                              "labels": { "app": self.name, "pod-template-hash": pod.hash } },
                "spec": { "containers": [{ "name": "app", "image": format!("{}:{}", self.name, pod.version) }] },
            });
            if pod.terminating_since.is_some() {
                // What `kubectl delete` (or the ReplicaSet controller) writes first.
                object["metadata"]["deletionTimestamp"] = json!("2026-12-04T12:00:00Z");
            }
            self.apply_if_changed(object);
        }
        // Two slices, as the EndpointSlice controller shards a Service's endpoints.
        for shard in 0..2 {
            let endpoints: Vec<Value> = self
                .pods
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == shard)
                .map(|(_, p)| {
                    let ready = p.ready_at.is_some() && p.terminating_since.is_none();
                    let terminating = p.terminating_since.is_some();
                    json!({
                        "addresses": [p.backend.addr.ip().to_string()],
                        "conditions": { "ready": ready, "serving": ready || (terminating && p.ready_at.is_some()),
                                        "terminating": terminating },
                        "targetRef": { "kind": "Pod", "namespace": NS, "name": p.name },
                    })
                })
                .collect();
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": { "name": format!("{}-{shard}", self.name), "namespace": NS,
                              "labels": { "kubernetes.io/service-name": self.name } },
                "addressType": "IPv4",
                "ports": [{ "name": "http", "port": self.port, "protocol": "TCP" }],
                "endpoints": endpoints,
            });
            self.write_slice(slice);
        }
    }

    /// The endpoints controller's write: now, or `slice_lag` later (in order: each write is due
    /// one lag after it was decided, and a later one never lands before an earlier one).
    fn write_slice(&self, slice: Value) {
        if self.slice_lag.is_zero() {
            self.apply_if_changed(slice);
            return;
        }
        let (api, due) = (
            self.api.clone(),
            tokio::time::Instant::now() + self.slice_lag,
        );
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            apply_if_changed(&api, slice);
        });
    }

    /// Like a controller, writes only when the object would change.
    fn apply_if_changed(&self, object: Value) {
        apply_if_changed(&self.api, object);
    }

    /// Requests served by pods of `version`, dead or alive.
    pub fn hits(&self, version: &str) -> usize {
        let pods: usize = self
            .pods
            .iter()
            .chain(self.gone.iter())
            .filter(|p| p.version == version)
            .map(|p| p.backend.hits())
            .sum();
        pods + self
            .crashed
            .iter()
            .filter(|b| b.version == version)
            .map(Backend::hits)
            .sum::<usize>()
    }

    pub fn live_versions(&self) -> Vec<String> {
        let mut v: Vec<_> = self.pods.iter().map(|p| p.version.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Writes `object` only when it would change, as controllers do.
fn apply_if_changed(api: &FakeApi, object: Value) {
    let kind = object["kind"].as_str().unwrap().to_owned();
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    if let Some(current) = api.get(&kind, NS, &name) {
        let same = ["spec", "status", "endpoints", "ports", "addressType"]
            .iter()
            .all(|k| current.get(*k) == object.get(*k))
            && ["labels", "annotations", "deletionTimestamp"]
                .iter()
                .all(|k| current["metadata"].get(*k) == object["metadata"].get(*k));
        if same {
            return;
        }
    }
    api.apply(object);
}
