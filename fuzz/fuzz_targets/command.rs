#![no_main]

//! `wasmtp::fuzz::command`; seeds in fuzz/corpus/command.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmtp::fuzz::command(data));
