//! The metrics facade: every metric the server exports is named here, once,
//! and recorded by a one-line call where the thing happens (session, queue,
//! delivery, plugin call, limit hit). The admin endpoint renders them in the
//! Prometheus text format (`GET /metrics`).
//!
//! Names follow Prometheus conventions: a `wasmtp_` prefix, `_total` on
//! counters, base units in the name (`_seconds`, `_bytes`). Labels use the
//! project's own vocabulary: listener names from config, hook names as in
//! WIT and config (`mail-from`), limit names as their config keys.
//! docs/operations.md lists every metric with its labels.
//!
//! Until [`install`] runs (only `wasmtp serve` calls it) the calls are
//! no-ops, so library code and unit tests pay nothing.

use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets for durations, in seconds: plugin calls (tens of µs) to slow
/// deliveries (minutes).
const SECONDS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets for message sizes, in octets: 1 KiB to 50 MiB.
const BYTES: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 10485760.0, 52428800.0,
];
/// Buckets for time spent in the queue, in seconds: a minute to five days.
const QUEUE_SECONDS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 432000.0,
];

/// How often [`upkeep`] folds recorded histogram samples into their buckets.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder; returns the handle that renders it.
/// A second call (a second server in one process) gets None and the
/// first recorder keeps counting. The caller runs [`upkeep`] beside it.
pub fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("wasmtp_delivery_queue_time_seconds".into()),
                QUEUE_SECONDS,
            )
        })
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS))
        .ok()?;
    let handle = builder.install_recorder().ok()?;
    describe();
    Some(handle)
}

/// The recorder keeps every histogram sample (each plugin call, commit and
/// delivery records one or more) until upkeep folds them into their buckets.
/// A scrape of `/metrics` runs it, but a server nobody scrapes kept them all:
/// its RSS grew by about 200 bytes a message, without end. This loop runs
/// upkeep every [`UPKEEP_EVERY`], so what the recorder holds is bounded by
/// five seconds of samples whether or not anyone scrapes.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

