//! TLS on a connection: implicit (the submissions role) or by STARTTLS
//! (RFC 3207).
//!
//! STARTTLS is a type change: the plaintext `Session<TcpStream>` ends and
//! hands its stream back; a new `Session<TlsStream<TcpStream>>` starts with
//! fresh state (no HELO, no transaction, no AUTH) and no greeting. Input
//! the client pipelined after STARTTLS is dropped with the plaintext
//! session, so it can never be read as if it came over TLS (the
//! CVE-2011-0411 injection). A TLS session refuses STARTTLS, so the chain
//! stops after one step.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tracing::info;

use super::{ConnInfo, ServerCtx, Session};
use crate::config::Role;
use crate::smtp::Reply;
use crate::tls::TlsInfo;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Answers STARTTLS; the run loop hands the stream over after the 220.
    pub(super) fn starttls(&mut self) -> Reply {
        if self.info.tls.is_some() {
            return Reply::already_tls();
        }
        if self.helo.as_ref().is_none_or(|h| !h.esmtp) {
            return Reply::bad_sequence("Send EHLO first");
        }
        self.upgrade = true;
        Reply::ready_for_tls()
    }

    /// Gives the stream back after the 220 was written, dropping any input
    /// the client sent after STARTTLS.
    pub(super) fn into_tls_stream(self) -> S {
        let (stream, unread) = self.conn.into_inner();
        if unread > 0 {
            info!(
                octets = unread,
                "discarded plaintext pipelined after STARTTLS"
            );
        }
        stream
    }
}

/// Runs one accepted connection according to its listener's role.
pub async fn serve_connection(
    stream: TcpStream,
    ctx: Arc<ServerCtx>,
    mut info: ConnInfo,
    shutdown: watch::Receiver<bool>,
) {
    // Each stage (a session, a handshake) is built inside its own box and
    // awaited there, and the values handed from one to the next (the plain
    // stream, the TLS stream) go out of scope before the next await: the
    // connection's task holds only the stage it is in, never room for a
    // plaintext and a TLS session at once, nor moved-from copies of them.
    if info.role == Role::Submissions {
        let session = match Box::pin(handshake(stream, &ctx, &mut info)).await {
            Some(tls) => Box::pin(Session::new(tls, ctx, info, shutdown).run()),
            None => return,
        };
        session.await;
        return;
    }
    let plain = Box::pin(Session::new(stream, ctx.clone(), info.clone(), shutdown.clone()).run());
    let Some(stream) = plain.await else {
        return;
    };
    let session = match Box::pin(handshake(stream, &ctx, &mut info)).await {
        Some(tls) => {
            let mut session = Session::new(tls, ctx, info, shutdown);
            session.greet = false;
            Box::pin(session.run())
        }
        None => return,
    };
    // A TLS session never asks for another upgrade (`starttls` refuses).
    let _ = session.await;
}

/// The server side of a TLS handshake, bounded by `timeouts.tls_handshake`
/// (a client that opens TLS and stalls holds a connection only that long).
/// Records the negotiated parameters in `info`.
async fn handshake(
    stream: TcpStream,
    ctx: &ServerCtx,
    info: &mut ConnInfo,
) -> Option<TlsStream<TcpStream>> {
    let timeout = ctx.settings.timeouts.tls_handshake.min(
        info.deadline
            .saturating_duration_since(tokio::time::Instant::now()),
    );
    let accept = ctx.tls.acceptor().accept(stream);
    let tls = match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            crate::metrics::tls_handshake(&info.listener, "failed");
            info!(error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            crate::metrics::tls_handshake(&info.listener, "timeout");
            crate::observe::limit_hit("timeouts.tls_handshake", &info.peer.ip().to_string());
            return None;
        }
    };
    crate::metrics::tls_handshake(&info.listener, "ok");
    let facts = TlsInfo::of(tls.get_ref().1);
    info!(
        version = %facts.version,
        cipher = %facts.cipher,
        sni = %crate::observe::escape(facts.sni.as_deref().unwrap_or("")),
        "TLS established"
    );
    info.tls = Some(facts);
    info.auth = None;
    Some(tls)
}
