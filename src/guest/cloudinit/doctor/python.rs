//! cloud-init's Python side: is it installed, does the interpreter its
//! commands name hold it (the guide's problem 2), and are the distributions
//! it needs installed for that interpreter (problem 1).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::marker::{self, Environment, Requirement};
use super::{Context, Id, TEXT_LIMIT};
use crate::access::root::{EntryKind, Root};
use crate::doctor::Evidence;
use crate::guest::cloudinit::document::Value;

/// Where Python installs live, relative to the root.
const LIB_BASES: &[&str] = &["usr/lib", "usr/lib64", "usr/local/lib", "usr/local/lib64"];
const SITE_NAMES: &[&str] = &["dist-packages", "site-packages"];
/// The commands cloud-init installs; the first must exist.
const ENTRY_SCRIPTS: &[&str] = &[
    "usr/bin/cloud-init",
    "usr/bin/cloud-id",
    "usr/bin/cloud-init-per",
];
/// Where `#!/usr/bin/env NAME` finds NAME: the default PATH, in order.
const PATH_DIRS: &[&str] = &[
    "usr/local/sbin",
    "usr/local/bin",
    "usr/sbin",
    "usr/bin",
    "sbin",
    "bin",
];

/// A Python version as far as the interpreter's name tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PyVersion {
    pub major: u32,
    pub minor: Option<u32>,
}

/// `python3.11` → 3.11, `python3` → 3, `python2.7m` → 2.7; `python` and
/// anything else → `None` (its version cannot be told from the name).
pub fn version_from_name(name: &str) -> Option<PyVersion> {
    let rest = name.strip_prefix("python")?;
    let rest = rest.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let (major, minor) = match rest.split_once('.') {
        Some((major, minor)) => (major, Some(minor)),
        None => (rest, None),
    };
    Some(PyVersion {
        major: major.parse().ok()?,
        minor: match minor {
            Some(m) => Some(m.parse().ok()?),
            None => None,
        },
    })
}

/// One cloud-init installation: the site directory holding `cloudinit/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// Root-relative, resolved.
    pub site: PathBuf,
    pub version: Option<String>,
    pub version_evidence: Option<Evidence>,
    /// The `.egg-info` or `.dist-info` directory of cloud-init, when there.
    pub metadata: Option<PathBuf>,
    /// The Python of the site directory (`python2.7/site-packages` → 2.7).
    pub python: Option<PyVersion>,
}

impl Install {
    pub fn package(&self) -> PathBuf {
        self.site.join("cloudinit")
    }
}

use super::dir_names as names;

fn resolved_dir(root: &Root, rel: &Path) -> Option<PathBuf> {
    let path = root.resolve(rel).ok()?;
    root.list_dir(&path).ok().flatten().map(|_| path)
}

fn push_unique(dirs: &mut Vec<PathBuf>, dir: Option<PathBuf>) {
    if let Some(dir) = dir
        && !dirs.contains(&dir)
    {
        dirs.push(dir);
    }
}

/// Every site directory in the image, whatever interpreter it belongs to.
fn all_site_dirs(root: &Root) -> Vec<(PathBuf, Option<PyVersion>)> {
    let mut dirs = Vec::new();
    let mut seen = Vec::new();
    for base in LIB_BASES {
        for name in names(root, Path::new(base)) {
            let Some(version) = version_from_name(&name) else {
                continue;
            };
            for site in SITE_NAMES {
                let dir = resolved_dir(root, &Path::new(base).join(&name).join(site));
                if let Some(dir) = dir
                    && !seen.contains(&dir)
                {
                    seen.push(dir.clone());
                    dirs.push((dir, Some(version)));
                }
            }
        }
    }
    dirs
}

/// The site directories an interpreter of this version searches, as
/// CPython's `site` module and the distributions' patches build them.
pub fn site_dirs_for(root: &Root, version: PyVersion) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut versioned = Vec::new();
    for base in LIB_BASES {
        for name in names(root, Path::new(base)) {
            let same = version_from_name(&name).is_some_and(|v| {
                v.major == version.major
                    && v.minor.is_some()
                    && (version.minor.is_none() || v.minor == version.minor)
            });
            if same {
                versioned.push(Path::new(base).join(name));
            }
        }
    }
    for dir in versioned {
        for site in SITE_NAMES {
            push_unique(&mut dirs, resolved_dir(root, &dir.join(site)));
        }
    }
    // Debian's interpreters also search the version-less python3 directory.
    if version.major == 3 {
        for base in ["usr/lib/python3", "usr/local/lib/python3"] {
            push_unique(
                &mut dirs,
                resolved_dir(root, &Path::new(base).join("dist-packages")),
            );
        }
    }
    dirs
}

