//! Keeping an image inside its own file.
//!
//! qemu opens every file a container names: a qcow2 backing file or external
//! data file, a vmdk descriptor's extents or its parent, a vhd/vhdx parent.
//! An image is untrusted input, so before qemu sees one we read its header
//! ourselves and decide what may be opened: nothing outside the file, unless
//! the user allows a backing chain, and then only regular files, read-only.
//! qemu is then given the whole graph explicitly (see `qemu.rs`), so it opens
//! nothing on its own.
//!
//! The header readers are pure functions over [`ReadAt`]; every offset and
//! size comes from the file and is checked against its length before use,
//! and no read is larger than [`MAX_READ`].

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::format::{self, ImageFormat};

/// The largest single read a header may ask for: qcow2's largest cluster
/// (2 MiB), above qemu's 1 MiB cap on a vmdk descriptor.
const MAX_READ: u64 = 2 << 20;
/// The longest backing chain followed with `--allow-backing`.
pub const MAX_CHAIN: usize = 16;

/// Random access to the bytes of an image.
pub trait ReadAt {
    fn size(&self) -> u64;
    fn read_at_exact(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl ReadAt for File {
    fn size(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }
    fn read_at_exact(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at_exact(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).ok();
        match start.and_then(|s| self.get(s..s.checked_add(buf.len())?)) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// What a container's header says about files other than itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The parent image qemu would open below this one (a qcow2 backing
    /// file, a vmdk delta link's parentFileNameHint).
    pub backing: Option<BackingName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingName {
    pub name: String,
    /// The format the container declares for it (qcow2's backing format
    /// extension; a vmdk parent is always vmdk).
    pub format: Option<String>,
}

/// Why a container is refused: a sentence about the image, without its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(message.into()))
}

/// Reads `len` bytes at `offset`, after checking they lie inside the file.
fn read(
    src: &(impl ReadAt + ?Sized),
    offset: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>, Refusal> {
    if len > MAX_READ {
        return refuse(format!(
            "its {what} would be {len} bytes, more than any valid image has: the image is damaged"
        ));
    }
    if offset.checked_add(len).is_none_or(|end| end > src.size()) {
        return refuse(format!(
            "its {what} (byte {offset}, {len} bytes) lies outside the file ({} bytes): the image is damaged or truncated",
            src.size()
        ));
    }
    let mut buf = vec![0u8; len as usize];
    src.read_at_exact(offset, &mut buf)
        .map_err(|e| Refusal(format!("reading its {what}: {e}")))?;
    Ok(buf)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Inspects a container of `format` (raw names nothing and needs nothing).
pub fn inspect(src: &(impl ReadAt + ?Sized), format: ImageFormat) -> Result<Container, Refusal> {
    match format {
        ImageFormat::Raw => Ok(Container { backing: None }),
        ImageFormat::Qcow2 => qcow2(src),
        ImageFormat::Vmdk => vmdk(src),
        ImageFormat::Vhd => vhd(src),
        ImageFormat::Vhdx => vhdx(src),
    }
}

// ---------------------------------------------------------------------------
// qcow2 (qemu's docs/interop/qcow2.txt)

const QCOW2_EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
const QCOW2_INCOMPAT_DATA_FILE: u64 = 1 << 2;
const QCOW2_INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Bits 9..55 of an L1 or standard L2 entry hold the offset.
const QCOW2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const QCOW2_COMPRESSED: u64 = 1 << 62;
/// qemu's QCOW_MAX_L1_SIZE (32 MiB of 8-byte entries).
const QCOW2_MAX_L1_ENTRIES: u64 = 32 * 1024 * 1024 / 8;
/// qemu reads at most this many header extensions' worth of cluster.
const QCOW2_MAX_EXTENSIONS: usize = 1024;

fn qcow2(src: &(impl ReadAt + ?Sized)) -> Result<Container, Refusal> {
    let head = read(src, 0, 72, "qcow2 header")?;
    let version = be32(&head, 4);
    if version != 2 && version != 3 {
        return refuse(format!(
            "it is qcow2 version {version}; qemu reads versions 2 and 3"
        ));
    }
    let backing_offset = be64(&head, 8);
    let backing_size = be32(&head, 16);
    let cluster_bits = be32(&head, 20);
    if !(9..=21).contains(&cluster_bits) {
        return refuse(format!(
            "its qcow2 cluster size 2^{cluster_bits} is invalid: the image is damaged"
        ));
    }
    let cluster_size = 1u64 << cluster_bits;
    let l1_entries = u64::from(be32(&head, 36));
    let l1_offset = be64(&head, 40);
    let (incompatible, header_length) = if version == 3 {
        let v3 = read(src, 0, 104, "qcow2 version 3 header")?;
        (be64(&v3, 72), u64::from(be32(&v3, 100)))
    } else {
        (0, 72)
    };
    if header_length < 72 || header_length > cluster_size {
        return refuse(format!(
            "its qcow2 header length {header_length} is invalid: the image is damaged"
        ));
    }

    // Header extensions: after the header, up to the backing file name or
    // the end of the first cluster, as qemu reads them.
    let extensions_end = if backing_offset != 0 {
        backing_offset.min(cluster_size)
    } else {
        cluster_size
    };
    let extensions_end = extensions_end.min(src.size());
    let mut backing_format = None;
    let mut data_file = None;
    let mut at = header_length;
    for _ in 0..QCOW2_MAX_EXTENSIONS {
        if at + 8 > extensions_end {
            break;
        }
        let ext = read(src, at, 8, "qcow2 header extension")?;
        let (kind, length) = (be32(&ext, 0), u64::from(be32(&ext, 4)));
        if kind == 0 {
            break;
        }
        if at + 8 + length > extensions_end {
            return refuse(
                "a qcow2 header extension runs past the first cluster: the image is damaged",
            );
        }
        let data = read(src, at + 8, length, "qcow2 header extension")?;
        match kind {
            QCOW2_EXT_BACKING_FORMAT => backing_format = Some(text(&data)),
            QCOW2_EXT_DATA_FILE => data_file = Some(text(&data)),
            _ => {}
        }
        at += 8 + length.next_multiple_of(8);
    }
    if incompatible & QCOW2_INCOMPAT_DATA_FILE != 0 || data_file.is_some() {
        return refuse(format!(
            "it keeps its data in an external data file ({}), outside the image: prepare-image opens only single-file images (make one with `qemu-img convert -O qcow2`)",
            data_file.map_or("no name given".to_string(), |n| format!("{n:?}"))
        ));
    }

    let backing = if backing_offset != 0 && backing_size != 0 {
        if backing_size > 1023 {
            return refuse(format!(
                "its backing file name is {backing_size} bytes long (qemu allows 1023): the image is damaged"
            ));
        }
        let name = read(
            src,
            backing_offset,
            u64::from(backing_size),
            "backing file name",
        )?;
        Some(BackingName {
            name: text(&name),
            format: backing_format,
        })
    } else {
        None
    };

    qcow2_check_clusters(src, cluster_bits, l1_offset, l1_entries, incompatible)?;
    Ok(Container { backing })
}

/// Every cluster the L1 and L2 tables point at must start inside the file:
/// qemu reads a cluster past the end as zeros, so a truncated qcow2 would
/// otherwise look like a disk with no partition table. Each L2 table is read
/// once, so the work is bounded by the file's size.
fn qcow2_check_clusters(
    src: &(impl ReadAt + ?Sized),
    cluster_bits: u32,
    l1_offset: u64,
    l1_entries: u64,
    incompatible: u64,
) -> Result<(), Refusal> {
    let size = src.size();
    let cluster_size = 1u64 << cluster_bits;
    let truncated = |offset: u64| {
        Refusal(format!(
            "the qcow2 file is {size} bytes but its cluster map points at byte {offset}: the image is truncated (re-copy or re-download it)"
        ))
    };
    if l1_entries > QCOW2_MAX_L1_ENTRIES {
        return refuse(format!(
            "its qcow2 L1 table has {l1_entries} entries (qemu allows {QCOW2_MAX_L1_ENTRIES}): the image is damaged"
        ));
    }
    if l1_entries == 0 {
        return Ok(());
    }
    if l1_offset
        .checked_add(l1_entries * 8)
        .is_none_or(|end| end > size)
    {
        return Err(truncated(l1_offset));
    }
    let l2_entry_size: u64 = if incompatible & QCOW2_INCOMPAT_EXTENDED_L2 != 0 {
        16
    } else {
        8
    };
    // Bits above the offset of a compressed cluster's descriptor hold its length.
    let compressed_offset_mask = (1u64 << (62 - (cluster_bits - 8))) - 1;
    let mut seen_l2 = HashSet::new();
    let chunk_entries = 8192u64;
    let mut index = 0;
    while index < l1_entries {
        let count = chunk_entries.min(l1_entries - index);
        let l1 = read(src, l1_offset + index * 8, count * 8, "qcow2 L1 table")?;
        for entry in l1.chunks_exact(8) {
            let l2_offset =
                u64::from_be_bytes(entry.try_into().expect("8 bytes")) & QCOW2_OFFSET_MASK;
            if l2_offset == 0 || !seen_l2.insert(l2_offset) {
                continue;
            }
            if l2_offset + cluster_size > size {
                return Err(truncated(l2_offset));
            }
            let l2 = read(src, l2_offset, cluster_size, "qcow2 L2 table")?;
            for l2_entry in l2.chunks_exact(l2_entry_size as usize) {
                let value = be64(l2_entry, 0);
                let offset = if value & QCOW2_COMPRESSED != 0 {
                    value & compressed_offset_mask
                } else {
                    value & QCOW2_OFFSET_MASK
                };
                if offset != 0 && offset >= size {
                    return Err(truncated(offset));
                }
            }
        }
        index += count;
    }
    Ok(())
}

/// A name from a header, as qemu takes it: up to the first NUL.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

// ---------------------------------------------------------------------------
// vmdk (VMware's Virtual Disk Format 5.0; qemu's block/vmdk.c)

/// qemu reads this much of the descriptor when it looks for the parent
/// (`vmdk_parent_open`, DESC_SIZE = 20 sectors).
const VMDK_PARENT_SEARCH: u64 = 20 * 512;
/// Where qemu looks for the parent in a sparse file: right after the header.
const VMDK_SPARSE_DESCRIPTOR_OFFSET: u64 = 0x200;
const VMDK_MAX_DESCRIPTOR: u64 = (1 << 20) - 1;

fn vmdk(src: &(impl ReadAt + ?Sized)) -> Result<Container, Refusal> {
    let head = read(src, 0, 4.min(src.size()), "vmdk header")?;
    if head == b"KDMV" {
        let header = read(src, 0, 512, "vmdk sparse header")?;
        let capacity = le64(&header, 12);
        let descriptor_sectors = le64(&header, 28);
        if capacity == 0 && descriptor_sectors != 0 {
            // qemu then opens the embedded descriptor as a descriptor file,
            // with whatever extents it lists.
            let offset = descriptor_sectors.checked_mul(512).ok_or_else(|| {
                Refusal("its vmdk descriptor offset is invalid: the image is damaged".into())
            })?;
            let length = src.size().saturating_sub(offset).min(VMDK_MAX_DESCRIPTOR);
            let descriptor = read(src, offset, length, "embedded vmdk descriptor")?;
            return vmdk_descriptor_file(&descriptor);
        }
        let length = src
            .size()
            .saturating_sub(VMDK_SPARSE_DESCRIPTOR_OFFSET)
            .min(VMDK_PARENT_SEARCH);
        let descriptor = read(
            src,
            VMDK_SPARSE_DESCRIPTOR_OFFSET.min(src.size()),
            length,
            "vmdk descriptor",
        )?;
        return Ok(Container {
            backing: vmdk_parent(&descriptor),
        });
    }
    let length = src.size().min(VMDK_MAX_DESCRIPTOR);
    let descriptor = read(src, 0, length, "vmdk descriptor")?;
    vmdk_descriptor_file(&descriptor)
}

/// A text descriptor keeps the disk in the files its extent lines name.
fn vmdk_descriptor_file(descriptor: &[u8]) -> Result<Container, Refusal> {
    let text = String::from_utf8_lossy(
        &descriptor[..descriptor
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(descriptor.len())],
    )
    .into_owned();
    let extents: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| {
            ["RW", "RDONLY", "NOACCESS"]
                .iter()
                .any(|access| line.split_whitespace().next() == Some(access))
        })
        .map(|line| {
            escape_controls(
                &line
                    .split_whitespace()
                    .skip(2)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect();
    let shown: Vec<&str> = extents.iter().take(3).map(String::as_str).collect();
    refuse(format!(
        "it is a vmdk descriptor whose disk lives in {} other file(s) ({}{}): prepare-image opens only single-file images (make one with `qemu-img convert -O vmdk -o subformat=streamOptimized`)",
        extents.len(),
        if shown.is_empty() {
            "no extent named".to_string()
        } else {
            shown.join("; ")
        },
        if extents.len() > shown.len() {
            "; …"
        } else {
            ""
        }
    ))
}

/// The parent qemu would open: the text after `parentFileNameHint="` up to
/// the next quote, found anywhere in the first 10 KiB as qemu finds it.
fn vmdk_parent(descriptor: &[u8]) -> Option<BackingName> {
    let text = &descriptor[..descriptor
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(descriptor.len())];
    let key = b"parentFileNameHint";
    let at = text.windows(key.len()).position(|w| w == key)?;
    // qemu skips the key and two more characters (`="`).
    let rest = text.get(at + key.len() + 2..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
    Some(BackingName {
        name: String::from_utf8_lossy(&rest[..end]).into_owned(),
        format: Some("vmdk".to_string()),
    })
}

// ---------------------------------------------------------------------------
// vhd (Microsoft's VHD specification; qemu calls it vpc)

const VHD_DIFFERENCING: u32 = 4;

fn vhd(src: &(impl ReadAt + ?Sized)) -> Result<Container, Refusal> {
    let size = src.size();
    let first = read(src, 0, 512.min(size), "vhd footer")?;
    let footer = if first.starts_with(b"conectix") && first.len() == 512 {
        first
    } else {
        read(src, size.saturating_sub(512), 512.min(size), "vhd footer")?
    };
    if footer.len() < 512 {
        return refuse("its vhd footer is cut short: the image is damaged or truncated");
    }
    if be32(&footer, 60) != VHD_DIFFERENCING {
        return Ok(Container { backing: None });
    }
    // The parent's name (UTF-16BE) is in the dynamic disk header.
    let header_offset = be64(&footer, 16);
    let parent = read(src, header_offset, 1024, "vhd dynamic disk header")
        .map(|header| utf16(&header[64..576], false))
        .unwrap_or_default();
    refuse(format!(
        "it is a differencing vhd whose data depends on a parent image ({}): prepare-image opens only single-file images (merge it with its parent first, e.g. `qemu-img convert` from the tool that made it)",
        if parent.is_empty() {
            "not named".to_string()
        } else {
            format!("{parent:?}")
        }
    ))
}

fn utf16(bytes: &[u8], little_endian: bool) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| {
            if little_endian {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        })
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

// ---------------------------------------------------------------------------
// vhdx (Microsoft's VHDX format specification)

const VHDX_REGION_TABLE: u64 = 192 * 1024;
const VHDX_MAX_ENTRIES: u64 = 2047;
/// {8B7CA206-4790-4B9A-B8FE-575F050F886E}, as stored (mixed endian).
const VHDX_METADATA_REGION: [u8; 16] = [
    0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E,
];
/// {CAA16737-FA36-4D43-B3B6-33F0AA44E76B}
const VHDX_FILE_PARAMETERS: [u8; 16] = [
    0x37, 0x67, 0xA1, 0xCA, 0x36, 0xFA, 0x43, 0x4D, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B,
];
/// {A8D35F2D-B30B-454D-ABF7-D3D84834AB0C}
const VHDX_PARENT_LOCATOR: [u8; 16] = [
    0x2D, 0x5F, 0xD3, 0xA8, 0x0B, 0xB3, 0x4D, 0x45, 0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C,
];
const VHDX_HAS_PARENT: u32 = 1 << 1;

fn vhdx(src: &(impl ReadAt + ?Sized)) -> Result<Container, Refusal> {
    let table = read(src, VHDX_REGION_TABLE, 16, "vhdx region table")?;
    if &table[0..4] != b"regi" {
        return refuse("its vhdx region table has no signature: the image is damaged");
    }
    let regions = u64::from(le32(&table, 8));
    if regions > VHDX_MAX_ENTRIES {
        return refuse("its vhdx region table is too long: the image is damaged");
    }
    let entries = read(
        src,
        VHDX_REGION_TABLE + 16,
        regions * 32,
        "vhdx region table",
    )?;
    let Some(metadata) = entries
        .chunks_exact(32)
        .find(|e| e[0..16] == VHDX_METADATA_REGION)
    else {
        return refuse("its vhdx region table has no metadata region: the image is damaged");
    };
    let (region_offset, region_length) = (le64(metadata, 16), u64::from(le32(metadata, 24)));
    let header = read(src, region_offset, 32, "vhdx metadata table")?;
    if &header[0..8] != b"metadata" {
        return refuse("its vhdx metadata table has no signature: the image is damaged");
    }
    let items = u64::from(le16(&header, 10));
    if items > VHDX_MAX_ENTRIES {
        return refuse("its vhdx metadata table is too long: the image is damaged");
    }
    let table = read(src, region_offset + 32, items * 32, "vhdx metadata table")?;
    let item = |id: &[u8; 16]| -> Result<Option<Vec<u8>>, Refusal> {
        let Some(entry) = table.chunks_exact(32).find(|e| e[0..16] == id[..]) else {
            return Ok(None);
        };
        let (offset, length) = (u64::from(le32(entry, 16)), u64::from(le32(entry, 20)));
        if offset.saturating_add(length) > region_length {
            return refuse("a vhdx metadata item lies outside its region: the image is damaged");
        }
        read(src, region_offset + offset, length, "vhdx metadata item").map(Some)
    };
    let has_parent = match item(&VHDX_FILE_PARAMETERS)? {
        Some(parameters) if parameters.len() >= 8 => le32(&parameters, 4) & VHDX_HAS_PARENT != 0,
        _ => false,
    };
    let locator = item(&VHDX_PARENT_LOCATOR)?;
    if !has_parent && locator.is_none() {
        return Ok(Container { backing: None });
    }
    let parent = locator.as_deref().map(vhdx_parent_name).unwrap_or_default();
    refuse(format!(
        "it is a differencing vhdx whose data depends on a parent image ({}): prepare-image opens only single-file images (merge it with its parent first)",
        if parent.is_empty() {
            "not named".to_string()
        } else {
            format!("{parent:?}")
        }
    ))
}

/// The parent's path from a parent locator's key/value pairs (UTF-16LE):
/// relative_path, else absolute_win32_path, else volume_path.
fn vhdx_parent_name(locator: &[u8]) -> String {
    if locator.len() < 20 {
        return String::new();
    }
    let count = usize::from(le16(locator, 18));
    let mut values = Vec::new();
    for i in 0..count.min(VHDX_MAX_ENTRIES as usize) {
        let at = 20 + i * 12;
        let Some(entry) = locator.get(at..at + 12) else {
            break;
        };
        let field = |offset: usize, length: usize| {
            let (start, len) = (
                le32(entry, offset) as usize,
                usize::from(le16(entry, length)),
            );
            locator
                .get(start..start.saturating_add(len))
                .map(|b| utf16(b, true))
        };
        if let (Some(key), Some(value)) = (field(0, 8), field(4, 10)) {
            values.push((key, value));
        }
    }
    ["relative_path", "absolute_win32_path", "volume_path"]
        .iter()
        .find_map(|k| {
            values
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Policy: the files qemu may open for one image.

/// One file of the graph handed to qemu: the image itself first, then its
/// backing files in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub path: PathBuf,
    pub format: ImageFormat,
}

/// Decides the files qemu may open for `image` (already opened as
/// `file`, of `format`): only the image itself, or, with `allow_backing`,
/// its backing chain of regular files, each inspected by the same rules.
pub fn layers(
    image: &Path,
    file: &File,
    format: ImageFormat,
    allow_backing: bool,
) -> Result<Vec<Layer>> {
    let display = image.display().to_string();
    let mut container = inspect(file, format).map_err(|r| anyhow::anyhow!("{display}: {r}"))?;
    let mut chain = vec![Layer {
        path: image.to_path_buf(),
        format,
    }];
    let mut seen: HashSet<PathBuf> = std::fs::canonicalize(image).into_iter().collect();
    // qemu resolves a relative backing name against the directory of the
    // name of the image that holds it.
    let mut naming = image.to_path_buf();
    while let Some(backing) = container.backing.take() {
        let holder = shown(&naming);
        if !allow_backing {
            bail!(
                "{display}: it is an overlay on the backing file {:?}, outside the image: prepare-image opens only the image's own file (pass --allow-backing to read the backing chain, read-only; or merge it with `qemu-img convert`)",
                backing.name
            );
        }
        if chain.len() >= MAX_CHAIN {
            bail!("{display}: its backing chain is longer than {MAX_CHAIN} files (a loop?)");
        }
        let resolved = resolve_backing(&naming, &backing.name).map_err(|why| {
            anyhow::anyhow!(
                "{display}: the backing file {:?} of {holder} {why}",
                backing.name
            )
        })?;
        let canonical = std::fs::canonicalize(&resolved).map_err(|e| {
            anyhow::anyhow!(
                "{display}: the backing file {:?} of {holder} ({}) cannot be opened: {e}",
                backing.name,
                shown(&resolved)
            )
        })?;
        if !seen.insert(canonical.clone()) {
            bail!(
                "{display}: its backing chain loops back to {}",
                shown(&canonical)
            );
        }
        let parent = open_regular(&canonical)
            .map_err(|why| anyhow::anyhow!("{display}: the backing file {:?} of {holder} ({}) {why}: --allow-backing follows regular files only", backing.name, shown(&canonical)))?;
        let mut reader = parent;
        let detected = format::detect(&mut reader).map_err(|e| {
            anyhow::anyhow!(
                "{display}: reading the backing file {}: {e}",
                shown(&canonical)
            )
        })?;
        let format = match backing.format.as_deref() {
            None => detected,
            Some("raw") => ImageFormat::Raw,
            Some(declared) => match ImageFormat::from_qemu_driver(declared) {
                Some(f) if f == detected => f,
                Some(f) => bail!(
                    "{display}: {holder} declares its backing file {} as {} but its header says {}",
                    shown(&canonical),
                    f.name(),
                    detected.name()
                ),
                None => bail!(
                    "{display}: {holder} declares its backing file {} in the format {declared:?}, which prepare-image does not open",
                    shown(&canonical)
                ),
            },
        };
        container = inspect(&reader, format).map_err(|r| {
            anyhow::anyhow!("{display}: its backing file {}: {r}", shown(&canonical))
        })?;
        chain.push(Layer {
            path: canonical,
            format,
        });
        naming = resolved;
    }
    Ok(chain)
}

/// A path for a message: paths built from names in an image may hold
/// control characters (a newline, a terminal escape), shown escaped.
fn shown(path: &Path) -> String {
    escape_controls(&path.display().to_string())
}

fn escape_controls(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A backing name as a path: relative names against the holder's directory.
/// Names qemu would take as a protocol (`nbd:`, `json:`, `http://`) are
/// refused: only local files may be followed.
fn resolve_backing(holder: &Path, name: &str) -> Result<PathBuf, String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    let before_slash = name.split('/').next().unwrap_or_default();
    if before_slash.contains(':') {
        return Err("names a qemu protocol, not a local file".into());
    }
    let name = Path::new(name);
    Ok(if name.is_absolute() {
        name.to_path_buf()
    } else {
        holder.parent().unwrap_or(Path::new("")).join(name)
    })
}

/// Opens `path` read-only if it is a regular file; never blocks on a FIFO
/// and never opens a device.
fn open_regular(path: &Path) -> Result<File, String> {
    let kind = std::fs::metadata(path)
        .map_err(|e| format!("cannot be opened: {e}"))?
        .file_type();
    let name = if kind.is_file() {
        None
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_dir() {
        Some("a directory")
    } else {
        Some("not a regular file")
    };
    if let Some(name) = name {
        return Err(format!("is {name}"));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot be opened: {e}"))?;
    // Checked again on what was opened: the name may have changed since.
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err("is not a regular file".into());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names_resolve_against_the_holder_and_never_name_a_protocol() {
        let holder = Path::new("/images/top.qcow2");
        assert_eq!(
            resolve_backing(holder, "base.img"),
            Ok(PathBuf::from("/images/base.img"))
        );
        assert_eq!(
            resolve_backing(holder, "../b/base.img"),
            Ok(PathBuf::from("/images/../b/base.img"))
        );
        assert_eq!(
            resolve_backing(holder, "/srv/base.img"),
            Ok(PathBuf::from("/srv/base.img"))
        );
        // A colon after a slash is part of a file name, as for qemu.
        assert_eq!(
            resolve_backing(holder, "./a:b"),
            Ok(PathBuf::from("/images/./a:b"))
        );
        for name in [
            "nbd:localhost:10809",
            "json:{}",
            "http://host/x",
            "file:/etc/x",
            "",
        ] {
            assert!(resolve_backing(holder, name).is_err(), "{name}");
        }
    }

    #[test]
    fn vmdk_parent_is_read_as_qemu_reads_it() {
        let descriptor = b"CID=1\nparentCID=2\nparentFileNameHint=\"../base.vmdk\"\n";
        assert_eq!(
            vmdk_parent(descriptor),
            Some(BackingName {
                name: "../base.vmdk".into(),
                format: Some("vmdk".into())
            })
        );
        assert_eq!(vmdk_parent(b"parentCID=ffffffff\n"), None);
        // Text after a NUL is not seen, as by qemu's strstr.
        assert_eq!(vmdk_parent(b"x\0parentFileNameHint=\"a\""), None);
    }

    #[test]
    fn names_from_an_image_cannot_break_a_message_line() {
        let refusal = vmdk_descriptor_file(b"RW 8 FLAT \"/a\x1b[2Jb\r\" 0\n").unwrap_err();
        assert!(!refusal.0.chars().any(char::is_control), "{}", refusal.0);
        assert_eq!(shown(Path::new("/x/a\nb")), "/x/a\\nb");
    }
}
