//! cloud-init's configuration mergers, as `util.mergemanydict` applies them
//! (`cloudinit/mergers/__init__.py`, `m_dict.py`, `m_list.py`, `m_str.py` of
//! cloud-init 22.4.2).
//!
//! Each source (one file's top-level mapping) may say how it is merged into
//! what came before it with `merge_how` (or, when that is absent or null,
//! `merge_type`): a string such as `dict(replace)+list(append)+str()` or a
//! list of `[name, options...]` / `{name:, settings:}`. The key is removed
//! from the source before merging. Without it the default is
//! `list()+dict()+str()`: a key already present is kept, two mappings under a
//! key are merged recursively, anything else stays as it was.
//!
//! Python's duck typing is followed where it decides the result (an option
//! list given as a string is searched for substrings, a mapping is iterated by
//! its keys); where cloud-init itself raises an exception, so that it cannot
//! read its configuration at all, we return an error instead of a guess.

use std::collections::HashMap;
use std::rc::Rc;

use crate::guest::cloudinit::document::Value;

/// Why cloud-init could not merge a source: it raises an exception there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeError(pub String);

impl std::fmt::Display for MergeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, MergeError> {
    Err(MergeError(message.into()))
}

/// The options a merger was given: Python's `word in opts` on whatever the
/// configuration held there.
#[derive(Debug, Clone)]
enum Options {
    /// A list: membership by equality.
    List(Vec<Value>),
    /// A string: substring test (`"replace" in "no_replace"` is true).
    Text(String),
    /// A mapping: membership of keys.
    Keys(Vec<Value>),
}

impl Options {
    fn from_value(value: &Value) -> Result<Options, MergeError> {
        match value {
            Value::Seq(items) => Ok(Options::List(items.to_vec())),
            Value::Str(s) => Ok(Options::Text(s.clone())),
            Value::Map(entries) => Ok(Options::Keys(
                entries.iter().map(|(k, _)| k.clone()).collect(),
            )),
            other => fail(format!(
                "merger settings must be a list, not {} (cloud-init fails with a TypeError)",
                python_type_name(other)
            )),
        }
    }

    fn has(&self, word: &str) -> bool {
        match self {
            Options::List(items) | Options::Keys(items) => {
                items.iter().any(|i| i.as_str() == Some(word))
            }
            Options::Text(text) => text.contains(word),
        }
    }

