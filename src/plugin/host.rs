//! Host capabilities: what a plugin may call. `log` and `notes` are always
//! there; `kv`, `dns` and `clock` only when granted. A plugin importing an
//! ungranted interface is refused at load (`check_imports`); each call
//! checks the grant again and traps if it is missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::sync::OnceCell;
use wasmtime::component::ResourceTable;

use super::bindings::wasmtp::plugin::{clock, dns, kv, log, notes, types};
use super::limits::InstanceLimits;
use crate::config::{DnsSettings, Grant, PluginLimits};
use crate::observe::{escape, limit_hit};

/// What every instance of every plugin shares: the kv store, the resolver,
/// the limits and each plugin's log budget.
pub struct Shared {
    db: sled::Db,
    kv_spaces: Mutex<HashMap<String, Arc<KvSpace>>>,
    dns: DnsSettings,
    resolver: OnceCell<Result<TokioResolver, String>>,
    pub(crate) limits: PluginLimits,
    logs: Mutex<HashMap<Arc<str>, LogWindow>>,
    /// `wasmtp plugin test`: a fixed clock and DNS answers from the case instead of the system's.
    fakes: Option<Arc<super::fake::Fakes>>,
}

/// One plugin's kv namespace and the bytes it holds (keys plus stored
/// values), counted so the quota check needs no scan.
struct KvSpace {
    tree: sled::Tree,
    used: AtomicU64,
}

impl KvSpace {
    fn adjust(&self, old: u64, new: u64) {
        if new >= old {
            self.used.fetch_add(new - old, Ordering::Relaxed);
        } else {
            let _ = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                    Some(u.saturating_sub(old - new))
                });
        }
    }

    /// Removes every expired entry; returns how many went.
    fn purge(&self, now: u64) -> u64 {
        let mut removed = 0;
        for (k, v) in self.tree.iter().flatten() {
            if kv_decode(&v, now).is_none()
                && matches!(
                    self.tree.compare_and_swap(&k, Some(&v), None::<&[u8]>),
                    Ok(Ok(()))
                )
            {
                self.adjust((k.len() + v.len()) as u64, 0);
                removed += 1;
            }
        }
        removed
    }
}

/// Log lines one plugin wrote in the current second.
#[derive(Default)]
struct LogWindow {
    second: u64,
    lines: u32,
    dropped: u64,
}

impl Shared {
    pub(crate) fn new(db: sled::Db, dns: &DnsSettings, limits: &PluginLimits) -> Shared {
        Shared {
            db,
            kv_spaces: Mutex::default(),
            dns: dns.clone(),
            resolver: OnceCell::new(),
            limits: limits.clone(),
            logs: Mutex::default(),
            fakes: None,
        }
    }

    /// The same, answering `clock` and `dns` from `fakes` (offline replay, no network).
    pub(crate) fn with_fakes(mut self, fakes: super::fake::Fakes) -> Shared {
        self.fakes = Some(Arc::new(fakes));
        self
    }

    /// Stores `value` under `key` in `plugin`'s kv namespace, as `kv.set` without a ttl would
    /// (a replayed case's kv contents).
    pub(crate) fn seed_kv(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), String> {
        let space = self.kv_space(plugin)?;
        let raw = kv_encode(value, None, now_millis());
        let prev = space
            .tree
            .insert(key.as_bytes(), raw.as_slice())
            .map_err(|e| e.to_string())?;
        space.adjust(
            prev.map_or(0, |v| (key.len() + v.len()) as u64),
            (key.len() + raw.len()) as u64,
        );
        Ok(())
    }

    /// The namespace of `plugin`; the first open purges expired entries and
    /// counts the bytes left.
    fn kv_space(&self, plugin: &str) -> Result<Arc<KvSpace>, String> {
        let mut spaces = self.kv_spaces.lock().expect("kv lock");
        if let Some(t) = spaces.get(plugin) {
            return Ok(t.clone());
        }
        let tree = self
            .db
            .open_tree(format!("kv:{plugin}"))
            .map_err(|e| e.to_string())?;
        let space = Arc::new(KvSpace {
            tree,
            used: AtomicU64::new(0),
        });
        space.purge(now_millis());
        let used: u64 = space
            .tree
            .iter()
            .flatten()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        space.used.store(used, Ordering::Relaxed);
        spaces.insert(plugin.to_string(), space.clone());
        Ok(space)
    }

