//! Signed plugins and plugins shared through an OCI registry: the real
//! `wasmtp plugins` verbs on a real example plugin, the trust policy at load
//! (check-config and serve run the same loading path), and a real registry
//! (Debian's docker-registry) on loopback.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    BIN, Client, Server, check_plugin_config, plugin_wasm, queue_id, require_tool,
};

fn wasmtp(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .arg("plugins")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// A temp dir with a copy of spam_score.wasm (`plugin.wasm`) and key pairs.
struct Kit {
    dir: tempfile::TempDir,
}

impl Kit {
    fn new(keys: &[&str]) -> Kit {
        let kit = Kit {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::copy(plugin_wasm("spam_score.wasm"), kit.path("plugin.wasm")).unwrap();
        for k in keys {
            ok(kit.run(&["keygen", k]));
        }
        kit
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        wasmtp(self.dir.path(), args)
    }

    /// A copy of `from` with one byte of the code changed (the middle of the
    /// unsigned file, far from the signature sections appended at its end).
    fn tampered(&self, from: &str, to: &str) -> usize {
        let original_len = std::fs::metadata(plugin_wasm("spam_score.wasm"))
            .unwrap()
            .len();
        let mut bytes = std::fs::read(self.path(from)).unwrap();
        let at = original_len as usize / 2;
        bytes[at] ^= 0x01;
        std::fs::write(self.path(to), bytes).unwrap();
        at
    }

    /// A `[[plugin]]` for `file` and a `[plugin_trust]` trusting the public
    /// keys of the `trusted` key pairs.
    fn config(&self, file: &str, trusted: &[&str], required: bool) -> String {
        let keys: Vec<String> = trusted
            .iter()
            .map(|k| format!("\"{}.pub\"", self.path(k).display()))
            .collect();
        format!(
            "[plugin_trust]\ntrusted_keys = [{}]\nrequire_signature = {required}\n\n[[plugin]]\nname = \"spam-score\"\npath = \"{}\"\nhooks = [\"data\"]\n",
            keys.join(", "),
            self.path(file).display()
        )
    }
}

#[test]
fn keygen_sign_verify_and_a_changed_byte() {
    let kit = Kit::new(&["alice", "bob"]);
    let mode = std::fs::metadata(kit.path("alice"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "secret key mode {mode:o}");
    assert!(kit.path("alice.pub").exists());
    // Created exclusively: an existing key is never overwritten.
    let again = kit.run(&["keygen", "alice"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));

    let unsigned = kit.run(&["verify", "plugin.wasm"]);
    assert!(!unsigned.status.success());
    assert!(
        stderr(&unsigned).contains("not signed"),
        "{}",
        stderr(&unsigned)
    );

    ok(kit.run(&["sign", "plugin.wasm", "--key", "alice"]));
    let out = ok(kit.run(&["verify", "plugin.wasm", "--key", "alice.pub"]));
    assert!(out.contains("ok: signed by alice.pub"), "{out}");
    // A second signature is appended; both verify.
    ok(kit.run(&["sign", "plugin.wasm", "--key", "bob"]));
    let out = ok(kit.run(&[
        "verify",
        "plugin.wasm",
        "--key",
        "alice.pub",
        "--key",
        "bob.pub",
    ]));
    assert!(
        out.contains("signed by alice.pub") && out.contains("signed by bob.pub"),
        "{out}"
    );
    // Verify asked for a key that did not sign.
    ok(kit.run(&["keygen", "carol"]));
    let other = kit.run(&["verify", "plugin.wasm", "--key", "carol.pub"]);
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("not signed by"),
        "{}",
        stderr(&other)
    );

    kit.tampered("plugin.wasm", "tampered.wasm");
    let bad = kit.run(&["verify", "tampered.wasm", "--key", "alice.pub"]);
    assert!(!bad.status.success(), "{}", stdout(&bad));
    assert!(
        stderr(&bad).contains("2 of 2 signature(s) do not verify"),
        "{}",
        stderr(&bad)
    );
    // The signed file is still a component the server loads.
    let (loaded, err) = check_plugin_config(&kit.config("plugin.wasm", &["alice"], true));
    assert!(loaded, "{err}");
}

#[test]
fn trust_policy_at_load() {
    let kit = Kit::new(&["trusted", "stranger"]);
    std::fs::copy(kit.path("plugin.wasm"), kit.path("unsigned.wasm")).unwrap();
    ok(kit.run(&["sign", "plugin.wasm", "--key", "trusted"]));
    kit.tampered("plugin.wasm", "tampered.wasm");
    std::fs::copy(kit.path("unsigned.wasm"), kit.path("strange.wasm")).unwrap();
    ok(kit.run(&["sign", "strange.wasm", "--key", "stranger"]));

    // (file, required, loads, what the refusal says)
    let cases = [
        ("plugin.wasm", true, true, ""),
        (
            "tampered.wasm",
            true,
            false,
            "does not verify: the file changed",
        ),
        (
            "tampered.wasm",
            false,
            false,
            "does not verify: the file changed",
        ),
        (
            "unsigned.wasm",
            true,
            false,
            "not signed, and plugin_trust.require_signature = true",
        ),
        ("unsigned.wasm", false, true, ""),
        (
            "strange.wasm",
            true,
            false,
            "signed only by keys not in plugin_trust.trusted_keys",
        ),
        ("strange.wasm", false, true, ""),
    ];
    for (file, required, loads, says) in cases {
        let (loaded, err) = check_plugin_config(&kit.config(file, &["trusted"], required));
        assert_eq!(loaded, loads, "{file} required={required}: {err}");
        if !loads {
            let path = kit.path(file).display().to_string();
            assert!(
                err.contains("plugin spam-score: ") && err.contains(&path) && err.contains(says),
                "{file} required={required}: {err}"
            );
        }
    }

    // Requiring signatures with no key to check them against is a config error.
    let (loaded, err) = check_plugin_config(&kit.config("plugin.wasm", &[], true));
    assert!(!loaded);
    assert!(err.contains("plugin_trust.require_signature"), "{err}");
}

/// Debian's docker-registry on a free loopback port, storing in a temp dir.
pub(crate) struct Registry {
    child: Child,
    pub(crate) addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub(crate) fn start() -> Registry {
        let bin = require_tool("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message from `a@example.test` (EHLO client.test) to `u@example.test`, queued.
pub(crate) fn deliver_one(s: &Server) {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    queue_id(&c.send_message(
        "a@example.test",
        &["u@example.test"],
        b"Subject: hi\r\n\r\nhello\r\n",
    ));
}

pub(crate) fn pinned_sha256(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("sha256 = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no sha256 pin in {out}"))
        .to_string()
}

#[test]
fn push_pull_and_serve_a_signed_plugin_from_a_registry() {
    let mut registry = Registry::start();
    let kit = Kit::new(&["publisher"]);
    ok(kit.run(&["sign", "plugin.wasm", "--key", "publisher"]));
    let reference = format!("{}/wasmtp/spam-score:1.0", registry.addr);

    let pushed = ok(kit.run(&["push", "plugin.wasm", &reference]));
    let pin = pinned_sha256(&pushed);
    let out = ok(kit.run(&["pull", &reference, "-o", "pulled.wasm"]));
    assert_eq!(pinned_sha256(&out), pin, "{out}");
    assert!(out.contains(&format!("oci = \"{reference}\"")), "{out}");
    let signed = std::fs::read(kit.path("plugin.wasm")).unwrap();
    assert_eq!(std::fs::read(kit.path("pulled.wasm")).unwrap(), signed);
    let digest = ok(kit.run(&["digest", "pulled.wasm"]));
    assert!(digest.starts_with(&pin), "{digest} vs {pin}");
    ok(kit.run(&["verify", "pulled.wasm", "--key", "publisher.pub"]));

    // A pin that is not what the registry serves refuses the plugin.
    let wrong = format!(
        "[[plugin]]\nname = \"spam-score\"\noci = \"{reference}\"\nsha256 = \"{}\"\n",
        "0".repeat(64)
    );
    let (loaded, err) = check_plugin_config(&wrong);
    assert!(!loaded);
    assert!(err.contains(&format!("it has sha256 {pin}")), "{err}");

    // The server pulls it once, checks pin and signature, and runs it.
    let mut s = Server::start(&format!(
        "[plugin_trust]\ntrusted_keys = [\"{}\"]\nrequire_signature = true\n\n[[plugin]]\nname = \"spam-score\"\noci = \"{reference}\"\nsha256 = \"{pin}\"\nhooks = [\"data\"]\n",
        kit.path("publisher.pub").display()
    ));
    assert_eq!(s.log_lines("plugin pulled").len(), 1, "{}", s.dump_logs());
    assert_eq!(s.log_lines("plugin signature verified").len(), 1);
    let cached = s.data().join("plugins").join(format!("{pin}.wasm"));
    assert_eq!(std::fs::read(&cached).unwrap(), signed);
    let deliver = deliver_one;
    deliver(&s);
    let msg = String::from_utf8(s.wait_for_mail("u", 1).remove(0)).unwrap();
    assert!(msg.contains("\nX-Spam-Score: "), "{msg}");

    // Pulled once: with the registry gone, a restart loads the cached file.
    let _ = registry.child.kill();
    let _ = registry.child.wait();
    assert!(s.signal_and_wait("TERM").success());
    s.start_again();
    assert_eq!(s.log_lines("plugin pulled").len(), 1, "pulled again");
    deliver(&s);
    assert_eq!(s.wait_for_mail("u", 2).len(), 2);
}
