#![no_main]

//! `wasmtp::fuzz::address`; seeds in fuzz/corpus/address.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmtp::fuzz::address(data));
