//! Message files: one self-describing file per queued message in
//! `<queue.dir>/messages/`, so acknowledged mail outlives the sled index.
//!
//! A file holds a header line, the envelope with every recipient's state at
//! acceptance (JSON, one line), and the message:
//!
//! ```text
//! wasmtp-queue-file 1 env=312 body=1024 crc32=8d1a3f0c\n
//! {"id":"…","sender":…,"recipients":[…],…}\n
//! <the message, exactly `body` octets>
//! ```
//!
//! The CRC-32 covers the envelope and the message, so a file cut short or
//! overwritten in the middle is told apart from a good one. A file is
//! created under its final name with `O_EXCL`, so a name is used once and
//! an existing file is never overwritten. (A temporary name and a rename
//! cost a second directory operation per message: 0.59 against 0.52 ms of
//! CPU per accepted 1 KiB message in the bench.) A crash mid-write leaves an
//! incomplete file with no index entry: never acknowledged, it is moved to
//! `corrupt/` and logged as such at the next start. Nothing here syncs: the
//! store's group flush (`syncfs` of the queue's filesystem) makes file and
//! index durable together before the `250`. A file that does not parse is
//! moved to `<queue.dir>/corrupt/` (never deleted) with the directories
//! synced.
//!
//! Files are recycled. A finished message's file is renamed into
//! `<queue.dir>/spare/` (up to [`MAX_SPARES`] files of at most
//! [`MAX_SPARE_SIZE`] octets) and the next accepted message takes one from
//! there, renamed to its id with `RENAME_NOREPLACE` and overwritten from
//! the start, instead of a new file created and an old one unlinked.
//! Unlinking or truncating a file whose blocks were synced waits for the
//! filesystem's journal (ext4 here: 2.4-3.2 ms of wall time, ~36 µs of
//! CPU, per 1 KiB file), while a rename costs ~27 µs and overwriting
//! allocated blocks ~2 µs; so in steady state no message costs a block
//! freed or allocated. A recycled file keeps the old contents past the new
//! record's end: the header's lengths say where the record ends and the
//! octets after it are ignored. A crash after the rename and before the
//! new record reached the disk leaves `messages/<id>` holding the previous
//! message: its envelope names another id, so it reads as an interrupted
//! write (never acknowledged), not as that message.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::QueuedMessage;

/// First word of every message file and its format version.
const MAGIC: &str = "wasmtp-queue-file 1";
/// Longest header line read (the numbers are small).
const MAX_HEADER: usize = 128;
/// How a parse error of a file cut short begins (a write a crash
/// interrupted, if the file has no index entry).
pub const INCOMPLETE: &str = "incomplete";
/// How the parse error of a spare file renamed into place, whose new
/// record never reached the disk, ends.
pub const NOT_OVERWRITTEN: &str = "a reused file not yet overwritten";
/// Mode of message files: the server's user only.
const FILE_MODE: u32 = 0o600;
/// Most files kept in `spare/` for reuse; a finished message's file beyond
/// that is unlinked.
pub const MAX_SPARES: usize = 512;
/// Largest file kept for reuse (a larger one is unlinked, so spares hold at
/// most `MAX_SPARES × MAX_SPARE_SIZE` = 64 MiB of disk).
pub const MAX_SPARE_SIZE: u64 = 128 * 1024;
/// Octets read first from a file: the header line and, for small
/// messages, everything.
const FIRST_READ: usize = 8 * 1024;

/// Why a message file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading, writing or renaming failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The file is not a complete message file.
    #[error("{path}: not a valid message file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// One message file, read back.
pub struct MessageFile {
    /// The envelope as it was at acceptance.
    pub envelope: QueuedMessage,
    /// The message (shared, not copied, by whoever delivers it).
    pub body: sled::IVec,
}

/// What `messages/` holds: files named by queue id, and anything else.
#[derive(Default)]
pub struct Listing {
    /// Queue ids with a file.
    pub ids: Vec<String>,
    /// Names that are not queue ids.
    pub other: Vec<PathBuf>,
}

/// The message-file directories of one queue.
pub struct Spool {
    messages: PathBuf,
    corrupt: PathBuf,
    spare: PathBuf,
    spares: Mutex<Spares>,
}

