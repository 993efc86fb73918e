//! `prepare-image doctor` for cloud-init: everything in an image that will
//! break cloud-init at first boot (or Tencent Cloud's import), found offline.
//!
//! Every check reads through the confined [`Root`], so a hostile link in the
//! image never reaches the host. The words of each finding are data
//! (`findings/linux.yaml`); the checks only pick an id, the evidence and the
//! specifics.

mod boot;
mod datasource;
mod import;
mod initramfs;
pub mod leftovers;
pub mod marker;
mod python;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::access::image::open::ImageInfo;
use crate::access::root::Root;
use crate::doctor::{Evidence, Finding, Texts, finding_ids};
use crate::guest::cloudinit::document::Value;

pub use python::{ShebangFix, fix_shebangs};

/// The most of any one file the checks read: the text they look for is near
/// the start, and an image's file may be huge.
pub(crate) const TEXT_LIMIT: u64 = 16 << 20;

const TEXTS: &str = include_str!("../../../findings/linux.yaml");
const PYTHON_DATA: &str = include_str!("../../../findings/linux-python.yaml");

finding_ids! {
    NotInstalled = "cloud-init-not-installed",
    Installed = "cloud-init-installed",
    EntryMissing = "cloud-init-entry-missing",
    DependencyMissing = "python-dependency-missing",
    DependenciesInstalled = "python-dependencies-installed",
    InterpreterMissing = "entry-interpreter-missing",
    InterpreterWithoutCloudInit = "entry-interpreter-without-cloud-init",
    ShebangThroughPythonLink = "entry-shebang-through-python-link",
    ShebangOk = "entry-shebang-ok",
    ConfigUnparsable = "config-unparsable",
    CloudCfgMissing = "cloud-cfg-missing",
    DisabledFile = "cloud-init-disabled-file",
    DisabledKernelCmdline = "cloud-init-disabled-kernel-cmdline",
    DsIdentifyDisabled = "ds-identify-disabled",
    UnitMasked = "cloud-init-unit-masked",
    UnitNotEnabled = "cloud-init-unit-not-enabled",
    UnitsMissing = "cloud-init-units-missing",
    Enabled = "cloud-init-enabled",
    DatasourceNoneOnly = "datasource-list-none-only",
    DatasourceNoneUsable = "datasource-none-usable",
    DatasourceUnknown = "datasource-not-in-this-cloud-init",
    DatasourceWithoutConfigDrive = "datasource-without-configdrive",
    DatasourceOk = "datasource-ok",
    PreviousInstance = "previous-instance-state",
    LogsLeft = "cloud-init-logs-left",
    NoPreviousInstance = "no-previous-instance",
    MachineIdSet = "machine-id-set",
    HostKeysShared = "ssh-host-keys-shared",
    HostKeysMissing = "ssh-host-keys-missing",
    HostKeysOk = "ssh-host-keys-ok",
    FstabDeviceName = "fstab-device-name",
    NicPinnedToMac = "nic-pinned-to-mac",
    VirtioMissing = "virtio-driver-missing",
    KernelConfigNotFound = "kernel-config-not-found",
    InitramfsUnreadable = "initramfs-unreadable",
    ImportFilesOk = "import-files-ok",
    VirtioPresent = "virtio-drivers-present",
    ImageFormatNotImportable = "image-format-not-importable",
    ImageTooLarge = "image-too-large",
    ImageFileOk = "image-file-importable",
}

/// The built-in texts of the Linux findings.
pub fn texts() -> Texts {
    // Checked by the tests below; a broken file is a build defect, never input.
    Texts::parse(TEXTS).expect("findings/linux.yaml is valid")
}

/// What the checks share: the root, the texts, the distribution, and what was
/// found of cloud-init.
pub(crate) struct Context<'a> {
    pub root: &'a Root,
    pub texts: &'a Texts,
    pub os: OsRelease,
    pub python_data: Value,
    pub findings: Vec<Finding>,
}

