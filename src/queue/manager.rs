//! The queue manager: a task that owns the schedule. New messages arrive on
//! a channel, deferred ones wait in a time-ordered set; deliveries run on a
//! bounded set of workers. On start every unfinished message in the store
//! is scheduled again, so nothing acknowledged is forgotten.
//!
//! A message that is due but finds every worker busy waits as its id in a
//! FIFO, not as a spawned delivery task: a task per waiting message held
//! its whole delivery future (~9 KiB each), so a backlog (a sustained load
//! faster than delivery, or a large deferred queue coming due at once) grew
//! the server's memory with the queue: 200 MiB for 22,000 waiting messages
//! in one measurement. The queue lives on disk; memory holds what runs.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, error, info, info_span, warn};

use super::control::{self, Answer, Command, ControlError, Target};
use super::{QueuedMessage, RcptStatus, Route, Store, StoreError, dsn, now_secs};
use crate::config::{HookName, Settings};
use crate::delivery::remote::Outbound;
use crate::delivery::{Outcome, maildir};
use crate::observe::escape;
use crate::plugin::PluginHost;
use crate::plugin::bindings::wasmtp::plugin::types::DeliveryReport;

/// Handle used by sessions to hand over newly queued messages, and by the
/// admin endpoint to run queue commands.
#[derive(Clone)]
pub struct QueueManager {
    tx: mpsc::UnboundedSender<Msg>,
}

/// What the actor receives.
enum Msg {
    /// A message was just committed.
    Enqueued(String),
    /// An operator's command and where to answer.
    Control(Command, Reply),
}

type Reply = oneshot::Sender<Result<Answer, ControlError>>;

impl QueueManager {
    /// Starts the manager; it stops when `shutdown` turns true, after the
    /// deliveries in progress finish.
    pub fn start(
        store: Store,
        settings: Arc<Settings>,
        plugins: Arc<PluginHost>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(QueueManager, tokio::task::JoinHandle<()>), StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Only the schedule is kept, one envelope read at a time: a large
        // queue is not held in memory whole at start. Held messages are
        // parked: nothing schedules them until released.
        let (mut recovered, mut deferred) = (0, BTreeSet::new());
        store.for_each(|m| {
            recovered += 1;
            if !m.held {
                deferred.insert((m.next_attempt, m.id));
            }
            Ok(())
        })?;
        if recovered > 0 {
            info!(messages = recovered, "recovered queued messages");
        }
        let handle = QueueManager { tx };
        let outbound = Arc::new(Outbound::new(&settings, Some(&store.db())));
        let actor = Actor {
            queue: handle.clone(),
            store,
            outbound,
            settings,
            plugins,
            rx,
            deferred,
            shutdown,
            ready: VecDeque::new(),
            waiting: HashSet::new(),
            tasks: HashMap::new(),
            after_delivery: HashMap::new(),
        };
        Ok((handle, tokio::spawn(actor.run())))
    }

    /// Schedules a message that was just committed.
    pub fn enqueued(&self, id: String) {
        let _ = self.tx.send(Msg::Enqueued(id));
    }

    /// Runs an operator's command. A command that changes a message in
    /// delivery waits until that attempt is recorded.
    pub async fn control(&self, cmd: Command) -> Result<Answer, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Control(cmd, reply))
            .map_err(|_| ControlError::Stopped)?;
        answer.await.map_err(|_| ControlError::Stopped)?
    }

    /// True while the manager runs.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// A delivery task's result: the id and when to try again (None when the
/// message is finished or parked).
type Done = (String, Option<i64>);

struct Actor {
    /// Its own handle: DSNs are queued from delivery workers.
    queue: QueueManager,
    store: Store,
    outbound: Arc<Outbound>,
    settings: Arc<Settings>,
    plugins: Arc<PluginHost>,
    rx: mpsc::UnboundedReceiver<Msg>,
    deferred: BTreeSet<(i64, String)>,
    shutdown: watch::Receiver<bool>,
    /// Messages due now that wait for a free worker, oldest first, and
    /// whether each is a retry.
    ready: VecDeque<(String, bool)>,
    /// The ids in `ready`, so none waits twice.
    waiting: HashSet<String>,
    /// The message each running delivery task has (at most
    /// `queue.delivery_workers` of them).
    tasks: HashMap<tokio::task::Id, String>,
    /// Commands for messages in delivery, run when the attempt ends.
    after_delivery: HashMap<String, Vec<(Command, Reply)>>,
}

