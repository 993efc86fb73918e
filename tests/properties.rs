//! Property tests of the editor on generated cloud.cfg-like documents: every
//! form a module-list entry takes (plain, quoted, `[name, freq]` flow lists,
//! block sub-lists, `{name: .., frequency: ..}` and `- name:` mappings,
//! empty entries), `-`/`_` spellings and `cc_` prefixes, flow lists (on one
//! line or over several, with comment lines inside) and block lists (with 0,
//! 1, 2 or 4 spaces of indentation), comment and blank lines between entries,
//! trailing comments, other keys (scalars, nested mappings, lists that are
//! not module lists), LF or CRLF, with or without a final newline; edited
//! with a random subset of the built-in profiles' edits.
//!
//! Each case checks: the result parses; it means exactly `apply_to_value` of
//! the edits on the original meaning; a second run changes nothing; every
//! comment line survives, in order; every line the edits may not touch
//! (anything but the entries of removed modules, their list's key line, the
//! keys set) is still there, in order, and every other line of the result is
//! a setting the profiles add or a rewrite of a line they may touch; the CRLF
//! and no-final-newline variants give the same result with their own line
//! endings.
//!
//! The run is deterministic (fixed seed), 768 + 192 cases by default;
//! `PROPTEST_CASES=N` runs N (+ N/4) instead, and `PROPTEST_RANDOM=1` takes a
//! fresh seed (e.g. `PROPTEST_RANDOM=1 PROPTEST_CASES=5000 cargo test
//! --release --test properties` to hunt for new failures).

use std::collections::BTreeSet;

use prepare_image::guest::cloudinit::document;
use prepare_image::guest::cloudinit::editor::{
    self, Edit, canonical_module_name, is_module_list_key,
};
use prepare_image::guest::cloudinit::profile;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

const DEFAULT_CASES: u32 = 768;

// ---------------------------------------------------------------------------
// The model of a document, and its rendering with what each line is.

const MODULE_NAMES: &[&str] = &[
    // Targets of the built-in profiles, in every spelling seen.
    "scripts-user",
    "scripts_user",
    "cc_scripts_user",
    "update_etc_hosts",
    "update-etc-hosts",
    "resolv_conf",
    "resolv-conf",
    "write-files",
    "write_files",
    "ntp",
    "cc_ntp.py",
    "set-passwords",
    "set_passwords",
    "users-groups",
    "users_groups",
    // Others, some close to a target.
    "migrator",
    "bootcmd",
    "ssh",
    "runcmd",
    "final-message",
    "ntp_client",
    "scripts-per-once",
    "write-files-deferred",
    "set_hostname",
];

const FREQUENCIES: &[&str] = &["always", "once-per-instance", "once"];

const LIST_KEYS: &[&str] = &[
    "cloud_init_modules",
    "cloud_config_modules",
    "cloud_final_modules",
    "cloud_init_modules", // twice as likely; also makes duplicate keys
    "my_modules",
    "users", // not a module list: nothing in it is removed
];

const COMMENTS: &[&str] = &[
    "# a comment",
    "# - ntp",
    "#   - scripts-user",
    "# the modules that run in the 'final' stage",
    "#",
];

