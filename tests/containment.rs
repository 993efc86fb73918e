//! An image is confined to its own file: every trick by which a container
//! makes qemu open another file (qcow2 backing file and external data file,
//! vmdk extents and parent, vhd/vhdx parents) is refused before qemu runs,
//! in every mode, and the other file is left byte-identical. With
//! `--allow-backing` a legitimate overlay works and writes only the overlay.
//! Hostile headers are fed to the inspector directly: no panic, bounded
//! allocation.
//!
//! Real images made by qemu-img (Debian package qemu-utils), real runs of
//! the binary as root; needs the packages listed in `common_images`.

mod common_alloc;
mod common_images;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common_images::{LoopDevice, MIB, Mount, Scratch, path_str, poke, run, sha256, sparse_file};
use prepare_image::access::image::containment::{self, Refusal};
use prepare_image::access::image::format::ImageFormat;
use proptest::prelude::*;
use tempfile::TempDir;

const CLOUD_CFG: &str = "etc/cloud/cloud.cfg";

/// The test's world (`common_images::Scratch`), with what this file adds.
type World = Scratch;

impl World {
    /// A raw ext4 filesystem (no partition table) holding a real cloud.cfg:
    /// a disk prepare-image would happily edit if it were let in.
    fn filesystem(&self, name: &str) -> PathBuf {
        let tree = self.path(&format!("{name}-tree"));
        std::fs::create_dir_all(tree.join("etc/cloud/cloud.cfg.d")).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cloud-cfg/tencent-centos-rhel8.5.cfg");
        std::fs::copy(fixture, tree.join(CLOUD_CFG)).unwrap();
        self.filesystem_of(&tree, name, &[])
    }

    /// A raw ext4 filesystem `name` holding the directory `tree`, made with
    /// the `extra` options of mke2fs.
    fn filesystem_of(&self, tree: &Path, name: &str, extra: &[&str]) -> PathBuf {
        let image = self.path(name);
        sparse_file(&image, 64 * MIB);
        let mut args = vec!["-q", "-F", "-t", "ext4"];
        args.extend_from_slice(extra);
        args.extend(["-d", path_str(tree), path_str(&image)]);
        run("mke2fs", &args);
        image
    }

    /// cloud.cfg as `image` (any format qemu-img reads, following its
    /// backing chain) holds it, read without the binary.
    fn cloud_cfg_in(&self, image: &Path) -> String {
        let raw = self.path("readback.raw");
        run(
            "qemu-img",
            &["convert", "-O", "raw", path_str(image), path_str(&raw)],
        );
        let text = {
            let device = LoopDevice::attach(&raw, &["-r"]);
            let mount = Mount::new(
                &device.path,
                &self.path("readback-mnt"),
                "ext4",
                "ro,noload,nosuid,nodev,noexec",
            );
            let text = std::fs::read_to_string(mount.path.join(CLOUD_CFG)).unwrap();
            drop(mount);
            drop(device);
            text
        };
        std::fs::remove_file(&raw).unwrap();
        text
    }
}

/// The four ways of running on an image: each must refuse the same way.
const MODES: [&[&str]; 4] = [
    &["status"],
    &["--keep", "hostname", "--dry-run"],
    &["--keep", "hostname", "--check"],
    &["--keep", "hostname"],
];

/// Runs every mode on `image` (with `extra` flags) and asserts a one-line
/// refusal naming the image and containing `expected`, with every file in
/// `guarded` (the image included) byte-identical afterwards.
fn assert_refused(world: &World, image: &Path, extra: &[&str], expected: &str, guarded: &[&Path]) {
    let before: Vec<String> = guarded.iter().map(|p| sha256(p)).collect();
    for mode in MODES {
        let mut args: Vec<&str> = mode.to_vec();
        args.extend_from_slice(extra);
        args.push(path_str(image));
        let out = world.run(&args);
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {args:?}: {out:?}");
        assert!(
            lines[0].starts_with(&format!("error: {}: ", path_str(image))),
            "{args:?}: {out:?}"
        );
        assert!(lines[0].contains(expected), "{args:?}: {out:?}");
    }
    let after: Vec<String> = guarded.iter().map(|p| sha256(p)).collect();
    assert_eq!(before, after, "a guarded file changed");
    let left: Vec<_> = std::fs::read_dir(&world.tmp).unwrap().collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

/// What no flag lets in: refused with and without `--allow-backing`.
fn assert_refused_even_when_allowed(
    world: &World,
    image: &Path,
    expected: &str,
    guarded: &[&Path],
) {
    for extra in [&[][..], &["--allow-backing"][..]] {
        assert_refused(world, image, extra, expected, guarded);
    }
}

/// A 64 MiB qcow2 `image` on `backing` (of `backing_format`), named as
/// given; qemu-img does not open the backing file (`-u`).
fn qcow2_overlay(image: &Path, backing: &str, backing_format: &str) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        backing,
        "-F",
        backing_format,
        path_str(image),
        "64M",
    ]);
}

