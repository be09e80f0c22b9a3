//! Where a remote recipient goes, first match wins: the route a plugin's
//! `deliver` hook chose, a static `[[outbound.route]]` for its domain, the
//! smarthost, then the domain's MX hosts (RFC 5321 §5.1, RFC 7505).
//!
//! The answer is a `Destination`: the hosts to try in order, with their
//! addresses, and the policy for talking to them. Recipients with the same
//! destination key share one transaction (and one connection pool).
//!
//! Every name is resolved with the resolver built from `[dns]`, created once
//! here. MX answers are not cached here: the resolver caches by TTL. What an
//! MX answer means (null MX, preference order) is decided by `read_mx` on
//! plain data; the DNS calls around it only fetch and classify.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use rand::Rng;
use rand::seq::SliceRandom;

use super::config::{Credentials, OutboundSettings, Target, TlsPolicy};
use crate::config::Settings;
use crate::delivery::Failure;
use crate::queue::Route;

/// MX hosts resolved per domain at most: bounds the lookups a hostile
/// zone can cause; the client never gets through more than this anyway.
const MAX_MX_HOSTS: usize = 10;

/// One host to try, with its addresses (in the order to try them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its name: for TLS (SNI, `verify`), logs and DSNs.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

/// Where a group of recipients goes, and how.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Groups recipients into one transaction and keys the connection
    /// pool and the per-destination limit: `mx:example.org`,
    /// `smtp:smarthost.example:587`, `lmtp:127.0.0.1:24`.
    pub key: String,
    /// Hosts to try, in order (MX preference, random among equals).
    pub hosts: Vec<Host>,
    /// TCP port.
    pub port: u16,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// CA file for `verify`.
    pub ca_file: Option<PathBuf>,
    /// AUTH credentials (only ever sent over TLS).
    pub auth: Option<Credentials>,
    /// LMTP instead of SMTP.
    pub lmtp: bool,
    /// For MX delivery to a domain name: the domain whose TLS policies
    /// (MTA-STS, DANE) apply.
    pub policy_domain: Option<String>,
}

/// Chooses destinations. Holds the one resolver outbound delivery uses.
#[derive(Debug)]
pub struct Router {
    settings: OutboundSettings,
    dns: Result<Dns, String>,
}

impl Router {
    /// A router for `[outbound]`, resolving with `[dns]`. A resolver that
    /// cannot be built (no usable /etc/resolv.conf) is reported by every
    /// route that needs it, as a temporary failure.
    pub fn new(settings: &Settings) -> Router {
        let dns = crate::dns::resolver(&settings.dns)
            .map(|resolver| Dns {
                resolver,
                timeout: settings.dns.timeout,
            })
            .map_err(|e| e.to_string());
        if let Err(e) = &dns {
            tracing::warn!(error = %e, "no DNS resolver: remote recipients will be deferred");
        }
        Router {
            settings: settings.outbound.clone(),
            dns,
        }
    }

    /// The destination of a recipient at `domain` with `route`. A failure's
    /// status class says what it is: `5.x.x` permanent (NXDOMAIN 5.1.2,
    /// null MX 5.1.10), `4.x.x` temporary (DNS failure 4.4.3, no usable
    /// host 4.4.4).
    pub async fn route(&self, route: &Route, domain: &str) -> Result<Destination, Failure> {
        if let Route::Relay { host, port } = route {
            let target = Target {
                host: host.clone(),
                port: *port,
                tls: self.settings.tls,
                ca_file: None,
                auth: None,
                lmtp: false,
            };
            return self.to_target(&target).await;
        }
        let configured = self
            .settings
            .routes
            .iter()
            .find(|r| r.domain.matches(domain))
            .map(|r| &r.target)
            .or(self.settings.smarthost.as_ref());
        match configured {
            Some(t) => self.to_target(t).await,
            None => self.to_mx(domain).await,
        }
    }

    /// The resolver, for the TLS policy lookups (MTA-STS, DANE).
    pub(super) fn resolver(&self) -> Option<&Dns> {
        self.dns.as_ref().ok()
    }

    fn dns(&self) -> Result<&Dns, Failure> {
        self.dns.as_ref().map_err(|e| failure::no_resolver(e))
    }

