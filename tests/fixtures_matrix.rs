//! Every real cloud.cfg fixture × every built-in profile (and `all`), planned
//! as the CLI plans it, with every promise checked independently of the
//! planner's own verification: the result parses, means exactly the intended
//! change, keeps what was asked, leaves every other line alone, is a fixed
//! point, and keeps the file's line endings and missing final newline.
//!
//! Run with `cargo test --test fixtures_matrix -- --nocapture` to see the
//! per-fixture table of what `--keep all` changes.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use prepare_image::guest::cloudinit::document::{self, Value};
use prepare_image::guest::cloudinit::editor::{self, EditError};
use prepare_image::guest::cloudinit::effective::{ConfigSet, setting_state};
use prepare_image::guest::cloudinit::plan::{self, Plan};
use prepare_image::guest::cloudinit::profile::{self, Profile};
use similar::{ChangeTag, DiffOp, TextDiff};

const CLOUD_CFG: &str = "etc/cloud/cloud.cfg";
const JINJA: &str = "upstream-template-26.2.cfg";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cloud-cfg")
}

/// (file name, text) of every fixture cloud.cfg, sorted, without the Jinja template.
fn fixtures() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cfg"))
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_string(),
                fs::read_to_string(&p).unwrap(),
            )
        })
        .filter(|(name, _)| name != JINJA)
        .collect();
    out.sort();
    assert_eq!(out.len(), 14, "fixtures added or missing: {out:?}");
    out
}

fn fixture(name: &str) -> String {
    fs::read_to_string(fixture_dir().join(name)).unwrap()
}

/// The 9 selections: each built-in profile, then `all`.
fn selections(catalogue: &[Profile]) -> Vec<String> {
    let mut s: Vec<String> = catalogue.iter().map(|p| p.name.clone()).collect();
    assert_eq!(s.len(), 8);
    s.push(profile::ALL.to_string());
    s
}

fn single(text: &str) -> ConfigSet {
    ConfigSet::from_texts(vec![(PathBuf::from(CLOUD_CFG), text.to_string())]).unwrap()
}

fn plan_one(text: &str, selected: &[&Profile]) -> Plan {
    plan::plan(&single(text), selected).unwrap_or_else(|e| panic!("plan failed: {e:#}"))
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches([' ', '\t']).starts_with('#')
}

/// Lines without their terminators (so LF and CRLF compare equal).
fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n')
        .map(|l| l.trim_end_matches('\n').trim_end_matches('\r'))
        .collect()
}

/// Whether `needle` occurs in `hay` in order (not necessarily contiguously).
fn is_subsequence<T: PartialEq>(needle: &[T], hay: &[T]) -> bool {
    let mut it = hay.iter();
    needle.iter().all(|n| it.any(|h| h == n))
}

fn is_char_subsequence(needle: &str, hay: &str) -> bool {
    let n: Vec<char> = needle.chars().collect();
    let h: Vec<char> = hay.chars().collect();
    is_subsequence(&n, &h)
}

