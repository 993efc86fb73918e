//! The doctor's checks of `cloudbase-init.conf`, as pure functions over the
//! file's text: the config drive is among the metadata services,
//! LocalScriptsPlugin still runs, its scripts directory is there and holds
//! scripts, and the log lands where the cloud's guide says to look. The
//! words are in `findings/windows.yaml` (the Cloudbase-Init conf section).

use std::path::{Path, PathBuf};

use crate::doctor::{Evidence, Finding, Texts};
use crate::guest::cloudbase::conf::{self, Conf, class_name};
use crate::guest::cloudbase::plan::{LOCAL_SCRIPTS_PLUGIN, effective_plugins};

/// Every finding id these checks raise (a unit test keeps them and
/// `findings/windows.yaml` in step).
pub const IDS: &[&str] = &[
    CONF_MISSING,
    "cloudbase-conf-unparsable",
    "cloudbase-configdrive-service",
    "cloudbase-configdrive-service-missing",
    "cloudbase-localscripts-plugin",
    "cloudbase-localscripts-plugin-dropped",
    "cloudbase-local-scripts",
    "cloudbase-local-scripts-path-unset",
    "cloudbase-local-scripts-path-elsewhere",
    "cloudbase-local-scripts-missing",
    "cloudbase-local-scripts-empty",
    "cloudbase-log-path",
    "cloudbase-log-path-elsewhere",
    "cloudbase-log-not-written",
];

/// The config drive's metadata service: the cloud's metadata arrives on it.
/// Cloudbase-Init imports each service by its full path (no old names are
/// mapped for services), so the path must be exact.
/// No `cloudbase-init.conf` where the live install (or the installer) keeps it.
pub const CONF_MISSING: &str = "cloudbase-conf-missing";

pub const CONFIG_DRIVE_SERVICE: &str =
    "cloudbaseinit.metadata.services.configdrive.ConfigDriveService";

/// Cloudbase-Init's default `metadata_services` (release 1.1.8): used when
/// the file sets none. It includes the config drive.
pub const DEFAULT_METADATA_SERVICES: [&str; 6] = [
    "cloudbaseinit.metadata.services.httpservice.HttpService",
    CONFIG_DRIVE_SERVICE,
    "cloudbaseinit.metadata.services.ec2service.EC2Service",
    "cloudbaseinit.metadata.services.maasservice.MaaSHttpService",
    "cloudbaseinit.metadata.services.cloudstack.CloudStack",
    "cloudbaseinit.metadata.services.opennebulaservice.OpenNebulaService",
];

/// oslo.log's options, each with its deprecated name (older installers and
/// guides write `logdir`/`logfile`); the first name set wins.
pub const LOG_FILE_NAMES: [&str; 2] = ["log_file", "logfile"];
pub const LOG_DIR_NAMES: [&str; 2] = ["log_dir", "logdir"];

/// Where the cloud's guide says Cloudbase-Init's log is.
pub const GUIDE_LOG_PATH: &str =
    r"C:\Program Files\Cloudbase Solutions\Cloudbase-Init\log\cloudbase-init.log";

/// What the caller found at a directory inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    Missing,
    NotADirectory,
    /// A directory without a regular file directly in it (LocalScriptsPlugin
    /// runs only the files directly in it, not subdirectories).
    NoFiles,
    HasFiles,
}

/// The first of `names` set in `[DEFAULT]` (the option, then its deprecated
/// name, as oslo.config looks them up), with its assignment.
pub fn default_string<'c>(conf: &'c Conf, names: &[&str]) -> Option<&'c conf::Assignment> {
    names
        .iter()
        .find_map(|n| conf.get(conf::DEFAULT_SECTION, n))
}

