//! The effective configuration: what cloud-init actually reads, across
//! `/etc/cloud/cloud.cfg` and its drop-ins, and which file decides a value.
//!
//! cloud-init 22.4.2 (`cloudinit/util.py`: `read_conf_with_confd`,
//! `read_conf_d`, `read_conf`, `load_yaml`, `mergemanydict`) reads cloud.cfg,
//! then every name in the drop-in directory that ends in `.cfg` and is a
//! regular file after following symlinks, in Python's sort order of the
//! names, from the last one down. A file reached under two names is read
//! twice. The drop-ins are merged into one mapping, and cloud.cfg is merged
//! under that (`mergers.rs`: without `merge_how`, a key already present is
//! never replaced and two mappings under a key are merged recursively, so
//! lists and scalars come whole from the highest-precedence file). A file
//! PyYAML rejects, or whose top level is not a mapping, counts as empty (a
//! warning in cloud-init's log). A `conf_d` key in cloud.cfg names another
//! drop-in directory, or none when it is empty.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};

use crate::access::root::{AccessError, AccessErrorKind, Root};
use crate::guest::cloudinit::document::{
    self, Document, Node, NodeKind, ParseError, ParseErrorKind, Value,
};
use crate::guest::cloudinit::editor::{self, Edit, entry_module_name, is_module_list_key};
use crate::guest::cloudinit::merge_key::{self, Found};
use crate::guest::cloudinit::mergers::{
    self, python_key_eq, python_lower, python_strip, python_truthy, python_type_name,
};
use crate::guest::cloudinit::profile::Profile;

/// Where cloud-init looks for its base configuration, relative to the root.
pub const CLOUD_CFG: &str = "etc/cloud/cloud.cfg";

/// One configuration file as read.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Root-relative path of the file read (symlinks resolved inside the root).
    pub path: PathBuf,
    pub text: String,
    /// The parsed text; no content (`root: None`) when cloud-init ignores it.
    pub doc: Document,
    /// Why cloud-init reads this file as an empty configuration, if it does.
    pub ignored: Option<Ignored>,
}

/// A file cloud-init reads as `{}`: `load_yaml` catches the error, logs
/// "Failed loading yaml blob" and goes on without the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// What PyYAML (or `load_yaml`'s check of the top level) says.
    pub problem: String,
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cloud-init ignores this file (PyYAML: {}", self.problem)?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " at line {l} column {c})"),
            (Some(l), None) => write!(f, " at line {l})"),
            _ => write!(f, ")"),
        }
    }
}

/// cloud.cfg and its drop-ins. `files` holds each file once per resolved
/// path (cloud.cfg first, then the drop-ins in the order first read): that
/// is what is planned, edited and reported. `drop_ins` is the read
/// sequence: indices into `files`, in the order cloud-init sorts the names
/// (later ones take precedence), a file reached under two names listed
/// twice, cloud.cfg itself included when a drop-in name leads to it.
#[derive(Debug, Clone)]
pub struct ConfigSet {
    pub files: Vec<ConfigFile>,
    pub drop_ins: Vec<usize>,
    merged: Value,
    /// Whether every file read merges with the default mergers; only then
    /// does one file decide each value.
    default_merge: bool,
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

/// What the effective configuration holds at a key path.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<'a> {
    Found(&'a Value),
    /// The prefix `path[..depth]` holds `value`, which is not a mapping.
    Hidden {
        depth: usize,
        value: &'a Value,
    },
    Missing,
}

impl ConfigSet {
    /// Texts given in read order, each file once: cloud.cfg, then the
    /// drop-ins in cloud-init's order. The error names the file.
    pub fn from_texts(files: Vec<(PathBuf, String)>) -> Result<ConfigSet> {
        let drop_ins = (1..files.len()).collect();
        ConfigSet::from_reads(files, drop_ins, Path::new(""))
    }

