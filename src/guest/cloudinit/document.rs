//! A cloud.cfg document: its meaning as cloud-init reads it, and where every
//! node sits in the text.
//!
//! cloud-init loads its configuration with PyYAML's `safe_load`, which speaks
//! YAML 1.1: `yes`, `no`, `on` and `off` are booleans, `0644` is octal, `~` is
//! null, and tabs, control characters and NEL are refused where YAML 1.2
//! parsers accept them. The events and the verdict come from our port of
//! PyYAML (`super::yaml`); this module builds the nodes. Every node keeps its
//! byte span so that the editor can change exactly the text it must and
//! nothing else.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use crate::guest::cloudinit::yaml::{self, ErrorKind, Event, EventKind, ScalarStyle, YamlError};

/// The meaning of a YAML node, as PyYAML's `safe_load` would build it.
///
/// Lists and mappings sit behind `Rc`: a node reached through an alias
/// (`*name`) shares its anchored value, as PyYAML shares the Python object, so
/// the memory a document takes grows with its text and not with the number of
/// paths through its aliases (a "billion laughs" of a few hundred bytes).
/// Functions that walk a whole value must therefore never expand it as a tree
/// without a bound: equality remembers the pairs it has compared, renderings
/// stop at a size budget.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    /// A YAML 1.1 timestamp; kept as its text (we never compute with dates).
    Timestamp(String),
    Seq(Rc<Vec<Value>>),
    /// Keys in first-seen order; a duplicated key keeps its first position and
    /// its last value, as a Python dict built by PyYAML does.
    Map(Rc<Vec<(Value, Value)>>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        equal(self, other, &mut HashSet::new())
    }
}

/// The address of a shared list or mapping, to recognise it when met again.
fn shared_address(value: &Value) -> Option<usize> {
    match value {
        Value::Seq(items) => Some(Rc::as_ptr(items) as *const u8 as usize),
        Value::Map(entries) => Some(Rc::as_ptr(entries) as *const u8 as usize),
        _ => None,
    }
}

/// Equality that visits each pair of shared collections once: two values
/// built from aliases are DAGs whose trees may be exponentially large, and
/// `known_equal` keeps the comparison proportional to the DAGs instead.
/// Pairs are remembered only while both values are borrowed, so an address
/// cannot be reused in between.
fn equal(a: &Value, b: &Value, known_equal: &mut HashSet<(usize, usize)>) -> bool {
    let pair = match (shared_address(a), shared_address(b)) {
        (Some(x), Some(y)) if x == y => return true,
        (Some(x), Some(y)) => Some((x, y)),
        _ => None,
    };
    if pair.is_some_and(|p| known_equal.contains(&p)) {
        return true;
    }
    let same = match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Int(a), Value::Int(b)) => a == b,
        (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits() || a == b,
        (Value::Str(a), Value::Str(b)) => a == b,
        (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
        (Value::Seq(a), Value::Seq(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b.iter())
                    .all(|(x, y)| equal(x, y, known_equal))
        }
        // A mapping's meaning does not depend on key order.
        (Value::Map(a), Value::Map(b)) => {
            a.len() == b.len() && {
                let index = KeyIndex::of(b);
                a.iter().all(|(k, v)| {
                    index
                        .find(b, k)
                        .is_some_and(|i| equal(v, &b[i].1, known_equal))
                })
            }
        }
        _ => false,
    };
    if same && let Some(p) = pair {
        known_equal.insert(p);
    }
    same
}

/// A number as a Python dict key: `True`, `1` and `1.0` are one key (and
/// `False`, `0`, `0.0`, `-0.0`); every `.nan` PyYAML builds is one shared
/// object, so those are one key too.
#[derive(PartialEq, Eq, Hash)]
enum PythonNumber {
    Integral(i128),
    Fractional(u64),
    NaN,
}

fn python_number(v: &Value) -> Option<PythonNumber> {
    /// 2^127: integral floats below it convert to i128 exactly.
    const I128_RANGE: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
    Some(match v {
        Value::Bool(b) => PythonNumber::Integral(i128::from(*b)),
        Value::Int(i) => PythonNumber::Integral(*i),
        Value::Float(f) if f.is_nan() => PythonNumber::NaN,
        Value::Float(f) if f.fract() == 0.0 && f.abs() < I128_RANGE => {
            PythonNumber::Integral(*f as i128)
        }
        Value::Float(f) => PythonNumber::Fractional(f.to_bits()),
        _ => return None,
    })
}

