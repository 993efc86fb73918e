//! cloud.cfg with cloud.cfg.d drop-ins, built from the real fixtures: the
//! edit goes where the value is decided, the effective configuration is what
//! was asked, and `decider` names the file and line that decide.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use prepare_image::guest::cloudinit::document::{self, Value};
use prepare_image::guest::cloudinit::editor;
use prepare_image::guest::cloudinit::effective::{ConfigSet, setting_state};
use prepare_image::guest::cloudinit::plan::{self, Plan};
use prepare_image::guest::cloudinit::profile::{self, Profile};

const CLOUD_CFG: &str = "etc/cloud/cloud.cfg";
const DROP_IN_DIR: &str = "etc/cloud/cloud.cfg.d";

fn fixture(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cloud-cfg")
            .join(name),
    )
    .unwrap()
}

fn drop_in_path(name: &str) -> PathBuf {
    Path::new(DROP_IN_DIR).join(name)
}

/// cloud.cfg plus drop-ins (name, text), in cloud-init's read order.
fn config_set(base: &str, drop_ins: &[(&str, &str)]) -> ConfigSet {
    let mut drop_ins: Vec<(&str, &str)> = drop_ins.to_vec();
    drop_ins.sort();
    let mut files = vec![(PathBuf::from(CLOUD_CFG), base.to_string())];
    files.extend(
        drop_ins
            .iter()
            .map(|(n, t)| (drop_in_path(n), t.to_string())),
    );
    ConfigSet::from_texts(files).unwrap()
}

