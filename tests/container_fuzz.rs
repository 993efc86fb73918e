//! Mutated small qcow2 images and partition tables, read through the public
//! paths the user-space reader takes: `format::detect`,
//! `userspace::block_source` (that is `containment::layers`, then the imago
//! source), `partition::read_layout` and `fstype::detect` over that source,
//! and every sector range a partition and filesystem reader read on the
//! clean image. Every case must give an answer (data or an error with a
//! one-line message), no panic may escape (those the reader boundary
//! contained are counted), no single allocation may pass
//! [`ALLOCATION_BOUND`], no case may take [`CASE_LIMIT`] (slow ones are
//! counted and named), and a case still running after [`HANG`] aborts the
//! run with its seed.
//!
//! Seeds are small real images. qcow2, made by qemu-img from a GPT disk
//! holding ext4 (made by mke2fs): version 3, version 2, compressed
//! clusters, extended L2 entries, zstd compression (refused politely: the
//! kernel's view reads it), 512-byte clusters, an overlay on a backing
//! file (the overlay mutated; then the backing file mutated under a clean
//! overlay). Partition tables, made by sfdisk: MBR with logical partitions,
//! GPT with 512- and 4096-byte sectors. Mutations: bit flips and byte sets
//! on the metadata and anywhere, truncation, and field-targeted ones: the
//! qcow2 header fields and extensions, L1/L2/refcount entries (past the
//! end, at the header, unaligned, compressed, reserved bits); GPT header
//! and entry fields with both CRC32s recomputed so the mutation gets past
//! the checksum; MBR and extended boot record entries (chains that loop,
//! partitions past the end).
//!
//! `PREPARE_IMAGE_FUZZ_CASES` sets the cases per seed (default: CI's,
//! [`DEFAULT_CASES`]); e.g.
//! `PREPARE_IMAGE_FUZZ_CASES=5000 cargo test --release --test container_fuzz -- --nocapture`.
//! A failing case is replayed with `PREPARE_IMAGE_FUZZ_SEED=N` (its panics
//! are then shown); `PREPARE_IMAGE_FUZZ_TRACE=1` prints each case first.
//!
//! Needs root (the 4096-byte-sector GPT is written through a loop device),
//! qemu-utils (qemu-img, qemu-io), fdisk and e2fsprogs.

mod common_alloc;
mod common_fuzz;
mod common_images;
mod common_readers;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use common_fuzz::{Recording, Rng, crc32};
use common_images::{
    MIB, ext4_from, gpt_disk_around, partition as write_table, path_str, run, sparse_file,
};
use common_readers::walk_all;
use prepare_image::access::fs::reader_for;
use prepare_image::access::image::block::{BlockSource, Window};
use prepare_image::access::image::containment::Layer;
use prepare_image::access::image::format::{self, ImageFormat};
use prepare_image::access::image::fstype;
use prepare_image::access::image::partition::{self, LayoutError, Table};
use prepare_image::access::image::qcow2::Qcow2Source;
use prepare_image::access::image::userspace::{self, NeedsKernel};
use tempfile::TempDir;

/// Cases per seed in CI: the whole test stays under a minute on two cores
/// (debug build).
const DEFAULT_CASES: u64 = 200;

/// No single allocation of a case may pass this. What the paths may
/// allocate at most, by design: containment's reads (at most 2 MiB, a
/// cluster); imago's L1 table (its size is checked against the file's by
/// containment, and the seeds are under 1.5 MiB), an L2 table (a cluster,
/// at most 2 MiB) and a compressed cluster's input (at most two clusters,
/// 4 MiB: the descriptor's sector count has `cluster_bits - 8` bits) and
/// output (a cluster); gptman's entry array (16384 entries at most);
/// fstype's probe (68 KiB); the replayed reads (the ext4 reader's, under
/// 1 MiB). 4 MiB and a little for alignment.
const ALLOCATION_BOUND: usize = 4 * MIB as usize + 64 * 1024;

/// A case that takes longer than this is counted and named as slow.
const SLOW: Duration = Duration::from_secs(1);
/// A case that takes longer than this fails the test.
const CASE_LIMIT: Duration = Duration::from_secs(20);
/// A case still running after this is a hang: the watchdog aborts the run.
const HANG: Duration = Duration::from_secs(120);

fn cases() -> u64 {
    std::env::var("PREPARE_IMAGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn replayed() -> Option<u64> {
    std::env::var("PREPARE_IMAGE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn be(bytes: &[u8], at: u64, width: usize) -> u64 {
    let at = at as usize;
    bytes
        .get(at..at + width)
        .map_or(0, |b| b.iter().fold(0, |v, &x| v << 8 | u64::from(x)))
}

fn le(bytes: &[u8], at: u64, width: usize) -> u64 {
    let at = at as usize;
    bytes
        .get(at..at + width)
        .map_or(0, |b| b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x)))
}

fn be_bytes(value: u64, width: usize) -> Vec<u8> {
    value.to_be_bytes()[8 - width..].to_vec()
}

fn le_bytes(value: u64, width: usize) -> Vec<u8> {
    value.to_le_bytes()[..width].to_vec()
}

// ---------------------------------------------------------------------------
// The case harness: time, allocation, panics, hangs.

thread_local! {
    /// Whether this thread runs a case (its panics are counted, not shown).
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    /// Panics raised on this thread inside cases (and caught by the reader
    /// boundary, unless a case reports one escaping).
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// The cases running now, for the watchdog.
static RUNNING: Mutex<Vec<(ThreadId, String, Instant)>> = Mutex::new(Vec::new());

fn harness() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) && replayed().is_none() {
                PANICS.with(|p| p.set(p.get() + 1));
            } else {
                default(info);
            }
        }));
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((_, name, started)) =
                    running.iter().find(|(_, _, started)| started.elapsed() > HANG)
                {
                    eprintln!(
                        "container_fuzz: {name} still runs after {:?}: a hang (replay it with PREPARE_IMAGE_FUZZ_SEED)",
                        started.elapsed()
                    );
                    std::process::abort();
                }
            }
        });
    });
}

#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    /// The seed is not read as qcow2 any more (raw, or another format).
    other_format: u64,
    /// Refused before any disk read (format detection, containment).
    refused: u64,
    /// Sent to the kernel's view (the imago reader refuses it).
    needs_kernel: u64,
    layouts: u64,
    layout_errors: u64,
    /// The layout errors by kind.
    layout_error_kinds: BTreeMap<&'static str, u64>,
    reads: u64,
    read_errors: u64,
    /// Panics the reader boundary (`guarded`) contained.
    contained_panics: usize,
    /// The first cases whose panics the boundary contained.
    panicked: Vec<u64>,
    slow: Vec<(u64, Duration)>,
    slowest: Duration,
    largest_allocation: usize,
    largest_allocation_seed: u64,
    total: Duration,
}