    fn has_any(&self, words: &[&str]) -> bool {
        words.iter().any(|w| self.has(w))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Replace,
    NoReplace,
    Append,
    Prepend,
}

/// The first of `methods` named in the options, else the default.
fn pick(options: &Options, methods: &[(&str, Method)], default: Method) -> Method {
    methods
        .iter()
        .find(|(name, _)| options.has(name))
        .map_or(default, |(_, m)| *m)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merger {
    Dict {
        method: Method,
        recurse_str: bool,
        recurse_array: bool,
        allow_delete: bool,
    },
    List {
        method: Method,
        recurse_str: bool,
        recurse_dict: bool,
        recurse_array: bool,
    },
    Str {
        append: bool,
    },
}

impl Merger {
    fn build(name: &str, options: &Options) -> Result<Merger, MergeError> {
        let module = if name.starts_with("m_") {
            name.to_string()
        } else {
            format!("m_{name}")
        };
        Ok(match module.as_str() {
            "m_dict" => Merger::Dict {
                method: pick(
                    options,
                    &[
                        ("replace", Method::Replace),
                        ("no_replace", Method::NoReplace),
                    ],
                    Method::NoReplace,
                ),
                recurse_str: options.has("recurse_str"),
                recurse_array: options.has_any(&["recurse_array", "recurse_list"]),
                allow_delete: options.has("allow_delete"),
            },
            "m_list" => Merger::List {
                method: pick(
                    options,
                    &[
                        ("append", Method::Append),
                        ("prepend", Method::Prepend),
                        ("replace", Method::Replace),
                        ("no_replace", Method::NoReplace),
                    ],
                    Method::Replace,
                ),
                recurse_str: options.has("recurse_str"),
                recurse_dict: options.has("recurse_dict"),
                recurse_array: options.has_any(&["recurse_array", "recurse_list"]),
            },
            "m_str" => Merger::Str {
                append: options.has("append"),
            },
            _ => {
                return fail(format!(
                    "there is no merger named `{name}` (cloud-init knows dict, list and str, and fails with an ImportError)"
                ));
            }
        })
    }
}

/// The mergers one source asks for, in its order: cloud-init gives a value
/// to the first merger that handles its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mergers(Vec<Merger>);

impl Mergers {
    /// `list()+dict()+str()`, what a source without `merge_how` gets.
    pub fn default_mergers() -> Mergers {
        Mergers::from_names(&[("list", vec![]), ("dict", vec![]), ("str", vec![])])
            .expect("the default mergers exist")
    }

    /// Whether these are the default mergers (only then do the simple
    /// "highest file wins" attributions hold).
    pub fn is_default(&self) -> bool {
        *self == Mergers::default_mergers()
    }

    fn from_names(parsed: &[(&str, Vec<String>)]) -> Result<Mergers, MergeError> {
        parsed
            .iter()
            .map(|(name, options)| {
                Merger::build(
                    name,
                    &Options::List(options.iter().cloned().map(Value::Str).collect()),
                )
            })
            .collect::<Result<_, _>>()
            .map(Mergers)
    }

    fn first(&self, wants: fn(&Merger) -> bool) -> Option<Merger> {
        self.0.iter().copied().find(wants)
    }
}

/// `dict_extract_mergers` plus `construct`: removes `merge_how` (or, when it
/// is absent or null, `merge_type`) from the source and returns the mergers
/// it names; the default ones when it names none.
pub fn extract_mergers(source: &mut Vec<(Value, Value)>) -> Result<Mergers, MergeError> {
    let raw = match pop(source, "merge_how") {
        Some(Value::Null) | None => pop(source, "merge_type"),
        found => found,
    };
    let parsed: Vec<(String, Options)> = match raw {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Str(text)) => string_extract_mergers(&text)?
            .into_iter()
            .map(|(name, options)| {
                (
                    name,
                    Options::List(options.into_iter().map(Value::Str).collect()),
                )
            })
            .collect(),
        Some(other) => list_extract_mergers(&other)?,
    };
    if parsed.is_empty() {
        return Ok(Mergers::default_mergers());
    }
    parsed
        .iter()
        .map(|(name, options)| Merger::build(name, options))
        .collect::<Result<_, _>>()
        .map(Mergers)
}

fn pop(map: &mut Vec<(Value, Value)>, key: &str) -> Option<Value> {
    let index = map.iter().position(|(k, _)| k.as_str() == Some(key))?;
    Some(map.remove(index).1)
}

/// `string_extract_mergers`: `name(opt, opt)+name()...`, names lowercased
/// with `-` as `_`.
fn string_extract_mergers(text: &str) -> Result<Vec<(String, Vec<String>)>, MergeError> {
    let mut parsed = Vec::new();
    for part in text.split('+') {
        let part = python_strip(&python_lower(part)).replace('-', "_");
        if part.is_empty() {
            continue;
        }
        // NAME_MTCH: ^[a-zA-Z_][A-Za-z0-9_]*\((.*?)\)$ ; `.` stops at a line
        // break, and the name is ASCII only.
        let open = part.find('(');
        let valid = open.is_some_and(|open| {
            let name = &part[..open];
            name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && part.ends_with(')')
                && !part[open..].contains('\n')
        });
        let Some(open) = open.filter(|_| valid) else {
            return fail(format!(
                "`{part}` is not a merger such as dict(replace) (cloud-init fails with a ValueError)"
            ));
        };
        let name = part[..open].to_string();
        let inner = &part[open + 1..part.len() - 1];
        let options = python_strip(inner)
            .split(',')
            .map(|o| python_lower(&python_strip(o)))
            .filter(|o| !o.is_empty())
            .collect();
        parsed.push((name, options));
    }
    Ok(parsed)
}

/// The non-string forms: a list (or, iterated as Python does, a mapping's
/// keys) of `[name, options...]`, `"name..."` (first character and the rest)
/// or `{name: ..., settings: ...}`.
fn list_extract_mergers(raw: &Value) -> Result<Vec<(String, Options)>, MergeError> {
    let items: Vec<Value> = match raw {
        Value::Seq(items) => items.to_vec(),
        Value::Map(entries) => entries.iter().map(|(k, _)| k.clone()).collect(),
        other => {
            return fail(format!(
                "merge_how is {}, not a string or a list (cloud-init fails with a TypeError)",
                python_type_name(other)
            ));
        }
    };
    let mut parsed = Vec::new();
    for item in &items {
        let (name, options) = match item {
            Value::Map(_) => {
                let name = match item.get("name") {
                    Some(Value::Str(s)) => python_strip(&s.replace('-', "_")),
                    Some(other) => {
                        return fail(format!(
                            "a merger name is {} (cloud-init fails with an AttributeError)",
                            python_type_name(other)
                        ));
                    }
                    None => {
                        return fail(
                            "a merger mapping has no `name` (cloud-init fails with a KeyError)",
                        );
                    }
                };
                let Some(settings) = item.get("settings") else {
                    return fail(
                        "a merger mapping has no `settings` (cloud-init fails with a KeyError)",
                    );
                };
                (Value::Str(name), Settings::Given(settings.clone()))
            }
            Value::Str(s) => {
                let mut chars = s.chars();
                let Some(first) = chars.next() else {
                    return fail(
                        "a merger is an empty string (cloud-init fails with an IndexError)",
                    );
                };
                let rest: String = chars.collect();
                let options = if rest.is_empty() {
                    Options::List(Vec::new())
                } else {
                    Options::Text(rest)
                };
                (Value::Str(first.to_string()), Settings::Ready(options))
            }
            Value::Seq(parts) => match parts.split_first() {
                None => {
                    return fail("a merger is an empty list (cloud-init fails with an IndexError)");
                }
                Some((name, rest)) => (name.clone(), Settings::Ready(Options::List(rest.to_vec()))),
            },
            other => {
                return fail(format!(
                    "a merger is {} (cloud-init fails with a TypeError)",
                    python_type_name(other)
                ));
            }
        };
        if !python_truthy(&name) {
            continue;
        }
        let Value::Str(name) = name else {
            return fail(format!(
                "a merger name is {} (cloud-init fails with an AttributeError)",
                python_type_name(&name)
            ));
        };
        // Settings are only looked into when the merger is built, so those
        // of a skipped entry never fail.
        let options = match options {
            Settings::Ready(options) => options,
            Settings::Given(value) => Options::from_value(&value)?,
        };
        parsed.push((name, options));
    }
    Ok(parsed)
}

enum Settings {
    Ready(Options),
    Given(Value),
}

/// `mergemanydict(sources)`: sources from the highest precedence down, each
/// merged into the result with its own mergers. Empty sources are skipped.
/// On failure, the index of the source cloud-init fails on.
pub fn merge_many(sources: Vec<Value>) -> Result<Value, (usize, MergeError)> {
    let mut merged = Value::map(Vec::new());
    for (index, source) in sources.into_iter().enumerate() {
        let Value::Map(entries) = source else {
            continue;
        };
        if entries.is_empty() {
            continue;
        }
        let mut entries = Rc::unwrap_or_clone(entries);
        let mergers = extract_mergers(&mut entries).map_err(|e| (index, e))?;
        let mut merge = Merge {
            mergers: &mergers,
            memo: HashMap::new(),
        };
        merged = merge
            .merge(merged, Value::map(entries))
            .map_err(|e| (index, e))?;
    }
    Ok(merged)
}

/// The address of a shared list or mapping.
fn address(value: &Value) -> Option<usize> {
    match value {
        Value::Seq(items) => Some(Rc::as_ptr(items) as *const u8 as usize),
        Value::Map(entries) => Some(Rc::as_ptr(entries) as *const u8 as usize),
        _ => None,
    }
}

/// One source merged with its mergers. Values built through aliases are
/// DAGs whose trees may be exponentially large; merging the same pair of
/// shared collections again gives the same result, so `memo` (by the pair's
/// addresses, holding both so no address is reused) answers it instead.
struct Merge<'a> {
    mergers: &'a Mergers,
    memo: HashMap<(usize, usize), (Value, Value, Value)>,
}

