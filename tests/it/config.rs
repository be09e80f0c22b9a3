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

#[test]
fn example_config_documents_every_key() {
    let example = std::fs::read_to_string("config/example.toml").unwrap();
    let settings = wasmtp::config::Settings::parse(&example, "example.toml").unwrap();
    assert_eq!(settings.listeners.len(), 3);
    assert_eq!(settings.plugins.len(), 1);
    assert_eq!(settings.plugins[0].config_json, r#"{"spam_threshold":5.0}"#);
    // Every key the raw config knows appears in the example (commented or not).
    for key in [
        "hostname",
        "data_dir",
        "name",
        "address",
        "max_message_size",
        "max_recipients",
        "max_connections",
        "max_connections_per_ip",
        "ipv6_prefix",
        "max_errors",
        "command_line_length",
        "text_line_length",
        "command",
        "data",
        "shutdown",
        "dir",
        "group_commit",
        "delivery_workers",
        "retry_intervals",
        "max_age",
        "domains",
        "users",
        "catch_all",
        "mail_dir",
        "recipient_delimiter",
        "postmaster",
        "line_endings",
        "format",
        "level",
        "role",
        "cert",
        "key",
        "names",
        "users_file",
        "allow_plaintext_on_loopback",
        "max_failures",
        "failure_delay",
        "max_verifications",
        "verification_wait",
        "trusted_networks",
        "nameservers",
        "timeout",
        "path",
        "sha256",
        "hooks",
        "grants",
        "on_error",
        "timeouts",
        "memory",
    ] {
        assert!(
            example.lines().any(|l| l
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{key} ="))),
            "config/example.toml does not document `{key}`"
        );
    }
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
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
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
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
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
