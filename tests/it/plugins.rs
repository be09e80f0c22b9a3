//! The plugin host through real SMTP: verdicts, modifications, order,
//! capabilities, limits, hot swap, and a plugin written in Python.

use std::net::UdpSocket;
use std::process::Command;

use crate::support::{
    BIN, Client, Server, check_plugin_config, field, in_transaction, plugin_toml, probe_toml,
    queue_id,
};

/// A session in DATA for u@example.test, told 354.
fn at_data(s: &Server) -> Client {
    let mut c = in_transaction(s);
    c.cmd("RCPT TO:<u@example.test>", 250);
    c.cmd("DATA", 354);
    c
}

fn send(s: &Server, from: &str, to: &str, body: &str) -> crate::support::Reply {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd(&format!("MAIL FROM:<{from}>"), 250);
    c.cmd(&format!("RCPT TO:<{to}>"), 250);
    c.cmd("DATA", 354);
    c.raw(body.as_bytes()).raw(b".\r\n");
    c.reply()
}

#[test]
fn spam_score_headers_on_every_message() {
    let s = Server::start(&plugin_toml(
        "spam-score",
        "spam_score.wasm",
        "hooks = [\"data\"]\non_error = \"continue\"",
    ));
    queue_id(&send(
        &s,
        "a@example.test",
        "u@example.test",
        "Subject: hi\r\nX-Spam-Score: 99\r\n\r\nhello\r\n",
    ));
    let msg = String::from_utf8(s.wait_for_mail("u", 1).remove(0)).unwrap();
    assert!(msg.contains("\nX-Spam-Score: "), "{msg}");
    assert!(msg.contains("\nX-Spam-Status: No"), "{msg}");
    // The client's own X-Spam-Score was replaced, not kept beside ours.
    assert_eq!(msg.matches("X-Spam-Score:").count(), 1, "{msg}");
    assert!(!msg.contains("X-Spam-Score: 99"));
    let calls = s.log_lines("plugin loaded");
    assert_eq!(calls.len(), 1, "{}", s.dump_logs());
}

#[test]
fn reject_quarantine_and_first_decisive_verdict() {
    let cfg = format!(
        "{}{}",
        plugin_toml(
            "attachment-guard",
            "attachment_guard.wasm",
            "hooks = [\"data\"]"
        ),
        plugin_toml(
            "spam-score",
            "spam_score.wasm",
            "hooks = [\"data\"]\n[plugin.config]\nquarantine_threshold = 3.0\nreject_threshold = 6.0\nphrases = { \"lottery\" = 4.0, \"jackpot\" = 10.0 }"
        )
    );
    let s = Server::start(&cfg);
    let clean = "From: a@example.test\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@x>\r\nSubject: hello\r\n\r\nhi\r\n";
    queue_id(&send(&s, "a@example.test", "clean@example.test", clean));
    // Over the reject threshold: 550 at the end of DATA, nothing queued.
    let r = send(
        &s,
        "a@example.test",
        "spam@example.test",
        &clean.replace("hi\r\n", "jackpot\r\n"),
    );
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text().starts_with("5.7.1"), "{r:?}");
    // Between the thresholds: accepted into quarantine.
    let q = send(
        &s,
        "a@example.test",
        "maybe@example.test",
        &clean.replace("hi\r\n", "lottery\r\n"),
    );
    queue_id(&q);
    let quarantined = String::from_utf8(s.wait_for_mail("quarantine", 1).remove(0)).unwrap();
    assert!(
        quarantined.contains("X-Wasmtp-Original-Recipients: maybe@example.test"),
        "{quarantined}"
    );
    // attachment-guard runs first, so its refusal is the one the client sees,
    // even though spam-score would also refuse this message.
    let attach = "From: a@example.test\r\nSubject: invoice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\njackpot\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"invoice.exe\"\r\n\r\nMZ\r\n--b--\r\n";
    let r = send(&s, "a@example.test", "victim@example.test", attach);
    assert_eq!(r.code / 100, 5, "{r:?}");
    assert!(
        r.text().to_lowercase().contains("invoice.exe")
            || r.text().to_lowercase().contains("attachment"),
        "{r:?}"
    );
    s.wait_for_mail("clean", 1);
    // A message sent after all of them has been accepted and delivered:
    // nothing refused can still turn up.
    s.marker();
    assert!(s.mail("spam").is_empty() && s.mail("maybe").is_empty() && s.mail("victim").is_empty());
    let rejects: Vec<String> = s
        .events("plugin call")
        .iter()
        .filter(|v| field(v, "verdict") == "reject")
        .map(|v| field(v, "plugin"))
        .collect();
    assert_eq!(
        rejects,
        ["spam-score", "attachment-guard"],
        "{}",
        s.dump_logs()
    );
}

