//! Real XFS and btrfs filesystems for the user-space reader tests, made by
//! the real tools (xfsprogs, btrfs-progs), and a bounded walk of a whole
//! filesystem through `FsRead`.

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common_images::{LoopDevice, MIB, Mount, path_str, run, sparse_file};
use prepare_image::access::fs::{FsRead, NodeKind};
use prepare_image::access::image::block::{FileSource, Window};

/// A tree with what a root filesystem has and what trips readers: empty and
/// odd-sized files, inline and extent-sized data, a sparse file, a directory
/// too big for one block, absolute, relative, long and dangling links.
pub fn tree(dir: &Path) -> PathBuf {
    let root = dir.join("tree");
    let mk = |p: &str, body: &[u8]| put(&root, p, body);
    mk("etc/cloud/cloud.cfg", b"datasource_list: [NoCloud]\n");
    mk("etc/hostname", b"guest\n");
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for size in [
        0,
        1,
        59,
        60,
        61,
        156,
        4095,
        4096,
        4097,
        65537,
        3 * MIB as usize + 7,
    ] {
        mk(&format!("data/size-{size}"), &noise(size));
    }
    mk(
        "data/text",
        &b"a line that compresses well\n".repeat(100_000),
    );
    let sparse = root.join("data/sparse");
    let f = std::fs::File::create(&sparse).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 5 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"end", 9 * MIB).unwrap();
    for i in 0..600 {
        mk(
            &format!("many/entry-with-a-long-name-{i:05}"),
            format!("{i}\n").as_bytes(),
        );
    }
    symlink("/etc/hostname", root.join("etc/abs-link")).unwrap();
    symlink("../../etc/hostname", root.join("data/rel-link")).unwrap();
    symlink("d/".repeat(150), root.join("etc/long-link")).unwrap();
    symlink("/nowhere", root.join("etc/dangling")).unwrap();
    symlink("etc", root.join("etc-link")).unwrap();
    // Owners other than root, read from the inode.
    std::os::unix::fs::lchown(root.join("etc/hostname"), Some(1000), Some(1001)).unwrap();
    std::os::unix::fs::lchown(root.join("etc/abs-link"), Some(1002), Some(1003)).unwrap();
    std::os::unix::fs::lchown(root.join("many"), Some(1004), Some(1005)).unwrap();
    root
}

/// Writes `root/rel` with `body`, making its directories.
pub fn put(root: &Path, rel: &str, body: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

/// How a filesystem under test is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// XFS v5 (mkfs.xfs defaults), populated through a kernel mount.
    Xfs5,
    /// XFS v4 (`-m crc=0`) from a prototype file: the kernel here cannot
    /// mount it, so its reference is the source tree.
    Xfs4,
    /// btrfs from `mkfs.btrfs --rootdir`.
    Btrfs,
    /// btrfs populated through a mount with `compress-force=zstd`.
    BtrfsZstd,
    /// btrfs populated through a mount with `compress-force=lzo`.
    BtrfsLzo,
}

impl Made {
    pub fn all() -> [Made; 5] {
        [
            Made::Xfs5,
            Made::Xfs4,
            Made::Btrfs,
            Made::BtrfsZstd,
            Made::BtrfsLzo,
        ]
    }

    pub fn fstype(self) -> &'static str {
        match self {
            Made::Xfs5 | Made::Xfs4 => "xfs",
            _ => "btrfs",
        }
    }

    pub fn load(self, window: Window) -> std::io::Result<Box<dyn FsRead>> {
        match self.fstype() {
            "xfs" => prepare_image::access::fs::xfs::load(window),
            _ => prepare_image::access::fs::btrfs::load(window),
        }
    }

    /// The filesystem `dir/NAME.fs` holding `tree`.
    pub fn make(self, dir: &Path, tree: &Path) -> PathBuf {
        let file = dir.join(format!("{self:?}.fs"));
        let f = path_str(&file);
        sparse_file(
            &file,
            if self.fstype() == "xfs" {
                300 * MIB
            } else {
                120 * MIB
            },
        );
        match self {
            Made::Xfs5 => {
                run("mkfs.xfs", &["-q", f]);
                populate(dir, &file, "xfs", "nosuid,nodev", tree);
            }
            Made::Xfs4 => {
                let proto = dir.join("v4.proto");
                std::fs::write(&proto, prototype(tree)).unwrap();
                run(
                    "mkfs.xfs",
                    &["-q", "-m", "crc=0", "-p", path_str(&proto), f],
                );
            }
            Made::Btrfs => {
                run("mkfs.btrfs", &["-q", "--rootdir", path_str(tree), f]);
            }
            Made::BtrfsZstd | Made::BtrfsLzo => {
                run("mkfs.btrfs", &["-q", f]);
                let how = if self == Made::BtrfsZstd {
                    "zstd"
                } else {
                    "lzo"
                };
                populate(dir, &file, "btrfs", &format!("compress-force={how}"), tree);
            }
        }
        file
    }
}

