//! prepare-image: keep chosen settings of a cloud image through cloud-init's
//! first boot, by editing `/etc/cloud/cloud.cfg` (and its drop-ins) exactly.

pub mod document;
pub mod editor;
pub mod profile;
pub mod rootfs;
