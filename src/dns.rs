//! The DNS resolver built from `[dns]`: one construction shared by the
//! plugins' `dns` capability and outbound routing (MX, relay hosts), so
//! both ask the same servers with the same timeout.

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::DnsSettings;

/// A resolver for `dns`: the listed nameservers (UDP and TCP, each on its
/// own port), else the system's (`/etc/resolv.conf`). One attempt per
/// query with the configured timeout: callers classify a timeout
/// themselves rather than wait through retries. Answers are cached by
/// TTL inside the resolver.
pub fn resolver(dns: &DnsSettings) -> Result<TokioResolver, NetError> {
    let mut builder = match &dns.nameservers {
        Some(list) => {
            let servers = list
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()?,
    };
    builder.options_mut().timeout = dns.timeout;
    builder.options_mut().attempts = 1;
    builder.build()
}
