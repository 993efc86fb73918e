//! The cloud.cfg editor: a pure function from a file's text and the edits to
//! make to the new text and the list of changes it made.
//!
//! What to change is decided on the parsed document (so quoting, flow or
//! block style and `-`/`_` spelling do not matter); the change itself is a
//! splice of the original text, so every byte outside the edited span stays as
//! it was: comments, blank lines, indentation, CRLF, a missing final newline.
//! Each splice is followed by a fresh parse, so every decision is made on
//! exact spans. At the end the new text is parsed again and its meaning must
//! equal the intended change applied to the original's meaning; if not,
//! nothing is returned but an error showing both.

use std::fmt;
use std::rc::Rc;

use crate::guest::cloudinit::document::{self, Node, NodeKind, ParseError, Span, Style, Value};
use crate::guest::cloudinit::effective;
use crate::guest::cloudinit::merge_key;

/// One edit to a cloud.cfg document.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Make the value at `path` (top-level key first) mean `value`, at every
    /// occurrence of the path. With `add_if_missing` the path is added where it
    /// is absent; without it only existing occurrences are changed.
    Set {
        path: Vec<String>,
        value: Value,
        add_if_missing: bool,
    },
    /// Remove every entry of a module from every module list.
    RemoveModule { module: String },
    /// Remove every item naming `value` (a module name) from the list `key`.
    RemoveListValue { key: String, value: String },
}

impl fmt::Display for Edit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Edit::Set {
                path,
                value,
                add_if_missing,
            } => {
                write!(f, "set {}: {}", path.join("."), value)?;
                if !add_if_missing {
                    f.write_str(" where it is set")?;
                }
                Ok(())
            }
            Edit::RemoveModule { module } => {
                write!(f, "remove module {module} from every module list")
            }
            Edit::RemoveListValue { key, value } => write!(f, "remove {value} from {key}"),
        }
    }
}

/// One change the editor made, located in the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Index of the edit (in the slice given to [`apply`]) that made it.
    pub edit: usize,
    /// 1-based line in the original text.
    pub line: usize,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Edited {
    pub text: String,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EditError {
    /// The input is not a cloud.cfg we can read.
    Parse(ParseError),
    /// The input is valid, but the edit would have to go through a construct
    /// we do not edit automatically (an alias, an unusual layout).
    Unsupported { line: usize, message: String },
    /// The edited text does not mean what was intended: a bug, never written.
    Verify { expected: Value, actual: Value },
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EditError::Parse(e) => e.fmt(f),
            EditError::Unsupported { line, message } => write!(f, "line {line}: {message}"),
            EditError::Verify { expected, actual } => write!(
                f,
                "internal error: the edited text does not mean what was intended; nothing was written \
                 (expected {expected}, got {actual}); please report this with the file"
            ),
        }
    }
}

impl std::error::Error for EditError {}

/// cloud-init's `form_module_name` (cloudinit/config/modules.py), minus the
/// `cc_` prefix: `scripts-user`, `scripts_user`, `cc_scripts_user` and
/// `scripts_user.py` all name the same module.
pub fn canonical_module_name(name: &str) -> String {
    let mut canon = name.trim().replace('-', "_");
    if canon.to_ascii_lowercase().ends_with(".py") {
        canon.truncate(canon.len() - 3);
    }
    let canon = canon.trim();
    canon.strip_prefix("cc_").unwrap_or(canon).to_string()
}

/// The module an entry of a module list names, read as cloud-init's
/// `_read_modules` does: a string, a list `[name, frequency, args...]`, or a
/// mapping with `name`.
pub fn entry_module_name(entry: &Value) -> Option<&str> {
    match entry {
        Value::Str(s) => Some(s),
        Value::Seq(items) => items.first()?.as_str(),
        Value::Map(_) => entry.get("name")?.as_str(),
        _ => None,
    }
}

/// Whether a top-level key holds a module list that cloud-init runs.
/// `unverified_modules` ends in `_modules` but lists modules to force, not run.
pub fn is_module_list_key(key: &str) -> bool {
    key.ends_with("_modules") && key != "unverified_modules"
}

/// Whether `current` already means `wanted` to cloud-init. Booleans are read
/// as cloud-init reads them (`effective::reads_as_true`: `yes`, `1` and
/// `"true"` are true, `y` is not); `top_level_key` names the setting when
/// the value is at the top level, where some settings have their own rule.
pub fn satisfies(top_level_key: Option<&str>, current: &Value, wanted: &Value) -> bool {
    match wanted {
        Value::Bool(b) => effective::reads_as_true(top_level_key, current) == *b,
        _ => current == wanted,
    }
}

/// Applies `edit` to a document's meaning: what the text edit must achieve.
/// The same function serves for one file and for the effective configuration.
pub fn apply_to_value(value: &mut Value, edit: &Edit) {
    match edit {
        Edit::Set {
            path,
            value: wanted,
            add_if_missing,
        } => {
            set_value_path(value, path, wanted, *add_if_missing, true);
        }
        Edit::RemoveModule { module } => {
            let module = canonical_module_name(module);
            if let Value::Map(entries) = value {
                // Copy on write: the lists may be shared through aliases.
                for (k, v) in Rc::make_mut(entries).iter_mut() {
                    if let (Some(key), Value::Seq(items)) = (k.as_str(), v)
                        && is_module_list_key(key)
                    {
                        Rc::make_mut(items).retain(|item| {
                            entry_module_name(item)
                                .is_none_or(|n| canonical_module_name(n) != module)
                        });
                    }
                }
            }
        }
        Edit::RemoveListValue {
            key,
            value: unwanted,
        } => {
            let unwanted = canonical_module_name(unwanted);
            if let Some(Value::Seq(items)) = value.get_mut(key) {
                Rc::make_mut(items).retain(|item| {
                    item.as_str()
                        .is_none_or(|s| canonical_module_name(s) != unwanted)
                });
            }
        }
    }
}

