//! The queue store: one message file per message (`spool`, the truth for
//! what was acknowledged) and a sled index of envelopes and their state.
//!
//! `commit` writes the message file (envelope at acceptance + message,
//! created under its final name), then the envelope into sled, then waits
//! until the file is on disk (`syncfs`); the index entry reaches the disk
//! with sled's next flush, and a crash before that loses nothing, because
//! every start indexes a message file that has no entry again from the
//! envelope in the file. (Flushing sled for every commit cost a wake-up of
//! each of sled's seven I/O threads, which share one condition variable,
//! per flush: 3.5 context switches per message and 9% of the server's CPU
//! at 1 KiB.) Operator commands flush both. sled's own `flush` only
//! calls `sync_file_range` on its log and never syncs the files it keeps
//! large values in (`blobs/`), which survives a process crash but not a
//! power cut; so a durable flush here is sled's flush followed by `syncfs`
//! on the queue's filesystem, which also reaches the message files, their
//! directory entries and the device cache. Flushes run on a dedicated
//! thread, not on tokio's blocking pool, so a pool busy with other work
//! (password hashing under an AUTH flood) never delays a `250`. With group
//! commit on, concurrent commits share a single flush: the thread takes
//! every request that arrived while the previous flush ran and makes them
//! durable with one `syncfs`. State changes after acceptance go to sled
//! only; `remove` takes the file out of `messages/` (into `spare/`, or
//! unlinked) before the index entry.
//!
//! At open the index is checked against the files (`recover`): a store
//! that will not open is moved aside and rebuilt from the files, files
//! without an entry are indexed again, entries without a file dropped.
//! An envelope that does not decode is never handed out: it is moved to
//! the `corrupt` tree under its id with its raw bytes, logged, and the
//! rest of the queue carries on. docs/queue.md describes the layout.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use super::QueuedMessage;
use super::recover::{self, Index, OpenError, Report};
use super::spool::{FileError, Spool};

/// A failure of the queue store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error.
    #[error("queue store: {0}")]
    Sled(#[from] sled::Error),
    /// The flusher thread is gone.
    #[error("queue store: flusher stopped")]
    Closed,
    /// A blocking task panicked or was cancelled.
    #[error("queue store: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A message file could not be written, read or moved.
    #[error("queue store: {0}")]
    File(#[from] FileError),
    /// Another process has the queue directory open.
    #[error("queue store: {0} is in use by another process (is a server running?)")]
    Locked(String),
}

/// Mode of the queue directory: the store holds every queued message, so
/// only the server's user may enter it (sled's own files are created under
/// the server's umask, 077).
pub const DIR_MODE: u32 = 0o700;

/// Most flush requests one group commit answers.
const MAX_BATCH: usize = 4096;

/// A flush request: what must be durable, and where to answer.
type FlushReply = (Need, oneshot::Sender<Result<(), String>>);

/// What a flush must make durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    /// The message files (and their names): `syncfs` alone. Enough for an
    /// accepted message, whose file is the truth a crash recovers from.
    Files,
    /// The files and the index: sled's flush, then `syncfs`.
    All,
}

