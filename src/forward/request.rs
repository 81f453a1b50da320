//! Header rewriting at the proxy boundary (RFC 9110 §7.6): hop-by-hop headers stop here, the
//! forwarding headers say who asked, and the upstream request is plain HTTP/1.1 in origin form.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, RFC 9112 §9.6).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    PROXY_CONNECTION,
];

/// Rewrites a client request for the upstream hop.
pub(super) fn prepare<B>(req: &mut Request<B>, client: IpAddr) {
    let via = match req.version() {
        Version::HTTP_2 => HeaderValue::from_static("2 tidegate"),
        Version::HTTP_10 => HeaderValue::from_static("1.0 tidegate"),
        _ => HeaderValue::from_static("1.1 tidegate"),
    };
    // HTTP/2 carries the host in :authority; HTTP/1.1 upstreams need it as Host.
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let origin_form = req
        .uri()
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    *req.uri_mut() = origin_form;
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    // tidegate answers `Expect: 100-continue` itself when it starts reading the body.
    headers.remove(header::EXPECT);
    append_forwarded_for(headers, client);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.append(header::VIA, via);
}

/// Rewrites an upstream response for the client hop.
pub(super) fn prepare_response<B>(resp: &mut Response<B>) {
    let headers = resp.headers_mut();
    strip_hop_by_hop(headers);
    headers.append(header::VIA, HeaderValue::from_static("1.1 tidegate"));
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        // Headers named by Connection are hop-by-hop too; collecting them allocates only when
        // the client sent such a list.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if headers.keys().any(is_proxy_header) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| is_proxy_header(k))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

fn is_proxy_header(name: &HeaderName) -> bool {
    name.as_str().starts_with("proxy-")
}

fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let client = client.to_canonical();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {client}"),
        _ => client.to_string(),
    };
    match HeaderValue::try_from(value) {
        Ok(v) => {
            headers.insert(X_FORWARDED_FOR, v);
        }
        Err(_) => {
            headers.remove(X_FORWARDED_FOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn ip() -> IpAddr {
        "10.1.2.3".parse().unwrap()
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut req = request(
            Version::HTTP_11,
            "/a?b=1",
            &[
                ("host", "shop.example"),
                ("connection", "keep-alive, x-secret-hop"),
                ("x-secret-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("trailer", "x-t"),
                ("upgrade", "websocket"),
                ("proxy-authorization", "Basic Zm9v"),
                ("proxy-connection", "keep-alive"),
                ("x-end-to-end", "kept"),
            ],
        );
        prepare(&mut req, ip());
        let h = req.headers();
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(
                !h.contains_key(gone),
                "{gone} is hop-by-hop and must not be forwarded"
            );
        }
        assert_eq!(h["x-end-to-end"], "kept");
        assert_eq!(h["host"], "shop.example", "Host must be preserved");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["via"], "1.1 tidegate");
        assert_eq!(req.uri(), "/a?b=1");
    }

    #[test]
    fn forwarded_for_is_appended_and_via_kept() {
        let mut req = request(
            Version::HTTP_11,
            "/",
            &[
                ("host", "h"),
                ("x-forwarded-for", "1.1.1.1"),
                ("via", "1.0 edge"),
            ],
        );
        prepare(&mut req, ip());
        assert_eq!(req.headers()["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        let via: Vec<_> = req.headers().get_all("via").iter().collect();
        assert_eq!(via, ["1.0 edge", "1.1 tidegate"]);
    }

    #[test]
    fn http2_requests_become_http11_with_a_host_header() {
        let mut req = request(Version::HTTP_2, "http://shop.example:8080/x", &[]);
        prepare(&mut req, ip());
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "shop.example:8080");
        assert_eq!(req.uri(), "/x", "upstream requests use origin form");
        assert_eq!(req.headers()["via"], "2 tidegate");
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed() {
        let mut resp = Response::builder()
            .header("connection", "close")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        prepare_response(&mut resp);
        assert!(!resp.headers().contains_key("connection"));
        assert!(!resp.headers().contains_key("keep-alive"));
        assert!(!resp.headers().contains_key("transfer-encoding"));
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert_eq!(resp.headers()["via"], "1.1 tidegate");
    }
}