    /// A configured host (or a plugin's): its addresses, no MX lookup.
    async fn to_target(&self, t: &Target) -> Result<Destination, Failure> {
        let addrs = match t.host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self
                .dns()?
                .addresses(&t.host)
                .await
                .map_err(|e| failure::host_unresolved(&t.host, &e))?,
        };
        let kind = if t.lmtp { "lmtp" } else { "smtp" };
        Ok(Destination {
            key: format!("{kind}:{}:{}", t.host.to_ascii_lowercase(), t.port),
            hosts: vec![Host {
                name: t.host.clone(),
                addrs,
            }],
            port: t.port,
            tls: t.tls,
            ca_file: t.ca_file.clone(),
            auth: t.auth.clone(),
            lmtp: t.lmtp,
            policy_domain: None,
        })
    }

    /// RFC 5321 §5.1: the MX hosts of `domain` by preference, its own
    /// address when it has no MX, or the address literal itself.
    async fn to_mx(&self, domain: &str) -> Result<Destination, Failure> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let (hosts, policy_domain) = match mail_domain(&domain) {
            MailDomain::Literal(ip) => (
                vec![Host {
                    name: domain.clone(),
                    addrs: vec![ip],
                }],
                None,
            ),
            MailDomain::OtherLiteral => return Err(failure::bad_literal(&domain)),
            MailDomain::Name => (self.mx_hosts(&domain).await?, Some(domain.clone())),
        };
        Ok(Destination {
            key: format!("mx:{domain}"),
            hosts,
            port: self.settings.mx_port,
            tls: self.settings.tls,
            ca_file: None,
            auth: None,
            lmtp: false,
            policy_domain,
        })
    }

    async fn mx_hosts(&self, domain: &str) -> Result<Vec<Host>, Failure> {
        let dns = self.dns()?;
        let names = match dns.query(domain, RecordType::MX).await {
            Ok(rdata) => {
                let records = rdata
                    .into_iter()
                    .filter_map(|d| match d {
                        RData::MX(mx) => Some((mx.preference, host_name(&mx.exchange.to_string()))),
                        _ => None,
                    })
                    .collect();
                match read_mx(records, &mut rand::rng()) {
                    MxAnswer::Null => return Err(failure::null_mx(domain)),
                    MxAnswer::Hosts(names) => names,
                }
            }
            // No MX: the domain itself is the implicit MX (§5.1).
            Err(Lookup::NoRecords) => vec![domain.to_string()],
            Err(Lookup::NoSuchDomain) => return Err(failure::nxdomain(domain)),
            Err(Lookup::Failed(e)) => return Err(failure::mx_failed(domain, &e)),
        };
        let mut tasks = Vec::new();
        for name in names.into_iter().take(MAX_MX_HOSTS) {
            let dns = dns.clone();
            tasks.push(tokio::spawn(async move {
                let addrs = dns.addresses(&name).await;
                (name, addrs)
            }));
        }
        let mut hosts = Vec::new();
        let mut skipped = Vec::new();
        for task in tasks {
            let Ok((name, addrs)) = task.await else {
                continue;
            };
            match addrs {
                Ok(addrs) => hosts.push(Host { name, addrs }),
                Err(e) => skipped.push((name, e)),
            }
        }
        if hosts.is_empty() {
            return Err(failure::no_usable_host(domain, &skipped));
        }
        Ok(hosts)
    }
}

/// The resolver and its per-query timeout; cheap to clone into tasks.
#[derive(Debug, Clone)]
pub(super) struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
}

/// How a lookup failed, as routing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Lookup {
    /// NXDOMAIN: the name does not exist.
    NoSuchDomain,
    /// The name exists without records of this type (NODATA).
    NoRecords,
    /// Timeout, SERVFAIL, REFUSED, no reachable server: worth retrying.
    Failed(String),
}

impl Dns {
    /// Records of `rtype` at `name` (taken as fully qualified).
    pub(super) async fn query(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, Lookup> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        // The resolver has its own timeout; this one bounds a resolver
        // that tries several servers one after the other.
        let lookup = self.resolver.lookup(fqdn, rtype);
        let answer = tokio::time::timeout(self.timeout + Duration::from_millis(100), lookup)
            .await
            .map_err(|_| Lookup::Failed("DNS query timed out".into()))?
            .map_err(|e| classify(&e))?;
        let rdata: Vec<RData> = answer
            .answers()
            .iter()
            .map(|r| r.data.clone())
            .filter(|d| d.record_type() == rtype)
            .collect();
        if rdata.is_empty() {
            return Err(Lookup::NoRecords);
        }
        Ok(rdata)
    }