fn describe() {
    use metrics::{describe_counter as c, describe_gauge as g, describe_histogram as h};
    c!(
        "wasmtp_connections_total",
        "SMTP connections by listener and result (accepted, refused by a connection limit)."
    );
    g!("wasmtp_sessions_open", "SMTP sessions open now.");
    c!(
        "wasmtp_tls_handshakes_total",
        "TLS handshakes by listener and result (ok, failed, timeout)."
    );
    c!(
        "wasmtp_auth_total",
        "AUTH attempts by mechanism and result (success, failure, busy)."
    );
    c!(
        "wasmtp_smtp_replies_total",
        "Replies to SMTP commands by command and code class."
    );
    c!(
        "wasmtp_messages_accepted_total",
        "Messages queued (250 after DATA/BDAT), by listener."
    );
    c!(
        "wasmtp_messages_refused_total",
        "Messages refused at the end of DATA/BDAT, by listener and reason."
    );
    h!(
        "wasmtp_message_size_bytes",
        metrics::Unit::Bytes,
        "Size of accepted messages."
    );
    g!(
        "wasmtp_queue_messages",
        "Messages in the queue by state (queued, active, deferred, held), at scrape time."
    );
    g!(
        "wasmtp_delivery_waiting",
        "Messages due for delivery that wait for a free delivery worker."
    );
    c!(
        "wasmtp_deliveries_total",
        "Recipient delivery attempts by outcome (delivered, deferred, bounced) and route (local, remote, relay)."
    );
    h!(
        "wasmtp_delivery_attempt_duration_seconds",
        metrics::Unit::Seconds,
        "Time one delivery attempt of one message took."
    );
    h!(
        "wasmtp_syncfs_duration_seconds",
        metrics::Unit::Seconds,
        "Time one syncfs of the queue's or a mailbox's file system took: the disk's flush latency under the load."
    );
    h!(
        "wasmtp_queue_commit_duration_seconds",
        metrics::Unit::Seconds,
        "Time from the end of a message's data to its file being durable, before the 250 reply."
    );
    h!(
        "wasmtp_delivery_queue_time_seconds",
        metrics::Unit::Seconds,
        "Time from acceptance to delivery, per delivered recipient."
    );
    c!(
        "wasmtp_delivery_retries_total",
        "Delivery attempts of a message that was deferred before."
    );
    c!(
        "wasmtp_dsns_sent_total",
        "Delivery status notifications queued, by kind (failure, delay, success)."
    );
    c!(
        "wasmtp_plugin_calls_total",
        "Plugin calls by plugin and hook."
    );
    c!(
        "wasmtp_plugin_http_calls_total",
        "HTTP requests of plugins (the http grant) by plugin and outcome (ok, denied, limit, timeout, too-large, error)."
    );
    c!(
        "wasmtp_plugin_instances_total",
        "Plugin instances a transaction got, by plugin and source (pool, on-demand, warm, standby)."
    );
    g!(
        "wasmtp_plugin_standby",
        "Fresh plugin instances made ahead and waiting for a transaction, by plugin."
    );
    c!(
        "wasmtp_plugin_verdicts_total",
        "Plugin verdicts by plugin, hook and verdict (continue, accept, reject, tempfail, disconnect, discard, quarantine; routes and notified for deliver and notification hooks)."
    );
    c!(
        "wasmtp_plugin_traps_total",
        "Plugin calls that trapped (including out of memory), by plugin and hook."
    );
    c!(
        "wasmtp_plugin_timeouts_total",
        "Plugin calls cut off at their deadline, by plugin and hook."
    );
    h!(
        "wasmtp_plugin_call_duration_seconds",
        metrics::Unit::Seconds,
        "Plugin call latency by plugin and hook."
    );
    g!(
        "wasmtp_plugin_set_generation",
        "Generation of the plugin set new sessions use (1 at start, +1 per reload)."
    );
    c!(
        "wasmtp_limit_hits_total",
        "Times a configured limit was reached, by limit (its config key)."
    );
    c!(
        "wasmtp_queue_admin_actions_total",
        "Queue commands run through the admin endpoint, by action."
    );
    c!(
        "wasmtp_queue_recovery_total",
        "Queue repairs at start: messages recovered from their files, index entries dropped, corrupt files and records set aside, stores moved aside."
    );
    c!(
        "wasmtp_queue_files_total",
        "Message files: `reused` (a spare file taken for a new message), `spared` (a finished message's file kept for reuse), `unlinked` (spares full, or the file too large)."
    );
    g!("wasmtp_start_time_seconds", "Unix time the server started.");
    c!(
        "wasmtp_auth_results_total",
        "Mail authentication results of received messages, by method (spf, spf_helo, dkim, arc, dmarc, auth) and result."
    );
    h!(
        "wasmtp_auth_verification_duration_seconds",
        "Time to verify one received message (SPF, DKIM, ARC, DMARC)."
    );
    c!(
        "wasmtp_dkim_signatures_total",
        "DKIM signatures added to accepted messages, by signing domain."
    );
    c!(
        "wasmtp_arc_seals_total",
        "ARC sets added to accepted messages from outside, by the cv= they carry (none, pass, fail)."
    );
    c!(
        "wasmtp_arc_seals_skipped_total",
        "Messages from outside left unsealed with [arc] configured, by reason (malformed_chain, chain_failed, chain_too_long, chain_not_verified, error)."
    );
    g!(
        "wasmtp_kv_backend_up",
        "1 while the shared kv backend (Redis) answers, 0 during an outage, by role (kv, connections)."
    );
    c!(
        "wasmtp_kv_backend_errors_total",
        "Calls to the shared kv backend (Redis) that failed for an outage or timeout, by role and op."
    );
    c!(
        "wasmtp_outbound_tls_policy_total",
        "Outbound TLS sessions and policy lookups by policy (sts, tlsa, no-policy-found) and result (success or an RFC 8460 result type)."
    );
}

/// An accepted TCP connection, or one refused by a connection limit.
pub fn connection(listener: &str, accepted: bool) {
    let result = if accepted { "accepted" } else { "refused" };
    counter!("wasmtp_connections_total", "listener" => listener.to_string(), "result" => result)
        .increment(1);
}

/// Counts an open session until dropped.
pub struct SessionOpen(());

/// A session started; the gauge goes down when the guard is dropped.
pub fn session_open() -> SessionOpen {
    gauge!("wasmtp_sessions_open").increment(1.0);
    SessionOpen(())
}

impl Drop for SessionOpen {
    fn drop(&mut self) {
        gauge!("wasmtp_sessions_open").decrement(1.0);
    }
}

/// A TLS handshake ended: `ok`, `failed` or `timeout`.
pub fn tls_handshake(listener: &str, result: &'static str) {
    counter!("wasmtp_tls_handshakes_total", "listener" => listener.to_string(), "result" => result)
        .increment(1);
}

/// An AUTH exchange ended: `success`, `failure` or `busy`.
pub fn auth(mechanism: &str, result: &'static str) {
    counter!("wasmtp_auth_total", "mechanism" => mechanism.to_string(), "result" => result)
        .increment(1);
}

/// A reply to `command` (the verb, upper case; `invalid` for a line that
/// did not parse).
pub fn reply(command: &'static str, code: u16) {
    let class = match code / 100 {
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    };
    counter!("wasmtp_smtp_replies_total", "command" => command, "class" => class).increment(1);
}

/// A message was queued.
pub fn message_accepted(listener: &str, size: u64) {
    counter!("wasmtp_messages_accepted_total", "listener" => listener.to_string()).increment(1);
    histogram!("wasmtp_message_size_bytes").record(size as f64);
}

