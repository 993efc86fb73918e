use super::*;
use crate::doctor::Severity;
use crate::guest::cloudbase::doctor::texts;
use crate::guest::cloudbase::registry::common_hive::{
    CLOUDBASE_PLUGINS as PLUGINS, CLOUDBASE_SERVICE as SERVICE, HiveBuilder, Val,
    well_prepared_software, well_prepared_system,
};
use crate::guest::cloudbase::registry::set_dwords;

const SET: &str = "ControlSet001";
const CLASS: &str = "ControlSet001\\Control\\Class\\{4d36e965-e325-11ce-bfc1-08002be10318}";
const POLICY: &str = "Policies\\Microsoft\\Windows\\RemovableStorageDevices";

/// A SYSTEM hive as a well-prepared image has it, with a class filter and
/// CD-ROM and network device instances for the filter and device checks.
fn good_system() -> HiveBuilder {
    well_prepared_system()
        .set(
            "ControlSet001\\Services\\storqosflt",
            "Start",
            Val::Dword(1),
        )
        .set(
            CLASS,
            "UpperFilters",
            Val::MultiSz(vec!["storqosflt".into()]),
        )
        .set(
            "ControlSet001\\Enum\\SCSI\\CdRom&Ven_QEMU&Prod_QEMU_DVD-ROM\\1&2afd7d61&0&000100",
            "ClassGUID",
            Val::Sz(CDROM_CLASS.to_uppercase()),
        )
        .set(
            "ControlSet001\\Enum\\SCSI\\CdRom&Ven_QEMU&Prod_QEMU_DVD-ROM\\1&2afd7d61&0&000100",
            "ConfigFlags",
            Val::Dword(0),
        )
        .set(
            "ControlSet001\\Enum\\PCI\\VEN_1AF4&DEV_1000\\3&13c0b0c5&0&18",
            "ClassGUID",
            Val::Sz("{4d36e972-e325-11ce-bfc1-08002be10318}".into()),
        )
        .set(
            "ControlSet001\\Enum\\PCI\\VEN_1AF4&DEV_1000\\3&13c0b0c5&0&18",
            "ConfigFlags",
            Val::Dword(1),
        )
}

fn good_software() -> HiveBuilder {
    well_prepared_software().set(PLUGINS, "SetUserPasswordPlugin", Val::Dword(1))
}

fn run(system: &HiveBuilder, software: &HiveBuilder) -> RegistryReport {
    let (system, software) = (system.build(), software.build());
    let system = Hive::parse(&system).unwrap();
    let software = Hive::parse(&software).unwrap();
    check(&system, &software, &texts())
}

fn ids(report: &RegistryReport, severity: Severity) -> Vec<&str> {
    report
        .findings
        .iter()
        .filter(|f| f.severity == severity)
        .map(|f| f.id.as_str())
        .collect()
}

fn only_error(report: &RegistryReport) -> &Finding {
    let errors: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.severity != Severity::Ok)
        .collect();
    assert_eq!(errors.len(), 1, "{:#?}", report.findings);
    errors[0]
}

#[test]
fn every_id_has_a_text_and_every_registry_text_an_id() {
    let texts = texts();
    for id in Id::ALL {
        assert!(
            texts.get(id.as_str()).is_some(),
            "{} has no text",
            id.as_str()
        );
    }
    let section = include_str!("../../../../findings/windows.yaml");
    let registry_section = section
        .split("# ---- registry")
        .nth(1)
        .unwrap()
        .split("\n# ----")
        .next()
        .unwrap();
    for line in registry_section.lines() {
        if let Some(id) = line.strip_suffix(':').filter(|l| !l.starts_with(' ')) {
            assert!(
                Id::ALL.iter().any(|i| i.as_str() == id),
                "{id} in the registry section is raised by no check"
            );
        }
    }
}