/// Files in `spare/`, by number, and the next number to give one.
#[derive(Default)]
struct Spares {
    free: Vec<u64>,
    next: u64,
}

/// True if `id` can name a file: 1 to 64 ASCII letters and digits (queue
/// ids are 16 hex digits), so an id from the admin API can never reach
/// outside `messages/`.
pub fn is_file_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Spool {
    /// Opens `<queue_dir>/messages`, `corrupt` and `spare`, creating them
    /// (mode 0700, the queue directory synced so they survive a crash),
    /// and takes stock of the spare files.
    pub fn open(queue_dir: &Path) -> Result<Spool, FileError> {
        let spool = Spool {
            messages: queue_dir.join("messages"),
            corrupt: queue_dir.join("corrupt"),
            spare: queue_dir.join("spare"),
            spares: Mutex::default(),
        };
        let mut created = false;
        for d in [&spool.messages, &spool.corrupt, &spool.spare] {
            if !d.is_dir() {
                std::fs::DirBuilder::new()
                    .mode(super::store::DIR_MODE)
                    .create(d)
                    .map_err(|source| io_err(d, source))?;
                created = true;
            }
        }
        if created {
            sync_dir(queue_dir)?;
        }
        let mut spares = Spares::default();
        let entries = std::fs::read_dir(&spool.spare).map_err(|e| io_err(&spool.spare, e))?;
        for e in entries {
            let e = e.map_err(|e| io_err(&spool.spare, e))?;
            if let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                spares.free.push(n);
                spares.next = spares.next.max(n + 1);
            }
        }
        *spool.spares.lock().expect("spares lock") = spares;
        Ok(spool)
    }

    /// Files waiting in `spare/` for reuse.
    pub fn spare_count(&self) -> usize {
        self.spares.lock().expect("spares lock").free.len()
    }

    /// The directory of message files.
    pub fn dir(&self) -> &Path {
        &self.messages
    }

    /// The file of message `id` (None for an id that cannot be a name).
    pub fn path(&self, id: &str) -> Option<PathBuf> {
        is_file_id(id).then(|| self.messages.join(id))
    }

    /// Writes `msg` and `body` as message `id`'s file: a spare file
    /// renamed to the id and overwritten, or a new one. Not synced: the
    /// store's group flush does that. Fails if a file of that id exists.
    pub fn write(&self, msg: &QueuedMessage, body: &[u8]) -> Result<(), FileError> {
        let path = self.path(&msg.id).ok_or_else(|| FileError::Format {
            path: self.messages.join(&msg.id),
            reason: "queue id is not a file name".into(),
        })?;
        let json = serde_json::to_vec(msg).expect("envelope serializes");
        let mut crc = crc32fast::Hasher::new();
        crc.update(&json);
        crc.update(body);
        let mut head = format!(
            "{MAGIC} env={} body={} crc32={:08x}\n",
            json.len(),
            body.len(),
            crc.finalize()
        )
        .into_bytes();
        head.extend_from_slice(&json);
        head.push(b'\n');
        let mut file = match self.reuse(&path)? {
            Some(file) => file,
            None => OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&path)
                .map_err(|source| io_err(&path, source))?,
        };
        let written = write_both(&mut file, &head, body);
        written.map_err(|source| {
            // Ours, half written (a full disk): not left for a restart.
            let _ = std::fs::remove_file(&path);
            io_err(&path, source)
        })
    }

    /// A spare file renamed to `path` (never over an existing name) and
    /// opened for overwriting; None if there is no spare.
    fn reuse(&self, path: &Path) -> Result<Option<File>, FileError> {
        loop {
            let Some(n) = self.spares.lock().expect("spares lock").free.pop() else {
                return Ok(None);
            };
            let from = self.spare.join(n.to_string());
            match rename_noreplace(&from, path) {
                Ok(()) => {}
                // Gone (removed by hand): try the next one.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    self.spares.lock().expect("spares lock").free.push(n);
                    return Err(io_err(path, source));
                }
            }
            crate::metrics::queue_file("reused");
            return OpenOptions::new()
                .write(true)
                .open(path)
                .map(Some)
                .map_err(|source| io_err(path, source));
        }
    }

    /// Reads message `id`; None if it has no file.
    pub fn read(&self, id: &str) -> Result<Option<MessageFile>, FileError> {
        let Some(path) = self.path(id) else {
            return Ok(None);
        };
        let bytes = match read_record(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_err(&path, source)),
        };
        let file = parse(bytes).map_err(|reason| FileError::Format {
            path: path.clone(),
            reason,
        })?;
        if file.envelope.id != id {
            // A recycled file whose new record never reached the disk.
            return Err(FileError::Format {
                path,
                reason: format!(
                    "{INCOMPLETE}: holds message {} ({NOT_OVERWRITTEN})",
                    file.envelope.id
                ),
            });
        }
        Ok(Some(file))
    }

    /// Puts a file back into `spare/` (a spare renamed into place whose
    /// new record never reached the disk: it holds a finished message).
    pub fn take_back(&self, path: &Path) -> Result<(), FileError> {
        let n = {
            let mut spares = self.spares.lock().expect("spares lock");
            spares.next += 1;
            spares.next - 1
        };
        rename_noreplace(path, &self.spare.join(n.to_string())).map_err(|e| io_err(path, e))?;
        self.spares.lock().expect("spares lock").free.push(n);
        sync_dir(&self.spare)?;
        sync_dir(&self.messages)
    }

    /// Moves message `id`'s file into `spare/` if it may be kept there (a
    /// rename, ~27 µs, quick enough for an async worker). True when the
    /// file is gone from `messages/` (or never was); false when it must be
    /// unlinked instead ([`Spool::unlink`]): spares are full or it is large.
    pub fn recycle(&self, id: &str) -> Result<bool, FileError> {
        let Some(path) = self.path(id) else {
            return Ok(true);
        };
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(io_err(&path, e)),
        };
        if len > MAX_SPARE_SIZE {
            return Ok(false);
        }
        let n = {
            let mut spares = self.spares.lock().expect("spares lock");
            (spares.free.len() < MAX_SPARES).then(|| {
                spares.next += 1;
                spares.next - 1
            })
        };
        let Some(n) = n else {
            return Ok(false);
        };
        match rename_noreplace(&path, &self.spare.join(n.to_string())) {
            Ok(()) => {
                self.spares.lock().expect("spares lock").free.push(n);
                crate::metrics::queue_file("spared");
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Unlinks message `id`'s file (gone already is fine). May wait for
    /// the filesystem's journal: call it off the async workers.
    pub fn unlink(&self, id: &str) -> Result<(), FileError> {
        let Some(path) = self.path(id) else {
            return Ok(());
        };
        crate::metrics::queue_file("unlinked");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path, e)),
            _ => Ok(()),
        }
    }

    /// Lists `messages/`.
    pub fn list(&self) -> Result<Listing, FileError> {
        let mut out = Listing::default();
        let entries = std::fs::read_dir(&self.messages).map_err(|e| io_err(&self.messages, e))?;
        for e in entries {
            let e = e.map_err(|e| io_err(&self.messages, e))?;
            match e.file_name().to_str() {
                Some(name) if is_file_id(name) => out.ids.push(name.to_string()),
                _ => out.other.push(e.path()),
            }
        }
        out.ids.sort();
        Ok(out)
    }

    /// Moves a file that does not parse to `corrupt/` (a numbered name if
    /// one is there already) and syncs both directories. Returns where.
    pub fn set_aside(&self, path: &Path) -> Result<PathBuf, FileError> {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let mut to = self.corrupt.join(&*name);
        let mut n = 1;
        while to.exists() {
            to = self.corrupt.join(format!("{name}.{n}"));
            n += 1;
        }
        std::fs::rename(path, &to).map_err(|e| io_err(path, e))?;
        sync_dir(&self.corrupt)?;
        sync_dir(&self.messages)?;
        Ok(to)
    }
}

