//! Images whose root filesystem was not shut down cleanly: changes committed to the ext4
//! journal, the XFS log or the btrfs log tree, which the guest's kernel replays when it boots.
//! Reads must show that post-replay state or refuse; never the stale one. Writes must land on the
//! post-replay file, and show the diff they write.
//!
//! The images are really unclean: the filesystem is mounted on a loop device, cloud.cfg replaced
//! and a drop-in added (fsync'd), and then
//! - XFS: shut down without a checkpoint (`xfs_io -x -c "shutdown -f"`: the log is flushed, the
//!   metadata is not written home), then unmounted;
//! - ext4 and btrfs: the image file is copied while the filesystem is still mounted, i.e. the
//!   disk as a power cut would leave it. (ext4's shutdown ioctl does not do: the unmount after it
//!   still writes the journalled metadata home through the block device's cache, so the premise
//!   check below saw the new text; btrfs has no shutdown ioctl on this kernel, 6.18.)
//!
//! Every premise is checked with the filesystem's own tools before the binary runs (ext4:
//! `dumpe2fs` says needs_recovery and `debugfs`, which does not replay, shows the old cloud.cfg;
//! XFS: `xfs_logprint` says the log is dirty; btrfs: `dump-super` shows a log root), and the
//! truth is a copy mounted read-write by the kernel, which replays. The stale state (a read-only
//! mount that skips the replay) is checked to differ from the truth, so each comparison can fail.
//!
//! Needs root (loop devices, mount), e2fsprogs, xfsprogs, btrfs-progs, fdisk, qemu-utils.

mod common_images;
mod common_readers;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common_images::{
    LoopDevice, MIB, Mount, Output, Scratch, TestFs, partition, path_str, run, sha256, sparse_file,
};
use common_readers::{Seen, walk_all};
use prepare_image::access::fs::{self as readers, FsRead, xfs::UNKNOWN_OWNER};
use prepare_image::access::image::block::{FileSource, Window};
use prepare_image::access::image::fstype::FsKind;
use serde_json::Value;

const CLOUD_CFG: &str = "etc/cloud/cloud.cfg";
const DROPIN: &str = "etc/cloud/cloud.cfg.d/50_after_the_crash.cfg";
/// What the drop-in written before the crash says: `hostname` turns from overwritten to kept.
const DROPIN_TEXT: &str = "preserve_hostname: true\n";
const KEEP: &str = "hostname,dns";
/// The root partition's number and place in every image here (after a 1 MiB BIOS boot one).
const ROOT_PARTITION: u32 = 2;
const ROOT_OFFSET: u64 = 2 * MIB;

/// The tests here one at a time: a run of the binary that mounts unshares its mount namespace,
/// and with it holds every mount of the moment, among them another test's, which then outlives its
/// unmount for as long as that run lives (see [`Fs::options`]).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cloud-cfg")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// cloud.cfg as the image was built.
fn old_cfg() -> String {
    fixture("tencent-centos-rhel8.5.cfg")
}

/// cloud.cfg as written (and fsync'd) just before the crash.
fn new_cfg() -> String {
    fixture("redhat-rhel-8.5.cfg")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fs {
    /// ext4 as mkfs makes it today: a `64bit`, `metadata_csum` journal, which ext4-view replays.
    Ext4,
    /// ext4 without `64bit` and `metadata_csum` (CentOS 7 era): a journal ext4-view cannot replay.
    Ext4OldJournal,
    Xfs,
    Btrfs,
}

impl Fs {
    fn test_fs(self) -> TestFs {
        match self {
            Fs::Ext4 | Fs::Ext4OldJournal => TestFs::Ext4,
            Fs::Xfs => TestFs::Xfs,
            Fs::Btrfs => TestFs::Btrfs,
        }
    }

    fn fstype(self) -> &'static str {
        match self {
            Fs::Ext4 | Fs::Ext4OldJournal => "ext4",
            Fs::Xfs => "xfs",
            Fs::Btrfs => "btrfs",
        }
    }

    /// A read-only mount that skips the replay: the stale state.
    fn no_replay(self) -> String {
        self.options(match self {
            Fs::Ext4 | Fs::Ext4OldJournal => "ro,noload",
            Fs::Xfs => "ro,norecovery",
            Fs::Btrfs => "ro,rescue=nologreplay",
        })
    }

    /// The test's own mount options: XFS with `nouuid`, since the truth is read from a copy with
    /// the same UUID, and an unmounted filesystem stays alive while a process that unshared its
    /// mount namespace meanwhile (any run of the binary that mounts) still holds a copy of it.
    fn options(self, base: &str) -> String {
        match self {
            Fs::Xfs => format!("{base},nouuid"),
            _ => base.to_string(),
        }
    }

    fn mkfs(self, device: &str) {
        match self {
            Fs::Ext4 => run("mkfs.ext4", &["-q", "-F", device]),
            Fs::Ext4OldJournal => run(
                "mkfs.ext4",
                &["-q", "-F", "-O", "^metadata_csum,^64bit", device],
            ),
            Fs::Xfs => run("mkfs.xfs", &["-q", "-f", device]),
            Fs::Btrfs => run("mkfs.btrfs", &["-q", "-f", device]),
        };
    }
}

