//! Guards for kernel state a test sets up on the host: a tmpfs mount and the
//! immutable attribute. Each undoes exactly what it did, also when the test
//! panics, so the TempDir around it can be removed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a test's directory; exactly that mountpoint is
/// unmounted on drop. Declare it after the TempDir holding the mountpoint,
/// so it is dropped (unmounted) first.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, options: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "prepare-image-test"])
            .arg(at)
            .status()
            .expect("mount (util-linux) must be installed");
        assert!(status.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    pub fn remount_ro(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount ro {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A file attribute set with `chattr +LETTER`, removed again on drop.
struct Attribute {
    path: PathBuf,
    letter: char,
}

impl Attribute {
    fn set(path: &Path, letter: char) -> Attribute {
        let out = Command::new("chattr")
            .arg(format!("+{letter}"))
            .arg(path)
            .output()
            .expect("chattr (e2fsprogs) must be installed");
        assert!(
            out.status.success(),
            "chattr +{letter} {} failed (the test needs a file system with file attributes, \
             like ext4 or tmpfs): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Attribute {
            path: path.to_path_buf(),
            letter,
        }
    }
}

impl Drop for Attribute {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .arg(format!("-{}", self.letter))
            .arg(&self.path)
            .status();
    }
}

/// `chattr +i` on a path, undone on drop.
pub struct Immutable(#[allow(dead_code)] Attribute);

impl Immutable {
    pub fn set(path: &Path) -> Immutable {
        Immutable(Attribute::set(path, 'i'))
    }
}

/// `chattr +a` (append-only) on a path, undone on drop.
pub struct AppendOnly(#[allow(dead_code)] Attribute);

impl AppendOnly {
    pub fn set(path: &Path) -> AppendOnly {
        AppendOnly(Attribute::set(path, 'a'))
    }
}
