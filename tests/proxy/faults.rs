//! Pods that die under load: connect failures are retried elsewhere, clients see nothing.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_mid_load_gives_zero_client_errors() {
    let pods = [
        backend("v1").pod("kubia-0").run().await,
        backend("v1").pod("kubia-1").run().await,
        backend("v1").pod("kubia-2").run().await,
    ];
    // The endpoint stays listed, as it would until the endpoint controller catches up.
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .start()
        .await;
    let load = steady_load(&proxy, 8).await;

    pods[1].kill();
    load.run_for(1500, "after the kill").await;
    let report = load.stop().await;

    assert!(
        report.failures.is_empty(),
        "a dead pod must cost clients nothing: {:?}",
        report.failures
    );
    assert!(
        report.ok >= 1500,
        "the load must have run on after the kill"
    );
    let retried = proxy
        .metric(r#"tidegate_retries_total{reason="connect"}"#)
        .await
        .unwrap_or(0.0)
        + proxy
            .metric(r#"tidegate_retries_total{reason="reset"}"#)
            .await
            .unwrap_or(0.0);
    assert!(
        retried > 0.0,
        "requests that picked the dead pod must have been retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_a_dead_pod_fails_requests() {
    // The same scenario with the protection off proves the test above measures something.
    let alive = backend("v1").run().await;
    let dead = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&alive, &dead])
        .yaml("retries: { connect_attempts: 1 }")
        .start()
        .await;
    dead.kill();
    let report = run_load(&proxy.url("/"), 4, 400).await;
    assert!(
        !report.failures.is_empty(),
        "with one attempt, requests picking the dead pod must fail"
    );
    assert!(
        report.failures.iter().all(|f| f.starts_with("502")),
        "{:?}",
        report.failures
    );
}

