//! One SMTP (or LMTP, RFC 2033) client connection, generic over its
//! stream like the server session: STARTTLS consumes a `Client<S>` and
//! returns a `Client<TlsStream<S>>`, and a Unix socket works as well as TCP.
//!
//! The client moves bytes and reports what happened as data: a `Fate` per
//! recipient (the reply that decided it, or the error that cut the
//! transaction short). It does not decide what a reply means for the
//! queue; `classify` does, in one place.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::config::{ClientTimeouts, Credentials};
use crate::smtp::Reply;
use crate::smtp::request::{self, DotStuffer, MailArgs, RcptArgs};
use crate::smtp::response::{Capabilities, ResponseError, parse_reply};

/// The server at the other end, for logs, DSNs and `Delivered` details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Host name (or socket path).
    pub name: String,
    /// The address connected to, when it differs from the name.
    pub addr: Option<String>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            Some(a) => write!(f, "{}[{a}]", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Where in the conversation something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// TCP or socket connect.
    Connect,
    /// The 220 greeting.
    Greeting,
    /// EHLO, LHLO or HELO.
    Hello,
    /// STARTTLS and the handshake.
    StartTls,
    /// AUTH.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (the 354).
    Data,
    /// The message data and the reply after the final dot.
    Dot,
    /// RSET before reusing a connection.
    Rset,
}

impl Stage {
    /// The command a reply answered, as DSNs and logs say it.
    pub fn command(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Greeting => "the greeting",
            Stage::Hello => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Dot => "end of data",
            Stage::Rset => "RSET",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

/// Why a connection could not be used (as opposed to a reply, which is
/// normal flow). Cloneable so one error can stand for every recipient it
/// cut short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The TCP or socket connect failed or timed out.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No reply within the timeout.
    #[error("timed out waiting for the reply to {0}")]
    Timeout(Stage),
    /// The socket failed.
    #[error("connection lost during {stage}: {error}")]
    Io {
        /// Where.
        stage: Stage,
        /// The OS error.
        error: String,
    },
    /// The server closed the connection.
    #[error("connection closed by the server during {0}")]
    Closed(Stage),
    /// A reply that is not SMTP.
    #[error("unreadable reply to {stage}: {error}")]
    Protocol {
        /// Where.
        stage: Stage,
        /// What was wrong.
        error: ResponseError,
    },
    /// A refusal before the transaction (greeting, EHLO, STARTTLS, AUTH).
    #[error("{stage} refused: {}", reply.one_line())]
    Refused {
        /// Where.
        stage: Stage,
        /// The reply.
        reply: Reply,
    },
    /// The TLS handshake failed (includes certificate verification).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The TLS policy needs STARTTLS and the server does not offer it.
    #[error("STARTTLS is required but not offered")]
    NoStartTls,
    /// AUTH is configured and the server offers neither PLAIN nor LOGIN.
    #[error("AUTH is configured but the server offers no PLAIN or LOGIN")]
    NoAuthMechanism,
    /// A TLS policy of the recipient domain (MTA-STS `enforce`, DANE)
    /// was not met: STARTTLS missing or a certificate it refuses.
    #[error("{text}")]
    Policy {
        /// RFC 3463 status (4.7.x).
        status: &'static str,
        /// What was required and what happened.
        text: String,
    },
}

impl ClientError {
    fn io(stage: Stage, e: std::io::Error) -> ClientError {
        ClientError::Io {
            stage,
            error: e.to_string(),
        }
    }
}

/// What became of one recipient in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// The reply that decided it, and what it answered.
    Reply(Stage, Reply),
    /// The connection failed before its fate was known.
    Error(ClientError),
}

/// One recipient as sent: the address and its parameters.
#[derive(Debug, Clone)]
pub struct RcptLine<'a> {
    /// The forward path, without brackets.
    pub address: String,
    /// DSN parameters (empty when the server does not offer DSN).
    pub args: RcptArgs<'a>,
}

/// One transaction's envelope, with the parameters that apply to this
/// server already chosen.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The reverse path, without brackets; empty for the null sender.
    pub sender: String,
    /// MAIL parameters.
    pub mail: MailArgs<'a>,
    /// Recipients, in order.
    pub rcpts: Vec<RcptLine<'a>>,
}

const READ_CHUNK: usize = 8 * 1024;
const WRITE_CHUNK: usize = 64 * 1024;
/// QUIT is a courtesy: never wait long for its reply.
const QUIT_WAIT: Duration = Duration::from_secs(5);

