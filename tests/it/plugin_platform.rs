//! Plugins as files people ship: the built-in plugin behind the embedded default config, the
//! manifest a component carries (hooks default, grants, config schema), `wasmtp plugin inspect`
//! and `embed-manifest`, and panic messages reaching the log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{BIN, Client, Server, check_plugin_config, field, plugin_toml, plugin_wasm};

/// Kills the child when the test ends, however it ends.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_embedded_default_serves_from_an_empty_directory() {
    // No --config and an empty working directory: the default's spam-score is the built-in one,
    // not a path relative to the repository. --listen moves the default's fixed ports to free
    // ones, so the test cannot collide with anything on 2525/5870/4650.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--log-format", "json"])
        .args(["--listen", "mx=127.0.0.1:0"])
        .args(["--listen", "submission=127.0.0.1:0"])
        .args(["--listen", "submissions=127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _kill = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line)
                .unwrap_or_else(|_| serde_json::json!({ "message": line }));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let mut mx: Option<SocketAddr> = None;
    loop {
        let v = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server did not start: {log:#?}"));
        if field(&v, "message") == "listening" && field(&v, "listener") == "mx" {
            mx = Some(field(&v, "addr").parse().unwrap());
        }
        let ready = field(&v, "message") == "wasmtp ready";
        log.push(v);
        if ready {
            break;
        }
    }
    // The default config lists no hooks: the manifest's (data) apply.
    let loaded = log
        .iter()
        .find(|v| field(v, "message") == "plugin loaded")
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert_eq!(field(loaded, "plugin"), "spam-score");
    assert_eq!(field(loaded, "path"), "builtin:spam-score");
    assert!(field(loaded, "hooks").contains("data"), "{loaded}");
    assert!(!field(loaded, "hooks").contains("connect"), "{loaded}");

    let mut c = Client::connect(mx.expect("an mx listener"));
    c.expect(220);
    c.cmd("EHLO client.test", 250);
    let r = c.send_message(
        "a@example.test",
        &["someone@localhost"],
        b"Subject: hello\r\n\r\nhi\r\n",
    );
    assert_eq!(r.code, 250, "{}", r.text());
    c.cmd("QUIT", 221);

    let new = dir.path().join("wasmtp-data/mail/someone/new");
    let deadline = Instant::now() + Duration::from_secs(30);
    let msg = loop {
        if let Some(e) = std::fs::read_dir(&new).ok().and_then(|mut d| d.next()) {
            break std::fs::read_to_string(e.unwrap().path()).unwrap();
        }
        assert!(Instant::now() < deadline, "no mail in {}", new.display());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(msg.contains("\nX-Spam-Score: "), "{msg}");
}

#[test]
fn a_missing_plugin_file_is_reported_once() {
    let (ok, err) =
        check_plugin_config("[[plugin]]\nname = \"gone\"\npath = \"/nonexistent/gone.wasm\"\n");
    assert!(!ok);
    assert!(
        err.contains("plugin gone: cannot read /nonexistent/gone.wasm"),
        "{err}"
    );
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");

    // serve prints the error chain: still once.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndata_dir = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[plugin]]\nname = \"gone\"\npath = \"/nonexistent/gone.wasm\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert_eq!(line.matches("os error 2").count(), 1, "{err}");
}

#[test]
fn an_unknown_builtin_is_named() {
    let (ok, err) = check_plugin_config("[[plugin]]\nname = \"x\"\npath = \"builtin:nope\"\n");
    assert!(!ok);
    assert!(
        err.contains("there is no built-in plugin \"nope\" (built-in: spam-score)"),
        "{err}"
    );
}

/// `check-config` on one `[[plugin]]` of a built plugin: Ok, or what it printed.
fn check(name: &str, file: &str, rest: &str) -> Result<(), String> {
    match check_plugin_config(&plugin_toml(name, file, rest)) {
        (true, _) => Ok(()),
        (false, err) => Err(err),
    }
}

#[test]
fn the_manifest_checks_config_keys_and_grants() {
    // A key the schema does not allow, and a value of the wrong type: each named.
    let spam = |config: &str| check("spam-score", "spam_score.wasm", config);
    let err = spam("[plugin.config]\nspam_treshold = 3.0\n").unwrap_err();
    assert!(
        err.contains("plugin spam-score: config key plugin.config.spam_treshold:"),
        "{err}"
    );
    let err = spam("[plugin.config]\nspam_threshold = \"high\"\n").unwrap_err();
    assert!(
        err.contains("config key plugin.config.spam_threshold: \"high\" is not of type \"number\""),
        "{err}"
    );
    spam("[plugin.config]\nspam_threshold = 3.0\n").unwrap();

    // greylist's manifest needs kv and clock: the message says what to add.
    let err = check("greylist", "greylist.wasm", "grants = [\"kv\"]\n").unwrap_err();
    assert!(
        err.contains(
            "plugin greylist: its manifest says it needs the \"clock\" grant: add \"clock\" to its grants ([[plugin]] name = \"greylist\", key grants)"
        ),
        "{err}"
    );
    check(
        "greylist",
        "greylist.wasm",
        "grants = [\"kv\", \"clock\"]\n",
    )
    .unwrap();
}

#[test]
fn configured_hooks_win_over_the_manifest() {
    let s = Server::start(&plugin_toml(
        "spam-score",
        "spam_score.wasm",
        "hooks = [\"connect\", \"data\"]",
    ));
    let loaded = s.events("plugin loaded");
    assert!(field(&loaded[0], "hooks").contains("connect"), "{loaded:?}");
}

/// `wasmtp ARGS...`: Ok(stdout) on success, Err(stderr) on failure.
fn wasmtp<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<String, String> {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

fn inspect(file: &str) -> serde_json::Value {
    serde_json::from_str(&wasmtp(&["plugin", "inspect", "--json", file]).unwrap()).unwrap()
}

#[test]
fn inspect_reports_manifest_imports_and_digest() {
    let wasm = plugin_wasm("greylist.wasm");
    let v = inspect(&wasm);
    assert_eq!(v["manifest"]["name"], "greylist");
    assert_eq!(v["manifest"]["grants"], serde_json::json!(["kv", "clock"]));
    assert_eq!(v["manifest"]["hooks"], serde_json::json!(["rcpt"]));
    assert!(v["manifest"]["config_schema"]["properties"]["delay_secs"].is_object());
    assert_eq!(v["contract"], "wasmtp:plugin@0.2.0");
    assert_eq!(v["size"], std::fs::metadata(&wasm).unwrap().len());
    let digest = wasmtp(&["plugin", "digest", &wasm]).unwrap();
    assert!(
        digest.starts_with(v["sha256"].as_str().unwrap()),
        "{digest}"
    );
    let imports = v["imports"].as_array().unwrap();
    let import = |prefix: &str| {
        imports
            .iter()
            .find(|i| i["name"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {imports:?}"))
    };
    assert_eq!(import("wasmtp:plugin/kv@")["grant"], "kv");
    assert_eq!(import("wasmtp:plugin/clock@")["grant"], "clock");
    assert_eq!(import("wasmtp:plugin/types@")["provided"], "always");
    assert_eq!(import("wasi:cli/stderr@")["provided"], "stub");
    assert_eq!(
        v["exports"],
        serde_json::json!(["wasmtp:plugin/hooks@0.2.0"])
    );
    assert!(v["signatures"].is_null());

    // The text form, and the `plugins` alias of the group.
    let text = wasmtp(&["plugins", "inspect", "builtin:spam-score"]).unwrap();
    assert!(text.contains("name:        spam-score 0.2.0"), "{text}");
    assert!(text.contains("hooks:       data"), "{text}");
}

#[test]
fn embed_manifest_replaces_the_manifest_and_the_host_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("t.wasm");
    std::fs::copy(plugin_wasm("fixture_trap.wasm"), &wasm).unwrap();
    let manifest = dir.path().join("m.json");
    std::fs::write(
        &manifest,
        r#"{"name": "renamed", "contract": "wasmtp:plugin@0.2.0", "hooks": ["ehlo"], "grants": ["dns"]}"#,
    )
    .unwrap();
    let embed = || {
        wasmtp(&[
            Path::new("plugin"),
            Path::new("embed-manifest"),
            &wasm,
            &manifest,
        ])
    };
    embed().unwrap();
    let v = inspect(wasm.to_str().unwrap());
    assert_eq!(v["manifest"]["name"], "renamed");
    let sections = v["custom_sections"].as_array().unwrap();
    let top: Vec<_> = sections
        .iter()
        .filter(|s| s["name"] == "wasmtp-manifest" && s["top_level"] == true)
        .collect();
    assert_eq!(top.len(), 1, "{sections:?}");

    // The top-level manifest wins over the one the SDK put in the core module.
    let (ok, err) = check_plugin_config(&format!(
        "[[plugin]]\nname = \"t\"\npath = \"{}\"\n",
        wasm.display()
    ));
    assert!(!ok);
    assert!(err.contains("add \"dns\" to its grants"), "{err}");

    // A manifest that is not one is refused before anything is written.
    std::fs::write(&manifest, r#"{"name": "x"}"#).unwrap();
    let err = embed().unwrap_err();
    assert!(err.contains("missing field `contract`"), "{err}");
    assert_eq!(
        inspect(wasm.to_str().unwrap())["manifest"]["name"],
        "renamed"
    );
}

#[test]
fn a_panic_message_reaches_the_log_with_plugin_and_hook() {
    let s = Server::start(&plugin_toml(
        "trap",
        "fixture_trap.wasm",
        "hooks = [\"connect\"]\non_error = \"continue\"",
    ));
    let mut c = Client::connect(s.addr);
    c.expect(220);
    let trapped = s.wait_for_log("plugin trapped", 1);
    let v: serde_json::Value = serde_json::from_str(&trapped[0]).unwrap();
    assert_eq!(field(&v, "plugin"), "trap");
    assert_eq!(field(&v, "hook"), "connect");
    let error = field(&v, "error");
    // Captured stderr: the panic text, not "unknown import ... get-environment".
    assert!(error.contains("fixture-trap: deliberate panic"), "{error}");
    assert!(!error.contains("unknown import"), "{error}");
    // The SDK's panic hook said it through the log capability too.
    let logged = s.wait_for_log("panic: panicked at", 1);
    assert!(
        logged[0].contains("fixture-trap: deliberate panic"),
        "{}",
        logged[0]
    );
    assert!(logged[0].contains("\"plugin\":\"trap\""), "{}", logged[0]);
}

#[test]
fn a_panic_in_init_is_explained_at_load() {
    let err = check(
        "trap",
        "fixture_trap.wasm",
        "[plugin.config]\nin_init = true\n",
    )
    .unwrap_err();
    assert!(err.contains("plugin trap: init trapped"), "{err}");
    assert!(err.contains("fixture-trap: deliberate panic"), "{err}");
}

#[test]
fn watch_plugins_reloads_when_a_plugin_file_changes() {
    // A plugin file the test owns: spam-score first.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.wasm");
    std::fs::copy(plugin_wasm("spam_score.wasm"), &file).unwrap();
    let cfg = format!(
        "[[plugin]]\nname = \"p\"\npath = \"{}\"\nhooks = [\"data\"]\n",
        file.display()
    );
    let s = Server::start_with_args(&cfg, &["--watch-plugins"]);
    s.wait_for_log("watching plugin files for changes", 1);
    let send = |to: &str| {
        let mut c = Client::greeted(s.addr);
        c.cmd("EHLO client.test", 250);
        let r = c.send_message("a@example.test", &[to], b"Subject: w\r\n\r\nhello\r\n");
        assert_eq!(r.code, 250, "{r:?}");
        String::from_utf8(s.wait_for_mail(to.split('@').next().unwrap(), 1).remove(0)).unwrap()
    };
    assert!(send("before@example.test").contains("X-Spam-Score"));
    // "Rebuild" the plugin: another component lands at the same path
    // (written beside it and renamed, as a build does).
    let next = dir.path().join("p.wasm.new");
    std::fs::copy(plugin_wasm("attachment_guard.wasm"), &next).unwrap();
    std::fs::rename(&next, &file).unwrap();
    s.wait_for_log("a plugin file changed: reloading", 1);
    s.wait_for_log("plugin set swapped in", 1);
    let after = send("after@example.test");
    assert!(
        !after.contains("X-Spam-Score"),
        "{after}\n{}",
        s.dump_logs()
    );
    assert_eq!(s.log_lines("a plugin file changed: reloading").len(), 1);
}
