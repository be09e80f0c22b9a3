//! Inbound verification: SPF, DKIM, ARC and DMARC for one message, once,
//! into one `Authentication-Results` header.
//!
//! The checks run through mail-auth with the resolver `[dns]` describes
//! (the same servers, port and per-query timeout as routing and plugins)
//! and the parsed-record cache in `cache`. SPF and DKIM/ARC run side by
//! side, DMARC after them (it needs both); the whole is bounded by
//! `authentication.timeout`, and a check that has not finished by then
//! reports `temperror`. Nothing here refuses mail: results are data.

use std::net::IpAddr;
use std::time::Instant;

use hickory_resolver::net::NetError;
use mail_auth::arc::ArcError;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, DnsError, Error, MessageAuthenticator, SpfOutput, SpfResult,
};
use tokio::time::timeout_at;

use super::AuthSettings;
use super::cache::{Caches, cached};
use crate::config::DnsSettings;

/// The SMTP facts a check needs.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// The HELO/EHLO name.
    pub helo: &'a str,
    /// The MAIL FROM address, `""` for the null sender.
    pub mail_from: &'a str,
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The whole header field, `Authentication-Results: ...\r\n`.
    pub header: String,
    /// `method=result` pairs for the log line, e.g. `spf=pass dkim=fail`.
    pub summary: Vec<(&'static str, &'static str)>,
    /// What the ARC chain's verification found (None: not verified), for
    /// the `cv=` of our seal.
    pub arc: Option<DkimResult>,
    /// The same results as data, for plugins.
    pub results: super::Results,
}

