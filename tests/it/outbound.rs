//! Outbound delivery against real peers on loopback: smtp-sink and a
//! private Postfix (from Debian's postfix), a second wasmtp (STARTTLS with
//! its self-signed certificate, AUTH on its submission listener), Dovecot's
//! LMTP server, and a small SMTP responder in this file where the test must
//! control the answers (tempfail N times, refuse one recipient, hold DATA
//! open across a kill -9). Routes in config, so no DNS is needed.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Client, SUBMISSION_LISTENERS, Server, require_tool};

// ------------------------------------------------------------ the upstream

/// What the responder is asked to answer; `None` means the default.
pub(crate) enum Event<'a> {
    Ehlo,
    Mail,
    Rcpt(&'a str),
    /// The end of DATA of the n-th transaction that sent data (from 0).
    Dot(usize),
}

type Policy = Arc<dyn Fn(&Event) -> Option<String> + Send + Sync>;

/// One transaction as the responder saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tx {
    mail: String,
    pub(crate) rcpts: Vec<String>,
    /// The message, dot-unstuffed, without the end marker.
    data: Vec<u8>,
    /// The final reply was 2xx.
    accepted: bool,
    /// RCPT arrived in the same read as MAIL (the client pipelined).
    pipelined: bool,
}

#[derive(Debug, Default)]
struct Seen {
    connections: usize,
    commands: Vec<String>,
    transactions: Vec<Tx>,
}

/// A std::net SMTP server the test controls.
pub(crate) struct Upstream {
    pub(crate) port: u16,
    seen: Arc<Mutex<Seen>>,
}

const EHLO: &str = "250-upstream.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n";

impl Upstream {
    pub(crate) fn start(
        policy: impl Fn(&Event) -> Option<String> + Send + Sync + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let policy: Policy = Arc::new(policy);
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                s.lock().unwrap().connections += 1;
                let (s, policy) = (s.clone(), policy.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &policy, &s);
                });
            }
        });
        Upstream { port, seen }
    }

    fn accepting() -> Upstream {
        Upstream::start(|_| None)
    }

    fn accepted(&self) -> Vec<Tx> {
        let seen = self.seen.lock().unwrap();
        seen.transactions
            .iter()
            .filter(|t| t.accepted)
            .cloned()
            .collect()
    }

    fn transactions(&self) -> Vec<Tx> {
        self.seen.lock().unwrap().transactions.clone()
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }

    fn commands(&self) -> Vec<String> {
        self.seen.lock().unwrap().commands.clone()
    }

    /// Waits until `n` messages were accepted.
    pub(crate) fn wait_accepted(&self, n: usize, s: &Server) -> Vec<Tx> {
        wait_until(s, &format!("{n} accepted messages upstream"), || {
            self.accepted().len() >= n
        });
        self.accepted()
    }
}

fn serve(conn: TcpStream, policy: &Policy, seen: &Mutex<Seen>) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"220 upstream.test ESMTP test responder\r\n")?;
    let mut tx: Option<Tx> = None;
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        seen.lock().unwrap().commands.push(text.clone());
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" | "LHLO" => policy(&Event::Ehlo).unwrap_or(EHLO.into()),
            "HELO" => "250 upstream.test\r\n".into(),
            "MAIL" => {
                let reply = policy(&Event::Mail).unwrap_or("250 2.1.0 Ok".into());
                if reply.starts_with('2') {
                    tx = Some(Tx {
                        mail: text.clone(),
                        pipelined: !r.buffer().is_empty(),
                        ..Tx::default()
                    });
                }
                reply
            }
            "RCPT" => {
                let reply = policy(&Event::Rcpt(&text)).unwrap_or("250 2.1.5 Ok".into());
                match &mut tx {
                    Some(t) if reply.starts_with('2') => t.rcpts.push(text.clone()),
                    _ => {}
                }
                reply
            }
            "DATA" => match tx.take() {
                Some(mut t) if !t.rcpts.is_empty() => {
                    w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                    t.data = read_data(&mut r)?;
                    let n = {
                        let mut s = seen.lock().unwrap();
                        s.transactions.push(t);
                        s.transactions.len() - 1
                    };
                    let reply = policy(&Event::Dot(n)).unwrap_or("250 2.0.0 Ok: queued".into());
                    seen.lock().unwrap().transactions[n].accepted = reply.starts_with('2');
                    reply
                }
                _ => "554 5.5.1 Error: no valid recipients".into(),
            },
            "RSET" => {
                tx = None;
                "250 2.0.0 Ok".into()
            }
            "NOOP" => "250 2.0.0 Ok".into(),
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            _ => "502 5.5.2 Error: command not recognized".into(),
        };
        let reply = if reply.ends_with("\r\n") {
            reply
        } else {
            reply + "\r\n"
        };
        w.write_all(reply.as_bytes())?;
    }
}

