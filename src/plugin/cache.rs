//! The on-disk cache of compiled plugins (`<data_dir>/plugin-cache`).
//!
//! A cached artifact is native code that wasmtime maps and runs without
//! validating it, so whoever can write the cache can run code in the
//! server. An artifact is therefore only trusted when the directory and the
//! file belong to the server's user and neither is writable by its group or
//! by others; anything else is ignored (the plugin is compiled afresh, with
//! a warning). Artifacts are written under a unique temporary name, synced
//! and renamed into place, so a crash or a second server never leaves a
//! half-written artifact under the real name.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Temporary files older than this are left over from a crash.
const STALE_TMP: Duration = Duration::from_secs(3600);

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why `path` cannot be trusted, if it cannot.
fn distrust(path: &Path, meta: &fs::Metadata) -> Option<String> {
    if meta.uid() != euid() {
        return Some(format!(
            "{} is owned by uid {}, not by the server's uid {}",
            path.display(),
            meta.uid(),
            euid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "{} is writable by its group or by others (mode {:o})",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    None
}

/// Checks the cache directory (if it exists). Err says why it is not trusted.
fn check_dir(dir: &Path) -> Result<bool, String> {
    match fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!("{} is not a directory", dir.display())),
        Ok(m) => distrust(dir, &m).map_or(Ok(true), Err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Ok(true) when `file` exists and may be loaded, Ok(false) when there is
/// none, Err with the reason when it (or its directory) is not trusted.
pub fn check_trusted(dir: &Path, file: &Path) -> Result<bool, String> {
    if !check_dir(dir)? {
        return Ok(false);
    }
    match fs::symlink_metadata(file) {
        Ok(m) if !m.is_file() => Err(format!("{} is not a regular file", file.display())),
        Ok(m) => distrust(file, &m).map_or(Ok(true), Err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// Writes `bytes` to `file` in `dir` (created 0700 if missing): a unique
/// temporary file (0600), fsync, rename, fsync of the directory.
pub fn write(dir: &Path, file: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Err(e) = DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        return Err(format!("cannot create {}: {e}", dir.display()));
    }
    if !check_dir(dir)? {
        return Err(format!("{} vanished", dir.display()));
    }
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, file))
        .and_then(|()| fs::File::open(dir)?.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", file.display()));
    }
    Ok(())
}

/// Removes `*.cwasm` artifacts not in `keep` and temporary files older than
/// an hour. Returns how many files went. Does nothing in an untrusted
/// directory (it is not the server's to clean).
pub fn prune(dir: &Path, keep: &[PathBuf]) -> usize {
    if !matches!(check_dir(dir), Ok(true)) {
        return 0;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let unused = name.ends_with(".cwasm") && !keep.contains(&path);
        let stale = name.ends_with(".tmp")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > STALE_TMP);
        if (unused || stale) && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writable_by_others_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let file = dir.join("a.cwasm");
        assert_eq!(check_trusted(&dir, &file), Ok(false));
        write(&dir, &file, b"artifact").unwrap();
        assert_eq!(check_trusted(&dir, &file), Ok(true));
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_trusted(&dir, &file).unwrap_err();
        assert!(e.contains("writable"), "{e}");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(check_trusted(&dir, &file).is_err());
        assert!(
            write(&dir, &file, b"x").is_err(),
            "no writing into it either"
        );
        assert_eq!(prune(&dir, &[]), 0, "nor cleaning it");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["a.cwasm"]);
    }

    #[test]
    fn prune_keeps_only_what_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let (a, b) = (dir.join("a.cwasm"), dir.join("b.cwasm"));
        write(&dir, &a, b"a").unwrap();
        write(&dir, &b, b"b").unwrap();
        fs::write(dir.join(".fresh.tmp"), b"partial").unwrap();
        assert_eq!(prune(&dir, std::slice::from_ref(&a)), 1);
        assert!(a.exists() && !b.exists());
        assert!(
            dir.join(".fresh.tmp").exists(),
            "a recent temporary file may be in use"
        );
    }
}