impl Actor {
    async fn run(mut self) {
        let mut running: JoinSet<Done> = JoinSet::new();
        loop {
            let next_due = self.deferred.first().map(|(t, _)| *t);
            let sleep = match next_due {
                Some(t) => Duration::from_secs((t - now_secs()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                Some(msg) = self.rx.recv() => match msg {
                    Msg::Enqueued(id) => self.schedule(&mut running, id, false),
                    Msg::Control(cmd, reply) => self.control(&mut running, cmd, reply).await,
                },
                _ = tokio::time::sleep(sleep), if next_due.is_some() => {
                    let now = now_secs();
                    while let Some((t, _)) = self.deferred.first() {
                        if *t > now { break; }
                        let (_, id) = self.deferred.pop_first().expect("non-empty");
                        self.schedule(&mut running, id, true);
                    }
                }
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let finished = match done {
                        Ok((task, done)) => {
                            self.tasks.remove(&task);
                            Some(done)
                        }
                        // A delivery that panicked: its message must not stay
                        // "in delivery" (no retry, commands waiting forever).
                        Err(e) => self.tasks.remove(&e.id()).map(|id| {
                            error!(queue_id = %id, error = %e, "delivery task failed; retrying in 60s");
                            (id, Some(now_secs() + 60))
                        }),
                    };
                    if let Some((id, next)) = finished {
                        if let Some(t) = next {
                            self.deferred.insert((t, id.clone()));
                        }
                        for (cmd, reply) in self.after_delivery.remove(&id).unwrap_or_default() {
                            self.control(&mut running, cmd, reply).await;
                        }
                    }
                    self.start_waiting(&mut running);
                }
                _ = self.shutdown.changed() => break,
            }
        }
        // Let deliveries in progress finish: their files are written and
        // their state recorded, so a restart has less to redo.
        while running.join_next().await.is_some() {}
    }

    /// True while a worker has message `id`.
    fn in_delivery(&self, id: &str) -> bool {
        self.tasks.values().any(|i| i == id)
    }

    /// Makes a message due now: it starts if a worker is free, else waits
    /// in `ready` for one.
    fn schedule(&mut self, running: &mut JoinSet<Done>, id: String, retry: bool) {
        if self.in_delivery(&id) || !self.waiting.insert(id.clone()) {
            // Already being delivered or waiting (a retry raced the schedule).
            return;
        }
        self.ready.push_back((id, retry));
        self.start_waiting(running);
    }

    /// Starts waiting messages while workers are free.
    fn start_waiting(&mut self, running: &mut JoinSet<Done>) {
        while running.len() < self.settings.queue.delivery_workers {
            let Some((id, retry)) = self.ready.pop_front() else {
                break;
            };
            self.waiting.remove(&id);
            self.spawn(running, id, retry);
        }
        crate::metrics::delivery_waiting(self.ready.len());
    }

    fn spawn(&mut self, running: &mut JoinSet<Done>, id: String, retry: bool) {
        let store = self.store.clone();
        let settings = self.settings.clone();
        let plugins = self.plugins.clone();
        let outbound = self.outbound.clone();
        let queue = self.queue.clone();
        let span = info_span!("delivery", queue_id = %id);
        let key = id.clone();
        let task = running.spawn(
            async move {
                let ctx = Ctx {
                    store: &store,
                    settings: &settings,
                    plugins: &plugins,
                    outbound: &outbound,
                    queue: &queue,
                };
                let started = std::time::Instant::now();
                let next = match deliver_message(&ctx, &id, retry).await {
                    Ok(next) => next,
                    Err(e) => {
                        error!(error = %e, "delivery failed; retrying in 60s");
                        Some(now_secs() + 60)
                    }
                };
                crate::metrics::delivery_attempt(started.elapsed(), retry);
                (id, next)
            }
            .instrument(span),
        );
        self.tasks.insert(task.id(), key);
    }

    /// Runs one operator command, or keeps it for when the message's
    /// delivery ends.
    async fn control(&mut self, running: &mut JoinSet<Done>, cmd: Command, reply: Reply) {
        let busy = match &cmd {
            Command::Hold(id)
            | Command::Release(id)
            | Command::Delete(id)
            | Command::Bounce(id) => self.in_delivery(id).then(|| id.clone()),
            Command::InDelivery | Command::Retry(_) => None,
        };
        if let Some(id) = busy {
            self.after_delivery
                .entry(id)
                .or_default()
                .push((cmd, reply));
            return;
        }
        let action = cmd.action();
        let result = self.apply(running, cmd).await;
        if let Ok(Answer::Done(ids)) = &result {
            crate::metrics::admin_action(action);
            for id in ids {
                info!(queue_id = %id, action, "queue command");
            }
        }
        let _ = reply.send(result);
    }

    async fn apply(
        &mut self,
        running: &mut JoinSet<Done>,
        cmd: Command,
    ) -> Result<Answer, ControlError> {
        let now = now_secs();
        match cmd {
            Command::InDelivery => Ok(Answer::InDelivery(self.tasks.values().cloned().collect())),
            Command::Retry(target) => {
                // Envelopes are read one at a time and only the ids kept:
                // `retry --all` on a large queue holds ids, not messages.
                let (mut named, mut due) = (Vec::new(), Vec::new());
                let mut take = |mut m: QueuedMessage| -> Result<(), StoreError> {
                    if m.held {
                        return Ok(());
                    }
                    if !self.in_delivery(&m.id) {
                        m.next_attempt = now;
                        self.store.put(&m)?;
                        due.push(m.id.clone());
                    }
                    named.push(m.id);
                    Ok(())
                };
                match &target {
                    Target::Id(id) => {
                        let m = self.get(id)?;
                        if m.held {
                            return Err(ControlError::Held(id.clone()));
                        }
                        take(m)?;
                    }
                    Target::All => self.store.for_each(take)?,
                    Target::Domain(d) => self.store.for_each(|m| {
                        if control::pending_domains(&m).any(|x| x.eq_ignore_ascii_case(d)) {
                            take(m)?;
                        }
                        Ok(())
                    })?,
                }
                // One pass over the schedule for all of them (one per
                // message made `retry --all` quadratic: 5.5 s for 30,000).
                let due_set: HashSet<&str> = due.iter().map(String::as_str).collect();
                self.unschedule_where(|id| due_set.contains(id));
                for id in due {
                    self.schedule(running, id, true);
                }
                Ok(Answer::Done(named))
            }
            Command::Hold(id) => {
                let mut m = self.get(&id)?;
                self.unschedule(&id);
                m.held = true;
                self.store.put(&m)?;
                self.store.flush().await?;
                Ok(Answer::Done(vec![id]))
            }
            Command::Release(id) => {
                let mut m = self.get(&id)?;
                m.held = false;
                m.next_attempt = now;
                self.store.put(&m)?;
                self.store.flush().await?;
                self.unschedule(&id);
                self.schedule(running, id.clone(), true);
                Ok(Answer::Done(vec![id]))
            }
            Command::Delete(id) => {
                self.get(&id)?;
                self.unschedule(&id);
                self.store.remove(&id).await?;
                self.store.flush().await?;
                Ok(Answer::Done(vec![id]))
            }
            Command::Bounce(id) => {
                let ctx = Ctx {
                    store: &self.store,
                    settings: &self.settings,
                    plugins: &self.plugins,
                    outbound: &self.outbound,
                    queue: &self.queue,
                };
                bounce_message(&ctx, self.get(&id)?).await?;
                self.unschedule(&id);
                Ok(Answer::Done(vec![id]))
            }
        }
    }

    fn get(&self, id: &str) -> Result<QueuedMessage, ControlError> {
        self.store
            .get(id)?
            .ok_or_else(|| ControlError::NoSuchMessage(id.to_string()))
    }

    /// Takes a message out of the retry schedule and out of the line for a
    /// worker.
    fn unschedule(&mut self, id: &str) {
        self.unschedule_where(|i| i == id);
    }

    /// `unschedule` for every message `gone` names, in one pass over each
    /// list.
    fn unschedule_where(&mut self, gone: impl Fn(&str) -> bool) {
        self.deferred.retain(|(_, i)| !gone(i));
        let waiting = self.waiting.len();
        self.waiting.retain(|i| !gone(i));
        if self.waiting.len() != waiting {
            self.ready.retain(|(i, _)| !gone(i));
            crate::metrics::delivery_waiting(self.ready.len());
        }
    }
}

/// `queue bounce`: every pending recipient fails with the administrator's
/// reason, the sender gets one failure DSN (as for any permanent failure,
/// NOTIFY honoured), the plugins hear of it, and the message is removed.
async fn bounce_message(ctx: &Ctx<'_>, mut msg: QueuedMessage) -> Result<(), StoreError> {
    let body = ctx.store.body(&msg.id)?.unwrap_or_default();
    let now = now_secs();
    let outcome = dsn::removed_by_operator();
    let outcomes: Vec<(usize, Outcome)> = (0..msg.recipients.len())
        .filter(|&i| msg.recipients[i].status == RcptStatus::Pending)
        .map(|i| (i, outcome.clone()))
        .collect();
    for (i, o) in &outcomes {
        msg.record(*i, o, now, false);
    }
    notify(ctx.plugins, &msg, &outcomes).await;
    send_dsns(ctx, &mut msg, &outcomes, &body, now).await?;
    ctx.store.remove(&msg.id).await?;
    ctx.store.flush().await
}

/// What one delivery attempt works with.
struct Ctx<'a> {
    store: &'a Store,
    settings: &'a Arc<Settings>,
    plugins: &'a Arc<PluginHost>,
    outbound: &'a Arc<Outbound>,
    queue: &'a QueueManager,
}

