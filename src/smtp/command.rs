//! SMTP command parsing (RFC 5321 §4.1, with the ESMTP parameters of
//! RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 3030 BDAT, RFC 6531 SMTPUTF8 and
//! RFC 3461 DSN: RET, ENVID, NOTIFY, ORCPT).
//!
//! Input is one command line without its CRLF; output is a typed command or
//! an error the session turns into a reply.

use super::address::{AddressError, Path, parse_path};
use super::reply::Reply;

/// The BODY= parameter of MAIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Body {
    /// BODY=7BIT
    SevenBit,
    /// BODY=8BITMIME
    EightBitMime,
    /// BODY=BINARYMIME (only with BDAT)
    BinaryMime,
}

/// Parameters of MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// SIZE= declared by the client.
    pub size: Option<u64>,
    /// BODY= declared by the client.
    pub body: Option<Body>,
    /// SMTPUTF8 given.
    pub smtputf8: bool,
    /// AUTH= given (RFC 4954 §5); kept for the record, not trusted.
    pub auth: Option<String>,
    /// RET= (RFC 3461 §4.3): what a failure DSN returns.
    pub ret: Option<Ret>,
    /// ENVID= (RFC 3461 §4.4), decoded from xtext.
    pub envid: Option<String>,
}

/// RET= of MAIL (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ret {
    /// RET=FULL: the whole message.
    Full,
    /// RET=HDRS: its headers only.
    Hdrs,
}

/// NOTIFY= of RCPT (RFC 3461 §4.1): when to send a DSN. `NOTIFY=NEVER`
/// is all false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Notify {
    /// SUCCESS
    pub success: bool,
    /// FAILURE
    pub failure: bool,
    /// DELAY
    pub delay: bool,
}

/// Parameters of RCPT TO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// NOTIFY= (RFC 3461 §4.1); None means the default (failure, and delay
    /// at the server's discretion).
    pub notify: Option<Notify>,
    /// ORCPT= (RFC 3461 §4.2) as `addr-type;address`, decoded from xtext.
    pub orcpt: Option<String>,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// EHLO domain
    Ehlo(String),
    /// HELO domain
    Helo(String),
    /// MAIL FROM:<path> params
    Mail(Path, MailParams),
    /// RCPT TO:<path> params
    Rcpt(Path, RcptParams),
    /// DATA
    Data,
    /// BDAT size [LAST]
    Bdat(u64, bool),
    /// RSET
    Rset,
    /// NOOP
    Noop,
    /// QUIT
    Quit,
    /// HELP [topic]
    Help,
    /// VRFY string
    Vrfy,
    /// STARTTLS (RFC 3207)
    StartTls,
    /// AUTH mechanism [initial-response] (RFC 4954); the mechanism upper-cased.
    Auth(String, Option<String>),
    /// A command we know but do not offer (EXPN, TURN, ...), by name.
    NotImplemented(&'static str),
}

impl Command {
    /// The verb, upper case, as named in metrics (`MAIL`, `STARTTLS`).
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail(..) => "MAIL",
            Command::Rcpt(..) => "RCPT",
            Command::Data => "DATA",
            Command::Bdat(..) => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Help => "HELP",
            Command::Vrfy => "VRFY",
            Command::StartTls => "STARTTLS",
            Command::Auth(..) => "AUTH",
            Command::NotImplemented(_) => "other",
        }
    }
}

/// Why a command line did not parse; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb.
    Unknown,
    /// Known but unsupported verb.
    NotImplemented(&'static str),
    /// Bad arguments.
    Syntax(&'static str),
    /// Bad path.
    Address(AddressError),
    /// Unsupported or malformed ESMTP parameter.
    UnknownParam(String),
    /// Command line is not valid UTF-8.
    NotUtf8,
}

impl CommandError {
    /// The reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unknown => Reply::unknown_command(),
            CommandError::NotImplemented(v) => Reply::not_implemented(v),
            CommandError::Syntax(s) => Reply::syntax(*s),
            CommandError::Address(e) => Reply::bad_address(e.to_string()),
            CommandError::UnknownParam(p) => Reply::unknown_parameter(p),
            CommandError::NotUtf8 => Reply::eight_bit_command(),
        }
    }
}

