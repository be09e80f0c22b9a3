//! The durable queue: each message is written as its own file and indexed
//! in sled, both flushed before the session says 250; the manager delivers
//! them and retries until every recipient is final. docs/queue.md describes
//! the files and what a crash can leave.

pub mod control;
pub mod dsn;
pub mod manager;
pub mod recover;
pub mod spool;
pub mod store;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::delivery::Outcome;
use crate::smtp::Address;

pub use manager::QueueManager;
pub use store::{Store, StoreError};

/// Where a recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptStatus {
    /// Not delivered yet.
    Pending,
    /// Delivered at the given unix time.
    Delivered(i64),
    /// Given up: the classified reason.
    Failed(String),
}

/// How a recipient is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Route {
    /// Into a local Maildir.
    #[default]
    Local,
    /// To another server, chosen at delivery time by the outbound routing
    /// (static routes, smarthost, MX).
    Remote,
    /// To the server a plugin's `deliver` hook named.
    Relay {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl Route {
    /// True for the routes the outbound SMTP client delivers.
    pub fn is_remote(&self) -> bool {
        !matches!(self, Route::Local)
    }

    /// The route's kind as named in metrics and the queue CLI.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Remote => "remote",
            Route::Relay { .. } => "relay",
        }
    }
}

/// One recipient of a queued message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedRcpt {
    /// The address as given at RCPT.
    pub address: String,
    /// Local mailbox it resolves to (empty for a remote recipient).
    pub mailbox: String,
    /// Local delivery or relay; envelopes from before routes were recorded are local.
    #[serde(default)]
    pub route: Route,
    /// Current state.
    pub status: RcptStatus,
    /// Attempts so far.
    pub attempts: u32,
    /// Last temporary or permanent failure, for logs and the queue CLI.
    pub last_error: Option<String>,
    /// The same failure as data (status, remote server and reply), for DSNs.
    #[serde(default)]
    pub failure: Option<crate::delivery::Failure>,
    /// NOTIFY= given at RCPT (RFC 3461).
    #[serde(default)]
    pub notify: Option<crate::smtp::command::Notify>,
    /// ORCPT= given at RCPT (RFC 3461), `rfc822;user@example.org`.
    #[serde(default)]
    pub orcpt: Option<String>,
}

impl QueuedRcpt {
    /// A recipient not tried yet, without DSN parameters.
    pub fn pending(address: String, mailbox: String, route: Route) -> QueuedRcpt {
        QueuedRcpt {
            address,
            mailbox,
            route,
            status: RcptStatus::Pending,
            attempts: 0,
            last_error: None,
            failure: None,
            notify: None,
            orcpt: None,
        }
    }
}

/// Envelope and state of one queued message. The body is stored apart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Queue id.
    pub id: String,
    /// Unix seconds when it was accepted.
    pub received_at: i64,
    /// Reverse path; None for the null sender.
    pub sender: Option<Address>,
    /// Recipients and their state.
    pub recipients: Vec<QueuedRcpt>,
    /// Body size in octets (including the Received header).
    pub size: u64,
    /// Unix seconds of the next attempt.
    pub next_attempt: i64,
    /// RET= given at MAIL (RFC 3461).
    #[serde(default)]
    pub ret: Option<crate::smtp::command::Ret>,
    /// ENVID= given at MAIL (RFC 3461).
    #[serde(default)]
    pub envid: Option<String>,
    /// True once a delay DSN was sent for this message.
    #[serde(default)]
    pub delay_dsn_sent: bool,
    /// Held by an operator (`wasmtp queue hold`): not delivered until
    /// released. Envelopes from before holds existed are not held.
    #[serde(default)]
    pub held: bool,
}

impl QueuedMessage {
    /// True once no recipient is pending.
    pub fn is_final(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| r.status != RcptStatus::Pending)
    }

    /// The reverse path as written in Return-Path.
    pub fn return_path(&self) -> String {
        self.sender
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Records the outcome of one attempt for recipient `i`.
    pub fn record(&mut self, i: usize, outcome: &Outcome, now: i64, expired: bool) {
        let r = &mut self.recipients[i];
        r.attempts += 1;
        match outcome {
            Outcome::Delivered(_) => r.status = RcptStatus::Delivered(now),
            Outcome::Permanent(e) => {
                r.status = RcptStatus::Failed(e.text.clone());
                r.last_error = Some(e.text.clone());
                r.failure = Some(e.clone());
            }
            Outcome::Temporary(e) => {
                r.last_error = Some(e.text.clone());
                r.failure = Some(e.clone());
                if expired {
                    r.status = RcptStatus::Failed(format!("expired in queue; last error: {e}"));
                }
            }
        }
    }
}

/// Current unix time in seconds.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A new queue id: 11 hex digits of microseconds since the epoch and 5 of
/// a per-process counter with a random start. Sorts by arrival time.
pub fn new_queue_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(rand::random::<u32>);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_add(start);
    format!("{:011X}{:05X}", micros & 0xFFF_FFFF_FFFF, n & 0xF_FFFF)
}

/// A one-recipient local message for the queue's unit tests (store and spool).
#[cfg(test)]
pub(crate) fn test_message(id: &str) -> QueuedMessage {
    QueuedMessage {
        id: id.into(),
        received_at: 1,
        sender: None,
        recipients: vec![QueuedRcpt::pending(
            "a@example.test".into(),
            "a".into(),
            Route::Local,
        )],
        size: 2,
        next_attempt: 0,
        ret: None,
        envid: None,
        delay_dsn_sent: false,
        held: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_sortable() {
        let a = new_queue_id();
        let b = new_queue_id();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        // Ids taken at different microseconds sort by the time they were
        // taken: the time part alone orders them, whatever the counter
        // (random start, wrapping) does.
        let mut ids = Vec::new();
        for _ in 0..200 {
            ids.push(new_queue_id());
            std::thread::sleep(std::time::Duration::from_micros(2));
        }
        for w in ids.windows(2) {
            assert!(w[0][..11] < w[1][..11], "{} then {}", w[0], w[1]);
            assert!(w[0] < w[1], "{} then {}", w[0], w[1]);
        }
        // A burst within the same microseconds does not repeat one.
        let burst: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_queue_id()).collect();
        assert_eq!(burst.len(), 10_000);
    }
}
