//! The DATA decoder (RFC 5321 §4.1.1.4, §4.5.2): finds the end of data,
//! removes dot-stuffing, enforces the size and line limits, and refuses bare
//! CR or LF.
//!
//! Only `<CRLF>.<CRLF>` ends the data, and a line ends only at CRLF. A bare
//! LF or CR anywhere taints the message; it is read to its real end and then
//! refused as a whole. So `\n.\n`, `\r\n.\n` and friends can never end one
//! message early and smuggle the rest in as a second transaction (the 2023
//! SMTP smuggling class).

/// Why a message was refused once its end was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// A bare CR or LF was seen.
    BareLineEnding,
    /// A text line exceeded the configured limit.
    LineTooLong,
    /// The message exceeded the size limit.
    TooBig,
}

/// What `DataDecoder::feed` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEvent {
    /// All input consumed; the end marker has not been seen yet.
    NeedMore,
    /// The end marker ends at `consumed` bytes into the input; bytes after
    /// it belong to the next command.
    End {
        /// Bytes of the input that belonged to the data.
        consumed: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LineStart,
    Dot,
    DotCr,
    Mid,
    Cr,
}

/// Incremental decoder for one DATA transfer or one series of BDAT chunks.
///
/// Text between line ends is copied in runs (found with memchr), not byte by
/// byte: a 100 KiB body is a few dozen copies.
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    /// DATA (dot-stuffing and the end marker) or BDAT (octets as sent).
    dots: bool,
    line_len: usize,
    max_line: usize,
    max_size: u64,
    size: u64,
    bare: bool,
    long_line: bool,
    too_big: bool,
    /// Checks go on, bytes are no longer kept (see `discard`).
    discarding: bool,
}

impl DataDecoder {
    /// A decoder for DATA. `max_line` counts the CRLF (RFC 5321: 1000);
    /// `max_size` bounds the unstuffed message.
    pub fn new(max_line: usize, max_size: u64) -> Self {
        DataDecoder {
            state: State::LineStart,
            dots: true,
            line_len: 0,
            max_line: max_line.saturating_sub(2),
            max_size,
            size: 0,
            bare: false,
            long_line: false,
            too_big: false,
            discarding: false,
        }
    }

    /// A decoder for BDAT chunks (RFC 3030): no dot-stuffing and no end
    /// marker, but the same line-ending, line-length and size checks as
    /// DATA, because the stored message is the same thing and is relayed
    /// later. Feed every chunk of the message, then call `end_chunks`.
    pub fn chunked(max_line: usize, max_size: u64) -> Self {
        DataDecoder {
            dots: false,
            ..DataDecoder::new(max_line, max_size)
        }
    }

    /// Decoded size so far (bytes written to `out`, or that would have been).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size limit this decoder enforces.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// The verdict once `End` was returned (or `end_chunks` called).
    pub fn finish(&self) -> Result<(), DataError> {
        if self.bare {
            Err(DataError::BareLineEnding)
        } else if self.too_big {
            Err(DataError::TooBig)
        } else if self.long_line {
            Err(DataError::LineTooLong)
        } else {
            Ok(())
        }
    }

    /// True once the message can no longer be accepted; callers may stop
    /// keeping its bytes.
    pub fn refused(&self) -> bool {
        self.finish().is_err()
    }

    /// From now on, check but do not keep: nothing more is written to `out`
    /// (the session could not reserve memory for it).
    pub fn discard(&mut self) {
        self.discarding = true;
    }

    /// Ends a BDAT message: a CR left at the end is bare, and a last line
    /// without its CRLF gets one, so the stored message ends as DATA's do.
    pub fn end_chunks(&mut self, out: &mut Vec<u8>) {
        match self.state {
            State::Cr => {
                self.bare = true;
                self.emit(out, b"\r");
            }
            State::Mid => self.emit(out, b"\r\n"),
            _ => {}
        }
        self.state = State::LineStart;
        self.line_len = 0;
    }

