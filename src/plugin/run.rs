//! Calling plugins for one SMTP session.
//!
//! Each plugin gets a fresh instance the first time a hook needs it, and
//! every instance is dropped at the next transaction boundary (EHLO, RSET,
//! end of DATA, end of session) and whenever a call fails: no state leaks
//! between messages, and a trapped instance never runs again. Fresh
//! instances come from the pooling allocator (copy-on-write memory images,
//! no mmap/munmap per transaction), or on demand when the pool is full.
//! A plugin configured with `reuse = N` (or whose manifest says it is
//! stateless: `plugin_limits.stateless_reuse` transactions) instead hands
//! its instance back at the boundary to a warm list, so the next
//! transaction (of any session) skips instantiation and `init`; it is
//! dropped after N transactions, and after any failed call as before. Every call has a
//! deadline (epoch interruption makes the guest yield to tokio every tick;
//! `tokio::time::timeout` cuts it off) and a memory cap. Plugins run in
//! configured order; the first decisive verdict wins.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{debug, info, warn};
use wasmtime::Store;

use super::bindings::wasmtp::plugin::types as wit;
use super::contract::{self, Guest};
use super::host::{HostState, Notes, escape_long};
use super::message::{MessageData, MessageRes};
use super::{LoadedPlugin, PluginHost, PluginSet};
use crate::config::{HookName, OnError};
use crate::observe::{escape, limit_hit};
use crate::smtp::Reply;

/// What the plugins decided at a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody objected; the core's own answer stands.
    Continue,
    /// Accepted; later plugins were skipped. A reply replaces the default.
    Accept(Option<Reply>),
    /// Refused with this reply (5xx).
    Reject(Reply),
    /// Refused for now with this reply (4xx).
    Tempfail(Reply),
    /// Answer and close the connection; None means the default 421.
    Disconnect(Option<Reply>),
    /// Accept but drop (data) or silently skip (rcpt).
    Discard,
    /// Accept into quarantine, with a reason.
    Quarantine(String),
}

/// A modification a plugin asked for, checked and normalized.
pub type Modification = wit::Modification;
/// A per-recipient route from the deliver hook.
pub type Route = wit::Route;

/// Read-only view of the transaction that hooks receive.
pub struct TxView<'a> {
    /// Connection facts.
    pub conn: &'a wit::Connection,
    /// Envelope so far.
    pub env: &'a wit::Envelope,
}

/// A live instance with its store.
pub(crate) struct Live {
    store: Store<HostState>,
    plugin: Guest,
    /// Transactions it has finished (counts towards `reuse`).
    uses: u32,
}

