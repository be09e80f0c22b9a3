//! `wasmtp plugin test`: a transaction replayed offline through a plugin chain, and the check of
//! what the chain decided against a case's expectations.
//!
//! The replay drives the server's own `PluginSession` (same loading, instances, deadlines,
//! limits, verdict checks) through the hooks in the order a session calls them, with the same
//! stops: a refusal at connect, ehlo or mail-from ends the transaction, a refused recipient is
//! left out, a message nobody accepts a recipient for never reaches data. Only the clock and DNS
//! are fakes (see `fake`), and kv lives in a throwaway store seeded from the case. No socket is
//! opened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Deserialize;

use super::bindings::wasmtp::plugin::types as wit;
use super::fake::{FakeName, Fakes};
use super::message::MessageData;
use super::run::{Decision, Modification, Route};
use super::{PluginHost, PluginSession, TxView};
use crate::config::{HookName, LocalSettings};
use crate::delivery::local::{Resolution, resolve};
use crate::smtp::Reply;
use crate::smtp::address::parse_path;

/// The clock of a case that does not set one: 2026-01-01T00:00:00Z.
pub const DEFAULT_CLOCK_MS: u64 = 1_767_225_600_000;

/// One case file (`wasmtp plugin test ... CASE.toml`); docs/plugins.md describes every key.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case is about, printed with its result.
    pub description: Option<String>,
    /// Connection facts.
    #[serde(default)]
    pub connection: CaseConnection,
    /// The SMTP envelope.
    #[serde(default)]
    pub envelope: CaseEnvelope,
    /// The `.eml` file, relative to the case file.
    pub message: Option<PathBuf>,
    /// The message itself, instead of `message`.
    pub message_text: Option<String>,
    /// What `clock.now` returns (RFC 3339, e.g. `2026-11-29T12:00:00Z`).
    pub clock: Option<String>,
    /// kv contents before the transaction: plugin name → key → value.
    #[serde(default)]
    pub kv: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// DNS answers: name (or IP address, for `ptr`) → records.
    #[serde(default)]
    pub dns: BTreeMap<String, FakeName>,
    /// What the server's mail authentication found, as `message.auth-results` gives it to
    /// the data hook (contract 0.2.0); none when absent.
    pub auth: Option<crate::mailauth::Results>,
    /// What the chain must decide.
    #[serde(default)]
    pub expect: Expect,
}

/// `[connection]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaseConnection {
    /// The client's address.
    pub client_ip: String,
    /// The client's port.
    pub client_port: u16,
    /// The server's address.
    pub local_ip: String,
    /// The server's port.
    pub local_port: u16,
    /// The listener's name.
    pub listener: String,
    /// Whether the client used TLS (TLSv1.3).
    pub tls: bool,
    /// The SNI name the client sent over TLS.
    pub sni: Option<String>,
    /// The authenticated user, if any.
    pub auth: Option<String>,
}

impl Default for CaseConnection {
    fn default() -> Self {
        CaseConnection {
            client_ip: "192.0.2.1".into(),
            client_port: 49152,
            local_ip: "192.0.2.25".into(),
            local_port: 25,
            listener: "mx".into(),
            tls: false,
            sni: None,
            auth: None,
        }
    }
}

/// `[envelope]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaseEnvelope {
    /// The EHLO name.
    pub helo: String,
    /// MAIL FROM (`""` for the null sender).
    pub mail_from: String,
    /// RCPT TO, in order.
    pub rcpt_to: Vec<String>,
}

impl Default for CaseEnvelope {
    fn default() -> Self {
        CaseEnvelope {
            helo: "client.example.org".into(),
            mail_from: "sender@example.org".into(),
            rcpt_to: vec!["rcpt@example.org".into()],
        }
    }
}

