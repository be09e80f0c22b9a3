//! Stored mail: private file modes, a broken mail store defers instead of
//! bouncing, a corrupt queue record is set aside, one copy per mailbox.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::{Client, Server, queue_id};

/// Retries come quickly, so a fixed mail store is seen within seconds.
const FAST_RETRY: &str = "[queue]\nretry_intervals = [\"1s\"]\n\n";

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

fn send(s: &Server, to: &[&str], subject: &str) -> String {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO storage.test", 250);
    let body = format!("Subject: {subject}\r\n\r\nbody\r\n");
    queue_id(&c.send_message("a@example.test", to, body.as_bytes()))
}

/// Every file and directory under `dir`, recursively.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() {
            walk(&p, out);
        }
    }
}

/// A regular file where `mailbox`'s Maildir should be (ENOTDIR for every
/// delivery; chmod would not stop the tests, which run as root).
pub(crate) fn block_mailbox(s: &Server, mailbox: &str) {
    std::fs::create_dir_all(s.data().join("mail")).unwrap();
    std::fs::write(s.maildir(mailbox), b"not a directory").unwrap();
}

#[test]
fn mail_and_queue_are_private() {
    let s = Server::start("");
    send(&s, &["alice@example.test"], "private");
    s.wait_for_mail("alice", 1);
    let new = s.maildir("alice").join("new");
    let file = std::fs::read_dir(&new)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(&file), 0o600, "{}", file.display());
    for d in ["", "tmp", "new", "cur"] {
        let p = s.maildir("alice").join(d);
        assert_eq!(mode(&p), 0o700, "{}", p.display());
    }
    assert_eq!(mode(&s.data().join("mail")), 0o700);
    let queue = s.data().join("queue");
    assert_eq!(mode(&queue), 0o700);
    let mut all = Vec::new();
    walk(&queue, &mut all);
    assert!(!all.is_empty());
    for p in all {
        assert_eq!(mode(&p) & 0o077, 0, "{} is open to others", p.display());
    }
}

#[test]
fn unwritable_mail_store_defers_then_delivers() {
    let s = Server::start(FAST_RETRY);
    block_mailbox(&s, "blocked");
    send(&s, &["blocked@example.test"], "held");
    let lines = s.wait_for_log("mail store not writable", 1);
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    assert!(lines[0].contains("mail/blocked/tmp"), "{}", lines[0]);
    // Retried, never bounced, while the store is broken.
    let deferred = s.wait_for_log("\"deferred\"", 2);
    assert!(deferred[0].contains("Not a directory"), "{}", deferred[0]);
    assert!(s.log_lines("bounced").is_empty(), "{}", s.dump_logs());
    std::fs::remove_file(s.maildir("blocked")).unwrap();
    let mail = s.wait_for_mail("blocked", 1);
    assert!(String::from_utf8_lossy(&mail[0]).contains("Subject: held"));
}

#[test]
fn corrupt_queue_record_is_set_aside() {
    let mut s = Server::start(FAST_RETRY);
    block_mailbox(&s, "held");
    send(&s, &["held@example.test"], "good 1");
    send(&s, &["held@example.test"], "good 2");
    s.wait_for_log("\"deferred\"", 2);
    assert!(s.signal_and_wait("TERM").success());

    // Garbage where an envelope should be, written while the server is down.
    const BAD: &str = "0000000BAD00001";
    {
        let db = sled::open(s.data().join("queue")).unwrap();
        let envelopes = db.open_tree("envelopes").unwrap();
        assert_eq!(envelopes.len(), 2);
        envelopes.insert(BAD, &b"{\"id\": not json"[..]).unwrap();
        db.flush().unwrap();
    }
    std::fs::remove_file(s.maildir("held")).unwrap();
    s.start_again();

    let lines = s.wait_for_log("corrupt queue record", 1);
    assert!(
        lines[0].contains("ERROR") && lines[0].contains(BAD),
        "{}",
        lines[0]
    );
    assert!(s.wait_for_log("wasmtp ready", 2)[1].contains("\"corrupt\":1"));
    // Still serving, and the good messages arrive.
    send(&s, &["other@example.test"], "after");
    s.wait_for_mail("other", 1);
    let held = s.wait_for_mail("held", 2);
    assert!(String::from_utf8_lossy(&held[0]).contains("Subject: good"));
    assert!(s.signal_and_wait("TERM").success());

    // Kept aside with its raw bytes, not retried or lost.
    let db = sled::open(s.data().join("queue")).unwrap();
    let corrupt = db.open_tree("corrupt").unwrap();
    assert_eq!(&*corrupt.get(BAD).unwrap().unwrap(), b"{\"id\": not json");
    assert!(db.open_tree("envelopes").unwrap().is_empty());
}

#[test]
fn one_copy_per_mailbox() {
    let s = Server::start("");
    let mut to: Vec<String> = (1..=997)
        .map(|i| format!("alice+{i}@example.test"))
        .collect();
    to.extend(
        [
            "Alice@example.test",
            "ALICE+x@Example.TEST",
            "bob@example.test",
        ]
        .map(String::from),
    );
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    send(&s, &to, "once");
    // Every recipient is reported delivered ...
    s.wait_for_log("\"delivered\"", to.len());
    // ... and each mailbox holds one copy.
    let alice = s.wait_for_mail("alice", 1);
    assert!(String::from_utf8_lossy(&alice[0]).contains("Delivered-To: alice+1@example.test"));
    s.wait_for_mail("bob", 1);
    assert_eq!(s.all_mail().len(), 2);
}

#[test]
fn the_copies_of_a_message_are_made_durable_by_one_sync() {
    let s = Server::start("[admin]\nlisten = \"127.0.0.1:0\"\n");
    let mailboxes = ["ann", "ben", "cat", "dan", "eve", "fay"];
    let to: Vec<String> = mailboxes
        .iter()
        .map(|m| format!("{m}@example.test"))
        .collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    send(&s, &to, "six mailboxes");
    for m in mailboxes {
        s.wait_for_mail(m, 1);
    }
    // All six copies written first, then one wait for a sync of the mail
    // file system (it was one wait per copy, one after another).
    let waits = "wasmtp_syncfs_waits_total{by=\"maildir\"}";
    assert_eq!(crate::perf::sample(&s, waits), Some(1.0));
    // A second message waits once more.
    send(&s, &["ann@example.test", "ben@example.test"], "two more");
    s.wait_for_mail("ann", 2);
    s.wait_for_mail("ben", 2);
    assert_eq!(crate::perf::sample(&s, waits), Some(2.0));
    // Every sync that ran is timed: at least one per accepted message.
    let page = crate::perf::scrape(&s);
    let value = |series| {
        crate::perf::sample_in(&page, series).unwrap_or_else(|| panic!("no {series} in\n{page}"))
    };
    let syncs = value("wasmtp_syncfs_total");
    assert!(syncs >= 2.0, "{syncs} syncs for two messages");
    assert_eq!(value("wasmtp_syncfs_duration_seconds_count"), syncs);
    assert!(value("wasmtp_syncfs_duration_seconds_sum") > 0.0);
}
