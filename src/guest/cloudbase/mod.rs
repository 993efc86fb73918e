//! Cloudbase-Init, the Windows counterpart of cloud-init, and the Windows
//! image it runs in: what the doctor checks offline.

pub mod diagnose;
pub mod image;