    /// IPv6 then IPv4 addresses of `name`, both asked at once. One family
    /// answering is enough; if neither does, a temporary failure wins over
    /// "no records" (it may have addresses once the DNS answers).
    pub(super) async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, Lookup> {
        let (v6, v4) = tokio::join!(
            self.query(name, RecordType::AAAA),
            self.query(name, RecordType::A)
        );
        let mut addrs = Vec::new();
        let mut failures = Vec::new();
        for answer in [v6, v4] {
            match answer {
                Ok(rdata) => addrs.extend(rdata.into_iter().filter_map(|d| match d {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => failures.push(e),
            }
        }
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        Err(failures
            .iter()
            .find(|e| matches!(e, Lookup::Failed(_)))
            .or_else(|| failures.iter().find(|e| **e == Lookup::NoRecords))
            .cloned()
            .unwrap_or(Lookup::NoSuchDomain))
    }
}

fn classify(e: &NetError) -> Lookup {
    if e.is_nx_domain() {
        Lookup::NoSuchDomain
    } else if e.is_no_records_found() {
        Lookup::NoRecords
    } else {
        Lookup::Failed(e.to_string())
    }
}

/// A DNS name as a host name: lower case, no trailing dot; the root is "".
fn host_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// What an MX answer says, before any address lookup.
#[derive(Debug, PartialEq, Eq)]
enum MxAnswer {
    /// RFC 7505 null MX: the domain accepts no mail.
    Null,
    /// Exchange names in the order to try.
    Hosts(Vec<String>),
}

/// Reads `(preference, exchange)` records (exchange as from `host_name`):
/// a single record of preference 0 naming the root is a null MX (RFC 7505
/// §3); otherwise the hosts by ascending preference, equal preferences in
/// random order (RFC 5321 §5.1), each name once. A root exchange among
/// other records names no host and is dropped.
fn read_mx(mut records: Vec<(u16, String)>, rng: &mut impl Rng) -> MxAnswer {
    if let [(0, name)] = records.as_slice()
        && name.is_empty()
    {
        return MxAnswer::Null;
    }
    // Shuffle, then a stable sort: equal preferences stay shuffled.
    records.shuffle(rng);
    records.sort_by_key(|r| r.0);
    let mut names: Vec<String> = Vec::with_capacity(records.len());
    for (_, name) in records {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    MxAnswer::Hosts(names)
}

/// A recipient domain as §5.1 treats it.
#[derive(Debug, PartialEq, Eq)]
enum MailDomain {
    /// A name: look up its MX.
    Name,
    /// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3): that host.
    Literal(IpAddr),
    /// Another bracketed form (a general address literal): no host to use.
    OtherLiteral,
}

fn mail_domain(domain: &str) -> MailDomain {
    let Some(inner) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) else {
        return MailDomain::Name;
    };
    let ip = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => {
            inner[5..].parse::<Ipv6Addr>().map(IpAddr::V6).ok()
        }
        _ => inner.parse::<Ipv4Addr>().map(IpAddr::V4).ok(),
    };
    ip.map_or(MailDomain::OtherLiteral, MailDomain::Literal)
}

/// Every routing failure, with its RFC 3463 status, in one place.
mod failure {
    use super::Lookup;
    use crate::delivery::Failure;

    fn describe(e: &Lookup) -> &str {
        match e {
            Lookup::NoSuchDomain => "no such domain",
            Lookup::NoRecords => "no A or AAAA record",
            Lookup::Failed(e) => e,
        }
    }

    pub fn no_resolver(e: &str) -> Failure {
        Failure::local("4.4.3", format!("no DNS resolver: {e}"))
    }

    pub fn host_unresolved(host: &str, e: &Lookup) -> Failure {
        let status = if matches!(e, Lookup::Failed(_)) {
            "4.4.3"
        } else {
            "4.4.4"
        };
        Failure::local(status, format!("cannot resolve {host}: {}", describe(e)))
    }

    pub fn bad_literal(domain: &str) -> Failure {
        Failure::local(
            "5.1.3",
            format!("{domain}: not an IPv4 or IPv6 address literal"),
        )
    }

    /// RFC 7505 §4.3 names 5.1.10 for a null MX.
    pub fn null_mx(domain: &str) -> Failure {
        Failure::local(
            "5.1.10",
            format!("{domain} accepts no mail: its MX is null (RFC 7505)"),
        )
    }

    pub fn nxdomain(domain: &str) -> Failure {
        Failure::local("5.1.2", format!("{domain}: domain does not exist"))
    }

    pub fn mx_failed(domain: &str, e: &str) -> Failure {
        Failure::local("4.4.3", format!("MX lookup for {domain} failed: {e}"))
    }

    /// 4.4.3 when some host failed to resolve for now, else 4.4.4.
    pub fn no_usable_host(domain: &str, skipped: &[(String, Lookup)]) -> Failure {
        let status = if skipped.iter().any(|(_, e)| matches!(e, Lookup::Failed(_))) {
            "4.4.3"
        } else {
            "4.4.4"
        };
        let why: Vec<String> = skipped
            .iter()
            .map(|(name, e)| format!("{name}: {}", describe(e)))
            .collect();
        Failure::local(
            status,
            format!("no usable mail host for {domain} ({})", why.join("; ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn mx(records: &[(u16, &str)], seed: u64) -> MxAnswer {
        let records = records.iter().map(|(p, n)| (*p, host_name(n))).collect();
        read_mx(records, &mut StdRng::seed_from_u64(seed))
    }

    fn hosts(a: MxAnswer) -> Vec<String> {
        match a {
            MxAnswer::Hosts(h) => h,
            MxAnswer::Null => panic!("null MX"),
        }
    }

    #[test]
    fn mx_hosts_go_by_preference() {
        let got = hosts(mx(&[(30, "c.test."), (10, "A.test."), (20, "b.test")], 1));
        assert_eq!(got, ["a.test", "b.test", "c.test"]);
    }

    #[test]
    fn equal_preferences_are_shuffled_and_stay_behind_better_ones() {
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..64 {
            let got = hosts(mx(
                &[
                    (20, "z.test"),
                    (10, "a.test"),
                    (10, "b.test"),
                    (10, "c.test"),
                ],
                seed,
            ));
            assert_eq!(got.len(), 4);
            assert_eq!(got[3], "z.test", "seed {seed}: {got:?}");
            firsts.insert(got[0].clone());
        }
        assert_eq!(firsts.len(), 3, "every equal host comes first sometimes");
    }

    #[test]
    fn a_name_listed_twice_is_tried_once_at_its_best_preference() {
        let got = hosts(mx(&[(20, "a.test"), (10, "b.test"), (5, "a.test.")], 3));
        assert_eq!(got, ["a.test", "b.test"]);
    }

    #[test]
    fn null_mx_is_one_record_of_preference_0_naming_the_root() {
        assert_eq!(mx(&[(0, ".")], 0), MxAnswer::Null);
        // Not a null MX by RFC 7505 §3: the root names no host, so it is
        // dropped and the rest are used (or none is left: no usable host).
        assert_eq!(hosts(mx(&[(0, "."), (10, "mx.test")], 0)), ["mx.test"]);
        assert!(hosts(mx(&[(10, ".")], 0)).is_empty());
        assert_eq!(hosts(mx(&[(0, "mx.test")], 0)), ["mx.test"]);
    }

    #[test]
    fn address_literals() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(mail_domain("[192.0.2.1]"), MailDomain::Literal(v4));
        assert_eq!(mail_domain("[ipv6:2001:db8::1]"), MailDomain::Literal(v6));
        assert_eq!(mail_domain("[IPv6:2001:db8::1]"), MailDomain::Literal(v6));
        assert_eq!(mail_domain("[2001:db8::1]"), MailDomain::OtherLiteral);
        assert_eq!(mail_domain("[x-tag:abc]"), MailDomain::OtherLiteral);
        assert_eq!(mail_domain("example.org"), MailDomain::Name);
    }

    #[test]
    fn failures_carry_their_status() {
        assert_eq!(failure::null_mx("n.test").status, "5.1.10");
        assert_eq!(failure::nxdomain("n.test").status, "5.1.2");
        assert_eq!(failure::mx_failed("n.test", "timed out").status, "4.4.3");
        let skipped = [("a.test".to_string(), Lookup::NoRecords)];
        assert_eq!(failure::no_usable_host("n.test", &skipped).status, "4.4.4");
        let skipped = [
            ("a.test".to_string(), Lookup::NoRecords),
            ("b.test".to_string(), Lookup::Failed("timed out".into())),
        ];
        let f = failure::no_usable_host("n.test", &skipped);
        assert_eq!(f.status, "4.4.3");
        assert!(
            f.text
                .contains("a.test: no A or AAAA record; b.test: timed out")
        );
    }
}
