//! Clients that attack the server: every bound holds, memory stays flat, and
//! a well-behaved client is still served while it happens.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{Client, Server, queue_id};

/// The server's resident memory in KiB (Linux /proc).
fn rss_kib(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A normal message from a normal client, accepted.
fn well_behaved(s: &Server, mailbox: &str) {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO good.client.test", 250);
    queue_id(&c.send_message(
        "good@example.test",
        &[&format!("{mailbox}@example.test")],
        b"Subject: still served\r\n\r\nhello\r\n",
    ));
}

/// Writes `total` bytes of `fill` in a thread until done or the peer is gone;
/// returns how much went out.
fn stream_bytes(mut w: TcpStream, total: usize) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let buf = vec![b'x'; 64 * 1024];
        w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut sent = 0;
        while sent < total {
            match w.write(&buf) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    })
}

#[test]
fn bdat_size_overflow_is_refused_and_memory_stays_flat() {
    let s = Server::start("");
    // Warm up, so the baseline includes a served session.
    well_behaved(&s, "warm");
    s.wait_for_mail("warm", 1);
    let before = rss_kib(&s);

    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO x", 250);
    c.cmd("MAIL FROM:<>", 250);
    c.cmd("RCPT TO:<postmaster>", 250);
    c.raw(b"BDAT 1\r\nx").expect(250);
    c.raw(b"BDAT 18446744073709551615\r\n");
    let writer = stream_bytes(c.stream_clone(), 80 << 20);
    let r = c.expect(552);
    assert!(r.text().starts_with("5.3.4"), "{r:?}");
    assert!(c.closed(), "a chunk over the limit ends the session");
    let sent = writer.join().unwrap();
    assert!(sent < 80 << 20, "the server kept reading {sent} octets");
    let after = rss_kib(&s);
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    s.wait_for_log("\"limit\":\"limits.max_message_size\"", 1);
    assert!(s.log_lines("message accepted").len() == 1);
    well_behaved(&s, "after");
}

#[test]
fn bdat_total_over_the_limit_is_refused_at_once_and_stays_in_step() {
    let s = Server::start("[limits]\nmax_message_size = \"64KiB\"\n");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO x", 250);
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<big@example.test>", 250);
    let chunk = vec![b'y'; 40 * 1024];
    c.raw(b"BDAT 40960\r\n").raw(&chunk).expect(250);
    // The declared total passes the limit: 552 for this chunk, not at LAST.
    c.raw(b"BDAT 40960\r\n").raw(&chunk);
    assert!(c.expect(552).text().starts_with("5.3.4"));
    // The transaction is over; the chunk was read, the next command is found.
    c.raw(b"BDAT 3 LAST\r\nabc").expect(503);
    c.cmd("NOOP", 250);
    assert!(s.mail("big").is_empty());
}

#[test]
fn bdat_content_is_checked_like_data() {
    let s = Server::start("");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO x", 250);
    let long = vec![b'l'; 1200];
    let cases: [(&[u8], &str); 4] = [
        (b"Subject: a\r\n\r\nbare\nLF\r\n", "5.6.0"),
        (b"Subject: a\r\n\r\nbare\rCR\r\n", "5.6.0"),
        (b"Subject: a\r\n\r\nsmuggle\r\n.\n", "5.6.0"),
        (&long, "5.6.0"),
    ];
    for (body, status) in cases {
        c.cmd("MAIL FROM:<a@example.test>", 250);
        c.cmd("RCPT TO:<chunks@example.test>", 250);
        // Split in two chunks, the second ending the message.
        let (a, b) = body.split_at(body.len() / 2);
        c.raw(format!("BDAT {}\r\n", a.len()).as_bytes())
            .raw(a)
            .expect(250);
        c.raw(format!("BDAT {} LAST\r\n", b.len()).as_bytes())
            .raw(b);
        let r = c.expect(550);
        assert!(r.text().starts_with(status), "{body:?}: {r:?}");
    }
    // A last line without CRLF is stored with one.
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<ok@example.test>", 250);
    c.raw(b"BDAT 22 LAST\r\nSubject: ok\r\n\r\nno CRLF")
        .expect(250);
    let msg = s.wait_for_mail("ok", 1).remove(0);
    assert!(
        msg.ends_with(b"no CRLF\n"),
        "{:?}",
        String::from_utf8_lossy(&msg)
    );
    assert!(s.mail("chunks").is_empty());
}

