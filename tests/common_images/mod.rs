//! Build real disk images with the real tools (sfdisk, mkfs.*, cryptsetup,
//! pvcreate, losetup, mount) for tests of the image code.
//!
//! These helpers need root (loop devices, mount) and the Debian packages
//! fdisk, e2fsprogs, xfsprogs, btrfs-progs, dosfstools, ntfs-3g,
//! cryptsetup-bin and lvm2. Every loop device and mount made here is owned
//! by a guard that undoes exactly it on drop, also when a test panics; we
//! never detach or unmount anything we did not create.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

pub const MIB: u64 = 1024 * 1024;

/// The Debian package that provides a command, for failure messages.
fn package_of(program: &str) -> &'static str {
    match program {
        "packer" => "packer",
        "qemu-img" => "qemu-utils",
        "sfdisk" => "fdisk",
        "mkfs.xfs" => "xfsprogs",
        "mkfs.btrfs" => "btrfs-progs",
        "mkfs.vfat" => "dosfstools",
        "mkfs.ntfs" => "ntfs-3g",
        "cryptsetup" => "cryptsetup-bin",
        "pvcreate" => "lvm2",
        "mke2fs" | "mkfs.ext4" => "e2fsprogs",
        "sha256sum" => "coreutils",
        _ => "util-linux",
    }
}

/// A tool that could not be started: say which Debian package provides it.
pub fn spawn_error(program: &str, e: std::io::Error) -> ! {
    panic!(
        "could not run `{program}` ({e}): these tests need root and `apt-get install -y {}` (.ci/run installs it)",
        package_of(program)
    )
}

/// Run a command with `stdin` as its input; panic with its stderr when it
/// fails. Returns its stdout.
pub fn run_with_input(program: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(program)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| spawn_error(program, e));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run(program: &str, args: &[&str]) -> String {
    run_with_input(program, args, "")
}

/// A sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    File::create(path).unwrap().set_len(size).unwrap();
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A loop device attached by a test; detached (exactly this one) on drop.
pub struct LoopDevice {
    pub path: String,
}

impl LoopDevice {
    /// `losetup -f --show [options] FILE`, retried a few times because
    /// tests running in parallel may race for the same free device.
    pub fn attach(file: &Path, options: &[&str]) -> LoopDevice {
        let mut last_error = String::new();
        for _ in 0..10 {
            let out = Command::new("losetup")
                .args(["-f", "--show"])
                .args(options)
                .arg(file)
                .output()
                .expect("could not run losetup (these tests need root and util-linux)");
            if out.status.success() {
                let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
                assert!(path.starts_with("/dev/loop"), "losetup said {path:?}");
                return LoopDevice { path };
            }
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
            sleep(Duration::from_millis(200));
        }
        panic!(
            "losetup {options:?} {} failed: {last_error}",
            file.display()
        );
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        for attempt in 0..20 {
            let status = Command::new("losetup").args(["-d", &self.path]).status();
            if matches!(status, Ok(s) if s.success()) {
                return;
            }
            sleep(Duration::from_millis(100 * (attempt + 1)));
        }
        eprintln!("warning: could not detach {}", self.path);
    }
}

/// A filesystem mounted by a test; unmounted (exactly this mount point) on
/// drop. Declare it after the [`LoopDevice`] it uses, so it drops first.
pub struct Mount {
    pub path: PathBuf,
}

impl Mount {
    pub fn new(device: &str, path: &Path, fstype: &str, options: &str) -> Mount {
        std::fs::create_dir_all(path).unwrap();
        run(
            "mount",
            &["-t", fstype, "-o", options, device, path_str(path)],
        );
        Mount {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for attempt in 0..20 {
            let status = Command::new("umount").arg(&self.path).status();
            if matches!(status, Ok(s) if s.success()) {
                return;
            }
            sleep(Duration::from_millis(100 * (attempt + 1)));
        }
        eprintln!("warning: could not unmount {}", self.path.display());
    }
}

/// Write a partition table described by an sfdisk script into `image`.
///
/// With `sector_size` 4096 the table is written through a loop device
/// with 4096-byte logical sectors, because sfdisk (util-linux 2.38) always
/// uses 512-byte sectors on a regular file: the `sector-size:` script
/// header is informative only.
pub fn partition(image: &Path, script: &str, sector_size: u64) {
    if sector_size == 512 {
        run_with_input("sfdisk", &["-q", path_str(image)], script);
        return;
    }
    let device = LoopDevice::attach(image, &["--sector-size", &sector_size.to_string()]);
    run_with_input(
        "sfdisk",
        &["-q", "--no-reread", "--no-tell-kernel", &device.path],
        script,
    );
    run("blockdev", &["--flushbufs", &device.path]);
}

/// Copy `fs_file` into `image` at byte `offset` without writing its
/// all-zero megabytes, so a sparse image stays sparse.
pub fn copy_into(image: &Path, offset: u64, fs_file: &Path) {
    let mut src = File::open(fs_file).unwrap();
    let mut dst = OpenOptions::new().write(true).open(image).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut position = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = src.read(&mut buf[filled..]).unwrap();
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(offset + position)).unwrap();
            dst.write_all(&buf[..filled]).unwrap();
        }
        position += filled as u64;
    }
    dst.sync_all().unwrap();
}

