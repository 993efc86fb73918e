//! How the guest's bytes are reached: a directory, `/`, or an image file
//! (format, partition table, filesystem, loop device and mount), and the
//! confined path walk inside that root.

pub mod commit;
pub mod fs;
pub mod image;
pub mod lock;
pub mod root;
pub mod target;
