//! ARC sealing (RFC 8617) of mail received from outside: an
//! `ARC-Authentication-Results` with the results we computed when the
//! message arrived, an `ARC-Message-Signature` over the message as it
//! leaves (after the data plugins changed it) and an `ARC-Seal` over the
//! chain, numbered after any sets already there, with `cv=` from the
//! verification of that chain. The signatures are mail-auth's.
//!
//! Keys: `[arc]` names one `[[dkim.sign]]` key by domain and selector.
//! ARC keys are published exactly like DKIM keys (`S._domainkey.D`, RFC
//! 8617 §4.1.2 and §4.1.3), so one key file and one TXT record serve both,
//! `wasmtp dkim keygen` makes them, and SIGHUP rotates them together.
//!
//! When: at acceptance, right after the data plugins (and where DKIM
//! signing would be), before the message is queued: that is where the
//! bytes every destination gets are final, so the set is made once per
//! message, not per delivery attempt, and covers what the plugins changed.

use std::sync::Arc;

use mail_auth::arc::{ArcSealer, Set};
use mail_auth::common::crypto::DkimKey;
use mail_auth::common::headers::{Header, HeaderWriter};
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult};
use serde::Deserialize;

use super::sign::{DEFAULT_HEADERS, Signer};
use crate::config::value::Domain;

/// RFC 8617 §4.2.1: instance numbers run from 1 to 50.
pub const MAX_SETS: usize = 50;

/// `[arc]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawArc {
    /// The sealing domain (`d=`); sealing is on when it is set.
    pub domain: Option<Domain>,
    /// The selector (`s=`): with `domain`, names a `[[dkim.sign]]` key.
    pub selector: Option<String>,
    /// Header fields the ARC-Message-Signature signs (must include From).
    pub headers: Option<Vec<String>>,
}

/// The sealing key and what it signs.
pub struct Sealer {
    /// `d=`
    pub domain: String,
    /// `s=`
    pub selector: String,
    sealer: ArcSealer<DkimKey, Done>,
    /// The same key signing From once more (as absent: no second From
    /// may be added), for when `sealer`'s AMS comes out folded before its
    /// closing `;` (see `folded_before_close`).
    oversigned: ArcSealer<DkimKey, Done>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

/// One ARC set made for a message.
#[derive(Debug)]
pub struct Sealed {
    /// `ARC-Seal`, `ARC-Message-Signature`, `ARC-Authentication-Results`.
    pub header: Vec<u8>,
    /// `i=`
    pub instance: u32,
    /// `cv=`: `none`, `pass` or `fail`.
    pub cv: &'static str,
}

/// Why a message was not sealed (a log field and a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSealed {
    /// ARC fields that do not parse or do not come in whole sets.
    Malformed,
    /// A set with `cv=fail` is there already: RFC 8617 §5.1.2 says stop.
    ChainFailed,
    /// 50 sets already.
    ChainTooLong,
    /// The chain could not be judged (DNS trouble, `authentication.timeout`).
    NotVerified,
    /// mail-auth refused (no header to sign, a key error).
    Error,
}

impl NotSealed {
    /// The word in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NotSealed::Malformed => "malformed_chain",
            NotSealed::ChainFailed => "chain_failed",
            NotSealed::ChainTooLong => "chain_too_long",
            NotSealed::NotVerified => "chain_not_verified",
            NotSealed::Error => "error",
        }
    }
}

