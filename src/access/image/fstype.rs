//! Recognise what a partition holds from the magic numbers of its on-disk
//! superblock, without mounting anything.
//!
//! We need this before any mount: to choose the filesystem type and the
//! read-only options for mount(2), and to tell the user plainly when a
//! partition holds something we cannot edit directly (an LVM physical volume,
//! a LUKS container, swap). Asking the kernel to guess would mean attaching
//! the image first and, for journalled filesystems, risking a journal replay
//! that writes to the image; reading a few kilobytes in user space is
//! harmless.
//!
//! Only the primary signature of each kind is checked, at its fixed place,
//! and kinds are tried in an order that puts long, unambiguous magic strings
//! before short ones (ext's two-byte magic comes last but one). The mkfs tools
//! of e2fsprogs, xfsprogs, btrfs-progs, dosfstools, ntfs-3g, util-linux and
//! cryptsetup all wipe the signatures of a previous filesystem, so a stale
//! signature next to a live one is not a case we try to resolve.

use std::io::{self, Read, Seek, SeekFrom};

/// What a partition (or a bare image) holds, as far as the superblock tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// The ext family; `version` is 2, 3 or 4, derived from the feature
    /// flags the same way libblkid does (see [`detect`]).
    Ext {
        version: u8,
    },
    /// ext3/4 whose journal lives on another device (`mke2fs -J device=`):
    /// a read-write mount opens that device, named by its number in the
    /// superblock, on the host. Never mounted.
    ExtExternalJournal,
    Xfs,
    Btrfs,
    /// btrfs spanning several devices (or a sprout on a seed device): the
    /// kernel assembles it from any device with the same filesystem id it
    /// has seen, host devices included. Never mounted.
    BtrfsMultiDevice,
    /// An LVM2 physical volume: the root filesystem is inside a logical
    /// volume, which needs device-mapper to reach.
    Lvm2Pv,
    /// A LUKS (version 1 or 2) encrypted container.
    Luks,
    /// A swap area (or a hibernation image written over one).
    Swap,
    /// FAT12, FAT16 or FAT32 (typically the EFI System Partition).
    Vfat,
    Ntfs,
    /// None of the above: unformatted, a BIOS boot partition's code, or a
    /// kind we do not know.
    Unknown,
}

impl FsKind {
    /// The filesystem type to pass to mount(2), for the kinds we mount to
    /// edit cloud-init's configuration; `None` for everything else.
    ///
    /// All ext versions answer `"ext4"`: the ext4 driver mounts ext2 and ext3
    /// too, and it is the one that accepts `noload`. Asking for `"ext2"` with
    /// `noload` fails on current kernels (the ext4 driver, which serves the
    /// `ext2` type when `CONFIG_EXT2_FS` is off, refuses journal options for
    /// it: "Mount option(s) incompatible with ext2"), and the separate ext2
    /// driver has no such option at all. A read-only mount through the ext4
    /// driver does not add ext4 features to an ext2/ext3 filesystem.
    pub fn mount_type(&self) -> Option<&'static str> {
        match self {
            FsKind::Ext { .. } => Some("ext4"),
            FsKind::Xfs => Some("xfs"),
            FsKind::Btrfs => Some("btrfs"),
            _ => None,
        }
    }

    /// A short human name for messages and reports: "ext2", "ext3", "ext4",
    /// "xfs", "btrfs", "LVM2 physical volume", "LUKS", "swap", "vfat",
    /// "ntfs" or "unknown".
    pub fn name(&self) -> &'static str {
        match self {
            FsKind::Ext { version: 2 } => "ext2",
            FsKind::Ext { version: 3 } => "ext3",
            FsKind::Ext { .. } => "ext4",
            FsKind::ExtExternalJournal => "ext4 with an external journal",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
            FsKind::BtrfsMultiDevice => "btrfs on several devices",
            FsKind::Lvm2Pv => "LVM2 physical volume",
            FsKind::Luks => "LUKS",
            FsKind::Swap => "swap",
            FsKind::Vfat => "vfat",
            FsKind::Ntfs => "ntfs",
            FsKind::Unknown => "unknown",
        }
    }

    /// The mount(2) data string that keeps a read-only mount from replaying
    /// the filesystem's journal or log; "" for kinds without one (or that we
    /// do not mount). Always combine it with `MS_RDONLY` (`-o ro`): the
    /// kernel refuses these options on a read-write mount.
    ///
    /// Why: a read-only mount of a filesystem that was not cleanly unmounted
    /// still replays its journal by default, which writes to the device. We
    /// inspect images we must not change, so the journal stays untouched. A
    /// filesystem with a replay pending is refused before it is mounted
    /// (`image::unclean`): skipping the replay would show the last committed
    /// state, not what the guest boots with; these options are a second line.
    ///
    /// - ext2/3/4: `noload` (ignored harmlessly on ext2, which has no journal).
    /// - xfs: none. The loop device is read-only, so XFS cannot replay a dirty log and
    ///   refuses the mount (EROFS) instead; with `norecovery` it would mount and show the
    ///   stale, pre-replay state, which is not what the guest boots with (see
    ///   `image::unclean`). A clean log mounts the same either way.
    /// - btrfs: `rescue=nologreplay`. The older spelling `nologreplay` is
    ///   rejected by the 6.x kernel we tested on (6.18: "wrong fs type, bad
    ///   option"), while `rescue=nologreplay` exists since Linux 5.9; a kernel
    ///   older than 5.9 would need the old spelling.
    pub fn read_only_options(&self) -> &'static str {
        match self {
            FsKind::Ext { .. } => "noload",
            FsKind::Btrfs => "rescue=nologreplay",
            _ => "",
        }
    }
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How much we read: enough for btrfs's magic at 0x10040 and its device
/// count at 0x10088, and for a swap signature on a 64 KiB page (65536 - 10).
const PROBE_LEN: usize = BTRFS_NUM_DEVICES + 8;
/// `num_devices` of the btrfs superblock (at 64 KiB).
const BTRFS_NUM_DEVICES: usize = 0x10088;

