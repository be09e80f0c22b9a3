//! The verification results as data, for plugins (contract 0.2.0's
//! `message.auth-results`) and for `wasmtp plugin test` cases (`[auth]`),
//! beside the header text `verify` renders from the same outputs.
//!
//! The shapes mirror the WIT records one to one; `plugin::message` turns
//! them into the generated types. They live here, not in the plugin host,
//! because they are what verification found; the host only hands them on.

use mail_auth::dmarc::Policy;
use mail_auth::{
    ArcOutput, DkimOutput, DkimResult, DmarcOutput, DmarcResult, SpfOutput, SpfResult,
};
use serde::{Deserialize, Serialize};

/// What verification found for one message (WIT `auth-results`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Results {
    /// Our authserv-id.
    pub authserv_id: String,
    /// The SMTP AUTH account, when the client authenticated (then no checks ran).
    pub authenticated: Option<String>,
    /// SPF, MAIL FROM identity first, then HELO.
    pub spf: Vec<SpfCheck>,
    /// DKIM, one per signature.
    pub dkim: Vec<DkimCheck>,
    /// The ARC chain.
    pub arc: Option<ArcCheck>,
    /// DMARC for the From domain.
    pub dmarc: Option<DmarcCheck>,
}

/// An RFC 8601 result name (WIT `auth-result`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum AuthResult {
    #[default]
    None,
    Pass,
    Fail,
    Softfail,
    Neutral,
    Temperror,
    Permerror,
}

/// The SPF identity (WIT `spf-identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)]
pub enum SpfIdentity {
    MailFrom,
    Helo,
}

/// One SPF check (WIT `spf-check`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SpfCheck {
    /// The result.
    pub result: AuthResult,
    /// Which identity.
    pub identity: SpfIdentity,
    /// The domain checked.
    pub domain: String,
}

/// One DKIM signature (WIT `dkim-check`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DkimCheck {
    /// The result.
    pub result: AuthResult,
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
}

/// The ARC chain (WIT `arc-check`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArcCheck {
    /// The result.
    pub result: AuthResult,
}

/// A DMARC policy (WIT `dmarc-disposition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Disposition {
    None,
    Quarantine,
    Reject,
}

/// DMARC for the From domain (WIT `dmarc-check`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DmarcCheck {
    /// The result.
    pub result: AuthResult,
    /// The From domain.
    pub from_domain: String,
    /// The policy to apply; none without a record.
    pub policy: Option<Disposition>,
    /// `t=y`.
    pub testing: bool,
    /// SPF passed aligned.
    pub spf_aligned: bool,
    /// DKIM passed aligned.
    pub dkim_aligned: bool,
    /// `rua=` URIs.
    pub rua: Vec<String>,
}

impl Results {
    /// The results of the checks that ran (a check turned off is absent).
    pub(super) fn collect(
        authserv_id: &str,
        spf: &Option<(SpfOutput, Option<SpfOutput>)>,
        dkim: Option<&[DkimOutput<'_>]>,
        arc: Option<&ArcOutput<'_>>,
        dmarc: Option<&DmarcOutput>,
    ) -> Results {
        let mut spf_checks = Vec::new();
        if let Some((helo, mail_from)) = spf {
            if let Some(mf) = mail_from {
                spf_checks.push(spf_check(mf, SpfIdentity::MailFrom));
            }
            spf_checks.push(spf_check(helo, SpfIdentity::Helo));
        }
        let dkim = dkim
            .unwrap_or_default()
            .iter()
            .map(|d| {
                let d = super::verify::body_hash_mismatch_fails(d);
                let (domain, selector) = d
                    .signature()
                    .map(|s| (s.d.clone(), s.s.clone()))
                    .unwrap_or_default();
                DkimCheck {
                    result: dkim_result(d.result()),
                    domain,
                    selector,
                }
            })
            .collect();
        Results {
            authserv_id: authserv_id.to_string(),
            authenticated: None,
            spf: spf_checks,
            dkim,
            arc: arc.map(|a| ArcCheck {
                result: dkim_result(a.result()),
            }),
            dmarc: dmarc.map(dmarc_check),
        }
    }

    /// A message from an authenticated client: no checks.
    pub(super) fn authenticated(authserv_id: &str, user: &str) -> Results {
        Results {
            authserv_id: authserv_id.to_string(),
            authenticated: Some(user.to_string()),
            ..Results::default()
        }
    }
}

fn spf_check(out: &SpfOutput, identity: SpfIdentity) -> SpfCheck {
    SpfCheck {
        result: match out.result() {
            SpfResult::Pass => AuthResult::Pass,
            SpfResult::Fail => AuthResult::Fail,
            SpfResult::SoftFail => AuthResult::Softfail,
            SpfResult::Neutral => AuthResult::Neutral,
            SpfResult::TempError => AuthResult::Temperror,
            SpfResult::PermError => AuthResult::Permerror,
            SpfResult::None => AuthResult::None,
        },
        identity,
        domain: out.domain().to_string(),
    }
}

fn dkim_result(r: &DkimResult) -> AuthResult {
    match r {
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::PermError(_) => AuthResult::Permerror,
        DkimResult::TempError(_) => AuthResult::Temperror,
        DkimResult::None => AuthResult::None,
    }
}

fn dmarc_result(r: &DmarcResult) -> AuthResult {
    match r {
        DmarcResult::Pass => AuthResult::Pass,
        DmarcResult::Fail(_) => AuthResult::Fail,
        DmarcResult::TempError(_) => AuthResult::Temperror,
        DmarcResult::PermError(_) => AuthResult::Permerror,
        DmarcResult::None => AuthResult::None,
    }
}

fn dmarc_check(d: &DmarcOutput) -> DmarcCheck {
    let record = d.dmarc_record();
    DmarcCheck {
        result: dmarc_result(&d.result()),
        from_domain: d.domain().to_string(),
        policy: record.map(|_| match d.policy() {
            Policy::Reject => Disposition::Reject,
            Policy::Quarantine => Disposition::Quarantine,
            Policy::None | Policy::Unspecified => Disposition::None,
        }),
        testing: record.is_some_and(|r| r.t),
        spf_aligned: *d.spf_result() == DmarcResult::Pass,
        dkim_aligned: *d.dkim_result() == DmarcResult::Pass,
        rua: record.map_or_else(Vec::new, |r| {
            r.rua.iter().map(|u| u.uri().to_string()).collect()
        }),
    }
}