/// Parses one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::NotUtf8)?;
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    match upper.as_str() {
        "EHLO" | "HELO" => {
            // A domain or an address literal (RFC 5321 §4.1.1.1); anything
            // else (control characters, parentheses, spaces) could forge
            // fields of the Received header it ends up in.
            let host = arg.trim_matches(' ');
            if super::address::check_helo(host).is_err() {
                return Err(CommandError::Syntax(
                    "Syntax: EHLO domain or address literal",
                ));
            }
            Ok(if upper == "EHLO" {
                Command::Ehlo(host.into())
            } else {
                Command::Helo(host.into())
            })
        }
        "MAIL" => {
            let rest = strip_keyword(arg, "FROM:")
                .ok_or(CommandError::Syntax("Syntax: MAIL FROM:<address>"))?;
            let (path, params) = parse_path(rest).map_err(CommandError::Address)?;
            if path == Path::Postmaster {
                return Err(CommandError::Address(AddressError::Syntax(
                    "missing @domain",
                )));
            }
            Ok(Command::Mail(path, parse_mail_params(params)?))
        }
        "RCPT" => {
            let rest = strip_keyword(arg, "TO:")
                .ok_or(CommandError::Syntax("Syntax: RCPT TO:<address>"))?;
            let (path, params) = parse_path(rest).map_err(CommandError::Address)?;
            if path == Path::Null {
                return Err(CommandError::Address(AddressError::Syntax(
                    "null recipient",
                )));
            }
            Ok(Command::Rcpt(path, parse_rcpt_params(params)?))
        }
        "DATA" => no_arg(arg, Command::Data),
        "BDAT" => parse_bdat(arg),
        "RSET" => no_arg(arg, Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_arg(arg, Command::Quit),
        "HELP" => Ok(Command::Help),
        "VRFY" => {
            if arg.trim().is_empty() {
                return Err(CommandError::Syntax("Syntax: VRFY string"));
            }
            Ok(Command::Vrfy)
        }
        "EXPN" => Err(CommandError::NotImplemented("EXPN")),
        "TURN" => Err(CommandError::NotImplemented("TURN")),
        "ETRN" => Err(CommandError::NotImplemented("ETRN")),
        "STARTTLS" => no_arg(arg, Command::StartTls),
        "AUTH" => {
            let mut parts = arg.split(' ').filter(|s| !s.is_empty());
            let mech = parts.next().ok_or(CommandError::Syntax(
                "Syntax: AUTH mechanism [initial-response]",
            ))?;
            let initial = parts.next().map(str::to_string);
            if parts.next().is_some() {
                return Err(CommandError::Syntax(
                    "Syntax: AUTH mechanism [initial-response]",
                ));
            }
            Ok(Command::Auth(mech.to_ascii_uppercase(), initial))
        }
        "SEND" | "SOML" | "SAML" => Err(CommandError::NotImplemented("SEND")),
        _ => Err(CommandError::Unknown),
    }
}

fn no_arg(arg: &str, cmd: Command) -> Result<Command, CommandError> {
    if arg.trim().is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax("Syntax: command takes no argument"))
    }
}

/// `FROM:<x>` / `FROM: <x>`, keyword case-insensitive.
fn strip_keyword<'a>(arg: &'a str, kw: &str) -> Option<&'a str> {
    let head = arg.get(..kw.len())?;
    if head.eq_ignore_ascii_case(kw) {
        Some(arg[kw.len()..].trim_start_matches(' '))
    } else {
        None
    }
}

fn params_iter(s: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    s.split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        })
}

