//! The Windows keep profiles (`profiles/windows/*.yaml`): which
//! Cloudbase-Init plugins a keep drops, the warnings it carries, or why the
//! setting does not apply to Cloudbase-Init at all.

use anyhow::{Result, anyhow, bail};

use crate::guest::cloudinit::document::{self, Value};
use crate::guest::cloudinit::profile::{Condition, Named, Warning};

/// The built-in profiles, in `--keep all` order: the Linux names, then
/// the Windows-only ones (`by_name_only`: not in `all`).
const BUILT_IN: &[(&str, &str)] = &[
    (
        "hostname.yaml",
        include_str!("../../../profiles/windows/hostname.yaml"),
    ),
    (
        "hosts.yaml",
        include_str!("../../../profiles/windows/hosts.yaml"),
    ),
    (
        "dns.yaml",
        include_str!("../../../profiles/windows/dns.yaml"),
    ),
    (
        "repos.yaml",
        include_str!("../../../profiles/windows/repos.yaml"),
    ),
    (
        "ntp.yaml",
        include_str!("../../../profiles/windows/ntp.yaml"),
    ),
    (
        "passwords.yaml",
        include_str!("../../../profiles/windows/passwords.yaml"),
    ),
    (
        "keys.yaml",
        include_str!("../../../profiles/windows/keys.yaml"),
    ),
    (
        "network.yaml",
        include_str!("../../../profiles/windows/network.yaml"),
    ),
    (
        "user-scripts.yaml",
        include_str!("../../../profiles/windows/user-scripts.yaml"),
    ),
];

#[derive(Debug, Clone, PartialEq)]
pub struct WindowsProfile {
    pub name: String,
    pub summary: String,
    /// Plugin class names to drop from `plugins=` in every conf file.
    pub drop: Vec<String>,
    /// Shown whenever the profile is kept.
    pub warnings: Vec<Warning>,
    /// Why the setting is not Cloudbase-Init's to change (then `drop` is
    /// empty).
    pub not_applicable: Option<String>,
    /// Only by name, never in `--keep all`: `all` means the guide's eight
    /// settings, the same on Linux and Windows; a Windows-only extra
    /// (user-scripts) changes what the instance does and must be asked for.
    pub by_name_only: bool,
    /// `built-in` or the file it was read from.
    pub source: String,
}

/// `--keep` resolves Windows names with the Linux `select` (same `all`,
/// same suggestions).
impl Named for WindowsProfile {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_built_in(&self) -> bool {
        self.source == "built-in"
    }

    fn in_all(&self) -> bool {
        self.is_built_in() && !self.by_name_only
    }
}

pub fn built_in() -> Vec<WindowsProfile> {
    BUILT_IN
        .iter()
        .map(|(file, text)| {
            parse_profile(text, "built-in")
                .map_err(|e| anyhow!("built-in profile profiles/windows/{file}: {e:#}"))
                // Checked by the unit tests: a broken built-in is a build
                // defect, never user input.
                .expect("built-in Windows profiles are valid")
        })
        .collect()
}

