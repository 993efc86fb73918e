//! The effective configuration: what cloud-init actually reads, across
//! `/etc/cloud/cloud.cfg` and its drop-ins, and which file decides a value.
//!
//! cloud-init (`cloudinit/util.py`, `read_conf_with_confd` and `read_conf_d`)
//! reads cloud.cfg, then every regular file in `cloud.cfg.d` whose name ends
//! in `.cfg`, and merges them with `mergemanydict` using the default mergers
//! (`cloudinit/mergers/m_dict.py`, `no_replace`): sources are taken from the
//! highest precedence down (the drop-ins in reverse lexical order, cloud.cfg
//! last), a key already present is never replaced, and two mappings under the
//! same key are merged recursively by the same rule. Lists and scalars are
//! therefore replaced whole by the file that sorts last. A `conf_d` key in
//! cloud.cfg names another drop-in directory, or none when it is empty.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Result, anyhow};

use crate::access::root::{AccessError, AccessErrorKind, Root};
use crate::guest::cloudinit::document::{self, Document, KeyIndex, Node, NodeKind, Value};
use crate::guest::cloudinit::editor::{self, Edit, entry_module_name, is_module_list_key};
use crate::guest::cloudinit::profile::Profile;

/// Where cloud-init looks for its base configuration, relative to the root.
pub const CLOUD_CFG: &str = "etc/cloud/cloud.cfg";

/// One configuration file as read.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Root-relative path of the file read (symlinks resolved inside the root).
    pub path: PathBuf,
    pub text: String,
    pub doc: Document,
}

/// cloud.cfg and its drop-ins, in cloud-init's read order: cloud.cfg first,
/// then the drop-ins in lexical order. Later files take precedence.
#[derive(Debug, Clone)]
pub struct ConfigSet {
    pub files: Vec<ConfigFile>,
}

/// The file and line that decide a value in the effective configuration.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub file: usize,
    pub line: usize,
    /// The node found at the path, or at the prefix of the path that is not a
    /// mapping and so hides the rest.
    pub node: &'a Node,
    /// True when `node` is at the full path.
    pub complete: bool,
}

impl ConfigSet {
    /// Parses texts given in read order. The error names the file.
    pub fn from_texts(files: Vec<(PathBuf, String)>) -> Result<ConfigSet> {
        let files = files
            .into_iter()
            .map(|(path, text)| {
                let doc = document::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
                Ok(ConfigFile { path, text, doc })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ConfigSet { files })
    }

    /// The same set with new texts for some files (by index).
    pub fn with_texts(&self, texts: &[String]) -> Result<ConfigSet> {
        ConfigSet::from_texts(
            self.files
                .iter()
                .zip(texts)
                .map(|(f, t)| (f.path.clone(), t.clone()))
                .collect(),
        )
    }

    /// The merged configuration, as cloud-init builds it.
    pub fn effective(&self) -> Value {
        let mut merged = Value::map(Vec::new());
        for file in self.files.iter().rev() {
            merge_keeping_existing(&mut merged, &file.doc.to_value());
        }
        merged
    }

    /// The file that decides the value at `path`, following the merge rule:
    /// the highest-precedence file defining it wins, except that a mapping
    /// at a prefix in a higher file hides a non-mapping there in a lower one.
    pub fn decider(&self, path: &[&str]) -> Option<Decision<'_>> {
        // mapped[d]: a higher-precedence file has a mapping at path[..=d].
        let mut mapped = vec![false; path.len()];
        'files: for (index, file) in self.files.iter().enumerate().rev() {
            let Some(mut node) = file.doc.root.as_ref() else {
                continue;
            };
            for (depth, key) in path.iter().enumerate() {
                let Some((key_node, value)) = node.get(key) else {
                    continue 'files;
                };
                let last = depth + 1 == path.len();
                if last {
                    return Some(Decision {
                        file: index,
                        line: key_node.line,
                        node: value,
                        complete: true,
                    });
                }
                if matches!(value.kind, NodeKind::Map { .. }) {
                    mapped[depth] = true;
                    node = value;
                } else if mapped[depth] {
                    continue 'files;
                } else {
                    return Some(Decision {
                        file: index,
                        line: key_node.line,
                        node: value,
                        complete: false,
                    });
                }
            }
        }
        None
    }

    /// The entries of `module` in the effective module lists: (list key,
    /// file index, line of the entry).
    pub fn module_entries(&self, module: &str) -> Vec<(String, usize, usize)> {
        let wanted = editor::canonical_module_name(module);
        let effective = self.effective();
        let mut found = Vec::new();
        for (key, _) in effective.as_map().into_iter().flatten() {
            let Some(key) = key.as_str() else { continue };
            if !is_module_list_key(key) {
                continue;
            }
            let Some(decision) = self.decider(&[key]) else {
                continue;
            };
            if let NodeKind::Seq { items, .. } = &decision.node.kind {
                for item in items.iter() {
                    if entry_module_name(&item.to_value())
                        .is_some_and(|n| editor::canonical_module_name(n) == wanted)
                    {
                        found.push((key.to_string(), decision.file, item.line));
                    }
                }
            }
        }
        found
    }
}

