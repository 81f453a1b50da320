//! Arbitrary bytes (when UTF-8) as a YAML config file to `tidegate::config::Config::parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tidegate::fuzzing::config(data);
});
