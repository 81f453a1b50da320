//! Ahead of the EndpointSlice: an endpoint leaves rotation when its pod's deletion is written, not
//! when the endpoints controller gets round to rewriting the slice (a second later here, batched in
//! real clusters), and the watches come back together after an API server outage.
//!
//! Pods exit on SIGTERM with no preStop sleep: 50 ms after their deletion is written (the kubelet
//! noticing it) they refuse new connections, close idle ones, finish what they serve and exit.

use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Strategy, Termination};
use crate::support::*;

const SLICE_LAG: Duration = Duration::from_secs(1);

const ONE_SURGE: Strategy = Strategy {
    max_surge: 1,
    max_unavailable: 0,
};

/// How many failed, and the distinct reasons.
fn summary(report: &LoadReport) -> String {
    let kinds: std::collections::BTreeSet<&String> = report.failures.iter().collect();
    format!(
        "{} of {} failed: {kinds:?}",
        report.failures.len(),
        report.total()
    )
}

/// `pod_deletion: false` switches the pod path off.
fn extra(pod_path: bool) -> &'static str {
    if pod_path {
        ""
    } else {
        "pod_deletion: false\n"
    }
}

/// How long after a pod's deletion is written tidegate still sends it new requests. The pod keeps
/// serving (a long grace period) so that the last request it got can be seen.
async fn time_to_route_away(name: &str, pod_path: bool) -> Duration {
    let mut cluster = Cluster::new(name, 3, ONE_SURGE).await;
    cluster.grace = Duration::from_secs(10);
    cluster.deploy("v1").await;
    cluster.slice_lag = SLICE_LAG;
    let proxy = cluster.proxy(extra(pod_path)).start().await;
    let load = start_load(&proxy.url("/"), 4, 500_000, Duration::from_secs(30));
    load.run_for(200, "before the deletion").await;
    let deleted = cluster.delete_pod(0);
    let pod = &cluster.pods[0].backend;
    // Done when the pod has had no request for 300 ms while the load flows on.
    wait_until(
        "the deleted pod gets no more requests",
        Duration::from_secs(5),
        || async {
            pod.last_hit()
                .is_some_and(|last| last.elapsed() > Duration::from_millis(300))
        },
    )
    .await;
    let report = load.stop().await;
    assert!(report.failures.is_empty(), "{}", summary(&report));
    pod.last_hit().unwrap().saturating_duration_since(deleted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pod_leaves_rotation_at_its_deletion_not_a_slice_later() {
    let via_pods = time_to_route_away("via-pods", true).await;
    let via_slice = time_to_route_away("via-slice", false).await;
    eprintln!(
        "new requests to a deleted pod stop {via_pods:?} after its deletion via the pod watch, \
         {via_slice:?} via the EndpointSlice ({SLICE_LAG:?} behind)"
    );
    assert!(
        via_slice >= SLICE_LAG - Duration::from_millis(50),
        "the slice path waits for the slice: {via_slice:?}"
    );
    assert!(
        via_pods < SLICE_LAG / 2,
        "the pod path must not wait for the slice: {via_pods:?}"
    );
}

/// What a story cost: the load's report, and the requests that met an exited pod and went to
/// another endpoint (`tidegate_retries_total` for connects and resets).
struct Cost {
    report: LoadReport,
    rescued: f64,
}

/// A Deployment of `replicas` whose pods exit on SIGTERM, 50 ms after their deletion is written.
async fn exiting_on_sigterm(
    name: &str,
    replicas: usize,
    max_surge: usize,
    max_unavailable: usize,
) -> Cluster {
    let strategy = Strategy {
        max_surge,
        max_unavailable,
    };
    let mut cluster = Cluster::new(name, replicas, strategy).await;
    cluster.termination = Termination::ExitOnSigterm;
    cluster.sigterm_delay = Duration::from_millis(50);
    cluster
}

/// Waits until no endpoint of `version` (a pod-template-hash) is listed any more.
async fn wait_version_gone(proxy: &RunningProxy, version: &str) {
    let gone = || async {
        let endpoints = proxy.endpoints_json().await;
        endpoints["endpoints"]
            .as_array()
            .is_some_and(|all| all.iter().all(|e| e["version"] != version))
    };
    wait_until(
        "every endpoint of the old version is gone",
        Duration::from_secs(10),
        gone,
    )
    .await;
}

/// A rolling update of 6 replicas (2 surge, 2 unavailable: two old pods deleted at a time) whose
/// endpoints controller lags a second behind, under mixed load. minReadySeconds (1.5 s) keeps the
/// controller from deleting old pods before new ones reach the slice, as in any sane rollout.
async fn lagging_rollout(name: &str, pod_path: bool) -> Cost {
    let mut cluster = exiting_on_sigterm(name, 6, 2, 2).await;
    cluster.min_ready = Duration::from_millis(1500);
    cluster.deploy("v1").await;
    cluster.slice_lag = SLICE_LAG;
    let proxy = cluster.proxy(extra(pod_path)).start().await;
    let load = mixed_load(&proxy).await;
    let started = Instant::now();
    cluster.set_image("v2", true).await;
    wait_version_gone(&proxy, &cluster_hash(&cluster, "v1")).await;
    eprintln!("{name}: rollout took {:?}", started.elapsed());
    let report = load.stop().await;
    let mut rescued = 0.0;
    for reason in ["connect", "reset"] {
        let series = format!(r#"tidegate_retries_total{{reason="{reason}"}}"#);
        rescued += proxy.metric(&series).await.unwrap_or(0.0);
    }
    Cost { report, rescued }
}

/// The version label tidegate gives `version`'s pods (their pod-template-hash).
fn cluster_hash(cluster: &Cluster, version: &str) -> String {
    cluster
        .gone
        .iter()
        .chain(cluster.pods.iter())
        .find(|p| p.version == version)
        .map(|p| p.hash.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_whose_endpoints_controller_lags_a_second_loses_nothing() {
    let Cost { report, rescued } = lagging_rollout("lagging", true).await;
    assert!(report.ok > 500, "the load flowed: {}", report.ok);
    assert!(report.failures.is_empty(), "{}", summary(&report));
    assert_eq!(
        rescued, 0.0,
        "no request is sent to a pod that has exited: nothing needs rescuing"
    );
}

/// The same story with the pod path switched off: requests still go to pods that have exited,
/// until the slice says so a second later. Retries (refused connects go elsewhere, and a request
/// every ready endpoint refused falls to the warming tier) keep the clients whole here, but every
/// one of those requests met a dead pod first; before the warming fallthrough, 861 to 1,320 of
/// about 10,000 failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_pod_path_requests_meet_exited_pods() {
    let Cost { report, rescued } = lagging_rollout("lagging-off", false).await;
    eprintln!(
        "without the pod path: {}; {rescued} requests met an exited pod and went elsewhere",
        summary(&report)
    );
    assert!(
        rescued > 0.0,
        "the slice path alone sends requests to exited pods"
    );
}

/// The API server is away for `outage` under mixed load, and the Deployment starts rolling the
/// instant it answers again: the watches must come back together, at once, before old pods exit.
/// Pods pass their readiness probe a second after they start.
async fn rollout_after_outage(name: &str, outage: Duration) -> LoadReport {
    let mut cluster = exiting_on_sigterm(name, 4, 1, 1).await;
    cluster.readiness_delay = Duration::from_secs(1);
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;
    let load = mixed_load(&proxy).await;
    cluster.api.stop().await;
    // The outage itself is the scenario's clock.
    tokio::time::sleep(outage).await;
    cluster.api.restart().await;
    cluster.set_image("v2", true).await;
    wait_version_gone(&proxy, &cluster_hash(&cluster, "v1")).await;
    load.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_starting_as_the_api_server_returns_from_10s_away_loses_nothing() {
    let report = rollout_after_outage("outage-10s", Duration::from_secs(10)).await;
    assert!(report.ok > 500, "the load flowed: {}", report.ok);
    assert!(report.failures.is_empty(), "{}", summary(&report));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_starting_as_the_api_server_returns_from_60s_away_loses_nothing() {
    let report = rollout_after_outage("outage-60s", Duration::from_secs(60)).await;
    assert!(report.ok > 500, "the load flowed: {}", report.ok);
    assert!(report.failures.is_empty(), "{}", summary(&report));
}

/// Every story of this file ten times in a row, to shake out rare races (about 16 minutes):
/// `cargo test --test proxy soak_the_rollout_stories -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn soak_the_rollout_stories_ten_times() {
    for round in 1..=10 {
        let lagging = lagging_rollout(&format!("soak-lag-{round}"), true)
            .await
            .report;
        let short =
            rollout_after_outage(&format!("soak-10s-{round}"), Duration::from_secs(10)).await;
        let long =
            rollout_after_outage(&format!("soak-60s-{round}"), Duration::from_secs(60)).await;
        crate::kubernetes::dropped_watches_and_410_gone_during_a_rollout().await;
        for (story, report) in [
            ("lagging slices", &lagging),
            ("10 s outage", &short),
            ("60 s outage", &long),
        ] {
            eprintln!("round {round}, {story}: {}", summary(report));
            assert!(
                report.failures.is_empty(),
                "round {round}, {story}: {}",
                summary(report)
            );
        }
        eprintln!("round {round}, dropped watches and 410 Gone: no failure");
    }
}
