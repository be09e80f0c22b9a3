//! Test support: the real `wasmtp` binary on a port chosen at run time, a
//! temp data dir, and a line-level SMTP client that reads like a transcript.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_wasmtp");

/// A running server process.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// Every listener's address by name, as logged at start.
    pub addrs: HashMap<String, SocketAddr>,
    /// The admin endpoint as logged at start (`admin listening`), if on.
    pub admin: Option<String>,
    child: Option<Child>,
    pub logs: Arc<Mutex<Vec<String>>>,
    extra: String,
    /// More `serve` arguments.
    args: Vec<String>,
    /// The executable (`BIN` unless `start_from`).
    exe: PathBuf,
}

/// Extra config adding a submission and a submissions listener on port 0.
pub const SUBMISSION_LISTENERS: &str = "[[listener]]\nname = \"submission\"\naddress = \"127.0.0.1:0\"\nrole = \"submission\"\n\n[[listener]]\nname = \"submissions\"\naddress = \"127.0.0.1:0\"\nrole = \"submissions\"\n\n";

/// Config for tests: one listener (mx) on port 0, data in the temp dir;
/// `extra` may add more `[[listener]]`s.
pub fn config_text(dir: &Path, extra: &str) -> String {
    let mut s = format!(
        "[server]\nhostname = \"mx.test\"\ndata_dir = \"{}\"\n\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\n",
        dir.join("data").display()
    );
    if !extra.contains("[local]") {
        s.push_str("[local]\ndomains = [\"example.test\", \"localhost\"]\ncatch_all = true\n\n");
    }
    s.push_str(extra);
    s
}

impl Server {
    /// Starts with the test config plus `extra` TOML.
    pub fn start(extra: &str) -> Server {
        Server::start_with_args(extra, &[])
    }

    /// As `start`, with more `serve` arguments.
    pub fn start_with_args(extra: &str, args: &[&str]) -> Server {
        Server::launch(Path::new(BIN), extra, args)
    }

    /// The same, running the executable `exe` (a copy or link of `BIN`).
    pub fn start_from(exe: &Path, extra: &str) -> Server {
        Server::launch(exe, extra, &[])
    }

