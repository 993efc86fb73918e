//! Filesystems that were not shut down cleanly: changes committed to the ext4 journal, the XFS
//! log or the btrfs log tree that the guest's kernel replays when it next mounts the disk.
//!
//! Reads must show what the guest will boot with, that is the state after that replay. The
//! user-space readers replay in memory where they can (ext4-view: journals with `64bit` and
//! `csum_v3`; lamxfs: v5 logs). Where they cannot (lambutter never replays a btrfs log tree;
//! older ext3/4 journals; a log lamxfs refuses), the image is refused with [`refusal`] instead
//! of being read at its stale, pre-replay state, and so is the root user's kernel read (a
//! read-only mount must not replay onto the user's image, and a mount that skips the replay
//! shows the stale state). A write is planned on that read, so it is refused too.
//!
//! The superblock says whether a replay is pending for ext4 (`needs_recovery`) and btrfs
//! (`log_root`); for XFS it takes the log itself, which lamxfs parses (a log it cannot replay is
//! its `DirtyLog` error) and the kernel checks when it mounts (on the read-only loop device it
//! refuses a dirty log with EROFS rather than replay it).

use std::io;

use super::fstype::FsKind;

/// ext2/3/4: the primary superblock's place in the partition.
const EXT_SUPERBLOCK: u64 = 1024;
/// `s_magic`, `s_feature_compat`, `s_feature_incompat`: byte offsets in the ext superblock.
const EXT_MAGIC_AT: usize = 0x38;
const EXT_COMPAT_AT: usize = 0x5c;
const EXT_INCOMPAT_AT: usize = 0x60;
const EXT_MAGIC: u16 = 0xef53;
const EXT_COMPAT_HAS_JOURNAL: u32 = 0x4;
/// `EXT3_FEATURE_INCOMPAT_RECOVER`: set while the filesystem is mounted and left set by a
/// crash; the kernel replays the journal when it sees it.
const EXT_INCOMPAT_RECOVER: u32 = 0x4;

/// The ext superblock's size, and where it keeps the fields the journal check reads.
const EXT_SUPERBLOCK_SIZE: usize = 1024;
const EXT_FIRST_DATA_BLOCK_AT: usize = 0x14;
const EXT_LOG_BLOCK_SIZE_AT: usize = 0x18;
const EXT_INODES_PER_GROUP_AT: usize = 0x28;
const EXT_INODE_SIZE_AT: usize = 0x58;
const EXT_RO_COMPAT_AT: usize = 0x64;
const EXT_JOURNAL_INUM_AT: usize = 0xe0;
const EXT_DESC_SIZE_AT: usize = 0xfe;
const EXT_CHECKSUM_AT: usize = 0x3fc;
const EXT_INCOMPAT_64BIT: u32 = 0x80;
const EXT_RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// The inode's flags and its 60-byte block map (an extent tree when `EXTENTS_FL`).
const INODE_FLAGS_AT: usize = 0x20;
const INODE_BLOCK_AT: usize = 0x28;
const INODE_EXTENTS_FL: u32 = 0x8_0000;
const EXTENT_MAGIC: u16 = 0xf30a;
/// How deep an extent tree may be (the kernel's limit), so a crafted one cannot loop.
const MAX_EXTENT_DEPTH: u16 = 5;
/// The jbd2 superblock: big-endian magic, and `s_start` (0: nothing to replay).
const JBD2_MAGIC: u32 = 0xc03b_3998;
const JBD2_START_AT: usize = 0x1c;

/// btrfs: the primary superblock's place, its magic and the tree-log root's offset in it.
const BTRFS_SUPERBLOCK: u64 = 0x1_0000;
const BTRFS_MAGIC_AT: usize = 0x40;
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";
const BTRFS_LOG_ROOT_AT: usize = 0x60;

