//! Filesystem readers in user space.

pub mod ntfs;