    fn launch(exe: &Path, extra: &str, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Server {
            dir,
            addr: "127.0.0.1:0".parse().unwrap(),
            addrs: HashMap::new(),
            admin: None,
            child: None,
            logs: Arc::default(),
            extra: extra.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            exe: exe.to_path_buf(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let cfg = self.dir.path().join("wasmtp.toml");
        std::fs::write(&cfg, config_text(self.dir.path(), &self.extra)).unwrap();
        let mut child = Command::new(&self.exe)
            .args(["serve", "--log-format", "json", "--config"])
            .arg(&cfg)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wasmtp");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let field = |k: &str| {
                        v["fields"][k]
                            .as_str()
                            .or(v[k].as_str())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let msg = v["fields"]["message"]
                        .as_str()
                        .or(v["message"].as_str())
                        .unwrap_or_default()
                        .to_string();
                    if msg == "listening" {
                        let _ = tx.send(Some((field("listener"), field("addr"))));
                    } else if msg == "admin listening" {
                        let _ = tx.send(Some((String::new(), field("addr"))));
                    } else if msg == "wasmtp ready" {
                        let _ = tx.send(None);
                    }
                }
                logs.lock().unwrap().push(line);
            }
        });
        self.addrs.clear();
        let mut first = None;
        loop {
            // Generous: a JavaScript or Python component (12-18 MB) takes a debug build of the
            // host tens of seconds to compile on a busy 2-core machine.
            let got = rx
                .recv_timeout(Duration::from_secs(180))
                .unwrap_or_else(|_| {
                    panic!(
                        "server did not start; log:\n{}",
                        self.logs.lock().unwrap().join("\n")
                    )
                });
            let Some((name, addr)) = got else { break };
            if name.is_empty() {
                self.admin = Some(addr);
                continue;
            }
            let addr: SocketAddr = addr.parse().unwrap();
            first.get_or_insert(addr);
            self.addrs.insert(name, addr);
        }
        self.addr = first.expect("at least one listener");
        self.child = Some(child);
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn maildir(&self, mailbox: &str) -> PathBuf {
        self.data().join("mail").join(mailbox)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// kill -9, then start again on the same data dir.
    pub fn kill9_and_restart(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        self.spawn();
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: &str) -> std::process::ExitStatus {
        let pid = self.pid();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.wait_exit()
    }

    /// Starts the server again on the same data dir after it exited.
    /// Sends SIGHUP: the server reloads its config (and plugin set).
    pub fn hup(&self) {
        let st = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Replaces `from` with `to` in the config file (which must contain it), then reloads.
    pub fn reload_with(&self, from: &str, to: &str) {
        let cfg = self.config_file();
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains(from), "{from:?} not in the config:\n{text}");
        std::fs::write(&cfg, text.replace(from, to)).unwrap();
        self.hup();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// Starts again on the same data dir, with `extra` as its config now.
    pub fn start_again_with(&mut self, extra: &str) {
        self.extra = extra.to_string();
        self.start_again();
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The address of the listener called `name`.
    pub fn addr_of(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name:?}: {:?}", self.addrs))
    }

    /// The test config file.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("wasmtp.toml")
    }

    /// `wasmtp user ARGS` on this server's config with `stdin` piped in.
    pub fn user_cmd(&self, args: &[&str], stdin: &str) -> std::process::Output {
        let mut child = Command::new(BIN)
            .arg("user")
            .args(args)
            .arg("--config")
            .arg(self.config_file())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command that reads no password (del, list) may exit before
        // the write: a broken pipe here is not the test's business.
        let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
        child.wait_with_output().unwrap()
    }

    /// Adds a user through the CLI (the running server picks it up).
    pub fn add_user(&self, name: &str, password: &str) {
        let out = self.user_cmd(&["add", name], &format!("{password}\n"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The self-signed certificate the server generated, as PEM path.
    pub fn self_signed_cert(&self) -> PathBuf {
        self.data().join("tls").join("selfsigned.crt")
    }

    /// Log lines (JSON) containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits until `n` log lines contain `needle` (the log is read by a
    /// thread, so a line can trail the reply it explains).
    pub fn wait_for_log(&self, needle: &str, n: usize) -> Vec<String> {
        self.wait_for_n(
            n,
            || self.log_lines(needle),
            || format!("log lines with {needle:?}"),
        )
    }

    /// Waits until `n` log events have exactly `message` and returns them
    /// all: a line the server wrote before a mailbox file appeared can
    /// still be in the pipe when the file is seen.
    pub fn wait_for_events(&self, message: &str, n: usize) -> Vec<serde_json::Value> {
        self.wait_for_n(n, || self.events(message), || format!("{message:?} events"))
    }

    /// Polls `get` until it returns at least `n` items (20 s at most, then
    /// fails with the log).
    fn wait_for_n<T>(
        &self,
        n: usize,
        get: impl Fn() -> Vec<T>,
        what: impl Fn() -> String,
    ) -> Vec<T> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let items = get();
            if items.len() >= n {
                return items;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {n} {}:\n{}",
                what(),
                self.dump_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Log events whose message is exactly `message`, parsed.
    pub fn events(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| field(v, "message") == message)
            .collect()
    }

    /// Sends a message to `marker@example.test` in a session of its own and
    /// waits until its `message accepted` line is in the log and it is in
    /// the `marker` mailbox. Whatever an earlier session could have caused
    /// at accept time is logged before that line, so after this call an
    /// absence can be asserted instead of waiting a fixed time.
    pub fn marker(&self) -> String {
        let before = self.mail("marker").len();
        let mut c = Client::greeted(self.addr);
        c.cmd("EHLO marker.test", 250);
        let id = queue_id(&c.send_message(
            "marker@example.test",
            &["marker@example.test"],
            b"From: marker@example.test\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <marker@example.test>\r\nSubject: marker\r\n\r\nmarker\r\n",
        ));
        c.cmd("QUIT", 221);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .events("message accepted")
            .iter()
            .any(|v| field(v, "queue_id") == id)
            || self.mail("marker").len() <= before
        {
            assert!(
                Instant::now() < deadline,
                "marker {id} not seen\n{}",
                self.dump_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        id
    }

    pub fn dump_logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// True once every message accepted so far has had a delivery attempt
    /// for each of its recipients (`delivered`, `deferred` or `bounced` in
    /// the log): no copy of it can still turn up in a mailbox.
    pub fn settled(&self) -> bool {
        let mut outcomes: HashMap<String, usize> = HashMap::new();
        for m in ["delivered", "deferred", "bounced"] {
            for v in self.events(m) {
                *outcomes.entry(field(&v, "queue_id")).or_default() += 1;
            }
        }
        self.events("message accepted").iter().all(|v| {
            let n: usize = field(v, "nrcpt").parse().unwrap_or(1);
            outcomes.get(&field(v, "queue_id")).copied().unwrap_or(0) >= n
        })
    }

    /// Waits until `mailbox` holds `n` messages and every accepted message
    /// had its delivery attempt, then checks there are exactly `n`; returns
    /// their contents sorted by file name.
    pub fn wait_for_mail(&self, mailbox: &str, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.mail(mailbox);
            assert!(
                got.len() <= n,
                "{} messages in {mailbox}, expected {n}",
                got.len()
            );
            if got.len() == n && self.settled() {
                let got = self.mail(mailbox);
                assert_eq!(got.len(), n, "more messages than expected in {mailbox}");
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{mailbox}: {} of {n} messages arrived\n{}",
                got.len(),
                self.dump_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Messages currently in `mailbox`'s new/ directory.
    pub fn mail(&self, mailbox: &str) -> Vec<Vec<u8>> {
        let dir = self.maildir(mailbox).join("new");
        let mut names: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => return Vec::new(),
        };
        names.sort();
        names.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    /// Every message in every mailbox.
    pub fn all_mail(&self) -> Vec<Vec<u8>> {
        let root = self.data().join("mail");
        let Ok(rd) = std::fs::read_dir(&root) else {
            return Vec::new();
        };
        rd.flat_map(|e| self.mail(&e.unwrap().file_name().to_string_lossy()))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A reply as read off the wire.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A byte stream the client can speak SMTP over (TCP or TLS over TCP).
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A transcript-style SMTP client over a real socket, optionally TLS.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<Box<dyn Stream>>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(Box::new(stream.try_clone().unwrap()) as Box<dyn Stream>);
        Client { stream, reader }
    }

    /// Connects with implicit TLS (the submissions role) and reads the greeting.
    pub fn connect_tls(addr: SocketAddr, sni: &str) -> Client {
        let mut c = Client::connect(addr);
        c.start_tls(sni);
        c.expect(220);
        c
    }

    /// Wraps the connection in TLS now (after a 220 to STARTTLS, or at
    /// once for implicit TLS). Anything the server sent in plaintext but
    /// that was not read yet is a test failure.
    pub fn start_tls(&mut self, sni: &str) {
        assert!(
            self.reader.buffer().is_empty(),
            "unread plaintext before TLS: {:?}",
            String::from_utf8_lossy(self.reader.buffer())
        );
        let conn = rustls::ClientConnection::new(
            tls_client_config(),
            rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap(),
        )
        .unwrap();
        let tcp = self.stream.try_clone().unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Complete the handshake now so failures show up here.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        self.reader = BufReader::new(Box::new(tls) as Box<dyn Stream>);
    }

    /// Completes a TLS handshake and returns the server's leaf certificate (DER).
    pub fn peer_cert(addr: SocketAddr, sni: &str, starttls: bool) -> Vec<u8> {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        if starttls {
            let mut c = Client::connect(addr);
            c.expect(220);
            c.cmd("EHLO cert.test", 250);
            c.cmd("STARTTLS", 220);
            tcp = c.stream;
        }
        let mut conn = rustls::ClientConnection::new(
            tls_client_config(),
            rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap(),
        )
        .unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).expect("TLS handshake");
        }
        conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// Connects and reads the 220 greeting.
    pub fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.expect(220);
        c
    }

    /// Writes raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.reader.get_mut().write_all(bytes).expect("write");
        self.reader.get_mut().flush().expect("flush");
        self
    }

    /// Writes one command line (CRLF added).
    pub fn send(&mut self, line: &str) -> &mut Self {
        self.raw(format!("{line}\r\n").as_bytes())
    }

    /// Reads one (possibly multi-line) reply.
    pub fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = self.reader.read_until(b'\n', &mut buf).expect("read reply");
            assert!(
                n > 0,
                "connection closed while waiting for a reply (got {lines:?})"
            );
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Reply { code, lines };
            }
        }
    }

    /// Reads a reply and checks its code.
    pub fn expect(&mut self, code: u16) -> Reply {
        let r = self.reply();
        assert_eq!(r.code, code, "expected {code}, got {r:?}");
        r
    }

    /// Sends a command and checks the reply code.
    pub fn cmd(&mut self, line: &str, code: u16) -> Reply {
        self.send(line);
        self.expect(code)
    }

    /// True once the server closed the connection with nothing more to
    /// say: reads to EOF and fails the test if any byte arrives first (a
    /// reply the test did not expect is not a clean close).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let ok = self.reader.read_to_end(&mut rest).is_ok();
        assert!(
            rest.is_empty(),
            "bytes before the close: {:?}",
            String::from_utf8_lossy(&rest)
        );
        ok
    }

    /// EHLO, MAIL, RCPT (each 250), DATA with `body` (already dot-stuffed,
    /// ending in CRLF); returns the final reply.
    pub fn send_message(&mut self, from: &str, to: &[&str], body: &[u8]) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>"), 250);
        for t in to {
            self.cmd(&format!("RCPT TO:<{t}>"), 250);
        }
        self.cmd("DATA", 354);
        self.raw(body).raw(b".\r\n");
        self.reply()
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// A second handle on the socket, to write from another thread while
    /// this one reads replies.
    pub fn stream_clone(&self) -> TcpStream {
        self.stream.try_clone().expect("clone socket")
    }
}

