//! What docs/plugins.md promises about each hook, verdict, modification and
//! capability, shown through SMTP with the probe fixture
//! (`plugins/fixtures/probe`), which answers what its config scripts and
//! reports what it saw in its reply text or an `X-Probe` header.

use std::time::{Duration, Instant};

use crate::support::{
    Client, Server, check_plugin_config, field, in_transaction, plugin_toml, probe_toml, queue_id,
};

/// The message bodies in `mailbox` as text.
fn texts(s: &Server, mailbox: &str, n: usize) -> Vec<String> {
    s.wait_for_mail(mailbox, n)
        .into_iter()
        .map(|m| String::from_utf8(m).unwrap())
        .collect()
}

#[test]
fn verdicts_without_a_reply_get_the_documented_defaults() {
    // At rcpt, the recipient's local part is the verdict.
    let s = Server::start(&probe_toml(
        "p",
        &["rcpt"],
        "[plugin.config]\nrcpt = [\"@\"]",
    ));
    let mut c = in_transaction(&s);
    let r = c.cmd("RCPT TO:<reject@example.test>", 550);
    assert!(r.text().starts_with("5.7.1 "), "{r:?}");
    let r = c.cmd("RCPT TO:<tempfail@example.test>", 451);
    assert!(r.text().starts_with("4.7.1 "), "{r:?}");
    let r = c.cmd("RCPT TO:<disconnect@example.test>", 421);
    assert!(r.text().starts_with("4.7.0 "), "{r:?}");
    assert!(c.closed());
    // At connect: reject is 554 5.7.1, tempfail 421 (with the tempfail
    // status) and disconnect 421 4.7.0; each closes.
    for (verdict, code, status) in [
        ("reject", 554, "5.7.1 "),
        ("tempfail", 421, "4.7.1 "),
        ("disconnect", 421, "4.7.0 "),
    ] {
        let s = Server::start(&probe_toml(
            "p",
            &["connect"],
            &format!("[plugin.config]\nconnect = [\"{verdict}\"]"),
        ));
        let mut c = Client::connect(s.addr);
        let r = c.expect(code);
        assert!(r.text().starts_with(status), "{verdict}: {r:?}");
        assert!(c.closed(), "{verdict}");
    }
}

#[test]
fn ehlo_verdicts() {
    // The EHLO name's first label is the verdict.
    let s = Server::start(&probe_toml(
        "p",
        &["ehlo"],
        "[plugin.config]\nehlo = [\"@\"]",
    ));
    let mut c = Client::greeted(s.addr);
    let r = c.cmd("EHLO reject.test", 550);
    assert!(r.text().starts_with("5.7.1 "), "{r:?}");
    // The client may try again.
    let r = c.cmd("EHLO tempfail.test", 451);
    assert!(r.text().starts_with("4.7.1 "), "{r:?}");
    let r = c.cmd("EHLO accept.test", 250);
    assert!(
        r.text().contains("SIZE"),
        "accept keeps the extensions: {r:?}"
    );
    c.cmd("MAIL FROM:<a@example.test>", 250);
    let r = c.cmd("EHLO disconnect.test", 421);
    assert!(r.text().starts_with("4.7.0 "), "{r:?}");
    assert!(c.closed());
}

#[test]
fn connect_runs_once_and_ehlo_again_after_starttls() {
    let s = Server::start(&probe_toml(
        "p",
        &["connect", "ehlo", "mail-from"],
        "[plugin.config]\nconnect = [\"kv-incr:connects\"]\nehlo = [\"kv-incr:ehlos\"]\nmail-from = [\"kv-counter:connects\", \"kv-counter:ehlos\", \"tempfail\"]",
    ));
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("STARTTLS", 220);
    c.start_tls("mx.test");
    c.cmd("EHLO client.test", 250);
    let r = c.cmd("MAIL FROM:<a@example.test>", 451);
    assert_eq!(r.text(), "4.7.1 connects=1 ehlos=2");
}

#[test]
fn discard_at_rcpt_drops_only_that_recipient() {
    let s = Server::start(&probe_toml(
        "p",
        &["rcpt"],
        "[plugin.config]\nrcpt = [\"@\"]",
    ));
    let mut c = in_transaction(&s);
    c.cmd("RCPT TO:<discard@example.test>", 250);
    c.cmd("RCPT TO:<continue@example.test>", 250);
    c.cmd("DATA", 354);
    c.raw(b"Subject: two\r\n\r\nx\r\n.\r\n");
    queue_id(&c.expect(250));
    texts(&s, "continue", 1);
    s.marker();
    assert!(s.mail("discard").is_empty());
}

