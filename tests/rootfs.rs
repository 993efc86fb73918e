//! Tests of confined file access. They need root (mknod, chown, mount, trusted/security xattrs) and a
//! real file system: every tree is built in a fresh TempDir, and mounts are undone by a guard.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use prepare_image::access::root::{AccessErrorKind, DirEntry, Root};
use tempfile::TempDir;

mod common_guards;
use common_guards::{Immutable, Tmpfs};

const BAK: &str = ".prepare-image.bak";

fn assert_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests must run as root (mknod, chown, mount, security.* xattrs)"
    );
}

/// A root with etc/cloud/ created.
fn image() -> (TempDir, Root) {
    assert_root();
    let dir = TempDir::new().unwrap();
    fs::create_dir_all(dir.path().join("etc/cloud")).unwrap();
    let root = Root::open(dir.path()).unwrap();
    (dir, root)
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// A tmpfs mounted at TEMPDIR/mnt. Returned in drop order: the guard must go before the TempDir.
fn tmpfs_image() -> (Tmpfs, TempDir, PathBuf) {
    assert_root();
    let dir = TempDir::new().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let guard = Tmpfs::mount(&mnt, "size=4m,mode=755");
    fs::create_dir_all(mnt.join("etc/cloud")).unwrap();
    (guard, dir, mnt)
}

/// Runs `f` on another thread and fails (instead of hanging the test run) if it takes too long.
fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("operation blocked (opened a FIFO or device without O_NONBLOCK?)")
}

fn names_in(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value)
        .unwrap_or_else(|e| panic!("setting {name} on {}: {e}", path.display()));
}

/// A POSIX ACL (xattr format v2) granting user 1234 read access: user::rw-, user:1234:r--, group::r--,
/// mask::r--, other::---. Consistent with mode 0640.
fn acl_blob() -> Vec<u8> {
    const UNDEF: u32 = u32::MAX;
    let entries: [(u16, u16, u32); 5] = [
        (0x01, 6, UNDEF),
        (0x02, 4, 1234),
        (0x04, 4, UNDEF),
        (0x10, 4, UNDEF),
        (0x20, 0, UNDEF),
    ];
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn absolute_symlink_is_read_inside_root() {
    let (dir, root) = image();
    fs::write(dir.path().join("etc/shadow"), b"image shadow\n").unwrap();
    symlink("/etc/shadow", dir.path().join("etc/cloud/cloud.cfg")).unwrap();

    let got = root.read_file(p("etc/cloud/cloud.cfg")).unwrap();
    assert_eq!(got.bytes, b"image shadow\n");
    assert_eq!(got.path, p("etc/shadow"));
    if let Ok(host) = fs::read("/etc/shadow") {
        assert_ne!(got.bytes, host);
    }
    assert_eq!(
        root.resolve(p("etc/cloud/cloud.cfg")).unwrap(),
        p("etc/shadow")
    );
    // A leading '/' in the request means the image root too.
    assert_eq!(
        root.read_file(p("/etc/cloud/cloud.cfg")).unwrap().bytes,
        b"image shadow\n"
    );
}

#[test]
fn absolute_symlink_is_written_inside_root() {
    let (dir, root) = image();
    let host = TempDir::new().unwrap();
    let host_file = host.path().join("victim");
    fs::write(&host_file, b"host data\n").unwrap();
    let host_rel = host_file.strip_prefix("/").unwrap().to_path_buf();
    symlink(&host_file, dir.path().join("etc/cloud/cloud.cfg")).unwrap();

    // The in-image directory exists but the file does not: it is created there.
    fs::create_dir_all(dir.path().join(host_rel.parent().unwrap())).unwrap();
    let pending = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"new 1\n")
        .unwrap();
    assert_eq!(pending.path(), host_rel);
    pending.commit(Some(BAK)).unwrap();
    assert_eq!(fs::read(&host_file).unwrap(), b"host data\n");
    assert_eq!(fs::read(dir.path().join(&host_rel)).unwrap(), b"new 1\n");

    // Now it exists in the image: it is rewritten there, still not on the host.
    let pending = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"new 2\n")
        .unwrap();
    pending.commit(None).unwrap();
    assert_eq!(fs::read(&host_file).unwrap(), b"host data\n");
    assert_eq!(fs::read(dir.path().join(&host_rel)).unwrap(), b"new 2\n");
    assert_eq!(names_in(host.path()), vec![OsString::from("victim")]);
    // The link itself was kept.
    let link = dir.path().join("etc/cloud/cloud.cfg");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_link(&link).unwrap(), host_file);
}

