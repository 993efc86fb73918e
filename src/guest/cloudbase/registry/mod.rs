//! Windows registry hives (regf), read from bytes, and the one edit we make:
//! a REG_DWORD's four data bytes rewritten in place.
//!
//! Written from the public descriptions of the format (M. Suhanov's
//! "Windows registry file format specification", libyal's regf notes). Every
//! offset read from the file is checked against the hive bins before it is
//! used, every list is bounded by the cell that holds it, nothing recurses,
//! and nothing allocates more than the input's own size: a hive comes from an
//! image somebody else built.
//!
//! Offsets named `cell` are relative to the start of the hive bins data
//! (file offset 4096), as everywhere in the format; they point at a cell's
//! 4-byte size field, and the cell's data follows it.

mod write;

pub use write::{DwordWrite, Written, filetime_now, set_dwords};

use std::fmt;
use std::ops::Range;

/// The base block: the first 4096 bytes of a primary hive file.
pub const BASE_BLOCK_LEN: usize = 4096;
/// The checksum covers the base block's first 508 bytes and is stored after them.
const CHECKSUM_OFFSET: usize = 508;
const PRIMARY_SEQUENCE_OFFSET: usize = 4;
const SECONDARY_SEQUENCE_OFFSET: usize = 8;
const TIMESTAMP_OFFSET: usize = 12;
const FILE_TYPE_OFFSET: usize = 28;
const ROOT_CELL_OFFSET: usize = 36;
const BINS_SIZE_OFFSET: usize = 40;
const HBIN_HEADER_LEN: usize = 32;
const HBIN_ALIGN: usize = 4096;
/// Cells are 8-byte aligned and hold at least their size field and a signature.
const CELL_ALIGN: usize = 8;
/// A hive larger than this is refused before anything is read: Windows'
/// own SYSTEM and SOFTWARE hives stay far below it.
pub const MAX_HIVE_LEN: usize = 1 << 30;
/// Value data above this size lives in a `db` (big data) record from hive
/// version 1.4 on.
const BIG_DATA_THRESHOLD: usize = 16344;
/// The most subkeys or values listed for one key; Windows keys hold far
/// fewer, and a corrupt count must not drive an allocation.
pub const MAX_LIST_LEN: usize = 1 << 20;

const KEY_COMP_NAME: u16 = 0x0020;
const VALUE_COMP_NAME: u16 = 0x0001;
/// The data-size bit that says "the data is in the data-offset field".
const DATA_INLINE: u32 = 0x8000_0000;
const NONE: u32 = 0xFFFF_FFFF;

pub const REG_NONE: u32 = 0;
pub const REG_SZ: u32 = 1;
pub const REG_EXPAND_SZ: u32 = 2;
pub const REG_BINARY: u32 = 3;
pub const REG_DWORD: u32 = 4;
pub const REG_MULTI_SZ: u32 = 7;
pub const REG_QWORD: u32 = 11;

/// Why a hive cannot be read. The message is one line without the file
/// name: the caller names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HiveError {
    /// Not a regf primary file at all.
    NotAHive(String),
    /// The two sequence numbers differ: Windows did not finish writing, and
    /// the newest data is only in the `.LOG1`/`.LOG2` transaction logs.
    Dirty { primary: u32, secondary: u32 },
    /// The base block's checksum is wrong (recovered by Windows from a log).
    BadChecksum { stored: u32, computed: u32 },
    /// An offset, size or record that does not hold together.
    Corrupt(String),
    /// A value whose data is a `db` (big data) record: not read here.
    BigData { value: String },
    /// An edit that does not apply (missing key or value, wrong type).
    Edit(String),
}

/// What to do about a hive Windows left unfinished, in one place so every
/// refusal says the same.
pub const CAPTURE_AGAIN: &str = "boot Windows, disable Fast Startup (powercfg /h off), shut down cleanly, and capture the image again";

