//! cloud-init's configuration as it will read it: files PyYAML cannot parse
//! (cloud-init ignores them whole), and the datasources it will try.

use std::path::{Path, PathBuf};

use super::python::Install;
use super::{Context, Id};
use crate::doctor::Evidence;
use crate::guest::cloudinit::document::{self, Value};
use crate::guest::cloudinit::effective::{self, CLOUD_CFG, ConfigSet};

/// Tencent Cloud delivers vendor_data.json and network_data.json through it.
const CONFIG_DRIVE: &str = "ConfigDrive";
/// The fallback datasource: it finds no metadata.
const NONE: &str = "None";

/// Reads the configuration (reporting what cloud-init would ignore) and
/// checks the datasources; returns the configuration for the other checks.
pub(super) fn check_config(ctx: &mut Context<'_>, install: &Install) -> Option<ConfigSet> {
    let config = match effective::load(ctx.root) {
        Ok(config) => {
            report_ignored_files(ctx, &config);
            Some(config)
        }
        Err(_) if ctx.read(CLOUD_CFG).is_none() => {
            // cloud-init then runs on its built-in defaults, which list no module at all.
            ctx.report(
                Id::CloudCfgMissing,
                String::new(),
                Some(Evidence::file(CLOUD_CFG)),
                None,
            );
            return None;
        }
        Err(_) => readable_files(ctx),
    };
    check_datasources(ctx, install, config.as_ref());
    config
}

/// Files cloud-init reads as `{}` because PyYAML rejects them (or their top
/// level is not a mapping): whatever they set does not happen.
fn report_ignored_files(ctx: &mut Context<'_>, config: &ConfigSet) {
    for file in &config.files {
        let Some(ignored) = &file.ignored else {
            continue;
        };
        let path = file.path.clone();
        ctx.report(
            Id::ConfigUnparsable,
            ignored.to_string(),
            Some(Evidence {
                path: path.clone(),
                line: ignored.line,
            }),
            Some(format!(
                "fix the YAML at {}:{} (check with python3 -c 'import yaml,sys; yaml.safe_load(open(sys.argv[1]))' /{})",
                path.display(),
                ignored.line.unwrap_or(1),
                path.display()
            )),
        );
    }
}

/// When the configuration cannot be loaded whole: each file cloud-init would
/// read, reporting the ones it would ignore, and the set of the others.
fn readable_files(ctx: &mut Context<'_>) -> Option<ConfigSet> {
    let mut paths = vec![CLOUD_CFG.to_string()];
    let mut drop_in_dir = Some(format!("{CLOUD_CFG}.d"));
    let mut files = Vec::new();
    let mut first = true;
    while let Some(rel) = paths.pop() {
        let Some((path, text)) = ctx.read(&rel) else {
            continue;
        };
        match document::parse(&text) {
            Ok(doc) => {
                if first {
                    // cloud.cfg's conf_d names another drop-in directory, or none.
                    if let Some(Value::Str(dir)) = doc.to_value().get("conf_d") {
                        drop_in_dir = Some(dir.trim().trim_start_matches('/').to_string())
                            .filter(|d| !d.is_empty());
                    }
                }
                files.push((path, text));
            }
            // A Jinja template is rendered by the build, not read as YAML by us.
            Err(e) if e.message.contains("Jinja") => {}
            Err(e) => ctx.report(
                Id::ConfigUnparsable,
                e.message.clone(),
                Some(Evidence {
                    path: path.clone(),
                    line: e.line,
                }),
                Some(format!("fix the YAML at {}:{} (check with python3 -c 'import yaml,sys; yaml.safe_load(open(sys.argv[1]))' /{})", path.display(), e.line.unwrap_or(1), path.display())),
            ),
        }
        if first {
            first = false;
            if let Some(dir) = &drop_in_dir {
                let mut drop_ins: Vec<String> = ctx
                    .root
                    .list_dir(Path::new(dir))
                    .ok()
                    .flatten()
                    .into_iter()
                    .flatten()
                    .filter(|e| e.is_regular_file)
                    .filter_map(|e| e.name.into_string().ok())
                    .filter(|n| n.ends_with(".cfg"))
                    .map(|n| format!("{dir}/{n}"))
                    .collect();
                // Popped from the end: reverse so they are read in lexical order.
                drop_ins.reverse();
                paths.extend(drop_ins);
            }
        }
    }
    if files.is_empty() {
        return None;
    }
    ConfigSet::from_texts(files).ok()
}

/// The datasources this cloud-init has: `cloudinit/sources/DataSourceX.py` → X.
fn available(ctx: &Context<'_>, install: &Install) -> Vec<String> {
    let dir = install.package().join("sources");
    ctx.names(&dir.display().to_string())
        .into_iter()
        .filter_map(|n| {
            Some(
                n.strip_prefix("DataSource")?
                    .strip_suffix(".py")?
                    .to_string(),
            )
        })
        .collect()
}

