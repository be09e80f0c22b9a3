//! One SMTP connection from greeting to close.
//!
//! The session is generic over its stream so tests can drive it in memory
//! and STARTTLS can later swap the stream type. It owns the conversation
//! state (HELO name, the open transaction, the error count); the protocol
//! details live in `crate::smtp`, the stages in this module's files:
//! `envelope` (MAIL, RCPT) and `data` (DATA, BDAT, queueing).

mod auth;
pub mod body;
mod data;
mod envelope;
pub mod hooks;
pub mod io;
mod mailauth;
pub mod starttls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::debug;

use crate::config::{HookName, Settings};
use crate::plugin::run::Decision;
use crate::plugin::{PluginHost, PluginSession};
use crate::queue::{QueueManager, Store};
use crate::smtp::{Command, Reply, parse_command};
use io::{Conn, Input, Stop};

pub use envelope::Transaction;

/// What every session shares.
pub struct ServerCtx {
    /// Resolved settings.
    pub settings: Arc<Settings>,
    /// Queue store.
    pub store: Store,
    /// Queue manager handle.
    pub queue: QueueManager,
    /// The plugin host.
    pub plugins: Arc<PluginHost>,
    /// TLS acceptor with reloadable certificates.
    pub tls: Arc<crate::tls::Tls>,
    /// The users file.
    pub users: Arc<crate::users::UserDb>,
    /// Per-IP brake on failed AUTH.
    pub auth_throttle: Arc<crate::auth::Throttle>,
    /// The budget on message bytes held in memory (`limits.max_bytes_in_flight`).
    pub budget: body::Budget,
    /// Inbound verification and DKIM signing keys.
    pub mailauth: Arc<crate::mailauth::MailAuth>,
}

/// Facts about the connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Session id (for logs).
    pub id: String,
    /// Client address.
    pub peer: SocketAddr,
    /// Our address.
    pub local: SocketAddr,
    /// Listener name.
    pub listener: String,
    /// Listener role.
    pub role: crate::config::Role,
    /// TLS parameters once TLS is active.
    pub tls: Option<crate::tls::TlsInfo>,
    /// The authenticated user name, once AUTH succeeded.
    pub auth: Option<String>,
    /// When the connection must end (`timeouts.session`), STARTTLS or not.
    pub deadline: tokio::time::Instant,
}

/// The client's HELO/EHLO.
#[derive(Debug, Clone)]
pub struct Helo {
    /// Name the client gave.
    pub name: String,
    /// EHLO (true) or HELO (false).
    pub esmtp: bool,
}

/// One connection's conversation.
pub struct Session<S> {
    conn: Conn<S>,
    ctx: Arc<ServerCtx>,
    info: ConnInfo,
    shutdown: watch::Receiver<bool>,
    helo: Option<Helo>,
    tx: Option<Transaction>,
    errors: usize,
    /// Junk commands since the session started or last queued a message.
    junk: usize,
    plugins: PluginSession,
    /// Set by a plugin's disconnect verdict: close after this reply.
    closing: bool,
    /// Send the 220 greeting (not after STARTTLS).
    greet: bool,
    /// Set by STARTTLS: hand the stream back after the 220.
    upgrade: bool,
    /// The authenticated account (see `auth.rs`).
    user: Option<crate::users::User>,
    auth_failures: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A session on `stream`; `shutdown` turns true when the server stops.
    pub fn new(
        stream: S,
        ctx: Arc<ServerCtx>,
        info: ConnInfo,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut plugins = PluginSession::new(ctx.plugins.clone(), info.id.clone());
        plugins.hold_top_ups();
        Session {
            conn: Conn::new(stream, ctx.settings.timeouts.write, info.deadline),
            ctx,
            info,
            shutdown,
            helo: None,
            tx: None,
            errors: 0,
            junk: 0,
            plugins,
            closing: false,
            greet: true,
            upgrade: false,
            user: None,
            auth_failures: 0,
        }
    }

    fn settings(&self) -> &Settings {
        &self.ctx.settings
    }

