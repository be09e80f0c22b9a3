//! Delivery status notifications (RFC 3461/3464) end to end: failures
//! produced locally (an expired mail store problem, a permanently invalid
//! mailbox) reach the sender as `multipart/report` messages in its
//! Maildir; NOTIFY, RET, ENVID and ORCPT are honoured; no DSN goes to the
//! null sender; a delay DSN is sent once.

use std::time::{Duration, Instant};

use mail_parser::{MessageParser, MimeHeaders};

use crate::storage::block_mailbox;
use crate::support::{Client, Server, queue_id};

/// Retries every second, gives up after three: expiry within seconds.
const EXPIRE_FAST: &str =
    "[queue]\nretry_intervals = [\"1s\"]\nmax_age = \"3s\"\ndelay_warning = \"0s\"\n\n";

/// One transaction with DSN parameters: `mail` and each of `rcpts` are
/// what follows `MAIL FROM:` / `RCPT TO:`. Returns the queue id.
fn send(s: &Server, mail: &str, rcpts: &[&str], subject: &str) -> String {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO dsn.test", 250);
    c.cmd(&format!("MAIL FROM:{mail}"), 250);
    for r in rcpts {
        c.cmd(&format!("RCPT TO:{r}"), 250);
    }
    c.cmd("DATA", 354);
    let body = format!(
        "Subject: {subject}\r\nFrom: <sender@example.test>\r\n\r\nbody of {subject}\r\n.\r\n"
    );
    c.raw(body.as_bytes());
    queue_id(&c.reply())
}

/// A DSN as the sender received it.
struct Dsn {
    subject: String,
    /// The `message/delivery-status` part.
    status: String,
    /// The text part for people.
    human: String,
    /// Content type of the returned part and its contents.
    returned: (String, String),
}

