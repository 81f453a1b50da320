//! `upstream.max_connections_per_endpoint`: the streams of an HTTP/2 client fan out to at most that
//! many HTTP/1.1 connections per endpoint; a request beyond the cap waits for one to come free, or
//! goes to another endpoint, and the cap never counts against the endpoint's health.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// Sends `n` GETs of `path` at once as streams of one HTTP/2 client connection.
async fn concurrent_streams(proxy: &RunningProxy, n: usize, path: &str) -> LoadReport {
    let sender = h2_connection::<ClientBody>(proxy.addr).await;
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut sender = sender.clone();
        let req = get_request(&proxy.url(path));
        streams.spawn(async move {
            let exchange = async {
                let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
                let body = String::from_utf8_lossy(&body).into_owned();
                if parts.status.is_success() {
                    Ok(body)
                } else {
                    let kind = parts.headers.get("x-tidegate-error").cloned();
                    Err(format!("{} {kind:?} {}", parts.status, body.trim()))
                }
            };
            tokio::time::timeout(Duration::from_secs(30), exchange)
                .await
                .unwrap_or_else(|_| Err("no answer within 30 s".to_owned()))
        });
    }
    let mut report = LoadReport::default();
    while let Some(answer) = streams.join_next().await {
        match answer.unwrap() {
            Ok(body) => {
                report.ok += 1;
                *report.by_body.entry(body).or_default() += 1;
            }
            Err(failure) => report.failures.push(failure),
        }
    }
    report
}

/// Room to wait for a connection far beyond what the tests' queues need.
const PATIENT: &str = "timeouts: { connect: 5s, request: 10s, header_read: 5s, drain: 10s }";

/// 50 streams held 100 ms each by one backend: the connections it accepted, after checking that
/// every stream was answered.
async fn fan_out_to_one_backend(upstream: Option<&str>) -> usize {
    let backend = backend("v1").run().await;
    let mut config = TestProxy::new().endpoints(&[&backend]).yaml(PATIENT);
    if let Some(upstream) = upstream {
        config = config.yaml(upstream);
    }
    let proxy = config.start().await;
    let report = concurrent_streams(&proxy, 50, "/slow?ms=100").await;
    assert_eq!(
        (report.ok, report.failures.as_slice()),
        (50, &[][..]),
        "every stream must be answered, at the cap after a wait"
    );
    backend.connections()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_http2_streams_share_at_most_the_capped_number_of_upstream_connections() {
    let capped =
        fan_out_to_one_backend(Some("upstream: { max_connections_per_endpoint: 4 }")).await;
    let uncapped = fan_out_to_one_backend(None).await;
    eprintln!("50 concurrent streams: {capped} upstream connections capped at 4, {uncapped} at the default 256");
    assert!(
        (1..=4).contains(&capped),
        "the backend must never see more than 4 connections, saw {capped}"
    );
    assert!(
        uncapped > 4,
        "with the default cap the same load opens a connection per concurrent stream ({uncapped})"
    );
}

/// Every connection that ends its exchange is kept idle, up to the endpoint's cap: a second wave of
/// 150 concurrent requests reuses the 150 connections the first one opened. (A fixed idle cap of 64
/// closed 86 of them and the second wave opened them again: at 256 concurrent requests that was a
/// connect and a close for a quarter of all requests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_of_concurrent_requests_reuses_every_connection_the_last_one_opened() {
    let backend = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&backend])
        .yaml(PATIENT)
        .start()
        .await;
    let first = concurrent_streams(&proxy, 150, "/slow?ms=300").await;
    assert_eq!(
        (first.ok, first.failures.len()),
        (150, 0),
        "{:?}",
        first.failures
    );
    let opened = backend.connections();
    assert!(
        opened >= 100,
        "150 slow requests at once need many connections: {opened}"
    );
    let second = concurrent_streams(&proxy, 150, "/slow?ms=300").await;
    assert_eq!(
        (second.ok, second.failures.len()),
        (150, 0),
        "{:?}",
        second.failures
    );
    assert_eq!(
        backend.connections(),
        opened,
        "the second wave finds every connection of the first idle"
    );
}

/// A pod whose every answer takes `delay`: holds each connection it is given. Counts connections.
async fn slow_pod(delay: Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((pod_ip(), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Bodyless requests: a head is everything up to the blank line.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        tokio::time::sleep(delay).await;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nslow\n";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// 40 streams to a pod that answers in 2 s and a fast one, `extra` config: the slow pod's
/// connections, the number of requests it answered, and the proxy (for its metrics).
async fn slow_and_fast(extra: &str) -> (usize, usize, RunningProxy) {
    let (slow, slow_connections) = slow_pod(Duration::from_secs(2)).await;
    let fast = backend("v1").run().await;
    // Any failure held against an endpoint ejects it at once.
    let proxy = TestProxy::new()
        .endpoint_at(slow, "v1")
        .endpoints(&[&fast])
        .yaml("timeouts: { connect: 1s, request: 10s, header_read: 5s, drain: 10s }")
        .yaml("outlier: { consecutive_failures: 1, base_ejection: 30s, max_ejected_percent: 50 }")
        .yaml(extra)
        .start()
        .await;
    // The fast pod holds each request 10 ms, so that the requests queued for it keep the slow pod
    // in the running for the least-loaded pick; it clears them well within the 1 s wait.
    let report = concurrent_streams(&proxy, 40, "/slow?ms=10").await;
    assert_eq!(
        (report.ok, report.failures.as_slice()),
        (40, &[][..]),
        "every request must be answered, by the pod with room"
    );
    let by_slow = report.count_containing("slow");
    (slow_connections.load(Ordering::SeqCst), by_slow, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_a_slow_pods_cap_go_to_the_other_pod_without_holding_it_against_the_slow_one(
) {
    let (connections, by_slow, proxy) =
        slow_and_fast("upstream: { max_connections_per_endpoint: 2 }").await;
    eprintln!("slow pod capped at 2: {connections} connections, {by_slow} of 40 answered there");
    assert!(
        (1..=2).contains(&connections),
        "the slow pod must never see more than 2 connections, saw {connections}"
    );
    let saturated = proxy
        .metric(r#"tidegate_upstream_errors_total{kind="saturated"}"#)
        .await
        .unwrap_or(0.0);
    let moved = proxy
        .metric(r#"tidegate_retries_total{reason="saturated"}"#)
        .await
        .unwrap_or(0.0);
    assert!(
        saturated >= 1.0 && moved == saturated,
        "requests found the slow pod full ({saturated}) and every one went elsewhere ({moved})"
    );
    assert_eq!(
        proxy.metric("tidegate_ejections_total").await,
        Some(0.0),
        "tidegate's own cap is not the pod's failure"
    );

    // Without the cap the same load piles onto the slow pod.
    let (uncapped, _, _) = slow_and_fast("").await;
    eprintln!("slow pod uncapped: {uncapped} connections");
    assert!(
        uncapped > 2,
        "without the cap the slow pod takes more connections ({uncapped})"
    );
}
