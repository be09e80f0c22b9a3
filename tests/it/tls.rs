//! TLS: STARTTLS (RFC 3207) and implicit TLS, protocol versions, SNI,
//! certificate errors and reload.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use crate::support::{
    BIN, Client, SUBMISSION_LISTENERS, Server, body_of, pem_cert_der, read_all, require_tool,
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
    let lines = s.wait_for_log("discarded plaintext pipelined after STARTTLS", 1);
    assert_eq!(lines.len(), 1, "{}", s.dump_logs());
    assert!(s.log_lines("evil@").is_empty());
}

#[test]
fn old_tls_versions_are_refused() {
    let s = Server::start(SUBMISSION_LISTENERS);
    let port = s.addr_of("submissions").port();
    let script = r#"
import socket, ssl, sys
port = int(sys.argv[1])
def attempt(lo, hi):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = lo
    ctx.maximum_version = hi
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="mx.test") as t:
                return t.version()
        except (ssl.SSLError, ConnectionError) as e:
            return "refused"
V = ssl.TLSVersion
print(attempt(V.TLSv1, V.TLSv1), attempt(V.TLSv1_1, V.TLSv1_1), attempt(V.TLSv1_2, V.TLSv1_2), attempt(V.TLSv1_3, V.TLSv1_3))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "refused refused TLSv1.2 TLSv1.3",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The refusals happened at the server (the client did send a hello).
    let failed = s.wait_for_log("TLS handshake failed", 2);
    assert!(failed.len() >= 2, "{}", s.dump_logs());
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
        (b_key.clone(), a_crt.clone(), "tls.certificate[0].", "no "),
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
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
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
