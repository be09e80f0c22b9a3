//! TLS: STARTTLS (RFC 3207) and implicit TLS, protocol versions, SNI,
//! certificate errors and reload.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use crate::support::{
    BIN, Client, SUBMISSION_LISTENERS, Server, body_of, field, pem_cert_der, read_all, require_tool,
};

/// Writes a fresh self-signed pair for `names` to `dir/name.{crt,key}`.
fn make_cert(dir: &Path, name: &str, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&crt, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (crt, key)
}

#[test]
fn starttls_resets_the_session() {
    let s = Server::start("");
    let mut c = Client::greeted(s.addr);
    let ehlo = c.cmd("EHLO client.test", 250).text();
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "no AUTH over plaintext: {ehlo}");
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("STARTTLS", 220);
    c.start_tls("mx.test");
    // Everything from before is forgotten: no HELO, no transaction.
    c.cmd("MAIL FROM:<a@example.test>", 503);
    let ehlo = c.cmd("EHLO client.test", 250).text();
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    c.cmd("STARTTLS", 503);
    let r = c.send_message(
        "a@example.test",
        &["tlsuser@example.test"],
        b"Subject: t\r\n\r\nover tls\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT", 221);
    let msg = String::from_utf8(s.wait_for_mail("tlsuser", 1).remove(0)).unwrap();
    assert!(msg.contains(" with ESMTPS id "), "{msg}");
    assert!(msg.contains("(using TLSv1.3 with cipher TLS13_"), "{msg}");
    let est = s.wait_for_log("TLS established", 1);
    assert!(
        est.iter()
            .any(|l| l.contains("TLSv1.3") && l.contains("mx.test")),
        "{est:?}"
    );
}

#[test]
fn plaintext_pipelined_after_starttls_is_discarded() {
    let s = Server::start("");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    // The injection: commands in the same packet as STARTTLS.
    c.raw(b"STARTTLS\r\nMAIL FROM:<evil@example.test>\r\nRCPT TO:<victim@example.test>\r\n");
    c.expect(220);
    c.start_tls("mx.test");
    // Had the injected MAIL been kept, it would answer first (503 without EHLO).
    let r = c.cmd("EHLO client.test", 250);
    assert!(r.lines[0].contains("Hello client.test"), "{r:?}");
    c.cmd("MAIL FROM:<good@example.test>", 250);
    c.cmd("RCPT TO:<victim@example.test>", 250);
    c.cmd("QUIT", 221);
    // Logged once: a message accepted after the session shows the log has
    // caught up with it.
    s.marker();
    let lines = s.log_lines("discarded plaintext pipelined after STARTTLS");
    assert_eq!(lines.len(), 1, "{}", s.dump_logs());
    assert!(s.log_lines("evil@").is_empty());
}

/// The record-layer `client_version` of the ClientHello that `openssl
/// s_client -msg` printed (`>>> ... ClientHello` and its hex dump), as "3.1".
fn client_hello_version(msg: &str) -> Option<String> {
    let mut lines = msg
        .lines()
        .skip_while(|l| !(l.starts_with(">>>") && l.contains("ClientHello")));
    lines.next()?;
    let bytes: Vec<&str> = lines.next()?.split_whitespace().collect();
    // handshake type (1), length (3), then client_version.
    (bytes.first() == Some(&"01")).then(|| {
        let b = |i: usize| u8::from_str_radix(bytes[i], 16).unwrap();
        format!("{}.{}", b(4), b(5))
    })
}

