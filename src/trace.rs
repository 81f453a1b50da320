//! Request IDs and W3C Trace Context at the proxy hop.
//!
//! A request keeps the `x-request-id` its client sent when it is a plausible ID, or gets a random
//! 128-bit one; the ID goes upstream and, when configured, back to the client. A request with a
//! valid `traceparent` goes upstream as a child: same trace ID and sampled flag, tidegate's own span
//! ID as the parent (`tracestate` passes through as it came); a request without one may start a
//! trace (`tracing.start`). Pure header work: no I/O, no locks; span export is [`otlp`]'s.

pub mod otlp;

use std::cell::RefCell;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};

/// `request_id:` in the config.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestIdConfig {
    pub header: HeaderName,
    /// Also answer the client with the ID.
    pub respond: bool,
}

/// When tidegate starts a trace for a request that carries none (`tracing.start`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Start {
    #[default]
    Never,
    Always,
    /// This share of requests, 0 to 1.
    Ratio(f64),
}

/// `tracing:` in the config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TracingConfig {
    pub start: Start,
    /// Where sampled spans are exported (OTLP/HTTP, protobuf); none when unset.
    pub otlp: Option<otlp::OtlpConfig>,
}

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The longest request ID kept from a client.
const MAX_REQUEST_ID: usize = 128;

/// A client's request ID is kept when it is 1 to 128 characters of letters, digits and
/// `-_.:/+=@`: enough for UUIDs, ULIDs and most tracing systems' IDs, and safe in any log format.
pub fn valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// A generated request ID's length: 128 bits in hex.
const REQUEST_ID_LEN: usize = 32;

/// Generated IDs per block (2 KiB): a block is freed once the last of its IDs is.
const REQUEST_IDS_PER_BLOCK: usize = 64;

