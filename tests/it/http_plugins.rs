//! The `http` grant and the plugins built on it, against real peers on
//! loopback: an HTTP server this test runs (hyper), a listener that must
//! never see a connection, and a real rspamd (Debian's package, started
//! here with a minimal config in a temp dir).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::support::{Client, Server, plugin_toml, require_tool};

/// One request the test server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A real HTTP/1.1 server on loopback (hyper on a runtime of its own) that
/// records every request and answers the scripted (status, body) pairs in
/// order, then `200 ok`. It also counts TCP connections.
struct HttpPeer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HttpPeer {
    fn start(script: Vec<(u16, Vec<u8>)>) -> HttpPeer {
        HttpPeer::start_with(script, None)
    }

    /// The same over TLS with `tls`.
    fn start_with(script: Vec<(u16, Vec<u8>)>, tls: Option<Arc<rustls::ServerConfig>>) -> HttpPeer {
        let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let (conns, log) = (connections.clone(), seen.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    conns.fetch_add(1, Ordering::SeqCst);
                    let (log, script) = (log.clone(), script.clone());
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (log, script) = (log.clone(), script.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await?.to_bytes().to_vec();
                                log.lock().unwrap().push(Seen {
                                    method: parts.method.to_string(),
                                    path: parts.uri.path().to_string(),
                                    headers: parts
                                        .headers
                                        .iter()
                                        .map(|(k, v)| {
                                            (k.to_string(), v.to_str().unwrap_or("").to_string())
                                        })
                                        .collect(),
                                    body,
                                });
                                let (status, body) = script
                                    .lock()
                                    .unwrap()
                                    .next()
                                    .unwrap_or((200, b"ok".to_vec()));
                                Ok::<_, hyper::Error>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let http = hyper::server::conn::http1::Builder::new();
                        let _ = match tls {
                            Some(cfg) => {
                                let Ok(stream) =
                                    tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await
                                else {
                                    return;
                                };
                                let io = hyper_util::rt::TokioIo::new(stream);
                                http.serve_connection(io, service).await
                            }
                            None => {
                                let io = hyper_util::rt::TokioIo::new(stream);
                                http.serve_connection(io, service).await
                            }
                        };
                    });
                }
            });
        });
        HttpPeer {
            addr,
            connections,
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived.
    fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} requests arrived",
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `X-Http-Probe` value of the one message in `mailbox`.
fn probe_header(s: &Server, mailbox: &str) -> String {
    let mail = s.wait_for_mail(mailbox, 1);
    let text = String::from_utf8_lossy(&mail[0]).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("X-Http-Probe: "))
        .unwrap_or_else(|| panic!("no X-Http-Probe header in:\n{text}"))
        .to_string()
}

fn send_one(s: &Server, to: &str, body: &str) -> crate::support::Reply {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.send_message("a@example.test", &[to], body.as_bytes());
    c.cmd("QUIT", 221);
    r
}

fn accepted(r: crate::support::Reply) {
    assert_eq!(r.code, 250, "{r:?}");
}

const MESSAGE: &str = "From: a@example.test\r\nTo: b@example.test\r\nSubject: hello\r\nMessage-ID: <http-1@example.test>\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\n\r\nHello there.\r\n";

/// `GET path` from the admin endpoint.
fn admin_get(s: &Server, path: &str) -> String {
    crate::ops::http(s.admin.as_ref().expect("admin endpoint"), "GET", path, None).1
}

