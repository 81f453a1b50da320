//! Header rewriting at the proxy boundary (RFC 9110 §7.6): hop-by-hop headers stop here, the
//! forwarding headers say who asked, and the upstream request is plain HTTP/1.1 in origin form.
//! Before any of that, [`admit`] refuses what a reverse proxy must not forward.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};

use super::error::ClientFault;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
// Consts, so that each value's validation runs at compile time, not per request.
const VIA_10: HeaderValue = HeaderValue::from_static("1.0 tidegate");
const VIA_11: HeaderValue = HeaderValue::from_static("1.1 tidegate");
const VIA_2: HeaderValue = HeaderValue::from_static("2 tidegate");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, RFC 9112 §9.6).
/// `Trailer` is not one of them (RFC 9110 §6.6.2): it announces the trailers that follow.
const HOP_COUNT: usize = 6;
// A static, not a const: a const array of `HeaderName` is rebuilt and dropped at every use.
static HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    KEEP_ALIVE,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    PROXY_CONNECTION,
];
/// [`HOP_BY_HOP`] as strings, in the same order.
const HOP_BY_HOP_NAMES: [&str; HOP_COUNT] = [
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// The client side of a connection, computed once per connection.
#[derive(Clone)]
pub(super) struct Client {
    ip: IpAddr,
    /// `X-Forwarded-For` when the client sent none.
    forwarded_for: HeaderValue,
    /// `X-Forwarded-Proto`: `https` when the connection came over TLS.
    proto: HeaderValue,
}

impl Client {
    pub(super) fn new(ip: IpAddr, tls: bool) -> Self {
        let ip = ip.to_canonical();
        Self {
            ip,
            forwarded_for: HeaderValue::try_from(ip.to_string())
                .expect("an IP address is a valid header value"),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
        }
    }
}

/// The headers tidegate adds for the upstream hop: `replace` ones take the place of any the client
/// sent (`X-Forwarded-For` already carries the client's chain), `append` ones go alongside.
pub(super) struct Forwarding {
    pub replace: [(HeaderName, HeaderValue); 3],
    /// How many of `replace` are set (`X-Forwarded-Host` only with a Host).
    pub replacing: usize,
    pub append: [(HeaderName, HeaderValue); 1],
    /// The client's `TE` (removed: hop-by-hop) asked for trailers; an HTTP/2 upstream gets
    /// `te: trailers` again.
    pub te_trailers: bool,
}

impl Forwarding {
    fn apply(self, headers: &mut HeaderMap) {
        let Forwarding {
            replace,
            replacing,
            append,
            ..
        } = self;
        for (name, value) in replace.into_iter().take(replacing) {
            headers.insert(name, value);
        }
        for (name, value) in append {
            headers.append(name, value);
        }
    }
}

/// What one request may carry (`limits:`), beyond what hyper refuses itself.
#[derive(Clone, Copy, Debug)]
pub(super) struct RequestLimits {
    /// Bytes in the request target (authority and path with query).
    pub max_uri: usize,
    /// Header lines (hyper counts HTTP/1's; HTTP/2's are counted here).
    pub max_headers: usize,
}

/// Refuses a request that a reverse proxy must not forward: `CONNECT` (tidegate is not a forward
/// proxy: 405), an HTTP/1.1 request without exactly one `Host` (RFC 9112 §3.2: 400), and one
/// beyond `limits` (414, 431). Returns the request's Host, so that preparing it needs no second
/// lookup.
pub(super) fn admit<B>(
    req: &Request<B>,
    limits: &RequestLimits,
) -> Result<Option<HeaderValue>, ClientFault> {
    if req.method() == Method::CONNECT {
        return Err(ClientFault::NotAllowed);
    }
    let uri = req.uri();
    let target = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > limits.max_uri {
        return Err(ClientFault::UriTooLong);
    }
    if req.headers().len() > limits.max_headers {
        return Err(ClientFault::HeadersTooLarge);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if req.version() == Version::HTTP_11 && (host.is_none() || hosts.next().is_some()) {
        return Err(ClientFault::BadRequest);
    }
    Ok(host.cloned())
}

/// A body that streams with no declared length goes chunked: the client's `Transfer-Encoding`
/// stopped at this hop, and hyper's client would otherwise send a GET, HEAD or DELETE without
/// the body the client sent.
pub(super) fn frame_streamed_body<B: http_body::Body>(req: &mut Request<B>) {
    if !req.body().is_end_stream() && !req.headers().contains_key(header::CONTENT_LENGTH) {
        req.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
}

/// Rewrites a client request for the upstream hop. Says whether the client's `TE` asked for
/// trailers.
pub(super) fn prepare<B>(req: &mut Request<B>, client: &Client, host: Option<HeaderValue>) -> bool {
    let forwarding = prepare_lean(req, client, host);
    let te_trailers = forwarding.te_trailers;
    let origin_form = req
        .uri()
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    *req.uri_mut() = origin_form;
    *req.version_mut() = Version::HTTP_11;
    forwarding.apply(req.headers_mut());
    te_trailers
}

/// The part of [`prepare`] that edits the request; the forwarding headers are returned for the
/// lean upstream path to write as it encodes the head, which saves four map insertions.
pub(super) fn prepare_lean<B>(
    req: &mut Request<B>,
    client: &Client,
    host: Option<HeaderValue>,
) -> Forwarding {
    let via = match req.version() {
        Version::HTTP_2 => VIA_2,
        Version::HTTP_10 => VIA_10,
        _ => VIA_11,
    };
    // HTTP/2 carries the host in :authority, which wins over a `host` header (RFC 9113
    // §8.3.1); HTTP/1.1 upstreams need it as Host.
    let host = match host {
        Some(host) if req.version() != Version::HTTP_2 => Some(host),
        host => match req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            Some(authority) => {
                req.headers_mut().insert(header::HOST, authority.clone());
                Some(authority)
            }
            None => host,
        },
    };
    let headers = req.headers_mut();
    // tidegate answers `Expect: 100-continue` itself when it starts reading the body.
    let te_trailers = strip_hop_by_hop(headers, Some(&header::EXPECT));
    let replacing = if host.is_some() { 3 } else { 2 };
    Forwarding {
        replace: [
            (X_FORWARDED_FOR, forwarded_for(headers, client)),
            (X_FORWARDED_PROTO, client.proto.clone()),
            (
                X_FORWARDED_HOST,
                host.unwrap_or(HeaderValue::from_static("")),
            ),
        ],
        replacing,
        append: [(header::VIA, via)],
        te_trailers,
    }
}

/// Rewrites an upstream response for the client hop.
pub(super) fn prepare_response<B>(resp: &mut Response<B>) {
    strip_hop_by_hop(resp.headers_mut(), None);
    for_client_hop(resp);
}

/// The part of [`prepare_response`] left for a response whose hop-by-hop headers are gone already.
/// A proxy answers in its own HTTP version, not the endpoint's (hyper lowers it for an HTTP/1.0
/// client, and an HTTP/1.0 label would end a kept-alive client connection); `Via` names the
/// version the answer was received with (RFC 9110, section 7.6.3).
pub(super) fn for_client_hop<B>(resp: &mut Response<B>) {
    let via = match resp.version() {
        Version::HTTP_10 => VIA_10,
        Version::HTTP_2 => VIA_2,
        _ => VIA_11,
    };
    *resp.version_mut() = Version::HTTP_11;
    resp.headers_mut().append(header::VIA, via);
}

/// Removes hop-by-hop headers (and `also`). One pass over the names finds which are present;
/// only those are then removed, and nothing allocates unless `Connection` names custom headers.
/// Says whether a removed `TE` listed `trailers` (RFC 9110 §10.1.4).
fn strip_hop_by_hop(headers: &mut HeaderMap, also: Option<&HeaderName>) -> bool {
    let mut present = [false; HOP_COUNT];
    let (mut any, mut proxy, mut also_present) = (false, false, false);
    for name in headers.keys() {
        let lower = name.as_str();
        if let Some(i) = hop_by_hop_index(lower) {
            present[i] = true;
            any = true;
        } else if lower.starts_with(PROXY_PREFIX) {
            proxy = true;
            any = true;
        } else if also == Some(name) {
            also_present = true;
            any = true;
        }
    }
    if !any {
        return false;
    }
    // HOP_BY_HOP[2] is TE.
    let te_trailers = present[2] && headers.get_all(header::TE).iter().any(asks_for_trailers);
    // HOP_BY_HOP[0] is Connection: the headers it names are hop-by-hop too. `close` and
    // `keep-alive` are connection options, not header names worth a lookup.
    if present[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            // Host identifies the resource, not the connection: a client naming it in
            // `Connection` cannot make the request lose it.
            .filter(|name| name != header::HOST)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    if let (Some(also), true) = (also, also_present) {
        headers.remove(also);
    }
    if proxy {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| is_proxy_header(k))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    te_trailers
}

/// Which of [`HOP_BY_HOP`] a (lower-case) header name is: picked by length and first letter, then
/// confirmed, where comparing with each in turn cost about 140 instructions a header.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    let i = match (name.len(), name.as_bytes().first()) {
        (10, Some(b'c')) => 0,
        (10, Some(b'k')) => 1,
        (2, Some(b't')) => 2,
        (17, Some(b't')) => 3,
        (7, Some(b'u')) => 4,
        (16, Some(b'p')) => 5,
        _ => return None,
    };
    (HOP_BY_HOP_NAMES[i] == name).then_some(i)
}

/// Whether a `TE` value lists `trailers`.
fn asks_for_trailers(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"trailers"))
}

