//! DKIM signing of mail the server sends for its own users: `[[dkim.sign]]`
//! keys (RSA of 2048 bits or more, or Ed25519; PEM, PKCS#8 or PKCS#1),
//! read when the config is resolved (so `check-config`, start and SIGHUP
//! all report a bad key with its file and config key), relaxed/relaxed
//! canonicalization, one signature per key of the author's domain.
//!
//! When: at acceptance, after the data plugins, before the message is
//! queued. The stored message is the signed one, so it is signed exactly
//! once however many attempts and destinations it takes (the relay path
//! shares one stored body between destinations and never copies it to
//! add a header), the signature covers what the plugins left, and a key
//! rotated while mail waits in the queue does not change mail already
//! accepted. The cost: a copy for a local recipient carries the signature
//! too (harmless), and mail queued for longer than a retired key stays
//! published would fail verification (keep old selectors published for
//! `queue.max_age`).

use std::path::PathBuf;
use std::sync::Arc;

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use crate::config::value::Domain;

/// Header fields signed when `headers` is not given: what a reader sees
/// and what a replay would want to change (RFC 6376 §5.4.1).
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// `[dkim]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDkim {
    /// `[[dkim.sign]]`: one signing key each.
    #[serde(default)]
    pub sign: Vec<RawSignKey>,
}

/// `[[dkim.sign]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignKey {
    /// The signing domain (`d=`): mail whose From is this domain or below.
    pub domain: Option<Domain>,
    /// The selector (`s=`): the key is published at `S._domainkey.DOMAIN`.
    pub selector: Option<String>,
    /// The private key file (PEM).
    pub key: Option<PathBuf>,
    /// Header fields to sign (must include From).
    pub headers: Option<Vec<String>>,
}

/// One loaded key.
#[derive(Clone)]
pub struct SignKey {
    /// `d=`
    pub domain: String,
    /// `s=`
    pub selector: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// `rsa-sha256` or `ed25519-sha256`.
    pub algorithm: &'static str,
    signer: Arc<DkimSigner<DkimKey, Done>>,
}

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("path", &self.path)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Every `[[dkim.sign]]` key, resolved.
#[derive(Debug, Clone, Default)]
pub struct Signer {
    keys: Vec<SignKey>,
    /// `[arc]`'s sealer (one of these keys), reloaded with them.
    arc: Option<Arc<super::arc::Sealer>>,
}

/// What signing one message did.
#[derive(Debug, Default)]
pub struct Signed {
    /// The DKIM-Signature fields to add (below our Received).
    pub header: Vec<u8>,
    /// `domain/selector` of each signature, for the log.
    pub signatures: Vec<String>,
}

impl Signer {
    /// The loaded keys.
    pub fn keys(&self) -> &[SignKey] {
        &self.keys
    }

    /// The ARC sealer, when `[arc]` is configured.
    pub fn arc(&self) -> Option<&super::arc::Sealer> {
        self.arc.as_deref()
    }

    /// Sets the ARC sealer (`arc::resolve` picks its key among these).
    pub fn set_arc(&mut self, sealer: Option<Arc<super::arc::Sealer>>) {
        self.arc = sealer;
    }

    /// Signs with every key of the most specific configured domain that is
    /// the From domain or a parent of it (so `d=` aligns with From for
    /// DMARC). None when no key applies or the message has no From.
    pub fn sign(&self, message: &[u8]) -> Option<Signed> {
        if self.keys.is_empty() {
            return None;
        }
        let from = from_domain(message)?;
        let domain = self
            .keys
            .iter()
            .map(|k| k.domain.as_str())
            .filter(|d| from == *d || from.ends_with(&format!(".{d}")))
            .max_by_key(|d| d.len())?;
        let mut signed = Signed::default();
        for k in self.keys.iter().filter(|k| k.domain == domain) {
            match k.signer.sign(message) {
                Ok(sig) => {
                    signed
                        .header
                        .extend_from_slice(tidy_signature_field(sig.to_header()).as_bytes());
                    signed
                        .signatures
                        .push(format!("{}/{}", k.domain, k.selector));
                    crate::metrics::dkim_signed(&k.domain);
                }
                Err(e) => {
                    tracing::warn!(domain = %k.domain, selector = %k.selector, error = %e, "cannot DKIM-sign the message");
                }
            }
        }
        (!signed.signatures.is_empty()).then_some(signed)
    }
}

