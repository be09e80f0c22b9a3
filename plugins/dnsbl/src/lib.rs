//! dnsbl: looks the client's address up on DNS blocklists and either refuses the client or adds
//! to its spam score. Runs at `connect` (or at `rcpt`, when configured for that hook, so that the
//! whole session is not refused before the client can reach postmaster). The total score of
//! the zones listing the client goes into the note `score.dnsbl` and the listing zones into
//! `dnsbl.listed`, where spam-score picks them up. DNS failures count as "not listed".

use std::net::IpAddr;

use serde::Deserialize;
use wasmtp_plugin_sdk::dns::{self, DnsError};
use wasmtp_plugin_sdk::net::{IpNet, ip_in, parse_nets};
use wasmtp_plugin_sdk::{Config, Connection, Envelope, Outcome, Plugin, Recipient, Reply};
use wasmtp_plugin_sdk::{Verdict, log, notes};

/// What a listing on a zone does.
#[derive(Deserialize, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "lowercase")]
enum Action {
    /// Refuse the client (554 at connect, 550 at rcpt).
    Reject,
    /// Only add the zone's score to the `score.dnsbl` note.
    Score,
}

/// One blocklist (`[[plugin.config.zones]]`).
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct Zone {
    /// The DNS zone, e.g. `zen.spamhaus.org`.
    zone: String,
    /// What a listing does.
    #[serde(default = "default_action")]
    action: Action,
    /// Score added when listed (used by `score` and recorded for `reject` too).
    #[serde(default = "default_score")]
    score: f64,
    /// Only these answers count as listed (e.g. `["127.0.0.2"]`); empty: any 127.0.0.0/8 answer
    /// except 127.255.255.0/24, which blocklists use for errors such as "query refused".
    #[serde(default)]
    answers: Vec<String>,
}

fn default_action() -> Action {
    Action::Reject
}

fn default_score() -> f64 {
    5.0
}

/// The `[plugin.config]` table.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// The blocklists to query, in order.
    zones: Vec<Zone>,
    /// Clients never looked up (addresses or CIDR networks).
    allow_ips: Vec<String>,
    /// Whether loopback, private and link-local clients are skipped (default true).
    skip_private: Option<bool>,
}

struct Dnsbl {
    zones: Vec<Zone>,
    allow: Vec<IpNet>,
    skip_private: bool,
}

/// A listing found for the client.
struct Hit {
    zone: Zone,
    answer: String,
}

/// The name to look up on `zone` for `ip`: reversed octets (IPv4) or nibbles (IPv6).
fn query_name(ip: IpAddr, zone: &str) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
            let nibbles: Vec<String> = hex.chars().rev().map(|c| c.to_string()).collect();
            format!("{}.{zone}", nibbles.join("."))
        }
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

impl Dnsbl {
    fn lookup(&self, ip: IpAddr) -> Vec<Hit> {
        let mut hits = Vec::new();
        for zone in &self.zones {
            let name = query_name(ip, &zone.zone);
            let answers = match dns::a(&name) {
                Ok(a) => a,
                Err(DnsError::NotFound) => continue,
                Err(e) => {
                    log::warn(&format!(
                        "dnsbl: lookup {name} failed, treating as unlisted: {e:?}"
                    ));
                    continue;
                }
            };
            let listed = answers.into_iter().find(|a| self.counts(zone, a));
            if let Some(answer) = listed {
                hits.push(Hit {
                    zone: zone.clone(),
                    answer,
                });
            }
        }
        hits
    }

    fn counts(&self, zone: &Zone, answer: &str) -> bool {
        if !zone.answers.is_empty() {
            return zone.answers.iter().any(|a| a == answer);
        }
        match answer.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => v4.octets()[0] == 127 && v4.octets()[1..3] != [255, 255],
            _ => false,
        }
    }

    /// Looks the client up once per session (the result is kept in notes) and decides.
    fn check(&self, conn: &Connection, at_connect: bool) -> Verdict {
        let Ok(ip) = conn.peer_ip.parse::<IpAddr>() else {
            return Verdict::Continue;
        };
        if (self.skip_private && is_private(ip)) || ip_in(&conn.peer_ip, &self.allow) {
            return Verdict::Continue;
        }
        if notes::get("dnsbl.checked").is_some() && !at_connect {
            return self.verdict_from_notes(conn);
        }
        let hits = self.lookup(ip);
        notes::set("dnsbl.checked", "1");
        if !hits.is_empty() {
            let score: f64 = hits.iter().map(|h| h.zone.score).sum();
            let zones: Vec<&str> = hits.iter().map(|h| h.zone.zone.as_str()).collect();
            notes::set("score.dnsbl", &format!("{score:.1}"));
            notes::set("dnsbl.listed", &zones.join(","));
            for h in &hits {
                log::info(&format!(
                    "dnsbl: {} listed on {} ({})",
                    conn.peer_ip, h.zone.zone, h.answer
                ));
            }
            if let Some(h) = hits.iter().find(|h| h.zone.action == Action::Reject) {
                notes::set("dnsbl.reject", &h.zone.zone);
            }
        }
        self.verdict_from_notes(conn)
    }

    fn verdict_from_notes(&self, conn: &Connection) -> Verdict {
        match notes::get("dnsbl.reject") {
            Some(zone) => Verdict::Reject(Some(Reply::new(
                554,
                "5.7.1",
                format!("Client host [{}] blocked using {zone}", conn.peer_ip),
            ))),
            None => Verdict::Continue,
        }
    }
}

