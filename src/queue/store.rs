//! The queue store: sled trees for envelopes (JSON) and bodies (raw bytes).
//!
//! `commit` writes the body, then the envelope, then waits until both are
//! flushed to disk. sled's own `flush` only calls `sync_file_range` on its
//! log and never syncs the files it keeps large values in (`blobs/`), which
//! survives a process crash but not a power cut; so a durable flush here is
//! sled's flush followed by `syncfs` on the queue's filesystem, which also
//! reaches the device cache and the file metadata. Flushes run on a
//! dedicated thread, not on tokio's blocking pool, so a pool busy with
//! other work (password hashing under an AUTH flood) never delays a `250`.
//! With group commit on, concurrent commits share a single flush: the
//! thread takes every request that arrived while the previous flush ran and
//! makes them durable with one fsync. sled recovers a prefix of its log
//! after a crash, so a body without an envelope can be left behind (removed
//! at open) but never an envelope without its body.
//!
//! An envelope that does not decode is never handed out: it is moved to the
//! `corrupt` tree under its id with its raw bytes (its body stays in
//! `bodies`), logged, and the rest of the queue carries on.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use super::QueuedMessage;

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
}

/// Mode of the queue directory: the store holds every queued message, so
/// only the server's user may enter it (sled's own files are created under
/// the server's umask, 077).
pub const DIR_MODE: u32 = 0o700;

/// Most flush requests one group commit answers.
const MAX_BATCH: usize = 4096;

type FlushReply = oneshot::Sender<Result<(), String>>;

/// Handle to the queue store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    envelopes: sled::Tree,
    bodies: sled::Tree,
    /// Envelopes that did not decode, raw, by id.
    corrupt: sled::Tree,
    /// Requests for the flusher thread; it stops when this is dropped.
    flusher: mpsc::Sender<FlushReply>,
    thread: Option<std::thread::JoinHandle<()>>,
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
    /// Opens (or creates) the store at `dir` and starts its flusher thread;
    /// sled caches at most `cache` bytes of pages.
    pub fn open(dir: &Path, group_commit: bool, cache: u64) -> Result<Store, StoreError> {
        let io = |e| StoreError::Sled(sled::Error::Io(e));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io)?;
        // A queue dir made by an older version (0755) is closed too: it is
        // the server's alone.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io)?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(cache)
            .open()?;
        let envelopes = db.open_tree("envelopes")?;
        let bodies = db.open_tree("bodies")?;
        let corrupt = db.open_tree("corrupt")?;
        // Bodies whose envelope never made it to disk were never
        // acknowledged; those of corrupt envelopes are kept for repair.
        for k in bodies.iter().keys() {
            let k = k?;
            if !envelopes.contains_key(&k)? && !corrupt.contains_key(&k)? {
                bodies.remove(&k)?;
            }
        }
        let durable = Durable {
            db: db.clone(),
            dir: std::fs::File::open(dir).map_err(io)?,
        };
        let batch = if group_commit { MAX_BATCH } else { 1 };
        let (flusher, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("queue-flush".into())
            .spawn(move || flush_loop(durable, rx, batch))
            .map_err(io)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                envelopes,
                bodies,
                corrupt,
                flusher,
                thread: Some(thread),
            }),
        })
    }

    /// Stores a new message and returns once it is on disk.
    pub async fn commit(&self, msg: &QueuedMessage, body: &[u8]) -> Result<(), StoreError> {
        self.inner.bodies.insert(msg.id.as_bytes(), body)?;
        self.put(msg)?;
        self.flush().await
    }

    /// Writes an envelope (state update) without waiting for disk: a lost
    /// update only means an idempotent delivery is repeated.
    pub fn put(&self, msg: &QueuedMessage) -> Result<(), StoreError> {
        let json = serde_json::to_vec(msg).expect("envelope serializes");
        self.inner.envelopes.insert(msg.id.as_bytes(), json)?;
        Ok(())
    }

    /// Removes a finished message.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.inner.envelopes.remove(id.as_bytes())?;
        self.inner.bodies.remove(id.as_bytes())?;
        Ok(())
    }

    /// Loads one envelope. A corrupt one is moved aside and reads as gone.
    pub fn get(&self, id: &str) -> Result<Option<QueuedMessage>, StoreError> {
        match self.inner.envelopes.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => self.decode_or_set_aside(id.as_bytes(), &v),
        }
    }

    /// Loads one body.
    pub fn body(&self, id: &str) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.inner.bodies.get(id.as_bytes())?)
    }

    /// All envelopes, oldest first; corrupt ones are moved aside.
    pub fn all(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.envelopes.iter() {
            let (k, v) = kv?;
            out.extend(self.decode_or_set_aside(&k, &v)?);
        }
        Ok(out)
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
        let (done, wait) = oneshot::channel();
        self.inner
            .flusher
            .send(done)
            .map_err(|_| StoreError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(e)))),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// What it takes to make the store's writes survive a power cut.
