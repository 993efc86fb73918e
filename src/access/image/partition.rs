//! Read the partition table of a raw disk image in user space.
//!
//! To edit cloud-init's configuration inside an image we must find the
//! filesystem that holds `/etc/cloud`, which means knowing where each
//! partition starts and ends. We read the table ourselves instead of asking
//! the kernel (`losetup --partscan`) because:
//! - it works on any `Read + Seek` source, so the same code serves raw
//!   files today and raw views of qcow2 and other formats later;
//! - it needs no privileges and no loop device, and so cannot leave one
//!   behind;
//! - it lets us say exactly what is wrong with a damaged or truncated image,
//!   where the kernel silently drops partitions it does not like;
//! - it never writes: nothing here opens the image for writing, and the
//!   crates we use are only asked to read.
//!
//! GPT (512- and 4096-byte logical sectors) is read with `gptman`, the MBR
//! with `mbrman`; the chain of extended boot records behind an MBR's
//! extended partition is walked here, with guards that `mbrman` lacks (see
//! [`read_layout`]). Partitions are numbered as Linux numbers them, so that
//! "partition 2" in our messages is `/dev/sda2` on the booted machine.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Cursor, Read, Seek, SeekFrom};

use gptman::{GPTHeader, GPTPartitionEntry};

use super::fstype::{self, FsKind};

/// One partition of a disk image (or the whole image when it has no table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The number Linux gives it: a GPT entry's index + 1 (so numbers can
    /// have gaps), MBR primaries 1-4 by slot, logical partitions from 5 in
    /// the order of the extended boot record chain; 0 for the pseudo
    /// partition of a bare filesystem image.
    pub number: u32,
    /// Where it starts, in bytes from the start of the image.
    pub offset: u64,
    /// Its length in bytes.
    pub size: u64,
    /// The partition type, in the words `fdisk` uses: "Linux filesystem",
    /// "EFI System", "BIOS boot", "Linux LVM" (GPT); "Linux", "Linux LVM",
    /// "EFI (FAT-12/16/32)" (MBR); a GPT type we do not name shows its
    /// GUID, an MBR type its hexadecimal id ("type 0x42"); a bare
    /// filesystem image says "whole image".
    pub type_name: String,
    /// The GPT partition name, when it has one (MBR has no names).
    pub label: Option<String>,
}

impl Partition {
    /// The first byte after the partition.
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}

/// What kind of partition table the image has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// A GUID partition table with logical sectors of `sector_size` bytes
    /// (512 or 4096).
    Gpt { sector_size: u64 },
    /// A DOS/MBR partition table (512-byte sectors).
    Mbr,
    /// No partition table: the image is a bare filesystem (or volume), shown
    /// as one pseudo partition numbered 0 covering the whole image.
    None,
}

/// The partition table of an image and its partitions, in number order.
/// Unused entries and MBR extended containers are not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub table: Table,
    pub partitions: Vec<Partition>,
}

impl Layout {
    /// The partition with this (Linux) number, if there is one.
    pub fn partition(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }
}

/// Why an image's partition table could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum LayoutError {
    /// Reading the image failed.
    Io(io::Error),
    /// A partition (or an MBR's extended container) reaches past the end of
    /// the image: the image lost its tail when it was copied or downloaded.
    Truncated {
        partition: u32,
        /// The first byte after the partition.
        end: u64,
        image_size: u64,
    },
    /// The table is not readable or contradicts itself.
    Corrupt {
        /// "GPT" or "MBR".
        table: &'static str,
        /// What is wrong, in a few words.
        reason: String,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Io(e) => write!(f, "could not read the image's partition table: {e}"),
            LayoutError::Truncated {
                partition,
                end,
                image_size,
            } => write!(
                f,
                "partition {partition} ends at byte {end} but the image is only {image_size} \
                 bytes: the image is truncated (re-copy or re-download it)"
            ),
            LayoutError::Corrupt { table, reason } => write!(
                f,
                "the image's {table} partition table is corrupt ({reason}): re-copy or \
                 re-download the image, or repair its table with a partitioning tool \
                 (fdisk, sgdisk)"
            ),
        }
    }
}

impl std::error::Error for LayoutError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LayoutError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for LayoutError {
    fn from(e: io::Error) -> Self {
        LayoutError::Io(e)
    }
}