/// `image`'s root partition on a loop device (read-only unless `writable`).
fn attach(image: &Path, fs: Fs, writable: bool) -> LoopDevice {
    let offset = ROOT_OFFSET.to_string();
    let size = fs.test_fs().size().to_string();
    let mut options = vec!["-o", &offset, "--sizelimit", &size];
    if !writable {
        options.push("-r");
    }
    LoopDevice::attach(image, &options)
}

/// Writes `text` to `path` by a temp file and a rename, as editors and package managers do.
fn replace(path: &Path, text: &str) {
    let temp = path.with_extension("new");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// fsync(2) of a file or directory.
fn fsync(path: &Path) {
    std::fs::File::open(path).unwrap().sync_all().unwrap();
}

/// A GPT image `dir/NAME.img` whose partition 2 holds `fs` with the old cloud.cfg, cleanly
/// unmounted.
fn clean_image(dir: &Path, name: &str, fs: Fs) -> PathBuf {
    let image = dir.join(format!("{name}.img"));
    let size = fs.test_fs().size();
    sparse_file(&image, 3 * MIB + size);
    partition(
        &image,
        &format!(
            "label: gpt\n\
             start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\"\n\
             start=4096, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n",
            size / 512
        ),
        512,
    );
    let device = attach(&image, fs, true);
    fs.mkfs(&device.path);
    let mount = Mount::new(
        &device.path,
        &dir.join(format!("{name}-build")),
        fs.fstype(),
        &fs.options("rw"),
    );
    std::fs::create_dir_all(mount.path.join("etc/cloud/cloud.cfg.d")).unwrap();
    std::fs::write(mount.path.join(CLOUD_CFG), old_cfg()).unwrap();
    drop(mount);
    drop(device);
    image
}

/// What happens on the filesystem before the crash besides the cloud.cfg edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Edit,
    /// Also [`churn`].
    Churn,
}

