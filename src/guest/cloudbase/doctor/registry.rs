//! The registry checks of the Windows doctor, as pure functions over the two
//! parsed hives (SYSTEM and SOFTWARE): what the cloud's guide asks of
//! Cloudbase-Init (service Automatic as Local System, every
//! `LocalScriptsPlugin` 2, the CD-ROM usable for the config drive), and the
//! DWORD edits `doctor --fix` may make with the in-place writer.
//!
//! An offline hive has no `CurrentControlSet` (Windows makes that link at
//! boot): the control set Windows will boot is `Select\Current`.

use crate::doctor::{Evidence, Finding, Texts, finding_ids};
use crate::guest::cloudbase::registry::{DwordWrite, Hive, HiveError, Key, names_equal};

/// Where the hives are, relative to the Windows volume's root.
pub const SYSTEM_HIVE: &str = "Windows/System32/config/SYSTEM";
pub const SOFTWARE_HIVE: &str = "Windows/System32/config/SOFTWARE";

/// The CD-ROM device setup class.
pub const CDROM_CLASS: &str = "{4d36e965-e325-11ce-bfc1-08002be10318}";
/// The Removable Storage Access policy's class for CD and DVD.
pub const CDROM_POLICY_CLASS: &str = "{53f56308-b6bf-11d0-94f2-00a0c91efb8b}";

/// `Start` of a service: 2 is Automatic, 4 Disabled.
pub const START_AUTOMATIC: u32 = 2;
pub const START_DISABLED: u32 = 4;
/// `Start` of the cdrom driver as Windows installs it (System).
pub const CDROM_START_DEFAULT: u32 = 1;
/// A plugin status of 2 makes Cloudbase-Init run the plugin again at the
/// next boot; 1 means "done, never again".
pub const PLUGIN_RUN_AGAIN: u32 = 2;
/// `ConfigFlags` bit of a device instance the user disabled.
pub const CONFIGFLAG_DISABLED: u32 = 0x1;
/// The bound on device instance keys visited under `Enum` (a real SYSTEM
/// hive has a few thousand).
const MAX_ENUM_KEYS: usize = 200_000;

/// The exact command for the one setting `--fix` does not write (a string
/// whose cell may need to grow).
pub const OBJECT_NAME_COMMAND: &str = "sc.exe config cloudbase-init obj= LocalSystem";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiveFile {
    System,
    Software,
}

impl HiveFile {
    pub fn path(self) -> &'static str {
        match self {
            HiveFile::System => SYSTEM_HIVE,
            HiveFile::Software => SOFTWARE_HIVE,
        }
    }
}

/// One DWORD `doctor --fix` sets: which hive, the key's path below the
/// hive's root, the value, what it holds and what it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DwordFix {
    pub hive: HiveFile,
    pub key: String,
    pub value: String,
    pub from: u32,
    pub to: u32,
}

impl DwordFix {
    /// The writer's request for this fix (see `registry::set_dwords`).
    pub fn write(&self) -> DwordWrite {
        DwordWrite {
            key: self.key.clone(),
            value: self.value.clone(),
            to: self.to,
        }
    }
}

/// What the registry checks found.
#[derive(Debug, Clone, Default)]
pub struct RegistryReport {
    pub findings: Vec<Finding>,
    /// The DWORD edits that fix error findings, in finding order.
    pub fixes: Vec<DwordFix>,
    /// `ControlSet00N`, the set Windows boots (from `Select\Current`).
    pub control_set: Option<String>,
    /// The live install's `ImagePath` (which Cloudbase-Init runs: 64-bit
    /// `Program Files` or 32-bit `Program Files (x86)`).
    pub image_path: Option<String>,
    /// Where that install and its conf file are, from `ImagePath`.
    pub live_install: Option<LiveInstall>,
}

/// The install the service runs, as paths relative to the Windows volume's
/// root with `/` separators (`Program Files/Cloudbase Solutions/Cloudbase-Init`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveInstall {
    /// The install directory: the part of the program's path before its
    /// `bin` or `Python` directory.
    pub install_dir: String,
    /// The `--config-file` the service passes, if any.
    pub config_file: Option<String>,
}

