//! `prepare-image doctor` on a Windows image: refuse a volume Windows left
//! unfinished, then run every Windows check over the system volume, read in
//! user space. The checks are pure functions of what is read here.

use std::cell::RefCell;
use std::io::{Read, Seek};
use std::path::Path;

use anyhow::{Result, bail};

use super::doctor::conf::{self, DirState, system_drive_relative};
use super::doctor::registry::{self, RegistryReport, SOFTWARE_HIVE, SYSTEM_HIVE};
use super::image;
use super::plan::ConfFile;
use super::registry::Hive;
use crate::access::fs::ntfs::NtfsVolume;
use crate::access::image::windows::WindowsImage;
use crate::doctor::{Finding, Texts};

/// The most names read from one directory: System32/drivers holds a few
/// hundred, the driver store a few thousand.
const MAX_NAMES: usize = 100_000;
/// The most of a conf file read.
const TEXT_LIMIT: u64 = 16 << 20;
/// Where the installer puts Cloudbase-Init: 64-bit, then 32-bit.
const INSTALL_DIRS: [&str; 2] = [
    "Program Files/Cloudbase Solutions/Cloudbase-Init",
    "Program Files (x86)/Cloudbase Solutions/Cloudbase-Init",
];

/// The conf file the live service reads: its `--config-file`, else the
/// install's `conf/cloudbase-init.conf` (the service's install first, then
/// the installer's two places); `None` when none exists.
fn conf_path(win: &mut WindowsImage, report: &RegistryReport) -> Option<String> {
    let live = report.live_install.as_ref();
    let named = live
        .and_then(|l| l.config_file.as_deref())
        .and_then(system_drive_relative)
        .map(|p| p.to_string_lossy().replace('\\', "/"));
    let installs = live
        .map(|l| l.install_dir.clone())
        .into_iter()
        .chain(INSTALL_DIRS.iter().map(|d| d.to_string()));
    named
        .into_iter()
        .chain(installs.map(|d| format!("{d}/conf/cloudbase-init.conf")))
        .find(|p| win.volume().exists(p) && !win.volume().is_dir(p))
}

/// What is at a directory of the volume, for the conf checks.
fn dir_state<R: Read + Seek>(volume: &mut NtfsVolume<R>, dir: &Path) -> DirState {
    let dir = dir.to_string_lossy().replace('\\', "/");
    if !volume.exists(&dir) {
        return DirState::Missing;
    }
    match volume.list_dir(&dir, MAX_NAMES) {
        Ok(Some(names)) => {
            if names.iter().any(|n| !volume.is_dir(&format!("{dir}/{n}"))) {
                DirState::HasFiles
            } else {
                DirState::NoFiles
            }
        }
        _ => DirState::NotADirectory,
    }
}

/// The largest hive read: a real SOFTWARE hive is 50-200 MB.
pub const MAX_HIVE: u64 = 1 << 30;

const REGISTRY_TEXTS: &str = include_str!("../../../findings/windows.yaml");
const IMAGE_TEXTS: &str = include_str!("../../../findings/windows-image.yaml");

/// Every Windows finding's words: the registry's and the image's files as
/// one mapping (ids are unique across both: tested below).
pub fn texts() -> Texts {
    // Checked by the tests; a broken file is a build defect, never input.
    Texts::parse(&format!("{REGISTRY_TEXTS}\n{IMAGE_TEXTS}"))
        .expect("findings/windows*.yaml are valid")
}

/// What doctor found, and the DWORD edits `--fix` may make.
pub struct Diagnosis {
    pub findings: Vec<Finding>,
    pub registry: RegistryReport,
}

/// Reads a hive whole (capped), refusing one that is missing or too large.
pub fn read_hive(win: &mut WindowsImage, path: &str) -> Result<Vec<u8>> {
    match win.volume().read_prefix(path, MAX_HIVE)? {
        Some((bytes, len)) if len <= MAX_HIVE => Ok(bytes),
        Some((_, len)) => bail!(
            "{}: {path} is {len} bytes, more than the {MAX_HIVE} prepare-image reads",
            win.display()
        ),
        None => bail!(
            "{}: {path} is missing: is Windows installed on this volume?",
            win.display()
        ),
    }
}

/// The registry checks over the image's SYSTEM and SOFTWARE hives (a hive
/// Windows did not finish writing is refused).
fn registry_report(win: &mut WindowsImage, texts: &Texts) -> Result<RegistryReport> {
    let system = read_hive(win, SYSTEM_HIVE)?;
    let software = read_hive(win, SOFTWARE_HIVE)?;
    let display = win.display();
    let system =
        Hive::parse(&system).map_err(|e| anyhow::anyhow!("{display}: {SYSTEM_HIVE}: {e}"))?;
    let software =
        Hive::parse(&software).map_err(|e| anyhow::anyhow!("{display}: {SOFTWARE_HIVE}: {e}"))?;
    Ok(registry::check(&system, &software, texts))
}