/// Parses a whole message file.
fn parse(bytes: Vec<u8>) -> Result<MessageFile, String> {
    let Header { nl, env, body, crc } = header(&bytes)?;
    let start = nl + 1;
    let expected = start
        .checked_add(env)
        .and_then(|n| n.checked_add(1 + body))
        .ok_or("sizes overflow")?;
    if bytes.len() < expected {
        return Err(format!(
            "{INCOMPLETE}: {} octets, the header says {expected}",
            bytes.len()
        ));
    }
    // Octets past the record are what a recycled file held before.
    let json = &bytes[start..start + env];
    let body_at = start + env + 1;
    let mut h = crc32fast::Hasher::new();
    h.update(json);
    h.update(&bytes[body_at..expected]);
    if h.finalize() != crc || bytes[start + env] != b'\n' {
        return Err("checksum mismatch (damaged contents)".into());
    }
    let envelope: QueuedMessage =
        serde_json::from_slice(json).map_err(|e| format!("envelope: {e}"))?;
    let body = sled::IVec::from(bytes).subslice(body_at, body);
    Ok(MessageFile { envelope, body })
}

/// Reads a file's record: up to [`FIRST_READ`] octets (stopping once a
/// whole record is in), then the rest
/// of what the header says the record spans (never the stale tail of a
/// recycled file). What does not parse is left to [`parse`].
fn read_record(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut bytes = vec![0; FIRST_READ];
    let mut got = 0;
    while got < bytes.len() {
        match f.read(&mut bytes[got..])? {
            0 => break,
            n => got += n,
        }
        // A whole small record came in one read: no second read to find
        // the end of the file (a syscall per delivered message).
        if record_len(&bytes[..got]).is_some_and(|want| got >= want) {
            break;
        }
    }
    bytes.truncate(got);
    if let Some(want) = record_len(&bytes)
        && want > got
    {
        // Never more than the file holds: a damaged header cannot make
        // this allocate past the file.
        let more = (want - got) as u64;
        let limit = f.metadata()?.len().saturating_sub(got as u64).min(more);
        f.take(limit).read_to_end(&mut bytes)?;
    }
    Ok(bytes)
}