/// Many transactions of every kind a reader's replay must apply: files created (inline, one
/// block, several), appended, overwritten, truncated, renamed, deleted (their inodes and blocks
/// reused), symlinks short and long, a directory grown past one block, owners and modes changed;
/// every so often an fsync commits what came before.
fn churn(root: &Path) {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let data = root.join("var/churn");
    let big = data.join("big-directory");
    std::fs::create_dir_all(&big).unwrap();
    let body = |i: usize| -> Vec<u8> {
        let len = (i * 577) % 9000;
        (0..len).map(|b| (b * 31 + i) as u8).collect()
    };
    for i in 0..300 {
        let file = data.join(format!("f{i}"));
        std::fs::write(&file, body(i)).unwrap();
        if i % 40 == 0 {
            fsync(&file);
            fsync(&data);
        }
    }
    for i in 0..700 {
        std::fs::write(big.join(format!("entry-with-a-longer-name-{i:04}")), b"x").unwrap();
    }
    fsync(&big);
    for i in (0..300).step_by(3) {
        std::fs::remove_file(data.join(format!("f{i}"))).unwrap();
    }
    for i in (0..700).step_by(5) {
        std::fs::remove_file(big.join(format!("entry-with-a-longer-name-{i:04}"))).unwrap();
    }
    for i in (1..300).step_by(7).filter(|i| i % 3 != 0) {
        std::fs::rename(
            data.join(format!("f{i}")),
            data.join(format!("renamed-{i}")),
        )
        .unwrap();
    }
    for i in (2..300).step_by(11) {
        let file = data.join(format!("f{i}"));
        if file.exists() {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            f.write_all(&body(i + 1)).unwrap();
            f.sync_all().unwrap();
        }
    }
    for i in (4..300).step_by(13) {
        let file = data.join(format!("f{i}"));
        if file.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(100)
                .unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4711)).unwrap();
            std::os::unix::fs::chown(&file, Some(1000 + i as u32), Some(2000)).unwrap();
        }
    }
    // An inode that was on disk before, changed in owners only.
    std::os::unix::fs::chown(root.join("etc/cloud/cloud.cfg.d"), Some(1234), Some(5678)).unwrap();
    for i in 0..30 {
        std::os::unix::fs::symlink(format!("f{i}"), data.join(format!("link-{i}"))).unwrap();
    }
    std::os::unix::fs::symlink("d/".repeat(100), data.join("long-link")).unwrap();
    // Freed inodes and blocks reused by new files.
    for i in 0..100 {
        std::fs::write(data.join(format!("new-{i}")), body(i + 500)).unwrap();
    }
    for dir in [&big, &data, &root.join("var")] {
        fsync(dir);
    }
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && !path.is_symlink() {
            fsync(&path);
        }
    }
}

/// Mounts `image`, replaces cloud.cfg and adds the drop-in, and leaves the filesystem with those
/// changes committed to its journal or log only (see the module text). Returns the unclean image
/// (for ext4 and btrfs a copy taken while mounted; `image` itself ends clean).
fn crash(dir: &Path, image: &Path, name: &str, fs: Fs, work: Work) -> PathBuf {
    let unclean = dir.join(format!("{name}-unclean.img"));
    let device = attach(image, fs, true);
    let mount = Mount::new(
        &device.path,
        &dir.join(format!("{name}-crash")),
        fs.fstype(),
        &fs.options("rw"),
    );
    let root = mount.path.clone();
    replace(&root.join(CLOUD_CFG), &new_cfg());
    std::fs::write(root.join(DROPIN), DROPIN_TEXT).unwrap();
    if work == Work::Churn {
        churn(&root);
    }
    for path in [CLOUD_CFG, DROPIN, "etc/cloud/cloud.cfg.d", "etc/cloud"] {
        fsync(&root.join(path));
    }
    match fs {
        Fs::Xfs => {
            run("xfs_io", &["-x", "-c", "shutdown -f", path_str(&root)]);
            drop(mount);
            drop(device);
            std::fs::rename(image, &unclean).unwrap();
        }
        Fs::Ext4 | Fs::Ext4OldJournal | Fs::Btrfs => {
            // The disk as it is now: the journal (or log tree) written, the metadata not yet
            // written home (that waits for writeback, 30 s, or the unmount).
            run(
                "cp",
                &["--sparse=always", path_str(image), path_str(&unclean)],
            );
            drop(mount);
            drop(device);
        }
    }
    unclean
}

/// The root filesystem of `image` as a tree under `dir/NAME`: mounted read-write on a copy (the kernel
/// replays: the truth), or read-only without replay on the image itself (the stale state).
fn read_tree(dir: &Path, image: &Path, fs: Fs, name: &str, replayed: bool) -> PathBuf {
    let tree = dir.join(name);
    std::fs::create_dir_all(&tree).unwrap();
    let copy = dir.join(format!("{name}.img"));
    let source = if replayed {
        run("cp", &["--sparse=always", path_str(image), path_str(&copy)]);
        copy.as_path()
    } else {
        image
    };
    {
        let device = attach(source, fs, replayed);
        let options = if replayed {
            fs.options("rw")
        } else {
            fs.no_replay()
        };
        let mount = Mount::new(
            &device.path,
            &dir.join(format!("{name}-mnt")),
            fs.fstype(),
            &options,
        );
        run(
            "cp",
            &[
                "-a",
                &format!("{}/.", mount.path.display()),
                path_str(&tree),
            ],
        );
    }
    if replayed {
        std::fs::remove_file(&copy).unwrap();
    }
    tree
}

