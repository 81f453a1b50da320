//! What a load test does, parsed and validated once: target, schedule, connections, extra headers
//! and where a response's version comes from. The engine never re-parses a string.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::HeaderMap;

use super::tls::Verify;

/// The header tidegate adds to responses when `expose_version_header: true`; read by default.
pub const VERSION_HEADER: &str = "x-tidegate-version";

/// Why an argument was rejected; the CLI shows it and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid header {0:?}: expected NAME:VALUE")]
    Header(String),
    #[error("invalid --version-from {0:?}: expected header:NAME or body-regex:REGEX")]
    VersionFrom(String),
    #[error("invalid regex in --version-from: {0}")]
    Regex(#[from] regex::Error),
    #[error("invalid mark {0:?}: expected AT:LABEL, such as 12s:set image v2")]
    Mark(String),
    #[error("invalid duration {0:?}: expected a number with a unit (250ms, 10s, 2m, 1h), above 0")]
    Duration(String),
    #[error("invalid method {0:?}: expected an HTTP method such as GET, POST or PUT")]
    Method(String),
    #[error(
        "invalid threshold {0:?}: expected [VERSION:]p50|p90|p99|p99.9|max<DURATION or \
         [VERSION:]failures<PERCENT%, such as p99<250ms, failures<0.1% or v2:p99<300ms"
    )]
    Threshold(String),
    #[error("cannot read the body file {path}: {source}")]
    BodyFile {
        path: String,
        source: std::io::Error,
    },
}

/// An `http://` or `https://` URL split into what each protocol sends: HTTP/1.1 writes the path
/// and a `Host` header, HTTP/2 the absolute URI (its `:authority`).
#[derive(Clone, Debug)]
pub struct Target {
    absolute: Uri,
    path: Uri,
    host: HeaderValue,
    /// `host:port`, resolved once when the test starts.
    authority: String,
    /// `https://`: the host name TLS sends (SNI) and checks the certificate against.
    tls_name: Option<String>,
}

impl Target {
    /// Accepts `http://` or `https://host[:port][/path][?query]`.
    pub fn parse(url: &str) -> Result<Self, PlanError> {
        let bad = |reason: &str| PlanError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme().cloned();
        let tls = match scheme {
            Some(ref s) if *s == Scheme::HTTP => false,
            Some(ref s) if *s == Scheme::HTTPS => true,
            _ => return Err(bad("only http:// and https:// URLs are supported")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
        if authority.as_str().contains('@') {
            return Err(bad("user info is not supported"));
        }
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let absolute = Uri::builder()
            .scheme(if tls { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(authority.clone())
            .path_and_query(path.clone())
            .build()
            .map_err(|_| bad("not a URL"))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| bad("bad host"))?;
        Ok(Self {
            absolute,
            path: Uri::from(path),
            host,
            authority: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(if tls { 443 } else { 80 })
            ),
            tls_name: tls.then(|| authority.host().to_owned()),
        })
    }

    /// The host name for TLS, when the URL is `https://`.
    pub fn tls_name(&self) -> Option<&str> {
        self.tls_name.as_deref()
    }

    /// `host:port` to connect to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request URI for `protocol`.
    pub(super) fn uri(&self, protocol: Protocol) -> &Uri {
        match protocol {
            Protocol::Http1 => &self.path,
            Protocol::Http2 => &self.absolute,
        }
    }

    pub(super) fn host(&self) -> &HeaderValue {
        &self.host
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.absolute.fmt(f)
    }
}

impl FromStr for Target {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        Self::parse(s)
    }
}

/// How requests reach the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// One request at a time per connection; `connections` connections.
    Http1,
    /// `connections` concurrent streams, carried by one connection per [`STREAMS_PER_H2_CONNECTION`]
    /// streams: what a browser or a gRPC client does, and what a proxy sees from one.
    Http2,
}

