//! ext2, ext3 and ext4 read in user space with the `ext4-view` crate.
//!
//! `ext4-view` replays the journal in memory when it loads (committed
//! transactions are mapped over the blocks they replace; nothing is
//! written), so reads show what the guest will boot with even when the
//! image was not shut down cleanly.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType};

use super::{FsRead, MAX_DIR_ENTRIES, MAX_LINK_TARGET, NodeKind, NodeStat, ReadSeek, guarded};
use crate::access::image::block::{BlockSource, Window};

/// An ext2/3/4 filesystem in a window of a disk.
pub struct Ext4Fs {
    state: Arc<Mutex<State>>,
}

/// `ext4-view` shares its state through `Rc`, so neither `Ext4` nor an open `File` may be used
/// from two threads at once, while a `Root` must be movable to another thread. Every `Rc` clone
/// the crate makes lives here, behind one mutex: the filesystem and every open file, so each
/// reference count change happens under that lock.
struct State {
    fs: Ext4,
    files: Vec<Option<ext4_view::File>>,
}

// SAFETY: see `State`: all values holding the crate's `Rc`s are only reached through the one
// `Mutex<State>` (an open stream keeps an index, not the `File`), and transient ones are created
// and dropped while it is held.
unsafe impl Send for State {}

impl State {
    fn locked(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
        // A panic inside a reader call was caught and reported; the state is still usable.
        state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Ext4Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ext4Fs")
    }
}

/// The partition as `ext4-view` reads it; `superblock`, when set, is read in place of the one
/// on disk (see `Ext4Fs::load`).
struct Source {
    window: Window,
    superblock: Option<Vec<u8>>,
}

/// Where the primary superblock lies in the partition.
const SUPERBLOCK_AT: u64 = 1024;

impl Ext4Read for Source {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.window.read_at(dst, start_byte)?;
        if let Some(sb) = &self.superblock {
            let end = start_byte.saturating_add(dst.len() as u64);
            let sb_end = SUPERBLOCK_AT + sb.len() as u64;
            let from = start_byte.max(SUPERBLOCK_AT);
            let to = end.min(sb_end);
            if from < to {
                dst[(from - start_byte) as usize..(to - start_byte) as usize].copy_from_slice(
                    &sb[(from - SUPERBLOCK_AT) as usize..(to - SUPERBLOCK_AT) as usize],
                );
            }
        }
        Ok(())
    }
}

fn to_io(e: Ext4Error) -> io::Error {
    match e {
        Ext4Error::NotFound => io::Error::from(io::ErrorKind::NotFound),
        Ext4Error::NotADirectory => io::Error::from(io::ErrorKind::NotADirectory),
        Ext4Error::Corrupt(c) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt ext4 filesystem: {c}"),
        ),
        Ext4Error::Incompatible(i) => io::Error::new(
            io::ErrorKind::Unsupported,
            format!("ext4 feature not readable in user space: {i}"),
        ),
        e => io::Error::other(format!("ext4: {e}")),
    }
}

fn kind_of(t: FileType) -> NodeKind {
    match t {
        FileType::Regular => NodeKind::File,
        FileType::Directory => NodeKind::Directory,
        FileType::Symlink => NodeKind::Symlink,
        FileType::Fifo => NodeKind::Fifo,
        FileType::CharacterDevice => NodeKind::CharDevice,
        FileType::BlockDevice => NodeKind::BlockDevice,
        FileType::Socket => NodeKind::Socket,
    }
}

fn ext4_path(path: &Path) -> io::Result<ext4_view::Path<'_>> {
    ext4_view::Path::try_from(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a valid ext4 path", path.display()),
        )
    })
}

impl Ext4Fs {
    /// Loads the superblock, group descriptors and journal (replayed in memory).
    pub fn load(window: Window) -> io::Result<Ext4Fs> {
        // `needs_recovery` over an empty journal (a mount that ended before writing anything)
        // is read as the kernel's no-op replay leaves it: without the flag, whose journal
        // `ext4-view` would otherwise load, and may refuse, for nothing.
        // (What cannot be read here, ext4-view reads and reports itself.)
        let superblock = crate::access::image::unclean::ext_stale_recovery_flag(|buf, at| {
            window.read_at(buf, at)
        })
        .unwrap_or(None);
        guarded("loading ext4", || {
            Ext4::load(Box::new(Source { window, superblock }))
                .map(|fs| Ext4Fs {
                    state: Arc::new(Mutex::new(State {
                        fs,
                        files: Vec::new(),
                    })),
                })
                .map_err(to_io)
        })
    }
}

