//! Where a remote recipient goes, first match wins: the route a plugin's
//! `deliver` hook chose, a static `[[outbound.route]]` for its domain, the
//! smarthost, then the domain's MX hosts (RFC 5321 §5.1).
//!
//! The answer is a `Destination`: the hosts to try in order, with their
//! addresses, and the policy for talking to them. Recipients with the same
//! destination key share one transaction (and one connection pool).

use std::net::IpAddr;
use std::path::PathBuf;

use super::config::{Credentials, OutboundSettings, Target, TlsPolicy};
use crate::delivery::Failure;
use crate::queue::Route;

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
}

/// Chooses destinations.
#[derive(Debug)]
pub struct Router {
    settings: OutboundSettings,
}

impl Router {
    /// A router for the `[outbound]` settings.
    pub fn new(settings: &OutboundSettings) -> Router {
        Router {
            settings: settings.clone(),
        }
    }

    /// The destination of a recipient at `domain` with `route`.
    pub async fn route(&self, route: &Route, domain: &str) -> Result<Destination, Failure> {
        match route {
            Route::Relay { host, port } => {
                let target = Target {
                    host: host.clone(),
                    port: *port,
                    tls: self.settings.tls,
                    ca_file: None,
                    auth: None,
                    lmtp: false,
                };
                self.to_target(&target).await
            }
            _ => {
                let configured = self
                    .settings
                    .routes
                    .iter()
                    .find(|r| r.domain.matches(domain))
                    .map(|r| &r.target)
                    .or(self.settings.smarthost.as_ref());
                match configured {
                    Some(t) => self.to_target(t).await,
                    None => Err(Failure::local(
                        "4.4.3",
                        format!("no route to {domain}: MX lookup is not available"),
                    )),
                }
            }
        }
    }

    /// A configured host: its addresses from the system resolver.
    async fn to_target(&self, t: &Target) -> Result<Destination, Failure> {
        let addrs = match t.host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((t.host.as_str(), t.port))
                .await
                .map_err(|e| Failure::local("4.4.3", format!("cannot resolve {}: {e}", t.host)))?
                .map(|a| a.ip())
                .collect(),
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
        })
    }
}