struct Durable {
    db: sled::Db,
    /// The queue directory, for `syncfs`.
    dir: std::fs::File,
}

impl Durable {
    fn sync(&self) -> Result<(), sled::Error> {
        self.db.flush()?;
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs only reads the descriptor, which `self.dir` keeps open.
        if unsafe { libc::syncfs(self.dir.as_raw_fd()) } != 0 {
            return Err(sled::Error::Io(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// The flusher thread: one flush for every request that is waiting (up to
/// `batch`; 1 when group commit is off). Ends when the store is dropped.
fn flush_loop(durable: Durable, rx: mpsc::Receiver<FlushReply>, batch: usize) {
    let mut waiting = Vec::new();
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        waiting.extend(rx.try_iter().take(batch - 1));
        let result = durable.sync().map_err(|e| e.to_string());
        tracing::trace!(batch = waiting.len(), "queue flush");
        for done in waiting.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueuedRcpt, Route};

    fn message(id: &str) -> QueuedMessage {
        QueuedMessage {
            id: id.into(),
            received_at: 1,
            sender: None,
            recipients: vec![QueuedRcpt::pending(
                "a@example.test".into(),
                "a".into(),
                Route::Local,
            )],
            size: 2,
            next_attempt: 0,
            ret: None,
            envid: None,
            delay_dsn_sent: false,
            held: false,
        }
    }

    #[tokio::test]
    async fn corrupt_records_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("queue");
        {
            let store = Store::open(&q, true, 1 << 20).unwrap();
            store.commit(&message("GOOD"), b"hi").await.unwrap();
            store.commit(&message("BAD1"), b"hi").await.unwrap();
            store.commit(&message("BAD2"), b"hi").await.unwrap();
            store
                .inner
                .envelopes
                .insert("BAD1", &b"{not json"[..])
                .unwrap();
            store.inner.envelopes.insert("BAD2", &b"\xff"[..]).unwrap();
            store.flush().await.unwrap();
        }
        let mode = std::fs::metadata(&q).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, DIR_MODE);
        let store = Store::open(&q, false, 1 << 20).unwrap();
        // At run time: reads as gone, kept aside.
        assert!(store.get("BAD2").unwrap().is_none());
        // At start: the good one is recovered, the bad one set aside.
        let ids: Vec<_> = store.all().unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["GOOD"]);
        assert_eq!(store.corrupt_len(), 2);
        assert_eq!(
            &*store.inner.corrupt.get("BAD1").unwrap().unwrap(),
            b"{not json"
        );
        assert_eq!(store.len(), 1);
        store.flush().await.unwrap();
        drop(store);
        // Bodies of set-aside records survive the orphan sweep at open.
        let store = Store::open(&q, true, 1 << 20).unwrap();
        assert!(store.body("BAD1").unwrap().is_some());
    }
}
