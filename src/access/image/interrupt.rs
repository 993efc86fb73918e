//! Ctrl-C, SIGTERM and SIGHUP: noted, not obeyed at once, so that the run
//! can stop at the next safe point and release every mount, loop device and
//! helper process on the way out.

use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Result;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    // Only async-signal-safe calls here. A second signal means the user
    // insists: take the default action (the private mount namespace and
    // autoclear still release mounts and loop devices).
    if RECEIVED.swap(signal, Ordering::SeqCst) != 0 {
        // SAFETY: signal(2) and raise(3) are async-signal-safe.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
}

/// Installs the handlers. Call once, before acquiring anything.
pub fn install() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(note),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// The run was interrupted by a signal; everything acquired is released as
/// this error travels up. `main` exits with 128 + the signal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted(pub i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = Signal::try_from(self.0)
            .map(|s| s.as_str())
            .unwrap_or("a signal");
        write!(
            f,
            "interrupted by {name}: stopped before writing; every mount, loop device and helper process was released"
        )
    }
}

impl std::error::Error for Interrupted {}

/// Fails with [`Interrupted`] if a signal arrived. Called between steps.
pub fn check() -> Result<(), Interrupted> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => Ok(()),
        signal => Err(Interrupted(signal)),
    }
}

/// Environment variable that makes a run stop at a named point until a signal
/// arrives (at most [`PAUSE_LIMIT`]), so tests can interrupt it exactly there.
/// Points: `served` (an NBD source connected), `attached` (loop device set
/// up), `mounted`, `written`.
pub const PAUSE_VARIABLE: &str = "PREPARE_IMAGE_PAUSE";
const PAUSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A test hook: see [`PAUSE_VARIABLE`]. Does nothing unless it names `point`.
pub fn pause_point(point: &str) -> Result<(), Interrupted> {
    if std::env::var_os(PAUSE_VARIABLE).is_none_or(|v| v != point) {
        return check();
    }
    eprintln!("prepare-image: paused at {point} ({PAUSE_VARIABLE})");
    let deadline = std::time::Instant::now() + PAUSE_LIMIT;
    while std::time::Instant::now() < deadline {
        check()?;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    check()
}
