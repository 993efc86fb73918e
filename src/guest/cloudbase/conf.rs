//! Cloudbase-Init's configuration files (`cloudbase-init.conf`,
//! `cloudbase-init-unattend.conf`) read exactly as oslo.config reads them,
//! and edited losslessly: every byte outside an edit stays as it was (CRLF,
//! comments, a byte-order mark, odd spacing).
//!
//! The meaning is oslo.config's (`oslo_config.iniparser.BaseParser` fed by
//! Python's universal-newline `readlines()`, then `types.List` for list
//! options); tests/cloudbase_differential.rs compares every rule here with
//! Debian's python3-oslo.config. The rules that surprise people:
//! - a line starting with a space or a tab continues the previous value
//!   (joined with `\n`), but a blank line or a comment ends the value, and a
//!   continuation line after that is a parse error that stops Cloudbase-Init
//!   from starting at all;
//! - list items are split at commas only: a newline is not a separator;
//! - one pair of quotes around the whole first-line value is removed, quotes
//!   around single items are not;
//! - keys and the `DEFAULT` section name are case-sensitive (`Plugins=` is
//!   ignored, `[default]` is another section); of repeated keys the last wins.

use std::fmt;

/// The section oslo.config reads unqualified options from.
pub const DEFAULT_SECTION: &str = "DEFAULT";

/// Why oslo.config refuses a file: Cloudbase-Init then fails at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based, the line oslo.config names (for a missing section, the line
    /// where the assignment ended, as oslo.config reports it).
    pub line: usize,
    /// oslo.config's own words.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: {} (oslo.config refuses the file, so Cloudbase-Init does not start)",
            self.line, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// A physical line: `start..content_end` is its text, `content_end..end`
/// its terminator (`\r\n`, `\r`, `\n` or nothing at the end of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Line {
    start: usize,
    content_end: usize,
    end: usize,
}

/// One `key=value` (or `key: value`) with its continuation lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The section as written (`DEFAULT`, `default`, ...).
    pub section: String,
    pub key: String,
    /// The value as oslo.config hands it to the option's type: the first
    /// line's value (stripped, one pair of enclosing quotes removed) and each
    /// continuation line (left-stripped), joined with `\n`.
    pub value: String,
    /// 0-based indexes of the first and last physical line.
    first: usize,
    last: usize,
    /// Byte offset in the text where the first line's value starts (after
    /// the separator and the blanks after it).
    value_start: usize,
}

impl Assignment {
    /// 1-based line of the key.
    pub fn line(&self) -> usize {
        self.first + 1
    }

    /// 1-based last line (the last continuation line).
    pub fn last_line(&self) -> usize {
        self.last + 1
    }
}

/// A parsed configuration file; keeps its text for lossless edits.
#[derive(Debug, Clone)]
pub struct Conf {
    text: String,
    lines: Vec<Line>,
    /// Every assignment in file order.
    pub assignments: Vec<Assignment>,
    /// Line indexes of section headers, with the name.
    sections: Vec<(usize, String)>,
}

/// Python's `str.isspace()`: Unicode White_Space plus the ASCII
/// information separators U+001C..U+001F, which Python also strips.
pub fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn split_lines(text: &str) -> Vec<Line> {
    let bytes = text.as_bytes();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(Line {
                    start,
                    content_end: i,
                    end: i + 1,
                });
                i += 1;
                start = i;
            }
            // Python's text mode reads a lone `\r` as a line end too.
            b'\r' => {
                let end = if bytes.get(i + 1) == Some(&b'\n') {
                    i + 2
                } else {
                    i + 1
                };
                lines.push(Line {
                    start,
                    content_end: i,
                    end,
                });
                i = end;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < bytes.len() {
        lines.push(Line {
            start,
            content_end: bytes.len(),
            end: bytes.len(),
        });
    }
    lines
}

/// `value.strip()` then oslo.config's removal of one pair of enclosing
/// quotes (the same character at both ends, `"` or `'`).
fn unquote(value: &str) -> &str {
    let value = value.trim_matches(py_space);
    let mut chars = value.chars();
    match (chars.next(), chars.next_back()) {
        (Some(first @ ('"' | '\'')), Some(last)) if first == last => &value[1..value.len() - 1],
        // A single quote character is both ends: Python's value[1:-1] is ''.
        (Some('"' | '\''), None) => "",
        _ => value,
    }
}

struct Pending {
    key: String,
    parts: Vec<String>,
    first: usize,
    last: usize,
    value_start: usize,
}

