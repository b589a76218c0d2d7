//! `cargo fuzz run jwt`: see docs/fuzzing.md and `tollgate::fuzzing::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::jwt(data));