/// Overwrite bytes of a file in place.
pub fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

pub fn sha256(path: &Path) -> String {
    run("sha256sum", &[path_str(path)])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The filesystems and volumes the tests make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestFs {
    Ext2,
    Ext3,
    Ext4,
    Xfs,
    Btrfs,
    Swap,
    Fat12,
    Fat16,
    Fat32,
    Ntfs,
    Luks1,
    Luks2,
    Lvm2Pv,
}

impl TestFs {
    /// Sizes the tools accept (all files are sparse): mkfs.xfs 6.1 refuses
    /// less than 300 MiB, mkfs.btrfs 6.2 less than 114294784 bytes
    /// (109 MiB) without --mixed.
    pub fn size(self) -> u64 {
        match self {
            TestFs::Xfs => 300 * MIB,
            TestFs::Btrfs => 120 * MIB,
            TestFs::Fat32 => 64 * MIB,
            TestFs::Fat12 => 8 * MIB,
            _ => 32 * MIB,
        }
    }

    /// Make this filesystem in a new file `dir/NAME.fs` of [`Self::size`]
    /// bytes. Where the tool can, the filesystem contains a file `marker`
    /// whose content is "hello from NAME\n".
    pub fn make(self, dir: &Path) -> PathBuf {
        let name = format!("{self:?}").to_lowercase();
        let file = dir.join(format!("{name}.fs"));
        sparse_file(&file, self.size());
        let content = dir.join(format!("{name}-content"));
        std::fs::create_dir_all(&content).unwrap();
        let marker = content.join("marker");
        std::fs::write(&marker, format!("hello from {name}\n")).unwrap();
        let f = path_str(&file);
        match self {
            TestFs::Ext2 | TestFs::Ext3 | TestFs::Ext4 => {
                run(
                    "mke2fs",
                    &["-q", "-F", "-t", &name, "-d", path_str(&content), f],
                );
            }
            TestFs::Xfs => {
                let proto = dir.join("xfs.proto");
                std::fs::write(
                    &proto,
                    format!(
                        "dummy\n0 0\nd--755 0 0\nmarker ---644 0 0 {}\n$\n$\n",
                        marker.display()
                    ),
                )
                .unwrap();
                run("mkfs.xfs", &["-q", "-p", path_str(&proto), f]);
            }
            TestFs::Btrfs => {
                run("mkfs.btrfs", &["-q", "--rootdir", path_str(&content), f]);
            }
            TestFs::Swap => {
                run("mkswap", &[f]);
            }
            TestFs::Fat12 => {
                run("mkfs.vfat", &["-F", "12", f]);
            }
            TestFs::Fat16 => {
                run("mkfs.vfat", &["-F", "16", f]);
            }
            TestFs::Fat32 => {
                run("mkfs.vfat", &["-F", "32", f]);
            }
            TestFs::Ntfs => {
                run("mkfs.ntfs", &["-q", "-F", "-Q", f]);
            }
            TestFs::Luks1 | TestFs::Luks2 => {
                let key = dir.join(format!("{name}.key"));
                std::fs::write(&key, "not a secret").unwrap();
                let kind = if self == TestFs::Luks1 {
                    "luks1"
                } else {
                    "luks2"
                };
                // A cheap key derivation keeps the test fast.
                run(
                    "cryptsetup",
                    &[
                        "luksFormat",
                        "--batch-mode",
                        "--type",
                        kind,
                        "--pbkdf",
                        "pbkdf2",
                        "--pbkdf-force-iterations",
                        "1000",
                        "--key-file",
                        path_str(&key),
                        f,
                    ],
                );
            }
            TestFs::Lvm2Pv => {
                // pvcreate wants a block device: attach one and detach it
                // again right away. An empty devices file keeps LVM from
                // recording the device in the system's configuration.
                let device = LoopDevice::attach(&file, &[]);
                run(
                    "pvcreate",
                    &["-q", "-ff", "-y", "--devicesfile", "", &device.path],
                );
            }
        }
        file
    }
}

/// An ext4 filesystem of `size` bytes in a new sparse file `file`, holding
/// the directory `tree` (`mke2fs -d`).
pub fn ext4_from(tree: &Path, file: &Path, size: u64) {
    sparse_file(file, size);
    run(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-d",
            path_str(tree),
            path_str(file),
        ],
    );
}

