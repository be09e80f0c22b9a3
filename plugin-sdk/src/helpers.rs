//! Constructors and predicates for the answer types, so plugins write `Verdict::reject("...")`
//! instead of spelling out records. The host still checks every code it receives.

use crate::{Header, Modification, Outcome, RelayTarget, Reply, Route, Verdict};

impl Reply {
    /// A reply with only text; the host picks the code and enhanced code for the verdict.
    pub fn text(text: impl Into<String>) -> Self {
        Reply {
            code: None,
            enhanced: None,
            text: text.into(),
        }
    }

    /// A reply with an explicit code (e.g. `550`), enhanced code (e.g. `"5.7.1"`) and text.
    pub fn new(code: u16, enhanced: impl Into<String>, text: impl Into<String>) -> Self {
        Reply {
            code: Some(code),
            enhanced: Some(enhanced.into()),
            text: text.into(),
        }
    }
}

impl Verdict {
    /// Accept now with the host's default reply.
    pub fn accept() -> Self {
        Verdict::Accept(None)
    }

    /// Refuse permanently with this text (the host's default 5xx code).
    pub fn reject(text: impl Into<String>) -> Self {
        Verdict::Reject(Some(Reply::text(text)))
    }

    /// Refuse permanently with an explicit reply (the code must be 5xx).
    pub fn reject_with(code: u16, enhanced: impl Into<String>, text: impl Into<String>) -> Self {
        Verdict::Reject(Some(Reply::new(code, enhanced, text)))
    }

    /// Refuse temporarily with this text (the host's default 4xx code).
    pub fn tempfail(text: impl Into<String>) -> Self {
        Verdict::Tempfail(Some(Reply::text(text)))
    }

    /// Refuse temporarily with an explicit reply (the code must be 4xx).
    pub fn tempfail_with(code: u16, enhanced: impl Into<String>, text: impl Into<String>) -> Self {
        Verdict::Tempfail(Some(Reply::new(code, enhanced, text)))
    }

    /// Answer with this text (the host's default 421) and close the connection.
    pub fn disconnect(text: impl Into<String>) -> Self {
        Verdict::Disconnect(Some(Reply::text(text)))
    }

    /// Accept the message but hold it in quarantine for this reason.
    pub fn quarantine(reason: impl Into<String>) -> Self {
        Verdict::Quarantine(reason.into())
    }

    /// Whether this verdict ends the hook's plugin chain (everything but `Continue`).
    pub fn is_decisive(&self) -> bool {
        !matches!(self, Verdict::Continue)
    }

    /// Whether this verdict refuses (reject, tempfail or disconnect).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Verdict::Reject(_) | Verdict::Tempfail(_) | Verdict::Disconnect(_)
        )
    }
}

impl Outcome {
    /// No opinion and no modification.
    pub const CONTINUE: Outcome = Outcome {
        verdict: Verdict::Continue,
        modifications: Vec::new(),
    };

    /// Adds a modification (builder style).
    pub fn with(mut self, modification: Modification) -> Self {
        self.modifications.push(modification);
        self
    }
}

impl From<Verdict> for Outcome {
    fn from(verdict: Verdict) -> Self {
        Outcome {
            verdict,
            modifications: Vec::new(),
        }
    }
}

impl Modification {
    /// Add a header field at the top of the message.
    pub fn add_header(name: impl Into<String>, value: impl Into<String>) -> Self {
        Modification::AddHeader(Header {
            name: name.into(),
            value: value.into(),
        })
    }

    /// Remove every header field named `name`.
    pub fn remove_header(name: impl Into<String>) -> Self {
        Modification::RemoveHeader(name.into())
    }

    /// Set header `name` to `value`, replacing all fields of that name (or adding one).
    pub fn change_header(name: impl Into<String>, value: impl Into<String>) -> Self {
        Modification::ChangeHeader(Header {
            name: name.into(),
            value: value.into(),
        })
    }

    /// Replace the envelope sender (`""` for the null sender).
    pub fn set_sender(address: impl Into<String>) -> Self {
        Modification::SetSender(address.into())
    }

    /// Add an envelope recipient.
    pub fn add_recipient(address: impl Into<String>) -> Self {
        Modification::AddRecipient(address.into())
    }

    /// Remove an envelope recipient.
    pub fn remove_recipient(address: impl Into<String>) -> Self {
        Modification::RemoveRecipient(address.into())
    }
}

impl Route {
    /// Relay to `host` on port 25.
    pub fn relay(host: impl Into<String>) -> Self {
        Route::Relay(RelayTarget {
            host: host.into(),
            port: None,
        })
    }

    /// Relay to `host` on `port`.
    pub fn relay_port(host: impl Into<String>, port: u16) -> Self {
        Route::Relay(RelayTarget {
            host: host.into(),
            port: Some(port),
        })
    }

    /// Deliver into the local mailbox `mailbox`.
    pub fn local(mailbox: impl Into<String>) -> Self {
        Route::Local(mailbox.into())
    }
}
