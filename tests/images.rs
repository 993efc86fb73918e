//! Image files as TARGET, end to end: real disk images built with the real
//! tools (sfdisk, mke2fs, mkfs.xfs, mkfs.btrfs, mkfs.vfat, cryptsetup,
//! pvcreate, qemu-img), the real binary run on them, and the result read
//! back independently of the code under test: `qemu-img convert` to a raw
//! copy where needed, `losetup -r -o OFFSET --sizelimit SIZE`, `mount -o ro`
//! without journal replay, and a comparison with what the directory flow
//! writes for the same input.
//!
//! Needs root (loop devices, mount) and the packages listed in
//! `common_images`, plus qemu-utils (qemu-img, qemu-storage-daemon) and
//! python3. Every loop device, mount and process a test makes is owned by a
//! guard that undoes exactly it; each run of the binary gets TMPDIR inside
//! the test's own TempDir, so even its SIGKILLed runs leave nothing outside.

mod common_images;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command as StdCommand, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{JoinHandle, sleep};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use common_images::{
    LoopDevice, MIB, Mount, Output, Scratch, TestFs, copy_into, partition, path_str, poke, run,
    sha256, sparse_file,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// The input: a real Tencent Cloud CentOS/RHEL 8.5 cloud.cfg and its drop-in.

const CLOUD_CFG_FIXTURE: &str = "tencent-centos-rhel8.5.cfg";
const DROPIN_FIXTURE: &str = "d/tencent-alinux-48aa7c6-99_qcloud.cfg";
const CLOUD_CFG: &str = "etc/cloud/cloud.cfg";
const DROPIN: &str = "etc/cloud/cloud.cfg.d/99_qcloud.cfg";
const KEEP: &str = "hostname,dns";
/// What a real run of `--keep hostname,dns` says last, on stderr.
const CHANGED_SUMMARY: &str = "kept hostname, dns in {}: 4 change(s) in etc/cloud/cloud.cfg";

const GPT_LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const GPT_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const GPT_BIOS: &str = "21686148-6449-6E6F-744E-656564454649";
const GPT_LVM: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cloud-cfg")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The input files and what the directory flow makes of them.
struct Expected {
    original: String,
    dropin: String,
    /// cloud.cfg after a real `--keep hostname,dns` on a plain directory.
    edited: String,
    /// That run's stdout: the unified diff, paths relative to the root.
    diff: String,
}

/// Runs the binary once on a plain directory holding the same files: what
/// it writes there is what it must write inside every image.
fn expected() -> &'static Expected {
    static EXPECTED: OnceLock<Expected> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        let root = make_tree(dir.path(), "root", Tree::Root);
        let out = Command::cargo_bin("prepare-image")
            .unwrap()
            .args(["--keep", KEEP, "--color", "never", path_str(&root)])
            .output()
            .unwrap();
        assert!(out.status.success(), "directory run: {out:?}");
        let edited = std::fs::read_to_string(root.join(CLOUD_CFG)).unwrap();
        let original = fixture(CLOUD_CFG_FIXTURE);
        assert_ne!(edited, original, "the directory run must change cloud.cfg");
        Expected {
            original,
            dropin: fixture(DROPIN_FIXTURE),
            edited,
            diff: String::from_utf8(out.stdout).unwrap(),
        }
    })
}

/// What goes into a root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    /// etc/cloud/cloud.cfg and cloud.cfg.d/99_qcloud.cfg.
    Root,
    /// etc/cloud/cloud.cfg -> /etc/shadow; the image's own etc/shadow holds
    /// the fixture.
    LinkAbsolute,
    /// etc/cloud/cloud.cfg -> ../../../../(…)/etc/shadow, far more `..`
    /// than the mountpoint is deep: on the host it would reach /etc/shadow.
    LinkRelative,
    /// A filesystem without cloud-init (a /boot, a data partition).
    NoCloudInit,
}

const RELATIVE_LINK: &str = "../../../../../../../../../../../../../../../../etc/shadow";

fn make_tree(dir: &Path, name: &str, kind: Tree) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "built-image\n").unwrap();
    if kind == Tree::NoCloudInit {
        return root;
    }
    std::fs::create_dir_all(root.join("etc/cloud/cloud.cfg.d")).unwrap();
    std::fs::write(root.join(DROPIN), fixture(DROPIN_FIXTURE)).unwrap();
    let cfg = fixture(CLOUD_CFG_FIXTURE);
    match kind {
        Tree::Root => std::fs::write(root.join(CLOUD_CFG), cfg).unwrap(),
        Tree::LinkAbsolute | Tree::LinkRelative => {
            std::fs::write(root.join("etc/shadow"), cfg).unwrap();
            let target = if kind == Tree::LinkAbsolute {
                "/etc/shadow"
            } else {
                RELATIVE_LINK
            };
            std::os::unix::fs::symlink(target, root.join(CLOUD_CFG)).unwrap();
        }
        Tree::NoCloudInit => unreachable!(),
    }
    root
}

// ---------------------------------------------------------------------------
// Filesystems, partition tables, formats.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fs {
    Ext4,
    Xfs,
    Btrfs,
}

impl Fs {
    /// The smallest sizes the tools accept, rounded up (files are sparse).
    fn size(self) -> u64 {
        match self {
            Fs::Ext4 => 64 * MIB,
            Fs::Xfs => 300 * MIB,
            Fs::Btrfs => 120 * MIB,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
            Fs::Btrfs => "btrfs",
        }
    }

    /// The mount option that keeps a read-only mount from replaying the
    /// journal or log, so inspecting never writes.
    fn no_replay(self) -> &'static str {
        match self {
            Fs::Ext4 => "noload",
            Fs::Xfs => "norecovery",
            Fs::Btrfs => "rescue=nologreplay",
        }
    }

    /// A filesystem file `dir/NAME.fs` holding `tree`.
    fn make(self, dir: &Path, name: &str, tree: &Path) -> PathBuf {
        let file = dir.join(format!("{name}.fs"));
        sparse_file(&file, self.size());
        let f = path_str(&file);
        match self {
            Fs::Ext4 => {
                run(
                    "mke2fs",
                    &["-q", "-F", "-t", "ext4", "-d", path_str(tree), f],
                );
            }
            Fs::Btrfs => {
                run("mkfs.btrfs", &["-q", "--rootdir", path_str(tree), f]);
            }
            Fs::Xfs => {
                // mkfs.xfs 6.1 cannot copy a directory in: mount and copy.
                run("mkfs.xfs", &["-q", f]);
                let device = LoopDevice::attach(&file, &[]);
                let mount = Mount::new(
                    &device.path,
                    &dir.join(format!("{name}-populate")),
                    "xfs",
                    "nosuid,nodev",
                );
                run(
                    "cp",
                    &[
                        "-a",
                        &format!("{}/.", tree.display()),
                        path_str(&mount.path),
                    ],
                );
                drop(mount);
                drop(device);
                std::fs::remove_dir(dir.join(format!("{name}-populate"))).unwrap();
            }
        }
        file
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Gpt512,
    Gpt4096,
    /// The first piece in primary partition 1, the others in logical
    /// partitions 5, 6, … of an extended partition 2.
    MbrLogical,
    /// One bare filesystem, no table.
    Bare,
}

