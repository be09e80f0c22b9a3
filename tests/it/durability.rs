//! Nothing acknowledged is lost: kill -9 right after the last 250, start
//! again, and every acknowledged message arrives exactly once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::support::{Client, Server, queue_id};

const MESSAGES: usize = 200;
const SESSIONS: usize = 10;

fn kill9_round(s: &mut Server, round: usize) {
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let addr = s.addr;
    let threads: Vec<_> = (0..SESSIONS)
        .map(|t| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut c = Client::greeted(addr);
                c.cmd("EHLO durable.test", 250);
                for i in (t..MESSAGES).step_by(SESSIONS) {
                    let tag = format!("r{round}-m{i}");
                    let body = format!("Subject: {tag}\r\nX-Tag: {tag}\r\n\r\nbody of {tag}\r\n");
                    let r = c.send_message(
                        "a@example.test",
                        &["durable@example.test"],
                        body.as_bytes(),
                    );
                    acked.lock().unwrap().push((queue_id(&r), tag));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    s.kill9_and_restart();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), MESSAGES);
    let total = MESSAGES * (round + 1);
    let mail = s.wait_for_mail("durable", total);
    let tags: HashSet<String> = mail
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m);
            let tag = x_tag(&text);
            assert!(
                text.ends_with(&format!("\n\nbody of {tag}\n")),
                "damaged message {text}"
            );
            tag
        })
        .collect();
    assert_eq!(tags.len(), total, "duplicates delivered");
    for (id, tag) in &acked {
        assert!(tags.contains(tag), "acknowledged {tag} ({id}) was lost");
    }
}

#[test]
fn kill9_after_last_ack_loses_nothing() {
    let mut s = Server::start("");
    for round in 0..3 {
        kill9_round(&mut s, round);
    }
}

/// Cycles of the crash soak in the test run; `scripts/crash-soak N` runs N
/// (100 by default) through `CRASH_SOAK_CYCLES`.
const SOAK_CYCLES: usize = 4;
/// Largest body the soak sends (sizes vary from 1 KiB up to this).
const SOAK_MAX_BODY: usize = 300_000;

/// One message over a fresh connection without panicking on a dead server:
/// Ok(true) for a 250 after the data, Ok(false) for any other reply.
fn try_send(addr: std::net::SocketAddr, tag: &str, body: &[u8]) -> std::io::Result<bool> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut reply = || -> std::io::Result<u16> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
            }
        }
    };
    if reply()? != 220 {
        return Ok(false);
    }
    for (cmd, want) in [
        ("EHLO soak.test\r\n".to_string(), 250),
        ("MAIL FROM:<a@example.test>\r\n".into(), 250),
        ("RCPT TO:<soak@example.test>\r\n".into(), 250),
        ("DATA\r\n".into(), 354),
    ] {
        w.write_all(cmd.as_bytes())?;
        if reply()? != want {
            return Ok(false);
        }
    }
    w.write_all(format!("Subject: {tag}\r\nX-Tag: {tag}\r\n\r\n").as_bytes())?;
    w.write_all(body)?;
    w.write_all(format!("end of {tag}\r\n.\r\n").as_bytes())?;
    Ok(reply()? == 250)
}

/// A body of `len` octets in 78-octet lines, different per tag.
fn soak_body(tag: &str, len: usize) -> Vec<u8> {
    let line = format!("{tag:-<76}\r\n");
    line.repeat(len / line.len()).into_bytes()
}

/// The X-Tag of every message in the soak mailbox; each file is removed
/// once read (a long soak would otherwise fill the disk). A tag seen twice
/// is a message delivered twice.
fn collect_soak_mail(s: &Server, seen: &mut HashSet<String>) {
    let dir = s.maildir("soak").join("new");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd {
        let p = e.unwrap().path();
        let text = std::fs::read(&p).unwrap();
        let text = String::from_utf8_lossy(&text);
        let tag = x_tag(&text);
        assert!(
            text.ends_with(&format!("end of {tag}\n")),
            "damaged message {tag}"
        );
        assert!(seen.insert(tag.clone()), "{tag} delivered twice");
        std::fs::remove_file(&p).unwrap();
    }
}

/// kill -9 at a random moment while 10 sessions send bodies of 1 KiB to
/// 300 KB, start again, repeat: every message that got its 250 arrives,
/// none arrives twice, and none is damaged. Messages cut off before their
/// 250 may arrive (once) or not.
#[test]
fn crash_soak() {
    let cycles = std::env::var("CRASH_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SOAK_CYCLES);
    let mut s = Server::start("");
    let mut acked_total: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for cycle in 0..cycles {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let addr = s.addr;
        let seeds: Vec<u64> = (0..SESSIONS).map(|_| next()).collect();
        let threads: Vec<_> = seeds
            .into_iter()
            .enumerate()
            .map(|(t, seed)| {
                let (stop, acked) = (stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let tag = format!("c{cycle}-t{t}-m{i}");
                        let len = 1024 + (seed.wrapping_mul(i + 1) as usize % SOAK_MAX_BODY);
                        match try_send(addr, &tag, &soak_body(&tag, len)) {
                            Ok(true) => acked.lock().unwrap().push(tag),
                            Ok(false) => {}
                            Err(_) => break,
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        // Under load for 0.2 to 1.2 s, then the kill.
        std::thread::sleep(std::time::Duration::from_millis(200 + next() % 1000));
        s.kill9_and_restart();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        // Every acknowledged message of this cycle arrives.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            collect_soak_mail(&s, &mut seen);
            if acked.iter().all(|t| seen.contains(t)) {
                break;
            }
            let missing: Vec<_> = acked.iter().filter(|t| !seen.contains(*t)).collect();
            assert!(
                std::time::Instant::now() < deadline,
                "cycle {cycle}: acknowledged but not delivered: {missing:?}\n{}",
                s.dump_logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!(
            "crash soak cycle {cycle}: {} acknowledged, {} delivered so far",
            acked.len(),
            seen.len()
        );
        acked_total.extend(acked);
    }
    // Drain, stop cleanly: index and message files agree.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !s.settled() {
        assert!(std::time::Instant::now() < deadline, "queue did not drain");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(s.signal_and_wait("TERM").success());
    collect_soak_mail(&s, &mut seen);
    let check = std::process::Command::new(crate::support::BIN)
        .args(["queue", "check", "--config"])
        .arg(s.config_file())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(acked_total.len() >= cycles, "the load sent almost nothing");
    eprintln!(
        "crash soak: {cycles} cycles, {} acknowledged, {} delivered, none lost or twice",
        acked_total.len(),
        seen.len()
    );
}

/// The `X-Tag` field each test message carries (which message it is).
fn x_tag(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("X-Tag: "))
        .expect("X-Tag")
        .to_string()
}
