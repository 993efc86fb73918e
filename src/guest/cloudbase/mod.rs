//! Cloudbase-Init, the Windows counterpart of cloud-init, and the Windows
//! image it runs in: what it reads (its conf files and the registry) and
//! the doctor's checks on it.

pub mod diagnose;
pub mod doctor;
pub mod fix;
pub mod image;
pub mod registry;
