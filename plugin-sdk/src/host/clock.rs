//! The wall clock. Needs `grants = ["clock"]`; calling it makes the component import
//! `wasmtp:plugin/clock`. (WASI clocks are not linked by the server: use this.)

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    #[cfg(not(fake_host))]
    return crate::bindings::wasmtp::plugin::clock::now();
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.now_millis);
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_millis() / 1000
}