/// `[expect]`: only what is given is checked.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `accepted`, `discarded`, `quarantined`, `no recipients`, or `refused at HOOK`.
    pub result: Option<String>,
    /// `[expect.connect]`
    pub connect: Option<ExpectStep>,
    /// `[expect.ehlo]`
    pub ehlo: Option<ExpectStep>,
    /// `[expect.mail-from]`
    #[serde(rename = "mail-from")]
    pub mail_from: Option<ExpectStep>,
    /// `[expect.rcpt."ADDRESS"]`, one per recipient checked.
    #[serde(default)]
    pub rcpt: BTreeMap<String, ExpectStep>,
    /// `[expect.data]`
    pub data: Option<ExpectStep>,
    /// `[expect.deliver]`: recipient → route (`default`, `local:MAILBOX`, `relay:HOST[:PORT]`,
    /// `discard`).
    pub deliver: Option<BTreeMap<String, String>>,
    /// The envelope sender after modifications.
    pub sender: Option<String>,
    /// The recipients after modifications, in order.
    pub recipients: Option<Vec<String>>,
}

/// What one hook must decide.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExpectStep {
    /// `continue`, `accept`, `reject`, `tempfail`, `disconnect`, `discard` or `quarantine`.
    pub verdict: Option<String>,
    /// The start of the SMTP reply (e.g. `550 5.7.1`).
    pub reply: Option<String>,
    /// The quarantine reason.
    pub reason: Option<String>,
    /// Every modification, in order (`add-header NAME: VALUE`, `remove-header NAME`,
    /// `change-header NAME: VALUE`, `set-sender ADDR`, `add-recipient ADDR`,
    /// `remove-recipient ADDR`).
    pub modifications: Option<Vec<String>>,
}

/// A case read and checked, ready to run.
pub struct LoadedCase {
    /// The file.
    pub path: PathBuf,
    /// Its contents.
    pub case: Case,
    /// The transaction it describes.
    pub input: Input,
    /// Its clock and DNS.
    pub fakes: Fakes,
}

/// The transaction to replay.
#[derive(Debug, Clone)]
pub struct Input {
    /// Connection facts (`helo` is filled in at ehlo, as the session does).
    pub conn: wit::Connection,
    /// The EHLO name.
    pub helo: String,
    /// MAIL FROM.
    pub sender: String,
    /// RCPT TO.
    pub rcpts: Vec<String>,
    /// The message, CRLF line ends.
    pub message: Vec<u8>,
    /// The authentication results the data hook sees.
    pub auth: Option<crate::mailauth::Results>,
}

/// Reads a case file; errors name the file and key.
pub fn load_case(path: &Path) -> Result<LoadedCase, String> {
    let at = |e: String| format!("{}: {e}", path.display());
    let src = std::fs::read_to_string(path).map_err(|e| at(format!("cannot read: {e}")))?;
    let de = toml::Deserializer::parse(&src).map_err(|e| at(e.to_string()))?;
    let case: Case = serde_path_to_error::deserialize(de)
        .map_err(|e| at(format!("key {}: {}", e.path(), e.inner().message().trim())))?;
    let message = match (&case.message, &case.message_text) {
        (Some(_), Some(_)) => return Err(at("give message or message_text, not both".into())),
        (Some(file), None) => {
            let file = path.parent().unwrap_or(Path::new(".")).join(file);
            std::fs::read(&file).map_err(|e| at(format!("message {}: {e}", file.display())))?
        }
        (None, Some(text)) => text.clone().into_bytes(),
        (None, None) => return Err(at("no message: set message = \"FILE.eml\"".into())),
    };
    let now_ms = match &case.clock {
        None => DEFAULT_CLOCK_MS,
        Some(t) => humantime::parse_rfc3339_weak(t)
            .map_err(|e| {
                at(format!(
                    "clock {t:?}: {e} (expected e.g. 2026-11-29T12:00:00Z)"
                ))
            })?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let fakes = Fakes {
        now_ms,
        dns: case.dns.clone(),
    };
    fakes.check().map_err(at)?;
    for (plugin, entries) in &case.kv {
        for (key, value) in entries {
            kv_bytes(value).map_err(|e| at(format!("kv.{plugin}.{key}: {e}")))?;
        }
    }
    let input = case_input(&case, crlf(&message));
    Ok(LoadedCase {
        path: path.to_path_buf(),
        case,
        input,
        fakes,
    })
}

/// A kv value from a case: a string as its bytes, an integer in decimal (what `kv.incr` keeps).
fn kv_bytes(v: &toml::Value) -> Result<Vec<u8>, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone().into_bytes()),
        toml::Value::Integer(n) => Ok(n.to_string().into_bytes()),
        other => Err(format!(
            "expected a string or an integer, found {}",
            other.type_str()
        )),
    }
}

