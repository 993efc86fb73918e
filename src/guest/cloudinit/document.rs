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

use std::collections::HashMap;
use std::fmt;

use crate::guest::cloudinit::yaml::{self, ErrorKind, Event, EventKind, ScalarStyle, YamlError};

/// The meaning of a YAML node, as PyYAML's `safe_load` would build it.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    /// A YAML 1.1 timestamp; kept as its text (we never compute with dates).
    Timestamp(String),
    Seq(Vec<Value>),
    /// Keys in first-seen order; a duplicated key keeps its first position and
    /// its last value, as a Python dict built by PyYAML does.
    Map(Vec<(Value, Value)>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits() || a == b,
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            (Value::Seq(a), Value::Seq(b)) => a == b,
            // A mapping's meaning does not depend on key order.
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len()
                    && a.iter().all(|(k, v)| {
                        b.iter()
                            .find(|(k2, _)| k2 == k)
                            .is_some_and(|(_, v2)| v2 == v)
                    })
            }
            _ => false,
        }
    }
}

impl Value {
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

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Map(m) => m
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Inserts or replaces a string key, keeping the position of an existing key.
    pub fn insert(&mut self, key: &str, value: Value) {
        if let Value::Map(m) = self {
            if let Some(slot) = m.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
                slot.1 = value;
            } else {
                m.push((Value::Str(key.to_string()), value));
            }
        }
    }

    /// cloud-init's `util.translate_bool`: how it reads a setting such as
    /// `preserve_hostname`. `None` when the value is neither clearly true nor
    /// clearly false (for example `manage_etc_hosts: localhost`).
    pub fn cloud_init_bool(&self) -> Option<bool> {
        match self {
            Value::Null => Some(false),
            Value::Bool(b) => Some(*b),
            Value::Int(i) => match i {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            },
            Value::Str(s) => {
                let s = s.trim().to_ascii_lowercase();
                if ["true", "1", "on", "yes", "y"].contains(&s.as_str()) {
                    Some(true)
                } else if ["false", "0", "off", "no", "n", ""].contains(&s.as_str()) {
                    Some(false)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The value as JSON, for reports. Non-string keys are written as their
    /// YAML text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
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
            Value::Seq(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_yaml_inline(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// A one-line YAML rendering, for messages and for the text we insert.
    pub fn to_yaml_inline(&self) -> String {
        match self {
            Value::Null => "null".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Timestamp(s) => s.clone(),
            Value::Str(s) => render_str(s),
            Value::Seq(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(Value::to_yaml_inline)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Value::Map(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{}: {}", k.to_yaml_inline(), v.to_yaml_inline()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_yaml_inline())
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

#[derive(Debug, Clone)]
pub enum NodeKind {
    Scalar {
        value: Value,
        style: Style,
    },
    Seq {
        items: Vec<Node>,
        flow: bool,
    },
    Map {
        entries: Vec<(Node, Node)>,
        flow: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
    /// 1-based line of the node's first character.
    pub line: usize,
    /// True for a node reached through an alias (`*name`): its spans belong to
    /// the anchored node elsewhere, so the editor must not edit through it.
    pub from_alias: bool,
}

impl Node {
    /// The node's meaning, with `<<` merge keys applied and duplicate keys
    /// resolved as PyYAML does (last one wins).
    pub fn to_value(&self) -> Value {
        match &self.kind {
            NodeKind::Scalar { value, .. } => value.clone(),
            NodeKind::Seq { items, .. } => Value::Seq(items.iter().map(Node::to_value).collect()),
            NodeKind::Map { entries, .. } => {
                let mut merged: Vec<(Value, Value)> = Vec::new();
                let mut explicit: Vec<(Value, Value)> = Vec::new();
                for (k, v) in entries {
                    if k.is_merge_key() {
                        // PyYAML's flatten_mapping: merged keys come first,
                        // explicit keys win over them.
                        let sources = match v.to_value() {
                            Value::Seq(items) => items,
                            other => vec![other],
                        };
                        for source in sources {
                            if let Value::Map(m) = source {
                                for (mk, mv) in m {
                                    if !merged.iter().any(|(k2, _)| same_python_key(k2, &mk)) {
                                        merged.push((mk, mv));
                                    }
                                }
                            }
                        }
                    } else {
                        insert_last_wins(&mut explicit, k.to_value(), v.to_value());
                    }
                }
                for (k, v) in explicit {
                    insert_last_wins(&mut merged, k, v);
                }
                Value::Map(merged)
            }
        }
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

/// Whether two keys are one key of a Python dict: `True`, `1` and `1.0`
/// are (and `False`, `0`, `0.0`); every `.nan` PyYAML builds is one shared
/// object, so those are too.
fn same_python_key(a: &Value, b: &Value) -> bool {
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
        (Value::Float(x), Value::Float(y)) if x.is_nan() && y.is_nan() => true,
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => {
                // An int beyond f64's exact range equals no float of
                // another value; compare exactly where that matters.
                x == y
                    && match (a, b) {
                        (Value::Int(i), Value::Float(f)) | (Value::Float(f), Value::Int(i)) => {
                            f.fract() == 0.0 && (*f as i128) == *i
                        }
                        _ => true,
                    }
            }
            _ => a == b,
        },
    }
}

fn insert_last_wins(map: &mut Vec<(Value, Value)>, key: Value, value: Value) {
    if let Some(slot) = map.iter_mut().find(|(k, _)| same_python_key(k, &key)) {
        slot.1 = value;
    } else {
        map.push((key, value));
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
            .unwrap_or(Value::Map(Vec::new()))
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

impl ParseError {
    /// cloud-init reads this file as `{}` (its "Failed loading yaml blob"):
    /// the file counts as absent in the effective configuration.
    pub fn is_ignored_by_cloud_init(&self) -> bool {
        self.kind == ParseErrorKind::IgnoredByCloudInit
    }
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

impl From<YamlError> for ParseError {
    fn from(e: YamlError) -> ParseError {
        let (kind, message) = match e.kind {
            ErrorKind::Refused => (
                ParseErrorKind::IgnoredByCloudInit,
                format!("cloud-init ignores this file (PyYAML: {})", e.message),
            ),
            ErrorKind::Crashes => (
                ParseErrorKind::CloudInitFails,
                format!("cloud-init fails on this file (PyYAML: {})", e.message),
            ),
            ErrorKind::Unsupported => (ParseErrorKind::Unsupported, e.message),
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
/// mapping.
pub fn parse(text: &str) -> Result<Document, ParseError> {
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
            format!(
                "the top level is {what}, not a mapping of settings (cloud-init would ignore this file)"
            ),
        ));
    }
    Ok(doc)
}

struct Loader<'a> {
    text: &'a str,
    parser: yaml::Parser,
    anchors: HashMap<String, Node>,
}

impl<'a> Loader<'a> {
    fn new(text: &'a str) -> Result<Self, ParseError> {
        Ok(Loader {
            text,
            parser: yaml::Parser::new(text)?,
            anchors: HashMap::new(),
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
        let start = event.start.byte;
        let line = event.start.line + 1;
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
                        value,
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
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            EventKind::SequenceStart { anchor, flow, .. } => {
                let mut items = Vec::new();
                let end;
                loop {
                    let ev = self.next()?;
                    if let EventKind::SequenceEnd = ev.kind {
                        end = if flow {
                            ev.end.byte
                        } else {
                            content_end(start, &items)
                        };
                        break;
                    }
                    items.push(self.node(ev)?);
                }
                let node = Node {
                    kind: NodeKind::Seq { items, flow },
                    span: Span { start, end },
                    line,
                    from_alias: false,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            EventKind::MappingStart { anchor, flow, .. } => {
                let mut entries: Vec<(Node, Node)> = Vec::new();
                let end;
                loop {
                    let ev = self.next()?;
                    if let EventKind::MappingEnd = ev.kind {
                        end = if flow {
                            ev.end.byte
                        } else {
                            let children: Vec<Node> = entries
                                .iter()
                                .flat_map(|(k, v)| [k.clone(), v.clone()])
                                .collect();
                            content_end(start, &children)
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
                let node = Node {
                    kind: NodeKind::Map { entries, flow },
                    span: Span { start, end },
                    line,
                    from_alias: false,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            EventKind::Alias { anchor } => match self.anchors.get(&anchor).cloned() {
                Some(mut node) => {
                    mark_alias(&mut node);
                    Ok(node)
                }
                // An alias to a collection still open: yaml::check lets that
                // through only where it is merged into itself, which adds
                // nothing the collection does not already say.
                None => Ok(Node {
                    kind: NodeKind::Map {
                        entries: Vec::new(),
                        flow: true,
                    },
                    span: Span {
                        start,
                        end: event.end.byte,
                    },
                    line,
                    from_alias: true,
                }),
            },
            other => Err(error_at(
                line,
                event.start.column,
                format!("unexpected YAML event {other:?}"),
            )),
        }
    }

    fn remember(&mut self, anchor: Option<String>, node: &Node) {
        if let Some(anchor) = anchor {
            self.anchors.insert(anchor, node.clone());
        }
    }
}

/// The end of a block collection: the end of its last non-empty child.
fn content_end(start: usize, children: &[Node]) -> usize {
    children
        .iter()
        .filter(|c| c.span.end > c.span.start || !matches!(c.kind, NodeKind::Scalar { .. }))
        .map(|c| c.span.end)
        .max()
        .unwrap_or(start)
        .max(start)
}

fn mark_alias(node: &mut Node) {
    node.from_alias = true;
    match &mut node.kind {
        NodeKind::Scalar { .. } => {}
        NodeKind::Seq { items, .. } => items.iter_mut().for_each(mark_alias),
        NodeKind::Map { entries, .. } => entries.iter_mut().for_each(|(k, v)| {
            mark_alias(k);
            mark_alias(v);
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Value::Map(vec![
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
        assert_eq!(parse("").unwrap().to_value(), Value::Map(vec![]));
        for text in ["---\n", "#cloud-config\n---\n# nothing yet\n", "--- \r\n"] {
            let doc = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(doc.root.is_none(), "{text:?}");
        }
        // An explicit null is a value, not an empty document.
        assert!(parse("--- ~\n").is_err());
        assert_eq!(
            parse("# only a comment\n").unwrap().to_value(),
            Value::Map(vec![])
        );
    }

    #[test]
    fn cloud_init_bool_follows_translate_bool() {
        assert_eq!(Value::Str("Yes".into()).cloud_init_bool(), Some(true));
        assert_eq!(Value::Int(1).cloud_init_bool(), Some(true));
        assert_eq!(Value::Str("localhost".into()).cloud_init_bool(), None);
        assert_eq!(Value::Null.cloud_init_bool(), Some(false));
    }
}
