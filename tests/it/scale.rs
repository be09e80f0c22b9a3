//! Scale-out: several wasmtp nodes sharing plugin state through a real
//! Redis (Debian's redis-server, installed by scripts/test, started here on
//! a loopback port with no persistence). The kv semantics test runs one
//! body against both backends.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::outbound::free_port;
use crate::support::{Client, Server, plugin_toml, probe_toml, require_tool};

/// A redis-server child on a loopback port; stopped on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// More redis-server arguments; `{port}` and `{dir}` are filled in.
    args: Vec<String>,
}

impl RedisServer {
    /// Starts on a free port, waiting for its `Ready to accept connections`.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&["--port", "{port}"])
    }

    /// TLS only (`rediss://`), with a password: a certificate for
    /// 127.0.0.1 generated into its directory (`ca.pem`, also its CA).
    pub fn start_tls(password: &str) -> RedisServer {
        RedisServer::start_with(&[
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-cert-file",
            "{dir}/ca.pem",
            "--tls-key-file",
            "{dir}/key.pem",
            "--tls-ca-cert-file",
            "{dir}/ca.pem",
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ])
    }

    fn start_with(args: &[&str]) -> RedisServer {
        let mut r = RedisServer {
            port: 0,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        std::fs::write(r.dir.path().join("ca.pem"), ck.cert.pem()).unwrap();
        std::fs::write(r.dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        for _ in 0..5 {
            r.port = free_port();
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start on a free port");
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) -> bool {
        let bin = require_tool("redis-server");
        let mut child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--logfile",
                "",
            ])
            .args(self.args.iter().map(|a| {
                a.replace("{port}", &self.port.to_string())
                    .replace("{dir}", &self.dir.path().display().to_string())
            }))
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(true);
                }
            }
            let _ = tx.send(false);
        });
        let ready = rx.recv_timeout(Duration::from_secs(20)).unwrap_or(false);
        if ready {
            self.child = Some(child);
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
        ready
    }

    /// Stops it (its data goes: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `kill -SIG` (STOP stalls it with its sockets open, CONT resumes).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Starts it again on the same port.
    pub fn start_again(&mut self) {
        assert!(self.spawn(), "redis-server did not start again");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `[kv]` for a node sharing `redis`.
fn kv_redis(redis: &RedisServer) -> String {
    format!(
        "[kv]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"200ms\"\n\n",
        redis.url()
    )
}

/// rate-limit counting every client (no exemptions) at mail-from.
fn rate_limit(max_messages: u32) -> String {
    plugin_toml(
        "rate-limit",
        "rate_limit.wasm",
        &format!(
            "hooks = [\"mail-from\"]\ngrants = [\"kv\"]\n[plugin.config]\nexempt = []\nmax_connections = 0\nmax_messages = {max_messages}\nwindow_secs = 3600\n"
        ),
    )
}

/// greylist with no allowlist and a one-second delay.
fn greylist(rest: &str) -> String {
    plugin_toml(
        "greylist",
        "greylist.wasm",
        &format!(
            "hooks = [\"rcpt\"]\ngrants = [\"kv\", \"clock\"]\n[plugin.config]\nallow_ips = []\ndelay_secs = 1\n{rest}"
        ),
    )
}

fn nodes(n: usize, cfg: &str) -> Vec<Server> {
    (0..n).map(|_| Server::start(cfg)).collect()
}

/// MAIL FROM in a fresh session on `addr`; the reply.
fn mail_from(addr: SocketAddr) -> (u16, String) {
    let mut c = Client::greeted(addr);
    c.cmd("EHLO client.test", 250);
    c.send("MAIL FROM:<sender@remote.example>");
    let r = c.reply();
    (r.code, r.text())
}

/// MAIL then RCPT in a fresh session on `addr`; the RCPT reply.
fn rcpt(addr: SocketAddr, to: &str) -> (u16, String) {
    let mut c = Client::greeted(addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<sender@remote.example>", 250);
    c.send(&format!("RCPT TO:<{to}>"));
    let r = c.reply();
    (r.code, r.text())
}

#[test]
fn shared_rate_limit_holds_across_three_nodes() {
    let redis = RedisServer::start();
    let n = nodes(3, &(kv_redis(&redis) + &rate_limit(4)));
    // Nine messages spread round robin: four pass, then every node refuses,
    // though no node saw more than three (per-node counting would let all
    // nine through).
    let got: Vec<(usize, u16, String)> = (0..9)
        .map(|i| {
            let (code, text) = mail_from(n[i % 3].addr);
            (i % 3, code, text)
        })
        .collect();
    let codes: Vec<u16> = got.iter().map(|g| g.1).collect();
    assert_eq!(
        codes,
        [250, 250, 250, 250, 451, 451, 451, 451, 451],
        "{got:?}"
    );
    for (node, code, text) in &got[4..] {
        assert_eq!(*code, 451, "node {node}");
        assert!(text.starts_with("4.7.1 Message rate exceeded"), "{text}");
    }
    let refused_on: std::collections::BTreeSet<usize> = got[4..].iter().map(|g| g.0).collect();
    assert_eq!(refused_on.len(), 3, "{got:?}");
}

#[test]
fn greylisted_on_one_node_passes_on_another_after_the_delay() {
    let redis = RedisServer::start();
    let n = nodes(3, &(kv_redis(&redis) + &greylist("")));
    let first = Instant::now();
    let (code, text) = rcpt(n[0].addr, "user@example.test");
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.7.1 Greylisted"), "{text}");
    // B knows the triplet: it is still in its delay, not new.
    let (code, text) = rcpt(n[1].addr, "user@example.test");
    assert_eq!(code, 451, "{text}");
    // Retried on B until the delay is over (greylist answers 451 until then).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = rcpt(n[1].addr, "user@example.test");
        if code == 250 {
            break;
        }
        assert!(text.starts_with("4.7.1 Greylisted"), "{text}");
        assert!(Instant::now() < deadline, "never passed on node B");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(first.elapsed() >= Duration::from_secs(1));
    // Remembered cluster-wide: C lets it through at once; another recipient
    // is new everywhere.
    assert_eq!(rcpt(n[2].addr, "user@example.test").0, 250);
    assert_eq!(rcpt(n[2].addr, "other@example.test").0, 451);
}

#[test]
fn redis_outage_nodes_keep_serving_and_state_returns() {
    let mut redis = RedisServer::start();
    let cfg = kv_redis(&redis) + &rate_limit(2) + &greylist("on_kv_error = \"tempfail\"\n");
    let n = nodes(2, &cfg);
    let (a, b) = (n[0].addr, n[1].addr);
    assert_eq!(mail_from(a).0, 250);
    assert_eq!(mail_from(b).0, 250);
    assert_eq!(mail_from(a).0, 451, "the shared limit of 2 is spent");

    redis.stop();
    // rate-limit fails open: the spent limit no longer refuses; greylist
    // was configured to fail closed: 451 4.3.0. Both nodes answer.
    for addr in [a, b] {
        assert_eq!(mail_from(addr).0, 250);
        let (code, text) = rcpt(addr, "user@example.test");
        assert_eq!(code, 451, "{text}");
        assert!(text.starts_with("4.3.0 Greylisting unavailable"), "{text}");
    }
    n[0].wait_for_log("kv backend unreachable", 1);
    assert!(!n[0].log_lines("rate-limit: kv error, letting").is_empty());

    redis.start_again();
    for s in &n {
        s.wait_for_log("kv backend reachable again", 1);
    }
    // State is shared again (the restarted Redis starts empty): greylist
    // knows nothing, the count starts over and holds across both nodes.
    let (code, text) = rcpt(a, "user@example.test");
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.7.1 Greylisted"), "{text}");
    assert_eq!(mail_from(b).0, 250);
    let (code, text) = mail_from(a);
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.7.1 Message rate exceeded"), "{text}");
}

#[test]
fn a_stalled_redis_fails_kv_calls_within_the_timeout() {
    let redis = RedisServer::start();
    // kv.timeout (200ms) is inside the plugin's deadline (2s): the plugin
    // itself sees the error and applies its documented behaviour (fail
    // open: 250), rather than timing out into on_error (tempfail: 451).
    let cfg = kv_redis(&redis)
        + &rate_limit(1).replace(
            "hooks = ",
            "on_error = \"tempfail\"\ntimeout = \"2s\"\nhooks = ",
        );
    let s = Server::start(&cfg);
    assert_eq!(mail_from(s.addr).0, 250);
    assert_eq!(mail_from(s.addr).0, 451);
    redis.signal("STOP");
    let (code, text) = mail_from(s.addr);
    assert_eq!(code, 250, "{text}");
    s.wait_for_log("kv backend unreachable", 1);
    s.wait_for_log("rate-limit: kv error, letting", 1);
    redis.signal("CONT");
    s.wait_for_log("kv backend reachable again", 1);
    // The count survived the stall: still over the limit.
    let (code, text) = mail_from(s.addr);
    assert_eq!(code, 451, "{text}");
}

#[test]
fn cluster_connection_limit_counts_every_node() {
    let redis = RedisServer::start();
    let cfg = kv_redis(&redis).replace(
        "timeout = \"200ms\"\n",
        "timeout = \"200ms\"\ncluster_max_connections_per_ip = 2\n",
    );
    let n = nodes(2, &cfg);
    let mut open = vec![Client::greeted(n[0].addr), Client::greeted(n[1].addr)];
    // A third connection, on either node, is refused while two are open.
    for s in &n {
        let mut c = Client::connect(s.addr);
        let r = c.expect(421);
        assert!(r.text().contains("4.7.0"), "{r:?}");
    }
    // Closing one frees a slot cluster-wide (released in the background).
    open.pop().unwrap().cmd("QUIT", 221);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = Client::connect(n[0].addr);
        if c.reply().code == 220 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    n[0].wait_for_log("kv.cluster_max_connections_per_ip", 1);
}

/// Runs `steps` (probe steps separated by `.`, spelled in the sender's
/// quoted local part) at mail-from and returns what the probe reported.
fn probe(s: &Server, steps: &str) -> String {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.cmd(
        &format!("MAIL FROM:<\"{steps}.tempfail\"@remote.example>"),
        451,
    );
    let text = r.text();
    text.split_once(' ')
        .map_or(text.clone(), |(_, t)| t.to_string())
}

/// The kv contract, one body for every backend.
fn kv_semantics(kv: &str) {
    let s = Server::start(
        &(kv.to_string()
            + &probe_toml(
                "p",
                &["mail-from"],
                "[plugin.config]\nmail-from = [\"@\"]\n",
            )),
    );
    let set = Instant::now();
    assert_eq!(probe(&s, "kv-set:s=v:1.kv-get:s"), "s=v");
    // incr creates with the TTL; a later TTL does not extend it.
    assert_eq!(probe(&s, "kv-add:c:5:1.kv-add:c:2:100"), "c=5 c=7");
    assert_eq!(probe(&s, "kv-get:c"), "c=7");
    assert_eq!(probe(&s, "kv-add:n:-3:"), "n=-3");
    assert_eq!(
        probe(&s, "kv-set:t=abc:.kv-add:t:1:"),
        "t=error:value is not an integer"
    );
    assert_eq!(
        probe(&s, "kv-add:big:9223372036854775807:.kv-add:big:1:"),
        "big=9223372036854775807 big=error:increment would overflow"
    );
    assert_eq!(
        probe(&s, "kv-set:p=keep:.kv-add:q:1:.kv-del:q.kv-get:q.kv-del:q"),
        "q=1 q=deleted q=none q=deleted"
    );
    // Both one-second keys expire together; the one without a TTL stays.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = probe(&s, "kv-get:s.kv-get:c.kv-get:p");
        if r == "s=none c=none p=keep" {
            break;
        }
        assert!(
            ["s=v c=7 p=keep", "s=none c=7 p=keep", "s=v c=none p=keep"].contains(&r.as_str()),
            "{r}"
        );
        assert!(Instant::now() < deadline, "never expired: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(set.elapsed() >= Duration::from_secs(1));
    // Expired counts as 0 and the new key has no TTL.
    assert_eq!(probe(&s, "kv-add:c:1:.kv-counter:c"), "c=1 c=1");
}

#[test]
fn rediss_with_a_password_a_database_and_a_private_ca() {
    let redis = RedisServer::start_tls("s3cret");
    let ca = redis.dir.path().join("ca.pem");
    let node = |url: String| {
        Server::start(&format!(
            "[kv]\nbackend = \"redis\"\nurl = \"{url}\"\ntls_ca_file = \"{}\"\n\n{}",
            ca.display(),
            probe_toml(
                "p",
                &["mail-from"],
                "[plugin.config]\nmail-from = [\"@\"]\n"
            )
        ))
    };
    let port = redis.port;
    let db3 = node(format!("rediss://:s3cret@127.0.0.1:{port}/3"));
    assert_eq!(probe(&db3, "kv-set:k=v:.kv-get:k"), "k=v");
    // The same plugin's key is not in database 0.
    let db0 = node(format!("rediss://:s3cret@127.0.0.1:{port}/0"));
    assert_eq!(probe(&db0, "kv-get:k"), "k=none");
    // A wrong password is an error the plugin sees, not a hang or a crash.
    let wrong = node(format!("rediss://:nope@127.0.0.1:{port}/3"));
    let r = probe(&wrong, "kv-get:k");
    assert!(r.starts_with("k=error:"), "{r}");
}

#[test]
fn kv_semantics_on_sled() {
    kv_semantics("");
}

#[test]
fn kv_semantics_on_redis() {
    let redis = RedisServer::start();
    kv_semantics(&kv_redis(&redis));
}
