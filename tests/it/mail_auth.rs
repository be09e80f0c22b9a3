//! Mail authentication with real peers on loopback: dnsmasq serves the SPF,
//! DMARC and DKIM records; Debian's python3-dkim (dkimpy) signs messages
//! the server verifies and verifies messages the server signed; a second
//! wasmtp receives what the first one signs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::dns::{DnsServer, SilentDns};
use crate::support::{BIN, Client, Server, b64, check_config_file, field};

// ------------------------------------------------------------- helpers

/// The fields named `name` of a message's header block, unfolded (CRLF +
/// white space → one space), their values in order.
pub(crate) fn header_fields(msg: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    let head = text.split("\n\n").next().unwrap_or_default();
    let mut fields: Vec<String> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            fields.push(line.to_string());
        }
    }
    fields
        .into_iter()
        .filter_map(|f| {
            let (n, value) = f.split_once(':')?;
            n.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
        .collect()
}

/// The Authentication-Results fields of a message's header block,
/// unfolded, in order.
pub(crate) fn auth_results(msg: &[u8]) -> Vec<String> {
    header_fields(msg, "Authentication-Results")
}

/// Debian's python3 (python3-dkim lives in its dist-packages), else PATH's.
fn python() -> PathBuf {
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        crate::support::require_tool("python3")
    }
}