#[test]
fn discard_and_quarantine_at_mail_from_and_data() {
    // The sender's (mail-from) or first recipient's (data) local part is the verdict.
    let s = Server::start(&probe_toml(
        "p",
        &["mail-from", "data"],
        "[plugin.config]\nmail-from = [\"@\"]\ndata = [\"@\"]",
    ));
    let send = |from: &str, to: &str| {
        let mut c = Client::greeted(s.addr);
        c.cmd("EHLO client.test", 250);
        c.cmd(&format!("MAIL FROM:<{from}>"), 250);
        c.cmd(&format!("RCPT TO:<{to}>"), 250);
        c.cmd("DATA", 354);
        c.raw(b"Subject: x\r\n\r\nx\r\n.\r\n");
        c.expect(250).text()
    };
    // Discarded at data: 250, and the client cannot tell.
    let r = send("continue@example.test", "discard@example.test");
    assert!(r.starts_with("2.0.0 "), "{r}");
    // Discarded at mail-from: the whole message is.
    send("discard@example.test", "continue.one@example.test");
    // Quarantined at mail-from: into the quarantine mailbox.
    send("quarantine@example.test", "continue.two@example.test");
    let q = texts(&s, "quarantine", 1).remove(0);
    assert!(
        q.contains("X-Wasmtp-Original-Recipients: continue.two@example.test"),
        "{q}"
    );
    assert!(q.contains("X-Wasmtp-Quarantine"), "{q}");
    s.marker();
    for mb in ["discard", "continue.one", "continue.two"] {
        assert!(s.mail(mb).is_empty(), "{mb}");
    }
    assert_eq!(s.events("message discarded by a plugin").len(), 2);
}

#[test]
fn set_sender_and_add_recipient() {
    let s = Server::start(&probe_toml(
        "p",
        &["data"],
        "[plugin.config]\ndata = [\"set-sender:new@example.test\", \"add-rcpt:extra@example.test\", \"add-rcpt:far@elsewhere.test\"]",
    ));
    let mut c = in_transaction(&s);
    c.cmd("RCPT TO:<u@example.test>", 250);
    c.cmd("DATA", 354);
    c.raw(b"Subject: mods\r\n\r\nx\r\n.\r\n");
    queue_id(&c.expect(250));
    for mb in ["u", "extra"] {
        let m = texts(&s, mb, 1).remove(0);
        assert!(m.starts_with("Return-Path: <new@example.test>"), "{m}");
    }
    // A recipient that is not local is ignored, and the log says so.
    let w = s.wait_for_log("not local", 1).remove(0);
    assert!(w.contains("far@elsewhere.test"), "{w}");
    let accepted = s.wait_for_events("message accepted", 1);
    assert_eq!(field(&accepted[0], "nrcpt"), "2");
}

#[test]
fn deliver_routes_and_their_order_across_plugins() {
    let cfg = format!(
        "{}{}",
        probe_toml(
            "first",
            &["deliver"],
            "[plugin.config]\ndeliver = [\"a@example.test=default\", \"b@example.test=local:bee\", \"c@example.test=discard\"]",
        ),
        probe_toml(
            "second",
            &["deliver"],
            "[plugin.config]\ndeliver = [\"*=local:second\"]",
        )
    );
    let s = Server::start(&cfg);
    let mut c = in_transaction(&s);
    for r in ["a", "b", "c", "d"] {
        c.cmd(&format!("RCPT TO:<{r}@example.test>"), 250);
    }
    c.cmd("DATA", 354);
    c.raw(b"Subject: routes\r\n\r\nx\r\n.\r\n");
    queue_id(&c.expect(250));
    // b: the first plugin with a non-default route decides.
    let bee = texts(&s, "bee", 1).remove(0);
    assert!(bee.contains("Delivered-To: b@example.test"), "{bee}");
    // a (default at the first plugin) and d go where the second one says.
    let second = texts(&s, "second", 1).remove(0);
    assert!(second.contains("Delivered-To: a@example.test"), "{second}");
    // c is discarded: nobody gets it.
    let w = s.wait_for_log("recipient discarded by the deliver hook", 1);
    assert!(w[0].contains("c@example.test"), "{}", w[0]);
    for mb in ["a", "b", "c", "d"] {
        assert!(s.mail(mb).is_empty(), "{mb}");
    }
    let delivered: Vec<String> = s
        .wait_for_events("delivered", 3)
        .iter()
        .map(|v| format!("{}>{}", field(v, "rcpt"), field(v, "mailbox")))
        .collect();
    assert_eq!(
        delivered,
        [
            "a@example.test>second",
            "b@example.test>bee",
            "d@example.test>second"
        ]
    );
}

