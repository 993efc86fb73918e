//! Findings for people (text) and for pipelines (one JSON document).

use std::io::Write;

use anyhow::Result;
use serde_json::json;

use super::{Finding, Severity, summarize};

/// Version of the doctor's JSON document (README, "doctor").
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// What the findings are about, as the user named it.
#[derive(Debug, Clone)]
pub struct Subject {
    /// TARGET as given: a directory or an image file.
    pub root: String,
    /// For an image file: its description (format, partition), else `None`.
    pub image: Option<serde_json::Value>,
}

/// Text: one block per finding, errors first, then warnings, then (with
/// `verbose`) the checks that passed; a summary line last.
///
/// ```text
/// error[cloud-init-disabled-file]: cloud-init is disabled by a file
///   evidence: etc/cloud/cloud-init.disabled
///   effect: ...
///   fix: ...
/// ```
pub fn text(
    out: &mut dyn Write,
    subject: &Subject,
    findings: &[Finding],
    verbose: bool,
) -> Result<()> {
    let mut ordered: Vec<&Finding> = findings
        .iter()
        .filter(|f| verbose || f.severity != Severity::Ok)
        .collect();
    // Stable: within a severity, the order the checks ran in.
    ordered.sort_by_key(|f| f.severity);
    for f in ordered {
        let headline = if f.detail.is_empty() {
            f.title.clone()
        } else {
            format!("{}: {}", f.title, f.detail)
        };
        writeln!(out, "{}[{}]: {headline}", f.severity.name(), f.id)?;
        if let Some(evidence) = &f.evidence {
            writeln!(out, "  evidence: {evidence}")?;
        }
        if f.severity != Severity::Ok {
            writeln!(out, "  effect: {}", f.effect)?;
            writeln!(out, "  fix: {}", f.fix)?;
        }
    }
    let s = summarize(findings);
    writeln!(
        out,
        "doctor: {} error(s), {} warning(s), {} check(s) passed in {}",
        s.errors, s.warnings, s.ok, subject.root
    )?;
    Ok(())
}

/// JSON: `{"version", "root", "image", "findings": [...], "summary": {...}}`,
/// every finding included (ok ones too).
pub fn json(out: &mut dyn Write, subject: &Subject, findings: &[Finding]) -> Result<()> {
    let s = summarize(findings);
    let doc = json!({
        "version": JSON_SCHEMA_VERSION,
        "root": subject.root,
        "image": subject.image,
        "findings": findings.iter().map(|f| json!({
            "id": f.id,
            "severity": f.severity.name(),
            "title": f.title,
            "detail": f.detail,
            "evidence": f.evidence.as_ref().map(|e| json!({
                "path": e.path.display().to_string(),
                "line": e.line,
            })),
            "effect": f.effect,
            "fix": f.fix,
        })).collect::<Vec<_>>(),
        "summary": {"errors": s.errors, "warnings": s.warnings, "ok": s.ok},
    });
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{Evidence, Texts};

    fn sample() -> Vec<Finding> {
        let texts = Texts::parse(
            "a-ok:\n  severity: ok\n  title: A is fine\n\
             b-bad:\n  severity: error\n  title: B is broken\n  effect: boom\n  fix: mend b\n\
             c-meh:\n  severity: warning\n  title: C is odd\n  effect: odd\n  fix: tweak c\n",
        )
        .unwrap();
        vec![
            texts.finding("a-ok", "", None, None),
            texts.finding("c-meh", "", Some(Evidence::file("etc/c")), None),
            texts.finding("b-bad", "version 2", Some(Evidence::line("etc/b", 7)), None),
        ]
    }

    fn subject() -> Subject {
        Subject {
            root: "/mnt/img".into(),
            image: None,
        }
    }

    #[test]
    fn text_lists_errors_first_and_hides_ok_unless_verbose() {
        let mut out = Vec::new();
        text(&mut out, &subject(), &sample(), false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "error[b-bad]: B is broken: version 2\n  evidence: etc/b:7\n  effect: boom\n  fix: mend b\n\
             warning[c-meh]: C is odd\n  evidence: etc/c\n  effect: odd\n  fix: tweak c\n\
             doctor: 1 error(s), 1 warning(s), 1 check(s) passed in /mnt/img\n"
        );
        let mut out = Vec::new();
        text(&mut out, &subject(), &sample(), true).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("ok[a-ok]: A is fine\n"), "{out}");
        assert!(out.find("warning[c-meh]") < out.find("ok[a-ok]"));
    }

    #[test]
    fn json_is_one_document_with_every_finding_and_a_summary() {
        let mut out = Vec::new();
        json(&mut out, &subject(), &sample()).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["root"], "/mnt/img");
        assert_eq!(doc["findings"].as_array().unwrap().len(), 3);
        assert_eq!(doc["findings"][2]["evidence"]["line"], 7);
        assert_eq!(doc["findings"][0]["evidence"], serde_json::Value::Null);
        assert_eq!(doc["summary"], json!({"errors": 1, "warnings": 1, "ok": 1}));
    }
}
