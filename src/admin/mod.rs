//! The admin endpoint: one HTTP/1.1 server, on loopback TCP or a Unix
//! socket, that serves `/metrics`, `/healthz`, `/readyz`, `/status` and
//! the queue API. Every CLI verb that needs the running server (`wasmtp
//! queue ...`, `wasmtp status`) goes through it: sled allows one process
//! per store, so the CLI cannot open the queue itself.
//!
//! This module owns `[admin]` (raw keys, resolution, the checks that keep
//! a token-less endpoint on loopback), binding and the connection loop;
//! `http.rs` maps requests to answers, `client.rs` is the CLI's side.

pub mod client;
mod http;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Settings;
use crate::plugin::PluginHost;
use crate::queue::{QueueManager, Store};

/// `[admin]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `127.0.0.1:9025`, `[::1]:9025`, `unix:/path/to/socket`; `""` or
    /// absent: no admin endpoint.
    pub listen: Option<String>,
    /// Bearer token every request must carry.
    pub token: Option<String>,
    /// A file holding the token (first line).
    pub token_file: Option<PathBuf>,
}

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    /// TCP (port 0: chosen at start, written to `<data_dir>/admin.addr`).
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddr::Tcp(a) => write!(f, "{a}"),
            AdminAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl AdminAddr {
    /// Parses `host:port` or `unix:/path`.
    pub fn parse(s: &str) -> Result<AdminAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: a Unix socket needs an absolute path (unix:/run/wasmtp/admin.sock)"
                ));
            }
            return Ok(AdminAddr::Unix(PathBuf::from(path)));
        }
        s.parse().map(AdminAddr::Tcp).map_err(|_| {
            format!("{s:?}: expected an address and port (127.0.0.1:9025) or unix:/path")
        })
    }
}

/// `[admin]` resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminSettings {
    /// None: no admin endpoint.
    pub listen: Option<AdminAddr>,
    /// Required as `Authorization: Bearer TOKEN` when set.
    pub token: Option<String>,
}

