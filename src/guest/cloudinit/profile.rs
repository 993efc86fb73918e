//! Keep profiles: named sets of cloud.cfg edits with the side effects each
//! edit carries. The built-ins are the YAML files under `profiles/linux/`, embedded
//! at build time; users add their own in the same format (`--profile-file`).

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::guest::cloudinit::document::{self, Node, NodeKind, Value};
use crate::guest::cloudinit::editor::Edit;

/// The built-in profiles, in the order `profiles` lists them and `all` keeps them.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "hostname.yaml",
        include_str!("../../../profiles/linux/hostname.yaml"),
    ),
    (
        "hosts.yaml",
        include_str!("../../../profiles/linux/hosts.yaml"),
    ),
    ("dns.yaml", include_str!("../../../profiles/linux/dns.yaml")),
    (
        "repos.yaml",
        include_str!("../../../profiles/linux/repos.yaml"),
    ),
    ("ntp.yaml", include_str!("../../../profiles/linux/ntp.yaml")),
    (
        "passwords.yaml",
        include_str!("../../../profiles/linux/passwords.yaml"),
    ),
    (
        "keys.yaml",
        include_str!("../../../profiles/linux/keys.yaml"),
    ),
    (
        "network.yaml",
        include_str!("../../../profiles/linux/network.yaml"),
    ),
];

/// `--keep all` means every built-in profile.
pub const ALL: &str = "all";

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub summary: String,
    pub edits: Vec<ProfileEdit>,
    /// Warnings that hold whenever any edit of this profile changes something.
    pub warnings: Vec<Warning>,
    /// `built-in` or the file it was read from.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProfileEdit {
    pub edit: Edit,
    /// Warnings that hold when this edit changes something.
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub id: String,
    pub text: String,
    pub condition: Condition,
}

/// When a warning applies, beyond its edit having changed something.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Always,
    /// Only if the module is still in a module list of the effective configuration.
    ModuleListed(String),
    /// Only if none of these profiles is kept in the same run.
    UnlessKeeping(Vec<String>),
    /// Only if every one of these holds (a warning with both keys).
    All(Vec<Condition>),
}

/// The built-in profiles.
pub fn built_in() -> Vec<Profile> {
    BUILT_IN
        .iter()
        .map(|(file, text)| {
            parse_profile(text, "built-in")
                .with_context(|| format!("built-in profile profiles/linux/{file}"))
                // The built-ins are checked by the test suite; a broken one is a
                // build defect, never user input.
                .expect("built-in profiles are valid")
        })
        .collect()
}

/// Reads a user profile file.
pub fn load_file(path: &Path) -> Result<Profile> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read profile file {} (check the path given to --profile-file)",
            path.display()
        )
    })?;
    parse_profile(&text, &path.display().to_string())
        .with_context(|| format!("profile file {}", path.display()))
}

/// The built-ins plus the user's profile files; a user profile may not reuse
/// a built-in name (that would silently change what `--keep NAME` means).
pub fn catalogue(profile_files: &[impl AsRef<Path>]) -> Result<Vec<Profile>> {
    let mut profiles = built_in();
    for file in profile_files {
        let profile = load_file(file.as_ref())?;
        if profile.name == ALL {
            bail!(
                "profile file {}: the name `all` is reserved; rename the profile",
                file.as_ref().display()
            );
        }
        if let Some(existing) = profiles.iter().find(|p| p.name == profile.name) {
            bail!(
                "profile file {}: a profile named `{}` already exists ({}); rename it",
                file.as_ref().display(),
                profile.name,
                existing.source
            );
        }
        profiles.push(profile);
    }
    Ok(profiles)
}

/// Why a `--keep` list could not be resolved; a usage error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProfile {
    pub name: String,
    pub suggestion: Option<String>,
    pub valid: Vec<String>,
}

impl std::fmt::Display for UnknownProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name.is_empty() {
            write!(f, "--keep needs at least one profile name")?;
        } else {
            write!(f, "unknown profile `{}` in --keep", self.name)?;
        }
        if let Some(s) = &self.suggestion {
            write!(f, "; did you mean `{s}`?")?;
        }
        write!(f, " (valid: {})", self.valid.join(", "))
    }
}

impl std::error::Error for UnknownProfile {}