fn qemu_img(args: &[&str]) {
    run("qemu-img", args);
}

// ---------------------------------------------------------------------------
// qcow2

#[test]
fn qcow2_backing_file_on_the_host_is_refused() {
    let world = World::new();
    let host = world.filesystem("host-disk.img");
    for (name, with_format) in [("declared.qcow2", true), ("probed.qcow2", false)] {
        let overlay = world.path(name);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            path_str(&host),
            "-F",
            "raw",
            path_str(&overlay),
        ]);
        if !with_format {
            // No backing format extension (qemu-img no longer makes such
            // images, older ones did): qemu would probe the host file.
            let head = std::fs::read(&overlay).unwrap();
            let at = head[..4096]
                .windows(4)
                .position(|w| w == [0xE2, 0x79, 0x2A, 0xCA])
                .unwrap();
            poke(&overlay, at as u64, &[0; 4]);
        }
        assert_refused(
            &world,
            &overlay,
            &[],
            &format!(
                "it is an overlay on the backing file {:?}, outside the image: prepare-image opens only the image's own file (pass --allow-backing",
                path_str(&host)
            ),
            &[&host, &overlay],
        );
    }
}

#[test]
fn backing_file_that_is_a_block_device_is_refused_even_when_allowed() {
    let world = World::new();
    let disk = world.filesystem("device-content.img");
    let device = LoopDevice::attach(&disk, &[]);
    let overlay = world.path("on-device.qcow2");
    qcow2_overlay(&overlay, &device.path, "raw");
    assert_refused(
        &world,
        &overlay,
        &["--allow-backing"],
        &format!(
            "the backing file {:?} of {} ({}) is a block device: --allow-backing follows regular files only",
            device.path,
            path_str(&overlay),
            device.path
        ),
        &[&disk, &overlay],
    );
    // Through a symlink in the image's directory: the same.
    let link = world.path("link-to-device");
    std::os::unix::fs::symlink(&device.path, &link).unwrap();
    let relative = world.path("via-link.qcow2");
    qcow2_overlay(&relative, "link-to-device", "raw");
    assert_refused(
        &world,
        &relative,
        &["--allow-backing"],
        "is a block device: --allow-backing follows regular files only",
        &[&disk, &relative],
    );
}

#[test]
fn qcow2_external_data_file_is_refused() {
    let world = World::new();
    let host = world.path("host-data.img");
    let image = world.path("data-file.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", path_str(&host)),
        path_str(&image),
        "64M",
    ]);
    // The data file now holds a real disk, which qemu would expose (and
    // a real run would write into) through the image.
    let disk = world.filesystem("disk-for-data.img");
    std::fs::copy(&disk, &host).unwrap();
    assert_refused_even_when_allowed(
        &world,
        &image,
        &format!(
            "it keeps its data in an external data file ({:?}), outside the image",
            path_str(&host)
        ),
        &[&host, &image],
    );
}

#[test]
fn qcow2_backing_chain_that_loops_is_refused() {
    let world = World::new();
    let a = world.path("a.qcow2");
    let b = world.path("b.qcow2");
    for (image, backing) in [(&a, "b.qcow2"), (&b, "a.qcow2")] {
        qcow2_overlay(image, backing, "qcow2");
    }
    assert_refused(
        &world,
        &a,
        &["--allow-backing"],
        &format!(
            "its backing chain loops back to {}",
            path_str(&a.canonicalize().unwrap())
        ),
        &[&a, &b],
    );
}