impl Sealer {
    /// Seals `message` (its final bytes). `results` is our
    /// `Authentication-Results` field as added on arrival, `chain` what the
    /// verification of the ARC chain found then.
    pub fn seal(
        &self,
        message: &[u8],
        results: &str,
        chain: &DkimResult,
    ) -> Result<Sealed, (NotSealed, String)> {
        let parsed = AuthenticatedMessage::parse(message).ok_or_else(|| {
            (
                NotSealed::Error,
                "the message has no header block".to_string(),
            )
        })?;
        let n = parsed.ams_headers.len();
        if parsed.has_arc_errors || n != parsed.as_headers.len() || n != parsed.aar_headers.len() {
            return Err((
                NotSealed::Malformed,
                format!(
                    "{} ARC-Seal, {n} ARC-Message-Signature, {} ARC-Authentication-Results fields, not whole sets",
                    parsed.as_headers.len(),
                    parsed.aar_headers.len()
                ),
            ));
        }
        if n >= MAX_SETS {
            return Err((
                NotSealed::ChainTooLong,
                format!("{n} ARC sets already (RFC 8617 allows {MAX_SETS})"),
            ));
        }
        if n > 0 && matches!(chain, DkimResult::TempError(_)) {
            return Err((
                NotSealed::NotVerified,
                "the ARC chain could not be verified on arrival (temperror)".to_string(),
            ));
        }
        // The sets as they are in the final message, with the verdict the
        // chain had on arrival (the data plugins may have changed what the
        // last AMS signed; that is what this seal vouches for).
        let mut output = ArcOutput::default().with_result(chain.clone());
        for ((seal, sig), res) in parsed
            .as_headers
            .iter()
            .zip(&parsed.ams_headers)
            .zip(&parsed.aar_headers)
        {
            output = output.with_set(Set {
                signature: Header::new(sig.name, sig.value, &sig.header),
                seal: Header::new(seal.name, seal.value, &seal.header),
                results: Header::new(res.name, res.value, &res.header),
            });
        }
        if !output.can_be_sealed() {
            return Err((
                NotSealed::ChainFailed,
                "the last ARC-Seal already says cv=fail".to_string(),
            ));
        }
        let (flat, folded) = results_text(results);
        let ar = AuthenticationResults::new(&flat);
        let mut set = self
            .sealer
            .seal(&parsed, &ar, &output)
            .map_err(|e| (NotSealed::Error, e.to_string()))?;
        if folded_before_close(&set.to_header()) {
            set = self
                .oversigned
                .seal(&parsed, &ar, &output)
                .map_err(|e| (NotSealed::Error, e.to_string()))?;
        }
        let cv = match (n, chain) {
            (0, _) => "none",
            (_, DkimResult::Pass) => "pass",
            _ => "fail",
        };
        // The AAR's value went to mail-auth on one line (it writes it as
        // it is); fold it at the result boundaries, which the relaxed
        // canonicalization the seal was computed over does not see.
        let header = set.to_header().replacen(&flat, &folded, 1);
        Ok(Sealed {
            header: header.into_bytes(),
            instance: set.seal.i,
            cv,
        })
    }
}

/// Whether mail-auth folded the AMS right before its closing `;` (its `b=`
/// filled the last line exactly). The seal covers the AMS as written, so
/// that folding cannot be removed afterwards (as `sign` does for DKIM), and
/// dkimpy, which keeps the white space around `b=` when it checks the
/// AMS, would fail it. Signing one more name moves the line breaks.
/// `set` is the whole set as mail-auth writes it: ARC-Seal,
/// ARC-Message-Signature, ARC-Authentication-Results.
fn folded_before_close(set: &str) -> bool {
    set.contains("\r\n\t;\r\nARC-Authentication-Results:")
}