enum Call<'a> {
    Connect(&'a wit::Connection),
    Ehlo(&'a wit::Connection, &'a str),
    MailFrom(
        &'a wit::Connection,
        &'a str,
        &'a Vec<(String, Option<String>)>,
    ),
    Rcpt(&'a wit::Connection, &'a wit::Envelope, &'a wit::Recipient),
    Data(&'a wit::Connection, &'a wit::Envelope, &'a Arc<MessageData>),
    Deliver(&'a wit::Connection, &'a wit::Envelope),
    Notify(HookName, &'a wit::DeliveryReport),
}

enum Ret {
    Verdict(wit::Verdict),
    Outcome(wit::Outcome),
    Routes(Vec<wit::Route>),
    Notified,
}

/// Why a call failed.
enum CallError {
    Trap(String),
    Timeout,
}

/// The plugins of one session.
pub struct PluginSession {
    host: Arc<PluginHost>,
    set: Arc<PluginSet>,
    live: Vec<Option<Live>>,
    notes: Arc<Mutex<Notes>>,
    session_id: String,
    /// A quarantine verdict given at `rcpt`: the whole message goes to
    /// quarantine, as if the data hook had said so.
    quarantine: Option<String>,
    /// Plugins whose standby this session took from or made its own
    /// instance for, while top-ups wait for [`PluginSession::top_up`].
    owed: Option<Vec<Arc<LoadedPlugin>>>,
}

impl PluginSession {
    /// Starts with the plugin set that is current now; it is kept for the
    /// whole session even if a reload swaps in another.
    pub fn new(host: Arc<PluginHost>, session_id: String) -> PluginSession {
        let set = host.current();
        let live = set.plugins.iter().map(|_| None).collect();
        let notes = Arc::new(Mutex::new(Notes::new(&host.shared().limits)));
        PluginSession {
            host,
            set,
            live,
            notes,
            session_id,
            quarantine: None,
            owed: None,
        }
    }

    /// Holds standby top-ups until [`PluginSession::top_up`] instead of
    /// asking right after each call. An SMTP session does this and tops up
    /// once its reply is written: the standby maker, woken at the end of
    /// the call, took this session's CPU before the reply went out
    /// (measured: one MAIL FROM in three waited 0.7-1.0 ms more, the worker
    /// preempted by the maker).
    pub fn hold_top_ups(&mut self) {
        self.owed.get_or_insert_with(Vec::new);
    }

    /// True if a top-up is being held.
    pub fn owes_top_up(&self) -> bool {
        self.owed.as_ref().is_some_and(|o| !o.is_empty())
    }

    /// Asks for the standby instances held back since the last time.
    pub fn top_up(&mut self) {
        for p in self.owed.iter_mut().flat_map(|o| o.drain(..)) {
            self.host.want_standby(&p);
        }
    }

    /// The generation of the set this session uses.
    pub fn generation(&self) -> u64 {
        self.set.generation
    }

    /// True if some plugin runs on `hook`.
    pub fn wants(&self, hook: HookName) -> bool {
        self.set.wants(hook)
    }

    /// Read access to the notes (for logs and tests of the core).
    pub fn note(&self, key: &str) -> Option<String> {
        self.notes.lock().expect("notes lock").get(key).cloned()
    }

    /// A transaction starts (MAIL accepted).
    pub fn begin_tx(&mut self) {
        self.notes.lock().expect("notes lock").begin_tx();
    }

    /// A transaction boundary: instances, transaction notes and a pending
    /// quarantine go.
    pub fn end_tx(&mut self) {
        self.notes.lock().expect("notes lock").end_tx();
        self.quarantine = None;
        self.release();
    }

    /// Drops every live instance, or hands it to its plugin's warm list
    /// when the plugin has `reuse` left for it.
    fn release(&mut self) {
        for (slot, p) in self.live.iter_mut().zip(&self.set.plugins) {
            let Some(mut live) = slot.take() else {
                continue;
            };
            live.uses += 1;
            if live.uses < p.spec.reuse {
                p.warm.lock().expect("warm lock").push(live);
            }
        }
    }

    /// connect hook.
    pub async fn connect(&mut self, conn: &wit::Connection) -> Decision {
        self.run(HookName::Connect, &Call::Connect(conn)).await.0
    }

    /// ehlo hook.
    pub async fn ehlo(&mut self, conn: &wit::Connection, name: &str) -> Decision {
        self.run(HookName::Ehlo, &Call::Ehlo(conn, name)).await.0
    }

    /// mail-from hook. The transaction starts before it runs, so notes it
    /// sets end with the transaction (the caller ends it on a refusal).
    pub async fn mail_from(
        &mut self,
        conn: &wit::Connection,
        sender: &str,
        params: &Vec<(String, Option<String>)>,
    ) -> (Decision, Vec<Modification>) {
        self.begin_tx();
        self.run(HookName::MailFrom, &Call::MailFrom(conn, sender, params))
            .await
    }

    /// rcpt hook. A quarantine verdict is kept for the message (see
    /// [`PluginSession::take_quarantine`]) and the recipient is accepted.
    pub async fn rcpt(
        &mut self,
        tx: TxView<'_>,
        rcpt: &wit::Recipient,
    ) -> (Decision, Vec<Modification>) {
        let (decision, mods) = self
            .run(HookName::Rcpt, &Call::Rcpt(tx.conn, tx.env, rcpt))
            .await;
        match decision {
            Decision::Quarantine(reason) => {
                self.quarantine.get_or_insert(reason);
                (Decision::Continue, mods)
            }
            d => (d, mods),
        }
    }

    /// The quarantine reason a plugin gave at `rcpt` in this transaction.
    pub fn take_quarantine(&mut self) -> Option<String> {
        self.quarantine.take()
    }

    /// data hook.
    pub async fn data(
        &mut self,
        tx: TxView<'_>,
        msg: &Arc<MessageData>,
    ) -> (Decision, Vec<Modification>) {
        self.run(HookName::Data, &Call::Data(tx.conn, tx.env, msg))
            .await
    }

    /// deliver hook: one route per recipient; for each recipient the first
    /// plugin (in order) with a route other than `default` decides.
    pub async fn deliver(&mut self, tx: TxView<'_>) -> Vec<Route> {
        let n = tx.env.recipients.len();
        let mut routes = vec![wit::Route::Default; n];
        for i in 0..self.set.plugins.len() {
            let p = self.set.plugins[i].clone();
            if !p.spec.hooks.contains(&HookName::Deliver) {
                continue;
            }
            if let Ok(Ret::Routes(r)) = self
                .call_one(i, &p, HookName::Deliver, &Call::Deliver(tx.conn, tx.env))
                .await
            {
                for (slot, route) in routes.iter_mut().zip(r) {
                    if matches!(slot, wit::Route::Default) {
                        *slot = route;
                    }
                }
            }
        }
        routes
    }

    /// A notification hook (delivered, deferred, bounced): every plugin on
    /// it sees the report; nothing it answers changes the outcome.
    pub async fn notify(&mut self, hook: HookName, report: &wit::DeliveryReport) {
        for i in 0..self.set.plugins.len() {
            let p = self.set.plugins[i].clone();
            if p.spec.hooks.contains(&hook) {
                let _ = self
                    .call_one(i, &p, hook, &Call::Notify(hook, report))
                    .await;
            }
        }
    }

    /// Runs `hook` through the plugins in order until one is decisive.
    async fn run(&mut self, hook: HookName, call: &Call<'_>) -> (Decision, Vec<Modification>) {
        let mut mods = Vec::new();
        for i in 0..self.set.plugins.len() {
            let p = self.set.plugins[i].clone();
            if !p.spec.hooks.contains(&hook) {
                continue;
            }
            let max_mods = self.host.shared().limits.max_modifications;
            let (verdict, m) = match self.call_one(i, &p, hook, call).await {
                Ok(Ret::Verdict(v)) => (v, Vec::new()),
                Ok(Ret::Outcome(o)) if o.modifications.len() > max_mods => {
                    // Applying a prefix could apply half of a change: the
                    // call counts as failed.
                    limit_hit(
                        "plugin_limits.max_modifications",
                        &format!(
                            "plugin {} returned {} modifications at {}",
                            p.spec.name,
                            o.modifications.len(),
                            hook.as_str()
                        ),
                    );
                    self.live[i] = None;
                    match on_error(p.spec.on_error) {
                        Some(d) => return (d, mods),
                        None => continue,
                    }
                }
                Ok(Ret::Outcome(o)) => (o.verdict, o.modifications),
                Ok(Ret::Routes(_) | Ret::Notified) => continue,
                Err(()) => match on_error(p.spec.on_error) {
                    Some(d) => return (d, mods),
                    None => continue,
                },
            };
            mods.extend(m);
            let decision = decide(hook, verdict, &p.spec.name);
            if decision != Decision::Continue {
                return (decision, mods);
            }
        }
        (Decision::Continue, mods)
    }

    /// One call into one plugin, with instance management, deadline,
    /// counters and a log event. Err means on_error applies.
    async fn call_one(
        &mut self,
        i: usize,
        p: &Arc<LoadedPlugin>,
        hook: HookName,
        call: &Call<'_>,
    ) -> Result<Ret, ()> {
        let started = Instant::now();
        let deadline = p.spec.timeout(hook);
        p.stats.calls.fetch_add(1, Ordering::Relaxed);
        let result = match tokio::time::timeout(deadline, self.invoke(i, p, call)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError::Timeout),
        };
        let micros = started.elapsed().as_micros() as u64;
        p.stats.record_latency(micros);
        let plugin = p.spec.name.as_str();
        let hook_name = hook.as_str();
        // A failed instantiation carries its output in the error instead.
        let output = self.live[i]
            .as_mut()
            .and_then(|l| l.store.data_mut().take_output());
        match &result {
            Ok(ret) => {
                let verdict = ret.kind();
                if let Some(i) = ret.verdict() {
                    p.stats.verdicts[i].fetch_add(1, Ordering::Relaxed);
                }
                if let Some(output) = &output {
                    info!(plugin, hook = hook_name, output = %escape_long(output), "plugin wrote to stdout/stderr");
                }
                p.stats.metrics.call(plugin, hook_name, verdict, micros);
                if matches!(verdict, "continue" | "routes" | "notified") {
                    debug!(plugin, hook = hook_name, verdict, micros, "plugin call");
                } else {
                    info!(plugin, hook = hook_name, verdict, micros, "plugin call");
                }
            }
            Err(CallError::Timeout) => {
                p.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                p.stats.metrics.call(plugin, hook_name, "timeout", micros);
                warn!(plugin, hook = hook_name, micros, on_error = ?p.spec.on_error, output = %output.as_deref().map(escape_long).unwrap_or_default(), "plugin call timed out; instance dropped");
            }
            Err(CallError::Trap(e)) => {
                p.stats.traps.fetch_add(1, Ordering::Relaxed);
                p.stats.metrics.call(plugin, hook_name, "trap", micros);
                warn!(plugin, hook = hook_name, micros, on_error = ?p.spec.on_error, error = %escape_long(&with_output(e, output.as_deref())), "plugin trapped; instance dropped");
            }
        }
        if result.is_err() {
            self.live[i] = None;
        }
        result.map_err(|_| ())
    }

    /// Runs `call` in the plugin's live instance (a new one if it has
    /// none). The instance is out of its slot during the call, so a call
    /// cut off at its deadline drops it with the future.
    async fn invoke(
        &mut self,
        i: usize,
        p: &Arc<LoadedPlugin>,
        call: &Call<'_>,
    ) -> Result<Ret, CallError> {
        let (mut live, new) = match self.live[i].take() {
            Some(live) => (live, false),
            None => {
                let live = instantiate(
                    self.host.clone(),
                    self.notes.clone(),
                    p.clone(),
                    self.session_id.clone(),
                )
                .await?;
                (live, true)
            }
        };
        let ret = Self::call_live(&mut live, call).await;
        self.live[i] = Some(live);
        if new {
            // The standby is topped up after the call, not while it runs:
            // making an instance maps memory, and the call's page faults
            // would wait for it (measured: the MAIL round trip of a Python
            // plugin 1.6 ms when the making overlapped its call).
            match &mut self.owed {
                Some(owed) if p.standby.target > 0 => {
                    if !owed.iter().any(|q| Arc::ptr_eq(q, p)) {
                        owed.push(p.clone());
                    }
                }
                Some(_) => {}
                None => self.host.want_standby(p),
            }
        }
        ret
    }

    async fn call_live(live: &mut Live, call: &Call<'_>) -> Result<Ret, CallError> {
        live.store.data_mut().take_output();
        // The guest yields to tokio one tick after the call starts, not one
        // tick after its instance was made or last yielded: a warm instance
        // with a stale deadline yielded on its first entry after every
        // tick, and the pending call then armed its tokio timeout, whose
        // new timer woke the parked worker (an eventfd write and a context
        // switch; 1.4 per message with the three plugins at 1 KiB).
        live.store.set_epoch_deadline(1);
        let trap = |e: wasmtime::Error| CallError::Trap(format!("{e:#}"));
        let store = &mut live.store;
        let hooks = match &live.plugin {
            Guest::V0_2(p) => p,
            Guest::V0_1(p) => return Self::call_v010(p, store, call).await.map_err(trap),
        };
        Ok(match call {
            Call::Connect(c) => Ret::Verdict(hooks.connect(store, c).await.map_err(trap)?.0),
            Call::Ehlo(c, n) => Ret::Verdict(hooks.ehlo(store, c, n).await.map_err(trap)?.0),
            Call::MailFrom(c, s, params) => {
                Ret::Outcome(hooks.mail_from(store, c, s, params).await.map_err(trap)?.0)
            }
            Call::Rcpt(c, env, r) => {
                Ret::Outcome(hooks.rcpt(store, c, env, r).await.map_err(trap)?.0)
            }
            Call::Data(c, env, msg) => {
                let res = store
                    .data_mut()
                    .table
                    .push(MessageRes((*msg).clone()))
                    .map_err(|e| trap(e.into()))?;
                let rep = res.rep();
                let out = hooks.data(store, c, env, res).await;
                let _ = store
                    .data_mut()
                    .table
                    .delete(wasmtime::component::Resource::<MessageRes>::new_own(rep));
                Ret::Outcome(out.map_err(trap)?.0)
            }
            Call::Notify(hook, report) => {
                match hook {
                    HookName::Delivered => hooks.delivered(store, report).await,
                    HookName::Deferred => hooks.deferred(store, report).await,
                    _ => hooks.bounced(store, report).await,
                }
                .map_err(trap)?;
                Ret::Notified
            }
            Call::Deliver(c, env) => {
                Ret::Routes(hooks.deliver(store, c, env).await.map_err(trap)?.0)
            }
        })
    }
}

impl PluginSession {
    /// `call_live` for a plugin built against contract 0.1.0: the same hooks through its own
    /// bindings, arguments and answers converted (its message has no `auth-results`).
    async fn call_v010(
        plugin: &contract::v010::Plugin,
        store: &mut Store<HostState>,
        call: &Call<'_>,
    ) -> wasmtime::Result<Ret> {
        let hooks = plugin.wasmtp_plugin_hooks();
        Ok(match call {
            Call::Connect(c) => Ret::Verdict(contract::verdict(
                hooks
                    .call_connect(&mut *store, &contract::connection(c))
                    .await?,
            )),
            Call::Ehlo(c, n) => Ret::Verdict(contract::verdict(
                hooks
                    .call_ehlo(&mut *store, &contract::connection(c), n)
                    .await?,
            )),
            Call::MailFrom(c, s, params) => Ret::Outcome(contract::outcome(
                hooks
                    .call_mail_from(&mut *store, &contract::connection(c), s, params)
                    .await?,
            )),
            Call::Rcpt(c, env, r) => Ret::Outcome(contract::outcome(
                hooks
                    .call_rcpt(
                        &mut *store,
                        &contract::connection(c),
                        &contract::envelope(env),
                        &contract::recipient(r),
                    )
                    .await?,
            )),
            Call::Data(c, env, msg) => {
                let res = store.data_mut().table.push(MessageRes((*msg).clone()))?;
                let rep = res.rep();
                let out = hooks
                    .call_data(
                        &mut *store,
                        &contract::connection(c),
                        &contract::envelope(env),
                        res,
                    )
                    .await;
                let _ = store
                    .data_mut()
                    .table
                    .delete(wasmtime::component::Resource::<MessageRes>::new_own(rep));
                Ret::Outcome(contract::outcome(out?))
            }
            Call::Notify(hook, report) => {
                let report = contract::report(report);
                match hook {
                    HookName::Delivered => hooks.call_delivered(&mut *store, &report).await,
                    HookName::Deferred => hooks.call_deferred(&mut *store, &report).await,
                    _ => hooks.call_bounced(&mut *store, &report).await,
                }?;
                Ret::Notified
            }
            Call::Deliver(c, env) => Ret::Routes(
                hooks
                    .call_deliver(
                        &mut *store,
                        &contract::connection(c),
                        &contract::envelope(env),
                    )
                    .await?
                    .into_iter()
                    .map(contract::route)
                    .collect(),
            ),
        })
    }
}

/// An instance of `p` for a transaction: a warm one if the plugin has
/// `reuse` and one is waiting, else a fresh one with its config applied
/// (`init`), from the pool or, when the pool is full, on demand. Takes
/// owned handles so the future does not borrow the session (stores are
/// not Sync).
async fn instantiate(
    host: Arc<PluginHost>,
    notes: Arc<Mutex<Notes>>,
    p: Arc<LoadedPlugin>,
    session_id: String,
) -> Result<Live, CallError> {
    let plugin = p.spec.name.as_str();
    if p.spec.reuse > 0 {
        let warm = p.warm.lock().expect("warm lock").pop();
        if let Some(mut live) = warm {
            // The only per-session state in the store: the notes handle
            // (and the http grant's per-transaction call count).
            live.store.data_mut().begin_transaction(notes);
            p.stats.metrics.instance(plugin, "warm");
            return Ok(live);
        }
    }
    if p.standby.target > 0
        && let Some(mut live) = p.standby.take()
    {
        live.store.data_mut().begin_transaction(notes);
        p.stats.metrics.instance(plugin, "standby");
        return Ok(live);
    }
    let (engine, on_demand) = host.engines(&p);
    let fresh = match fresh(engine, &p.pre, &host, notes.clone(), &p).await {
        Err(Fresh::PoolFull(e)) => {
            let (engine, pre) = on_demand
                .zip(p.fallback.as_ref())
                .ok_or_else(|| CallError::Trap(e.clone()))?;
            limit_hit(
                "plugin_limits.pool_instances",
                &format!("plugin {plugin}: the instance pool is full ({e}); allocating on demand"),
            );
            p.stats.metrics.instance(plugin, "on-demand");
            fresh(engine, pre, &host, notes, &p).await
        }
        r => {
            let source = if on_demand.is_some() {
                "pool"
            } else {
                "on-demand"
            };
            p.stats.metrics.instance(plugin, source);
            r
        }
    };
    fresh.map_err(|e| {
        debug!(session = %session_id, plugin, "instantiation failed");
        match e {
            Fresh::PoolFull(e) => CallError::Trap(e),
            Fresh::Failed(e) => e,
        }
    })
}

/// Fresh instances of one plugin made ahead, off the SMTP path, by the
/// host's standby maker: a transaction takes one instead of waiting while
/// its instance is made. Each serves one transaction like any fresh
/// instance (then the warm list or the drop), so the guarantee of fresh
/// instances holds; what it costs is their memory while they wait.
pub(crate) struct Standby {
    /// How many to keep made.
    pub(crate) target: u32,
    ready: Mutex<Vec<Live>>,
    /// A top-up is queued for the maker.
    queued: std::sync::atomic::AtomicBool,
    /// `wasmtp_plugin_standby`: how many are made (only with a target).
    gauge: Option<metrics::Gauge>,
}

impl Standby {
    pub(crate) fn new(plugin: &str, target: u32) -> Standby {
        Standby {
            target,
            ready: Mutex::new(Vec::new()),
            queued: Default::default(),
            gauge: (target > 0)
                .then(|| metrics::gauge!("wasmtp_plugin_standby", "plugin" => plugin.to_string())),
        }
    }

    /// One made ahead, if any is.
    fn take(&self) -> Option<Live> {
        let mut ready = self.ready.lock().expect("standby lock");
        let live = ready.pop();
        self.show(ready.len());
        live
    }

    fn put(&self, live: Live) {
        let mut ready = self.ready.lock().expect("standby lock");
        ready.push(live);
        self.show(ready.len());
    }

    fn show(&self, ready: usize) {
        if let Some(g) = &self.gauge {
            g.set(ready as f64);
        }
    }

    /// True if a top-up should be queued now (and marks it queued).
    pub(crate) fn wanted(&self) -> bool {
        self.target > 0 && !self.queued.swap(true, Ordering::AcqRel)
    }

    /// True when `target` instances are made.
    pub(crate) fn full(&self) -> bool {
        self.ready.lock().expect("standby lock").len() >= self.target as usize
    }
}

/// Makes `p`'s standby instances up to its target (the standby maker's
/// work). Stops at the first that cannot be made: a full pool leaves the
/// slots to sessions, and a failure is logged; the next transaction asks
/// again.
pub(crate) async fn fill_standby(host: &PluginHost, p: &LoadedPlugin) {
    p.standby.queued.store(false, Ordering::Release);
    // A plugin of a set a reload replaced: its sessions finish with the
    // instances they make; none are made ahead for them.
    if !host.current().plugins.iter().any(|q| std::ptr::eq(&**q, p)) {
        return;
    }
    let plugin = p.spec.name.as_str();
    let deadline = super::init_deadline(&p.spec);
    while !p.standby.full() {
        let notes = Arc::new(Mutex::new(Notes::new(&host.shared().limits)));
        let (engine, _) = host.engines(p);
        match tokio::time::timeout(deadline, fresh(engine, &p.pre, host, notes, p)).await {
            Ok(Ok(live)) => p.standby.put(live),
            Ok(Err(Fresh::PoolFull(e))) => {
                debug!(plugin, error = %e, "no standby instance: the instance pool is full");
                return;
            }
            Ok(Err(Fresh::Failed(CallError::Trap(e)))) => {
                warn!(plugin, error = %escape_long(&e), "a standby instance could not be made");
                return;
            }
            Ok(Err(Fresh::Failed(CallError::Timeout))) | Err(_) => {
                warn!(plugin, deadline = ?deadline, "a standby instance was not made within its deadline");
                return;
            }
        }
    }
}

/// Why a fresh instance could not be made.
enum Fresh {
    /// The pooling allocator has no free slot (try on demand).
    PoolFull(String),
    /// Anything else: a trap, or `init` refused.
    Failed(CallError),
}

/// A new instance of `pre` on `engine`, `init` run.
async fn fresh(
    engine: &wasmtime::Engine,
    pre: &contract::Pre,
    host: &PluginHost,
    notes: Arc<Mutex<Notes>>,
    p: &LoadedPlugin,
) -> Result<Live, Fresh> {
    let state = HostState::new(
        p.spec.name.as_str().into(),
        p.spec.grants.clone(),
        p.spec.memory,
        notes,
        host.shared().clone(),
    )
    .with_http(p.spec.http.as_ref());
    let mut store = new_store(engine, state);
    let plugin = pre.instantiate_async(&mut store).await.map_err(|e| {
        if super::pool_full(&e) {
            Fresh::PoolFull(format!("{e:#}"))
        } else {
            Fresh::Failed(CallError::Trap(format!("{e:#}")))
        }
    })?;
    // A plugin with an init snapshot starts from the state its `init` left.
    let init = if p.preinit {
        Ok(Ok(()))
    } else {
        plugin.init(&mut store, &p.spec.config_json).await
    };
    match init {
        Ok(Ok(())) => Ok(Live {
            store,
            plugin,
            uses: 0,
        }),
        Ok(Err(msg)) => Err(CallError::Trap(format!("init refused its config: {msg}"))),
        Err(e) => Err(CallError::Trap(with_output(
            &format!("init: {e:#}"),
            store.data_mut().take_output().as_deref(),
        ))),
    }
    .map_err(Fresh::Failed)
}

/// A store for one instance: memory and table limits from its state, and the epoch deadline
/// that makes a long guest call yield to the runtime (the call's own timeout cuts it off).
pub(crate) fn new_store(engine: &wasmtime::Engine, state: HostState) -> Store<HostState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    store
}

/// A trap's text with what the guest printed before it (a panic message names the cause; the
/// trap itself only says `unreachable`).
pub(crate) fn with_output(trap: &str, output: Option<&str>) -> String {
    match output {
        Some(out) => format!("{trap}; guest output: {out}"),
        None => trap.to_string(),
    }
}

impl Drop for PluginSession {
    /// The end of the session is a transaction boundary too.
    fn drop(&mut self) {
        self.release();
        self.top_up();
    }
}

/// What a failed call turns into; None for `on_error = "continue"`.
fn on_error(policy: OnError) -> Option<Decision> {
    match policy {
        OnError::Continue => None,
        OnError::Tempfail => Some(Decision::Tempfail(Reply::plugin_failed_tempfail())),
        OnError::Reject => Some(Decision::Reject(Reply::plugin_failed_reject())),
    }
}

/// Verdict names, in the order of `PluginStats::verdicts`.
const VERDICT_NAMES: [&str; 7] = [
    "continue",
    "accept",
    "reject",
    "tempfail",
    "disconnect",
    "discard",
    "quarantine",
];

impl Ret {
    /// The verdict's index in `VERDICT_NAMES`; None for routes and
    /// notifications, which carry no verdict.
    fn verdict(&self) -> Option<usize> {
        let v = match self {
            Ret::Verdict(v) => v,
            Ret::Outcome(o) => &o.verdict,
            Ret::Routes(_) | Ret::Notified => return None,
        };
        Some(match v {
            wit::Verdict::Continue => 0,
            wit::Verdict::Accept(_) => 1,
            wit::Verdict::Reject(_) => 2,
            wit::Verdict::Tempfail(_) => 3,
            wit::Verdict::Disconnect(_) => 4,
            wit::Verdict::Discard => 5,
            wit::Verdict::Quarantine(_) => 6,
        })
    }

    fn kind(&self) -> &'static str {
        match (self.verdict(), self) {
            (Some(i), _) => VERDICT_NAMES[i],
            (None, Ret::Routes(_)) => "routes",
            (None, _) => "notified",
        }
    }
}

