//! Relay policy: non-local recipients only for authenticated clients and
//! trusted networks; the classic relay tricks never relay.

use crate::support::{Client, SUBMISSION_LISTENERS, Server, b64};

const TRICKS: &[&str] = &[
    "user@other.test",
    "user%other.test@example.test",
    "user%other.test@EXAMPLE.TEST",
    "\"user%other.test\"@example.test",
    "\"user@other.test\"@example.test",
    "\"user@other.test\"@localhost",
    "@example.test:user@other.test",
    "@example.test,@localhost:user@other.test",
    "other.test!user@example.test",
    "\"other.test!user\"@example.test",
    "user@other.test@example.test",
    "user@[192.0.2.1]",
    "user@[127.0.0.1]",
    "user%other.test%example.test@localhost",
];

#[test]
fn relay_tricks_from_an_untrusted_client_are_refused_and_nothing_is_queued() {
    let s = Server::start("");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<spammer@example.test>", 250);
    for trick in TRICKS {
        c.send(&format!("RCPT TO:<{trick}>"));
        let r = c.reply();
        assert!(
            r.code == 550 || r.code == 553 || r.code == 501,
            "{trick}: {r:?}"
        );
    }
    c.cmd("DATA", 554);
    c.cmd("QUIT", 221);
    assert!(
        s.log_lines("message accepted").is_empty(),
        "{}",
        s.dump_logs()
    );
}

#[test]
fn relay_tricks_stay_refused_for_a_trusted_network_with_local_domains() {
    // Even a trusted client cannot make a local address relay: tricks with a
    // local domain are unknown users, not relay.
    let s = Server::start("[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<ops@example.test>", 250);
    for trick in [
        "user%other.test@example.test",
        "\"user@other.test\"@example.test",
        "other.test!user@example.test",
    ] {
        c.send(&format!("RCPT TO:<{trick}>"));
        assert_eq!(c.reply().code, 550, "{trick}");
    }
}

#[test]
fn trusted_network_relays_and_relayed_mail_waits_in_the_queue() {
    let s = Server::start(&format!(
        "[relay]\ntrusted_networks = [\"10.0.0.0/8\", \"127.0.0.1/32\"]\n{}",
        dead_route("remote.test")
    ));
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let r = c.send_message(
        "app@example.test",
        &["far@remote.test", "near@example.test"],
        b"Subject: r\r\n\r\nrelayed\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    s.wait_for_mail("near", 1);
    wait_for_deferral(&s, "far@remote.test");
}

#[test]
fn untrusted_network_setting_does_not_open_the_relay() {
    let s = Server::start("[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n");
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<app@example.test>", 250);
    c.cmd("RCPT TO:<far@remote.test>", 550);
}

#[test]
fn authenticated_relay_is_accepted_and_queued() {
    let s = Server::start(&format!(
        "{SUBMISSION_LISTENERS}{}",
        dead_route("remote.test")
    ));
    s.add_user("gina", "pw-gina");
    let mut c = Client::connect_tls(s.addr_of("submissions"), "mx.test");
    c.cmd("EHLO client.test", 250);
    c.cmd(&format!("AUTH PLAIN {}", b64(b"\0gina\0pw-gina")), 235);
    let r = c.send_message(
        "gina@example.test",
        &["far@remote.test"],
        b"Subject: r\r\n\r\nout\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    wait_for_deferral(&s, "far@remote.test");
    // The same relay over the mx listener without AUTH is refused.
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    c.cmd("MAIL FROM:<gina@example.test>", 250);
    c.cmd("RCPT TO:<far@remote.test>", 550);
}

/// A static route for `domain` to a loopback port nobody listens on, so
/// relayed mail is tried and stays queued (no DNS involved).
fn dead_route(domain: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("[[outbound.route]]\ndomain = \"{domain}\"\nhost = \"127.0.0.1\"\nport = {port}\n")
}

/// Relayed mail whose next hop is down stays queued: the attempt is
/// deferred with an error that names the host it tried.
fn wait_for_deferral(s: &Server, rcpt: &str) {
    let domain = "127.0.0.1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let deferred = s.log_lines(rcpt).into_iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).ok()?;
            let field = |k: &str| {
                v["fields"][k]
                    .as_str()
                    .or(v[k].as_str())
                    .map(str::to_string)
            };
            (field("message")? == "deferred").then(|| field("error").unwrap_or_default())
        });
        if let Some(error) = deferred {
            assert!(error.contains(domain), "{error}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rcpt} was not deferred:\n{}",
            s.dump_logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