/// The findings on a Windows image, after refusing one Windows left
/// unfinished (an error: exit 1, nothing written). A hive Windows did not
/// finish writing is refused the same way.
pub fn diagnose(win: &mut WindowsImage, texts: &Texts) -> Result<Diagnosis> {
    win.refuse_unfinished()?;
    let report = registry_report(win, texts)?;
    let mut findings = report.findings.clone();
    findings.extend(image::check_layout(
        texts,
        &win.info.path,
        win.layout.table,
        &win.kinds,
    ));
    let drivers = win
        .volume()
        .list_dir(image::DRIVERS_DIR, MAX_NAMES)?
        .unwrap_or_default();
    let store = win
        .volume()
        .list_dir(image::DRIVER_STORE, MAX_NAMES)?
        .unwrap_or_default();
    findings.extend(image::check_virtio(texts, &drivers, &store));
    match conf_path(win, &report) {
        Some(path) => {
            let text = match win.volume().read_prefix(&path, TEXT_LIMIT)? {
                Some((bytes, _)) => String::from_utf8_lossy(&bytes).into_owned(),
                None => String::new(),
            };
            let unattend = unattend_path(&path);
            {
                let volume = RefCell::new(win.volume());
                let probe = |dir: &Path| dir_state(&mut volume.borrow_mut(), dir);
                findings.extend(conf::check_conf(texts, Path::new(&path), &text, &probe));
            }
            if win.volume().exists(&unattend) && !win.volume().is_dir(&unattend) {
                let text = match win.volume().read_prefix(&unattend, TEXT_LIMIT)? {
                    Some((bytes, _)) => String::from_utf8_lossy(&bytes).into_owned(),
                    None => String::new(),
                };
                findings.extend(conf::check_unattend(texts, Path::new(&unattend), &text));
            }
        }
        None => {
            let looked: Vec<String> = report
                .live_install
                .iter()
                .map(|l| l.install_dir.clone())
                .chain(INSTALL_DIRS.iter().map(|d| d.to_string()))
                .map(|d| format!("{d}/conf/cloudbase-init.conf"))
                .collect();
            findings.push(texts.finding(
                conf::CONF_MISSING,
                format!("none of {}", looked.join(", ")),
                Some(crate::doctor::Evidence::file(&looked[0])),
                None,
            ));
        }
    }
    Ok(Diagnosis {
        findings,
        registry: report,
    })
}

/// The unattend file beside the service's conf file: the installer writes
/// both to the install's `conf` directory.
pub const UNATTEND_CONF: &str = "cloudbase-init-unattend.conf";

/// The unattend file's path beside the service's conf file.
fn unattend_path(conf: &str) -> String {
    match conf.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{UNATTEND_CONF}"),
        None => UNATTEND_CONF.to_string(),
    }
}

/// The conf files a keep edits: the live install's `cloudbase-init.conf`
/// (found as doctor finds it: the service's `--config-file`, else its
/// install's `conf`, else the installer's two places) and, where it exists,
/// `cloudbase-init-unattend.conf` beside it. Refuses a volume or hive
/// Windows left unfinished, a missing conf and a text that is not UTF-8
/// (an edit must not change bytes it does not mean to).
pub fn keep_files(win: &mut WindowsImage) -> Result<Vec<ConfFile>> {
    win.refuse_unfinished()?;
    let report = registry_report(win, &texts())?;
    let Some(conf) = conf_path(win, &report) else {
        bail!(
            "{}: no Cloudbase-Init conf file (looked for conf/cloudbase-init.conf under {}): \
             install Cloudbase-Init in the image first; nothing written",
            win.display(),
            INSTALL_DIRS.join(" and ")
        );
    };
    let unattend = unattend_path(&conf);
    let mut files = Vec::new();
    for path in [conf, unattend] {
        if files.len() == 1 && (!win.volume().exists(&path) || win.volume().is_dir(&path)) {
            continue;
        }
        let text = read_text(win, &path)?;
        files.push(ConfFile {
            path: path.into(),
            text,
        });
    }
    Ok(files)
}

/// A conf file's text, whole and UTF-8, or an error naming it.
pub fn read_text(win: &mut WindowsImage, path: &str) -> Result<String> {
    let display = win.display();
    match win.volume().read_prefix(path, TEXT_LIMIT)? {
        Some((bytes, len)) if len <= TEXT_LIMIT => String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{display}: {path}: not UTF-8 (byte {}): save it as UTF-8 in Windows; \
                 nothing written",
                e.utf8_error().valid_up_to()
            )
        }),
        Some((_, len)) => bail!(
            "{display}: {path} is {len} bytes, more than the {TEXT_LIMIT} prepare-image reads"
        ),
        None => bail!("{display}: {path} is missing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_windows_findings_files_share_no_id() {
        let registry = Texts::parse(REGISTRY_TEXTS).unwrap();
        let image = Texts::parse(IMAGE_TEXTS).unwrap();
        let both = texts();
        assert_eq!(
            both.ids().count(),
            registry.ids().count() + image.ids().count()
        );
    }
}
