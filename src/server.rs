//! Listeners, the accept loop, connection limits and graceful shutdown.
//!
//! Shutdown order: stop accepting, tell every session (they answer 421 at
//! their next command wait, after finishing the command in progress), wait
//! for them up to the configured grace period, stop the queue manager after
//! its deliveries in progress, flush the store.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::Cidr;
use crate::config::Settings;
use crate::plugin::PluginHost;
use crate::queue::{QueueManager, Store, StoreError};
use crate::session::starttls::serve_connection;
use crate::session::{ConnInfo, ServerCtx};
use crate::smtp::Reply;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The queue store failed to open or flush.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The plugin set could not be loaded.
    #[error(transparent)]
    Plugin(#[from] crate::plugin::PluginError),
    /// Certificates could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The admin endpoint could not be bound.
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    AdminBind {
        /// Address.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({name}): {error}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// OS error; part of the message, not a chained source, so it is printed once.
        error: std::io::Error,
    },
    /// The resolver for mail authentication could not be built from `[dns]`.
    #[error("cannot set up the DNS resolver for [authentication] from [dns]: {0}")]
    Resolver(hickory_resolver::net::NetError),
}

/// Counts open connections in total and per client: an IPv4 address, or an
/// IPv6 network of `limits.ipv6_prefix` bits (see [`Cidr::client`]).
struct ConnLimiter {
    open: Mutex<(usize, HashMap<Cidr, usize>)>,
    max_total: usize,
    max_per_ip: usize,
    ipv6_prefix: u8,
}

/// Held for the life of a connection; releases its slot on drop.
struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    client: Cidr,
}

impl ConnLimiter {
    fn new(limits: &crate::config::Limits) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            open: Mutex::new((0, HashMap::new())),
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            ipv6_prefix: limits.ipv6_prefix,
        })
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr, hostname: &str) -> Result<ConnPermit, Reply> {
        let client = Cidr::client(ip, self.ipv6_prefix);
        let mut open = self.open.lock().expect("limiter lock");
        if open.0 >= self.max_total {
            crate::observe::limit_hit("limits.max_connections", &format!("client {ip}"));
            return Err(Reply::too_many_connections(hostname));
        }
        let n = open.1.entry(client).or_insert(0);
        if *n >= self.max_per_ip {
            crate::observe::limit_hit(
                "limits.max_connections_per_ip",
                &format!("client {ip} counted as {client}"),
            );
            return Err(Reply::too_many_from_ip(hostname));
        }
        *n += 1;
        open.0 += 1;
        Ok(ConnPermit {
            limiter: self.clone(),
            client,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().expect("limiter lock");
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.client);
            }
        }
    }
}

