//! A simulated Deployment for `tidegate demo`: the deployment controller's rolling-update rules
//! (maxSurge, maxUnavailable, minReadySeconds, a readiness delay, terminations) over a clock, speaking
//! the same [`Update`] the Kubernetes source speaks. Pure: no I/O and no clock of its own; the demo
//! starts and stops each pod's server as [`Action`]s say, and reports addresses back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::discovery::{Rollout, Update};
use crate::snapshot::{EndpointSpec, EndpointState, Version};

/// How fast a rollout may go, in pods (the controller's resolved `maxSurge` / `maxUnavailable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    pub max_surge: usize,
    pub max_unavailable: usize,
}

/// What the Deployment object says, apart from its pod template.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub replicas: usize,
    pub strategy: Strategy,
    /// A pod counts as available this long after its readiness probe first passes.
    pub min_ready: Duration,
    /// From container start to the first passing readiness probe.
    pub readiness_delay: Duration,
    /// How long a deleted pod stays in the endpoints after its process died: the endpoints
    /// controller and the watch behind it are not instant.
    pub endpoint_lag: Duration,
}

/// Identifies a pod for the demo's "kubelet".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PodId(usize);

impl PodId {
    /// Pods are numbered from 0 in creation order.
    pub fn index(self) -> usize {
        self.0
    }
}

/// What the pods' runtime must do after a [`Deployment::step`].
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start the container; report its address with [`Deployment::started`].
    Start {
        pod: PodId,
        name: Arc<str>,
        version: Version,
    },
    /// The pod was deleted: its process stops now, without waiting for tidegate to hear of it
    /// (no preStop hook), so requests already on their way find it gone.
    Stop { pod: PodId },
}

struct ReplicaSet {
    version: Version,
    revision: u64,
    /// Whether its pods' readiness probes ever pass (`v10` with a broken image never does).
    healthy: bool,
}

struct Pod {
    id: PodId,
    name: Arc<str>,
    set: usize,
    address: Option<SocketAddr>,
    created: Instant,
    ready_at: Option<Instant>,
}

/// A Deployment, its ReplicaSets and its pods.
pub struct Deployment {
    name: String,
    spec: Spec,
    sets: Vec<ReplicaSet>,
    pods: Vec<Pod>,
    /// Deleted pods whose endpoints are still listed, with when they were deleted.
    dying: Vec<(Pod, Instant)>,
    paused: bool,
    weight_annotation: Option<String>,
    revision: u64,
    next_pod: usize,
}

impl Deployment {
    /// `kubectl create deployment`: `replicas` pods of `version`, to be started by the next
    /// [`step`](Self::step). They become ready like any other pod.
    pub fn new(name: &str, spec: Spec, version: Version) -> Self {
        let mut deployment = Self {
            name: name.to_owned(),
            spec,
            sets: Vec::new(),
            pods: Vec::new(),
            dying: Vec::new(),
            paused: false,
            weight_annotation: None,
            revision: 0,
            next_pod: 0,
        };
        deployment.set_image(version, true);
        deployment
    }

    /// `kubectl set image`: a new template. A version seen before reuses its ReplicaSet, as the
    /// controller does when the template hash matches.
    pub fn set_image(&mut self, version: Version, healthy: bool) {
        self.revision += 1;
        match self.sets.iter_mut().find(|s| s.version == version) {
            Some(set) => set.revision = self.revision,
            None => self.sets.push(ReplicaSet {
                version,
                revision: self.revision,
                healthy,
            }),
        }
    }

