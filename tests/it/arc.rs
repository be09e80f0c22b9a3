//! ARC sealing through real hops on loopback: a forwarding wasmtp (the
//! spam-score plugin changes each message at `data`, the router plugin
//! relays it at `deliver`) seals mail from outside and hands it to a second
//! wasmtp; dnsmasq publishes the keys; Debian's dkimpy seals the chains
//! that arrive and verifies the ones that leave, independently of mail-auth.

use std::path::{Path, PathBuf};

use crate::dns::DnsServer;
use crate::mail_auth::{PLAIN_AUTH, dkimpy, header_fields, keygen, send, submit_as_alice, txt};
use crate::ops::http;
use crate::support::{Server, check_config_file, plugin_toml};

/// dkimpy's ARC sealer: argv = selector domain keyfile authserv-id; stdin
/// a message carrying an Authentication-Results of that authserv-id;
/// writes the new set followed by the message.
const DKIMPY_ARC_SIGN: &str = r#"
import sys, dkim
sel, dom, keyfile, srv = sys.argv[1:5]
msg = sys.stdin.buffer.read()
hdrs = dkim.arc_sign(msg, sel.encode(), dom.encode(), open(keyfile, 'rb').read(),
                     srv.encode(), include_headers=[b'from', b'to', b'subject'])
if not hdrs:
    sys.exit('dkimpy made no ARC set')
sys.stdout.buffer.write(b''.join(hdrs) + msg)
"#;

/// dkimpy's ARC verifier, the TXT records given as argv pairs (name value)
/// instead of DNS; prints the chain's cv and dkimpy's reason (dkimpy
/// gives no cv, None, for a chain a seal with cv=fail terminated: `fail`).
const DKIMPY_ARC_VERIFY: &str = r#"
import sys, dkim
records = dict(zip(sys.argv[1::2], sys.argv[2::2]))
def dnsfunc(name, timeout=5):
    return records.get(name.decode().rstrip('.'), '').encode() or None
cv, results, comment = dkim.arc_verify(sys.stdin.buffer.read(), dnsfunc=dnsfunc)
print((cv or b'fail').decode(), comment)
"#;

/// The forwarder `fwd.test` (authserv-id and sealing domain) in front of
/// `next`, which delivers `lists.test` to Maildirs (CRLF, as sent).
struct Hops {
    keys: tempfile::TempDir,
    /// TXT records (name, value) of both keys, for dkimpy.
    records: Vec<String>,
    _dns: DnsServer,
    next: Server,
    fwd: Server,
}

impl Hops {
    /// `extra`: more forwarder config (its `[arc]` section's keys first).
    fn start(extra: &str) -> Hops {
        let keys = tempfile::tempdir().unwrap();
        let (fwd_key, fwd_name, fwd_value) = keygen(keys.path(), "fwd.test", "arc1", "rsa");
        let (_, origin_name, origin_value) = keygen(keys.path(), "origin.test", "o1", "rsa");
        let dns = DnsServer::start(&[
            &txt(&fwd_name, &fwd_value),
            &txt(&origin_name, &origin_value),
        ]);
        let next = Server::start(&format!(
            "{}[local]\ndomains = [\"lists.test\"]\ncatch_all = true\nline_endings = \"crlf\"\n",
            dns.config()
        ));
        let fwd = Server::start(&format!(
            "{}[local]\ndomains = [\"lists.test\"]\ncatch_all = true\n\n\
             [authentication]\nauthserv_id = \"fwd.test\"\n\n\
             [[dkim.sign]]\ndomain = \"fwd.test\"\nselector = \"arc1\"\nkey = \"{}\"\n\n\
             [arc]\ndomain = \"fwd.test\"\nselector = \"arc1\"\n{extra}\n{}{}",
            dns.config(),
            fwd_key.display(),
            plugin_toml("spam-score", "spam_score.wasm", "hooks = [\"data\"]"),
            plugin_toml(
                "router",
                "router.wasm",
                &format!(
                    "hooks = [\"deliver\"]\n[plugin.config]\nrelay = {{ \"lists.test\" = \"127.0.0.1:{}\" }}",
                    next.addr.port()
                )
            ),
        ));
        Hops {
            keys,
            records: vec![fwd_name, fwd_value, origin_name, origin_value],
            _dns: dns,
            next,
            fwd,
        }
    }