impl Tally {
    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} cases in {:.1?} ({} other format, {} refused, {} sent to the kernel, {} layouts, {} layout errors {:?}, {} reads, {} read errors, {} panics contained {:?}); slowest {:.1?}; {} slow {:?}; largest allocation {} bytes (seed {})",
            self.cases,
            self.total,
            self.other_format,
            self.refused,
            self.needs_kernel,
            self.layouts,
            self.layout_errors,
            self.layout_error_kinds,
            self.reads,
            self.read_errors,
            self.contained_panics,
            self.panicked,
            self.slowest,
            self.slow.len(),
            self.slow,
            self.largest_allocation,
            self.largest_allocation_seed
        );
    }
}

/// Runs one case: panics escaping `f` fail the test with the seed; its
/// time and largest allocation go into `tally`.
fn run_case<T>(what: &str, seed: u64, tally: &mut Tally, f: impl FnOnce() -> T) -> T {
    let name = format!("{what}, case seed {seed}");
    if std::env::var_os("PREPARE_IMAGE_FUZZ_TRACE").is_some() {
        eprintln!("{name}");
    }
    let me = std::thread::current().id();
    RUNNING
        .lock()
        .unwrap()
        .push((me, name.clone(), Instant::now()));
    let panics_before = PANICS.with(Cell::get);
    IN_CASE.with(|c| c.set(true));
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| common_alloc::largest_allocation(f)));
    let took = started.elapsed();
    IN_CASE.with(|c| c.set(false));
    RUNNING.lock().unwrap().retain(|(id, _, _)| *id != me);
    let (value, largest) = match outcome {
        Ok(answer) => answer,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            panic!(
                "{name}: a panic escaped the reader boundary: {why} (replay: PREPARE_IMAGE_FUZZ_SEED={seed} cargo test --test container_fuzz -- --nocapture)"
            );
        }
    };
    tally.cases += 1;
    tally.total += took;
    let panics = PANICS.with(Cell::get) - panics_before;
    tally.contained_panics += panics;
    if panics > 0 && tally.panicked.len() < 10 {
        tally.panicked.push(seed);
    }
    tally.slowest = tally.slowest.max(took);
    if took > SLOW {
        tally.slow.push((seed, took));
    }
    if largest > tally.largest_allocation {
        tally.largest_allocation = largest;
        tally.largest_allocation_seed = seed;
    }
    assert!(
        largest <= ALLOCATION_BOUND,
        "{name}: an allocation of {largest} bytes (bound {ALLOCATION_BOUND})"
    );
    assert!(took < CASE_LIMIT, "{name}: took {took:?}");
    value
}

fn one_line(name: &str, seed: u64, message: &str) {
    assert!(
        !message.contains('\n') && !message.is_empty(),
        "case seed {seed} ({name}): the message is not one line: {message:?}"
    );
}

// ---------------------------------------------------------------------------
// Seeds' bytes with a case's edits, undone after the case.

struct Patched {
    original: Vec<u8>,
    bytes: Vec<u8>,
    len: usize,
    touched: Vec<(usize, usize)>,
}

impl Patched {
    fn new(original: Vec<u8>) -> Patched {
        Patched {
            bytes: original.clone(),
            len: original.len(),
            original,
            touched: Vec::new(),
        }
    }

    /// Writes `data` at `at`, clipped to the seed's length.
    fn set(&mut self, at: u64, data: &[u8]) {
        let Ok(at) = usize::try_from(at) else { return };
        if at >= self.bytes.len() {
            return;
        }
        let n = data.len().min(self.bytes.len() - at);
        self.bytes[at..at + n].copy_from_slice(&data[..n]);
        self.touched.push((at, n));
    }

    fn truncate(&mut self, len: u64) {
        self.len = self.len.min(len as usize);
    }

    fn now(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn undo(&mut self) {
        for (at, n) in self.touched.drain(..) {
            self.bytes[at..at + n].copy_from_slice(&self.original[at..at + n]);
        }
        self.len = self.original.len();
    }
}

// ---------------------------------------------------------------------------
// qcow2 seeds.

/// Where a qcow2 file keeps what the readers parse.
#[derive(Debug)]
struct Qcow2Map {
    len: u64,
    cluster_bits: u32,
    /// Header extensions' headers (type, length), the end marker last.
    extensions: Vec<u64>,
    /// Bytes of the header and its extensions.
    header_end: u64,
    l1: (u64, u64),
    l2_tables: Vec<u64>,
    l2_entry_size: u64,
    /// Where the non-zero L1 and L2 entries are.
    l1_entries: Vec<u64>,
    l2_entries: Vec<u64>,
    reftable: (u64, u64),
    refblocks: Vec<u64>,
}

const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

fn qcow2_map(bytes: &[u8]) -> Qcow2Map {
    let len = bytes.len() as u64;
    let version = be(bytes, 4, 4);
    let cluster_bits = be(bytes, 20, 4) as u32;
    let cluster = 1u64 << cluster_bits;
    let header_length = if version >= 3 { be(bytes, 100, 4) } else { 72 };
    let mut extensions = Vec::new();
    let mut at = header_length;
    loop {
        extensions.push(at);
        let (kind, length) = (be(bytes, at, 4), be(bytes, at + 4, 4));
        if kind == 0 || at + 8 + length > cluster {
            break;
        }
        at += 8 + length.next_multiple_of(8);
    }
    let header_end = at + 8;
    let l1 = (be(bytes, 40, 8), be(bytes, 36, 4));
    let extended = version >= 3 && be(bytes, 72, 8) & (1 << 4) != 0;
    let l2_entry_size = if extended { 16 } else { 8 };
    let mut l2_tables = Vec::new();
    let mut l1_entries = Vec::new();
    let mut l2_entries = Vec::new();
    for i in 0..l1.1 {
        let at = l1.0 + i * 8;
        let l2 = be(bytes, at, 8) & L2_OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        l1_entries.push(at);
        l2_tables.push(l2);
        for e in (0..cluster).step_by(l2_entry_size as usize) {
            if be(bytes, l2 + e, 8) != 0 {
                l2_entries.push(l2 + e);
            }
        }
    }
    let reftable = (be(bytes, 48, 8), be(bytes, 56, 4) * cluster / 8);
    let refblocks = (0..reftable.1)
        .map(|i| be(bytes, reftable.0 + i * 8, 8) & L2_OFFSET_MASK)
        .filter(|&o| o != 0)
        .collect();
    Qcow2Map {
        len,
        cluster_bits,
        extensions,
        header_end,
        l1,
        l2_tables,
        l2_entry_size,
        l1_entries,
        l2_entries,
        reftable,
        refblocks,
    }
}

/// The qcow2 header's fields: name, offset, width.
const QCOW2_FIELDS: &[(&str, u64, usize)] = &[
    ("version", 4, 4),
    ("backing_file_offset", 8, 8),
    ("backing_file_size", 16, 4),
    ("cluster_bits", 20, 4),
    ("size", 24, 8),
    ("crypt_method", 32, 4),
    ("l1_size", 36, 4),
    ("l1_table_offset", 40, 8),
    ("refcount_table_offset", 48, 8),
    ("refcount_table_clusters", 56, 4),
    ("nb_snapshots", 60, 4),
    ("snapshots_offset", 64, 8),
    ("incompatible_features", 72, 8),
    ("compatible_features", 80, 8),
    ("autoclear_features", 88, 8),
    ("refcount_order", 96, 4),
    ("header_length", 100, 4),
    ("compression_type", 104, 1),
];

/// Values worth trying in any field of `width` bytes whose value is `orig`.
fn any_value(rng: &mut Rng, orig: u64, width: usize) -> u64 {
    let max = if width == 8 {
        u64::MAX
    } else {
        (1 << (8 * width)) - 1
    };
    let value = match rng.below(8) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => orig.wrapping_add(1),
        4 => orig.wrapping_sub(1),
        5 => orig ^ (1 << rng.below(8 * width as u64)),
        6 => max / 2 + 1,
        _ => rng.next(),
    };
    value & max
}

