//! What the fuzz tests share: a reproducible random source, the CRC32s
//! that checksummed metadata carries (so a mutation can be resealed past
//! its checksum), and a block source that records the ranges a clean read
//! touched (where mutations then land).

#![allow(dead_code)]

use std::io;
use std::sync::{Arc, Mutex};

use prepare_image::access::image::block::BlockSource;

/// xorshift64*: reproducible from the seed, no dependency.
pub struct Rng(pub u64);

impl Rng {
    /// Neighbouring seeds start far apart (splitmix64's finalizer).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A reflected CRC-32 with polynomial `poly`.
fn crc32_reflected(bytes: &[u8], poly: u32) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ poly
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// CRC-32 (IEEE), as GPT checksums its header and entry array.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32_reflected(bytes, 0xedb8_8320)
}

/// CRC-32C (Castagnoli), as btrfs checksums its tree blocks and superblock.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32_reflected(bytes, 0x82f6_3b78)
}

/// A source that notes every range read.
pub struct Recording {
    inner: Arc<dyn BlockSource>,
    ranges: Mutex<Vec<(u64, usize)>>,
}

impl Recording {
    pub fn new(inner: Arc<dyn BlockSource>) -> Recording {
        Recording {
            inner,
            ranges: Mutex::new(Vec::new()),
        }
    }

    /// The ranges read so far, in order.
    pub fn ranges(&self) -> Vec<(u64, usize)> {
        self.ranges.lock().unwrap().clone()
    }
}

impl BlockSource for Recording {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.ranges.lock().unwrap().push((offset, buf.len()));
        self.inner.read_at(buf, offset)
    }
}