fn case_input(case: &Case, message: Vec<u8>) -> Input {
    let c = &case.connection;
    Input {
        conn: wit::Connection {
            session_id: "replay".into(),
            peer_ip: c.client_ip.clone(),
            peer_port: c.client_port,
            local_ip: c.local_ip.clone(),
            local_port: c.local_port,
            listener: c.listener.clone(),
            tls: c.tls.then(|| wit::TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
                sni: c.sni.clone(),
            }),
            authenticated: c.auth.clone(),
            helo: None,
        },
        helo: case.envelope.helo.clone(),
        sender: case.envelope.mail_from.clone(),
        rcpts: case.envelope.rcpt_to.clone(),
        message,
        auth: case.auth.clone(),
    }
}

/// The transaction `wasmtp plugin test --eml FILE` replays: the envelope from the message's
/// From and To/Cc (or placeholders), the default connection.
pub fn eml_input(message: &[u8]) -> Input {
    let mut case = Case::default();
    if let Some(m) = mail_parser::MessageParser::default().parse_headers(message) {
        let addrs = |a: Option<&mail_parser::Address>| -> Vec<String> {
            a.map(|a| {
                a.iter()
                    .filter_map(|a| a.address())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
        };
        if let Some(from) = addrs(m.from()).into_iter().next() {
            case.envelope.mail_from = from;
        }
        let mut rcpts = addrs(m.to());
        rcpts.extend(addrs(m.cc()));
        if !rcpts.is_empty() {
            case.envelope.rcpt_to = rcpts;
        }
    }
    case_input(&case, crlf(message))
}

/// Line ends as the server stores them after DATA: CRLF.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// What the chain decided at one hook.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// The hook.
    pub hook: &'static str,
    /// The recipient, at rcpt.
    pub rcpt: Option<String>,
    /// The verdict (`routes` at deliver).
    pub verdict: String,
    /// The SMTP reply it turns into, when it has one.
    pub reply: Option<String>,
    /// The quarantine reason.
    pub reason: Option<String>,
    /// The modifications, as text.
    pub modifications: Vec<String>,
    /// Routes per recipient, at deliver.
    pub routes: Vec<(String, String)>,
    /// Per plugin called: name and microseconds.
    pub timings: Vec<(String, u64)>,
}

/// What the chain decided for a whole transaction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replay {
    /// Each hook that ran, in order.
    pub steps: Vec<Step>,
    /// `accepted`, `discarded`, `quarantined`, `no recipients` or `refused at HOOK`.
    pub result: String,
    /// The envelope sender after modifications.
    pub sender: String,
    /// The recipients after modifications.
    pub recipients: Vec<String>,
}

/// Seeds a host's kv from a case.
pub async fn seed_kv(host: &PluginHost, case: &Case) -> Result<(), String> {
    for (plugin, entries) in &case.kv {
        for (key, value) in entries {
            host.shared()
                .seed_kv(plugin, key, &kv_bytes(value)?)
                .await
                .map_err(|e| format!("kv.{plugin}.{key}: {e}"))?;
        }
    }
    Ok(())
}

/// Runs one transaction through the host's current set. With `local` (a server config's
/// `[local]`), a recipient a plugin adds is kept only when it is local, as the session does;
/// without, every added recipient is kept.
pub async fn replay(
    host: &Arc<PluginHost>,
    input: &Input,
    hostname: &str,
    local: Option<&LocalSettings>,
) -> Replay {
    let mut r = Runner {
        session: PluginSession::new(host.clone(), input.conn.session_id.clone()),
        host: host.clone(),
        hostname: hostname.to_string(),
        local: local.cloned(),
        steps: Vec::new(),
    };
    let (result, sender, recipients) = r.transaction(input).await;
    Replay {
        steps: r.steps,
        result,
        sender,
        recipients,
    }
}