/// Turns a verdict into a decision, checking that a plugin's reply fits it:
/// a reject must be 5xx, a tempfail 4xx, an accept 2xx, a disconnect 421 or
/// 5xx; a reply that does not fit is replaced by the default and logged.
pub fn decide(hook: HookName, verdict: wit::Verdict, plugin: &str) -> Decision {
    use wit::Verdict as V;
    match verdict {
        V::Continue => Decision::Continue,
        V::Accept(r) => Decision::Accept(r.and_then(|r| checked(r, 200..300, plugin))),
        V::Reject(r) => Decision::Reject(
            r.and_then(|r| checked(r, 500..600, plugin))
                .unwrap_or_else(|| {
                    if hook == HookName::Connect {
                        Reply::policy_reject_connect()
                    } else {
                        Reply::policy_reject()
                    }
                }),
        ),
        V::Tempfail(r) => Decision::Tempfail(
            r.and_then(|r| checked(r, 400..500, plugin))
                .unwrap_or_else(Reply::policy_tempfail),
        ),
        V::Disconnect(r) => Decision::Disconnect(r.and_then(|r| {
            if r.code == Some(421) {
                checked(r, 421..422, plugin)
            } else {
                checked(r, 500..600, plugin)
            }
        })),
        V::Discard => Decision::Discard,
        V::Quarantine(reason) => Decision::Quarantine(clean_text(&reason, MAX_REASON)),
    }
}

