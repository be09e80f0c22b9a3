//! TLS-RPT (RFC 8460): what each outbound TLS session to a policy domain
//! came to, counted per day, policy and failure, so a daily report can be
//! produced from it.
//!
//! The counts live in one JSON file per UTC day under
//! `outbound.tls_rpt.dir` (`<data_dir>/tls-rpt/2026-11-29.json`), rewritten
//! (through a temporary file and a rename) as results come in: the counts
//! are statistics, so they are not fsynced, and the file can be read while
//! the server runs. `wasmtp tls-report` turns a day's file into the RFC 8460
//! §4 JSON. Sending it to the domain's `rua` address is not built yet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::config::TlsRptSettings;

/// Which policy a session ran under (RFC 8460 §4.4 `policy-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    /// MTA-STS.
    Sts,
    /// DANE.
    Tlsa,
    /// Neither.
    NoPolicyFound,
}

impl PolicyType {
    /// As in reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The policy a result belongs to (RFC 8460 §4.4 `policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDesc {
    /// Its type.
    #[serde(rename = "policy-type")]
    pub kind: PolicyType,
    /// The policy as text lines (MTA-STS) or records (TLSA).
    #[serde(rename = "policy-string", default)]
    pub strings: Vec<String>,
    /// The recipient domain it was looked up for.
    #[serde(rename = "policy-domain")]
    pub domain: String,
    /// MX patterns (MTA-STS) or the MX host (DANE).
    #[serde(rename = "mx-host", default)]
    pub mx_host: Vec<String>,
}

/// RFC 8460 §4.3 result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultType {
    /// STARTTLS not offered.
    StarttlsNotSupported,
    /// The certificate does not name the host.
    CertificateHostMismatch,
    /// The certificate expired.
    CertificateExpired,
    /// The certificate chain does not lead to a trusted root.
    CertificateNotTrusted,
    /// Any other validation failure (an MX outside the MTA-STS policy, a
    /// failed handshake).
    ValidationFailure,
    /// No TLSA record matched the certificate, or none was usable.
    TlsaInvalid,
    /// The TLSA answer failed DNSSEC validation.
    DnssecInvalid,
    /// The policy could not be fetched.
    StsPolicyFetchError,
    /// The fetched policy is not valid.
    StsPolicyInvalid,
    /// The policy host's certificate is not valid.
    StsWebpkiInvalid,
}

impl ResultType {
    /// As in reports, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

/// One failed session's details (RFC 8460 §4.4 `failure-details`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetail {
    /// `result-type`.
    #[serde(rename = "result-type")]
    pub result: String,
    /// `receiving-mx-hostname`.
    #[serde(
        rename = "receiving-mx-hostname",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub mx: Option<String>,
    /// `receiving-ip`.
    #[serde(
        rename = "receiving-ip",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub ip: Option<String>,
    /// `failed-session-count`.
    #[serde(rename = "failed-session-count")]
    pub count: u64,
    /// `additional-information`: the first reason seen.
    #[serde(
        rename = "additional-information",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub info: Option<String>,
}

/// One policy's counts for a day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyCounts {
    /// The policy.
    pub policy: PolicyDesc,
    /// Sessions that met it.
    pub success: u64,
    /// Sessions that did not, by detail.
    pub failures: Vec<FailureDetail>,
}

/// A day's counts by policy domain: the file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Day {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Policy domain → its policies' counts.
    pub domains: BTreeMap<String, Vec<PolicyCounts>>,
}

/// What one session came to.
#[derive(Debug, Clone)]
pub enum SessionResult {
    /// TLS as the policy asks.
    Success,
    /// A failure: its type, the MX host and address, a reason.
    Failure {
        /// Type.
        result: ResultType,
        /// MX host.
        mx: Option<String>,
        /// Its address.
        ip: Option<String>,
        /// Why, for `additional-information`.
        info: String,
    },
}

/// The recorder: the current day in memory, written through to its file.
pub struct TlsRpt {
    dir: Option<PathBuf>,
    max_domains: usize,
    day: Mutex<Day>,
}

impl TlsRpt {
    /// A recorder for `settings` (`dir` already defaulted); None records
    /// nothing.
    pub fn new(settings: &TlsRptSettings, dir: PathBuf) -> TlsRpt {
        TlsRpt {
            dir: settings.enabled.then_some(dir),
            max_domains: settings.max_domains,
            day: Mutex::new(Day::default()),
        }
    }

