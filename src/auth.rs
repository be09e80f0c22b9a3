//! Who may do what: SMTP AUTH settings and the SASL mechanisms as pure
//! functions (RFC 4616 PLAIN, the LOGIN draft), the per-IP brake on failed
//! attempts, and the relay policy (authenticated or trusted network).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use crate::config::value::{AtLeast, Dur};

/// `[auth]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// The users file (default `<data_dir>/users`).
    pub users_file: Option<PathBuf>,
    /// Offer AUTH without TLS to clients connecting over loopback.
    pub allow_plaintext_on_loopback: Option<bool>,
    /// Failed attempts after which the session is closed.
    pub max_failures: Option<AtLeast<1>>,
    /// Delay added per recent failure from the same client IP.
    pub failure_delay: Option<Dur>,
    /// Password verifications running at once, across sessions.
    pub max_verifications: Option<AtLeast<1>>,
    /// How long an AUTH waits for a verification slot before 454.
    pub verification_wait: Option<Dur>,
}

/// `[relay]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    /// Networks (CIDR) that may relay without AUTH.
    pub trusted_networks: Option<Vec<Cidr>>,
}

/// Resolved `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The users file.
    pub users_file: PathBuf,
    /// AUTH over plaintext from loopback clients.
    pub allow_plaintext_on_loopback: bool,
    /// Failures per session before it is closed.
    pub max_failures: usize,
    /// Delay per recent failure from one IP (grows linearly, capped).
    pub failure_delay: Duration,
    /// Password verifications (argon2) running at once.
    pub max_verifications: usize,
    /// How long an AUTH waits for one of those before it gets 454.
    pub verification_wait: Duration,
}

/// Resolved `[relay]`.
#[derive(Debug, Clone, Default)]
pub struct RelaySettings {
    /// Networks whose clients may relay unauthenticated.
    pub trusted_networks: Vec<Cidr>,
}

impl RelaySettings {
    /// True if `ip` is in a trusted network.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_networks.iter().any(|n| n.contains(ip))
    }
}

/// Resolves `[auth]`.
pub fn resolve_auth(raw: RawAuth, data_dir: &Path) -> AuthSettings {
    AuthSettings {
        users_file: raw.users_file.unwrap_or_else(|| data_dir.join("users")),
        allow_plaintext_on_loopback: raw.allow_plaintext_on_loopback.unwrap_or(false),
        max_failures: raw.max_failures.map_or(3, |n| n.0),
        failure_delay: raw.failure_delay.map_or(Duration::from_secs(1), |d| d.0),
        // One argon2 verification keeps a core busy, so more at once than
        // there are cores only queues them and starves the sessions.
        max_verifications: raw.max_verifications.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.0,
        ),
        // Long enough for a burst of real logins to take turns (one check
        // is tens of milliseconds), short enough that a flood is turned
        // away instead of queueing without end.
        verification_wait: raw
            .verification_wait
            .map_or(Duration::from_secs(1), |d| d.0),
    }
}

/// Resolves `[relay]`.
pub fn resolve_relay(raw: RawRelay) -> RelaySettings {
    RelaySettings {
        trusted_networks: raw.trusted_networks.unwrap_or_default(),
    }
}

/// A network such as `192.0.2.0/24` or `2001:db8::/32` (a bare address is /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr[/prefix]`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse().ok().filter(|&n| n <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    /// The client `ip` as per-client limits count it (connections per IP,
    /// the AUTH failure brake): an IPv4 address as itself (also when it
    /// arrives IPv4-mapped, `::ffff:192.0.2.1`), an IPv6 address as its
    /// network of `ipv6_prefix` bits. One IPv6 client usually holds a whole
    /// /64 and could otherwise take a fresh address for every connection.
    pub fn client(ip: IpAddr, ipv6_prefix: u8) -> Cidr {
        match unmap(ip) {
            IpAddr::V4(v4) => Cidr {
                addr: IpAddr::V4(v4),
                prefix: 32,
            },
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Cidr {
                    addr: IpAddr::V6((u128::from(v6) & mask).into()),
                    prefix,
                }
            }
        }
    }

    /// True if `ip` lies inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (a >> shift) == (b >> shift)
    }
}

/// `::ffff:a.b.c.d` is the IPv4 client `a.b.c.d` (a dual-stack listener
/// sees IPv4 clients this way).
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid network {s:?}: expected e.g. \"192.0.2.0/24\" or \"2001:db8::/32\""
            ))
        })
    }
}

// ------------------------------------------------------------ mechanisms

/// The mechanisms offered, in EHLO order.
pub const MECHANISMS: &[&str] = &["PLAIN", "LOGIN"];

/// A decoded client response.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// The client sent `*` (RFC 4954 §4).
    Cancel,
    /// Decoded bytes.
    Data(Vec<u8>),
    /// Not base64.
    Malformed,
}

/// Decodes one client line; `=` is the empty initial response.
pub fn decode(line: &str) -> Response {
    match line.trim() {
        "*" => Response::Cancel,
        "=" => Response::Data(Vec::new()),
        s => B64.decode(s).map_or(Response::Malformed, Response::Data),
    }
}

/// Base64 for a 334 challenge.
pub fn encode(text: &str) -> String {
    B64.encode(text)
}

/// Login name and password.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    /// authcid
    pub user: String,
    /// password
    pub password: String,
}

/// PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`. An authzid other
/// than empty or the authcid itself is refused (no proxy authorization).
pub fn parse_plain(data: &[u8]) -> Option<Credentials> {
    let mut parts = data.split(|&b| b == 0);
    let authz = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    if !authz.is_empty() && authz != user.as_bytes() {
        return None;
    }
    Some(Credentials {
        user: user.to_string(),
        password: password.to_string(),
    })
}

