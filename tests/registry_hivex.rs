//! The registry reader, writer and test builder judged by an independent
//! reader: hivex's tools (Debian `libhivex-bin`: hivexget; and
//! `libwin-hivex-perl`: hivexregedit). Hives made by tests/common_hive must
//! read back in hivex as written (root key first or not, every subkey list
//! kind), and the in-place DWORD writer must change exactly the written
//! values' lines in hivex's export of the whole hive.

mod common_hive;

use std::path::Path;
use std::process::Command;

use common_hive::{HiveBuilder, ListKind, Val};
use prepare_image::guest::cloudbase::registry::{DwordWrite, Hive, set_dwords};
use tempfile::TempDir;

const SERVICE: &str = "ControlSet001\\Services\\cloudbase-init";
const IMAGE_PATH: &str = "\"C:\\Program Files\\Cloudbase Solutions\\Cloudbase-Init\\Python\\Scripts\\cloudbase-init.exe\"";

fn system_hive() -> HiveBuilder {
    HiveBuilder::new()
        .set("Select", "Current", Val::Dword(1))
        .set(SERVICE, "Start", Val::Dword(3))
        .set(SERVICE, "DelayedAutostart", Val::Dword(1))
        .set(SERVICE, "ObjectName", Val::Sz(".\\cloudbase-init".into()))
        .set(SERVICE, "ImagePath", Val::ExpandSz(IMAGE_PATH.into()))
        .set(
            SERVICE,
            "DependOnService",
            Val::MultiSz(vec!["Winmgmt".into(), "Tcpip".into()]),
        )
        .set(SERVICE, "InCell", Val::DwordInCell(17))
        .set("ControlSet001\\Services\\cdrom", "Start", Val::Dword(4))
        .set("ControlSet001\\Services\\Tcpip", "Start", Val::Dword(2))
        .set("ControlSet001\\Services\\Winmgmt", "Start", Val::Dword(2))
        .set("ControlSet001\\Services\\Zeta", "Start", Val::Dword(2))
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} (apt-get install libhivex-bin libwin-hivex-perl): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn hivexget(hive: &Path, key: &str, value: &str) -> String {
    let key = format!("\\{key}");
    run("hivexget", &[hive.to_str().unwrap(), &key, value])
        .trim_end_matches('\n')
        .to_string()
}

fn export(hive: &Path) -> String {
    run("hivexregedit", &["--export", hive.to_str().unwrap(), "\\"])
}

fn save(dir: &TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn hivex_reads_the_builders_hives_as_written_in_every_layout() {
    let dir = TempDir::new().unwrap();
    for kind in [ListKind::Lh, ListKind::Lf, ListKind::Li, ListKind::Ri] {
        for root_last in [false, true] {
            let mut b = system_hive().list_kind(kind);
            b.root_last = root_last;
            let path = save(&dir, "SYSTEM", &b.build());
            let what = format!("{kind:?}, root last: {root_last}");
            assert_eq!(hivexget(&path, SERVICE, "Start"), "3", "{what}");
            assert_eq!(hivexget(&path, SERVICE, "InCell"), "17", "{what}");
            assert_eq!(hivexget(&path, "Select", "Current"), "1", "{what}");
            assert_eq!(hivexget(&path, SERVICE, "ObjectName"), ".\\cloudbase-init");
            assert_eq!(hivexget(&path, SERVICE, "ImagePath"), IMAGE_PATH);
            assert_eq!(
                hivexget(&path, SERVICE, "DependOnService"),
                "Winmgmt\nTcpip"
            );
            assert_eq!(
                hivexget(&path, "controlset001\\services\\CDROM", "Start"),
                "4",
                "{what}"
            );
            // Every service key is reached through the (split) subkey list.
            for name in ["Tcpip", "Winmgmt", "Zeta"] {
                let key = format!("ControlSet001\\Services\\{name}");
                assert_eq!(hivexget(&path, &key, "Start"), "2", "{what}: {name}");
            }
        }
    }
}

#[test]
fn our_reader_agrees_with_hivex_on_a_non_first_root() {
    let dir = TempDir::new().unwrap();
    let bytes = system_hive().root_last().build();
    let root_cell = u32::from_le_bytes(bytes[36..40].try_into().unwrap());
    assert!(root_cell > 32, "the root key is not the first cell");
    let path = save(&dir, "SYSTEM", &bytes);
    let hive = Hive::parse(&bytes).unwrap();
    let key = hive.open(SERVICE).unwrap().unwrap();
    assert_eq!(
        key.dword("Start").unwrap().unwrap().to_string(),
        hivexget(&path, SERVICE, "Start")
    );
    assert_eq!(
        key.string("ObjectName").unwrap().unwrap(),
        hivexget(&path, SERVICE, "ObjectName")
    );
}

#[test]
fn the_dword_writer_changes_only_the_written_values_in_hivexs_export() {
    let dir = TempDir::new().unwrap();
    for root_last in [false, true] {
        let mut b = system_hive();
        b.root_last = root_last;
        let before = b.build();
        let before_path = save(&dir, "before", &before);
        let mut after = before.clone();
        let written = set_dwords(
            &mut after,
            &[
                DwordWrite {
                    key: SERVICE.into(),
                    value: "Start".into(),
                    to: 2,
                },
                DwordWrite {
                    key: "ControlSet001\\Services\\cdrom".into(),
                    value: "Start".into(),
                    to: 1,
                },
                DwordWrite {
                    key: SERVICE.into(),
                    value: "InCell".into(),
                    to: 18,
                },
            ],
            0x01DA_0000_0000_0000,
        )
        .unwrap();
        assert_eq!(written.previous, [3, 4, 17]);
        let after_path = save(&dir, "after", &after);
        // hivex checks the base block checksum when it opens a hive.
        assert_eq!(hivexget(&after_path, SERVICE, "Start"), "2");
        let (old, new) = (export(&before_path), export(&after_path));
        let old_lines: Vec<&str> = old.lines().collect();
        let new_lines: Vec<&str> = new.lines().collect();
        assert_eq!(old_lines.len(), new_lines.len());
        let diff: Vec<(&str, &str)> = old_lines
            .iter()
            .zip(&new_lines)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (*a, *b))
            .collect();
        assert_eq!(
            diff,
            [
                ("\"Start\"=dword:00000004", "\"Start\"=dword:00000001"),
                ("\"InCell\"=dword:00000011", "\"InCell\"=dword:00000012"),
                ("\"Start\"=dword:00000003", "\"Start\"=dword:00000002"),
            ],
            "root last: {root_last}"
        );
        // The bytes: three data fields plus the base block's sequence
        // numbers, timestamp and checksum; nothing else.
        let differing = (0..before.len()).filter(|&i| before[i] != after[i]);
        assert!(
            differing
                .clone()
                .all(|i| written.changed.iter().any(|r| r.contains(&i)))
        );
        assert_eq!(written.changed.len(), 5, "{:?}", written.changed);
    }
}

