//! Access logs: one line per request, written once its response has ended, off the request path.
//!
//! The request's task formats the line and pushes it onto a bounded lock-free queue; one writer
//! thread drains the queue to stdout or a file in batches, on a short timer. A full queue (a
//! stalled stdout, a slow disk) drops the line and counts it in
//! `tidegate_access_log_dropped_total`: a log never stalls a request. tidegate's own 502/503/504 are logged at `warn` with the same fields whether or not
//! access logs are on ([`OwnErrors`]), at most a few per second.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;
use http::{HeaderValue, Method, Uri, Version};
use prometheus::IntCounter;

use crate::snapshot::{Endpoint, Role};

/// `access_log:` in the config.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogConfig {
    pub format: Format,
    pub target: Target,
    /// Log the query string with the path (it may carry tokens or personal data).
    pub include_query: bool,
    /// Lines held for the writer at most; beyond, lines are dropped and counted.
    pub buffer: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// `key=value` pairs (logfmt), values with spaces or quotes quoted.
    Text,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    /// Appended to; created if missing.
    File(PathBuf),
}

/// How long lines may wait before the writer wakes on its own. Writing in batches on a timer,
/// rather than waking the writer for every line, keeps the log's cost per request at formatting
/// the line and one queue push: no syscall and no context switch on the request's thread.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// A running access log. Cheap to share; writing never blocks.
pub struct AccessLog {
    shared: Arc<Shared>,
    format: Format,
    include_query: bool,
}

/// What the request threads and the writer thread share.
struct Shared {
    /// Lines waiting for the writer (lock-free, bounded: a full queue drops).
    queue: ArrayQueue<String>,
    dropped: IntCounter,
    /// The writer, woken early when the queue is half full.
    writer: std::thread::Thread,
    stopping: AtomicBool,
    finished: AtomicBool,
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
#[error("access_log.path {path}: {source}")]
pub struct AccessLogError {
    path: PathBuf,
    source: std::io::Error,
}

impl AccessLog {
    /// Opens the target and starts the writer thread.
    pub fn start(
        config: &AccessLogConfig,
        dropped: IntCounter,
    ) -> Result<Arc<Self>, AccessLogError> {
        let sink: Box<dyn std::io::Write + Send> = match &config.target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AccessLogError {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        let (handoff, shared_rx) = std::sync::mpsc::channel::<Arc<Shared>>();
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                if let Ok(shared) = shared_rx.recv() {
                    write_lines(&shared, sink);
                }
            })
            .map_err(|source| AccessLogError {
                path: PathBuf::from("(writer thread)"),
                source,
            })?;
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(config.buffer.max(1)),
            dropped,
            writer: writer.thread().clone(),
            stopping: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        });
        let _ = handoff.send(shared.clone());
        Ok(Arc::new(Self {
            shared,
            format: config.format,
            include_query: config.include_query,
        }))
    }

    /// Formats `record` and queues it; drops and counts it when the queue is full.
    pub fn write(&self, record: &Record) {
        let line = match self.format {
            Format::Json => record.json(self.include_query),
            Format::Text => record.text(self.include_query),
        };
        let queue = &self.shared.queue;
        if queue.push(line).is_err() {
            self.shared.dropped.inc();
        } else if queue.len() == queue.capacity() / 2 {
            self.shared.writer.unpark();
        }
    }

    /// Writes out what is queued and stops the writer, waiting at most `limit` (a stalled stdout
    /// must not hold up the process's exit).
    pub fn close(&self, limit: Duration) {
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::Release);
        shared.writer.unpark();
        let deadline = Instant::now() + limit;
        while !shared.finished.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The writer thread: every `FLUSH_INTERVAL` (or when woken), everything queued, then a flush.
fn write_lines(shared: &Shared, sink: Box<dyn std::io::Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    loop {
        // Read before draining: a line queued before the stop was asked for is written.
        let stopping = shared.stopping.load(Ordering::Acquire);
        let mut wrote = false;
        while let Some(line) = shared.queue.pop() {
            if out.write_all(line.as_bytes()).is_err() {
                shared.dropped.inc();
            }
            wrote = true;
        }
        if wrote && out.flush().is_err() {
            shared.dropped.inc();
        }
        if stopping {
            shared.finished.store(true, Ordering::Release);
            return;
        }
        std::thread::park_timeout(FLUSH_INTERVAL);
    }
}

