//! Plugins written in Python and JavaScript on the SDKs in `sdk/`: the examples loaded by a real
//! server (the JavaScript header-rewrite changes a delivered message), an exception's text in the
//! server log with the plugin's name, the templates `plugin new` writes (their SDK copies equal
//! `sdk/`, and a generated project builds outside the repository, passes its native test and
//! changes a message in a server).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::signing::{Registry, pinned_sha256};
use crate::support::{BIN, Client, Server, field, plugin_toml, queue_id, read_all};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn js_plugin_rewrites_headers_of_external_mail() {
    let s = Server::start(&plugin_toml(
        "header-rewrite",
        "js/header_rewrite.wasm",
        "[plugin.config]\nremove = [\"User-Agent\"]\nadd = { \"X-Policy\" = \"checked\" }\n\
         internal_domains = [\"example.test\"]\nexternal_subject_prefix = \"[EXT] \"",
    ));
    let body = b"Subject: hello\r\nUser-Agent: Mailer 1.0\r\n\r\nbody\r\n";
    for from in ["someone@outside.example", "boss@example.test"] {
        let mut c = Client::greeted(s.addr);
        c.cmd("EHLO client.test", 250);
        queue_id(&c.send_message(from, &["user@example.test"], body));
        c.cmd("QUIT", 221);
    }
    let mut mail: Vec<String> = s
        .wait_for_mail("user", 2)
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    mail.sort_by_key(|m| !m.contains("<someone@outside.example>"));
    let (external, internal) = (&mail[0], &mail[1]);
    assert!(external.contains("\nSubject: [EXT] hello\n"), "{external}");
    assert!(internal.contains("\nSubject: hello\n"), "{internal}");
    for m in [external, internal] {
        assert!(m.contains("\nX-Policy: checked\n"), "{m}");
        assert!(!m.contains("User-Agent"), "{m}");
    }
    // The plugin's own log line, tagged with its name by the host.
    let logged = s.wait_for_log("subject tagged", 1);
    assert!(logged[0].contains("header-rewrite"), "{logged:?}");
}

/// Sends `MAIL FROM:<sender>` to a server running one fixture plugin that fails on it; the
/// call traps (451 by on_error = tempfail) and the exception's text reaches the log, at error
/// level, with the plugin's name, before the trap's warning.
fn exception_reaches_the_log(name: &str, file: &str, sender: &str, text: &str) {
    let s = Server::start(&plugin_toml(name, file, ""));
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.cmd(&format!("MAIL FROM:<{sender}>"), 451);
    assert!(r.text().starts_with("4.3.0"), "{r:?}");
    c.cmd("MAIL FROM:<fine@example.test>", 250);
    s.wait_for_log("plugin trapped", 1);
    let logs = s.dump_logs();
    let events: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let exception = events
        .iter()
        .position(|v| field(v, "message").contains(text))
        .unwrap_or_else(|| panic!("no log line with {text:?}:\n{logs}"));
    let v = &events[exception];
    assert_eq!(field(v, "plugin"), name, "{v}");
    assert_eq!(field(v, "level"), "ERROR", "{v}");
    assert!(
        field(v, "message").starts_with(&format!("{name}: exception in ")),
        "{v}"
    );
    let trapped = events
        .iter()
        .position(|v| field(v, "message").starts_with("plugin trapped"))
        .unwrap();
    assert!(exception < trapped, "{logs}");
}

#[test]
fn js_exception_message_reaches_the_log_with_the_plugin_name() {
    exception_reaches_the_log(
        "fixture-throw",
        "js/fixture_throw.wasm",
        "throw@example.test",
        "Error: fixture-throw: deliberate failure for throw@example.test",
    );
}

#[test]
fn python_exception_message_reaches_the_log_with_the_plugin_name() {
    exception_reaches_the_log(
        "fixture-raise",
        "python/fixture_raise.wasm",
        "raise@example.test",
        "ValueError: fixture-raise: deliberate failure for raise@example.test",
    );
}

/// Files under `dir`, relative, sorted; build output (`target`, `node_modules`, `__pycache__`,
/// `.wasmtp`) left out as the template embedding leaves it out.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let n = e.file_name();
            if p.is_dir() {
                if !matches!(
                    n.to_str(),
                    Some("target" | "node_modules" | "__pycache__" | ".wasmtp")
                ) {
                    walk(root, &p, out);
                }
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn templates_carry_the_sdk_wit_and_build_scripts_of_this_repository() {
    // The templates carry the SDK, the WIT and the build script (and for JS the pinned
    // toolchain) so a generated project builds outside this repository. sdk/ and wit/ are the one
    // source: the template entries are symlinks to them (build.rs embeds what they point to),
    // and this test fails if one becomes a copy that drifts.
    let root = Path::new(ROOT);
    let pairs = [
        ("sdk/python/wasmtp_plugin", "templates/python/wasmtp_plugin"),
        ("sdk/js/wasmtp-plugin", "templates/js/wasmtp-plugin"),
    ];
    let mut checked = 0;
    for (sdk, copy) in pairs {
        let (sdk, copy) = (root.join(sdk), root.join(copy));
        assert_eq!(
            files(&sdk),
            files(&copy),
            "{} vs {}",
            sdk.display(),
            copy.display()
        );
        for f in files(&sdk) {
            assert_eq!(
                std::fs::read(sdk.join(&f)).unwrap(),
                std::fs::read(copy.join(&f)).unwrap(),
                "the template's {} differs from sdk/: make it a symlink to sdk/",
                sdk.join(&f).display()
            );
            checked += 1;
        }
    }
    for (a, b) in [
        ("sdk/python/build.sh", "templates/python/build.sh"),
        ("sdk/js/build.sh", "templates/js/build.sh"),
        ("sdk/js/package-lock.json", "templates/js/package-lock.json"),
        ("wit/plugin.wit", "templates/python/wit/plugin.wit"),
        ("wit/plugin.wit", "templates/js/wit/plugin.wit"),
    ] {
        assert_eq!(
            std::fs::read(root.join(a)).unwrap(),
            std::fs::read(root.join(b)).unwrap(),
            "{b} differs from {a}: make it a symlink to {a}"
        );
        checked += 1;
    }
    // The template's package.json is the project's own (name, scripts) with the SDK's pins.
    let pins = |p: &str| {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(p)).unwrap()).unwrap();
        v["devDependencies"].clone()
    };
    assert_eq!(
        pins("sdk/js/package.json"),
        pins("templates/js/package.json")
    );
    assert!(checked > 10, "{checked}");
}