#[test]
fn deferred_and_bounced_reach_plugins_and_max_age_expires() {
    // Routed to a relay, the copy can only be deferred, until max_age.
    let s = Server::start(&format!(
        "[queue]\nretry_intervals = [\"1s\"]\nmax_age = \"1s\"\n\n{}",
        probe_toml(
            "p",
            &["deliver", "delivered", "deferred", "bounced"],
            "[plugin.config]\nnotify = true\ndeliver = [\"r@example.test=relay:relay.invalid\"]",
        )
    ));
    let mut c = in_transaction(&s);
    c.cmd("RCPT TO:<r@example.test>", 250);
    c.cmd("DATA", 354);
    let sent = Instant::now();
    c.raw(b"Subject: far\r\n\r\nx\r\n.\r\n");
    let id = queue_id(&c.expect(250));
    let deferred = s.wait_for_log("probe deferred", 1).remove(0);
    assert!(
        deferred.contains(&format!("probe deferred {id} r@example.test attempts=1")),
        "{deferred}"
    );
    let bounced = s.wait_for_log("probe bounced", 1).remove(0);
    assert!(
        bounced.contains(&format!("probe bounced {id} r@example.test")),
        "{bounced}"
    );
    // Not before it was older than max_age.
    assert!(sent.elapsed() > Duration::from_secs(1));
    // The message itself was never delivered (the DSN about it, to the
    // local sender, may be by now: that is its own queue id).
    assert_eq!(s.log_lines(&format!("probe delivered {id}")).len(), 0);
}

#[test]
fn notes_pass_from_one_plugin_to_the_next() {
    let cfg = format!(
        "{}{}",
        probe_toml(
            "writer",
            &["ehlo", "mail-from"],
            "[plugin.config]\nehlo = [\"note-set:s=session\"]\nmail-from = [\"note-set:t=transaction\"]",
        ),
        probe_toml(
            "reader",
            &["rcpt"],
            "[plugin.config]\nrcpt = [\"note-get:s\", \"note-get:t\", \"tempfail\"]",
        )
    );
    let s = Server::start(&cfg);
    let mut c = in_transaction(&s);
    let r = c.cmd("RCPT TO:<u@example.test>", 451);
    assert_eq!(r.text(), "4.7.1 s=session t=transaction");
}

