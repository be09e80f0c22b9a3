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
//! - a file that does not parse goes to `corrupt/`; `.tmp` files (writes a
//!   crash interrupted, never acknowledged) are removed;
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
    /// Interrupted writes (`.tmp`) removed, and names that are not queue
    /// ids (reported, left alone).
    pub leftovers: Vec<PathBuf>,
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
            && self.leftovers.is_empty()
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

/// Moves sled's files (`conf`, `db`, `blobs/`, `snap.*`) into a new
/// `broken-store-<time>/` beside the message files and syncs both
/// directories. Nothing else in the queue directory is touched.
pub(super) fn move_aside(dir: &Path) -> Result<PathBuf, StoreError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let mut to = dir.join(format!("broken-store-{stamp}"));
    let mut n = 1;
    while to.exists() {
        to = dir.join(format!("broken-store-{stamp}.{n}"));
        n += 1;
    }
    let io = |p: &Path, e| {
        StoreError::File(FileError::Io {
            path: p.to_path_buf(),
            source: e,
        })
    };
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(super::store::DIR_MODE)
        .create(&to)
        .map_err(|e| io(&to, e))?;
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if matches!(&*name, "conf" | "db" | "blobs") || name.starts_with("snap.") {
            std::fs::rename(e.path(), to.join(&*name)).map_err(|err| io(&e.path(), err))?;
        }
    }
    super::spool::sync_dir(&to)?;
    super::spool::sync_dir(dir)?;
    Ok(to)
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
    tmp: Vec<PathBuf>,
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
    for p in listing.other {
        if p.extension().is_some_and(|e| e == "tmp") {
            plan.tmp.push(p.clone());
        }
        report.leftovers.push(p);
    }
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
        let to = spool.set_aside(&path)?;
        if let Some(id) = id
            && let Some(raw) = ix.envelopes.remove(id.as_bytes())?
        {
            ix.corrupt.insert(id.as_bytes(), raw)?;
        }
        error!(file = %path.display(), moved_to = %to.display(), reason = %reason, "message file does not parse; moved aside, not delivered");
    }
    crate::metrics::queue_recovery("corrupt_file", report.corrupt_files.len());
    for p in plan.tmp {
        std::fs::remove_file(&p).map_err(|e| FileError::Io {
            path: p.clone(),
            source: e,
        })?;
    }
    for k in plan.orphan_bodies {
        ix.bodies.remove(k)?;
    }
    report.repaired = true;
    Ok(())
}