impl FsRead for Ext4Fs {
    fn lstat(&self, path: &Path) -> io::Result<Option<NodeStat>> {
        guarded("ext4 lstat", || {
            let state = State::locked(&self.state);
            match state.fs.symlink_metadata(ext4_path(path)?) {
                Ok(m) => Ok(Some(NodeStat {
                    kind: kind_of(m.file_type()),
                    size: m.len(),
                    mode: u32::from(m.mode()),
                    uid: m.uid(),
                    gid: m.gid(),
                })),
                Err(Ext4Error::NotFound) => Ok(None),
                Err(e) => Err(to_io(e)),
            }
        })
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        guarded("ext4 readlink", || {
            let p = ext4_path(path)?;
            // The reader allocates the whole target: check the size it would allocate first.
            let state = State::locked(&self.state);
            let size = state.fs.symlink_metadata(p).map_err(to_io)?.len();
            if size > MAX_LINK_TARGET {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "corrupt ext4 filesystem: symlink {} claims a target of {size} bytes",
                        path.display()
                    ),
                ));
            }
            let target = state.fs.read_link(p).map_err(to_io)?;
            Ok(PathBuf::from(OsString::from_vec(target.as_ref().to_vec())))
        })
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadSeek>> {
        guarded("ext4 open", || {
            let mut state = State::locked(&self.state);
            let file = state.fs.open(ext4_path(path)?).map_err(to_io)?;
            let index = match state.files.iter().position(Option::is_none) {
                Some(free) => {
                    state.files[free] = Some(file);
                    free
                }
                None => {
                    state.files.push(Some(file));
                    state.files.len() - 1
                }
            };
            Ok(Box::new(Stream {
                state: Arc::clone(&self.state),
                index,
            }) as Box<dyn ReadSeek>)
        })
    }

    fn list(&self, path: &Path) -> io::Result<Vec<OsString>> {
        guarded("ext4 list", || {
            let mut names = Vec::new();
            let state = State::locked(&self.state);
            for entry in state.fs.read_dir(ext4_path(path)?).map_err(to_io)? {
                let entry = entry.map_err(to_io)?;
                let name = entry.file_name();
                let bytes = name.as_ref();
                if bytes == b"." || bytes == b".." {
                    continue;
                }
                if names.len() >= MAX_DIR_ENTRIES {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} has more than {MAX_DIR_ENTRIES} entries", path.display()),
                    ));
                }
                names.push(OsString::from_vec(bytes.to_vec()));
            }
            Ok(names)
        })
    }
}

/// An open file: its `ext4_view::File` stays in `State` (see there); reads also turn a reader
/// panic into an error.
struct Stream {
    state: Arc<Mutex<State>>,
    index: usize,
}

impl Stream {
    fn with_file<T>(&self, f: impl FnOnce(&mut ext4_view::File) -> io::Result<T>) -> io::Result<T> {
        guarded("ext4 read", || {
            let mut state = State::locked(&self.state);
            match state.files.get_mut(self.index).and_then(Option::as_mut) {
                Some(file) => f(file),
                None => Err(io::Error::other("ext4 file closed")),
            }
        })
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.with_file(|file| file.read(buf))
    }
}

impl io::Seek for Stream {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        self.with_file(|file| file.seek(to))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut state = State::locked(&self.state);
        if let Some(slot) = state.files.get_mut(self.index) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::access::image::block::FileSource;
    use crate::access::root::{EntryKind, EntryStat, Root};

