//! Regression tests: configuration read exactly as cloud-init 22.4.2 reads
//! it (issue 8, items 3, 5, 7 and the minor items on drop-in names and a
//! `cloud.cfg.d` that is a file). Each builds a root in a temporary
//! directory and goes through `effective::load`, the planner or the command.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;

use assert_cmd::Command;
use tempfile::TempDir;

use prepare_image::access::root::Root;
use prepare_image::guest::cloudinit::effective::{self, ConfigSet, setting_state};
use prepare_image::guest::cloudinit::plan;
use prepare_image::guest::cloudinit::profile::{self, Profile};

/// A root holding `files` (root-relative path bytes, contents) and
/// `links` (path, target).
fn root_with(files: &[(&[u8], &str)], links: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let full = dir.path().join(OsStr::from_bytes(path));
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, text).unwrap();
    }
    for (path, target) in links {
        let full = dir.path().join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        symlink(target, full).unwrap();
    }
    dir
}

fn load(dir: &TempDir) -> anyhow::Result<ConfigSet> {
    effective::load(&Root::open(dir.path())?)
}

fn kept(set: &ConfigSet, name: &str) -> bool {
    let catalogue = profile::built_in();
    let profile = catalogue.iter().find(|p| p.name == name).unwrap();
    setting_state(set, profile).kept
}

fn plan_keep(set: &ConfigSet, keep: &str) -> anyhow::Result<plan::Plan> {
    let catalogue = profile::built_in();
    let selected: Vec<&Profile> = profile::select(&catalogue, keep).unwrap();
    plan::plan(set, &selected)
}

fn prepare_image() -> Command {
    Command::cargo_bin("prepare-image").unwrap()
}

const CFG: &[u8] = b"etc/cloud/cloud.cfg";

// Item 3: booleans as get_cfg_option_bool / translate_bool read them.

#[test]
fn only_true_1_on_yes_are_true() {
    for (spelling, is_true) in [
        ("y", false),
        ("Y", false),
        ("n", false),
        ("'y'", false),
        ("2", false),
        ("yes", true),
        ("'YES '", true),
        ("'on'", true),
        ("1", true),
        ("'1'", true),
        ("True", true),
        ("'true'", true),
    ] {
        let text = format!("preserve_hostname: {spelling}\n");
        let dir = root_with(&[(CFG, &text)], &[]);
        let set = load(&dir).unwrap();
        let catalogue = profile::built_in();
        let hostname = catalogue.iter().find(|p| p.name == "hostname").unwrap();
        let state = setting_state(&set, hostname);
        let preserve = &state.reasons[0];
        assert_eq!(preserve.overwrites, !is_true, "{spelling}: {preserve:?}");
        // The keep makes it true, and then it holds.
        let plan = plan_keep(&set, "hostname").unwrap();
        assert_eq!(plan.files[0].changed(), !is_true, "{spelling}");
        assert!(plan.after.iter().all(|s| s.kept), "{spelling}");
    }
}

#[test]
fn manage_etc_hosts_reads_as_cc_update_etc_hosts() {
    for (spelling, managed) in [
        ("localhost", true),
        ("template", true),
        ("'Template'", true),
        ("true", true),
        ("1", true),
        ("y", false),
        ("false", false),
        ("'False'", false),
        ("~", false),
        ("LOCALHOST", false),
    ] {
        let text = format!("manage_etc_hosts: {spelling}\n");
        let dir = root_with(&[(CFG, &text)], &[]);
        let set = load(&dir).unwrap();
        assert_eq!(kept(&set, "hosts"), !managed, "{spelling}");
    }
}

// Item 5: merge_how / merge_type.

#[test]
fn merge_how_replace_in_cloud_cfg_wins_over_a_drop_in() {
    let dir = root_with(
        &[
            (
                CFG,
                "merge_how: 'dict(replace)+list()+str()'\npreserve_hostname: false\n",
            ),
            (
                b"etc/cloud/cloud.cfg.d/50_host.cfg",
                "preserve_hostname: true\n",
            ),
        ],
        &[],
    );
    let set = load(&dir).unwrap();
    assert_eq!(
        set.effective().get("preserve_hostname"),
        Some(&prepare_image::guest::cloudinit::document::Value::Bool(
            false
        ))
    );
    assert!(!kept(&set, "hostname"));
    // Every file setting it is edited, so it holds under the merge too.
    let plan = plan_keep(&set, "hostname").unwrap();
    assert!(plan.after.iter().all(|s| s.kept));
}

