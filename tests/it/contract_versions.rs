//! The host serves both contract versions: a plugin built against `wasmtp:plugin@0.1.0` with
//! wit-bindgen alone (no SDK; tests/fixtures/contract-0.1.0/, built by scripts/test against the
//! frozen wit/0.1.0/) loads and runs its hooks, beside a 0.2.0 plugin in the same chain.

use std::path::Path;
use std::process::Command;

use crate::support::{BIN, Client, Server, check_plugin_config, plugin_toml, queue_id};

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/target/contract-0.1.0/wasm32-wasip2/release/fixture_contract_010.wasm")
        .display()
        .to_string()
}

/// The 0.1.0 contract is frozen: plugins in the field were built against
/// exactly this text, so a change to it would hide a break of theirs
/// (the fixture is rebuilt from it).
#[test]
fn the_0_1_0_contract_is_frozen() {
    use sha2::Digest;
    let wit =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("wit/0.1.0/plugin.wit")).unwrap();
    let hex: String = sha2::Sha256::digest(&wit)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        hex, "8bbba97b8859519d55fdae48eaad42a69ee5ec5e9999d77527ebab5fb477b6cf",
        "wit/0.1.0/plugin.wit changed: add a new version instead"
    );
}

#[test]
fn a_plugin_built_against_0_1_0_runs_its_hooks_in_the_0_2_0_host() {
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[plugin]]\nname = \"old\"\npath = \"{}\"\non_error = \"tempfail\"\n\n{}",
        fixture(),
        plugin_toml(
            "dmarc-policy",
            "dmarc_policy.wasm",
            "on_error = \"tempfail\""
        )
    );
    let s = Server::start(&cfg);
    let loaded = s.wait_for_log("plugin loaded", 2);
    let contract_of = |name: &str| {
        loaded
            .iter()
            .find(|l| l.contains(&format!("\"plugin\":\"{name}\"")))
            .unwrap_or_else(|| panic!("{name} in {loaded:?}"))
            .clone()
    };
    assert!(
        contract_of("old").contains("\"contract\":\"wasmtp:plugin@0.1.0\""),
        "{loaded:?}"
    );
    assert!(
        contract_of("dmarc-policy").contains("\"contract\":\"wasmtp:plugin@0.2.0\""),
        "{loaded:?}"
    );

    // Its reject verdict, with its own text and the size it read through the 0.1.0 message
    // resource, reaches the client.
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let body = b"From: <a@example.test>\r\nSubject: please reject this\r\n\r\nhello\r\n";
    let r = c.send_message("a@example.test", &["u@example.test"], body);
    assert_eq!(r.code, 550, "{r:?}");
    let text = r.text();
    let size: u64 = text
        .strip_prefix("5.7.1 contract 0.1.0 fixture rejects: size=")
        .unwrap_or_else(|| panic!("{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    // The message it saw carries our Received field on top of what the client sent.
    assert!(size > body.len() as u64, "{text}");

    // Any other message: its header modification is applied, and the 0.2.0 plugin after it
    // in the chain runs too.
    let r = c.send_message(
        "a@example.test",
        &["u@example.test"],
        b"From: <a@example.test>\r\nSubject: hello\r\n\r\nhello\r\n",
    );
    queue_id(&r);
    let msg = String::from_utf8(s.wait_for_mail("u", 1).remove(0)).unwrap();
    assert!(msg.contains("\nX-Contract-010: size="), "{msg}");
    assert!(msg.contains("\nX-DMARC-Policy: "), "{msg}");

    // The metric counts the set's plugins per contract version.
    let metrics = get_metrics(s.admin.as_deref().expect("admin listening logged"));
    for want in [
        "wasmtp_plugins_loaded{contract=\"wasmtp:plugin@0.1.0\"} 1",
        "wasmtp_plugins_loaded{contract=\"wasmtp:plugin@0.2.0\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} in {metrics}");
    }
}

/// GET /metrics from the admin endpoint at `addr`, the body.
fn get_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

#[test]
fn inspect_names_the_contract_version_and_whether_it_is_served() {
    let out = Command::new(BIN)
        .args(["plugin", "inspect"])
        .arg(fixture())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("contract:  wasmtp:plugin@0.1.0 (served)"),
        "{text}"
    );
    assert!(text.contains("wasmtp:plugin/hooks@0.1.0"), "{text}");
}

#[test]
fn plugin_test_replays_a_0_1_0_plugin_offline() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("reject.toml");
    std::fs::write(
        &case,
        "message_text = \"Subject: please reject\\n\\nhello\\n\"\n\
         [expect]\nresult = \"refused at data\"\n\
         [expect.data]\nverdict = \"reject\"\nreply = \"550 5.7.1 contract 0.1.0 fixture rejects: size=\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["plugin", "test"])
        .arg(fixture())
        .arg(&case)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 case(s) passed"), "{text}");
}

/// A component that exports every hook of `wasmtp:plugin/hooks@0.2.0` by name, but at other
/// types (tests/fixtures/hooks-mistyped/, built by scripts/test), is refused at load, naming the
/// first hook that differs. The host checks a plugin's hook types on its first instance and
/// calls the hooks of later instances without checking again, so this check is all that keeps a
/// `connect(string) -> string` from being called as if it took a connection.
#[test]
fn a_plugin_whose_hooks_have_other_types_is_refused_at_load() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/target/hooks-mistyped/wasm32-wasip2/release/fixture_hooks_mistyped.wasm");
    let plugin = format!(
        "[[plugin]]\nname = \"mistyped\"\npath = \"{}\"\nhooks = [\"connect\"]\n",
        path.display()
    );
    let (ok, err) = check_plugin_config(&plugin);
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!(
            "plugin mistyped: {} is not a usable WebAssembly component: its hooks do not have the types of wasmtp:plugin@0.2.0 (connect: ",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("rebuild it against the contract's WIT"),
        "{err}"
    );
}
