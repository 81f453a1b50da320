//! Arbitrary bytes (when UTF-8) as the canary weight annotation's value to `tidegate::canary::parse_annotation`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tidegate::fuzzing::canary_annotation(data);
});
