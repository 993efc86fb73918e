//! `prepare-image doctor`: open the target read-only (read-write when
//! `--fix` has something to write), run the Linux checks, print the findings.

use std::io::Write;

use anyhow::{Result, anyhow};

use super::{AfterWrite, DoctorArgs, Format, Outcome, describe, finish};
use crate::access::image::open::RootMarker;
use crate::access::image::windows::{self, NtfsWriteMount, WindowsImage};
use crate::access::target::Target;
use crate::doctor::render::{self, Subject};
use crate::doctor::{Finding, summarize};
use crate::guest::cloudbase::diagnose as windows_doctor;
use crate::guest::cloudbase::fix as windows_fix;
use crate::guest::cloudinit::doctor;
use crate::report::TargetDescription;

/// What marks an image's root partition for doctor and clean: found by
/// etc/os-release, not cloud.cfg, since an image without cloud-init is
/// exactly what doctor must diagnose.
pub(super) const OS_RELEASE_ROOT: RootMarker = RootMarker {
    path: "etc/os-release",
    missing_hint: "is this a Linux image?",
};

pub(super) fn run(
    args: &DoctorArgs,
    format: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome> {
    // Found by etc/os-release, not cloud.cfg: an image without cloud-init is
    // exactly what doctor must diagnose.
    // An image is mounted read-write only when --fix has something to write:
    // a read-write mount alone changes the image file.
    let is_image = super::is_image(&args.root.target);
    if is_image
        && let Some(win) = windows::probe(
            &args.root.target,
            args.root.partition,
            args.root.allow_backing,
            false,
        )?
    {
        return run_windows(win, args, format, out, err);
    }
    let first = Target::open(
        &args.root.target,
        args.fix && !is_image,
        args.root.partition,
        args.root.allow_backing,
        OS_RELEASE_ROOT,
    )?;
    let target = if args.fix && is_image {
        match doctor::fix_shebangs(first.root(), true) {
            Err(e) => return finish(first, Err(e)),
            Ok(fixes) if fixes.is_empty() => first,
            Ok(_) => {
                let partition = first.image().map(|i| i.partition);
                first.close()?;
                Target::open(
                    &args.root.target,
                    true,
                    partition,
                    args.root.allow_backing,
                    OS_RELEASE_ROOT,
                )?
            }
        }
    } else {
        first
    };
    let result = (|| {
        let root = target.root();
        if args.fix {
            for fix in doctor::fix_shebangs(root, false)? {
                writeln!(
                    err,
                    "fixed {}:1: {} -> {}",
                    fix.path.display(),
                    fix.old,
                    fix.new
                )?;
            }
        }
        let findings = doctor::diagnose(root, target.image())?;
        report(&describe(&target), &findings, args, format, out)
    })();
    finish(target, result)
}

/// Prints the findings; exit 4 (`Outcome::Findings`) when one is an error.
fn report(
    description: &TargetDescription,
    findings: &[Finding],
    args: &DoctorArgs,
    format: Format,
    out: &mut dyn Write,
) -> Result<Outcome> {
    let subject = Subject {
        root: description.path.display().to_string(),
        image: description
            .image
            .is_some()
            .then(|| description.image_json()),
    };
    match format {
        Format::Json => render::json(out, &subject, findings)?,
        Format::Text => render::text(out, &subject, findings, args.verbose)?,
    }
    Ok(if summarize(findings).errors > 0 {
        Outcome::Findings
    } else {
        Outcome::Success
    })
}

/// Doctor on a Windows image: read in user space, nothing mounted.
fn run_windows(
    mut win: WindowsImage,
    args: &DoctorArgs,
    format: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Outcome> {
    let result = (|| -> Result<Outcome> {
        let texts = windows_doctor::texts();
        let diagnosis = windows_doctor::diagnose(&mut win, &texts)?;
        let mut findings = diagnosis.findings;
        if args.fix && !diagnosis.registry.fixes.is_empty() {
            let edits = windows_fix::plan(&diagnosis.registry.fixes, |hive| {
                windows_doctor::read_hive(&mut win, hive.path())
            })?;
            win.reopen_writable()?;
            let mount = NtfsWriteMount::open(&win)?;
            let mut written = false;
            let applied = windows_fix::apply(&mount, &edits, &mut written);
            let closed = mount.close();
            // Once a hive byte is written, any later failure is exit 5: the
            // image changed.
            let after_write = |e: anyhow::Error| {
                anyhow!(AfterWrite(format!(
                    "{e:#}; the registry WAS written: {}",
                    edits
                        .iter()
                        .map(|e| e.hive.path())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            };
            match applied {
                Err(e) if written => return Err(after_write(e)),
                applied => applied?,
            }
            closed.map_err(after_write)?;
            let fixed = (|| -> Result<Vec<Finding>> {
                for edit in &edits {
                    for fix in &edit.fixes {
                        writeln!(
                            err,
                            "fixed {}: {}\\{} {} -> {}",
                            edit.hive.path(),
                            fix.key,
                            fix.value,
                            fix.from,
                            fix.to
                        )?;
                    }
                }
                // The findings of the image as it now is, read again.
                Ok(windows_doctor::diagnose(&mut win, &texts)?.findings)
            })();
            findings = fixed.map_err(after_write)?;
        }
        let description = TargetDescription {
            path: win.info.path.clone(),
            image: Some(win.info.clone()),
        };
        report(&description, &findings, args, format, out)
    })();
    let closed = win.close();
    let outcome = result?;
    closed?;
    Ok(outcome)
}
