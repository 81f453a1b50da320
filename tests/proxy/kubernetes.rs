//! The tutorials' rolling updates, run through tidegate under load against a fake API server that
//! speaks the real list/watch protocol, with a real backend per pod.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Strategy, Termination};
use crate::support::*;

const ONE_SURGE: Strategy = Strategy {
    max_surge: 1,
    max_unavailable: 0,
};

/// Waits until `/endpoints` lists `n` endpoints.
async fn wait_endpoint_count(proxy: &RunningProxy, n: usize, what: &str, limit: Duration) {
    wait_until(what, limit, || async {
        proxy.endpoints_json().await["endpoints"]
            .as_array()
            .unwrap()
            .len()
            == n
    })
    .await
}

/// Waits until a failed EndpointSlice watch shows in `tidegate_discovery_errors_total`.
async fn wait_discovery_errors(proxy: &RunningProxy, what: &str, limit: Duration) {
    let series = r#"tidegate_discovery_errors_total{resource="endpointslices"}"#;
    wait_until(what, limit, || async {
        proxy.metric(series).await.unwrap_or(0.0) > 0.0
    })
    .await
}

/// Sends `n` requests now and counts which versions answered.
async fn burst(proxy: &RunningProxy, n: usize) -> LoadReport {
    run_load(&proxy.url("/"), 4, n).await
}

