//! `prepare-image clean`: remove what the build machine's boot left.

use std::io::Write;

use anyhow::{Result, anyhow};
use serde_json::json;

use super::{CleanArgs, Format, Outcome, UsageError, describe, finish};
use crate::access::root::{EntryKind, Root};
use crate::access::target::Target;
pub(super) use crate::guest::cloudinit::clean::Options;
use crate::guest::cloudinit::clean::{self, Report};
use crate::guest::cloudinit::plan::Plan;

pub(super) fn run(
    args: &CleanArgs,
    format: Format,
    out: &mut dyn Write,
    _err: &mut dyn Write,
) -> Result<Outcome> {
    let options = Options {
        machine_id: args.machine_id,
        ssh_host_keys: args.ssh_host_keys,
        network: args.network,
        dry_run: args.dry_run,
    };
    // Found like doctor's root: by etc/os-release, so that an image's
    // leftovers can be cleaned whatever its cloud.cfg. An image is mounted
    // read-write only when there is something to remove (a read-write mount
    // alone changes the image file); a refusal comes from the read-only look.
    let is_image = super::is_image(&args.root.target);
    let open = |writable: bool, partition: Option<u32>| {
        Target::open(
            &args.root.target,
            writable,
            partition,
            args.root.allow_backing,
            super::doctor::OS_RELEASE_ROOT,
        )
    };
    let first = open(!args.dry_run && !is_image, args.root.partition)?;
    let target = if is_image && !args.dry_run {
        let look = Options {
            dry_run: true,
            ..options
        };
        match clean::clean(first.root(), look, None) {
            Err(e) => return finish(first, Err(e)),
            Ok(planned) if planned.is_empty() => first,
            Ok(_) => {
                let partition = first.image().map(|i| i.partition);
                first.close()?;
                open(true, partition)?
            }
        }
    } else {
        first
    };
    let result = (|| {
        let report = clean::clean(target.root(), options, None)?;
        let root = describe(&target).path.display().to_string();
        match format {
            Format::Json => print_json(out, &root, &report, args.dry_run)?,
            Format::Text => print_text(out, &root, &report, args.dry_run)?,
        }
        Ok(Outcome::Success)
    })();
    finish(target, result)
}

/// `--clean[=EXTRAS]` of a keep run: the extras, a comma list of
/// machine-id, ssh-host-keys, network; empty for state and logs only.
pub(super) fn options_from(extras: &str, dry_run: bool) -> Result<Options> {
    let mut options = Options {
        dry_run,
        ..Options::default()
    };
    for extra in extras.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match extra {
            "machine-id" => options.machine_id = true,
            "ssh-host-keys" => options.ssh_host_keys = true,
            "network" => options.network = true,
            other => {
                return Err(anyhow!(UsageError(format!(
                    "unknown --clean extra `{other}` (valid: machine-id, ssh-host-keys, network)"
                ))));
            }
        }
    }
    Ok(options)
}

/// The clean of a keep run, judged on the configuration as the keep leaves it.
/// `dry_run` overrides the options' own: a keep run first looks, then cleans.
pub(super) fn after_keep(
    root: &Root,
    plan: &Plan,
    options: Options,
    dry_run: bool,
) -> Result<Report> {
    clean::clean(
        root,
        Options { dry_run, ..options },
        Some(&plan.config_after),
    )
}

/// Reports the clean of a keep run: in text on stderr (stdout carries only
/// the diff); in JSON as a `clean` member of the keep's one document, given
/// here as `keep_json`.
pub(super) fn report_after_keep(
    out: &mut dyn Write,
    err: &mut dyn Write,
    format: Format,
    root: &str,
    report: &Report,
    dry_run: bool,
    keep_json: &[u8],
) -> Result<()> {
    match format {
        Format::Text => print_text(err, root, report, dry_run),
        Format::Json => {
            let mut doc: serde_json::Value = serde_json::from_slice(keep_json)?;
            doc["clean"] = json_of(report, dry_run);
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
            Ok(())
        }
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Directory => "directory",
        EntryKind::Symlink => "symlink",
        EntryKind::Other => "special",
    }
}

fn print_text(out: &mut dyn Write, root: &str, report: &Report, dry_run: bool) -> Result<()> {
    let (remove, empty) = if dry_run {
        ("would remove", "would empty")
    } else {
        ("removed", "emptied")
    };
    for e in &report.removed {
        let size = match e.kind {
            EntryKind::Directory => String::new(),
            _ => format!(" ({} bytes)", e.size),
        };
        writeln!(
            out,
            "{remove} {} {}{size}",
            kind_name(e.kind),
            e.path.display()
        )?;
    }
    for (path, size) in &report.emptied {
        writeln!(out, "{empty} {} ({size} bytes)", path.display())?;
    }
    for (path, why) in &report.kept {
        writeln!(out, "kept {}: {why}", path.display())?;
    }
    let bytes: u64 = report
        .removed
        .iter()
        .filter(|e| e.kind != EntryKind::Directory)
        .map(|e| e.size)
        .sum();
    let count = report.removed.len() + report.emptied.len();
    if dry_run {
        writeln!(
            out,
            "clean: dry run: {count} path(s), {bytes} bytes in {root}; nothing removed"
        )?;
    } else {
        writeln!(out, "clean: {count} path(s), {bytes} bytes in {root}")?;
    }
    Ok(())
}

fn json_of(report: &Report, dry_run: bool) -> serde_json::Value {
    json!({
        "mode": if dry_run { "dry-run" } else { "apply" },
        "removed": report.removed.iter().map(|e| json!({
            "path": e.path.display().to_string(),
            "kind": kind_name(e.kind),
            "size": e.size,
        })).collect::<Vec<_>>(),
        "emptied": report.emptied.iter().map(|(p, size)| json!({"path": p.display().to_string(), "size": size})).collect::<Vec<_>>(),
        "kept": report.kept.iter().map(|(p, why)| json!({"path": p.display().to_string(), "reason": why})).collect::<Vec<_>>(),
    })
}

fn print_json(out: &mut dyn Write, root: &str, report: &Report, dry_run: bool) -> Result<()> {
    let mut doc = json!({
        "version": crate::report::JSON_SCHEMA_VERSION,
        "root": root,
    });
    if let (Some(doc), serde_json::Value::Object(fields)) =
        (doc.as_object_mut(), json_of(report, dry_run))
    {
        doc.extend(fields);
    }
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}
