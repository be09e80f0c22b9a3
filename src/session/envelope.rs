//! MAIL and RCPT: the envelope of a transaction.

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::delivery::local::{Resolution, resolve};
use crate::queue::Route;
use crate::smtp::command::Body;
use crate::smtp::{MailParams, Path, Reply};

/// An accepted recipient.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// Address as given (postmaster gets our domain).
    pub address: String,
    /// Local mailbox (empty for a relayed recipient).
    pub mailbox: String,
    /// Local delivery or relay.
    pub route: Route,
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
    /// BDAT chunks received so far, once BDAT started.
    pub chunks: Option<Vec<u8>>,
    /// Set when a BDAT chunk pushed the message over the size limit.
    pub chunks_too_big: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) fn mail(&mut self, path: Path, mut params: MailParams) -> Reply {
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
        self.tx = Some(Transaction {
            sender,
            params,
            ..Default::default()
        });
        Reply::sender_ok()
    }

    pub(super) fn rcpt(&mut self, path: Path) -> Reply {
        let settings = self.ctx.settings.clone();
        let may_relay = self.may_relay();
        let Some(tx) = &mut self.tx else {
            return Reply::bad_sequence("Need MAIL before RCPT");
        };
        if tx.chunks.is_some() {
            return Reply::bad_sequence("RCPT not allowed during BDAT transfer");
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
        if !tx
            .recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&address))
        {
            tx.recipients.push(Recipient {
                address,
                mailbox,
                route,
            });
        }
        Reply::recipient_ok()
    }
}
