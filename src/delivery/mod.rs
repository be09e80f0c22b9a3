//! Delivery: where a queued recipient's copy goes. Local delivery to
//! Maildir lives here now; LMTP and remote relay join it later.
//!
//! Every attempt ends in one `Outcome`, classified once: delivered,
//! temporary (retry later) or permanent (give up). The queue stores the
//! reason as data so logs, DSNs and the queue CLI show the same text.

pub mod local;
pub mod maildir;

use serde::{Deserialize, Serialize};

/// Result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The copy is stored where it belongs.
    Delivered,
    /// Worth retrying later (disk full, I/O error, mail store not writable).
    Temporary(String),
    /// Will never work (mailbox name invalid, ...).
    Permanent(String),
}

impl Outcome {
    /// Classifies an I/O error. Only a name the server itself would refuse
    /// is permanent; everything else (disk full, I/O errors, and a mail
    /// store the server cannot write: permissions, a file where a directory
    /// should be) is temporary, because an operator can fix it and the mail
    /// should then arrive rather than bounce.
    pub fn from_io(context: &str, e: &std::io::Error) -> Outcome {
        use std::io::ErrorKind::*;
        let text = format!("{context}: {e}");
        match e.kind() {
            InvalidInput | InvalidFilename => Outcome::Permanent(text),
            _ => Outcome::Temporary(text),
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