/// The filesystem's own word that a replay is pending, and what its own tools read without one;
/// `Err` says what does not hold.
fn premise(image: &Path, fs: Fs) -> Result<(), String> {
    let device = attach(image, fs, false);
    let dev = device.path.as_str();
    let holds = |ok: bool, what: String| if ok { Ok(()) } else { Err(what) };
    match fs {
        Fs::Ext4 | Fs::Ext4OldJournal => {
            let header = run("dumpe2fs", &["-h", dev]);
            let line = |prefix: &str| {
                header
                    .lines()
                    .find(|l| l.starts_with(prefix))
                    .unwrap_or_default()
                    .to_string()
            };
            let features = line("Filesystem features:");
            holds(features.contains("needs_recovery"), features)?;
            let journal = line("Journal features:");
            // The modern journal is the one ext4-view replays; the old one it cannot.
            holds(
                journal.contains("journal_checksum_v3") == (fs == Fs::Ext4),
                journal,
            )?;
            let stale = run("debugfs", &["-R", &format!("cat /{CLOUD_CFG}"), dev]);
            holds(
                stale == old_cfg(),
                format!(
                    "debugfs (no replay) reads a cloud.cfg that is not the old one (first line {:?})",
                    stale.lines().next()
                ),
            )
        }
        Fs::Xfs => {
            let log = run("xfs_logprint", &["-t", dev]);
            holds(log.contains("state: <DIRTY>"), log)
        }
        Fs::Btrfs => {
            let sb = run("btrfs", &["inspect-internal", "dump-super", dev]);
            let log_root = sb
                .lines()
                .find_map(|l| l.strip_prefix("log_root\t"))
                .map(str::trim);
            holds(log_root.is_some_and(|r| r != "0"), sb.clone())
        }
    }
}

/// How often an unclean image is built before the test gives up: for ext4 and btrfs the copy
/// races the kernel's writeback (a `sync` by any process, the 30 s expiry, btrfs's commit), which
/// the premise check notices.
const ATTEMPTS: usize = 3;

/// An unclean image `NAME-unclean.img` of `fs` in `scratch`, its premise checked, with copies of
/// its files as the kernel reads them after the replay (the truth) and without it (stale).
struct Unclean {
    image: PathBuf,
    truth: PathBuf,
    stale: PathBuf,
}

fn unclean(scratch: &Scratch, name: &str, fs: Fs) -> Unclean {
    unclean_after(scratch, name, fs, Work::Edit)
}

