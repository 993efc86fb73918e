//! Cloudbase-Init (Windows): its configuration files as oslo.config reads
//! them, the keep planner over them and the doctor's checks of them.

pub mod conf;
pub mod doctor;
pub mod plan;
pub mod profile;
