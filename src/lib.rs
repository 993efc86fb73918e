//! prepare-image: keep chosen settings of a cloud image through cloud-init's
//! first boot, by editing `/etc/cloud/cloud.cfg` (and its drop-ins) exactly.

pub mod cli;
pub mod document;
pub mod editor;
pub mod effective;
pub mod image;
pub mod plan;
pub mod profile;
pub mod report;
pub mod rootfs;
pub mod target;
