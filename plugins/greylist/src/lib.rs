//! greylist: classic triplet greylisting at `rcpt`. The first attempt for a (client network,
//! sender, recipient) triplet is answered 451; a retry after `delay_secs` (and within
//! `retry_window_secs`) passes and the triplet is remembered for `pass_ttl_secs`, so legitimate
//! senders that retry are delayed once. State lives in kv (per triplet), the time from the clock.
//! Store errors (a shared Redis down or slow) fail open by default: the recipient passes and a
//! warning is logged. `on_kv_error = "tempfail"` answers `451 4.3.0` instead.

use serde::Deserialize;
use wasmtp_plugin_sdk::kv::OnKvError;
use wasmtp_plugin_sdk::net::{IpNet, domain_of, ip_in, network_of, parse_nets};
use wasmtp_plugin_sdk::{Config, Connection, Envelope, Outcome, Plugin, Recipient, Verdict};
use wasmtp_plugin_sdk::{clock, kv, log};

/// The `[plugin.config]` table.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// How long a new triplet is refused, in seconds.
    delay_secs: u64,
    /// How long a refused triplet is remembered waiting for a retry, in seconds.
    retry_window_secs: u32,
    /// How long a triplet that passed stays allowed (refreshed on every pass), in seconds.
    pass_ttl_secs: u32,
    /// Client addresses or networks never greylisted.
    allow_ips: Vec<String>,
    /// Sender domains never greylisted.
    allow_sender_domains: Vec<String>,
    /// Recipients (full addresses or bare domains) never greylisted.
    allow_recipients: Vec<String>,
    /// Clients are grouped by IPv4 network of this many bits (senders retry from pools).
    ipv4_prefix: u8,
    /// Clients are grouped by IPv6 network of this many bits.
    ipv6_prefix: u8,
    /// Whether authenticated sessions skip greylisting.
    skip_authenticated: bool,
    /// What a kv error means: `accept` (fail open, the default) or `tempfail` (fail closed).
    on_kv_error: OnKvError,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            delay_secs: 300,
            retry_window_secs: 86_400,
            pass_ttl_secs: 36 * 86_400,
            allow_ips: vec!["127.0.0.0/8".into(), "::1".into()],
            allow_sender_domains: Vec::new(),
            allow_recipients: Vec::new(),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            skip_authenticated: true,
            on_kv_error: OnKvError::Accept,
        }
    }
}

struct Greylist {
    s: Settings,
    allow_ips: Vec<IpNet>,
}

/// What kv holds per triplet: the first-seen time in ms, or `pass` once it passed.
const PASSED: &[u8] = b"pass";

impl Greylist {
    fn exempt(&self, conn: &Connection, sender: &str, rcpt: &str) -> bool {
        let rcpt_lc = rcpt.to_ascii_lowercase();
        let rcpt_domain = domain_of(rcpt);
        (self.s.skip_authenticated && conn.authenticated.is_some())
            || ip_in(&conn.peer_ip, &self.allow_ips)
            || self
                .s
                .allow_sender_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&domain_of(sender)))
            || self
                .s
                .allow_recipients
                .iter()
                .map(|a| a.to_ascii_lowercase())
                .any(|a| a == rcpt_lc || a == rcpt_domain)
    }

    fn check(&self, key: &str) -> Result<Verdict, String> {
        let now = clock::now_millis();
        match kv::get(key)? {
            Some(v) if v == PASSED => {
                kv::set(key, PASSED, Some(self.s.pass_ttl_secs))?;
                Ok(Verdict::Continue)
            }
            Some(v) => {
                let first: u64 = String::from_utf8_lossy(&v).parse().unwrap_or(now);
                let waited = now.saturating_sub(first) / 1000;
                if waited >= self.s.delay_secs {
                    kv::set(key, PASSED, Some(self.s.pass_ttl_secs))?;
                    Ok(Verdict::Continue)
                } else {
                    Ok(self.refuse(self.s.delay_secs - waited))
                }
            }
            None => {
                kv::set(
                    key,
                    now.to_string().as_bytes(),
                    Some(self.s.retry_window_secs),
                )?;
                Ok(self.refuse(self.s.delay_secs))
            }
        }
    }

    fn refuse(&self, remaining: u64) -> Verdict {
        Verdict::tempfail_with(
            451,
            "4.7.1",
            format!("Greylisted, please try again in {remaining} seconds"),
        )
    }
}