fn select(keep: &str) -> Vec<Profile> {
    let catalogue = profile::built_in();
    profile::select(&catalogue, keep)
        .unwrap()
        .into_iter()
        .cloned()
        .collect()
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn is_subsequence<T: PartialEq>(needle: &[T], hay: &[T]) -> bool {
    let mut it = hay.iter();
    needle.iter().all(|n| it.any(|h| h == n))
}

/// Plans, and checks what must hold for any plan: each new text parses;
/// lines not named by a change are still there in order, comments all; the
/// new effective configuration is the intended change of the old one; every
/// setting is kept; a second plan changes nothing.
fn run(set: &ConfigSet, keep: &str) -> Plan {
    let selected = select(keep);
    let refs: Vec<&Profile> = selected.iter().collect();
    let plan = plan::plan(set, &refs).unwrap_or_else(|e| panic!("--keep {keep}: {e:#}"));
    for f in &plan.files {
        document::parse(&f.new_text)
            .unwrap_or_else(|e| panic!("{}: new text: {e}", f.path.display()));
        let named: BTreeSet<usize> = f.changes.iter().map(|c| c.line).collect();
        let old: Vec<&str> = f.old_text.lines().collect();
        let new: Vec<&str> = f.new_text.lines().collect();
        let kept: Vec<&str> = old
            .iter()
            .enumerate()
            .filter(|(i, _)| !named.contains(&(i + 1)))
            .map(|(_, l)| *l)
            .collect();
        assert!(is_subsequence(&kept, &new), "{}", f.path.display());
        let comments = |v: &[&str]| -> Vec<String> {
            v.iter()
                .filter(|l| is_comment(l))
                .map(|l| l.to_string())
                .collect()
        };
        assert_eq!(comments(&old), comments(&new), "{}", f.path.display());
        assert_eq!(f.changed(), !f.changes.is_empty(), "{}", f.path.display());
    }
    let new_set = set
        .with_texts(
            &plan
                .files
                .iter()
                .map(|f| f.new_text.clone())
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let mut expected = set.effective();
    for p in &selected {
        for pe in &p.edits {
            editor::apply_to_value(&mut expected, &pe.edit);
        }
    }
    assert_eq!(new_set.effective(), expected, "--keep {keep}: effective");
    for p in &selected {
        let state = setting_state(&new_set, p);
        assert!(state.kept, "{}: {:?}", p.name, state.reasons);
    }
    let again = plan::plan(&new_set, &refs).unwrap();
    assert!(!again.pending(), "--keep {keep}: second run changes");
    plan
}

fn new_set(set: &ConfigSet, plan: &Plan) -> ConfigSet {
    set.with_texts(
        &plan
            .files
            .iter()
            .map(|f| f.new_text.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

fn file<'a>(plan: &'a Plan, path: &str) -> &'a plan::FilePlan {
    plan.files
        .iter()
        .find(|f| f.path == Path::new(path))
        .unwrap_or_else(|| panic!("no {path} in the plan"))
}

fn drop_in<'a>(plan: &'a Plan, name: &str) -> &'a plan::FilePlan {
    let path = drop_in_path(name);
    plan.files.iter().find(|f| f.path == path).unwrap()
}

/// (path, line, complete) of the decider.
fn decided(set: &ConfigSet, path: &[&str]) -> Option<(PathBuf, usize, bool)> {
    set.decider(path)
        .map(|d| (set.files[d.file].path.clone(), d.line, d.complete))
}

fn strs(items: &[&str]) -> Value {
    Value::seq(items.iter().map(|s| Value::Str(s.to_string())).collect())
}

// (a) A drop-in that redefines cloud_final_modules with scripts-user.
const FINAL_DROP_IN: &str = "\
# Site override: our own final stage.
cloud_final_modules:
  - package_update_upgrade_install
  - [scripts_user, always]  # run user scripts on every boot
  - final_message
";

#[test]
fn a_drop_in_module_list_is_edited_too() {
    let set = config_set(
        &fixture("ubuntu-26.04-subiquity.cfg"),
        &[("90-final.cfg", FINAL_DROP_IN)],
    );
    // Before: the drop-in's list decides, and scripts_user runs from it.
    assert_eq!(
        decided(&set, &["cloud_final_modules"]),
        Some((drop_in_path("90-final.cfg"), 2, true))
    );
    let before = setting_state(&set, &select("hostname")[0]);
    let runs: Vec<_> = before
        .reasons
        .iter()
        .filter(|r| r.overwrites)
        .map(|r| (r.file.clone().unwrap(), r.line.unwrap()))
        .collect();
    assert!(
        runs.contains(&(drop_in_path("90-final.cfg"), 4)),
        "{before:?}"
    );

    let plan = run(&set, "hostname");
    let base = file(&plan, CLOUD_CFG);
    assert!(
        base.changes
            .iter()
            .any(|c| c.what == "removed `scripts_user` from cloud_final_modules"),
        "{:?}",
        base.changes
    );
    let d = drop_in(&plan, "90-final.cfg");
    assert_eq!(d.changes.len(), 1, "{:?}", d.changes);
    assert_eq!(d.changes[0].line, 4);
    assert_eq!(d.changes[0].profiles, ["hostname"]);
    assert_eq!(
        d.new_text,
        "# Site override: our own final stage.\ncloud_final_modules:\n  - package_update_upgrade_install\n  - final_message\n"
    );
    let after = new_set(&set, &plan);
    assert_eq!(
        after.effective().get("cloud_final_modules"),
        Some(&strs(&["package_update_upgrade_install", "final_message"]))
    );
    assert!(after.module_entries("scripts-user").is_empty());
    assert_eq!(
        decided(&after, &["cloud_final_modules"]),
        Some((drop_in_path("90-final.cfg"), 2, true))
    );
}

// (b) manage_etc_hosts: true in a drop-in, with --keep hosts.
#[test]
fn a_drop_in_manage_etc_hosts_is_set_to_false() {
    let set = config_set(
        &fixture("tencent-centos-rhel8.5.cfg"),
        &[(
            "95-hosts.cfg",
            "# hosts from the template\nmanage_etc_hosts: true\n",
        )],
    );
    assert_eq!(
        decided(&set, &["manage_etc_hosts"]),
        Some((drop_in_path("95-hosts.cfg"), 2, true))
    );
    assert!(!setting_state(&set, &select("hosts")[0]).kept);
    let plan = run(&set, "hosts");
    let d = drop_in(&plan, "95-hosts.cfg");
    assert_eq!(
        d.new_text,
        "# hosts from the template\nmanage_etc_hosts: false\n"
    );
    assert_eq!(d.changes.len(), 1);
    assert_eq!(d.changes[0].line, 2);
    assert!(
        d.changes[0].what.contains("this drop-in decides"),
        "{:?}",
        d.changes
    );
    // cloud.cfg: the two modules go; no manage_etc_hosts is added there.
    let base = file(&plan, CLOUD_CFG);
    assert_eq!(base.changes.len(), 2, "{:?}", base.changes);
    assert!(!base.new_text.contains("manage_etc_hosts"));
    let after = new_set(&set, &plan);
    assert_eq!(
        after.effective().get("manage_etc_hosts"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        decided(&after, &["manage_etc_hosts"]),
        Some((drop_in_path("95-hosts.cfg"), 2, true))
    );
}

#[test]
fn manage_etc_hosts_is_set_to_false_in_every_file_that_sets_it() {
    // huaweicloud's cloud.cfg has `manage_etc_hosts: localhost` (line 19).
    let set = config_set(
        &fixture("huaweicloud-ubuntu-0.7.6.cfg"),
        &[("95-hosts.cfg", "manage_etc_hosts: template\n")],
    );
    assert_eq!(
        decided(&set, &["manage_etc_hosts"]),
        Some((drop_in_path("95-hosts.cfg"), 1, true))
    );
    let plan = run(&set, "hosts");
    assert_eq!(
        drop_in(&plan, "95-hosts.cfg").new_text,
        "manage_etc_hosts: false\n"
    );
    let base = file(&plan, CLOUD_CFG);
    assert!(base.new_text.contains("\nmanage_etc_hosts: false\n"));
    assert!(
        base.changes
            .iter()
            .any(|c| c.line == 19 && c.what.contains("manage_etc_hosts")),
        "{:?}",
        base.changes
    );
}

// (c) network in a drop-in.
#[test]
fn a_drop_in_network_config_enabled_is_disabled_there() {
    let base = fixture("tencent-centos-rhel8.5.cfg");
    let set = config_set(&base, &[("50-net.cfg", "network: {config: enabled}\n")]);
    assert_eq!(
        decided(&set, &["network", "config"]),
        Some((drop_in_path("50-net.cfg"), 1, true))
    );
    let plan = run(&set, "network");
    assert_eq!(
        drop_in(&plan, "50-net.cfg").new_text,
        "network: {config: disabled}\n"
    );
    assert!(!file(&plan, CLOUD_CFG).changed(), "cloud.cfg was edited");
    let after = new_set(&set, &plan);
    assert_eq!(
        decided(&after, &["network", "config"]),
        Some((drop_in_path("50-net.cfg"), 1, true))
    );
}

#[test]
fn a_drop_in_network_mapping_without_config_gets_it() {
    let base = fixture("tencent-centos-rhel8.5.cfg");
    for (text, want) in [
        (
            "network: {renderers: [sysconfig]}\n",
            "network: {config: disabled, renderers: [sysconfig]}\n",
        ),
        (
            "# renderer order\nnetwork:\n  renderers: [sysconfig, eni]\n",
            "# renderer order\nnetwork:\n  config: disabled\n  renderers: [sysconfig, eni]\n",
        ),
        // A non-mapping hides cloud.cfg's value: replaced where it is.
        ("network:\n", "network: {config: disabled}\n"),
    ] {
        let set = config_set(&base, &[("50-net.cfg", text)]);
        let plan = run(&set, "network");
        assert_eq!(drop_in(&plan, "50-net.cfg").new_text, want, "{text:?}");
        assert!(
            !file(&plan, CLOUD_CFG).changed(),
            "{text:?}: cloud.cfg edited"
        );
        let after = new_set(&set, &plan);
        let (path, _, complete) = decided(&after, &["network", "config"]).unwrap();
        assert_eq!((path, complete), (drop_in_path("50-net.cfg"), true));
    }
}

#[test]
fn a_drop_in_without_config_over_a_disabled_cloud_cfg_is_kept() {
    // amazon-linux-2 disables network config in cloud.cfg; a drop-in mapping
    // without `config` merges over it and does not hide it.
    let set = config_set(
        &fixture("amazon-linux-2.cfg"),
        &[("50-net.cfg", "network: {renderers: [sysconfig]}\n")],
    );
    assert_eq!(
        decided(&set, &["network", "config"]),
        Some((PathBuf::from(CLOUD_CFG), 26, true))
    );
    let plan = run(&set, "network");
    assert!(!plan.pending());
}

fn ubuntu_26_04() -> ConfigSet {
    config_set(
        &fixture("ubuntu-26.04-subiquity.cfg"),
        &[
            (
                "00-subiquity-disable-cloudinit-networking.cfg",
                &fixture("d/ubuntu-26.04-subiquity-00-subiquity-disable-cloudinit-networking.cfg"),
            ),
            (
                "99-installer.cfg",
                &fixture("d/ubuntu-26.04-subiquity-99-installer.cfg"),
            ),
            (
                "curtin-preserve-sources.cfg",
                &fixture("d/ubuntu-26.04-subiquity-curtin-preserve-sources.cfg"),
            ),
        ],
    )
}

#[test]
fn ubuntu_26_04_subiquity_already_keeps_network() {
    let set = ubuntu_26_04();
    assert_eq!(
        decided(&set, &["network", "config"]),
        Some((
            drop_in_path("00-subiquity-disable-cloudinit-networking.cfg"),
            1,
            true
        ))
    );
    assert!(setting_state(&set, &select("network")[0]).kept);
    let plan = run(&set, "network");
    assert!(!plan.pending());
    assert!(plan.files.iter().all(|f| f.changes.is_empty()));
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
}

#[test]
fn ubuntu_26_04_subiquity_keep_all_edits_only_cloud_cfg() {
    // 99-installer.cfg mentions `preserve_hostname: true` and `write_files:`
    // inside a string; that is no setting, and it is not touched.
    let set = ubuntu_26_04();
    let plan = run(&set, "all");
    for f in &plan.files[1..] {
        assert!(!f.changed(), "{} edited", f.path.display());
    }
    let base = file(&plan, CLOUD_CFG);
    let whats: Vec<&str> = base.changes.iter().map(|c| c.what.as_str()).collect();
    assert!(
        whats.contains(&"set preserve_hostname: true (was false)"),
        "{whats:?}"
    );
    assert!(
        !whats.iter().any(|w| w.contains("network")),
        "network is kept by the drop-in: {whats:?}"
    );
    // The 7 of the guide, plus write_files_deferred, ssh and
    // ssh_authkey_fingerprints (repos and keys profiles).
    assert_eq!(base.changes.len(), 10, "{whats:?}");
}

// (d) preserve_hostname: false in a drop-in over true in cloud.cfg.
#[test]
fn a_drop_in_preserve_hostname_false_is_edited() {
    // cloud.cfg already as `--keep hostname` leaves it.
    let kept_base = run(
        &config_set(&fixture("debian-bookworm-22.4.2-1+deb12u4.cfg"), &[]),
        "hostname",
    )
    .files[0]
        .new_text
        .clone();
    assert!(kept_base.contains("\npreserve_hostname: true\n"));
    let set = config_set(
        &kept_base,
        &[("99-local.cfg", "preserve_hostname: false # set by hand\n")],
    );
    assert_eq!(
        decided(&set, &["preserve_hostname"]),
        Some((drop_in_path("99-local.cfg"), 1, true))
    );
    let state = setting_state(&set, &select("hostname")[0]);
    assert!(!state.kept);
    let plan = run(&set, "hostname");
    assert!(!file(&plan, CLOUD_CFG).changed(), "cloud.cfg edited");
    let d = drop_in(&plan, "99-local.cfg");
    assert_eq!(d.new_text, "preserve_hostname: true # set by hand\n");
    assert_eq!(d.changes.len(), 1);
    assert_eq!(d.changes[0].line, 1);
}

// (e) preserve_hostname: true in a drop-in over false in cloud.cfg.
#[test]
fn a_drop_in_preserve_hostname_true_already_keeps_it() {
    let base = fixture("debian-bookworm-22.4.2-1+deb12u4.cfg");
    let line = base
        .lines()
        .position(|l| l == "preserve_hostname: false")
        .unwrap()
        + 1;
    let set = config_set(&base, &[("99-local.cfg", "preserve_hostname: true\n")]);
    assert_eq!(
        decided(&set, &["preserve_hostname"]),
        Some((drop_in_path("99-local.cfg"), 1, true))
    );
    let plan = run(&set, "hostname");
    let base_plan = file(&plan, CLOUD_CFG);
    // Only scripts-user goes; preserve_hostname: false stays in cloud.cfg.
    assert_eq!(base_plan.changes.len(), 1, "{:?}", base_plan.changes);
    assert!(base_plan.changes[0].what.contains("scripts-user"));
    assert_eq!(
        base_plan.new_text.lines().nth(line - 1),
        Some("preserve_hostname: false")
    );
    assert!(!drop_in(&plan, "99-local.cfg").changed());
    // Before, the reason names the drop-in, not cloud.cfg's line.
    let state = setting_state(&set, &select("hostname")[0]);
    let r = &state.reasons[0];
    assert_eq!(
        (r.file.clone(), r.line, r.overwrites),
        (Some(drop_in_path("99-local.cfg")), Some(1), false)
    );
}

/// Every fixture with its real drop-ins: `--keep all` never edits a drop-in
/// that has no module list and no setting the profiles touch.
#[test]
fn real_drop_ins_are_left_alone() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "debian-bookworm-22.4.2-1+deb12u4.cfg",
            &[(
                "05_logging.cfg",
                "d/debian-bookworm-22.4.2-1+deb12u4-05_logging.cfg",
            )],
        ),
        (
            "tencent-alinux-48aa7c6.cfg",
            &[("99_qcloud.cfg", "d/tencent-alinux-48aa7c6-99_qcloud.cfg")],
        ),
        (
            "ubuntu-20.04-ami-20210816.cfg",
            &[
                ("90_dpkg.cfg", "d/ubuntu-20.04-ami-20210816-90_dpkg.cfg"),
                (
                    "subiquity-disable-cloudinit-networking.cfg",
                    "d/ubuntu-20.04.2-subiquity-disable-cloudinit-networking.cfg",
                ),
            ],
        ),
    ];
    for (base, drop_ins) in cases {
        let texts: Vec<(&str, String)> = drop_ins.iter().map(|(n, f)| (*n, fixture(f))).collect();
        let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let set = config_set(&fixture(base), &refs);
        let plan = run(&set, "all");
        for f in &plan.files[1..] {
            assert!(!f.changed(), "{base}: {} edited", f.path.display());
        }
        assert!(file(&plan, CLOUD_CFG).changed(), "{base}");
        // A drop-in that disables network config keeps cloud.cfg free of it.
        let adds_network = file(&plan, CLOUD_CFG)
            .changes
            .iter()
            .any(|c| c.what.contains("network"));
        let has_net_drop_in = drop_ins.iter().any(|(n, _)| n.contains("networking"));
        assert_eq!(adds_network, !has_net_drop_in, "{base}");
    }
}