#[test]
fn merge_how_appending_lists_keeps_cloud_cfg_modules() {
    let dir = root_with(
        &[
            (
                CFG,
                "merge_how: 'dict(recurse_array)+list(append)+str()'\npreserve_hostname: true\ncloud_final_modules: [scripts-user]\n",
            ),
            (
                b"etc/cloud/cloud.cfg.d/50_final.cfg",
                "cloud_final_modules: [ntp]\n",
            ),
        ],
        &[],
    );
    let set = load(&dir).unwrap();
    // The drop-in's list does not replace cloud.cfg's: scripts-user runs.
    assert!(!kept(&set, "hostname"));
    assert_eq!(set.module_entries("scripts-user").len(), 1);
    let plan = plan_keep(&set, "hostname").unwrap();
    assert!(plan.after.iter().all(|s| s.kept));
}

#[test]
fn merge_how_cloud_init_fails_on_is_refused_with_file_and_line() {
    for merge_how in ["'foo()'", "5", "'dict(replace'", "[{name: dict}]"] {
        let text = format!("a: 1\nmerge_how: {merge_how}\n");
        let dir = root_with(
            &[(CFG, "b: 2\n"), (b"etc/cloud/cloud.cfg.d/10.cfg", &text)],
            &[],
        );
        let err = format!("{:#}", load(&dir).unwrap_err());
        assert!(
            err.contains("etc/cloud/cloud.cfg.d/10.cfg: line 2:") && err.contains("merge_how"),
            "{merge_how}: {err}"
        );
    }
}

#[test]
fn the_planner_refuses_an_edit_a_merge_how_would_defeat() {
    // Without a dict merger, cloud-init merges nothing of cloud.cfg: adding
    // network.config there would have no effect. The verification sees it.
    let dir = root_with(&[(CFG, "merge_how: 'list()'\na: 1\n")], &[]);
    let set = load(&dir).unwrap();
    assert_eq!(set.effective().get("a"), None);
    let err = format!("{:#}", plan_keep(&set, "network").unwrap_err());
    assert!(
        err.contains("etc/cloud/cloud.cfg: line 1:") && err.contains("merge_how"),
        "{err}"
    );
}

// Item 7: each file once per resolved path, read as often as cloud-init reads it.

#[test]
fn a_file_reached_twice_is_planned_once() {
    let dir = root_with(
        &[
            (CFG, "a: 1\n"),
            (
                b"etc/cloud/cloud.cfg.d/50_host.cfg",
                "preserve_hostname: false\n",
            ),
        ],
        &[
            ("etc/cloud/cloud.cfg.d/60_again.cfg", "50_host.cfg"),
            ("etc/cloud/cloud.cfg.d/00_base.cfg", "/etc/cloud/cloud.cfg"),
        ],
    );
    let set = load(&dir).unwrap();
    assert_eq!(set.files.len(), 2, "{:?}", set.files);
    assert_eq!(set.drop_ins, [0, 1, 1]);
    let plan = plan_keep(&set, "hostname").unwrap();
    assert_eq!(plan.files.len(), 2);
    let root = dir.path().display().to_string();
    let out = prepare_image()
        .args(["--keep", "hostname", "--dry-run", &root])
        .output()
        .unwrap();
    assert!(out.status.success());
    let patch = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        patch.matches("+++ ").count(),
        1,
        "one file changes, once:\n{patch}"
    );
    prepare_image()
        .args(["--keep", "hostname", &root])
        .assert()
        .code(0);
    assert_eq!(
        fs::read_to_string(dir.path().join("etc/cloud/cloud.cfg.d/50_host.cfg")).unwrap(),
        "preserve_hostname: true\n"
    );
    prepare_image()
        .args(["--keep", "hostname", "--check", &root])
        .assert()
        .code(0);
}

