//! rustls client configs for STARTTLS towards the next hop, one per TLS
//! policy: `opportunistic` and `require` accept any certificate (RFC 7435:
//! encryption against passive listeners without authentication, which is
//! what MX delivery can do without DANE or MTA-STS); `verify` checks the
//! chain and the host name against the public roots (webpki-roots) or a
//! configured CA file.
//!
//! Configs are built once per CA file and shared by every connection.
//!
//! The TLS policies of MX delivery have their own verifiers (`PolicyTls`):
//! MTA-STS checks the chain and the MX name, DANE matches TLSA records;
//! each records what it saw (`Seen`) for TLS-RPT.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::dane::Tlsa;
use super::tlsrpt::ResultType;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
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
        let any = connector(Check::Any, &Seen::default());
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let public = builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientTls {
            any,
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

/// What a policy-checking verifier saw: the first failure, as its TLS-RPT
/// type and a reason. One per connection attempt.
#[derive(Debug, Clone, Default)]
pub struct Seen(Arc<Mutex<Option<(ResultType, String)>>>);

impl Seen {
    fn set(&self, kind: ResultType, why: String) {
        let mut slot = self.0.lock().expect("seen lock");
        if slot.is_none() {
            *slot = Some((kind, why));
        }
    }

    /// The failure, if any.
    pub fn get(&self) -> Option<(ResultType, String)> {
        self.0.lock().expect("seen lock").clone()
    }
}

/// The TLS-RPT type of a certificate error.
pub fn result_type(e: &rustls::Error) -> ResultType {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => ResultType::CertificateExpired,
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                ResultType::CertificateHostMismatch
            }
            C::UnknownIssuer | C::BadSignature => ResultType::CertificateNotTrusted,
            _ => ResultType::ValidationFailure,
        },
        _ => ResultType::ValidationFailure,
    }
}

/// What a verifier checks about the server's certificate.
#[derive(Debug)]
enum Check {
    /// Nothing (`opportunistic`, `require`: RFC 7435); the handshake
    /// signatures still prove the server holds the key, so the session
    /// is really encrypted to whoever presented it.
    Any,
    /// MTA-STS: the chain and the MX name against the public roots (and
    /// `mta_sts.ca_file`); a failure refuses the handshake under
    /// `enforce` and is only recorded under `testing`.
    Sts {
        webpki: Arc<rustls::client::WebPkiServerVerifier>,
        enforce: bool,
    },
    /// DANE (RFC 7672 §3): a usable TLSA record must match. DANE-EE (3):
    /// the server's own certificate or key, no name or expiry checks.
    /// DANE-TA (2): a certificate of the presented chain is the trust
    /// anchor; the server certificate must chain to it and carry the MX
    /// host name.
    Dane(Arc<Vec<Tlsa>>),
}

/// The verifier of every config but `verify`'s: checks per `check`,
/// records the first failure in `seen`; handshake signatures are always
/// checked.
#[derive(Debug)]
struct PolicyVerifier {
    check: Check,
    provider: Arc<CryptoProvider>,
    seen: Seen,
}

/// DANE-TA: `end_entity` chains to a certificate of `intermediates` that
/// matches a usage-2 record, and is valid for `server_name`.
fn dane_ta(
    records: &[Tlsa],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let mut last = None;
    for r in records.iter().filter(|r| r.usage == 2) {
        for ta in intermediates.iter().filter(|c| r.matches(c)) {
            let mut roots = RootCertStore::empty();
            if roots.add(ta.clone()).is_err() {
                continue;
            }
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            match v.verify_server_cert(end_entity, intermediates, server_name, &[], now) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
    }
    Err(last.unwrap_or(rustls::Error::InvalidCertificate(
        rustls::CertificateError::ApplicationVerificationFailure,
    )))
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (result, enforce) = match &self.check {
            Check::Any => (Ok(()), false),
            Check::Sts { webpki, enforce } => {
                let r = webpki
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                    .map(|_| ())
                    .inspect_err(|e| self.seen.set(result_type(e), e.to_string()));
                (r, *enforce)
            }
            Check::Dane(records) => {
                let r = if records
                    .iter()
                    .any(|r| r.usage == 3 && r.matches(end_entity))
                {
                    Ok(())
                } else {
                    dane_ta(records, end_entity, intermediates, server_name, now)
                };
                let r = r.inspect_err(|e| {
                    let why = match e {
                        rustls::Error::InvalidCertificate(
                            rustls::CertificateError::ApplicationVerificationFailure,
                        ) => "no TLSA record matches the certificate".to_string(),
                        e => format!("DANE-TA chain check failed: {e}"),
                    };
                    self.seen.set(ResultType::TlsaInvalid, why);
                });
                (r, true)
            }
        };
        match result {
            Err(e) if enforce => Err(e),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client configs for the TLS policies (MTA-STS and DANE), built per
/// connection around the shared roots: each attempt needs its own record
/// of what the verifier saw.
pub struct PolicyTls {
    roots: Arc<RootCertStore>,
    https: TlsConnector,
}

impl PolicyTls {
    /// The public roots plus the CAs in `ca_file` (`outbound.mta_sts.ca_file`).
    pub fn new(ca_file: Option<&Path>) -> Result<PolicyTls, CaError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let fail = |what: String| CaError {
                path: path.to_path_buf(),
                what,
            };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| fail(format!("not a PEM certificate file ({e})")))?;
                roots
                    .add(cert)
                    .map_err(|e| fail(format!("unusable certificate: {e}")))?;
            }
        }
        let roots = Arc::new(roots);
        let https = builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        Ok(PolicyTls {
            roots,
            https: TlsConnector::from(Arc::new(https)),
        })
    }

    /// For fetching MTA-STS policies: a valid certificate, nothing else.
    pub fn https(&self) -> TlsConnector {
        self.https.clone()
    }

    /// For an MX host under an MTA-STS policy.
    pub fn sts(&self, enforce: bool, seen: &Seen) -> Result<TlsConnector, CaError> {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| CaError {
            path: PathBuf::from("(roots)"),
            what: e.to_string(),
        })?;
        Ok(connector(Check::Sts { webpki, enforce }, seen))
    }

    /// For an MX host with usable TLSA records.
    pub fn dane(&self, records: Arc<Vec<Tlsa>>, seen: &Seen) -> TlsConnector {
        connector(Check::Dane(records), seen)
    }
}

fn connector(check: Check, seen: &Seen) -> TlsConnector {
    let v = PolicyVerifier {
        check,
        provider: provider(),
        seen: seen.clone(),
    };
    let config = builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(v))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}