/// A Windows path on the system drive (`C:\...` or `\...`) as a path
/// relative to the Windows volume's root; `None` for another drive, a
/// relative path or a UNC path.
pub fn system_drive_relative(windows_path: &str) -> Option<PathBuf> {
    let rest = match windows_path.as_bytes() {
        [d, b':', b'\\' | b'/', ..] if d.eq_ignore_ascii_case(&b'c') => &windows_path[3..],
        [b'\\' | b'/', second, ..] if *second != b'\\' && *second != b'/' => &windows_path[1..],
        _ => return None,
    };
    Some(
        rest.split(['\\', '/'])
            .filter(|part| !part.is_empty() && *part != ".")
            .collect(),
    )
}

/// Where oslo.log writes, as `os.path.join(log_dir, log_file)` does on
/// Windows (an absolute file name wins); `None` when nothing is written to a
/// file; `<program>.log` when only the directory is set (oslo.log then
/// names the file after the program).
fn log_path(conf: &Conf) -> (Option<String>, Option<usize>) {
    let file = default_string(conf, &LOG_FILE_NAMES);
    let dir = default_string(conf, &LOG_DIR_NAMES);
    let line = file.or(dir).map(conf::Assignment::line);
    let path = match (file, dir) {
        (Some(f), _) if f.value.is_empty() => None,
        (Some(f), Some(d)) if !d.value.is_empty() && !is_absolute_windows(&f.value) => Some(
            format!("{}\\{}", d.value.trim_end_matches(['\\', '/']), f.value),
        ),
        (Some(f), _) => Some(f.value.clone()),
        // oslo.log then names the file after the program.
        (None, Some(d)) if !d.value.is_empty() => Some(format!(
            "{}\\<program>.log",
            d.value.trim_end_matches(['\\', '/'])
        )),
        _ => None,
    };
    (path, line)
}

/// `C:...`, `\\...` or `/...`: `os.path.join` on Windows then ignores the
/// directory.
fn is_absolute_windows(path: &str) -> bool {
    path.as_bytes().get(1) == Some(&b':') || path.starts_with(['\\', '/'])
}

fn same_windows_path(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.split(['\\', '/'])
            .filter(|p| !p.is_empty())
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
    };
    norm(a) == norm(b)
}

/// Checks `cloudbase-init-unattend.conf`, the run during sysprep's
/// specialize pass on the instance's first boot: it must parse and find the
/// config drive. Its plugin list is short by design (no LocalScriptsPlugin:
/// the service's run has it), and its log is its own, so only these apply.
pub fn check_unattend(texts: &Texts, path: &Path, text: &str) -> Vec<Finding> {
    match parse_and_find_config_drive(texts, path, text) {
        Ok((_, findings)) | Err(findings) => findings,
    }
}

