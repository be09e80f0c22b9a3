//! dmarc-policy: applies the DMARC policy of a message's From domain, as the server's mail
//! authentication found it (contract 0.2.0's `message.auth-results`), at the `data` hook.
//!
//! - DMARC `fail` with `p=reject` (or `sp=`, as the server resolved it): `550 5.7.1`;
//!   `p=quarantine`: a `quarantine` verdict; `p=none`: accepted.
//! - `overrides` replaces the published policy of a domain (or of its subdomains) by another.
//! - `allow_domains` (From domains, subdomains included) and `allow_networks` (client IPs) are
//!   never refused or quarantined by this plugin.
//! - Without a DMARC record, `spf_fail_without_dmarc` and `dkim_fail_without_dmarc` decide what
//!   an SPF (MAIL FROM) or DKIM failure does (`accept`, `quarantine` or `reject`; the stricter
//!   wins when both fail).
//! - `pct` is not applied: the server's verifier (mail-auth, RFC 9989) no longer reports it; its
//!   successor `t=y` (testing) arrives already applied (the policy lowered one step).
//! - Mail from an authenticated client, or with verification off, is left alone.
//!
//! Every message it looks at gets an `X-DMARC-Policy` header saying what it did and why. When
//! the domain asks for aggregate reports (`rua=`), the note `dmarc.report` keeps what a report
//! would need; this plugin does not send reports.

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmtp_plugin_sdk::net::{IpNet, ip_in, parse_nets};
use wasmtp_plugin_sdk::{AuthResult, AuthResults, Config, Connection, DmarcDisposition, Envelope};
use wasmtp_plugin_sdk::{Message, Modification, Outcome, Plugin, SpfIdentity, Verdict};
use wasmtp_plugin_sdk::{Reply, log, notes};

/// What to do with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Accept,
    Quarantine,
    Reject,
}

/// What to do when a check could not finish (DNS trouble).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnTempError {
    Accept,
    Tempfail,
}

/// The `[plugin.config]` table; every key is optional.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Domain (lowercase; its subdomains too) → the policy to apply instead of the published one.
    overrides: BTreeMap<String, String>,
    /// From domains (their subdomains too) never refused or quarantined.
    allow_domains: Vec<String>,
    /// Client networks never refused or quarantined.
    allow_networks: Vec<String>,
    /// No DMARC record and SPF (MAIL FROM) failed.
    spf_fail_without_dmarc: Action,
    /// No DMARC record and a DKIM signature failed.
    dkim_fail_without_dmarc: Action,
    /// DMARC could not be evaluated for now.
    temperror: OnTempError,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            overrides: BTreeMap::new(),
            allow_domains: Vec::new(),
            allow_networks: Vec::new(),
            spf_fail_without_dmarc: Action::Accept,
            dkim_fail_without_dmarc: Action::Accept,
            temperror: OnTempError::Accept,
        }
    }
}

struct DmarcPolicy {
    overrides: BTreeMap<String, Action>,
    allow_domains: Vec<String>,
    allow_networks: Vec<IpNet>,
    spf_fail: Action,
    dkim_fail: Action,
    temperror: OnTempError,
}

/// The decision and the words for the header and the reply.
struct Decision {
    action: Action,
    /// Why, e.g. `dmarc=fail policy=reject (published)`.
    why: String,
    tempfail: bool,
}

fn policy_action(p: DmarcDisposition) -> Action {
    match p {
        DmarcDisposition::None => Action::Accept,
        DmarcDisposition::Quarantine => Action::Quarantine,
        DmarcDisposition::Reject => Action::Reject,
    }
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Accept => "accept",
        Action::Quarantine => "quarantine",
        Action::Reject => "reject",
    }
}

/// The policy an action applies, in DMARC's words.
fn policy_word(a: Action) -> &'static str {
    match a {
        Action::Accept => "none",
        Action::Quarantine => "quarantine",
        Action::Reject => "reject",
    }
}

fn result_word(r: AuthResult) -> &'static str {
    match r {
        AuthResult::None => "none",
        AuthResult::Pass => "pass",
        AuthResult::Fail => "fail",
        AuthResult::Softfail => "softfail",
        AuthResult::Neutral => "neutral",
        AuthResult::Temperror => "temperror",
        AuthResult::Permerror => "permerror",
    }
}