/// Page sizes whose swap signature we look for (the signature sits in the
/// last 10 bytes of the first page): x86 and most others use 4 KiB, arm64
/// and ppc64 kernels may use 16 or 64 KiB.
const SWAP_PAGE_SIZES: [usize; 4] = [4096, 8192, 16384, 65536];

/// Swap signatures: current and old swap formats, and the hibernation
/// signatures the kernel (and uswsusp) write over a swap signature while a
/// hibernation image is stored there.
const SWAP_MAGICS: [&[u8]; 6] = [
    b"SWAPSPACE2",
    b"SWAP-SPACE",
    b"S1SUSPEND",
    b"S2SUSPEND",
    b"ULSUSPEND",
    b"LINHIB0001",
];

/// Identify the filesystem or volume whose first byte is at `offset` in
/// `file` (a partition's offset from [`super::partition::read_layout`], or 0
/// for a bare image).
///
/// Reads at most 64 KiB + 72 bytes and never writes. Bytes past the end of
/// the file read as zeros, so a tiny image simply yields
/// [`FsKind::Unknown`]. Errors are only I/O errors from `file`.
///
/// Magic numbers checked, in this order:
/// - LUKS: `"LUKS\xba\xbe"` at 0 (LUKS1 and LUKS2 share it).
/// - LVM2 PV: a `"LABELONE"` label at the start of one of the first four
///   512-byte sectors, with type `"LVM2 001"` 24 bytes into it.
/// - XFS: `"XFSB"` at 0.
/// - btrfs: `"_BHRfS_M"` at 0x10040 (the primary superblock at 64 KiB).
/// - NTFS: `"NTFS    "` (OEM id) at 3.
/// - vfat: `"FAT32   "` at 82, or `"FAT12   "`/`"FAT16   "`/`"FAT     "`
///   at 54, and the boot signature 0x55AA at 510.
/// - ext: 0xEF53 (little-endian) at 1024 + 56, plus sane block size and
///   counts. Version: 4 when any incompatible feature other than those ext3
///   knew (filetype, recover, meta_bg) or any read-only-compatible feature
///   other than sparse_super/large_file/btree_dir is set (extents, 64bit,
///   flex_bg, huge_file, metadata_csum...); else 3 with has_journal; else
///   2. An external journal device (journal_dev) is not mountable and
///   answers [`FsKind::Unknown`].
/// - swap: a swap or hibernation signature 10 bytes before the end of the
///   first page, for pages of 4, 8, 16 and 64 KiB.
pub fn detect<R: Read + Seek + ?Sized>(file: &mut R, offset: u64) -> io::Result<FsKind> {
    let mut buf = vec![0u8; PROBE_LEN];
    read_at_most(file, offset, &mut buf)?;
    Ok(classify(&buf))
}