#[test]
fn router_rewrites_and_routes_recipients() {
    let s = Server::start(&plugin_toml(
        "router",
        "router.wasm",
        "hooks = [\"rcpt\", \"deliver\"]\n[plugin.config]\nlocal_domains = [\"example.test\"]\nmailboxes = [\"alice@example.test\", \"bob@example.test\"]\naliases = { \"team@example.test\" = [\"alice@example.test\", \"bob@example.test\"] }\nreject_unknown = true",
    ));
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<x@example.test>", 250);
    let r = c.cmd("RCPT TO:<nobody@example.test>", 550);
    assert!(r.text().starts_with("5.1.1"), "{r:?}");
    c.cmd("RCPT TO:<team@example.test>", 250);
    c.cmd("DATA", 354);
    c.raw(b"Subject: to the team\r\n\r\nhi all\r\n.\r\n");
    queue_id(&c.expect(250));
    // The alias expanded into both mailboxes; no "team" mailbox exists.
    for mb in ["alice", "bob"] {
        let m = String::from_utf8(s.wait_for_mail(mb, 1).remove(0)).unwrap();
        assert!(m.contains("Subject: to the team"));
    }
    assert!(s.mail("team").is_empty());
}

/// A one-shot DNS responder on loopback: answers A queries under `zone`
/// with 127.0.0.2, everything else with NXDOMAIN.
fn dns_server(zone: &'static str) -> std::net::SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            if n < 17 {
                continue;
            }
            // Question name, as dotted text.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let len = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + len]).to_string());
                i += 1 + len;
            }
            let qend = i + 5;
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let name = labels.join(".").to_lowercase();
            let listed = name.ends_with(zone) && qtype == 1;
            let mut resp = q[..qend].to_vec();
            resp[2] = 0x81;
            resp[3] = if listed { 0x80 } else { 0x83 };
            resp[6..8].copy_from_slice(&[0, u8::from(listed)]);
            resp[8..12].copy_from_slice(&[0, 0, 0, 0]);
            if listed {
                resp.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 2]);
            }
            let _ = sock.send_to(&resp, peer);
        }
    });
    addr
}

#[test]
fn dnsbl_rejects_a_listed_client_through_a_real_dns_server() {
    let dns = dns_server("bl.test");
    let cfg = format!(
        "[dns]\nnameservers = [\"{dns}\"]\ntimeout = \"2s\"\n\n{}",
        plugin_toml(
            "dnsbl",
            "dnsbl.wasm",
            "hooks = [\"connect\", \"rcpt\"]\ngrants = [\"dns\"]\n[plugin.config]\nskip_private = false\nzones = [{ zone = \"bl.test\", action = \"reject\" }]"
        )
    );
    let s = Server::start(&cfg);
    let mut c = Client::connect(s.addr);
    let first = c.reply();
    // Depending on the plugin's design the refusal comes at connect or RCPT.
    if first.code == 220 {
        c.cmd("EHLO client.test", 250);
        c.cmd("MAIL FROM:<a@example.test>", 250);
        let r = c.cmd("RCPT TO:<u@example.test>", 550);
        assert!(r.text().contains("bl.test"), "{r:?}");
    } else {
        assert!(
            first.code == 554 || first.code == 550 || first.code == 421,
            "{first:?}"
        );
        assert!(first.text().contains("bl.test"), "{first:?}");
    }
    // Not listed under another zone: the same plugin lets the client through.
    let cfg2 = format!(
        "[dns]\nnameservers = [\"{dns}\"]\n\n{}",
        plugin_toml(
            "dnsbl",
            "dnsbl.wasm",
            "hooks = [\"connect\", \"rcpt\"]\ngrants = [\"dns\"]\n[plugin.config]\nskip_private = false\nzones = [{ zone = \"other.test\", action = \"reject\" }]"
        )
    );
    let s2 = Server::start(&cfg2);
    queue_id(&send(
        &s2,
        "a@example.test",
        "u@example.test",
        "Subject: x\r\n\r\nx\r\n",
    ));
}

