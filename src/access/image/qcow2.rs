//! qcow2 images read in user space with the `imago` crate (its sync API).
//!
//! imago never opens a file by itself here: implicit opens (the backing
//! file or external data file the header names) are not asked for. The
//! backing chain, when `--allow-backing` allows one, is the list of layers
//! `containment::layers` decided on, each opened by us, read-only, and
//! handed to the layer above it.

use std::fs::File;
use std::io;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, StorageOpenOptions};

use super::block::{BlockSource, in_bounds, past_end};
use super::containment::Layer;
use super::format::ImageFormat;

/// A qcow2 disk (with its backing chain) as a block source.
pub struct Qcow2Source {
    access: FormatAccess<ImagoFile>,
    len: u64,
}

/// Why a chain is not read here (the caller falls back to the kernel's view).
pub fn unsupported(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, why.into())
}

/// qcow2 header bit: a compression type other than zlib (zstd) is recorded.
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
/// qcow2 header bit: the data lives in an external file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;

/// Refuses what imago would read wrongly or open a file for.
fn check_header(file: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; 80];
    file.read_exact_at(&mut header, 0)?;
    let version = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
    if version >= 3 {
        let incompatible = u64::from_be_bytes(header[72..80].try_into().expect("8 bytes"));
        if incompatible & INCOMPAT_COMPRESSION_TYPE != 0 {
            return Err(unsupported("qcow2 with zstd compression"));
        }
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported("qcow2 with an external data file"));
        }
    }
    Ok(())
}

fn storage(file: File) -> io::Result<ImagoFile> {
    ImagoFile::from_open_file(file, StorageOpenOptions::new().write(false))
}

fn open_layer(
    file: File,
    format: ImageFormat,
    backing: Option<FormatAccess<ImagoFile>>,
) -> io::Result<FormatAccess<ImagoFile>> {
    match format {
        ImageFormat::Qcow2 => {
            check_header(&file)?;
            let mut image = Qcow2::<ImagoFile>::open_image(storage(file)?, false)?;
            if image.requires_external_data_file() {
                return Err(unsupported("qcow2 with an external data file"));
            }
            image.set_backing(backing);
            Ok(FormatAccess::new(image))
        }
        ImageFormat::Raw if backing.is_none() => {
            Ok(FormatAccess::new(Raw::open_image(storage(file)?, false)?))
        }
        other => Err(unsupported(format!(
            "a {} layer in a qcow2 backing chain",
            other.name()
        ))),
    }
}

impl Qcow2Source {
    /// `image` is the opened top layer; `layers` the chain `containment::layers` allowed (the
    /// image itself first).
    pub fn open(image: File, layers: &[Layer]) -> io::Result<Qcow2Source> {
        let mut below: Option<FormatAccess<ImagoFile>> = None;
        for layer in layers.iter().skip(1).rev() {
            let file = File::open(&layer.path)?;
            below = Some(open_layer(file, layer.format, below)?);
        }
        let access = open_layer(image, ImageFormat::Qcow2, below)?;
        let len = access.size();
        Ok(Qcow2Source { access, len })
    }
}

impl BlockSource for Qcow2Source {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !in_bounds(offset, buf.len(), self.len) {
            return Err(past_end(offset, buf.len(), self.len));
        }
        crate::access::fs::guarded("qcow2 read", || self.access.read(&mut *buf, offset))
    }
}
