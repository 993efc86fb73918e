use super::common_hive::{HiveBuilder, ListKind, Val, fix_checksum, hive};
use super::*;
use proptest::prelude::*;

const SERVICE: &str = "ControlSet001\\Services\\cloudbase-init";

fn sample() -> HiveBuilder {
    HiveBuilder::new()
        .set("Select", "Current", Val::Dword(1))
        .set(SERVICE, "Start", Val::Dword(2))
        .set(SERVICE, "ObjectName", Val::Sz("LocalSystem".into()))
        .set(SERVICE, "ImagePath", Val::ExpandSz("\"C:\\Program Files\\Cloudbase Solutions\\Cloudbase-Init\\Python\\Scripts\\cloudbase-init.exe\"".into()))
        .set(SERVICE, "DependOnService", Val::MultiSz(vec!["Winmgmt".into(), "Tcpip".into()]))
        .set(SERVICE, "Stored", Val::DwordInCell(5))
        .set(SERVICE, "Big", Val::Qword(1 << 40))
        .set(SERVICE, "Blob", Val::Binary(vec![1, 2, 3]))
        .set("ControlSet001\\Services\\cdrom", "Start", Val::Dword(1))
}

#[test]
fn values_of_every_type_read_back_in_every_layout() {
    for kind in [ListKind::Lf, ListKind::Lh, ListKind::Li, ListKind::Ri] {
        for root_last in [false, true] {
            let mut b = sample().list_kind(kind);
            b.root_last = root_last;
            let bytes = b.build();
            let hive = Hive::parse(&bytes).unwrap();
            let key = hive.open(SERVICE).unwrap().unwrap();
            let what = format!("{kind:?} root_last={root_last}");
            assert_eq!(key.dword("Start").unwrap(), Some(2), "{what}");
            assert_eq!(key.dword("stored").unwrap(), Some(5), "{what}");
            assert_eq!(
                key.string("objectname").unwrap().as_deref(),
                Some("LocalSystem")
            );
            assert!(
                key.string("ImagePath")
                    .unwrap()
                    .unwrap()
                    .ends_with("cloudbase-init.exe\"")
            );
            assert_eq!(
                key.strings("DependOnService").unwrap().unwrap(),
                ["Winmgmt", "Tcpip"]
            );
            let big = key.value("Big").unwrap().unwrap();
            assert_eq!(big.data().unwrap(), Data::Qword(1 << 40));
            assert_eq!(
                key.value("Blob").unwrap().unwrap().data().unwrap(),
                Data::Other {
                    kind: REG_BINARY,
                    bytes: vec![1, 2, 3]
                }
            );
            assert_eq!(key.dword("Missing").unwrap(), None);
            assert_eq!(
                key.dword("ObjectName").unwrap(),
                None,
                "a string is not a DWORD"
            );
            assert!(
                hive.open("ControlSet001\\Services\\nothing")
                    .unwrap()
                    .is_none()
            );
            assert_eq!(
                hive.open("CONTROLSET001\\services\\CDROM")
                    .unwrap()
                    .unwrap()
                    .dword("START")
                    .unwrap(),
                Some(1),
                "{what}"
            );
            let names: Vec<String> = hive
                .open("ControlSet001\\Services")
                .unwrap()
                .unwrap()
                .subkeys()
                .unwrap()
                .iter()
                .map(Key::name)
                .collect();
            assert_eq!(names, ["cdrom", "cloudbase-init"], "{what}");
        }
    }
}

#[test]
fn utf16_names_are_read_and_compared_case_insensitively() {
    let mut b = HiveBuilder::new().set("Ünïcode\\Ключ", "Wert", Val::Dword(9));
    b.root.key_mut("Ünïcode").utf16_name = true;
    let bytes = b.build();
    let hive = Hive::parse(&bytes).unwrap();
    let key = hive.open("ÜNÏCODE\\ключ").unwrap().unwrap();
    assert_eq!(key.name(), "Ключ");
    assert_eq!(key.dword("wert").unwrap(), Some(9));
}

#[test]
fn names_compare_one_character_to_one_character() {
    assert!(names_equal("Cloudbase-Init", "CLOUDBASE-init"));
    assert!(names_equal("Ключ", "КЛЮЧ"));
    assert!(!names_equal("Straße", "STRASSE"));
    assert!(!names_equal("Start", "Star"));
}

