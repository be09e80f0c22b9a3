//! Every outbound result becomes an `Outcome` here, and only here: a reply,
//! a connection error, or a check made before sending. The rules:
//!
//! - 2xx: delivered; the detail is `host[ip] said: 250 ...`.
//! - 4xx, timeouts, connection and TLS failures: temporary.
//! - 5xx: permanent, except a refused AUTH: a wrong password or a changed
//!   mechanism is the operator's to fix, and the mail should then go out
//!   rather than bounce (Postfix's `smtp_sasl_auth_soft_bounce`).
//! - The status is the server's enhanced status when it sent one, else
//!   derived: 4.4.1 no answer, 4.4.2 bad connection, 4.7.x TLS, `X.0.0`
//!   from the reply class.
//!
//! Texts for the checks we make ourselves (loop, size, SMTPUTF8, 8BITMIME)
//! live here too, so a grep for a status finds one file.

use super::client::{ClientError, Fate, Peer, Stage};
use crate::delivery::{Failure, Outcome};
use crate::smtp::Reply;

/// The outcome of one recipient's fate in a transaction with `peer`.
pub fn fate(peer: &Peer, fate: &Fate) -> Outcome {
    match fate {
        Fate::Reply(stage, reply) => reply_outcome(peer, *stage, reply),
        Fate::Error(e) => error(Some(peer), e),
    }
}

/// The outcome a reply to `stage` means.
pub fn reply_outcome(peer: &Peer, stage: Stage, reply: &Reply) -> Outcome {
    let line = reply.one_line();
    if reply.is_positive() {
        return Outcome::Delivered(format!("{peer} said: {line}"));
    }
    let class = if reply.is_transient() || stage == Stage::Auth {
        '4'
    } else {
        '5'
    };
    let status = match reply.status.as_deref() {
        Some(s) => format!("{class}{}", &s[1..]),
        None if stage == Stage::Auth => format!("{class}.7.0"),
        None => format!("{class}.0.0"),
    };
    let failure = Failure {
        text: format!("{peer} said: {line} (in reply to {})", stage.command()),
        status,
        remote_mta: Some(peer.name.clone()),
        remote_reply: Some(line),
    };
    if class == '4' {
        Outcome::Temporary(failure)
    } else {
        Outcome::Permanent(failure)
    }
}

/// The outcome of a connection that failed (`peer` once one was chosen).
pub fn error(peer: Option<&Peer>, e: &ClientError) -> Outcome {
    let status = match e {
        ClientError::Refused { stage, reply } => {
            return match peer {
                Some(p) => reply_outcome(p, *stage, reply),
                None => Outcome::temporary("4.4.2", e.to_string()),
            };
        }
        ClientError::Connect(_) => "4.4.1",
        ClientError::Timeout(Stage::Connect) => "4.4.1",
        ClientError::Timeout(_)
        | ClientError::Io { .. }
        | ClientError::Closed(_)
        | ClientError::Protocol { .. } => "4.4.2",
        // RFC 3463 X.7.5: cryptographic failure (handshake, certificate).
        ClientError::Tls(_) => "4.7.5",
        // X.7.0: the security policy for this hop cannot be met.
        ClientError::NoStartTls | ClientError::NoAuthMechanism => "4.7.0",
        ClientError::Policy { status, .. } => status,
    };
    let text = match peer {
        Some(p) => format!("{p}: {e}"),
        None => e.to_string(),
    };
    Outcome::Temporary(Failure {
        text,
        status: status.to_string(),
        remote_mta: peer.map(|p| p.name.clone()),
        remote_reply: None,
    })
}

/// An MX host the recipient domain's TLS policy rules out before any
/// connection (not in the MTA-STS policy, TLSA lookup failed): temporary,
/// so the mail waits for the policy or the DNS to be fixed.
pub fn policy_refused(host: &str, status: &str, text: String) -> Outcome {
    Outcome::Temporary(Failure {
        text: format!("{host}: {text}"),
        status: status.to_string(),
        remote_mta: Some(host.to_string()),
        remote_reply: None,
    })
}

/// A route that could not be resolved: permanent when the router said so
/// (a 5.x.x status, e.g. a null MX), else temporary.
pub fn route(failure: Failure) -> Outcome {
    if failure.status.starts_with('5') {
        Outcome::Permanent(failure)
    } else {
        Outcome::Temporary(failure)
    }
}

