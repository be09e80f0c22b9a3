//! Test support: a real DNS server (dnsmasq, installed by scripts/test) on a
//! loopback port chosen at run time, answering only from the records a test
//! gives it, and a "server" that never answers (for timeouts).
//!
//! dnsmasq is started with `--local=/test/`: names under `test` it has no
//! record for are NXDOMAIN, names it knows without the asked type are
//! NODATA, and names outside `test` are REFUSED (no upstream).

#![allow(dead_code)]

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::require_tool;

/// A running dnsmasq.
pub struct DnsServer {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl DnsServer {
    /// Starts dnsmasq with `records`, each one dnsmasq option:
    /// `--mx-host=mx.test,mx1.test,10`, `--host-record=mx1.test,127.0.0.1,::1`,
    /// `--mx-host=null.test,.,0` (a null MX).
    pub fn start(records: &[&str]) -> DnsServer {
        // /usr/sbin is not on every user's PATH.
        let sbin = std::path::Path::new("/usr/sbin/dnsmasq");
        let bin = if sbin.exists() {
            sbin.to_path_buf()
        } else {
            require_tool("dnsmasq")
        };
        // A free port can be taken between probing and dnsmasq's bind:
        // try a few.
        for _ in 0..5 {
            let port = free_port();
            let log = tempfile::NamedTempFile::new().unwrap();
            let child = Command::new(&bin)
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--local=/test/",
                    "--log-queries",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .args(records)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log.reopen().unwrap())
                .spawn()
                .expect("spawn dnsmasq");
            let mut server = DnsServer {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
                log,
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("dnsmasq did not start on a free port");
    }

    /// Its query log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `[dns]` pointing the server at this DNS server with a short timeout.
    pub fn config(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n\n",
            self.addr
        )
    }

    /// True once it answers a query; false if it exited (port taken).
    fn wait_ready(&mut self) -> bool {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // A query for `ready.test` type A; any reply will do.
            let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ready\x04test\x00\x00\x01\x00\x01";
            let _ = sock.send_to(query, self.addr);
            let mut buf = [0u8; 512];
            match sock.recv_from(&mut buf) {
                Ok(_) => return true,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        panic!("dnsmasq did not answer within 10 s:\n{}", self.log());
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP socket that takes queries and never answers: a DNS server that
/// times out. TCP to its port is refused.
pub struct SilentDns {
    /// Its address.
    pub addr: SocketAddr,
    _sock: UdpSocket,
}

impl SilentDns {
    /// Binds it on loopback.
    pub fn start() -> SilentDns {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        SilentDns {
            addr: sock.local_addr().unwrap(),
            _sock: sock,
        }
    }
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
