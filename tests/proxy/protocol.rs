//! HTTP semantics at the proxy: hop-by-hop and forwarding headers, HTTP/2 clients, streamed bodies,
//! malformed and slow requests, upgrades, and clients that hang up mid-request.

use http::Request;
use http_body_util::BodyExt;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_and_forwarding_headers_are_added() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;
    let req = Request::get(proxy.url("/path?q=1"))
        .header("host", "shop.example.test")
        .header("connection", "x-hop-secret")
        .header("x-hop-secret", "only for the proxy")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-end-to-end", "kept")
        .body(empty())
        .unwrap();

    let (status, response_headers, _) = send(proxy.client(), req).await.unwrap();

    assert_eq!(status, 200);
    let seen = app.last_headers();
    for hop in [
        "connection",
        "x-hop-secret",
        "te",
        "proxy-authorization",
        "keep-alive",
        "upgrade",
    ] {
        assert!(
            !seen.contains_key(hop),
            "hop-by-hop header {hop} must not reach the upstream: {seen:?}"
        );
    }
    assert_eq!(seen["x-end-to-end"], "kept");
    assert_eq!(seen["host"], "shop.example.test", "Host must be preserved");
    assert_eq!(seen["x-forwarded-host"], "shop.example.test");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1",
        "the client address is appended"
    );
    assert_eq!(seen["via"], "1.1 tidegate");
    // The backend sent `keep-alive: timeout=30`, which is about its hop only.
    assert!(
        !response_headers.contains_key("keep-alive"),
        "{response_headers:?}"
    );
    assert_eq!(response_headers["via"], "1.1 tidegate");
    assert_eq!(response_headers["x-pod"], app.pod.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served() {
    let app = backend("v1").pod("web-h2").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;
    let client = h2_client();

    let mut bodies = Vec::new();
    for _ in 0..20 {
        let response = client.request(get_request(&proxy.url("/"))).await.unwrap();
        assert_eq!(
            response.version(),
            http::Version::HTTP_2,
            "the client must be speaking HTTP/2"
        );
        assert_eq!(response.status(), 200);
        bodies.push(response.into_body().collect().await.unwrap().to_bytes());
    }

    assert!(bodies
        .iter()
        .all(|b| b.starts_with(b"This is v1 running in pod web-h2")));
    let seen = app.last_headers();
    assert_eq!(
        seen["host"],
        proxy.addr.to_string(),
        "the :authority becomes the upstream Host"
    );
    assert_eq!(seen["via"], "2 tidegate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_request_body_streams_through() {
    const LEN: usize = 50 * 1024 * 1024;
    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;
    let rss_before = proxy.peak_rss_kib();

    let req = Request::post(proxy.url("/upload"))
        .body(Generated::new(LEN).map_err(|e| e).boxed())
        .unwrap();
    let (status, _, body) = send(proxy.client(), req).await.unwrap();

    assert_eq!(status, 200, "{body}");
    let expected = format!("bytes={LEN} hash={:x}", Generated::expected_hash(LEN));
    assert_eq!(body, expected, "the body must arrive byte for byte");
    let growth_mib = (proxy.peak_rss_kib().saturating_sub(rss_before)) / 1024;
    assert!(
        growth_mib < 25,
        "a streamed body must not be buffered: peak RSS grew {growth_mib} MiB for a 50 MiB body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_4xx_and_slow_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("timeouts: { connect: 1s, request: 5s, header_read: 300ms, drain: 5s }")
        .start()
        .await;

    let mut garbage = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    garbage.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        garbage.read_to_end(&mut answer),
    )
    .await
    .expect("a malformed request must be answered, not left hanging")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "a malformed request gets 400: {answer:?}"
    );

    // A client that never finishes its request head is disconnected after header_read.
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: slowloris\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut rest),
    )
    .await
    .expect("a slow client must be cut off, not kept forever")
    .ok();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(250),
        "cut off too early"
    );
    assert_eq!(app.hits(), 0, "neither request may reach the upstream");

    // The proxy is unharmed.
    assert_eq!(proxy.get("/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_passes_through_and_stays_on_its_endpoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pods = [backend("v1").run().await, backend("v1").run().await];
    let proxy = TestProxy::new()
        .endpoints(&[&pods[0], &pods[1]])
        .start()
        .await;
    let mut socket = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    socket
        .write_all(b"GET /chat HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            socket.read(&mut byte).await.unwrap(),
            1,
            "the proxy closed during the handshake: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");

    let mut served_by = std::collections::BTreeSet::new();
    for i in 0..20 {
        let message = format!("ping-{i}");
        socket.write_all(message.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buf))
            .await
            .expect("an echo within 5 s")
            .unwrap();
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (pod, echoed) = reply.split_once(':').unwrap();
        assert_eq!(echoed, message);
        served_by.insert(pod.to_owned());
    }
    assert_eq!(
        served_by.len(),
        1,
        "an upgraded connection stays on one endpoint: {served_by:?}"
    );
    assert_eq!(
        proxy.in_flight().await,
        1,
        "the tunnel counts as in flight on its endpoint"
    );

    drop(socket);
    proxy
        .wait_until(
            "the tunnel is released when the client closes",
            std::time::Duration::from_secs(5),
            || async { proxy.in_flight().await == 0 },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_request_cancels_its_upstream_request() {
    use tokio::io::AsyncWriteExt;

    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;
    let mut socket = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    socket
        .write_all(b"GET /slow?ms=10000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    proxy
        .wait_until(
            "the request is in flight upstream",
            std::time::Duration::from_secs(5),
            || async { proxy.in_flight().await == 1 },
        )
        .await;
    drop(socket);
    // The upstream would answer only after 10 s: the endpoint is released well before that only
    // if the proxy noticed the client leave and dropped the exchange.
    proxy
        .wait_until(
            "the abandoned request is cancelled",
            std::time::Duration::from_secs(3),
            || async { proxy.in_flight().await == 0 },
        )
        .await;
}
