//! router: recipient rewriting at `rcpt` and per-recipient routes at `deliver`.
//!
//! At `rcpt`, for recipients in `local_domains`: plus-addressing is folded (`bob+news@x` becomes
//! `bob@x`), `aliases` expand to one or more addresses, unknown mailboxes go to the domain's
//! `catch_all` (or are refused when `reject_unknown`). The rewrite is returned as
//! `remove-recipient` + `add-recipient`. At `deliver`, recipients in a `relay` domain are relayed
//! to its host, recipients in `local_domains` go to their (canonical) local mailbox, and the
//! rest is left to the server.

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmtp_plugin_sdk::net::{domain_of, local_part_of};
use wasmtp_plugin_sdk::{Config, Connection, Envelope, Modification, Outcome, Plugin, Recipient};
use wasmtp_plugin_sdk::{Route, Verdict};

/// One alias target or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Targets {
    One(String),
    Many(Vec<String>),
}

/// The `[plugin.config]` table.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Domains whose recipients are delivered locally.
    local_domains: Vec<String>,
    /// Known local mailboxes (full addresses). Needed for catch-all and `reject_unknown`.
    mailboxes: Vec<String>,
    /// Alias address => target address(es).
    aliases: BTreeMap<String, Targets>,
    /// Local domain => address that receives mail for unknown mailboxes of that domain.
    catch_all: BTreeMap<String, String>,
    /// Refuse unknown local mailboxes that have no catch-all (550 5.1.1).
    reject_unknown: bool,
    /// The plus-addressing separator; `""` disables plus-addressing. Default `+`.
    plus_separator: Option<String>,
    /// Domain => `host` or `host:port` to relay to; `*.example.com` matches subdomains.
    relay: BTreeMap<String, String>,
}

struct Router {
    local_domains: Vec<String>,
    mailboxes: Vec<String>,
    aliases: BTreeMap<String, Vec<String>>,
    catch_all: BTreeMap<String, String>,
    reject_unknown: bool,
    plus: String,
    relay: Vec<(String, Route)>,
}

fn parse_relay(target: &str) -> Result<Route, String> {
    match target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("router: bad port in relay target {target:?}"))?;
            Ok(Route::relay_port(host, port))
        }
        _ => Ok(Route::relay(target.trim_matches(['[', ']']))),
    }
}

impl Router {
    fn is_local(&self, address: &str) -> bool {
        self.local_domains.contains(&domain_of(address))
    }

    /// `Bob+news@Example.ORG` => `bob@example.org` (local part lowercased too: mailbox names
    /// here are case-insensitive).
    fn canonical(&self, address: &str) -> String {
        let local = local_part_of(address).to_ascii_lowercase();
        let local = match self.plus.as_str() {
            "" => local.as_str(),
            sep => local
                .split_once(sep)
                .map_or(local.as_str(), |(base, _)| base),
        }
        .to_string();
        format!("{local}@{}", domain_of(address))
    }

    /// What a local recipient becomes: the final addresses, or none when unknown.
    fn resolve(&self, address: &str) -> Option<Vec<String>> {
        let canon = self.canonical(address);
        if let Some(targets) = self.aliases.get(&canon) {
            return Some(targets.clone());
        }
        if self.mailboxes.is_empty() || self.mailboxes.contains(&canon) {
            return Some(vec![canon]);
        }
        self.catch_all
            .get(&domain_of(&canon))
            .map(|c| vec![c.clone()])
    }

    fn relay_route(&self, address: &str) -> Option<Route> {
        let domain = domain_of(address);
        self.relay.iter().find_map(|(pattern, route)| {
            let hit = match pattern.strip_prefix("*.") {
                Some(parent) => domain.ends_with(&format!(".{parent}")),
                None => domain == *pattern,
            };
            hit.then(|| route.clone())
        })
    }
}

impl Plugin for Router {
    fn init(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let lc = |v: &str| v.trim().to_ascii_lowercase();
        let mut aliases = BTreeMap::new();
        for (from, to) in s.aliases {
            let to = match to {
                Targets::One(t) => vec![lc(&t)],
                Targets::Many(ts) => ts.iter().map(|t| lc(t)).collect(),
            };
            if to.is_empty() {
                return Err(format!("router: alias {from:?} has no target"));
            }
            aliases.insert(lc(&from), to);
        }
        let mut relay = Vec::new();
        for (domain, target) in &s.relay {
            relay.push((lc(domain), parse_relay(target.trim())?));
        }
        Ok(Router {
            local_domains: s.local_domains.iter().map(|d| lc(d)).collect(),
            mailboxes: s.mailboxes.iter().map(|m| lc(m)).collect(),
            aliases,
            catch_all: s.catch_all.iter().map(|(d, a)| (lc(d), lc(a))).collect(),
            reject_unknown: s.reject_unknown,
            plus: s.plus_separator.unwrap_or_else(|| "+".into()),
            relay,
        })
    }

