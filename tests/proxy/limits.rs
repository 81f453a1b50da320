//! Bounds on what clients may hold: connections, idle time, and the size of what they send.

use std::time::Duration;

use http::Request;
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

/// Sends one request on `socket` and reads its (small) answer.
async fn exchange(socket: &mut TcpStream, request: &str) -> String {
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_idle_timeout_a_started_head_at_header_read() {
    let app = backend("v1").run().await;
    // The idle bound is shorter than the head's: an idle connection closes at it.
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("timeouts: { connect: 1s, request: 10s, header_read: 10s, drain: 5s }")
        .yaml("limits: { idle_timeout: 300ms }")
        .start()
        .await;
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = exchange(&mut idle, "GET / HTTP/1.1\r\nHost: shop\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let since = std::time::Instant::now();
    assert!(
        closed(&mut idle, Duration::from_secs(3)).await,
        "closed when idle"
    );
    let waited = since.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "not before its time: {waited:?}"
    );

    // The head's bound is shorter than the idle one: a head begun and not finished closes at it,
    // while a well-behaved client on another connection is served meanwhile.
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("timeouts: { connect: 1s, request: 10s, header_read: 300ms, drain: 5s }")
        .yaml("limits: { idle_timeout: 30s }")
        .start()
        .await;
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = exchange(&mut slow, "GET / HTTP/1.1\r\nHost: shop\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Idle for longer than header_read: allowed, the idle bound is 30 s.
    let mut quiet = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(600), slow.read(&mut quiet)).await;
    assert!(
        read.is_err(),
        "an idle keep-alive connection outlives header_read"
    );
    slow.write_all(b"GET / HT").await.unwrap();
    let since = std::time::Instant::now();
    let mut well_behaved = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = exchange(&mut well_behaved, "GET / HTTP/1.1\r\nHost: shop\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed(&mut slow, Duration::from_secs(3)).await,
        "the unfinished head is cut off"
    );
    assert!(since.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_a_goaway_but_not_while_a_stream_is_open() {
    let app = backend("v1").run().await;
    // Keep-alive pings far apart: the idle bound, not the ping, must close the connection, and the
    // client answers pings anyway.
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("limits: { idle_timeout: 400ms, http2_keepalive: 30s }")
        .start()
        .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let mut connection = tokio::spawn(connection);
    // A stream open for longer than the idle bound keeps the connection.
    let response = h2
        .send_request(get_request(&proxy.url("/slow?ms=1000")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = h2.send_request(get_request(&proxy.url("/"))).await.unwrap();
    assert_eq!(response.status(), 200, "still open after a long stream");
    drop(response);
    // A stream the client cancels (RST_STREAM) before its answer ends all the same.
    let cancelled = h2.send_request(get_request(&proxy.url("/slow?ms=3000")));
    assert!(tokio::time::timeout(Duration::from_millis(200), cancelled)
        .await
        .is_err());
    // No stream open: a GOAWAY, and the connection ends cleanly.
    let since = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut connection)
        .await
        .expect("the idle connection must be closed");
    assert!(ended.unwrap().is_ok(), "closed with a GOAWAY, not an error");
    assert!(
        since.elapsed() >= Duration::from_millis(300),
        "{:?}",
        since.elapsed()
    );
    proxy.wait_metric(OPEN, 0.0, Duration::from_secs(5)).await;

    // A connection that sends its preface and SETTINGS, answers pings, and opens no stream.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (_h2, connection) = hyper::client::conn::http2::handshake::<_, _, ClientBody>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(
        ended.is_ok(),
        "a connection that never opens a stream is closed too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_413_414_431_as_the_clients_fault() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml(
            "limits: { max_request_body: 1KiB, max_uri_size: 1KiB, max_request_headers: 20, \
             max_request_head_size: 8KiB }",
        )
        .start()
        .await;
    let long_path = format!("/{}", "a".repeat(1100));
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let big = format!("x-big: {}\r\n", "b".repeat(9000));
    let chunked_2k = format!("7d0\r\n{}\r\n0\r\n\r\n", "c".repeat(2000));
    let cases = [
        (format!("GET {long_path} HTTP/1.1\r\nHost: shop\r\n\r\n"), "414"),
        (format!("GET / HTTP/1.1\r\nHost: shop\r\n{many}\r\n"), "431"),
        (format!("GET / HTTP/1.1\r\nHost: shop\r\n{big}\r\n"), "431"),
        (
            "POST /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 2000\r\n\r\n".to_owned(),
            "413",
        ),
        (
            format!("POST /upload HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_2k}"),
            "413",
        ),
        (
            format!("POST /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 500\r\n\r\n{}", "d".repeat(500)),
            "200",
        ),
    ];
    for (request, status) in &cases {
        let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
        let answer = exchange(&mut socket, request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "want {status} for {:?}: {answer}",
            &request[..request.len().min(60)]
        );
    }
    // HTTP/2: the same limits (hyper counts no HTTP/2 header lines: tidegate does).
    let mut h2 = h2_connection::<ClientBody>(proxy.addr).await;
    let mut request = get_request(&proxy.url("/"));
    for i in 0..30 {
        let name = http::HeaderName::try_from(format!("x-h{i}")).unwrap();
        request
            .headers_mut()
            .insert(name, http::HeaderValue::from_static("v"));
    }
    assert_eq!(h2.send_request(request).await.unwrap().status(), 431);
    let response = h2
        .send_request(get_request(&proxy.url(&long_path)))
        .await
        .unwrap();
    assert_eq!(response.status(), 414);
    let upload = Request::post(proxy.url("/upload"))
        .header("content-length", "2000")
        .body(full(&"e".repeat(2000)))
        .unwrap();
    assert_eq!(h2.send_request(upload).await.unwrap().status(), 413);

    for (kind, count) in [
        ("body_too_large", 3.0),
        ("uri_too_long", 2.0),
        ("headers_too_large", 1.0),
    ] {
        let series = format!(r#"tidegate_client_errors_total{{kind="{kind}"}}"#);
        assert_eq!(proxy.metric(&series).await, Some(count), "{kind}");
    }
    assert_eq!(
        app.hits(),
        1,
        "only the request within the limits reached the endpoint"
    );
}

/// Raises this test process's soft open-files limit to its hard one, for tests that hold
/// thousands of sockets (a fresh machine may start at 1024).
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read and write `limit`, which outlives them.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_over_a_cap_of_a_thousand_cost_bounded_memory() {
    raise_open_files();
    let app = backend("v1").run().await;
    // Started with a soft limit of 1024 open files: tidegate raises it to the hard limit itself.
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("timeouts: { connect: 1s, request: 10s, header_read: 2s, drain: 5s }")
        .yaml("limits: { max_connections: 1000 }")
        .open_files(1024, 4096)
        .start()
        .await;
    let before = proxy.rss_kib();
    // 2,000 connections that send nothing, as a slow-loris client would hold them, opened in one
    // burst: the accept backlog takes them all (with 128, every 129th connect waited 1 s for its
    // SYN to be retransmitted).
    let since = std::time::Instant::now();
    let connects = (0..2000).map(|_| TcpStream::connect(proxy.addr));
    let mut idle: Vec<TcpStream> = futures::future::join_all(connects)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(
        since.elapsed() < Duration::from_secs(2),
        "2,000 connects took {:?}",
        since.elapsed()
    );
    proxy
        .wait_metric(OPEN, 1000.0, Duration::from_secs(10))
        .await;
    proxy
        .wait_metric(REJECTED, 1000.0, Duration::from_secs(10))
        .await;
    let held = proxy.rss_kib();
    eprintln!("RSS {before} KiB before, {held} KiB holding 1,000 idle connections");
    assert!(
        held < before + 32 * 1024,
        "1,000 idle connections must cost little memory: {before} → {held} KiB"
    );

    // By design a new client is refused cleanly (closed at once) while the cap is full...
    let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(closed(&mut refused, Duration::from_secs(1)).await);
    // ... and served as soon as the idle ones run out of time (timeouts.header_read).
    wait_until(
        "a new client is served",
        Duration::from_secs(10),
        || async {
            let got = tokio::time::timeout(Duration::from_secs(1), proxy.get("/")).await;
            matches!(got, Ok(Ok((status, _, _))) if status == 200)
        },
    )
    .await;
    for socket in &mut idle {
        assert!(
            closed(socket, Duration::from_secs(5)).await,
            "every idle one is closed"
        );
    }
    assert!(
        !proxy.logs().iter().any(|l| l.contains("accept failed")),
        "no accept ever ran out of descriptors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_files_limit_below_max_connections_is_warned_about() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("limits: { max_connections: 5000 }")
        .open_files(1024, 2048)
        .start()
        .await;
    let warned = |proxy: &RunningProxy| {
        proxy
            .logs()
            .iter()
            .any(|l| l.contains("open-files limit is below"))
    };
    assert!(warned(&proxy), "2,048 files cannot hold 5,000 connections");
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml("limits: { max_connections: 1000 }")
        .open_files(1024, 4096)
        .start()
        .await;
    assert!(
        !warned(&proxy),
        "raised from 1,024 to 4,096: room for 1,000"
    );
}

/// The default limit of 100 header lines is hyper's own (kept without a per-request vector): a
/// head of 100 lines passes tidegate's parser and is forwarded (the test backend, also hyper, then
/// refuses the 100-odd lines it gets with tidegate's own headers added: that answer carries `via`); one
/// of 101 lines is refused by tidegate's parser, before any service (no `via`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_header_limit_is_100_lines() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;
    for (lines, status, past_the_parser) in
        [(50, "200", true), (100, "431", true), (101, "431", false)]
    {
        // `Host` is one of the lines.
        let extra: String = (1..lines).map(|i| format!("x-h{i}: v\r\n")).collect();
        let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!("GET / HTTP/1.1\r\nHost: shop\r\n{extra}\r\n");
        let answer = exchange(&mut socket, &request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{lines} lines: {answer}"
        );
        assert_eq!(
            answer.contains("via: 1.1 tidegate"),
            past_the_parser,
            "{lines} lines: {answer}"
        );
    }
}