impl Merge<'_> {
    /// `LookupMerger.merge(value, merge_with)`: the first merger that
    /// handles the type of `value` decides; a type none handles keeps
    /// `value`.
    fn merge(&mut self, value: Value, merge_with: Value) -> Result<Value, MergeError> {
        let pair = address(&value).zip(address(&merge_with));
        if let Some(pair) = pair
            && let Some((_, _, done)) = self.memo.get(&pair)
        {
            return Ok(done.clone());
        }
        let result = self.dispatch(value.clone(), merge_with.clone())?;
        if let Some(pair) = pair {
            self.memo.insert(pair, (value, merge_with, result.clone()));
        }
        Ok(result)
    }

    fn dispatch(&mut self, value: Value, merge_with: Value) -> Result<Value, MergeError> {
        let mergers = self.mergers;
        match value {
            Value::Map(_) => match mergers.first(|m| matches!(m, Merger::Dict { .. })) {
                Some(Merger::Dict {
                    method,
                    recurse_str,
                    recurse_array,
                    allow_delete,
                }) => self.merge_dict(
                    value,
                    merge_with,
                    method,
                    (recurse_str, recurse_array, allow_delete),
                ),
                _ => Ok(value),
            },
            Value::Seq(_) => match mergers.first(|m| matches!(m, Merger::List { .. })) {
                Some(Merger::List {
                    method,
                    recurse_str,
                    recurse_dict,
                    recurse_array,
                }) => self.merge_list(
                    value,
                    merge_with,
                    method,
                    (recurse_str, recurse_dict, recurse_array),
                ),
                _ => Ok(value),
            },
            Value::Str(_) => match mergers.first(|m| matches!(m, Merger::Str { .. })) {
                Some(Merger::Str { append }) => merge_str(value, merge_with, append),
                _ => Ok(value),
            },
            other => Ok(other),
        }
    }

    fn merge_dict(
        &mut self,
        value: Value,
        merge_with: Value,
        method: Method,
        (recurse_str, recurse_array, allow_delete): (bool, bool, bool),
    ) -> Result<Value, MergeError> {
        let Value::Map(entries) = value else {
            return Ok(value);
        };
        let Value::Map(with) = merge_with else {
            return Ok(Value::Map(entries));
        };
        let mut entries = Rc::unwrap_or_clone(entries);
        let mut index = StrKeyIndex::of(&entries);
        for (key, new) in with.iter() {
            match index.find(&entries, key) {
                None => {
                    index.pushed(&entries, key);
                    entries.push((key.clone(), new.clone()));
                }
                Some(i) if *new == Value::Null && allow_delete => {
                    entries.remove(i);
                    index = StrKeyIndex::of(&entries);
                }
                Some(i) => {
                    let old = std::mem::replace(&mut entries[i].1, Value::Null);
                    entries[i].1 = if method == Method::Replace {
                        new.clone()
                    } else {
                        let recurse = match new {
                            Value::Seq(_) => recurse_array,
                            Value::Str(_) => recurse_str,
                            // recurse_dict is always on in m_dict.
                            Value::Map(_) => true,
                            _ => false,
                        };
                        if recurse {
                            self.merge(old, new.clone())?
                        } else {
                            old
                        }
                    };
                }
            }
        }
        Ok(Value::map(entries))
    }

    fn merge_list(
        &mut self,
        value: Value,
        merge_with: Value,
        method: Method,
        (recurse_str, recurse_dict, recurse_array): (bool, bool, bool),
    ) -> Result<Value, MergeError> {
        let Value::Seq(old) = value else {
            return Ok(value);
        };
        if method == Method::Replace && !matches!(merge_with, Value::Seq(_)) {
            return Ok(merge_with);
        }
        match method {
            Method::Prepend => {
                let mut merged = python_iterate(&merge_with)?;
                merged.extend(old.iter().cloned());
                return Ok(Value::seq(merged));
            }
            Method::Append => {
                let mut merged = Rc::unwrap_or_clone(old);
                merged.extend(python_iterate(&merge_with)?);
                return Ok(Value::seq(merged));
            }
            _ => {}
        }
        let with_len = python_len(&merge_with)?;
        if method == Method::NoReplace {
            // Python still evaluates `merge_with[i]` for each common index
            // before keeping the old item: a mapping without those keys
            // raises a KeyError.
            if let Value::Map(entries) = &merge_with
                && let Some(missing) = (0..old.len().min(with_len)).find(|&i| {
                    !entries
                        .iter()
                        .any(|(k, _)| python_key_eq(k, &Value::Int(i as i128)))
                })
            {
                return fail(format!(
                    "list(no_replace) would look up item {missing} of a mapping (cloud-init fails with a KeyError)"
                ));
            }
            return Ok(Value::Seq(old));
        }
        let Value::Seq(with) = merge_with else {
            unreachable!("replace with a non-list returned above")
        };
        let mut merged = Rc::unwrap_or_clone(old);
        let common = merged.len().min(with_len);
        for (slot, new) in merged.iter_mut().zip(with.iter()).take(common) {
            let recurse = match new {
                Value::Seq(_) => recurse_array,
                Value::Str(_) => recurse_str,
                Value::Map(_) => recurse_dict,
                _ => false,
            };
            let old = std::mem::replace(slot, Value::Null);
            *slot = if recurse {
                self.merge(old, new.clone())?
            } else {
                new.clone()
            };
        }
        Ok(Value::seq(merged))
    }
}

