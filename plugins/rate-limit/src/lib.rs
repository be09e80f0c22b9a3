//! rate-limit: caps how many connections and messages one client network may start per time
//! window, using fixed-window counters in the plugin's kv namespace (`kv::incr` with a TTL).
//!
//! Connections are counted at `connect`, messages at `mail-from` (each MAIL FROM starts one).
//! Store errors (a shared Redis down or slow) fail open by default: the client is let through and
//! a warning is logged. `on_kv_error = "tempfail"` fails closed instead: `421 4.3.0` at connect,
//! `451 4.3.0` at mail-from, so no client passes uncounted.

use serde::Deserialize;
use wasmtp_plugin_sdk::kv::OnKvError;
use wasmtp_plugin_sdk::net::{IpNet, ip_in, network_of, parse_nets};
use wasmtp_plugin_sdk::{Config, Connection, Outcome, Params, Plugin, Reply, Verdict, kv, log};

/// The `[plugin.config]` table.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Length of a counting window in seconds.
    window_secs: u32,
    /// Connections allowed per client network and window (0 = unlimited).
    max_connections: u32,
    /// Messages (MAIL FROM commands) allowed per client network and window (0 = unlimited).
    max_messages: u32,
    /// IPv4 clients are counted per network of this many bits (32 = per address).
    ipv4_prefix: u8,
    /// IPv6 clients are counted per network of this many bits.
    ipv6_prefix: u8,
    /// Clients never limited (addresses or CIDR networks).
    exempt: Vec<String>,
    /// Whether authenticated sessions are exempt from the message limit.
    exempt_authenticated: bool,
    /// What a kv error means: `accept` (fail open, the default) or `tempfail` (fail closed).
    on_kv_error: OnKvError,
}

/// How one count came out.
enum Count {
    Within,
    Over,
    /// The store failed and `on_kv_error = "tempfail"`.
    Unknown,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window_secs: 60,
            max_connections: 30,
            max_messages: 100,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            exempt: vec!["127.0.0.0/8".into(), "::1".into()],
            exempt_authenticated: true,
            on_kv_error: OnKvError::Accept,
        }
    }
}

struct RateLimit {
    settings: Settings,
    exempt: Vec<IpNet>,
}

impl RateLimit {
    /// Counts one event of `kind` for the client against `limit`.
    fn count(&self, kind: &str, conn: &Connection, limit: u32) -> Count {
        if limit == 0 || ip_in(&conn.peer_ip, &self.exempt) {
            return Count::Within;
        }
        let s = &self.settings;
        let key = format!(
            "{kind}:{}",
            network_of(&conn.peer_ip, s.ipv4_prefix, s.ipv6_prefix)
        );
        match kv::incr(&key, 1, Some(s.window_secs)) {
            Ok(count) if count > i64::from(limit) => Count::Over,
            Ok(_) => Count::Within,
            Err(e) if s.on_kv_error == OnKvError::Tempfail => {
                log::warn(&format!(
                    "rate-limit: kv error, deferring {}: {e}",
                    conn.peer_ip
                ));
                Count::Unknown
            }
            Err(e) => {
                log::warn(&format!(
                    "rate-limit: kv error, letting {} through: {e}",
                    conn.peer_ip
                ));
                Count::Within
            }
        }
    }
}

impl Plugin for RateLimit {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.window_secs == 0 {
            return Err("window_secs must be at least 1".into());
        }
        let exempt = parse_nets(&settings.exempt)?;
        Ok(RateLimit { settings, exempt })
    }

    fn connect(&self, conn: &Connection) -> Verdict {
        match self.count("conn", conn, self.settings.max_connections) {
            Count::Within => Verdict::Continue,
            Count::Over => {
                log::info(&format!(
                    "rate-limit: too many connections from {}",
                    conn.peer_ip
                ));
                Verdict::Disconnect(Some(Reply::new(
                    421,
                    "4.7.0",
                    "Too many connections from your network, try again later",
                )))
            }
            Count::Unknown => Verdict::Disconnect(Some(Reply::new(
                421,
                "4.3.0",
                "Rate limit state unavailable, try again later",
            ))),
        }
    }

    fn mail_from(&self, conn: &Connection, _sender: &str, _params: &Params) -> Outcome {
        if self.settings.exempt_authenticated && conn.authenticated.is_some() {
            return Outcome::CONTINUE;
        }
        match self.count("msg", conn, self.settings.max_messages) {
            Count::Within => Outcome::CONTINUE,
            Count::Over => {
                log::info(&format!(
                    "rate-limit: too many messages from {}",
                    conn.peer_ip
                ));
                Verdict::tempfail_with(451, "4.7.1", "Message rate exceeded, try again later")
                    .into()
            }
            Count::Unknown => Verdict::tempfail_with(
                451,
                "4.3.0",
                "Rate limit state unavailable, try again later",
            )
            .into(),
        }
    }
}

