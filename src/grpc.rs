//! gRPC as a proxy sees it: which requests are gRPC calls, the status a call ended with, which
//! statuses count as the endpoint's failure, the client's deadline, and the trailers-only answer
//! tidegate gives a gRPC client when it cannot forward. Pure functions over headers; no I/O.

use std::fmt;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A gRPC status code: the closed set 0..=16 (an out-of-range value is `UNKNOWN`, as the gRPC
/// spec says a client must treat it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Code(u8);

impl Code {
    pub const OK: Code = Code(0);
    pub const CANCELLED: Code = Code(1);
    pub const UNKNOWN: Code = Code(2);
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    pub const INTERNAL: Code = Code(13);
    pub const UNAVAILABLE: Code = Code(14);
    pub const DATA_LOSS: Code = Code(15);

    /// How many codes there are: an index bound for per-code handle arrays.
    pub const COUNT: usize = 17;

    const NAMES: [&'static str; Code::COUNT] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    const LABELS: [&'static str; Code::COUNT] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];

    /// The code a `grpc-status` value carries.
    pub fn from_header(value: &HeaderValue) -> Code {
        let code = std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok());
        match code {
            Some(n) if usize::from(n) < Code::COUNT => Code(n),
            _ => Code::UNKNOWN,
        }
    }

    /// A code by its canonical name (`UNAVAILABLE`), as configuration spells it.
    pub fn from_name(name: &str) -> Option<Code> {
        Code::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .map(|i| Code(i as u8))
    }

    /// The code's number, as `grpc-status` carries it.
    pub fn number(self) -> u16 {
        u16::from(self.0)
    }

    pub fn name(self) -> &'static str {
        Code::NAMES[self.index()]
    }

    /// The metric label: the number, as `grpc-status` carries it.
    pub fn label(self) -> &'static str {
        Code::LABELS[self.index()]
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of status codes: those that count as the endpoint's failure (outlier ejection, the
/// canary's abort rate; the others are the application answering, `NOT_FOUND` is a fine answer),
/// or those a trailers-only answer is retried on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Codes(u32);

impl Codes {
    pub fn new(codes: impl IntoIterator<Item = Code>) -> Self {
        Self(codes.into_iter().fold(0, |set, code| set | 1 << code.0))
    }

    pub fn contains(self, code: Code) -> bool {
        self.0 & (1 << code.0) != 0
    }

    pub fn codes(self) -> impl Iterator<Item = Code> {
        (0..Code::COUNT as u8)
            .map(Code)
            .filter(move |c| self.contains(*c))
    }
}

impl Codes {
    /// The server-side failures: `UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNAVAILABLE`,
    /// `DATA_LOSS` (`grpc.failure_codes` unless configured).
    pub fn failures() -> Self {
        Self::new([
            Code::UNKNOWN,
            Code::DEADLINE_EXCEEDED,
            Code::INTERNAL,
            Code::UNAVAILABLE,
            Code::DATA_LOSS,
        ])
    }
}

/// Whether a request (or response) is gRPC: `content-type: application/grpc` or
/// `application/grpc+proto` and the like.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

fn is_grpc_content_type(value: &[u8]) -> bool {
    const PREFIX: &[u8] = b"application/grpc";
    value.len() >= PREFIX.len()
        && value[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(value.get(PREFIX.len()), None | Some(b'+' | b';'))
}

/// The status a gRPC response or its trailers carry, if any.
pub fn status(headers: &HeaderMap) -> Option<Code> {
    headers.get(GRPC_STATUS).map(Code::from_header)
}

/// The client's deadline from `grpc-timeout` (gRPC over HTTP/2: up to 8 digits and a unit).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The headers of a trailers-only response (gRPC over HTTP/2): HTTP 200, the status and a
/// percent-encoded message, as Envoy answers when it cannot reach an upstream.
pub fn trailers_only(code: Code, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, HeaderValue::from_static(code.label()));
    if let Ok(message) = HeaderValue::try_from(percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, message);
    }
    headers
}

/// `grpc-message` encoding: printable ASCII except `%` as is, every other byte as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.trim_end().bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn grpc_content_types_are_recognised_and_lookalikes_are_not() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is_grpc(&headers(&[("content-type", yes)])), "{yes}");
        }
        for no in ["application/grpcx", "application/json", "text/grpc"] {
            assert!(!is_grpc(&headers(&[("content-type", no)])), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn statuses_are_a_closed_set() {
        assert_eq!(
            status(&headers(&[("grpc-status", "14")])),
            Some(Code::UNAVAILABLE)
        );
        assert_eq!(status(&headers(&[("grpc-status", "0")])), Some(Code::OK));
        assert_eq!(
            status(&headers(&[("grpc-status", "99")])),
            Some(Code::UNKNOWN)
        );
        assert_eq!(
            status(&headers(&[("grpc-status", "x")])),
            Some(Code::UNKNOWN)
        );
        assert_eq!(status(&HeaderMap::new()), None);
        assert_eq!(Code::from_name("not_found").map(Code::index), Some(5));
        assert_eq!(Code::from_name("NOPE"), None);
    }

    #[test]
    fn default_failures_are_the_server_side_ones() {
        let failures = Codes::failures();
        let names: Vec<_> = failures.codes().map(Code::name).collect();
        assert_eq!(
            names,
            [
                "UNKNOWN",
                "DEADLINE_EXCEEDED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS"
            ]
        );
        assert!(!failures.contains(Code::from_name("NOT_FOUND").unwrap()));
    }

    #[test]
    fn grpc_timeout_units_parse_and_garbage_does_not() {
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("100u"), Some(Duration::from_micros(100)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn trailers_only_answers_carry_status_and_encoded_message() {
        let h = trailers_only(Code::UNAVAILABLE, "no ready endpoints: 100% gone\n");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-message"], "no ready endpoints: 100%25 gone");
    }
}