/// Whether two keys are one key of the Python dict PyYAML builds.
fn same_python_key(a: &Value, b: &Value) -> bool {
    match (python_number(a), python_number(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a == b,
        _ => false,
    }
}

/// A hash of a mapping key that agrees with [`same_python_key`] (keys are
/// scalars; a collection key hashes by its kind only).
fn key_hash(key: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(n) = python_number(key) {
        n.hash(&mut h);
        return h.finish();
    }
    std::mem::discriminant(key).hash(&mut h);
    match key {
        Value::Str(s) | Value::Timestamp(s) => s.hash(&mut h),
        _ => {}
    }
    h.finish()
}

/// Positions of a mapping's keys by hash, so that looking a key up or
/// inserting one is O(1) amortised: a mapping of 100,000 keys stays linear.
#[derive(Default)]
pub struct KeyIndex {
    positions: HashMap<u64, Vec<usize>>,
}

impl KeyIndex {
    pub fn of(entries: &[(Value, Value)]) -> KeyIndex {
        let mut index = KeyIndex::default();
        for (i, (k, _)) in entries.iter().enumerate() {
            index.positions.entry(key_hash(k)).or_default().push(i);
        }
        index
    }

    pub fn find(&self, entries: &[(Value, Value)], key: &Value) -> Option<usize> {
        self.positions
            .get(&key_hash(key))?
            .iter()
            .copied()
            .find(|&i| same_python_key(&entries[i].0, key))
    }

    /// Sets `key` to `value`: a new key goes last, a known one keeps its
    /// position and takes the new value (PyYAML's last-wins on duplicates).
    pub fn insert(&mut self, entries: &mut Vec<(Value, Value)>, key: Value, value: Value) {
        match self.find(entries, &key) {
            Some(i) => entries[i].1 = value,
            None => self.push_new(entries, key, value),
        }
    }

    fn push_new(&mut self, entries: &mut Vec<(Value, Value)>, key: Value, value: Value) {
        self.positions
            .entry(key_hash(&key))
            .or_default()
            .push(entries.len());
        entries.push((key, value));
    }
}

/// How much of a value a rendering for people shows before it stops with an
/// ellipsis: far more than any setting we report, far less than an expanded
/// billion laughs.
const RENDER_BUDGET: usize = 64 * 1024;

/// How much of a value a message line shows (`Display`) before "…".
const DISPLAY_BUDGET: usize = 1024;

impl Value {
    /// A list value.
    pub fn seq(items: Vec<Value>) -> Value {
        Value::Seq(Rc::new(items))
    }

    /// A mapping value; `entries` must not repeat a key.
    pub fn map(entries: Vec<(Value, Value)>) -> Value {
        Value::Map(Rc::new(entries))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&Vec<(Value, Value)>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under a string key of a mapping.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The value under a string key, unshared first (copy on write) so that
    /// changing it changes no other place that shares it.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Map(m) => Rc::make_mut(m)
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Inserts or replaces a string key, keeping the position of an existing key.
    pub fn insert(&mut self, key: &str, value: Value) {
        if let Value::Map(m) = self {
            let m = Rc::make_mut(m);
            if let Some(slot) = m.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
                slot.1 = value;
            } else {
                m.push((Value::Str(key.to_string()), value));
            }
        }
    }

    /// The value as JSON, for reports. Non-string keys are written as their
    /// YAML text. A value larger than the render budget (only possible
    /// through aliases) has its remaining parts written as the string "…".
    pub fn to_json(&self) -> serde_json::Value {
        self.to_json_within(&mut RENDER_BUDGET.clone())
    }

    fn to_json_within(&self, budget: &mut usize) -> serde_json::Value {
        use serde_json::Value as J;
        if *budget == 0 {
            return J::String("…".to_string());
        }
        *budget -= 1;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => i64::try_from(*i)
                .map(J::from)
                .unwrap_or_else(|_| J::String(i.to_string())),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(f.to_string())),
            Value::Str(s) | Value::Timestamp(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(|v| v.to_json_within(budget)).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_yaml_inline(), v.to_json_within(budget)))
                    .collect(),
            ),
        }
    }

    /// A one-line YAML rendering, for messages and for the text we insert.
    /// It stops with "…" past the render budget (64 KiB), which only a value
    /// multiplied by aliases reaches; the editor verifies what it inserts.
    pub fn to_yaml_inline(&self) -> String {
        self.inline_within(RENDER_BUDGET)
    }

    fn inline_within(&self, budget: usize) -> String {
        let mut out = String::new();
        // The error only says that the budget ran out; the text so far stays.
        if self.write_inline(&mut out, budget).is_err() {
            out.push('…');
        }
        out
    }

    fn write_inline(&self, out: &mut String, budget: usize) -> Result<(), ()> {
        if out.len() > budget {
            return Err(());
        }
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(&b.to_string()),
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::Float(f) => out.push_str(&f.to_string()),
            Value::Timestamp(s) => out.push_str(s),
            Value::Str(s) => out.push_str(&render_str(s)),
            Value::Seq(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_inline(out, budget)?;
                }
                out.push(']');
            }
            Value::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_inline(out, budget)?;
                    out.push_str(": ");
                    v.write_inline(out, budget)?;
                }
                out.push('}');
            }
        }
        Ok(())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inline_within(DISPLAY_BUDGET))
    }
}

/// A string as YAML text: plain when it would read back as the same string,
/// single-quoted otherwise.
fn render_str(s: &str) -> String {
    let plain_safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        && !s.starts_with(['-', '.'])
        && matches!(resolve_plain(s), Value::Str(_));
    if plain_safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Resolves a plain (unquoted, untagged) scalar the way PyYAML's YAML 1.1
/// resolver and SafeLoader's constructors do. A text whose constructor
/// raises (`0b_`, `2001-02-30`) reads as that text here; [`parse`] refuses
/// such a document before anyone asks.
pub fn resolve_plain(s: &str) -> Value {
    let tag = yaml::resolve::implicit_tag(s);
    yaml::resolve::construct_scalar(tag, s).unwrap_or_else(|_| Value::Str(s.to_string()))
}

/// Byte range `start..end` of a node's text. For scalars `end` is the end of
/// the scalar's own text (no trailing blanks); for collections it is the end
/// of their last content (`]`, `}`, or the last child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Quoted,
    /// Literal `|` or folded `>` block scalar.
    Block,
}

