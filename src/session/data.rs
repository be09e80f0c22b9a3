//! DATA and BDAT: read the message, check it, queue it durably, answer.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{Instrument, error, info, info_span};

use super::Session;
use super::io::Stop;
use crate::queue::{QueuedMessage, QueuedRcpt, RcptStatus, new_queue_id, now_secs};
use crate::smtp::{DataDecoder, DataError, Reply};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// The reply that refuses DATA/BDAT in the current state, if any.
    fn data_sequence_error(&self) -> Option<Reply> {
        match &self.tx {
            None => Some(Reply::bad_sequence("Need MAIL command")),
            Some(tx) if tx.recipients.is_empty() => Some(Reply::no_valid_recipients()),
            _ => None,
        }
    }

    pub(super) async fn data(&mut self) -> Result<Reply, Stop> {
        if let Some(r) = self.data_sequence_error() {
            return Ok(r);
        }
        if self.tx.as_ref().is_some_and(|t| t.chunks.is_some()) {
            return Ok(Reply::bad_sequence("DATA not allowed during BDAT transfer"));
        }
        self.conn.reply(&Reply::start_data());
        let limits = &self.ctx.settings.limits;
        let mut decoder = DataDecoder::new(limits.text_line_length, limits.max_message_size);
        let mut body = Vec::with_capacity(8 * 1024);
        let timeout = self.ctx.settings.timeouts.data;
        self.conn
            .read_data(&mut decoder, &mut body, timeout)
            .await?;
        let refused = match decoder.finish() {
            Ok(()) => None,
            Err(DataError::BareLineEnding) => Some(Reply::bare_line_ending_in_data()),
            Err(DataError::TooBig) => Some(Reply::too_big(limits.max_message_size)),
            Err(DataError::LineTooLong) => Some(Reply::data_line_too_long(limits.text_line_length)),
        };
        if let Some(r) = refused {
            self.end_tx();
            return Ok(r);
        }
        let tx = self.tx.take().expect("transaction checked above");
        Ok(self.queue_message(tx, body).await)
    }

    pub(super) async fn bdat(&mut self, size: u64, last: bool) -> Result<Reply, Stop> {
        let timeout = self.ctx.settings.timeouts.data;
        let max = self.ctx.settings.limits.max_message_size;
        // The chunk is read whatever the verdict, so the next command is
        // found where the client put it.
        let refusal = self.data_sequence_error();
        let Some(tx) = self.tx.as_mut().filter(|_| refusal.is_none()) else {
            self.conn.read_chunk(size, None, timeout).await?;
            return Ok(refusal.unwrap_or_else(|| Reply::bad_sequence("Need MAIL command")));
        };
        let chunks = tx.chunks.get_or_insert_with(Vec::new);
        let total = chunks.len() as u64 + size;
        if total > max || tx.chunks_too_big {
            tx.chunks_too_big = true;
            chunks.clear();
            self.conn.read_chunk(size, None, timeout).await?;
        } else {
            self.conn.read_chunk(size, Some(chunks), timeout).await?;
        }
        if !last {
            return Ok(Reply::chunk_ok(size as usize));
        }
        let mut tx = self.tx.take().expect("transaction checked above");
        if tx.chunks_too_big {
            self.end_tx();
            return Ok(Reply::too_big(max));
        }
        let data = tx.chunks.take().unwrap_or_default();
        Ok(self.queue_message(tx, data).await)
    }

    /// Writes the message to the queue and answers 250 only once it is on
    /// disk.
    async fn queue_message(&mut self, tx: super::Transaction, data: Vec<u8>) -> Reply {
        let reply = self.queue_checked(tx, data).await;
        self.end_tx();
        reply
    }

    /// Runs the data-time plugins, then queues.
    async fn queue_checked(&mut self, tx: super::Transaction, data: Vec<u8>) -> Reply {
        let (tx, data) = match self.data_hooks(tx, data).await {
            Ok(x) => x,
            Err(reply) => return reply,
        };
        let id = new_queue_id();
        let received = self.received_header(&id, &tx);
        let mut body = Vec::with_capacity(received.len() + data.len());
        body.extend_from_slice(received.as_bytes());
        body.extend_from_slice(&data);
        drop(data);
        let now = now_secs();
        let msg = QueuedMessage {
            id: id.clone(),
            received_at: now,
            sender: tx.sender,
            recipients: tx
                .recipients
                .into_iter()
                .map(|r| QueuedRcpt {
                    address: r.address,
                    mailbox: r.mailbox,
                    route: r.route,
                    status: RcptStatus::Pending,
                    attempts: 0,
                    last_error: None,
                })
                .collect(),
            size: body.len() as u64,
            next_attempt: now,
        };
        let span = info_span!("message", queue_id = %id);
        async {
            match self.ctx.store.commit(&msg, &body).await {
                Ok(()) => {
                    info!(
                        size = msg.size,
                        from = %msg.return_path(),
                        nrcpt = msg.recipients.len(),
                        "message accepted"
                    );
                    self.ctx.queue.enqueued(id.clone());
                    Reply::queued(&id)
                }
                Err(e) => {
                    error!(error = %e, "cannot queue message");
                    Reply::local_error()
                }
            }
        }
        .instrument(span)
        .await
    }

    fn received_header(&self, id: &str, tx: &super::Transaction) -> String {
        let helo = self.helo.as_ref();
        let proto = match (helo.is_some_and(|h| h.esmtp), tx.params.smtputf8) {
            (_, true) => "UTF8SMTP",
            (true, false) => "ESMTP",
            (false, false) => "SMTP",
        };
        let (proto, comments) = self.received_with(proto);
        let for_clause = match tx.recipients.as_slice() {
            [one] => format!("\r\n\tfor <{}>", one.address),
            _ => String::new(),
        };
        format!(
            "Received: from {} ([{}])\r\n\tby {} (wasmtp){comments} with {proto} id {id}{for_clause};\r\n\t{}\r\n",
            helo.map_or("unknown", |h| h.name.as_str()),
            self.info.peer.ip(),
            self.ctx.settings.hostname,
            chrono::Utc::now().to_rfc2822(),
        )
    }
}
