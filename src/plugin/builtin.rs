//! Plugins built into the `wasmtp` binary, named in configs as `path = "builtin:NAME"`, so the
//! embedded default config works wherever and however `wasmtp` was installed. build.rs compiles
//! them from `plugins/` for wasm32-wasip2 when that target is installed; a build without it has
//! none, and a config naming one gets an error that says how to get it.

/// The path prefix that names a built-in plugin.
pub const SCHEME: &str = "builtin:";

/// The plugins a build can carry: (name, crate directory under `plugins/`).
pub const KNOWN: &[(&str, &str)] = &[("spam-score", "spam-score")];

#[cfg(wasmtp_builtin)]
const BUILT: &[(&str, &[u8])] = &[(
    "spam-score",
    include_bytes!(concat!(env!("OUT_DIR"), "/spam_score.wasm")),
)];

#[cfg(not(wasmtp_builtin))]
const BUILT: &[(&str, &[u8])] = &[];

/// Why this build has no built-in plugins (set by build.rs), or empty.
const MISSING_BECAUSE: &str = env!("WASMTP_BUILTIN_MISSING");

/// The name in a `builtin:NAME` path, or None for a file path.
pub fn name(path: &std::path::Path) -> Option<&str> {
    path.to_str()?.strip_prefix(SCHEME)
}

/// The component of a built-in plugin, or why there is none.
pub fn get(name: &str) -> Result<&'static [u8], String> {
    if let Some((_, bytes)) = BUILT.iter().find(|(n, _)| *n == name) {
        return Ok(bytes);
    }
    if KNOWN.iter().any(|(n, _)| *n == name) {
        Err(format!(
            "this wasmtp was built without its built-in plugins ({MISSING_BECAUSE}); \
             run `rustup target add wasm32-wasip2` and build wasmtp again, or set path to a .wasm file"
        ))
    } else {
        let names: Vec<&str> = KNOWN.iter().map(|(n, _)| *n).collect();
        Err(format!(
            "there is no built-in plugin {name:?} (built-in: {})",
            names.join(", ")
        ))
    }
}

/// Reads a plugin: a `builtin:NAME` from the binary, anything else from the file system. The
/// error is the bare reason; the caller adds the plugin and path once.
pub fn read(path: &std::path::Path) -> Result<std::borrow::Cow<'static, [u8]>, String> {
    match name(path) {
        Some(n) => get(n).map(std::borrow::Cow::Borrowed),
        None => std::fs::read(path)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| e.to_string()),
    }
}