#[test]
fn http_grant_refuses_unlisted_hosts_before_any_connection() {
    let allowed = HttpPeer::start(vec![]);
    // The plugin asks for this one; it is not in allowed_hosts.
    let forbidden = HttpPeer::start(vec![]);
    let s = Server::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        plugin_toml(
            "probe",
            "fixture_http_probe.wasm",
            &format!(
                "http = {{ allowed_hosts = [\"{}\"] }}\n[plugin.config]\nurl = \"http://{}/x\"\n",
                allowed.addr, forbidden.addr
            ),
        )
    ));
    accepted(send_one(&s, "b@example.test", MESSAGE));
    assert_eq!(probe_header(&s, "b"), "err:ErrorCode::HttpRequestDenied");
    s.wait_for_log("plugin http call refused", 1);
    assert_eq!(forbidden.connections.load(Ordering::SeqCst), 0);
    assert!(forbidden.seen().is_empty());
    assert!(
        admin_get(&s, "/metrics")
            .contains("wasmtp_plugin_http_calls_total{plugin=\"probe\",outcome=\"denied\"} 1")
    );
}

#[test]
fn http_grant_without_the_table_refuses_the_plugin_at_load() {
    // (keys of the [[plugin]] table, what the refusal must say)
    let cases: [(&str, &[&str]); 3] = [
        (
            "[plugin.config]\nurl = \"http://127.0.0.1:1/\"\n",
            &[
                "plugin probe: its manifest says it needs the \"http\" grant: give it an `http` table",
            ],
        ),
        // "http" in `grants` is not enough: the table says where it may go.
        ("grants = [\"http\"]\n", &["key `grants`", "allowed_hosts"]),
        (
            "http = { allowed_hosts = [\"*.example.*\"] }\n",
            &["plugin.http.allowed_hosts"],
        ),
    ];
    for (keys, wanted) in cases {
        let (ok, err) = crate::support::check_plugin_config(&plugin_toml(
            "probe",
            "fixture_http_probe.wasm",
            keys,
        ));
        assert!(!ok, "{keys}");
        for w in wanted {
            assert!(err.contains(w), "{keys}: {w} missing in {err}");
        }
    }
}

#[test]
fn http_grant_caps_response_size_and_calls_per_transaction() {
    let peer = HttpPeer::start(vec![(200, b"hello".to_vec()), (200, vec![b'x'; 8192])]);
    let s = Server::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        plugin_toml(
            "probe",
            "fixture_http_probe.wasm",
            &format!(
                "http = {{ allowed_hosts = [\"{}\"], max_response = \"4KiB\", max_calls = 2 }}\n[plugin.config]\nurl = \"http://{}/x\"\ncalls = 3\n",
                peer.addr, peer.addr
            ),
        )
    ));
    accepted(send_one(&s, "b@example.test", MESSAGE));
    assert_eq!(
        probe_header(&s, "b"),
        "200:5, err:ErrorCode::HttpResponseBodySize(Some(8192)), err:ErrorCode::ConnectionLimitReached"
    );
    // The third call never left the host.
    assert_eq!(peer.seen().len(), 2);
    s.wait_for_log("plugin.http.max_response", 1);
    s.wait_for_log("plugin.http.max_calls", 1);
    let metrics = admin_get(&s, "/metrics");
    for line in [
        "wasmtp_plugin_http_calls_total{plugin=\"probe\",outcome=\"ok\"} 1",
        "wasmtp_plugin_http_calls_total{plugin=\"probe\",outcome=\"too-large\"} 1",
        "wasmtp_plugin_http_calls_total{plugin=\"probe\",outcome=\"limit\"} 1",
        "wasmtp_limit_hits_total{limit=\"plugin.http.max_calls\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    // The cap is per transaction: the next message gets its calls again.
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    accepted(c.send_message("a@example.test", &["c@example.test"], MESSAGE.as_bytes()));
    let h = probe_header(&s, "c");
    assert!(
        h == "200:2, 200:2, err:ErrorCode::ConnectionLimitReached",
        "{h}"
    );
}