#[test]
fn allowed_backing_chain_is_read_only_and_the_overlay_takes_the_edit() {
    let world = World::new();
    let base = world.filesystem("base.img");
    let overlay = world.path("overlay.qcow2");
    // A relative name, resolved against the overlay's directory as qemu does.
    qcow2_overlay(&overlay, "base.img", "raw");
    let base_sum = sha256(&base);
    let original = world.cloud_cfg_in(&overlay);
    assert!(!original.contains("preserve_hostname"), "{original}");

    let status = world.run(&["status", "--allow-backing", path_str(&overlay)]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(
        status.stdout.starts_with(&format!(
            "image: {} (qcow2, table none, partition 0, ext4)\nhostname   overwritten",
            path_str(&overlay)
        )),
        "{status:?}"
    );

    let out = world.run(&["--keep", "hostname", "--allow-backing", path_str(&overlay)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(sha256(&base), base_sum, "the backing file was written");
    let edited = world.cloud_cfg_in(&overlay);
    assert!(edited.contains("\npreserve_hostname: true\n"), "{edited}");
    // The base still holds the original: the edit lives in the overlay only.
    assert_eq!(world.cloud_cfg_in(&base), original);
    qemu_img(&["check", "-q", path_str(&overlay)]);

    let check = world.run(&[
        "--keep",
        "hostname",
        "--check",
        "--allow-backing",
        path_str(&overlay),
    ]);
    assert_eq!(check.code, Some(0), "{check:?}");
    let left: Vec<_> = std::fs::read_dir(&world.tmp).unwrap().collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

// ---------------------------------------------------------------------------
// vmdk

fn flat_descriptor(extents: &[String]) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\n{}\n\nddb.virtualHWVersion = \"4\"\n",
        extents.join("\n")
    )
}

#[test]
fn vmdk_flat_extent_on_the_host_is_refused() {
    let world = World::new();
    let host = world.filesystem("host-flat.img");
    let sectors = 64 * MIB / 512;
    let image = world.path("flat.vmdk");
    let extent = format!("RW {sectors} FLAT {:?} 0", path_str(&host));
    std::fs::write(&image, flat_descriptor(std::slice::from_ref(&extent))).unwrap();
    assert_refused_even_when_allowed(
        &world,
        &image,
        &format!(
            "it is a vmdk descriptor whose disk lives in 1 other file(s) (FLAT {:?} 0)",
            path_str(&host)
        ),
        &[&host, &image],
    );
}

#[test]
fn vmdk_with_two_extents_is_refused() {
    let world = World::new();
    let first = world.filesystem("first.img");
    let second = world.path("second.img");
    sparse_file(&second, MIB);
    let image = world.path("two.vmdk");
    let extents = vec![
        format!("RW {} FLAT \"first.img\" 0", 64 * MIB / 512),
        format!("RW {} FLAT \"second.img\" 0", MIB / 512),
    ];
    std::fs::write(&image, flat_descriptor(&extents)).unwrap();
    assert_refused(
        &world,
        &image,
        &[],
        "it is a vmdk descriptor whose disk lives in 2 other file(s) (FLAT \"first.img\" 0; FLAT \"second.img\" 0)",
        &[&first, &second, &image],
    );
}

#[test]
fn vmdk_sparse_with_an_embedded_descriptor_of_extents_is_refused() {
    // capacity 0 in a sparse header makes qemu open the embedded
    // descriptor as a descriptor file, with whatever extents it lists.
    let world = World::new();
    let host = world.filesystem("host-embedded.img");
    let image = world.path("embedded.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", path_str(&image), "64M"]);
    let descriptor = flat_descriptor(&[format!(
        "RW {} FLAT {:?} 0",
        64 * MIB / 512,
        path_str(&host)
    )]);
    poke(&image, 12, &0u64.to_le_bytes());
    poke(&image, 28, &1u64.to_le_bytes());
    poke(&image, 36, &20u64.to_le_bytes());
    let mut block = descriptor.into_bytes();
    block.resize(20 * 512, 0);
    poke(&image, 512, &block);
    assert_refused(
        &world,
        &image,
        &[],
        &format!(
            "it is a vmdk descriptor whose disk lives in 1 other file(s) (FLAT {:?} 0)",
            path_str(&host)
        ),
        &[&host, &image],
    );
}

#[test]
fn vmdk_delta_link_needs_allow_backing_and_reads_its_parent_only() {
    let world = World::new();
    let base_raw = world.filesystem("parent.img");
    let parent = world.path("parent.vmdk");
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        path_str(&base_raw),
        path_str(&parent),
    ]);
    let child = world.path("child.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        path_str(&parent),
        "-F",
        "vmdk",
        path_str(&child),
    ]);
    assert_refused(
        &world,
        &child,
        &[],
        &format!(
            "it is an overlay on the backing file {:?}",
            path_str(&parent)
        ),
        &[&parent, &child],
    );
    let parent_sum = sha256(&parent);
    let out = world.run(&["--keep", "hostname", "--allow-backing", path_str(&child)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(sha256(&parent), parent_sum, "the parent was written");
    assert!(
        world
            .cloud_cfg_in(&child)
            .contains("\npreserve_hostname: true\n")
    );
}

// ---------------------------------------------------------------------------
// vhd and vhdx differencing disks

/// Sets the disk type of a vhd footer (at `at`) and fixes its checksum.
fn set_vhd_type(image: &Path, at: u64, disk_type: u32) {
    let mut bytes = std::fs::read(image).unwrap();
    let at = at as usize;
    let footer = &mut bytes[at..at + 512];
    footer[60..64].copy_from_slice(&disk_type.to_be_bytes());
    footer[64..68].copy_from_slice(&[0; 4]);
    let sum = footer
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
    poke(image, at as u64, footer);
}

#[test]
fn vhd_differencing_disk_is_refused() {
    let world = World::new();
    let image = world.path("child.vhd");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=dynamic",
        path_str(&image),
        "64M",
    ]);
    let len = std::fs::metadata(&image).unwrap().len();
    set_vhd_type(&image, 0, 4);
    set_vhd_type(&image, len - 512, 4);
    // The parent's name, UTF-16BE, in the dynamic disk header (at 512).
    let name: Vec<u8> = "host-parent.vhd"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    poke(&image, 512 + 64, &name);
    assert_refused(
        &world,
        &image,
        &["--allow-backing"],
        "it is a differencing vhd whose data depends on a parent image (\"host-parent.vhd\")",
        &[&image],
    );
}

