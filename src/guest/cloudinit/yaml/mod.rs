//! YAML exactly as cloud-init reads it: a port of PyYAML 6.0's pure-Python
//! `SafeLoader` (`reader.py`, `scanner.py`, `parser.py`, the anchor rules of
//! `composer.py`, and the scalar rules of `resolver.py` and
//! `constructor.py`).
//!
//! cloud-init 22.4 loads every configuration file with `yaml.load(text,
//! Loader=SafeLoader)` and ignores the whole file when that raises. A file is
//! therefore valid exactly when PyYAML says so, and it means exactly what
//! PyYAML builds: a YAML 1.2 parser accepts tabs and characters PyYAML
//! refuses, and refuses some flow collections PyYAML accepts. The algorithm
//! here follows PyYAML's step by step (same states, same checks, same order)
//! so that both agree on every input; the differential test
//! (`tests/pyyaml_differential.rs`) holds us to it.
//!
//! Positions: PyYAML counts characters; we also keep byte offsets, which the
//! editor needs. Lines and columns are 0-based in [`Mark`] (as in PyYAML) and
//! 1-based in [`YamlError`] (as cloud-init logs them).

mod parser;
mod reader;
pub mod resolve;
mod scanner;
mod validate;

use std::fmt;

pub use ErrorKind as YamlErrorKind;
pub use parser::{Event, EventKind, Parser, ScalarStyle};
pub use validate::check;

/// A position in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Character index, as PyYAML counts.
    pub index: usize,
    /// Byte offset in the text.
    pub byte: usize,
    /// 0-based line; `\r\n`, `\r`, `\n`, NEL, LS and PS end a line.
    pub line: usize,
    /// 0-based column in characters (a BOM takes no column).
    pub column: usize,
}

/// What an error means for cloud-init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// PyYAML raises an error cloud-init catches (`YAMLError`, `ValueError`,
    /// `TypeError`): cloud-init logs "Failed loading yaml blob" and reads
    /// the file as empty.
    Refused,
    /// PyYAML raises an exception cloud-init does not catch (`KeyError`,
    /// `IndexError`): cloud-init itself fails on this file.
    Crashes,
    /// PyYAML reads it, but into something prepare-image cannot hold (a
    /// recursive structure, a lone surrogate).
    Unsupported,
    /// Beyond what we read (nesting, merge work): PyYAML may read it, or
    /// run out of stack or time on it.
    Bound,
}

/// Said by refusals from our bounds, as the document loader says it.
pub const BEYOND_A_BOUND: &str = "beyond what prepare-image reads";

/// Ends refusals that are not PyYAML's own words (a top level that is not a
/// mapping: `load_yaml`'s TypeError), so that a reader can tell them apart.
pub const IGNORED_NOTE: &str = " (cloud-init would ignore this file)";

/// Why PyYAML refuses a text. `line` and `column` are 1-based and point at
/// PyYAML's problem mark; `message` is PyYAML's own text (with the context
/// mark, where it has one, in parentheses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub kind: ErrorKind,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl YamlError {
    fn reader(message: String, line: usize, column: usize) -> YamlError {
        YamlError {
            kind: ErrorKind::Refused,
            line: line + 1,
            column: column + 1,
            message,
        }
    }

    /// A `MarkedYAMLError`: `context` (with its mark) and `problem` (with
    /// its mark), joined as PyYAML prints them, positioned at the problem.
    pub fn marked(
        context: Option<(&str, Option<Mark>)>,
        problem: impl Into<String>,
        problem_mark: Mark,
    ) -> YamlError {
        let problem = problem.into();
        let message = match context {
            Some((context, Some(mark))) if mark != problem_mark => format!(
                "{context} (line {} column {}): {problem}",
                mark.line + 1,
                mark.column + 1
            ),
            Some((context, _)) => format!("{context}: {problem}"),
            None => problem,
        };
        YamlError {
            kind: ErrorKind::Refused,
            line: problem_mark.line + 1,
            column: problem_mark.column + 1,
            message,
        }
    }
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {} column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for YamlError {}

/// Python's `repr()` of a one-character string, as PyYAML's messages show
/// characters (`'\t'`, `'\x85'`, `"'"`).
pub(crate) fn py_repr(c: char) -> String {
    match c {
        '\'' => "\"'\"".to_string(),
        '\\' => "'\\\\'".to_string(),
        '\t' => "'\\t'".to_string(),
        '\n' => "'\\n'".to_string(),
        '\r' => "'\\r'".to_string(),
        c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
            format!("'\\x{:02x}'", c as u32)
        }
        c if matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
            || (c as u32 >= 0xd800 && (c as u32) < 0xe000) =>
        {
            format!("'\\u{:04x}'", c as u32)
        }
        c => format!("'{c}'"),
    }
}