impl Layout {
    /// How the binary names the table.
    fn table(self) -> &'static str {
        match self {
            Layout::Gpt512 => "gpt (512-byte sectors)",
            Layout::Gpt4096 => "gpt (4096-byte sectors)",
            Layout::MbrLogical => "mbr",
            Layout::Bare => "none",
        }
    }
}

/// One partition's content: a file to copy in, or nothing (`size` bytes of
/// zeros: an unknown partition such as BIOS boot).
struct Piece {
    file: Option<PathBuf>,
    size: u64,
    gpt_type: &'static str,
    mbr_type: &'static str,
}

fn piece(file: PathBuf) -> Piece {
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(size % MIB, 0, "pieces are whole MiB");
    Piece {
        file: Some(file),
        size,
        gpt_type: GPT_LINUX,
        mbr_type: "83",
    }
}

fn typed(file: PathBuf, gpt_type: &'static str, mbr_type: &'static str) -> Piece {
    Piece {
        gpt_type,
        mbr_type,
        ..piece(file)
    }
}

fn bios_boot() -> Piece {
    Piece {
        file: None,
        size: MIB,
        gpt_type: GPT_BIOS,
        mbr_type: "ef02",
    }
}

/// A vfat EFI System Partition of 64 MiB, in a file.
fn esp(dir: &Path) -> Piece {
    let file = dir.join("esp.fs");
    sparse_file(&file, 64 * MIB);
    run("mkfs.vfat", &["-F", "32", path_str(&file)]);
    typed(file, GPT_ESP, "ef")
}

/// Where a partition lies in its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    number: u32,
    offset: u64,
    size: u64,
}

struct Disk {
    path: PathBuf,
    parts: Vec<Loc>,
}

impl Disk {
    fn part(&self, number: u32) -> Loc {
        *self
            .parts
            .iter()
            .find(|l| l.number == number)
            .unwrap_or_else(|| panic!("no partition {number} in {:?}", self.parts))
    }
}

/// A sparse raw image `dir/NAME` with `pieces` laid out as `layout` says;
/// the piece files are consumed.
fn build_disk(dir: &Path, name: &str, layout: Layout, pieces: Vec<Piece>) -> Disk {
    let path = dir.join(name);
    if layout == Layout::Bare {
        assert_eq!(pieces.len(), 1);
        let file = pieces[0].file.as_ref().unwrap();
        std::fs::rename(file, &path).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        return Disk {
            path,
            parts: vec![Loc {
                number: 0,
                offset: 0,
                size,
            }],
        };
    }
    let mut parts = Vec::new();
    let mut script = String::new();
    let sector = if layout == Layout::Gpt4096 { 4096 } else { 512 };
    let end;
    if layout == Layout::MbrLogical {
        script.push_str("label: dos\n");
        let primaries = usize::from(pieces.len() > 1);
        let mut offset = MIB;
        for (i, p) in pieces[..primaries].iter().enumerate() {
            parts.push(Loc {
                number: i as u32 + 1,
                offset,
                size: p.size,
            });
            offset += p.size;
        }
        // Each logical partition follows its extended boot record, 1 MiB on.
        let extended = offset;
        for (i, p) in pieces[primaries..].iter().enumerate() {
            offset += MIB;
            parts.push(Loc {
                number: 5 + i as u32,
                offset,
                size: p.size,
            });
            offset += p.size;
        }
        end = offset;
        for (p, loc) in pieces[..primaries].iter().zip(&parts) {
            script.push_str(&format!(
                "start={}, size={}, type={}\n",
                loc.offset / 512,
                loc.size / 512,
                p.mbr_type
            ));
        }
        script.push_str(&format!(
            "start={}, size={}, type=5\n",
            extended / 512,
            (end - extended) / 512
        ));
        for (p, loc) in pieces[primaries..].iter().zip(&parts[primaries..]) {
            script.push_str(&format!(
                "start={}, size={}, type={}\n",
                loc.offset / 512,
                loc.size / 512,
                p.mbr_type
            ));
        }
    } else {
        script.push_str("label: gpt\n");
        let mut offset = MIB;
        for (i, p) in pieces.iter().enumerate() {
            parts.push(Loc {
                number: i as u32 + 1,
                offset,
                size: p.size,
            });
            script.push_str(&format!(
                "start={}, size={}, type={}\n",
                offset / sector,
                p.size / sector,
                p.gpt_type
            ));
            offset += p.size;
        }
        end = offset;
    }
    // Room for the backup GPT.
    sparse_file(&path, end + MIB);
    partition(&path, &script, sector);
    for (p, loc) in pieces.iter().zip(&parts) {
        if let Some(file) = &p.file {
            copy_into(&path, loc.offset, file);
            std::fs::remove_file(file).unwrap();
        }
    }
    Disk { path, parts }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
    Vhdx,
}

const FORMATS: [Format; 4] = [Format::Qcow2, Format::Vmdk, Format::Vhdx, Format::Vhd];

impl Format {
    /// The binary's name for it.
    fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
        }
    }

    /// qemu's name for it.
    fn qemu(self) -> &'static str {
        match self {
            Format::Vhd => "vpc",
            other => other.name(),
        }
    }

    /// Whether `qemu-img check` supports the format.
    fn checkable(self) -> bool {
        matches!(self, Format::Qcow2 | Format::Vmdk | Format::Vhdx)
    }
}

/// `qemu-img convert -O FORMAT src dst`.
fn convert(src: &Path, dst: &Path, format: Format) {
    run(
        "qemu-img",
        &["convert", "-O", format.qemu(), path_str(src), path_str(dst)],
    );
}

/// The format `qemu-img info` reads from the file.
fn qemu_format(image: &Path) -> String {
    let info: Value = serde_json::from_str(&run(
        "qemu-img",
        &["info", "--output=json", path_str(image)],
    ))
    .unwrap();
    info["format"].as_str().unwrap().to_string()
}