/// Reads the service's command line: `"C:\...\Cloudbase-Init\bin\OpenStackService.exe"
/// cloudbase-init "C:\...\Python\Scripts\cloudbase-init.exe" --config-file
/// "C:\...\conf\cloudbase-init.conf"` (the installer's form) or just the
/// program. `None` when no path under a drive is found.
pub fn live_install(image_path: &str) -> Option<LiveInstall> {
    let line = image_path.trim_start();
    // An unquoted program path may hold spaces: Windows tries each prefix;
    // the program is the part up to `.exe`.
    let unquoted_program = (!line.starts_with('"'))
        .then(|| {
            line.to_ascii_lowercase()
                .find(".exe")
                .map(|end| &line[..end + 4])
        })
        .flatten();
    let words = command_words(line);
    let program = volume_relative(unquoted_program.or(words.first().map(String::as_str))?)?;
    let lower = program.to_ascii_lowercase();
    let cut = ["/bin/", "/python/"]
        .iter()
        .filter_map(|dir| lower.find(dir))
        .min()?;
    let config_file = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("--config-file"))
        .and_then(|i| words.get(i + 1))
        .and_then(|w| volume_relative(w));
    Some(LiveInstall {
        install_dir: program[..cut].to_string(),
        config_file,
    })
}

/// Splits a Windows command line on spaces outside double quotes.
fn command_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `C:\Program Files\X` → `Program Files/X`; `%SystemRoot%\...` and
/// relative paths → `None`.
fn volume_relative(path: &str) -> Option<String> {
    let rest = path
        .get(2..)
        .filter(|_| path.as_bytes().get(1) == Some(&b':'))?;
    let rest = rest.trim_start_matches('\\');
    (!rest.is_empty()).then(|| rest.replace('\\', "/"))
}

// The ids these checks raise; a test keeps them and findings/windows.yaml equal.
finding_ids! {
    HiveUnreadable = "registry-hive-unreadable",
    NoCurrentControlSet = "registry-no-current-control-set",
    ServiceMissing = "cloudbase-init-service-missing",
    ServiceNotAutomatic = "cloudbase-init-service-not-automatic",
    ServiceAutomatic = "cloudbase-init-service-automatic",
    NotLocalSystem = "cloudbase-init-not-local-system",
    LocalSystem = "cloudbase-init-runs-as-local-system",
    ImagePathMissing = "cloudbase-init-image-path-missing",
    ImagePath = "cloudbase-init-image-path",
    LocalScriptsNotRerun = "local-scripts-plugin-not-2",
    LocalScriptsOk = "local-scripts-plugin-ok",
    CdromDriverDisabled = "cdrom-driver-disabled",
    CdromDriverMissing = "cdrom-driver-missing",
    CdromDriverOk = "cdrom-driver-enabled",
    CdromFilterMissing = "cdrom-filter-service-missing",
    CdromFilterDisabled = "cdrom-filter-service-disabled",
    CdromFiltersOk = "cdrom-filters-ok",
    CdromDeviceDisabled = "cdrom-device-disabled",
    CdromDevicesOk = "cdrom-devices-enabled",
    RemovableStorageDenied = "removable-storage-policy-denies-cdrom",
    RemovableStorageOk = "removable-storage-policy-allows-cdrom",
}

struct Checks<'t> {
    texts: &'t Texts,
    report: RegistryReport,
}

impl Checks<'_> {
    fn raise(&mut self, id: Id, hive: HiveFile, detail: impl Into<String>, fix: Option<String>) {
        let finding =
            self.texts
                .finding(id.as_str(), detail, Some(Evidence::file(hive.path())), fix);
        self.report.findings.push(finding);
    }

    /// A damaged part of a hive is a finding, and the other checks go on.
    fn unreadable(&mut self, hive: HiveFile, error: HiveError) {
        self.raise(Id::HiveUnreadable, hive, error.to_string(), None);
    }
}

