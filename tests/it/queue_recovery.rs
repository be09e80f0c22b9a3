//! The queue survives its own store: messages wait (mailbox broken), the
//! server stops, the sled store is deleted, truncated or zeroed, or a crash
//! is replayed between the message file and the index write; the next start
//! delivers every acknowledged message exactly once and keeps the broken
//! store aside. Also `wasmtp queue check [--repair]`, and a store that
//! fails for real (its file system full) answers `451 4.3.0`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::storage::block_mailbox;
use crate::support::{BIN, Client, Server, field, queue_id};

/// Retries come quickly, so a repaired mailbox is seen within seconds.
const FAST_RETRY: &str = "[queue]\nretry_intervals = [\"1s\"]\n\n";
/// Messages waiting in the queue when the store is damaged.
const WAITING: usize = 6;

/// A message with a `Subject` and `X-Tag` of `tag` and a body of about
/// `body_len` octets in 78-octet lines.
pub(crate) fn message(tag: &str, body_len: usize) -> String {
    let line = format!("{}\r\n", "y".repeat(76));
    format!(
        "Subject: {tag}\r\nX-Tag: {tag}\r\n\r\n{}end\r\n",
        line.repeat(body_len / line.len())
    )
}

fn send(s: &Server, to: &str, subject: &str, body_len: usize) -> String {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO recovery.test", 250);
    let body = message(subject, body_len);
    queue_id(&c.send_message("a@example.test", &[to], body.as_bytes()))
}

/// `WAITING` messages deferred in the queue (their mailbox is a file) and
/// one already delivered and removed, then the server stopped cleanly.
fn stopped_with_waiting_mail() -> (Server, Vec<String>) {
    let mut s = Server::start(FAST_RETRY);
    send(&s, "done@example.test", "finished", 10);
    s.wait_for_mail("done", 1);
    block_mailbox(&s, "held");
    let ids: Vec<String> = (0..WAITING)
        // Up to a few hundred KB, so sled kept some in its blob files.
        .map(|i| send(&s, "held@example.test", &format!("wait-{i}"), i * 60_000))
        .collect();
    s.wait_for_log("\"deferred\"", WAITING);
    assert!(s.signal_and_wait("TERM").success());
    std::fs::remove_file(s.maildir("held")).unwrap();
    (s, ids)
}

fn queue_dir(s: &Server) -> PathBuf {
    s.data().join("queue")
}

/// The subjects in `mailbox`, checking each is there once.
fn subjects(s: &Server, mailbox: &str, n: usize) -> BTreeSet<String> {
    let mail = s.wait_for_mail(mailbox, n);
    let tags: BTreeSet<String> = mail
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m);
            text.lines()
                .find_map(|l| l.strip_prefix("X-Tag: "))
                .expect("X-Tag")
                .to_string()
        })
        .collect();
    assert_eq!(tags.len(), n, "a message was delivered twice");
    tags
}

fn expect_all_waiting(s: &Server) {
    let want: BTreeSet<String> = (0..WAITING).map(|i| format!("wait-{i}")).collect();
    assert_eq!(subjects(s, "held", WAITING), want);
    // The finished message is not brought back.
    assert_eq!(s.mail("done").len(), 1);
}

/// Stops the server and checks the queue is empty and index and files agree.
fn expect_empty_queue(s: &mut Server) {
    s.wait_for_log("message finished", WAITING + 1);
    assert!(s.signal_and_wait("TERM").success());
    let stopped = s.events("stopped");
    assert_eq!(field(stopped.last().unwrap(), "queued"), "0");
    let out = queue_check(s, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_dir(queue_dir(s).join("messages"))
            .unwrap()
            .count(),
        0
    );
}

/// sled's files in the queue directory.
fn sled_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            matches!(&*n, "db" | "conf" | "blobs") || n.starts_with("snap.")
        })
        .collect();
    v.sort();
    v
}

/// The `broken-store-*` directories kept in the queue directory.
fn kept_aside(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("broken-store-")
        })
        .collect()
}

fn queue_check(s: &Server, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["queue", "check", "--config"])
        .arg(s.config_file())
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn store_deleted_while_mail_waits() {
    let (mut s, _) = stopped_with_waiting_mail();
    for p in sled_files(&queue_dir(&s)) {
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }
    s.start_again();
    let recovered = s.wait_for_log("recovered from its message file", WAITING);
    assert_eq!(recovered.len(), WAITING, "{}", s.dump_logs());
    assert_eq!(s.log_lines("queue store missing").len(), 1);
    expect_all_waiting(&s);
    expect_empty_queue(&mut s);
}

