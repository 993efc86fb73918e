//! Mounting a filesystem from an image, privately.
//!
//! The process first moves into a mount namespace of its own with private
//! propagation: our mounts are invisible to the host, and when the process
//! dies — even by SIGKILL — the kernel tears the namespace and its mounts
//! down, which lets autoclear detach the loop devices. The mountpoint is a
//! fresh temp directory removed with `rmdir` only after a successful
//! unmount: a failed unmount must never become a recursive delete of the
//! image's contents.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context as _, Result, anyhow};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// Moves this process into a private mount namespace, once.
pub fn enter_private_namespace() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = (|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context(
                "creating a private mount namespace (unshare CLONE_NEWNS; are you root?)",
            )?;
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .context("making mounts private in the new mount namespace")?;
            Ok(())
        })();
    });
    result
}

/// How often and how long to retry an unmount that is busy for a moment
/// (udev or a scanner may have the filesystem open briefly).
const UNMOUNT_ATTEMPTS: u32 = 10;
const UNMOUNT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// A failed mount(2), with its errno for callers that tell causes apart (EROFS: a read-only
/// mount of a filesystem whose journal or log needs a replay the read-only device forbids).
#[derive(Debug)]
pub struct MountError {
    pub errno: Errno,
    message: String,
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MountError {}

impl MountError {
    /// The errno of a failed `Mount::new`, if that is what `e` is.
    pub fn errno_of(e: &anyhow::Error) -> Option<Errno> {
        e.downcast_ref::<MountError>().map(|m| m.errno)
    }
}

/// A mounted filesystem on a temp directory this process created.
#[derive(Debug)]
pub struct Mount {
    mountpoint: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Mounts `device` (type `fstype`) with nosuid, nodev, noexec: an image is
    /// untrusted, nothing in it may run or act as a device here.
    pub fn new(device: &Path, fstype: &str, read_only: bool, data: &str) -> Result<Mount> {
        enter_private_namespace()?;
        let mountpoint = make_temp_dir()?;
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        let data = (!data.is_empty()).then_some(data);
        if let Err(e) = nix::mount::mount(Some(device), &mountpoint, Some(fstype), flags, data) {
            let _ = std::fs::remove_dir(&mountpoint);
            let message = format!(
                "mounting {} ({fstype}{}) failed: {e}{}",
                device.display(),
                if read_only { ", read-only" } else { "" },
                match e {
                    Errno::EINVAL | Errno::ENODEV => {
                        " (the kernel cannot mount this filesystem: is it damaged, or a type this kernel lacks?)"
                    }
                    // How ext4, xfs and btrfs report a bad checksum
                    // (EFSBADCRC) and corrupt metadata (EFSCORRUPTED).
                    Errno::EBADMSG | Errno::EUCLEAN => {
                        " (the filesystem is damaged: a checksum or its metadata is wrong; check a copy of the image with fsck)"
                    }
                    _ => "",
                }
            );
            return Err(anyhow::Error::new(MountError { errno: e, message }));
        }
        Ok(Mount {
            mountpoint,
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and removes the mountpoint, reporting errors.
    pub fn close(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if self.mounted {
            let mut last = Errno::UnknownErrno;
            for attempt in 0..UNMOUNT_ATTEMPTS {
                match nix::mount::umount2(&self.mountpoint, MntFlags::empty()) {
                    Ok(()) | Err(Errno::EINVAL) => {
                        self.mounted = false;
                        break;
                    }
                    Err(e) => {
                        last = e;
                        if e != Errno::EBUSY || attempt + 1 == UNMOUNT_ATTEMPTS {
                            break;
                        }
                        std::thread::sleep(UNMOUNT_PAUSE);
                    }
                }
            }
            if self.mounted {
                return Err(anyhow!(
                    "unmounting {} failed: {last}",
                    self.mountpoint.display()
                ));
            }
        }
        // Only an empty directory can be removed this way: safe by design.
        std::fs::remove_dir(&self.mountpoint)
            .with_context(|| format!("removing the mountpoint {}", self.mountpoint.display()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            // Flush before a forced exit path; never panic.
            nix::unistd::sync();
        }
        let _ = self.release();
    }
}

fn make_temp_dir() -> Result<PathBuf> {
    super::tempdirs::create("mnt")
}