thread_local! {
    /// Where this thread cuts its generated request IDs from. Each ID would otherwise be two
    /// allocations (its bytes, and the shared header its first clone makes), on every request
    /// that arrives without one.
    static REQUEST_ID_BLOCK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A fresh random 128-bit ID as 32 lowercase hex digits.
pub fn new_request_id() -> HeaderValue {
    let mut hex = [0u8; REQUEST_ID_LEN];
    write_hex(&fastrand::u128(..).to_be_bytes(), &mut hex);
    let id = REQUEST_ID_BLOCK.with_borrow_mut(|block| {
        if block.capacity() - block.len() < REQUEST_ID_LEN {
            *block = BytesMut::with_capacity(REQUEST_ID_LEN * REQUEST_IDS_PER_BLOCK);
        }
        block.extend_from_slice(&hex);
        block.split().freeze()
    });
    HeaderValue::from_maybe_shared(id).expect("hex digits are a valid header value")
}

/// The request's ID: the client's when valid, else a new one, written into `headers`.
pub fn ensure_request_id(headers: &mut HeaderMap, name: &HeaderName) -> HeaderValue {
    if let Some(id) = headers.get(name).filter(|v| valid_request_id(v)) {
        return id.clone();
    }
    let id = new_request_id();
    headers.insert(name.clone(), id.clone());
    id
}

/// A trace ID: 16 bytes, never all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// A span ID: 8 bytes, never all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    fn random() -> Self {
        loop {
            let id = fastrand::u128(..);
            if id != 0 {
                return Self(id.to_be_bytes());
            }
        }
    }

    pub fn hex(&self) -> String {
        let mut out = [0u8; 32];
        write_hex(&self.0, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl SpanId {
    fn random() -> Self {
        loop {
            let id = fastrand::u64(..);
            if id != 0 {
                return Self(id.to_be_bytes());
            }
        }
    }
}

/// tidegate's span of one request: its place in the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    /// tidegate's own span, the upstream request's parent.
    pub span_id: SpanId,
    /// The client's span, if the client sent a `traceparent`.
    pub parent: Option<SpanId>,
    pub sampled: bool,
}

/// A valid `traceparent` (version 00 layout; higher versions are read by that layout, as the
/// spec asks): (trace ID, parent span ID, flags).
pub fn parse_traceparent(value: &HeaderValue) -> Option<(TraceId, SpanId, u8)> {
    let v = value.as_bytes();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    // Version ff is invalid; version 00 has exactly 55 characters; later ones may append fields
    // after another dash.
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut trace = [0u8; 16];
    for (i, byte) in trace.iter_mut().enumerate() {
        *byte = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span = [0u8; 8];
    for (i, byte) in span.iter_mut().enumerate() {
        *byte = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((TraceId(trace), SpanId(span), flags))
}

/// Lowercase hex only, as the spec requires.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// The `traceparent` tidegate sends upstream for `span`.
pub fn traceparent(span: &SpanContext) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    write_hex(&span.trace_id.0, &mut out[3..35]);
    write_hex(&span.span_id.0, &mut out[36..52]);
    write_hex(&[u8::from(span.sampled)], &mut out[53..55]);
    HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
}

/// Continues the client's trace, or starts one per `start`; rewrites `traceparent` in `headers`
/// for the upstream hop. `None`: the request is not traced.
pub fn continue_or_start(headers: &mut HeaderMap, start: Start) -> Option<SpanContext> {
    // One lookup: most requests carry no `traceparent`, and then nothing is removed either.
    let sent = headers.get(&TRACEPARENT).map(parse_traceparent);
    let span = match sent {
        Some(Some((trace_id, parent, flags))) => SpanContext {
            trace_id,
            span_id: SpanId::random(),
            parent: Some(parent),
            sampled: flags & 1 == 1,
        },
        sent => {
            let start = match start {
                Start::Never => false,
                Start::Always => true,
                Start::Ratio(ratio) => fastrand::f64() < ratio,
            };
            if !start {
                // An invalid traceparent is not passed on as if it were one (nor its tracestate).
                if sent.is_some() {
                    headers.remove(&TRACEPARENT);
                    headers.remove(HeaderName::from_static("tracestate"));
                }
                return None;
            }
            SpanContext {
                trace_id: TraceId::random(),
                span_id: SpanId::random(),
                parent: None,
                sampled: true,
            }
        }
    };
    headers.insert(TRACEPARENT, traceparent(&span));
    Some(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_child_keeps_the_trace_and_the_sampled_flag_with_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(CLIENT));
        headers.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        let span = continue_or_start(&mut headers, Start::Never).unwrap();
        assert_eq!(span.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            span.parent,
            Some(SpanId(0x00f0_67aa_0ba9_02b7u64.to_be_bytes()))
        );
        assert!(span.sampled);
        let sent = headers[&TRACEPARENT].to_str().unwrap().to_owned();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"));
        assert_ne!(&sent[36..52], "00f067aa0ba902b7", "tidegate's own span");
        assert_eq!(headers["tracestate"], "congo=t61rcWkgMzE");
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(
                parse_traceparent(&HeaderValue::from_static(bad)).is_none(),
                "{bad}"
            );
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert!(parse_traceparent(&HeaderValue::from_static(later)).is_some());
    }

    #[test]
    fn an_invalid_traceparent_goes_no_further_nor_its_tracestate() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("00-nonsense"));
        headers.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        assert!(continue_or_start(&mut headers, Start::Never).is_none());
        assert!(headers.get(TRACEPARENT).is_none());
        assert!(headers.get("tracestate").is_none());
        assert_eq!(
            headers.len(),
            1,
            "only the traceparent and its tracestate go"
        );
    }

    #[test]
    fn without_a_traceparent_a_trace_starts_only_when_asked() {
        let mut headers = HeaderMap::new();
        assert!(continue_or_start(&mut headers, Start::Never).is_none());
        assert!(headers.get(TRACEPARENT).is_none());
        assert!(continue_or_start(&mut headers, Start::Ratio(0.0)).is_none());
        let span = continue_or_start(&mut headers, Start::Always).unwrap();
        assert!(span.sampled && span.parent.is_none());
        let (trace, parent, flags) = parse_traceparent(&headers[&TRACEPARENT]).unwrap();
        assert_eq!((trace, parent, flags), (span.trace_id, span.span_id, 1));
    }

    #[test]
    fn request_ids_are_kept_when_plausible_and_generated_otherwise() {
        let name = HeaderName::from_static("x-request-id");
        let mut headers = HeaderMap::new();
        headers.insert(&name, HeaderValue::from_static("req-123_abc.def"));
        assert_eq!(ensure_request_id(&mut headers, &name), "req-123_abc.def");
        for bad in ["", "has space", "quote\"d", &"x".repeat(129)] {
            headers.insert(&name, HeaderValue::from_str(bad).unwrap());
            let id = ensure_request_id(&mut headers, &name);
            assert_eq!(id.len(), 32, "{bad:?} replaced");
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert_eq!(headers[&name], id);
        }
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn generated_request_ids_stay_whole_across_blocks() {
        let ids: Vec<HeaderValue> = (0..REQUEST_IDS_PER_BLOCK * 3 + 1)
            .map(|_| new_request_id())
            .collect();
        for id in &ids {
            assert_eq!(id.len(), REQUEST_ID_LEN);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
