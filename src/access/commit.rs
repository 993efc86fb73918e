//! Replacing a set of files all or none.
//!
//! A run edits cloud.cfg and some drop-ins together, and the README promises
//! that a failed run (exit 1) changed nothing. A rename cannot be undone by
//! itself, so the commit goes in phases:
//! 1. Check, before anything is renamed, everything that would make a rename
//!    or a backup fail: each file still holds exactly the bytes planned on,
//!    no immutable or append-only attribute on it or its directory, not a
//!    mount point (rename cannot replace one), a backup name that fits.
//! 2. Keep every original under a hidden second name (a hard link) and make
//!    the `--backup` links. A failure here only removes links again.
//! 3. Rename each temp file into place, checking once more right before
//!    each that the file was not changed by someone else. A failure renames
//!    the kept originals back over what was already replaced.
//! 4. Drop the hidden links.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, renameat};
use nix::sys::stat::{FileStat, fstatat};
use nix::unistd::{UnlinkatFlags, fsync, linkat, unlinkat};

use crate::access::root::{
    AccessError, AccessErrorKind, CommitOutcome, NAME_MAX, PendingWrite, kind_from_errno,
    open_regular, temp_name,
};

/// Why a commit failed, and whether anything was changed.
#[derive(Debug)]
pub enum CommitError {
    /// Every file is as it was and no temp file or link of ours remains.
    NothingWritten(AccessError),
    /// A rename failed and putting back the files already replaced failed too.
    Partial(Box<PartialCommit>),
}

/// What a half-done commit left: `written` hold the new text; their
/// originals are kept under the hidden names `kept`.
#[derive(Debug)]
pub struct PartialCommit {
    pub error: AccessError,
    pub undo: AccessError,
    pub written: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

impl CommitError {
    pub fn nothing_written(&self) -> bool {
        matches!(self, CommitError::NothingWritten(_))
    }

    /// The failure that stopped the commit.
    pub fn access_error(&self) -> &AccessError {
        match self {
            CommitError::NothingWritten(e) => e,
            CommitError::Partial(partial) => &partial.error,
        }
    }
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::NothingWritten(e) => write!(f, "{e}"),
            CommitError::Partial(partial) => {
                let PartialCommit {
                    error,
                    undo,
                    written,
                    kept,
                } = partial.as_ref();
                let list = |paths: &[PathBuf]| {
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                write!(
                    f,
                    "{error}; putting back the files already replaced failed too ({undo}): {} WERE \
                     written, the originals are kept as {}",
                    list(written),
                    list(kept)
                )
            }
        }
    }
}

/// No `source`: the message already includes the access error, and a
/// printed chain would say it twice.
impl std::error::Error for CommitError {}

impl From<AccessError> for CommitError {
    fn from(e: AccessError) -> CommitError {
        CommitError::NothingWritten(e)
    }
}

/// `FS_IMMUTABLE_FL` and `FS_APPEND_FL` (linux/fs.h): either makes a rename
/// over the file, or a change of its directory's entries, fail with EPERM.
const FS_IMMUTABLE_FL: libc::c_int = 0x10;
const FS_APPEND_FL: libc::c_int = 0x20;

/// Renames every temp file into place, or none (module doc). `backup_suffix`
/// keeps each original also as NAME+suffix (left alone when it exists).
pub fn commit_all(
    writes: Vec<PendingWrite>,
    backup_suffix: Option<&str>,
) -> Result<Vec<CommitOutcome>, CommitError> {
    commit_all_observed(writes, backup_suffix, &mut |_| {})
}

/// `commit_all`, calling `after_rename(i)` after the i-th rename: lets tests
/// make a later rename fail after the checks passed, to prove the undo.
#[doc(hidden)]
pub fn commit_all_observed(
    mut writes: Vec<PendingWrite>,
    backup_suffix: Option<&str>,
    after_rename: &mut dyn FnMut(usize),
) -> Result<Vec<CommitOutcome>, CommitError> {
    for w in &writes {
        check_replaceable(w, backup_suffix)?;
    }
    let mut links = Vec::new();
    let outcomes = match keep_originals(&writes, backup_suffix, &mut links) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            remove_links(&writes, &links);
            return Err(e.into());
        }
    };
    for index in 0..writes.len() {
        if let Err(error) = rename_into_place(&mut writes[index]) {
            let undo = put_back(&writes[..index], &links);
            return match undo {
                Ok(()) => {
                    remove_links(&writes, &links);
                    Err(CommitError::NothingWritten(error))
                }
                Err(undo) => Err(CommitError::Partial(Box::new(PartialCommit {
                    error,
                    undo,
                    written: writes[..index].iter().map(|w| w.path.clone()).collect(),
                    kept: links
                        .iter()
                        .filter(|l| l.role == Role::Original)
                        .map(|l| writes[l.write].path.with_file_name(&l.name))
                        .collect(),
                }))),
            };
        }
        after_rename(index);
    }
    links.retain(|l| l.role == Role::Original);
    remove_links(&writes, &links);
    Ok(outcomes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Our hidden second name of an original, for putting it back.
    Original,
    /// A `--backup` link this commit made (not one that was already there).
    Backup,
}

