//! Compiling plugins in a child process.
//!
//! Compiling a component runs Cranelift: megabytes of the server's own code
//! and heap that a running server never needs again. In the server's
//! process those pages stay mapped for its whole life (measured: 49 MiB of
//! PSS right after a first start with three Rust plugins against 33 MiB
//! when they came from the cache; the difference is code pages of the
//! binary and the compiler's freed heap). So wasmtp (`serve`,
//! `check-config`, `plugin test`) compiles in a child, `wasmtp
//! compile-plugin` (hidden): the component on its stdin, the compiled
//! artifact on its stdout. The host writes the artifact to the cache and
//! maps it from there, as on a cache hit.
//!
//! The child is also a wall: a compiler that crashes or runs out of memory
//! on a hostile component fails that plugin's load, not the server.
//!
//! Where no executable was registered (library use, unit tests, benches)
//! or the child cannot be started, plugins are compiled in-process.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use tracing::{info, warn};

use crate::config::PluginLimits;
use crate::observe::limit_hit;

/// The executable that compiles, when compiling apart.
static EXE: OnceLock<PathBuf> = OnceLock::new();

/// The name of the hidden subcommand `exe` must answer to.
pub const SUBCOMMAND: &str = "compile-plugin";

/// From now on, plugins are compiled by `exe compile-plugin` (the server's
/// own binary: `std::env::current_exe()`).
pub fn compile_apart(exe: PathBuf) {
    let _ = EXE.set(exe);
}

/// What compiling apart gave.
pub(crate) enum Apart {
    /// The artifact.
    Compiled(Vec<u8>),
    /// The compiler refused the component, or died: the plugin does not load.
    Failed(String),
    /// No child to compile in: compile in-process.
    NotAvailable,
}

/// Compiles `bytes` (plugin `plugin`) in a child with the compilation
/// settings of `limits`.
pub(crate) fn compile(plugin: &str, limits: &PluginLimits, bytes: &[u8]) -> Apart {
    let Some(exe) = EXE.get() else {
        return Apart::NotAvailable;
    };
    let started = Instant::now();
    let child = Command::new(exe)
        .arg(SUBCOMMAND)
        .arg("--memory-reservation")
        .arg(limits.memory_reservation.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            warn!(plugin, exe = %exe.display(), error = %e, "cannot start the plugin compiler; compiling in the server");
            return Apart::NotAvailable;
        }
    };
    let pid = child.id();
    let stdin = child.stdin.take();
    // Fed and waited for on a thread, so a compile that runs past
    // `plugin_limits.compile_timeout` can be killed (which also ends a
    // write the child stopped reading). The child reads all of its input
    // before it writes anything, so writing first cannot deadlock.
    let done = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        scope.spawn(move || {
            let sent = stdin.map(|mut stdin| stdin.write_all(bytes));
            let _ = tx.send((sent, child.wait_with_output()));
        });
        match rx.recv_timeout(limits.compile_timeout) {
            Ok(r) => Some(r),
            Err(_) => {
                // SAFETY: kill(2) on the child's pid, which is not reaped
                // (and so not reused) before the thread's wait returns.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                let _ = rx.recv();
                None
            }
        }
    });
    let (sent, out) = match done {
        Some((sent, Ok(out))) => (sent, out),
        Some((_, Err(e))) => return Apart::Failed(format!("the plugin compiler: {e}")),
        None => {
            let detail = format!(
                "compiling took longer than {} (plugin_limits.compile_timeout); the compiler was stopped",
                humantime::format_duration(limits.compile_timeout)
            );
            limit_hit(
                "plugin_limits.compile_timeout",
                &format!("plugin {plugin}: {detail}"),
            );
            return Apart::Failed(detail);
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if out.status.success() {
        if let Some(Err(e)) = sent {
            return Apart::Failed(format!("writing to the plugin compiler: {e}"));
        }
        info!(
            plugin,
            child = pid,
            ms = started.elapsed().as_millis() as u64,
            bytes = out.stdout.len(),
            "plugin compiled in a child process"
        );
        return Apart::Compiled(out.stdout);
    }
    Apart::Failed(match out.status.code() {
        Some(_) if !stderr.is_empty() => stderr.to_string(),
        _ => {
            use std::os::unix::process::ExitStatusExt;
            let how = match out.status.signal() {
                Some(sig) => format!("killed by signal {sig}"),
                None => format!("{}", out.status),
            };
            format!("the plugin compiler (a child process) {how}; {stderr}")
        }
    })
}

/// The child's side: a component on stdin, its artifact on stdout; a
/// compile error is the Err (printed by the caller, exit status 1).
pub fn child(memory_reservation: u64) -> Result<(), String> {
    let limits = PluginLimits {
        memory_reservation,
        ..PluginLimits::default()
    };
    let engine = super::new_engine(&limits, false).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the component: {e}"))?;
    let artifact = engine
        .precompile_component(&bytes)
        .map_err(|e| format!("{e:#}"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&artifact)
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing the artifact: {e}"))
}
