//! A gRPC rolling update through tidegate: grpcio pods found through EndpointSlices whose port says
//! `appProtocol: kubernetes.io/h2c` (and no `upstream.protocol` in the config), replaced one by one
//! under constant load (`kubectl rollout`, 3 replicas, maxSurge 1, maxUnavailable 0). Each old pod
//! is sent SIGTERM: grpcio answers with GOAWAY, lets its calls in flight finish and exits.
//!
//! The race every rollout has: the kubelet signals the pod at the moment its endpoint turns
//! terminating, but the EndpointSlice update reaches a proxy only after a watch round trip. Here
//! it reaches tidegate last, after tidegate has already run into the closed pod: new streams on
//! the GOAWAY'd connection are not processed, and new connections are refused. With retries those
//! calls go to another pod; with `retries: { connect_attempts: 1 }` the same rollout fails calls,
//! which shows that the first test can fail.
//!
//! One more race is grpcio's own: a stream that reaches the server after `server.stop()` began but
//! before its GOAWAY reached the peer is answered trailers-only `grpc-status: 1` (CANCELLED)
//! without running the handler (a direct grpcio client sees the same, in about 1 of 5 shutdowns).
//! The stream is within the GOAWAY's last stream id, so nothing in HTTP/2 says it was not
//! processed: `grpc.retry_on: [cancelled]` (as Envoy's `retry_on: cancelled`) sends such answers
//! to another pod, and the protected run uses it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::fake_api::{endpoint_slice_with_app_protocol, FakeApi, SliceEndpoint};
use crate::grpcio::{start_load, CallSummary, GrpcServer};
use crate::support::*;

const NS: &str = "default";
const SERVICE: &str = "echo-grpc";
const REPLICAS: usize = 3;
/// Without a Deployment to follow, every endpoint's version is the Service's name.
const OK_CALLS: &str =
    r#"tidegate_requests_total{code="200",grpc_status="0",role="stable",version="echo-grpc"}"#;
const CONNECT_ERRORS: &str = r#"tidegate_upstream_errors_total{kind="connect"}"#;
const CONNECT_RETRIES: &str = r#"tidegate_retries_total{reason="connect"}"#;
/// Calls the scenario waits to see served: 50 before the rollout, 20 after each new pod and after
/// the last step.
const MIN_CALLS: u64 = 50 + 20 * (REPLICAS as u64 + 1);
/// Every step of the scenario is bounded by this.
const STEP: Duration = Duration::from_secs(10);

struct Pod {
    name: String,
    server: GrpcServer,
    terminating: bool,
}

/// The Service's pods and the one EndpointSlice the EndpointSlice controller writes for them.
struct Service {
    api: FakeApi,
    port: u16,
    pods: Vec<Pod>,
    next: usize,
    dir: tempfile::TempDir,
}

