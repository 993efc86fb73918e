//! The `doctor` and `clean` subcommands end to end: exit codes (0, 4, 1),
//! text and JSON output, `--fix`, `--dry-run`, read-only doctor, and a
//! hostile link that must not reach the host. Each test builds a small
//! Debian-like root in a TempDir; the image test also needs root, loop
//! devices, fdisk and e2fsprogs (see `common_images`).

mod common_images;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

const SITE: &str = "usr/lib/python3/dist-packages";

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn link(root: &Path, rel: &str, target: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

/// A root where cloud-init 22.4.2 works: doctor finds no error.
fn healthy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n");
    write(r, "usr/bin/python3.11", "");
    link(r, "usr/bin/python3", "python3.11");
    fs::create_dir_all(r.join("usr/lib/python3.11")).unwrap();
    write(
        r,
        &format!("{SITE}/cloudinit/version.py"),
        "__VERSION__ = \"22.4.2\"\n",
    );
    write(r, &format!("{SITE}/cloudinit/safeyaml.py"), "import yaml\n");
    write(
        r,
        &format!("{SITE}/cloudinit/sources/DataSourceConfigDrive.py"),
        "",
    );
    write(
        r,
        &format!("{SITE}/cloudinit/sources/DataSourceNone.py"),
        "",
    );
    write(r, &format!("{SITE}/yaml/__init__.py"), "");
    write(r, "usr/bin/cloud-init", "#!/usr/bin/python3\nimport sys\n");
    write(r, "usr/lib/systemd/systemd", "");
    write(
        r,
        "usr/lib/systemd/system-generators/cloud-init-generator",
        "",
    );
    write(r, "usr/lib/systemd/system/cloud-init.target", "[Unit]\n");
    for unit in [
        "cloud-init-local",
        "cloud-init",
        "cloud-config",
        "cloud-final",
    ] {
        write(
            r,
            &format!("usr/lib/systemd/system/{unit}.service"),
            "[Unit]\n\n[Install]\nWantedBy=cloud-init.target\n",
        );
        link(
            r,
            &format!("etc/systemd/system/cloud-init.target.wants/{unit}.service"),
            &format!("/usr/lib/systemd/system/{unit}.service"),
        );
    }
    write(
        r,
        "etc/cloud/cloud.cfg",
        "datasource_list: [ ConfigDrive, None ]\ncloud_init_modules:\n - ssh\n",
    );
    write(r, "etc/ssh/ssh_host_ed25519_key", "secret");
    write(
        r,
        "boot/config-6.1.0-13-amd64",
        "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_NET=y\n",
    );
    dir
}

/// Runs `prepare-image ARGS ROOT`, expects the exit code, returns (stdout, stderr).
fn run(args: &[&str], root: &Path, code: i32) -> (String, String) {
    let assert = Command::cargo_bin("prepare-image")
        .unwrap()
        .args(args)
        .arg(root)
        .assert()
        .code(code);
    let output = assert.get_output();
    (
        String::from_utf8(output.stdout.clone()).unwrap(),
        String::from_utf8(output.stderr.clone()).unwrap(),
    )
}

/// Every path under `root` with its bytes (or link target), to prove nothing changed.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let content = if meta.file_type().is_symlink() {
                fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if meta.is_dir() {
                stack.push(path.clone());
                b"<dir>".to_vec()
            } else {
                fs::read(&path).unwrap()
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), content);
        }
    }
    out
}

#[test]
fn a_healthy_root_exits_0_and_verbose_lists_the_passed_checks() {
    let root = healthy();
    let (out, err) = run(&["doctor"], root.path(), 0);
    assert!(!out.contains("error[") && !out.contains("ok["), "{out}");
    assert!(
        out.ends_with(&format!("in {}\n", root.path().display())),
        "{out}"
    );
    assert_eq!(err, "");
    let (verbose, _) = run(&["doctor", "--verbose"], root.path(), 0);
    assert!(
        verbose.contains("ok[cloud-init-installed]: cloud-init is installed: 22.4.2"),
        "{verbose}"
    );
}

