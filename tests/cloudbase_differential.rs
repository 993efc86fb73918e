//! Cloudbase-Init's conf files read by us and by oslo.config (Debian's
//! python3-oslo.config and python3-oslo.log, tests/judge/oslo_config_judge.py):
//! thousands of generated texts (sections, DEFAULT, repeated keys and
//! sections, continuation lines indented with spaces and tabs, comments and
//! blank lines inside lists, quotes, `Plugins=`, empty `plugins=`, CRLF, LF,
//! CR, a byte-order mark, spaces around `=` and `:`) must read the same:
//! the same parse error at the same line, or the same `plugins`,
//! `metadata_services`, `local_scripts_path` and log options. Then every
//! keep planned over those texts must read back, by oslo.config, as exactly
//! the expected plugin list, with the bytes outside the edited assignment
//! unchanged. Where we and oslo.config disagree, we are wrong.

mod judge;

use std::collections::BTreeMap;
use std::path::PathBuf;

use judge::{Judge, Rng};
use prepare_image::guest::cloudbase::conf::{self, Conf, class_name};
use prepare_image::guest::cloudbase::doctor::conf::{
    LOG_DIR_NAMES, LOG_FILE_NAMES, default_string,
};
use prepare_image::guest::cloudbase::plan::{self, ConfFile, DEFAULT_PLUGINS, PLUGINS};
use prepare_image::guest::cloudbase::profile::{WindowsProfile, built_in, parse_profile};
use serde_json::{Value as J, json};

const CASES: usize = 6000;

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len())]
}

fn chance(rng: &mut Rng, percent: usize) -> bool {
    rng.below(100) < percent
}

const ITEMS: &[&str] = &[
    "cloudbaseinit.plugins.common.sethostname.SetHostNamePlugin",
    "cloudbaseinit.plugins.windows.sethostname.SetHostNamePlugin",
    "cloudbaseinit.plugins.common.networkconfig.NetworkConfigPlugin",
    "cloudbaseinit.plugins.common.localscripts.LocalScriptsPlugin",
    "cloudbaseinit.plugins.windows.localscripts.LocalScriptsPlugin",
    "cloudbaseinit.plugins.windows.ntpclient.NTPClientPlugin",
    "cloudbaseinit.plugins.common.mtu.MTUPlugin",
    "cloudbaseinit.metadata.services.configdrive.ConfigDriveService",
    "a.B",
    "\"a.B\"",
    "'a.B'",
    "\"a.B",
    "a.B'",
    "C:\\Program Files\\Cloudbase Solutions\\Cloudbase-Init\\LocalScripts\\",
    "k=v",
    "k:v",
    "#x",
    ";x",
    "[x]",
    "",
    " ",
];

const KEYS: &[&str] = &[
    "plugins",
    "plugins",
    "plugins",
    "Plugins",
    "metadata_services",
    "local_scripts_path",
    "logfile",
    "log_file",
    "logdir",
    "log_dir",
    "username",
    "plug ins",
];

fn value_text(rng: &mut Rng) -> String {
    let n = rng.below(6).saturating_sub(1);
    let mut v = String::new();
    for i in 0..n {
        if i > 0 {
            v.push_str(pick(rng, &[",", ",", ", ", " ,", ",,", "\t,"]));
        }
        v.push_str(pick(rng, ITEMS));
    }
    if chance(rng, 15) {
        v.push(',');
    }
    if chance(rng, 8) {
        let q = pick(rng, &["\"", "'"]);
        v = format!("{q}{v}{q}");
    }
    v
}

