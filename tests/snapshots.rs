//! Snapshots (insta, under tests/snapshots/) of what a person reviews: the
//! unified diff and the warnings of `--keep all` on three real fixtures, and
//! the JSON report of the real binary.
//!
//! To update after an intended change: `INSTA_UPDATE=always cargo test --test
//! snapshots`, then review the changed .snap files with `git diff`.

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use prepare_image::guest::cloudinit::effective::ConfigSet;
use prepare_image::guest::cloudinit::plan;
use prepare_image::guest::cloudinit::profile;
use prepare_image::report::unified_diff;
use serde_json::json;

const CLOUD_CFG: &str = "etc/cloud/cloud.cfg";

fn fixture(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cloud-cfg")
            .join(name),
    )
    .unwrap()
}

/// (diff, warnings) of `--keep all` on a fixture as the only cloud.cfg.
fn keep_all(name: &str) -> (String, serde_json::Value) {
    let catalogue = profile::built_in();
    let all = profile::select(&catalogue, "all").unwrap();
    let set = ConfigSet::from_texts(vec![(PathBuf::from(CLOUD_CFG), fixture(name))]).unwrap();
    let plan = plan::plan(&set, &all).unwrap();
    let file = &plan.files[0];
    let diff = unified_diff(&file.path, &file.old_text, &file.new_text);
    let warnings = json!(
        plan.warnings
            .iter()
            .map(|w| json!({"id": w.id, "text": w.text}))
            .collect::<Vec<_>>()
    );
    (diff, warnings)
}

#[test]
fn keep_all_tencent_centos() {
    let (diff, warnings) = keep_all("tencent-centos-rhel8.5.cfg");
    insta::assert_snapshot!("keep_all_diff_tencent_centos", diff);
    insta::assert_json_snapshot!("keep_all_warnings_tencent_centos", warnings);
}

#[test]
fn keep_all_ubuntu_26_04() {
    let (diff, warnings) = keep_all("ubuntu-26.04-subiquity.cfg");
    insta::assert_snapshot!("keep_all_diff_ubuntu_26_04", diff);
    insta::assert_json_snapshot!("keep_all_warnings_ubuntu_26_04", warnings);
}

#[test]
fn keep_all_debian_bookworm() {
    let (diff, warnings) = keep_all("debian-bookworm-22.4.2-1+deb12u4.cfg");
    insta::assert_snapshot!("keep_all_diff_debian_bookworm", diff);
    insta::assert_json_snapshot!("keep_all_warnings_debian_bookworm", warnings);
}

#[test]
fn json_report_of_a_dry_run() {
    let root = tempfile::TempDir::new().unwrap();
    fs::create_dir_all(root.path().join("etc/cloud")).unwrap();
    let cfg = root.path().join(CLOUD_CFG);
    let original = fixture("tencent-centos-rhel8.5.cfg");
    fs::write(&cfg, &original).unwrap();

    let out = Command::cargo_bin("prepare-image")
        .unwrap()
        .env("NO_COLOR", "1")
        .args(["--keep", "hostname,dns", "--dry-run", "--format", "json"])
        .arg(root.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    // A dry run writes nothing.
    assert_eq!(fs::read_to_string(&cfg).unwrap(), original);

    let root_path = root.path().to_str().unwrap();
    assert!(stdout.contains(root_path), "the report names its root");
    let redacted = stdout.replace(root_path, "[ROOT]");
    let report: serde_json::Value = serde_json::from_str(&redacted)
        .unwrap_or_else(|e| panic!("stdout is one JSON document ({e}):\n{stdout}"));
    assert_eq!(report["root"], "[ROOT]");
    insta::assert_json_snapshot!("json_report_keep_hostname_dns_dry_run", report);
}