/// `qemu-img check`'s exit code: 0 clean, 2 corrupt, 3 leaked clusters only.
fn qemu_check(image: &Path, format: Format) -> (i32, String) {
    let out = StdCommand::new("qemu-img")
        .args(["check", "-f", format.qemu(), path_str(image)])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn copy_sparse(src: &Path, dst: &Path) {
    run(
        "cp",
        &["--sparse=always", "--", path_str(src), path_str(dst)],
    );
}

// ---------------------------------------------------------------------------
// The test's world: a TempDir, runs of the binary, independent inspection,
// and the check that nothing of a run is left.

/// The test's world (`common_images::Scratch`), with what this file adds.
type Ctx = Scratch;

impl Output {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

impl Ctx {
    /// Reads partition `loc` of `image` without the binary: a raw copy for
    /// other formats (`qemu-img convert`), a read-only loop device of
    /// exactly that partition, a read-only mount; `f` gets the mountpoint.
    ///
    /// `replay: false` reads the image itself as it is on disk, with no
    /// journal or log replay (a read-only device). `replay: true` reads a
    /// scratch copy the way a booting system would: a journal left by a
    /// killed run is replayed first (on the copy only).
    fn inspect<T>(
        &self,
        image: &Path,
        loc: Loc,
        fs: Fs,
        replay: bool,
        f: impl FnOnce(&Path) -> T,
    ) -> T {
        let scratch = self.path("inspect.raw");
        let format = qemu_format(image);
        let raw = if format != "raw" {
            run(
                "qemu-img",
                &["convert", "-O", "raw", path_str(image), path_str(&scratch)],
            );
            scratch.clone()
        } else if replay {
            copy_sparse(image, &scratch);
            scratch.clone()
        } else {
            image.to_path_buf()
        };
        let offset = loc.offset.to_string();
        let size = loc.size.to_string();
        let mut args = vec!["-o", &offset, "--sizelimit", &size];
        let mut options = "ro,nosuid,nodev,noexec".to_string();
        if !replay {
            args.insert(0, "-r");
            options = format!("{options},{}", fs.no_replay());
        }
        let mountpoint = self.path("inspect-mnt");
        let result = {
            let device = LoopDevice::attach(&raw, &args);
            let mount = Mount::new(&device.path, &mountpoint, fs.name(), &options);
            let result = f(&mount.path);
            drop(mount);
            drop(device);
            result
        };
        std::fs::remove_dir(&mountpoint).unwrap();
        if raw == scratch {
            std::fs::remove_file(&scratch).unwrap();
        }
        result
    }

    /// cloud.cfg and the drop-in as partition `loc` holds them.
    fn seen(&self, image: &Path, loc: Loc, fs: Fs, replay: bool) -> (String, String) {
        self.inspect(image, loc, fs, replay, |root| {
            let cfg = root.join(CLOUD_CFG);
            assert!(
                std::fs::symlink_metadata(&cfg).unwrap().is_file(),
                "{} is a regular file",
                cfg.display()
            );
            (
                std::fs::read_to_string(cfg).unwrap(),
                std::fs::read_to_string(root.join(DROPIN)).unwrap(),
            )
        })
    }

    /// Everything of a run of the binary that may still be there: mounts
    /// (ours, or of PID 1's namespace) under this test's directory or with
    /// the binary's temp names, loop devices backed by a file of this test
    /// (the image, or a raw view in our TMPDIR), and processes whose
    /// arguments name a path of this test (the qemu-storage-daemon).
    fn leftovers(&self) -> Vec<String> {
        let ours = self.dir.path().display().to_string();
        let mut found = Vec::new();
        for mountinfo in ["/proc/self/mountinfo", "/proc/1/mountinfo"] {
            let text = std::fs::read_to_string(mountinfo).unwrap();
            for line in text.lines() {
                if line.contains(&ours)
                    || line.contains("/prepare-image-mnt.")
                    || line.contains("/prepare-image-view.")
                {
                    found.push(format!("{mountinfo}: {line}"));
                }
            }
        }
        for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file"))
                && backing.contains(&ours)
            {
                found.push(format!("/dev/{name} backed by {}", backing.trim()));
            }
        }
        found.extend(self.processes());
        found
    }

    /// Nothing of any run is left (polling: autoclear and the daemon's exit
    /// are asynchronous). A run that ended normally also removed its temp
    /// directories; a SIGKILLed one cannot, and leaves empty ones in TMPDIR.
    fn assert_released(&self, sigkilled: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "left behind: {left:#?}");
            sleep(Duration::from_millis(50));
        }
        let temp: Vec<_> = std::fs::read_dir(&self.tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if !sigkilled {
            assert!(temp.is_empty(), "temp files left in TMPDIR: {temp:?}");
        }
        for name in temp {
            assert!(name.starts_with("prepare-image-"), "{name}");
        }
    }
}

/// The image object of the JSON reports.
fn image_json(image: &Path, format: Format, table: &str, partition: u32, fs: &str) -> Value {
    serde_json::json!({
        "path": path_str(image),
        "format": format.name(),
        "table": table,
        "partition": partition,
        "filesystem": fs,
    })
}

/// A `--format json` run that changed partition `partition` (holding
/// `fs`) of the raw GPT (512-byte sectors) image `image`.
fn assert_changed_raw_gpt512(apply: Output, image: &Path, partition: u32, fs: &str) {
    assert_eq!(apply.code, Some(0), "{apply:?}");
    let doc = apply.json();
    assert_eq!(
        doc["image"],
        image_json(image, Format::Raw, "gpt (512-byte sectors)", partition, fs)
    );
    assert_eq!(doc["result"], "changed");
}

/// How text output names the image.
fn headline(image: &Path, format: Format, table: &str, partition: u32, fs: &str) -> String {
    format!(
        "{} ({}, table {table}, partition {partition}, {fs})",
        path_str(image),
        format.name()
    )
}

// ---------------------------------------------------------------------------
// The whole cycle on one image.

struct Case<'a> {
    image: &'a Path,
    format: Format,
    table: &'a str,
    loc: Loc,
    fs: Fs,
}

