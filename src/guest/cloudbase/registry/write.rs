//! The one edit made to a hive: an existing REG_DWORD's four data bytes set
//! in place, then the base block updated as Windows leaves it after a
//! completed write (both sequence numbers advanced to the same number, the
//! last-written time, the checksum). No cell is allocated, moved or resized,
//! so every other byte of the hive stays as Windows wrote it: security
//! descriptors, class names (the LSA boot key lives there), timestamps.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{
    BASE_BLOCK_LEN, CHECKSUM_OFFSET, Data, Hive, HiveError, PRIMARY_SEQUENCE_OFFSET, REG_DWORD,
    SECONDARY_SEQUENCE_OFFSET, TIMESTAMP_OFFSET, base_block_checksum,
};

/// One DWORD to set: the key's path below the hive root, the value's name,
/// the number it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DwordWrite {
    pub key: String,
    pub value: String,
    pub to: u32,
}

/// What a write changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Each edit's previous number, in the order given.
    pub previous: Vec<u32>,
    /// The byte ranges of the file that changed, ascending, relative to the
    /// start of the hive file; empty when every value already held its number.
    pub changed: Vec<Range<usize>>,
}

/// Seconds between 1601-01-01 (FILETIME's epoch) and 1970-01-01.
const FILETIME_UNIX_OFFSET_SECS: u64 = 11_644_473_600;

/// Now as a Windows FILETIME (100 ns units since 1601, UTC).
pub fn filetime_now() -> u64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since_unix.as_secs() + FILETIME_UNIX_OFFSET_SECS) * 10_000_000
        + u64::from(since_unix.subsec_nanos() / 100)
}

/// Sets each DWORD in `bytes` (a whole primary hive file) and, if any
/// changed, writes the base block once as a completed Windows flush leaves
/// it, with `now` as the last-written FILETIME. The result is read back
/// and checked; on any error `bytes` is exactly as it was.
///
/// Refused: a hive that does not parse (dirty, bad checksum, damaged), a
/// missing key or value, a value that is not a 4-byte REG_DWORD.
pub fn set_dwords(bytes: &mut [u8], writes: &[DwordWrite], now: u64) -> Result<Written, HiveError> {
    let mut data_ranges = Vec::with_capacity(writes.len());
    let mut previous = Vec::with_capacity(writes.len());
    {
        let hive = Hive::parse(bytes)?;
        for write in writes {
            let (range, old) = locate_dword(&hive, write)?;
            previous.push(old);
            if old != write.to {
                data_ranges.push((range, write.to));
            }
        }
    }
    if data_ranges.is_empty() {
        return Ok(Written {
            previous,
            changed: Vec::new(),
        });
    }
    let original_base: Vec<u8> = bytes[..BASE_BLOCK_LEN].to_vec();
    let originals: Vec<(Range<usize>, Vec<u8>)> = data_ranges
        .iter()
        .map(|(r, _)| (r.clone(), bytes[r.clone()].to_vec()))
        .collect();

    for (range, to) in &data_ranges {
        bytes[range.clone()].copy_from_slice(&to.to_le_bytes());
    }
    let base = &mut bytes[..BASE_BLOCK_LEN];
    let sequence = read_u32(base, PRIMARY_SEQUENCE_OFFSET).wrapping_add(1);
    base[PRIMARY_SEQUENCE_OFFSET..PRIMARY_SEQUENCE_OFFSET + 4]
        .copy_from_slice(&sequence.to_le_bytes());
    base[SECONDARY_SEQUENCE_OFFSET..SECONDARY_SEQUENCE_OFFSET + 4]
        .copy_from_slice(&sequence.to_le_bytes());
    base[TIMESTAMP_OFFSET..TIMESTAMP_OFFSET + 8].copy_from_slice(&now.to_le_bytes());
    let checksum = base_block_checksum(base);
    base[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&checksum.to_le_bytes());

    if let Err(e) = verify(bytes, writes) {
        bytes[..BASE_BLOCK_LEN].copy_from_slice(&original_base);
        for (range, old) in originals {
            bytes[range].copy_from_slice(&old);
        }
        return Err(HiveError::Edit(format!(
            "the hive did not read back as written ({e}); it was left unchanged"
        )));
    }

    let mut changed: Vec<Range<usize>> = vec![
        PRIMARY_SEQUENCE_OFFSET..TIMESTAMP_OFFSET + 8,
        CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4,
    ];
    changed.extend(data_ranges.into_iter().map(|(r, _)| r));
    changed.sort_by_key(|r| r.start);
    changed.dedup();
    Ok(Written { previous, changed })
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Where the DWORD's four data bytes are in the file, and its number.
fn locate_dword(hive: &Hive<'_>, write: &DwordWrite) -> Result<(Range<usize>, u32), HiveError> {
    let key = hive
        .open(&write.key)?
        .ok_or_else(|| HiveError::Edit(format!("key `{}` is not in the hive", write.key)))?;
    let value = key.value(&write.value)?.ok_or_else(|| {
        HiveError::Edit(format!(
            "value `{}` is not in key `{}` (only existing values are set)",
            write.value, write.key
        ))
    })?;
    match value.data()? {
        Data::Dword(old) if value.kind() == REG_DWORD => Ok((value.file_range()?, old)),
        _ => Err(HiveError::Edit(format!(
            "value `{}` in key `{}` is not a 4-byte REG_DWORD (type {}), so it is not rewritten",
            write.value,
            write.key,
            value.kind()
        ))),
    }
}

/// The hive parses (sequence numbers equal, checksum right) and every value
/// holds its number.
fn verify(bytes: &[u8], writes: &[DwordWrite]) -> Result<(), HiveError> {
    let hive = Hive::parse(bytes)?;
    for write in writes {
        let (_, now) = locate_dword(&hive, write)?;
        if now != write.to {
            return Err(HiveError::Edit(format!(
                "`{}\\{}` reads {now}, not {}",
                write.key, write.value, write.to
            )));
        }
    }
    Ok(())
}
