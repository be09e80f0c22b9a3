//! The plugin host's instance lifecycle (pool, on-demand fallback, warm
//! reuse) and its compile cache, seen through SMTP, the log and the cache
//! directory. The probe fixture counts its calls in guest memory and
//! reports the count, so a transcript shows which instance answered.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::support::*;

/// `RCPT TO:<count.tempfail@...>`: the probe reports `calls=N` in a 451.
fn count(c: &mut Client) -> String {
    c.cmd("RCPT TO:<count.tempfail@example.test>", 451).text()
}

/// One transaction: MAIL, one counted RCPT, RSET; the count it saw.
fn transaction(c: &mut Client) -> String {
    c.cmd("MAIL FROM:<a@example.test>", 250);
    let n = count(c);
    c.cmd("RSET", 250);
    n
}

fn greeted(s: &Server) -> Client {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c
}

#[test]
fn without_reuse_no_guest_state_reaches_the_next_transaction() {
    let s = Server::start(&probe_toml(
        "probe",
        &["rcpt"],
        "on_error = \"reject\"\n[plugin.config]\nrcpt = [\"@\"]",
    ));
    let mut clients = [greeted(&s), greeted(&s)];
    for i in [0, 1, 0, 1] {
        assert_eq!(transaction(&mut clients[i]), "4.7.1 calls=1");
    }
    let [mut a, _] = clients;
    // Within one transaction the instance is kept.
    a.cmd("MAIL FROM:<a@example.test>", 250);
    assert_eq!(count(&mut a), "4.7.1 calls=1");
    assert_eq!(count(&mut a), "4.7.1 calls=2");
}

#[test]
fn with_reuse_guest_state_survives_up_to_n_transactions_and_not_a_trap() {
    let s = Server::start(&probe_toml(
        "probe",
        &["rcpt"],
        "on_error = \"reject\"\nreuse = 3\n[plugin.config]\nrcpt = [\"@\"]",
    ));
    let (mut a, mut b) = (greeted(&s), greeted(&s));
    // One warm instance serves three transactions, across sessions: that is
    // what `reuse` gives up.
    assert_eq!(transaction(&mut a), "4.7.1 calls=1");
    assert_eq!(transaction(&mut b), "4.7.1 calls=2");
    assert_eq!(transaction(&mut a), "4.7.1 calls=3");
    // After three it is recycled: a fresh instance.
    assert_eq!(transaction(&mut b), "4.7.1 calls=1");
    assert_eq!(transaction(&mut a), "4.7.1 calls=2");
    // A trap drops the instance at once, warm or not.
    b.cmd("MAIL FROM:<a@example.test>", 250);
    let r = b.cmd("RCPT TO:<trap@example.test>", 550);
    assert!(r.text().starts_with("5.7.0"), "{r:?}");
    assert_eq!(count(&mut b), "4.7.1 calls=1");
    b.cmd("RSET", 250);
    assert_eq!(transaction(&mut a), "4.7.1 calls=2");
    s.wait_for_log("plugin trapped", 1);
}

/// A copy of the probe (which keeps a call count in guest memory) whose
/// top-level manifest says it is stateless: a manifest can be wrong, and
/// this one is, so the count shows which instance answered.
fn stateless_probe(dir: &Path) -> std::path::PathBuf {
    let wasm = dir.join("stateless-probe.wasm");
    std::fs::copy(plugin_wasm("fixture_probe.wasm"), &wasm).unwrap();
    let manifest = dir.join("m.json");
    std::fs::write(
        &manifest,
        r#"{"name": "probe", "contract": "wasmtp:plugin@0.2.0", "grants": ["kv", "clock"], "stateless": true}"#,
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["plugin", "embed-manifest"])
        .arg(&wasm)
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wasm
}

