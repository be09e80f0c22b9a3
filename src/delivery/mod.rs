//! Delivery: where a queued recipient's copy goes: a local Maildir or LMTP
//! server, or another server (`remote`: routes, MX, the SMTP client).
//!
//! Every attempt ends in one `Outcome`, classified once: delivered,
//! temporary (retry later) or permanent (give up). The queue stores the
//! reason as data (`Failure`) so logs, DSNs and the queue CLI show the same
//! thing.

pub mod lmtp;
pub mod local;
pub mod maildir;
pub mod remote;

use serde::{Deserialize, Serialize};

/// Result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The copy is stored where it belongs; the detail says where (a
    /// mailbox, or the remote server's reply), for logs and plugins.
    Delivered(String),
    /// Worth retrying later (disk full, I/O error, mail store not writable,
    /// a 4xx reply, a connection or TLS failure, a timeout).
    Temporary(Failure),
    /// Will never work (mailbox name invalid, a 5xx reply, a null MX).
    Permanent(Failure),
}

/// Why an attempt failed, as data: what logs, DSNs (RFC 3464) and the
/// queue CLI show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// One line for people: `mx.example.org[192.0.2.1] said: 550 5.1.1
    /// unknown user (in reply to RCPT TO)`.
    pub text: String,
    /// RFC 3463 enhanced status (`4.4.1`, `5.1.1`): the remote one when it
    /// sent one, else ours.
    pub status: String,
    /// The server that answered, when one did (DSN `Remote-MTA`).
    #[serde(default)]
    pub remote_mta: Option<String>,
    /// Its reply, one line (DSN `Diagnostic-Code: smtp; ...`).
    #[serde(default)]
    pub remote_reply: Option<String>,
}

impl Failure {
    /// A failure found here (no remote server answered).
    pub fn local(status: &str, text: impl Into<String>) -> Failure {
        Failure {
            text: text.into(),
            status: status.to_string(),
            remote_mta: None,
            remote_reply: None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Outcome {
    /// A temporary failure found here, with its RFC 3463 status.
    pub fn temporary(status: &str, text: impl Into<String>) -> Outcome {
        Outcome::Temporary(Failure::local(status, text))
    }

    /// A permanent failure found here, with its RFC 3463 status.
    pub fn permanent(status: &str, text: impl Into<String>) -> Outcome {
        Outcome::Permanent(Failure::local(status, text))
    }

    /// Classifies an I/O error. Only a name the server itself would refuse
    /// is permanent; everything else (disk full, I/O errors, and a mail
    /// store the server cannot write: permissions, a file where a directory
    /// should be) is temporary, because an operator can fix it and the mail
    /// should then arrive rather than bounce.
    pub fn from_io(context: &str, e: &std::io::Error) -> Outcome {
        use std::io::ErrorKind::*;
        let text = format!("{context}: {e}");
        match e.kind() {
            // RFC 3463: 5.1.3 bad destination mailbox address syntax.
            InvalidInput | InvalidFilename => Outcome::permanent("5.1.3", text),
            // 4.3.0 other or undefined mail system status.
            _ => Outcome::temporary("4.3.0", text),
        }
    }

    /// True for errors that mean the mail store is misconfigured rather
    /// than busy or full: worth an error-level log line for the operator.
    pub fn is_environment(e: &std::io::Error) -> bool {
        use std::io::ErrorKind::*;
        matches!(
            e.kind(),
            PermissionDenied
                | NotADirectory
                | IsADirectory
                | ReadOnlyFilesystem
                | StorageFull
                | NotFound
        ) || e.raw_os_error() == Some(libc::ELOOP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn environment_errors_are_temporary() {
        for kind in [
            ErrorKind::PermissionDenied,
            ErrorKind::NotADirectory,
            ErrorKind::IsADirectory,
            ErrorKind::ReadOnlyFilesystem,
            ErrorKind::StorageFull,
        ] {
            let o = Outcome::from_io("x", &Error::from(kind));
            assert!(matches!(o, Outcome::Temporary(_)), "{kind:?}");
        }
        let o = Outcome::from_io("x", &Error::from(ErrorKind::InvalidFilename));
        assert!(matches!(o, Outcome::Permanent(_)));
    }
}