fn set_value_path(map: &mut Value, path: &[String], wanted: &Value, add: bool, top_level: bool) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if !matches!(map, Value::Map(_)) {
        return;
    }
    match map.get_mut(first) {
        None => {
            if add {
                map.insert(first, nested_value(rest, wanted));
            }
        }
        Some(child) if rest.is_empty() => {
            if !satisfies(top_level.then_some(first.as_str()), child, wanted) {
                *child = wanted.clone();
            }
        }
        Some(child @ Value::Map(_)) => set_value_path(child, rest, wanted, add, false),
        Some(child) => {
            if add {
                *child = nested_value(rest, wanted);
            }
        }
    }
}

fn nested_value(path: &[String], wanted: &Value) -> Value {
    path.iter().rev().fold(wanted.clone(), |inner, key| {
        Value::map(vec![(Value::Str(key.clone()), inner)])
    })
}

/// Applies `edits` to `text`. Returns the new text (equal to `text` when
/// nothing needed changing) and the changes made, in order.
pub fn apply(text: &str, edits: &[Edit]) -> Result<Edited, EditError> {
    let mut doc = document::parse(text).map_err(EditError::Parse)?;
    let original = doc.to_value();
    let has_aliases = doc.root.as_ref().is_some_and(|r| !alias_uses(r).is_empty());
    let eol = if text
        .find('\n')
        .is_some_and(|i| i > 0 && text.as_bytes()[i - 1] == b'\r')
    {
        "\r\n"
    } else {
        "\n"
    };
    let mut current = text.to_string();
    let mut splices: Vec<AppliedSplice> = Vec::new();
    let mut changes = Vec::new();
    // Every splice satisfies one occurrence for good, so this terminates well
    // before the limit; the limit turns a bug into an error, not a hang.
    const MAX_SPLICES: usize = 10_000;
    for _ in 0..MAX_SPLICES {
        let ctx = Context {
            text: &current,
            eol,
            final_newline: text.is_empty() || text.ends_with('\n'),
        };
        let next = edits
            .iter()
            .enumerate()
            .find_map(|(i, edit)| ctx.next_splice(doc.root.as_ref(), edit).map(|s| (i, s)));
        let Some((edit_index, planned)) = next else {
            return match verify(&original, doc.to_value(), edits) {
                // A value repeated through an alias or merge key changed
                // where the overlap check could not tell: a refusal, not a bug.
                Err(EditError::Verify { .. }) if has_aliases => Err(EditError::Unsupported {
                    line: changes.first().map_or(1, |c: &Change| c.line),
                    message: "the edit would also change a value that an alias (*anchor) or \
                              merge key (<<) repeats elsewhere; edit by hand"
                        .to_string(),
                }),
                verified => verified.map(|()| Edited {
                    text: current,
                    changes,
                }),
            };
        };
        let planned = planned?;
        let line = original_line(text, &splices, planned.parts.first().map_or(0, |p| p.start));
        if let Some(use_line) = doc
            .root
            .as_ref()
            .and_then(|root| repeated_elsewhere(&current, root, &planned))
        {
            return Err(EditError::Unsupported {
                line,
                message: format!(
                    "this value is anchored (&) and repeated through an alias or merge key at \
                     line {use_line}, which the edit would change too; edit by hand"
                ),
            });
        }
        for part in planned.parts.iter().rev() {
            current.replace_range(part.start..part.end, &part.insert);
        }
        // Record in application order (each part shifts only what follows it).
        for part in planned.parts.iter().rev() {
            splices.push(AppliedSplice {
                start: part.start,
                removed: part.end - part.start,
                inserted: part.insert.len(),
            });
        }
        changes.push(Change {
            edit: edit_index,
            line,
            what: planned.what,
        });
        // Our own splice must leave valid YAML; anything else is an editor
        // bug, unless it removed an anchor that an alias still names.
        doc = document::parse(&current).map_err(|e| match has_aliases {
            true => EditError::Unsupported {
                line,
                message: format!(
                    "the edit would break an alias (*anchor) to this value ({e}); edit by hand"
                ),
            },
            false => EditError::Verify {
                expected: Value::Str("valid YAML".into()),
                actual: Value::Str(e.to_string()),
            },
        })?;
    }
    Err(EditError::Unsupported {
        line: 1,
        message: format!("more than {MAX_SPLICES} edits needed; refusing to go on"),
    })
}

/// Text that an alias (`*a`, also in `<<: *a`) repeats: the anchored node's
/// span, whether it is a block collection, and the line of the key holding
/// the alias.
struct AliasUse {
    span: Span,
    block: bool,
    line: usize,
}