pub fn parse(text: &str) -> Result<Conf, ParseError> {
    let lines = split_lines(text);
    let mut assignments = Vec::new();
    let mut sections = Vec::new();
    let mut section: Option<String> = None;
    let mut pending: Option<Pending> = None;
    let error = |line: usize, message: &str| ParseError {
        line,
        message: message.to_string(),
    };
    // oslo.config files an assignment when the next line that is not a
    // continuation arrives, and names that line if the file has no section
    // yet.
    let flush = |pending: Pending,
                 section: &Option<String>,
                 lineno: usize,
                 assignments: &mut Vec<Assignment>|
     -> Result<(), ParseError> {
        let Some(section) = section else {
            return Err(error(lineno, "Section must be started before assignment"));
        };
        assignments.push(Assignment {
            section: section.clone(),
            key: pending.key,
            value: pending.parts.join("\n"),
            first: pending.first,
            last: pending.last,
            value_start: pending.value_start,
        });
        Ok(())
    };
    for (index, line) in lines.iter().enumerate() {
        let lineno = index + 1;
        let raw = &text[line.start..line.content_end];
        let content = raw.trim_end_matches(py_space);
        if content.is_empty() {
            if let Some(p) = pending.take() {
                flush(p, &section, lineno, &mut assignments)?;
            }
            continue;
        }
        if content.starts_with([' ', '\t']) {
            match pending.as_mut() {
                None => return Err(error(lineno, "Unexpected continuation line")),
                Some(p) => {
                    p.parts
                        .push(content.trim_start_matches(py_space).to_string());
                    p.last = index;
                }
            }
            continue;
        }
        if let Some(p) = pending.take() {
            flush(p, &section, lineno, &mut assignments)?;
        }
        if content.starts_with('[') {
            if !content.ends_with(']') {
                return Err(error(lineno, "Invalid section (must end with ])"));
            }
            if content.chars().count() <= 2 {
                return Err(error(lineno, "Empty section name"));
            }
            let name = content[1..content.len() - 1].to_string();
            sections.push((index, name.clone()));
            section = Some(name);
        } else if content.starts_with(['#', ';']) {
            // A comment.
        } else {
            let colon = content.find(':');
            let equal = content.find('=');
            let sep = match (colon, equal) {
                (None, None) => {
                    return Err(error(lineno, "No ':' or '=' found in assignment"));
                }
                (None, Some(e)) => e,
                (Some(c), None) => c,
                (Some(c), Some(e)) => c.min(e),
            };
            let key = content[..sep].trim_matches(py_space);
            if key.is_empty() {
                return Err(error(lineno, "Key cannot be empty"));
            }
            let after = &content[sep + 1..];
            let value_start =
                line.start + sep + 1 + (after.len() - after.trim_start_matches(py_space).len());
            pending = Some(Pending {
                key: key.to_string(),
                parts: vec![unquote(after).to_string()],
                first: index,
                last: index,
                value_start,
            });
        }
    }
    if let Some(p) = pending.take() {
        flush(p, &section, lines.len(), &mut assignments)?;
    }
    Ok(Conf {
        text: text.to_string(),
        lines,
        assignments,
        sections,
    })
}

/// oslo.config's `types.List()` of strings: strip, drop trailing commas,
/// split at every comma, strip each item. Items may be empty.
pub fn list_items(value: &str) -> Vec<String> {
    let s = value.trim_matches(py_space).trim_end_matches(',');
    if s.is_empty() {
        return Vec::new();
    }
    s.split(',')
        .map(|item| item.trim_matches(py_space).to_string())
        .collect()
}

/// Why a list cannot be rewritten as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for RewriteError {}

/// A list value written back: the new text and the 1-based line of the edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub text: String,
    pub line: usize,
}

impl Conf {
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The assignment oslo.config uses for `key` in `section`: the last one
    /// (repeated sections merge; the last value wins).
    pub fn get(&self, section: &str, key: &str) -> Option<&Assignment> {
        self.assignments
            .iter()
            .rev()
            .find(|a| a.section == section && a.key == key)
    }

    /// A list option of `[DEFAULT]` as Cloudbase-Init reads it; `None` when
    /// unset (the option's default then applies).
    pub fn default_list(&self, key: &str) -> Option<Vec<String>> {
        self.get(DEFAULT_SECTION, key).map(|a| list_items(&a.value))
    }

    /// The line terminator new lines get: the file's first one, else CRLF
    /// (the installer writes CRLF).
    fn eol(&self) -> &str {
        self.lines
            .iter()
            .map(|l| &self.text[l.content_end..l.end])
            .find(|t| !t.is_empty())
            .unwrap_or("\r\n")
    }

