//! What reaches the endpoint of a client's request: every body, whatever the method, and the Host
//! it asked for; what a reverse proxy refuses instead (CONNECT, HTTP/1.1 without exactly one Host).

use http::Request;
use http_body_util::BodyExt;

use crate::support::*;

/// Every request here says `connection: close` or is refused, which closes.
async fn raw(proxy: &RunningProxy, request: &str) -> String {
    raw_round_trip(proxy.addr, request.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_on_any_method_reaches_the_endpoint() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;
    let hello = format!("bytes=5 hash={:x}", {
        let mut h = Fnv::new();
        h.update(b"hello");
        h.0
    });
    for method in ["GET", "HEAD", "DELETE", "OPTIONS", "POST"] {
        let answer = raw(
            &proxy,
            &format!(
                "{method} /upload HTTP/1.1\r\nhost: kubia\r\nconnection: close\r\n\
                 transfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{method}: {answer}");
        if method != "HEAD" {
            assert!(
                answer.ends_with(&hello),
                "a chunked {method} body must reach the endpoint whole: {answer}"
            );
        }
    }

    // HTTP/2 DATA frames without a content-length, on a GET.
    const LEN: usize = 200_000;
    let req = Request::get(proxy.url("/upload"))
        .body(Generated::new(LEN).map_err(|e| e).boxed())
        .unwrap();
    let (status, _, body) = send(&h2_client(), req).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!("bytes={LEN} hash={:x}", Generated::expected_hash(LEN)),
        "an HTTP/2 GET's body must reach the endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_host_less_requests_are_refused_before_any_endpoint() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;

    let connect = raw(
        &proxy,
        &format!("CONNECT {0} HTTP/1.1\r\nhost: {0}\r\n\r\n", app.addr),
    )
    .await;
    assert!(
        connect.starts_with("HTTP/1.1 405"),
        "tidegate is not a forward proxy: {connect}"
    );
    assert!(
        connect.to_ascii_lowercase().contains("\r\nallow: "),
        "{connect}"
    );
    let no_host = raw(&proxy, "GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let two_hosts = raw(
        &proxy,
        "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let http10 = raw(&proxy, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        http10.starts_with("HTTP/1.0 200"),
        "HTTP/1.0 needs no Host: {http10}"
    );

    assert_eq!(
        app.hits(),
        1,
        "only the HTTP/1.0 request may reach the endpoint"
    );
    assert_eq!(
        proxy
            .metric(r#"tidegate_client_errors_total{kind="bad_request"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(
        proxy
            .metric(r#"tidegate_client_errors_total{kind="method_not_allowed"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_gets_the_host_the_client_asked_for() {
    let app = backend("v1").run().await;
    let proxy = TestProxy::new().endpoints(&[&app]).start().await;

    let answer = raw(
        &proxy,
        "GET / HTTP/1.1\r\nhost: shop.example\r\nconnection: close, host\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        app.last_headers()["host"],
        "shop.example",
        "Connection cannot strip Host"
    );

    // An HTTP/2 connection to the proxy whose requests name another authority.
    let mut sender = h2_connection(proxy.addr).await;
    let req = Request::get(format!("http://shop.example:{}/", proxy.addr.port()))
        .header("host", "evil.example")
        .body(empty())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        app.last_headers()["host"],
        format!("shop.example:{}", proxy.addr.port()),
        ":authority wins over a host header on HTTP/2 (RFC 9113 §8.3.1)"
    );
}
