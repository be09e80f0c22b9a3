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
pub mod compiler;
pub mod contract;
pub mod fake;
pub mod host;
pub mod http;
pub mod inspect;
pub mod kv;
pub mod limits;
pub mod manifest;
pub mod message;
pub mod oci;
pub mod replay;
pub mod run;
pub mod sign;
mod snapshot;
pub mod wasi;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{info, warn};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::config::{Grant, HookName, PluginSpec, Settings};

pub use run::{PluginSession, TxView};

/// The `bindgen!` of one contract version's world `plugin` from the WIT directory `$path`: the
/// same options for every version (kv and dns async, every import trappable, the message
/// resource backed by `MessageRes`), so the versions differ only in their WIT.
macro_rules! plugin_bindings {
    ($path:literal) => {
        wasmtime::component::bindgen!({
            path: $path,
            world: "plugin",
            imports: {
                "wasmtp:plugin/dns": async | trappable,
                "wasmtp:plugin/kv": async | trappable,
                default: trappable,
            },
            exports: { default: async },
            with: { "wasmtp:plugin/types.message": crate::plugin::message::MessageRes },
        });
    };
}
pub(crate) use plugin_bindings;

/// Bindings generated from `wit/` (world `plugin`, the current contract; the older one is in
/// `contract`).
pub mod bindings {
    super::plugin_bindings!("wit");
}

use contract::{Contract, Pre};
use host::HostState;

/// Bytes of a pooled memory slot reset in place rather than decommitted.
const KEEP_RESIDENT: usize = 2 << 20;

/// Epoch ticks per second (the ticker thread's rate).
const TICK: Duration = Duration::from_millis(10);

/// A plugin served fresh whose instance takes at least this long to make
/// (the fastest of three instantiations at load) gets
/// `plugin_limits.standby` instances made ahead. Measured here, release
/// build: a Rust plugin 5 µs, the JavaScript example 30 µs, the Python one
/// 555 µs. A debug build of wasmtp makes instances 15–35 times slower
/// (173 µs, 755 µs, 8.5 ms), so its threshold is higher, to sort the same
/// plugins the same way.
const STANDBY_WORTH: Duration = if cfg!(debug_assertions) {
    Duration::from_millis(2)
} else {
    Duration::from_micros(100)
};

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
        "plugin {name}: its manifest says it needs the {grant:?} grant: {} ([[plugin]] name = {name:?}, key grants)",
        grant_how(grant)
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
    /// The plugin's Prometheus handles.
    pub metrics: crate::metrics::PluginMetrics,
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
    /// The contract version it was built against.
    pub contract: Contract,
    /// Pre-linked template (pooled engine, when there is a pool).
    pre: Pre,
    /// The same on the on-demand engine, for when the pool is full.
    fallback: Option<Pre>,
    /// True if `pre` is on the pooled engine.
    pooled: bool,
    /// Warm instances waiting for their next transaction (`reuse` > 0).
    warm: std::sync::Mutex<Vec<run::Live>>,
    /// Fresh instances made ahead (`standby`).
    standby: run::Standby,
    /// sha256 of the component file.
    digest: String,
    /// True if instances start from the state `init` left at load (`snapshot`) and do not run it.
    preinit: bool,
    /// The digests whose compiled artifacts this plugin uses: the component's, or with a
    /// snapshot the instrumented and the rewritten one's.
    cached: Vec<String>,
    /// Counters.
    pub stats: Arc<PluginStats>,
}

impl LoadedPlugin {
    /// sha256 of the component as loaded (for `wasmtp status`).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// True if its instances start from the state its `init` left at load (the init snapshot).
    pub fn snapshot(&self) -> bool {
        self.preinit
    }
}

/// What `load_one` gives.
struct Linked {
    /// The contract version.
    contract: Contract,
    /// The template (on the pooled engine when there is a pool).
    pre: Pre,
    /// The same on the on-demand engine.
    fallback: Option<Pre>,
    /// sha256 of the component file.
    digest: String,
    /// Whether the compile cache had it (`hit` or `miss`).
    cache: &'static str,
    /// The snapshot's digests (instrumented, rewritten) if instances start from one; else why
    /// not (`off` when the config says so).
    snapshot: Result<[String; 2], String>,
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
    /// The engine instances come from: pooled unless `pool_instances = 0`.
    engine: Engine,
    linker: Linker<HostState>,
    /// With a pool: an on-demand engine (same compiled code) for instances
    /// the full pool cannot hold.
    fallback: Option<(Engine, Linker<HostState>)>,
    cache_dir: PathBuf,
    current: RwLock<Arc<PluginSet>>,
    stats: std::sync::Mutex<HashMap<String, Arc<PluginStats>>>,
    shared: Arc<host::Shared>,
    /// Plugins whose standby instances need making, for the thread that
    /// makes them (`run::fill_standby`).
    standby_tx: std::sync::mpsc::Sender<Arc<LoadedPlugin>>,
}

