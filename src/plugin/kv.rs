//! The store behind the plugins' `kv` capability, as one small trait with two
//! backends chosen by `[kv] backend`: the node's own sled store (the default;
//! state is local to the node) or a Redis server several nodes share (rate
//! counters and greylist triplets then hold across the cluster; see
//! docs/scaling.md). The host's `kv` capability (`host.rs`) checks grants and
//! key/value sizes, then calls the backend; a backend only stores.
//!
//! Also here: the cluster-wide connection count per client network
//! (`kv.cluster_max_connections_per_ip`), kept in the same Redis.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::config::PluginLimits;
use crate::config::value::Dur;
use crate::observe::{escape, limit_hit};

/// `[kv]`: where the plugins' kv namespaces live.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawKv {
    /// `sled` (this node's store, the default) or `redis` (shared).
    pub backend: Option<KvBackendName>,
    /// `redis://[[user]:password@]host[:port][/db]`, or `rediss://` for TLS.
    pub url: Option<String>,
    /// PEM file of the CA that signed a `rediss://` server's certificate
    /// (default: the system's roots).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Deadline of one kv call (connecting included) on Redis.
    pub timeout: Option<Dur>,
    /// Prefix of every key this server writes in Redis.
    pub key_prefix: Option<String>,
    /// Open connections per client network across every node sharing the Redis.
    pub cluster_max_connections_per_ip: Option<u32>,
}

/// The kv backends.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KvBackendName {
    /// The node's own sled store.
    Sled,
    /// A Redis (or Valkey) server.
    Redis,
}

/// `[kv]` resolved.
#[derive(Debug, Clone)]
pub struct KvSettings {
    /// Which backend.
    pub backend: KvBackendName,
    /// The Redis URL (backend = redis).
    pub url: Option<String>,
    /// PEM roots for `rediss://` instead of the system's.
    pub tls_ca: Option<Vec<u8>>,
    /// Deadline of one Redis call.
    pub timeout: Duration,
    /// Prefix of every key in Redis.
    pub key_prefix: String,
    /// Cluster-wide connections per client network (0 = off).
    pub cluster_max_connections_per_ip: u32,
}

impl Default for KvSettings {
    fn default() -> Self {
        KvSettings {
            backend: KvBackendName::Sled,
            url: None,
            tls_ca: None,
            timeout: Duration::from_millis(250),
            key_prefix: "wasmtp:".into(),
            cluster_max_connections_per_ip: 0,
        }
    }
}

/// Resolves `[kv]`; errors name the key.
pub fn resolve(raw: RawKv) -> Result<KvSettings, (String, String)> {
    let d = KvSettings::default();
    let tls_ca = match &raw.tls_ca_file {
        None => None,
        Some(f)
            if !raw
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://")) =>
        {
            return Err((
                "kv.tls_ca_file".into(),
                format!("{}: only used with a rediss:// url", f.display()),
            ));
        }
        Some(f) => Some(std::fs::read(f).map_err(|e| {
            (
                "kv.tls_ca_file".to_string(),
                format!("{}: {e}", f.display()),
            )
        })?),
    };
    let s = KvSettings {
        backend: raw.backend.unwrap_or(d.backend),
        url: raw.url,
        tls_ca,
        timeout: raw.timeout.map_or(d.timeout, |t| t.0),
        key_prefix: raw.key_prefix.unwrap_or(d.key_prefix),
        cluster_max_connections_per_ip: raw.cluster_max_connections_per_ip.unwrap_or(0),
    };
    if s.timeout.is_zero() {
        return Err(("kv.timeout".into(), "must be greater than 0".into()));
    }
    match (s.backend, &s.url) {
        (KvBackendName::Redis, None) => {
            return Err((
                "kv.url".into(),
                "backend = \"redis\" needs a url such as \"redis://127.0.0.1:6379/0\"".into(),
            ));
        }
        (KvBackendName::Redis, Some(_)) => {
            if let Err(e) = client(&s) {
                return Err(("kv.url".into(), format!("not a usable Redis URL: {e}")));
            }
        }
        (KvBackendName::Sled, Some(_)) => {
            return Err(("kv.url".into(), "only used with backend = \"redis\"".into()));
        }
        (KvBackendName::Sled, None) => {}
    }
    if s.cluster_max_connections_per_ip > 0 && s.backend != KvBackendName::Redis {
        return Err((
            "kv.cluster_max_connections_per_ip".into(),
            "needs backend = \"redis\" (on one node, limits.max_connections_per_ip does this)"
                .into(),
        ));
    }
    Ok(s)
}