/// Finds a key of a mapping under construction as a Python dict does:
/// string keys through a hash index (mappings may hold thousands of keys),
/// the few others by Python's equality (`1`, `1.0` and `true` are one key).
struct StrKeyIndex {
    strings: HashMap<String, usize>,
}

impl StrKeyIndex {
    fn of(entries: &[(Value, Value)]) -> StrKeyIndex {
        let mut strings = HashMap::new();
        for (i, (k, _)) in entries.iter().enumerate() {
            if let Value::Str(s) = k {
                strings.entry(s.clone()).or_insert(i);
            }
        }
        StrKeyIndex { strings }
    }

    fn find(&self, entries: &[(Value, Value)], key: &Value) -> Option<usize> {
        match key {
            Value::Str(s) => self.strings.get(s).copied(),
            _ => entries.iter().position(|(k, _)| python_key_eq(k, key)),
        }
    }

    /// Records `key`, about to be pushed at the end of `entries`.
    fn pushed(&mut self, entries: &[(Value, Value)], key: &Value) {
        if let Value::Str(s) = key {
            self.strings.insert(s.clone(), entries.len());
        }
    }
}

fn merge_str(value: Value, merge_with: Value, append: bool) -> Result<Value, MergeError> {
    if !append {
        return Ok(merge_with);
    }
    match (value, merge_with) {
        (Value::Str(a), Value::Str(b)) => Ok(Value::Str(a + &b)),
        (_, other) => fail(format!(
            "str(append) would add {} to a string (cloud-init fails with a TypeError)",
            python_type_name(&other)
        )),
    }
}