/// status, --dry-run and --check leave the file byte-identical and name the
/// image; a real run writes exactly what the directory flow writes and keeps
/// the format; afterwards --check passes and a second run has nothing to do.
fn full_cycle(ctx: &Ctx, case: &Case) {
    let e = expected();
    let image = case.image;
    let img = path_str(image);
    let number = case.loc.number;
    let what = format!("{img} ({:?} {:?})", case.format, case.fs);
    let json_image = image_json(image, case.format, case.table, number, case.fs.name());
    let head = headline(image, case.format, case.table, number, case.fs.name());
    let before = sha256(image);
    rootless_reads_agree(ctx, case);
    if read_in_user_space(case.format) {
        compare_with_kernel(ctx, case);
    }

    let status = ctx.run(&["status", img, "--format", "json"]);
    assert_eq!(status.code, Some(0), "{what}: {status:?}");
    let doc = status.json();
    assert_eq!(doc["image"], json_image, "{what}");
    assert_eq!(doc["root"], img, "{what}");
    let hostname = doc["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["setting"] == "hostname")
        .unwrap();
    assert_eq!(hostname["state"], "overwritten", "{what}");

    let status = ctx.run(&["status", img]);
    assert_eq!(status.code, Some(0), "{what}: {status:?}");
    assert_eq!(
        status.stdout.lines().next(),
        Some(format!("image: {head}").as_str()),
        "{what}"
    );

    let dry = ctx.run(&["--keep", KEEP, "--dry-run", "--format", "json", img]);
    assert_eq!(dry.code, Some(0), "{what}: {dry:?}");
    let doc = dry.json();
    assert_eq!(doc["image"], json_image, "{what}");
    assert_eq!(doc["mode"], "dry-run", "{what}");
    assert_eq!(doc["result"], "would-change", "{what}");
    assert_eq!(doc["files"][0]["path"], CLOUD_CFG, "{what}");
    assert_eq!(doc["files"][0]["diff"], e.diff.as_str(), "{what}");

    let dry = ctx.run(&["--keep", KEEP, "--dry-run", img]);
    assert_eq!(dry.code, Some(0), "{what}: {dry:?}");
    assert_eq!(dry.stdout, e.diff, "{what}");
    assert_eq!(
        dry.stderr.lines().next(),
        Some(format!("prepare-image: image {head}").as_str()),
        "{what}"
    );

    let check = ctx.run(&["--keep", KEEP, "--check", img]);
    assert_eq!(check.code, Some(3), "{what}: {check:?}");
    assert_eq!(check.stdout, e.diff, "{what}");

    assert_eq!(
        sha256(image),
        before,
        "{what}: status, --dry-run and --check changed the image file"
    );

    let apply = ctx.run(&["--keep", KEEP, img]);
    assert_eq!(apply.code, Some(0), "{what}: {apply:?}");
    assert_eq!(
        apply.stdout, e.diff,
        "{what}: the diff of the directory flow"
    );
    assert_eq!(
        apply.stderr.lines().next(),
        Some(format!("prepare-image: image {head}").as_str()),
        "{what}"
    );
    assert_eq!(
        apply.stderr.lines().last(),
        Some(CHANGED_SUMMARY.replace("{}", img).as_str()),
        "{what}"
    );

    let check = ctx.run(&["--keep", KEEP, "--check", "--format", "json", img]);
    assert_eq!(check.code, Some(0), "{what}: {check:?}");
    let doc = check.json();
    assert_eq!(doc["result"], "unchanged", "{what}");
    assert_eq!(doc["image"], json_image, "{what}");

    let again = ctx.run(&["--keep", KEEP, img]);
    assert_eq!(again.code, Some(0), "{what}: {again:?}");
    assert_eq!(again.stdout, "", "{what}");
    assert_eq!(
        again.stderr.lines().last(),
        Some(format!("hostname, dns: already kept in {img}; nothing to do").as_str()),
        "{what}: {again:?}"
    );

    assert_eq!(
        qemu_format(image),
        case.format.qemu(),
        "{what}: format kept"
    );
    if case.format.checkable() {
        let (code, text) = qemu_check(image, case.format);
        assert_eq!(code, 0, "{what}: qemu-img check: {text}");
    }

    let (cfg, dropin) = ctx.seen(image, case.loc, case.fs, false);
    assert_eq!(cfg, e.edited, "{what}: cloud.cfg inside the image");
    assert_eq!(dropin, e.dropin, "{what}: the drop-in is not touched");
    ctx.assert_released(false);
}

/// Which images the binary reads in user space (no root, no loop device, no mount): every
/// filesystem here (ext4, XFS, btrfs) in every format (raw by pread, qcow2 by imago, vmdk,
/// vhd and vhdx over NBD from an unprivileged qemu-storage-daemon).
fn read_in_user_space(format: Format) -> bool {
    matches!(
        format,
        Format::Raw | Format::Qcow2 | Format::Vmdk | Format::Vhd | Format::Vhdx
    )
}

/// The read-only commands, as an unprivileged user: the same answer as root where the image is
/// read in user space (an unprivileged user cannot attach a loop device or mount, so success
/// shows neither was used), else a one-line error asking for root.
fn rootless_reads_agree(ctx: &Ctx, case: &Case) {
    let img = path_str(case.image);
    let what = format!(
        "{img} ({:?} {:?}) as {}",
        case.format,
        case.fs,
        common_images::UNPRIVILEGED
    );
    let commands: [&[&str]; 5] = [
        &["status", img],
        &["status", img, "--format", "json"],
        &["--keep", KEEP, "--check", img],
        &["--keep", KEEP, "--dry-run", img],
        &["doctor", img],
    ];
    for args in commands {
        let user = ctx.run_unprivileged(args);
        if read_in_user_space(case.format) {
            let root = ctx.run(args);
            assert_eq!(
                (user.code, &user.stdout, &user.stderr),
                (root.code, &root.stdout, &root.stderr),
                "{what}: {args:?}"
            );
        } else {
            let line = user.one_error();
            assert!(line.contains("run prepare-image as root"), "{what}: {line}");
        }
    }
    ctx.assert_released(false);
}

/// Every name in the root partition, read by the binary's user-space reader and through the
/// kernel's mount: the same names, bytes, links, modes and owners.
fn compare_with_kernel(ctx: &Ctx, case: &Case) {
    use prepare_image::access::image::open::RootMarker;
    use prepare_image::access::image::userspace;
    let marker = RootMarker {
        path: CLOUD_CFG,
        missing_hint: "",
    };
    let opened = userspace::open(case.image, Some(case.loc.number), false, marker)
        .unwrap()
        .unwrap_or_else(|why| panic!("{}: {}", case.image.display(), why.0));
    let user = opened.root();
    let (files, entries) = ctx.inspect(case.image, case.loc, case.fs, false, |mnt| {
        let mut files = 0;
        let mut entries = 0;
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let mut names: Vec<_> = std::fs::read_dir(mnt.join(&rel))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            let listed: Vec<_> = user
                .list_dir(&rel)
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            assert_eq!(listed, names, "{}", rel.display());
            for name in names {
                entries += 1;
                let rel = rel.join(&name);
                let host = mnt.join(&rel);
                let meta = std::fs::symlink_metadata(&host).unwrap();
                if meta.is_dir() {
                    stack.push(rel);
                } else if meta.file_type().is_symlink() {
                    assert_eq!(
                        user.read_link(&rel).unwrap(),
                        Some(std::fs::read_link(&host).unwrap()),
                        "{}",
                        rel.display()
                    );
                } else if meta.is_file() {
                    use std::os::unix::fs::MetadataExt;
                    let read = user.read_file(&rel).unwrap();
                    assert!(
                        read.bytes == std::fs::read(&host).unwrap(),
                        "{}",
                        rel.display()
                    );
                    assert_eq!(
                        (read.mode, read.uid, read.gid),
                        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
                        "{}",
                        rel.display()
                    );
                    files += 1;
                }
            }
        }
        (files, entries)
    });
    assert!(files > 0);
    eprintln!(
        "byte-for-byte {} ({:?} {:?}): {files} files, {entries} names agree with the kernel mount",
        case.image.display(),
        case.format,
        case.fs
    );
}

/// A disk of `layout` whose root (with `Tree::Root`) is `fs`, next to what
/// such disks usually hold: GPT has a BIOS boot partition and an ESP before
/// the root; MBR has an ext4 /boot (no cloud-init) in partition 1 and the
/// root in logical partition 5. Returns the disk and the root's number.
fn typical_disk(ctx: &Ctx, name: &str, layout: Layout, fs: Fs) -> (Disk, u32) {
    let dir = ctx.dir.path();
    let tree = make_tree(dir, &format!("{name}-tree"), Tree::Root);
    let root = piece(fs.make(dir, &format!("{name}-root"), &tree));
    match layout {
        Layout::Gpt512 | Layout::Gpt4096 => (
            build_disk(dir, name, layout, vec![bios_boot(), esp(dir), root]),
            3,
        ),
        Layout::MbrLogical => {
            let boot_tree = make_tree(dir, &format!("{name}-boot"), Tree::NoCloudInit);
            let boot = piece(Fs::Ext4.make(dir, &format!("{name}-boot"), &boot_tree));
            (build_disk(dir, name, layout, vec![boot, root]), 5)
        }
        Layout::Bare => (build_disk(dir, name, layout, vec![root]), 0),
    }
}

/// Every layout with `fs`: the raw image and, from the same pristine raw,
/// one other format per layout (rotating with `first_format`, so that across
/// the three filesystems every format meets every layout once or more).
fn layouts_with(fs: Fs, first_format: usize) {
    let ctx = Ctx::new();
    let layouts = [
        Layout::Gpt512,
        Layout::Gpt4096,
        Layout::MbrLogical,
        Layout::Bare,
    ];
    for (i, layout) in layouts.into_iter().enumerate() {
        let name = format!("{layout:?}").to_lowercase();
        let (disk, number) = typical_disk(&ctx, &format!("{name}.img"), layout, fs);
        let format = FORMATS[(first_format + i) % FORMATS.len()];
        let other = ctx.path(&format!("{name}.{}", format.name()));
        convert(&disk.path, &other, format);
        for (image, format) in [(&disk.path, Format::Raw), (&other, format)] {
            full_cycle(
                &ctx,
                &Case {
                    image,
                    format,
                    table: layout.table(),
                    loc: disk.part(number),
                    fs,
                },
            );
            std::fs::remove_file(image).unwrap();
        }
    }
}