/// The client for `settings.url`, with `tls_ca` as the only roots when set.
fn client(settings: &KvSettings) -> redis::RedisResult<redis::Client> {
    let url = settings.url.as_deref().unwrap_or_default();
    match &settings.tls_ca {
        None => redis::Client::open(url),
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
    }
}

/// Why a kv call failed: the plugin sees the text either way.
#[derive(Debug)]
pub enum KvError {
    /// A configured bound refused the write (reported by the host once per
    /// instance through `observe::limit_hit`).
    Limit {
        /// The bound's config key.
        key: &'static str,
        /// What happened.
        detail: String,
    },
    /// The store failed or refused (not an integer, store down, timeout).
    Failed(String),
}

/// A kv call in flight; owns what it needs, so the host does not hold its
/// store state across the await.
pub type KvFuture<T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'static>>;

/// One plugin namespace per `ns` (the plugin name). Semantics, the same on
/// every backend (the WIT `kv` interface): values are bytes; a TTL is whole
/// seconds from the write; `incr` adds to an ASCII decimal integer (absent or
/// expired counts as 0), sets the TTL only when it creates the key, and fails
/// on a value that is not an integer or a sum that overflows.
pub trait KvBackend: Send + Sync {
    /// The value of `key`, none when absent or expired.
    fn get(&self, ns: &str, key: &str) -> KvFuture<Option<Vec<u8>>>;
    /// Writes `value`, expiring after `ttl` seconds when given.
    fn set(&self, ns: &str, key: &str, value: Vec<u8>, ttl: Option<u32>) -> KvFuture<()>;
    /// Removes `key` (no error when absent).
    fn delete(&self, ns: &str, key: &str) -> KvFuture<()>;
    /// Adds `delta` atomically and returns the new value.
    fn incr(&self, ns: &str, key: &str, delta: i64, ttl: Option<u32>) -> KvFuture<i64>;
    /// Periodic upkeep (every `plugin_limits.kv_sweep_interval`).
    fn sweep(&self) {}
}

/// Opens the configured backend. Redis connects lazily, on the first call,
/// so a server starts (and `check-config` runs) while Redis is down.
pub fn open(settings: &KvSettings, db: sled::Db, limits: &PluginLimits) -> Arc<dyn KvBackend> {
    match settings.backend {
        KvBackendName::Sled => Arc::new(SledKv::new(db, limits.max_kv_size)),
        KvBackendName::Redis => Arc::new(RedisKv::new(settings)),
    }
}

const NOT_INTEGER: &str = "value is not an integer";
const OVERFLOW: &str = "increment would overflow";

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ready<T: Send + 'static>(r: Result<T, KvError>) -> KvFuture<T> {
    Box::pin(std::future::ready(r))
}

fn failed(e: impl std::fmt::Display) -> KvError {
    KvError::Failed(e.to_string())
}

// ---------------------------------------------------------------- sled

/// The node's own store: one sled tree per plugin (`kv:NAME`).
pub struct SledKv {
    db: sled::Db,
    spaces: Mutex<HashMap<String, Arc<KvSpace>>>,
    max_size: u64,
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

/// sled values are stored as 8 bytes of expiry (unix ms, 0 = none) + value.
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

impl SledKv {
    /// kv in `db`, at most `max_size` bytes per namespace.
    pub fn new(db: sled::Db, max_size: u64) -> SledKv {
        SledKv {
            db,
            spaces: Mutex::default(),
            max_size,
        }
    }

