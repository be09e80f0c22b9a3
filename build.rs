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
    embed_templates();
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
    // A new file, not the old one rewritten: a target dir whose files are hard links shared
    // with another checkout must not change under that checkout.
    let _ = std::fs::remove_file(out.join("spam_score.wasm"));
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

/// Embeds every file under templates/<lang>/ for `wasmtp plugin new` (src/plugin_new_cmd.rs):
/// writes `$OUT_DIR/templates.rs` with `TEMPLATES: &[(lang, path, executable, bytes)]` and the
/// SDK version the templates depend on. A language directory added later is picked up by the
/// next build (cargo watches the whole tree).
fn embed_templates() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let templates = root.join("templates");
    println!("cargo::rerun-if-changed=templates");
    // templates/python and templates/js link to the SDKs and the WIT: watch what they point at.
    println!("cargo::rerun-if-changed=sdk");
    println!("cargo::rerun-if-changed=wit");
    println!("cargo::rerun-if-changed=plugins/Cargo.toml");
    let mut files = Vec::new();
    if templates.is_dir() {
        collect(&templates, &mut files);
    }
    files.sort();
    let mut out = String::from("/// (language, path in the project, executable, contents)\n");
    out.push_str("pub const TEMPLATES: &[(&str, &str, bool, &[u8])] = &[\n");
    for file in &files {
        let rel = file.strip_prefix(&templates).expect("under templates/");
        let mut parts = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        let lang = parts.next().expect("a language directory");
        let path: Vec<String> = parts.collect();
        if path.is_empty() {
            continue; // a file directly under templates/
        }
        use std::os::unix::fs::PermissionsExt;
        let exec = std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
        out.push_str(&format!(
            "    ({lang:?}, {:?}, {exec}, include_bytes!({:?})),\n",
            path.join("/"),
            file.display().to_string()
        ));
    }
    out.push_str("];\n");
    // The SDKs are versioned with the plugins workspace (plugins/Cargo.toml [workspace.package]).
    let version = std::fs::read_to_string(root.join("plugins/Cargo.toml"))
        .ok()
        .and_then(|s| {
            let after = s.split("[workspace.package]").nth(1)?.to_string();
            let line = after
                .lines()
                .find(|l| l.trim_start().starts_with("version"))?;
            Some(line.split('"').nth(1)?.to_string())
        })
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").expect("cargo sets it"));
    out.push_str(&format!(
        "/// The version of the plugin SDKs (`{{{{sdk_version}}}}`).\npub const SDK_VERSION: &str = {version:?};\n"
    ));
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("templates.rs");
    let _ = std::fs::remove_file(&dest);
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            // Build output of a template tried in place is not part of it.
            let name = entry.file_name();
            if matches!(
                name.to_str(),
                Some("target" | "node_modules" | "__pycache__")
            ) {
                continue;
            }
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}