/// A ClientHello with legacy version TLS 1.1 and no supported_versions
/// extension, but with the extensions a TLS 1.2 server needs.
fn client_hello_tls11() -> Vec<u8> {
    let ext: &[u8] = &[
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04, // signature_algorithms
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d, // supported_groups: x25519
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats
    ];
    let mut body = vec![3, 2];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(ext);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn old_tls_versions_are_refused() {
    use std::io::{Read, Write};
    let openssl = require_tool("openssl");
    let s = Server::start(SUBMISSION_LISTENERS);
    let addr = s.addr_of("submissions").to_string();
    let attempt = |flag: &str| {
        let out = Command::new(&openssl)
            .args([
                "s_client",
                "-connect",
                &addr,
                "-servername",
                "mx.test",
                "-msg",
            ])
            .args([flag, "-cipher", "DEFAULT@SECLEVEL=0"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    for (flag, version) in [("-tls1", "3.1"), ("-tls1_1", "3.2")] {
        let (ok, text) = attempt(flag);
        // The client really offered only the old version...
        assert_eq!(
            client_hello_version(&text).as_deref(),
            Some(version),
            "{flag}: {text}"
        );
        assert!(!text.contains("supported_versions"), "{flag}: {text}");
        // ...and no session came of it.
        assert!(!ok, "{flag}: {text}");
        assert!(text.contains("Cipher is (NONE)"), "{flag}: {text}");
    }
    // The server refused them: a hello older than TLS 1.2 cannot carry the
    // signature_algorithms extension (new in 1.2), which rustls requires.
    let failed = s.wait_for_log("TLS handshake failed", 2);
    for l in &failed {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(
            field(&v, "error"),
            "peer is incompatible: SignatureAlgorithmsExtensionRequired",
            "{l}"
        );
    }
    // A hello that has every TLS 1.2 extension but asks for TLS 1.1 is
    // refused for its version alone: a protocol_version alert.
    let mut raw = std::net::TcpStream::connect(s.addr_of("submissions")).unwrap();
    raw.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    raw.write_all(&client_hello_tls11()).unwrap();
    let mut alert = [0u8; 7];
    raw.read_exact(&mut alert).unwrap();
    // Alert record, fatal (2), protocol_version (70).
    assert_eq!((alert[0], alert[5], alert[6]), (21, 2, 70), "{alert:?}");
    let failed = s.wait_for_log("TLS handshake failed", 3);
    assert!(failed[2].contains("Tls12NotOffered"), "{}", failed[2]);
    // The same client with TLS 1.2 and 1.3 gets through.
    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (_, text) = attempt(flag);
        assert!(
            text.contains(&format!("New, {protocol}, Cipher is ")),
            "{flag}: {text}"
        );
    }
}

#[test]
fn openssl_s_client_starttls_smtp() {
    let openssl = require_tool("openssl");
    let s = Server::start("");
    let mut child = Command::new(openssl)
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-crlf",
            "-quiet",
            "-connect",
        ])
        .arg(s.addr.to_string())
        .args(["-servername", "mx.test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"EHLO openssl.test\nQUIT\n").unwrap();
        // stdin stays open until QUIT is answered; s_client exits on close.
        let out = child.stdout.take().unwrap();
        let text = read_all(out);
        drop(stdin);
        assert!(
            text.contains("250-AUTH PLAIN LOGIN") || text.contains("250 AUTH PLAIN LOGIN"),
            "{text}"
        );
        assert!(text.contains("221"), "{text}");
    }
    let _ = child.wait();
    assert!(!s.log_lines("TLS established").is_empty());
}

#[test]
fn bad_certificate_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (a_crt, _) = make_cert(dir.path(), "a", &["a.test"]);
    let (_, b_key) = make_cert(dir.path(), "b", &["b.test"]);
    let cases = [
        (
            dir.path().join("missing.crt"),
            b_key.clone(),
            "tls.certificate[0].cert",
            "missing.crt",
        ),
        (
            a_crt.clone(),
            b_key.clone(),
            "tls.certificate[0].key",
            "b.key",
        ),
        // The files swapped: the cert file holds a key.
        (
            b_key.clone(),
            a_crt.clone(),
            "tls.certificate[0].cert",
            "b.key: no CERTIFICATE block found",
        ),
    ];
    for (crt, key, want_key, want_text) in cases {
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!(
                "[[listener]]\naddress = \"127.0.0.1:2525\"\n\n[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
                crt.display(),
                key.display()
            ),
        )
        .unwrap();
        let out = crate::support::check_config_file(&file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(want_key) && err.contains(want_text), "{err}");
    }
}

#[test]
fn sni_picks_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (a_crt, a_key) = make_cert(dir.path(), "a", &["mx.test"]);
    let (b_crt, b_key) = make_cert(dir.path(), "b", &["other.test"]);
    let s = Server::start(&format!(
        "[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\nnames = [\"other.test\"]\n\n",
        a_crt.display(),
        a_key.display(),
        b_crt.display(),
        b_key.display()
    ));
    assert_eq!(
        Client::peer_cert(s.addr, "mx.test", true),
        pem_cert_der(&a_crt)
    );
    assert_eq!(
        Client::peer_cert(s.addr, "other.test", true),
        pem_cert_der(&b_crt)
    );
    assert_eq!(
        Client::peer_cert(s.addr, "unknown.test", true),
        pem_cert_der(&a_crt)
    );
}