#[test]
fn ext4_in_every_layout_and_format() {
    layouts_with(Fs::Ext4, 0);
}

#[test]
fn xfs_in_every_layout_and_format() {
    layouts_with(Fs::Xfs, 1);
}

#[test]
fn btrfs_in_every_layout_and_format() {
    layouts_with(Fs::Btrfs, 2);
}

// ---------------------------------------------------------------------------
// Choosing the partition.

#[test]
fn partition_flag_chooses_between_two_roots() {
    let ctx = Ctx::new();
    let dir = ctx.dir.path();
    let e = expected();
    let tree = make_tree(dir, "tree", Tree::Root);
    let a = piece(Fs::Ext4.make(dir, "a", &tree));
    let b = piece(Fs::Btrfs.make(dir, "b", &tree));
    let disk = build_disk(dir, "two.img", Layout::Gpt512, vec![bios_boot(), a, b]);
    let img = path_str(&disk.path);
    let before = sha256(&disk.path);

    for args in [
        vec!["--keep", KEEP, img],
        vec!["--keep", KEEP, "--dry-run", img],
        vec!["status", img],
    ] {
        let out = ctx.run(&args);
        assert_eq!(
            out.one_error(),
            format!(
                "error: {img}: several partitions hold /etc/cloud/cloud.cfg (2 ext4, 3 btrfs); choose one with --partition N"
            ),
            "{args:?}"
        );
    }
    let out = ctx.run(&["--keep", KEEP, "--partition", "7", img]);
    assert_eq!(
        out.one_error(),
        format!("error: {img} has no partition 7 (it has: 1 unknown, 2 ext4, 3 btrfs)")
    );
    let out = ctx.run(&["--keep", KEEP, "--partition", "1", img]);
    assert_eq!(
        out.one_error(),
        format!(
            "error: {img}: partition 1 holds unknown, not a root filesystem prepare-image can mount (ext2/3/4, xfs, btrfs)"
        )
    );
    assert_eq!(sha256(&disk.path), before, "refusals change nothing");

    let status = ctx.run(&["status", "--partition", "2", "--format", "json", img]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert_eq!(
        status.json()["image"],
        image_json(&disk.path, Format::Raw, "gpt (512-byte sectors)", 2, "ext4")
    );
    assert_changed_raw_gpt512(
        ctx.run(&["--keep", KEEP, "--partition", "3", "--format", "json", img]),
        &disk.path,
        3,
        "btrfs",
    );

    let (cfg, _) = ctx.seen(&disk.path, disk.part(3), Fs::Btrfs, false);
    assert_eq!(cfg, e.edited, "partition 3 was chosen");
    let (cfg, _) = ctx.seen(&disk.path, disk.part(2), Fs::Ext4, false);
    assert_eq!(cfg, e.original, "partition 2 was left alone");
    let check = ctx.run(&["--keep", KEEP, "--check", "--partition", "2", img]);
    assert_eq!(check.code, Some(3), "{check:?}");
    ctx.assert_released(false);
}

/// A raw GPT disk `NAME.img` (BIOS boot, then partition 2) whose btrfs is
/// in Fedora's layout: the root in subvolume `root`, `home` beside it, the
/// default subvolume left at the top level; `snapshot` adds a read-write
/// snapshot `root-old` of the root.
fn fedora_disk(ctx: &Ctx, name: &str, snapshot: bool) -> Disk {
    let dir = ctx.dir.path();
    let tree = make_tree(dir, &format!("{name}-tree"), Tree::Root);
    let file = dir.join(format!("{name}.fs"));
    sparse_file(&file, Fs::Btrfs.size());
    run("mkfs.btrfs", &["-q", path_str(&file)]);
    let device = LoopDevice::attach(&file, &[]);
    let top = dir.join(format!("{name}-populate"));
    let mount = Mount::new(&device.path, &top, "btrfs", "nosuid,nodev");
    for subvolume in ["root", "home"] {
        run(
            "btrfs",
            &["-q", "subvolume", "create", path_str(&top.join(subvolume))],
        );
    }
    run(
        "cp",
        &[
            "-a",
            &format!("{}/.", tree.display()),
            path_str(&top.join("root")),
        ],
    );
    if snapshot {
        run(
            "btrfs",
            &[
                "-q",
                "subvolume",
                "snapshot",
                path_str(&top.join("root")),
                path_str(&top.join("root-old")),
            ],
        );
    }
    drop(mount);
    drop(device);
    std::fs::remove_dir(&top).unwrap();
    build_disk(
        dir,
        &format!("{name}.img"),
        Layout::Gpt512,
        vec![bios_boot(), piece(file)],
    )
}

#[test]
fn btrfs_root_in_a_subvolume_is_found_for_reads_and_writes_and_snapshots_are_refused() {
    let ctx = Ctx::new();
    let e = expected();
    let disk = fedora_disk(&ctx, "fedora", false);
    let img = path_str(&disk.path);
    let before = sha256(&disk.path);

    let check = ctx.run(&["--keep", KEEP, "--check", img]);
    assert_eq!(check.code, Some(3), "{check:?}");
    let dry = ctx.run(&["--keep", KEEP, "--dry-run", img]);
    assert_eq!(dry.code, Some(0), "{dry:?}");
    assert_eq!(
        dry.stdout, e.diff,
        "the dry run shows the directory flow's diff"
    );
    assert_eq!(sha256(&disk.path), before, "reads change nothing");

    assert_changed_raw_gpt512(
        ctx.run(&["--keep", KEEP, "--format", "json", img]),
        &disk.path,
        2,
        "btrfs subvol=root",
    );

    // The top level, as the kernel shows it: the edit is inside `root`,
    // and nothing was written beside the subvolumes.
    let (cfg, dropin, top) = ctx.inspect(&disk.path, disk.part(2), Fs::Btrfs, false, |top| {
        let mut names: Vec<String> = std::fs::read_dir(top)
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        (
            std::fs::read_to_string(top.join("root").join(CLOUD_CFG)).unwrap(),
            std::fs::read_to_string(top.join("root").join(DROPIN)).unwrap(),
            names,
        )
    });
    assert_eq!(cfg, e.edited);
    assert_eq!(dropin, e.dropin);
    assert_eq!(top, ["home", "root"]);
    let check = ctx.run(&["--keep", KEEP, "--check", img]);
    assert_eq!(check.code, Some(0), "{check:?}");
    let status = ctx.run(&["status", "--partition", "2", "--format", "json", img]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert_eq!(status.json()["image"]["filesystem"], "btrfs subvol=root");
    // The read-only commands find the subvolume in user space: the same answers without root.
    for args in [
        &["status", "--format", "json", img][..],
        &["--keep", KEEP, "--check", img],
        &["doctor", img],
    ] {
        let root = ctx.run(args);
        let user = ctx.run_unprivileged(args);
        assert_eq!(
            (user.code, &user.stdout, &user.stderr),
            (root.code, &root.stdout, &root.stderr),
            "{args:?}"
        );
    }

    // A root and its snapshot: which one boots is not ours to guess.
    let snap = fedora_disk(&ctx, "snap", true);
    let before = sha256(&snap.path);
    let refused = ctx.run(&["--keep", KEEP, path_str(&snap.path)]);
    assert_eq!(
        refused.one_error(),
        format!(
            "error: {}: several btrfs subvolumes of partition 2 hold /etc/cloud/cloud.cfg (root, root-old); make the one the guest boots the default subvolume (btrfs subvolume set-default) and run again",
            snap.path.display()
        )
    );
    assert_eq!(sha256(&snap.path), before, "refusals change nothing");
    ctx.assert_released(false);
}

#[test]
fn no_partition_holds_cloud_cfg() {
    let ctx = Ctx::new();
    let dir = ctx.dir.path();
    let tree = make_tree(dir, "tree", Tree::NoCloudInit);
    let data = piece(Fs::Ext4.make(dir, "data", &tree));
    let disk = build_disk(dir, "none.img", Layout::Gpt512, vec![esp(dir), data]);
    let img = path_str(&disk.path);
    let before = sha256(&disk.path);
    let out = ctx.run(&["--keep", KEEP, img]);
    assert_eq!(
        out.one_error(),
        format!(
            "error: {img}: no partition holds /etc/cloud/cloud.cfg (partitions: 1 vfat, 2 ext4); is cloud-init installed in this image?"
        )
    );
    let out = ctx.run(&["--keep", KEEP, "--partition", "1", img]);
    assert_eq!(
        out.one_error(),
        format!(
            "error: {img}: partition 1 holds vfat, not a root filesystem prepare-image can mount (ext2/3/4, xfs, btrfs)"
        )
    );
    // Chosen by hand, the partition mounts, and the directory flow says
    // what is missing.
    let out = ctx.run(&["--keep", KEEP, "--dry-run", "--partition", "2", img]);
    let message = out.one_error();
    assert!(message.contains("cloud.cfg"), "{message}");
    assert_eq!(sha256(&disk.path), before);
    ctx.assert_released(false);
}

#[test]
fn lvm_and_luks_roots_are_not_supported_yet() {
    let ctx = Ctx::new();
    let dir = ctx.dir.path();
    for (fs, name, gpt_type) in [
        (TestFs::Lvm2Pv, "LVM2 physical volume", GPT_LVM),
        (TestFs::Luks2, "LUKS", GPT_LINUX),
    ] {
        let volume = typed(fs.make(dir), gpt_type, "8e");
        let disk = build_disk(
            dir,
            &format!("{fs:?}.img"),
            Layout::Gpt512,
            vec![esp(dir), volume],
        );
        let img = path_str(&disk.path);
        let expected = format!(
            "error: {img}: partition 2 is {name}; a root filesystem inside LVM or LUKS is not supported yet (edit it from a running system or a chroot)"
        );
        for args in [
            vec!["--keep", KEEP, img],
            vec!["--keep", KEEP, "--partition", "2", img],
            vec!["status", img],
        ] {
            assert_eq!(ctx.run(&args).one_error(), expected, "{args:?}");
        }
        std::fs::remove_file(&disk.path).unwrap();
    }
    ctx.assert_released(false);
}

#[test]
fn damaged_filesystem_chosen_by_hand_is_a_clear_error() {
    let ctx = Ctx::new();
    let dir = ctx.dir.path();
    let tree = make_tree(dir, "tree", Tree::Root);
    let root = piece(Fs::Ext4.make(dir, "root", &tree));
    let disk = build_disk(dir, "broken.img", Layout::Gpt512, vec![bios_boot(), root]);
    let loc = disk.part(2);
    // The superblock still says ext4, but s_blocks_per_group = 0 (and its
    // checksum no longer matches): no kernel mounts that.
    poke(&disk.path, loc.offset + 1024 + 0x20, &0u32.to_le_bytes());
    let img = path_str(&disk.path);
    let before = sha256(&disk.path);
    for args in [
        vec!["--keep", KEEP, "--partition", "2", img],
        vec!["--keep", KEEP, "--dry-run", "--partition", "2", img],
    ] {
        let out = ctx.run(&args);
        let message = out.one_error();
        assert!(
            message.starts_with(&format!("error: partition 2 of {img}: mounting /dev/loop")),
            "{message}"
        );
        assert!(message.contains("(ext4"), "{message}");
        assert!(
            message.ends_with("(the filesystem is damaged: a checksum or its metadata is wrong; check a copy of the image with fsck)"),
            "{message}"
        );
    }
    // Probed without --partition, it simply holds no cloud.cfg.
    let out = ctx.run(&["--keep", KEEP, img]);
    assert_eq!(
        out.one_error(),
        format!(
            "error: {img}: no partition holds /etc/cloud/cloud.cfg (partitions: 1 unknown, 2 ext4); is cloud-init installed in this image?"
        )
    );
    assert_eq!(sha256(&disk.path), before);
    ctx.assert_released(false);
}

// ---------------------------------------------------------------------------
// Files that are not (whole) images.

#[test]
fn truncated_image_is_refused() {
    let ctx = Ctx::new();
    let dir = ctx.dir.path();
    let tree = make_tree(dir, "tree", Tree::Root);
    let root = piece(Fs::Ext4.make(dir, "root", &tree));
    let disk = build_disk(dir, "cut.img", Layout::Gpt512, vec![bios_boot(), root]);
    let full = 67 * MIB;
    assert_eq!(std::fs::metadata(&disk.path).unwrap().len(), full);
    run("truncate", &["-s", "40M", path_str(&disk.path)]);
    let qcow = ctx.path("cut.qcow2");
    convert(&disk.path, &qcow, Format::Qcow2);
    let end = disk.part(2).offset + disk.part(2).size;
    for image in [&disk.path, &qcow] {
        let before = sha256(image);
        for args in [
            vec!["--keep", KEEP, path_str(image)],
            vec!["status", path_str(image)],
        ] {
            let message = ctx.run(&args).one_error().to_string();
            assert!(
                message.starts_with(&format!("error: {}: ", path_str(image))),
                "{message}"
            );
            assert!(
                message.ends_with(&format!(
                    "partition 2 ends at byte {end} but the image is only {} bytes: the image is truncated (re-copy or re-download it)",
                    40 * MIB
                )),
                "{message}"
            );
        }
        assert_eq!(sha256(image), before);
    }
    ctx.assert_released(false);
}

#[test]
fn files_that_are_not_images_are_refused() {
    let ctx = Ctx::new();
    let zeros = ctx.path("zeros.img");
    std::fs::write(&zeros, vec![0u8; MIB as usize]).unwrap();
    let text = ctx.path("notes.txt");
    std::fs::write(
        &text,
        "These are not the droids you are looking for.\n".repeat(100),
    )
    .unwrap();
    let empty = ctx.path("empty.img");
    std::fs::write(&empty, "").unwrap();
    for file in [&zeros, &text, &empty] {
        let f = path_str(file);
        let before = sha256(file);
        for args in [
            vec!["--keep", KEEP, f],
            vec!["--keep", KEEP, "--partition", "1", f],
            vec!["status", f],
        ] {
            let message = ctx.run(&args).one_error().to_string();
            assert!(
                message.starts_with(&format!("error: {f} is not a disk image")),
                "{args:?}: {message}"
            );
        }
        assert_eq!(sha256(file), before);
    }
    // A qcow2 with nothing written in it: the header is fine, the disk empty.
    let blank = ctx.path("blank.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path_str(&blank), "64M"],
    );
    let message = ctx
        .run(&["--keep", KEEP, path_str(&blank)])
        .one_error()
        .to_string();
    assert!(
        message.contains("holds no partition table (GPT or MBR) and no filesystem"),
        "{message}"
    );
    ctx.assert_released(false);
}

// ---------------------------------------------------------------------------
// Images in use elsewhere.

/// A child process of this test, killed (exactly it) on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn small_image(ctx: &Ctx, name: &str) -> Disk {
    let dir = ctx.dir.path();
    let tree = make_tree(dir, &format!("{name}-tree"), Tree::Root);
    let root = piece(Fs::Ext4.make(dir, &format!("{name}-root"), &tree));
    build_disk(dir, name, Layout::Gpt512, vec![bios_boot(), root])
}

#[test]
fn image_attached_to_a_loop_device_is_refused() {
    let ctx = Ctx::new();
    let disk = small_image(&ctx, "attached.img");
    let img = path_str(&disk.path);
    let before = sha256(&disk.path);
    {
        let device = LoopDevice::attach(&disk.path, &["-r"]);
        for args in [
            vec!["--keep", KEEP, img],
            vec!["--keep", KEEP, "--dry-run", img],
        ] {
            assert_eq!(
                ctx.run(&args).one_error(),
                format!(
                    "error: {img} is already attached to {}: detach it (or stop what uses it) before editing the image",
                    device.path
                )
            );
        }
    }
    // Mounted with `mount -o loop`: that loop device clears itself when
    // unmounted (autoclear, like the binary's own), but while the mount
    // stays, it stays, and the image is refused all the same.
    {
        let loc = disk.part(2);
        let mount = Mount::new(
            img,
            &ctx.path("mounted"),
            "ext4",
            &format!(
                "loop,ro,noload,offset={},sizelimit={}",
                loc.offset, loc.size
            ),
        );
        let out = ctx.run(&["--keep", KEEP, img]);
        let message = out.one_error();
        assert!(
            message.starts_with(&format!("error: {img} is already attached to /dev/loop")),
            "{message}"
        );
        drop(mount);
    }
    std::fs::remove_dir(ctx.path("mounted")).unwrap();
    assert_eq!(sha256(&disk.path), before);
    // Detached again, the image is fine to use.
    let out = ctx.run(&["--keep", KEEP, "--dry-run", img]);
    assert_eq!(out.code, Some(0), "{out:?}");
    ctx.assert_released(false);
}

#[test]
fn image_open_for_writing_is_refused_naming_the_process() {
    let ctx = Ctx::new();
    let disk = small_image(&ctx, "busy.img");
    let qcow = ctx.path("busy.qcow2");
    convert(&disk.path, &qcow, Format::Qcow2);
    for image in [&disk.path, &qcow] {
        let img = path_str(image);
        let before = sha256(image);
        let mut child = KillOnDrop(
            StdCommand::new("python3")
                .args([
                    "-c",
                    "import sys, time\nf = open(sys.argv[1], 'r+b')\nprint('open', flush=True)\ntime.sleep(60)\n",
                    img,
                ])
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 is needed for this test"),
        );
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "open\n");
        let pid = child.0.id();
        for args in [
            vec!["--keep", KEEP, img],
            vec!["--keep", KEEP, "--check", img],
        ] {
            let message = ctx.run(&args).one_error().to_string();
            assert!(
                message.starts_with(&format!(
                    "error: {img} is open for writing by process {pid} (python3)"
                )),
                "{message}"
            );
        }
        drop(child);
        assert_eq!(sha256(image), before);
        let out = ctx.run(&["--keep", KEEP, "--check", img]);
        assert_eq!(out.code, Some(3), "usable once the writer is gone: {out:?}");
    }
    ctx.assert_released(false);
}