// -------------------------------------------------------------- throttle

/// Slows down failed AUTH attempts per client (an IPv4 address or an IPv6
/// network, see [`Cidr::client`]): every failure in the last `window` adds
/// `delay` before the next 535 (capped), across sessions.
pub struct Throttle {
    delay: Duration,
    ipv6_prefix: u8,
    failures: Mutex<HashMap<Cidr, (u32, Instant)>>,
}

const WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_DELAY: Duration = Duration::from_secs(30);

impl Throttle {
    /// A throttle adding `delay` per recent failure, counting IPv6 clients
    /// per network of `ipv6_prefix` bits (`limits.ipv6_prefix`).
    pub fn new(delay: Duration, ipv6_prefix: u8) -> Throttle {
        Throttle {
            delay,
            ipv6_prefix,
            failures: Mutex::default(),
        }
    }

    /// Records a failure and returns how long to wait before answering.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("throttle lock");
        map.retain(|_, (_, at)| now.duration_since(*at) < WINDOW);
        let e = map
            .entry(Cidr::client(ip, self.ipv6_prefix))
            .or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        e.1 = now;
        self.delay.saturating_mul(e.0).min(MAX_DELAY)
    }

    /// Forgets the failures of `ip` after a successful login.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .expect("throttle lock")
            .remove(&Cidr::client(ip, self.ipv6_prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses() {
        type Case<'a> = (&'a [u8], Option<(&'a str, &'a str)>);
        let table: &[Case] = &[
            (b"\0alice\0pw", Some(("alice", "pw"))),
            (b"alice\0alice\0pw", Some(("alice", "pw"))),
            (b"bob\0alice\0pw", None),
            (b"\0\0pw", None),
            (b"\0alice", None),
            (b"\0alice\0pw\0x", None),
            (b"\0alice\0", Some(("alice", ""))),
        ];
        for (input, want) in table {
            let got = parse_plain(input);
            let want = want.map(|(u, p)| Credentials {
                user: u.into(),
                password: p.into(),
            });
            assert_eq!(got, want, "{input:?}");
        }
        assert_eq!(decode("*"), Response::Cancel);
        assert_eq!(decode("="), Response::Data(vec![]));
        assert_eq!(decode("!!"), Response::Malformed);
        assert_eq!(decode("YWxpY2U="), Response::Data(b"alice".to_vec()));
    }

    #[test]
    fn networks() {
        let n = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
    }

    #[test]
    fn clients_are_keyed_per_ipv4_address_and_ipv6_network() {
        let key = |ip: &str, prefix| Cidr::client(ip.parse().unwrap(), prefix).to_string();
        let table = [
            ("192.0.2.7", 64, "192.0.2.7/32"),
            ("::ffff:192.0.2.7", 64, "192.0.2.7/32"),
            ("::ffff:192.0.2.7", 128, "192.0.2.7/32"),
            ("2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"),
            ("2001:db8:1:2:ffff::1", 64, "2001:db8:1:2::/64"),
            ("2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::/48"),
            ("2001:db8:1:2:3:4:5:6", 56, "2001:db8:1::/56"),
            ("2001:db8:1:2ff:3:4:5:6", 56, "2001:db8:1:200::/56"),
            ("2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6/128"),
            ("2001:db8:1:2:3:4:5:6", 32, "2001:db8::/32"),
            ("::1", 64, "::/64"),
        ];
        for (ip, prefix, want) in table {
            assert_eq!(key(ip, prefix), want, "{ip} /{prefix}");
        }
        let a = Cidr::client("2001:db8:0:1::a".parse().unwrap(), 64);
        assert_eq!(a, Cidr::client("2001:db8:0:1:8000::b".parse().unwrap(), 64));
        assert_ne!(a, Cidr::client("2001:db8:0:2::a".parse().unwrap(), 64));
        assert!(a.contains("2001:db8:0:1:1:2:3:4".parse().unwrap()));
    }

    #[test]
    fn throttle_counts_an_ipv6_network_as_one_client() {
        let t = Throttle::new(Duration::from_millis(10), 64);
        let ms = Duration::from_millis;
        assert_eq!(t.failed("2001:db8:0:1::1".parse().unwrap()), ms(10));
        assert_eq!(t.failed("2001:db8:0:1::2".parse().unwrap()), ms(20));
        assert_eq!(t.failed("2001:db8:0:1:ffff::3".parse().unwrap()), ms(30));
        assert_eq!(t.failed("2001:db8:0:2::1".parse().unwrap()), ms(10));
        // Mapped and plain IPv4 are the same client.
        assert_eq!(t.failed("192.0.2.9".parse().unwrap()), ms(10));
        assert_eq!(t.failed("::ffff:192.0.2.9".parse().unwrap()), ms(20));
        // A success from any address of the network clears it.
        t.succeeded("2001:db8:0:1::99".parse().unwrap());
        assert_eq!(t.failed("2001:db8:0:1::1".parse().unwrap()), ms(10));
        // Per address where configured so.
        let t = Throttle::new(Duration::from_millis(10), 128);
        assert_eq!(t.failed("2001:db8::1".parse().unwrap()), ms(10));
        assert_eq!(t.failed("2001:db8::2".parse().unwrap()), ms(10));
    }

    #[test]
    fn throttle_grows_per_ip() {
        let t = Throttle::new(Duration::from_millis(10), 64);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(t.failed(a), Duration::from_millis(10));
        assert_eq!(t.failed(a), Duration::from_millis(20));
        assert_eq!(t.failed(b), Duration::from_millis(10));
        t.succeeded(a);
        assert_eq!(t.failed(a), Duration::from_millis(10));
    }
}
