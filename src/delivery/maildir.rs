//! Maildir delivery (https://cr.yp.to/proto/maildir.html): write an
//! unnamed file on the maildir's file system and link it into `new/` (where
//! the file system has no `O_TMPFILE`: write into `tmp/`, rename into
//! `new/`), then make both durable with one `syncfs` of the mail file
//! system that concurrent deliveries share (`crate::syncfs`, with the
//! queue's group commit on the same file system): a delivery returns, and
//! the queue drops the copy, only after a `syncfs` that started after its
//! link or rename has finished.
//! One sync covers every copy written meanwhile, instead of an fsync of
//! each file and of `new/` per copy (a fifth of the server's samples at
//! 1 KiB).
//!
//! Mail is private to the server's user: directories are created 0700 and
//! files 0600 whatever the umask, and the `tmp/` file is created
//! exclusively without following a symlink, so nothing planted at its name
//! is written through.
//!
//! File names are derived from the queue id and the recipient's index, not
//! from a clock or counter, so a delivery repeated after a crash (the queue
//! had not yet recorded it) lands on the same name instead of making a
//! second copy.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::value::LineEndings;
use crate::syncfs::{Group, group_of, group_sync_within};

/// True if `name` may be used as a directory name under the mail root:
/// no path separators, no leading dot, no control characters, and none of
/// the characters that classic relay tricks use (`%`, `!`, `@`).
pub fn is_safe_mailbox(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| !c.is_control() && !" /\\:%!@\"".contains(c))
}

/// One message copy to write.
pub struct MaildirCopy<'a> {
    /// Maildir root of the recipient (`<mail_dir>/<mailbox>`).
    pub dir: PathBuf,
    /// Unique, deterministic base name.
    pub name: String,
    /// Header lines to prepend (Return-Path, Delivered-To), CRLF-terminated.
    pub prefix: &'a [u8],
    /// The queued message (CRLF line endings).
    pub body: &'a [u8],
    /// Line endings in the file.
    pub line_endings: LineEndings,
    /// Look for an earlier copy (after a restart) before writing.
    pub check_existing: bool,
}

