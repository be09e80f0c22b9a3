//! TLS for every listener: certificates from PEM files (or a self-signed one
//! generated into the data dir), picked by SNI, swapped on reload without
//! touching established sessions.
//!
//! rustls only, with the ring provider, TLS 1.2 and 1.3 only. The acceptor's
//! `ServerConfig` never changes; its certificate resolver holds the current
//! set behind a lock, so a reload affects the next handshake and nothing
//! else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

use crate::config::value::Domain;

/// `[tls]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// `[[tls.certificate]]`: the first is the default; others are chosen by SNI.
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<RawCert>,
}

/// `[[tls.certificate]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Server names (SNI) this certificate answers for.
    pub names: Option<Vec<Domain>>,
}

/// One configured certificate.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// Chain file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
    /// SNI names (lower case); `*.example.org` matches one label.
    pub names: Vec<String>,
}

/// Resolved TLS settings.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Configured certificates; empty means "use the self-signed one".
    pub certificates: Vec<CertSpec>,
    /// Where the self-signed certificate lives (`<data_dir>/tls`).
    pub self_signed_dir: PathBuf,
}

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// OS error; part of the message, not a chained source, so it is printed once.
        error: std::io::Error,
    },
    /// A PEM file that holds no usable item of the expected kind.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The key does not belong to the certificate.
    #[error("{} does not match the certificate in {}: {reason}", key.display(), cert.display())]
    Mismatch {
        /// Chain file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// The self-signed certificate could not be generated or written.
    #[error("self-signed certificate in {}: {what}", dir.display())]
    SelfSigned {
        /// Target directory.
        dir: PathBuf,
        /// What failed.
        what: String,
    },
}

/// Resolves `[tls]`, loading every configured pair once so a bad file is a
/// config error (key such as `tls.certificate[1].key`).
pub fn resolve(raw: RawTls, data_dir: &Path) -> Result<TlsSettings, (String, String)> {
    let mut certificates = Vec::new();
    for (i, c) in raw.certificates.into_iter().enumerate() {
        let names: Vec<String> = c
            .names
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.0)
            .collect();
        if i > 0 && names.is_empty() {
            return Err((
                format!("tls.certificate[{i}].names"),
                "every certificate after the first needs `names` (the SNI names it serves)".into(),
            ));
        }
        let spec = CertSpec {
            cert: c.cert,
            key: c.key,
            names,
        };
        if let Err(e) = load_pair(&spec) {
            let field = match &e {
                TlsError::Read { path, .. } | TlsError::Pem { path, .. } if *path == spec.cert => {
                    "cert"
                }
                _ => "key",
            };
            return Err((format!("tls.certificate[{i}].{field}"), e.to_string()));
        }
        certificates.push(spec);
    }
    Ok(TlsSettings {
        certificates,
        self_signed_dir: data_dir.join("tls"),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })
}

