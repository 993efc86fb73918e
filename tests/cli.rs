//! End-to-end tests of the `prepare-image` command: every flag, exit code, output stream and error.
//!
//! Each test builds its own image root in a fresh TempDir (on /tmp, which must be ext4 for the
//! `chattr +i` test). They run as root: chown, mknod, mount (tmpfs) and chattr need it. Mounts and
//! immutable attributes are undone by guards, also when a test panics.
//!
//! `patch` (GNU patch) must be installed: the dry-run output is checked by applying it.

use std::collections::BTreeMap;
use std::ffi::{CStr, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::thread;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

mod common_guards;
use common_guards::{Immutable, Tmpfs};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cloud-cfg");
const CLOUD_CFG: &str = "etc/cloud/cloud.cfg";
const BAK: &str = ".prepare-image.bak";
/// The cloud.cfg Tencent Cloud provides (resolv_conf, unverified_modules, no preserve_hostname).
const TENCENT: &str = "tencent-centos-rhel8.5.cfg";
/// Not YAML: a Jinja template.
const TEMPLATE: &str = "upstream-template-26.2.cfg";
const BUILT_INS: [&str; 8] = [
    "hostname",
    "hosts",
    "dns",
    "repos",
    "ntp",
    "passwords",
    "keys",
    "network",
];
/// The Windows profiles (profiles/windows/), as `profiles` lists them after the Linux ones:
/// the same eight names, then the Windows-only user-scripts.
fn windows_built_ins() -> Vec<&'static str> {
    BUILT_INS.iter().copied().chain(["user-scripts"]).collect()
}
/// A drop-in that decides preserve_hostname over cloud.cfg, so `--keep hostname` edits it.
const HOST_DROP_IN: &str = "etc/cloud/cloud.cfg.d/50_host.cfg";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests must run as root (chown, mknod, mount, chattr)"
    );
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(FIXTURES).join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()))
}

/// Every fixture that is a real cloud.cfg (all but the Jinja template), by name.
fn yaml_fixtures() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".cfg") && n != TEMPLATE)
        .collect();
    names.sort();
    assert!(names.len() >= 10, "fixtures missing: {names:?}");
    names
}

fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// An image root in its own TempDir.
struct Image {
    dir: TempDir,
}

impl Image {
    /// A root with an empty etc/cloud/.
    fn empty() -> Image {
        assert_root();
        let dir = TempDir::new().unwrap();
        fs::create_dir_all(dir.path().join("etc/cloud")).unwrap();
        Image { dir }
    }

    fn with_cfg(bytes: &[u8]) -> Image {
        let img = Image::empty();
        img.write(CLOUD_CFG, bytes);
        img
    }

    fn fixture(name: &str) -> Image {
        Image::with_cfg(&fixture(name))
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    fn snapshot(&self) -> Tree {
        snapshot(self.root())
    }

    /// An exact copy (`cp -a`: links stay links, modes and owners kept).
    fn copy(&self) -> Image {
        let dir = TempDir::new().unwrap();
        let status = StdCommand::new("cp")
            .arg("-a")
            .arg(format!("{}/.", self.root().display()))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "cp -a");
        Image { dir }
    }

    /// Runs the binary with `args` and this root as TARGET (last).
    fn run(&self, args: &[&str]) -> Out {
        run_with(cmd().args(args).arg(self.root()))
    }
}

fn cmd() -> Command {
    let mut c = Command::cargo_bin("prepare-image").unwrap();
    // The tests decide about color themselves; a NO_COLOR in the caller's environment must not leak in.
    c.env_remove("NO_COLOR");
    c.timeout(Duration::from_secs(60));
    c
}

/// A finished run.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stdout_bytes: Vec<u8>,
    stderr: String,
}

fn run_with(c: &mut Command) -> Out {
    let out = c.output().unwrap();
    Out {
        code: out
            .status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {:?}", out.status)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stdout_bytes: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(args: &[&str]) -> Out {
    run_with(cmd().args(args))
}

impl Out {
    #[track_caller]
    fn code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Exit 1, nothing on stdout, exactly one line on stderr, starting with `error:` and containing
    /// every needle.
    #[track_caller]
    fn one_error(&self, needles: &[&str]) -> &Self {
        self.code(1);
        assert_eq!(self.stdout, "", "stdout of a failed run");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one stderr line:\n{}", self.stderr);
        assert!(lines[0].starts_with("error: "), "{}", self.stderr);
        for n in needles {
            assert!(
                lines[0].contains(n),
                "error should contain {n:?}:\n{}",
                self.stderr
            );
        }
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout))
    }
}

/// What a file system entry looks like, for "nothing was written" checks: type, metadata including
/// mtime and ctime (nanoseconds), xattrs, and for regular files the whole content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    ino: u64,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

type Tree = BTreeMap<PathBuf, Entry>;

fn snapshot(root: &Path) -> Tree {
    fn walk(root: &Path, rel: &Path, tree: &mut Tree) {
        let path = root.join(rel);
        let md = fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_symlink() {
            "symlink"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char device"
        } else if ft.is_block_device() {
            "block device"
        } else {
            "other"
        };
        let xattrs = if ft.is_file() || ft.is_dir() {
            let mut v: Vec<_> = xattr::list(&path)
                .unwrap()
                .map(|n| {
                    let value = xattr::get(&path, &n).unwrap().unwrap_or_default();
                    (n, value)
                })
                .collect();
            v.sort();
            v
        } else {
            Vec::new()
        };
        tree.insert(
            rel.to_path_buf(),
            Entry {
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                ino: md.ino(),
                nlink: md.nlink(),
                mtime: (md.mtime(), md.mtime_nsec()),
                ctime: (md.ctime(), md.ctime_nsec()),
                content: ft.is_file().then(|| fs::read(&path).unwrap()),
                link: ft.is_symlink().then(|| fs::read_link(&path).unwrap()),
                xattrs,
            },
        );
        if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                walk(root, &rel.join(n), tree);
            }
        }
    }
    let mut tree = Tree::new();
    walk(root, Path::new(""), &mut tree);
    tree
}

#[track_caller]
fn assert_same_tree(before: &Tree, after: &Tree) {
    if before == after {
        return;
    }
    for (path, entry) in before {
        match after.get(path) {
            None => panic!("{} was removed", path.display()),
            Some(e) if e != entry => panic!(
                "{} changed:\nbefore {entry:?}\nafter  {e:?}",
                path.display()
            ),
            _ => {}
        }
    }
    let added: Vec<_> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    panic!("entries appeared: {added:?}");
}

/// Path -> bytes of every regular file, and path -> target of every symlink: what `patch` and the
/// real run must agree on (their metadata differ: different runs, different times).
fn contents(tree: &Tree) -> BTreeMap<PathBuf, (Option<Vec<u8>>, Option<PathBuf>)> {
    tree.iter()
        .filter(|(_, e)| e.kind != "dir")
        .map(|(p, e)| (p.clone(), (e.content.clone(), e.link.clone())))
        .collect()
}

/// Applies `diff` to `img` with `patch -p1 -d ROOT` plus `extra` flags; fails the test on any
/// rejected hunk.
#[track_caller]
fn apply_patch(img: &Image, diff: &[u8], extra: &[&str]) {
    let mut child = StdCommand::new("patch")
        .args(["-p1", "--batch", "--forward", "--no-backup-if-mismatch"])
        .args(extra)
        .arg("-d")
        .arg(img.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("GNU patch must be installed (apt-get install patch)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(diff).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "patch {extra:?} failed:\n{}{}\n--- the patch:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(diff)
    );
}

/// Checks that the dry-run diff of `args`, applied with `patch -p1` (plus `patch_flags`) to a copy of
/// `img`, gives exactly the tree the real run writes. Returns the diff.
#[track_caller]
fn assert_patch_reproduces_run(img: &Image, args: &[&str], patch_flags: &[&str]) -> Vec<u8> {
    let copy = img.copy();
    let before = img.snapshot();
    let mut dry: Vec<&str> = args.to_vec();
    dry.push("--dry-run");
    let diff = img.run(&dry);
    diff.code(0);
    assert_same_tree(&before, &img.snapshot());
    img.run(args).code(0);
    if diff.stdout_bytes.is_empty() {
        assert_eq!(
            contents(&img.snapshot()),
            contents(&before),
            "{args:?}: an empty dry run, but the real run changed files"
        );
    } else {
        apply_patch(&copy, &diff.stdout_bytes, patch_flags);
    }
    assert_eq!(
        contents(&copy.snapshot()),
        contents(&img.snapshot()),
        "{args:?} {patch_flags:?}: patched copy differs from the real run\n--- diff:\n{}",
        diff.stdout
    );
    diff.stdout_bytes
}

/// A pseudo-terminal: (master, slave). What the child writes to the slave is read from the master.
fn pty() -> (File, File) {
    // SAFETY: plain libc calls on a descriptor we own; ptsname_r writes at most `buf.len()` bytes.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt");
        let master_file = File::from_raw_fd(master);
        assert_eq!(libc::grantpt(master), 0, "grantpt");
        assert_eq!(libc::unlockpt(master), 0, "unlockpt");
        let mut buf = [0 as libc::c_char; 128];
        assert_eq!(
            libc::ptsname_r(master, buf.as_mut_ptr(), buf.len()),
            0,
            "ptsname_r"
        );
        let name = CStr::from_ptr(buf.as_ptr()).to_str().unwrap().to_string();
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&name)
            .unwrap();
        (master_file, slave)
    }
}

