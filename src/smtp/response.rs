//! The client side of replies: what another server answers us, parsed
//! from bytes into the same `Reply` value the server sends, and the
//! extensions its EHLO reply offers. No I/O here; the outbound client feeds
//! bytes in.
//!
//! The parser is bounded (`MAX_REPLY`) so a hostile server cannot make us
//! buffer without end, and strict where RFC 5321 §4.2 is (three digits,
//! one code per reply), lenient where real servers are sloppy (a bare code
//! without text, an enhanced status only on some lines).

use std::borrow::Cow;

use super::reply::Reply;

/// The most octets one reply may take, all lines together.
pub const MAX_REPLY: usize = 64 * 1024;

/// Why a server's reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// A line that does not start with a three-digit code.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// A continuation line whose code differs from the first.
    #[error("reply code changes inside a multi-line reply ({0} then {1})")]
    MixedCodes(u16, u16),
    /// More than `MAX_REPLY` octets without the last line.
    #[error("reply longer than {MAX_REPLY} octets")]
    TooLong,
}

/// Parses one complete reply from the start of `buf`. `Ok(None)` means
/// more input is needed; `Ok(Some((reply, n)))` consumed `n` octets.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ResponseError> {
    let mut pos = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let Some(end) = memchr::memchr(b'\n', &buf[pos..]).map(|i| pos + i) else {
            return if buf.len() > MAX_REPLY {
                Err(ResponseError::TooLong)
            } else {
                Ok(None)
            };
        };
        if end + 1 > MAX_REPLY {
            return Err(ResponseError::TooLong);
        }
        // Servers end lines with CRLF; a bare LF is tolerated on input.
        let raw = &buf[pos..end];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = String::from_utf8_lossy(raw);
        pos = end + 1;
        let (c, last, text) = split_line(&line)?;
        match code {
            None => code = Some(c),
            Some(first) if first != c => return Err(ResponseError::MixedCodes(first, c)),
            Some(_) => {}
        }
        lines.push(text.to_string());
        if last {
            let reply = with_status(c, lines);
            return Ok(Some((reply, pos)));
        }
    }
}

/// `250-text` → (250, false, "text"); `250 text` or `250` → last line.
fn split_line(line: &str) -> Result<(u16, bool, &str), ResponseError> {
    let b = line.as_bytes();
    let malformed = || ResponseError::Malformed(line.chars().take(80).collect());
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
        return Err(malformed());
    }
    let code = line[..3].parse().map_err(|_| malformed())?;
    match b.get(3) {
        None => Ok((code, true, "")),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(malformed()),
    }
}

/// Moves an RFC 2034 enhanced status from the text into `status` when the
/// first line has one of the reply's class; later lines lose the same
/// prefix.
fn with_status(code: u16, mut lines: Vec<String>) -> Reply {
    let status = lines
        .first()
        .and_then(|l| enhanced_status(l))
        .filter(|s| s.as_bytes()[0] == b'0' + (code / 100) as u8)
        .map(str::to_string);
    if let Some(st) = &status {
        for l in &mut lines {
            if let Some(rest) = l.strip_prefix(st.as_str())
                && (rest.is_empty() || rest.starts_with(' '))
            {
                *l = rest.trim_start().to_string();
            }
        }
    }
    Reply {
        code,
        status: status.map(Cow::Owned),
        lines,
    }
}

/// `5.1.1` at the start of `text` (class.subject.detail, RFC 3463).
fn enhanced_status(text: &str) -> Option<&str> {
    let word = text.split(' ').next()?;
    let parts: Vec<&str> = word.split('.').collect();
    let ok = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()));
    ok.then_some(word)
}

impl Reply {
    /// True for 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// True for 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The reply on one line, as DSNs and logs show it:
    /// `550 5.1.1 <x@y>: user unknown`.
    pub fn one_line(&self) -> String {
        let mut s = self.code.to_string();
        if let Some(st) = &self.status {
            s.push(' ');
            s.push_str(st);
        }
        for l in self.lines.iter().filter(|l| !l.is_empty()) {
            s.push(' ');
            s.push_str(l.trim());
        }
        // Control characters never reach a log line or a DSN field.
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

/// What a server offers in its EHLO (or LHLO) reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `Some(0)` means no stated limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3461.
    pub dsn: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 4954 mechanisms, upper case.
    pub auth: Vec<String>,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// The extensions of an EHLO reply (its first line is the greeting).
    /// A HELO reply offers nothing.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            // Old servers write `AUTH=PLAIN LOGIN`.
            let (keyword, first_arg) = match keyword.split_once('=') {
                Some((k, a)) => (k.to_string(), Some(a.to_string())),
                None => (keyword, None),
            };
            let args: Vec<String> = first_arg
                .into_iter()
                .chain(words.map(str::to_string))
                .filter(|a| !a.is_empty())
                .collect();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(args.first().and_then(|a| a.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "STARTTLS" => caps.starttls = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "AUTH" => {
                    for a in args {
                        let a = a.to_ascii_uppercase();
                        if !caps.auth.contains(&a) {
                            caps.auth.push(a);
                        }
                    }
                }
                _ => {}
            }
        }
        caps
    }