#[test]
fn busy_loop_is_cut_off_at_its_deadline() {
    let s = Server::start(&plugin_toml(
        "busy",
        "fixture_busy_loop.wasm",
        "hooks = [\"data\"]\ntimeout = \"1s\"\non_error = \"tempfail\"",
    ));
    let mut a = at_data(&s);
    let started = std::time::Instant::now();
    a.raw(b"Subject: spin\r\n\r\nx\r\n.\r\n");
    let r = a.expect(451);
    assert!(r.text().starts_with("4.3.0"), "{r:?}");
    // Cut off at the deadline, not before it.
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    let w = s.wait_for_log("plugin call timed out", 1).remove(0);
    let v: serde_json::Value = serde_json::from_str(&w).unwrap();
    assert_eq!(
        (field(&v, "plugin"), field(&v, "hook")),
        ("busy".into(), "data".into()),
        "{w}"
    );
    a.cmd("NOOP", 250);
}

#[test]
fn a_spinning_plugin_does_not_hold_up_other_sessions() {
    // A's data call spins until the plugin's kv counter of rcpt calls
    // reaches 2, which only B's RCPT can do: A can only be answered after B
    // was served while A's call was still spinning. Were the runtime
    // blocked, B's RCPT would never come, A would time out (451) and B stall.
    let s = Server::start(&probe_toml(
        "spinner",
        &["rcpt", "data"],
        "timeout = \"60s\"\n[plugin.config]\nrcpt = [\"kv-incr:rcpts\"]\ndata = [\"spin-until:rcpts=2\"]",
    ));
    let mut a = at_data(&s);
    a.raw(b"Subject: spin\r\n\r\nx\r\n.\r\n");
    let mut b = Client::greeted(s.addr);
    b.cmd("EHLO other.test", 250);
    b.cmd("MAIL FROM:<b@example.test>", 250);
    b.cmd("RCPT TO:<v@example.test>", 250);
    b.cmd("QUIT", 221);
    queue_id(&a.expect(250));
    let m = String::from_utf8(s.wait_for_mail("u", 1).remove(0)).unwrap();
    assert!(m.contains("X-Probe: reached rcpts=2"), "{m}");
    assert!(s.log_lines("timed out").is_empty(), "{}", s.dump_logs());
}

#[test]
fn trap_and_memory_hog_apply_on_error() {
    let cfg = format!(
        "{}{}",
        plugin_toml(
            "hog",
            "fixture_memory_hog.wasm",
            "hooks = [\"rcpt\"]\nmemory = \"16MiB\"\non_error = \"reject\""
        ),
        plugin_toml(
            "trap",
            "fixture_trap.wasm",
            "hooks = [\"mail-from\"]\non_error = \"continue\""
        )
    );
    let s = Server::start(&cfg);
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    // The trap at mail-from is ignored (on_error = continue).
    c.cmd("MAIL FROM:<a@example.test>", 250);
    // The memory hog hits its cap at rcpt: on_error = reject.
    let r = c.cmd("RCPT TO:<u@example.test>", 550);
    assert!(r.text().starts_with("5.7.0"), "{r:?}");
    // Again the same outcome; the server is fine.
    c.cmd("RCPT TO:<u@example.test>", 550);
    c.cmd("QUIT", 221);
    let traps = s.wait_for_log("plugin trapped", 3);
    let who: Vec<(String, String, String)> = traps
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                field(&v, "plugin"),
                field(&v, "hook"),
                field(&v, "on_error"),
            )
        })
        .collect();
    let want = |p: &str, h: &str, e: &str| (p.to_string(), h.to_string(), e.to_string());
    assert_eq!(
        who,
        [
            want("trap", "mail-from", "Continue"),
            want("hog", "rcpt", "Reject"),
            want("hog", "rcpt", "Reject")
        ],
        "{}",
        s.dump_logs()
    );
}