/// One generated conf text.
fn conf_text(rng: &mut Rng) -> String {
    let eol_style = rng.below(100);
    let eol = |rng: &mut Rng| -> &'static str {
        match eol_style {
            0..=44 => "\r\n",
            45..=89 => "\n",
            90..=94 => "\r",
            _ => pick(rng, &["\r\n", "\n", "\r"]),
        }
    };
    let mut lines: Vec<String> = Vec::new();
    if !chance(rng, 5) {
        lines.push("[DEFAULT]".to_string());
    }
    for _ in 0..1 + rng.below(10) {
        match rng.below(100) {
            0..=11 => lines.push(
                pick(
                    rng,
                    &[
                        "[DEFAULT]",
                        "[DEFAULT]",
                        "[default]",
                        "[x]",
                        "[DEFAULT]",
                        "[DEFAULT]",
                        "[DEFAULT]",
                        "[DEFAULT",
                        "[]",
                        " [DEFAULT]",
                        "[DEFAULT]\t",
                        "[ DEFAULT ]",
                    ],
                )
                .to_string(),
            ),
            12..=79 => {
                let key = pick(rng, KEYS);
                let sep = pick(
                    rng,
                    &["=", "=", " = ", ":", " : ", "= ", "\t=\t", "=:", ":="],
                );
                lines.push(format!("{key}{sep}{}", value_text(rng)));
                for _ in 0..rng.below(4) {
                    match rng.below(100) {
                        0..=4 => lines.push(pick(rng, &["# c", "; c", "#", "  # c"]).to_string()),
                        5..=8 => lines.push(pick(rng, &["", "  ", "\t"]).to_string()),
                        _ => {
                            let indent =
                                pick(rng, &[" ", "\t", "    ", " \t", " ", "\t", "    ", "\x0c "]);
                            lines.push(format!("{indent}{}", value_text(rng)));
                        }
                    }
                }
            }
            80..=87 => {
                lines.push(pick(rng, &["# comment", "; comment", "#", "#plugins=a.B"]).to_string())
            }
            88..=97 => lines.push(pick(rng, &["", " ", "\t"]).to_string()),
            _ => lines
                .push(pick(rng, &["junk", "=x", " = x", "plugins", "\x0cplugins=a.B"]).to_string()),
        }
    }
    let mut text = String::new();
    if chance(rng, 3) {
        text.push('\u{feff}');
    }
    let count = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        text.push_str(&line);
        if chance(rng, 5) {
            text.push_str(pick(rng, &[" ", "\t", "\x0c"]));
        }
        if i + 1 < count || chance(rng, 80) {
            text.push_str(eol(rng));
        }
    }
    text
}

fn ours(text: &str) -> J {
    match conf::parse(text) {
        Err(e) => json!({"ok": false, "line": e.line, "message": e.message}),
        Ok(c) => {
            let string = |names: &[&str]| default_string(&c, names).map(|a| a.value.clone());
            json!({
                "ok": true,
                "plugins": c.default_list("plugins"),
                "metadata_services": c.default_list("metadata_services"),
                "local_scripts_path": string(&["local_scripts_path"]),
                "log_file": string(&LOG_FILE_NAMES),
                "log_dir": string(&LOG_DIR_NAMES),
            })
        }
    }
}

/// Byte offset of each line's start, lines split as Python's text mode does.
fn line_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut starts = vec![0];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            i += 2;
            starts.push(i);
        } else if b[i] == b'\r' || b[i] == b'\n' {
            i += 1;
            starts.push(i);
        } else {
            i += 1;
        }
    }
    starts
}

