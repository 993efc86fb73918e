//! Mutated registry hives: the reader, the doctor's registry checks and the
//! DWORD writer answer (a value or an error), never panic, and never
//! allocate more than a small multiple of the hive's own size. Mutations
//! land on the structure (offsets, counts, sizes, signatures) as often as
//! anywhere else. `PREPARE_IMAGE_FUZZ_CASES=N` runs more cases.

mod common_alloc;
mod common_hive;

use std::sync::OnceLock;

use common_hive::{HiveBuilder, ListKind, Val, fix_checksum};
use prepare_image::doctor::Texts;
use prepare_image::guest::cloudbase::doctor::{registry, texts};
use prepare_image::guest::cloudbase::registry::{DwordWrite, Hive, set_dwords};
use proptest::prelude::*;

const SERVICE: &str = "ControlSet001\\Services\\cloudbase-init";
const PLUGINS: &str = "Cloudbase Solutions\\Cloudbase-Init\\i-1\\Plugins";

/// Hives in every layout the builder makes, and where their structure is:
/// every 4-byte-aligned offset in the bins (cell sizes, offsets, counts).
fn seeds() -> &'static Vec<Vec<u8>> {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let system = HiveBuilder::new()
            .set("Select", "Current", Val::Dword(1))
            .set(SERVICE, "Start", Val::Dword(3))
            .set(SERVICE, "ObjectName", Val::Sz(".\\cloudbase-init".into()))
            .set(SERVICE, "ImagePath", Val::ExpandSz("C:\\x.exe".into()))
            .set("ControlSet001\\Services\\cdrom", "Start", Val::Dword(4))
            .set(
                "ControlSet001\\Control\\Class\\{4d36e965-e325-11ce-bfc1-08002be10318}",
                "UpperFilters",
                Val::MultiSz(vec!["a".into(), "cdrom".into()]),
            )
            .set(
                "ControlSet001\\Enum\\SCSI\\CdRom\\1",
                "ClassGUID",
                Val::Sz("{4d36e965-e325-11ce-bfc1-08002be10318}".into()),
            )
            .set(
                "ControlSet001\\Enum\\SCSI\\CdRom\\1",
                "ConfigFlags",
                Val::DwordInCell(1),
            )
            .set(PLUGINS, "LocalScriptsPlugin", Val::Dword(1))
            .set(
                "Policies\\Microsoft\\Windows\\RemovableStorageDevices",
                "Deny_All",
                Val::Dword(1),
            );
        [ListKind::Lh, ListKind::Lf, ListKind::Li, ListKind::Ri]
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let mut b = system.clone().list_kind(kind);
                b.root_last = i % 2 == 1;
                b.build()
            })
            .collect()
    })
}

fn windows_texts() -> &'static Texts {
    static TEXTS: OnceLock<Texts> = OnceLock::new();
    TEXTS.get_or_init(texts)
}

/// The largest single allocation `f` makes.
fn largest_allocation(f: impl FnOnce()) -> usize {
    // The texts are parsed once, outside the measure: their size is the
    // findings file's, not the input's.
    windows_texts();
    common_alloc::largest_allocation(f).1
}

/// Reads, checks and writes `bytes` (changed in place by the writer).
fn run_everything(bytes: &mut [u8]) {
    if let Ok(hive) = Hive::parse(bytes) {
        let report = registry::check(&hive, &hive, windows_texts());
        let _ = report.findings.len();
    }
    let _ = set_dwords(
        bytes,
        &[
            DwordWrite {
                key: SERVICE.into(),
                value: "Start".into(),
                to: 2,
            },
            DwordWrite {
                key: PLUGINS.into(),
                value: "LocalScriptsPlugin".into(),
                to: 2,
            },
        ],
        1,
    );
}

/// What an allocation may be, proportional to the input: the writer keeps a
/// copy of the 4096-byte base block; the reader makes at most one 32-byte
/// key or value handle per 4-byte list entry (the fuzz found a list of 1500
/// entries all naming the same key: 48 KiB from an 8 KiB hive), and no
/// list longer than the list cell. The doctor's texts are parsed once,
/// outside the measurement.
fn allocation_cap(len: usize) -> usize {
    8 * len + 4096
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PREPARE_IMAGE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_hives_answer_without_panic_or_big_allocation(
        seed in 0usize..4,
        edits in proptest::collection::vec(
            (any::<prop::sample::Index>(), 0u8..4, any::<u32>()), 1..12),
        fix in prop::bool::weighted(0.8),
    ) {
        let mut bytes = seeds()[seed].clone();
        for (index, how, word) in edits {
            // Aligned dwords in the bins are where offsets, sizes and counts live.
            let at = 4096 + (index.index((bytes.len() - 4096) / 4) * 4);
            let new = match how {
                0 => word,
                1 => word & 0xFFFF,                  // a plausible offset
                2 => u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) ^ (1 << (word % 32)),
                _ => 0xFFFF_FFFF - (word & 0xFF),    // negative sizes, NONE
            };
            bytes[at..at + 4].copy_from_slice(&new.to_le_bytes());
        }
        if fix {
            fix_checksum(&mut bytes);
        }
        let len = bytes.len();
        let largest = largest_allocation(|| run_everything(&mut bytes));
        prop_assert!(largest <= allocation_cap(len), "allocated {largest} bytes for a {len}-byte hive");
    }

    #[test]
    fn arbitrary_base_blocks_answer(
        header in proptest::collection::vec(any::<u8>(), 512),
        seed in 0usize..4,
    ) {
        let mut bytes = seeds()[seed].clone();
        bytes[..512].copy_from_slice(&header);
        if header[0] % 2 == 0 {
            bytes[..4].copy_from_slice(b"regf");
            fix_checksum(&mut bytes);
        }
        let len = bytes.len();
        let largest = largest_allocation(|| run_everything(&mut bytes));
        prop_assert!(largest <= allocation_cap(len));
    }
}

#[test]
fn the_seeds_are_read_and_fixed() {
    for seed in seeds() {
        let hive = Hive::parse(seed).unwrap();
        let report = registry::check(&hive, &hive, &texts());
        // Service Start, cdrom Start and LocalScriptsPlugin: three fixes.
        assert_eq!(report.fixes.len(), 3, "{:#?}", report.fixes);
        let mut bytes = seed.clone();
        let largest = largest_allocation(|| run_everything(&mut bytes));
        eprintln!(
            "{}-byte hive: largest single allocation {largest} bytes",
            seed.len()
        );
        assert!(largest <= allocation_cap(seed.len()));
    }
}
