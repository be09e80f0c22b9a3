//! Mail authentication: what the host computes about a message's origin
//! once, after DATA and before the data plugins run, and the DKIM
//! signature it puts on mail it sends for its own users.
//!
//! - `verify`: SPF (MAIL FROM and HELO identities), DKIM (every signature,
//!   up to `authentication.max_signatures`), ARC and DMARC with alignment,
//!   through the mail-auth crate and the server's `[dns]` resolver, into one
//!   `Authentication-Results` header (RFC 8601) under our authserv-id.
//!   DNS trouble is a `temperror` result, never a reply to the client.
//! - `header`: finding and removing `Authentication-Results` fields that
//!   claim our authserv-id but came from outside.
//! - `sign`: `[[dkim.sign]]` keys (RSA or Ed25519, read at start and on
//!   SIGHUP) and signing at acceptance (see the module for why then).
//! - `arc`: ARC sealing of mail from outside (`[arc]`, one of the
//!   `[[dkim.sign]]` keys), at acceptance after the data plugins.
//! - `keygen`: `wasmtp dkim keygen`.
//! - `cache`: the parsed-record DNS cache.
//!
//! - `results`: the same findings as data, which plugins read through
//!   `message.auth-results` (contract 0.2.0).
//!
//! Policy (reject a DMARC failure, quarantine) is not decided here: that
//! belongs to plugins (the shipped one is `dmarc-policy`).

pub mod arc;
mod cache;
pub mod header;
pub mod keygen;
pub mod results;
pub mod sign;
mod verify;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::value::{AtLeast, Domain, Dur};

pub use results::Results;
pub use verify::{Identity, Outcome, Verifier};

/// `[authentication]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAuthentication {
    /// Verify and add Authentication-Results (default true).
    pub enable: Option<bool>,
    /// The authserv-id in our header (default: `server.hostname`).
    pub authserv_id: Option<Domain>,
    /// Check SPF (MAIL FROM and HELO identities).
    pub spf: Option<bool>,
    /// Verify DKIM signatures.
    pub dkim: Option<bool>,
    /// Verify the ARC chain.
    pub arc: Option<bool>,
    /// Evaluate DMARC (needs spf and dkim).
    pub dmarc: Option<bool>,
    /// The whole verification of one message.
    pub timeout: Option<Dur>,
    /// Parsed DNS records kept per record type.
    pub cache_size: Option<AtLeast<1>>,
    /// DKIM signatures verified per message; more are not looked at.
    pub max_signatures: Option<AtLeast<1>>,
}

/// `[authentication]` resolved.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Verification on.
    pub enable: bool,
    /// Our authserv-id.
    pub authserv_id: String,
    /// Which checks run.
    pub spf: bool,
    /// DKIM verification.
    pub dkim: bool,
    /// ARC verification.
    pub arc: bool,
    /// DMARC evaluation.
    pub dmarc: bool,
    /// Bound on one message's verification.
    pub timeout: Duration,
    /// Entries per record type in the DNS cache.
    pub cache_size: usize,
    /// DKIM signatures verified per message.
    pub max_signatures: usize,
}

/// Resolves `[authentication]`; errors are (key, message).
pub fn resolve(raw: RawAuthentication, hostname: &str) -> Result<AuthSettings, (String, String)> {
    let spf = raw.spf.unwrap_or(true);
    let dkim = raw.dkim.unwrap_or(true);
    let dmarc = raw.dmarc.unwrap_or(true);
    if raw.dmarc == Some(true) && !(spf && dkim) {
        return Err((
            "authentication.dmarc".into(),
            "DMARC needs the SPF and DKIM results: set `spf` and `dkim` to true too, or `dmarc = false`".into(),
        ));
    }
    Ok(AuthSettings {
        enable: raw.enable.unwrap_or(true),
        authserv_id: raw
            .authserv_id
            .map_or_else(|| hostname.to_string(), |d| d.0),
        spf,
        dkim,
        arc: raw.arc.unwrap_or(true),
        dmarc: dmarc && spf && dkim,
        timeout: raw.timeout.map_or(Duration::from_secs(10), |d| d.0),
        cache_size: raw.cache_size.map_or(4096, |n| n.0),
        max_signatures: raw.max_signatures.map_or(10, |n| n.0),
    })
}

/// What sessions share: the verifier and the signing keys, which a reload
/// (SIGHUP) replaces as a whole.
pub struct MailAuth {
    /// Inbound verification.
    pub verifier: Verifier,
    signer: RwLock<Arc<sign::Signer>>,
}

impl MailAuth {
    /// Built from the settings at start.
    pub fn new(
        settings: &crate::config::Settings,
    ) -> Result<MailAuth, hickory_resolver::net::NetError> {
        Ok(MailAuth {
            verifier: Verifier::new(&settings.authentication, &settings.dns)?,
            signer: RwLock::new(Arc::new(settings.dkim.clone())),
        })
    }

    /// The signing keys in force.
    pub fn signer(&self) -> Arc<sign::Signer> {
        self.signer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace_signer(&self, signer: sign::Signer) {
        *self.signer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(signer);
    }
}

/// On every reload signal (SIGHUP): read the config file again and take its
/// `[[dkim.sign]]` keys and `[arc]` sealer. A file or key that fails leaves the keys in force
/// and logs why (file, key, what is wrong).
pub async fn reload_keys(auth: Arc<MailAuth>, source: String, mut reload: watch::Receiver<u64>) {
    while reload.changed().await.is_ok() {
        let src = source.clone();
        let fresh = tokio::task::spawn_blocking(move || {
            if src == crate::config::DEFAULT_CONFIG_NAME {
                crate::config::Settings::embedded_default()
            } else {
                crate::config::Settings::load(std::path::Path::new(&src))
            }
        })
        .await;
        match fresh {
            Ok(Ok(s)) => {
                let n = s.dkim.keys().len();
                let arc = s.dkim.arc().map_or_else(
                    || "none".to_string(),
                    |a| format!("{}/{}", a.domain, a.selector),
                );
                auth.replace_signer(s.dkim);
                info!(keys = n, arc_seal = %arc, "DKIM signing keys reloaded");
            }
            Ok(Err(e)) => {
                warn!(error = %e, "DKIM signing keys not reloaded; keeping the previous ones")
            }
            Err(e) => warn!(error = %e, "DKIM signing keys not reloaded"),
        }
    }
}
