//! XFS read in user space with the `lamxfs` crate: v5 (CRC) and v4
//! (`crc=0`, the CentOS 7 era, which this host's kernel no longer mounts).
//!
//! `lamxfs` replays a v5 log that still holds committed changes in memory
//! (nothing is written), so reads show what the guest will boot with; a log
//! it cannot replay (any dirty v4 log) is refused with an error, never
//! read past.
//!
//! `lamxfs` does not surface owners, so `uid`/`gid` are read from the
//! inode's core on disk, which is checked to be the same inode (its magic
//! and mode) before it is believed. After a log replay the inodes on disk
//! may be older than what lamxfs shows (the replay is in its memory, out of
//! our reach), so owners are [`UNKNOWN_OWNER`] then. Nothing a read reports
//! shows owners, and a write takes them from the kernel's mount, which
//! replays the log itself.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lamxfs::{Error, SuperblockReason, Xfs};

use super::inode_fs::{InodeFs, Locked, Source, corrupt, kind_of_mode};
use super::{CannotReplay, FsRead, NodeStat, guarded};
use crate::access::image::block::{BlockSource, Window};

/// The superblock fields that place an inode on disk, and the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    block_size: u32,
    ag_blocks: u32,
    inode_size: u16,
    inodes_per_block_log: u8,
    ag_blocks_log: u8,
    /// `sb_versionnum & XFS_SB_VERSION_NUMBITS`: 4 or 5.
    pub version: u16,
}

/// The owner of an inode whose core on disk is not the one lamxfs shows (the log replay changed
/// it): `(uid_t)-1`, which no file can have (chown(2) reads it as "leave unchanged").
pub const UNKNOWN_OWNER: u32 = u32::MAX;

/// `"XFSB"`, the superblock magic.
const SB_MAGIC: &[u8; 4] = b"XFSB";
/// `"IN"`, the inode core magic.
const INODE_MAGIC: &[u8; 2] = b"IN";

impl Geometry {
    /// Parses the primary superblock (the first 128 bytes are enough).
    pub fn parse(sb: &[u8]) -> Option<Geometry> {
        let be16 = |at: usize| Some(u16::from_be_bytes(sb.get(at..at + 2)?.try_into().ok()?));
        let be32 = |at: usize| Some(u32::from_be_bytes(sb.get(at..at + 4)?.try_into().ok()?));
        if sb.get(0..4)? != SB_MAGIC {
            return None;
        }
        Some(Geometry {
            block_size: be32(4)?,
            ag_blocks: be32(84)?,
            inode_size: be16(104)?,
            inodes_per_block_log: *sb.get(123)?,
            ag_blocks_log: *sb.get(124)?,
            version: be16(100)? & 0x000f,
        })
    }

    /// The byte offset of inode `ino`, from its AG-encoded number; `None`
    /// when a crafted geometry overflows.
    fn inode_offset(&self, ino: u64) -> Option<u64> {
        let inop = u32::from(self.inodes_per_block_log);
        let agbits = u32::from(self.ag_blocks_log).checked_add(inop)?;
        let ag = ino.checked_shr(agbits)?;
        let agbno = (ino & 1u64.checked_shl(agbits)?.wrapping_sub(1)).checked_shr(inop)?;
        let index = ino & 1u64.checked_shl(inop)?.wrapping_sub(1);
        let block = ag
            .checked_mul(u64::from(self.ag_blocks))?
            .checked_add(agbno)?;
        block
            .checked_mul(u64::from(self.block_size))?
            .checked_add(index.checked_mul(u64::from(self.inode_size))?)
    }
}

/// The version of the XFS whose superblock starts `window`: 4 or 5;
/// `None` when it is not XFS.
pub fn version(window: &Window) -> io::Result<Option<u16>> {
    let mut sb = [0u8; 128];
    window.read_at(&mut sb, 0)?;
    Ok(Geometry::parse(&sb).map(|g| g.version))
}

fn to_io(e: Error) -> io::Error {
    match e {
        // lamxfs's word for a log that still holds changes it cannot replay (a v4 log, an
        // unfinished mapping change, an unknown item, a torn log).
        Error::BadSuperblock(SuperblockReason::DirtyLog) => {
            CannotReplay(format!("lamxfs: {e}")).into_io()
        }
        Error::NotFound { .. } => io::Error::from(io::ErrorKind::NotFound),
        Error::UnsupportedFeature(f) => io::Error::new(
            io::ErrorKind::Unsupported,
            format!("xfs feature not readable in user space: {f}"),
        ),
        Error::OutOfMemory { .. } | Error::FileTooLarge { .. } => corrupt("xfs", e),
        e => corrupt("xfs", e),
    }
}