#[test]
fn relative_dotdot_clamps_at_root() {
    let (dir, root) = image();
    fs::write(dir.path().join("etc/shadow"), b"image shadow\n").unwrap();
    symlink(
        "../../../../../../../../etc/shadow",
        dir.path().join("etc/cloud/cloud.cfg"),
    )
    .unwrap();
    let got = root.read_file(p("etc/cloud/cloud.cfg")).unwrap();
    assert_eq!(got.bytes, b"image shadow\n");
    assert_eq!(got.path, p("etc/shadow"));

    assert_eq!(
        root.resolve(p("../../../../etc/shadow")).unwrap(),
        p("etc/shadow")
    );
    assert_eq!(
        root.read_file(p("../../../etc/shadow")).unwrap().bytes,
        b"image shadow\n"
    );
    // ".." after a symlinked directory goes to the link target's parent, as in the kernel.
    fs::create_dir_all(dir.path().join("usr/share/cloud")).unwrap();
    fs::write(dir.path().join("usr/share/x.cfg"), b"x").unwrap();
    symlink("/usr/share/cloud", dir.path().join("etc/cloud/templ")).unwrap();
    assert_eq!(
        root.resolve(p("etc/cloud/templ/../x.cfg")).unwrap(),
        p("usr/share/x.cfg")
    );
    // Paths naming the root itself.
    assert_eq!(root.resolve(p("")).unwrap(), p(""));
    assert_eq!(root.resolve(p("etc/..")).unwrap(), p(""));
    assert_eq!(root.resolve(p("etc/cloud/..")).unwrap(), p("etc"));
}

#[test]
fn writing_through_dotdot_link_stays_inside_root() {
    let (dir, root) = image();
    let outside = dir.path().parent().unwrap().join("shadow");
    let outside_before = fs::read(&outside).ok();
    fs::create_dir(dir.path().join("etc/other")).unwrap();
    symlink(
        "../../../../../../../../../../etc/other/target.cfg",
        dir.path().join("etc/cloud/cloud.cfg"),
    )
    .unwrap();
    root.prepare_write(p("etc/cloud/cloud.cfg"), b"inside\n")
        .unwrap()
        .commit(None)
        .unwrap();
    assert_eq!(
        fs::read(dir.path().join("etc/other/target.cfg")).unwrap(),
        b"inside\n"
    );
    assert_eq!(fs::read(&outside).ok(), outside_before);
}

#[test]
fn symlink_loop_is_too_many_links() {
    let (dir, root) = image();
    let d = dir.path().join("etc/cloud");
    symlink("b", d.join("a")).unwrap();
    symlink("a", d.join("b")).unwrap();
    symlink("self", d.join("self")).unwrap();
    symlink("/etc/cloud/cloud.cfg", d.join("cloud.cfg")).unwrap();
    for name in ["etc/cloud/a", "etc/cloud/self", "etc/cloud/cloud.cfg"] {
        let e = root.read_file(p(name)).unwrap_err();
        assert!(
            matches!(e.kind(), AccessErrorKind::TooManyLinks),
            "{name}: {e}"
        );
        assert!(e.to_string().contains("symbolic links"), "{e}");
        let e = root.resolve(p(name)).unwrap_err();
        assert!(
            matches!(e.kind(), AccessErrorKind::TooManyLinks),
            "{name}: {e}"
        );
        let e = root.prepare_write(p(name), b"x").unwrap_err();
        assert!(
            matches!(e.kind(), AccessErrorKind::TooManyLinks),
            "{name}: {e}"
        );
        assert!(!root.exists(p(name)));
    }
    let entries = root.list_dir(p("etc/cloud")).unwrap().unwrap();
    assert!(entries.iter().all(|e| !e.is_regular_file));
}

