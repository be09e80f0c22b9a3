//! The `wasmtp` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wasmtp::config::{LogFormat, Settings};

mod dkim_cmd;
mod ops_cmd;
mod plugin_cmd;
mod plugin_new_cmd;
mod plugin_test_cmd;
mod share_cmd;
mod user_cmd;
mod watch_cmd;

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
        /// Listen on ADDR instead of the configured address of listener NAME
        /// (NAME=ADDR, repeatable), e.g. `--listen mx=127.0.0.1:0`.
        #[arg(long, value_name = "NAME=ADDR")]
        listen: Vec<String>,
        /// Reload the plugins whenever one of their files changes (development).
        #[arg(long)]
        watch_plugins: bool,
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
    /// Print the TLS-RPT (RFC 8460) report JSON of a day's outbound TLS results.
    TlsReport {
        /// Config file naming the results directory (the embedded default without it).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The UTC day, YYYY-MM-DD (default: today).
        #[arg(long)]
        day: Option<String>,
        /// Only this policy domain's report (default: every domain's, as a JSON array).
        #[arg(long)]
        domain: Option<String>,
    },
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        command: dkim_cmd::DkimCmd,
    },
    /// Plugin files and the running server's plugins.
    #[command(alias = "plugins")]
    Plugin {
        #[command(subcommand)]
        command: plugin_cmd::PluginCmd,
    },
    /// The server's plugin compiler: a component on stdin, the compiled
    /// artifact on stdout (the commands that load plugins run it as a child).
    #[command(name = wasmtp::plugin::compiler::SUBCOMMAND, hide = true)]
    CompilePlugin {
        /// plugin_limits.memory_reservation of the server, in bytes.
        #[arg(long)]
        memory_reservation: u64,
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
    if !matches!(cli.command, Cmd::CompilePlugin { .. }) {
        compile_plugins_apart();
    }
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
        Cmd::Plugin { command } => report(plugin_cmd::run(command)),
        Cmd::CompilePlugin { memory_reservation } => {
            match wasmtp::plugin::compiler::child(memory_reservation) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Dkim { command } => report(dkim_cmd::run(command)),
        Cmd::TlsReport {
            config,
            day,
            domain,
        } => report(
            load(config.as_ref())
                .map_err(anyhow::Error::from)
                .and_then(|s| tls_report(&s, day, domain.as_deref())),
        ),
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
        Cmd::Serve {
            config,
            log_format,
            listen,
            watch_plugins,
        } => {
            let mut settings = match load(config.as_ref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = override_listeners(&mut settings, &listen) {
                eprintln!("error: --listen: {e}");
                return ExitCode::FAILURE;
            }
            wasmtp::observe::init(
                log_format.unwrap_or(settings.log_format),
                &settings.log_level,
            );
            raise_open_file_limit(&settings);
            match serve(settings, watch_plugins) {
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

/// `wasmtp tls-report`: reads the day's result file the server writes.
fn tls_report(s: &Settings, day: Option<String>, domain: Option<&str>) -> anyhow::Result<()> {
    use wasmtp::delivery::remote::tlsrpt;
    let rpt = &s.outbound.tls_rpt;
    let dir = rpt
        .dir
        .clone()
        .unwrap_or_else(|| s.data_dir.join("tls-rpt"));
    let day = day.unwrap_or_else(tlsrpt::today);
    if chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d").is_err() {
        anyhow::bail!("--day {day:?}: expected YYYY-MM-DD");
    }
    let results = tlsrpt::load(&dir, &day).unwrap_or(tlsrpt::Day {
        day: day.clone(),
        ..tlsrpt::Day::default()
    });
    let reports = tlsrpt::reports(&results, domain, &rpt.organization, &rpt.contact);
    let out = match domain {
        Some(d) => reports.into_iter().next().ok_or_else(|| {
            anyhow::anyhow!("no TLS results for {d} on {day} in {}", dir.display())
        })?,
        None => serde_json::Value::Array(reports),
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Applies `--listen NAME=ADDR` overrides.
fn override_listeners(settings: &mut Settings, overrides: &[String]) -> Result<(), String> {
    for o in overrides {
        let (name, addr) = o
            .split_once('=')
            .ok_or_else(|| format!("{o:?}: expected NAME=ADDR"))?;
        let addr = addr
            .parse()
            .map_err(|e| format!("{o:?}: {addr:?} is not an address: {e}"))?;
        let names: Vec<&str> = settings.listeners.iter().map(|l| l.name.as_str()).collect();
        let names = names.join(", ");
        let l = settings
            .listeners
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| format!("{o:?}: no listener named {name:?} (listeners: {names})"))?;
        l.address = addr;
    }
    Ok(())
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

/// Plugins compile in a child of this same binary (`plugin::compiler`): the
/// compiler's code and heap never stay in a server, and its crash or its
/// deadline fails one plugin's load, also in `check-config` and `plugin
/// test`. Through /proc/self/exe: the running binary even after a package
/// upgrade replaced the file, whose compiler might not match this engine.
fn compile_plugins_apart() {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        wasmtp::plugin::compiler::compile_apart(proc_exe);
    } else if let Ok(exe) = std::env::current_exe() {
        wasmtp::plugin::compiler::compile_apart(exe);
    }
}

fn serve(settings: Settings, watch_plugins: bool) -> anyhow::Result<()> {
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
        let (reloads, reload) = reload_on_sighup();
        let _watcher = if watch_plugins {
            Some(watch_cmd::watch_plugins(&settings, reloads)?)
        } else {
            None
        };
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

/// Open files besides connections: the store, message files being written,
/// Maildir deliveries, plugin caches, listeners, the admin endpoint.
const FILES_BESIDES_CONNECTIONS: u64 = 256;

/// Raises the soft limit on open files to the hard limit (many systems start
/// services at 1024, far below `limits.max_connections` + outbound
/// connections), and warns when the configured connections still do not fit:
/// past the limit `accept` fails with EMFILE instead of the client getting
/// the 421 that `limits.max_connections` promises.
fn raise_open_file_limit(settings: &Settings) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let connections = (settings.limits.max_connections + settings.outbound.max_connections) as u64;
    let needed = connections + FILES_BESIDES_CONNECTIONS;
    if lim.rlim_cur < needed {
        tracing::warn!(
            open_files = lim.rlim_cur,
            needed,
            "the open-file limit is below limits.max_connections + outbound.max_connections + {FILES_BESIDES_CONNECTIONS}: \
             past it connections fail at accept instead of getting 421; raise the hard limit (ulimit -Hn, LimitNOFILE=)"
        );
    } else if before < lim.rlim_cur {
        tracing::info!(from = before, to = lim.rlim_cur, "open-file limit raised");
    }
}

/// SIGHUP bumps a counter; subscribers (certificates, plugins) reload when
/// it changes. The sender is returned too, for other triggers
/// (`--watch-plugins`).
fn reload_on_sighup() -> (
    tokio::sync::watch::Sender<u64>,
    tokio::sync::watch::Receiver<u64>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let sender = tx.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading");
            tx.send_modify(|n| *n += 1);
        }
    });
    (sender, rx)
}