/// Fill `buf` from `offset`, leaving zeros where the file ends early.
fn read_at_most<R: Read + Seek + ?Sized>(
    file: &mut R,
    offset: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    let filled = super::block::read_up_to(file, buf)?;
    buf[filled..].fill(0);
    Ok(())
}

/// The decision itself, on the first [`PROBE_LEN`] bytes.
fn classify(b: &[u8]) -> FsKind {
    let at = |off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);

    if at(0, b"LUKS\xba\xbe") {
        return FsKind::Luks;
    }
    if (0..4).any(|sector| at(sector * 512, b"LABELONE") && at(sector * 512 + 24, b"LVM2 001")) {
        return FsKind::Lvm2Pv;
    }
    if at(0, b"XFSB") {
        return FsKind::Xfs;
    }
    if at(0x10040, b"_BHRfS_M") {
        let devices = u64::from_le_bytes(
            b[BTRFS_NUM_DEVICES..BTRFS_NUM_DEVICES + 8]
                .try_into()
                .expect("8 bytes"),
        );
        return if devices == 1 {
            FsKind::Btrfs
        } else {
            FsKind::BtrfsMultiDevice
        };
    }
    if at(3, b"NTFS    ") {
        return FsKind::Ntfs;
    }
    let boot_signature = at(510, &[0x55, 0xAA]);
    if boot_signature
        && (at(82, b"FAT32   ")
            || at(54, b"FAT12   ")
            || at(54, b"FAT16   ")
            || at(54, b"FAT     "))
    {
        return FsKind::Vfat;
    }
    if let Some(kind) = ext(&b[1024..2048]) {
        return kind;
    }
    if SWAP_PAGE_SIZES
        .iter()
        .any(|&page| SWAP_MAGICS.iter().any(|magic| at(page - 10, magic)))
    {
        return FsKind::Swap;
    }
    FsKind::Unknown
}

