//! Will cloud-init run at all: its systemd units enabled and not masked,
//! and nothing that makes `cloud-init-generator` disable it (the
//! `cloud-init.disabled` file, `cloud-init=disabled` on the kernel command
//! line, a ds-identify policy of `disabled`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::python::Install;
use super::{Context, Id};
use crate::doctor::Evidence;

/// Where unit files and their `.wants` directories live, highest precedence first.
const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];
const GENERATOR_DIRS: &[&str] = &[
    "usr/lib/systemd/system-generators",
    "lib/systemd/system-generators",
];
const TARGET: &str = "cloud-init.target";
/// The services of cloud-init's boot stages, across versions (cloud-init.service
/// became cloud-init-network.service, and cloud-init-main.service came, in 24.3).
const STAGE_UNITS: &[&str] = &[
    "cloud-init-main.service",
    "cloud-init-local.service",
    "cloud-init.service",
    "cloud-init-network.service",
    "cloud-config.service",
    "cloud-final.service",
];

/// The stage services a version of cloud-init ships; `None` when the version is unknown.
fn expected_units(version: Option<&str>) -> Option<&'static [&'static str]> {
    let mut parts = version?
        .split(['.', '-', '~', '+'])
        .map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next()??, parts.next().flatten().unwrap_or(0));
    Some(if (major, minor) >= (24, 3) {
        &[
            "cloud-init-main.service",
            "cloud-init-local.service",
            "cloud-init-network.service",
            "cloud-config.service",
            "cloud-final.service",
        ]
    } else {
        &[
            "cloud-init-local.service",
            "cloud-init.service",
            "cloud-config.service",
            "cloud-final.service",
        ]
    })
}

pub(super) fn check(ctx: &mut Context<'_>, install: &Install) {
    let mut problem = false;
    let cmdline = kernel_cmdline(ctx);
    let enabled_by_cmdline = cmdline
        .iter()
        .any(|(_, state)| *state == CmdlineState::Enabled);
    for (evidence, state) in &cmdline {
        if *state == CmdlineState::Disabled {
            problem = true;
            ctx.report(
                Id::DisabledKernelCmdline,
                String::new(),
                Some(evidence.clone()),
                None,
            );
        }
    }
    // The generator reads the kernel command line first: cloud-init=enabled there wins over the file.
    let disabled_file = ctx
        .root
        .list_dir(Path::new("etc/cloud"))
        .ok()
        .flatten()
        .into_iter()
        .flatten()
        .any(|e| e.name == "cloud-init.disabled" && e.is_regular_file);
    if disabled_file && !enabled_by_cmdline {
        problem = true;
        ctx.report(
            Id::DisabledFile,
            String::new(),
            Some(Evidence::file("etc/cloud/cloud-init.disabled")),
            None,
        );
    }
    if let Some((path, text)) = ctx.read("etc/cloud/ds-identify.cfg") {
        // ds-identify: `policy: MODE,found=...`; the last line wins.
        let policy = text.lines().enumerate().filter_map(|(i, line)| {
            let line = line.split('#').next()?;
            let (key, value) = line.split_once(':')?;
            (key.trim() == "policy")
                .then(|| (i + 1, value.trim().trim_matches(['"', '\'']).to_string()))
        });
        if let Some((line, value)) = policy.last()
            && value.split(',').next().map(str::trim) == Some("disabled")
        {
            problem = true;
            ctx.report(
                Id::DsIdentifyDisabled,
                format!("policy: {value}"),
                Some(Evidence::line(&path, line)),
                None,
            );
        }
    }
    problem |= check_units(ctx, install, disabled_file && !enabled_by_cmdline);
    if !problem {
        ctx.report(Id::Enabled, String::new(), None, None);
    }
}