    /// Distinct files (cloud.cfg first) and the drop-in read sequence.
    /// Errors name files as `shown_root` joined with their path.
    pub fn from_reads(
        files: Vec<(PathBuf, String)>,
        drop_ins: Vec<usize>,
        shown_root: &Path,
    ) -> Result<ConfigSet> {
        let files = files
            .into_iter()
            .map(|(path, text)| {
                let (doc, ignored) = read_config_text(&text)
                    .map_err(|e| anyhow!("{}: {e}", shown_root.join(&path).display()))?;
                Ok(ConfigFile {
                    path,
                    text,
                    doc,
                    ignored,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (merged, default_merge) = merge_files(&files, &drop_ins)
            .map_err(|(file, e)| anyhow!("{}", merge_refusal(&files[file], shown_root, &e)))?;
        Ok(ConfigSet {
            files,
            drop_ins,
            merged,
            default_merge,
        })
    }

    /// The same set with new texts for some files (by index).
    pub fn with_texts(&self, texts: &[String]) -> Result<ConfigSet> {
        ConfigSet::from_reads(
            self.files
                .iter()
                .zip(texts)
                .map(|(f, t)| (f.path.clone(), t.clone()))
                .collect(),
            self.drop_ins.clone(),
            Path::new(""),
        )
    }

    /// Indices of the files in the order cloud-init reads them: cloud.cfg,
    /// then the drop-ins (a file reached twice, twice).
    pub fn reads(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(0).chain(self.drop_ins.iter().copied())
    }

    /// Whether cloud-init merges these files only with its default mergers
    /// (no `merge_how` / `merge_type` anywhere).
    pub fn default_merge(&self) -> bool {
        self.default_merge
    }

    /// The merged configuration, as `read_conf_with_confd` returns it.
    pub fn effective(&self) -> Value {
        self.merged.clone()
    }

    /// What the merged configuration holds at `path`.
    pub fn lookup(&self, path: &[&str]) -> Lookup<'_> {
        let mut value = &self.merged;
        for (depth, key) in path.iter().enumerate() {
            match value {
                Value::Map(_) => match value.get(key) {
                    Some(v) => value = v,
                    None => return Lookup::Missing,
                },
                other => {
                    return Lookup::Hidden {
                        depth,
                        value: other,
                    };
                }
            }
        }
        Lookup::Found(value)
    }

    /// Files in precedence order, highest first (the read order reversed).
    fn by_precedence(&self) -> Vec<usize> {
        let mut order: Vec<usize> = self.reads().collect();
        order.reverse();
        order
    }

    /// The file that decides the value at `path` under the default mergers,
    /// replaying their rule key by key in precedence order: the first value
    /// found stays, except that a mapping found later is merged into a
    /// mapping, and replaces a string or a list (`m_dict` recurses into
    /// every mapping, and `m_str` / `m_list` give the incoming value back);
    /// a later non-mapping never counts. With other mergers this may not be
    /// where the value comes from; callers compare with [`ConfigSet::lookup`].
    pub fn decider(&self, path: &[&str]) -> Option<Decision<'_>> {
        let is_map = |n: &Node| matches!(n.kind, NodeKind::Map { .. });
        let yields_to_a_map = |n: &Node| {
            matches!(
                n.kind,
                NodeKind::Seq { .. }
                    | NodeKind::Scalar {
                        value: Value::Str(_),
                        ..
                    }
            )
        };
        // The mappings merged at the current depth, in precedence order.
        let mut maps: Vec<(usize, &Node)> = self
            .by_precedence()
            .into_iter()
            .filter_map(|i| Some((i, self.files[i].doc.root.as_ref()?)))
            .filter(|(_, root)| is_map(root))
            .collect();
        for (depth, key) in path.iter().enumerate() {
            let mut state: Option<(usize, &Node, &Node)> = None;
            let mut merged_maps = Vec::new();
            for &(file, map) in &maps {
                // Merge keys (`<<: *d`) count: the line named is where the
                // value is written, in the merged mapping.
                let Some(Found {
                    key: key_node,
                    value,
                    ..
                }) = merge_key::lookup(map, key)
                else {
                    continue;
                };
                match state {
                    None => {
                        state = Some((file, key_node, value));
                        if is_map(value) {
                            merged_maps.push((file, value));
                        }
                    }
                    Some((_, _, current)) if is_map(value) => {
                        if is_map(current) {
                            merged_maps.push((file, value));
                        } else if yields_to_a_map(current) {
                            state = Some((file, key_node, value));
                            merged_maps = vec![(file, value)];
                        }
                    }
                    Some(_) => {}
                }
            }
            let (file, key_node, value) = state?;
            let complete = depth + 1 == path.len();
            if complete || !is_map(value) {
                return Some(Decision {
                    file,
                    line: key_node.line,
                    node: value,
                    complete,
                });
            }
            maps = merged_maps;
        }
        None
    }

    /// The decider, when it agrees with the merged configuration.
    fn agreeing_decider(&self, path: &[&str]) -> Option<Decision<'_>> {
        let decision = self.decider(path)?;
        let agrees = match self.lookup(path) {
            Lookup::Found(v) => decision.complete && decision.node.to_value() == *v,
            Lookup::Hidden { value, .. } => {
                !decision.complete && decision.node.to_value() == *value
            }
            Lookup::Missing => false,
        };
        agrees.then_some(decision)
    }

    /// Where `merge_how` / `merge_type` change the merge: (file, line).
    pub fn merge_keys(&self) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for (index, file) in self.files.iter().enumerate() {
            let Some(root) = &file.doc.root else { continue };
            for key in ["merge_how", "merge_type"] {
                if let Some((k, _)) = root.get(key) {
                    found.push((index, k.line));
                }
            }
        }
        found
    }