/// Runs every registry check on the parsed SYSTEM and SOFTWARE hives.
pub fn check(system: &Hive<'_>, software: &Hive<'_>, texts: &Texts) -> RegistryReport {
    let mut checks = Checks {
        texts,
        report: RegistryReport::default(),
    };
    match current_control_set(system) {
        Ok(Some((name, set))) => {
            checks.report.control_set = Some(name.clone());
            if let Err(e) = check_service(&mut checks, &name, &set) {
                checks.unreadable(HiveFile::System, e);
            }
            if let Err(e) = check_cdrom(&mut checks, &name, &set) {
                checks.unreadable(HiveFile::System, e);
            }
            if let Err(e) = check_cdrom_devices(&mut checks, &set) {
                checks.unreadable(HiveFile::System, e);
            }
        }
        Ok(None) => checks.raise(
            Id::NoCurrentControlSet,
            HiveFile::System,
            "Select\\Current names no ControlSet00N key",
            None,
        ),
        Err(e) => checks.unreadable(HiveFile::System, e),
    }
    if let Err(e) = check_local_scripts(&mut checks, software) {
        checks.unreadable(HiveFile::Software, e);
    }
    if let Err(e) = check_removable_storage_policy(&mut checks, software) {
        checks.unreadable(HiveFile::Software, e);
    }
    checks.report
}

/// The control set Windows boots: `ControlSet00N` with N from `Select\Current`.
pub fn current_control_set<'h>(
    system: &'h Hive<'_>,
) -> Result<Option<(String, Key<'h>)>, HiveError> {
    let Some(select) = system.open("Select")? else {
        return Ok(None);
    };
    let Some(current) = select.dword("Current")? else {
        return Ok(None);
    };
    let name = format!("ControlSet{current:03}");
    Ok(system.open(&name)?.map(|key| (name, key)))
}

fn start_meaning(start: u32) -> &'static str {
    match start {
        0 => "Boot",
        1 => "System",
        2 => "Automatic",
        3 => "Manual",
        4 => "Disabled",
        _ => "not a start type",
    }
}

fn check_service(checks: &mut Checks, set_name: &str, set: &Key) -> Result<(), HiveError> {
    const SYS: HiveFile = HiveFile::System;
    let path = format!("{set_name}\\Services\\cloudbase-init");
    let Some(service) = set.open("Services\\cloudbase-init")? else {
        checks.raise(Id::ServiceMissing, SYS, format!("no key {path}"), None);
        return Ok(());
    };
    match service.dword("Start")? {
        Some(START_AUTOMATIC) => {
            let delayed = service.dword("DelayedAutostart")? == Some(1);
            let detail = if delayed {
                format!(
                    "{path}\\Start = 2 with DelayedAutostart = 1: Automatic (Delayed Start), Cloudbase-Init starts a minute or two after boot"
                )
            } else {
                format!("{path}\\Start = 2 (Automatic)")
            };
            checks.raise(Id::ServiceAutomatic, SYS, detail, None);
        }
        Some(start) => {
            checks.raise(
                Id::ServiceNotAutomatic,
                SYS,
                format!("{path}\\Start = {start} ({})", start_meaning(start)),
                None,
            );
            checks.report.fixes.push(DwordFix {
                hive: SYS,
                key: path.clone(),
                value: "Start".into(),
                from: start,
                to: START_AUTOMATIC,
            });
        }
        None => checks.raise(
            Id::ServiceNotAutomatic,
            SYS,
            format!("{path}\\Start is missing or not a REG_DWORD"),
            Some(r"sc.exe config cloudbase-init start= auto (in Windows)".into()),
        ),
    }
    // A service without ObjectName runs as LocalSystem.
    match service.string("ObjectName")? {
        Some(name) if !names_equal(&name, "LocalSystem") => checks.raise(
            Id::NotLocalSystem,
            SYS,
            format!("{path}\\ObjectName = {name}"),
            Some(format!(
                "in Windows, as Administrator: {OBJECT_NAME_COMMAND}"
            )),
        ),
        name => checks.raise(
            Id::LocalSystem,
            SYS,
            format!(
                "{path}\\ObjectName = {}",
                name.as_deref().unwrap_or("(not set: LocalSystem)")
            ),
            None,
        ),
    }
    match service.string("ImagePath")? {
        Some(image) if !image.trim().is_empty() => {
            checks.raise(
                Id::ImagePath,
                SYS,
                format!("{path}\\ImagePath = {image}"),
                None,
            );
            checks.report.live_install = live_install(&image);
            checks.report.image_path = Some(image);
        }
        _ => checks.raise(
            Id::ImagePathMissing,
            SYS,
            format!("{path}\\ImagePath is missing or empty"),
            None,
        ),
    }
    Ok(())
}

