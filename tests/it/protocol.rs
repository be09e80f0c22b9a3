//! Reply codes for every sequencing and syntax error, limits, pipelining,
//! and a session that stays usable after errors.

use crate::support::{Client, Server, queue_id};

#[test]
fn greeting_ehlo_and_simple_commands() {
    let s = Server::start("");
    let mut c = Client::connect(s.addr);
    let g = c.expect(220);
    assert!(g.text().starts_with("mx.test ESMTP"), "{g:?}");
    let ehlo = c.cmd("EHLO client.test", 250);
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "DSN",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l == ext),
            "{ext} missing from {ehlo:?}"
        );
    }
    c.cmd("HELO client.test", 250);
    c.cmd("NOOP", 250);
    assert!(c.cmd("HELP", 214).text().starts_with("2.0.0"));
    // VRFY never discloses users.
    assert!(c.cmd("VRFY postmaster", 252).text().starts_with("2.5.0"));
    c.cmd("RSET", 250);
    assert!(c.cmd("QUIT", 221).text().starts_with("2.0.0"));
    assert!(c.closed());
}

#[test]
fn sequencing_and_syntax_errors_have_correct_codes() {
    let s = Server::start("[limits]\nmax_errors = 100\n");
    let mut c = Client::greeted(s.addr);
    let table: &[(&str, u16, &str)] = &[
        ("MAIL FROM:<a@example.test>", 503, "5.5.1"), // before EHLO
        ("RCPT TO:<a@example.test>", 503, "5.5.1"),
        ("DATA", 503, "5.5.1"),
        ("BOGUS", 500, "5.5.2"),
        ("EXPN staff", 502, "5.5.1"),
        ("EHLO", 501, "5.5.4"),
        ("EHLO client.test", 250, ""),
        ("RCPT TO:<a@example.test>", 503, "5.5.1"), // before MAIL
        ("DATA", 503, "5.5.1"),
        ("MAIL FROM:a@example.test", 501, "5.1.3"),
        ("MAIL FROM:<a@@example.test>", 501, "5.1.3"),
        ("MAIL FROM:<a@example.test> FROBNICATE=1", 555, "5.5.4"),
        ("MAIL FROM:<a@example.test> BODY=BINARYMIME", 555, "5.5.4"),
        ("MAIL FROM:<a@example.test> SIZE=999999999999", 552, "5.3.4"),
        ("MAIL FROM:<a@example.test>", 250, "2.1.0"),
        ("MAIL FROM:<b@example.test>", 503, "5.5.1"), // nested
        ("DATA", 554, "5.5.1"),                       // no recipients yet
        ("RCPT TO:<>", 501, "5.1.3"),
        ("RCPT TO:<x@example.test> FROBNICATE=1", 555, "5.5.4"),
        ("RCPT TO:<x@example.test> NOTIFY=SOMETIMES", 501, "5.5.4"),
        ("RCPT TO:<x@elsewhere.test>", 550, "5.7.1"),
        ("RCPT TO:<x@example.test>", 250, "2.1.5"),
        ("DATA extra", 501, "5.5.4"),
        ("RSET", 250, "2.0.0"),
        ("RCPT TO:<x@example.test>", 503, "5.5.1"), // RSET ended the transaction
    ];
    for (line, code, status) in table {
        let r = c.cmd(line, *code);
        assert!(r.lines[0].starts_with(status), "{line}: {r:?}");
    }
    // Still usable after all of that.
    c.cmd("EHLO client.test", 250);
    let r = c.send_message(
        "a@example.test",
        &["x@example.test"],
        b"Subject: after errors\r\n\r\nok\r\n",
    );
    queue_id(&r);
    assert_eq!(s.wait_for_mail("x", 1).len(), 1);
}

