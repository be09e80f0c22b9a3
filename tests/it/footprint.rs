//! What a connection costs the server (resident memory of the real binary
//! with real sockets held open), and the open-file limit it starts with.
//! The figures for a release build are measured by `scripts/idle-conns`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{BIN, Client, Server, config_text, require_tool};

/// Resident and proportional set size of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in smaps_rollup:\n{text}"))
    };
    (field("Rss:"), field("Pss:"))
}

/// Raises this test process's soft open-file limit to the hard one (other
/// tests only gain from it) and checks `n` more sockets fit.
fn room_for_sockets(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= n + 1024,
        "this test needs {n} sockets beside the other tests' files; the open-file limit is {}",
        lim.rlim_cur
    );
}

/// Sessions waiting for a command hold no input or reply buffer and a
/// future of a few KiB: a debug build measured 3.9 KiB per greeted
/// connection here, 5.7 KiB with the 2 KiB input buffer held while
/// waiting, 10.9 KiB before the buffers were freed and the session's
/// future stopped storing the session twice. The bound catches either
/// coming back.
#[test]
fn idle_sessions_cost_a_few_kib_each() {
    const N: usize = 1000;
    const BOUND_KIB: f64 = 5.0;
    room_for_sockets(N as u64);
    let s = Server::start("[limits]\nmax_connections = 1100\nmax_connections_per_ip = 1100\n");
    // The first session builds what sessions share; it is not counted.
    Client::greeted(s.addr).cmd("QUIT", 221);
    let before = memory_kib(s.pid());
    let mut conns: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(s.addr).expect("connect"))
        .collect();
    // The greeting is written by a session about to wait for its first
    // command: once every greeting is here, every session is waiting.
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = [0u8; 64];
        let n = c.read(&mut got).expect("greeting");
        assert!(got[..n].starts_with(b"220 "), "{:?}", &got[..n]);
    }
    let after = memory_kib(s.pid());
    let per = (after.0.saturating_sub(before.0)) as f64 / N as f64;
    eprintln!(
        "{N} idle sessions: RSS {} -> {} KiB, {per:.1} KiB each",
        before.0, after.0
    );
    assert!(
        per <= BOUND_KIB,
        "{per:.1} KiB resident per idle session (bound {BOUND_KIB}); RSS {} -> {} KiB",
        before.0,
        after.0
    );
    // Still sessions: the one that waited longest answers a command.
    let c = &mut conns[0];
    c.write_all(b"NOOP\r\n").unwrap();
    let mut got = [0u8; 64];
    let n = c.read(&mut got).unwrap();
    assert!(got[..n].starts_with(b"250 "), "{:?}", &got[..n]);
}

/// A server started under `prlimit --nofile=LIMITS`, with its log lines up
/// to `wasmtp ready`.
fn start_limited(limits: &str, max_connections: usize) -> (Child, Vec<String>, tempfile::TempDir) {
    let prlimit = require_tool("prlimit");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wasmtp.toml");
    let extra = format!("[limits]\nmax_connections = {max_connections}\n");
    std::fs::write(&cfg, config_text(dir.path(), &extra)).unwrap();
    let mut child = Command::new(prlimit)
        .arg(format!("--nofile={limits}"))
        .arg(BIN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let ready = line.contains("wasmtp ready");
        lines.push(line);
        if ready {
            return (child, lines, dir);
        }
    }
    let status = child.wait().unwrap();
    panic!("server did not start ({status}):\n{}", lines.join("\n"));
}

fn open_files_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_open_file_limit_is_raised_and_a_short_one_is_reported() {
    // Soft 512 below what 1000 connections need, hard 4096 above it.
    let (mut child, lines, _dir) = start_limited("512:4096", 1000);
    assert_eq!(open_files_limit(child.id()), "4096 4096");
    let raised = lines
        .iter()
        .find(|l| l.contains("open-file limit raised"))
        .unwrap_or_else(|| panic!("no 'open-file limit raised' line:\n{}", lines.join("\n")));
    assert!(
        raised.contains("\"from\":512") && raised.contains("\"to\":4096"),
        "{raised}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // A hard limit below limits.max_connections + outbound.max_connections
    // (100 by default) + 256: said at start, with the numbers.
    let (mut child, lines, _dir) = start_limited("600:600", 1000);
    let short = lines
        .iter()
        .find(|l| l.contains("open-file limit is below"))
        .unwrap_or_else(|| panic!("no warning about the limit:\n{}", lines.join("\n")));
    assert!(
        short.contains("\"open_files\":600") && short.contains("\"needed\":1356"),
        "{short}"
    );
    assert!(short.contains("WARN"), "{short}");
    child.kill().unwrap();
    child.wait().unwrap();
}
