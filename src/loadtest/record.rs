//! One request's result as the engine reports it: outcome (a status, or why there was none),
//! latency, lateness and version; and the rules that classify errors and read versions.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};

/// Why a request got no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No TCP connection (refused: nothing listens there; or unreachable).
    Connect,
    /// The connection broke before the response was complete.
    Reset,
    /// No complete response within `--timeout`.
    Timeout,
    /// Not sent: no connection was free within `--timeout` of its intended start.
    Overdue,
    /// Anything else (an unparsable response, a handshake the server refused).
    Other,
}

/// What happened to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    Error(ErrorKind),
}

/// The classes of failure counted separately: a 5xx status, or a request with no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Status5xx,
    Error(ErrorKind),
}

impl FailureKind {
    /// In the order summaries and charts list them.
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Status5xx,
        FailureKind::Error(ErrorKind::Connect),
        FailureKind::Error(ErrorKind::Reset),
        FailureKind::Error(ErrorKind::Timeout),
        FailureKind::Error(ErrorKind::Overdue),
        FailureKind::Error(ErrorKind::Other),
    ];

    /// The name in summaries, JSON and charts.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Status5xx => "5xx",
            FailureKind::Error(ErrorKind::Connect) => "connect",
            FailureKind::Error(ErrorKind::Reset) => "reset",
            FailureKind::Error(ErrorKind::Timeout) => "timeout",
            FailureKind::Error(ErrorKind::Overdue) => "overdue",
            FailureKind::Error(ErrorKind::Other) => "other",
        }
    }

    /// Position in [`FailureKind::ALL`], for counting in arrays.
    pub fn index(self) -> usize {
        match self {
            FailureKind::Status5xx => 0,
            FailureKind::Error(ErrorKind::Connect) => 1,
            FailureKind::Error(ErrorKind::Reset) => 2,
            FailureKind::Error(ErrorKind::Timeout) => 3,
            FailureKind::Error(ErrorKind::Overdue) => 4,
            FailureKind::Error(ErrorKind::Other) => 5,
        }
    }
}

impl Outcome {
    /// A 5xx or no response is a failure; every other status (4xx included) is not.
    pub fn failure(self) -> Option<FailureKind> {
        match self {
            Outcome::Status(status) if status >= 500 => Some(FailureKind::Status5xx),
            Outcome::Status(_) => None,
            Outcome::Error(kind) => Some(FailureKind::Error(kind)),
        }
    }
}

/// Failures counted by kind; serialized as `{"5xx": n, "connect": n, ...}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureCounts([u64; FailureKind::ALL.len()]);

impl FailureCounts {
    pub fn get(&self, kind: FailureKind) -> u64 {
        self.0[kind.index()]
    }

    pub fn add(&mut self, kind: FailureKind) {
        self.0[kind.index()] += 1;
    }

    /// Failures of every kind.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Each kind with its count, in [`FailureKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (FailureKind, u64)> + '_ {
        FailureKind::ALL.iter().map(|&kind| (kind, self.get(kind)))
    }
}

impl serde::Serialize for FailureCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (kind, count) in self.iter() {
            map.serialize_entry(kind.as_str(), &count)?;
        }
        map.end()
    }
}

/// One request, as the engine hands it to the recorder.
#[derive(Clone, Debug)]
pub struct Record {
    /// Since the run started: when the request was meant to start.
    pub intended: Duration,
    /// Since the run started: when the outcome was known. The request counts in this second.
    pub done: Duration,
    /// From the intended start to `done`, less the load generator's own wake-up lag: what a user
    /// arriving on the schedule saw. Time waiting for a busy connection counts (no coordinated
    /// omission); the microseconds between a free connection's timer firing late and the send do
    /// not (they are `start_lag`).
    pub latency: Duration,
    /// From the actual send to `done`: the service time alone. `None` for a request never sent.
    pub service: Option<Duration>,
    /// How long after its intended start an on-time request was actually sent: the scheduler's
    /// own lateness, which must stay far below what is measured. `None` for late or unsent ones.
    pub start_lag: Option<Duration>,
    pub outcome: Outcome,
    pub late: bool,
    /// The version that answered, if the response said.
    pub version: Option<Bytes>,
}