    /// `kubectl rollout undo`: back to the template of the previous revision.
    pub fn undo(&mut self) {
        let newest = self.newest();
        let previous = self
            .sets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != newest)
            .max_by_key(|(_, s)| s.revision)
            .map(|(_, s)| (s.version.clone(), s.healthy));
        if let Some((version, healthy)) = previous {
            self.set_image(version, healthy);
        }
    }

    /// `kubectl rollout pause` / `resume`.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// `kubectl annotate deployment … tidegate.io/canary-weight=…` (`None` removes it).
    pub fn annotate_weight(&mut self, value: Option<&str>) {
        self.weight_annotation = value.map(str::to_owned);
    }

    /// The kubelet reports a started container's address.
    pub fn started(&mut self, pod: PodId, address: SocketAddr) {
        if let Some(p) = self.pods.iter_mut().find(|p| p.id == pod) {
            p.address = Some(address);
        }
    }

    /// Every pod runs the newest template and is available: `kubectl rollout status` returns.
    pub fn is_complete(&self, now: Instant) -> bool {
        let newest = self.newest();
        self.pods.len() == self.spec.replicas
            && self
                .pods
                .iter()
                .all(|p| p.set == newest && self.available(p, now))
    }

    /// How many pods of the newest template are available.
    pub fn newest_available(&self, now: Instant) -> usize {
        let newest = self.newest();
        self.pods
            .iter()
            .filter(|p| p.set == newest && self.available(p, now))
            .count()
    }

    /// Advances readiness and runs one reconcile of the deployment controller.
    pub fn step(&mut self, now: Instant) -> Vec<Action> {
        for pod in &mut self.pods {
            let healthy = self.sets[pod.set].healthy;
            if pod.ready_at.is_none()
                && healthy
                && pod.address.is_some()
                && now >= pod.created + self.spec.readiness_delay
            {
                pod.ready_at = Some(now);
            }
        }
        let lag = self.spec.endpoint_lag;
        self.dying.retain(|(_, since)| now < *since + lag);
        let mut actions = Vec::new();
        if !self.paused {
            self.scale_down(now, &mut actions);
            self.scale_up(now, &mut actions);
        }
        actions
    }

    /// What tidegate's discovery sees now: the EndpointSlice entries and the rollout state.
    pub fn update(&self, now: Instant) -> Update {
        let endpoints = self
            .pods
            .iter()
            .chain(self.dying.iter().map(|(p, _)| p))
            .filter_map(|p| {
                let address = p.address?;
                let state = match p.ready_at {
                    None => EndpointState::NotReady,
                    Some(_) if !self.available(p, now) => EndpointState::Warming,
                    Some(_) => EndpointState::Ready,
                };
                let version = self.sets[p.set].version.clone();
                Some(EndpointSpec {
                    address,
                    image: Some(Arc::from(format!("kubia:{version}"))),
                    version,
                    state,
                    name: Some(p.name.clone()),
                    protocol: None,
                })
            })
            .collect();
        let newest = self.newest();
        Update::Reset {
            endpoints,
            rollout: Some(Rollout {
                newest: Some(self.sets[newest].version.clone()),
                paused: self.paused,
                complete: self.pods.iter().all(|p| p.set == newest),
                weight_annotation: self.weight_annotation.clone(),
            }),
        }
    }

    /// One line for the demo's phase log, e.g. `v1: 3 ready · v2: 1 ready, 1 starting`.
    pub fn describe(&self, now: Instant) -> String {
        let mut parts = Vec::new();
        for (i, set) in self.sets.iter().enumerate() {
            let pods: Vec<&Pod> = self.pods.iter().filter(|p| p.set == i).collect();
            if pods.is_empty() {
                continue;
            }
            let ready = pods.iter().filter(|p| self.available(p, now)).count();
            let starting = pods.len() - ready;
            let mut part = format!("{}: {ready} ready", set.version);
            if starting > 0 {
                part.push_str(&format!(", {starting} not ready"));
            }
            parts.push(part);
        }
        parts.join(" · ")
    }

    /// The newest ReplicaSet's version: what the rollout is rolling to.
    #[cfg(test)]
    fn newest_version(&self) -> &Version {
        &self.sets[self.newest()].version
    }

    fn newest(&self) -> usize {
        self.sets
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| s.revision)
            .map_or(0, |(i, _)| i)
    }

    fn available(&self, pod: &Pod, now: Instant) -> bool {
        pod.ready_at
            .is_some_and(|ready| now >= ready + self.spec.min_ready)
    }

    /// New pods while under the surge limit and the newest set is short of replicas.
    fn scale_up(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let newest = self.newest();
        let limit = self.spec.replicas + self.spec.strategy.max_surge;
        loop {
            let of_newest = self.pods.iter().filter(|p| p.set == newest).count();
            if of_newest >= self.spec.replicas || self.pods.len() >= limit {
                return;
            }
            let id = PodId(self.next_pod);
            self.next_pod += 1;
            let version = self.sets[newest].version.clone();
            let name: Arc<str> = Arc::from(format!("{}-{version}-{}", self.name, id.0));
            self.pods.push(Pod {
                id,
                name: name.clone(),
                set: newest,
                address: None,
                created: now,
                ready_at: None,
            });
            actions.push(Action::Start {
                pod: id,
                name,
                version,
            });
        }
    }

    /// Deletes old pods: unavailable ones at once (they serve nothing), available ones only while
    /// at least `replicas - maxUnavailable` pods stay available. Oldest first.
    fn scale_down(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let newest = self.newest();
        let min_available = self
            .spec
            .replicas
            .saturating_sub(self.spec.strategy.max_unavailable);
        let excess_newest = self
            .pods
            .iter()
            .filter(|p| p.set == newest)
            .count()
            .saturating_sub(self.spec.replicas);
        let mut doomed: Vec<PodId> = self
            .pods
            .iter()
            .filter(|p| p.set != newest && !self.available(p, now))
            .map(|p| p.id)
            .collect();
        let mut available = self.pods.iter().filter(|p| self.available(p, now)).count();
        for pod in self
            .pods
            .iter()
            .filter(|p| p.set != newest && self.available(p, now))
        {
            if available <= min_available {
                break;
            }
            doomed.push(pod.id);
            available -= 1;
        }
        doomed.extend(
            self.pods
                .iter()
                .rev()
                .filter(|p| p.set == newest)
                .take(excess_newest)
                .map(|p| p.id),
        );
        let (gone, kept) = std::mem::take(&mut self.pods)
            .into_iter()
            .partition(|p| doomed.contains(&p.id));
        self.pods = kept;
        self.dying.extend(gone.into_iter().map(|p: Pod| (p, now)));
        actions.extend(doomed.into_iter().map(|pod| Action::Stop { pod }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        replicas: 4,
        strategy: Strategy {
            max_surge: 1,
            max_unavailable: 0,
        },
        min_ready: Duration::from_secs(2),
        readiness_delay: Duration::from_secs(1),
        endpoint_lag: Duration::from_millis(300),
    };

    fn v(s: &str) -> Version {
        Version::new(s).unwrap()
    }

    /// Steps every 100 ms for `span`, starting pods at once; returns the clock and all actions.
    fn run(d: &mut Deployment, mut now: Instant, span: Duration) -> (Instant, Vec<Action>) {
        let end = now + span;
        let mut all = Vec::new();
        let mut up = false;
        while now < end {
            for action in d.step(now) {
                if let Action::Start { pod, .. } = &action {
                    let ip = u8::try_from(pod.0 + 1).unwrap();
                    d.started(*pod, SocketAddr::from(([127, 0, 1, ip], 80)));
                }
                all.push(action);
            }
            let available = d.pods.iter().filter(|p| d.available(p, now)).count();
            assert!(
                d.pods.len() <= SPEC.replicas + SPEC.strategy.max_surge,
                "surge limit"
            );
            up |= available >= SPEC.replicas;
            assert!(
                !up || available >= SPEC.replicas - SPEC.strategy.max_unavailable,
                "availability must not drop below replicas - maxUnavailable: {}",
                d.describe(now)
            );
            now += Duration::from_millis(100);
        }
        (now, all)
    }

    fn versions(update: &Update) -> Vec<(String, EndpointState)> {
        let Update::Reset { endpoints, .. } = update;
        endpoints
            .iter()
            .map(|e| (e.version.to_string(), e.state))
            .collect()
    }

    #[test]
    fn rolling_update_respects_surge_and_availability_and_completes() {
        let t0 = Instant::now();
        let mut d = Deployment::new("kubia", SPEC, v("v1"));
        let (now, _) = run(&mut d, t0, Duration::from_secs(5));
        assert!(d.is_complete(now), "{}", d.describe(now));

        d.set_image(v("v2"), true);
        let (now, actions) = run(&mut d, now, Duration::from_secs(20));
        assert!(
            d.is_complete(now),
            "v2 rollout completes: {}",
            d.describe(now)
        );
        assert_eq!(d.newest_version(), &v("v2"));
        let stops = actions
            .iter()
            .filter(|a| matches!(a, Action::Stop { .. }))
            .count();
        assert_eq!(stops, 4, "every v1 pod is deleted once");
        assert!(versions(&d.update(now))
            .iter()
            .all(|(v, s)| v == "v2" && *s == EndpointState::Ready));
    }

    #[test]
    fn unready_image_stalls_and_undo_removes_it() {
        let t0 = Instant::now();
        let mut d = Deployment::new("bootcamp", SPEC, v("v2"));
        let (now, _) = run(&mut d, t0, Duration::from_secs(5));
        d.set_image(v("v10"), false);
        let (now, _) = run(&mut d, now, Duration::from_secs(10));
        let seen = versions(&d.update(now));
        assert_eq!(
            seen.iter().filter(|(v, _)| v == "v10").count(),
            1,
            "one surge pod of the broken image: {seen:?}"
        );
        assert!(seen
            .iter()
            .any(|(v, s)| v == "v10" && *s == EndpointState::NotReady));
        assert_eq!(
            seen.iter()
                .filter(|(v, s)| v == "v2" && *s == EndpointState::Ready)
                .count(),
            4,
            "no available pod is removed for one that never becomes ready"
        );

        d.undo();
        assert_eq!(d.newest_version(), &v("v2"));
        let (now, _) = run(&mut d, now, Duration::from_secs(1));
        assert!(d.is_complete(now), "{}", d.describe(now));
    }

    #[test]
    fn pause_stops_progress_and_reports_the_canary() {
        let t0 = Instant::now();
        let mut d = Deployment::new("kubia", SPEC, v("v1"));
        let (now, _) = run(&mut d, t0, Duration::from_secs(5));
        d.set_image(v("v2"), true);
        let mut now = now;
        while d.newest_available(now) == 0 {
            (now, _) = run(&mut d, now, Duration::from_millis(100));
        }
        d.set_paused(true);
        d.annotate_weight(Some("10"));
        let before = d.pods.len();
        let (now, actions) = run(&mut d, now, Duration::from_secs(10));
        assert!(
            actions.is_empty(),
            "a paused rollout creates and deletes nothing"
        );
        assert_eq!(d.pods.len(), before);
        let Update::Reset { rollout, .. } = d.update(now);
        let rollout = rollout.unwrap();
        assert!(rollout.paused && !rollout.complete);
        assert_eq!(rollout.newest, Some(v("v2")));
        assert_eq!(rollout.weight_annotation.as_deref(), Some("10"));
    }

    #[test]
    fn new_pods_warm_up_for_min_ready_before_counting() {
        let t0 = Instant::now();
        let mut d = Deployment::new("kubia", SPEC, v("v1"));
        let (now, _) = run(&mut d, t0, Duration::from_millis(1500));
        let states = versions(&d.update(now));
        assert!(
            states.iter().all(|(_, s)| *s == EndpointState::Warming),
            "ready for less than minReadySeconds: {states:?}"
        );
    }

    #[test]
    fn a_deleted_pod_stays_listed_for_the_endpoint_lag_after_it_dies() {
        let t0 = Instant::now();
        let mut d = Deployment::new("kubia", SPEC, v("v1"));
        let (mut now, _) = run(&mut d, t0, Duration::from_secs(5));
        d.set_image(v("v2"), true);
        let stopped = loop {
            let (next, actions) = run(&mut d, now, Duration::from_millis(100));
            now = next;
            if actions.iter().any(|a| matches!(a, Action::Stop { .. })) {
                break now;
            }
        };
        let listed = |d: &Deployment, at| {
            versions(&d.update(at))
                .iter()
                .filter(|(v, _)| v == "v1")
                .count()
        };
        assert_eq!(listed(&d, stopped), 4, "the dead pod is still an endpoint");
        d.step(stopped + SPEC.endpoint_lag);
        assert_eq!(
            listed(&d, stopped + SPEC.endpoint_lag),
            3,
            "and gone after the lag"
        );
    }
}