/// Handle to the queue store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    envelopes: sled::Tree,
    /// Envelopes that did not decode, raw, by id.
    corrupt: sled::Tree,
    /// The message files.
    spool: Spool,
    /// Requests for the flusher thread; it stops when this is dropped.
    flusher: mpsc::Sender<FlushReply>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The queue directory's lock, held while the store is open (last, so
    /// it is released after sled's files are closed).
    _lock: std::fs::File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the thread; waiting for it releases
        // its handle on sled (and sled's lock) before anyone reopens.
        drop(std::mem::replace(&mut self.flusher, mpsc::channel().0));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the store at `dir`, checks the index against the
    /// message files and repairs what a crash left (see `recover`), and
    /// starts the flusher thread; sled caches at most `cache` bytes of pages.
    pub fn open(dir: &Path, group_commit: bool, cache: u64) -> Result<Store, StoreError> {
        Store::open_repaired(dir, group_commit, cache, false).map(|(s, _)| s)
    }

    /// `wasmtp queue check`: compares index and files (reading every file)
    /// and, with `repair`, fixes what it finds as a start would. The server
    /// must be stopped (the directory is locked while it runs).
    pub fn check(dir: &Path, cache: u64, repair: bool) -> Result<Report, StoreError> {
        if !dir.is_dir() {
            return Err(StoreError::File(FileError::Io {
                path: dir.to_path_buf(),
                source: std::io::ErrorKind::NotFound.into(),
            }));
        }
        if repair {
            let (store, report) = Store::open_repaired(dir, false, cache, true)?;
            // Repaired and flushed: as after a clean stop.
            store.write_clean_mark()?;
            return Ok(report);
        }
        let _lock = lock(dir)?;
        let spool = Spool::open(dir)?;
        let mut report = Report::default();
        let ix = match recover::open_index(dir, cache) {
            Ok(ix) => Some(ix),
            Err(OpenError::Broken(why)) => {
                report.store_error = Some(why);
                None
            }
            Err(OpenError::Fatal(e)) => return Err(e.into()),
        };
        recover::plan(ix.as_ref(), &spool, true, &mut report)?;
        if report.store_error.is_none() {
            report.store_error = recover::lost_since_clean_stop(dir, &report);
        }
        Ok(report)
    }

    fn open_repaired(
        dir: &Path,
        group_commit: bool,
        cache: u64,
        verify_all: bool,
    ) -> Result<(Store, Report), StoreError> {
        let io = |e| StoreError::Sled(sled::Error::Io(e));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io)?;
        // A queue dir made by an older version (0755) is closed too: it is
        // the server's alone.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io)?;
        let lock = lock(dir)?;
        let spool = Spool::open(dir)?;
        let mut report = Report::default();
        let existed = dir.join("db").exists();
        let mut before = match recover::clean_stop(dir) {
            Some(_) => recover::copy_before_open(dir)?,
            None => None,
        };
        let ix = open_or_move_aside(dir, cache, &mut report)?;
        let plan = recover::plan(Some(&ix), &spool, verify_all, &mut report)?;
        if report.moved_aside.is_none() {
            keep_if_damaged(dir, existed, before.take(), &mut report)?;
        }
        recover::drop_copy(before)?;
        recover::apply(plan, &ix, &spool, super::now_secs(), &mut report)?;
        let Index {
            db,
            envelopes,
            corrupt,
            ..
        } = ix;
        let durable = Durable {
            db: db.clone(),
            dir: std::fs::File::open(dir).map_err(io)?,
            // With group commit, syncs are shared with every other writer on
            // the file system (Maildir deliveries); without it, one of its
            // own per message, as documented.
            group: if group_commit {
                Some(crate::syncfs::group_of(dir).map_err(io)?)
            } else {
                None
            },
        };
        // What the repair changed is durable before anything is served, and
        // the clean-stop mark is gone until the next clean stop.
        durable.sync(Need::All)?;
        let mark = dir.join(recover::CLEAN_STOP);
        if mark.exists() {
            std::fs::remove_file(&mark).map_err(io)?;
            super::spool::sync_dir(dir)?;
        }
        tracing::info!(
            files = report.files,
            indexed = report.records,
            recovered = report.recovered.len(),
            dropped = report.dropped.len(),
            corrupt_files = report.corrupt_files.len(),
            corrupt_records = report.corrupt_records.len(),
            migrated = report.migrated.len(),
            moved_aside = report.moved_aside.is_some(),
            "queue index checked against the message files"
        );
        let batch = if group_commit { MAX_BATCH } else { 1 };
        let (flusher, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("queue-flush".into())
            .spawn(move || flush_loop(durable, rx, batch))
            .map_err(io)?;
        let store = Store {
            inner: Arc::new(Inner {
                db,
                envelopes,
                corrupt,
                spool,
                flusher,
                thread: Some(thread),
                _lock: lock,
            }),
        };
        Ok((store, report))
    }

    /// Stores a new message and returns once it is on disk: its message
    /// file first, then its index entry, then one (shared) flush.
    pub async fn commit(&self, msg: &QueuedMessage, body: &[u8]) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.inner.spool.write(msg, body)?;
        let result = match self.put(msg) {
            Ok(()) => self.flush_need(Need::Files).await,
            Err(e) => Err(e),
        };
        crate::metrics::queue_commit(started.elapsed());
        if result.is_err() {
            // Refused with 451: no copy is left for a restart to deliver.
            let _ = self.remove(&msg.id).await;
        }
        result
    }

    /// Flushes and records a clean stop (the entry count), so the next
    /// start can tell an index damaged while the server was down from the
    /// few orphans a crash leaves. Call last, when nothing writes anymore.
    pub async fn close_clean(&self) -> Result<(), StoreError> {
        self.flush().await?;
        self.write_clean_mark()
    }

    /// Writes `clean-stop` (after a flush).
    fn write_clean_mark(&self) -> Result<(), StoreError> {
        let dir = self.inner.spool.dir().parent().unwrap_or(Path::new("."));
        let path = dir.join(recover::CLEAN_STOP);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            writeln!(f, "entries={}", self.inner.envelopes.len())?;
            f.sync_all()
        };
        write().map_err(|source| FileError::Io {
            path: path.clone(),
            source,
        })?;
        super::spool::sync_dir(dir)?;
        Ok(())
    }

    /// Writes an envelope (state update) without waiting for disk: a lost
    /// update only means an idempotent delivery is repeated.
    pub fn put(&self, msg: &QueuedMessage) -> Result<(), StoreError> {
        let json = serde_json::to_vec(msg).expect("envelope serializes");
        self.inner.envelopes.insert(msg.id.as_bytes(), json)?;
        Ok(())
    }

    /// Removes a finished message: the file first, so a crash in between
    /// leaves an index entry without a file (dropped at the next start),
    /// never a file that would be delivered again.
    ///
    /// A file kept for reuse is renamed into `spare/` here, on the caller's
    /// async worker, as the accept path renames one out (a rename, ~27 µs;
    /// a hop to the blocking pool and back cost more in wake-ups than it
    /// saved). A file that is unlinked goes through the blocking pool:
    /// unlinking a file that was synced waits for the filesystem's journal
    /// (here 2.4 ms of wall time against 36 µs of CPU per 1 KiB file on
    /// ext4), and concurrent unlinks share that wait (332 unlinks/s from
    /// one thread, 7,348 from four, 16,962 from sixteen).
    pub async fn remove(&self, id: &str) -> Result<(), StoreError> {
        if !self.inner.spool.recycle(id)? {
            let store = self.clone();
            let owned = id.to_string();
            tokio::task::spawn_blocking(move || store.inner.spool.unlink(&owned))
                .await
                .map_err(|e| StoreError::Sled(sled::Error::Io(std::io::Error::other(e))))??;
        }
        self.inner.envelopes.remove(id.as_bytes())?;
        Ok(())
    }

    /// Loads one envelope. A corrupt one is moved aside and reads as gone.
    pub fn get(&self, id: &str) -> Result<Option<QueuedMessage>, StoreError> {
        match self.inner.envelopes.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => self.decode_or_set_aside(id.as_bytes(), &v),
        }
    }

    /// Loads one message from its file. A file that does not parse is
    /// moved to `corrupt/` and its envelope to the `corrupt` tree, and
    /// reads as gone.
    pub fn body(&self, id: &str) -> Result<Option<sled::IVec>, StoreError> {
        match self.inner.spool.read(id) {
            Ok(f) => Ok(f.map(|f| f.body)),
            Err(FileError::Format { path, reason }) => {
                let to = self.inner.spool.set_aside(&path)?;
                if let Some(raw) = self.inner.envelopes.remove(id.as_bytes())? {
                    self.inner.corrupt.insert(id.as_bytes(), raw)?;
                }
                crate::metrics::queue_recovery("corrupt_file", 1);
                tracing::error!(queue_id = %id, file = %path.display(), moved_to = %to.display(), reason = %reason, "message file does not parse; moved aside, not delivered");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Calls `f` with every envelope in turn, holding one at a time: what
    /// counts or retries the queue takes memory for one message, not for
    /// all. The first error, the store's or `f`'s, ends the walk.
    pub fn for_each(
        &self,
        mut f: impl FnMut(QueuedMessage) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for kv in self.inner.envelopes.iter() {
            let (k, v) = kv?;
            if let Some(m) = self.decode_or_set_aside(&k, &v)? {
                f(m)?;
            }
        }
        Ok(())
    }

    /// Decodes an envelope; one that does not decode is moved to the
    /// `corrupt` tree (raw bytes, same key) and logged with its id, so it
    /// neither stops the server from starting nor is retried forever.
    fn decode_or_set_aside(
        &self,
        key: &[u8],
        raw: &[u8],
    ) -> Result<Option<QueuedMessage>, StoreError> {
        let error = match serde_json::from_slice(raw) {
            Ok(msg) => return Ok(Some(msg)),
            Err(e) => e,
        };
        self.inner.corrupt.insert(key, raw)?;
        self.inner.envelopes.remove(key)?;
        let id = crate::observe::escape_bytes(key);
        tracing::error!(
            queue_id = %id,
            error = %error,
            total = self.corrupt_len(),
            "corrupt queue record moved to the `corrupt` tree; its body is kept"
        );
        Ok(None)
    }

    /// Number of envelopes set aside as corrupt (since the store was made).
    pub fn corrupt_len(&self) -> usize {
        self.inner.corrupt.len()
    }

    /// The sled database (plugins' kv namespaces live in it as trees).
    pub fn db(&self) -> sled::Db {
        self.inner.db.clone()
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.inner.envelopes.len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.inner.envelopes.is_empty()
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flush_need(Need::All).await
    }

    async fn flush_need(&self, need: Need) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.inner
            .flusher
            .send((need, done))
            .map_err(|_| StoreError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(e)))),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// Opens the index; a store that will not open is moved aside and a new,
/// empty one opened (the message files fill it).
fn open_or_move_aside(dir: &Path, cache: u64, report: &mut Report) -> Result<Index, StoreError> {
    let why = match recover::open_index(dir, cache) {
        Ok(ix) => return Ok(ix),
        Err(OpenError::Fatal(e)) => return Err(e.into()),
        Err(OpenError::Broken(why)) => why,
    };
    let aside = recover::move_aside(dir)?;
    tracing::error!(
        error = %why,
        moved_to = %aside.display(),
        "queue store does not open; moved aside (kept, not deleted), rebuilding the index from the message files"
    );
    crate::metrics::queue_recovery("store_moved_aside", 1);
    report.store_error = Some(why);
    report.moved_aside = Some(aside);
    match recover::open_index(dir, cache) {
        Ok(ix) => Ok(ix),
        Err(OpenError::Fatal(e)) => Err(e.into()),
        Err(OpenError::Broken(why)) => Err(StoreError::Sled(sled::Error::Unsupported(why))),
    }
}

/// After a clean stop, an index that no longer matches the files was
/// damaged while the server was down: the store as found (the copy taken
/// before sled opened it) is kept aside. `before` is dropped otherwise.
fn keep_if_damaged(
    dir: &Path,
    existed: bool,
    before: Option<std::path::PathBuf>,
    report: &mut Report,
) -> Result<(), StoreError> {
    let Some(why) = recover::lost_since_clean_stop(dir, report) else {
        return recover::drop_copy(before);
    };
    if existed {
        let copy = recover::keep_copy(dir, before)?;
        tracing::error!(error = %why, copied_to = %copy.display(), "queue store damaged since the last clean stop; a copy is kept as found, the index is repaired from the message files");
        crate::metrics::queue_recovery("store_copied_aside", 1);
        report.moved_aside = Some(copy);
    } else {
        tracing::error!(error = %why, "queue store missing; the index is rebuilt from the message files");
        recover::drop_copy(before)?;
    }
    report.store_error = Some(why);
    Ok(())
}

/// Takes the queue directory's lock (`<dir>/lock`, flock): one process at
/// a time, so a second server or `queue check` never mistakes a store in
/// use for a broken one.
fn lock(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| FileError::Io {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StoreError::Locked(dir.display().to_string()));
    }
    Ok(file)
}

