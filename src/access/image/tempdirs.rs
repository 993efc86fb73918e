//! The temp directories of image runs (mountpoints, raw views), named with
//! the run's PID so a later run can tell those of a killed run.
//!
//! A run removes its own on every way out it can see, but a SIGKILL leaves
//! them (empty: the mounts died with the run's private mount namespace). So
//! each image run first removes the empty ones whose run is gone. Only
//! `rmdir` and the removal of an empty regular file or of a socket are used:
//! nothing with content is ever deleted.

use std::ffi::OsStr;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// Prefix of every temp directory a run makes in `$TMPDIR`.
const PREFIX: &str = "prepare-image-";

/// Creates `$TMPDIR/prepare-image-KIND.PID.XXXXXX`.
pub fn create(kind: &str) -> Result<PathBuf> {
    let template =
        std::env::temp_dir().join(format!("{PREFIX}{kind}.{}.XXXXXX", std::process::id()));
    nix::unistd::mkdtemp(&template).with_context(|| {
        format!(
            "creating a temp directory in {}",
            std::env::temp_dir().display()
        )
    })
}

/// The PID in a temp directory's name, if it is one of ours.
fn owner(name: &OsStr) -> Option<u32> {
    let name = name.to_str()?.strip_prefix(PREFIX)?;
    let mut parts = name.split('.');
    let (_kind, pid, _random) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    pid.parse().ok()
}

/// Removes the empty temp directories of runs that are no longer running.
/// Best effort: a failure only leaves an empty directory.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = owner(&entry.file_name()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        // A raw view's placeholder file: removed only while empty.
        let placeholder = dir.join("raw");
        if std::fs::symlink_metadata(&placeholder).is_ok_and(|m| m.is_file() && m.len() == 0) {
            let _ = std::fs::remove_file(&placeholder);
        }
        // An NBD server's socket, left when the daemon was killed: not content.
        let socket = dir.join(super::qemu::NBD_SOCKET);
        if std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&socket);
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_have_an_owner() {
        assert_eq!(owner(OsStr::new("prepare-image-mnt.42.aB3xYz")), Some(42));
        assert_eq!(owner(OsStr::new("prepare-image-view.7.q")), Some(7));
        assert_eq!(owner(OsStr::new("prepare-image-mnt.aB3xYz")), None);
        assert_eq!(owner(OsStr::new("other-mnt.42.aB3xYz")), None);
        assert_eq!(owner(OsStr::new("prepare-image-mnt.42.a.b")), None);
    }
}