// ---------------------------------------------------------------------------
// Symlinks inside the image.

#[test]
fn symlinked_cloud_cfg_resolves_inside_the_image() {
    let ctx = Ctx::new();
    let dir = ctx.dir.path();
    let e = expected();
    let host_shadow = Path::new("/etc/shadow");
    let host_before = host_shadow.exists().then(|| sha256(host_shadow));
    for (kind, link, format) in [
        (Tree::LinkAbsolute, "/etc/shadow", Format::Raw),
        (Tree::LinkRelative, RELATIVE_LINK, Format::Qcow2),
    ] {
        let name = format!("{kind:?}");
        let tree = make_tree(dir, &format!("{name}-tree"), kind);
        let root = piece(Fs::Ext4.make(dir, &format!("{name}-root"), &tree));
        let disk = build_disk(
            dir,
            &format!("{name}.img"),
            Layout::Gpt512,
            vec![bios_boot(), root],
        );
        let image = if format == Format::Raw {
            disk.path.clone()
        } else {
            let other = ctx.path(&format!("{name}.qcow2"));
            convert(&disk.path, &other, format);
            other
        };
        let img = path_str(&image);
        let dry = ctx.run(&["--keep", KEEP, "--dry-run", "--format", "json", img]);
        assert_eq!(dry.code, Some(0), "{dry:?}");
        assert_eq!(dry.json()["files"][0]["path"], "etc/shadow", "{name}");
        let apply = ctx.run(&["--keep", KEEP, img]);
        assert_eq!(apply.code, Some(0), "{name}: {apply:?}");
        ctx.inspect(&image, disk.part(2), Fs::Ext4, false, |root| {
            let cfg = root.join(CLOUD_CFG);
            assert_eq!(
                std::fs::read_link(&cfg).unwrap(),
                Path::new(link),
                "{name}: the link itself is kept"
            );
            assert_eq!(
                std::fs::read_to_string(root.join("etc/shadow")).unwrap(),
                e.edited,
                "{name}: the image's own /etc/shadow is what was edited"
            );
        });
        assert_eq!(
            host_shadow.exists().then(|| sha256(host_shadow)),
            host_before,
            "{name}: the host's /etc/shadow"
        );
    }
    ctx.assert_released(false);
}