/// Runs with stdout on a terminal; returns (exit code, what reached the terminal).
fn run_on_tty(img: &Image, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let (mut master, slave) = pty();
    let mut c = StdCommand::new(assert_cmd::cargo::cargo_bin("prepare-image"));
    c.args(args)
        .arg(img.root())
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().unwrap();
    // The child holds the only slave descriptor now: once it exits, reading the master ends (EIO).
    drop(c);
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    });
    let out = child.wait_with_output().unwrap();
    let tty = reader.join().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&tty).into_owned(),
    )
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            assert_eq!(chars.next(), Some('['), "only CSI escapes expected");
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[track_caller]
fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("expected an object: {v}"));
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "keys of {v}");
}

fn lines_of(s: &str) -> Vec<&str> {
    s.lines().collect()
}

// ---------------------------------------------------------------------------------------------
// The main flow: keep, check, run again
// ---------------------------------------------------------------------------------------------

#[test]
fn keep_edits_once_and_the_second_run_has_nothing_to_do() {
    let img = Image::fixture(TENCENT);
    let root = img.root().display().to_string();
    let original = img.read(CLOUD_CFG);

    let before = img.snapshot();
    let check = img.run(&["--keep", "hostname,dns", "--check"]);
    check.code(3);
    // --check shows what is pending: the same diff as --dry-run.
    let dry = img.run(&["--keep", "hostname,dns", "--dry-run"]);
    assert!(!check.stdout.is_empty());
    assert_eq!(check.stdout, dry.stdout, "--check prints the pending diff");
    assert!(
        check
            .stderr
            .contains("check: 4 change(s) pending in etc/cloud/cloud.cfg"),
        "{}",
        check.stderr
    );
    assert!(
        check
            .stderr
            .contains("overwritten at first boot: hostname, dns"),
        "{}",
        check.stderr
    );
    assert_same_tree(&before, &img.snapshot());

    let first = img.run(&["--keep", "hostname,dns"]);
    first.code(0);
    // stdout is the diff and nothing else.
    assert!(
        first
            .stdout
            .starts_with("--- a/etc/cloud/cloud.cfg\n+++ b/etc/cloud/cloud.cfg\n@@ "),
        "{}",
        first.stdout
    );
    for line in first.stdout.lines() {
        assert!(
            line.starts_with("--- ")
                || line.starts_with("+++ ")
                || line.starts_with("@@ ")
                || line.starts_with([' ', '+', '-', '\\']),
            "not a diff line on stdout: {line:?}"
        );
    }
    assert!(first.stdout.contains("\n- - scripts-user\n"));
    assert!(first.stdout.contains("\n- - resolv_conf\n"));
    assert!(
        first
            .stdout
            .contains("\n-unverified_modules: ['resolv_conf']\n")
    );
    assert!(first.stdout.contains("\n+preserve_hostname: true\n"));
    // stderr: root, changes, warnings, summary.
    let err = lines_of(&first.stderr);
    assert_eq!(err[0], format!("prepare-image: root {root}"));
    assert!(first.stderr.contains(
        "  etc/cloud/cloud.cfg:51: [hostname] removed `scripts-user` from cloud_final_modules"
    ));
    assert!(first.stderr.contains(
        "  etc/cloud/cloud.cfg:36: [dns] removed `resolv_conf` from cloud_config_modules"
    ));
    let warnings: Vec<&&str> = err.iter().filter(|l| l.starts_with("warning: ")).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.ends_with("[scripts-user-removed]")),
        "{warnings:?}"
    );
    assert!(warnings.iter().all(|w| w.ends_with(']')), "{warnings:?}");
    assert_eq!(
        *err.last().unwrap(),
        format!("kept hostname, dns in {root}: 4 change(s) in etc/cloud/cloud.cfg")
    );
    let written = img.read(CLOUD_CFG);
    assert_ne!(written, original);
    let text = String::from_utf8(written.clone()).unwrap();
    assert!(text.contains("\npreserve_hostname: true\n"));
    assert!(!text.contains("scripts-user"));
    assert!(!text.contains("resolv_conf"));

    let after_first = img.snapshot();
    let second = img.run(&["--keep", "hostname,dns"]);
    second.code(0);
    assert_eq!(second.stdout, "", "nothing to do: no diff");
    assert!(
        second.stderr.contains(&format!(
            "hostname, dns: already kept in {root}; nothing to do"
        )),
        "{}",
        second.stderr
    );
    assert!(!second.stderr.contains("warning:"), "{}", second.stderr);
    assert_eq!(img.read(CLOUD_CFG), written);
    assert_same_tree(&after_first, &img.snapshot());

    let check = img.run(&["--keep", "hostname,dns", "--check"]);
    check.code(0);
    assert_eq!(check.stdout, "");
    assert!(check.stderr.contains("nothing to do"), "{}", check.stderr);
    assert_same_tree(&after_first, &img.snapshot());
}

#[test]
fn keep_all_selects_every_built_in() {
    let img = Image::fixture(TENCENT);
    img.run(&["--keep", "all"]).code(0);
    img.run(&["--keep", &BUILT_INS.join(","), "--check"])
        .code(0);
    for name in BUILT_INS {
        img.run(&["--keep", name, "--check"]).code(0);
    }
}

#[test]
fn check_never_writes_even_with_changes_pending() {
    let img = Image::fixture(TENCENT);
    let before = img.snapshot();
    for keep in ["all", "network", "repos,ntp"] {
        let out = img.run(&["--keep", keep, "--check"]);
        out.code(3);
        assert!(
            out.stdout.starts_with("--- a/etc/cloud/cloud.cfg\n"),
            "{}",
            out.stdout
        );
        assert!(out.stderr.contains("check: "), "{}", out.stderr);
    }
    assert_same_tree(&before, &img.snapshot());
}

// ---------------------------------------------------------------------------------------------
// --dry-run
// ---------------------------------------------------------------------------------------------

#[test]
fn check_is_decided_by_the_settings_not_by_a_tidy_up() {
    // The drop-in's list replaces cloud.cfg's, so scripts-user never runs and
    // hostname is kept; removing the dead entry from cloud.cfg only tidies up.
    let img = Image::with_cfg(b"cloud_final_modules:\n - scripts-user\n - final-message\n");
    img.write(
        "etc/cloud/cloud.cfg.d/90_x.cfg",
        b"preserve_hostname: true\ncloud_final_modules: [final-message]\n",
    );
    let before = img.snapshot();
    let out = img.run(&["--keep", "hostname", "--check"]);
    out.code(0);
    assert!(
        out.stderr.contains("hostname: already kept in")
            && out
                .stderr
                .contains("1 optional change(s) in etc/cloud/cloud.cfg would only tidy up"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("- - scripts-user"), "{}", out.stdout);
    assert_same_tree(&before, &img.snapshot());
    // A setting that is overwritten still gives 3.
    img.run(&["--keep", "hostname,ntp", "--check"]).code(0);
    img.write(
        "etc/cloud/cloud.cfg.d/90_x.cfg",
        b"cloud_final_modules: [final-message]\n",
    );
    img.run(&["--keep", "hostname", "--check"]).code(3);
}

#[test]
fn hostname_not_in_hosts_is_warned_only_while_update_etc_hosts_runs() {
    const WARNING: &str = "[hostname-not-in-hosts]";
    let without = Image::with_cfg(b"cloud_final_modules:\n - scripts-user\n");
    let out = without.run(&["--keep", "hostname"]);
    out.code(0);
    assert!(!out.stderr.contains(WARNING), "{}", out.stderr);
    // In a list that a drop-in replaces, it does not run either.
    let replaced = Image::with_cfg(b"cloud_init_modules: [update_etc_hosts]\n");
    replaced.write(
        "etc/cloud/cloud.cfg.d/90_x.cfg",
        b"cloud_init_modules: [bootcmd]\n",
    );
    let out = replaced.run(&["--keep", "hostname"]);
    out.code(0);
    assert!(!out.stderr.contains(WARNING), "{}", out.stderr);
    let with = Image::fixture(TENCENT);
    let out = with.copy().run(&["--keep", "hostname"]);
    out.code(0);
    assert!(out.stderr.contains(WARNING), "{}", out.stderr);
    let out = with.run(&["--keep", "hostname,hosts"]);
    out.code(0);
    assert!(!out.stderr.contains(WARNING), "{}", out.stderr);
}

#[test]
fn dry_run_and_n_change_nothing_and_exit_zero() {
    for flag in ["--dry-run", "-n"] {
        let img = Image::fixture(TENCENT);
        img.write(HOST_DROP_IN, b"preserve_hostname: false\n");
        let before = img.snapshot();
        let out = img.run(&["--keep", "all", flag]);
        out.code(0);
        assert!(
            out.stdout.starts_with("--- a/etc/cloud/cloud.cfg\n"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains(
                "--- a/etc/cloud/cloud.cfg.d/50_host.cfg\n+++ b/etc/cloud/cloud.cfg.d/50_host.cfg\n"
            ),
            "{}",
            out.stdout
        );
        let last = out.stderr.lines().last().unwrap();
        assert!(
            last.starts_with("dry run: ") && last.ends_with("; nothing written"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("warning: "), "{}", out.stderr);
        assert_same_tree(&before, &img.snapshot());
        // Still pending: the dry run wrote nothing.
        img.run(&["--keep", "all", "--check"]).code(3);
    }
}

#[test]
fn dry_run_with_nothing_to_do_exits_zero() {
    let img = Image::fixture(TENCENT);
    img.run(&["--keep", "ntp"]).code(0);
    let before = img.snapshot();
    let out = img.run(&["--keep", "ntp", "-n"]);
    out.code(0);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("nothing to do"), "{}", out.stderr);
    assert_same_tree(&before, &img.snapshot());
}

#[test]
fn dry_run_patch_reproduces_the_real_run_for_every_fixture() {
    for name in yaml_fixtures() {
        for keep in ["all", "hostname,dns", "hosts", "network"] {
            let img = Image::fixture(&name);
            let diff = assert_patch_reproduces_run(&img, &["--keep", keep], &[]);
            if keep == "all" {
                assert!(!diff.is_empty(), "{name}: --keep all changed nothing");
            }
        }
    }
}

#[test]
fn dry_run_patch_reproduces_the_real_run_across_drop_ins() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "tencent-alinux-48aa7c6.cfg",
            &[("99_qcloud.cfg", "d/tencent-alinux-48aa7c6-99_qcloud.cfg")],
        ),
        (
            "ubuntu-26.04-subiquity.cfg",
            &[
                (
                    "00-subiquity-disable-cloudinit-networking.cfg",
                    "d/ubuntu-26.04-subiquity-00-subiquity-disable-cloudinit-networking.cfg",
                ),
                (
                    "99-installer.cfg",
                    "d/ubuntu-26.04-subiquity-99-installer.cfg",
                ),
                (
                    "curtin-preserve-sources.cfg",
                    "d/ubuntu-26.04-subiquity-curtin-preserve-sources.cfg",
                ),
            ],
        ),
        (
            "debian-bookworm-22.4.2-1+deb12u4.cfg",
            &[(
                "05_logging.cfg",
                "d/debian-bookworm-22.4.2-1+deb12u4-05_logging.cfg",
            )],
        ),
        (
            "ubuntu-20.04-ami-20210816.cfg",
            &[("90_dpkg.cfg", "d/ubuntu-20.04-ami-20210816-90_dpkg.cfg")],
        ),
    ];
    for (base, drop_ins) in cases {
        let img = Image::fixture(base);
        for (name, source) in *drop_ins {
            img.write(&format!("etc/cloud/cloud.cfg.d/{name}"), &fixture(source));
        }
        // A drop-in that decides a value, so the patch touches two files.
        img.write(HOST_DROP_IN, b"# decided here\npreserve_hostname: false\n");
        let diff = assert_patch_reproduces_run(&img, &["--keep", "all"], &[]);
        let diff = String::from_utf8(diff).unwrap();
        assert!(
            diff.contains("+++ b/etc/cloud/cloud.cfg.d/50_host.cfg\n"),
            "{base}: {diff}"
        );
    }
}

