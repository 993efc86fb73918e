//! Planning a keep: which files to edit, and how, so that every requested
//! setting holds in the effective configuration and nothing else changes.
//!
//! Edits go into the file where a value lives, never into a new drop-in that
//! shadows it. A shadowing drop-in would have to copy whole module lists
//! (cloud-init replaces lists whole), and those copies would silently go
//! stale when a package update changes cloud.cfg; an edit in place is the
//! smallest change, shows the user the very file that decided, and keeps
//! working if a drop-in is removed later. So:
//! - module removals apply to every module list of every file;
//! - a `set` that the effective configuration already satisfies changes
//!   nothing; otherwise every file that sets the key is edited, and only
//!   when no file sets it is the key added: into the file whose non-mapping
//!   value hides the path, else into the highest-precedence file holding a
//!   mapping at the top-level key (`network: {renderers: [..]}`), else to
//!   cloud.cfg.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

use crate::guest::cloudinit::editor::{self, Edit};
use crate::guest::cloudinit::effective::{ConfigSet, Lookup, SettingState, setting_state};
use crate::guest::cloudinit::profile::{Condition, Profile, Warning};

#[derive(Debug, Clone)]
pub struct Plan {
    pub files: Vec<FilePlan>,
    /// Warnings that apply to this run, each once, in profile order.
    pub warnings: Vec<Warning>,
    /// Per requested setting: before and after the edit.
    pub before: Vec<SettingState>,
    pub after: Vec<SettingState>,
    /// The configuration as cloud-init will read it after these edits (the
    /// same read sequence: a file reached twice is still read twice).
    pub config_after: ConfigSet,
}

#[derive(Debug, Clone)]
pub struct FilePlan {
    /// Root-relative path.
    pub path: PathBuf,
    pub old_text: String,
    pub new_text: String,
    pub changes: Vec<PlannedChange>,
}

impl FilePlan {
    pub fn changed(&self) -> bool {
        self.old_text != self.new_text
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    /// The profiles that asked for this change, in the order requested.
    pub profiles: Vec<String>,
    pub line: usize,
    pub what: String,
}

impl Plan {
    pub fn pending(&self) -> bool {
        self.files.iter().any(FilePlan::changed)
    }
}

/// One distinct edit and who asked for it.
struct Wanted<'a> {
    edit: &'a Edit,
    profiles: Vec<&'a str>,
    warnings: Vec<&'a Warning>,
}

/// Plans the edits that keep `profiles` in `set`. Pure: reads nothing and
/// writes nothing.
pub fn plan(set: &ConfigSet, profiles: &[&Profile]) -> Result<Plan> {
    let wanted = distinct_edits(profiles);
    let per_file = edits_per_file(set, &wanted);
    let (files, changed_wanted) = edit_files(set, &wanted, &per_file)?;
    let new_set = set.with_texts(&files.iter().map(|f| f.new_text.clone()).collect::<Vec<_>>())?;
    if let Err(e) = verify(set, &new_set, &wanted) {
        let ignored = ignored_files_note(set);
        if ignored.is_empty() {
            return Err(e);
        }
        bail!("the keep would need a file that cloud-init ignores; nothing was written{ignored}");
    }
    let before: Vec<SettingState> = profiles.iter().map(|p| setting_state(set, p)).collect();
    let after: Vec<SettingState> = profiles
        .iter()
        .map(|p| setting_state(&new_set, p))
        .collect();
    if let Some(failed) = after.iter().find(|s| !s.kept) {
        let why: Vec<String> = failed
            .reasons
            .iter()
            .filter(|r| r.overwrites)
            .map(|r| r.text.clone())
            .collect();
        let ignored = ignored_files_note(set);
        bail!(
            "could not keep {}: {}; nothing was written{ignored}",
            failed.setting,
            why.join("; ")
        );
    }
    let mut warnings = applicable_warnings(set, profiles, &wanted, &changed_wanted);
    warnings.extend(duplicate_key_warnings(set, &wanted));
    warnings.extend(set.files.iter().filter_map(|f| {
        f.ignored.as_ref().map(|i| Warning {
            id: "ignored-file".to_string(),
            text: format!(
                "{}: {i}; nothing in it counts, and it was not edited",
                f.path.display()
            ),
            condition: Condition::Always,
        })
    }));
    Ok(Plan {
        files,
        warnings,
        before,
        after,
        config_after: new_set,
    })
}

