//! `doctor --fix` on a Windows image: the registry DWORDs the checks named,
//! set through an ntfs-3g mount with the registry's in-place writer.
//!
//! Each hive is patched in place, not replaced: the changed data bytes are
//! written at their offsets in the same file, then the base block, then
//! fsync. A replacement (write a temp file, rename over) would give the hive
//! a new MFT record with ntfs-3g's default security descriptor instead of
//! Windows's, drop its alternate data streams and object id, and allocate
//! new clusters; writing in place changes no size, allocation or metadata
//! but the bytes and the file's times. The order makes a crash safe: data
//! first (the base block's checksum covers only the base block), so until
//! the base block is written the hive is the old, consistent one plus a new
//! value; the base block last makes it a completed write as Windows leaves
//! one (equal sequence numbers, new time, checksum).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::doctor::registry::{DwordFix, HiveFile};
use super::registry::{DwordWrite, filetime_now, set_dwords};
use crate::access::image::windows::NtfsWriteMount;
use crate::access::root::Root;

/// One hive's edit, computed before anything is mounted for writing.
pub struct HiveEdit {
    pub hive: HiveFile,
    /// The hive as read (the bytes the edit was computed on).
    pub before: Vec<u8>,
    pub after: Vec<u8>,
    pub changed: Vec<std::ops::Range<usize>>,
    pub fixes: Vec<DwordFix>,
}

/// Computes each hive's new bytes; `read` gives a hive's current bytes.
pub fn plan(
    fixes: &[DwordFix],
    mut read: impl FnMut(HiveFile) -> Result<Vec<u8>>,
) -> Result<Vec<HiveEdit>> {
    let mut edits = Vec::new();
    for hive in [HiveFile::System, HiveFile::Software] {
        let mine: Vec<DwordFix> = fixes.iter().filter(|f| f.hive == hive).cloned().collect();
        if mine.is_empty() {
            continue;
        }
        let before = read(hive)?;
        let mut after = before.clone();
        let writes: Vec<DwordWrite> = mine.iter().map(DwordFix::write).collect();
        let written = set_dwords(&mut after, &writes, filetime_now())
            .with_context(|| hive.path().to_string())?;
        for (fix, previous) in mine.iter().zip(&written.previous) {
            if *previous != fix.from {
                bail!(
                    "{}: {}\\{} holds {previous}, not {} as checked: nothing written",
                    hive.path(),
                    fix.key,
                    fix.value,
                    fix.from
                );
            }
        }
        edits.push(HiveEdit {
            hive,
            before,
            after,
            changed: written.changed,
            fixes: mine,
        });
    }
    Ok(edits)
}

/// Writes the edits through the mount: each hive's file (found inside the
/// volume, links followed only inside it) must still hold exactly the bytes
/// the edit was computed on. `written` turns true before the first byte is
/// written, so that a later failure is told apart from one that wrote
/// nothing.
pub fn apply(mount: &NtfsWriteMount, edits: &[HiveEdit], written: &mut bool) -> Result<()> {
    let root = Root::open(mount.path())?;
    for edit in edits {
        let rel = root
            .resolve(Path::new(edit.hive.path()))
            .with_context(|| edit.hive.path().to_string())?;
        let path = mount.path().join(rel);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("opening {} on the mounted volume", edit.hive.path()))?;
        let len = file.metadata()?.len();
        if len != edit.before.len() as u64 {
            bail!(
                "{} is {len} bytes on the mounted volume, {} as read: nothing written",
                edit.hive.path(),
                edit.before.len()
            );
        }
        let mut current = vec![0u8; edit.before.len()];
        file.read_exact_at(&mut current, 0)?;
        if current != edit.before {
            bail!(
                "{} on the mounted volume differs from what was read: nothing written",
                edit.hive.path()
            );
        }
        // Data ranges first, the base block (the range at 0) last.
        let mut ranges = edit.changed.clone();
        ranges.sort_by_key(|r| std::cmp::Reverse(r.start));
        for range in ranges {
            *written = true;
            file.write_all_at(&edit.after[range.clone()], range.start as u64)
                .with_context(|| format!("writing {}", edit.hive.path()))?;
        }
        file.sync_all()
            .with_context(|| format!("flushing {}", edit.hive.path()))?;
    }
    Ok(())
}
