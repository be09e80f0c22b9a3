//! Small helpers plugins keep needing for IP addresses and mail addresses: CIDR allowlists,
//! grouping clients by network, splitting `local@domain`. Pure functions, no host calls.

use std::net::IpAddr;

/// An IP network such as `192.0.2.0/24` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `addr/prefix` or a bare address; `None` when invalid.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        Some(IpNet {
            addr: mask(canonical(addr), prefix),
            prefix,
        })
    }

    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// Parses every entry of `list` as an [`IpNet`]; the error names the first invalid entry.
pub fn parse_nets(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| IpNet::parse(s).ok_or_else(|| format!("not an IP address or network: {s:?}")))
        .collect()
}

/// Whether `ip` (text form) is inside any of `nets`; false when `ip` does not parse.
pub fn ip_in(ip: &str, nets: &[IpNet]) -> bool {
    ip.parse::<IpAddr>()
        .is_ok_and(|ip| nets.iter().any(|n| n.contains(ip)))
}

/// The network `ip` belongs to when IPv4 addresses are grouped by `v4_prefix` bits and IPv6 by
/// `v6_prefix` bits, as `addr/prefix` text (e.g. `192.0.2.0/24`); `ip` itself if it does not parse.
pub fn network_of(ip: &str, v4_prefix: u8, v6_prefix: u8) -> String {
    match ip.parse::<IpAddr>().map(canonical) {
        Ok(ip @ IpAddr::V4(_)) => format!("{}/{}", mask(ip, v4_prefix.min(32)), v4_prefix.min(32)),
        Ok(ip @ IpAddr::V6(_)) => {
            format!("{}/{}", mask(ip, v6_prefix.min(128)), v6_prefix.min(128))
        }
        Err(_) => ip.to_string(),
    }
}

/// The domain of `address` (after the last `@`), lowercased; empty for the null sender or an
/// address without a domain.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The local part of `address` (before the last `@`), unchanged.
pub fn local_part_of(address: &str) -> &str {
    address.rsplit_once('@').map_or(address, |(l, _)| l)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let nets = parse_nets(&[
            "10.0.0.0/8".into(),
            "2001:db8::/32".into(),
            "192.0.2.7".into(),
        ])
        .unwrap();
        assert!(ip_in("10.1.2.3", &nets));
        assert!(ip_in("::ffff:10.1.2.3", &nets));
        assert!(ip_in("2001:db8:1::5", &nets));
        assert!(ip_in("192.0.2.7", &nets));
        assert!(!ip_in("192.0.2.8", &nets));
        assert!(!ip_in("garbage", &nets));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert_eq!(network_of("192.0.2.77", 24, 64), "192.0.2.0/24");
        assert_eq!(network_of("2001:db8:1:2:3::1", 24, 64), "2001:db8:1:2::/64");
        assert_eq!(domain_of("A@Example.ORG"), "example.org");
        assert_eq!(domain_of(""), "");
        assert_eq!(local_part_of("a+b@x"), "a+b");
    }
}