/// What tidegate did beyond passing the exchange through, named after Envoy's response flags
/// where one fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// `UH`: no endpoint could take the request (Envoy: no healthy upstream).
    pub const NO_ENDPOINTS: Flags = Flags(1);
    /// `UF`: connecting to the endpoint failed.
    pub const CONNECT_FAILURE: Flags = Flags(1 << 1);
    /// `UT`: the endpoint did not answer in time.
    pub const UPSTREAM_TIMEOUT: Flags = Flags(1 << 2);
    /// `UR`: the endpoint reset or closed the exchange.
    pub const UPSTREAM_RESET: Flags = Flags(1 << 3);
    /// `UPE`: the endpoint broke the protocol.
    pub const UPSTREAM_PROTOCOL: Flags = Flags(1 << 4);
    /// `DC`: the client went away before the response ended.
    pub const CLIENT_ABORTED: Flags = Flags(1 << 5);
    /// `URX`: a retry was refused for lack of retry budget (Envoy: retry limit exceeded).
    pub const BUDGET_EXHAUSTED: Flags = Flags(1 << 6);
    /// `RT`: the request went to more than one endpoint.
    pub const RETRIED: Flags = Flags(1 << 7);
    /// `EJ`: an ejected or unhealthy endpoint was passed over for this request.
    pub const EJECTED_AVOIDED: Flags = Flags(1 << 8);
    /// `CO`: the canary header chose the role (`always`/`never`).
    pub const CANARY_OVERRIDE: Flags = Flags(1 << 9);
    /// `ST`: the sticky cookie chose the version.
    pub const STICKY: Flags = Flags(1 << 10);
    /// `UO`: every endpoint with room was at its connection cap (Envoy: upstream overflow).
    pub const SATURATED: Flags = Flags(1 << 11);

    const NAMES: [(Flags, &'static str); 12] = [
        (Flags::NO_ENDPOINTS, "UH"),
        (Flags::CONNECT_FAILURE, "UF"),
        (Flags::UPSTREAM_TIMEOUT, "UT"),
        (Flags::UPSTREAM_RESET, "UR"),
        (Flags::UPSTREAM_PROTOCOL, "UPE"),
        (Flags::SATURATED, "UO"),
        (Flags::CLIENT_ABORTED, "DC"),
        (Flags::BUDGET_EXHAUSTED, "URX"),
        (Flags::RETRIED, "RT"),
        (Flags::EJECTED_AVOIDED, "EJ"),
        (Flags::CANARY_OVERRIDE, "CO"),
        (Flags::STICKY, "ST"),
    ];

    #[inline]
    pub fn set(&mut self, flag: Flags) {
        self.0 |= flag.0;
    }

    pub fn contains(self, flag: Flags) -> bool {
        self.0 & flag.0 == flag.0
    }

    /// The flags as `UT,RT`, or `-` when there are none.
    pub fn names(self) -> String {
        self.to_string()
    }
}

impl Flags {
    /// The names as [`Flags::names`] gives them, appended to `out` (no allocation).
    fn push_names(self, out: &mut String) {
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    out.push(',');
                }
                out.push_str(name);
                first = false;
            }
        }
        if first {
            out.push('-');
        }
    }
}

impl std::fmt::Display for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// One request and its answer, as the access log and the own-error warning describe it.
pub struct Record {
    /// When the request arrived.
    pub start: Instant,
    pub request_id: Option<HeaderValue>,
    pub client: SocketAddr,
    pub method: Method,
    pub uri: Uri,
    /// The request's Host (HTTP/1.1), for a request target without an authority.
    pub host: Option<HeaderValue>,
    pub version: Version,
    pub status: u16,
    pub grpc_status: Option<u16>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Until the response ended (or the client left).
    pub duration: Duration,
    /// The endpoint that served, or failed, last.
    pub upstream: Option<Arc<Endpoint>>,
    pub role: Option<Role>,
    pub attempts: u32,
    pub flags: Flags,
    /// The W3C trace the request belongs to, as 32 hex digits.
    pub trace_id: Option<String>,
}