/// A file cloud-init ignores is never edited; when a keep fails, this names
/// them, since fixing such a file is the way out.
fn ignored_files_note(set: &ConfigSet) -> String {
    set.files
        .iter()
        .filter_map(|f| {
            f.ignored.as_ref().map(|i| {
                format!(
                    "; {}: {i}, so it was not edited: fix it, then run again",
                    f.path.display()
                )
            })
        })
        .collect()
}

/// The profiles' edits, each once, with every profile that asked for it.
fn distinct_edits<'a>(profiles: &[&'a Profile]) -> Vec<Wanted<'a>> {
    let mut wanted: Vec<Wanted> = Vec::new();
    for profile in profiles {
        for pe in &profile.edits {
            match wanted.iter_mut().find(|w| *w.edit == pe.edit) {
                Some(w) => {
                    w.profiles.push(&profile.name);
                    w.warnings.extend(&pe.warnings);
                }
                None => wanted.push(Wanted {
                    edit: &pe.edit,
                    profiles: vec![&profile.name],
                    warnings: pe.warnings.iter().collect(),
                }),
            }
        }
    }
    wanted
}

/// Per file, the edits to apply there (with the index of the wanted edit
/// each serves): removals everywhere; a `set` only where the key is already
/// present, and added in one place when no file decides it (module doc).
/// A file cloud-init ignores gets no edit: it counts for nothing.
fn edits_per_file(set: &ConfigSet, wanted: &[Wanted]) -> Vec<Vec<(usize, Edit)>> {
    let mut per_file: Vec<Vec<(usize, Edit)>> = vec![Vec::new(); set.files.len()];
    let read = |file: usize| set.files[file].ignored.is_none();
    for (index, w) in wanted.iter().enumerate() {
        let Edit::Set {
            path,
            value,
            add_if_missing,
        } = w.edit
        else {
            for (file, edits) in per_file.iter_mut().enumerate() {
                if read(file) {
                    edits.push((index, w.edit.clone()));
                }
            }
            continue;
        };
        let keys: Vec<&str> = path.iter().map(String::as_str).collect();
        let current = set.lookup(&keys);
        if let Lookup::Found(current) = current {
            let top_level_key = (keys.len() == 1).then_some(keys[0]);
            if editor::satisfies(top_level_key, current, value) {
                continue;
            }
        }
        if current == Lookup::Missing && !add_if_missing {
            continue;
        }
        let decision = set.decider(&keys);
        let in_place = Edit::Set {
            path: path.clone(),
            value: value.clone(),
            add_if_missing: false,
        };
        // Where the path must be added when no file decides it at the full
        // path: in the file whose non-mapping value hides it (the decider,
        // e.g. a drop-in's `network: 5`); else in the highest-precedence file
        // whose mapping at the top-level key is merged over the lower ones (a
        // drop-in's `network: {renderers: [..]}`); else in cloud.cfg.
        let add_to = match &decision {
            Some(d) if d.complete => None,
            Some(d) => Some(d.file),
            None => Some(
                set.reads()
                    .filter(|&f| {
                        set.files[f]
                            .doc
                            .root
                            .as_ref()
                            .and_then(|r| r.get(&path[0]))
                            .is_some()
                    })
                    .last()
                    .unwrap_or(0),
            ),
        };
        for (file_index, edits) in per_file.iter_mut().enumerate() {
            if !read(file_index) {
                continue;
            }
            let add_here = *add_if_missing && add_to == Some(file_index);
            edits.push((
                index,
                if add_here {
                    w.edit.clone()
                } else {
                    in_place.clone()
                },
            ));
        }
    }
    per_file
}