/// Runs a dkimpy script with `args`, `stdin` as input; its stdout.
pub(crate) fn dkimpy(script: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dkimpy (python3-dkim, installed by scripts/test) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Signs stdin with dkimpy: argv = selector domain keyfile.
const DKIMPY_SIGN: &str = r#"
import sys, dkim
sel, dom, keyfile = sys.argv[1:4]
msg = sys.stdin.buffer.read()
sig = dkim.sign(msg, sel.encode(), dom.encode(), open(keyfile, 'rb').read(),
                include_headers=[b'from', b'to', b'subject'], linesep=b'\r\n')
sys.stdout.buffer.write(sig + msg)
"#;

/// Verifies every DKIM-Signature of stdin with dkimpy, the TXT records
/// given as argv pairs (name value) instead of DNS; prints one line per
/// signature: `d= s= pass|fail`.
const DKIMPY_VERIFY: &str = r#"
import sys, dkim
records = dict(zip(sys.argv[1::2], sys.argv[2::2]))
def dnsfunc(name, timeout=5):
    return records.get(name.decode().rstrip('.'), '').encode() or None
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
n = sum(1 for h in d.headers if h[0].lower() == b'dkim-signature')
for i in range(n):
    ok = d.verify(idx=i, dnsfunc=dnsfunc)
    print(d.domain.decode(), d.selector.decode(), 'pass' if ok else 'fail')
"#;

/// `wasmtp dkim keygen`: the key file and the TXT record (name, value).
pub(crate) fn keygen(
    dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: &str,
) -> (PathBuf, String, String) {
    let out = Command::new(BIN)
        .args(["dkim", "keygen", domain, "--selector", selector])
        .args(["--algorithm", algorithm, "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("(name "))
        .unwrap_or_else(|| panic!("no record in {text}"));
    let (name, value) = line.trim_end_matches(')').split_once(", value ").unwrap();
    let key = dir.join(format!("{domain}.{selector}.key"));
    assert!(
        text.contains(&format!("key = \"{}\"", key.display())),
        "{text}"
    );
    (key, name.to_string(), value.to_string())
}

/// A dnsmasq option serving `value` as a TXT record at `name`, cut into
/// strings of 255 characters (dnsmasq splits its argument at commas).
pub(crate) fn txt(name: &str, value: &str) -> String {
    let parts: Vec<&str> = value
        .as_bytes()
        .chunks(255)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("--txt-record={name},{}", parts.join(","))
}

/// Sends `body` to the MX listener at `mx` from `from` to `to`; expects 250.
pub(crate) fn send(mx: std::net::SocketAddr, from: &str, to: &str, body: &[u8]) {
    let mut c = Client::greeted(mx);
    c.cmd("EHLO client.test", 250);
    let r = c.send_message(from, &[to], body);
    assert_eq!(r.code, 250, "{}", r.text());
    c.cmd("QUIT", 221);
}

/// Lets alice (password "pw") use AUTH PLAIN over plaintext on loopback.
pub(crate) const PLAIN_AUTH: &str =
    "[auth]\nallow_plaintext_on_loopback = true\nfailure_delay = \"0s\"\n";

/// Adds user alice, authenticates as her and sends `body`; expects 250.
pub(crate) fn submit_as_alice(s: &Server, from: &str, to: &str, body: &[u8]) {
    s.add_user("alice", "pw");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd(&format!("AUTH PLAIN {}", b64(b"\0alice\0pw")), 235);
    let r = c.send_message(from, &[to], body);
    assert_eq!(r.code, 250, "{}", r.text());
}

/// The one message in `mailbox` and its Authentication-Results.
fn received(s: &Server, mailbox: &str) -> (Vec<u8>, Vec<String>) {
    let msg = s.wait_for_mail(mailbox, 1).remove(0);
    let ar = auth_results(&msg);
    (msg, ar)
}

// ------------------------------------------------------------- inbound

#[test]
fn spf_and_dmarc_pass_fail_and_none_from_a_real_dns_server() {
    let dns = DnsServer::start(&[
        &txt("pass.test", "v=spf1 ip4:127.0.0.1 -all"),
        &txt("_dmarc.pass.test", "v=DMARC1; p=reject"),
        &txt("fail.test", "v=spf1 ip4:192.0.2.1 -all"),
        &txt("_dmarc.fail.test", "v=DMARC1; p=quarantine"),
    ]);
    let s = Server::start(&dns.config());
    let cases = [
        (
            "pass",
            "spf=pass",
            "dmarc=pass header.from=pass.test policy.dmarc=reject",
        ),
        ("fail", "spf=fail", "dmarc=fail"),
        ("none", "spf=none", "dmarc=none"),
    ];
    for (name, spf, dmarc) in cases {
        let from = format!("a@{name}.test");
        send(
            s.addr,
            &from,
            &format!("{name}@example.test"),
            format!("From: <{from}>\r\nSubject: {name}\r\n\r\nhello\r\n").as_bytes(),
        );
        let (msg, ar) = received(&s, name);
        assert_eq!(ar.len(), 1, "{}", String::from_utf8_lossy(&msg));
        let ar = &ar[0];
        assert!(ar.starts_with("mx.test;"), "{ar}");
        assert!(ar.contains(&format!("{spf} ")), "{name}: {ar}");
        assert!(
            ar.contains(&format!("smtp.mailfrom={from}")),
            "{name}: {ar}"
        );
        assert!(ar.contains("smtp.helo=client.test"), "{name}: {ar}");
        assert!(ar.contains(dmarc), "{name}: {ar}");
        assert!(ar.contains("dkim=none"), "{name}: {ar}");
        // Ours is right below our Received, above the client's fields
        // (Maildir's Return-Path and Delivered-To come before both).
        let text = String::from_utf8_lossy(&msg);
        let ours = text.find("\nAuthentication-Results: mx.test;").unwrap();
        assert!(
            ours > text.find("\nReceived: from client.test").unwrap(),
            "{text}"
        );
        assert!(ours < text.find("\nFrom: ").unwrap(), "{text}");
    }
    assert!(dns.log().contains("_dmarc.fail.test"), "{}", dns.log());
    let log = s.wait_for_log("message authentication", 3);
    assert!(log.iter().any(|l| l.contains("spf=fail")), "{log:?}");
}

#[test]
fn a_dkimpy_signature_passes_and_fails_after_a_body_byte_changes() {
    let keys = tempfile::tempdir().unwrap();
    let (key, name, value) = keygen(keys.path(), "signer.test", "sel1", "rsa");
    let dns = DnsServer::start(&[&txt(&name, &value)]);
    let s = Server::start(&dns.config());
    let message = b"From: Alice <alice@signer.test>\r\nTo: bob@example.test\r\nSubject: signed\r\n\r\nThe body as signed.\r\n";
    let signed = dkimpy(
        DKIMPY_SIGN,
        &["sel1", "signer.test", key.to_str().unwrap()],
        message,
    );
    send(s.addr, "alice@signer.test", "good@example.test", &signed);
    let (_, ar) = received(&s, "good");
    assert!(
        ar[0].contains("dkim=pass header.i=@signer.test header.s=sel1"),
        "{ar:?}"
    );
    // Aligned DKIM passes DMARC (no record: none, but the DKIM result stands).
    // One byte of the body changed after signing: the body hash differs.
    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace("The body as signed.", "The body as signeD.");
    send(
        s.addr,
        "alice@signer.test",
        "bad@example.test",
        tampered.as_bytes(),
    );
    let (_, ar) = received(&s, "bad");
    assert!(
        ar[0].contains("dkim=fail (body hash did not verify) header.i=@signer.test"),
        "{ar:?}"
    );
    assert!(ar[0].contains("header.i=@signer.test"), "{ar:?}");
    assert!(dns.log().contains("sel1._domainkey.signer.test"));
}

#[test]
fn a_forged_authentication_results_with_our_id_is_removed() {
    let dns = DnsServer::start(&[]);
    let s = Server::start(&dns.config());
    let body = b"Authentication-Results: mx.test; dkim=pass header.d=bank.test\r\n\
                 Authentication-Results: (comment) MX.TEST;\r\n\tspf=pass smtp.mailfrom=bank.test\r\n\
                 Authentication-Results: upstream.test; spf=pass\r\n\
                 From: <a@bank.test>\r\nSubject: forged\r\n\r\nAuthentication-Results: mx.test; in the body\r\n";
    send(s.addr, "a@bank.test", "forged@example.test", body);
    let (msg, ar) = received(&s, "forged");
    let text = String::from_utf8_lossy(&msg);
    assert_eq!(ar.len(), 2, "{text}");
    assert!(
        ar[0].starts_with("mx.test;") && ar[0].contains("spf=none"),
        "{text}"
    );
    assert_eq!(ar[1], "upstream.test; spf=pass", "{text}");
    assert!(!text.contains("header.d=bank.test"), "{text}");
    assert!(
        text.contains("\nAuthentication-Results: mx.test; in the body"),
        "{text}"
    );
    s.wait_for_log("forged_removed", 1);
    let l = s.log_lines("message authentication");
    assert!(l[0].contains("\"forged_removed\":2"), "{l:?}");
}

#[test]
fn dns_that_never_answers_gives_temperror_and_the_message_is_accepted() {
    let silent = SilentDns::start();
    // Each query alone: a temperror after dns.timeout. The whole: cut at
    // authentication.timeout, which is shorter, so the limit is logged.
    let s = Server::start(&format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"30s\"\n\n[authentication]\ntimeout = \"1s\"\n",
        silent.addr
    ));
    send(
        s.addr,
        "a@slow.test",
        "slow@example.test",
        b"From: <a@slow.test>\r\nSubject: slow\r\n\r\nx\r\n",
    );
    let (msg, ar) = received(&s, "slow");
    assert_eq!(ar.len(), 1, "{}", String::from_utf8_lossy(&msg));
    assert!(ar[0].contains("spf=temperror"), "{ar:?}");
    assert!(ar[0].contains("dmarc=temperror"), "{ar:?}");
    let hit = s.wait_for_log("limit reached", 1);
    assert!(hit[0].contains("authentication.timeout"), "{hit:?}");
    // A per-query timeout shorter than the whole: temperror from DNS
    // itself, no limit.
    let s = Server::start(&format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\n\n[authentication]\ntimeout = \"30s\"\n",
        silent.addr
    ));
    send(
        s.addr,
        "a@slow.test",
        "slow@example.test",
        b"From: <a@slow.test>\r\n\r\nx\r\n",
    );
    let (_, ar) = received(&s, "slow");
    assert!(ar[0].contains("spf=temperror"), "{ar:?}");
    assert!(s.log_lines("limit reached").is_empty());
}

#[test]
fn authenticated_submissions_record_auth_and_skip_the_checks() {
    let s = Server::start(PLAIN_AUTH);
    submit_as_alice(
        &s,
        "alice@example.test",
        "sub@example.test",
        b"From: <alice@example.test>\r\nSubject: mine\r\n\r\nx\r\n",
    );
    let (_, ar) = received(&s, "sub");
    assert_eq!(ar, vec!["mx.test; auth=pass smtp.auth=alice".to_string()]);
}

#[test]
fn the_default_config_delivers_mail_with_authentication_results() {
    // The embedded default as `wasmtp default-config` prints it, on free
    // ports and without the admin endpoint (its fixed port could be taken
    // by another test's server); [authentication] is not in it, so its
    // defaults apply.
    let out = Command::new(BIN).arg("default-config").output().unwrap();
    let default = String::from_utf8(out.stdout).unwrap();
    assert!(!default.contains("[authentication]"));
    let cfg = default
        .replace("127.0.0.1:2525", "127.0.0.1:0")
        .replace("127.0.0.1:5870", "127.0.0.1:0")
        .replace("127.0.0.1:4650", "127.0.0.1:0")
        .replace("listen = \"127.0.0.1:9025\"", "listen = \"\"");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("default.toml"), cfg).unwrap();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--log-format", "json", "--config", "default.toml"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let v = serde_json::from_str(&line)
                .unwrap_or_else(|_| serde_json::json!({ "message": line }));
            let _ = tx.send(v);
        }
    });
    let mut mx = None;
    loop {
        let v = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not start");
        if field(&v, "message") == "listening" && field(&v, "listener") == "mx" {
            mx = Some(field(&v, "addr").parse::<std::net::SocketAddr>().unwrap());
        }
        if field(&v, "message") == "wasmtp ready" {
            break;
        }
    }
    send(
        mx.expect("mx listener logged"),
        "a@example.test",
        "someone@localhost",
        b"From: <a@example.test>\r\nSubject: hello\r\n\r\nhi\r\n",
    );
    // The delivery's log line, then the file it wrote.
    while field(
        &rx.recv_timeout(Duration::from_secs(60))
            .expect("no delivery"),
        "message",
    ) != "delivered"
    {}
    let new = dir.path().join("wasmtp-data/mail/someone/new");
    let file = std::fs::read_dir(&new).unwrap().next().expect("a message");
    let msg = std::fs::read(file.unwrap().path()).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let ar = auth_results(&msg);
    assert_eq!(ar.len(), 1, "{}", String::from_utf8_lossy(&msg));
    // The default hostname is the authserv-id; whatever the machine's DNS
    // says, each method has a result.
    assert!(ar[0].starts_with("localhost;"), "{ar:?}");
    for method in ["spf=", "dkim=", "dmarc="] {
        assert!(ar[0].contains(method), "{method} missing: {ar:?}");
    }
}

