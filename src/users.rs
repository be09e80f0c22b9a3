//! The users file: who may AUTH, with which password (argon2id), and
//! optionally which sender addresses they may use.
//!
//! One user per line, `name:phc-hash[:sender,sender...]`, `#` comments.
//! A sender entry is an address or `@domain`; no entries means any sender.
//! The running server re-reads the file when its mtime, size or inode
//! changes, so `wasmtp user add` needs no restart. The CLI writes a temp
//! file and renames it, so the server never sees half a file.
//!
//! Verifying a password is slow and memory-hungry on purpose, so the server
//! runs a bounded number at once (`auth.max_verifications`); a login that
//! finds no free slot within `auth.verification_wait` is told "try later".
//! An AUTH flood then costs a fixed share of the cores instead of all of
//! them, while a burst of real logins takes turns.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// One account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name (lower case).
    pub name: String,
    /// argon2id PHC string.
    pub hash: String,
    /// Allowed sender addresses or `@domain`s; empty means any.
    pub senders: Vec<String>,
}

impl User {
    /// True if this user may use `addr` (already lower-cased or not) as MAIL FROM.
    pub fn allows_sender(&self, addr: &str) -> bool {
        if self.senders.is_empty() {
            return true;
        }
        let addr = addr.to_ascii_lowercase();
        let domain = addr.rsplit_once('@').map(|(_, d)| d);
        self.senders
            .iter()
            .any(|s| *s == addr || s.strip_prefix('@').is_some_and(|d| Some(d) == domain))
    }
}

/// Why the users file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Reading or writing failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error; part of the message, not a chained source, so it is printed once.
        error: std::io::Error,
    },
    /// A line is malformed.
    #[error("{}:{line}: {what}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        what: String,
    },
}

/// True for names the file format and logs can carry safely.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b))
}

/// Parses the file text.
pub fn parse(text: &str, path: &Path) -> Result<Vec<User>, UsersError> {
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| UsersError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
            what: what.to_string(),
        };
        let mut parts = line.splitn(3, ':');
        let name = parts.next().unwrap_or_default().to_ascii_lowercase();
        let hash = parts.next().ok_or_else(|| bad("expected name:hash"))?;
        if !valid_name(&name) {
            return Err(bad("invalid user name"));
        }
        if PasswordHash::new(hash).is_err() {
            return Err(bad("not a PHC password hash"));
        }
        let senders = parts
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        users.push(User {
            name,
            hash: hash.to_string(),
            senders,
        });
    }
    Ok(users)
}

/// Formats users back into file text.
pub fn format(users: &[User]) -> String {
    let mut s = String::from("# wasmtp users: name:argon2id-hash[:allowed-sender,...]\n");
    for u in users {
        s.push_str(&u.name);
        s.push(':');
        s.push_str(&u.hash);
        if !u.senders.is_empty() {
            s.push(':');
            s.push_str(&u.senders.join(","));
        }
        s.push('\n');
    }
    s
}

