//! The index checked against the message files: at every start (repairing)
//! and on demand (`wasmtp queue check [--repair]`, with the server stopped).
//!
//! The message files are the truth for what was acknowledged; sled is the
//! index and the record of state changes since. So:
//!
//! - a store that will not open or read (sled reports corruption, or
//!   panics) is moved aside to `broken-store-<time>/`, never deleted, and
//!   a new index is built from the files;
//! - a file without an index entry is indexed again from the envelope it
//!   carries (a crash between the file and the index write, or a lost or
//!   rolled-back index), due now;
//! - an index entry without a file is dropped: the file is written and
//!   renamed before the index entry and unlinked before it is removed, so
//!   such an entry was never acknowledged or its message had finished;
//! - a record that does not decode goes to the `corrupt` tree with its raw
//!   bytes and its message is indexed again from its file;
//! - a file that does not parse goes to `corrupt/` (one cut short without
//!   an index entry is a write a crash interrupted, never acknowledged, and
//!   logged as such; a spare renamed into place but not yet overwritten
//!   goes back to `spare/`); other names in `messages/` are reported and
//!   left alone;
//! - a store from before message files (bodies in sled) gets its files
//!   written from the `bodies` tree, which is then emptied.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tracing::{error, info, warn};

use super::spool::{FileError, Spool};
use super::{QueuedMessage, StoreError};
use crate::observe::escape_bytes;

/// What a check found and, when repairing, did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// Message files in `messages/`.
    pub files: usize,
    /// Index entries that decode.
    pub records: usize,
    /// Why the store would not open or read, if it did not.
    pub store_error: Option<String>,
    /// Where the broken store was moved (when repairing).
    pub moved_aside: Option<PathBuf>,
    /// Files without an index entry: indexed again.
    pub recovered: Vec<String>,
    /// Index entries without a file: dropped.
    pub dropped: Vec<String>,
    /// Files that do not parse (path, reason): moved to `corrupt/`.
    pub corrupt_files: Vec<(PathBuf, String)>,
    /// Index entries that do not decode: moved to the `corrupt` tree.
    pub corrupt_records: Vec<String>,
    /// Messages of the old layout (body in sled) given a file.
    pub migrated: Vec<String>,
    /// Other names in `messages/` that are not queue ids: reported, left
    /// alone.
    pub unknown: Vec<PathBuf>,
    /// True if the findings were acted on.
    pub repaired: bool,
}

impl Report {
    /// True if index and files agree and nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.store_error.is_none()
            && self.recovered.is_empty()
            && self.dropped.is_empty()
            && self.corrupt_files.is_empty()
            && self.corrupt_records.is_empty()
            && self.migrated.is_empty()
    }
}

/// The sled side: trees and every envelope, read once.
pub(super) struct Index {
    pub db: sled::Db,
    pub envelopes: sled::Tree,
    pub bodies: sled::Tree,
    pub corrupt: sled::Tree,
    pub records: Vec<(sled::IVec, sled::IVec)>,
}

/// Why the index could not be used.
pub(super) enum OpenError {
    /// The store is damaged: move it aside.
    Broken(String),
    /// Anything else (permissions, a full disk, the lock): fail the start.
    Fatal(sled::Error),
}

/// How long opening the index waits for sled's lock to be let go (see `open_index`).
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled and reads every envelope. A panic inside sled counts as a
/// damaged store.
pub(super) fn open_index(dir: &Path, cache: u64) -> Result<Index, OpenError> {
    let run = || -> Result<Index, sled::Error> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(cache)
            .open()?;
        let envelopes = db.open_tree("envelopes")?;
        let records = envelopes.iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Index {
            bodies: db.open_tree("bodies")?,
            corrupt: db.open_tree("corrupt")?,
            envelopes,
            records,
            db,
        })
    };
    // Every caller holds the queue directory's own lock, so sled's lock can only be held by a
    // store this process just dropped: sled lets go of it when its I/O threads finish the
    // last writes, a few milliseconds after the drop (a reopen right after one failed about
    // once in 80 runs of the store tests). Wait for that, boundedly.
    let run = || {
        let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
        loop {
            match run() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => return r,
            }
        }
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(ix)) => Ok(ix),
        Ok(Err(e)) => match &e {
            sled::Error::Io(io)
                if !matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ) =>
            {
                Err(OpenError::Fatal(e))
            }
            _ => Err(OpenError::Broken(e.to_string())),
        },
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(OpenError::Broken(format!("sled panicked: {what}")))
        }
    }
}

