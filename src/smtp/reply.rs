//! Every reply the server sends is built here, so a grep for a reply code
//! finds one file. A reply is a value: code, enhanced status (RFC 2034/3463)
//! and text lines; `encode` writes it in wire format.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The longest reply line, CRLF included (RFC 5321 §4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// Splits `text` into lines of at most `room` bytes, at spaces where it can
/// and inside a word (on a character boundary) where it must.
fn wrap(text: &str, room: usize) -> Vec<String> {
    let room = room.max(4);
    let mut lines = Vec::new();
    let mut rest = text.trim();
    while rest.len() > room {
        let mut cut = room;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let at = if rest.as_bytes()[cut] == b' ' {
            cut
        } else {
            rest[..cut].rfind(' ').filter(|&i| i > 0).unwrap_or(cut)
        };
        lines.push(rest[..at].trim_end().to_string());
        rest = rest[at..].trim_start();
    }
    lines.push(rest.to_string());
    lines
}

/// The largest `i <= max` at which `s` can be cut.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit basic reply code.
    pub code: u16,
    /// Enhanced status code such as "5.1.1", or None where RFC 2034 has none
    /// (the greeting, EHLO/HELO replies).
    pub status: Option<Cow<'static, str>>,
    /// Text lines; the reply has as many lines as this has entries.
    pub lines: Vec<String>,
}

impl Reply {
    /// A reply with an enhanced status and one text line.
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Self {
        Reply {
            code,
            status: Some(Cow::Borrowed(status)),
            lines: vec![text.into()],
        }
    }