fn read_version(root: &Root, site: &Path) -> Option<(String, Evidence)> {
    let path = site.join("cloudinit/version.py");
    let contents = root.read_file_prefix(&path, TEXT_LIMIT).ok()?;
    let text = String::from_utf8_lossy(&contents.bytes);
    text.lines().enumerate().find_map(|(i, line)| {
        let value = line
            .trim()
            .strip_prefix("__VERSION__")?
            .trim()
            .strip_prefix('=')?;
        let value = value.trim().trim_matches(['"', '\'']);
        Some((value.to_string(), Evidence::line(&contents.path, i + 1)))
    })
}

/// A metadata directory's distribution name and version: `PyYAML-6.0.egg-info`,
/// `cloud_init-22.4.2.dist-info`, `jsonpatch-1.21-py3.6.egg-info`.
fn metadata_name(entry: &str) -> Option<(String, String)> {
    let stem = entry
        .strip_suffix(".dist-info")
        .or_else(|| entry.strip_suffix(".egg-info"))
        .or_else(|| entry.strip_suffix(".egg"))?;
    let (name, rest) = stem.split_once('-').unwrap_or((stem, ""));
    let version = rest.split('-').next().unwrap_or("");
    Some((marker::normalize(name), version.to_string()))
}

fn find_installs(root: &Root) -> Vec<Install> {
    let mut installs = Vec::new();
    for (site, python) in all_site_dirs(root) {
        let is_dir = root
            .symlink_metadata(&site.join("cloudinit"))
            .ok()
            .flatten()
            .is_some_and(|e| e.kind == EntryKind::Directory);
        if !is_dir && !root.exists(&site.join("cloudinit/__init__.py")) {
            continue;
        }
        let metadata = names(root, &site)
            .into_iter()
            .find(|n| metadata_name(n).is_some_and(|(name, _)| name == "cloud-init"))
            .map(|n| site.join(n));
        let (version, version_evidence) = match read_version(root, &site) {
            Some((v, e)) => (Some(v), Some(e)),
            None => {
                let from_name = metadata
                    .as_ref()
                    .and_then(|m| metadata_name(&m.file_name()?.to_string_lossy()))
                    .map(|(_, v)| v)
                    .filter(|v| !v.is_empty());
                (from_name, metadata.clone().map(Evidence::file))
            }
        };
        installs.push(Install {
            site,
            version,
            version_evidence,
            metadata,
            python,
        });
    }
    installs
}

/// The interpreter a script's `#!` line names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shebang {
    /// The interpreter as written (for `env`, the name looked up).
    written: String,
    /// The absolute path that names it (for `env`, where it was found).
    path: Option<String>,
    /// Arguments after the interpreter (kept by --fix), e.g. `-s`.
    args: String,
}

fn parse_shebang(first_line: &str, root: &Root) -> Option<Shebang> {
    let line = first_line.strip_prefix("#!")?.trim();
    let mut words = line.splitn(2, char::is_whitespace);
    let interpreter = words.next()?.to_string();
    let rest = words.next().unwrap_or("").trim().to_string();
    if Path::new(&interpreter).file_name()? == "env" {
        let mut words = rest.splitn(2, char::is_whitespace);
        let name = words.next()?.to_string();
        let args = words.next().unwrap_or("").trim().to_string();
        let path = PATH_DIRS
            .iter()
            .map(|dir| format!("/{dir}/{name}"))
            .find(|p| root.exists(Path::new(p)));
        return Some(Shebang {
            written: name,
            path,
            args,
        });
    }
    Some(Shebang {
        path: Some(interpreter.clone()),
        written: interpreter,
        args: rest,
    })
}

/// What a cloud-init command's shebang leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryState {
    /// Not a Python script (cloud-init-per is shell).
    NotPython,
    /// The interpreter is missing or its link dangles.
    Missing {
        shebang: Shebang,
        resolved: Option<PathBuf>,
    },
    /// It runs an interpreter whose site directories do not hold cloud-init.
    WithoutCloudInit { shebang: Shebang, resolved: PathBuf },
    /// It works.
    Works {
        shebang: Shebang,
        resolved: PathBuf,
        version: PyVersion,
        /// Named through the unversioned `python` link the guide warns about.
        through_python_link: bool,
    },
}

