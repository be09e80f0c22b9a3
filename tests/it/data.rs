//! DATA and BDAT: byte-exact delivery, size limits, line limits, smuggling.

use crate::support::{Client, Server, body_of, field, queue_id};

/// Dot-stuffs `body` (CRLF line endings) for DATA.
fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

#[test]
fn body_is_delivered_byte_exact() {
    let s = Server::start("");
    let mut body = Vec::new();
    body.extend_from_slice(b"Subject: exact\r\nContent-Type: text/plain; charset=latin1\r\n\r\n");
    body.extend_from_slice(b".leading dot\r\n..two dots\r\n.\r\n \r\n");
    body.extend_from_slice(b"8-bit: \xe9\xe8\xff\x80 end\r\n");
    let long: Vec<u8> = (0..998).map(|i| b"abcdefghij"[i % 10]).collect();
    body.extend_from_slice(&long);
    body.extend_from_slice(b"\r\n.");
    body.extend_from_slice(&long[1..]);
    body.extend_from_slice(b"\r\nlast line\r\n");

    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.send_message("a@example.test", &["exact@example.test"], &stuff(&body));
    let id = queue_id(&r);
    let msg = s.wait_for_mail("exact", 1).remove(0);
    // Maildir files use LF line endings; otherwise every byte is kept.
    let mut expected = body.clone();
    let mut i = 0;
    while i + 1 < expected.len() {
        if expected[i] == b'\r' && expected[i + 1] == b'\n' {
            expected.remove(i);
        }
        i += 1;
    }
    let got = body_of(&msg);
    let start = msg.len() - got.len();
    let headers = String::from_utf8_lossy(&msg[..start]);
    assert!(headers.starts_with("Return-Path: <a@example.test>\nDelivered-To: exact@example.test\nReceived: from client.test ([127.0.0.1])\n"), "{headers}");
    assert!(headers.contains(&format!("id {id}")), "{headers}");
    let expected_body = body_of(&expected);
    assert_eq!(got, expected_body, "body differs");
}

#[test]
fn crlf_line_endings_can_be_kept() {
    let s = Server::start(
        "[local]\ndomains = [\"example.test\"]\ncatch_all = true\nline_endings = \"crlf\"\n",
    );
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    queue_id(&c.send_message(
        "a@example.test",
        &["crlf@example.test"],
        b"Subject: x\r\n\r\na\r\nb\r\n",
    ));
    let msg = s.wait_for_mail("crlf", 1).remove(0);
    assert!(msg.ends_with(b"\r\n\r\na\r\nb\r\n"));
}

#[test]
fn size_overflow_during_data_is_552() {
    let s = Server::start("[limits]\nmax_message_size = \"10KiB\"\n");
    let mut c = Client::greeted(s.addr);
    let ehlo = c.cmd("EHLO client.test", 250);
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 10240"));
    // Declared size too big: refused at MAIL.
    assert!(
        c.cmd("MAIL FROM:<a@example.test> SIZE=20000", 552)
            .text()
            .starts_with("5.3.4")
    );
    // Undeclared, and the data runs over: refused at the end of DATA.
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<big@example.test>", 250);
    c.cmd("DATA", 354);
    let line = format!("{}\r\n", "x".repeat(98));
    for _ in 0..200 {
        c.raw(line.as_bytes());
    }
    c.raw(b".\r\n");
    assert!(c.expect(552).text().starts_with("5.3.4"));
    // The session goes on, and a message that fits is accepted.
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<big@example.test>", 250);
    c.cmd("DATA", 354);
    c.raw(b"Subject: small\r\n\r\nfits\r\n.\r\n").expect(250);
    let got = s.wait_for_mail("big", 1);
    assert!(got[0].ends_with(b"fits\n"));
}

#[test]
fn over_long_text_line_is_refused() {
    let s = Server::start("");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<long@example.test>", 250);
    c.cmd("DATA", 354);
    c.raw(format!("Subject: long\r\n\r\n{}\r\n.\r\n", "y".repeat(999)).as_bytes());
    assert!(c.expect(550).text().starts_with("5.6.0"));
    c.cmd("NOOP", 250);
    assert!(s.mail("long").is_empty());
}