/// Recognise an ext2/3/4 superblock (the 1024 bytes at offset 1024).
fn ext(sb: &[u8]) -> Option<FsKind> {
    let le16 = |off: usize| u16::from_le_bytes([sb[off], sb[off + 1]]);
    let le32 = |off: usize| u32::from_le_bytes([sb[off], sb[off + 1], sb[off + 2], sb[off + 3]]);

    const MAGIC: u16 = 0xEF53;
    if le16(0x38) != MAGIC {
        return None;
    }
    // Two bytes of magic are easy to hit by chance: insist on a plausible
    // superblock too (inodes and blocks exist, block size 1 KiB..64 KiB).
    let compat = le32(0x5C);
    let incompat = le32(0x60);
    let ro_compat = le32(0x64);

    const INCOMPAT_64BIT: u32 = 0x0080;
    let inodes_count = le32(0x00);
    let mut blocks_count = u64::from(le32(0x04));
    if incompat & INCOMPAT_64BIT != 0 {
        blocks_count |= u64::from(le32(0x150)) << 32;
    }
    let log_block_size = le32(0x18);
    if inodes_count == 0 || blocks_count == 0 || log_block_size > 6 {
        return None;
    }

    const COMPAT_HAS_JOURNAL: u32 = 0x0004;
    const INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
    // What ext3 (and so also ext2) understood; anything beyond is ext4's.
    const INCOMPAT_EXT3: u32 = 0x0002 /* filetype */ | 0x0004 /* recover */ | 0x0010 /* meta_bg */;
    const RO_COMPAT_EXT3: u32 =
        0x0001 /* sparse_super */ | 0x0002 /* large_file */ | 0x0004 /* btree_dir */;

    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Some(FsKind::Unknown);
    }
    // A journal but no journal inode: the kernel takes the journal device
    // from s_journal_dev (as ext4_load_journal does).
    let journal_inode = le32(0xE0);
    if compat & COMPAT_HAS_JOURNAL != 0 && journal_inode == 0 {
        return Some(FsKind::ExtExternalJournal);
    }
    let version = if incompat & !INCOMPAT_EXT3 != 0 || ro_compat & !RO_COMPAT_EXT3 != 0 {
        4
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        3
    } else {
        2
    };
    Some(FsKind::Ext { version })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> Vec<u8> {
        vec![0u8; PROBE_LEN]
    }

    fn ext_sb(compat: u32, incompat: u32, ro_compat: u32) -> Vec<u8> {
        let mut b = blank();
        let sb = 1024;
        b[sb..sb + 4].copy_from_slice(&128u32.to_le_bytes());
        b[sb + 4..sb + 8].copy_from_slice(&1024u32.to_le_bytes());
        b[sb + 0x38..sb + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        b[sb + 0x5C..sb + 0x60].copy_from_slice(&compat.to_le_bytes());
        b[sb + 0x60..sb + 0x64].copy_from_slice(&incompat.to_le_bytes());
        b[sb + 0x64..sb + 0x68].copy_from_slice(&ro_compat.to_le_bytes());
        // An internal journal is inode 8.
        b[sb + 0xE0..sb + 0xE4].copy_from_slice(&8u32.to_le_bytes());
        b
    }

    #[test]
    fn ext_versions_follow_feature_flags() {
        assert_eq!(classify(&ext_sb(0, 0x2, 0x3)), FsKind::Ext { version: 2 });
        assert_eq!(classify(&ext_sb(0x4, 0x2, 0x3)), FsKind::Ext { version: 3 });
        // extents
        assert_eq!(
            classify(&ext_sb(0x4, 0x42, 0x3)),
            FsKind::Ext { version: 4 }
        );
        // metadata_csum alone (a read-only-compatible ext4 feature)
        assert_eq!(classify(&ext_sb(0, 0x2, 0x403)), FsKind::Ext { version: 4 });
        // external journal device
        assert_eq!(classify(&ext_sb(0, 0x8, 0)), FsKind::Unknown);
        // a filesystem whose journal is on another device
        let mut external = ext_sb(0x4, 0x42, 0x3);
        external[1024 + 0xE0..1024 + 0xE4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(classify(&external), FsKind::ExtExternalJournal);
        assert_eq!(FsKind::ExtExternalJournal.mount_type(), None);
    }

    #[test]
    fn btrfs_on_one_device_only_is_mountable() {
        let mut b = blank();
        b[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        for (devices, kind) in [
            (1u64, FsKind::Btrfs),
            (2, FsKind::BtrfsMultiDevice),
            (0, FsKind::BtrfsMultiDevice),
        ] {
            b[BTRFS_NUM_DEVICES..BTRFS_NUM_DEVICES + 8].copy_from_slice(&devices.to_le_bytes());
            assert_eq!(classify(&b), kind);
        }
        assert_eq!(FsKind::BtrfsMultiDevice.mount_type(), None);
    }

    #[test]
    fn ext_magic_alone_is_not_enough() {
        let mut b = blank();
        b[1024 + 0x38..1024 + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        assert_eq!(classify(&b), FsKind::Unknown);
    }

    #[test]
    fn short_files_read_as_zeros() {
        let mut c = io::Cursor::new(b"XFSB".to_vec());
        assert_eq!(detect(&mut c, 0).unwrap(), FsKind::Xfs);
        assert_eq!(detect(&mut c, 100).unwrap(), FsKind::Unknown);
    }

    #[test]
    fn swap_on_large_pages() {
        let mut b = blank();
        b[65536 - 10..65536].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(classify(&b), FsKind::Swap);
    }

    #[test]
    fn fat_needs_boot_signature() {
        let mut b = blank();
        b[54..62].copy_from_slice(b"FAT16   ");
        assert_eq!(classify(&b), FsKind::Unknown);
        b[510] = 0x55;
        b[511] = 0xAA;
        assert_eq!(classify(&b), FsKind::Vfat);
    }

    #[test]
    fn mount_details() {
        let ext2 = FsKind::Ext { version: 2 };
        assert_eq!(ext2.name(), "ext2");
        assert_eq!(ext2.mount_type(), Some("ext4"));
        assert_eq!(ext2.read_only_options(), "noload");
        assert_eq!(FsKind::Lvm2Pv.mount_type(), None);
        assert_eq!(FsKind::Lvm2Pv.read_only_options(), "");
    }
}