/// Reads the file; a missing file is an empty list.
pub fn read(path: &Path) -> Result<Vec<User>, UsersError> {
    match std::fs::read_to_string(path) {
        Ok(t) => parse(&t, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(UsersError::Io {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// Writes the file atomically (temp file, fsync, rename, fsync of the
/// directory), mode 0600.
///
/// The temp file (`<name>.tmp` beside the file) is created exclusively and
/// never through a symlink: a link or file planted there by someone who can
/// write the directory makes the write fail instead of writing password
/// hashes wherever the link points. A temp file left by an interrupted
/// command (or one still running) must be removed by hand; the error says so.
pub fn write(path: &Path, users: &[User]) -> Result<(), UsersError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| UsersError::Io { path, error }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => std::io::Error::new(
                e.kind(),
                "the temp file exists: another `wasmtp user` command is running, \
                 or one was interrupted (then remove the file)",
            ),
            _ => e,
        })
        .map_err(io(&tmp))?;
    let written = f
        .write_all(format(users).as_bytes())
        .and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// An argon2id hash of `password` with a random salt.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16-byte salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash nobody's password matches, verified for unknown users so that
/// their answer takes as long as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&format!("{:032x}", rand::random::<u128>())))
}

type Stamp = (i64, i64, u64, u64);

/// The outcome of [`UserDb::login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The password matched this account.
    Ok(User),
    /// No such user or a wrong password (not told apart).
    Failed,
    /// `auth.max_verifications` checks were running for all of
    /// `auth.verification_wait`; nothing was checked.
    Busy,
}

/// The users file as the server sees it, re-read when it changes.
pub struct UserDb {
    path: PathBuf,
    cache: Mutex<(Option<Stamp>, Vec<User>)>,
    verifications: Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
}

impl UserDb {
    /// A database backed by `path` (which need not exist yet), checking at
    /// most `max_verifications` passwords at once; a login waits up to
    /// `wait` for its turn.
    pub fn new(path: PathBuf, max_verifications: usize, wait: std::time::Duration) -> UserDb {
        let _ = dummy_hash();
        let db = UserDb {
            path,
            cache: Mutex::new((None, Vec::new())),
            verifications: Arc::new(tokio::sync::Semaphore::new(max_verifications.max(1))),
            wait,
        };
        db.refresh();
        db
    }

    fn stamp(&self) -> Option<Stamp> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
    }

    /// Re-reads the file if it changed; on a broken file the old list stays.
    fn refresh(&self) {
        let stamp = self.stamp();
        let mut cache = self.cache.lock().expect("users lock");
        if cache.0 == stamp && stamp.is_some() {
            return;
        }
        match read(&self.path) {
            Ok(users) => {
                if cache.0.is_some() || !users.is_empty() {
                    tracing::info!(file = %self.path.display(), users = users.len(), "users file loaded");
                }
                *cache = (stamp, users);
            }
            Err(e) => {
                tracing::warn!(error = %e, "users file not reloaded; keeping the previous list")
            }
        }
    }

    /// Checks a login. Blocking (argon2): call from `spawn_blocking`. Takes
    /// the same time whether or not the user exists.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<User> {
        self.refresh();
        let user = {
            let cache = self.cache.lock().expect("users lock");
            let name = name.to_ascii_lowercase();
            cache.1.iter().find(|u| u.name == name).cloned()
        };
        let hash = user.as_ref().map_or(dummy_hash(), |u| u.hash.as_str());
        let ok = verify(hash, password);
        user.filter(|_| ok)
    }

    /// Checks a login on tokio's blocking pool once one of the
    /// `max_verifications` slots is free, and answers [`Login::Busy`] if
    /// none frees within the wait (at once if the wait is zero). The slot
    /// is held until the check itself ends, even if the caller gives up.
    pub async fn login(self: &Arc<Self>, name: String, password: String) -> Login {
        let turn = self.verifications.clone().acquire_owned();
        let Ok(Ok(slot)) = tokio::time::timeout(self.wait, turn).await else {
            return Login::Busy;
        };
        let db = self.clone();
        let user = tokio::task::spawn_blocking(move || {
            let user = db.authenticate(&name, &password);
            drop(slot);
            user
        })
        .await;
        match user {
            Ok(Some(u)) => Login::Ok(u),
            Ok(None) | Err(_) => Login::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn round_trip_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let users = vec![User {
            name: "alice".into(),
            hash: hash_password("s3cret"),
            senders: vec!["alice@example.test".into(), "@alice.test".into()],
        }];
        write(&path, &users).unwrap();
        assert_eq!(read(&path).unwrap(), users);
        let db = UserDb::new(path, 1, Duration::ZERO);
        let u = db.authenticate("Alice", "s3cret").unwrap();
        assert!(u.allows_sender("Alice@Example.test"));
        assert!(u.allows_sender("x@alice.test"));
        assert!(!u.allows_sender("bob@example.test"));
        assert!(db.authenticate("alice", "wrong").is_none());
        assert!(db.authenticate("bob", "s3cret").is_none());
    }

    #[tokio::test]
    async fn logins_over_the_bound_wait_their_turn_or_are_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let hash = hash_password("pw");
        let user = |name: &str| User {
            name: name.into(),
            hash: hash.clone(),
            senders: vec![],
        };
        write(&path, &[user("alice")]).unwrap();
        let db = Arc::new(UserDb::new(path.clone(), 1, Duration::ZERO));
        let login = |pw: &str| db.login("alice".into(), pw.into());
        // Two at once with one slot and no wait: one is checked, the other
        // is turned away.
        let (a, b) = tokio::join!(login("pw"), login("pw"));
        let mut got = [a, b];
        got.sort_by_key(|l| matches!(l, Login::Busy));
        assert_eq!(got, [Login::Ok(user("alice")), Login::Busy]);
        // The slot is free again afterwards.
        assert_eq!(login("wrong").await, Login::Failed);
        assert_eq!(login("pw").await, Login::Ok(user("alice")));
        // With a wait, a burst takes turns.
        let db = Arc::new(UserDb::new(path, 1, Duration::from_secs(30)));
        let login = |pw: &str| db.login("alice".into(), pw.into());
        let (a, b, c) = tokio::join!(login("pw"), login("pw"), login("no"));
        assert_eq!(
            [a, b, c],
            [
                Login::Ok(user("alice")),
                Login::Ok(user("alice")),
                Login::Failed
            ]
        );
    }

    #[test]
    fn write_refuses_a_planted_temp_file_or_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let tmp = dir.path().join("users.tmp");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        let e = write(&path, &[]).unwrap_err();
        assert!(e.to_string().contains("users.tmp"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(!path.exists());
        // A stale temp file is reported, not overwritten.
        std::fs::remove_file(&tmp).unwrap();
        std::fs::write(&tmp, "stale").unwrap();
        let e = write(&path, &[]).unwrap_err();
        assert!(e.to_string().contains("remove the file"), "{e}");
        std::fs::remove_file(&tmp).unwrap();
        // Otherwise: written with mode 0600, and no temp file is left.
        write(&path, &[]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!tmp.exists());
        assert_eq!(read(&path).unwrap(), vec![]);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse("# c\nalice\n", Path::new("u")).unwrap_err();
        assert!(e.to_string().starts_with("u:2:"), "{e}");
        assert!(parse("a:notahash\n", Path::new("u")).is_err());
    }
}
