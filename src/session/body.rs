//! The message being received: its decoder, its buffer, and the buffer's
//! share of the server-wide budget on bytes in flight.
//!
//! Every session's message lives in RAM until it is queued, so without a
//! bound 1000 sessions × 25 MiB would exhaust the machine. Each buffer
//! holds permits (KiB) from one semaphore sized by
//! `limits.max_bytes_in_flight` for as long as its bytes exist; a buffer
//! that cannot grow within the budget stops keeping bytes (the transfer is
//! still read and checked, so the session stays in step) and the message
//! is answered `452 4.3.1`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::io::BodySink;
use crate::smtp::{DataDecoder, DataError, DataEvent};

const KIB: usize = 1024;

/// The server-wide budget on message bytes held in memory.
#[derive(Debug)]
pub struct Budget {
    kib: Arc<Semaphore>,
}

impl Budget {
    /// A budget of `bytes` (at least one max-size message should fit).
    pub fn new(bytes: u64) -> Self {
        let kib = (bytes / KIB as u64).min(Semaphore::MAX_PERMITS as u64) as usize;
        Budget {
            kib: Arc::new(Semaphore::new(kib)),
        }
    }

    /// KiB not held by any message right now.
    pub fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }
}

/// Why a received message cannot be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The content broke a rule (bare line ending, line length, size).
    Refused(DataError),
    /// The server had no memory budget left for it.
    OverBudget,
}

/// A message body, with the budget it holds until it is dropped.
pub struct Body {
    /// The message as it will be stored (Received header first).
    pub bytes: Vec<u8>,
    /// Released when the message is queued or refused.
    pub held: Option<OwnedSemaphorePermit>,
}

/// Receives one message through DATA or a series of BDAT chunks.
#[derive(Debug)]
pub struct BodyReader {
    decoder: DataDecoder,
    buf: Vec<u8>,
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    over_budget: bool,
    /// The largest buffer an acceptable message needs.
    cap: usize,
}

impl BodyReader {
    /// A reader whose message starts with `prefix` (our Received header).
    pub fn new(decoder: DataDecoder, prefix: &[u8], budget: &Budget) -> Self {
        let cap = usize::try_from(decoder.max_size())
            .unwrap_or(usize::MAX)
            .saturating_add(prefix.len() + 2);
        let mut reader = BodyReader {
            cap,
            decoder,
            // Small to start (a slow client mid-DATA holds what it sent, not
            // a fixed reservation); it doubles as the message grows.
            buf: Vec::with_capacity(prefix.len() + 2 * KIB),
            budget: budget.kib.clone(),
            held: None,
            over_budget: false,
        };
        reader.account();
        if !reader.over_budget {
            reader.buf.extend_from_slice(prefix);
        }
        reader
    }

    /// Decoded size so far, without the prefix.
    pub fn size(&self) -> u64 {
        self.decoder.size()
    }

    /// True once the message can no longer be queued.
    pub fn refused(&self) -> bool {
        self.decoder.refused() || self.over_budget
    }

    /// Makes room for `n` more octets up front (a BDAT chunk announces its
    /// size), so the buffer grows once instead of doubling.
    pub fn reserve(&mut self, n: u64) {
        if self.refused() {
            return;
        }
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let want = self.buf.len().saturating_add(n);
        // Budget first, memory second.
        if want > self.buf.capacity() && self.charge(want) {
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.account();
    }

    /// Ends a BDAT message (see `DataDecoder::end_chunks`).
    pub fn end_chunks(&mut self) {
        self.decoder.end_chunks(&mut self.buf);
        self.account();
    }

    /// The message, or why it cannot be queued.
    pub fn finish(self) -> Result<Body, BodyError> {
        if let Err(e) = self.decoder.finish() {
            return Err(BodyError::Refused(e));
        }
        if self.over_budget {
            return Err(BodyError::OverBudget);
        }
        Ok(Body {
            bytes: self.buf,
            held: self.held,
        })
    }

    /// Keeps the permits held equal to the buffer's capacity; frees the
    /// buffer as soon as the message cannot be queued.
    fn account(&mut self) {
        if self.refused() {
            if self.buf.capacity() > 0 {
                self.buf = Vec::new();
                self.held = None;
            }
            self.decoder.discard();
            return;
        }
        self.charge(self.buf.capacity());
    }

    /// Holds permits for `bytes` of buffer; on failure marks the message
    /// over budget (and frees it), counts and logs the hit.
    fn charge(&mut self, bytes: usize) -> bool {
        let need = bytes.div_ceil(KIB);
        let have = self.held.as_ref().map_or(0, |p| p.num_permits());
        if need <= have {
            return true;
        }
        let more = u32::try_from(need - have).unwrap_or(u32::MAX);
        match self.budget.clone().try_acquire_many_owned(more) {
            Ok(p) => {
                match &mut self.held {
                    Some(h) => h.merge(p),
                    None => self.held = Some(p),
                }
                true
            }
            Err(_) => {
                crate::observe::limit_hit(
                    "limits.max_bytes_in_flight",
                    &format!("a message needed {need} KiB"),
                );
                self.over_budget = true;
                self.account();
                false
            }
        }
    }
}

impl BodySink for BodyReader {
    fn feed(&mut self, input: &[u8]) -> DataEvent {
        // Grow (by doubling) before the decoder writes, budget first, so
        // the buffer never holds memory it has not been granted.
        let want = self.buf.len() + input.len();
        if want > self.buf.capacity() && !self.refused() {
            let target = want.max((self.buf.capacity() * 2).min(self.cap));
            if self.charge(target) {
                self.buf.reserve_exact(target - self.buf.len());
            }
        }
        let event = self.decoder.feed(input, &mut self.buf);
        self.account();
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_budget_while_the_body_lives() {
        let budget = Budget::new(256 * 1024);
        let mut r = BodyReader::new(DataDecoder::new(1000, 1 << 20), b"Received: x\r\n", &budget);
        let line = [b'a'; 998];
        let mut held_before = budget.available_kib();
        for _ in 0..50 {
            r.feed(&line);
            r.feed(b"\r\n");
        }
        assert!(budget.available_kib() < held_before, "growth is charged");
        assert_eq!(r.feed(b".\r\n"), DataEvent::End { consumed: 3 });
        let body = r.finish().unwrap();
        assert!(body.bytes.starts_with(b"Received: x\r\naaa"));
        held_before = budget.available_kib();
        drop(body);
        assert_eq!(budget.available_kib(), 256);
        assert!(held_before < 256);
    }

    #[test]
    fn over_budget_discards_and_releases() {
        let budget = Budget::new(64 * 1024);
        let mut r = BodyReader::new(DataDecoder::chunked(1000, 1 << 30), b"", &budget);
        r.reserve(1 << 20);
        assert!(r.refused());
        assert_eq!(budget.available_kib(), 64);
        r.feed(&[b'x'; 500]);
        assert_eq!(budget.available_kib(), 64);
        assert_eq!(r.finish().err(), Some(BodyError::OverBudget));
    }
}