/// Whether `domain` is `pattern` or a subdomain of it.
fn within(domain: &str, pattern: &str) -> bool {
    domain == pattern
        || domain
            .strip_suffix(pattern)
            .is_some_and(|head| head.ends_with('.'))
}

impl DmarcPolicy {
    /// The override for `domain`: the most specific configured domain it is within.
    fn override_for(&self, domain: &str) -> Option<(&str, Action)> {
        self.overrides
            .iter()
            .filter(|(d, _)| within(domain, d))
            .max_by_key(|(d, _)| d.len())
            .map(|(d, a)| (d.as_str(), *a))
    }

    fn decide(&self, auth: &AuthResults) -> Decision {
        let Some(dmarc) = &auth.dmarc else {
            return self.without_record(auth, "dmarc=off");
        };
        let domain = dmarc.from_domain.as_str();
        match (dmarc.result, dmarc.policy) {
            (AuthResult::Fail, Some(published)) => {
                let (action, source) = match self.override_for(domain) {
                    Some((d, a)) => (a, format!("override for {d}")),
                    None => (policy_action(published), "published".to_string()),
                };
                let testing = if dmarc.testing { ", testing" } else { "" };
                Decision {
                    action,
                    why: format!(
                        "dmarc=fail policy={} ({source}{testing}) header.from={domain}",
                        policy_word(action)
                    ),
                    tempfail: false,
                }
            }
            (AuthResult::Temperror, _) => Decision {
                action: Action::Accept,
                why: format!("dmarc=temperror header.from={domain}"),
                tempfail: self.temperror == OnTempError::Tempfail,
            },
            (AuthResult::None, None) => self.without_record(auth, "dmarc=none"),
            (r, _) => Decision {
                action: Action::Accept,
                why: format!("dmarc={} header.from={domain}", result_word(r)),
                tempfail: false,
            },
        }
    }

    /// No DMARC record: the local policy for SPF-only and DKIM-only failures.
    fn without_record(&self, auth: &AuthResults, dmarc: &str) -> Decision {
        let spf_failed = auth
            .spf
            .iter()
            .any(|s| s.identity == SpfIdentity::MailFrom && s.result == AuthResult::Fail);
        let dkim_failed = auth.dkim.iter().any(|d| d.result == AuthResult::Fail);
        let mut action = Action::Accept;
        let mut failed = Vec::new();
        if spf_failed {
            action = action.max(self.spf_fail);
            failed.push("spf=fail");
        }
        if dkim_failed {
            action = action.max(self.dkim_fail);
            failed.push("dkim=fail");
        }
        let mut why = dmarc.to_string();
        for f in failed {
            why.push(' ');
            why.push_str(f);
        }
        if action != Action::Accept {
            why.push_str(&format!(" policy={} (local)", policy_word(action)));
        }
        Decision {
            action,
            why,
            tempfail: false,
        }
    }

    fn allowed(&self, conn: &Connection, auth: &AuthResults) -> Option<String> {
        if ip_in(&conn.peer_ip, &self.allow_networks) {
            return Some(format!("client {} allowlisted", conn.peer_ip));
        }
        let domain = auth.dmarc.as_ref().map(|d| d.from_domain.as_str())?;
        self.allow_domains
            .iter()
            .find(|d| within(domain, d))
            .map(|d| format!("header.from={domain} allowlisted ({d})"))
    }
}

/// What an aggregate report (RFC 7489 §7.2) would need about this message, one line, for the
/// note `dmarc.report`: where to send it, the source IP, what was done, and the results.
fn report_note(conn: &Connection, auth: &AuthResults, disposition: &str) -> Option<String> {
    let d = auth.dmarc.as_ref()?;
    if d.rua.is_empty() {
        return None;
    }
    let spf = auth
        .spf
        .iter()
        .find(|s| s.identity == SpfIdentity::MailFrom)
        .map_or("none", |s| result_word(s.result));
    let dkim: Vec<String> = auth
        .dkim
        .iter()
        .map(|k| format!("{}:{}", k.domain, result_word(k.result)))
        .collect();
    Some(format!(
        "rua={} source-ip={} header-from={} disposition={disposition} dmarc={} spf={spf} spf-aligned={} dkim={} dkim-aligned={}",
        d.rua.join(","),
        conn.peer_ip,
        d.from_domain,
        result_word(d.result),
        d.spf_aligned,
        if dkim.is_empty() {
            "none".to_string()
        } else {
            dkim.join(",")
        },
        d.dkim_aligned,
    ))
}

