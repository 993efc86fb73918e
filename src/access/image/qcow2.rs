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
/// qcow2 header extension naming the feature bits, in entries of 48 bytes.
const EXT_FEATURE_NAME_TABLE: u32 = 0x6803_f857;
const FEATURE_NAME_ENTRY: usize = 48;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Refuses what imago would read wrongly, open a file for, or panic on.
fn check_header(file: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; 105];
    file.read_exact_at(&mut header[..72], 0)?;
    if be32(&header, 4) < 3 {
        return Ok(());
    }
    file.read_exact_at(&mut header[72..], 72)?;
    let incompatible = u64::from_be_bytes(header[72..80].try_into().expect("8 bytes"));
    let header_length = be32(&header, 100) as usize;
    // imago 0.2.6 reads every compressed cluster as zlib; a compression
    // type without its incompatible bit is damage qemu refuses.
    if incompatible & INCOMPAT_COMPRESSION_TYPE != 0 {
        return Err(unsupported("qcow2 with zstd compression"));
    }
    let compression_type = if header_length > 104 { header[104] } else { 0 };
    if compression_type != 0 {
        return Err(unsupported(format!(
            "qcow2 with compression type {compression_type}"
        )));
    }
    if incompatible & INCOMPAT_DATA_FILE != 0 {
        return Err(unsupported("qcow2 with an external data file"));
    }
    // imago 0.2.6 indexes past a feature name table whose length is not a
    // multiple of its entries (qemu reads it): found by tests/container_fuzz.rs.
    let cluster_bits = be32(&header, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Ok(()); // imago refuses it itself
    }
    let first_cluster = (1u64 << cluster_bits).min(file.metadata()?.len()) as usize;
    let mut extensions = vec![0u8; first_cluster.saturating_sub(header_length)];
    file.read_exact_at(&mut extensions, header_length as u64)?;
    let mut at = 0;
    while at + 8 <= extensions.len() {
        let (kind, length) = (be32(&extensions, at), be32(&extensions, at + 4) as usize);
        if kind == 0 {
            break;
        }
        if kind == EXT_FEATURE_NAME_TABLE && length % FEATURE_NAME_ENTRY != 0 {
            return Err(unsupported(
                "qcow2 whose feature name table has a partial entry",
            ));
        }
        at += 8 + length.next_multiple_of(8);
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
