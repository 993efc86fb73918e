//! Targets that yield a root filesystem: a directory (a mounted image, a
//! chroot, `/`) as it is, or an image file mounted through `image`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::access::image::open::{ImageInfo, OpenedImage, RootMarker};
use crate::access::root::Root;
use crate::error::UsageError;

#[derive(Debug)]
pub enum Target {
    Directory(Root),
    // Boxed: an opened image carries several guards; a directory only a descriptor.
    Image(Box<OpenedImage>),
}

impl Target {
    /// Opens TARGET: a directory is used as the root; a regular file is an
    /// image whose root filesystem, the partition holding `marker`, is found
    /// and mounted (read-write only when `writable`). `partition` applies to
    /// images only. `allow_backing` lets an image read its backing chain
    /// (see `image::containment`).
    pub fn open(
        path: &Path,
        writable: bool,
        partition: Option<u32>,
        allow_backing: bool,
        marker: RootMarker,
    ) -> Result<Target> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "image root {} does not exist: TARGET is the image's root directory or an image file",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("opening target {}", path.display())),
        };
        if meta.is_dir() {
            if partition.is_some() {
                // A usage error (exit 2): the flag does not fit the target.
                return Err(anyhow!(UsageError(format!(
                    "--partition applies to image files, and {} is a directory",
                    path.display()
                ))));
            }
            return Ok(Target::Directory(Root::open(path)?));
        }
        if meta.is_file() {
            let image =
                crate::access::image::open::open(path, writable, partition, allow_backing, marker)?;
            return Ok(Target::Image(Box::new(image)));
        }
        bail!(
            "{} is neither a directory nor an image file (block devices are not supported: mount it and pass the directory)",
            path.display()
        )
    }

    pub fn root(&self) -> &Root {
        match self {
            Target::Directory(root) => root,
            Target::Image(image) => image.root(),
        }
    }

    pub fn image(&self) -> Option<&ImageInfo> {
        match self {
            Target::Directory(_) => None,
            Target::Image(image) => Some(&image.info),
        }
    }

    /// What the user named, for reports: the directory, or the image file.
    pub fn display_path(&self) -> PathBuf {
        match self {
            Target::Directory(root) => root.path().to_path_buf(),
            Target::Image(image) => image.info.path.clone(),
        }
    }

    /// Releases an image's mount, loop device and helper process, reporting
    /// errors. A directory has nothing to release.
    pub fn close(self) -> Result<()> {
        match self {
            Target::Directory(_) => Ok(()),
            Target::Image(image) => (*image).close(),
        }
    }
}