#[test]
fn a_trapped_instance_is_not_reused() {
    // The probe counts its calls in its own memory and reports the count.
    let s = Server::start(&probe_toml(
        "probe",
        &["rcpt"],
        "on_error = \"reject\"\n[plugin.config]\nrcpt = [\"@\"]",
    ));
    let mut c = in_transaction(&s);
    let count = |c: &mut Client| c.cmd("RCPT TO:<count.tempfail@example.test>", 451).text();
    assert_eq!(count(&mut c), "4.7.1 calls=1");
    // Within a transaction the instance is kept.
    assert_eq!(count(&mut c), "4.7.1 calls=2");
    let r = c.cmd("RCPT TO:<trap@example.test>", 550);
    assert!(r.text().starts_with("5.7.0"), "{r:?}");
    // After the trap a new instance answers: its count starts again.
    assert_eq!(count(&mut c), "4.7.1 calls=1");
    c.cmd("RSET", 250);
    c.cmd("MAIL FROM:<a@example.test>", 250);
    assert_eq!(count(&mut c), "4.7.1 calls=1", "no state survives RSET");
    let w = s.wait_for_log("plugin trapped", 1).remove(0);
    assert!(
        w.contains("\"plugin\":\"probe\"") && w.contains("\"hook\":\"rcpt\""),
        "{w}"
    );
}

#[test]
fn memory_cap_is_the_configured_one() {
    let cfg = |memory: &str| {
        probe_toml(
            "alloc",
            &["rcpt"],
            &format!(
                "memory = \"{memory}\"\non_error = \"reject\"\n[plugin.config]\nrcpt = [\"alloc:32\", \"tempfail\"]"
            ),
        )
    };
    // 32 MiB of blocks fit under 64 MiB...
    let s = Server::start(&cfg("64MiB"));
    let mut c = in_transaction(&s);
    let r = c.cmd("RCPT TO:<u@example.test>", 451);
    assert_eq!(r.text(), "4.7.1 allocated=32");
    // ...and not under 16 MiB.
    let s = Server::start(&cfg("16MiB"));
    let mut c = in_transaction(&s);
    let r = c.cmd("RCPT TO:<u@example.test>", 550);
    assert!(r.text().starts_with("5.7.0"), "{r:?}");
    let l = s.wait_for_log("limit reached", 1).remove(0);
    assert!(l.contains("plugin.memory"), "{l}");
}

#[test]
fn per_hook_timeouts_override_the_plugin_timeout() {
    // The same spin at rcpt and data; `timeouts` gives data a longer deadline.
    let s = Server::start(&plugin_toml(
        "busy",
        "fixture_busy_loop.wasm",
        "hooks = [\"rcpt\", \"data\"]\ntimeout = \"100ms\"\ntimeouts = { data = \"1500ms\" }\non_error = \"continue\"",
    ));
    let mut c = at_data(&s);
    let started = std::time::Instant::now();
    c.raw(b"Subject: spin\r\n\r\nx\r\n.\r\n");
    queue_id(&c.expect(250));
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
    let micros: Vec<(String, u64)> = s
        .wait_for_log("plugin call timed out", 2)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (field(&v, "hook"), field(&v, "micros").parse().unwrap())
        })
        .collect();
    assert_eq!(micros[0].0, "rcpt");
    assert!(micros[0].1 >= 100_000, "{micros:?}");
    assert_eq!(micros[1].0, "data");
    assert!(micros[1].1 >= 1_500_000, "{micros:?}");
}