/// Checks that the edit touched only the lines it names, concretely, on the
/// line diff between `old` and `new`:
/// - every removed line is a line named by a change (a module-list entry, a
///   list value, the key line whose value was replaced), and no comment line;
/// - every line not named by a change is still there, in order;
/// - every added line either replaces a named line (the same line with text
///   removed, or the same key with a new value) or adds one of the settings
///   the profiles add.
fn assert_only_named_lines_changed(ctx: &str, old: &str, new: &str, named: &BTreeSet<usize>) {
    let old_lines = lines(old);
    let new_lines = lines(new);
    let diff = TextDiff::from_slices(&old_lines, &new_lines);
    for group in diff.grouped_ops(0) {
        let mut deleted: Vec<(usize, &str)> = Vec::new();
        let mut inserted: Vec<&str> = Vec::new();
        for op in &group {
            for change in diff.iter_changes(op) {
                match change.tag() {
                    ChangeTag::Delete => {
                        let i = change.old_index().unwrap();
                        deleted.push((i + 1, old_lines[i]));
                    }
                    ChangeTag::Insert => inserted.push(new_lines[change.new_index().unwrap()]),
                    ChangeTag::Equal => {}
                }
            }
        }
        for (n, line) in &deleted {
            assert!(
                !is_comment(line),
                "{ctx}: comment line {n} removed: {line:?}"
            );
            assert!(
                named.contains(n),
                "{ctx}: line {n} removed but no change names it: {line:?} (named: {named:?})"
            );
        }
        for line in &inserted {
            let t = line.trim();
            let adds_setting = t == "preserve_hostname: true"
                || t == "network: {config: disabled}"
                || t == "config: disabled";
            let replaces = deleted.iter().any(|(_, d)| {
                // Text removed from the line (a flow list item), or ` []` for
                // a list that became empty, or the same key with a new value.
                is_char_subsequence(line, d)
                    || is_char_subsequence(&line.replacen(" []", "", 1), d)
                    || d.split_once(':').map(|(k, _)| k) == line.split_once(':').map(|(k, _)| k)
            });
            assert!(
                adds_setting || replaces,
                "{ctx}: unexpected added line {line:?} (removed in that hunk: {deleted:?})"
            );
        }
    }
    let kept: Vec<&str> = old_lines
        .iter()
        .enumerate()
        .filter(|(i, _)| !named.contains(&(i + 1)))
        .map(|(_, l)| *l)
        .collect();
    assert!(
        is_subsequence(&kept, &new_lines),
        "{ctx}: a line not named by any change is missing or out of order"
    );
    let old_comments: Vec<&str> = old_lines
        .iter()
        .copied()
        .filter(|l| is_comment(l))
        .collect();
    let new_comments: Vec<&str> = new_lines
        .iter()
        .copied()
        .filter(|l| is_comment(l))
        .collect();
    assert_eq!(old_comments, new_comments, "{ctx}: comment lines changed");
}

/// All checks for one fixture text and one selection; returns the plan.
fn check(ctx: &str, text: &str, selected: &[&Profile]) -> Plan {
    let set = single(text);
    let plan = plan_one(text, selected);
    assert_eq!(plan.files.len(), 1, "{ctx}");
    let file = &plan.files[0];
    assert_eq!(file.old_text, text, "{ctx}");
    let new = &file.new_text;
    assert_eq!(file.changed(), !file.changes.is_empty(), "{ctx}");

    // Re-parses, and means exactly the intended change of the old meaning.
    let new_doc = document::parse(new).unwrap_or_else(|e| panic!("{ctx}: new text: {e}"));
    let mut expected = document::parse(text).unwrap().to_value();
    for p in selected {
        for pe in &p.edits {
            editor::apply_to_value(&mut expected, &pe.edit);
        }
    }
    assert_eq!(new_doc.to_value(), expected, "{ctx}: meaning");

    // Every requested setting is kept afterwards, and the plan says so.
    let new_set = single(new);
    for p in selected {
        let state = setting_state(&new_set, p);
        assert!(
            state.kept,
            "{ctx}: {} not kept: {:?}",
            p.name, state.reasons
        );
    }
    assert!(plan.after.iter().all(|s| s.kept), "{ctx}");
    assert_eq!(
        plan.before,
        selected
            .iter()
            .map(|p| setting_state(&set, p))
            .collect::<Vec<_>>()
    );
    // Already kept before means nothing to do.
    if plan.before.iter().all(|s| s.kept) {
        assert!(!file.changed(), "{ctx}: kept already, but edited");
    }

    // Only the lines named by a change differ.
    let named: BTreeSet<usize> = file.changes.iter().map(|c| c.line).collect();
    assert_only_named_lines_changed(ctx, text, new, &named);

    // A second run changes nothing.
    let again = plan_one(new, selected);
    assert!(
        !again.pending() && again.files[0].changes.is_empty(),
        "{ctx}: second run changed {:?}",
        again.files[0].changes
    );
    plan
}

