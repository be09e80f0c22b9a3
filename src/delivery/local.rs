//! Local recipients: which addresses belong to this server and which
//! Maildir each one lands in.

use crate::config::LocalSettings;
use crate::delivery::maildir::is_safe_mailbox;
use crate::smtp::{Address, Path};

/// Where a recipient address leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A local mailbox (a directory name under the mail root).
    Local(String),
    /// The domain is not ours.
    NotLocal,
    /// The domain is ours but the user is not (or the name is not allowed).
    UnknownUser,
}

/// Removes the quotes and quoted-pair escapes of a quoted local part.
fn unquote(local: &str) -> String {
    match local.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().unwrap_or('\\')
                } else {
                    c
                });
            }
            out
        }
        None => local.to_string(),
    }
}

/// True if `addr`'s domain is one of ours.
pub fn is_local_domain(settings: &LocalSettings, addr: &Address) -> bool {
    let d = addr.domain_lower();
    settings.domains.contains(&d)
}

/// Resolves a RCPT path against the local settings.
pub fn resolve(settings: &LocalSettings, path: &Path) -> Resolution {
    let addr = match path {
        Path::Null => return Resolution::UnknownUser,
        Path::Postmaster => return Resolution::Local(settings.postmaster.clone()),
        Path::Mailbox(a) => a,
    };
    if !is_local_domain(settings, addr) {
        return Resolution::NotLocal;
    }
    let local = unquote(&addr.local).to_lowercase();
    if local == "postmaster" {
        return Resolution::Local(settings.postmaster.clone());
    }
    // Relay tricks (`user%other@local`, `"user@other"@local`, `other!user@local`)
    // contain characters no mailbox may have, so they end here.
    if !is_safe_mailbox(&local) {
        return Resolution::UnknownUser;
    }
    let base = match settings.recipient_delimiter {
        Some(d) => local.split(d).next().unwrap_or(&local).to_string(),
        None => local.clone(),
    };
    if base.is_empty() {
        return Resolution::UnknownUser;
    }
    if settings.users.contains(&base) || settings.catch_all {
        Resolution::Local(base)
    } else {
        Resolution::UnknownUser
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::smtp::address::parse_path;

    fn res(settings: &LocalSettings, s: &str) -> Resolution {
        resolve(settings, &parse_path(s).unwrap().0)
    }

    #[test]
    fn resolves_recipients() {
        let mut s = Settings::embedded_default().unwrap().local;
        s.catch_all = false;
        s.users = vec!["alice".into()];
        assert_eq!(
            res(&s, "<Alice+news@Example.TEST>"),
            Resolution::Local("alice".into())
        );
        assert_eq!(res(&s, "<bob@example.test>"), Resolution::UnknownUser);
        assert_eq!(res(&s, "<alice@other.test>"), Resolution::NotLocal);
        assert_eq!(
            res(&s, "<Postmaster>"),
            Resolution::Local("postmaster".into())
        );
        assert_eq!(
            res(&s, "<POSTMASTER@localhost>"),
            Resolution::Local("postmaster".into())
        );
        s.catch_all = true;
        assert_eq!(
            res(&s, "<bob@example.test>"),
            Resolution::Local("bob".into())
        );
        for trick in [
            "<user%other.test@example.test>",
            "<\"user@other.test\"@example.test>",
            "<other.test!user@example.test>",
            "<\"../../etc\"@example.test>",
            "<\".hidden\"@example.test>",
        ] {
            assert_eq!(res(&s, trick), Resolution::UnknownUser, "{trick}");
        }
        assert_eq!(
            res(&s, "<@example.test:user@other.test>"),
            Resolution::NotLocal
        );
    }
}