fn check_datasources(ctx: &mut Context<'_>, install: &Install, config: Option<&ConfigSet>) {
    let have = available(ctx, install);
    let mut problem = false;
    if let Some((path, text)) = ctx.read("etc/cloud/ds-identify.cfg") {
        // ds-identify: `datasource: NAME`, the last line wins.
        let named = text.lines().enumerate().filter_map(|(i, line)| {
            let line = line.split('#').next()?;
            let (key, value) = line.split_once(':')?;
            (key.trim() == "datasource")
                .then(|| (i + 1, value.trim().trim_matches(['"', '\'']).to_string()))
        });
        if let Some((line, name)) = named.last()
            && !have.contains(&name)
        {
            problem = true;
            ctx.report(
                Id::DatasourceUnknown,
                format!("{name} (ds-identify.cfg)"),
                Some(Evidence::line(&path, line)),
                None,
            );
        }
    }
    let decided = config.and_then(|c| {
        let decision = c.decider(&["datasource_list"])?;
        let Value::Seq(items) = decision.node.to_value() else {
            return None;
        };
        let names: Vec<String> = items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let path: PathBuf = c.files[decision.file].path.clone();
        Some((names, Evidence::line(path, decision.line)))
    });
    let Some((names, evidence)) = decided else {
        // Not set: cloud-init's built-in list, which includes ConfigDrive.
        if !problem {
            ctx.report(
                Id::DatasourceOk,
                "cloud-init's default datasource_list",
                None,
                None,
            );
        }
        return;
    };
    let listed = format!("[ {} ]", names.join(", "));
    if names.iter().all(|n| n == NONE) {
        ctx.report(Id::DatasourceNoneOnly, listed, Some(evidence), None);
        return;
    }
    for name in names.iter().filter(|n| !have.contains(n)) {
        problem = true;
        ctx.report(
            Id::DatasourceUnknown,
            name.clone(),
            Some(evidence.clone()),
            None,
        );
    }
    let usable = names.iter().any(|n| n != NONE && have.contains(n));
    if !usable {
        ctx.report(Id::DatasourceNoneUsable, listed, Some(evidence), None);
        return;
    }
    if !names.iter().any(|n| n == CONFIG_DRIVE) {
        ctx.report(
            Id::DatasourceWithoutConfigDrive,
            listed,
            Some(evidence),
            None,
        );
    } else if !problem {
        ctx.report(Id::DatasourceOk, listed, Some(evidence), None);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::doctor::Severity;

    fn with_list(list: &str) -> Vec<(String, Severity, Option<String>)> {
        let t = Tree::debian();
        t.file("etc/cloud/cloud.cfg", "cloud_init_modules: [ssh]\n")
            .file(
                "etc/cloud/cloud.cfg.d/90_ds.cfg",
                &format!("# ds\ndatasource_list: {list}\n"),
            );
        problems(&t.diagnose())
    }

    #[test]
    fn a_missing_cloud_cfg_is_an_error() {
        let t = Tree::debian();
        t.remove("etc/cloud/cloud.cfg");
        assert_eq!(
            problems(&t.diagnose()),
            vec![
                (
                    "cloud-cfg-missing".into(),
                    Severity::Error,
                    Some("etc/cloud/cloud.cfg".into())
                ),
                // No module list: the `ssh` module does not run either.
                (
                    "ssh-host-keys-shared".into(),
                    Severity::Warning,
                    Some("etc/ssh/ssh_host_ed25519_key".into())
                ),
            ]
        );
    }

    #[test]
    fn none_alone_is_an_error_at_the_deciding_line() {
        assert_eq!(
            with_list("[ None ]"),
            vec![(
                "datasource-list-none-only".into(),
                Severity::Error,
                Some("etc/cloud/cloud.cfg.d/90_ds.cfg:2".into())
            )]
        );
    }

    #[test]
    fn tencentcloud_on_upstream_cloud_init_is_unknown_and_nothing_usable_remains() {
        let got: Vec<_> = with_list("[ TencentCloud, None ]")
            .into_iter()
            .map(|(id, s, _)| (id, s))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "datasource-not-in-this-cloud-init".to_string(),
                    Severity::Warning
                ),
                ("datasource-none-usable".to_string(), Severity::Error),
            ]
        );
    }

    #[test]
    fn a_list_without_configdrive_is_a_warning_and_with_it_is_ok() {
        assert_eq!(
            with_list("[ NoCloud, None ]"),
            vec![(
                "datasource-without-configdrive".into(),
                Severity::Warning,
                Some("etc/cloud/cloud.cfg.d/90_ds.cfg:2".into())
            )]
        );
        assert_eq!(with_list("[ ConfigDrive ]"), vec![]);
    }

    #[test]
    fn ds_identify_naming_a_missing_datasource_is_a_warning() {
        let t = Tree::debian();
        t.file("etc/cloud/ds-identify.cfg", "datasource: TencentCloud\n");
        assert_eq!(
            problems(&t.diagnose()),
            vec![(
                "datasource-not-in-this-cloud-init".into(),
                Severity::Warning,
                Some("etc/cloud/ds-identify.cfg:1".into())
            )]
        );
    }

    #[test]
    fn a_drop_in_pyyaml_cannot_parse_is_an_error_and_the_rest_still_counts() {
        let t = Tree::debian();
        t.file("etc/cloud/cloud.cfg.d/50_bad.cfg", "a: 1\nb: [unclosed\n")
            .file(
                "etc/cloud/cloud.cfg.d/60_ds.cfg",
                "datasource_list: [ None ]\n",
            );
        let got = problems(&t.diagnose());
        assert_eq!(got[0].0, "config-unparsable");
        assert_eq!(got[0].1, Severity::Error);
        assert!(
            got[0]
                .2
                .as_deref()
                .unwrap()
                .starts_with("etc/cloud/cloud.cfg.d/50_bad.cfg:"),
            "{got:?}"
        );
        assert_eq!(got[1].0, "datasource-list-none-only");
        assert_eq!(got.len(), 2);
    }
}