/// `Proxy-*` headers are for this hop alone.
const PROXY_PREFIX: &str = "proxy-";

fn is_proxy_header(name: &HeaderName) -> bool {
    name.as_str().starts_with(PROXY_PREFIX)
}

/// The client's `X-Forwarded-For` chain with this client appended.
fn forwarded_for(headers: &HeaderMap, client: &Client) -> HeaderValue {
    match headers.get(&X_FORWARDED_FOR).map(|v| v.to_str()) {
        None => client.forwarded_for.clone(),
        Some(Ok(prior)) if !prior.trim().is_empty() => {
            match HeaderValue::try_from(format!("{prior}, {}", client.ip)) {
                Ok(v) => v,
                Err(_) => client.forwarded_for.clone(),
            }
        }
        // An empty or non-text value is replaced: the chain restarts here.
        Some(_) => client.forwarded_for.clone(),
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

    const LIMITS: RequestLimits = RequestLimits {
        max_uri: 64,
        max_headers: 4,
    };

    #[test]
    fn a_long_target_is_414_and_too_many_headers_431() {
        let long = format!("/{}", "a".repeat(64));
        let req = request(Version::HTTP_2, &long, &[]);
        assert_eq!(admit(&req, &LIMITS), Err(ClientFault::UriTooLong));
        let req = request(Version::HTTP_2, &long[..64], &[]);
        assert_eq!(admit(&req, &LIMITS), Ok(None), "64 bytes are within 64");
        let five = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")];
        let req = request(Version::HTTP_2, "/", &five);
        assert_eq!(admit(&req, &LIMITS), Err(ClientFault::HeadersTooLarge));
        let req = request(Version::HTTP_2, "/", &five[..4]);
        assert_eq!(admit(&req, &LIMITS), Ok(None));
        assert_eq!(ClientFault::UriTooLong.status(), 414);
        assert_eq!(ClientFault::HeadersTooLarge.status(), 431);
    }

    fn ip() -> Client {
        Client::new("10.1.2.3".parse().unwrap(), false)
    }

    /// Admits and prepares `req`, as the pipeline does.
    fn prepare<B>(req: &mut Request<B>, client: &Client) {
        let generous = RequestLimits {
            max_uri: 8192,
            max_headers: 100,
        };
        let host = admit(req, &generous).expect("an admissible request");
        super::prepare(req, client, host);
    }

    #[test]
    fn hop_by_hop_names_are_found_by_their_index() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(HOP_BY_HOP_NAMES[i], name.as_str());
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i));
        }
        for other in [
            "content",
            "keep-alivf",
            "tf",
            "trailer",
            "upgrades",
            "proxy-authorization",
        ] {
            assert_eq!(hop_by_hop_index(other), None, "{other}");
        }
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
                ("upgrade", "websocket"),
                ("proxy-authorization", "Basic Zm9v"),
                ("proxy-connection", "keep-alive"),
                ("x-end-to-end", "kept"),
            ],
        );
        prepare(&mut req, &ip());
        let h = req.headers();
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
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
    fn connect_and_http11_without_one_host_are_refused() {
        let admitted = |version, headers: &[(&str, &str)]| {
            admit(&request(version, "/", headers), &LIMITS).map(|_| ())
        };
        assert_eq!(admitted(Version::HTTP_11, &[("host", "h")]), Ok(()));
        assert_eq!(admitted(Version::HTTP_10, &[]), Ok(()));
        assert_eq!(admitted(Version::HTTP_2, &[]), Ok(()));
        assert_eq!(
            admitted(Version::HTTP_11, &[]),
            Err(ClientFault::BadRequest)
        );
        assert_eq!(
            admitted(Version::HTTP_11, &[("host", "a"), ("host", "b")]),
            Err(ClientFault::BadRequest)
        );
        let connect = Request::connect("h:443")
            .header("host", "h:443")
            .body(())
            .unwrap();
        assert_eq!(admit(&connect, &LIMITS), Err(ClientFault::NotAllowed));
        let host = admit(
            &request(Version::HTTP_11, "/", &[("host", "shop")]),
            &LIMITS,
        );
        assert_eq!(
            host,
            Ok(Some(HeaderValue::from_static("shop"))),
            "the Host is handed on"
        );
    }

    #[test]
    fn host_survives_connection_and_authority_wins_on_http2() {
        let mut req = request(
            Version::HTTP_11,
            "/",
            &[("host", "shop"), ("connection", "host, x-a"), ("x-a", "1")],
        );
        prepare(&mut req, &ip());
        assert_eq!(req.headers()["host"], "shop");
        assert!(!req.headers().contains_key("x-a"));
        let mut req = request(
            Version::HTTP_2,
            "http://shop.example/x",
            &[("host", "evil.example")],
        );
        prepare(&mut req, &ip());
        assert_eq!(req.headers()["host"], "shop.example", ":authority wins");
    }

    #[test]
    fn expect_is_answered_here_not_forwarded() {
        let mut req = request(
            Version::HTTP_11,
            "/",
            &[("host", "h"), ("expect", "100-continue")],
        );
        prepare(&mut req, &ip());
        assert!(!req.headers().contains_key("expect"));
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
        prepare(&mut req, &ip());
        assert_eq!(req.headers()["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        let via: Vec<_> = req.headers().get_all("via").iter().collect();
        assert_eq!(via, ["1.0 edge", "1.1 tidegate"]);
    }

    #[test]
    fn http2_requests_become_http11_with_a_host_header() {
        let mut req = request(Version::HTTP_2, "http://shop.example:8080/x", &[]);
        prepare(&mut req, &ip());
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
