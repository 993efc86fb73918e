//! Filesystems read in user space, and the one confined path walk that
//! every root uses.
//!
//! An image's filesystem is read by a reader implementing [`FsRead`]
//! (ext4 here; XFS, btrfs and NTFS readers implement the same trait). A
//! reader only ever sees *resolved* paths: absolute, made of plain names,
//! every parent an existing directory that is not a symlink. Symlinks,
//! `..`, loops and the image root are all handled once, by [`walk`], which
//! works over [`Tree`]: the directory root (`access::root`, openat2) and a
//! user-space reader are both trees, so `Root` behaves the same on either
//! and its callers (planner, `status`, `doctor`, `clean`) cannot tell them
//! apart.
//!
//! Errors: a reader returns `std::io::Error` with kind `NotFound` (no such
//! name), `NotADirectory`, `InvalidData` (a corrupt or hostile image; the
//! message says what), `Unsupported` (a feature the reader does not read),
//! or whatever reading the disk failed with. `access::root` turns them
//! into an `AccessError` naming the path.

pub mod btrfs;
pub mod ext4;
mod inode_fs;
pub mod ntfs;
pub mod xfs;

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Seek};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Component, Path, PathBuf};

use crate::access::root::AccessErrorKind;

/// The kernel's own limit (MAXSYMLINKS); matching it means we accept exactly the trees the image's
/// own boot would accept.
pub const MAX_SYMLINK_HOPS: u32 = 40;

/// Longest symlink target a reader returns (PATH_MAX): the kernel refuses longer ones, and a
/// crafted inode may claim gigabytes.
pub const MAX_LINK_TARGET: u64 = 4096;

/// Most names a reader lists in one directory: far beyond any real `/etc`, small enough that a
/// crafted directory cannot exhaust memory.
pub const MAX_DIR_ENTRIES: usize = 1 << 20;

/// What a name is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Directory,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
    Unknown,
}

impl NodeKind {
    /// As the directory root's messages name it ("a FIFO").
    pub fn article_name(self) -> &'static str {
        match self {
            NodeKind::File => "a regular file",
            NodeKind::Directory => "a directory",
            NodeKind::Fifo => "a FIFO",
            NodeKind::CharDevice => "a character device",
            NodeKind::BlockDevice => "a block device",
            NodeKind::Socket => "a socket",
            NodeKind::Symlink => "a symbolic link",
            NodeKind::Unknown => "of an unknown file type",
        }
    }
}

/// `lstat` of one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStat {
    pub kind: NodeKind,
    /// Bytes (for a symlink, the length of its target).
    pub size: u64,
    /// Permission bits, including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A regular file opened for streaming.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// A regular file opened by a `Root`: a host file when the root is a directory, so callers that
/// hand it to another process (a decompressor's stdin) can do so without a copy.
pub enum Stream {
    File(std::fs::File),
    Reader(Box<dyn ReadSeek>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::File(f) => f.read(buf),
            Stream::Reader(r) => r.read(buf),
        }
    }
}

impl Seek for Stream {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        match self {
            Stream::File(f) => f.seek(to),
            Stream::Reader(r) => r.seek(to),
        }
    }
}

/// A filesystem read in user space (`Send`: a `Root` may move to another thread). Every `path` is resolved (see the module
/// text): absolute, plain names, no symlink among its parents. Nothing here
/// follows a symlink.
///
/// Implementations cap every size they read from the image before
/// allocating (see [`MAX_LINK_TARGET`], [`MAX_DIR_ENTRIES`]); callers cap
/// file contents through `open` (`Read::take`).
pub trait FsRead: Send {
    /// `Ok(None)` when the name does not exist.
    fn lstat(&self, path: &Path) -> io::Result<Option<NodeStat>>;

    /// The target of a symlink exactly as stored, at most [`MAX_LINK_TARGET`] bytes.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;

    /// A regular file's contents, as a stream.
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadSeek>>;

    /// The names in a directory, without "." and "..", in any order.
    fn list(&self, path: &Path) -> io::Result<Vec<OsString>>;
}

/// A reader's refusal of a journal or log that still holds changes it cannot replay (the
/// filesystem was not shut down cleanly): reading past it would show the stale state.
#[derive(Debug)]
pub struct CannotReplay(pub String);

impl std::fmt::Display for CannotReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CannotReplay {}

impl CannotReplay {
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, self)
    }

    /// Whether a reader's error is this refusal.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<CannotReplay>())
    }
}

/// Runs `f` on a third-party reader, turning a panic into an error: a
/// hostile image must give a one-line error, never a crash.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the filesystem reader failed on {what} ({why}): the image is corrupt or not supported"
                ),
            ))
        }
    }
}

/// What one name in a directory is, for the walk.
#[derive(Debug)]
pub enum Found {
    /// A symlink with this target.
    Link(PathBuf),
    /// Exists and is not a symlink.
    Present,
    Missing,
}

/// A tree the walk can descend: `Dir` is an opened directory (a descriptor, or a resolved
/// path). `None` as the parent means the root.
pub trait Tree {
    type Dir;

    fn probe(&self, parent: Option<&Self::Dir>, name: &OsStr) -> Result<Found, AccessErrorKind>;

    /// Opens `name`, which `probe` found `Present`, as a directory; not a directory is an error.
    fn enter(&self, parent: Option<&Self::Dir>, name: &OsStr)
    -> Result<Self::Dir, AccessErrorKind>;
}

/// The outcome of a walk: the chain of directories down to the parent, and the final name.
#[derive(Debug)]
pub struct Resolved<D> {
    /// Directories from the root down to the parent of `name`.
    pub dirs: Vec<(OsString, D)>,
    /// `None` when the path names the root itself.
    pub name: Option<OsString>,
    pub exists: bool,
}

