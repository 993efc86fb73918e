//! `prepare-image clean`: remove what the build machine's boot left.

use std::io::Write;

use anyhow::Result;
use serde_json::json;

use super::{CleanArgs, Format, Outcome, describe, finish};
use crate::access::root::EntryKind;
use crate::access::target::Target;
use crate::guest::cloudinit::clean::{self, Options, Report};

pub(super) fn run(
    args: &CleanArgs,
    format: Format,
    out: &mut dyn Write,
    _err: &mut dyn Write,
) -> Result<Outcome> {
    // Found like doctor's root: by etc/os-release, so that an image's
    // leftovers can be cleaned whatever its cloud.cfg.
    let target = Target::open_with_root_marker(
        &args.target,
        !args.dry_run,
        args.partition,
        super::doctor::OS_RELEASE,
    )?;
    let result = (|| {
        let options = Options {
            machine_id: args.machine_id,
            ssh_host_keys: args.ssh_host_keys,
            network: args.network,
            dry_run: args.dry_run,
        };
        let report = clean::clean(target.root(), options)?;
        let root = describe(&target).path.display().to_string();
        match format {
            Format::Json => print_json(out, &root, &report, args.dry_run)?,
            Format::Text => print_text(out, &root, &report, args.dry_run)?,
        }
        Ok(Outcome::Success)
    })();
    finish(target, result)
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

fn print_json(out: &mut dyn Write, root: &str, report: &Report, dry_run: bool) -> Result<()> {
    let doc = json!({
        "version": crate::report::JSON_SCHEMA_VERSION,
        "root": root,
        "mode": if dry_run { "dry-run" } else { "apply" },
        "removed": report.removed.iter().map(|e| json!({
            "path": e.path.display().to_string(),
            "kind": kind_name(e.kind),
            "size": e.size,
        })).collect::<Vec<_>>(),
        "emptied": report.emptied.iter().map(|(p, size)| json!({"path": p.display().to_string(), "size": size})).collect::<Vec<_>>(),
        "kept": report.kept.iter().map(|(p, why)| json!({"path": p.display().to_string(), "reason": why})).collect::<Vec<_>>(),
    });
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}