/// Runs the server until `stop` completes, then shuts down gracefully.
/// Every change of `reload` (SIGHUP in `main.rs`) re-reads the certificates.
pub async fn serve(
    settings: Settings,
    stop: impl Future<Output = ()>,
    reload: watch::Receiver<u64>,
) -> Result<(), ServerError> {
    let settings = Arc::new(settings);
    let started = (std::time::Instant::now(), crate::queue::now_secs());
    // Metrics are for the admin endpoint to render: without one, no recorder
    // is installed and every metric call is a no-op.
    let metrics = settings
        .admin
        .listen
        .as_ref()
        .and_then(|_| crate::metrics::install());
    let upkeep = metrics
        .clone()
        .map(|h| tokio::spawn(crate::metrics::upkeep(h)));
    crate::metrics::started(started.1);
    let store = Store::open(
        &settings.queue.dir,
        settings.queue.group_commit,
        settings.queue.cache_size,
    )?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let plugins = PluginHost::new(&settings, store.db())?;
    return_freed_memory("plugins loaded");
    let (queue, queue_task) = QueueManager::start(
        store.clone(),
        settings.clone(),
        plugins.clone(),
        shutdown_rx.clone(),
    )?;
    let ready = Arc::new(crate::admin::Readiness::default());
    if let Some(addr) = &settings.admin.listen {
        // Up before the SMTP listeners, so /readyz can say they are not.
        let bound = crate::admin::bind(addr)
            .await
            .map_err(|source| ServerError::AdminBind {
                addr: addr.to_string(),
                source,
            })?;
        let state = Arc::new(crate::admin::AdminState {
            settings: settings.clone(),
            store: store.clone(),
            queue: queue.clone(),
            plugins: plugins.clone(),
            metrics,
            ready: ready.clone(),
            started: started.0,
            started_unix: started.1,
            bound: bound.addr(),
        });
        tokio::spawn(crate::admin::serve(bound, state, shutdown_rx.clone()));
    }
    let tls = Arc::new(crate::tls::Tls::start(&settings.tls, &settings.hostname)?);
    tokio::spawn(reload_certificates(tls.clone(), reload.clone()));
    let ctx = Arc::new(ServerCtx {
        settings: settings.clone(),
        store: store.clone(),
        queue,
        plugins,
        tls,
        users: Arc::new(crate::users::UserDb::new(
            settings.auth.users_file.clone(),
            settings.auth.max_verifications,
            settings.auth.verification_wait,
        )),
        auth_throttle: Arc::new(crate::auth::Throttle::new(
            settings.auth.failure_delay,
            settings.limits.ipv6_prefix,
        )),
        budget: crate::session::body::Budget::new(settings.limits.max_bytes_in_flight),
        mailauth: Arc::new(
            crate::mailauth::MailAuth::new(&settings).map_err(ServerError::Resolver)?,
        ),
    });
    tokio::spawn(crate::mailauth::reload_keys(
        ctx.mailauth.clone(),
        settings.source.clone(),
        reload.clone(),
    ));

    let mut listeners = Vec::new();
    for l in &settings.listeners {
        let sock = TcpListener::bind(l.address)
            .await
            .map_err(|error| ServerError::Bind {
                name: l.name.clone(),
                addr: l.address,
                error,
            })?;
        let addr = sock.local_addr().unwrap_or(l.address);
        info!(listener = %l.name, role = l.role.as_str(), %addr, "listening");
        listeners.push((l.clone(), sock));
    }
    ready.listeners_bound(
        listeners
            .iter()
            .map(|(l, sock)| {
                (
                    l.name.clone(),
                    l.role.as_str(),
                    sock.local_addr().unwrap_or(l.address),
                )
            })
            .collect(),
    );

    let limiter = ConnLimiter::new(&settings.limits);
    // Connections per client network across the nodes sharing `[kv]`'s Redis.
    let cluster = crate::plugin::kv::ClusterConns::new(
        &settings.kv,
        settings.limits.ipv6_prefix,
        settings.timeouts.session,
    )
    .map(Arc::new);
    let sessions = TaskTracker::new();
    let accepts = TaskTracker::new();
    for (listener, sock) in listeners {
        let a = AcceptLoop {
            listener,
            sock,
            ctx: ctx.clone(),
            limiter: limiter.clone(),
            cluster: cluster.clone(),
            sessions: sessions.clone(),
            shutdown: shutdown_rx.clone(),
        };
        accepts.spawn(a.run());
    }

    let pid_file = settings.data_dir.join("wasmtp.pid");
    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        warn!(file = %pid_file.display(), error = %e, "cannot write the pid file (`wasmtp plugin reload` needs it)");
    }
    let reloader = tokio::spawn(reload_plugins(ctx.clone(), reload.clone()));
    // Last: whoever waits for this line (an operator, a test, `plugin
    // reload`) finds the listeners accepting and the pid file written.
    info!(config = %settings.source, hostname = %settings.hostname, queued = store.len(), corrupt = store.corrupt_len(), "wasmtp ready");
    stop.await;
    reloader.abort();
    if let Some(u) = upkeep {
        u.abort();
    }
    let _ = std::fs::remove_file(&pid_file);
    ready.stopping();
    info!("shutting down: no new connections, sessions finish their current command");
    let _ = shutdown_tx.send(true);
    accepts.close();
    accepts.wait().await;
    sessions.close();
    if tokio::time::timeout(settings.timeouts.shutdown, sessions.wait())
        .await
        .is_err()
    {
        warn!(
            open = sessions.len(),
            "sessions still open after the shutdown grace period; closing them"
        );
    }
    let _ = queue_task.await;
    store.close_clean().await?;
    for (plugin, calls, traps, timeouts) in ctx.plugins.stats_summary() {
        info!(plugin, calls, traps, timeouts, "plugin totals");
    }
    for (limit, hits) in crate::observe::limit_hits() {
        info!(limit, hits, "limit totals");
    }
    info!(queued = store.len(), "stopped");
    Ok(())
}