/// The offset of the vhdx metadata item `id` (stored GUID bytes).
fn vhdx_item(bytes: &[u8], id: &[u8; 16]) -> usize {
    let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let le64 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let table = 192 * 1024;
    let metadata_region: [u8; 16] = [
        0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88,
        0x6E,
    ];
    let region = (0..le32(table + 8))
        .map(|i| table + 16 + i * 32)
        .find(|&e| bytes[e..e + 16] == metadata_region)
        .map(|e| le64(e + 16))
        .unwrap();
    let count = u16::from_le_bytes(bytes[region + 10..region + 12].try_into().unwrap()) as usize;
    (0..count)
        .map(|i| region + 32 + i * 32)
        .find(|&e| bytes[e..e + 16] == id[..])
        .map(|e| region + le32(e + 16))
        .unwrap()
}

#[test]
fn vhdx_differencing_disk_is_refused() {
    let world = World::new();
    let image = world.path("child.vhdx");
    qemu_img(&["create", "-q", "-f", "vhdx", path_str(&image), "64M"]);
    let file_parameters: [u8; 16] = [
        0x37, 0x67, 0xA1, 0xCA, 0x36, 0xFA, 0x43, 0x4D, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7,
        0x6B,
    ];
    let bytes = std::fs::read(&image).unwrap();
    let parameters = vhdx_item(&bytes, &file_parameters);
    let flags = u32::from_le_bytes(bytes[parameters + 4..parameters + 8].try_into().unwrap());
    poke(&image, (parameters + 4) as u64, &(flags | 2).to_le_bytes());
    assert_refused(
        &world,
        &image,
        &["--allow-backing"],
        "it is a differencing vhdx whose data depends on a parent image (not named)",
        &[&image],
    );
}

// ---------------------------------------------------------------------------
// Hostile headers into the inspector: no panic, no large allocation.

struct Seed {
    format: ImageFormat,
    bytes: Vec<u8>,
    /// Where mutations land (see `interesting`).
    offsets: Vec<usize>,
}