/// A message was refused at the end of DATA/BDAT; `reason` is one of
/// `too_big`, `bare_line_ending`, `line_too_long`, `over_budget`,
/// `plugin`, `queue_error`.
pub fn message_refused(listener: &str, reason: &'static str) {
    counter!("wasmtp_messages_refused_total", "listener" => listener.to_string(), "reason" => reason)
        .increment(1);
}

/// Messages due for delivery that wait for a free worker
/// (`queue.delivery_workers`).
pub fn delivery_waiting(n: usize) {
    gauge!("wasmtp_delivery_waiting").set(n as f64);
}

/// Sets the queue depth of one state (computed at scrape time).
pub fn queue_depth(state: &'static str, n: usize) {
    gauge!("wasmtp_queue_messages", "state" => state).set(n as f64);
}

/// One recipient's attempt: `delivered`, `deferred` or `bounced`, over a
/// route kind (`local`, `remote`, `relay`); `queued_for` is the time since
/// acceptance, recorded for deliveries.
pub fn delivery(outcome: &'static str, route: &'static str, queued_for: Duration) {
    counter!("wasmtp_deliveries_total", "outcome" => outcome, "route" => route).increment(1);
    if outcome == "delivered" {
        histogram!("wasmtp_delivery_queue_time_seconds").record(queued_for.as_secs_f64());
    }
}

/// One attempt at a message ended after `took`; `retry` when the message
/// was deferred before.
pub fn delivery_attempt(took: Duration, retry: bool) {
    histogram!("wasmtp_delivery_attempt_duration_seconds").record(took.as_secs_f64());
    if retry {
        counter!("wasmtp_delivery_retries_total").increment(1);
    }
}

/// A DSN was queued (`failure`, `delay`, `success`).
pub fn dsn_sent(kind: &'static str) {
    counter!("wasmtp_dsns_sent_total", "kind" => kind).increment(1);
}

/// One plugin's call and instance metrics. The handles are looked up in the
/// registry once per (hook, result) and kept: a lookup hashes and compares
/// every label and allocates the plugin's name, three times per call, on
/// the path of every SMTP command a plugin sees. Made lazily, at the first
/// call after [`install`].
#[derive(Debug, Default)]
pub struct PluginMetrics {
    calls: std::sync::Mutex<Vec<(&'static str, &'static str, CallHandles)>>,
    instances: std::sync::Mutex<Vec<(&'static str, Counter)>>,
}

#[derive(Debug)]
struct CallHandles {
    calls: Counter,
    outcome: Counter,
    duration: Histogram,
}

impl PluginMetrics {
    /// One plugin call: `result` is the verdict (`continue`, `reject`, ...,
    /// `routes`, `notified`) or `trap` / `timeout`.
    pub fn call(&self, plugin: &str, hook: &'static str, result: &'static str, micros: u64) {
        let mut calls = self.calls.lock().expect("metrics lock");
        let i = match calls
            .iter()
            .position(|(h, r, _)| *h == hook && *r == result)
        {
            Some(i) => i,
            None => {
                let p = plugin.to_string();
                let outcome = match result {
                    "trap" => {
                        counter!("wasmtp_plugin_traps_total", "plugin" => p.clone(), "hook" => hook)
                    }
                    "timeout" => {
                        counter!("wasmtp_plugin_timeouts_total", "plugin" => p.clone(), "hook" => hook)
                    }
                    verdict => {
                        counter!("wasmtp_plugin_verdicts_total", "plugin" => p.clone(), "hook" => hook, "verdict" => verdict)
                    }
                };
                calls.push((
                    hook,
                    result,
                    CallHandles {
                        calls: counter!("wasmtp_plugin_calls_total", "plugin" => p.clone(), "hook" => hook),
                        outcome,
                        duration: histogram!("wasmtp_plugin_call_duration_seconds", "plugin" => p, "hook" => hook),
                    },
                ));
                calls.len() - 1
            }
        };
        let h = &calls[i].2;
        h.calls.increment(1);
        h.outcome.increment(1);
        h.duration.record(micros as f64 / 1e6);
    }