/// The RFC 3463 status of an outcome, for log lines.
fn outcome_status(o: &Outcome) -> &str {
    match o {
        Outcome::Delivered(_) => "2.0.0",
        Outcome::Temporary(f) | Outcome::Permanent(f) => &f.status,
    }
}

/// Tries every pending recipient once. Returns when to try again, or None
/// when the message is finished and removed (or held).
async fn deliver_message(ctx: &Ctx<'_>, id: &str, retry: bool) -> Result<Option<i64>, StoreError> {
    let Ctx {
        store,
        settings,
        plugins,
        outbound,
        ..
    } = *ctx;
    let Some(mut msg) = store.get(id)? else {
        return Ok(None);
    };
    if msg.held {
        return Ok(None);
    }
    let Some(body) = store.body(id)? else {
        error!("queued message has no readable message file; dropping its envelope");
        store.remove(id).await?;
        return Ok(None);
    };
    let (remote, local): (Vec<usize>, Vec<usize>) = (0..msg.recipients.len())
        .filter(|&i| msg.recipients[i].status == RcptStatus::Pending)
        .partition(|&i| msg.recipients[i].route.is_remote());
    let mut outcomes = if local.is_empty() {
        Vec::new()
    } else if let Some(lmtp) = &settings.local.lmtp {
        outbound.deliver_lmtp(lmtp, &msg, &local, &body).await
    } else {
        let msg = msg.clone();
        let settings = settings.clone();
        let body = body.clone();
        tokio::task::spawn_blocking(move || deliver_local(&settings, &msg, &local, &body, retry))
            .await?
    };
    let now = now_secs();
    let expired = now - msg.received_at > settings.queue.max_age.as_secs() as i64;
    // What may be written before the DSNs: the state as loaded plus remote
    // deliveries (local ones are idempotent, Maildir names are fixed).
    let mut durable = msg.clone();
    for (i, outcome) in &outcomes {
        msg.record(*i, outcome, now, expired);
    }
    if !remote.is_empty() {
        // Deliveries are written as each destination's transaction ends, so
        // a crash while another destination is slow does not send the
        // finished transactions again. Failures are written only after
        // their DSN (below), so a crash never loses a DSN.
        let snapshot = msg.clone();
        let mut record = |batch: Vec<(usize, Outcome)>| {
            let mut delivered = false;
            for (i, outcome) in &batch {
                msg.record(*i, outcome, now, expired);
                if matches!(outcome, Outcome::Delivered(_)) {
                    durable.record(*i, outcome, now, expired);
                    delivered = true;
                }
            }
            if delivered && let Err(e) = store.put(&durable) {
                error!(error = %e, "cannot record deliveries");
            }
            outcomes.extend(batch);
        };
        outbound
            .deliver(&snapshot, &remote, &body, &mut record)
            .await;
    }
    for (i, outcome) in &outcomes {
        let r = &msg.recipients[*i];
        // A temporary failure past queue.max_age bounces like a permanent one.
        match (outcome, &r.status) {
            (Outcome::Delivered(detail), _) => {
                crate::metrics::delivery(
                    "delivered",
                    r.route.kind(),
                    Duration::from_secs((now - msg.received_at).max(0) as u64),
                );
                info!(rcpt = %escape(&r.address), mailbox = %escape(&r.mailbox), detail = %escape(detail), "delivered")
            }
            (_, RcptStatus::Failed(reason)) => {
                crate::metrics::delivery("bounced", r.route.kind(), Duration::ZERO);
                error!(rcpt = %escape(&r.address), error = %escape(reason), status = %outcome_status(outcome), attempts = r.attempts, "bounced")
            }
            (Outcome::Temporary(e) | Outcome::Permanent(e), _) => {
                crate::metrics::delivery("deferred", r.route.kind(), Duration::ZERO);
                warn!(rcpt = %escape(&r.address), error = %e, status = %e.status, attempts = r.attempts, "deferred")
            }
        }
    }
    notify(plugins, &msg, &outcomes).await;
    // The DSN is on disk before the state that asked for it: a crash in
    // between repeats a DSN rather than losing it.
    send_dsns(ctx, &mut msg, &outcomes, &body, now).await?;
    if msg.is_final() {
        store.remove(id).await?;
        info!("message finished");
        return Ok(None);
    }
    let attempts = msg
        .recipients
        .iter()
        .map(|r| r.attempts)
        .max()
        .unwrap_or(1)
        .max(1) as usize;
    let intervals = &settings.queue.retry_intervals;
    let delay = intervals[(attempts - 1).min(intervals.len() - 1)];
    msg.next_attempt = now + delay.as_secs() as i64;
    store.put(&msg)?;
    Ok(Some(msg.next_attempt))
}

