//! Builds the plugins the binary carries (`builtin:NAME` paths, see src/plugin/builtin.rs) from
//! plugins/ for wasm32-wasip2, so the embedded default config works wherever wasmtp is installed.
//!
//! Without the wasm32-wasip2 target (or with WASMTP_NO_BUILTIN_PLUGINS=1, or without plugins/,
//! as in a packaged crate) the binary has no built-in plugins and says so when a config names
//! one. With the target, a plugin that fails to build fails the build: a broken SDK or plugin
//! must not ship as a silently missing default.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(wasmtp_builtin)");
    println!("cargo::rerun-if-env-changed=WASMTP_NO_BUILTIN_PLUGINS");
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let plugins = root.join("plugins");
    for watched in [
        "plugins/spam-score",
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "plugin-sdk",
        "wit",
    ] {
        println!("cargo::rerun-if-changed={watched}");
    }
    let missing = |why: &str| {
        println!("cargo::warning=wasmtp is built without its built-in plugins: {why}");
        println!("cargo::rustc-env=WASMTP_BUILTIN_MISSING={why}");
    };
    if std::env::var_os("WASMTP_NO_BUILTIN_PLUGINS").is_some_and(|v| v != "0") {
        return missing("WASMTP_NO_BUILTIN_PLUGINS is set");
    }
    if !plugins.join("Cargo.toml").is_file() {
        return missing("the plugins/ sources are not there");
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    if !target_installed(Path::new(&rustc)) {
        return missing("the wasm32-wasip2 target is not installed");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    // One plugin target dir per profile (target/<profile>/builtin-plugins), shared by every
    // build of this package, so a changed build-script hash does not rebuild from scratch.
    let target_dir = out
        .ancestors()
        .nth(3)
        .map_or_else(|| out.join("plugins"), |p| p.join("builtin-plugins"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        "wasm32-wasip2",
        "-p",
        "spam-score",
    ])
    .arg("--manifest-path")
    .arg(plugins.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir);
    // The host build's flags and target are not the plugins'.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo for the built-in plugins");
    assert!(
        status.success(),
        "building the built-in plugins (plugins/spam-score for wasm32-wasip2) failed; \
         set WASMTP_NO_BUILTIN_PLUGINS=1 to build wasmtp without them"
    );
    let built = target_dir.join("wasm32-wasip2/release/spam_score.wasm");
    std::fs::copy(&built, out.join("spam_score.wasm"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
    println!("cargo::rustc-cfg=wasmtp_builtin");
    println!("cargo::rustc-env=WASMTP_BUILTIN_MISSING=");
}

/// Whether the toolchain building us has the wasm32-wasip2 standard library.
fn target_installed(rustc: &Path) -> bool {
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|dir| has_rlib(&dir))
}

fn has_rlib(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    })
}