/// DATA lines up to the end marker, unstuffed.
fn read_data(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" {
            return Ok(data);
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        data.extend_from_slice(line);
    }
}

// ------------------------------------------------------------ helpers

pub(crate) fn wait_until(s: &Server, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            s.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Log lines that contain every one of `needles`, once there is one.
fn wait_log(s: &Server, needles: &[&str]) -> Vec<String> {
    let matching = || {
        s.log_lines(needles[0])
            .into_iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .collect::<Vec<_>>()
    };
    wait_until(s, &format!("a log line with {needles:?}"), || {
        !matching().is_empty()
    });
    matching()
}

/// A sending wasmtp: trusts loopback to relay, retries after 1 s, and
/// routes `remote.test` to 127.0.0.1:`port` with `route` added to the
/// route's table (`outbound` goes into `[outbound]`).
fn sender(port: u16, route: &str, outbound: &str) -> Server {
    Server::start(&format!(
        "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n[queue]\nretry_intervals = [\"1s\"]\n\n\
         [outbound]\n{outbound}\n\n[[outbound.route]]\ndomain = \"remote.test\"\nhost = \"127.0.0.1\"\nport = {port}\n{route}\n"
    ))
}

/// Submits `body` from app@example.test to `to`; expects 250.
pub(crate) fn submit(s: &Server, to: &[&str], body: &[u8]) {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.send_message("app@example.test", to, body);
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT", 221);
}

/// The data an upstream got is the stored message: one `Received:` field
/// (ours) and our `Authentication-Results:` in front of exactly the bytes
/// submitted (unstuffed).
fn assert_exact(data: &[u8], submitted_wire: &[u8]) {
    let mut body = Vec::new();
    for line in submitted_wire.split_inclusive(|&b| b == b'\n') {
        body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    assert!(
        data.ends_with(&body),
        "data differs:\n{}",
        String::from_utf8_lossy(data)
    );
    let prefix = String::from_utf8_lossy(&data[..data.len() - body.len()]).into_owned();
    assert!(prefix.starts_with("Received: from client.test"), "{prefix}");
    assert!(prefix.contains("by mx.test (wasmtp)"), "{prefix}");
    let fields: Vec<&str> = prefix
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with('\t'))
        .collect();
    assert_eq!(fields.len(), 2, "{prefix}");
    assert!(
        fields[1].starts_with("Authentication-Results: mx.test;"),
        "{prefix}"
    );
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listen(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temp dir the peers' unprivileged users can traverse.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    dir
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

const MESSAGE: &[u8] = b"From: app@example.test\r\nTo: far@remote.test\r\nSubject: outbound\r\n\r\n..starts with a dot\r\n...two dots\r\n..\r\nnon-ASCII: \xc3\xa9\r\ntrailing spaces   \r\n\r\n";

// ------------------------------------------------------------ the tests

#[test]
fn relays_byte_exact_with_pipelining_and_extensions() {
    let up = Upstream::accepting();
    let s = sender(up.port, "tls = \"none\"", "");
    submit(&s, &["far@remote.test", "near@remote.test"], MESSAGE);
    let got = up.wait_accepted(1, &s);
    assert_eq!(got.len(), 1, "one transaction for both recipients");
    let tx = &got[0];
    assert_eq!(
        tx.rcpts,
        ["RCPT TO:<far@remote.test>", "RCPT TO:<near@remote.test>"]
    );
    assert!(
        tx.mail.starts_with("MAIL FROM:<app@example.test> SIZE="),
        "{}",
        tx.mail
    );
    assert!(tx.mail.contains(" BODY=8BITMIME"), "{}", tx.mail);
    assert!(!tx.mail.contains("SMTPUTF8"), "{}", tx.mail);
    assert!(tx.pipelined, "MAIL, RCPT and DATA in one write");
    assert_exact(&tx.data, MESSAGE);
    let lines = wait_log(&s, &["delivered", "far@remote.test"]);
    assert!(
        lines[0].contains("127.0.0.1[127.0.0.1] said: 250 2.0.0 Ok: queued"),
        "{}",
        lines[0]
    );
}

#[test]
fn connections_are_reused_with_rset_between_messages() {
    let up = Upstream::accepting();
    let s = sender(up.port, "tls = \"none\"", "");
    submit(&s, &["a@remote.test"], b"Subject: 1\r\n\r\none\r\n");
    up.wait_accepted(1, &s);
    submit(&s, &["b@remote.test"], b"Subject: 2\r\n\r\ntwo\r\n");
    up.wait_accepted(2, &s);
    assert_eq!(up.connections(), 1, "{:?}", up.commands());
    assert!(up.commands().iter().any(|c| c == "RSET"));
}

#[test]
fn tempfailed_twice_then_delivered_once() {
    let failures = Arc::new(AtomicUsize::new(0));
    let f = failures.clone();
    let up = Upstream::start(move |e| match e {
        Event::Dot(_) if f.fetch_add(1, Ordering::SeqCst) < 2 => {
            Some("451 4.3.0 Try again later".into())
        }
        _ => None,
    });
    let s = sender(up.port, "tls = \"none\"", "");
    submit(&s, &["far@remote.test"], b"Subject: retry\r\n\r\nagain\r\n");
    let got = up.wait_accepted(1, &s);
    assert_eq!(
        up.transactions().len(),
        3,
        "two tempfails, then the delivery"
    );
    assert!(got[0].data.ends_with(b"again\r\n"));
    let deferred = wait_log(&s, &["deferred", "far@remote.test"]);
    assert!(
        deferred[0].contains("said: 451 4.3.0 Try again later (in reply to end of data)"),
        "{}",
        deferred[0]
    );
    wait_log(&s, &["delivered", "far@remote.test"]);
    // Nothing more arrives after the delivery.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(up.transactions().len(), 3);
}

#[test]
fn a_refused_recipient_fails_alone() {
    let up = Upstream::start(|e| match e {
        Event::Rcpt(line) if line.contains("bad@") => {
            Some("550 5.1.1 <bad@remote.test>: Recipient address rejected: User unknown".into())
        }
        _ => None,
    });
    let s = sender(up.port, "tls = \"none\"", "");
    submit(
        &s,
        &["good@remote.test", "bad@remote.test"],
        b"Subject: two\r\n\r\nbody\r\n",
    );
    let got = up.wait_accepted(1, &s);
    assert_eq!(got[0].rcpts, ["RCPT TO:<good@remote.test>"]);
    wait_log(&s, &["delivered", "good@remote.test"]);
    let bounced = wait_log(&s, &["bounced", "bad@remote.test"]);
    assert!(
        bounced[0].contains("said: 550 5.1.1 <bad@remote.test>: Recipient address rejected: User unknown (in reply to RCPT TO)"),
        "{}",
        bounced[0]
    );
}

#[test]
fn size_smtputf8_and_loops_are_refused_before_sending() {
    let up = Upstream::start(|e| match e {
        Event::Ehlo => Some("250-upstream.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n".into()),
        _ => None,
    });
    let s = sender(up.port, "tls = \"none\"", "max_received = 3");
    // Over the upstream's SIZE.
    let big = format!(
        "Subject: big\r\n\r\n{}",
        ("x".repeat(70) + "\r\n").repeat(30)
    );
    submit(&s, &["big@remote.test"], big.as_bytes());
    let l = wait_log(&s, &["bounced", "big@remote.test"]);
    assert!(
        l[0].contains("exceeds the server's SIZE limit of 1000"),
        "{}",
        l[0]
    );
    // A UTF-8 recipient for a server without SMTPUTF8.
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<app@example.test> SMTPUTF8", 250);
    c.cmd("RCPT TO:<jürgen@remote.test>", 250);
    c.cmd("DATA", 354);
    c.raw(b"Subject: u\r\n\r\nu\r\n.\r\n").expect(250);
    let l = wait_log(&s, &["bounced", "SMTPUTF8"]);
    assert!(l[0].contains("does not offer"), "{}", l[0]);
    // Three Received fields plus ours: a loop, refused without connecting.
    let connections = up.connections();
    let looping =
        b"Received: from a\r\nReceived: from b\r\nReceived: from c\r\nSubject: loop\r\n\r\nx\r\n";
    submit(&s, &["loop@remote.test"], looping);
    let l = wait_log(&s, &["bounced", "loop@remote.test"]);
    assert!(l[0].contains("mail loop"), "{}", l[0]);
    assert_eq!(up.connections(), connections);
    assert!(up.transactions().is_empty(), "nothing was sent");
}

#[test]
fn kill_9_while_upstream_holds_data_then_delivered_after_restart() {
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let up = Upstream::start(move |e| match e {
        Event::Dot(0) => {
            // Hold the first transaction open after its data.
            let until = Instant::now() + Duration::from_secs(60);
            while !r.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        }
        _ => None,
    });
    let mut s = sender(up.port, "tls = \"none\"", "");
    submit(
        &s,
        &["far@remote.test"],
        b"Subject: crash\r\n\r\nsurvives\r\n",
    );
    wait_until(&s, "the data of the first transaction", || {
        !up.transactions().is_empty()
    });
    s.kill9_and_restart();
    let got = up.wait_accepted(1, &s);
    release.store(true, Ordering::SeqCst);
    assert!(got[0].data.ends_with(b"survives\r\n"));
    wait_log(&s, &["delivered", "far@remote.test"]);
    // The first copy never got its reply: at most that one transaction
    // went out twice.
    assert_eq!(up.transactions().len(), 2);
}

#[test]
fn relays_to_smtp_sink() {
    let sink = require_tool("smtp-sink");
    let dir = open_tempdir();
    let dump = dir.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    chmod(&dump, 0o777);
    let port = free_port();
    let mut cmd = Command::new(sink);
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    let child = cmd
        .arg("-d")
        .arg(format!("{}/%M.", dump.display()))
        .arg(format!("127.0.0.1:{port}"))
        .arg("10")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _sink = KillOnDrop(child);
    wait_listen(port, "smtp-sink");
    let s = sender(port, "", "");
    submit(&s, &["far@remote.test"], MESSAGE);
    wait_log(&s, &["delivered", "far@remote.test"]);
    // smtp-sink dumps with LF line ends after its own header lines.
    let read = || -> Option<String> {
        let entry = std::fs::read_dir(&dump).unwrap().next()?.ok()?;
        std::fs::read_to_string(entry.path()).ok()
    };
    let mut text = String::new();
    wait_until(&s, "the smtp-sink dump", || {
        text = read().unwrap_or_default();
        text.contains("trailing spaces")
    });
    let submitted = String::from_utf8(MESSAGE.to_vec())
        .unwrap()
        .replace("\r\n", "\n")
        .replace("\n.", "\n");
    // (Its dump ends with one more newline than the message.)
    assert!(text.ends_with(&format!("{submitted}\n")), "{text}");
    assert!(text.contains("X-Rcpt-Args: <far@remote.test>"), "{text}");
    assert!(text.contains("by mx.test (wasmtp)"), "{text}");
}

#[test]
fn relays_through_a_private_postfix() {
    require_tool("postfix");
    assert!(
        is_root(),
        "a private Postfix needs root (its master runs as root)"
    );
    let up = Upstream::accepting();
    let pf = Postfix::start(up.port);
    let s = sender(pf.port, "", "");
    submit(&s, &["far@remote.test"], MESSAGE);
    wait_log(
        &s,
        &[
            "delivered",
            "far@remote.test",
            "said: 250 2.0.0 Ok: queued as",
        ],
    );
    let got = up.wait_accepted(1, &s);
    let data = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(data.contains("by mx.test (wasmtp)"), "{data}");
    assert!(data.ends_with("trailing spaces   \r\n\r\n"), "{data}");
    assert!(got[0].rcpts[0].starts_with("RCPT TO:<far@remote.test>"));
}

/// A second wasmtp that takes mail for remote.test.
fn upstream_wasmtp(extra: &str) -> Server {
    Server::start(&format!(
        "{extra}[local]\ndomains = [\"remote.test\"]\ncatch_all = true\n"
    ))
}

#[test]
fn starttls_opportunistic_verify_and_ca_file() {
    let up = upstream_wasmtp("");
    let port = up.addr.port();
    // Opportunistic: any certificate.
    let s = sender(port, "tls = \"opportunistic\"", "");
    submit(
        &s,
        &["far@remote.test"],
        b"Subject: tls\r\n\r\nencrypted\r\n",
    );
    let got = up.wait_for_mail("far", 1);
    let text = String::from_utf8_lossy(&got[0]).into_owned();
    assert!(text.contains("with ESMTPS"), "{text}");
    drop(s);
    // Verify against the public roots: the self-signed certificate fails,
    // temporarily.
    let s = sender(port, "tls = \"verify\"", "");
    submit(&s, &["v@remote.test"], b"Subject: v\r\n\r\nv\r\n");
    let l = wait_log(&s, &["deferred", "v@remote.test"]);
    assert!(l[0].contains("TLS handshake failed"), "{}", l[0]);
    assert!(up.mail("v").is_empty());
    drop(s);
    // Verify with that certificate as the CA, by a name it carries.
    let s = Server::start(&format!(
        "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n[[outbound.route]]\ndomain = \"remote.test\"\n\
         host = \"localhost\"\nport = {port}\ntls = \"verify\"\nca_file = \"{}\"\n",
        up.self_signed_cert().display()
    ));
    submit(&s, &["ca@remote.test"], b"Subject: ca\r\n\r\nverified\r\n");
    up.wait_for_mail("ca", 1);
    wait_log(&s, &["delivered", "ca@remote.test"]);
}

#[test]
fn auth_to_a_smarthost_over_starttls() {
    let up = upstream_wasmtp(SUBMISSION_LISTENERS);
    up.add_user("relay", "pw-relay");
    let port = up.addr_of("submission").port();
    let auth = "tls = \"require\"\nauth_user = \"relay\"\nauth_password = \"pw-relay\"";
    let s = sender(port, auth, "");
    submit(
        &s,
        &["far@remote.test"],
        b"Subject: auth\r\n\r\nauthenticated\r\n",
    );
    let got = up.wait_for_mail("far", 1);
    let text = String::from_utf8_lossy(&got[0]).into_owned();
    assert!(text.contains("with ESMTPSA"), "{text}");
    drop(s);
    // A wrong password is the operator's to fix: deferred, not bounced.
    let s = sender(
        port,
        "tls = \"require\"\nauth_user = \"relay\"\nauth_password = \"wrong\"",
        "",
    );
    submit(&s, &["w@remote.test"], b"Subject: w\r\n\r\nw\r\n");
    let l = wait_log(&s, &["deferred", "w@remote.test"]);
    assert!(l[0].contains("in reply to AUTH"), "{}", l[0]);
}

// ------------------------------------------------------------ Dovecot LMTP

#[test]
fn local_lmtp_to_dovecot_over_quota_fails_alone() {
    let dv = Dovecot::start();
    let s = Server::start(&format!(
        "[local]\ndomains = [\"example.test\"]\ncatch_all = true\ndelivery = \"lmtp\"\nlmtp = \"unix:{}\"\n",
        dv.socket().display()
    ));
    let line = "x".repeat(70);
    let body = format!("Subject: lmtp\r\n\r\n{}", format!("{line}\r\n").repeat(50));
    submit(
        &s,
        &["Alice+tag@example.test", "bob@example.test"],
        body.as_bytes(),
    );
    let l = wait_log(&s, &["delivered", "Alice+tag@example.test"]);
    assert!(l[0].contains("Saved"), "{}", l[0]);
    let l = wait_log(&s, &["bounced", "bob@example.test"]);
    assert!(l[0].contains("552 5.2.2"), "{}", l[0]);
    let mail = dv.mail("alice");
    assert_eq!(mail.len(), 1);
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(text.contains("Subject: lmtp"), "{text}");
    assert_eq!(text.matches(&line).count(), 50, "{text}");
    assert!(dv.mail("bob").is_empty());
}

#[test]
fn lmtp_route_to_dovecot() {
    let dv = Dovecot::start();
    let s = Server::start(&format!(
        "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n[[outbound.route]]\ndomain = \"lmtp.test\"\nhost = \"127.0.0.1\"\nport = {}\nlmtp = true\ntls = \"none\"\n",
        dv.port
    ));
    submit(
        &s,
        &["alice@lmtp.test"],
        b"Subject: routed\r\n\r\nvia LMTP\r\n",
    );
    wait_log(&s, &["delivered", "alice@lmtp.test"]);
    assert_eq!(dv.mail("alice").len(), 1);
}

// ------------------------------------------------------------ peer processes

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private Postfix relaying everything to 127.0.0.1:`relay`: its own
/// config, queue and log in a temp dir (like ../shared/peers/postfix-up).
struct Postfix {
    dir: tempfile::TempDir,
    pub(crate) port: u16,
}

impl Postfix {
    fn start(relay: u16) -> Postfix {
        let dir = open_tempdir();
        let port = free_port();
        let d = dir.path();
        let etc = d.join("etc");
        for sub in ["etc", "spool", "data", "log"] {
            std::fs::create_dir(d.join(sub)).unwrap();
            chmod(&d.join(sub), 0o755);
        }
        let main_cf = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/spool\ndata_directory = {d}/data\n\
             mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = postfix.test\n\
             mydomain = test\nmydestination =\nlocal_recipient_maps =\nrelay_domains =\n\
             relayhost = [127.0.0.1]:{relay}\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject\n\
             smtpd_peername_lookup = no\nsmtp_dns_support_level = disabled\n\
             smtp_host_lookup = native\nsmtp_tls_security_level = none\n\
             smtpd_tls_security_level = none\nalias_maps =\nalias_database =\nbiff = no\n\
             local_transport = error:5.1.1 no local delivery here\n\
             maillog_file = {d}/log/maillog\nmaillog_file_prefixes = {d}/log\nnotify_classes =\n",
            d = d.display()
        );
        std::fs::write(etc.join("main.cf"), main_cf).unwrap();
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n\
             pickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\nrewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\nverify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\nproxymap unix - - n - - proxymap\n\
             smtp unix - - n - - smtp\nrelay unix - - n - - smtp\n\
             proxywrite unix - - n - 1 proxymap\ndiscard unix - - n - - discard\n\
             local unix - n n - - local\nvirtual unix - n n - - virtual\n\
             lmtp unix - - n - - lmtp\n\
             showq unix n - n - - showq\nerror unix - - n - - error\n\
             retry unix - - n - - error\nanvil unix - - n - 1 anvil\n\
             scache unix - - n - 1 scache\npostlog unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::write(etc.join("master.cf"), master_cf).unwrap();
        let postfix = |args: &[&str]| {
            Command::new("postfix")
                .arg("-c")
                .arg(&etc)
                .args(args)
                .output()
                .unwrap()
        };
        postfix(&["set-permissions"]);
        let out = postfix(&["start"]);
        assert!(
            out.status.success(),
            "postfix start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pf = Postfix { dir, port };
        wait_listen(port, "postfix");
        pf
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.dir.path().join("etc"))
            .arg("stop")
            .output();
        // The master exits shortly after; its pid file says when.
        let pid = self.dir.path().join("spool/pid/master.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(text) = std::fs::read_to_string(&pid) {
            let alive = Path::new(&format!("/proc/{}", text.trim())).exists();
            if !alive || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Dovecot with only LMTP, all state in a temp dir: users alice and bob
/// from a passwd-file (bob's quota is 1 KiB), Maildirs under `mail/`.
struct Dovecot {
    dir: tempfile::TempDir,
    pub(crate) port: u16,
    child: Option<Child>,
}

impl Dovecot {
    fn start() -> Dovecot {
        let bin = require_tool("dovecot");
        assert!(
            Path::new("/usr/lib/dovecot/lmtp").exists(),
            "dovecot-lmtpd is not installed: run scripts/test"
        );
        let dir = open_tempdir();
        let d = dir.path().to_path_buf();
        let port = free_port();
        std::fs::create_dir(d.join("mail")).unwrap();
        chmod(&d.join("mail"), 0o777);
        std::fs::write(
            d.join("passwd"),
            "alice:{PLAIN}x::::::\nbob:{PLAIN}x::::::userdb_quota_rule=*:storage=1\n",
        )
        .unwrap();
        let conf = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
             protocols = lmtp\nlisten = 127.0.0.1\nssl = no\nfirst_valid_uid = 1\n\
             auth_username_format = %Ln\n\
             passdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {d}/passwd\n  \
             default_fields = uid=nobody gid=nogroup home={d}/mail/%n\n}}\n\
             mail_location = maildir:~/Maildir\nmail_plugins = quota\n\
             plugin {{\n  quota = maildir:User quota\n  quota_rule = *:storage=100M\n}}\n\
             service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  \
             unix_listener lmtp {{\n    mode = 0666\n  }}\n}}\n",
            d = d.display()
        );
        std::fs::write(d.join("dovecot.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-F")
            .arg("-c")
            .arg(d.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let dv = Dovecot {
            dir,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dv.socket().exists() || TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot did not start: {}",
                std::fs::read_to_string(d.join("dovecot.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dv
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/lmtp")
    }

    /// Messages in `user`'s INBOX.
    fn mail(&self, user: &str) -> Vec<Vec<u8>> {
        let new = self.dir.path().join("mail").join(user).join("Maildir/new");
        let Ok(rd) = std::fs::read_dir(new) else {
            return Vec::new();
        };
        rd.map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM lets the master stop its children (auth, lmtp).
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