/// Queues the DSN this attempt calls for, if any (see `dsn::entries`): the
/// recipients that failed for good, local deliveries that asked for
/// SUCCESS, and once per message, after `queue.delay_warning`, the
/// recipients still pending.
async fn send_dsns(
    ctx: &Ctx<'_>,
    msg: &mut QueuedMessage,
    outcomes: &[(usize, Outcome)],
    body: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    let settings = ctx.settings;
    let delay_due = !msg.delay_dsn_sent
        && !msg.is_final()
        && settings
            .queue
            .delay_warning
            .is_some_and(|d| now - msg.received_at >= d.as_secs() as i64);
    let entries = dsn::entries(msg, outcomes, delay_due);
    if delay_due {
        msg.delay_dsn_sent = true;
    }
    if entries.is_empty() {
        return Ok(());
    }
    let Some(mut envelope) = dsn::envelope(settings, msg) else {
        warn!(sender = %escape(&msg.return_path()), "dsn not sent: the sender is one of our domains but has no mailbox");
        return Ok(());
    };
    let report = dsn::Report {
        hostname: &settings.hostname,
        msg,
        body,
        entries: &entries,
        now,
        retry_until: msg.received_at + settings.queue.max_age.as_secs() as i64,
        max_return: settings.limits.max_message_size,
    };
    let text = report.render(&envelope.id);
    envelope.size = text.len() as u64;
    ctx.store.commit(&envelope, &text).await?;
    ctx.queue.enqueued(envelope.id.clone());
    crate::metrics::dsn_sent(report.kind().as_str());
    info!(
        kind = report.kind().as_str(),
        orig_queue_id = %msg.id,
        dsn_queue_id = %envelope.id,
        rcpts = entries.len(),
        "dsn sent"
    );
    Ok(())
}