/// Logical sector sizes a GPT may use, tried in this order.
const GPT_SECTOR_SIZES: [u64; 2] = [512, 4096];

/// The only GPT entry size Linux accepts (and the only one `gptman`
/// handles: it asserts on any other).
const GPT_ENTRY_SIZE: u32 = 128;

/// More GPT entries than this is not a real table (the usual count is
/// 128; this allows a 2 MiB array). Guards the allocation `gptman` makes
/// from the header's count.
const MAX_GPT_ENTRIES: u32 = 16384;
/// The size gptman reads for each entry: its in-memory size, not the 128 bytes on disk.
const GPT_ENTRY_IN_MEMORY: u32 = 152;

/// MBR tables always use 512-byte sectors here: images with 4096-byte
/// sectors use GPT in practice, and an MBR does not say its sector size.
const MBR_SECTOR: u64 = 512;

/// The highest partition number Linux gives (`DISK_MAX_PARTS`); more
/// logical partitions than that means a damaged chain.
const MAX_PARTITION_NUMBER: u32 = 256;

/// Extended boot records we follow at most, counting those without a
/// partition, so that a crafted chain cannot keep us reading for long.
const MAX_EBRS: usize = 512;

/// Read the partition table of the raw disk image `file`, whose size is
/// `image_size` bytes, without writing anything.
///
/// How the table is found:
/// 1. `"EFI PART"` at byte 512 or 4096 (LBA 1 for 512- or 4096-byte
///    sectors) means GPT with that sector size, whatever the MBR says (a
///    hybrid MBR is ignored, as Linux does). If the primary header or its
///    entry array fails its checks (signature, revision, CRC32s), the backup
///    header in the image's last sector is used instead.
/// 2. A protective MBR (type 0xEE) without a primary GPT header: the backup
///    header is looked for at the end of the image, for both sector sizes.
/// 3. A boot signature 0x55AA at byte 510 means an MBR, unless sector 0 is
///    itself a filesystem's boot sector or superblock (FAT, NTFS, XFS,
///    LUKS, which also may end in 0x55AA), or the MBR is invalid or empty
///    while a filesystem is recognised at byte 0.
/// 4. Anything else is a bare filesystem: one partition numbered 0 covering
///    the whole image.
///
/// Every used entry is checked: a partition that ends past `image_size`
/// gives [`LayoutError::Truncated`], an entry that ends before it starts or
/// overflows gives [`LayoutError::Corrupt`]. Behind an MBR's extended
/// partition, the chain of extended boot records (EBRs) is followed the way
/// the Linux kernel does (one logical partition per EBR data entry, numbered
/// from 5), but an EBR outside the extended partition, a chain that loops,
/// or an absurdly long chain is reported as corrupt instead of being
/// followed. `mbrman`'s own chain walk is not used because it can overflow
/// a 32-bit sector sum and panic on such input.
pub fn read_layout<R: Read + Seek + ?Sized>(
    file: &mut R,
    image_size: u64,
) -> Result<Layout, LayoutError> {
    let mut sector0 = [0u8; 512];
    read_within(file, 0, image_size, &mut sector0)?;

    for sector_size in GPT_SECTOR_SIZES {
        if has_gpt_signature(file, sector_size, image_size)? {
            return read_gpt(file, sector_size, image_size);
        }
    }

    let boot_signature = sector0[510..512] == [0x55, 0xAA];
    let protective = boot_signature && (0..4).any(|slot| sector0[446 + 16 * slot + 4] == 0xEE);
    if protective {
        for sector_size in GPT_SECTOR_SIZES {
            if let Some(last) = last_sector(sector_size, image_size)
                && has_gpt_signature(file, last, image_size)?
            {
                return read_gpt(file, sector_size, image_size);
            }
        }
        return Err(LayoutError::Corrupt {
            table: "GPT",
            reason: "the protective MBR announces a GPT, but there is no GPT header at \
                     sector 1 nor at the end of the image"
                .into(),
        });
    }

    if boot_signature {
        let at_zero = fstype::detect(file, 0)?;
        if matches!(
            at_zero,
            FsKind::Vfat | FsKind::Ntfs | FsKind::Xfs | FsKind::Luks
        ) {
            // Their superblock occupies sector 0: it cannot be an MBR.
            return Ok(bare(image_size));
        }
        match mbrman::MBRHeader::read_from(&mut Cursor::new(&sector0[..])) {
            Ok(header) => {
                let empty = header.iter().all(|(_, e)| e.is_unused() || e.sectors == 0);
                if empty && at_zero != FsKind::Unknown {
                    return Ok(bare(image_size));
                }
                return read_mbr(file, &header, image_size);
            }
            Err(_) if at_zero != FsKind::Unknown => return Ok(bare(image_size)),
            Err(e) => {
                return Err(LayoutError::Corrupt {
                    table: "MBR",
                    reason: e.to_string(),
                });
            }
        }
    }

    Ok(bare(image_size))
}