#[test]
fn http_grant_timeout_cuts_off_a_server_that_never_answers() {
    // Accepts the connection (so the request is sent) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in silent.incoming().flatten() {
            keep.lock().unwrap().push(c);
        }
    });
    let s = Server::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        plugin_toml(
            "probe",
            "fixture_http_probe.wasm",
            &format!(
                "timeout = \"10s\"\nhttp = {{ allowed_hosts = [\"{addr}\"], timeout = \"300ms\" }}\n[plugin.config]\nurl = \"http://{addr}/slow\"\n"
            ),
        )
    ));
    accepted(send_one(&s, "b@example.test", MESSAGE));
    assert_eq!(probe_header(&s, "b"), "err:ErrorCode::HttpResponseTimeout");
    assert_eq!(held.lock().unwrap().len(), 1);
    assert!(
        admin_get(&s, "/metrics")
            .contains("wasmtp_plugin_http_calls_total{plugin=\"probe\",outcome=\"timeout\"} 1")
    );
}

#[test]
fn https_requests_verify_the_server_against_public_roots_and_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let peer = HttpPeer::start_with(vec![], Some(Arc::new(cfg)));
    let port = peer.addr.port();
    let probe = |name: &str, ca_file: &str| {
        plugin_toml(
            name,
            "fixture_http_probe.wasm",
            &format!(
                "http = {{ allowed_hosts = [\"localhost:{port}\"]{ca_file} }}\n[plugin.config]\nurl = \"https://localhost:{port}/tls\"\n"
            ),
        )
    };
    // Trusted through ca_file: the request goes through.
    let s = Server::start(&probe(
        "probe",
        &format!(", ca_file = \"{}\"", ca.display()),
    ));
    accepted(send_one(&s, "b@example.test", MESSAGE));
    assert_eq!(probe_header(&s, "b"), "200:2");
    assert_eq!(peer.seen()[0].path, "/tls");
    drop(s);
    // The public roots alone do not know this certificate.
    let s = Server::start(&probe("probe", ""));
    accepted(send_one(&s, "b@example.test", MESSAGE));
    assert_eq!(probe_header(&s, "b"), "err:ErrorCode::TlsCertificateError");
    assert_eq!(peer.seen().len(), 1);
}

