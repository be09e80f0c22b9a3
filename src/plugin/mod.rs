//! The WebAssembly plugin host: the one `bindgen!` of the WIT contract,
//! the engine, loading and checking plugin sets, and hot swap.
//!
//! Loading (never on the SMTP path): read the file, check the sha256 pin,
//! compile once per digest (the compiled artifact is cached on disk under
//! `<data_dir>/plugin-cache`), refuse any import that was not granted,
//! pre-link against the host functions. Calls (see `run`) instantiate from
//! the pre-linked template, with an epoch deadline and a memory cap.
//!
//! Host capabilities live one per file: `host` (log, notes, kv, dns,
//! clock) and `message` (the message resource the data hook reads).

pub mod builtin;
pub mod cache;
pub mod host;
pub mod inspect;
pub mod kv;
pub mod limits;
pub mod manifest;
pub mod message;
pub mod oci;
pub mod run;
pub mod sign;
pub mod wasi;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{info, warn};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::config::{Grant, HookName, PluginSpec, Settings};

pub use run::{PluginSession, TxView};

/// Bindings generated from `wit/` (world `plugin`).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "plugin",
        imports: {
            "wasmtp:plugin/dns": async | trappable,
            "wasmtp:plugin/kv": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: { "wasmtp:plugin/types.message": super::message::MessageRes },
    });
}

use bindings::PluginPre;
use host::HostState;

/// Epoch ticks per second (the ticker thread's rate).
const TICK: Duration = Duration::from_millis(10);

/// Why a plugin set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read, or the built-in plugin is not in this build.
    #[error("plugin {name}: cannot read {path}: {reason}")]
    Read {
        /// Plugin name.
        name: String,
        /// File, or `builtin:NAME`.
        path: PathBuf,
        /// The OS error or what is missing; part of this message, not a chained source, so it
        /// is printed once.
        reason: String,
    },
    /// The component's manifest does not fit this host.
    #[error("plugin {name}: {path}: {detail}")]
    Manifest {
        /// Plugin name.
        name: String,
        /// File.
        path: PathBuf,
        /// What does not fit.
        detail: String,
    },
    /// The manifest says the plugin needs a grant its config does not give.
    #[error(
        "plugin {name}: its manifest says it needs the {grant:?} grant: add \"{grant}\" to its grants ([[plugin]] name = {name:?}, key grants)"
    )]
    Grant {
        /// Plugin name.
        name: String,
        /// The grant.
        grant: &'static str,
    },
    /// `[plugin.config]` does not fit the manifest's JSON Schema.
    #[error(
        "plugin {name}: config key {key}: {detail} (checked against the plugin's config schema)"
    )]
    Config {
        /// Plugin name.
        name: String,
        /// The dotted key, `plugin.config.<...>`.
        key: String,
        /// The schema's complaint.
        detail: String,
    },
    /// The digest does not match the pin.
    #[error(
        "plugin {name}: sha256 of {path} is {actual}, but the config pins {expected} (key plugin.sha256)"
    )]
    Digest {
        /// Plugin name.
        name: String,
        /// File.
        path: PathBuf,
        /// Configured digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// Not a valid component, or compilation failed.
    #[error("plugin {name}: {path} is not a usable WebAssembly component: {detail}")]
    Compile {
        /// Plugin name.
        name: String,
        /// File.
        path: PathBuf,
        /// Compiler message.
        detail: String,
    },
    /// It imports something it was not granted or the host does not have.
    #[error("plugin {name}: imports {import}, {hint}")]
    Import {
        /// Plugin name.
        name: String,
        /// The import.
        import: String,
        /// How to grant it, or why it cannot be.
        hint: String,
    },
    /// `init` refused the plugin's config, or trapped, at load.
    #[error("plugin {name}: init {detail} (the [plugin.config] table of this plugin)")]
    Init {
        /// Plugin name.
        name: String,
        /// The plugin's own message, or the trap.
        detail: String,
    },
    /// A signature does not verify, or `[plugin_trust]` requires one it lacks.
    #[error("plugin {name}: {}: {reason}", path.display())]
    Signature {
        /// Plugin name.
        name: String,
        /// File.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// Its `oci` reference could not be pulled.
    #[error("plugin {name}: cannot pull {reference} (key plugin.oci): {detail}")]
    Pull {
        /// Plugin name.
        name: String,
        /// The OCI reference.
        reference: String,
        /// Why.
        detail: String,
    },
    /// Linking or the engine failed.
    #[error("plugin {name}: {detail}")]
    Link {
        /// Plugin name.
        name: String,
        /// Detail.
        detail: String,
    },
}

/// Per-plugin counters, shown in logs and kept across reloads by name.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls made.
    pub calls: AtomicU64,
    /// Verdicts by kind: continue, accept, reject, tempfail, disconnect, discard, quarantine.
    pub verdicts: [AtomicU64; 7],
    /// Traps (including out of memory).
    pub traps: AtomicU64,
    /// Calls cut off at their deadline.
    pub timeouts: AtomicU64,
    /// Total call time in microseconds.
    pub micros: AtomicU64,
    /// Latency histogram: <100µs, <1ms, <10ms, <100ms, >=100ms.
    pub latency: [AtomicU64; 5],
}

