//! Cloudbase-Init, the Windows counterpart of cloud-init, and the Windows
//! image it runs in: what it reads (its conf files and the registry), the
//! keep planner over its conf files, and the doctor's checks on it.

pub mod conf;
pub mod diagnose;
pub mod doctor;
pub mod fix;
pub mod image;
pub mod plan;
pub mod profile;
pub mod registry;
