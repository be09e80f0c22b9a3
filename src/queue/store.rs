//! The queue store: sled trees for envelopes (JSON) and bodies (raw bytes).
//!
//! `commit` writes the body, then the envelope, then waits until both are
//! flushed to disk. sled's own `flush` only calls `sync_file_range` on its
//! log and never syncs the files it keeps large values in (`blobs/`), which
//! survives a process crash but not a power cut; so a durable flush here is
//! sled's flush followed by `syncfs` on the queue's filesystem, which also
//! reaches the device cache and the file metadata. With group commit on, concurrent commits share a single
//! flush: a committer task takes every request that arrived while the
//! previous flush ran and makes them durable with one fsync. sled recovers
//! a prefix of its log after a crash, so a body without an envelope can be
//! left behind (removed at open) but never an envelope without its body.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::QueuedMessage;

/// A failure of the queue store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error.
    #[error("queue store: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be decoded.
    #[error("queue store: corrupt record {id}: {source}")]
    Corrupt {
        /// Queue id.
        id: String,
        /// Decoder error.
        source: serde_json::Error,
    },
    /// The committer task is gone (shutdown).
    #[error("queue store: committer stopped")]
    Closed,
    /// A blocking task panicked or was cancelled.
    #[error("queue store: {0}")]
    Join(#[from] tokio::task::JoinError),
}

type FlushReply = oneshot::Sender<Result<(), String>>;

/// Handle to the queue store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    durable: Durable,
    envelopes: sled::Tree,
    bodies: sled::Tree,
    committer: Option<mpsc::UnboundedSender<FlushReply>>,
}

impl Store {
    /// Opens (or creates) the store at `dir`. Must run inside a tokio
    /// runtime when `group_commit` is on.
    pub fn open(dir: &Path, group_commit: bool) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let envelopes = db.open_tree("envelopes")?;
        let bodies = db.open_tree("bodies")?;
        // Bodies whose envelope never made it to disk were never acknowledged.
        for k in bodies.iter().keys() {
            let k = k?;
            if !envelopes.contains_key(&k)? {
                bodies.remove(&k)?;
            }
        }
        let durable = Durable {
            db: db.clone(),
            dir: std::fs::File::open(dir).map_err(sled::Error::Io)?,
        };
        let for_committer = durable.try_clone().map_err(sled::Error::Io)?;
        let committer = group_commit.then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(committer(for_committer, rx));
            tx
        });
        Ok(Store {
            inner: Arc::new(Inner {
                durable,
                envelopes,
                bodies,
                committer,
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

    /// Loads one envelope.
    pub fn get(&self, id: &str) -> Result<Option<QueuedMessage>, StoreError> {
        match self.inner.envelopes.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => decode(id, &v).map(Some),
        }
    }

    /// Loads one body.
    pub fn body(&self, id: &str) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.inner.bodies.get(id.as_bytes())?)
    }

    /// All envelopes, oldest first.
    pub fn all(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.envelopes.iter() {
            let (k, v) = kv?;
            out.push(decode(&String::from_utf8_lossy(&k), &v)?);
        }
        Ok(out)
    }

    /// The sled database (plugins' kv namespaces live in it as trees).
    pub fn db(&self) -> sled::Db {
        self.inner.durable.db.clone()
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
        match &self.inner.committer {
            Some(tx) => {
                let (done, wait) = oneshot::channel();
                tx.send(done).map_err(|_| StoreError::Closed)?;
                match wait.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(e)))),
                    Err(_) => Err(StoreError::Closed),
                }
            }
            None => {
                let durable = self.inner.durable.try_clone().map_err(sled::Error::Io)?;
                tokio::task::spawn_blocking(move || durable.sync()).await??;
                Ok(())
            }
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
    fn try_clone(&self) -> std::io::Result<Durable> {
        Ok(Durable {
            db: self.db.clone(),
            dir: self.dir.try_clone()?,
        })
    }

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

fn decode(id: &str, v: &[u8]) -> Result<QueuedMessage, StoreError> {
    serde_json::from_slice(v).map_err(|source| StoreError::Corrupt {
        id: id.to_string(),
        source,
    })
}

/// The group-commit loop: one flush for every request that is waiting.
async fn committer(durable: Durable, mut rx: mpsc::UnboundedReceiver<FlushReply>) {
    let durable = Arc::new(durable);
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let d = durable.clone();
        let result = match tokio::task::spawn_blocking(move || d.sync()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        tracing::trace!(batch = batch.len(), "queue flush");
        for done in batch.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}
