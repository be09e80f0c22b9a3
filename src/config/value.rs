//! Config values shared by every section: sizes, durations, bounded
//! integers, domain names, line endings. This module depends on nothing
//! else in `config`, so a section owned by another module (`tls`, `auth`,
//! `delivery::remote`) imports from here and never points back up at the
//! assembler in `config/mod.rs`.

use std::time::Duration;

use serde::Deserialize;

/// Line endings in delivered Maildir files.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LineEndings {
    /// Unix line endings, as Postfix's local(8) and Dovecot's LDA write.
    #[default]
    Lf,
    /// Keep CRLF as received.
    Crlf,
}

/// A size such as `25MiB`, `10MB`, `512KiB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?}: expected a number of bytes or e.g. \"25MiB\", \"10MB\", \"512KiB\""
                ))
            }),
        }
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A duration such as `5m`, `30s`, `2h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}): expected e.g. \"30s\", \"5m\", \"1h\""
            ))
        })
    }
}

/// An integer with a lower bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtLeast<const MIN: usize>(pub usize);

impl<'de, const MIN: usize> Deserialize<'de> for AtLeast<MIN> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        if n < MIN as i64 {
            return Err(serde::de::Error::custom(format!(
                "{n} is too small: expected an integer >= {MIN}"
            )));
        }
        Ok(AtLeast(n as usize))
    }
}

/// An integer in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Between<const MIN: usize, const MAX: usize>(pub usize);

impl<'de, const MIN: usize, const MAX: usize> Deserialize<'de> for Between<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        if n < MIN as i64 || n > MAX as i64 {
            return Err(serde::de::Error::custom(format!(
                "{n} is out of range: expected an integer from {MIN} to {MAX}"
            )));
        }
        Ok(Between(n as usize))
    }
}

/// A DNS domain name, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain(pub String);

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match crate::smtp::address::check_domain(&s) {
            Ok(()) if !s.starts_with('[') => Ok(Domain(s.to_lowercase())),
            _ => Err(serde::de::Error::custom(format!(
                "invalid domain name {s:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("25MiB"), Some(25 * 1024 * 1024));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1XB"), None);
    }
}