/// The deterministic Maildir base name for a queued recipient.
pub fn file_name(received_secs: i64, queue_id: &str, rcpt_index: usize, hostname: &str) -> String {
    let host: String = hostname
        .chars()
        .map(|c| match c {
            '/' => "\\057".to_string(),
            ':' => "\\072".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!("{received_secs}.Q{queue_id}R{rcpt_index}.{host}")
}

/// Mode of the directories delivery creates (the mail root, each Maildir
/// and its `tmp`, `new`, `cur`).
pub const DIR_MODE: u32 = 0o700;
/// Mode of each message file.
pub const FILE_MODE: u32 = 0o600;

/// A failed delivery step and the path it failed on.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}", path.display())]
pub struct MaildirError {
    /// What was being done (`creating`, `writing`, ...).
    pub step: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

/// Attaches the step and path to an I/O result.
fn at<T>(step: &'static str, path: &Path, r: io::Result<T>) -> Result<T, MaildirError> {
    r.map_err(|source| MaildirError {
        step,
        path: path.to_path_buf(),
        source,
    })
}

fn ensure_dirs(dir: &Path) -> Result<(), MaildirError> {
    let mut builder = DirBuilder::new();
    builder.recursive(true).mode(DIR_MODE);
    for sub in ["tmp", "new", "cur"] {
        let d = dir.join(sub);
        at("creating", &d, builder.create(&d))?;
    }
    Ok(())
}

/// Creates `path` for writing: exclusively, mode 0600, never through a
/// symlink. A file left at the name by an attempt that crashed mid-write
/// (names are deterministic) is removed first; `unlink` removes a symlink
/// itself, not its target.
fn create_tmp(path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(path)?;
            open()
        }
        r => r,
    }
}

fn already_delivered(copy: &MaildirCopy<'_>) -> io::Result<bool> {
    if copy.dir.join("new").join(&copy.name).exists() {
        return Ok(true);
    }
    let prefix = format!("{}:", copy.name);
    match fs::read_dir(copy.dir.join("cur")) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                let n = e.file_name();
                let n = n.to_string_lossy();
                if *n == *copy.name || n.starts_with(&prefix) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `body` with line endings converted as configured.
fn write_converted(w: &mut impl Write, data: &[u8], endings: LineEndings) -> io::Result<()> {
    if endings == LineEndings::Crlf {
        return w.write_all(data);
    }
    // Each CR LF loses its CR; a lone CR or LF stays as it is.
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', data) {
        if lf > start && data[lf - 1] == b'\r' {
            w.write_all(&data[start..lf - 1])?;
            start = lf;
        }
    }
    w.write_all(&data[start..])
}

/// Writes the `tmp/` file (made durable by the group sync).
fn write_tmp(copy: &MaildirCopy<'_>, tmp: &Path) -> Result<(), MaildirError> {
    let f = at("creating", tmp, create_tmp(tmp))?;
    at("writing", tmp, write_file(copy, f)).map(drop)
}

/// Writes prefix and message into `f`, line endings converted.
fn write_file(copy: &MaildirCopy<'_>, f: File) -> io::Result<File> {
    let mut w = io::BufWriter::with_capacity(64 * 1024, f);
    write_converted(&mut w, copy.prefix, copy.line_endings)?;
    write_converted(&mut w, copy.body, copy.line_endings)?;
    w.into_inner().map_err(|e| e.into_error())
}

/// Set when unnamed files cannot be used here (no `O_TMPFILE` on the mail
/// file system, no `/proc`, or `linkat` refused): every later copy goes
/// through `tmp/`.
static NO_UNNAMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes the copy as an unnamed file on the maildir's file system
/// (`O_TMPFILE` in `tmp/`) and, once it is whole, gives it its name in
/// `new/` with `linkat`: one directory operation where `tmp/` and a rename
/// take three, and no lock of `tmp/` (concurrent deliveries to one mailbox
/// queued on its lock and on the rename's). A crash before the link leaves
/// nothing behind; nobody ever sees a partial file. Ok(false): not done,
/// write through `tmp/` (unsupported here, or the name is taken: the
/// rename replaces it, as a repeated delivery must).
fn write_unnamed(copy: &MaildirCopy<'_>, dest: &Path) -> Result<bool, MaildirError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::Ordering::Relaxed;
    static PROC: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| Path::new("/proc/self/fd").is_dir());
    if NO_UNNAMED.load(Relaxed) || !*PROC {
        return Ok(false);
    }
    let tmp = copy.dir.join("tmp");
    let opened = OpenOptions::new()
        .write(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_TMPFILE)
        .open(&tmp);
    let f = match opened {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            NO_UNNAMED.store(true, Relaxed);
            return Ok(false);
        }
        Err(e) => return at("creating", &tmp, Err(e)),
    };
    let f = at("writing", &tmp, write_file(copy, f))?;
    let (Ok(from), Ok(to)) = (
        std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())),
        std::ffi::CString::new(dest.as_os_str().as_bytes()),
    ) else {
        return Ok(false);
    };
    // SAFETY: both paths are NUL-terminated strings that outlive the call;
    // `f` keeps the descriptor named by `from` open.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        Some(libc::EPERM | libc::EACCES | libc::EOPNOTSUPP | libc::EXDEV) => {
            NO_UNNAMED.store(true, Relaxed);
            Ok(false)
        }
        _ => at("linking", dest, Err(e)),
    }
}

/// Delivers one copy, durable when it returns; returns the final path
/// (the queue writes a message's copies with [`write`] and syncs once).
#[cfg(test)]
pub fn deliver(copy: &MaildirCopy<'_>) -> Result<PathBuf, MaildirError> {
    let (path, group) = write(copy)?;
    sync(&group, &copy.dir)?;
    Ok(path)
}

/// Writes one copy into `new/` without waiting for it to be durable:
/// returns its path and its file system's sync group, for [`sync`] once
/// every copy of a message is written (one sync for all of them, where a
/// message to ten mailboxes waited for ten syncs one after another).
pub fn write(copy: &MaildirCopy<'_>) -> Result<(PathBuf, Group), MaildirError> {
    let group = prepare(&copy.dir)?;
    match write_to(copy) {
        // A maildir known to exist was removed since: create it again, once.
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => {
            forget(&copy.dir);
            let group = prepare(&copy.dir)?;
            write_to(copy).map(|path| (path, group))
        }
        r => r.map(|path| (path, group)),
    }
}