// ---------------------------------------------------------------------------
// Signals at every point of a run.

const PAUSE_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A run of the binary stopped at a PREPARE_IMAGE_PAUSE point. Dropping it
/// kills exactly this child.
struct Paused {
    child: Option<Child>,
    stderr: Receiver<String>,
    stdout: Option<JoinHandle<String>>,
    seen: Vec<String>,
}

impl Paused {
    fn start(ctx: &Ctx, image: &Path, point: &str) -> Paused {
        let mut child = StdCommand::new(env!("CARGO_BIN_EXE_prepare-image"))
            .args(["--keep", KEEP, "--color", "never", path_str(image)])
            .env("TMPDIR", &ctx.tmp)
            .env("PREPARE_IMAGE_PAUSE", point)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out: ChildStdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err = child.stderr.take().unwrap();
        let (send, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut paused = Paused {
            child: Some(child),
            stderr,
            stdout: Some(stdout),
            seen: Vec::new(),
        };
        let marker = format!("prepare-image: paused at {point} (PREPARE_IMAGE_PAUSE)");
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match paused.stderr.recv_timeout(left) {
                Ok(line) => {
                    let done = line == marker;
                    paused.seen.push(line);
                    if done {
                        return paused;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {marker:?} within {PAUSE_TIMEOUT:?}: {:?}", paused.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("exited before pausing at {point}: {:?}", paused.seen)
                }
            }
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = self.child.as_ref().unwrap().id();
        kill(Pid::from_raw(pid as i32), signal).unwrap();
    }

    /// Waits for the exit; returns the status, the stderr lines after the
    /// marker, and stdout.
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("still running {EXIT_TIMEOUT:?} after the signal");
            }
            sleep(Duration::from_millis(10));
        };
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let rest = self.stderr.iter().collect();
        (status, rest, stdout)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Interrupts a real run of a copy of `template` at `point` with `signal`,
/// then checks that everything was released and that cloud.cfg is either
/// untouched (before the write) or completely edited (after it) — read the
/// way a booting system reads it, with any journal replayed.
fn interrupt_case(
    ctx: &Ctx,
    template: &Path,
    format: Format,
    loc: Loc,
    point: &str,
    signal: Signal,
) {
    let e = expected();
    let what = format!("{} at {point} ({})", signal.as_str(), format.name());
    let image = ctx.path(&format!("case.{}", format.name()));
    copy_sparse(template, &image);
    let paused = Paused::start(ctx, &image, point);
    // While it runs, the detector sees its loop device (and daemon), never
    // its mounts: they live in the run's private mount namespace.
    let running = ctx.leftovers();
    assert!(
        running.iter().any(|l| l.starts_with("/dev/loop")),
        "{what}: {running:#?}"
    );
    assert!(
        !running.iter().any(|l| l.contains("mountinfo")),
        "{what}: mounts visible outside the run: {running:#?}"
    );
    if format != Format::Raw {
        assert!(
            running
                .iter()
                .any(|l| l.starts_with("process") && l.contains("qemu-storage-daemon")),
            "{what}: {running:#?}"
        );
    }
    paused.signal(signal);
    let (status, stderr, stdout) = paused.finish();
    let number = signal as i32;
    let written = point == "written";
    if signal == Signal::SIGKILL {
        assert_eq!(status.signal(), Some(number), "{what}: {status:?}");
    } else if written && status.code() == Some(0) {
        // The files were already written: the run finishes its report.
        assert_eq!(stdout, e.diff, "{what}");
        assert_eq!(
            stderr.last().map(String::as_str),
            Some(CHANGED_SUMMARY.replace("{}", path_str(&image)).as_str()),
            "{what}: {stderr:?}"
        );
    } else {
        assert_eq!(
            status.code(),
            Some(128 + number),
            "{what}: {status:?} {stderr:?}"
        );
        assert_eq!(stderr.len(), 1, "{what}: one line: {stderr:?}");
        assert!(
            stderr[0].starts_with(&format!("error: interrupted by {}", signal.as_str())),
            "{what}: {stderr:?}"
        );
        assert_eq!(stdout, "", "{what}");
    }
    ctx.assert_released(signal == Signal::SIGKILL);
    if format == Format::Qcow2 {
        let (code, text) = qemu_check(&image, format);
        // 3: leaked clusters only, harmless; 2 would be corruption.
        assert!(code == 0 || code == 3, "{what}: qemu-img check: {text}");
    }
    let (cfg, dropin) = ctx.seen(&image, loc, Fs::Ext4, true);
    assert_eq!(dropin, e.dropin, "{what}");
    if written {
        assert_eq!(cfg, e.edited, "{what}: written and synced before the pause");
    } else {
        assert_eq!(cfg, e.original, "{what}: stopped before writing");
    }
    std::fs::remove_file(&image).unwrap();
    // Temp directories a SIGKILLed run could not remove (they are empty).
    for entry in std::fs::read_dir(&ctx.tmp).unwrap() {
        let path = entry.unwrap().path();
        let _ = std::fs::remove_file(path.join("raw"));
        std::fs::remove_dir(&path).unwrap();
    }
}

const POINTS: [&str; 3] = ["attached", "mounted", "written"];

#[test]
fn signals_at_every_point_release_everything_raw() {
    let ctx = Ctx::new();
    let disk = small_image(&ctx, "template.img");
    let loc = disk.part(2);
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL] {
        for point in POINTS {
            interrupt_case(&ctx, &disk.path, Format::Raw, loc, point, signal);
        }
    }
    interrupt_case(
        &ctx,
        &disk.path,
        Format::Raw,
        loc,
        "mounted",
        Signal::SIGHUP,
    );
}