/// More `Received:` fields than allowed: a mail loop (RFC 5321 §6.3).
pub fn mail_loop(count: usize, max: usize) -> Outcome {
    Outcome::permanent(
        "5.4.6",
        format!("mail loop: the message has {count} Received: header fields (limit {max})"),
    )
}

/// The message is larger than the server's SIZE (RFC 1870).
pub fn too_big(peer: &Peer, size: u64, limit: u64) -> Outcome {
    with_peer(
        peer,
        "5.3.4",
        format!("message of {size} octets exceeds the server's SIZE limit of {limit}"),
    )
}

/// The message needs SMTPUTF8 and the server lacks it (RFC 6531 §3.2).
pub fn needs_smtputf8(peer: &Peer) -> Outcome {
    with_peer(
        peer,
        "5.6.7",
        "non-ASCII addresses need SMTPUTF8, which the server does not offer".into(),
    )
}

/// 8-bit content for a server without 8BITMIME (RFC 6152 §3: convert or
/// return; we do not convert).
pub fn needs_8bitmime(peer: &Peer) -> Outcome {
    with_peer(
        peer,
        "5.6.3",
        "the message has 8-bit content and the server does not offer 8BITMIME".into(),
    )
}

fn with_peer(peer: &Peer, status: &str, text: String) -> Outcome {
    Outcome::Permanent(Failure {
        text: format!("{peer}: {text}"),
        status: status.to_string(),
        remote_mta: Some(peer.name.clone()),
        remote_reply: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::response::parse_reply;

    fn peer() -> Peer {
        Peer {
            name: "mx.test".into(),
            addr: Some("192.0.2.1".into()),
        }
    }

    fn reply(s: &str) -> Reply {
        parse_reply(s.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn replies() {
        // (reply, stage, kind, status)
        let table = [
            ("250 2.0.0 Ok: queued as X\r\n", Stage::Dot, 'd', ""),
            (
                "550 5.1.1 <x@y>: user unknown\r\n",
                Stage::Rcpt,
                'p',
                "5.1.1",
            ),
            ("550 no such user\r\n", Stage::Rcpt, 'p', "5.0.0"),
            ("451 4.3.0 try later\r\n", Stage::Dot, 't', "4.3.0"),
            ("452 too many\r\n", Stage::Rcpt, 't', "4.0.0"),
            ("535 5.7.8 bad credentials\r\n", Stage::Auth, 't', "4.7.8"),
            ("504 unknown mechanism\r\n", Stage::Auth, 't', "4.7.0"),
        ];
        for (text, stage, kind, status) in table {
            let o = reply_outcome(&peer(), stage, &reply(text));
            match (kind, &o) {
                ('d', Outcome::Delivered(d)) => {
                    assert_eq!(d, "mx.test[192.0.2.1] said: 250 2.0.0 Ok: queued as X")
                }
                ('p', Outcome::Permanent(f)) | ('t', Outcome::Temporary(f)) => {
                    assert_eq!(f.status, status, "{text}");
                    assert_eq!(f.remote_mta.as_deref(), Some("mx.test"));
                    assert_eq!(f.remote_reply.as_deref(), Some(text.trim_end()));
                }
                _ => panic!("{text}: {o:?}"),
            }
        }
        let o = reply_outcome(
            &peer(),
            Stage::Rcpt,
            &reply("550 5.1.1 <x@y>: user unknown\r\n"),
        );
        let Outcome::Permanent(f) = o else { panic!() };
        assert_eq!(
            f.text,
            "mx.test[192.0.2.1] said: 550 5.1.1 <x@y>: user unknown (in reply to RCPT TO)"
        );
    }

    #[test]
    fn errors_are_temporary_with_a_derived_status() {
        let table = [
            (ClientError::Connect("refused".into()), "4.4.1"),
            (ClientError::Timeout(Stage::Connect), "4.4.1"),
            (ClientError::Timeout(Stage::Dot), "4.4.2"),
            (ClientError::Closed(Stage::Mail), "4.4.2"),
            (ClientError::Tls("UnknownIssuer".into()), "4.7.5"),
            (ClientError::NoStartTls, "4.7.0"),
        ];
        for (e, status) in table {
            match error(Some(&peer()), &e) {
                Outcome::Temporary(f) => assert_eq!(f.status, status, "{e}"),
                o => panic!("{e}: {o:?}"),
            }
        }
        // A refused greeting is the reply's class.
        let e = ClientError::Refused {
            stage: Stage::Greeting,
            reply: reply("554 5.7.1 go away\r\n"),
        };
        assert!(matches!(error(Some(&peer()), &e), Outcome::Permanent(_)));
    }
}
