//! `prepare-image doctor` for Windows images (Cloudbase-Init). The words of
//! each finding are data (`findings/windows.yaml`); the checks pick an id,
//! the evidence and the specifics.

pub mod conf;
pub mod registry;

use crate::doctor::Texts;

const TEXTS: &str = include_str!("../../../../findings/windows.yaml");

/// The built-in texts of the Windows findings.
pub fn texts() -> Texts {
    // Checked by the tests; a broken file is a build defect, never input.
    Texts::parse(TEXTS).expect("findings/windows.yaml is valid")
}
