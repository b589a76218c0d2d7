//! `cargo fuzz run sigv4`: see docs/fuzzing.md and `tollgate::fuzzing::sigv4`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::sigv4(data));