/// `bash build.sh ARGS` in a generated project, with the toolchain caches the repository's
/// own plugin builds filled (plugins/target/py-venv, plugins/target/js-tools), so a test does
/// not install componentize-py or run `npm ci` again. Returns stdout and stderr.
fn build_sh(dir: &Path, args: &[&str]) -> String {
    let target = Path::new(ROOT).join("plugins/target");
    let out = Command::new("bash")
        .arg(dir.join("build.sh"))
        .args(args)
        .current_dir(dir)
        .env("WASMTP", BIN)
        .env("WASMTP_PY_VENV", target.join("py-venv"))
        .env("WASMTP_JS_TOOLS", target.join("js-tools"))
        .output()
        .unwrap();
    let text = format!("{}{}", read_all(&out.stdout[..]), read_all(&out.stderr[..]));
    assert!(
        out.status.success(),
        "build.sh {args:?} in {}:\n{text}",
        dir.display()
    );
    text
}

/// A generated project, outside the repository: its native tests pass, it builds into
/// `NAME.wasm` with its manifest, its case passes `wasmtp plugin test`, and once signed, pushed
/// to a real OCI registry and pulled by reference, a server running it adds the header to a
/// message.
fn generated_project_works(lang: &str, name: &str, dir: &Path) {
    let tests = build_sh(dir, &["test"]);
    let passed = match lang {
        "python" => tests.contains("Ran 3 tests") && tests.contains("\nOK"),
        _ => tests.contains("# pass 3") && tests.contains("# fail 0"),
    };
    assert!(passed, "{tests}");
    build_sh(dir, &[]);
    let wasm = dir.join(format!("{name}.wasm"));
    let inspect = Command::new(BIN)
        .args(["plugin", "inspect", "--json"])
        .arg(&wasm)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout)
        .unwrap_or_else(|_| panic!("{}", read_all(&inspect.stderr[..])));
    assert_eq!(v["manifest"]["name"], name, "{v}");

    // Its own case passes offline through `wasmtp plugin test`.
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .current_dir(dir)
            .arg("plugin")
            .args(args)
            .output()
            .unwrap();
        let text = format!("{}{}", read_all(&out.stdout[..]), read_all(&out.stderr[..]));
        assert!(out.status.success(), "plugin {args:?}: {text}");
        text
    };
    let wasm_name = format!("{name}.wasm");
    let replay = run(&["test", &wasm_name, "tests/"]);
    assert!(
        replay.contains(&format!("case(s) passed (chain: {name})")),
        "{replay}"
    );

    // Signed, pushed to a real registry and pulled by a server that requires the signature.
    let registry = Registry::start();
    run(&["keygen", "author"]);
    run(&["sign", &wasm_name, "--key", "author"]);
    let reference = format!("{}/plugins/{name}:0.1.0", registry.addr);
    let pin = pinned_sha256(&run(&["push", &wasm_name, &reference]));
    let s = Server::start(&format!(
        "[plugin_trust]\ntrusted_keys = [\"{}\"]\nrequire_signature = true\n\n[[plugin]]\nname = \"{name}\"\noci = \"{reference}\"\nsha256 = \"{pin}\"\n",
        dir.join("author.pub").display()
    ));
    assert_eq!(
        s.log_lines("plugin signature verified").len(),
        1,
        "{}",
        s.dump_logs()
    );
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    queue_id(&c.send_message(
        "alice@example.org",
        &["bob@example.test"],
        b"Subject: hi\r\n\r\nhello\r\n",
    ));
    let mail = s.wait_for_mail("bob", 1);
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(
        text.contains(&format!("\nX-{name}: from 127.0.0.1 helo client.test\n")),
        "{text}"
    );
}

/// `wasmtp plugin new NAME --lang LANG --dir D`: the project a new author starts from.
fn plugin_new(lang: &str, name: &str, dir: &Path) {
    let out = Command::new(BIN)
        .args(["plugin", "new", name, "--lang", lang, "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", read_all(&out.stderr[..]));
}

#[test]
fn plugin_new_python_builds_and_changes_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("new-py");
    plugin_new("python", "new-py", &project);
    generated_project_works("python", "new-py", &project);
}

#[test]
fn plugin_new_js_builds_and_changes_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("new-js");
    plugin_new("js", "new-js", &project);
    generated_project_works("js", "new-js", &project);
}
