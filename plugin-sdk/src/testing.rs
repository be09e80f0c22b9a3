//! A fake host for running plugin logic natively (the `testing` feature on a non-wasm target).
//!
//! The capability functions ([`kv`](crate::kv), [`dns`](crate::dns), [`notes`](crate::notes),
//! [`log`](crate::log), [`clock`](crate::clock)) read and write thread-local in-memory state
//! here. Each test starts with [`FakeHost::new`], which resets that state, then sets up DNS
//! answers, the clock or stored keys, calls the plugin's hooks directly and inspects the result.
//!
//! ```
//! use wasmtp_plugin_sdk::{dns, testing, Config, Connection, Plugin, Verdict};
//!
//! struct Blocklist;
//!
//! impl Plugin for Blocklist {
//!     fn init(_: Config) -> Result<Self, String> {
//!         Ok(Blocklist)
//!     }
//!     fn connect(&self, conn: &Connection) -> Verdict {
//!         match dns::a("2.0.0.192.zen.example") {
//!             Ok(a) if !a.is_empty() => Verdict::reject_with(554, "5.7.1", &conn.peer_ip),
//!             _ => Verdict::Continue,
//!         }
//!     }
//! }
//!
//! // In a #[test] of the plugin crate:
//! let host = testing::FakeHost::new();
//! host.dns_a("2.0.0.192.zen.example", &["127.0.0.2"]);
//! let plugin = Blocklist::init(testing::config("{}")).unwrap();
//! assert!(plugin.connect(&testing::connection("192.0.2.1")).is_refusal());
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use crate::dns::{DnsError, MxRecord};
use crate::log::Level;
use crate::{AuthResults, Config, Connection, Envelope, Header, Message, Recipient};

/// The fake clock's time when a [`FakeHost`] is created: 2023-11-14T22:13:20Z.
pub const DEFAULT_NOW_MILLIS: u64 = 1_700_000_000_000;

#[derive(Default)]
pub(crate) struct State {
    pub(crate) logs: Vec<(Level, String)>,
    pub(crate) notes: BTreeMap<String, String>,
    kv: BTreeMap<String, (Vec<u8>, Option<u64>)>,
    kv_failure: Option<String>,
    dns: HashMap<(&'static str, String), Result<Vec<String>, DnsError>>,
    mx: HashMap<String, Result<Vec<MxRecord>, DnsError>>,
    pub(crate) now_millis: u64,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::fresh());
}

pub(crate) fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

impl State {
    fn fresh() -> Self {
        State {
            now_millis: DEFAULT_NOW_MILLIS,
            ..Default::default()
        }
    }

    fn live(&self, key: &str) -> Option<&(Vec<u8>, Option<u64>)> {
        self.kv
            .get(key)
            .filter(|(_, exp)| exp.is_none_or(|e| e > self.now_millis))
    }

    fn expiry(&self, ttl_seconds: Option<u32>) -> Option<u64> {
        ttl_seconds.map(|t| self.now_millis + u64::from(t) * 1000)
    }

    pub(crate) fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.kv_check()?;
        Ok(self.live(key).map(|(v, _)| v.clone()))
    }

    pub(crate) fn kv_set(
        &mut self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<u32>,
    ) -> Result<(), String> {
        self.kv_check()?;
        let expires = self.expiry(ttl);
        self.kv.insert(key.to_string(), (value, expires));
        Ok(())
    }

    pub(crate) fn kv_delete(&mut self, key: &str) -> Result<(), String> {
        self.kv_check()?;
        self.kv.remove(key);
        Ok(())
    }

    pub(crate) fn kv_incr(
        &mut self,
        key: &str,
        delta: i64,
        ttl: Option<u32>,
    ) -> Result<i64, String> {
        self.kv_check()?;
        let (current, expires) = match self.live(key) {
            Some((v, exp)) => {
                let text =
                    std::str::from_utf8(v).map_err(|_| format!("{key} is not an integer"))?;
                let n: i64 = text
                    .parse()
                    .map_err(|_| format!("{key} is not an integer"))?;
                (n, *exp)
            }
            None => (0, self.expiry(ttl)),
        };
        let new = current
            .checked_add(delta)
            .ok_or_else(|| format!("{key} overflows"))?;
        self.kv
            .insert(key.to_string(), (new.to_string().into_bytes(), expires));
        Ok(new)
    }

    fn kv_check(&self) -> Result<(), String> {
        self.kv_failure.clone().map_or(Ok(()), Err)
    }

    pub(crate) fn dns_lookup(
        &mut self,
        kind: &'static str,
        name: &str,
    ) -> Result<Vec<String>, DnsError> {
        let key = (kind, name.trim_end_matches('.').to_ascii_lowercase());
        self.dns
            .get(&key)
            .cloned()
            .unwrap_or(Err(DnsError::NotFound))
    }

    pub(crate) fn dns_mx(&mut self, name: &str) -> Result<Vec<MxRecord>, DnsError> {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .get(&key)
            .cloned()
            .unwrap_or(Err(DnsError::NotFound))
    }
}