/// Makes the copies written (by [`write`]) to the file system of `group`
/// durable: returns after a `syncfs` of it that started after this call
/// (see `SYNC_PATIENCE`). `dir` is one of their maildirs, named in the
/// error.
pub fn sync(group: &Group, dir: &Path) -> Result<(), MaildirError> {
    // The file and its name in new/ are only durable once synced: the next
    // sync of the file system, whoever starts it.
    group_sync_within(group, "maildir", SYNC_PATIENCE).map_err(|source| MaildirError {
        step: "syncing",
        path: dir.join("new"),
        source,
    })
}

/// Maildirs whose `tmp/`, `new/` and `cur/` exist, with their file system's
/// sync group: a delivery to one of them makes no `mkdir`, `stat` or `open`
/// before its own file (nine system calls per message otherwise). Emptied
/// when it reaches `READY_MAX` entries.
static READY: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<PathBuf, Group>>> =
    std::sync::LazyLock::new(Default::default);

/// Bound of `READY`.
const READY_MAX: usize = 10_000;

/// The sync group of `dir`, its directories created if it is not known yet.
fn prepare(dir: &Path) -> Result<Group, MaildirError> {
    let ready = || READY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = ready().get(dir) {
        return Ok(g.clone());
    }
    ensure_dirs(dir)?;
    let new = dir.join("new");
    let group = at("syncing", &new, group_of(&new))?;
    let mut known = ready();
    if known.len() >= READY_MAX {
        known.clear();
    }
    known.insert(dir.to_path_buf(), group.clone());
    Ok(group)
}

/// Forgets that `dir` exists.
fn forget(dir: &Path) {
    READY.lock().unwrap_or_else(|e| e.into_inner()).remove(dir);
}

/// How long a delivered copy waits for a `syncfs` of its file system that
/// someone else starts (under load, the queue's group commit for the next
/// accepted message) before running one itself; only while such syncs come
/// (one started in the last 5 ms), so with no mail coming in, or group
/// commit off, it syncs at once as before. Its queue file stays until
/// the sync is done, so nothing is lost at a crash; what it saves is the
/// sync: with the three example plugins at 1 KiB, `/proc/diskstats` counted
/// 52 KiB written per message when every delivery started syncs and 38 KiB
/// when only accepts did (each `syncfs` rewrites the file system's inode
/// tables, bitmaps and directory blocks), and the accept rate rose with it.
const SYNC_PATIENCE: std::time::Duration = std::time::Duration::from_millis(5);