    /// The entries of `module` in the effective module lists: (list key,
    /// file index, line of the entry).
    pub fn module_entries(&self, module: &str) -> Vec<(String, usize, usize)> {
        let wanted = editor::canonical_module_name(module);
        let names_it = |item: &Value| {
            entry_module_name(item).is_some_and(|n| editor::canonical_module_name(n) == wanted)
        };
        let mut found = Vec::new();
        for (key, list) in self.merged.as_map().into_iter().flatten() {
            let (Some(key), Value::Seq(items)) = (key.as_str(), list) else {
                continue;
            };
            if !is_module_list_key(key) || !items.iter().any(names_it) {
                continue;
            }
            // The file whose list is the effective one; with other mergers,
            // every file whose list names the module.
            let sources: Vec<usize> = match self.agreeing_decider(&[key]) {
                Some(d) => vec![d.file],
                None => (0..self.files.len()).collect(),
            };
            for file in sources {
                let Some(root) = &self.files[file].doc.root else {
                    continue;
                };
                let Some(Found { value: node, .. }) = merge_key::lookup(root, key) else {
                    continue;
                };
                if let NodeKind::Seq { items, .. } = &node.kind {
                    for item in items.iter().filter(|i| names_it(&i.to_value())) {
                        found.push((key.to_string(), file, item.line));
                    }
                }
            }
        }
        found
    }
}

/// Reads one file's text as cloud-init's `read_conf` does. A Jinja template
/// is refused: cloud-init renders it with instance data once that exists
/// (after the first stage), so its meaning cannot be known from the image.
fn read_config_text(text: &str) -> Result<(Document, Option<Ignored>), ParseError> {
    if let Some(kind) = template_kind(text) {
        if kind == "basic" {
            // `render_jinja_payload_from_file` raises NotJinjaError, and
            // `read_conf` reads the text as it is.
        } else if kind == "jinja" {
            return Err(ParseError {
                kind: ParseErrorKind::Unsupported,
                line: Some(1),
                column: Some(1),
                message: "this is a Jinja template (`## template: jinja`): cloud-init renders it with \
                          each instance's data once that exists, so what it sets cannot be known from \
                          the image; render it into a plain file, or edit it by hand"
                    .to_string(),
            });
        } else {
            return Err(ParseError {
                kind: ParseErrorKind::CloudInitFails,
                line: Some(1),
                column: Some(1),
                message: format!(
                    "unknown template type `{kind}`: cloud-init stops with an error on this file once \
                     instance data exists; remove or fix the `## template:` line"
                ),
            });
        }
    }
    match document::parse(text) {
        Ok(doc) => Ok((doc, None)),
        // PyYAML's errors (`YAMLError`) and a top level that is not a
        // mapping (`TypeError`) are caught by `load_yaml`: cloud-init reads
        // the file as `{}`. Only our own limits, and what cloud-init itself
        // fails on, refuse.
        Err(e) if e.is_ignored_by_cloud_init() => {
            let problem = e.problem().to_string();
            Ok((
                Document { root: None },
                Some(Ignored {
                    line: e.line,
                    column: e.column,
                    problem,
                }),
            ))
        }
        Err(e) => Err(e),
    }
}

/// cloud-init's `templater.detect_template` on the first line:
/// `##\s*template:(.*)`, any case; the type lowercased and stripped.
fn template_kind(text: &str) -> Option<String> {
    let first = text.split('\n').next().unwrap_or("");
    let rest = first.strip_prefix("##")?;
    let rest =
        rest.trim_start_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c));
    let head = rest.get(..9)?;
    if !head.eq_ignore_ascii_case("template:") {
        return None;
    }
    Some(python_strip(&python_lower(&rest[9..])))
}