/// Handle on the thread's fake host state. Creating one resets everything: no logs, notes, keys
/// or DNS records, and the clock at [`DEFAULT_NOW_MILLIS`]. Names not configured answer
/// [`DnsError::NotFound`].
pub struct FakeHost {
    _private: (),
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    /// Resets the fake host of the current thread and returns a handle on it.
    pub fn new() -> Self {
        STATE.with(|s| *s.borrow_mut() = State::fresh());
        FakeHost { _private: () }
    }

    /// Sets the clock.
    pub fn set_now_millis(&self, millis: u64) {
        with_state(|s| s.now_millis = millis);
    }

    /// Moves the clock forward (kv entries expire accordingly).
    pub fn advance_secs(&self, secs: u64) {
        with_state(|s| s.now_millis += secs * 1000);
    }

    /// The value stored at `key` in the plugin's kv namespace (ignoring expiry).
    pub fn kv_value(&self, key: &str) -> Option<Vec<u8>> {
        with_state(|s| s.kv.get(key).map(|(v, _)| v.clone()))
    }

    /// Stores `value` at `key` without expiry.
    pub fn kv_put(&self, key: &str, value: &[u8]) {
        with_state(|s| s.kv.insert(key.to_string(), (value.to_vec(), None)));
    }

    /// All stored keys, sorted.
    pub fn kv_keys(&self) -> Vec<String> {
        with_state(|s| s.kv.keys().cloned().collect())
    }

    /// Makes every kv call fail with `error` (None restores normal operation).
    pub fn fail_kv(&self, error: Option<&str>) {
        with_state(|s| s.kv_failure = error.map(str::to_string));
    }

    fn dns_set(&self, kind: &'static str, name: &str, answer: Result<Vec<String>, DnsError>) {
        let key = (kind, name.trim_end_matches('.').to_ascii_lowercase());
        with_state(|s| s.dns.insert(key, answer));
    }

    /// Answers A lookups of `name` with `addrs`.
    pub fn dns_a(&self, name: &str, addrs: &[&str]) {
        self.dns_set("a", name, Ok(addrs.iter().map(|a| a.to_string()).collect()));
    }

    /// Answers AAAA lookups of `name` with `addrs`.
    pub fn dns_aaaa(&self, name: &str, addrs: &[&str]) {
        self.dns_set(
            "aaaa",
            name,
            Ok(addrs.iter().map(|a| a.to_string()).collect()),
        );
    }

    /// Answers TXT lookups of `name` with `records`.
    pub fn dns_txt(&self, name: &str, records: &[&str]) {
        self.dns_set(
            "txt",
            name,
            Ok(records.iter().map(|a| a.to_string()).collect()),
        );
    }

    /// Answers PTR lookups of `ip` with `names`.
    pub fn dns_ptr(&self, ip: &str, names: &[&str]) {
        self.dns_set("ptr", ip, Ok(names.iter().map(|a| a.to_string()).collect()));
    }

    /// Answers MX lookups of `name` with (preference, exchange) pairs.
    pub fn dns_mx(&self, name: &str, records: &[(u16, &str)]) {
        let recs = records
            .iter()
            .map(|(p, e)| MxRecord {
                preference: *p,
                exchange: e.to_string(),
            })
            .collect();
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        with_state(|s| s.mx.insert(key, Ok(recs)));
    }

