//! Partition tables and filesystem types of real disk images made with the
//! real tools (sfdisk, mkfs.*, cryptsetup, pvcreate). Needs root (loop
//! devices, mount) and the packages listed in `common_images`.

mod common_images;

use std::fs::File;
use std::path::Path;

use common_images::{
    LoopDevice, MIB, Mount, TestFs, copy_into, gpt_image_with, partition, path_str, poke, run,
    sha256, sparse_file,
};
use prepare_image::access::image::fstype::{FsKind, detect};
use prepare_image::access::image::partition::{Layout, LayoutError, Partition, Table, read_layout};
use tempfile::TempDir;

fn layout_of(image: &Path) -> Result<Layout, LayoutError> {
    let mut file = File::open(image).unwrap();
    let size = file.metadata().unwrap().len();
    read_layout(&mut file, size)
}

fn kind_at(image: &Path, offset: u64) -> FsKind {
    detect(&mut File::open(image).unwrap(), offset).unwrap()
}

fn part(number: u32, offset: u64, size: u64, type_name: &str, label: Option<&str>) -> Partition {
    Partition {
        number,
        offset,
        size,
        type_name: type_name.to_string(),
        label: label.map(str::to_string),
    }
}

const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BIOS: &str = "21686148-6449-6E6F-744E-656564454649";
const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const LVM: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";

/// A GPT image with 512-byte sectors like a cloud image's: BIOS boot, EFI
/// System, a root partition, an unused entry, and an LVM partition.
fn gpt_512_image(dir: &Path) -> std::path::PathBuf {
    let image = dir.join("gpt512.img");
    sparse_file(&image, 64 * MIB);
    partition(
        &image,
        &format!(
            "label: gpt\n\
             start=2048, size=2048, type={BIOS}, name=\"bios\"\n\
             start=4096, size=20480, type={ESP}, name=\"EFI System Partition\"\n\
             start=24576, size=40960, type={LINUX}\n\
             gpt512.img5 : start=65536, size=20480, type={LVM}, name=\"lvm\"\n"
        ),
        512,
    );
    image
}

#[test]
fn gpt_512_partitions_are_numbered_as_linux_does() {
    let dir = TempDir::new().unwrap();
    let image = gpt_512_image(dir.path());
    let layout = layout_of(&image).unwrap();
    assert_eq!(layout.table, Table::Gpt { sector_size: 512 });
    assert_eq!(
        layout.partitions,
        vec![
            part(1, 2048 * 512, 2048 * 512, "BIOS boot", Some("bios")),
            part(
                2,
                4096 * 512,
                20480 * 512,
                "EFI System",
                Some("EFI System Partition")
            ),
            part(3, 24576 * 512, 40960 * 512, "Linux filesystem", None),
            part(5, 65536 * 512, 20480 * 512, "Linux LVM", Some("lvm")),
        ]
    );
    assert_eq!(layout.partition(5).unwrap().end(), 86016 * 512);
    assert!(layout.partition(4).is_none());
}

#[test]
fn gpt_4096_byte_sectors() {
    let dir = TempDir::new().unwrap();
    let image = dir.path().join("gpt4k.img");
    sparse_file(&image, 64 * MIB);
    // Sector numbers are in 4096-byte sectors here.
    partition(
        &image,
        &format!(
            "label: gpt\n\
             start=256, size=2560, type={ESP}, name=\"esp\"\n\
             start=2816, size=8192, type={LINUX}, name=\"root\"\n"
        ),
        4096,
    );
    let layout = layout_of(&image).unwrap();
    assert_eq!(layout.table, Table::Gpt { sector_size: 4096 });
    assert_eq!(
        layout.partitions,
        vec![
            part(1, MIB, 10 * MIB, "EFI System", Some("esp")),
            part(2, 11 * MIB, 32 * MIB, "Linux filesystem", Some("root")),
        ]
    );
}

