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
            let tag = text
                .lines()
                .find_map(|l| l.strip_prefix("X-Tag: "))
                .expect("X-Tag")
                .to_string();
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
