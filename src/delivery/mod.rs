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
    /// Worth retrying later (disk full, I/O error).
    Temporary(String),
    /// Will never work (mailbox name invalid, ...).
    Permanent(String),
}

impl Outcome {
    /// Classifies an I/O error: resource shortages are temporary, the rest
    /// (permissions, invalid names) are permanent.
    pub fn from_io(context: &str, e: &std::io::Error) -> Outcome {
        use std::io::ErrorKind::*;
        let text = format!("{context}: {e}");
        match e.kind() {
            PermissionDenied | InvalidInput | InvalidFilename | NotADirectory | IsADirectory => {
                Outcome::Permanent(text)
            }
            _ => Outcome::Temporary(text),
        }
    }
}
