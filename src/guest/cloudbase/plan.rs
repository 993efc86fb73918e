//! Planning a Windows keep: which plugins leave `plugins=` in each
//! Cloudbase-Init conf file, as new texts, changes and warnings in the same
//! shapes as a Linux plan (so the same diff, `--dry-run` and `--check`
//! reporting applies).
//!
//! Each conf file is one Cloudbase-Init run with its own plugin list (the
//! unattend file's run during sysprep, the service's run after), so every
//! drop applies to every file given. A file without `plugins=` runs the
//! default list, so dropping from it writes that list explicitly, minus the
//! dropped plugins. Plugins match by class name: Cloudbase-Init still maps
//! the old `cloudbaseinit.plugins.windows.*` paths of moved plugins.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::guest::cloudbase::conf::{self, Conf, class_name};
use crate::guest::cloudbase::profile::WindowsProfile;
use crate::guest::cloudinit::effective::{Reason, SettingState};
use crate::guest::cloudinit::plan::{FilePlan, PlannedChange};
use crate::guest::cloudinit::profile::{Condition, Warning};

/// The option holding the plugin list, in `[DEFAULT]`.
pub const PLUGINS: &str = "plugins";

/// Cloudbase-Init's default `plugins` (cloudbaseinit/conf/default.py,
/// release 1.1.8), in order: what runs when a file has no `plugins=`.
pub const DEFAULT_PLUGINS: [&str; 13] = [
    "cloudbaseinit.plugins.common.mtu.MTUPlugin",
    "cloudbaseinit.plugins.windows.ntpclient.NTPClientPlugin",
    "cloudbaseinit.plugins.common.sethostname.SetHostNamePlugin",
    "cloudbaseinit.plugins.windows.createuser.CreateUserPlugin",
    "cloudbaseinit.plugins.common.networkconfig.NetworkConfigPlugin",
    "cloudbaseinit.plugins.windows.licensing.WindowsLicensingPlugin",
    "cloudbaseinit.plugins.common.sshpublickeys.SetUserSSHPublicKeysPlugin",
    "cloudbaseinit.plugins.windows.extendvolumes.ExtendVolumesPlugin",
    "cloudbaseinit.plugins.common.userdata.UserDataPlugin",
    "cloudbaseinit.plugins.common.setuserpassword.SetUserPasswordPlugin",
    "cloudbaseinit.plugins.windows.winrmlistener.ConfigWinRMListenerPlugin",
    "cloudbaseinit.plugins.windows.winrmcertificateauth.ConfigWinRMCertificateAuthPlugin",
    "cloudbaseinit.plugins.common.localscripts.LocalScriptsPlugin",
];

/// The plugin that runs Tencent Cloud's own scripts (password reset, agents).
pub const LOCAL_SCRIPTS_PLUGIN: &str = "LocalScriptsPlugin";

/// One conf file as read from the image.
#[derive(Debug, Clone)]
pub struct ConfFile {
    /// Root-relative path (shown in diffs and findings).
    pub path: PathBuf,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct WindowsPlan {
    pub files: Vec<FilePlan>,
    /// Warnings for this run, each once, in profile order.
    pub warnings: Vec<Warning>,
    /// Per requested profile: kept before and after the edit.
    pub before: Vec<SettingState>,
    pub after: Vec<SettingState>,
}

impl WindowsPlan {
    pub fn pending(&self) -> bool {
        self.files.iter().any(FilePlan::changed)
    }

    /// For `report::keep_view`: the same diff, `--dry-run`, `--check` and
    /// JSON as a Linux keep.
    pub fn view(&self) -> crate::report::KeepView<'_> {
        crate::report::KeepView {
            files: &self.files,
            warnings: &self.warnings,
            before: &self.before,
            after: &self.after,
        }
    }
}