impl fmt::Display for HiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HiveError::NotAHive(why) => write!(f, "not a Windows registry hive: {why}"),
            HiveError::Dirty { primary, secondary } => write!(
                f,
                "the hive was not written completely (sequence numbers {primary} and {secondary} differ; the newest data is only in its .LOG1/.LOG2 files): {CAPTURE_AGAIN}"
            ),
            HiveError::BadChecksum { stored, computed } => write!(
                f,
                "the hive's header checksum is wrong (stored {stored:#010x}, computed {computed:#010x}; Windows would recover it from its .LOG1/.LOG2 files): {CAPTURE_AGAIN}"
            ),
            HiveError::Corrupt(why) => write!(f, "the hive is damaged: {why}"),
            HiveError::BigData { value } => write!(
                f,
                "value `{value}` holds more than {BIG_DATA_THRESHOLD} bytes (a big-data record), which is not read here"
            ),
            HiveError::Edit(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for HiveError {}

type Result<T> = std::result::Result<T, HiveError>;

fn corrupt<T>(why: impl Into<String>) -> Result<T> {
    Err(HiveError::Corrupt(why.into()))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The base block checksum as Windows computes it: the XOR of the first
/// 508 bytes taken as little-endian dwords, with 0 and 0xFFFFFFFF (values
/// Windows reserves) replaced by 1 and 0xFFFFFFFE.
pub fn base_block_checksum(base: &[u8]) -> u32 {
    let sum = base[..CHECKSUM_OFFSET]
        .chunks_exact(4)
        .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
        .fold(0, |acc, d| acc ^ d);
    match sum {
        0 => 1,
        NONE => 0xFFFF_FFFE,
        other => other,
    }
}

/// A parsed primary hive: the bytes, checked base block and the hive bins'
/// boundaries. Every key and value borrows it.
pub struct Hive<'a> {
    bytes: &'a [u8],
    /// The hive bins data: `bytes[4096 .. 4096 + bins_size]`.
    bins: &'a [u8],
    /// Where each hive bin starts, relative to `bins`, ascending from 0.
    bin_starts: Vec<u32>,
    root_cell: u32,
}

/// The sequence numbers and timestamp of the base block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub primary_sequence: u32,
    pub secondary_sequence: u32,
    /// Last written, as a Windows FILETIME (100 ns since 1601).
    pub last_written: u64,
    pub checksum: u32,
}

impl<'a> Hive<'a> {
    /// Checks the base block (signature, primary file, equal sequence
    /// numbers, checksum, root and bins inside the file) and the chain of
    /// hive bins. A hive Windows left dirty is refused, never repaired.
    pub fn parse(bytes: &'a [u8]) -> Result<Hive<'a>> {
        if bytes.len() > MAX_HIVE_LEN {
            return Err(HiveError::NotAHive(format!(
                "{} bytes is larger than any hive ({MAX_HIVE_LEN} bytes at most)",
                bytes.len()
            )));
        }
        if bytes.len() < BASE_BLOCK_LEN || &bytes[..4] != b"regf" {
            return Err(HiveError::NotAHive(
                "no `regf` base block at the start".into(),
            ));
        }
        let base = &bytes[..BASE_BLOCK_LEN];
        let field = |at| u32_at(base, at).unwrap_or(0);
        if field(FILE_TYPE_OFFSET) != 0 {
            return Err(HiveError::NotAHive(format!(
                "file type {} is not a primary hive (a transaction log?)",
                field(FILE_TYPE_OFFSET)
            )));
        }
        let (primary, secondary) = (
            field(PRIMARY_SEQUENCE_OFFSET),
            field(SECONDARY_SEQUENCE_OFFSET),
        );
        if primary != secondary {
            return Err(HiveError::Dirty { primary, secondary });
        }
        let stored = field(CHECKSUM_OFFSET);
        let computed = base_block_checksum(base);
        if stored != computed {
            return Err(HiveError::BadChecksum { stored, computed });
        }
        let bins_size = field(BINS_SIZE_OFFSET) as usize;
        if bins_size == 0
            || !bins_size.is_multiple_of(HBIN_ALIGN)
            || bins_size > bytes.len() - BASE_BLOCK_LEN
        {
            return corrupt(format!(
                "hive bins size {bins_size} does not fit the file ({} bytes)",
                bytes.len()
            ));
        }
        let bins = &bytes[BASE_BLOCK_LEN..BASE_BLOCK_LEN + bins_size];
        let bin_starts = check_bins(bins)?;
        let hive = Hive {
            bytes,
            bins,
            bin_starts,
            root_cell: field(ROOT_CELL_OFFSET),
        };
        hive.root()?;
        Ok(hive)
    }

    pub fn header(&self) -> Header {
        let field = |at| u32_at(self.bytes, at).unwrap_or(0);
        Header {
            primary_sequence: field(PRIMARY_SEQUENCE_OFFSET),
            secondary_sequence: field(SECONDARY_SEQUENCE_OFFSET),
            last_written: u64::from(field(TIMESTAMP_OFFSET))
                | (u64::from(field(TIMESTAMP_OFFSET + 4)) << 32),
            checksum: field(CHECKSUM_OFFSET),
        }
    }

    pub fn root(&self) -> Result<Key<'_>> {
        Key::at(self, self.root_cell)
    }

