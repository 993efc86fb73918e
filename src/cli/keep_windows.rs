//! `prepare-image --keep PROFILES WINDOWS-IMAGE`: the keep planned over the
//! live Cloudbase-Init install's conf files (read in user space), shown as a
//! Linux keep is shown, and written through an ntfs-3g mount only when
//! something changes.

use std::io::Write;

use anyhow::{Result, anyhow, bail};

use super::{AfterWrite, Cli, Outcome, UsageError, is_broken_pipe, write};
use crate::access::image::interrupt;
use crate::access::image::windows::{NtfsWriteMount, WindowsImage};
use crate::access::root::Root;
use crate::guest::cloudbase::diagnose;
use crate::guest::cloudbase::plan::{self, WindowsPlan};
use crate::guest::cloudbase::profile;
use crate::guest::cloudinit::plan::FilePlan;
use crate::guest::cloudinit::profile::select;
use crate::report::{self, Mode, Style, TargetDescription};

/// Runs the keep on `win`, releasing it on every path.
pub(super) fn run(
    mut win: WindowsImage,
    cli: &Cli,
    mode: Mode,
    out: &mut dyn Write,
    err: &mut dyn Write,
    style: Style,
) -> Result<Outcome> {
    let result = (|| {
        let args = &cli.keep;
        if args.clean.is_some() {
            return Err(anyhow!(UsageError(
                "--clean removes cloud-init state from a Linux image; a Windows image has none"
                    .to_string()
            )));
        }
        refuse_profile_files(cli)?;
        let catalogue = profile::built_in();
        let selected = select(&catalogue, args.keep.as_deref().unwrap_or_default())
            .map_err(|e| anyhow!(UsageError(e.to_string())))?;
        let files = diagnose::keep_files(&mut win)?;
        let plan = plan::plan(&files, &selected)?;
        interrupt::check()?;
        let written = mode == Mode::Apply && plan.pending();
        let backups = if written {
            write_through_ntfs3g(&mut win, &plan, args.backup, args.break_hard_links)?
        } else {
            Vec::new()
        };
        let _ = interrupt::pause_point("written");
        let names: Vec<&str> = selected.iter().map(|p| p.name.as_str()).collect();
        let reported = report::keep_view(
            out,
            err,
            &describe(&win),
            plan.view(),
            &names,
            mode,
            &backups,
            cli.output.format,
            style,
        );
        match reported {
            Err(e) if written && !is_broken_pipe(&e) => {
                return Err(anyhow!(AfterWrite(format!(
                    "{e:#}; the files WERE written: {}",
                    changed_paths(&plan.files)
                ))));
            }
            reported => reported?,
        }
        let overwritten = plan.before.iter().any(|s| !s.kept);
        Ok(if mode == Mode::Check && overwritten {
            Outcome::Pending
        } else {
            Outcome::Success
        })
    })();
    let closed = win.close();
    let outcome = result?;
    closed?;
    Ok(outcome)
}

/// `--profile-file` profiles are cloud-init's: a usage error on a Windows image.
fn refuse_profile_files(cli: &Cli) -> Result<()> {
    if cli.output.profile_file.is_empty() {
        return Ok(());
    }
    Err(anyhow!(UsageError(
        "--profile-file profiles edit cloud-init's files on a Linux image; a Windows \
         image keeps with the built-in Windows profiles (prepare-image profiles lists \
         both)"
            .to_string()
    )))
}

/// `prepare-image status WINDOWS-IMAGE`: per Windows profile, whether
/// Cloudbase-Init keeps its setting at first boot or overwrites it, as the
/// keep's planner reads the live install's conf files; the same text and
/// JSON as a Linux image's status. Releases `win` on every path.
pub(super) fn status(mut win: WindowsImage, cli: &Cli, out: &mut dyn Write) -> Result<Outcome> {
    let result = (|| -> Result<Outcome> {
        refuse_profile_files(cli)?;
        let catalogue = profile::built_in();
        let every: Vec<_> = catalogue.iter().collect();
        let files = diagnose::keep_files(&mut win)?;
        let states = plan::states(&files, &every)?;
        report::status(out, &describe(&win), &states, &[], cli.output.format)?;
        Ok(Outcome::Success)
    })();
    let closed = win.close();
    let outcome = result?;
    closed?;
    Ok(outcome)
}

fn describe(win: &WindowsImage) -> TargetDescription {
    TargetDescription {
        path: win.info.path.clone(),
        image: Some(win.info.clone()),
    }
}

/// Mounts the volume read-write (the caller's plan already refused one
/// Windows left unfinished), writes the changed files, unmounts, and reads
/// each file back in user space. Once a file may have been written, every
/// failure is an `AfterWrite` (exit 5).
///
/// Each file is replaced the way a Linux keep replaces one: a temp file
/// beside it, renamed over it. Through ntfs-3g the new file is a new MFT
/// record: its security descriptor is ntfs-3g's default (readable by
/// everyone, so by the LocalSystem service) instead of the inherited one,
/// and its times are new; named streams come along as ntfs-3g's `user.*`
/// extended attributes, which the write copies. For a conf file that is
/// what matters: the bytes, whole or not at all. (The registry hives are
/// patched in place instead: see guest/cloudbase/fix.rs.)
fn write_through_ntfs3g(
    win: &mut WindowsImage,
    plan: &WindowsPlan,
    backup: bool,
    break_hard_links: bool,
) -> Result<Vec<report::Backup>> {
    win.reopen_writable()?;
    let planned_on: Vec<_> = plan.files.iter().map(|f| (&f.path, &f.old_text)).collect();
    let now = diagnose::keep_files(win)?;
    let now: Vec<_> = now.iter().map(|f| (&f.path, &f.text)).collect();
    if now != planned_on {
        bail!(
            "{}: the Cloudbase-Init conf files changed while prepare-image looked at them: nothing written; run it again",
            win.display()
        );
    }
    let mount = NtfsWriteMount::open(win)?;
    let written = Root::open(mount.path())
        .and_then(|root| write(&root, &plan.files, backup, break_hard_links));
    let closed = mount.close();
    let backups = written?;
    let after_write = |what: String| {
        anyhow!(AfterWrite(format!(
            "{what}; the files WERE written: {}",
            changed_paths(&plan.files)
        )))
    };
    closed.map_err(|e| after_write(format!("{e:#}")))?;
    for file in plan.files.iter().filter(|f| f.changed()) {
        let path = file.path.to_string_lossy();
        let text = diagnose::read_text(win, &path).map_err(|e| after_write(format!("{e:#}")))?;
        if text != file.new_text {
            return Err(after_write(format!(
                "{}: {path} does not read back as written",
                win.display()
            )));
        }
    }
    Ok(backups)
}

fn changed_paths(files: &[FilePlan]) -> String {
    files
        .iter()
        .filter(|f| f.changed())
        .map(|f| f.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
