//! Image files as targets: their format, partition table and filesystems,
//! and the kernel resources (qemu view, loop device, mount) that turn one
//! into a root directory, each behind a guard that releases it.
pub mod block;
pub mod containment;
pub mod format;
pub mod fstype;
pub mod interrupt;
pub mod inuse;
pub mod loopdev;
pub mod mount;
pub mod nbd;
pub mod open;
pub mod partition;
pub mod qcow2;
pub mod qemu;
pub mod tempdirs;
pub mod userspace;
pub mod windows;
