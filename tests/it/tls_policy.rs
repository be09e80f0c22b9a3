//! Outbound TLS policy against real peers on loopback: MTA-STS policies
//! served over HTTPS (hyper + rustls, certificates from a test CA the
//! sender is told to trust), DNS from dnsmasq, an upstream wasmtp with a
//! certificate from that CA; TLS-RPT results read back through
//! `wasmtp tls-report`. DANE: a zone signed by a real knotd.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::dns::DnsServer;
use crate::support::{BIN, Server};

/// A test CA and the certificates it issued, as files.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// An issued certificate: PEM files and the DER forms.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wasmtp test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn issue(&self, stem: &str, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{stem}.crt")),
            self.dir.path().join(format!("{stem}.key")),
        );
        // The chain: the server's certificate, then the CA's.
        std::fs::write(&c, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        Issued {
            cert: c,
            key: k,
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// An HTTPS server answering `/.well-known/mta-sts.txt` by Host header.
struct PolicyServer {
    port: u16,
    hits: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PolicyServer {
    fn start(cert: &Issued, ca: &Pki, policies: &[(&str, &str)]) -> PolicyServer {
        let chain = vec![cert.der.clone(), ca.ca.der().clone()];
        let key = PrivateKeyDer::Pkcs8(cert.key_der.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let policies: Arc<HashMap<String, String>> = Arc::new(
            policies
                .iter()
                .map(|(h, p)| (h.to_string(), p.to_string()))
                .collect(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let counter = hits.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let tcp = tokio::select! {
                        _ = &mut stopped => return,
                        r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => return },
                    };
                    let (acceptor, policies, counter) =
                        (acceptor.clone(), policies.clone(), counter.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service =
                            service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                let host = req
                                    .headers()
                                    .get(hyper::header::HOST)
                                    .and_then(|h| h.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let body = (req.uri().path() == "/.well-known/mta-sts.txt")
                                    .then(|| policies.get(&host).cloned())
                                    .flatten();
                                counter.fetch_add(1, Ordering::SeqCst);
                                async move {
                                    let resp = match body {
                                        Some(b) => hyper::Response::builder()
                                            .header("content-type", "text/plain")
                                            .body(Full::new(Bytes::from(b))),
                                        None => hyper::Response::builder()
                                            .status(404)
                                            .body(Full::new(Bytes::new())),
                                    };
                                    Ok::<_, std::convert::Infallible>(resp.unwrap())
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        PolicyServer {
            port,
            hits,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A wasmtp taking mail for `domains` with a certificate from the test CA.
fn upstream(cert: &Issued, domains: &[&str]) -> Server {
    let list: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    Server::start(&format!(
        "[local]\ndomains = [{}]\ncatch_all = true\n\n[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n",
        list.join(", "),
        cert.cert.display(),
        cert.key.display()
    ))
}

/// A sending wasmtp: relays for loopback, resolves with `dns`, delivers MX
/// mail to `mx_port`, trusts the test CA for MTA-STS; `extra` is appended.
fn sender(dns: &DnsServer, mx_port: u16, pki: &Pki, https_port: u16, extra: &str) -> Server {
    Server::start(&format!(
        "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n[queue]\nretry_intervals = [\"1h\"]\n\n{}\
         [outbound]\nmx_port = {mx_port}\ntls = \"opportunistic\"\n\n\
         [outbound.mta_sts]\nca_file = \"{}\"\nhttps_port = {https_port}\n\n{extra}",
        dns.config(),
        pki.ca_file().display()
    ))
}

fn submit(s: &Server, rcpt: &str) {
    let body = format!("Subject: to {rcpt}\r\n\r\nhello {rcpt}\r\n");
    crate::outbound::submit(s, &[rcpt], body.as_bytes());
}

/// The first log line with every one of `needles` (waits for it).
fn wait_log(s: &Server, needles: &[&str]) -> String {
    crate::outbound::wait_until(s, &format!("a log line with {needles:?}"), || {
        s.log_lines(needles[0])
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    });
    s.log_lines(needles[0])
        .into_iter()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap()
}

/// Waits for `rcpt`'s `deferred` line and checks it says each of `why`.
fn assert_deferred(s: &Server, rcpt: &str, why: &[&str]) {
    let l = wait_log(s, &["deferred", rcpt]);
    for w in why {
        assert!(l.contains(w), "{w:?} not in: {l}");
    }
}

/// `wasmtp tls-report --domain DOMAIN` for the server's config, parsed.
fn tls_report(s: &Server, domain: &str) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["tls-report", "--domain", domain, "--config"])
        .arg(s.config_file())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tls-report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The report's policy of `kind`, its success count and failure counts by
/// result type.
fn counts(report: &serde_json::Value, kind: &str) -> (u64, HashMap<String, u64>) {
    let p = report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"]["policy-type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} policy in {report:#}"));
    let ok = p["summary"]["total-successful-session-count"]
        .as_u64()
        .unwrap();
    let mut failed = HashMap::new();
    for f in p["failure-details"].as_array().unwrap() {
        *failed
            .entry(f["result-type"].as_str().unwrap().to_string())
            .or_default() += f["failed-session-count"].as_u64().unwrap();
    }
    (ok, failed)
}

fn policy(mode: &str, mx: &[&str]) -> String {
    let mut p = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        p.push_str(&format!("mx: {m}\r\n"));
    }
    p.push_str("max_age: 86400\r\n");
    p
}

/// DNS for a domain with an MTA-STS TXT record, its policy host and one MX.
fn sts_records(domain: &str, mx: &str) -> Vec<String> {
    vec![
        format!("--txt-record=_mta-sts.{domain},v=STSv1; id=20261129"),
        format!("--host-record=mta-sts.{domain},127.0.0.1"),
        format!("--mx-host={domain},{mx},10"),
        format!("--host-record={mx},127.0.0.1"),
    ]
}

fn dns(records: &[Vec<String>]) -> DnsServer {
    let all: Vec<String> = records.concat();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    DnsServer::start(&refs)
}

#[test]
fn mta_sts_enforce_delivers_to_a_listed_mx_and_defers_others() {
    let pki = Pki::new();
    let mx_cert = pki.issue("mx", &["mail.good.test", "rogue.bad.test"]);
    let web = pki.issue(
        "web",
        &[
            "mta-sts.good.test",
            "mta-sts.bad.test",
            "mta-sts.wrongcert.test",
        ],
    );
    let https = PolicyServer::start(
        &web,
        &pki,
        &[
            ("mta-sts.good.test", &policy("enforce", &["mail.good.test"])),
            ("mta-sts.bad.test", &policy("enforce", &["mail.bad.test"])),
            (
                "mta-sts.wrongcert.test",
                &policy("enforce", &["*.wrongcert.test"]),
            ),
        ],
    );
    let dns = dns(&[
        sts_records("good.test", "mail.good.test"),
        sts_records("bad.test", "rogue.bad.test"),
        sts_records("wrongcert.test", "mail.wrongcert.test"),
    ]);
    let up = upstream(&mx_cert, &["good.test", "bad.test", "wrongcert.test"]);
    let s = sender(&dns, up.addr.port(), &pki, https.port, "");

    // Listed MX with a valid certificate for its name: delivered over TLS.
    submit(&s, "good@good.test");
    let got = up.wait_for_mail("good", 1);
    let text = String::from_utf8_lossy(&got[0]).into_owned();
    assert!(text.contains("with ESMTPS"), "{text}");
    wait_log(&s, &["delivered", "good@good.test"]);

    // An MX the policy does not list: never contacted, deferred with 4.7.0.
    submit(&s, "bad@bad.test");
    let why = "not listed in the MTA-STS policy of bad.test";
    assert_deferred(&s, "bad@bad.test", &[why, "mail.bad.test", "4.7.0"]);
    // A listed MX whose certificate does not carry its name: 4.7.5.
    submit(&s, "wc@wrongcert.test");
    let why = "certificate refused under the MTA-STS policy of wrongcert.test";
    assert_deferred(&s, "wc@wrongcert.test", &[why, "4.7.5"]);
    assert!(up.mail("bad").is_empty() && up.mail("wc").is_empty());
    // The three policies came over HTTPS.
    assert!(https.hits.load(Ordering::SeqCst) >= 3);

    // TLS-RPT: what each domain's sessions came to.
    let (ok, failed) = counts(&tls_report(&s, "good.test"), "sts");
    assert_eq!((ok, failed.len()), (1, 0), "{failed:?}");
    let (ok, failed) = counts(&tls_report(&s, "bad.test"), "sts");
    assert_eq!(ok, 0);
    assert_eq!(failed.get("validation-failure"), Some(&1), "{failed:?}");
    let (ok, failed) = counts(&tls_report(&s, "wrongcert.test"), "sts");
    assert_eq!(ok, 0);
    assert_eq!(
        failed.get("certificate-host-mismatch"),
        Some(&1),
        "{failed:?}"
    );
}

/// One recipient domain: its `_mta-sts` TXT record, a policy host serving
/// `policy` (404 without one), one MX host `mx`, an upstream whose
/// certificate names `cert_names`, and a sender (`extra` goes into its
/// `[outbound.mta_sts]`).
struct OneDomain {
    https: PolicyServer,
    up: Server,
    s: Server,
    _pki: Pki,
    _dns: DnsServer,
}

fn one_domain(
    domain: &str,
    policy: Option<String>,
    mx: &str,
    cert_names: &[&str],
    extra: &str,
) -> OneDomain {
    let pki = Pki::new();
    let mx_cert = pki.issue("mx", cert_names);
    let host = format!("mta-sts.{domain}");
    let web = pki.issue("web", &[&host]);
    let served: Vec<(&str, &str)> = policy.iter().map(|p| (host.as_str(), p.as_str())).collect();
    let https = PolicyServer::start(&web, &pki, &served);
    let dns = dns(&[sts_records(domain, mx)]);
    let up = upstream(&mx_cert, &[domain]);
    let s = sender(&dns, up.addr.port(), &pki, https.port, extra);
    OneDomain {
        https,
        up,
        s,
        _pki: pki,
        _dns: dns,
    }
}

#[test]
fn mta_sts_testing_delivers_and_records_the_failures() {
    // The certificate names neither MX host; only one host is listed.
    let t = one_domain(
        "trial.test",
        Some(policy("testing", &["mail.trial.test"])),
        "rogue.trial.test",
        &["elsewhere.test"],
        "",
    );
    submit(&t.s, "t@trial.test");
    let got = t.up.wait_for_mail("t", 1);
    assert!(String::from_utf8_lossy(&got[0]).contains("with ESMTPS"));
    wait_log(&t.s, &["delivered", "t@trial.test"]);
    let (ok, failed) = counts(&tls_report(&t.s, "trial.test"), "sts");
    assert_eq!(ok, 0, "{failed:?}");
    assert_eq!(failed.get("validation-failure"), Some(&1), "{failed:?}");
    let mismatch = failed.get("certificate-host-mismatch");
    assert_eq!(mismatch, Some(&1), "{failed:?}");
    let l = wait_log(&t.s, &["TLS policy failure", "trial.test"]);
    assert!(l.contains("rogue.trial.test"), "{l}");
}

#[test]
fn mta_sts_policy_is_kept_across_a_restart() {
    let OneDomain {
        https,
        up,
        mut s,
        _pki,
        _dns,
    } = one_domain(
        "kept.test",
        Some(policy("enforce", &["mail.kept.test"])),
        "rogue.kept.test",
        &["rogue.kept.test"],
        "",
    );
    submit(&s, "k1@kept.test");
    wait_log(&s, &["deferred", "k1@kept.test"]);
    wait_log(&s, &["MTA-STS policy fetched", "kept.test"]);
    // The policy host goes away; the restarted server still has the policy.
    drop(https);
    s.signal_and_wait("TERM");
    s.start_again();
    wait_log(&s, &["MTA-STS policies loaded from the cache"]);
    submit(&s, "k2@kept.test");
    let why = "not listed in the MTA-STS policy of kept.test";
    assert_deferred(&s, "k2@kept.test", &[why]);
    assert!(
        s.log_lines("MTA-STS policy fetch failed").is_empty(),
        "{}",
        s.dump_logs()
    );
    assert!(up.mail("k1").is_empty() && up.mail("k2").is_empty());
}

#[test]
fn mta_sts_fetch_failure_without_a_cached_policy_delivers_and_reports_it() {
    // The TXT record says there is a policy; the HTTPS server has none (404).
    let t = one_domain(
        "nopolicy.test",
        None,
        "mail.nopolicy.test",
        &["mail.nopolicy.test"],
        "",
    );
    submit(&t.s, "n@nopolicy.test");
    t.up.wait_for_mail("n", 1);
    let l = wait_log(&t.s, &["MTA-STS policy fetch failed", "nopolicy.test"]);
    assert!(l.contains("HTTP status 404"), "{l}");
    assert_eq!(t.https.hits.load(Ordering::SeqCst), 1);
    let report = tls_report(&t.s, "nopolicy.test");
    let (_, failed) = counts(&report, "sts");
    assert_eq!(failed.get("sts-policy-fetch-error"), Some(&1), "{failed:?}");
    let (ok, _) = counts(&report, "no-policy-found");
    assert_eq!(ok, 1);
}

/// A real authoritative DNS server (Knot, installed by scripts/test) on a
/// loopback port, serving one zone that it signs itself (DNSSEC, one
/// ECDSA P-256 key), and that zone's DNSKEY as a trust anchor file.
struct SignedZone {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl SignedZone {
    fn start(zone: &str, records: &str) -> SignedZone {
        let knotd = std::path::Path::new("/usr/sbin/knotd");
        assert!(
            knotd.exists(),
            "knotd not found: install Debian's knot (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("db")).unwrap();
        let port = free_udp_tcp_port();
        std::fs::write(
            d.join("knot.conf"),
            format!(
                "server:\n    listen: 127.0.0.1@{port}\n    rundir: {dir}\n\
                 database:\n    storage: {dir}/db\n\
                 policy:\n  - id: test\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n\
                 template:\n  - id: default\n    storage: {dir}\n    dnssec-signing: on\n    dnssec-policy: test\n\
                 \x20   zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n\
                 zone:\n  - domain: {zone}\n    file: zone.txt\n\
                 log:\n  - target: stderr\n    any: info\n",
                dir = d.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("zone.txt"),
            format!(
                "$ORIGIN {zone}.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\nns A 127.0.0.1\n{records}"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("knotd.log")).unwrap();
        let child = Command::new(knotd)
            .arg("-c")
            .arg(d.join("knot.conf"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let z = SignedZone { dir, port, child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !z.log().contains("DNSSEC, successfully signed")
            || !z.log().contains("loaded, serial")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "knotd did not sign the zone:\n{}",
                z.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // The zone's key as the trust anchor (DNSKEY in zone file syntax).
        let out = Command::new("/usr/sbin/keymgr")
            .arg("-c")
            .arg(z.dir.path().join("knot.conf"))
            .args([&format!("{zone}."), "dnskey"])
            .output()
            .unwrap();
        let dnskey = String::from_utf8(out.stdout).unwrap();
        assert!(dnskey.contains("DNSKEY 257"), "keymgr: {dnskey}");
        // hickory's trust anchor files name the class, as `dig` prints them.
        std::fs::write(z.anchor(), dnskey.replace(" DNSKEY ", " IN DNSKEY ")).unwrap();
        z
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knotd.log")).unwrap_or_default()
    }

    fn anchor(&self) -> PathBuf {
        self.dir.path().join("anchor.key")
    }

    /// `[dns]` pointing at this server.
    fn config(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"127.0.0.1:{}\"]\ntimeout = \"2s\"\n\n",
            self.port
        )
    }
}

impl Drop for SignedZone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_tcp_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A sending wasmtp with DANE on, resolving with `zone`'s server and
/// trusting `anchor`, delivering MX mail to `mx_port`.
/// `extra` is appended.
fn dane_sender(zone: &SignedZone, mx_port: u16, anchor: &std::path::Path, extra: &str) -> Server {
    Server::start(&format!(
        "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n[queue]\nretry_intervals = [\"1h\"]\n\n{}\
         [outbound]\nmx_port = {mx_port}\ntls = \"opportunistic\"\n\n\
         [outbound.dane]\nmode = \"opportunistic\"\ntrust_anchor = \"{}\"\n\n{extra}",
        zone.config(),
        anchor.display()
    ))
}

/// `3 1 1` (DANE-EE, public key, SHA-256) for a certificate's key.
fn tlsa_3_1_1(cert: &Issued) -> String {
    use sha2::Digest;
    let key = rcgen::KeyPair::try_from(cert.key_der.as_slice()).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let hash = sha2::Sha256::digest(spki);
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn dane_tlsa_pins_the_certificate_before_mta_sts_and_a_mismatch_defers() {
    let pki = Pki::new();
    // The certificate names no MX host: DANE-EE checks only the key.
    let cert = pki.issue("mx", &["unrelated.test"]);
    let up = upstream(&cert, &["dane.test", "bad.dane.test"]);
    let port = up.addr.port();
    // dane.test also has an MTA-STS policy that lists another MX host:
    // DANE takes precedence, so it does not apply to mail.dane.test.
    let web = pki.issue("web", &["mta-sts.dane.test"]);
    let sts = policy("enforce", &["other.dane.test"]);
    let https = PolicyServer::start(&web, &pki, &[("mta-sts.dane.test", &sts)]);
    let zone = SignedZone::start(
        "dane.test",
        &format!(
            "@ MX 10 mail\nmail A 127.0.0.1\n_{port}._tcp.mail TLSA 3 1 1 {}\n\
             bad MX 10 mx2\nmx2 A 127.0.0.1\n_{port}._tcp.mx2 TLSA 3 1 1 {}\n\
             _mta-sts TXT \"v=STSv1; id=1\"\nmta-sts A 127.0.0.1\n",
            tlsa_3_1_1(&cert),
            "00".repeat(32)
        ),
    );
    let mta_sts = format!(
        "[outbound.mta_sts]\nca_file = \"{}\"\nhttps_port = {}\n",
        pki.ca_file().display(),
        https.port
    );
    let s = dane_sender(&zone, port, &zone.anchor(), &mta_sts);
    submit(&s, "d@dane.test");
    wait_log(&s, &["delivered", "d@dane.test"]);
    let got = up.wait_for_mail("d", 1);
    assert!(String::from_utf8_lossy(&got[0]).contains("with ESMTPS"));
    let (ok, failed) = counts(&tls_report(&s, "dane.test"), "tlsa");
    assert_eq!((ok, failed.len()), (1, 0), "{failed:?}");
    wait_log(&s, &["MTA-STS policy fetched", "dane.test"]);

    submit(&s, "x@bad.dane.test");
    let why = ["certificate refused under DANE", "no TLSA record matches"];
    assert_deferred(&s, "x@bad.dane.test", &[why[0], why[1], "4.7.5"]);
    assert!(up.mail("x").is_empty());
    let (ok, failed) = counts(&tls_report(&s, "bad.dane.test"), "tlsa");
    assert_eq!(ok, 0);
    assert_eq!(failed.get("tlsa-invalid"), Some(&1), "{failed:?}");
}

#[test]
fn dane_answers_that_do_not_validate_make_the_host_unusable() {
    let pki = Pki::new();
    let cert = pki.issue("mx", &["mail.dane.test"]);
    let up = upstream(&cert, &["dane.test"]);
    let port = up.addr.port();
    let zone = SignedZone::start(
        "dane.test",
        &format!(
            "@ MX 10 mail\nmail A 127.0.0.1\n_{port}._tcp.mail TLSA 3 1 1 {}\n",
            tlsa_3_1_1(&cert)
        ),
    );
    // Another server's key for the same zone: nothing validates.
    let impostor = SignedZone::start("dane.test", "");
    let s = dane_sender(&zone, port, &impostor.anchor(), "");
    submit(&s, "d@dane.test");
    assert_deferred(
        &s,
        "d@dane.test",
        &["TLSA lookup for _", "mail.dane.test", "4.7.5"],
    );
    assert!(up.mail("d").is_empty());
    let (_, failed) = counts(&tls_report(&s, "dane.test"), "tlsa");
    assert_eq!(failed.get("dnssec-invalid"), Some(&1), "{failed:?}");
}

#[test]
fn mta_sts_policy_larger_than_max_policy_size_is_refused() {
    // Unknown fields are allowed (RFC 8461 §3.2): 2000 bytes of them.
    let mut big = policy("enforce", &["mail.big.test"]);
    for i in 0..100 {
        big.push_str(&format!("comment{i:03}: padding\r\n"));
    }
    let t = one_domain(
        "big.test",
        Some(big),
        "rogue.big.test",
        &["rogue.big.test"],
        "max_policy_size = 1000\n",
    );
    // No policy in force: delivered to the MX that policy would refuse.
    submit(&t.s, "b@big.test");
    t.up.wait_for_mail("b", 1);
    let l = wait_log(&t.s, &["MTA-STS policy fetch failed", "big.test"]);
    assert!(l.contains("policy larger than 1000 bytes"), "{l}");
    wait_log(&t.s, &["limit reached", "outbound.mta_sts.max_policy_size"]);
    let (_, failed) = counts(&tls_report(&t.s, "big.test"), "sts");
    assert_eq!(failed.get("sts-policy-invalid"), Some(&1), "{failed:?}");
}

#[test]
fn dane_ta_needs_the_chain_to_the_pinned_ca_and_the_mx_name() {
    use sha2::Digest;
    let pki = Pki::new();
    // The upstream presents its certificate and the CA's (Pki::issue
    // writes the chain); the TLSA record pins the CA (2 0 1).
    let cert = pki.issue("mx", &["mx3.dane.test"]);
    let up = upstream(&cert, &["ta.dane.test", "tabad.dane.test"]);
    let port = up.addr.port();
    let ca: String = sha2::Sha256::digest(pki.ca.der().as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let zone = SignedZone::start(
        "dane.test",
        &format!(
            "ta MX 10 mx3\nmx3 A 127.0.0.1\n_{port}._tcp.mx3 TLSA 2 0 1 {ca}\n\
             tabad MX 10 mx4\nmx4 A 127.0.0.1\n_{port}._tcp.mx4 TLSA 2 0 1 {ca}\n"
        ),
    );
    let s = dane_sender(&zone, port, &zone.anchor(), "");
    submit(&s, "a@ta.dane.test");
    wait_log(&s, &["delivered", "a@ta.dane.test"]);
    up.wait_for_mail("a", 1);
    // Same CA, but the certificate does not name mx4.dane.test.
    submit(&s, "b@tabad.dane.test");
    assert_deferred(
        &s,
        "b@tabad.dane.test",
        &["DANE-TA chain check failed", "4.7.5"],
    );
    assert!(up.mail("b").is_empty());
}