struct Runner {
    session: PluginSession,
    host: Arc<PluginHost>,
    hostname: String,
    local: Option<LocalSettings>,
    steps: Vec<Step>,
}

type Outcome = (String, String, Vec<String>);

impl Runner {
    async fn transaction(&mut self, input: &Input) -> Outcome {
        let refused = |hook: HookName| {
            (
                format!("refused at {}", hook.as_str()),
                String::new(),
                Vec::new(),
            )
        };
        let mut conn = input.conn.clone();
        if let Some(hook) = self.greet(&mut conn, input).await {
            return refused(hook);
        }
        let mut env = wit::Envelope {
            sender: input.sender.clone(),
            sender_params: Vec::new(),
            recipients: Vec::new(),
        };
        let mut mods = Vec::new();
        let mut disposition = None;
        if self.session.wants(HookName::MailFrom) {
            let t = self.timer();
            let (d, m) = self
                .session
                .mail_from(&conn, &input.sender, &Vec::new())
                .await;
            if self.record(HookName::MailFrom, None, &d, &m, t) {
                self.session.end_tx();
                return refused(HookName::MailFrom);
            }
            mods = m;
            disposition = fate(&d);
        }
        self.session.begin_tx();
        let quarantine = self
            .recipients(&conn, &mut env, &mut mods, &input.rcpts)
            .await;
        if env.recipients.is_empty() {
            return ("no recipients".into(), env.sender, Vec::new());
        }
        if disposition.is_none() {
            disposition = quarantine.map(Decision::Quarantine);
        }
        let msg = MessageData::with_auth(input.message.clone(), input.auth.clone());
        if self.session.wants(HookName::Data) {
            let t = self.timer();
            let tx = TxView {
                conn: &conn,
                env: &env,
            };
            let (d, m) = self.session.data(tx, &msg).await;
            if self.record(HookName::Data, None, &d, &m, t) {
                return refused(HookName::Data);
            }
            mods.extend(m);
            disposition = fate(&d).or(disposition);
        }
        apply_envelope_mods(&mut env, &mods, self.local.as_ref());
        let result = match disposition {
            Some(Decision::Discard) => "discarded",
            Some(_) => "quarantined",
            None => {
                self.deliver(&conn, &env).await;
                "accepted"
            }
        };
        self.session.end_tx();
        let rcpts = env.recipients.iter().map(|r| r.address.clone()).collect();
        (result.into(), env.sender, rcpts)
    }

    /// connect, then ehlo (which starts afresh, as in the session); the hook that refused.
    async fn greet(&mut self, conn: &mut wit::Connection, input: &Input) -> Option<HookName> {
        if self.session.wants(HookName::Connect) {
            let t = self.timer();
            let d = self.session.connect(conn).await;
            if self.record(HookName::Connect, None, &d, &[], t) {
                return Some(HookName::Connect);
            }
        }
        self.session.end_tx();
        conn.helo = Some(input.helo.clone());
        if self.session.wants(HookName::Ehlo) {
            let t = self.timer();
            let d = self.session.ehlo(conn, &input.helo).await;
            if self.record(HookName::Ehlo, None, &d, &[], t) {
                return Some(HookName::Ehlo);
            }
        }
        None
    }

    /// The deliver hook on the final envelope: a route per recipient.
    async fn deliver(&mut self, conn: &wit::Connection, env: &wit::Envelope) {
        if !self.session.wants(HookName::Deliver) {
            return;
        }
        let t = self.timer();
        let routes = self.session.deliver(TxView { conn, env }).await;
        let routes = env
            .recipients
            .iter()
            .zip(routes)
            .map(|(r, route)| (r.address.clone(), route_text(&route)))
            .collect();
        self.steps.push(Step {
            hook: HookName::Deliver.as_str(),
            rcpt: None,
            verdict: "routes".into(),
            reply: None,
            reason: None,
            modifications: Vec::new(),
            routes,
            timings: self.elapsed(t),
        });
    }

