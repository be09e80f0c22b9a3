//! `[outbound]`: how mail leaves (the SMTP client's identity, limits and
//! timeouts), `[outbound.smarthost]` and `[[outbound.route]]`. Owned here,
//! assembled by `config`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::value::{AtLeast, ByteSize, Domain, Dur};

/// TLS towards the next hop.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, any certificate; plaintext when not offered
    /// (RFC 3207 opportunistic TLS, what MX delivery does by default).
    #[default]
    Opportunistic,
    /// STARTTLS must succeed (any certificate), else the attempt is a
    /// temporary failure.
    Require,
    /// STARTTLS must succeed with a certificate valid for the host name
    /// (webpki roots, or `ca_file`).
    Verify,
}

impl TlsPolicy {
    /// The policy as written in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Require => "require",
            TlsPolicy::Verify => "verify",
        }
    }
}

/// `[outbound]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOutbound {
    /// Name sent in EHLO/HELO (default: `server.hostname`).
    pub helo_name: Option<Domain>,
    /// TLS policy for MX delivery (routes and the smarthost have their own).
    pub tls: Option<TlsPolicy>,
    /// TCP port of MX hosts and address literals (25). Only for tests and
    /// special setups: the whole Internet listens on 25.
    pub mx_port: Option<u16>,
    /// Outbound connections open at once, all destinations.
    pub max_connections: Option<AtLeast<1>>,
    /// Outbound connections open at once to one destination.
    pub max_connections_per_destination: Option<AtLeast<1>>,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: Option<AtLeast<1>>,
    /// How long an idle connection is kept for the next message.
    pub idle_timeout: Option<Dur>,
    /// More `Received:` fields than this is a mail loop (permanent 5.4.6).
    pub max_received: Option<AtLeast<1>>,
    /// `[outbound.timeouts]`
    #[serde(default)]
    pub timeouts: RawClientTimeouts,
    /// `[outbound.smarthost]`: every remote recipient without a static
    /// route goes here instead of to its MX.
    pub smarthost: Option<RawTarget>,
    /// `[[outbound.route]]`: per domain, first match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    /// `[outbound.mta_sts]`: MTA-STS (RFC 8461) for MX delivery.
    #[serde(default)]
    pub mta_sts: RawMtaSts,
    /// `[outbound.dane]`: DANE (RFC 7672) for MX delivery.
    #[serde(default)]
    pub dane: RawDane,
    /// `[outbound.tls_rpt]`: TLS-RPT (RFC 8460) result counts.
    #[serde(default)]
    pub tls_rpt: RawTlsRpt,
}

/// `[outbound.mta_sts]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMtaSts {
    /// Look up and apply the policies of recipient domains (true).
    pub enabled: Option<bool>,
    /// The HTTPS fetch of a policy, connect to last byte (10s).
    pub fetch_timeout: Option<Dur>,
    /// Largest policy accepted (64KiB, RFC 8461 §3.3).
    pub max_policy_size: Option<ByteSize>,
    /// Policies kept in the cache (memory and the queue's store).
    pub max_cache_entries: Option<AtLeast<1>>,
    /// CA certificates (PEM) trusted besides the public roots, for the
    /// policy fetch and the MX certificates of `enforce`/`testing`.
    pub ca_file: Option<PathBuf>,
    /// Port of `mta-sts.<domain>` (443; for tests).
    pub https_port: Option<u16>,
}

/// DANE mode.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DaneMode {
    /// No TLSA lookups.
    #[default]
    Off,
    /// TLSA looked up over DNSSEC for every MX host; usable records make
    /// TLS mandatory and pin the certificate (RFC 7672).
    Opportunistic,
}

/// `[outbound.dane]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDane {
    /// "off" (default) or "opportunistic".
    pub mode: Option<DaneMode>,
    /// DNSKEY records (zone file syntax) trusted as DNSSEC anchors
    /// instead of the root's built-in keys.
    pub trust_anchor: Option<PathBuf>,
}

/// `[outbound.tls_rpt]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTlsRpt {
    /// Record TLS results per policy domain (true).
    pub enabled: Option<bool>,
    /// Directory of the daily result files (`<data_dir>/tls-rpt`).
    pub dir: Option<PathBuf>,
    /// Policy domains recorded per day; results for more are counted
    /// in the log and metrics only.
    pub max_domains: Option<AtLeast<1>>,
    /// `organization-name` in reports (default: `server.hostname`).
    pub organization: Option<String>,
    /// `contact-info` in reports (default: `postmaster@<server.hostname>`).
    pub contact: Option<String>,
}