/// Delivers each pending local recipient once. Recipients that resolve to
/// the same local mailbox (`alice+a@`, `Alice@`, `alice@`) share one copy:
/// the first delivery decides the outcome of all of them, so their
/// per-recipient status stays consistent. Every copy is written first and
/// then made durable with one sync per file system (a copy counts as
/// delivered only after it).
fn deliver_local(
    settings: &Settings,
    msg: &QueuedMessage,
    pending: &[usize],
    body: &[u8],
    retry: bool,
) -> Vec<(usize, Outcome)> {
    let mut copies: HashMap<&str, Outcome> = HashMap::new();
    let mut unsynced: Vec<(&str, crate::syncfs::Group, std::path::PathBuf)> = Vec::new();
    for &i in pending {
        let mailbox = msg.recipients[i].mailbox.as_str();
        if copies.contains_key(mailbox) {
            continue;
        }
        let outcome = match write_copy(settings, msg, i, body, retry) {
            Ok(Some((group, dir))) => {
                unsynced.push((mailbox, group, dir));
                Outcome::Delivered(format!("mailbox {mailbox}"))
            }
            Ok(None) => Outcome::Delivered(format!("mailbox {mailbox}")),
            Err(outcome) => outcome,
        };
        copies.insert(mailbox, outcome);
    }
    // One sync per file system for every copy written above.
    let mut synced: Vec<(crate::syncfs::Group, Option<(std::io::ErrorKind, String)>)> = Vec::new();
    for (mailbox, group, dir) in &unsynced {
        let failed = match synced.iter().find(|(g, _)| Arc::ptr_eq(g, group)) {
            Some((_, failed)) => failed.clone(),
            None => {
                let failed = maildir::sync(group, dir)
                    .err()
                    .map(|e| (e.source.kind(), e.source.to_string()));
                synced.push((group.clone(), failed.clone()));
                failed
            }
        };
        if let Some((kind, text)) = failed {
            let e = maildir::MaildirError {
                step: "syncing",
                path: dir.join("new"),
                source: std::io::Error::new(kind, text),
            };
            copies.insert(mailbox, copy_failed(e));
        }
    }
    pending
        .iter()
        .map(|&i| (i, copies[msg.recipients[i].mailbox.as_str()].clone()))
        .collect()
}