#[test]
fn gpt_with_a_damaged_primary_header_is_read_from_the_backup() {
    let dir = TempDir::new().unwrap();
    let image = gpt_512_image(dir.path());
    let intact = layout_of(&image).unwrap();
    // Break the primary header's CRC (a byte of its disk GUID).
    poke(&image, 512 + 60, b"\xff\xee");
    assert_eq!(layout_of(&image).unwrap(), intact);
    // Break the primary entry array instead: its CRC no longer matches.
    let dir = TempDir::new().unwrap();
    let image = gpt_512_image(dir.path());
    poke(&image, 1024 + 128 * 2 + 56, b"x\0y\0");
    assert_eq!(layout_of(&image).unwrap(), intact);
}

#[test]
fn gpt_with_both_headers_damaged_is_corrupt() {
    let dir = TempDir::new().unwrap();
    let image = gpt_512_image(dir.path());
    poke(&image, 512 + 60, b"\xff\xee");
    poke(&image, 64 * MIB - 512 + 60, b"\xff\xee");
    let err = layout_of(&image).unwrap_err();
    assert!(
        matches!(err, LayoutError::Corrupt { table: "GPT", .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("primary header"), "{message}");
    assert!(message.contains("backup header"), "{message}");
    assert!(!message.contains('\n'));
}

#[test]
fn protective_mbr_without_any_gpt_header_is_corrupt() {
    let dir = TempDir::new().unwrap();
    let image = gpt_512_image(dir.path());
    poke(&image, 512, &[0u8; 512]);
    poke(&image, 64 * MIB - 512, &[0u8; 512]);
    let err = layout_of(&image).unwrap_err();
    assert!(err.to_string().contains("protective MBR"), "{err}");
}

/// An MBR image with a primary partition, an extended one holding two
/// logical partitions (EBRs at sectors 22528 and 45056), and a last primary.
fn mbr_image(dir: &Path) -> std::path::PathBuf {
    let image = dir.join("mbr.img");
    sparse_file(&image, 100 * MIB);
    partition(
        &image,
        "label: dos\n\
         start=2048, size=20480, type=83, bootable\n\
         start=22528, size=122880, type=5\n\
         start=145408, size=20480, type=82\n\
         start=24576, size=20480, type=8e\n\
         start=47104, size=98304, type=83\n",
        512,
    );
    image
}

#[test]
fn mbr_with_extended_and_logical_partitions() {
    let dir = TempDir::new().unwrap();
    let image = mbr_image(dir.path());
    let dump = run("sfdisk", &["-d", path_str(&image)]);
    assert!(dump.contains("mbr.img6 : start=       47104"), "{dump}");
    let layout = layout_of(&image).unwrap();
    assert_eq!(layout.table, Table::Mbr);
    assert_eq!(
        layout.partitions,
        vec![
            part(1, 2048 * 512, 20480 * 512, "Linux", None),
            part(3, 145408 * 512, 20480 * 512, "Linux swap / Solaris", None),
            part(5, 24576 * 512, 20480 * 512, "Linux LVM", None),
            part(6, 47104 * 512, 98304 * 512, "Linux", None),
        ]
    );
}

#[test]
fn mbr_chain_of_boot_records_that_loops_is_corrupt() {
    let dir = TempDir::new().unwrap();
    let image = mbr_image(dir.path());
    // The second EBR (sector 45056) links back to the first, at relative
    // sector 0 of the extended partition.
    let link = 45056 * 512 + 446 + 16;
    poke(&image, link + 4, &[0x05]);
    poke(&image, link + 8, &0u32.to_le_bytes());
    poke(&image, link + 12, &2048u32.to_le_bytes());
    let err = layout_of(&image).unwrap_err();
    assert!(
        matches!(err, LayoutError::Corrupt { table: "MBR", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("loops back"), "{err}");
}

#[test]
fn mbr_link_outside_the_extended_partition_is_corrupt() {
    let dir = TempDir::new().unwrap();
    let image = mbr_image(dir.path());
    // The first EBR's link points far beyond the extended partition.
    let link = 22528 * 512 + 446 + 16;
    poke(&image, link + 8, &1_000_000u32.to_le_bytes());
    let err = layout_of(&image).unwrap_err();
    assert!(err.to_string().contains("outside the extended"), "{err}");
}

#[test]
fn truncated_gpt_image() {
    let dir = TempDir::new().unwrap();
    let image = gpt_512_image(dir.path());
    // Cut in the middle of partition 3 (sectors 24576..65536).
    let size = 30 * MIB;
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(size)
        .unwrap();
    let err = layout_of(&image).unwrap_err();
    match &err {
        LayoutError::Truncated {
            partition,
            end,
            image_size,
        } => {
            assert_eq!(*partition, 3);
            assert_eq!(*end, 65536 * 512);
            assert_eq!(*image_size, size);
        }
        other => panic!("expected a truncated image, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "partition 3 ends at byte {} but the image is only {size} bytes: the image is \
             truncated (re-copy or re-download it)",
            65536 * 512
        )
    );
}

#[test]
fn truncated_mbr_image() {
    let dir = TempDir::new().unwrap();
    let image = mbr_image(dir.path());
    // Cut inside logical partition 6: the extended partition 2 that holds
    // it is the first to reach past the end.
    let size = 60 * MIB;
    File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(size)
        .unwrap();
    let err = layout_of(&image).unwrap_err();
    assert!(
        matches!(
            err,
            LayoutError::Truncated {
                partition: 2,
                end,
                image_size
            } if end == (22528 + 122880) * 512 && image_size == size
        ),
        "{err:?}"
    );
}

#[test]
fn bare_ext4_image_is_one_pseudo_partition() {
    let dir = TempDir::new().unwrap();
    let image = dir.path().join("bare.img");
    sparse_file(&image, 64 * MIB);
    run("mke2fs", &["-q", "-F", "-t", "ext4", path_str(&image)]);
    let layout = layout_of(&image).unwrap();
    assert_eq!(layout.table, Table::None);
    assert_eq!(
        layout.partitions,
        vec![part(0, 0, 64 * MIB, "whole image", None)]
    );
    assert_eq!(kind_at(&image, 0), FsKind::Ext { version: 4 });
}

#[test]
fn bare_vfat_image_is_not_taken_for_an_mbr() {
    // A FAT boot sector ends in 0x55AA like an MBR does.
    let dir = TempDir::new().unwrap();
    for fat in [TestFs::Fat16, TestFs::Fat32] {
        let image = fat.make(dir.path());
        let layout = layout_of(&image).unwrap();
        assert_eq!(layout.table, Table::None, "{fat:?}");
        assert_eq!(layout.partitions[0].size, fat.size());
        assert_eq!(kind_at(&image, 0), FsKind::Vfat);
    }
}

#[test]
fn bare_xfs_and_luks_images() {
    let dir = TempDir::new().unwrap();
    for (fs, kind) in [(TestFs::Xfs, FsKind::Xfs), (TestFs::Luks2, FsKind::Luks)] {
        let image = fs.make(dir.path());
        assert_eq!(layout_of(&image).unwrap().table, Table::None, "{fs:?}");
        assert_eq!(kind_at(&image, 0), kind);
    }
}

/// Make `fs` in partition 2 of a GPT image and check what is detected
/// there, and that the empty BIOS boot partition 1 is unknown.
fn check_detect(fs: TestFs, expected: FsKind) {
    let dir = TempDir::new().unwrap();
    let image = gpt_image_with(dir.path(), fs);
    let layout = layout_of(&image).unwrap();
    let root = layout.partition(2).unwrap();
    assert_eq!(root.offset, 2 * MIB);
    assert_eq!(root.size, fs.size());
    assert_eq!(kind_at(&image, root.offset), expected, "{fs:?}");
    assert_eq!(
        kind_at(&image, layout.partition(1).unwrap().offset),
        FsKind::Unknown
    );
}

#[test]
fn detects_ext2() {
    check_detect(TestFs::Ext2, FsKind::Ext { version: 2 });
}

#[test]
fn detects_ext3() {
    check_detect(TestFs::Ext3, FsKind::Ext { version: 3 });
}

#[test]
fn detects_ext4() {
    check_detect(TestFs::Ext4, FsKind::Ext { version: 4 });
}

#[test]
fn detects_xfs() {
    check_detect(TestFs::Xfs, FsKind::Xfs);
}

#[test]
fn detects_btrfs() {
    check_detect(TestFs::Btrfs, FsKind::Btrfs);
}

#[test]
fn detects_swap() {
    check_detect(TestFs::Swap, FsKind::Swap);
}

#[test]
fn detects_fat12() {
    check_detect(TestFs::Fat12, FsKind::Vfat);
}

#[test]
fn detects_fat16() {
    check_detect(TestFs::Fat16, FsKind::Vfat);
}

#[test]
fn detects_fat32() {
    check_detect(TestFs::Fat32, FsKind::Vfat);
}

#[test]
fn detects_ntfs() {
    check_detect(TestFs::Ntfs, FsKind::Ntfs);
}

#[test]
fn detects_luks1() {
    check_detect(TestFs::Luks1, FsKind::Luks);
}

#[test]
fn detects_luks2() {
    check_detect(TestFs::Luks2, FsKind::Luks);
}

#[test]
fn detects_lvm2_physical_volume() {
    check_detect(TestFs::Lvm2Pv, FsKind::Lvm2Pv);
}

#[test]
fn names_of_kinds() {
    assert_eq!(FsKind::Ext { version: 3 }.name(), "ext3");
    assert_eq!(FsKind::Lvm2Pv.name(), "LVM2 physical volume");
    assert_eq!(FsKind::Luks.to_string(), "LUKS");
    assert_eq!(FsKind::Unknown.mount_type(), None);
}

/// Mount partition 2 read-only through a read-only loop device limited to
/// the partition, with the type and options `detect` chose, read the marker
/// file, and check that the image did not change by a single byte.
fn check_read_only_mount(fs: TestFs) {
    let dir = TempDir::new().unwrap();
    let image = gpt_image_with(dir.path(), fs);
    let before = sha256(&image);
    let layout = layout_of(&image).unwrap();
    let root = layout.partition(2).unwrap();
    let kind = kind_at(&image, root.offset);
    let fstype = kind.mount_type().expect("a mountable kind");
    let options = format!("ro,{}", kind.read_only_options());
    {
        let device = LoopDevice::attach(
            &image,
            &[
                "-r",
                "-o",
                &root.offset.to_string(),
                "--sizelimit",
                &root.size.to_string(),
            ],
        );
        let mount = Mount::new(&device.path, &dir.path().join("mnt"), fstype, &options);
        let name = format!("{fs:?}").to_lowercase();
        assert_eq!(
            std::fs::read_to_string(mount.path.join("marker")).unwrap(),
            format!("hello from {name}\n")
        );
    }
    assert_eq!(sha256(&image), before, "{fs:?}: the image changed");
}

#[test]
fn mounts_ext2_read_only_without_changes() {
    check_read_only_mount(TestFs::Ext2);
}

#[test]
fn mounts_ext3_read_only_without_changes() {
    check_read_only_mount(TestFs::Ext3);
}

#[test]
fn mounts_ext4_read_only_without_changes() {
    check_read_only_mount(TestFs::Ext4);
}

#[test]
fn mounts_xfs_read_only_without_changes() {
    check_read_only_mount(TestFs::Xfs);
}

#[test]
fn mounts_btrfs_read_only_without_changes() {
    check_read_only_mount(TestFs::Btrfs);
}

#[test]
fn filesystem_copied_into_an_mbr_logical_partition_is_found() {
    let dir = TempDir::new().unwrap();
    let image = mbr_image(dir.path());
    let fs = TestFs::Ext4.make(dir.path());
    let layout = layout_of(&image).unwrap();
    let logical = layout.partition(6).unwrap();
    assert!(logical.size >= TestFs::Ext4.size());
    copy_into(&image, logical.offset, &fs);
    assert_eq!(kind_at(&image, logical.offset), FsKind::Ext { version: 4 });
    assert_eq!(
        kind_at(&image, layout.partition(5).unwrap().offset),
        FsKind::Unknown
    );
}