/// mail-auth folds a `b=` value that fills its last line exactly before
/// the closing `;` (`b=...\r\n\t;`). Verifiers delete the `b=` value but
/// not all of them the white space around it (dkimpy keeps it, so its
/// relaxed form becomes `b= ;` against the signed `b=;` and every such
/// RSA signature fails there). Removing that folding is removing part of
/// the `b=` tag's surrounding white space, which the signature never
/// covers (RFC 6376 §3.7), so the field verifies everywhere.
fn tidy_signature_field(mut field: String) -> String {
    let Some(before) = field.strip_suffix(";\r\n") else {
        return field;
    };
    let kept = before.trim_end_matches(['\r', '\n', '\t', ' ']).len();
    if kept < before.len() {
        field.replace_range(kept..before.len(), "");
    }
    field
}

/// The domain of the first From address, lower-cased.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let addr = parsed.from()?.first()?.address()?;
    Some(
        addr.rsplit_once('@')?
            .1
            .trim_end_matches('>')
            .to_lowercase(),
    )
}

/// Resolves `[dkim]`, reading every key; errors are (key, message).
pub fn resolve(raw: RawDkim) -> Result<Signer, (String, String)> {
    let mut keys = Vec::new();
    for (i, k) in raw.sign.into_iter().enumerate() {
        let at = |field: &str| format!("dkim.sign[{i}].{field}");
        let domain = k
            .domain
            .ok_or_else(|| (at("domain"), "missing: the signing domain (d=)".to_string()))?
            .0;
        let selector = k.selector.ok_or_else(|| {
            (
                at("selector"),
                "missing: the selector (s=) the key is published under".to_string(),
            )
        })?;
        let valid_selector = !selector.is_empty()
            && selector.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid_selector {
            return Err((
                at("selector"),
                format!(
                    "{selector:?} is not a selector: expected DNS labels (letters, digits, '-', '_', separated by dots)"
                ),
            ));
        }
        if keys
            .iter()
            .any(|o: &SignKey| o.domain == domain && o.selector == selector)
        {
            return Err((
                at("selector"),
                format!("{domain} has selector {selector:?} twice"),
            ));
        }
        let path = k.key.ok_or_else(|| {
            (
                at("key"),
                "missing: the private key file (PEM; `wasmtp dkim keygen` writes one)".to_string(),
            )
        })?;
        let headers = k
            .headers
            .unwrap_or_else(|| DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect());
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            return Err((
                at("headers"),
                "must include From (RFC 6376 §5.4)".to_string(),
            ));
        }
        if let Some(bad) = headers
            .iter()
            .find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            return Err((at("headers"), format!("{bad:?} is not a header field name")));
        }
        let (key, algorithm) = load_key(&path).map_err(|m| (at("key"), m))?;
        let signer = DkimSigner::from_key(key)
            .domain(domain.clone())
            .selector(selector.clone())
            .headers(headers)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        keys.push(SignKey {
            domain,
            selector,
            path,
            algorithm,
            signer: Arc::new(signer),
        });
    }
    Ok(Signer { keys, arc: None })
}

/// Reads a PEM private key: PKCS#8 (Ed25519 or RSA) or PKCS#1 (RSA).
pub(super) fn load_key(path: &std::path::Path) -> Result<(DkimKey, &'static str), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{}: no PEM private key in it ({e}); expected `-----BEGIN PRIVATE KEY-----` or `-----BEGIN RSA PRIVATE KEY-----`",
            path.display()
        )
    })?;
    let unusable = |e: &dyn std::fmt::Display| {
        format!(
            "{}: not a usable DKIM key: expected RSA of 2048 bits or more, or Ed25519 ({e})",
            path.display()
        )
    };
    match der {
        PrivateKeyDer::Pkcs8(p8) => {
            if let Ok(k) = Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der()) {
                return Ok((DkimKey::Ed25519(k), "ed25519-sha256"));
            }
            RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(p8))
                .map(|k| (DkimKey::Rsa(k), "rsa-sha256"))
                .map_err(|e| unusable(&e))
        }
        PrivateKeyDer::Pkcs1(p1) => RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(p1))
            .map(|k| (DkimKey::Rsa(k), "rsa-sha256"))
            .map_err(|e| unusable(&e)),
        _ => Err(unusable(&"an EC (SEC1) key; DKIM uses RSA or Ed25519")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_before_the_closing_semicolon_is_removed() {
        let table = [
            (
                "DKIM-Signature: a=1; b=QUJD\r\n\t;\r\n",
                "DKIM-Signature: a=1; b=QUJD;\r\n",
            ),
            (
                "DKIM-Signature: a=1; b=QUJD;\r\n",
                "DKIM-Signature: a=1; b=QUJD;\r\n",
            ),
            (
                "DKIM-Signature: a=1;\r\n\tb=QU\r\n\tJD \r\n ;\r\n",
                "DKIM-Signature: a=1;\r\n\tb=QU\r\n\tJD;\r\n",
            ),
        ];
        for (field, want) in table {
            assert_eq!(tidy_signature_field(field.to_string()), want);
        }
    }
}