/// The file a clean stop leaves in the queue directory: the number of index
/// entries, all flushed, each with its message file. Removed at start.
pub(super) const CLEAN_STOP: &str = "clean-stop";

/// The entry count a clean stop recorded, if the last stop was clean.
pub(super) fn clean_stop(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join(CLEAN_STOP)).ok()?;
    text.trim().strip_prefix("entries=")?.parse().ok()
}

/// After a clean stop index and files agree exactly; if they do not now,
/// the index lost (or gained) entries while the server was down, as when
/// sled silently recovers only a prefix of a damaged log. Returns why.
pub(super) fn lost_since_clean_stop(dir: &Path, report: &Report) -> Option<String> {
    let entries = clean_stop(dir)?;
    let now = report.records + report.corrupt_records.len();
    (now != entries || !report.recovered.is_empty() || !report.dropped.is_empty()).then(|| {
        format!(
            "the index changed while the server was stopped: {entries} entries at the clean stop, {now} now, {} message files without an entry, {} entries without a file",
            report.recovered.len(),
            report.dropped.len()
        )
    })
}

/// Where a copy of the store is taken before sled opens it after a clean
/// stop: sled cuts a damaged log short as it opens it, so the store as
/// found can only be kept from before.
const BEFORE_OPEN: &str = "store-before-open";
/// Largest store copied before opening (sled's files; bodies are in the
/// message files, so a queue's store is envelopes and plugin kv data).
/// A larger one is copied after opening, as sled left it.
const MAX_COPY: u64 = 256 << 20;

/// After a clean stop: a copy of sled's files in `store-before-open/`
/// (None if there is no store or it is larger than `MAX_COPY`).
pub(super) fn copy_before_open(dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    let to = dir.join(BEFORE_OPEN);
    if to.exists() {
        // Left by a start that did not finish.
        std::fs::remove_dir_all(&to).map_err(|e| io(&to, e))?;
    }
    let files = store_files(dir)?;
    let size: u64 = files.iter().map(|p| tree_size(p)).sum();
    if files.is_empty() || size > MAX_COPY {
        return Ok(None);
    }
    make_dir(&to)?;
    for from in files {
        let into = to.join(from.file_name().unwrap_or_default());
        copy_tree(&from, &into).map_err(|e| io(&from, e))?;
    }
    Ok(Some(to))
}

/// Keeps the store as found: the copy taken before opening if there is
/// one, else a copy of sled's files now. Returns where.
pub(super) fn keep_copy(dir: &Path, before: Option<PathBuf>) -> Result<PathBuf, StoreError> {
    let to = aside_dir(dir);
    match before {
        Some(copy) => std::fs::rename(&copy, &to).map_err(|e| io(&copy, e))?,
        None => {
            make_dir(&to)?;
            for from in store_files(dir)? {
                let into = to.join(from.file_name().unwrap_or_default());
                copy_tree(&from, &into).map_err(|e| io(&from, e))?;
            }
        }
    }
    super::spool::sync_dir(&to)?;
    super::spool::sync_dir(dir)?;
    Ok(to)
}

/// Drops the copy taken before opening (the store was fine).
pub(super) fn drop_copy(before: Option<PathBuf>) -> Result<(), StoreError> {
    match before {
        Some(p) => std::fs::remove_dir_all(&p).map_err(|e| io(&p, e)),
        None => Ok(()),
    }
}