/// The layout of an image without a partition table.
fn bare(image_size: u64) -> Layout {
    Layout {
        table: Table::None,
        partitions: vec![Partition {
            number: 0,
            offset: 0,
            size: image_size,
            type_name: "whole image".into(),
            label: None,
        }],
    }
}

/// Fill `buf` from `offset`, reading nothing at or past `image_size`: what
/// lies beyond the image (or past the end of the file) reads as zeros.
fn read_within<R: Read + Seek + ?Sized>(
    file: &mut R,
    offset: u64,
    image_size: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    buf.fill(0);
    if offset >= image_size {
        return Ok(());
    }
    let len = usize::try_from(image_size - offset).map_or(buf.len(), |n| n.min(buf.len()));
    file.seek(SeekFrom::Start(offset))?;
    let mut filled = 0;
    while filled < len {
        match file.read(&mut buf[filled..len]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The byte offset of the last whole sector of the image, if it has at
/// least two sectors.
fn last_sector(sector_size: u64, image_size: u64) -> Option<u64> {
    let sectors = image_size / sector_size;
    (sectors >= 2).then(|| (sectors - 1) * sector_size)
}

fn has_gpt_signature<R: Read + Seek + ?Sized>(
    file: &mut R,
    offset: u64,
    image_size: u64,
) -> io::Result<bool> {
    let mut signature = [0u8; 8];
    read_within(file, offset, image_size, &mut signature)?;
    Ok(&signature == b"EFI PART")
}

/// Why one copy (primary or backup) of a GPT could not be used.
enum CopyError {
    Io(io::Error),
    Bad(String),
}

impl From<gptman::Error> for CopyError {
    fn from(e: gptman::Error) -> Self {
        match e {
            gptman::Error::Io(e) => CopyError::Io(e),
            e => CopyError::Bad(e.to_string()),
        }
    }
}

/// Read and check the GPT header at byte `at` and its entry array.
fn read_gpt_copy<R: Read + Seek + ?Sized>(
    file: &mut R,
    sector_size: u64,
    at: u64,
    image_size: u64,
) -> Result<(GPTHeader, Vec<GPTPartitionEntry>), CopyError> {
    if at
        .checked_add(sector_size)
        .is_none_or(|end| end > image_size)
    {
        return Err(CopyError::Bad("the image ends before the header".into()));
    }
    file.seek(SeekFrom::Start(at)).map_err(CopyError::Io)?;
    // Checks the signature, revision, header size and header CRC32.
    let header = GPTHeader::read_from(file)?;
    if header.size_of_partition_entry != GPT_ENTRY_SIZE {
        return Err(CopyError::Bad(format!(
            "entries of {} bytes instead of {GPT_ENTRY_SIZE}",
            header.size_of_partition_entry
        )));
    }
    if header.number_of_partition_entries > MAX_GPT_ENTRIES {
        return Err(CopyError::Bad(format!(
            "{} partition entries, more than the {MAX_GPT_ENTRIES} we accept",
            header.number_of_partition_entries
        )));
    }
    let array_len = u64::from(header.number_of_partition_entries) * u64::from(GPT_ENTRY_SIZE);
    let array = header
        .partition_entry_lba
        .checked_mul(sector_size)
        .and_then(|start| Some((start, start.checked_add(array_len)?)));
    let Some((array_start, array_end)) = array.filter(|&(_, end)| end <= image_size) else {
        return Err(CopyError::Bad(format!(
            "its partition entry array (sector {}) lies past the end of the image",
            header.partition_entry_lba
        )));
    };
    // Checks the entry array's CRC32. gptman reads each entry as its size
    // in memory (152 bytes, not 128), so an array that ends at the very end
    // of the image is read past it: damage (the backup header belongs
    // there), not an I/O error (found by tests/container_fuzz.rs).
    // It reads them one at a time, one pread each (256 for a usual table's
    // two copies): the array is read ahead in one go (at most 2 MiB).
    let over_read = u64::from(GPT_ENTRY_IN_MEMORY - GPT_ENTRY_SIZE);
    let mut file = ReadAhead::new(file, array_start, image_size.min(array_end + over_read))
        .map_err(CopyError::Io)?;
    let entries = header
        .read_partitions(&mut file, sector_size)
        .map_err(|e| match e {
            gptman::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                CopyError::Bad("its partition entry array runs to the very end of the image".into())
            }
            e => e.into(),
        })?;
    Ok((header, entries))
}

/// A reader that serves one range from memory, read once, and everything
/// else from the reader beneath, so the bytes read are the same either way.
struct ReadAhead<'a, R: Read + Seek + ?Sized> {
    inner: &'a mut R,
    start: u64,
    buffer: Vec<u8>,
    position: u64,
}

impl<'a, R: Read + Seek + ?Sized> ReadAhead<'a, R> {
    /// Reads `start..end` (the caller bounds its length) ahead.
    fn new(inner: &'a mut R, start: u64, end: u64) -> io::Result<Self> {
        let mut buffer = vec![0; usize::try_from(end.saturating_sub(start)).unwrap_or(0)];
        inner.seek(SeekFrom::Start(start))?;
        let filled = super::block::read_up_to(inner, &mut buffer)?;
        buffer.truncate(filled);
        Ok(ReadAhead {
            inner,
            start,
            buffer,
            position: start,
        })
    }
}

impl<R: Read + Seek + ?Sized> Read for ReadAhead<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = match self.position.checked_sub(self.start) {
            Some(at) if at < self.buffer.len() as u64 => {
                let ahead = &self.buffer[at as usize..];
                let n = ahead.len().min(out.len());
                out[..n].copy_from_slice(&ahead[..n]);
                n
            }
            _ => {
                self.inner.seek(SeekFrom::Start(self.position))?;
                self.inner.read(out)?
            }
        };
        self.position += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek + ?Sized> Seek for ReadAhead<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.position = match to {
            SeekFrom::Start(at) => at,
            SeekFrom::Current(by) => self.position.checked_add_signed(by).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
            })?,
            SeekFrom::End(by) => self.inner.seek(SeekFrom::End(by))?,
        };
        Ok(self.position)
    }
}