#[test]
fn a_stateless_manifest_makes_instances_warm_unless_the_config_says_no() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = stateless_probe(dir.path());
    let config = |plugin_keys: &str, limits: &str| {
        format!(
            "{limits}[[plugin]]\nname = \"probe\"\npath = \"{}\"\nhooks = [\"rcpt\"]\n\
             grants = [\"kv\", \"clock\"]\non_error = \"reject\"\n{plugin_keys}\
             [plugin.config]\nrcpt = [\"@\"]\n",
            wasm.display()
        )
    };
    // On the manifest's word, one warm instance serves the next
    // transactions, of any session.
    let s = Server::start(&config("", ""));
    let loaded = s.wait_for_log("plugin loaded", 1).remove(0);
    assert!(loaded.contains("\"reuse\":1000"), "{loaded}");
    let (mut a, mut b) = (greeted(&s), greeted(&s));
    assert_eq!(transaction(&mut a), "4.7.1 calls=1");
    assert_eq!(transaction(&mut b), "4.7.1 calls=2");
    assert_eq!(transaction(&mut a), "4.7.1 calls=3");
    drop(s);
    // The plugin's own `reuse` wins, and `stateless_reuse = 0` takes the
    // manifests' word away: a fresh instance per transaction again.
    for (plugin_keys, limits) in [
        ("reuse = 0\n", ""),
        ("", "[plugin_limits]\nstateless_reuse = 0\n\n"),
    ] {
        let s = Server::start(&config(plugin_keys, limits));
        let loaded = s.wait_for_log("plugin loaded", 1).remove(0);
        assert!(loaded.contains("\"reuse\":0"), "{loaded}");
        let mut clients = [greeted(&s), greeted(&s)];
        for i in [0, 1, 0] {
            let n = transaction(&mut clients[i]);
            assert_eq!(n, "4.7.1 calls=1", "{plugin_keys}{limits}");
        }
    }
}

#[test]
fn a_full_pool_allocates_on_demand_instead_of_failing() {
    // A pool of one instance: the second live instance does not fit.
    let s = Server::start(&format!(
        "[plugin_limits]\npool_instances = 1\n\n{}",
        probe_toml(
            "probe",
            &["rcpt"],
            "on_error = \"reject\"\n[plugin.config]\nrcpt = [\"@\"]"
        )
    ));
    let loaded = s.wait_for_log("plugin loaded", 1).remove(0);
    assert!(loaded.contains("\"pooled\":true"), "{loaded}");
    let (mut a, mut b) = (greeted(&s), greeted(&s));
    a.cmd("MAIL FROM:<a@example.test>", 250);
    assert_eq!(count(&mut a), "4.7.1 calls=1");
    // `a` holds the pool's only slot; `b` is still answered by the plugin.
    b.cmd("MAIL FROM:<a@example.test>", 250);
    assert_eq!(count(&mut b), "4.7.1 calls=1");
    assert_eq!(count(&mut b), "4.7.1 calls=2");
    let hit = s.wait_for_log("limit reached", 1).remove(0);
    assert!(
        hit.contains("plugin_limits.pool_instances") && hit.contains("probe"),
        "{hit}"
    );
    // Once `a` gives its slot back, the pool serves again.
    a.cmd("RSET", 250);
    b.cmd("RSET", 250);
    assert_eq!(transaction(&mut b), "4.7.1 calls=1");
    assert_eq!(s.log_lines("plugin_limits.pool_instances").len(), 1);
}

/// The compiled artifacts in `dir`: (file name, inode).
fn artifacts(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn compile_cache_hits_misses_and_misses_when_the_engine_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    // Without the init snapshot first: one artifact, named by the component's digest.
    let write_with = |extra: &str, plugin: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[server]\ndata_dir = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n{extra}\n{}",
                dir.path().join("data").display(),
                probe_toml("probe", &["rcpt"], plugin)
            ),
        )
        .unwrap();
    };
    let write = |extra: &str| write_with(extra, "snapshot = false");
    let cache = dir.path().join("data/plugin-cache");
    let check = || {
        let out = check_config_file(&cfg);
        assert!(out.status.success(), "{out:?}");
    };
    let digest = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasmtp"))
            .args(["plugin", "digest", &plugin_wasm("fixture_probe.wasm")])
            .output()
            .unwrap();
        let out = String::from_utf8(out.stdout).unwrap();
        out.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(digest.len(), 64, "{digest}");

    // Miss: compiled and written, named by the component's digest.
    write("");
    check();
    let first = artifacts(&cache);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].0.starts_with(&format!("{digest}-")), "{first:?}");
    // Hit: the same file is read, not written again (a write replaces it
    // with a new file through a rename, so its inode would change).
    check();
    assert_eq!(artifacts(&cache), first);
    // A pool changes the allocator, not the code: still a hit.
    write("[plugin_limits]\npool_instances = 0");
    check();
    assert_eq!(artifacts(&cache), first);
    // Another memory reservation changes the compiled code: a miss, a file
    // with another engine hash, and the old artifact pruned.
    write("[plugin_limits]\nmemory_reservation = \"1GiB\"");
    check();
    let second = artifacts(&cache);
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].0.starts_with(&format!("{digest}-")), "{second:?}");
    assert_ne!(second[0].0, first[0].0);
    // With the snapshot: the instrumented component and the one rewritten after `init`, each
    // under its own digest; the snapshot is the same bytes every time, so a second load hits.
    write_with("", "");
    check();
    let snap = artifacts(&cache);
    assert_eq!(snap.len(), 2, "{snap:?}");
    assert!(snap.iter().all(|a| !a.0.starts_with(&digest)), "{snap:?}");
    check();
    assert_eq!(artifacts(&cache), snap);

    // The server says which it was.
    let s = Server::start(&probe_toml("probe", &["rcpt"], ""));
    let miss = s.wait_for_log("plugin loaded", 1).remove(0);
    assert!(miss.contains("\"cache\":\"miss\""), "{miss}");
    let mut s = s;
    s.signal_and_wait("TERM");
    s.start_again();
    let hit = s.wait_for_log("plugin loaded", 2).remove(1);
    assert!(hit.contains("\"cache\":\"hit\""), "{hit}");
}

