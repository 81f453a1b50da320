//! The one framing policy for upstream responses (RFC 9112 §6), shared by both HTTP/1.1 paths:
//! the lean exchange in [`super::h1`] applies it while parsing, and a response from hyper's client
//! is checked against it with [`check`]. Whatever either path would otherwise let through, a
//! response that breaks it is a protocol error (502) and its connection is never reused.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode, Version};

/// A response head is refused beyond this size, on both paths.
pub const MAX_HEAD: usize = 64 * 1024 - 1;

/// Response header lines allowed by default (`upstream.max_response_headers`), as hyper's own
/// default.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// The most `upstream.max_response_headers` may be set to.
pub const MAX_HEADERS_LIMIT: usize = 256;

/// A Content-Length field's value: plain decimal digits, or a list of equal ones (a repeated
/// field folded by an intermediary). A sign, spaces inside, hex or an overflow is not a length
/// (RFC 9110 §8.6); `None` then, and the response is refused.
pub fn content_length(value: &[u8], seen: Option<u64>) -> Option<u64> {
    let mut length = seen;
    for part in value.split(|b| *b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits.iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Why a response breaks the policy.
pub type Violation = &'static str;

/// The checks that hyper's client leaves to us, on a response it parsed: a `101` that nobody
/// asked for, and `Content-Length` beside `Transfer-Encoding` (RFC 9112 §6.3 allows removing the
/// length, but it marks a confused or smuggling upstream, so this proxy refuses it as nginx does).
/// A valid `Content-Length` list of equal values is folded to one value, as the lean path sends it.
pub fn check<B>(response: &mut Response<B>, upgrade_requested: bool) -> Result<(), Violation> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS && !upgrade_requested {
        return Err("unsolicited 101 response");
    }
    let headers = response.headers_mut();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err("content-length and transfer-encoding together");
        }
        return Ok(());
    }
    fold_content_length(headers);
    Ok(())
}

/// Several Content-Length values that agree (hyper has checked that) become one.
fn fold_content_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), more) = (values.next(), values.next().is_some()) else {
        return;
    };
    if !more && !first.as_bytes().contains(&b',') {
        return;
    }
    if let Some(n) = content_length(first.as_bytes(), None) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// Transfer-Encoding on an HTTP/1.0 response is faulty framing (RFC 9112 §6.1).
pub fn coding_allowed(version: Version) -> bool {
    version != Version::HTTP_10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"5", None), Some(5));
        assert_eq!(content_length(b" 5 ", None), Some(5));
        assert_eq!(content_length(b"5, 5", None), Some(5));
        assert_eq!(content_length(b"5", Some(5)), Some(5));
        for bad in [
            &b"+5"[..],
            b"-5",
            b"0x5",
            b"5 5",
            b"5, 6",
            b"",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad, None), None, "{bad:?}");
        }
        assert_eq!(content_length(b"6", Some(5)), None, "differing values");
    }

    #[test]
    fn hyper_responses_get_the_same_checks() {
        let response = |headers: &[(&str, &str)], status: u16| {
            let mut r = Response::builder().status(status);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.body(()).unwrap()
        };
        let both = [("content-length", "3"), ("transfer-encoding", "chunked")];
        assert!(check(&mut response(&both, 200), false).is_err());
        assert!(check(&mut response(&[], 101), false).is_err());
        assert!(check(&mut response(&[], 101), true).is_ok());
        let mut folded = response(&[("content-length", "5, 5")], 200);
        assert!(check(&mut folded, false).is_ok());
        assert_eq!(folded.headers()["content-length"], "5");
        let mut repeated = response(&[("content-length", "5"), ("content-length", "5")], 200);
        assert!(check(&mut repeated, false).is_ok());
        assert_eq!(
            repeated.headers().get_all("content-length").iter().count(),
            1
        );
    }
}