/// What it takes to make the store's writes survive a power cut.
struct Durable {
    db: sled::Db,
    /// The queue directory, for `syncfs`.
    dir: std::fs::File,
    /// The file system's shared group sync (group commit on).
    group: Option<crate::syncfs::Group>,
}

impl Durable {
    fn sync(&self, need: Need) -> Result<(), sled::Error> {
        if need == Need::All {
            self.db.flush()?;
        }
        if let Some(group) = &self.group {
            return crate::syncfs::group_sync(group, "queue").map_err(sled::Error::Io);
        }
        crate::syncfs::syncfs(&self.dir).map_err(sled::Error::Io)
    }
}

/// The flusher thread: one flush for every request that is waiting (up to
/// `batch`; 1 when group commit is off), of the index too if one of them
/// asks for it. Ends when the store is dropped.
fn flush_loop(durable: Durable, rx: mpsc::Receiver<FlushReply>, batch: usize) {
    let mut waiting: Vec<FlushReply> = Vec::new();
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        waiting.extend(rx.try_iter().take(batch - 1));
        let need = waiting.iter().map(|(n, _)| *n).max().unwrap_or(Need::Files);
        let result = durable.sync(need).map_err(|e| e.to_string());
        tracing::trace!(batch = waiting.len(), ?need, "queue flush");
        for (_, done) in waiting.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::test_message as message;

    #[tokio::test]
    async fn corrupt_records_are_set_aside_and_recovered_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("queue");
        {
            let store = Store::open(&q, true, 1 << 20).unwrap();
            store.commit(&message("GOOD"), b"hi").await.unwrap();
            store.commit(&message("BAD1"), b"hi").await.unwrap();
            store.commit(&message("BAD2"), b"hi").await.unwrap();
            let envelopes = &store.inner.envelopes;
            envelopes.insert("BAD1", &b"{not json"[..]).unwrap();
            envelopes.insert("BAD2", &b"\xff"[..]).unwrap();
            // A record with no file: never acknowledged, nothing to recover.
            envelopes.insert("LOST", &b"{"[..]).unwrap();
            store.flush().await.unwrap();
            // Only one process has the queue at a time.
            assert!(matches!(
                Store::open(&q, true, 1 << 20),
                Err(StoreError::Locked(_))
            ));
        }
        let mode = std::fs::metadata(&q).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, DIR_MODE);
        let store = Store::open(&q, false, 1 << 20).unwrap();
        // At start: the bad records are set aside raw, their messages
        // indexed again from their files.
        let mut ids = Vec::new();
        store
            .for_each(|m| {
                ids.push(m.id);
                Ok(())
            })
            .unwrap();
        assert_eq!(ids, ["BAD1", "BAD2", "GOOD"]);
        assert_eq!(store.corrupt_len(), 3);
        assert_eq!(
            &*store.inner.corrupt.get("BAD1").unwrap().unwrap(),
            b"{not json"
        );
        assert_eq!(&*store.body("BAD1").unwrap().unwrap(), b"hi");
        // At run time: reads as gone, kept aside.
        store.inner.envelopes.insert("GOOD", &b"{"[..]).unwrap();
        assert!(store.get("GOOD").unwrap().is_none());
        assert_eq!(store.corrupt_len(), 4);
        assert_eq!(store.len(), 2);
    }

    #[tokio::test]
    async fn the_index_is_rebuilt_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("queue");
        {
            let store = Store::open(&q, true, 1 << 20).unwrap();
            store.commit(&message("M1"), b"one").await.unwrap();
            store
                .commit(&message("M2"), &[b'x'; 100_000])
                .await
                .unwrap();
            store.commit(&message("M3"), b"three").await.unwrap();
            store.remove("M3").await.unwrap();
            store.flush().await.unwrap();
        }
        assert!(!q.join("messages/M3").exists());
        // sled's files gone: the files are the queue.
        for f in ["db", "conf", "blobs"] {
            let p = q.join(f);
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else if p.exists() {
                std::fs::remove_file(p).unwrap();
            }
        }
        // A write a crash interrupted, and a damaged file.
        std::fs::write(q.join("messages/notes.txt"), b"not ours").unwrap();
        std::fs::write(q.join("messages/M5"), b"wasmtp-queue-file 1 env=3").unwrap();
        let report = Store::check(&q, 1 << 20, false).unwrap();
        assert_eq!(report.recovered, ["M1", "M2"]);
        assert_eq!(report.corrupt_files.len(), 1);
        assert!(!report.repaired && !report.is_clean());
        let store = Store::open(&q, true, 1 << 20).unwrap();
        let mut ids = Vec::new();
        store
            .for_each(|m| {
                ids.push(m.id);
                Ok(())
            })
            .unwrap();
        assert_eq!(ids, ["M1", "M2"]);
        assert_eq!(store.body("M2").unwrap().unwrap().len(), 100_000);
        assert!(q.join("corrupt/M5").exists());
        assert!(q.join("messages/notes.txt").exists());
        drop(store);
        let report = Store::check(&q, 1 << 20, false).unwrap();
        assert!(report.is_clean(), "{report:?}");
        // A store that does not open is moved aside, never deleted.
        std::fs::write(q.join("conf"), b"segment_size: nonsense\n").unwrap();
        let report = Store::check(&q, 1 << 20, false).unwrap();
        assert!(report.store_error.is_some(), "{report:?}");
        assert_eq!(report.recovered, ["M1", "M2"]);
        let report = Store::check(&q, 1 << 20, true).unwrap();
        let aside = report.moved_aside.clone().unwrap();
        assert!(aside.join("conf").exists() && aside.join("db").exists());
        let store = Store::open(&q, true, 1 << 20).unwrap();
        assert_eq!(store.len(), 2);
    }
}