/// The children of a list or mapping node sit behind `Rc` so that a node
/// reached through an alias shares the anchored node's children instead of
/// copying them (see `Value`).
#[derive(Debug, Clone)]
pub enum NodeKind {
    Scalar {
        value: Value,
        style: Style,
    },
    Seq {
        items: Rc<Vec<Node>>,
        flow: bool,
    },
    Map {
        entries: Rc<Vec<(Node, Node)>>,
        flow: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
    /// 1-based line of the node's first character.
    pub line: usize,
    /// True for a node reached through an alias (`*name`), and for every node
    /// inside it: its spans belong to the anchored node elsewhere, so the
    /// editor must not edit through it.
    pub from_alias: bool,
    /// The node's meaning, built once with the node (shared with the
    /// children's meanings), so that asking for it is cheap.
    value: Value,
    /// Levels of lists and mappings in the meaning, aliases followed.
    depth: usize,
}

impl Node {
    /// The node's meaning, with `<<` merge keys applied and duplicate keys
    /// resolved as PyYAML does (last one wins).
    pub fn to_value(&self) -> Value {
        self.value.clone()
    }

    fn is_merge_key(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value: Value::Str(s), style: Style::Plain } if s == "<<")
    }

    /// The scalar's meaning as a string key, if it is one.
    pub fn key_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar {
                value: Value::Str(s),
                ..
            } => Some(s),
            _ => None,
        }
    }

    /// All values under `key` in this mapping, in text order (several when
    /// the key is duplicated).
    pub fn entries_for<'a>(&'a self, key: &'a str) -> impl Iterator<Item = (&'a Node, &'a Node)> {
        let entries: &[(Node, Node)] = match &self.kind {
            NodeKind::Map { entries, .. } => entries,
            _ => &[],
        };
        entries
            .iter()
            .filter(move |(k, _)| k.key_str() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// The value under `key` that PyYAML keeps (the last one).
    pub fn get(&self, key: &str) -> Option<(&Node, &Node)> {
        match &self.kind {
            NodeKind::Map { entries, .. } => entries
                .iter()
                .rev()
                .find(|(k, _)| k.key_str() == Some(key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }
}

/// The meaning of a mapping's entries, as PyYAML's `flatten_mapping` and
/// `construct_mapping` build it: the entries merged by `<<` keys come first,
/// in the order of the `<<` keys (a list `<<: [*x, *y]` contributes its
/// mappings last to first), then the explicit entries; the dict is filled in
/// that order, a later entry replacing an earlier one's value and keeping
/// its position. So within one list the first mapping that has a key gives
/// it, a later `<<` key wins over an earlier one, and explicit keys win over
/// merged ones. Every key costs one unit of `work`.
fn mapping_value(entries: &[(Node, Node)], work: &mut Work) -> Result<Value, String> {
    let mut merged: Vec<&Value> = Vec::new();
    for (k, v) in entries {
        if k.is_merge_key() {
            match &v.value {
                Value::Seq(items) => merged.extend(items.iter().rev()),
                other => merged.push(other),
            }
        }
    }
    let mut map: Vec<(Value, Value)> = Vec::new();
    let mut index = KeyIndex::default();
    for source in merged {
        if let Value::Map(m) = source {
            work.spend(m.len())?;
            for (mk, mv) in m.iter() {
                index.insert(&mut map, mk.clone(), mv.clone());
            }
        }
    }
    for (k, v) in entries {
        if !k.is_merge_key() {
            work.spend(1)?;
            index.insert(&mut map, k.value.clone(), v.value.clone());
        }
    }
    Ok(Value::map(map))
}

/// A budget on the work aliases and merge keys can cause: copying merged
/// keys and aliased scalars. Each unit is at least one key or one byte of
/// real work, and the budget is far above what a real cloud.cfg needs
/// (Debian's has a few hundred keys), so that `<<: [*a, *b, ...]` chains
/// cannot make loading quadratic.
struct Work {
    left: usize,
}

const ALIAS_WORK_LIMIT: usize = 4 * 1024 * 1024;

impl Work {
    fn spend(&mut self, units: usize) -> Result<(), String> {
        self.left = self.left.checked_sub(units).ok_or_else(|| {
            format!(
                "aliases and merge keys here repeat more than {ALIAS_WORK_LIMIT} keys or bytes, \
                 {BEYOND_A_BOUND}: write the values out, or use fewer aliases"
            )
        })?;
        Ok(())
    }
}

/// A parsed document. `root` is `None` for a document with no content (only
/// comments, or empty), which cloud-init reads as an empty configuration.
#[derive(Debug, Clone)]
pub struct Document {
    pub root: Option<Node>,
}

impl Document {
    /// The document's meaning: an empty mapping when it has no content.
    pub fn to_value(&self) -> Value {
        self.root
            .as_ref()
            .map(Node::to_value)
            .unwrap_or_else(|| Value::map(Vec::new()))
    }
}

/// What a [`ParseError`] means for the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// PyYAML's `safe_load` raises an error cloud-init catches, or the top
    /// level is not a mapping: cloud-init logs it and reads the file as
    /// empty.
    IgnoredByCloudInit,
    /// PyYAML raises an exception cloud-init does not catch: cloud-init
    /// fails on this file.
    CloudInitFails,
    /// Valid for cloud-init, but not something prepare-image works on: a
    /// Jinja template, a recursive alias, a `!!set`, `!!binary` data.
    Unsupported,
    /// Beyond one of our bounds (size, nesting, alias work): cloud-init may
    /// well read it, we decline to.
    Bound,
}

/// Why a text is not a cloud.cfg we can work on. `line` and `column` are
/// 1-based; they are absent where the problem is the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l} column {c}: {}", self.message),
            (Some(l), None) => write!(f, "line {l}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ParseError {}

/// Said by every refusal that comes from one of our bounds rather than from
/// YAML: cloud-init may well read such a file, we only decline to.
const BEYOND_A_BOUND: &str = yaml::BEYOND_A_BOUND;
use yaml::IGNORED_NOTE;

/// How a PyYAML refusal cloud-init catches is framed in `message`; undone by
/// [`ParseError::problem`].
const IGNORED_BY_PYYAML: (&str, &str) = ("cloud-init ignores this file (PyYAML: ", ")");

impl ParseError {
    /// Whether the text was refused for exceeding one of our bounds (size,
    /// nesting, alias work), not for being invalid YAML.
    pub fn exceeds_a_bound(&self) -> bool {
        self.kind == ParseErrorKind::Bound
    }

    /// cloud-init reads this file as `{}` (its "Failed loading yaml blob"):
    /// the file counts as absent in the effective configuration.
    pub fn is_ignored_by_cloud_init(&self) -> bool {
        self.kind == ParseErrorKind::IgnoredByCloudInit
    }

    /// What the reader found, without the framing that says what cloud-init
    /// does about it: PyYAML's own words, or why the top level is no
    /// configuration.
    pub fn problem(&self) -> &str {
        let (start, end) = IGNORED_BY_PYYAML;
        let message = self
            .message
            .strip_prefix(start)
            .and_then(|m| m.strip_suffix(end))
            .unwrap_or(&self.message);
        message.split(IGNORED_NOTE).next().unwrap_or(message)
    }
}

impl From<YamlError> for ParseError {
    fn from(e: YamlError) -> ParseError {
        let (kind, message) = match e.kind {
            ErrorKind::Refused => (
                ParseErrorKind::IgnoredByCloudInit,
                format!(
                    "{}{}{}",
                    IGNORED_BY_PYYAML.0, e.message, IGNORED_BY_PYYAML.1
                ),
            ),
            ErrorKind::Crashes => (
                ParseErrorKind::CloudInitFails,
                format!("cloud-init fails on this file (PyYAML: {})", e.message),
            ),
            ErrorKind::Unsupported => (ParseErrorKind::Unsupported, e.message),
            ErrorKind::Bound => (ParseErrorKind::Bound, e.message),
        };
        ParseError {
            kind,
            line: Some(e.line),
            column: Some(e.column),
            message,
        }
    }
}

fn error_at(line: usize, col0: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        kind: ParseErrorKind::IgnoredByCloudInit,
        line: Some(line),
        column: Some(col0 + 1),
        message: message.into(),
    }
}

/// A refusal from one of our bounds.
fn bound_at(line: usize, col0: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        kind: ParseErrorKind::Bound,
        ..error_at(line, col0, message)
    }
}

/// The largest cloud.cfg we read. Real ones are a few KiB (Debian's is about
/// 4 KiB, with every module listed); a thousand times that is still far
/// below what could strain memory, since memory is linear in the text.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;

/// The deepest nesting of lists and mappings we read, aliases followed.
/// PyYAML 6.0 (cloud-init's loader) fails with a Python RecursionError
/// between 400 and 500 levels, and no real cloud.cfg goes beyond ten. The
/// loader recurses once per level, with frames of about 10 KiB in a debug
/// build: 128 levels stay well inside a test thread's 2 MiB stack (180 levels
/// were measured to fit), and every later walk over a node or a value is
/// bounded by the same depth.
pub const MAX_NESTING: usize = 128;

/// cloud-init's `templater.detect_template`: the first line (up to `\n`)
/// matches `##\s*template:(.*)` (any case) and the rest, lowercased and
/// stripped, is `jinja`.
fn is_jinja_template(text: &str) -> bool {
    let first = text.split('\n').next().unwrap_or("");
    let Some(rest) = first.strip_prefix("##") else {
        return false;
    };
    let rest = rest.trim_start_matches(is_python_space);
    let Some(head) = rest.get(..9) else {
        return false;
    };
    head.eq_ignore_ascii_case("template:")
        && rest[9..].trim_matches(is_python_space).to_lowercase() == "jinja"
}

/// Python's `str.isspace`, which `\s` and `strip()` use.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Parses a cloud.cfg text. Refuses what cloud-init would not read as a
/// configuration: Jinja templates, invalid YAML (exactly what PyYAML's
/// `safe_load` refuses), several documents, and a top level that is not a
/// mapping; and what is beyond our bounds.
pub fn parse(text: &str) -> Result<Document, ParseError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(ParseError {
            kind: ParseErrorKind::Bound,
            line: None,
            column: None,
            message: format!(
                "{} bytes, more than {} MiB, {BEYOND_A_BOUND} \
                 (Debian's cloud.cfg is about 4 KiB)",
                text.len(),
                MAX_DOCUMENT_BYTES / (1024 * 1024)
            ),
        });
    }
    if is_jinja_template(text) {
        return Err(ParseError {
            kind: ParseErrorKind::Unsupported,
            line: Some(1),
            column: Some(1),
            message: "this is a Jinja template (`## template: jinja`), not a cloud.cfg: \
                      edit the rendered /etc/cloud/cloud.cfg, or render the template first"
                .to_string(),
        });
    }
    // PyYAML's verdict first: after it, the event stream below is known to
    // be one PyYAML reads.
    yaml::check(text)?;
    let mut doc = Loader::new(text)?.load()?;
    // `---` with nothing after it (or only comments) is an empty document:
    // PyYAML loads None, which cloud-init reads as an empty configuration.
    if let Some(Node {
        kind: NodeKind::Scalar {
            value: Value::Null, ..
        },
        span,
        ..
    }) = &doc.root
        && span.start == span.end
    {
        doc.root = None;
    }
    if let Some(root) = &doc.root
        && !matches!(root.kind, NodeKind::Map { .. })
    {
        let what = match root.kind {
            NodeKind::Seq { .. } => "a list",
            // `~`, `null`, or an anchor or tag alone: PyYAML loads None,
            // which cloud-init reads as an empty configuration, the same as
            // a file it ignores; there is no mapping to edit.
            NodeKind::Scalar {
                value: Value::Null, ..
            } => "a null value (read as empty)",
            _ => "a single value",
        };
        return Err(error_at(
            root.line,
            0,
            format!("the top level is {what}, not a mapping of settings{IGNORED_NOTE}"),
        ));
    }
    Ok(doc)
}