/// Resolved `[outbound.mta_sts]`.
#[derive(Debug, Clone)]
pub struct MtaStsSettings {
    /// Apply policies.
    pub enabled: bool,
    /// Fetch bound.
    pub fetch_timeout: Duration,
    /// Size bound.
    pub max_policy_size: u64,
    /// Cache bound.
    pub max_cache_entries: usize,
    /// Extra CAs.
    pub ca_file: Option<PathBuf>,
    /// HTTPS port.
    pub https_port: u16,
}

/// Resolved `[outbound.dane]`.
#[derive(Debug, Clone)]
pub struct DaneSettings {
    /// Mode.
    pub mode: DaneMode,
    /// Trust anchor file.
    pub trust_anchor: Option<PathBuf>,
}

/// Resolved `[outbound.tls_rpt]`.
#[derive(Debug, Clone)]
pub struct TlsRptSettings {
    /// Record results.
    pub enabled: bool,
    /// Result files (None: `<data_dir>/tls-rpt`).
    pub dir: Option<PathBuf>,
    /// Domains per day.
    pub max_domains: usize,
    /// Report organization.
    pub organization: String,
    /// Report contact.
    pub contact: String,
}

/// `[outbound.timeouts]` (RFC 5321 §4.5.3.2 defaults).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawClientTimeouts {
    /// TCP connect, per address.
    pub connect: Option<Dur>,
    /// The 220 greeting (§4.5.3.2.1: 5 minutes).
    pub greeting: Option<Dur>,
    /// EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET replies (§4.5.3.2.2-3: 5 minutes).
    pub command: Option<Dur>,
    /// The 354 after DATA (§4.5.3.2.4: 2 minutes).
    pub data_init: Option<Dur>,
    /// Each write of message data (§4.5.3.2.5: 3 minutes).
    pub data_block: Option<Dur>,
    /// The reply after the final dot (§4.5.3.2.6: 10 minutes).
    pub data_done: Option<Dur>,
}

/// A next hop: `[outbound.smarthost]` or one `[[outbound.route]]`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// For a route: `example.org` (exactly) or `*.example.org` (any
    /// subdomain, not the domain itself). Not used for the smarthost.
    pub domain: Option<String>,
    /// Host name or IP address (no MX lookup).
    pub host: Option<String>,
    /// TCP port (25, or 24 with `lmtp`).
    pub port: Option<u16>,
    /// TLS policy for this hop.
    pub tls: Option<TlsPolicy>,
    /// CA certificates (PEM) that `tls = "verify"` trusts instead of the
    /// public roots.
    pub ca_file: Option<PathBuf>,
    /// AUTH PLAIN/LOGIN user (only over TLS).
    pub auth_user: Option<String>,
    /// Its password.
    pub auth_password: Option<String>,
    /// Or a file whose first line is the password.
    pub auth_password_file: Option<PathBuf>,
    /// Speak LMTP (RFC 2033) instead of SMTP.
    pub lmtp: Option<bool>,
}

/// `[[outbound.route]]`
pub type RawRoute = RawTarget;

/// Resolved `[outbound]`.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// EHLO name.
    pub helo_name: String,
    /// TLS policy for MX delivery.
    pub tls: TlsPolicy,
    /// Port of MX hosts and address literals.
    pub mx_port: u16,
    /// Connections in total.
    pub max_connections: usize,
    /// Connections per destination.
    pub max_connections_per_destination: usize,
    /// Messages per connection.
    pub max_messages_per_connection: usize,
    /// Idle connection lifetime.
    pub idle_timeout: Duration,
    /// Loop limit on `Received:` fields.
    pub max_received: usize,
    /// Client timeouts.
    pub timeouts: ClientTimeouts,
    /// The smarthost, if any.
    pub smarthost: Option<Target>,
    /// Static routes, in config order.
    pub routes: Vec<StaticRoute>,
    /// MTA-STS.
    pub mta_sts: MtaStsSettings,
    /// DANE.
    pub dane: DaneSettings,
    /// TLS-RPT.
    pub tls_rpt: TlsRptSettings,
}

/// Resolved client timeouts.
#[derive(Debug, Clone)]
pub struct ClientTimeouts {
    /// TCP connect, per address.
    pub connect: Duration,
    /// The greeting.
    pub greeting: Duration,
    /// Command replies.
    pub command: Duration,
    /// The 354.
    pub data_init: Duration,
    /// Each data write.
    pub data_block: Duration,
    /// The final reply.
    pub data_done: Duration,
}

/// AUTH credentials for a hop.
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <password>)", self.user)
    }
}

