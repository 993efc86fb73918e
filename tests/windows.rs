//! Windows images end to end: real NTFS volumes made by mkntfs, filled
//! through ntfs-3g, put on MBR and GPT disks by sfdisk, wrapped by qemu-img;
//! read back by our user-space reader (against ntfs-3g, byte for byte) and
//! judged by `prepare-image doctor`. Unfinished volumes (dirty, hibernated,
//! unclean log) are made by writing the bytes Windows would, and checked
//! with ntfs-3g's own ntfsinfo.

use std::fs;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

mod common_hive;
mod common_images;
mod judge;

use assert_cmd::Command;
use common_hive::{
    HiveBuilder, Val, well_prepared_software as good_software, well_prepared_system as good_system,
};
use prepare_image::access::fs::ntfs::NtfsVolume;
use prepare_image::access::image::block::{FileSource, Window};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// Where the partition starts on every test disk (sector 2048).
const PART_OFFSET: u64 = MIB;
const PART_SIZE: u64 = 32 * MIB;

fn run_ok(cmd: &mut Process) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ntfs-3g mount made by a test; unmounted and waited for on drop, so
/// the volume file holds everything ntfs-3g wrote.
struct Ntfs3g {
    mountpoint: PathBuf,
    child: Child,
}

impl Ntfs3g {
    fn mount(volume: &Path, mountpoint: &Path, options: &str) -> Ntfs3g {
        fs::create_dir_all(mountpoint).unwrap();
        let child = Process::new("ntfs-3g")
            .arg("-o")
            .arg(format!("no_detach,{options}"))
            .arg(volume)
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut mount = Ntfs3g {
            mountpoint: mountpoint.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mount.is_mounted() {
            assert!(
                mount.child.try_wait().unwrap().is_none(),
                "ntfs-3g exited without mounting {}",
                volume.display()
            );
            assert!(Instant::now() < deadline, "ntfs-3g did not mount");
            std::thread::sleep(Duration::from_millis(10));
        }
        mount
    }

    fn is_mounted(&self) -> bool {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let me = self.mountpoint.to_string_lossy().into_owned();
        info.lines()
            .any(|l| l.split(' ').nth(4) == Some(me.as_str()))
    }
}

impl Drop for Ntfs3g {
    fn drop(&mut self) {
        // Another test's fork may hold a file of this mount for a moment
        // (between fork and exec): retry a busy unmount.
        for _ in 0..100 {
            let unmounted = Process::new("umount")
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if unmounted || !self.is_mounted() {
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Never wait for a process that cannot end: stop it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 32 MiB NTFS volume (as mkntfs makes it for a partition at sector
/// 2048) holding `files`, written through ntfs-3g.
fn ntfs_volume(dir: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let volume = dir.join("volume.ntfs");
    fs::File::create(&volume)
        .unwrap()
        .set_len(PART_SIZE)
        .unwrap();
    run_ok(
        Process::new("mkntfs")
            .args(["-F", "-Q", "-q", "-p", "2048", "-H", "255", "-S", "63"])
            .arg(&volume),
    );
    let mnt = dir.join("fill");
    {
        let _mount = Ntfs3g::mount(&volume, &mnt, "rw");
        for (path, bytes) in files {
            let target = mnt.join(path);
            fs::create_dir_all(target.parent().unwrap()).unwrap();
            fs::write(target, bytes).unwrap();
        }
    }
    volume
}

/// A disk image with `volume` as its one partition at sector 2048, under
/// an MBR (`dos`) or GPT partition table made by sfdisk.
fn disk(dir: &Path, volume: &Path, label: &str) -> PathBuf {
    let image = dir.join(format!("windows-{label}.img"));
    fs::File::create(&image)
        .unwrap()
        .set_len(PART_OFFSET + PART_SIZE + MIB)
        .unwrap();
    let kind = if label == "gpt" {
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
    } else {
        "7"
    };
    let script = format!(
        "label: {label}\nstart=2048, size={}, type={kind}\n",
        PART_SIZE / 512
    );
    let mut sfdisk = Process::new("sfdisk")
        .arg("-q")
        .arg(&image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let bytes = fs::read(volume).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(&bytes, PART_OFFSET)
        .unwrap();
    image
}

const SERVICE: &str = common_hive::CLOUDBASE_SERVICE;
const CDROM: &str = "ControlSet001\\Services\\cdrom";
const PLUGINS: &str = common_hive::CLOUDBASE_PLUGINS;

/// The files of a minimal Windows system volume with these hives; `drivers`
/// adds the virtio-win storage and network drivers.
fn windows_with(
    system: &HiveBuilder,
    software: &HiveBuilder,
    drivers: bool,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut files = vec![
        ("Windows/System32/config/SYSTEM", system.build()),
        ("Windows/System32/config/SOFTWARE", software.build()),
        ("Windows/System32/drivers/disk.sys", b"MZ".to_vec()),
    ];
    // The installer's conf files and Tencent's local script: doctor finds
    // a missing conf (tested on its own below).
    files.push((CONF, INSTALLER_CONF.to_vec()));
    files.push((UNATTEND, INSTALLER_UNATTEND.to_vec()));
    files.push((LOCAL_SCRIPT, b"# run by LocalScriptsPlugin".to_vec()));
    if drivers {
        files.push(("Windows/System32/drivers/viostor.sys", b"MZ".to_vec()));
        files.push(("Windows/System32/drivers/netkvm.sys", b"MZ".to_vec()));
    }
    files
}

fn windows_files(drivers: bool) -> Vec<(&'static str, Vec<u8>)> {
    windows_with(&good_system(), &good_software(), drivers)
}

/// Runs `prepare-image ARGS IMAGE`, expects the exit code, returns (stdout, stderr).
fn prepare_image(args: &[&str], image: &Path, code: i32) -> (String, String) {
    let assert = Command::cargo_bin("prepare-image")
        .unwrap()
        .args(args)
        .arg(image)
        .assert()
        .code(code);
    let output = assert.get_output();
    (
        String::from_utf8(output.stdout.clone()).unwrap(),
        String::from_utf8(output.stderr.clone()).unwrap(),
    )
}

fn doctor_json(image: &Path, code: i32) -> Value {
    let (out, _) = prepare_image(&["doctor", "--format", "json"], image, code);
    serde_json::from_str(&out).unwrap()
}

fn ids(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Absolute byte offset, inside the volume file, of the first byte of a
/// system file's attribute value (as the ntfs crate locates it).
/// With it, the offset of that file's record, for the copy in `$MFTMirr`.
fn attribute_offset(volume: &Path, record: u64, ty: ntfs::NtfsAttributeType) -> (u64, u64) {
    let mut fs = fs::File::open(volume).unwrap();
    let ntfs = ntfs::Ntfs::new(&mut fs).unwrap();
    let file = ntfs.file(&mut fs, record).unwrap();
    let mut attributes = file.attributes();
    while let Some(item) = attributes.next(&mut fs) {
        let item = item.unwrap();
        let attribute = item.to_attribute().unwrap();
        if attribute.ty().unwrap() == ty {
            let value = attribute.value(&mut fs).unwrap();
            let mut at = value.data_position().value().unwrap().get();
            if attribute.is_resident() {
                // The crate gives a resident attribute's header; its value
                // starts where the header's value offset (at 0x14) says.
                let mut offset = [0u8; 2];
                fs::File::open(volume)
                    .unwrap()
                    .read_exact_at(&mut offset, at + 0x14)
                    .unwrap();
                at += u64::from(u16::from_le_bytes(offset));
            }
            return (at, file.position().value().unwrap().get());
        }
    }
    panic!("record {record} has no {ty:?}");
}

/// Sets `$Volume`'s dirty flag as Windows does (bit 0 of the flags in
/// `$VOLUME_INFORMATION`, 10 bytes into its value), in `$MFT` and in its
/// mirror `$MFTMirr` (which holds records 0-3).
fn mark_dirty(volume: &Path) {
    let (value, record) = attribute_offset(volume, 3, ntfs::NtfsAttributeType::VolumeInformation);
    let (mirror, _) = attribute_offset(volume, 1, ntfs::NtfsAttributeType::Data);
    let at = value + 10;
    let mirror_at = mirror + 3 * 1024 + (at - record);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(volume)
        .unwrap();
    let mut flags = [0u8; 2];
    file.read_exact_at(&mut flags, at).unwrap();
    let flags = (u16::from_le_bytes(flags) | 1).to_le_bytes();
    file.write_all_at(&flags, at).unwrap();
    file.write_all_at(&flags, mirror_at).unwrap();
}

/// ntfs-3g's own reading of the volume flags (ntfsinfo -m): the judge of
/// `mark_dirty`.
fn ntfsinfo_flags(volume: &Path) -> String {
    let out = run_ok(Process::new("ntfsinfo").args(["-m", "--force"]).arg(volume));
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Volume Flags: "))
        .unwrap()
        .to_string()
}

/// Writes a restart page into `$LogFile` as a volume that was not shut
/// down cleanly has it: `RSTR`, a log client in use, the clean flag clear.
fn mark_log_unclean(volume: &Path) {
    let (at, _) = attribute_offset(volume, 2, ntfs::NtfsAttributeType::Data);
    let mut page = vec![0u8; 4096];
    page[..4].copy_from_slice(b"RSTR");
    page[0x18..0x1a].copy_from_slice(&0x30u16.to_le_bytes());
    page[0x30 + 0x0c..0x30 + 0x0e].copy_from_slice(&0u16.to_le_bytes());
    page[0x30 + 0x0e..0x30 + 0x10].copy_from_slice(&0u16.to_le_bytes());
    let file = fs::OpenOptions::new().write(true).open(volume).unwrap();
    file.write_all_at(&page, at).unwrap();
}

#[test]
fn the_ntfs_reader_reads_what_ntfs3g_wrote_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let big = pseudo_random(3 * MIB as usize + 12345, 7);
    // windows_files holds the installer's CRLF conf files too.
    let mut files = windows_files(true);
    files.push(("Windows/big.bin", big.clone()));
    files.push(("Windows/empty.txt", Vec::new()));
    let volume = ntfs_volume(dir.path(), &files);
    let image = disk(dir.path(), &volume, "dos");

    let disk = std::sync::Arc::new(FileSource::new(fs::File::open(&image).unwrap()).unwrap());
    let part = Window::new(disk, PART_OFFSET, PART_SIZE).unwrap().cursor();
    let mut ours = NtfsVolume::open(part).unwrap();
    let mnt = dir.path().join("judge");
    let _judge = Ntfs3g::mount(&volume, &mnt, "ro");
    for (path, bytes) in &files {
        let (read, len) = ours.read_prefix(path, u64::MAX).unwrap().unwrap();
        assert_eq!(&read, bytes, "{path}");
        assert_eq!(len, bytes.len() as u64);
        assert_eq!(read, fs::read(mnt.join(path)).unwrap(), "{path} vs ntfs-3g");
        // Windows names fold case: the same file under any spelling.
        let (folded, _) = ours
            .read_prefix(&path.to_uppercase(), u64::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(&folded, bytes);
    }
    // A prefix is capped before it is read.
    let (prefix, len) = ours.read_prefix("windows/BIG.BIN", 100).unwrap().unwrap();
    assert_eq!((prefix.as_slice(), len), (&big[..100], big.len() as u64));
    // Directory listings agree with ntfs-3g's (long names only).
    let mut listed = ours
        .list_dir("Windows/System32/drivers", 1000)
        .unwrap()
        .unwrap();
    let mut judged: Vec<String> = fs::read_dir(mnt.join("Windows/System32/drivers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    judged.sort();
    assert_eq!(listed, judged);
    assert!(ours.read_prefix("Windows/missing", 10).unwrap().is_none());
    assert!(ours.read_prefix("Windows", 10).unwrap().is_none());
    assert!(ours.unfinished().unwrap().is_empty());
}

#[test]
fn doctor_finds_windows_on_mbr_and_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let volume = ntfs_volume(dir.path(), &windows_files(true));
    let image = disk(dir.path(), &volume, "dos");
    let report = doctor_json(&image, 0);
    assert_eq!(report["image"]["filesystem"], "ntfs");
    assert_eq!(report["image"]["table"], "mbr");
    assert_eq!(report["image"]["partition"], 1);
    let ids = ids(&report);
    assert!(
        ids.contains(&"windows-disk-layout-ok".to_string()),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"windows-virtio-drivers-present".to_string()),
        "{ids:?}"
    );
}

#[test]
fn doctor_refuses_gpt_and_missing_virtio_drivers_for_import() {
    let dir = tempfile::tempdir().unwrap();
    let volume = ntfs_volume(dir.path(), &windows_files(false));
    let image = disk(dir.path(), &volume, "gpt");
    let report = doctor_json(&image, 4);
    assert_eq!(report["image"]["table"], "gpt (512-byte sectors)");
    let ids = ids(&report);
    for id in [
        "windows-partition-table-gpt",
        "windows-virtio-storage-missing",
        "windows-virtio-network-missing",
    ] {
        assert!(ids.contains(&id.to_string()), "{id} not in {ids:?}");
    }
    let (text, _) = prepare_image(&["doctor"], &image, 4);
    assert!(
        text.contains("error[windows-partition-table-gpt]"),
        "{text}"
    );
}

/// Doctor refuses the image with one line saying what to do, exit 1, and
/// the image file is left byte-identical.
fn assert_refused(image: &Path, what: &str) {
    let before = fs::read(image).unwrap();
    for args in [&["doctor"][..], &["doctor", "--format", "json"]] {
        let (out, err) = prepare_image(args, image, 1);
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(what), "{err}");
        assert!(err.contains("powercfg /h off"), "{err}");
        assert!(err.contains(&image.display().to_string()), "{err}");
    }
    assert!(fs::read(image).unwrap() == before, "the image changed");
}

#[test]
fn a_dirty_volume_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let volume = ntfs_volume(dir.path(), &windows_files(true));
    assert_eq!(ntfsinfo_flags(&volume), "0x0000");
    mark_dirty(&volume);
    assert_eq!(ntfsinfo_flags(&volume), "0x0001 DIRTY");
    let image = disk(dir.path(), &volume, "dos");
    assert_refused(&image, "marked dirty");
}

#[test]
fn a_hibernated_volume_is_refused_and_a_resumed_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut header = b"HIBR".to_vec();
    header.resize(8192, 0);
    let mut files = windows_files(true);
    files.push(("hiberfil.sys", header));
    let volume = ntfs_volume(dir.path(), &files);
    let image = disk(dir.path(), &volume, "dos");
    assert_refused(&image, "hibernated");

    // After a resume Windows leaves a zeroed or lowercase `hibr` header.
    let dir = tempfile::tempdir().unwrap();
    let mut header = b"hibr".to_vec();
    header.resize(8192, 0);
    let mut files = windows_files(true);
    files.push(("hiberfil.sys", header));
    let volume = ntfs_volume(dir.path(), &files);
    let image = disk(dir.path(), &volume, "dos");
    doctor_json(&image, 0);
}

#[test]
fn an_unclean_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let volume = ntfs_volume(dir.path(), &windows_files(true));
    mark_log_unclean(&volume);
    let image = disk(dir.path(), &volume, "dos");
    assert_refused(&image, "$LogFile");
}

#[test]
fn a_linux_image_still_goes_to_the_linux_doctor() {
    // An NTFS data partition without Windows on it is not a Windows image.
    let dir = tempfile::tempdir().unwrap();
    let volume = ntfs_volume(dir.path(), &[("data/readme.txt", b"hi".to_vec())]);
    let image = disk(dir.path(), &volume, "dos");
    let (_, err) = prepare_image(&["doctor"], &image, 1);
    assert!(err.contains("etc/os-release"), "{err}");
}

#[test]
fn qcow2_and_vhdx_wrappers_are_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let volume = ntfs_volume(dir.path(), &windows_files(true));
    let image = disk(dir.path(), &volume, "dos");
    let raw = doctor_json(&image, 0);
    for format in ["qcow2", "vhdx"] {
        let wrapped = dir.path().join(format!("windows.{format}"));
        run_ok(
            Process::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", format])
                .arg(&image)
                .arg(&wrapped),
        );
        let report = doctor_json(&wrapped, 0);
        assert_eq!(report["image"]["format"], format);
        assert_eq!(ids(&report), ids(&raw), "{format}");
    }
}

#[test]
fn ntfsinfo_reads_a_fresh_volume_log_as_empty() {
    // The judge of `mark_log_unclean`: mkntfs leaves $LogFile all 0xff,
    // which ntfs-3g and we both read as clean; our page changes that.
    let dir = tempfile::tempdir().unwrap();
    let volume = ntfs_volume(dir.path(), &windows_files(true));
    let log = Process::new("ntfscat")
        .arg(&volume)
        .arg("$LogFile")
        .output()
        .unwrap()
        .stdout;
    assert!(log.len() >= 8192);
    assert!(log[..8192].iter().all(|&b| b == 0xff));
    mark_log_unclean(&volume);
    let out = Process::new("ntfscat")
        .arg(&volume)
        .arg("$LogFile")
        .output()
        .unwrap();
    assert_eq!(&out.stdout[..4], b"RSTR");
}

/// A SYSTEM and SOFTWARE as the guide's causes leave them: the service
/// Manual under the installer's account, LocalScriptsPlugin done (1), the
/// CD-ROM driver disabled.
fn bad_hives() -> (HiveBuilder, HiveBuilder) {
    let system = good_system()
        .set(SERVICE, "Start", Val::Dword(3))
        .set(SERVICE, "ObjectName", Val::Sz(".\\cloudbase-init".into()))
        .set(CDROM, "Start", Val::Dword(4));
    let software = good_software().set(PLUGINS, "LocalScriptsPlugin", Val::Dword(1));
    (system, software)
}

const BAD_IDS: [&str; 4] = [
    "cloudbase-init-service-not-automatic",
    "cloudbase-init-not-local-system",
    "local-scripts-plugin-not-2",
    "cdrom-driver-disabled",
];

#[test]
fn doctor_reads_the_registry_of_the_image_good_and_bad() {
    let dir = tempfile::tempdir().unwrap();
    let volume = ntfs_volume(dir.path(), &windows_files(true));
    let good = ids(&doctor_json(&disk(dir.path(), &volume, "dos"), 0));
    for id in [
        "cloudbase-init-service-automatic",
        "cloudbase-init-runs-as-local-system",
        "local-scripts-plugin-ok",
        "cdrom-driver-enabled",
    ] {
        assert!(good.contains(&id.to_string()), "{id} not in {good:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let (system, software) = bad_hives();
    let volume = ntfs_volume(dir.path(), &windows_with(&system, &software, true));
    let image = disk(dir.path(), &volume, "dos");
    let report = doctor_json(&image, 4);
    let bad = ids(&report);
    for id in BAD_IDS {
        assert!(bad.contains(&id.to_string()), "{id} not in {bad:?}");
    }
    let (text, _) = prepare_image(&["doctor"], &image, 4);
    assert!(
        text.contains("sc.exe config cloudbase-init obj= LocalSystem"),
        "{text}"
    );
}

#[test]
fn a_hive_windows_did_not_finish_writing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut system = good_system().build();
    // The primary sequence number one ahead of the secondary: Windows was
    // writing the hive (its newest data only in SYSTEM.LOG1/LOG2).
    let primary = u32::from_le_bytes(system[4..8].try_into().unwrap());
    system[4..8].copy_from_slice(&(primary + 1).to_le_bytes());
    common_hive::fix_checksum(&mut system);
    let mut files = windows_files(true);
    files[0].1 = system;
    let volume = ntfs_volume(dir.path(), &files);
    let image = disk(dir.path(), &volume, "dos");
    assert_refused(&image, "SYSTEM");
}

/// A file of the Windows volume inside `image`, as ntfs-3g's ntfscat reads
/// it (the judge: not our reader).
fn ntfscat(dir: &Path, image: &Path, path: &str) -> Vec<u8> {
    let volume = dir.join("extracted.ntfs");
    let mut bytes = vec![0u8; PART_SIZE as usize];
    fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut bytes, PART_OFFSET)
        .unwrap();
    fs::write(&volume, bytes).unwrap();
    let out = Process::new("ntfscat")
        .arg(&volume)
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ntfscat {path}");
    out.stdout
}

/// hivex's export of a hive, one line per key and value.
fn hivex_export(dir: &Path, name: &str, hive: &[u8]) -> Vec<String> {
    let path = dir.join(name);
    fs::write(&path, hive).unwrap();
    run_ok(
        Process::new("hivexregedit")
            .arg("--export")
            .arg(&path)
            .arg("\\"),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// The byte offsets where two equally long files differ.
fn differing_bytes(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

#[test]
fn fix_sets_exactly_the_dwords_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (system, software) = bad_hives();
    let volume = ntfs_volume(dir.path(), &windows_with(&system, &software, true));
    let image = disk(dir.path(), &volume, "dos");
    let hives = [
        "Windows/System32/config/SYSTEM",
        "Windows/System32/config/SOFTWARE",
    ];
    let before: Vec<Vec<u8>> = hives
        .iter()
        .map(|h| ntfscat(dir.path(), &image, h))
        .collect();

    let (_, err) = prepare_image(&["doctor", "--fix"], &image, 4);
    for line in [
        "fixed Windows/System32/config/SYSTEM: ControlSet001\\Services\\cloudbase-init\\Start 3 -> 2",
        "fixed Windows/System32/config/SYSTEM: ControlSet001\\Services\\cdrom\\Start 4 -> 1",
        "fixed Windows/System32/config/SOFTWARE: Cloudbase Solutions\\Cloudbase-Init\\i-abc123\\Plugins\\LocalScriptsPlugin 1 -> 2",
    ] {
        assert!(err.contains(line), "{line} not in {err}");
    }
    let after: Vec<Vec<u8>> = hives
        .iter()
        .map(|h| ntfscat(dir.path(), &image, h))
        .collect();

    // hivex sees exactly the intended values change.
    let old = hivex_export(dir.path(), "old", &before[0]);
    let new = hivex_export(dir.path(), "new", &after[0]);
    let changed: Vec<(&String, &String)> = old.iter().zip(&new).filter(|(a, b)| a != b).collect();
    assert_eq!(old.len(), new.len());
    assert_eq!(
        changed.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
        ["\"Start\"=dword:00000001", "\"Start\"=dword:00000002"],
        "{changed:?}"
    );
    let old = hivex_export(dir.path(), "old", &before[1]);
    let new = hivex_export(dir.path(), "new", &after[1]);
    let changed: Vec<&String> = new
        .iter()
        .zip(&old)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(changed, ["\"LocalScriptsPlugin\"=dword:00000002"]);

    // Bytes: one data byte per DWORD (1 -> 2, 3 -> 2, 4 -> 1 differ in the
    // low byte only), and the base block's sequence numbers, time and
    // checksum; nothing else.
    for (b, a) in before.iter().zip(&after) {
        let diff = differing_bytes(b, a);
        let (base, data): (Vec<usize>, Vec<usize>) = diff.iter().partition(|&&i| i < 4096);
        assert!(
            base.iter()
                .all(|&i| (4..20).contains(&i) || (508..512).contains(&i)),
            "{base:?}"
        );
        assert!(!data.is_empty(), "no data byte changed");
        eprintln!("changed bytes: base block {base:?}, data {data:?}");
    }
    assert_eq!(
        differing_bytes(&before[0], &after[0])
            .iter()
            .filter(|&&i| i >= 4096)
            .count(),
        2
    );
    assert_eq!(
        differing_bytes(&before[1], &after[1])
            .iter()
            .filter(|&&i| i >= 4096)
            .count(),
        1
    );

    // The image is left clean (ntfs-3g cleared what it set), and doctor
    // reads the fixed values back; only ObjectName, a string, is left.
    let report = doctor_json(&image, 4);
    let ids = ids(&report);
    for id in BAD_IDS {
        assert_eq!(
            ids.contains(&id.to_string()),
            id == "cloudbase-init-not-local-system",
            "{id} in {ids:?}"
        );
    }
    // A second --fix has nothing left to write.
    let (_, err) = prepare_image(&["doctor", "--fix"], &image, 4);
    assert!(!err.contains("fixed"), "{err}");
}

#[test]
fn fix_stops_when_ntfs3g_falls_back_to_read_only() {
    // A `hibr` header passes our checks (Windows resumed), but ntfs-3g
    // still takes it for hibernation and mounts read-only, exiting 0: the
    // read-only mount must be caught, nothing written, exit 1.
    let dir = tempfile::tempdir().unwrap();
    let (system, software) = bad_hives();
    let mut files = windows_with(&system, &software, true);
    let mut header = b"hibr".to_vec();
    header.resize(8192, 0);
    files.push(("hiberfil.sys", header));
    let volume = ntfs_volume(dir.path(), &files);
    let image = disk(dir.path(), &volume, "dos");
    let before = fs::read(&image).unwrap();
    let (_, err) = prepare_image(&["doctor", "--fix"], &image, 1);
    assert!(err.contains("read-only"), "{err}");
    assert!(err.contains("powercfg /h off"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(fs::read(&image).unwrap() == before, "the image changed");
}

const CONF: &str = "Program Files/Cloudbase Solutions/Cloudbase-Init/conf/cloudbase-init.conf";
const LOCAL_SCRIPT: &str =
    "Program Files/Cloudbase Solutions/Cloudbase-Init/LocalScripts/tencent.ps1";
const INSTALLER_CONF: &[u8] = include_bytes!("fixtures/cloudbase/cloudbase-init.conf");

#[test]
fn doctor_checks_the_live_installs_conf_in_the_image() {
    // The installer's two conf files, its LocalScripts directory holding
    // Tencent's script: the conf checks pass.
    let dir = tempfile::tempdir().unwrap();
    let volume = ntfs_volume(dir.path(), &windows_files(true));
    let report = doctor_json(&disk(dir.path(), &volume, "dos"), 0);
    let good = ids(&report);
    assert!(
        good.contains(&"cloudbase-configdrive-service".to_string()),
        "{good:?}"
    );

    // metadata_services naming no ConfigDriveService: in the service's
    // file, then in the unattend file alone (its own finding, its path).
    let no_config_drive =
        "metadata_services=cloudbaseinit.metadata.services.httpservice.HttpService\r\n";
    for (file, original) in [(CONF, INSTALLER_CONF), (UNATTEND, INSTALLER_UNATTEND)] {
        let dir = tempfile::tempdir().unwrap();
        let text = String::from_utf8_lossy(original)
            .lines()
            .filter(|l| !l.starts_with("metadata_services="))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>()
            + no_config_drive;
        let mut files = windows_files(true);
        files.push((file, text.into_bytes()));
        let volume = ntfs_volume(dir.path(), &files);
        let report = doctor_json(&disk(dir.path(), &volume, "dos"), 4);
        let missing: Vec<&Value> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["id"] == "cloudbase-configdrive-service-missing")
            .collect();
        assert_eq!(missing.len(), 1, "{file}: {report}");
        assert!(
            missing[0].to_string().contains(file),
            "{file}: {}",
            missing[0]
        );
    }
}

const UNATTEND: &str =
    "Program Files/Cloudbase Solutions/Cloudbase-Init/conf/cloudbase-init-unattend.conf";
const INSTALLER_UNATTEND: &[u8] = include_bytes!("fixtures/cloudbase/cloudbase-init-unattend.conf");

/// A Windows image with the installer's two conf files in the live install
/// (the service's ImagePath names Program Files) and Tencent's local script.
fn windows_with_cloudbase(dir: &Path) -> PathBuf {
    let volume = ntfs_volume(dir, &windows_files(true));
    disk(dir, &volume, "dos")
}

fn sha256(path: &Path) -> String {
    run_ok(Process::new("sha256sum").arg(path))
}

/// What oslo.config (the judge) reads as `plugins` from each text; `None`
/// when unset (Cloudbase-Init's defaults then run).
fn oslo_plugins(texts: &[String]) -> Vec<Option<Vec<String>>> {
    judge::Judge::oslo_config()
        .run(texts)
        .iter()
        .map(|v| {
            assert_eq!(v["ok"], true, "oslo.config refuses the file: {v}");
            v["plugins"]
                .as_array()
                .map(|a| a.iter().map(|p| p.as_str().unwrap().to_string()).collect())
        })
        .collect()
}

#[test]
fn keep_hostname_edits_both_conf_files_of_the_live_install() {
    let dir = tempfile::tempdir().unwrap();
    let image = windows_with_cloudbase(dir.path());
    let original = sha256(&image);

    // --dry-run: the diff of both files (CRLF kept), nothing written.
    let (out, err) = prepare_image(&["--keep", "hostname", "--dry-run"], &image, 0);
    assert!(
        out.contains(&format!("--- a/{CONF}\t\n+++ b/{CONF}\t\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("--- a/{UNATTEND}\t\n+++ b/{UNATTEND}\t\n")),
        "{out}"
    );
    // split, not lines(): lines() would take the CR off too.
    let bare: Vec<&str> = out
        .split('\n')
        .filter(|l| l.starts_with('+') && !l.starts_with("+++") && !l.ends_with('\r'))
        .collect();
    assert!(bare.is_empty(), "every added line keeps its CRLF: {bare:?}");
    assert!(err.contains("[hostname] drop SetHostNamePlugin"), "{err}");
    assert_eq!(sha256(&image), original, "--dry-run changed the image");

    // --check: pending (3), as JSON too; nothing written.
    let (_, err) = prepare_image(&["--keep", "hostname", "--check"], &image, 3);
    assert!(err.contains("overwritten at first boot: hostname"), "{err}");
    let (out, _) = prepare_image(
        &["--keep", "hostname", "--check", "--format", "json"],
        &image,
        3,
    );
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["result"], "pending");
    assert_eq!(doc["image"]["filesystem"], "ntfs");
    assert_eq!(doc["files"].as_array().unwrap().len(), 2);
    assert_eq!(sha256(&image), original, "--check changed the image");

    // The real run writes through ntfs-3g; --check then holds.
    let (_, err) = prepare_image(&["--keep", "hostname"], &image, 0);
    assert!(err.contains("drop SetHostNamePlugin"), "{err}");
    prepare_image(&["--keep", "hostname", "--check"], &image, 0);

    // Read back by ntfs-3g's ntfscat and judged by oslo.config: the
    // defaults minus SetHostNamePlugin in the service's file, the
    // installer's list minus it in the unattend file, CRLF kept.
    let conf = String::from_utf8(ntfscat(dir.path(), &image, CONF)).unwrap();
    let unattend = String::from_utf8(ntfscat(dir.path(), &image, UNATTEND)).unwrap();
    for text in [&conf, &unattend] {
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "CRLF kept: {text:?}"
        );
        assert!(!text.contains("SetHostNamePlugin"), "{text}");
    }
    let read = oslo_plugins(&[conf.clone(), unattend.clone()]);
    let defaults: Vec<String> = prepare_image::guest::cloudbase::plan::DEFAULT_PLUGINS
        .iter()
        .filter(|p| !p.ends_with(".SetHostNamePlugin"))
        .map(|p| p.to_string())
        .collect();
    assert_eq!(read[0].as_ref(), Some(&defaults));
    let installer = String::from_utf8_lossy(INSTALLER_UNATTEND).into_owned();
    let want = oslo_plugins(&[installer])[0]
        .clone()
        .unwrap()
        .into_iter()
        .filter(|p| !p.ends_with(".SetHostNamePlugin"))
        .collect::<Vec<_>>();
    assert_eq!(read[1].as_ref(), Some(&want));

    // Nothing left to do: never mounted, the image is not touched.
    let written = sha256(&image);
    prepare_image(&["--keep", "hostname"], &image, 0);
    assert_eq!(
        sha256(&image),
        written,
        "a keep with nothing to do changed the image"
    );
}

#[test]
fn keep_hosts_does_not_apply_and_passwords_warns_of_localscripts() {
    let dir = tempfile::tempdir().unwrap();
    let image = windows_with_cloudbase(dir.path());
    let original = sha256(&image);
    // What applies to Linux images only is a usage error, nothing opened
    // for writing.
    let (_, err) = prepare_image(&["--keep", "hostname", "--clean"], &image, 2);
    assert!(err.contains("a Windows image has none"), "{err}");
    let (_, err) = prepare_image(&["--keep", "hostnme"], &image, 2);
    assert!(err.contains("hostname"), "{err}");
    assert_eq!(sha256(&image), original);
    let (out, err) = prepare_image(&["--keep", "hosts"], &image, 0);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("[hosts-not-applicable]"), "{err}");
    assert!(err.contains("never writes the hosts file"), "{err}");
    prepare_image(&["--keep", "hosts", "--check"], &image, 0);
    assert_eq!(sha256(&image), original, "hosts changed the image");

    let (out, err) = prepare_image(&["--keep", "passwords", "--dry-run"], &image, 0);
    assert!(out.contains(&format!("+++ b/{CONF}")), "{out}");
    assert!(
        err.contains("[passwords] drop SetUserPasswordPlugin"),
        "{err}"
    );
    assert!(
        err.contains("[windows-tencent-password-localscripts]"),
        "{err}"
    );
    assert!(err.contains("[windows-createuser-still-runs]"), "{err}");
    assert_eq!(sha256(&image), original);

    // `all` is the guide's eight settings: user data still runs.
    let (out, _) = prepare_image(
        &["--keep", "all", "--dry-run", "--format", "json"],
        &image,
        0,
    );
    let doc: Value = serde_json::from_str(&out).unwrap();
    let linux: Vec<String> = prepare_image::guest::cloudinit::profile::built_in()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(doc["keep"], serde_json::json!(linux));
    assert_eq!(linux.len(), 8);
    assert!(!out.contains("drop UserDataPlugin"), "{out}");
    let (_, err) = prepare_image(&["--keep", "user-scripts", "--dry-run"], &image, 0);
    assert!(err.contains("[user-scripts] drop UserDataPlugin"), "{err}");
}

#[test]
fn keep_without_a_conf_file_writes_nothing() {
    // Doctor names the missing conf; a keep refuses, writing nothing.
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = windows_files(true)
        .into_iter()
        .filter(|(path, _)| *path != CONF)
        .collect();
    let volume = ntfs_volume(dir.path(), &files);
    let image = disk(dir.path(), &volume, "dos");
    let report = doctor_json(&image, 4);
    assert!(
        ids(&report).contains(&"cloudbase-conf-missing".to_string()),
        "{report}"
    );
    let original = sha256(&image);
    let (_, err) = prepare_image(&["--keep", "hostname"], &image, 1);
    assert!(err.contains("no Cloudbase-Init conf file"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(sha256(&image), original);
}

#[test]
fn keep_on_a_qcow2_wrapper() {
    let dir = tempfile::tempdir().unwrap();
    let image = windows_with_cloudbase(dir.path());
    let wrapped = dir.path().join("windows.qcow2");
    run_ok(
        Process::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&image)
            .arg(&wrapped),
    );
    prepare_image(&["--keep", "hostname,ntp", "--check"], &wrapped, 3);
    prepare_image(&["--keep", "hostname,ntp"], &wrapped, 0);
    prepare_image(&["--keep", "hostname,ntp", "--check"], &wrapped, 0);
    // Nothing left to do: the qcow2 file is not touched either.
    let written = sha256(&wrapped);
    prepare_image(&["--keep", "hostname,ntp"], &wrapped, 0);
    assert_eq!(sha256(&wrapped), written);
    prepare_image(&["--keep", "network", "--check"], &wrapped, 3);
}

#[test]
fn keep_refuses_an_image_another_process_writes() {
    // A running VM (here: a shell holding the file open read-write) would
    // see its disk change under it: refused before anything is mounted.
    let dir = tempfile::tempdir().unwrap();
    let image = windows_with_cloudbase(dir.path());
    let mut holder = Process::new("bash")
        .arg("-c")
        .arg("exec 3<>\"$1\"; echo open; exec sleep 60")
        .arg("holder")
        .arg(&image)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "open");
    let original = sha256(&image);
    let (_, err) = prepare_image(&["--keep", "hostname"], &image, 1);
    assert!(err.contains("is open for writing by process"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // A read-only look is still fine: nothing is written.
    prepare_image(&["--keep", "hostname", "--check"], &image, 3);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(sha256(&image), original);
}

// ---------------------------------------------------------------------------
// Rootless: the read-only commands read a Windows image in user space, as
// an unprivileged user (no loop device, no mount, no qemu view).

/// `image` (raw) and its qcow2 and vhdx wrappers, beside it.
fn wrapped(image: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut images = vec![("raw", image.to_path_buf())];
    for format in ["qcow2", "vhdx"] {
        let wrapped = image.with_extension(format);
        run_ok(
            Process::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", format])
                .arg(image)
                .arg(&wrapped),
        );
        images.push((format, wrapped));
    }
    images
}

/// The exit code each read-only command must end with on the guide's bad
/// hives with the installer's conf: doctor finds errors (4), a keep of all
/// is pending (3), the rest succeed.
const READ_ONLY: [(&[&str], i32); 7] = [
    (&["doctor"], 4),
    (&["doctor", "--format", "json"], 4),
    (&["--keep", "all", "--check"], 3),
    (&["--keep", "all", "--check", "--format", "json"], 3),
    (&["--keep", "all", "--dry-run"], 0),
    (&["status"], 0),
    (&["status", "--format", "json"], 0),
];

#[test]
fn rootless_reads_agree_with_root_and_leave_the_image_as_it_was() {
    let world = common_images::Scratch::new();
    let (system, software) = bad_hives();
    let volume = ntfs_volume(world.dir.path(), &windows_with(&system, &software, true));
    let image = disk(world.dir.path(), &volume, "dos");
    for (format, image) in wrapped(&image) {
        let path = image.to_str().unwrap();
        let original = sha256(&image);
        for (args, code) in READ_ONLY {
            let args: Vec<&str> = args.iter().copied().chain([path]).collect();
            // Every format has a user-space block source (raw by pread, qcow2 by
            // imago, vhdx over NBD): the same answer as root.
            let user = world.run_unprivileged(&args);
            let root = world.run(&args);
            assert_eq!(user.code, Some(code), "{format} {args:?}: {user:?}");
            assert_eq!(
                (user.code, &user.stdout, &user.stderr),
                (root.code, &root.stdout, &root.stderr),
                "{format} {args:?}"
            );
            assert_eq!(
                sha256(&image),
                original,
                "{format} {args:?} changed the image"
            );
        }
        // A write needs root: said in one line, before anything is opened for writing.
        for args in [&["--keep", "all"][..], &["doctor", "--fix"]] {
            let args: Vec<&str> = args.iter().copied().chain([path]).collect();
            let line = world.run_unprivileged(&args).one_error().to_string();
            assert!(
                line.contains("run prepare-image as root"),
                "{args:?}: {line}"
            );
            assert_eq!(
                sha256(&image),
                original,
                "{format} {args:?} changed the image"
            );
        }
        // Found as Windows, with the guide's bad values, by the user too.
        let user = world.run_unprivileged(&["doctor", "--format", "json", path]);
        let report: Value = serde_json::from_str(&user.stdout).unwrap();
        assert_eq!(report["image"]["format"], format);
        assert_eq!(report["image"]["filesystem"], "ntfs");
        let found = ids(&report);
        for id in BAD_IDS {
            assert!(
                found.contains(&id.to_string()),
                "{format}: {id} in {found:?}"
            );
        }
    }
    assert!(world.processes().is_empty(), "{:?}", world.processes());
}

/// Each setting of `status --format json` with its state, in order.
fn states(doc: &Value) -> Vec<(String, String)> {
    doc["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["setting"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every Windows profile in `profiles/windows/` order, `overwritten` or kept.
fn expected(overwritten: &[&str]) -> Vec<(String, String)> {
    let names: Vec<String> = prepare_image::guest::cloudbase::profile::built_in()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names.len(), 9, "{names:?}");
    names
        .into_iter()
        .map(|n| {
            let state = if overwritten.contains(&n.as_str()) {
                "overwritten"
            } else {
                "kept"
            };
            (n, state.to_string())
        })
        .collect()
}

#[test]
fn status_says_what_cloudbase_init_overwrites_and_a_keep_flips_it() {
    let world = common_images::Scratch::new();
    let image = windows_with_cloudbase(world.dir.path());
    // vhdx: read over NBD, whose qemu-storage-daemon must let go of the
    // image before the keep's writable view can lock it.
    for (_, image) in wrapped(&image) {
        let path = image.to_str().unwrap();
        let original = sha256(&image);
        let status = |world: &common_images::Scratch| {
            let user = world.run_unprivileged(&["status", "--format", "json", path]);
            assert_eq!(user.code, Some(0), "{user:?}");
            let doc: Value = serde_json::from_str(&user.stdout).unwrap();
            // The Linux status's shape.
            let mut keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
            keys.sort();
            assert_eq!(
                keys,
                ["ignored_files", "image", "root", "settings", "version"],
                "{doc}"
            );
            assert_eq!(doc["image"]["filesystem"], "ntfs");
            doc
        };
        let before = status(&world);
        assert_eq!(sha256(&image), original, "status changed {path}");
        // Cloudbase-Init's installer conf runs every default plugin: only
        // what no plugin touches (hosts, repos) is kept.
        let overwritten = [
            "hostname",
            "dns",
            "ntp",
            "passwords",
            "keys",
            "network",
            "user-scripts",
        ];
        assert_eq!(states(&before), expected(&overwritten), "{path}");
        // Why, with the deciding file: the service's conf runs the defaults.
        let hostname = &before["settings"][0];
        assert!(
            hostname["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["file"] == CONF
                    && r["overwrites"] == true
                    && r["text"]
                        .as_str()
                        .unwrap()
                        .contains("SetHostNamePlugin runs")),
            "{hostname}"
        );
        let text = world.run_unprivileged(&["status", path]);
        assert!(
            text.stdout.starts_with(&format!("image: {path} (")),
            "{}",
            text.stdout
        );
        assert!(
            text.stdout
                .lines()
                .any(|l| l.starts_with("hostname") && l.contains("  overwritten  ")),
            "{}",
            text.stdout
        );

        // Root keeps all (the guide's eight); user-scripts still runs.
        let root = world.run(&["--keep", "all", path]);
        assert_eq!(root.code, Some(0), "{root:?}");
        let after = status(&world);
        assert_eq!(states(&after), expected(&["user-scripts"]), "{path}");
        let root = world.run(&["status", "--format", "json", path]);
        assert_eq!(
            serde_json::from_str::<Value>(&root.stdout).unwrap(),
            after,
            "root and the user see the same"
        );
    }
    assert!(world.processes().is_empty(), "{:?}", world.processes());
}
