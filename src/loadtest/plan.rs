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
    #[error(
        "invalid stages {0:?}: expected DURATION:RATE[,DURATION:RATE...], such as \
         10s:100,30s:1000,10s:0"
    )]
    Stages(String),
    #[error("targets line {line}: {reason}")]
    Targets { line: usize, reason: String },
    #[error(
        "{url} is not on {first}: every URL of one run goes to the same scheme, host and port \
         (one set of connections)"
    )]
    MixedOrigins { url: String, first: String },
    #[error("cannot read the targets file {path}: {source}")]
    TargetsFile {
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

    /// Whether both go to the same place over the same connections.
    fn same_origin(&self, other: &Target) -> bool {
        self.authority == other.authority
            && self.tls_name.is_some() == other.tls_name.is_some()
            && self.host == other.host
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
    /// Non-empty: the open-loop rate ramps through these instead of holding `rate` for
    /// `duration` (see [`Plan::length`]).
    pub stages: Vec<Stage>,
    /// Non-empty: the requests to send, in turn (request `n` sends `templates[n % len]`), instead
    /// of `method` to `target` with `body`. Each one also carries `headers`. Check them with
    /// [`Plan::set_templates`].
    templates: Vec<Template>,
}

/// One step of a ramping open-loop rate (`--stages 10s:100,30s:1000,10s:0`): the rate moves
/// linearly to `target` requests per second over `duration`, from the previous stage's target
/// (0 before the first). A `0s` stage jumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Stage {
    #[serde(rename = "duration_s", serialize_with = "seconds")]
    pub duration: Duration,
    pub target: u32,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Stage {
    /// Parses `DURATION:RATE[,DURATION:RATE...]`; the stages must start at least one request.
    pub fn parse_list(s: &str) -> Result<Vec<Stage>, PlanError> {
        let bad = || PlanError::Stages(s.to_owned());
        let stages = s
            .split(',')
            .map(|part| {
                let (duration, target) = part.trim().split_once(':').ok_or_else(bad)?;
                Ok(Stage {
                    duration: crate::config::parse_duration(duration.trim()).ok_or_else(bad)?,
                    target: target.trim().parse().map_err(|_| bad())?,
                })
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        let mut from = 0;
        let starts_any = stages.iter().any(|stage| {
            let moving = !stage.duration.is_zero() && (from > 0 || stage.target > 0);
            from = stage.target;
            moving
        });
        match starts_any {
            true => Ok(stages),
            false => Err(bad()),
        }
    }
}

/// One kind of request a run sends: a line of `--targets` or one of several URLs.
#[derive(Clone, Debug)]
pub struct Template {
    pub method: http::Method,
    pub target: Target,
    /// Added to the plan's headers, replacing same-named ones.
    pub headers: HeaderMap,
    /// `None`: the plan's body.
    pub body: Option<bytes::Bytes>,
}

impl Template {
    /// `target` with the plan's method, headers and body.
    pub fn url(target: Target) -> Self {
        Self {
            method: http::Method::GET,
            target,
            headers: HeaderMap::new(),
            body: None,
        }
    }
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
            stages: Vec::new(),
            templates: Vec::new(),
        }
    }

    /// How long requests are started for: the stages' sum, or `duration`.
    pub fn length(&self) -> Duration {
        match self.stages.is_empty() {
            true => self.duration,
            false => self.stages.iter().map(|s| s.duration).sum(),
        }
    }

    /// Sends `templates` in turn (round-robin). They must all go to `target`'s scheme, host and
    /// port, since every connection is to there; an empty list restores the single request.
    /// With `method_from_plan`, each template uses the plan's method (several URLs on the command
    /// line) rather than its own (a targets file).
    pub fn set_templates(
        &mut self,
        templates: Vec<Template>,
        method_from_plan: bool,
    ) -> Result<(), PlanError> {
        if let Some(other) = templates
            .iter()
            .find(|t| !t.target.same_origin(&self.target))
        {
            return Err(PlanError::MixedOrigins {
                url: other.target.to_string(),
                first: self.target.to_string(),
            });
        }
        self.templates = templates;
        if method_from_plan {
            for template in &mut self.templates {
                template.method = self.method.clone();
            }
        }
        Ok(())
    }

    /// What request `n % len` sends, each with its headers complete: the templates, or the one
    /// request `method` `target` `body`.
    pub(super) fn requests(&self) -> Vec<(http::Method, Uri, HeaderMap, bytes::Bytes)> {
        let single = [Template {
            method: self.method.clone(),
            ..Template::url(self.target.clone())
        }];
        let templates = match self.templates.is_empty() {
            true => &single[..],
            false => &self.templates,
        };
        templates
            .iter()
            .map(|t| {
                let mut headers = self.headers.clone();
                for (name, value) in &t.headers {
                    headers.insert(name, value.clone());
                }
                if self.protocol == Protocol::Http1 && !headers.contains_key(HOST) {
                    headers.insert(HOST, t.target.host().clone());
                }
                let body = t.body.clone().unwrap_or_else(|| self.body.clone());
                (
                    t.method.clone(),
                    t.target.uri(self.protocol).clone(),
                    headers,
                    body,
                )
            })
            .collect()
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

/// Parses a targets file in vegeta's format: targets separated by blank lines, each a
/// `METHOD URL` line, then `Name: value` header lines, then an optional `@FILE` body line (the
/// path as given, from the current directory); `#` starts a comment line.
pub fn parse_targets(text: &str) -> Result<Vec<Template>, PlanError> {
    let mut templates = Vec::new();
    let mut current: Option<Template> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let bad = |reason: String| PlanError::Targets {
            line: i + 1,
            reason,
        };
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            templates.extend(current.take());
            continue;
        }
        let Some(template) = &mut current else {
            let (method, url) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad(format!("expected METHOD URL, found {line:?}")))?;
            current = Some(Template {
                method: parse_method(method).map_err(|e| bad(e.to_string()))?,
                ..Template::url(Target::parse(url.trim()).map_err(|e| bad(e.to_string()))?)
            });
            continue;
        };
        if template.body.is_some() {
            return Err(bad(
                "nothing may follow the @FILE body line; end the target with a blank line"
                    .to_owned(),
            ));
        }
        if line.starts_with('@') {
            template.body = Some(parse_body(line).map_err(|e| bad(e.to_string()))?);
        } else {
            let (name, value) = parse_header(line).map_err(|e| bad(e.to_string()))?;
            template.headers.append(name, value);
        }
    }
    templates.extend(current);
    match templates.is_empty() {
        true => Err(PlanError::Targets {
            line: text.lines().count(),
            reason: "no targets".to_owned(),
        }),
        false => Ok(templates),
    }
}