/// A field of a JSON log event: its own fields first, then its span's
/// (`queue_id`, `session`), as text.
pub fn field(v: &serde_json::Value, key: &str) -> String {
    let found = [&v[key], &v["fields"][key], &v["span"][key]]
        .into_iter()
        .find(|f| !f.is_null())
        .cloned()
        .or_else(|| {
            v["spans"]
                .as_array()?
                .iter()
                .rev()
                .map(|s| s[key].clone())
                .find(|f| !f.is_null())
        });
    match found {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// The queue id from a `250 2.0.0 Ok: queued as ID` reply.
pub fn queue_id(r: &Reply) -> String {
    assert_eq!(r.code, 250, "{r:?}");
    r.text().rsplit(' ').next().unwrap().to_string()
}

/// The body part of a delivered message (after the first blank line).
pub fn body_of(msg: &[u8]) -> &[u8] {
    let i = msg
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("header/body separator");
    &msg[i + 2..]
}

/// Fails with a clear message when an external tool the test needs is
/// missing (the README's test command installs it).
pub fn require_tool(name: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} is not installed: run the README's test command (scripts/test), which installs it"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Reads everything a child wrote, for error messages.
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// Absolute path of a built plugin component (`scripts/test` builds them).
pub fn plugin_wasm(file: &str) -> String {
    let dir = if file.starts_with("python/") || file.starts_with("js/") {
        "plugins/target"
    } else {
        "plugins/target/wasm32-wasip2/release"
    };
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(file);
    assert!(
        p.exists(),
        "{} is missing: build the plugins (scripts/test does)",
        p.display()
    );
    p.display().to_string()
}

/// A `[[plugin]]` table.
pub fn plugin_toml(name: &str, file: &str, rest: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\npath = \"{}\"\n{rest}\n",
        plugin_wasm(file)
    )
}

/// `wasmtp check-config FILE`.
pub fn check_config_file(file: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap()
}

/// `wasmtp check-config` on a config with one listener, data in a temp dir,
/// and `plugin`; returns whether it passed and what it printed on stderr.
pub fn check_plugin_config(plugin: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndata_dir = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n{plugin}",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = check_config_file(&cfg);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A session that said `EHLO client.test` and `MAIL FROM:<a@example.test>`.
pub fn in_transaction(s: &Server) -> Client {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<a@example.test>", 250);
    c
}

/// A `[[plugin]]` table for the probe fixture (`plugins/fixtures/probe`),
/// granted what it imports; `rest` may add keys and `[plugin.config]`.
pub fn probe_toml(name: &str, hooks: &[&str], rest: &str) -> String {
    let hooks: Vec<String> = hooks.iter().map(|h| format!("\"{h}\"")).collect();
    plugin_toml(
        name,
        "fixture_probe.wasm",
        &format!(
            "hooks = [{}]\ngrants = [\"kv\", \"clock\"]\n{rest}",
            hooks.join(", ")
        ),
    )
}

/// A TLS client config that accepts any certificate: the tests check which
/// certificate was served by comparing it with the files.
pub fn tls_client_config() -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AcceptAny(rustls::crypto::CryptoProvider);
    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = rustls::crypto::ring::default_provider();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider.clone()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    std::sync::Arc::new(cfg)
}

/// The DER of the first certificate in a PEM file.
pub fn pem_cert_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

/// base64 (for AUTH PLAIN responses).
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