/// The plugin list Cloudbase-Init runs from this file, and the line of the
/// `plugins=` that decides it (`None`: the default list).
pub fn effective_plugins(conf: &Conf) -> (Vec<String>, Option<usize>) {
    match conf.get(conf::DEFAULT_SECTION, PLUGINS) {
        Some(a) => (conf::list_items(&a.value), Some(a.line())),
        None => (
            DEFAULT_PLUGINS.iter().map(|p| p.to_string()).collect(),
            None,
        ),
    }
}

fn parse(file: &ConfFile) -> Result<Conf> {
    conf::parse(&file.text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}: {} (oslo.config refuses the file, so Cloudbase-Init does not start; \
             correct it by hand, then run again)",
            file.path.display(),
            e.line,
            e.message
        )
    })
}

/// Plans the edits that keep `profiles` in `files`. Pure: reads and writes
/// nothing.
pub fn plan(files: &[ConfFile], profiles: &[&WindowsProfile]) -> Result<WindowsPlan> {
    let confs: Vec<Conf> = files.iter().map(parse).collect::<Result<_>>()?;
    let mut file_plans = Vec::new();
    let mut warnings: Vec<Warning> = Vec::new();
    let mut push_warning = |w: &Warning| {
        if !warnings.iter().any(|x| x.id == w.id) {
            warnings.push(w.clone());
        }
    };
    for p in profiles {
        if let Some(why) = &p.not_applicable {
            push_warning(&Warning {
                id: format!("{}-not-applicable", p.name),
                text: format!("--keep {}: {why}", p.name),
                condition: Condition::Always,
            });
        }
        p.warnings.iter().for_each(&mut push_warning);
    }
    for (file, conf) in files.iter().zip(&confs) {
        let (current, line) = effective_plugins(conf);
        let dropped_by = |item: &str| -> Vec<String> {
            profiles
                .iter()
                .filter(|p| p.drop.iter().any(|d| d == class_name(item)))
                .map(|p| p.name.clone())
                .collect()
        };
        let kept: Vec<String> = current
            .iter()
            .filter(|i| dropped_by(i).is_empty())
            .cloned()
            .collect();
        if kept.len() == current.len() {
            file_plans.push(FilePlan {
                path: file.path.clone(),
                old_text: file.text.clone(),
                new_text: file.text.clone(),
                changes: Vec::new(),
            });
            continue;
        }
        let rewritten = conf
            .set_default_list(PLUGINS, &kept)
            .map_err(|e| anyhow::anyhow!("{}:{}: {}", file.path.display(), e.line, e.message))?;
        // Read the result back as Cloudbase-Init will: exactly the kept list.
        let check = parse(&ConfFile {
            path: file.path.clone(),
            text: rewritten.text.clone(),
        })?;
        if effective_plugins(&check).0 != kept {
            bail!(
                "{}: the edited plugins= would not read back as intended; nothing written \
                 (please report this with the file)",
                file.path.display()
            );
        }
        let mut changes = Vec::new();
        for item in current.iter().filter(|i| !dropped_by(i).is_empty()) {
            let class = class_name(item);
            if class == LOCAL_SCRIPTS_PLUGIN {
                push_warning(&Warning {
                    id: "localscripts-dropped".to_string(),
                    text: format!(
                        "{}: LocalScriptsPlugin no longer runs, and Tencent Cloud's own \
                         password reset and agents run through it: password set and reset \
                         from the console stop working",
                        file.path.display()
                    ),
                    condition: Condition::Always,
                });
            }
            let what = match line {
                Some(_) => format!("drop {class} from plugins="),
                None => format!(
                    "drop {class}: plugins= added with Cloudbase-Init's {} default plugins \
                     minus the dropped ones (the file had no plugins=, so all defaults ran)",
                    DEFAULT_PLUGINS.len()
                ),
            };
            changes.push(PlannedChange {
                profiles: dropped_by(item),
                line: rewritten.line,
                what,
            });
        }
        file_plans.push(FilePlan {
            path: file.path.clone(),
            old_text: file.text.clone(),
            new_text: rewritten.text,
            changes,
        });
    }
    let edited: Vec<ConfFile> = file_plans
        .iter()
        .map(|f| ConfFile {
            path: f.path.clone(),
            text: f.new_text.clone(),
        })
        .collect();
    let before = states(files, profiles)?;
    let after = states(&edited, profiles)?;
    Ok(WindowsPlan {
        files: file_plans,
        warnings,
        before,
        after,
    })
}