    /// The text with the list option `key` of `[DEFAULT]` set to `items`.
    /// An existing assignment (the one oslo.config uses) is rewritten in its
    /// own layout (one line, or one item per continuation line); otherwise a
    /// line is added after the last assignment of the last `[DEFAULT]`
    /// section (a `[DEFAULT]` section is added at the end if there is none).
    pub fn set_default_list(&self, key: &str, items: &[String]) -> Result<Rewritten, RewriteError> {
        let line_of_edit = self.get(DEFAULT_SECTION, key).map_or(0, Assignment::line);
        if let Some(bad) = items
            .iter()
            .find(|i| i.is_empty() || i.contains(['\n', ',']) || *i != i.trim_matches(py_space))
        {
            return Err(RewriteError {
                line: line_of_edit,
                message: format!(
                    "{key} has an item that cannot be written back unchanged ({bad:?}: empty, \
                     spanning lines or blank-padded); correct the list by hand"
                ),
            });
        }
        let eol = self.eol().to_string();
        match self.get(DEFAULT_SECTION, key) {
            Some(a) => Ok(self.rewrite(a, items, &eol)),
            None => Ok(self.insert(key, items, &eol)),
        }
    }

    fn rewrite(&self, a: &Assignment, items: &[String], eol: &str) -> Rewritten {
        let first = self.lines[a.first];
        let last = self.lines[a.last];
        let prefix = self.text[first.start..a.value_start].trim_end_matches(py_space);
        let first_has_value = !self.text[a.value_start..first.content_end]
            .trim_matches(py_space)
            .is_empty();
        let mut out = String::new();
        if a.first == a.last || items.len() <= 1 && first_has_value {
            out.push_str(&self.text[first.start..a.value_start]);
            out.push_str(&first_line_value(&items.join(",")));
        } else {
            let indent = {
                let next = self.lines[a.first + 1];
                let line = &self.text[next.start..next.content_end];
                let width = line.len() - line.trim_start_matches([' ', '\t']).len();
                line[..width].to_string()
            };
            let mut rest = items;
            if first_has_value && !items.is_empty() {
                out.push_str(&self.text[first.start..a.value_start]);
                let head = if items.len() > 1 {
                    format!("{},", items[0])
                } else {
                    items[0].clone()
                };
                out.push_str(&first_line_value(&head));
                rest = &items[1..];
            } else {
                out.push_str(prefix);
            }
            for (i, item) in rest.iter().enumerate() {
                out.push_str(eol);
                out.push_str(&indent);
                out.push_str(item);
                if i + 1 < rest.len() {
                    out.push(',');
                }
            }
        }
        out.push_str(&self.text[last.content_end..last.end]);
        let text = format!(
            "{}{}{}",
            &self.text[..first.start],
            out,
            &self.text[last.end..]
        );
        Rewritten {
            text,
            line: a.line(),
        }
    }

    fn insert(&self, key: &str, items: &[String], eol: &str) -> Rewritten {
        let new_line = format!("{key}={}", first_line_value(&items.join(",")));
        let last_default_header = self
            .sections
            .iter()
            .rev()
            .find(|(_, name)| name == DEFAULT_SECTION)
            .map(|(i, _)| *i);
        let Some(header) = last_default_header else {
            let mut text = self.text.clone();
            if !text.is_empty() && !text.ends_with(['\n', '\r']) {
                text.push_str(eol);
            }
            let line = split_lines(&text).len() + 2;
            text.push_str(&format!("[{DEFAULT_SECTION}]{eol}{new_line}{eol}"));
            return Rewritten { text, line };
        };
        // After the last line of the section's last assignment (or the header).
        let after = self
            .assignments
            .iter()
            .filter(|a| a.section == DEFAULT_SECTION && a.first > header)
            .filter(|a| {
                // Still inside this section: no header between it and the
                // header we found.
                !self
                    .sections
                    .iter()
                    .any(|(i, _)| *i > header && *i < a.first)
            })
            .map(|a| a.last)
            .max()
            .unwrap_or(header);
        let line = self.lines[after];
        let mut insertion = String::new();
        if line.end == line.content_end {
            insertion.push_str(eol);
        }
        insertion.push_str(&new_line);
        insertion.push_str(eol);
        let text = format!(
            "{}{}{}",
            &self.text[..line.end],
            insertion,
            &self.text[line.end..]
        );
        Rewritten {
            text,
            line: after + 2,
        }
    }
}

/// A first-line value written so that oslo.config reads it back as is:
/// one that starts and ends with the same quote would lose those quotes, so
/// it gets one more pair.
fn first_line_value(value: &str) -> String {
    if value.len() > 1 && unquote(value) != value {
        let quote = &value[..1];
        format!("{quote}{value}{quote}")
    } else {
        value.to_string()
    }
}