fn qcow2_field_value(rng: &mut Rng, map: &Qcow2Map, name: &str, orig: u64, width: usize) -> u64 {
    let cluster = 1u64 << map.cluster_bits;
    let inside = rng.below(map.len / cluster + 1) * cluster;
    let past_end = map.len.next_multiple_of(cluster) + cluster * rng.below(3);
    let specific: Vec<u64> = match name {
        "version" => vec![1, 2, 3, 4],
        "cluster_bits" => vec![0, 8, 9, 12, 14, 16, 20, 21, 22, 31, 32, 63, 64],
        "l1_size" => vec![
            1 << 22,
            (1 << 22) + 1,
            map.len / 8,
            map.len / 8 + 1,
            orig * 2,
            u64::from(u32::MAX),
        ],
        "size" => {
            let capacity = map.l1.1 * (cluster / map.l2_entry_size) * cluster;
            vec![
                1 << 62,
                u64::MAX,
                u64::MAX - 511,
                capacity,
                capacity + 1,
                orig + 512,
                511,
            ]
        }
        "backing_file_offset"
        | "l1_table_offset"
        | "refcount_table_offset"
        | "snapshots_offset" => vec![
            inside,
            inside + 8,
            past_end,
            map.len,
            map.l1.0,
            map.reftable.0,
            1 << 56,
            1 << 63,
        ],
        "backing_file_size" => vec![1023, 1024, 8, cluster],
        "refcount_table_clusters" => vec![1 << 20, map.len / cluster + 1],
        "refcount_order" => vec![0, 3, 4, 6, 7, 64],
        "header_length" => vec![
            0,
            71,
            72,
            103,
            104,
            105,
            112,
            cluster - 8,
            cluster,
            cluster + 1,
        ],
        "incompatible_features" => vec![orig | 1 << rng.below(5), 0, orig & !(1 << 4)],
        "compression_type" => vec![0, 1, 2],
        "nb_snapshots" => vec![1, 65536],
        _ => vec![],
    };
    if !specific.is_empty() && rng.chance(60) {
        rng.pick(&specific)
    } else {
        any_value(rng, orig, width)
    }
}

/// Values for an L1, L2 or refcount entry.
fn qcow2_entry_value(rng: &mut Rng, map: &Qcow2Map, at: u64, orig: u64) -> u64 {
    const COPIED: u64 = 1 << 63;
    const COMPRESSED: u64 = 1 << 62;
    let cluster = 1u64 << map.cluster_bits;
    let past_end = map.len.next_multiple_of(cluster) + cluster * rng.below(3);
    let other_l2 = if map.l2_tables.is_empty() {
        0
    } else {
        rng.pick(&map.l2_tables)
    };
    let values = [
        0,
        orig ^ (1 << rng.below(64)),
        past_end | COPIED,
        COPIED, // the header
        map.l1.0 | COPIED,
        (at & !(cluster - 1)) | COPIED, // the table itself
        other_l2 | COPIED,
        orig.wrapping_add(512),
        orig | 1, // reads as zeros (or a reserved bit in L1)
        orig | 1 << 56,
        COMPRESSED | rng.next() >> 2,
        COMPRESSED | (orig & L2_OFFSET_MASK),
        COMPRESSED | past_end,
        u64::MAX,
        rng.next(),
    ];
    rng.pick(&values)
}

/// One case's edits of a qcow2 file.
fn mutate_qcow2(rng: &mut Rng, map: &Qcow2Map, p: &mut Patched) {
    let cluster = 1u64 << map.cluster_bits;
    let mut regions: Vec<(u64, u64)> = vec![(0, map.header_end), (map.l1.0, map.l1.1 * 8)];
    regions.extend(map.l2_tables.iter().map(|&o| (o, cluster)));
    regions.push((map.reftable.0, map.reftable.1 * 8));
    regions.extend(map.refblocks.iter().map(|&o| (o, cluster)));
    let mut cut = None;
    for _ in 0..1 + rng.below(3) {
        match rng.below(100) {
            0..30 => {
                let (name, at, width) = rng.pick(QCOW2_FIELDS);
                let orig = be(&p.original, at, width);
                let value = qcow2_field_value(rng, map, name, orig, width);
                p.set(at, &be_bytes(value, width));
            }
            30..38 => {
                let at = rng.pick(&map.extensions);
                if rng.chance(50) {
                    let kinds = [
                        0,
                        0xE279_2ACA, // backing file format
                        0x4441_5441, // external data file
                        0x6803_f857, // feature name table
                        0x2385_2875, // bitmaps
                        0x0537_be77, // full disk encryption
                        rng.next() & 0xffff_ffff,
                    ];
                    p.set(at, &be_bytes(rng.pick(&kinds), 4));
                } else {
                    let lengths = [0, 1, 7, 8, 9, cluster - at, cluster, u64::from(u32::MAX)];
                    let length = rng.pick(&lengths);
                    p.set(at + 4, &be_bytes(length, 4));
                }
            }
            38..60 => {
                let l2 = rng.chance(60) && !map.l2_entries.is_empty();
                let at = if l2 {
                    let at = rng.pick(&map.l2_entries);
                    // Extended L2: the allocation and zero bitmaps.
                    if map.l2_entry_size == 16 && rng.chance(40) {
                        let bitmaps = [0, u64::MAX, 0xffff_ffff, 0xffff_ffff_0000_0000];
                        p.set(at + 8, &be_bytes(rng.pick(&bitmaps), 8));
                        continue;
                    }
                    at
                } else if rng.chance(60) && !map.l1_entries.is_empty() {
                    rng.pick(&map.l1_entries)
                } else if rng.chance(50) && map.reftable.1 > 0 {
                    map.reftable.0 + 8 * rng.below(map.reftable.1.min(64))
                } else {
                    map.l1.0 + 8 * rng.below(map.l1.1.max(1))
                };
                let orig = be(&p.original, at, 8);
                let value = qcow2_entry_value(rng, map, at, orig);
                p.set(at, &be_bytes(value, 8));
            }
            60..85 => {
                let (start, len) = rng.pick(&regions);
                let at = start + rng.below(len);
                let orig = p.original.get(at as usize).copied().unwrap_or(0);
                let byte = match rng.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => rng.next() as u8,
                    _ => orig ^ 1 << rng.below(8),
                };
                p.set(at, &[byte]);
            }
            85..95 => {
                let at = rng.below(map.len);
                p.set(at, &[rng.next() as u8]);
            }
            _ => {
                let cuts = [
                    0,
                    71,
                    72,
                    104,
                    map.header_end,
                    map.l1.0,
                    map.l1.0 + 8,
                    map.l2_tables.first().copied().unwrap_or(0),
                    map.l2_tables.first().copied().unwrap_or(0) + cluster / 2,
                    map.len - 1,
                    map.len.saturating_sub(cluster),
                    rng.below(map.len),
                ];
                cut = Some(rng.pick(&cuts));
            }
        }
    }
    if let Some(cut) = cut {
        p.truncate(cut);
    }
}

