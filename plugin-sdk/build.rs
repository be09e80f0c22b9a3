//! Chooses which host the capability wrappers talk to: the real host imports on wasm32, or the
//! in-memory fakes of the `testing` feature on a native target (so `cargo test` runs plugin logic
//! without a server). A wasm32 build never uses the fakes, even when the feature is on.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(fake_host)");
    let testing = std::env::var_os("CARGO_FEATURE_TESTING").is_some();
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32");
    if testing && !wasm {
        println!("cargo::rustc-cfg=fake_host");
    }
}