/// Damages sled's log file (`db`) of a stopped server, then checks the
/// next start: the damaged store is kept aside and the message files bring
/// back what the index lost.
fn damaged_db(damage: impl Fn(&Path)) {
    let (mut s, ids) = stopped_with_waiting_mail();
    let dir = queue_dir(&s);
    let db = dir.join("db");
    let before = std::fs::read(&db).unwrap();
    damage(&db);
    let damaged = std::fs::read(&db).unwrap();
    assert_ne!(damaged, before, "the damage changed nothing");
    s.start_again();
    expect_all_waiting(&s);
    // sled reads a prefix of its damaged log without complaint; the clean
    // stop's entry count shows entries were lost, so the store as found
    // is kept aside and the message files fill the gap.
    let aside = kept_aside(&dir);
    assert_eq!(aside.len(), 1, "{aside:?}\n{}", s.dump_logs());
    assert_eq!(std::fs::read(aside[0].join("db")).unwrap(), damaged);
    let line = s.wait_for_log("damaged since the last clean stop", 1);
    assert!(line[0].contains("ERROR"), "{}", line[0]);
    assert!(!s.log_lines("recovered from its message file").is_empty());
    expect_empty_queue(&mut s);
    // Every waiting message was indexed again or still indexed: each one
    // is delivered under its own id, none twice (above).
    for id in ids {
        assert!(
            s.log_lines(&id).iter().any(|l| l.contains("\"delivered\"")),
            "{id}"
        );
    }
}

#[test]
fn store_truncated_while_mail_waits() {
    damaged_db(|db| {
        let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 3).unwrap();
    });
}

#[test]
fn store_zeroed_in_the_middle_while_mail_waits() {
    damaged_db(|db| {
        let mut bytes = std::fs::read(db).unwrap();
        let n = bytes.len();
        bytes[n / 4..n * 3 / 4].fill(0);
        std::fs::write(db, bytes).unwrap();
    });
}

#[test]
fn store_that_will_not_open_is_kept_aside() {
    let (mut s, _) = stopped_with_waiting_mail();
    let dir = queue_dir(&s);
    // sled refuses a config it cannot read.
    std::fs::write(dir.join("conf"), b"segment_size: garbage\n").unwrap();
    let out = queue_check(&s, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("store does not open"), "{}", text(&out));
    s.start_again();
    expect_all_waiting(&s);
    let aside = kept_aside(&dir);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(aside[0].join("conf")).unwrap(),
        b"segment_size: garbage\n"
    );
    assert!(aside[0].join("db").exists());
    expect_empty_queue(&mut s);
}