/// Moves sled's files (`conf`, `db`, `blobs/`, `snap.*`) into a new
/// `broken-store-<time>/` beside the message files and syncs both
/// directories. Nothing else in the queue directory is touched.
pub(super) fn move_aside(dir: &Path) -> Result<PathBuf, StoreError> {
    let to = aside_dir(dir);
    make_dir(&to)?;
    for from in store_files(dir)? {
        let into = to.join(from.file_name().unwrap_or_default());
        std::fs::rename(&from, &into).map_err(|e| io(&from, e))?;
    }
    super::spool::sync_dir(&to)?;
    super::spool::sync_dir(dir)?;
    Ok(to)
}

/// A new `broken-store-<time>[.n]` path (not created).
fn aside_dir(dir: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let mut to = dir.join(format!("broken-store-{stamp}"));
    let mut n = 1;
    while to.exists() {
        to = dir.join(format!("broken-store-{stamp}.{n}"));
        n += 1;
    }
    to
}

/// sled's files in the queue directory.
fn store_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if matches!(&*name, "conf" | "db" | "blobs") || name.starts_with("snap.") {
            out.push(e.path());
        }
    }
    Ok(out)
}

fn tree_size(p: &Path) -> u64 {
    match std::fs::read_dir(p) {
        Ok(rd) => rd.flatten().map(|e| tree_size(&e.path())).sum(),
        Err(_) => std::fs::metadata(p).map_or(0, |m| m.len()),
    }
}

fn make_dir(p: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(super::store::DIR_MODE)
        .create(p)
        .map_err(|e| io(p, e))
}

fn io(p: &Path, e: std::io::Error) -> StoreError {
    StoreError::File(FileError::Io {
        path: p.to_path_buf(),
        source: e,
    })
}

/// Copies a file, or a directory of files (sled's `blobs/`), syncing each.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(super::store::DIR_MODE)
            .create(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        std::fs::File::open(to)?.sync_all()
    } else {
        std::fs::copy(from, to)?;
        std::fs::File::open(to)?.sync_all()
    }
}

/// What reconciling would do.
#[derive(Default)]
pub(super) struct Plan {
    corrupt_records: Vec<(sled::IVec, sled::IVec, String)>,
    dropped: Vec<String>,
    migrated: Vec<(QueuedMessage, sled::IVec)>,
    recovered: Vec<QueuedMessage>,
    /// Path, reason, and the id if it has an index entry.
    corrupt_files: Vec<(PathBuf, String, Option<String>)>,
    orphan_bodies: Vec<sled::IVec>,
}