struct Handle {
    fs: Xfs<Watched>,
    window: Window,
    geometry: Geometry,
    /// The log replay changed something: an inode's core on disk may be older than the one
    /// lamxfs shows (a chown leaves the mode, which [`Handle::owners`] checks, as it was).
    replayed: bool,
}

/// The window as lamxfs's reader, counting reads of the superblock: `Xfs::open` reads it once,
/// and once more, through its replay overlay, exactly when the replay changed some block
/// (lamxfs 0.1.3, pinned; the log lies away from block 0, so reading the log does not count).
/// A read of block 0 by the replay itself only happens when it patches it, so an extra count
/// errs, if ever, towards owners unknown.
struct Watched {
    source: Source,
    superblock_reads: Arc<AtomicUsize>,
}

impl lamxfs::BlockRead for Watched {
    type Error = io::Error;

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), io::Error> {
        if offset == 0 {
            self.superblock_reads.fetch_add(1, Ordering::Relaxed);
        }
        lamxfs::BlockRead::read_at(&mut self.source, offset, buf)
    }
}

/// The XFS filesystem in `window`: the superblock read and checked, a dirty
/// v5 log replayed in memory.
pub fn load(window: Window) -> io::Result<Box<dyn FsRead>> {
    guarded("loading xfs", || {
        let mut sb = [0u8; 128];
        window.read_at(&mut sb, 0)?;
        let geometry = Geometry::parse(&sb).ok_or_else(|| corrupt("xfs", "no superblock"))?;
        let superblock_reads = Arc::new(AtomicUsize::new(0));
        let watched = Watched {
            source: Source(window.clone()),
            superblock_reads: Arc::clone(&superblock_reads),
        };
        let fs = Xfs::open(watched, window.len()).map_err(to_io)?;
        let replayed = superblock_reads.load(Ordering::Relaxed) > 1;
        Ok(Box::new(Locked::new(Handle {
            fs,
            window,
            geometry,
            replayed,
        })) as Box<dyn FsRead>)
    })
}

impl Handle {
    /// Owner and group from the inode core, checked against what `lamxfs` says of the same inode;
    /// [`UNKNOWN_OWNER`] when they differ, or when the log replay may have changed them.
    fn owners(&self, ino: u64, mode: u32) -> io::Result<(u32, u32)> {
        if self.replayed {
            return Ok((UNKNOWN_OWNER, UNKNOWN_OWNER));
        }
        let offset = self
            .geometry
            .inode_offset(ino)
            .ok_or_else(|| corrupt("xfs", format!("inode {ino} lies outside the disk")))?;
        let mut core = [0u8; 16];
        self.window.read_at(&mut core, offset)?;
        let core_mode = u16::from_be_bytes([core[2], core[3]]);
        if &core[0..2] != INODE_MAGIC || u32::from(core_mode) != mode {
            return Ok((UNKNOWN_OWNER, UNKNOWN_OWNER));
        }
        let be32 =
            |at: usize| u32::from_be_bytes([core[at], core[at + 1], core[at + 2], core[at + 3]]);
        Ok((be32(8), be32(12)))
    }
}

impl InodeFs for Handle {
    type Inode = lamxfs::Inode;
    const NAME: &'static str = "xfs";

    fn resolve(&mut self, path: &[u8]) -> io::Result<Option<lamxfs::Inode>> {
        match self.fs.resolve(lamxfs::Path::new(path)) {
            Ok(inode) => Ok(Some(inode)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    fn stat(&mut self, inode: &lamxfs::Inode) -> io::Result<NodeStat> {
        let m = self.fs.metadata(inode).map_err(to_io)?;
        let (uid, gid) = self.owners(inode.ino, m.mode())?;
        Ok(NodeStat {
            kind: kind_of_mode(m.mode()),
            size: m.size(),
            mode: m.mode() & 0o7777,
            uid,
            gid,
        })
    }

    fn read_link(&mut self, path: &[u8]) -> io::Result<Vec<u8>> {
        self.fs.read_link(lamxfs::Path::new(path)).map_err(to_io)
    }

    fn read_at(&mut self, inode: &lamxfs::Inode, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.fs.read_file_at(inode, offset, buf).map_err(to_io)
    }

    fn list(&mut self, path: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let entries = self.fs.read_dir(lamxfs::Path::new(path)).map_err(to_io)?;
        Ok(entries.into_iter().map(|e| e.name).collect())
    }
}
