//! Disk image formats, told from the file's own header, never its name.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use super::block::read_up_to;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
    Vmdk,
    /// Microsoft VHD; qemu calls the driver `vpc`.
    Vhd,
    Vhdx,
}

impl ImageFormat {
    /// The name of qemu's block driver for this format.
    pub fn qemu_driver(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhd => "vpc",
            ImageFormat::Vhdx => "vhdx",
        }
    }

    /// The format qemu's driver `name` reads, for the formats prepare-image opens.
    pub fn from_qemu_driver(name: &str) -> Option<ImageFormat> {
        [
            ImageFormat::Raw,
            ImageFormat::Qcow2,
            ImageFormat::Vmdk,
            ImageFormat::Vhd,
            ImageFormat::Vhdx,
        ]
        .into_iter()
        .find(|f| f.qemu_driver() == name)
    }

    /// Whether qemu's driver takes a `backing` option (and would otherwise
    /// open the backing file the header names).
    pub fn has_backing(self) -> bool {
        matches!(self, ImageFormat::Qcow2 | ImageFormat::Vmdk)
    }

    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Vhdx => "vhdx",
        }
    }
}

const QCOW_MAGIC: &[u8] = b"QFI\xfb";
const VMDK_SPARSE_MAGIC: &[u8] = b"KDMV";
const VMDK_DESCRIPTOR: &[u8] = b"# Disk DescriptorFile";
const VHDX_MAGIC: &[u8] = b"vhdxfile";
const VHD_COOKIE: &[u8] = b"conectix";
/// A VHD footer is the last 512 bytes (a dynamic VHD also copies it to the start).
const VHD_FOOTER_SIZE: u64 = 512;

/// Reads the format from the header (and, for VHD, the footer). Anything
/// else is taken as raw: whether it holds a partition table or a filesystem
/// is for the partition reader to say.
pub fn detect(file: &mut File) -> std::io::Result<ImageFormat> {
    let mut head = [0u8; 64];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut head)?;
    let head = &head[..n];
    if head.starts_with(QCOW_MAGIC) {
        return Ok(ImageFormat::Qcow2);
    }
    if head.starts_with(VMDK_SPARSE_MAGIC) || head.starts_with(VMDK_DESCRIPTOR) {
        return Ok(ImageFormat::Vmdk);
    }
    if head.starts_with(VHDX_MAGIC) {
        return Ok(ImageFormat::Vhdx);
    }
    if head.starts_with(VHD_COOKIE) {
        return Ok(ImageFormat::Vhd);
    }
    let len = file.metadata()?.len();
    if len >= VHD_FOOTER_SIZE {
        let mut footer = [0u8; 8];
        file.seek(SeekFrom::Start(len - VHD_FOOTER_SIZE))?;
        if read_up_to(file, &mut footer)? == footer.len() && footer == VHD_COOKIE {
            return Ok(ImageFormat::Vhd);
        }
    }
    Ok(ImageFormat::Raw)
}
