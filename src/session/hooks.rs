//! Where the session meets the plugins: the records hooks receive, how a
//! decision becomes a reply, and how modifications and routes change the
//! transaction before it is queued.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::Session;
use super::envelope::{Recipient, Transaction};
use crate::delivery::local::{Resolution, resolve};
use crate::delivery::maildir::is_safe_mailbox;
use crate::observe::{escape, limit_hit};
use crate::plugin::TxView;
use crate::plugin::bindings::wasmtp::plugin::types as wit;
use crate::plugin::message::{MessageData, header_len};
use crate::plugin::run::Route as HookRoute;
use crate::plugin::run::{Decision, Modification};
use crate::queue::Route;
use crate::smtp::address::parse_path;
use crate::smtp::{MailParams, Path, Reply};

/// The mailbox quarantined messages are delivered to.
pub const QUARANTINE_MAILBOX: &str = "quarantine";

/// What happens to a transaction's message once accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Disposition {
    /// Queue for the recipients.
    #[default]
    Deliver,
    /// Answer 250 and drop it.
    Discard,
    /// Queue it for the quarantine mailbox only.
    Quarantine(String),
}

/// MAIL parameters as (keyword, value) pairs for plugins.
pub fn params_list(p: &MailParams) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    if let Some(s) = p.size {
        out.push(("SIZE".into(), Some(s.to_string())));
    }
    if let Some(b) = p.body {
        let v = match b {
            crate::smtp::command::Body::SevenBit => "7BIT",
            crate::smtp::command::Body::EightBitMime => "8BITMIME",
            crate::smtp::command::Body::BinaryMime => "BINARYMIME",
        };
        out.push(("BODY".into(), Some(v.into())));
    }
    if p.smtputf8 {
        out.push(("SMTPUTF8".into(), None));
    }
    if let Some(a) = &p.auth {
        out.push(("AUTH".into(), Some(a.clone())));
    }
    out
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// The connection as plugins see it.
    pub(super) fn conn_record(&self) -> wit::Connection {
        let ip = |a: std::net::SocketAddr| a.ip().to_canonical().to_string();
        wit::Connection {
            session_id: self.info.id.clone(),
            peer_ip: ip(self.info.peer),
            peer_port: self.info.peer.port(),
            local_ip: ip(self.info.local),
            local_port: self.info.local.port(),
            listener: self.info.listener.clone(),
            tls: self.info.tls.as_ref().map(|t| wit::TlsInfo {
                version: t.version.clone(),
                cipher: t.cipher.clone(),
                sni: t.sni.clone(),
            }),
            authenticated: self.info.auth.clone(),
            helo: self.helo.as_ref().map(|h| h.name.clone()),
        }
    }

    /// The envelope as plugins see it.
    pub(super) fn envelope_record(tx: &Transaction) -> wit::Envelope {
        wit::Envelope {
            sender: tx
                .sender
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            sender_params: params_list(&tx.params),
            recipients: tx
                .recipients
                .iter()
                .map(|r| wit::Recipient {
                    address: r.address.clone(),
                    params: Vec::new(),
                })
                .collect(),
        }
    }

    /// The reply for a refusing decision (None for continue/accept/discard/
    /// quarantine). A disconnect also marks the session for closing.
    pub(super) fn refusal(&mut self, d: &Decision) -> Option<Reply> {
        match d {
            Decision::Reject(r) | Decision::Tempfail(r) => Some(r.clone()),
            Decision::Disconnect(r) => {
                self.closing = true;
                Some(
                    r.clone()
                        .unwrap_or_else(|| Reply::policy_disconnect(&self.ctx.settings.hostname)),
                )
            }
            _ => None,
        }
    }

    /// Runs the data and deliver hooks, then applies modifications and
    /// routes. Err is the reply that ends the transaction without queueing.
    pub(super) async fn data_hooks(
        &mut self,
        mut tx: Transaction,
        data: Vec<u8>,
    ) -> Result<(Transaction, Vec<u8>), Reply> {
        let mut data = data;
        // A quarantine verdict at rcpt holds the whole message, unless the
        // mail-from hook already chose its fate; the data hook may override.
        if let Some(reason) = self.plugins.take_quarantine()
            && tx.disposition == Disposition::Deliver
        {
            tx.disposition = Disposition::Quarantine(reason);
        }
        if self.plugins.wants(crate::config::HookName::Data) {
            let msg = MessageData::with_auth(data, tx.auth.take());
            let conn = self.conn_record();
            let env = Self::envelope_record(&tx);
            let (decision, mods) = self
                .plugins
                .data(
                    TxView {
                        conn: &conn,
                        env: &env,
                    },
                    &msg,
                )
                .await;
            data = Arc::try_unwrap(msg)
                .map(|m| m.raw)
                .unwrap_or_else(|m| m.raw.clone());
            if let Some(r) = self.refusal(&decision) {
                return Err(r);
            }
            tx.mods.extend(mods);
            match decision {
                Decision::Discard => tx.disposition = Disposition::Discard,
                Decision::Quarantine(reason) => tx.disposition = Disposition::Quarantine(reason),
                _ => {}
            }
        }
        let mods = std::mem::take(&mut tx.mods);
        data = self.apply_mods(&mut tx, data, mods);
        match tx.disposition.clone() {
            Disposition::Discard => {
                info!(from = ?tx.sender.as_ref().map(|a| a.to_string()), "message discarded by a plugin");
                return Err(Reply::discarded());
            }
            Disposition::Quarantine(reason) => {
                let original: Vec<String> =
                    tx.recipients.iter().map(|r| r.address.clone()).collect();
                let mut head = format!(
                    "X-Wasmtp-Quarantine: {reason}\r\nX-Wasmtp-Original-Recipients: {}\r\n",
                    original.join(", ")
                )
                .into_bytes();
                head.extend_from_slice(&data);
                data = head;
                tx.recipients = vec![Recipient {
                    address: format!("{QUARANTINE_MAILBOX}@{}", self.ctx.settings.hostname),
                    mailbox: QUARANTINE_MAILBOX.into(),
                    route: Route::Local,
                    params: Default::default(),
                }];
                info!(reason = %escape(&reason), "message quarantined by a plugin");
                return Ok((tx, data));
            }
            Disposition::Deliver => {}
        }
        if self.plugins.wants(crate::config::HookName::Deliver) {
            let conn = self.conn_record();
            let env = Self::envelope_record(&tx);
            let routes = self
                .plugins
                .deliver(TxView {
                    conn: &conn,
                    env: &env,
                })
                .await;
            self.apply_routes(&mut tx, routes);
            if tx.recipients.is_empty() {
                info!("every recipient discarded by the deliver hook");
                return Err(Reply::discarded());
            }
        }
        Ok((tx, data))
    }

    fn apply_routes(&self, tx: &mut Transaction, routes: Vec<HookRoute>) {
        let mut keep = Vec::new();
        for (r, route) in tx.recipients.drain(..).zip(
            routes
                .into_iter()
                .chain(std::iter::repeat(HookRoute::Default)),
        ) {
            match route {
                HookRoute::Default => keep.push(r),
                HookRoute::Local(mb) => {
                    // An address names the mailbox it resolves to locally.
                    let mb = match parse_path(&format!("<{mb}>")) {
                        Ok((path @ Path::Mailbox(_), "")) => {
                            match resolve(&self.ctx.settings.local, &path) {
                                Resolution::Local(m) => m,
                                _ => mb.to_lowercase(),
                            }
                        }
                        _ => mb.to_lowercase(),
                    };
                    if is_safe_mailbox(&mb) {
                        keep.push(Recipient {
                            mailbox: mb,
                            route: Route::Local,
                            ..r
                        });
                    } else {
                        warn!(rcpt = %escape(&r.address), mailbox = %escape(&mb), "deliver hook chose an invalid mailbox; keeping the default");
                        keep.push(r);
                    }
                }
                HookRoute::Discard => {
                    info!(rcpt = %r.address, "recipient discarded by the deliver hook")
                }
                HookRoute::Relay(t) => {
                    info!(rcpt = %escape(&r.address), host = %escape(&t.host), port = t.port.unwrap_or(25), "deliver hook routes recipient to a relay");
                    keep.push(Recipient {
                        route: crate::queue::Route::Relay {
                            host: t.host.clone(),
                            port: t.port.unwrap_or(25),
                        },
                        mailbox: String::new(),
                        ..r
                    });
                }
            }
        }
        tx.recipients = keep;
    }

    /// Applies header, sender and recipient modifications. Header changes
    /// are gathered first and the message is rewritten once, however many
    /// there are.
    fn apply_mods(&self, tx: &mut Transaction, data: Vec<u8>, mods: Vec<Modification>) -> Vec<u8> {
        if mods.is_empty() {
            return data;
        }
        let mut edit = HeaderEdit::default();
        for m in mods {
            match m {
                Modification::AddHeader(h) => edit.add(h.name, h.value),
                Modification::RemoveHeader(name) => edit.remove(&name),
                Modification::ChangeHeader(h) => {
                    edit.remove(&h.name);
                    edit.add(h.name, h.value);
                }
                Modification::SetSender(s) => {
                    if s.is_empty() {
                        tx.sender = None;
                    } else if let Ok((Path::Mailbox(a), "")) = parse_path(&format!("<{s}>")) {
                        tx.sender = Some(a);
                    } else {
                        warn!(sender = %escape(&s), "plugin set an invalid sender; ignored");
                    }
                }
                Modification::AddRecipient(a) => self.add_recipient(tx, a),
                Modification::RemoveRecipient(a) => tx
                    .recipients
                    .retain(|r| !r.address.eq_ignore_ascii_case(&a)),
            }
        }
        edit.apply(data)
    }

    /// A recipient a plugin added: local only, not twice, and counted
    /// against `limits.max_recipients` like the client's own.
    fn add_recipient(&self, tx: &mut Transaction, a: String) {
        let mailbox = match parse_path(&format!("<{a}>")) {
            Ok((path, "")) => match resolve(&self.ctx.settings.local, &path) {
                Resolution::Local(mailbox) => mailbox,
                _ => {
                    warn!(rcpt = %escape(&a), "plugin added a recipient that is not local; ignored (no relaying yet)");
                    return;
                }
            },
            _ => {
                warn!(rcpt = %escape(&a), "plugin added an invalid recipient; ignored");
                return;
            }
        };
        if tx
            .recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&a))
        {
            return;
        }
        let max = self.ctx.settings.limits.max_recipients;
        if tx.recipients.len() >= max {
            limit_hit(
                "limits.max_recipients",
                &format!("a plugin added recipient {a} to a message with {max} already"),
            );
            return;
        }
        tx.recipients.push(Recipient {
            address: a,
            mailbox,
            route: Route::Local,
            params: Default::default(),
        });
    }
}