impl Record {
    /// A request as it arrives: nothing answered, sent or flagged yet.
    pub fn arriving(
        start: Instant,
        client: SocketAddr,
        method: Method,
        uri: Uri,
        host: Option<HeaderValue>,
        version: Version,
    ) -> Self {
        Self {
            start,
            request_id: None,
            client,
            method,
            uri,
            host,
            version,
            status: 0,
            grpc_status: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream: None,
            role: None,
            attempts: 0,
            flags: Flags::default(),
            trace_id: None,
        }
    }

    fn authority(&self) -> &str {
        match self.uri.authority() {
            Some(authority) => authority.as_str(),
            None => self
                .host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
        }
    }

    fn path(&self, include_query: bool) -> &str {
        match (include_query, self.uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str(),
            _ => self.uri.path(),
        }
    }

    fn protocol(&self) -> &'static str {
        match self.version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        }
    }

    /// Wall-clock time of the request's arrival.
    fn arrival(&self) -> SystemTime {
        SystemTime::now()
            .checked_sub(self.start.elapsed())
            .unwrap_or(UNIX_EPOCH)
    }

    /// One JSON object and a newline.
    pub fn json(&self, include_query: bool) -> String {
        self.line(Line::json(), include_query)
    }

    /// One logfmt line: `key=value`, `-` for nothing, quoted where a value needs it.
    pub fn text(&self, include_query: bool) -> String {
        self.line(Line::logfmt(), include_query)
    }

    /// The fields in their order, written straight into the line: no `fmt` machinery, which
    /// costs several times the bytes it writes.
    fn line(&self, mut line: Line, include_query: bool) -> String {
        line.key("time");
        line.quote();
        push_time(&mut line.out, self.arrival());
        line.quote();
        line.text_or_null(
            "request_id",
            self.request_id.as_ref().and_then(|v| v.to_str().ok()),
        );
        line.addr("client", &self.client);
        line.string("method", self.method.as_str());
        line.string("authority", self.authority());
        line.string("path", self.path(include_query));
        line.plain("protocol", self.protocol());
        line.number("status", u64::from(self.status));
        match self.grpc_status {
            Some(code) => line.number("grpc_status", u64::from(code)),
            None => line.null("grpc_status"),
        }
        line.number("bytes_received", self.bytes_received);
        line.number("bytes_sent", self.bytes_sent);
        line.millis("duration_ms", self.duration);
        let upstream = self.upstream.as_deref();
        match upstream {
            Some(endpoint) => line.addr("upstream", endpoint.address_ref()),
            None => line.null("upstream"),
        }
        line.text_or_null("version", upstream.map(|e| e.version().as_str()));
        line.text_or_null("role", self.role.map(Role::as_str));
        line.number("attempts", u64::from(self.attempts));
        line.key("flags");
        line.quote();
        self.flags.push_names(&mut line.out);
        line.quote();
        line.text_or_null("trace_id", self.trace_id.as_deref());
        line.finish()
    }
}

/// Each field's key as JSON and logfmt write it, separator included: one copy per key.
macro_rules! keys {
    ($first:literal $(, $name:literal)* $(,)?) => {
        [
            ($first, concat!("{\"", $first, "\":"), concat!($first, "=")),
            $(($name, concat!(",\"", $name, "\":"), concat!(" ", $name, "="))),*
        ]
    };
}

/// The fields in the order [`Record::line`] writes them.
const KEYS: [(&str, &str, &str); 18] = keys!(
    "time",
    "request_id",
    "client",
    "method",
    "authority",
    "path",
    "protocol",
    "status",
    "grpc_status",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream",
    "version",
    "role",
    "attempts",
    "flags",
    "trace_id",
);

/// A line being written, in JSON or logfmt.
struct Line {
    out: String,
    json: bool,
    /// The next field's place in [`KEYS`].
    next: usize,
}

impl Line {
    fn json() -> Self {
        Self {
            out: String::with_capacity(512),
            json: true,
            next: 0,
        }
    }