    fn origin_key(&self) -> PathBuf {
        self.keys.path().join("origin.test.o1.key")
    }

    /// Sends `body` from outside (alice@origin.test) to the forwarder for
    /// `mailbox@lists.test`; what `next` delivered.
    fn relay(&self, mailbox: &str, body: &str) -> String {
        let to = format!("{mailbox}@lists.test");
        send(self.fwd.addr, "alice@origin.test", &to, body.as_bytes());
        self.delivered(mailbox)
    }

    /// The message `next` delivered to `mailbox`, as text.
    fn delivered(&self, mailbox: &str) -> String {
        let msg = self.next.wait_for_mail(mailbox, 1).remove(0);
        String::from_utf8(msg).unwrap()
    }

    /// dkimpy's verdict on the chain of `msg`: `pass`, `fail` or `none`,
    /// then its reason.
    fn dkimpy_verdict(&self, msg: &str) -> String {
        let args: Vec<&str> = self.records.iter().map(String::as_str).collect();
        String::from_utf8(dkimpy(DKIMPY_ARC_VERIFY, &args, msg.as_bytes())).unwrap()
    }
}

/// A message from alice@origin.test to `to`.
fn message(to: &str, subject: &str) -> String {
    format!(
        "From: Alice <alice@origin.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Date: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@origin.test>\r\n\r\n\
         Forwarded  once,\r\nwith trailing space \r\n"
    )
}

/// The values of the `name` fields of `msg`, unfolded.
fn fields(msg: &str, name: &str) -> Vec<String> {
    header_fields(msg.as_bytes(), name)
}

/// Asserts a `name` field whose value starts with `start` and contains
/// `part`.
fn assert_field(msg: &str, name: &str, start: &str, part: &str) {
    assert!(
        fields(msg, name)
            .iter()
            .any(|v| v.starts_with(start) && v.contains(part)),
        "no {name}: {start} ... {part} in\n{msg}"
    );
}

/// Asserts the forwarder's seal: instance `i`, `cv`.
fn assert_sealed(msg: &str, i: u32, cv: &str) {
    let seal = format!("i={i}; a=rsa-sha256; s=arc1; d=fwd.test; cv={cv};");
    assert_field(msg, "ARC-Seal", &seal, "");
}

/// `msg` sealed by dkimpy as origin.test (i=1), after origin.test's own
/// Authentication-Results, which dkimpy copies into its AAR.
fn sealed_at_origin(h: &Hops, to: &str, subject: &str) -> String {
    let msg = format!(
        "Authentication-Results: origin.test; spf=pass smtp.mailfrom=alice@origin.test\r\n{}",
        message(to, subject)
    );
    let key = h.origin_key();
    let out = dkimpy(
        DKIMPY_ARC_SIGN,
        &["o1", "origin.test", key.to_str().unwrap(), "origin.test"],
        msg.as_bytes(),
    );
    String::from_utf8(out).unwrap()
}

#[test]
fn mail_from_outside_changed_by_a_plugin_leaves_with_an_arc_set_dkimpy_verifies() {
    // The AMS also signs the fields the plugin added.
    let h = Hops::start(
        "headers = [\"From\", \"To\", \"Subject\", \"Date\", \"Message-ID\", \"X-Spam-Score\", \"X-Spam-Status\"]\n",
    );
    let msg = h.relay("list", &message("list@lists.test", "plain"));
    assert_eq!(fields(&msg, "ARC-Seal").len(), 1, "{msg}");
    assert_sealed(&msg, 1, "none");
    let ams = "i=1; a=rsa-sha256; s=arc1; d=fwd.test; c=relaxed/relaxed;";
    assert_field(&msg, "ARC-Message-Signature", ams, "X-Spam-Score");
    // The AAR carries the forwarder's results from arrival.
    assert_field(
        &msg,
        "ARC-Authentication-Results",
        "i=1; fwd.test; spf=none",
        "arc=none",
    );
    assert!(msg.contains("\r\nX-Spam-Score: "), "{msg}");
    let sealed = h.fwd.wait_for_log("ARC sealed", 1);
    assert!(
        sealed[0].contains("\"instance\":1") && sealed[0].contains("\"cv\":\"none\""),
        "{sealed:?}"
    );
    // An independent verifier, and the next hop (mail-auth through DNS).
    let verdict = h.dkimpy_verdict(&msg);
    assert!(verdict.starts_with("pass"), "{verdict}\n{msg}");
    assert_field(&msg, "Authentication-Results", "mx.test;", "arc=pass");
    // A signed field changed after the seal: dkimpy sees it.
    let at = msg.find("\r\nX-Spam-Score: ").unwrap() + 2;
    let end = at + msg[at..].find("\r\n").unwrap();
    let tampered = format!("{}X-Spam-Score: 9.9{}", &msg[..at], &msg[end..]);
    assert_ne!(tampered, msg);
    let verdict = h.dkimpy_verdict(&tampered);
    assert!(verdict.starts_with("fail"), "{verdict}");
}