fn holds(root: &Root, version: PyVersion, install: &Install) -> bool {
    site_dirs_for(root, version).contains(&install.site)
}

fn entry_state(root: &Root, first_line: &str, installs: &[Install]) -> EntryState {
    let Some(shebang) = parse_shebang(first_line, root) else {
        return EntryState::NotPython;
    };
    let looks_python = Path::new(&shebang.written)
        .file_name()
        // `python3`, `python2.7`, RHEL 8's `/usr/libexec/platform-python`.
        .is_some_and(|n| n.to_string_lossy().contains("python"));
    if !looks_python {
        return EntryState::NotPython;
    }
    let Some(path) = shebang.path.clone() else {
        return EntryState::Missing {
            shebang,
            resolved: None,
        };
    };
    let resolved = root.resolve(Path::new(&path)).ok();
    let regular = resolved.as_ref().is_some_and(|r| {
        root.symlink_metadata(r)
            .ok()
            .flatten()
            .is_some_and(|e| e.kind == EntryKind::File)
    });
    let Some(resolved) = resolved.filter(|_| regular) else {
        return EntryState::Missing {
            resolved: root.resolve(Path::new(&path)).ok(),
            shebang,
        };
    };
    let version = resolved
        .file_name()
        .and_then(|n| version_from_name(&n.to_string_lossy()));
    match version {
        Some(version) if installs.iter().any(|i| holds(root, version, i)) => {
            let through_python_link = Path::new(&path).file_name().is_some_and(|n| n == "python");
            EntryState::Works {
                shebang,
                resolved,
                version,
                through_python_link,
            }
        }
        _ => EntryState::WithoutCloudInit { shebang, resolved },
    }
}

/// The interpreter to name in the shebang: a versioned name (never the bare
/// `python` link) that exists and whose site directories hold cloud-init.
fn concrete_interpreter(root: &Root, install: &Install) -> Option<String> {
    let mut candidates = Vec::new();
    if let Some(v) = install.python {
        if let Some(minor) = v.minor {
            candidates.push(format!("usr/bin/python{}.{minor}", v.major));
        }
        candidates.push(format!("usr/bin/python{}", v.major));
        let mut versioned: Vec<String> = names(root, Path::new("usr/bin"))
            .into_iter()
            .filter(|n| {
                version_from_name(n).is_some_and(|nv| nv.major == v.major && nv.minor.is_some())
            })
            .filter(|n| !n.contains('-'))
            .collect();
        versioned.sort_by_key(|n| std::cmp::Reverse(version_from_name(n).and_then(|v| v.minor)));
        candidates.extend(versioned.into_iter().map(|n| format!("usr/bin/{n}")));
    }
    candidates.into_iter().find_map(|candidate| {
        let resolved = root.resolve(Path::new(&candidate)).ok()?;
        let is_file = root
            .symlink_metadata(&resolved)
            .ok()
            .flatten()
            .is_some_and(|e| e.kind == EntryKind::File);
        let version = version_from_name(&resolved.file_name()?.to_string_lossy())?;
        (is_file && holds(root, version, install)).then(|| format!("/{candidate}"))
    })
}