fn populate(dir: &Path, file: &Path, fstype: &str, options: &str, tree: &Path) {
    let device = LoopDevice::attach(file, &[]);
    let at = dir.join("populate");
    let mount = Mount::new(&device.path, &at, fstype, options);
    run(
        "cp",
        &["-a", &format!("{}/.", tree.display()), path_str(&at)],
    );
    drop(mount);
    drop(device);
    std::fs::remove_dir(&at).unwrap();
}

/// An mkfs.xfs prototype file copying `tree` (names without spaces).
fn prototype(tree: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    fn entries(dir: &Path, out: &mut String) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let name = path.file_name().unwrap().to_str().unwrap();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let (mode, uid, gid) = (md.mode() & 0o777, md.uid(), md.gid());
            if md.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.push_str(&format!(
                    "{name} l--{mode:o} {uid} {gid} {}\n",
                    target.display()
                ));
            } else if md.is_dir() {
                out.push_str(&format!("{name} d--{mode:o} {uid} {gid}\n"));
                entries(&path, out);
                out.push_str("$\n");
            } else {
                out.push_str(&format!(
                    "{name} ---{mode:o} {uid} {gid} {}\n",
                    path.display()
                ));
            }
        }
    }
    let mut out = String::from("dummy\n0 0\nd--755 0 0\n");
    entries(tree, &mut out);
    out.push_str("$\n");
    out
}

/// The whole of a filesystem file as a window.
pub fn whole(file: &Path) -> Window {
    Window::whole(Arc::new(
        FileSource::new(std::fs::File::open(file).unwrap()).unwrap(),
    ))
}

/// What a walk of a whole filesystem counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub files: u64,
    pub bytes: u64,
    pub links: u64,
    pub dirs: u64,
    /// Calls that answered with an error (a walk of a damaged image).
    pub errors: u64,
}

/// Visits every name of `fs` below `/`, at most `budget` names and `depth`
/// levels: lstat, then read_link, list or the whole content (streamed,
/// 64 KiB at a time, at most `max_file` bytes). `seen` gets each name with
/// what it read.
pub fn walk_all(
    fs: &dyn FsRead,
    budget: usize,
    depth: usize,
    max_file: u64,
    seen: &mut dyn FnMut(&Path, Seen),
) -> Counts {
    let mut counts = Counts::default();
    let mut queue = vec![(PathBuf::from("/"), 0)];
    let mut visited = 0;
    while let Some((path, level)) = queue.pop() {
        visited += 1;
        if visited > budget {
            break;
        }
        let st = match fs.lstat(&path) {
            Ok(Some(st)) => st,
            Ok(None) => {
                seen(&path, Seen::Missing);
                continue;
            }
            Err(_) => {
                counts.errors += 1;
                continue;
            }
        };
        match st.kind {
            NodeKind::Directory => match fs.list(&path) {
                Ok(mut names) => {
                    counts.dirs += 1;
                    names.sort();
                    if level < depth {
                        for n in names.iter().rev() {
                            queue.push((path.join(n), level + 1));
                        }
                    }
                    seen(&path, Seen::Dir(names));
                }
                Err(_) => counts.errors += 1,
            },
            NodeKind::Symlink => match fs.read_link(&path) {
                Ok(target) => {
                    counts.links += 1;
                    seen(&path, Seen::Link(target));
                }
                Err(_) => counts.errors += 1,
            },
            NodeKind::File => {
                let read = fs.open(&path).and_then(|f| {
                    let mut bytes = Vec::new();
                    let mut chunk = vec![0u8; 64 * 1024];
                    let mut f = f.take(max_file);
                    loop {
                        let n = f.read(&mut chunk)?;
                        if n == 0 {
                            break Ok(bytes);
                        }
                        bytes.extend_from_slice(&chunk[..n]);
                    }
                });
                match read {
                    Ok(bytes) => {
                        counts.files += 1;
                        counts.bytes += bytes.len() as u64;
                        seen(&path, Seen::File(st.size, bytes));
                    }
                    Err(_) => counts.errors += 1,
                }
            }
            _ => seen(&path, Seen::Other),
        }
    }
    counts
}

/// One name as the walk read it.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Missing,
    Dir(Vec<OsString>),
    Link(PathBuf),
    /// The stated size and the bytes read.
    File(u64, Vec<u8>),
    Other,
}
