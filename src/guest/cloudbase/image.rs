//! Tencent Cloud's import rules for a Windows image, checked offline: NTFS on
//! a basic MBR disk (no GPT, no LVM, no dynamic disk), and virtio storage and
//! network drivers installed. The words are `findings/windows-image.yaml`.

use std::path::Path;

use crate::access::image::fstype::FsKind;
use crate::access::image::partition::{Partition, Table};
use crate::doctor::{Evidence, Finding, Texts};

const TEXTS: &str = include_str!("../../../findings/windows-image.yaml");

pub const GPT: &str = "windows-partition-table-gpt";
pub const NO_TABLE: &str = "windows-partition-table-none";
pub const VOLUME_MANAGER: &str = "windows-dynamic-or-lvm-disk";
pub const LAYOUT_OK: &str = "windows-disk-layout-ok";
pub const STORAGE_MISSING: &str = "windows-virtio-storage-missing";
pub const NETWORK_MISSING: &str = "windows-virtio-network-missing";
pub const ONLY_STAGED: &str = "windows-virtio-only-staged";
pub const DRIVERS_OK: &str = "windows-virtio-drivers-present";

pub const IDS: &[&str] = &[
    GPT,
    NO_TABLE,
    VOLUME_MANAGER,
    LAYOUT_OK,
    STORAGE_MISSING,
    NETWORK_MISSING,
    ONLY_STAGED,
    DRIVERS_OK,
];

/// The texts of these findings.
pub fn texts() -> Texts {
    // Checked by the tests below; a broken file is a build defect, never input.
    Texts::parse(TEXTS).expect("findings/windows-image.yaml is valid")
}

/// The MBR partition type of a Windows dynamic disk (LDM).
const MBR_LDM: &str = "type 0x42";

/// The disk: MBR, no GPT, no LVM or dynamic-disk partition.
pub fn check_layout(
    texts: &Texts,
    image: &Path,
    table: Table,
    partitions: &[(Partition, FsKind)],
) -> Vec<Finding> {
    let evidence = Some(Evidence::file(image));
    let mut findings = Vec::new();
    match table {
        Table::Gpt { .. } => findings.push(texts.finding(GPT, "", evidence.clone(), None)),
        Table::None => findings.push(texts.finding(NO_TABLE, "", evidence.clone(), None)),
        Table::Mbr => {}
    }
    let managed: Vec<String> = partitions
        .iter()
        .filter(|(p, kind)| {
            *kind == FsKind::Lvm2Pv || p.type_name == "Linux LVM" || p.type_name == MBR_LDM
        })
        .map(|(p, _)| format!("partition {} ({})", p.number, p.type_name))
        .collect();
    if !managed.is_empty() {
        findings.push(texts.finding(VOLUME_MANAGER, managed.join(", "), evidence.clone(), None));
    }
    if findings.is_empty() {
        findings.push(texts.finding(LAYOUT_OK, "mbr", evidence, None));
    }
    findings
}

/// Where Windows keeps installed drivers, and where staged ones wait.
pub const DRIVERS_DIR: &str = "Windows/System32/drivers";
pub const DRIVER_STORE: &str = "Windows/System32/DriverStore/FileRepository";

/// The virtio-win drivers that give the system disk (either one) and the
/// network.
const STORAGE_DRIVERS: &[&str] = &["viostor", "vioscsi"];
const NETWORK_DRIVERS: &[&str] = &["netkvm"];

/// What the file system says of one kind of driver.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DriverState {
    Installed(String),
    Staged(String),
    Missing,
}