impl Plugin for Dnsbl {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let allow = parse_nets(&s.allow_ips)?;
        if let Some(z) = s.zones.iter().find(|z| z.zone.trim().is_empty()) {
            return Err(format!("dnsbl: empty zone name in {z:?}"));
        }
        Ok(Dnsbl {
            zones: s.zones,
            allow,
            skip_private: s.skip_private.unwrap_or(true),
        })
    }

    fn connect(&self, conn: &Connection) -> Verdict {
        self.check(conn, true)
    }

    fn rcpt(&self, conn: &Connection, _env: &Envelope, _rcpt: &Recipient) -> Outcome {
        match self.check(conn, false) {
            // At rcpt the refusal is per recipient: 550 is the code for that.
            Verdict::Reject(Some(mut reply)) => {
                reply.code = Some(550);
                Verdict::Reject(Some(reply)).into()
            }
            v => v.into(),
        }
    }
}

wasmtp_plugin_sdk::export!(Dnsbl);
wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtp_plugin_sdk::testing::{self, FakeHost};

    const CONFIG: &str = r#"{"zones": [
        {"zone": "block.example", "action": "reject"},
        {"zone": "score.example", "action": "score", "score": 2.5},
        {"zone": "picky.example", "action": "score", "score": 1.0, "answers": ["127.0.0.4"]}
    ]}"#;

    #[test]
    fn query_names() {
        assert_eq!(
            query_name("192.0.2.1".parse().unwrap(), "z.example"),
            "1.2.0.192.z.example"
        );
        let v6 = query_name("2001:db8::1".parse().unwrap(), "z");
        assert!(v6.starts_with("1.0.0.0.0.0.0.0"));
        assert!(v6.ends_with("8.b.d.0.1.0.0.2.z"));
    }

    #[test]
    fn unlisted_client_continues() {
        let host = FakeHost::new();
        let p = Dnsbl::init(testing::config(CONFIG)).unwrap();
        assert_eq!(
            p.connect(&testing::connection("192.0.2.1")),
            Verdict::Continue
        );
        assert_eq!(host.note("score.dnsbl"), None);
    }

    #[test]
    fn reject_listing_refuses_and_records_score() {
        let host = FakeHost::new();
        host.dns_a("1.2.0.192.block.example", &["127.0.0.2"]);
        host.dns_a("1.2.0.192.score.example", &["127.0.0.3"]);
        let p = Dnsbl::init(testing::config(CONFIG)).unwrap();
        let v = p.connect(&testing::connection("192.0.2.1"));
        assert!(
            matches!(&v, Verdict::Reject(Some(r)) if r.code == Some(554) && r.text.contains("block.example"))
        );
        assert_eq!(host.note("score.dnsbl").as_deref(), Some("7.5"));
        assert_eq!(
            host.note("dnsbl.listed").as_deref(),
            Some("block.example,score.example")
        );
    }

    #[test]
    fn score_only_listing_continues_with_note() {
        let host = FakeHost::new();
        host.dns_a("1.2.0.192.score.example", &["127.0.0.3"]);
        host.dns_a("1.2.0.192.picky.example", &["127.0.0.2"]); // not an answer it counts
        let p = Dnsbl::init(testing::config(CONFIG)).unwrap();
        assert_eq!(
            p.connect(&testing::connection("192.0.2.1")),
            Verdict::Continue
        );
        assert_eq!(host.note("score.dnsbl").as_deref(), Some("2.5"));
    }

    #[test]
    fn error_answers_and_dns_failures_are_not_listings() {
        let host = FakeHost::new();
        host.dns_a("1.2.0.192.block.example", &["127.255.255.254"]);
        host.dns_fail("a", "1.2.0.192.score.example", DnsError::Timeout);
        let p = Dnsbl::init(testing::config(CONFIG)).unwrap();
        assert_eq!(
            p.connect(&testing::connection("192.0.2.1")),
            Verdict::Continue
        );
        assert!(host.logs().iter().any(|(_, l)| l.contains("Timeout")));
    }

    #[test]
    fn rcpt_hook_rejects_with_550_and_looks_up_once() {
        let host = FakeHost::new();
        host.dns_a("1.2.0.192.block.example", &["127.0.0.2"]);
        let p = Dnsbl::init(testing::config(CONFIG)).unwrap();
        let c = testing::connection("192.0.2.1");
        let env = testing::envelope("a@x", &[]);
        let out = p.rcpt(&c, &env, &testing::recipient("b@y"));
        assert!(matches!(
            out.verdict,
            Verdict::Reject(Some(Reply {
                code: Some(550),
                ..
            }))
        ));
        // Delisted meanwhile: the session keeps the first answer (looked up once).
        host.dns_fail("a", "1.2.0.192.block.example", DnsError::NotFound);
        assert!(
            p.rcpt(&c, &env, &testing::recipient("c@y"))
                .verdict
                .is_refusal()
        );
    }

    #[test]
    fn private_and_allowed_clients_skipped() {
        let host = FakeHost::new();
        host.dns_a("1.0.0.10.block.example", &["127.0.0.2"]);
        host.dns_a("1.2.0.192.block.example", &["127.0.0.2"]);
        let p = Dnsbl::init(testing::config(
            r#"{"zones": [{"zone": "block.example"}], "allow_ips": ["192.0.2.0/24"]}"#,
        ))
        .unwrap();
        assert_eq!(
            p.connect(&testing::connection("10.0.0.1")),
            Verdict::Continue
        );
        assert_eq!(
            p.connect(&testing::connection("192.0.2.1")),
            Verdict::Continue
        );
    }
}