#[test]
fn unknown_users_postmaster_and_relay() {
    let s = Server::start("[local]\ndomains = [\"example.test\"]\nusers = [\"alice\"]\n");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<>", 250);
    assert!(
        c.cmd("RCPT TO:<bob@example.test>", 550)
            .text()
            .starts_with("5.1.1")
    );
    assert!(
        c.cmd("RCPT TO:<alice@elsewhere.test>", 550)
            .text()
            .starts_with("5.7.1")
    );
    // The classic relay tricks never reach another domain.
    for trick in [
        "<alice%elsewhere.test@example.test>",
        "<\"alice@elsewhere.test\"@example.test>",
        "<elsewhere.test!alice@example.test>",
        "<@example.test:alice@elsewhere.test>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{trick}"), 550);
        assert!(r.text().starts_with("5."), "{trick}: {r:?}");
    }
    c.cmd("RCPT TO:<Alice+list@EXAMPLE.test>", 250);
    c.cmd("RCPT TO:<Postmaster>", 250);
    c.cmd("RCPT TO:<postmaster@example.test>", 250);
    c.cmd("DATA", 354);
    c.raw(b"Subject: hi\r\n\r\nhello\r\n.\r\n").expect(250);
    assert_eq!(s.wait_for_mail("alice", 1).len(), 1);
    // Both postmaster forms go to the one postmaster mailbox, which gets
    // one copy (recipients sharing a mailbox share a copy).
    s.wait_for_log("\"delivered\"", 3);
    assert_eq!(s.wait_for_mail("postmaster", 1).len(), 1);
}

#[test]
fn too_many_recipients_is_452_and_the_rest_still_delivers() {
    let s = Server::start("[limits]\nmax_recipients = 100\n");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<a@example.test>", 250);
    for i in 0..100 {
        c.cmd(&format!("RCPT TO:<u{i}@example.test>"), 250);
    }
    assert!(
        c.cmd("RCPT TO:<u100@example.test>", 452)
            .text()
            .starts_with("4.5.3")
    );
    c.cmd("DATA", 354);
    c.raw(b"Subject: many\r\n\r\nx\r\n.\r\n").expect(250);
    s.wait_for_mail("u99", 1);
    assert!(s.mail("u100").is_empty());
}

#[test]
fn pipelined_transactions_get_replies_in_order() {
    let s = Server::start("");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    // Two whole transactions and QUIT in one write.
    c.raw(
        b"MAIL FROM:<a@example.test>\r\nRCPT TO:<p1@example.test>\r\nRCPT TO:<nobody@elsewhere.test>\r\nDATA\r\n",
    );
    for code in [250, 250, 550, 354] {
        c.expect(code);
    }
    c.raw(b"Subject: one\r\n\r\n1\r\n.\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<p2@example.test>\r\nDATA\r\n");
    for code in [250, 250, 250, 354] {
        c.expect(code);
    }
    c.raw(b"Subject: two\r\n\r\n2\r\n.\r\nQUIT\r\n");
    c.expect(250);
    c.expect(221);
    assert!(s.wait_for_mail("p1", 1)[0].ends_with(b"1\n"));
    assert!(s.wait_for_mail("p2", 1)[0].ends_with(b"2\n"));
}

#[test]
fn over_long_command_line_is_500_and_session_continues() {
    let s = Server::start("");
    let mut c = Client::greeted(s.addr);
    let long = format!("EHLO {}", "x".repeat(600));
    assert!(c.cmd(&long, 500).text().contains("too long"));
    c.cmd("EHLO client.test", 250);
    // A command with a bare LF inside is refused, not split.
    c.raw(b"NOOP\nQUIT\r\n");
    c.expect(500);
    c.cmd("QUIT", 221);
}

#[test]
fn garbage_lines_end_in_421_and_server_keeps_serving() {
    let s = Server::start("[limits]\nmax_errors = 10\n");
    let c = Client::greeted(s.addr);
    // 1000 lines of pseudo-random bytes (no CR/LF inside), sent at once.
    let mut seed: u64 = 0x9E3779B97F4A7C15;
    let mut blob = Vec::new();
    for _ in 0..1000 {
        let len = (seed % 300) as usize + 1;
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b = (seed & 0xFF) as u8;
            blob.push(if b == b'\r' || b == b'\n' { b'?' } else { b });
        }
        blob.extend_from_slice(b"\r\n");
    }
    let mut stream = c.into_stream();
    use std::io::{Read, Write};
    // The server may close before reading everything; a write error is fine.
    let _ = stream.write_all(&blob);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let codes: Vec<&str> = answer.lines().map(|l| &l[..3]).collect();
    assert_eq!(codes.len(), 11, "{answer}");
    assert!(codes[..10].iter().all(|c| c.starts_with('5')), "{answer}");
    assert_eq!(codes[10], "421", "{answer}");
    // The server is unharmed.
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("QUIT", 221);
}