/// Header modifications gathered over every plugin, in order: the names to
/// remove from the message and the fields to add at its top. A later
/// `remove-header` also removes fields an earlier plugin added.
#[derive(Default)]
struct HeaderEdit {
    removed: HashSet<String>,
    added: Vec<(String, String)>,
}

impl HeaderEdit {
    fn add(&mut self, name: String, value: String) {
        self.added.push((name, value));
    }

    fn remove(&mut self, name: &str) {
        self.removed.insert(name.trim().to_ascii_lowercase());
        self.added
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name.trim()));
    }

    /// The message with the fields removed and added, in one copy.
    fn apply(self, data: Vec<u8>) -> Vec<u8> {
        if self.removed.is_empty() && self.added.is_empty() {
            return data;
        }
        let mut out = Vec::with_capacity(data.len() + 80 * self.added.len());
        for (name, value) in &self.added {
            push_header(&mut out, name, value);
        }
        if self.removed.is_empty() {
            out.extend_from_slice(&data);
        } else {
            remove_headers(&data, &self.removed, &mut out);
        }
        out
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if !name_ok {
        warn!(name = %escape(name), "plugin header name is invalid; ignored");
        return;
    }
    let value: String = value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    out.extend_from_slice(format!("{name}: {}\r\n", value.trim()).as_bytes());
}

