//! What a previous instance (the build machine) left in the image: cloud-init's
//! state and logs, the machine id, and SSH host keys with whether anything
//! regenerates them per instance.

use std::path::Path;

use super::{Context, Id};
use crate::access::root::{EntryKind, Root};
use crate::doctor::Evidence;
use crate::guest::cloudinit::document::Value;
use crate::guest::cloudinit::effective::{self, ConfigSet};

pub const CLOUD_STATE: &str = "var/lib/cloud";
pub const CLOUD_LOGS: &[&str] = &["var/log/cloud-init.log", "var/log/cloud-init-output.log"];
/// Units that generate missing host keys before sshd starts (RHEL family).
const KEYGEN_UNITS: &[&str] = &["sshd-keygen@.service", "sshd-keygen.service"];
const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

pub(super) fn check(ctx: &mut Context<'_>, config: Option<&ConfigSet>) {
    let mut problem = check_state(ctx);
    let logs: Vec<&str> = CLOUD_LOGS
        .iter()
        .copied()
        .filter(|l| {
            ctx.root
                .symlink_metadata(Path::new(l))
                .ok()
                .flatten()
                .is_some()
        })
        .collect();
    if let Some(first) = logs.first() {
        problem = true;
        ctx.report(
            Id::LogsLeft,
            logs.join(", "),
            Some(Evidence::file(*first)),
            None,
        );
    }
    if !problem {
        ctx.report(Id::NoPreviousInstance, String::new(), None, None);
    }
    if let Some((path, text)) = ctx.read("etc/machine-id") {
        let id = text.trim();
        // systemd's placeholder: "generate one at first boot".
        if !id.is_empty() && id != "uninitialized" {
            ctx.report(
                Id::MachineIdSet,
                id.to_string(),
                Some(Evidence::line(path, 1)),
                None,
            );
        }
    }
    check_host_keys(ctx, config);
}