#[test]
fn kv_incr_ttl_and_clock_on_the_real_host() {
    let s = Server::start(&probe_toml(
        "p",
        &["mail-from", "rcpt"],
        "[plugin.config]\nmail-from = [\"kv-set:t=x:1\"]\nrcpt = [\"kv-incr:n\", \"kv-get:t\", \"clock\", \"tempfail\"]",
    ));
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let set = Instant::now();
    c.cmd("MAIL FROM:<a@example.test>", 250);
    let before = now_ms();
    let r = c.cmd("RCPT TO:<u@example.test>", 451).text();
    let after = now_ms();
    let (head, clock) = r.rsplit_once(" clock=").unwrap();
    assert_eq!(head, "4.7.1 n=1 t=x");
    let clock: u128 = clock.parse().unwrap();
    assert!(
        before <= clock && clock <= after,
        "{before} {clock} {after}"
    );
    // The counter goes on; the entry expires after its TTL, not before.
    let mut n = 1;
    loop {
        n += 1;
        let r = c.cmd("RCPT TO:<u@example.test>", 451).text();
        if r.contains("t=none") {
            assert!(set.elapsed() >= Duration::from_secs(1), "{r}");
            assert!(r.starts_with(&format!("4.7.1 n={n} ")), "{r}");
            break;
        }
        assert!(r.starts_with(&format!("4.7.1 n={n} t=x ")), "{r}");
        assert!(set.elapsed() < Duration::from_secs(20), "never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    // kv outlives the session.
    let mut c = in_transaction(&s);
    let r = c.cmd("RCPT TO:<u@example.test>", 451).text();
    assert!(r.starts_with(&format!("4.7.1 n={} ", n + 1)), "{r}");
}

#[test]
fn message_size_body_cap_and_received_first() {
    let s = Server::start(&probe_toml(
        "p",
        &["data"],
        "[plugin.config]\ndata = [\"size\", \"body\", \"first-header\"]",
    ));
    let send = |to: &str, body_len: usize| {
        let mut c = in_transaction(&s);
        c.cmd(&format!("RCPT TO:<{to}>"), 250);
        c.cmd("DATA", 354);
        let mut msg = b"Subject: big\r\n\r\n".to_vec();
        let line = [b'x'; 998];
        while msg.len() < body_len {
            msg.extend_from_slice(&line);
            msg.extend_from_slice(b"\r\n");
        }
        c.raw(&msg).raw(b".\r\n");
        queue_id(&c.expect(250));
        let m = texts(&s, to.split('@').next().unwrap(), 1).remove(0);
        let probe = m
            .lines()
            .find_map(|l| l.strip_prefix("X-Probe: "))
            .unwrap()
            .to_string();
        (probe, msg.len())
    };
    // A small message: one body() call returns all of it.
    let (probe, _) = send("small@example.test", 100);
    let size = probe
        .split(' ')
        .next()
        .unwrap()
        .strip_prefix("size=")
        .unwrap();
    assert_eq!(probe, format!("size={size} body={size} first=Received"));
    // A 3 MiB one: size() says so, one body() call returns at most 1 MiB.
    let (probe, sent) = send("big@example.test", 3 << 20);
    let size: usize = probe
        .split(' ')
        .next()
        .unwrap()
        .strip_prefix("size=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > sent && size < sent + 4096, "{size} {sent}");
    assert!(probe.ends_with(" body=1048576 first=Received"), "{probe}");
}

#[test]
fn a_reload_whose_init_refuses_keeps_the_running_set() {
    // The running set rejects every sender (the probe says reject at mail-from).
    let s = Server::start(&probe_toml(
        "picky",
        &["mail-from"],
        "[plugin.config]\nmail-from = [\"reject\"]",
    ));
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<a@example.test>", 550);
    // A new config whose init refuses: the reload fails, naming the plugin
    // and its message, and the old set keeps serving.
    let cfg = s.config_file();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("mail-from = [\"reject\"]", "init = \"refuse\"");
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(crate::support::BIN)
        .args(["plugins", "reload", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let failed = s.wait_for_log("plugin reload failed", 1).remove(0);
    assert!(
        failed.contains("picky") && failed.contains("fixture-probe refuses this config"),
        "{failed}"
    );
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<a@example.test>", 550);
    assert!(s.log_lines("plugin set swapped in").is_empty());
}

#[test]
fn init_that_refuses_or_traps_refuses_the_plugin_at_load() {
    let (ok, err) = check_plugin_config(&probe_toml(
        "picky",
        &["rcpt"],
        "[plugin.config]\ninit = \"refuse\"",
    ));
    assert!(!ok, "{err}");
    assert!(
        err.contains("picky") && err.contains("fixture-probe refuses this config"),
        "{err}"
    );
    let (ok, err) = check_plugin_config(&plugin_toml(
        "trap-init",
        "fixture_trap.wasm",
        "[plugin.config]\nin_init = true\nmode = \"unreachable\"",
    ));
    assert!(!ok, "{err}");
    assert!(err.contains("trap-init"), "{err}");
    // The same plugins with a config they accept load.
    let (ok, err) = check_plugin_config(&probe_toml("picky", &["rcpt"], ""));
    assert!(ok, "{err}");
}

#[test]
fn no_guest_state_survives_into_the_next_message() {
    // The probe counts its calls in its own memory: within a transaction the
    // instance is kept, after the end of DATA (or EHLO) a fresh one starts.
    let s = Server::start(&probe_toml(
        "p",
        &["rcpt", "data"],
        "[plugin.config]\nrcpt = [\"count\"]\ndata = [\"count\"]",
    ));
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    for (i, mailbox) in ["one", "two"].iter().enumerate() {
        if i == 1 {
            c.cmd("EHLO client.test", 250);
        }
        let r = c.send_message(
            "a@example.test",
            &[&format!("{mailbox}@example.test")],
            b"Subject: count\r\n\r\nx\r\n",
        );
        queue_id(&r);
        queue_id(&c.send_message(
            "a@example.test",
            &[&format!("{mailbox}.again@example.test")],
            b"Subject: count\r\n\r\nx\r\n",
        ));
    }
    for mailbox in ["one", "one.again", "two", "two.again"] {
        let m = texts(&s, mailbox, 1).remove(0);
        let probes: Vec<&str> = m.lines().filter(|l| l.starts_with("X-Probe:")).collect();
        assert_eq!(
            probes,
            ["X-Probe: calls=1", "X-Probe: calls=2"],
            "{mailbox}: {m}"
        );
    }
}

#[test]
fn set_sender_to_the_null_sender() {
    let s = Server::start(&probe_toml(
        "p",
        &["data"],
        "[plugin.config]\ndata = [\"set-sender:\"]",
    ));
    let mut c = in_transaction(&s);
    c.cmd("RCPT TO:<u@example.test>", 250);
    c.cmd("DATA", 354);
    c.raw(b"Subject: null\r\n\r\nx\r\n.\r\n");
    queue_id(&c.expect(250));
    let m = texts(&s, "u", 1).remove(0);
    assert!(m.starts_with("Return-Path: <>"), "{m}");
}