fn merge_keeping_existing(old: &mut Value, new: &Value) {
    merge_keeping_existing_shared(old, new, &mut MergeMemo::new());
}

/// Merges already done, by the addresses of the (old, new) mappings, with
/// `(old, new, result)`. Values built through aliases are DAGs; merging the
/// same pair of shared mappings again gives the same result, so it is looked
/// up instead of walking an exponential tree. The entries hold the `Rc`s, so
/// no address is reused while the memo lives.
type MergeMemo = HashMap<(usize, usize), (Value, Value, Value)>;

fn merge_keeping_existing_shared(old: &mut Value, new: &Value, memo: &mut MergeMemo) {
    let (Value::Map(old_entries), Value::Map(new_entries)) = (&*old, new) else {
        return;
    };
    // Nothing to keep: the result is `new` itself, shared.
    if old_entries.is_empty() || Rc::ptr_eq(old_entries, new_entries) {
        if old_entries.is_empty() {
            *old = new.clone();
        }
        return;
    }
    let pair = (
        Rc::as_ptr(old_entries) as *const u8 as usize,
        Rc::as_ptr(new_entries) as *const u8 as usize,
    );
    if let Some((_, _, done)) = memo.get(&pair) {
        *old = done.clone();
        return;
    }
    let before = old.clone();
    let Value::Map(old_entries) = old else {
        return;
    };
    let old_entries = Rc::make_mut(old_entries);
    let mut index = KeyIndex::of(old_entries);
    for (key, value) in new_entries.iter() {
        match index.find(old_entries, key) {
            None => index.insert(old_entries, key.clone(), value.clone()),
            Some(i) => merge_keeping_existing_shared(&mut old_entries[i].1, value, memo),
        }
    }
    memo.insert(pair, (before, new.clone(), old.clone()));
}

/// Reads cloud.cfg and its drop-ins from the root, as cloud-init would find
/// them. Drop-ins that are not regular files are skipped, as cloud-init does.
pub fn load(root: &Root) -> Result<ConfigSet> {
    let (base_path, base_text) = read_text(root, Path::new(CLOUD_CFG)).map_err(|e| {
        match e.downcast_ref::<AccessError>().map(AccessError::kind) {
            Some(AccessErrorKind::NotFound) => {
                // A dangling symlink: name where it led, inside the root.
                let resolved = root
                    .resolve(Path::new(CLOUD_CFG))
                    .ok()
                    .filter(|r| r != Path::new(CLOUD_CFG))
                    .map(|r| format!(" (a symlink to {}, which is missing)", root.path().join(r).display()))
                    .unwrap_or_default();
                anyhow!(
                    "{} does not exist{resolved} (looked for cloud-init's configuration in {}): is cloud-init installed, and is this the image's root directory?",
                    root.path().join(CLOUD_CFG).display(),
                    root.path().join("etc/cloud").display()
                )
            }
            _ => e,
        }
    })?;
    let base_doc = parse_named(root, &base_path, &base_text)?;
    let drop_in_dir = match base_doc.root.as_ref().and_then(|r| r.get("conf_d")) {
        Some((_, value)) => match value.to_value() {
            Value::Str(dir) if !dir.trim().is_empty() => {
                Some(PathBuf::from(dir.trim().trim_start_matches('/')))
            }
            _ => None,
        },
        None => Some(PathBuf::from(format!("{CLOUD_CFG}.d"))),
    };
    let mut files = vec![ConfigFile {
        path: base_path,
        text: base_text,
        doc: base_doc,
    }];
    if let Some(dir) = drop_in_dir {
        for entry in root.list_dir(&dir)?.into_iter().flatten() {
            let Some(name) = entry.name.to_str() else {
                continue;
            };
            if !name.ends_with(".cfg") || !entry.is_regular_file {
                continue;
            }
            let (path, text) = read_text(root, &dir.join(name))?;
            let doc = parse_named(root, &path, &text)?;
            files.push(ConfigFile { path, text, doc });
        }
    }
    Ok(ConfigSet { files })
}

