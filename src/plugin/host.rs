//! Host capabilities: what a plugin may call. `log` and `notes` are always
//! there; `kv`, `dns` and `clock` only when granted. A plugin importing an
//! ungranted interface is refused at load (`check_imports`); each call
//! checks the grant again and traps if it is missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::sync::OnceCell;
use wasmtime::component::ResourceTable;

use super::bindings::wasmtp::plugin::{clock, dns, kv, log, notes, types};
use super::kv::{KvBackend, KvError, KvSettings};
use super::limits::InstanceLimits;
use crate::config::{DnsSettings, Grant, PluginLimits};
use crate::observe::{escape, limit_hit};

/// What every instance of every plugin shares: the kv store, the resolver,
/// the limits and each plugin's log budget.
pub struct Shared {
    kv: Arc<dyn KvBackend>,
    dns: DnsSettings,
    resolver: OnceCell<Result<TokioResolver, String>>,
    pub(crate) limits: PluginLimits,
    logs: Mutex<HashMap<Arc<str>, LogWindow>>,
    /// `wasmtp plugin test`: a fixed clock and DNS answers from the case instead of the system's.
    fakes: Option<Arc<super::fake::Fakes>>,
}

/// Log lines one plugin wrote in the current second.
#[derive(Default)]
struct LogWindow {
    second: u64,
    lines: u32,
    dropped: u64,
}