/// `read_conf_with_confd`'s merge: the drop-ins from the last read down,
/// then cloud.cfg under them. Returns the merged mapping and whether only
/// default mergers took part; on failure the file cloud-init fails on.
fn merge_files(
    files: &[ConfigFile],
    drop_ins: &[usize],
) -> Result<(Value, bool), (usize, mergers::MergeError)> {
    let values: Vec<Value> = files.iter().map(|f| f.doc.to_value()).collect();
    let value_of = |index: usize| values[index].clone();
    let default_merge = files.iter().all(|f| {
        f.doc
            .root
            .as_ref()
            .is_none_or(|r| r.get("merge_how").is_none() && r.get("merge_type").is_none())
    });
    let order: Vec<usize> = drop_ins.iter().rev().copied().collect();
    let drop_in_cfg = mergers::merge_many(order.iter().map(|&i| value_of(i)).collect())
        .map_err(|(i, e)| (order[i], e))?;
    let merged = mergers::merge_many(vec![drop_in_cfg, value_of(0)]).map_err(|(i, e)| {
        // The drop-ins' merged mapping keeps a `merge_type` that came with a
        // `merge_how` in some drop-in; that one is named.
        let file = if i == 0 {
            order
                .iter()
                .copied()
                .find(|&f| values[f].get("merge_type").is_some())
                .unwrap_or(0)
        } else {
            0
        };
        (file, e)
    })?;
    Ok((merged, default_merge))
}

fn merge_refusal(file: &ConfigFile, shown_root: &Path, e: &mergers::MergeError) -> String {
    let line = file
        .doc
        .root
        .as_ref()
        .and_then(|r| r.get("merge_how").or_else(|| r.get("merge_type")))
        .map(|(k, _)| format!(" line {}:", k.line))
        .unwrap_or_default();
    format!(
        "{}:{line} cloud-init cannot merge this file: {e}; fix or remove merge_how / merge_type",
        shown_root.join(&file.path).display()
    )
}

/// Python's order of `os.listdir` names: str compared by code point, with
/// the bytes that are not UTF-8 decoded as U+DC80..U+DCFF (surrogateescape).
fn python_name_order(name: &OsStr) -> Vec<u32> {
    let mut key = Vec::new();
    for chunk in name.as_bytes().utf8_chunks() {
        key.extend(chunk.valid().chars().map(u32::from));
        key.extend(chunk.invalid().iter().map(|&b| 0xDC00 + u32::from(b)));
    }
    key
}