/// `list.extend(x)`: the items Python iterates `x` into.
fn python_iterate(value: &Value) -> Result<Vec<Value>, MergeError> {
    match value {
        Value::Seq(items) => Ok(items.to_vec()),
        Value::Map(entries) => Ok(entries.iter().map(|(k, _)| k.clone()).collect()),
        Value::Str(s) => Ok(s.chars().map(|c| Value::Str(c.to_string())).collect()),
        other => fail(format!(
            "a list merger was given {} to add (cloud-init fails with a TypeError)",
            python_type_name(other)
        )),
    }
}

fn python_len(value: &Value) -> Result<usize, MergeError> {
    match value {
        Value::Seq(items) => Ok(items.len()),
        Value::Map(entries) => Ok(entries.len()),
        Value::Str(s) => Ok(s.chars().count()),
        other => fail(format!(
            "a list merger was given {} (cloud-init fails with a TypeError)",
            python_type_name(other)
        )),
    }
}

/// The name of the Python type PyYAML builds for a value.
pub fn python_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null (NoneType)",
        Value::Bool(_) => "a boolean",
        Value::Int(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Timestamp(_) => "a date",
        Value::Seq(_) => "a list",
        Value::Map(_) => "a mapping",
    }
}

/// Python's truth value of a loaded YAML value.
pub fn python_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Float(f) => *f != 0.0,
        Value::Str(s) => !s.is_empty(),
        Value::Timestamp(_) => true,
        Value::Seq(items) => !items.is_empty(),
        Value::Map(entries) => !entries.is_empty(),
    }
}