/// Where Cloudbase-Init keeps each plugin's state, per instance: 64-bit
/// installs under the first, 32-bit ones under WOW6432Node.
const PLUGIN_STATE_ROOTS: [&str; 2] = [
    "Cloudbase Solutions\\Cloudbase-Init",
    "WOW6432Node\\Cloudbase Solutions\\Cloudbase-Init",
];

fn check_local_scripts(checks: &mut Checks, software: &Hive) -> Result<(), HiveError> {
    const SOFT: HiveFile = HiveFile::Software;
    let mut seen = Vec::new();
    for root in PLUGIN_STATE_ROOTS {
        let Some(state) = software.open(root)? else {
            continue;
        };
        for instance in state.subkeys()? {
            let Some(plugins) = instance.subkey("Plugins")? else {
                continue;
            };
            let path = format!("{root}\\{}\\Plugins", instance.name());
            let Some(value) = plugins.value("LocalScriptsPlugin")? else {
                continue;
            };
            match plugins.dword("LocalScriptsPlugin")? {
                Some(PLUGIN_RUN_AGAIN) => seen.push(format!("{path}\\LocalScriptsPlugin = 2")),
                Some(status) => {
                    checks.raise(
                        Id::LocalScriptsNotRerun,
                        SOFT,
                        format!("{path}\\LocalScriptsPlugin = {status}"),
                        None,
                    );
                    checks.report.fixes.push(DwordFix {
                        hive: SOFT,
                        key: path,
                        value: value.name(),
                        from: status,
                        to: PLUGIN_RUN_AGAIN,
                    });
                }
                None => checks.raise(
                    Id::LocalScriptsNotRerun,
                    SOFT,
                    format!("{path}\\LocalScriptsPlugin is not a REG_DWORD"),
                    Some(format!("in Windows: reg add \"HKLM\\SOFTWARE\\{path}\" /v LocalScriptsPlugin /t REG_DWORD /d 2 /f")),
                ),
            }
        }
    }
    if !checks
        .report
        .findings
        .iter()
        .any(|f| f.id == Id::LocalScriptsNotRerun.as_str())
    {
        let detail = if seen.is_empty() {
            "no LocalScriptsPlugin state stored yet (Cloudbase-Init has not run): it will run"
                .to_string()
        } else {
            seen.join("; ")
        };
        checks.raise(Id::LocalScriptsOk, SOFT, detail, None);
    }
    Ok(())
}

fn check_cdrom(checks: &mut Checks, set_name: &str, set: &Key) -> Result<(), HiveError> {
    const SYS: HiveFile = HiveFile::System;
    let services = set.subkey("Services")?;
    let service = |name: &str| -> Result<Option<Key>, HiveError> {
        match &services {
            Some(s) => s.subkey(name),
            None => Ok(None),
        }
    };
    let path = format!("{set_name}\\Services\\cdrom");
    match service("cdrom")? {
        None => checks.raise(Id::CdromDriverMissing, SYS, format!("no key {path}"), None),
        Some(cdrom) => match cdrom.dword("Start")? {
            Some(START_DISABLED) => {
                checks.raise(
                    Id::CdromDriverDisabled,
                    SYS,
                    format!("{path}\\Start = 4 (Disabled)"),
                    None,
                );
                checks.report.fixes.push(DwordFix {
                    hive: SYS,
                    key: path,
                    value: "Start".into(),
                    from: START_DISABLED,
                    to: CDROM_START_DEFAULT,
                });
            }
            start => checks.raise(
                Id::CdromDriverOk,
                SYS,
                match start {
                    Some(n) => format!("{path}\\Start = {n} ({})", start_meaning(n)),
                    None => format!("{path}\\Start not set"),
                },
                None,
            ),
        },
    }

    let class_path = format!("{set_name}\\Control\\Class\\{CDROM_CLASS}");
    let mut problems = 0;
    let mut named = Vec::new();
    if let Some(class) = set.open(&format!("Control\\Class\\{CDROM_CLASS}"))? {
        for list in ["UpperFilters", "LowerFilters"] {
            for filter in class.strings(list)?.unwrap_or_default() {
                let filter = filter.trim().to_string();
                if filter.is_empty() {
                    continue;
                }
                let where_ = format!("{class_path}\\{list} names `{filter}`");
                match service(&filter)? {
                    None => {
                        problems += 1;
                        checks.raise(
                            Id::CdromFilterMissing,
                            SYS,
                            format!("{where_}, which has no key under {set_name}\\Services"),
                            None,
                        );
                    }
                    Some(key) if key.dword("Start")? == Some(START_DISABLED) => {
                        problems += 1;
                        checks.raise(
                            Id::CdromFilterDisabled,
                            SYS,
                            format!("{where_}, whose Start is 4 (Disabled)"),
                            None,
                        );
                    }
                    Some(_) => named.push(format!("{list}: {filter}")),
                }
            }
        }
    }
    if problems == 0 {
        let detail = if named.is_empty() {
            format!("{class_path} has no Upper/LowerFilters")
        } else {
            format!("{class_path}: {}", named.join(", "))
        };
        checks.raise(Id::CdromFiltersOk, SYS, detail, None);
    }
    Ok(())
}

