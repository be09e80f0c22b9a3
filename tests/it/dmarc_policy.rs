//! The shipped `dmarc-policy` plugin in the real server, deciding from the results the server's
//! own verification computed against SPF and DMARC records that dnsmasq serves on loopback (the
//! plugin reads them through contract 0.2.0's `message.auth-results`).

use crate::dns::DnsServer;
use crate::support::{Client, Reply, Server, plugin_toml, queue_id};

/// dnsmasq TXT options: for each (domain, DMARC record), an SPF record that does not list
/// 127.0.0.1 (so SPF fails for the test client) and the DMARC record; `pass.test` lists
/// 127.0.0.1 (an aligned SPF pass) and publishes p=reject.
fn records() -> Vec<String> {
    let mut r = Vec::new();
    for (domain, dmarc) in [
        (
            "reject.test",
            "v=DMARC1; p=reject; rua=mailto:agg@reject.test",
        ),
        ("quarantine.test", "v=DMARC1; p=quarantine"),
        ("none.test", "v=DMARC1; p=none"),
    ] {
        r.push(format!("--txt-record={domain},v=spf1 ip4:192.0.2.1 -all"));
        r.push(format!("--txt-record=_dmarc.{domain},{dmarc}"));
    }
    r.push("--txt-record=pass.test,v=spf1 ip4:127.0.0.1 -all".into());
    r.push("--txt-record=_dmarc.pass.test,v=DMARC1; p=reject".into());
    r
}

fn dns() -> DnsServer {
    let r = records();
    DnsServer::start(&r.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The server with `dns` and dmarc-policy configured by `config` (a `[plugin.config]` body).
fn server(dns: &DnsServer, config: &str) -> Server {
    Server::start(&format!(
        "{}{}",
        dns.config(),
        plugin_toml(
            "dmarc-policy",
            "dmarc_policy.wasm",
            &format!("on_error = \"tempfail\"\n[plugin.config]\n{config}"),
        )
    ))
}

/// Sends a message from `a@DOMAIN` (envelope and From) to `MAILBOX@example.test`.
fn send(s: &Server, domain: &str, mailbox: &str) -> Reply {
    let mut c = Client::greeted(s.addr);
    c.cmd("EHLO client.test", 250);
    let from = format!("a@{domain}");
    c.send_message(
        &from,
        &[&format!("{mailbox}@example.test")],
        format!("From: <{from}>\r\nSubject: {domain}\r\n\r\nhello\r\n").as_bytes(),
    )
}

/// The one message in `mailbox`, as text.
fn delivered(s: &Server, mailbox: &str) -> String {
    String::from_utf8(s.wait_for_mail(mailbox, 1).remove(0)).unwrap()
}

#[test]
fn published_policies_reject_quarantine_and_accept() {
    let dns = dns();
    let s = server(&dns, "");

    // p=reject and neither SPF nor DKIM aligned: refused at the end of DATA.
    let r = send(&s, "reject.test", "r");
    assert_eq!(r.code, 550, "{r:?}");
    assert!(
        r.text()
            .starts_with("5.7.1 Message refused by the DMARC policy of its From domain"),
        "{r:?}"
    );
    assert!(r.text().contains("header.from=reject.test"), "{r:?}");
    let refused = s.wait_for_log("dmarc-policy: reject", 1);
    assert!(refused[0].contains("reject.test"), "{refused:?}");

    // p=quarantine: accepted into the quarantine mailbox, not the recipient's.
    queue_id(&send(&s, "quarantine.test", "q"));
    let q = delivered(&s, "quarantine");
    assert!(
        q.contains("X-Wasmtp-Quarantine: DMARC policy: dmarc=fail policy=quarantine (published) header.from=quarantine.test"),
        "{q}"
    );
    assert!(
        q.contains("X-Wasmtp-Original-Recipients: q@example.test"),
        "{q}"
    );

    // p=none: delivered, the header says what was found.
    queue_id(&send(&s, "none.test", "n"));
    let n = delivered(&s, "n");
    assert!(
        n.contains(
            "X-DMARC-Policy: accept dmarc=fail policy=none (published) header.from=none.test"
        ),
        "{n}"
    );

    // SPF passes for an aligned domain: DMARC passes and p=reject does not apply.
    queue_id(&send(&s, "pass.test", "p"));
    let p = delivered(&s, "p");
    assert!(
        p.contains("X-DMARC-Policy: accept dmarc=pass header.from=pass.test"),
        "{p}"
    );
    // Nothing but the quarantined message went to quarantine.
    assert_eq!(s.wait_for_mail("quarantine", 1).len(), 1);
}

#[test]
fn an_override_and_the_allowlists_change_the_outcome() {
    let dns = dns();
    let s = server(
        &dns,
        "overrides = { \"reject.test\" = \"quarantine\" }\nallow_domains = [\"quarantine.test\"]\n",
    );
    // The override turns the published reject into quarantine.
    queue_id(&send(&s, "reject.test", "r"));
    let q = delivered(&s, "quarantine");
    assert!(
        q.contains("DMARC policy: dmarc=fail policy=quarantine (override for reject.test) header.from=reject.test"),
        "{q}"
    );
    // An allowlisted From domain is delivered despite its p=quarantine.
    queue_id(&send(&s, "quarantine.test", "a"));
    let a = delivered(&s, "a");
    assert!(
        a.contains("X-DMARC-Policy: accept dmarc=fail policy=quarantine (published) header.from=quarantine.test (header.from=quarantine.test allowlisted (quarantine.test))"),
        "{a}"
    );

    // An allowlisted client network: the p=reject domain is accepted.
    let s = server(&dns, "allow_networks = [\"127.0.0.0/8\"]\n");
    queue_id(&send(&s, "reject.test", "n"));
    let n = delivered(&s, "n");
    assert!(n.contains("(client 127.0.0.1 allowlisted)"), "{n}");
}