/// Resolves a comma list such as `hostname,dns` or `all` to profiles, in the
/// catalogue's order, each once (Linux or Windows profiles).
pub fn select<'a, P: Named>(catalogue: &'a [P], list: &str) -> Result<Vec<&'a P>, UnknownProfile> {
    let mut valid: Vec<String> = catalogue.iter().map(|p| p.name().to_string()).collect();
    valid.push(ALL.to_string());
    let mut wanted: Vec<&str> = Vec::new();
    // Empty items (`hostname,` or `a,,b`) are tolerated; an empty list is not.
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == ALL {
            wanted.extend(catalogue.iter().filter(|p| p.in_all()).map(|p| p.name()));
        } else if catalogue.iter().any(|p| p.name() == name) {
            wanted.push(name);
        } else {
            let suggestion = valid
                .iter()
                .map(|v| (strsim::damerau_levenshtein(name, v), v))
                .filter(|(distance, v)| *distance <= 2.max(v.len() / 3))
                .min_by_key(|(distance, _)| *distance)
                .map(|(_, v)| v.clone());
            return Err(UnknownProfile {
                name: name.to_string(),
                suggestion: if name.is_empty() { None } else { suggestion },
                valid,
            });
        }
    }
    if wanted.is_empty() {
        return Err(UnknownProfile {
            name: String::new(),
            suggestion: None,
            valid,
        });
    }
    Ok(catalogue
        .iter()
        .filter(|p| wanted.contains(&p.name()))
        .collect())
}

/// What `--keep` needs of a profile, whichever guest it is for (Linux's
/// [`Profile`], Windows' `WindowsProfile`).
pub trait Named {
    fn name(&self) -> &str;
    fn is_built_in(&self) -> bool;
    /// Whether `all` includes it: the built-ins, unless one must be asked
    /// for by name.
    fn in_all(&self) -> bool {
        self.is_built_in()
    }
}

impl Named for Profile {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_built_in(&self) -> bool {
        self.source == "built-in"
    }
}

fn parse_profile(text: &str, source: &str) -> Result<Profile> {
    let doc = document::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(root) = doc.root else {
        bail!("the file is empty; see profiles/linux/ for the format")
    };
    let p = Fields::new(&root, &["name", "summary", "edits", "warnings"])?;
    let name = p.string("name")?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!(
            "line {}: a profile name uses letters, digits, `-` and `_` only",
            root.line
        );
    }
    let edits = match p.node("edits") {
        Some(Node {
            kind: NodeKind::Seq { items, .. },
            ..
        }) if !items.is_empty() => items.iter().map(parse_edit).collect::<Result<Vec<_>>>()?,
        _ => bail!("line {}: `edits` must be a non-empty list", root.line),
    };
    Ok(Profile {
        name,
        summary: p.string("summary")?,
        edits,
        warnings: parse_warnings(p.node("warnings"))?,
        source: source.to_string(),
    })
}

fn parse_edit(node: &Node) -> Result<ProfileEdit> {
    let f = Fields::new(
        node,
        &[
            "set",
            "value",
            "only_where_set",
            "remove_module",
            "remove_list_value",
            "warnings",
        ],
    )?;
    let kinds = ["set", "remove_module", "remove_list_value"]
        .iter()
        .filter(|k| f.node(k).is_some())
        .count();
    if kinds != 1 {
        bail!(
            "line {}: an edit has exactly one of `set`, `remove_module`, `remove_list_value`",
            node.line
        );
    }
    let edit = if f.node("set").is_some() {
        let path: Vec<String> = f.string("set")?.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            bail!(
                "line {}: `set` takes a key or a dotted key path such as network.config",
                node.line
            );
        }
        let value = f
            .node("value")
            .map(Node::to_value)
            .ok_or_else(|| anyhow::anyhow!("line {}: `set` needs a `value`", node.line))?;
        if matches!(value, Value::Seq(_) | Value::Map(_)) {
            bail!(
                "line {}: `value` must be a single value (true, false, a number or a string)",
                node.line
            );
        }
        let only_where_set = match f.node("only_where_set").map(Node::to_value) {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(_) => bail!("line {}: `only_where_set` is true or false", node.line),
        };
        Edit::Set {
            path,
            value,
            add_if_missing: !only_where_set,
        }
    } else if f.node("remove_module").is_some() {
        Edit::RemoveModule {
            module: f.string("remove_module")?,
        }
    } else {
        let inner = f.node("remove_list_value").expect("counted above");
        let g = Fields::new(inner, &["key", "value"])?;
        Edit::RemoveListValue {
            key: g.string("key")?,
            value: g.string("value")?,
        }
    };
    Ok(ProfileEdit {
        edit,
        warnings: parse_warnings(f.node("warnings"))?,
    })
}

