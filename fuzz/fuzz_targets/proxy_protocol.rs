//! `cargo fuzz run proxy_protocol`: see docs/fuzzing.md and `tollgate::fuzzing::proxy_protocol`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::proxy_protocol(data));