fn write_to(copy: &MaildirCopy<'_>) -> Result<PathBuf, MaildirError> {
    let dest = copy.dir.join("new").join(&copy.name);
    if copy.check_existing && at("reading", &copy.dir, already_delivered(copy))? {
        return Ok(dest);
    }
    if !write_unnamed(copy, &dest)? {
        let tmp = copy.dir.join("tmp").join(&copy.name);
        let result =
            write_tmp(copy, &tmp).and_then(|()| at("renaming", &tmp, fs::rename(&tmp, &dest)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_names() {
        for ok in ["alice", "a.b", "a-b_c", "jösé"] {
            assert!(is_safe_mailbox(ok), "{ok}");
        }
        for bad in [
            "", ".hidden", "..", "a/b", "a%b", "a!b", "a@b", "a b", "a\0b", "\"q\"",
        ] {
            assert!(!is_safe_mailbox(bad), "{bad}");
        }
    }

    #[test]
    fn converts_line_endings() {
        let mut out = Vec::new();
        write_converted(&mut out, b"a\r\nb\r\n\r\nc\r", LineEndings::Lf).unwrap();
        assert_eq!(out, b"a\nb\n\nc\r");
        // Every string of CR, LF and x up to 8 bytes: exactly each CR that
        // precedes an LF goes.
        for n in 0..=8u32 {
            for code in 0..3u32.pow(n) {
                let data: Vec<u8> = (0..n)
                    .map(|i| b"\r\nx"[(code / 3u32.pow(i) % 3) as usize])
                    .collect();
                let want: Vec<u8> = (0..data.len())
                    .filter(|&i| !(data[i] == b'\r' && data.get(i + 1) == Some(&b'\n')))
                    .map(|i| data[i])
                    .collect();
                let mut out = Vec::new();
                write_converted(&mut out, &data, LineEndings::Lf).unwrap();
                assert_eq!(out, want, "{data:?}");
            }
        }
    }

    #[test]
    fn delivery_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let name = file_name(1, "ABC", 0, "h/o:st");
        assert_eq!(name, "1.QABCR0.h\\057o\\072st");
        let mut copy = MaildirCopy {
            dir: dir.path().join("u"),
            name,
            prefix: b"Delivered-To: u@x\r\n",
            body: b"Subject: x\r\n\r\nhi\r\n",
            line_endings: LineEndings::Lf,
            check_existing: false,
        };
        let p = deliver(&copy).unwrap();
        assert_eq!(
            fs::read(&p).unwrap(),
            b"Delivered-To: u@x\nSubject: x\n\nhi\n"
        );
        // The reader moved it to cur/; a repeated delivery must not copy it again.
        let cur = dir.path().join("u/cur").join(format!("{}:2,S", copy.name));
        fs::rename(&p, &cur).unwrap();
        copy.check_existing = true;
        deliver(&copy).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("u/new")).unwrap().count(), 0);
    }

    #[test]
    fn a_maildir_removed_after_a_delivery_is_created_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut copy = MaildirCopy {
            dir: dir.path().join("gone"),
            name: "1.QABCR0.h".into(),
            prefix: b"",
            body: b"Subject: x\r\n\r\nhi\r\n",
            line_endings: LineEndings::Crlf,
            check_existing: false,
        };
        deliver(&copy).unwrap();
        // Known to exist now; an operator removes it (or only its tmp/).
        fs::remove_dir_all(&copy.dir).unwrap();
        copy.name = "2.QDEFR0.h".into();
        let p = deliver(&copy).unwrap();
        assert_eq!(fs::read(&p).unwrap(), copy.body);
        fs::remove_dir_all(copy.dir.join("tmp")).unwrap();
        copy.name = "3.QGHIR0.h".into();
        let p = deliver(&copy).unwrap();
        assert_eq!(fs::read(&p).unwrap(), copy.body);
        for sub in ["tmp", "new", "cur"] {
            assert!(copy.dir.join(sub).is_dir(), "{sub}");
        }
    }

    #[test]
    fn a_copy_is_linked_into_new_whole_and_a_taken_name_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut copy = MaildirCopy {
            dir: dir.path().join("u"),
            name: "1.QABCR0.h".into(),
            prefix: b"",
            body: b"Subject: first\r\n\r\nhi\r\n",
            line_endings: LineEndings::Crlf,
            check_existing: false,
        };
        // The file is written unnamed and linked into new/: nothing at its tmp/ name is
        // touched, not even a directory there, which writing through tmp/ cannot get past.
        ensure_dirs(&copy.dir).unwrap();
        let tmp = copy.dir.join("tmp");
        fs::create_dir(tmp.join(&copy.name)).unwrap();
        let p = deliver(&copy).unwrap();
        assert_eq!(p, copy.dir.join("new").join(&copy.name));
        assert_eq!(fs::read(&p).unwrap(), copy.body);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            FILE_MODE
        );
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            1,
            "only what was there"
        );
        // The same name again (a delivery repeated after a crash, before the queue recorded it):
        // the link finds the name taken, so the copy goes through tmp/ and a rename replaces it.
        fs::remove_dir(tmp.join(&copy.name)).unwrap();
        copy.body = b"Subject: second\r\n\r\nhi\r\n";
        let p = deliver(&copy).unwrap();
        assert_eq!(fs::read(&p).unwrap(), copy.body);
        assert_eq!(fs::read_dir(copy.dir.join("new")).unwrap().count(), 1);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn private_modes_and_no_symlink_following() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let copy = MaildirCopy {
            dir: dir.path().join("mail/u"),
            name: "1.QABCR0.h".into(),
            prefix: b"",
            body: b"Subject: x\r\n\r\nhi\r\n",
            line_endings: LineEndings::Crlf,
            check_existing: false,
        };
        // Something planted at the tmp name (or a crashed attempt's file)
        // is replaced, never written through.
        ensure_dirs(&copy.dir).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        symlink(&victim, copy.dir.join("tmp").join(&copy.name)).unwrap();
        let p = deliver(&copy).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), FILE_MODE);
        for d in ["mail", "mail/u", "mail/u/tmp", "mail/u/new", "mail/u/cur"] {
            assert_eq!(mode(&dir.path().join(d)), DIR_MODE, "{d}");
        }
        // A plain file where the Maildir should be: the error names the path.
        let blocked = MaildirCopy {
            dir: dir.path().join("mail/file"),
            ..copy
        };
        fs::write(&blocked.dir, b"").unwrap();
        let e = deliver(&blocked).unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::NotADirectory);
        assert!(e.to_string().contains("mail/file/tmp"), "{e}");
    }
}