impl Shared {
    pub(crate) fn new(
        db: sled::Db,
        dns: &DnsSettings,
        limits: &PluginLimits,
        kv: &KvSettings,
    ) -> Shared {
        Shared {
            kv: super::kv::open(kv, db, limits),
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
    /// (a replayed case's kv contents), through the configured backend.
    pub(crate) async fn seed_kv(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(), String> {
        self.kv
            .set(plugin, key, value.to_vec(), None)
            .await
            .map_err(|e| match e {
                KvError::Limit { key, detail } => format!("{key}: {detail}"),
                KvError::Failed(m) => m,
            })
    }

    /// Removes expired kv entries (sled; Redis expires keys itself); run
    /// every `plugin_limits.kv_sweep_interval`.
    pub(crate) fn sweep_kv(&self) {
        self.kv.sweep();
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
    /// WASI and wasi-http state of a plugin granted `http` (None for the others).
    pub(crate) http: Option<Box<super::http::HttpState>>,
    /// Running `init` for a snapshot (`super::snapshot`): every capability but `log` refuses,
    /// because what it answered would be frozen into every later instance.
    sealed: bool,
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
            http: None,
            sealed: false,
        }
    }

    /// The state for `init` run once for a snapshot: no grant, no notes, no http.
    pub(crate) fn sealed(mut self) -> HostState {
        self.sealed = true;
        self.http = None;
        self
    }

    /// Refuses a capability call while sealed.
    fn unsealed(&self, what: &str) -> wasmtime::Result<()> {
        if self.sealed {
            wasmtime::bail!("{SEALED}: it called {what}");
        }
        Ok(())
    }

    /// Gives the instance its `http` grant, if it has one.
    pub(crate) fn with_http(mut self, grant: Option<&Arc<super::http::HttpGrant>>) -> HostState {
        self.http =
            grant.map(|g| Box::new(super::http::HttpState::new(self.plugin.clone(), g.clone())));
        self
    }

    /// What the guest wrote to stdout/stderr since the last call.
    pub(crate) fn take_output(&mut self) -> Option<String> {
        match &mut self.http {
            Some(h) => h.take_output(),
            None => self.output.take(),
        }
    }

    /// A warm instance starts another transaction (per-transaction bounds start again).
    pub(crate) fn begin_transaction(&mut self, notes: Arc<Mutex<Notes>>) {
        self.notes = notes;
        if let Some(h) = &mut self.http {
            h.begin_transaction();
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
        self.unsealed(grant.as_str())?;
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

/// How a capability refused while sealed starts its error (`super::snapshot` looks for it).
pub(crate) const SEALED: &str = "init used a capability";

impl notes::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.unsealed("notes")?;
        Ok(self.notes.lock().expect("notes lock").get(&key).cloned())
    }
    fn set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        self.unsealed("notes")?;
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
        self.unsealed("notes")?;
        self.notes.lock().expect("notes lock").remove(&key);
        Ok(())
    }
    fn entries(&mut self, prefix: String) -> wasmtime::Result<Vec<(String, String)>> {
        self.unsealed("notes")?;
        Ok(self.notes.lock().expect("notes lock").entries(&prefix))
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

    /// The answer the plugin sees; a bound the backend hit is reported
    /// once per instance.
    fn kv_answer<T>(&mut self, r: Result<T, KvError>) -> Result<T, String> {
        r.map_err(|e| match e {
            KvError::Limit { key, detail } => self.hit(key, detail),
            KvError::Failed(e) => e,
        })
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        self.check(Grant::Kv)?;
        let r = self.shared.kv.get(&self.plugin, &key).await;
        Ok(self.kv_answer(r))
    }
    async fn set(
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
        let r = self.shared.kv.set(&self.plugin, &key, value, ttl).await;
        Ok(self.kv_answer(r))
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        self.check(Grant::Kv)?;
        let r = self.shared.kv.delete(&self.plugin, &key).await;
        Ok(self.kv_answer(r))
    }
    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl: Option<u32>,
    ) -> wasmtime::Result<Result<i64, String>> {
        self.check(Grant::Kv)?;
        if let Err(e) = self.kv_key_ok(&key) {
            return Ok(Err(e));
        }
        let r = self.shared.kv.incr(&self.plugin, &key, delta, ttl).await;
        Ok(self.kv_answer(r))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One instance's host state with `grants`, on a throwaway store and the default config.
    fn state(grants: Vec<Grant>) -> HostState {
        let settings = crate::config::Settings::parse(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n",
            "grants.toml",
        )
        .expect("minimal config");
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("temp store");
        let shared = Arc::new(Shared::new(
            db,
            &settings.dns,
            &settings.plugin_limits,
            &settings.kv,
        ));
        let notes = Arc::new(Mutex::new(Notes::new(&settings.plugin_limits)));
        HostState::new("p".into(), grants, 1 << 24, notes, shared)
    }

    fn denied<T: std::fmt::Debug>(r: wasmtime::Result<T>, what: &str) {
        let e = r.expect_err(what);
        assert!(format!("{e}").contains("without the grant"), "{what}: {e}");
    }

    /// The import check at load refuses a plugin that imports an ungranted interface; every call
    /// checks the grant again, so a host function reached some other way still traps.
    #[tokio::test]
    async fn every_capability_call_checks_its_grant() {
        let mut none = state(vec![]);
        denied(kv::Host::get(&mut none, "k".into()).await, "kv get");
        denied(
            kv::Host::set(&mut none, "k".into(), b"v".to_vec(), None).await,
            "kv set",
        );
        denied(kv::Host::delete(&mut none, "k".into()).await, "kv delete");
        denied(
            kv::Host::incr(&mut none, "k".into(), 1, None).await,
            "kv incr",
        );
        denied(clock::Host::now(&mut none), "clock");
        denied(
            dns::Host::txt(&mut none, "example.test".into()).await,
            "dns txt",
        );

        // With the grants the same calls go through (kv and clock need no network).
        let mut granted = state(vec![Grant::Kv, Grant::Clock]);
        kv::Host::set(&mut granted, "k".into(), b"v".to_vec(), None)
            .await
            .unwrap()
            .unwrap();
        let got = kv::Host::get(&mut granted, "k".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"v"[..]));
        assert_eq!(
            kv::Host::incr(&mut granted, "n".into(), 2, None)
                .await
                .unwrap(),
            Ok(2)
        );
        assert!(clock::Host::now(&mut granted).unwrap() > 1_700_000_000_000);
        // A kv grant is not a dns grant.
        denied(
            dns::Host::txt(&mut granted, "example.test".into()).await,
            "dns txt",
        );
    }
}
