//! Mutated small XFS (v5, v4) and btrfs images, read in user space: every
//! case must give an answer (data or an error), never a panic escaping the
//! reader boundary, never an allocation over [`ALLOC_CAP`] (this binary's
//! allocator aborts with the case's seed), never an endless walk.
//!
//! Bytes are changed only where a clean walk of the image read, so the
//! mutations hit metadata and data the reader actually parses.
//! `PREPARE_IMAGE_FUZZ_CASES` sets the number of cases per image (CI: the
//! default); by hand, e.g.
//! `PREPARE_IMAGE_FUZZ_CASES=20000 cargo test --release --test reader_fuzz -- --nocapture`.
//! A failing case is replayed with `PREPARE_IMAGE_FUZZ_SEED=N`.
//!
//! Needs root (the v5 image is populated through a mount), xfsprogs and
//! btrfs-progs.

mod common_fuzz;
mod common_images;
mod common_readers;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common_fuzz::{Recording, Rng, crc32c};
use common_images::MIB;
use common_readers::{Made, put, walk_all};
use prepare_image::access::image::block::{BlockSource, FileSource, Window};

/// The largest single allocation any case may make: far above what the
/// walk asks for (64 KiB reads, 1 MiB file cap, directories of 50 names).
const ALLOC_CAP: usize = 64 * MIB as usize;

thread_local! {
    /// The case this thread runs (`u64::MAX`: none), for the allocator's message.
    static CASE_SEED: Cell<u64> = const { Cell::new(u64::MAX) };
    /// Panics the readers raised on this thread (and the boundary caught),
    /// counted by a quiet hook so thousands of cases do not flood the output.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

struct Capped;

// SAFETY: forwards to `System`; only refuses (by aborting) requests over the cap.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > ALLOC_CAP {
        // No allocation here: format into a fixed buffer.
        let mut msg = [0u8; 160];
        let text = b"reader_fuzz: an allocation over the cap, case seed ";
        msg[..text.len()].copy_from_slice(text);
        let mut n = text.len();
        let seed = CASE_SEED.with(Cell::get);
        let digits = seed.to_string().len().min(20);
        let mut s = seed;
        for i in (0..digits).rev() {
            msg[n + i] = b'0' + (s % 10) as u8;
            s /= 10;
        }
        n += digits;
        msg[n] = b'\n';
        unsafe { libc::write(2, msg.as_ptr().cast(), n + 1) };
        std::process::abort();
    }
}

#[global_allocator]
static GLOBAL: Capped = Capped;

/// The clean image with some bytes changed; reads of exactly a range in
/// `resealed` get their btrfs checksum (crc32c of bytes 32.. in the first
/// four) computed again, so a mutation reaches the parsers behind the
/// checksum gate.
struct Mutated {
    inner: Window,
    patches: Vec<(u64, u8)>,
    resealed: Vec<(u64, usize)>,
}

impl BlockSource for Mutated {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)?;
        for &(at, byte) in &self.patches {
            if at >= offset && at - offset < buf.len() as u64 {
                buf[(at - offset) as usize] = byte;
            }
        }
        if buf.len() > 32 && self.resealed.contains(&(offset, buf.len())) {
            let sum = crc32c(&buf[32..]);
            buf[..4].copy_from_slice(&sum.to_le_bytes());
        }
        Ok(())
    }
}

/// A small root filesystem: what a walk should cover without taking long.
fn small_tree(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("tree");
    let mk = |p: &str, body: &[u8]| put(&root, p, body);
    mk("etc/cloud/cloud.cfg", b"datasource_list: [NoCloud]\n");
    mk("etc/cloud/cloud.cfg.d/90.cfg", b"users: [default]\n");
    mk("etc/hostname", b"guest\n");
    mk("usr/share/big", &b"0123456789abcdef".repeat(16 * 1024));
    for i in 0..50 {
        mk(
            &format!("var/many/name-{i:03}"),
            format!("{i}\n").as_bytes(),
        );
    }
    symlink("/etc/hostname", root.join("etc/abs")).unwrap();
    symlink("../etc/hostname", root.join("usr/rel")).unwrap();
    symlink("x/".repeat(100), root.join("etc/long")).unwrap();
    root
}