/// Whether two keys are the same key of a Python dict: `1`, `1.0` and
/// `true` are one key there.
pub fn python_key_eq(a: &Value, b: &Value) -> bool {
    fn number(v: &Value) -> Option<f64> {
        match v {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x == y,
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// Python's `str.isspace` for one character: Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn python_strip(s: &str) -> String {
    s.trim_matches(python_space).to_string()
}

/// Python's `str.lower()`.
pub fn python_lower(s: &str) -> String {
    s.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::cloudinit::document;

    fn v(text: &str) -> Value {
        document::parse(text).unwrap().to_value()
    }

    fn merged(sources: &[&str]) -> Value {
        merge_many(sources.iter().map(|s| v(s)).collect()).unwrap()
    }

    #[test]
    fn default_merge_keeps_the_first_and_recurses_into_mappings() {
        assert_eq!(
            merged(&[
                "a: 1\nm: {x: 1}\nl: [1]\n",
                "a: 2\nm: {x: 2, y: 2}\nl: [2, 3]\nb: 3\n"
            ]),
            v("a: 1\nm: {x: 1, y: 2}\nl: [1]\nb: 3\n")
        );
    }

    #[test]
    fn merge_how_changes_the_merge() {
        // Lower-precedence source with replace wins.
        assert_eq!(
            merged(&["a: 1\n", "merge_how: dict(replace)+list()+str()\na: 2\n"]),
            v("a: 2\n")
        );
        // Lists appended when the dict merger recurses into them.
        assert_eq!(
            merged(&[
                "l: [1]\n",
                "merge_how: 'dict(recurse_array)+list(append)+str()'\nl: [2]\n"
            ]),
            v("l: [1, 2]\n")
        );
        // No dict merger: the whole source is dropped.
        assert_eq!(
            merged(&["a: 1\n", "merge_how: list(append)\nb: 2\n"]),
            v("a: 1\n")
        );
        // merge_type is used only when merge_how is absent or null, and stays otherwise.
        assert_eq!(
            merged(&[
                "a: 1\n",
                "merge_how: dict()\nmerge_type: dict(replace)\na: 2\n"
            ]),
            v("a: 1\nmerge_type: dict(replace)\n")
        );
        assert_eq!(
            merged(&[
                "a: 1\n",
                "merge_how: null\nmerge_type: dict(replace)\na: 2\n"
            ]),
            v("a: 2\n")
        );
        // The list forms, and settings given as a string (substring test).
        assert_eq!(
            merged(&["a: 1\n", "merge_how: [[dict, replace]]\na: 2\n"]),
            v("a: 2\n")
        );
        assert_eq!(
            merged(&[
                "a: 1\n",
                "merge_how: [{name: dict, settings: no_replace}]\na: 2\n"
            ]),
            v("a: 2\n")
        );
        // An entry with an empty name is skipped, settings unread.
        assert_eq!(
            merged(&["a: 1\n", "merge_how: [{name: '', settings: 5}]\na: 2\n"]),
            v("a: 1\n")
        );
        // allow_delete with a null removes.
        assert_eq!(
            merged(&["a: 1\nb: 1\n", "merge_how: dict(allow_delete)\na: null\n"]),
            v("b: 1\n")
        );
        // Strings appended.
        assert_eq!(
            merged(&[
                "s: ab\n",
                "merge_how: dict(recurse_str)+str(append)\ns: cd\n"
            ]),
            v("s: abcd\n")
        );
    }

    #[test]
    fn aliased_mappings_merge_without_expanding() {
        // Ten levels of mappings of ten aliases each: 10^10 leaves once
        // expanded. Merged with itself (a drop-in reached twice) and with
        // recursion into lists, it must stay as small as the text.
        let mut text = String::from("l0: &l0 {a: 1, b: [1], c: x}\n");
        for i in 1..10 {
            let keys: Vec<String> = (0..10).map(|k| format!("k{k}: *l{}", i - 1)).collect();
            text += &format!("l{i}: &l{i} {{{}}}\n", keys.join(", "));
        }
        let laughs = v(&text);
        let merged = merge_many(vec![laughs.clone(), laughs.clone()]).unwrap();
        assert_eq!(merged, laughs);
        let appending = v(&format!(
            "merge_how: 'dict(recurse_array,recurse_str)+list(append)+str(append)'\n{text}"
        ));
        let merged = merge_many(vec![laughs, appending]).unwrap();
        let l0 = merged.get("l0").unwrap();
        assert_eq!(l0.get("c"), Some(&Value::Str("xx".into())));
    }

    #[test]
    fn what_cloud_init_fails_on_is_an_error() {
        for bad in [
            "merge_how: 'dict(replace'\na: 1\n",
            "merge_how: 'foo()'\na: 1\n",
            "merge_how: 5\na: 1\n",
            "merge_how: [[]]\na: 1\n",
            "merge_how: [{name: dict}]\na: 1\n",
            "merge_how: [[Dict]]\na: 1\n",
            "merge_how: [{name: dict, settings: 5}]\na: 1\n",
            "merge_how: ['dict']\na: 1\n",
        ] {
            assert!(merge_many(vec![v("a: 0\n"), v(bad)]).is_err(), "{bad}");
        }
        // list(no_replace) indexes a mapping it is given by position.
        let no_replace = "merge_how: 'list(no_replace)+dict(recurse_list)'\n";
        assert!(
            merge_many(vec![
                v("m: [1]\n"),
                v(&format!("{no_replace}m: {{x: 1}}\n"))
            ])
            .is_err()
        );
        assert_eq!(
            merge_many(vec![
                v("m: [1]\n"),
                v(&format!("{no_replace}m: {{0: 1}}\n"))
            ])
            .unwrap(),
            v("m: [1]\n")
        );
        assert!(
            merge_many(vec![
                v("s: ab\n"),
                v("merge_how: dict(recurse_array)+str(append)\ns: [1]\n")
            ])
            .is_err()
        );
    }
}