fn parse_mail_params(s: &str) -> Result<MailParams, CommandError> {
    let mut p = MailParams::default();
    for (name, value) in params_iter(s) {
        let bad = || CommandError::UnknownParam(name.to_string());
        match (name.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) if p.size.is_none() => {
                p.size = Some(
                    v.parse()
                        .map_err(|_| CommandError::Syntax("Bad SIZE value"))?,
                );
            }
            ("BODY", Some(v)) if p.body.is_none() => {
                p.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    "BINARYMIME" => Body::BinaryMime,
                    _ => return Err(CommandError::Syntax("Bad BODY value")),
                });
            }
            ("SMTPUTF8", None) if !p.smtputf8 => p.smtputf8 = true,
            ("AUTH", Some(v)) if p.auth.is_none() => p.auth = Some(v.to_string()),
            ("RET", _) if p.ret.is_some() => return Err(CommandError::Syntax("Duplicate RET")),
            ("RET", Some(v)) => {
                p.ret = Some(match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Hdrs,
                    _ => return Err(CommandError::Syntax("Bad RET value")),
                });
            }
            ("ENVID", _) if p.envid.is_some() => {
                return Err(CommandError::Syntax("Duplicate ENVID"));
            }
            ("ENVID", Some(v)) => {
                p.envid = Some(
                    xtext_decode(v, MAX_ENVID).ok_or(CommandError::Syntax("Bad ENVID value"))?,
                );
            }
            ("RET" | "ENVID", None) => return Err(CommandError::Syntax("Missing DSN value")),
            _ => return Err(bad()),
        }
    }
    Ok(p)
}

/// Longest ENVID, decoded (RFC 3461 §4.4).
const MAX_ENVID: usize = 100;
/// Longest ORCPT, decoded (RFC 3461 §4.2).
const MAX_ORCPT: usize = 500;

fn parse_rcpt_params(s: &str) -> Result<RcptParams, CommandError> {
    let mut p = RcptParams::default();
    for (name, value) in params_iter(s) {
        match (name.to_ascii_uppercase().as_str(), value) {
            ("NOTIFY", _) if p.notify.is_some() => {
                return Err(CommandError::Syntax("Duplicate NOTIFY"));
            }
            ("NOTIFY", Some(v)) => {
                p.notify = Some(parse_notify(v).ok_or(CommandError::Syntax("Bad NOTIFY value"))?);
            }
            ("ORCPT", _) if p.orcpt.is_some() => {
                return Err(CommandError::Syntax("Duplicate ORCPT"));
            }
            ("ORCPT", Some(v)) => {
                p.orcpt = Some(parse_orcpt(v).ok_or(CommandError::Syntax("Bad ORCPT value"))?);
            }
            ("NOTIFY" | "ORCPT", None) => {
                return Err(CommandError::Syntax("Missing DSN value"));
            }
            _ => return Err(CommandError::UnknownParam(name.to_string())),
        }
    }
    Ok(p)
}

/// `NEVER`, or a list of `SUCCESS`, `FAILURE`, `DELAY` (RFC 3461 §4.1),
/// each at most once.
fn parse_notify(v: &str) -> Option<Notify> {
    if v.eq_ignore_ascii_case("NEVER") {
        return Some(Notify::default());
    }
    let mut n = Notify::default();
    for word in v.split(',') {
        let flag = match word.to_ascii_uppercase().as_str() {
            "SUCCESS" => &mut n.success,
            "FAILURE" => &mut n.failure,
            "DELAY" => &mut n.delay,
            _ => return None,
        };
        if std::mem::replace(flag, true) {
            return None;
        }
    }
    Some(n)
}

/// `addr-type ";" xtext` (RFC 3461 §4.2), kept as `addr-type;decoded`.
fn parse_orcpt(v: &str) -> Option<String> {
    let (kind, addr) = v.split_once(';')?;
    let atom = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !atom(kind) {
        return None;
    }
    let addr = xtext_decode(addr, MAX_ORCPT)?;
    if addr.is_empty() {
        return None;
    }
    Some(format!("{kind};{addr}"))
}

/// Decodes RFC 3461 xtext (`+XX` is the octet XX). The decoded text must be
/// printable US-ASCII (§4.2, §4.4): it is copied into DSN header fields, so
/// no control character may come through. None if malformed or longer
/// than `max`.
pub fn xtext_decode(s: &str, max: usize) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let c = match b[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                i += 3;
                u8::from_str_radix(hex, 16).ok()?
            }
            b'=' => return None,
            c => {
                i += 1;
                c
            }
        };
        if !(b' '..=b'~').contains(&c) {
            return None;
        }
        out.push(c as char);
    }
    (out.len() <= max).then_some(out)
}

/// Encodes text as RFC 3461 xtext, for passing ENVID and ORCPT on.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

