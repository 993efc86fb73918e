//! Is someone else using this image? Editing an image that a running VM has
//! open, or that is attached to a loop device, corrupts it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// A process (not this one) holding the image open for writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub pid: u32,
    pub command: String,
}

/// Processes that have `image` open for writing, found through /proc.
pub fn writers(image: &File) -> Vec<Writer> {
    // Walking every process's descriptors costs a stat per descriptor on the
    // host (a fifth of a `status` here, more on a busy build host); the
    // kernel answers "nobody has it open for writing" in two calls.
    if open_for_writing_by_anyone(image) == Some(false) {
        return Vec::new();
    }
    let Ok(meta) = image.metadata() else {
        return Vec::new();
    };
    let own = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for proc_entry in procs.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // stat() follows the magic link to the open file itself.
            let Ok(target) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if target.dev() != meta.dev() || target.ino() != meta.ino() {
                continue;
            }
            let fdinfo = proc_entry.path().join("fdinfo").join(fd.file_name());
            let writable = std::fs::read_to_string(fdinfo).ok().and_then(|info| {
                let flags = info
                    .lines()
                    .find_map(|l| l.strip_prefix("flags:"))?
                    .trim()
                    .to_string();
                u32::from_str_radix(&flags, 8).ok()
            });
            if writable.is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32)
            {
                let command =
                    std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
                found.push(Writer {
                    pid,
                    command: command.trim().to_string(),
                });
                break;
            }
        }
    }
    found
}

/// Whether any open file (this process's too) has `image` open for writing, as the
/// kernel's lease rules tell: a read lease is refused (EAGAIN) while one does. None where the
/// kernel does not say: leases disabled or not supported by the filesystem, a file the user
/// neither owns nor has CAP_LEASE for, `image` itself open for writing.
fn open_for_writing_by_anyone(image: &File) -> Option<bool> {
    // While the lease is held (two system calls), another process opening the file for
    // writing would make the kernel send this one SIGIO, whose default action ends it: it
    // is ignored for that moment, and its disposition put back after.
    let ignore = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::SigIgn,
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: sets the disposition to ignore, no handler code runs.
    let previous = unsafe { nix::sys::signal::sigaction(nix::sys::signal::SIGIO, &ignore) }.ok()?;
    let fd = image.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    let leased = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    let answer = if leased == 0 {
        // SAFETY: as above; gives the lease back.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        Some(false)
    } else {
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Some(true),
            _ => None,
        }
    };
    // SAFETY: puts back the disposition read above.
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::SIGIO, &previous) }.ok();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_answer_sees_a_writer_and_the_walk_excludes_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        std::fs::write(&path, b"disk").unwrap();
        let image = File::open(&path).unwrap();
        assert_eq!(open_for_writing_by_anyone(&image), Some(false));
        assert_eq!(writers(&image), Vec::new());

        let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert_eq!(open_for_writing_by_anyone(&image), Some(true));
        // This process's own descriptor is not another writer.
        assert_eq!(writers(&image), Vec::new());
        drop(writer);
        assert_eq!(open_for_writing_by_anyone(&image), Some(false));
    }
}