/// Per profile, whether Cloudbase-Init keeps its setting at first boot
/// with `files` as they are: what `status` shows, and a keep's before and
/// after. Pure.
pub fn states(files: &[ConfFile], profiles: &[&WindowsProfile]) -> Result<Vec<SettingState>> {
    let confs: Vec<Conf> = files.iter().map(parse).collect::<Result<_>>()?;
    Ok(profiles
        .iter()
        .map(|p| setting_state(files, &confs, p))
        .collect())
}

/// Whether a profile's setting survives first boot: none of its plugins
/// runs from any file.
fn setting_state(files: &[ConfFile], confs: &[Conf], profile: &WindowsProfile) -> SettingState {
    if let Some(why) = &profile.not_applicable {
        return SettingState {
            setting: profile.name.clone(),
            kept: true,
            reasons: vec![Reason {
                file: None,
                line: None,
                text: why.clone(),
                overwrites: false,
            }],
        };
    }
    let mut reasons = Vec::new();
    for (file, conf) in files.iter().zip(confs) {
        let (current, line) = effective_plugins(conf);
        for class in &profile.drop {
            let runs = current.iter().any(|i| class_name(i) == class);
            let text = match (runs, line) {
                (true, Some(_)) => format!("{class} is in plugins="),
                (true, None) => format!("{class} runs (no plugins=: the default plugins run)"),
                (false, _) => format!("{class} is not in plugins="),
            };
            reasons.push(Reason {
                file: Some(file.path.clone()),
                line,
                text,
                overwrites: runs,
            });
        }
    }
    SettingState {
        setting: profile.name.clone(),
        kept: !reasons.iter().any(|r| r.overwrites),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::cloudbase::profile::built_in;

    fn files(conf: &str, unattend: &str) -> Vec<ConfFile> {
        vec![
            ConfFile {
                path: "conf/cloudbase-init.conf".into(),
                text: conf.to_string(),
            },
            ConfFile {
                path: "conf/cloudbase-init-unattend.conf".into(),
                text: unattend.to_string(),
            },
        ]
    }

    fn keep(files: &[ConfFile], names: &[&str]) -> WindowsPlan {
        let all = built_in();
        let selected: Vec<&WindowsProfile> = all
            .iter()
            .filter(|p| names.contains(&p.name.as_str()))
            .collect();
        plan(files, &selected).expect("plans")
    }

    /// The files Cloudbase-Init's installer writes (tests/fixtures/cloudbase).
    const INSTALLER_CONF: &str =
        include_str!("../../../tests/fixtures/cloudbase/cloudbase-init.conf");
    const INSTALLER_UNATTEND: &str =
        include_str!("../../../tests/fixtures/cloudbase/cloudbase-init-unattend.conf");

    #[test]
    fn hostname_drops_from_both_files_and_writes_the_defaults() {
        let plan = keep(&files(INSTALLER_CONF, INSTALLER_UNATTEND), &["hostname"]);
        assert!(plan.pending());
        assert!(!plan.before[0].kept && plan.after[0].kept);
        let conf = conf::parse(&plan.files[0].new_text).unwrap();
        let want: Vec<String> = DEFAULT_PLUGINS
            .iter()
            .filter(|p| !p.ends_with(".SetHostNamePlugin"))
            .map(|p| p.to_string())
            .collect();
        assert_eq!(conf.default_list(PLUGINS), Some(want));
        assert_eq!(
            plan.files[1].new_text,
            INSTALLER_UNATTEND.replace(
                "cloudbaseinit.plugins.common.sethostname.SetHostNamePlugin,",
                ""
            )
        );
        assert!(plan.files[0].new_text.starts_with(INSTALLER_CONF));
        assert_eq!(plan.files[0].changes[0].line, 20);
    }

    #[test]
    fn old_paths_match_by_class_name_and_localscripts_warns() {
        let conf = "[DEFAULT]\nplugins=cloudbaseinit.plugins.windows.localscripts.LocalScriptsPlugin,\n  cloudbaseinit.plugins.windows.sethostname.SetHostNamePlugin\n";
        let custom = crate::guest::cloudbase::profile::parse_profile(
            "name: scripts\ndrop: [LocalScriptsPlugin]\n",
            "t",
        )
        .unwrap();
        let hostname = built_in()
            .into_iter()
            .find(|p| p.name == "hostname")
            .unwrap();
        let plan = plan(
            &files(conf, "[DEFAULT]\nplugins=\n")[..1],
            &[&hostname, &custom],
        )
        .unwrap();
        assert_eq!(plan.files[0].new_text, "[DEFAULT]\nplugins=\n");
        assert!(plan.warnings.iter().any(|w| w.id == "localscripts-dropped"));
    }

    #[test]
    fn nothing_to_do_and_not_applicable() {
        let plan = keep(
            &files("[DEFAULT]\nplugins=\n", "[DEFAULT]\nplugins=a.B\n"),
            &["hosts", "network"],
        );
        assert!(!plan.pending());
        assert!(plan.after.iter().all(|s| s.kept));
        assert!(plan.warnings.iter().any(|w| w.id == "hosts-not-applicable"));
    }

    #[test]
    fn reports_like_a_linux_keep() {
        use crate::report::{self, Mode, Style, TargetDescription};
        let plan = keep(
            &files(INSTALLER_CONF, INSTALLER_UNATTEND),
            &["hostname", "hosts"],
        );
        let target = TargetDescription {
            path: "win.qcow2".into(),
            image: None,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        report::keep_view(
            &mut out,
            &mut err,
            &target,
            plan.view(),
            &["hostname", "hosts"],
            Mode::Check,
            &[],
            crate::cli::Format::Text,
            Style::default(),
        )
        .unwrap();
        let (out, err) = (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        );
        assert!(
            out.contains("--- a/conf/cloudbase-init.conf\n+++ b/conf/cloudbase-init.conf\n"),
            "{out}"
        );
        assert!(out.contains("-plugins=cloudbaseinit.plugins.common.mtu.MTUPlugin,cloudbaseinit.plugins.common.sethostname.SetHostNamePlugin,"), "{out}");
        assert!(err.contains("conf/cloudbase-init-unattend.conf:21: [hostname] drop SetHostNamePlugin from plugins="), "{err}");
        assert!(err.contains("[hosts-not-applicable]"), "{err}");
        assert!(err.contains("check: 2 change(s) pending"), "{err}");
        assert!(
            err.contains("overwritten at first boot: hostname)"),
            "{err}"
        );
    }

    /// The dry-run diff of CRLF files applies with GNU patch (installed by
    /// .ci/run) and gives exactly the planned texts.
    #[test]
    fn the_crlf_diff_applies_with_gnu_patch() {
        let plan = keep(
            &files(INSTALLER_CONF, INSTALLER_UNATTEND),
            &["hostname", "network"],
        );
        let dir = tempfile::tempdir().unwrap();
        let mut diff = String::new();
        for f in &plan.files {
            let path = dir.path().join(&f.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &f.old_text).unwrap();
            diff.push_str(&crate::report::unified_diff(
                &f.path,
                &f.old_text,
                &f.new_text,
            ));
        }
        let mut child = std::process::Command::new("patch")
            .args(["-p1", "--batch", "--silent"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("GNU patch (Debian package patch)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(diff.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        for f in &plan.files {
            assert_eq!(
                std::fs::read_to_string(dir.path().join(&f.path)).unwrap(),
                f.new_text
            );
        }
    }

    #[test]
    fn refuses_a_file_oslo_config_refuses() {
        let e = plan(&files("[DEFAULT]\nplugins=a,\n\n  b\n", "")[..1], &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("conf/cloudbase-init.conf:4: Unexpected continuation line"),
            "{e}"
        );
    }
}