fn read_gpt<R: Read + Seek + ?Sized>(
    file: &mut R,
    sector_size: u64,
    image_size: u64,
) -> Result<Layout, LayoutError> {
    let corrupt = |reason: String| LayoutError::Corrupt {
        table: "GPT",
        reason,
    };
    let entries = match read_gpt_copy(file, sector_size, sector_size, image_size) {
        Ok((_, entries)) => entries,
        Err(CopyError::Io(e)) => return Err(e.into()),
        Err(CopyError::Bad(primary)) => {
            let backup = match last_sector(sector_size, image_size) {
                None => Err(CopyError::Bad("the image is too small to hold one".into())),
                Some(at) => read_gpt_copy(file, sector_size, at, image_size),
            };
            match backup {
                Ok((_, entries)) => entries,
                Err(CopyError::Io(e)) => return Err(e.into()),
                Err(CopyError::Bad(backup)) => {
                    return Err(corrupt(format!(
                        "primary header: {primary}; backup header: {backup}"
                    )));
                }
            }
        }
    };

    let mut partitions = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry.is_unused() {
            continue;
        }
        // At most MAX_GPT_ENTRIES entries, so this fits.
        let number = index as u32 + 1;
        if entry.ending_lba < entry.starting_lba {
            return Err(corrupt(format!(
                "partition {number} ends at sector {} before it starts at sector {}",
                entry.ending_lba, entry.starting_lba
            )));
        }
        let offset = entry.starting_lba.checked_mul(sector_size);
        let end = entry
            .ending_lba
            .checked_add(1)
            .and_then(|s| s.checked_mul(sector_size));
        let (Some(offset), Some(end)) = (offset, end) else {
            return Err(corrupt(format!(
                "partition {number} lies beyond any possible disk (sector {})",
                entry.ending_lba
            )));
        };
        if end > image_size {
            return Err(LayoutError::Truncated {
                partition: number,
                end,
                image_size,
            });
        }
        let label = entry.partition_name.as_str();
        partitions.push(Partition {
            number,
            offset,
            size: end - offset,
            type_name: gpt_type_name(&entry.partition_type_guid),
            label: (!label.is_empty()).then(|| label.to_string()),
        });
    }
    Ok(Layout {
        table: Table::Gpt { sector_size },
        partitions,
    })
}

