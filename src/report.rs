//! Reporting: the diff, the summary, warnings, status and the JSON document.
//!
//! Text mode keeps stdout for the diff alone, so `--dry-run > review.patch`
//! is a patch; everything for people (root, changes, warnings, summary) goes
//! to stderr. JSON mode writes one document to stdout; warnings still go to
//! stderr as well, where a person watching a pipeline sees them.

use std::io::Write;
use std::path::{Path, PathBuf};

use anstyle::{AnsiColor, Style as AnsiStyle};
use anyhow::Result;
use serde_json::json;
use similar::TextDiff;

use crate::access::image::open::ImageInfo;
use crate::cli::Format;
use crate::guest::cloudbase::profile::WindowsProfile;
use crate::guest::cloudinit::effective::SettingState;
use crate::guest::cloudinit::plan::{FilePlan, Plan};
use crate::guest::cloudinit::profile::{Condition, Profile, Warning};

/// Appended to a file's name for `--backup`. It does not end in `.cfg`, so
/// cloud-init never reads a backup inside cloud.cfg.d.
pub const BACKUP_SUFFIX: &str = ".prepare-image.bak";

/// Version of the JSON document's schema (see README, "JSON report").
pub const JSON_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    DryRun,
    Check,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Apply => "apply",
            Mode::DryRun => "dry-run",
            Mode::Check => "check",
        }
    }
}

/// A standard stream whose write errors say which stream failed ("cannot
/// write to stdout: No space left on device"), so that a full or closed
/// stdout is not mistaken for a failure to write the image's files. The
/// error keeps its kind (a closed pipe is still recognised).
pub struct NamedStream<W> {
    name: &'static str,
    inner: W,
}

impl<W: Write> NamedStream<W> {
    pub fn new(name: &'static str, inner: W) -> NamedStream<W> {
        NamedStream { name, inner }
    }

    fn label(&self, e: std::io::Error) -> std::io::Error {
        std::io::Error::new(
            e.kind(),
            StreamError {
                stream: self.name,
                message: e.to_string(),
            },
        )
    }
}

impl<W: Write> Write for NamedStream<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf).map_err(|e| self.label(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().map_err(|e| self.label(e))
    }
}

/// The error of a [`NamedStream`]; it carries the OS error's text itself
/// (and no `source`), so a printed chain names the error once.
#[derive(Debug)]
struct StreamError {
    stream: &'static str,
    message: String,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write to {}: {}", self.stream, self.message)
    }
}

impl std::error::Error for StreamError {}

/// Whether each stream gets color.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    pub color_stdout: bool,
    pub color_stderr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub file: PathBuf,
    pub backup: PathBuf,
    /// An older backup was already there and was left alone.
    pub existed: bool,
}

/// What a run worked on, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetDescription {
    /// The directory or image file given as TARGET.
    pub path: PathBuf,
    /// For an image file: its format, table, partition and filesystem.
    pub image: Option<ImageInfo>,
}

impl TargetDescription {
    /// "root DIR" or "image FILE (qcow2, gpt (512-byte sectors), partition 2, ext4)".
    fn headline(&self) -> String {
        match &self.image {
            None => format!("root {}", self.path.display()),
            Some(i) => format!(
                "image {} ({}, table {}, partition {}, {})",
                self.path.display(),
                i.format.name(),
                i.table,
                i.partition,
                i.filesystem
            ),
        }
    }

    pub(crate) fn image_json(&self) -> serde_json::Value {
        match &self.image {
            None => serde_json::Value::Null,
            Some(i) => json!({
                "path": i.path.display().to_string(),
                "format": i.format.name(),
                "table": i.table,
                "partition": i.partition,
                "filesystem": i.filesystem,
            }),
        }
    }
}

/// A unified diff of one file, with a/ and b/ paths relative to the root,
/// for `patch -p1 -d ROOT`.
pub fn unified_diff(path: &Path, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .missing_newline_hint(true)
        .header(&header_name("a/", path), &header_name("b/", path))
        .to_string()
}