#[test]
fn command_timeout_is_421() {
    let s = Server::start("[timeouts]\ncommand = \"1s\"\n");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.expect(421);
    assert!(r.text().starts_with("4.4.2"), "{r:?}");
    assert!(c.closed());
}

#[test]
fn connection_limits_per_ip_and_total() {
    let s = Server::start("[limits]\nmax_connections_per_ip = 2\n");
    let a = Client::greeted(s.addr);
    let b = Client::greeted(s.addr);
    let mut c = Client::connect(s.addr);
    assert!(c.expect(421).text().starts_with("4.7.0"));
    drop(a);
    drop(b);
    // Slots are released when sessions end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut d = Client::connect(s.addr);
        if d.reply().code == 220 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slots never released");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let s = Server::start("[limits]\nmax_connections = 1\n");
    let _a = Client::greeted(s.addr);
    Client::connect(s.addr).expect(421);
}

#[test]
fn smtputf8_addresses_need_the_parameter() {
    let s = Server::start("");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    assert!(
        c.cmd("MAIL FROM:<jösé@example.test>", 553)
            .text()
            .starts_with("5.6.7")
    );
    c.cmd("MAIL FROM:<a@example.test>", 250);
    assert!(
        c.cmd("RCPT TO:<jösé@example.test>", 553)
            .text()
            .starts_with("5.6.7")
    );
    c.cmd("RSET", 250);
    c.cmd("MAIL FROM:<jösé@example.test> SMTPUTF8", 250);
    c.cmd("RCPT TO:<jösé@example.test>", 250);
    c.cmd("DATA", 354);
    c.raw("Subject: ünïcödé\r\n\r\nhéllo\r\n.\r\n".as_bytes())
        .expect(250);
    let msg = String::from_utf8(s.wait_for_mail("jösé", 1).remove(0)).unwrap();
    assert!(msg.contains("with UTF8SMTP"), "{msg}");
    assert!(
        msg.starts_with("Return-Path: <jösé@example.test>\n"),
        "{msg}"
    );
    assert!(msg.ends_with("héllo\n"));
}

#[test]
fn graceful_shutdown_answers_421_and_exits_zero() {
    let mut s = Server::start("");
    let mut idle = Client::greeted(s.addr);
    idle.cmd("EHLO idle.test", 250);
    // A session in the middle of DATA finishes its message first.
    let mut busy = Client::greeted(s.addr);
    busy.cmd("EHLO busy.test", 250);
    busy.cmd("MAIL FROM:<a@example.test>", 250);
    busy.cmd("RCPT TO:<late@example.test>", 250);
    busy.cmd("DATA", 354);
    busy.raw(b"Subject: in flight\r\n\r\n");
    let pid = s.pid();
    let killer = std::thread::spawn(move || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
    });
    assert!(idle.expect(421).text().starts_with("4.3.2"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    busy.raw(b"still here\r\n.\r\n");
    let id = crate::support::queue_id(&busy.expect(250));
    assert_eq!(
        busy.reply().code,
        421,
        "after its command the session is closed with 421"
    );
    assert!(killer.join().unwrap().success());
    let status = s.wait_exit();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        s.dump_logs()
    );
    // The acknowledged message is delivered, now or after the next start.
    s.start_again();
    let msg = String::from_utf8(s.wait_for_mail("late", 1).remove(0)).unwrap();
    assert!(msg.contains(&id) && msg.ends_with("still here\n"), "{msg}");
}

#[test]
fn an_empty_recipient_delimiter_turns_subaddressing_off() {
    let s = Server::start(
        "[local]\ndomains = [\"example.test\"]\ncatch_all = true\nrecipient_delimiter = \"\"\n",
    );
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.send_message(
        "a@example.test",
        &["u+tag@example.test"],
        b"Subject: tag\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    s.wait_for_mail("u+tag", 1);
    assert!(s.mail("u").is_empty());
}