fn parse_named(root: &Root, path: &Path, text: &str) -> Result<Document> {
    document::parse(text).map_err(|e| {
        let hint = if e.line.is_some()
            && !e.message.contains("Jinja")
            && !e.message.contains("top level")
            && !e.exceeds_a_bound()
        {
            " (cloud-init would ignore this whole file: fix the YAML, then run again)"
        } else {
            ""
        };
        anyhow!("{}: {e}{hint}", root.path().join(path).display())
    })
}

/// Reads a file as UTF-8 text; the error names the file and where the first
/// invalid byte is.
fn read_text(root: &Root, rel: &Path) -> Result<(PathBuf, String)> {
    let contents = root.read_file(rel)?;
    match String::from_utf8(contents.bytes) {
        Ok(text) => Ok((contents.path, text)),
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let before = &e.as_bytes()[..offset];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = offset
                - before
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
                + 1;
            Err(anyhow!(
                "{}: line {line} column {column}: not valid UTF-8 (cloud-init reads UTF-8: convert the file, e.g. with iconv)",
                root.path().join(&contents.path).display()
            ))
        }
    }
}

/// Whether a kept setting holds, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingState {
    pub setting: String,
    pub kept: bool,
    pub reasons: Vec<Reason>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// Root-relative file and line that decide, when one does.
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub text: String,
    /// Whether this point, on its own, lets cloud-init overwrite the setting.
    pub overwrites: bool,
}

/// Whether each edit of `profile` already holds in the effective
/// configuration; the setting is kept when all do.
pub fn setting_state(set: &ConfigSet, profile: &Profile) -> SettingState {
    let mut reasons = Vec::new();
    for pe in &profile.edits {
        reasons.extend(edit_state(set, &pe.edit));
    }
    SettingState {
        setting: profile.name.clone(),
        kept: reasons.iter().all(|r| !r.overwrites),
        reasons,
    }
}