/// A qcow2 seed: `top` is opened, `mutated` (the top or its backing file)
/// is changed by the cases.
struct Qcow2Seed {
    name: &'static str,
    top: PathBuf,
    mutated: PathBuf,
    allow_backing: bool,
    map: Qcow2Map,
    /// The reads the partition and filesystem readers made on the clean
    /// image (disk offsets), and a sweep of the disk.
    ranges: Vec<(u64, usize)>,
}

/// The clean image read as the user-space reader reads it, recording the
/// ranges; `Err` when it goes to the kernel's view.
fn clean_reads(top: &Path, allow_backing: bool) -> Result<Vec<(u64, usize)>, String> {
    let mut file = File::open(top).unwrap();
    assert_eq!(format::detect(&mut file).unwrap(), ImageFormat::Qcow2);
    let source = match userspace::block_source(top, file, ImageFormat::Qcow2, allow_backing) {
        Ok(Ok(source)) => source,
        Ok(Err(NeedsKernel(why))) => return Err(why),
        Err(e) => panic!("{}: {e:#}", top.display()),
    };
    let recording = Arc::new(Recording::new(source.clone()));
    let disk = Window::whole(recording.clone());
    let layout = partition::read_layout(&mut disk.cursor(), disk.len()).unwrap();
    assert_eq!(layout.partitions.len(), 2, "{}", top.display());
    let mut files = 0;
    for p in &layout.partitions {
        let kind = fstype::detect(&mut disk.cursor(), p.offset).unwrap();
        let window = Window::new(recording.clone(), p.offset, p.size).unwrap();
        if let Some(fs) = reader_for(&kind, window) {
            let counts = walk_all(&*fs.unwrap(), 200, 8, MIB, &mut |_, _| {});
            assert_eq!(counts.errors, 0, "{}", top.display());
            files += counts.files;
        }
    }
    assert!(files >= 3, "{}: {files} files read", top.display());
    let mut ranges = recording.ranges();
    // One sector in every 64 KiB, so that every L2 entry of the disk is looked up.
    ranges.extend((0..source.len()).step_by(64 * 1024).map(|o| (o, 512)));
    ranges.sort_unstable();
    ranges.dedup();
    Ok(ranges)
}

/// The disk the qcow2 seeds hold: GPT, a BIOS boot partition and ext4
/// with a few files (random bytes, text that compresses, cloud.cfg).
fn seed_disk(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    common_readers::put(
        &tree,
        "etc/cloud/cloud.cfg",
        b"datasource_list: [NoCloud]\n",
    );
    common_readers::put(&tree, "etc/hostname", b"guest\n");
    let mut rng = Rng(0x5eed);
    let noise: Vec<u8> = (0..300_000).map(|_| rng.next() as u8).collect();
    common_readers::put(&tree, "var/noise", &noise);
    common_readers::put(&tree, "var/text", &b"a line that compresses\n".repeat(9000));
    let fs = dir.join("root.ext4");
    ext4_from(&tree, &fs, 5 * MIB);
    let disk = dir.join("disk.raw");
    gpt_disk_around(&disk, &fs);
    disk
}

fn qemu_img_convert(disk: &Path, out: &Path, options: &[&str]) {
    let mut args = vec!["convert", "-q", "-O", "qcow2"];
    args.extend(options);
    args.push(path_str(disk));
    args.push(path_str(out));
    run("qemu-img", &args);
}

/// An empty qcow2 overlay on `base.qcow2`, next to it.
fn overlay_on_base(overlay: &Path) {
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            path_str(overlay),
        ],
    );
}

fn qcow2_seeds(dir: &Path) -> Vec<Qcow2Seed> {
    let disk = seed_disk(dir);
    let made: [(&str, &[&str]); 6] = [
        ("v3", &[]),
        ("v2", &["-o", "compat=0.10"]),
        ("compressed", &["-c"]),
        ("extended-l2", &["-o", "extended_l2=on"]),
        ("zstd", &["-c", "-o", "compression_type=zstd"]),
        ("512-byte-clusters", &["-o", "cluster_size=512"]),
    ];
    let mut files: Vec<(&'static str, PathBuf, PathBuf, bool)> = Vec::new();
    for (name, options) in made {
        let path = dir.join(format!("{name}.qcow2"));
        qemu_img_convert(&disk, &path, options);
        files.push((name, path.clone(), path, false));
    }
    // An overlay with one cluster of its own on a qcow2 backing file.
    let base = dir.join("base.qcow2");
    qemu_img_convert(&disk, &base, &[]);
    let overlay = dir.join("overlay.qcow2");
    overlay_on_base(&overlay);
    run(
        "qemu-io",
        &["-c", "write -P 0x5a 7M 64k", path_str(&overlay)],
    );
    files.push(("overlay", overlay.clone(), overlay.clone(), true));
    files.push(("backing-under-overlay", overlay, base, true));

    // The reads of the disk (all seeds hold the same one), as the readers
    // made them on the plain v3 image.
    let reader_ranges = clean_reads(&files[0].1, false).unwrap();
    files
        .into_iter()
        .map(|(name, top, mutated, allow_backing)| {
            let ranges = match clean_reads(&top, allow_backing) {
                Ok(ranges) => ranges,
                Err(why) => {
                    // Refused politely (the kernel's view reads these), and
                    // only these: imago 0.2.6 would read zstd as zlib, and
                    // does not know extended L2 entries.
                    let expected = match name {
                        "zstd" => "zstd",
                        "extended-l2" => "extended L2",
                        _ => panic!("{name}: {why}"),
                    };
                    assert!(why.contains(expected), "{name}: {why}");
                    reader_ranges.clone()
                }
            };
            let map = qcow2_map(&std::fs::read(&mutated).unwrap());
            Qcow2Seed {
                name,
                top,
                mutated,
                allow_backing,
                map,
                ranges,
            }
        })
        .collect()
}

/// What one case came to (for the tally).
enum Answer {
    OtherFormat,
    Refused,
    NeedsKernel,
    Read {
        layout: Result<(), LayoutError>,
        reads: u64,
        read_errors: u64,
    },
}

/// A layout error's kind, for the tally.
fn error_kind(e: &LayoutError) -> &'static str {
    match e {
        LayoutError::Io(_) => "io",
        LayoutError::Truncated { .. } => "truncated",
        LayoutError::Corrupt { table: "GPT", .. } => "corrupt GPT",
        LayoutError::Corrupt { .. } => "corrupt MBR",
        _ => "other",
    }
}