    /// A small tree with the links a hostile or odd image has: absolute, relative, escaping
    /// with `..`, looping, dangling, and a directory link.
    fn tree(dir: &Path) {
        let mk = |p: &str, body: &str| {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        };
        mk("etc/cloud/cloud.cfg", "users: [default]\n");
        mk(
            "etc/cloud/cloud.cfg.d/90_dpkg.cfg",
            "datasource_list: [NoCloud]\n",
        );
        mk("etc/hostname", "guest\n");
        mk("usr/bin/python3.11", "");
        // mkfs makes one in every ext4 root.
        std::fs::create_dir_all(dir.join("lost+found")).unwrap();
        symlink(
            "/etc/hostname",
            dir.join("etc/cloud/cloud.cfg.d/50_abs.cfg"),
        )
        .unwrap();
        symlink(
            "../../../../../etc/hostname",
            dir.join("etc/cloud/cloud.cfg.d/60_up.cfg"),
        )
        .unwrap();
        symlink("loop-b", dir.join("etc/loop-a")).unwrap();
        symlink("loop-a", dir.join("etc/loop-b")).unwrap();
        symlink("/nowhere", dir.join("etc/dangling")).unwrap();
        symlink("usr/bin", dir.join("bin")).unwrap();
        symlink("python3.11", dir.join("usr/bin/python3")).unwrap();
        std::fs::create_dir_all(dir.join("var/lib/cloud/instances/i-1")).unwrap();
        symlink("/", dir.join("var/lib/cloud/instance")).unwrap();
        mk(&format!("etc/{}", "long".repeat(60)), "long name\n");
        // Longer than the 59 bytes stored in the inode. (A target with a name over 255 bytes is
        // the one known difference: ext4-view calls it corrupt, the kernel ENAMETOOLONG.)
        symlink("d/".repeat(150), dir.join("etc/long-link")).unwrap();
    }

    fn ext4_image(dir: &Path, image: &Path) {
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(dir)
            .arg(image)
            .arg("8M")
            .status()
            .expect("mkfs.ext4 (e2fsprogs) runs");
        assert!(status.success());
    }

    fn user_space_root(image: &Path) -> Root {
        let source = Arc::new(FileSource::new(std::fs::File::open(image).unwrap()).unwrap());
        let fs = Ext4Fs::load(Window::whole(source)).unwrap();
        Root::from_reader(Box::new(fs), PathBuf::from("/img"))
    }

    #[test]
    fn the_user_space_root_answers_exactly_as_the_directory_root() {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("tree");
        tree(&dir);
        let image = work.path().join("fs.img");
        ext4_image(&dir, &image);
        let host = Root::open(&dir)
            .unwrap()
            .with_display(PathBuf::from("/img"));
        let user = user_space_root(&image);
        // A directory's size is its filesystem's block bookkeeping, not content: the host tree
        // and the image are different filesystems.
        let content = |mut e: EntryStat| {
            if e.kind == EntryKind::Directory {
                e.size = 0;
            }
            e
        };
        let probes = [
            "etc/cloud/cloud.cfg",
            "/etc/cloud/cloud.cfg.d",
            "etc/cloud/cloud.cfg.d/50_abs.cfg",
            "etc/cloud/cloud.cfg.d/60_up.cfg",
            "etc/loop-a",
            "etc/dangling",
            "bin/python3",
            "bin",
            "/",
            "etc/hostname/x",
            "missing/x",
            "var/lib/cloud/instance/etc/hostname",
            "var/lib/cloud",
            "etc/long-link",
            "etc/cloud/../../../etc/hostname",
        ];
        for p in probes {
            let p = Path::new(p);
            let answer = |root: &Root| {
                let read = root
                    .read_file(p)
                    .map(|c| format!("{c:?}"))
                    .map_err(|e| e.to_string());
                let list = root
                    .list_dir(p)
                    .map(|l| format!("{l:?}"))
                    .map_err(|e| e.to_string());
                let lstat = root
                    .symlink_metadata(p)
                    .map(|s| format!("{:?}", s.map(content)))
                    .map_err(|e| e.to_string());
                let link = root
                    .read_link(p)
                    .map(|l| format!("{l:?}"))
                    .map_err(|e| e.to_string());
                let resolved = root
                    .resolve(p)
                    .map(|l| format!("{l:?}"))
                    .map_err(|e| e.to_string());
                let planned = root
                    .remove_tree(p, true)
                    .map(|l| format!("{:?}", l.into_iter().map(content).collect::<Vec<_>>()))
                    .map_err(|e| e.to_string());
                [
                    read,
                    list,
                    lstat,
                    link,
                    resolved,
                    planned,
                    Ok(root.exists(p).to_string()),
                ]
            };
            assert_eq!(answer(&host), answer(&user), "{}", p.display());
        }
    }