/// A name this commit linked to an original, in the directory of `writes[write]`.
struct Link {
    name: OsString,
    write: usize,
    role: Role,
}

pub(super) fn file_flags(fd: BorrowedFd<'_>) -> Option<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which
    // points to a live c_int.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    // File systems without attributes answer ENOTTY/EOPNOTSUPP: none set.
    (rc == 0).then_some(flags)
}

pub(super) fn attribute_problem(flags: Option<libc::c_int>, what: &str) -> Option<String> {
    let flags = flags?;
    let attribute = if flags & FS_IMMUTABLE_FL != 0 {
        ("immutable", 'i')
    } else if flags & FS_APPEND_FL != 0 {
        ("append-only", 'a')
    } else {
        return None;
    };
    Some(format!(
        "{what} has the {} attribute, so it cannot be replaced (remove it with `chattr -{}` \
         first); nothing was written",
        attribute.0, attribute.1
    ))
}

/// The mount a descriptor is on, where the kernel tells (statx, Linux 5.8).
fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: statx fills the zeroed struct it is given; the path is the
    // empty C string, with AT_EMPTY_PATH meaning the descriptor itself.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    (rc == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// The longest name the directory's file system takes.
fn name_limit(dir: BorrowedFd<'_>) -> usize {
    nix::sys::statfs::fstatfs(dir)
        .ok()
        .and_then(|s| usize::try_from(s.maximum_name_length()).ok())
        .filter(|&n| n > 0)
        .unwrap_or(NAME_MAX)
}

/// Phase 1 for one file: everything that would make its rename or backup
/// fail, found while nothing has been changed.
fn check_replaceable(w: &PendingWrite, backup_suffix: Option<&str>) -> Result<(), AccessError> {
    let cannot = |why: String| w.err(AccessErrorKind::CannotReplace { why });
    if w.temp.is_none() {
        return Err(cannot("the temporary file is gone".into()));
    }
    check_unchanged(w)?;
    if let Some(why) = attribute_problem(file_flags(w.dir.as_fd()), "its directory") {
        return Err(cannot(why));
    }
    if w.original.is_none() {
        return Ok(());
    }
    let (file, st) = open_regular(w.dir.as_fd(), &w.name).map_err(|k| w.err(k))?;
    if let Some(why) = attribute_problem(file_flags(file.as_fd()), "the file") {
        return Err(cannot(why));
    }
    let dir_st = nix::sys::stat::fstat(&w.dir).map_err(|e| w.err(kind_from_errno(e)))?;
    let mount_point = match (mount_id(file.as_fd()), mount_id(w.dir.as_fd())) {
        (Some(a), Some(b)) => a != b,
        _ => st.st_dev != dir_st.st_dev,
    };
    if mount_point {
        return Err(cannot(
            "it is a mount point (a file mounted over it), which rename cannot replace: edit \
             the file mounted there, or unmount it; nothing was written"
                .into(),
        ));
    }
    if let Some(suffix) = backup_suffix {
        if suffix.is_empty() || suffix.contains('/') {
            return Err(cannot(format!("invalid backup suffix {suffix:?}")));
        }
        let limit = name_limit(w.dir.as_fd());
        let length = w.name.len() + suffix.len();
        if length > limit {
            return Err(cannot(format!(
                "its backup {}{suffix} would be a {length}-byte name, longer than the file \
                 system's limit of {limit} bytes (run without --backup, or shorten the file's \
                 name); nothing was written",
                w.name.to_string_lossy()
            )));
        }
    }
    Ok(())
}

/// The name still holds the very file, with exactly the bytes, the plan was
/// made on (or, for a new file, still nothing).
fn check_unchanged(w: &PendingWrite) -> Result<(), AccessError> {
    let changed = || w.err(AccessErrorKind::ChangedMeanwhile);
    let Some(original) = w.original else {
        return match fstatat(&w.dir, w.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Ok(_) => Err(changed()),
            Err(e) => Err(w.err(kind_from_errno(e))),
        };
    };
    let (mut file, st) = match open_regular(w.dir.as_fd(), &w.name) {
        Ok(opened) => opened,
        Err(AccessErrorKind::NotFound | AccessErrorKind::NotRegular { .. }) => {
            return Err(changed());
        }
        Err(k) => return Err(w.err(k)),
    };
    if (st.st_dev, st.st_ino) != (original.dev, original.ino) {
        return Err(changed());
    }
    if let Some(expected) = &w.expected {
        let mut bytes = Vec::with_capacity(expected.len());
        // One byte more than planned is enough to tell a longer file.
        file.by_ref()
            .take(expected.len() as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| w.err(AccessErrorKind::Other(e)))?;
        if bytes != *expected {
            return Err(changed());
        }
    }
    Ok(())
}