// ------------------------------------------------------------- signing

#[test]
fn mail_signed_on_the_way_out_verifies_with_dkimpy_and_at_the_next_wasmtp() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa, rsa_name, rsa_value) = keygen(keys.path(), "sender.test", "r1", "rsa");
    let (ed, ed_name, ed_value) = keygen(keys.path(), "sender.test", "e1", "ed25519");
    assert!(
        rsa_value.starts_with("v=DKIM1; k=rsa; p=MII"),
        "{rsa_value}"
    );
    assert!(ed_value.starts_with("v=DKIM1; k=ed25519; p="), "{ed_value}");
    // The receiving wasmtp verifies through dnsmasq, which publishes both.
    let dns = DnsServer::start(&[
        &txt(&rsa_name, &rsa_value),
        &txt(&ed_name, &ed_value),
        &txt("_dmarc.sender.test", "v=DMARC1; p=reject"),
    ]);
    let next = Server::start(&format!(
        "{}[local]\ndomains = [\"remote.test\"]\ncatch_all = true\nline_endings = \"crlf\"\n",
        dns.config()
    ));
    let sender = Server::start(&format!(
        "{PLAIN_AUTH}\n[authentication]\nauthserv_id = \"sender.test\"\n\n\
         [[outbound.route]]\ndomain = \"remote.test\"\nhost = \"127.0.0.1\"\nport = {}\n\n\
         [[dkim.sign]]\ndomain = \"sender.test\"\nselector = \"r1\"\nkey = \"{}\"\n\n\
         [[dkim.sign]]\ndomain = \"sender.test\"\nselector = \"e1\"\nkey = \"{}\"\n",
        next.addr.port(),
        rsa.display(),
        ed.display()
    ));
    submit_as_alice(
        &sender,
        "alice@sender.test",
        "bob@remote.test",
        b"From: Alice <alice@sender.test>\r\nTo: <bob@remote.test>\r\nSubject: out\r\n\
          Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@sender.test>\r\n\r\n\
          Signed  once,\r\nwith trailing space \r\n\r\n\r\n",
    );
    let signed = sender.wait_for_log("DKIM signed", 1);
    assert!(
        signed[0].contains("sender.test/r1 sender.test/e1"),
        "{signed:?}"
    );

    let msg = next.wait_for_mail("bob", 1).remove(0);
    let text = String::from_utf8_lossy(&msg).to_string();
    assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
    // The next hop's verdict (wasmtp, through dnsmasq).
    let ar = auth_results(&msg);
    assert!(ar[0].starts_with("mx.test;"), "{ar:?}");
    assert!(
        ar[0].contains("dkim=pass header.d=sender.test header.s=r1"),
        "{ar:?}"
    );
    assert!(
        ar[0].contains("dkim=pass header.d=sender.test header.s=e1"),
        "{ar:?}"
    );
    assert!(
        ar[0].contains("dmarc=pass header.from=sender.test"),
        "{ar:?}"
    );
    // The sender's own results went along: auth=pass under its id, which
    // the next hop does not claim.
    assert!(
        ar.iter().any(|a| a.contains("auth=pass smtp.auth=alice")),
        "{ar:?}"
    );
    // An independent verifier: dkimpy with the published records.
    let verdicts = dkimpy(
        DKIMPY_VERIFY,
        &[&rsa_name, &rsa_value, &ed_name, &ed_value],
        &msg,
    );
    let verdicts = String::from_utf8(verdicts).unwrap();
    assert_eq!(
        verdicts.lines().collect::<Vec<_>>(),
        ["sender.test r1 pass", "sender.test e1 pass"],
        "{text}"
    );
}