struct AcceptLoop {
    listener: crate::config::Listener,
    sock: TcpListener,
    ctx: Arc<ServerCtx>,
    limiter: Arc<ConnLimiter>,
    cluster: Option<Arc<crate::plugin::kv::ClusterConns>>,
    sessions: TaskTracker,
    shutdown: watch::Receiver<bool>,
}

impl AcceptLoop {
    async fn run(mut self) {
        static SESSION_IDS: AtomicU64 = AtomicU64::new(1);
        loop {
            let (stream, peer) = tokio::select! {
                r = self.sock.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopping(&mut self.shutdown) => return,
            };
            let _ = stream.set_nodelay(true);
            let id = format!("{:08X}", SESSION_IDS.fetch_add(1, Ordering::Relaxed));
            let span = info_span!("session", id = %id, peer = %peer);
            let permit = self.limiter.acquire(peer.ip(), &self.ctx.settings.hostname);
            crate::metrics::connection(&self.listener.name, permit.is_ok());
            match permit {
                Ok(permit) => {
                    let local = stream.local_addr().unwrap_or(peer);
                    let info = ConnInfo {
                        id,
                        peer,
                        local,
                        listener: self.listener.name.clone(),
                        role: self.listener.role,
                        tls: None,
                        auth: None,
                        deadline: tokio::time::Instant::now() + self.ctx.settings.timeouts.session,
                    };
                    let (ctx, shutdown) = (self.ctx.clone(), self.shutdown.clone());
                    let cluster = self.cluster.clone();
                    self.sessions.spawn(
                        async move {
                            let Ok(_slot) = cluster_slot(cluster, peer.ip()).await else {
                                let write = ctx.settings.timeouts.write;
                                let reply = Reply::too_many_from_ip(&ctx.settings.hostname);
                                return refuse(stream, reply, write).await;
                            };
                            let _open = crate::metrics::session_open();
                            debug!("connected");
                            serve_connection(stream, ctx, info, shutdown).await;
                            debug!("closed");
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Err(reply) => {
                    let write = self.ctx.settings.timeouts.write;
                    self.sessions
                        .spawn(refuse(stream, reply, write).instrument(span));
                }
            }
        }
    }
}

/// A slot in the cluster-wide count of the client's network when
/// `kv.cluster_max_connections_per_ip` is set; Err when it is full.
async fn cluster_slot(
    cluster: Option<Arc<crate::plugin::kv::ClusterConns>>,
    ip: IpAddr,
) -> Result<Option<crate::plugin::kv::ClusterSlot>, String> {
    match cluster {
        // Boxed: the Redis round trip's state would otherwise sit inline in
        // every session's task (1 KiB) for the session's whole life.
        Some(cluster) => Box::pin(cluster.acquire(ip)).await,
        None => Ok(None),
    }
}

async fn refuse(mut stream: TcpStream, reply: Reply, write_timeout: std::time::Duration) {
    info!(reply = %reply.to_wire().trim_end(), "connection refused");
    let _ = tokio::time::timeout(write_timeout, async {
        stream.write_all(reply.to_wire().as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Completes once `rx` turns true (or its sender is gone).
pub(crate) async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// On every reload signal (SIGHUP): re-read the config file and swap in its plugin set. A set
/// that fails to load leaves the running one serving. Sessions keep the set
/// they started with.
async fn reload_plugins(ctx: Arc<ServerCtx>, mut reload: watch::Receiver<u64>) {
    while reload.changed().await.is_ok() {
        info!("reloading plugins");
        let ctx = ctx.clone();
        let result = tokio::task::spawn_blocking(move || {
            let source = &ctx.settings.source;
            let fresh = if source == crate::config::DEFAULT_CONFIG_NAME {
                crate::config::Settings::embedded_default()
            } else {
                crate::config::Settings::load(std::path::Path::new(source))
            };
            match fresh {
                Ok(s) => ctx.plugins.reload(&s.plugins).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        match result {
            Ok(Ok(generation)) => {
                info!(generation, "plugin reload done");
                return_freed_memory("plugins reloaded");
            }
            Ok(Err(e)) => warn!(error = %e, "plugin reload failed; the running plugin set stays"),
            Err(e) => warn!(error = %e, "plugin reload failed"),
        }
    }
}

/// Hands memory the allocator holds but nothing uses back to the system.
/// Compiling plugins frees its working memory into glibc's arenas, which
/// keep it mapped: 8 MiB of the server's 49 MiB PSS after compiling the
/// three example plugins (README "Memory per connection").
fn return_freed_memory(after: &str) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let before = resident_kib();
        // SAFETY: malloc_trim only gives free pages of the allocator back.
        unsafe { libc::malloc_trim(0) };
        debug!(
            rss_before_kib = before,
            rss_after_kib = resident_kib(),
            after,
            "freed memory returned to the system"
        );
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = after;
}

/// The process's resident set in KiB (0 where /proc cannot say).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        // SAFETY: sysconf only reads a system constant.
        .map_or(0, |pages| {
            pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64 / 1024
        })
}

/// Re-reads the certificates on every reload signal. Sessions keep the
/// connection they have; the next handshake uses the new set.
async fn reload_certificates(tls: Arc<crate::tls::Tls>, mut reload: watch::Receiver<u64>) {
    while reload.changed().await.is_ok() {
        match tls.reload() {
            Ok(()) => info!("certificates reloaded"),
            Err(e) => warn!(error = %e, "certificates not reloaded; keeping the previous ones"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_total: usize, max_per_ip: usize, ipv6_prefix: u8) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            open: Mutex::new((0, HashMap::new())),
            max_total,
            max_per_ip,
            ipv6_prefix,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_count_per_network() {
        let l = limiter(100, 2, 64);
        let a = l.acquire(ip("2001:db8:0:1::1"), "mx").unwrap();
        let _b = l
            .acquire(ip("2001:db8:0:1:ffff:ffff:ffff:ffff"), "mx")
            .unwrap();
        let r = l
            .acquire(ip("2001:db8:0:1::3"), "mx")
            .map(|_| ())
            .unwrap_err();
        assert_eq!(r, Reply::too_many_from_ip("mx"));
        // Another /64 is another client.
        let _c = l.acquire(ip("2001:db8:0:2::1"), "mx").unwrap();
        // A closed connection frees its network's slot.
        drop(a);
        let _d = l.acquire(ip("2001:db8:0:1::4"), "mx").unwrap();
        assert_eq!(l.open.lock().unwrap().0, 3);
    }

    #[test]
    fn ipv4_mapped_counts_as_ipv4_and_prefix_128_is_per_address() {
        let l = limiter(100, 1, 64);
        let _a = l.acquire(ip("192.0.2.1"), "mx").unwrap();
        assert!(l.acquire(ip("::ffff:192.0.2.1"), "mx").is_err());
        let _b = l.acquire(ip("::ffff:192.0.2.2"), "mx").unwrap();
        assert!(l.acquire(ip("192.0.2.2"), "mx").is_err());

        let l = limiter(100, 1, 128);
        let _a = l.acquire(ip("2001:db8::1"), "mx").unwrap();
        let _b = l.acquire(ip("2001:db8::2"), "mx").unwrap();
        assert!(l.acquire(ip("2001:db8::1"), "mx").is_err());
    }

    #[test]
    fn total_limit_and_release() {
        let l = limiter(2, 10, 64);
        let a = l.acquire(ip("192.0.2.1"), "mx").unwrap();
        let _b = l.acquire(ip("2001:db8::1"), "mx").unwrap();
        let r = l.acquire(ip("192.0.2.3"), "mx").map(|_| ()).unwrap_err();
        assert_eq!(r, Reply::too_many_connections("mx"));
        drop(a);
        assert!(l.acquire(ip("192.0.2.3"), "mx").is_ok());
        let hits = crate::observe::limit_hits();
        assert!(hits.iter().any(|(k, _)| *k == "limits.max_connections"));
    }
}