/// A GPT image holding `fs` in partition 2, after a 1 MiB BIOS boot
/// partition 1: returns the image's path. Partition 2 starts at 2 MiB.
pub fn gpt_image_with(dir: &Path, fs: TestFs) -> PathBuf {
    let fs_file = fs.make(dir);
    let image = dir.join("disk.img");
    gpt_disk_around(&image, &fs_file);
    std::fs::remove_file(&fs_file).unwrap();
    image
}

/// Makes `image` a GPT disk whose partition 2 (from 2 MiB) holds the
/// filesystem in `fs_file`, after a 1 MiB BIOS boot partition 1, as the
/// usual cloud image has them.
pub fn gpt_disk_around(image: &Path, fs_file: &Path) {
    let size = std::fs::metadata(fs_file).unwrap().len();
    sparse_file(image, 3 * MIB + size);
    let sectors = size / 512;
    partition(
        image,
        &format!(
            "label: gpt\n\
             start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\"\n\
             start=4096, size={sectors}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n"
        ),
        512,
    );
    copy_into(image, 2 * MIB, fs_file);
}

// ---------------------------------------------------------------------------
// A test's scratch world: a TempDir, runs of the binary with TMPDIR inside
// it, and what a run may leave behind.

/// A test's directory, with TMPDIR for the binary inside it (its
/// mountpoints and raw views go there, so a test sees exactly its own).
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub tmp: PathBuf,
}

/// One finished run of the binary.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The run failed with exactly one line on stderr, `error: …`; returns it.
    pub fn one_error(&self) -> &str {
        assert_eq!(self.code, Some(1), "{self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        assert!(lines[0].starts_with("error: "), "{self:?}");
        lines[0]
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::TempDir::new().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        Scratch { dir, tmp }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary, with TMPDIR in this world, no test pause and no color.
    pub fn command(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("prepare-image").unwrap();
        c.env("TMPDIR", &self.tmp)
            .env_remove("PREPARE_IMAGE_PAUSE")
            .env("NO_COLOR", "1")
            .timeout(Duration::from_secs(120));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().unwrap();
        Output {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    /// Processes (other than this test) whose arguments name a path of this
    /// world: a qemu-storage-daemon a run started, say.
    pub fn processes(&self) -> Vec<String> {
        let ours = self.dir.path().display().to_string();
        let own = std::process::id().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own {
                    return None;
                }
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                cmdline
                    .contains(&ours)
                    .then(|| format!("process {pid}: {cmdline}"))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Runs as an unprivileged user: the read-only commands must work without
// root, loop devices or mounts.

/// The system user the rootless runs use; created on first use.
pub const UNPRIVILEGED: &str = "prepare-image-test";

fn ensure_unprivileged_user() {
    for _ in 0..50 {
        let exists = Command::new("id")
            .args(["-u", UNPRIVILEGED])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| spawn_error("id", e))
            .success();
        if exists {
            return;
        }
        // Exit 9: created meanwhile by a parallel test; 10: /etc/passwd locked by one.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(UNPRIVILEGED)
            .status()
            .unwrap_or_else(|e| spawn_error("useradd", e));
        sleep(Duration::from_millis(100));
    }
    panic!("could not create the user {UNPRIVILEGED} (useradd, package passwd)");
}

impl Scratch {
    /// Runs the binary as [`UNPRIVILEGED`] (a copy of it in this world, so
    /// the user can reach it wherever the build lives). The world's
    /// directories become readable to it; TMPDIR writable.
    pub fn run_unprivileged(&self, args: &[&str]) -> Output {
        use std::os::unix::fs::PermissionsExt;
        ensure_unprivileged_user();
        let binary = self.path("unprivileged-prepare-image");
        if !binary.exists() {
            std::fs::copy(assert_cmd::cargo::cargo_bin("prepare-image"), &binary).unwrap();
        }
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(&binary, 0o755);
        mode(self.dir.path(), 0o755);
        mode(&self.tmp, 0o1777);
        let run = || {
            Command::new("setpriv")
                .arg(format!("--reuid={UNPRIVILEGED}"))
                .arg(format!("--regid={UNPRIVILEGED}"))
                .args(["--clear-groups", "--"])
                .arg(&binary)
                .args(args)
                .env("TMPDIR", &self.tmp)
                .env_remove("PREPARE_IMAGE_PAUSE")
                .env("NO_COLOR", "1")
                .output()
                .unwrap_or_else(|e| spawn_error("setpriv", e))
        };
        let mut out = run();
        // Just after the copy, a child another test thread forked (before its
        // exec) may still hold the copy's write descriptor: ETXTBSY, briefly.
        for _ in 0..50 {
            let busy = out.status.code() == Some(126)
                && String::from_utf8_lossy(&out.stderr).contains("Text file busy");
            if !busy {
                break;
            }
            sleep(Duration::from_millis(20));
            out = run();
        }
        Output {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }
}