#[test]
fn conf_d_naming_etc_cloud_reads_cloud_cfg_twice() {
    let dir = root_with(
        &[(
            CFG,
            "conf_d: /etc/cloud\npreserve_hostname: no\ncloud_final_modules: [scripts-user]\n",
        )],
        &[],
    );
    let set = load(&dir).unwrap();
    assert_eq!(set.files.len(), 1);
    assert_eq!(set.drop_ins, [0]);
    let plan = plan_keep(&set, "hostname").unwrap();
    assert_eq!(plan.files.len(), 1);
    assert_eq!(
        plan.files[0].new_text,
        "conf_d: /etc/cloud\npreserve_hostname: true\ncloud_final_modules: []\n"
    );
    assert!(plan.after.iter().all(|s| s.kept));
}

// Minor items.

#[test]
fn non_utf8_drop_in_names_are_read() {
    let dir = root_with(
        &[
            (CFG, "preserve_hostname: false\n"),
            (
                b"etc/cloud/cloud.cfg.d/h\xf4te.cfg",
                "preserve_hostname: true\n",
            ),
        ],
        &[],
    );
    let set = load(&dir).unwrap();
    assert_eq!(set.files.len(), 2);
    assert!(set.effective().get("preserve_hostname").is_some());
    let catalogue = profile::built_in();
    let hostname = catalogue.iter().find(|p| p.name == "hostname").unwrap();
    assert!(!setting_state(&set, hostname).reasons[0].overwrites);
}

#[test]
fn a_cloud_cfg_d_that_is_a_file_is_skipped() {
    let dir = root_with(
        &[
            (CFG, "preserve_hostname: true\n"),
            (b"etc/cloud/cloud.cfg.d", "preserve_hostname: false\n"),
        ],
        &[],
    );
    let set = load(&dir).unwrap();
    assert_eq!(set.files.len(), 1);
    prepare_image()
        .args(["status", &dir.path().display().to_string()])
        .assert()
        .code(0);
}

#[test]
fn a_conf_d_that_is_not_a_string_is_refused() {
    for conf_d in ["5", "[a]", "{a: 1}", "true"] {
        let text = format!("a: 1\nconf_d: {conf_d}\n");
        let dir = root_with(&[(CFG, &text)], &[]);
        let err = format!("{:#}", load(&dir).unwrap_err());
        assert!(
            err.contains("etc/cloud/cloud.cfg: line 2: conf_d is") && err.contains("TypeError"),
            "{conf_d}: {err}"
        );
    }
    // Empty, null or false: no drop-ins, as in cloud-init.
    for conf_d in ["''", "~", "false", "0"] {
        let text = format!("conf_d: {conf_d}\n");
        let dir = root_with(
            &[(CFG, &text), (b"etc/cloud/cloud.cfg.d/1.cfg", "a: 1\n")],
            &[],
        );
        assert_eq!(load(&dir).unwrap().files.len(), 1, "{conf_d}");
    }
}

#[test]
fn templates_are_detected_with_cloud_init_pattern() {
    for header in [
        "## template: jinja",
        "##template:JINJA",
        "## Template: Jinja ",
    ] {
        let text = format!("{header}\na: 1\n");
        let dir = root_with(
            &[(CFG, "b: 1\n"), (b"etc/cloud/cloud.cfg.d/t.cfg", &text)],
            &[],
        );
        let err = format!("{:#}", load(&dir).unwrap_err());
        assert!(err.contains("Jinja template"), "{header}: {err}");
    }
    // A basic template is read as it is.
    let dir = root_with(&[(CFG, "## template: basic\na: 1\n")], &[]);
    assert!(load(&dir).is_ok());
}

#[test]
fn an_ignored_drop_in_counts_for_nothing() {
    let dir = root_with(
        &[
            (CFG, "preserve_hostname: false\n"),
            (
                b"etc/cloud/cloud.cfg.d/50.cfg",
                "preserve_hostname: true\nx: [1\n",
            ),
            (b"etc/cloud/cloud.cfg.d/60.cfg", "- a\n"),
        ],
        &[],
    );
    let set = load(&dir).unwrap();
    assert!(set.files[1].ignored.is_some() && set.files[2].ignored.is_some());
    assert!(!kept(&set, "hostname"));
    let plan = plan_keep(&set, "hostname").unwrap();
    assert!(!plan.files[1].changed() && !plan.files[2].changed());
    assert!(plan.files[0].changed());
}
