//! RFC 5321 paths and mailboxes (§4.1.2), with RFC 6531 UTF-8 extensions.
//!
//! The parser is strict about structure (a relay trick like
//! `"user@other"@local` keeps its quotes in the local part, so it can never
//! be mistaken for another domain) and records whether the address needs
//! SMTPUTF8, which the session checks against the MAIL parameters.

use std::fmt;

/// A mailbox `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Address {
    /// Local part in wire form (a quoted string keeps its quotes).
    pub local: String,
    /// Domain, or an address literal in brackets.
    pub domain: String,
}

impl Address {
    /// True when the address contains non-ASCII characters (RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }

    /// The domain lower-cased for comparisons (ASCII only; U-labels kept).
    pub fn domain_lower(&self) -> String {
        self.domain.to_lowercase()
    }

    /// True if the local part is a quoted string.
    pub fn is_quoted(&self) -> bool {
        self.local.starts_with('"')
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// A reverse-path or forward-path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// `<>`: the null reverse-path (bounces).
    Null,
    /// `<Postmaster>` without a domain (RCPT only, RFC 5321 §4.1.1.3).
    Postmaster,
    /// A mailbox (any source route is dropped, RFC 5321 §4.1.1.3).
    Mailbox(Address),
}

/// Why a path did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The path is not enclosed in angle brackets.
    #[error("address must be enclosed in <>")]
    NoBrackets,
    /// Structure or characters are invalid.
    #[error("bad address syntax: {0}")]
    Syntax(&'static str),
    /// Over the RFC 5321 §4.5.3.1 length limits.
    #[error("address too long")]
    TooLong,
}

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

/// Parses `<...>` at the start of `s`; returns the path and the rest of the
/// line (ESMTP parameters). `s` must already be UTF-8.
pub fn parse_path(s: &str) -> Result<(Path, &str), AddressError> {
    let s = s.trim_start_matches(' ');
    if !s.starts_with('<') {
        return Err(AddressError::NoBrackets);
    }
    let end = find_close(s).ok_or(AddressError::NoBrackets)?;
    let inner = &s[1..end];
    let rest = &s[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(AddressError::Syntax("text after >"));
    }
    if inner.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    if inner.is_empty() {
        return Ok((Path::Null, rest));
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok((Path::Postmaster, rest));
    }
    let mailbox = strip_source_route(inner)?;
    Ok((Path::Mailbox(parse_mailbox(mailbox)?), rest))
}

/// Finds the `>` closing the path, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    let mut quoted = false;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `@a,@b:user@dom` -> `user@dom`; the route's domains must be well formed.
fn strip_source_route(s: &str) -> Result<&str, AddressError> {
    if !s.starts_with('@') {
        return Ok(s);
    }
    let colon = s
        .find(':')
        .ok_or(AddressError::Syntax("source route without ':'"))?;
    for hop in s[..colon].split(',') {
        let d = hop
            .strip_prefix('@')
            .ok_or(AddressError::Syntax("bad source route"))?;
        check_domain(d)?;
    }
    Ok(&s[colon + 1..])
}

/// Parses `local@domain`.
pub fn parse_mailbox(s: &str) -> Result<Address, AddressError> {
    let (local, domain) = split_local(s)?;
    if local.len() > MAX_LOCAL {
        return Err(AddressError::TooLong);
    }
    check_local(local)?;
    check_domain(domain)?;
    Ok(Address {
        local: local.to_string(),
        domain: domain.to_string(),
    })
}

/// Splits at the `@` that ends the local part (after a quoted string).
fn split_local(s: &str) -> Result<(&str, &str), AddressError> {
    let at = if s.starts_with('"') {
        let b = s.as_bytes();
        let mut i = 1;
        let mut close = None;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 1,
                b'"' => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let close = close.ok_or(AddressError::Syntax("unterminated quoted string"))?;
        if b.get(close + 1) != Some(&b'@') {
            return Err(AddressError::Syntax(
                "quoted local part must be followed by @",
            ));
        }
        close + 1
    } else {
        s.rfind('@')
            .ok_or(AddressError::Syntax("missing @domain"))?
    };
    Ok((&s[..at], &s[at + 1..]))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_local(local: &str) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::Syntax("empty local part"));
    }
    if let Some(q) = local.strip_prefix('"') {
        let q = q
            .strip_suffix('"')
            .ok_or(AddressError::Syntax("bad quoted string"))?;
        let mut chars = q.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n) if (' '..='~').contains(&n) => {}
                    _ => return Err(AddressError::Syntax("bad quoted pair")),
                },
                '"' => return Err(AddressError::Syntax("bad quoted string")),
                c if (' '..='~').contains(&c) || !c.is_ascii() => {}
                _ => return Err(AddressError::Syntax("control character in local part")),
            }
        }
        return Ok(());
    }
    for atom in local.split('.') {
        if atom.is_empty() {
            return Err(AddressError::Syntax("empty atom in local part"));
        }
        if !atom.chars().all(is_atext) {
            return Err(AddressError::Syntax("invalid character in local part"));
        }
    }
    Ok(())
}

