//! MAIL and RCPT: the envelope of a transaction.

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use super::hooks::{Disposition, params_list};
use crate::config::HookName;
use crate::delivery::local::{Resolution, resolve};
use crate::plugin::TxView;
use crate::plugin::bindings::wasmtp::plugin::types as wit;
use crate::plugin::run::{Decision, Modification};
use crate::queue::Route;
use crate::smtp::command::Body;
use crate::smtp::{MailParams, Path, RcptParams, Reply};

/// An accepted recipient.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// Address as given (postmaster gets our domain).
    pub address: String,
    /// Local mailbox (empty for a relayed recipient).
    pub mailbox: String,
    /// Local delivery or relay.
    pub route: Route,
    /// RCPT parameters kept with the recipient (RFC 3461 NOTIFY, ORCPT).
    pub params: RcptParams,
}

/// The open mail transaction.
#[derive(Debug, Default)]
pub struct Transaction {
    /// Reverse path.
    pub sender: Option<crate::smtp::Address>,
    /// MAIL parameters.
    pub params: MailParams,
    /// Accepted recipients.
    pub recipients: Vec<Recipient>,
    /// The queue id, chosen when the message starts (it is in our Received
    /// header, the message's first line).
    pub id: Option<String>,
    /// The message being received by BDAT, once the first chunk came.
    pub body: Option<super::body::BodyReader>,
    /// Modifications plugins asked for so far (applied after DATA).
    pub mods: Vec<Modification>,
    /// What happens to the message once accepted.
    pub disposition: Disposition,
    /// What mail authentication found (set after DATA, for the data hook).
    pub auth: Option<crate::mailauth::Results>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn mail(&mut self, path: Path, mut params: MailParams) -> Reply {
        let Some(helo) = &self.helo else {
            return Reply::bad_sequence("Send HELO/EHLO first");
        };
        if self.tx.is_some() {
            return Reply::bad_sequence("Nested MAIL command");
        }
        if !helo.esmtp && params != MailParams::default() {
            return Reply::unknown_parameter("(ESMTP parameters need EHLO)");
        }
        if params.body == Some(Body::BinaryMime) {
            return Reply::unknown_parameter("BODY=BINARYMIME");
        }
        let max = self.settings().limits.max_message_size;
        if params.size.is_some_and(|s| s > max) {
            return Reply::too_big(max);
        }
        let sender = match path {
            Path::Mailbox(a) => {
                if a.is_utf8() && !params.smtputf8 {
                    return Reply::utf8_needs_smtputf8();
                }
                Some(a)
            }
            _ => None,
        };
        if let Some(refused) = self.mail_policy(sender.as_ref(), &mut params.auth) {
            return refused;
        }
        let mut tx = Transaction {
            sender,
            params,
            ..Default::default()
        };
        let mut reply = Reply::sender_ok();
        if self.plugins.wants(HookName::MailFrom) {
            let conn = self.conn_record();
            let sender = tx
                .sender
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let (decision, mods) = self
                .plugins
                .mail_from(&conn, &sender, &params_list(&tx.params))
                .await;
            if let Some(r) = self.refusal(&decision) {
                self.plugins.end_tx();
                return r;
            }
            tx.mods = mods;
            match decision {
                Decision::Accept(Some(r)) => reply = r,
                Decision::Discard => tx.disposition = Disposition::Discard,
                Decision::Quarantine(reason) => tx.disposition = Disposition::Quarantine(reason),
                _ => {}
            }
        }
        self.plugins.begin_tx();
        self.tx = Some(tx);
        reply
    }

    pub(super) async fn rcpt(&mut self, path: Path, params: RcptParams) -> Reply {
        let settings = self.ctx.settings.clone();
        let may_relay = self.may_relay();
        let esmtp = self.helo.as_ref().is_some_and(|h| h.esmtp);
        let Some(tx) = &mut self.tx else {
            return Reply::bad_sequence("Need MAIL before RCPT");
        };
        if tx.body.is_some() {
            return Reply::bad_sequence("RCPT not allowed during BDAT transfer");
        }
        if !esmtp && params != RcptParams::default() {
            return Reply::unknown_parameter("(ESMTP parameters need EHLO)");
        }
        if tx.recipients.len() >= settings.limits.max_recipients {
            return Reply::too_many_recipients();
        }
        let address = match &path {
            Path::Mailbox(a) if a.is_utf8() && !tx.params.smtputf8 => {
                return Reply::utf8_needs_smtputf8();
            }
            Path::Mailbox(a) => a.to_string(),
            _ => format!("postmaster@{}", settings.hostname),
        };
        let (mailbox, route) = match resolve(&settings.local, &path) {
            Resolution::Local(mailbox) => (mailbox, Route::Local),
            Resolution::NotLocal if may_relay => (String::new(), Route::Remote),
            Resolution::NotLocal => return Reply::relay_denied(&address),
            Resolution::UnknownUser => return Reply::no_such_user(&address),
        };
        self.rcpt_hook(Recipient {
            address,
            mailbox,
            route,
            params,
        })
        .await
    }

    /// Runs the rcpt hook for a recipient the core accepts, then adds it.
    async fn rcpt_hook(&mut self, rcpt: Recipient) -> Reply {
        let mut reply = Reply::recipient_ok();
        if self.plugins.wants(HookName::Rcpt) {
            let conn = self.conn_record();
            let env = Self::envelope_record(self.tx.as_ref().expect("checked by rcpt"));
            let r = wit::Recipient {
                address: rcpt.address.clone(),
                params: Vec::new(),
            };
            let (decision, mods) = self
                .plugins
                .rcpt(
                    TxView {
                        conn: &conn,
                        env: &env,
                    },
                    &r,
                )
                .await;
            if let Some(r) = self.refusal(&decision) {
                return r;
            }
            let tx = self.tx.as_mut().expect("checked by rcpt");
            tx.mods.extend(mods);
            match decision {
                Decision::Accept(Some(r)) => reply = r,
                Decision::Discard => return reply,
                _ => {}
            }
        }
        let tx = self.tx.as_mut().expect("checked by rcpt");
        if !tx
            .recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&rcpt.address))
        {
            tx.recipients.push(rcpt);
        }
        reply
    }
}