fn unclean_after(scratch: &Scratch, name: &str, fs: Fs, work: Work) -> Unclean {
    let dir = scratch.dir.path();
    let mut failed = Vec::new();
    let image = loop {
        let image = crash(dir, &clean_image(dir, name, fs), name, fs, work);
        match premise(&image, fs) {
            Ok(()) => break image,
            Err(why) => failed.push(why),
        }
        assert!(
            failed.len() < ATTEMPTS,
            "{fs:?}: the image is not unclean after {ATTEMPTS} attempts: {failed:#?}"
        );
        std::fs::remove_file(&image).unwrap();
    };
    let before = sha256(&image);
    let truth = read_tree(dir, &image, fs, &format!("{name}-truth"), true);
    let stale = read_tree(dir, &image, fs, &format!("{name}-stale"), false);
    assert_eq!(
        sha256(&image),
        before,
        "reading the premise changed the image"
    );
    let read = |tree: &Path, path: &str| std::fs::read_to_string(tree.join(path)).ok();
    assert_eq!(
        read(&truth, CLOUD_CFG),
        Some(new_cfg()),
        "{fs:?}: the replay"
    );
    assert_eq!(read(&truth, DROPIN).as_deref(), Some(DROPIN_TEXT), "{fs:?}");
    assert_ne!(
        (read(&stale, CLOUD_CFG), read(&stale, DROPIN)),
        (read(&truth, CLOUD_CFG), read(&truth, DROPIN)),
        "{fs:?}: the stale state must differ from the replayed one"
    );
    std::fs::set_permissions(&image, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    Unclean {
        image,
        truth,
        stale,
    }
}

fn json(out: &Output) -> Value {
    assert_eq!(out.code, Some(0), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// What `status` says of the settings, without the lines that name the target.
fn settings(out: &Output) -> Value {
    let doc = json(out);
    serde_json::json!([doc["settings"], doc["ignored_files"]])
}

/// `status` and `--keep --dry-run`, run on a plain directory.
fn on_directory(scratch: &Scratch, tree: &Path) -> (Value, String) {
    let root = path_str(tree);
    let status = settings(&scratch.run(&["status", "--format", "json", root]));
    let dry = scratch.run(&["--keep", KEEP, "--dry-run", root]);
    assert_eq!(dry.code, Some(0), "{dry:?}");
    (status, dry.stdout)
}

/// Rootless `status` and `--keep --dry-run` on `image` read the post-replay state: what they say
/// equals what they say of the kernel's replayed tree, and differs from the stale tree.
fn reads_show_the_replayed_state(fs: Fs) {
    let _serial = serial();
    let scratch = Scratch::new();
    let u = unclean(&scratch, "root", fs);
    let img = path_str(&u.image);
    let before = sha256(&u.image);
    let truth = on_directory(&scratch, &u.truth);
    let stale = on_directory(&scratch, &u.stale);
    assert_ne!(
        truth, stale,
        "{fs:?}: the test cannot tell the two states apart"
    );

    let status = scratch.run_unprivileged(&["status", "--format", "json", img]);
    assert_eq!(settings(&status), truth.0, "{fs:?}: rootless status");
    let dry = scratch.run_unprivileged(&["--keep", KEEP, "--dry-run", img]);
    assert_eq!(dry.code, Some(0), "{dry:?}");
    assert_eq!(dry.stdout, truth.1, "{fs:?}: rootless --dry-run");
    // As root the same: reads go through user space.
    let status = scratch.run(&["status", "--format", "json", img]);
    assert_eq!(settings(&status), truth.0, "{fs:?}: status as root");
    assert_eq!(sha256(&u.image), before, "{fs:?}: a read changed the image");

    // The same disk as qcow2 (read through imago).
    let qcow2 = scratch.path("root-unclean.qcow2");
    run(
        "qemu-img",
        &["convert", "-O", "qcow2", img, path_str(&qcow2)],
    );
    std::fs::set_permissions(&qcow2, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let before = sha256(&qcow2);
    let status = scratch.run_unprivileged(&["status", "--format", "json", path_str(&qcow2)]);
    assert_eq!(
        settings(&status),
        truth.0,
        "{fs:?}: rootless status of the qcow2"
    );
    assert_eq!(sha256(&qcow2), before, "{fs:?}: a read changed the qcow2");
}

#[test]
fn ext4_reads_show_the_replayed_journal() {
    reads_show_the_replayed_state(Fs::Ext4);
}

#[test]
fn xfs_reads_show_the_replayed_log() {
    reads_show_the_replayed_state(Fs::Xfs);
}

/// The refusal of an unclean filesystem, as one line naming the image and partition.
fn assert_refused(out: &Output, image: &Path, fs: Fs, why: &str) {
    let line = out.one_error();
    let head = format!(
        "error: {}: partition {ROOT_PARTITION} ({}) was not shut down cleanly: ",
        image.display(),
        fs.fstype()
    );
    assert!(line.starts_with(&head), "{line}");
    assert!(line.contains(why), "{line}");
    assert!(
        line.ends_with("boot the image and shut it down cleanly, or, on a copy you own, mount it read-write once (this replays its journal) and unmount it")
            || line.ends_with("(this replays its log) and unmount it")
            || line.ends_with("(this replays its log tree) and unmount it"),
        "{line}"
    );
}

/// Where the reader cannot replay, every read refuses (rootless and as root, where the kernel
/// read would skip the replay), and so does a write, before it touches the image.
fn reads_and_writes_refuse(fs: Fs, why: &str) {
    let _serial = serial();
    let scratch = Scratch::new();
    let u = unclean(&scratch, "root", fs);
    let img = path_str(&u.image);
    let before = sha256(&u.image);
    for args in [
        &["status", "--format", "json", img][..],
        &["--keep", KEEP, "--dry-run", img],
        &["doctor", img],
    ] {
        assert_refused(&scratch.run_unprivileged(args), &u.image, fs, why);
        assert_refused(&scratch.run(args), &u.image, fs, why);
    }
    assert_refused(&scratch.run(&["--keep", KEEP, img]), &u.image, fs, why);
    assert_eq!(
        sha256(&u.image),
        before,
        "{fs:?}: a refused run changed the image"
    );
    assert!(scratch.processes().is_empty(), "{:?}", scratch.processes());
}

#[test]
fn btrfs_with_a_log_tree_is_refused_for_reads_and_writes() {
    reads_and_writes_refuse(Fs::Btrfs, "the btrfs reader does not replay a log tree");
}

#[test]
fn ext4_with_a_journal_the_reader_cannot_replay_is_refused_for_reads_and_writes() {
    reads_and_writes_refuse(
        Fs::Ext4OldJournal,
        "the ext4 reader cannot replay it (ext4 feature not readable in user space",
    );
}

/// A run as root that reads through the kernel (loop device, read-only mount), as it does when
/// no user-space reader serves an image.
fn run_kernel_read(scratch: &Scratch, args: &[&str]) -> Output {
    let out = scratch
        .command()
        .env("PREPARE_IMAGE_FORCE_KERNEL_READ", "1")
        .args(args)
        .output()
        .unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// The root user's kernel read refuses a pending replay instead of mounting with noload /
/// norecovery / nologreplay, leaves the image as it was, and reads the replayed image (also a
/// clean XFS, which it now mounts without norecovery) as the kernel replayed it.
#[test]
fn the_kernel_read_refuses_a_pending_replay_and_reads_a_clean_image() {
    let _serial = serial();
    let scratch = Scratch::new();
    for fs in [Fs::Ext4, Fs::Ext4OldJournal, Fs::Xfs, Fs::Btrfs] {
        let name = format!("{fs:?}").to_lowercase();
        let u = unclean(&scratch, &name, fs);
        let before = sha256(&u.image);
        for args in [
            &["status", "--format", "json", path_str(&u.image)][..],
            &["--keep", KEEP, "--dry-run", path_str(&u.image)],
        ] {
            let out = run_kernel_read(&scratch, args);
            assert_refused(&out, &u.image, fs, "a read-only mount does not replay it");
        }
        assert_eq!(sha256(&u.image), before, "{fs:?}");

        // Once replayed (mounted read-write and unmounted), the same filesystem reads as the
        // kernel replayed it.
        {
            let device = attach(&u.image, fs, true);
            let _mount = Mount::new(
                &device.path,
                &scratch.path(&format!("{name}-replay")),
                fs.fstype(),
                &fs.options("rw"),
            );
        }
        let out = run_kernel_read(
            &scratch,
            &["status", "--format", "json", path_str(&u.image)],
        );
        assert_eq!(
            settings(&out),
            on_directory(&scratch, &u.truth).0,
            "{fs:?}: the kernel read of the replayed image"
        );
    }
    assert!(scratch.processes().is_empty(), "{:?}", scratch.processes());
}

/// `--keep` on an unclean image (root): planned on the replayed read, written after the kernel
/// replays at the read-write mount: the diff shown is the one a directory holding the replayed
/// files gets, and the file written is the one that run writes.
fn the_write_lands_on_the_replayed_file(fs: Fs) {
    let _serial = serial();
    let scratch = Scratch::new();
    let u = unclean(&scratch, "root", fs);
    let img = path_str(&u.image);
    let expected_diff = on_directory(&scratch, &u.truth).1;
    let stale_diff = on_directory(&scratch, &u.stale).1;
    assert_ne!(expected_diff, stale_diff, "{fs:?}: the test cannot fail");
    let keep = scratch.run(&["--keep", KEEP, "--color", "never", path_str(&u.truth)]);
    assert_eq!(keep.code, Some(0), "{keep:?}");
    let expected = std::fs::read_to_string(u.truth.join(CLOUD_CFG)).unwrap();

    let out = scratch.run(&["--keep", KEEP, "--color", "never", img]);
    assert_eq!(out.code, Some(0), "{fs:?}: {out:?}");
    assert_eq!(out.stdout, expected_diff, "{fs:?}: the diff shown");

    let written = read_tree(scratch.dir.path(), &u.image, fs, "written", false);
    assert_eq!(
        std::fs::read_to_string(written.join(CLOUD_CFG)).unwrap(),
        expected,
        "{fs:?}: the file written"
    );
    assert_eq!(
        std::fs::read_to_string(written.join(DROPIN)).unwrap(),
        DROPIN_TEXT,
        "{fs:?}: the drop-in written before the crash"
    );
    let check = scratch.run(&["--keep", KEEP, "--check", img]);
    assert_eq!(check.code, Some(0), "{fs:?}: {check:?}");
    assert!(scratch.processes().is_empty(), "{:?}", scratch.processes());
}

#[test]
fn ext4_keep_writes_on_the_replayed_journal() {
    the_write_lands_on_the_replayed_file(Fs::Ext4);
}

#[test]
fn xfs_keep_writes_on_the_replayed_log() {
    the_write_lands_on_the_replayed_file(Fs::Xfs);
}

/// One name as read: what it is, its permission bits, and its owners (`None`: not known).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    what: What,
    mode: u32,
    owners: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum What {
    Dir(Vec<OsString>),
    /// The stated size and the bytes.
    File(u64, Vec<u8>),
    Link(PathBuf),
    Other,
}

/// Every name a user-space reader shows, by absolute path.
fn reader_view(fs: &dyn FsRead) -> BTreeMap<PathBuf, Node> {
    let mut view = BTreeMap::new();
    let counts = walk_all(fs, usize::MAX, 64, u64::MAX, &mut |path, seen| {
        let st = fs.lstat(path).unwrap().unwrap();
        let what = match seen {
            Seen::Dir(names) => What::Dir(names),
            Seen::File(size, bytes) => What::File(size, bytes),
            Seen::Link(target) => What::Link(target),
            Seen::Missing | Seen::Other => What::Other,
        };
        let owners = (st.uid != UNKNOWN_OWNER).then_some((st.uid, st.gid));
        view.insert(
            path.to_path_buf(),
            Node {
                what,
                mode: st.mode,
                owners,
            },
        );
    });
    assert_eq!(counts.errors, 0, "{counts:?}");
    view
}

/// Every name under the directory `root`, as [`reader_view`] shows a filesystem.
fn directory_view(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn visit(root: &Path, rel: &Path, view: &mut BTreeMap<PathBuf, Node>) {
        let path = root.join(rel);
        let md = std::fs::symlink_metadata(&path).unwrap();
        let what = if md.is_dir() {
            let mut names: Vec<OsString> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in &names {
                visit(root, &rel.join(name), view);
            }
            What::Dir(names)
        } else if md.is_symlink() {
            What::Link(std::fs::read_link(&path).unwrap())
        } else if md.is_file() {
            What::File(md.len(), std::fs::read(&path).unwrap())
        } else {
            What::Other
        };
        view.insert(
            Path::new("/").join(rel),
            Node {
                what,
                mode: md.mode() & 0o7777,
                owners: Some((md.uid(), md.gid())),
            },
        );
    }
    let mut view = BTreeMap::new();
    visit(root, Path::new(""), &mut view);
    view
}

/// The paths where two views differ.
fn differences(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<PathBuf> {
    let mut paths: Vec<&PathBuf> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| a.get(*p) != b.get(*p))
        .cloned()
        .collect()
}

/// After many transactions of every kind, every name the user-space reader shows is what the
/// kernel shows after its replay: kind, mode, owners (where the reader knows them), link target,
/// directory listing, size and bytes.
fn every_name_reads_as_replayed(fs: Fs) {
    let _serial = serial();
    let scratch = Scratch::new();
    let u = unclean_after(&scratch, "root", fs, Work::Churn);
    let kind = match fs {
        Fs::Xfs => FsKind::Xfs,
        _ => FsKind::Ext { version: 4 },
    };
    let source = Arc::new(FileSource::new(std::fs::File::open(&u.image).unwrap()).unwrap());
    let window = Window::new(source, ROOT_OFFSET, fs.test_fs().size()).unwrap();
    let reader = readers::reader_for(&kind, window).unwrap().unwrap();
    let mut seen = reader_view(&*reader);
    let mut truth = directory_view(&u.truth);
    let stale = directory_view(&u.stale);
    let stale_differs = differences(&stale, &truth).len();
    assert!(
        stale_differs > 100,
        "{fs:?}: the churn left too little to replay ({stale_differs})"
    );
    // The image's root directory is `truth` itself, made by the test: its mode and owners are
    // the copy's.
    for view in [&mut seen, &mut truth] {
        view.get_mut(Path::new("/")).unwrap().owners = None;
    }
    let mut unknown = 0;
    for (path, node) in &seen {
        if node.owners.is_none()
            && let Some(t) = truth.get_mut(path)
        {
            t.owners = None;
            unknown += 1;
        }
    }
    let wrong = differences(&seen, &truth);
    let show = |p: &PathBuf| {
        format!(
            "{}: {:?} / {:?}",
            p.display(),
            seen.get(p).map(brief),
            truth.get(p).map(brief)
        )
    };
    assert!(
        wrong.is_empty(),
        "{fs:?}: {} of {} names differ from the replayed truth: {:#?}",
        wrong.len(),
        truth.len(),
        wrong.iter().take(10).map(show).collect::<Vec<_>>()
    );
    eprintln!(
        "{fs:?}: {} names read as replayed ({stale_differs} differ from the stale state; owners unknown for {unknown})",
        truth.len()
    );
}

/// A node without its bytes, for messages.
fn brief(node: &Node) -> String {
    match &node.what {
        What::File(size, bytes) => format!(
            "file {size} ({} read) {:o} {:?}",
            bytes.len(),
            node.mode,
            node.owners
        ),
        other => format!("{other:?} {:o} {:?}", node.mode, node.owners),
    }
}

#[test]
fn ext4_every_name_reads_as_the_replayed_journal_leaves_it() {
    every_name_reads_as_replayed(Fs::Ext4);
}

#[test]
fn xfs_every_name_reads_as_the_replayed_log_leaves_it() {
    every_name_reads_as_replayed(Fs::Xfs);
}

/// `needs_recovery` over an empty journal (`s_start` 0), as a mount that ended before it wrote
/// anything leaves it (a crash, or a kill of a run, right after mounting): the kernel's replay
/// changes nothing, so the filesystem reads and writes as the clean one it is, for both journal
/// kinds (ext4-view cannot load the old one, and did not need to).
#[test]
fn ext4_needs_recovery_over_an_empty_journal_reads_as_clean() {
    let _serial = serial();
    let scratch = Scratch::new();
    for fs in [Fs::Ext4, Fs::Ext4OldJournal] {
        let name = format!("{fs:?}-flag").to_lowercase();
        let image = clean_image(scratch.dir.path(), &name, fs);
        let img = path_str(&image);
        let clean = scratch.run(&["status", "--format", "json", img]);
        assert_eq!(clean.code, Some(0), "{fs:?}: {clean:?}");
        {
            let device = attach(&image, fs, true);
            run(
                "debugfs",
                &["-w", "-R", "feature needs_recovery", &device.path],
            );
            let header = run("dumpe2fs", &["-h", &device.path]);
            assert!(
                header
                    .lines()
                    .any(|l| l.starts_with("Filesystem features:") && l.contains("needs_recovery"))
                    && header
                        .lines()
                        .any(|l| l.split_whitespace().collect::<Vec<_>>()
                            == ["Journal", "start:", "0"]),
                "{fs:?}: the premise: {header}"
            );
        }
        let before = sha256(&image);
        for out in [
            scratch.run_unprivileged(&["status", "--format", "json", img]),
            scratch.run(&["status", "--format", "json", img]),
            run_kernel_read(&scratch, &["status", "--format", "json", img]),
        ] {
            assert_eq!(out.code, Some(0), "{fs:?}: {out:?}");
            assert_eq!(settings(&out), settings(&clean), "{fs:?}");
        }
        assert_eq!(sha256(&image), before, "{fs:?}: a read changed the image");

        let out = scratch.run(&["--keep", KEEP, img]);
        assert_eq!(out.code, Some(0), "{fs:?}: {out:?}");
        let check = scratch.run(&["--keep", KEEP, "--check", img]);
        assert_eq!(check.code, Some(0), "{fs:?}: {check:?}");
        let device = attach(&image, fs, false);
        run("e2fsck", &["-fn", &device.path]);
    }
    assert!(scratch.processes().is_empty(), "{:?}", scratch.processes());
}