fn alias_uses(root: &Node) -> Vec<AliasUse> {
    fn walk(node: &Node, line: usize, out: &mut Vec<AliasUse>) {
        let mut visit = |child: &Node, line: usize| {
            if child.from_alias {
                let block = matches!(
                    child.kind,
                    NodeKind::Map { flow: false, .. } | NodeKind::Seq { flow: false, .. }
                );
                out.push(AliasUse {
                    span: child.span,
                    block,
                    line,
                });
            } else {
                walk(child, line, out);
            }
        };
        match &node.kind {
            NodeKind::Scalar { .. } => {}
            NodeKind::Seq { items, .. } => items.iter().for_each(|item| visit(item, line)),
            NodeKind::Map { entries, .. } => {
                for (key, value) in entries.iter() {
                    visit(key, key.line);
                    visit(value, key.line);
                }
            }
        }
    }
    let mut out = Vec::new();
    if !root.from_alias {
        walk(root, root.line, &mut out);
    }
    out
}

/// The line of an alias whose repeated text `planned` would change, if any.
fn repeated_elsewhere(text: &str, root: &Node, planned: &Planned) -> Option<usize> {
    let uses = alias_uses(root);
    planned.parts.iter().find_map(|part| {
        uses.iter()
            .find(|u| {
                // A block collection's text starts with its first line's indentation.
                let start = if u.block {
                    text[..u.span.start].rfind('\n').map_or(0, |i| i + 1)
                } else {
                    u.span.start
                };
                if part.start == part.end {
                    if u.block {
                        start <= part.start && part.start <= u.span.end
                    } else {
                        start < part.start && part.start < u.span.end
                    }
                } else {
                    part.start < u.span.end && part.end > start
                }
            })
            .map(|u| u.line)
    })
}

/// The edited document must mean the intended change of the original, nothing else.
fn verify(original: &Value, actual: Value, edits: &[Edit]) -> Result<(), EditError> {
    let mut expected = original.clone();
    for edit in edits {
        apply_to_value(&mut expected, edit);
    }
    if actual == expected {
        Ok(())
    } else {
        Err(EditError::Verify { expected, actual })
    }
}

struct AppliedSplice {
    start: usize,
    removed: usize,
    inserted: usize,
}

/// Maps a byte offset in the current text back to the original text (through
/// the splices applied so far, newest first) and returns its 1-based line.
fn original_line(original: &str, splices: &[AppliedSplice], offset: usize) -> usize {
    let mut pos = offset;
    for s in splices.iter().rev() {
        if pos >= s.start + s.inserted {
            pos = pos - s.inserted + s.removed;
        } else if pos >= s.start {
            pos = s.start;
        }
    }
    let pos = pos.min(original.len());
    // A change at the very start of a line belongs to that line, not the
    // previous one.
    original[..pos].matches('\n').count() + 1
}

/// A planned splice: byte ranges of the current text and their replacements,
/// in ascending order, non-overlapping.
struct Planned {
    parts: Vec<Part>,
    what: String,
}

struct Part {
    start: usize,
    end: usize,
    insert: String,
}

struct Context<'a> {
    text: &'a str,
    eol: &'static str,
    /// Whether the original text ends with a line break (or is empty). An
    /// earlier splice can leave the current text ending in one (removing a
    /// last entry that follows an empty line); an added line still follows
    /// the original.
    final_newline: bool,
}

