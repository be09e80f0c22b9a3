//! The session's byte shell: buffered input split into CRLF lines, DATA and
//! BDAT payloads, and buffered replies.
//!
//! Replies are collected and written only when the session is about to wait
//! for more input, which is exactly what RFC 2920 pipelining asks for: a
//! client that sends MAIL, RCPT, RCPT, DATA in one packet gets one packet
//! of replies.

use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::smtp::{DataEvent, Reply};

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
    /// The client did not take our replies within the write timeout (it
    /// pipelines and never reads): nothing more can be said to it.
    WriteTimeout,
    /// The session outlived `timeouts.session`.
    Lifetime,
}

/// Where the payload of DATA or BDAT goes: the session's body reader, or
/// nowhere (a refused chunk is still read, so the session stays in step).
pub trait BodySink {
    /// Takes wire bytes; says whether the DATA end marker was among them.
    fn feed(&mut self, input: &[u8]) -> DataEvent;
}

/// Throws payload away.
pub struct Discard;

impl BodySink for Discard {
    fn feed(&mut self, _: &[u8]) -> DataEvent {
        DataEvent::NeedMore
    }
}

/// One command line, or the news that it was too long.
#[derive(Debug)]
pub enum Input {
    /// The line without its CRLF.
    Line(Vec<u8>),
    /// The line exceeded the limit and was discarded up to its CRLF.
    TooLong,
}

/// Read size while waiting for commands: a pipelined burst is read in few
/// calls.
const LINE_READ: usize = 2 * 1024;
/// Read size for DATA and BDAT payloads (a buffer on a worker thread's
/// stack, for the duration of one poll).
const DATA_READ: usize = 64 * 1024;

/// Buffered connection.
pub struct Conn<S> {
    stream: S,
    inbuf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    write_timeout: Duration,
    /// The end of the session's lifetime: no read or write waits past it.
    deadline: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps a stream. Every write of replies must finish within
    /// `write_timeout`, and nothing waits past `deadline`.
    pub fn new(stream: S, write_timeout: Duration, deadline: Instant) -> Self {
        Conn {
            stream,
            inbuf: Vec::new(),
            pos: 0,
            out: Vec::new(),
            write_timeout,
            deadline,
        }
    }

    /// `timeout`, cut short by the session's deadline; true when the
    /// deadline is what binds.
    fn bounded(&self, timeout: Duration) -> (Duration, bool) {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left <= timeout {
            (left, true)
        } else {
            (timeout, false)
        }
    }

    /// Queues a reply.
    pub fn reply(&mut self, r: &Reply) {
        r.encode(&mut self.out);
    }

    /// Writes queued replies.
    pub async fn flush(&mut self) -> Result<(), Stop> {
        if !self.out.is_empty() {
            // A reply may still go out after the deadline (the 421 that says
            // so), but never waits longer than the write timeout.
            let write = async {
                self.stream.write_all(&self.out).await?;
                self.stream.flush().await
            };
            match tokio::time::timeout(self.write_timeout, write).await {
                Ok(r) => r.map_err(Stop::Io)?,
                Err(_) => {
                    crate::observe::limit_hit("timeouts.write", "client does not read replies");
                    return Err(Stop::WriteTimeout);
                }
            }
            // Freed, not cleared: a session waiting for its next command
            // holds no reply buffer either.
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Closes the write side after flushing.
    pub async fn shutdown(&mut self) {
        if self.flush().await.is_ok() {
            let _ = tokio::time::timeout(self.write_timeout, self.stream.shutdown()).await;
        }
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

    /// Flushes replies, then reads up to `want` more octets. A drained
    /// buffer is freed first and the read goes through a buffer on the stack
    /// (see [`read_appending`]), so a session that waits for a command or
    /// for the next piece of a message holds no input buffer while it
    /// waits. Only a partial command line waits in a buffer, filled without
    /// zeroing it first (`read_buf`).
    async fn fill(
        &mut self,
        timeout: Duration,
        shutdown: Option<&mut watch::Receiver<bool>>,
        want: usize,
    ) -> Result<(), Stop> {
        self.flush().await?;
        if self.pos == self.inbuf.len() {
            self.inbuf = Vec::new();
            self.pos = 0;
        } else if self.pos > want {
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        let (timeout, at_deadline) = self.bounded(timeout);
        let (stream, inbuf) = (&mut self.stream, &mut self.inbuf);
        let read = tokio::time::timeout(timeout, async move {
            match (inbuf.is_empty(), want > LINE_READ) {
                (true, false) => read_appending::<_, LINE_READ>(stream, inbuf).await,
                (true, true) => read_appending::<_, DATA_READ>(stream, inbuf).await,
                (false, _) => {
                    inbuf.reserve(want);
                    stream.read_buf(inbuf).await
                }
            }
        });
        let result = match shutdown {
            Some(rx) => tokio::select! {
                r = read => r,
                _ = crate::server::stopping(rx) => return Err(Stop::Shutdown),
            },
            None => read.await,
        };
        match result {
            Err(_) => Err(if at_deadline {
                Stop::Lifetime
            } else {
                Stop::Timeout
            }),
            Ok(Err(e)) => Err(Stop::Io(e)),
            Ok(Ok(0)) => Err(Stop::Eof),
            Ok(Ok(_)) => Ok(()),
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
            if let Some(rx) = shutdown.as_deref()
                && *rx.borrow()
            {
                return Err(Stop::Shutdown);
            }
            self.fill(timeout, shutdown.as_deref_mut(), LINE_READ)
                .await?;
        }
    }

    /// Reads DATA up to its end marker into `sink`.
    pub async fn read_data(
        &mut self,
        sink: &mut (dyn BodySink + Send),
        timeout: Duration,
    ) -> Result<(), Stop> {
        loop {
            let start = self.pos;
            match sink.feed(&self.inbuf[start..]) {
                DataEvent::End { consumed } => {
                    self.pos = start + consumed;
                    return Ok(());
                }
                DataEvent::NeedMore => self.pos = self.inbuf.len(),
            }
            self.fill(timeout, None, DATA_READ).await?;
        }
    }

    /// Reads exactly `n` octets (a BDAT chunk) into `sink`.
    pub async fn read_chunk(
        &mut self,
        mut n: u64,
        sink: &mut (dyn BodySink + Send),
        timeout: Duration,
    ) -> Result<(), Stop> {
        loop {
            let avail = (self.inbuf.len() - self.pos) as u64;
            let take = avail.min(n) as usize;
            sink.feed(&self.inbuf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            self.fill(timeout, None, DATA_READ).await?;
        }
    }
}

/// Reads at most `N` octets into a buffer on the stack of the poll that
/// finds them ready, and appends them to `buf`: nothing is allocated, and
/// nothing but this future's two references is held, while the client is
/// silent. The price is one copy of what was read (at most `N` octets).
fn read_appending<'a, S: AsyncRead + Unpin, const N: usize>(
    stream: &'a mut S,
    buf: &'a mut Vec<u8>,
) -> impl Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); N];
        let mut rb = ReadBuf::uninit(&mut chunk);
        std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut rb))?;
        buf.extend_from_slice(rb.filled());
        Poll::Ready(Ok(rb.filled().len()))
    })
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
        let t = Duration::from_secs(5);
        let mut conn = Conn::new(server, t, Instant::now() + t);
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