#[test]
fn a_well_prepared_image_has_no_finding_but_ok() {
    let report = run(&good_system(), &good_software());
    assert_eq!(ids(&report, Severity::Error), Vec::<&str>::new());
    assert_eq!(ids(&report, Severity::Warning), Vec::<&str>::new());
    assert_eq!(
        ids(&report, Severity::Ok),
        [
            "cloudbase-init-service-automatic",
            "cloudbase-init-runs-as-local-system",
            "cloudbase-init-image-path",
            "cdrom-driver-enabled",
            "cdrom-filters-ok",
            "cdrom-devices-enabled",
            "local-scripts-plugin-ok",
            "removable-storage-policy-allows-cdrom",
        ]
    );
    assert!(report.fixes.is_empty());
    assert_eq!(report.control_set.as_deref(), Some(SET));
    assert!(
        report
            .image_path
            .unwrap()
            .contains("Program Files\\Cloudbase")
    );
}

#[test]
fn the_control_set_comes_from_select_current() {
    // Current = 2: ControlSet001 (with the service disabled) is not booted.
    let mut system = good_system().set("Select", "Current", Val::Dword(2));
    let mut set2 = system.root.key_mut(SET).clone();
    set2.name = "ControlSet002".into();
    system.root.subkeys.push(set2);
    system.put(SERVICE, "Start", Val::Dword(4));
    let report = run(&system, &good_software());
    assert_eq!(report.control_set.as_deref(), Some("ControlSet002"));
    assert!(
        ids(&report, Severity::Error).is_empty(),
        "{:#?}",
        report.findings
    );
    system.put("Select", "Current", Val::Dword(1));
    assert_eq!(
        only_error(&run(&system, &good_software())).id,
        "cloudbase-init-service-not-automatic"
    );

    let report = run(
        &good_system().set("Select", "Current", Val::Dword(3)),
        &good_software(),
    );
    assert_eq!(only_error(&report).id, "registry-no-current-control-set");
    let report = run(&HiveBuilder::new().key(SERVICE), &good_software());
    assert_eq!(only_error(&report).id, "registry-no-current-control-set");
}

#[test]
fn start_other_than_automatic_is_an_error_with_a_fix() {
    for (start, meaning) in [(3, "Manual"), (4, "Disabled")] {
        let report = run(
            &good_system().set(SERVICE, "Start", Val::Dword(start)),
            &good_software(),
        );
        let f = only_error(&report);
        assert_eq!(f.id, "cloudbase-init-service-not-automatic");
        assert!(f.detail.contains(meaning), "{}", f.detail);
        assert_eq!(
            f.evidence.as_ref().unwrap().path.to_str(),
            Some(SYSTEM_HIVE)
        );
        assert_eq!(
            report.fixes,
            [DwordFix {
                hive: HiveFile::System,
                key: SERVICE.into(),
                value: "Start".into(),
                from: start,
                to: 2
            }]
        );
    }
    let delayed = run(
        &good_system().set(SERVICE, "DelayedAutostart", Val::Dword(1)),
        &good_software(),
    );
    let f = delayed
        .findings
        .iter()
        .find(|f| f.id == "cloudbase-init-service-automatic")
        .unwrap();
    assert!(f.detail.contains("Delayed"), "{}", f.detail);
}

#[test]
fn a_missing_service_is_an_error() {
    let mut system = good_system();
    system
        .root
        .key_mut("ControlSet001\\Services")
        .subkeys
        .retain(|k| k.name != "cloudbase-init");
    let report = run(&system, &good_software());
    assert_eq!(only_error(&report).id, "cloudbase-init-service-missing");
}

#[test]
fn object_name_must_be_local_system_in_any_case() {
    for good in ["localsystem", "LOCALSYSTEM"] {
        let report = run(
            &good_system().set(SERVICE, "ObjectName", Val::Sz(good.into())),
            &good_software(),
        );
        assert!(ids(&report, Severity::Error).is_empty());
    }
    let report = run(
        &good_system().set(SERVICE, "ObjectName", Val::Sz(".\\cloudbase-init".into())),
        &good_software(),
    );
    let f = only_error(&report);
    assert_eq!(f.id, "cloudbase-init-not-local-system");
    assert!(f.detail.contains(".\\cloudbase-init"));
    assert!(f.fix.contains(OBJECT_NAME_COMMAND), "{}", f.fix);
    assert!(report.fixes.is_empty(), "a string is never rewritten");
}

#[test]
fn a_missing_image_path_is_an_error() {
    let mut system = good_system();
    system
        .root
        .key_mut(SERVICE)
        .values
        .retain(|(n, _)| n != "ImagePath");
    let report = run(&system, &good_software());
    assert_eq!(only_error(&report).id, "cloudbase-init-image-path-missing");
    assert_eq!(report.image_path, None);
}