#[test]
fn an_error_exits_4_with_id_evidence_effect_and_fix_and_doctor_changes_nothing() {
    let root = healthy();
    write(root.path(), "etc/cloud/cloud-init.disabled", "");
    write(root.path(), "var/lib/cloud/data/instance-id", "ins-1\n");
    let before = snapshot(root.path());
    let (out, err) = run(&["doctor"], root.path(), 4);
    assert!(
        out.contains("error[cloud-init-disabled-file]: cloud-init is disabled by /etc/cloud/cloud-init.disabled\n  evidence: etc/cloud/cloud-init.disabled\n  effect: "),
        "{out}"
    );
    assert!(out.contains("error[previous-instance-state]"), "{out}");
    assert!(
        out.contains("  evidence: var/lib/cloud/data/instance-id:1\n"),
        "{out}"
    );
    assert!(out.contains("  fix: prepare-image clean\n"), "{out}");
    assert_eq!(err, "");
    assert_eq!(snapshot(root.path()), before);
}

#[test]
fn json_is_one_document_with_every_finding() {
    let root = healthy();
    write(
        root.path(),
        "etc/machine-id",
        "0123456789abcdef0123456789abcdef\n",
    );
    let (out, _) = run(&["doctor", "--format", "json"], root.path(), 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["root"], root.path().display().to_string());
    assert_eq!(doc["image"], Value::Null);
    assert_eq!(doc["summary"]["errors"], 0);
    assert_eq!(doc["summary"]["warnings"], 1);
    let findings = doc["findings"].as_array().unwrap();
    let warning = findings
        .iter()
        .find(|f| f["severity"] == "warning")
        .unwrap();
    assert_eq!(warning["id"], "machine-id-set");
    assert_eq!(
        warning["evidence"],
        serde_json::json!({"path": "etc/machine-id", "line": 1})
    );
    assert_eq!(warning["fix"], "prepare-image clean --machine-id");
    assert!(findings.iter().any(|f| f["severity"] == "ok"));
}

#[test]
fn no_cloud_init_is_cloud_init_not_installed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "etc/os-release", "ID=debian\n");
    let (out, _) = run(&["doctor"], dir.path(), 4);
    assert!(out.starts_with("error[cloud-init-not-installed]"), "{out}");
}

#[test]
fn fix_rewrites_a_shebang_through_a_repointed_python_and_checks_again() {
    let root = healthy();
    let r = root.path();
    // The guide's problem 2: the shebang goes through /usr/bin/python, re-pointed to an
    // interpreter that does not hold cloud-init.
    write(r, "usr/bin/python2.7", "");
    link(r, "usr/bin/python", "python2.7");
    write(r, "usr/bin/cloud-init", "#!/usr/bin/python\nimport sys\n");
    let (out, _) = run(&["doctor"], r, 4);
    assert!(
        out.contains("error[entry-interpreter-without-cloud-init]"),
        "{out}"
    );
    assert!(out.contains("  evidence: usr/bin/cloud-init:1\n"), "{out}");
    let (_, err) = run(&["doctor", "--fix"], r, 0);
    assert_eq!(
        err,
        "fixed usr/bin/cloud-init:1: #!/usr/bin/python -> #!/usr/bin/python3\n"
    );
    assert_eq!(
        fs::read_to_string(r.join("usr/bin/cloud-init")).unwrap(),
        "#!/usr/bin/python3\nimport sys\n"
    );
}

#[test]
fn clean_dry_run_lists_paths_and_sizes_and_removes_nothing_then_clean_removes() {
    let root = healthy();
    let r = root.path();
    write(r, "var/lib/cloud/instances/ins-1/obj.pkl", "12345");
    link(
        r,
        "var/lib/cloud/instance",
        "/var/lib/cloud/instances/ins-1",
    );
    write(r, "var/log/cloud-init-output.log", "abc");
    let before = snapshot(r);
    let (out, _) = run(&["clean", "--dry-run"], r, 0);
    assert_eq!(
        out,
        format!(
            "would remove symlink var/lib/cloud/instance (30 bytes)\n\
             would remove file var/lib/cloud/instances/ins-1/obj.pkl (5 bytes)\n\
             would remove directory var/lib/cloud/instances/ins-1\n\
             would remove directory var/lib/cloud/instances\n\
             would remove directory var/lib/cloud\n\
             would remove file var/log/cloud-init-output.log (3 bytes)\n\
             clean: dry run: 6 path(s), 38 bytes in {}; nothing removed\n",
            r.display()
        )
    );
    assert_eq!(snapshot(r), before);
    let (out, _) = run(&["clean", "--format", "json"], r, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["mode"], "apply");
    assert_eq!(doc["removed"].as_array().unwrap().len(), 6);
    assert!(!r.join("var/lib/cloud").exists());
    assert!(!r.join("var/log/cloud-init-output.log").exists());
    run(&["doctor"], r, 0);
}