    /// A transaction got an instance of `plugin`: a fresh one from the `pool`,
    /// a fresh `on-demand` one (no pool, or the pool was full), or a `warm` one
    /// kept from an earlier transaction (`reuse`).
    pub fn instance(&self, plugin: &str, source: &'static str) {
        let mut instances = self.instances.lock().expect("metrics lock");
        let i = match instances.iter().position(|(s, _)| *s == source) {
            Some(i) => i,
            None => {
                instances.push((
                    source,
                    counter!("wasmtp_plugin_instances_total", "plugin" => plugin.to_string(), "source" => source),
                ));
                instances.len() - 1
            }
        };
        instances[i].1.increment(1);
    }
}

/// One HTTP request of a plugin with the `http` grant: `ok` (a response
/// arrived), `denied` (host or scheme not allowed), `limit` (over
/// `max_calls`), `timeout`, `too-large` (declared body over
/// `max_response`) or `error`.
pub fn plugin_http_call(plugin: &str, outcome: &'static str) {
    counter!("wasmtp_plugin_http_calls_total", "plugin" => plugin.to_string(), "outcome" => outcome)
        .increment(1);
}

/// The plugin set generation (set at scrape time).
pub fn plugin_generation(generation: u64) {
    gauge!("wasmtp_plugin_set_generation").set(generation as f64);
}

/// How many plugins of the current set were built against each contract version the host
/// serves (set at scrape time), e.g. `contract="wasmtp:plugin@0.1.0"`.
pub fn plugins_loaded(contract: &'static str, n: usize) {
    gauge!("wasmtp_plugins_loaded", "contract" => contract).set(n as f64);
}

/// A limit was hit (called by `observe::limit_hit`).
pub fn limit_hit(limit: &'static str) {
    counter!("wasmtp_limit_hits_total", "limit" => limit).increment(1);
}

/// Queue repairs at start (or by `queue check --repair`): `what` is
/// `recovered`, `dropped`, `corrupt_file`, `corrupt_record` or
/// `store_moved_aside`.
pub fn queue_recovery(what: &'static str, n: usize) {
    if n > 0 {
        counter!("wasmtp_queue_recovery_total", "what" => what).increment(n as u64);
    }
}

/// A message file was reused, kept as a spare or unlinked.
pub fn queue_file(what: &'static str) {
    counter!("wasmtp_queue_files_total", "what" => what).increment(1);
}

/// A writer waited for a group `syncfs` (`by`: `queue` or `maildir`).
pub fn syncfs_wait(by: &'static str) {
    counter!("wasmtp_syncfs_waits_total", "by" => by).increment(1);
}

/// A message was committed to the queue (written and made durable) in
/// `took`, or the commit failed.
pub fn queue_commit(took: Duration) {
    histogram!("wasmtp_queue_commit_duration_seconds").record(took.as_secs_f64());
}

/// A `syncfs` ran (for however many writers were waiting) and took `took`.
pub fn syncfs_ran(took: Duration) {
    counter!("wasmtp_syncfs_total").increment(1);
    histogram!("wasmtp_syncfs_duration_seconds").record(took.as_secs_f64());
}

/// A queue command ran through the admin endpoint.
pub fn admin_action(action: &'static str) {
    counter!("wasmtp_queue_admin_actions_total", "action" => action).increment(1);
}

/// The start time, once.
pub fn started(unix_secs: i64) {
    gauge!("wasmtp_start_time_seconds").set(unix_secs as f64);
}

/// One method's result in a received message's Authentication-Results
/// (`method`: spf, spf_helo, dkim, arc, dmarc, auth; `result` as in the
/// header: pass, fail, softfail, neutral, none, temperror, permerror).
pub fn auth_result(method: &'static str, result: &'static str) {
    counter!("wasmtp_auth_results_total", "method" => method, "result" => result).increment(1);
}

/// One message's verification took `took`.
pub fn auth_verification(took: Duration) {
    histogram!("wasmtp_auth_verification_duration_seconds").record(took.as_secs_f64());
}

/// A DKIM signature was added for `domain` (a configured signing domain).
pub fn dkim_signed(domain: &str) {
    counter!("wasmtp_dkim_signatures_total", "domain" => domain.to_string()).increment(1);
}

/// An ARC set was added, with `cv` (`none`, `pass`, `fail`).
pub fn arc_sealed(cv: &'static str) {
    counter!("wasmtp_arc_seals_total", "cv" => cv).increment(1);
}

/// A message from outside was not sealed, for `reason`.
pub fn arc_not_sealed(reason: &'static str) {
    counter!("wasmtp_arc_seals_skipped_total", "reason" => reason).increment(1);
}

/// Whether the shared kv backend answers (set on every call's outcome).
pub fn kv_backend_up(role: &'static str, up: bool) {
    gauge!("wasmtp_kv_backend_up", "role" => role).set(if up { 1.0 } else { 0.0 });
}

/// A call to the shared kv backend failed (outage or timeout).
pub fn kv_error(role: &'static str, op: &'static str) {
    counter!("wasmtp_kv_backend_errors_total", "role" => role, "op" => op).increment(1);
}

/// An outbound TLS session under a policy (`sts`, `tlsa`,
/// `no-policy-found`) and its result (`success` or an RFC 8460 result
/// type such as `validation-failure`).
pub fn tls_policy(policy: &'static str, result: &'static str) {
    counter!("wasmtp_outbound_tls_policy_total", "policy" => policy, "result" => result)
        .increment(1);
}
