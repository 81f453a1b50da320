//! gRPC through tidegate with real grpcio servers and clients: every call kind with its metadata
//! and trailers, canary weights and overrides, abort by `grpc-status`, and tidegate's own errors
//! as gRPC statuses.

use std::time::Duration;

use crate::grpcio::{call, CallSummary, GrpcServer};
use crate::support::*;

/// A proxy speaking h2c to every endpoint (`upstream.protocol`), with `extra` YAML.
async fn h2c_proxy(servers: &[&GrpcServer], extra: &str) -> RunningProxy {
    let mut config = TestProxy::new().yaml("upstream: { protocol: h2c }");
    for server in servers {
        config = config.endpoint_at(server.addr, &server.version);
    }
    if !extra.is_empty() {
        config = config.yaml(extra);
    }
    config.start().await
}

fn assert_all_ok(summary: &CallSummary, what: &str) {
    assert_eq!(
        summary.ok, summary.calls,
        "{what}: every call must succeed: {:?} {:?}",
        summary.codes, summary.details
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_kind_passes_with_its_metadata_and_trailers() {
    let server = GrpcServer::start("v1", None).await;
    let proxy = h2c_proxy(&[&server], "").await;
    let meta = ["--metadata", "x-echo-a=1", "--metadata", "x-echo-trailer=t"];
    let expected = [
        ("unary", vec!["v1:ping"]),
        ("server_stream", vec!["v1:1", "v1:2", "v1:3"]),
        ("client_stream", vec!["v1:3:abc"]),
        ("bidi", vec!["v1:a", "v1:b", "v1:c"]),
    ];
    for (kind, messages) in expected {
        let summary = call(proxy.addr, kind, &meta).await;
        assert_all_ok(&summary, kind);
        assert_eq!(summary.messages, messages, "{kind}");
        assert_eq!(
            summary.initial_metadata["x-echo-a"], "1",
            "{kind}: request metadata"
        );
        assert_eq!(
            summary.initial_metadata["x-version"], "v1",
            "{kind}: response headers"
        );
        assert_eq!(
            summary.trailing_metadata["x-echo-trailer"], "t",
            "{kind}: trailers"
        );
        assert_eq!(
            summary.trailing_metadata["x-trailer-version"], "v1",
            "{kind}"
        );
    }
    // Counted once each, by the status the trailers carried.
    let ok = r#"tidegate_requests_total{code="200",grpc_status="0",role="stable",version="v1"}"#;
    proxy.wait_metric(ok, 4.0, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_is_unavailable_with_tidegate_s_reason() {
    let server = GrpcServer::start("v1", None).await;
    let proxy = TestProxy::new()
        .yaml("upstream: { protocol: h2c }")
        .not_ready_at(server.addr, "v1")
        .start_unready()
        .await;
    let summary = call(proxy.addr, "unary", &["--count", "3"]).await;
    assert_eq!(summary.codes.get("UNAVAILABLE"), Some(&3), "{summary:?}");
    assert!(
        summary.details[0].contains("no ready endpoints"),
        "the client learns why: {:?}",
        summary.details
    );
    let unavailable =
        r#"tidegate_requests_total{code="200",grpc_status="14",role="none",version="none"}"#;
    assert_eq!(proxy.metric(unavailable).await, Some(3.0));

    // A connect failure is UNAVAILABLE too, not a protocol error.
    let gone = GrpcServer::start("v1", None).await;
    let addr = gone.addr;
    drop(gone);
    let proxy = TestProxy::new()
        .yaml("upstream: { protocol: h2c }")
        .endpoint_at(addr, "v1")
        .start()
        .await;
    let summary = call(proxy.addr, "unary", &[]).await;
    assert_eq!(summary.codes.get("UNAVAILABLE"), Some(&1), "{summary:?}");
    assert!(
        summary.details[0].contains("connect"),
        "{:?}",
        summary.details
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_canary_gets_its_weight_and_the_override_and_cookie_work() {
    let stable = GrpcServer::start("v1", None).await;
    let canary = GrpcServer::start("v2", None).await;
    let proxy = h2c_proxy(
        &[&stable, &canary],
        "canary: { version: v2, weight: 10, header: x-tidegate-canary, sticky: true }",
    )
    .await;

    let n = 5000;
    let summary = call(
        proxy.addr,
        "unary",
        &["--count", &n.to_string(), "--concurrency", "8"],
    )
    .await;
    assert_all_ok(&summary, "weighted");
    let share = summary.versions.get("v2").copied().unwrap_or(0) as f64 / n as f64;
    // σ ≈ 0.42 points at n = 5000: 2 points is over 4.7σ.
    assert!(
        (share - 0.10).abs() <= 0.02,
        "the canary must get 10% ± 2 points of gRPC calls, got {:.2}%",
        share * 100.0
    );
    let cookie = summary
        .set_cookie
        .clone()
        .expect("a sticky canary pins gRPC clients too");
    assert!(cookie.starts_with("tidegate-version=v"), "{cookie}");

    for (header, version) in [("always", "v2"), ("never", "v1")] {
        let meta = format!("x-tidegate-canary={header}");
        let summary = call(proxy.addr, "unary", &["--count", "50", "--metadata", &meta]).await;
        assert_all_ok(&summary, header);
        assert_eq!(
            summary.versions.get(version),
            Some(&50),
            "{header}: {summary:?}"
        );
    }
    let summary = call(
        proxy.addr,
        "unary",
        &["--count", "50", "--metadata", "cookie=tidegate-version=v2"],
    )
    .await;
    assert_eq!(
        summary.versions.get("v2"),
        Some(&50),
        "the cookie pins gRPC calls over HTTP/2: {summary:?}"
    );
}

/// A canary whose every call ends with `code`, and a stable that answers, under abort rules.
async fn canary_answering(code: &str) -> (RunningProxy, GrpcServer, GrpcServer) {
    let stable = GrpcServer::start("v1", None).await;
    let canary = GrpcServer::start("v2", Some(code)).await;
    let proxy = h2c_proxy(
        &[&stable, &canary],
        "canary: { version: v2, weight: 30, abort: { max_error_rate: 0.2, min_requests: 20, window: 5s } }",
    )
    .await;
    (proxy, stable, canary)
}

async fn aborted(proxy: &RunningProxy) -> bool {
    let (_, body) = proxy.admin_get("/canary").await.unwrap();
    let canary: serde_json::Value = serde_json::from_str(&body).unwrap();
    !canary["aborted"].is_null()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answering_unavailable_is_aborted_and_one_answering_not_found_is_not() {
    let (proxy, _stable, _canary) = canary_answering("UNAVAILABLE").await;
    let summary = call(
        proxy.addr,
        "unary",
        &["--count", "300", "--concurrency", "4"],
    )
    .await;
    assert!(
        summary.codes.get("UNAVAILABLE").copied().unwrap_or(0) > 20,
        "{summary:?}"
    );
    proxy
        .wait_until("the canary is aborted", Duration::from_secs(10), || async {
            aborted(&proxy).await
        })
        .await;
    let after = call(
        proxy.addr,
        "unary",
        &["--count", "200", "--concurrency", "4"],
    )
    .await;
    assert_all_ok(&after, "after the abort, stable serves everything");

    let (proxy, _stable, _canary) = canary_answering("NOT_FOUND").await;
    let summary = call(
        proxy.addr,
        "unary",
        &["--count", "300", "--concurrency", "4"],
    )
    .await;
    let not_found = summary.codes.get("NOT_FOUND").copied().unwrap_or(0);
    assert!(not_found > 40, "the canary answered NOT_FOUND: {summary:?}");
    let counted =
        r#"tidegate_requests_total{code="200",grpc_status="5",role="canary",version="v2"}"#;
    assert_eq!(proxy.metric(counted).await, Some(not_found as f64));
    // The abort check runs every second: give it two.
    let checked = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < checked {
        assert!(
            !aborted(&proxy).await,
            "NOT_FOUND is an answer, not a failure"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailers_only_status_in_retry_on_sends_the_call_to_another_endpoint() {
    // One pod answers every call trailers-only CANCELLED, as grpcio does to calls that reach it
    // as it shuts down; the other answers. Outlier detection off: CANCELLED is nobody's failure
    // anyway, and the failing pod keeps being picked.
    let good = GrpcServer::start("v1", None).await;
    let cancelling = GrpcServer::start("v1", Some("CANCELLED")).await;
    let retrying =
        "grpc: { retry_on: [cancelled] }\nretries: { budget_percent: 100 }\noutlier: null";
    let proxy = h2c_proxy(&[&good, &cancelling], retrying).await;
    for kind in ["unary", "client_stream"] {
        let summary = call(proxy.addr, kind, &["--count", "60", "--concurrency", "4"]).await;
        assert_all_ok(&summary, kind);
    }
    let retried = proxy
        .metric(r#"tidegate_retries_total{reason="grpc"}"#)
        .await
        .unwrap_or(0.0);
    assert!(
        retried > 20.0,
        "about half the calls met the cancelling pod and went again (client streams with their \
         bodies back): {retried}"
    );

    // Without `retry_on`, the client gets the pod's answer.
    let proxy = h2c_proxy(&[&good, &cancelling], "outlier: null").await;
    let summary = call(
        proxy.addr,
        "client_stream",
        &["--count", "60", "--concurrency", "4"],
    )
    .await;
    let cancelled = summary.codes.get("CANCELLED").copied().unwrap_or(0);
    assert!(cancelled > 10, "{summary:?}");
    let counted =
        r#"tidegate_requests_total{code="200",grpc_status="1",role="stable",version="v1"}"#;
    assert_eq!(proxy.metric(counted).await, Some(cancelled as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_bounds_the_wait_and_the_client_gets_deadline_exceeded() {
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;

    // An endpoint that takes the call and never answers (a grpcio server would enforce the
    // deadline itself and hide tidegate's).
    let silent = tokio::net::TcpListener::bind((pod_ip(), 0)).await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = silent.accept().await {
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let proxy = TestProxy::new()
        .yaml("upstream: { protocol: h2c }")
        .endpoint_at(addr, "v1")
        .start()
        .await;
    // A raw HTTP/2 client, with no deadline of its own: only tidegate can end the wait.
    let mut h2 = h2_connection::<ClientBody>(proxy.addr).await;
    // One length-prefixed gRPC message, "ping".
    let message = b"\x00\x00\x00\x00\x04ping";
    let req = http::Request::post(proxy.url("/tidegate.test.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(full(std::str::from_utf8(message).unwrap()))
        .unwrap();
    let started = std::time::Instant::now();
    let response = h2.send_request(req).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(response.headers()["x-tidegate-error"], "timeout");
    assert!(
        waited < Duration::from_secs(3),
        "the call's 300 ms deadline, not timeouts.request (10 s): {waited:?}"
    );
    assert!(response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
}
