//! Command-line interface: the flags, and the run that ties profiles, the
//! effective configuration, the plan, the root and the report together.

mod clean;
mod doctor;
mod keep_windows;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};

use crate::access::commit;
use crate::access::image::interrupt;
use crate::access::image::open::RootMarker;
use crate::access::lock::{self, LockMode, RootLock};
use crate::access::root::Root;
use crate::access::target::Target;
use crate::guest::cloudinit::effective::{self, CLOUD_CFG, setting_state};
use crate::guest::cloudinit::plan::{self, Plan};
use crate::guest::cloudinit::profile::{self, Profile};
use crate::report::{self, Mode, Style, TargetDescription};

/// What marks an image's root partition for a keep and `status`: the
/// partition holding cloud-init's base configuration.
const CLOUD_CFG_ROOT: RootMarker = RootMarker {
    path: CLOUD_CFG,
    missing_hint: "is cloud-init installed in this image?",
};

/// Keep chosen settings of a cloud image through cloud-init's first boot.
///
/// On every new instance, cloud-init overwrites the hostname, /etc/hosts, DNS,
/// package repositories, NTP servers, passwords, SSH keys and network
/// configuration with the cloud's metadata. prepare-image edits
/// /etc/cloud/cloud.cfg (and its cloud.cfg.d drop-ins) in an image root so that
/// the settings you name are kept, prints the diff, and warns about side effects.

#[derive(Debug, Parser)]
#[command(
    name = "prepare-image",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Exit codes: 0 done or nothing to do (--dry-run: planned), 1 error, nothing written (also for --dry-run and --check), 2 usage error, 3 a setting is overwritten (--check), 4 doctor found errors, 5 the files were written but the report failed, 128+N stopped by signal N."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub keep: KeepArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct KeepArgs {
    /// Settings to keep: a comma list of hostname, hosts, dns, repos, ntp,
    /// passwords, keys, network (or names from --profile-file), or `all`.
    #[arg(long, value_name = "LIST", required = true)]
    pub keep: Option<String>,

    /// Show the diff (a patch for `patch -p1 -d TARGET`) and change nothing.
    #[arg(short = 'n', long, conflicts_with = "check")]
    pub dry_run: bool,

    /// Change nothing; print the pending diff; exit 3 if a setting is
    /// overwritten at first boot, 0 if every setting is already kept.
    #[arg(long)]
    pub check: bool,

    /// Keep each original as NAME.prepare-image.bak (a name cloud-init never reads).
    #[arg(long, conflicts_with_all = ["dry_run", "check"])]
    pub backup: bool,

    /// Replace a file that has other hard links. The new file gets a new
    /// inode, so the other names keep the old contents; without this flag
    /// such a file is refused.
    #[arg(long, conflicts_with_all = ["dry_run", "check"])]
    pub break_hard_links: bool,

    #[command(flatten)]
    pub root: RootArgs,

    /// In the same run (one attach and mount), also clean what the build
    /// machine's boot left, as `prepare-image clean`: cloud-init's state and
    /// logs; `--clean=machine-id,ssh-host-keys,network` adds those.
    #[arg(long, value_name = "EXTRAS", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub clean: Option<String>,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format: text for people, json for pipelines (one document on stdout).
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    pub format: Format,

    /// When to color the diff: auto colors only on a terminal and honours NO_COLOR.
    #[arg(long, value_enum, default_value_t = ColorWhen::Auto, global = true)]
    pub color: ColorWhen,

    /// A user-defined profile in the format of the built-ins (see profiles/linux/); repeatable.
    #[arg(long, value_name = "FILE", global = true)]
    pub profile_file: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show, per setting, whether cloud-init keeps it or overwrites it at first
    /// boot, and which file and line decide.
    Status {
        #[command(flatten)]
        root: RootArgs,
    },
    /// Find, offline, everything that will break cloud-init at first boot
    /// (or the cloud's import): exit 4 when an error is found.
    Doctor(DoctorArgs),
    /// Remove what the build machine's boot left: cloud-init's state and
    /// logs; with flags, the machine id, SSH host keys, rendered network files.
    Clean(CleanArgs),
    /// List the profiles: what each edits and what it breaks.
    Profiles,
    /// Print a shell completion script (e.g. `prepare-image completions bash >
    /// /etc/bash_completion.d/prepare-image`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `prepare-image man | man -l -`.
    Man,
}

/// Where every subcommand works: the same flags, one definition.
#[derive(Debug, Args)]
pub struct RootArgs {
    /// The image's root: a directory (a mounted image, a chroot, / for the
    /// live system) or an image file (raw, qcow2, vmdk, vhd, vhdx).
    #[arg(value_name = "TARGET", default_value = "/")]
    pub target: PathBuf,