#[derive(Debug, Clone)]
enum Gap {
    Blank,
    Spaces(usize),
    Comment { indent: usize, text: &'static str },
}

#[derive(Debug, Clone)]
enum Form {
    Plain,
    Single,
    Double,
    /// `[name, freq]`; quote 0 none, 1 single, 2 double.
    FlowSeq {
        quote: u8,
        spaced: bool,
        freq: bool,
    },
    /// `-` then the sub-list on the next lines, or `- - name` (compact).
    BlockSeq {
        compact: bool,
    },
    FlowMap,
    BlockMap,
    /// `- frequency: ..` then `name: ..`.
    BlockMapFreqFirst,
    /// An empty entry (`-` or `- ~`): names no module, never removed.
    Null {
        tilde: bool,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    gaps: Vec<Gap>,
    name: &'static str,
    form: Form,
    freq: &'static str,
    trailing: bool,
}

#[derive(Debug, Clone)]
enum NetworkForm {
    Flow(&'static str),
    Block(&'static [&'static str]),
    Null,
}

#[derive(Debug, Clone)]
enum Item {
    BlockList {
        key: &'static str,
        indent: usize,
        key_comment: bool,
        entries: Vec<Entry>,
    },
    FlowList {
        key: &'static str,
        /// One item per line, with comment lines between.
        multiline: bool,
        entries: Vec<(&'static str, u8, Vec<Gap>)>,
        spaced: bool,
    },
    Unverified {
        block: bool,
        names: Vec<(&'static str, u8)>,
    },
    Scalar {
        key: &'static str,
        value: &'static str,
        comment: bool,
    },
    Network(NetworkForm),
    Other(&'static str),
}

#[derive(Debug, Clone)]
struct Doc {
    header: Vec<Gap>,
    items: Vec<(Vec<Gap>, Item)>,
}

/// What a rendered line is, for the check of which lines may change.
#[derive(Debug, Clone, PartialEq)]
enum Tag {
    /// Must stay as it is.
    Keep,
    /// The key line of a list (item index), which may become `key: []`.
    ListKey(usize),
    /// A line of an entry of list `item` under `key`.
    Entry {
        item: usize,
        key: &'static str,
        module: &'static str,
        string: bool,
    },
    /// A line of a flow list (items may be removed from it).
    Flow(usize),
    /// A line of a top-level setting's key or value.
    Setting(&'static str),
}

fn quote(name: &str, q: u8) -> String {
    match q {
        1 => format!("'{name}'"),
        2 => format!("\"{name}\""),
        _ => name.to_string(),
    }
}

fn render_gaps(gaps: &[Gap], out: &mut Vec<(String, Tag)>) {
    for g in gaps {
        let line = match g {
            Gap::Blank => String::new(),
            Gap::Spaces(n) => " ".repeat(*n),
            Gap::Comment { indent, text } => format!("{}{text}", " ".repeat(*indent)),
        };
        out.push((line, Tag::Keep));
    }
}

impl Doc {
    fn render(&self) -> Vec<(String, Tag)> {
        let mut out = Vec::new();
        render_gaps(&self.header, &mut out);
        for (index, (gaps, item)) in self.items.iter().enumerate() {
            render_gaps(gaps, &mut out);
            item.render(index, &mut out);
        }
        out
    }
}

impl Item {
    fn render(&self, index: usize, out: &mut Vec<(String, Tag)>) {
        match self {
            Item::BlockList {
                key,
                indent,
                key_comment,
                entries,
            } => {
                let comment = if *key_comment { "  # stage" } else { "" };
                out.push((format!("{key}:{comment}"), Tag::ListKey(index)));
                let pad = " ".repeat(*indent);
                for e in entries {
                    let gaps: Vec<Gap> = e
                        .gaps
                        .iter()
                        .map(|g| match g {
                            // Comments between entries sit at the entries'
                            // indentation or at column 0.
                            Gap::Comment { indent: i, text } => Gap::Comment {
                                indent: if *i == 0 { 0 } else { *indent },
                                text,
                            },
                            other => other.clone(),
                        })
                        .collect();
                    render_gaps(&gaps, out);
                    let tag = Tag::Entry {
                        item: index,
                        key,
                        module: if matches!(e.form, Form::Null { .. }) {
                            ""
                        } else {
                            e.name
                        },
                        string: matches!(e.form, Form::Plain | Form::Single | Form::Double),
                    };
                    let (n, f) = (e.name, e.freq);
                    let mut lines: Vec<String> = match &e.form {
                        Form::Plain => vec![format!("{pad}- {n}")],
                        Form::Single => vec![format!("{pad}- '{n}'")],
                        Form::Double => vec![format!("{pad}- \"{n}\"")],
                        Form::FlowSeq {
                            quote: q,
                            spaced,
                            freq,
                        } => {
                            let inner = if *freq {
                                format!("{}, {}", quote(n, *q), quote(f, *q))
                            } else {
                                quote(n, *q)
                            };
                            if *spaced {
                                vec![format!("{pad}- [ {inner} ]")]
                            } else {
                                vec![format!("{pad}- [{inner}]")]
                            }
                        }
                        Form::BlockSeq { compact: false } => vec![
                            format!("{pad}-"),
                            format!("{pad}  - {n}"),
                            format!("{pad}  - {f}"),
                        ],
                        Form::BlockSeq { compact: true } => {
                            vec![format!("{pad}- - {n}"), format!("{pad}  - {f}")]
                        }
                        Form::FlowMap => vec![format!("{pad}- {{name: {n}, frequency: {f}}}")],
                        Form::BlockMap => {
                            vec![
                                format!("{pad}- name: {n}"),
                                format!("{pad}  frequency: {f}"),
                            ]
                        }
                        Form::BlockMapFreqFirst => {
                            vec![
                                format!("{pad}- frequency: {f}"),
                                format!("{pad}  name: {n}"),
                            ]
                        }
                        Form::Null { tilde: false } => vec![format!("{pad}-")],
                        Form::Null { tilde: true } => vec![format!("{pad}- ~")],
                    };
                    if e.trailing {
                        lines.last_mut().unwrap().push_str("   # why");
                    }
                    out.extend(lines.into_iter().map(|l| (l, tag.clone())));
                }
            }
            Item::FlowList {
                key,
                multiline,
                entries,
                spaced,
            } => {
                let rendered: Vec<String> = entries
                    .iter()
                    .map(|(name, form, _)| match form {
                        0..=2 => quote(name, *form),
                        3 => format!("[{name}, always]"),
                        _ => format!("{{name: {name}, frequency: once}}"),
                    })
                    .collect();
                if *multiline && !entries.is_empty() {
                    out.push((format!("{key}: ["), Tag::Flow(index)));
                    for (i, ((_, _, gaps), r)) in entries.iter().zip(&rendered).enumerate() {
                        let gaps: Vec<Gap> = gaps
                            .iter()
                            .map(|g| match g {
                                Gap::Comment { text, .. } => Gap::Comment { indent: 2, text },
                                other => other.clone(),
                            })
                            .collect();
                        render_gaps(&gaps, out);
                        let comma = if i + 1 < entries.len() { "," } else { "" };
                        out.push((format!("  {r}{comma}"), Tag::Flow(index)));
                    }
                    out.push(("  ]".to_string(), Tag::Flow(index)));
                } else if *spaced {
                    out.push((
                        format!("{key}: [ {} ]", rendered.join(" , ")),
                        Tag::Flow(index),
                    ));
                } else {
                    out.push((format!("{key}: [{}]", rendered.join(",")), Tag::Flow(index)));
                }
            }
            Item::Unverified { block, names } => {
                let key = "unverified_modules";
                if *block && !names.is_empty() {
                    out.push((format!("{key}:"), Tag::ListKey(index)));
                    for (n, q) in names {
                        out.push((
                            format!("  - {}", quote(n, *q)),
                            Tag::Entry {
                                item: index,
                                key,
                                module: n,
                                string: true,
                            },
                        ));
                    }
                } else {
                    let items: Vec<String> = names.iter().map(|(n, q)| quote(n, *q)).collect();
                    out.push((format!("{key}: [{}]", items.join(", ")), Tag::Flow(index)));
                }
            }
            Item::Scalar {
                key,
                value,
                comment,
            } => {
                let comment = if *comment { " # set by hand" } else { "" };
                let (first, rest) = match value.split_once('\n') {
                    Some((a, b)) => (a, Some(b)),
                    None => (*value, None),
                };
                let sep = if first.is_empty() { "" } else { " " };
                out.push((format!("{key}:{sep}{first}{comment}"), Tag::Setting(key)));
                if let Some(rest) = rest {
                    for l in rest.split('\n') {
                        out.push((l.to_string(), Tag::Setting(key)));
                    }
                }
            }
            Item::Network(form) => match form {
                NetworkForm::Flow(v) => {
                    out.push((format!("network: {v}"), Tag::Setting("network")))
                }
                NetworkForm::Null => out.push(("network:".to_string(), Tag::Setting("network"))),
                NetworkForm::Block(lines) => {
                    out.push(("network:".to_string(), Tag::Setting("network")));
                    for l in *lines {
                        out.push((format!("  {l}"), Tag::Setting("network")));
                    }
                }
            },
            Item::Other(text) => {
                for l in text.split('\n') {
                    out.push((l.to_string(), Tag::Keep));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Strategies.

fn gap() -> impl Strategy<Value = Gap> {
    prop_oneof![
        2 => Just(Gap::Blank),
        1 => (1usize..4).prop_map(Gap::Spaces),
        3 => (prop_oneof![Just(0usize), Just(1)], prop::sample::select(COMMENTS))
            .prop_map(|(indent, text)| Gap::Comment { indent, text }),
    ]
}

fn gaps(max: usize) -> impl Strategy<Value = Vec<Gap>> {
    prop_oneof![
        3 => Just(Vec::new()),
        2 => prop::collection::vec(gap(), 1..=max),
    ]
}

fn form() -> impl Strategy<Value = Form> {
    prop_oneof![
        6 => Just(Form::Plain),
        1 => Just(Form::Single),
        1 => Just(Form::Double),
        3 => (0u8..3, any::<bool>(), prop::bool::weighted(0.8))
            .prop_map(|(quote, spaced, freq)| Form::FlowSeq { quote, spaced, freq }),
        1 => any::<bool>().prop_map(|compact| Form::BlockSeq { compact }),
        1 => Just(Form::FlowMap),
        1 => Just(Form::BlockMap),
        1 => Just(Form::BlockMapFreqFirst),
        1 => any::<bool>().prop_map(|tilde| Form::Null { tilde }),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        gaps(2),
        prop::sample::select(MODULE_NAMES),
        form(),
        prop::sample::select(FREQUENCIES),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(gaps, name, form, freq, trailing)| Entry {
            gaps,
            name,
            form,
            freq,
            trailing,
        })
}

const OTHERS: &[&str] = &[
    "disable_root: 0",
    "ssh_pwauth:   1",
    "datasource_list: [ ConfigDrive, TencentCloud ]",
    "system_info:\n  distro: rhel\n  ntp_client: auto\n  network:\n    renderers: [netplan, eni]\n  # paths\n  paths:\n    cloud_dir: /var/lib/cloud",
    "users:\n - default\n - name: ntp\n   lock_passwd: true",
    "datasource:\n  ConfigDrive:\n    dsmode: local\n  TencentCloud:\n    metadata_urls: ['http://metadata.tencentyun.com']",
    "mounts:\n - [ ephemeral0, /media/ephemeral0 ]\n - [ swap, none, swap, sw, \"0\", \"0\" ]",
    "runcmd:\n - [ sh, -c, 'echo scripts-user ntp' ]",
    "manage_resolv_conf: false",
    "apt:\n  preserve_sources_list: true",
];

const PRESERVE: &[&str] = &[
    "true",
    "false",
    "yes",
    "no",
    "1",
    "0",
    "'true'",
    "\"false\"",
    "~",
    "",
    "False",
    "off",
];
const MANAGE_HOSTS: &[&str] = &[
    "localhost",
    "true",
    "false",
    "template",
    "'localhost'",
    "|\n  localhost",
];
const NETWORK_FLOW: &[&str] = &[
    "{config: disabled}",
    "{config: enabled}",
    "{renderers: [netplan, eni]}",
    "{}",
    "{ config: 'enabled' , renderers: [sysconfig] }",
    "off",
];
const NETWORK_BLOCK: &[&[&str]] = &[
    &["config: disabled"],
    &["config: enabled  # from the image"],
    &["renderers: [eni]"],
    &[
        "# which renderer",
        "renderers:",
        "  - sysconfig",
        "config: enabled",
    ],
];

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        8 => (
            prop::sample::select(LIST_KEYS),
            prop::sample::select(&[0usize, 1, 2, 4][..]),
            prop::bool::weighted(0.1),
            prop::collection::vec(entry(), 0..8),
        )
            .prop_map(|(key, indent, key_comment, entries)| Item::BlockList {
                key,
                indent,
                key_comment,
                entries,
            }),
        3 => (
            prop::sample::select(LIST_KEYS),
            prop::bool::weighted(0.3),
            prop::collection::vec(
                (prop::sample::select(MODULE_NAMES), 0u8..5, gaps(1)),
                0..6
            ),
            any::<bool>(),
        )
            .prop_map(|(key, multiline, entries, spaced)| Item::FlowList {
                key,
                multiline,
                entries,
                spaced,
            }),
        2 => (
            any::<bool>(),
            prop::collection::vec(
                (
                    prop::sample::select(&["resolv_conf", "resolv-conf", "ntp", "cc_resolv_conf"][..]),
                    0u8..3
                ),
                0..3
            ),
        )
            .prop_map(|(block, names)| Item::Unverified { block, names }),
        2 => (prop::sample::select(PRESERVE), prop::bool::weighted(0.2)).prop_map(
            |(value, comment)| Item::Scalar {
                key: "preserve_hostname",
                value,
                comment,
            }
        ),
        2 => (prop::sample::select(MANAGE_HOSTS), prop::bool::weighted(0.2)).prop_map(
            |(value, comment)| Item::Scalar {
                key: "manage_etc_hosts",
                value,
                comment: comment && !value.contains('\n'),
            }
        ),
        2 => prop_oneof![
            prop::sample::select(NETWORK_FLOW).prop_map(NetworkForm::Flow),
            prop::sample::select(NETWORK_BLOCK).prop_map(NetworkForm::Block),
            Just(NetworkForm::Null),
        ]
        .prop_map(Item::Network),
        3 => prop::sample::select(OTHERS).prop_map(Item::Other),
    ]
}

fn doc() -> impl Strategy<Value = Doc> {
    (
        prop_oneof![
            3 => Just(Vec::new()),
            1 => Just(vec![Gap::Comment { indent: 0, text: "#cloud-config" }]),
            1 => Just(vec![Gap::Comment { indent: 0, text: "#cloud-config" }, Gap::Comment { indent: 0, text: "---" }]),
            1 => gaps(3),
        ],
        prop::collection::vec((gaps(3), item()), 0..9),
    )
        .prop_map(|(header, items)| Doc { header, items })
}

// ---------------------------------------------------------------------------
// The checks.

/// The edits of the profiles whose bit is set in `mask`, in catalogue order,
/// each distinct edit once (as the planner passes them).
fn edits_for(mask: u8) -> (Vec<String>, Vec<Edit>) {
    let mut names = Vec::new();
    let mut edits: Vec<Edit> = Vec::new();
    for (i, p) in profile::built_in().into_iter().enumerate() {
        if mask & (1 << i) != 0 {
            names.push(p.name.clone());
            for pe in p.edits {
                if !edits.contains(&pe.edit) {
                    edits.push(pe.edit);
                }
            }
        }
    }
    (names, edits)
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches([' ', '\t']).starts_with('#')
}

fn is_char_subsequence(needle: &str, hay: &str) -> bool {
    let mut it = hay.chars();
    needle.chars().all(|n| it.any(|h| h == n))
}

/// Which rendered lines (0-based) the edits may remove or rewrite.
fn changeable(lines: &[(String, Tag)], edits: &[Edit]) -> BTreeSet<usize> {
    let removed: Vec<String> = edits
        .iter()
        .filter_map(|e| match e {
            Edit::RemoveModule { module } => Some(canonical_module_name(module)),
            _ => None,
        })
        .collect();
    let list_values: Vec<(String, String)> = edits
        .iter()
        .filter_map(|e| match e {
            Edit::RemoveListValue { key, value } => {
                Some((key.clone(), canonical_module_name(value)))
            }
            _ => None,
        })
        .collect();
    let set_keys: Vec<&str> = edits
        .iter()
        .filter_map(|e| match e {
            Edit::Set { path, .. } => Some(path[0].as_str()),
            _ => None,
        })
        .collect();
    let entry_goes = |key: &str, module: &str, string: bool| {
        let canon = canonical_module_name(module);
        (is_module_list_key(key) && removed.contains(&canon))
            || (string && list_values.iter().any(|(k, v)| k == key && *v == canon))
    };
    let mut touched_items = BTreeSet::new();
    for (_, tag) in lines {
        if let Tag::Entry {
            item,
            key,
            module,
            string,
        } = tag
            && entry_goes(key, module, *string)
        {
            touched_items.insert(*item);
        }
    }
    lines
        .iter()
        .enumerate()
        .filter(|(_, (_, tag))| match tag {
            Tag::Keep => false,
            Tag::ListKey(item) => touched_items.contains(item),
            Tag::Entry {
                key,
                module,
                string,
                ..
            } => entry_goes(key, module, *string),
            Tag::Flow(_) => true,
            Tag::Setting(key) => set_keys.contains(key),
        })
        .map(|(i, _)| i)
        .collect()
}

/// A text without a final newline whose last lines, all of which an edit
/// may remove, follow an empty line: "a\n\n- x" without "- x" is "a\n",
/// the same as "a" plus a final newline; the empty line and the missing
/// final newline cannot both stay. Returns that empty line's index.
fn ambiguous_empty_line(text: &str, may: &BTreeSet<usize>) -> Option<usize> {
    if text.ends_with('\n') {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let last_fixed = (0..lines.len()).rev().find(|i| !may.contains(i))?;
    (last_fixed + 1 < lines.len() && lines[last_fixed].is_empty()).then_some(last_fixed)
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// One text variant: the editor's promises on it. Returns the new text.
fn check_text(
    variant: &str,
    text: &str,
    edits: &[Edit],
    rendered: &[(String, Tag)],
) -> Result<String, TestCaseError> {
    let ctx = || format!("[{variant}] text:\n{text}\n---");
    let edited =
        editor::apply(text, edits).map_err(|e| fail(format!("{} apply failed: {e}", ctx())))?;
    let new = edited.text;

    // Parses, and means the intended change.
    let doc = document::parse(&new).map_err(|e| fail(format!("{} reparse: {e}\n{new}", ctx())))?;
    let mut expected = document::parse(text).unwrap().to_value();
    for e in edits {
        editor::apply_to_value(&mut expected, e);
    }
    prop_assert_eq!(doc.to_value(), expected, "{} new:\n{}", ctx(), new);
    prop_assert_eq!(new == text, edited.changes.is_empty(), "{}", ctx());

    // A second run changes nothing.
    let again = editor::apply(&new, edits).map_err(|e| fail(format!("{} again: {e}", ctx())))?;
    prop_assert_eq!(&again.text, &new, "{} second run", ctx());
    prop_assert!(again.changes.is_empty(), "{} second run", ctx());

    // Line endings.
    let crlf = text.contains("\r\n");
    if crlf {
        prop_assert!(
            !new.replace("\r\n", "").contains('\n'),
            "{} bare LF in\n{:?}",
            ctx(),
            new
        );
    } else {
        prop_assert!(!new.contains('\r'), "{} CR added", ctx());
    }
    let mut may = changeable(rendered, edits);
    let ambiguous = ambiguous_empty_line(text, &may);
    if let Some(i) = ambiguous {
        may.insert(i);
    }
    if !text.is_empty() && !text.ends_with('\n') {
        prop_assert!(
            !new.ends_with('\n') || ambiguous.is_some(),
            "{} final newline added",
            ctx()
        );
    }

    // Which lines changed: on the line diff (terminators dropped).
    let old_lines: Vec<&str> = text.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    prop_assert_eq!(old_lines.len(), rendered.len(), "{}", ctx());
    // The lines no edit may touch are all still there, in order; every
    // other line of the new text rewrites a line an edit may touch (text
    // taken out of it, ` []` for a list emptied, the same key with a new
    // value) or adds a setting the profiles add. (Matched greedily, not with
    // a line diff, whose pairing of duplicated lines is arbitrary.)
    let mut matched = vec![false; new_lines.len()];
    let mut next = 0;
    for (i, line) in old_lines.iter().enumerate() {
        if may.contains(&i) {
            continue;
        }
        match (next..new_lines.len()).find(|&j| new_lines[j] == *line) {
            Some(j) => {
                matched[j] = true;
                next = j + 1;
            }
            None => {
                return Err(fail(format!(
                    "{} line {} ({:?}, {:?}) is gone or out of order\nnew:\n{}",
                    ctx(),
                    i + 1,
                    line,
                    rendered[i].1,
                    new
                )));
            }
        }
    }
    let touchable: Vec<&str> = may.iter().map(|&i| old_lines[i]).collect();
    for (j, line) in new_lines.iter().enumerate() {
        if matched[j] {
            continue;
        }
        let t = line.trim();
        let adds = t == "preserve_hostname: true"
            || t == "network: {config: disabled}"
            || t == "config: disabled";
        let rewrites = touchable.iter().any(|d| {
            is_char_subsequence(line, d)
                || is_char_subsequence(&line.replacen(" []", "", 1), d)
                || d.split_once(':').map(|(k, _)| k) == line.split_once(':').map(|(k, _)| k)
        });
        prop_assert!(
            adds || rewrites,
            "{} unexpected line {:?} in the new text\nnew:\n{}",
            ctx(),
            line,
            new
        );
    }

    // Every comment line survives, in order.
    let comments = |ls: &[&str]| -> Vec<String> {
        ls.iter()
            .filter(|l| is_comment(l))
            .map(|l| l.to_string())
            .collect()
    };
    prop_assert_eq!(
        comments(&old_lines),
        comments(&new_lines),
        "{} comment lines\nnew:\n{}",
        ctx(),
        new
    );
    Ok(new)
}

fn check_doc(doc: &Doc, mask: u8) -> Result<(), TestCaseError> {
    let (_, edits) = edits_for(mask);
    let rendered = doc.render();
    let body: Vec<&str> = rendered.iter().map(|(l, _)| l.as_str()).collect();
    if body.is_empty() {
        return Ok(());
    }
    let lf = format!("{}\n", body.join("\n"));
    document::parse(&lf).map_err(|e| fail(format!("generated invalid YAML ({e}):\n{lf}")))?;
    let lf_new = check_text("LF", &lf, &edits, &rendered)?;

    let crlf = lf.replace('\n', "\r\n");
    let crlf_new = check_text("CRLF", &crlf, &edits, &rendered)?;
    prop_assert_eq!(
        crlf_new,
        lf_new.replace('\n', "\r\n"),
        "CRLF differs from LF"
    );

    let bare = lf.strip_suffix('\n').unwrap();
    if !bare.is_empty() && !bare.ends_with('\n') {
        let bare_new = check_text("no final newline", bare, &edits, &rendered)?;
        if ambiguous_empty_line(bare, &changeable(&rendered, &edits)).is_some() {
            return Ok(());
        }
        // A final block scalar means something else without its line break
        // ("text" rather than "text\n"), so the editor places an added key
        // before it there; nothing to compare with the LF result.
        if ends_in_block_scalar(bare) {
            return Ok(());
        }
        prop_assert_eq!(
            bare_new.as_str(),
            lf_new.strip_suffix('\n').unwrap_or(&lf_new),
            "no final newline differs from LF"
        );
        // A one-line file without a final newline has no line ending to
        // follow: an added line gets LF.
        let crlf_bare = crlf.strip_suffix("\r\n").unwrap();
        if crlf_bare.contains('\n') {
            let cb_new = check_text("CRLF, no final newline", crlf_bare, &edits, &rendered)?;
            prop_assert_eq!(
                cb_new,
                bare_new.replace('\n', "\r\n"),
                "CRLF without final newline differs"
            );
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let rng = match std::env::var("PROPTEST_RANDOM") {
        Ok(_) => TestRng::from_seed(RngAlgorithm::ChaCha, &rand_seed()),
        Err(_) => TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    };
    TestRunner::new_with_rng(config, rng)
}

fn rand_seed() -> [u8; 32] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(&nanos.to_le_bytes());
    eprintln!("properties: random seed from {nanos}");
    seed
}

#[test]
fn edits_on_generated_documents() {
    let cases = cases();
    let mut runner = runner(cases);
    let result = runner.run(&(doc(), any::<u8>()), |(doc, mask)| check_doc(&doc, mask));
    eprintln!(
        "properties: edits_on_generated_documents ran {cases} cases × 4 line-ending variants"
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Documents made only of the profiles' own targets, every profile at once:
/// the densest case (every entry goes).
#[test]
fn everything_removed_at_once() {
    let cases = cases() / 4;
    let mut runner = runner(cases);
    let result = runner.run(&doc(), |doc| check_doc(&doc, 0xff));
    eprintln!("properties: everything_removed_at_once ran {cases} cases × 4 line-ending variants");
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn generator_renders_valid_yaml_with_every_form() {
    // The generator itself: every entry form parses and names its module.
    let forms = [
        Form::Plain,
        Form::Single,
        Form::Double,
        Form::FlowSeq {
            quote: 1,
            spaced: true,
            freq: true,
        },
        Form::FlowSeq {
            quote: 0,
            spaced: false,
            freq: false,
        },
        Form::BlockSeq { compact: false },
        Form::BlockSeq { compact: true },
        Form::FlowMap,
        Form::BlockMap,
        Form::BlockMapFreqFirst,
    ];
    for indent in [0, 1, 2, 4] {
        let entries: Vec<Entry> = forms
            .iter()
            .map(|form| Entry {
                gaps: vec![Gap::Comment {
                    indent: 1,
                    text: "# c",
                }],
                name: "scripts-user",
                form: form.clone(),
                freq: "always",
                trailing: true,
            })
            .collect();
        let doc = Doc {
            header: vec![],
            items: vec![(
                vec![],
                Item::BlockList {
                    key: "cloud_final_modules",
                    indent,
                    key_comment: true,
                    entries,
                },
            )],
        };
        let text: String = doc.render().iter().map(|(l, _)| format!("{l}\n")).collect();
        let v = document::parse(&text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
            .to_value();
        let Some(document::Value::Seq(items)) = v.get("cloud_final_modules") else {
            panic!("{text}")
        };
        assert_eq!(items.len(), forms.len(), "{text}");
        for item in items.iter() {
            assert_eq!(
                editor::entry_module_name(item).map(canonical_module_name),
                Some("scripts_user".to_string()),
                "{text}"
            );
        }
        check_doc(&doc, 0b11).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Whether the text's last line belongs to a `|` or `>` block scalar.
fn ends_in_block_scalar(text: &str) -> bool {
    let Ok(doc) = document::parse(text) else {
        return false;
    };
    let mut node = match doc.root.as_ref().map(|r| &r.kind) {
        Some(document::NodeKind::Map { entries, .. }) => match entries.last() {
            Some((_, v)) => v,
            None => return false,
        },
        _ => return false,
    };
    loop {
        match &node.kind {
            document::NodeKind::Scalar { style, .. } => {
                return *style == document::Style::Block;
            }
            document::NodeKind::Map { entries, .. } => match entries.last() {
                Some((_, v)) => node = v,
                None => return false,
            },
            document::NodeKind::Seq { items, .. } => match items.last() {
                Some(v) => node = v,
                None => return false,
            },
        }
    }
}