#[test]
fn unauthenticated_mail_from_outside_is_not_signed() {
    let keys = tempfile::tempdir().unwrap();
    let (key, _, _) = keygen(keys.path(), "example.test", "s1", "ed25519");
    let sign = format!(
        "[[dkim.sign]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey = \"{}\"\n",
        key.display()
    );
    // The same key, a client outside any trusted network, then one inside:
    // only the second message is signed (From below the key's domain).
    let deliver = |extra: &str, from: &str| {
        let s = Server::start(&format!("{extra}{sign}"));
        let body = format!("From: <{from}>\r\nSubject: x\r\n\r\nx\r\n");
        send(s.addr, from, "in@example.test", body.as_bytes());
        let msg = s.wait_for_mail("in", 1).remove(0);
        String::from_utf8_lossy(&msg).to_string()
    };
    let outside = deliver("[authentication]\nenable = false\n\n", "a@example.test");
    assert!(!outside.contains("DKIM-Signature"), "{outside}");
    assert!(!outside.contains("Authentication-Results"), "{outside}");
    let trusted = deliver(
        "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n",
        "a@sub.example.test",
    );
    assert!(
        trusted.contains("\nDKIM-Signature: v=1; a=ed25519-sha256; s=s1; d=example.test;"),
        "{trusted}"
    );
}