impl Tally {
    fn layout<T>(&mut self, layout: &Result<T, LayoutError>) {
        match layout {
            Ok(_) => self.layouts += 1,
            Err(e) => {
                self.layout_errors += 1;
                *self.layout_error_kinds.entry(error_kind(e)).or_default() += 1;
            }
        }
    }
}

/// Checks a layout's promise: every partition lies inside the disk.
fn check_layout(name: &str, seed: u64, layout: &Result<partition::Layout, LayoutError>, len: u64) {
    match layout {
        Ok(layout) => {
            for p in &layout.partitions {
                assert!(
                    p.offset.checked_add(p.size).is_some_and(|end| end <= len),
                    "case seed {seed} ({name}): partition {p:?} passes the end ({len} bytes)"
                );
            }
        }
        Err(e) => one_line(name, seed, &e.to_string()),
    }
}

/// One case: the image as the user-space reader opens it, then the reads.
fn read_qcow2_case(seed: &Qcow2Seed, case: u64) -> Answer {
    let mut file = match File::open(&seed.top) {
        Ok(file) => file,
        Err(_) => return Answer::Refused,
    };
    let format = match format::detect(&mut file) {
        Ok(format) => format,
        Err(e) => {
            one_line(seed.name, case, &e.to_string());
            return Answer::Refused;
        }
    };
    let source = match userspace::block_source(&seed.top, file, format, seed.allow_backing) {
        Ok(Ok(source)) => source,
        Ok(Err(NeedsKernel(why))) => {
            one_line(seed.name, case, &why);
            return Answer::NeedsKernel;
        }
        Err(e) => {
            one_line(seed.name, case, &format!("{e:#}"));
            return Answer::Refused;
        }
    };
    let disk = Window::whole(source.clone());
    let layout = partition::read_layout(&mut disk.cursor(), source.len());
    check_layout(seed.name, case, &layout, source.len());
    if let Ok(layout) = &layout {
        for p in &layout.partitions {
            let _ = fstype::detect(&mut disk.cursor(), p.offset);
            let _ = Window::new(source.clone(), p.offset, p.size);
        }
    }
    let (mut reads, mut read_errors) = (0, 0);
    let mut buf = Vec::new();
    // And the last sectors, where a backup GPT header is looked for.
    let tail = [512, 4096].map(|n| (source.len().saturating_sub(n), n as usize));
    for &(offset, len) in seed.ranges.iter().chain(&tail) {
        buf.resize(len, 0);
        match source.read_at(&mut buf, offset) {
            Ok(()) => reads += 1,
            Err(e) => {
                one_line(seed.name, case, &e.to_string());
                read_errors += 1;
            }
        }
    }
    if format != ImageFormat::Qcow2 {
        return Answer::OtherFormat;
    }
    Answer::Read {
        layout: layout.map(|_| ()),
        reads,
        read_errors,
    }
}

fn tally_answer(tally: &mut Tally, answer: Answer) {
    match answer {
        Answer::OtherFormat => tally.other_format += 1,
        Answer::Refused => tally.refused += 1,
        Answer::NeedsKernel => tally.needs_kernel += 1,
        Answer::Read {
            layout,
            reads,
            read_errors,
        } => {
            tally.layout(&layout);
            tally.reads += reads;
            tally.read_errors += read_errors;
        }
    }
}

#[test]
fn mutated_qcow2_images_give_answers() {
    harness();
    let dir = TempDir::new().unwrap();
    let seeds = qcow2_seeds(dir.path());
    let mut all = Tally::default();
    for (index, seed) in seeds.iter().enumerate() {
        let mut patched = Patched::new(std::fs::read(&seed.mutated).unwrap());
        let mut tally = Tally::default();
        for case in 0..cases() {
            let case_seed = (100 + index as u64) * 1_000_003 + case;
            if replayed().is_some_and(|s| s != case_seed) {
                continue;
            }
            let mut rng = Rng::new(case_seed);
            mutate_qcow2(&mut rng, &seed.map, &mut patched);
            std::fs::write(&seed.mutated, patched.now()).unwrap();
            let answer = run_case(seed.name, case_seed, &mut tally, || {
                read_qcow2_case(seed, case_seed)
            });
            tally_answer(&mut tally, answer);
            patched.undo();
        }
        std::fs::write(&seed.mutated, patched.now()).unwrap();
        tally.report(&format!("qcow2 {}", seed.name));
        merge(&mut all, tally);
    }
    all.report("qcow2, all seeds");
}

fn merge(all: &mut Tally, t: Tally) {
    all.cases += t.cases;
    all.other_format += t.other_format;
    all.refused += t.refused;
    all.needs_kernel += t.needs_kernel;
    all.layouts += t.layouts;
    all.layout_errors += t.layout_errors;
    for (kind, n) in t.layout_error_kinds {
        *all.layout_error_kinds.entry(kind).or_default() += n;
    }
    all.reads += t.reads;
    all.read_errors += t.read_errors;
    all.contained_panics += t.contained_panics;
    all.panicked.extend(t.panicked);
    all.slow.extend(t.slow);
    all.slowest = all.slowest.max(t.slowest);
    if t.largest_allocation > all.largest_allocation {
        all.largest_allocation = t.largest_allocation;
        all.largest_allocation_seed = t.largest_allocation_seed;
    }
    all.total += t.total;
}

// ---------------------------------------------------------------------------
// Partition-table seeds.

#[derive(Debug)]
enum TableMap {
    Gpt {
        sector: u64,
        /// Byte offsets of the primary and backup headers.
        headers: [u64; 2],
    },
    Mbr {
        /// The extended partition's first sector, and its EBRs' sectors.
        extended: u64,
        ebrs: Vec<u64>,
    },
}

struct TableSeed {
    name: &'static str,
    /// Partitions the clean table lists.
    partitions: usize,
    map: TableMap,
    bytes: Vec<u8>,
}