/// Concurrent HTTP/2 streams per connection (servers allow at least 100 by default).
pub const STREAMS_PER_H2_CONNECTION: usize = 100;

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// Where a response's version is read from.
#[derive(Clone, Debug)]
pub enum VersionFrom {
    /// A response header's value (default: [`VERSION_HEADER`]); responses without it are
    /// unversioned.
    Header(HeaderName),
    /// Capture group 1 (or the whole match) of a regex over the first [`BODY_LIMIT`] body bytes.
    BodyRegex(regex::bytes::Regex),
}

/// Body bytes kept for `--version-from body-regex` (the rest is read and discarded).
pub const BODY_LIMIT: usize = 64 * 1024;

impl VersionFrom {
    /// Parses `header:NAME` or `body-regex:REGEX`.
    pub fn parse(s: &str) -> Result<Self, PlanError> {
        if let Some(name) = s.strip_prefix("header:") {
            let name = HeaderName::from_str(name.trim())
                .map_err(|_| PlanError::VersionFrom(s.to_owned()))?;
            Ok(VersionFrom::Header(name))
        } else if let Some(pattern) = s.strip_prefix("body-regex:") {
            Ok(VersionFrom::BodyRegex(regex::bytes::Regex::new(pattern)?))
        } else {
            Err(PlanError::VersionFrom(s.to_owned()))
        }
    }
}

impl Default for VersionFrom {
    fn default() -> Self {
        VersionFrom::Header(HeaderName::from_static(VERSION_HEADER))
    }
}

/// A validated load test. Build one with [`Plan::new`] and set the public fields.
#[derive(Clone, Debug)]
pub struct Plan {
    pub target: Target,
    /// Requests started per second on a fixed schedule; 0 = closed loop (each connection sends
    /// back to back).
    pub rate: u32,
    /// How long requests are started for. In-flight ones then finish (bounded by `timeout`).
    pub duration: Duration,
    /// HTTP/1.1 connections, or concurrent HTTP/2 streams: the most requests in flight at once.
    pub connections: NonZeroUsize,
    pub protocol: Protocol,
    /// The request method (`--method`).
    pub method: http::Method,
    /// Sent with every request; a `host` here replaces the URL's.
    pub headers: HeaderMap,
    /// Sent as every request's body, with its `content-length` (`--body`); empty for none.
    pub body: bytes::Bytes,
    pub version_from: VersionFrom,
    /// For one request from when it is sent (connect included) until its body is read. A request
    /// that could not even start within this long after its intended start is `overdue`.
    pub timeout: Duration,
    /// How an `https://` target's certificate is checked.
    pub verify: Verify,
    /// Where to connect, instead of the URL's host resolved.
    pub connect_to: Option<SocketAddr>,
    /// Every request as a CSV row (`--csv`).
    pub csv: Option<std::path::PathBuf>,
}

impl Plan {
    /// 100 req/s for 10 s over 32 HTTP/1.1 connections, 5 s timeout, version from
    /// [`VERSION_HEADER`].
    pub fn new(target: Target) -> Self {
        Self {
            target,
            rate: 100,
            duration: Duration::from_secs(10),
            connections: NonZeroUsize::new(32).expect("32 is not zero"),
            protocol: Protocol::Http1,
            method: http::Method::GET,
            headers: HeaderMap::new(),
            body: bytes::Bytes::new(),
            version_from: VersionFrom::default(),
            timeout: Duration::from_secs(5),
            verify: Verify::default(),
            connect_to: None,
            csv: None,
        }
    }

    /// The headers each request carries: the extra ones, plus `Host` for HTTP/1.1.
    pub(super) fn request_headers(&self) -> HeaderMap {
        let mut headers = self.headers.clone();
        if self.protocol == Protocol::Http1 && !headers.contains_key(HOST) {
            headers.insert(HOST, self.target.host().clone());
        }
        headers
    }
}