/// A file name for a `---`/`+++` line as GNU patch reads it back: a name
/// with a control character, `"` or `\` is C-quoted (`"a/x\"y"`, octal for
/// other bytes), as GNU diff and git write it; a name with a space ends in a
/// tab, which tells patch that the space belongs to the name (without it,
/// patch stops at the space).
fn header_name(prefix: &str, path: &Path) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    bytes.extend_from_slice(path.as_os_str().as_encoded_bytes());
    let needs_quotes = bytes
        .iter()
        .any(|&b| b < 0x20 || b == 0x7f || b == b'"' || b == b'\\')
        || std::str::from_utf8(&bytes).is_err();
    if needs_quotes {
        let mut quoted = String::from("\"");
        for &b in &bytes {
            match b {
                b'"' => quoted.push_str("\\\""),
                b'\\' => quoted.push_str("\\\\"),
                b'\t' => quoted.push_str("\\t"),
                b'\n' => quoted.push_str("\\n"),
                0x20..=0x7e => quoted.push(char::from(b)),
                _ => quoted.push_str(&format!("\\{b:03o}")),
            }
        }
        quoted.push('"');
        return quoted;
    }
    let name = String::from_utf8_lossy(&bytes).into_owned();
    if name.contains(' ') {
        name + "\t"
    } else {
        name
    }
}

fn paint(text: &str, style: AnsiStyle, on: bool) -> String {
    if on {
        format!("{style}{text}{style:#}")
    } else {
        text.to_string()
    }
}

fn color_diff(diff: &str, on: bool) -> String {
    if !on {
        return diff.to_string();
    }
    diff.split_inclusive('\n')
        .map(|line| {
            let style = if line.starts_with("+++") || line.starts_with("---") {
                AnsiStyle::new().bold()
            } else if line.starts_with('+') {
                AnsiColor::Green.on_default()
            } else if line.starts_with('-') {
                AnsiColor::Red.on_default()
            } else if line.starts_with("@@") {
                AnsiColor::Cyan.on_default()
            } else {
                AnsiStyle::new()
            };
            let (body, eol) = match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            };
            format!("{}{eol}", paint(body, style, true))
        })
        .collect()
}

fn location(file: &Option<PathBuf>, line: Option<usize>) -> Option<String> {
    let file = file.as_ref()?;
    Some(match line {
        Some(l) => format!("{}:{l}", file.display()),
        None => file.display().to_string(),
    })
}

fn state_word(kept: bool) -> &'static str {
    if kept { "kept" } else { "overwritten" }
}

fn setting_json(state: &SettingState) -> serde_json::Value {
    json!({
        "state": state_word(state.kept),
        "reasons": state.reasons.iter().map(|r| json!({
            "file": r.file.as_ref().map(|f| f.display().to_string()),
            "line": r.line,
            "text": r.text,
            "overwrites": r.overwrites,
        })).collect::<Vec<_>>(),
    })
}

/// What a keep reports, whichever guest planned it (cloud-init's [`Plan`],
/// Cloudbase-Init's `WindowsPlan`).
#[derive(Debug, Clone, Copy)]
pub struct KeepView<'a> {
    pub files: &'a [FilePlan],
    pub warnings: &'a [Warning],
    pub before: &'a [SettingState],
    pub after: &'a [SettingState],
}

impl KeepView<'_> {
    fn pending(&self) -> bool {
        self.files.iter().any(FilePlan::changed)
    }
}