/// Our `Authentication-Results` field as the value of an AAR: on one line
/// with single spaces (what mail-auth signs as given), and folded between
/// results (what we write).
fn results_text(field: &str) -> (String, String) {
    let value = field
        .split_once(':')
        .map_or(field, |(_, v)| v)
        .trim_matches([' ', '\t', '\r', '\n']);
    let parts: Vec<String> = value
        .split(";\r\n\t")
        .map(|p| p.split_ascii_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect();
    (parts.join("; "), parts.join(";\r\n\t"))
}

/// Resolves `[arc]` against the resolved `[[dkim.sign]]` keys and
/// `[authentication]`; errors are (key, message).
pub fn resolve(
    raw: RawArc,
    dkim: &Signer,
    auth: &super::AuthSettings,
) -> Result<Option<Arc<Sealer>>, (String, String)> {
    let (domain, selector) = match (raw.domain, raw.selector) {
        (None, None) if raw.headers.is_none() => return Ok(None),
        (Some(d), Some(s)) => (d.0, s),
        (None, _) => {
            return Err((
                "arc.domain".into(),
                "missing: the sealing domain (d=), which with `selector` names a [[dkim.sign]] key"
                    .into(),
            ));
        }
        (Some(_), None) => {
            return Err((
                "arc.selector".into(),
                "missing: the selector (s=) of the [[dkim.sign]] key to seal with".into(),
            ));
        }
    };
    if !(auth.enable && auth.arc) {
        return Err((
            "arc.domain".into(),
            "ARC sealing needs the arriving chain verified: set `authentication.enable` and `authentication.arc` to true".into(),
        ));
    }
    let key = dkim
        .keys()
        .iter()
        .find(|k| k.domain == domain && k.selector == selector)
        .ok_or_else(|| {
            (
                "arc.selector".to_string(),
                format!(
                    "no [[dkim.sign]] key with domain = {domain:?} and selector = {selector:?}: ARC seals with one of those keys"
                ),
            )
        })?;
    if key.algorithm != "rsa-sha256" {
        return Err((
            "arc.selector".into(),
            format!(
                "{domain}/{selector} is an {} key: ARC seals are rsa-sha256 in practice (dkimpy makes and expects no other); name an RSA key",
                key.algorithm
            ),
        ));
    }
    let mut headers = raw
        .headers
        .unwrap_or_else(|| DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect());
    if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        return Err((
            "arc.headers".into(),
            "must include From (RFC 8617 §4.1.2)".into(),
        ));
    }
    if let Some(bad) = headers.iter().find(|h| {
        h.is_empty()
            || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            || h.to_ascii_lowercase().starts_with("arc-")
    }) {
        return Err((
            "arc.headers".into(),
            format!("{bad:?} is not a header field name an ARC-Message-Signature may sign"),
        ));
    }
    // The author's DKIM signatures are part of what arrived: sign them too.
    if !headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("dkim-signature"))
    {
        headers.push("DKIM-Signature".into());
    }
    let build = |headers: Vec<String>| {
        let (key_material, _) =
            super::sign::load_key(&key.path).map_err(|m| ("arc.selector".to_string(), m))?;
        Ok::<_, (String, String)>(
            ArcSealer::from_key(key_material)
                .domain(domain.clone())
                .selector(selector.clone())
                .headers(headers)
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed),
        )
    };
    let sealer = build(headers.clone())?;
    headers.push("From".into());
    let oversigned = build(headers)?;
    Ok(Some(Arc::new(Sealer {
        domain,
        selector,
        sealer,
        oversigned,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_before_the_ams_close_is_seen() {
        assert!(folded_before_close(
            "ARC-Seal: i=1; b=QUJD;\r\nARC-Message-Signature: i=1; b=QUJD\r\n\t;\r\nARC-Authentication-Results: i=1; x; none\r\n"
        ));
        assert!(!folded_before_close(
            "ARC-Seal: i=1; b=QUJD;\r\nARC-Message-Signature: i=1; b=QU\r\n\tJD;\r\nARC-Authentication-Results: i=1; x; none\r\n"
        ));
    }

    #[test]
    fn results_flat_and_folded() {
        let field = "Authentication-Results: mx.example.org;\r\n\tspf=pass (mx: a  b) smtp.mailfrom=a@b;\r\n\tdkim=none\r\n";
        let (flat, folded) = results_text(field);
        assert_eq!(
            flat,
            "mx.example.org; spf=pass (mx: a b) smtp.mailfrom=a@b; dkim=none"
        );
        assert_eq!(
            folded,
            "mx.example.org;\r\n\tspf=pass (mx: a b) smtp.mailfrom=a@b;\r\n\tdkim=none"
        );
    }
}
