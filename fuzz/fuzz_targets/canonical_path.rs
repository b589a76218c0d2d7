//! `cargo fuzz run canonical_path`: see docs/fuzzing.md and `tollgate::fuzzing::canonical_path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::canonical_path(data));