/// [`parse_targets`] on a file's contents (`--targets FILE`).
pub fn read_targets(path: &std::path::Path) -> Result<Vec<Template>, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::TargetsFile {
        path: path.display().to_string(),
        source,
    })?;
    parse_targets(&text)
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
        let host = |plan: &Plan| plan.requests()[0].2.get(HOST).cloned();
        assert_eq!(host(&plan).unwrap(), "127.0.0.1:1");
        plan.headers.insert(HOST, HeaderValue::from_static("web"));
        assert_eq!(host(&plan).unwrap(), "web");
        plan.headers.clear();
        plan.protocol = Protocol::Http2;
        assert_eq!(host(&plan), None);
    }

    #[test]
    fn stages_parse_and_must_start_something() {
        let stages = Stage::parse_list("10s:100, 30s:1000,0s:5,500ms:0").unwrap();
        let got: Vec<_> = stages.iter().map(|s| (s.duration, s.target)).collect();
        assert_eq!(
            got,
            [
                (Duration::from_secs(10), 100),
                (Duration::from_secs(30), 1000),
                (Duration::ZERO, 5),
                (Duration::from_millis(500), 0)
            ]
        );
        for bad in [
            "",
            "10s",
            "10s:-1",
            "x:10",
            "10s:0",
            "0s:100",
            "10s:100;5s:0",
        ] {
            assert!(Stage::parse_list(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn a_targets_file_in_vegetas_format() {
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("thing.json");
        std::fs::write(&body, b"{\"a\":1}").unwrap();
        let text = format!(
            "# comment\nGET http://127.0.0.1:1/a?x=1\nX-Account: 8\n\n\nPOST http://127.0.0.1:1/things\n\
             Content-Type: application/json\n@{}\n\nDELETE http://127.0.0.1:1/b\n",
            body.display()
        );
        let t = parse_targets(&text).unwrap();
        let got: Vec<_> = t
            .iter()
            .map(|t| (t.method.as_str(), t.target.uri(Protocol::Http1).to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("GET", "/a?x=1".to_owned()),
                ("POST", "/things".to_owned()),
                ("DELETE", "/b".to_owned())
            ]
        );
        assert_eq!(t[0].headers["x-account"], "8");
        assert_eq!(t[1].body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(t[2].body, None);

        let mut plan = Plan::new(Target::parse("http://127.0.0.1:1/").unwrap());
        plan.headers
            .insert("x-account", HeaderValue::from_static("global"));
        plan.body = bytes::Bytes::from_static(b"plan");
        plan.set_templates(t, false).unwrap();
        let requests = plan.requests();
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[0].2["x-account"], "8", "the target's header wins");
        assert_eq!(requests[2].2["x-account"], "global");
        assert_eq!(&requests[2].3[..], b"plan", "no @FILE: the plan's body");
    }

    #[test]
    fn bad_targets_name_their_line() {
        for (text, line) in [
            ("GET http://127.0.0.1:1/\nbad header\n", 2),
            ("\n\nFETCH\n", 3),
            ("GET ftp://x/\n", 1),
            ("GET http://127.0.0.1:1/\n@/no/such/file\n", 2),
            ("GET http://127.0.0.1:1/\n@/dev/null\nX-A: b\n", 3),
            ("# nothing\n", 1),
        ] {
            match parse_targets(text) {
                Err(PlanError::Targets { line: got, .. }) => assert_eq!(got, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let mut plan = Plan::new(Target::parse("http://127.0.0.1:1/").unwrap());
        let elsewhere = Template::url(Target::parse("http://127.0.0.1:2/").unwrap());
        assert!(matches!(
            plan.set_templates(vec![elsewhere], true),
            Err(PlanError::MixedOrigins { .. })
        ));
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