    /// True when a message of `len` octets is over the stated SIZE.
    pub fn too_big(&self, len: u64) -> bool {
        matches!(self.size, Some(limit) if limit > 0 && len > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(Reply, usize)>, ResponseError> {
        parse_reply(s.as_bytes())
    }

    #[test]
    fn replies() {
        // (input, code, enhanced status, text lines, octets consumed)
        type Row<'a> = (&'a str, u16, Option<&'a str>, &'a [&'a str], usize);
        let table: &[Row] = &[
            ("220 mx.test ESMTP\r\n", 220, None, &["mx.test ESMTP"], 19),
            ("250 2.1.0 Ok\r\n", 250, Some("2.1.0"), &["Ok"], 14),
            ("250\r\n", 250, None, &[""], 5),
            (
                "354 End data with <CR><LF>.<CR><LF>\n",
                354,
                None,
                &["End data with <CR><LF>.<CR><LF>"],
                36,
            ),
            (
                "550-5.1.1 The email account\r\n550-5.1.1 does not exist.\r\n550 5.1.1 https://x\r\n",
                550,
                Some("5.1.1"),
                &["The email account", "does not exist.", "https://x"],
                77,
            ),
            // A status of the wrong class is text, not a status.
            ("451 5.1.1 odd\r\n", 451, None, &["5.1.1 odd"], 15),
            ("250 2.0.0\r\n", 250, Some("2.0.0"), &[""], 11),
            ("250 1.2.3 no\r\n", 250, None, &["1.2.3 no"], 14),
        ];
        for (input, code, status, lines, used) in table {
            let (r, n) = parse(input).unwrap().unwrap_or_else(|| panic!("{input:?}"));
            assert_eq!(r.code, *code, "{input:?}");
            assert_eq!(r.status.as_deref(), *status, "{input:?}");
            assert_eq!(r.lines, *lines, "{input:?}");
            assert_eq!(n, *used, "{input:?}");
        }
    }

    #[test]
    fn partial_and_bad_replies() {
        assert_eq!(parse("250-a\r\n250-b\r\n"), Ok(None));
        assert_eq!(parse("25"), Ok(None));
        assert_eq!(parse(""), Ok(None));
        assert!(matches!(
            parse("hello\r\n"),
            Err(ResponseError::Malformed(_))
        ));
        assert!(matches!(
            parse("2500 x\r\n"),
            Err(ResponseError::Malformed(_))
        ));
        assert!(matches!(
            parse("650 x\r\n"),
            Err(ResponseError::Malformed(_))
        ));
        assert_eq!(
            parse("250-a\r\n550 b\r\n"),
            Err(ResponseError::MixedCodes(250, 550))
        );
        let endless = "250-".to_string() + &"x".repeat(MAX_REPLY);
        assert_eq!(parse(&endless), Err(ResponseError::TooLong));
        // Only the first reply is taken; the rest stays for the next call.
        let (r, n) = parse("250 a\r\n251 b\r\n").unwrap().unwrap();
        assert_eq!((r.code, n), (250, 7));
    }

    #[test]
    fn one_line() {
        let (r, _) = parse("550-5.1.1 <x@y>: user\r\n550 5.1.1 unknown\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.one_line(), "550 5.1.1 <x@y>: user unknown");
        let (r, _) = parse("421 bye\x07now\r\n").unwrap().unwrap();
        assert_eq!(r.one_line(), "421 bye now");
    }

    #[test]
    fn capabilities() {
        let (r, _) = parse(
            "250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n\
             250-smtputf8\r\n250-DSN\r\n250-STARTTLS\r\n250-AUTH PLAIN login\r\n\
             250-AUTH=PLAIN CRAM-MD5\r\n250 ENHANCEDSTATUSCODES\r\n",
        )
        .unwrap()
        .unwrap();
        let c = Capabilities::from_ehlo(&r);
        assert!(c.pipelining && c.eight_bit_mime && c.smtputf8 && c.dsn && c.starttls);
        assert!(c.enhanced_status_codes);
        assert_eq!(c.size, Some(10_240_000));
        assert_eq!(c.auth, ["PLAIN", "LOGIN", "CRAM-MD5"]);
        assert!(c.too_big(10_240_001) && !c.too_big(10_240_000));
        let (r, _) = parse("250-x\r\n250 SIZE\r\n").unwrap().unwrap();
        let c = Capabilities::from_ehlo(&r);
        assert_eq!(c.size, Some(0));
        assert!(!c.too_big(u64::MAX) && !c.pipelining);
        // The greeting line is not an extension, even when it looks like one.
        let (r, _) = parse("250 PIPELINING\r\n").unwrap().unwrap();
        assert!(!Capabilities::from_ehlo(&r).pipelining);
    }
}