#[test]
fn clean_refuses_host_keys_nothing_regenerates_and_removes_nothing() {
    let root = healthy();
    let r = root.path();
    let no_ssh_module = "datasource_list: [ ConfigDrive ]\ncloud_init_modules: [ seed_random ]\n";
    write(r, "etc/cloud/cloud.cfg", no_ssh_module);
    write(r, "var/lib/cloud/data/instance-id", "ins-1\n");
    let before = snapshot(r);
    let (_, err) = run(&["clean", "--ssh-host-keys"], r, 1);
    assert!(
        err.starts_with("error: --ssh-host-keys refused: nothing regenerates host keys"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(snapshot(r), before);
}

#[test]
fn clean_never_follows_a_link_out_of_the_root() {
    let host = tempfile::tempdir().unwrap();
    write(host.path(), "canary/file", "host data");
    let root = healthy();
    let r = root.path();
    link(r, "var/lib/cloud", "/");
    link(
        r,
        "var/log/cloud-init.log",
        host.path().join("canary/file").to_str().unwrap(),
    );
    link(
        r,
        "var/log/cloud-init-output.log",
        host.path().join("canary").to_str().unwrap(),
    );
    run(&["clean"], r, 0);
    assert_eq!(
        fs::read_to_string(host.path().join("canary/file")).unwrap(),
        "host data"
    );
    assert!(r.join("etc/cloud/cloud.cfg").exists());
    assert!(fs::symlink_metadata(r.join("var/lib/cloud")).is_err());
    assert!(fs::symlink_metadata(r.join("var/log/cloud-init.log")).is_err());
}

#[test]
fn doctor_and_clean_find_an_image_root_without_cloud_cfg_by_os_release() {
    use common_images::{MIB, ext4_from, gpt_disk_around, sha256};
    let dir = tempfile::tempdir().unwrap();
    // A root without cloud-init, with a previous instance's state.
    let content = dir.path().join("content");
    write(&content, "etc/os-release", "ID=debian\n");
    write(&content, "var/lib/cloud/data/instance-id", "ins-1\n");
    let fs_file = dir.path().join("root.fs");
    ext4_from(&content, &fs_file, 32 * MIB);
    let image = dir.path().join("disk.img");
    gpt_disk_around(&image, &fs_file);
    let before = sha256(&image);

    let (out, _) = run(&["doctor", "--format", "json"], &image, 4);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["image"]["partition"], 2);
    assert_eq!(doc["image"]["filesystem"], "ext4");
    let ids: Vec<&str> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cloud-init-not-installed", "previous-instance-state"]);
    assert_eq!(sha256(&image), before, "doctor changed the image");
    // Nothing to fix: not even mounted read-write.
    run(&["doctor", "--fix"], &image, 4);
    assert_eq!(
        sha256(&image),
        before,
        "doctor --fix with nothing to fix changed the image"
    );

    let (out, _) = run(&["clean", "--dry-run"], &image, 0);
    assert!(
        out.contains("would remove file var/lib/cloud/data/instance-id (6 bytes)\n"),
        "{out}"
    );
    assert_eq!(sha256(&image), before, "clean --dry-run changed the image");
    run(&["clean"], &image, 0);
    // Nothing left to clean: not even mounted read-write.
    let cleaned = sha256(&image);
    run(&["clean"], &image, 0);
    assert_eq!(
        sha256(&image),
        cleaned,
        "clean with nothing to remove changed the image"
    );
    let (out, _) = run(&["doctor"], &image, 4);
    assert!(!out.contains("previous-instance-state"), "{out}");
    assert!(out.contains("error[cloud-init-not-installed]"), "{out}");
}

/// A healthy root with a previous instance left, and a cloud.cfg whose
/// hostname is not kept yet.
fn built() -> TempDir {
    let root = healthy();
    let r = root.path();
    write(
        r,
        "etc/cloud/cloud.cfg",
        "datasource_list: [ ConfigDrive, None ]\ncloud_init_modules:\n - ssh\n - users-groups\ncloud_final_modules:\n - scripts-user\n",
    );
    write(r, "var/lib/cloud/data/instance-id", "ins-1\n");
    root
}

#[test]
fn keep_and_clean_in_one_run() {
    let root = built();
    let r = root.path();
    let (out, err) = run(&["--keep", "hostname", "--clean"], r, 0);
    assert!(
        out.starts_with("--- a/etc/cloud/cloud.cfg\n"),
        "stdout is only the diff: {out}"
    );
    assert!(
        err.contains("removed file var/lib/cloud/data/instance-id (6 bytes)\n"),
        "{err}"
    );
    assert!(
        fs::read_to_string(r.join("etc/cloud/cloud.cfg"))
            .unwrap()
            .contains("preserve_hostname: true")
    );
    assert!(!r.join("var/lib/cloud").exists());
    run(&["doctor"], r, 0);
    // Kept and clean: --check has nothing pending.
    run(&["--keep", "hostname", "--clean", "--check"], r, 0);
}

#[test]
fn keep_and_clean_dry_run_and_check_change_nothing() {
    let root = built();
    let r = root.path();
    let before = snapshot(r);
    let (_, err) = run(&["--keep", "hostname", "--clean", "--dry-run"], r, 0);
    assert!(
        err.contains("would remove directory var/lib/cloud\n"),
        "{err}"
    );
    run(&["--keep", "hostname", "--clean", "--check"], r, 3);
    assert_eq!(snapshot(r), before);
    // Only the leftovers pending is still pending.
    run(&["--keep", "hostname"], r, 0);
    run(&["--keep", "hostname", "--clean", "--check"], r, 3);
    run(&["--keep", "hostname", "--check"], r, 0);
}

#[test]
fn keep_and_clean_json_is_one_document_with_a_clean_member() {
    let root = built();
    let (out, _) = run(
        &[
            "--keep",
            "hostname",
            "--clean=machine-id",
            "--format",
            "json",
        ],
        root.path(),
        0,
    );
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["result"], "changed");
    assert_eq!(doc["clean"]["mode"], "apply");
    assert_eq!(
        doc["clean"]["removed"].as_array().unwrap().last().unwrap()["path"],
        "var/lib/cloud"
    );
}