#[test]
fn webhook_posts_notifications_as_json_and_retries_after_a_500() {
    let peer = HttpPeer::start(vec![(500, b"busy".to_vec())]);
    let s = Server::start(&plugin_toml(
        "webhook",
        "webhook.wasm",
        &format!(
            "hooks = [\"delivered\"]\ntimeouts = {{ delivered = \"10s\" }}\nhttp = {{ allowed_hosts = [\"{}\"] }}\n[plugin.config]\nurl = \"http://{}/events?src=wasmtp\"\nretry_delay_ms = 10\nheaders = {{ Authorization = \"Bearer t0ken\" }}\n",
            peer.addr, peer.addr
        ),
    ));
    let id = crate::support::queue_id(&send_one(&s, "b@example.test", MESSAGE));
    let seen = peer.wait_for(2);
    s.wait_for_log("webhook: try 1 failed (HTTP 500)", 1);
    for r in &seen {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/events"));
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "authorization" && v == "Bearer t0ken"),
            "{:?}",
            r.headers
        );
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/json")
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["event"], "delivered");
        assert_eq!(v["queue_id"], id.as_str());
        assert_eq!(v["sender"], "a@example.test");
        assert_eq!(v["recipient"], "b@example.test");
        assert_eq!(v["attempts"], 1);
    }
    // Posted once it succeeded: no third request for b. The marker message
    // is delivered after it, and its own notification arrives.
    s.marker();
    let seen = peer.wait_for(3);
    let recipient = |r: &Seen| {
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["recipient"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let for_b = seen.iter().filter(|r| recipient(r) == "b@example.test");
    assert_eq!(for_b.count(), 2, "{seen:?}");
    assert_eq!(recipient(&seen[2]), "marker@example.test");
}

/// A real rspamd on a loopback port, with a config of its own: no Redis,
/// no DNS, no rules but its built-in GTUBE check.
struct Rspamd {
    child: Child,
    url: String,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Rspamd {
    fn start() -> Rspamd {
        let bin = require_tool("rspamd");
        let dir = tempfile::tempdir().unwrap();
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let d = dir.path().display();
        let conf = dir.path().join("rspamd.conf");
        std::fs::write(
            &conf,
            format!(
                "options {{\n  pidfile = \"{d}/rspamd.pid\";\n  dbdir = \"{d}\";\n  filters = \"\";\n  enable_test_patterns = true;\n  dns {{ nameserver = [\"127.0.0.1:1\"]; timeout = 0.1s; retransmits = 1; }}\n}}\nlogging {{ type = \"file\"; filename = \"{d}/rspamd.log\"; level = \"info\"; }}\nactions {{ reject = 15; add_header = 6; greylist = 4; }}\nworker \"normal\" {{\n  bind_socket = \"{addr}\";\n  count = 1;\n}}\n"
            ),
        )
        .unwrap();
        // -i: may run as root (the test machines do); -f: in the foreground.
        let child = Command::new(bin)
            .args(["-f", "-i", "-c"])
            .arg(&conf)
            .env("TMPDIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Rspamd {
            child,
            url: format!("http://{addr}/checkv2"),
            addr,
            _dir: dir,
        };
        // Ready when its worker answers /ping.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(mut c) = std::net::TcpStream::connect(addr) {
                use std::io::{Read, Write};
                let _ = write!(
                    c,
                    "GET /ping HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                );
                let mut text = String::new();
                let _ = c.read_to_string(&mut text);
                if text.contains("pong") {
                    return r;
                }
            }
            let log = std::fs::read_to_string(r._dir.path().join("rspamd.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "rspamd did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        // SIGTERM lets the main process stop its workers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn rspamd_plugin_scores_messages_and_rejects_what_rspamd_rejects() {
    let rspamd = Rspamd::start();
    // A closed port for the fail-closed plugin: listed, so the request is
    // made and fails to connect.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = Server::start(&format!(
        "{}{}",
        plugin_toml(
            "rspamd",
            "rspamd.wasm",
            &format!(
                "timeout = \"10s\"\nhttp = {{ allowed_hosts = [\"{}\"], timeout = \"8s\" }}\n[plugin.config]\nurl = \"{}\"\n",
                rspamd.addr, rspamd.url
            ),
        ),
        plugin_toml(
            "rspamd-down",
            "rspamd.wasm",
            &format!(
                "timeout = \"10s\"\nhttp = {{ allowed_hosts = [\"{closed}\"] }}\n[plugin.config]\nurl = \"http://{closed}/checkv2\"\non_error = \"tempfail\"\n",
            ),
        ),
    ));
    // rspamd-down fails closed, after rspamd scored the message.
    let r = send_one(&s, "b@example.test", MESSAGE);
    assert_eq!(r.code, 451, "{}", r.text());
    assert!(r.text().contains("4.7.1"), "{}", r.text());
    s.wait_for_log("score 0.00 / 15.00", 1);
    drop(s);

    let s = Server::start(&plugin_toml(
        "rspamd",
        "rspamd.wasm",
        &format!(
            "timeout = \"10s\"\nhttp = {{ allowed_hosts = [\"{}\"], timeout = \"8s\" }}\n[plugin.config]\nurl = \"{}\"\n",
            rspamd.addr, rspamd.url
        ),
    ));
    accepted(send_one(&s, "b@example.test", MESSAGE));
    let mail = s.wait_for_mail("b", 1);
    let text = String::from_utf8_lossy(&mail[0]).into_owned();
    assert!(
        text.contains("X-Spam-Score: 0.00 / 15.00\n"),
        "no score header in:\n{text}"
    );
    assert!(!text.contains("X-Spam: Yes"), "{text}");
    // GTUBE: rspamd says reject.
    let gtube = "From: a@example.test\r\nSubject: test\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
    let r = send_one(&s, "c@example.test", gtube);
    assert_eq!(r.code, 550, "{}", r.text());
    assert!(r.text().contains("5.7.1 Gtube pattern"), "{}", r.text());
}