/// Loads and checks one certificate chain and its key.
pub fn load_pair(spec: &CertSpec) -> Result<Arc<CertifiedKey>, TlsError> {
    let pem = |path: &Path, what: String| TlsError::Pem {
        path: path.to_path_buf(),
        what,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&spec.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| pem(&spec.cert, format!("not a PEM certificate file ({e})")))?;
    if chain.is_empty() {
        return Err(pem(&spec.cert, "no CERTIFICATE block found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&spec.key)?)
        .map_err(|e| pem(&spec.key, format!("no usable PRIVATE KEY block ({e})")))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| TlsError::Mismatch {
            cert: spec.cert.clone(),
            key: spec.key.clone(),
            reason: e.to_string(),
        })
}

/// The self-signed pair in `dir`, generated on first use for `hostname`.
fn self_signed(dir: &Path, hostname: &str) -> Result<CertSpec, TlsError> {
    let spec = CertSpec {
        cert: dir.join("selfsigned.crt"),
        key: dir.join("selfsigned.key"),
        names: Vec::new(),
    };
    if spec.cert.exists() && spec.key.exists() {
        return Ok(spec);
    }
    let fail = |what: String| TlsError::SelfSigned {
        dir: dir.to_path_buf(),
        what,
    };
    let mut names = vec![hostname.to_string()];
    if hostname != "localhost" {
        names.push("localhost".into());
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    write_private(&spec.key, ck.signing_key.serialize_pem().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(&spec.cert, ck.cert.pem()).map_err(|e| fail(e.to_string()))?;
    tracing::info!(cert = %spec.cert.display(), "generated a self-signed certificate");
    Ok(spec)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The certificates in force: a default and the ones chosen by SNI.
#[derive(Debug)]
struct CertSet {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    fn load(specs: &[CertSpec]) -> Result<CertSet, TlsError> {
        let mut set: Option<CertSet> = None;
        for spec in specs {
            let ck = load_pair(spec)?;
            let s = set.get_or_insert_with(|| CertSet {
                default: ck.clone(),
                by_name: HashMap::new(),
            });
            for n in &spec.names {
                s.by_name.insert(n.clone(), ck.clone());
            }
        }
        Ok(set.expect("at least one certificate"))
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        self.by_name
            .get(&name)
            .or_else(|| wildcard.and_then(|w| self.by_name.get(&w)))
            .unwrap_or(&self.default)
            .clone()
    }
}

#[derive(Debug)]
struct Resolver(RwLock<Arc<CertSet>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.0.read().expect("cert lock").clone();
        Some(set.pick(hello.server_name()))
    }
}

/// What the session and plugins learn about a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// IANA cipher suite name.
    pub cipher: String,
    /// The server name the client asked for, if any.
    pub sni: Option<String>,
}

impl TlsInfo {
    /// Reads the negotiated parameters off a finished handshake.
    pub fn of(conn: &rustls::ServerConnection) -> TlsInfo {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "unknown".into(),
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|c| c.suite().as_str().unwrap_or("unknown").to_string())
            .unwrap_or_else(|| "unknown".into());
        TlsInfo {
            version,
            cipher,
            sni: conn.server_name().map(str::to_string),
        }
    }
}

/// The server's TLS state: one acceptor, reloadable certificates.
pub struct Tls {
    specs: Vec<CertSpec>,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Loads the configured certificates, or the self-signed one (generated
    /// on first start).
    pub fn start(settings: &TlsSettings, hostname: &str) -> Result<Tls, TlsError> {
        let specs = if settings.certificates.is_empty() {
            vec![self_signed(&settings.self_signed_dir, hostname)?]
        } else {
            settings.certificates.clone()
        };
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(CertSet::load(&specs)?))));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(Tls {
            specs,
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Re-reads every certificate file; on error the old set stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let set = Arc::new(CertSet::load(&self.specs)?);
        *self.resolver.0.write().expect("cert lock") = set;
        Ok(())
    }

    /// The acceptor for new handshakes.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(dir.path(), "mx.test").unwrap();
        let first = std::fs::read(&a.cert).unwrap();
        let b = self_signed(dir.path(), "mx.test").unwrap();
        assert_eq!(first, std::fs::read(&b.cert).unwrap());
        load_pair(&b).unwrap();
    }

    #[test]
    fn mismatched_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed(&dir.path().join("a"), "a.test").unwrap();
        let b = self_signed(&dir.path().join("b"), "b.test").unwrap();
        let mixed = CertSpec {
            cert: a.cert.clone(),
            key: b.key.clone(),
            names: vec![],
        };
        let e = load_pair(&mixed).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("selfsigned.key"), "{e}");
        let missing = CertSpec {
            cert: dir.path().join("nope.crt"),
            key: b.key,
            names: vec![],
        };
        let e = load_pair(&missing).unwrap_err();
        assert!(e.to_string().contains("nope.crt"), "{e}");
        let swapped = CertSpec {
            cert: a.key,
            key: a.cert,
            names: vec![],
        };
        assert!(load_pair(&swapped).is_err());
    }
}
