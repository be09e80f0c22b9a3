//! Outbound routing against a real DNS server (dnsmasq on loopback):
//! MX preference, implicit MX, null MX, NXDOMAIN, DNS failures, address
//! literals, and the routes that come before MX. `Router::route` is tested
//! directly; the end-to-end tests send through the real binary to a
//! capturing upstream and need the outbound SMTP client.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtp::config::Settings;
use wasmtp::delivery::Failure;
use wasmtp::delivery::remote::route::{Destination, Router};
use wasmtp::queue::Route;

use crate::dns::{DnsServer, SilentDns};
use crate::support::{Client, Server, config_text};

/// The MX port the tests configure (nothing listens there for the direct
/// tests; the end-to-end tests use their upstream's port).
const MX_PORT: u16 = 2525;

fn router(extra: &str) -> Router {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        &format!("{extra}[outbound]\nmx_port = {MX_PORT}\n"),
    );
    Router::new(&Settings::parse(&text, "routing.toml").expect("config"))
}

fn route(router: &Router, route: Route, domain: &str) -> Result<Destination, Failure> {
    // The delivery code spawns routing onto the runtime: it must be Send.
    fn send<F: std::future::Future + Send>(f: F) -> F {
        f
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(send(router.route(&route, domain)))
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// Host names and addresses, in order.
fn hosts(d: &Destination) -> Vec<(String, Vec<IpAddr>)> {
    d.hosts
        .iter()
        .map(|h| (h.name.clone(), h.addrs.clone()))
        .collect()
}

#[test]
fn mx_hosts_come_by_preference_with_their_ipv6_then_ipv4_addresses() {
    let dns = DnsServer::start(&[
        "--mx-host=mx.test,mx2.test,20",
        "--mx-host=mx.test,mx1.test,10",
        "--host-record=mx1.test,127.0.0.1,::1",
        "--host-record=mx2.test,127.0.0.2",
    ]);
    let r = router(&dns.config());
    let d = route(&r, Route::Remote, "MX.test").unwrap_or_else(|e| panic!("{e}\n{}", dns.log()));
    assert_eq!(d.key, "mx:mx.test");
    assert_eq!((d.port, d.lmtp, d.auth.is_none()), (MX_PORT, false, true));
    assert_eq!(d.tls.as_str(), "opportunistic");
    assert_eq!(
        hosts(&d),
        [
            ("mx1.test".to_string(), ips(&["::1", "127.0.0.1"])),
            ("mx2.test".to_string(), ips(&["127.0.0.2"])),
        ]
    );
}

#[test]
fn mx_hosts_of_equal_preference_take_turns_first() {
    let dns = DnsServer::start(&[
        "--mx-host=mx.test,a.test,10",
        "--mx-host=mx.test,b.test,10",
        "--host-record=a.test,127.0.0.1",
        "--host-record=b.test,127.0.0.2",
    ]);
    let r = router(&dns.config());
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..40 {
        let d = route(&r, Route::Remote, "mx.test").unwrap();
        assert_eq!(d.hosts.len(), 2);
        firsts.insert(d.hosts[0].name.clone());
    }
    assert_eq!(firsts.len(), 2, "{firsts:?}");
}

#[test]
fn an_mx_host_without_addresses_is_skipped() {
    let dns = DnsServer::start(&[
        "--mx-host=mx.test,ghost.test,10",
        "--mx-host=mx.test,noaddr.test,20",
        "--mx-host=mx.test,mx1.test,30",
        "--txt-record=noaddr.test,no address here",
        "--host-record=mx1.test,127.0.0.1",
    ]);
    let d = route(&router(&dns.config()), Route::Remote, "mx.test").unwrap();
    assert_eq!(hosts(&d), [("mx1.test".to_string(), ips(&["127.0.0.1"]))]);
}

#[test]
fn mx_hosts_none_of_which_has_an_address_are_a_temporary_4_4_4() {
    let dns = DnsServer::start(&[
        "--mx-host=mx.test,ghost.test,10",
        "--mx-host=mx.test,noaddr.test,20",
        "--txt-record=noaddr.test,no address here",
    ]);
    let e = route(&router(&dns.config()), Route::Remote, "mx.test").unwrap_err();
    assert_eq!(e.status, "4.4.4", "{e}");
    assert!(e.text.contains("ghost.test: no such domain"), "{e}");
}

#[test]
fn a_domain_without_mx_is_its_own_mail_host() {
    let dns = DnsServer::start(&["--host-record=implicit.test,127.0.0.3"]);
    let d = route(&router(&dns.config()), Route::Remote, "implicit.test").unwrap();
    assert_eq!(d.key, "mx:implicit.test");
    assert_eq!(
        hosts(&d),
        [("implicit.test".to_string(), ips(&["127.0.0.3"]))]
    );
}

#[test]
fn a_null_mx_fails_permanently_with_5_1_10() {
    let dns = DnsServer::start(&[
        "--mx-host=null.test,.,0",
        "--host-record=null.test,127.0.0.1",
    ]);
    let e = route(&router(&dns.config()), Route::Remote, "null.test").unwrap_err();
    assert_eq!(e.status, "5.1.10", "{e}");
    assert!(e.text.contains("null.test accepts no mail"), "{e}");
}

#[test]
fn a_domain_that_does_not_exist_fails_permanently_with_5_1_2() {
    let dns = DnsServer::start(&["--host-record=other.test,127.0.0.1"]);
    let e = route(&router(&dns.config()), Route::Remote, "nowhere.test").unwrap_err();
    assert_eq!(e.status, "5.1.2", "{e}");
    assert!(e.text.contains("does not exist"), "{e}");
}

#[test]
fn a_refused_mx_query_is_a_temporary_4_4_3() {
    // dnsmasq has no upstream: names outside `test` are REFUSED.
    let dns = DnsServer::start(&[]);
    let e = route(&router(&dns.config()), Route::Remote, "example.org").unwrap_err();
    assert_eq!(e.status, "4.4.3", "{e}");
}

#[test]
fn a_dns_timeout_is_a_temporary_4_4_3_within_the_configured_timeout() {
    let silent = SilentDns::start();
    let r = router(&format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"300ms\"\n\n",
        silent.addr
    ));
    let start = Instant::now();
    let e = route(&r, Route::Remote, "mx.test").unwrap_err();
    assert_eq!(e.status, "4.4.3", "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn address_literals_go_to_that_address_without_dns() {
    // A DNS server that never answers: any query would time out.
    let silent = SilentDns::start();
    let r = router(&format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"5s\"\n\n",
        silent.addr
    ));
    let start = Instant::now();
    let d = route(&r, Route::Remote, "[127.0.0.1]").unwrap();
    assert_eq!((d.key.as_str(), d.port), ("mx:[127.0.0.1]", MX_PORT));
    assert_eq!(
        hosts(&d),
        [("[127.0.0.1]".to_string(), ips(&["127.0.0.1"]))]
    );
    let d = route(&r, Route::Remote, "[IPv6:::1]").unwrap();
    assert_eq!(d.hosts[0].addrs, ips(&["::1"]));
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_plugin_relay_route_resolves_its_host_without_mx() {
    let dns = DnsServer::start(&[
        "--mx-host=relay.test,elsewhere.test,10",
        "--host-record=relay.test,127.0.0.4,::1",
    ]);
    let r = router(&dns.config());
    let relay = Route::Relay {
        host: "relay.test".into(),
        port: 2600,
    };
    let d = route(&r, relay, "anything.test").unwrap();
    assert_eq!((d.key.as_str(), d.port), ("smtp:relay.test:2600", 2600));
    assert_eq!(
        hosts(&d),
        [("relay.test".to_string(), ips(&["::1", "127.0.0.4"]))]
    );
    let ghost = Route::Relay {
        host: "ghost.test".into(),
        port: 2600,
    };
    let e = route(&r, ghost, "anything.test").unwrap_err();
    assert_eq!(e.status, "4.4.4", "{e}");
}

#[test]
fn a_static_route_then_the_smarthost_come_before_mx() {
    let dns = DnsServer::start(&[
        "--mx-host=mx.test,mx1.test,10",
        "--host-record=mx1.test,127.0.0.1",
        "--host-record=static.test,127.0.0.5",
    ]);
    let configured = "[[outbound.route]]\ndomain = \"mx.test\"\nhost = \"static.test\"\nport = 2601\n\n\
                      [outbound.smarthost]\nhost = \"127.0.0.6\"\nport = 2602\n\n";
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        &format!(
            "{}[outbound]\nmx_port = {MX_PORT}\n{configured}",
            dns.config()
        ),
    );
    let r = Router::new(&Settings::parse(&text, "routing.toml").unwrap());
    let d = route(&r, Route::Remote, "mx.test").unwrap();
    assert_eq!(d.key, "smtp:static.test:2601");
    assert_eq!(d.hosts[0].addrs, ips(&["127.0.0.5"]));
    let d = route(&r, Route::Remote, "implicit.test").unwrap();
    assert_eq!(d.key, "smtp:127.0.0.6:2602");
}

// End to end, through the real binary. These need the outbound SMTP client:
// until it lands `Outbound::deliver` defers every remote recipient.

/// One message as the upstream received it.
#[derive(Debug, Clone, Default)]
struct Received {
    mail_from: String,
    rcpt_to: Vec<String>,
    data: String,
}

/// A minimal SMTP server that accepts everything and keeps it.
struct Upstream {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<Received>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let keep = messages.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let _ = serve_smtp(conn, &keep);
                });
            }
        });
        Upstream { addr, messages }
    }

    fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.messages.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages arrived",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve_smtp(conn: std::net::TcpStream, keep: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut lines = BufReader::new(conn);
    let mut msg = Received::default();
    out.write_all(b"220 upstream.test ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-upstream.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            msg = Received {
                mail_from: line[10..].trim().to_string(),
                ..Received::default()
            };
            b"250 2.1.0 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            msg.rcpt_to.push(line[8..].trim().to_string());
            b"250 2.1.5 ok\r\n"
        } else if upper.starts_with("DATA") {
            out.write_all(b"354 go ahead\r\n")?;
            loop {
                line.clear();
                if lines.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
                msg.data.push_str(&line);
            }
            keep.lock().unwrap().push(std::mem::take(&mut msg));
            b"250 2.0.0 queued\r\n"
        } else if upper.starts_with("QUIT") {
            out.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
            b"250 2.0.0 ok\r\n"
        } else {
            b"502 5.5.1 not here\r\n"
        };
        out.write_all(reply)?;
    }
}

