//! prepare-image: keep chosen settings of a cloud image through cloud-init's
//! first boot, by editing `/etc/cloud/cloud.cfg` (and its drop-ins) exactly.
//!
//! The library has three wings, each behind a small interface:
//! - [`guest`]: what the guest's init system reads and does (cloud-init's
//!   YAML, effective configuration, editor, planner, profiles);
//! - [`access`]: how the guest's bytes are reached (a directory, `/`, or an
//!   image file) and the confined path walk inside that root;
//! - [`report`]: text and JSON output, knowing nothing of how results were
//!   computed.
//!
//! [`cli`] ties them together for the `prepare-image` command.

pub mod access;
pub mod cli;
pub mod doctor;
pub mod error;
pub mod guest;
pub mod report;