#[test]
fn every_local_scripts_plugin_must_be_2_also_under_wow6432node() {
    let wow = "WOW6432Node\\Cloudbase Solutions\\Cloudbase-Init\\i-old\\Plugins";
    let software = good_software()
        .set(PLUGINS, "LocalScriptsPlugin", Val::Dword(1))
        .set(wow, "localscriptsplugin", Val::Dword(1));
    let report = run(&good_system(), &software);
    let errors: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|f| f.id == "local-scripts-plugin-not-2"));
    assert_eq!(
        report.fixes,
        [
            DwordFix {
                hive: HiveFile::Software,
                key: PLUGINS.into(),
                value: "LocalScriptsPlugin".into(),
                from: 1,
                to: 2
            },
            DwordFix {
                hive: HiveFile::Software,
                key: wow.into(),
                value: "localscriptsplugin".into(),
                from: 1,
                to: 2
            },
        ]
    );
    // Fresh image: no state at all is fine.
    let report = run(&good_system(), &HiveBuilder::new().key("Microsoft"));
    assert!(ids(&report, Severity::Error).is_empty());
}

#[test]
fn the_fixes_applied_by_the_writer_clear_the_findings() {
    let system = good_system().set(SERVICE, "Start", Val::Dword(4)).set(
        "ControlSet001\\Services\\cdrom",
        "Start",
        Val::Dword(4),
    );
    let software = good_software().set(PLUGINS, "LocalScriptsPlugin", Val::Dword(1));
    let (mut system, mut software) = (system.build(), software.build());
    let report = {
        let (s, w) = (
            Hive::parse(&system).unwrap(),
            Hive::parse(&software).unwrap(),
        );
        check(&s, &w, &texts())
    };
    assert_eq!(report.fixes.len(), 3);
    for (hive, bytes) in [
        (HiveFile::System, &mut system),
        (HiveFile::Software, &mut software),
    ] {
        let writes: Vec<DwordWrite> = report
            .fixes
            .iter()
            .filter(|f| f.hive == hive)
            .map(DwordFix::write)
            .collect();
        set_dwords(bytes, &writes, 1).unwrap();
    }
    let (s, w) = (
        Hive::parse(&system).unwrap(),
        Hive::parse(&software).unwrap(),
    );
    let after = check(&s, &w, &texts());
    assert!(
        ids(&after, Severity::Error).is_empty(),
        "{:#?}",
        after.findings
    );
    assert!(after.fixes.is_empty());
}

#[test]
fn a_disabled_cdrom_driver_is_an_error_with_a_fix() {
    let report = run(
        &good_system().set("ControlSet001\\Services\\cdrom", "Start", Val::Dword(4)),
        &good_software(),
    );
    assert_eq!(only_error(&report).id, "cdrom-driver-disabled");
    assert_eq!(report.fixes[0].to, CDROM_START_DEFAULT);
    let mut system = good_system();
    system
        .root
        .key_mut("ControlSet001\\Services")
        .subkeys
        .retain(|k| k.name != "cdrom");
    assert_eq!(
        only_error(&run(&system, &good_software())).id,
        "cdrom-driver-missing"
    );
}

#[test]
fn cdrom_class_filters_must_name_enabled_services() {
    let report = run(
        &good_system().set(
            CLASS,
            "LowerFilters",
            Val::MultiSz(vec!["GearAspiWDM".into()]),
        ),
        &good_software(),
    );
    let f = only_error(&report);
    assert_eq!(f.id, "cdrom-filter-service-missing");
    assert!(
        f.detail.contains("LowerFilters names `GearAspiWDM`"),
        "{}",
        f.detail
    );

    let report = run(
        &good_system().set(
            "ControlSet001\\Services\\storqosflt",
            "Start",
            Val::Dword(4),
        ),
        &good_software(),
    );
    assert_eq!(only_error(&report).id, "cdrom-filter-service-disabled");
    // A REG_SZ filter list is read too.
    let report = run(
        &good_system().set(CLASS, "UpperFilters", Val::Sz("nothere".into())),
        &good_software(),
    );
    assert_eq!(only_error(&report).id, "cdrom-filter-service-missing");
}