/// Reads cloud.cfg and its drop-ins from the root, as cloud-init would find
/// them inside the image.
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
    let (base_doc, _) = read_config_text(&base_text)
        .map_err(|e| anyhow!("{}: {e}", root.path().join(&base_path).display()))?;
    let drop_in_dir = drop_in_dir(&base_doc)
        .map_err(|e| anyhow!("{}: {e}", root.path().join(&base_path).display()))?;
    let mut files = vec![(base_path, base_text)];
    let mut drop_ins = Vec::new();
    if let Some(dir) = drop_in_dir
        && let Some(mut entries) = list_drop_in_dir(root, &dir)?
    {
        entries.sort_by_cached_key(|e| python_name_order(&e.name));
        for entry in entries {
            if !entry.name.as_bytes().ends_with(b".cfg") || !entry.is_regular_file {
                continue;
            }
            let (path, text) = read_text(root, &dir.join(&entry.name))?;
            let index = match files.iter().position(|(p, _)| *p == path) {
                Some(index) => index,
                None => {
                    files.push((path, text));
                    files.len() - 1
                }
            };
            drop_ins.push(index);
        }
    }
    ConfigSet::from_reads(files, drop_ins, root.path())
}

/// The drop-in directory `read_conf_with_confd` reads, root-relative: the
/// `conf_d` of cloud.cfg when present (none when it is empty or false), else
/// `cloud.cfg.d`. A relative `conf_d` is taken from `/`, cloud-init's
/// working directory.
fn drop_in_dir(base: &Document) -> Result<Option<PathBuf>, String> {
    let value = base.to_value();
    let conf_d = value.as_map().and_then(|m| {
        m.iter()
            .find(|(k, _)| python_key_eq(k, &Value::Str("conf_d".into())))
    });
    let Some((_, conf_d)) = conf_d else {
        return Ok(Some(PathBuf::from(format!("{CLOUD_CFG}.d"))));
    };
    if !python_truthy(conf_d) {
        return Ok(None);
    }
    let Value::Str(dir) = conf_d else {
        let line = base
            .root
            .as_ref()
            .and_then(|r| r.get("conf_d"))
            .map(|(k, _)| format!("line {}: ", k.line))
            .unwrap_or_default();
        return Err(format!(
            "{line}conf_d is {}, not a directory name: cloud-init stops with a TypeError on it; make it a path or remove it",
            python_type_name(conf_d)
        ));
    };
    let dir = python_strip(dir);
    if dir.is_empty() || dir.contains('\0') {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(dir.trim_start_matches('/'))))
}

/// `os.path.isdir` then `os.listdir`: anything that is not a directory
/// (missing, a regular file, a symlink loop) means no drop-ins.
fn list_drop_in_dir(root: &Root, dir: &Path) -> Result<Option<Vec<crate::access::root::DirEntry>>> {
    match root.list_dir(dir) {
        Ok(entries) => Ok(entries),
        Err(e) => match e.kind() {
            AccessErrorKind::NotFound
            | AccessErrorKind::NotADirectory { .. }
            | AccessErrorKind::TooManyLinks => Ok(None),
            _ => Err(e.into()),
        },
    }
}

/// Reads a file as UTF-8 text; the error names the file and where the first
/// invalid byte is. cloud-init decodes every file as UTF-8 and does not
/// catch the error: it stops reading its configuration altogether.
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
                "{}: line {line} column {column}: not valid UTF-8; cloud-init stops with a UnicodeDecodeError on this file and reads no configuration at all: convert the file to UTF-8, e.g. with iconv",
                root.path().join(&contents.path).display()
            ))
        }
    }
}