fn parse_bdat(arg: &str) -> Result<Command, CommandError> {
    let mut parts = arg.split(' ').filter(|s| !s.is_empty());
    let size = parts
        .next()
        .and_then(|s| {
            if s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<u64>().ok()
            } else {
                None
            }
        })
        .ok_or(CommandError::Syntax("Syntax: BDAT size [LAST]"))?;
    let last = match parts.next() {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("Syntax: BDAT size [LAST]")),
    };
    if parts.next().is_some() {
        return Err(CommandError::Syntax("Syntax: BDAT size [LAST]"));
    }
    Ok(Command::Bdat(size, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::Address;

    fn addr(l: &str, d: &str) -> Path {
        Path::Mailbox(Address {
            local: l.into(),
            domain: d.into(),
        })
    }

    fn assert_parses(table: &[(&[u8], Command)]) {
        for (line, want) in table {
            assert_eq!(
                &parse_command(line).unwrap(),
                want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn parses_commands() {
        let table: &[(&[u8], Command)] = &[
            (b"EHLO client.test", Command::Ehlo("client.test".into())),
            (b"helo [127.0.0.1]", Command::Helo("[127.0.0.1]".into())),
            (b"EHLO [IPv6:::1]", Command::Ehlo("[IPv6:::1]".into())),
            (b"EHLO my_pc.local", Command::Ehlo("my_pc.local".into())),
            (
                b"EHLO b\xc3\xbccher.test",
                Command::Ehlo("bücher.test".into()),
            ),
            (
                b"MAIL FROM:<a@b.test>",
                Command::Mail(addr("a", "b.test"), MailParams::default()),
            ),
            (
                b"mail from: <>",
                Command::Mail(Path::Null, MailParams::default()),
            ),
            (
                b"MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME SMTPUTF8",
                Command::Mail(
                    addr("a", "b.test"),
                    MailParams {
                        size: Some(100),
                        body: Some(Body::EightBitMime),
                        smtputf8: true,
                        ..MailParams::default()
                    },
                ),
            ),
            (
                b"RCPT TO:<Postmaster>",
                Command::Rcpt(Path::Postmaster, RcptParams::default()),
            ),
            (
                b"RCPT TO:<x@y.test>",
                Command::Rcpt(addr("x", "y.test"), RcptParams::default()),
            ),
            (b"DATA", Command::Data),
            (b"BDAT 100", Command::Bdat(100, false)),
            (b"bdat 0 last", Command::Bdat(0, true)),
            (b"RSET", Command::Rset),
            (b"NOOP whatever", Command::Noop),
            (b"QUIT", Command::Quit),
            (b"HELP", Command::Help),
            (b"VRFY root", Command::Vrfy),
            (b"STARTTLS", Command::StartTls),
            (b"auth plain", Command::Auth("PLAIN".into(), None)),
            (
                b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
                Command::Auth("PLAIN".into(), Some("AGFsaWNlAHNlY3JldA==".into())),
            ),
            (
                b"AUTH LOGIN =",
                Command::Auth("LOGIN".into(), Some("=".into())),
            ),
        ];
        assert_parses(table);
    }

    #[test]
    fn parses_dsn_parameters() {
        let notify = |success, failure, delay| Notify {
            success,
            failure,
            delay,
        };
        let table: &[(&[u8], Command)] = &[
            (
                b"MAIL FROM:<a@b.test> RET=hdrs ENVID=QQ+2B314+3D+20x",
                Command::Mail(
                    addr("a", "b.test"),
                    MailParams {
                        ret: Some(Ret::Hdrs),
                        envid: Some("QQ+314= x".into()),
                        ..MailParams::default()
                    },
                ),
            ),
            (
                b"MAIL FROM:<> RET=FULL",
                Command::Mail(
                    Path::Null,
                    MailParams {
                        ret: Some(Ret::Full),
                        ..MailParams::default()
                    },
                ),
            ),
            (
                b"RCPT TO:<x@y.test> NOTIFY=NEVER",
                Command::Rcpt(
                    addr("x", "y.test"),
                    RcptParams {
                        notify: Some(Notify::default()),
                        orcpt: None,
                    },
                ),
            ),
            (
                b"RCPT TO:<x@y.test> notify=delay,Success ORCPT=rfc822;x+2Bold@y.test",
                Command::Rcpt(
                    addr("x", "y.test"),
                    RcptParams {
                        notify: Some(notify(true, false, true)),
                        orcpt: Some("rfc822;x+old@y.test".into()),
                    },
                ),
            ),
            (
                b"RCPT TO:<x@y.test> NOTIFY=FAILURE,DELAY,SUCCESS",
                Command::Rcpt(
                    addr("x", "y.test"),
                    RcptParams {
                        notify: Some(notify(true, true, true)),
                        orcpt: None,
                    },
                ),
            ),
        ];
        assert_parses(table);
    }

    #[test]
    fn xtext_round_trips() {
        for s in ["plain", "a+b=c d", "~!", ""] {
            assert_eq!(xtext_decode(&xtext_encode(s), 100).as_deref(), Some(s));
        }
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode(&"x".repeat(101), 100), None);
        let e = parse_command(b"MAIL FROM:<a@b> ENVID=+0A").unwrap_err();
        assert_eq!(e.reply().to_wire(), "501 5.5.4 Bad ENVID value\r\n");
    }

    #[test]
    fn command_errors() {
        let table: &[(&[u8], u16)] = &[
            (b"FOO", 500),
            (b"", 500),
            (b"EXPN list", 502),
            (b"EHLO", 501),
            // Trace-field forgery through the Received header.
            (b"EHLO x (forged by evil)", 501),
            (b"EHLO x\tby", 501),
            (b"EHLO x\x01", 501),
            (b"HELO a;b", 501),
            (b"EHLO [1.2.3]", 501),
            (b"EHLO a\xc2\x85b", 501),
            (b"MAIL TO:<a@b>", 501),
            (b"MAIL FROM:a@b", 501),
            (b"MAIL FROM:<a@b> FOO=1", 555),
            (b"MAIL FROM:<a@b> SIZE=x", 501),
            (b"MAIL FROM:<a@b> SIZE=1 SIZE=2", 555),
            (b"RCPT TO:<>", 501),
            (b"RCPT TO:<a@b> FOO=1", 555),
            // RFC 3461 DSN parameters: bad syntax and duplicates are 501.
            (b"MAIL FROM:<a@b> RET=ALL", 501),
            (b"MAIL FROM:<a@b> RET", 501),
            (b"MAIL FROM:<a@b> RET=FULL RET=HDRS", 501),
            (b"MAIL FROM:<a@b> ENVID=a ENVID=b", 501),
            (b"MAIL FROM:<a@b> ENVID=a+2", 501),
            (b"MAIL FROM:<a@b> ENVID=a+ZZb", 501),
            (b"MAIL FROM:<a@b> ENVID=a=b", 501),
            // No control characters into DSN header fields.
            (b"MAIL FROM:<a@b> ENVID=a+0D+0ABcc:+20x", 501),
            (b"MAIL FROM:<a@b> ENVID=caf\xc3\xa9", 501),
            (b"RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS", 501),
            (b"RCPT TO:<a@b> NOTIFY=SUCCESS,SUCCESS", 501),
            (b"RCPT TO:<a@b> NOTIFY=SUCCESS,", 501),
            (b"RCPT TO:<a@b> NOTIFY=", 501),
            (b"RCPT TO:<a@b> NOTIFY", 501),
            (b"RCPT TO:<a@b> NOTIFY=SOMETIMES", 501),
            (b"RCPT TO:<a@b> NOTIFY=DELAY NOTIFY=DELAY", 501),
            (b"RCPT TO:<a@b> ORCPT=a@b", 501),
            (b"RCPT TO:<a@b> ORCPT=;a@b", 501),
            (b"RCPT TO:<a@b> ORCPT=rfc822;", 501),
            (b"RCPT TO:<a@b> ORCPT=rfc822;a+0A@b", 501),
            (b"RCPT TO:<a@b> ORCPT=rfc822;a@b ORCPT=rfc822;a@b", 501),
            (b"DATA x", 501),
            (b"BDAT", 501),
            (b"BDAT -1", 501),
            (b"BDAT 1 MORE", 501),
            (b"MAIL FROM:<\xff@b>", 501),
        ];
        for (line, code) in table {
            let e = parse_command(line).unwrap_err();
            assert_eq!(e.reply().code, *code, "{}", String::from_utf8_lossy(line));
        }
    }
}
