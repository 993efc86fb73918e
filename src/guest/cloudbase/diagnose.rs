//! `prepare-image doctor` on a Windows image: refuse a volume Windows left
//! unfinished, then run every Windows check over the system volume, read in
//! user space. The checks are pure functions of what is read here.

use anyhow::Result;

use super::image;
use crate::access::image::windows::WindowsImage;
use crate::doctor::{Finding, Texts};

/// The most names read from one directory: System32/drivers holds a few
/// hundred, the driver store a few thousand.
const MAX_NAMES: usize = 100_000;

/// Every Windows finding's words.
pub fn texts() -> Texts {
    image::texts()
}

/// The findings on a Windows image, after refusing one Windows left
/// unfinished (an error: exit 1, nothing read further, nothing written).
pub fn diagnose(win: &mut WindowsImage, texts: &Texts) -> Result<Vec<Finding>> {
    win.refuse_unfinished()?;
    let mut findings = image::check_layout(texts, &win.info.path, win.layout.table, &win.kinds);
    let drivers = win
        .volume
        .list_dir(image::DRIVERS_DIR, MAX_NAMES)?
        .unwrap_or_default();
    let store = win
        .volume
        .list_dir(image::DRIVER_STORE, MAX_NAMES)?
        .unwrap_or_default();
    findings.extend(image::check_virtio(texts, &drivers, &store));
    Ok(findings)
}
