//! The `prepare-image` command: parse arguments, run, print, exit.
//! Everything else lives in the library.

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use clap::Parser;
use prepare_image::access::image::interrupt::Interrupted;
use prepare_image::cli::{self, Cli, ColorWhen, Outcome, UsageError};
use prepare_image::report::Style;

/// Documented exit codes (README, "Exit codes").
const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_PENDING: u8 = 3;
const EXIT_FINDINGS: u8 = 4;
/// Stopped by signal N: 128 + N, as shells report it.
const EXIT_SIGNAL_BASE: u8 = 128;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let style = color_style(cli.output.color);
    let mut out = io::stdout().lock();
    let mut err = io::stderr().lock();
    match cli::run(&cli, &mut out, &mut err, style) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Pending) => ExitCode::from(EXIT_PENDING),
        Ok(Outcome::Findings) => ExitCode::from(EXIT_FINDINGS),
        // A closed pipe (`prepare-image ... | head`) is the reader's choice, not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            eprintln!("error: {e:#}");
            let signal = e.downcast_ref::<Interrupted>().map_or(0, |i| i.0);
            ExitCode::from(EXIT_SIGNAL_BASE.saturating_add(signal as u8))
        }
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("error: {e:#}\n\nFor more information, try '--help'.");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        // JSON output is written through serde_json, which wraps the io::Error in its own type.
        let kind = c
            .downcast_ref::<io::Error>()
            .map(io::Error::kind)
            .or_else(|| {
                c.downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        kind == Some(io::ErrorKind::BrokenPipe)
    })
}

/// `--color auto` colors a stream only when it is a terminal and NO_COLOR is
/// unset (https://no-color.org); `always` and `never` are explicit choices.
fn color_style(when: ColorWhen) -> Style {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let auto = |terminal: bool| terminal && !no_color;
    match when {
        ColorWhen::Always => Style {
            color_stdout: true,
            color_stderr: true,
        },
        ColorWhen::Never => Style::default(),
        ColorWhen::Auto => Style {
            color_stdout: auto(io::stdout().is_terminal()),
            color_stderr: auto(io::stderr().is_terminal()),
        },
    }
}
