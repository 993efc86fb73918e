//! Command-line interface: the flags, and the run that ties profiles, the
//! effective configuration, the plan, the root and the report together.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::effective::{self, setting_state};
use crate::plan::{self, Plan};
use crate::profile::{self, Profile};
use crate::report::{self, Mode, Style};
use crate::rootfs::Root;

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
    after_help = "Exit codes: 0 done or nothing to do (--dry-run: always 0), 1 error, 2 usage error, 3 changes pending (--check)."
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

    /// Change nothing; exit 3 if changes are pending, 0 if every setting is already kept.
    #[arg(long)]
    pub check: bool,

    /// Keep each original as NAME.prepare-image.bak (a name cloud-init never reads).
    #[arg(long, conflicts_with_all = ["dry_run", "check"])]
    pub backup: bool,

    /// Root directory of the image (a mounted image, a chroot, or / for the live system).
    #[arg(value_name = "TARGET", default_value = "/")]
    pub target: PathBuf,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format: text for people, json for pipelines (one document on stdout).
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    pub format: Format,

    /// When to color the diff: auto colors only on a terminal and honours NO_COLOR.
    #[arg(long, value_enum, default_value_t = ColorWhen::Auto, global = true)]
    pub color: ColorWhen,

    /// A user-defined profile in the format of the built-ins (see profiles/); repeatable.
    #[arg(long, value_name = "FILE", global = true)]
    pub profile_file: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show, per setting, whether cloud-init keeps it or overwrites it at first
    /// boot, and which file and line decide.
    Status {
        /// Root directory of the image.
        #[arg(value_name = "TARGET", default_value = "/")]
        target: PathBuf,
    },
    /// List the profiles: what each edits and what it breaks.
    Profiles,
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
}

/// A usage error found after parsing (an unknown profile name): exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Runs the command. Text for people goes to `err` (stderr), the diff and
/// machine-readable output to `out` (stdout).
pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write, style: Style) -> Result<Outcome> {
    let catalogue = profile::catalogue(&cli.output.profile_file)?;
    match &cli.command {
        Some(Command::Profiles) => {
            report::profiles(out, &catalogue, cli.output.format)?;
            Ok(Outcome::Success)
        }
        Some(Command::Status { target }) => {
            let root = Root::open(target)?;
            let set = effective::load(&root)?;
            let states: Vec<_> = catalogue.iter().map(|p| setting_state(&set, p)).collect();
            report::status(out, &root, &states, cli.output.format)?;
            Ok(Outcome::Success)
        }
        None => keep(cli, &catalogue, out, err, style),
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
    let selected =
        profile::select(catalogue, list).map_err(|e| anyhow!(UsageError(e.to_string())))?;
    let mode = if args.check {
        Mode::Check
    } else if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    let root = Root::open(&args.target)?;
    let set = effective::load(&root)?;
    let plan = plan::plan(&set, &selected)?;
    let backups = if mode == Mode::Apply {
        write(&root, &plan, args.backup)?
    } else {
        Vec::new()
    };
    report::keep(
        out,
        err,
        &root,
        &plan,
        &selected,
        mode,
        &backups,
        cli.output.format,
        style,
    )?;
    Ok(if mode == Mode::Check && plan.pending() {
        Outcome::Pending
    } else {
        Outcome::Success
    })
}

/// Writes every changed file: all temp files are prepared first, so a failure
/// (read-only, full, permission) leaves every file as it was; then each is
/// renamed into place.
fn write(root: &Root, plan: &Plan, backup: bool) -> Result<Vec<report::Backup>> {
    let mut pending = Vec::new();
    for file in plan.files.iter().filter(|f| f.changed()) {
        pending.push(root.prepare_write(&file.path, file.new_text.as_bytes())?);
    }
    let mut backups = Vec::new();
    for write in pending {
        let path = write.path().to_path_buf();
        let outcome = write.commit(backup.then_some(report::BACKUP_SUFFIX))?;
        if backup {
            let mut name = path.clone().into_os_string();
            name.push(report::BACKUP_SUFFIX);
            backups.push(report::Backup {
                file: path,
                backup: PathBuf::from(name),
                existed: outcome.backup_existed,
            });
        }
    }
    Ok(backups)
}