#[test]
fn dry_run_patch_applies_for_drop_ins_with_spaces_and_quotes_in_their_names() {
    // GNU patch ends an unquoted name at a space unless a tab follows it, and
    // reads a name in double quotes C-style: the headers must say it so.
    for (name, header) in [
        (
            "50 my host.cfg",
            "+++ b/etc/cloud/cloud.cfg.d/50 my host.cfg\t\n",
        ),
        (
            "50 h\u{f6}st.cfg",
            "+++ b/etc/cloud/cloud.cfg.d/50 h\u{f6}st.cfg\t\n",
        ),
        (
            "50_\"q\"\\x\ty.cfg",
            "+++ \"b/etc/cloud/cloud.cfg.d/50_\\\"q\\\"\\\\x\\ty.cfg\"\n",
        ),
    ] {
        let img = Image::fixture(TENCENT);
        img.write(
            &format!("etc/cloud/cloud.cfg.d/{name}"),
            b"preserve_hostname: false\n",
        );
        let diff = assert_patch_reproduces_run(&img, &["--keep", "hostname"], &[]);
        let diff = String::from_utf8(diff).unwrap();
        assert!(diff.contains(header), "{name:?}: {diff}");
    }
}

#[test]
fn dry_run_patch_reproduces_the_real_run_for_crlf_files() {
    // GNU patch (2.7.6 here) applies this diff with or without --binary: the a/ b/ header lines end
    // in LF, so patch does not switch to stripping CRs, and the body lines carry their CRs.
    for flags in [&[][..], &["--binary"][..]] {
        let img = Image::with_cfg(&crlf(&fixture(TENCENT)));
        img.write(HOST_DROP_IN, &crlf(b"preserve_hostname: false\n"));
        let diff = assert_patch_reproduces_run(&img, &["--keep", "all"], flags);
        let diff = String::from_utf8(diff).unwrap();
        assert!(diff.contains(" - migrator\r\n"), "{diff}");
        // The real run keeps CRLF on every line, the added ones too.
        let written = img.read(CLOUD_CFG);
        assert!(
            written
                .iter()
                .enumerate()
                .all(|(i, &b)| b != b'\n' || (i > 0 && written[i - 1] == b'\r')),
            "a bare LF in the rewritten CRLF file:\n{}",
            String::from_utf8_lossy(&written)
        );
        assert!(
            String::from_utf8_lossy(&written).contains("\r\nnetwork: {config: disabled}\r\n"),
            "{}",
            String::from_utf8_lossy(&written)
        );
    }
}

#[test]
fn dry_run_patch_reproduces_the_real_run_without_a_final_newline() {
    let mut bytes = fixture(TENCENT);
    assert_eq!(bytes.pop(), Some(b'\n'));
    for keep in ["hostname", "all", "ntp"] {
        let img = Image::with_cfg(&bytes);
        let diff = assert_patch_reproduces_run(&img, &["--keep", keep], &[]);
        let diff = String::from_utf8(diff).unwrap();
        if keep != "ntp" {
            // The last line changes (a key is appended after it).
            assert!(
                diff.contains("\n\\ No newline at end of file\n"),
                "{keep}: {diff}"
            );
        }
    }
    // Every fixture, cut before its final newline.
    for name in yaml_fixtures() {
        let mut bytes = fixture(&name);
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        let img = Image::with_cfg(&bytes);
        assert_patch_reproduces_run(&img, &["--keep", "all"], &[]);
    }
}

// ---------------------------------------------------------------------------------------------
// Usage errors: exit 2
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_profile_is_a_usage_error_that_suggests_the_name() {
    let img = Image::fixture(TENCENT);
    let before = img.snapshot();
    let out = img.run(&["--keep", "hostnme"]);
    out.code(2);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr
            .starts_with("error: unknown profile `hostnme` in --keep"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `hostname`?"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("valid: hostname, hosts, dns, repos, ntp, passwords, keys, network, all"),
        "{}",
        out.stderr
    );
    // One bad name in a list fails the whole run.
    img.run(&["--keep", "dns,hostnme", "--dry-run"]).code(2);
    let out = img.run(&["--keep", ""]);
    out.code(2);
    assert!(out.stderr.contains("valid: "), "{}", out.stderr);
    assert_same_tree(&before, &img.snapshot());
}

#[test]
fn missing_keep_is_a_usage_error() {
    let img = Image::fixture(TENCENT);
    let before = img.snapshot();
    let out = img.run(&[]);
    out.code(2);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("--keep <LIST>"), "{}", out.stderr);
    img.run(&["--dry-run"]).code(2);
    assert_same_tree(&before, &img.snapshot());
}