fn table_seeds(dir: &Path) -> Vec<TableSeed> {
    let make = |name: &str, script: &str, sector: u64| {
        let image = dir.join(name);
        sparse_file(&image, 8 * MIB);
        write_table(&image, script, sector);
        std::fs::read(&image).unwrap()
    };
    let mbr = make(
        "mbr.img",
        "label: dos\n\
         start=2048, size=2048, type=83\n\
         start=4096, size=12288, type=5\n\
         start=6144, size=2048, type=83\n\
         start=10240, size=2048, type=82\n\
         start=14336, size=2048, type=83\n",
        512,
    );
    let ebrs = {
        let extended = 4096u64;
        let mut ebrs = vec![extended];
        loop {
            let at = *ebrs.last().unwrap() * 512;
            let link = le(&mbr, at + 446 + 16 + 8, 4);
            if link == 0 {
                break;
            }
            ebrs.push(extended + link);
        }
        ebrs
    };
    assert_eq!(ebrs.len(), 3, "{ebrs:?}");
    let gpt = "label: gpt\n\
               start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\"\n\
               start=4096, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n\
               gpt.img5 : start=12288, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"esp\"\n";
    let gpt4k = "label: gpt\n\
                 start=256, size=512, type=21686148-6449-6E6F-744E-656564454649\n\
                 start=768, size=1024, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n\
                 start=1792, size=200, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n";
    let gpt_map = |sector: u64| TableMap::Gpt {
        sector,
        headers: [sector, 8 * MIB - sector],
    };
    vec![
        TableSeed {
            name: "mbr",
            partitions: 4,
            map: TableMap::Mbr {
                extended: 4096,
                ebrs,
            },
            bytes: mbr,
        },
        TableSeed {
            name: "gpt-512",
            partitions: 3,
            map: gpt_map(512),
            bytes: make("gpt.img", gpt, 512),
        },
        TableSeed {
            name: "gpt-4096",
            partitions: 3,
            map: gpt_map(4096),
            bytes: make("gpt4k.img", gpt4k, 4096),
        },
    ]
}

/// GPT header fields: name, offset, width.
const GPT_HEADER_FIELDS: &[(&str, u64, usize)] = &[
    ("revision", 8, 4),
    ("header_size", 12, 4),
    ("my_lba", 24, 8),
    ("alternate_lba", 32, 8),
    ("first_usable_lba", 40, 8),
    ("last_usable_lba", 48, 8),
    ("entries_lba", 72, 8),
    ("entries", 80, 4),
    ("entry_size", 84, 4),
];

/// Computes the entry array's and then the header's CRC32 again, as a tool
/// that wrote the damage would have.
fn gpt_reseal(p: &mut Patched, header: u64, sector: u64) {
    let h = header as usize;
    let lba = le(p.now(), header + 72, 8);
    let array = le(p.now(), header + 80, 4) * le(p.now(), header + 84, 4);
    if let Some(start) = lba.checked_mul(sector)
        && array <= 4 * MIB
        && start + array <= p.len as u64
    {
        let sum = crc32(&p.now()[start as usize..(start + array) as usize]);
        p.set(header + 88, &sum.to_le_bytes());
    }
    let size = le(p.now(), header + 12, 4);
    let size = if (92..=sector).contains(&size) {
        size
    } else {
        92
    };
    if h + size as usize <= p.len {
        p.set(header + 16, &[0; 4]);
        let sum = crc32(&p.now()[h..h + size as usize]);
        p.set(header + 16, &sum.to_le_bytes());
    }
}

fn mutate_gpt(rng: &mut Rng, sector: u64, headers: [u64; 2], p: &mut Patched) {
    let disk_sectors = p.original.len() as u64 / sector;
    let copy = usize::from(rng.chance(30));
    let header = headers[copy];
    if copy == 1 && rng.chance(50) {
        // The primary unreadable, so the backup is what is read.
        p.set(headers[0], b"EFI PARX");
    }
    let entries_at = le(&p.original, header + 72, 8) * sector;
    let lba_values = [
        0,
        1,
        2,
        disk_sectors - 1,
        disk_sectors,
        disk_sectors + 1,
        u64::MAX / sector + 1,
        1 << 55,
        u64::MAX,
    ];
    match rng.below(100) {
        0..50 => {
            let (name, at, width) = rng.pick(GPT_HEADER_FIELDS);
            let orig = le(&p.original, header + at, width);
            let specific: &[u64] = match name {
                "header_size" => &[91, 92, 93, 128, sector, sector + 1],
                "entries" => &[0, 1, 4, 128, 129, 16384, 16385, 1 << 20],
                "entry_size" => &[0, 64, 127, 128, 129, 256, 512],
                "revision" => &[0x0001_0000, 0x0001_0001],
                _ => &lba_values,
            };
            let value = if rng.chance(60) {
                rng.pick(specific)
            } else {
                any_value(rng, orig, width)
            };
            p.set(header + at, &le_bytes(value, width));
        }
        50..80 => {
            // The used entries are the first few.
            let entry = entries_at + 128 * rng.below(6);
            match rng.below(5) {
                0 => {
                    let (start, end) = (
                        le(&p.original, entry + 32, 8),
                        le(&p.original, entry + 40, 8),
                    );
                    p.set(entry + 32, &end.to_le_bytes());
                    p.set(entry + 40, &start.to_le_bytes());
                }
                1 => p.set(entry, &[0; 16]),
                2 => p.set(entry + 56, &[0x00, 0xd8, 0x41, 0x00]), // a lone surrogate
                _ => {
                    let at = entry + rng.pick(&[32u64, 40]);
                    let orig = le(&p.original, at, 8);
                    let value = if rng.chance(60) {
                        rng.pick(&lba_values)
                    } else {
                        any_value(rng, orig, 8)
                    };
                    p.set(at, &value.to_le_bytes());
                }
            }
        }
        80..95 => {
            let at = if rng.chance(50) {
                header + rng.below(92)
            } else {
                entries_at + rng.below(4 * 128)
            };
            p.set(at, &[rng.next() as u8]);
        }
        _ => {
            // The protective MBR.
            let at = 446 + rng.below(66);
            let random = rng.next() as u8;
            p.set(at, &[rng.pick(&[0u8, 0xee, 0x83, 0x05, random])]);
        }
    }
    if rng.chance(85) {
        gpt_reseal(p, header, sector);
    }
}