#[test]
fn smuggling_variants_never_start_a_second_transaction() {
    let s = Server::start("");
    for (i, marker) in [&b"\n.\n"[..], b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"]
        .iter()
        .enumerate()
    {
        let mut c = Client::greeted(s.addr);
        c.cmd("EHLO client.test", 250);
        c.cmd("MAIL FROM:<a@example.test>", 250);
        c.cmd(&format!("RCPT TO:<outer{i}@example.test>"), 250);
        c.cmd("DATA", 354);
        let mut data = b"Subject: outer\r\n\r\nhello".to_vec();
        data.extend_from_slice(marker);
        data.extend_from_slice(
            format!("MAIL FROM:<admin@example.test>\r\nRCPT TO:<smuggled{i}@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")
                .as_bytes(),
        );
        c.raw(&data);
        // Exactly one reply: the whole thing was one message, refused.
        let r = c.expect(550);
        assert!(r.text().starts_with("5.6.0"), "{marker:?}: {r:?}");
        c.cmd("NOOP", 250);
        c.cmd("QUIT", 221);
    }
    // Nothing of it was queued: a message sent after all of them is the
    // only one accepted and delivered.
    let marker = s.marker();
    let accepted = s.events("message accepted");
    assert_eq!(accepted.len(), 1, "{}", s.dump_logs());
    assert_eq!(field(&accepted[0], "queue_id"), marker);
    assert_eq!(s.all_mail().len(), 1, "{}", s.dump_logs());
}

#[test]
fn bdat_chunks_and_sequencing() {
    let s = Server::start("[limits]\nmax_message_size = \"1KiB\"\n");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    // BDAT before MAIL: the chunk is still consumed, the session stays in step.
    c.raw(b"BDAT 5\r\nabcde");
    c.expect(503);
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<chunks@example.test>", 250);
    let part1 = b"Subject: chunked\r\n\r\nfirst ";
    c.raw(format!("BDAT {}\r\n", part1.len()).as_bytes())
        .raw(part1);
    c.expect(250);
    c.cmd("DATA", 503);
    let part2 = b"second\r\n.dot stays\r\n";
    c.raw(format!("BDAT {} LAST\r\n", part2.len()).as_bytes())
        .raw(part2);
    queue_id(&c.expect(250));
    let msg = s.wait_for_mail("chunks", 1).remove(0);
    assert_eq!(body_of(&msg), b"first second\n.dot stays\n");

    // Over the size limit across chunks: 552 after LAST, bytes consumed.
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<chunks@example.test>", 250);
    let blob = vec![b'z'; 800];
    c.raw(b"BDAT 800\r\n").raw(&blob).expect(250);
    c.raw(b"BDAT 800 LAST\r\n").raw(&blob);
    assert!(c.expect(552).text().starts_with("5.3.4"));
    c.cmd("NOOP", 250);
    // BDAT 0 LAST ends an (empty) message.
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<empty@example.test>", 250);
    c.raw(b"BDAT 0 LAST\r\n").expect(250);
    s.wait_for_mail("empty", 1);
}

#[test]
fn client_vanishing_mid_data_queues_nothing() {
    let s = Server::start("");
    {
        let mut c = Client::greeted(s.addr);
        c.cmd("EHLO client.test", 250);
        c.cmd("MAIL FROM:<a@example.test>", 250);
        c.cmd("RCPT TO:<gone@example.test>", 250);
        c.cmd("DATA", 354);
        c.raw(b"Subject: half\r\n\r\nhalf a message\r\n");
    } // dropped: the socket closes mid-DATA
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let id = queue_id(&c.send_message(
        "a@example.test",
        &["other@example.test"],
        b"Subject: whole\r\n\r\nok\r\n",
    ));
    // The later message was accepted and delivered; the half one never was.
    s.wait_for_mail("other", 1);
    assert!(s.mail("gone").is_empty());
    let accepted = s.wait_for_events("message accepted", 1);
    assert_eq!(accepted.len(), 1, "{}", s.dump_logs());
    assert_eq!(field(&accepted[0], "queue_id"), id);
}

#[test]
fn a_stalled_data_phase_times_out() {
    let s = Server::start("[timeouts]\ndata = \"1s\"\n");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<slow@example.test>", 250);
    c.cmd("DATA", 354);
    c.raw(b"Subject: slow\r\n\r\nhalf");
    let started = std::time::Instant::now();
    let r = c.expect(421);
    assert!(r.text().starts_with("4.4.2 "), "{r:?}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    assert!(c.closed());
    s.marker();
    assert!(s.mail("slow").is_empty());
}
