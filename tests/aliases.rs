//! Anchors, aliases and merge keys on every setting the built-in profiles
//! touch: each run either edits (and the plan's verification holds: every
//! file means exactly the intended change, every setting is kept) or refuses
//! with a message that names the line and says to edit by hand. Never an
//! "internal error", never a silent wrong edit.
//!
//! Documents are composed from forms of each setting (explicit, through an
//! alias, anchored and repeated elsewhere, through a top-level or nested
//! `<<` merge key, an anchored list item repeated elsewhere) chosen by a
//! fixed-seed generator: 600 documents by default, each planned with every
//! built-in profile alone and with `all`; `ALIAS_CASES=N` runs N instead.

use std::path::PathBuf;

use prepare_image::guest::cloudinit::document;
use prepare_image::guest::cloudinit::effective::{ConfigSet, setting_state};
use prepare_image::guest::cloudinit::plan;
use prepare_image::guest::cloudinit::profile;

const DEFAULT_CASES: usize = 600;

/// Anchors every form below may use; always at the top of the document.
const ANCHORS: &str = "\
scalar: &S false
defaults: &A
  preserve_hostname: false
  manage_etc_hosts: true
net: &N {config: enabled}
mods: &M [migrator, scripts-user, resolv_conf, update_etc_hosts]
";

const PRESERVE_HOSTNAME: &[&str] = &[
    "",
    "preserve_hostname: false\n",
    "preserve_hostname: yes\n",
    "preserve_hostname: *S\n",
    "preserve_hostname: &P false\nagain: *P\n",
    "preserve_hostname: &P no\n",
];

const TOP_MERGE: &[&str] = &[
    "",
    "<<: *A\n",
    "<<: [*A]\n",
    "<<: [{manage_etc_hosts: false}, *A]\n",
];

const NETWORK: &[&str] = &[
    "",
    "network: {config: enabled}\n",
    "network: *N\n",
    "network:\n  <<: *N\n",
    "network:\n  <<: *N\n  renderers: [eni]\n",
    "network: &NN {config: enabled}\nnet_again: *NN\n",
    "network:\n  <<: *N\n  config: disabled\n",
    "<<: {network: {config: enabled}}\n",
];

const FINAL_MODULES: &[&str] = &[
    "cloud_final_modules: [scripts-user, final-message]\n",
    "cloud_final_modules: *M\n",
    "cloud_final_modules:\n - scripts-user\n - final-message\n",
    "cloud_final_modules:\n - &SU scripts-user\n - final-message\nlisted: [*SU]\n",
    "cloud_final_modules: &FM [scripts-user]\nfinal_again: *FM\n",
    "cloud_final_modules:\n - [scripts-user, always]\n - *S\n",
    "<<: {cloud_final_modules: [scripts-user]}\n",
];

const CONFIG_MODULES: &[&str] = &[
    "",
    "cloud_config_modules: [ntp, resolv_conf, set-passwords]\n",
    "cloud_config_modules: *M\n",
    "cloud_config_modules:\n - ntp\n - &RC resolv_conf\nunverified_modules: [*RC]\n",
];

const INIT_MODULES: &[&str] = &[
    "",
    "cloud_init_modules: [update_etc_hosts, users-groups, ssh, write-files]\n",
    "cloud_init_modules:\n - &UEH update_etc_hosts\n - ssh\nhosts_module: *UEH\n",
];

const MANAGE_ETC_HOSTS: &[&str] = &["", "manage_etc_hosts: true\n", "manage_etc_hosts: *S\n"];

const UNVERIFIED: &[&str] = &[
    "",
    "unverified_modules: [resolv_conf]\n",
    "unverified_modules: *M\n",
];

/// xorshift64*: a fixed, dependency-free sequence, so every run tests the
/// same documents.
struct Rng(u64);

impl Rng {
    fn pick<'a>(&mut self, forms: &[&'a str]) -> &'a str {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let n = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        forms[(n >> 33) as usize % forms.len()]
    }
}

fn document(rng: &mut Rng) -> String {
    let mut parts = [
        rng.pick(PRESERVE_HOSTNAME),
        rng.pick(TOP_MERGE),
        rng.pick(NETWORK),
        rng.pick(FINAL_MODULES),
        rng.pick(CONFIG_MODULES),
        rng.pick(INIT_MODULES),
        rng.pick(MANAGE_ETC_HOSTS),
        rng.pick(UNVERIFIED),
    ];
    // Two top-level `<<` keys are valid YAML too, but a top level with a
    // key twice is a different test (duplicate keys): keep one merge.
    let merges: Vec<usize> = (0..parts.len())
        .filter(|&i| parts[i].starts_with("<<"))
        .collect();
    for &i in merges.iter().skip(1) {
        parts[i] = "";
    }
    // The keys outside the fixed anchors must be distinct too.
    let mut seen: Vec<&str> = Vec::new();
    for part in parts.iter_mut() {
        let keys: Vec<&str> = part
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.starts_with("<<"))
            .filter_map(|l| l.split(':').next())
            .collect();
        if keys.iter().any(|k| seen.contains(k)) {
            *part = "";
        } else {
            seen.extend(keys);
        }
    }
    format!("{ANCHORS}{}", parts.concat())
}