    /// Removes expired kv entries of every plugin namespace in the store
    /// (also of plugins no longer configured); run every
    /// `plugin_limits.kv_sweep_interval`.
    pub(crate) fn sweep_kv(&self) {
        let names: Vec<String> = self
            .db
            .tree_names()
            .iter()
            .filter_map(|n| {
                std::str::from_utf8(n)
                    .ok()?
                    .strip_prefix("kv:")
                    .map(String::from)
            })
            .collect();
        for name in names {
            let Ok(space) = self.kv_space(&name) else {
                continue;
            };
            let removed = space.purge(now_millis());
            if removed > 0 {
                tracing::info!(plugin = %escape(&name), removed, "expired kv entries purged");
            }
        }
    }

    /// Whether `plugin` may write another log line this second. The first
    /// line of a second also reports how many the last full second dropped.
    fn admit_log(&self, plugin: &Arc<str>) -> (bool, u64) {
        let now = now_millis() / 1000;
        let mut logs = self.logs.lock().expect("log budget lock");
        let w = logs.entry(plugin.clone()).or_default();
        let mut reported = 0;
        if w.second != now {
            reported = std::mem::take(&mut w.dropped);
            w.second = now;
            w.lines = 0;
        }
        if w.lines >= self.limits.log_lines_per_second {
            w.dropped += 1;
            if w.dropped == 1 {
                limit_hit(
                    "plugin_limits.log_lines_per_second",
                    &format!(
                        "plugin {plugin} writes more log lines than that; the rest of this second is dropped"
                    ),
                );
            }
            return (false, 0);
        }
        w.lines += 1;
        (true, reported)
    }

    async fn resolver(&self) -> Result<&TokioResolver, String> {
        let r = self
            .resolver
            .get_or_init(|| async { crate::dns::resolver(&self.dns).map_err(|e| e.to_string()) })
            .await;
        r.as_ref().map_err(|e| e.clone())
    }
}

/// Notes: key/value strings shared by the plugins of one session. Notes set
/// during a transaction end with it; notes set before the first MAIL (at
/// connect or EHLO) last for the session.
/// Both kinds count against `plugin_limits.max_notes` and
/// `plugin_limits.max_notes_size` together.
#[derive(Debug)]
pub struct Notes {
    session: BTreeMap<String, String>,
    tx: BTreeMap<String, String>,
    in_tx: bool,
    bytes: u64,
    max_notes: usize,
    max_bytes: u64,
}

/// Why a note was refused: the limit's key and what it was.
#[derive(Debug)]
pub struct NotesFull {
    /// The config key of the limit.
    pub limit: &'static str,
    /// The bound.
    pub max: u64,
}

impl Notes {
    /// Empty notes bounded by `limits`.
    pub fn new(limits: &PluginLimits) -> Notes {
        Notes {
            session: BTreeMap::new(),
            tx: BTreeMap::new(),
            in_tx: false,
            bytes: 0,
            max_notes: limits.max_notes,
            max_bytes: limits.max_notes_size,
        }
    }

    /// Marks the start of a transaction.
    pub fn begin_tx(&mut self) {
        self.in_tx = true;
    }

    /// Ends the transaction and forgets its notes.
    pub fn end_tx(&mut self) {
        self.in_tx = false;
        let freed: usize = self.tx.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.bytes -= freed as u64;
        self.tx.clear();
    }

    /// Reads a note (transaction first, then session).
    pub fn get(&self, key: &str) -> Option<&String> {
        self.tx.get(key).or_else(|| self.session.get(key))
    }

    fn set(&mut self, key: String, value: String) -> Result<(), NotesFull> {
        let count = self.session.len() + self.tx.len();
        let map = if self.in_tx {
            &mut self.tx
        } else {
            &mut self.session
        };
        let old = map.get(&key).map_or(0, |v| key.len() + v.len()) as u64;
        let new = (key.len() + value.len()) as u64;
        if !map.contains_key(&key) && count >= self.max_notes {
            return Err(NotesFull {
                limit: "plugin_limits.max_notes",
                max: self.max_notes as u64,
            });
        }
        if self.bytes - old + new > self.max_bytes {
            return Err(NotesFull {
                limit: "plugin_limits.max_notes_size",
                max: self.max_bytes,
            });
        }
        map.insert(key, value);
        self.bytes = self.bytes - old + new;
        Ok(())
    }

    fn remove(&mut self, key: &str) {
        for map in [&mut self.tx, &mut self.session] {
            if let Some(v) = map.remove(key) {
                self.bytes -= (key.len() + v.len()) as u64;
            }
        }
    }

