//! Bounds on what clients may hold: `limits.max_connections`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const OPEN: &str = r#"tidegate_connections{side="client"}"#;
const REJECTED: &str = "tidegate_connections_rejected_total";

/// Whether the proxy closed `socket` (EOF or reset) within `limit`.
async fn closed(socket: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, socket.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once_and_room_comes_back() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("limits: { max_connections: 3 }")
        .start()
        .await;
    // Three idle connections (no request yet) fill the limit.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    proxy.wait_metric(OPEN, 3.0, Duration::from_secs(5)).await;

    // The fourth is closed at once, not left waiting.
    let mut extra = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(
        closed(&mut extra, Duration::from_secs(2)).await,
        "a connection beyond the limit is closed at once"
    );
    proxy
        .wait_metric(REJECTED, 1.0, Duration::from_secs(5))
        .await;

    // The held ones still work.
    let held = &mut idle[0];
    held.write_all(b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), held.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"),
        "a connection within the limit is served"
    );

    // One closes: room for a new client.
    drop(idle.pop());
    proxy.wait_metric(OPEN, 2.0, Duration::from_secs(5)).await;
    let (status, _, body) = proxy.get("/").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(proxy.metric(REJECTED).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_peer_that_stops_answering_is_pinged_and_closed() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("limits: { http2_keepalive: 200ms }")
        .start()
        .await;
    // An HTTP/2 client that sends its preface and SETTINGS, then vanishes without closing: it
    // reads (so nothing blocks) but never acknowledges a PING.
    let mut gone = TcpStream::connect(proxy.addr).await.unwrap();
    gone.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    proxy.wait_metric(OPEN, 1.0, Duration::from_secs(5)).await;
    let mut sink = [0u8; 1024];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while matches!(gone.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(ended.is_ok(), "the silent HTTP/2 connection must be closed");
    proxy.wait_metric(OPEN, 0.0, Duration::from_secs(5)).await;

    // A live HTTP/2 client answers the pings and keeps its connection across them.
    let mut h2 = h2_connection::<ClientBody>(proxy.addr).await;
    for _ in 0..3 {
        let response = h2.send_request(get_request(&proxy.url("/"))).await.unwrap();
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_followed_by_nothing_ends_in_408_at_the_body_timeout() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("timeouts: { connect: 1s, request: 10s, header_read: 10s, body_read: 300ms, drain: 5s }")
        .start()
        .await;
    for method in ["PUT", "POST"] {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let head = format!(
            "{method} /upload HTTP/1.1\r\nHost: shop\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
        );
        client.write_all(head.as_bytes()).await.unwrap();
        // The client waits for `100 Continue` and then sends nothing at all.
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
        assert!(
            read.is_ok(),
            "{method}: the connection must not be held open"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains("HTTP/1.1 408"), "{method}: {answer}");
    }
    assert_eq!(
        proxy
            .metric(r#"tidegate_client_errors_total{kind="body_timeout"}"#)
            .await,
        Some(2.0),
        "the client's stall, not an endpoint's failure"
    );
}