/// The record's length from a header line, if it has one that parses.
fn record_len(bytes: &[u8]) -> Option<usize> {
    let h = header(bytes).ok()?;
    (h.nl + 1).checked_add(h.env)?.checked_add(1 + h.body)
}

/// A file's header line, parsed.
struct Header {
    /// Where the line ends (its `\n`).
    nl: usize,
    /// Length of the envelope.
    env: usize,
    /// Length of the message.
    body: usize,
    /// CRC-32 of envelope and message.
    crc: u32,
}

/// Parses the header line at the start of `bytes`.
fn header(bytes: &[u8]) -> Result<Header, String> {
    let nl = memchr::memchr(b'\n', &bytes[..bytes.len().min(MAX_HEADER)])
        .ok_or_else(|| format!("{INCOMPLETE}: no complete header line"))?;
    let head = std::str::from_utf8(&bytes[..nl]).map_err(|_| "header is not text")?;
    let rest = head
        .strip_prefix(MAGIC)
        .ok_or_else(|| format!("header {head:?} does not start with {MAGIC:?}"))?;
    let mut env = None;
    let mut body = None;
    let mut crc = None;
    for field in rest.split_ascii_whitespace() {
        match field.split_once('=') {
            Some(("env", v)) => env = v.parse::<usize>().ok(),
            Some(("body", v)) => body = v.parse::<usize>().ok(),
            Some(("crc32", v)) => crc = u32::from_str_radix(v, 16).ok(),
            _ => return Err(format!("unknown header field {field:?}")),
        }
    }
    let (Some(env), Some(body), Some(crc)) = (env, body, crc) else {
        return Err(format!("header {head:?} lacks env, body or crc32"));
    };
    Ok(Header { nl, env, body, crc })
}