impl PluginHost {
    /// Creates the engines and loads the configured plugins.
    pub fn new(settings: &Settings, db: sled::Db) -> Result<Arc<PluginHost>, PluginError> {
        let shared = host::Shared::new(db, &settings.dns, &settings.plugin_limits, &settings.kv);
        PluginHost::start(settings, shared)
    }

    /// The same for `wasmtp plugin test`: `clock` and `dns` answer from `fakes`, nothing else
    /// differs (same loading, same calls).
    pub fn offline(
        settings: &Settings,
        db: sled::Db,
        fakes: fake::Fakes,
    ) -> Result<Arc<PluginHost>, PluginError> {
        let shared = host::Shared::new(db, &settings.dns, &settings.plugin_limits, &settings.kv);
        PluginHost::start(settings, shared.with_fakes(fakes))
    }

    fn start(settings: &Settings, shared: host::Shared) -> Result<Arc<PluginHost>, PluginError> {
        let limits = &settings.plugin_limits;
        let on_demand = new_engine(limits, false)?;
        let (engine, fallback) = if limits.pool_instances > 0 {
            let pooled = new_engine(limits, true)?;
            let linker = new_linker(&on_demand)?;
            (pooled, Some((on_demand, linker)))
        } else {
            (on_demand, None)
        };
        let ticked: Vec<_> = std::iter::once(&engine)
            .chain(fallback.as_ref().map(|(e, _)| e))
            .map(Engine::weak)
            .collect();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                loop {
                    let mut alive = false;
                    for weak in &ticked {
                        if let Some(engine) = weak.upgrade() {
                            engine.increment_epoch();
                            alive = true;
                        }
                    }
                    if !alive {
                        break;
                    }
                    std::thread::sleep(TICK);
                }
            })
            .expect("spawn epoch ticker");
        let linker = new_linker(&engine)?;
        let (standby_tx, standby_rx) = std::sync::mpsc::channel();
        let host = PluginHost {
            engine,
            linker,
            fallback,
            cache_dir: settings.data_dir.join("plugin-cache"),
            current: RwLock::new(Arc::new(PluginSet {
                plugins: Vec::new(),
                generation: 0,
            })),
            stats: Default::default(),
            shared: Arc::new(shared),
            standby_tx,
        };
        let set = host.load_set(&settings.plugins, 1)?;
        host.prune_cache(&set);
        *host.current.write().expect("plugin set lock") = Arc::new(set);
        host.want_standby_all();
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
        let host = Arc::new(host);
        let weak = Arc::downgrade(&host);
        std::thread::Builder::new()
            .name("plugin-standby".into())
            .spawn(move || make_standby(&weak, &standby_rx))
            .expect("spawn standby maker");
        Ok(host)
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
        // Once it is current: the maker makes none for a set that is not.
        self.want_standby_all();
        Ok(generation)
    }

    fn load_set(&self, specs: &[PluginSpec], generation: u64) -> Result<PluginSet, PluginError> {
        let mut plugins = Vec::new();
        for spec in specs {
            let started = std::time::Instant::now();
            let mut spec = spec.clone();
            let Linked {
                contract,
                mut pre,
                mut fallback,
                digest,
                cache,
                snapshot,
            } = self.load_one(&mut spec)?;
            let preinit = snapshot.is_ok();
            let mut pooled = self.fallback.is_some();
            // How long a fresh instance takes to make decides `standby`
            // when the config leaves it open.
            let auto = spec.standby.is_none() && spec.reuse == 0 && self.shared.limits.standby > 0;
            let rounds = if auto { 3 } else { 1 };
            let made = match self.check_init(&spec, &self.engine, &pre, !preinit, rounds) {
                Ok(made) => made,
                // A component that does not fit a pool slot (more core
                // instances, memories or tables than a slot has) runs on
                // the on-demand engine instead.
                Err(e) => match (&self.fallback, fallback.take()) {
                    (Some((engine, _)), Some(fb)) => {
                        match self.check_init(&spec, engine, &fb, !preinit, rounds) {
                            Ok(made) => {
                                warn!(plugin = %spec.name, error = %e, "plugin does not fit a slot of the instance pool; its instances are allocated on demand");
                                pre = fb;
                                pooled = false;
                                made
                            }
                            Err(_) => return Err(e),
                        }
                    }
                    _ => return Err(e),
                },
            };
            let standby = match spec.standby {
                Some(n) => n,
                None if auto && made >= STANDBY_WORTH => self.shared.limits.standby,
                None => 0,
            };
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
                cache,
                pooled,
                reuse = spec.reuse,
                standby,
                make_us = made.as_micros() as u64,
                snapshot = snapshot.as_ref().map_or_else(String::as_str, |_| "yes"),
                contract = contract.as_str(),
                "plugin loaded"
            );
            let cached = match snapshot {
                Ok(digests) => digests.to_vec(),
                Err(_) => vec![digest.clone()],
            };
            let plugin = Arc::new(LoadedPlugin {
                standby: run::Standby::new(&spec.name, standby),
                contract,
                spec,
                pre,
                fallback,
                pooled,
                warm: Default::default(),
                digest,
                preinit,
                cached,
                stats,
            });
            plugins.push(plugin);
        }
        Ok(PluginSet {
            plugins,
            generation,
        })
    }

    /// Runs `init` once in a throwaway instance, so a config the plugin
    /// refuses (or an `init` that traps) refuses the set at load, naming
    /// the plugin and its message, instead of failing every session later
    /// (with `init` false, only instantiates: a snapshot ran it already).
    /// Instantiates `rounds` times in all (`init` only in the first, so an
    /// `init` with effects runs once) and gives the fastest
    /// instantiation: what making a fresh instance costs. Runs on its own thread with its own small runtime, so it
    /// works the same from `check-config`, at start (inside the server's
    /// runtime) and at reload.
    fn check_init(
        &self,
        spec: &PluginSpec,
        engine: &Engine,
        pre: &Pre,
        init: bool,
        rounds: u32,
    ) -> Result<Duration, PluginError> {
        let init_failed = |detail: String| PluginError::Init {
            name: spec.name.clone(),
            detail,
        };
        let once = |init: bool| async move {
            let started = std::time::Instant::now();
            let state = self.load_state(spec).with_http(spec.http.as_ref());
            let mut store = run::new_store(engine, state);
            let plugin = pre.instantiate_async(&mut store).await.map_err(|e| {
                match e.downcast_ref::<contract::Mistyped>() {
                    Some(m) => PluginError::Compile {
                        name: spec.name.clone(),
                        path: spec.path.clone(),
                        detail: m.to_string(),
                    },
                    None => init_failed(format!("trapped while instantiating: {e:#}")),
                }
            })?;
            let made = started.elapsed();
            if !init {
                return Ok(made);
            }
            match plugin.init(&mut store, &spec.config_json).await {
                Ok(Ok(())) => Ok(made),
                Ok(Err(msg)) => Err(init_failed(format!(
                    "refused its config: {}",
                    crate::observe::escape(&msg)
                ))),
                Err(e) => Err(init_failed(run::with_output(
                    &format!("trapped: {e:#}"),
                    store.data_mut().take_output().as_deref(),
                ))),
            }
        };
        run_apart(init_deadline(spec), init_failed, async {
            let mut fastest = once(init).await?;
            for _ in 1..rounds {
                fastest = fastest.min(once(false).await?);
            }
            Ok(fastest)
        })
    }

    /// Asks the standby maker to top up `p`'s instances made ahead (once:
    /// a request already queued covers it).
    pub(crate) fn want_standby(&self, p: &Arc<LoadedPlugin>) {
        if p.standby.wanted() {
            // The maker has gone only when the host is being dropped.
            let _ = self.standby_tx.send(p.clone());
        }
    }

    /// Asks for the standby instances of every plugin of the current set.
    fn want_standby_all(&self) {
        for p in &self.current().plugins {
            self.want_standby(p);
        }
    }

    /// True when every plugin of the current set has its standby instances
    /// made (for benchmarks that measure a transaction served by one).
    pub fn standby_ready(&self) -> bool {
        self.current().plugins.iter().all(|p| p.standby.full())
    }

    /// The state of an instance run at load (the config check, the init snapshot): notes of
    /// its own, the plugin's grants.
    fn load_state(&self, spec: &PluginSpec) -> HostState {
        let notes = Arc::new(std::sync::Mutex::new(host::Notes::new(&self.shared.limits)));
        HostState::new(
            spec.name.as_str().into(),
            spec.grants.clone(),
            spec.memory,
            notes,
            self.shared.clone(),
        )
    }

    /// Reads, checks and pre-links one plugin. The manifest, if the component has one, may
    /// narrow `spec.hooks` (when the config lists none).
    fn load_one(&self, spec: &mut PluginSpec) -> Result<Linked, PluginError> {
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
        // Before compiling (seconds for a Python or JS component): every import at once.
        if let Ok((imports, _)) = inspect::top_level_names(&bytes) {
            import_problems(spec, &imports)?;
        }
        // With a snapshot the original is never compiled: instances come from the rewritten one.
        let (component, cache, snapshot) = match self.preinit(spec, &bytes) {
            Ok((component, cache, digests)) => (component, cache, Ok(digests)),
            Err(why) => {
                let (component, cache) = self.compile_cached(spec, &bytes, &digest)?;
                (component, cache, Err(why))
            }
        };
        let contract =
            Contract::of(&self.engine, &component).map_err(|detail| PluginError::Compile {
                name: name.clone(),
                path: spec.path.clone(),
                detail,
            })?;
        check_imports(&self.engine, &component, spec)?;
        let http = spec.grants.contains(&Grant::Http);
        let pre = prelink(
            &self.engine,
            &self.linker,
            &component,
            &name,
            contract,
            http,
        )?;
        let fallback = match &self.fallback {
            Some((engine, linker)) => {
                // The cached artifact mapped a second time shares its pages with the first
                // mapping; a serialized copy would be a second copy of the code in memory.
                let file = self.cache_file(snapshot.as_ref().map_or(&digest, |[_, s]| s));
                let c = match cache::check_trusted(&self.cache_dir, &file) {
                    // SAFETY: as in `compile_cached` (a trusted artifact this server wrote,
                    // for an engine with the same compilation settings, see `new_engine`).
                    Ok(true) => unsafe { Component::deserialize_file(engine, &file) }.ok(),
                    _ => None,
                };
                let c = match c {
                    Some(c) => c,
                    None => {
                        let bytes = component.serialize().map_err(engine_err)?;
                        // SAFETY: serialized just now by an engine with the same
                        // compilation settings (see `new_engine`).
                        unsafe { Component::deserialize(engine, &bytes) }.map_err(engine_err)?
                    }
                };
                Some(prelink(engine, linker, &c, &name, contract, http)?)
            }
            None => None,
        };
        Ok(Linked {
            contract,
            pre,
            fallback,
            digest,
            cache,
            snapshot,
        })
    }

    /// The component with the state `init` left baked in (`snapshot`), compiled, whether the
    /// compile cache had both components it compiled, and their digests (instrumented,
    /// rewritten); Err: why instances run `init` themselves (`off`, or the reason, also logged).
    /// Any failure here, a refused config included, falls back to the plain path, which reports
    /// it as a load error.
    fn preinit(
        &self,
        spec: &PluginSpec,
        bytes: &[u8],
    ) -> Result<(Component, &'static str, [String; 2]), String> {
        if !spec.snapshot {
            return Err("off".into());
        }
        if spec.grants.contains(&Grant::Http) {
            // Linked with wasmtime-wasi (random, clocks): state that must not be frozen.
            return Err("no (http grant)".into());
        }
        let run = || -> Result<(Component, &'static str, [String; 2]), snapshot::NoSnapshot> {
            use snapshot::NoSnapshot::Failed;
            // On the calling thread: compiling needs no runtime. Only `init` runs apart.
            let (cx, instrumented) = snapshot::instrument(bytes)?;
            let digest_i = digest(&instrumented);
            let (component, cache_i) = self
                .compile_cached(spec, &instrumented, &digest_i)
                .map_err(|e| Failed(e.to_string()))?;
            // The instrumented component has the original's imports and exports (and one more
            // export): the contract and the import check read it.
            let contract = Contract::of(&self.engine, &component).map_err(Failed)?;
            check_imports(&self.engine, &component, spec).map_err(|e| Failed(e.to_string()))?;
            let pre = prelink(
                &self.engine,
                &self.linker,
                &component,
                &spec.name,
                contract,
                false,
            )
            .map_err(|e| Failed(e.to_string()))?;
            let rewritten = run_apart(init_deadline(spec), Failed, async {
                let mut store = run::new_store(&self.engine, self.load_state(spec).sealed());
                snapshot::take(&cx, &pre, &mut store, &spec.config_json).await
            })?;
            let digest_s = digest(&rewritten);
            let (component, cache_s) = self
                .compile_cached(spec, &rewritten, &digest_s)
                .map_err(|e| Failed(e.to_string()))?;
            let cache = if cache_i == "hit" { cache_s } else { "miss" };
            Ok((component, cache, [digest_i, digest_s]))
        };
        run().map_err(|why| {
            match &why {
                snapshot::NoSnapshot::UsesCapability(_) => {
                    info!(plugin = %spec.name, reason = %why, "no init snapshot: instances run init themselves")
                }
                snapshot::NoSnapshot::Failed(_) => {
                    warn!(plugin = %spec.name, reason = %why, "no init snapshot: instances run init themselves")
                }
                snapshot::NoSnapshot::InitFailed(_) => {
                    tracing::debug!(plugin = %spec.name, reason = %why, "no init snapshot: init failed")
                }
            }
            "no".into()
        })
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
        let stateless_reuse = self.shared.limits.stateless_reuse;
        m.apply(spec, stateless_reuse).map_err(|r| match r {
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
    ) -> Result<(Component, &'static str), PluginError> {
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
                return Ok((c, "hit"));
            }
            warn!(plugin = %spec.name, file = %file.display(), "unusable compiled plugin in cache; recompiling");
        }
        let compile_err = |e: wasmtime::Error| PluginError::Compile {
            name: spec.name.clone(),
            path: spec.path.clone(),
            detail: format!("{e:#}"),
        };
        let compile_here = || self.engine.precompile_component(bytes).map_err(compile_err);
        let (mut artifact, mut apart) =
            match compiler::compile(&spec.name, &self.shared.limits, bytes) {
                compiler::Apart::Compiled(artifact) => (artifact, true),
                compiler::Apart::Failed(detail) => {
                    return Err(PluginError::Compile {
                        name: spec.name.clone(),
                        path: spec.path.clone(),
                        detail,
                    });
                }
                compiler::Apart::NotAvailable => (compile_here()?, false),
            };
        loop {
            match self.store_and_map(spec, &file, &artifact) {
                Ok(c) => return Ok((c, "miss")),
                // Settings the child does not share: compiled again here, and
                // that artifact replaces the child's in the cache.
                Err(e) if apart => {
                    warn!(plugin = %spec.name, error = %format!("{e:#}"), "the compiler child's artifact does not load; compiling in the server");
                    (artifact, apart) = (compile_here()?, false);
                }
                Err(e) => return Err(compile_err(e)),
            }
        }
    }

    /// Writes `artifact` to the cache as `file` and maps it from there (clean page cache shared
    /// with every other mapping of it, not a private copy); from memory when the cache cannot
    /// be written.
    fn store_and_map(
        &self,
        spec: &PluginSpec,
        file: &Path,
        artifact: &[u8],
    ) -> wasmtime::Result<Component> {
        match cache::write(&self.cache_dir, file, artifact) {
            // SAFETY: written just now by this server into a directory `cache::write` checked,
            // produced by this engine or by the compiler child with the same compilation
            // settings (`compiler`; the load checks them).
            Ok(()) => {
                if let Ok(c) = unsafe { Component::deserialize_file(&self.engine, file) } {
                    return Ok(c);
                }
            }
            Err(e) => {
                warn!(plugin = %spec.name, dir = %self.cache_dir.display(), error = %e, "cannot write the plugin cache")
            }
        }
        // SAFETY: as above, from memory.
        unsafe { Component::deserialize(&self.engine, artifact) }
    }

    /// Removes cached artifacts that no plugin of `set` uses (older
    /// versions, other engines, removed plugins) and stale temporary files.
    fn prune_cache(&self, set: &PluginSet) {
        let keep: Vec<PathBuf> = set
            .plugins
            .iter()
            .flat_map(|p| p.cached.iter().map(|d| self.cache_file(d)))
            .collect();
        let removed = cache::prune(&self.cache_dir, &keep);
        if removed > 0 {
            info!(removed, dir = %self.cache_dir.display(), "unused compiled plugins pruned from the cache");
        }
    }

    /// The engine `p`'s template is on, and the on-demand engine when
    /// that one is pooled (for instances a full pool cannot hold).
    pub(crate) fn engines(&self, p: &LoadedPlugin) -> (&Engine, Option<&Engine>) {
        match &self.fallback {
            Some((on_demand, _)) if p.pooled => (&self.engine, Some(on_demand)),
            Some((on_demand, _)) => (on_demand, None),
            None => (&self.engine, None),
        }
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

/// Links `component` against the host functions of `base` (plus the hash-map
/// seed and the WASI stdio/env subset it imports; with the `http` grant,
/// wasmtime-wasi's WASI and wasi-http instead) and pre-instantiates it.
fn prelink(
    engine: &Engine,
    base: &Linker<HostState>,
    component: &Component,
    name: &str,
    contract: Contract,
    http: bool,
) -> Result<Pre, PluginError> {
    let link_err = |e: wasmtime::Error| PluginError::Link {
        name: name.to_string(),
        detail: format!("{e:#}"),
    };
    let mut linker = base.clone();
    if http {
        // Everything the import check let through is defined; filling in
        // "unknown" imports would give the resources an interface re-exports
        // (`error` in wasi:io/streams) a type of their own and break linking.
        http::link(&mut linker).map_err(link_err)?;
    } else {
        link_wasi_slice(&mut linker, engine, component).map_err(link_err)?;
        linker
            .define_unknown_imports_as_traps(component)
            .map_err(link_err)?;
    }
    let pre = linker.instantiate_pre(component).map_err(link_err)?;
    Pre::new(contract, pre).map_err(|e| PluginError::Import {
        name: name.to_string(),
        import: "an interface of a different shape".into(),
        hint: format!("it does not match the {} world: {e:#}", contract.as_str()),
    })
}

/// The hash-map seed and the hand-written WASI stdio/env slice, for plugins
/// without the `http` grant.
fn link_wasi_slice(
    linker: &mut Linker<HostState>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    // Hash maps in guests ask for a seed (wasi:random/insecure-seed); it
    // grants nothing, so it is provided to everyone.
    for (import, _) in component.component_type().imports(engine) {
        if import.starts_with("wasi:random/insecure-seed") {
            linker.instance(import).and_then(|mut i| {
                i.func_wrap("insecure-seed", |_, (): ()| {
                    Ok(((rand::random::<u64>(), rand::random::<u64>()),))
                })
            })?;
        }
    }
    // Rust std guests import WASI stdio/env interfaces only to print
    // panics: the environment is empty and stdout/stderr are captured
    // for the log; the rest traps (check_imports allowed only those).
    wasi::link(linker, engine, component)
}

fn engine_err(e: wasmtime::Error) -> PluginError {
    PluginError::Link {
        name: "(engine)".into(),
        detail: format!("{e:#}"),
    }
}

/// The thread that makes standby instances: one plugin's at a time, in the
/// order asked, on a small runtime of its own, so making a slow instance
/// never holds a session's worker. Ends with the host.
fn make_standby(
    host: &std::sync::Weak<PluginHost>,
    asked: &std::sync::mpsc::Receiver<Arc<LoadedPlugin>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "no standby instances: their runtime could not start; sessions make their own");
            return;
        }
    };
    while let Ok(p) = asked.recv() {
        let Some(host) = host.upgrade() else {
            break;
        };
        rt.block_on(run::fill_standby(&host, &p));
    }
}

