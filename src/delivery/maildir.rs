//! Maildir delivery (https://cr.yp.to/proto/maildir.html): write into
//! `tmp/`, fsync, rename into `new/`, fsync the directory.
//!
//! File names are derived from the queue id and the recipient's index, not
//! from a clock or counter, so a delivery repeated after a crash (the queue
//! had not yet recorded it) lands on the same name instead of making a
//! second copy.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::LineEndings;

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

fn ensure_dirs(dir: &Path) -> io::Result<()> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    Ok(())
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
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == b'\r' && data[i + 1] == b'\n' {
            w.write_all(&data[start..i])?;
            start = i + 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    w.write_all(&data[start..])
}

/// Delivers one copy; returns the final path.
pub fn deliver(copy: &MaildirCopy<'_>) -> io::Result<PathBuf> {
    ensure_dirs(&copy.dir)?;
    let dest = copy.dir.join("new").join(&copy.name);
    if copy.check_existing && already_delivered(copy)? {
        return Ok(dest);
    }
    let tmp = copy.dir.join("tmp").join(&copy.name);
    let result = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut w = io::BufWriter::with_capacity(64 * 1024, f);
        write_converted(&mut w, copy.prefix, copy.line_endings)?;
        write_converted(&mut w, copy.body, copy.line_endings)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, &dest)?;
        File::open(copy.dir.join("new"))?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| dest)
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
}
