//! The session's mail-authentication steps around the data plugins:
//! `authenticate` (before them: our Authentication-Results, after removing
//! forged ones), then after them `dkim_sign` (our own users' mail) or
//! `arc_seal` (mail from outside). The work itself is in `crate::mailauth`.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::{Session, Transaction};
use crate::mailauth::{Identity, Outcome};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// The message with forged `Authentication-Results` (our authserv-id)
    /// removed and ours added below our Received field. An authenticated
    /// client gets `auth=pass` instead of checks. Never refuses: results
    /// are data, kept in `tx.auth` for the data hook. The outcome goes on
    /// to `arc_seal`.
    pub(super) async fn authenticate(
        &mut self,
        tx: &mut Transaction,
        data: Vec<u8>,
    ) -> (Vec<u8>, Option<Outcome>) {
        let verifier = &self.ctx.mailauth.verifier;
        let settings = verifier.settings();
        if !settings.enable {
            return (data, None);
        }
        let outcome = match &self.user {
            Some(user) => verifier.authenticated(&user.name),
            None => {
                let mail_from = tx.sender.as_ref().map(|a| a.to_string());
                let id = Identity {
                    ip: self.info.peer.ip(),
                    helo: self.helo.as_ref().map_or("", |h| h.name.as_str()),
                    mail_from: mail_from.as_deref().unwrap_or(""),
                };
                verifier.verify(&id, &data).await
            }
        };
        // Our Received field, our results, then the rest without forged
        // results (see `header::below_first_field`).
        let at = crate::mailauth::header::below_first_field(&data);
        let mut out = Vec::with_capacity(data.len() + outcome.header.len());
        out.extend_from_slice(&data[..at]);
        out.extend_from_slice(outcome.header.as_bytes());
        let forged = crate::mailauth::header::append_without_ours(
            &mut out,
            &data[at..],
            &settings.authserv_id,
        );
        info!(
            results = %outcome.summary_text(),
            forged_removed = forged,
            "message authentication"
        );
        tx.auth = Some(outcome.results.clone());
        (out, Some(outcome))
    }

    /// Mail from outside (neither authenticated nor from a trusted
    /// network) gets an ARC set when `[arc]` is configured: our results
    /// from arrival, a signature over the final message and the seal (see
    /// `mailauth::arc` for why at acceptance).
    pub(super) fn arc_seal(&self, data: Vec<u8>, verified: Option<&Outcome>) -> Vec<u8> {
        if self.user.is_some() || self.settings().relay.trusts(self.info.peer.ip()) {
            return data;
        }
        let signer = self.ctx.mailauth.signer();
        let Some(sealer) = signer.arc() else {
            return data;
        };
        let Some((outcome, chain)) = verified.and_then(|o| Some((o, o.arc.as_ref()?))) else {
            debug!("not ARC sealed: the message was not verified");
            return data;
        };
        match sealer.seal(&data, &outcome.header, chain) {
            Ok(sealed) => {
                crate::metrics::arc_sealed(sealed.cv);
                info!(
                    instance = sealed.instance,
                    cv = sealed.cv,
                    domain = %sealer.domain,
                    selector = %sealer.selector,
                    "ARC sealed"
                );
                crate::mailauth::header::insert_below_first_field(data, &sealed.header)
            }
            Err((why, detail)) => {
                crate::metrics::arc_not_sealed(why.as_str());
                warn!(reason = why.as_str(), detail = %detail, "not ARC sealed");
                data
            }
        }
    }

    /// Signs mail from authenticated clients and trusted networks with the
    /// `[[dkim.sign]]` keys of its From domain (see `mailauth::sign` for
    /// why at acceptance).
    pub(super) fn dkim_sign(&self, data: Vec<u8>) -> Vec<u8> {
        let trusted = self.settings().relay.trusts(self.info.peer.ip());
        if self.user.is_none() && !trusted {
            return data;
        }
        let signer = self.ctx.mailauth.signer();
        match signer.sign(&data) {
            Some(signed) => {
                info!(signatures = %signed.signatures.join(" "), "DKIM signed");
                crate::mailauth::header::insert_below_first_field(data, &signed.header)
            }
            None => {
                debug!("not DKIM signed: no [[dkim.sign]] key for the From domain");
                data
            }
        }
    }
}