    /// How many notes there are and their bytes (for tests and logs).
    pub fn usage(&self) -> (usize, u64) {
        (self.session.len() + self.tx.len(), self.bytes)
    }

    /// Every note whose key starts with `prefix`.
    pub fn entries(&self, prefix: &str) -> Vec<(String, String)> {
        let mut all: BTreeMap<&String, &String> = self.session.iter().collect();
        all.extend(self.tx.iter());
        all.into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The data of one plugin instance's store.
pub struct HostState {
    pub(crate) plugin: Arc<str>,
    grants: Vec<Grant>,
    pub(crate) limits: InstanceLimits,
    pub(crate) table: ResourceTable,
    pub(crate) notes: Arc<Mutex<Notes>>,
    shared: Arc<Shared>,
    /// Limits this instance already reported: a plugin looping on a full
    /// quota logs `limit reached` once per instance, not once per call.
    reported: HashSet<&'static str>,
    /// What the guest wrote to stdout/stderr in the current call (a panic message, usually).
    pub(crate) output: super::wasi::Output,
}

impl HostState {
    pub(crate) fn new(
        plugin: Arc<str>,
        grants: Vec<Grant>,
        memory: u64,
        notes: Arc<Mutex<Notes>>,
        shared: Arc<Shared>,
    ) -> HostState {
        HostState {
            limits: InstanceLimits::new(plugin.clone(), memory),
            plugin,
            grants,
            table: ResourceTable::new(),
            notes,
            shared,
            reported: HashSet::new(),
            output: Default::default(),
        }
    }

    /// Reports `limit` (once per instance) and returns the error text the
    /// plugin gets.
    fn hit(&mut self, limit: &'static str, detail: String) -> String {
        if self.reported.insert(limit) {
            limit_hit(limit, &format!("plugin {}: {detail}", self.plugin));
        }
        format!("{detail} (key {limit})")
    }

    fn check(&self, grant: Grant) -> wasmtime::Result<()> {
        if self.grants.contains(&grant) {
            Ok(())
        } else {
            wasmtime::bail!("plugin {} called {grant:?} without the grant", self.plugin)
        }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let (admitted, dropped) = self.shared.admit_log(&self.plugin);
        if !admitted {
            return Ok(());
        }
        let plugin = &*self.plugin;
        if dropped > 0 {
            tracing::warn!(target: "wasmtp::plugin::guest", plugin, dropped, "plugin log lines dropped");
        }
        let message = escape_long(&message);
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "wasmtp::plugin::guest", plugin, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "wasmtp::plugin::guest", plugin, "{message}")
            }
            log::Level::Info => {
                tracing::info!(target: "wasmtp::plugin::guest", plugin, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "wasmtp::plugin::guest", plugin, "{message}")
            }
            log::Level::Error => {
                tracing::error!(target: "wasmtp::plugin::guest", plugin, "{message}")
            }
        }
        Ok(())
    }
}

/// [`escape`] for a text longer than its 200 characters: escaped in pieces,
/// so a long line stays whole (the caller already capped its length).
pub(crate) fn escape_long(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars
        .chunks(200)
        .map(|c| escape(&c.iter().collect::<String>()))
        .collect()
}

const MAX_NOTE: usize = 64 * 1024;

impl notes::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.notes.lock().expect("notes lock").get(&key).cloned())
    }
    fn set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        if key.len() + value.len() > MAX_NOTE {
            wasmtime::bail!("note {} is over {MAX_NOTE} bytes", escape(&key));
        }
        let refused = self.notes.lock().expect("notes lock").set(key, value);
        if let Err(full) = refused {
            // The contract has no error for notes: a plugin that floods them
            // is broken, so the call traps and on_error applies.
            let e = self.hit(full.limit, format!("notes are over {}", full.max));
            wasmtime::bail!("{e}");
        }
        Ok(())
    }
    fn remove(&mut self, key: String) -> wasmtime::Result<()> {
        self.notes.lock().expect("notes lock").remove(&key);
        Ok(())
    }
    fn entries(&mut self, prefix: String) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.notes.lock().expect("notes lock").entries(&prefix))
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// kv values are stored as 8 bytes of expiry (unix ms, 0 = none) + value.
fn kv_decode(raw: &[u8], now: u64) -> Option<&[u8]> {
    let (exp, value) = raw.split_at_checked(8)?;
    let exp = u64::from_be_bytes(exp.try_into().ok()?);
    (exp == 0 || exp > now).then_some(value)
}