    /// Makes lookups of `kind` (`"a"`, `"aaaa"`, `"txt"`, `"ptr"`) for `name` fail with `error`.
    pub fn dns_fail(&self, kind: &'static str, name: &str, error: DnsError) {
        self.dns_set(kind, name, Err(error));
    }

    /// The notes as they stand.
    pub fn notes(&self) -> BTreeMap<String, String> {
        with_state(|s| s.notes.clone())
    }

    /// The note `key`.
    pub fn note(&self, key: &str) -> Option<String> {
        with_state(|s| s.notes.get(key).cloned())
    }

    /// Sets a note, as another plugin would have.
    pub fn set_note(&self, key: &str, value: &str) {
        with_state(|s| s.notes.insert(key.to_string(), value.to_string()));
    }

    /// Ends the transaction: drops all notes.
    pub fn clear_notes(&self) {
        with_state(|s| s.notes.clear());
    }

    /// The lines the plugin logged so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        with_state(|s| s.logs.clone())
    }
}

/// Parses a JSON config table, as the host passes it to `init`. Panics on invalid JSON.
pub fn config(json: &str) -> Config {
    Config::from_json(json).expect("test config must be valid JSON")
}

/// A plaintext connection from `peer_ip` port 40000 to listener `smtp` on 127.0.0.1:25, no HELO,
/// no TLS, not authenticated. Adjust the fields for other cases.
pub fn connection(peer_ip: &str) -> Connection {
    Connection {
        session_id: "test-session".to_string(),
        peer_ip: peer_ip.to_string(),
        peer_port: 40000,
        local_ip: "127.0.0.1".to_string(),
        local_port: 25,
        listener: "smtp".to_string(),
        tls: None,
        authenticated: None,
        helo: None,
    }
}

/// A recipient without ESMTP parameters.
pub fn recipient(address: &str) -> Recipient {
    Recipient {
        address: address.to_string(),
        params: Vec::new(),
    }
}

/// An envelope from `sender` to `recipients`, without ESMTP parameters.
pub fn envelope(sender: &str, recipients: &[&str]) -> Envelope {
    Envelope {
        sender: sender.to_string(),
        sender_params: Vec::new(),
        recipients: recipients.iter().map(|r| recipient(r)).collect(),
    }
}

/// A fake message parsed from raw RFC 5322 bytes (LF or CRLF line endings), for `data` tests.
pub fn message(raw: impl AsRef<[u8]>) -> Message<'static> {
    Message::fake(FakeMessage::parse(raw.as_ref()))
}

/// The same with the authentication results [`Message::auth_results`] returns.
pub fn message_with_auth(raw: impl AsRef<[u8]>, auth: AuthResults) -> Message<'static> {
    let mut m = FakeMessage::parse(raw.as_ref());
    m.auth = Some(auth);
    Message::fake(m)
}

/// The in-memory message behind [`message`].
pub(crate) struct FakeMessage {
    pub(crate) raw: Vec<u8>,
    pub(crate) headers: Vec<Header>,
    pub(crate) auth: Option<AuthResults>,
}

impl FakeMessage {
    fn parse(raw: &[u8]) -> Self {
        // Normalise to CRLF as the host stores messages.
        let mut norm = Vec::with_capacity(raw.len() + raw.len() / 20);
        for (i, &b) in raw.iter().enumerate() {
            if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
                norm.push(b'\r');
            }
            norm.push(b);
        }
        let text = String::from_utf8_lossy(&norm);
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        let mut headers: Vec<Header> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.value.push(' ');
                    last.value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push(Header {
                    name: name.trim().to_string(),
                    value: value.trim().to_string(),
                });
            }
        }
        FakeMessage {
            raw: norm,
            headers,
            auth: None,
        }
    }

    pub(crate) fn text(&self, max_bytes: u32) -> String {
        let Some(parsed) = mail_parser::MessageParser::default().parse(&self.raw) else {
            return String::new();
        };
        let mut out = String::new();
        for i in 0..parsed.text_body.len() {
            if let Some(text) = parsed.body_text(i) {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                out.push_str(&text);
            }
        }
        let mut end = out.len().min(max_bytes as usize);
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out
    }
}