    /// For an image file: the partition holding the root filesystem (default:
    /// the one partition that holds etc/cloud/cloud.cfg; for doctor and
    /// clean, etc/os-release).
    #[arg(long, value_name = "N")]
    pub partition: Option<u32>,

    /// For a qcow2 or vmdk overlay: also read its backing files (regular
    /// files only, never written). Without it, an image that names any file
    /// outside itself is refused.
    #[arg(long)]
    pub allow_backing: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// Also list the checks that passed.
    #[arg(short, long)]
    pub verbose: bool,

    /// Repair what doctor can (the shebangs of cloud-init's commands), then check again.
    #[arg(long)]
    pub fix: bool,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// List every path and its size; remove nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Empty /etc/machine-id and remove a copied /var/lib/dbus/machine-id.
    #[arg(long)]
    pub machine_id: bool,

    /// Remove the SSH host keys (refused unless something regenerates them at first boot).
    #[arg(long)]
    pub ssh_host_keys: bool,

    /// Remove the network files cloud-init rendered for the build machine.
    #[arg(long)]
    pub network: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

/// How a run ended; `main` turns it into the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done, or nothing to do.
    Success,
    /// `--check` found changes pending.
    Pending,
    /// `doctor` found an error.
    Findings,
}

/// Usage errors are found below the command line too (`--partition` on a
/// directory), so the type lives in `crate::error`; re-exported for main.
pub use crate::error::UsageError;

/// A failure after the files were written (exit 5): the message names the
/// files, so nobody takes it for "nothing was written".
#[derive(Debug)]
pub struct AfterWrite(pub String);

impl std::fmt::Display for AfterWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AfterWrite {}

/// Runs the command. Text for people goes to `err` (stderr), the diff and
/// machine-readable output to `out` (stdout).
pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write, style: Style) -> Result<Outcome> {
    // Before anything is acquired: a Ctrl-C must reach a point where the
    // guards can release what was set up, not kill us in the middle.
    interrupt::install()?;
    let catalogue = profile::catalogue(&cli.output.profile_file)?;
    match &cli.command {
        Some(Command::Completions { shell }) => {
            // Rendered into a buffer first: clap_complete panics when its
            // writer fails, and a closed pipe is not a reason to panic.
            let mut buffer = Vec::new();
            // --keep is parsed as free text (names from --profile-file are
            // only known at run time), but completion offers the profile
            // names known now: the built-ins, `all`, and any --profile-file.
            let names: Vec<String> = catalogue
                .iter()
                .map(|p| p.name.clone())
                .chain([profile::ALL.to_string()])
                .collect();
            let mut command = Cli::command().mut_arg("keep", |arg| {
                arg.value_parser(clap::builder::PossibleValuesParser::new(names))
            });
            clap_complete::generate(*shell, &mut command, "prepare-image", &mut buffer);
            out.write_all(&buffer)?;
            Ok(Outcome::Success)
        }
        Some(Command::Man) => {
            out.write_all(&man_page()?)?;
            Ok(Outcome::Success)
        }
        Some(Command::Profiles) => {
            let windows = crate::guest::cloudbase::profile::built_in();
            report::profiles(out, &catalogue, &windows, cli.output.format)?;
            Ok(Outcome::Success)
        }
        Some(Command::Status { root }) => {
            // A Windows image: Cloudbase-Init's view, as --keep plans it.
            if is_image(&root.target)
                && let Some(win) = crate::access::image::windows::probe(
                    &root.target,
                    root.partition,
                    root.allow_backing,
                    false,
                )?
            {
                return keep_windows::status(win, cli, out);
            }
            let target = Target::open(
                &root.target,
                false,
                root.partition,
                root.allow_backing,
                CLOUD_CFG_ROOT,
            )?;
            let result = (|| {
                let set = effective::load(target.root())?;
                let states: Vec<_> = catalogue.iter().map(|p| setting_state(&set, p)).collect();
                let ignored: Vec<_> = set
                    .files
                    .iter()
                    .filter_map(|f| f.ignored.as_ref().map(|i| (f.path.clone(), i.to_string())))
                    .collect();
                report::status(
                    out,
                    &describe(&target),
                    &states,
                    &ignored,
                    cli.output.format,
                )?;
                Ok(Outcome::Success)
            })();
            finish(target, result)
        }
        Some(Command::Doctor(args)) => doctor::run(args, cli.output.format, out, err),
        Some(Command::Clean(args)) => clean::run(args, cli.output.format, out, err),
        None => keep(cli, &catalogue, out, err, style),
    }
}

