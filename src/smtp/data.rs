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

/// Incremental decoder for one DATA transfer.
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    line_len: usize,
    max_line: usize,
    max_size: u64,
    size: u64,
    bare: bool,
    long_line: bool,
    too_big: bool,
}

impl DataDecoder {
    /// `max_line` counts the CRLF (RFC 5321: 1000); `max_size` bounds the
    /// unstuffed message.
    pub fn new(max_line: usize, max_size: u64) -> Self {
        DataDecoder {
            state: State::LineStart,
            line_len: 0,
            max_line: max_line.saturating_sub(2),
            max_size,
            size: 0,
            bare: false,
            long_line: false,
            too_big: false,
        }
    }

    /// Decoded size so far (bytes written to `out`, or that would have been).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The verdict once `End` was returned.
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

    fn emit(&mut self, out: &mut Vec<u8>, b: &[u8]) {
        self.size += b.len() as u64;
        if self.size > self.max_size {
            self.too_big = true;
        }
        if !self.refused() {
            out.extend_from_slice(b);
        }
    }

    fn text(&mut self, out: &mut Vec<u8>, b: u8) {
        self.line_len += 1;
        if self.line_len > self.max_line {
            self.long_line = true;
        }
        self.emit(out, &[b]);
    }

    /// Feeds wire bytes; appends decoded bytes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataEvent {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            match self.state {
                State::LineStart => match b {
                    b'.' => self.state = State::Dot,
                    _ => self.mid(out, b),
                },
                State::Dot => match b {
                    b'\r' => self.state = State::DotCr,
                    // The stuffed dot is dropped; what follows is text.
                    _ => self.mid(out, b),
                },
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::LineStart;
                        return DataEvent::End { consumed: i };
                    }
                    // ".\rX": the CR was bare.
                    self.bare = true;
                    self.text(out, b'\r');
                    self.mid(out, b);
                }
                State::Mid => self.mid(out, b),
                State::Cr => {
                    if b == b'\n' {
                        self.emit(out, b"\r\n");
                        self.line_len = 0;
                        self.state = State::LineStart;
                    } else {
                        self.bare = true;
                        self.text(out, b'\r');
                        self.mid(out, b);
                    }
                }
            }
        }
        DataEvent::NeedMore
    }

    /// A byte inside a line.
    fn mid(&mut self, out: &mut Vec<u8>, b: u8) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                self.bare = true;
                self.text(out, b'\n');
                self.state = State::Mid;
            }
            _ => {
                self.text(out, b);
                self.state = State::Mid;
            }
        }
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
}
