//! The guest's init system: what it reads, how it merges, what it will do on
//! the first boot.

pub mod cloudbase;
pub mod cloudinit;