    fn logfmt() -> Self {
        Self {
            out: String::with_capacity(448),
            json: false,
            next: 0,
        }
    }

    fn key(&mut self, name: &str) {
        let (expected, json, text) = KEYS[self.next];
        debug_assert_eq!(expected, name, "fields out of order");
        self.next += 1;
        self.out.push_str(if self.json { json } else { text });
    }

    /// The quote around a JSON string value (nothing in logfmt).
    fn quote(&mut self) {
        if self.json {
            self.out.push('"');
        }
    }

    /// A value that needs no escaping (protocol names): quoted in JSON only.
    fn plain(&mut self, name: &str, value: &str) {
        self.key(name);
        self.quote();
        self.out.push_str(value);
        self.quote();
    }

    /// Any string: escaped and quoted in JSON, bare in logfmt when plain.
    fn string(&mut self, name: &str, value: &str) {
        self.key(name);
        if self.json {
            json_string(&mut self.out, value);
        } else {
            logfmt_value(&mut self.out, value);
        }
    }

    fn text_or_null(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(value) => self.string(name, value),
            None => self.null(name),
        }
    }

    fn null(&mut self, name: &str) {
        self.key(name);
        self.out.push_str(if self.json { "null" } else { "-" });
    }

    fn number(&mut self, name: &str, n: u64) {
        self.key(name);
        push_u64(&mut self.out, n);
    }

    /// Milliseconds with three decimals (microsecond resolution).
    fn millis(&mut self, name: &str, duration: Duration) {
        self.key(name);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        push_u64(&mut self.out, micros / 1000);
        self.out.push('.');
        push_padded(&mut self.out, micros % 1000, 3);
    }

    fn addr(&mut self, name: &str, addr: &SocketAddr) {
        self.key(name);
        self.quote();
        match addr {
            SocketAddr::V4(v4) => {
                for (i, octet) in v4.ip().octets().iter().enumerate() {
                    if i > 0 {
                        self.out.push('.');
                    }
                    push_u64(&mut self.out, u64::from(*octet));
                }
                self.out.push(':');
                push_u64(&mut self.out, u64::from(v4.port()));
            }
            // Rare enough for `fmt`.
            SocketAddr::V6(v6) => {
                let _ = write!(self.out, "{v6}");
            }
        }
        self.quote();
    }

    fn finish(mut self) -> String {
        debug_assert_eq!(self.next, KEYS.len(), "every field written");
        if self.json {
            self.out.push('}');
        }
        self.out.push('\n');
        self.out
    }
}

