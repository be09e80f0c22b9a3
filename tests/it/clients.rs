//! Real clients: lettre, Python's smtplib, swaks.

use std::process::Command;

use lettre::message::Mailbox;
use lettre::{Message, SmtpTransport, Transport};

use crate::support::{Server, require_tool};

#[test]
fn lettre_sends_to_several_recipients() {
    let s = Server::start("");
    let email = Message::builder()
        .from("Sender <sender@example.test>".parse::<Mailbox>().unwrap())
        .to("Alice <alice@example.test>".parse().unwrap())
        .cc("bob@localhost".parse().unwrap())
        .subject("lettre test")
        .body(String::from("Hello from lettre.\n.single dot line\n"))
        .unwrap();
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(s.addr.port())
        .build();
    let resp = mailer.send(&email).expect("lettre send");
    assert_eq!(resp.code().to_string(), "250");
    let text = resp.message().collect::<Vec<_>>().join(" ");
    assert!(text.starts_with("2.0.0 Ok: queued as "), "{text}");
    for mb in ["alice", "bob"] {
        let msg = String::from_utf8(s.wait_for_mail(mb, 1).remove(0)).unwrap();
        assert!(msg.contains("Subject: lettre test"), "{msg}");
        assert!(msg.contains("\n.single dot line"), "{msg}");
    }
}

#[test]
fn python_smtplib_sends_and_sees_extensions() {
    let s = Server::start("");
    let script = r#"
import smtplib, sys
port = int(sys.argv[1])
with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
    code, _ = c.ehlo("py.test")
    assert code == 250
    for ext in ("pipelining", "size", "8bitmime", "smtputf8", "chunking", "enhancedstatuscodes"):
        assert c.has_extn(ext), ext
    refused = c.sendmail("py@example.test", ["pyuser@example.test", "x@nowhere.test"],
                         b"Subject: from python\r\n\r\nhello \xe2\x82\xac\r\n")
    assert list(refused) == ["x@nowhere.test"] and refused["x@nowhere.test"][0] == 550, refused
    try:
        c.sendmail("py@example.test", ["x@nowhere.test"], b"Subject: no\r\n\r\nno\r\n")
        raise SystemExit("relay was accepted")
    except smtplib.SMTPRecipientsRefused as e:
        assert e.recipients["x@nowhere.test"][0] == 550
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &s.addr.port().to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = s.wait_for_mail("pyuser", 1).remove(0);
    assert!(msg.ends_with("hello €\n".as_bytes()));
}

#[test]
fn swaks_delivers_and_sees_relay_denied() {
    let swaks = require_tool("swaks");
    let s = Server::start("");
    let server = s.addr.to_string();
    let out = Command::new(&swaks)
        .args([
            "--server",
            &server,
            "--to",
            "user@example.test",
            "--from",
            "swaks@example.test",
        ])
        .args(["--header", "Subject: via swaks", "--body", "swaks body"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let msg = String::from_utf8(s.wait_for_mail("user", 1).remove(0)).unwrap();
    assert!(
        msg.contains("Subject: via swaks") && msg.contains("swaks body"),
        "{msg}"
    );

    let out = Command::new(&swaks)
        .args([
            "--server",
            &server,
            "--to",
            "user@elsewhere.test",
            "--from",
            "swaks@example.test",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("550 5.7.1"));
    // swaks with pipelining and BDAT.
    let out = Command::new(&swaks)
        .args([
            "--server",
            &server,
            "--to",
            "chunky@example.test",
            "--pipeline",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    s.wait_for_mail("chunky", 1);
}
