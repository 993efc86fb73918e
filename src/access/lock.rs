//! One run at a time per image root.
//!
//! Two runs on the same root would each read, plan and write, and the second
//! rename would silently drop the first run's edits. So a run holds an
//! advisory `flock` on the root's `etc/cloud` directory from reading to
//! writing: a lock on a descriptor, so nothing new is created inside the
//! image, and released by the kernel whenever the process ends, even by
//! SIGKILL. Read-only runs (`--dry-run`, `--check`) take it shared, so they
//! never see a half-done run's files and do not block each other.
//!
//! A tool that does not take the lock can still edit a file meanwhile; the
//! commit therefore also checks each file's bytes right before its rename.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::errno::Errno;

use crate::access::image::interrupt;
use crate::access::root::Root;

/// The directory that is locked: cloud-init's own, present in every root we edit.
const LOCKED_DIR: &str = "etc/cloud";

/// How long a run waits for another one; a run takes well under a second,
/// so a longer wait means the other run is stuck or paused.
pub const WAIT: Duration = Duration::from_secs(10);

/// Test hook: overrides [`WAIT`] (in milliseconds).
pub const WAIT_VARIABLE: &str = "PREPARE_IMAGE_LOCK_WAIT_MS";

/// Held while the run works on the root; dropping it (closing the
/// descriptor) releases the lock.
#[derive(Debug)]
pub struct RootLock {
    _dir: Option<OwnedFd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Reading only: any number of runs at once.
    Shared,
    /// Reading, planning and writing: this run alone.
    Exclusive,
}

/// Locks the root's `etc/cloud`, waiting up to `wait` for another run. A
/// root without `etc/cloud` has nothing to protect yet: the run fails on the
/// missing cloud.cfg anyway.
pub fn lock(root: &Root, mode: LockMode) -> Result<RootLock> {
    let Some((dir, path)) = root.open_dir(Path::new(LOCKED_DIR))? else {
        return Ok(RootLock { _dir: None });
    };
    let wait = std::env::var(WAIT_VARIABLE)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(WAIT, Duration::from_millis);
    let operation = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    let deadline = Instant::now() + wait;
    loop {
        // SAFETY: flock only takes a descriptor we own and a flag word.
        let rc = unsafe { libc::flock(dir.as_raw_fd(), operation) };
        match Errno::result(rc) {
            Ok(_) => return Ok(RootLock { _dir: Some(dir) }),
            Err(Errno::EWOULDBLOCK) if Instant::now() < deadline => {
                interrupt::check()?;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Errno::EWOULDBLOCK) => {
                let shown = root.path().join(&path);
                let holder = holder(&dir).map_or_else(String::new, |h| format!(" ({h})"));
                bail!(
                    "{} is locked by another prepare-image run{holder}, still after {} s: wait for it to \
                     finish and run again; nothing was written",
                    shown.display(),
                    wait.as_secs_f64()
                );
            }
            Err(e) => bail!(
                "cannot lock {}: {} (another run could edit it at the same time)",
                root.path().join(&path).display(),
                e.desc()
            ),
        }
    }
}

/// "pid N, COMMAND" of a process holding a flock on the directory, from
/// /proc/locks (`1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF`).
fn holder(dir: &OwnedFd) -> Option<String> {
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    let dev = meta.dev();
    let wanted = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let own = std::process::id().to_string();
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Waiters are listed as "N: -> FLOCK ..."; only holders count.
        if fields.get(1) != Some(&"FLOCK") || fields.get(5) != Some(&wanted.as_str()) {
            return None;
        }
        let pid = *fields.get(4)?;
        if pid == own {
            return None;
        }
        let command = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Some(match command.trim() {
            "" => format!("pid {pid}"),
            command => format!("pid {pid}, {command}"),
        })
    })
}