/// The server relaying for loopback, resolving with `dns`, MX port `port`.
fn relay_server(dns: &DnsServer, port: u16) -> Server {
    Server::start(&format!(
        "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n{}[outbound]\nmx_port = {port}\ntls = \"none\"\n\n",
        dns.config()
    ))
}

fn submit(s: &Server, rcpt: &str) {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.send_message(
        "app@example.test",
        &[rcpt],
        b"Subject: routed\r\n\r\nvia MX\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
}

#[test]
fn mail_for_a_domain_arrives_at_its_mx_host() {
    // remote.test, not mx.test: the test server itself is called mx.test.
    let upstream = Upstream::start();
    let dns = DnsServer::start(&[
        "--mx-host=remote.test,mail.remote.test,10",
        "--host-record=mail.remote.test,127.0.0.1",
    ]);
    let s = relay_server(&dns, upstream.addr.port());
    submit(&s, "user@remote.test");
    let got = upstream.wait_for(1);
    assert_eq!(got[0].mail_from, "<app@example.test>");
    assert_eq!(got[0].rcpt_to, ["<user@remote.test>"]);
    assert!(got[0].data.contains("via MX"), "{got:?}");
    s.wait_for_log("\"delivered\"", 1);
}

#[test]
fn mail_for_a_null_mx_domain_bounces_at_once() {
    let upstream = Upstream::start();
    let dns = DnsServer::start(&["--mx-host=null.test,.,0"]);
    let s = relay_server(&dns, upstream.addr.port());
    submit(&s, "user@null.test");
    let lines = s.wait_for_log("\"bounced\"", 1);
    assert!(lines[0].contains("user@null.test"), "{lines:?}");
    assert!(lines[0].contains("null.test accepts no mail"), "{lines:?}");
    assert!(s.log_lines("\"deferred\"").is_empty(), "{}", s.dump_logs());
    assert!(upstream.messages.lock().unwrap().is_empty());
}

#[test]
fn mail_for_a_domain_that_does_not_exist_bounces_at_once() {
    let upstream = Upstream::start();
    let dns = DnsServer::start(&["--host-record=other.test,127.0.0.1"]);
    let s = relay_server(&dns, upstream.addr.port());
    submit(&s, "user@nowhere.test");
    let lines = s.wait_for_log("\"bounced\"", 1);
    assert!(lines[0].contains("user@nowhere.test"), "{lines:?}");
    assert!(
        lines[0].contains("nowhere.test: domain does not exist"),
        "{lines:?}"
    );
    assert!(s.log_lines("\"deferred\"").is_empty(), "{}", s.dump_logs());
}