#[test]
fn every_fixture_with_every_profile() {
    let catalogue = profile::built_in();
    let mut cases = 0;
    for (name, text) in fixtures() {
        assert!(!text.contains('\r'), "{name}: fixtures are LF");
        for sel in selections(&catalogue) {
            let selected = profile::select(&catalogue, &sel).unwrap();
            let ctx = format!("{name} --keep {sel}");
            let plan = check(&ctx, &text, &selected);
            let lf_new = plan.files[0].new_text.clone();

            // CRLF: the same edit, with CRLF on every line.
            let crlf = text.replace('\n', "\r\n");
            let crlf_plan = check(&format!("{ctx} (CRLF)"), &crlf, &selected);
            let crlf_new = &crlf_plan.files[0].new_text;
            assert_eq!(*crlf_new, lf_new.replace('\n', "\r\n"), "{ctx} (CRLF)");
            assert!(
                !crlf_new.replace("\r\n", "").contains('\n'),
                "{ctx} (CRLF): bare LF introduced"
            );
            assert_eq!(
                crlf_plan.files[0].changes, plan.files[0].changes,
                "{ctx} (CRLF): changes differ"
            );

            // No final newline: stays without one, otherwise the same edit.
            let bare = text.strip_suffix('\n').unwrap();
            let bare_plan = check(&format!("{ctx} (no final newline)"), bare, &selected);
            let bare_new = &bare_plan.files[0].new_text;
            assert!(!bare_new.ends_with('\n'), "{ctx}: final newline added");
            assert_eq!(
                bare_new.as_str(),
                lf_new.strip_suffix('\n').unwrap(),
                "{ctx} (no final newline)"
            );

            // Both at once.
            let crlf_bare = crlf.strip_suffix("\r\n").unwrap();
            let cb_plan = check(
                &format!("{ctx} (CRLF, no final newline)"),
                crlf_bare,
                &selected,
            );
            assert_eq!(
                cb_plan.files[0].new_text,
                lf_new.strip_suffix('\n').unwrap().replace('\n', "\r\n"),
                "{ctx} (CRLF, no final newline)"
            );
            cases += 4;
        }
    }
    eprintln!("fixtures_matrix: {cases} fixture × selection × line-ending cases checked");
}

/// The per-fixture table of `--keep all`, for notes; and a few exact totals.
#[test]
fn keep_all_table() {
    let catalogue = profile::built_in();
    let all = profile::select(&catalogue, "all").unwrap();
    let names: Vec<&str> = catalogue.iter().map(|p| p.name.as_str()).collect();
    eprintln!();
    eprintln!(
        "| fixture | changes (--keep all) | lines -/+ | {} |",
        names.join(" | ")
    );
    eprintln!("|---|---|---|{}", "---|".repeat(names.len()));
    let mut totals = Vec::new();
    for (name, text) in fixtures() {
        let plan = plan_one(&text, &all);
        let file = &plan.files[0];
        let diff = TextDiff::from_lines(&file.old_text, &file.new_text);
        let (mut minus, mut plus) = (0, 0);
        for op in diff.ops() {
            match *op {
                DiffOp::Delete { old_len, .. } => minus += old_len,
                DiffOp::Insert { new_len, .. } => plus += new_len,
                DiffOp::Replace {
                    old_len, new_len, ..
                } => {
                    minus += old_len;
                    plus += new_len;
                }
                DiffOp::Equal { .. } => {}
            }
        }
        let per: Vec<String> = names
            .iter()
            .map(|n| {
                file.changes
                    .iter()
                    .filter(|c| c.profiles.iter().any(|p| p == n))
                    .count()
                    .to_string()
            })
            .collect();
        eprintln!(
            "| {name} | {} | -{minus}/+{plus} | {} |",
            file.changes.len(),
            per.join(" | ")
        );
        totals.push((name, file.changes.len()));
    }
    eprintln!(
        "(a change shared by hostname and hosts, removing scripts-user, counts in both columns)"
    );
    // Pinned, after reading each fixture: the count of target modules
    // present (scripts-user counted once; ssh, ssh-authkey-fingerprints and
    // write-files-deferred included), plus preserve_hostname and network
    // where not already as wanted, plus manage_etc_hosts where set.
    let want = [
        ("amazon-linux-2.cfg", 9),   // network already disabled
        ("arch-linux-23.1.cfg", 11), // write-files-deferred too
        ("debian-bookworm-22.4.2-1+deb12u4.cfg", 11),
        ("huaweicloud-ubuntu-0.7.6.cfg", 9), // network disabled; manage_etc_hosts
        ("openimgcloud-alpine-2025.cfg", 12), // resolv_conf too
        ("pibernetes-raspbian-2022.cfg", 8), // no update_etc_hosts, no ssh-authkey-fingerprints
        ("redhat-rhel-8.5.cfg", 9),          // no ntp
        ("tencent-alinux-48aa7c6.cfg", 10),
        ("tencent-centos-rhel8.5.cfg", 12),    // resolv_conf twice
        ("ubuntu-20.04-ami-20210816.cfg", 10), // no write-files-deferred yet
        ("ubuntu-26.04-subiquity.cfg", 11),
        ("ubuntu-proxmox-template-24.1.cfg", 11),
        ("upstream-freebsd-0.7.9.cfg", 7), // commented-out entries stay
        ("upstream-rhel-26.2.cfg", 11),
    ];
    let want: Vec<(String, usize)> = want.iter().map(|(f, n)| (f.to_string(), *n)).collect();
    assert_eq!(totals, want);
}

