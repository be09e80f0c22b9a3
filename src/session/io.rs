//! The session's byte shell: buffered input split into CRLF lines, DATA and
//! BDAT payloads, and buffered replies.
//!
//! Replies are collected and written only when the session is about to wait
//! for more input, which is exactly what RFC 2920 pipelining asks for: a
//! client that sends MAIL, RCPT, RCPT, DATA in one packet gets one packet
//! of replies.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::smtp::{DataDecoder, DataEvent, Reply};

/// Why the session cannot read on.
#[derive(Debug)]
pub enum Stop {
    /// The client closed the connection.
    Eof,
    /// No input within the timeout.
    Timeout,
    /// The server is shutting down.
    Shutdown,
    /// The socket failed.
    Io(io::Error),
}

/// One command line, or the news that it was too long.
#[derive(Debug)]
pub enum Input {
    /// The line without its CRLF.
    Line(Vec<u8>),
    /// The line exceeded the limit and was discarded up to its CRLF.
    TooLong,
}

const READ_CHUNK: usize = 16 * 1024;

/// Buffered connection.
pub struct Conn<S> {
    stream: S,
    inbuf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps a stream.
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            inbuf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            out: Vec::with_capacity(1024),
        }
    }

    /// Queues a reply.
    pub fn reply(&mut self, r: &Reply) {
        r.encode(&mut self.out);
    }

    /// Writes queued replies.
    pub async fn flush(&mut self) -> Result<(), Stop> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await.map_err(Stop::Io)?;
            self.stream.flush().await.map_err(Stop::Io)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Closes the write side after flushing.
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// Gives the stream back (for STARTTLS) with the number of input octets
    /// that were buffered but not consumed; the caller discards them.
    pub fn into_inner(self) -> (S, usize) {
        let unread = self.inbuf.len() - self.pos;
        (self.stream, unread)
    }

    fn buffered(&self) -> &[u8] {
        &self.inbuf[self.pos..]
    }

    /// Flushes replies, then reads more input.
    async fn fill(
        &mut self,
        timeout: Duration,
        shutdown: Option<&mut watch::Receiver<bool>>,
    ) -> Result<(), Stop> {
        self.flush().await?;
        if self.pos > 0 && self.pos == self.inbuf.len() {
            self.inbuf.clear();
            self.pos = 0;
        } else if self.pos > READ_CHUNK {
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.inbuf.len();
        self.inbuf.resize(len + READ_CHUNK, 0);
        let read = tokio::time::timeout(timeout, self.stream.read(&mut self.inbuf[len..]));
        let result = match shutdown {
            Some(rx) => tokio::select! {
                r = read => r,
                _ = crate::server::stopping(rx) => { self.inbuf.truncate(len); return Err(Stop::Shutdown) }
            },
            None => read.await,
        };
        match result {
            Err(_) => {
                self.inbuf.truncate(len);
                Err(Stop::Timeout)
            }
            Ok(Err(e)) => {
                self.inbuf.truncate(len);
                Err(Stop::Io(e))
            }
            Ok(Ok(0)) => {
                self.inbuf.truncate(len);
                Err(Stop::Eof)
            }
            Ok(Ok(n)) => {
                self.inbuf.truncate(len + n);
                Ok(())
            }
        }
    }

    /// Reads one CRLF-terminated line of at most `max` octets (CRLF
    /// included). A longer line is consumed up to its CRLF and reported as
    /// `TooLong`. With `shutdown`, waiting ends when it turns true.
    pub async fn read_line(
        &mut self,
        max: usize,
        timeout: Duration,
        mut shutdown: Option<&mut watch::Receiver<bool>>,
    ) -> Result<Input, Stop> {
        let mut too_long = false;
        let mut scanned = 0;
        loop {
            let buf = self.buffered();
            if let Some(i) = find_crlf(&buf[scanned..]).map(|i| i + scanned) {
                let line = buf[..i].to_vec();
                self.pos += i + 2;
                return Ok(if too_long || i + 2 > max {
                    Input::TooLong
                } else {
                    Input::Line(line)
                });
            }
            if buf.len() > max {
                // Discard what cannot be a valid line, keeping a trailing CR
                // that may pair with the next read's LF.
                too_long = true;
                let keep = usize::from(buf.last() == Some(&b'\r'));
                self.pos = self.inbuf.len() - keep;
                scanned = 0;
            } else {
                scanned = buf.len().saturating_sub(1);
            }
            if let Some(rx) = shutdown.as_deref() {
                if *rx.borrow() {
                    return Err(Stop::Shutdown);
                }
            }
            self.fill(timeout, shutdown.as_deref_mut()).await?;
        }
    }

    /// Reads DATA up to its end marker through `decoder` into `out`.
    pub async fn read_data(
        &mut self,
        decoder: &mut DataDecoder,
        out: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<(), Stop> {
        loop {
            let start = self.pos;
            match decoder.feed(&self.inbuf[start..], out) {
                DataEvent::End { consumed } => {
                    self.pos = start + consumed;
                    return Ok(());
                }
                DataEvent::NeedMore => self.pos = self.inbuf.len(),
            }
            self.fill(timeout, None).await?;
        }
    }

    /// Reads exactly `n` octets (a BDAT chunk); appends them to `out` if
    /// given, else discards them.
    pub async fn read_chunk(
        &mut self,
        mut n: u64,
        mut out: Option<&mut Vec<u8>>,
        timeout: Duration,
    ) -> Result<(), Stop> {
        loop {
            let avail = (self.inbuf.len() - self.pos) as u64;
            let take = avail.min(n) as usize;
            if let Some(o) = out.as_deref_mut() {
                o.extend_from_slice(&self.inbuf[self.pos..self.pos + take]);
            }
            self.pos += take;
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            self.fill(timeout, None).await?;
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_and_limits() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Conn::new(server);
        let t = Duration::from_secs(5);
        tokio::spawn(async move {
            let long = vec![b'x'; 600];
            client.write_all(b"NOOP\r\nEHLO a\r").await.unwrap();
            client.write_all(b"\n").await.unwrap();
            client.write_all(&long).await.unwrap();
            client.write_all(b"\r\nQUIT\r\n").await.unwrap();
        });
        let mut lines = Vec::new();
        for _ in 0..4 {
            lines.push(match conn.read_line(512, t, None).await.unwrap() {
                Input::Line(l) => String::from_utf8(l).unwrap(),
                Input::TooLong => "<too long>".into(),
            });
        }
        assert_eq!(lines, ["NOOP", "EHLO a", "<too long>", "QUIT"]);
        assert!(matches!(conn.read_line(512, t, None).await, Err(Stop::Eof)));
    }
}