/// How long `init` may run at load: the plugin's connect deadline, at least a second.
pub(crate) fn init_deadline(spec: &PluginSpec) -> Duration {
    spec.timeout(HookName::Connect).max(Duration::from_secs(1))
}

/// Runs `fut` within `deadline` on a thread of its own with a small runtime of its own, so it
/// works the same from `check-config`, at start (inside the server's runtime) and at reload;
/// `err` makes the error for a runtime that cannot start, the deadline, or a panic.
fn run_apart<T: Send, E: Send>(
    deadline: Duration,
    err: impl Fn(String) -> E + Sync,
    fut: impl std::future::Future<Output = Result<T, E>> + Send,
) -> Result<T, E> {
    let run = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| err(format!("could not run: {e}")))?;
        rt.block_on(async {
            tokio::time::timeout(deadline, fut)
                .await
                .unwrap_or_else(|_| Err(err(format!("did not finish within {deadline:?}"))))
        })
    };
    std::thread::scope(|s| {
        s.spawn(run)
            .join()
            .unwrap_or_else(|_| Err(err("panicked in the host".into())))
    })
}

/// An engine with epoch interruption and the configured memory
/// reservation; `pooled` adds the pooling allocator sized from
/// `plugin_limits.pool_instances`. Both kinds compile the same code (the
/// allocator is not part of the compatibility hash), so one cached
/// artifact serves both.
fn new_engine(limits: &crate::config::PluginLimits, pooled: bool) -> Result<Engine, PluginError> {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true);
    cfg.wasm_component_model(true);
    cfg.memory_reservation(limits.memory_reservation);
    if pooled {
        let n = u32::try_from(limits.pool_instances).unwrap_or(u32::MAX);
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            // A Python component has ~38 core modules, a Rust one a handful.
            .total_core_instances(n.saturating_mul(8))
            .max_core_instances_per_component(64)
            .total_memories(n)
            .max_memories_per_module(1)
            .total_tables(n.saturating_mul(4))
            .max_tables_per_module(4)
            // One call at a time per instance, so one stack per instance.
            .total_stacks(n)
            .max_memory_size(usize::try_from(limits.memory_reservation).unwrap_or(usize::MAX))
            // Reset a returned slot by rewriting the pages the instance
            // dirtied (found with PAGEMAP_SCAN where the kernel has it)
            // instead of madvise: madvise flushes the TLB of every core
            // (9% of the server's samples at 1 KiB with three plugins).
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT / 16);
        cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        cfg.memory_init_cow(true);
    }
    Engine::new(&cfg).map_err(|e| PluginError::Link {
        name: "(engine)".into(),
        detail: format!(
            "{e:#} (keys plugin_limits.pool_instances and plugin_limits.memory_reservation)"
        ),
    })
}