fn mutate_mbr(rng: &mut Rng, extended: u64, ebrs: &[u64], p: &mut Patched) {
    let disk_sectors = p.original.len() as u64 / 512;
    let ebr = rng.pick(ebrs);
    let sector = if rng.chance(40) { 0 } else { ebr };
    let base = sector * 512;
    match rng.below(100) {
        0..70 => {
            let slot = if sector == 0 {
                rng.below(4)
            } else {
                rng.below(2)
            };
            let entry = base + 446 + 16 * slot;
            match rng.below(3) {
                0 => {
                    let types = [0u8, 0x05, 0x0f, 0x85, 0x83, 0xee, 0x82, rng.next() as u8];
                    p.set(entry + 4, &[rng.pick(&types)]);
                }
                field => {
                    let at = entry + 4 + 4 * field;
                    let orig = le(&p.original, at, 4);
                    let relative = |s: u64| s.wrapping_sub(extended) & 0xffff_ffff;
                    let values = [
                        relative(rng.pick(ebrs)), // a link back (a loop) or to itself
                        relative(ebr),
                        0,
                        1,
                        disk_sectors,
                        disk_sectors.wrapping_sub(orig) + 1,
                        u64::from(u32::MAX),
                        12288,
                        12289,
                    ];
                    let value = if rng.chance(70) {
                        rng.pick(&values)
                    } else {
                        any_value(rng, orig, 4)
                    };
                    p.set(at, &le_bytes(value, 4));
                }
            }
        }
        70..80 => p.set(
            base + 510,
            &[rng.pick(&[0u8, 0x55]), rng.pick(&[0u8, 0xaa])],
        ),
        _ => p.set(base + 446 + rng.below(66), &[rng.next() as u8]),
    }
}