    /// The namespace of `plugin`; the first open purges expired entries and
    /// counts the bytes left.
    fn space(&self, plugin: &str) -> Result<Arc<KvSpace>, KvError> {
        let mut spaces = self.spaces.lock().expect("kv lock");
        if let Some(t) = spaces.get(plugin) {
            return Ok(t.clone());
        }
        let tree = self.db.open_tree(format!("kv:{plugin}")).map_err(failed)?;
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

    /// Checks that growing the namespace by `grow` bytes stays inside
    /// `plugin_limits.max_kv_size`; purges expired entries once before
    /// refusing.
    fn room(&self, space: &KvSpace, grow: u64) -> Result<(), KvError> {
        let max = self.max_size;
        let fits = |s: &KvSpace| s.used.load(Ordering::Relaxed).saturating_add(grow) <= max;
        if grow == 0 || fits(space) {
            return Ok(());
        }
        space.purge(now_millis());
        if fits(space) {
            return Ok(());
        }
        Err(KvError::Limit {
            key: "plugin_limits.max_kv_size",
            detail: format!("the kv namespace is full ({max} bytes)"),
        })
    }

    fn get_now(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let space = self.space(ns)?;
        let Some(raw) = space.tree.get(key.as_bytes()).map_err(failed)? else {
            return Ok(None);
        };
        if let Some(v) = kv_decode(&raw, now_millis()) {
            return Ok(Some(v.to_vec()));
        }
        // Expired: purge on access (unless someone rewrote it meanwhile).
        if let Ok(Ok(())) = space
            .tree
            .compare_and_swap(key.as_bytes(), Some(&raw), None::<&[u8]>)
        {
            space.adjust((key.len() + raw.len()) as u64, 0);
        }
        Ok(None)
    }

    fn set_now(&self, ns: &str, key: &str, value: &[u8], ttl: Option<u32>) -> Result<(), KvError> {
        let space = self.space(ns)?;
        let raw = kv_encode(value, ttl, now_millis());
        let new = (key.len() + raw.len()) as u64;
        let old = space
            .tree
            .get(key.as_bytes())
            .map_err(failed)?
            .map_or(0, |v| (key.len() + v.len()) as u64);
        self.room(&space, new.saturating_sub(old))?;
        let prev = space.tree.insert(key.as_bytes(), raw).map_err(failed)?;
        space.adjust(prev.map_or(0, |v| (key.len() + v.len()) as u64), new);
        Ok(())
    }

    fn delete_now(&self, ns: &str, key: &str) -> Result<(), KvError> {
        let space = self.space(ns)?;
        let prev = space.tree.remove(key.as_bytes()).map_err(failed)?;
        space.adjust(prev.map_or(0, |v| (key.len() + v.len()) as u64), 0);
        Ok(())
    }

    fn incr_now(&self, ns: &str, key: &str, delta: i64, ttl: Option<u32>) -> Result<i64, KvError> {
        let space = self.space(ns)?;
        // A counter is at most 8 + 20 bytes; room is checked for a new one.
        let exists = matches!(space.tree.contains_key(key.as_bytes()), Ok(true));
        if !exists {
            self.room(&space, (key.len() + 28) as u64)?;
        }
        let now = now_millis();
        let mut result = Ok(0);
        let mut old_len = 0;
        let r = space.tree.update_and_fetch(key.as_bytes(), |old| {
            old_len = old.map_or(0, <[u8]>::len);
            let (current, exp) = match old.and_then(|raw| Some((kv_decode(raw, now)?, raw))) {
                Some((v, raw)) => {
                    let n = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok());
                    let Some(n) = n else {
                        result = Err(NOT_INTEGER);
                        return old.map(<[u8]>::to_vec);
                    };
                    (n, raw[..8].to_vec())
                }
                None => (
                    0,
                    ttl.map_or(0, |t| now + u64::from(t) * 1000)
                        .to_be_bytes()
                        .to_vec(),
                ),
            };
            let Some(sum) = current.checked_add(delta) else {
                result = Err(OVERFLOW);
                return old.map(<[u8]>::to_vec);
            };
            result = Ok(sum);
            let mut v = exp;
            v.extend_from_slice(sum.to_string().as_bytes());
            Some(v)
        });
        let new = r.map_err(failed)?;
        let k = key.len();
        let old = if old_len == 0 { 0 } else { k + old_len };
        space.adjust(old as u64, (k + new.map_or(0, |v| v.len())) as u64);
        result.map_err(|e| KvError::Failed(e.into()))
    }
}

impl KvBackend for SledKv {
    fn get(&self, ns: &str, key: &str) -> KvFuture<Option<Vec<u8>>> {
        ready(self.get_now(ns, key))
    }
    fn set(&self, ns: &str, key: &str, value: Vec<u8>, ttl: Option<u32>) -> KvFuture<()> {
        ready(self.set_now(ns, key, &value, ttl))
    }
    fn delete(&self, ns: &str, key: &str) -> KvFuture<()> {
        ready(self.delete_now(ns, key))
    }
    fn incr(&self, ns: &str, key: &str, delta: i64, ttl: Option<u32>) -> KvFuture<i64> {
        ready(self.incr_now(ns, key, delta, ttl))
    }

