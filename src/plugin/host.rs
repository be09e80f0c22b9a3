//! Host capabilities: what a plugin may call. `log` and `notes` are always
//! there; `kv`, `dns` and `clock` only when granted. A plugin importing an
//! ungranted interface is refused at load (`check_imports`); each call
//! checks the grant again and traps if it is missing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::sync::OnceCell;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};

use super::bindings::wasmtp::plugin::{clock, dns, kv, log, notes, types};
use crate::config::{DnsSettings, Grant};

/// What every instance of every plugin shares: the kv store and the resolver.
pub struct Shared {
    db: sled::Db,
    kv_trees: Mutex<HashMap<String, sled::Tree>>,
    dns: DnsSettings,
    resolver: OnceCell<Result<TokioResolver, String>>,
}

impl Shared {
    pub(crate) fn new(db: sled::Db, dns: &DnsSettings) -> Shared {
        Shared {
            db,
            kv_trees: Mutex::default(),
            dns: dns.clone(),
            resolver: OnceCell::new(),
        }
    }

    fn kv_tree(&self, plugin: &str) -> Result<sled::Tree, String> {
        let mut trees = self.kv_trees.lock().expect("kv lock");
        if let Some(t) = trees.get(plugin) {
            return Ok(t.clone());
        }
        let t = self
            .db
            .open_tree(format!("kv:{plugin}"))
            .map_err(|e| e.to_string())?;
        trees.insert(plugin.to_string(), t.clone());
        Ok(t)
    }

    async fn resolver(&self) -> Result<&TokioResolver, String> {
        let r = self
            .resolver
            .get_or_init(|| async {
                let mut builder = match &self.dns.nameservers {
                    Some(list) => {
                        let servers = list
                            .iter()
                            .map(|sa| {
                                let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                                for c in &mut ns.connections {
                                    c.port = sa.port();
                                }
                                ns
                            })
                            .collect();
                        TokioResolver::builder_with_config(
                            ResolverConfig::from_parts(None, vec![], servers),
                            TokioRuntimeProvider::default(),
                        )
                    }
                    None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
                };
                builder.options_mut().timeout = self.dns.timeout;
                builder.options_mut().attempts = 1;
                builder.build().map_err(|e| e.to_string())
            })
            .await;
        r.as_ref().map_err(|e| e.clone())
    }
}

/// Notes: key/value strings shared by the plugins of one session. Notes set
/// during a transaction end with it; notes set before the first MAIL (at
/// connect or EHLO) last for the session.
#[derive(Debug, Default)]
pub struct Notes {
    session: BTreeMap<String, String>,
    tx: BTreeMap<String, String>,
    in_tx: bool,
}

impl Notes {
    /// Marks the start of a transaction.
    pub fn begin_tx(&mut self) {
        self.in_tx = true;
    }

    /// Ends the transaction and forgets its notes.
    pub fn end_tx(&mut self) {
        self.in_tx = false;
        self.tx.clear();
    }

    /// Reads a note (transaction first, then session).
    pub fn get(&self, key: &str) -> Option<&String> {
        self.tx.get(key).or_else(|| self.session.get(key))
    }

    fn set(&mut self, key: String, value: String) {
        if self.in_tx {
            self.tx.insert(key, value)
        } else {
            self.session.insert(key, value)
        };
    }

    fn remove(&mut self, key: &str) {
        self.tx.remove(key);
        self.session.remove(key);
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
    pub(crate) limits: StoreLimits,
    pub(crate) table: ResourceTable,
    pub(crate) notes: Arc<Mutex<Notes>>,
    shared: Arc<Shared>,
}

impl HostState {
    pub(crate) fn new(
        plugin: Arc<str>,
        grants: Vec<Grant>,
        memory: u64,
        notes: Arc<Mutex<Notes>>,
        shared: Arc<Shared>,
    ) -> HostState {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory as usize)
            .instances(64)
            .tables(64)
            .trap_on_grow_failure(true)
            .build();
        HostState {
            plugin,
            grants,
            limits,
            table: ResourceTable::new(),
            notes,
            shared,
        }
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
        let plugin = &*self.plugin;
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

const MAX_NOTE: usize = 64 * 1024;

impl notes::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.notes.lock().expect("notes lock").get(&key).cloned())
    }
    fn set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        if key.len() + value.len() > MAX_NOTE {
            wasmtime::bail!("note {key:?} is over {MAX_NOTE} bytes");
        }
        self.notes.lock().expect("notes lock").set(key, value);
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

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        self.check(Grant::Kv)?;
        let tree = match self.shared.kv_tree(&self.plugin) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        Ok(match tree.get(key.as_bytes()) {
            Ok(v) => Ok(v.and_then(|raw| kv_decode(&raw, now_millis()).map(<[u8]>::to_vec))),
            Err(e) => Err(e.to_string()),
        })
    }
    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> wasmtime::Result<Result<(), String>> {
        self.check(Grant::Kv)?;
        Ok(self
            .shared
            .kv_tree(&self.plugin)
            .and_then(|t| {
                t.insert(key.as_bytes(), kv_encode(&value, ttl, now_millis()))
                    .map_err(|e| e.to_string())
            })
            .map(|_| ()))
    }
    fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        self.check(Grant::Kv)?;
        Ok(self
            .shared
            .kv_tree(&self.plugin)
            .and_then(|t| t.remove(key.as_bytes()).map_err(|e| e.to_string()))
            .map(|_| ()))
    }
    fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl: Option<u32>,
    ) -> wasmtime::Result<Result<i64, String>> {
        self.check(Grant::Kv)?;
        let tree = match self.shared.kv_tree(&self.plugin) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        let now = now_millis();
        let mut result = 0;
        let r = tree.update_and_fetch(key.as_bytes(), |old| {
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
        Ok(r.map(|_| result).map_err(|e| e.to_string()))
    }
}

impl clock::Host for HostState {
    fn now(&mut self) -> wasmtime::Result<u64> {
        self.check(Grant::Clock)?;
        Ok(now_millis())
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
