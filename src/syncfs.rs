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
use std::time::{Duration, Instant};

/// The group sync of one filesystem: `started` counts syncs begun, `done`
/// the last one finished (with its error, if it failed).
#[derive(Default)]
struct SyncState {
    started: u64,
    done: u64,
    running: bool,
    failed: Option<(u64, io::ErrorKind, String)>,
    /// When a caller without patience (the queue's group commit) last
    /// started a sync: patient callers wait only while such syncs come.
    driven_at: Option<Instant>,
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
    group_sync_within(group, by, Duration::ZERO)
}

/// [`group_sync`] for a caller that can wait: while callers without
/// patience keep starting syncs (under load the queue's group commit starts
/// one every few hundred microseconds: one started within the last
/// `patience`), it waits up to `patience` for one of them instead of
/// running its own, and runs one itself only when none has started by
/// then. With no such syncs lately (no mail coming in, or group commit off)
/// it is [`group_sync`]. Maildir deliveries wait so: a delivered copy needs
/// to be durable before its queue file goes, not at once, and a sync an
/// accepted message needed anyway carries it.
pub fn group_sync_within(
    group: &SyncGroup,
    by: &'static str,
    patience: Duration,
) -> io::Result<()> {
    crate::metrics::syncfs_wait(by);
    let (lock, cv, d) = (&group.state, &group.cv, &group.fs);
    let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
    let driven = st.driven_at.is_some_and(|t| t.elapsed() < patience);
    let deadline = Instant::now() + if driven { patience } else { Duration::ZERO };
    // A sync already running may have missed this caller's writes.
    let need = st.started + 1;
    loop {
        if st.done >= need {
            return match &st.failed {
                Some((n, kind, msg)) if *n >= need => Err(io::Error::new(*kind, msg.clone())),
                _ => Ok(()),
            };
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !st.running && !left.is_zero() {
            st = cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        if !st.running {
            st.running = true;
            st.started += 1;
            if patience.is_zero() {
                st.driven_at = Some(Instant::now());
            }
            let mine = st.started;
            drop(st);
            let r = syncfs(d);
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

/// One `syncfs` of the file system `d` is on, counted and timed
/// (`wasmtp_syncfs_total`, `wasmtp_syncfs_duration_seconds`).
pub fn syncfs(d: &File) -> io::Result<()> {
    let started = Instant::now();
    // SAFETY: syncfs only reads the descriptor, which the caller keeps open.
    let r = if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(d)) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    crate::metrics::syncfs_ran(started.elapsed());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(dir: &Path) -> SyncGroup {
        SyncGroup {
            state: Default::default(),
            cv: Default::default(),
            fs: File::open(dir).unwrap(),
        }
    }

    fn started(g: &SyncGroup) -> u64 {
        g.state.lock().unwrap().started
    }

    /// With no sync by an impatient caller lately, a patient caller syncs at
    /// once. While they come, it returns on the first one another caller
    /// starts after it arrived and runs none of its own; when none comes, it
    /// runs one once its patience is over.
    #[test]
    fn a_patient_caller_rides_on_the_next_sync_while_others_drive_them() {
        let dir = tempfile::tempdir().unwrap();
        let g = std::sync::Arc::new(group(dir.path()));
        let t = Instant::now();
        group_sync_within(&g, "maildir", Duration::from_secs(60)).unwrap();
        assert_eq!(started(&g), 1);
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "it waited without a driver"
        );

        group_sync(&g, "queue").unwrap();
        assert_eq!(started(&g), 2);
        let patient = {
            let g = g.clone();
            std::thread::spawn(move || group_sync_within(&g, "maildir", Duration::from_secs(60)))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            started(&g),
            2,
            "it started a sync before its patience ran out"
        );
        assert!(!patient.is_finished());
        group_sync(&g, "queue").unwrap();
        // Returns at once (not after 60 s), on that one sync.
        patient.join().unwrap().unwrap();
        assert_eq!(started(&g), 3);

        // A driver synced just now (set here, not by a call above, so a
        // stall of the test machine cannot make it look long ago), and none
        // comes: it waits out its patience, then syncs itself.
        g.state.lock().unwrap().driven_at = Some(Instant::now());
        let t = Instant::now();
        group_sync_within(&g, "maildir", Duration::from_secs(2)).unwrap();
        assert_eq!(started(&g), 4);
        assert!(t.elapsed() >= Duration::from_secs(1), "it did not wait");
    }
}