/// Reads a profile: `name`, `summary`, and either `drop` (plugin class
/// names) with optional `warnings` (`id`, `text`), or `not_applicable`.
pub fn parse_profile(text: &str, source: &str) -> Result<WindowsProfile> {
    let doc = document::parse(text).map_err(|e| anyhow!("{e}"))?;
    let Some(Value::Map(entries)) = doc.root.as_ref().map(|r| r.to_value()) else {
        bail!("a Windows profile is a mapping; see profiles/windows/ for the format");
    };
    for (key, _) in entries.iter() {
        if !matches!(
            key.as_str(),
            Some("name" | "summary" | "drop" | "warnings" | "not_applicable" | "by_name_only")
        ) {
            bail!(
                "unknown key {key} (allowed: name, summary, drop, warnings, not_applicable, \
                 by_name_only)"
            );
        }
    }
    let root = Value::Map(entries);
    let string = |key: &str| -> Result<Option<String>> {
        match root.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.split_whitespace().collect::<Vec<_>>().join(" "))),
            Some(other) => bail!("`{key}` must be a string, not {other}"),
        }
    };
    let name = string("name")?.ok_or_else(|| anyhow!("a profile needs a `name`"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("a profile name uses letters, digits, `-` and `_` only");
    }
    let drop = match root.get("drop") {
        None => Vec::new(),
        Some(Value::Seq(items)) => items
            .iter()
            .map(|i| match i.as_str() {
                Some(s) if is_class_name(s) => Ok(s.to_string()),
                _ => bail!("`drop` lists plugin class names (SetHostNamePlugin), not {i}"),
            })
            .collect::<Result<_>>()?,
        Some(other) => bail!("`drop` must be a list of plugin class names, not {other}"),
    };
    let not_applicable = string("not_applicable")?;
    if drop.is_empty() == not_applicable.is_none() {
        bail!("`{name}`: give either `drop` (a non-empty list) or `not_applicable`");
    }
    let warnings = match root.get("warnings") {
        None => Vec::new(),
        Some(Value::Seq(items)) => items
            .iter()
            .map(|w| {
                let field = |k: &str| match w.get(k) {
                    Some(Value::Str(s)) => Ok(s.split_whitespace().collect::<Vec<_>>().join(" ")),
                    _ => bail!("each warning needs `id` and `text` strings"),
                };
                Ok(Warning {
                    id: field("id")?,
                    text: field("text")?,
                    condition: Condition::Always,
                })
            })
            .collect::<Result<_>>()?,
        Some(other) => bail!("`warnings` must be a list, not {other}"),
    };
    let by_name_only = match root.get("by_name_only") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => bail!("`by_name_only` must be true or false, not {other}"),
    };
    Ok(WindowsProfile {
        by_name_only,
        summary: string("summary")?.unwrap_or_default(),
        name,
        drop,
        warnings,
        not_applicable,
        source: source.to_string(),
    })
}

/// A Python class name: what Cloudbase-Init's plugin paths end in.
fn is_class_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_parse_and_cover_the_linux_names() {
        let windows = built_in();
        let linux = crate::guest::cloudinit::profile::built_in();
        for p in &linux {
            assert!(
                windows.iter().any(|w| w.name == p.name),
                "Windows has a profile for `{}`",
                p.name
            );
        }
        let by_name = |n: &str| windows.iter().find(|w| w.name == n).unwrap();
        assert_eq!(by_name("hostname").drop, ["SetHostNamePlugin"]);
        assert_eq!(by_name("dns").drop, ["NetworkConfigPlugin"]);
        assert!(by_name("hosts").not_applicable.is_some());
        assert!(by_name("repos").not_applicable.is_some());
        // Every dropped class is one of Cloudbase-Init's default plugins (a
        // typo would silently drop nothing).
        for p in &windows {
            for class in &p.drop {
                assert!(
                    crate::guest::cloudbase::plan::DEFAULT_PLUGINS
                        .iter()
                        .any(|d| crate::guest::cloudbase::conf::class_name(d) == class),
                    "{}: {class} is a default plugin",
                    p.name
                );
            }
        }
    }

    #[test]
    fn keep_lists_resolve_like_linux() {
        use crate::guest::cloudinit::profile::select;
        let all = built_in();
        let names = |list: &str| -> Vec<String> {
            select(&all, list)
                .unwrap()
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        assert_eq!(names("network,hostname"), ["hostname", "network"]);
        // `all` is the guide's eight settings, as on Linux: user-scripts
        // only when asked for by name.
        let linux: Vec<String> = crate::guest::cloudinit::profile::built_in()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names("all"), linux);
        assert_eq!(names("all,user-scripts").last().unwrap(), "user-scripts");
        assert_eq!(names("user-scripts"), ["user-scripts"]);
        let e = select(&all, "hostnme").unwrap_err();
        assert_eq!(e.suggestion.as_deref(), Some("hostname"));
    }

    #[test]
    fn refuses_bad_profiles() {
        for text in [
            "name: x\n",
            "name: x\ndrop: []\n",
            "name: x\ndrop: [a.b.C]\n",
            "name: x\ndrop: [C]\nnot_applicable: y\n",
            "name: x\ndrop: [C]\nextra: 1\n",
        ] {
            assert!(parse_profile(text, "t").is_err(), "{text}");
        }
    }
}