#[test]
fn conflicting_or_invalid_flags_are_usage_errors() {
    let img = Image::fixture(TENCENT);
    let before = img.snapshot();
    let cases: &[&[&str]] = &[
        &["--keep", "hostname", "--dry-run", "--check"],
        &["--keep", "hostname", "-n", "--check"],
        &["--keep", "hostname", "--backup", "--dry-run"],
        &["--keep", "hostname", "--backup", "--check"],
        &["--keep", "hostname", "--format", "yaml"],
        &["--keep", "hostname", "--color", "sometimes"],
        &["--keep", "hostname", "--frobnicate"],
        &["--keep"],
    ];
    for args in cases {
        let out = img.run(args);
        out.code(2);
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(
            out.stderr.starts_with("error: "),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = img.run(&["--keep", "hostname", "--dry-run", "--check"]);
    assert!(
        out.stderr
            .contains("the argument '--dry-run' cannot be used with '--check'"),
        "{}",
        out.stderr
    );
    // The subcommands take no --keep.
    run_with(cmd().args(["status", "--keep", "hostname"]).arg(img.root())).code(2);
    run(&["profiles", "--keep", "hostname"]).code(2);
    assert_same_tree(&before, &img.snapshot());
}

// ---------------------------------------------------------------------------------------------
// --format json
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_setting_state(v: &Value) {
    assert_keys(v, &["state", "reasons"]);
    assert!(
        matches!(v["state"].as_str(), Some("kept" | "overwritten")),
        "{v}"
    );
    for r in v["reasons"].as_array().unwrap() {
        assert_keys(r, &["file", "line", "text", "overwrites"]);
        assert!(r["file"].is_string() || r["file"].is_null(), "{r}");
        assert!(r["line"].is_u64() || r["line"].is_null(), "{r}");
        assert!(r["text"].is_string() && r["overwrites"].is_boolean(), "{r}");
    }
}

#[test]
fn json_report_has_the_documented_keys() {
    let img = Image::fixture(TENCENT);
    img.write(HOST_DROP_IN, b"preserve_hostname: false\n");
    let root = img.root().display().to_string();
    let before = img.snapshot();

    let out = img.run(&["--keep", "hostname,dns", "--format", "json", "--dry-run"]);
    out.code(0);
    assert_same_tree(&before, &img.snapshot());
    let doc = out.json();
    assert_keys(
        &doc,
        &[
            "version", "root", "image", "mode", "keep", "result", "files", "changes", "warnings",
            "settings",
        ],
    );
    // A directory target has no image details.
    assert_eq!(doc["image"], serde_json::Value::Null);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["root"], root.as_str());
    assert_eq!(doc["mode"], "dry-run");
    assert_eq!(doc["keep"], serde_json::json!(["hostname", "dns"]));
    assert_eq!(doc["result"], "would-change");

    let files = doc["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["etc/cloud/cloud.cfg", "etc/cloud/cloud.cfg.d/50_host.cfg"]
    );
    for f in files {
        assert_keys(f, &["path", "changed", "diff", "backup", "backup_created"]);
        assert_eq!(f["changed"], true, "{f}");
        assert!(f["backup"].is_null(), "{f}");
        assert!(f["backup_created"].is_null(), "{f}");
        let path = f["path"].as_str().unwrap();
        assert!(
            f["diff"]
                .as_str()
                .unwrap()
                .starts_with(&format!("--- a/{path}\n+++ b/{path}\n@@ ")),
            "{f}"
        );
    }

    let changes = doc["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 4, "{changes:?}");
    for c in changes {
        assert_keys(c, &["profile", "profiles", "file", "line", "what"]);
        let profile = c["profile"].as_str().unwrap();
        assert!(["hostname", "dns"].contains(&profile), "{c}");
        assert_eq!(c["profiles"][0], profile, "{c}");
        assert!(paths.contains(&c["file"].as_str().unwrap()), "{c}");
        assert!(c["line"].as_u64().unwrap() >= 1, "{c}");
        assert!(!c["what"].as_str().unwrap().is_empty(), "{c}");
    }
    assert!(
        changes
            .iter()
            .any(|c| c["file"] == "etc/cloud/cloud.cfg.d/50_host.cfg"
                && c["line"] == 1
                && c["profile"] == "hostname")
    );

    let warnings = doc["warnings"].as_array().unwrap();
    assert!(!warnings.is_empty());
    for w in warnings {
        assert_keys(w, &["id", "text"]);
        assert!(
            out.stderr.contains(&format!(
                "warning: {} [{}]",
                w["text"].as_str().unwrap(),
                w["id"].as_str().unwrap()
            )),
            "JSON warnings are also on stderr: {}",
            out.stderr
        );
    }
    assert!(warnings.iter().any(|w| w["id"] == "scripts-user-removed"));

    let settings = doc["settings"].as_array().unwrap();
    let names: Vec<&str> = settings
        .iter()
        .map(|s| s["setting"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hostname", "dns"]);
    for s in settings {
        assert_keys(s, &["setting", "before", "after"]);
        assert_setting_state(&s["before"]);
        assert_setting_state(&s["after"]);
        assert_eq!(s["before"]["state"], "overwritten", "{s}");
        assert_eq!(s["after"]["state"], "kept", "{s}");
    }

    // --check: exit 3, mode check, result pending.
    let out = img.run(&["--keep", "hostname,dns", "--format", "json", "--check"]);
    out.code(3);
    let doc = out.json();
    assert_eq!(
        (doc["mode"].as_str(), doc["result"].as_str()),
        (Some("check"), Some("pending"))
    );
    assert_same_tree(&before, &img.snapshot());

    // A real run with --backup names the backups.
    let out = img.run(&["--keep", "hostname,dns", "--format", "json", "--backup"]);
    out.code(0);
    let doc = out.json();
    assert_eq!(
        (doc["mode"].as_str(), doc["result"].as_str()),
        (Some("apply"), Some("changed"))
    );
    for f in doc["files"].as_array().unwrap() {
        let path = f["path"].as_str().unwrap();
        assert_eq!(f["backup"], format!("{path}{BAK}"), "{f}");
        assert_eq!(f["backup_created"], true, "{f}");
        assert!(img.path(&format!("{path}{BAK}")).is_file());
    }
    // Another run changes cloud.cfg again: its backup is named, but was made before.
    let copy = img.copy();
    let out = copy.run(&["--keep", "ntp", "--format", "json", "--backup"]);
    out.code(0);
    let doc = out.json();
    let cloud_cfg = &doc["files"][0];
    assert_eq!(cloud_cfg["path"], CLOUD_CFG);
    assert_eq!(cloud_cfg["backup"], format!("{CLOUD_CFG}{BAK}"));
    assert_eq!(cloud_cfg["backup_created"], false, "{cloud_cfg}");

    // Nothing left to do.
    let out = img.run(&["--keep", "hostname,dns", "--format", "json"]);
    out.code(0);
    let doc = out.json();
    assert_eq!(
        (doc["mode"].as_str(), doc["result"].as_str()),
        (Some("apply"), Some("unchanged"))
    );
    assert!(doc["changes"].as_array().unwrap().is_empty());
    assert!(
        doc["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["changed"] == false && f["diff"] == "" && f["backup"].is_null())
    );
    assert!(
        doc["settings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["before"]["state"] == "kept" && s["after"]["state"] == "kept")
    );
}

#[test]
fn status_json_has_the_documented_keys() {
    let img = Image::fixture(TENCENT);
    let before = img.snapshot();
    let out = run_with(cmd().args(["status", "--format", "json"]).arg(img.root()));
    out.code(0);
    assert_eq!(out.stderr, "");
    let doc = out.json();
    assert_keys(
        &doc,
        &["version", "root", "image", "settings", "ignored_files"],
    );
    assert_eq!(doc["image"], serde_json::Value::Null);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["root"], img.root().display().to_string().as_str());
    let settings = doc["settings"].as_array().unwrap();
    let names: Vec<&str> = settings
        .iter()
        .map(|s| s["setting"].as_str().unwrap())
        .collect();
    assert_eq!(names, BUILT_INS);
    for s in settings {
        assert_keys(s, &["setting", "state", "reasons"]);
        assert_eq!(s["state"], "overwritten", "{s}");
        let mut state = s.clone();
        state.as_object_mut().unwrap().remove("setting");
        assert_setting_state(&state);
    }
    let dns = &settings[2]["reasons"];
    assert_eq!(dns[0]["file"], "etc/cloud/cloud.cfg");
    assert_eq!(dns[0]["line"], 36);
    assert_eq!(dns[0]["overwrites"], true);
    assert_same_tree(&before, &img.snapshot());

    // --format is global: it may come after the subcommand's TARGET too.
    let out = run_with(
        cmd()
            .arg("status")
            .arg(img.root())
            .args(["--format", "json"]),
    );
    out.code(0);
    out.json();
}

#[test]
fn profiles_json_lists_the_built_ins() {
    let out = run(&["profiles", "--format", "json"]);
    out.code(0);
    let doc = out.json();
    assert_keys(&doc, &["version", "profiles"]);
    let profiles = doc["profiles"].as_array().unwrap();
    let names = |guest: &str| -> Vec<&str> {
        profiles
            .iter()
            .filter(|p| p["guest"] == guest)
            .map(|p| p["name"].as_str().unwrap())
            .collect()
    };
    assert_eq!(names("linux"), BUILT_INS);
    assert_eq!(names("windows"), windows_built_ins());
    assert_eq!(profiles.len(), BUILT_INS.len() + windows_built_ins().len());
    for p in &profiles[BUILT_INS.len()..] {
        assert_keys(
            p,
            &[
                "name",
                "summary",
                "source",
                "guest",
                "edits",
                "warnings",
                "not_applicable",
                "in_all",
            ],
        );
        // Either it drops plugins, or it says why it does not apply.
        assert_ne!(
            p["edits"].as_array().unwrap().is_empty(),
            p["not_applicable"].is_null(),
            "{p}"
        );
        assert_eq!(p["in_all"], p["name"] != "user-scripts", "{p}");
    }
    for p in &profiles[..BUILT_INS.len()] {
        assert_keys(
            p,
            &["name", "summary", "source", "guest", "edits", "warnings"],
        );
        assert_eq!(p["source"], "built-in");
        assert!(!p["edits"].as_array().unwrap().is_empty(), "{p}");
    }
}

// ---------------------------------------------------------------------------------------------
// --color
// ---------------------------------------------------------------------------------------------

#[test]
fn color_always_paints_the_diff_and_never_does_not() {
    let img = Image::fixture(TENCENT);
    let always = img.run(&["--keep", "hostname", "--dry-run", "--color", "always"]);
    always.code(0);
    assert!(always.stdout.contains("\x1b["), "{:?}", always.stdout);
    assert!(always.stderr.contains("\x1b["), "warning: is colored too");
    let never = img.run(&["--keep", "hostname", "--dry-run", "--color", "never"]);
    never.code(0);
    assert!(!never.stdout.contains('\x1b') && !never.stderr.contains('\x1b'));
    // Color only wraps lines: without the escapes it is the same diff.
    assert_eq!(strip_ansi(&always.stdout), never.stdout);
    // --color always wins over NO_COLOR.
    let out = run_with(
        cmd()
            .args(["--keep", "hostname", "--dry-run", "--color", "always"])
            .arg(img.root())
            .env("NO_COLOR", "1"),
    );
    assert!(out.stdout.contains("\x1b["));
}

#[test]
fn color_auto_is_plain_when_piped_and_with_no_color() {
    let img = Image::fixture(TENCENT);
    for (no_color, args) in [
        (
            None,
            &["--keep", "hostname", "--dry-run", "--color", "auto"][..],
        ),
        (None, &["--keep", "hostname", "--dry-run"][..]),
        (
            Some("1"),
            &["--keep", "hostname", "--dry-run", "--color", "auto"][..],
        ),
    ] {
        let mut c = cmd();
        c.args(args).arg(img.root());
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = run_with(&mut c);
        out.code(0);
        assert!(!out.stdout.is_empty());
        assert!(!out.stdout.contains('\x1b'), "{args:?}: {:?}", out.stdout);
        assert!(!out.stderr.contains('\x1b'), "{args:?}: {:?}", out.stderr);
    }
}

#[test]
fn color_auto_on_a_terminal_honours_no_color() {
    let img = Image::fixture(TENCENT);
    let args = ["--keep", "hostname", "--dry-run", "--color", "auto"];
    let (code, tty) = run_on_tty(&img, &args, &[]);
    assert_eq!(code, 0);
    assert!(tty.contains("\x1b["), "a terminal gets color: {tty:?}");
    assert!(tty.contains("preserve_hostname: true"), "{tty:?}");
    let (code, tty) = run_on_tty(&img, &args, &[("NO_COLOR", "1")]);
    assert_eq!(code, 0);
    assert!(tty.contains("preserve_hostname: true"), "{tty:?}");
    assert!(!tty.contains('\x1b'), "NO_COLOR=1: {tty:?}");
    // https://no-color.org: an empty NO_COLOR does not count.
    let (_, tty) = run_on_tty(&img, &args, &[("NO_COLOR", "")]);
    assert!(tty.contains("\x1b["), "{tty:?}");
    let (_, tty) = run_on_tty(
        &img,
        &["--keep", "hostname", "--dry-run", "--color", "never"],
        &[],
    );
    assert!(!tty.contains('\x1b'), "{tty:?}");
}

// ---------------------------------------------------------------------------------------------
// --backup
// ---------------------------------------------------------------------------------------------

#[test]
fn backup_keeps_the_oldest_original_and_is_never_read_as_a_drop_in() {
    let img = Image::fixture(TENCENT);
    img.write(HOST_DROP_IN, b"preserve_hostname: false\n");
    let original = img.read(CLOUD_CFG);
    let original_drop_in = img.read(HOST_DROP_IN);

    let out = img.run(&["--keep", "hostname", "--backup"]);
    out.code(0);
    assert!(
        out.stderr
            .contains("  backup: etc/cloud/cloud.cfg.prepare-image.bak\n"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("  backup: etc/cloud/cloud.cfg.d/50_host.cfg.prepare-image.bak\n"),
        "{}",
        out.stderr
    );
    let bak = format!("{CLOUD_CFG}{BAK}");
    let drop_in_bak = format!("{HOST_DROP_IN}{BAK}");
    assert_eq!(img.read(&bak), original);
    assert_eq!(img.read(&drop_in_bak), original_drop_in);
    assert!(!drop_in_bak.ends_with(".cfg"), "cloud-init reads *.cfg");
    assert_ne!(img.read(CLOUD_CFG), original);
    assert_eq!(img.read(HOST_DROP_IN), b"preserve_hostname: true\n");
    // The drop-in's backup says preserve_hostname: false and sorts after 50_host.cfg: were it read,
    // hostname would be overwritten again.
    img.run(&["--keep", "hostname", "--check"]).code(0);

    // A second run with other profiles changes cloud.cfg again; the backup keeps the first original.
    let out = img.run(&["--keep", "dns", "--backup"]);
    out.code(0);
    assert!(
        out.stderr.contains(
            "  etc/cloud/cloud.cfg.prepare-image.bak already exists: left alone (it holds an older original)"
        ),
        "{}",
        out.stderr
    );
    assert!(!img.read(CLOUD_CFG).windows(11).any(|w| w == b"resolv_conf"));
    assert_eq!(img.read(&bak), original);
    assert_eq!(img.read(&drop_in_bak), original_drop_in);

    // Without --backup no backup is made.
    let plain = Image::fixture(TENCENT);
    plain.run(&["--keep", "hostname"]).code(0);
    assert!(!plain.path(&bak).exists());
}

// ---------------------------------------------------------------------------------------------
// --profile-file
// ---------------------------------------------------------------------------------------------

fn profile_file(text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("mine.yaml");
    fs::write(&path, text).unwrap();
    (dir, path)
}

const MINE: &str = "\
name: mine
summary: Keep the disk size the image was built with.
edits:
  - remove_module: growpart
    warnings:
      - id: no-growpart
        text: the root partition is not grown to the disk size.
";

#[test]
fn profile_file_adds_a_user_profile() {
    let (_dir, file) = profile_file(MINE);
    let file_arg = file.to_str().unwrap();
    let img = Image::fixture(TENCENT);

    let out = img.run(&["--profile-file", file_arg, "--keep", "mine", "--dry-run"]);
    out.code(0);
    assert!(out.stdout.contains("\n- - growpart\n"), "{}", out.stdout);
    assert_eq!(
        out.stdout.lines().filter(|l| l.starts_with("- ")).count(),
        1,
        "only growpart goes: {}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("warning: the root partition is not grown to the disk size. [no-growpart]"),
        "{}",
        out.stderr
    );

    let out = img.run(&["--profile-file", file_arg, "--keep", "mine,ntp"]);
    out.code(0);
    let text = String::from_utf8(img.read(CLOUD_CFG)).unwrap();
    assert!(
        !text.contains("growpart") && !text.contains(" - ntp\n"),
        "{text}"
    );
    img.run(&["--profile-file", file_arg, "--keep", "mine", "--check"])
        .code(0);

    // Without the file the name is unknown; with it, the suggestion and valid list include it.
    img.run(&["--keep", "mine"]).code(2);
    let out = img.run(&["--profile-file", file_arg, "--keep", "mien"]);
    out.code(2);
    assert!(
        out.stderr.contains("did you mean `mine`?"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("network, mine, all"), "{}", out.stderr);

    let out = run_with(cmd().args(["profiles", "--profile-file", file_arg]));
    out.code(0);
    assert!(
        out.stdout.contains(&format!(
            "mine: Keep the disk size the image was built with. (from {file_arg})\n  guest: Linux (cloud-init)\n  edit: remove module growpart from every module list\n"
        )),
        "{}",
        out.stdout
    );
}

#[test]
fn profile_file_with_a_typo_names_the_file_and_line() {
    let (_dir, file) = profile_file(&MINE.replace("remove_module", "remove_modul"));
    let file_arg = file.to_str().unwrap();
    let img = Image::fixture(TENCENT);
    let before = img.snapshot();
    img.run(&["--profile-file", file_arg, "--keep", "mine"])
        .one_error(&[
            &format!("profile file {file_arg}: line 4:"),
            "`remove_modul`",
        ]);
    // Any command that loads the catalogue fails the same way.
    run(&["profiles", "--profile-file", file_arg]).one_error(&[file_arg, "line 4"]);
    // Broken YAML in the profile file.
    let (_d, broken) = profile_file("name: mine\nsummary: [x\n");
    img.run(&["--profile-file", broken.to_str().unwrap(), "--keep", "mine"])
        .one_error(&[broken.to_str().unwrap(), "line "]);
    // A missing profile file.
    img.run(&["--profile-file", "/nonexistent/mine.yaml", "--keep", "ntp"])
        .one_error(&["/nonexistent/mine.yaml"]);
    assert_same_tree(&before, &img.snapshot());
}

#[test]
fn profile_file_may_not_reuse_a_built_in_name() {
    let img = Image::fixture(TENCENT);
    let before = img.snapshot();
    let (_dir, file) = profile_file(&MINE.replace("name: mine", "name: ntp"));
    let file_arg = file.to_str().unwrap();
    img.run(&["--profile-file", file_arg, "--keep", "ntp"])
        .one_error(&[file_arg, "`ntp` already exists"]);
    let (_dir, file) = profile_file(&MINE.replace("name: mine", "name: all"));
    img.run(&["--profile-file", file.to_str().unwrap(), "--keep", "all"])
        .one_error(&["`all` is reserved"]);
    // The same file twice is two profiles with one name.
    let (_dir, file) = profile_file(MINE);
    let file_arg = file.to_str().unwrap();
    img.run(&[
        "--profile-file",
        file_arg,
        "--profile-file",
        file_arg,
        "--keep",
        "mine",
    ])
    .one_error(&["`mine` already exists"]);
    assert_same_tree(&before, &img.snapshot());
}

// ---------------------------------------------------------------------------------------------
// Broken pipe
// ---------------------------------------------------------------------------------------------

/// Runs with stdout on a pipe whose read end is closed before the child starts: every write fails
/// with EPIPE (Rust ignores SIGPIPE). Returns (exit code, stderr).
fn run_into_closed_pipe(args: &[&OsStr]) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = StdCommand::new(assert_cmd::cargo::cargo_bin("prepare-image"))
        .args(args)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {:?}", out.status)),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn broken_pipe_exits_zero_without_a_message() {
    let img = Image::fixture("openimgcloud-alpine-2025.cfg");
    let root = img.root().as_os_str();
    let o = OsStr::new;
    let cases: Vec<Vec<&OsStr>> = vec![
        vec![o("profiles")],
        vec![o("profiles"), o("--format"), o("json")],
        vec![o("status"), root],
        vec![o("status"), o("--format"), o("json"), root],
        vec![o("--keep"), o("all"), o("--dry-run"), root],
        vec![
            o("--keep"),
            o("all"),
            o("--dry-run"),
            o("--color"),
            o("always"),
            root,
        ],
        vec![
            o("--keep"),
            o("all"),
            o("--dry-run"),
            o("--format"),
            o("json"),
            root,
        ],
    ];
    let before = img.snapshot();
    for args in &cases {
        let (code, stderr) = run_into_closed_pipe(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            !stderr.lines().any(|l| l.starts_with("error")),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.to_lowercase().contains("broken pipe"),
            "{args:?}: {stderr}"
        );
    }
    assert_same_tree(&before, &img.snapshot());
    // A real run writes the files before it reports, so a closed stdout still leaves a finished job.
    let (code, stderr) = run_into_closed_pipe(&[o("--keep"), o("all"), root]);
    assert_eq!(code, 0, "{stderr}");
    img.run(&["--keep", "all", "--check"]).code(0);
}

// ---------------------------------------------------------------------------------------------
// Errors: exit 1, one `error:` line naming the file, nothing written
// ---------------------------------------------------------------------------------------------

/// Runs `--keep hostname,dns` (and `status`, and the JSON form) on `img` and checks each fails with
/// one error line containing the needles, leaving the tree as it was.
#[track_caller]
fn assert_fails_cleanly(img: &Image, needles: &[&str]) {
    let before = img.snapshot();
    img.run(&["--keep", "hostname,dns"]).one_error(needles);
    img.run(&["--keep", "all", "--backup"]).one_error(needles);
    img.run(&["--keep", "all", "--dry-run"]).one_error(needles);
    img.run(&["--keep", "all", "--check"]).one_error(needles);
    img.run(&["--keep", "all", "--format", "json"])
        .one_error(needles);
    run_with(cmd().arg("status").arg(img.root())).one_error(needles);
    assert_same_tree(&before, &img.snapshot());
}

fn cfg_path(img: &Image) -> String {
    img.path(CLOUD_CFG).display().to_string()
}

#[test]
fn error_jinja_template() {
    let img = Image::fixture(TEMPLATE);
    let file = cfg_path(&img);
    assert_fails_cleanly(
        &img,
        &[&format!("{file}: line 1 column 1:"), "Jinja template"],
    );
}

/// cloud-init reads a file PyYAML rejects (or whose top level is not a
/// mapping) as empty: `status` says so with PyYAML's line and column, a keep
/// never edits it, and a keep that would need it fails naming it.
fn assert_ignored_cloud_cfg(img: &Image, needles: &[&str]) {
    let before = img.snapshot();
    let out = run_with(cmd().arg("status").arg(img.root()));
    out.code(0);
    assert!(
        out.stdout
            .contains("etc/cloud/cloud.cfg: cloud-init ignores this file ("),
        "{}",
        out.stdout
    );
    let json = run_with(cmd().args(["status", "--format", "json"]).arg(img.root()));
    json.code(0);
    let ignored = &json.json()["ignored_files"];
    assert_eq!(ignored[0]["file"], "etc/cloud/cloud.cfg", "{ignored}");
    for needle in needles {
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
        assert!(
            ignored[0]["reason"].as_str().unwrap().contains(needle),
            "{needle}: {ignored}"
        );
    }
    for args in [&["--keep", "hostname"][..], &["--keep", "all", "--dry-run"]] {
        let mut failure = vec!["cloud-init ignores this file", "not edited"];
        failure.extend(needles);
        img.run(args).one_error(&failure);
    }
    assert_same_tree(&before, &img.snapshot());
}

#[test]
fn invalid_yaml_is_ignored_as_cloud_init_does() {
    let img = Image::with_cfg(b"cloud_init_modules:\n - migrator\n  bad: x\n - bootcmd\n");
    assert_ignored_cloud_cfg(&img, &["at line 3 column 6"]);
}

#[test]
fn top_level_list_is_ignored_as_cloud_init_does() {
    let img = Image::with_cfg(b"- migrator\n- bootcmd\n");
    assert_ignored_cloud_cfg(&img, &["list", "at line 1 column 1"]);
}

#[test]
fn error_non_utf8() {
    let mut bytes = b"preserve_hostname: false\n# caf".to_vec();
    bytes.extend_from_slice(&[0xe9, b'\n']);
    let img = Image::with_cfg(&bytes);
    let file = cfg_path(&img);
    assert_fails_cleanly(
        &img,
        &[&format!("{file}: line 2 column 6:"), "not valid UTF-8"],
    );
}

#[test]
fn error_cloud_cfg_is_a_directory() {
    let img = Image::empty();
    fs::create_dir(img.path(CLOUD_CFG)).unwrap();
    fs::write(img.path("etc/cloud/cloud.cfg/x"), b"a: 1\n").unwrap();
    let file = cfg_path(&img);
    assert_fails_cleanly(&img, &[&file, "is a directory"]);
}

#[test]
fn error_cloud_cfg_is_a_fifo_and_does_not_hang() {
    let img = Image::empty();
    nix::unistd::mkfifo(
        &img.path(CLOUD_CFG),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let file = cfg_path(&img);
    // cmd() sets a 60 s timeout; the run must end at once.
    let start = std::time::Instant::now();
    assert_fails_cleanly(&img, &[&file, "is a FIFO"]);
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn error_cloud_cfg_is_a_char_device() {
    let img = Image::empty();
    nix::sys::stat::mknod(
        &img.path(CLOUD_CFG),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let file = cfg_path(&img);
    assert_fails_cleanly(&img, &[&file, "is a character device"]);
}

#[test]
fn error_missing_cloud_cfg_says_where_it_looked() {
    let img = Image::empty();
    let file = cfg_path(&img);
    let dir = img.path("etc/cloud").display().to_string();
    assert_fails_cleanly(
        &img,
        &[
            &format!("{file} does not exist"),
            &format!("looked for cloud-init's configuration in {dir}"),
        ],
    );
    // Not even etc/cloud.
    let bare = TempDir::new().unwrap();
    run_with(cmd().args(["--keep", "ntp"]).arg(bare.path()))
        .one_error(&["etc/cloud/cloud.cfg does not exist"]);
}

#[test]
fn error_missing_or_non_directory_root() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope");
    run_with(cmd().args(["--keep", "ntp"]).arg(&missing))
        .one_error(&[&format!("image root {} does not exist", missing.display())]);
    let file = dir.path().join("file");
    fs::write(&file, b"a: 1\n").unwrap();
    run_with(cmd().args(["--keep", "ntp"]).arg(&file)).one_error(&[&file.display().to_string()]);
    run_with(cmd().arg("status").arg(&missing)).one_error(&["does not exist"]);
}

#[test]
fn error_read_only_file_system() {
    let dir = TempDir::new().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // Declared after `dir`: dropped (unmounted) first.
    let guard = Tmpfs::mount(&mnt, "size=4m,mode=755");
    fs::create_dir_all(mnt.join("etc/cloud")).unwrap();
    fs::write(mnt.join(CLOUD_CFG), fixture(TENCENT)).unwrap();
    guard.remount_ro();
    let before = snapshot(&mnt);
    let file = mnt.join(CLOUD_CFG).display().to_string();
    for args in [
        &["--keep", "hostname,dns"][..],
        &["--keep", "all", "--backup"][..],
    ] {
        let out = run_with(cmd().args(args).arg(&mnt));
        out.one_error(&[&format!("cannot write {file}"), "read-only file system"]);
    }
    // Reading still works: dry run and check.
    run_with(cmd().args(["--keep", "all", "--dry-run"]).arg(&mnt)).code(0);
    run_with(cmd().args(["--keep", "all", "--check"]).arg(&mnt)).code(3);
    assert_same_tree(&before, &snapshot(&mnt));
    drop(guard);
}

#[test]
fn error_permission_denied_on_an_immutable_directory() {
    let img = Image::fixture(TENCENT);
    let dir = img.path("etc/cloud");
    let guard = Immutable::set(&dir);
    let before = img.snapshot();
    let file = cfg_path(&img);
    for args in [
        &["--keep", "hostname,dns"][..],
        &["--keep", "all", "--backup"][..],
    ] {
        img.run(args).one_error(&[
            &format!("cannot write {file}"),
            "its directory has the immutable attribute",
            "chattr -i",
        ]);
    }
    img.run(&["--keep", "all", "--dry-run"]).code(0);
    assert_same_tree(&before, &img.snapshot());
    drop(guard);
}

#[test]
fn error_permission_denied_on_an_immutable_file() {
    // Only the file is immutable: the temp file can be created next to it, but renaming it over the
    // immutable file fails. The directory's times change (temp file made and removed); the contents
    // of the tree do not, and no temp file is left behind.
    let img = Image::fixture(TENCENT);
    let guard = Immutable::set(&img.path(CLOUD_CFG));
    let before = img.snapshot();
    for args in [&["--keep", "ntp"][..], &["--keep", "ntp", "--backup"][..]] {
        img.run(args).one_error(&[
            &format!("cannot write {}", cfg_path(&img)),
            "immutable attribute",
            "chattr -i",
        ]);
        assert_eq!(contents(&img.snapshot()), contents(&before));
    }
    drop(guard);
}

#[test]
fn invalid_drop_in_is_ignored_and_left_alone() {
    let img = Image::fixture(TENCENT);
    img.write("etc/cloud/cloud.cfg.d/10_ok.cfg", b"ntp: {enabled: true}\n");
    // cloud-init ignores this drop-in whole, preserve_hostname included.
    let bad = b"preserve_hostname: true\ndatasource_list: [ ConfigDrive\nx: 1\n";
    img.write("etc/cloud/cloud.cfg.d/50_bad.cfg", bad);
    let says_ignored = |text: &str, also: &str| {
        let note = "etc/cloud/cloud.cfg.d/50_bad.cfg: cloud-init ignores this file (PyYAML: ";
        assert!(text.contains(note) && text.contains(also), "{text}");
    };
    let out = run_with(cmd().arg("status").arg(img.root()));
    out.code(0);
    says_ignored(&out.stdout, "at line 3 column 2)");
    says_ignored(&out.stdout, "preserve_hostname is not set");
    let out = img.run(&["--keep", "all"]);
    out.code(0);
    says_ignored(&out.stderr, "it was not edited");
    assert_eq!(
        fs::read(img.path("etc/cloud/cloud.cfg.d/50_bad.cfg")).unwrap(),
        bad
    );
    img.run(&["--keep", "all", "--check"]).code(0);
    // A non-.cfg file there is not read, however broken.
    let img = Image::fixture(TENCENT);
    img.write("etc/cloud/cloud.cfg.d/50_bad.cfg.disabled", b"x: [\n");
    img.write("etc/cloud/cloud.cfg.d/README", &[0xff, 0xfe]);
    img.run(&["--keep", "ntp"]).code(0);
}

// ---------------------------------------------------------------------------------------------
// Safety: links stay inside the root, metadata survives
// ---------------------------------------------------------------------------------------------

#[test]
fn absolute_symlink_is_read_and_written_inside_the_root() {
    let img = Image::empty();
    img.write("etc/cloud/real.cfg", &fixture(TENCENT));
    symlink("/etc/cloud/real.cfg", img.path(CLOUD_CFG)).unwrap();
    let host_before = fs::symlink_metadata("/etc/cloud/real.cfg")
        .ok()
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec()));

    let diff = assert_patch_reproduces_run(&img, &["--keep", "ntp"], &[]);
    let diff = String::from_utf8(diff).unwrap();
    assert!(
        diff.starts_with("--- a/etc/cloud/real.cfg\n+++ b/etc/cloud/real.cfg\n"),
        "{diff}"
    );
    assert_eq!(
        fs::read_link(img.path(CLOUD_CFG)).unwrap(),
        Path::new("/etc/cloud/real.cfg"),
        "the link stays a link"
    );
    let text = String::from_utf8(img.read("etc/cloud/real.cfg")).unwrap();
    assert!(!text.contains(" - ntp\n"), "{text}");
    img.run(&["--keep", "ntp", "--check"]).code(0);
    let out = img.run(&["--keep", "dns"]);
    out.code(0);
    assert!(
        out.stderr.contains("etc/cloud/real.cfg:35: [dns]"),
        "{}",
        out.stderr
    );
    let out = run_with(cmd().arg("status").arg(img.root()));
    assert!(
        out.stdout.contains("(etc/cloud/real.cfg:"),
        "{}",
        out.stdout
    );
    let host_after = fs::symlink_metadata("/etc/cloud/real.cfg")
        .ok()
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec()));
    assert_eq!(host_before, host_after, "the host's /etc/cloud/real.cfg");
}

#[test]
fn relative_symlink_cannot_escape_the_root() {
    let base = TempDir::new().unwrap();
    // The host file, outside the root: what an unconfined lookup of the "aimed" link would reach.
    let host_file = base.path().join("some/host/file");
    fs::create_dir_all(host_file.parent().unwrap()).unwrap();
    fs::write(&host_file, fixture(TENCENT)).unwrap();
    let base_rel = base
        .path()
        .strip_prefix("/")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();

    let img = Image::empty();
    let depth = img.root().components().count(); // counts "/" too: one spare "..".
    let links = [
        // Far more ".." than the root is deep.
        "../../../../../../some/host/file".to_string(),
        // Up to the host's / and down to the host file.
        format!("{}{base_rel}/some/host/file", "../".repeat(depth + 2)),
    ];
    for link in &links {
        // Where the link points once confined to the root, as the booted image sees it.
        let inside = if link.starts_with("../../../../../../some") {
            "some/host/file".to_string()
        } else {
            format!("{base_rel}/some/host/file")
        };
        let host_before = snapshot(base.path());

        // (a) Nothing there inside the root: the run fails, the host file is untouched.
        let img = Image::empty();
        symlink(link, img.path(CLOUD_CFG)).unwrap();
        if !link.starts_with("../../../../../../some") {
            // Followed by the host, the aimed link does reach the host file.
            assert_eq!(fs::canonicalize(img.path(CLOUD_CFG)).unwrap(), host_file);
        }
        let before = img.snapshot();
        img.run(&["--keep", "all"]).one_error(&[&cfg_path(&img)]);
        img.run(&["--keep", "all", "--dry-run"])
            .one_error(&[&cfg_path(&img)]);
        assert_same_tree(&before, &img.snapshot());

        // (b) The in-root target exists: it is the file read and rewritten.
        img.write(&inside, &fixture(TENCENT));
        let diff = assert_patch_reproduces_run(&img, &["--keep", "all"], &[]);
        let diff = String::from_utf8(diff).unwrap();
        assert!(
            diff.starts_with(&format!("--- a/{inside}\n+++ b/{inside}\n")),
            "{link}: {diff}"
        );
        assert_eq!(fs::read_link(img.path(CLOUD_CFG)).unwrap(), Path::new(link));
        assert_ne!(img.read(&inside), fixture(TENCENT));
        img.run(&["--keep", "all", "--check"]).code(0);

        assert_same_tree(&host_before, &snapshot(base.path()));
        assert_eq!(fs::read(&host_file).unwrap(), fixture(TENCENT));
    }
    assert!(!Path::new("/some/host/file").exists());
}

#[test]
fn mode_owner_and_xattrs_survive_a_real_run() {
    let img = Image::fixture(TENCENT);
    img.write(HOST_DROP_IN, b"preserve_hostname: false\n");
    for rel in [CLOUD_CFG, HOST_DROP_IN] {
        let path = img.path(rel);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(&path, Some(1234), Some(5678)).unwrap();
        xattr::set(&path, "user.test", b"kept value").unwrap();
    }
    let ino_before = fs::metadata(img.path(CLOUD_CFG)).unwrap().ino();

    img.run(&["--keep", "hostname,dns", "--backup"]).code(0);

    for rel in [CLOUD_CFG, HOST_DROP_IN] {
        let path = img.path(rel);
        let md = fs::metadata(&path).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640, "{rel}");
        assert_eq!((md.uid(), md.gid()), (1234, 5678), "{rel}");
        assert_eq!(
            xattr::get(&path, "user.test").unwrap().as_deref(),
            Some(&b"kept value"[..]),
            "{rel}"
        );
        // The backup is the original file, metadata and all.
        let bak = img.path(&format!("{rel}{BAK}"));
        let bmd = fs::metadata(&bak).unwrap();
        assert_eq!(
            (bmd.mode() & 0o7777, bmd.uid(), bmd.gid()),
            (0o640, 1234, 5678)
        );
        assert_eq!(
            xattr::get(&bak, "user.test").unwrap().as_deref(),
            Some(&b"kept value"[..])
        );
    }
    // Replaced atomically (a new inode renamed into place), no temp file left behind.
    assert_ne!(fs::metadata(img.path(CLOUD_CFG)).unwrap().ino(), ino_before);
    let mut names: Vec<String> = fs::read_dir(img.path("etc/cloud"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["cloud.cfg", "cloud.cfg.d", "cloud.cfg.prepare-image.bak"]
    );
    let mut names: Vec<String> = fs::read_dir(img.path("etc/cloud/cloud.cfg.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["50_host.cfg", "50_host.cfg.prepare-image.bak"]);
}

// ---------------------------------------------------------------------------------------------
// status, profiles, --version, --help
// ---------------------------------------------------------------------------------------------

#[test]
fn status_lists_every_setting_with_the_deciding_line() {
    let img = Image::fixture(TENCENT);
    img.write(HOST_DROP_IN, b"# decided here\npreserve_hostname: false\n");
    let before = img.snapshot();
    let out = run_with(cmd().arg("status").arg(img.root()));
    out.code(0);
    assert_eq!(out.stderr, "");
    let lines = lines_of(&out.stdout);
    assert_eq!(lines[0], format!("root: {}", img.root().display()));
    assert_eq!(lines.len(), 9, "{}", out.stdout);
    for (line, name) in lines[1..].iter().zip(BUILT_INS) {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(name), "{line}");
        assert_eq!(words.next(), Some("overwritten"), "{line}");
    }
    let line = |name: &str| {
        *lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap()
    };
    assert!(
        line("hostname").contains("preserve_hostname: false (etc/cloud/cloud.cfg.d/50_host.cfg:2)"),
        "{}",
        out.stdout
    );
    assert!(
        line("hostname")
            .contains("scripts-user runs (cloud_final_modules) (etc/cloud/cloud.cfg:51)"),
        "{}",
        out.stdout
    );
    assert!(
        line("dns").contains("(etc/cloud/cloud.cfg:36)"),
        "{}",
        out.stdout
    );
    assert!(
        line("dns").contains("resolv_conf is in unverified_modules (etc/cloud/cloud.cfg:44)"),
        "{}",
        out.stdout
    );
    assert!(
        line("ntp").contains("ntp runs (cloud_config_modules) (etc/cloud/cloud.cfg:34)"),
        "{}",
        out.stdout
    );
    assert!(
        line("network").contains("network.config is not set"),
        "{}",
        out.stdout
    );
    assert_same_tree(&before, &img.snapshot());

    img.run(&["--keep", "all"]).code(0);
    let out = run_with(cmd().arg("status").arg(img.root()));
    out.code(0);
    let lines = lines_of(&out.stdout);
    assert_eq!(lines.len(), 9, "{}", out.stdout);
    for (line, name) in lines[1..].iter().zip(BUILT_INS) {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(name), "{line}");
        assert_eq!(words.next(), Some("kept"), "{line}");
    }
    assert!(!out.stdout.contains("overwritten"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("preserve_hostname: true (etc/cloud/cloud.cfg.d/50_host.cfg:2)"),
        "{}",
        out.stdout
    );
}

#[test]
fn profiles_lists_the_linux_eight_then_the_windows_nine_with_edits_and_warnings() {
    let out = run(&["profiles"]);
    out.code(0);
    assert_eq!(out.stderr, "");
    let blocks: Vec<&str> = out.stdout.split("\n\n").collect();
    assert_eq!(blocks.len(), 8 + 9, "{}", out.stdout);
    let (blocks, windows) = blocks.split_at(8);
    for (block, name) in windows.iter().zip(windows_built_ins()) {
        assert!(
            block.starts_with(&format!("{name}: "))
                && block.contains("\n  guest: Windows (Cloudbase-Init)\n"),
            "{block}"
        );
    }
    assert!(
        windows[0].contains("\n  edit: drop SetHostNamePlugin from plugins="),
        "{}",
        windows[0]
    );
    assert!(
        windows[1].contains("\n  not applicable: Cloudbase-Init never writes the hosts file"),
        "{}",
        windows[1]
    );
    assert!(
        windows[8].ends_with("--keep all does not include it\n"),
        "{}",
        windows[8]
    );
    for (block, name) in blocks.iter().zip(BUILT_INS) {
        assert!(block.starts_with(&format!("{name}: ")), "{block}");
        assert!(block.contains("\n  guest: Linux (cloud-init)\n"), "{block}");
        assert!(block.contains("\n  edit: "), "{block}");
        assert!(
            block.contains("\n  note: vendor data and user data"),
            "{block}"
        );
    }
    let block = |name: &str| blocks[BUILT_INS.iter().position(|n| *n == name).unwrap()];
    assert!(block("hostname").contains("  edit: set preserve_hostname: true\n"));
    assert!(block("hostname").contains("  edit: remove module scripts-user from every module list\n    breaks: scripts-user no longer runs"));
    assert!(block("hosts").contains("remove module update_etc_hosts"));
    assert!(block("dns").contains("  edit: remove resolv_conf from unverified_modules\n"));
    assert!(block("repos").contains("remove module write-files"));
    assert!(block("ntp").contains("remove module ntp"));
    assert!(block("passwords").contains("remove module set-passwords"));
    assert!(block("keys").contains("remove module users-groups"));
    assert!(block("network").contains("  edit: set network.config: disabled\n"));
}

/// What bash completion offers for the words typed so far (the last one is
/// being completed), from the script `completions bash` prints, in a real bash.
fn bash_completions(script: &[u8], words: &[&str]) -> Vec<String> {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("prepare-image.bash");
    fs::write(&path, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\n\
         function=$(complete -p prepare-image | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p')\n\
         COMP_WORDS=({})\n\
         COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         \"$function\" prepare-image \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        path.display(),
        quoted.join(" ")
    );
    let out = StdCommand::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_offers_profile_names_after_keep() {
    let script = run(&["completions", "bash"]).code(0).stdout_bytes.clone();
    let mut all: Vec<String> = BUILT_INS.iter().map(|s| s.to_string()).collect();
    all.push("all".into());
    assert_eq!(
        bash_completions(&script, &["prepare-image", "--keep", ""]),
        all
    );
    assert_eq!(
        bash_completions(&script, &["prepare-image", "--keep", "ho"]),
        ["hostname", "hosts"]
    );
    // A user profile given when the script is made is offered too.
    let (_dir, mine) =
        profile_file("name: mine\nsummary: Mine.\nedits:\n  - remove_module: growpart\n");
    let out = run_with(
        cmd()
            .args(["completions", "bash", "--profile-file"])
            .arg(&mine),
    );
    out.code(0);
    assert!(
        bash_completions(&out.stdout_bytes, &["prepare-image", "--keep", "m"])
            .contains(&"mine".to_string())
    );
    // --keep still takes any comma list; completion does not restrict parsing.
    let img = Image::fixture(TENCENT);
    img.run(&["--keep", "hostname,dns", "--dry-run"]).code(0);
}

#[test]
fn man_page_names_no_page_that_does_not_exist() {
    let out = run(&["man"]);
    out.code(0);
    // clap_mangen would refer to prepare-image-status(1) and the like.
    assert!(!out.stdout.contains("(1)"), "{}", out.stdout);
    for sub in ["status", "profiles", "completions", "man"] {
        assert!(
            out.stdout
                .contains(&format!("\\fBprepare\\-image {sub}\\fR")),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn version_and_help_exit_zero() {
    let version = format!("prepare-image {}\n", env!("CARGO_PKG_VERSION"));
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        out.code(0);
        assert_eq!(out.stdout, version);
    }
    for flag in ["--help", "-h"] {
        let out = run(&[flag]);
        out.code(0);
        for opt in [
            "--keep <LIST>",
            "--dry-run",
            "--check",
            "--backup",
            "--format <FORMAT>",
            "--color <COLOR>",
            "--profile-file <FILE>",
            "[TARGET]",
            "status",
            "profiles",
            "Exit codes: 0",
        ] {
            assert!(
                out.stdout.contains(opt),
                "{flag} lacks {opt}:\n{}",
                out.stdout
            );
        }
    }
    for args in [
        &["status", "--help"][..],
        &["profiles", "--help"],
        &["help"],
        &["help", "status"],
    ] {
        run(args).code(0);
    }
}

/// On kernels without openat2(2) (before Linux 5.6: CentOS 7 and 8 guests
/// running the static binary against `/`), the openat(2) fallback keeps the
/// same confinement. PREPARE_IMAGE_FORCE_OPENAT=1 takes the fallback here.
#[test]
fn without_openat2_links_still_resolve_inside_the_root() {
    let fallback = || {
        let mut c = cmd();
        c.env("PREPARE_IMAGE_FORCE_OPENAT", "1");
        c
    };
    // An absolute link: the in-root target is edited, the link stays.
    let img = Image::empty();
    img.write("etc/cloud/real.cfg", &fixture(TENCENT));
    symlink("/etc/cloud/real.cfg", img.path(CLOUD_CFG)).unwrap();
    let out = run_with(fallback().args(["--keep", "ntp"]).arg(img.root()));
    out.code(0);
    assert!(
        out.stdout.starts_with("--- a/etc/cloud/real.cfg\n"),
        "{}",
        out.stdout
    );
    let text = String::from_utf8(img.read("etc/cloud/real.cfg")).unwrap();
    assert!(!text.contains(" - ntp\n"), "{text}");
    assert_eq!(
        fs::read_link(img.path(CLOUD_CFG)).unwrap(),
        Path::new("/etc/cloud/real.cfg")
    );

    // A relative link that climbs far above the root to a host file: it is
    // confined to the root, where nothing is there, so the run fails and the
    // host file is untouched.
    let base = TempDir::new().unwrap();
    let host_file = base.path().join("host.cfg");
    fs::write(&host_file, fixture(TENCENT)).unwrap();
    let img = Image::empty();
    let climb = "../".repeat(img.root().components().count() + 4);
    let rel = host_file.strip_prefix("/").unwrap().display().to_string();
    symlink(format!("{climb}{rel}"), img.path(CLOUD_CFG)).unwrap();
    assert_eq!(
        fs::canonicalize(img.path(CLOUD_CFG)).unwrap(),
        host_file,
        "the host would follow it out"
    );
    let out = run_with(fallback().args(["--keep", "all"]).arg(img.root()));
    out.code(1);
    assert_eq!(fs::read(&host_file).unwrap(), fixture(TENCENT));
    // Once the same path exists inside the root, that is what gets edited.
    img.write(&rel, &fixture(TENCENT));
    run_with(fallback().args(["--keep", "all"]).arg(img.root())).code(0);
    assert_eq!(fs::read(&host_file).unwrap(), fixture(TENCENT));
    let inside = String::from_utf8(img.read(&rel)).unwrap();
    assert!(inside.contains("preserve_hostname: true"), "{inside}");
}

/// A full filesystem: the temp file cannot be written, so cloud.cfg stays
/// exactly as it was (never partial), and the error says what to do.
#[test]
fn error_full_file_system_leaves_cloud_cfg_whole() {
    let dir = TempDir::new().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let guard = Tmpfs::mount(&mnt, "size=4m,mode=755");
    fs::create_dir_all(mnt.join("etc/cloud")).unwrap();
    fs::write(mnt.join(CLOUD_CFG), fixture(TENCENT)).unwrap();
    // Fill the 4 MiB tmpfs to the last byte.
    let mut filler = fs::File::create(mnt.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    let before = fs::read(mnt.join(CLOUD_CFG)).unwrap();
    let file = mnt.join(CLOUD_CFG).display().to_string();
    run_with(cmd().args(["--keep", "all"]).arg(&mnt))
        .one_error(&[&format!("cannot write {file}"), "no space left"]);
    assert_eq!(fs::read(mnt.join(CLOUD_CFG)).unwrap(), before);
    let leftovers: Vec<_> = fs::read_dir(mnt.join("etc/cloud"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("cloud.cfg")],
        "no temp file left"
    );
    drop(guard);
}