#[test]
fn signals_of_a_qcow2_run_take_the_daemon_along() {
    let ctx = Ctx::new();
    let disk = small_image(&ctx, "template.img");
    let template = ctx.path("template.qcow2");
    convert(&disk.path, &template, Format::Qcow2);
    let loc = disk.part(2);
    for point in POINTS {
        interrupt_case(&ctx, &template, Format::Qcow2, loc, point, Signal::SIGKILL);
    }
    interrupt_case(
        &ctx,
        &template,
        Format::Qcow2,
        loc,
        "attached",
        Signal::SIGINT,
    );
    interrupt_case(
        &ctx,
        &template,
        Format::Qcow2,
        loc,
        "mounted",
        Signal::SIGTERM,
    );
}

/// A real run mounts read-write only when it has something to write: "nothing
/// to do" and refused input leave the image file byte-identical (a read-write
/// mount alone would change the superblock and journal), and errors name the
/// image and partition, never the temp mountpoint.
#[test]
fn real_runs_that_write_nothing_leave_the_image_byte_identical() {
    let ctx = Ctx::new();
    let disk = small_image(&ctx, "idle.img");
    let img = path_str(&disk.path);
    let out = ctx.run(&["--keep", KEEP, img]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let after_edit = sha256(&disk.path);
    let out = ctx.run(&["--keep", KEEP, img]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("nothing to do"), "{out:?}");
    assert_eq!(
        sha256(&disk.path),
        after_edit,
        "a run with nothing to do changed the image"
    );

    let dir = ctx.dir.path();
    let tree = make_tree(dir, "jinja-tree", Tree::Root);
    std::fs::write(tree.join(CLOUD_CFG), "## template:jinja\n#cloud-config\n").unwrap();
    let root = piece(Fs::Ext4.make(dir, "jinja-root", &tree));
    let bad = build_disk(dir, "jinja.img", Layout::Gpt512, vec![bios_boot(), root]);
    let bad_img = path_str(&bad.path);
    let before = sha256(&bad.path);
    let message = ctx.run(&["--keep", KEEP, bad_img]).one_error().to_string();
    assert!(
        message.starts_with(&format!(
            "error: {bad_img} (partition 2)/etc/cloud/cloud.cfg: line 1"
        )),
        "{message}"
    );
    assert!(!message.contains("prepare-image-mnt"), "{message}");
    assert_eq!(sha256(&bad.path), before, "a refused run changed the image");
    ctx.assert_released(false);
}

/// Without qemu-storage-daemon a qcow2 image cannot be opened: the error
/// says which Debian package provides it, and the image is untouched.
#[test]
fn missing_qemu_storage_daemon_names_the_package() {
    let ctx = Ctx::new();
    let disk = small_image(&ctx, "nodaemon.raw");
    let qcow2 = ctx.path("nodaemon.qcow2");
    convert(&disk.path, &qcow2, Format::Qcow2);
    let before = sha256(&qcow2);
    // An empty PATH: the binary finds no helper program at all. A qcow2 is read in user
    // space, so the daemon is needed only to write: a real run plans, then stops there.
    let empty = ctx.path("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let out = ctx
        .command()
        .env("PATH", &empty)
        .args(["--keep", KEEP, path_str(&qcow2)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: qemu-storage-daemon is needed for qcow2 images but is not installed: install the Debian package qemu-utils"),
        "{stderr}"
    );
    assert_eq!(sha256(&qcow2), before);
    ctx.assert_released(false);
}