/// Classifies a failed exchange on an established connection.
pub(super) fn classify(error: &hyper::Error) -> ErrorKind {
    if error.is_timeout() {
        return ErrorKind::Timeout;
    }
    if error.is_incomplete_message() || error.is_closed() || error.is_canceled() {
        return ErrorKind::Reset;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return classify_io(io);
        }
        source = cause.source();
    }
    ErrorKind::Other
}

/// Classifies an I/O error on an established connection.
pub(super) fn classify_io(error: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match error.kind() {
        Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof => {
            ErrorKind::Reset
        }
        Io::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

/// The value of `name`, if the response has it.
pub(super) fn version_from_header(headers: &HeaderMap, name: &HeaderName) -> Option<Bytes> {
    headers
        .get(name)
        .map(|value| Bytes::copy_from_slice(value.as_bytes()))
}

/// Capture group 1 of `regex` in `body`, or the whole match when the regex has no group.
pub(super) fn version_from_body(regex: &regex::bytes::Regex, body: &[u8]) -> Option<Bytes> {
    let captures = regex.captures(body)?;
    let found = captures.get(1).or_else(|| captures.get(0))?;
    Some(Bytes::copy_from_slice(found.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_hundreds_and_missing_responses_fail_other_statuses_do_not() {
        assert_eq!(Outcome::Status(200).failure(), None);
        assert_eq!(
            Outcome::Status(404).failure(),
            None,
            "a 4xx is an answer, not an outage"
        );
        assert_eq!(Outcome::Status(503).failure(), Some(FailureKind::Status5xx));
        assert_eq!(
            Outcome::Error(ErrorKind::Connect).failure(),
            Some(FailureKind::Error(ErrorKind::Connect))
        );
    }

    #[test]
    fn failure_kinds_index_their_position_and_have_distinct_names() {
        for (i, kind) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
        let mut names: Vec<_> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FailureKind::ALL.len());
    }

    #[test]
    fn io_errors_mid_exchange() {
        use std::io::{Error, ErrorKind as Io};
        assert_eq!(
            classify_io(&Error::from(Io::ConnectionReset)),
            ErrorKind::Reset
        );
        assert_eq!(classify_io(&Error::from(Io::BrokenPipe)), ErrorKind::Reset);
        assert_eq!(classify_io(&Error::from(Io::TimedOut)), ErrorKind::Timeout);
        assert_eq!(classify_io(&Error::from(Io::InvalidData)), ErrorKind::Other);
    }

    #[test]
    fn versions_from_a_header_or_the_body() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tidegate-version", "v2".parse().unwrap());
        let name = HeaderName::from_static("x-tidegate-version");
        assert_eq!(
            version_from_header(&headers, &name).as_deref(),
            Some(&b"v2"[..])
        );
        assert_eq!(
            version_from_header(&HeaderMap::new(), &name),
            None,
            "absent: unversioned"
        );

        let group = regex::bytes::Regex::new(r"v(\d+)").unwrap();
        let body = b"This is v10 running in pod kubia-7d5-x\n";
        assert_eq!(version_from_body(&group, body).as_deref(), Some(&b"10"[..]));
        let whole = regex::bytes::Regex::new(r"v\d+").unwrap();
        assert_eq!(
            version_from_body(&whole, body).as_deref(),
            Some(&b"v10"[..])
        );
        assert_eq!(version_from_body(&group, b"no version here"), None);
        assert_eq!(
            version_from_body(&group, b"\xff\xfe v3"),
            Some(Bytes::from_static(b"3")),
            "bodies need not be UTF-8"
        );
    }
}