fn cases() -> u64 {
    std::env::var("PREPARE_IMAGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Walk budget per case: names, depth, bytes per file.
const NAMES: usize = 400;
const DEPTH: usize = 12;
const FILE_CAP: u64 = MIB;

#[derive(Debug, Default)]
struct Tally {
    cases: u64,
    loaded: u64,
    refused: u64,
    errors: u64,
    panics_caught: usize,
    slowest: Duration,
}

/// The btrfs superblock and tree blocks (16 KiB, mkfs.btrfs's default
/// node size) are what a checksum covers.
fn btrfs_checksummed(range: (u64, usize)) -> bool {
    range == (0x10000, 4096) || range.1 == 16 * 1024
}

fn fuzz(made: Made, salt: u64, reseal: bool, cases: u64) -> Tally {
    let work = tempfile::tempdir().unwrap();
    let source = small_tree(work.path());
    let fs_file = made.make(work.path(), &source);
    let base = Window::whole(Arc::new(
        FileSource::new(std::fs::File::open(&fs_file).unwrap()).unwrap(),
    ));
    let recording = Arc::new(Recording::new(Arc::new(base.clone())));
    let clean = made.load(Window::whole(recording.clone())).unwrap();
    let counts = walk_all(&*clean, NAMES, DEPTH, FILE_CAP, &mut |_, _| {});
    assert_eq!(counts.errors, 0, "{made:?}: the clean image reads");
    assert!(
        counts.files == 54 && counts.links == 3,
        "{made:?}: {counts:?}"
    );
    let ranges = recording.ranges();
    drop(clean);

    let only: Option<u64> = std::env::var("PREPARE_IMAGE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    let panics_before = PANICS.with(Cell::get);
    let mut tally = Tally::default();
    for case in 0..cases {
        let seed = salt.wrapping_mul(1_000_003).wrapping_add(case);
        if only.is_some_and(|s| s != seed) {
            continue;
        }
        CASE_SEED.with(|c| c.set(seed));
        if std::env::var_os("PREPARE_IMAGE_FUZZ_TRACE").is_some() {
            eprintln!("{made:?}: case seed {seed}");
        }
        let mut rng = Rng(seed | 1);
        let mut patches = Vec::new();
        let mut resealed = Vec::new();
        for _ in 0..1 + rng.below(16) {
            let (offset, len) = ranges[rng.below(ranges.len() as u64) as usize];
            if reseal && btrfs_checksummed((offset, len)) {
                resealed.push((offset, len));
            }
            let at = offset + rng.below(len as u64);
            let byte = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => rng.next() as u8,
                _ => {
                    let mut b = [0u8];
                    base.read_at(&mut b, at).unwrap();
                    b[0] ^ (1 << rng.below(8))
                }
            };
            patches.push((at, byte));
        }
        let mutated = Window::whole(Arc::new(Mutated {
            inner: base.clone(),
            patches,
            resealed,
        }));
        let started = Instant::now();
        tally.cases += 1;
        match made.load(mutated) {
            Ok(fs) => {
                tally.loaded += 1;
                let c = walk_all(&*fs, NAMES, DEPTH, FILE_CAP, &mut |_, _| {});
                tally.errors += c.errors;
            }
            Err(_) => tally.refused += 1,
        }
        tally.slowest = tally.slowest.max(started.elapsed());
    }
    tally.panics_caught = PANICS.with(Cell::get) - panics_before;
    CASE_SEED.with(|c| c.set(u64::MAX));
    eprintln!(
        "{made:?}{}: {tally:?}",
        if reseal { " (resealed)" } else { "" }
    );
    assert!(
        tally.slowest < Duration::from_secs(60),
        "{made:?}: a case took {:?}",
        tally.slowest
    );
    tally
}

fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CASE_SEED.with(Cell::get) == u64::MAX {
                default(info);
            } else {
                PANICS.with(|p| p.set(p.get() + 1));
            }
        }));
    });
}

#[test]
fn mutated_xfs_v5_images_give_answers() {
    quiet_panics();
    fuzz(Made::Xfs5, 1, false, cases());
}

#[test]
fn mutated_xfs_v4_images_give_answers() {
    quiet_panics();
    fuzz(Made::Xfs4, 2, false, cases());
}

#[test]
fn mutated_btrfs_images_give_answers() {
    quiet_panics();
    fuzz(Made::Btrfs, 3, false, cases());
}

#[test]
fn mutated_compressed_btrfs_images_give_answers() {
    quiet_panics();
    fuzz(Made::BtrfsZstd, 4, false, cases());
}

/// Past the checksum gate some mutated trees take seconds to walk (seen:
/// 11.7 s for one case in a debug build; zstd-compressed ones longer), so
/// fewer cases run here.
#[test]
fn mutated_btrfs_images_with_checksums_resealed_give_answers() {
    quiet_panics();
    fuzz(Made::Btrfs, 5, true, cases() / 10);
}

#[test]
fn crc32c_is_castagnoli() {
    // The check value of CRC-32C.
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
}