struct Loader<'a> {
    text: &'a str,
    parser: yaml::Parser,
    /// Each anchor's node as an alias shows it (marked `from_alias`).
    anchors: HashMap<String, Node>,
    /// Marked copies of anchored children, by the address of the children's
    /// `Rc`, so that marking nested anchors copies each node once.
    marked: HashMap<usize, Node>,
    /// Lists and mappings open around the current event.
    open_collections: usize,
    work: Work,
}

impl<'a> Loader<'a> {
    fn new(text: &'a str) -> Result<Self, ParseError> {
        Ok(Loader {
            text,
            parser: yaml::Parser::new(text)?,
            anchors: HashMap::new(),
            marked: HashMap::new(),
            open_collections: 0,
            work: Work {
                left: ALIAS_WORK_LIMIT,
            },
        })
    }

    fn next(&mut self) -> Result<Event, ParseError> {
        match self.parser.next_event()? {
            Some(ev) => Ok(ev),
            None => Err(ParseError {
                kind: ParseErrorKind::IgnoredByCloudInit,
                line: None,
                column: None,
                message: "unexpected end of YAML".to_string(),
            }),
        }
    }

    fn load(mut self) -> Result<Document, ParseError> {
        let mut root = None;
        loop {
            let event = self.next()?;
            match event.kind {
                EventKind::StreamStart
                | EventKind::DocumentStart { .. }
                | EventKind::DocumentEnd { .. } => {}
                EventKind::StreamEnd => break,
                _ => root = Some(self.node(event)?),
            }
        }
        Ok(Document { root })
    }