impl Context<'_> {
    /// The first splice `edit` still needs in the document, if any.
    fn next_splice(&self, root: Option<&Node>, edit: &Edit) -> Option<Result<Planned, EditError>> {
        match edit {
            Edit::Set {
                path,
                value,
                add_if_missing,
            } => match root {
                Some(root) => self.set_in_map(root, path, value, *add_if_missing, true),
                None if *add_if_missing => Some(Ok(self.append_top_level(None, path, value))),
                None => None,
            },
            Edit::RemoveModule { module } => {
                let module = canonical_module_name(module);
                let root = root?;
                let NodeKind::Map { entries, .. } = &root.kind else {
                    return None;
                };
                let names_module = |item: &Node| {
                    entry_module_name(&item.to_value())
                        .is_some_and(|n| canonical_module_name(n) == module)
                };
                entries
                    .iter()
                    .find_map(|(key, list)| {
                        let name = key.key_str()?;
                        if !is_module_list_key(name) {
                            return None;
                        }
                        self.remove_first_matching(key, list, name, names_module)
                    })
                    .or_else(|| self.merged_list_refusal(root, is_module_list_key, names_module))
            }
            Edit::RemoveListValue {
                key: list_key,
                value,
            } => {
                let value = canonical_module_name(value);
                let root = root?;
                let names_value = |item: &Node| {
                    item.to_value()
                        .as_str()
                        .is_some_and(|s| canonical_module_name(s) == value)
                };
                root.entries_for(list_key)
                    .find_map(|(key, list)| {
                        self.remove_first_matching(key, list, list_key, names_value)
                    })
                    .or_else(|| self.merged_list_refusal(root, |k| k == list_key, names_value))
            }
        }
    }

    fn remove_first_matching(
        &self,
        key: &Node,
        list: &Node,
        list_name: &str,
        matches: impl Fn(&Node) -> bool,
    ) -> Option<Result<Planned, EditError>> {
        let NodeKind::Seq { items, flow } = &list.kind else {
            return None;
        };
        let index = items.iter().position(matches)?;
        if list.from_alias {
            return Some(Err(EditError::Unsupported {
                line: key.line,
                message: format!(
                    "{list_name} is an alias (*anchor) of a list defined elsewhere; \
                     edit that list by hand, or write it out in full"
                ),
            }));
        }
        let item = &items[index];
        let what = format!("removed {} from {list_name}", self.snippet(item));
        let parts = if *flow {
            self.remove_flow_item(items, index)
        } else {
            match self.remove_block_item(key, list, items, index) {
                Ok(parts) => parts,
                Err(message) => {
                    return Some(Err(EditError::Unsupported {
                        line: item.line,
                        message,
                    }));
                }
            }
        };
        Some(Ok(Planned { parts, what }))
    }

    fn snippet(&self, node: &Node) -> String {
        let text = &self.text[node.span.start..node.span.end];
        let one_line: Vec<&str> = text.lines().map(str::trim).collect();
        format!("`{}`", one_line.join(" "))
    }

    fn remove_flow_item(&self, items: &[Node], index: usize) -> Vec<Part> {
        let item = &items[index];
        let part = |(start, end): (usize, usize)| Part {
            start,
            end,
            insert: String::new(),
        };
        let after = self.skip_blanks_and_comments(item.span.end);
        if self.text.as_bytes().get(after) == Some(&b',') {
            // "a, b" -> "b": the item, its comma and the blanks after it.
            let next = self.skip_blanks_and_comments(after + 1);
            if !self.text[item.span.start..next].contains('\n') {
                return vec![part((item.span.start, next))];
            }
            // Over several lines: the item's line when it has one to itself,
            // else the item and its comma; never the lines around it, which
            // may be comments.
            if let Some(line) = self.own_line(item.span.start, after + 1) {
                return vec![part(line)];
            }
            if !self.text[item.span.end..after].contains('\n') {
                return vec![part((item.span.start, after + 1))];
            }
            return vec![
                part((item.span.start, item.span.end)),
                part((after, after + 1)),
            ];
        }
        if index > 0 {
            // "a, b" -> "a": from the end of the previous item, on one line.
            let previous_end = items[index - 1].span.end;
            if !self.text[previous_end..item.span.end].contains('\n') {
                return vec![part((previous_end, item.span.end))];
            }
        }
        // The only item, or the last one on a line of its own: the item (its
        // line, when it has one to itself). A comma before it stays as a
        // trailing comma (`[a,]` means [a], in PyYAML too), so that comment
        // lines between the two stay as well.
        vec![part(
            self.own_line(item.span.start, item.span.end)
                .unwrap_or((item.span.start, item.span.end)),
        )]
    }

    /// The whole line (with its line break) holding `start..end`, when the
    /// line holds nothing else but blanks and a trailing comment.
    fn own_line(&self, start: usize, end: usize) -> Option<(usize, usize)> {
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        if !self.text[line_start..start]
            .bytes()
            .all(|b| b == b' ' || b == b'\t')
        {
            return None;
        }
        let line_end = end + self.text[end..].find('\n')? + 1;
        let tail = self.text[end..line_end].trim_start_matches([' ', '\t']);
        (tail.starts_with('#') || tail.trim_end_matches(['\r', '\n']).is_empty())
            .then_some((line_start, line_end))
    }

    fn remove_block_item(
        &self,
        key: &Node,
        list: &Node,
        items: &[Node],
        index: usize,
    ) -> Result<Vec<Part>, String> {
        let bytes = self.text.as_bytes();
        let dash = if index == 0 {
            list.span.start
        } else {
            self.skip_blanks_and_comments(items[index - 1].span.end)
        };
        if bytes.get(dash) != Some(&b'-') {
            return Err("cannot find this list entry's `-`; edit this list by hand".to_string());
        }
        let line_start = self.text[..dash].rfind('\n').map_or(0, |i| i + 1);
        if !self.text[line_start..dash].bytes().all(|b| b == b' ') {
            return Err(
                "a list entry that does not start its own line; edit this list by hand".to_string(),
            );
        }
        let item = &items[index];
        let last_content = item.span.end.max(dash + 1);
        let mut end = self.text[last_content..]
            .find('\n')
            .map_or(self.text.len(), |i| last_content + i + 1);
        let mut start = line_start;
        if end == self.text.len() && !self.text.ends_with('\n') && start > 0 {
            // Keep the file's missing final newline: take the line break
            // before the entry instead of leaving one at the end.
            start -= if self.text[..start].ends_with("\r\n") {
                2
            } else {
                1
            };
            end = self.text.len();
        }
        let mut parts = Vec::new();
        if items.len() == 1 {
            // Removing the only entry would leave `key:` (null); cloud-init
            // copes, but an empty list says what is meant.
            let colon = self
                .colon_after(key)
                .ok_or("cannot find the `:` after this key")?;
            parts.push(Part {
                start: colon + 1,
                end: colon + 1,
                insert: " []".to_string(),
            });
        }
        parts.push(Part {
            start,
            end,
            insert: String::new(),
        });
        Ok(parts)
    }

    /// Skips whitespace and `#` comments from `pos`; returns the next
    /// significant byte offset.
    fn skip_blanks_and_comments(&self, mut pos: usize) -> usize {
        let bytes = self.text.as_bytes();
        while pos < bytes.len() {
            match bytes[pos] {
                b' ' | b'\t' | b'\r' | b'\n' => pos += 1,
                b'#' => {
                    pos = self.text[pos..].find('\n').map_or(bytes.len(), |i| pos + i);
                }
                _ => break,
            }
        }
        pos
    }

    /// Byte offset of the `:` that ends a mapping key.
    fn colon_after(&self, key: &Node) -> Option<usize> {
        let after = &self.text[key.span.end..];
        let offset = after.find(|c: char| c != ' ' && c != '\t')?;
        (after.as_bytes()[offset] == b':').then_some(key.span.end + offset)
    }

    fn set_in_map(
        &self,
        map: &Node,
        path: &[String],
        wanted: &Value,
        add: bool,
        top_level: bool,
    ) -> Option<Result<Planned, EditError>> {
        let (first, rest) = path.split_first()?;
        let mut found = false;
        for (key, value) in map.entries_for(first) {
            found = true;
            let planned = if rest.is_empty() {
                if satisfies(
                    top_level.then_some(first.as_str()),
                    &value.to_value(),
                    wanted,
                ) {
                    continue;
                }
                self.replace_value(
                    key,
                    value,
                    wanted,
                    &format!("set {first}: {wanted} (was {})", value.to_value()),
                )
            } else if matches!(value.kind, NodeKind::Map { .. }) {
                match self.set_in_map(value, rest, wanted, add, false) {
                    Some(p) => return Some(p),
                    None => continue,
                }
            } else if add {
                let new = nested_value(rest, wanted);
                self.replace_value(
                    key,
                    value,
                    &new,
                    &format!("set {first}: {new} (was {})", value.to_value()),
                )
            } else {
                continue;
            };
            return Some(planned);
        }
        if found {
            return None;
        }
        let mut note = String::new();
        match merge_key::lookup(map, first).and_then(|f| Some((f.merge?, f.value))) {
            // The key comes through a merge key (`<<: *d`): an explicit key
            // wins over it, so a scalar is set by adding one here, which
            // leaves the merged mapping (and its other uses) alone.
            Some((merge, value)) => {
                let current = value.to_value();
                if rest.is_empty() {
                    if satisfies(top_level.then_some(first.as_str()), &current, wanted) {
                        return None;
                    }
                    note = format!(" (over {current} from `{}`)", self.merge_text(merge));
                } else {
                    let mut changed = current.clone();
                    set_value_path(&mut changed, rest, wanted, add, false);
                    if changed == current {
                        return None;
                    }
                    // Adding `first` here would replace the whole merged
                    // mapping (merges are shallow), not one key in it.
                    return Some(Err(EditError::Unsupported {
                        line: merge.line,
                        message: format!(
                            "{first} comes through `{}` at line {}: edit by hand",
                            self.merge_text(merge),
                            merge.line
                        ),
                    }));
                }
            }
            None if !add => return None,
            None => {}
        }
        if map.from_alias {
            return Some(Err(EditError::Unsupported {
                line: map.line,
                message: format!("cannot add {first} inside an alias (*anchor); edit by hand"),
            }));
        }
        let new = nested_value(rest, wanted);
        let planned = match &map.kind {
            NodeKind::Map {
                flow: true,
                entries,
            } => Ok(self.insert_into_flow_map(map, entries.is_empty(), first, &new)),
            _ if top_level => Ok(self.append_top_level(Some(map), path, wanted)),
            NodeKind::Map { entries, .. } => self.insert_into_block_map(&entries[0].0, first, &new),
            _ => return None,
        };
        Some(planned.map(|mut p| {
            p.what.push_str(&note);
            p
        }))
    }

    /// The `*name` token that is a key's value (`key: *name`), if the value
    /// is written as an alias.
    fn alias_after(&self, key: &Node) -> Option<(usize, usize)> {
        let start = self.skip_blanks_and_comments(self.colon_after(key)? + 1);
        let rest = self.text.get(start..)?;
        let name = rest.strip_prefix('*')?;
        let length = name
            .find(|c: char| c.is_whitespace() || ",[]{}".contains(c))
            .unwrap_or(name.len());
        (length > 0).then_some((start, start + 1 + length))
    }

    /// `<<: *d` as written, for messages: the merge key's line from the `<<`
    /// on, without a comment.
    fn merge_text(&self, merge: &Node) -> String {
        let rest = &self.text[merge.span.start..];
        let line = rest.split(['\n', '\r']).next().unwrap_or("<<");
        let line = line.split(" #").next().unwrap_or(line).trim();
        let flow_end = line.find(['}', ',']).filter(|&i| !line[..i].contains('['));
        flow_end.map_or(line, |i| line[..i].trim_end()).to_string()
    }

    /// A module list or list key present only through a merge key, whose
    /// merged value `needs_edit`: that cannot be edited where it is written.
    fn merged_list_refusal(
        &self,
        root: &Node,
        key_matches: impl Fn(&str) -> bool,
        needs_edit: impl Fn(&Node) -> bool,
    ) -> Option<Result<Planned, EditError>> {
        merge_key::merged_only_keys(root)
            .iter()
            .filter(|k| key_matches(k))
            .find_map(|k| {
                let found = merge_key::lookup(root, k)?;
                let merge = found.merge?;
                let NodeKind::Seq { items, .. } = &found.value.kind else {
                    return None;
                };
                items.iter().any(&needs_edit).then(|| {
                    Err(EditError::Unsupported {
                        line: merge.line,
                        message: format!(
                            "{k} comes through `{}` at line {}: edit by hand",
                            self.merge_text(merge),
                            merge.line
                        ),
                    })
                })
            })
    }

    fn replace_value(
        &self,
        key: &Node,
        value: &Node,
        new: &Value,
        what: &str,
    ) -> Result<Planned, EditError> {
        let through_alias = || EditError::Unsupported {
            line: key.line,
            message: "this value comes from an alias (*anchor); edit it by hand".to_string(),
        };
        if key.from_alias {
            return Err(through_alias());
        }
        if value.from_alias {
            // `key: *p`: the alias itself is replaced by the new value, so
            // the anchored value and its other uses stay as they are.
            let (start, end) = self.alias_after(key).ok_or_else(through_alias)?;
            return Ok(Planned {
                parts: vec![Part {
                    start,
                    end,
                    insert: new.to_yaml_inline(),
                }],
                what: format!("{what} in place of an alias"),
            });
        }
        let new_text = new.to_yaml_inline();
        let same_line = value.line == key.line;
        let part = match &value.kind {
            NodeKind::Scalar { style, .. }
                if same_line && *style != Style::Block && value.span.end > value.span.start =>
            {
                Part {
                    start: value.span.start,
                    end: value.span.end,
                    insert: new_text,
                }
            }
            _ => {
                let colon = self
                    .colon_after(key)
                    .ok_or_else(|| EditError::Unsupported {
                        line: key.line,
                        message: "cannot find the `:` after this key; edit it by hand".to_string(),
                    })?;
                let end = if value.span.end > value.span.start {
                    value.span.end
                } else {
                    colon + 1
                };
                Part {
                    start: colon + 1,
                    end: end.max(colon + 1),
                    insert: format!(" {new_text}"),
                }
            }
        };
        Ok(Planned {
            parts: vec![part],
            what: what.to_string(),
        })
    }

    fn insert_into_flow_map(&self, map: &Node, empty: bool, key: &str, value: &Value) -> Planned {
        let entry = format!("{key}: {value}");
        let insert = if empty {
            entry.clone()
        } else {
            format!("{entry}, ")
        };
        let at = map.span.start + 1;
        Planned {
            parts: vec![Part {
                start: at,
                end: at,
                insert,
            }],
            what: format!("added {entry}"),
        }
    }

    fn insert_into_block_map(
        &self,
        first_key: &Node,
        key: &str,
        value: &Value,
    ) -> Result<Planned, EditError> {
        let line_start = self.text[..first_key.span.start]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let indent = &self.text[line_start..first_key.span.start];
        if !indent.bytes().all(|b| b == b' ') {
            return Err(EditError::Unsupported {
                line: first_key.line,
                message: format!(
                    "cannot add {key} to a mapping laid out on one line with other content; edit it by hand"
                ),
            });
        }
        let entry = format!("{key}: {value}");
        Ok(Planned {
            parts: vec![Part {
                start: line_start,
                end: line_start,
                insert: format!("{indent}{entry}{}", self.eol),
            }],
            what: format!("added {entry}"),
        })
    }

    /// Adds a top-level `key: value` at the end of the document, keeping the
    /// file's line endings and its missing final newline, if it has one.
    /// Byte offset of a final `...` document-end line, if the document has
    /// one with nothing but blank and comment lines after it.
    fn document_end_marker(&self) -> Option<usize> {
        let mut offset = self.text.len();
        let mut marker = None;
        for line in self.text.split_inclusive('\n').rev() {
            offset -= line.len();
            if is_document_end_line(line) {
                // Several `...` lines may end the document; the key goes
                // before the first.
                marker = Some(offset);
                continue;
            }
            let content = line.trim();
            if !(content.is_empty() || content.starts_with('#')) {
                break;
            }
        }
        marker
    }

    /// Where a new top-level key goes when the text ends, without a line
    /// break, inside a `|` or `>` block scalar: before the last top-level
    /// entry. After it, the scalar would gain the line break it lacks
    /// (PyYAML reads `key: |` + `  text` at the end of the file as "text",
    /// and as "text\n" once anything follows).
    fn before_final_block_scalar(&self, root: Option<&Node>) -> Option<usize> {
        if self.text.ends_with(['\n', '\r']) {
            return None;
        }
        let NodeKind::Map {
            entries,
            flow: false,
        } = &root?.kind
        else {
            return None;
        };
        let (last_key, last_value) = entries.last()?;
        let mut leaf = last_value;
        loop {
            match &leaf.kind {
                NodeKind::Scalar {
                    style: Style::Block,
                    ..
                } => break,
                NodeKind::Map {
                    entries,
                    flow: false,
                } => leaf = &entries.last()?.1,
                NodeKind::Seq { items, flow: false } => leaf = items.last()?,
                _ => return None,
            }
        }
        let line_start = self.text[..last_key.span.start]
            .rfind(['\n', '\r'])
            .map_or(0, |i| i + 1);
        self.text[line_start..last_key.span.start]
            .trim()
            .is_empty()
            .then_some(line_start)
    }

    fn append_top_level(&self, root: Option<&Node>, path: &[String], wanted: &Value) -> Planned {
        let (first, rest) = path.split_first().expect("paths are never empty");
        let entry = format!("{first}: {}", nested_value(rest, wanted));
        // After `...` a key would start a second document, which cloud-init
        // cannot load: the key goes before the marker.
        if let Some(at) = self
            .before_final_block_scalar(root)
            .or_else(|| self.document_end_marker())
        {
            return Planned {
                parts: vec![Part {
                    start: at,
                    end: at,
                    insert: format!("{entry}{}", self.eol),
                }],
                what: format!("added {entry}"),
            };
        }
        let at_line_start = self.text.is_empty() || self.text.ends_with('\n');
        let insert = match (at_line_start, self.final_newline) {
            (true, true) => format!("{entry}{}", self.eol),
            (true, false) => entry.clone(),
            (false, _) => format!("{}{entry}", self.eol),
        };
        let at = self.text.len();
        Planned {
            parts: vec![Part {
                start: at,
                end: at,
                insert,
            }],
            what: format!("added {entry}"),
        }
    }
}