    /// Removes expired kv entries of every plugin namespace in the store
    /// (also of plugins no longer configured).
    fn sweep(&self) {
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
            let Ok(space) = self.space(&name) else {
                continue;
            };
            let removed = space.purge(now_millis());
            if removed > 0 {
                tracing::info!(plugin = %escape(&name), removed, "expired kv entries purged");
            }
        }
    }
}

// ---------------------------------------------------------------- redis

/// `incr` in one round trip: creates with the TTL, keeps an existing key's
/// expiry. An argument TTL of -1 means none; 0 expires the key at once (as
/// on sled). The new value comes back as a string.
const INCR_SCRIPT: &str = r"
local created = redis.call('EXISTS', KEYS[1]) == 0
redis.call('INCRBY', KEYS[1], ARGV[1])
-- As the stored string: a Lua number loses integers past 2^53.
local n = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[2])
if created and ttl >= 0 then
  if ttl == 0 then redis.call('DEL', KEYS[1]) else redis.call('EXPIRE', KEYS[1], ttl) end
end
return n
";

/// A shared Redis connection: connects on first use, reconnects with
/// backoff, bounds every call by `kv.timeout`, and reports outages once
/// (a log line and `wasmtp_kv_backend_up`) and recoveries once.
pub struct Redis {
    client: Result<redis::Client, String>,
    conn: OnceCell<ConnectionManager>,
    timeout: Duration,
    /// The URL without its password, for logs.
    shown: String,
    up: AtomicBool,
    role: &'static str,
}

impl Redis {
    /// A connection for `role` (`kv`, `connections`), not opened yet.
    /// `kv::resolve` checked the URL.
    pub fn new(settings: &KvSettings, role: &'static str) -> Arc<Redis> {
        // `kv::resolve` refuses a bad URL; one built in code fails every call.
        let client = client(settings).map_err(|e| e.to_string());
        let shown = match &client {
            Ok(c) => {
                let i = c.get_connection_info();
                format!("{} db {}", i.addr(), i.redis_settings().db())
            }
            Err(e) => format!("(bad url: {e})"),
        };
        let redis = Arc::new(Redis {
            client,
            conn: OnceCell::new(),
            timeout: settings.timeout,
            shown,
            up: AtomicBool::new(true),
            role,
        });
        // Not under `check-config`, which has no runtime and makes no calls.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(watch(Arc::downgrade(&redis)));
        }
        redis
    }

    async fn connection(self: &Arc<Self>) -> Result<ConnectionManager, redis::RedisError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(2));
                let client = self.client.clone().map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "bad kv.url",
                        e,
                    ))
                })?;
                ConnectionManager::new_lazy_with_config(client, cfg)
            })
            .await?;
        Ok(c.clone())
    }

    /// Runs `cmd` within `kv.timeout`. Errors from a reachable server (a
    /// script error: not an integer) are not outages.
    pub async fn query<T, F>(
        self: &Arc<Self>,
        op: &'static str,
        cmd: impl FnOnce(ConnectionManager) -> F,
    ) -> Result<T, KvError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let call = async {
            let c = self.connection().await?;
            cmd(c).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => {
                self.reachable();
                Ok(v)
            }
            Ok(Err(e)) if is_outage(&e) => Err(self.outage(op, e.to_string())),
            Ok(Err(e)) => {
                self.reachable();
                Err(KvError::Failed(server_error(&e)))
            }
            Err(_) => Err(self.outage(
                op,
                format!("no answer within kv.timeout ({:?})", self.timeout),
            )),
        }
    }

    fn reachable(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(redis = %self.shown, role = self.role, "kv backend reachable again");
        }
        crate::metrics::kv_backend_up(self.role, true);
    }

    fn outage(&self, op: &'static str, detail: String) -> KvError {
        crate::metrics::kv_error(self.role, op);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(redis = %self.shown, role = self.role, op, error = %escape(&detail), "kv backend unreachable; calls fail until it is back (reconnecting with backoff)");
            crate::metrics::kv_backend_up(self.role, false);
        }
        KvError::Failed(format!("kv backend unavailable: {detail}"))
    }
}

