#![no_main]

//! A whole session fed the input as client bytes (`wasmtp::fuzz::SessionHarness`);
//! seeds in fuzz/corpus/session. The server context is built once per
//! process, with its data in a scratch directory under the system temp dir.

use wasmtp::fuzz::SessionHarness;

thread_local! {
    static HARNESS: SessionHarness = {
        let dir = std::env::temp_dir().join(format!("wasmtp-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        SessionHarness::new(&dir)
    };
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| HARNESS.with(|h| drop(h.run(data))));