#[test]
fn forty_symlink_hops_are_allowed_forty_one_are_not() {
    let (dir, root) = image();
    let d = dir.path().join("etc/cloud");
    fs::write(d.join("l0"), b"end").unwrap();
    for i in 1..=41 {
        symlink(format!("l{}", i - 1), d.join(format!("l{i}"))).unwrap();
    }
    assert_eq!(root.read_file(p("etc/cloud/l40")).unwrap().bytes, b"end");
    let e = root.read_file(p("etc/cloud/l41")).unwrap_err();
    assert!(matches!(e.kind(), AccessErrorKind::TooManyLinks), "{e}");
}

#[test]
fn fifo_is_refused_without_blocking() {
    let (dir, root) = image();
    let fifo = dir.path().join("etc/cloud/cloud.cfg");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let (read_err, write_err) = within_5s(move || {
        let read = root.read_file(p("etc/cloud/cloud.cfg")).unwrap_err();
        let write = root
            .prepare_write(p("etc/cloud/cloud.cfg"), b"x")
            .unwrap_err();
        (read, write)
    });
    for e in [&read_err, &write_err] {
        assert!(
            matches!(e.kind(), AccessErrorKind::NotRegular { kind: "a FIFO" }),
            "{e}"
        );
    }
    let msg = read_err.to_string();
    assert_eq!(
        msg,
        format!(
            "{} is a FIFO, not a regular file (replace it with the real cloud.cfg)",
            fifo.display()
        )
    );
    assert_eq!(read_err.path(), fifo);
    // Nothing was left behind by the refused write.
    assert_eq!(
        names_in(&dir.path().join("etc/cloud")),
        vec![OsString::from("cloud.cfg")]
    );
}