/// Pings while the connection lives, so an outage and the recovery are
/// logged even when no plugin calls kv.
async fn watch(redis: std::sync::Weak<Redis>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(r) = redis.upgrade() else { return };
        let _ = r
            .query("ping", |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await;
    }
}

fn is_outage(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// The reply error text, with the two `incr` cases in the sled wording.
fn server_error(e: &redis::RedisError) -> String {
    let s = e.to_string();
    if s.contains("not an integer") {
        NOT_INTEGER.into()
    } else if s.contains("overflow") {
        OVERFLOW.into()
    } else {
        s
    }
}

/// kv in Redis: key `{key_prefix}kv:{plugin}:{key}` (plugin names have no
/// `:`), expiry as Redis expiry. `plugin_limits.max_kv_size` does not apply
/// (bound the memory with Redis's `maxmemory`).
pub struct RedisKv {
    redis: Arc<Redis>,
    prefix: String,
    incr: Arc<redis::Script>,
}

impl RedisKv {
    /// Not connected until the first call.
    pub fn new(settings: &KvSettings) -> RedisKv {
        RedisKv {
            redis: Redis::new(settings, "kv"),
            prefix: format!("{}kv:", settings.key_prefix),
            incr: Arc::new(redis::Script::new(INCR_SCRIPT)),
        }
    }

    fn key(&self, ns: &str, key: &str) -> String {
        format!("{}{ns}:{key}", self.prefix)
    }
}

impl KvBackend for RedisKv {
    fn get(&self, ns: &str, key: &str) -> KvFuture<Option<Vec<u8>>> {
        let (r, k) = (self.redis.clone(), self.key(ns, key));
        Box::pin(async move {
            r.query("get", |mut c| async move {
                redis::cmd("GET").arg(&k).query_async(&mut c).await
            })
            .await
        })
    }
    fn set(&self, ns: &str, key: &str, value: Vec<u8>, ttl: Option<u32>) -> KvFuture<()> {
        let (r, k) = (self.redis.clone(), self.key(ns, key));
        Box::pin(async move {
            r.query("set", |mut c| async move {
                let mut cmd = match ttl {
                    // SET EX 0 is an error on Redis; on sled it expires at once.
                    Some(0) => return redis::cmd("DEL").arg(&k).query_async(&mut c).await,
                    _ => redis::cmd("SET"),
                };
                cmd.arg(&k).arg(value);
                if let Some(t) = ttl {
                    cmd.arg("EX").arg(t);
                }
                cmd.query_async(&mut c).await
            })
            .await
        })
    }
    fn delete(&self, ns: &str, key: &str) -> KvFuture<()> {
        let (r, k) = (self.redis.clone(), self.key(ns, key));
        Box::pin(async move {
            r.query("delete", |mut c| async move {
                redis::cmd("DEL").arg(&k).query_async(&mut c).await
            })
            .await
        })
    }
    fn incr(&self, ns: &str, key: &str, delta: i64, ttl: Option<u32>) -> KvFuture<i64> {
        let (r, k, script) = (self.redis.clone(), self.key(ns, key), self.incr.clone());
        let ttl = ttl.map_or(-1, i64::from);
        Box::pin(async move {
            r.query("incr", |mut c| async move {
                script
                    .key(&k)
                    .arg(delta)
                    .arg(ttl)
                    .invoke_async(&mut c)
                    .await
            })
            .await
        })
    }
}

// ------------------------------------------------- cluster connection limit

/// Takes a slot when the client network has fewer than `max` open, else
/// refuses. Slots are sorted-set members scored by the time their lease
/// ends, so the slots of a node that died without releasing them lapse.
const ACQUIRE_SCRIPT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// Open connections per client network across every node sharing a Redis
/// (`kv.cluster_max_connections_per_ip`). When Redis does not answer within
/// `kv.timeout` the connection is let in: the node's own
/// `limits.max_connections_per_ip` still holds.
pub struct ClusterConns {
    redis: Arc<Redis>,
    prefix: String,
    max: u32,
    ipv6_prefix: u8,
    lease: Duration,
    node: String,
    next: AtomicU64,
    script: Arc<redis::Script>,
}

/// One slot; released (in the background) on drop.
pub struct ClusterSlot {
    redis: Arc<Redis>,
    key: String,
    member: String,
}

impl ClusterConns {
    /// None unless configured. `lease` is the longest a connection can live
    /// (`timeouts.session`): a dead node's slots lapse after it.
    pub fn new(settings: &KvSettings, ipv6_prefix: u8, lease: Duration) -> Option<ClusterConns> {
        if settings.cluster_max_connections_per_ip == 0 {
            return None;
        }
        let node = format!(
            "{}:{}:{}",
            gethostname::gethostname().to_string_lossy(),
            std::process::id(),
            now_millis()
        );
        Some(ClusterConns {
            redis: Redis::new(settings, "connections"),
            prefix: format!("{}conn:", settings.key_prefix),
            max: settings.cluster_max_connections_per_ip,
            ipv6_prefix,
            lease: lease + Duration::from_secs(60),
            node,
            next: AtomicU64::new(0),
            script: Arc::new(redis::Script::new(ACQUIRE_SCRIPT)),
        })
    }

    /// A slot for a connection from `ip`; `Ok(None)` when Redis did not
    /// answer (the client is let in); `Err(network)` when the network is
    /// at the limit across the cluster.
    pub async fn acquire(&self, ip: IpAddr) -> Result<Option<ClusterSlot>, String> {
        let net = crate::auth::Cidr::client(ip, self.ipv6_prefix).to_string();
        let key = format!("{}{net}", self.prefix);
        let member = format!(
            "{}:{}",
            self.node,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let now = now_millis();
        let lease = self.lease.as_millis() as u64;
        let (script, k, m, max) = (self.script.clone(), key.clone(), member.clone(), self.max);
        let got = self
            .redis
            .query("acquire", |mut c| async move {
                script
                    .key(&k)
                    .arg(now)
                    .arg(now + lease)
                    .arg(&m)
                    .arg(max)
                    .arg(lease)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        match got {
            Ok(1) => Ok(Some(ClusterSlot {
                redis: self.redis.clone(),
                key,
                member,
            })),
            Ok(_) => {
                limit_hit(
                    "kv.cluster_max_connections_per_ip",
                    &format!("client {ip} counted as {net} across the cluster"),
                );
                Err(net)
            }
            Err(e) => {
                let (KvError::Failed(e) | KvError::Limit { detail: e, .. }) = e;
                tracing::debug!(error = %escape(&e), "cluster connection count unavailable; letting the client in");
                Ok(None)
            }
        }
    }
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        let (r, k, m) = (
            self.redis.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = r
                    .query("release", |mut c| async move {
                        redis::cmd("ZREM")
                            .arg(&k)
                            .arg(&m)
                            .query_async::<i64>(&mut c)
                            .await
                    })
                    .await;
            });
        }
    }
}
