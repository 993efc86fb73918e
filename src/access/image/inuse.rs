//! Is someone else using this image? Editing an image that a running VM has
//! open, or that is attached to a loop device, corrupts it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

/// A process (not this one) holding the image open for writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub pid: u32,
    pub command: String,
}

/// Processes that have `image` open for writing, found through /proc.
pub fn writers(image: &File) -> Vec<Writer> {
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