/// Copies `data` to `out` without the fields whose lower-case names are in
/// `removed` (with their continuation lines).
fn remove_headers(data: &[u8], removed: &HashSet<String>, out: &mut Vec<u8>) {
    let hlen = header_len(data);
    let (head, body) = data.split_at(hlen);
    let mut skipping = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if !continuation {
            skipping = line.iter().position(|&b| b == b':').is_some_and(|i| {
                let name = String::from_utf8_lossy(&line[..i]);
                removed.contains(&name.trim().to_ascii_lowercase())
            });
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_folded_headers() {
        let data = b"A: 1\r\nX-Spam: yes\r\n more\r\nB: 2\r\n\r\nX-Spam: body\r\n";
        let mut out = Vec::new();
        remove_headers(data, &HashSet::from(["x-spam".to_string()]), &mut out);
        assert_eq!(out, b"A: 1\r\nB: 2\r\n\r\nX-Spam: body\r\n");
    }

    #[test]
    fn header_edits_apply_in_order_in_one_pass() {
        let mut e = HeaderEdit::default();
        e.add("X-A".into(), "1".into());
        e.remove("x-a");
        e.add("X-B".into(), "2".into());
        e.remove("Subject");
        e.add("Subject".into(), "new".into());
        for i in 0..10_000 {
            e.add(format!("X-N{}", i % 3), "v".into());
        }
        let out = e.apply(b"Subject: old\r\nX-A: kept? no\r\n\r\nbody\r\n".to_vec());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("X-B: 2\r\nSubject: new\r\nX-N0: v\r\n"),
            "{text}"
        );
        assert!(!text.contains("old") && !text.contains("X-A"), "{text}");
        assert!(text.ends_with("\r\n\r\nbody\r\n"));
    }
}