#[test]
fn a_disabled_cdrom_device_instance_is_a_warning() {
    let instance =
        "ControlSet001\\Enum\\SCSI\\CdRom&Ven_QEMU&Prod_QEMU_DVD-ROM\\1&2afd7d61&0&000100";
    let report = run(
        &good_system().set(instance, "ConfigFlags", Val::Dword(0x401)),
        &good_software(),
    );
    let f = only_error(&report);
    assert_eq!(
        (f.id.as_str(), f.severity),
        ("cdrom-device-disabled", Severity::Warning)
    );
    assert!(f.detail.contains("0x401"), "{}", f.detail);
    // The disabled PCI device of another class in good_system is not reported.
    assert!(ids(&run(&good_system(), &good_software()), Severity::Warning).is_empty());
}

#[test]
fn a_removable_storage_policy_denying_cd_reads_is_an_error() {
    for (key, value) in [
        (format!("{POLICY}\\{CDROM_POLICY_CLASS}"), "Deny_Read"),
        (POLICY.to_string(), "Deny_All"),
    ] {
        let report = run(
            &good_system(),
            &good_software().set(&key, value, Val::Dword(1)),
        );
        let f = only_error(&report);
        assert_eq!(f.id, "removable-storage-policy-denies-cdrom");
        assert!(f.detail.contains(value));
        assert_eq!(
            f.evidence.as_ref().unwrap().path.to_str(),
            Some(SOFTWARE_HIVE)
        );
        let allowed = run(
            &good_system(),
            &good_software().set(&key, value, Val::Dword(0)),
        );
        assert!(ids(&allowed, Severity::Error).is_empty());
    }
}

#[test]
fn a_damaged_key_is_a_finding_and_the_other_checks_still_run() {
    let bytes = good_software().build();
    let mut damaged = bytes.clone();
    // Break the value list of the Plugins key: point it outside the bins.
    let hive = Hive::parse(&bytes).unwrap();
    let plugins = hive.open(PLUGINS).unwrap().unwrap();
    let at = 4096 + plugins.cell() as usize + 4 + 40;
    damaged[at..at + 4].copy_from_slice(&0x7FFF_0000u32.to_le_bytes());
    let system = good_system().build();
    let (system, software) = (
        Hive::parse(&system).unwrap(),
        Hive::parse(&damaged).unwrap(),
    );
    let report = check(&system, &software, &texts());
    let f = only_error(&report);
    assert_eq!(f.id, "registry-hive-unreadable");
    assert!(ids(&report, Severity::Ok).contains(&"removable-storage-policy-allows-cdrom"));
}

#[test]
fn the_live_install_is_read_from_image_path() {
    let installer = "\"C:\\Program Files\\Cloudbase Solutions\\Cloudbase-Init\\bin\\OpenStackService.exe\" cloudbase-init \"C:\\Program Files\\Cloudbase Solutions\\Cloudbase-Init\\Python\\Scripts\\cloudbase-init.exe\" --config-file \"C:\\Program Files\\Cloudbase Solutions\\Cloudbase-Init\\conf\\cloudbase-init.conf\"";
    assert_eq!(
        live_install(installer),
        Some(LiveInstall {
            install_dir: "Program Files/Cloudbase Solutions/Cloudbase-Init".into(),
            config_file: Some(
                "Program Files/Cloudbase Solutions/Cloudbase-Init/conf/cloudbase-init.conf".into()
            ),
        })
    );
    let x86 =
        "C:\\PROGRA~2\\Cloudbase Solutions\\Cloudbase-Init\\Python\\Scripts\\cloudbase-init.exe";
    assert_eq!(
        live_install(x86).unwrap().install_dir,
        "PROGRA~2/Cloudbase Solutions/Cloudbase-Init"
    );
    for odd in ["", "cloudbase-init.exe", "%SystemRoot%\\x.exe", "C:\\x.exe"] {
        assert_eq!(live_install(odd), None, "{odd}");
    }
    let report = run(&good_system(), &good_software());
    assert_eq!(
        report.live_install.unwrap().install_dir,
        "Program Files/Cloudbase Solutions/Cloudbase-Init"
    );
}