fn read_mbr<R: Read + Seek + ?Sized>(
    file: &mut R,
    header: &mbrman::MBRHeader,
    image_size: u64,
) -> Result<Layout, LayoutError> {
    let mut partitions = Vec::new();
    let mut extended = Vec::new();
    for (slot, entry) in header.iter() {
        if entry.is_unused() || entry.sectors == 0 {
            continue;
        }
        // Slots are 1..=4.
        let number = slot as u32;
        let offset = u64::from(entry.starting_lba) * MBR_SECTOR;
        let end = offset + u64::from(entry.sectors) * MBR_SECTOR;
        if end > image_size {
            return Err(LayoutError::Truncated {
                partition: number,
                end,
                image_size,
            });
        }
        if entry.is_extended() {
            extended.push((u64::from(entry.starting_lba), u64::from(entry.sectors)));
            continue;
        }
        partitions.push(Partition {
            number,
            offset,
            size: end - offset,
            type_name: mbr_type_name(entry.sys).to_string(),
            label: None,
        });
    }

    let mut next_number = 5;
    for (start, sectors) in extended {
        read_logical(
            file,
            start,
            start + sectors,
            image_size,
            &mut next_number,
            &mut partitions,
        )?;
    }
    Ok(Layout {
        table: Table::Mbr,
        partitions,
    })
}

/// One 16-byte MBR/EBR partition entry, decoded by hand (EBRs hold garbage
/// in places `mbrman`'s strict header check would reject).
struct RawEntry {
    sys: u8,
    start: u64,
    sectors: u64,
}

fn raw_entry(sector: &[u8; 512], slot: usize) -> RawEntry {
    let e = &sector[446 + 16 * slot..446 + 16 * (slot + 1)];
    let le32 = |o: usize| u64::from(u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]));
    RawEntry {
        sys: e[4],
        start: le32(8),
        sectors: le32(12),
    }
}

fn is_extended_type(sys: u8) -> bool {
    // The types Linux follows as extended containers.
    matches!(sys, 0x05 | 0x0F | 0x85)
}

/// Walk the chain of extended boot records of the extended partition
/// covering sectors `ext_start..ext_end`, appending its logical partitions.
///
/// Each EBR describes one logical partition relative to itself and links to
/// the next EBR relative to the extended partition's start. Like Linux, we
/// take every data entry of an EBR (ignoring slots 3 and 4 when they point
/// outside the extended partition, where old tools left garbage) and follow
/// the first link.
fn read_logical<R: Read + Seek + ?Sized>(
    file: &mut R,
    ext_start: u64,
    ext_end: u64,
    image_size: u64,
    next_number: &mut u32,
    partitions: &mut Vec<Partition>,
) -> Result<(), LayoutError> {
    let corrupt = |reason: String| LayoutError::Corrupt {
        table: "MBR",
        reason,
    };
    let mut seen = HashSet::new();
    let mut ebr = ext_start;
    loop {
        if !seen.insert(ebr) {
            return Err(corrupt(format!(
                "the chain of extended boot records loops back to sector {ebr}"
            )));
        }
        if seen.len() > MAX_EBRS {
            return Err(corrupt(format!(
                "more than {MAX_EBRS} extended boot records in the extended partition"
            )));
        }
        if ebr < ext_start || ebr >= ext_end {
            return Err(corrupt(format!(
                "an extended boot record link points to sector {ebr}, outside the extended \
                 partition (sectors {ext_start} to {})",
                ext_end - 1
            )));
        }
        let mut sector = [0u8; 512];
        // Inside the extended partition, which was checked to be inside the
        // image.
        read_within(file, ebr * MBR_SECTOR, image_size, &mut sector)?;
        if sector[510..512] != [0x55, 0xAA] {
            if ebr == ext_start {
                // An empty extended partition need not have an EBR.
                return Ok(());
            }
            return Err(corrupt(format!(
                "the extended boot record at sector {ebr} has no 0x55AA signature"
            )));
        }

        let mut link = None;
        for slot in 0..4 {
            let entry = raw_entry(&sector, slot);
            if entry.sys == 0 || entry.sectors == 0 {
                continue;
            }
            if is_extended_type(entry.sys) {
                link.get_or_insert(ext_start + entry.start);
                continue;
            }
            let start = ebr + entry.start;
            let end = start + entry.sectors;
            if slot >= 2 && (start < ext_start || end > ext_end) {
                continue;
            }
            let number = *next_number;
            if number > MAX_PARTITION_NUMBER {
                return Err(corrupt(format!(
                    "more than {MAX_PARTITION_NUMBER} partitions, the most Linux numbers"
                )));
            }
            *next_number += 1;
            let (offset, end) = (start * MBR_SECTOR, end * MBR_SECTOR);
            if end > image_size {
                return Err(LayoutError::Truncated {
                    partition: number,
                    end,
                    image_size,
                });
            }
            partitions.push(Partition {
                number,
                offset,
                size: end - offset,
                type_name: mbr_type_name(entry.sys).to_string(),
                label: None,
            });
        }
        match link {
            Some(next) => ebr = next,
            None => return Ok(()),
        }
    }
}

