//! The capabilities `wasmtp plugin test` replaces: a fixed clock and DNS answers written in the
//! case. The host (`host`) asks these instead of the system clock and resolver when a
//! `PluginHost` is made with `PluginHost::offline`; everything else (loading, limits, kv, notes,
//! calls) is the server's own code.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, PTR, TXT};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use serde::Deserialize;

use super::bindings::wasmtp::plugin::dns::DnsError;

/// What the fake capabilities answer.
#[derive(Debug, Clone, Default)]
pub struct Fakes {
    /// What `clock.now` returns, in milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// DNS answers by lower-case name without the trailing dot (an IP address names its
    /// reverse-lookup name).
    pub dns: BTreeMap<String, FakeName>,
}

/// The records of one name in a case (`[dns."NAME"]`). A name the case does not list does not
/// exist (`not-found`); a listed name without records of the asked type answers `not-found` too.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeName {
    /// IPv4 addresses.
    #[serde(default)]
    pub a: Vec<String>,
    /// IPv6 addresses.
    #[serde(default)]
    pub aaaa: Vec<String>,
    /// `"PREFERENCE HOST"` entries.
    #[serde(default)]
    pub mx: Vec<String>,
    /// Text records (each one string).
    #[serde(default)]
    pub txt: Vec<String>,
    /// Host names, for a name that is an IP address.
    #[serde(default)]
    pub ptr: Vec<String>,
    /// `"timeout"` or any other text (a failure with that text) instead of records.
    pub error: Option<String>,
}

impl Fakes {
    /// Checks every record once, so a typo in a case is reported before anything runs.
    pub fn check(&self) -> Result<(), String> {
        for (name, records) in &self.dns {
            for rtype in [
                RecordType::A,
                RecordType::AAAA,
                RecordType::MX,
                RecordType::TXT,
                RecordType::PTR,
            ] {
                records
                    .records(rtype)
                    .map_err(|e| format!("dns.{name:?}: {e}"))?;
            }
        }
        Ok(())
    }

    /// The answer to a lookup of `name` (as the plugin gave it, or a reverse name).
    pub(crate) fn answer(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, DnsError> {
        let wanted = name.trim_end_matches('.').to_ascii_lowercase();
        let found = self.dns.iter().find(|(key, _)| {
            let key = key.trim_end_matches('.').to_ascii_lowercase();
            key == wanted
                || key.parse::<IpAddr>().is_ok_and(|ip| {
                    Name::from(ip)
                        .to_string()
                        .trim_end_matches('.')
                        .eq_ignore_ascii_case(&wanted)
                })
        });
        let Some((_, records)) = found else {
            return Err(DnsError::NotFound);
        };
        match records.error.as_deref() {
            Some("timeout") => return Err(DnsError::Timeout),
            Some(other) => return Err(DnsError::Failed(other.to_string())),
            None => {}
        }
        let answers = records.records(rtype).map_err(DnsError::Failed)?;
        if answers.is_empty() {
            return Err(DnsError::NotFound);
        }
        Ok(answers)
    }
}

impl FakeName {
    fn records(&self, rtype: RecordType) -> Result<Vec<RData>, String> {
        let host =
            |s: &str| Name::from_str(s).map_err(|e| format!("{s:?} is not a host name: {e}"));
        let ip = |s: &str| {
            s.parse::<IpAddr>()
                .map_err(|e| format!("{s:?} is not an address: {e}"))
        };
        let list = match rtype {
            RecordType::A => &self.a,
            RecordType::AAAA => &self.aaaa,
            RecordType::MX => &self.mx,
            RecordType::TXT => &self.txt,
            RecordType::PTR => &self.ptr,
            _ => return Ok(Vec::new()),
        };
        list.iter()
            .map(|s| {
                Ok(match rtype {
                    RecordType::A => match ip(s)? {
                        IpAddr::V4(v4) => RData::A(A(v4)),
                        IpAddr::V6(_) => return Err(format!("{s:?} is IPv6: list it under aaaa")),
                    },
                    RecordType::AAAA => match ip(s)? {
                        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                        IpAddr::V4(_) => return Err(format!("{s:?} is IPv4: list it under a")),
                    },
                    RecordType::MX => {
                        let (pref, exchange) = s
                            .split_once(' ')
                            .and_then(|(p, h)| Some((p.parse::<u16>().ok()?, h.trim())))
                            .ok_or_else(|| {
                                format!("mx {s:?}: expected \"PREFERENCE HOST\", e.g. \"10 mx.example.org\"")
                            })?;
                        RData::MX(MX::new(pref, host(exchange)?))
                    }
                    RecordType::TXT => RData::TXT(TXT::new(vec![s.clone()])),
                    _ => RData::PTR(PTR(host(s)?)),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_from_the_case() {
        let mut f = Fakes::default();
        f.dns.insert(
            "Example.org".into(),
            FakeName {
                a: vec!["192.0.2.1".into()],
                mx: vec!["10 mx.example.org".into()],
                ..Default::default()
            },
        );
        f.dns.insert(
            "192.0.2.9".into(),
            FakeName {
                ptr: vec!["host.example.org".into()],
                ..Default::default()
            },
        );
        f.check().unwrap();
        assert_eq!(f.answer("example.org.", RecordType::A).unwrap().len(), 1);
        assert!(matches!(
            f.answer("example.org", RecordType::TXT),
            Err(DnsError::NotFound)
        ));
        assert!(matches!(
            f.answer("other.org", RecordType::A),
            Err(DnsError::NotFound)
        ));
        assert_eq!(
            f.answer("9.2.0.192.in-addr.arpa.", RecordType::PTR)
                .unwrap()
                .len(),
            1
        );
        f.dns.get_mut("Example.org").unwrap().mx = vec!["mx.example.org".into()];
        assert!(f.check().unwrap_err().contains("PREFERENCE HOST"));
    }
}