/// The man page. clap_mangen's own subcommand section refers to a page per
/// subcommand (`prepare-image-status(1)`), which does not exist: the
/// subcommands are listed here, in this page, instead.
fn man_page() -> Result<Vec<u8>> {
    let command = Cli::command();
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.extend_from_slice(b".SH COMMANDS\n");
    for sub in command.get_subcommands() {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        let name = format!("prepare-image {}", sub.get_name());
        page.extend_from_slice(
            format!(".TP\n\\fB{}\\fR\n{}\n", roff_text(&name), roff_text(&about)).as_bytes(),
        );
    }
    man.render_extra_section(&mut page)?;
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// Text for a roff line: backslashes and hyphens escaped, and a leading `.`
/// or `'` kept from being read as a request.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Releases the target whatever happened; the run's own error wins over a
/// release error, which is reported when the run itself succeeded.
pub(crate) fn finish(target: Target, result: Result<Outcome>) -> Result<Outcome> {
    let closed = target.close();
    let outcome = result?;
    closed?;
    Ok(outcome)
}

pub(crate) fn describe(target: &Target) -> TargetDescription {
    TargetDescription {
        path: target.display_path(),
        image: target.image().cloned(),
    }
}

fn keep(
    cli: &Cli,
    catalogue: &[Profile],
    out: &mut dyn Write,
    err: &mut dyn Write,
    style: Style,
) -> Result<Outcome> {
    let args = &cli.keep;
    let list = args.keep.as_deref().unwrap_or_default();
    let mode = if args.check {
        Mode::Check
    } else if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    // Usage first: a list neither Linux nor Windows profiles resolve is
    // refused before any image is opened.
    let linux = profile::select(catalogue, list);
    if let Err(e) = &linux
        && profile::select(&crate::guest::cloudbase::profile::built_in(), list).is_err()
    {
        return Err(anyhow!(UsageError(e.to_string())));
    }
    let is_image = is_image(&args.root.target);
    // A Windows image (found as doctor finds it) keeps through Cloudbase-Init's conf files.
    if is_image
        && let Some(win) = crate::access::image::windows::probe(
            &args.root.target,
            args.root.partition,
            args.root.allow_backing,
            false,
        )?
    {
        return keep_windows::run(win, cli, mode, out, err, style);
    }
    let selected = linux.map_err(|e| anyhow!(UsageError(e.to_string())))?;
    let cleaning = match &args.clean {
        Some(extras) => Some(clean::options_from(extras, mode != Mode::Apply)?),
        None => None,
    };
    // An image is mounted read-write only when there is something to write:
    // even a read-write mount that writes nothing changes the image file (the
    // superblock's mount count, the journal). So an image is always planned
    // on a read-only mount first; bad input and "nothing to do" never touch it.
    let first = Target::open(
        &args.root.target,
        mode == Mode::Apply && !is_image,
        args.root.partition,
        args.root.allow_backing,
        CLOUD_CFG_ROOT,
    )?;
    let lock_mode = if mode == Mode::Apply {
        LockMode::Exclusive
    } else {
        LockMode::Shared
    };
    let planned = plan_on(&first, &selected, lock_mode).and_then(|(lock, plan)| {
        let writes = plan.pending() || clean_pending(&first, &plan, cleaning)?;
        Ok((lock, plan, writes))
    });
    let (target, lock, plan) = match planned {
        Err(e) => return finish(first, Err(e)),
        Ok((lock, _, true)) if mode == Mode::Apply && is_image => {
            // The same partition again, now writable; plan again on what is
            // really there (nothing may have changed, but we do not assume).
            drop(lock);
            let partition = first.image().map(|i| i.partition).or(args.root.partition);
            first.close()?;
            let target = Target::open(
                &args.root.target,
                true,
                partition,
                args.root.allow_backing,
                CLOUD_CFG_ROOT,
            )?;
            match plan_on(&target, &selected, lock_mode) {
                Ok((lock, plan)) => (target, lock, plan),
                Err(e) => return finish(target, Err(e)),
            }
        }
        Ok((lock, plan, _)) => (first, lock, plan),
    };
    let result = (|| {
        interrupt::check()?;
        // A clean that will be refused is refused before the keep writes anything.
        let mut cleaned = match cleaning {
            Some(options) => Some(clean::after_keep(target.root(), &plan, options, true)?),
            None => None,
        };
        let written = mode == Mode::Apply && plan.pending();
        let backups = if written {
            write(
                target.root(),
                &plan.files,
                args.backup,
                args.break_hard_links,
            )?
        } else {
            Vec::new()
        };
        if let Some(options) = cleaning.filter(|_| mode == Mode::Apply) {
            cleaned = Some(clean::after_keep(target.root(), &plan, options, false)?);
        }
        drop(lock);
        // From here on the files are written; a signal only shortens cleanup.
        let _ = interrupt::pause_point("written");
        let mut keep_json = Vec::new();
        let keep_out: &mut dyn Write = if cleaned.is_some() && cli.output.format == Format::Json {
            &mut keep_json
        } else {
            out
        };
        let reported = report::keep(
            keep_out,
            err,
            &describe(&target),
            &plan,
            &selected,
            mode,
            &backups,
            cli.output.format,
            style,
        )
        .and_then(|()| match &cleaned {
            Some(report) => {
                let root = describe(&target).path.display().to_string();
                clean::report_after_keep(
                    out,
                    err,
                    cli.output.format,
                    &root,
                    report,
                    mode != Mode::Apply,
                    &keep_json,
                )
            }
            None => Ok(()),
        });
        let clean_pending = cleaned.as_ref().is_some_and(|r| !r.is_empty());
        match reported {
            Err(e)
                if (written || (mode == Mode::Apply && clean_pending)) && !is_broken_pipe(&e) =>
            {
                return Err(anyhow!(AfterWrite(format!(
                    "{e:#}; the files WERE written: {}",
                    changed_paths(&plan, clean_pending)
                ))));
            }
            reported => reported?,
        }
        // --check answers "does every setting hold?": a change that only
        // tidies up (an entry in a module list cloud-init does not use) is
        // shown, but is not pending work.
        let overwritten = plan.before.iter().any(|s| !s.kept);
        Ok(if mode == Mode::Check && (overwritten || clean_pending) {
            Outcome::Pending
        } else {
            Outcome::Success
        })
    })();
    finish(target, result)
}

/// Whether `target` is an image file (else a directory root).
pub(crate) fn is_image(target: &std::path::Path) -> bool {
    std::fs::metadata(target).is_ok_and(|m| m.is_file())
}

fn changed_paths(plan: &Plan, cleaned: bool) -> String {
    let mut paths: Vec<String> = plan
        .files
        .iter()
        .filter(|f| f.changed())
        .map(|f| f.path.display().to_string())
        .collect();
    if cleaned {
        paths.push("and --clean removed what it lists".to_string());
    }
    paths.join(", ")
}

/// Whether a keep's `--clean` has anything to remove (a read-only look, so
/// that an image is mounted read-write only when something will change).
fn clean_pending(target: &Target, plan: &Plan, cleaning: Option<clean::Options>) -> Result<bool> {
    let Some(options) = cleaning else {
        return Ok(false);
    };
    let report = clean::after_keep(target.root(), plan, options, true)?;
    Ok(!report.is_empty())
}

/// Locks the root, reads the configuration in the target and plans the
/// keep; the lock is held until the plan is written (or not).
fn plan_on(target: &Target, selected: &[&Profile], mode: LockMode) -> Result<(RootLock, Plan)> {
    // An image read in user space is not mounted: the point is the mount made to write.
    if target.root().is_directory() {
        interrupt::pause_point("mounted")?;
    }
    let lock = lock::lock(target.root(), mode)?;
    let set = effective::load(target.root())?;
    let plan = plan::plan(&set, selected)?;
    interrupt::check()?;
    Ok((lock, plan))
}

/// Writes every changed file, all or none: every temp file is prepared
/// first, then `commit_all` checks every rename and backup before the first
/// and puts back what was replaced if a later one still fails.
fn write(
    root: &Root,
    files: &[plan::FilePlan],
    backup: bool,
    break_hard_links: bool,
) -> Result<Vec<report::Backup>> {
    let mut pending = Vec::new();
    for file in files.iter().filter(|f| f.changed()) {
        let write = root
            .prepare_write(&file.path, file.new_text.as_bytes())?
            .expecting(file.old_text.as_bytes());
        let links = write.original_links();
        if links > 1 && !break_hard_links {
            bail!(
                "{} has {links} hard links: replacing it (a new file renamed into place) would leave \
                 the other {} name(s) with the old contents; remove the other links, or pass \
                 --break-hard-links; nothing was written",
                root.path().join(write.path()).display(),
                links - 1
            );
        }
        pending.push(write);
    }
    let paths: Vec<_> = pending.iter().map(|w| w.path().to_path_buf()).collect();
    let outcomes = commit::commit_all(pending, backup.then_some(report::BACKUP_SUFFIX)).map_err(
        |e| match e.nothing_written() {
            true => anyhow!(e),
            false => anyhow!(AfterWrite(e.to_string())),
        },
    )?;
    Ok(paths
        .into_iter()
        .zip(outcomes)
        .filter_map(|(file, outcome)| {
            Some(report::Backup {
                file,
                backup: outcome.backup?,
                existed: outcome.backup_existed,
            })
        })
        .collect())
}
/// A closed pipe (`prepare-image ... | head`) is the reader's choice, not an error.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        // JSON output is written through serde_json, which wraps the io::Error in its own type.
        let kind = c
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                c.downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
