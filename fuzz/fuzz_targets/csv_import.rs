//! `cargo fuzz run csv_import`: see docs/fuzzing.md and `tollgate::fuzzing::csv_import`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::fuzzing::csv_import(data));
