//! Entry points for the fuzzers in `fuzz/` (built with `--cfg fuzzing`) and for the regression
//! tests of what they found: each feeds arbitrary bytes to one parser that reads untrusted input
//! and must return, never panic or hang.

use http::header::{HeaderMap, HeaderValue, COOKIE};
use http::Method;
use std::path::Path;

use crate::upstream::{framing, h1};

/// Bytes as an endpoint's answer to a GET (or, if the first byte is odd, a HEAD): head, framing,
/// chunked decoding and trailers, as the lean upstream path reads them.
pub fn upstream_response(data: &[u8]) {
    let method = match data.first() {
        Some(b) if b % 2 == 1 => Method::HEAD,
        _ => Method::GET,
    };
    if let Ok((response, _)) = h1::read_response(data, &method, framing::DEFAULT_MAX_HEADERS) {
        // What the parser accepted must satisfy the policy hyper's path is checked against.
        let mut response = response.map(|_| ());
        let _ = framing::check(&mut response, false);
    }
}

/// Bytes as a config file.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse(text, Path::new("fuzz.yaml"));
    }
}

/// Bytes as the canary weight annotation's value.
pub fn canary_annotation(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(weight) = crate::canary::parse_annotation(text) {
            assert!((0.0..=100.0).contains(&weight.percent()), "{text:?}");
        }
    }
}

/// Bytes as a request's `Cookie` header value(s), split at NUL into several headers.
pub fn sticky_cookie(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for value in data.split(|b| *b == 0) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(COOKIE, value);
        }
    }
    let _ = crate::pick::sticky::pinned_version(&headers);
}

#[cfg(test)]
mod regressions;