/// Parses `NAME:VALUE` (whitespace around the value trimmed), for `--header`.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), PlanError> {
    let bad = || PlanError::Header(s.to_owned());
    let (name, value) = s.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_str(name.trim()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

/// Parses an HTTP method, for `--method` (`CONNECT` is refused: it opens a tunnel, not a request).
pub fn parse_method(s: &str) -> Result<http::Method, PlanError> {
    let bad = || PlanError::Method(s.to_owned());
    let method = http::Method::from_str(s.trim()).map_err(|_| bad())?;
    if method == http::Method::CONNECT || s.trim().is_empty() {
        return Err(bad());
    }
    Ok(method)
}

/// The largest `--body @FILE` read into memory.
const MAX_BODY_FILE: u64 = 64 * 1024 * 1024;

/// Parses `--body`: the text itself, or the bytes of a file with `@FILE` (at most 64 MiB).
pub fn parse_body(s: &str) -> Result<bytes::Bytes, PlanError> {
    let Some(path) = s.strip_prefix('@') else {
        return Ok(bytes::Bytes::copy_from_slice(s.as_bytes()));
    };
    let error = |source| PlanError::BodyFile {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    use std::io::Read;
    std::fs::File::open(path)
        .map_err(error)?
        .take(MAX_BODY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(error)?;
    if bytes.len() as u64 > MAX_BODY_FILE {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 64 MiB",
        )));
    }
    Ok(bytes.into())
}

/// Parses a positive `<number><unit>` with unit `ms`, `s`, `m` or `h`, for `--duration` and
/// `--timeout`.
pub fn parse_duration(s: &str) -> Result<Duration, PlanError> {
    crate::config::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| PlanError::Duration(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_splits_origin_form_and_absolute() {
        let t = Target::parse("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!(t.authority(), "127.0.0.1:8080");
        assert_eq!(t.uri(Protocol::Http1).to_string(), "/a?b=1");
        assert_eq!(
            t.uri(Protocol::Http2).to_string(),
            "http://127.0.0.1:8080/a?b=1"
        );
        assert_eq!(t.host(), "127.0.0.1:8080");
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!(t.authority(), "localhost:80", "port 80 by default");
        assert_eq!(t.uri(Protocol::Http1).to_string(), "/");
        assert_eq!(t.tls_name(), None);
        let t = Target::parse("https://shop.example/x").unwrap();
        assert_eq!(t.authority(), "shop.example:443", "port 443 for https");
        assert_eq!(t.tls_name(), Some("shop.example"));
        assert_eq!(t.uri(Protocol::Http2).to_string(), "https://shop.example/x");
    }

    #[test]
    fn target_rejects_what_it_cannot_send() {
        for url in ["a/b", "ftp://a/", "http://u:p@a/", "http:///x"] {
            assert!(Target::parse(url).is_err(), "{url} must be rejected");
        }
    }

    #[test]
    fn host_header_only_for_http1_and_never_overrides_the_user() {
        let mut plan = Plan::new(Target::parse("http://127.0.0.1:1/").unwrap());
        assert_eq!(plan.request_headers()[HOST], "127.0.0.1:1");
        plan.headers.insert(HOST, HeaderValue::from_static("web"));
        assert_eq!(plan.request_headers()[HOST], "web");
        plan.headers.clear();
        plan.protocol = Protocol::Http2;
        assert!(!plan.request_headers().contains_key(HOST));
    }

    #[test]
    fn version_from_forms() {
        assert!(
            matches!(VersionFrom::parse("header:X-Version"), Ok(VersionFrom::Header(n)) if n == "x-version")
        );
        assert!(matches!(
            VersionFrom::parse(r"body-regex:v(\d+)"),
            Ok(VersionFrom::BodyRegex(_))
        ));
        assert!(VersionFrom::parse("body-regex:v(").is_err());
        assert!(VersionFrom::parse("cookie:x").is_err());
        assert!(VersionFrom::parse("header:bad name").is_err());
    }

    #[test]
    fn headers_and_durations() {
        let (n, v) = parse_header("X-Test: a:b ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-test", "a:b"));
        assert!(parse_header("novalue").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["10", "0s", "-1s", "s", "1parsec"] {
            assert!(parse_duration(bad).is_err(), "{bad} must be rejected");
        }
    }
}