fn driver_state(names: &[&str], drivers: &[String], store: &[String]) -> DriverState {
    for name in names {
        let sys = format!("{name}.sys");
        if drivers.iter().any(|d| d.eq_ignore_ascii_case(&sys)) {
            return DriverState::Installed(format!("{DRIVERS_DIR}/{sys}"));
        }
    }
    for name in names {
        // The store's folders are named `NAME.inf_ARCH_HASH`.
        let prefix = format!("{name}.inf_");
        if let Some(dir) = store
            .iter()
            .find(|d| d.to_ascii_lowercase().starts_with(&prefix))
        {
            return DriverState::Staged(format!("{DRIVER_STORE}/{dir}"));
        }
    }
    DriverState::Missing
}

/// The virtio drivers, from the names in `Windows/System32/drivers` and in
/// the driver store.
pub fn check_virtio(texts: &Texts, drivers: &[String], store: &[String]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut installed = Vec::new();
    for (names, missing) in [
        (STORAGE_DRIVERS, STORAGE_MISSING),
        (NETWORK_DRIVERS, NETWORK_MISSING),
    ] {
        match driver_state(names, drivers, store) {
            DriverState::Installed(path) => installed.push(path),
            DriverState::Staged(path) => findings.push(texts.finding(
                ONLY_STAGED,
                names.join(" or "),
                Some(Evidence::file(path)),
                None,
            )),
            DriverState::Missing => findings.push(texts.finding(
                missing,
                format!("none of {} in {DRIVERS_DIR}", names.join(", ")),
                Some(Evidence::file(DRIVERS_DIR)),
                None,
            )),
        }
    }
    if findings.is_empty() {
        findings.push(texts.finding(DRIVERS_OK, installed.join(", "), None, None));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Severity;

    fn part(number: u32, type_name: &str) -> Partition {
        Partition {
            number,
            offset: 1 << 20,
            size: 1 << 20,
            type_name: type_name.into(),
            label: None,
        }
    }

    fn ids(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.id.as_str()).collect()
    }

    #[test]
    fn every_id_has_a_text_and_every_text_an_id() {
        let texts = texts();
        let mut in_file: Vec<&str> = texts.ids().collect();
        let mut in_code = IDS.to_vec();
        in_file.sort();
        in_code.sort();
        assert_eq!(in_file, in_code);
    }

    #[test]
    fn the_import_takes_ntfs_on_a_basic_mbr_disk() {
        let t = texts();
        let img = Path::new("w.img");
        let ntfs = [(part(1, "HPFS/NTFS/exFAT"), FsKind::Ntfs)];
        assert_eq!(ids(&check_layout(&t, img, Table::Mbr, &ntfs)), [LAYOUT_OK]);
        let gpt = Table::Gpt { sector_size: 512 };
        assert_eq!(ids(&check_layout(&t, img, gpt, &ntfs)), [GPT]);
        assert_eq!(ids(&check_layout(&t, img, Table::None, &ntfs)), [NO_TABLE]);
        let ldm = [(part(1, MBR_LDM), FsKind::Unknown)];
        let f = check_layout(&t, img, Table::Mbr, &ldm);
        assert_eq!(ids(&f), [VOLUME_MANAGER]);
        assert_eq!(f[0].severity, Severity::Error);
        let lvm = [(part(2, "Linux LVM"), FsKind::Lvm2Pv)];
        assert_eq!(
            ids(&check_layout(&t, img, Table::Mbr, &lvm)),
            [VOLUME_MANAGER]
        );
    }

    #[test]
    fn virtio_drivers_installed_staged_or_missing() {
        let t = texts();
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let f = check_virtio(&t, &s(&["VIOSTOR.SYS", "netkvm.sys"]), &[]);
        assert_eq!(ids(&f), [DRIVERS_OK]);
        let f = check_virtio(&t, &s(&["vioscsi.sys"]), &s(&["netkvm.inf_amd64_1234"]));
        assert_eq!(ids(&f), [ONLY_STAGED]);
        assert_eq!(f[0].severity, Severity::Warning);
        let f = check_virtio(&t, &s(&["disk.sys"]), &[]);
        assert_eq!(ids(&f), [STORAGE_MISSING, NETWORK_MISSING]);
    }
}