/// Small images of every format, made once by qemu-img, as bytes.
fn seeds() -> &'static Vec<Seed> {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        let p = |n: &str| dir.path().join(n);
        let cases: Vec<(ImageFormat, &str, Vec<&str>)> = vec![
            (ImageFormat::Qcow2, "base.qcow2", vec!["-f", "qcow2"]),
            (
                ImageFormat::Qcow2,
                "v2.qcow2",
                vec!["-f", "qcow2", "-o", "compat=0.10"],
            ),
            (
                ImageFormat::Qcow2,
                "overlay.qcow2",
                vec!["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"],
            ),
            (
                ImageFormat::Qcow2,
                "l2.qcow2",
                vec!["-f", "qcow2", "-o", "extended_l2=on"],
            ),
            (ImageFormat::Vmdk, "sparse.vmdk", vec!["-f", "vmdk"]),
            (
                ImageFormat::Vmdk,
                "stream.vmdk",
                vec!["-f", "vmdk", "-o", "subformat=streamOptimized"],
            ),
            (ImageFormat::Vhd, "dynamic.vhd", vec!["-f", "vpc"]),
            (ImageFormat::Vhdx, "disk.vhdx", vec!["-f", "vhdx"]),
        ];
        let mut seeds = Vec::new();
        for (format, name, options) in cases {
            let file = p(name);
            let mut args = vec!["create", "-q"];
            args.extend(options);
            args.push(path_str(&file));
            if name != "overlay.qcow2" {
                args.push("8M");
            }
            run("qemu-img", &args);
            let mut bytes = std::fs::read(&file).unwrap();
            if format == ImageFormat::Vhdx {
                // 8 MiB, mostly zeros after the metadata: keep the tables
                // only, so each case copies little.
                let end = bytes.iter().rposition(|&b| b != 0).unwrap_or(0) + 1;
                bytes.truncate(end.next_multiple_of(4096));
            }
            let offsets = interesting(&bytes);
            seeds.push(Seed {
                format,
                bytes,
                offsets,
            });
        }
        // A qcow2 with data, so its L2 tables are non-empty.
        let full = p("full.qcow2");
        let raw = p("full.raw");
        std::fs::write(&raw, vec![0x5a; 2 * MIB as usize]).unwrap();
        run(
            "qemu-img",
            &["convert", "-O", "qcow2", path_str(&raw), path_str(&full)],
        );
        let bytes = std::fs::read(&full).unwrap();
        let offsets = interesting(&bytes);
        seeds.push(Seed {
            format: ImageFormat::Qcow2,
            bytes,
            offsets,
        });
        seeds
    })
}

/// Offsets worth mutating: the non-zero bytes of a seed (its headers and
/// tables; the rest of a blank image is zeros) and a little around them.
fn interesting(seed: &[u8]) -> Vec<usize> {
    let mut offsets: Vec<usize> = seed
        .iter()
        .enumerate()
        .filter(|(_, b)| **b != 0)
        .map(|(i, _)| i)
        .collect();
    offsets.dedup();
    offsets
}

#[derive(Debug, Clone)]
enum Mutation {
    Byte { pick: usize, value: u8 },
    Word { pick: usize, value: u64 },
    Truncate { keep: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(pick, value)| Mutation::Byte { pick, value }),
        (
            any::<usize>(),
            prop_oneof![
                Just(0u64),
                Just(u64::MAX),
                Just(u64::from(u32::MAX)),
                Just(1 << 40),
                any::<u64>()
            ]
        )
            .prop_map(|(pick, value)| Mutation::Word { pick, value }),
        any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
    ]
}

fn apply(seed: &[u8], offsets: &[usize], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for m in mutations {
        match *m {
            Mutation::Byte { pick, value } => {
                let at = offsets[pick % offsets.len()];
                if at < bytes.len() {
                    bytes[at] = value;
                }
            }
            Mutation::Word { pick, value } => {
                let at = offsets[pick % offsets.len()] & !7;
                for (i, b) in value.to_be_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + i) {
                        *slot = b;
                    }
                }
            }
            Mutation::Truncate { keep } => bytes.truncate(keep % (bytes.len() + 1)),
        }
    }
    bytes
}

/// No single allocation of the inspector may exceed this (its largest read
/// is 2 MiB; the seeds are a few MiB and not copied by it).
const ALLOCATION_BOUND: usize = 4 << 20;

