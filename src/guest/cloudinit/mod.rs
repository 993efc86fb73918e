//! cloud-init: its YAML (read as PyYAML `safe_load` reads it), the effective
//! configuration across `cloud.cfg.d`, the lossless editor, the planner and
//! the keep profiles.

pub mod clean;
pub mod doctor;
pub mod document;
pub mod editor;
pub mod effective;
pub mod merge_key;
pub mod mergers;
pub mod plan;
pub mod profile;
pub mod yaml;
