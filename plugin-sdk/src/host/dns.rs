//! DNS lookups through the server's resolver. Needs `grants = ["dns"]`; calling any of these
//! makes the component import `wasmtp:plugin/dns`.

#[cfg(not(fake_host))]
use crate::bindings::wasmtp::plugin::dns as wit;

pub use crate::bindings::wasmtp::plugin::dns::{DnsError, MxRecord};

/// IPv4 addresses of `name`.
pub fn a(name: &str) -> Result<Vec<String>, DnsError> {
    #[cfg(not(fake_host))]
    return wit::a(name);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.dns_lookup("a", name));
}

/// IPv6 addresses of `name`.
pub fn aaaa(name: &str) -> Result<Vec<String>, DnsError> {
    #[cfg(not(fake_host))]
    return wit::aaaa(name);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.dns_lookup("aaaa", name));
}

/// MX records of `name`, sorted by preference.
pub fn mx(name: &str) -> Result<Vec<MxRecord>, DnsError> {
    #[cfg(not(fake_host))]
    return wit::mx(name);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.dns_mx(name));
}

/// TXT records of `name` (each record's strings joined).
pub fn txt(name: &str) -> Result<Vec<String>, DnsError> {
    #[cfg(not(fake_host))]
    return wit::txt(name);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.dns_lookup("txt", name));
}

/// Host names of the IP address `ip` (reverse lookup).
pub fn ptr(ip: &str) -> Result<Vec<String>, DnsError> {
    #[cfg(not(fake_host))]
    return wit::ptr(ip);
    #[cfg(fake_host)]
    return crate::testing::with_state(|s| s.dns_lookup("ptr", ip));
}