/// Checks masking and enablement; true when something was reported.
fn check_units(ctx: &mut Context<'_>, install: &Install, disabled: bool) -> bool {
    let root = ctx.root;
    let has_systemd = ["usr/lib/systemd/systemd", "lib/systemd/systemd"]
        .iter()
        .any(|p| ctx.exists(p));
    // Unit files: name → (path, text), the highest-precedence one.
    let mut files: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
    for dir in UNIT_DIRS.iter().rev() {
        for name in STAGE_UNITS.iter().chain([&TARGET, &"cloud-config.target"]) {
            let rel = format!("{dir}/{name}");
            if let Some(found) = ctx.read(&rel) {
                files.insert(name.to_string(), found);
            }
        }
    }
    let installed: Vec<&str> = STAGE_UNITS
        .iter()
        .copied()
        .filter(|u| files.contains_key(*u))
        .collect();
    if installed.is_empty() {
        if has_systemd {
            ctx.report(
                Id::UnitsMissing,
                format!(
                    "none of {} in {}",
                    STAGE_UNITS.join(", "),
                    UNIT_DIRS.join(", ")
                ),
                None,
                None,
            );
            return true;
        }
        return false;
    }
    let mut problem = false;
    let expected = expected_units(install.version.as_deref());
    let missing: Vec<&str> = expected
        .into_iter()
        .flatten()
        .copied()
        .filter(|u| !files.contains_key(*u))
        .collect();
    if !missing.is_empty() {
        problem = true;
        ctx.report(
            Id::UnitsMissing,
            format!(
                "cloud-init {} ships {}; not in {}",
                install.version.as_deref().unwrap_or("?"),
                missing.join(", "),
                UNIT_DIRS.join(", ")
            ),
            install.version_evidence.clone(),
            None,
        );
    }
    for unit in installed.iter().copied().chain([TARGET]) {
        for dir in UNIT_DIRS {
            let rel = PathBuf::from(format!("{dir}/{unit}"));
            if let Ok(Some(target)) = root.read_link(&rel)
                && target == Path::new("/dev/null")
            {
                problem = true;
                let path = root
                    .symlink_metadata(&rel)
                    .ok()
                    .flatten()
                    .map_or(rel.clone(), |e| e.path);
                ctx.report(
                    Id::UnitMasked,
                    unit.to_string(),
                    Some(Evidence::file(path)),
                    Some(format!("systemctl unmask {unit} (or rm {})", rel.display())),
                );
            }
        }
    }
    if disabled {
        return problem;
    }
    // What starts what: `X.wants/U` links, and Wants=/Requires= in cloud-init's own units.
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for dir in UNIT_DIRS {
        for entry in ctx.names(dir) {
            let Some(owner) = entry
                .strip_suffix(".wants")
                .or_else(|| entry.strip_suffix(".requires"))
            else {
                continue;
            };
            for unit in ctx.names(&format!("{dir}/{entry}")) {
                edges.entry(owner.to_string()).or_default().insert(unit);
            }
        }
    }
    for (name, (_, text)) in &files {
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if matches!(key.trim(), "Wants" | "Requires") {
                edges
                    .entry(name.clone())
                    .or_default()
                    .extend(value.split_whitespace().map(str::to_string));
            }
        }
    }
    // Started at boot: whatever the system's own targets want (anything not
    // cloud-init's), and cloud-init.target when the generator enables it.
    let ours = |u: &str| STAGE_UNITS.contains(&u) || u == TARGET || u == "cloud-config.target";
    let mut queue: Vec<String> = edges.keys().filter(|k| !ours(k)).cloned().collect();
    let generator = GENERATOR_DIRS
        .iter()
        .any(|d| ctx.exists(&format!("{d}/cloud-init-generator")));
    if generator {
        queue.push(TARGET.to_string());
    }
    let mut reached: BTreeSet<String> = queue.iter().cloned().collect();
    while let Some(unit) = queue.pop() {
        for next in edges.get(&unit).into_iter().flatten() {
            if reached.insert(next.clone()) {
                queue.push(next.clone());
            }
        }
    }
    for unit in installed {
        if reached.contains(unit) {
            continue;
        }
        problem = true;
        let (path, text) = &files[unit];
        let wanted_by = text.lines().enumerate().find_map(|(i, l)| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "WantedBy").then(|| {
                (
                    i + 1,
                    value
                        .split_whitespace()
                        .next()
                        .unwrap_or(TARGET)
                        .to_string(),
                )
            })
        });
        let (evidence, owner) = match wanted_by {
            Some((line, owner)) => (Evidence::line(path, line), owner),
            None => (Evidence::file(path), TARGET.to_string()),
        };
        ctx.report(
            Id::UnitNotEnabled,
            format!("{unit} (no link in any {owner}.wants, nothing else pulls it in)"),
            Some(evidence),
            Some(format!("systemctl enable {unit} (in the image: ln -s /{} /etc/systemd/system/{owner}.wants/{unit})", path.display())),
        );
    }
    problem
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmdlineState {
    Enabled,
    Disabled,
    Unset,
}

