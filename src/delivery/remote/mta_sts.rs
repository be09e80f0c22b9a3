//! MTA-STS (RFC 8461): the policy a recipient domain publishes for mail
//! sent to it. `_mta-sts.<domain>` TXT says a policy exists and its `id`;
//! the policy itself comes over HTTPS from
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` (a valid certificate,
//! no redirects, `text/plain`, at most `max_policy_size`, within
//! `fetch_timeout`).
//!
//! Policies are cached in memory and in the queue's sled store (tree
//! `mta-sts`), so a restart keeps them: a cached policy is used until its
//! `max_age` runs out, and fetched again when the TXT `id` changes. When a
//! fetch fails, the cached policy stays in force (§5.1); with none cached
//! the domain is treated as having no policy and the failure is reported
//! (TLS-RPT `sts-policy-fetch-error`).
//!
//! What a policy means for one MX host is decided on plain data here
//! (`parse_txt`, `parse_policy`, `Policy::matches`); `mod.rs` applies it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use super::config::MtaStsSettings;
use super::route::{Dns, Lookup};
use super::tlsrpt::{PolicyDesc, PolicyType, ResultType, SessionResult, TlsRpt};
use hickory_resolver::proto::rr::{RData, RecordType};

/// RFC 8461 §3.2: `max_age` is at most a year.
const MAX_AGE_LIMIT: u64 = 31_557_600;

/// `mode` of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only matching MX hosts, only with a valid certificate.
    Enforce,
    /// Deliver anyway, report failures.
    Testing,
    /// No policy.
    None,
}

impl Mode {
    /// As in the policy and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// `mode`.
    pub mode: Mode,
    /// `mx` patterns, lower case (`mail.example.org`, `*.example.net`).
    pub mx: Vec<String>,
    /// `max_age` in seconds.
    pub max_age: u64,
}

impl Policy {
    /// True when MX host `host` is allowed (§4.1: a `*.` pattern matches
    /// exactly one more label on the left).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(base) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == base),
            None => *p == host,
        })
    }
}

/// The `id` of the domain's `v=STSv1` TXT record; None unless exactly one
/// valid record exists (§3.1).
pub fn parse_txt(records: &[String]) -> Option<String> {
    let mut ids = records.iter().filter_map(|r| {
        let mut fields = r.split(';').map(str::trim).filter(|f| !f.is_empty());
        if fields.next()? != "v=STSv1" {
            return None;
        }
        let id = fields.find_map(|f| f.strip_prefix("id="))?.trim();
        let valid = (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
        Some(valid.then(|| id.to_string()))
    });
    let first = ids.next()?;
    if ids.next().is_some() {
        return None;
    }
    first
}

/// Parses a policy body (§3.2): `key: value` lines, CRLF or LF.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("not a `key: value` line: {line:?}"));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {other:?}")),
                })
            }
            "max_age" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("max_age {value:?} is not a number"))?;
                max_age = Some(n.min(MAX_AGE_LIMIT));
            }
            "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
            // §3.2: unknown fields are ignored.
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("missing `version: STSv1`".into());
    }
    let mode = mode.ok_or("missing `mode`")?;
    let max_age = max_age.ok_or("missing `max_age`")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no `mx` pattern".into());
    }
    Ok(Policy { mode, mx, max_age })
}

/// A policy as cached (and stored in sled).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cached {
    /// The TXT `id` it was fetched under.
    pub id: String,
    /// The policy.
    pub policy: Policy,
    /// Its text lines, for TLS-RPT `policy-string`.
    pub lines: Vec<String>,
    /// Unix seconds after which it is no longer used.
    pub expires: i64,
}

impl Cached {
    /// The TLS-RPT description of this policy for `domain`.
    pub fn desc(&self, domain: &str) -> PolicyDesc {
        PolicyDesc {
            kind: PolicyType::Sts,
            strings: self.lines.clone(),
            domain: domain.to_string(),
            mx_host: self.policy.mx.clone(),
        }
    }
}

/// Why a fetch failed, with its TLS-RPT type.
#[derive(Debug)]
struct FetchError {
    kind: ResultType,
    why: String,
}

fn fetch_error(kind: ResultType, why: impl Into<String>) -> FetchError {
    FetchError {
        kind,
        why: why.into(),
    }
}

/// Policies: lookup, fetch, cache.
pub struct MtaSts {
    settings: MtaStsSettings,
    tls: TlsConnector,
    cache: Mutex<HashMap<String, Arc<Cached>>>,
    tree: Option<sled::Tree>,
}

impl MtaSts {
    /// The policy side for `settings`, with `tls` (public roots plus
    /// `ca_file`) for the fetch, persisting into `db` when given.
    pub fn new(settings: &MtaStsSettings, tls: TlsConnector, db: Option<&sled::Db>) -> MtaSts {
        let tree = db.and_then(|db| match db.open_tree("mta-sts") {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(error = %e, "cannot open the MTA-STS cache in the queue store; memory only");
                None
            }
        });
        let mut cache = HashMap::new();
        if let Some(t) = &tree {
            for (k, v) in t.iter().flatten() {
                if let (Ok(k), Ok(v)) = (
                    std::str::from_utf8(&k),
                    serde_json::from_slice::<Cached>(&v),
                ) {
                    cache.insert(k.to_string(), Arc::new(v));
                }
            }
            if !cache.is_empty() {
                info!(
                    policies = cache.len(),
                    "MTA-STS policies loaded from the cache"
                );
            }
        }
        MtaSts {
            settings: settings.clone(),
            tls,
            cache: Mutex::new(cache),
            tree,
        }
    }

    /// True when policies are looked up at all.
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// The policy in force for `domain` (None: no policy, or `mode: none`).
    pub(super) async fn policy(
        &self,
        dns: &Dns,
        domain: &str,
        rpt: &TlsRpt,
    ) -> Option<Arc<Cached>> {
        let now = chrono::Utc::now().timestamp();
        let cached = self
            .cache
            .lock()
            .expect("mta-sts cache lock")
            .get(domain)
            .cloned()
            .filter(|c| c.expires > now);
        let txt = match dns
            .query(&format!("_mta-sts.{domain}"), RecordType::TXT)
            .await
        {
            Ok(rdata) => rdata
                .into_iter()
                .filter_map(|d| match d {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect(),
            Err(Lookup::Failed(e)) => {
                debug!(domain, error = %e, "MTA-STS TXT lookup failed");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let id = parse_txt(&txt);
        let chosen = match (id, cached) {
            (None, cached) => cached,
            (Some(id), Some(c)) if c.id == id => Some(c),
            (Some(id), cached) => match self.fetch(dns, domain).await {
                Ok((policy, lines)) => {
                    info!(
                        domain,
                        id,
                        mode = policy.mode.as_str(),
                        max_age = policy.max_age,
                        "MTA-STS policy fetched"
                    );
                    let c = Arc::new(Cached {
                        id,
                        expires: now + policy.max_age as i64,
                        policy,
                        lines,
                    });
                    self.store(domain, c.clone());
                    Some(c)
                }
                Err(e) => {
                    let desc = PolicyDesc {
                        kind: PolicyType::Sts,
                        strings: Vec::new(),
                        domain: domain.to_string(),
                        mx_host: Vec::new(),
                    };
                    let info = format!(
                        "https://mta-sts.{domain}/.well-known/mta-sts.txt: {}",
                        e.why
                    );
                    warn!(domain, error = %info, kept = cached.is_some(), "MTA-STS policy fetch failed");
                    rpt.record(
                        &desc,
                        SessionResult::Failure {
                            result: e.kind,
                            mx: None,
                            ip: None,
                            info,
                        },
                    );
                    cached
                }
            },
        };
        chosen.filter(|c| c.policy.mode != Mode::None)
    }

    fn store(&self, domain: &str, c: Arc<Cached>) {
        let mut cache = self.cache.lock().expect("mta-sts cache lock");
        if !cache.contains_key(domain) && cache.len() >= self.settings.max_cache_entries {
            // Evict the policy that expires first.
            if let Some(old) = cache
                .iter()
                .min_by_key(|(_, c)| c.expires)
                .map(|(k, _)| k.clone())
            {
                cache.remove(&old);
                if let Some(t) = &self.tree {
                    let _ = t.remove(old.as_bytes());
                }
                crate::observe::limit_hit("outbound.mta_sts.max_cache_entries", &old);
            }
        }
        if let Some(t) = &self.tree
            && let Ok(v) = serde_json::to_vec(&*c)
            && let Err(e) = t.insert(domain.as_bytes(), v)
        {
            warn!(domain, error = %e, "cannot store the MTA-STS policy");
        }
        cache.insert(domain.to_string(), c);
    }

    async fn fetch(&self, dns: &Dns, domain: &str) -> Result<(Policy, Vec<String>), FetchError> {
        let text = tokio::time::timeout(self.settings.fetch_timeout, self.get(dns, domain))
            .await
            .map_err(|_| {
                crate::observe::limit_hit("outbound.mta_sts.fetch_timeout", domain);
                fetch_error(
                    ResultType::StsPolicyFetchError,
                    format!(
                        "no policy within {}",
                        humantime::format_duration(self.settings.fetch_timeout)
                    ),
                )
            })??;
        let policy = parse_policy(&text).map_err(|e| {
            fetch_error(ResultType::StsPolicyInvalid, format!("invalid policy: {e}"))
        })?;
        let lines = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.trim().is_empty())
            .collect();
        Ok((policy, lines))
    }

    /// GET the policy: connect, TLS with a valid certificate for
    /// `mta-sts.<domain>`, HTTP/1.1, 200 `text/plain` only, bounded body.
    async fn get(&self, dns: &Dns, domain: &str) -> Result<String, FetchError> {
        let fetch = |why: String| fetch_error(ResultType::StsPolicyFetchError, why);
        let host = format!("mta-sts.{domain}");
        let addrs = dns.addresses(&host).await.map_err(|e| {
            let why = match e {
                Lookup::NoSuchDomain => "no such domain".to_string(),
                Lookup::NoRecords => "no A or AAAA record".to_string(),
                Lookup::Failed(e) => e,
            };
            fetch(format!("cannot resolve {host}: {why}"))
        })?;
        let mut last = String::new();
        let mut tcp = None;
        for ip in addrs {
            match TcpStream::connect(SocketAddr::new(ip, self.settings.https_port)).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("cannot connect to {ip}: {e}"),
            }
        }
        let tcp = tcp.ok_or_else(|| fetch(last))?;
        let name = ServerName::try_from(host.clone())
            .map_err(|e| fetch(format!("bad host name {host}: {e}")))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| {
            let kind = if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                ResultType::StsWebpkiInvalid
            } else {
                ResultType::StsPolicyFetchError
            };
            fetch_error(kind, format!("TLS with {host} failed: {e}"))
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fetch(format!("HTTP with {host} failed: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, &host)
            .header(hyper::header::USER_AGENT, "wasmtp")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fetch(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fetch(format!("HTTP request to {host} failed: {e}")))?;
        // §3.3: redirects are not followed; only 200 is a policy.
        if resp.status() != hyper::StatusCode::OK {
            return Err(fetch(format!("HTTP status {}", resp.status())));
        }
        let ctype = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ctype.to_ascii_lowercase().starts_with("text/plain") {
            return Err(fetch_error(
                ResultType::StsPolicyInvalid,
                format!("content type {ctype:?}, not text/plain"),
            ));
        }
        let max = self.settings.max_policy_size;
        let body = Limited::new(resp.into_body(), max as usize)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    crate::observe::limit_hit("outbound.mta_sts.max_policy_size", domain);
                    fetch_error(
                        ResultType::StsPolicyInvalid,
                        format!("policy larger than {max} bytes"),
                    )
                } else {
                    fetch(format!("reading the policy failed: {e}"))
                }
            })?
            .to_bytes();
        String::from_utf8(body.to_vec())
            .map_err(|_| fetch_error(ResultType::StsPolicyInvalid, "policy is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records() {
        let one = |s: &str| parse_txt(&[s.to_string()]);
        assert_eq!(
            one("v=STSv1; id=20160831085700Z;").as_deref(),
            Some("20160831085700Z")
        );
        assert_eq!(one("v=STSv1;id=abc").as_deref(), Some("abc"));
        assert_eq!(one("v=STSv2; id=abc"), None);
        assert_eq!(one("id=abc; v=STSv1"), None);
        assert_eq!(one("v=STSv1; id=a-b"), None);
        let two = ["v=STSv1; id=a".to_string(), "v=STSv1; id=b".to_string()];
        assert_eq!(parse_txt(&two), None);
        let other = ["spf1 -all".to_string(), "v=STSv1; id=a".to_string()];
        assert_eq!(parse_txt(&other).as_deref(), Some("a"));
    }

    #[test]
    fn policies() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert!(p.matches("mail.example.com") && p.matches("MAIL.example.com."));
        assert!(p.matches("a.example.net"));
        assert!(!p.matches("a.b.example.net") && !p.matches("example.net"));
        assert!(!p.matches("other.example.com"));
        assert!(parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n").is_err());
        assert!(parse_policy("mode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n").is_err());
        let none = parse_policy("version: STSv1\nmode: none\nmax_age: 99999999999\n").unwrap();
        assert_eq!(none.max_age, MAX_AGE_LIMIT);
    }
}