/// Runs the editor on every file. Returns the file plans and, per wanted
/// edit, whether it changed anything (only then do its warnings apply).
fn edit_files(
    set: &ConfigSet,
    wanted: &[Wanted],
    per_file: &[Vec<(usize, Edit)>],
) -> Result<(Vec<FilePlan>, Vec<bool>)> {
    let mut files = Vec::new();
    let mut changed_wanted = vec![false; wanted.len()];
    for (file, edits) in set.files.iter().zip(per_file) {
        if edits.is_empty() {
            // Nothing to do here (or a file cloud-init ignores, which the
            // editor must not touch).
            files.push(FilePlan {
                path: file.path.clone(),
                old_text: file.text.clone(),
                new_text: file.text.clone(),
                changes: Vec::new(),
            });
            continue;
        }
        let just_edits: Vec<Edit> = edits.iter().map(|(_, e)| e.clone()).collect();
        let edited = editor::apply(&file.text, &just_edits)
            .map_err(|e| anyhow!("{}: {e}", file.path.display()))?;
        let is_drop_in = !files.is_empty();
        let changes = edited
            .changes
            .iter()
            .map(|c| {
                let wanted_index = edits[c.edit].0;
                let w = &wanted[wanted_index];
                changed_wanted[wanted_index] = true;
                let mut what = c.what.clone();
                if is_drop_in && matches!(w.edit, Edit::Set { .. }) {
                    what.push_str(" (this drop-in decides the value over cloud.cfg)");
                }
                PlannedChange {
                    profiles: w.profiles.iter().map(|p| p.to_string()).collect(),
                    line: c.line,
                    what,
                }
            })
            .collect();
        files.push(FilePlan {
            path: file.path.clone(),
            old_text: file.text.clone(),
            new_text: edited.text,
            changes,
        });
    }
    Ok((files, changed_wanted))
}

/// The edited set must mean exactly the intended change of the effective
/// configuration, nothing else.
fn verify(old: &ConfigSet, new: &ConfigSet, wanted: &[Wanted]) -> Result<()> {
    let mut expected = old.effective();
    for w in wanted {
        editor::apply_to_value(&mut expected, w.edit);
    }
    let actual = new.effective();
    if actual != expected {
        if let Some(&(file, line)) = old.merge_keys().first() {
            bail!(
                "{}: line {line}: cloud-init merges the files with this merge_how / merge_type, and the edits \
                 would not have the intended effect under it; nothing was written: edit the files by hand",
                old.files[file].path.display()
            );
        }
        bail!(
            "internal error: the edits would change the effective configuration beyond what was asked; nothing was written \
             (expected {expected}, got {actual}); please report this with the files"
        );
    }
    Ok(())
}

/// Warnings of the edits that changed something and of the profiles they
/// belong to, each once, where their condition holds.
fn applicable_warnings(
    set: &ConfigSet,
    profiles: &[&Profile],
    wanted: &[Wanted],
    changed_wanted: &[bool],
) -> Vec<Warning> {
    let mut warnings: Vec<Warning> = Vec::new();
    let keeping: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    let mut push = |warning: &Warning| {
        if holds(&warning.condition, set, &keeping) && !warnings.iter().any(|w| w.id == warning.id)
        {
            warnings.push(warning.clone());
        }
    };
    for (w, changed) in wanted.iter().zip(changed_wanted) {
        if *changed {
            w.warnings.iter().for_each(|warning| push(warning));
        }
    }
    for profile in profiles {
        let changed = wanted
            .iter()
            .zip(changed_wanted)
            .any(|(w, changed)| *changed && w.profiles.contains(&profile.name.as_str()));
        if changed {
            profile.warnings.iter().for_each(&mut push);
        }
    }
    warnings
}

