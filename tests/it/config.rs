//! The config files the project ships parse, and errors are located.

use std::process::Command;

use crate::support::BIN;

#[test]
fn shipped_configs_pass_check_config() {
    for file in ["config/example.toml", "config/default.toml"] {
        let out = Command::new(BIN)
            .args(["check-config", file])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    }
    let out = Command::new(BIN).arg("check-config").output().unwrap();
    assert!(
        out.status.success(),
        "embedded default: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fields the config types accept at `path` (a table, `[[path]]` when
/// `array`), as the binary lists them when it meets an unknown one; None
/// when `path` is not a table of named fields.
fn fields_of(dir: &std::path::Path, path: &str, array: bool) -> Option<Vec<String>> {
    let header = match (path, array) {
        ("", _) => String::new(),
        (p, true) => format!("[[{p}]]\n"),
        (p, false) => format!("[{p}]\n"),
    };
    let file = dir.join("probe.toml");
    std::fs::write(&file, format!("{header}zzz_unknown = 1\n")).unwrap();
    let out = crate::support::check_config_file(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    let (_, expected) = err.split_once("unknown field `zzz_unknown`, expected ")?;
    let expected = expected.lines().next().unwrap();
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect(),
    )
}

/// Every leaf key of the config types as a dotted path without indices
/// (`listener.address`, `tls.certificate.cert`), found by asking the binary.
fn config_paths(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
    let fields = fields_of(dir, prefix, false)
        .or_else(|| fields_of(dir, prefix, true))
        .unwrap_or_else(|| panic!("no fields listed for [{prefix}]"));
    for f in fields {
        let path = if prefix.is_empty() {
            f
        } else {
            format!("{prefix}.{f}")
        };
        if fields_of(dir, &path, false).is_some() || fields_of(dir, &path, true).is_some() {
            config_paths(dir, &path, out);
        } else {
            out.push(path);
        }
    }
}

/// The dotted paths `config/example.toml` shows, commented out or not:
/// each `key =` line under the latest `[table]` or `[[table]]` header.
fn documented_paths(example: &str) -> std::collections::HashSet<String> {
    let mut table = String::new();
    let mut paths = std::collections::HashSet::new();
    for line in example.lines() {
        let l = line.trim_start_matches(['#', ' ']);
        if let Some(h) = l.strip_prefix('[') {
            table = h.trim_matches(['[', ']']).to_string();
            paths.insert(table.clone());
        } else if let Some((key, _)) = l.split_once(" =")
            && !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            paths.insert(format!("{table}.{key}").trim_start_matches('.').to_string());
        }
    }
    paths
}

#[test]
fn example_config_documents_every_key() {
    let example = std::fs::read_to_string("config/example.toml").unwrap();
    let settings = wasmtp::config::Settings::parse(&example, "example.toml").unwrap();
    assert_eq!(settings.listeners.len(), 3);
    assert_eq!(settings.plugins.len(), 1);
    assert_eq!(settings.plugins[0].config_json, r#"{"spam_threshold":5.0}"#);
    // Every key the config types accept appears in the example (commented
    // or not) under its own table.
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    config_paths(dir.path(), "", &mut paths);
    assert!(paths.len() > 40, "{paths:?}");
    for must in [
        "listener.role",
        "tls.certificate.names",
        "plugin.memory",
        "queue.max_age",
    ] {
        assert!(
            paths.iter().any(|p| p == must),
            "{must} not derived: {paths:?}"
        );
    }
    let documented = documented_paths(&example);
    let missing: Vec<&String> = paths.iter().filter(|p| !documented.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "config/example.toml does not document {missing:?}"
    );
}

#[test]
fn check_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(
        &file,
        "[[listener]]\naddress = \"127.0.0.1:2525\"\n\n[limits]\nmax_mesage_size = \"10MB\"\n",
    )
    .unwrap();
    let out = crate::support::check_config_file(&file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5:1", file.display())), "{err}");
    assert!(err.contains("max_mesage_size"), "{err}");
    assert!(
        err.contains("max_message_size"),
        "the expected keys are listed: {err}"
    );

    std::fs::write(
        &file,
        "[[listener]]\naddress = \"127.0.0.1:2525\"\n[timeouts]\ncommand = \"forever\"\n",
    )
    .unwrap();
    let out = crate::support::check_config_file(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(":4:") && err.contains("timeouts.command") && err.contains("invalid duration"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve refuses a bad config too");
}

#[test]
fn default_config_prints_the_embedded_default() {
    let out = Command::new(BIN).arg("default-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // It is the shipped file, and it passes check-config as a file too.
    assert_eq!(
        text,
        std::fs::read_to_string("config/default.toml").unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default.toml");
    std::fs::write(&file, &text).unwrap();
    let check = crate::support::check_config_file(&file);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let settings = wasmtp::config::Settings::parse(&text, "default.toml").unwrap();
    assert_eq!(settings.listeners.len(), 3);
}

#[test]
fn json_logs_are_one_object_per_line_with_span_fields() {
    // The test server runs with `--log-format json`.
    let s = crate::support::Server::start("");
    let mut c = crate::support::Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let id = crate::support::queue_id(&c.send_message(
        "a@example.test",
        &["u@example.test"],
        b"Subject: j\r\n\r\nx\r\n",
    ));
    s.wait_for_mail("u", 1);
    let lines = s.logs.lock().unwrap().clone();
    assert!(lines.len() > 3);
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for k in ["timestamp", "level", "message", "target"] {
            assert!(v[k].is_string(), "no {k}: {l}");
        }
    }
    // The message span carries the queue id; the session span the peer.
    let accepted = s.wait_for_events("message accepted", 1).remove(0);
    assert_eq!(crate::support::field(&accepted, "queue_id"), id);
    assert!(crate::support::field(&accepted, "peer").starts_with("127.0.0.1:"));
    assert_eq!(crate::support::field(&accepted, "nrcpt"), "1");
}

/// Every ```toml block in README.md and docs/*.md is a config fragment
/// the server accepts: unknown keys and wrong types are refused by the raw
/// layer, so a documented example cannot drift from the config types.
#[test]
fn toml_examples_in_the_docs_parse() {
    let mut files = vec![std::path::PathBuf::from("README.md")];
    for e in std::fs::read_dir("docs").unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let mut blocks = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("```toml\n") {
            let body = &rest[i + 8..];
            let end = body.find("```").expect("closed block");
            let block = &body[..end];
            let name = format!("{} block {}", f.display(), blocks + 1);
            // Fragments are read as they are, after a listener so a
            // fragment without one is still a whole config.
            let src = format!("[[listener]]\naddress = \"127.0.0.1:0\"\n{block}");
            if let Err(e) = wasmtp::config::parse_raw(&src, &name) {
                panic!("{name} does not parse: {e}\n{block}");
            }
            blocks += 1;
            rest = &body[end + 3..];
        }
    }
    assert!(blocks >= 2, "found {blocks} toml blocks");
}
