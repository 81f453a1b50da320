//! Where requests go: ready endpoints only, spread evenly, the canary at its weight.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_across_ready_endpoints() {
    let pods = [
        backend("v1").pod("bootcamp-0").run().await,
        backend("v1").pod("bootcamp-1").run().await,
        backend("v1").pod("bootcamp-2").run().await,
    ];
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1], &pods[2]])
        .start()
        .await;

    let report = run_load(&proxy.url("/"), 8, 900).await;

    assert!(
        report.failures.is_empty(),
        "no request may fail: {:?}",
        report.failures
    );
    for pod in &pods {
        // Even share is 300; a pod below a third of that is not being balanced to.
        assert!(
            pod.hits() >= 100,
            "{} got {} of 900 requests: {:?}",
            pod.pod,
            pod.hits(),
            report.by_body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_endpoint_gets_no_traffic() {
    let ready = backend("v1").pod("kubia-ready").run().await;
    let probing = backend("v3").pod("kubia-v3-readiness-failing").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&ready])
        .not_ready(&probing)
        .start()
        .await;

    let report = run_load(&proxy.url("/"), 4, 400).await;

    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        probing.hits(),
        0,
        "a not-ready endpoint must receive no requests"
    );
    assert_eq!(ready.hits(), 400);
    let listed = proxy.endpoints_json().await;
    let states: Vec<_> = listed["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].clone())
        .collect();
    assert!(
        states.contains(&"not_ready".into()),
        "/endpoints must list the not-ready endpoint: {listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_share_follows_the_weight_not_the_pod_count() {
    let stable = [
        backend("v1").pod("kubia-v1-0").run().await,
        backend("v1").pod("kubia-v1-1").run().await,
        backend("v1").pod("kubia-v1-2").run().await,
    ];
    let canary = backend("v2").pod("kubia-v2-0").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&stable[0], &stable[1], &stable[2], &canary])
        .canary("v2", 10.0)
        .start()
        .await;

    let n = 4000;
    let report = run_load(&proxy.url("/"), 8, n).await;

    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let share = report.count_containing("This is v2") as f64 / n as f64;
    // A Service would give the 1-of-4 canary 25%. The rule is the weight ± 2 points; at n = 4000 a
    // binomial at p = 0.1 has σ ≈ 0.47 points, so 2 points is over 4σ.
    assert!(
        (share - 0.10).abs() <= 0.02,
        "canary share {share:.4} must be within 2 points of 10%"
    );
    assert_eq!(proxy.metric("tidegate_canary_weight").await, Some(10.0));
    let served = proxy
        .metric(r#"tidegate_requests_total{code="200",grpc_status="",role="canary",version="v2"}"#)
        .await;
    assert_eq!(
        served,
        Some(report.count_containing("This is v2") as f64),
        "metrics must count what clients saw"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_endpoints_gives_503_with_the_reason() {
    let down = backend("v10")
        .pod("bootcamp-v10-imagepullbackoff")
        .run()
        .await;
    let proxy = TestProxy::new().not_ready(&down).start().await;

    let (status, headers, body) = proxy.get("/").await.unwrap();

    assert_eq!(status, 503);
    assert_eq!(body.trim(), "no ready endpoints");
    assert_eq!(headers["x-tidegate-error"], "no_endpoints");
    assert_eq!(down.hits(), 0);
    assert_eq!(
        proxy
            .metric(
                r#"tidegate_requests_total{code="503",grpc_status="",role="none",version="none"}"#
            )
            .await,
        Some(1.0)
    );

    // An empty static list (allowed explicitly): every request is a 503, so the instance must not
    // call itself ready, or a load balancer would send it traffic.
    let empty = TestProxy::new().start_unready().await;
    let (status, _, body) = empty.get("/").await.unwrap();
    assert_eq!((status.as_u16(), body.trim()), (503, "no ready endpoints"));
    let (ready, reason) = empty.admin_get("/readyz").await.unwrap();
    assert_eq!(ready, 503, "{reason}");
    assert!(reason.contains("static endpoint list is empty"), "{reason}");
    // Once the list has an endpoint (a reload), it is ready.
    let up = backend("v1").run().await;
    empty.rewrite_config(&TestProxy::new().endpoints(&[&up]));
    empty
        .wait_until(
            "ready after the reload",
            Duration::from_secs(10),
            || async {
                empty
                    .admin_get("/readyz")
                    .await
                    .is_ok_and(|(status, _)| status == 200)
            },
        )
        .await;
}

/// tidegate in front of `app` with a 300 ms request timeout.
async fn with_300ms_request_timeout(app: &Backend) -> RunningProxy {
    TestProxy::new()
        .endpoints(&[app])
        .yaml("timeouts: { connect: 1s, request: 300ms, header_read: 5s, drain: 5s }")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gives_502_and_slow_upstream_504() {
    // Nothing listens here: every connect is refused.
    let nowhere = std::net::SocketAddr::from((pod_ip(), 9));
    let proxy = TestProxy::new().endpoint_at(nowhere, "v1").start().await;
    let (status, headers, body) = proxy.get("/").await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert_eq!(headers["x-tidegate-error"], "connect");
    assert!(
        body.contains("connect failed"),
        "the body must give the reason: {body}"
    );
    assert_eq!(
        proxy
            .metric(r#"tidegate_upstream_errors_total{kind="connect"}"#)
            .await,
        Some(1.0)
    );

    let slow = backend("v1").run().await;
    let proxy = with_300ms_request_timeout(&slow).await;
    let started = std::time::Instant::now();
    let (status, headers, body) = proxy.get("/slow?ms=3000").await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(headers["x-tidegate-error"], "timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the request timeout must cut the wait short"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_kept_alive_upstream_connection_gets_its_own_timeout() {
    // The request timeout lives on the pooled connection's one timer, armed at an earlier
    // request's deadline: every request here takes two thirds of the timeout, so the timer fires
    // during a later request, which must not be cut short by it.
    let slow = backend("v1").run().await;
    let proxy = with_300ms_request_timeout(&slow).await;
    for n in 0..6 {
        let (status, _, body) = proxy.get("/slow?ms=200").await.unwrap();
        assert_eq!(status, 200, "request {n}: {body}");
    }
    assert_eq!(
        slow.connections(),
        1,
        "the requests must share one pooled connection"
    );
    let (status, _, _) = proxy.get("/slow?ms=1000").await.unwrap();
    assert_eq!(
        status, 504,
        "and a request that overruns its own deadline still times out"
    );
    assert_eq!(proxy.get("/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_header_is_exposed_only_when_configured() {
    let v1 = backend("v1").pod("bootcamp-v1-0").run().await;
    let v2 = backend("v2").pod("bootcamp-v2-0").run().await;
    let config = TestProxy::new().endpoints(&[&v1, &v2]);
    let proxy = config.clone().start().await;

    let (_, headers, _) = proxy.get("/").await.unwrap();
    assert!(
        headers.get("x-tidegate-version").is_none(),
        "the version header is off by default"
    );

    proxy.rewrite_config(&config.yaml("expose_version_header: true"));
    proxy
        .wait_until(
            "x-tidegate-version after reload",
            Duration::from_secs(10),
            || async {
                let response = proxy.get("/").await;
                response.is_ok_and(|(_, h, _)| h.contains_key("x-tidegate-version"))
            },
        )
        .await;
    for _ in 0..20 {
        let (_, headers, body) = proxy.get("/").await.unwrap();
        let version = headers["x-tidegate-version"].to_str().unwrap();
        assert!(
            body.contains(&format!("This is {version} ")),
            "x-tidegate-version must name the version that served the response: {version} vs {body}"
        );
    }
}
