//! Operations: the admin endpoint of a running server, scraped by a real
//! Prometheus (Debian's `prometheus`, started here on a free port with a
//! temp config and store), and the `wasmtp queue` / `wasmtp status` CLI
//! against a live server whose mail is held back by a tempfailing upstream.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::outbound::{Event, Upstream, wait_until};
use crate::support::{BIN, Client, Server, plugin_toml, require_tool};

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// `wasmtp ARGS --config <the server's config>`.
fn wasmtp(s: &Server, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(s.config_file())
        .output()
        .unwrap()
}

/// Runs a CLI command that must succeed; returns its stdout.
fn ok(s: &Server, args: &[&str]) -> String {
    let out = wasmtp(s, args);
    assert!(
        out.status.success(),
        "wasmtp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One HTTP/1.1 request over TCP; returns the status code and body.
pub(crate) fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (code, body)
}

fn send(s: &Server, from: &str, to: &str, subject: &str) -> String {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.send_message(
        from,
        &[to],
        format!("From: {from}\r\nSubject: {subject}\r\n\r\nbody\r\n").as_bytes(),
    );
    c.cmd("QUIT", 221);
    crate::support::queue_id(&r)
}

// ------------------------------------------------------------- Prometheus

/// A private Prometheus scraping `target` every second.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let bin = require_tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: wasmtp\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of an instant query with one result, if it has one yet.
    fn value(&self, query: &str) -> Option<f64> {
        let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let addr = format!("127.0.0.1:{}", self.port);
        let mut c = TcpStream::connect(&addr).ok()?;
        write!(
            c,
            "GET /api/v1/query?query={q} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        c.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` is `want`; returns the last value seen.
    fn wait_for(&self, s: &Server, query: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.value(query);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: {query} = {got:?}, expected {want}; log:\n{}",
                s.dump_logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_messages_and_plugin_calls() {
    let s = Server::start(&format!(
        "{ADMIN}\n{}",
        plugin_toml("spam-score", "spam_score.wasm", "hooks = [\"data\"]")
    ));
    let admin = s.admin.clone().expect("admin listening logged");
    let prom = Prometheus::start(&admin);
    const N: usize = 3;
    for i in 0..N {
        send(&s, "a@example.test", "b@example.test", &format!("m{i}"));
    }
    // A message refused at RCPT is not counted as accepted.
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c.cmd("RCPT TO:<x@elsewhere.test>", 550);
    c.cmd("QUIT", 221);
    s.wait_for_mail("b", N);

    prom.wait_for(&s, "sum(wasmtp_messages_accepted_total)", N as f64);
    prom.wait_for(
        &s,
        "wasmtp_plugin_calls_total{plugin=\"spam-score\",hook=\"data\"}",
        N as f64,
    );
    prom.wait_for(
        &s,
        "wasmtp_deliveries_total{outcome=\"delivered\",route=\"local\"}",
        N as f64,
    );
    // Every accepted message's commit was timed (no DSN was queued here).
    prom.wait_for(&s, "wasmtp_queue_commit_duration_seconds_count", N as f64);
    prom.wait_for(&s, "up{job=\"wasmtp\"}", 1.0);

    // The text itself: names, labels and types as documented.
    let (code, text) = http(&admin, "GET", "/metrics", None);
    assert_eq!(code, 200);
    for line in [
        "# TYPE wasmtp_messages_accepted_total counter",
        "wasmtp_smtp_replies_total{command=\"RCPT\",class=\"5xx\"} 1",
        "wasmtp_connections_total{listener=\"mx\",result=\"accepted\"} 4",
        "# TYPE wasmtp_plugin_call_duration_seconds histogram",
        "# TYPE wasmtp_queue_commit_duration_seconds histogram",
        "wasmtp_plugin_verdicts_total{plugin=\"spam-score\",hook=\"data\",verdict=\"continue\"} 3",
        "wasmtp_queue_messages{state=\"held\"} 0",
        "wasmtp_sessions_open 0",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }

    // status: the plugin set with the digest of the file loaded.
    let out = ok(&s, &["status"]);
    let digest =
        wasmtp::plugin::file_digest(Path::new(&crate::support::plugin_wasm("spam_score.wasm")))
            .unwrap();
    assert!(out.contains(&format!("sha256:{digest}")), "{out}");
    assert!(out.contains("set generation 1"), "{out}");
    assert!(
        out.contains(&format!("mx             mx           {}", s.addr)),
        "{out}"
    );
    assert!(out.contains(", ready"), "{out}");
    assert!(out.contains("calls 3"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&ok(&s, &["status", "--json"])).unwrap();
    assert_eq!(v["plugins"]["plugins"][0]["digest"], digest.as_str());
    // spam-score's init touches no capability: its instances start from the snapshot.
    assert_eq!(v["plugins"]["plugins"][0]["snapshot"], true);
    assert!(out.contains("init snapshot"), "{out}");
    assert!(v["uptime_seconds"].as_u64().is_some());
    assert_eq!(http(&admin, "GET", "/healthz", None), (200, "ok\n".into()));
    assert_eq!(
        http(&admin, "GET", "/readyz", None),
        (200, "ready\n".into())
    );
}

// ------------------------------------------------------------- the queue CLI

/// Messages the list shows, by id: (state, whole line).
fn listed(s: &Server, filter: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["queue", "list"];
    args.extend_from_slice(filter);
    ok(s, &args)
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("queue is empty") && !l.starts_with('('))
        .map(|l| {
            (
                l.split_whitespace().next().unwrap().to_string(),
                l.to_string(),
            )
        })
        .collect()
}

/// A server with the admin endpoint that relays `remote.test` to an
/// upstream answering 451 to every RCPT until the flag is set; retries
/// `retry` apart.
fn behind_tempfailing_upstream(retry: &str) -> (Server, Upstream, Arc<AtomicBool>) {
    let accepting = Arc::new(AtomicBool::new(false));
    let a = accepting.clone();
    let up = Upstream::start(move |e| match e {
        Event::Rcpt(_) if !a.load(Ordering::SeqCst) => Some("451 4.3.0 Try again later".into()),
        _ => None,
    });
    let s = Server::start(&format!(
        "{ADMIN}\n[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n[queue]\nretry_intervals = [\"{retry}\"]\n\n\
         [[outbound.route]]\ndomain = \"remote.test\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
        up.port
    ));
    (s, up, accepting)
}

#[test]
fn queue_commands_on_mail_held_by_a_tempfailing_upstream() {
    // Retries an hour apart: only the CLI makes a second attempt happen.
    let (s, up, accepting) = behind_tempfailing_upstream("1h");
    let ids: Vec<String> = ["retry", "hold", "delete", "domain"]
        .iter()
        .map(|n| send(&s, "app@example.test", &format!("{n}@remote.test"), n))
        .collect();
    let [retried, held, deleted, by_domain] = [&ids[0], &ids[1], &ids[2], &ids[3]];
    s.wait_for_log("\"deferred\"", 4);

    // list: every message, deferred, with the upstream's answer.
    let rows = listed(&s, &[]);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (id, line) in &rows {
        assert!(ids.contains(id), "{line}");
        assert!(line.contains("deferred"), "{line}");
        assert!(line.contains("<app@example.test>"), "{line}");
        assert!(line.contains("451 4.3.0 Try again later"), "{line}");
        assert!(line.contains("in 59m") || line.contains("in 1h"), "{line}");
    }
    let filtered = listed(&s, &["--rcpt", "hold@"]);
    assert_eq!(filtered.len(), 1);
    assert_eq!(&filtered[0].0, held);
    assert_eq!(listed(&s, &["--domain", "other.test"]).len(), 0);
    assert_eq!(listed(&s, &["--older-than", "1h"]).len(), 0);
    assert_eq!(listed(&s, &["--sender", "app@"]).len(), 4);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&s, &["queue", "list", "--json"])).unwrap();
    assert_eq!(json["messages"].as_array().unwrap().len(), 4);
    assert_eq!(json["matched"], 4);
    // --limit: the oldest N, and the list says how many matched.
    let text = ok(&s, &["queue", "list", "--limit", "2"]);
    assert!(
        text.contains("(2 of 4 matching messages shown, the oldest; --limit shows more)"),
        "{text}"
    );
    let first_two: Vec<String> = listed(&s, &["--limit", "2"])
        .into_iter()
        .map(|r| r.0)
        .collect();
    let all: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(first_two, all[..2]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&s, &["queue", "list", "--json", "--limit", "1"])).unwrap();
    assert_eq!(
        (json["messages"].as_array().unwrap().len(), &json["matched"]),
        (1, &serde_json::json!(4))
    );
    let (code, body) = http(s.admin.as_ref().unwrap(), "GET", "/queue?limit=0", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("limit"), "{body}");

    // show: envelope, recipient state, the reply, headers.
    let show = ok(&s, &["queue", "show", retried]);
    assert!(show.contains("state:        deferred"), "{show}");
    assert!(
        show.contains("retry@remote.test  pending, 1 attempt(s), route remote"),
        "{show}"
    );
    assert!(
        show.contains("last reply: 451 4.3.0 Try again later"),
        "{show}"
    );
    assert!(show.contains("Subject: retry"), "{show}");

    // summary: by destination domain and state.
    let summary = ok(&s, &["queue", "summary"]);
    assert!(
        summary.contains("4 message(s): queued 0, active 0, deferred 4, held 0"),
        "{summary}"
    );
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with("remote.test") && l.split_whitespace().nth(1) == Some("4")),
        "{summary}"
    );

    // hold and delete.
    assert_eq!(ok(&s, &["queue", "hold", held]), format!("hold: {held}\n"));
    assert_eq!(listed(&s, &["--state", "held"]).len(), 1);
    assert_eq!(
        ok(&s, &["queue", "delete", deleted]),
        format!("delete: {deleted}\n")
    );
    let out = wasmtp(&s, &["queue", "show", deleted]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("error: no message {deleted} in the queue\n")
    );

    // The upstream takes mail now: a retry delivers at once (not in an hour).
    accepting.store(true, Ordering::SeqCst);
    ok(&s, &["queue", "retry", retried]);
    let got = up.wait_accepted(1, &s);
    assert_eq!(got[0].rcpts, ["RCPT TO:<retry@remote.test>"]);
    wait_until(&s, "the retried message to leave the queue", || {
        !listed(&s, &[]).iter().any(|(id, _)| id == retried)
    });

    // retry --all leaves the held one alone; a retry of it by id is refused.
    let out = ok(&s, &["queue", "retry", "--domain", "remote.test"]);
    assert_eq!(out, format!("retry: {by_domain}\n"));
    up.wait_accepted(2, &s);
    let out = wasmtp(&s, &["queue", "retry", held]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is held"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        up.wait_accepted(2, &s).len(),
        2,
        "the held message went out"
    );
    assert_eq!(listed(&s, &[]).len(), 1);

    // bounce: a failure DSN in the local sender's mailbox, then it is gone.
    ok(&s, &["queue", "bounce", held]);
    let dsn = s.wait_for_mail("app", 1);
    let dsn = String::from_utf8_lossy(&dsn[0]);
    assert!(
        dsn.contains("Subject: Undelivered Mail Returned to Sender"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; hold@remote.test"),
        "{dsn}"
    );
    assert!(
        dsn.contains("removed from the queue by the mail system's administrator"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Subject: hold"),
        "the message comes back: {dsn}"
    );
    // The DSN is readable in the Maildir once renamed into new/; the queue
    // drops it after the sync that makes it durable.
    wait_until(&s, "the DSN to leave the queue", || {
        listed(&s, &[]).is_empty()
    });
    assert_eq!(up.wait_accepted(2, &s).len(), 2);

    // A finished message is gone for the CLI too.
    let id = send(&s, "app@example.test", "late@remote.test", "late");
    up.wait_accepted(3, &s);
    assert!(
        wasmtp(&s, &["queue", "hold", &id]).status.code() == Some(1),
        "finished messages are gone"
    );
    let (code, body) = http(s.admin.as_ref().unwrap(), "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        body.contains("wasmtp_queue_admin_actions_total{action=\"bounce\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("wasmtp_dsns_sent_total{kind=\"failure\"} 1"),
        "{body}"
    );
}

#[test]
fn hold_parks_a_message_until_release() {
    let (s, up, accepting) = behind_tempfailing_upstream("1s");
    let id = send(&s, "app@example.test", "far@remote.test", "parked");
    s.wait_for_log("\"deferred\"", 1);
    ok(&s, &["queue", "hold", &id]);
    accepting.store(true, Ordering::SeqCst);
    // Several retry intervals pass: the held message stays.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(up.wait_accepted(0, &s).len(), 0);
    let rows = listed(&s, &[]);
    assert!(rows[0].1.contains(" held "), "{rows:?}");
    ok(&s, &["queue", "release", &id]);
    up.wait_accepted(1, &s);
}

#[test]
fn messages_beyond_the_delivery_workers_wait_in_line_and_obey_commands() {
    // One worker, and an upstream that holds the first RCPT until released:
    // one message is in delivery, the rest wait for the worker.
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let up = Upstream::start(move |e| {
        if let Event::Rcpt(_) = e {
            let until = Instant::now() + Duration::from_secs(60);
            while !r.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        None
    });
    let s = Server::start(&format!(
        "{ADMIN}\n[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n[queue]\ndelivery_workers = 1\n\n\
         [[outbound.route]]\ndomain = \"remote.test\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
        up.port
    ));
    let admin = s.admin.clone().expect("admin listening logged");
    let ids: Vec<String> = (0..4)
        .map(|i| {
            send(
                &s,
                "app@example.test",
                &format!("r{i}@remote.test"),
                "in line",
            )
        })
        .collect();
    wait_until(&s, "one delivery in progress, three waiting", || {
        let (_, body) = http(&admin, "GET", "/metrics", None);
        body.lines().any(|l| l == "wasmtp_delivery_waiting 3")
    });
    // The depth gauges (counted off the queue manager, from the store and
    // the ids in delivery) agree.
    let (_, body) = http(&admin, "GET", "/metrics", None);
    for (state, n) in [("active", 1), ("queued", 3), ("deferred", 0)] {
        let line = format!("wasmtp_queue_messages{{state=\"{state}\"}} {n}");
        assert!(body.lines().any(|l| l == line), "{line} in:\n{body}");
    }
    let rows = listed(&s, &[]);
    let active: Vec<_> = rows
        .iter()
        .filter(|(_, l)| l.contains(" active "))
        .collect();
    assert_eq!(active.len(), 1, "{rows:?}");
    assert_eq!(
        active[0].0, ids[0],
        "the first message is the one in delivery"
    );
    // A waiting message is not in delivery: hold and delete apply at once
    // (a command on a message in delivery waits for the attempt to end, and
    // this one does not end until released).
    ok(&s, &["queue", "hold", &ids[1]]);
    ok(&s, &["queue", "delete", &ids[2]]);
    let rows = listed(&s, &[]);
    assert!(
        rows.iter()
            .any(|(id, l)| id == &ids[1] && l.contains(" held ")),
        "{rows:?}"
    );
    assert!(!rows.iter().any(|(id, _)| id == &ids[2]), "{rows:?}");
    let (_, body) = http(&admin, "GET", "/metrics", None);
    assert!(
        body.lines().any(|l| l == "wasmtp_delivery_waiting 1"),
        "{body}"
    );

    release.store(true, Ordering::SeqCst);
    let got = up.wait_accepted(2, &s);
    let mut rcpts: Vec<String> = got.iter().flat_map(|t| t.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts.len(), 2, "{rcpts:?}");
    assert!(
        rcpts[0].contains("r0@remote.test") && rcpts[1].contains("r3@remote.test"),
        "{rcpts:?}"
    );
    wait_until(&s, "only the held message left", || {
        listed(&s, &[]).len() == 1
    });
    let (_, body) = http(&admin, "GET", "/metrics", None);
    assert!(
        body.lines().any(|l| l == "wasmtp_delivery_waiting 0"),
        "{body}"
    );
    // The scrapes counted the queue; none of that is an operator's command:
    // only the hold and the delete are logged and counted as actions.
    assert_eq!(
        s.log_lines("\"queue command\"").len(),
        2,
        "{}",
        s.dump_logs()
    );
    let actions: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("wasmtp_queue_admin_actions_total{"))
        .collect();
    assert_eq!(actions.len(), 2, "{actions:?}");
}

// ------------------------------------------------------------- access

#[test]
fn token_is_required_and_the_cli_sends_it() {
    let token = "s3cret-token-0123456789";
    let s = Server::start(&format!("{ADMIN}token = \"{token}\"\n"));
    let admin = s.admin.clone().unwrap();
    for path in ["/metrics", "/status", "/queue", "/healthz"] {
        assert_eq!(http(&admin, "GET", path, None).0, 401, "{path}");
        assert_eq!(
            http(&admin, "GET", path, Some("wrong-token-0123456789")).0,
            401
        );
    }
    assert_eq!(http(&admin, "GET", "/healthz", Some(token)).0, 200);
    assert!(ok(&s, &["status"]).contains("ready"));
    assert!(ok(&s, &["queue", "list"]).contains("queue is empty"));

    // The CLI with another token is told so.
    let other = s.dir.path().join("other.toml");
    let text = std::fs::read_to_string(s.config_file()).unwrap();
    std::fs::write(&other, text.replace(token, "another-token-0123456789")).unwrap();
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused the request"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_unix_socket_endpoint_serves_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    let s = Server::start(&format!("[admin]\nlisten = \"unix:{}\"\n", sock.display()));
    assert_eq!(
        s.admin.as_deref(),
        Some(format!("unix:{}", sock.display()).as_str())
    );
    assert!(ok(&s, &["status"]).contains(", ready"));
    assert!(ok(&s, &["queue", "summary"]).contains("0 message(s)"));
}

