//! The message seen by the `data` hook: a thin wrapper over the host's `message` resource (or a
//! fake one in tests), adding conveniences that read on demand.

use crate::bindings::wasmtp::plugin::types as wit;
use crate::{AuthResults, Header};

/// The message of the current transaction. Each call asks the host, so a plugin that only reads
/// headers copies no body bytes.
pub struct Message<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    Host(&'a wit::Message),
    #[cfg(fake_host)]
    Fake(crate::testing::FakeMessage),
}

impl<'a> Message<'a> {
    pub(crate) fn host(msg: &'a wit::Message) -> Self {
        Message {
            inner: Inner::Host(msg),
        }
    }

    #[cfg(fake_host)]
    pub(crate) fn fake(msg: crate::testing::FakeMessage) -> Self {
        Message {
            inner: Inner::Fake(msg),
        }
    }

    /// All header fields, in message order (values unfolded, not decoded).
    pub fn headers(&self) -> Vec<Header> {
        match &self.inner {
            Inner::Host(m) => m.headers(),
            #[cfg(fake_host)]
            Inner::Fake(m) => m.headers.clone(),
        }
    }

    /// The values of every field named `name` (case-insensitive), in message order.
    pub fn header(&self, name: &str) -> Vec<String> {
        match &self.inner {
            Inner::Host(m) => m.header(name),
            #[cfg(fake_host)]
            Inner::Fake(m) => m
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.clone())
                .collect(),
        }
    }

    /// The first value of header `name`, if any.
    pub fn first_header(&self, name: &str) -> Option<String> {
        self.header(name).into_iter().next()
    }

    /// The raw message size in bytes, headers included.
    pub fn size(&self) -> u64 {
        match &self.inner {
            Inner::Host(m) => m.size(),
            #[cfg(fake_host)]
            Inner::Fake(m) => m.raw.len() as u64,
        }
    }

    /// Up to `len` raw bytes (headers included) from `offset`; fewer at the end.
    pub fn body(&self, offset: u64, len: u32) -> Vec<u8> {
        match &self.inner {
            Inner::Host(m) => m.body(offset, len),
            #[cfg(fake_host)]
            Inner::Fake(m) => {
                let start = (offset as usize).min(m.raw.len());
                let end = start.saturating_add(len as usize).min(m.raw.len());
                m.raw[start..end].to_vec()
            }
        }
    }

    /// The raw message (headers included), at most `max` bytes, read in 64 KiB chunks.
    pub fn raw(&self, max: u64) -> Vec<u8> {
        const CHUNK: u32 = 64 * 1024;
        let want = self.size().min(max);
        let mut out = Vec::with_capacity(want as usize);
        while (out.len() as u64) < want {
            let len = (want - out.len() as u64).min(CHUNK as u64) as u32;
            let chunk = self.body(out.len() as u64, len);
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// What the server's mail authentication found for this message (SPF, DKIM, ARC, DMARC),
    /// the same results as its `Authentication-Results` header; None when verification is off.
    pub fn auth_results(&self) -> Option<AuthResults> {
        match &self.inner {
            Inner::Host(m) => m.auth_results(),
            #[cfg(fake_host)]
            Inner::Fake(m) => m.auth.clone(),
        }
    }

    /// The decoded text parts as UTF-8, at most `max_bytes` bytes (see the WIT `text` docs).
    pub fn text(&self, max_bytes: u32) -> String {
        match &self.inner {
            Inner::Host(m) => m.text(max_bytes),
            #[cfg(fake_host)]
            Inner::Fake(m) => m.text(max_bytes),
        }
    }
}
