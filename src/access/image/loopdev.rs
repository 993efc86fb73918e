//! Loop devices, attached through the kernel's ioctls (no `losetup`), and
//! detached only by the guard that attached them: other processes on the same
//! machine use loop devices too, so we never touch a device we did not set up.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use linux_raw_sys::loop_device::{
    LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY, LOOP_CLR_FD, LOOP_CONFIGURE, LOOP_CTL_GET_FREE,
    loop_config,
};
use nix::errno::Errno;

/// The loop control device; its absence means no loop support.
pub const LOOP_CONTROL: &str = "/dev/loop-control";

/// How often to retry when another process takes the free device between
/// LOOP_CTL_GET_FREE and LOOP_CONFIGURE.
const ATTACH_ATTEMPTS: usize = 16;

/// All ioctls in one place, each wrapped to return `Errno`.
mod ioctl {
    use super::*;

    nix::ioctl_none_bad!(ctl_get_free, LOOP_CTL_GET_FREE);
    nix::ioctl_write_ptr_bad!(configure, LOOP_CONFIGURE, loop_config);
    nix::ioctl_none_bad!(clear_fd, LOOP_CLR_FD);

    pub fn get_free(control: &File) -> Result<u32, Errno> {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { ctl_get_free(control.as_raw_fd()) }?;
        Ok(n as u32)
    }

    pub fn set_config(device: &File, config: &loop_config) -> Result<(), Errno> {
        // SAFETY: `config` is a valid, fully initialised loop_config that
        // outlives the call; the kernel only reads it.
        unsafe { configure(device.as_raw_fd(), config) }.map(drop)
    }

    pub fn clear(device: &File) -> Result<(), Errno> {
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { clear_fd(device.as_raw_fd()) }.map(drop)
    }
}

/// A loop device this process attached. With `LO_FLAGS_AUTOCLEAR` the kernel
/// detaches it as soon as it is neither open nor mounted, so even a SIGKILL of
/// this process cannot leave it attached once its mounts are gone.
#[derive(Debug)]
pub struct LoopDevice {
    device: Option<File>,
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `size` bytes of `backing` starting at `offset`.
    pub fn attach(
        backing: &File,
        backing_name: &Path,
        offset: u64,
        size: u64,
        read_only: bool,
    ) -> Result<LoopDevice> {
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open(LOOP_CONTROL)
            .with_context(|| {
                format!("opening {LOOP_CONTROL} (is the loop module loaded, and are you root?)")
            })?;
        let mut flags = LO_FLAGS_AUTOCLEAR as u32;
        if read_only {
            flags |= LO_FLAGS_READ_ONLY as u32;
        }
        // SAFETY: loop_config is plain old data; all-zero is its documented
        // "unset" state.
        let mut config: loop_config = unsafe { std::mem::zeroed() };
        config.fd = backing.as_raw_fd() as u32;
        config.info.lo_offset = offset;
        config.info.lo_sizelimit = size;
        config.info.lo_flags = flags;
        let name = backing_name.as_os_str().as_encoded_bytes();
        let n = name.len().min(config.info.lo_file_name.len() - 1);
        config.info.lo_file_name[..n].copy_from_slice(&name[..n]);

        for _ in 0..ATTACH_ATTEMPTS {
            let number = ioctl::get_free(&control)
                .context("asking /dev/loop-control for a free loop device")?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = match OpenOptions::new().read(true).write(!read_only).open(&path) {
                Ok(d) => d,
                // udev may not have created the node yet; ask again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            };
            match ioctl::set_config(&device, &config) {
                Ok(()) => {
                    return Ok(LoopDevice {
                        device: Some(device),
                        path,
                    });
                }
                // Another process configured it between our two calls.
                Err(Errno::EBUSY) => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "attaching {} (offset {offset}, {size} bytes) to {}",
                            backing_name.display(),
                            path.display()
                        )
                    });
                }
            }
        }
        bail!(
            "no free loop device after {ATTACH_ATTEMPTS} attempts: other processes keep taking them; try again"
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Detaches now, reporting errors. After a successful unmount this is
    /// what the kernel's autoclear would do anyway.
    pub fn close(mut self) -> Result<()> {
        self.detach()
            .with_context(|| format!("detaching {}", self.path.display()))
    }

    fn detach(&mut self) -> Result<(), Errno> {
        let Some(device) = self.device.take() else {
            return Ok(());
        };
        match ioctl::clear(&device) {
            // ENXIO: already detached (autoclear got there first).
            Ok(()) | Err(Errno::ENXIO) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Never panic in Drop; a device still in use is detached by autoclear
        // when its last user goes away.
        let _ = self.detach();
    }
}

/// Whether the loop device `/dev/loopN` detaches itself on its last close
/// (`LO_FLAGS_AUTOCLEAR`), from sysfs.
pub fn autoclears(device: &Path) -> bool {
    let Some(name) = device.file_name() else {
        return false;
    };
    std::fs::read_to_string(Path::new("/sys/block").join(name).join("loop/autoclear"))
        .is_ok_and(|v| v.trim() == "1")
}

/// Loop devices whose backing file is `image` (by device and inode), read
/// from sysfs. Used to refuse an image that is already attached elsewhere.
pub fn attached_to(image: &File) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = image.metadata() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end_matches('\n');
        // backing_file may carry " (deleted)"; compare by inode where the
        // path still resolves.
        let same = std::fs::metadata(backing)
            .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
        if same {
            found.push(PathBuf::from(format!("/dev/{name}")));
        }
    }
    found
}
