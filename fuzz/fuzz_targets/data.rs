#![no_main]

//! `wasmtp::fuzz::data_decoder`; seeds in fuzz/corpus/data (the first byte
//! picks the size limit).

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmtp::fuzz::data_decoder(data));