fn holds(condition: &Condition, set: &ConfigSet, keeping: &[&str]) -> bool {
    match condition {
        Condition::Always => true,
        Condition::ModuleListed(module) => !set.module_entries(module).is_empty(),
        Condition::UnlessKeeping(names) => !names.iter().any(|n| keeping.contains(&n.as_str())),
        Condition::All(conditions) => conditions.iter().all(|c| holds(c, set, keeping)),
    }
}

/// PyYAML keeps the last of duplicated keys; we edited all of them, and say so.
fn duplicate_key_warnings(set: &ConfigSet, wanted: &[Wanted]) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for file in &set.files {
        let Some(root) = &file.doc.root else { continue };
        let crate::guest::cloudinit::document::NodeKind::Map { entries, .. } = &root.kind else {
            continue;
        };
        let mut seen: Vec<&str> = Vec::new();
        for (key, _) in entries.iter() {
            let Some(name) = key.key_str() else { continue };
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            let touched = wanted.iter().any(|w| match w.edit {
                Edit::Set { path, .. } => path[0] == name,
                Edit::RemoveModule { .. } => editor::is_module_list_key(name),
                Edit::RemoveListValue { key, .. } => key == name,
            });
            let lines: Vec<String> = root
                .entries_for(name)
                .map(|(k, _)| k.line.to_string())
                .collect();
            if touched && lines.len() > 1 {
                warnings.push(Warning {
                    id: "duplicate-key".to_string(),
                    text: format!(
                        "{name} is defined {} times in {} (lines {}); cloud-init (PyYAML) uses the last one; every occurrence was edited",
                        lines.len(),
                        file.path.display(),
                        lines.join(", ")
                    ),
                    condition: Condition::Always,
                });
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::cloudinit::profile;

    fn set(files: &[(&str, &str)]) -> ConfigSet {
        ConfigSet::from_test_files(files)
    }

    fn keep_network(files: &[(&str, &str)]) -> Vec<String> {
        let catalogue = profile::built_in();
        let network = profile::select(&catalogue, "network").unwrap();
        let plan = plan(&set(files), &network).unwrap_or_else(|e| panic!("{files:?}: {e:#}"));
        assert!(plan.after.iter().all(|s| s.kept));
        plan.files.into_iter().map(|f| f.new_text).collect()
    }

    #[test]
    fn a_missing_nested_key_is_added_where_the_prefix_lives() {
        // A mapping without the key: it is added into that mapping, in the
        // file that holds it (before this, nothing was edited and the plan
        // failed its own verification).
        assert_eq!(
            keep_network(&[("cloud.cfg", "network:\n  renderers: [eni]\n")]),
            ["network:\n  config: disabled\n  renderers: [eni]\n"]
        );
        assert_eq!(
            keep_network(&[
                ("cloud.cfg", "a: 1\n"),
                ("d/50.cfg", "network: {renderers: [x]}\n")
            ]),
            ["a: 1\n", "network: {config: disabled, renderers: [x]}\n"]
        );
        // The highest mapping gets it, over a lower one.
        assert_eq!(
            keep_network(&[
                ("cloud.cfg", "network: {renderers: [y]}\n"),
                ("d/50.cfg", "network: {renderers: [x]}\n"),
            ]),
            [
                "network: {renderers: [y]}\n",
                "network: {config: disabled, renderers: [x]}\n"
            ]
        );
        // A non-mapping that hides the path is replaced where it is.
        assert_eq!(
            keep_network(&[("cloud.cfg", "a: 1\n"), ("d/50.cfg", "network: 5\n")]),
            ["a: 1\n", "network: {config: disabled}\n"]
        );
        assert_eq!(
            keep_network(&[
                ("cloud.cfg", "network: {config: enabled}\n"),
                ("d/50.cfg", "network:\n")
            ]),
            [
                "network: {config: disabled}\n",
                "network: {config: disabled}\n"
            ]
        );
        // Nothing anywhere: added to cloud.cfg.
        assert_eq!(
            keep_network(&[("cloud.cfg", "a: 1\n"), ("d/50.cfg", "b: 2\n")]),
            ["a: 1\nnetwork: {config: disabled}\n", "b: 2\n"]
        );
    }
}