/// A crash between the two writes, both ways round, replayed on the
/// stopped server's store: a message file whose index entry was never
/// written (crash after the file, before the index) is delivered; an index
/// entry whose file is gone (a finished message: the file is unlinked
/// before the entry is removed) is dropped, not delivered again.
#[test]
fn crash_between_file_and_index_write() {
    let (mut s, ids) = stopped_with_waiting_mail();
    let dir = queue_dir(&s);
    let finished = s.events("message finished");
    let done_id = field(&finished[0], "queue_id");
    {
        let db = sled::open(&dir).unwrap();
        let envelopes = db.open_tree("envelopes").unwrap();
        // File first, index not yet.
        assert!(envelopes.remove(ids[0].as_bytes()).unwrap().is_some());
        // File unlinked, the index entry's removal not yet: the finished
        // message's entry as it was while it waited.
        let mut entry: serde_json::Value =
            serde_json::from_slice(&envelopes.get(ids[1].as_bytes()).unwrap().unwrap()).unwrap();
        entry["id"] = done_id.clone().into();
        envelopes
            .insert(done_id.as_bytes(), serde_json::to_vec(&entry).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    assert!(!dir.join("messages").join(&done_id).exists());
    // A crash leaves no clean-stop mark.
    std::fs::remove_file(dir.join("clean-stop")).unwrap();
    let out = queue_check(&s, &[]);
    assert!(!out.status.success());
    let report = text(&out);
    assert!(
        report.contains(&format!("file without index entry: {}", ids[0])),
        "{report}"
    );
    assert!(
        report.contains(&format!("index entry without file: {done_id}")),
        "{report}"
    );
    s.start_again();
    let recovered = s.wait_for_log("recovered from its message file", 1);
    assert!(recovered[0].contains(&ids[0]), "{}", recovered[0]);
    let dropped = s.wait_for_log("without a message file dropped", 1);
    assert!(dropped[0].contains(&done_id), "{}", dropped[0]);
    // What a crash leaves is repaired, not taken for a damaged store.
    assert!(kept_aside(&dir).is_empty());
    expect_all_waiting(&s);
    expect_empty_queue(&mut s);
}

#[test]
fn queue_check_finds_and_repairs() {
    let (mut s, ids) = stopped_with_waiting_mail();
    let dir = queue_dir(&s);
    // Clean after a clean stop.
    let out = queue_check(&s, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok: index and files agree"));
    // A damaged file, a write a crash cut short (no index entry), and a
    // file that is not the queue's.
    let damaged = dir.join("messages").join(&ids[2]);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();
    std::fs::write(dir.join("messages/0123ABC"), b"wasmtp-queue-file 1 env=").unwrap();
    std::fs::write(dir.join("messages/notes.txt"), b"an operator's file").unwrap();
    let out = queue_check(&s, &[]);
    assert!(!out.status.success());
    let report = text(&out);
    assert!(report.contains("checksum mismatch"), "{report}");
    assert!(report.contains("would be moved to corrupt/"), "{report}");
    assert!(report.contains("0123ABC: incomplete"), "{report}");
    // A dry run changed nothing.
    assert_eq!(std::fs::read(&damaged).unwrap(), bytes);
    let out = queue_check(&s, &["--repair"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(dir.join("corrupt").join(&ids[2])).unwrap(),
        bytes
    );
    assert!(dir.join("corrupt/0123ABC").exists());
    let out = queue_check(&s, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not a queue file"), "{}", text(&out));
    assert!(dir.join("messages/notes.txt").exists());
    // The running server holds the queue: check refuses, never repairs it.
    s.start_again();
    let out = queue_check(&s, &["--repair"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("in use by another process"),
        "{}",
        text(&out)
    );
    // The rest are delivered; the damaged one is not.
    let got = subjects(&s, "held", WAITING - 1);
    assert!(!got.contains("wait-2"));
}

/// Unmounts on drop, whatever the test did.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full file system under the queue: the message is refused with
/// `451 4.3.0` over the wire, the server keeps serving, and once deliveries
/// free space it accepts again. Every `250` is delivered once.
#[test]
fn full_queue_file_system_answers_451() {
    let mnt = tempfile::tempdir().unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs"])
        .arg(mnt.path())
        .status()
        .expect("mount");
    assert!(
        ok.success(),
        "mounting a tmpfs needs root (the test command runs as root)"
    );
    let _mount = Mount(mnt.path().to_path_buf());
    let queue = mnt.path().join("queue");
    let mut s = Server::start(&format!(
        "[queue]\ndir = \"{}\"\nretry_intervals = [\"1s\"]\n\n",
        queue.display()
    ));
    block_mailbox(&s, "held");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO full.test", 250);
    let mut accepted = 0;
    let refused = loop {
        let body = message(&format!("big-{accepted}"), 700_000);
        let r = c.send_message("a@example.test", &["held@example.test"], body.as_bytes());
        if r.code != 250 {
            break r;
        }
        accepted += 1;
        assert!(
            accepted < 20,
            "a 6 MiB file system took {accepted} messages of 700 KB"
        );
    };
    assert!(accepted >= 1);
    assert_eq!(refused.code, 451, "{}", refused.text());
    assert!(refused.text().starts_with("4.3.0 "), "{}", refused.text());
    let line = s.wait_for_log("cannot queue message", 1);
    assert!(line[0].contains("No space left"), "{}", line[0]);
    // The session and the server go on.
    c.cmd("NOOP", 250);
    // Deliveries free the space; the refused message leaves nothing behind.
    std::fs::remove_file(s.maildir("held")).unwrap();
    subjects(&s, "held", accepted);
    let later = send(&s, "held@example.test", "after", 10);
    s.wait_for_log(&later, 1);
    let got = subjects(&s, "held", accepted + 1);
    assert!(got.contains("after"));
    assert!(s.signal_and_wait("TERM").success());
}