    fn rcpt(&self, _conn: &Connection, _env: &Envelope, rcpt: &Recipient) -> Outcome {
        if !self.is_local(&rcpt.address) {
            return Outcome::CONTINUE;
        }
        match self.resolve(&rcpt.address) {
            Some(targets) if targets.len() == 1 && targets[0] == rcpt.address => Outcome::CONTINUE,
            Some(targets) => {
                let mut out = Outcome::CONTINUE.with(Modification::remove_recipient(&rcpt.address));
                for t in targets {
                    out = out.with(Modification::add_recipient(t));
                }
                out
            }
            None if self.reject_unknown => {
                Verdict::reject_with(550, "5.1.1", format!("No such mailbox: {}", rcpt.address))
                    .into()
            }
            None => Outcome::CONTINUE,
        }
    }

    fn deliver(&self, _conn: &Connection, _env: &Envelope, rcpt: &Recipient) -> Route {
        if let Some(route) = self.relay_route(&rcpt.address) {
            return route;
        }
        if self.is_local(&rcpt.address) {
            return Route::local(self.canonical(&rcpt.address));
        }
        Route::Default
    }
}

wasmtp_plugin_sdk::export!(Router);
wasmtp_plugin_sdk::manifest!(include_str!("../wasmtp-plugin.json"));

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtp_plugin_sdk::testing::{self, FakeHost};

    const CONFIG: &str = r#"{
        "local_domains": ["example.org"],
        "mailboxes": ["alice@example.org", "bob@example.org", "postmaster@example.org"],
        "aliases": {"sales@example.org": ["alice@example.org", "bob@example.org"],
                    "abuse@example.org": "postmaster@example.org"},
        "catch_all": {"example.org": "postmaster@example.org"},
        "relay": {"partner.example": "mx.partner.example:2525", "*.corp.example": "10.0.0.5"}
    }"#;

    fn rcpt(p: &Router, to: &str) -> Outcome {
        p.rcpt(
            &testing::connection("192.0.2.1"),
            &testing::envelope("a@x", &[]),
            &testing::recipient(to),
        )
    }

    fn deliver(p: &Router, to: &str) -> Route {
        p.deliver(
            &testing::connection("192.0.2.1"),
            &testing::envelope("a@x", &[to]),
            &testing::recipient(to),
        )
    }

    #[test]
    fn rewrites() {
        let _host = FakeHost::new();
        let p = Router::init(testing::config(CONFIG)).unwrap();
        assert_eq!(rcpt(&p, "alice@example.org"), Outcome::CONTINUE);
        assert_eq!(
            rcpt(&p, "Alice+News@Example.org").modifications,
            vec![
                Modification::remove_recipient("Alice+News@Example.org"),
                Modification::add_recipient("alice@example.org")
            ]
        );
        assert_eq!(
            rcpt(&p, "sales@example.org").modifications,
            vec![
                Modification::remove_recipient("sales@example.org"),
                Modification::add_recipient("alice@example.org"),
                Modification::add_recipient("bob@example.org"),
            ]
        );
        assert_eq!(
            rcpt(&p, "nobody@example.org").modifications[1],
            Modification::add_recipient("postmaster@example.org")
        );
        assert_eq!(rcpt(&p, "someone@elsewhere.example"), Outcome::CONTINUE);
    }

    #[test]
    fn reject_unknown_without_catch_all() {
        let _host = FakeHost::new();
        let p = Router::init(testing::config(
            r#"{"local_domains": ["example.org"], "mailboxes": ["a@example.org"], "reject_unknown": true}"#,
        ))
        .unwrap();
        assert!(matches!(
            rcpt(&p, "zz@example.org").verdict,
            Verdict::Reject(_)
        ));
        assert_eq!(rcpt(&p, "a@example.org").verdict, Verdict::Continue);
    }

    #[test]
    fn routes() {
        let _host = FakeHost::new();
        let p = Router::init(testing::config(CONFIG)).unwrap();
        assert_eq!(
            deliver(&p, "x@partner.example"),
            Route::relay_port("mx.partner.example", 2525)
        );
        assert_eq!(deliver(&p, "x@eu.corp.example"), Route::relay("10.0.0.5"));
        assert_eq!(deliver(&p, "x@corp.example"), Route::Default);
        assert_eq!(
            deliver(&p, "Bob+x@example.org"),
            Route::local("bob@example.org")
        );
        assert_eq!(deliver(&p, "x@gmail.example"), Route::Default);
    }

    #[test]
    fn bad_config() {
        assert!(Router::init(testing::config(r#"{"relay": {"a": "h:notaport"}}"#)).is_err());
        assert!(Router::init(testing::config(r#"{"aliases": {"a@b": []}}"#)).is_err());
        assert!(Router::init(Config::empty()).is_ok());
    }
}
