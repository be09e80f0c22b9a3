//! The plugin author's loop with the real tools: `wasmtp plugin new` writes a Rust project, cargo
//! builds it for wasm32-wasip2 (against this repository's SDK through a `[patch.crates-io]`),
//! `wasmtp plugin test` replays its case offline and fails with a diff on a broken expectation,
//! `plugin sign`/`push` put it in a real registry (Debian's docker-registry on loopback), and a
//! server that names it by OCI reference adds its header to a message sent over SMTP. Also the
//! cases committed with the shipped plugins, and the case examples in docs/plugins.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::signing::{Registry, deliver_one, pinned_sha256};
use crate::support::{BIN, Server, plugin_wasm};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn wasmtp(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .arg("plugin")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// cargo in `dir`, with a target dir shared by every run of this test (under plugins/target, so
/// only the first run on a machine is a cold build) and none of the host build's flags.
fn cargo(dir: &Path, args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir).args(args).env(
        "CARGO_TARGET_DIR",
        Path::new(REPO).join("plugins/target/plugin-dev"),
    );
    for var in [
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "cargo {args:?}: {}", text(&out));
}

/// `plugin new NAME --lang rust` in a temp dir, pointed at this repository's SDK.
fn new_rust_project(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    let out = ok(wasmtp(
        tmp.path(),
        &[
            "new",
            name,
            "--lang",
            "rust",
            "--dir",
            dir.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("wrote a rust plugin project"), "{out}");
    let manifest = dir.join("Cargo.toml");
    let toml = std::fs::read_to_string(&manifest).unwrap();
    // The template depends on the SDK by version, as it would outside this repository.
    assert!(toml.contains("wasmtp-plugin-sdk = \"0.2.0\""), "{toml}");
    std::fs::write(
        &manifest,
        format!(
            "{toml}\n[patch.crates-io]\nwasmtp-plugin-sdk = {{ path = \"{REPO}/plugin-sdk\" }}\n"
        ),
    )
    .unwrap();
    (tmp, dir)
}

#[test]
fn a_new_rust_plugin_is_built_tested_signed_pulled_and_changes_a_message() {
    let (_tmp, dir) = new_rust_project("tag-it");
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "wasmtp-plugin.json",
        "build.sh",
        "README.md",
        "tests/tagged.toml",
        "tests/message.eml",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    // The native unit tests of the template pass, then the component builds.
    cargo(&dir, &["test", "--quiet"]);
    cargo(&dir, &["build", "--release", "--target", "wasm32-wasip2"]);
    let built = Path::new(REPO).join("plugins/target/plugin-dev/wasm32-wasip2/release/tag_it.wasm");
    std::fs::copy(&built, dir.join("tag-it.wasm")).unwrap();

    // Its own case passes offline.
    let out = ok(wasmtp(&dir, &["test", "tag-it.wasm", "tests/"]));
    assert!(out.contains("1 case(s) passed (chain: tag-it)"), "{out}");
    // A broken expectation fails with a diff and a non-zero exit.
    let case = std::fs::read_to_string(dir.join("tests/tagged.toml")).unwrap();
    let broken = case.replace("helo mail.example.org\"]", "helo elsewhere\"]");
    assert_ne!(broken, case);
    std::fs::write(dir.join("tests/broken.toml"), broken).unwrap();
    let failed = wasmtp(&dir, &["test", "tag-it.wasm", "tests/broken.toml"]);
    assert!(!failed.status.success(), "{}", text(&failed));
    let diff = text(&failed);
    assert!(
        diff.contains("- add-header X-tag-it: from 192.0.2.1 helo elsewhere")
            && diff.contains("+ add-header X-tag-it: from 192.0.2.1 helo mail.example.org")
            && diff.contains("1 of 1 case(s) failed"),
        "{diff}"
    );
    std::fs::remove_file(dir.join("tests/broken.toml")).unwrap();

    // Signed, pushed to a real registry, pulled by a server that requires the signature.
    let registry = Registry::start();
    ok(wasmtp(&dir, &["keygen", "author"]));
    ok(wasmtp(&dir, &["sign", "tag-it.wasm", "--key", "author"]));
    let reference = format!("{}/plugins/tag-it:0.1.0", registry.addr);
    let pin = pinned_sha256(&ok(wasmtp(&dir, &["push", "tag-it.wasm", &reference])));
    let s = Server::start(&format!(
        "[plugin_trust]\ntrusted_keys = [\"{}\"]\nrequire_signature = true\n\n[[plugin]]\nname = \"tag-it\"\noci = \"{reference}\"\nsha256 = \"{pin}\"\n",
        dir.join("author.pub").display()
    ));
    assert_eq!(
        s.log_lines("plugin signature verified").len(),
        1,
        "{}",
        s.dump_logs()
    );
    deliver_one(&s);
    let msg = String::from_utf8(s.wait_for_mail("u", 1).remove(0)).unwrap();
    assert!(
        msg.contains("\nX-tag-it: from 127.0.0.1 helo client.test\n")
            || msg.starts_with("X-tag-it: from 127.0.0.1 helo client.test\n"),
        "{msg}"
    );
}

#[test]
fn the_cases_of_the_shipped_plugins_pass() {
    let repo = Path::new(REPO);
    let router = ok(wasmtp(
        repo,
        &[
            "test",
            "--config",
            "plugins/router/tests/wasmtp.toml",
            "plugins/router/tests/cases/",
        ],
    ));
    assert!(
        router.contains("2 case(s) passed (chain: router)"),
        "{router}"
    );
    let spam = ok(wasmtp(
        repo,
        &[
            "test",
            "--config",
            "plugins/spam-score/tests/wasmtp.toml",
            "plugins/spam-score/tests/cases/",
        ],
    ));
    assert!(
        spam.contains("3 case(s) passed (chain: dnsbl, spam-score)"),
        "{spam}"
    );
    let greylist = ok(wasmtp(
        repo,
        &[
            "test",
            &plugin_wasm("greylist.wasm"),
            "plugins/greylist/tests/cases/",
        ],
    ));
    assert!(greylist.contains("1 case(s) passed"), "{greylist}");
    let dmarc = ok(wasmtp(
        repo,
        &[
            "test",
            "--config",
            "plugins/dmarc-policy/tests/wasmtp.toml",
            "plugins/dmarc-policy/tests/cases/",
        ],
    ));
    assert!(
        dmarc.contains("6 case(s) passed (chain: dmarc-policy)"),
        "{dmarc}"
    );
}

#[test]
fn the_dns_of_a_case_is_the_only_dns() {
    // The blocklist answer is what makes the spam case cross the quarantine threshold; without
    // it (nothing else resolves) the same case fails on the verdict.
    let repo = Path::new(REPO);
    let tmp = tempfile::tempdir().unwrap();
    let case =
        std::fs::read_to_string(repo.join("plugins/spam-score/tests/cases/listed-spam.toml"))
            .unwrap()
            .replace(
                "../spam.eml",
                &format!("{REPO}/plugins/spam-score/tests/spam.eml"),
            )
            .replace("[dns.\"99.2.0.192.bl.example\"]\na = [\"127.0.0.2\"]", "");
    let file = tmp.path().join("unlisted.toml");
    std::fs::write(&file, case).unwrap();
    let out = wasmtp(
        repo,
        &[
            "test",
            "--config",
            "plugins/spam-score/tests/wasmtp.toml",
            file.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("- quarantine\n    + continue"),
        "{}",
        text(&out)
    );
}

#[test]
fn eml_alone_prints_each_hook_with_timings() {
    let tmp = tempfile::tempdir().unwrap();
    let eml = tmp.path().join("m.eml");
    std::fs::write(
        &eml,
        "From: a@example.org\nTo: b@example.net\nSubject: FREE!!!\n\nhello\n",
    )
    .unwrap();
    let out = ok(wasmtp(
        tmp.path(),
        &[
            "test",
            &plugin_wasm("router.wasm"),
            &plugin_wasm("spam_score.wasm"),
            "--eml",
            eml.to_str().unwrap(),
        ],
    ));
    assert!(
        out.contains("rcpt b@example.net: continue [router "),
        "{out}"
    );
    assert!(out.contains("data: continue [spam-score "), "{out}");
    assert!(out.contains("change-header X-Spam-Score: "), "{out}");
    assert!(out.contains("µs]"), "{out}");
    assert!(
        out.contains("result: accepted (sender <a@example.org>"),
        "{out}"
    );
}

#[test]
fn plugin_new_names_its_languages_and_refuses_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    let list = ok(wasmtp(tmp.path(), &["new", "--list"]));
    assert!(list.lines().any(|l| l.starts_with("rust\t")), "{list}");
    let bad = wasmtp(tmp.path(), &["new", "Bad_Name", "--lang", "rust"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("kebab-case"), "{}", text(&bad));
    let unknown = wasmtp(tmp.path(), &["new", "x", "--lang", "cobol"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no template for \"cobol\"") && text(&unknown).contains("rust"),
        "{}",
        text(&unknown)
    );
    std::fs::create_dir(tmp.path().join("taken")).unwrap();
    std::fs::write(tmp.path().join("taken/file"), "x").unwrap();
    let taken = wasmtp(tmp.path(), &["new", "taken", "--lang", "rust"]);
    assert!(text(&taken).contains("not empty"), "{}", text(&taken));
}

/// Every ```toml case block in docs/plugins.md is a case `plugin test` accepts (unknown keys are
/// refused), so the documented format cannot drift from the code.
#[test]
fn case_examples_in_the_docs_parse() {
    let doc = std::fs::read_to_string(Path::new(REPO).join("docs/plugins.md")).unwrap();
    let mut blocks = 0;
    let mut rest = doc.as_str();
    while let Some(i) = rest.find("```toml case\n") {
        let body = &rest[i + "```toml case\n".len()..];
        let end = body.find("```").expect("closed block");
        if let Err(e) = toml::from_str::<wasmtp::plugin::replay::Case>(&body[..end]) {
            panic!(
                "case block {} does not parse: {e}\n{}",
                blocks + 1,
                &body[..end]
            );
        }
        blocks += 1;
        rest = &body[end + 3..];
    }
    assert!(blocks >= 1, "no ```toml case blocks in docs/plugins.md");
}

#[test]
fn a_bad_case_is_refused_naming_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let greylist = plugin_wasm("greylist.wasm");
    let run = |name: &str, case: &str| {
        std::fs::write(tmp.path().join(name), case).unwrap();
        let out = wasmtp(tmp.path(), &["test", &greylist, name]);
        assert!(!out.status.success(), "{}", text(&out));
        text(&out)
    };
    let typo = run(
        "typo.toml",
        "message_text = \"Subject: x\\n\\nx\\n\"\n[expect.dta]\nverdict = \"continue\"\n",
    );
    assert!(
        typo.contains("typo.toml: key expect") && typo.contains("unknown field `dta`"),
        "{typo}"
    );
    let kv = run(
        "kv.toml",
        "message_text = \"Subject: x\\n\\nx\\n\"\n[kv.greylst]\nk = \"v\"\n",
    );
    assert!(
        kv.contains("kv.toml: [kv.greylst]: no plugin named \"greylst\" in the chain"),
        "{kv}"
    );
    let dns = run(
        "dns.toml",
        "message_text = \"Subject: x\\n\\nx\\n\"\n[dns.\"example.org\"]\nmx = [\"mx.example.org\"]\n",
    );
    assert!(
        dns.contains(
            "dns.toml: dns.\"example.org\": mx \"mx.example.org\": expected \"PREFERENCE HOST\""
        ),
        "{dns}"
    );
    let no_message = run("empty.toml", "");
    assert!(
        no_message.contains("empty.toml: no message"),
        "{no_message}"
    );
}