impl Context<'_> {
    pub fn report(
        &mut self,
        id: Id,
        detail: impl Into<String>,
        evidence: Option<Evidence>,
        fix: Option<String>,
    ) {
        let finding = self.texts.finding(id.as_str(), detail, evidence, fix);
        self.findings.push(finding);
    }

    /// A file's text (invalid UTF-8 replaced) and its resolved path, or
    /// `None` when it is missing or not a regular file.
    pub fn read(&self, rel: &str) -> Option<(PathBuf, String)> {
        let contents = self
            .root
            .read_file_prefix(Path::new(rel), TEXT_LIMIT)
            .ok()?;
        Some((
            contents.path,
            String::from_utf8_lossy(&contents.bytes).into_owned(),
        ))
    }

    /// The names in a directory; empty when it is missing or unreadable.
    pub fn names(&self, rel: &str) -> Vec<String> {
        dir_names(self.root, Path::new(rel))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.root.exists(Path::new(rel))
    }
}

/// The names in a directory, sorted; empty when it is missing or unreadable.
pub(crate) fn dir_names(root: &Root, rel: &Path) -> Vec<String> {
    root.list_dir(rel)
        .ok()
        .flatten()
        .into_iter()
        .flatten()
        .filter_map(|e| e.name.into_string().ok())
        .collect()
}

/// `/etc/os-release`: ID and ID_LIKE, which choose the package names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub id_like: Vec<String>,
}

impl OsRelease {
    pub fn parse(text: &str) -> OsRelease {
        let mut os = OsRelease::default();
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
            match key.trim() {
                "ID" => os.id = value,
                "ID_LIKE" => os.id_like = value.split_whitespace().map(str::to_string).collect(),
                _ => {}
            }
        }
        os
    }

    /// ID first, then ID_LIKE in order: the names a family is matched on.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str()).chain(self.id_like.iter().map(String::as_str))
    }
}

