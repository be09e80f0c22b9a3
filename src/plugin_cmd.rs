//! `wasmtp plugin ...` (alias `plugins`): verbs on plugin files and on the running server's
//! plugin set. They share the host's code: `inspect` reads a component the way the loader does.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use wasmtp::config::Settings;

/// The `plugin` verbs.
#[derive(Subcommand)]
pub enum PluginCmd {
    /// Show what a plugin is: manifest, contract, imports and the grants they need, exports,
    /// size, sha256, signatures.
    Inspect {
        /// The .wasm component, or builtin:NAME.
        file: PathBuf,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Put a manifest (JSON) into a component as its `wasmtp-manifest` section, replacing the
    /// one it has. For toolchains other than the Rust SDK, whose `manifest!` embeds it itself.
    EmbedManifest {
        /// The .wasm component; rewritten in place unless --output is given.
        file: PathBuf,
        /// The manifest JSON file.
        manifest: PathBuf,
        /// Write the result here instead.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print the sha256 of a plugin file, for `sha256` pins.
    Digest {
        /// The .wasm file, or builtin:NAME.
        file: PathBuf,
    },
    /// Ask the running server to load its plugins again (SIGHUP).
    Reload {
        /// Config file of the running server (to find its data dir).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Signing and sharing: keygen, sign, verify, push, pull.
    #[command(flatten)]
    Share(crate::share_cmd::ShareCmd),
    /// Write a new plugin project from a built-in template (rust, python, js, ...).
    New(crate::plugin_new_cmd::NewArgs),
    /// Replay cases offline through one plugin or a chain (no server, no network); print a diff
    /// and exit non-zero when a case's expectations are not met.
    Test(crate::plugin_test_cmd::TestArgs),
}

/// Runs one verb.
pub fn run(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {
        PluginCmd::Share(cmd) => return crate::share_cmd::run(cmd),
        PluginCmd::New(args) => return crate::plugin_new_cmd::run(args),
        PluginCmd::Test(args) => return crate::plugin_test_cmd::run(args),
        PluginCmd::Inspect { file, json } => {
            let report = wasmtp::plugin::inspect::inspect(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
        PluginCmd::EmbedManifest {
            file,
            manifest,
            output,
        } => {
            let component =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let json = std::fs::read(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            let out = wasmtp::plugin::manifest::embed(&component, &json).map_err(|e| {
                anyhow::anyhow!("{} into {}: {e}", manifest.display(), file.display())
            })?;
            let target = output.as_ref().unwrap_or(&file);
            write_replacing(target, &out)?;
            println!(
                "{}: manifest embedded (sha256 {})",
                target.display(),
                wasmtp::plugin::digest(&out)
            );
        }
        PluginCmd::Digest { file } => {
            let d = wasmtp::plugin::file_digest(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{d}  {}", file.display());
        }
        PluginCmd::Reload { config } => {
            let pid = reload(config.as_deref())?;
            println!(
                "sent SIGHUP to wasmtp (pid {pid}); its log says whether the new plugin set loaded"
            );
        }
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so a running server never reads half a file.
fn write_replacing(target: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = target.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, target)
        .with_context(|| format!("cannot replace {}", target.display()))?;
    Ok(())
}

fn reload(config: Option<&Path>) -> anyhow::Result<i32> {
    let settings = match config {
        Some(p) => Settings::load(p)?,
        None => Settings::embedded_default()?,
    };
    let pid_file = settings.data_dir.join("wasmtp.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| {
            format!(
                "reading {} (is the server running with this config?)",
                pid_file.display()
            )
        })?
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", pid_file.display()))?;
    // SAFETY: kill(2) with a pid read from our own pid file and SIGHUP.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(pid)
}
