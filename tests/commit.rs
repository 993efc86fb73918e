//! A run's writes are all or none, and one run at a time works on a root.
//!
//! Exit 1 means nothing was written (README, "Exit codes"): a drop-in that
//! cannot be replaced, a backup name that does not fit, a file edited by
//! someone else meanwhile, a rename that fails after others succeeded: every
//! file stays byte for byte (and inode for inode) as it was, and no temp file
//! or link of ours is left. Two runs at once never lose an edit silently.
//! They run as root (chattr, flock on real directories).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

use assert_cmd::Command;
use prepare_image::access::commit::{CommitError, commit_all, commit_all_observed};
use prepare_image::access::root::{AccessErrorKind, Root};
use tempfile::TempDir;

mod common_guards;
use common_guards::{AppendOnly, Immutable};

const CLOUD_CFG: &str = "etc/cloud/cloud.cfg";
const DROP_IN: &str = "etc/cloud/cloud.cfg.d/50_host.cfg";
const TENCENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/cloud-cfg/tencent-centos-rhel8.5.cfg"
);

fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests must run as root (chattr, chown)"
    );
}

/// A root with Tencent's cloud.cfg and a drop-in deciding preserve_hostname,
/// so `--keep all` edits both: cloud.cfg first, the drop-in second.
fn two_file_root() -> TempDir {
    assert_root();
    let dir = TempDir::new().unwrap();
    fs::create_dir_all(dir.path().join("etc/cloud/cloud.cfg.d")).unwrap();
    fs::copy(TENCENT, dir.path().join(CLOUD_CFG)).unwrap();
    fs::write(dir.path().join(DROP_IN), b"preserve_hostname: false\n").unwrap();
    dir
}

/// Every entry under the root with its inode and bytes: "nothing changed"
/// means the same names, the same inodes, the same contents.
type Tree = BTreeMap<PathBuf, (u64, Option<String>)>;

fn tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                out.insert(rel, (meta.ino(), None));
                walk(root, &path, out);
            } else {
                let bytes = fs::read(&path).unwrap();
                out.insert(
                    rel,
                    (meta.ino(), Some(String::from_utf8_lossy(&bytes).into())),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn cmd() -> Command {
    let mut c = Command::cargo_bin("prepare-image").unwrap();
    c.env_remove("NO_COLOR");
    c.timeout(Duration::from_secs(60));
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], root: &Path) -> Out {
    let out = cmd().args(args).arg(root).output().unwrap();
    Out {
        code: out.status.code().expect("killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Exit 1, one `error:` line with every needle, and the tree exactly as before.
#[track_caller]
fn fails_with_nothing_written(root: &Path, args: &[&str], needles: &[&str]) {
    let before = tree(root);
    let out = run(args, root);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].starts_with("error: "), "{}", out.stderr);
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} in {}", out.stderr);
    }
    assert_eq!(tree(root), before, "exit 1 must mean nothing changed");
}

#[test]
fn an_immutable_drop_in_leaves_cloud_cfg_alone() {
    let dir = two_file_root();
    let drop_in = dir.path().join(DROP_IN);
    let guard = Immutable::set(&drop_in);
    for args in [&["--keep", "all"][..], &["--keep", "all", "--backup"][..]] {
        fails_with_nothing_written(
            dir.path(),
            args,
            &[
                &format!("cannot write {}", drop_in.display()),
                "immutable attribute",
                "chattr -i",
                "nothing was written",
            ],
        );
    }
    drop(guard);
    // Without the attribute the same run goes through.
    assert_eq!(run(&["--keep", "all"], dir.path()).code, 0);
}

#[test]
fn an_append_only_drop_in_leaves_cloud_cfg_alone() {
    let dir = two_file_root();
    let guard = AppendOnly::set(&dir.path().join(DROP_IN));
    fails_with_nothing_written(
        dir.path(),
        &["--keep", "all"],
        &["append-only attribute", "chattr -a", "nothing was written"],
    );
    drop(guard);
}

#[test]
fn an_append_only_drop_in_directory_leaves_cloud_cfg_alone() {
    let dir = two_file_root();
    let drop_ins = dir.path().join("etc/cloud/cloud.cfg.d");
    let guard = AppendOnly::set(&drop_ins);
    let before = tree(dir.path());
    let out = run(&["--keep", "all"], dir.path());
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("its directory has the append-only attribute"),
        "{}",
        out.stderr
    );
    // Refused before a temp file was made (it could not be removed again).
    assert_eq!(tree(dir.path()), before);
    drop(guard);
}