/// Resolves `[admin]`; errors name the key. A TCP address other than
/// loopback needs a token: the endpoint can delete and bounce mail.
pub fn resolve(raw: RawAdmin) -> Result<AdminSettings, (String, String)> {
    let key = |k: &str| format!("admin.{k}");
    let listen = match raw.listen.as_deref() {
        None | Some("") => None,
        Some(s) => Some(AdminAddr::parse(s).map_err(|m| (key("listen"), m))?),
    };
    let token = match (raw.token, raw.token_file) {
        (Some(_), Some(_)) => {
            return Err((
                key("token_file"),
                "give token or token_file, not both".into(),
            ));
        }
        (Some(t), None) => Some(t),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(&f).map_err(|e| {
                (
                    key("token_file"),
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        (None, None) => None,
    };
    if token
        .as_deref()
        .is_some_and(|t| t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err((
            key("token"),
            "must be at least 16 characters, without spaces".into(),
        ));
    }
    if let Some(AdminAddr::Tcp(a)) = &listen
        && !a.ip().is_loopback()
        && token.is_none()
    {
        return Err((
            key("listen"),
            format!(
                "{a} is not a loopback address: set admin.token or admin.token_file, or listen on 127.0.0.1 or a unix: socket"
            ),
        ));
    }
    Ok(AdminSettings { listen, token })
}

/// The file where a running server writes the endpoint it bound (so the
/// CLI finds a port chosen at start).
pub fn addr_file(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.addr")
}

/// What `/readyz` checks, set as the server starts and stops.
#[derive(Debug, Default)]
pub struct Readiness {
    listeners_bound: AtomicBool,
    stopping: AtomicBool,
    /// SMTP listeners as bound: name, role, address.
    listeners: Mutex<Vec<(String, &'static str, SocketAddr)>>,
}

impl Readiness {
    /// Every SMTP listener is bound.
    pub fn listeners_bound(&self, bound: Vec<(String, &'static str, SocketAddr)>) {
        *self.listeners.lock().expect("readiness lock") = bound;
        self.listeners_bound.store(true, Ordering::SeqCst);
    }

    /// Shutdown began: no longer ready for new work.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn listeners(&self) -> Vec<(String, &'static str, SocketAddr)> {
        self.listeners.lock().expect("readiness lock").clone()
    }
}

/// What the endpoint serves from.
pub struct AdminState {
    /// The server's settings.
    pub settings: Arc<Settings>,
    /// The queue store (read-only use: counts).
    pub store: Store,
    /// The queue manager, for every queue command.
    pub queue: QueueManager,
    /// The plugin host (set, digests, counters).
    pub plugins: Arc<PluginHost>,
    /// Renders `/metrics`; None when no recorder could be installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Start checks.
    pub ready: Arc<Readiness>,
    /// When the server started.
    pub started: std::time::Instant,
    /// The same, unix seconds.
    pub started_unix: i64,
    /// The address actually bound (port chosen, socket path).
    pub bound: AdminAddr,
}

/// A bound endpoint, not serving yet.
pub enum Bound {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket (removed again at shutdown).
    Unix(UnixListener, PathBuf),
}

impl Bound {
    /// The address to show and to write to `admin.addr`.
    pub fn addr(&self) -> AdminAddr {
        match self {
            Bound::Tcp(l) => AdminAddr::Tcp(l.local_addr().expect("bound socket has an address")),
            Bound::Unix(_, p) => AdminAddr::Unix(p.clone()),
        }
    }
}

/// Binds the endpoint. A stale socket file from a crashed run is replaced;
/// a socket another server still answers on is not.
pub async fn bind(addr: &AdminAddr) -> std::io::Result<Bound> {
    match addr {
        AdminAddr::Tcp(a) => Ok(Bound::Tcp(TcpListener::bind(a).await?)),
        AdminAddr::Unix(p) => {
            if p.exists() {
                if tokio::net::UnixStream::connect(p).await.is_ok() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another process answers on this socket",
                    ));
                }
                std::fs::remove_file(p)?;
            }
            Ok(Bound::Unix(UnixListener::bind(p)?, p.clone()))
        }
    }
}

/// Serves until `shutdown` turns true. Each connection is its own task.
pub async fn serve(bound: Bound, state: Arc<AdminState>, mut shutdown: watch::Receiver<bool>) {
    let file = addr_file(&state.settings.data_dir);
    if let Err(e) = std::fs::write(&file, format!("{}\n", state.bound)) {
        warn!(file = %file.display(), error = %e, "cannot write the admin address file (the CLI needs it when admin.listen has port 0)");
    }
    info!(addr = %state.bound, token = state.settings.admin.token.is_some(), "admin listening");
    loop {
        tokio::select! {
            _ = crate::server::stopping(&mut shutdown) => break,
            accepted = accept(&bound) => match accepted {
                Ok(io) => {
                    tokio::spawn(http::connection(io, state.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    let _ = std::fs::remove_file(&file);
    if let Bound::Unix(_, p) = &bound {
        let _ = std::fs::remove_file(p);
    }
}

/// A connection of either kind.
type Conn = Box<dyn Io>;
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

async fn accept(bound: &Bound) -> std::io::Result<Conn> {
    Ok(match bound {
        Bound::Tcp(l) => Box::new(l.accept().await?.0),
        Bound::Unix(l, _) => Box::new(l.accept().await?.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(listen: &str, token: Option<&str>) -> RawAdmin {
        RawAdmin {
            listen: Some(listen.into()),
            token: token.map(String::from),
            token_file: None,
        }
    }

    #[test]
    fn resolves_and_guards_non_loopback() {
        assert_eq!(resolve(raw("", None)).unwrap().listen, None);
        assert_eq!(resolve(RawAdmin::default()).unwrap().listen, None);
        let s = resolve(raw("127.0.0.1:9025", None)).unwrap();
        assert_eq!(
            s.listen,
            Some(AdminAddr::Tcp("127.0.0.1:9025".parse().unwrap()))
        );
        let s = resolve(raw("unix:/run/w.sock", None)).unwrap();
        assert_eq!(s.listen, Some(AdminAddr::Unix("/run/w.sock".into())));
        let (key, msg) = resolve(raw("0.0.0.0:9025", None)).unwrap_err();
        assert_eq!(key, "admin.listen");
        assert!(msg.contains("admin.token"), "{msg}");
        assert!(resolve(raw("0.0.0.0:9025", Some("0123456789abcdef"))).is_ok());
        assert_eq!(
            resolve(raw("0.0.0.0:9025", Some("short"))).unwrap_err().0,
            "admin.token"
        );
        assert_eq!(
            resolve(raw("unix:rel.sock", None)).unwrap_err().0,
            "admin.listen"
        );
        assert_eq!(
            resolve(raw("localhost", None)).unwrap_err().0,
            "admin.listen"
        );
    }
}
