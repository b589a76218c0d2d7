//! `cargo fuzz run config_load`: see docs/fuzzing.md and `tollgate::fuzzing::config_load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::config_load(data));