#[test]
fn a_client_that_never_reads_is_dropped() {
    let s = Server::start("[limits]\nmax_junk_commands = 10000000\n[timeouts]\nwrite = \"2s\"\n");
    let c = Client::greeted(s.addr);
    // Pipeline NOOPs and never read a reply: the replies fill both socket
    // buffers and the server's write blocks.
    let sock = c.into_stream();
    let noops = b"NOOP\r\n".repeat(10_000);
    let w = sock.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut w = w;
        w.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut sent = 0usize;
        while sent < 200 << 20 {
            match w.write(&noops) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    s.wait_for_log("\"limit\":\"timeouts.write\"", 1);
    let sent = writer.join().unwrap();
    assert!(
        sent < 200 << 20,
        "the server read all of it without answering"
    );
    well_behaved(&s, "served");
}

#[test]
fn sessions_have_a_lifetime_even_when_busy() {
    let s = Server::start("[timeouts]\nsession = \"2s\"\n");
    // A slowloris in DATA: one byte now and then, never the end.
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO x", 250);
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<slow@example.test>", 250);
    c.cmd("DATA", 354);
    let mut trickle = c.stream_clone();
    let dripper = std::thread::spawn(move || {
        for _ in 0..100 {
            if trickle.write_all(b"x").is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
    let r = c.expect(421);
    assert!(r.text().starts_with("4.4.2"), "{r:?}");
    assert!(c.closed());
    assert!(dripper.join().unwrap(), "the server kept the session open");
    s.wait_for_log("\"limit\":\"timeouts.session\"", 1);
    assert!(s.mail("slow").is_empty());
    well_behaved(&s, "served");
}

#[test]
fn junk_commands_are_capped() {
    let s = Server::start("[limits]\nmax_junk_commands = 5\n");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO x", 250);
    for _ in 0..2 {
        c.cmd("NOOP", 250);
        c.cmd("RSET", 250);
    }
    // The sixth: closed.
    let r = c.cmd("VRFY root", 421);
    assert!(r.text().starts_with("4.7.0"), "{r:?}");
    assert!(c.closed());
    s.wait_for_log("\"limit\":\"limits.max_junk_commands\"", 1);

    // A queued message starts the count again, and commands inside a
    // transaction are not junk.
    let mut c = Client::greeted(s.addr);
    for _ in 0..3 {
        c.cmd("EHLO x", 250);
        c.cmd("MAIL FROM:<a@example.test>", 250);
        c.cmd("NOOP", 250);
        c.cmd("RCPT TO:<j@example.test>", 250);
        c.cmd("DATA", 354);
        c.raw(b"Subject: j\r\n\r\nj\r\n.\r\n").expect(250);
        c.cmd("NOOP", 250);
        c.cmd("NOOP", 250);
    }
    c.cmd("QUIT", 221);
}

#[test]
fn a_stalled_tls_handshake_is_cut_short() {
    let s = Server::start(&format!(
        "{}[timeouts]\ntls_handshake = \"1s\"\n",
        crate::support::SUBMISSION_LISTENERS
    ));
    let mut sock = TcpStream::connect(s.addrs["submissions"]).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Say nothing: the server gives up on the handshake and closes.
    let mut buf = [0u8; 16];
    let n = sock.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close");
    s.wait_for_log("\"limit\":\"timeouts.tls_handshake\"", 1);
}

#[test]
fn the_memory_budget_refuses_with_452_and_recovers() {
    let s =
        Server::start("[limits]\nmax_message_size = \"1MiB\"\nmax_bytes_in_flight = \"1088KiB\"\n");
    // A holds nearly the whole budget in an unfinished DATA.
    let mut a = Client::greeted(s.addr);
    a.cmd("EHLO a", 250);
    a.cmd("MAIL FROM:<a@example.test>", 250);
    a.cmd("RCPT TO:<a@example.test>", 250);
    a.cmd("DATA", 354);
    let line = [b'a'; 98];
    for _ in 0..9000 {
        a.raw(&line).raw(b"\r\n");
    }
    // B's message does not fit: read to its end, then 452 4.3.1.
    let mut b = Client::greeted(s.addr);
    b.cmd("EHLO b", 250);
    let mut body = Vec::new();
    for _ in 0..3000 {
        body.extend_from_slice(&line);
        body.extend_from_slice(b"\r\n");
    }
    let r = b.send_message("b@example.test", &["b@example.test"], &body);
    assert_eq!(r.code, 452, "{r:?}");
    assert!(r.text().starts_with("4.3.1"), "{r:?}");
    s.wait_for_log("\"limit\":\"limits.max_bytes_in_flight\"", 1);
    // A finishes; its bytes were kept.
    a.raw(b".\r\n");
    queue_id(&a.expect(250));
    // The budget is free again: B's retry is accepted.
    queue_id(&b.send_message("b@example.test", &["b@example.test"], &body));
    assert!(s.wait_for_mail("a", 1)[0].len() > 9000 * 98);
    s.wait_for_mail("b", 1);
}

#[test]
fn helo_names_cannot_forge_trace_fields() {
    let s = Server::start("");
    let mut c = Client::greeted(s.addr);
    for bad in [
        "EHLO evil (from trusted.example [10.0.0.1])",
        "EHLO evil\tby",
        "HELO evil;by=x",
    ] {
        let r = c.cmd(bad, 501);
        assert!(r.text().starts_with("5.5.4"), "{bad}: {r:?}");
    }
    c.cmd("EHLO [IPv6:::1]", 250);
    let r = c.send_message(
        "a@example.test",
        &["trace@example.test"],
        b"Subject: t\r\n\r\nt\r\n",
    );
    queue_id(&r);
    let msg = String::from_utf8(s.wait_for_mail("trace", 1).remove(0)).unwrap();
    assert!(
        msg.contains("Received: from [IPv6:::1] ([127.0.0.1])"),
        "{msg}"
    );
}
