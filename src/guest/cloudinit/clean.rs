//! `prepare-image clean`: strip what the build machine's own boot left, so
//! that the first boot of every instance is a first boot.
//!
//! Always: cloud-init's state (`var/lib/cloud`, the guide's `rm -rf
//! /var/lib/cloud`) and its logs. Opt-in: the machine id, the SSH host keys
//! (only where something regenerates them at first boot) and the network
//! files cloud-init rendered for the build machine. Every removal goes
//! through [`Root::remove_tree`]: nothing below the root is ever followed,
//! so `var/lib/cloud -> /` in an image removes that link, not the host.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::access::root::{EntryKind, EntryStat, Root};
use crate::guest::cloudinit::doctor::leftovers::{
    CLOUD_LOGS, CLOUD_STATE, cloud_init_regenerates_host_keys, keygen_unit,
};
use crate::guest::cloudinit::doctor::{TEXT_LIMIT, dir_names};
use crate::guest::cloudinit::document::Value;
use crate::guest::cloudinit::effective::{self, ConfigSet};

/// What to clean beyond cloud-init's state and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub machine_id: bool,
    pub ssh_host_keys: bool,
    pub network: bool,
    pub dry_run: bool,
}

/// What was (or, in a dry run, would be) done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every path removed, children before their directory.
    pub removed: Vec<EntryStat>,
    /// Files emptied (etc/machine-id), with their size before.
    pub emptied: Vec<(PathBuf, u64)>,
    /// Paths left alone on purpose, and why.
    pub kept: Vec<(PathBuf, String)>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.emptied.is_empty()
    }
}

/// Files cloud-init's renderers write for the instance's network, by name
/// (`cloudinit/net/netplan.py`, `distros/debian.py`, `net/networkd.py`,
/// `net/network_manager.py`).
const NETWORK_FILES: &[&str] = &[
    "etc/netplan/50-cloud-init.yaml",
    "etc/network/interfaces.d/50-cloud-init",
    "etc/network/interfaces.d/50-cloud-init.cfg",
];
/// Directories where cloud-init's files are recognised by a name prefix.
const NETWORK_PREFIXED: &[(&str, &str)] = &[
    ("etc/systemd/network", "10-cloud-init-"),
    ("etc/NetworkManager/system-connections", "cloud-init-"),
];
/// The sysconfig renderer's first line (`cloudinit/net/sysconfig.py`, `_make_header`).
const SYSCONFIG_HEADER: &str =
    "# Created by cloud-init on instance boot automatically, do not edit.";
const SYSCONFIG_DIR: &str = "etc/sysconfig/network-scripts";

const MACHINE_ID: &str = "etc/machine-id";
const DBUS_MACHINE_ID: &str = "var/lib/dbus/machine-id";

