//! SMTP AUTH (RFC 4954) on the submission roles, the users command, and
//! the per-client brakes: failed logins, concurrent password checks, and
//! connections per client (an IPv4 address or an IPv6 /64).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Client, SUBMISSION_LISTENERS, Server, b64, require_tool};

/// Submission listeners, a quick failure brake for tests.
fn server(extra: &str) -> Server {
    Server::start(&format!(
        "{SUBMISSION_LISTENERS}[auth]\nfailure_delay = \"1ms\"\nmax_failures = 10\n{extra}\n"
    ))
}

fn plain(user: &str, pw: &str) -> String {
    b64(format!("\0{user}\0{pw}").as_bytes())
}

#[test]
fn auth_is_refused_before_tls_on_submission() {
    let s = server("");
    let mut c = Client::greeted(s.addr_of("submission"));
    let ehlo = c.cmd("EHLO client.test", 250).text();
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let r = c.cmd(&format!("AUTH PLAIN {}", plain("a", "b")), 530);
    assert!(r.text().contains("STARTTLS"), "{r:?}");
    c.cmd("MAIL FROM:<a@example.test>", 530);
    c.cmd("STARTTLS", 220);
    c.start_tls("mx.test");
    let ehlo = c.cmd("EHLO client.test", 250).text();
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    // Still no MAIL without AUTH on a submission listener.
    c.cmd("MAIL FROM:<a@example.test>", 530);
}

#[test]
fn plain_and_login_right_and_wrong() {
    let s = server("");
    s.add_user("alice", "correct horse");
    let addr = s.addr_of("submissions");
    let tls = || {
        let mut c = Client::connect_tls(addr, "mx.test");
        c.cmd("EHLO client.test", 250);
        c
    };
    // PLAIN with an initial response.
    let mut c = tls();
    c.cmd(
        &format!("AUTH PLAIN {}", plain("alice", "correct horse")),
        235,
    );
    c.cmd("AUTH PLAIN", 503);
    c.cmd("MAIL FROM:<alice@example.test>", 250);
    // PLAIN after an empty challenge; wrong password; unknown user.
    let mut c = tls();
    assert_eq!(c.cmd("AUTH PLAIN", 334).text(), "");
    c.send(&plain("alice", "wrong")).expect(535);
    c.cmd(
        &format!("AUTH PLAIN {}", plain("mallory", "correct horse")),
        535,
    );
    c.cmd("MAIL FROM:<alice@example.test>", 530);
    // LOGIN: username and password challenges.
    let mut c = tls();
    assert_eq!(c.cmd("AUTH LOGIN", 334).text(), "VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64(b"alice"), 334).text(), "UGFzc3dvcmQ6");
    c.cmd(&b64(b"correct horse"), 235);
    let mut c = tls();
    c.cmd(&format!("AUTH LOGIN {}", b64(b"alice")), 334);
    c.cmd(&b64(b"nope"), 535);
    // Cancel, garbage, unknown mechanism.
    c.cmd("AUTH LOGIN", 334);
    c.cmd("*", 501);
    c.cmd("AUTH PLAIN !!!", 501);
    c.cmd("AUTH CRAM-MD5", 504);
    // Logged with the identity.
    let ok = s.wait_for_log("\"authenticated\"", 2);
    assert_eq!(ok.len(), 2, "{}", s.dump_logs());
    assert!(ok.iter().all(|l| l.contains("alice")));
}

#[test]
fn failed_attempts_are_slowed_and_the_session_closed() {
    let s = Server::start(&format!(
        "{SUBMISSION_LISTENERS}[auth]\nfailure_delay = \"100ms\"\nmax_failures = 3\n"
    ));
    s.add_user("bob", "right");
    let addr = s.addr_of("submissions");
    // Each failure is answered no sooner than its delay (a lower bound only:
    // a loaded machine may take longer).
    let fail = |c: &mut Client, user: &str, pw: &str, code: u16, at_least_ms: u64| {
        let started = Instant::now();
        c.cmd(&format!("AUTH PLAIN {}", plain(user, pw)), code);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(at_least_ms),
            "{user}/{pw}: answered after {took:?}, before the {at_least_ms} ms brake"
        );
    };
    let mut c = Client::connect_tls(addr, "mx.test");
    c.cmd("EHLO client.test", 250);
    fail(&mut c, "bob", "w1", 535, 100);
    fail(&mut c, "bob", "w2", 535, 200);
    fail(&mut c, "bob", "w3", 421, 300);
    assert!(c.closed());
    // The brake is per client IP, across sessions: the next failure waits longer.
    let mut c = Client::connect_tls(addr, "mx.test");
    c.cmd("EHLO client.test", 250);
    fail(&mut c, "nobody", "w4", 535, 400);
    // A success clears the brake: the next failure waits the first delay again.
    c.cmd(&format!("AUTH PLAIN {}", plain("bob", "right")), 235);
    let mut c = Client::connect_tls(addr, "mx.test");
    c.cmd("EHLO client.test", 250);
    fail(&mut c, "bob", "w5", 535, 100);
    let delays: Vec<String> = s
        .wait_for_log("authentication failed", 5)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["delay_ms"].to_string()
        })
        .collect();
    assert_eq!(
        delays,
        ["100", "200", "300", "400", "100"],
        "{}",
        s.dump_logs()
    );
}