/// hivex as the writer: keys and values hivex adds (new cells, new lists,
/// its own base block update) are read by our reader, and our writer's
/// edit of a value hivex made reads back in hivex.
#[test]
fn our_reader_and_writer_work_on_a_hive_hivex_wrote() {
    let dir = TempDir::new().unwrap();
    let built = system_hive().root_last().build();
    let path = save(&dir, "SYSTEM", &built);
    let reg = dir.path().join("merge.reg");
    std::fs::write(
        &reg,
        "[\\ControlSet001\\Services\\added]\n\
         \"Start\"=dword:00000004\n\
         \"ObjectName\"=\"LocalSystem\"\n\
         \"Filters\"=hex(7):61,00,00,00,62,00,00,00,00,00\n\
         \n\
         [\\Cloudbase Solutions]\n\n\
         [\\Cloudbase Solutions\\Cloudbase-Init]\n\n\
         [\\Cloudbase Solutions\\Cloudbase-Init\\i-1]\n\n\
         [\\Cloudbase Solutions\\Cloudbase-Init\\i-1\\Plugins]\n\
         \"LocalScriptsPlugin\"=dword:00000001\n",
    )
    .unwrap();
    run(
        "hivexregedit",
        &["--merge", path.to_str().unwrap(), reg.to_str().unwrap()],
    );
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() > built.len(),
        "hivex added a hive bin: more than one bin is read"
    );
    {
        let hive = Hive::parse(&bytes).unwrap();
        let added = hive
            .open("controlset001\\services\\ADDED")
            .unwrap()
            .unwrap();
        assert_eq!(added.dword("Start").unwrap(), Some(4));
        assert_eq!(
            added.string("ObjectName").unwrap().as_deref(),
            Some("LocalSystem")
        );
        assert_eq!(added.strings("Filters").unwrap().unwrap(), ["a", "b"]);
        // What was there before the merge is still read.
        let service = hive.open(SERVICE).unwrap().unwrap();
        assert_eq!(service.dword("Start").unwrap(), Some(3));
    }
    let plugins = "Cloudbase Solutions\\Cloudbase-Init\\i-1\\Plugins";
    set_dwords(
        &mut bytes,
        &[
            DwordWrite {
                key: plugins.into(),
                value: "LocalScriptsPlugin".into(),
                to: 2,
            },
            DwordWrite {
                key: "ControlSet001\\Services\\added".into(),
                value: "Start".into(),
                to: 2,
            },
        ],
        0x01DA_0000_0000_0000,
    )
    .unwrap();
    let after = save(&dir, "after", &bytes);
    assert_eq!(hivexget(&after, plugins, "LocalScriptsPlugin"), "2");
    assert_eq!(
        hivexget(&after, "ControlSet001\\Services\\added", "Start"),
        "2"
    );
}