/// Cleans the root. Refusals (`--ssh-host-keys` with nothing to make new
/// keys, `--network` where cloud-init will not render the network again)
/// come before anything is removed, as does every removal's own check (a
/// mount point inside a tree).
///
/// `config` is the configuration that will be in place at first boot: the
/// image's as it is (`None`: read it), or as a keep in the same run leaves it
/// (the `keys` profile removes the `ssh` module, and with it the only
/// regeneration of host keys).
pub fn clean(root: &Root, options: Options, config: Option<&ConfigSet>) -> Result<Report> {
    let loaded;
    let config = match config {
        Some(config) => Some(config),
        None => {
            loaded = effective::load(root).ok();
            loaded.as_ref()
        }
    };
    let mut targets: Vec<PathBuf> = vec![PathBuf::from(CLOUD_STATE)];
    targets.extend(CLOUD_LOGS.iter().map(PathBuf::from));
    let mut report = Report::default();
    if options.ssh_host_keys {
        let regenerator = if config
            .as_ref()
            .is_some_and(|c| cloud_init_regenerates_host_keys(c))
        {
            Some("cloud-init's `ssh` module".to_string())
        } else {
            keygen_unit(root)
        };
        if regenerator.is_none() {
            bail!(
                "--ssh-host-keys refused: nothing regenerates host keys at first boot (the cloud-init module \
                 `ssh` is not in any module list, or ssh_deletekeys is false, and there is no sshd-keygen unit), \
                 so sshd would not start; keep `ssh` in cloud_init_modules or drop --ssh-host-keys. Nothing was removed."
            );
        }
        targets.extend(
            dir_names(root, Path::new("etc/ssh"))
                .into_iter()
                .filter(|n| n.starts_with("ssh_host_") && n.contains("_key"))
                .map(|n| Path::new("etc/ssh").join(n)),
        );
    }
    if options.network {
        let disabled = config.is_some_and(|c| {
            let network = c.effective();
            let network = network.get("network").and_then(|n| n.get("config"));
            matches!(network, Some(Value::Str(s)) if s == "disabled")
        });
        if disabled {
            bail!(
                "--network refused: the configuration sets network: {{config: disabled}}, so cloud-init will not \
                 write the network files again and the image's own files are all the instance has; \
                 drop --network. Nothing was removed."
            );
        }
        targets.extend(network_files(root));
    }
    if options.machine_id {
        match root.read_link(Path::new(DBUS_MACHINE_ID))? {
            Some(link) => report.kept.push((
                PathBuf::from(DBUS_MACHINE_ID),
                format!(
                    "a link to {}: emptying etc/machine-id covers it",
                    link.display()
                ),
            )),
            None => targets.push(PathBuf::from(DBUS_MACHINE_ID)),
        }
    }
    // First every removal as a dry run: a refusal then leaves everything in place.
    let mut planned = Vec::new();
    for target in &targets {
        planned.extend(root.remove_tree(target, true)?);
    }
    let machine_id = if options.machine_id {
        match root.read_file_prefix(Path::new(MACHINE_ID), TEXT_LIMIT) {
            Ok(contents) if !contents.bytes.is_empty() => {
                Some((contents.path, contents.bytes.len() as u64))
            }
            _ => None,
        }
    } else {
        None
    };
    if options.dry_run {
        report.removed = planned;
        report.emptied.extend(machine_id);
        return Ok(report);
    }
    for target in &targets {
        report.removed.extend(root.remove_tree(target, false)?);
    }
    if let Some((path, size)) = machine_id {
        // Empty, not removed: systemd then generates a new id at first boot
        // (a missing file makes it boot with a transient one on a read-only root).
        root.prepare_write(&path, b"")?.commit(None)?;
        report.emptied.push((path, size));
    }
    Ok(report)
}

