//! Inputs the fuzzers found interesting, and hand-picked edge cases: each entry point must return
//! on every one of them.

use super::*;

#[test]
fn upstream_responses_that_once_broke_or_nearly_broke_the_parser() {
    let inputs: &[&[u8]] = &[
        b"",
        b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n:\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
    ];
    for input in inputs {
        upstream_response(input);
    }
}

#[test]
fn configs_annotations_and_cookies_never_panic() {
    for input in [
        &b""[..],
        b"listen: [",
        b"discovery: { static: { endpoints: [{}] } }",
    ] {
        config(input);
    }
    for input in [&b"1e308"[..], b"NaN", b"-0", b"100%", b"inf"] {
        canary_annotation(input);
    }
    for input in [&b"tidegate-version"[..], b"=;=;tidegate-version=\0a=b"] {
        sticky_cookie(input);
    }
}