fn edit_state(set: &ConfigSet, edit: &Edit) -> Vec<Reason> {
    let path_of = |i: usize| set.files[i].path.clone();
    match edit {
        Edit::Set {
            path,
            value,
            add_if_missing,
        } => {
            let keys: Vec<&str> = path.iter().map(String::as_str).collect();
            let dotted = path.join(".");
            match set.decider(&keys) {
                Some(d) if d.complete => {
                    let current = d.node.to_value();
                    let ok = editor::satisfies(&current, value);
                    vec![Reason {
                        file: Some(path_of(d.file)),
                        line: Some(d.line),
                        text: format!("{dotted}: {current}"),
                        overwrites: !ok,
                    }]
                }
                Some(d) => vec![Reason {
                    file: Some(path_of(d.file)),
                    line: Some(d.line),
                    text: format!(
                        "{} is {}, so {dotted} is not set",
                        keys[..keys.len() - 1].join("."),
                        d.node.to_value()
                    ),
                    overwrites: *add_if_missing,
                }],
                None => vec![Reason {
                    file: None,
                    line: None,
                    text: format!("{dotted} is not set (cloud-init's default applies)"),
                    overwrites: *add_if_missing,
                }],
            }
        }
        Edit::RemoveModule { module } => {
            let entries = set.module_entries(module);
            if entries.is_empty() {
                vec![Reason {
                    file: None,
                    line: None,
                    text: format!("{module} is in no module list"),
                    overwrites: false,
                }]
            } else {
                entries
                    .into_iter()
                    .map(|(list, file, line)| Reason {
                        file: Some(path_of(file)),
                        line: Some(line),
                        text: format!("{module} runs ({list})"),
                        overwrites: true,
                    })
                    .collect()
            }
        }
        Edit::RemoveListValue { key, value } => {
            let wanted = editor::canonical_module_name(value);
            match set.decider(&[key]) {
                Some(d) => {
                    let listed = match &d.node.kind {
                        NodeKind::Seq { items, .. } => items.iter().find(|i| {
                            i.to_value()
                                .as_str()
                                .is_some_and(|s| editor::canonical_module_name(s) == wanted)
                        }),
                        _ => None,
                    };
                    match listed {
                        Some(item) => vec![Reason {
                            file: Some(path_of(d.file)),
                            line: Some(item.line),
                            text: format!("{value} is in {key}"),
                            overwrites: true,
                        }],
                        None => vec![Reason {
                            file: None,
                            line: None,
                            text: format!("{value} is not in {key}"),
                            overwrites: false,
                        }],
                    }
                }
                None => vec![Reason {
                    file: None,
                    line: None,
                    text: format!("{key} is not set"),
                    overwrites: false,
                }],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> ConfigSet {
        ConfigSet::from_texts(
            files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn later_files_win_mappings_merge_lists_replace() {
        let s = set(&[
            (
                "cloud.cfg",
                "a: 1\nm: {x: 1, y: 1}\nl: [1, 2]\nn: {config: enabled}\n",
            ),
            ("d/10.cfg", "a: 2\nm: {y: 2}\nl: [3]\n"),
            ("d/20.cfg", "n: 5\n"),
        ]);
        let e = s.effective();
        assert_eq!(e.get("a"), Some(&Value::Int(2)));
        assert_eq!(e.get("m").unwrap().get("x"), Some(&Value::Int(1)));
        assert_eq!(e.get("m").unwrap().get("y"), Some(&Value::Int(2)));
        assert_eq!(e.get("l"), Some(&Value::seq(vec![Value::Int(3)])));
        assert_eq!(e.get("n"), Some(&Value::Int(5)));
        let d = s.decider(&["m", "y"]).unwrap();
        assert_eq!((d.file, d.line, d.complete), (1, 2, true));
        let d = s.decider(&["m", "x"]).unwrap();
        assert_eq!((d.file, d.line), (0, 2));
        let d = s.decider(&["n", "config"]).unwrap();
        assert_eq!((d.file, d.complete), (2, false));
    }

    #[test]
    fn a_higher_mapping_hides_a_lower_scalar() {
        let s = set(&[
            ("cloud.cfg", "network: 5\n"),
            ("d/50.cfg", "network: {renderers: [x]}\n"),
        ]);
        assert!(s.decider(&["network", "config"]).is_none());
        assert_eq!(s.effective().get("network").unwrap().get("config"), None);
    }

    #[test]
    fn decider_agrees_with_the_merge() {
        let s = set(&[
            (
                "cloud.cfg",
                "p: false\nnetwork: {config: enabled}\ncloud_final_modules: [a, scripts-user]\n",
            ),
            ("d/10.cfg", "p: true\n"),
            (
                "d/20.cfg",
                "network: {renderers: [x]}\ncloud_final_modules: [b]\n",
            ),
        ]);
        let e = s.effective();
        for path in [&["p"][..], &["network", "config"], &["cloud_final_modules"]] {
            let d = s.decider(path).unwrap();
            let mut v = &e;
            for k in path {
                v = v.get(k).unwrap();
            }
            assert_eq!(d.node.to_value(), *v, "{path:?}");
        }
        assert!(s.module_entries("scripts_user").is_empty());
        assert_eq!(
            s.module_entries("b"),
            vec![("cloud_final_modules".to_string(), 2, 2)]
        );
    }
}