/// The network files cloud-init rendered, by name or by its header.
fn network_files(root: &Root) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = NETWORK_FILES.iter().map(PathBuf::from).collect();
    for (dir, prefix) in NETWORK_PREFIXED {
        files.extend(
            dir_names(root, Path::new(dir))
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .map(|n| Path::new(dir).join(n)),
        );
    }
    for name in dir_names(root, Path::new(SYSCONFIG_DIR)) {
        let path = Path::new(SYSCONFIG_DIR).join(&name);
        let is_file = root
            .symlink_metadata(&path)
            .ok()
            .flatten()
            .is_some_and(|e| e.kind == EntryKind::File);
        if is_file
            && root
                .read_file_prefix(&path, TEXT_LIMIT)
                .is_ok_and(|c| c.bytes.starts_with(SYSCONFIG_HEADER.as_bytes()))
        {
            files.push(path);
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::cloudinit::doctor::test_support::Tree;

    fn paths(entries: &[EntryStat]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.path.display().to_string())
            .collect()
    }

    fn leftovers() -> Tree {
        let t = Tree::debian();
        t.file("var/lib/cloud/data/instance-id", "ins-1\n")
            .link("var/lib/cloud/instance", "/var/lib/cloud/instances/ins-1")
            .file("var/lib/cloud/instances/ins-1/sem/config_ssh", "")
            .file("var/log/cloud-init.log", "log\n")
            .file("var/log/syslog", "keep\n")
            .file("etc/machine-id", "0123456789abcdef0123456789abcdef\n")
            .file(
                "var/lib/dbus/machine-id",
                "0123456789abcdef0123456789abcdef\n",
            )
            .file("etc/ssh/ssh_host_ed25519_key.pub", "pub")
            .file("etc/ssh/sshd_config", "keep")
            .file("etc/netplan/50-cloud-init.yaml", "network: {}\n")
            .file("etc/netplan/01-mine.yaml", "network: {}\n")
            .file(
                &format!("{SYSCONFIG_DIR}/ifcfg-eth0"),
                &format!("{SYSCONFIG_HEADER}\n#\nDEVICE=eth0\n"),
            )
            .file(&format!("{SYSCONFIG_DIR}/ifcfg-eth1"), "DEVICE=eth1\n");
        t
    }

    #[test]
    fn by_default_only_state_and_logs_go() {
        let t = leftovers();
        let root = Root::open(t.path()).unwrap();
        let report = clean(&root, Options::default(), None).unwrap();
        assert_eq!(
            paths(&report.removed),
            [
                "var/lib/cloud/data/instance-id",
                "var/lib/cloud/data",
                "var/lib/cloud/instance",
                "var/lib/cloud/instances/ins-1/sem/config_ssh",
                "var/lib/cloud/instances/ins-1/sem",
                "var/lib/cloud/instances/ins-1",
                "var/lib/cloud/instances",
                "var/lib/cloud",
                "var/log/cloud-init.log",
            ]
        );
        assert!(!t.path().join("var/lib/cloud").exists());
        for kept in [
            "var/log/syslog",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/netplan/50-cloud-init.yaml",
            "var/lib/dbus/machine-id",
        ] {
            assert!(t.path().join(kept).exists(), "{kept}");
        }
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/machine-id"))
                .unwrap()
                .len(),
            33
        );
        let after = crate::guest::cloudinit::doctor::test_support::problems(&t.diagnose());
        assert!(
            after
                .iter()
                .all(|(id, _, _)| id != "previous-instance-state" && id != "cloud-init-logs-left"),
            "{after:?}"
        );
    }

    #[test]
    fn a_dry_run_lists_every_path_and_size_and_removes_nothing() {
        let t = leftovers();
        let root = Root::open(t.path()).unwrap();
        let options = Options {
            machine_id: true,
            ssh_host_keys: true,
            network: true,
            dry_run: true,
        };
        let report = clean(&root, options, None).unwrap();
        let listed = paths(&report.removed);
        for expected in [
            "var/lib/cloud",
            "var/log/cloud-init.log",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/ssh_host_ed25519_key.pub",
            "etc/netplan/50-cloud-init.yaml",
            "etc/sysconfig/network-scripts/ifcfg-eth0",
            "var/lib/dbus/machine-id",
        ] {
            assert!(
                listed.iter().any(|p| p == expected),
                "{expected} in {listed:?}"
            );
        }
        assert!(!listed.iter().any(|p| p.ends_with("ifcfg-eth1")
            || p.ends_with("01-mine.yaml")
            || p.ends_with("sshd_config")));
        let log = report
            .removed
            .iter()
            .find(|e| e.path == Path::new("var/log/cloud-init.log"))
            .unwrap();
        assert_eq!(log.size, 4);
        assert_eq!(report.emptied, [(PathBuf::from("etc/machine-id"), 33)]);
        for still in [
            "var/lib/cloud/data/instance-id",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/netplan/50-cloud-init.yaml",
        ] {
            assert!(t.path().join(still).exists(), "{still}");
        }
    }

    #[test]
    fn opt_ins_remove_their_files_and_empty_the_machine_id_keeping_its_mode() {
        let t = leftovers();
        std::fs::set_permissions(
            t.path().join("etc/machine-id"),
            std::os::unix::fs::PermissionsExt::from_mode(0o444),
        )
        .unwrap();
        let root = Root::open(t.path()).unwrap();
        let options = Options {
            machine_id: true,
            ssh_host_keys: true,
            network: true,
            dry_run: false,
        };
        clean(&root, options, None).unwrap();
        assert_eq!(std::fs::read(t.path().join("etc/machine-id")).unwrap(), b"");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(t.path().join("etc/machine-id"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o444);
        for gone in [
            "var/lib/dbus/machine-id",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/netplan/50-cloud-init.yaml",
            "etc/sysconfig/network-scripts/ifcfg-eth0",
        ] {
            assert!(!t.path().join(gone).exists(), "{gone}");
        }
        for kept in [
            "etc/ssh/sshd_config",
            "etc/netplan/01-mine.yaml",
            "etc/sysconfig/network-scripts/ifcfg-eth1",
        ] {
            assert!(t.path().join(kept).exists(), "{kept}");
        }
    }

    #[test]
    fn a_dbus_machine_id_linked_to_etc_is_kept() {
        let t = leftovers();
        t.remove("var/lib/dbus/machine-id")
            .link("var/lib/dbus/machine-id", "/etc/machine-id");
        let root = Root::open(t.path()).unwrap();
        let report = clean(
            &root,
            Options {
                machine_id: true,
                ..Options::default()
            },
            None,
        )
        .unwrap();
        assert!(
            t.path()
                .join("var/lib/dbus/machine-id")
                .symlink_metadata()
                .is_ok()
        );
        assert_eq!(report.kept[0].0, Path::new(DBUS_MACHINE_ID));
    }

    #[test]
    fn host_keys_are_refused_when_nothing_regenerates_them() {
        let t = leftovers();
        t.file(
            "etc/cloud/cloud.cfg.d/99_keys.cfg",
            "cloud_init_modules: [seed_random]\n",
        );
        let root = Root::open(t.path()).unwrap();
        let options = Options {
            ssh_host_keys: true,
            ..Options::default()
        };
        let e = clean(&root, options, None).unwrap_err().to_string();
        assert!(e.contains("nothing regenerates host keys"), "{e}");
        // Refused before anything was removed.
        assert!(t.path().join("var/lib/cloud/data/instance-id").exists());
        assert!(t.path().join("etc/ssh/ssh_host_ed25519_key").exists());
        // An sshd-keygen unit makes missing keys: then they may go.
        t.file("usr/lib/systemd/system/sshd-keygen@.service", "[Unit]\n");
        clean(&root, options, None).unwrap();
        assert!(!t.path().join("etc/ssh/ssh_host_ed25519_key").exists());
    }

    #[test]
    fn host_keys_are_judged_on_the_configuration_given() {
        // The keys profile in the same run removes `ssh`: the keys must then stay.
        let t = leftovers();
        let root = Root::open(t.path()).unwrap();
        let after_keep = ConfigSet::from_texts(vec![(
            PathBuf::from("etc/cloud/cloud.cfg"),
            "cloud_init_modules: [seed_random]\n".to_string(),
        )])
        .unwrap();
        let options = Options {
            ssh_host_keys: true,
            ..Options::default()
        };
        assert!(clean(&root, options, Some(&after_keep)).is_err());
        assert!(t.path().join("etc/ssh/ssh_host_ed25519_key").exists());
    }

    #[test]
    fn network_files_are_refused_when_cloud_init_will_not_render_them_again() {
        let t = leftovers();
        t.file(
            "etc/cloud/cloud.cfg.d/99_net.cfg",
            "network: {config: disabled}\n",
        );
        let root = Root::open(t.path()).unwrap();
        let e = clean(
            &root,
            Options {
                network: true,
                ..Options::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--network refused"), "{e}");
        assert!(t.path().join("etc/netplan/50-cloud-init.yaml").exists());
    }

    #[test]
    fn hostile_links_never_reach_the_host() {
        let host = tempfile::tempdir().unwrap();
        let canary = host.path().join("canary");
        std::fs::create_dir(&canary).unwrap();
        std::fs::write(canary.join("data"), "host").unwrap();
        let t = Tree::debian();
        // var/lib/cloud -> / (the image's root, or the host's if followed), logs linked to the host.
        t.link("var/lib/cloud", "/")
            .link(
                "var/log/cloud-init.log",
                canary.join("data").to_str().unwrap(),
            )
            .link("etc/ssh/ssh_host_rsa_key", canary.to_str().unwrap());
        let root = Root::open(t.path()).unwrap();
        let report = clean(
            &root,
            Options {
                ssh_host_keys: true,
                ..Options::default()
            },
            None,
        )
        .unwrap();
        assert!(
            report
                .removed
                .iter()
                .all(|e| e.kind == EntryKind::Symlink || e.path.starts_with("etc/ssh")),
            "{report:?}"
        );
        assert_eq!(
            std::fs::read_to_string(canary.join("data")).unwrap(),
            "host"
        );
        assert!(
            t.path().join("etc/cloud/cloud.cfg").exists(),
            "the image's own root is untouched"
        );
        assert!(t.path().join("usr/bin/cloud-init").exists());
        assert!(t.path().join("var/lib").is_dir());
        assert!(t.path().join("var/lib/cloud").symlink_metadata().is_err());
    }
}