/// Bytes of reply text kept (`Reply::from_plugin` splits it into lines
/// that fit SMTP's 512-octet reply lines).
const MAX_TEXT: usize = 2000;
/// Bytes of a quarantine reason kept (it becomes a header line).
const MAX_REASON: usize = 400;

/// Plugin text with control characters turned into spaces, cut at `max`
/// bytes on a character boundary.
fn clean_text(s: &str, max: usize) -> String {
    let mut t = String::new();
    for c in s.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if t.len() + c.len_utf8() > max {
            break;
        }
        t.push(c);
    }
    t.trim().to_string()
}

/// Checks a plugin reply; None if the code does not fit (the caller then
/// uses the default reply for the verdict).
fn checked(r: wit::Reply, range: std::ops::Range<u16>, plugin: &str) -> Option<Reply> {
    let code = match r.code {
        Some(c) => c,
        None => match range.start / 100 {
            2 => 250,
            4 => 451,
            _ => 550,
        },
    };
    if !range.contains(&code) {
        warn!(
            plugin,
            code, "plugin reply code does not fit its verdict; using the default reply"
        );
        return None;
    }
    let class = code / 100;
    let status = match r.enhanced {
        Some(e) if valid_status(&e, class) => e,
        Some(e) => {
            warn!(plugin, status = %escape(&e), "plugin enhanced status does not fit; using a default");
            format!("{class}.7.1")
        }
        None => format!("{class}.{}", if class == 2 { "0.0" } else { "7.1" }),
    };
    Some(Reply::from_plugin(
        code,
        status,
        clean_text(&r.text, MAX_TEXT),
    ))
}

