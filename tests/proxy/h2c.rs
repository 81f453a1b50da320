//! Plain HTTP to endpoints that speak HTTP/2 with prior knowledge: HTTP/1.1 and HTTP/2 clients,
//! bodies streamed both ways, trailers both ways (also between an HTTP/2 client and an HTTP/1.1
//! endpoint), and streams the endpoint refuses unprocessed going to another endpoint with their
//! bodies whole.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::support::*;

/// An h2c app: answers `POST` with the body it read (streamed back as it arrives), the request's
/// trailer `x-sent` echoed as `x-got`, and a trailer `x-length` with the body's length. Counts the
/// requests it served and its connections.
async fn h2c_echo(version: &'static str) -> H2cApp {
    h2c_app(version, None).await
}

/// [`h2c_echo`], which on `stop` shuts down as a terminating pod does: stops accepting, sends
/// `GOAWAY` on every connection and finishes the streams in flight.
async fn h2c_app(version: &'static str, stop: Option<watch::Receiver<bool>>) -> H2cApp {
    let listener = TcpListener::bind(SocketAddr::new(pod_ip().into(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = H2cApp {
        addr,
        served: Arc::default(),
        connections: Arc::default(),
        open: Arc::default(),
    };
    let (served, accepted, live) = (
        app.served.clone(),
        app.connections.clone(),
        app.open.clone(),
    );
    // Without a stop signal, one that never fires (its sender lives as long as the app).
    let (never_fires, never) = watch::channel(false);
    let stopped = stop.unwrap_or(never);
    tokio::spawn(async move {
        let _keep = never_fires;
        let mut stop_accepting = stopped.clone();
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => return,
                },
                _ = stop_accepting.changed() => return,
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            let served = served.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                served.fetch_add(1, Ordering::Relaxed);
                async move { Ok::<_, Infallible>(echo(req, version)) }
            });
            let (live, mut stopped) = (live.clone(), stopped.clone());
            live.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stopped.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                live.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    app
}

struct H2cApp {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    /// Accepted so far.
    connections: Arc<AtomicUsize>,
    /// Not yet closed.
    open: Arc<AtomicUsize>,
}

fn echo(req: Request<Incoming>, version: &'static str) -> Response<ClientBody> {
    let te = req.headers().get("te").cloned();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let mut body = req.into_body();
    tokio::spawn(async move {
        let (mut length, mut got) = (0usize, None);
        while let Some(Ok(frame)) = body.frame().await {
            match frame.into_data() {
                Ok(data) => {
                    length += data.len();
                    if tx.send(Ok(Frame::data(data))).await.is_err() {
                        return;
                    }
                }
                Err(frame) => {
                    got = frame
                        .into_trailers()
                        .ok()
                        .and_then(|t| t.get("x-sent").cloned())
                }
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-length", HeaderValue::from(length));
        if let Some(got) = got {
            trailers.insert("x-got", got);
        }
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    let headers = response.headers_mut();
    headers.insert("x-version", HeaderValue::from_static(version));
    if let Some(te) = te {
        headers.insert("x-te", te);
    }
    // Announced, as RFC 9110 §6.6.2 asks: an HTTP/1.1 hop may send only announced trailers.
    headers.insert("trailer", HeaderValue::from_static("x-length, x-got"));
    response
}

const CHUNK: usize = 1024;

/// A streamed request body: `chunks` pieces of 1 KiB, sent one by one, then trailers
/// `x-sent: <n>`. (h2 servers count DATA frames much smaller than that as framing overhead and
/// end a connection that sends too many.)
fn streamed(chunks: usize) -> (ClientBody, usize) {
    let pieces: Vec<Result<Frame<Bytes>, BoxError>> = (0..chunks)
        .map(|i| {
            Ok(Frame::data(Bytes::from(
                format!("chunk-{i:04};").repeat(CHUNK / 11),
            )))
        })
        .chain(std::iter::once(Ok(Frame::trailers({
            let mut t = HeaderMap::new();
            t.insert("x-sent", HeaderValue::from(chunks));
            t
        }))))
        .collect();
    (
        StreamBody::new(futures::stream::iter(pieces)).boxed(),
        chunks * (CHUNK / 11) * 11,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_clients_stream_bodies_and_trailers_through_an_h2c_endpoint() {
    let H2cApp { addr, served, .. } = h2c_echo("v1").await;
    let proxy = TestProxy::new().h2c_endpoint_at(addr, "v1").start().await;

    // HTTP/2 client: a streamed upload with trailers, streamed back with the endpoint's trailers.
    let mut h2 = h2_connection::<ClientBody>(proxy.addr).await;
    let (body, length) = streamed(200);
    let req = Request::post(proxy.url("/upload"))
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let response = h2.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-version"], "v1");
    assert_eq!(
        response.headers()["x-te"],
        "trailers",
        "`te: trailers` reaches an HTTP/2 endpoint"
    );
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("the endpoint's trailers arrive");
    assert_eq!(
        collected.to_bytes().len(),
        length,
        "the body came back whole"
    );
    assert_eq!(trailers["x-length"], length.to_string().as_str());
    assert_eq!(
        trailers["x-got"], "200",
        "the client's trailers reached the endpoint"
    );

    // HTTP/1.1 client, chunked upload with a trailer, `TE: trailers`: chunked answer with trailers.
    let raw = raw_round_trip(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: shop\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sent: 2\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("5\r\nhello\r\n6\r\n world\r\n"), "{raw}");
    let lower = raw.to_ascii_lowercase();
    assert!(
        lower.contains("x-length: 11"),
        "trailers for an HTTP/1.1 client: {raw}"
    );
    assert!(
        lower.contains("x-got: 2"),
        "request trailers went upstream: {raw}"
    );
    assert_eq!(served.load(Ordering::Relaxed), 2);
}

/// An h2c endpoint that refuses every stream with `REFUSED_STREAM` before reading its body: the
/// signal that the request was not processed and may go elsewhere (RFC 9113 §8.7).
async fn refusing() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(SocketAddr::new(pod_ip().into(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                // Remembers every stream it reset, so that their DATA frames are not a protocol
                // error (h2 forgets all but 10 by default), and does not take the DATA of streams it
                // refused for a rapid-reset attack (CVE-2023-44487 protection).
                let handshake = h2::server::Builder::new()
                    .max_concurrent_reset_streams(1000)
                    .max_local_error_reset_streams(None)
                    .handshake::<_, Bytes>(stream);
                let Ok(mut conn) = handshake.await else {
                    return;
                };
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    counter.fetch_add(1, Ordering::Relaxed);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    (addr, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_go_to_another_endpoint_with_their_bodies_whole() {
    let H2cApp {
        addr: good, served, ..
    } = h2c_echo("v1").await;
    let (bad, refused) = refusing().await;
    // Outlier detection off: the refusing endpoint keeps being picked, every time a fresh test.
    let proxy = TestProxy::new()
        .h2c_endpoint_at(good, "v1")
        .h2c_endpoint_at(bad, "v1")
        .yaml("outlier: null")
        .start()
        .await;
    let mut h2 = h2_connection::<ClientBody>(proxy.addr).await;
    let n = 60;
    let calls: Vec<_> = (0..n).map(|_| upload(&mut h2, &proxy, 20)).collect();
    for result in futures::future::join_all(calls).await {
        result.expect("a refused stream is resent whole, not answered with an error");
    }
    assert!(
        refused.load(Ordering::Relaxed) > 5,
        "the refusing endpoint was picked and refused streams"
    );
    assert_eq!(served.load(Ordering::Relaxed), n);
    let tidegate_errors = proxy
        .metric(r#"tidegate_requests_total{code="502",grpc_status="",role="stable",version="v1"}"#)
        .await;
    assert_eq!(tidegate_errors, None);
}

/// An HTTP/1.1 app that reads one chunked request (its trailers included), keeps its bytes, and
/// answers with a chunked body and a trailer.
async fn http1_with_trailers() -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind(SocketAddr::new(pod_ip().into(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, request) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut chunk = [0u8; 4096];
            // The chunked body ends with the last chunk and the trailer section's empty line.
            while !(buf.ends_with(b"\r\n\r\n") && buf.windows(5).any(|w| w == b"\r\n0\r\n")) {
                let n = socket.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        });
        let _ = read.await;
        let _ = seen.send(String::from_utf8_lossy(&buf).into_owned());
        let answer =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
                       5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n";
        let _ = socket.write_all(answer).await;
        let _ = socket.shutdown().await;
    });
    (addr, request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_cross_between_an_http2_client_and_an_http1_endpoint_both_ways() {
    let (addr, request) = http1_with_trailers().await;
    let proxy = TestProxy::new().endpoint_at(addr, "v1").start().await;
    let mut h2 = h2_connection::<ClientBody>(proxy.addr).await;
    let (body, _) = streamed(3);
    // An HTTP/1.1 hop sends only the trailers its head announces (RFC 9110 §6.6.2).
    let req = Request::post(proxy.url("/upload"))
        .header("trailer", "x-sent")
        .body(body)
        .unwrap();
    let response = h2.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), "hello");
    assert_eq!(
        trailers.as_ref().map(|t| t["x-checksum"].clone()),
        Some(HeaderValue::from_static("abc")),
        "the endpoint's trailers reach the HTTP/2 client"
    );
    let seen = request.await.unwrap().to_ascii_lowercase();
    assert!(seen.contains("transfer-encoding: chunked"), "{seen}");
    assert!(
        seen.contains("\r\n0\r\nx-sent: 3\r\n\r\n"),
        "the client's trailers reach the endpoint: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_share_one_connection_until_it_carries_a_hundred() {
    let app = h2c_echo("v1").await;
    // One client connection carries all 150 streams (beyond the default 128 a client may open).
    let proxy = TestProxy::new()
        .h2c_endpoint_at(app.addr, "v1")
        .yaml("limits: { http2_max_concurrent_streams: 200 }")
        .start()
        .await;
    let mut h2 = h2_connection::<ClientBody>(proxy.addr).await;
    // Requests whose bodies stay open until the end: every stream is in flight at once.
    let mut open = Vec::new();
    let mut calls = Vec::new();
    for n in [60, 90] {
        for _ in 0..n {
            let (req, tx) = held_post(&proxy);
            calls.push(h2.send_request(req));
            open.push(tx);
        }
        let total = open.len();
        wait_until(
            "every stream reached the endpoint",
            Duration::from_secs(10),
            || {
                let served = app.served.clone();
                async move { served.load(Ordering::Relaxed) == total }
            },
        )
        .await;
        let expected = if total <= 100 { 1 } else { 2 };
        assert_eq!(
            app.connections.load(Ordering::Relaxed),
            expected,
            "{total} streams in flight: {expected} connection(s)"
        );
    }
    drop(open);
    for call in futures::future::join_all(calls).await {
        assert_eq!(call.unwrap().status(), 200);
    }
    let endpoints = proxy.endpoints_json().await;
    assert_eq!(endpoints["endpoints"][0]["protocol"], "h2c");
    assert_eq!(endpoints["endpoints"][0]["http2_connections"], 2);

    // Out of rotation: its connections take no new streams and close.
    assert_eq!(app.open.load(Ordering::Relaxed), 2);
    let out = TestProxy::new()
        .yaml("upstream: { protocol: h2c }")
        .not_ready_at(app.addr, "v1");
    proxy.rewrite_config(&out);
    proxy
        .wait_until(
            "its HTTP/2 connections close",
            Duration::from_secs(10),
            || async { app.open.load(Ordering::Relaxed) == 0 },
        )
        .await;
    assert_eq!(
        proxy.endpoints_json().await["endpoints"][0]["http2_connections"],
        0
    );
}

/// Sends a POST of `chunks` streamed pieces on `h2`; resolves to an error unless the endpoint's
/// 200 echoed the whole body.
fn upload(
    h2: &mut SendRequest<ClientBody>,
    proxy: &RunningProxy,
    chunks: usize,
) -> impl std::future::Future<Output = Result<(), String>> {
    let (body, length) = streamed(chunks);
    // A POST with a streamed body: neither idempotent nor replayable by its length.
    let req = Request::post(proxy.url("/upload")).body(body).unwrap();
    let send = h2.send_request(req);
    async move {
        let response = send.await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status != 200 || body.len() != length {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(())
    }
}

/// A POST whose body stays open until its sender is dropped.
fn held_post(
    proxy: &RunningProxy,
) -> (
    Request<ClientBody>,
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let req = Request::post(proxy.url("/held"))
        .body(StreamBody::new(body).boxed())
        .unwrap();
    (req, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_goes_away_finishes_its_streams_and_new_ones_go_elsewhere() {
    let (stop, stopping) = watch::channel(false);
    let draining = h2c_app("v1", Some(stopping)).await;
    let other = h2c_echo("v2").await;
    let proxy = TestProxy::new()
        .h2c_endpoint_at(draining.addr, "v1")
        .h2c_endpoint_at(other.addr, "v2")
        .start()
        .await;
    let mut h2 = h2_connection::<ClientBody>(proxy.addr).await;
    // Streams in flight on the endpoint that is about to go away.
    let mut held = Vec::new();
    let mut in_flight = Vec::new();
    while draining.served.load(Ordering::Relaxed) < 5 {
        assert!(held.len() < 200, "the draining endpoint never got a stream");
        let (req, tx) = held_post(&proxy);
        in_flight.push(h2.send_request(req));
        held.push(tx);
        let sent = held.len();
        wait_until(
            "the stream reached an endpoint",
            Duration::from_secs(5),
            || {
                let (a, b) = (draining.served.clone(), other.served.clone());
                async move { a.load(Ordering::Relaxed) + b.load(Ordering::Relaxed) == sent }
            },
        )
        .await;
    }
    stop.send_replace(true);
    // New streams, with streamed bodies, while it drains and after it has stopped accepting.
    let calls: Vec<_> = (0..40).map(|_| upload(&mut h2, &proxy, 2)).collect();
    for result in futures::future::join_all(calls).await {
        result.expect("a new stream never fails because an endpoint is going away");
    }
    // The streams that were in flight on the draining endpoint finish.
    drop(held);
    for call in futures::future::join_all(in_flight).await {
        assert_eq!(call.expect("in-flight streams finish").status(), 200);
    }
}

/// A pod whose listener is closing: the kernel completes the handshake, then the app resets the
/// connection without a byte (no SETTINGS). Nothing was processed there, so every POST, streamed
/// from an HTTP/2 client or kept in place from an HTTP/1.1 one, must go to the other endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_a_connection_the_endpoint_reset_unspoken_go_elsewhere() {
    let resetting = TcpListener::bind(SocketAddr::new(pod_ip().into(), 0))
        .await
        .unwrap();
    let dead = resetting.local_addr().unwrap();
    let resets = Arc::new(AtomicUsize::new(0));
    let counted = resets.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = resetting.accept().await {
            // Let the client's preface and request arrive, then reset: unread data and a zero
            // linger make the close an RST.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = stream.set_zero_linger();
            drop(stream);
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    let good = h2c_echo("v2").await;
    let proxy = TestProxy::new()
        .h2c_endpoint_at(dead, "v1")
        .h2c_endpoint_at(good.addr, "v2")
        .yaml("outlier: null")
        .start()
        .await;
    let mut h2 = h2_connection::<ClientBody>(proxy.addr).await;
    for _ in 0..20 {
        upload(&mut h2, &proxy, 2)
            .await
            .expect("a streamed POST goes to the endpoint that answers");
        let post = Request::post(proxy.url("/upload"))
            .body(full("kept in place"))
            .unwrap();
        let (status, _, body) = send(proxy.client(), post).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        resets.load(Ordering::Relaxed) > 0,
        "the resetting endpoint was tried"
    );
}