/// cloud-init's `util.translate_bool`: false for anything Python finds
/// false (`None`, `0`, `""`, empty lists), a bool as it is, else true only
/// when `str(value).lower().strip()` is `true`, `1`, `on`, `yes` or one of
/// `addons`. `y`, `2` and `enabled` are false.
pub fn translate_bool(value: &Value, addons: &[&str]) -> bool {
    if !python_truthy(value) {
        return false;
    }
    if let Value::Bool(b) = value {
        return *b;
    }
    let Some(text) = python_str(value) else {
        // A float, a date, a list or a mapping: its str() is never a word.
        return false;
    };
    let word = python_strip(&python_lower(&text));
    ["true", "1", "on", "yes"].contains(&word.as_str()) || addons.contains(&word.as_str())
}

/// Python's `str()` of a scalar PyYAML builds, where it could matter.
fn python_str(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some("None".to_string()),
        Value::Bool(true) => Some("True".to_string()),
        Value::Bool(false) => Some("False".to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Str(s) => Some(s.clone()),
        _ => None,
    }
}

/// Whether cloud-init reads `value` as "on" where a setting expects a
/// boolean. `top_level_key` names the setting when the value is at the top
/// level of the configuration, where cloud-init's modules read them.
/// - `manage_etc_hosts` (`cc_update_etc_hosts`): `get_cfg_option_str`, then
///   `translate_bool` with the addon `template`, and `localhost` also
///   manages /etc/hosts.
/// - everything else (`preserve_hostname`, ...): `get_cfg_option_bool`.
pub fn reads_as_true(top_level_key: Option<&str>, value: &Value) -> bool {
    match top_level_key {
        Some("manage_etc_hosts") => {
            let text = python_str(value).unwrap_or_default();
            translate_bool(&Value::Str(text.clone()), &["template"]) || text == "localhost"
        }
        _ => translate_bool(value, &[]),
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

/// Where a reason's value comes from: the deciding file and line, or, when
/// `merge_how` makes several files contribute, the first merge key.
fn attribution(
    set: &ConfigSet,
    decision: Option<&Decision<'_>>,
) -> (Option<PathBuf>, Option<usize>, String) {
    match decision {
        Some(d) => (
            Some(set.files[d.file].path.clone()),
            Some(d.line),
            String::new(),
        ),
        None => match set.merge_keys().first() {
            Some(&(file, line)) => (
                Some(set.files[file].path.clone()),
                Some(line),
                " (as merge_how / merge_type merge the files)".to_string(),
            ),
            None => (None, None, String::new()),
        },
    }
}

fn edit_state(set: &ConfigSet, edit: &Edit) -> Vec<Reason> {
    match edit {
        Edit::Set {
            path,
            value,
            add_if_missing,
        } => {
            let keys: Vec<&str> = path.iter().map(String::as_str).collect();
            let dotted = path.join(".");
            let decision = set.agreeing_decider(&keys);
            let (file, line, how) = attribution(set, decision.as_ref());
            match set.lookup(&keys) {
                Lookup::Found(current) => {
                    let top_level_key = (keys.len() == 1).then_some(keys[0]);
                    let ok = editor::satisfies(top_level_key, current, value);
                    vec![Reason {
                        file,
                        line,
                        text: format!("{dotted}: {current}{how}"),
                        overwrites: !ok,
                    }]
                }
                Lookup::Hidden {
                    depth,
                    value: hiding,
                } => vec![Reason {
                    file,
                    line,
                    text: format!(
                        "{} is {hiding}, so {dotted} is not set{how}",
                        keys[..depth].join(".")
                    ),
                    overwrites: *add_if_missing,
                }],
                Lookup::Missing => vec![Reason {
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
                        file: Some(set.files[file].path.clone()),
                        line: Some(line),
                        text: format!("{module} runs ({list})"),
                        overwrites: true,
                    })
                    .collect()
            }
        }
        Edit::RemoveListValue { key, value } => {
            let wanted = editor::canonical_module_name(value);
            let names_it = |item: &Value| {
                item.as_str()
                    .is_some_and(|s| editor::canonical_module_name(s) == wanted)
            };
            let listed = match set.lookup(&[key]) {
                Lookup::Found(Value::Seq(items)) => items.iter().any(names_it),
                Lookup::Found(_) | Lookup::Hidden { .. } | Lookup::Missing => false,
            };
            if !listed {
                return vec![Reason {
                    file: None,
                    line: None,
                    text: format!("{value} is not in {key}"),
                    overwrites: false,
                }];
            }
            let sources: Vec<usize> = match set.agreeing_decider(&[key]) {
                Some(d) => vec![d.file],
                None => (0..set.files.len()).collect(),
            };
            let mut reasons = Vec::new();
            for file in sources {
                let Some(root) = &set.files[file].doc.root else {
                    continue;
                };
                let Some(Found { value: node, .. }) = merge_key::lookup(root, key) else {
                    continue;
                };
                if let NodeKind::Seq { items, .. } = &node.kind {
                    for item in items.iter().filter(|i| names_it(&i.to_value())) {
                        reasons.push(Reason {
                            file: Some(set.files[file].path.clone()),
                            line: Some(item.line),
                            text: format!("{value} is in {key}"),
                            overwrites: true,
                        });
                    }
                }
            }
            if reasons.is_empty() {
                reasons.push(Reason {
                    file: None,
                    line: None,
                    text: format!("{value} is in {key}"),
                    overwrites: true,
                });
            }
            reasons
        }
    }
}

#[cfg(test)]
impl ConfigSet {
    /// For unit tests here and in the planner: `(path, text)` pairs in read
    /// order, each file once.
    pub(crate) fn from_test_files(files: &[(&str, &str)]) -> ConfigSet {
        ConfigSet::from_texts(
            files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                .collect(),
        )
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> ConfigSet {
        ConfigSet::from_test_files(files)
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
    fn a_lower_mapping_replaces_a_higher_string_or_list() {
        // m_dict recurses into the incoming mapping, and m_str / m_list hand
        // it back: the drop-in's string loses to cloud.cfg's mapping.
        for higher in ["network: x\n", "network: [a]\n"] {
            let s = set(&[
                ("cloud.cfg", "network: {config: disabled}\n"),
                ("d/50.cfg", higher),
            ]);
            assert_eq!(
                s.lookup(&["network", "config"]),
                Lookup::Found(&Value::Str("disabled".into())),
                "{higher}"
            );
            let d = s.decider(&["network", "config"]).unwrap();
            assert_eq!((d.file, d.line, d.complete), (0, 1, true), "{higher}");
        }
        // A number or a null stays.
        let s = set(&[
            ("cloud.cfg", "network: {config: disabled}\n"),
            ("d/50.cfg", "network: 5\n"),
        ]);
        assert_eq!(s.effective().get("network"), Some(&Value::Int(5)));
        let d = s.decider(&["network", "config"]).unwrap();
        assert_eq!((d.file, d.complete), (1, false));
    }

    #[test]
    fn translate_bool_is_cloud_init_s() {
        let yes = |text: &str| translate_bool(&document::resolve_plain(text), &[]);
        for t in ["true", "True", "yes", "on", "1", "ON"] {
            assert!(yes(t), "{t}");
        }
        for t in ["y", "Y", "n", "2", "0", "false", "enabled", "~", "1.0"] {
            assert!(!yes(t), "{t}");
        }
        assert!(translate_bool(&Value::Str(" Yes\u{1f}".into()), &[]));
        assert!(!translate_bool(&Value::seq(vec![Value::Int(1)]), &[]));
        assert!(reads_as_true(
            Some("manage_etc_hosts"),
            &Value::Str("localhost".into())
        ));
        assert!(reads_as_true(
            Some("manage_etc_hosts"),
            &Value::Str("Template".into())
        ));
        assert!(!reads_as_true(None, &Value::Str("localhost".into())));
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
