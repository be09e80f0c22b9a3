//! `wasmtp plugin test`: replays cases offline through a plugin chain with the server's own host
//! code (`wasmtp::plugin::replay`), no server and no network. The chain is either plugin files
//! given on the command line (in that order, each with what its manifest asks for and an empty
//! config) or the `[[plugin]]` list of a server config (`--config`), exactly as `serve` loads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use wasmtp::config::{Grant, Settings};
use wasmtp::plugin::PluginHost;
use wasmtp::plugin::fake::Fakes;
use wasmtp::plugin::replay::{self, LoadedCase};

/// Arguments of `wasmtp plugin test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Plugin files (.wasm or builtin:NAME), the chain in order; case files (.toml); directories
    /// (every .toml case in them).
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// A server config: its [[plugin]] list is the chain (instead of plugin files).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// No cases: print what the chain decides for this message at each hook, with per-plugin
    /// timings.
    #[arg(long, value_name = "FILE")]
    eml: Option<PathBuf>,
}

/// Runs `plugin test`.
pub fn run(args: TestArgs) -> anyhow::Result<()> {
    wasmtp::observe::init(wasmtp::config::LogFormat::Human, "warn");
    let (plugins, cases) = split(&args.files)?;
    // A server config's [local] decides which added recipients count, as in the server.
    let mut local = None;
    let settings = match (&args.config, plugins.is_empty()) {
        (Some(_), false) => anyhow::bail!("give plugin files or --config, not both"),
        (None, true) => anyhow::bail!(
            "no plugins: give .wasm files (or builtin:NAME) or --config with [[plugin]] tables"
        ),
        (Some(c), true) => {
            let mut s = Settings::load(c)?;
            local = Some(s.local.clone());
            // Compiled plugins are cached with the user's, not in the server's data dir (pulled
            // OCI plugins keep their paths there).
            s.data_dir = cache_dir();
            s
        }
        (None, false) => chain_settings(&plugins)?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match (&args.eml, cases.is_empty()) {
        (Some(_), false) => anyhow::bail!("give cases or --eml, not both"),
        (None, true) => anyhow::bail!("no cases: give CASE.toml files (or --eml FILE)"),
        (Some(eml), true) => {
            let raw =
                std::fs::read(eml).with_context(|| format!("cannot read {}", eml.display()))?;
            let input = replay::eml_input(&raw);
            let host = offline_host(
                &settings,
                Fakes {
                    now_ms: replay::DEFAULT_CLOCK_MS,
                    ..Default::default()
                },
            )?;
            let got = rt.block_on(replay::replay(
                &host,
                &input,
                &settings.hostname,
                local.as_ref(),
            ));
            print!("{}", got.to_text());
            Ok(())
        }
        (None, false) => run_cases(&rt, &settings, local.as_ref(), &cases),
    }
}

fn run_cases(
    rt: &tokio::runtime::Runtime,
    settings: &Settings,
    local: Option<&wasmtp::config::LocalSettings>,
    cases: &[PathBuf],
) -> anyhow::Result<()> {
    let mut failed = 0;
    for path in cases {
        let case = replay::load_case(path).map_err(anyhow::Error::msg)?;
        let LoadedCase {
            case, input, fakes, ..
        } = case;
        if let Some(unknown) = case
            .kv
            .keys()
            .find(|k| !settings.plugins.iter().any(|p| &p.name == *k))
        {
            anyhow::bail!(
                "{}: [kv.{unknown}]: no plugin named {unknown:?} in the chain",
                path.display()
            );
        }
        let host = offline_host(settings, fakes)?;
        rt.block_on(replay::seed_kv(&host, &case))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let got = rt.block_on(replay::replay(&host, &input, &settings.hostname, local));
        let mismatches = replay::compare(&case.expect, &got);
        let about = case
            .description
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        if mismatches.is_empty() {
            // A passing run prints one line in all; the cases are named only when one fails.
            continue;
        }
        failed += 1;
        println!("FAIL {}{about}: expected (-) and got (+)", path.display());
        for m in &mismatches {
            print!("{}", m.to_text());
        }
        println!("  what the chain did:");
        for line in got.to_text().lines() {
            println!("    {line}");
        }
    }
    let names: Vec<&str> = settings.plugins.iter().map(|p| p.name.as_str()).collect();
    let chain = names.join(", ");
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} case(s) failed (chain: {chain})",
            cases.len()
        );
    }
    println!("{} case(s) passed (chain: {chain})", cases.len());
    Ok(())
}

/// A host over a throwaway store, with the case's clock and DNS.
fn offline_host(settings: &Settings, fakes: Fakes) -> anyhow::Result<Arc<PluginHost>> {
    let db = sled::Config::new()
        .temporary(true)
        .open()
        .context("opening a temporary store")?;
    PluginHost::offline(settings, db, fakes).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Plugin files and case files, directories expanded to the cases in them.
fn split(files: &[PathBuf]) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut plugins, mut cases) = (Vec::new(), Vec::new());
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str());
        if wasmtp::plugin::builtin::name(f).is_some() || ext == Some("wasm") {
            plugins.push(f.clone());
        } else if ext == Some("toml") {
            cases.push(f.clone());
        } else if f.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(f)
                .with_context(|| format!("cannot read {}", f.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            found.sort();
            anyhow::ensure!(!found.is_empty(), "{}: no .toml cases in it", f.display());
            cases.extend(found);
        } else {
            anyhow::bail!(
                "{}: not a plugin (.wasm, builtin:NAME), a case (.toml) or a directory of cases",
                f.display()
            );
        }
    }
    Ok((plugins, cases))
}

/// A config with one `[[plugin]]` per file: named and granted as its manifest says (every grant
/// without a manifest: they are all fakes here), config `{}`. The compiled plugins are cached
/// under the user's cache directory.
fn chain_settings(plugins: &[PathBuf]) -> anyhow::Result<Settings> {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let cache = cache_dir();
    let mut src = format!(
        "[server]\nhostname = \"localhost\"\ndata_dir = {}\n[[listener]]\naddress = \"127.0.0.1:0\"\n",
        q(&cache.display().to_string())
    );
    for p in plugins {
        let bytes = wasmtp::plugin::builtin::read(p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let manifest = wasmtp::plugin::manifest::read(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let stem = wasmtp::plugin::builtin::name(p)
            .map(String::from)
            .or_else(|| p.file_stem().map(|s| s.to_string_lossy().replace('_', "-")))
            .unwrap_or_else(|| "plugin".into());
        let (name, grants) = match manifest {
            Some(m) => (m.name, m.grants),
            None => (
                stem,
                Grant::ALL.iter().map(|g| g.as_str().to_string()).collect(),
            ),
        };
        let path = match wasmtp::plugin::builtin::name(p) {
            Some(_) => p.display().to_string(),
            None => std::path::absolute(p)?.display().to_string(),
        };
        let grants: Vec<String> = grants.iter().map(|g| q(g)).collect();
        src.push_str(&format!(
            "[[plugin]]\nname = {}\npath = {}\ngrants = [{}]\n",
            q(&name),
            q(&path),
            grants.join(", ")
        ));
    }
    Ok(Settings::parse(&src, "<plugin test chain>")?)
}

/// `$XDG_CACHE_HOME/wasmtp/plugin-test`, `~/.cache/wasmtp/plugin-test`, or a directory under the
/// system's temporary directory.
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("wasmtp").join("plugin-test")
}
