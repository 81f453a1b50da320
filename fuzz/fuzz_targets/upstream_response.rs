//! Arbitrary bytes as an upstream's HTTP/1.1 response to `tidegate::upstream::h1::read_response` (head, framing, chunked body, trailers).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tidegate::fuzzing::upstream_response(data);
});