async fn three_pods_one_answering(status: u16) -> [Backend; 3] {
    let pods = [
        backend("v1").run().await,
        backend("v1").run().await,
        backend("v1").run().await,
    ];
    pods[2].set_status(status);
    pods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_from_one_pod_is_retried_on_another() {
    let pods = three_pods_one_answering(503).await;
    // A third of the requests need a retry: more than the default 20% budget allows (which the
    // budget test covers), so this test grants 50%.
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .yaml("retries: { connect_attempts: 2, budget_percent: 50 }")
        .start()
        .await;

    let report = run_load(&proxy.url("/"), 4, 600).await;

    assert!(
        report.failures.is_empty(),
        "idempotent GETs must be saved by a retry: {:?}",
        report.failures
    );
    assert!(pods[2].hits() > 0, "the failing pod was tried");
    let retried = proxy
        .metric(r#"tidegate_retries_total{reason="503"}"#)
        .await
        .unwrap();
    assert_eq!(
        retried as usize,
        pods[2].hits(),
        "every 503 was retried, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_503_in_retries_on_the_client_sees_it() {
    let pods = three_pods_one_answering(503).await;
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .yaml("retries: { connect_attempts: 2, on: [reset, 502] }")
        .start()
        .await;
    let report = run_load(&proxy.url("/"), 4, 300).await;
    assert!(
        !report.failures.is_empty(),
        "with the protection off, the 503s reach clients"
    );
    assert!(
        report.failures.iter().all(|f| f.starts_with("503")),
        "{:?}",
        report.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_requests_are_not_retried_after_a_502() {
    let pods = three_pods_one_answering(502).await;
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .start()
        .await;
    let mut statuses = Vec::new();
    for _ in 0..90 {
        let req = http::Request::post(proxy.url("/"))
            .body(full("order=1"))
            .unwrap();
        statuses.push(send(proxy.client(), req).await.unwrap().0.as_u16());
    }
    let bad = statuses.iter().filter(|s| **s == 502).count();
    assert_eq!(
        bad,
        pods[2].hits(),
        "a POST that reached the failing pod must not be sent again"
    );
    assert!(bad > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_a_failing_fleet_from_being_stormed() {
    let pods = three_pods_one_answering(503).await;
    pods[0].set_status(503);
    pods[1].set_status(503);
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .yaml("retries: { connect_attempts: 3, budget_percent: 20 }")
        .start()
        .await;

    let n = 500;
    let report = run_load(&proxy.url("/"), 4, n).await;

    assert_eq!(
        report.failures.len(),
        n,
        "every pod fails: so does every request"
    );
    let retried = proxy
        .metric(r#"tidegate_retries_total{reason="503"}"#)
        .await
        .unwrap();
    // Without a budget each request would be tried 3 times (1,000 retries). The budget allows a
    // floor of 10 plus 20% per 10 s epoch; a run spanning an epoch edge may get the floor twice.
    assert!(
        retried <= (20 + n / 5) as f64,
        "{retried} retries for {n} requests"
    );
    let exhausted = proxy
        .metric("tidegate_retry_budget_exhausted_total")
        .await
        .unwrap();
    assert!(exhausted > 0.0, "refusals are counted");
    let sent: usize = pods.iter().map(Backend::hits).sum();
    assert_eq!(
        sent as f64,
        n as f64 + retried,
        "what reached the pods is requests plus retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pod_is_ejected_after_consecutive_failures() {
    let pods = three_pods_one_answering(500).await;
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .yaml("outlier: { consecutive_failures: 3, base_ejection: 30s, max_ejected_percent: 50 }")
        .start()
        .await;

    let report = run_load(&proxy.url("/"), 4, 600).await;

    // 3 failures eject it; requests already on their way to it when that happens may add a few.
    assert!(
        pods[2].hits() <= 3 + 4,
        "an ejected pod must get no new requests ({} got there)",
        pods[2].hits()
    );
    assert_eq!(
        report.failures.len(),
        pods[2].hits(),
        "only what reached it failed"
    );
    assert_eq!(proxy.metric("tidegate_ejections_total").await, Some(1.0));
    let listed = proxy.endpoints_json().await;
    let ejected: Vec<_> = listed["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ejected"] == true)
        .collect();
    assert_eq!(ejected.len(), 1, "/endpoints shows the ejection: {listed}");
    assert_eq!(
        proxy
            .metric(r#"tidegate_endpoints{role="stable",state="ejected",version="v1"}"#)
            .await,
        Some(1.0),
        "the ejection shows in the endpoint gauge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_outlier_ejection_a_failing_pod_keeps_getting_its_share() {
    let pods = three_pods_one_answering(500).await;
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .yaml("outlier: null")
        .start()
        .await;
    run_load(&proxy.url("/"), 4, 600).await;
    assert!(
        pods[2].hits() > 100,
        "with ejection off the failing pod keeps about a third"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_never_takes_out_more_than_its_share() {
    let pods = three_pods_one_answering(500).await;
    pods[1].set_status(500);
    pods[0].set_status(500);
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .yaml("outlier: { consecutive_failures: 2, base_ejection: 30s, max_ejected_percent: 50 }")
        .start()
        .await;
    let report = run_load(&proxy.url("/"), 4, 300).await;
    assert_eq!(report.failures.len(), 300);
    assert_eq!(
        proxy.metric("tidegate_ejections_total").await,
        Some(1.0),
        "50% of 3 is 1"
    );
    let serving = pods.iter().filter(|p| p.hits() > 50).count();
    assert!(
        serving >= 2,
        "the pods not ejected keep serving (panic threshold)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_ready_pod_ramps_up_under_slow_start() {
    let old = [backend("v1").run().await, backend("v1").run().await];
    let new = backend("v1").run().await;
    let config = |with_new: bool| {
        let p = TestProxy::new().endpoints(&[&old[0], &old[1]]);
        let p = if with_new { p.endpoints(&[&new]) } else { p };
        p.yaml("slow_start: 3s")
    };
    let proxy = config(false).start().await;
    proxy.rewrite_config(&config(true));
    proxy
        .wait_until("the new pod is listed", Duration::from_secs(10), || async {
            proxy.generation().await >= 2
        })
        .await;
    let added = std::time::Instant::now();

    let early = run_load(&proxy.url("/"), 4, 600).await;
    let early_share = new.hits() as f64 / early.total() as f64;
    assert!(
        added.elapsed() < Duration::from_millis(1500),
        "the early sample must stay early"
    );
    // Its full share is a third; in the first second of a 3 s ramp it gets at most ~1/3 of that.
    assert!(
        early_share < 0.2,
        "a cold pod must not get its full share at once: {early_share:.3}"
    );

    // The scenario is the ramp running out.
    wait_until("the ramp is over", Duration::from_secs(10), || async {
        added.elapsed() > Duration::from_millis(3200)
    })
    .await;
    let before = new.hits();
    let late = run_load(&proxy.url("/"), 4, 900).await;
    let late_share = (new.hits() - before) as f64 / late.total() as f64;
    assert!(
        late_share > 0.25,
        "after the ramp it gets its full share: {late_share:.3}"
    );
}

async fn unhealthy_count(proxy: &RunningProxy) -> usize {
    let listed = proxy.endpoints_json().await;
    listed["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["healthy"] == false)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_an_endpoint_out_and_passing_ones_bring_it_back() {
    let pods = three_pods_one_answering(0).await;
    let checked = |checks: bool| {
        let p = TestProxy::new()
            .endpoints(&[&pods[0], &pods[1], &pods[2]])
            .yaml("outlier: null")
            .yaml("retries: { connect_attempts: 1, on: [] }");
        if checks {
            p.yaml("health_check: { path: /healthz, interval: 100ms, timeout: 500ms, healthy: 2, unhealthy: 2 }")
        } else {
            p
        }
    };
    let proxy = checked(true).start().await;
    let unchecked = checked(false).start().await;

    pods[2].set_status(500);
    proxy
        .wait_until(
            "the failing pod is found unhealthy",
            Duration::from_secs(5),
            || async { unhealthy_count(&proxy).await == 1 },
        )
        .await;
    let report = run_load(&proxy.url("/"), 4, 300).await;
    assert!(
        report.failures.is_empty(),
        "an unhealthy pod must get no requests: {:?}",
        report.failures
    );
    let report = run_load(&unchecked.url("/"), 4, 300).await;
    assert!(
        !report.failures.is_empty(),
        "without checks (and nothing else) its 500s reach clients"
    );

    pods[2].set_status(0);
    proxy
        .wait_until("the pod passes again", Duration::from_secs(5), || async {
            unhealthy_count(&proxy).await == 0
        })
        .await;
    let report = run_load(&proxy.url("/"), 4, 600).await;
    assert!(
        report.count_containing(&pods[2].pod) > 0,
        "a healthy pod is back in rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_taken_out_of_rotation_closes_its_idle_connections() {
    let pods = [backend("v1").run().await, backend("v1").run().await];
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1]])
        .start()
        .await;
    run_load(&proxy.url("/"), 4, 200).await;
    let idle = |listed: &serde_json::Value, addr: String| {
        listed["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == addr.as_str())
            .map(|e| e["idle_connections"].as_u64().unwrap())
            .unwrap()
    };
    assert!(
        idle(&proxy.endpoints_json().await, pods[1].addr.to_string()) > 0,
        "keep-alive pooled"
    );

    proxy.rewrite_config(&TestProxy::new().endpoints(&[&pods[0]]).not_ready(&pods[1]));
    proxy
        .wait_until("the edit is published", Duration::from_secs(10), || async {
            proxy.generation().await >= 2
        })
        .await;
    let listed = proxy.endpoints_json().await;
    assert_eq!(
        idle(&listed, pods[1].addr.to_string()),
        0,
        "draining: no idle connections kept"
    );
    assert!(
        idle(&listed, pods[0].addr.to_string()) > 0,
        "the others keep theirs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_idempotent_body_is_replayed_on_another_endpoint() {
    let pods = three_pods_one_answering(503).await;
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .yaml("retries: { connect_attempts: 2, budget_percent: 100, max_replay_body: 8KiB }")
        .start()
        .await;
    let body: String = (0..4096)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut expected = Fnv::new();
    expected.update(body.as_bytes());
    let expected = format!("bytes=4096 hash={:x}", expected.0);

    for _ in 0..60 {
        let req = http::Request::put(proxy.url("/upload"))
            .header("content-length", "4096")
            .body(full(&body))
            .unwrap();
        let (status, _, answer) = send(proxy.client(), req).await.unwrap();
        assert_eq!(
            status, 200,
            "a PUT that met the failing pod is sent again, body and all: {answer}"
        );
        assert_eq!(answer, expected, "the replayed body arrives byte for byte");
    }
    assert!(pods[2].hits() > 0, "the failing pod was tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_pod_is_ejected_and_comes_back() {
    let pods = three_pods_one_answering(500).await;
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .yaml("outlier: { consecutive_failures: 3, base_ejection: 300ms, max_ejected_percent: 50 }")
        .start()
        .await;
    let load = steady_load(&proxy, 4).await;
    wait_until(
        "the flapping pod is ejected",
        Duration::from_secs(5),
        || async { proxy.metric("tidegate_ejections_total").await >= Some(1.0) },
    )
    .await;

    pods[2].set_status(0);
    let recovered_at = pods[2].hits();
    wait_until(
        "it gets traffic again once its ejection ends",
        Duration::from_secs(10),
        || async { pods[2].hits() > recovered_at + 50 },
    )
    .await;
    let report = load.stop().await;
    assert!(
        report.failures.iter().all(|f| f.starts_with("500")),
        "{:?}",
        report.failures
    );
    let listed = proxy.endpoints_json().await;
    assert!(
        listed["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["ejected"] == false),
        "{listed}"
    );
}