    fn plain(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            status: None,
            lines,
        }
    }

    /// True for 4xx and 5xx replies.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// True for replies after which the session is closed.
    pub fn closes(&self) -> bool {
        self.code == 421 || self.code == 221
    }

    /// Appends the wire form (`250-...\r\n250 ...\r\n`) to `out`. A line
    /// that would exceed [`MAX_REPLY_LINE`] (text echoed from the client, such as
    /// a 500-octet EHLO name) is cut to fit, at a character boundary.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut s = String::new();
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            let start = s.len();
            let _ = write!(s, "{}{}", self.code, sep);
            if let Some(st) = &self.status {
                s.push_str(st);
                if !text.is_empty() {
                    s.push(' ');
                }
            }
            let room = (MAX_REPLY_LINE - 2).saturating_sub(s.len() - start);
            s.push_str(&text[..floor_char_boundary(text, room)]);
            s.push_str("\r\n");
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// The wire form as a string (for logs and tests).
    pub fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.encode(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    // ----- connection level -----

    /// 220 greeting.
    pub fn greeting(hostname: &str) -> Self {
        Self::plain(220, vec![format!("{hostname} ESMTP wasmtp")])
    }
    /// 221 after QUIT.
    pub fn bye() -> Self {
        Self::new(221, "2.0.0", "Bye")
    }
    /// 421 when the server is shutting down.
    pub fn shutting_down(hostname: &str) -> Self {
        Self::new(
            421,
            "4.3.2",
            format!("{hostname} Service shutting down, try again later"),
        )
    }
    /// 421 after the command timeout.
    pub fn timeout(hostname: &str) -> Self {
        Self::new(
            421,
            "4.4.2",
            format!("{hostname} Timeout exceeded, closing connection"),
        )
    }
    /// 421 when too many connections are open.
    pub fn too_many_connections(hostname: &str) -> Self {
        Self::new(
            421,
            "4.7.0",
            format!("{hostname} Too many connections, try again later"),
        )
    }
    /// 421 when too many connections come from one address.
    pub fn too_many_from_ip(hostname: &str) -> Self {
        Self::new(
            421,
            "4.7.0",
            format!("{hostname} Too many connections from your address"),
        )
    }
    /// 421 once a session has made too many errors.
    pub fn too_many_errors(hostname: &str) -> Self {
        Self::new(
            421,
            "4.7.0",
            format!("{hostname} Too many errors, closing connection"),
        )
    }
    /// 421 when a session outlived `timeouts.session`.
    pub fn session_too_long(hostname: &str) -> Self {
        Self::new(
            421,
            "4.4.2",
            format!("{hostname} Session time limit exceeded, closing connection"),
        )
    }
    /// 421 after too many NOOP/RSET/VRFY/HELP/EHLO without a message.
    pub fn too_many_junk_commands(hostname: &str) -> Self {
        Self::new(
            421,
            "4.7.0",
            format!("{hostname} Too many commands without a message, closing connection"),
        )
    }
    /// 452 when the server-wide memory budget for messages is spent.
    pub fn insufficient_storage() -> Self {
        Self::new(
            452,
            "4.3.1",
            "Insufficient system resources, try again later",
        )
    }
    /// 451 on a local store failure.
    pub fn local_error() -> Self {
        Self::new(451, "4.3.0", "Local error in processing, try again later")
    }

    // ----- EHLO / HELO -----

    /// 250 reply to HELO.
    pub fn helo(hostname: &str, client: &str) -> Self {
        Self::plain(250, vec![format!("{hostname} Hello {client}")])
    }
    /// 250 multi-line reply to EHLO listing `extensions`.
    pub fn ehlo(hostname: &str, client: &str, extensions: &[String]) -> Self {
        let mut lines = vec![format!("{hostname} Hello {client}")];
        lines.extend(extensions.iter().cloned());
        Self::plain(250, lines)
    }
    /// An EHLO/HELO reply whose first line says `text` after our name (a
    /// plugin's accept); the extension lines stay.
    pub fn with_greeting(mut self, hostname: &str, text: &str) -> Self {
        let mut line = format!("{hostname} {text}");
        let mut cut = line.len().min(MAX_REPLY_LINE - 6);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        match self.lines.first_mut() {
            Some(first) => *first = line,
            None => self.lines.push(line),
        }
        self
    }
    /// 214 reply to HELP.
    pub fn help() -> Self {
        Self::new(
            214,
            "2.0.0",
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY; see RFC 5321",
        )
    }

    // ----- generic -----

    /// 250 2.0.0 Ok.
    pub fn ok() -> Self {
        Self::new(250, "2.0.0", "Ok")
    }
    /// 250 for RSET.
    pub fn reset() -> Self {
        Self::new(250, "2.0.0", "Reset state")
    }
    /// 252 for VRFY: no user disclosure.
    pub fn vrfy() -> Self {
        Self::new(
            252,
            "2.5.0",
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }
    /// 250 for MAIL FROM.
    pub fn sender_ok() -> Self {
        Self::new(250, "2.1.0", "Sender ok")
    }
    /// 250 for RCPT TO.
    pub fn recipient_ok() -> Self {
        Self::new(250, "2.1.5", "Recipient ok")
    }
    /// 354 after DATA.
    pub fn start_data() -> Self {
        Self::plain(354, vec!["End data with <CR><LF>.<CR><LF>".into()])
    }
    /// 250 for an accepted BDAT chunk that is not the last.
    pub fn chunk_ok(octets: u64) -> Self {
        Self::new(250, "2.0.0", format!("{octets} octets received"))
    }
    /// 250 once a message is durably queued.
    pub fn queued(id: &str) -> Self {
        Self::new(250, "2.0.0", format!("Ok: queued as {id}"))
    }

    // ----- syntax and sequence errors -----

    /// 500 unknown command.
    pub fn unknown_command() -> Self {
        Self::new(500, "5.5.2", "Syntax error, command unrecognized")
    }
    /// 500 command line too long.
    pub fn line_too_long() -> Self {
        Self::new(500, "5.5.2", "Line too long")
    }
    /// 500 for a command line carrying a bare CR or LF.
    pub fn bare_line_ending_in_command() -> Self {
        Self::new(
            500,
            "5.5.2",
            "Bare CR or LF in command line; lines must end with CRLF",
        )
    }
    /// 502 known but not implemented command.
    pub fn not_implemented(cmd: &str) -> Self {
        Self::new(502, "5.5.1", format!("{cmd} not implemented"))
    }
    /// 501 syntax error in parameters.
    pub fn syntax(detail: impl Into<String>) -> Self {
        Self::new(501, "5.5.4", detail)
    }
    /// 501 for a malformed address.
    pub fn bad_address(detail: impl Into<String>) -> Self {
        Self::new(501, "5.1.3", detail)
    }
    /// 503 bad sequence of commands.
    pub fn bad_sequence(detail: impl Into<String>) -> Self {
        Self::new(503, "5.5.1", detail)
    }
    /// 555 unrecognized MAIL/RCPT parameter.
    pub fn unknown_parameter(name: &str) -> Self {
        Self::new(555, "5.5.4", format!("Unsupported parameter {name}"))
    }
    /// 553 for a UTF-8 address without SMTPUTF8 (RFC 6531 §3.7.4.1).
    pub fn utf8_needs_smtputf8() -> Self {
        Self::new(
            553,
            "5.6.7",
            "Non-ASCII address requires the SMTPUTF8 parameter",
        )
    }
    /// 501 for non-ASCII where SMTPUTF8 was not negotiated via EHLO.
    pub fn eight_bit_command() -> Self {
        Self::new(501, "5.5.2", "Non-ASCII octets in command without SMTPUTF8")
    }

    // ----- plugins -----

    /// A reply a plugin asked for, after the plugin host checked that its
    /// code and enhanced status fit the verdict. Long text is split into
    /// several lines so that none is over 512 octets (RFC 5321 §4.5.3.1.5).
    pub fn from_plugin(code: u16, status: String, text: String) -> Self {
        // "550-" + status + " " + text + CRLF
        let room = MAX_REPLY_LINE - 4 - status.len() - 1 - 2;
        Reply {
            code,
            lines: wrap(&text, room),
            status: Some(Cow::Owned(status)),
        }
    }
    /// 451 when a plugin failed and its on_error policy is tempfail.
    pub fn plugin_failed_tempfail() -> Self {
        Self::new(451, "4.3.0", "Temporary local problem, try again later")
    }
    /// 550 when a plugin failed and its on_error policy is reject.
    pub fn plugin_failed_reject() -> Self {
        Self::new(550, "5.7.0", "Message refused by local policy")
    }
    /// Default reply of a reject verdict.
    pub fn policy_reject() -> Self {
        Self::new(550, "5.7.1", "Refused by local policy")
    }
    /// Default reply of a reject verdict at connect time (RFC 5321 §3.1).
    pub fn policy_reject_connect() -> Self {
        Self::new(554, "5.7.1", "Connection refused by local policy")
    }
    /// Default reply of a tempfail verdict.
    pub fn policy_tempfail() -> Self {
        Self::new(451, "4.7.1", "Try again later")
    }
    /// Default reply of a disconnect verdict.
    pub fn policy_disconnect(hostname: &str) -> Self {
        Self::new(421, "4.7.0", format!("{hostname} Closing connection"))
    }
    /// 250 for a message a plugin discarded (the client must not learn it).
    pub fn discarded() -> Self {
        Self::new(250, "2.0.0", "Ok: message accepted")
    }

    // ----- policy -----

    /// 552 message size exceeds the limit (at MAIL or during DATA).
    pub fn too_big(limit: u64) -> Self {
        Self::new(
            552,
            "5.3.4",
            format!("Message size exceeds fixed limit of {limit} octets"),
        )
    }
    /// 452 too many recipients (RFC 5321 §4.5.3.1.10).
    pub fn too_many_recipients() -> Self {
        Self::new(452, "4.5.3", "Too many recipients")
    }
    /// 550 user unknown.
    pub fn no_such_user(addr: &str) -> Self {
        Self::new(
            550,
            "5.1.1",
            format!("<{addr}>: Recipient address rejected: user unknown"),
        )
    }
    /// 550 relay denied.
    pub fn relay_denied(addr: &str) -> Self {
        Self::new(550, "5.7.1", format!("<{addr}>: Relay access denied"))
    }
    /// 550 for a message containing bare CR or LF (SMTP smuggling defence).
    pub fn bare_line_ending_in_data() -> Self {
        Self::new(
            550,
            "5.6.0",
            "Message refused: bare CR or LF found; lines must end with CRLF",
        )
    }
    /// 550 for a message with a text line over the limit.
    pub fn data_line_too_long(limit: usize) -> Self {
        Self::new(
            550,
            "5.6.0",
            format!("Message refused: line longer than {limit} octets"),
        )
    }
    /// 554 when DATA is sent without any accepted recipient.
    pub fn no_valid_recipients() -> Self {
        Self::new(554, "5.5.1", "No valid recipients")
    }

    // ----- STARTTLS (RFC 3207) and AUTH (RFC 4954) -----

    /// 220 go ahead with the TLS handshake.
    pub fn ready_for_tls() -> Self {
        Self::new(220, "2.0.0", "Ready to start TLS")
    }
    /// 503 STARTTLS on a connection that already has TLS.
    pub fn already_tls() -> Self {
        Self::new(503, "5.5.1", "TLS already active")
    }
    /// 530 a command that needs TLS first (RFC 3207 §4).
    pub fn tls_required() -> Self {
        Self::new(530, "5.7.0", "Must issue a STARTTLS command first")
    }
    /// 530 MAIL on a submission listener without AUTH (RFC 4954 §6).
    pub fn auth_required() -> Self {
        Self::new(530, "5.7.0", "Authentication required")
    }
    /// 334 server challenge (base64 text, possibly empty).
    pub fn auth_challenge(base64: &str) -> Self {
        Self::plain(334, vec![base64.to_string()])
    }
    /// 235 authentication succeeded.
    pub fn auth_ok() -> Self {
        Self::new(235, "2.7.0", "Authentication successful")
    }
    /// 535 wrong credentials (the same text whether or not the user exists).
    pub fn auth_failed() -> Self {
        Self::new(535, "5.7.8", "Authentication credentials invalid")
    }
    /// 454 too many password checks running at once (`auth.max_verifications`);
    /// the client may try again later (RFC 4954 §6).
    pub fn auth_busy() -> Self {
        Self::new(
            454,
            "4.7.0",
            "Temporary authentication failure, try again later",
        )
    }
    /// 501 the client cancelled the exchange with `*`.
    pub fn auth_cancelled() -> Self {
        Self::new(501, "5.0.0", "Authentication cancelled")
    }
    /// 501 a response that is not valid base64 or not the mechanism's shape.
    pub fn auth_malformed() -> Self {
        Self::new(501, "5.5.2", "Cannot decode the authentication response")
    }
    /// 504 a mechanism we do not offer.
    pub fn auth_mechanism_unknown() -> Self {
        Self::new(504, "5.5.4", "Unrecognized authentication mechanism")
    }
    /// 503 AUTH after a successful AUTH, or during a transaction.
    pub fn auth_not_now(detail: &str) -> Self {
        Self::new(503, "5.5.1", detail.to_string())
    }
    /// 538 AUTH over plaintext where TLS is required for it.
    pub fn auth_needs_encryption() -> Self {
        Self::new(
            538,
            "5.7.11",
            "Encryption required for requested authentication mechanism",
        )
    }
    /// 421 the session is closed after too many failed AUTH attempts.
    pub fn too_many_auth_failures(hostname: &str) -> Self {
        Self::new(
            421,
            "4.7.0",
            format!("{hostname} Too many authentication failures, closing connection"),
        )
    }
    /// 553 an authenticated user used a sender address they may not use.
    pub fn sender_not_owned(addr: &str) -> Self {
        Self::new(
            553,
            "5.7.1",
            format!("<{addr}>: Sender address not owned by the authenticated user"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_text_is_split_into_lines_that_fit() {
        let words = "word ".repeat(300);
        let wide = "\u{1F600}".repeat(300);
        for text in [words.as_str(), wide.as_str(), &"x".repeat(1500)] {
            let r = Reply::from_plugin(550, "5.7.1".into(), text.to_string());
            let wire = r.to_wire();
            assert!(r.lines.len() > 1, "{wire}");
            for line in wire.split_inclusive("\r\n") {
                assert!(line.len() <= MAX_REPLY_LINE, "{} octets", line.len());
            }
            let joined: String = r.lines.concat();
            assert_eq!(joined.replace(' ', ""), text.replace(' ', ""));
        }
        assert_eq!(
            Reply::from_plugin(250, "2.0.0".into(), "ok".into()).lines,
            ["ok"]
        );
    }

    #[test]
    fn encodes_single_and_multi_line() {
        assert_eq!(Reply::ok().to_wire(), "250 2.0.0 Ok\r\n");
        let r = Reply::ehlo("mx", "c", &["PIPELINING".into(), "SIZE 10".into()]);
        assert_eq!(
            r.to_wire(),
            "250-mx Hello c\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        assert_eq!(Reply::greeting("mx").to_wire(), "220 mx ESMTP wasmtp\r\n");
    }

    #[test]
    fn long_echoed_text_is_cut_to_512_octets() {
        let name = "é".repeat(300);
        let wire = Reply::helo("mx", &name).to_wire();
        assert_eq!(wire.len(), 511, "cut before a split character");
        assert!(wire.starts_with("250 mx Hello éé") && wire.ends_with("é\r\n"));
        let wire = Reply::unknown_parameter(&"X".repeat(600)).to_wire();
        assert_eq!(wire.len(), 512);
        let ehlo = Reply::ehlo("mx", &"a".repeat(505), &["SIZE 1".into()]).to_wire();
        assert!(
            ehlo.split_inclusive("\r\n").all(|l| l.len() <= 512),
            "{ehlo}"
        );
        assert!(ehlo.ends_with("250 SIZE 1\r\n"));
    }
}