fn whats(text: &str, keep: &str) -> Vec<(usize, String)> {
    let catalogue = profile::built_in();
    let selected = profile::select(&catalogue, keep).unwrap();
    plan_one(text, &selected).files[0]
        .changes
        .iter()
        .map(|c| (c.line, c.what.clone()))
        .collect()
}

#[test]
fn tencent_centos_keep_all_exactly() {
    let text = fixture("tencent-centos-rhel8.5.cfg");
    let got = whats(&text, "all");
    // In profile order (hostname, hosts, dns, repos, ntp, passwords, keys,
    // network); the lines are the fixture's. Line 71 is the end of the file.
    let want: Vec<(usize, String)> = [
        (71, "added preserve_hostname: true"),
        (51, "removed `scripts-user` from cloud_final_modules"),
        (
            22,
            "removed `['update_etc_hosts', 'once-per-instance']` from cloud_init_modules",
        ),
        (36, "removed `resolv_conf` from cloud_config_modules"),
        (44, "removed `'resolv_conf'` from unverified_modules"),
        (17, "removed `write-files` from cloud_init_modules"),
        (34, "removed `ntp` from cloud_config_modules"),
        (30, "removed `set-passwords` from cloud_config_modules"),
        (24, "removed `users-groups` from cloud_init_modules"),
        (25, "removed `ssh` from cloud_init_modules"),
        (
            52,
            "removed `ssh-authkey-fingerprints` from cloud_final_modules",
        ),
        (71, "added network: {config: disabled}"),
    ]
    .iter()
    .map(|(l, w)| (*l, w.to_string()))
    .collect();
    assert_eq!(got, want);

    let catalogue = profile::built_in();
    let all = profile::select(&catalogue, "all").unwrap();
    let new = plan_one(&text, &all).files[0].new_text.clone();
    for gone in [
        "write-files",
        "update_etc_hosts",
        "users-groups",
        "set-passwords",
        " - ntp",
        "resolv_conf",
        "scripts-user",
        " - ssh\n",
        "ssh-authkey-fingerprints",
    ] {
        assert!(!new.contains(gone), "{gone} still in\n{new}");
    }
    assert!(new.contains("\nunverified_modules: []\n"), "{new}");
    assert!(
        new.ends_with(
            "  ssh_svcname: sshd\npreserve_hostname: true\nnetwork: {config: disabled}\n"
        ),
        "{new}"
    );
    // Everything else is as it was: 70 lines, minus 9 removed entry lines
    // (the 10th removal edits unverified_modules in place), plus 2 added.
    assert_eq!(text.lines().count(), 70);
    assert_eq!(new.lines().count(), 70 - 9 + 2);
}