/// A `...` document end marker line, as PyYAML's scanner finds one: in
/// column 0, followed by a blank or the end, then only spaces and a comment
/// (anything else would not be a valid document, which we never edit).
fn is_document_end_line(line: &str) -> bool {
    line.strip_prefix("...")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remove(module: &str) -> Edit {
        Edit::RemoveModule {
            module: module.to_string(),
        }
    }

    fn set(path: &str, value: Value) -> Edit {
        Edit::Set {
            path: path.split('.').map(str::to_string).collect(),
            value,
            add_if_missing: true,
        }
    }

    #[test]
    fn edits_produce_exact_text() {
        let disabled = || Value::Str("disabled".into());
        let cases: Vec<(&str, Vec<Edit>, &str)> = vec![
            // Not a module list: left alone.
            (
                "m:\n - a\n - scripts-user\n",
                vec![remove("scripts_user")],
                "m:\n - a\n - scripts-user\n",
            ),
            (
                "cloud_final_modules:\n - a\n - scripts-user\n - b\n",
                vec![remove("scripts_user")],
                "cloud_final_modules:\n - a\n - b\n",
            ),
            (
                "x_modules:\n - scripts-user   # why\n",
                vec![remove("scripts-user")],
                "x_modules: []\n",
            ),
            (
                "x_modules:\n - scripts-user",
                vec![remove("scripts-user")],
                "x_modules: []",
            ),
            (
                "x_modules:\n - a\n - scripts-user",
                vec![remove("scripts-user")],
                "x_modules:\n - a",
            ),
            (
                "x_modules:\r\n - a\r\n - ntp\r\n - b\r\n",
                vec![remove("ntp")],
                "x_modules:\r\n - a\r\n - b\r\n",
            ),
            (
                "x_modules: [a, ntp, b]\n",
                vec![remove("ntp")],
                "x_modules: [a, b]\n",
            ),
            (
                "x_modules: [a, ntp]\n",
                vec![remove("ntp")],
                "x_modules: [a]\n",
            ),
            (
                "x_modules: [ ntp ]\n",
                vec![remove("ntp")],
                "x_modules: [  ]\n",
            ),
            (
                "x_modules:\n - ['update_etc_hosts', 'once-per-instance']\n - b\n",
                vec![remove("update-etc-hosts")],
                "x_modules:\n - b\n",
            ),
            (
                "x_modules:\n - a\n - name: ntp\n   frequency: always\n - b\n",
                vec![remove("ntp")],
                "x_modules:\n - a\n - b\n",
            ),
            (
                "x_modules:\n -\n   - ntp\n   - always\n - b\n",
                vec![remove("ntp")],
                "x_modules:\n - b\n",
            ),
            (
                "x_modules: [ntp, ]\n",
                vec![remove("ntp")],
                "x_modules: []\n",
            ),
            (
                "x_modules: [a, ntp, ]\n",
                vec![remove("ntp")],
                "x_modules: [a, ]\n",
            ),
            // Flow lists over several lines: comment lines stay.
            (
                "x_modules: [\n  a,\n  # c\n\n  ntp\n  ]\n",
                vec![remove("ntp")],
                "x_modules: [\n  a,\n  # c\n\n  ]\n",
            ),
            (
                "x_modules: [\n  ntp,  # why\n  # c\n  a\n]\n",
                vec![remove("ntp")],
                "x_modules: [\n  # c\n  a\n]\n",
            ),
            (
                "x_modules: [ntp,\n  # c\n  a]\n",
                vec![remove("ntp")],
                "x_modules: [\n  # c\n  a]\n",
            ),
            (
                "x_modules: [\r\n  # c\r\n  ntp\r\n  ]\r\n",
                vec![remove("ntp")],
                "x_modules: [\r\n  # c\r\n  ]\r\n",
            ),
            (
                "x_modules: [a,\n  ntp]\n",
                vec![remove("ntp")],
                "x_modules: [a,\n  ]\n",
            ),
            // Indentless lists (PyYAML's default layout), first entry too.
            (
                "x_modules:\n- ntp\n- a\n",
                vec![remove("ntp")],
                "x_modules:\n- a\n",
            ),
            (
                "x_modules:\n- [ntp, always]\n",
                vec![remove("ntp")],
                "x_modules: []\n",
            ),
            (
                "x_modules:\n- - ntp\n  - always\n- a\n",
                vec![remove("ntp")],
                "x_modules:\n- a\n",
            ),
            (
                "x_modules:\n- [a, always]\n- ntp",
                vec![remove("ntp")],
                "x_modules:\n- [a, always]",
            ),
            (
                "x_modules:\n - a\n # keep me\n - cc_ntp.py\n",
                vec![remove("ntp")],
                "x_modules:\n - a\n # keep me\n",
            ),
            (
                "unverified_modules: [ntp]\nx_modules: [ntp]\n",
                vec![remove("ntp")],
                "unverified_modules: [ntp]\nx_modules: []\n",
            ),
            (
                "unverified_modules: ['resolv_conf']\n",
                vec![Edit::RemoveListValue {
                    key: "unverified_modules".into(),
                    value: "resolv-conf".into(),
                }],
                "unverified_modules: []\n",
            ),
            (
                "a: 1\npreserve_hostname: false  # c\n",
                vec![set("preserve_hostname", Value::Bool(true))],
                "a: 1\npreserve_hostname: true  # c\n",
            ),
            (
                "preserve_hostname: yes\n",
                vec![set("preserve_hostname", Value::Bool(true))],
                "preserve_hostname: yes\n",
            ),
            (
                "preserve_hostname:\nb: 1\n",
                vec![set("preserve_hostname", Value::Bool(true))],
                "preserve_hostname: true\nb: 1\n",
            ),
            (
                "a: 1\n",
                vec![set("preserve_hostname", Value::Bool(true))],
                "a: 1\npreserve_hostname: true\n",
            ),
            (
                "a: 1",
                vec![set("preserve_hostname", Value::Bool(true))],
                "a: 1\npreserve_hostname: true",
            ),
            (
                "a: 1\r\n",
                vec![set("network.config", disabled())],
                "a: 1\r\nnetwork: {config: disabled}\r\n",
            ),
            (
                "network:\n  renderers: [x]\n",
                vec![set("network.config", disabled())],
                "network:\n  config: disabled\n  renderers: [x]\n",
            ),
            (
                "network: {renderers: [x]}\n",
                vec![set("network.config", disabled())],
                "network: {config: disabled, renderers: [x]}\n",
            ),
            (
                "network: {}\n",
                vec![set("network.config", disabled())],
                "network: {config: disabled}\n",
            ),
            (
                "network:\n  config: enabled # c\n",
                vec![set("network.config", disabled())],
                "network:\n  config: disabled # c\n",
            ),
            (
                "network: 5\n",
                vec![set("network.config", disabled())],
                "network: {config: disabled}\n",
            ),
            (
                "network:\n",
                vec![set("network.config", disabled())],
                "network: {config: disabled}\n",
            ),
            (
                "preserve_hostname: false\nb: 1\npreserve_hostname: false\n",
                vec![set("preserve_hostname", Value::Bool(true))],
                "preserve_hostname: true\nb: 1\npreserve_hostname: true\n",
            ),
            (
                "manage_etc_hosts: localhost\n",
                vec![Edit::Set {
                    path: vec!["manage_etc_hosts".into()],
                    value: Value::Bool(false),
                    add_if_missing: false,
                }],
                "manage_etc_hosts: false\n",
            ),
            (
                "a: 1\n",
                vec![Edit::Set {
                    path: vec!["manage_etc_hosts".into()],
                    value: Value::Bool(false),
                    add_if_missing: false,
                }],
                "a: 1\n",
            ),
            (
                "",
                vec![set("preserve_hostname", Value::Bool(true))],
                "preserve_hostname: true\n",
            ),
            // After an explicit document end a key would start a second
            // document: it goes before the `...`.
            (
                "a: 1\n...\n# end\n",
                vec![set("preserve_hostname", Value::Bool(true))],
                "a: 1\npreserve_hostname: true\n...\n# end\n",
            ),
            // The marker may carry a comment of its own.
            (
                "a: 1\n... # end of config\n",
                vec![set("preserve_hostname", Value::Bool(true))],
                "a: 1\npreserve_hostname: true\n... # end of config\n",
            ),
            (
                "a: 1\n... # end\r\n",
                vec![set("preserve_hostname", Value::Bool(true))],
                "a: 1\npreserve_hostname: true\n... # end\r\n",
            ),
            // No final newline: still none after removing a last entry that
            // follows an empty line, then adding a key.
            (
                "a: 1\nx_modules:\n - b\n\n - ntp",
                vec![remove("ntp"), set("preserve_hostname", Value::Bool(true))],
                "a: 1\nx_modules:\n - b\npreserve_hostname: true",
            ),
        ];
        for (input, edits, want) in cases {
            let got = apply(input, &edits).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(got.text, want, "editing {input:?} with {edits:?}");
            let again = apply(&got.text, &edits).unwrap();
            assert_eq!(
                again.text, got.text,
                "second run on {input:?} changed something"
            );
            assert!(again.changes.is_empty());
        }
    }

    #[test]
    fn changes_name_original_lines() {
        let text = "a: 1\ncloud_final_modules:\n - scripts-user\n - x\n - scripts_user\npreserve_hostname: no\n";
        let got = apply(
            text,
            &[
                remove("scripts-user"),
                set("preserve_hostname", Value::Bool(true)),
            ],
        )
        .unwrap();
        let lines: Vec<(usize, usize)> = got.changes.iter().map(|c| (c.edit, c.line)).collect();
        assert_eq!(lines, vec![(0, 3), (0, 5), (1, 6)]);
        assert!(
            got.changes[0].what.contains("scripts-user"),
            "{:?}",
            got.changes
        );
    }

    #[test]
    fn aliases_are_not_edited_through() {
        let text = "mods: &m\n - ntp\ncloud_config_modules: *m\n";
        let err = apply(text, &[remove("ntp")]);
        // The anchored list is a module list too only if its key ends in
        // _modules; here `mods` does not, so the alias is what would change.
        assert!(
            matches!(err, Err(EditError::Unsupported { line: 3, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn module_names_are_canonical() {
        for name in [
            "scripts-user",
            "scripts_user",
            "cc_scripts_user",
            "scripts_user.py",
            " scripts-user ",
        ] {
            assert_eq!(canonical_module_name(name), "scripts_user", "{name}");
        }
    }
}