impl Plugin for Greylist {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let allow_ips = parse_nets(&s.allow_ips)?;
        Ok(Greylist { s, allow_ips })
    }

    fn rcpt(&self, conn: &Connection, env: &Envelope, rcpt: &Recipient) -> Outcome {
        if self.s.delay_secs == 0 || self.exempt(conn, &env.sender, &rcpt.address) {
            return Outcome::CONTINUE;
        }
        let net = network_of(&conn.peer_ip, self.s.ipv4_prefix, self.s.ipv6_prefix);
        let key = format!(
            "t:{net}|{}|{}",
            env.sender.to_ascii_lowercase(),
            rcpt.address.to_ascii_lowercase()
        );
        match self.check(&key) {
            Ok(verdict) => verdict.into(),
            Err(e) if self.s.on_kv_error == OnKvError::Tempfail => {
                log::warn(&format!("greylist: kv error, deferring {key}: {e}"));
                Verdict::tempfail_with(451, "4.3.0", "Greylisting unavailable, try again later")
                    .into()
            }
            Err(e) => {
                log::warn(&format!("greylist: kv error, letting {key} through: {e}"));
                Outcome::CONTINUE
            }
        }
    }
}

wasmtp_plugin_sdk::export!(Greylist);
wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtp_plugin_sdk::testing::{self, FakeHost};

    fn rcpt(p: &Greylist, ip: &str, from: &str, to: &str) -> Verdict {
        let env = testing::envelope(from, &[]);
        p.rcpt(&testing::connection(ip), &env, &testing::recipient(to))
            .verdict
    }

    #[test]
    fn first_attempt_deferred_retry_after_delay_passes() {
        let host = FakeHost::new();
        let p = Greylist::init(testing::config(r#"{"delay_secs": 300}"#)).unwrap();
        assert!(matches!(
            rcpt(&p, "192.0.2.1", "a@x.example", "b@y.example"),
            Verdict::Tempfail(_)
        ));
        host.advance_secs(60);
        assert!(matches!(
            rcpt(&p, "192.0.2.1", "a@x.example", "b@y.example"),
            Verdict::Tempfail(_)
        ));
        host.advance_secs(241);
        assert_eq!(
            rcpt(&p, "192.0.2.1", "a@x.example", "b@y.example"),
            Verdict::Continue
        );
        // Remembered: a retry from the same /24 a day later passes at once.
        host.advance_secs(86_400);
        assert_eq!(
            rcpt(&p, "192.0.2.200", "A@X.example", "b@y.example"),
            Verdict::Continue
        );
        // A different triplet is greylisted.
        assert!(rcpt(&p, "192.0.2.1", "a@x.example", "c@y.example").is_refusal());
    }

    #[test]
    fn retry_window_expires() {
        let host = FakeHost::new();
        let p = Greylist::init(testing::config(r#"{"retry_window_secs": 600}"#)).unwrap();
        assert!(rcpt(&p, "192.0.2.1", "a@x", "b@y").is_refusal());
        host.advance_secs(601);
        // The first attempt was forgotten: this counts as a new first attempt.
        assert!(rcpt(&p, "192.0.2.1", "a@x", "b@y").is_refusal());
    }

    #[test]
    fn allowlists() {
        let _host = FakeHost::new();
        let p = Greylist::init(testing::config(
            r#"{"allow_ips": ["198.51.100.0/24"], "allow_sender_domains": ["Trusted.example"],
                "allow_recipients": ["postmaster@y.example", "open.example"]}"#,
        ))
        .unwrap();
        assert_eq!(rcpt(&p, "198.51.100.9", "a@x", "b@y"), Verdict::Continue);
        assert_eq!(
            rcpt(&p, "192.0.2.1", "a@trusted.example", "b@y"),
            Verdict::Continue
        );
        assert_eq!(
            rcpt(&p, "192.0.2.1", "a@x", "Postmaster@y.example"),
            Verdict::Continue
        );
        assert_eq!(
            rcpt(&p, "192.0.2.1", "a@x", "anyone@open.example"),
            Verdict::Continue
        );
        assert!(rcpt(&p, "192.0.2.1", "a@x", "b@y.example").is_refusal());
    }

    #[test]
    fn store_errors_fail_open() {
        let host = FakeHost::new();
        host.fail_kv(Some("down"));
        let p = Greylist::init(Config::empty()).unwrap();
        assert_eq!(rcpt(&p, "192.0.2.1", "a@x", "b@y"), Verdict::Continue);
        let closed = Greylist::init(testing::config(r#"{"on_kv_error": "tempfail"}"#)).unwrap();
        assert!(matches!(
            rcpt(&closed, "192.0.2.1", "a@x", "b@y"),
            Verdict::Tempfail(_)
        ));
    }
}
