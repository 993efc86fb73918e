//! NTFS read in user space with the `ntfs` crate: straight out of the image
//! file, no root, no loop device, no mount. It serves Windows detection (the
//! partition holding `Windows/System32/config/SYSTEM`), the Windows doctor's
//! reads, and the checks that refuse a volume Windows left unfinished
//! (dirty flag, live hibernation file, unclean `$LogFile`), which must be
//! made before ntfs-3g ever sees the volume: ntfs-3g mounts a dirty volume
//! read-write without a word.
//!
//! Names are looked up as Windows does: case-insensitively, by the volume's
//! own `$UpCase` table. Every call into the crate is behind `catch_unwind`,
//! and every read is capped before anything is allocated.

use std::io::{Read, Seek};
use std::panic::{AssertUnwindSafe, catch_unwind};

use anyhow::{Result, anyhow, bail};
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileNamespace, NtfsVolumeFlags};
use ntfs::{KnownNtfsFileRecordNumber, Ntfs, NtfsFile, NtfsReadSeek};

/// The registry hive whose presence marks a Windows system volume.
pub const SYSTEM_HIVE: &str = "Windows/System32/config/SYSTEM";

/// Path components deeper than this are refused: no Windows path the checks
/// read comes near, and a hostile image cannot make a walk unbounded.
const MAX_DEPTH: usize = 64;

/// An NTFS volume opened for reading.
pub struct NtfsVolume<R: Read + Seek> {
    fs: R,
    ntfs: Ntfs,
}

impl<R: Read + Seek> std::fmt::Debug for NtfsVolume<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtfsVolume")
            .field("size", &self.ntfs.size())
            .finish()
    }
}

/// Runs a call into the `ntfs` crate; a panic on a crafted volume becomes an
/// error instead of aborting the run.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(_) => bail!("the NTFS reader failed on {what}: the volume's metadata is damaged"),
    }
}

fn ntfs_error(e: ntfs::NtfsError) -> anyhow::Error {
    anyhow!("{e}")
}

/// What Windows left unfinished on a volume: each makes the on-disk state
/// older than what Windows will see when it boots, so nothing may be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfinished {
    /// `$Volume`'s dirty flag: Windows runs chkdsk at the next boot.
    Dirty,
    /// `hiberfil.sys` holds a live hibernation image (Fast Startup); the
    /// signature found.
    Hibernated(String),
    /// `$LogFile` has transactions not yet applied to the volume.
    LogNotClean,
}

impl Unfinished {
    pub fn describe(&self) -> String {
        match self {
            Unfinished::Dirty => "the NTFS volume is marked dirty".to_string(),
            Unfinished::Hibernated(sig) => {
                format!(
                    "Windows is hibernated (hiberfil.sys has a live `{sig}` header: Fast Startup)"
                )
            }
            Unfinished::LogNotClean => "the NTFS log ($LogFile) was not closed cleanly".to_string(),
        }
    }
}

/// What to do about any [`Unfinished`] state: the one remedy that leaves the
/// volume as Windows itself wants it.
pub const UNFINISHED_REMEDY: &str = "boot Windows, disable Fast Startup (powercfg /h off), shut down cleanly, and capture the image again";

/// Hibernation file signatures of a live image (resume pending or under
/// way). After a resume Windows zeroes the header or leaves the lowercase
/// `hibr`/`wake`, which is not live.
const LIVE_HIBERNATION: [&[u8; 4]; 5] = [b"HIBR", b"WAKE", b"RSTR", b"LINK", b"BRKH"];

/// Whether the first bytes of `hiberfil.sys` are a live hibernation header;
/// the signature when they are.
pub fn live_hibernation(header: &[u8]) -> Option<String> {
    let sig = header.get(..4)?;
    LIVE_HIBERNATION
        .iter()
        .find(|s| s.as_slice() == sig)
        .map(|s| String::from_utf8_lossy(s.as_slice()).into_owned())
}

/// The restart area's flag Windows sets when the volume was shut down
/// cleanly (no client has log records to replay).
const RESTART_VOLUME_IS_CLEAN: u16 = 0x0002;
/// `client_in_use_list` when no log client is active.
const LOGFILE_NO_CLIENT: u16 = 0xffff;

