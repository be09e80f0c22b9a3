//! What an operator can ask of the queue, as data: the commands the queue
//! manager runs for the admin endpoint (`retry`, `hold`, `release`,
//! `delete`, `bounce`, the ids in delivery), the state each message is in, and the
//! filters and summary `wasmtp queue list` and `summary` show. The
//! manager runs the commands (it owns the schedule, so a message in
//! delivery is never changed under its worker); this file holds no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{QueuedMessage, RcptStatus, StoreError};

/// Where a message stands in the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its first attempt.
    Queued,
    /// A delivery worker has it now.
    Active,
    /// Tried before; waiting for its next attempt.
    Deferred,
    /// Held by an operator; not delivered until released.
    Held,
}

impl State {
    /// Every state, in display order.
    pub const ALL: [State; 4] = [State::Queued, State::Active, State::Deferred, State::Held];

    /// The name used in the CLI, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Active => "active",
            State::Deferred => "deferred",
            State::Held => "held",
        }
    }

    /// Parses a name from `as_str`.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The state of a message, given the ids a delivery worker has now.
    pub fn seen(msg: &QueuedMessage, in_delivery: &[String]) -> State {
        if in_delivery.contains(&msg.id) {
            State::Active
        } else {
            State::of(msg)
        }
    }

    /// The state of a message that is not in delivery.
    pub fn of(msg: &QueuedMessage) -> State {
        if msg.held {
            State::Held
        } else if msg.recipients.iter().all(|r| r.attempts == 0) {
            State::Queued
        } else {
            State::Deferred
        }
    }
}

/// One queued message with its state, as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Where it stands.
    pub state: State,
    /// Envelope and per-recipient state.
    pub message: QueuedMessage,
}

impl Entry {
    /// The latest failure of any pending recipient (the one shown in
    /// `queue list`), else of any recipient.
    pub fn last_error(&self) -> Option<&str> {
        let rs = &self.message.recipients;
        rs.iter()
            .filter(|r| r.status == RcptStatus::Pending)
            .chain(rs.iter())
            .find_map(|r| r.last_error.as_deref())
    }

    /// Recipients not delivered or failed yet.
    pub fn pending(&self) -> usize {
        let rs = &self.message.recipients;
        rs.iter()
            .filter(|r| r.status == RcptStatus::Pending)
            .count()
    }
}

/// Which messages a `retry` applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One message by queue id.
    Id(String),
    /// Every message that is not held.
    All,
    /// Every message with a pending recipient at this domain (not held).
    Domain(String),
}

/// A command for the queue manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The ids of the messages a worker has now (at most
    /// `queue.delivery_workers`). Changes nothing.
    InDelivery,
    /// Next attempt now.
    Retry(Target),
    /// Park a message: not delivered until released.
    Hold(String),
    /// Undo a hold; the next attempt is now.
    Release(String),
    /// Remove a message without a DSN.
    Delete(String),
    /// A failure DSN to the sender for every pending recipient, then removal.
    Bounce(String),
}

impl Command {
    /// The action's name in logs and metrics.
    pub fn action(&self) -> &'static str {
        match self {
            Command::InDelivery => "in-delivery",
            Command::Retry(_) => "retry",
            Command::Hold(_) => "hold",
            Command::Release(_) => "release",
            Command::Delete(_) => "delete",
            Command::Bounce(_) => "bounce",
        }
    }
}

/// What the manager answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// For `InDelivery`.
    InDelivery(Vec<String>),
    /// The ids the command changed.
    Done(Vec<String>),
}

/// Why a queue command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No message with that id (never queued, or already finished).
    #[error("no message {0} in the queue")]
    NoSuchMessage(String),
    /// `retry` of a held message.
    #[error("message {0} is held: release it to deliver it")]
    Held(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manager stopped (the server is shutting down).
    #[error("the queue manager is not running (shutting down)")]
    Stopped,
}

/// `queue list` filters; an absent one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Substring of the sender (case-insensitive; `<>` for the null sender).
    pub sender: Option<String>,
    /// Substring of any recipient's address (case-insensitive).
    pub rcpt: Option<String>,
    /// A pending recipient's domain, exactly (case-insensitive).
    pub domain: Option<String>,
    /// The state.
    pub state: Option<State>,
    /// Only messages older than this many seconds.
    pub older_than: Option<u64>,
}