    /// Counts `result` for `policy`; logs and counts the metric either way.
    pub fn record(&self, policy: &PolicyDesc, result: SessionResult) {
        let label = match &result {
            SessionResult::Success => "success",
            SessionResult::Failure { result, .. } => result.as_str(),
        };
        crate::metrics::tls_policy(policy.kind.as_str(), label);
        if let SessionResult::Failure {
            result, mx, info, ..
        } = &result
        {
            info!(
                policy_domain = %policy.domain,
                policy = policy.kind.as_str(),
                result = result.as_str(),
                mx = mx.as_deref().unwrap_or(""),
                reason = %info,
                "TLS policy failure"
            );
        }
        let Some(dir) = &self.dir else { return };
        let today = today();
        let mut day = self.day.lock().expect("tls-rpt lock");
        if day.day != today {
            *day = load(dir, &today).unwrap_or_else(|| Day {
                day: today.clone(),
                domains: BTreeMap::new(),
            });
        }
        if !day.domains.contains_key(&policy.domain) && day.domains.len() >= self.max_domains {
            crate::observe::limit_hit("outbound.tls_rpt.max_domains", &policy.domain);
            return;
        }
        add(&mut day, policy, result);
        if let Err(e) = save(dir, &day) {
            warn!(dir = %dir.display(), error = %e, "cannot write the TLS-RPT results");
        }
    }
}

fn add(day: &mut Day, policy: &PolicyDesc, result: SessionResult) {
    let list = day.domains.entry(policy.domain.clone()).or_default();
    let i = match list.iter().position(|p| p.policy == *policy) {
        Some(i) => i,
        None => {
            list.push(PolicyCounts {
                policy: policy.clone(),
                success: 0,
                failures: Vec::new(),
            });
            list.len() - 1
        }
    };
    let counts = &mut list[i];
    match result {
        SessionResult::Success => counts.success += 1,
        SessionResult::Failure {
            result,
            mx,
            ip,
            info,
        } => {
            let same = counts
                .failures
                .iter_mut()
                .find(|f| f.result == result.as_str() && f.mx == mx && f.ip == ip);
            match same {
                Some(f) => f.count += 1,
                None => counts.failures.push(FailureDetail {
                    result: result.as_str().to_string(),
                    mx,
                    ip,
                    count: 1,
                    info: Some(info),
                }),
            }
        }
    }
}

/// Today, UTC, as `YYYY-MM-DD`.
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

fn file(dir: &Path, day: &str) -> PathBuf {
    dir.join(format!("{day}.json"))
}

/// A day's counts from `dir`, if recorded.
pub fn load(dir: &Path, day: &str) -> Option<Day> {
    let text = std::fs::read(file(dir, day)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn save(dir: &Path, day: &Day) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = file(dir, &day.day);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(day).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// The RFC 8460 §4 reports for `day`, one per policy domain (or only
/// `domain`'s).
pub fn reports(
    day: &Day,
    domain: Option<&str>,
    organization: &str,
    contact: &str,
) -> Vec<serde_json::Value> {
    day.domains
        .iter()
        .filter(|(d, _)| domain.is_none_or(|want| want.eq_ignore_ascii_case(d)))
        .map(|(d, policies)| {
            let policies: Vec<serde_json::Value> = policies
                .iter()
                .map(|p| {
                    let failed: u64 = p.failures.iter().map(|f| f.count).sum();
                    serde_json::json!({
                        "policy": p.policy,
                        "summary": {
                            "total-successful-session-count": p.success,
                            "total-failure-session-count": failed,
                        },
                        "failure-details": p.failures,
                    })
                })
                .collect();
            serde_json::json!({
                "organization-name": organization,
                "date-range": {
                    "start-datetime": format!("{}T00:00:00Z", day.day),
                    "end-datetime": format!("{}T23:59:59Z", day.day),
                },
                "contact-info": contact,
                "report-id": format!("{}_{d}@{organization}", day.day),
                "policies": policies,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(domain: &str) -> PolicyDesc {
        PolicyDesc {
            kind: PolicyType::Sts,
            strings: vec!["version: STSv1".into(), "mode: enforce".into()],
            domain: domain.into(),
            mx_host: vec!["mail.a.test".into()],
        }
    }

    #[test]
    fn counts_sum_into_a_report() {
        let mut day = Day {
            day: "2026-11-29".into(),
            ..Day::default()
        };
        add(&mut day, &sts("a.test"), SessionResult::Success);
        add(&mut day, &sts("a.test"), SessionResult::Success);
        for _ in 0..3 {
            add(
                &mut day,
                &sts("a.test"),
                SessionResult::Failure {
                    result: ResultType::ValidationFailure,
                    mx: Some("other.a.test".into()),
                    ip: None,
                    info: "not in the policy".into(),
                },
            );
        }
        let r = reports(&day, Some("A.test"), "mx.test", "postmaster@mx.test");
        assert_eq!(r.len(), 1);
        let p = &r[0]["policies"][0];
        assert_eq!(p["summary"]["total-successful-session-count"], 2);
        assert_eq!(p["summary"]["total-failure-session-count"], 3);
        assert_eq!(p["failure-details"][0]["result-type"], "validation-failure");
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert_eq!(r[0]["date-range"]["start-datetime"], "2026-11-29T00:00:00Z");
        assert!(reports(&day, Some("b.test"), "o", "c").is_empty());
    }
}