/// Runs the installation, shebang and dependency checks; returns the
/// installation the other checks use.
pub(super) fn check(ctx: &mut Context<'_>) -> Option<Install> {
    let root = ctx.root;
    let installs = find_installs(root);
    let entry = ctx.read(ENTRY_SCRIPTS[0]);
    let Some(first) = installs.first().cloned() else {
        let detail = match &entry {
            Some(_) => {
                "usr/bin/cloud-init is there, but no cloudinit package in any Python site directory"
                    .to_string()
            }
            None => "no cloudinit package in any Python site directory, and no usr/bin/cloud-init"
                .to_string(),
        };
        let evidence = entry.map(|(path, _)| Evidence::file(path));
        ctx.report(Id::NotInstalled, detail, evidence, None);
        return None;
    };
    let mut runner: Option<PyVersion> = None;
    let mut chosen = first.clone();
    let mut shebang_problem = false;
    for script in ENTRY_SCRIPTS {
        let Some((path, text)) = ctx.read(script) else {
            if *script == ENTRY_SCRIPTS[0] {
                ctx.report(
                    Id::EntryMissing,
                    format!("no {script}"),
                    Some(Evidence::file(*script)),
                    None,
                );
                shebang_problem = true;
            }
            continue;
        };
        let first_line = text.lines().next().unwrap_or("");
        let state = entry_state(root, first_line, &installs);
        let evidence = Some(Evidence::line(&path, 1));
        let fix_with = |install: &Install| {
            concrete_interpreter(root, install)
                .map(|i| format!("prepare-image doctor --fix (rewrites the shebang to #!{i})"))
        };
        match state {
            EntryState::NotPython => {}
            EntryState::Missing { shebang, resolved } => {
                shebang_problem = true;
                let via = match &resolved {
                    Some(r) if Some(format!("/{}", r.display())) != shebang.path => {
                        format!(" (it leads to /{}, which does not exist)", r.display())
                    }
                    _ => String::new(),
                };
                ctx.report(
                    Id::InterpreterMissing,
                    format!("#!{}{via}", shebang.written),
                    evidence,
                    fix_with(&first),
                );
            }
            EntryState::WithoutCloudInit { shebang, resolved } => {
                shebang_problem = true;
                let held = installs
                    .iter()
                    .map(|i| i.site.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                ctx.report(
                    Id::InterpreterWithoutCloudInit,
                    format!(
                        "#!{} runs /{}; cloud-init is in {held}",
                        shebang.written,
                        resolved.display()
                    ),
                    evidence,
                    fix_with(&first),
                );
            }
            EntryState::Works {
                shebang,
                resolved,
                version,
                through_python_link,
            } => {
                if *script == ENTRY_SCRIPTS[0] {
                    runner = Some(version);
                    if let Some(i) = installs.iter().find(|i| holds(root, version, i)) {
                        chosen = i.clone();
                    }
                }
                if through_python_link {
                    shebang_problem = true;
                    ctx.report(
                        Id::ShebangThroughPythonLink,
                        format!("#!{} is a link to /{}", shebang.written, resolved.display()),
                        evidence,
                        fix_with(&chosen),
                    );
                }
            }
        }
    }
    if !shebang_problem {
        ctx.report(Id::ShebangOk, String::new(), None, None);
    }
    let installed_detail = format!(
        "{} ({})",
        chosen.version.as_deref().unwrap_or("version unknown"),
        chosen.package().display()
    );
    ctx.report(
        Id::Installed,
        installed_detail,
        chosen.version_evidence.clone(),
        None,
    );
    // The interpreter that runs cloud-init: the shebang's when it works, else
    // the one its site directory belongs to (what --fix will name).
    let python = runner.or(chosen.python);
    check_dependencies(ctx, &chosen, python);
    Some(chosen)
}

/// What is installed for an interpreter: distribution names and top-level modules.
struct Installed {
    distributions: BTreeSet<String>,
    sites: Vec<PathBuf>,
}

impl Installed {
    fn scan(root: &Root, sites: Vec<PathBuf>) -> Installed {
        let mut distributions = BTreeSet::new();
        for site in &sites {
            for name in names(root, site) {
                if let Some((dist, _)) = metadata_name(&name) {
                    distributions.insert(dist);
                }
            }
        }
        Installed {
            distributions,
            sites,
        }
    }

    fn has_module(&self, root: &Root, module: &str) -> bool {
        self.sites.iter().any(|site| {
            root.exists(&site.join(module))
                || root.exists(&site.join(format!("{module}.py")))
                || names(root, site)
                    .iter()
                    .any(|n| n.starts_with(&format!("{module}.")) && n.ends_with(".so"))
        })
    }
}

/// A requirement line that holds for this interpreter: one whose marker is
/// unknown offline does not count against the image.
fn applying_requirement(line: &str, env: Environment) -> Option<Requirement> {
    marker::parse_requirement(line).filter(|req| {
        req.marker
            .as_deref()
            .is_none_or(|m| marker::evaluate(m, env) == Some(true))
    })
}

/// The requirements in cloud-init's own metadata, with the line of each.
fn metadata_requirements(
    root: &Root,
    metadata: &Path,
    env: Environment,
) -> Vec<(Requirement, Evidence)> {
    let mut out = Vec::new();
    let requires = metadata.join("requires.txt");
    if let Ok(contents) = root.read_file_prefix(&requires, TEXT_LIMIT) {
        let text = String::from_utf8_lossy(&contents.bytes);
        // None: the section is never installed (an extra, or a marker that
        // does not hold); Some: it applies.
        let mut section_applies = true;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(section) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section_applies = match section.split_once(':') {
                    // `[:marker]`: a condition on the environment only.
                    Some(("", condition)) => marker::evaluate(condition, env) == Some(true),
                    // `[extra]` or `[extra:marker]`: only with the extra.
                    _ => false,
                };
                continue;
            }
            if !section_applies {
                continue;
            }
            if let Some(req) = applying_requirement(line, env) {
                out.push((req, Evidence::line(&contents.path, i + 1)));
            }
        }
        return out;
    }
    for file in ["METADATA", "PKG-INFO"] {
        let Ok(contents) = root.read_file_prefix(&metadata.join(file), TEXT_LIMIT) else {
            continue;
        };
        let text = String::from_utf8_lossy(&contents.bytes);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                break; // the headers end at the first blank line
            }
            let Some(value) = line.strip_prefix("Requires-Dist:") else {
                continue;
            };
            if let Some(req) = applying_requirement(value, env) {
                out.push((req, Evidence::line(&contents.path, i + 1)));
            }
        }
        return out;
    }
    out
}