wasmtp_plugin_sdk::export!(RateLimit);
wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtp_plugin_sdk::testing::{self, FakeHost};

    fn plugin(json: &str) -> RateLimit {
        RateLimit::init(testing::config(json)).unwrap()
    }

    #[test]
    fn connection_limit_per_window() {
        let host = FakeHost::new();
        let p = plugin(r#"{"max_connections": 2, "window_secs": 60}"#);
        let c = testing::connection("192.0.2.1");
        assert_eq!(p.connect(&c), Verdict::Continue);
        assert_eq!(p.connect(&c), Verdict::Continue);
        assert!(matches!(
            p.connect(&c),
            Verdict::Disconnect(Some(Reply {
                code: Some(421),
                ..
            }))
        ));
        // Another client has its own counter.
        assert_eq!(
            p.connect(&testing::connection("192.0.2.2")),
            Verdict::Continue
        );
        // The window expires.
        host.advance_secs(61);
        assert_eq!(p.connect(&c), Verdict::Continue);
    }

    #[test]
    fn message_limit_and_exemptions() {
        let _host = FakeHost::new();
        let p = plugin(r#"{"max_messages": 1, "exempt": ["10.0.0.0/8"]}"#);
        let c = testing::connection("192.0.2.1");
        assert_eq!(p.mail_from(&c, "a@b", &vec![]).verdict, Verdict::Continue);
        assert!(p.mail_from(&c, "a@b", &vec![]).verdict.is_refusal());
        let mut authed = c.clone();
        authed.authenticated = Some("alice".into());
        assert_eq!(
            p.mail_from(&authed, "a@b", &vec![]).verdict,
            Verdict::Continue
        );
        let lan = testing::connection("10.9.8.7");
        for _ in 0..5 {
            assert_eq!(p.mail_from(&lan, "a@b", &vec![]).verdict, Verdict::Continue);
        }
    }

    #[test]
    fn ipv6_grouped_by_prefix() {
        let _host = FakeHost::new();
        let p = plugin(r#"{"max_connections": 1}"#);
        assert_eq!(
            p.connect(&testing::connection("2001:db8::1")),
            Verdict::Continue
        );
        assert!(p.connect(&testing::connection("2001:db8::2")).is_refusal());
    }

    #[test]
    fn store_errors_fail_open() {
        let host = FakeHost::new();
        host.fail_kv(Some("store down"));
        let p = plugin(r#"{"max_connections": 1}"#);
        let c = testing::connection("192.0.2.1");
        assert_eq!(p.connect(&c), Verdict::Continue);
        assert_eq!(p.connect(&c), Verdict::Continue);
        assert!(host.logs().iter().any(|(_, l)| l.contains("store down")));
    }

    #[test]
    fn store_errors_fail_closed_when_configured() {
        let host = FakeHost::new();
        host.fail_kv(Some("store down"));
        let p = plugin(r#"{"max_connections": 1, "on_kv_error": "tempfail"}"#);
        let c = testing::connection("192.0.2.1");
        assert!(matches!(
            p.connect(&c),
            Verdict::Disconnect(Some(Reply {
                code: Some(421),
                ..
            }))
        ));
        assert!(p.mail_from(&c, "a@b", &vec![]).verdict.is_refusal());
        host.fail_kv(None);
        assert_eq!(p.connect(&c), Verdict::Continue);
    }

    #[test]
    fn defaults_and_bad_config() {
        let _host = FakeHost::new();
        assert!(RateLimit::init(Config::empty()).is_ok());
        assert!(RateLimit::init(testing::config(r#"{"exempt": ["nope"]}"#)).is_err());
        assert!(RateLimit::init(testing::config(r#"{"max_conections": 3}"#)).is_err());
    }
}
