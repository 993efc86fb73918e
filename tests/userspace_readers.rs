//! XFS (v5 and v4) and btrfs (plain, zstd, lzo, Fedora's root subvolume)
//! read in user space, compared name by name and byte for byte with the
//! kernel's mount of the same filesystem (or, for XFS v4, which this
//! kernel cannot mount, with the tree it was made from). Also: a write to
//! XFS v4 is refused with a reason and changes nothing, while the read-only
//! commands read it in user space, without root.
//!
//! Needs root (loop devices, mount), xfsprogs and btrfs-progs.

mod common_images;
mod common_readers;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common_images::{
    LoopDevice, MIB, Mount, Scratch, copy_into, path_str, run, sha256, sparse_file,
};
use common_readers::{Counts, Made, Seen, tree, walk_all, whole};
use prepare_image::access::fs::{FsRead, NodeKind, btrfs};
use prepare_image::access::image::block::{FileSource, Window};
use prepare_image::access::root::Root;

/// Compares every name the reader shows with `reference` (a directory: the
/// kernel's mount, or the source tree): kind, mode, owner, link target,
/// directory listing, size and content. Returns what was compared.
fn compare(fs: &dyn FsRead, reference: &Path, what: &str) -> Counts {
    let mut mismatches = Vec::new();
    let counts = walk_all(fs, usize::MAX, 64, u64::MAX, &mut |path, seen| {
        let there = reference.join(path.strip_prefix("/").unwrap());
        let md = std::fs::symlink_metadata(&there).unwrap();
        let st = fs.lstat(path).unwrap().unwrap();
        if (st.mode, st.uid, st.gid) != (md.mode() & 0o7777, md.uid(), md.gid()) {
            mismatches.push(format!("{}: mode/owner {st:?}", path.display()));
        }
        let same = match seen {
            Seen::Dir(names) => {
                let mut want: Vec<_> = std::fs::read_dir(&there)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                want.sort();
                md.is_dir() && names == want
            }
            Seen::Link(target) => md.is_symlink() && target == std::fs::read_link(&there).unwrap(),
            Seen::File(size, bytes) => {
                md.is_file() && size == md.len() && bytes == std::fs::read(&there).unwrap()
            }
            Seen::Missing | Seen::Other => false,
        };
        if !same {
            mismatches.push(path.display().to_string());
        }
    });
    assert!(mismatches.is_empty(), "{what}: {mismatches:?}");
    assert_eq!(counts.errors, 0, "{what}: {counts:?}");
    let expected = reference_counts(reference);
    assert_eq!(
        (counts.files, counts.links, counts.dirs),
        (expected.files, expected.links, expected.dirs),
        "{what}: every name was read"
    );
    eprintln!("{what}: {counts:?}");
    counts
}

fn reference_counts(dir: &Path) -> Counts {
    let mut c = Counts::default();
    c.dirs += 1;
    for e in std::fs::read_dir(dir).unwrap() {
        let md = e.as_ref().unwrap().metadata().unwrap();
        let md_l = std::fs::symlink_metadata(e.as_ref().unwrap().path()).unwrap();
        if md_l.is_symlink() {
            c.links += 1;
        } else if md.is_dir() {
            let sub = reference_counts(&e.unwrap().path());
            c.dirs += sub.dirs;
            c.files += sub.files;
            c.links += sub.links;
        } else {
            c.files += 1;
        }
    }
    c
}

/// `fs_file` placed 1 MiB into a larger disk file, as a partition is.
fn as_partition(dir: &Path, fs_file: &Path) -> Window {
    let disk = dir.join("disk.img");
    let len = std::fs::metadata(fs_file).unwrap().len();
    sparse_file(&disk, len + 2 * MIB);
    copy_into(&disk, MIB, fs_file);
    let source = Arc::new(FileSource::new(std::fs::File::open(&disk).unwrap()).unwrap());
    Window::new(source, MIB, len).unwrap()
}

/// The kernel's read-only view of `fs_file`, without log replay.
fn with_kernel_mount<T>(
    dir: &Path,
    fs_file: &Path,
    made: Made,
    extra: &str,
    f: impl FnOnce(&Path) -> T,
) -> T {
    let no_replay = if made.fstype() == "xfs" {
        "norecovery"
    } else {
        "rescue=nologreplay"
    };
    let device = LoopDevice::attach(fs_file, &["-r"]);
    let at = dir.join("kernel-view");
    let mount = Mount::new(
        &device.path,
        &at,
        made.fstype(),
        &format!("ro,nosuid,nodev,noexec,{no_replay}{extra}"),
    );
    let result = f(&at);
    drop(mount);
    drop(device);
    std::fs::remove_dir(&at).unwrap();
    result
}

#[test]
fn xfs_and_btrfs_read_in_user_space_match_the_kernel_byte_for_byte() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let source = tree(dir);
    for made in Made::all() {
        let fs_file = made.make(dir, &source);
        let fs = made.load(as_partition(dir, &fs_file)).unwrap();
        let what = format!("{made:?}");
        if made == Made::Xfs4 {
            // This kernel refuses v4 (mount(8) would say "wrong fs type").
            compare(&*fs, &source, &what);
        } else {
            with_kernel_mount(dir, &fs_file, made, "", |mounted| {
                compare(&*fs, mounted, &what)
            });
        }
        // The confined walk over the reader: links resolve inside the image.
        let root = Root::from_reader(fs, PathBuf::from("/img"));
        let hostname = root.read_file(Path::new("etc-link/abs-link")).unwrap();
        assert_eq!(hostname.bytes, b"guest\n", "{what}");
        std::fs::remove_file(&fs_file).unwrap();
        std::fs::remove_file(dir.join("disk.img")).unwrap();
    }
}