#[test]
fn ungranted_import_and_bad_digest_are_refused_at_load() {
    let (ok, err) = check_plugin_config(&plugin_toml("sneaky", "fixture_ungranted.wasm", ""));
    assert!(!ok);
    assert!(
        err.contains("sneaky") && err.contains("wasmtp:plugin/kv") && err.contains("grants"),
        "{err}"
    );
    // Both missing grants at once, not the first only.
    assert!(
        err.contains("wasmtp:plugin/dns") && err.contains("add \"kv\", \"dns\""),
        "{err}"
    );
    // Granted, it loads.
    let (ok, err) = check_plugin_config(&plugin_toml(
        "sneaky",
        "fixture_ungranted.wasm",
        "grants = [\"kv\", \"dns\"]",
    ));
    assert!(ok, "{err}");
    // The digest, computed independently of wasmtp.
    let wasm = crate::support::plugin_wasm("spam_score.wasm");
    let out = Command::new("sha256sum").arg(&wasm).output().unwrap();
    assert!(out.status.success());
    let digest = String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(digest.len(), 64);
    // `wasmtp plugins digest` prints the same.
    let ours = Command::new(BIN)
        .args(["plugins", "digest", &wasm])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ours.stdout).starts_with(&digest),
        "{ours:?}"
    );
    // A wrong pin is refused, naming the plugin and both digests.
    let pin = "0".repeat(64);
    let (ok, err) = check_plugin_config(&plugin_toml(
        "pinned",
        "spam_score.wasm",
        &format!("sha256 = \"{pin}\""),
    ));
    assert!(!ok, "{err}");
    assert!(
        err.contains("pinned") && err.contains(&pin) && err.contains(&digest),
        "{err}"
    );
    // The right one is accepted.
    let (ok, err) = check_plugin_config(&plugin_toml(
        "pinned",
        "spam_score.wasm",
        &format!("sha256 = \"{digest}\""),
    ));
    assert!(ok, "{err}");
}

#[test]
fn python_plugin_refuses_a_sender_domain() {
    let s = Server::start(&plugin_toml(
        "sender-block",
        "python/sender_block.wasm",
        "hooks = [\"mail-from\"]\n[plugin.config]\ndomains = [\"spam.example\"]",
    ));
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.cmd("MAIL FROM:<bad@spam.example>", 550);
    assert!(r.text().starts_with("5."), "{r:?}");
    c.cmd("MAIL FROM:<good@example.test>", 250);
}