impl<D> Resolved<D> {
    pub fn parent(&self) -> Option<&D> {
        self.dirs.last().map(|(_, d)| d)
    }

    /// Root-relative path (no leading '/') of what the walk named.
    pub fn rel_path(&self) -> PathBuf {
        self.dirs
            .iter()
            .map(|(n, _)| n.as_os_str())
            .chain(self.name.as_deref())
            .collect()
    }
}

enum Step {
    Up,
    Down(OsString),
}

fn steps(path: &Path) -> (bool, Vec<Step>) {
    let mut absolute = false;
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => absolute = true,
            Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => out.push(Step::Up),
            Component::Normal(n) => out.push(Step::Down(n.to_os_string())),
        }
    }
    (absolute, out)
}

/// Resolves `rel` the way the kernel would with the tree's root as `/`: symlinks are followed
/// (an absolute target starts again at the root, `..` at the root stays there), at most
/// [`MAX_SYMLINK_HOPS`] of them. The final component need not exist (`exists: false`), so
/// callers can say where a missing file was looked for.
pub fn walk<T: Tree>(tree: &T, rel: &Path) -> Result<Resolved<T::Dir>, AccessErrorKind> {
    let (_, initial) = steps(rel);
    let mut queue: VecDeque<Step> = initial.into();
    let mut dirs: Vec<(OsString, T::Dir)> = Vec::new();
    let mut hops = 0;

    while let Some(step) = queue.pop_front() {
        let name = match step {
            Step::Up => {
                // At the root, ".." is the root, as for any process chrooted there.
                dirs.pop();
                continue;
            }
            Step::Down(name) => name,
        };
        let parent = dirs.last().map(|(_, d)| d);
        match tree.probe(parent, &name)? {
            Found::Link(target) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(AccessErrorKind::TooManyLinks);
                }
                if target.as_os_str().is_empty() {
                    return Err(AccessErrorKind::NotFound);
                }
                let (absolute, target_steps) = steps(&target);
                if absolute {
                    dirs.clear();
                }
                for s in target_steps.into_iter().rev() {
                    queue.push_front(s);
                }
            }
            Found::Present if queue.is_empty() => {
                return Ok(Resolved {
                    dirs,
                    name: Some(name),
                    exists: true,
                });
            }
            Found::Present => {
                let dir = tree.enter(parent, &name)?;
                dirs.push((name, dir));
            }
            Found::Missing if queue.is_empty() => {
                return Ok(Resolved {
                    dirs,
                    name: Some(name),
                    exists: false,
                });
            }
            Found::Missing => return Err(AccessErrorKind::NotFound),
        }
    }
    // The path ended on a directory (e.g. "a/b/.." or a link to "/"): name that directory.
    let name = dirs.pop().map(|(name, _)| name);
    Ok(Resolved {
        dirs,
        name,
        exists: true,
    })
}

/// A user-space reader as a [`Tree`]: a directory is its resolved absolute path.
pub struct ReaderTree<'a>(pub &'a dyn FsRead);

impl ReaderTree<'_> {
    pub fn absolute(parent: Option<&PathBuf>, name: &OsStr) -> PathBuf {
        parent
            .map_or_else(|| PathBuf::from("/"), Clone::clone)
            .join(name)
    }
}

/// A reader's error in the directory root's terms, so both roots report alike.
pub fn kind_from_reader(e: io::Error) -> AccessErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => AccessErrorKind::NotFound,
        io::ErrorKind::NotADirectory => {
            AccessErrorKind::Other(io::Error::from_raw_os_error(libc::ENOTDIR))
        }
        _ => AccessErrorKind::Other(e),
    }
}

impl Tree for ReaderTree<'_> {
    type Dir = PathBuf;

    fn probe(&self, parent: Option<&PathBuf>, name: &OsStr) -> Result<Found, AccessErrorKind> {
        let path = Self::absolute(parent, name);
        match self.0.lstat(&path).map_err(kind_from_reader)? {
            None => Ok(Found::Missing),
            Some(st) if st.kind == NodeKind::Symlink => self
                .0
                .read_link(&path)
                .map(Found::Link)
                .map_err(kind_from_reader),
            Some(_) => Ok(Found::Present),
        }
    }

    fn enter(&self, parent: Option<&PathBuf>, name: &OsStr) -> Result<PathBuf, AccessErrorKind> {
        let path = Self::absolute(parent, name);
        match self.0.lstat(&path).map_err(kind_from_reader)? {
            None => Err(AccessErrorKind::NotFound),
            Some(st) if st.kind == NodeKind::Directory => Ok(path),
            Some(_) => Err(AccessErrorKind::Other(io::Error::from_raw_os_error(
                libc::ENOTDIR,
            ))),
        }
    }
}

/// The user-space reader for a filesystem kind, loaded on `window`; `None` when there is none
/// (then a root user falls back to the kernel mount). Readers of further kinds add an arm here.
pub fn reader_for(
    kind: &crate::access::image::fstype::FsKind,
    window: crate::access::image::block::Window,
) -> Option<io::Result<Box<dyn FsRead>>> {
    use crate::access::image::fstype::FsKind;
    match kind {
        FsKind::Ext { .. } => {
            Some(ext4::Ext4Fs::load(window).map(|fs| Box::new(fs) as Box<dyn FsRead>))
        }
        FsKind::Xfs => Some(xfs::load(window)),
        // The default subvolume; `btrfs::load_root` finds a root kept in another one.
        FsKind::Btrfs => Some(btrfs::load(window)),
        _ => None,
    }
}