/// The class name of a plugin or service path (`a.b.SetHostNamePlugin` →
/// `SetHostNamePlugin`): Cloudbase-Init maps its old module paths to the
/// new ones, so the class name is what identifies a plugin.
pub fn class_name(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str, key: &str) -> Option<Vec<String>> {
        parse(text).expect("parses").default_list(key)
    }

    #[test]
    fn reads_lists_as_oslo_config_does() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            ("[DEFAULT]\r\nplugins=a.B,c.D\r\n", Some(&["a.B", "c.D"])),
            ("[DEFAULT]\nplugins = a.B,\n  c.D\n", Some(&["a.B", "c.D"])),
            ("[DEFAULT]\nplugins=a.B\n\tc.D\n", Some(&["a.B\nc.D"])),
            ("[DEFAULT]\nPlugins=a.B\n", None),
            ("[DEFAULT]\nplugins=\n", Some(&[])),
            (
                "[DEFAULT]\nplugins=\"a.B\",\"c.D\"\n",
                Some(&["a.B\"", "\"c.D"]),
            ),
            ("[DEFAULT]\nplugins='a.B'\n", Some(&["a.B"])),
            ("[default]\nplugins=a.B\n", None),
            (
                "[DEFAULT]\nplugins=a\n[x]\n[DEFAULT]\nplugins=b\n",
                Some(&["b"]),
            ),
            ("[DEFAULT]\nplugins: a=b\n", Some(&["a=b"])),
            ("[DEFAULT]\rplugins=a\r", Some(&["a"])),
        ];
        for (text, want) in cases {
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(list(text, "plugins"), want, "{text:?}");
        }
    }

    #[test]
    fn refuses_what_oslo_config_refuses() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "[DEFAULT]\nplugins=a,\n# c\n  b\n",
                4,
                "Unexpected continuation line",
            ),
            (
                "[DEFAULT]\nplugins=a,\n\n  b\n",
                4,
                "Unexpected continuation line",
            ),
            (
                "plugins=a\n[DEFAULT]\n",
                2,
                "Section must be started before assignment",
            ),
            (
                "\u{feff}[DEFAULT]\n",
                1,
                "No ':' or '=' found in assignment",
            ),
            ("[DEFAULT\n", 1, "Invalid section (must end with ])"),
            ("[]\n", 1, "Empty section name"),
            ("[DEFAULT]\n = x\n", 2, "Unexpected continuation line"),
            ("[DEFAULT]\n= x\n", 2, "Key cannot be empty"),
        ];
        for (text, line, message) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!((e.line, e.message.as_str()), (*line, *message), "{text:?}");
        }
    }

    #[test]
    fn rewrites_in_place_and_keeps_other_bytes() {
        let items = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let conf =
            parse("# c\r\n[DEFAULT]\r\nusername=Admin\r\nplugins=a.A,b.B,c.C\r\n[x]\r\ny=1\r\n")
                .unwrap();
        let r = conf
            .set_default_list("plugins", &items(&["a.A", "c.C"]))
            .unwrap();
        assert_eq!(
            r.text,
            "# c\r\n[DEFAULT]\r\nusername=Admin\r\nplugins=a.A,c.C\r\n[x]\r\ny=1\r\n"
        );
        assert_eq!(r.line, 4);

        let conf = parse("[DEFAULT]\nplugins =\n    a.A,\n    b.B,\n    c.C\nx=1").unwrap();
        let r = conf
            .set_default_list("plugins", &items(&["a.A", "c.C"]))
            .unwrap();
        assert_eq!(r.text, "[DEFAULT]\nplugins =\n    a.A,\n    c.C\nx=1");

        let conf = parse("[DEFAULT]\r\nusername=Admin\r\n\r\n[x]\r\ny=1").unwrap();
        let r = conf.set_default_list("plugins", &items(&["a.A"])).unwrap();
        assert_eq!(
            r.text,
            "[DEFAULT]\r\nusername=Admin\r\nplugins=a.A\r\n\r\n[x]\r\ny=1"
        );
        assert_eq!(r.line, 3);

        let conf = parse("[x]\ny=1").unwrap();
        let r = conf.set_default_list("plugins", &items(&["a.A"])).unwrap();
        assert_eq!(r.text, "[x]\ny=1\n[DEFAULT]\nplugins=a.A\n");
        assert_eq!(r.line, 4);

        let conf = parse("[DEFAULT]\nplugins=x\n").unwrap();
        let r = conf
            .set_default_list("plugins", &items(&["\"a", "b\""]))
            .unwrap();
        assert_eq!(
            parse(&r.text).unwrap().default_list("plugins"),
            Some(items(&["\"a", "b\""]))
        );
    }

    #[test]
    fn class_names() {
        assert_eq!(
            class_name("cloudbaseinit.plugins.windows.sethostname.SetHostNamePlugin"),
            "SetHostNamePlugin"
        );
        assert_eq!(class_name("X"), "X");
    }
}