    /// The rcpt hook per recipient; returns a quarantine reason given at rcpt.
    async fn recipients(
        &mut self,
        conn: &wit::Connection,
        env: &mut wit::Envelope,
        mods: &mut Vec<Modification>,
        rcpts: &[String],
    ) -> Option<String> {
        let mut quarantine = None;
        for address in rcpts {
            let r = wit::Recipient {
                address: address.clone(),
                params: Vec::new(),
            };
            if self.session.wants(HookName::Rcpt) {
                let t = self.timer();
                let (mut d, m) = self.session.rcpt(TxView { conn, env }, &r).await;
                // The session keeps a quarantine at rcpt for the message; show it here.
                if let Some(reason) = self.session.take_quarantine() {
                    quarantine.get_or_insert(reason.clone());
                    d = Decision::Quarantine(reason);
                }
                if self.record(HookName::Rcpt, Some(address), &d, &m, t) {
                    continue;
                }
                mods.extend(m);
                if d == Decision::Discard {
                    continue;
                }
            }
            if !env
                .recipients
                .iter()
                .any(|x| x.address.eq_ignore_ascii_case(address))
            {
                env.recipients.push(r);
            }
        }
        quarantine
    }

    /// Records a step; true if the decision refuses.
    fn record(
        &mut self,
        hook: HookName,
        rcpt: Option<&String>,
        d: &Decision,
        mods: &[Modification],
        t: Vec<(String, u64, u64)>,
    ) -> bool {
        let (verdict, reply, reason) = describe(d, &self.hostname);
        let refuses = matches!(
            d,
            Decision::Reject(_) | Decision::Tempfail(_) | Decision::Disconnect(_)
        );
        self.steps.push(Step {
            hook: hook.as_str(),
            rcpt: rcpt.cloned(),
            verdict,
            reply,
            reason,
            modifications: mods.iter().map(modification_text).collect(),
            routes: Vec::new(),
            timings: self.elapsed(t),
        });
        refuses
    }