/// Compares the index (None: a store that would not open, so empty) with
/// the files. `verify_all` also reads files that have an index entry.
pub(super) fn plan(
    ix: Option<&Index>,
    spool: &Spool,
    verify_all: bool,
    report: &mut Report,
) -> Result<Plan, StoreError> {
    let mut plan = Plan::default();
    let listing = spool.list()?;
    report.files = listing.ids.len();
    report.unknown = listing.other;
    let files: HashSet<&str> = listing.ids.iter().map(String::as_str).collect();
    let mut indexed = HashMap::new();
    for (k, v) in ix.map_or(&[][..], |ix| &ix.records[..]) {
        match serde_json::from_slice::<QueuedMessage>(v) {
            Ok(msg) => {
                indexed.insert(String::from_utf8_lossy(k).into_owned(), msg);
            }
            Err(e) => {
                report.corrupt_records.push(escape_bytes(k).to_string());
                plan.corrupt_records
                    .push((k.clone(), v.clone(), e.to_string()));
            }
        }
    }
    report.records = indexed.len();
    let mut missing: Vec<(&String, &QueuedMessage)> = indexed
        .iter()
        .filter(|(id, _)| !files.contains(id.as_str()))
        .collect();
    missing.sort_by_key(|(id, _)| *id);
    for (id, msg) in missing {
        let ix = ix.expect("indexed ids come from an index");
        match ix.bodies.get(id.as_bytes())? {
            Some(body) => {
                report.migrated.push(id.clone());
                plan.migrated.push((msg.clone(), body));
            }
            None => {
                report.dropped.push(id.clone());
                plan.dropped.push(id.clone());
            }
        }
    }
    for id in &listing.ids {
        let known = indexed.contains_key(id);
        if known && !verify_all {
            continue;
        }
        match spool.read(id) {
            Ok(Some(f)) if !known => {
                report.recovered.push(id.clone());
                plan.recovered.push(f.envelope);
            }
            Ok(_) => {}
            Err(FileError::Format { path, reason }) => {
                report.corrupt_files.push((path.clone(), reason.clone()));
                plan.corrupt_files
                    .push((path, reason, known.then(|| id.clone())));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(ix) = ix {
        for k in ix.bodies.iter().keys() {
            let k = k?;
            let id = String::from_utf8_lossy(&k);
            if !indexed.contains_key(id.as_ref()) && !ix.corrupt.contains_key(&k)? {
                plan.orphan_bodies.push(k);
            }
        }
    }
    Ok(plan)
}

/// Carries out a plan: every change is logged, then made durable by the
/// caller's flush.
pub(super) fn apply(
    plan: Plan,
    ix: &Index,
    spool: &Spool,
    now: i64,
    report: &mut Report,
) -> Result<(), StoreError> {
    for (k, v, error) in plan.corrupt_records {
        ix.corrupt.insert(&k, v)?;
        ix.envelopes.remove(&k)?;
        let recoverable = spool
            .path(&String::from_utf8_lossy(&k))
            .is_some_and(|p| p.exists());
        error!(
            queue_id = %escape_bytes(&k),
            error = %error,
            total = ix.corrupt.len(),
            recoverable,
            "corrupt queue record moved to the `corrupt` tree; its message file, if any, is indexed again"
        );
    }
    crate::metrics::queue_recovery("corrupt_record", report.corrupt_records.len());
    for id in plan.dropped {
        ix.envelopes.remove(id.as_bytes())?;
        warn!(queue_id = %id, "queue index entry without a message file dropped (never acknowledged, or already finished)");
    }
    crate::metrics::queue_recovery("dropped", report.dropped.len());
    for (msg, body) in plan.migrated {
        spool.write(&msg, &body)?;
        ix.bodies.remove(msg.id.as_bytes())?;
        info!(queue_id = %msg.id, "queued message given a message file (store from before message files)");
    }
    for mut msg in plan.recovered {
        msg.next_attempt = now;
        let json = serde_json::to_vec(&msg).expect("envelope serializes");
        ix.envelopes.insert(msg.id.as_bytes(), json)?;
        info!(queue_id = %msg.id, rcpts = msg.recipients.len(), "queued message recovered from its message file");
    }
    crate::metrics::queue_recovery("recovered", report.recovered.len());
    for (path, reason, id) in plan.corrupt_files {
        if id.is_none() && reason.ends_with(&format!("({})", super::spool::NOT_OVERWRITTEN)) {
            spool.take_back(&path)?;
            warn!(file = %path.display(), reason = %reason, "message file renamed from spare/ but not yet written when the server stopped: never acknowledged; put back into spare/");
            continue;
        }
        let to = spool.set_aside(&path)?;
        if id.is_none() && reason.starts_with(super::spool::INCOMPLETE) {
            warn!(file = %path.display(), moved_to = %to.display(), reason = %reason, "message file incomplete and not indexed: a write a crash interrupted, never acknowledged; moved aside");
            continue;
        }
        if let Some(id) = id
            && let Some(raw) = ix.envelopes.remove(id.as_bytes())?
        {
            ix.corrupt.insert(id.as_bytes(), raw)?;
        }
        error!(file = %path.display(), moved_to = %to.display(), reason = %reason, "message file does not parse; moved aside, not delivered");
    }
    crate::metrics::queue_recovery("corrupt_file", report.corrupt_files.len());
    for k in plan.orphan_bodies {
        ix.bodies.remove(k)?;
    }
    report.repaired = true;
    Ok(())
}