/// A connection that has been greeted and said hello.
pub struct Client<S> {
    stream: S,
    inbuf: Vec<u8>,
    peer: Peer,
    timeouts: ClientTimeouts,
    lmtp: bool,
    helo_name: String,
    caps: Capabilities,
    tls: bool,
    broken: bool,
    /// Transactions sent over this connection.
    pub messages: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Client<S> {
    /// Reads the greeting and says EHLO (LHLO for LMTP; HELO when EHLO is
    /// refused).
    pub async fn open(
        stream: S,
        peer: Peer,
        timeouts: &ClientTimeouts,
        lmtp: bool,
        helo_name: &str,
    ) -> Result<Client<S>, ClientError> {
        let mut c = Client {
            stream,
            inbuf: Vec::with_capacity(READ_CHUNK),
            peer,
            timeouts: timeouts.clone(),
            lmtp,
            helo_name: helo_name.to_string(),
            caps: Capabilities::default(),
            tls: false,
            broken: false,
            messages: 0,
        };
        let greeting = c.read_reply(Stage::Greeting, timeouts.greeting).await?;
        if greeting.code != 220 {
            return Err(ClientError::Refused {
                stage: Stage::Greeting,
                reply: greeting,
            });
        }
        c.hello().await?;
        Ok(c)
    }

    /// The server.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// What the server offered in its last EHLO reply.
    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// True when the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// False once the connection failed or the server said it closes.
    pub fn is_reusable(&self) -> bool {
        !self.broken
    }

    async fn hello(&mut self) -> Result<(), ClientError> {
        let verb = if self.lmtp { "LHLO" } else { "EHLO" };
        let r = self
            .command(&request::hello(verb, &self.helo_name), Stage::Hello)
            .await?;
        if r.is_positive() {
            self.caps = Capabilities::from_ehlo(&r);
            return Ok(());
        }
        // RFC 5321 §3.2: a server that does not know EHLO gets HELO. LMTP
        // has no fallback (RFC 2033 §4.1).
        if self.lmtp || r.is_transient() {
            return Err(ClientError::Refused {
                stage: Stage::Hello,
                reply: r,
            });
        }
        let r = self
            .command(&request::hello("HELO", &self.helo_name), Stage::Hello)
            .await?;
        if !r.is_positive() {
            return Err(ClientError::Refused {
                stage: Stage::Hello,
                reply: r,
            });
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    /// STARTTLS (RFC 3207): the plaintext client is consumed; the TLS one
    /// has said EHLO again and knows the new capabilities.
    pub async fn starttls(
        mut self,
        connector: &TlsConnector,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Client<TlsStream<S>>, ClientError> {
        let r = self.command("STARTTLS\r\n", Stage::StartTls).await?;
        if r.code != 220 {
            return Err(ClientError::Refused {
                stage: Stage::StartTls,
                reply: r,
            });
        }
        // Anything the server sent after its 220 arrived in plaintext and
        // could have been injected: it is dropped, as RFC 3207 §4.2 asks.
        let handshake = connector.connect(name, self.stream);
        let stream = match tokio::time::timeout(self.timeouts.command, handshake).await {
            Err(_) => return Err(ClientError::Timeout(Stage::StartTls)),
            Ok(Err(e)) => return Err(ClientError::Tls(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let mut c = Client {
            stream,
            inbuf: Vec::with_capacity(READ_CHUNK),
            peer: self.peer,
            timeouts: self.timeouts,
            lmtp: self.lmtp,
            helo_name: self.helo_name,
            caps: Capabilities::default(),
            tls: true,
            broken: false,
            messages: 0,
        };
        c.hello().await?;
        Ok(c)
    }

    /// AUTH PLAIN, else LOGIN (RFC 4954). The caller only calls this over TLS.
    pub async fn auth(&mut self, creds: &Credentials) -> Result<(), ClientError> {
        let refused = |reply: Reply| ClientError::Refused {
            stage: Stage::Auth,
            reply,
        };
        let r = if self.caps.auth.iter().any(|m| m == "PLAIN") {
            let token = B64.encode(format!("\0{}\0{}", creds.user, creds.password));
            self.command(&format!("AUTH PLAIN {token}\r\n"), Stage::Auth)
                .await?
        } else if self.caps.auth.iter().any(|m| m == "LOGIN") {
            let r = self.command("AUTH LOGIN\r\n", Stage::Auth).await?;
            if r.code != 334 {
                return Err(refused(r));
            }
            let user = format!("{}\r\n", B64.encode(&creds.user));
            let r = self.command(&user, Stage::Auth).await?;
            if r.code != 334 {
                return Err(refused(r));
            }
            let pass = format!("{}\r\n", B64.encode(&creds.password));
            self.command(&pass, Stage::Auth).await?
        } else {
            return Err(ClientError::NoAuthMechanism);
        };
        if r.code == 235 {
            Ok(())
        } else {
            Err(refused(r))
        }
    }

    /// RSET before the next message on a kept connection; also proves the
    /// connection still works.
    pub async fn rset(&mut self) -> Result<(), ClientError> {
        let r = self.command("RSET\r\n", Stage::Rset).await;
        match r {
            Ok(r) if r.is_positive() => Ok(()),
            Ok(reply) => {
                self.broken = true;
                Err(ClientError::Refused {
                    stage: Stage::Rset,
                    reply,
                })
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// QUIT, without waiting long for the answer.
    pub async fn quit(mut self) {
        let bye = async {
            if self.stream.write_all(b"QUIT\r\n").await.is_ok() {
                let _ = self.stream.flush().await;
                let mut buf = [0u8; 512];
                let _ = self.stream.read(&mut buf).await;
            }
            let _ = self.stream.shutdown().await;
        };
        let _ = tokio::time::timeout(QUIT_WAIT, bye).await;
    }

    /// Sends one message to every recipient of `env`: MAIL, RCPTs and DATA
    /// in one write when the server pipelines (RFC 2920), else in turn.
    /// One fate per recipient, in order.
    pub async fn send(&mut self, env: &Envelope<'_>, body: &[u8]) -> Vec<Fate> {
        self.messages += 1;
        let mut fates: Vec<Option<Fate>> = vec![None; env.rcpts.len()];
        if let Err(e) = self.transaction(env, body, &mut fates).await {
            self.broken = true;
            for f in fates.iter_mut().filter(|f| f.is_none()) {
                *f = Some(Fate::Error(e.clone()));
            }
        }
        fates
            .into_iter()
            .map(|f| f.expect("every recipient has a fate"))
            .collect()
    }

    async fn transaction(
        &mut self,
        env: &Envelope<'_>,
        body: &[u8],
        fates: &mut [Option<Fate>],
    ) -> Result<(), ClientError> {
        let mail = request::mail_from(&env.sender, &env.mail);
        let rcpts: Vec<String> = env
            .rcpts
            .iter()
            .map(|r| request::rcpt_to(&r.address, &r.args))
            .collect();
        let pipelining = self.caps.pipelining;
        let mut accepted = Vec::new();
        let data_reply;
        if pipelining {
            let mut batch = mail;
            rcpts.iter().for_each(|r| batch.push_str(r));
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes(), Stage::Mail).await?;
            let mail_reply = self.read_reply(Stage::Mail, self.timeouts.command).await?;
            self.note(&mail_reply);
            if !mail_reply.is_positive() {
                // Every recipient shares MAIL's fate; the replies to the
                // rest of the batch (503s) are read so the connection stays
                // in step, and a server that hung up is simply not kept.
                fates.fill(Some(Fate::Reply(Stage::Mail, mail_reply)));
                if self.drain_replies(rcpts.len() + 1).await.is_err() {
                    self.broken = true;
                }
                return Ok(());
            }
            for (i, fate) in fates.iter_mut().enumerate() {
                let r = self.read_reply(Stage::Rcpt, self.timeouts.command).await?;
                self.note(&r);
                if r.is_positive() {
                    accepted.push(i);
                } else {
                    *fate = Some(Fate::Reply(Stage::Rcpt, r));
                }
            }
            data_reply = self
                .read_reply(Stage::Data, self.timeouts.data_init)
                .await?;
            if accepted.is_empty() {
                // RFC 2920 §3.1: a 354 with no valid recipient still needs
                // the end marker; an empty message goes nowhere.
                if data_reply.code == 354 {
                    self.write(b".\r\n", Stage::Dot).await?;
                    self.read_reply(Stage::Dot, self.timeouts.data_done).await?;
                }
                return Ok(());
            }
        } else {
            let r = self.command(&mail, Stage::Mail).await?;
            if !r.is_positive() {
                fates.fill(Some(Fate::Reply(Stage::Mail, r)));
                return Ok(());
            }
            for (i, line) in rcpts.iter().enumerate() {
                let r = self.command(line, Stage::Rcpt).await?;
                if r.is_positive() {
                    accepted.push(i);
                } else {
                    fates[i] = Some(Fate::Reply(Stage::Rcpt, r));
                }
            }
            if accepted.is_empty() {
                return Ok(());
            }
            self.write(b"DATA\r\n", Stage::Data).await?;
            data_reply = self
                .read_reply(Stage::Data, self.timeouts.data_init)
                .await?;
        }
        self.note(&data_reply);
        if data_reply.code != 354 {
            for &i in &accepted {
                fates[i] = Some(Fate::Reply(Stage::Data, data_reply.clone()));
            }
            return Ok(());
        }
        self.write_data(body).await?;
        if self.lmtp {
            // RFC 2033 §4.2: one reply per accepted recipient, in order.
            for &i in &accepted {
                let r = self.read_reply(Stage::Dot, self.timeouts.data_done).await?;
                self.note(&r);
                fates[i] = Some(Fate::Reply(Stage::Dot, r));
            }
        } else {
            let r = self.read_reply(Stage::Dot, self.timeouts.data_done).await?;
            self.note(&r);
            for &i in &accepted {
                fates[i] = Some(Fate::Reply(Stage::Dot, r.clone()));
            }
        }
        Ok(())
    }

    /// Reads `n` replies to pipelined commands whose outcome is already
    /// known; a 354 among them gets the end marker.
    async fn drain_replies(&mut self, n: usize) -> Result<(), ClientError> {
        for _ in 0..n {
            let r = self.read_reply(Stage::Rcpt, self.timeouts.command).await?;
            self.note(&r);
            if r.code == 354 {
                self.write(b".\r\n", Stage::Dot).await?;
                self.read_reply(Stage::Dot, self.timeouts.data_done).await?;
            }
        }
        Ok(())
    }

    /// A 421 means the server is closing: the connection is not kept.
    fn note(&mut self, r: &Reply) {
        if r.code == 421 {
            self.broken = true;
        }
    }

    /// The stored message, dot-stuffed, in chunks; each write has the
    /// data-block timeout.
    async fn write_data(&mut self, body: &[u8]) -> Result<(), ClientError> {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::with_capacity(WRITE_CHUNK + 1024);
        for chunk in body.chunks(WRITE_CHUNK) {
            stuffer.feed(chunk, &mut out);
            self.write_timed(&out, self.timeouts.data_block).await?;
            out.clear();
        }
        stuffer.finish(&mut out);
        self.write_timed(&out, self.timeouts.data_block).await
    }

    async fn command(&mut self, line: &str, stage: Stage) -> Result<Reply, ClientError> {
        self.write(line.as_bytes(), stage).await?;
        let r = self.read_reply(stage, self.timeouts.command).await?;
        self.note(&r);
        Ok(r)
    }

    async fn write(&mut self, bytes: &[u8], stage: Stage) -> Result<(), ClientError> {
        let timeout = self.timeouts.command;
        self.write_timed(bytes, timeout).await.map_err(|e| match e {
            ClientError::Io { error, .. } => ClientError::Io { stage, error },
            ClientError::Timeout(_) => ClientError::Timeout(stage),
            other => other,
        })
    }

    async fn write_timed(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), ClientError> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Err(_) => Err(ClientError::Timeout(Stage::Dot)),
            Ok(Err(e)) => Err(ClientError::io(Stage::Dot, e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Reads one whole reply; `timeout` covers all of it.
    async fn read_reply(&mut self, stage: Stage, timeout: Duration) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match parse_reply(&self.inbuf) {
                Ok(Some((reply, used))) => {
                    self.inbuf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(error) => return Err(ClientError::Protocol { stage, error }),
            }
            let len = self.inbuf.len();
            self.inbuf.resize(len + READ_CHUNK, 0);
            let read = self.stream.read(&mut self.inbuf[len..]);
            let n = match tokio::time::timeout_at(deadline, read).await {
                Err(_) => Err(ClientError::Timeout(stage)),
                Ok(Err(e)) => Err(ClientError::io(stage, e)),
                Ok(Ok(0)) => Err(ClientError::Closed(stage)),
                Ok(Ok(n)) => Ok(n),
            };
            self.inbuf.truncate(len + *n.as_ref().unwrap_or(&0));
            n?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    fn timeouts() -> ClientTimeouts {
        let t = Duration::from_secs(5);
        ClientTimeouts {
            connect: t,
            greeting: t,
            command: t,
            data_init: t,
            data_block: t,
            data_done: t,
        }
    }

    /// A scripted server: for each line it reads, the expected start of
    /// the line and the reply; DATA payload lines are collected until the
    /// end marker. Returns what it read.
    async fn script(
        stream: tokio::io::DuplexStream,
        greeting: &str,
        steps: Vec<(&'static str, &'static str)>,
    ) -> Vec<String> {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        w.write_all(greeting.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        for (expect, reply) in steps {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            if expect == "<data>" {
                while line != ".\r\n" {
                    seen.push(line.clone());
                    line.clear();
                    r.read_line(&mut line).await.unwrap();
                }
            } else {
                assert!(
                    line.starts_with(expect),
                    "expected {expect:?}, got {line:?}"
                );
                seen.push(line);
            }
            w.write_all(reply.as_bytes()).await.unwrap();
        }
        seen
    }

    fn envelope(rcpts: &[&str]) -> Envelope<'static> {
        Envelope {
            sender: "a@example.test".into(),
            mail: MailArgs::default(),
            rcpts: rcpts
                .iter()
                .map(|r| RcptLine {
                    address: r.to_string(),
                    args: RcptArgs::default(),
                })
                .collect(),
        }
    }

    fn peer() -> Peer {
        Peer {
            name: "mx.test".into(),
            addr: Some("192.0.2.1".into()),
        }
    }

    #[tokio::test]
    async fn helo_fallback_and_one_command_at_a_time() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(script(
            server,
            "220 old.test\r\n",
            vec![
                ("EHLO me.test", "502 5.5.2 what?\r\n"),
                ("HELO me.test", "250 old.test\r\n"),
                ("MAIL FROM:<a@example.test>\r\n", "250 ok\r\n"),
                ("RCPT TO:<x@old.test>", "250 ok\r\n"),
                ("RCPT TO:<y@old.test>", "550 5.1.1 no such user\r\n"),
                ("DATA", "354 go\r\n"),
                ("<data>", "250 2.0.0 queued\r\n"),
            ],
        ));
        let mut c = Client::open(client, peer(), &timeouts(), false, "me.test")
            .await
            .unwrap();
        assert_eq!(c.caps(), &Capabilities::default());
        let fates = c
            .send(&envelope(&["x@old.test", "y@old.test"]), b"..x\r\n")
            .await;
        assert!(matches!(&fates[0], Fate::Reply(Stage::Dot, r) if r.code == 250));
        assert!(matches!(&fates[1], Fate::Reply(Stage::Rcpt, r) if r.code == 550));
        assert!(c.is_reusable());
        let seen = server.await.unwrap();
        assert_eq!(seen.last().unwrap(), "...x\r\n", "dot-stuffed");
    }

    #[tokio::test]
    async fn lmtp_has_one_reply_per_accepted_recipient() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(script(
            server,
            "220 lmtp.test LMTP\r\n",
            vec![
                ("LHLO me.test", "250-lmtp.test\r\n250 PIPELINING\r\n"),
                // One write: MAIL, two RCPTs, DATA; one reply per line.
                ("MAIL FROM:<a@example.test>", "250 2.1.0 ok\r\n"),
                ("RCPT TO:<a@l.test>", "250 2.1.5 ok\r\n"),
                ("RCPT TO:<b@l.test>", "250 2.1.5 ok\r\n"),
                ("DATA", "354 go\r\n"),
                (
                    "<data>",
                    "250 2.0.0 <a@l.test> Saved\r\n552 5.2.2 <b@l.test> Quota exceeded\r\n",
                ),
            ],
        ));
        let mut c = Client::open(client, peer(), &timeouts(), true, "me.test")
            .await
            .unwrap();
        let fates = c.send(&envelope(&["a@l.test", "b@l.test"]), b"x\r\n").await;
        assert!(matches!(&fates[0], Fate::Reply(Stage::Dot, r) if r.code == 250));
        assert!(
            matches!(&fates[1], Fate::Reply(Stage::Dot, r) if r.code == 552 && r.status.as_deref() == Some("5.2.2"))
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_mail_fails_everyone_and_a_dropped_connection_is_an_error() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(script(
            server,
            "220 mx.test\r\n",
            vec![
                ("EHLO", "250-mx.test\r\n250 PIPELINING\r\n"),
                ("MAIL", "451 4.7.1 greylisted\r\n"),
                ("RCPT", "503 5.5.1 no MAIL\r\n"),
                ("DATA", "503 5.5.1 no valid recipients\r\n"),
                ("MAIL", "250 ok\r\n"),
            ],
        ));
        let mut c = Client::open(client, peer(), &timeouts(), false, "me.test")
            .await
            .unwrap();
        let fates = c.send(&envelope(&["x@mx.test"]), b"x\r\n").await;
        assert!(matches!(&fates[0], Fate::Reply(Stage::Mail, r) if r.code == 451));
        assert!(c.is_reusable());
        // The server hangs up after MAIL: the recipient's fate is the error.
        let fates = c.send(&envelope(&["x@mx.test"]), b"x\r\n").await;
        assert!(
            matches!(&fates[0], Fate::Error(ClientError::Closed(Stage::Rcpt))),
            "{fates:?}"
        );
        assert!(!c.is_reusable());
        server.await.unwrap();
    }
}