#[test]
fn keys_with_clean_ssh_host_keys_is_refused_before_anything_is_written() {
    // The keys profile removes `ssh`: nothing would regenerate the keys.
    let root = built();
    let r = root.path();
    let before = snapshot(r);
    let (_, err) = run(&["--keep", "keys", "--clean=ssh-host-keys"], r, 1);
    assert!(err.starts_with("error: --ssh-host-keys refused"), "{err}");
    assert_eq!(snapshot(r), before);
    let (_, err) = run(&["--keep", "hostname", "--clean=hostname"], r, 2);
    assert!(err.contains("unknown --clean extra `hostname`"), "{err}");
}

#[test]
fn hostile_entries_neither_hang_nor_escape_doctor() {
    let host = tempfile::tempdir().unwrap();
    write(host.path(), "fstab", "/dev/sda1 / ext4 defaults 0 1\n");
    let root = healthy();
    let r = root.path();
    // A FIFO would block a naive reader; a link loop and links to the host must not be followed out.
    nix::unistd::mkfifo(
        &r.join("etc/fstab"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    fs::remove_file(r.join("etc/os-release")).unwrap();
    link(r, "etc/os-release", "/etc/os-release-loop");
    link(r, "etc/os-release-loop", "/etc/os-release");
    link(
        r,
        "etc/default/grub",
        host.path().join("fstab").to_str().unwrap(),
    );
    link(r, "boot/config-9.9.9", "/");
    let (out, _) = run(&["doctor", "--verbose"], r, 0);
    // The host's fstab (with /dev/sda1) was not read through the link.
    assert!(!out.contains("fstab-device-name"), "{out}");
    assert!(out.contains("ok[import-files-ok]"), "{out}");
}
