//! `timeouts.header_read` runs only while a client connection waits for a request head: not while
//! a request is answered (however slowly its response arrives or streams), not in an upgraded
//! tunnel, not on HTTP/2; and it starts again with every head. Between a response and the next
//! head, `limits.idle_timeout` applies.
//!
//! Each test lets a connection sit for longer than the 300 ms head deadline, and knows it has when
//! an idle control connection, opened after it, has been closed by the proxy ([`deadline_passed`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const HEAD_DEADLINE: &str = "timeouts: { connect: 1s, request: 5s, header_read: 300ms, drain: 5s }";
/// How long the slow upstream takes to answer: comfortably longer than the head deadline.
const LONGER: Duration = Duration::from_millis(800);

/// tidegate in front of `app` with a 300 ms head deadline.
async fn head_deadline_proxy(app: &Backend) -> RunningProxy {
    TestProxy::new()
        .endpoints(&[app])
        .yaml(HEAD_DEADLINE)
        .start()
        .await
}

/// Opens a connection that sends nothing and waits (at most 5 s) until the proxy closes it: from
/// then on, every connection that was quiet since before the call has been quiet for longer than
/// the head deadline.
async fn deadline_passed(proxy: &RunningProxy) {
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    closed_after(&mut idle).await;
}

/// Waits (at most 5 s) for the proxy to close `socket`; how long that took.
async fn closed_after(socket: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest))
        .await
        .expect("the proxy must close a connection that sends no complete head")
        .ok();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_deadline_spares_a_slow_answer_and_restarts_after_each_response() {
    let app = backend("v1").run().await;
    let proxy = head_deadline_proxy(&app).await;
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();

    // The upstream takes longer than the head deadline to answer: the request is being answered.
    let slow = format!(
        "GET /slow?ms={} HTTP/1.1\r\nHost: a\r\n\r\n",
        LONGER.as_millis()
    );
    socket.write_all(slow.as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut socket).await;
    assert!(status.starts_with("http/1.1 200"), "{status}: {body}");

    // The same connection carries the next request.
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_response(&mut socket).await;
    assert!(status.starts_with("http/1.1 200"), "{status}");
    assert!(body.starts_with("This is v1"), "{body}");
    let answered = Instant::now();

    // A head that never completes is cut off once the deadline, started afresh with its first
    // bytes after the last response, passes.
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    closed_after(&mut socket).await;
    assert!(
        answered.elapsed() >= Duration::from_millis(250),
        "cut off {:?} after the last response: the deadline must restart then",
        answered.elapsed()
    );
    assert_eq!(
        app.hits(),
        2,
        "the unfinished head never reaches the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_left_idle_after_a_slow_answer_is_closed() {
    // The answer outlasts the deadline set at accept; the idle wait for the next head that
    // follows must still be timed, although nothing is read from the client in between.
    let app = backend("v1").run().await;
    let proxy = TestProxy::new()
        .endpoints(&[&app])
        .yaml(HEAD_DEADLINE)
        .yaml("limits: { idle_timeout: 300ms }")
        .start()
        .await;
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    let slow = format!(
        "GET /slow?ms={} HTTP/1.1\r\nHost: a\r\n\r\n",
        LONGER.as_millis()
    );
    socket.write_all(slow.as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut socket).await;
    assert!(status.starts_with("http/1.1 200"), "{status}");
    let idle = closed_after(&mut socket).await;
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(2),
        "closed {idle:?} after the response: the 300 ms idle bound runs from its end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_streams_for_longer_than_the_head_deadline_arrives_whole() {
    // An upstream that sends the first half of a chunked body, then the rest only once the head
    // deadline has passed.
    let listener = TcpListener::bind((pod_ip(), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (halfway, mut half_sent) = tokio::sync::mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (halfway, released) = (halfway.clone(), released.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let start = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(start).await.is_err() {
                    return;
                }
                for i in 0..8 {
                    if i == 4 {
                        let _ = halfway.send(()).await;
                        released.notified().await;
                    }
                    let chunk = format!("6\r\ndrip-{i}\r\n");
                    if stream.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    let proxy = TestProxy::new()
        .endpoint_at(addr, "v1")
        .yaml(HEAD_DEADLINE)
        .start()
        .await;

    let (response, ()) = tokio::join!(proxy.get("/"), async {
        half_sent.recv().await.expect("the upstream was asked");
        deadline_passed(&proxy).await;
        release.notify_one();
    });
    let (status, _, body) = response.unwrap();
    assert_eq!(status, 200);
    let expected: String = (0..8).map(|i| format!("drip-{i}")).collect();
    assert_eq!(body, expected, "the body must not be cut off mid-stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_tunnel_may_idle_longer_than_the_head_deadline() {
    let app = backend("v1").pod("chat-0").run().await;
    let proxy = head_deadline_proxy(&app).await;
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    socket
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(socket.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");

    deadline_passed(&proxy).await;
    socket.write_all(b"still there?").await.unwrap();
    let mut reply = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut reply))
        .await
        .expect("an echo within 5 s")
        .unwrap();
    assert_eq!(&reply[..n], b"chat-0:still there?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_may_idle_longer_than_the_head_deadline() {
    let app = backend("v1").run().await;
    let proxy = head_deadline_proxy(&app).await;
    let mut sender = h2_connection(proxy.addr).await;
    let request = || {
        http::Request::get(proxy.url("/"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };

    let first = sender.send_request(request()).await.unwrap();
    assert_eq!(first.status(), 200);
    deadline_passed(&proxy).await;
    let second = sender
        .send_request(request())
        .await
        .expect("the HTTP/2 connection must still be open");
    assert_eq!(second.status(), 200);
}
