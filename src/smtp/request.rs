//! The client side of commands: the lines the outbound client sends,
//! built from envelope data, and the message data on the wire (dot
//! stuffing, RFC 5321 §4.5.2). No I/O here.
//!
//! Parameters are only added when the server offered the extension; the
//! caller decides that from `Capabilities` and passes what applies.

use std::fmt::Write as _;

use super::command::{Notify, Ret};

/// The MAIL FROM parameters to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailArgs<'a> {
    /// SIZE= (RFC 1870), when the server offers SIZE.
    pub size: Option<u64>,
    /// BODY=8BITMIME (RFC 6152).
    pub eight_bit: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// RET= (RFC 3461), when the server offers DSN.
    pub ret: Option<Ret>,
    /// ENVID= (RFC 3461), decoded; xtext-encoded here.
    pub envid: Option<&'a str>,
}

/// The RCPT TO parameters to send (RFC 3461, when the server offers DSN).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptArgs<'a> {
    /// NOTIFY=
    pub notify: Option<Notify>,
    /// ORCPT= as `addr-type;address`, decoded; the address is
    /// xtext-encoded here.
    pub orcpt: Option<&'a str>,
}

/// `EHLO name`, `LHLO name` (RFC 2033) or `HELO name`, with CRLF.
pub fn hello(verb: &str, name: &str) -> String {
    format!("{verb} {name}\r\n")
}

/// `MAIL FROM:<sender> params` with CRLF; `sender` empty for the null path.
pub fn mail_from(sender: &str, args: &MailArgs<'_>) -> String {
    let mut s = format!("MAIL FROM:<{sender}>");
    if let Some(n) = args.size {
        let _ = write!(s, " SIZE={n}");
    }
    if args.eight_bit {
        s.push_str(" BODY=8BITMIME");
    }
    if args.smtputf8 {
        s.push_str(" SMTPUTF8");
    }
    match args.ret {
        Some(Ret::Full) => s.push_str(" RET=FULL"),
        Some(Ret::Hdrs) => s.push_str(" RET=HDRS"),
        None => {}
    }
    if let Some(e) = args.envid {
        let _ = write!(s, " ENVID={}", xtext(e));
    }
    s.push_str("\r\n");
    s
}

/// `RCPT TO:<rcpt> params` with CRLF.
pub fn rcpt_to(rcpt: &str, args: &RcptArgs<'_>) -> String {
    let mut s = format!("RCPT TO:<{rcpt}>");
    if let Some(n) = args.notify {
        let mut words = Vec::new();
        if n.success {
            words.push("SUCCESS");
        }
        if n.failure {
            words.push("FAILURE");
        }
        if n.delay {
            words.push("DELAY");
        }
        if words.is_empty() {
            words.push("NEVER");
        }
        let _ = write!(s, " NOTIFY={}", words.join(","));
    }
    if let Some(o) = args.orcpt {
        // `rfc822;user@example.org`: the type stays, the address is xtext.
        if let Some((kind, addr)) = o.split_once(';') {
            let _ = write!(s, " ORCPT={};{}", kind.trim(), xtext(addr.trim()));
        }
    }
    s.push_str("\r\n");
    s
}

/// RFC 3461 §4 xtext: printable ASCII except `+` and `=` as is, every
/// other octet as `+XX`.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

/// The DATA payload for a stored message (CRLF line ends): lines starting
/// with `.` get a second one, a missing final CRLF is added, and the
/// `.CRLF` end marker follows. Works on chunks: `at_line_start` carries
/// the state from one chunk to the next.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    /// The last two octets fed, oldest first.
    tail: [Option<u8>; 2],
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            tail: [None, None],
        }
    }
}

impl DotStuffer {
    /// Appends `chunk`, stuffed, to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + 8);
        let mut start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if self.at_line_start && b == b'.' {
                out.extend_from_slice(&chunk[start..i]);
                out.push(b'.');
                start = i;
            }
            self.at_line_start = b == b'\n';
        }
        out.extend_from_slice(&chunk[start..]);
        for &b in chunk.iter().rev().take(2).rev() {
            self.tail = [self.tail[1], Some(b)];
        }
    }

    /// Appends the end marker, after a CRLF when the message does not end
    /// with one (a stored body always does).
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.tail[1].is_some() && self.tail != [Some(b'\r'), Some(b'\n')] {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// The whole DATA payload of `body` in one buffer (tests, small bodies).
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut d = DotStuffer::default();
    d.feed(body, &mut out);
    d.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_and_rcpt_lines() {
        assert_eq!(mail_from("", &MailArgs::default()), "MAIL FROM:<>\r\n");
        let args = MailArgs {
            size: Some(1234),
            eight_bit: true,
            smtputf8: true,
            ret: Some(Ret::Hdrs),
            envid: Some("id+1=2 x"),
        };
        assert_eq!(
            mail_from("a@b.test", &args),
            "MAIL FROM:<a@b.test> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3D2+20x\r\n"
        );
        assert_eq!(rcpt_to("x@y", &RcptArgs::default()), "RCPT TO:<x@y>\r\n");
        let never = Notify::default();
        let all = Notify {
            success: true,
            failure: true,
            delay: true,
        };
        assert_eq!(
            rcpt_to(
                "x@y",
                &RcptArgs {
                    notify: Some(never),
                    orcpt: Some("rfc822;Bob+tag@y")
                }
            ),
            "RCPT TO:<x@y> NOTIFY=NEVER ORCPT=rfc822;Bob+2Btag@y\r\n"
        );
        assert_eq!(
            rcpt_to(
                "x@y",
                &RcptArgs {
                    notify: Some(all),
                    orcpt: None
                }
            ),
            "RCPT TO:<x@y> NOTIFY=SUCCESS,FAILURE,DELAY\r\n"
        );
        assert_eq!(xtext("é"), "+C3+A9");
    }

    #[test]
    fn dot_stuffing() {
        let table: &[(&[u8], &[u8])] = &[
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".a\r\n..b\r\n.\r\n", b"..a\r\n...b\r\n..\r\n.\r\n"),
            (b"no end", b"no end\r\n.\r\n"),
            (b"", b".\r\n"),
            (b"a\r\n.", b"a\r\n..\r\n.\r\n"),
            (b"x.y\r\n", b"x.y\r\n.\r\n"),
        ];
        for (input, wire) in table {
            assert_eq!(
                dot_stuff(input),
                *wire,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Chunk boundaries do not matter, even between CR and LF or before a dot.
        let body = b"l1\r\n.l2\r\n..\r\nend\r\n";
        for cut in 0..body.len() {
            let mut out = Vec::new();
            let mut d = DotStuffer::default();
            d.feed(&body[..cut], &mut out);
            d.feed(&body[cut..], &mut out);
            d.finish(&mut out);
            assert_eq!(out, dot_stuff(body), "cut at {cut}");
        }
    }
}