#[test]
fn directory_is_refused() {
    let (dir, root) = image();
    fs::create_dir(dir.path().join("etc/cloud/cloud.cfg")).unwrap();
    let e = root.read_file(p("etc/cloud/cloud.cfg")).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            AccessErrorKind::NotRegular {
                kind: "a directory"
            }
        ),
        "{e}"
    );
    let e = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"x")
        .unwrap_err();
    assert!(
        matches!(
            e.kind(),
            AccessErrorKind::NotRegular {
                kind: "a directory"
            }
        ),
        "{e}"
    );
    // The root itself, and a link to it.
    symlink("/", dir.path().join("etc/cloud/up")).unwrap();
    for name in ["", "etc/cloud/up"] {
        let e = root.read_file(p(name)).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                AccessErrorKind::NotRegular {
                    kind: "a directory"
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn devices_and_sockets_are_refused_without_opening_them() {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let (dir, root) = image();
    let d = dir.path().join("etc/cloud");
    // Like /dev/null and /dev/zero; opening /dev/zero and reading would never end.
    mknod(
        &d.join("null.cfg"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .unwrap();
    mknod(
        &d.join("zero.cfg"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 5),
    )
    .unwrap();
    mknod(
        &d.join("loop.cfg"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        makedev(7, 0),
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(d.join("sock.cfg")).unwrap();
    symlink("/etc/cloud/zero.cfg", d.join("cloud.cfg")).unwrap();

    let results = within_5s(move || {
        ["null.cfg", "zero.cfg", "loop.cfg", "sock.cfg", "cloud.cfg"].map(|n| {
            let rel = Path::new("etc/cloud").join(n);
            (
                root.read_file(&rel).unwrap_err(),
                root.prepare_write(&rel, b"x").unwrap_err(),
            )
        })
    });
    let expected = [
        "a character device",
        "a character device",
        "a block device",
        "a socket",
        "a character device",
    ];
    for ((read, write), want) in results.iter().zip(expected) {
        for e in [read, write] {
            match e.kind() {
                AccessErrorKind::NotRegular { kind } => assert_eq!(*kind, want, "{e}"),
                _ => panic!("expected NotRegular, got {e}"),
            }
        }
    }
    let via_link = results[4].0.to_string();
    assert!(
        via_link.contains("cloud.cfg (resolved to ") && via_link.contains("/etc/cloud/zero.cfg)"),
        "{via_link}"
    );
}

#[test]
fn missing_file_is_not_found() {
    let (dir, root) = image();
    let e = root.read_file(p("etc/cloud/cloud.cfg")).unwrap_err();
    assert!(matches!(e.kind(), AccessErrorKind::NotFound), "{e}");
    assert_eq!(e.path(), dir.path().join("etc/cloud/cloud.cfg"));
    assert!(
        e.to_string().starts_with(&format!(
            "cannot read {}: no such file or directory (",
            dir.path().join("etc/cloud/cloud.cfg").display()
        )),
        "{e}"
    );
    assert!(!root.exists(p("etc/cloud/cloud.cfg")));
    assert!(root.exists(p("etc/cloud")));
    // A missing final component still resolves (lexically under the resolved parent)...
    symlink("/usr/lib", dir.path().join("etc/lib")).unwrap();
    fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
    assert_eq!(
        root.resolve(p("etc/lib/missing.cfg")).unwrap(),
        p("usr/lib/missing.cfg")
    );
    // ...a dangling link resolves to its target...
    symlink("/nowhere.cfg", dir.path().join("etc/dangling")).unwrap();
    assert_eq!(root.resolve(p("etc/dangling")).unwrap(), p("nowhere.cfg"));
    assert!(!root.exists(p("etc/dangling")));
    let e = root.read_file(p("etc/dangling")).unwrap_err();
    assert!(matches!(e.kind(), AccessErrorKind::NotFound), "{e}");
    // ...but a missing directory on the way is NotFound.
    let e = root.resolve(p("etc/nodir/cloud.cfg")).unwrap_err();
    assert!(matches!(e.kind(), AccessErrorKind::NotFound), "{e}");
    let e = root.read_file(p("etc/nodir/cloud.cfg")).unwrap_err();
    assert!(matches!(e.kind(), AccessErrorKind::NotFound), "{e}");
    let e = root
        .prepare_write(p("etc/nodir/cloud.cfg"), b"x")
        .unwrap_err();
    assert!(matches!(e.kind(), AccessErrorKind::NotFound), "{e}");
    assert!(e.to_string().starts_with("cannot write "), "{e}");
    // list_dir of a missing directory is not an error.
    assert_eq!(root.list_dir(p("etc/cloud/cloud.cfg.d")).unwrap(), None);
    assert_eq!(root.list_dir(p("etc/nodir/cloud.cfg.d")).unwrap(), None);
    assert_eq!(root.list_dir(p("etc/dangling")).unwrap(), None);
}

#[test]
fn open_root_errors_name_the_path() {
    assert_root();
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope");
    let e = Root::open(&missing).unwrap_err().to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(e.contains("does not exist"), "{e}");
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    let e = Root::open(&file).unwrap_err().to_string();
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert!(e.contains("not a directory"), "{e}");
    let root = Root::open(dir.path()).unwrap();
    assert_eq!(root.path(), dir.path());
}

#[test]
fn read_file_reports_metadata() {
    let (dir, root) = image();
    let f = dir.path().join("etc/cloud/cloud.cfg");
    fs::write(&f, b"a: 1\n").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let got = root.read_file(p("etc/cloud/cloud.cfg")).unwrap();
    assert_eq!(got.path, p("etc/cloud/cloud.cfg"));
    assert_eq!(got.bytes, b"a: 1\n");
    assert_eq!((got.mode, got.uid, got.gid), (0o640, 1234, 5678));
}

/// Mode, owner and every xattr namespace the test file system accepts survive a rewrite.
fn check_metadata_preserved(image_root: &Path) {
    let f = image_root.join("etc/cloud/cloud.cfg");
    fs::write(&f, b"old: 1\n").unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    set_xattr(&f, "user.prepare-image-test", b"hello");
    set_xattr(&f, "trusted.prepare-image-test", b"trusted value");
    set_xattr(&f, "security.selinux", b"system_u:object_r:etc_t:s0\0");
    set_xattr(&f, "system.posix_acl_access", &acl_blob());
    let before = fs::metadata(&f).unwrap();
    assert_eq!(before.mode() & 0o7777, 0o640);

    let root = Root::open(image_root).unwrap();
    let pending = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"new: 2\n")
        .unwrap();
    pending.commit(None).unwrap();

    let after = fs::metadata(&f).unwrap();
    assert_ne!(
        after.ino(),
        before.ino(),
        "replaced by rename, not rewritten in place"
    );
    assert_eq!(fs::read(&f).unwrap(), b"new: 2\n");
    assert_eq!(after.mode() & 0o7777, 0o640);
    assert_eq!((after.uid(), after.gid()), (1234, 5678));
    assert_eq!(
        xattr::get(&f, "user.prepare-image-test")
            .unwrap()
            .as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(
        xattr::get(&f, "trusted.prepare-image-test")
            .unwrap()
            .as_deref(),
        Some(&b"trusted value"[..])
    );
    assert_eq!(
        xattr::get(&f, "security.selinux").unwrap().as_deref(),
        Some(&b"system_u:object_r:etc_t:s0\0"[..])
    );
    assert_eq!(
        xattr::get(&f, "system.posix_acl_access").unwrap(),
        Some(acl_blob())
    );
    // Nothing else was left in the directory.
    assert_eq!(
        names_in(&image_root.join("etc/cloud")),
        vec![OsString::from("cloud.cfg")]
    );
}

#[test]
fn metadata_and_xattrs_preserved_on_tmpfs() {
    let (_guard, _dir, mnt) = tmpfs_image();
    check_metadata_preserved(&mnt);
}

/// The TempDir's own file system (ext4 here). If this fails with "Operation not supported" on another
/// machine, that file system lacks one of the xattr namespaces; the tmpfs variant above still covers
/// the code.
#[test]
fn metadata_and_xattrs_preserved_on_tempdir_filesystem() {
    let (dir, _root) = image();
    check_metadata_preserved(dir.path());
}

#[test]
fn setuid_and_setgid_bits_survive_chown() {
    let (dir, root) = image();
    let f = dir.path().join("etc/cloud/tool");
    fs::write(&f, b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6750)).unwrap();
    root.prepare_write(p("etc/cloud/tool"), b"#!/bin/sh\nexit 0\n")
        .unwrap()
        .commit(None)
        .unwrap();
    let m = fs::metadata(&f).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o6750);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
}

#[test]
fn new_file_is_0644_root_root() {
    let (dir, root) = image();
    // A setgid directory would otherwise give the file the directory's group.
    let d = dir.path().join("etc/cloud/cloud.cfg.d");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(0), Some(5678)).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o2755)).unwrap();
    let pending = root
        .prepare_write(p("etc/cloud/cloud.cfg.d/99-x.cfg"), b"x: 1\n")
        .unwrap();
    assert_eq!(pending.path(), p("etc/cloud/cloud.cfg.d/99-x.cfg"));
    let outcome = pending.commit(Some(BAK)).unwrap();
    assert_eq!(outcome.backup, None);
    assert!(!outcome.backup_existed);
    let m = fs::metadata(d.join("99-x.cfg")).unwrap();
    assert!(m.is_file());
    assert_eq!(m.mode() & 0o7777, 0o644);
    assert_eq!((m.uid(), m.gid()), (0, 0));
    assert_eq!(names_in(&d), vec![OsString::from("99-x.cfg")]);
}

#[test]
fn backup_keeps_original_inode_and_existing_backup_is_left_alone() {
    let (dir, root) = image();
    let f = dir.path().join("etc/cloud/cloud.cfg");
    let bak = dir.path().join("etc/cloud/cloud.cfg.prepare-image.bak");
    fs::write(&f, b"original\n").unwrap();
    let original_ino = fs::metadata(&f).unwrap().ino();

    let outcome = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"first edit\n")
        .unwrap()
        .commit(Some(BAK))
        .unwrap();
    assert_eq!(
        outcome.backup.as_deref(),
        Some(p("etc/cloud/cloud.cfg.prepare-image.bak"))
    );
    assert!(!outcome.backup_existed);
    assert_eq!(fs::read(&bak).unwrap(), b"original\n");
    assert_eq!(fs::metadata(&bak).unwrap().ino(), original_ino);
    assert_eq!(fs::read(&f).unwrap(), b"first edit\n");

    let outcome = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"second edit\n")
        .unwrap()
        .commit(Some(BAK))
        .unwrap();
    // The existing backup is named, and left alone.
    assert_eq!(
        outcome.backup.as_deref(),
        Some(Path::new("etc/cloud/cloud.cfg.prepare-image.bak"))
    );
    assert!(outcome.backup_existed);
    assert_eq!(fs::read(&bak).unwrap(), b"original\n");
    assert_eq!(fs::metadata(&bak).unwrap().ino(), original_ino);
    assert_eq!(fs::read(&f).unwrap(), b"second edit\n");

    // Without a suffix no backup is attempted.
    let outcome = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"third\n")
        .unwrap()
        .commit(None)
        .unwrap();
    assert_eq!(outcome.backup, None);
    assert!(!outcome.backup_existed);
    assert_eq!(
        names_in(&dir.path().join("etc/cloud")),
        vec![
            OsString::from("cloud.cfg"),
            OsString::from("cloud.cfg.prepare-image.bak")
        ]
    );
}