impl Outcome {
    /// `spf=pass dkim=none ...` for a log line.
    pub fn summary_text(&self) -> String {
        self.summary
            .iter()
            .map(|(m, r)| format!("{m}={r}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The inbound verifier: resolver, caches and which checks run.
pub struct Verifier {
    auth: MessageAuthenticator,
    caches: Caches,
    settings: AuthSettings,
}

impl Verifier {
    /// A verifier asking the servers in `dns`.
    pub fn new(settings: &AuthSettings, dns: &DnsSettings) -> Result<Verifier, NetError> {
        Ok(Verifier {
            auth: MessageAuthenticator(crate::dns::resolver(dns)?),
            caches: Caches::new(settings.cache_size as u64),
            settings: settings.clone(),
        })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// The header for a message from an authenticated client: no checks,
    /// `auth=pass` with the account name (RFC 8601 §2.7.4).
    pub fn authenticated(&self, user: &str) -> Outcome {
        Outcome {
            header: format!(
                "Authentication-Results: {};\r\n\tauth=pass smtp.auth={}\r\n",
                self.settings.authserv_id,
                pvalue(user)
            ),
            summary: vec![("auth", "pass")],
            arc: None,
            results: super::Results::authenticated(&self.settings.authserv_id, user),
        }
    }

    /// Runs the configured checks on `message` (as received, our Received
    /// field first).
    pub async fn verify(&self, id: &Identity<'_>, message: &[u8]) -> Outcome {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let mut parsed = AuthenticatedMessage::parse(message);
        if let Some(m) = parsed.as_mut()
            && m.dkim_headers.len() > self.settings.max_signatures
        {
            crate::observe::limit_hit(
                "authentication.max_signatures",
                &format!("{} DKIM-Signature fields", m.dkim_headers.len()),
            );
            m.dkim_headers.truncate(self.settings.max_signatures);
        }
        let (spf, dkim_arc) = tokio::join!(
            timeout_at(deadline, self.spf(id)),
            timeout_at(deadline, self.dkim_and_arc(parsed.as_ref())),
        );
        let timed_out = spf.is_err() || dkim_arc.is_err();
        let spf = spf.unwrap_or_else(|_| {
            let t = SpfOutput::new(id.helo.to_string()).with_result(SpfResult::TempError);
            Some((t.clone(), (!id.mail_from.is_empty()).then_some(t)))
        });
        let (dkim, arc) = match dkim_arc.ok() {
            Some(x) => x,
            None => (
                Some(vec![DkimOutput::temp_err(timeout_error())]),
                Some(ArcOutput::default().with_result(DkimResult::TempError(timeout_error()))),
            ),
        };
        let dmarc = match (&parsed, &spf, &dkim) {
            (Some(m), Some((helo, mail_from)), Some(dkim)) if self.settings.dmarc => {
                let (domain, spf) = match mail_from {
                    Some(out) => (domain_of(id.mail_from), out),
                    None => (id.helo, helo),
                };
                let params = DmarcParameters::new(m, dkim, domain, spf);
                let check = self.auth.verify_dmarc(cached!(self.caches, params));
                Some(if timed_out {
                    timed_out_dmarc(m)
                } else {
                    timeout_at(deadline, check)
                        .await
                        .unwrap_or_else(|_| timed_out_dmarc(m))
                })
            }
            _ => None,
        };
        if timed_out || dmarc.as_ref().is_some_and(|d| is_timeout(&d.result())) {
            crate::observe::limit_hit(
                "authentication.timeout",
                &format!("client {} helo {}", id.ip, id.helo),
            );
        }
        let mut outcome = self.render(id, &spf, dkim.as_deref(), arc.as_ref(), dmarc.as_ref());
        outcome.results = super::Results::collect(
            &self.settings.authserv_id,
            &spf,
            dkim.as_deref().filter(|_| self.settings.dkim),
            arc.as_ref(),
            dmarc.as_ref(),
        );
        crate::metrics::auth_verification(started.elapsed());
        for (method, result) in &outcome.summary {
            crate::metrics::auth_result(method, result);
        }
        outcome
    }

    /// SPF for the HELO identity, then MAIL FROM unless it is null (then
    /// the HELO result stands for it, RFC 7208 §2.4).
    async fn spf(&self, id: &Identity<'_>) -> Option<(SpfOutput, Option<SpfOutput>)> {
        if !self.settings.spf {
            return None;
        }
        let host = self.settings.authserv_id.as_str();
        let helo = self
            .auth
            .verify_spf(cached!(
                self.caches,
                SpfParameters::verify_ehlo(id.ip, id.helo, host)
            ))
            .await;
        let mail_from = if id.mail_from.is_empty() {
            None
        } else {
            Some(
                self.auth
                    .verify_spf(cached!(
                        self.caches,
                        SpfParameters::verify_mail_from(id.ip, id.helo, host, id.mail_from)
                    ))
                    .await,
            )
        };
        Some((helo, mail_from))
    }

    async fn dkim_and_arc<'x>(
        &'x self,
        m: Option<&'x AuthenticatedMessage<'x>>,
    ) -> (Option<Vec<DkimOutput<'x>>>, Option<ArcOutput<'x>>) {
        let Some(m) = m else {
            return (None, None);
        };
        let dkim = async {
            if self.settings.dkim {
                Some(self.auth.verify_dkim(cached!(self.caches, m)).await)
            } else {
                None
            }
        };
        let arc = async {
            if self.settings.arc {
                Some(self.auth.verify_arc(cached!(self.caches, m)).await)
            } else {
                None
            }
        };
        tokio::join!(dkim, arc)
    }

    /// The header: spf (MAIL FROM), spf (HELO), dkim per signature, arc,
    /// dmarc, in that order.
    fn render(
        &self,
        id: &Identity<'_>,
        spf: &Option<(SpfOutput, Option<SpfOutput>)>,
        dkim: Option<&[DkimOutput<'_>]>,
        arc: Option<&ArcOutput<'_>>,
        dmarc: Option<&DmarcOutput>,
    ) -> Outcome {
        let aid = self.settings.authserv_id.as_str();
        let piece = |ar: AuthenticationResults<'_>| -> String {
            let text = ar.to_string();
            text[aid.len()..].trim_start_matches(";\r\n\t").to_string()
        };
        let mut pieces = Vec::new();
        let mut summary = Vec::new();
        if let Some((helo, mail_from)) = spf {
            if let Some(mf) = mail_from {
                pieces.push(piece(
                    AuthenticationResults::new(aid).with_spf_mailfrom_result(
                        mf,
                        id.ip,
                        id.mail_from,
                        id.helo,
                    ),
                ));
                summary.push(("spf", spf_word(mf.result())));
            }
            pieces.push(piece(
                AuthenticationResults::new(aid).with_spf_ehlo_result(helo, id.ip, id.helo),
            ));
            summary.push(("spf_helo", spf_word(helo.result())));
        }
        if self.settings.dkim {
            match dkim {
                Some(list) if !list.is_empty() => {
                    for d in list {
                        let d = body_hash_mismatch_fails(d);
                        pieces.push(piece(
                            AuthenticationResults::new(aid).with_dkim_result(&d, ""),
                        ));
                        summary.push(("dkim", dkim_word(d.result())));
                    }
                }
                Some(_) => {
                    pieces.push("dkim=none".into());
                    summary.push(("dkim", "none"));
                }
                None => {
                    pieces.push("dkim=permerror (no message header to verify)".into());
                    summary.push(("dkim", "permerror"));
                }
            }
        }
        let arc = arc.map(arc_body_hash_mismatch_fails);
        if let Some(a) = &arc {
            pieces.push(piece(
                AuthenticationResults::new(aid).with_arc_result(a, id.ip),
            ));
            summary.push(("arc", dkim_word(a.result())));
        }
        if let Some(d) = dmarc {
            if d.domain().is_empty() {
                pieces.push("dmarc=none (no single author domain in From)".into());
                summary.push(("dmarc", "none"));
            } else {
                pieces.push(piece(AuthenticationResults::new(aid).with_dmarc_result(d)));
                summary.push(("dmarc", dmarc_word(&d.result())));
            }
        } else if self.settings.dmarc {
            pieces.push("dmarc=none (no author to check)".into());
            summary.push(("dmarc", "none"));
        }
        if pieces.is_empty() {
            pieces.push("none".into());
        }
        Outcome {
            header: format!(
                "Authentication-Results: {aid};\r\n\t{}\r\n",
                pieces.join(";\r\n\t")
            ),
            summary,
            arc: arc.map(|a| a.result().clone()),
            results: super::Results::default(),
        }
    }
}

/// As `body_hash_mismatch_fails` below, for the last ARC-Message-Signature:
/// RFC 8617 §5.2 fails a chain whose latest AMS does not validate, whatever
/// the reason, and the `cv=` of our seal must say so.
fn arc_body_hash_mismatch_fails(a: &ArcOutput<'_>) -> ArcOutput<'static> {
    let result = match a.result() {
        DkimResult::Neutral(e @ Error::Arc(ArcError::FailedBodyHashMatch)) => {
            DkimResult::Fail(e.clone())
        }
        r => r.clone(),
    };
    ArcOutput::default().with_result(result)
}

/// mail-auth calls a signature whose body hash does not match `neutral`;
/// RFC 6376 §6.1.3 makes it a PERMFAIL, which RFC 8601 §2.7.1 reports as
/// `fail` (the body changed after signing), and a DMARC or spam policy
/// reading our header must see it as one.
pub(super) fn body_hash_mismatch_fails<'x>(d: &'x DkimOutput<'x>) -> DkimOutput<'x> {
    let mismatch = Error::Dkim(DkimError::FailedBodyHashMatch);
    match (d.result(), d.signature()) {
        (DkimResult::Neutral(e), Some(sig)) if *e == mismatch => {
            DkimOutput::fail(mismatch).with_signature(sig)
        }
        _ => d.clone(),
    }
}

fn is_timeout(r: &DmarcResult) -> bool {
    matches!(r, DmarcResult::TempError(e) if *e == timeout_error())
}

fn timeout_error() -> Error {
    Error::Dns(DnsError::Resolver(
        "authentication.timeout reached".to_string(),
    ))
}

/// DMARC's answer when the checks it depends on ran out of time.
fn timed_out_dmarc(m: &AuthenticatedMessage<'_>) -> DmarcOutput {
    let domain = m.from.first().map_or("", |f| domain_of(f)).to_lowercase();
    DmarcOutput::new(domain)
        .with_spf_result(DmarcResult::TempError(timeout_error()))
        .with_dkim_result(DmarcResult::TempError(timeout_error()))
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or(address, |(_, d)| d)
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

/// A property value (RFC 8601 `pvalue`): a token as it is, else a quoted
/// string with `"` and `\` escaped and control characters dropped.
fn pvalue(v: &str) -> String {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`{|}~@".contains(c);
    if !v.is_empty() && v.chars().all(token) {
        return v.to_string();
    }
    let mut out = String::from("\"");
    for c in v.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_values_are_tokens_or_quoted() {
        assert_eq!(pvalue("alice"), "alice");
        assert_eq!(pvalue("alice@example.org"), "alice@example.org");
        assert_eq!(pvalue("a b"), "\"a b\"");
        assert_eq!(pvalue("a\"b\r\n"), "\"a\\\"b\"");
        assert_eq!(pvalue(""), "\"\"");
    }
}