/// 2000 cases in CI; `PROPTEST_CASES=N` for a longer run by hand.
fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(), ..ProptestConfig::default() })]

    #[test]
    fn hostile_headers_give_an_answer_never_a_panic(
        which in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let seed = &seeds[which % seeds.len()];
        let bytes = apply(&seed.bytes, &seed.offsets, &mutations);
        let (result, largest): (Result<_, Refusal>, _) =
            common_alloc::largest_allocation(|| containment::inspect(&bytes[..], seed.format));
        prop_assert!(largest <= ALLOCATION_BOUND, "allocated {largest} bytes");
        if let Err(refusal) = result {
            prop_assert!(!refusal.0.contains('\n'), "{refusal}");
        }
    }
}

#[test]
fn seeds_are_read_as_qemu_reads_them() {
    // Unmutated, only the overlay names a file: its base, declared qcow2.
    let named: Vec<_> = seeds()
        .iter()
        .map(|seed| {
            containment::inspect(&seed.bytes[..], seed.format)
                .unwrap_or_else(|r| panic!("{:?}: {r}", seed.format))
                .backing
        })
        .collect();
    let overlays: Vec<_> = named.iter().flatten().collect();
    assert_eq!(overlays.len(), 1, "{named:?}");
    assert_eq!(overlays[0].name, "base.qcow2");
    assert_eq!(overlays[0].format.as_deref(), Some("qcow2"));
}

// ---------------------------------------------------------------------------
// Image-side messages.

#[test]
fn truncated_qcow2_is_reported_as_truncated() {
    let world = World::new();
    let disk = world.filesystem("whole.img");
    let image = world.path("cut.qcow2");
    qemu_img(&["convert", "-O", "qcow2", path_str(&disk), path_str(&image)]);
    let full = std::fs::metadata(&image).unwrap().len();
    let cut = (full / 2).next_multiple_of(65536);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(cut)
        .unwrap();
    assert_refused(
        &world,
        &image,
        &[],
        &format!("the qcow2 file is {cut} bytes but its cluster map points at byte "),
        &[&image],
    );
    let out = world.run(&["status", path_str(&image)]);
    assert!(
        out.stderr
            .trim_end()
            .ends_with(": the image is truncated (re-copy or re-download it)"),
        "{out:?}"
    );
}

#[test]
fn dangling_cloud_cfg_link_in_an_image_is_named() {
    let world = World::new();
    let tree = world.path("tree");
    std::fs::create_dir_all(tree.join("etc/cloud/cloud.cfg.d")).unwrap();
    std::os::unix::fs::symlink("/usr/share/cloud/gone.cfg", tree.join(CLOUD_CFG)).unwrap();
    let image = world.filesystem_of(&tree, "dangling.img", &[]);
    assert_refused(
        &world,
        &image,
        &[],
        "partition 0 has /etc/cloud/cloud.cfg, but it is a symbolic link to /usr/share/cloud/gone.cfg, which does not exist in the image (links are followed inside the image, never on the host): fix the link in the image",
        &[&image],
    );
}

#[test]
fn partition_on_a_directory_is_a_usage_error() {
    let world = World::new();
    let root = world.path("root");
    std::fs::create_dir_all(root.join("etc/cloud")).unwrap();
    for args in [
        &["status", "--partition", "1"][..],
        &["--keep", "hostname", "--partition", "1"],
    ] {
        let mut args = args.to_vec();
        args.push(path_str(&root));
        let out = world.run(&args);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(
            out.stderr.starts_with(&format!(
                "error: --partition applies to image files, and {} is a directory\n",
                path_str(&root)
            )),
            "{out:?}"
        );
    }
}