#[test]
fn aliases_and_merge_keys_are_edited_or_refused_by_line() {
    let cases = std::env::var("ALIAS_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let catalogue = profile::built_in();
    let mut selections: Vec<String> = catalogue.iter().map(|p| p.name.clone()).collect();
    selections.push("all".into());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut edited, mut refused) = (0, 0);
    for case in 0..cases {
        let text = document(&mut rng);
        document::parse(&text).unwrap_or_else(|e| panic!("case {case}: not valid: {e}\n{text}"));
        let set = ConfigSet::from_texts(vec![(PathBuf::from("etc/cloud/cloud.cfg"), text.clone())])
            .unwrap();
        for keep in &selections {
            let selected = profile::select(&catalogue, keep).unwrap();
            match plan::plan(&set, &selected) {
                Ok(plan) => {
                    assert!(
                        plan.after.iter().all(|s| s.kept),
                        "case {case} {keep}\n{text}"
                    );
                    for file in &plan.files {
                        document::parse(&file.new_text).unwrap_or_else(|e| {
                            panic!(
                                "case {case} {keep}: edited text invalid: {e}\n{}",
                                file.new_text
                            )
                        });
                    }
                    edited += 1;
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    assert!(
                        !message.contains("internal error")
                            && message.contains("by hand")
                            && message.contains("line "),
                        "case {case} --keep {keep}: {message}\n{text}"
                    );
                    refused += 1;
                }
            }
        }
    }
    eprintln!("{cases} documents: {edited} plans edited and verified, {refused} refused by line");
    assert!(edited > 0 && refused > 0);
}

/// The plan for keeping `keep` in a cloud.cfg of `text`, which must succeed.
fn planned(text: &str, keep: &str) -> plan::Plan {
    let catalogue = profile::built_in();
    let selected = profile::select(&catalogue, keep).unwrap();
    plan::plan(&one_file(text), &selected).unwrap_or_else(|e| panic!("{e:#}\n{text}"))
}

fn one_file(text: &str) -> ConfigSet {
    ConfigSet::from_texts(vec![(
        PathBuf::from("etc/cloud/cloud.cfg"),
        text.to_string(),
    )])
    .unwrap()
}

#[test]
fn status_names_the_line_a_merge_key_brings_in() {
    let catalogue = profile::built_in();
    let hostname = profile::select(&catalogue, "hostname").unwrap();
    let network = profile::select(&catalogue, "network").unwrap();
    let set =
        one_file("defaults: &d\n  preserve_hostname: true\n<<: *d\ncloud_final_modules: [a]\n");
    let state = setting_state(&set, hostname[0]);
    assert!(state.kept, "{state:?}");
    assert_eq!(state.reasons[0].line, Some(2), "{state:?}");
    assert_eq!(state.reasons[0].text, "preserve_hostname: true");
    let set = one_file("base: &b {config: enabled}\nnetwork:\n  <<: *b\n  renderers: [eni]\n");
    let state = setting_state(&set, network[0]);
    assert!(!state.kept);
    assert_eq!(state.reasons[0].line, Some(1), "{state:?}");
    assert_eq!(state.reasons[0].text, "network.config: enabled");
}

#[test]
fn a_scalar_through_a_merge_key_is_set_by_an_explicit_key_over_it() {
    let text = "defaults: &d\n  preserve_hostname: false\n<<: *d\nbase: &b {config: enabled}\nnetwork:\n  <<: *b\n  renderers: [eni]\ncloud_final_modules: [a]\n";
    let plan = planned(text, "hostname,network");
    assert_eq!(
        plan.files[0].new_text,
        "defaults: &d\n  preserve_hostname: false\n<<: *d\nbase: &b {config: enabled}\nnetwork:\n  config: disabled\n  <<: *b\n  renderers: [eni]\ncloud_final_modules: [a]\npreserve_hostname: true\n"
    );
    let whats: Vec<&str> = plan.files[0]
        .changes
        .iter()
        .map(|c| c.what.as_str())
        .collect();
    assert!(
        whats.contains(&"added preserve_hostname: true (over false from `<<: *d`)"),
        "{whats:?}"
    );
    assert!(plan.after.iter().all(|s| s.kept));
}

#[test]
fn a_scalar_written_as_an_alias_is_replaced_by_the_value() {
    let text = "no: &n false\npreserve_hostname: *n\nm: {manage_etc_hosts: *n}\ncloud_final_modules: [a]\n";
    let plan = planned(text, "hostname");
    assert_eq!(
        plan.files[0].new_text,
        "no: &n false\npreserve_hostname: true\nm: {manage_etc_hosts: *n}\ncloud_final_modules: [a]\n"
    );
    assert_eq!(
        plan.files[0].changes[0].what,
        "set preserve_hostname: true (was false) in place of an alias"
    );
}

#[test]
fn refusals_name_the_line_and_dry_run_exits_1() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join("etc/cloud")).unwrap();
    let cfg = dir.path().join("etc/cloud/cloud.cfg");
    for (text, needle) in [
        (
            "d: &d {cloud_final_modules: [a, scripts-user]}\n<<: *d\n",
            "line 2: cloud_final_modules comes through `<<: *d` at line 2: edit by hand",
        ),
        (
            "cloud_final_modules: &m [a, scripts-user]\nx: *m\n",
            "line 1: this value is anchored (&) and repeated through an alias or merge key at line 2",
        ),
        (
            "d: &d {network: {config: enabled}}\n<<: *d\ncloud_final_modules: [scripts-user]\n",
            "line 2: network comes through `<<: *d` at line 2: edit by hand",
        ),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = assert_cmd::Command::cargo_bin("prepare-image")
            .unwrap()
            .args(["--keep", "hostname,network", "--dry-run"])
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(out.stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{needle}\n{stderr}");
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);
    }
}
