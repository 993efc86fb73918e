//! Findings: what a doctor tells the builder before capture, shared by every
//! guest's checks (cloud-init on Linux today, Cloudbase-Init later).
//!
//! A finding is an id, a severity, the evidence (a path inside the root, and
//! a line where one applies), what happens at first boot and the fix. The
//! words for each id (title, effect, fix, severity) are data, one YAML file
//! per guest (`findings/linux.yaml`), so that wording is reviewed apart from
//! code and every id has exactly one text. This module knows no check.

pub mod render;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

use crate::guest::cloudinit::document::{self, Value};

/// Declares the finding ids a guest's checks may raise: one list, from which
/// the enum, its strings and `ALL` are made, so the test that every id has a
/// text (and every text an id) cannot miss one.
macro_rules! finding_ids {
    ($($name:ident = $id:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Id { $($name,)* }
        impl Id {
            pub const ALL: &[Id] = &[$(Id::$name,)*];
            pub fn as_str(self) -> &'static str {
                match self { $(Id::$name => $id,)* }
            }
        }
    };
}
pub(crate) use finding_ids;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// First boot (or the cloud's import) will fail.
    Error,
    /// It works, but not as a builder would want.
    Warning,
    /// A check that passed; shown with `--verbose` and in JSON.
    Ok,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Ok => "ok",
        }
    }

    fn parse(text: &str) -> Option<Severity> {
        match text {
            "error" => Some(Severity::Error),
            "warning" => Some(Severity::Warning),
            "ok" => Some(Severity::Ok),
            _ => None,
        }
    }
}

/// Where the finding comes from: a root-relative path (symlinks resolved
/// inside the root) and, where it applies, the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub path: PathBuf,
    pub line: Option<usize>,
}

impl Evidence {
    pub fn file(path: impl Into<PathBuf>) -> Evidence {
        Evidence {
            path: path.into(),
            line: None,
        }
    }

    pub fn line(path: impl Into<PathBuf>, line: usize) -> Evidence {
        Evidence {
            path: path.into(),
            line: Some(line),
        }
    }
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// The fixed words for one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    pub severity: Severity,
    pub title: String,
    /// What happens at first boot; empty for `ok`.
    pub effect: String,
    /// A command, or `prepare-image doctor --fix` / `prepare-image clean`;
    /// empty for `ok`.
    pub fix: String,
}

/// Every id's text, read from a findings file.
#[derive(Debug, Clone)]
pub struct Texts {
    by_id: BTreeMap<String, Text>,
}

impl Texts {
    /// Parses a findings file: a mapping from id to `{severity, title,
    /// effect, fix}`. `effect` and `fix` are required unless the severity is
    /// `ok`.
    pub fn parse(yaml: &str) -> Result<Texts> {
        let doc = document::parse(yaml).map_err(|e| anyhow!("{e}"))?;
        let Some(Value::Map(entries)) = doc.root.as_ref().map(|r| r.to_value()) else {
            bail!("a findings file is a mapping from id to its text");
        };
        let mut by_id = BTreeMap::new();
        for (key, value) in entries.iter() {
            let Some(id) = key.as_str() else {
                bail!("finding id {key} is not a string");
            };
            if !is_kebab_case(id) {
                bail!("finding id `{id}` is not kebab-case (lowercase letters, digits, `-`)");
            }
            let field = |name: &str| -> Result<String> {
                match value.get(name) {
                    Some(Value::Str(s)) => Ok(s.split_whitespace().collect::<Vec<_>>().join(" ")),
                    None => Ok(String::new()),
                    Some(other) => bail!("`{id}.{name}` must be a string, not {other}"),
                }
            };
            let Value::Map(fields) = &value else {
                bail!("`{id}` must map to severity, title, effect and fix");
            };
            for (name, _) in fields.iter() {
                if !matches!(name.as_str(), Some("severity" | "title" | "effect" | "fix")) {
                    bail!("`{id}`: unknown key {name} (allowed: severity, title, effect, fix)");
                }
            }
            let severity = Severity::parse(&field("severity")?)
                .ok_or_else(|| anyhow!("`{id}.severity` must be error, warning or ok"))?;
            let text = Text {
                severity,
                title: field("title")?,
                effect: field("effect")?,
                fix: field("fix")?,
            };
            if text.title.is_empty() {
                bail!("`{id}` needs a title");
            }
            if severity != Severity::Ok && (text.effect.is_empty() || text.fix.is_empty()) {
                bail!(
                    "`{id}` is an {} and needs an effect and a fix",
                    severity.name()
                );
            }
            by_id.insert(id.to_string(), text);
        }
        Ok(Texts { by_id })
    }

