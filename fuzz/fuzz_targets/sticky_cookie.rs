//! Arbitrary bytes, split at NUL into `Cookie` headers, to `tidegate::pick::sticky::pinned_version`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tidegate::fuzzing::sticky_cookie(data);
});