/// The bytes of `old` that `new` changed lie within the decisive
/// `plugins=` assignment (or nothing was removed: an insertion).
fn changed_only_the_assignment(old: &str, new: &str, conf: &Conf) -> bool {
    let prefix = old
        .bytes()
        .zip(new.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let max_suffix = old.len().min(new.len()) - prefix;
    let suffix = old
        .bytes()
        .rev()
        .zip(new.bytes().rev())
        .take(max_suffix)
        .take_while(|(a, b)| a == b)
        .count();
    let (lo, hi) = (prefix, old.len() - suffix);
    if lo >= hi {
        return true;
    }
    let Some(a) = conf.get(conf::DEFAULT_SECTION, PLUGINS) else {
        return false;
    };
    let starts = line_starts(old);
    let first = starts[a.line() - 1];
    let end = starts.get(a.last_line()).copied().unwrap_or(old.len());
    first <= lo && hi <= end
}

#[test]
fn conf_reading_and_keep_edits_agree_with_oslo_config() {
    let mut rng = Rng::new(0x0c10_db05e);
    let mut texts: Vec<String> = (0..CASES).map(|_| conf_text(&mut rng)).collect();
    // The installer's own files: no plugins= in one (the defaults run), the
    // unattend file's explicit list in the other.
    texts.push(include_str!("fixtures/cloudbase/cloudbase-init.conf").into());
    texts.push(include_str!("fixtures/cloudbase/cloudbase-init-unattend.conf").into());
    let verdicts = Judge::oslo_config().run(&texts);
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    let mut disagreements = Vec::new();
    for (text, theirs) in texts.iter().zip(&verdicts) {
        let mine = ours(text);
        let outcome = match theirs["ok"].as_bool() {
            Some(true) => match &theirs["plugins"] {
                J::Null => "ok, plugins unset".to_string(),
                J::Array(a) if a.is_empty() => "ok, plugins empty".to_string(),
                _ => "ok, plugins listed".to_string(),
            },
            _ => format!("error: {}", theirs["message"].as_str().unwrap_or("?")),
        };
        *by_outcome.entry(outcome).or_default() += 1;
        if &mine != theirs {
            disagreements.push(format!(
                "{text:?}\n  oslo.config: {theirs}\n  ours:        {mine}"
            ));
        }
    }
    eprintln!(
        "cloudbase conf differential: {} texts: {by_outcome:#?}",
        texts.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} of {} texts read differently; first ones:\n{}",
        disagreements.len(),
        texts.len(),
        disagreements
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The generator must reach every kind of outcome, or this test proves little.
    for kind in [
        "ok, plugins unset",
        "ok, plugins empty",
        "ok, plugins listed",
        "error: Unexpected continuation line",
    ] {
        assert!(
            by_outcome.get(kind).copied().unwrap_or(0) >= 100,
            "too few `{kind}` cases: {by_outcome:?}"
        );
    }

    // Keeps over every text oslo.config reads: random drop sets (the built-in
    // profiles' plugins and others), then the built-in profiles one by one.
    let classes = [
        "SetHostNamePlugin",
        "NetworkConfigPlugin",
        "LocalScriptsPlugin",
        "NTPClientPlugin",
        "B",
        "MTUPlugin",
    ];
    let builtins = built_in();
    let mut edited: Vec<String> = Vec::new();
    let mut expected: Vec<Vec<String>> = Vec::new();
    let (mut unchanged, mut refused) = (0, 0);
    for (i, text) in texts.iter().enumerate() {
        if verdicts[i]["ok"] != json!(true) {
            continue;
        }
        let profile: WindowsProfile = if i % 3 == 0 {
            builtins[i / 3 % builtins.len()].clone()
        } else {
            let drop: Vec<&str> = classes
                .iter()
                .copied()
                .filter(|_| chance(&mut rng, 35))
                .collect();
            let drop = if drop.is_empty() {
                vec!["SetHostNamePlugin"]
            } else {
                drop
            };
            parse_profile(&format!("name: t\ndrop: [{}]\n", drop.join(", ")), "test").unwrap()
        };
        let file = ConfFile {
            path: PathBuf::from("cloudbase-init.conf"),
            text: text.clone(),
        };
        let conf = conf::parse(text).unwrap();
        let (current, _) = plan::effective_plugins(&conf);
        let want: Vec<String> = current
            .iter()
            .filter(|p| !profile.drop.iter().any(|d| d == class_name(p)))
            .cloned()
            .collect();
        match plan::plan(std::slice::from_ref(&file), &[&profile]) {
            Err(e) => {
                // Only a list we cannot write back unchanged is refused.
                assert!(
                    e.to_string().contains("cannot be written back"),
                    "{text:?}: {e}"
                );
                refused += 1;
            }
            Ok(p) if !p.pending() => {
                assert_eq!(
                    want, current,
                    "{text:?}: nothing planned, yet a plugin should go"
                );
                unchanged += 1;
            }
            Ok(p) => {
                let new = &p.files[0].new_text;
                assert!(
                    changed_only_the_assignment(text, new, &conf),
                    "{text:?} became {new:?}"
                );
                assert!(p.after.iter().all(|s| s.kept), "{text:?}: {:?}", p.after);
                edited.push(new.clone());
                expected.push(want);
            }
        }
    }
    // Every built-in profile over the installer's two files, each checked.
    let installer = &texts[CASES..];
    let mut profile_edits = 0;
    for profile in &builtins {
        for text in installer {
            let file = ConfFile {
                path: PathBuf::from("cloudbase-init.conf"),
                text: text.clone(),
            };
            let (current, _) = plan::effective_plugins(&conf::parse(text).unwrap());
            let p = plan::plan(std::slice::from_ref(&file), &[profile]).unwrap();
            let want: Vec<String> = current
                .iter()
                .filter(|c| !profile.drop.iter().any(|d| d == class_name(c)))
                .cloned()
                .collect();
            profile_edits += usize::from(p.pending());
            edited.push(p.files[0].new_text.clone());
            expected.push(want);
        }
    }
    assert!(
        profile_edits >= 7,
        "the built-in profiles change the installer's files"
    );
    let after = Judge::oslo_config().run(&edited);
    for ((new, want), theirs) in edited.iter().zip(&expected).zip(&after) {
        // Unset (a file left without plugins=): Cloudbase-Init's defaults run.
        let read = match &theirs["plugins"] {
            J::Null => json!(DEFAULT_PLUGINS),
            listed => listed.clone(),
        };
        assert_eq!(read, json!(want), "oslo.config reads the edited {new:?}");
    }
    eprintln!(
        "cloudbase keep differential: {} planned texts read back by oslo.config as planned \
         ({profile_edits} of them a built-in profile changing an installer file), \
         {unchanged} random keeps already kept, {refused} refused",
        edited.len()
    );
    assert!(edited.len() >= 500, "too few edits: {}", edited.len());
}
