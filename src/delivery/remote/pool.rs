//! Connections kept for the next message to the same destination, and the
//! limits on how many are open: `max_connections` in total and
//! `max_connections_per_destination`, counted for connections in use and
//! idle alike (an idle one is closed to make room for another
//! destination). An idle connection is closed after `idle_timeout`, and
//! one that carried `max_messages_per_connection` messages is not kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::client::TlsStream;

use super::client::{Client, Envelope, Fate, Peer};
use crate::smtp::response::Capabilities;

/// An established connection, over whichever stream it ended up on.
pub enum Conn {
    /// TCP without TLS.
    Plain(Client<TcpStream>),
    /// TCP after STARTTLS.
    Tls(Box<Client<TlsStream<TcpStream>>>),
    /// A Unix socket (local LMTP).
    Unix(Client<UnixStream>),
}

macro_rules! each {
    ($conn:expr, $c:ident => $e:expr) => {
        match $conn {
            Conn::Plain($c) => $e,
            Conn::Tls($c) => $e,
            Conn::Unix($c) => $e,
        }
    };
}

impl Conn {
    /// The server.
    pub fn peer(&self) -> &Peer {
        each!(self, c => c.peer())
    }

    /// Its extensions.
    pub fn caps(&self) -> &Capabilities {
        each!(self, c => c.caps())
    }

    /// One transaction.
    pub async fn send(&mut self, env: &Envelope<'_>, body: &[u8]) -> Vec<Fate> {
        each!(self, c => c.send(env, body).await)
    }

    async fn rset(&mut self) -> bool {
        each!(self, c => c.rset().await.is_ok())
    }

    /// Closes politely.
    pub async fn quit(self) {
        each!(self, c => c.quit().await)
    }

    fn kept(&self, max_messages: usize) -> bool {
        each!(self, c => c.is_reusable() && c.messages < max_messages)
    }
}

/// The permits a connection holds while it is open.
pub struct Permits {
    _total: OwnedSemaphorePermit,
    _destination: OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for Permits {
    fn drop(&mut self) {
        self.freed.notify_waiters();
    }
}

/// A connection with its permits.
pub struct Leased {
    /// The connection.
    pub conn: Conn,
    /// Held for as long as the connection is open.
    _permits: Permits,
}

struct Idle {
    id: u64,
    leased: Leased,
    since: tokio::time::Instant,
}

/// The pool, shared by every delivery.
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    total: Arc<Semaphore>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_destination_max: usize,
    max_messages: usize,
    idle_timeout: Duration,
    next_id: AtomicU64,
    freed: Arc<Notify>,
}

/// What `Pool::get` found.
pub enum Got {
    /// A kept connection that answered RSET.
    Reused(Box<Leased>),
    /// Room for a new connection: connect, then `Pool::lease`.
    Room(Permits),
}

impl Pool {
    /// An empty pool with these limits.
    pub fn new(
        max_total: usize,
        per_destination: usize,
        max_messages: usize,
        idle_timeout: Duration,
    ) -> Pool {
        Pool {
            idle: Mutex::default(),
            total: Arc::new(Semaphore::new(max_total)),
            per_destination: Mutex::default(),
            per_destination_max: per_destination,
            max_messages,
            idle_timeout,
            next_id: AtomicU64::new(0),
            freed: Arc::default(),
        }
    }

    /// A kept connection to `key`, or room for a new one; waits while the
    /// limits are reached.
    pub async fn get(&self, key: &str) -> Got {
        loop {
            while let Some(mut leased) = self.take_idle(key) {
                if leased.conn.rset().await {
                    return Got::Reused(Box::new(leased));
                }
                leased.conn.quit().await;
            }
            if let Some(p) = self.try_permits(key) {
                return Got::Room(p);
            }
            // A permit comes back when a connection closes; the poll
            // covers a release between the try and the wait.
            let freed = self.freed.notified();
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
        }
    }

    /// A new connection under `permits`.
    pub fn lease(conn: Conn, permits: Permits) -> Leased {
        Leased {
            conn,
            _permits: permits,
        }
    }

    /// Done with a connection: kept for the next message to `key`, or
    /// closed.
    pub async fn put(self: &Arc<Self>, key: &str, leased: Leased) {
        if !leased.conn.kept(self.max_messages) {
            leased.conn.quit().await;
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.idle
            .lock()
            .expect("pool lock")
            .entry(key.to_string())
            .or_default()
            .push(Idle {
                id,
                leased,
                since: tokio::time::Instant::now(),
            });
        self.freed.notify_waiters();
        let pool = Arc::downgrade(self);
        let key = key.to_string();
        let wait = self.idle_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(pool) = pool.upgrade() else { return };
            let expired = pool.remove_idle(&key, |i| i.id == id);
            if let Some(l) = expired {
                l.conn.quit().await;
            }
        });
    }

    fn take_idle(&self, key: &str) -> Option<Leased> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(key)?;
        let got = list.pop().map(|i| i.leased);
        if list.is_empty() {
            idle.remove(key);
        }
        got
    }

    fn remove_idle(&self, key: &str, which: impl Fn(&Idle) -> bool) -> Option<Leased> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(key)?;
        let at = list.iter().position(which)?;
        let got = list.remove(at).leased;
        if list.is_empty() {
            idle.remove(key);
        }
        Some(got)
    }

    fn try_permits(&self, key: &str) -> Option<Permits> {
        let sem = self
            .per_destination
            .lock()
            .expect("pool lock")
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_destination_max)))
            .clone();
        let destination = sem.try_acquire_owned().ok()?;
        let total = loop {
            if let Ok(p) = self.total.clone().try_acquire_owned() {
                break p;
            }
            // All connections are open: close the oldest idle one.
            let victim = self.oldest_idle()?;
            tokio::spawn(victim.conn.quit());
        };
        Some(Permits {
            _total: total,
            _destination: destination,
            freed: self.freed.clone(),
        })
    }

    fn oldest_idle(&self) -> Option<Leased> {
        let key = {
            let idle = self.idle.lock().expect("pool lock");
            idle.iter()
                .filter_map(|(k, list)| list.iter().map(|i| i.since).min().map(|t| (t, k)))
                .min()
                .map(|(_, k)| k.clone())?
        };
        let oldest = {
            let idle = self.idle.lock().expect("pool lock");
            idle.get(&key)?.iter().min_by_key(|i| i.since)?.id
        };
        self.remove_idle(&key, |i| i.id == oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn room(pool: &Pool, key: &str, wait: Duration) -> Option<Permits> {
        match tokio::time::timeout(wait, pool.get(key)).await {
            Ok(Got::Room(p)) => Some(p),
            Ok(Got::Reused(_)) => panic!("nothing was kept"),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn limits_per_destination_and_in_total() {
        let pool = Pool::new(2, 1, 10, Duration::from_secs(30));
        let short = Duration::from_millis(300);
        let a = room(&pool, "d1", short).await.expect("first");
        assert!(
            room(&pool, "d1", short).await.is_none(),
            "one per destination"
        );
        let _b = room(&pool, "d2", short).await.expect("another destination");
        assert!(room(&pool, "d3", short).await.is_none(), "two in total");
        drop(a);
        assert!(room(&pool, "d3", Duration::from_secs(2)).await.is_some());
    }
}
