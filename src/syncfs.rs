//! Group `syncfs`: one sync of a file system serves every writer waiting
//! for one, whoever they are. Maildir deliveries and the queue's group
//! commit (when on) share the group of the file system they write to, so a
//! `syncfs` run for an accepted message also makes a delivered copy durable
//! and the other way round, instead of each side running its own (about
//! one `syncfs` per message on each side under load before).
//!
//! A caller returns only after a `syncfs` that *started after its call*
//! has finished (one running when it arrived may have missed its writes),
//! with that sync's error if it failed.

use std::fs::File;
use std::io;
use std::path::Path;

/// The group sync of one filesystem: `started` counts syncs begun, `done`
/// the last one finished (with its error, if it failed).
#[derive(Default)]
struct SyncState {
    started: u64,
    done: u64,
    running: bool,
    failed: Option<(u64, io::ErrorKind, String)>,
}

/// One file system's group sync: its state, and a directory on it held
/// open for `syncfs`.
pub struct SyncGroup {
    state: std::sync::Mutex<SyncState>,
    cv: std::sync::Condvar,
    fs: File,
}

/// A shared handle on one file system's group sync.
pub type Group = std::sync::Arc<SyncGroup>;

/// Groups by device: a sync of one filesystem says nothing about another.
static GROUPS: std::sync::Mutex<Vec<(u64, Group)>> = std::sync::Mutex::new(Vec::new());

/// The sync group of the file system `dir` is on.
pub fn group_of(dir: &Path) -> io::Result<Group> {
    use std::os::unix::fs::MetadataExt;
    let d = File::open(dir)?;
    let dev = d.metadata()?.dev();
    let mut groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    Ok(match groups.iter().find(|(g, _)| *g == dev) {
        Some((_, g)) => g.clone(),
        None => {
            let g = Group::new(SyncGroup {
                state: Default::default(),
                cv: Default::default(),
                fs: d,
            });
            groups.push((dev, g.clone()));
            g
        }
    })
}

/// Returns once a `syncfs` of the group's filesystem that started after this
/// call has finished: either this thread runs it, or it waits for one that
/// another caller started after it arrived. `by` names the caller in
/// `wasmtp_syncfs_waits_total`.
pub fn group_sync(group: &SyncGroup, by: &'static str) -> io::Result<()> {
    crate::metrics::syncfs_wait(by);
    let (lock, cv, d) = (&group.state, &group.cv, &group.fs);
    let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
    // A sync already running may have missed this caller's writes.
    let need = st.started + 1;
    loop {
        if st.done >= need {
            return match &st.failed {
                Some((n, kind, msg)) if *n >= need => Err(io::Error::new(*kind, msg.clone())),
                _ => Ok(()),
            };
        }
        if !st.running {
            st.running = true;
            st.started += 1;
            let mine = st.started;
            drop(st);
            crate::metrics::syncfs_run();
            // SAFETY: syncfs only reads the descriptor, which `d` keeps open.
            let r = if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(d)) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            };
            st = lock.lock().unwrap_or_else(|e| e.into_inner());
            st.running = false;
            st.done = mine;
            if let Err(e) = &r {
                st.failed = Some((mine, e.kind(), e.to_string()));
            }
            cv.notify_all();
            if mine >= need {
                return r;
            }
            continue;
        }
        st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
    }
}