#[test]
fn hot_swap_during_in_flight_sessions_drops_none() {
    let mut s = Server::start(&plugin_toml(
        "spam-score",
        "spam_score.wasm",
        "hooks = [\"data\"]",
    ));
    // 20 sessions in the middle of a transaction.
    let mut clients: Vec<Client> = (0..20)
        .map(|i| {
            let mut c = Client::greeted(s.addr);
            c.cmd("EHLO client.test", 250);
            c.cmd("MAIL FROM:<a@example.test>", 250);
            c.cmd(&format!("RCPT TO:<swap{i}@example.test>"), 250);
            c
        })
        .collect();
    // New config: spam-score now also rejects everything scoring >= 0.
    let cfg = s.dir.path().join("wasmtp.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("[plugin.config]\nreject_threshold = 0.0\n");
    std::fs::write(&cfg, text).unwrap();
    s.hup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.log_lines("plugin reload done").is_empty() {
        assert!(std::time::Instant::now() < deadline, "{}", s.dump_logs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The running sessions finish on the set they started with.
    for c in &mut clients {
        c.cmd("DATA", 354);
        c.raw(b"Subject: during swap\r\n\r\nok\r\n.\r\n");
        queue_id(&c.expect(250));
    }
    for i in 0..20 {
        s.wait_for_mail(&format!("swap{i}"), 1);
    }
    // New sessions get the new set.
    let r = send(
        &s,
        "a@example.test",
        "after@example.test",
        "Subject: after\r\n\r\nok\r\n",
    );
    assert_eq!(r.code, 550, "{r:?}");
    // A broken new set leaves the running one serving.
    std::fs::write(&cfg, "this is = = not toml").unwrap();
    s.hup();
    while s.log_lines("plugin reload failed").is_empty() {
        assert!(std::time::Instant::now() < deadline, "{}", s.dump_logs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        send(
            &s,
            "a@example.test",
            "after@example.test",
            "Subject: x\r\n\r\nok\r\n"
        )
        .code,
        550
    );
    assert!(s.is_running());
}

#[test]
fn delivery_notifications_reach_plugins() {
    let mut s = Server::start(&plugin_toml(
        "spam-score",
        "spam_score.wasm",
        "hooks = [\"data\", \"delivered\"]",
    ));
    queue_id(&send(
        &s,
        "a@example.test",
        "n@example.test",
        "Subject: x\r\n\r\nx\r\n",
    ));
    s.wait_for_mail("n", 1);
    // The notification runs inside the delivery task, which shutdown lets finish.
    s.wait_for_log("\"delivered\"", 1);
    let st = s.signal_and_wait("TERM");
    assert!(st.success());
    // `stopped` is the last line: everything before it has been read.
    s.wait_for_log("\"stopped\"", 1);
    let totals = s.log_lines("plugin totals");
    assert_eq!(totals.len(), 1, "{}", s.dump_logs());
    // One data call and one delivered call.
    assert!(totals[0].contains("\"calls\":2"), "{}", totals[0]);
}

#[test]
fn plugins_reload_through_the_cli() {
    let s = Server::start(&plugin_toml(
        "spam-score",
        "spam_score.wasm",
        "hooks = [\"data\"]",
    ));
    let cfg = s.config_file();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("[plugin.config]\nreject_threshold = 0.0\n");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(BIN)
        .args(["plugins", "reload", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    s.wait_for_log("plugin reload done", 1);
    let r = send(
        &s,
        "a@example.test",
        "after@example.test",
        "Subject: after\r\n\r\nok\r\n",
    );
    assert_eq!(r.code, 550, "{r:?}");
    // Without a running server it says so.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("c.toml");
    std::fs::write(
        &other,
        format!(
            "[server]\ndata_dir = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["plugins", "reload", "--config"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wasmtp.pid"),
        "{out:?}"
    );
}

#[test]
fn the_compile_cache_is_used_and_refilled() {
    // Without the init snapshot, so the one artifact is named by the component's digest.
    let mut s = Server::start(&plugin_toml(
        "spam-score",
        "spam_score.wasm",
        "hooks = [\"data\"]\nsnapshot = false",
    ));
    let cache = s.data().join("plugin-cache");
    let artifacts = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    // A miss compiled the plugin and stored the artifact, named by digest.
    let first = artifacts();
    assert_eq!(first.len(), 1, "{first:?}");
    let wasm = crate::support::plugin_wasm("spam_score.wasm");
    let digest = Command::new(BIN)
        .args(["plugins", "digest", &wasm])
        .output()
        .unwrap();
    let digest = String::from_utf8_lossy(&digest.stdout)[..64].to_string();
    let name = first[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&digest), "{name}");
    assert!(s.signal_and_wait("TERM").success());
    // A hit: the artifact is loaded. Spoiled (as this user, so trusted),
    // loading it fails and the plugin is compiled and stored again.
    std::fs::write(&first[0], b"spoiled").unwrap();
    s.start_again();
    s.wait_for_log("unusable compiled plugin in cache; recompiling", 1);
    assert_eq!(artifacts(), first);
    assert_ne!(std::fs::read(&first[0]).unwrap(), b"spoiled");
    queue_id(&send(
        &s,
        "a@example.test",
        "u@example.test",
        "Subject: x\r\n\r\nx\r\n",
    ));
    assert!(s.signal_and_wait("TERM").success());
    // A clean hit: no warning, no rewrite.
    let before = std::fs::metadata(&first[0]).unwrap().modified().unwrap();
    s.start_again();
    queue_id(&send(
        &s,
        "a@example.test",
        "v@example.test",
        "Subject: x\r\n\r\nx\r\n",
    ));
    assert_eq!(
        std::fs::metadata(&first[0]).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(s.log_lines("unusable compiled plugin").len(), 1);
}