    /// Runs the conversation to its end; returns the stream when the client
    /// asked for STARTTLS (see `starttls.rs`).
    ///
    /// An async block rather than an `async fn`: an `async fn` moves its
    /// arguments into its body, and the future keeps room for both copies
    /// of the session. Here the session is stored once and the conversation
    /// borrows it (1.2 KiB less per idle connection, measured by
    /// `footprint::idle_sessions_cost_a_few_kib_each`: 3.7 against 4.9).
    #[allow(clippy::manual_async_fn)]
    pub fn run(mut self) -> impl Future<Output = Option<S>> {
        async move {
            if self.converse().await {
                Some(self.into_tls_stream())
            } else {
                None
            }
        }
    }

    /// The greeting and the command loop; true when STARTTLS was accepted
    /// and its 220 written, so the stream is to be handed over.
    async fn converse(&mut self) -> bool {
        // Boxed like the command stages: an idle session's future holds only
        // what waiting for a command needs.
        if self.greet && !Box::pin(self.greeting()).await {
            return false;
        }
        loop {
            if self.plugins.owes_top_up() {
                // The reply goes out before the standby maker is woken
                // (`PluginSession::hold_top_ups`).
                if let Err(stop) = self.conn.flush().await {
                    Box::pin(self.stopped(stop)).await;
                    return false;
                }
                self.plugins.top_up();
            }
            let max = self.settings().limits.command_line_length;
            let timeout = self.settings().timeouts.command;
            let input = self
                .conn
                .read_line(max, timeout, Some(&mut self.shutdown))
                .await;
            let reply = match input {
                Ok(Input::TooLong) => Reply::line_too_long(),
                Ok(Input::Line(line)) => match self.command(line).await {
                    Ok(r) => r,
                    Err(stop) => {
                        Box::pin(self.stopped(stop)).await;
                        return false;
                    }
                },
                Err(stop) => {
                    Box::pin(self.stopped(stop)).await;
                    return false;
                }
            };
            self.conn.reply(&reply);
            if self.upgrade {
                return self.conn.flush().await.is_ok();
            }
            if reply.closes() || self.closing {
                break;
            }
            if reply.is_error() {
                self.errors += 1;
                if self.errors >= self.settings().limits.max_errors {
                    debug!(errors = self.errors, "too many errors");
                    let r = Reply::too_many_errors(&self.settings().hostname);
                    self.conn.reply(&r);
                    break;
                }
            }
        }
        self.conn.shutdown().await;
        false
    }

    /// The connect hook, then the 220 greeting (queued, written with the
    /// first flush); false when a plugin refused the connection.
    async fn greeting(&mut self) -> bool {
        if self.plugins.wants(HookName::Connect) {
            let conn = self.conn_record();
            let decision = self.plugins.connect(&conn).await;
            if let Some(mut r) = self.refusal(&decision) {
                // Before the greeting a refusal ends the session (RFC 5321 §3.1).
                if r.code < 500 {
                    r.code = 421;
                }
                self.conn.reply(&r);
                self.conn.shutdown().await;
                return false;
            }
            // No other hook can run in the connect hook's instances: the next
            // one is ehlo, after the EHLO boundary has dropped them. Dropped
            // now, an idle greeted connection holds no plugin instance
            // (~55 KiB each, see README "Memory per connection").
            self.plugins.end_tx();
        }
        let greeting = Reply::greeting(&self.settings().hostname);
        self.conn.reply(&greeting);
        true
    }

    /// Answers the end of input: a 421 where the client is still there.
    async fn stopped(&mut self, stop: Stop) {
        let host = self.settings().hostname.clone();
        match stop {
            Stop::Timeout => {
                debug!("command timeout");
                self.conn.reply(&Reply::timeout(&host));
            }
            Stop::Lifetime => {
                debug!("session lifetime reached");
                crate::observe::limit_hit("timeouts.session", &self.info.peer.ip().to_string());
                self.conn.reply(&Reply::session_too_long(&host));
            }
            Stop::Shutdown => self.conn.reply(&Reply::shutting_down(&host)),
            Stop::Eof => debug!("client closed the connection"),
            Stop::Io(e) => {
                debug!(error = %e, "connection error");
                return;
            }
            Stop::WriteTimeout => {
                debug!("client does not read its replies");
                return;
            }
        }
        self.conn.shutdown().await;
    }