fn new_linker(engine: &Engine) -> Result<Linker<HostState>, PluginError> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    // Both contract versions' host functions: a plugin links against the one it imports.
    contract::add_to_linker(&mut linker).map_err(engine_err)?;
    Ok(linker)
}

/// True if `e` says the pooling allocator is out of slots.
pub(crate) fn pool_full(e: &wasmtime::Error) -> bool {
    e.is::<wasmtime::PoolConcurrencyLimitError>()
        || e.chain()
            .any(|c| c.is::<wasmtime::PoolConcurrencyLimitError>())
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

/// How to grant `http`: a table, not a `grants` entry.
const HTTP_GRANT_HINT: &str = "give it an `http` table with the hosts it may reach (key http, \
     e.g. http = { allowed_hosts = [\"rspamd.example:11333\"] })";

/// How to give `grant` (named as in config): a `grants` entry, or for `http` its table.
fn grant_how(grant: &str) -> String {
    if grant == Grant::Http.as_str() {
        HTTP_GRANT_HINT.to_string()
    } else {
        format!("add \"{grant}\" to its grants")
    }
}

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

/// What `import` (an instance name such as `wasmtp:plugin/kv@0.2.0`) takes from the host. A
/// `wasmtp:plugin` interface of a contract version this host does not serve is unavailable.
pub fn import_need(import: &str) -> ImportNeed {
    let base = import.split('@').next().unwrap_or(import);
    if base.starts_with("wasmtp:plugin/") && contract::Contract::of_name(import).is_none() {
        return ImportNeed::Unavailable;
    }
    match base {
        "wasmtp:plugin/types" | "wasmtp:plugin/log" | "wasmtp:plugin/notes" => ImportNeed::Always,
        "wasi:random/insecure-seed" => ImportNeed::Always,
        "wasmtp:plugin/kv" => ImportNeed::Grant(Grant::Kv),
        "wasmtp:plugin/dns" => ImportNeed::Grant(Grant::Dns),
        "wasmtp:plugin/clock" => ImportNeed::Grant(Grant::Clock),
        // wasi-http's types use the monotonic clock's `duration` (timeouts)
        // and its pollables; it comes with the `http` grant.
        "wasi:http/outgoing-handler" | "wasi:http/types" | "wasi:clocks/monotonic-clock" => {
            ImportNeed::Grant(Grant::Http)
        }
        b if STUBBED_WASI.contains(&b) => ImportNeed::Stub,
        _ => ImportNeed::Unavailable,
    }
}

/// Refuses a plugin whose imports the host will not satisfy, naming all of them at once: the
/// grants to add (and the key), and the imports wasmtp never provides with the build flags that
/// drop them where the toolchain is known. Runs on the component's bytes, before compiling.
fn import_problems(spec: &PluginSpec, imports: &[String]) -> Result<(), PluginError> {
    let mut ungranted: Vec<&str> = Vec::new();
    let mut grants: Vec<&str> = Vec::new();
    let mut unavailable: Vec<&str> = Vec::new();
    let mut unserved: Vec<&str> = Vec::new();
    for import in imports {
        match import_need(import) {
            ImportNeed::Always | ImportNeed::Stub => {}
            ImportNeed::Unavailable if import.starts_with("wasmtp:plugin/") => {
                unserved.push(import)
            }
            ImportNeed::Grant(g) if spec.grants.contains(&g) => {}
            ImportNeed::Grant(g) => {
                ungranted.push(import);
                if !grants.contains(&g.as_str()) {
                    grants.push(g.as_str());
                }
            }
            ImportNeed::Unavailable => unavailable.push(import),
        }
    }
    if ungranted.is_empty() && unavailable.is_empty() && unserved.is_empty() {
        return Ok(());
    }
    let quoted = |v: &[&str]| {
        v.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut hints = Vec::new();
    if !ungranted.is_empty() {
        let add = grants
            .iter()
            .filter(|g| **g != "http")
            .map(|g| format!("\"{g}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let how = match (add.is_empty(), grants.contains(&"http")) {
            (_, false) => format!("add {add} to its `grants`"),
            (true, true) => HTTP_GRANT_HINT.to_string(),
            (false, true) => format!("add {add} to its `grants` and {HTTP_GRANT_HINT}"),
        };
        hints.push(format!(
            "{} not granted: {how} ([[plugin]] name = {:?}, key grants)",
            quoted(&ungranted),
            spec.name
        ));
    }
    if !unavailable.is_empty() {
        hints.push(format!(
            "{} which wasmtp does not provide to plugins (no filesystem, network or other WASI \
             access): drop them at build time (componentize-js: `-d stdio random clocks http \
             fetch-event`; componentize-py: `--stub-wasi`; Rust: no std::fs, std::net or \
             std::env calls)",
            quoted(&unavailable)
        ));
    }
    if !unserved.is_empty() {
        hints.push(format!(
            "{} of a contract version this server does not serve (it serves {})",
            quoted(&unserved),
            contract::served_list()
        ));
    }
    Err(PluginError::Import {
        name: spec.name.clone(),
        import: format!(
            "{} interface(s) the server will not link",
            ungranted.len() + unavailable.len() + unserved.len()
        ),
        hint: hints.join("; "),
    })
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
            let how = if grant == Grant::Http {
                HTTP_GRANT_HINT.to_string()
            } else {
                format!("add \"{g}\" to its `grants`")
            };
            return Err(PluginError::Import {
                name: spec.name.clone(),
                import: import.to_string(),
                hint: format!(
                    "which was not granted: {how} ([[plugin]] name = {:?}, key grants)",
                    spec.name
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(grants: &str) -> PluginSpec {
        let config = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\ngrants = [{grants}]\n"
        );
        let mut settings = Settings::parse(&config, "imports.toml").expect("config");
        settings.plugins.remove(0)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_import_the_host_will_not_link_is_named_at_once() {
        let imports = names(&[
            "wasmtp:plugin/types@0.1.0",
            "wasmtp:plugin/kv@0.1.0",
            "wasmtp:plugin/dns@0.1.0",
            "wasi:cli/stdout@0.2.6",
            "wasi:sockets/tcp@0.2.3",
            "wasi:filesystem/types@0.2.6",
        ]);
        let err = import_problems(&spec(""), &imports)
            .unwrap_err()
            .to_string();
        for want in [
            "plugin p:",
            "4 interface(s)",
            "`wasmtp:plugin/kv@0.1.0`, `wasmtp:plugin/dns@0.1.0` not granted",
            "add \"kv\", \"dns\" to its `grants`",
            "`wasi:sockets/tcp@0.2.3`, `wasi:filesystem/types@0.2.6` which wasmtp",
            "-d stdio random clocks http fetch-event",
            "--stub-wasi",
        ] {
            assert!(err.contains(want), "{want:?} missing in: {err}");
        }
        // The stubbed std WASI import is not a problem.
        assert!(!err.contains("wasi:cli/stdout"), "{err}");
        // Granted, only the unavailable ones remain.
        let err = import_problems(&spec("\"kv\", \"dns\""), &imports)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 interface(s)") && !err.contains("not granted"),
            "{err}"
        );
        let linked = names(&["wasmtp:plugin/kv@0.1.0", "wasi:cli/stdout@0.2.6"]);
        assert!(import_problems(&spec("\"kv\""), &linked).is_ok());
        // Both served contract versions link; one this host does not serve is named.
        let both = names(&["wasmtp:plugin/types@0.1.0", "wasmtp:plugin/types@0.2.0"]);
        assert!(import_problems(&spec(""), &both).is_ok());
        let err = import_problems(&spec(""), &names(&["wasmtp:plugin/types@0.3.0"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`wasmtp:plugin/types@0.3.0` of a contract version this server does not serve (it serves wasmtp:plugin@0.1.0, wasmtp:plugin@0.2.0)"),
            "{err}"
        );
        // wasi:http comes with the `http` table, and the refusal says so.
        let http = names(&[
            "wasi:http/outgoing-handler@0.2.6",
            "wasi:http/types@0.2.6",
            "wasi:clocks/monotonic-clock@0.2.6",
            "wasi:io/streams@0.2.6",
        ]);
        let err = import_problems(&spec(""), &http).unwrap_err().to_string();
        assert!(
            err.contains("3 interface(s)") && err.contains("give it an `http` table"),
            "{err}"
        );
        let mut granted = spec("");
        granted.grants.push(Grant::Http);
        assert!(import_problems(&granted, &http).is_ok());
    }
}