/// A configured next hop.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// CA file for `verify`.
    pub ca_file: Option<PathBuf>,
    /// AUTH, if configured (the policy is never `none` then).
    pub auth: Option<Credentials>,
    /// LMTP instead of SMTP.
    pub lmtp: bool,
}

/// Which recipient domains a static route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// This domain only.
    Exact(String),
    /// Any subdomain of this one (`*.example.org`), not the domain itself.
    Subdomains(String),
}

impl DomainPattern {
    /// True when `domain` (any case) is taken by this pattern.
    pub fn matches(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        match self {
            DomainPattern::Exact(p) => d == *p,
            DomainPattern::Subdomains(p) => {
                d.len() > p.len() + 1
                    && d.ends_with(p.as_str())
                    && d.as_bytes()[d.len() - p.len() - 1] == b'.'
            }
        }
    }
}

/// One `[[outbound.route]]`.
#[derive(Debug, Clone)]
pub struct StaticRoute {
    /// Recipient domains it takes.
    pub domain: DomainPattern,
    /// Where they go.
    pub target: Target,
}

/// Resolves `[outbound]`; errors name the key (`outbound.route[1].host`).
pub fn resolve(raw: RawOutbound, hostname: &str) -> Result<OutboundSettings, (String, String)> {
    let t = raw.timeouts;
    let d = |v: Option<Dur>, secs: u64| v.map_or(Duration::from_secs(secs), |d| d.0);
    let timeouts = ClientTimeouts {
        connect: d(t.connect, 30),
        greeting: d(t.greeting, 300),
        command: d(t.command, 300),
        data_init: d(t.data_init, 120),
        data_block: d(t.data_block, 180),
        data_done: d(t.data_done, 600),
    };
    if raw.mx_port == Some(0) {
        return Err((
            "outbound.mx_port".into(),
            "must be a port, 1 to 65535".into(),
        ));
    }
    let smarthost = raw
        .smarthost
        .map(|s| {
            if s.domain.is_some() {
                return Err((
                    "outbound.smarthost.domain".into(),
                    "the smarthost takes every domain; `domain` belongs to [[outbound.route]]"
                        .into(),
                ));
            }
            resolve_target(s, "outbound.smarthost")
        })
        .transpose()?;
    let mut routes = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = format!("outbound.route[{i}]");
        let Some(domain) = r.domain.clone() else {
            return Err((
                format!("{key}.domain"),
                "missing: the recipient domain this route takes (`example.org` or `*.example.org`)"
                    .into(),
            ));
        };
        let domain = parse_pattern(&domain).ok_or_else(|| {
            (
                format!("{key}.domain"),
                format!(
                    "invalid domain pattern {domain:?}: expected `example.org` or `*.example.org`"
                ),
            )
        })?;
        routes.push(StaticRoute {
            domain,
            target: resolve_target(r, &key)?,
        });
    }
    let (mta_sts, dane, tls_rpt) =
        resolve_tls_policy(raw.mta_sts, raw.dane, raw.tls_rpt, hostname)?;
    Ok(OutboundSettings {
        mta_sts,
        dane,
        tls_rpt,
        helo_name: raw.helo_name.map_or_else(|| hostname.to_string(), |d| d.0),
        tls: raw.tls.unwrap_or_default(),
        mx_port: raw.mx_port.unwrap_or(25),
        max_connections: raw.max_connections.map_or(100, |n| n.0),
        max_connections_per_destination: raw.max_connections_per_destination.map_or(10, |n| n.0),
        max_messages_per_connection: raw.max_messages_per_connection.map_or(100, |n| n.0),
        idle_timeout: d(raw.idle_timeout, 30),
        max_received: raw.max_received.map_or(50, |n| n.0),
        timeouts,
        smarthost,
        routes,
    })
}

fn resolve_tls_policy(
    m: RawMtaSts,
    d: RawDane,
    r: RawTlsRpt,
    hostname: &str,
) -> Result<(MtaStsSettings, DaneSettings, TlsRptSettings), (String, String)> {
    let readable = |p: &Option<PathBuf>, key: &str| match p {
        Some(p) => std::fs::metadata(p)
            .map(|_| ())
            .map_err(|e| (key.to_string(), format!("cannot read {}: {e}", p.display()))),
        None => Ok(()),
    };
    readable(&m.ca_file, "outbound.mta_sts.ca_file")?;
    readable(&d.trust_anchor, "outbound.dane.trust_anchor")?;
    if m.https_port == Some(0) {
        return Err((
            "outbound.mta_sts.https_port".into(),
            "must be a port, 1 to 65535".into(),
        ));
    }
    let mta_sts = MtaStsSettings {
        enabled: m.enabled.unwrap_or(true),
        fetch_timeout: m.fetch_timeout.map_or(Duration::from_secs(10), |d| d.0),
        max_policy_size: m.max_policy_size.map_or(64 * 1024, |b| b.0),
        max_cache_entries: m.max_cache_entries.map_or(10_000, |n| n.0),
        ca_file: m.ca_file,
        https_port: m.https_port.unwrap_or(443),
    };
    let dane = DaneSettings {
        mode: d.mode.unwrap_or_default(),
        trust_anchor: d.trust_anchor,
    };
    let tls_rpt = TlsRptSettings {
        enabled: r.enabled.unwrap_or(true),
        dir: r.dir,
        max_domains: r.max_domains.map_or(10_000, |n| n.0),
        organization: r.organization.unwrap_or_else(|| hostname.to_string()),
        contact: r
            .contact
            .unwrap_or_else(|| format!("postmaster@{hostname}")),
    };
    Ok((mta_sts, dane, tls_rpt))
}