impl Filter {
    /// True if `e` passes every filter at unix time `now`.
    pub fn matches(&self, e: &Entry, now: i64) -> bool {
        let m = &e.message;
        let has = |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.to_lowercase());
        let sender = m
            .sender
            .as_ref()
            .map_or_else(|| "<>".to_string(), |a| a.to_string());
        self.sender.as_deref().is_none_or(|s| has(&sender, s))
            && self
                .rcpt
                .as_deref()
                .is_none_or(|s| m.recipients.iter().any(|r| has(&r.address, s)))
            && self
                .domain
                .as_deref()
                .is_none_or(|d| pending_domains(m).any(|x| x.eq_ignore_ascii_case(d)))
            && self.state.is_none_or(|s| s == e.state)
            && self
                .older_than
                .is_none_or(|secs| now - m.received_at >= secs as i64)
    }
}

/// The domains of a message's pending recipients (lower case, repeats kept).
pub fn pending_domains(m: &QueuedMessage) -> impl Iterator<Item = String> + '_ {
    m.recipients
        .iter()
        .filter(|r| r.status == RcptStatus::Pending)
        .map(|r| domain_of(&r.address))
}

/// The domain part of an address, lower case.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(address, |(_, d)| d)
        .to_lowercase()
}

/// `queue summary`: pending recipients by destination domain and by the
/// state of their message (as Postfix's qshape counts them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Messages by state.
    pub messages: BTreeMap<State, usize>,
    /// Pending recipients: domain -> state -> count.
    pub domains: BTreeMap<String, BTreeMap<State, usize>>,
}

impl Summary {
    /// Counts one message in `state`.
    pub fn add(&mut self, state: State, message: &QueuedMessage) {
        *self.messages.entry(state).or_default() += 1;
        for d in pending_domains(message) {
            *self.domains.entry(d).or_default().entry(state).or_default() += 1;
        }
    }

    /// Messages in the queue.
    pub fn total(&self) -> usize {
        self.messages.values().sum()
    }
}

/// The header block of a queued body (up to the first empty line), for
/// `queue show`.
pub fn header_block(body: &[u8]) -> String {
    let end = memchr::memmem::find(body, b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| memchr::memmem::find(body, b"\n\n").map(|i| i + 1))
        .unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueuedRcpt, Route};

    fn entry(state: State, sender: Option<&str>, rcpts: &[&str], age: i64) -> Entry {
        Entry {
            state,
            message: QueuedMessage {
                id: "X".into(),
                received_at: 1000 - age,
                sender: sender.map(|s| crate::smtp::address::parse_mailbox(s).unwrap()),
                recipients: rcpts
                    .iter()
                    .map(|r| QueuedRcpt::pending(r.to_string(), String::new(), Route::Remote))
                    .collect(),
                size: 10,
                next_attempt: 0,
                ret: None,
                envid: None,
                delay_dsn_sent: false,
                held: state == State::Held,
            },
        }
    }

    #[test]
    fn filters_and_summary() {
        let a = entry(
            State::Deferred,
            Some("app@example.test"),
            &["x@Remote.test"],
            600,
        );
        let b = entry(State::Held, None, &["y@other.test", "z@remote.test"], 10);
        let f = |f: Filter| [&a, &b].iter().filter(|e| f.matches(e, 1000)).count();
        assert_eq!(f(Filter::default()), 2);
        let by = |s: &str| Filter {
            sender: Some(s.into()),
            ..Filter::default()
        };
        assert_eq!(f(by("APP@")), 1);
        assert_eq!(f(by("<>")), 1);
        let dom = Filter {
            domain: Some("remote.test".into()),
            ..Filter::default()
        };
        assert_eq!(f(dom), 2);
        let old = Filter {
            older_than: Some(300),
            ..Filter::default()
        };
        assert_eq!(f(old), 1);
        let held = Filter {
            state: State::parse("held"),
            ..Filter::default()
        };
        assert_eq!(f(held), 1);
        let mut s = Summary::default();
        for e in [a, b] {
            s.add(e.state, &e.message);
        }
        assert_eq!(s.total(), 2);
        assert_eq!(s.domains["remote.test"][&State::Deferred], 1);
        assert_eq!(s.domains["remote.test"][&State::Held], 1);
        assert_eq!(s.domains["other.test"][&State::Held], 1);
    }

    #[test]
    fn header_block_stops_at_the_blank_line() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody"),
            "A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_block(b"A: 1"), "A: 1");
    }
}