    /// Every plugin's (name, calls, microseconds) so far.
    fn timer(&self) -> Vec<(String, u64, u64)> {
        self.host
            .current()
            .plugins
            .iter()
            .map(|p| {
                (
                    p.spec.name.clone(),
                    p.stats.calls.load(Ordering::Relaxed),
                    p.stats.micros.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// The plugins called since `before`, with their time.
    fn elapsed(&self, before: Vec<(String, u64, u64)>) -> Vec<(String, u64)> {
        self.timer()
            .into_iter()
            .zip(before)
            .filter(|(now, then)| now.1 != then.1)
            .map(|(now, then)| (now.0, now.2 - then.2))
            .collect()
    }
}

/// A decision that decides the message's fate (discard, quarantine).
fn fate(d: &Decision) -> Option<Decision> {
    matches!(d, Decision::Discard | Decision::Quarantine(_)).then(|| d.clone())
}

/// Sender and recipient modifications, as the session applies them before deliver: an added
/// recipient that `local` does not resolve to a mailbox is ignored (there is no relaying for
/// plugin-added recipients).
fn apply_envelope_mods(
    env: &mut wit::Envelope,
    mods: &[Modification],
    local: Option<&LocalSettings>,
) {
    let is_local = |a: &str| {
        local.is_none_or(|l| match parse_path(&format!("<{a}>")) {
            Ok((path, "")) => matches!(resolve(l, &path), Resolution::Local(_)),
            _ => false,
        })
    };
    for m in mods {
        match m {
            Modification::SetSender(s) => env.sender = s.clone(),
            Modification::AddRecipient(a)
                if is_local(a)
                    && !env
                        .recipients
                        .iter()
                        .any(|r| r.address.eq_ignore_ascii_case(a)) =>
            {
                env.recipients.push(wit::Recipient {
                    address: a.clone(),
                    params: Vec::new(),
                });
            }
            Modification::RemoveRecipient(a) => env
                .recipients
                .retain(|r| !r.address.eq_ignore_ascii_case(a)),
            _ => {}
        }
    }
}

fn wire(r: &Reply) -> String {
    r.to_wire().trim_end().replace("\r\n", "\n")
}

fn describe(d: &Decision, hostname: &str) -> (String, Option<String>, Option<String>) {
    let (v, reply, reason) = match d {
        Decision::Continue => ("continue", None, None),
        Decision::Accept(r) => ("accept", r.as_ref().map(wire), None),
        Decision::Reject(r) => ("reject", Some(wire(r)), None),
        Decision::Tempfail(r) => ("tempfail", Some(wire(r)), None),
        Decision::Disconnect(r) => {
            let r = r
                .clone()
                .unwrap_or_else(|| Reply::policy_disconnect(hostname));
            ("disconnect", Some(wire(&r)), None)
        }
        Decision::Discard => ("discard", None, None),
        Decision::Quarantine(reason) => ("quarantine", None, Some(reason.clone())),
    };
    (v.to_string(), reply, reason)
}

/// A modification as a case writes it.
pub fn modification_text(m: &Modification) -> String {
    match m {
        Modification::AddHeader(h) => format!("add-header {}: {}", h.name, h.value),
        Modification::RemoveHeader(n) => format!("remove-header {n}"),
        Modification::ChangeHeader(h) => format!("change-header {}: {}", h.name, h.value),
        Modification::SetSender(s) => format!("set-sender {s}"),
        Modification::AddRecipient(a) => format!("add-recipient {a}"),
        Modification::RemoveRecipient(a) => format!("remove-recipient {a}"),
    }
}

/// A route as a case writes it.
pub fn route_text(r: &Route) -> String {
    match r {
        Route::Default => "default".into(),
        Route::Local(mb) => format!("local:{mb}"),
        Route::Relay(t) => match t.port {
            Some(p) => format!("relay:{}:{p}", t.host),
            None => format!("relay:{}", t.host),
        },
        Route::Discard => "discard".into(),
    }
}

/// One difference between a case's expectation and what the chain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// What is compared, e.g. `data modifications`.
    pub item: String,
    /// Expected.
    pub expected: String,
    /// Got.
    pub got: String,
}

/// Compares a replay with the expectations; empty when everything given matches.
pub fn compare(expect: &Expect, got: &Replay) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut diff = |item: String, expected: String, actual: String| {
        if expected != actual {
            out.push(Mismatch {
                item,
                expected,
                got: actual,
            });
        }
    };
    if let Some(e) = &expect.result {
        diff("result".into(), e.clone(), got.result.clone());
    }
    let find = |hook: HookName, rcpt: Option<&str>| {
        got.steps.iter().find(|s| {
            s.hook == hook.as_str()
                && match (rcpt, &s.rcpt) {
                    (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                    (None, _) => true,
                    _ => false,
                }
        })
    };
    let mut checks: Vec<(HookName, Option<&str>, &ExpectStep)> = Vec::new();
    for (hook, step) in [
        (HookName::Connect, &expect.connect),
        (HookName::Ehlo, &expect.ehlo),
        (HookName::MailFrom, &expect.mail_from),
    ] {
        if let Some(s) = step {
            checks.push((hook, None, s));
        }
    }
    for (a, s) in &expect.rcpt {
        checks.push((HookName::Rcpt, Some(a), s));
    }
    if let Some(s) = &expect.data {
        checks.push((HookName::Data, None, s));
    }
    for (hook, rcpt, e) in checks {
        let name = match rcpt {
            Some(a) => format!("rcpt {a}"),
            None => hook.as_str().to_string(),
        };
        let Some(s) = find(hook, rcpt) else {
            diff(
                name,
                "a call".into(),
                "not run (no plugin on this hook, or the transaction ended before it)".into(),
            );
            continue;
        };
        if let Some(v) = &e.verdict {
            diff(format!("{name} verdict"), v.clone(), s.verdict.clone());
        }
        if let Some(r) = &e.reply {
            let actual = s.reply.clone().unwrap_or_default();
            if !actual.starts_with(r.as_str()) {
                diff(format!("{name} reply"), r.clone(), actual);
            }
        }
        if let Some(r) = &e.reason {
            diff(
                format!("{name} reason"),
                r.clone(),
                s.reason.clone().unwrap_or_default(),
            );
        }
        if let Some(m) = &e.modifications {
            diff(
                format!("{name} modifications"),
                lines(m),
                lines(&s.modifications),
            );
        }
    }
    if let Some(routes) = &expect.deliver {
        let actual: BTreeMap<String, String> = find(HookName::Deliver, None)
            .map(|s| s.routes.iter().cloned().collect())
            .unwrap_or_default();
        let want: BTreeMap<String, String> =
            routes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let show = |m: &BTreeMap<String, String>| {
            lines(
                &m.iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect::<Vec<_>>(),
            )
        };
        diff("deliver routes".into(), show(&want), show(&actual));
    }
    if let Some(s) = &expect.sender {
        diff("sender".into(), s.clone(), got.sender.clone());
    }
    if let Some(r) = &expect.recipients {
        diff("recipients".into(), lines(r), lines(&got.recipients));
    }
    out
}

/// A list as one value per line (the diff printer shows them line by line).
fn lines(items: &[String]) -> String {
    items.join("\n")
}

impl Replay {
    /// What the chain decided, one block per hook, with per-plugin timings.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            let subject = s
                .rcpt
                .as_deref()
                .map(|a| format!(" {a}"))
                .unwrap_or_default();
            let timings: Vec<String> = s
                .timings
                .iter()
                .map(|(p, us)| format!("{p} {us} µs"))
                .collect();
            out.push_str(&format!(
                "{}{subject}: {} [{}]\n",
                s.hook,
                s.verdict,
                timings.join(", ")
            ));
            for extra in s.reply.iter().chain(&s.reason).chain(&s.modifications) {
                out.push_str(&format!("    {extra}\n"));
            }
            for (rcpt, route) in &s.routes {
                out.push_str(&format!("    {rcpt} -> {route}\n"));
            }
        }
        out.push_str(&format!(
            "result: {} (sender <{}>, recipients {})\n",
            self.result,
            self.sender,
            self.recipients.join(", ")
        ));
        out
    }
}

impl Mismatch {
    /// The difference as `-` (expected) and `+` (got) lines under the item's name.
    pub fn to_text(&self) -> String {
        let mut out = format!("  {}:\n", self.item);
        let exp: Vec<&str> = self.expected.lines().collect();
        let got: Vec<&str> = self.got.lines().collect();
        let same_items = exp.iter().all(|l| got.contains(l)) && got.iter().all(|l| exp.contains(l));
        if same_items && !exp.is_empty() {
            // Only the order (or a repetition) differs: show both lists whole.
            out.push_str("    (the same items in another order)\n");
            out.extend(exp.iter().map(|l| format!("    - {l}\n")));
            out.extend(got.iter().map(|l| format!("    + {l}\n")));
            return out;
        }
        if exp.is_empty() {
            out.push_str("    - (nothing)\n");
        }
        for l in &exp {
            let mark = if got.contains(l) { ' ' } else { '-' };
            out.push_str(&format!("    {mark} {l}\n"));
        }
        for l in got.iter().filter(|l| !exp.contains(l)) {
            out.push_str(&format!("    + {l}\n"));
        }
        if got.is_empty() {
            out.push_str("    + (nothing)\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_become_crlf_once() {
        assert_eq!(crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn a_list_diff_shows_what_is_missing_and_what_is_extra() {
        let m = Mismatch {
            item: "data modifications".into(),
            expected: "add-header X-A: 1\nadd-header X-B: 2".into(),
            got: "add-header X-A: 1\nadd-header X-B: 3".into(),
        };
        let t = m.to_text();
        assert!(t.contains("- add-header X-B: 2"), "{t}");
        assert!(t.contains("+ add-header X-B: 3"), "{t}");
        assert!(t.contains("  add-header X-A: 1"), "{t}");
    }
}