#[test]
fn amazon_linux_network_is_already_kept() {
    let text = fixture("amazon-linux-2.cfg");
    assert!(whats(&text, "network").is_empty());
    let catalogue = profile::built_in();
    let network = profile::select(&catalogue, "network").unwrap();
    let state = setting_state(&single(&text), network[0]);
    assert!(state.kept, "{state:?}");
    // The hyphenated spellings are found.
    let got = whats(&text, "hosts,dns");
    let w: Vec<&str> = got.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(
        w,
        [
            "removed `scripts-user` from cloud_final_modules",
            "removed `update-etc-hosts` from cloud_init_modules",
            "removed `resolv-conf` from cloud_init_modules",
        ],
        "{got:?}"
    );
}

#[test]
fn huaweicloud_manage_etc_hosts_localhost_becomes_false() {
    let text = fixture("huaweicloud-ubuntu-0.7.6.cfg");
    let got = whats(&text, "hosts");
    assert!(
        got.contains(&(
            19,
            "set manage_etc_hosts: false (was localhost)".to_string()
        )),
        "{got:#?}"
    );
    let catalogue = profile::built_in();
    let hosts = profile::select(&catalogue, "hosts").unwrap();
    let new = plan_one(&text, &hosts).files[0].new_text.clone();
    assert!(new.contains("\nmanage_etc_hosts: false\n"), "{new}");
    // The network config is already disabled there.
    assert!(whats(&text, "network").is_empty());
}

#[test]
fn manage_etc_hosts_is_not_added_where_absent() {
    // only_where_set: the tencent file has no manage_etc_hosts; none is added.
    let text = fixture("tencent-centos-rhel8.5.cfg");
    let catalogue = profile::built_in();
    let hosts = profile::select(&catalogue, "hosts").unwrap();
    let new = plan_one(&text, &hosts).files[0].new_text.clone();
    assert!(!new.contains("manage_etc_hosts"));
}

#[test]
fn jinja_template_is_refused_at_line_1() {
    let text = fixture(JINJA);
    let catalogue = profile::built_in();
    let all = profile::select(&catalogue, "all").unwrap();
    let edits: Vec<_> = all
        .iter()
        .flat_map(|p| p.edits.iter().map(|e| e.edit.clone()))
        .collect();
    match editor::apply(&text, &edits) {
        Err(EditError::Parse(e)) => {
            assert_eq!(e.line, Some(1), "{e}");
            assert!(e.message.contains("Jinja"), "{e}");
            assert!(e.to_string().starts_with("line 1"), "{e}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    let err = ConfigSet::from_texts(vec![(PathBuf::from(CLOUD_CFG), text.clone())]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("Jinja"), "{msg}");
    assert!(msg.contains("line 1"), "{msg}");
    assert!(msg.contains(CLOUD_CFG), "{msg}");
    // Also with CRLF and a different case of the marker line.
    let crlf = text.replace('\n', "\r\n");
    assert!(matches!(
        editor::apply(&crlf, &edits),
        Err(EditError::Parse(e)) if e.line == Some(1) && e.message.contains("Jinja")
    ));
}

#[test]
fn value_helpers_agree_with_fixture_meanings() {
    // Sanity for the independent checks above: the module lists in the
    // meaning are what the fixture shows.
    let v = document::parse(&fixture("tencent-centos-rhel8.5.cfg"))
        .unwrap()
        .to_value();
    let Some(Value::Seq(init)) = v.get("cloud_init_modules") else {
        panic!("no cloud_init_modules");
    };
    assert_eq!(init.len(), 11);
    assert_eq!(
        init[7],
        Value::seq(vec![
            Value::Str("update_etc_hosts".into()),
            Value::Str("once-per-instance".into())
        ])
    );
}