/// Device instances under `Enum\<enumerator>\<device>\<instance>` whose
/// class is CD-ROM, checked for the disabled bit in `ConfigFlags` (an
/// internal flag, so a warning). Visits a bounded number of keys.
fn check_cdrom_devices(checks: &mut Checks, set: &Key) -> Result<(), HiveError> {
    const SYS: HiveFile = HiveFile::System;
    let Some(enum_key) = set.subkey("Enum")? else {
        checks.raise(
            Id::CdromDevicesOk,
            SYS,
            "no Enum key: no device installed yet",
            None,
        );
        return Ok(());
    };
    let mut visited = 0usize;
    let mut found = 0usize;
    let mut disabled = 0usize;
    'walk: for enumerator in enum_key.subkeys()? {
        for device in enumerator.subkeys()? {
            for instance in device.subkeys()? {
                visited += 1;
                if visited > MAX_ENUM_KEYS {
                    break 'walk;
                }
                let is_cdrom = instance
                    .string("ClassGUID")?
                    .is_some_and(|g| names_equal(g.trim(), CDROM_CLASS))
                    || instance
                        .string("Class")?
                        .is_some_and(|c| names_equal(&c, "CDROM"));
                if !is_cdrom {
                    continue;
                }
                found += 1;
                let flags = instance.dword("ConfigFlags")?.unwrap_or(0);
                if flags & CONFIGFLAG_DISABLED != 0 {
                    disabled += 1;
                    checks.raise(
                        Id::CdromDeviceDisabled,
                        SYS,
                        format!(
                            "Enum\\{}\\{}\\{}\\ConfigFlags = {flags:#x} (disabled)",
                            enumerator.name(),
                            device.name(),
                            instance.name()
                        ),
                        None,
                    );
                }
            }
        }
    }
    if disabled == 0 {
        let detail = if found == 0 {
            "no CD-ROM device instance yet: Windows installs one when it sees the drive".to_string()
        } else {
            format!("{found} CD-ROM device instance(s), none disabled")
        };
        checks.raise(Id::CdromDevicesOk, SYS, detail, None);
    }
    Ok(())
}

fn check_removable_storage_policy(checks: &mut Checks, software: &Hive) -> Result<(), HiveError> {
    const SOFT: HiveFile = HiveFile::Software;
    const POLICY: &str = "Policies\\Microsoft\\Windows\\RemovableStorageDevices";
    let mut denied = false;
    for (key, value) in [
        (format!("{POLICY}\\{CDROM_POLICY_CLASS}"), "Deny_Read"),
        (POLICY.to_string(), "Deny_All"),
    ] {
        let Some(policy) = software.open(&key)? else {
            continue;
        };
        if let Some(n) = policy.dword(value)?
            && n != 0
        {
            denied = true;
            checks.raise(
                Id::RemovableStorageDenied,
                SOFT,
                format!("{key}\\{value} = {n}"),
                None,
            );
        }
    }
    if !denied {
        checks.raise(
            Id::RemovableStorageOk,
            SOFT,
            "no Removable Storage Access policy denies reading CDs",
            None,
        );
    }
    Ok(())
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