/// Runs every check on the root (and, for an image file, on the file);
/// the findings in check order.
pub fn diagnose(root: &Root, image: Option<&ImageInfo>) -> Result<Vec<Finding>> {
    let texts = texts();
    let python_data = crate::guest::cloudinit::document::parse(PYTHON_DATA)
        .map(|d| d.to_value())
        .expect("findings/linux-python.yaml is valid");
    let mut ctx = Context {
        root,
        texts: &texts,
        os: OsRelease::default(),
        python_data,
        findings: Vec::new(),
    };
    ctx.os = ctx
        .read("etc/os-release")
        .or_else(|| ctx.read("usr/lib/os-release"))
        .map(|(_, text)| OsRelease::parse(&text))
        .unwrap_or_default();
    let install = python::check(&mut ctx);
    if let Some(install) = &install {
        let config = datasource::check_config(&mut ctx, install);
        boot::check(&mut ctx, install);
        leftovers::check(&mut ctx, config.as_ref());
    } else {
        leftovers::check(&mut ctx, None);
    }
    import::check(&mut ctx);
    if let Some(image) = image {
        import::check_image_file(&mut ctx, image);
    }
    Ok(ctx.findings)
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Small image trees for the checks' tests.

    use std::path::Path;

    use crate::access::root::Root;
    use crate::doctor::{Finding, Severity};

    pub struct Tree {
        pub dir: tempfile::TempDir,
    }

    impl Tree {
        pub fn new() -> Tree {
            Tree {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        pub fn file(&self, rel: &str, text: &str) -> &Tree {
            let path = self.dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            self
        }

        pub fn link(&self, rel: &str, target: &str) -> &Tree {
            let path = self.dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, path).unwrap();
            self
        }

        pub fn dir(&self, rel: &str) -> &Tree {
            std::fs::create_dir_all(self.dir.path().join(rel)).unwrap();
            self
        }

        pub fn remove(&self, rel: &str) -> &Tree {
            let path = self.dir.path().join(rel);
            if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
            self
        }

        pub fn path(&self) -> &Path {
            self.dir.path()
        }

        pub fn diagnose(&self) -> Vec<Finding> {
            super::diagnose(&Root::open(self.path()).unwrap(), None).unwrap()
        }

        /// A Debian bookworm-like root with a working cloud-init 22.4.2:
        /// no finding above `ok` except the virtio/kernel one.
        pub fn debian() -> Tree {
            let t = Tree::new();
            let site = "usr/lib/python3/dist-packages";
            t.file("etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n")
                .file("usr/bin/python3.11", "")
                .link("usr/bin/python3", "python3.11")
                .link("bin", "usr/bin")
                .link("lib", "usr/lib")
                .dir("usr/lib/python3.11")
                .file(&format!("{site}/cloudinit/__init__.py", ), "")
                .file(
                    &format!("{site}/cloudinit/version.py"),
                    "# header\n\n__VERSION__ = \"22.4.2\"\n_PACKAGED_VERSION = \"@@PACKAGED_VERSION@@\"\n",
                )
                .file(&format!("{site}/cloudinit/safeyaml.py"), "import re\n\nimport yaml\n")
                .file(&format!("{site}/cloudinit/url_helper.py"), "import requests\n")
                .file(&format!("{site}/cloudinit/handlers/cloud_config.py"), "\nimport jsonpatch\n")
                .file(&format!("{site}/cloudinit/sources/DataSourceConfigDrive.py"), "")
                .file(&format!("{site}/cloudinit/sources/DataSourceNoCloud.py"), "")
                .file(&format!("{site}/cloudinit/sources/DataSourceNone.py"), "")
                .file(&format!("{site}/cloud_init-22.4.2.egg-info/PKG-INFO"), "Name: cloud-init\nVersion: 22.4.2\n")
                .file(&format!("{site}/cloud_init-22.4.2.egg-info/requires.txt"), "")
                .file(&format!("{site}/yaml/__init__.py"), "")
                .file(&format!("{site}/PyYAML-6.0.egg-info/PKG-INFO"), "Name: PyYAML\n")
                .file(&format!("{site}/requests/__init__.py"), "")
                .file(&format!("{site}/requests-2.28.1.egg-info/PKG-INFO"), "")
                .file(&format!("{site}/jsonpatch.py"), "")
                .file(&format!("{site}/jsonpatch-1.32.egg-info/PKG-INFO"), "")
                .file("usr/bin/cloud-init", "#!/usr/bin/python3\n# EASY-INSTALL-ENTRY-SCRIPT\nimport sys\n")
                .file("usr/bin/cloud-id", "#!/usr/bin/python3\nimport sys\n")
                .file("usr/bin/cloud-init-per", "#!/bin/sh\n")
                .file("usr/lib/systemd/systemd", "")
                .file("usr/lib/systemd/system-generators/cloud-init-generator", "#!/bin/sh\n")
                .file("usr/lib/systemd/system/cloud-init.target", "[Unit]\nDescription=Cloud-init target\n")
                .file(
                    "usr/lib/systemd/system/cloud-config.target",
                    "[Unit]\nWants=cloud-init-local.service cloud-init.service\n",
                );
            for unit in [
                "cloud-init-local",
                "cloud-init",
                "cloud-config",
                "cloud-final",
            ] {
                t.file(
                    &format!("usr/lib/systemd/system/{unit}.service"),
                    "[Unit]\nDescription=x\n\n[Install]\nWantedBy=cloud-init.target\n",
                )
                .link(
                    &format!("etc/systemd/system/cloud-init.target.wants/{unit}.service"),
                    &format!("/lib/systemd/system/{unit}.service"),
                );
            }
            // As shipped: cloud-config.service pulls in cloud-config.target,
            // which pulls in cloud-init-local and cloud-init.
            t.file(
                "usr/lib/systemd/system/cloud-config.service",
                "[Unit]\nWants=network-online.target cloud-config.target\n\n[Install]\nWantedBy=cloud-init.target\n",
            );
            t.file(
                "etc/cloud/cloud.cfg",
                "datasource_list: [ ConfigDrive, NoCloud, None ]\n\
                 cloud_init_modules:\n - seed_random\n - ssh\n\
                 cloud_config_modules:\n - ntp\n",
            )
            .file("etc/machine-id", "")
            .file("etc/fstab", "UUID=0a1b / ext4 errors=remount-ro 0 1\n")
            .file(
                "boot/config-6.1.0-13-amd64",
                "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_NET=y\n",
            )
            .file("etc/ssh/ssh_host_ed25519_key", "secret")
            .file("usr/sbin/sshd", "");
            t
        }
    }

    /// The findings above `ok`, as (id, severity, evidence).
    pub fn problems(findings: &[Finding]) -> Vec<(String, Severity, Option<String>)> {
        findings
            .iter()
            .filter(|f| f.severity != Severity::Ok)
            .map(|f| {
                (
                    f.id.clone(),
                    f.severity,
                    f.evidence.as_ref().map(ToString::to_string),
                )
            })
            .collect()
    }

    /// The one finding with this id; fails the test if there is not exactly one.
    pub fn the<'a>(findings: &'a [Finding], id: &str) -> &'a Finding {
        let matching: Vec<_> = findings.iter().filter(|f| f.id == id).collect();
        assert_eq!(matching.len(), 1, "one `{id}` expected in {findings:#?}");
        matching[0]
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::doctor::Severity;

    #[test]
    fn every_id_has_a_text_and_every_text_an_id() {
        let texts = texts();
        let in_code: Vec<&str> = Id::ALL.iter().map(|id| id.as_str()).collect();
        for id in &in_code {
            assert!(
                texts.get(id).is_some(),
                "no text for `{id}` in findings/linux.yaml"
            );
        }
        for id in texts.ids() {
            assert!(
                in_code.contains(&id),
                "findings/linux.yaml has `{id}`, which no check raises"
            );
        }
        let mut unique = in_code.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), in_code.len(), "an id is declared twice");
    }

    #[test]
    fn the_python_data_names_a_package_for_every_startup_import() {
        let data = crate::guest::cloudinit::document::parse(PYTHON_DATA)
            .unwrap()
            .to_value();
        let packages = data.get("packages").unwrap();
        let Some(Value::Seq(imports)) = data.get("startup_imports") else {
            panic!("startup_imports is a list")
        };
        for import in imports.iter() {
            let dist = import.get("distribution").and_then(Value::as_str).unwrap();
            assert!(packages.get(dist).is_some(), "no packages for {dist}");
        }
    }

    #[test]
    fn a_working_debian_root_has_no_problem() {
        let t = Tree::debian();
        let findings = t.diagnose();
        assert_eq!(problems(&findings), vec![], "{findings:#?}");
        for id in [
            "cloud-init-installed",
            "python-dependencies-installed",
            "entry-shebang-ok",
            "cloud-init-enabled",
            "datasource-ok",
            "no-previous-instance",
            "ssh-host-keys-ok",
            "import-files-ok",
            "virtio-drivers-present",
        ] {
            assert_eq!(the(&findings, id).severity, Severity::Ok, "{id}");
        }
        assert_eq!(
            the(&findings, "cloud-init-installed").detail,
            "22.4.2 (usr/lib/python3/dist-packages/cloudinit)"
        );
    }

    /// The README's table of findings is this function's output between its
    /// markers; when a text changes, paste what the failure prints.
    fn readme_table(texts: &Texts) -> String {
        let mut table = String::from("| id | severity | what | fix |\n|---|---|---|---|\n");
        for id in Id::ALL {
            let t = texts
                .get(id.as_str())
                .expect("checked by every_id_has_a_text");
            let fix = if t.fix.is_empty() { "—" } else { &t.fix };
            table.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                id.as_str(),
                t.severity.name(),
                t.title.replace('|', "\\|"),
                fix.replace('|', "\\|")
            ));
        }
        table
    }

    #[test]
    fn the_readme_lists_every_finding_as_findings_linux_yaml_says() {
        let readme = include_str!("../../../README.md");
        let begin = "<!-- findings/linux.yaml: begin -->\n";
        let end = "<!-- findings/linux.yaml: end -->";
        let start = readme.find(begin).expect("README has the begin marker") + begin.len();
        let stop = readme[start..]
            .find(end)
            .expect("README has the end marker")
            + start;
        let expected = readme_table(&texts());
        assert!(
            readme[start..stop] == expected,
            "README's findings table is stale; replace it with:\n{expected}"
        );
    }

    #[test]
    fn os_release_gives_id_and_id_like() {
        let os =
            OsRelease::parse("NAME=\"CentOS Linux\"\nID=\"centos\"\nID_LIKE=\"rhel fedora\"\n");
        assert_eq!(os.names().collect::<Vec<_>>(), ["centos", "rhel", "fedora"]);
    }
}