    /// Handles one command line.
    async fn command(&mut self, line: Vec<u8>) -> Result<Reply, Stop> {
        if line.contains(&b'\n') || line.contains(&b'\r') {
            return Ok(Reply::bare_line_ending_in_command());
        }
        let cmd = match parse_command(&line) {
            Ok(c) => c,
            Err(e) => {
                let reply = e.reply();
                crate::metrics::reply("invalid", reply.code);
                return Ok(reply);
            }
        };
        let verb = cmd.verb();
        if self.tx.is_none()
            && matches!(
                cmd,
                Command::Noop
                    | Command::Rset
                    | Command::Vrfy
                    | Command::Help
                    | Command::Ehlo(_)
                    | Command::Helo(_)
            )
        {
            self.junk += 1;
            if self.junk > self.settings().limits.max_junk_commands {
                let peer = self.info.peer.ip().to_string();
                crate::observe::limit_hit("limits.max_junk_commands", &peer);
                return Ok(Reply::too_many_junk_commands(&self.settings().hostname));
            }
        }
        let reply = match cmd {
            // Stages that await (plugins, the queue, password checks) are
            // boxed: the session's own future then holds only the active
            // stage, so an idle connection costs a few KiB, not the sum of
            // every stage's state.
            Command::Ehlo(name) => Box::pin(self.hello(name, true)).await,
            Command::Helo(name) => Box::pin(self.hello(name, false)).await,
            Command::Mail(path, params) => Box::pin(self.mail(path, params)).await,
            Command::Rcpt(path, params) => Box::pin(self.rcpt(path, params)).await,
            Command::Data => Box::pin(self.data()).await?,
            Command::Bdat(size, last) => Box::pin(self.bdat(size, last)).await?,
            Command::StartTls => self.starttls(),
            Command::Auth(mech, initial) => Box::pin(self.auth(mech, initial)).await?,
            Command::Rset => {
                self.end_tx();
                Reply::reset()
            }
            Command::Noop => Reply::ok(),
            Command::Quit => Reply::bye(),
            Command::Help => Reply::help(),
            Command::Vrfy => Reply::vrfy(),
            Command::NotImplemented(v) => Reply::not_implemented(v),
        };
        crate::metrics::reply(verb, reply.code);
        Ok(reply)
    }

    /// Ends the transaction: its state, its notes and its plugin instances.
    pub(super) fn end_tx(&mut self) {
        self.tx = None;
        self.plugins.end_tx();
    }

    async fn hello(&mut self, name: String, esmtp: bool) -> Reply {
        self.end_tx();
        // A plugin's accept may only change the greeting text: the reply is
        // always 250 and still lists every extension (STARTTLS, AUTH, ...).
        let mut greeting = None;
        if self.plugins.wants(HookName::Ehlo) {
            let mut conn = self.conn_record();
            conn.helo = Some(name.clone());
            let decision = self.plugins.ehlo(&conn, &name).await;
            if let Some(r) = self.refusal(&decision) {
                return r;
            }
            if let Decision::Accept(Some(r)) = decision {
                greeting = r.lines.into_iter().next().filter(|t| !t.is_empty());
            }
        }
        let s = self.settings();
        let mut reply = if esmtp {
            let ext = vec![
                "PIPELINING".to_string(),
                format!("SIZE {}", s.limits.max_message_size),
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
                "SMTPUTF8".into(),
                "CHUNKING".into(),
                "DSN".into(),
            ];
            let ext = self.security_extensions(ext);
            Reply::ehlo(&s.hostname, &name, &ext)
        } else {
            Reply::helo(&s.hostname, &name)
        };
        if let Some(text) = greeting {
            reply = reply.with_greeting(&s.hostname, &text);
        }
        self.helo = Some(Helo { name, esmtp });
        reply
    }
}
