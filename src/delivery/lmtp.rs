//! Local delivery over LMTP (RFC 2033) instead of Maildir:
//! `[local] delivery = "lmtp"` hands local recipients to a mail store such
//! as Dovecot, which then owns quotas, sieve and indexes. The conversation
//! is the outbound client's (`remote::client`) with LHLO and one reply per
//! recipient; this file owns the `[local]` keys and the addresses sent.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::queue::QueuedRcpt;

/// Where the LMTP server listens: `127.0.0.1:24` or `unix:/path/to/socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpTarget {
    /// TCP.
    Tcp(SocketAddr),
    /// A Unix socket.
    Unix(PathBuf),
}

impl LmtpTarget {
    /// Parses `local.lmtp`.
    pub fn parse(s: &str) -> Result<LmtpTarget, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path".into());
            }
            return Ok(LmtpTarget::Unix(PathBuf::from(path)));
        }
        s.parse().map(LmtpTarget::Tcp).map_err(|_| {
            format!(
                "{s:?}: expected an address and port (`127.0.0.1:24`) or `unix:/path/to/socket`"
            )
        })
    }
}

impl std::fmt::Display for LmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpTarget::Tcp(a) => write!(f, "{a}"),
            LmtpTarget::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The address sent in RCPT for a local recipient: its resolved mailbox at
/// its domain (`Alice+tag@Example.TEST` → `alice@example.test`), so the
/// LMTP server sees the same mailbox Maildir delivery would write.
pub fn rcpt_address(r: &QueuedRcpt) -> String {
    match r.address.rsplit_once('@') {
        Some((_, domain)) => format!("{}@{}", r.mailbox, domain.to_lowercase()),
        None => r.mailbox.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            LmtpTarget::parse("127.0.0.1:24"),
            Ok(LmtpTarget::Tcp("127.0.0.1:24".parse().unwrap()))
        );
        assert_eq!(
            LmtpTarget::parse("unix:/run/dovecot/lmtp"),
            Ok(LmtpTarget::Unix("/run/dovecot/lmtp".into()))
        );
        assert!(LmtpTarget::parse("unix:").is_err());
        assert!(LmtpTarget::parse("localhost").is_err());
    }
}