/// What cloud-init-generator makes of a command line: the token after the
/// last ` cloud-init=`, `enabled` or `disabled`.
fn cmdline_state(cmdline: &str) -> CmdlineState {
    match cmdline
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("cloud-init="))
        .next_back()
    {
        Some("disabled") => CmdlineState::Disabled,
        Some("enabled") => CmdlineState::Enabled,
        _ => CmdlineState::Unset,
    }
}

/// Every kernel command line the image may boot with that sets cloud-init=:
/// the grub defaults, grub.cfg's linux lines, BLS entries' options and
/// grubenv's kernelopts.
fn kernel_cmdline(ctx: &Context<'_>) -> Vec<(Evidence, CmdlineState)> {
    let mut files: Vec<String> = vec!["etc/default/grub".into()];
    files.extend(
        ctx.names("etc/default/grub.d")
            .into_iter()
            .filter(|n| n.ends_with(".cfg"))
            .map(|n| format!("etc/default/grub.d/{n}")),
    );
    for dir in ["boot/grub", "boot/grub2"] {
        files.push(format!("{dir}/grub.cfg"));
        files.push(format!("{dir}/grubenv"));
    }
    files.extend(
        ctx.names("boot/loader/entries")
            .into_iter()
            .filter(|n| n.ends_with(".conf"))
            .map(|n| format!("boot/loader/entries/{n}")),
    );
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for file in files {
        let Some((path, text)) = ctx.read(&file) else {
            continue;
        };
        if !seen.insert(path.clone()) {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            let cmdline = if let Some((key, value)) = line.split_once('=')
                && (key.starts_with("GRUB_CMDLINE_LINUX") || key == "kernelopts")
            {
                value.trim_matches(['"', '\''])
            } else if let Some(rest) = line
                .strip_prefix("linux16 ")
                .or_else(|| line.strip_prefix("linuxefi "))
                .or_else(|| line.strip_prefix("linux "))
                .or_else(|| line.strip_prefix("options "))
            {
                rest
            } else {
                continue;
            };
            let state = cmdline_state(cmdline);
            if state != CmdlineState::Unset {
                out.push((Evidence::line(&path, i + 1), state));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::doctor::Severity;

    #[test]
    fn the_generator_reads_the_last_cloud_init_token() {
        assert_eq!(
            cmdline_state("ro cloud-init=disabled quiet"),
            CmdlineState::Disabled
        );
        assert_eq!(
            cmdline_state("cloud-init=disabled cloud-init=enabled"),
            CmdlineState::Enabled
        );
        assert_eq!(cmdline_state("xcloud-init=disabled"), CmdlineState::Unset);
    }

    #[test]
    fn the_disabled_file_is_an_error_unless_the_command_line_enables() {
        let t = Tree::debian();
        t.file("etc/cloud/cloud-init.disabled", "");
        assert_eq!(
            problems(&t.diagnose()),
            vec![(
                "cloud-init-disabled-file".into(),
                Severity::Error,
                Some("etc/cloud/cloud-init.disabled".into())
            )]
        );
        t.file(
            "etc/default/grub",
            "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX=\"cloud-init=enabled\"\n",
        );
        assert_eq!(problems(&t.diagnose()), vec![]);
    }

    #[test]
    fn cloud_init_disabled_on_any_kernel_command_line_is_found_with_its_line() {
        let t = Tree::debian();
        t.file(
            "etc/default/grub",
            "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet cloud-init=disabled\"\n",
        )
        .file(
            "boot/grub/grub.cfg",
            "menuentry 'Debian' {\n\tlinux /vmlinuz root=UUID=1 ro cloud-init=disabled\n}\n",
        )
        .file(
            "boot/loader/entries/abc-6.1.conf",
            "title Debian\noptions root=UUID=1 cloud-init=disabled\n",
        )
        .file(
            "boot/grub2/grubenv",
            "# GRUB Environment Block\nkernelopts=root=/dev/vda1 cloud-init=disabled\n",
        );
        let got: Vec<_> = problems(&t.diagnose())
            .into_iter()
            .map(|(id, _, e)| (id, e.unwrap()))
            .collect();
        let id = "cloud-init-disabled-kernel-cmdline".to_string();
        assert_eq!(
            got,
            [
                (id.clone(), "etc/default/grub:2".to_string()),
                (id.clone(), "boot/grub/grub.cfg:2".to_string()),
                (id.clone(), "boot/grub2/grubenv:2".to_string()),
                (id, "boot/loader/entries/abc-6.1.conf:2".to_string()),
            ]
        );
    }

    #[test]
    fn a_masked_unit_is_an_error_naming_the_link() {
        let t = Tree::debian();
        t.link("etc/systemd/system/cloud-final.service", "/dev/null");
        assert_eq!(
            problems(&t.diagnose()),
            vec![(
                "cloud-init-unit-masked".into(),
                Severity::Error,
                Some("etc/systemd/system/cloud-final.service".into())
            )]
        );
    }

    #[test]
    fn a_unit_no_one_starts_is_not_enabled_with_its_wantedby_line() {
        let t = Tree::debian();
        t.remove("etc/systemd/system/cloud-init.target.wants/cloud-final.service");
        assert_eq!(
            problems(&t.diagnose()),
            vec![(
                "cloud-init-unit-not-enabled".into(),
                Severity::Error,
                Some("usr/lib/systemd/system/cloud-final.service:5".into())
            )]
        );
        // cloud-config.target pulls in cloud-init.service: no link needed for it.
        let t = Tree::debian();
        t.remove("etc/systemd/system/cloud-init.target.wants/cloud-init.service");
        assert_eq!(problems(&t.diagnose()), vec![]);
    }

    #[test]
    fn without_the_generator_the_target_must_be_wanted_by_a_system_target() {
        let t = Tree::debian();
        t.remove("usr/lib/systemd/system-generators/cloud-init-generator");
        let got: Vec<_> = problems(&t.diagnose())
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        assert_eq!(got.len(), 4, "{got:?}");
        t.link(
            "etc/systemd/system/multi-user.target.wants/cloud-init.target",
            "/lib/systemd/system/cloud-init.target",
        );
        assert_eq!(problems(&t.diagnose()), vec![]);
    }

    #[test]
    fn no_units_on_a_systemd_system_is_an_error() {
        let t = Tree::debian();
        for unit in [
            "cloud-init-local",
            "cloud-init",
            "cloud-config",
            "cloud-final",
        ] {
            t.remove(&format!("usr/lib/systemd/system/{unit}.service"));
        }
        let got: Vec<_> = problems(&t.diagnose())
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        assert_eq!(got, ["cloud-init-units-missing"]);
    }

    #[test]
    fn the_units_expected_follow_the_version() {
        assert_eq!(
            expected_units(Some("22.4.2")).unwrap()[1],
            "cloud-init.service"
        );
        assert_eq!(
            expected_units(Some("24.3")).unwrap()[0],
            "cloud-init-main.service"
        );
        assert_eq!(
            expected_units(Some("25.1.2")).unwrap()[2],
            "cloud-init-network.service"
        );
        assert_eq!(expected_units(Some("24.2")).unwrap().len(), 4);
        assert_eq!(expected_units(Some("unknown")), None);
        assert_eq!(expected_units(None), None);
    }

    #[test]
    fn a_24_3_cloud_init_without_cloud_init_main_is_missing_a_unit() {
        let t = Tree::debian();
        t.file(
            "usr/lib/python3/dist-packages/cloudinit/version.py",
            "__VERSION__ = \"24.4\"\n",
        )
        .file(
            "usr/lib/systemd/system/cloud-init-network.service",
            "[Install]\nWantedBy=cloud-init.target\n",
        )
        .link(
            "etc/systemd/system/cloud-init.target.wants/cloud-init-network.service",
            "/lib/systemd/system/cloud-init-network.service",
        );
        let findings = t.diagnose();
        assert_eq!(
            problems(&findings),
            vec![(
                "cloud-init-units-missing".into(),
                Severity::Error,
                Some("usr/lib/python3/dist-packages/cloudinit/version.py:1".into())
            )]
        );
        assert!(
            the(&findings, "cloud-init-units-missing")
                .detail
                .contains("ships cloud-init-main.service;")
        );
    }

    #[test]
    fn a_disabled_ds_identify_policy_is_an_error() {
        let t = Tree::debian();
        t.file(
            "etc/cloud/ds-identify.cfg",
            "# comment\npolicy: enabled\npolicy: disabled,found=all\n",
        );
        assert_eq!(
            problems(&t.diagnose()),
            vec![(
                "ds-identify-disabled".into(),
                Severity::Error,
                Some("etc/cloud/ds-identify.cfg:3".into())
            )]
        );
    }
}
