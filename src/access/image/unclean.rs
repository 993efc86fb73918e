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
            let mut sb = [0u8; EXT_INCOMPAT_AT + 4];
            read_at(&mut sb, EXT_SUPERBLOCK)?;
            Ok(Some(ext_needs_recovery(&sb)))
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
