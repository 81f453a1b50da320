//! Inputs the fuzzers found interesting, and hand-picked edge cases: each entry point must return
//! on every one of them. "Fuzzer" marks an input taken from a `fuzz/` campaign's corpus as found.

use super::*;

#[test]
fn upstream_responses_that_once_broke_or_nearly_broke_the_parser() {
    let inputs: &[&[u8]] = &[
        b"",
        b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n:\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
        // Fuzzer: a leading CRLF is the only way to an odd first byte (a HEAD) that httparse still
        // accepts (it skips empty lines); a bare LF ends the head.
        b"\r\nHTTP/1.1 205\n\r\n\x88mllo",
        // Fuzzer: informational heads in a row, bare-LF line ends, then an unfinished head.
        b"HTTP/1.0 199\n\nHTTP/1.0 199\n\nHTTP/1.1 100\n\n\r\n",
        // Fuzzer: a Content-Length list whose second item is not a number.
        b"HTTP/1.1 200 \nContent-Length:06,  od\n\n",
        // A Content-Length list of equal values with a leading zero, folded to one value.
        b"HTTP/1.1 200 \r\nContent-Length:06, 6\r\n\r\n012345",
        // Fuzzer: whitespace and an extension after the last chunk's size, then a trailer line
        // without a colon.
        b"HTTP/1.1 200 r\r\nTransfer-Encoding: chunked\r\ne: \r\n\r\n0 \t;ext=1\r\nhel\r\n",
        // Fuzzer: a bare LF inside a trailer line.
        b"HTTP/1.1 201 Server: n\r\nTransfer-Encoding: chunked\r\nTrailer:-chksum\r\n\r\n5;ext=1\r\nhwxyz\r\n0\r\nmH\xa5TP/1.1 204Ar: a \rc\n\r\n",
        // Fuzzer: an unsolicited 101 whose Connection lists an empty token and obs-text.
        b"HTTP/1.1 101 ed\r\nConnection:,a:\xe0 \n\n",
        // Fuzzer: HTTP/1.0, a Connection naming other headers, a body until close.
        b"HTTP/1.0 200 OK\nConnection:e,, 1\r\n\r\nabc",
    ];
    for input in inputs {
        upstream_response(input);
    }
    // Found by reading the code, not by the fuzzer (its inputs stay under 4 KiB), and confirmed
    // with the fuzz binary: more than 24 576 distinct trailer field names (about 188 KiB)
    // overflowed `HeaderMap`'s capacity and `HeaderMap::append` panicked ("size overflows
    // MAX_SIZE"), in the proxy's response body too. Trailers are now bounded like a head (64 KiB).
    let mut many_trailers = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n".to_vec();
    for i in 0..24_577 {
        many_trailers.extend_from_slice(format!("t{i:x}:\r\n").as_bytes());
    }
    many_trailers.extend_from_slice(b"\r\n");
    upstream_response(&many_trailers);
}

#[test]
fn configs_never_panic() {
    // Not replayed here: 100 000 `[` take over 10 s in the YAML scanner under the fuzzer (about
    // 0.1 ms per nesting level); a config file is bounded at 1 MiB.
    let inputs: &[&[u8]] = &[
        // Found by the fuzzer as an out-of-memory: the token file was read without bound. Token
        // files are now read up to 4 KiB and config files up to 1 MiB.
        b"admin: { token_file: /dev/zero }\ndiscovery: { static: { endpoints: [] } }",
        b"",
        b"listen: [",
        b"discovery: { static: { endpoints: [{}] } }",
        // Fuzzer: unclosed flow sequences nested 34 deep.
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        // Fuzzer: anchors on keys, aliases as keys.
        b"&b:%&i1:\n&i1enc:\nc:\n&c:\n&b:\n&i1c:\n&ih::\n\n&i:\n*c:\n&ih&i\n",
        // Fuzzer: a verbatim tag opening nested flow sequences.
        b"!<[a0![[w[[[[[[[[[~[[[[[[[[[[[[[[[[[[[[[",
        // Fuzzer: token_file as a broken mapping.
        b"admin:\n token_file: r: afy0",
        // Fuzzer: null and a document marker.
        b"health_check: ~",
        b"---1",
        // Numbers out of every field's range.
        b"timeouts: { connect: 99999999999999999999999999h }\ndiscovery: { static: { endpoints: [] } }",
        b"retries: { max_replay_body: 99999999999999999999999MiB }\ndiscovery: { static: { endpoints: [] } }",
        b"canary: { version: v2, weight: .nan }\ndiscovery: { static: { endpoints: [] } }",
        b"discovery: { kubernetes: { service: web, port: 99999999999 } }",
        b"upstream: { max_response_headers: 1e300 }\ndiscovery: { static: { endpoints: [] } }",
    ];
    for input in inputs {
        config(input);
    }
}

#[test]
fn canary_annotations_never_panic() {
    let inputs: &[&[u8]] = &[
        b"1e308",
        b"NaN",
        b"-0",
        b"100%",
        b"inf",
        // Fuzzer: every trailing `%` is stripped, so this is 5.
        b"5%%%",
        b"2.%",
        // Fuzzer: Unicode whitespace (ideographic space, NBSP, line separator) is trimmed; a
        // format character (U+202D) and NUL are not.
        b"5\xe3\x80\x80\xe3\x80\x80",
        b"\xc2\xa0\xc2\xa0",
        b"\xe2\x80\xa8\xe2\x80\xad",
        b"\x00\r\r\r",
        // Underflows to 0; just above 100; rounds to exactly 100.
        b"1e-400",
        b"100.00000000000001",
        b"100.0000000000000001",
    ];
    for input in inputs {
        canary_annotation(input);
    }
}

#[test]
fn sticky_cookies_never_panic() {
    let inputs: &[&[u8]] = &[
        b"tidegate-version",
        b"=;=;tidegate-version=\0a=b",
        // Fuzzer: an empty value; a near-miss name in one header and the bare name in another.
        b"tidegate-version=",
        b"xtigate-lversion+=bc\0tidv9;tidegate-version",
        // A header that is not visible ASCII is skipped, the next one read.
        b"\xfftidegate-version=v1\0tidegate-version=v2",
        // A value holding `=`, tabs around the pair, a space before the `=`.
        b"tidegate-version=a=b",
        b"\ttidegate-version=\tv2\t",
        b" ; ;tidegate-version =v2",
    ];
    for input in inputs {
        sticky_cookie(input);
    }
}
