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
    builder(dns)?.build()
}

/// A DNSSEC-validating resolver for DANE (RFC 7672): the same servers and
/// timeout, validating from the root's built-in keys or the DNSKEY
/// records in `trust_anchor`. Each record it returns carries its proof
/// (secure, insecure, bogus).
pub fn validating_resolver(
    dns: &DnsSettings,
    trust_anchor: Option<&std::path::Path>,
) -> Result<TokioResolver, String> {
    use hickory_resolver::proto::dnssec::TrustAnchors;
    let mut b = builder(dns).map_err(|e| e.to_string())?;
    b.options_mut().validate = true;
    if let Some(path) = trust_anchor {
        let anchors = TrustAnchors::from_file(path)
            .map_err(|e| format!("trust anchor {}: {e}", path.display()))?;
        b = b.with_trust_anchor(std::sync::Arc::new(anchors));
    }
    b.build().map_err(|e| e.to_string())
}

fn builder(
    dns: &DnsSettings,
) -> Result<hickory_resolver::ResolverBuilder<TokioRuntimeProvider>, NetError> {
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
    Ok(builder)
}