/// The family name (`debian`, `rhel`, `suse`) of the image's distribution.
fn family(ctx: &Context<'_>) -> Option<String> {
    let families = ctx.python_data.get("families")?.as_map()?;
    for name in ctx.os.names() {
        for (family, spec) in families {
            let Some(Value::Seq(ids)) = spec.get("ids") else {
                continue;
            };
            if ids.iter().any(|id| id.as_str() == Some(name)) {
                return family.as_str().map(str::to_string);
            }
        }
    }
    None
}

/// The command that reinstalls the distribution package providing `dist`.
fn reinstall_command(ctx: &Context<'_>, dist: &str, python: Option<PyVersion>) -> Option<String> {
    let family = family(ctx)?;
    let packages = ctx.python_data.get("packages")?.get(dist)?;
    let key = if python.is_some_and(|p| p.major == 2) {
        format!("{family}-python2")
    } else {
        family.clone()
    };
    let package = packages.get(&key).and_then(Value::as_str)?;
    let template = ctx
        .python_data
        .get("families")?
        .get(&family)?
        .get("reinstall")?
        .as_str()?;
    Some(template.replace("{package}", package))
}

fn check_dependencies(ctx: &mut Context<'_>, install: &Install, python: Option<PyVersion>) {
    let root = ctx.root;
    let sites = match python {
        Some(version) => site_dirs_for(root, version),
        None => vec![install.site.clone()],
    };
    let installed = Installed::scan(root, sites);
    let env = Environment {
        python: python.and_then(|p| Some((p.major, p.minor?))),
    };
    let interpreter = python.map_or_else(
        || "its interpreter".to_string(),
        |p| match p.minor {
            Some(minor) => format!("Python {}.{minor}", p.major),
            None => format!("Python {}", p.major),
        },
    );
    let mut missing = false;
    let mut reported = BTreeSet::new();
    let requirements = install
        .metadata
        .as_ref()
        .map(|m| metadata_requirements(root, m, env))
        .unwrap_or_default();
    for (req, evidence) in requirements {
        if installed.distributions.contains(&req.name) || !reported.insert(req.name.clone()) {
            continue;
        }
        missing = true;
        let fix = reinstall_command(ctx, &req.name, python);
        ctx.report(
            Id::DependencyMissing,
            format!(
                "{} (cloud-init's metadata requires it) is not installed for {interpreter}",
                req.display
            ),
            Some(evidence),
            fix,
        );
    }
    let imports: Vec<(String, String, String)> = match ctx.python_data.get("startup_imports") {
        Some(Value::Seq(items)) => items
            .iter()
            .filter_map(|i| {
                Some((
                    i.get("module")?.as_str()?.to_string(),
                    i.get("distribution")?.as_str()?.to_string(),
                    i.get("imported_by")?.as_str()?.to_string(),
                ))
            })
            .collect(),
        _ => Vec::new(),
    };
    for (module, dist, imported_by) in imports {
        if reported.contains(&dist) || installed.has_module(root, &module) {
            continue;
        }
        // Only where this cloud-init really imports it, and pointing at the line.
        let Ok(contents) = root.read_file_prefix(&install.package().join(&imported_by), TEXT_LIMIT)
        else {
            continue;
        };
        let text = String::from_utf8_lossy(&contents.bytes);
        let Some(line) = text.lines().position(|l| {
            let l = l.trim();
            l == format!("import {module}") || l.starts_with(&format!("from {module} import"))
        }) else {
            continue;
        };
        reported.insert(dist.clone());
        missing = true;
        let fix = reinstall_command(ctx, &dist, python);
        ctx.report(
            Id::DependencyMissing,
            format!("module {module} ({dist}) is not installed for {interpreter}"),
            Some(Evidence::line(&contents.path, line + 1)),
            fix,
        );
    }
    if !missing {
        ctx.report(
            Id::DependenciesInstalled,
            format!("for {interpreter}"),
            None,
            None,
        );
    }
}