impl Plugin for DmarcPolicy {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let mut overrides = BTreeMap::new();
        for (domain, policy) in s.overrides {
            let action = match policy.as_str() {
                "none" => Action::Accept,
                "quarantine" => Action::Quarantine,
                "reject" => Action::Reject,
                other => {
                    return Err(format!(
                        "overrides.{domain}: {other:?} is not a policy (none, quarantine or reject)"
                    ));
                }
            };
            overrides.insert(domain.trim_end_matches('.').to_ascii_lowercase(), action);
        }
        Ok(DmarcPolicy {
            overrides,
            allow_domains: s
                .allow_domains
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            allow_networks: parse_nets(&s.allow_networks)
                .map_err(|e| format!("allow_networks: {e}"))?,
            spf_fail: s.spf_fail_without_dmarc,
            dkim_fail: s.dkim_fail_without_dmarc,
            temperror: s.temperror,
        })
    }

    fn data(&self, conn: &Connection, _env: &Envelope, msg: &Message) -> Outcome {
        let Some(auth) = msg.auth_results() else {
            return Outcome::from(Verdict::Continue);
        };
        if auth.authenticated.is_some() {
            return Outcome::from(Verdict::Continue);
        }
        let decision = self.decide(&auth);
        let (action, why) = match self.allowed(conn, &auth) {
            Some(allow) if decision.action != Action::Accept || decision.tempfail => {
                (Action::Accept, format!("{} ({allow})", decision.why))
            }
            _ => (decision.action, decision.why.clone()),
        };
        let tempfail = decision.tempfail && action == decision.action;
        let disposition = match (action, tempfail) {
            (_, true) => "tempfail",
            (Action::Accept, _) => "none",
            (Action::Quarantine, _) => "quarantine",
            (Action::Reject, _) => "reject",
        };
        if let Some(note) = report_note(conn, &auth, disposition) {
            notes::set("dmarc.report", &note);
        }
        if action != Action::Accept || tempfail {
            log::info(&format!("dmarc-policy: {disposition}: {why}"));
        }
        let header =
            Modification::change_header("X-DMARC-Policy", format!("{} {why}", action_word(action)));
        let verdict = match action {
            _ if tempfail => Verdict::Tempfail(Some(Reply::new(
                451,
                "4.7.5",
                format!("DMARC could not be evaluated for now ({why}); try again later"),
            ))),
            Action::Accept => Verdict::Continue,
            Action::Quarantine => Verdict::quarantine(format!("DMARC policy: {why}")),
            Action::Reject => Verdict::reject_with(
                550,
                "5.7.1",
                format!(
                    "Message refused by the DMARC policy of its From domain: not authenticated ({why})"
                ),
            ),
        };
        Outcome::from(verdict).with(header)
    }
}