fn parse(raw: &[u8]) -> Dsn {
    let m = MessageParser::default().parse(raw).expect("parses");
    let ct = m.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert_eq!(
        m.from().unwrap().first().unwrap().address(),
        Some("MAILER-DAEMON@mx.test")
    );
    assert_eq!(
        m.to().unwrap().first().unwrap().address(),
        Some("sender@example.test")
    );
    assert_eq!(
        m.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert_eq!(
        m.header_raw("Return-Path").map(str::trim),
        Some("<>"),
        "DSNs come from the null sender"
    );
    let parts: Vec<(String, String)> = m
        .parts
        .iter()
        .skip(1)
        .filter(|p| !p.is_multipart())
        .map(|p| {
            let ct = p.content_type().unwrap();
            (
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")),
                String::from_utf8_lossy(p.contents()).into_owned(),
            )
        })
        .collect();
    let status = parts
        .iter()
        .find(|p| p.0 == "message/delivery-status")
        .expect("delivery-status part")
        .1
        .replace("\r\n", "\n");
    let human = parts[0].1.clone();
    let returned = parts.last().unwrap().clone();
    Dsn {
        subject: m.subject().unwrap_or_default().to_string(),
        status,
        human,
        returned,
    }
}

/// Checks that the delivery-status part has every field.
fn assert_fields(status: &str, fields: &[&str]) {
    for field in fields {
        assert!(status.contains(field), "{field:?} in {status}");
    }
}

/// Polls `cond` for up to 20 s.
fn wait_until(s: &Server, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "waiting for {what}\n{}",
            s.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Log lines that contain every needle.
fn lines_with(s: &Server, needles: &[&str]) -> Vec<String> {
    s.log_lines(needles[0])
        .into_iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

#[test]
fn expired_message_returns_a_failure_dsn_per_ret() {
    let s = Server::start(EXPIRE_FAST);
    block_mailbox(&s, "blocked");
    let full = send(
        &s,
        "<sender@example.test> ENVID=env+2B1",
        &["<blocked@example.test> ORCPT=rfc822;Blocked+2Bold@example.test"],
        "full one",
    );
    let hdrs = send(
        &s,
        "<sender@example.test> RET=HDRS",
        &["<blocked@example.test>"],
        "headers one",
    );
    let mail = s.wait_for_mail("sender", 2);
    let dsns: Vec<Dsn> = mail.iter().map(|m| parse(m)).collect();
    let (a, b) = if dsns[0].returned.1.contains("full one") {
        (&dsns[0], &dsns[1])
    } else {
        (&dsns[1], &dsns[0])
    };
    for d in [a, b] {
        assert_eq!(d.subject, "Undelivered Mail Returned to Sender");
        assert_fields(
            &d.status,
            &[
                "Reporting-MTA: dns; mx.test\n",
                "Final-Recipient: rfc822; blocked@example.test\n",
                "Action: failed\n",
                // The last error was temporary (mail store not writable).
                "Status: 4.3.0\n",
                "Diagnostic-Code: X-wasmtp; maildir delivery:",
                "Arrival-Date: ",
                "Last-Attempt-Date: ",
            ],
        );
        assert!(!d.status.contains("Remote-MTA"), "{}", d.status);
        assert!(d.human.contains("expired in queue"), "{}", d.human);
    }
    // ENVID and ORCPT come back decoded.
    assert!(
        a.status.contains("Original-Envelope-Id: env+1\n"),
        "{}",
        a.status
    );
    assert!(
        a.status
            .contains("Original-Recipient: rfc822;Blocked+old@example.test\n"),
        "{}",
        a.status
    );
    assert!(!b.status.contains("Original-"), "{}", b.status);
    // RET: the whole message by default, headers only for RET=HDRS.
    assert_eq!(a.returned.0, "message/rfc822");
    assert!(a.returned.1.contains("body of full one"));
    assert_eq!(b.returned.0, "text/rfc822-headers");
    assert!(b.returned.1.contains("Subject: headers one"));
    assert!(!b.returned.1.contains("body of"));
    // Logged with both queue ids; the DSN itself is delivered and done.
    for id in [&full, &hdrs] {
        assert_eq!(lines_with(&s, &["\"bounced\"", id]).len(), 1);
        let sent = lines_with(
            &s,
            &["\"dsn sent\"", &format!("\"orig_queue_id\":\"{id}\"")],
        );
        assert_eq!(sent.len(), 1, "{}", s.dump_logs());
        assert!(sent[0].contains("\"kind\":\"failure\""), "{}", sent[0]);
    }
}

#[test]
fn permanent_failure_bounces_at_the_first_attempt() {
    let mut s = Server::start("");
    assert!(s.signal_and_wait("TERM").success());
    // No session queues a mailbox name the mail store refuses, so an
    // envelope with one is written while the server is down: the permanent
    // failure path of local delivery (5.1.3).
    const ID: &str = "00000000DEAD0001";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = b"Subject: doomed\r\n\r\nnever stored\r\n";
    let envelope = serde_json::json!({
        "id": ID,
        "received_at": now,
        "sender": {"local": "sender", "domain": "example.test"},
        "recipients": [{
            "address": "bad@example.test",
            "mailbox": "../bad",
            "route": "Local",
            "status": "Pending",
            "attempts": 0,
            "last_error": null,
        }],
        "size": body.len(),
        "next_attempt": 0,
    });
    {
        let db = sled::open(s.data().join("queue")).unwrap();
        db.open_tree("bodies")
            .unwrap()
            .insert(ID, &body[..])
            .unwrap();
        let env = serde_json::to_vec(&envelope).unwrap();
        db.open_tree("envelopes").unwrap().insert(ID, env).unwrap();
        db.flush().unwrap();
    }
    s.start_again();
    let mail = s.wait_for_mail("sender", 1);
    let d = parse(&mail[0]);
    assert_fields(
        &d.status,
        &[
            "Final-Recipient: rfc822; bad@example.test\n",
            "Action: failed\n",
            "Status: 5.1.3\n",
            "Diagnostic-Code: X-wasmtp; invalid mailbox name",
        ],
    );
    assert_eq!(d.returned.0, "message/rfc822");
    assert!(d.returned.1.contains("never stored"));
    let bounced = lines_with(&s, &["\"bounced\"", ID]);
    assert!(bounced[0].contains("\"attempts\":1"), "{}", bounced[0]);
}

#[test]
fn no_dsn_for_the_null_sender_or_notify_never() {
    let s = Server::start(EXPIRE_FAST);
    block_mailbox(&s, "blocked");
    block_mailbox(&s, "blocked2");
    let null = send(&s, "<>", &["<blocked@example.test>"], "from nobody");
    let never = send(
        &s,
        "<sender@example.test>",
        &["<blocked@example.test> NOTIFY=NEVER"],
        "never tell",
    );
    // One recipient says NEVER, the other keeps the default: only the
    // second is reported.
    let mixed = send(
        &s,
        "<sender@example.test> ENVID=mixed",
        &[
            "<blocked@example.test> NOTIFY=NEVER",
            "<blocked2@example.test>",
        ],
        "mixed",
    );
    for id in [&null, &never, &mixed] {
        wait_until(&s, "message finished", || {
            !lines_with(&s, &["\"message finished\"", id]).is_empty()
        });
    }
    let mail = s.wait_for_mail("sender", 1);
    let d = parse(&mail[0]);
    assert!(
        d.status.contains("Original-Envelope-Id: mixed\n"),
        "{}",
        d.status
    );
    assert!(
        d.status
            .contains("Final-Recipient: rfc822; blocked2@example.test\n")
    );
    assert!(!d.status.contains("rfc822; blocked@"), "{}", d.status);
    for id in [&null, &never] {
        assert!(!lines_with(&s, &["\"bounced\"", id]).is_empty());
        assert!(
            lines_with(
                &s,
                &["\"dsn sent\"", &format!("\"orig_queue_id\":\"{id}\"")]
            )
            .is_empty()
        );
    }
    // The null sender's message bounced without anyone being told.
    assert_eq!(s.log_lines("\"dsn sent\"").len(), 1, "{}", s.dump_logs());
    assert_eq!(s.all_mail().len(), 1);
}

#[test]
fn notify_success_reports_local_delivery() {
    let s = Server::start("");
    let id = send(
        &s,
        "<sender@example.test> ENVID=ok1 RET=FULL",
        &[
            "<alice@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.test",
            "<bob@example.test>",
        ],
        "hello",
    );
    s.wait_for_mail("alice", 1);
    s.wait_for_mail("bob", 1);
    let mail = s.wait_for_mail("sender", 1);
    let d = parse(&mail[0]);
    assert_eq!(d.subject, "Successful Mail Delivery Report");
    assert_fields(
        &d.status,
        &[
            "Original-Envelope-Id: ok1\n",
            "Original-Recipient: rfc822;alice@example.test\n",
            "Final-Recipient: rfc822; alice@example.test\n",
            "Action: delivered\n",
            "Status: 2.0.0\n",
        ],
    );
    // bob kept the default NOTIFY: no success report for him.
    assert!(!d.status.contains("bob@"), "{}", d.status);
    assert!(!d.status.contains("Diagnostic-Code"), "{}", d.status);
    // A success report returns the headers only, whatever RET says.
    assert_eq!(d.returned.0, "text/rfc822-headers");
    let sent = lines_with(&s, &["\"dsn sent\"", &id]);
    assert!(sent[0].contains("\"kind\":\"success\""), "{}", sent[0]);
}

#[test]
fn delay_dsn_is_sent_once() {
    let mut s = Server::start("[queue]\nretry_intervals = [\"1s\"]\ndelay_warning = \"2s\"\n\n");
    block_mailbox(&s, "blocked");
    block_mailbox(&s, "quiet");
    let id = send(
        &s,
        "<sender@example.test>",
        &[
            "<blocked@example.test>",
            "<quiet@example.test> NOTIFY=FAILURE",
        ],
        "slow",
    );
    let sent = s.wait_for_log("\"dsn sent\"", 1);
    assert!(sent[0].contains("\"kind\":\"delay\""), "{}", sent[0]);
    assert!(sent[0].contains(&id), "{}", sent[0]);
    let mail = s.wait_for_mail("sender", 1);
    let d = parse(&mail[0]);
    assert_eq!(d.subject, "Delayed Mail (still being retried)");
    assert_fields(
        &d.status,
        &[
            "Final-Recipient: rfc822; blocked@example.test\n",
            "Action: delayed\n",
            "Status: 4.3.0\n",
            "Will-Retry-Until: ",
        ],
    );
    // NOTIFY=FAILURE without DELAY: not in the delay report.
    assert!(!d.status.contains("quiet@"), "{}", d.status);
    assert_eq!(d.returned.0, "text/rfc822-headers");
    // More attempts, and a restart (the mark is in the queue record): no
    // second delay DSN.
    let deferred = s.log_lines("\"deferred\"").len();
    s.wait_for_log("\"deferred\"", deferred + 4);
    assert!(s.signal_and_wait("TERM").success());
    s.start_again();
    let deferred = s.log_lines("\"deferred\"").len();
    s.wait_for_log("\"deferred\"", deferred + 4);
    assert_eq!(s.log_lines("\"dsn sent\"").len(), 1, "{}", s.dump_logs());
    // Fixed: delivered, and the default NOTIFY asks for no success report.
    std::fs::remove_file(s.maildir("blocked")).unwrap();
    std::fs::remove_file(s.maildir("quiet")).unwrap();
    wait_until(&s, "message finished", || {
        !lines_with(&s, &["\"message finished\"", &id]).is_empty()
    });
    s.wait_for_mail("blocked", 1);
    assert_eq!(s.log_lines("\"dsn sent\"").len(), 1, "{}", s.dump_logs());
    assert_eq!(s.mail("sender").len(), 1);
}

#[test]
fn a_remote_refusal_and_a_dead_next_hop_reach_the_sender_as_dsns() {
    use crate::outbound::{Event, Upstream};
    // One upstream refuses one of two recipients at RCPT.
    let up = Upstream::start(|e| match e {
        Event::Rcpt(line) if line.contains("bad@") => {
            Some("550 5.1.1 <bad@remote.test>: Recipient address rejected: User unknown".into())
        }
        _ => None,
    });
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Server::start(&format!(
        "{EXPIRE_FAST}[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n\
         [[outbound.route]]\ndomain = \"remote.test\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\n\
         [[outbound.route]]\ndomain = \"dead.test\"\nhost = \"127.0.0.1\"\nport = {dead}\n",
        up.port
    ));
    send(
        &s,
        "<sender@example.test>",
        &["<good@remote.test>", "<bad@remote.test>"],
        "refused",
    );
    let got = up.wait_accepted(1, &s);
    assert_eq!(got[0].rcpts, ["RCPT TO:<good@remote.test>"]);
    wait_until(&s, "the failure DSN", || s.mail("sender").len() == 1);
    let dsn = parse(&s.mail("sender")[0]);
    assert_fields(
        &dsn.status,
        &[
            "Reporting-MTA: dns; mx.test",
            "Final-Recipient: rfc822; bad@remote.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; 127.0.0.1",
            "Diagnostic-Code: smtp; 550 5.1.1 <bad@remote.test>: Recipient address rejected: User unknown",
        ],
    );
    assert!(!dsn.status.contains("good@remote.test"), "{}", dsn.status);
    assert!(dsn.human.contains("bad@remote.test"), "{}", dsn.human);

    // A next hop that never answers: retried until queue.max_age, then a
    // failure DSN with the last temporary reason.
    send(&s, "<sender@example.test>", &["<far@dead.test>"], "dead");
    wait_until(&s, "the expiry DSN", || s.mail("sender").len() == 2);
    let dsn = parse(&s.mail("sender")[1]);
    assert_fields(
        &dsn.status,
        &[
            "Final-Recipient: rfc822; far@dead.test",
            "Action: failed",
            "Status: 4.4.1",
        ],
    );
    assert!(
        lines_with(&s, &["deferred", "far@dead.test"]).len() >= 2,
        "retried before giving up"
    );
}