#[test]
fn an_arriving_chain_gets_i2_with_cv_pass_and_a_broken_one_cv_fail() {
    let h = Hops::start("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let intact = sealed_at_origin(&h, "pass@lists.test", "intact");
    assert!(intact.starts_with("ARC-Seal: i=1;"), "{intact}");
    let msg = h.relay("pass", &intact);
    assert_eq!(fields(&msg, "ARC-Seal").len(), 2, "{msg}");
    assert_sealed(&msg, 2, "pass");
    assert_field(&msg, "Authentication-Results", "fwd.test;", "arc=pass");
    assert_field(&msg, "Authentication-Results", "mx.test;", "arc=pass");
    let verdict = h.dkimpy_verdict(&msg);
    assert!(verdict.starts_with("pass"), "{verdict}\n{msg}");

    // The body changed after origin.test sealed it: the chain arrives
    // broken, the forwarder says so in its seal.
    let broken = sealed_at_origin(&h, "broken@lists.test", "broken")
        .replace("Forwarded  once,", "Forwarded twice,");
    let msg = h.relay("broken", &broken);
    assert_sealed(&msg, 2, "fail");
    assert_field(&msg, "Authentication-Results", "fwd.test;", "arc=fail");
    let verdict = h.dkimpy_verdict(&msg);
    assert!(
        verdict.starts_with("fail ARC-Seal[2] reported failure"),
        "{verdict}\n{msg}"
    );
    let log = h.fwd.wait_for_log("ARC sealed", 2);
    assert!(
        log.iter()
            .any(|l| l.contains("\"instance\":2") && l.contains("\"cv\":\"fail\"")),
        "{log:?}"
    );

    // That chain ended with our cv=fail: passing it through again adds no
    // set (RFC 8617 §5.1.2), and says why.
    let again = h.relay("again", &msg);
    assert_eq!(fields(&again, "ARC-Seal").len(), 2, "{again}");
    let skipped = h.fwd.wait_for_log("not ARC sealed", 1);
    assert!(skipped[0].contains("chain_failed"), "{skipped:?}");

    let (code, metrics) = http(h.fwd.admin.as_ref().unwrap(), "GET", "/metrics", None);
    assert_eq!(code, 200);
    for line in [
        "wasmtp_arc_seals_total{cv=\"pass\"} 1",
        "wasmtp_arc_seals_total{cv=\"fail\"} 1",
        "wasmtp_arc_seals_skipped_total{reason=\"chain_failed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[test]
fn an_authenticated_submission_is_dkim_signed_not_sealed() {
    let h = Hops::start(&format!("\n{PLAIN_AUTH}"));
    submit_as_alice(
        &h.fwd,
        "alice@fwd.test",
        "sub@lists.test",
        b"From: <alice@fwd.test>\r\nTo: <sub@lists.test>\r\nSubject: mine\r\n\r\nx\r\n",
    );
    let msg = h.delivered("sub");
    assert!(
        msg.contains("\r\nDKIM-Signature: v=1; a=rsa-sha256; s=arc1; d=fwd.test;"),
        "{msg}"
    );
    assert!(!msg.contains("ARC-"), "{msg}");
    assert_field(
        &msg,
        "Authentication-Results",
        "mx.test;",
        "dkim=pass header.d=fwd.test",
    );
    h.fwd.wait_for_log("DKIM signed", 1);
    assert!(h.fwd.log_lines("ARC sealed").is_empty());
}

#[test]
fn arc_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _, _) = keygen(dir.path(), "fwd.test", "s1", "rsa");
    let (ed, _, _) = keygen(dir.path(), "fwd.test", "e1", "ed25519");
    let check = |dir: &Path, extra: &str| {
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[dkim.sign]]\ndomain = \"fwd.test\"\nselector = \"s1\"\nkey = \"{}\"\n\n\
                 [[dkim.sign]]\ndomain = \"fwd.test\"\nselector = \"e1\"\nkey = \"{}\"\n\n{extra}",
                key.display(),
                ed.display()
            ),
        )
        .unwrap();
        let out = check_config_file(&file);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = check(
        dir.path(),
        "[arc]\ndomain = \"fwd.test\"\nselector = \"s1\"\n",
    );
    assert!(ok, "{err}");
    let (ok, err) = check(
        dir.path(),
        "[arc]\ndomain = \"fwd.test\"\nselector = \"other\"\n",
    );
    assert!(!ok);
    assert!(err.contains("key `arc.selector`"), "{err}");
    assert!(err.contains("no [[dkim.sign]] key"), "{err}");
    let (ok, err) = check(
        dir.path(),
        "[arc]\ndomain = \"fwd.test\"\nselector = \"e1\"\n",
    );
    assert!(!ok && err.contains("key `arc.selector`"), "{err}");
    assert!(err.contains("rsa-sha256"), "{err}");
    let (ok, err) = check(dir.path(), "[arc]\ndomain = \"fwd.test\"\n");
    assert!(!ok && err.contains("key `arc.selector`"), "{err}");
    let (ok, err) = check(
        dir.path(),
        "[authentication]\narc = false\n\n[arc]\ndomain = \"fwd.test\"\nselector = \"s1\"\n",
    );
    assert!(!ok && err.contains("key `arc.domain`"), "{err}");
    assert!(err.contains("authentication.arc"), "{err}");
    let (ok, err) = check(
        dir.path(),
        "[arc]\ndomain = \"fwd.test\"\nselector = \"s1\"\nheaders = [\"Subject\"]\n",
    );
    assert!(!ok && err.contains("key `arc.headers`"), "{err}");
}