#[test]
fn sighup_reloads_certificates_without_dropping_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = make_cert(dir.path(), "live", &["mx.test"]);
    let old = pem_cert_der(&crt);
    let mut s = Server::start(&format!(
        "{SUBMISSION_LISTENERS}[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n",
        crt.display(),
        key.display()
    ));
    s.add_user("loader", "pw-loader");
    let addr = s.addr;
    let submissions = s.addr_of("submissions");
    let sessions = 6;
    let ready = Arc::new(Barrier::new(sessions + 1));
    let reloaded = Arc::new(Barrier::new(sessions + 1));
    let mut threads = Vec::new();
    for i in 0..sessions {
        let (ready, reloaded) = (ready.clone(), reloaded.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = if i % 2 == 0 {
                let mut c = Client::greeted(addr);
                c.cmd("EHLO load.test", 250);
                c.cmd("STARTTLS", 220);
                c.start_tls("mx.test");
                c
            } else {
                Client::connect_tls(submissions, "mx.test")
            };
            c.cmd("EHLO load.test", 250);
            if i % 2 == 1 {
                c.cmd(
                    &format!("AUTH PLAIN {}", crate::support::b64(b"\0loader\0pw-loader")),
                    235,
                );
            }
            let to = format!("load{i}@example.test");
            assert_eq!(
                c.send_message("l@example.test", &[&to], b"Subject: b\r\n\r\nbefore\r\n")
                    .code,
                250
            );
            ready.wait();
            reloaded.wait();
            assert_eq!(
                c.send_message("l@example.test", &[&to], b"Subject: a\r\n\r\nafter\r\n")
                    .code,
                250
            );
            c.cmd("QUIT", 221);
        }));
    }
    ready.wait();
    // Replace the files (new key and certificate), then SIGHUP.
    let (new_crt, new_key) = make_cert(dir.path(), "next", &["mx.test"]);
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_crt, &crt).unwrap();
    let new = pem_cert_der(&crt);
    assert_ne!(old, new);
    let ok = Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.log_lines("certificates reloaded").is_empty() {
        assert!(std::time::Instant::now() < deadline, "{}", s.dump_logs());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    reloaded.wait();
    for t in threads {
        t.join().expect("session survived the reload");
    }
    for i in 0..sessions {
        let msgs = s.wait_for_mail(&format!("load{i}"), 2);
        assert!(body_of(&msgs[1]).starts_with(b"after"));
    }
    assert_eq!(Client::peer_cert(addr, "mx.test", true), new);
    assert_eq!(Client::peer_cert(submissions, "mx.test", false), new);
    assert!(s.is_running());
}

#[test]
fn default_config_has_three_roles_and_a_generated_certificate() {
    let s = Server::start(SUBMISSION_LISTENERS);
    let cert = pem_cert_der(&s.self_signed_cert());
    assert_eq!(
        Client::peer_cert(s.addr_of("submissions"), "mx.test", false),
        cert
    );
    assert_eq!(
        Client::peer_cert(s.addr_of("submission"), "mx.test", true),
        cert
    );
    let out = Command::new(BIN).args(["check-config"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 listener(s)"));
}

#[test]
fn starttls_needs_ehlo_first() {
    let s = Server::start("");
    let mut c = Client::greeted(s.addr);
    let r = c.cmd("STARTTLS", 503);
    assert!(r.text().starts_with("5.5.1 "), "{r:?}");
    // Still plaintext and in step: EHLO, then STARTTLS works.
    c.cmd("EHLO client.test", 250);
    c.cmd("STARTTLS", 220);
    c.start_tls("mx.test");
    c.cmd("EHLO client.test", 250);
}

#[test]
fn a_broken_certificate_on_sighup_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = make_cert(dir.path(), "live", &["mx.test"]);
    let old = pem_cert_der(&crt);
    let s = Server::start(&format!(
        "[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n",
        crt.display(),
        key.display()
    ));
    std::fs::write(&crt, "not a certificate\n").unwrap();
    let ok = Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let w = s
        .wait_for_log("certificates not reloaded; keeping the previous ones", 1)
        .remove(0);
    assert!(w.contains("live.crt"), "{w}");
    assert!(s.log_lines("certificates reloaded").is_empty());
    // New handshakes still get the old certificate.
    assert_eq!(Client::peer_cert(s.addr, "mx.test", true), old);
}