impl Service {
    async fn start() -> Service {
        Service {
            api: FakeApi::start().await,
            port: 0,
            pods: Vec::new(),
            next: 0,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A pod of `version` on an IP of its own and the Service's port (not yet published).
    async fn add_pod(&mut self, version: &str) -> SocketAddr {
        let server = if self.port == 0 {
            let server = GrpcServer::start(version, None).await;
            self.port = server.addr.port();
            server
        } else {
            let addr = SocketAddr::new(pod_ip().into(), self.port);
            GrpcServer::start_at(addr, version, None).await
        };
        let addr = server.addr;
        self.pods.push(Pod {
            name: format!("{SERVICE}-{version}-{}", self.next),
            server,
            terminating: false,
        });
        self.next += 1;
        addr
    }

    fn publish(&self) {
        let endpoints: Vec<SliceEndpoint> = self
            .pods
            .iter()
            .map(|p| {
                let endpoint = SliceEndpoint::new(p.server.addr.ip(), true).pod(&p.name);
                if p.terminating {
                    endpoint.terminating()
                } else {
                    endpoint
                }
            })
            .collect();
        self.api.apply(endpoint_slice_with_app_protocol(
            NS,
            &format!("{SERVICE}-x7k2p"),
            SERVICE,
            self.port,
            Some("kubernetes.io/h2c"),
            &endpoints,
        ));
    }

    /// tidegate following the Service; its protocol comes from the slice's `appProtocol` alone.
    fn proxy(&self, extra_yaml: &str) -> TestProxy {
        let kubeconfig = self.api.write_kubeconfig(self.dir.path());
        let proxy = TestProxy::new().kubernetes(&kubeconfig, SERVICE, "api_timeout: 2s");
        if extra_yaml.is_empty() {
            proxy
        } else {
            proxy.yaml(extra_yaml)
        }
    }
}

/// Each listed endpoint's state in tidegate's `/endpoints`, by address.
async fn states(proxy: &RunningProxy) -> BTreeMap<String, String> {
    proxy.endpoints_json().await["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let address = e["address"].as_str().unwrap().to_owned();
            (address, e["state"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// Waits until tidegate lists `addr` in `state` (`None`: not at all).
async fn wait_state(proxy: &RunningProxy, addr: SocketAddr, state: Option<&str>) {
    let what = format!("tidegate lists {addr} as {state:?}");
    wait_until(&what, STEP, || async {
        states(proxy)
            .await
            .get(&addr.to_string())
            .map(String::as_str)
            == state
    })
    .await
}

async fn metric(proxy: &RunningProxy, series: &str) -> f64 {
    proxy.metric(series).await.unwrap_or(0.0)
}

/// What one rollout under load came to.
struct Rollout {
    summary: CallSummary,
    connect_errors: f64,
    connect_retries: f64,
    logs: Vec<String>,
}

/// Three v1 pods, tidegate with `extra_yaml`, constant unary load (8 calls at a time, each 20 ms
/// in the server), then the rollout to v2, pod by pod.
async fn roll_out_under_load(extra_yaml: &str) -> Rollout {
    let mut service = Service::start().await;
    for _ in 0..REPLICAS {
        service.add_pod("v1").await;
    }
    service.publish();
    let proxy = service.proxy(extra_yaml).start().await;
    wait_until("tidegate lists the three pods", STEP, || async {
        let listed = states(&proxy).await;
        listed.len() == REPLICAS && listed.values().all(|s| s == "ready")
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--concurrency",
        "8",
        "--metadata",
        "x-sleep-ms=20",
        "--max-seconds",
        "40",
    ];
    let load = start_load(proxy.addr, "unary", &args, &dir.path().join("stop"));
    wait_until("calls flow through tidegate", STEP, || async {
        metric(&proxy, OK_CALLS).await >= 50.0
    })
    .await;

    for step in 0..REPLICAS {
        // maxSurge 1: a v2 pod starts and turns ready; tidegate routes to it.
        let new = service.add_pod("v2").await;
        service.publish();
        wait_state(&proxy, new, Some("ready")).await;
        let flowing = metric(&proxy, OK_CALLS).await;
        wait_until("calls flow to the new set", STEP, || async {
            metric(&proxy, OK_CALLS).await >= flowing + 20.0
        })
        .await;

        // maxUnavailable 0: only now is an old pod deleted. The kubelet's SIGTERM lands first:
        // GOAWAY, calls in flight finish, the listener closes.
        let old = service
            .pods
            .iter()
            .position(|p| p.server.version == "v1" && !p.terminating)
            .expect("an old pod is left");
        let old_addr = service.pods[old].server.addr;
        let errors = metric(&proxy, CONNECT_ERRORS).await;
        service.pods[old].server.terminate();
        // The endpoint update is late: tidegate meets the closed pod first (a refused connect).
        wait_until(
            &format!("step {step}: tidegate finds {old_addr} closed"),
            STEP,
            || async { metric(&proxy, CONNECT_ERRORS).await > errors },
        )
        .await;
        let pod = &mut service.pods[old];
        assert!(
            pod.server.wait_exit(STEP).await,
            "the old pod drains and exits 0: {}",
            pod.server.stderr()
        );

        // The endpoint turns terminating, then goes with the pod.
        pod.terminating = true;
        service.publish();
        wait_state(&proxy, old_addr, Some("terminating")).await;
        service.pods.remove(old);
        service.publish();
        wait_state(&proxy, old_addr, None).await;
    }

    // The rollout is done: only v2 is listed, and the load keeps flowing to it.
    let listed = states(&proxy).await;
    let expected: BTreeMap<String, String> = service
        .pods
        .iter()
        .map(|p| (p.server.addr.to_string(), "ready".to_owned()))
        .collect();
    assert_eq!(listed, expected, "three v2 pods, nothing else");
    let flowing = metric(&proxy, OK_CALLS).await;
    wait_until("calls flow after the rollout", STEP, || async {
        metric(&proxy, OK_CALLS).await >= flowing + 20.0
    })
    .await;
    let summary = load.finish().await;
    Rollout {
        summary,
        connect_errors: metric(&proxy, CONNECT_ERRORS).await,
        connect_retries: metric(&proxy, CONNECT_RETRIES).await,
        logs: proxy.logs(),
    }
}

/// The failed calls of a run, by what failed them.
#[derive(Debug, Default)]
struct Failures {
    /// tidegate's own answer: the connect to a closed pod was refused and not retried.
    unavailable: u64,
    /// grpcio's answer to a call that reached an old pod as its shutdown began (see below).
    cancelled: u64,
    other: u64,
}

fn failures(summary: &CallSummary) -> Failures {
    let mut f = Failures::default();
    for (code, n) in &summary.codes {
        match code.as_str() {
            "UNAVAILABLE" => f.unavailable += n,
            "CANCELLED" => f.cancelled += n,
            _ => f.other += n,
        }
    }
    f
}

/// tidegate's log lines at warn or above, for failure messages.
fn warnings(logs: &[String]) -> Vec<&String> {
    logs.iter()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_grpc_rollout_under_load_fails_no_call() {
    let rollout = roll_out_under_load("grpc: { retry_on: [cancelled] }").await;
    let summary = &rollout.summary;
    let failed = failures(summary);

    assert!(
        summary.calls >= MIN_CALLS,
        "constant load through the rollout: {summary:?}"
    );
    assert_eq!(
        (failed.unavailable, failed.cancelled, failed.other),
        (0, 0, 0),
        "no call may fail in a rolling update: {summary:?}; tidegate warned: {:#?}",
        warnings(&rollout.logs)
    );
    assert_eq!(summary.ok, summary.calls, "{summary:?}");
    // Spoken h2c (from `appProtocol` alone): an HTTP/1.1 hop would have failed every call.
    let v1 = summary.versions.get("v1").copied().unwrap_or(0);
    let v2 = summary.versions.get("v2").copied().unwrap_or(0);
    assert!(v1 > 0 && v2 > 0, "both sets served: {summary:?}");
    // The race happened: tidegate met each closed pod and sent those calls elsewhere.
    assert!(
        rollout.connect_errors >= REPLICAS as f64,
        "a refused connect per old pod at least: {}",
        rollout.connect_errors
    );
    assert!(
        rollout.connect_retries >= REPLICAS as f64,
        "refused connects were retried: {}",
        rollout.connect_retries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_grpc_rollout_without_retries_fails_calls() {
    let rollout = roll_out_under_load("retries: { connect_attempts: 1 }").await;
    let summary = &rollout.summary;
    let failed = failures(summary);

    assert!(
        summary.calls >= MIN_CALLS,
        "constant load through the rollout: {summary:?}"
    );
    // Each step waited for a refused connect, and each one is a failed call without retries.
    assert!(
        failed.unavailable >= REPLICAS as u64,
        "without retries, calls sent to a closed pod fail: {summary:?}"
    );
    assert!(
        summary
            .details
            .iter()
            .any(|d| d.starts_with("tidegate: upstream connect failed")),
        "{summary:?}"
    );
    // Anything else would be grpcio's shutdown CANCELLED (see the module's doc), which only
    // `grpc.retry_on` saves.
    assert_eq!(failed.other, 0, "{summary:?}");
    assert_eq!(rollout.connect_retries, 0.0, "no retries were made");
}