#[test]
fn a_reload_that_takes_away_a_used_grant_is_refused_and_the_old_set_serves() {
    // The probe imports kv: its code can call it. With the grant removed the
    // new set is refused at load (naming the import), so no instance ever
    // runs with a capability its config does not grant, and the running set
    // keeps its grant.
    let s = Server::start(&probe_toml(
        "probe",
        &["rcpt"],
        "[plugin.config]\nrcpt = [\"kv-incr:n\", \"tempfail\"]",
    ));
    let mut c = in_transaction(&s);
    assert_eq!(c.cmd("RCPT TO:<x@example.test>", 451).text(), "4.7.1 n=1");
    s.reload_with("grants = [\"kv\", \"clock\"]", "grants = [\"clock\"]");
    let failed = s.wait_for_log("plugin reload failed", 1).remove(0);
    assert!(
        failed.contains("probe") && failed.contains(r#"needs the \"kv\" grant"#),
        "{failed}"
    );
    let mut d = in_transaction(&s);
    assert_eq!(d.cmd("RCPT TO:<x@example.test>", 451).text(), "4.7.1 n=2");
}

#[test]
fn init_runs_once_at_load_and_fresh_instances_start_from_its_state() {
    // The probe logs a line from `init`. With the init snapshot (the default) `init` runs once,
    // at load, and every fresh instance starts from the state it left (a call count of 0, so
    // no transaction sees another's); with `snapshot = false` it runs at load (the config
    // check) and once in every instance.
    for (key, loaded, inits) in [("", "yes", 1), ("snapshot = false\n", "off", 4)] {
        let s = Server::start(&probe_toml(
            "probe",
            &["rcpt"],
            &format!("on_error = \"reject\"\n{key}[plugin.config]\ninit = \"log\"\nrcpt = [\"@\"]"),
        ));
        let mut c = greeted(&s);
        for _ in 0..3 {
            assert_eq!(transaction(&mut c), "4.7.1 calls=1", "{key}");
        }
        let line = s.wait_for_log("plugin loaded", 1).remove(0);
        assert!(
            line.contains(&format!("\"snapshot\":\"{loaded}\"")),
            "{line}"
        );
        s.wait_for_log("fixture-probe init ran", inits);
        assert_eq!(s.log_lines("fixture-probe init ran").len(), inits, "{key}");
    }
}

#[test]
fn an_init_that_uses_a_capability_runs_in_every_instance() {
    // A kv write in `init` would be frozen into the snapshot: the host refuses it there and the
    // plugin runs `init` per instance. The config check at load counts once, then each
    // transaction's instance once more.
    let s = Server::start(&probe_toml(
        "probe",
        &["rcpt"],
        "[plugin.config]\ninit = \"kv-incr:inits\"\nrcpt = [\"kv-counter:inits\", \"tempfail\"]",
    ));
    let mut c = greeted(&s);
    assert_eq!(transaction(&mut c), "4.7.1 inits=2");
    assert_eq!(transaction(&mut c), "4.7.1 inits=3");
    let why = s.wait_for_log("no init snapshot", 1).remove(0);
    assert!(why.contains("it called kv"), "{why}");
    let line = s.wait_for_log("plugin loaded", 1).remove(0);
    assert!(line.contains("\"snapshot\":\"no\""), "{line}");
}

/// `wasmtp serve` on the test config plus `extra` in `dir`, which must fail to start: its
/// stderr (JSON log lines, then the error).
fn serve_fails(dir: &Path, extra: &str) -> String {
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, config_text(dir, extra)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_server_compiles_plugins_in_a_child_process_and_reports_what_it_refused() {
    // A first start compiles apart, once per component (the snapshot's two), and says so; the
    // child is another process than the server.
    let mut s = Server::start(&probe_toml(
        "probe",
        &["rcpt"],
        "on_error = \"reject\"\n[plugin.config]\nrcpt = [\"@\"]",
    ));
    let compiled = s.wait_for_log("plugin compiled in a child process", 2);
    s.wait_for_log("plugin loaded", 1);
    for line in &compiled {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(field(&v, "plugin"), "probe", "{line}");
        let child = field(&v, "child");
        assert!(!child.is_empty() && child != s.pid().to_string(), "{line}");
        assert!(field(&v, "bytes").parse::<u64>().unwrap() > 0, "{line}");
    }
    // It answers with what the child compiled.
    let mut c = greeted(&s);
    assert_eq!(transaction(&mut c), "4.7.1 calls=1");
    // A cache hit compiles nothing.
    s.signal_and_wait("TERM");
    s.start_again();
    s.wait_for_log("plugin loaded", 2);
    assert_eq!(
        s.log_lines("plugin compiled in a child process").len(),
        2,
        "{}",
        s.dump_logs()
    );

    // The hidden subcommand on its own: a component in, an artifact out (an ELF object); a core
    // module, which is not a component, is refused with the compiler's reason and status 1.
    let run = |input: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(BIN)
            .args(["compile-plugin", "--memory-reservation", "4294967296"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&std::fs::read(plugin_wasm("fixture_probe.wasm")).unwrap());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(&out.stdout[..4], b"\x7fELF");
    let core_module = b"\0asm\x01\0\0\0";
    let out = run(core_module);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("component"), "{err}");

    // The server refuses to start on it, naming the plugin, the file and the compiler's reason.
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("core.wasm");
    std::fs::write(&module, core_module).unwrap();
    let err = serve_fails(
        dir.path(),
        &format!(
            "[[plugin]]\nname = \"core\"\npath = \"{}\"\nhooks = [\"rcpt\"]\n",
            module.display()
        ),
    );
    assert!(
        err.contains("plugin core") && err.contains("core.wasm") && err.contains("component"),
        "{err}"
    );
}

#[test]
fn the_compiler_child_is_the_running_binary_even_after_its_file_is_gone() {
    // An upgrade replaces the executable under a running server. A reload compiles with the
    // running binary's compiler (through /proc/self/exe), which matches its engine, not with
    // whatever now sits at the path (here: nothing, so the path could not start a child at all).
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("wasmtp");
    if std::fs::hard_link(BIN, &exe).is_err() {
        std::fs::copy(BIN, &exe).unwrap();
    }
    let s = Server::start_from(
        &exe,
        &probe_toml(
            "probe",
            &["rcpt"],
            "snapshot = false\non_error = \"reject\"\n[plugin.config]\nrcpt = [\"@\"]",
        ),
    );
    s.wait_for_log("plugin compiled in a child process", 1);
    std::fs::remove_file(&exe).unwrap();
    // With the snapshot on, the set needs two components compiled that the cache does not have.
    s.reload_with("snapshot = false\n", "");
    s.wait_for_log("plugin set swapped in", 1);
    assert_eq!(
        s.log_lines("plugin compiled in a child process").len(),
        3,
        "{}",
        s.dump_logs()
    );
    assert!(
        s.log_lines("compiling in the server").is_empty(),
        "{}",
        s.dump_logs()
    );
    let mut c = greeted(&s);
    assert_eq!(transaction(&mut c), "4.7.1 calls=1");
}

#[test]
fn a_compile_past_plugin_limits_compile_timeout_is_stopped_and_the_plugin_does_not_load() {
    // No component compiles (a process started, a component read and compiled) in 1 ms.
    let dir = tempfile::tempdir().unwrap();
    let err = serve_fails(
        dir.path(),
        &format!(
            "[plugin_limits]\ncompile_timeout = \"1ms\"\n{}",
            probe_toml("probe", &["rcpt"], "snapshot = false")
        ),
    );
    assert!(
        err.contains("plugin probe")
            && err.contains("compiling took longer than 1ms (plugin_limits.compile_timeout)"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("limit reached") && l.contains("plugin_limits.compile_timeout")),
        "{err}"
    );
    // check-config compiles the same way, under the same deadline.
    let out = check_config_file(&dir.path().join("c.toml"));
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plugin_limits.compile_timeout"), "{err}");
    // Nothing was cached.
    let cache = dir.path().join("data/plugin-cache");
    assert!(!cache.exists() || artifacts(&cache).is_empty());
}

/// The value of the sample `series` (name and labels, as Prometheus prints
/// them) on the server's `/metrics`, if it is there.
pub(crate) fn sample(s: &Server, series: &str) -> Option<f64> {
    sample_in(&scrape(s), series)
}

/// The server's `/metrics` page, for several samples of one moment.
pub(crate) fn scrape(s: &Server) -> String {
    let (code, body) = crate::ops::http(s.admin.as_ref().unwrap(), "GET", "/metrics", None);
    assert_eq!(code, 200);
    body
}

/// The value of the sample `series` in a scraped `/metrics` page.
pub(crate) fn sample_in(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn standby_instances_are_made_ahead_and_each_serves_one_transaction() {
    let s = Server::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        probe_toml(
            "probe",
            &["rcpt"],
            "on_error = \"reject\"\nstandby = 2\n[plugin.config]\nrcpt = [\"@\"]"
        )
    ));
    let loaded = s.wait_for_log("plugin loaded", 1).remove(0);
    assert!(loaded.contains("\"standby\":2"), "{loaded}");
    let made = "wasmtp_plugin_standby{plugin=\"probe\"}";
    let taken = "wasmtp_plugin_instances_total{plugin=\"probe\",source=\"standby\"}";
    let made_inline = "wasmtp_plugin_instances_total{plugin=\"probe\",source=\"pool\"}";
    let full = || {
        crate::outbound::wait_until(&s, "two standby instances", || {
            sample(&s, made) == Some(2.0)
        })
    };
    // Made at load, before any client asked.
    full();
    assert_eq!(sample(&s, taken), None);
    let mut clients = [greeted(&s), greeted(&s)];
    for (n, i) in [0, 1, 0, 1].into_iter().enumerate() {
        // Each transaction gets an instance nobody called before: the
        // probe's count starts again.
        assert_eq!(transaction(&mut clients[i]), "4.7.1 calls=1");
        assert_eq!(sample(&s, taken), Some(n as f64 + 1.0));
        // The thread tops the standby up again.
        full();
    }
    assert_eq!(sample(&s, made_inline), None, "no transaction made its own");
    // Within a transaction the one instance stays.
    let [mut a, _] = clients;
    a.cmd("MAIL FROM:<a@example.test>", 250);
    assert_eq!(count(&mut a), "4.7.1 calls=1");
    assert_eq!(count(&mut a), "4.7.1 calls=2");
    assert_eq!(sample(&s, taken), Some(5.0));
    // A reload makes the new set's instances ahead too (once it is the
    // current set: none are made for a replaced one).
    s.reload_with("standby = 2\n", "standby = 1\n");
    s.wait_for_log("plugin reload done", 1);
    crate::outbound::wait_until(&s, "the new set's standby instance", || {
        sample(&s, made) == Some(1.0)
    });
}

#[test]
fn standby_is_decided_at_load_by_what_an_instance_costs() {
    // A Rust plugin takes microseconds to make: no standby by default.
    let s = Server::start(&probe_toml(
        "probe",
        &["rcpt"],
        "[plugin.config]\nrcpt = [\"@\"]",
    ));
    let loaded = s.wait_for_log("plugin loaded", 1).remove(0);
    assert!(loaded.contains("\"standby\":0"), "{loaded}");
    drop(s);
    // A Python one, served fresh, takes far longer (~66,000 function
    // references made per instance): two made ahead by default.
    let python = plugin_toml(
        "sender-block",
        "python/sender_block.wasm",
        "hooks = [\"mail-from\"]\nreuse = 0\n[plugin.config]\ndomains = [\"spam.example\"]",
    );
    let mut s = Server::start(&python);
    let standby_of = |s: &Server, n: usize| {
        let line = s.wait_for_log("plugin loaded", n).remove(n - 1);
        let at = line.find("\"standby\":").expect("standby logged") + 10;
        line[at..]
            .split(',')
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let served = |s: &Server| {
        let mut c = greeted(s);
        c.cmd("MAIL FROM:<bad@spam.example>", 550);
        c.cmd("MAIL FROM:<good@example.test>", 250);
    };
    assert_eq!(standby_of(&s, 1), 2);
    served(&s);
    // The plugin's own key wins; a warm plugin needs none.
    s.reload_with("reuse = 0\n", "reuse = 0\nstandby = 1\n");
    s.wait_for_log("plugin reload done", 1);
    assert_eq!(standby_of(&s, 2), 1);
    served(&s);
    s.reload_with("reuse = 0\nstandby = 1\n", "reuse = 100\n");
    s.wait_for_log("plugin reload done", 2);
    assert_eq!(standby_of(&s, 3), 0);
    served(&s);
    // `plugin_limits.standby = 0` turns the default off (limits are read
    // at start; the same data dir, so the compiled plugin is reused).
    s.signal_and_wait("TERM");
    s.start_again_with(&format!("[plugin_limits]\nstandby = 0\n\n{python}"));
    assert_eq!(standby_of(&s, 4), 0);
    served(&s);
}
