//! The upstream HTTP/1.1 exchange against endpoints that answer with exactly the bytes a test
//! scripts: every way a response body can be delimited, informational responses, keep-alive and
//! its end, and broken answers. Requests without a body take tidegate's lean path, so these pin
//! down its framing; the hyper path is covered wherever a request streams a body.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// An endpoint that reads each request head and answers `reply(n)` for the n-th request
/// overall, then does `after` with the connection.
struct Scripted {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

/// What a scripted endpoint does with a connection once it has answered.
#[derive(Clone, Copy, Debug, PartialEq)]
enum After {
    KeepOpen,
    /// Closes it (without saying so in the answer).
    Close,
    /// Reads the next request on it, then closes it unanswered: a keep-alive timeout that
    /// expires just as a request arrives. That request is not counted.
    DropNext,
    /// Reads the next request on it, then resets it unanswered (as a process that dies with the
    /// request in hand). That request is not counted.
    ResetNext,
}

async fn scripted(reply: fn(usize) -> Vec<u8>, after: After) -> Scripted {
    let listener = TcpListener::bind((pod_ip(), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (requests, connections) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, c) = (requests.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, r.clone(), reply, after));
        }
    });
    Scripted {
        addr,
        requests,
        connections,
    }
}

async fn serve(
    mut stream: TcpStream,
    requests: Arc<AtomicUsize>,
    reply: fn(usize) -> Vec<u8>,
    after: After,
) {
    let mut buf = Vec::new();
    let mut answered = false;
    loop {
        // Bodyless requests: a head is everything up to the blank line.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.drain(..end);
        if answered && after == After::DropNext {
            return;
        }
        if answered && after == After::ResetNext {
            let _ = stream.set_zero_linger();
            return;
        }
        let n = requests.fetch_add(1, Ordering::SeqCst);
        if stream.write_all(&reply(n)).await.is_err() || after == After::Close {
            return;
        }
        answered = true;
    }
}

async fn proxy_for(endpoint: &Scripted) -> RunningProxy {
    TestProxy::new()
        .endpoint_at(endpoint.addr, "v1")
        .start()
        .await
}

/// A GET through the proxy: the whole response, or how it failed.
async fn request_result(
    proxy: &RunningProxy,
) -> Result<(StatusCode, http::HeaderMap, String), String> {
    send(
        proxy.client(),
        Request::get(proxy.url("/")).body(empty()).unwrap(),
    )
    .await
}

