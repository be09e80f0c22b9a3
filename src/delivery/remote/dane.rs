//! DANE for SMTP (RFC 7672): the TLSA records of `_<port>._tcp.<mx host>`,
//! looked up through a DNSSEC-validating resolver (hickory with ring; the
//! root's keys, or `outbound.dane.trust_anchor`). Only a validated
//! (secure) answer counts: an unsigned zone means no DANE, and a lookup
//! that fails or does not validate makes the host unusable for now (§2.2).
//!
//! Usable records are DANE-TA (2) and DANE-EE (3) with selector 0 (whole
//! certificate) or 1 (public key) and matching 0 (exact), 1 (SHA-256) or
//! 2 (SHA-512); PKIX usages (0, 1) are not used for SMTP (§3.1.3). The
//! certificate check itself is `tls::DaneVerifier`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::rr::{RData, RecordType};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256, Sha512};
use tracing::warn;

use super::config::{DaneMode, DaneSettings};
use crate::config::DnsSettings;

/// One TLSA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// Certificate usage (2 DANE-TA, 3 DANE-EE).
    pub usage: u8,
    /// Selector (0 certificate, 1 SubjectPublicKeyInfo).
    pub selector: u8,
    /// Matching type (0 exact, 1 SHA-256, 2 SHA-512).
    pub matching: u8,
    /// The association data.
    pub data: Vec<u8>,
}

impl fmt::Display for Tlsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Tlsa {
    /// True for the usages, selectors and matching types RFC 7672 uses.
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2
    }

    /// True when `cert` matches this record.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match webpki::EndEntityCert::try_from(cert) {
                Ok(c) => c.subject_public_key_info().as_ref().to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data,
            1 => Sha256::digest(&selected).as_slice() == self.data.as_slice(),
            2 => Sha512::digest(&selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// What the TLSA lookup for one MX host says.
#[derive(Debug, Clone)]
pub enum Answer {
    /// No DANE for this host (off, no records, unsigned, none usable).
    None,
    /// Validated, usable records: TLS is mandatory and must match them.
    Usable(Arc<Vec<Tlsa>>),
    /// The lookup failed or did not validate: the host is not usable now.
    Failed(String),
}

/// The DANE side: a validating resolver when `mode` is on.
pub struct Dane {
    resolver: Option<Result<TokioResolver, String>>,
    timeout: Duration,
}

impl Dane {
    /// DANE per `settings`, resolving with `[dns]`.
    pub fn new(settings: &DaneSettings, dns: &DnsSettings) -> Dane {
        let resolver = (settings.mode == DaneMode::Opportunistic).then(|| {
            let r = crate::dns::validating_resolver(dns, settings.trust_anchor.as_deref());
            if let Err(e) = &r {
                warn!(error = %e, "no DNSSEC-validating resolver: MX hosts will be deferred until it works");
            }
            r
        });
        Dane {
            resolver,
            timeout: dns.timeout,
        }
    }

    /// True when TLSA records are looked up.
    pub fn enabled(&self) -> bool {
        self.resolver.is_some()
    }

    /// The TLSA answer for `host` on `port`.
    pub async fn lookup(&self, host: &str, port: u16) -> Answer {
        let resolver = match &self.resolver {
            None => return Answer::None,
            Some(Err(e)) => return Answer::Failed(format!("no validating resolver: {e}")),
            Some(Ok(r)) => r,
        };
        let name = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
        let lookup = resolver.lookup(name.clone(), RecordType::TLSA);
        let answer =
            match tokio::time::timeout(self.timeout + Duration::from_millis(100), lookup).await {
                Err(_) => return Answer::Failed(format!("TLSA lookup for {name} timed out")),
                Ok(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => return Answer::None,
                Ok(Err(e)) => return Answer::Failed(format!("TLSA lookup for {name} failed: {e}")),
                Ok(Ok(a)) => a,
            };
        let mut records = Vec::new();
        for r in answer.answers() {
            let RData::TLSA(t) = &r.data else { continue };
            match r.proof {
                Proof::Secure => {}
                Proof::Bogus => {
                    return Answer::Failed(format!(
                        "TLSA records of {name} fail DNSSEC validation"
                    ));
                }
                // Unsigned (or unknown): not DANE (§2.1).
                _ => return Answer::None,
            }
            records.push(Tlsa {
                usage: u8::from(t.cert_usage),
                selector: u8::from(t.selector),
                matching: u8::from(t.matching),
                data: t.cert_data.clone(),
            });
        }
        records.retain(Tlsa::usable);
        if records.is_empty() {
            return Answer::None;
        }
        Answer::Usable(Arc::new(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_match_certificate_or_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let full = Tlsa {
            usage: 3,
            selector: 0,
            matching: 1,
            data: Sha256::digest(der.as_ref()).to_vec(),
        };
        assert!(full.usable() && full.matches(&der));
        let pubkey = Tlsa {
            usage: 3,
            selector: 1,
            matching: 2,
            data: Sha512::digest(&spki).to_vec(),
        };
        assert!(pubkey.matches(&der));
        let exact = Tlsa {
            usage: 3,
            selector: 1,
            matching: 0,
            data: spki.clone(),
        };
        assert!(exact.matches(&der));
        let wrong = Tlsa {
            data: vec![0; 32],
            ..full.clone()
        };
        assert!(!wrong.matches(&der));
        assert!(
            !Tlsa {
                usage: 1,
                ..full.clone()
            }
            .usable()
        );
        assert!(full.to_string().starts_with("3 0 1 "));
    }
}