#[test]
fn auth_flood_gets_454_while_mx_mail_is_accepted() {
    let s = Server::start(&format!(
        "{SUBMISSION_LISTENERS}[auth]\nfailure_delay = \"1ms\"\nmax_failures = 10\nmax_verifications = 1\nverification_wait = \"0s\"\n"
    ));
    s.add_user("alice", "right");
    let addr = s.addr_of("submissions");
    const SESSIONS: usize = 30;
    let start = std::sync::Arc::new(std::sync::Barrier::new(SESSIONS));
    let flood: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let start = start.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect_tls(addr, "mx.test");
                c.cmd("EHLO flood.test", 250);
                // All sessions ask at once, so one check slot cannot serve them all.
                start.wait();
                (0..3)
                    .map(|n| {
                        c.send(&format!(
                            "AUTH PLAIN {}",
                            plain("alice", &format!("w{i}.{n}"))
                        ));
                        c.reply().code
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let mut mx = Client::greeted(s.addr);
    mx.cmd("EHLO mx-client.test", 250);
    let r = mx.send_message(
        "someone@remote.test",
        &["flooded@example.test"],
        b"Subject: during an AUTH flood\r\n\r\nstill delivered\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    let codes: Vec<u16> = flood.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(codes.iter().all(|c| *c == 535 || *c == 454), "{codes:?}");
    assert!(codes.contains(&454), "no 454 in {codes:?}");
    let hits = s.wait_for_log("\"limit\":\"auth.max_verifications\"", 1);
    assert!(hits[0].contains("limit reached"), "{}", hits[0]);
    s.wait_for_mail("flooded", 1);
}

#[test]
fn failed_username_is_logged_escaped() {
    let s = server("");
    let mut c = Client::connect_tls(s.addr_of("submissions"), "mx.test");
    c.cmd("EHLO client.test", 250);
    let forged = "mallory\r\n{\"level\":\"ERROR\",\"message\":\"forged\"}";
    c.cmd(&format!("AUTH PLAIN {}", plain(forged, "pw")), 535);
    c.cmd(&format!("AUTH LOGIN {}", b64(b"eve\nforged line")), 334);
    c.cmd(&b64(b"pw"), 535);
    let users: Vec<String> = s
        .wait_for_log("authentication failed", 2)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["user"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        users,
        [
            r#"mallory\r\n{"level":"ERROR","message":"forged"}"#,
            r"eve\nforged line"
        ],
        "{}",
        s.dump_logs()
    );
    // No line of its own: every log line is one JSON event, none of them forged.
    for l in s.log_lines("") {
        let v: serde_json::Value = serde_json::from_str(&l).expect("one JSON event per line");
        assert_ne!(v["message"], "forged", "{l}");
    }
}

#[test]
fn ipv6_client_is_limited_per_network() {
    let s = Server::start(
        "[[listener]]\nname = \"v6\"\naddress = \"[::1]:0\"\n\n[limits]\nmax_connections_per_ip = 2\n",
    );
    let addr = s.addr_of("v6");
    assert!(addr.is_ipv6());
    let _a = Client::greeted(addr);
    let _b = Client::greeted(addr);
    let r = Client::connect(addr).expect(421);
    assert!(r.text().starts_with("4.7.0"), "{r:?}");
    let hit = s.wait_for_log("\"limit\":\"limits.max_connections_per_ip\"", 1);
    assert!(hit[0].contains("counted as ::/64"), "{}", hit[0]);
    // IPv4 clients are other clients.
    Client::greeted(s.addr);
}

#[test]
fn plaintext_auth_on_loopback_only_when_configured() {
    let s = server("allow_plaintext_on_loopback = true\n");
    s.add_user("carol", "pw");
    let mut c = Client::greeted(s.addr);
    let ehlo = c.cmd("EHLO client.test", 250).text();
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    c.cmd(&format!("AUTH PLAIN {}", plain("carol", "pw")), 235);
}

#[test]
fn user_command_changes_are_picked_up_without_restart() {
    let s = server("");
    let addr = s.addr_of("submissions");
    let try_login = |pw: &str| {
        let mut c = Client::connect_tls(addr, "mx.test");
        c.cmd("EHLO client.test", 250);
        c.send(&format!("AUTH PLAIN {}", plain("dave", pw)));
        c.reply().code
    };
    assert_eq!(try_login("one"), 535);
    s.add_user("dave", "one");
    assert_eq!(try_login("one"), 235);
    let out = s.user_cmd(&["add", "dave"], "again\n");
    assert!(!out.status.success(), "duplicate add refused");
    let out = s.user_cmd(&["passwd", "dave"], "two\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(try_login("one"), 535);
    assert_eq!(try_login("two"), 235);
    let out = s.user_cmd(&["list"], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dave\n");
    let users = std::fs::read_to_string(s.data().join("users")).unwrap();
    assert!(
        users.contains("dave:$argon2id$") && !users.contains("two"),
        "{users}"
    );
    let out = s.user_cmd(&["del", "dave"], "");
    assert!(out.status.success());
    assert_eq!(try_login("two"), 535);
    let out = s.user_cmd(&["add", "eve"], "\n");
    assert!(!out.status.success(), "empty password refused");
}

#[test]
fn sender_restriction_and_received_header() {
    let s = server("");
    let out = s.user_cmd(
        &["add", "frank", "--allow-sender", "frank@example.test"],
        "pw\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = Client::connect_tls(s.addr_of("submissions"), "mx.test");
    c.cmd("EHLO client.test", 250);
    c.cmd(&format!("AUTH PLAIN {}", plain("frank", "pw")), 235);
    c.cmd("MAIL FROM:<boss@example.test>", 553);
    let r = c.send_message(
        "frank@example.test",
        &["inbox@example.test"],
        b"Subject: s\r\n\r\nhi\r\n",
    );
    assert_eq!(r.code, 250);
    let msg = String::from_utf8(s.wait_for_mail("inbox", 1).remove(0)).unwrap();
    assert!(
        msg.contains("(authenticated as frank) with ESMTPSA id"),
        "{msg}"
    );
}

#[test]
fn python_smtplib_starttls_and_smtp_ssl_login() {
    let s = server("");
    s.add_user("py", "py-secret");
    let script = r#"
import smtplib, ssl, sys
sub, subs = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", sub, timeout=20) as c:
    c.ehlo("py.test")
    assert not c.has_extn("auth")
    c.starttls(context=ctx)
    c.ehlo("py.test")
    assert "PLAIN" in c.esmtp_features["auth"]
    try:
        c.login("py", "wrong")
        raise SystemExit("wrong password accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535
    c.login("py", "py-secret")
    c.sendmail("py@example.test", ["pymail@example.test", "far@remote.test"], b"Subject: sub\r\n\r\nvia 587\r\n")
with smtplib.SMTP_SSL("127.0.0.1", subs, context=ctx, timeout=20) as c:
    c.ehlo("py.test")
    c.login("py", "py-secret")
    c.sendmail("py@example.test", ["pymail@example.test"], b"Subject: subs\r\n\r\nvia 465\r\n")
print("ok")
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &s.addr_of("submission").port().to_string(),
            &s.addr_of("submissions").port().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_for_mail("pymail", 2);
}

#[test]
fn swaks_tls_auth_plain_and_tlsc() {
    let swaks = require_tool("swaks");
    let s = server("");
    s.add_user("sw", "sw-pass");
    for (listener, tls_flag, mech) in [
        ("submission", "--tls", "PLAIN"),
        ("submissions", "--tlsc", "LOGIN"),
    ] {
        let out = Command::new(&swaks)
            .args(["--server", &s.addr_of(listener).to_string(), tls_flag])
            .args([
                "--auth",
                mech,
                "--auth-user",
                "sw",
                "--auth-password",
                "sw-pass",
            ])
            .args(["--from", "sw@example.test", "--to", "swaksbox@example.test"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{listener}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = Command::new(&swaks)
        .args(["--server", &s.addr_of("submission").to_string(), "--tls"])
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            "sw",
            "--auth-password",
            "bad",
        ])
        .args(["--to", "swaksbox@example.test"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("535 5.7.8"));
    s.wait_for_mail("swaksbox", 2);
}

#[test]
fn lettre_submits_over_starttls_with_credentials() {
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{Message, SmtpTransport, Transport};
    let s = server("");
    s.add_user("lettre", "lettre-pw");
    let tls = TlsParameters::builder("mx.test".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap();
    let addr = s.addr_of("submission");
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(addr.port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new("lettre".into(), "lettre-pw".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let email = Message::builder()
        .from("lettre@example.test".parse().unwrap())
        .to("letterbox@example.test".parse().unwrap())
        .subject("lettre over tls")
        .body(String::from("hello\n"))
        .unwrap();
    mailer.send(&email).expect("lettre send");
    s.wait_for_mail("letterbox", 1);
}

#[test]
fn auth_mail_parameter_is_kept_only_for_the_authenticated_user() {
    // The probe reports the MAIL parameters plugins see.
    let s = server(&crate::support::probe_toml(
        "p",
        &["mail-from"],
        "[plugin.config]\nmail-from = [\"params\", \"tempfail\"]",
    ));
    s.add_user("erin", "pw");
    let mut c = Client::connect_tls(s.addr_of("submissions"), "mx.test");
    c.cmd("EHLO client.test", 250);
    c.cmd(&format!("AUTH PLAIN {}", plain("erin", "pw")), 235);
    let r = c.cmd("MAIL FROM:<erin@example.test> AUTH=erin", 451);
    assert_eq!(r.text(), "4.7.1 params=AUTH=erin");
    let r = c.cmd("MAIL FROM:<erin@example.test> AUTH=mallory", 451);
    assert_eq!(r.text(), "4.7.1 params=AUTH=<>");
}

#[test]
fn the_users_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = server("");
    let file = s.data().join("users");
    let mode = || std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    s.add_user("frank", "one");
    assert_eq!(mode(), 0o600);
    // Rewritten (atomically) by passwd: still private.
    let out = s.user_cmd(&["passwd", "frank"], "two\n");
    assert!(out.status.success());
    assert_eq!(mode(), 0o600);
}