fn kv_encode(value: &[u8], ttl: Option<u32>, now: u64) -> Vec<u8> {
    let exp = ttl.map_or(0, |t| now + u64::from(t) * 1000);
    let mut v = exp.to_be_bytes().to_vec();
    v.extend_from_slice(value);
    v
}

impl HostState {
    /// Checks a kv key against `plugin_limits.max_kv_key`.
    fn kv_key_ok(&mut self, key: &str) -> Result<(), String> {
        let max = self.shared.limits.max_kv_key;
        if key.len() as u64 > max {
            return Err(self.hit(
                "plugin_limits.max_kv_key",
                format!("kv key of {} bytes is over {max}", key.len()),
            ));
        }
        Ok(())
    }

    /// Checks that growing the namespace by `grow` bytes stays inside
    /// `plugin_limits.max_kv_size`; purges expired entries once before
    /// refusing.
    fn kv_room(&mut self, space: &KvSpace, grow: u64) -> Result<(), String> {
        let max = self.shared.limits.max_kv_size;
        let fits = |s: &KvSpace| s.used.load(Ordering::Relaxed).saturating_add(grow) <= max;
        if grow == 0 || fits(space) {
            return Ok(());
        }
        space.purge(now_millis());
        if fits(space) {
            return Ok(());
        }
        Err(self.hit(
            "plugin_limits.max_kv_size",
            format!("the kv namespace is full ({max} bytes)"),
        ))
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        self.check(Grant::Kv)?;
        let space = match self.shared.kv_space(&self.plugin) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        let raw = match space.tree.get(key.as_bytes()) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(Ok(None)),
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Some(v) = kv_decode(&raw, now_millis()) {
            return Ok(Ok(Some(v.to_vec())));
        }
        // Expired: purge on access (unless someone rewrote it meanwhile).
        if let Ok(Ok(())) = space
            .tree
            .compare_and_swap(key.as_bytes(), Some(&raw), None::<&[u8]>)
        {
            space.adjust((key.len() + raw.len()) as u64, 0);
        }
        Ok(Ok(None))
    }
    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> wasmtime::Result<Result<(), String>> {
        self.check(Grant::Kv)?;
        if let Err(e) = self.kv_key_ok(&key) {
            return Ok(Err(e));
        }
        let max = self.shared.limits.max_kv_value;
        if value.len() as u64 > max {
            let e = self.hit(
                "plugin_limits.max_kv_value",
                format!("kv value of {} bytes is over {max}", value.len()),
            );
            return Ok(Err(e));
        }
        let space = match self.shared.kv_space(&self.plugin) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        let raw = kv_encode(&value, ttl, now_millis());
        let new = (key.len() + raw.len()) as u64;
        let old = match space.tree.get(key.as_bytes()) {
            Ok(v) => v.map_or(0, |v| (key.len() + v.len()) as u64),
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Err(e) = self.kv_room(&space, new.saturating_sub(old)) {
            return Ok(Err(e));
        }
        Ok(match space.tree.insert(key.as_bytes(), raw) {
            Ok(prev) => {
                space.adjust(prev.map_or(0, |v| (key.len() + v.len()) as u64), new);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        })
    }
    fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        self.check(Grant::Kv)?;
        let space = match self.shared.kv_space(&self.plugin) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        Ok(match space.tree.remove(key.as_bytes()) {
            Ok(prev) => {
                space.adjust(prev.map_or(0, |v| (key.len() + v.len()) as u64), 0);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        })
    }
    fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl: Option<u32>,
    ) -> wasmtime::Result<Result<i64, String>> {
        self.check(Grant::Kv)?;
        if let Err(e) = self.kv_key_ok(&key) {
            return Ok(Err(e));
        }
        let space = match self.shared.kv_space(&self.plugin) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        // A counter is at most 8 + 20 bytes; room is checked for a new one.
        let exists = matches!(space.tree.contains_key(key.as_bytes()), Ok(true));
        if !exists && let Err(e) = self.kv_room(&space, (key.len() + 28) as u64) {
            return Ok(Err(e));
        }
        let now = now_millis();
        let mut result = 0;
        let mut old_len = 0;
        let r = space.tree.update_and_fetch(key.as_bytes(), |old| {
            old_len = old.map_or(0, <[u8]>::len);
            let (current, exp) = match old {
                Some(raw) if kv_decode(raw, now).is_some() => {
                    let v = kv_decode(raw, now).unwrap_or_default();
                    let n = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .unwrap_or(0);
                    (n, raw[..8].to_vec())
                }
                _ => (
                    0,
                    ttl.map_or(0, |t| now + u64::from(t) * 1000)
                        .to_be_bytes()
                        .to_vec(),
                ),
            };
            result = current.saturating_add(delta);
            let mut v = exp;
            v.extend_from_slice(result.to_string().as_bytes());
            Some(v)
        });
        Ok(match r {
            Ok(new) => {
                let k = key.len();
                let old = if old_len == 0 { 0 } else { k + old_len };
                space.adjust(old as u64, (k + new.map_or(0, |v| v.len())) as u64);
                Ok(result)
            }
            Err(e) => Err(e.to_string()),
        })
    }
}

impl clock::Host for HostState {
    fn now(&mut self) -> wasmtime::Result<u64> {
        self.check(Grant::Clock)?;
        Ok(self
            .shared
            .fakes
            .as_ref()
            .map_or_else(now_millis, |f| f.now_ms))
    }
}

fn dns_error(e: hickory_resolver::net::NetError) -> dns::DnsError {
    if e.is_nx_domain() || e.is_no_records_found() {
        dns::DnsError::NotFound
    } else if e.to_string().to_lowercase().contains("timed out") {
        dns::DnsError::Timeout
    } else {
        dns::DnsError::Failed(e.to_string())
    }
}

impl HostState {
    /// Checks the grant, then resolves without borrowing the store state
    /// across the await (it is not Sync).
    fn lookup(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> wasmtime::Result<
        impl std::future::Future<Output = Result<Vec<RData>, dns::DnsError>> + Send + 'static,
    > {
        self.check(Grant::Dns)?;
        Ok(lookup(self.shared.clone(), name.to_string(), rtype))
    }
}

async fn lookup(
    shared: Arc<Shared>,
    name: String,
    rtype: RecordType,
) -> Result<Vec<RData>, dns::DnsError> {
    {
        let name = name.as_str();
        if name.is_empty() || name.len() > 253 {
            return Err(dns::DnsError::InvalidName);
        }
        if let Some(fakes) = &shared.fakes {
            return fakes.answer(name, rtype);
        }
        let resolver = match shared.resolver().await {
            Ok(r) => r,
            Err(e) => return Err(dns::DnsError::Failed(e)),
        };
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let lookup = tokio::time::timeout(
            shared.dns.timeout + Duration::from_millis(100),
            resolver.lookup(fqdn, rtype),
        );
        match lookup.await {
            Err(_) => Err(dns::DnsError::Timeout),
            Ok(Err(e)) => Err(dns_error(e)),
            Ok(Ok(l)) => Ok(l
                .answers()
                .iter()
                .map(|r| r.data.clone())
                .filter(|d| d.record_type() == rtype)
                .collect()),
        }
    }
}

impl dns::Host for HostState {
    async fn a(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        Ok(self.lookup(&name, RecordType::A)?.await.map(|v| {
            v.into_iter()
                .filter_map(|d| {
                    if let RData::A(a) = d {
                        Some(a.0.to_string())
                    } else {
                        None
                    }
                })
                .collect()
        }))
    }
    async fn aaaa(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        Ok(self.lookup(&name, RecordType::AAAA)?.await.map(|v| {
            v.into_iter()
                .filter_map(|d| {
                    if let RData::AAAA(a) = d {
                        Some(a.0.to_string())
                    } else {
                        None
                    }
                })
                .collect()
        }))
    }
    async fn mx(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Vec<dns::MxRecord>, dns::DnsError>> {
        Ok(self.lookup(&name, RecordType::MX)?.await.map(|v| {
            v.into_iter()
                .filter_map(|d| match d {
                    RData::MX(mx) => Some(dns::MxRecord {
                        preference: mx.preference,
                        exchange: mx.exchange.to_string().trim_end_matches('.').to_string(),
                    }),
                    _ => None,
                })
                .collect()
        }))
    }
    async fn txt(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        Ok(self.lookup(&name, RecordType::TXT)?.await.map(|v| {
            v.into_iter()
                .filter_map(|d| match d {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()
        }))
    }
    async fn ptr(&mut self, ip: String) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
            self.check(Grant::Dns)?;
            return Ok(Err(dns::DnsError::InvalidName));
        };
        let name = hickory_resolver::proto::rr::Name::from(addr).to_string();
        Ok(self.lookup(&name, RecordType::PTR)?.await.map(|v| {
            v.into_iter()
                .filter_map(|d| match d {
                    RData::PTR(p) => Some(p.0.to_string().trim_end_matches('.').to_string()),
                    _ => None,
                })
                .collect()
        }))
    }
}