fn parse_warnings(node: Option<&Node>) -> Result<Vec<Warning>> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    let NodeKind::Seq { items, .. } = &node.kind else {
        bail!("line {}: `warnings` must be a list", node.line);
    };
    items
        .iter()
        .map(|item| {
            let f = Fields::new(
                item,
                &["id", "text", "when_module_listed", "unless_keeping"],
            )?;
            let mut conditions = Vec::new();
            if f.node("when_module_listed").is_some() {
                conditions.push(Condition::ModuleListed(f.string("when_module_listed")?));
            }
            if let Some(list) = f.node("unless_keeping") {
                conditions.push(match list.to_value() {
                    Value::Seq(names) => Condition::UnlessKeeping(
                        names
                            .iter()
                            .map(|n| {
                                n.as_str().map(str::to_string).ok_or_else(|| {
                                    anyhow::anyhow!(
                                        "line {}: `unless_keeping` lists profile names",
                                        list.line
                                    )
                                })
                            })
                            .collect::<Result<_>>()?,
                    ),
                    _ => bail!(
                        "line {}: `unless_keeping` is a list of profile names",
                        list.line
                    ),
                });
            }
            let condition = match conditions.len() {
                0 => Condition::Always,
                1 => conditions.remove(0),
                _ => Condition::All(conditions),
            };
            Ok(Warning {
                id: f.string("id")?,
                text: f.string("text")?,
                condition,
            })
        })
        .collect()
}

/// The keys of a mapping node, checked against the keys allowed there, so a
/// typo in a profile file is an error, not a silently ignored edit.
struct Fields<'a> {
    node: &'a Node,
}

impl<'a> Fields<'a> {
    fn new(node: &'a Node, allowed: &[&str]) -> Result<Self> {
        let NodeKind::Map { entries, .. } = &node.kind else {
            bail!(
                "line {}: expected a mapping with keys {}",
                node.line,
                allowed.join(", ")
            );
        };
        for (key, _) in entries.iter() {
            match key.key_str() {
                Some(k) if allowed.contains(&k) => {}
                _ => bail!(
                    "line {}: unknown key `{}` (allowed here: {})",
                    key.line,
                    key.to_value(),
                    allowed.join(", ")
                ),
            }
        }
        Ok(Fields { node })
    }

    fn node(&self, key: &str) -> Option<&'a Node> {
        self.node.get(key).map(|(_, v)| v)
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.node(key).map(|n| (n, n.to_value())) {
            Some((_, Value::Str(s))) => Ok(s.trim().to_string()),
            Some((n, _)) => bail!("line {}: `{key}` must be a string", n.line),
            None => bail!("line {}: missing `{key}`", self.node.line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_are_the_eight_settings() {
        let names: Vec<String> = built_in().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "hostname",
                "hosts",
                "dns",
                "repos",
                "ntp",
                "passwords",
                "keys",
                "network"
            ]
        );
    }

    #[test]
    fn selection_suggests_the_nearest_name() {
        let catalogue = built_in();
        let err = select(&catalogue, "hostname,hostnme").unwrap_err();
        assert_eq!(err.suggestion.as_deref(), Some("hostname"));
        assert!(
            err.to_string().contains("valid: hostname, hosts, dns"),
            "{err}"
        );
        let picked: Vec<&str> = select(&catalogue, "dns,hostname,dns")
            .unwrap()
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(picked, ["hostname", "dns"]);
        assert_eq!(select(&catalogue, "all").unwrap().len(), 8);
        assert!(select(&catalogue, "").is_err());
        assert!(select(&catalogue, " , ").is_err());
        assert_eq!(select(&catalogue, "hostname,").unwrap().len(), 1);
    }

    #[test]
    fn profile_typos_are_errors_with_lines() {
        let err =
            parse_profile("name: x\nsummary: s\nedits:\n  - remove_modul: ntp\n", "t").unwrap_err();
        assert!(
            err.to_string()
                .contains("line 4: unknown key `remove_modul`"),
            "{err}"
        );
        let err = parse_profile("name: x\nsummary: s\nedits: []\n", "t").unwrap_err();
        assert!(err.to_string().contains("non-empty"), "{err}");
    }

    #[test]
    fn set_edits_read_values_as_yaml() {
        let p = parse_profile(
            "name: x\nsummary: s\nedits:\n  - set: a.b\n    value: off\n    only_where_set: true\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            p.edits[0].edit,
            Edit::Set {
                path: vec!["a".into(), "b".into()],
                value: Value::Bool(false),
                add_if_missing: false
            }
        );
    }
}