impl<'a> From<&'a Plan> for KeepView<'a> {
    fn from(plan: &'a Plan) -> KeepView<'a> {
        KeepView {
            files: &plan.files,
            warnings: &plan.warnings,
            before: &plan.before,
            after: &plan.after,
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn keep(
    out: &mut dyn Write,
    err: &mut dyn Write,
    target: &TargetDescription,
    plan: &Plan,
    selected: &[&Profile],
    mode: Mode,
    backups: &[Backup],
    format: Format,
    style: Style,
) -> Result<()> {
    let names: Vec<&str> = selected.iter().map(|p| p.name.as_str()).collect();
    keep_view(
        out,
        err,
        target,
        plan.into(),
        &names,
        mode,
        backups,
        format,
        style,
    )
}

/// [`keep`] for any guest's plan; `names` are the kept profiles.
#[allow(clippy::too_many_arguments)]
pub fn keep_view(
    out: &mut dyn Write,
    err: &mut dyn Write,
    target: &TargetDescription,
    plan: KeepView<'_>,
    names: &[&str],
    mode: Mode,
    backups: &[Backup],
    format: Format,
    style: Style,
) -> Result<()> {
    let changed: Vec<&FilePlan> = plan.files.iter().filter(|f| f.changed()).collect();
    let change_count: usize = changed.iter().map(|f| f.changes.len()).sum();
    let root_display = target.path.display();
    let print_warnings = |err: &mut dyn Write| -> Result<()> {
        for w in plan.warnings {
            writeln!(
                err,
                "{} {} [{}]",
                paint(
                    "warning:",
                    AnsiColor::Yellow.on_default().bold(),
                    style.color_stderr
                ),
                w.text,
                w.id
            )?;
        }
        Ok(())
    };
    let result = match (mode, plan.pending()) {
        (_, false) => "unchanged",
        (Mode::Apply, true) => "changed",
        (Mode::DryRun, true) => "would-change",
        (Mode::Check, true) => "pending",
    };
    if format == Format::Json {
        let doc = json!({
            "version": JSON_SCHEMA_VERSION,
            "root": target.path.display().to_string(),
            "image": target.image_json(),
            "mode": mode.name(),
            "keep": names,
            "result": result,
            "files": plan.files.iter().map(|f| json!({
                "path": f.path.display().to_string(),
                "changed": f.changed(),
                "diff": unified_diff(&f.path, &f.old_text, &f.new_text),
                "backup": backups.iter().find(|b| b.file == f.path).map(|b| b.backup.display().to_string()),
                // Added within schema 1: whether this run made `backup` (false: an older backup was
                // already there and left alone); null without a backup.
                "backup_created": backups.iter().find(|b| b.file == f.path).map(|b| !b.existed),
            })).collect::<Vec<_>>(),
            "changes": plan.files.iter().flat_map(|f| sorted_changes(f).into_iter().map(move |c| json!({
                "profile": c.profiles.first(),
                "profiles": c.profiles,
                "file": f.path.display().to_string(),
                "line": c.line,
                "what": c.what,
            }))).collect::<Vec<_>>(),
            "warnings": plan.warnings.iter().map(|w| json!({"id": w.id, "text": w.text})).collect::<Vec<_>>(),
            "settings": plan.before.iter().zip(plan.after).map(|(b, a)| json!({
                "setting": a.setting,
                "before": setting_json(b),
                "after": setting_json(a),
            })).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
        print_warnings(err)?;
        return Ok(());
    }
    // If the reader of the diff goes away (`| head`), the files may already
    // be written: the person on stderr is still told what happened.
    for file in &changed {
        let diff = color_diff(
            &unified_diff(&file.path, &file.old_text, &file.new_text),
            style.color_stdout,
        );
        match write!(out, "{diff}").and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            other => other?,
        }
    }
    writeln!(err, "prepare-image: {}", target.headline())?;
    for file in &changed {
        for c in sorted_changes(file) {
            writeln!(
                err,
                "  {}:{}: [{}] {}",
                file.path.display(),
                c.line,
                c.profiles.join(","),
                c.what
            )?;
        }
    }
    for b in backups {
        if b.existed {
            writeln!(
                err,
                "  {} already exists: left alone (it holds an older original)",
                b.backup.display()
            )?;
        } else {
            writeln!(err, "  backup: {}", b.backup.display())?;
        }
    }
    print_warnings(err)?;
    let files: Vec<String> = changed
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    let kept = names.join(", ");
    let summary = match (mode, plan.pending()) {
        (_, false) => format!("{kept}: already kept in {root_display}; nothing to do"),
        (Mode::Apply, true) => format!(
            "kept {kept} in {root_display}: {change_count} change(s) in {}",
            files.join(", ")
        ),
        (Mode::DryRun, true) => {
            format!(
                "dry run: {change_count} change(s) to {} in {root_display} would keep {kept}; nothing written",
                files.join(", ")
            )
        }
        (Mode::Check, true) => {
            let not_kept: Vec<&str> = plan
                .before
                .iter()
                .filter(|s| !s.kept)
                .map(|s| s.setting.as_str())
                .collect();
            if not_kept.is_empty() {
                format!(
                    "check: {kept}: already kept in {root_display}; {change_count} optional change(s) \
                     in {} would only tidy up (not needed to keep them)",
                    files.join(", ")
                )
            } else {
                format!(
                    "check: {change_count} change(s) pending in {} in {root_display} (overwritten at \
                     first boot: {})",
                    files.join(", "),
                    not_kept.join(", ")
                )
            }
        }
    };
    writeln!(err, "{summary}")?;
    Ok(())
}

/// `ignored`: (root-relative file, why cloud-init reads it as empty).
pub fn status(
    out: &mut dyn Write,
    target: &TargetDescription,
    states: &[SettingState],
    ignored: &[(PathBuf, String)],
    format: Format,
) -> Result<()> {
    if format == Format::Json {
        let doc = json!({
            "version": JSON_SCHEMA_VERSION,
            "root": target.path.display().to_string(),
            "image": target.image_json(),
            "settings": states.iter().map(|s| {
                let mut v = setting_json(s);
                v["setting"] = json!(s.setting);
                v
            }).collect::<Vec<_>>(),
            "ignored_files": ignored.iter().map(|(file, why)| json!({
                "file": file.display().to_string(),
                "reason": why,
            })).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{}", target.headline().replacen(' ', ": ", 1))?;
    for (file, why) in ignored {
        writeln!(out, "{}: {why}", file.display())?;
    }
    let width = states.iter().map(|s| s.setting.len()).max().unwrap_or(0);
    for s in states {
        let decisive: Vec<String> = s
            .reasons
            .iter()
            // A kept setting shows everything that keeps it; an overwritten
            // one only what overwrites it.
            .filter(|r| s.kept || r.overwrites)
            .map(|r| match location(&r.file, r.line) {
                Some(loc) => format!("{} ({loc})", r.text),
                None => r.text.clone(),
            })
            .collect();
        writeln!(
            out,
            "{:width$}  {:11}  {}",
            s.setting,
            state_word(s.kept),
            decisive.join("; ")
        )?;
    }
    Ok(())
}

/// The guest a profile is for, as `profiles` names it (JSON `guest`, and
/// a `guest:` line in text).
const LINUX_GUEST: (&str, &str) = ("linux", "Linux (cloud-init)");
const WINDOWS_GUEST: (&str, &str) = ("windows", "Windows (Cloudbase-Init)");

/// `prepare-image profiles`: the Linux profiles (built-in and from
/// --profile-file), then the Windows ones, each saying which guest it is for.
pub fn profiles(
    out: &mut dyn Write,
    catalogue: &[Profile],
    windows: &[WindowsProfile],
    format: Format,
) -> Result<()> {
    let warning_json =
        |w: &Warning| json!({"id": w.id, "text": w.text, "when": condition_text(&w.condition)});
    if format == Format::Json {
        let linux = catalogue.iter().map(|p| {
            json!({
                "name": p.name,
                "summary": p.summary,
                "source": p.source,
                "guest": LINUX_GUEST.0,
                "edits": p.edits.iter().map(|e| json!({
                    "edit": e.edit.to_string(),
                    "warnings": e.warnings.iter().map(warning_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "warnings": p.warnings.iter().map(warning_json).collect::<Vec<_>>(),
            })
        });
        let windows = windows.iter().map(|p| json!({
            "name": p.name,
            "summary": p.summary,
            "source": p.source,
            "guest": WINDOWS_GUEST.0,
            "edits": windows_edits(p).iter().map(|e| json!({"edit": e, "warnings": []})).collect::<Vec<_>>(),
            "warnings": p.warnings.iter().map(warning_json).collect::<Vec<_>>(),
            "not_applicable": p.not_applicable,
            "in_all": !p.by_name_only,
        }));
        let doc = json!({
            "version": JSON_SCHEMA_VERSION,
            "profiles": linux.chain(windows).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut first = true;
    let mut headline =
        |out: &mut dyn Write, name: &str, summary: &str, source: &str, guest: &str| -> Result<()> {
            if !first {
                writeln!(out)?;
            }
            first = false;
            let source = if source == "built-in" {
                String::new()
            } else {
                format!(" (from {source})")
            };
            writeln!(out, "{name}: {summary}{source}")?;
            writeln!(out, "  guest: {guest}")?;
            Ok(())
        };
    for p in catalogue {
        headline(out, &p.name, &p.summary, &p.source, LINUX_GUEST.1)?;
        for e in &p.edits {
            writeln!(out, "  edit: {}", e.edit)?;
            for w in &e.warnings {
                writeln!(
                    out,
                    "    breaks: {}{}",
                    w.text,
                    condition_suffix(&w.condition)
                )?;
            }
        }
        for w in &p.warnings {
            writeln!(out, "  note: {}{}", w.text, condition_suffix(&w.condition))?;
        }
    }
    for p in windows {
        headline(out, &p.name, &p.summary, &p.source, WINDOWS_GUEST.1)?;
        if let Some(why) = &p.not_applicable {
            writeln!(out, "  not applicable: {why}")?;
        }
        for e in windows_edits(p) {
            writeln!(out, "  edit: {e}")?;
        }
        for w in &p.warnings {
            writeln!(out, "  note: {}", w.text)?;
        }
        if p.by_name_only {
            writeln!(
                out,
                "  note: only when named: --keep all does not include it"
            )?;
        }
    }
    Ok(())
}

/// What a Windows profile edits, one line per plugin it drops.
fn windows_edits(p: &WindowsProfile) -> Vec<String> {
    p.drop
        .iter()
        .map(|class| {
            format!(
                "drop {class} from plugins= (cloudbase-init.conf, and cloudbase-init-unattend.conf where present)"
            )
        })
        .collect()
}

/// A file's changes in line order (the plan lists them in profile order).
fn sorted_changes(
    file: &crate::guest::cloudinit::plan::FilePlan,
) -> Vec<&crate::guest::cloudinit::plan::PlannedChange> {
    let mut changes: Vec<_> = file.changes.iter().collect();
    changes.sort_by_key(|c| c.line);
    changes
}

fn condition_text(condition: &Condition) -> Option<String> {
    match condition {
        Condition::Always => None,
        Condition::ModuleListed(m) => Some(format!("while {m} is in a module list")),
        Condition::UnlessKeeping(names) => {
            Some(format!("unless also keeping {}", names.join(", ")))
        }
        Condition::All(conditions) => Some(
            conditions
                .iter()
                .filter_map(condition_text)
                .collect::<Vec<_>>()
                .join(", and "),
        ),
    }
}

fn condition_suffix(condition: &Condition) -> String {
    condition_text(condition)
        .map(|c| format!(" ({c})"))
        .unwrap_or_default()
}