/// Writes the one copy of `msg` for recipient `i`'s mailbox. Ok(Some) is
/// a copy written and not yet durable: its file system's sync group and
/// its maildir; Ok(None) a copy delivered before; Err the outcome of a
/// copy that could not be written.
fn write_copy(
    settings: &Settings,
    msg: &QueuedMessage,
    i: usize,
    body: &[u8],
    retry: bool,
) -> Result<Option<(crate::syncfs::Group, std::path::PathBuf)>, Outcome> {
    let r = &msg.recipients[i];
    if !maildir::is_safe_mailbox(&r.mailbox) {
        return Err(Outcome::permanent(
            "5.1.3",
            format!("invalid mailbox name {:?}", r.mailbox),
        ));
    }
    let mut same_mailbox = msg
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, o)| o.route == Route::Local && o.mailbox == r.mailbox);
    // An envelope from before copies were shared may have one already.
    if same_mailbox
        .clone()
        .any(|(_, o)| matches!(o.status, RcptStatus::Delivered(_)))
    {
        return Ok(None);
    }
    // Named after the mailbox's first recipient, so a retry after a crash
    // finds the copy whichever recipient is pending then.
    let first = same_mailbox.next().map_or(i, |(j, _)| j);
    let prefix = format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        msg.return_path(),
        r.address
    );
    let copy = maildir::MaildirCopy {
        dir: settings.local.mail_dir.join(&r.mailbox),
        name: maildir::file_name(msg.received_at, &msg.id, first, &settings.hostname),
        prefix: prefix.as_bytes(),
        body,
        line_endings: settings.local.line_endings,
        check_existing: retry,
    };
    match maildir::write(&copy) {
        Ok((_, group)) => Ok(Some((group, copy.dir))),
        Err(e) => Err(copy_failed(e)),
    }
}

/// The outcome of a copy that could not be written or synced.
fn copy_failed(e: maildir::MaildirError) -> Outcome {
    if Outcome::is_environment(&e.source) {
        // The path's client part, the mailbox, passed is_safe_mailbox.
        error!(
            path = %e.path.display(),
            error = %e.source,
            "mail store not writable; delivery deferred until it is fixed"
        );
    }
    let context = format!("maildir delivery: {} {}", e.step, e.path.display());
    Outcome::from_io(&context, &e.source)
}

/// Tells the plugins on delivered/deferred/bounced what happened.
async fn notify(plugins: &Arc<PluginHost>, msg: &QueuedMessage, outcomes: &[(usize, Outcome)]) {
    let set = plugins.current();
    let wanted = [HookName::Delivered, HookName::Deferred, HookName::Bounced];
    if !wanted.iter().any(|h| set.wants(*h)) {
        return;
    }
    let mut session =
        crate::plugin::PluginSession::new(plugins.clone(), format!("queue-{}", msg.id));
    for (i, outcome) in outcomes {
        let r = &msg.recipients[*i];
        let (hook, detail) = match (outcome, &r.status) {
            (Outcome::Delivered(detail), _) => {
                (HookName::Delivered, format!("delivered to {detail}"))
            }
            (_, RcptStatus::Failed(e)) => (HookName::Bounced, e.clone()),
            (Outcome::Temporary(e), _) | (Outcome::Permanent(e), _) => {
                (HookName::Deferred, e.text.clone())
            }
        };
        let report = DeliveryReport {
            queue_id: msg.id.clone(),
            sender: msg.return_path(),
            recipient: r.address.clone(),
            attempts: r.attempts,
            detail,
        };
        session.notify(hook, &report).await;
    }
}