#[test]
fn fedora_btrfs_root_subvolume_is_found_and_read_in_user_space() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let source = tree(dir);
    let fs_file = dir.join("fedora.fs");
    sparse_file(&fs_file, 120 * MIB);
    run("mkfs.btrfs", &["-q", path_str(&fs_file)]);
    {
        let device = LoopDevice::attach(&fs_file, &[]);
        let top = dir.join("top");
        let mount = Mount::new(&device.path, &top, "btrfs", "nosuid,nodev");
        for name in ["root", "home"] {
            run(
                "btrfs",
                &["-q", "subvolume", "create", path_str(&top.join(name))],
            );
        }
        run(
            "cp",
            &[
                "-a",
                &format!("{}/.", source.display()),
                path_str(&top.join("root")),
            ],
        );
        drop(mount);
        drop(device);
        std::fs::remove_dir(&top).unwrap();
    }
    let marker = Path::new("etc/cloud/cloud.cfg");
    let (fs, subvolume) = btrfs::load_root(whole(&fs_file), "fedora.fs", 0, marker)
        .unwrap()
        .unwrap();
    assert_eq!(subvolume.as_deref(), Some("root"));
    with_kernel_mount(dir, &fs_file, Made::Btrfs, ",subvol=root", |mounted| {
        compare(&*fs, mounted, "Fedora btrfs, subvolume root")
    });
    // The default subvolume (the top level) holds only the subvolumes.
    let top = btrfs::load(whole(&fs_file)).unwrap();
    let mut names = top.list(Path::new("/")).unwrap();
    names.sort();
    assert_eq!(names, ["home", "root"]);
    assert_eq!(
        top.lstat(Path::new("/root")).unwrap().unwrap().kind,
        NodeKind::Directory
    );
}

/// An XFS v4 filesystem file holding a guest with cloud-init (and an os-release, which doctor
/// finds the root by).
fn xfs_v4_guest(ctx: &Scratch) -> PathBuf {
    let dir = ctx.dir.path();
    let source = tree(dir);
    std::fs::create_dir_all(source.join("etc/cloud/cloud.cfg.d")).unwrap();
    std::fs::write(source.join("etc/os-release"), "ID=debian\nVERSION_ID=12\n").unwrap();
    Made::Xfs4.make(dir, &source)
}

#[test]
fn a_write_to_xfs_v4_is_refused_with_the_reason_and_changes_nothing() {
    let ctx = Scratch::new();
    let image = xfs_v4_guest(&ctx);
    let img = path_str(&image);
    let before = sha256(&image);
    for args in [
        vec!["--keep", "hostname", img],
        vec!["--keep", "hostname", "--partition", "0", img],
    ] {
        let out = ctx.run(&args);
        assert_eq!(
            out.one_error(),
            format!(
                "error: {img}: partition 0 is XFS v4 (crc=0), which this host's kernel cannot mount, so prepare-image cannot write to it: make the edit inside the guest, or on a host whose kernel supports XFS v4"
            ),
            "{args:?}"
        );
    }
    assert_eq!(sha256(&image), before, "nothing written");
    // What the guest has is still readable here, in user space.
    let root = Root::from_reader(
        prepare_image::access::fs::xfs::load(whole(&image)).unwrap(),
        PathBuf::from(img),
    );
    let cfg = root.read_file(Path::new("etc/cloud/cloud.cfg")).unwrap();
    assert_eq!(cfg.bytes, b"datasource_list: [NoCloud]\n");
    let processes = ctx.processes();
    assert!(processes.is_empty(), "{processes:?}");
}

#[test]
fn xfs_v4_is_read_by_the_read_only_commands_in_user_space_without_root() {
    let ctx = Scratch::new();
    let image = xfs_v4_guest(&ctx);
    let img = path_str(&image);
    let before = sha256(&image);

    let status = ctx.run(&["status", "--format", "json", img]);
    assert_eq!(status.code, Some(0), "{status:?}");
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(doc["image"]["filesystem"], "xfs", "{status:?}");
    assert_eq!(doc["image"]["partition"], 0, "{status:?}");

    // This kernel cannot mount v4, so root's answers come from user space
    // too; an unprivileged user, who cannot mount at all, gets the same.
    let commands: [&[&str]; 5] = [
        &["status", img],
        &["status", img, "--format", "json"],
        &["--keep", "hostname", "--check", img],
        &["--keep", "hostname", "--dry-run", img],
        &["doctor", img],
    ];
    for args in commands {
        let root = ctx.run(args);
        let user = ctx.run_unprivileged(args);
        assert!(
            !root.stderr.contains("run prepare-image as root"),
            "{args:?}: {root:?}"
        );
        assert!(matches!(root.code, Some(0 | 3 | 4)), "{args:?}: {root:?}");
        assert_eq!(
            (user.code, &user.stdout, &user.stderr),
            (root.code, &root.stdout, &root.stderr),
            "{args:?}"
        );
    }
    assert_eq!(sha256(&image), before, "reads change nothing");
    let processes = ctx.processes();
    assert!(processes.is_empty(), "{processes:?}");
}