/// Whether a `$LogFile` (its first two pages, the restart pages) says the
/// volume was closed cleanly, as ntfs-3g's `ntfs_is_logfile_clean` decides:
/// a log that is all 0xff (freshly formatted or emptied) is clean; otherwise
/// each restart page must be `RSTR` with no client in use or the clean flag
/// set. Anything else (`CHKD`, damaged pages) is not clean.
pub fn logfile_clean(log: &[u8], page_size: usize) -> bool {
    let pages: Vec<&[u8]> = log.chunks(page_size).take(2).collect();
    if pages.is_empty() {
        return false;
    }
    let mut found = false;
    for page in pages {
        if page.iter().all(|&b| b == 0xff) {
            continue;
        }
        if page.get(..4) != Some(b"RSTR".as_slice()) {
            return false;
        }
        let u16_at = |at: usize| {
            page.get(at..at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        // Restart page header: restart_area_offset at 0x18; restart area:
        // client_in_use_list at +0x0c, flags at +0x0e.
        let Some(area) = u16_at(0x18).map(usize::from) else {
            return false;
        };
        let (Some(in_use), Some(flags)) = (u16_at(area + 0x0c), u16_at(area + 0x0e)) else {
            return false;
        };
        if in_use != LOGFILE_NO_CLIENT && flags & RESTART_VOLUME_IS_CLEAN == 0 {
            return false;
        }
        found = true;
    }
    // All 0xff: an empty log; or at least one clean restart page.
    found || log.iter().take(2 * page_size).all(|&b| b == 0xff)
}

/// The restart pages' size: 4096 on every NTFS Windows writes.
const LOG_PAGE: usize = 4096;

impl<R: Read + Seek> NtfsVolume<R> {
    /// Opens the NTFS volume at the start of `fs`.
    pub fn open(mut fs: R) -> Result<NtfsVolume<R>> {
        let ntfs = guarded("the boot sector", || {
            let mut ntfs = Ntfs::new(&mut fs).map_err(ntfs_error)?;
            ntfs.read_upcase_table(&mut fs).map_err(ntfs_error)?;
            Ok(ntfs)
        })?;
        Ok(NtfsVolume { fs, ntfs })
    }

    /// The file at a `/`-separated path from the volume's root, names
    /// folded as NTFS folds them; `None` when a component is missing.
    fn lookup<'n>(ntfs: &'n Ntfs, fs: &mut R, path: &str) -> Result<Option<NtfsFile<'n>>> {
        let mut file = ntfs.root_directory(fs).map_err(ntfs_error)?;
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.len() > MAX_DEPTH {
            bail!("path {path} is deeper than {MAX_DEPTH} components");
        }
        for part in parts {
            if !file.is_directory() {
                return Ok(None);
            }
            let index = file.directory_index(fs).map_err(ntfs_error)?;
            let mut finder = index.finder();
            let Some(entry) = NtfsFileNameIndex::find(&mut finder, ntfs, fs, part) else {
                return Ok(None);
            };
            let entry = entry.map_err(ntfs_error)?;
            file = entry.to_file(ntfs, fs).map_err(ntfs_error)?;
        }
        Ok(Some(file))
    }

    /// Whether `path` exists (a file or a directory).
    pub fn exists(&mut self, path: &str) -> bool {
        let (ntfs, fs) = (&self.ntfs, &mut self.fs);
        guarded(path, || Ok(Self::lookup(ntfs, fs, path)?.is_some())).unwrap_or(false)
    }

    /// Whether `path` is a directory.
    pub fn is_dir(&mut self, path: &str) -> bool {
        let (ntfs, fs) = (&self.ntfs, &mut self.fs);
        guarded(path, || {
            Ok(Self::lookup(ntfs, fs, path)?.is_some_and(|f| f.is_directory()))
        })
        .unwrap_or(false)
    }

    /// The first `max` bytes of the unnamed data stream of the file at
    /// `path`, with its full length; `None` when it does not exist or is a
    /// directory.
    pub fn read_prefix(&mut self, path: &str, max: u64) -> Result<Option<(Vec<u8>, u64)>> {
        let (ntfs, fs) = (&self.ntfs, &mut self.fs);
        guarded(path, || {
            let Some(file) = Self::lookup(ntfs, fs, path)? else {
                return Ok(None);
            };
            if file.is_directory() {
                return Ok(None);
            }
            let Some(item) = file.data(fs, "") else {
                return Ok(Some((Vec::new(), 0)));
            };
            let item = item.map_err(ntfs_error)?;
            let attribute = item.to_attribute().map_err(ntfs_error)?;
            let mut value = attribute.value(fs).map_err(ntfs_error)?;
            let len = value.len();
            let take = len.min(max);
            let mut bytes = vec![0u8; usize::try_from(take)?];
            let mut done = 0;
            while done < bytes.len() {
                let n = value.read(fs, &mut bytes[done..]).map_err(ntfs_error)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            bytes.truncate(done);
            Ok(Some((bytes, len)))
        })
        .map_err(|e| anyhow!("reading {path} from the NTFS volume: {e}"))
    }

    /// The names in the directory at `path` (long names; the 8.3 aliases
    /// Windows adds are left out), or `None` when it is not a directory.
    /// At most `max` names are returned.
    pub fn list_dir(&mut self, path: &str, max: usize) -> Result<Option<Vec<String>>> {
        let (ntfs, fs) = (&self.ntfs, &mut self.fs);
        guarded(path, || {
            let Some(file) = Self::lookup(ntfs, fs, path)? else {
                return Ok(None);
            };
            if !file.is_directory() {
                return Ok(None);
            }
            let index = file.directory_index(fs).map_err(ntfs_error)?;
            let mut entries = index.entries();
            let mut names = Vec::new();
            while let Some(entry) = entries.next(fs) {
                let entry = entry.map_err(ntfs_error)?;
                let Some(key) = entry.key() else { continue };
                let key = key.map_err(ntfs_error)?;
                if key.namespace() == NtfsFileNamespace::Dos {
                    continue;
                }
                names.push(key.name().to_string_lossy());
                if names.len() >= max {
                    break;
                }
            }
            Ok(Some(names))
        })
        .map_err(|e| anyhow!("listing {path} on the NTFS volume: {e}"))
    }

    /// The `$Volume` flags' dirty bit.
    fn is_dirty(&mut self) -> Result<bool> {
        let (ntfs, fs) = (&self.ntfs, &mut self.fs);
        guarded("$Volume", || {
            let info = ntfs.volume_info(fs).map_err(ntfs_error)?;
            Ok(info.flags().contains(NtfsVolumeFlags::IS_DIRTY))
        })
    }

    /// The first two pages of `$LogFile` (its restart pages).
    fn log_restart_pages(&mut self) -> Result<Vec<u8>> {
        let (ntfs, fs) = (&self.ntfs, &mut self.fs);
        guarded("$LogFile", || {
            let file = ntfs
                .file(fs, KnownNtfsFileRecordNumber::LogFile as u64)
                .map_err(ntfs_error)?;
            let item = file
                .data(fs, "")
                .ok_or_else(|| anyhow!("$LogFile has no data"))?
                .map_err(ntfs_error)?;
            let attribute = item.to_attribute().map_err(ntfs_error)?;
            let mut value = attribute.value(fs).map_err(ntfs_error)?;
            let take = value.len().min(2 * LOG_PAGE as u64) as usize;
            let mut bytes = vec![0u8; take];
            let mut done = 0;
            while done < take {
                let n = value.read(fs, &mut bytes[done..]).map_err(ntfs_error)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            bytes.truncate(done);
            Ok(bytes)
        })
    }

    /// Everything Windows left unfinished on this volume; empty when it was
    /// shut down cleanly. Read only: nothing here replays or resets anything.
    pub fn unfinished(&mut self) -> Result<Vec<Unfinished>> {
        let mut found = Vec::new();
        if self.is_dirty()? {
            found.push(Unfinished::Dirty);
        }
        if let Some((header, _)) = self.read_prefix("hiberfil.sys", 4096)?
            && let Some(sig) = live_hibernation(&header)
        {
            found.push(Unfinished::Hibernated(sig));
        }
        if !logfile_clean(&self.log_restart_pages()?, LOG_PAGE) {
            found.push(Unfinished::LogNotClean);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hibernation_headers() {
        assert_eq!(live_hibernation(b"HIBR\0\0"), Some("HIBR".to_string()));
        assert_eq!(live_hibernation(b"WAKE"), Some("WAKE".to_string()));
        assert_eq!(live_hibernation(b"hibr\0\0\0\0"), None);
        assert_eq!(live_hibernation(&[0u8; 4096]), None);
        assert_eq!(live_hibernation(b"HI"), None);
    }

    fn restart_page(in_use: u16, flags: u16) -> Vec<u8> {
        let mut page = vec![0u8; LOG_PAGE];
        page[..4].copy_from_slice(b"RSTR");
        page[0x18..0x1a].copy_from_slice(&0x30u16.to_le_bytes());
        page[0x30 + 0x0c..0x30 + 0x0e].copy_from_slice(&in_use.to_le_bytes());
        page[0x30 + 0x0e..0x30 + 0x10].copy_from_slice(&flags.to_le_bytes());
        page
    }

    #[test]
    fn logfile_states() {
        assert!(logfile_clean(&vec![0xff; 2 * LOG_PAGE], LOG_PAGE));
        let clean = [restart_page(0, 2), restart_page(0, 2)].concat();
        assert!(logfile_clean(&clean, LOG_PAGE));
        let no_client = [restart_page(0xffff, 0), restart_page(0xffff, 0)].concat();
        assert!(logfile_clean(&no_client, LOG_PAGE));
        let unclean = [restart_page(0, 0), restart_page(0, 2)].concat();
        assert!(!logfile_clean(&unclean, LOG_PAGE));
        let mut chkd = clean.clone();
        chkd[..4].copy_from_slice(b"CHKD");
        assert!(!logfile_clean(&chkd, LOG_PAGE));
        assert!(!logfile_clean(&[], LOG_PAGE));
        assert!(!logfile_clean(&[0u8; 3], LOG_PAGE));
        // A restart area offset past the page is damaged, not clean.
        let mut wild = restart_page(0, 2);
        wild[0x18..0x1a].copy_from_slice(&0xfff8u16.to_le_bytes());
        assert!(!logfile_clean(&wild, LOG_PAGE));
    }
}