    fn node(&mut self, event: Event) -> Result<Node, ParseError> {
        // PyYAML's marks: a block sequence starts at its first `-` (also an
        // indentless one), a block mapping at its first key, a node with an
        // anchor or tag at the anchor or tag.
        let start = event.start.byte;
        let line = event.start.line + 1;
        let col0 = event.start.column;
        match event.kind {
            EventKind::Scalar {
                anchor,
                tag,
                plain_implicit,
                value: text,
                style,
            } => {
                let end = event.end.byte.max(start);
                // A block scalar's end mark is past its trailing line
                // breaks; our spans end at the scalar's last character.
                let trimmed = self.text[start..end]
                    .trim_end_matches([' ', '\t', '\r', '\n', '\u{85}', '\u{2028}', '\u{2029}']);
                let tag = yaml::resolve::scalar_tag(tag.as_deref(), plain_implicit, &text);
                // yaml::check has accepted every scalar; a tag it lets
                // through without a value of ours (merge, `=`) reads as text.
                let value = yaml::resolve::construct_scalar(tag, &text)
                    .unwrap_or_else(|_| Value::Str(text.clone()));
                let node = Node {
                    kind: NodeKind::Scalar {
                        value: value.clone(),
                        style: match style {
                            ScalarStyle::Plain => Style::Plain,
                            ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => Style::Quoted,
                            ScalarStyle::Literal | ScalarStyle::Folded => Style::Block,
                        },
                    },
                    span: Span {
                        start,
                        end: start + trimmed.len(),
                    },
                    line,
                    from_alias: false,
                    value,
                    depth: 0,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            EventKind::SequenceStart { anchor, flow, .. } => {
                self.open_collection(line, col0)?;
                let mut items = Vec::new();
                let end;
                loop {
                    let ev = self.next()?;
                    if let EventKind::SequenceEnd = ev.kind {
                        end = if flow {
                            ev.end.byte
                        } else {
                            content_end(start, items.iter())
                        };
                        break;
                    }
                    items.push(self.node(ev)?);
                }
                self.open_collections -= 1;
                let value = Value::seq(items.iter().map(|n| n.value.clone()).collect());
                let depth = 1 + items.iter().map(|n| n.depth).max().unwrap_or(0);
                let node = Node {
                    kind: NodeKind::Seq {
                        items: Rc::new(items),
                        flow,
                    },
                    span: Span { start, end },
                    line,
                    from_alias: false,
                    value,
                    depth,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            EventKind::MappingStart { anchor, flow, .. } => {
                self.open_collection(line, col0)?;
                let mut entries: Vec<(Node, Node)> = Vec::new();
                let end;
                loop {
                    let ev = self.next()?;
                    if let EventKind::MappingEnd = ev.kind {
                        end = if flow {
                            ev.end.byte
                        } else {
                            content_end(start, entries.iter().flat_map(|(k, v)| [k, v]))
                        };
                        break;
                    }
                    let key_column = ev.start.column;
                    let key = self.node(ev)?;
                    if !matches!(key.kind, NodeKind::Scalar { .. }) {
                        return Err(error_at(
                            key.line,
                            key_column,
                            "a list or mapping used as a key; cloud-init (PyYAML) cannot read that",
                        ));
                    }
                    let vev = self.next()?;
                    let value = self.node(vev)?;
                    entries.push((key, value));
                }
                self.open_collections -= 1;
                let value =
                    mapping_value(&entries, &mut self.work).map_err(|m| bound_at(line, col0, m))?;
                let depth = 1 + entries.iter().map(|(_, v)| v.depth).max().unwrap_or(0);
                let node = Node {
                    kind: NodeKind::Map {
                        entries: Rc::new(entries),
                        flow,
                    },
                    span: Span { start, end },
                    line,
                    from_alias: false,
                    value,
                    depth,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            EventKind::Alias { anchor } => match self.anchors.get(&anchor).cloned() {
                Some(node) => {
                    // Collections are shared; a scalar's text is copied.
                    let cost = match &node.value {
                        Value::Str(s) | Value::Timestamp(s) => 1 + s.len(),
                        _ => 1,
                    };
                    self.work.spend(cost).map_err(|m| bound_at(line, col0, m))?;
                    if self.open_collections + node.depth > MAX_NESTING {
                        return Err(self.too_deep(line, col0));
                    }
                    Ok(node)
                }
                // An alias to a collection still open: yaml::check lets that
                // through only where it is merged into itself, which adds
                // nothing the collection does not already say.
                None => Ok(Node {
                    kind: NodeKind::Map {
                        entries: Rc::new(Vec::new()),
                        flow: true,
                    },
                    span: Span {
                        start,
                        end: event.end.byte,
                    },
                    line,
                    from_alias: true,
                    value: Value::map(Vec::new()),
                    depth: 1,
                }),
            },
            other => Err(error_at(
                line,
                col0,
                format!("unexpected YAML event {other:?}"),
            )),
        }
    }

    fn remember(&mut self, anchor: Option<String>, node: &Node) {
        if let Some(anchor) = anchor {
            let marked = self.marked_copy(node);
            self.anchors.insert(anchor, marked);
        }
    }

    /// `node` as seen through an alias: itself and every node inside marked
    /// `from_alias`. Nodes already marked (aliases inside) are shared as they
    /// are, and a nested anchor's copy is reused, so each node of the text is
    /// copied at most once however the anchors nest.
    fn marked_copy(&mut self, node: &Node) -> Node {
        if node.from_alias {
            return node.clone();
        }
        let address = match &node.kind {
            NodeKind::Scalar { .. } => None,
            NodeKind::Seq { items, .. } => Some(Rc::as_ptr(items) as *const u8 as usize),
            NodeKind::Map { entries, .. } => Some(Rc::as_ptr(entries) as *const u8 as usize),
        };
        if let Some(done) = address.and_then(|a| self.marked.get(&a)) {
            return done.clone();
        }
        let kind = match &node.kind {
            NodeKind::Scalar { .. } => node.kind.clone(),
            NodeKind::Seq { items, flow } => NodeKind::Seq {
                items: Rc::new(items.iter().map(|n| self.marked_copy(n)).collect()),
                flow: *flow,
            },
            NodeKind::Map { entries, flow } => NodeKind::Map {
                entries: Rc::new(
                    entries
                        .iter()
                        .map(|(k, v)| (self.marked_copy(k), self.marked_copy(v)))
                        .collect(),
                ),
                flow: *flow,
            },
        };
        let marked = Node {
            kind,
            from_alias: true,
            ..node.clone()
        };
        if let Some(a) = address {
            // The original stays alive in its parent, so its address is
            // not reused while the loader runs.
            self.marked.insert(a, marked.clone());
        }
        marked
    }

    /// Counts a list or mapping opening; refuses one nested too deep before
    /// any recursion could come near the end of the stack.
    fn open_collection(&mut self, line: usize, col0: usize) -> Result<(), ParseError> {
        if self.open_collections >= MAX_NESTING {
            return Err(self.too_deep(line, col0));
        }
        self.open_collections += 1;
        Ok(())
    }

    fn too_deep(&self, line: usize, col0: usize) -> ParseError {
        bound_at(
            line,
            col0,
            format!(
                "lists and mappings nested more than {MAX_NESTING} levels deep \
                 (aliases followed), {BEYOND_A_BOUND} (a real cloud.cfg nests fewer than \
                 ten; PyYAML itself gives up near 450)"
            ),
        )
    }
}

/// The end of a block collection: the end of its last non-empty child.
fn content_end<'n>(start: usize, children: impl Iterator<Item = &'n Node>) -> usize {
    children
        .filter(|c| c.span.end > c.span.start || !matches!(c.kind, NodeKind::Scalar { .. }))
        .map(|c| c.span.end)
        .max()
        .unwrap_or(start)
        .max(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `problem` is the reader's finding alone: the framing that says what
    /// cloud-init does with the file is for messages, not for `status`.
    #[test]
    fn a_refusal_s_problem_is_pyyaml_s_words_alone() {
        let tab = parse("a: 1\t# c\n").unwrap_err();
        assert!(tab.is_ignored_by_cloud_init());
        assert!(
            tab.message
                .starts_with("cloud-init ignores this file (PyYAML: "),
            "{tab}"
        );
        assert_eq!(
            tab.problem(),
            "while scanning for the next token: found character '\\t' that cannot start any token"
        );
        let list = parse("- a\n").unwrap_err();
        assert!(list.message.ends_with(IGNORED_NOTE), "{list}");
        assert!(!list.problem().contains("cloud-init"), "{}", list.problem());
        assert!(
            list.problem().starts_with("the top level is a"),
            "{}",
            list.problem()
        );
    }

    #[test]
    fn plain_scalars_resolve_as_yaml_1_1() {
        let cases: &[(&str, Value)] = &[
            ("yes", Value::Bool(true)),
            ("Off", Value::Bool(false)),
            ("y", Value::Str("y".into())),
            ("~", Value::Null),
            ("", Value::Null),
            ("0644", Value::Int(0o644)),
            ("0x1F", Value::Int(31)),
            ("0b101", Value::Int(5)),
            ("1_000", Value::Int(1000)),
            ("190:20:30", Value::Int(685_230)),
            ("-12", Value::Int(-12)),
            ("1.5", Value::Float(1.5)),
            ("1e3", Value::Str("1e3".into())),
            ("6.8523015e+5", Value::Float(685_230.15)),
            (".inf", Value::Float(f64::INFINITY)),
            ("2001-12-14", Value::Timestamp("2001-12-14".into())),
            ("scripts-user", Value::Str("scripts-user".into())),
            ("09", Value::Str("09".into())),
        ];
        for (text, want) in cases {
            assert_eq!(resolve_plain(text), *want, "resolving {text:?}");
        }
    }

    #[test]
    fn quoted_and_tagged_scalars() {
        let doc = parse("a: 'yes'\nb: !!str 1\nc: \"1\"\nd: !!int '7'\n").unwrap();
        let v = doc.to_value();
        assert_eq!(v.get("a"), Some(&Value::Str("yes".into())));
        assert_eq!(v.get("b"), Some(&Value::Str("1".into())));
        assert_eq!(v.get("c"), Some(&Value::Str("1".into())));
        assert_eq!(v.get("d"), Some(&Value::Int(7)));
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        let v = parse("a: 1\nb: 2\na: 3\n").unwrap().to_value();
        assert_eq!(
            v,
            Value::map(vec![
                (Value::Str("a".into()), Value::Int(3)),
                (Value::Str("b".into()), Value::Int(2))
            ])
        );
    }

    #[test]
    fn merge_keys_and_aliases() {
        let v = parse("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
            .unwrap()
            .to_value();
        let other = v.get("other").unwrap();
        assert_eq!(other.get("x"), Some(&Value::Int(1)));
        assert_eq!(other.get("y"), Some(&Value::Int(3)));
    }

    #[test]
    fn spans_cover_exact_text() {
        let text = "m:\n - x   # c\n - ['y', once]  \nf: [a, \"b\" ]\n";
        let doc = parse(text).unwrap();
        let root = doc.root.unwrap();
        let (_, m) = root.get("m").unwrap();
        let NodeKind::Seq { items, flow } = &m.kind else {
            panic!("not a seq")
        };
        assert!(!flow);
        assert_eq!(&text[items[0].span.start..items[0].span.end], "x");
        assert_eq!(&text[items[1].span.start..items[1].span.end], "['y', once]");
        assert_eq!(&text[m.span.start..m.span.end], "- x   # c\n - ['y', once]");
        let (_, f) = root.get("f").unwrap();
        assert_eq!(&text[f.span.start..f.span.end], "[a, \"b\" ]");
        let NodeKind::Seq { items, .. } = &f.kind else {
            panic!("not a seq")
        };
        assert_eq!(&text[items[1].span.start..items[1].span.end], "\"b\"");
    }

    #[test]
    fn indentless_sequences_start_at_their_dash() {
        for (text, list, first) in [
            ("m:\n- a\n- b\n", "- a\n- b", "a"),
            ("m:\n- [a, x]\n- b\n", "- [a, x]\n- b", "[a, x]"),
            ("m:\n- - a\n  - x\n", "- - a\n  - x", "- a\n  - x"),
            ("m:\n-\n  - a\n", "-\n  - a", "- a"),
            ("m:\n- # c\n  a\n", "- # c\n  a", "a"),
            ("m:\r\n-\r\n  name: a\r\n", "-\r\n  name: a", "name: a"),
            ("m:\n - [a]\n", "- [a]", "[a]"),
        ] {
            let doc = parse(text).unwrap();
            let root = doc.root.unwrap();
            let (_, m) = root.get("m").unwrap();
            let NodeKind::Seq { items, flow } = &m.kind else {
                panic!("{text:?}: not a seq")
            };
            assert!(!flow, "{text:?}");
            assert_eq!(&text[m.span.start..m.span.end], list, "{text:?}");
            assert_eq!(
                &text[items[0].span.start..items[0].span.end],
                first,
                "{text:?}"
            );
            assert_eq!(m.line, 2, "{text:?}");
        }
        // A flow sequence is one, whatever precedes it.
        let doc = parse("m: [a]\nn:\n  - [b]\n").unwrap();
        let root = doc.root.unwrap();
        for key in ["m", "n"] {
            let (_, v) = root.get(key).unwrap();
            let NodeKind::Seq { items, .. } = &v.kind else {
                panic!()
            };
            let inner = if key == "m" { v } else { &items[0] };
            assert!(
                matches!(inner.kind, NodeKind::Seq { flow: true, .. }),
                "{key}"
            );
        }
    }

    #[test]
    fn refusals_name_line_and_column() {
        let err = parse("## template:jinja\n#cloud-config\n").unwrap_err();
        assert!(err.message.contains("Jinja"), "{err}");
        let err = parse("a: 1\n b: [\n").unwrap_err();
        assert!(err.line.is_some(), "{err}");
        let err = parse("- a\n- b\n").unwrap_err();
        assert!(err.message.contains("not a mapping"), "{err}");
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        let err = parse("a: !python/object foo\n").unwrap_err();
        assert!(err.message.contains("tag"), "{err}");
    }

    #[test]
    fn empty_documents_mean_an_empty_mapping() {
        assert_eq!(parse("").unwrap().to_value(), Value::map(vec![]));
        for text in ["---\n", "#cloud-config\n---\n# nothing yet\n", "--- \r\n"] {
            let doc = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(doc.root.is_none(), "{text:?}");
        }
        // An explicit null is a value, not an empty document.
        assert!(parse("--- ~\n").is_err());
        assert_eq!(
            parse("# only a comment\n").unwrap().to_value(),
            Value::map(vec![])
        );
    }

    /// Ten lists of ten, each repeating the previous one's alias: 10^10
    /// strings once expanded.
    fn billion_laughs() -> String {
        let mut text = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let alias = format!("*l{}", i - 1);
            text += &format!("l{i}: &l{i} [{}]\n", vec![alias; 10].join(", "));
        }
        text
    }

    #[test]
    fn aliases_share_their_anchored_value() {
        let doc = parse(&billion_laughs()).unwrap();
        let v = doc.to_value();
        let (Some(Value::Seq(l8)), Some(Value::Seq(l9))) = (v.get("l8"), v.get("l9")) else {
            panic!("not lists")
        };
        let Value::Seq(first) = &l9[0] else { panic!() };
        assert!(Rc::ptr_eq(first, l8));
        // Equality of two separate readings compares each shared pair once.
        let again = parse(&billion_laughs()).unwrap().to_value();
        assert_eq!(v, again);
        let mut changed = billion_laughs();
        changed.replace_range(8..11, "LOL");
        assert_ne!(v, parse(&changed).unwrap().to_value());
        // Renderings stop at their budget.
        let shown = v.get("l9").unwrap().to_string();
        assert!(shown.len() < 2 * DISPLAY_BUDGET && shown.ends_with('…'));
        let inline = v.get("l9").unwrap().to_yaml_inline();
        assert!(inline.len() < 2 * RENDER_BUDGET && inline.ends_with('…'));
        let json = v.get("l9").unwrap().to_json().to_string();
        assert!(json.len() < 16 * RENDER_BUDGET && json.contains('…'));
    }

    #[test]
    fn nodes_inside_an_alias_are_marked() {
        let doc = parse("a: &a {b: {c: 1}, d: [x]}\ne: *a\n").unwrap();
        let root = doc.root.unwrap();
        let (_, a) = root.get("a").unwrap();
        let (_, e) = root.get("e").unwrap();
        assert!(!a.from_alias && !a.get("b").unwrap().1.from_alias);
        assert!(e.from_alias);
        let (k, b) = e.get("b").unwrap();
        assert!(k.from_alias && b.from_alias && b.get("c").unwrap().1.from_alias);
        let (_, d) = e.get("d").unwrap();
        let NodeKind::Seq { items, .. } = &d.kind else {
            panic!()
        };
        assert!(items[0].from_alias);
    }

    #[test]
    fn bounds_are_one_line_errors_at_their_place() {
        let deep = format!("a:\n{}x\n", "- ".repeat(MAX_NESTING + 1));
        let err = parse(&deep).unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.message.contains("nested more than 128"), "{err}");
        // Just within the bound is fine, also on a test thread's stack.
        parse(&format!("a:\n{}x\n", "- ".repeat(MAX_NESTING - 1))).unwrap();
        // Each mapping merges the previous one 5,000 times: quadratic work.
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}: {i}")).collect();
        let mut chain = format!("m0: &m0 {{{}}}\n", keys.join(", "));
        for i in 1..30 {
            let many = vec![format!("*m{}", i - 1); 5000].join(", ");
            chain += &format!("m{i}: &m{i} {{<<: [{many}], k{i}: 1}}\n");
        }
        let err = parse(&chain).unwrap_err();
        assert!(err.message.contains("merge keys"), "{err}");
        assert!(err.line.is_some() && err.column.is_some(), "{err}");
        let err = parse(&"#\n".repeat(MAX_DOCUMENT_BYTES / 2 + 1)).unwrap_err();
        assert!(
            err.message.contains("4 MiB") && err.exceeds_a_bound(),
            "{err}"
        );
    }

    #[test]
    fn duplicate_keys_keep_the_first_position_and_the_last_value() {
        let mut text: String = (0..20_000).map(|i| format!("k{i}: {i}\n")).collect();
        text += "k5: last\n<<: {k6: merged, new: merged}\n";
        let v = parse(&text).unwrap().to_value();
        let m = v.as_map().unwrap();
        assert_eq!(m.len(), 20_001);
        // Merged keys come first, explicit ones win over them.
        assert_eq!(m[0], (Value::Str("k6".into()), Value::Int(6)));
        assert_eq!(
            m[1],
            (Value::Str("new".into()), Value::Str("merged".into()))
        );
        assert_eq!(m[7], (Value::Str("k5".into()), Value::Str("last".into())));
    }
}