#[test]
fn sighup_rotates_the_sealing_key() {
    let h = Hops::start("");
    let send_to =
        |mailbox: &str| h.relay(mailbox, &message(&format!("{mailbox}@lists.test"), mailbox));
    assert_sealed(&send_to("before"), 1, "none");
    // A new key under a new selector; the config names it for both.
    let (arc2, name, value) = keygen(h.keys.path(), "fwd.test", "arc2", "rsa");
    let cfg = h.fwd.config_file();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let old_key = h.keys.path().join("fwd.test.arc1.key");
    let rotated = text
        .replace("selector = \"arc1\"", "selector = \"arc2\"")
        .replace(&old_key.display().to_string(), &arc2.display().to_string());
    assert_ne!(rotated, text);
    std::fs::write(&cfg, rotated).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &h.fwd.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reloaded = h.fwd.wait_for_log("DKIM signing keys reloaded", 1);
    assert!(reloaded[0].contains("fwd.test/arc2"), "{reloaded:?}");
    let msg = send_to("after");
    assert_field(
        &msg,
        "ARC-Seal",
        "i=1; a=rsa-sha256; s=arc2; d=fwd.test; cv=none;",
        "",
    );
    assert_field(
        &msg,
        "ARC-Message-Signature",
        "i=1; a=rsa-sha256; s=arc2;",
        "",
    );
    // It verifies with the new record (given to dkimpy directly).
    let mut records: Vec<&str> = h.records.iter().map(String::as_str).collect();
    records.extend([name.as_str(), value.as_str()]);
    let verdict = String::from_utf8(dkimpy(DKIMPY_ARC_VERIFY, &records, msg.as_bytes())).unwrap();
    assert!(verdict.starts_with("pass"), "{verdict}\n{msg}");
}
