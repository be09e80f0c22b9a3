//! Where the session meets the plugins: the records hooks receive, how a
//! decision becomes a reply, and how modifications and routes change the
//! transaction before it is queued.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::Session;
use super::envelope::{Recipient, Transaction};
use crate::delivery::local::{Resolution, resolve};
use crate::delivery::maildir::is_safe_mailbox;
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
        if self.plugins.wants(crate::config::HookName::Data) {
            let msg = MessageData::new(data);
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
                }];
                info!(%reason, "message quarantined by a plugin");
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
                        warn!(rcpt = %r.address, mailbox = %mb, "deliver hook chose an invalid mailbox; keeping the default");
                        keep.push(r);
                    }
                }
                HookRoute::Discard => {
                    info!(rcpt = %r.address, "recipient discarded by the deliver hook")
                }
                HookRoute::Relay(t) => {
                    // Outbound delivery does not exist yet: the copy waits in the queue.
                    info!(rcpt = %r.address, host = %t.host, "deliver hook routes recipient to a relay");
                    keep.push(Recipient {
                        route: crate::queue::Route::Remote,
                        mailbox: String::new(),
                        ..r
                    });
                }
            }
        }
        tx.recipients = keep;
    }

    /// Applies header, sender and recipient modifications.
    fn apply_mods(&self, tx: &mut Transaction, data: Vec<u8>, mods: Vec<Modification>) -> Vec<u8> {
        if mods.is_empty() {
            return data;
        }
        let mut data = data;
        let mut added: Vec<u8> = Vec::new();
        for m in mods {
            match m {
                Modification::AddHeader(h) => push_header(&mut added, &h.name, &h.value),
                Modification::RemoveHeader(name) => data = remove_header(&data, &name),
                Modification::ChangeHeader(h) => {
                    data = remove_header(&data, &h.name);
                    push_header(&mut added, &h.name, &h.value);
                }
                Modification::SetSender(s) => {
                    if s.is_empty() {
                        tx.sender = None;
                    } else if let Ok((Path::Mailbox(a), "")) = parse_path(&format!("<{s}>")) {
                        tx.sender = Some(a);
                    } else {
                        warn!(sender = %s, "plugin set an invalid sender; ignored");
                    }
                }
                Modification::AddRecipient(a) => match parse_path(&format!("<{a}>")) {
                    Ok((path, "")) => match resolve(&self.ctx.settings.local, &path) {
                        Resolution::Local(mailbox) => {
                            if !tx
                                .recipients
                                .iter()
                                .any(|r| r.address.eq_ignore_ascii_case(&a))
                            {
                                tx.recipients.push(Recipient {
                                    address: a,
                                    mailbox,
                                    route: Route::Local,
                                });
                            }
                        }
                        _ => {
                            warn!(rcpt = %a, "plugin added a recipient that is not local; ignored (no relaying yet)")
                        }
                    },
                    _ => warn!(rcpt = %a, "plugin added an invalid recipient; ignored"),
                },
                Modification::RemoveRecipient(a) => tx
                    .recipients
                    .retain(|r| !r.address.eq_ignore_ascii_case(&a)),
            }
        }
        if added.is_empty() {
            return data;
        }
        added.extend_from_slice(&data);
        added
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if !name_ok {
        warn!(name, "plugin header name is invalid; ignored");
        return;
    }
    let value: String = value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    out.extend_from_slice(format!("{name}: {}\r\n", value.trim()).as_bytes());
}

/// Removes every field named `name` (with its continuation lines) from the
/// header section.
fn remove_header(data: &[u8], name: &str) -> Vec<u8> {
    let hlen = header_len(data);
    let (head, body) = data.split_at(hlen);
    let mut out = Vec::with_capacity(data.len());
    let mut skipping = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if !continuation {
            skipping = line.iter().position(|&b| b == b':').is_some_and(|i| {
                String::from_utf8_lossy(&line[..i])
                    .trim()
                    .eq_ignore_ascii_case(name)
            });
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_folded_headers() {
        let data = b"A: 1\r\nX-Spam: yes\r\n more\r\nB: 2\r\n\r\nX-Spam: body\r\n";
        assert_eq!(
            remove_header(data, "x-spam"),
            b"A: 1\r\nB: 2\r\n\r\nX-Spam: body\r\n"
        );
    }
}