    /// The key at a backslash-separated path below the root
    /// (`ControlSet001\Services\cloudbase-init`), names compared
    /// case-insensitively as Windows does; `None` when a part is missing.
    pub fn open(&self, path: &str) -> Result<Option<Key<'_>>> {
        self.root()?.open(path)
    }

    /// The data of one cell: checked to lie inside one hive bin (not in
    /// its header), allocated (negative size) and 8-byte aligned.
    fn cell(&self, cell: u32) -> Result<&'a [u8]> {
        let at = cell as usize;
        if !at.is_multiple_of(CELL_ALIGN) || at.checked_add(4).is_none_or(|e| e > self.bins.len()) {
            return corrupt(format!("cell offset {cell:#x} is outside the hive bins"));
        }
        // bin_starts is sorted and starts with 0, so a bin holds `at`.
        let index = self.bin_starts.partition_point(|&s| s as usize <= at) - 1;
        let bin_start = self.bin_starts[index] as usize;
        let bin_end = self
            .bin_starts
            .get(index + 1)
            .map_or(self.bins.len(), |&e| e as usize);
        if at < bin_start + HBIN_HEADER_LEN {
            return corrupt(format!(
                "cell offset {cell:#x} points into a hive bin header"
            ));
        }
        let size = u32_at(self.bins, at).unwrap_or(0) as i32;
        if size >= 0 {
            return corrupt(format!("cell {cell:#x} is not allocated"));
        }
        let len = size.unsigned_abs() as usize;
        if len < CELL_ALIGN || at + len > bin_end {
            return corrupt(format!(
                "cell {cell:#x} of {len} bytes crosses its hive bin"
            ));
        }
        Ok(&self.bins[at + 4..at + len])
    }

    /// A cell's file offset range, for the writer's report.
    fn file_range(cell_data: &[u8], bytes: &[u8], within: Range<usize>) -> Range<usize> {
        let base = cell_data.as_ptr() as usize - bytes.as_ptr() as usize;
        base + within.start..base + within.end
    }
}

/// Walks the chain of hive bins: each starts with `hbin`, names its own
/// offset, and its size (a multiple of 4096) ends where the next begins.
/// Returns where each bin starts (at most one per 4096 bytes of input).
fn check_bins(bins: &[u8]) -> Result<Vec<u32>> {
    let mut starts = Vec::new();
    let mut at = 0usize;
    while at < bins.len() {
        if bins.get(at..at + 4) != Some(b"hbin") {
            return corrupt(format!("no hive bin signature at offset {at:#x}"));
        }
        let offset = u32_at(bins, at + 4).unwrap_or(NONE) as usize;
        let size = u32_at(bins, at + 8).unwrap_or(0) as usize;
        if offset != at {
            return corrupt(format!("the hive bin at {at:#x} says it is at {offset:#x}"));
        }
        if size == 0 || !size.is_multiple_of(HBIN_ALIGN) || size > bins.len() - at {
            return corrupt(format!("the hive bin at {at:#x} has a bad size {size}"));
        }
        starts.push(at as u32);
        at += size;
    }
    Ok(starts)
}

/// Compares two names as Windows does: case-insensitively, one character
/// against one character (Windows upcases each UTF-16 unit alone, so `ß`
/// never equals `SS`).
pub fn names_equal(a: &str, b: &str) -> bool {
    fn upcase(c: char) -> char {
        let mut upper = c.to_uppercase();
        match (upper.next(), upper.next()) {
            (Some(u), None) => u,
            _ => c,
        }
    }
    a.chars().map(upcase).eq(b.chars().map(upcase))
}