/// `var/lib/cloud` holding an instance: the `instance` link, `instances/*`,
/// `data/instance-id`, semaphores.
fn check_state(ctx: &mut Context<'_>) -> bool {
    let markers = [
        format!("{CLOUD_STATE}/data/instance-id"),
        format!("{CLOUD_STATE}/instance"),
        format!("{CLOUD_STATE}/instances"),
        format!("{CLOUD_STATE}/sem"),
    ];
    let found: Vec<&String> = markers
        .iter()
        .filter(|m| {
            match ctx
                .root
                .symlink_metadata(Path::new(m.as_str()))
                .ok()
                .flatten()
            {
                None => false,
                Some(e) if e.kind == EntryKind::Directory => !ctx.names(m).is_empty(),
                Some(_) => true,
            }
        })
        .collect();
    let Some(first) = found.first() else {
        return false;
    };
    let detail = match ctx.read(&markers[0]) {
        Some((_, id)) => format!("instance-id {}", id.trim()),
        None => found
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let evidence = if found.contains(&&markers[0]) {
        Evidence::line(markers[0].clone(), 1)
    } else {
        Evidence::file(first.as_str())
    };
    ctx.report(Id::PreviousInstance, detail, Some(evidence), None);
    true
}

/// Whether cloud-init replaces the host keys on each new instance: the `ssh`
/// module runs, `ssh_deletekeys` is not false and `ssh_genkeytypes` is not
/// empty (cloud-init's defaults: true, and rsa, ecdsa, ed25519).
pub fn cloud_init_regenerates_host_keys(config: &ConfigSet) -> bool {
    if config.module_entries("ssh").is_empty() {
        return false;
    }
    let effective = config.effective();
    let deletes = effective
        .get("ssh_deletekeys")
        .is_none_or(|v| effective::translate_bool(v, &[]));
    let generates =
        !matches!(effective.get("ssh_genkeytypes"), Some(Value::Seq(types)) if types.is_empty());
    deletes && generates
}

/// A unit of the image that makes missing host keys before sshd starts.
pub fn keygen_unit(root: &Root) -> Option<String> {
    UNIT_DIRS
        .iter()
        .flat_map(|d| KEYGEN_UNITS.iter().map(move |u| format!("{d}/{u}")))
        .find(|p| root.exists(Path::new(p)))
}

/// The private host keys in etc/ssh.
pub fn host_keys(root: &Root) -> Vec<String> {
    super::dir_names(root, Path::new("etc/ssh"))
        .into_iter()
        .filter(|n| n.starts_with("ssh_host_") && n.ends_with("_key"))
        .map(|n| format!("etc/ssh/{n}"))
        .collect()
}

fn check_host_keys(ctx: &mut Context<'_>, config: Option<&ConfigSet>) {
    let keys = host_keys(ctx.root);
    let regenerated = config.is_some_and(cloud_init_regenerates_host_keys);
    let why = "the module `ssh` is not in any module list of the effective configuration, or ssh_deletekeys is false";
    if let Some(first) = keys.first() {
        if regenerated {
            ctx.report(
                Id::HostKeysOk,
                format!(
                    "{} key(s); cloud-init's `ssh` module replaces them",
                    keys.len()
                ),
                None,
                None,
            );
        } else {
            ctx.report(
                Id::HostKeysShared,
                format!("{} ({why})", keys.join(", ")),
                Some(Evidence::file(first)),
                None,
            );
        }
        return;
    }
    let sshd = ["usr/sbin/sshd", "sbin/sshd"].iter().any(|p| ctx.exists(p));
    if sshd && !regenerated && keygen_unit(ctx.root).is_none() {
        ctx.report(
            Id::HostKeysMissing,
            format!("no etc/ssh/ssh_host_*_key; {why}; no sshd-keygen unit"),
            Some(Evidence::file("etc/ssh")),
            None,
        );
    } else {
        ctx.report(
            Id::HostKeysOk,
            "none in the image; generated at first boot",
            None,
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::doctor::Severity;

    #[test]
    fn the_state_of_a_previous_instance_is_an_error_naming_its_instance_id() {
        let t = Tree::debian();
        t.file("var/lib/cloud/data/instance-id", "ins-abc123\n")
            .link(
                "var/lib/cloud/instance",
                "/var/lib/cloud/instances/ins-abc123",
            )
            .file("var/lib/cloud/instances/ins-abc123/sem/config_ssh", "");
        let findings = t.diagnose();
        assert_eq!(
            problems(&findings),
            vec![(
                "previous-instance-state".into(),
                Severity::Error,
                Some("var/lib/cloud/data/instance-id:1".into())
            )]
        );
        assert_eq!(
            the(&findings, "previous-instance-state").detail,
            "instance-id ins-abc123"
        );
    }

    #[test]
    fn an_empty_state_directory_is_not_a_previous_instance() {
        let t = Tree::debian();
        t.dir("var/lib/cloud/instances")
            .dir("var/lib/cloud/scripts");
        assert_eq!(problems(&t.diagnose()), vec![]);
    }

    #[test]
    fn logs_and_a_machine_id_are_warnings() {
        let t = Tree::debian();
        t.file(
            "var/log/cloud-init-output.log",
            "Cloud-init v. 22.4.2 running\n",
        )
        .file("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        assert_eq!(
            problems(&t.diagnose()),
            vec![
                (
                    "cloud-init-logs-left".into(),
                    Severity::Warning,
                    Some("var/log/cloud-init-output.log".into())
                ),
                (
                    "machine-id-set".into(),
                    Severity::Warning,
                    Some("etc/machine-id:1".into())
                ),
            ]
        );
        t.file("etc/machine-id", "uninitialized\n")
            .remove("var/log/cloud-init-output.log");
        assert_eq!(problems(&t.diagnose()), vec![]);
    }

    #[test]
    fn host_keys_without_the_ssh_module_are_shared_by_every_instance() {
        let t = Tree::debian();
        t.file(
            "etc/cloud/cloud.cfg.d/99_keys.cfg",
            "cloud_init_modules: [seed_random]\n",
        );
        assert_eq!(
            problems(&t.diagnose()),
            vec![(
                "ssh-host-keys-shared".into(),
                Severity::Warning,
                Some("etc/ssh/ssh_host_ed25519_key".into())
            )]
        );
        t.file(
            "etc/cloud/cloud.cfg.d/99_keys.cfg",
            "ssh_deletekeys: false\n",
        );
        assert_eq!(problems(&t.diagnose())[0].0, "ssh-host-keys-shared");
    }

    #[test]
    fn no_host_keys_and_nothing_to_make_them_is_an_error_unless_sshd_keygen_exists() {
        let t = Tree::debian();
        t.remove("etc/ssh/ssh_host_ed25519_key").file(
            "etc/cloud/cloud.cfg.d/99_keys.cfg",
            "cloud_init_modules: [seed_random]\n",
        );
        assert_eq!(
            problems(&t.diagnose()),
            vec![(
                "ssh-host-keys-missing".into(),
                Severity::Error,
                Some("etc/ssh".into())
            )]
        );
        t.file("usr/lib/systemd/system/sshd-keygen@.service", "[Unit]\n");
        assert_eq!(problems(&t.diagnose()), vec![]);
        // With the ssh module, cloud-init makes them.
        let t = Tree::debian();
        t.remove("etc/ssh/ssh_host_ed25519_key");
        assert_eq!(problems(&t.diagnose()), vec![]);
    }
}