fn valid_status(s: &str, class: u16) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[0] == class.to_string()
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: Option<u16>, enhanced: Option<&str>) -> Option<wit::Reply> {
        Some(wit::Reply {
            code,
            enhanced: enhanced.map(Into::into),
            text: "no\r\nway".into(),
        })
    }

    #[test]
    fn verdict_replies_must_fit() {
        let d = decide(
            HookName::Rcpt,
            wit::Verdict::Reject(reply(Some(554), Some("5.7.1"))),
            "p",
        );
        assert_eq!(
            d,
            Decision::Reject(Reply::from_plugin(554, "5.7.1".into(), "no  way".into()))
        );
        // A reject with a 2xx or 4xx code falls back to the documented
        // default, 550 5.7.1.
        for bad in [Some(250), Some(451)] {
            let d = decide(HookName::Rcpt, wit::Verdict::Reject(reply(bad, None)), "p");
            let Decision::Reject(r) = d else {
                panic!("{d:?}")
            };
            assert!(r.to_wire().starts_with("550 5.7.1 "), "{}", r.to_wire());
        }
        let d = decide(
            HookName::Data,
            wit::Verdict::Tempfail(reply(None, Some("5.1.1"))),
            "p",
        );
        assert_eq!(
            d,
            Decision::Tempfail(Reply::from_plugin(451, "4.7.1".into(), "no  way".into()))
        );
        // Without a reply, each verdict has its documented default.
        let wire = |hook, v| match decide(hook, v, "p") {
            Decision::Reject(r) | Decision::Tempfail(r) => r.to_wire(),
            d => panic!("{d:?}"),
        };
        assert!(wire(HookName::Connect, wit::Verdict::Reject(None)).starts_with("554 5.7.1 "));
        assert!(wire(HookName::Rcpt, wit::Verdict::Reject(None)).starts_with("550 5.7.1 "));
        assert!(wire(HookName::Rcpt, wit::Verdict::Tempfail(None)).starts_with("451 4.7.1 "));
        // The disconnect default (421 4.7.0) names the host: the session
        // builds it (tests/it/plugin_hooks.rs checks it through SMTP).
        assert_eq!(
            decide(HookName::Rcpt, wit::Verdict::Disconnect(None), "p"),
            Decision::Disconnect(None)
        );
        assert_eq!(
            decide(HookName::Data, wit::Verdict::Continue, "p"),
            Decision::Continue
        );
    }
}