#[test]
fn bad_signing_keys_are_config_errors_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |sign: &str| {
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            format!("[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[dkim.sign]]\n{sign}"),
        )
        .unwrap();
        let out = check_config_file(&file);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = check("domain = \"example.org\"\nselector = \"s\"\nkey = \"/nonexistent/k.pem\"\n");
    assert!(err.contains("key `dkim.sign[0].key`"), "{err}");
    assert!(err.contains("cannot read /nonexistent/k.pem"), "{err}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    let err = check(&format!(
        "domain = \"example.org\"\nselector = \"s\"\nkey = \"{}\"\n",
        junk.display()
    ));
    assert!(err.contains("no PEM private key"), "{err}");
    assert!(err.contains(&junk.display().to_string()), "{err}");
    let err = check("domain = \"example.org\"\nselector = \"bad selector\"\nkey = \"k\"\n");
    assert!(err.contains("key `dkim.sign[0].selector`"), "{err}");
    let err =
        check("domain = \"example.org\"\nselector = \"s\"\nkey = \"k\"\nheaders = [\"Subject\"]\n");
    assert!(err.contains("must include From"), "{err}");
}

#[test]
fn sighup_rereads_the_signing_keys_and_a_bad_key_keeps_the_old_ones() {
    let keys = tempfile::tempdir().unwrap();
    let (k1, _, _) = keygen(keys.path(), "example.test", "one", "ed25519");
    let (k2, _, _) = keygen(keys.path(), "example.test", "two", "rsa");
    let sign = |selector: &str, key: &Path| {
        format!(
            "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n[authentication]\nenable = false\n\n\
             [[dkim.sign]]\ndomain = \"example.test\"\nselector = \"{selector}\"\nkey = \"{}\"\n",
            key.display()
        )
    };
    let s = Server::start(&sign("one", &k1));
    let selector_of = |mailbox: &str| {
        let msg = s.wait_for_mail(mailbox, 1).remove(0);
        let text = String::from_utf8_lossy(&msg).to_string();
        let at = text
            .find("; s=")
            .unwrap_or_else(|| panic!("not signed: {text}"));
        text[at + 4..].split(';').next().unwrap().to_string()
    };
    let body = b"From: <a@example.test>\r\nSubject: k\r\n\r\nx\r\n";
    send(s.addr, "a@example.test", "first@example.test", body);
    assert_eq!(selector_of("first"), "one");
    // The config now names the RSA key under another selector.
    let cfg = s.dir.path().join("wasmtp.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let with_two = text
        .replace("selector = \"one\"", "selector = \"two\"")
        .replace(&k1.display().to_string(), &k2.display().to_string());
    std::fs::write(&cfg, &with_two).unwrap();
    s.hup();
    s.wait_for_log("DKIM signing keys reloaded", 1);
    send(s.addr, "a@example.test", "second@example.test", body);
    assert_eq!(selector_of("second"), "two");
    // A key that cannot be read: logged with file and key, "two" stays.
    std::fs::write(
        &cfg,
        with_two.replace(&k2.display().to_string(), "/nonexistent/gone.key"),
    )
    .unwrap();
    s.hup();
    let failed = s.wait_for_log("DKIM signing keys not reloaded", 1);
    assert!(failed[0].contains("dkim.sign[0].key"), "{failed:?}");
    assert!(failed[0].contains("/nonexistent/gone.key"), "{failed:?}");
    send(s.addr, "a@example.test", "third@example.test", body);
    assert_eq!(selector_of("third"), "two");
}

#[test]
fn keygen_keeps_an_existing_key_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _, first) = keygen(dir.path(), "example.test", "k1", "ed25519");
    let before = std::fs::read(&key).unwrap();
    let run = |force: bool| {
        Command::new(BIN)
            .args(["dkim", "keygen", "example.test", "--selector", "k1"])
            .args(["--algorithm", "ed25519", "--dir"])
            .arg(dir.path())
            .args(force.then_some("--force"))
            .output()
            .unwrap()
    };
    let again = run(false);
    let err = String::from_utf8_lossy(&again.stderr).to_string();
    assert!(!again.status.success(), "{err}");
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let forced = run(true);
    let out = String::from_utf8_lossy(&forced.stdout).to_string();
    assert!(forced.status.success(), "{out}");
    let after = std::fs::read(&key).unwrap();
    assert_ne!(after, before);
    assert!(after.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    // The record printed is the new key's.
    assert!(
        out.contains("(name k1._domainkey.example.test, value v=DKIM1; k=ed25519; p="),
        "{out}"
    );
    assert!(!out.contains(&first), "{out}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