/// Waits until `n` requests in a row are all served by `version`.
async fn wait_all_served_by(proxy: &RunningProxy, version: &str, limit: Duration) {
    wait_until(
        &format!("every request is served by {version}"),
        limit,
        || async {
            let r = burst(proxy, 40).await;
            r.failures.is_empty() && r.count_containing(&format!("This is {version} ")) == 40
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootcamp_v1_to_v2_then_v10_image_pull_backoff_then_undo() {
    let mut cluster = Cluster::new("bootcamp", 2, ONE_SURGE).await;
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;
    let load = steady_load(&proxy, 4).await;

    cluster.set_image("v2", true).await;
    wait_all_served_by(&proxy, "v2", Duration::from_secs(10)).await;

    // v10's image cannot be pulled: its pod never becomes ready and the rollout stalls.
    cluster.set_image("v10", false).await;
    load.run_for(400, "during the stalled rollout").await;
    assert_eq!(
        cluster.hits("v10"),
        0,
        "a pod that never became ready must receive no request"
    );

    cluster.undo().await;
    load.run_for(400, "after the undo").await;
    let report = load.stop().await;

    assert!(
        report.failures.is_empty(),
        "a rolling update must drop nothing: {:?}",
        report.failures
    );
    assert_eq!(cluster.hits("v10"), 0, "no request may ever reach v10");
    assert_eq!(cluster.live_versions(), ["v2"]);
    wait_all_served_by(&proxy, "v2", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_1_14_2_to_1_16_1_with_three_replicas() {
    // 25% of 3 replicas: maxSurge rounds up to 1, maxUnavailable rounds down to 0.
    let mut cluster = Cluster::new("nginx", 3, ONE_SURGE).await;
    cluster.deploy("1.14.2").await;
    let proxy = cluster.proxy("").start().await;
    let load = steady_load(&proxy, 4).await;

    cluster.set_image("1.16.1", true).await;
    wait_all_served_by(&proxy, "1.16.1", Duration::from_secs(10)).await;
    let report = load.stop().await;

    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(cluster.hits("1.14.2") > 0 && cluster.hits("1.16.1") > 0);
    let listed = proxy.endpoints_json().await;
    let versions: Vec<_> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].clone())
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "one version left, labelled by pod-template-hash: {listed}"
    );
    assert_eq!(
        listed["versions"][0]["image"], "1.16.1",
        "the image tag is shown beside the hash: {listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubia_v1_to_v2_with_min_ready_seconds_then_failing_v3_gets_nothing() {
    let mut cluster = Cluster::new("kubia", 3, ONE_SURGE).await;
    cluster.min_ready = Duration::from_secs(1);
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;
    let load = steady_load(&proxy, 4).await;

    cluster.set_image("v2", true).await;
    wait_all_served_by(&proxy, "v2", Duration::from_secs(10)).await;

    // v3's readiness probe fails: the rollout stalls with v3 never ready.
    cluster.set_image("v3", false).await;
    load.run_for(400, "during the stalled rollout").await;
    let report = load.stop().await;

    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        cluster.hits("v3"),
        0,
        "a pod failing its readiness probe must receive no request"
    );
    assert!(cluster.hits("v2") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_endpoints_get_traffic_only_after_min_ready() {
    let mut cluster = Cluster::new("kubia-warm", 2, ONE_SURGE).await;
    cluster.min_ready = Duration::from_secs(1);
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;
    let load = steady_load(&proxy, 4).await;

    cluster.scale(3).await;
    // The controller counts the pod available at minReadySeconds; give tidegate's own hold
    // (ending at the same moment, seen a watch event later) time to end under load.
    load.run_for(600, "after the new pod is available").await;
    let report = load.stop().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    let newest = cluster.pods.iter().max_by_key(|p| p.name.clone()).unwrap();
    let ready_at = newest.ready_at().expect("the new pod became ready");
    let first_hit = newest
        .backend
        .first_hit()
        .expect("the new pod gets traffic once available");
    // Watch delay may add to the hold, never subtract from it.
    assert!(
        first_hit >= ready_at + cluster.min_ready - Duration::from_millis(50),
        "a pod ready for less than minReadySeconds must be held back while others serve \
         (first request {:?} after ready)",
        first_hit.saturating_duration_since(ready_at)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_dying_as_its_endpoint_turns_terminating_costs_clients_nothing() {
    let mut cluster = Cluster::new("abrupt", 3, ONE_SURGE).await;
    cluster.termination = Termination::Abrupt;
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;
    let load = steady_load(&proxy, 8).await;

    cluster.set_image("v2", true).await;
    wait_all_served_by(&proxy, "v2", Duration::from_secs(10)).await;
    let report = load.stop().await;

    assert!(
        report.failures.is_empty(),
        "no preStop hook, still nothing dropped: {:?}",
        report.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_and_410_gone_during_a_rollout_lose_nothing() {
    dropped_watches_and_410_gone_during_a_rollout().await;
}

/// Old pods exit on SIGTERM (50 ms after their deletion, no preStop sleep) under mixed load,
/// while tidegate's watches are cut and their history compacted throughout the rollout.
pub async fn dropped_watches_and_410_gone_during_a_rollout() {
    let mut cluster = Cluster::new("flaky", 3, ONE_SURGE).await;
    cluster.termination = Termination::ExitOnSigterm;
    cluster.sigterm_delay = Duration::from_millis(50);
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;
    let load = mixed_load(&proxy).await;

    // tidegate's watches are cut, and cut again as soon as it has watched again, for the whole
    // rollout and at least 12 times; every fourth time the history is compacted first.
    let api = cluster.api.clone();
    let rolled_out = Arc::new(AtomicBool::new(false));
    let done = rolled_out.clone();
    let chaos = tokio::spawn(async move {
        for round in 0..500 {
            if round >= 12 && done.load(Ordering::SeqCst) {
                return round;
            }
            let watches = || {
                api.requests()
                    .iter()
                    .filter(|r| r.contains("watch=true"))
                    .count()
            };
            let before = watches();
            if round % 4 == 3 {
                // History lost (etcd compaction): the next watch gets 410 Gone and must re-list.
                api.set_gone_as_http_status(round % 8 == 7);
                api.compact();
            }
            api.drop_watches();
            wait_until(
                "tidegate watches again",
                Duration::from_secs(10),
                || async { watches() > before },
            )
            .await;
        }
        500
    });
    cluster.set_image("v2", true).await;
    rolled_out.store(true, Ordering::SeqCst);
    let rounds = chaos.await.unwrap();
    assert!(rounds >= 12, "{rounds} watch drops");
    wait_all_served_by(&proxy, "v2", Duration::from_secs(10)).await;
    let report = load.stop().await;

    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let relists = cluster
        .api
        .requests()
        .iter()
        .filter(|r| r.contains("endpointslices") && !r.contains("watch=true"))
        .count();
    assert!(
        relists >= 2,
        "410 Gone must have forced a re-list: {relists}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_for_10s_keeps_serving_and_catches_up_at_once() {
    let mut cluster = Cluster::new("outage", 2, ONE_SURGE).await;
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;
    let load = steady_load(&proxy, 4).await;

    cluster.api.stop().await;
    let down_since = Instant::now();
    // A change the API server will only report once it is back.
    cluster.add_ready_pod().await;
    cluster.publish();
    wait_discovery_errors(
        &proxy,
        "the outage shows in metrics",
        Duration::from_secs(10),
    )
    .await;
    // The scenario: the API server stays down for 10 s in all; tidegate must serve throughout.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down_since.elapsed())).await;
    assert_eq!(
        proxy.endpoints_json().await["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "fail static"
    );

    cluster.api.restart().await;
    let back = Instant::now();
    wait_endpoint_count(
        &proxy,
        3,
        "the change made during the outage is applied",
        Duration::from_secs(5),
    )
    .await;
    let caught_up = back.elapsed();
    eprintln!("the first change after a 10 s outage was applied {caught_up:?} after the API server answered");
    let report = load.stop().await;

    assert!(
        report.failures.is_empty(),
        "an API outage must not drop requests: {:?}",
        report.failures
    );
    assert!(
        caught_up < Duration::from_millis(1500),
        "first change after recovery took {caught_up:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_that_never_answers_is_noticed_and_the_last_snapshot_serves() {
    let mut cluster = Cluster::new("silent", 2, ONE_SURGE).await;
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;

    cluster.api.hang(true);
    cluster.api.drop_watches();
    let load = start_load(&proxy.url("/"), 2, 100_000, Duration::from_secs(30));
    wait_discovery_errors(
        &proxy,
        "the silent API server shows in metrics",
        Duration::from_secs(15),
    )
    .await;
    let synced = proxy
        .metric("tidegate_discovery_last_sync_timestamp_seconds")
        .await
        .unwrap();
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    // The scenario itself is time passing with a silent server.
    wait_until(
        "2 s of silence pass under load",
        Duration::from_secs(10),
        || async { unix_now() - synced > 2.0 },
    )
    .await;
    let still = proxy
        .metric("tidegate_discovery_last_sync_timestamp_seconds")
        .await
        .unwrap();
    let report = load.stop().await;

    assert!(
        report.failures.is_empty() && report.ok > 0,
        "the last snapshot must keep serving: {:?}",
        report.failures
    );
    assert_eq!(
        still, synced,
        "last sync must not advance while the API server is silent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_first_complete_sync() {
    let mut cluster = Cluster::new("late", 1, ONE_SURGE).await;
    cluster.deploy("v1").await;
    cluster.api.hang(true);
    let proxy = cluster.proxy("").start_unready().await;

    let (status, _) = proxy.admin_get("/readyz").await.unwrap();
    assert_eq!(status, 503, "not ready before the first sync");
    let (status, _, body) = proxy.get("/").await.unwrap();
    assert_eq!((status.as_u16(), body.trim()), (503, "no ready endpoints"));

    cluster.api.hang(false);
    cluster.api.drop_watches();
    proxy
        .wait_until(
            "ready after the first sync",
            Duration::from_secs(15),
            || async {
                proxy
                    .admin_get("/readyz")
                    .await
                    .map(|(s, _)| s == 200)
                    .unwrap_or(false)
            },
        )
        .await;
    assert!(proxy.get("/").await.unwrap().2.contains("This is v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_410_gone_at_watch_start_forces_a_fresh_list() {
    // Some API servers answer an expired watch with HTTP 410 rather than an ERROR event; kube's
    // watcher alone would retry the expired resourceVersion forever.
    let mut cluster = Cluster::new("gone", 2, ONE_SURGE).await;
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;

    cluster.api.set_gone_as_http_status(true);
    cluster.api.compact();
    cluster.api.drop_watches();
    cluster.add_ready_pod().await;
    cluster.publish();

    wait_endpoint_count(
        &proxy,
        3,
        "the change behind the 410 is seen",
        Duration::from_secs(10),
    )
    .await;
    let report = burst(&proxy, 100).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

/// Opens an upgraded `echo` connection through the proxy and checks one round trip.
async fn websocket_round_trip(proxy: &RunningProxy, message: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .map_err(|e| e.to_string())?;
    socket
        .write_all(b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if socket.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
            return Err(format!(
                "closed during the handshake: {}",
                String::from_utf8_lossy(&head)
            ));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(String::from_utf8_lossy(&head).into_owned());
    }
    socket
        .write_all(message.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256];
    let n = socket.read(&mut buf).await.map_err(|e| e.to_string())?;
    let reply = String::from_utf8_lossy(&buf[..n]);
    match reply.split_once(':') {
        Some((_, echoed)) if echoed == message => Ok(()),
        _ => Err(format!("bad echo {reply:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_works_throughout_a_rollout() {
    let mut cluster = Cluster::new("ws", 3, ONE_SURGE).await;
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let proxy = std::sync::Arc::new(proxy);
    let prober = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            let mut i = 0;
            while !s.load(std::sync::atomic::Ordering::SeqCst) && i < 2000 {
                results.push(websocket_round_trip(&proxy, &format!("msg-{i}")).await);
                i += 1;
            }
            results
        })
    };
    cluster.set_image("v2", true).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let results = prober.await.unwrap();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        results.len() > 20,
        "enough upgrades during the rollout: {}",
        results.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} upgrades failed: {failed:?}",
        failed.len(),
        results.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_removes_a_pod_kubernetes_still_calls_ready() {
    let mut cluster = Cluster::new("checked", 3, ONE_SURGE).await;
    cluster.deploy("v1").await;
    let proxy = cluster
        .proxy("")
        .yaml("health_check: { path: /healthz, interval: 100ms, timeout: 500ms, healthy: 2, unhealthy: 2 }")
        .yaml("outlier: null")
        .yaml("retries: { connect_attempts: 1, on: [] }")
        .start()
        .await;
    // Its readiness probe still passes as far as Kubernetes knows; its health endpoint says 500.
    cluster.pods[0].backend.set_status(500);
    proxy
        .wait_until(
            "the health check fails it",
            Duration::from_secs(5),
            || async {
                let listed = proxy.endpoints_json().await;
                let endpoints = listed["endpoints"].as_array().unwrap().clone();
                endpoints
                    .iter()
                    .any(|e| e["healthy"] == false && e["state"] == "ready")
            },
        )
        .await;
    let report = burst(&proxy, 300).await;
    assert!(
        report.failures.is_empty(),
        "ready but unhealthy must get nothing: {:?}",
        report.failures
    );
}

/// The (apiGroup, resource, verb) of a request to the API server, as RBAC sees it.
fn rbac_of(request: &crate::fake_api::RecordedRequest) -> (String, String, String) {
    let path = request.uri.split('?').next().unwrap();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/v1/namespaces/NS/RESOURCE[/NAME] or /apis/GROUP/VERSION/namespaces/NS/RESOURCE[/NAME]
    let (group, rest) = match parts[0] {
        "api" => (String::new(), &parts[2..]),
        _ => (parts[1].to_owned(), &parts[3..]),
    };
    let (resource, named) = (rest[2].to_owned(), rest.len() > 3);
    let verb = match (request.method.as_str(), named) {
        ("POST", _) => "create",
        ("GET", true) => "get",
        ("GET", false) if request.is_watch() => "watch",
        _ => "list",
    };
    (group, resource, verb.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_call_tidegate_makes_is_granted_by_the_shipped_role() {
    let mut cluster = Cluster::new("rbac", 2, ONE_SURGE).await;
    cluster.deploy("v1").await;
    let proxy = cluster.proxy("").start().await;
    cluster.set_image("v2", true).await;
    wait_all_served_by(&proxy, "v2", Duration::from_secs(10)).await;
    let grants = crate::rbac::shipped_role_grants();
    let used: std::collections::BTreeSet<_> = cluster
        .api
        .recorded_requests()
        .iter()
        .filter(|r| r.uri.contains("/namespaces/"))
        .map(rbac_of)
        .collect();
    let service_get = (String::new(), "services".to_owned(), "get".to_owned());
    assert!(used.contains(&service_get), "the Service is read: {used:?}");
    let missing: Vec<_> = used.difference(&grants).collect();
    assert!(missing.is_empty(), "not granted by rbac.yaml: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_namespace_in_the_config_discovery_follows_the_clients_own() {
    // As in a pod, whose service account says which namespace it runs in: here the kubeconfig
    // context selects `shop`, and the config names none.
    let api = crate::fake_api::FakeApi::start().await;
    let app = backend("v1").run().await;
    let ready = crate::fake_api::SliceEndpoint::new(app.addr.ip(), true);
    api.apply(crate::fake_api::endpoint_slice(
        "shop",
        "web-shop",
        "web",
        app.addr.port(),
        &[ready],
    ));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig_in(dir.path(), "shop");
    let proxy = TestProxy::new()
        .kubernetes(&kubeconfig, "web", "api_timeout: 2s")
        .start()
        .await;
    let (status, _, body) = proxy.get("/").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let watched: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.contains("endpointslices"))
        .collect();
    assert!(
        !watched.is_empty() && watched.iter().all(|r| r.contains("/namespaces/shop/")),
        "{watched:?}"
    );
}