/// A file bind-mounted over another; unmounted on drop.
struct BindMount(PathBuf);

impl BindMount {
    fn new(source: &Path, target: &Path) -> BindMount {
        let status = StdCommand::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(target)
            .status()
            .expect("mount (util-linux) must be installed");
        assert!(status.success(), "mount --bind {}", target.display());
        BindMount(target.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = StdCommand::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_drop_in_mounted_over_is_refused_before_cloud_cfg_is_replaced() {
    let dir = two_file_root();
    let elsewhere = TempDir::new().unwrap();
    let source = elsewhere.path().join("host.cfg");
    fs::write(&source, b"preserve_hostname: false\n").unwrap();
    let guard = BindMount::new(&source, &dir.path().join(DROP_IN));
    fails_with_nothing_written(
        dir.path(),
        &["--keep", "all"],
        &["it is a mount point", "nothing was written"],
    );
    drop(guard);
    assert_eq!(fs::read(&source).unwrap(), b"preserve_hostname: false\n");
}

#[test]
fn a_backup_name_longer_than_name_max_leaves_everything_alone() {
    let dir = two_file_root();
    // 251 + ".cfg" = 255 bytes: the longest name; the backup would be 273.
    let long = format!("etc/cloud/cloud.cfg.d/{}.cfg", "z".repeat(251));
    fs::write(dir.path().join(&long), b"preserve_hostname: no\n").unwrap();
    fails_with_nothing_written(
        dir.path(),
        &["--keep", "all", "--backup"],
        &[
            "would be a 273-byte name",
            "limit of 255 bytes",
            "run without --backup",
            "nothing was written",
        ],
    );
    assert_eq!(run(&["--keep", "all"], dir.path()).code, 0);
}

/// The tree once our prepared temp files (dot-files) are gone.
fn without_temp_files(mut tree: Tree) -> Tree {
    tree.retain(|path, _| !path.file_name().unwrap().to_string_lossy().starts_with('.'));
    tree
}

/// Two prepared writes, with the bytes they were planned on.
fn pending_pair(root: &Root, dir: &Path) -> Vec<prepare_image::access::root::PendingWrite> {
    [CLOUD_CFG, DROP_IN]
        .iter()
        .map(|rel| {
            let old = fs::read(dir.join(rel)).unwrap();
            root.prepare_write(Path::new(rel), b"new: text\n")
                .unwrap()
                .expecting(&old)
        })
        .collect()
}

#[test]
fn a_rename_failing_after_another_succeeded_puts_the_first_back() {
    let dir = two_file_root();
    let root = Root::open(dir.path()).unwrap();
    let drop_in = dir.path().join(DROP_IN);
    let mut expected = tree(dir.path());
    let writes = pending_pair(&root, dir.path());
    // Every check passed and cloud.cfg is replaced; then another program
    // edits the drop-in in place, so its rename is refused.
    let result = commit_all_observed(writes, Some(".prepare-image.bak"), &mut |index| {
        if index == 0 {
            fs::write(&drop_in, b"preserve_hostname: edited\n").unwrap();
        }
    });
    let error = result.unwrap_err();
    assert!(
        matches!(
            &error,
            CommitError::NothingWritten(e) if matches!(e.kind(), AccessErrorKind::ChangedMeanwhile)
        ),
        "{error}"
    );
    expected.get_mut(Path::new(DROP_IN)).unwrap().1 = Some("preserve_hostname: edited\n".into());
    assert_eq!(
        tree(dir.path()),
        expected,
        "cloud.cfg is the original inode again; no temp file, hidden link or backup is left"
    );
}

#[test]
fn when_putting_back_fails_too_the_error_names_what_was_written() {
    let dir = two_file_root();
    let root = Root::open(dir.path()).unwrap();
    let drop_in = dir.path().join(DROP_IN);
    let etc_cloud = dir.path().join("etc/cloud");
    let writes = pending_pair(&root, dir.path());
    // After cloud.cfg is replaced: the drop-in is edited by someone else (so
    // its rename is refused) and etc/cloud turns immutable (so cloud.cfg
    // cannot be put back).
    let mut guard = None;
    let result = commit_all_observed(writes, None, &mut |index| {
        if index == 0 {
            fs::write(&drop_in, b"preserve_hostname: edited\n").unwrap();
            guard = Some(Immutable::set(&etc_cloud));
        }
    });
    drop(guard);
    let error = result.unwrap_err();
    assert!(!error.nothing_written());
    let CommitError::Partial(partial) = &error else {
        panic!("{error}");
    };
    assert_eq!(partial.written, [PathBuf::from(CLOUD_CFG)]);
    let message = error.to_string();
    assert!(
        message.contains("putting back the files already replaced failed too")
            && message.contains("etc/cloud/cloud.cfg WERE written"),
        "{message}"
    );
    // The original is still there under the hidden name the message gives.
    let kept = partial
        .kept
        .iter()
        .find(|k| k.parent() == Some(Path::new("etc/cloud")))
        .unwrap();
    assert_eq!(
        fs::read(dir.path().join(kept)).unwrap(),
        fs::read(TENCENT).unwrap()
    );
    assert_eq!(
        fs::read(dir.path().join(CLOUD_CFG)).unwrap(),
        b"new: text\n"
    );
}

#[test]
fn all_renames_succeed_and_leave_only_the_backups() {
    let dir = two_file_root();
    let root = Root::open(dir.path()).unwrap();
    let originals: Vec<u64> = [CLOUD_CFG, DROP_IN]
        .iter()
        .map(|rel| fs::metadata(dir.path().join(rel)).unwrap().ino())
        .collect();
    let outcomes = commit_all(pending_pair(&root, dir.path()), Some(".bak")).unwrap();
    assert!(outcomes.iter().all(|o| !o.backup_existed));
    let names = |rel: &str| -> Vec<OsString> {
        let mut v: Vec<_> = fs::read_dir(dir.path().join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names("etc/cloud"),
        ["cloud.cfg", "cloud.cfg.bak", "cloud.cfg.d"]
    );
    assert_eq!(
        names("etc/cloud/cloud.cfg.d"),
        ["50_host.cfg", "50_host.cfg.bak"]
    );
    for (rel, ino) in [CLOUD_CFG, DROP_IN].iter().zip(originals) {
        let bak = dir.path().join(format!("{rel}.bak"));
        assert_eq!(fs::metadata(&bak).unwrap().ino(), ino);
        assert_eq!(
            fs::metadata(&bak).unwrap().nlink(),
            1,
            "no hidden link left"
        );
        assert_eq!(fs::read(dir.path().join(rel)).unwrap(), b"new: text\n");
    }
}

#[test]
fn a_file_edited_by_someone_else_meanwhile_is_not_replaced() {
    let dir = two_file_root();
    let root = Root::open(dir.path()).unwrap();
    let writes = pending_pair(&root, dir.path());
    // Another tool (not taking our lock) edits the drop-in in place.
    fs::write(dir.path().join(DROP_IN), b"preserve_hostname: maybe\n").unwrap();
    let before = without_temp_files(tree(dir.path()));
    let error = commit_all(writes, None).unwrap_err();
    assert!(error.nothing_written());
    let message = error.to_string();
    assert!(
        message.contains("changed while prepare-image was running")
            && message.contains("50_host.cfg"),
        "{message}"
    );
    let after = tree(dir.path());
    assert_eq!(after, before);
    // Replaced by a new file (an editor's own atomic save): refused too.
    let writes = pending_pair(&root, dir.path());
    let fresh = dir.path().join("etc/cloud/fresh");
    fs::write(&fresh, fs::read(dir.path().join(CLOUD_CFG)).unwrap()).unwrap();
    fs::rename(&fresh, dir.path().join(CLOUD_CFG)).unwrap();
    let before = without_temp_files(tree(dir.path()));
    assert!(commit_all(writes, None).unwrap_err().nothing_written());
    assert_eq!(tree(dir.path()), before);
}

#[test]
fn a_hard_linked_cloud_cfg_is_refused_unless_allowed() {
    let dir = two_file_root();
    let other = dir.path().join("cloud.cfg.other-name");
    fs::hard_link(dir.path().join(CLOUD_CFG), &other).unwrap();
    fails_with_nothing_written(
        dir.path(),
        &["--keep", "all"],
        &[
            "has 2 hard links",
            "--break-hard-links",
            "nothing was written",
        ],
    );
    let out = run(&["--keep", "all", "--break-hard-links"], dir.path());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_ne!(
        fs::read(dir.path().join(CLOUD_CFG)).unwrap(),
        fs::read(&other).unwrap()
    );
}

fn run_into_full_stdout(args: &[&str], root: &Path) -> std::process::Output {
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    StdCommand::new(assert_cmd::cargo::cargo_bin("prepare-image"))
        .args(args)
        .arg(root)
        .stdout(Stdio::from(full))
        .output()
        .unwrap()
}

#[test]
fn a_full_stdout_after_writing_says_the_files_were_written() {
    let dir = two_file_root();
    let out = run_into_full_stdout(&["--keep", "all"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot write to stdout: No space left on device")
            && stderr.contains(
                "the files WERE written: etc/cloud/cloud.cfg, etc/cloud/cloud.cfg.d/50_host.cfg"
            ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("os error 28").count(), 1, "{stderr}");
    assert_eq!(
        fs::read(dir.path().join(DROP_IN)).unwrap(),
        b"preserve_hostname: true\n"
    );
    // A dry run wrote nothing: a full stdout is an ordinary error (1).
    let dir = two_file_root();
    let before = tree(dir.path());
    let out = run_into_full_stdout(&["--keep", "all", "--dry-run"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot write to stdout: "),
        "{stderr}"
    );
    assert!(!stderr.contains("WERE"), "{stderr}");
    assert_eq!(tree(dir.path()), before);
}

#[test]
fn a_run_waits_for_the_lock_then_names_its_holder() {
    let dir = two_file_root();
    let before = tree(dir.path());
    let locked = fs::File::open(dir.path().join("etc/cloud")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(locked.as_raw_fd(), libc::LOCK_EX) }, 0);
    let out = cmd()
        .env("PREPARE_IMAGE_LOCK_WAIT_MS", "300")
        .args(["--keep", "all"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let holder = format!("(pid {}, ", std::process::id());
    assert!(
        stderr.contains(&format!(
            "{} is locked by another prepare-image run {holder}",
            dir.path().join("etc/cloud").display()
        )) && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert_eq!(tree(dir.path()), before);
    // Read-only runs take it shared: they wait for a writer too...
    let out = cmd()
        .env("PREPARE_IMAGE_LOCK_WAIT_MS", "300")
        .args(["--keep", "all", "--check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    drop(locked);
    // ...and once it is released, the run goes through.
    assert_eq!(run(&["--keep", "all", "--check"], dir.path()).code, 3);
    assert_eq!(run(&["--keep", "all"], dir.path()).code, 0);
}

/// Whether `setting` is kept, by `status --format json`.
fn kept(root: &Path, setting: &str) -> bool {
    let out = cmd()
        .args(["status", "--format", "json"])
        .arg(root)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["setting"] == setting)
        .map(|s| s["state"] == "kept")
        .unwrap()
}

#[test]
fn two_runs_at_once_never_lose_an_edit() {
    const ROUNDS: usize = 40;
    let binary = assert_cmd::cargo::cargo_bin("prepare-image");
    let mut both_applied = 0;
    for round in 0..ROUNDS {
        let dir = two_file_root();
        let start = |keep: &str| {
            StdCommand::new(&binary)
                .args(["--keep", keep])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (start("hostname"), start("dns"));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        for (run, setting) in [(&a, "hostname"), (&b, "dns")] {
            match run.status.code() {
                Some(0) => assert!(
                    kept(dir.path(), setting),
                    "round {round}: the run keeping {setting} exited 0, but its edit was lost"
                ),
                Some(1) => assert!(
                    String::from_utf8_lossy(&run.stderr).contains("nothing was written")
                        || String::from_utf8_lossy(&run.stderr).contains("run again"),
                    "round {round}: {}",
                    String::from_utf8_lossy(&run.stderr)
                ),
                other => panic!(
                    "round {round}: exit {other:?}: {}",
                    String::from_utf8_lossy(&run.stderr)
                ),
            }
        }
        if a.status.success() && b.status.success() {
            both_applied += 1;
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("etc/cloud"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
    }
    // The lock serialises them: the second run plans on the first one's result.
    assert_eq!(both_applied, ROUNDS);
}