/// `rename(2)` that fails with `AlreadyExists` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// fsync of a directory, so names created, renamed or removed in it last.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Writes `head` then `body` with one `writev` where the kernel takes
/// both (a syscall per accepted message saved), looping on short writes.
fn write_both(file: &mut File, head: &[u8], body: &[u8]) -> io::Result<()> {
    let mut bufs = [io::IoSlice::new(head), io::IoSlice::new(body)];
    let mut bufs = &mut bufs[..];
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn io_err(path: &Path, source: io::Error) -> FileError {
    FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished message's file goes, as `Store::remove` does it: into
    /// `spare/`, or unlinked.
    fn remove(spool: &Spool, id: &str) {
        if !spool.recycle(id).unwrap() {
            spool.unlink(id).unwrap();
        }
    }
    use crate::queue::test_message as message;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body = vec![b'x'; 5000];
        spool.write(&message("A1"), &body).unwrap();
        let f = spool.read("A1").unwrap().unwrap();
        assert_eq!(&*f.body, &body[..]);
        assert_eq!(f.envelope.recipients[0].address, "a@example.test");
        use std::os::unix::fs::PermissionsExt;
        let path = spool.path("A1").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
        // A name is used once.
        assert!(spool.write(&message("A1"), b"other").is_err());
        assert_eq!(&*spool.read("A1").unwrap().unwrap().body, &body[..]);
        // Cut short, or zeroed in the middle: refused, never half-read.
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 10]).unwrap();
        assert!(matches!(spool.read("A1"), Err(FileError::Format { .. })));
        let mut zeroed = full.clone();
        zeroed[full.len() / 2..full.len() / 2 + 100].fill(0);
        std::fs::write(&path, &zeroed).unwrap();
        let e = spool.read("A1").err().unwrap().to_string();
        assert!(e.contains("checksum"), "{e}");
        let to = spool.set_aside(&path).unwrap();
        assert_eq!(to, dir.path().join("corrupt/A1"));
        assert!(spool.read("A1").unwrap().is_none());
        // Ids that are not names never reach the file system.
        assert!(spool.path("../x").is_none());
        assert!(spool.read("../../etc/passwd").unwrap().is_none());
        assert_eq!(spool.list().unwrap().ids, Vec::<String>::new());
    }

    #[test]
    fn finished_files_are_reused_and_their_old_contents_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let big = vec![b'b'; 20_000];
        spool.write(&message("A1"), &big).unwrap();
        remove(&spool, "A1");
        assert!(spool.read("A1").unwrap().is_none());
        assert_eq!(spool.spare_count(), 1);
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let spare_ino = ino(&dir.path().join("spare/0"));
        // The next message takes the spare: the same inode, shorter record.
        spool.write(&message("B2"), b"short").unwrap();
        assert_eq!(spool.spare_count(), 0);
        let path = spool.path("B2").unwrap();
        assert_eq!(ino(&path), spare_ino);
        assert!(std::fs::metadata(&path).unwrap().len() > 20_000);
        let f = spool.read("B2").unwrap().unwrap();
        assert_eq!(&*f.body, b"short");
        assert_eq!(f.envelope.id, "B2");
        assert_eq!(spool.list().unwrap().ids, vec!["B2".to_string()]);
        // Reopened, the spares are found again.
        remove(&spool, "B2");
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.spare_count(), 1);
        // A crash after the rename, before the new record: the file holds
        // the old message and reads as an interrupted write, not as it.
        std::fs::rename(dir.path().join("spare/1"), spool.messages.join("C3")).unwrap();
        let e = spool.read("C3").err().unwrap().to_string();
        assert!(
            e.contains(INCOMPLETE) && e.contains("holds message B2"),
            "{e}"
        );
        // Large files are not kept.
        std::fs::remove_file(spool.messages.join("C3")).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool
            .write(&message("D4"), &vec![b'x'; MAX_SPARE_SIZE as usize])
            .unwrap();
        // recycle leaves it for an unlink off the async workers.
        assert!(!spool.recycle("D4").unwrap());
        assert!(spool.path("D4").unwrap().exists());
        remove(&spool, "D4");
        assert!(!spool.path("D4").unwrap().exists());
        assert_eq!(spool.spare_count(), 0);
        // A name is still used once, spare or not.
        spool.write(&message("E5"), b"one").unwrap();
        remove(&spool, "E5");
        spool.write(&message("F6"), b"two").unwrap();
        assert!(spool.write(&message("F6"), b"three").is_err());
        assert_eq!(&*spool.read("F6").unwrap().unwrap().body, b"two");
    }
}