fn parse_pattern(s: &str) -> Option<DomainPattern> {
    let s = s.trim_end_matches('.').to_ascii_lowercase();
    let (sub, name) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, s),
    };
    crate::smtp::address::check_domain(&name).ok()?;
    if name.starts_with('[') {
        return None;
    }
    Some(if sub {
        DomainPattern::Subdomains(name)
    } else {
        DomainPattern::Exact(name)
    })
}

fn resolve_target(r: RawTarget, key: &str) -> Result<Target, (String, String)> {
    let Some(host) = r.host else {
        return Err((
            format!("{key}.host"),
            "missing: the host name or address to deliver to".into(),
        ));
    };
    let lmtp = r.lmtp.unwrap_or(false);
    let tls = r.tls.unwrap_or_default();
    let password = match (r.auth_password, r.auth_password_file) {
        (Some(_), Some(_)) => {
            return Err((
                format!("{key}.auth_password_file"),
                "give auth_password or auth_password_file, not both".into(),
            ));
        }
        (Some(p), None) => Some(p),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                (
                    format!("{key}.auth_password_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(text.lines().next().unwrap_or_default().to_string())
        }
        (None, None) => None,
    };
    let auth = match (r.auth_user, password) {
        (Some(user), Some(password)) => Some(Credentials { user, password }),
        (None, None) => None,
        (Some(_), None) => {
            return Err((
                format!("{key}.auth_password"),
                "auth_user needs auth_password or auth_password_file".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                format!("{key}.auth_user"),
                "a password needs auth_user".into(),
            ));
        }
    };
    if auth.is_some() && matches!(tls, TlsPolicy::None | TlsPolicy::Opportunistic) {
        return Err((
            format!("{key}.tls"),
            format!(
                "AUTH is only sent over TLS: set tls = \"require\" or \"verify\" (is \"{}\")",
                tls.as_str()
            ),
        ));
    }
    if let Some(ca) = &r.ca_file {
        if tls != TlsPolicy::Verify {
            return Err((
                format!("{key}.ca_file"),
                "ca_file is used only with tls = \"verify\"".into(),
            ));
        }
        std::fs::metadata(ca).map_err(|e| {
            (
                format!("{key}.ca_file"),
                format!("cannot read {}: {e}", ca.display()),
            )
        })?;
    }
    Ok(Target {
        host,
        port: r.port.unwrap_or(if lmtp { 24 } else { 25 }),
        tls,
        ca_file: r.ca_file,
        auth,
        lmtp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_patterns() {
        let exact = parse_pattern("Example.ORG").unwrap();
        assert!(exact.matches("example.org") && exact.matches("EXAMPLE.org."));
        assert!(!exact.matches("a.example.org"));
        let sub = parse_pattern("*.example.org").unwrap();
        assert!(sub.matches("a.example.org") && sub.matches("b.a.example.org"));
        assert!(!sub.matches("example.org") && !sub.matches("badexample.org"));
        assert!(parse_pattern("*.").is_none() && parse_pattern("a b").is_none());
    }

    #[test]
    fn auth_needs_tls() {
        let raw = RawTarget {
            host: Some("smarthost.test".into()),
            auth_user: Some("u".into()),
            auth_password: Some("p".into()),
            ..RawTarget::default()
        };
        let e = resolve_target(raw.clone(), "outbound.smarthost").unwrap_err();
        assert_eq!(e.0, "outbound.smarthost.tls");
        let t = resolve_target(
            RawTarget {
                tls: Some(TlsPolicy::Require),
                ..raw
            },
            "outbound.smarthost",
        )
        .unwrap();
        assert_eq!((t.port, t.auth.unwrap().user.as_str()), (25, "u"));
    }
}
