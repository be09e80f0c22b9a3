//! The users file: who may AUTH, with which password (argon2id), and
//! optionally which sender addresses they may use.
//!
//! One user per line, `name:phc-hash[:sender,sender...]`, `#` comments.
//! A sender entry is an address or `@domain`; no entries means any sender.
//! The running server re-reads the file when its mtime, size or inode
//! changes, so `wasmtp user add` needs no restart. The CLI writes a temp
//! file and renames it, so the server never sees half a file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

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
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
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
        Err(source) => Err(UsersError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the file atomically (temp file, fsync, rename), mode 0600.
pub fn write(path: &Path, users: &[User]) -> Result<(), UsersError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| UsersError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(format(users).as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
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

/// The users file as the server sees it, re-read when it changes.
pub struct UserDb {
    path: PathBuf,
    cache: Mutex<(Option<Stamp>, Vec<User>)>,
}

impl UserDb {
    /// A database backed by `path` (which need not exist yet).
    pub fn new(path: PathBuf) -> UserDb {
        let _ = dummy_hash();
        let db = UserDb {
            path,
            cache: Mutex::new((None, Vec::new())),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let db = UserDb::new(path);
        let u = db.authenticate("Alice", "s3cret").unwrap();
        assert!(u.allows_sender("Alice@Example.test"));
        assert!(u.allows_sender("x@alice.test"));
        assert!(!u.allows_sender("bob@example.test"));
        assert!(db.authenticate("alice", "wrong").is_none());
        assert!(db.authenticate("bob", "s3cret").is_none());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse("# c\nalice\n", Path::new("u")).unwrap_err();
        assert!(e.to_string().starts_with("u:2:"), "{e}");
        assert!(parse("a:notahash\n", Path::new("u")).is_err());
    }
}