/// A name stored as Latin-1 bytes (the "compressed" flag) or UTF-16LE.
fn decode_name(raw: &[u8], compressed: bool) -> String {
    if compressed {
        raw.iter().map(|&b| char::from(b)).collect()
    } else {
        utf16(raw)
    }
}

fn utf16(raw: &[u8]) -> String {
    let units = raw
        .chunks_exact(2)
        .map(|u| u16::from_le_bytes([u[0], u[1]]));
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// One key (an `nk` cell).
#[derive(Clone, Copy)]
pub struct Key<'a> {
    hive: &'a Hive<'a>,
    cell: u32,
    data: &'a [u8],
}

const NK_FIXED_LEN: usize = 76;

impl<'a> Key<'a> {
    fn at(hive: &'a Hive<'a>, cell: u32) -> Result<Key<'a>> {
        let data = hive.cell(cell)?;
        if data.len() < NK_FIXED_LEN || &data[..2] != b"nk" {
            return corrupt(format!("cell {cell:#x} is not a key"));
        }
        let name_len = usize::from(u16_at(data, 72).unwrap_or(0));
        if NK_FIXED_LEN + name_len > data.len() {
            return corrupt(format!("the name of key cell {cell:#x} overruns its cell"));
        }
        Ok(Key { hive, cell, data })
    }

    /// The offset of this key's cell (relative to the hive bins data).
    pub fn cell(&self) -> u32 {
        self.cell
    }

    pub fn name(&self) -> String {
        let flags = u16_at(self.data, 2).unwrap_or(0);
        let len = usize::from(u16_at(self.data, 72).unwrap_or(0));
        decode_name(
            &self.data[NK_FIXED_LEN..NK_FIXED_LEN + len],
            flags & KEY_COMP_NAME != 0,
        )
    }

    fn field(&self, at: usize) -> u32 {
        u32_at(self.data, at).unwrap_or(0)
    }

    /// The cells of the subkeys, in the order of the (sorted) lists.
    fn subkey_cells(&self) -> Result<Vec<u32>> {
        let count = self.field(20) as usize;
        if count == 0 {
            return Ok(Vec::new());
        }
        let list = self.field(28);
        let mut cells = Vec::new();
        let top = self.hive.cell(list)?;
        match top.get(..2) {
            Some(b"ri") => {
                for sub in list_entries(top, 4)? {
                    let leaf = self.hive.cell(sub)?;
                    if leaf.get(..2) == Some(b"ri") {
                        return corrupt(format!(
                            "index root {list:#x} points to another index root"
                        ));
                    }
                    leaf_entries(leaf, sub, &mut cells)?;
                }
            }
            _ => leaf_entries(top, list, &mut cells)?,
        }
        if cells.len() != count {
            return corrupt(format!(
                "key `{}` claims {count} subkeys but its lists hold {}",
                self.name(),
                cells.len()
            ));
        }
        Ok(cells)
    }

    /// The subkeys; a damaged list is an error, not a shorter list.
    pub fn subkeys(&self) -> Result<Vec<Key<'a>>> {
        self.subkey_cells()?
            .into_iter()
            .map(|c| Key::at(self.hive, c))
            .collect()
    }

    /// The subkey with this name (case-insensitive).
    pub fn subkey(&self, name: &str) -> Result<Option<Key<'a>>> {
        for cell in self.subkey_cells()? {
            let key = Key::at(self.hive, cell)?;
            if names_equal(&key.name(), name) {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// The key at a backslash-separated path below this one.
    pub fn open(&self, path: &str) -> Result<Option<Key<'a>>> {
        let mut key = *self;
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            match key.subkey(part)? {
                Some(sub) => key = sub,
                None => return Ok(None),
            }
        }
        Ok(Some(key))
    }

    fn value_cells(&self) -> Result<Vec<u32>> {
        let count = self.field(36) as usize;
        if count == 0 {
            return Ok(Vec::new());
        }
        let list = self.hive.cell(self.field(40))?;
        if count > MAX_LIST_LEN || count * 4 > list.len() {
            return corrupt(format!(
                "key `{}` claims {count} values, more than its value list holds",
                self.name()
            ));
        }
        Ok(list[..count * 4]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    pub fn values(&self) -> Result<Vec<Value<'a>>> {
        self.value_cells()?
            .into_iter()
            .map(|c| Value::at(self.hive, c))
            .collect()
    }

    /// The value with this name (case-insensitive; `""` is the default value).
    pub fn value(&self, name: &str) -> Result<Option<Value<'a>>> {
        for cell in self.value_cells()? {
            let value = Value::at(self.hive, cell)?;
            if names_equal(&value.name(), name) {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// A REG_DWORD value's number; `None` when missing or of another type.
    pub fn dword(&self, name: &str) -> Result<Option<u32>> {
        Ok(match self.value(name)? {
            Some(v) => match v.data()? {
                Data::Dword(n) => Some(n),
                _ => None,
            },
            None => None,
        })
    }

    /// A REG_SZ or REG_EXPAND_SZ value's text; `None` when missing or of
    /// another type.
    pub fn string(&self, name: &str) -> Result<Option<String>> {
        Ok(match self.value(name)? {
            Some(v) => match v.data()? {
                Data::Sz(s) | Data::ExpandSz(s) => Some(s),
                _ => None,
            },
            None => None,
        })
    }

    /// A REG_MULTI_SZ value's strings, or a REG_SZ's one string (Windows
    /// reads a filter list either way); `None` when missing.
    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        Ok(match self.value(name)? {
            Some(v) => match v.data()? {
                Data::MultiSz(list) => Some(list),
                Data::Sz(s) | Data::ExpandSz(s) => Some(vec![s]),
                _ => None,
            },
            None => None,
        })
    }
}

/// The offsets in a list cell after its 4-byte header (`li`/`ri`: 4 bytes
/// each; `lf`/`lh`: 8 bytes, offset then hint or hash), bounded by the cell.
fn list_entries(data: &[u8], stride: usize) -> Result<Vec<u32>> {
    let count = usize::from(u16_at(data, 2).unwrap_or(0));
    if 4 + count * stride > data.len() {
        return corrupt(format!(
            "a subkey list claims {count} entries, more than its cell holds"
        ));
    }
    Ok(data[4..4 + count * stride]
        .chunks_exact(stride)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn leaf_entries(leaf: &[u8], cell: u32, out: &mut Vec<u32>) -> Result<()> {
    let stride = match leaf.get(..2) {
        Some(b"li") => 4,
        Some(b"lf" | b"lh") => 8,
        _ => return corrupt(format!("cell {cell:#x} is not a subkey list")),
    };
    let entries = list_entries(leaf, stride)?;
    if out.len() + entries.len() > MAX_LIST_LEN {
        return corrupt("a key has more subkeys than any real hive");
    }
    out.extend(entries);
    Ok(())
}

/// A value's data, decoded for the types the checks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Dword(u32),
    Qword(u64),
    Sz(String),
    ExpandSz(String),
    MultiSz(Vec<String>),
    /// Any other type, or a DWORD/QWORD of the wrong length: the raw bytes.
    Other {
        kind: u32,
        bytes: Vec<u8>,
    },
}

/// One value (a `vk` cell).
#[derive(Clone, Copy)]
pub struct Value<'a> {
    hive: &'a Hive<'a>,
    cell: u32,
    data: &'a [u8],
}

const VK_FIXED_LEN: usize = 20;
/// Where the data-offset field (or inline data) sits in a `vk` cell's data.
pub(crate) const VK_DATA_OFFSET: usize = 8;

/// Where a value's data bytes are, relative to the hive bins data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the vk cell's data-offset field itself.
    Inline,
    /// In a data cell (its data starts at this bins-relative offset).
    Cell(u32),
}

