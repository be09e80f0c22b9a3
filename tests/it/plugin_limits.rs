//! A hostile or broken plugin stays inside its limits: each attack of the
//! `hostile` fixture is cut off by the limit named in the log, and the
//! server goes on serving (a normal message still gets 250).

use crate::support::{Client, Server, plugin_toml, queue_id};

/// The hostile fixture on `hooks` with `attack` and extra `[plugin.config]`
/// lines; failures are ignored (on_error = continue) unless `rest` says.
fn hostile(name: &str, hooks: &str, attack: &str, config: &str) -> String {
    plugin_toml(
        name,
        "fixture_hostile.wasm",
        &format!(
            "hooks = [{hooks}]\ngrants = [\"kv\"]\non_error = \"continue\"\nmemory = \"16MiB\"\n[plugin.config]\nattack = \"{attack}\"\n{config}"
        ),
    )
}

/// One message from a fresh session; returns the final reply.
fn send(s: &Server, to: &str, body: &str) -> crate::support::Reply {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.send_message("a@example.test", &[to], body.as_bytes())
}

/// Waits for a `limit reached` line naming `limit`.
fn limit_line(s: &Server, limit: &str) -> String {
    s.wait_for_log(&format!("\"limit\":\"{limit}\""), 1)
        .remove(0)
}

#[test]
fn a_huge_memory_grow_traps_at_the_cap() {
    let s = Server::start(&hostile("hostile", "\"rcpt\"", "grow", ""));
    queue_id(&send(&s, "u@example.test", "Subject: a\r\n\r\nx\r\n"));
    let line = limit_line(&s, "plugin.memory");
    assert!(line.contains("hostile"), "{line}");
    let trap = s.wait_for_log("plugin trapped", 1).remove(0);
    assert!(
        trap.contains("\"plugin\":\"hostile\"") && trap.contains("\"hook\":\"rcpt\""),
        "{trap}"
    );
    assert!(trap.contains("memory cap"), "{trap}");
    s.wait_for_mail("u", 1);
}

#[test]
fn a_notes_flood_is_cut_off_by_count_and_by_size() {
    // The size flood runs first (3 notes of 30 KB against 64 KiB), the count
    // flood second (small notes until 50 in all).
    let cfg = format!(
        "[plugin_limits]\nmax_notes = 50\nmax_notes_size = \"64KiB\"\n\n{}{}",
        hostile("big-notes", "\"mail-from\"", "notes", "size = 30000"),
        hostile("many-notes", "\"rcpt\"", "notes", "size = 1"),
    );
    let s = Server::start(&cfg);
    queue_id(&send(&s, "u@example.test", "Subject: a\r\n\r\nx\r\n"));
    assert!(limit_line(&s, "plugin_limits.max_notes_size").contains("big-notes"));
    assert!(limit_line(&s, "plugin_limits.max_notes").contains("many-notes"));
    let traps = s.wait_for_log("plugin trapped", 2);
    assert!(
        traps.iter().any(|l| l.contains("\"hook\":\"mail-from\"")),
        "{traps:?}"
    );
    // The notes went with the transaction: the next one is cut off at the
    // same place, not earlier.
    queue_id(&send(&s, "v@example.test", "Subject: b\r\n\r\nx\r\n"));
    assert_eq!(s.wait_for_log("plugin trapped", 4).len(), 4);
    s.wait_for_mail("v", 1);
}

#[test]
fn a_kv_flood_hits_the_quota_and_expired_entries_are_swept() {
    let cfg = format!(
        "[plugin_limits]\nmax_kv_size = \"256KiB\"\nmax_kv_key = 200\nmax_kv_value = \"8KiB\"\nkv_sweep_interval = \"1s\"\n\n{}",
        hostile("hostile", "\"data\"", "kv", "size = 4096\nttl = 1"),
    );
    let s = Server::start(&cfg);
    queue_id(&send(&s, "u@example.test", "Subject: a\r\n\r\nx\r\n"));
    let full = limit_line(&s, "plugin_limits.max_kv_size");
    assert!(full.contains("hostile"), "{full}");
    limit_line(&s, "plugin_limits.max_kv_key");
    limit_line(&s, "plugin_limits.max_kv_value");
    // About 256 KiB / 4 KiB entries fit, no more.
    let refused = s.wait_for_log("kv refused entry", 1).remove(0);
    let n: usize = refused
        .split("kv refused entry ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{refused}"));
    assert!((50..=64).contains(&n), "{refused}");
    // The entries expire after a second and the sweep removes them.
    s.wait_for_log("expired kv entries purged", 1);
    // So the next message's flood gets as far again.
    queue_id(&send(&s, "v@example.test", "Subject: b\r\n\r\nx\r\n"));
    let again = s.wait_for_log("kv refused entry", 2).remove(1);
    assert!(again.contains(&format!("kv refused entry {n}:")), "{again}");
}

#[test]
fn a_log_flood_is_dropped_and_counted() {
    let cfg = format!(
        "[plugin_limits]\nlog_lines_per_second = 20\n\n{}",
        hostile("hostile", "\"mail-from\"", "log", "count = 5000"),
    );
    let s = Server::start(&cfg);
    queue_id(&send(&s, "u@example.test", "Subject: a\r\n\r\nx\r\n"));
    limit_line(&s, "plugin_limits.log_lines_per_second");
    let lines = s.log_lines("hostile line");
    // At most two one-second windows' worth got through.
    assert!(!lines.is_empty() && lines.len() <= 40, "{}", lines.len());
    // The plugin's control characters are escaped, not written raw.
    assert!(
        lines[0].contains("\\\\n\\\\u{1b}[31mforged"),
        "{}",
        lines[0]
    );
    // A later second reports how many were dropped.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    queue_id(&send(&s, "v@example.test", "Subject: b\r\n\r\nx\r\n"));
    let dropped = s.wait_for_log("plugin log lines dropped", 1).remove(0);
    assert!(dropped.contains("\"dropped\":"), "{dropped}");
}