#[test]
fn backup_through_symlink_is_next_to_the_target() {
    let (dir, root) = image();
    fs::create_dir_all(dir.path().join("usr/share/cloud")).unwrap();
    fs::write(dir.path().join("usr/share/cloud/cloud.cfg"), b"orig\n").unwrap();
    symlink(
        "../../usr/share/cloud/cloud.cfg",
        dir.path().join("etc/cloud/cloud.cfg"),
    )
    .unwrap();
    let outcome = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"edited\n")
        .unwrap()
        .commit(Some(BAK))
        .unwrap();
    assert_eq!(
        outcome.backup.as_deref(),
        Some(p("usr/share/cloud/cloud.cfg.prepare-image.bak"))
    );
    assert_eq!(
        fs::read(
            dir.path()
                .join("usr/share/cloud/cloud.cfg.prepare-image.bak")
        )
        .unwrap(),
        b"orig\n"
    );
    assert_eq!(
        fs::read(dir.path().join("etc/cloud/cloud.cfg")).unwrap(),
        b"edited\n"
    );
    assert!(
        fs::symlink_metadata(dir.path().join("etc/cloud/cloud.cfg"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn temp_file_is_hidden_from_cloud_init_and_removed_on_drop() {
    let (dir, root) = image();
    let d = dir.path().join("etc/cloud");
    fs::write(d.join("cloud.cfg"), b"orig\n").unwrap();
    let before = names_in(&d);

    let pending = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"never committed\n")
        .unwrap();
    let during = names_in(&d);
    assert_eq!(during.len(), 2, "{during:?}");
    let temp = during
        .iter()
        .find(|n| *n != "cloud.cfg")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(temp.starts_with('.'), "{temp}");
    assert!(!temp.ends_with(".cfg"), "{temp}");
    assert_eq!(fs::read(d.join(&temp)).unwrap(), b"never committed\n");
    // cloud-init's *.cfg glob and list_dir consumers see it as a non-.cfg dot-file.
    drop(pending);

    assert_eq!(names_in(&d), before);
    assert_eq!(fs::read(d.join("cloud.cfg")).unwrap(), b"orig\n");
}

#[test]
fn temp_name_fits_name_max_for_long_names() {
    let (dir, root) = image();
    let long = "c".repeat(251) + ".cfg";
    fs::write(dir.path().join("etc/cloud").join(&long), b"x").unwrap();
    let rel = Path::new("etc/cloud").join(&long);
    root.prepare_write(&rel, b"y")
        .unwrap()
        .commit(None)
        .unwrap();
    assert_eq!(fs::read(dir.path().join(&rel)).unwrap(), b"y");
}

#[test]
fn read_only_filesystem_is_reported_with_path() {
    let (guard, _dir, mnt) = tmpfs_image();
    fs::write(mnt.join("etc/cloud/cloud.cfg"), b"ro\n").unwrap();
    guard.remount_ro();
    let root = Root::open(&mnt).unwrap();
    assert_eq!(
        root.read_file(p("etc/cloud/cloud.cfg")).unwrap().bytes,
        b"ro\n"
    );
    let e = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"rw\n")
        .unwrap_err();
    assert!(
        matches!(e.kind(), AccessErrorKind::ReadOnlyFilesystem),
        "{e}"
    );
    let path = mnt.join("etc/cloud/cloud.cfg");
    assert_eq!(e.path(), path);
    assert_eq!(
        e.to_string(),
        format!(
            "cannot write {}: read-only file system (remount it read-write, or use --dry-run)",
            path.display()
        )
    );
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn immutable_directory_is_named_before_a_temp_file_is_made() {
    let (dir, root) = image();
    let d = dir.path().join("etc/cloud");
    fs::write(d.join("cloud.cfg"), b"orig\n").unwrap();
    let _imm = Immutable::set(&d);
    let e = root
        .prepare_write(p("etc/cloud/cloud.cfg"), b"x")
        .unwrap_err();
    assert!(
        matches!(e.kind(), AccessErrorKind::CannotReplace { .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "cannot write {}: its directory has the immutable attribute",
            d.join("cloud.cfg").display()
        )),
        "{msg}"
    );
    // As root, "run as root" would be useless advice: the attribute is named with its remedy.
    assert!(msg.contains("chattr -i"), "{msg}");
}

#[test]
fn immutable_file_fails_at_commit_and_cleans_up() {
    let (dir, root) = image();
    let d = dir.path().join("etc/cloud");
    fs::write(d.join("cloud.cfg"), b"orig\n").unwrap();
    let imm = Immutable::set(&d.join("cloud.cfg"));
    let pending = root.prepare_write(p("etc/cloud/cloud.cfg"), b"x").unwrap();
    let e = pending.commit(None).unwrap_err();
    assert!(e.nothing_written(), "{e}");
    assert!(
        matches!(e.access_error().kind(), AccessErrorKind::CannotReplace { why } if why.contains("immutable")),
        "{e}"
    );
    drop(imm);
    assert_eq!(names_in(&d), vec![OsString::from("cloud.cfg")]);
    assert_eq!(fs::read(d.join("cloud.cfg")).unwrap(), b"orig\n");
}

#[test]
fn list_dir_orders_by_bytes_and_follows_links_inside_root() {
    let (dir, root) = image();
    let host = TempDir::new().unwrap();
    let host_file = host.path().join("real.cfg");
    fs::write(&host_file, b"host").unwrap();

    let d = dir.path().join("etc/cloud/cloud.cfg.d");
    fs::create_dir(&d).unwrap();
    fs::create_dir_all(dir.path().join("usr/share")).unwrap();
    fs::write(dir.path().join("usr/share/real.cfg"), b"r").unwrap();
    fs::write(d.join("b.cfg"), b"b").unwrap();
    fs::write(d.join("B.cfg"), b"B").unwrap();
    fs::write(d.join("10.cfg"), b"10").unwrap();
    fs::write(d.join("9.cfg"), b"9").unwrap();
    symlink("/usr/share/real.cfg", d.join("a-link.cfg")).unwrap();
    symlink("../../../usr/share/real.cfg", d.join("a-rel.cfg")).unwrap();
    symlink("/nowhere.cfg", d.join("dangling.cfg")).unwrap();
    // Exists on the host, not in the image: not a file from the image's point of view.
    symlink(&host_file, d.join("host.cfg")).unwrap();
    fs::create_dir(d.join("sub.cfg")).unwrap();
    symlink("/etc", d.join("dirlink.cfg")).unwrap();
    nix::unistd::mkfifo(
        &d.join("fifo.cfg"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    fs::write(d.join("é.cfg"), b"e").unwrap();

    let entries = within_5s(move || root.list_dir(p("etc/cloud/cloud.cfg.d")).unwrap().unwrap());
    let got: Vec<(String, bool)> = entries
        .iter()
        .map(
            |DirEntry {
                 name,
                 is_regular_file,
             }| { (name.to_string_lossy().into_owned(), *is_regular_file) },
        )
        .collect();
    let want: Vec<(String, bool)> = [
        ("10.cfg", true),
        ("9.cfg", true),
        ("B.cfg", true),
        ("a-link.cfg", true),
        ("a-rel.cfg", true),
        ("b.cfg", true),
        ("dangling.cfg", false),
        ("dirlink.cfg", false),
        ("fifo.cfg", false),
        ("host.cfg", false),
        ("sub.cfg", false),
        ("é.cfg", true),
    ]
    .iter()
    .map(|(n, r)| (n.to_string(), *r))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn list_dir_through_links_and_of_non_directories() {
    let (dir, root) = image();
    fs::create_dir_all(dir.path().join("usr/share/cloud.cfg.d")).unwrap();
    fs::write(dir.path().join("usr/share/cloud.cfg.d/1.cfg"), b"1").unwrap();
    symlink(
        "/usr/share/cloud.cfg.d",
        dir.path().join("etc/cloud/cloud.cfg.d"),
    )
    .unwrap();
    let entries = root.list_dir(p("etc/cloud/cloud.cfg.d")).unwrap().unwrap();
    assert_eq!(
        entries,
        vec![DirEntry {
            name: "1.cfg".into(),
            is_regular_file: true
        }]
    );
    // The root itself can be listed.
    let top = root.list_dir(p("/")).unwrap().unwrap();
    let names: Vec<_> = top.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, vec![OsString::from("etc"), OsString::from("usr")]);

    fs::write(dir.path().join("etc/cloud/file"), b"").unwrap();
    let e = root.list_dir(p("etc/cloud/file")).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            AccessErrorKind::NotADirectory {
                kind: "a regular file"
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("not a directory"), "{e}");
}

#[test]
fn error_messages_are_one_line_and_name_the_path() {
    let (dir, root) = image();
    symlink("b", dir.path().join("etc/cloud/a")).unwrap();
    symlink("a", dir.path().join("etc/cloud/b")).unwrap();
    let errors = [
        root.read_file(p("etc/cloud/missing.cfg")).unwrap_err(),
        root.read_file(p("etc/cloud")).unwrap_err(),
        root.read_file(p("etc/cloud/a")).unwrap_err(),
        root.prepare_write(p("etc/x/y"), b"").unwrap_err(),
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.ends_with(')'), "should end with advice: {msg}");
        assert!(e.path().starts_with(dir.path()));
    }
}