/// The usual text form of a GPT GUID (the first three fields are stored
/// little-endian).
fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        g[13],
        g[14],
        g[15]
    )
}

/// GPT partition types we name, with `fdisk`'s names: the ones cloud and
/// distribution images use, and a few that tell the user "not Linux".
const GPT_TYPES: &[(&str, &str)] = &[
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
    ("9E1A2D38-C612-4316-AA26-8B49521E5A8B", "PowerPC PReP boot"),
    (
        "BC13C2FF-59E6-4262-A352-B275FD6F7172",
        "Linux extended boot",
    ),
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
    ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
    ("A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"),
    ("CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS"),
    ("7FFEC5C9-2D00-49B7-8941-3EA10A5586B7", "Linux dm-crypt"),
    ("3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "Linux server data"),
    ("8DA63339-0007-60C0-C436-083AC8230908", "Linux reserved"),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"),
    ("773F91EF-66D4-49B5-BD83-D683BF40AD16", "Linux user's home"),
    (
        "4D21B016-B534-45C2-A9FB-5C16E091FD2D",
        "Linux variable data",
    ),
    (
        "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1",
        "Linux temporary data",
    ),
    ("44479540-F297-41B2-9AF7-D131D5F0458A", "Linux root (x86)"),
    (
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "Linux root (x86-64)",
    ),
    ("69DAD710-2CE4-4E3C-B16C-21A1D49ABED3", "Linux root (ARM)"),
    (
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        "Linux root (ARM-64)",
    ),
    (
        "77055800-792C-4F94-B39A-98C91B762BB6",
        "Linux root (LoongArch-64)",
    ),
    ("912ADE1D-A839-4913-8964-A10EEE08FBD2", "Linux root (PPC64)"),
    (
        "C31C45E6-3F39-412E-80FB-4809C4980599",
        "Linux root (PPC64LE)",
    ),
    (
        "72EC70A6-CF74-40E6-BD49-4BDA08E8F224",
        "Linux root (RISC-V-64)",
    ),
    ("5EEAD9A9-FE09-4A1E-A1D7-520D00531306", "Linux root (S390X)"),
    ("75250D76-8CC6-458E-BD66-BD47CC81A812", "Linux /usr (x86)"),
    (
        "8484680C-9521-48C6-9C11-B0720656F69E",
        "Linux /usr (x86-64)",
    ),
    ("7D0359A3-02B3-4F0A-865C-654403E70625", "Linux /usr (ARM)"),
    (
        "B0E01050-EE5F-4390-949A-9101B17104E9",
        "Linux /usr (ARM-64)",
    ),
    (
        "E611C702-575C-4CBE-9A46-434FA0BF7E3F",
        "Linux /usr (LoongArch-64)",
    ),
    ("2C9739E2-F068-46B3-9FD0-01C5A9AFBCCA", "Linux /usr (PPC64)"),
    (
        "15BB03AF-77E7-4D4A-B12B-C0D084F7491C",
        "Linux /usr (PPC64LE)",
    ),
    (
        "BEAEC34B-8442-439B-A40B-984381ED097D",
        "Linux /usr (RISC-V-64)",
    ),
    ("8A4F5770-50AA-4ED3-874A-99B710DB6FEA", "Linux /usr (S390X)"),
    (
        "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5",
        "Linux root verity (x86-64)",
    ),
    (
        "DF3300CE-D69F-4C92-978C-9BFB0F38D820",
        "Linux root verity (ARM-64)",
    ),
    (
        "77FF5F63-E7B6-4633-ACF4-1565B864C0E6",
        "Linux /usr verity (x86-64)",
    ),
    (
        "6E11A4E7-FBCA-4DED-B9E9-E1A512BB664E",
        "Linux /usr verity (ARM-64)",
    ),
    ("E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"),
    (
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        "Microsoft basic data",
    ),
    (
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC",
        "Windows recovery environment",
    ),
    ("FE3A2A5D-4F32-41A7-B725-ACCC3285A309", "ChromeOS kernel"),
    ("3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC", "ChromeOS root fs"),
    ("516E7CB4-6ECF-11D6-8FF8-00022D09712B", "FreeBSD data"),
    ("83BD6B9D-7F41-11DC-BE0B-001560B84F0F", "FreeBSD boot"),
    ("516E7CB6-6ECF-11D6-8FF8-00022D09712B", "FreeBSD UFS"),
    ("516E7CBA-6ECF-11D6-8FF8-00022D09712B", "FreeBSD ZFS"),
    ("48465300-0000-11AA-AA11-00306543ECAC", "Apple HFS/HFS+"),
    ("7C3457EF-0000-11AA-AA11-00306543ECAC", "Apple APFS"),
];

fn gpt_type_name(guid: &[u8; 16]) -> String {
    let text = guid_string(guid);
    GPT_TYPES
        .iter()
        .find(|(g, _)| *g == text)
        .map_or(text, |(_, name)| (*name).to_string())
}

/// MBR partition type ids we name, with `fdisk`'s names.
fn mbr_type_name(sys: u8) -> std::borrow::Cow<'static, str> {
    let name = match sys {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 | 0x0F | 0x85 => "extended",
        0x06 => "FAT16",
        0x07 => "HPFS/NTFS/exFAT",
        0x0B => "W95 FAT32",
        0x0C => "W95 FAT32 (LBA)",
        0x0E => "W95 FAT16 (LBA)",
        0x27 => "Hidden NTFS WinRE",
        0x41 => "PPC PReP Boot",
        0x82 => "Linux swap / Solaris",
        0x83 => "Linux",
        0x88 => "Linux plaintext",
        0x8E => "Linux LVM",
        0xA5 => "FreeBSD",
        0xA6 => "OpenBSD",
        0xA9 => "NetBSD",
        0xDA => "Non-FS data",
        0xEA => "Linux extended boot",
        0xEE => "GPT",
        0xEF => "EFI (FAT-12/16/32)",
        0xFD => "Linux raid autodetect",
        other => return format!("type 0x{other:02x}").into(),
    };
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_is_mixed_endian() {
        // The EFI System type as stored on disk.
        let stored = [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B,
        ];
        assert_eq!(guid_string(&stored), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(gpt_type_name(&stored), "EFI System");
        assert_eq!(
            gpt_type_name(&[0x11; 16]),
            "11111111-1111-1111-1111-111111111111"
        );
    }

    #[test]
    fn mbr_names() {
        assert_eq!(mbr_type_name(0x83), "Linux");
        assert_eq!(mbr_type_name(0x42), "type 0x42");
    }

    #[test]
    fn empty_and_tiny_images_are_bare() {
        let layout = read_layout(&mut Cursor::new(Vec::new()), 0).unwrap();
        assert_eq!(layout.table, Table::None);
        assert_eq!(layout.partitions[0].size, 0);
        let layout = read_layout(&mut Cursor::new(vec![0u8; 100]), 100).unwrap();
        assert_eq!(layout.table, Table::None);
    }

    #[test]
    fn error_messages_are_one_line() {
        let truncated = LayoutError::Truncated {
            partition: 2,
            end: 2048,
            image_size: 1024,
        };
        assert_eq!(
            truncated.to_string(),
            "partition 2 ends at byte 2048 but the image is only 1024 bytes: the image is \
             truncated (re-copy or re-download it)"
        );
        let corrupt = LayoutError::Corrupt {
            table: "MBR",
            reason: "x".into(),
        };
        assert!(!corrupt.to_string().contains('\n'));
    }
}
