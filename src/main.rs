//! The `wasmtp` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wasmtp::config::{LogFormat, Settings};

mod ops_cmd;
mod user_cmd;

#[derive(Parser)]
#[command(
    name = "wasmtp",
    version,
    about = "SMTP server with WebAssembly policy plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (on the embedded default config without --config).
    Serve {
        /// Config file.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Log format (overrides [log] format).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate a config file without starting (the embedded default without FILE).
    CheckConfig {
        /// Config file.
        file: Option<PathBuf>,
    },
    /// Print the embedded default config.
    DefaultConfig,
    /// Manage the users file for SMTP AUTH.
    User {
        /// Config file naming the users file (the embedded default without it).
        #[arg(short, long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: user_cmd::UserCmd,
    },
    // Operations: through the running server's admin endpoint.
    /// Inspect and manage the running server's queue.
    Queue {
        #[command(flatten)]
        common: ops_cmd::Common,
        #[command(subcommand)]
        cmd: ops_cmd::QueueCmd,
    },
    /// Listeners, uptime, plugin set and queue summary of the running server.
    Status {
        #[command(flatten)]
        common: ops_cmd::Common,
    },
    /// Plugin management.
    Plugins {
        #[command(subcommand)]
        command: PluginsCmd,
    },
}

#[derive(Subcommand)]
enum PluginsCmd {
    /// Ask the running server to load its plugins again (SIGHUP).
    Reload {
        /// Config file of the running server (to find its data dir).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the sha256 of a plugin file, for `sha256` pins.
    Digest {
        /// The .wasm file.
        file: PathBuf,
    },
}

fn load(config: Option<&PathBuf>) -> Result<Settings, wasmtp::config::ConfigError> {
    match config {
        Some(p) => Settings::load(p),
        None => Settings::embedded_default(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Queue { common, cmd } => report(ops_cmd::queue(common, cmd)),
        Cmd::Status { common } => report(ops_cmd::status(common)),
        Cmd::CheckConfig { file } => match load(file.as_ref()) {
            Ok(s) => {
                // Plugins are compiled and their imports checked, as at start.
                let db = match sled::Config::new().temporary(true).open() {
                    Ok(db) => db,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                if let Err(e) = wasmtp::plugin::PluginHost::new(&s, db) {
                    eprintln!("error: {}: {e}", s.source);
                    return ExitCode::FAILURE;
                }
                println!(
                    "{}: ok ({} listener(s), local domains: {}, plugins: {})",
                    s.source,
                    s.listeners.len(),
                    s.local.domains.join(", "),
                    s.plugins
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Plugins {
            command: PluginsCmd::Digest { file },
        } => match wasmtp::plugin::file_digest(&file) {
            Ok(d) => {
                println!("{d}  {}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e}", file.display());
                ExitCode::FAILURE
            }
        },
        Cmd::Plugins {
            command: PluginsCmd::Reload { config },
        } => match reload(config.as_ref()) {
            Ok(pid) => {
                println!(
                    "sent SIGHUP to wasmtp (pid {pid}); its log says whether the new plugin set loaded"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::User { config, cmd } => {
            let run = load(config.as_ref())
                .map_err(anyhow::Error::from)
                .and_then(|s| user_cmd::run(cmd, s.auth.users_file));
            match run {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::DefaultConfig => {
            print!("{}", wasmtp::config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Cmd::Serve { config, log_format } => {
            let settings = match load(config.as_ref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            wasmtp::observe::init(
                log_format.unwrap_or(settings.log_format),
                &settings.log_level,
            );
            match serve(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Exit status of an operations command; errors go to stderr once.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn reload(config: Option<&PathBuf>) -> anyhow::Result<i32> {
    let settings = load(config)?;
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

fn serve(settings: Settings) -> anyhow::Result<()> {
    // Mail, queue and keys are the server's user's alone. Delivery and the
    // queue also set 0600/0700 explicitly; the mask covers what libraries
    // create (sled's files) and is set before any thread exists.
    // SAFETY: umask(2) only replaces the process's file creation mask.
    unsafe { libc::umask(0o077) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let reload = reload_on_sighup();
        // Installed before anything listens, so an early SIGTERM is never
        // the default (fatal) action.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        wasmtp::server::serve(settings, stop, reload)
            .await
            .map_err(anyhow::Error::from)
    })?;
    Ok(())
}

/// SIGHUP bumps a counter; subscribers (certificates today) reload when it
/// changes. Clone the receiver to hook more reloadable state in.
fn reload_on_sighup() -> tokio::sync::watch::Receiver<u64> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading");
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}
