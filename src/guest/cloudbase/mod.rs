//! Cloudbase-Init, the Windows counterpart of cloud-init: what it reads
//! (its conf files and the registry) and the doctor's checks on it.

pub mod doctor;
pub mod registry;