/// `n` in decimal.
fn push_u64(out: &mut String, n: u64) {
    if n < 10 {
        out.push(char::from(b'0' + n as u8));
        return;
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    while n > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for digit in &digits[i..] {
        out.push(char::from(*digit));
    }
}

/// `n` in decimal, zero-padded to `width` digits (at most 20).
fn push_padded(out: &mut String, n: u64, width: u32) {
    let mut unit = 10u64.pow(width.min(19).saturating_sub(1));
    while unit > 0 {
        out.push(char::from(b'0' + (n / unit % 10) as u8));
        unit /= 10;
    }
}

/// `s` as a JSON string: quotes, backslashes and control characters escaped.
fn json_string(out: &mut String, s: &str) {
    // Nearly every value (paths, IDs, versions) needs no escape: one scan, one copy.
    if !s
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A logfmt value: bare when it is plain, else quoted with JSON's escapes.
fn logfmt_value(out: &mut String, s: &str) {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if plain {
        out.push_str(s);
    } else {
        json_string(out, s);
    }
}

/// `time` as `2026-12-04T15:00:00.123456Z` (proleptic Gregorian, UTC; Howard Hinnant's
/// days-to-civil algorithm, so no calendar crate is needed).
pub fn rfc3339(time: SystemTime) -> String {
    let mut out = String::with_capacity(27);
    push_time(&mut out, time);
    out
}

/// `time` as RFC 3339 in UTC with microseconds, appended to `out`.
fn push_time(out: &mut String, time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    push_padded(out, u64::try_from(year).unwrap_or(0), 4);
    out.push('-');
    push_padded(out, month as u64, 2);
    out.push('-');
    push_padded(out, day as u64, 2);
    out.push('T');
    push_padded(out, rem / 3600, 2);
    out.push(':');
    push_padded(out, rem % 3600 / 60, 2);
    out.push(':');
    push_padded(out, rem % 60, 2);
    out.push('.');
    push_padded(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

/// tidegate's own 502/503/504, logged at `warn` with the access log's fields whether or not
/// access logs are on: at most [`OwnErrors::PER_SECOND`] lines a second, the rest counted and
/// reported with the next line that gets through, so a storm cannot flood the log.
pub struct OwnErrors {
    /// The second (since `epoch`) the count below belongs to.
    second: AtomicU64,
    /// Lines in that second.
    lines: AtomicU64,
    /// Lines suppressed since the last one written.
    suppressed: AtomicU64,
    epoch: Instant,
}

impl Default for OwnErrors {
    fn default() -> Self {
        Self {
            second: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl OwnErrors {
    pub const PER_SECOND: u64 = 10;

    /// Logs `record` (an answer of tidegate's own, of `kind`) unless this second's lines are used up.
    pub fn warn(&self, record: &Record, kind: &str) {
        // Relaxed throughout: an approximate rate is enough; nothing is published through these.
        let now = self.epoch.elapsed().as_secs();
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.lines.store(0, Ordering::Relaxed);
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) >= Self::PER_SECOND {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        let upstream = record.upstream.as_deref();
        tracing::warn!(
            status = record.status,
            error = kind,
            request_id = record.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            client = %record.client,
            method = %record.method,
            authority = record.authority(),
            path = record.uri.path(),
            protocol = record.protocol(),
            upstream = %upstream.map_or_else(|| "-".to_owned(), |e| e.address().to_string()),
            version = upstream.map_or("-", |e| e.version().as_str()),
            role = record.role.map_or("-", Role::as_str),
            attempts = record.attempts,
            flags = %record.flags.names(),
            duration_ms = record.duration.as_secs_f64() * 1000.0,
            trace_id = record.trace_id.as_deref().unwrap_or("-"),
            suppressed,
            "tidegate answered the request itself"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let mut record = Record::arriving(
            Instant::now(),
            "127.0.0.1:5000".parse().unwrap(),
            Method::POST,
            "/items?token=secret".parse().unwrap(),
            Some(HeaderValue::from_static("shop.example")),
            Version::HTTP_11,
        );
        record.request_id = Some(HeaderValue::from_static("abc"));
        record.status = 502;
        record.bytes_received = 12;
        record.bytes_sent = 34;
        record.duration = Duration::from_micros(1500);
        record.role = Some(Role::Canary);
        record.attempts = 2;
        record.flags = Flags(Flags::RETRIED.0 | Flags::UPSTREAM_RESET.0);
        record
    }

    #[test]
    fn json_lines_carry_every_field_and_leave_the_query_out_unless_asked() {
        let line = record().json(false);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/items");
        assert_eq!(v["authority"], "shop.example");
        assert_eq!(v["status"], 502);
        assert_eq!(v["flags"], "UR,RT");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["role"], "canary");
        assert!(v["upstream"].is_null() && v["grpc_status"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 18);
        let with_query: serde_json::Value = serde_json::from_str(&record().json(true)).unwrap();
        assert_eq!(with_query["path"], "/items?token=secret");
    }

    #[test]
    fn text_lines_quote_what_needs_it() {
        let mut r = record();
        r.request_id = Some(HeaderValue::from_static("has space"));
        let line = r.text(false);
        assert!(line.contains("request_id=\"has space\""), "{line}");
        assert!(line.contains(" status=502 "), "{line}");
        assert!(line.contains(" upstream=- "), "{line}");
        assert!(line.ends_with("trace_id=-\n"), "{line}");
    }

    #[test]
    fn json_strings_escape_quotes_and_control_characters() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\n\u{1}");
        assert_eq!(out, r#""a\"b\\c\n\u0001""#);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400) + Duration::from_micros(7);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000007Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_796_396_399);
        assert_eq!(rfc3339(later), "2026-12-04T14:59:59.000000Z");
    }
}