#[test]
fn non_loopback_without_token_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"0.0.0.0:9025\"\n",
    )
    .unwrap();
    let out = crate::support::check_config_file(&cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":5:1: key `admin.listen`"), "{err}");
    assert!(err.contains("admin.token"), "{err}");
    std::fs::write(
        &cfg,
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"0.0.0.0:9025\"\ntoken = \"0123456789abcdef\"\n",
    )
    .unwrap();
    assert!(crate::support::check_config_file(&cfg).status.success());
}

#[test]
fn cli_says_when_the_server_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndata_dir = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["queue", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: cannot reach the admin endpoint at 127.0.0.1:{port}: is wasmtp running?"
        )),
        "{err}"
    );
}

/// Metric names in a text (`wasmtp_...`), histogram series reduced to
/// their family.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, _) in text.match_indices("wasmtp_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .map_or(name.clone(), String::from);
        if name.len() > "wasmtp_".len() {
            names.insert(name);
        }
    }
    names
}

#[test]
fn every_metric_is_documented_and_the_dashboard_uses_real_ones() {
    let code = metric_names(&std::fs::read_to_string("src/metrics.rs").unwrap());
    let docs = metric_names(&std::fs::read_to_string("docs/operations.md").unwrap());
    let dashboard = std::fs::read_to_string("docs/grafana-wasmtp.json").unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).unwrap();
    let dashboard = metric_names(&dashboard);
    assert!(code.len() > 20, "{code:?}");
    let undocumented: Vec<_> = code.difference(&docs).collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/operations.md: {undocumented:?}"
    );
    let unknown: Vec<_> = docs
        .union(&dashboard)
        .filter(|n| !code.contains(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "named in the docs or dashboard but never recorded: {unknown:?}"
    );
}