#[test]
fn a_dirty_hive_is_refused_with_what_to_do() {
    let mut b = sample();
    b.sequence = (8, 7);
    let bytes = b.build();
    let e = Hive::parse(&bytes).err().unwrap();
    assert_eq!(
        e,
        HiveError::Dirty {
            primary: 8,
            secondary: 7
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains(".LOG1") && msg.contains("shut down cleanly"),
        "{msg}"
    );
}

#[test]
fn a_wrong_checksum_is_refused() {
    let mut bytes = sample().build();
    bytes[100] ^= 1;
    let e = Hive::parse(&bytes).err().unwrap();
    assert!(matches!(e, HiveError::BadChecksum { .. }), "{e}");
    assert!(e.to_string().contains("capture the image again"));
    fix_checksum(&mut bytes);
    Hive::parse(&bytes).unwrap();
}

#[test]
fn the_checksum_adjusts_zero_and_all_ones() {
    let mut base = vec![0u8; 512];
    assert_eq!(base_block_checksum(&base), 1);
    base[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(base_block_checksum(&base), 0xFFFF_FFFE);
    base[4..8].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(base_block_checksum(&base), 0xFFFF_FFFC);
}

#[test]
fn not_a_hive_is_said_plainly() {
    for bytes in [&b""[..], b"regf", &[0u8; 8192][..]] {
        let e = Hive::parse(bytes).err().unwrap();
        assert!(matches!(e, HiveError::NotAHive(_)), "{e}");
    }
}

#[test]
fn big_data_is_refused_politely() {
    // A value claiming 20000 bytes whose data cell is a `db` record.
    let mut db = b"db".to_vec();
    db.extend(2u16.to_le_bytes());
    db.extend(0u32.to_le_bytes());
    db.resize(20000, 0);
    let bytes = HiveBuilder::new()
        .set("K", "Large", Val::Raw(REG_BINARY, db))
        .build();
    let hive = Hive::parse(&bytes).unwrap();
    let value = hive
        .open("K")
        .unwrap()
        .unwrap()
        .value("Large")
        .unwrap()
        .unwrap();
    let e = value.data().unwrap_err();
    assert_eq!(
        e,
        HiveError::BigData {
            value: "Large".into()
        }
    );
    assert!(e.to_string().contains("Large"));
}

fn write(key: &str, value: &str, to: u32) -> DwordWrite {
    DwordWrite {
        key: key.into(),
        value: value.into(),
        to,
    }
}

const NOW: u64 = 133_900_000_000_000_000;

#[test]
fn the_writer_changes_the_four_data_bytes_and_the_base_block_only() {
    for root_last in [false, true] {
        let mut b = sample();
        b.root_last = root_last;
        let before = b.build();
        let mut after = before.clone();
        let written = set_dwords(
            &mut after,
            &[
                write(SERVICE, "Start", 4),
                write("ControlSet001\\Services\\cdrom", "start", 1),
            ],
            NOW,
        )
        .unwrap();
        assert_eq!(written.previous, [2, 1]);
        // Start (inline): the vk's data-offset field; cdrom already 1: untouched.
        let hive = Hive::parse(&after).unwrap();
        let vk = hive
            .open(SERVICE)
            .unwrap()
            .unwrap()
            .value("Start")
            .unwrap()
            .unwrap();
        let data_at = BASE_BLOCK_LEN + vk.cell() as usize + 4 + VK_DATA_OFFSET;
        assert_eq!(written.changed, [4..20, 508..512, data_at..data_at + 4]);
        let differing: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert!(
            differing
                .iter()
                .all(|i| written.changed.iter().any(|r| r.contains(i)))
        );
        assert_eq!(&after[data_at..data_at + 4], &4u32.to_le_bytes());
        let header = hive.header();
        assert_eq!((header.primary_sequence, header.secondary_sequence), (8, 8));
        assert_eq!(header.last_written, NOW);
        assert_eq!(
            hive.open(SERVICE).unwrap().unwrap().dword("Start").unwrap(),
            Some(4)
        );
    }
}

#[test]
fn a_dword_in_a_data_cell_is_written_in_that_cell() {
    let mut bytes = sample().build();
    let written = set_dwords(&mut bytes, &[write(SERVICE, "Stored", 2)], NOW).unwrap();
    let hive = Hive::parse(&bytes).unwrap();
    let value = hive
        .open(SERVICE)
        .unwrap()
        .unwrap()
        .value("Stored")
        .unwrap()
        .unwrap();
    assert_eq!(value.data().unwrap(), Data::Dword(2));
    let range = value.file_range().unwrap();
    assert_eq!(written.changed.last(), Some(&range));
}

#[test]
fn an_unneeded_write_changes_nothing() {
    let before = sample().build();
    let mut after = before.clone();
    let written = set_dwords(&mut after, &[write(SERVICE, "Start", 2)], NOW).unwrap();
    assert!(written.changed.is_empty());
    assert_eq!(before, after);
}

#[test]
fn refused_writes_leave_the_hive_unchanged() {
    let before = sample().build();
    for (w, why) in [
        (write(SERVICE, "ObjectName", 2), "not a 4-byte REG_DWORD"),
        (write(SERVICE, "Big", 2), "not a 4-byte REG_DWORD"),
        (write(SERVICE, "Nothing", 2), "only existing values"),
        (
            write("ControlSet001\\Services\\x", "Start", 2),
            "not in the hive",
        ),
    ] {
        let mut after = before.clone();
        // A good edit first: the refusal must undo nothing because nothing was done.
        let e = set_dwords(&mut after, &[write(SERVICE, "Start", 4), w], NOW).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
        assert_eq!(before, after);
    }
    let mut dirty = sample();
    dirty.sequence = (3, 2);
    let before = dirty.build();
    let mut after = before.clone();
    let e = set_dwords(&mut after, &[write(SERVICE, "Start", 4)], NOW).unwrap_err();
    assert!(matches!(e, HiveError::Dirty { .. }));
    assert_eq!(before, after);
}

#[test]
fn contradicting_writes_are_undone() {
    let before = sample().build();
    let mut after = before.clone();
    let e = set_dwords(
        &mut after,
        &[write(SERVICE, "Start", 4), write(SERVICE, "Start", 3)],
        NOW,
    )
    .unwrap_err();
    assert!(e.to_string().contains("left unchanged"), "{e}");
    assert_eq!(before, after);
}

#[test]
fn corrupt_offsets_are_errors() {
    let good = hive(|b| b.set("A\\B", "V", Val::Dword(1)));
    let root = u32::from_le_bytes(good[36..40].try_into().unwrap());
    let patch = |at: usize, value: u32| {
        let mut bytes = good.clone();
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        fix_checksum(&mut bytes);
        bytes
    };
    for (bytes, what) in [
        (patch(36, 0x10_0000), "root outside"),
        (patch(36, 3), "root unaligned"),
        (patch(36, 0), "root in the bin header"),
        (patch(40, 0x10_0000), "bins larger than the file"),
        (patch(40, 100), "bins not a multiple of 4096"),
        (
            patch(BASE_BLOCK_LEN + root as usize + 4 + 20, 0x7FFF_FFFF),
            "huge subkey count",
        ),
        (patch(BASE_BLOCK_LEN + 4, 4096), "hbin offset"),
    ] {
        match Hive::parse(&bytes) {
            Err(e) => assert!(!e.to_string().is_empty(), "{what}"),
            Ok(hive) => {
                let r = hive.open("A\\B");
                assert!(r.is_err(), "{what}: {:?}", r.map(|k| k.is_some()));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Mutated hives: every read and the writer answer (value or error);
    /// none panics. (Allocation size is measured in tests/registry_fuzz.rs.)
    #[test]
    fn mutated_hives_never_panic(
        seed in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..24),
        fix in any::<bool>(),
    ) {
        let mut bytes = seeds()[seed].clone();
        // Mutations land in the bins (where the structure is) and the base block.
        for (index, byte) in flips {
            let at = index.index(bytes.len());
            bytes[at] = byte;
        }
        if fix {
            fix_checksum(&mut bytes);
        }
        exercise(&bytes);
        let mut copy = bytes.clone();
        let _ = set_dwords(&mut copy, &[write(SERVICE, "Start", 2), write("Select", "Current", 7)], NOW);
    }
}

/// The proptest case count: `PREPARE_IMAGE_FUZZ_CASES` for long runs.
fn fuzz_cases() -> u32 {
    std::env::var("PREPARE_IMAGE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512)
}

fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        vec![
            sample().build(),
            sample().list_kind(ListKind::Ri).root_last().build(),
            sample().list_kind(ListKind::Lf).build(),
            sample().list_kind(ListKind::Li).root_last().build(),
        ]
    })
}

/// Reads everything reachable (bounded depth), ignoring errors.
fn exercise(bytes: &[u8]) {
    let Ok(hive) = Hive::parse(bytes) else { return };
    let _ = hive.header();
    let Ok(root) = hive.root() else { return };
    let mut level = vec![root];
    for _depth in 0..8 {
        let mut next = Vec::new();
        for key in level {
            let _ = key.name();
            if let Ok(values) = key.values() {
                for v in values {
                    let _ = (v.name(), v.kind(), v.data());
                }
            }
            let _ = key.dword("Start");
            if let Ok(subs) = key.subkeys() {
                next.extend(subs.into_iter().take(64));
            }
        }
        level = next;
    }
}