    #[test]
    fn a_user_space_root_refuses_writes() {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("tree");
        tree(&dir);
        let image = work.path().join("fs.img");
        ext4_image(&dir, &image);
        let user = user_space_root(&image);
        let e = user
            .prepare_write(Path::new("etc/hostname"), b"x")
            .unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        assert!(user.remove_tree(Path::new("etc"), false).is_err());
    }
}

/// Mutated small images: every answer is a value or an error, never a panic or an abort on a
/// huge allocation (a bounded run in CI; more with PROPTEST_CASES).
#[cfg(test)]
mod fuzz {
    use std::path::Path;
    use std::sync::{Arc, OnceLock};

    use proptest::prelude::*;

    use super::*;
    use crate::access::image::block::Bytes;
    use crate::access::root::Root;

    /// A 1 MiB ext4 (1 KiB blocks, journal) holding a cloud-init tree with links.
    fn pristine() -> &'static Vec<u8> {
        static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
        IMAGE.get_or_init(|| {
            let work = tempfile::tempdir().unwrap();
            let tree = work.path().join("tree");
            std::fs::create_dir_all(tree.join("etc/cloud/cloud.cfg.d")).unwrap();
            std::fs::write(
                tree.join("etc/cloud/cloud.cfg"),
                "users: [default]\n".repeat(80),
            )
            .unwrap();
            std::fs::write(tree.join("etc/cloud/cloud.cfg.d/90.cfg"), "a: 1\n").unwrap();
            std::os::unix::fs::symlink("/etc/cloud/cloud.cfg", tree.join("etc/link")).unwrap();
            std::os::unix::fs::symlink("d/".repeat(40), tree.join("etc/long")).unwrap();
            let image = work.path().join("fs.img");
            let ok = std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-b", "1024", "-N", "32", "-d"])
                .arg(&tree)
                .arg(&image)
                .arg("1M")
                .status()
                .expect("mkfs.ext4 (e2fsprogs) runs")
                .success();
            assert!(ok);
            std::fs::read(image).unwrap()
        })
    }

    /// What `status` reads, through the confined walk.
    fn read_all(root: &Root) {
        let _ = root.read_file_prefix(Path::new("etc/cloud/cloud.cfg"), 1 << 20);
        let _ = root.list_dir(Path::new("etc/cloud/cloud.cfg.d"));
        let _ = root.read_file(Path::new("etc/link"));
        let _ = root.read_link(Path::new("etc/long"));
        let _ = root.list_dir(Path::new("/"));
        let _ = root.remove_tree(Path::new("etc"), true);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn a_mutated_image_gives_an_answer_never_a_crash(
            flips in proptest::collection::vec((0usize..(80 * 1024), any::<u8>()), 1..24)
        ) {
            let mut bytes = pristine().clone();
            for (at, value) in flips {
                bytes[at] = value;
            }
            let source: Arc<dyn BlockSource> = Arc::new(Bytes(bytes));
            if let Ok(fs) = Ext4Fs::load(Window::whole(source)) {
                read_all(&Root::from_reader(Box::new(fs), PathBuf::from("/img")));
            }
        }
    }

    #[test]
    fn the_pristine_image_reads() {
        let source: Arc<dyn BlockSource> = Arc::new(Bytes(pristine().clone()));
        let root = Root::from_reader(
            Box::new(Ext4Fs::load(Window::whole(source)).unwrap()),
            PathBuf::from("/img"),
        );
        let cfg = root.read_file(Path::new("etc/link")).unwrap();
        assert_eq!(cfg.path, Path::new("etc/cloud/cloud.cfg"));
        assert_eq!(cfg.bytes.len(), 17 * 80);
    }
}