async fn request(proxy: &RunningProxy, method: Method) -> (StatusCode, http::HeaderMap, String) {
    let req = Request::builder()
        .method(method)
        .uri(proxy.url("/"))
        .body(empty())
        .unwrap();
    send(proxy.client(), req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_with_extensions_and_trailers_arrive_whole_and_the_connection_is_reused() {
    let endpoint = scripted(
        |_| {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;name=x\r\nThis \r\n11\r\nis v1 in kubia-0\n\r\n0\r\nx-checksum: 1\r\n\r\n"
                .to_vec()
        },
        After::KeepOpen,
    )
    .await;
    let proxy = proxy_for(&endpoint).await;
    for _ in 0..5 {
        let (status, headers, body) = request(&proxy, Method::GET).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "This is v1 in kubia-0\n");
        assert!(!headers.contains_key("x-checksum"), "trailers are dropped");
    }
    assert_eq!(
        endpoint.connections.load(Ordering::SeqCst),
        1,
        "a fully read chunked response leaves its connection reusable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_delimited_by_close_is_read_to_the_end_and_its_connection_not_reused() {
    let endpoint = scripted(
        |n| {
            format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nresponse {n} until close")
                .into_bytes()
        },
        After::Close,
    )
    .await;
    let proxy = proxy_for(&endpoint).await;
    for n in 0..3 {
        let (status, _, body) = request(&proxy, Method::GET).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, format!("response {n} until close"))
        );
    }
    assert_eq!(endpoint.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_have_no_body_and_keep_the_connection() {
    let endpoint = scripted(
        |n| match n % 3 {
            0 => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec(),
            1 => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n".to_vec(),
        },
        After::KeepOpen,
    )
    .await;
    let proxy = proxy_for(&endpoint).await;
    let (status, headers, body) = request(&proxy, Method::HEAD).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    assert_eq!(
        headers["content-length"], "1000",
        "HEAD keeps the length it announces"
    );
    let (status, _, body) = request(&proxy, Method::GET).await;
    assert_eq!((status, body.as_str()), (StatusCode::NO_CONTENT, ""));
    let (status, _, body) = request(&proxy, Method::GET).await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_MODIFIED, ""));
    assert_eq!(endpoint.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_before_the_answer_are_skipped() {
    let endpoint = scripted(
        |_| {
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                .to_vec()
        },
        After::KeepOpen,
    )
    .await;
    let proxy = proxy_for(&endpoint).await;
    let (status, _, body) = request(&proxy, Method::GET).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_streams_through_intact() {
    const SIZE: usize = 8 * 1024 * 1024;
    let endpoint = scripted(
        |_| {
            let mut reply =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n").into_bytes();
            reply.extend((0..SIZE).map(|i| b'a' + (i % 26) as u8));
            reply
        },
        After::KeepOpen,
    )
    .await;
    let proxy = proxy_for(&endpoint).await;
    let (status, _, body) = request(&proxy, Method::GET).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), SIZE);
    assert!(
        body.bytes()
            .enumerate()
            .all(|(i, b)| b == b'a' + (i % 26) as u8),
        "every byte arrives in order"
    );
}

/// Twenty requests through an endpoint that does `after` with each connection once it has answered
/// on it: every one must succeed (`why`), and reach the endpoint exactly once.
async fn twenty_requests_succeed(after: After, why: &str) {
    let endpoint = scripted(
        |n| format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{}", n % 10).into_bytes(),
        after,
    )
    .await;
    let proxy = proxy_for(&endpoint).await;
    for _ in 0..20 {
        let (status, _, _) = request(&proxy, Method::GET).await;
        assert_eq!(status, StatusCode::OK, "{why}");
    }
    assert_eq!(
        endpoint.requests.load(Ordering::SeqCst),
        20,
        "no request was sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_endpoint_closed_is_not_a_client_error() {
    // Keep-alive by the book, but the endpoint closes every connection once it has answered:
    // the pooled connection is dead by the next request.
    twenty_requests_succeed(
        After::Close,
        "a stale pooled connection is retried on a fresh one",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_pooled_connection_the_endpoint_drops_unanswered_is_sent_again() {
    // The pooled connection still looks open when it is taken: the endpoint closes it only
    // once the request has arrived, before any response byte.
    twenty_requests_succeed(
        After::DropNext,
        "an idempotent request the endpoint dropped unanswered is resent on a fresh connection",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_pooled_connection_the_endpoint_closed_unanswered_is_sent_again() {
    // The keep-alive race a draining pod or an endpoint's idle timeout causes: the endpoint shut
    // the connection (a clean close, nothing answered) just as the request went out. It never
    // acted on it, so even a POST goes again, on a fresh connection.
    for after in [After::Close, After::DropNext] {
        let endpoint = scripted(
            |_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            after,
        )
        .await;
        let proxy = proxy_for(&endpoint).await;
        for _ in 0..10 {
            let (status, _, body) = request(&proxy, Method::POST).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "{after:?}");
        }
        assert_eq!(endpoint.requests.load(Ordering::SeqCst), 10, "{after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_the_endpoint_reset_unanswered_is_not_sent_again_but_a_get_is() {
    // A reset with the request in hand may be a crash after acting on it: a POST is answered 502,
    // an idempotent GET goes again.
    let endpoint = scripted(
        |_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        After::ResetNext,
    )
    .await;
    let proxy = proxy_for(&endpoint).await;
    let (status, _, _) = request(&proxy, Method::GET).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the first request opens the connection"
    );
    let (status, headers, _) = request(&proxy, Method::POST).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "the POST met the reset");
    assert_eq!(headers["x-tidegate-error"], "reset");
    let (status, _, _) = request(&proxy, Method::GET).await;
    assert_eq!(status, StatusCode::OK, "the first opens a new connection");
    let (status, _, _) = request(&proxy, Method::GET).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a GET that met the reset went again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_truncated_answer_is_a_502_naming_the_kind() {
    let garbage = scripted(|_| b"HTTP/1.1 2000 Nope\r\n\r\n".to_vec(), After::KeepOpen).await;
    let proxy = TestProxy::new()
        .endpoint_at(garbage.addr, "v1")
        .yaml("retries: { connect_attempts: 1 }")
        .start()
        .await;
    let (status, headers, _) = request(&proxy, Method::GET).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-tidegate-error"], "protocol");

    let truncated = scripted(
        |_| b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nonly".to_vec(),
        After::Close,
    )
    .await;
    let proxy = TestProxy::new()
        .endpoint_at(truncated.addr, "v1")
        .start()
        .await;
    // The head may reach the client before the body breaks off, or not at all; either way the
    // client must see a failure, never a response that looks complete.
    let seen = request_result(&proxy).await;
    assert!(
        seen.is_err(),
        "a body cut short must not look complete to the client: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_answer_reaches_an_http_1_1_client_as_http_1_1_on_a_kept_connection() {
    // An old endpoint: HTTP/1.0, no keep-alive, so it closes after every answer.
    let old = scripted(
        |n| format!("HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nold {n:02}").into_bytes(),
        After::Close,
    )
    .await;
    let proxy = proxy_for(&old).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    for n in 0..3 {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: shop.example\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut client).await;
        assert!(
            head.starts_with("http/1.1 200 "),
            "the proxy speaks its own HTTP version to the client: {head}"
        );
        assert!(
            head.contains("\r\nvia: 1.0 tidegate\r\n"),
            "Via names the protocol the answer was received with: {head}"
        );
        assert_eq!(body, format!("old {n:02}"));
    }
    assert_eq!(old.connections.load(Ordering::SeqCst), 3);
}