/// Checks the argument of EHLO/HELO: a domain or an address literal, as
/// `check_domain`, except that `_` is let through (Windows machine names
/// carry it and it can forge nothing).
pub fn check_helo(d: &str) -> Result<(), AddressError> {
    check_domain_with(d, true)
}

/// Checks a domain name or address literal.
pub fn check_domain(d: &str) -> Result<(), AddressError> {
    check_domain_with(d, false)
}

fn check_domain_with(d: &str, underscore: bool) -> Result<(), AddressError> {
    if d.is_empty() {
        return Err(AddressError::Syntax("empty domain"));
    }
    if d.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    if let Some(lit) = d.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or(AddressError::Syntax("bad address literal"))?;
        let ok = match lit.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("ipv6:") => {
                lit[5..].parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(())
        } else {
            Err(AddressError::Syntax("bad address literal"))
        };
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric()
                        || c == '-'
                        || (underscore && c == '_')
                        // U-labels (RFC 6531), but no control or space characters.
                        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
            });
        if !ok {
            return Err(AddressError::Syntax("invalid domain"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbox(s: &str) -> Result<Address, AddressError> {
        match parse_path(s)?.0 {
            Path::Mailbox(a) => Ok(a),
            other => panic!("not a mailbox: {other:?}"),
        }
    }

    #[test]
    fn parses_paths() {
        assert_eq!(parse_path("<>").unwrap().0, Path::Null);
        assert_eq!(parse_path("<Postmaster>").unwrap().0, Path::Postmaster);
        assert_eq!(parse_path("<postmaster> SIZE=1").unwrap().1, " SIZE=1");
        let a = mbox("<a.b+c@Example.TEST>").unwrap();
        assert_eq!(
            (a.local.as_str(), a.domain.as_str()),
            ("a.b+c", "Example.TEST")
        );
        let a = mbox("<@relay.test,@r2.test:joe@example.test>").unwrap();
        assert_eq!(a.to_string(), "joe@example.test");
        let a = mbox(r#"<"user@other"@local.test>"#).unwrap();
        assert_eq!(a.domain, "local.test");
        assert!(a.is_quoted());
        assert!(mbox("<u@[127.0.0.1]>").is_ok());
        assert!(mbox("<u@[IPv6:::1]>").is_ok());
        assert!(mbox("<jösé@bücher.test>").unwrap().is_utf8());
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "a@b",
            "<a@b",
            "<a>",
            "<a@>",
            "<@b>",
            "<a..b@c>",
            "<.a@c>",
            "<a@-b.c>",
            "<a@b..c>",
            "<\"a@c>",
            "<a b@c>",
            "<a@[1.2.3]>",
            "<a@b>x",
            "<@x:a>",
        ] {
            assert!(parse_path(bad).is_err(), "{bad} should fail");
        }
        let long = format!("<{}@x.test>", "a".repeat(65));
        assert_eq!(parse_path(&long).unwrap_err(), AddressError::TooLong);
    }
}