/// Whether the filesystem of `kind`, whose partition `read_at` reads (offsets from the
/// partition's start), has changes the next mount replays: `None` when its superblock does not
/// say (XFS: see the module text) or it is not a journalling kind we mount.
pub fn replay_pending(
    kind: FsKind,
    read_at: impl Fn(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<Option<bool>> {
    match kind {
        FsKind::Ext { .. } => {
            let mut sb = [0u8; EXT_SUPERBLOCK_SIZE];
            read_at(&mut sb, EXT_SUPERBLOCK)?;
            Ok(Some(
                ext_needs_recovery(&sb) && !ext_journal_is_empty(&sb, &read_at)?,
            ))
        }
        FsKind::Btrfs => {
            let mut sb = [0u8; BTRFS_LOG_ROOT_AT + 8];
            read_at(&mut sb, BTRFS_SUPERBLOCK)?;
            Ok(Some(btrfs_has_log_tree(&sb)))
        }
        _ => Ok(None),
    }
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// `sb`: the ext superblock's first bytes (through `s_feature_incompat`).
fn ext_needs_recovery(sb: &[u8]) -> bool {
    let magic = u16::from_le_bytes([sb[EXT_MAGIC_AT], sb[EXT_MAGIC_AT + 1]]);
    magic == EXT_MAGIC
        && le32(sb, EXT_COMPAT_AT) & EXT_COMPAT_HAS_JOURNAL != 0
        && le32(sb, EXT_INCOMPAT_AT) & EXT_INCOMPAT_RECOVER != 0
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// Whether the journal of the ext filesystem whose superblock is `sb` holds nothing to replay
/// (its own superblock's `s_start` is 0): `needs_recovery` is then left over from a mount that
/// ended before it wrote anything (a crash, or a kill, right after mounting), and the kernel's
/// replay changes nothing. A journal this cannot find or read is taken as holding changes.
fn ext_journal_is_empty(
    sb: &[u8],
    read_at: &impl Fn(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<bool> {
    Ok(ext_journal_first_block(sb, read_at)?
        .map(|at| {
            let mut head = [0u8; JBD2_START_AT + 4];
            read_at(&mut head, at)?;
            let be32 = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().expect("four"));
            Ok::<_, io::Error>(be32(0) == JBD2_MAGIC && be32(JBD2_START_AT) == 0)
        })
        .transpose()?
        .unwrap_or(false))
}

/// The byte offset of the journal's first block (its superblock), from the journal inode's
/// block map or extent tree; None where the superblock or the inode does not add up.
fn ext_journal_first_block(
    sb: &[u8],
    read_at: &impl Fn(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<Option<u64>> {
    let log_block_size = le32(sb, EXT_LOG_BLOCK_SIZE_AT);
    let inodes_per_group = le32(sb, EXT_INODES_PER_GROUP_AT);
    let inode_size = u64::from(le16(sb, EXT_INODE_SIZE_AT));
    let journal = le32(sb, EXT_JOURNAL_INUM_AT);
    if log_block_size > 6 || inodes_per_group == 0 || inode_size < 128 || journal == 0 {
        return Ok(None);
    }
    let block_size = 1024u64 << log_block_size;
    let wide = le32(sb, EXT_INCOMPAT_AT) & EXT_INCOMPAT_64BIT != 0;
    let desc_size = if wide {
        u64::from(le16(sb, EXT_DESC_SIZE_AT))
    } else {
        32
    };
    if desc_size < 32 || desc_size > block_size {
        return Ok(None);
    }
    // The group descriptor table follows the superblock's block.
    let group = u64::from((journal - 1) / inodes_per_group);
    let index = u64::from((journal - 1) % inodes_per_group);
    let table = (u64::from(le32(sb, EXT_FIRST_DATA_BLOCK_AT)) + 1) * block_size;
    let mut desc = vec![0u8; desc_size as usize];
    read_at(&mut desc, table + group * desc_size)?;
    let mut inode_table = u64::from(le32(&desc, 0x8));
    if desc_size >= 64 {
        inode_table |= u64::from(le32(&desc, 0x28)) << 32;
    }
    let mut inode = [0u8; INODE_BLOCK_AT + 60];
    let Some(at) = inode_table
        .checked_mul(block_size)
        .and_then(|t| t.checked_add(index * inode_size))
    else {
        return Ok(None);
    };
    read_at(&mut inode, at)?;
    let first = if le32(&inode, INODE_FLAGS_AT) & INODE_EXTENTS_FL == 0 {
        // ext3's block map: the first direct block.
        Some(u64::from(le32(&inode, INODE_BLOCK_AT)))
    } else {
        // The extent tree, down its first entries to the leaf mapping logical block 0.
        let mut node = inode[INODE_BLOCK_AT..].to_vec();
        let mut depth_left = MAX_EXTENT_DEPTH;
        loop {
            if le16(&node, 0) != EXTENT_MAGIC || le16(&node, 2) == 0 || node.len() < 24 {
                break None;
            }
            let entry = &node[12..24];
            if le16(&node, 6) == 0 {
                let start = u64::from(le32(entry, 8)) | (u64::from(le16(entry, 6)) << 32);
                break (le32(entry, 0) == 0).then_some(start);
            }
            if depth_left == 0 {
                break None;
            }
            depth_left -= 1;
            let leaf = u64::from(le32(entry, 4)) | (u64::from(le16(entry, 8)) << 32);
            let mut next = vec![0u8; block_size as usize];
            let Some(at) = leaf.checked_mul(block_size) else {
                break None;
            };
            read_at(&mut next, at)?;
            node = next;
        }
    };
    Ok(first
        .filter(|&b| b != 0)
        .and_then(|b| b.checked_mul(block_size)))
}

/// The superblock `sb` as the kernel leaves it after replaying an empty journal: without
/// `needs_recovery`, its checksum (with `metadata_csum`) made again. None when the stored
/// checksum is not the one this computes (then nothing is patched).
pub fn ext_superblock_without_recovery(sb: &[u8]) -> Option<Vec<u8>> {
    if sb.len() != EXT_SUPERBLOCK_SIZE {
        return None;
    }
    let mut patched = sb.to_vec();
    let incompat = le32(sb, EXT_INCOMPAT_AT) & !EXT_INCOMPAT_RECOVER;
    patched[EXT_INCOMPAT_AT..EXT_INCOMPAT_AT + 4].copy_from_slice(&incompat.to_le_bytes());
    if le32(sb, EXT_RO_COMPAT_AT) & EXT_RO_COMPAT_METADATA_CSUM != 0 {
        if crc32c_raw(!0, &sb[..EXT_CHECKSUM_AT]) != le32(sb, EXT_CHECKSUM_AT) {
            return None;
        }
        let sum = crc32c_raw(!0, &patched[..EXT_CHECKSUM_AT]);
        patched[EXT_CHECKSUM_AT..].copy_from_slice(&sum.to_le_bytes());
    }
    Some(patched)
}

/// Whether this ext superblock is one whose `needs_recovery` an empty journal leaves: read
/// through `read_at`, the patched superblock to read it with (see
/// [`ext_superblock_without_recovery`]).
pub fn ext_stale_recovery_flag(
    read_at: impl Fn(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<Option<Vec<u8>>> {
    let mut sb = [0u8; EXT_SUPERBLOCK_SIZE];
    read_at(&mut sb, EXT_SUPERBLOCK)?;
    if !ext_needs_recovery(&sb) || !ext_journal_is_empty(&sb, &read_at)? {
        return Ok(None);
    }
    Ok(ext_superblock_without_recovery(&sb))
}

/// CRC32C as ext4 keeps it (no final inversion), bit by bit: it runs on one superblock.
fn crc32c_raw(mut crc: u32, bytes: &[u8]) -> u32 {
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// `sb`: the btrfs superblock's first bytes (through `log_root`).
fn btrfs_has_log_tree(sb: &[u8]) -> bool {
    let log_root = u64::from_le_bytes(
        sb[BTRFS_LOG_ROOT_AT..BTRFS_LOG_ROOT_AT + 8]
            .try_into()
            .expect("eight bytes"),
    );
    &sb[BTRFS_MAGIC_AT..BTRFS_MAGIC_AT + 8] == BTRFS_MAGIC && log_root != 0
}

/// What holds the changes a mount replays, as a message names it.
fn what_replays(kind: FsKind) -> &'static str {
    match kind {
        FsKind::Xfs => "its log",
        FsKind::Btrfs => "its log tree",
        _ => "its journal",
    }
}

/// The one-line refusal of a filesystem that was not shut down cleanly and that cannot be read
/// at its post-replay state here; `why` says what could not replay it.
pub fn refusal(display: &str, partition: u32, kind: FsKind, why: &str) -> anyhow::Error {
    let what = what_replays(kind);
    anyhow::anyhow!(
        "{display}: partition {partition} ({}) was not shut down cleanly: {what} holds changes the guest replays when it boots, and {why}, so what prepare-image would read here is not what the guest boots with; boot the image and shut it down cleanly, or, on a copy you own, mount it read-write once (this replays {what}) and unmount it",
        kind.name()
    )
}

/// Why a user-space reader shows the stale state, for [`refusal`].
pub fn reader_cannot_replay(kind: FsKind, reader_error: Option<&io::Error>) -> String {
    match (kind, reader_error) {
        (FsKind::Btrfs, _) => "the btrfs reader does not replay a log tree".to_string(),
        (_, Some(e)) => format!("the {} reader cannot replay it ({e})", kind.name()),
        (_, None) => format!("the {} reader cannot replay it", kind.name()),
    }
}

/// Why the root user's kernel read does not help: it mounts read-only and never replays.
pub const KERNEL_READ_DOES_NOT_REPLAY: &str =
    "a read-only mount does not replay it (replaying would write to the image)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnolis_without_the_final_inversion() {
        // The standard check value of CRC-32C over "123456789" is 0xe3069283.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xe306_9283);
    }

    #[test]
    fn a_superblock_whose_checksum_does_not_add_up_is_not_patched() {
        let mut sb = vec![0u8; EXT_SUPERBLOCK_SIZE];
        sb[EXT_RO_COMPAT_AT..EXT_RO_COMPAT_AT + 4]
            .copy_from_slice(&EXT_RO_COMPAT_METADATA_CSUM.to_le_bytes());
        sb[EXT_INCOMPAT_AT..EXT_INCOMPAT_AT + 4]
            .copy_from_slice(&EXT_INCOMPAT_RECOVER.to_le_bytes());
        assert_eq!(ext_superblock_without_recovery(&sb), None);
        let sum = crc32c_raw(!0, &sb[..EXT_CHECKSUM_AT]);
        sb[EXT_CHECKSUM_AT..].copy_from_slice(&sum.to_le_bytes());
        let patched = ext_superblock_without_recovery(&sb).unwrap();
        assert_eq!(le32(&patched, EXT_INCOMPAT_AT), 0);
        assert_eq!(
            le32(&patched, EXT_CHECKSUM_AT),
            crc32c_raw(!0, &patched[..EXT_CHECKSUM_AT])
        );
    }

    /// A partition of zeros with `bytes` written at `at`.
    fn partition_with(at: u64, bytes: &[u8]) -> impl Fn(&mut [u8], u64) -> io::Result<()> {
        let mut disk = vec![0u8; 0x2_0000];
        disk[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        move |buf: &mut [u8], offset: u64| {
            let start = offset as usize;
            buf.copy_from_slice(&disk[start..start + buf.len()]);
            Ok(())
        }
    }

    fn ext_superblock(compat: u32, incompat: u32) -> Vec<u8> {
        let mut sb = vec![0u8; 1024];
        sb[EXT_MAGIC_AT..EXT_MAGIC_AT + 2].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        sb[EXT_COMPAT_AT..EXT_COMPAT_AT + 4].copy_from_slice(&compat.to_le_bytes());
        sb[EXT_INCOMPAT_AT..EXT_INCOMPAT_AT + 4].copy_from_slice(&incompat.to_le_bytes());
        sb
    }

    fn btrfs_superblock(log_root: u64) -> Vec<u8> {
        let mut sb = vec![0u8; 4096];
        sb[BTRFS_MAGIC_AT..BTRFS_MAGIC_AT + 8].copy_from_slice(BTRFS_MAGIC);
        sb[BTRFS_LOG_ROOT_AT..BTRFS_LOG_ROOT_AT + 8].copy_from_slice(&log_root.to_le_bytes());
        sb
    }

    #[test]
    fn the_superblock_says_whether_ext4_and_btrfs_replay() {
        let ext4 = FsKind::Ext { version: 4 };
        // filetype|extent|64bit, with and without needs_recovery.
        let cases = [
            (ext4, ext_superblock(0x4, 0x2c2 | 0x4), Some(true)),
            (ext4, ext_superblock(0x4, 0x2c2), Some(false)),
            // No journal: the flag means nothing (the kernel ignores it too).
            (ext4, ext_superblock(0, 0x4), Some(false)),
            (ext4, vec![0u8; 1024], Some(false)),
        ];
        for (kind, sb, expected) in cases {
            let read = partition_with(EXT_SUPERBLOCK, &sb);
            assert_eq!(replay_pending(kind, read).unwrap(), expected);
        }
        let btrfs = |sb: Vec<u8>| {
            replay_pending(FsKind::Btrfs, partition_with(BTRFS_SUPERBLOCK, &sb)).unwrap()
        };
        assert_eq!(btrfs(btrfs_superblock(30_638_080)), Some(true));
        assert_eq!(btrfs(btrfs_superblock(0)), Some(false));
        let mut no_magic = btrfs_superblock(30_638_080);
        no_magic[BTRFS_MAGIC_AT] = 0;
        assert_eq!(btrfs(no_magic), Some(false));
        assert_eq!(
            replay_pending(FsKind::Xfs, partition_with(0, b"XFSB")).unwrap(),
            None
        );
    }

    #[test]
    fn a_partition_too_short_for_the_superblock_is_an_error_not_a_panic() {
        let short = |buf: &mut [u8], offset: u64| -> io::Result<()> {
            if offset + buf.len() as u64 > 512 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            buf.fill(0);
            Ok(())
        };
        assert!(replay_pending(FsKind::Ext { version: 4 }, short).is_err());
        assert!(replay_pending(FsKind::Btrfs, short).is_err());
    }

    #[test]
    fn the_refusal_names_the_image_the_partition_and_what_to_do() {
        let e = refusal(
            "disk.img",
            2,
            FsKind::Btrfs,
            &reader_cannot_replay(FsKind::Btrfs, None),
        );
        assert_eq!(
            e.to_string(),
            "disk.img: partition 2 (btrfs) was not shut down cleanly: its log tree holds changes the guest replays when it boots, and the btrfs reader does not replay a log tree, so what prepare-image would read here is not what the guest boots with; boot the image and shut it down cleanly, or, on a copy you own, mount it read-write once (this replays its log tree) and unmount it"
        );
        let e = refusal("d.qcow2", 0, FsKind::Xfs, KERNEL_READ_DOES_NOT_REPLAY);
        assert!(e.to_string().contains("partition 0 (xfs)"), "{e}");
        assert!(e.to_string().contains("(this replays its log)"), "{e}");
    }
}