#[test]
fn ten_thousand_modifications_fail_the_call() {
    let s = Server::start(&hostile("hostile", "\"data\"", "mods", "count = 10000"));
    queue_id(&send(&s, "u@example.test", "Subject: a\r\n\r\nx\r\n"));
    let line = limit_line(&s, "plugin_limits.max_modifications");
    assert!(line.contains("10000") && line.contains("data"), "{line}");
    let msg = String::from_utf8(s.wait_for_mail("u", 1).remove(0)).unwrap();
    assert!(!msg.contains("X-Hostile"), "none of them was applied");
}

#[test]
fn added_recipients_count_against_max_recipients() {
    let cfg = format!(
        "[limits]\nmax_recipients = 100\n\n[plugin_limits]\nmax_modifications = 1000\n\n{}",
        hostile("hostile", "\"rcpt\"", "add-rcpts", "count = 150"),
    );
    let s = Server::start(&format!(
        "[local]\ndomains = [\"example.test\"]\ncatch_all = true\n\n{cfg}"
    ));
    queue_id(&send(&s, "u@example.test", "Subject: a\r\n\r\nx\r\n"));
    limit_line(&s, "limits.max_recipients");
    let accepted = s.wait_for_log("message accepted", 1).remove(0);
    assert!(accepted.contains("\"nrcpt\":100"), "{accepted}");
}

#[test]
fn quarantine_at_rcpt_quarantines_the_message() {
    let s = Server::start(&hostile("hostile", "\"rcpt\"", "quarantine", ""));
    queue_id(&send(&s, "u@example.test", "Subject: q\r\n\r\nx\r\n"));
    let q = String::from_utf8(s.wait_for_mail("quarantine", 1).remove(0)).unwrap();
    assert!(q.contains("X-Wasmtp-Quarantine: hostile"), "{q}");
    assert!(
        q.contains("X-Wasmtp-Original-Recipients: u@example.test"),
        "{q}"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(s.mail("u").is_empty());
}

#[test]
fn notes_set_at_mail_from_end_with_the_transaction() {
    let s = Server::start(&hostile("hostile", "\"mail-from\"", "mail-note", ""));
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    for to in ["u@example.test", "v@example.test"] {
        queue_id(&c.send_message("a@example.test", &[to], b"Subject: n\r\n\r\nx\r\n"));
    }
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RSET", 250);
    c.cmd("MAIL FROM:<a@example.test>", 250);
}

#[test]
fn plugin_replies_keep_ehlo_extensions_and_fit_512_octets() {
    let cfg = format!(
        "{}{}",
        hostile("greeter", "\"ehlo\"", "accept-reply", "size = 900"),
        hostile("refuser", "\"rcpt\"", "reject-reply", "size = 1500"),
    );
    let s = Server::start(&cfg);
    let mut c = Client::greeted(s.addr);
    let r = c.cmd("EHLO client.test", 250);
    assert!(
        r.lines[0].starts_with("mx.test hostile plugin text"),
        "{r:?}"
    );
    for ext in ["PIPELINING", "STARTTLS", "CHUNKING"] {
        assert!(
            r.lines.iter().any(|l| l.starts_with(ext)),
            "{ext} missing: {r:?}"
        );
    }
    c.cmd("MAIL FROM:<a@example.test>", 250);
    let r = c.cmd("RCPT TO:<u@example.test>", 550);
    assert!(r.lines.len() >= 3, "{r:?}");
    for l in &r.lines {
        // "550-" + text + CRLF on the wire.
        assert!(4 + l.len() + 2 <= 512, "{} octets: {l}", l.len() + 6);
        assert!(l.starts_with("5.7.1 "), "{l}");
    }
}

#[test]
fn the_compile_cache_is_trusted_only_when_private_and_pruned() {
    use std::os::unix::fs::PermissionsExt;
    // Without the init snapshot: one artifact (the snapshot's two are `perf.rs`'s).
    let mut s = Server::start(&plugin_toml(
        "spam-score",
        "spam_score.wasm",
        "hooks = [\"data\"]\nsnapshot = false",
    ));
    let cache = s.data().join("plugin-cache");
    let artifacts = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let first = artifacts();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(s.signal_and_wait("TERM").success());
    // Someone else could have written into it: compile instead of loading.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(cache.join("stale.cwasm"), b"not ours").unwrap();
    s.start_again();
    let w = s.wait_for_log("plugin cache not trusted", 1).remove(0);
    assert!(w.contains("writable"), "{w}");
    queue_id(&send(&s, "u@example.test", "Subject: a\r\n\r\nx\r\n"));
    assert!(
        artifacts().contains(&"stale.cwasm".to_string()),
        "an untrusted dir is not cleaned"
    );
    assert!(s.signal_and_wait("TERM").success());
    // Private again: the artifact loads and the unused one is pruned.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    s.start_again();
    s.wait_for_log("unused compiled plugins pruned", 1);
    assert_eq!(artifacts(), first);
    queue_id(&send(&s, "v@example.test", "Subject: b\r\n\r\nx\r\n"));
}