fn same_inode(st: &FileStat, w: &PendingWrite) -> bool {
    w.original
        .is_some_and(|o| (st.st_dev, st.st_ino) == (o.dev, o.ino))
}

/// Phase 2: a hidden link to each original (to put it back) and the backup
/// links. Every link made is recorded in `links`, also on failure.
fn keep_originals(
    writes: &[PendingWrite],
    backup_suffix: Option<&str>,
    links: &mut Vec<Link>,
) -> Result<Vec<CommitOutcome>, AccessError> {
    let mut outcomes = Vec::new();
    for (index, w) in writes.iter().enumerate() {
        let mut outcome = CommitOutcome {
            backup: None,
            backup_existed: false,
        };
        if w.original.is_some() {
            let kept = temp_name(&w.name);
            if !link_original(w, &kept)? {
                return Err(
                    w.err(AccessErrorKind::Other(std::io::Error::from_raw_os_error(
                        libc::EEXIST,
                    ))),
                );
            }
            links.push(Link {
                name: kept,
                write: index,
                role: Role::Original,
            });
            if let Some(suffix) = backup_suffix {
                let mut backup = w.name.clone();
                backup.push(suffix);
                outcome.backup = Some(w.path.with_file_name(&backup));
                if link_original(w, &backup)? {
                    links.push(Link {
                        name: backup,
                        write: index,
                        role: Role::Backup,
                    });
                } else {
                    // An older backup is the valuable one: left alone.
                    outcome.backup_existed = true;
                }
            }
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Links the original to `name` and makes sure the link is the original
/// (the name could have been swapped since the checks). `Ok(false)`: the
/// name already exists and was left alone.
fn link_original(w: &PendingWrite, name: &OsStr) -> Result<bool, AccessError> {
    match linkat(&w.dir, w.name.as_os_str(), &w.dir, name, AtFlags::empty()) {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Ok(false),
        Err(e) => return Err(w.err(kind_from_errno(e))),
    }
    let linked = fstatat(&w.dir, name, AtFlags::AT_SYMLINK_NOFOLLOW);
    if !linked.as_ref().is_ok_and(|st| same_inode(st, w)) {
        let _ = unlinkat(&w.dir, name, UnlinkatFlags::NoRemoveDir);
        return Err(w.err(AccessErrorKind::ChangedMeanwhile));
    }
    Ok(true)
}

/// Phase 3 for one file: the last look, the rename, the directory's fsync.
fn rename_into_place(w: &mut PendingWrite) -> Result<(), AccessError> {
    check_unchanged(w)?;
    let Some(temp) = w.temp.clone() else {
        return Err(w.err(AccessErrorKind::CannotReplace {
            why: "the temporary file is gone".into(),
        }));
    };
    renameat(&w.dir, temp.as_os_str(), &w.dir, w.name.as_os_str())
        .map_err(|e| w.err(kind_from_errno(e)))?;
    // Renamed into place: nothing left for Drop to clean up.
    w.temp = None;
    fsync(&w.dir).map_err(|e| w.err(kind_from_errno(e)))
}

/// Undoes phase 3 for the files already renamed: each original goes back
/// under its name (or a new file is removed again), last first.
fn put_back(renamed: &[PendingWrite], links: &[Link]) -> Result<(), AccessError> {
    let mut first_error = None;
    for (index, w) in renamed.iter().enumerate().rev() {
        let kept = links
            .iter()
            .find(|l| l.write == index && l.role == Role::Original);
        let result = match kept {
            Some(link) => renameat(&w.dir, link.name.as_os_str(), &w.dir, w.name.as_os_str())
                .map_err(|e| w.err(kind_from_errno(e))),
            None => unlinkat(&w.dir, w.name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| w.err(kind_from_errno(e))),
        };
        let result = result.and_then(|()| fsync(&w.dir).map_err(|e| w.err(kind_from_errno(e))));
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Best effort: a leftover hidden link is a dot-file ending in ".tmp", which
/// cloud-init never reads.
fn remove_links(writes: &[PendingWrite], links: &[Link]) {
    for link in links {
        let dir = &writes[link.write].dir;
        let _ = unlinkat(dir, link.name.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    // The removals must survive a crash as the renames do.
    let mut synced: Vec<usize> = Vec::new();
    for link in links {
        if !synced.contains(&link.write) {
            synced.push(link.write);
            let _ = fsync(&writes[link.write].dir);
        }
    }
}