#[test]
fn os_error_text_is_shown_once() {
    // A cloud.cfg that is a mountpoint cannot be replaced: rename(2) says
    // EBUSY. The bind mount lives in a mount namespace of its own.
    let world = World::new();
    let root = world.path("root");
    std::fs::create_dir_all(root.join("etc/cloud")).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cloud-cfg/tencent-centos-rhel8.5.cfg");
    std::fs::copy(&fixture, root.join(CLOUD_CFG)).unwrap();
    let other = world.path("other.cfg");
    std::fs::copy(&fixture, &other).unwrap();
    let binary = assert_cmd::cargo::cargo_bin("prepare-image");
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$2" && exec "$3" --keep hostname "$4""#)
        .args([
            "sh",
            path_str(&other),
            path_str(&root.join(CLOUD_CFG)),
            path_str(&binary),
            path_str(&root),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The all-or-none commit finds the mount point before renaming (it used
    // to surface as rename's EBUSY); either way the text is said once.
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: cannot write {}: it is a mount point (a file mounted over it), which rename cannot replace: edit the file mounted there, or unmount it; nothing was written",
            path_str(&root.join(CLOUD_CFG))
        )
    );
    assert!(stderr.matches("(os error").count() <= 1, "{stderr}");
}

fn temp_entries(world: &World) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&world.tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn temp_directories_of_a_killed_run_are_removed_by_the_next_run() {
    use std::io::{BufRead as _, BufReader};
    let world = World::new();
    let disk = world.filesystem("plain.img");
    let image = world.path("killed.qcow2");
    qemu_img(&["convert", "-O", "qcow2", path_str(&disk), path_str(&image)]);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("prepare-image"))
        .env("TMPDIR", &world.tmp)
        .env("PREPARE_IMAGE_PAUSE", "mounted")
        // A write: reads go through user space and make no temp directory.
        .args(["--keep", "hostname", path_str(&image)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("prepare-image: paused at mounted"),
        "{line}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The daemon follows its parent (PR_SET_PDEATHSIG).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !world.processes().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            world.processes()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = temp_entries(&world);
    assert!(
        left.iter().any(|n| n.starts_with("prepare-image-mnt."))
            && left.iter().any(|n| n.starts_with("prepare-image-view.")),
        "what a SIGKILL leaves: {left:?}"
    );
    // Not ours to touch: a live run's directory, and anything with content.
    let live = world
        .tmp
        .join(format!("prepare-image-mnt.{}.Live01", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    let full = world.tmp.join("prepare-image-view.999999999.Full01");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("raw"), "data").unwrap();

    // The next run that mounts sweeps them.
    let out = world.run(&["--keep", "hostname", path_str(&image)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        temp_entries(&world),
        [
            "prepare-image-mnt.".to_string() + &std::process::id().to_string() + ".Live01",
            "prepare-image-view.999999999.Full01".to_string(),
        ]
    );
}

#[test]
fn ext4_with_its_journal_on_another_device_is_refused() {
    // The superblock names the journal device by number; a read-write mount
    // would open that host device and write the journal to it.
    let world = World::new();
    let journal = world.path("journal.img");
    sparse_file(&journal, 16 * MIB);
    run(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-O",
            "journal_dev",
            path_str(&journal),
        ],
    );
    let device = LoopDevice::attach(&journal, &[]);
    let tree = world.path("tree");
    std::fs::create_dir_all(tree.join("etc/cloud")).unwrap();
    std::fs::write(tree.join(CLOUD_CFG), "preserve_hostname: false\n").unwrap();
    let journal_option = format!("device={}", device.path);
    let image = world.filesystem_of(
        &tree,
        "external-journal.img",
        &["-b", "4096", "-J", &journal_option],
    );
    assert_refused(
        &world,
        &image,
        &[],
        "partition 0 is ext4 with its journal on another device; mounting it would open that device on this host, so prepare-image does not",
        &[&journal, &image],
    );
}

#[test]
fn btrfs_spanning_several_devices_is_refused() {
    // The kernel assembles a multi-device btrfs from every device with the
    // same filesystem id it has seen: a host disk (here a loop device) of
    // that id would become part of the image's filesystem and be written.
    let world = World::new();
    let image = world.path("first.img");
    let host = world.path("host-second.img");
    // mkfs.btrfs 6.2 wants 125 MiB per device.
    for file in [&image, &host] {
        sparse_file(file, 130 * MIB);
    }
    run(
        "mkfs.btrfs",
        &[
            "-q",
            "-f",
            "-d",
            "raid1",
            "-m",
            "raid1",
            path_str(&image),
            path_str(&host),
        ],
    );
    let device = LoopDevice::attach(&host, &[]);
    run("btrfs", &["device", "scan", &device.path]);
    assert_refused(
        &world,
        &image,
        &[],
        "partition 0 is btrfs spanning several devices; the kernel would assemble it with any device of the same filesystem id on this host, so prepare-image does not mount it",
        &[&image, &host],
    );
    run("btrfs", &["device", "scan", "--forget", &device.path]);
}