/// One case: the table read as `userspace::open` reads it.
fn read_table_case(name: &str, case: u64, bytes: &[u8]) -> Result<(), LayoutError> {
    let len = bytes.len() as u64;
    let layout = partition::read_layout(&mut Cursor::new(bytes), len);
    check_layout(name, case, &layout, len);
    if let Ok(layout) = &layout {
        let mut numbers: Vec<u32> = layout.partitions.iter().map(|p| p.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(
            numbers.len(),
            layout.partitions.len(),
            "case seed {case} ({name})"
        );
        for p in &layout.partitions {
            fstype::detect(&mut Cursor::new(bytes), p.offset).unwrap();
        }
    }
    layout.map(|_| ())
}

#[test]
fn mutated_partition_tables_give_answers() {
    harness();
    let dir = TempDir::new().unwrap();
    let mut all = Tally::default();
    for (index, seed) in table_seeds(dir.path()).into_iter().enumerate() {
        let clean =
            partition::read_layout(&mut Cursor::new(&seed.bytes), seed.bytes.len() as u64).unwrap();
        assert_eq!(
            clean.partitions.len(),
            seed.partitions,
            "{}: {clean:?}",
            seed.name
        );
        assert!(matches!(clean.table, Table::Gpt { .. } | Table::Mbr));
        let mut patched = Patched::new(seed.bytes);
        let mut tally = Tally::default();
        // Table cases are cheap: four times as many.
        for case in 0..4 * cases() {
            let case_seed = (200 + index as u64) * 1_000_003 + case;
            if replayed().is_some_and(|s| s != case_seed) {
                continue;
            }
            let mut rng = Rng::new(case_seed);
            for _ in 0..1 + rng.below(3) {
                match &seed.map {
                    TableMap::Gpt { sector, headers } => {
                        mutate_gpt(&mut rng, *sector, *headers, &mut patched)
                    }
                    TableMap::Mbr { extended, ebrs } => {
                        mutate_mbr(&mut rng, *extended, ebrs, &mut patched)
                    }
                }
            }
            if rng.chance(5) {
                let sector = match seed.map {
                    TableMap::Gpt { sector, .. } => sector,
                    TableMap::Mbr { .. } => 512,
                };
                let len = patched.original.len() as u64;
                let random = rng.below(len);
                patched.truncate(rng.pick(&[512, 1024, 2 * sector, len - sector, random]));
            }
            let layout = run_case(seed.name, case_seed, &mut tally, || {
                read_table_case(seed.name, case_seed, patched.now())
            });
            tally.layout(&layout);
            patched.undo();
        }
        tally.report(&format!("partition table {}", seed.name));
        merge(&mut all, tally);
    }
    all.report("partition tables, all seeds");
}

// ---------------------------------------------------------------------------
// Targeted cases.

/// gptman reads each entry as 152 bytes: an entry array ending at the very
/// end of the disk (where the backup header belongs) was an I/O error.
#[test]
fn gpt_entry_array_at_the_very_end_is_corrupt_not_an_io_error() {
    let dir = TempDir::new().unwrap();
    let seed = table_seeds(dir.path())
        .into_iter()
        .find(|s| s.name == "gpt-512")
        .unwrap();
    let mut disk = Patched::new(seed.bytes);
    let sectors = disk.original.len() as u64 / 512;
    // The primary header's 128 entries moved to the last 32 sectors, checksums resealed.
    let last_32 = sectors - 32;
    let array = disk.original[1024..1024 + 128 * 128].to_vec();
    disk.set(512 + 72, &last_32.to_le_bytes());
    disk.set(last_32 * 512, &array);
    gpt_reseal(&mut disk, 512, 512);
    match partition::read_layout(&mut Cursor::new(disk.now()), sectors * 512) {
        Err(LayoutError::Corrupt { reason, .. }) => assert!(
            reason.starts_with(
                "primary header: its partition entry array runs to the very end of the image"
            ),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

/// An MBR whose extended partition chains `count` EBRs, each with a
/// one-sector logical partition when `with_partitions`.
fn ebr_chain(count: u64, with_partitions: bool) -> Vec<u8> {
    let sectors = 2 + 2 * count;
    let mut disk = vec![0u8; (sectors * 512) as usize];
    let entry = |disk: &mut Vec<u8>, sector: u64, slot: u64, kind: u8, start: u64, len: u64| {
        let at = (sector * 512 + 446 + 16 * slot) as usize;
        disk[at + 4] = kind;
        disk[at + 8..at + 12].copy_from_slice(&(start as u32).to_le_bytes());
        disk[at + 12..at + 16].copy_from_slice(&(len as u32).to_le_bytes());
        let sig = (sector * 512 + 510) as usize;
        disk[sig..sig + 2].copy_from_slice(&[0x55, 0xaa]);
    };
    entry(&mut disk, 0, 0, 0x05, 1, sectors - 1);
    for k in 0..count {
        let ebr = 1 + 2 * k;
        if with_partitions {
            entry(&mut disk, ebr, 0, 0x83, 1, 1);
        }
        if k + 1 < count {
            entry(&mut disk, ebr, 1, 0x05, ebr + 2 - 1, 2);
        } else {
            let sig = (ebr * 512 + 510) as usize;
            disk[sig..sig + 2].copy_from_slice(&[0x55, 0xaa]);
        }
    }
    disk
}

#[test]
fn endless_chains_of_extended_boot_records_are_corrupt() {
    let read = |disk: &[u8]| partition::read_layout(&mut Cursor::new(disk), disk.len() as u64);
    let ok = read(&ebr_chain(100, true)).unwrap();
    assert_eq!(ok.partitions.len(), 100);
    assert_eq!(ok.partitions[99].number, 104);
    for (disk, expected) in [
        (ebr_chain(300, true), "more than 256 partitions"),
        (ebr_chain(600, false), "more than 512 extended boot records"),
    ] {
        let (result, largest) = common_alloc::largest_allocation(|| read(&disk));
        match result {
            Err(LayoutError::Corrupt { reason, .. }) => {
                assert!(reason.contains(expected), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(largest < 128 * 1024, "{largest}");
    }
}

/// Points the L2 entry of guest cluster `guest` of the qcow2 file at `to`.
fn point_l2_entry(image: &Path, guest: u64, to: impl FnOnce(&Qcow2Map) -> u64) {
    let bytes = std::fs::read(image).unwrap();
    let map = qcow2_map(&bytes);
    let cluster = 1u64 << map.cluster_bits;
    let l2 = be(&bytes, map.l1.0, 8) & L2_OFFSET_MASK;
    assert_ne!(l2, 0, "the overlay maps its first 512 MiB");
    let at = l2 + 8 * (guest / cluster);
    assert_ne!(
        be(&bytes, at, 8),
        0,
        "guest cluster {guest} is the overlay's own"
    );
    common_images::poke(image, at, &to(&map).to_be_bytes());
}

/// Where a case points an L2 entry, from the file's map.
type Target = dyn Fn(&Qcow2Map) -> u64;

/// The first `len` bytes of the disk as qemu reads it, or its error.
fn qemu_reads(image: &Path, len: usize) -> Result<Vec<u8>, String> {
    let out = image.with_extension("raw");
    let done = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .args([image, &out])
        .output()
        .unwrap_or_else(|e| common_images::spawn_error("qemu-img", e));
    if !done.status.success() {
        return Err(String::from_utf8_lossy(&done.stderr).trim().to_string());
    }
    let mut bytes = std::fs::read(&out).unwrap();
    bytes.truncate(len);
    Ok(bytes)
}

#[test]
fn l2_entries_past_the_end_or_at_metadata_read_no_other_file() {
    const COPIED: u64 = 1 << 63;
    const COMPRESSED: u64 = 1 << 62;
    const CLUSTER: usize = 65536;
    let dir = TempDir::new().unwrap();
    let raw = dir.path().join("backing.raw");
    // The other file: every byte 0xA5.
    std::fs::write(&raw, vec![0xa5; 4 * MIB as usize]).unwrap();
    let base = dir.path().join("base.qcow2");
    qemu_img_convert(&raw, &base, &[]);
    let clean = dir.path().join("clean.qcow2");
    overlay_on_base(&clean);
    run("qemu-io", &["-c", "write -P 0x11 0 64k", path_str(&clean)]);
    run("qemu-io", &["-c", "write -P 0x22 1M 64k", path_str(&clean)]);
    fn past_end(m: &Qcow2Map) -> u64 {
        m.len.next_multiple_of(65536) + 65536
    }
    // What the entry says, and whether containment refuses it (a cluster past the end).
    let cases: [(&str, &Target, bool); 7] = [
        ("past the end", &|m| past_end(m) | COPIED, true),
        ("far past the end", &|_| (1 << 50) | COPIED, true),
        // Offset 0 is "unallocated" in qcow2: the backing file's bytes are the disk's there.
        ("at offset 0", &|_| COPIED, false),
        ("at its own L1 table", &|m| m.l1.0 | COPIED, false),
        ("at its own L2 table", &|m| m.l2_tables[0] | COPIED, false),
        (
            "compressed, past the end",
            &|m| COMPRESSED | past_end(m),
            true,
        ),
        (
            "compressed, at the header",
            &|_| COMPRESSED | 7 << 54,
            false,
        ),
    ];
    for (what, entry, refused_by_containment) in cases {
        let image = dir.path().join("overlay.qcow2");
        std::fs::copy(&clean, &image).unwrap();
        point_l2_entry(&image, 0, entry);
        let own = std::fs::read(&image).unwrap();
        let qemu = qemu_reads(&image, CLUSTER);

        // The user's path: containment refuses a cluster past the end.
        let file = File::open(&image).unwrap();
        match (
            userspace::block_source(&image, file, ImageFormat::Qcow2, true),
            refused_by_containment,
        ) {
            (Err(e), true) => assert!(format!("{e:#}").contains("truncated"), "{what}: {e:#}"),
            (Ok(Ok(_)), false) => {}
            (Err(e), false) => panic!("{what}: {e:#}"),
            (Ok(Err(NeedsKernel(why))), _) => panic!("{what}: {why}"),
            (Ok(Ok(_)), true) => panic!("{what}: not refused"),
        }

        // imago itself, without containment's check, with and without the
        // backing file: an error, zeros, the overlay's own bytes, or what
        // qemu reads; the backing file's bytes only where qemu reads them.
        for chain in [&[image.clone(), base.clone()][..], &[image.clone()][..]] {
            let layers: Vec<Layer> = chain
                .iter()
                .map(|path| Layer {
                    path: path.clone(),
                    format: ImageFormat::Qcow2,
                })
                .collect();
            let with_backing = chain.len() == 2;
            let source = Qcow2Source::open(File::open(&image).unwrap(), &layers).unwrap();
            let mut buf = vec![0u8; CLUSTER];
            let read = source.read_at(&mut buf, 0);
            let zeros = buf.iter().all(|&b| b == 0);
            let from_own = (0..own.len().saturating_sub(CLUSTER))
                .step_by(512)
                .any(|o| own[o..o + CLUSTER] == buf[..]);
            let as_qemu = with_backing && qemu.as_deref().is_ok_and(|q| q == &buf[..]);
            eprintln!(
                "{what} (backing: {with_backing}): imago {}; qemu {}",
                match &read {
                    Err(e) => format!("fails: {e}"),
                    Ok(()) if as_qemu => "reads what qemu reads".into(),
                    Ok(()) if zeros => "reads zeros".into(),
                    Ok(()) if from_own => "reads the overlay's own bytes".into(),
                    Ok(()) => format!("reads {:?}...", &buf[..8]),
                },
                match &qemu {
                    Ok(bytes) if bytes.iter().all(|&b| b == 0xa5) =>
                        "reads the backing file".into(),
                    Ok(bytes) if bytes.iter().all(|&b| b == 0) => "reads zeros".into(),
                    Ok(_) => "reads other bytes".into(),
                    Err(e) => format!("fails: {e}"),
                }
            );
            if read.is_ok() {
                assert!(
                    zeros || from_own || as_qemu,
                    "{what}: read {:?}...",
                    &buf[..16]
                );
                assert!(
                    !buf.contains(&0xa5) || from_own || as_qemu,
                    "{what}: the backing file's bytes"
                );
            }
            // The cluster mapped at 1 MiB still reads as written.
            source.read_at(&mut buf, MIB).unwrap();
            assert!(buf.iter().all(|&b| b == 0x22), "{what}");
        }
    }
}

#[test]
fn crc32_is_ieee() {
    // The check value of CRC-32.
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
}