impl<'a> Value<'a> {
    fn at(hive: &'a Hive<'a>, cell: u32) -> Result<Value<'a>> {
        let data = hive.cell(cell)?;
        if data.len() < VK_FIXED_LEN || &data[..2] != b"vk" {
            return corrupt(format!("cell {cell:#x} is not a value"));
        }
        let name_len = usize::from(u16_at(data, 2).unwrap_or(0));
        if VK_FIXED_LEN + name_len > data.len() {
            return corrupt(format!(
                "the name of value cell {cell:#x} overruns its cell"
            ));
        }
        Ok(Value { hive, cell, data })
    }

    pub fn cell(&self) -> u32 {
        self.cell
    }

    pub fn name(&self) -> String {
        let len = usize::from(u16_at(self.data, 2).unwrap_or(0));
        let flags = u16_at(self.data, 16).unwrap_or(0);
        decode_name(
            &self.data[VK_FIXED_LEN..VK_FIXED_LEN + len],
            flags & VALUE_COMP_NAME != 0,
        )
    }

    pub fn kind(&self) -> u32 {
        u32_at(self.data, 12).unwrap_or(0)
    }

    fn raw_size(&self) -> u32 {
        u32_at(self.data, 4).unwrap_or(0)
    }

    fn place(&self) -> Place {
        if self.raw_size() & DATA_INLINE != 0 {
            Place::Inline
        } else {
            Place::Cell(u32_at(self.data, VK_DATA_OFFSET).unwrap_or(NONE))
        }
    }

    /// The data bytes, bounded by the cell that holds them.
    pub fn bytes(&self) -> Result<&'a [u8]> {
        let size = (self.raw_size() & !DATA_INLINE) as usize;
        match self.place() {
            Place::Inline => {
                if size > 4 {
                    return corrupt(format!(
                        "value `{}` claims {size} bytes of inline data (4 at most)",
                        self.name()
                    ));
                }
                Ok(&self.data[VK_DATA_OFFSET..VK_DATA_OFFSET + size])
            }
            Place::Cell(_) if size == 0 => Ok(&[]),
            Place::Cell(cell) => {
                let data = self.hive.cell(cell)?;
                if size > BIG_DATA_THRESHOLD && data.get(..2) == Some(b"db") {
                    return Err(HiveError::BigData { value: self.name() });
                }
                data.get(..size).ok_or_else(|| {
                    HiveError::Corrupt(format!(
                        "value `{}` claims {size} bytes of data, more than its cell holds",
                        self.name()
                    ))
                })
            }
        }
    }

    /// Where the data bytes are in the whole file (for the writer).
    pub(crate) fn file_range(&self) -> Result<Range<usize>> {
        let bytes = self.bytes()?;
        let start = match self.place() {
            Place::Inline => VK_DATA_OFFSET,
            Place::Cell(_) => 0,
        };
        let holder = match self.place() {
            Place::Inline => self.data,
            Place::Cell(cell) => self.hive.cell(cell)?,
        };
        Ok(Hive::file_range(
            holder,
            self.hive.bytes,
            start..start + bytes.len(),
        ))
    }

    pub fn data(&self) -> Result<Data> {
        let bytes = self.bytes()?;
        Ok(match (self.kind(), bytes.len()) {
            (REG_DWORD, 4) => Data::Dword(u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]))),
            (REG_QWORD, 8) => Data::Qword(u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))),
            (REG_SZ, _) => Data::Sz(first_string(bytes)),
            (REG_EXPAND_SZ, _) => Data::ExpandSz(first_string(bytes)),
            (REG_MULTI_SZ, _) => Data::MultiSz(multi_string(bytes)),
            (kind, _) => Data::Other {
                kind,
                bytes: bytes.to_vec(),
            },
        })
    }
}

/// A REG_SZ's text: UTF-16LE up to the first NUL (the terminator is usual
/// but not guaranteed).
fn first_string(bytes: &[u8]) -> String {
    multi_string(bytes).into_iter().next().unwrap_or_default()
}

/// A REG_MULTI_SZ's strings: UTF-16LE, each NUL-terminated, ended by an
/// empty string.
fn multi_string(bytes: &[u8]) -> Vec<String> {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|u| u16::from_le_bytes([u[0], u[1]]))
        .collect();
    let mut strings = Vec::new();
    for part in units.split(|&u| u == 0) {
        if part.is_empty() {
            break;
        }
        strings.push(
            char::decode_utf16(part.iter().copied())
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
        );
    }
    strings
}

#[cfg(test)]
#[path = "../../../../tests/common_hive/mod.rs"]
pub(crate) mod common_hive;

#[cfg(test)]
mod tests;