impl PluginStats {
    fn record_latency(&self, micros: u64) {
        self.micros.fetch_add(micros, Ordering::Relaxed);
        let bucket = match micros {
            0..100 => 0,
            100..1000 => 1,
            1000..10_000 => 2,
            10_000..100_000 => 3,
            _ => 4,
        };
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// One loaded plugin.
pub struct LoadedPlugin {
    /// Its configuration.
    pub spec: PluginSpec,
    /// Pre-linked template.
    pre: PluginPre<HostState>,
    /// sha256 of the component file (names its cached artifact).
    digest: String,
    /// Counters.
    pub stats: Arc<PluginStats>,
}

impl LoadedPlugin {
    /// sha256 of the component as loaded (for `wasmtp status`).
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// A checked, ready set of plugins; sessions hold the set they started with.
pub struct PluginSet {
    /// Plugins in configured order.
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// Monotonic generation number (1 for the first set).
    pub generation: u64,
}

impl PluginSet {
    /// True if some plugin runs on `hook`.
    pub fn wants(&self, hook: HookName) -> bool {
        self.plugins.iter().any(|p| p.spec.hooks.contains(&hook))
    }
}

/// The host: engine, shared capabilities and the current plugin set.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    current: RwLock<Arc<PluginSet>>,
    stats: std::sync::Mutex<HashMap<String, Arc<PluginStats>>>,
    shared: Arc<host::Shared>,
}

impl PluginHost {
    /// Creates the engine and loads the configured plugins.
    pub fn new(settings: &Settings, db: sled::Db) -> Result<Arc<PluginHost>, PluginError> {
        let engine_err = |e: wasmtime::Error| PluginError::Link {
            name: "(engine)".into(),
            detail: format!("{e:#}"),
        };
        let mut cfg = Config::new();
        cfg.epoch_interruption(true);
        cfg.wasm_component_model(true);
        let engine = Engine::new(&cfg).map_err(engine_err)?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .expect("spawn epoch ticker");
        let mut linker: Linker<HostState> = Linker::new(&engine);
        bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(engine_err)?;
        let host = PluginHost {
            engine,
            linker,
            cache_dir: settings.data_dir.join("plugin-cache"),
            current: RwLock::new(Arc::new(PluginSet {
                plugins: Vec::new(),
                generation: 0,
            })),
            stats: Default::default(),
            shared: Arc::new(host::Shared::new(
                db,
                &settings.dns,
                &settings.plugin_limits,
                &settings.kv,
            )),
        };
        let set = host.load_set(&settings.plugins, 1)?;
        host.prune_cache(&set);
        *host.current.write().expect("plugin set lock") = Arc::new(set);
        let shared = Arc::downgrade(&host.shared);
        let every = settings.plugin_limits.kv_sweep_interval;
        std::thread::Builder::new()
            .name("kv-sweep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(shared) = shared.upgrade() else {
                        break;
                    };
                    shared.sweep_kv();
                }
            })
            .expect("spawn kv sweeper");
        Ok(Arc::new(host))
    }

    /// The set new sessions start with.
    pub fn current(&self) -> Arc<PluginSet> {
        self.current.read().expect("plugin set lock").clone()
    }

    /// Compiles and checks a new set beside the running one and swaps it in;
    /// on error the running set stays.
    pub fn reload(&self, specs: &[PluginSpec]) -> Result<u64, PluginError> {
        let generation = self.current().generation + 1;
        let set = self.load_set(specs, generation)?;
        self.prune_cache(&set);
        let names: Vec<&str> = set.plugins.iter().map(|p| p.spec.name.as_str()).collect();
        info!(generation, plugins = ?names, "plugin set swapped in");
        *self.current.write().expect("plugin set lock") = Arc::new(set);
        Ok(generation)
    }

    fn load_set(&self, specs: &[PluginSpec], generation: u64) -> Result<PluginSet, PluginError> {
        let mut plugins = Vec::new();
        for spec in specs {
            let started = std::time::Instant::now();
            let mut spec = spec.clone();
            let (pre, digest) = self.load_one(&mut spec)?;
            self.check_init(&spec, &pre)?;
            let stats = self
                .stats
                .lock()
                .expect("stats lock")
                .entry(spec.name.clone())
                .or_default()
                .clone();
            info!(
                plugin = %spec.name,
                path = %spec.path.display(),
                hooks = ?spec.hooks.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
                ms = started.elapsed().as_millis() as u64,
                "plugin loaded"
            );
            plugins.push(Arc::new(LoadedPlugin {
                spec,
                pre,
                digest,
                stats,
            }));
        }
        Ok(PluginSet {
            plugins,
            generation,
        })
    }

    /// Runs `init` once in a throwaway instance, so a config the plugin
    /// refuses (or an `init` that traps) refuses the set at load, naming
    /// the plugin and its message, instead of failing every session later.
    /// Runs on its own thread with its own small runtime, so it works the
    /// same from `check-config`, at start (inside the server's runtime)
    /// and at reload.
    fn check_init(&self, spec: &PluginSpec, pre: &PluginPre<HostState>) -> Result<(), PluginError> {
        let init_failed = |detail: String| PluginError::Init {
            name: spec.name.clone(),
            detail,
        };
        let deadline = spec
            .timeout(HookName::Connect)
            .max(std::time::Duration::from_secs(1));
        let run = || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| format!("could not run: {e}"))?;
            rt.block_on(async {
                let notes = Arc::new(std::sync::Mutex::new(host::Notes::new(&self.shared.limits)));
                let state = HostState::new(
                    spec.name.as_str().into(),
                    spec.grants.clone(),
                    spec.memory,
                    notes,
                    self.shared.clone(),
                );
                let mut store = wasmtime::Store::new(&self.engine, state);
                store.limiter(|s| &mut s.limits);
                store.set_epoch_deadline(1);
                store.epoch_deadline_async_yield_and_update(1);
                let call = async {
                    let plugin = pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(|e| format!("trapped while instantiating: {e:#}"))?;
                    match plugin
                        .wasmtp_plugin_hooks()
                        .call_init(&mut store, &spec.config_json)
                        .await
                    {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(msg)) => Err(format!(
                            "refused its config: {}",
                            crate::observe::escape(&msg)
                        )),
                        Err(e) => Err(run::with_output(
                            &format!("trapped: {e:#}"),
                            store.data_mut().output.take().as_deref(),
                        )),
                    }
                };
                match tokio::time::timeout(deadline, call).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("did not finish within {deadline:?}")),
                }
            })
        };
        std::thread::scope(|s| {
            s.spawn(run)
                .join()
                .unwrap_or_else(|_| Err("panicked in the host".into()))
        })
        .map_err(init_failed)
    }

    /// Reads, checks and pre-links one plugin. The manifest, if the component has one, may
    /// narrow `spec.hooks` (when the config lists none).
    fn load_one(
        &self,
        spec: &mut PluginSpec,
    ) -> Result<(PluginPre<HostState>, String), PluginError> {
        let name = spec.name.clone();
        if let Some(reference) = &spec.oci {
            oci::ensure_pulled(spec, reference)?;
        }
        let bytes = builtin::read(&spec.path).map_err(|reason| PluginError::Read {
            name: name.clone(),
            path: spec.path.clone(),
            reason,
        })?;
        self.apply_manifest(spec, &bytes)?;
        let digest = hex(&Sha256::digest(&bytes));
        if let Some(expected) = &spec.sha256
            && *expected != digest
        {
            return Err(PluginError::Digest {
                name,
                path: spec.path.clone(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        sign::check(&bytes, spec)?;
        let component = self.compile_cached(spec, &bytes, &digest)?;
        check_imports(&self.engine, &component, spec)?;
        let mut linker = self.linker.clone();
        // Hash maps in guests ask for a seed (wasi:random/insecure-seed); it
        // grants nothing, so it is provided to everyone.
        for (import, _) in component.component_type().imports(&self.engine) {
            if import.starts_with("wasi:random/insecure-seed") {
                linker
                    .instance(import)
                    .and_then(|mut i| {
                        i.func_wrap("insecure-seed", |_, (): ()| {
                            Ok(((rand::random::<u64>(), rand::random::<u64>()),))
                        })
                    })
                    .map_err(|e| PluginError::Link {
                        name: name.clone(),
                        detail: format!("{e:#}"),
                    })?;
            }
        }
        // Rust std guests import WASI stdio/env interfaces only to print
        // panics: the environment is empty and stdout/stderr are captured
        // for the log; the rest traps (check_imports allowed only those).
        wasi::link(&mut linker, &self.engine, &component).map_err(|e| PluginError::Link {
            name: name.clone(),
            detail: format!("{e:#}"),
        })?;
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| PluginError::Link {
                name: name.clone(),
                detail: format!("{e:#}"),
            })?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link {
                name: name.clone(),
                detail: format!("{e:#}"),
            })?;
        let pre = PluginPre::new(pre).map_err(|e| PluginError::Import {
            name,
            import: "an interface of a different shape".into(),
            hint: format!("it does not match the wasmtp:plugin@0.1.0 world: {e:#}"),
        })?;
        Ok((pre, digest))
    }

    /// Reads the component's manifest and applies it to `spec` (see `manifest`).
    fn apply_manifest(&self, spec: &mut PluginSpec, bytes: &[u8]) -> Result<(), PluginError> {
        let (name, path) = (spec.name.clone(), spec.path.clone());
        let manifest_err = |detail: String| PluginError::Manifest {
            name: name.clone(),
            path: path.clone(),
            detail,
        };
        let Some(m) = manifest::read(bytes).map_err(manifest_err)? else {
            return Ok(());
        };
        m.apply(spec).map_err(|r| match r {
            manifest::Refusal::Manifest(detail) => manifest_err(detail),
            manifest::Refusal::Grant(g) => PluginError::Grant {
                name: name.clone(),
                grant: g.as_str(),
            },
            manifest::Refusal::Config(key, detail) => PluginError::Config {
                name: name.clone(),
                key,
                detail,
            },
        })
    }

    /// The cache file of a component with this digest, for this engine.
    fn cache_file(&self, digest: &str) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        self.cache_dir
            .join(format!("{digest}-{:016x}.cwasm", h.finish()))
    }

    /// Compiles `bytes`, or loads the artifact this server compiled before.
    /// An artifact is native code run without further checks, so it is only
    /// loaded from a directory and file that this user owns and nobody else
    /// can write (see `cache`); otherwise the plugin is compiled afresh.
    fn compile_cached(
        &self,
        spec: &PluginSpec,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Component, PluginError> {
        let file = self.cache_file(digest);
        let trusted = match cache::check_trusted(&self.cache_dir, &file) {
            Ok(trusted) => trusted,
            Err(why) => {
                warn!(plugin = %spec.name, file = %file.display(), reason = %why, "plugin cache not trusted; compiling instead");
                false
            }
        };
        if trusted {
            // SAFETY: the file is in a directory only this user can write,
            // owned by this user and not writable by others, and named by the
            // component's digest and this engine's compatibility hash: it is
            // an artifact this server wrote (`cache::write`).
            if let Ok(c) = unsafe { Component::deserialize_file(&self.engine, &file) } {
                return Ok(c);
            }
            warn!(plugin = %spec.name, file = %file.display(), "unusable compiled plugin in cache; recompiling");
        }
        let compile_err = |e: wasmtime::Error| PluginError::Compile {
            name: spec.name.clone(),
            path: spec.path.clone(),
            detail: format!("{e:#}"),
        };
        let artifact = self
            .engine
            .precompile_component(bytes)
            .map_err(compile_err)?;
        if let Err(e) = cache::write(&self.cache_dir, &file, &artifact) {
            warn!(plugin = %spec.name, dir = %self.cache_dir.display(), error = %e, "cannot write the plugin cache");
        }
        // SAFETY: `artifact` was produced just now by this engine.
        unsafe { Component::deserialize(&self.engine, &artifact) }.map_err(compile_err)
    }

    /// Removes cached artifacts that no plugin of `set` uses (older
    /// versions, other engines, removed plugins) and stale temporary files.
    fn prune_cache(&self, set: &PluginSet) {
        let keep: Vec<PathBuf> = set
            .plugins
            .iter()
            .map(|p| self.cache_file(&p.digest))
            .collect();
        let removed = cache::prune(&self.cache_dir, &keep);
        if removed > 0 {
            info!(removed, dir = %self.cache_dir.display(), "unused compiled plugins pruned from the cache");
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn shared(&self) -> &Arc<host::Shared> {
        &self.shared
    }

    /// A summary of every plugin's counters, for the log at shutdown.
    pub fn stats_summary(&self) -> Vec<(String, u64, u64, u64)> {
        self.stats
            .lock()
            .expect("stats lock")
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.calls.load(Ordering::Relaxed),
                    s.traps.load(Ordering::Relaxed),
                    s.timeouts.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a plugin file (or `builtin:NAME`), as used for `sha256` pins.
pub fn file_digest(path: &Path) -> Result<String, String> {
    Ok(digest(&builtin::read(path)?))
}

/// The sha256 of component bytes, in lower-case hex.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// WASI interfaces Rust std guests import for panic output (see `wasi`).
const STUBBED_WASI: &[&str] = &[
    "wasi:io/poll",
    "wasi:io/error",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// What a component import takes from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportNeed {
    /// Always provided (types, log, notes, the hash-map seed).
    Always,
    /// Provided when the config grants it.
    Grant(Grant),
    /// A WASI interface Rust std imports for panic output: empty environment, captured
    /// stdout/stderr, the rest traps.
    Stub,
    /// Not provided: a plugin importing it is refused.
    Unavailable,
}

/// What `import` (an instance name such as `wasmtp:plugin/kv@0.1.0`) takes from the host.
pub fn import_need(import: &str) -> ImportNeed {
    let base = import.split('@').next().unwrap_or(import);
    match base {
        "wasmtp:plugin/types" | "wasmtp:plugin/log" | "wasmtp:plugin/notes" => ImportNeed::Always,
        "wasi:random/insecure-seed" => ImportNeed::Always,
        "wasmtp:plugin/kv" => ImportNeed::Grant(Grant::Kv),
        "wasmtp:plugin/dns" => ImportNeed::Grant(Grant::Dns),
        "wasmtp:plugin/clock" => ImportNeed::Grant(Grant::Clock),
        b if STUBBED_WASI.contains(&b) => ImportNeed::Stub,
        _ => ImportNeed::Unavailable,
    }
}

/// Refuses imports that were not granted, naming the key that grants them.
fn check_imports(
    engine: &Engine,
    component: &Component,
    spec: &PluginSpec,
) -> Result<(), PluginError> {
    let ty = component.component_type();
    for (import, _) in ty.imports(engine) {
        let grant = match import_need(import) {
            ImportNeed::Always | ImportNeed::Stub => continue,
            ImportNeed::Grant(g) => g,
            ImportNeed::Unavailable => {
                return Err(PluginError::Import {
                    name: spec.name.clone(),
                    import: import.to_string(),
                    hint: "which wasmtp does not provide to plugins (no filesystem, network or other WASI access)"
                        .into(),
                });
            }
        };
        if !spec.grants.contains(&grant) {
            let g = grant.as_str();
            return Err(PluginError::Import {
                name: spec.name.clone(),
                import: import.to_string(),
                hint: format!(
                    "which was not granted: add \"{g}\" to its `grants` ([[plugin]] name = {:?}, key grants)",
                    spec.name
                ),
            });
        }
    }
    Ok(())
}
