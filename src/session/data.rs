//! DATA and BDAT: read the message, check it, queue it durably, answer.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{Instrument, error, info, info_span};

use super::Session;
use super::body::{Body, BodyError, BodyReader};
use super::io::{Discard, Stop};
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
        if self.tx.as_ref().is_some_and(|t| t.body.is_some()) {
            return Ok(Reply::bad_sequence("DATA not allowed during BDAT transfer"));
        }
        self.conn.reply(&Reply::start_data());
        let limits = &self.ctx.settings.limits;
        let decoder = DataDecoder::new(limits.text_line_length, limits.max_message_size);
        let mut reader = self.body_reader(decoder);
        let timeout = self.ctx.settings.timeouts.data;
        self.conn.read_data(&mut reader, timeout).await?;
        self.received(reader).await
    }

    pub(super) async fn bdat(&mut self, size: u64, last: bool) -> Result<Reply, Stop> {
        let timeout = self.ctx.settings.timeouts.data;
        let max = self.ctx.settings.limits.max_message_size;
        if size > max {
            // A chunk over the whole limit would have to be read to find
            // the next command, for as long as the client likes to send:
            // refuse it and close instead.
            crate::observe::limit_hit("limits.max_message_size", &format!("BDAT {size}"));
            self.end_tx();
            self.closing = true;
            return Ok(Reply::too_big(max));
        }
        // A refused chunk is still read, so the next command is found where
        // the client put it.
        if let Some(refusal) = self.data_sequence_error() {
            self.conn.read_chunk(size, &mut Discard, timeout).await?;
            return Ok(refusal);
        }
        if self.tx.as_ref().is_some_and(|t| t.body.is_none()) {
            let limits = &self.ctx.settings.limits;
            let decoder = DataDecoder::chunked(limits.text_line_length, max);
            let reader = self.body_reader(decoder);
            self.tx.as_mut().expect("checked above").body = Some(reader);
        }
        let tx = self.tx.as_mut().expect("transaction checked above");
        let reader = tx.body.as_mut().expect("set above");
        if reader.size().saturating_add(size) > max {
            crate::observe::limit_hit(
                "limits.max_message_size",
                &format!("BDAT total {}", reader.size().saturating_add(size)),
            );
            self.conn.read_chunk(size, &mut Discard, timeout).await?;
            self.end_tx();
            return Ok(Reply::too_big(max));
        }
        reader.reserve(size);
        self.conn.read_chunk(size, reader, timeout).await?;
        if !last {
            return Ok(Reply::chunk_ok(size));
        }
        let mut reader = self
            .tx
            .as_mut()
            .and_then(|t| t.body.take())
            .expect("set above");
        reader.end_chunks();
        self.received(reader).await
    }

    /// A reader for this transaction's message, which starts with our
    /// Received header (so the message is never copied to prepend it).
    fn body_reader(&mut self, decoder: DataDecoder) -> BodyReader {
        let tx = self.tx.as_mut().expect("only called in a transaction");
        let id = tx.id.get_or_insert_with(new_queue_id).clone();
        let received = self.received_header(&id, self.tx.as_ref().expect("checked"));
        BodyReader::new(decoder, received.as_bytes(), &self.ctx.budget)
    }

    /// The end of DATA or of the last BDAT chunk: refuse or queue.
    async fn received(&mut self, reader: BodyReader) -> Result<Reply, Stop> {
        let limits = &self.ctx.settings.limits;
        let body = match reader.finish() {
            Ok(body) => body,
            Err(e) => {
                let (reply, reason) = match e {
                    BodyError::Refused(DataError::BareLineEnding) => {
                        (Reply::bare_line_ending_in_data(), "bare_line_ending")
                    }
                    BodyError::Refused(DataError::TooBig) => {
                        (Reply::too_big(limits.max_message_size), "too_big")
                    }
                    BodyError::Refused(DataError::LineTooLong) => (
                        Reply::data_line_too_long(limits.text_line_length),
                        "line_too_long",
                    ),
                    BodyError::OverBudget => (Reply::insufficient_storage(), "over_budget"),
                };
                crate::metrics::message_refused(&self.info.listener, reason);
                self.end_tx();
                return Ok(reply);
            }
        };
        let tx = self.tx.take().expect("transaction checked above");
        let Body { bytes, held } = body;
        let reply = self.queue_message(tx, bytes).await;
        drop(held);
        Ok(reply)
    }

    /// Writes the message to the queue and answers 250 only once it is on
    /// disk.
    async fn queue_message(&mut self, tx: super::Transaction, data: Vec<u8>) -> Reply {
        let reply = self.queue_checked(tx, data).await;
        self.end_tx();
        reply
    }

    /// Verifies, runs the data-time plugins, signs or seals, then queues.
    async fn queue_checked(&mut self, mut tx: super::Transaction, data: Vec<u8>) -> Reply {
        let (data, verified) = self.authenticate(&mut tx, data).await;
        let (tx, data) = match self.data_hooks(tx, data).await {
            Ok(x) => x,
            Err(reply) => {
                crate::metrics::message_refused(&self.info.listener, "plugin");
                return reply;
            }
        };
        let data = self.dkim_sign(data);
        let data = self.arc_seal(data, verified.as_ref());
        let id = tx.id.clone().unwrap_or_else(new_queue_id);
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
                    failure: None,
                    notify: r.params.notify,
                    orcpt: r.params.orcpt,
                })
                .collect(),
            size: data.len() as u64,
            next_attempt: now,
            ret: tx.params.ret,
            envid: tx.params.envid,
            delay_dsn_sent: false,
            held: false,
        };
        let span = info_span!("message", queue_id = %id);
        async {
            match self.ctx.store.commit(&msg, &data).await {
                Ok(()) => {
                    crate::metrics::message_accepted(&self.info.listener, msg.size);
                    info!(
                        size = msg.size,
                        from = %crate::observe::escape(&msg.return_path()),
                        nrcpt = msg.recipients.len(),
                        "message accepted"
                    );
                    self.ctx.queue.enqueued(id.clone());
                    self.junk = 0;
                    Reply::queued(&id)
                }
                Err(e) => {
                    crate::metrics::message_refused(&self.info.listener, "queue_error");
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