/// The conf file parsed, with the metadata_services finding; or the
/// unparsable finding alone.
fn parse_and_find_config_drive(
    texts: &Texts,
    path: &Path,
    text: &str,
) -> Result<(Conf, Vec<Finding>), Vec<Finding>> {
    let at = |line: Option<usize>| match line {
        Some(l) => Evidence::line(path, l),
        None => Evidence::file(path),
    };
    let conf = match conf::parse(text) {
        Ok(c) => c,
        Err(e) => {
            return Err(vec![texts.finding(
                "cloudbase-conf-unparsable",
                e.message,
                Some(Evidence::line(path, e.line)),
                None,
            )]);
        }
    };
    let mut findings = Vec::new();

    match conf.get(conf::DEFAULT_SECTION, "metadata_services") {
        None => findings.push(texts.finding(
            "cloudbase-configdrive-service",
            "metadata_services is not set: the default services include ConfigDriveService",
            Some(at(None)),
            None,
        )),
        Some(a) => {
            let services = conf::list_items(&a.value);
            if services.iter().any(|s| s == CONFIG_DRIVE_SERVICE) {
                findings.push(texts.finding(
                    "cloudbase-configdrive-service",
                    "metadata_services includes ConfigDriveService",
                    Some(at(Some(a.line()))),
                    None,
                ));
            } else {
                let listed = if services.is_empty() {
                    "none".to_string()
                } else {
                    services
                        .iter()
                        .map(|s| class_name(s))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                findings.push(texts.finding(
                    "cloudbase-configdrive-service-missing",
                    format!("metadata_services lists {listed}"),
                    Some(at(Some(a.line()))),
                    None,
                ));
            }
        }
    }

    Ok((conf, findings))
}

/// Checks `cloudbase-init.conf` (`path` root-relative, `text` its contents).
/// `probe` says what is at a root-relative directory of the image (the path
/// as the conf spells it: NTFS compares names case-insensitively, so the
/// caller resolves case).
pub fn check_conf(
    texts: &Texts,
    path: &Path,
    text: &str,
    probe: &dyn Fn(&Path) -> DirState,
) -> Vec<Finding> {
    let at = |line: Option<usize>| match line {
        Some(l) => Evidence::line(path, l),
        None => Evidence::file(path),
    };
    let (conf, mut findings) = match parse_and_find_config_drive(texts, path, text) {
        Ok(found) => found,
        Err(unparsable) => return unparsable,
    };
    let (plugins, plugins_line) = effective_plugins(&conf);
    if plugins
        .iter()
        .any(|p| class_name(p) == LOCAL_SCRIPTS_PLUGIN)
    {
        let detail = match plugins_line {
            Some(_) => "plugins= includes LocalScriptsPlugin",
            None => "plugins is not set: the default plugins include LocalScriptsPlugin",
        };
        findings.push(texts.finding(
            "cloudbase-localscripts-plugin",
            detail,
            Some(at(plugins_line)),
            None,
        ));
    } else {
        findings.push(texts.finding(
            "cloudbase-localscripts-plugin-dropped",
            "plugins= does not list LocalScriptsPlugin",
            Some(at(plugins_line)),
            None,
        ));
    }

    match conf.get(conf::DEFAULT_SECTION, "local_scripts_path") {
        Some(a) if !a.value.is_empty() => {
            let evidence = Some(at(Some(a.line())));
            match system_drive_relative(&a.value) {
                None => findings.push(texts.finding(
                    "cloudbase-local-scripts-path-elsewhere",
                    format!("local_scripts_path is {}", a.value),
                    evidence,
                    None,
                )),
                Some(dir) => {
                    let (id, what) = match probe(&dir) {
                        DirState::Missing => ("cloudbase-local-scripts-missing", "does not exist"),
                        DirState::NotADirectory => {
                            ("cloudbase-local-scripts-missing", "is not a directory")
                        }
                        DirState::NoFiles => ("cloudbase-local-scripts-empty", "holds no file"),
                        DirState::HasFiles => ("cloudbase-local-scripts", "holds scripts"),
                    };
                    findings.push(texts.finding(
                        id,
                        format!("local_scripts_path {} {what}", a.value),
                        evidence,
                        None,
                    ));
                }
            }
        }
        other => findings.push(texts.finding(
            "cloudbase-local-scripts-path-unset",
            "local_scripts_path is not set",
            Some(at(other.map(conf::Assignment::line))),
            None,
        )),
    }

    match log_path(&conf) {
        (None, line) => findings.push(texts.finding(
            "cloudbase-log-not-written",
            "neither log_file nor logfile is set",
            Some(at(line)),
            None,
        )),
        (Some(p), line) if same_windows_path(&p, GUIDE_LOG_PATH) => findings.push(texts.finding(
            "cloudbase-log-path",
            format!("the log is {p}"),
            Some(at(line)),
            None,
        )),
        (Some(p), line) => findings.push(texts.finding(
            "cloudbase-log-path-elsewhere",
            format!("the log is {p}, not {GUIDE_LOG_PATH}"),
            Some(at(line)),
            None,
        )),
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOWS_FINDINGS: &str = include_str!("../../../../findings/windows.yaml");

    fn ids(text: &str, state: DirState) -> Vec<String> {
        let texts = Texts::parse(WINDOWS_FINDINGS).unwrap();
        check_conf(&texts, Path::new("c.conf"), text, &|_| state)
            .into_iter()
            .map(|f| f.id)
            .collect()
    }

    /// The conf Cloudbase-Init's installer writes (tests/fixtures/cloudbase).
    const GOOD: &str = include_str!("../../../../tests/fixtures/cloudbase/cloudbase-init.conf");

    #[test]
    fn every_id_has_its_text() {
        let texts = Texts::parse(WINDOWS_FINDINGS).unwrap();
        for id in IDS {
            assert!(
                texts.get(id).is_some(),
                "{id} has a text in findings/windows.yaml"
            );
        }
    }

    #[test]
    fn good_and_bad_cases() {
        assert_eq!(
            ids(GOOD, DirState::HasFiles),
            [
                "cloudbase-configdrive-service",
                "cloudbase-localscripts-plugin",
                "cloudbase-local-scripts",
                "cloudbase-log-path"
            ]
        );
        let bad = "[DEFAULT]\nmetadata_services=cloudbaseinit.metadata.services.httpservice.HttpService\n\
            plugins=cloudbaseinit.plugins.common.mtu.MTUPlugin\nlog_dir=D:\\logs\n";
        assert_eq!(
            ids(bad, DirState::HasFiles),
            [
                "cloudbase-configdrive-service-missing",
                "cloudbase-localscripts-plugin-dropped",
                "cloudbase-local-scripts-path-unset",
                "cloudbase-log-path-elsewhere"
            ]
        );
        assert!(
            ids(GOOD, DirState::Missing).contains(&"cloudbase-local-scripts-missing".to_string())
        );
        assert!(
            ids(GOOD, DirState::NoFiles).contains(&"cloudbase-local-scripts-empty".to_string())
        );
        assert_eq!(
            ids("[DEFAULT]\n\n x\n", DirState::HasFiles),
            ["cloudbase-conf-unparsable"]
        );
        assert!(
            ids("[DEFAULT]\n", DirState::HasFiles)
                .contains(&"cloudbase-log-not-written".to_string())
        );
    }

    #[test]
    fn log_file_wins_over_logfile_and_evidence_has_lines() {
        let texts = Texts::parse(WINDOWS_FINDINGS).unwrap();
        let text = format!("{GOOD}log_file=D:\\x.log\r\n");
        let f = check_conf(&texts, Path::new("c.conf"), &text, &|_| DirState::HasFiles);
        let log = f
            .iter()
            .find(|f| f.id.starts_with("cloudbase-log"))
            .unwrap();
        assert_eq!(log.id, "cloudbase-log-path-elsewhere");
        assert_eq!(log.evidence.as_ref().unwrap().to_string(), "c.conf:20");
    }

    #[test]
    fn system_drive_paths() {
        assert_eq!(
            system_drive_relative(r"c:\Program Files\X\\LocalScripts\"),
            Some(PathBuf::from("Program Files/X/LocalScripts"))
        );
        assert_eq!(
            system_drive_relative(r"\Scripts"),
            Some(PathBuf::from("Scripts"))
        );
        assert_eq!(system_drive_relative(r"D:\Scripts"), None);
        assert_eq!(system_drive_relative(r"\\server\share"), None);
        assert_eq!(system_drive_relative("Scripts"), None);
    }

    #[test]
    fn the_unattend_file_is_checked_for_parsing_and_the_config_drive_only() {
        let texts = Texts::parse(WINDOWS_FINDINGS).unwrap();
        let ids = |text: &str| -> Vec<String> {
            check_unattend(&texts, Path::new("u.conf"), text)
                .into_iter()
                .map(|f| f.id)
                .collect()
        };
        let installer =
            include_str!("../../../../tests/fixtures/cloudbase/cloudbase-init-unattend.conf");
        assert_eq!(ids(installer), ["cloudbase-configdrive-service"]);
        assert_eq!(
            ids("[DEFAULT]\nmetadata_services=a.B\n"),
            ["cloudbase-configdrive-service-missing"]
        );
        assert_eq!(ids("x\n"), ["cloudbase-conf-unparsable"]);
    }
}