/// A shebang rewritten by `doctor --fix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShebangFix {
    pub path: PathBuf,
    pub old: String,
    pub new: String,
}

/// `doctor --fix`: rewrites the first line of every cloud-init command whose
/// interpreter is missing, does not hold cloud-init, or is the bare `python`
/// link, to name the concrete interpreter that holds it. Each file is
/// replaced atomically with its mode, owner and extended attributes. With
/// `dry_run` nothing is written.
pub fn fix_shebangs(root: &Root, dry_run: bool) -> Result<Vec<ShebangFix>> {
    let installs = find_installs(root);
    let mut fixes = Vec::new();
    for script in ENTRY_SCRIPTS {
        // One byte past the limit tells a script too large to rewrite whole from a truncated one.
        let Ok(contents) = root.read_file_prefix(Path::new(script), TEXT_LIMIT + 1) else {
            continue;
        };
        if contents.bytes.len() as u64 > TEXT_LIMIT {
            bail!(
                "{} is larger than {TEXT_LIMIT} bytes: not a cloud-init entry script; not rewritten",
                root.path().join(&contents.path).display()
            );
        }
        let Ok(text) = String::from_utf8(contents.bytes.clone()) else {
            continue;
        };
        let (first_line, rest) = text.split_at(text.find('\n').unwrap_or(text.len()));
        let state = entry_state(root, first_line.trim_end_matches('\r'), &installs);
        let (shebang, target_install) = match state {
            EntryState::Missing { shebang, .. } | EntryState::WithoutCloudInit { shebang, .. } => {
                (shebang, installs.first())
            }
            EntryState::Works {
                shebang,
                version,
                through_python_link: true,
                ..
            } => (shebang, installs.iter().find(|i| holds(root, version, i))),
            _ => continue,
        };
        let Some(interpreter) = target_install.and_then(|i| concrete_interpreter(root, i)) else {
            continue;
        };
        let carriage = if first_line.ends_with('\r') { "\r" } else { "" };
        let new_line = if shebang.args.is_empty() {
            format!("#!{interpreter}{carriage}")
        } else {
            format!("#!{interpreter} {}{carriage}", shebang.args)
        };
        if !dry_run {
            let new_text = format!("{new_line}{rest}");
            root.prepare_write(Path::new(script), new_text.as_bytes())?
                .commit(None)?;
        }
        fixes.push(ShebangFix {
            path: contents.path,
            old: first_line.trim_end_matches('\r').to_string(),
            new: new_line.trim_end_matches('\r').to_string(),
        });
    }
    Ok(fixes)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::doctor::Severity;

    const SITE: &str = "usr/lib/python3/dist-packages";

    #[test]
    fn versions_come_from_interpreter_names() {
        assert_eq!(
            version_from_name("python3.11"),
            Some(PyVersion {
                major: 3,
                minor: Some(11)
            })
        );
        assert_eq!(
            version_from_name("python2.7m"),
            Some(PyVersion {
                major: 2,
                minor: Some(7)
            })
        );
        assert_eq!(
            version_from_name("python3"),
            Some(PyVersion {
                major: 3,
                minor: None
            })
        );
        assert_eq!(version_from_name("python"), None);
        assert_eq!(version_from_name("false"), None);
    }

    #[test]
    fn no_cloudinit_package_is_cloud_init_not_installed() {
        let t = Tree::debian();
        t.remove(&format!("{SITE}/cloudinit"));
        let findings = t.diagnose();
        let f = the(&findings, "cloud-init-not-installed");
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(
            f.evidence.as_ref().unwrap().to_string(),
            "usr/bin/cloud-init"
        );
        // Nothing about cloud-init's own configuration is claimed without it.
        assert!(
            findings
                .iter()
                .all(|f| f.id != "datasource-ok" && f.id != "cloud-init-enabled")
        );
    }

    #[test]
    fn the_version_comes_from_version_py_or_the_metadata_name() {
        let t = Tree::debian();
        let f = t.diagnose();
        let installed = the(&f, "cloud-init-installed");
        assert_eq!(
            installed.evidence.as_ref().unwrap().to_string(),
            "usr/lib/python3/dist-packages/cloudinit/version.py:3"
        );
        t.remove(&format!("{SITE}/cloudinit/version.py"));
        let f = t.diagnose();
        let installed = the(&f, "cloud-init-installed");
        assert!(
            installed.detail.starts_with("22.4.2 "),
            "{}",
            installed.detail
        );
        assert_eq!(
            installed.evidence.as_ref().unwrap().to_string(),
            "usr/lib/python3/dist-packages/cloud_init-22.4.2.egg-info"
        );
    }

    #[test]
    fn a_missing_startup_module_names_the_import_line_and_the_debian_package() {
        let t = Tree::debian();
        t.remove(&format!("{SITE}/yaml"))
            .remove(&format!("{SITE}/PyYAML-6.0.egg-info"));
        let findings = t.diagnose();
        assert_eq!(
            problems(&findings),
            vec![(
                "python-dependency-missing".to_string(),
                Severity::Error,
                Some("usr/lib/python3/dist-packages/cloudinit/safeyaml.py:3".to_string())
            )]
        );
        let f = the(&findings, "python-dependency-missing");
        assert_eq!(f.fix, "apt-get install --reinstall python3-yaml");
        assert!(f.detail.contains("Python 3.11"), "{}", f.detail);
    }

    #[test]
    fn requires_txt_is_read_with_extras_and_markers() {
        let t = Tree::debian();
        t.file("etc/os-release", "ID=centos\nID_LIKE=\"rhel fedora\"\n")
            .file(
                &format!("{SITE}/cloud_init-22.4.2.egg-info/requires.txt"),
                "jinja2\nPyYAML\nrequests\n\n[:python_version < \"3\"]\nsix\n\n[test]\npytest\n\n[:python_version >= \"3.6\"]\noauthlib ; python_version >= \"3\"\nnever ; extra == \"x\"\n",
            )
            .file(&format!("{SITE}/Jinja2-3.1.2.egg-info/PKG-INFO"), "")
            .remove(&format!("{SITE}/PyYAML-6.0.egg-info"));
        let findings = t.diagnose();
        let got: Vec<_> = findings
            .iter()
            .filter(|f| f.id == "python-dependency-missing")
            .map(|f| (f.evidence.as_ref().unwrap().to_string(), f.fix.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    format!("{SITE}/cloud_init-22.4.2.egg-info/requires.txt:2"),
                    "yum reinstall -y python3-pyyaml".to_string()
                ),
                (
                    format!("{SITE}/cloud_init-22.4.2.egg-info/requires.txt:12"),
                    "yum reinstall -y python3-oauthlib".to_string()
                ),
            ]
        );
    }

    #[test]
    fn dist_info_metadata_requires_dist_is_read() {
        let t = Tree::debian();
        t.remove(&format!("{SITE}/cloud_init-22.4.2.egg-info")).file(
            &format!("{SITE}/cloud_init-24.1.dist-info/METADATA"),
            "Metadata-Version: 2.1\nName: cloud-init\nRequires-Dist: jsonschema\nRequires-Dist: PyYAML\nRequires-Dist: pytest ; extra == 'test'\n\nRequires-Dist: body-not-header\n",
        );
        let findings = t.diagnose();
        let got: Vec<_> = problems(&findings)
            .into_iter()
            .map(|(_, _, e)| e.unwrap())
            .collect();
        assert_eq!(
            got,
            [format!("{SITE}/cloud_init-24.1.dist-info/METADATA:3")]
        );
    }

    #[test]
    fn python_link_repointed_to_an_interpreter_without_cloud_init_is_problem_two() {
        // CentOS 7 style: cloud-init installed for python2.7, /usr/bin/python re-pointed to python3.
        let t = Tree::new();
        let site = "usr/lib/python2.7/site-packages";
        t.file("etc/os-release", "ID=centos\nID_LIKE=\"rhel fedora\"\n")
            .file(&format!("{site}/cloudinit/__init__.py"), "")
            .file(
                &format!("{site}/cloudinit/version.py"),
                "__VERSION__ = '19.4'\n",
            )
            .file("usr/bin/python2.7", "")
            .link("usr/bin/python2", "python2.7")
            .file("usr/bin/python3.6", "")
            .link("usr/bin/python3", "python3.6")
            .dir("usr/lib64/python3.6/site-packages")
            .link("usr/bin/python", "python3")
            .file("usr/bin/cloud-init", "#!/usr/bin/python -s\nimport sys\n");
        let findings = t.diagnose();
        let f = the(&findings, "entry-interpreter-without-cloud-init");
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(
            f.evidence.as_ref().unwrap().to_string(),
            "usr/bin/cloud-init:1"
        );
        assert!(f.detail.contains("/usr/bin/python3.6"), "{}", f.detail);
        assert!(f.fix.contains("#!/usr/bin/python2.7"), "{}", f.fix);

        let root = Root::open(t.path()).unwrap();
        let planned = fix_shebangs(&root, true).unwrap();
        assert_eq!(planned[0].new, "#!/usr/bin/python2.7 -s");
        assert!(
            std::fs::read_to_string(t.path().join("usr/bin/cloud-init"))
                .unwrap()
                .starts_with("#!/usr/bin/python -s")
        );
        std::fs::set_permissions(
            t.path().join("usr/bin/cloud-init"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let fixes = fix_shebangs(&root, false).unwrap();
        assert_eq!(fixes, planned);
        assert_eq!(
            std::fs::read_to_string(t.path().join("usr/bin/cloud-init")).unwrap(),
            "#!/usr/bin/python2.7 -s\nimport sys\n"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(t.path().join("usr/bin/cloud-init"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o7777, 0o755);
        let after = t.diagnose();
        assert!(
            after.iter().all(|f| !f.id.starts_with("entry-interpreter")),
            "{after:#?}"
        );
        assert_eq!(the(&after, "entry-shebang-ok").severity, Severity::Ok);
        assert!(fix_shebangs(&root, false).unwrap().is_empty());
    }

    #[test]
    fn a_dangling_interpreter_is_reported_and_fixed() {
        let t = Tree::debian();
        t.file("usr/bin/cloud-id", "#!/usr/bin/python3.9\nimport sys\n");
        let findings = t.diagnose();
        let f = the(&findings, "entry-interpreter-missing");
        assert_eq!(
            f.evidence.as_ref().unwrap().to_string(),
            "usr/bin/cloud-id:1"
        );
        let root = Root::open(t.path()).unwrap();
        let fixes = fix_shebangs(&root, false).unwrap();
        assert_eq!(fixes.len(), 1);
        // Debian's own name for the python3 that holds python3/dist-packages.
        assert_eq!(fixes[0].new, "#!/usr/bin/python3");
        assert_eq!(problems(&t.diagnose()), vec![]);
    }

    #[test]
    fn a_working_shebang_through_the_python_link_is_a_warning() {
        let t = Tree::debian();
        t.link("usr/bin/python", "python3")
            .file("usr/bin/cloud-init", "#!/usr/bin/env python\nimport sys\n");
        let findings = t.diagnose();
        let f = the(&findings, "entry-shebang-through-python-link");
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(
            f.evidence.as_ref().unwrap().to_string(),
            "usr/bin/cloud-init:1"
        );
        // The dependencies are still checked for the interpreter it runs.
        assert_eq!(
            the(&findings, "python-dependencies-installed").detail,
            "for Python 3.11"
        );
    }

    #[test]
    fn rhel_8_platform_python_is_followed_to_its_interpreter() {
        let t = Tree::new();
        let site = "usr/lib/python3.6/site-packages";
        t.file("etc/os-release", "ID=\"rhel\"\nID_LIKE=\"fedora\"\n")
            .file(
                &format!("{site}/cloudinit/version.py"),
                "__VERSION__ = \"22.1\"\n",
            )
            .file("usr/bin/python3.6", "")
            .link("usr/libexec/platform-python", "/usr/bin/python3.6")
            .file("usr/bin/cloud-init", "#!/usr/libexec/platform-python -s\n");
        let findings = t.diagnose();
        assert_eq!(the(&findings, "entry-shebang-ok").severity, Severity::Ok);
        t.remove("usr/bin/python3.6");
        let findings = t.diagnose();
        let f = the(&findings, "entry-interpreter-missing");
        assert!(
            f.detail
                .contains("/usr/bin/python3.6, which does not exist"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn a_missing_command_is_an_error() {
        let t = Tree::debian();
        t.remove("usr/bin/cloud-init");
        let findings = t.diagnose();
        assert_eq!(
            problems(&findings),
            vec![(
                "cloud-init-entry-missing".to_string(),
                Severity::Error,
                Some("usr/bin/cloud-init".to_string())
            )]
        );
    }
}
