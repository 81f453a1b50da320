//! Every failure belongs to someone: a client that sends broken framing or abandons its upload is
//! answered (or dropped) as the client's fault, and never counts against an endpoint, a canary's
//! abort rate or the retry budget.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Waits until the client-error counter of `kind` reads `value`.
async fn wait_client_errors(proxy: &RunningProxy, kind: &str, value: f64) {
    let series = format!(r#"tidegate_client_errors_total{{kind="{kind}"}}"#);
    proxy
        .wait_metric(&series, value, Duration::from_secs(10))
        .await;
}

/// Sums every series of a family in `/metrics` (0 when there is none).
async fn family_total(proxy: &RunningProxy, family: &str) -> f64 {
    let (_, text) = proxy.admin_get("/metrics").await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter(|l| l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_abandoned_uploads_are_the_clients_fault_not_the_canarys() {
    let stable = [backend("v1").run().await, backend("v1").run().await];
    let canary = [backend("v2").run().await, backend("v2").run().await];
    let proxy = TestProxy::new()
        .endpoints(&[&stable[0], &stable[1], &canary[0], &canary[1]])
        .yaml(
            "canary: { version: v2, weight: 10, header: x-tidegate-canary, \
             abort: { max_error_rate: 0.05, min_requests: 20, window: 30s } }",
        )
        .yaml("outlier: { consecutive_failures: 3, base_ejection: 30s, max_ejected_percent: 50 }")
        .start()
        .await;
    // POST streams its body upstream through hyper's client; a small PUT is read first (kept for a
    // retry), on the lean path: both must blame the client.
    let head = |method: &str, framing: &str| {
        format!(
            "{method} /upload HTTP/1.1\r\nhost: kubia\r\nx-tidegate-canary: always\r\n{framing}\r\n\r\n"
        )
    };

    for _ in 0..50 {
        let malformed = format!(
            "{}5\r\nhello\r\nZZ-not-a-size\r\n",
            head("POST", "transfer-encoding: chunked")
        );
        let answer = raw_round_trip(proxy.addr, malformed.as_bytes()).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "malformed chunked framing is the client's: 400 or a closed connection, not {answer:?}"
        );
    }
    for i in 0..50 {
        let method = if i % 2 == 0 { "POST" } else { "PUT" };
        let abandoned = format!("{}only ten", head(method, "content-length: 1000"));
        let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
        socket.write_all(abandoned.as_bytes()).await.unwrap();
    }

    wait_client_errors(&proxy, "bad_framing", 50.0).await;
    wait_client_errors(&proxy, "aborted", 50.0).await;
    assert_eq!(
        family_total(&proxy, "tidegate_client_errors_total").await,
        100.0,
        "each broken upload is counted once, as the client's"
    );
    assert_eq!(
        family_total(&proxy, "tidegate_upstream_errors_total").await,
        0.0,
        "a client's fault is never an upstream error"
    );
    assert_eq!(
        family_total(&proxy, "tidegate_ejections_total").await,
        0.0,
        "no endpoint may be ejected for a client's fault"
    );
    let (_, text) = proxy.admin_get("/metrics").await.unwrap();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("tidegate_requests_total") && l.contains(r#"code="5"#)),
        "no 5xx may be recorded for a client's fault (the canary abort rate counts them)"
    );
    let (_, canary_state) = proxy.admin_get("/canary").await.unwrap();
    let canary_state: serde_json::Value = serde_json::from_str(&canary_state).unwrap();
    assert!(
        canary_state["aborted"].is_null(),
        "the canary must not be aborted by client faults: {canary_state}"
    );
    // The canary still serves.
    let req = http::Request::get(proxy.url("/"))
        .header("x-tidegate-canary", "always")
        .body(empty())
        .unwrap();
    let (status, _, body) = send(proxy.client(), req).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("v2"), "{body}");
}

/// A proxy whose clients must keep a body moving (300 ms between reads) and whose endpoints must
/// answer within 300 ms of having the whole request.
async fn impatient_proxy(app: &Backend) -> RunningProxy {
    TestProxy::new()
        .endpoints(&[app])
        .yaml("timeouts: { connect: 1s, request: 300ms, header_read: 5s, body_read: 300ms, drain: 10s }")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_answered_408_on_either_path_and_never_blamed_on_the_endpoint() {
    let app = backend("v1").run().await;
    let proxy = impatient_proxy(&app).await;
    // PUT with a small length is read before forwarding (lean path); POST streams (hyper's).
    for method in ["PUT", "POST"] {
        let stalled =
            format!("{method} /upload HTTP/1.1\r\nhost: kubia\r\ncontent-length: 10\r\n\r\nx");
        let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
        socket.write_all(stalled.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
        assert!(
            read.is_ok(),
            "{method}: a stalled body must not hold the connection"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{method}: a stalled body is the client's fault: {answer:?}"
        );
    }
    assert_eq!(
        proxy
            .metric(r#"tidegate_client_errors_total{kind="body_timeout"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(
        family_total(&proxy, "tidegate_upstream_errors_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_moving_upload_is_not_an_upstream_timeout() {
    let app = backend("v1").run().await;
    let proxy = impatient_proxy(&app).await;
    // Ten chunks, 100 ms apart: the upload takes about a second, three times the response
    // timeout, and never pauses for as long as the body timeout.
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    let head = "POST /upload HTTP/1.1\r\nhost: kubia\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..10 {
        interval.tick().await;
        socket.write_all(b"5\r\nhello\r\n").await.unwrap();
    }
    socket.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("bytes=50 "),
        "the response timeout runs from the end of the request: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_before_its_answer_is_counted_as_the_clients() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    socket
        .write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nhost: kubia\r\n\r\n")
        .await
        .unwrap();
    wait_until(
        "the request reaches the endpoint",
        Duration::from_secs(5),
        || async { app.in_flight() == 1 },
    )
    .await;
    drop(socket);
    wait_client_errors(&proxy, "aborted", 1.0).await;
    assert_eq!(
        family_total(&proxy, "tidegate_upstream_errors_total").await,
        0.0
    );
}
