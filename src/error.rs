//! Errors every layer may raise and `main` maps to an exit code, kept apart
//! from `cli` so that the layers below it (e.g. `access`) need not import it.

/// A usage error found after parsing (an unknown profile name, `--partition`
/// on a directory): exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