    /// Counts `b` and keeps what fits: the output is the same however the
    /// input was split (up to the point where the message was refused).
    fn emit(&mut self, out: &mut Vec<u8>, b: &[u8]) {
        let keep = !self.refused() && !self.discarding;
        let room = self.max_size.saturating_sub(self.size);
        self.size += b.len() as u64;
        if self.size > self.max_size {
            self.too_big = true;
        }
        if keep {
            out.extend_from_slice(&b[..room.min(b.len() as u64) as usize]);
        }
    }

    /// Text inside one line (no CR, no LF, or a bare one already flagged).
    fn text(&mut self, out: &mut Vec<u8>, run: &[u8]) {
        let fits = self.max_line.saturating_sub(self.line_len).min(run.len());
        self.line_len += run.len();
        if fits < run.len() {
            self.emit(out, &run[..fits]);
            self.long_line = true;
            self.emit(out, &run[fits..]);
        } else {
            self.emit(out, run);
        }
        self.state = State::Mid;
    }

    /// Feeds wire bytes; appends decoded bytes to `out`. For BDAT the
    /// result is always `NeedMore`: the chunk size, not a marker, ends it.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataEvent {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::LineStart if self.dots && b == b'.' => {
                    i += 1;
                    self.state = State::Dot;
                }
                State::LineStart | State::Mid => {
                    let rest = &input[i..];
                    let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    if run > 0 {
                        self.text(out, &rest[..run]);
                        i += run;
                    } else if b == b'\r' {
                        i += 1;
                        self.state = State::Cr;
                    } else {
                        i += 1;
                        self.bare = true;
                        self.text(out, b"\n");
                    }
                }
                // The stuffed dot is dropped; what follows is text, read
                // again in the Mid state.
                State::Dot if b == b'\r' => {
                    i += 1;
                    self.state = State::DotCr;
                }
                State::Dot => self.state = State::Mid,
                State::DotCr if b == b'\n' => {
                    self.state = State::LineStart;
                    return DataEvent::End { consumed: i + 1 };
                }
                State::Cr if b == b'\n' => {
                    i += 1;
                    self.emit(out, b"\r\n");
                    self.line_len = 0;
                    self.state = State::LineStart;
                }
                // ".\rX" and "\rX": the CR was bare; X is read again.
                State::DotCr | State::Cr => {
                    self.bare = true;
                    self.text(out, b"\r");
                }
            }
        }
        DataEvent::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> (Vec<u8>, Option<usize>, Result<(), DataError>) {
        let mut d = DataDecoder::new(1000, 1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            if let DataEvent::End { consumed } = d.feed(c, &mut out) {
                return (out, Some(consumed), d.finish());
            }
        }
        (out, None, d.finish())
    }

    #[test]
    fn ends_and_unstuffs() {
        let (out, end, r) = decode(&[b"a\r\n..b\r\n.\r\nQUIT\r\n"]);
        assert_eq!(out, b"a\r\n.b\r\n");
        assert_eq!(end, Some(11));
        assert_eq!(r, Ok(()));
        // Empty message, and an end marker split across reads.
        assert_eq!(decode(&[b".\r\n"]).1, Some(3));
        let (out, end, _) = decode(&[b"x\r", b"\n.", b"\r", b"\n"]);
        assert_eq!((out.as_slice(), end), (&b"x\r\n"[..], Some(1)));
    }

    #[test]
    fn smuggling_variants_never_end_early() {
        let second = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nevil\r\n";
        for marker in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
        ] {
            let mut msg = b"hello".to_vec();
            msg.extend_from_slice(marker);
            msg.extend_from_slice(second);
            let (_, end, r) = decode(&[&msg]);
            assert_eq!(end, None, "{marker:?} ended the message");
            let mut tail = msg.clone();
            tail.extend_from_slice(b".\r\n");
            let (_, end, r2) = decode(&[&tail]);
            assert_eq!(end, Some(tail.len()));
            assert_eq!(r2, Err(DataError::BareLineEnding), "{marker:?}: {r:?}");
        }
    }

    #[test]
    fn limits() {
        let mut line = vec![b'x'; 998];
        line.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&[&line]).2, Ok(()));
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&[&long]).2, Err(DataError::LineTooLong));
        // A stuffed dot does not count against the line.
        let mut stuffed = vec![b'.'; 999];
        stuffed.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&[&stuffed]).2, Ok(()));

        let mut d = DataDecoder::new(1000, 10);
        let mut out = Vec::new();
        assert!(matches!(
            d.feed(b"0123456789abc\r\n.\r\n", &mut out),
            DataEvent::End { .. }
        ));
        assert_eq!(d.finish(), Err(DataError::TooBig));
        assert!(out.len() <= 10);
    }

    fn chunked(chunks: &[&[u8]]) -> (Vec<u8>, Result<(), DataError>) {
        let mut d = DataDecoder::chunked(1000, 1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            assert_eq!(d.feed(c, &mut out), DataEvent::NeedMore);
        }
        d.end_chunks(&mut out);
        (out, d.finish())
    }

    #[test]
    fn chunks_are_taken_as_sent_and_checked_like_data() {
        // No dot-stuffing, no end marker, a CRLF split across chunks.
        assert_eq!(
            chunked(&[b"a\r\n.\r\n..b\r", b"\nc\r\n"]),
            (b"a\r\n.\r\n..b\r\nc\r\n".to_vec(), Ok(()))
        );
        // A last line without CRLF gets one.
        assert_eq!(chunked(&[b"a\r\nb"]).0, b"a\r\nb\r\n");
        for bad in [&b"a\nb\r\n"[..], b"a\rb\r\n", b"a\r\nb\r"] {
            assert_eq!(chunked(&[bad]).1, Err(DataError::BareLineEnding), "{bad:?}");
        }
        let long = vec![b'x'; 999];
        assert_eq!(
            chunked(&[&long[..500], &long[500..], b"\r\n"]).1,
            Err(DataError::LineTooLong)
        );
        let mut d = DataDecoder::chunked(1000, 10);
        let mut out = Vec::new();
        d.feed(b"0123456789\r\n", &mut out);
        assert_eq!(d.finish(), Err(DataError::TooBig));
        assert!(out.len() <= 10);
    }

    /// Output, end offset in `msg` and verdict, for `msg` fed in two parts.
    fn decode_split(msg: &[u8], at: usize) -> (Vec<u8>, Option<usize>, Result<(), DataError>) {
        let mut d = DataDecoder::new(1000, 1 << 20);
        let mut out = Vec::new();
        for (offset, part) in [(0, &msg[..at]), (at, &msg[at..])] {
            if let DataEvent::End { consumed } = d.feed(part, &mut out) {
                return (out, Some(offset + consumed), d.finish());
            }
        }
        (out, None, d.finish())
    }

    #[test]
    fn split_anywhere_decodes_the_same() {
        for msg in [
            &b"From: a\r\n..x\r\nbare\nline\r\r\n.\r\r\n.\r\nNEXT"[..],
            b"a\r\n..b\r\n\r\n.\r\n",
        ] {
            let whole = decode(&[msg]);
            assert!(whole.1.is_some());
            for at in 0..=msg.len() {
                assert_eq!(decode_split(msg, at), whole, "split at {at}");
            }
        }
    }

    #[test]
    fn discarding_checks_without_keeping() {
        let mut d = DataDecoder::new(1000, 1 << 20);
        let mut out = Vec::new();
        d.discard();
        assert_eq!(
            d.feed(b"abc\r\n.\r\n", &mut out),
            DataEvent::End { consumed: 8 }
        );
        assert!(out.is_empty());
        assert_eq!(d.size(), 5);
    }
}
