//! `wasmtp queue ...` and `wasmtp status`: requests to the running
//! server's admin endpoint (src/admin/), printed for people or, with
//! `--json`, as the endpoint's JSON.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::Value;
use wasmtp::admin::client::{self, Answer};
use wasmtp::config::Settings;
use wasmtp::queue::control::{Entry, State, Summary};
use wasmtp::queue::{QueuedMessage, RcptStatus};

/// Options every command here shares.
#[derive(Args)]
pub struct Common {
    /// Config file of the running server (the embedded default without it).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Print the endpoint's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum QueueCmd {
    /// One line per message: id, age, size, sender, recipients, state, next attempt, last error.
    List {
        /// Sender contains this (`<>` for the null sender).
        #[arg(long)]
        sender: Option<String>,
        /// A recipient contains this.
        #[arg(long)]
        rcpt: Option<String>,
        /// A pending recipient is at this domain.
        #[arg(long)]
        domain: Option<String>,
        /// queued, active, deferred or held.
        #[arg(long)]
        state: Option<String>,
        /// Older than this (`30m`, `2h`, `1d`).
        #[arg(long)]
        older_than: Option<humantime::Duration>,
        /// Show at most this many (the oldest); the server's default is 1000.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Messages by state and pending recipients by destination domain (like qshape).
    Summary,
    /// Envelope, per-recipient state, attempts, last reply and headers of one message.
    Show {
        /// Queue id.
        id: String,
    },
    /// Attempt delivery now: one message, every message (--all) or a domain's.
    Retry {
        /// Queue id.
        #[arg(required_unless_present_any = ["all", "domain"], conflicts_with_all = ["all", "domain"])]
        id: Option<String>,
        /// Every message that is not held.
        #[arg(long, conflicts_with = "domain")]
        all: bool,
        /// Every message with a pending recipient at this domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Keep a message back: it is not delivered until released.
    Hold {
        /// Queue id.
        id: String,
    },
    /// Undo a hold; delivery is attempted now.
    Release {
        /// Queue id.
        id: String,
    },
    /// Remove a message without telling the sender.
    Delete {
        /// Queue id.
        id: String,
    },
    /// Send the sender a failure DSN for every pending recipient, then remove the message.
    Bounce {
        /// Queue id.
        id: String,
    },
    /// Compare the message files with the index (server stopped); exit 1 if they disagree.
    Check {
        /// Fix what is found, as a start does: index orphan files, drop entries without a file,
        /// move damaged files to corrupt/, move a store that will not open aside.
        #[arg(long)]
        repair: bool,
    },
}

/// Runs a `queue` command.
pub fn queue(common: Common, cmd: QueueCmd) -> anyhow::Result<()> {
    let settings = load(&common)?;
    if let QueueCmd::Check { repair } = cmd {
        return check(&settings, repair, common.json);
    }
    let json = common.json;
    let (method, path, action) = match &cmd {
        QueueCmd::List {
            sender,
            rcpt,
            domain,
            state,
            older_than,
            limit,
        } => {
            let secs = older_than.map(|d| d.as_secs().to_string());
            let limit = limit.map(|n| n.to_string());
            let pairs: Vec<(&str, &str)> = [
                ("sender", sender.as_deref()),
                ("rcpt", rcpt.as_deref()),
                ("domain", domain.as_deref()),
                ("state", state.as_deref()),
                ("older_than", secs.as_deref()),
                ("limit", limit.as_deref()),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
            (Method::GET, format!("/queue?{}", client::query(&pairs)), "")
        }
        QueueCmd::Summary => (Method::GET, "/queue/summary".into(), ""),
        QueueCmd::Show { id } => (Method::GET, format!("/queue/{}", seg(id)), ""),
        QueueCmd::Retry { id: Some(id), .. } => {
            (Method::POST, format!("/queue/{}/retry", seg(id)), "retry")
        }
        QueueCmd::Retry {
            domain: Some(d), ..
        } => (
            Method::POST,
            format!("/queue/retry?{}", client::query(&[("domain", d)])),
            "retry",
        ),
        QueueCmd::Retry { .. } => (Method::POST, "/queue/retry?all=1".into(), "retry"),
        QueueCmd::Hold { id } => (Method::POST, format!("/queue/{}/hold", seg(id)), "hold"),
        QueueCmd::Release { id } => (
            Method::POST,
            format!("/queue/{}/release", seg(id)),
            "release",
        ),
        QueueCmd::Delete { id } => (Method::DELETE, format!("/queue/{}", seg(id)), "delete"),
        QueueCmd::Bounce { id } => (Method::POST, format!("/queue/{}/bounce", seg(id)), "bounce"),
        QueueCmd::Check { .. } => unreachable!("handled above"),
    };
    let v = call(&settings, method, &path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match cmd {
        QueueCmd::List { .. } => print_list(&v)?,
        QueueCmd::Summary => print_summary(&serde_json::from_value(v)?),
        QueueCmd::Show { .. } => print_show(&v)?,
        _ => {
            let ids: Vec<String> = serde_json::from_value(v["done"].clone())?;
            match ids.len() {
                0 => println!("{action}: no message matched"),
                _ => {
                    for id in ids {
                        println!("{action}: {id}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// `queue check [--repair]`: offline, on the queue directory itself (the
/// running server holds its lock and runs the same repair at every start).
fn check(settings: &Settings, repair: bool, json: bool) -> anyhow::Result<()> {
    let dir = &settings.queue.dir;
    let r = wasmtp::queue::Store::check(dir, settings.queue.cache_size, repair)
        .with_context(|| format!("checking the queue in {}", dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let would = if r.repaired { "" } else { "would be " };
        println!(
            "{}: {} message files, {} index entries",
            dir.display(),
            r.files,
            r.records
        );
        if let Some(e) = &r.store_error {
            println!("store does not open: {e}");
        }
        if let Some(p) = &r.moved_aside {
            println!("store moved aside to {}", p.display());
        }
        for id in &r.recovered {
            println!("file without index entry: {id} ({would}indexed again)");
        }
        for id in &r.dropped {
            println!("index entry without file: {id} ({would}dropped)");
        }
        for (p, why) in &r.corrupt_files {
            println!(
                "damaged file: {}: {why} ({would}moved to corrupt/)",
                p.display()
            );
        }
        for id in &r.corrupt_records {
            println!("index entry does not decode: {id} ({would}moved to the corrupt tree)");
        }
        for id in &r.migrated {
            println!("body only in the index: {id} ({would}written as a file)");
        }
        for p in &r.unknown {
            println!("not a queue file: {} (left alone)", p.display());
        }
        if r.is_clean() {
            println!("ok: index and files agree");
        }
    }
    if !r.is_clean() && !r.repaired {
        bail!("the queue needs repair: `wasmtp queue check --repair` (with the server stopped)");
    }
    Ok(())
}

/// Runs `status`.
pub fn status(common: Common) -> anyhow::Result<()> {
    let settings = load(&common)?;
    let v = call(&settings, Method::GET, "/status")?;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let ready = match v["not_ready"].as_str() {
        None => "ready".to_string(),
        Some(why) => format!("NOT READY: {why}"),
    };
    println!(
        "wasmtp {} on {}, pid {}, up {}, {ready}",
        v["version"].as_str().unwrap_or("?"),
        v["hostname"].as_str().unwrap_or("?"),
        v["pid"],
        duration(v["uptime_seconds"].as_i64().unwrap_or(0)),
    );
    println!("config: {}", v["config"].as_str().unwrap_or("?"));
    println!("admin:  {}", v["admin"].as_str().unwrap_or("?"));
    println!("listeners:");
    for l in v["listeners"].as_array().into_iter().flatten() {
        println!(
            "  {:<14} {:<12} {}",
            l["name"].as_str().unwrap_or(""),
            l["role"].as_str().unwrap_or(""),
            l["address"].as_str().unwrap_or("")
        );
    }
    let plugins = &v["plugins"];
    println!("plugins: set generation {}", plugins["generation"]);
    for p in plugins["plugins"].as_array().into_iter().flatten() {
        let hooks: Vec<&str> = p["hooks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str())
            .collect();
        println!(
            "  {:<14} sha256:{}  hooks {}{}  calls {} traps {} timeouts {}",
            p["name"].as_str().unwrap_or(""),
            p["digest"].as_str().unwrap_or(""),
            hooks.join(","),
            if p["snapshot"] == true {
                "  init snapshot"
            } else {
                ""
            },
            p["calls"],
            p["traps"],
            p["timeouts"]
        );
    }
    match serde_json::from_value::<Summary>(v["queue"].clone()) {
        Ok(s) => {
            print!("queue: ");
            print_summary(&s);
        }
        Err(_) => println!("queue: {}", v["queue"]["error"].as_str().unwrap_or("?")),
    }
    if v["corrupt_records"].as_u64().unwrap_or(0) > 0 {
        println!("corrupt queue records set aside: {}", v["corrupt_records"]);
    }
    Ok(())
}

fn load(common: &Common) -> anyhow::Result<Settings> {
    Ok(match &common.config {
        Some(p) => Settings::load(p)?,
        None => Settings::embedded_default()?,
    })
}

/// One request; a non-2xx answer is an error with the server's message.
fn call(settings: &Settings, method: Method, path: &str) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let answer: Answer = rt.block_on(client::request(settings, method, path))?;
    if !answer.status.is_success() {
        bail!("{}", answer.error_text());
    }
    serde_json::from_slice(&answer.body)
        .context("the admin endpoint sent something that is not JSON")
}

/// A queue id as one path segment (ids are hex; anything else is escaped).
fn seg(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

fn print_list(v: &Value) -> anyhow::Result<()> {
    let now = v["now"].as_i64().unwrap_or(0);
    let entries: Vec<Entry> = serde_json::from_value(v["messages"].clone())?;
    if entries.is_empty() {
        println!("queue is empty (or nothing matched)");
        return Ok(());
    }
    println!(
        "{:<16} {:>5} {:>7} {:<28} {:>5} {:<8} {:<8} LAST ERROR",
        "ID", "AGE", "SIZE", "SENDER", "RCPTS", "STATE", "NEXT"
    );
    for e in &entries {
        let m = &e.message;
        println!(
            "{:<16} {:>5} {:>7} {:<28} {:>5} {:<8} {:<8} {}",
            m.id,
            duration(now - m.received_at),
            size(m.size),
            sender(m),
            format!("{}/{}", e.pending(), m.recipients.len()),
            e.state.as_str(),
            next(e, now),
            e.last_error().unwrap_or("-")
        );
    }
    let matched = v["matched"].as_u64().unwrap_or(entries.len() as u64);
    if matched > entries.len() as u64 {
        println!(
            "({} of {matched} matching messages shown, the oldest; --limit shows more)",
            entries.len()
        );
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let count =
        |m: &std::collections::BTreeMap<State, usize>, st: State| m.get(&st).copied().unwrap_or(0);
    let states: Vec<String> = State::ALL
        .iter()
        .map(|st| format!("{} {}", st.as_str(), count(&s.messages, *st)))
        .collect();
    println!("{} message(s): {}", s.total(), states.join(", "));
    if s.domains.is_empty() {
        return;
    }
    println!(
        "{:<32} {:>6} {:>7} {:>7} {:>9} {:>6}",
        "pending recipients by domain", "total", "queued", "active", "deferred", "held"
    );
    for (domain, by) in &s.domains {
        println!(
            "{:<32} {:>6} {:>7} {:>7} {:>9} {:>6}",
            domain,
            by.values().sum::<usize>(),
            count(by, State::Queued),
            count(by, State::Active),
            count(by, State::Deferred),
            count(by, State::Held)
        );
    }
}

fn print_show(v: &Value) -> anyhow::Result<()> {
    let now = v["now"].as_i64().unwrap_or(0);
    let e: Entry = serde_json::from_value(v["entry"].clone())?;
    let m = &e.message;
    println!("id:           {}", m.id);
    println!("state:        {}", e.state.as_str());
    println!(
        "received:     {} ({} ago)",
        rfc3339(m.received_at),
        duration(now - m.received_at)
    );
    println!("next attempt: {}", next(&e, now));
    println!("size:         {} octets", m.size);
    println!("sender:       {}", sender(m));
    if let Some(envid) = &m.envid {
        println!("envid:        {envid}");
    }
    println!("recipients:");
    for r in &m.recipients {
        let status = match &r.status {
            RcptStatus::Pending => "pending".to_string(),
            RcptStatus::Delivered(t) => format!("delivered {}", rfc3339(*t)),
            RcptStatus::Failed(_) => "failed".to_string(),
        };
        println!(
            "  {}  {status}, {} attempt(s), route {}",
            r.address,
            r.attempts,
            r.route.kind()
        );
        if let Some(err) = &r.last_error {
            println!("    last error: {err}");
        }
        if let Some(f) = &r.failure {
            if let Some(reply) = &f.remote_reply {
                println!(
                    "    last reply: {reply} (from {})",
                    f.remote_mta.as_deref().unwrap_or("?")
                );
            }
            println!("    status:     {}", f.status);
        }
    }
    println!("headers:");
    for line in v["headers"].as_str().unwrap_or("").lines() {
        println!("  {line}");
    }
    Ok(())
}

fn sender(m: &QueuedMessage) -> String {
    format!("<{}>", m.return_path())
}

fn next(e: &Entry, now: i64) -> String {
    match e.state {
        State::Held => "held".into(),
        State::Active => "now".into(),
        _ if e.message.next_attempt <= now => "due".into(),
        _ => format!("in {}", duration(e.message.next_attempt - now)),
    }
}

/// `45s`, `12m`, `3h`, `2d`.
fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn size(n: u64) -> String {
    match n {
        0..1024 => n.to_string(),
        1024..1_048_576 => format!("{:.1}K", n as f64 / 1024.0),
        _ => format!("{:.1}M", n as f64 / 1_048_576.0),
    }
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(|| unix.to_string(), |t| t.to_rfc3339())
}