    pub fn get(&self, id: &str) -> Option<&Text> {
        self.by_id.get(id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }

    /// A finding with this id's words. `detail` says what exactly was found
    /// (may be empty); `fix` replaces the generic fix when the check knows
    /// the exact command (the package to reinstall for this distribution).
    ///
    /// An id without text is a defect of the build, caught by each guest's
    /// test that its ids and its findings file agree; here it still yields
    /// a finding rather than a panic.
    pub fn finding(
        &self,
        id: &str,
        detail: impl Into<String>,
        evidence: Option<Evidence>,
        fix: Option<String>,
    ) -> Finding {
        let text = self.get(id).cloned().unwrap_or_else(|| Text {
            severity: Severity::Error,
            title: format!("(no text for finding `{id}`)"),
            effect: String::new(),
            fix: String::new(),
        });
        Finding {
            id: id.to_string(),
            severity: text.severity,
            title: text.title,
            detail: detail.into(),
            evidence,
            effect: text.effect,
            fix: fix.unwrap_or(text.fix),
        }
    }
}

fn is_kebab_case(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.contains("--")
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Stable, kebab-case; scripts may match on it.
    pub id: String,
    pub severity: Severity,
    pub title: String,
    /// What exactly was found here (a name, a version); may be empty.
    pub detail: String,
    pub evidence: Option<Evidence>,
    pub effect: String,
    pub fix: String,
}

/// Counts per severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub errors: usize,
    pub warnings: usize,
    pub ok: usize,
}

pub fn summarize(findings: &[Finding]) -> Summary {
    let mut summary = Summary::default();
    for f in findings {
        match f.severity {
            Severity::Error => summary.errors += 1,
            Severity::Warning => summary.warnings += 1,
            Severity::Ok => summary.ok += 1,
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
broken-thing:
  severity: error
  title: The thing is broken
  effect: >
    Nothing works
    at first boot.
  fix: prepare-image doctor --fix
thing-fine:
  severity: ok
  title: The thing works
";

    #[test]
    fn texts_are_read_with_folded_whitespace() {
        let texts = Texts::parse(SAMPLE).unwrap();
        let t = texts.get("broken-thing").unwrap();
        assert_eq!(t.severity, Severity::Error);
        assert_eq!(t.effect, "Nothing works at first boot.");
        assert_eq!(
            texts.ids().collect::<Vec<_>>(),
            ["broken-thing", "thing-fine"]
        );
    }

    #[test]
    fn a_finding_takes_its_words_from_the_texts_and_may_override_the_fix() {
        let texts = Texts::parse(SAMPLE).unwrap();
        let f = texts.finding(
            "broken-thing",
            "in etc/x",
            Some(Evidence::line("etc/x", 3)),
            Some("rm etc/x".into()),
        );
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(f.fix, "rm etc/x");
        assert_eq!(f.evidence.unwrap().to_string(), "etc/x:3");
    }

    #[test]
    fn malformed_texts_are_refused() {
        for (bad, why) in [
            ("Bad_Id:\n  severity: ok\n  title: t\n", "kebab"),
            ("x:\n  severity: fatal\n  title: t\n", "severity"),
            ("x:\n  severity: error\n  title: t\n", "effect"),
            ("x:\n  severity: ok\n", "title"),
            (
                "x:\n  severity: ok\n  title: t\n  colour: red\n",
                "unknown key",
            ),
            ("- a\n", "mapping"),
        ] {
            let e = Texts::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn an_id_without_text_is_an_error_finding_not_a_panic() {
        let texts = Texts::parse(SAMPLE).unwrap();
        let f = texts.finding("unknown-id", "", None, None);
        assert_eq!(f.severity, Severity::Error);
        assert!(f.title.contains("unknown-id"));
    }

    #[test]
    fn summary_counts_each_severity() {
        let texts = Texts::parse(SAMPLE).unwrap();
        let all = [
            texts.finding("broken-thing", "", None, None),
            texts.finding("thing-fine", "", None, None),
            texts.finding("thing-fine", "", None, None),
        ];
        assert_eq!(
            summarize(&all),
            Summary {
                errors: 1,
                warnings: 0,
                ok: 2
            }
        );
    }
}
