//! rustls client configs for STARTTLS towards the next hop, one per TLS
//! policy: `opportunistic` and `require` accept any certificate (RFC 7435:
//! encryption against passive listeners without authentication, which is
//! what MX delivery can do without DANE or MTA-STS); `verify` checks the
//! chain and the host name against the public roots (webpki-roots) or a
//! configured CA file.
//!
//! Configs are built once per CA file and shared by every connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
}

/// Accepts any certificate, but still checks that the server holds its
/// key (the handshake signatures), so the session is really encrypted to
/// whoever presented it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a `verify` config could not be built.
#[derive(Debug, thiserror::Error)]
#[error("CA file {}: {what}", path.display())]
pub struct CaError {
    path: PathBuf,
    what: String,
}

/// The client configs, built on first use.
pub struct ClientTls {
    any: TlsConnector,
    public: TlsConnector,
    by_ca_file: Mutex<HashMap<PathBuf, TlsConnector>>,
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls::new()
    }
}

impl ClientTls {
    /// The shared configs.
    pub fn new() -> ClientTls {
        let any = builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth();
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let public = builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientTls {
            any: TlsConnector::from(Arc::new(any)),
            public: TlsConnector::from(Arc::new(public)),
            by_ca_file: Mutex::default(),
        }
    }

    /// For `opportunistic` and `require`: any certificate.
    pub fn any(&self) -> TlsConnector {
        self.any.clone()
    }

    /// For `verify`: the public roots, or only the CAs in `ca_file`.
    pub fn verifying(&self, ca_file: Option<&Path>) -> Result<TlsConnector, CaError> {
        let Some(path) = ca_file else {
            return Ok(self.public.clone());
        };
        let mut cache = self.by_ca_file.lock().expect("tls cache lock");
        if let Some(c) = cache.get(path) {
            return Ok(c.clone());
        }
        let fail = |what: String| CaError {
            path: path.to_path_buf(),
            what,
        };
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| fail(format!("not a PEM certificate file ({e})")))?;
            roots
                .add(cert)
                .map_err(|e| fail(format!("unusable certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(fail("no CERTIFICATE block found".into()));
        }
        let config = builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let c = TlsConnector::from(Arc::new(config));
        cache.insert(path.to_path_buf(), c.clone());
        Ok(c)
    }
}

/// The name to present (SNI) and verify: a DNS name, or an IP address
/// (no SNI is sent for one).
pub fn server_name(host: &str, ip: std::net::IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.to_string()).unwrap_or(ServerName::IpAddress(ip.into()))
}