wasmtp_plugin_sdk::export!(DmarcPolicy);
wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtp_plugin_sdk::testing::{config, connection, envelope, message_with_auth};
    use wasmtp_plugin_sdk::{DkimCheck, DmarcCheck, SpfCheck};

    const MSG: &str = "From: a@sender.example\r\nSubject: hi\r\n\r\nbody\r\n";

    fn auth(result: AuthResult, policy: Option<DmarcDisposition>) -> AuthResults {
        AuthResults {
            authserv_id: "mx.test".into(),
            authenticated: None,
            spf: vec![SpfCheck {
                result: AuthResult::Fail,
                identity: SpfIdentity::MailFrom,
                domain: "sender.example".into(),
            }],
            dkim: vec![DkimCheck {
                result: AuthResult::None,
                domain: String::new(),
                selector: String::new(),
            }],
            arc: None,
            dmarc: Some(DmarcCheck {
                result,
                from_domain: "sender.example".into(),
                policy,
                testing: false,
                spf_aligned: false,
                dkim_aligned: false,
                rua: vec!["mailto:rua@sender.example".into()],
            }),
        }
    }

    fn run(cfg: &str, a: AuthResults) -> Outcome {
        let p = DmarcPolicy::init(config(cfg)).unwrap();
        p.data(
            &connection("192.0.2.7"),
            &envelope("a@sender.example", &["b@example.org"]),
            &message_with_auth(MSG, a),
        )
    }

    #[test]
    fn published_policy_decides_a_failure() {
        let o = run("{}", auth(AuthResult::Fail, Some(DmarcDisposition::Reject)));
        match o.verdict {
            Verdict::Reject(Some(r)) => {
                assert_eq!((r.code, r.enhanced.as_deref()), (Some(550), Some("5.7.1")));
                assert!(r.text.contains("header.from=sender.example"), "{}", r.text);
            }
            v => panic!("{v:?}"),
        }
        let o = run(
            "{}",
            auth(AuthResult::Fail, Some(DmarcDisposition::Quarantine)),
        );
        assert!(
            matches!(o.verdict, Verdict::Quarantine(_)),
            "{:?}",
            o.verdict
        );
        let o = run("{}", auth(AuthResult::Fail, Some(DmarcDisposition::None)));
        assert_eq!(o.verdict, Verdict::Continue);
        let o = run("{}", auth(AuthResult::Pass, Some(DmarcDisposition::Reject)));
        assert_eq!(o.verdict, Verdict::Continue);
        let Modification::ChangeHeader(h) = &o.modifications[0] else {
            panic!("{:?}", o.modifications)
        };
        assert!(h.value.starts_with("accept dmarc=pass"), "{}", h.value);
    }

    #[test]
    fn overrides_and_allowlists_change_the_outcome() {
        let reject = || auth(AuthResult::Fail, Some(DmarcDisposition::Reject));
        let o = run(
            r#"{"overrides": {"sender.example": "quarantine"}}"#,
            reject(),
        );
        assert!(
            matches!(o.verdict, Verdict::Quarantine(_)),
            "{:?}",
            o.verdict
        );
        // A parent domain's override covers the subdomain; a sibling's does not.
        let o = run(r#"{"overrides": {"example": "none"}}"#, reject());
        assert_eq!(o.verdict, Verdict::Continue);
        let o = run(r#"{"overrides": {"other.example": "none"}}"#, reject());
        assert!(matches!(o.verdict, Verdict::Reject(_)));
        let o = run(r#"{"allow_domains": ["sender.example"]}"#, reject());
        assert_eq!(o.verdict, Verdict::Continue);
        let o = run(r#"{"allow_networks": ["192.0.2.0/24"]}"#, reject());
        assert_eq!(o.verdict, Verdict::Continue);
        let o = run(r#"{"allow_networks": ["198.51.100.0/24"]}"#, reject());
        assert!(matches!(o.verdict, Verdict::Reject(_)));
    }

    #[test]
    fn local_policy_applies_without_a_record() {
        let none = || auth(AuthResult::None, None);
        assert_eq!(run("{}", none()).verdict, Verdict::Continue);
        let o = run(r#"{"spf_fail_without_dmarc": "reject"}"#, none());
        assert!(matches!(o.verdict, Verdict::Reject(_)), "{:?}", o.verdict);
        // DKIM did not fail here (no signature), so its knob does not apply.
        let o = run(r#"{"dkim_fail_without_dmarc": "reject"}"#, none());
        assert_eq!(o.verdict, Verdict::Continue);
        let mut a = none();
        a.dkim[0].result = AuthResult::Fail;
        let o = run(
            r#"{"spf_fail_without_dmarc": "quarantine", "dkim_fail_without_dmarc": "reject"}"#,
            a,
        );
        assert!(matches!(o.verdict, Verdict::Reject(_)), "{:?}", o.verdict);
    }

    #[test]
    fn report_facts_are_kept_in_a_note() {
        let a = auth(AuthResult::Fail, Some(DmarcDisposition::Quarantine));
        let note = report_note(&connection("192.0.2.7"), &a, "quarantine").unwrap();
        assert_eq!(
            note,
            "rua=mailto:rua@sender.example source-ip=192.0.2.7 header-from=sender.example \
             disposition=quarantine dmarc=fail spf=fail spf-aligned=false dkim=:none dkim-aligned=false"
        );
    }

    #[test]
    fn a_bad_override_is_refused_at_init() {
        let e = DmarcPolicy::init(config(r#"{"overrides": {"a.example": "drop"}}"#))
            .err()
            .unwrap();
        assert!(e.contains("overrides.a.example"), "{e}");
    }
}
