//! File access inside an untrusted image root (a mounted image, or `/`).
//!
//! An image is data we did not make: its `etc/cloud/cloud.cfg` may be a symlink to `/etc/shadow`, a FIFO
//! that would hang a reader, or a device node. Following such a link with ordinary path functions would
//! read or rewrite the *host's* file. So every name is looked up here, one component at a time, relative
//! to directory descriptors that were themselves opened with openat2(2) and
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`: symlinks are interpreted as the booted image would see them
//! (an absolute target starts again at the image root, `..` stops at it), and the kernel refuses anything
//! that would leave the root even if the tree changes under us.
//!
//! Symlinks are expanded by us (not the kernel) so that we can report the path a link really names; each
//! open then uses `RESOLVE_NO_SYMLINKS` on a single, already resolved component, so what we open is
//! exactly what we report.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use xattr::FileExt;

pub use crate::access::commit::CommitError;
use crate::access::fs::{self, Found, FsRead, Stream, Tree};

mod userspace;

/// Longest file name most Linux file systems accept (NAME_MAX).
pub(super) const NAME_MAX: usize = 255;

/// Mode of files we create from nothing: what a package would install cloud.cfg with.
const NEW_FILE_MODE: u32 = 0o644;

/// An opened image root: a directory (a mounted image, a chroot, `/`), or a filesystem read in user
/// space (see `access::fs`). Both answer every read alike, through the same confined walk; only a
/// directory can be written. Holding a descriptor (not just the path) means every later lookup is
/// anchored to the same directory even if the path is remounted or renamed meanwhile.
pub struct Root {
    backend: Backend,
    path: PathBuf,
}

enum Backend {
    Directory(OwnedFd),
    Reader(Box<dyn FsRead>),
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.backend {
            Backend::Directory(_) => "directory",
            Backend::Reader(_) => "user-space reader",
        };
        f.debug_struct("Root")
            .field("path", &self.path)
            .field("backend", &backend)
            .finish()
    }
}

/// A regular file read from the image, with the metadata a rewrite must preserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContents {
    /// Root-relative path of the file actually read (after following symlinks), without a leading '/'.
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// Permission bits, including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One name in a listed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    /// What cloud-init's `os.path.isfile()` would say when run inside the image: symlinks are followed
    /// (inside the root), and anything that cannot be resolved counts as "not a file".
    pub is_regular_file: bool,
}

/// A fully written, fsynced temporary file waiting to replace its target. Split from the rename so the
/// caller can decide (e.g. after showing a diff) whether to go ahead; dropping it removes the temp file.
/// `access::commit` renames a set of them into place, all or none.
#[derive(Debug)]
pub struct PendingWrite {
    /// The target's directory, opened for reading so it can be fsynced after the rename.
    pub(super) dir: OwnedFd,
    /// `Some` until the temp file has been renamed into place; `Drop` unlinks it otherwise.
    pub(super) temp: Option<OsString>,
    pub(super) name: OsString,
    pub(super) path: PathBuf,
    /// The file being replaced as it was when the temp file was prepared; `None` for a new file.
    pub(super) original: Option<Original>,
    /// The bytes the caller planned on (see `expecting`): the commit refuses to replace anything else.
    pub(super) expected: Option<Vec<u8>>,
    /// For error messages: the root as the user gave it, and the path the caller asked for.
    pub(super) root_display: PathBuf,
    pub(super) requested: PathBuf,
}

/// Identity of a file about to be replaced: whatever holds its name at commit time must be this inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Original {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) links: u64,
}

/// What `commit` did about the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Root-relative path of the backup: made by this commit, or (see `backup_existed`) already
    /// there; `None` when no suffix was asked for or the file is new.
    pub backup: Option<PathBuf>,
    /// A file already had the backup name and was left alone: it holds an older original, which is the
    /// valuable one to keep.
    pub backup_existed: bool,
}

/// Why an access failed, in the terms a user can act on.
#[derive(Debug)]
pub enum AccessErrorKind {
    NotFound,
    /// The path names something that must not be read or replaced as a file; `kind` is e.g. "a FIFO".
    NotRegular {
        kind: &'static str,
    },
    /// `list_dir` was pointed at something that is not a directory; `kind` is e.g. "a regular file".
    NotADirectory {
        kind: &'static str,
    },
    PermissionDenied,
    ReadOnlyFilesystem,
    /// No space left, or the quota is exhausted.
    NoSpace,
    /// More than 40 symlinks had to be followed: almost always a loop.
    TooManyLinks,
    /// Replacing the file cannot work, found before anything was renamed; `why` says what to do.
    CannotReplace {
        why: String,
    },
    /// The file no longer holds what the plan was made on: another program changed it meanwhile.
    ChangedMeanwhile,
    Other(io::Error),
}

/// A failed access, naming the path as the user would type it on the host (root joined with the path).
#[derive(Debug)]
pub struct AccessError {
    op: Op,
    path: PathBuf,
    resolved: Option<PathBuf>,
    kind: AccessErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    List,
    Resolve,
}

impl AccessError {
    pub fn kind(&self) -> &AccessErrorKind {
        &self.kind
    }

    /// The path the caller asked about, joined to the root as given (e.g. `/mnt/img/etc/cloud/cloud.cfg`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let via = match &self.resolved {
            Some(r) => format!(" (resolved to {})", r.display()),
            None => String::new(),
        };
        let file_name = self
            .path
            .file_name()
            .map_or_else(|| "file".into(), |n| n.to_string_lossy());
        let op = match self.op {
            Op::Read => "read",
            Op::Write => "write",
            Op::List => "list",
            Op::Resolve => "resolve",
        };
        match &self.kind {
            AccessErrorKind::NotRegular { kind } => write!(
                f,
                "{path}{via} is {kind}, not a regular file (replace it with the real {file_name})"
            ),
            AccessErrorKind::NotADirectory { kind } => write!(
                f,
                "{path}{via} is {kind}, not a directory (move it aside, or replace it with a directory)"
            ),
            AccessErrorKind::NotFound => {
                let hint = if self.op == Op::Write {
                    "create the missing directory first, or check the image root"
                } else {
                    "check the path and the image root"
                };
                write!(
                    f,
                    "cannot {op} {path}{via}: no such file or directory ({hint})"
                )
            }
            AccessErrorKind::PermissionDenied => {
                // As root, EACCES/EPERM comes from an immutable/append-only attribute, a security module
                // or a root-squashing network file system, not from missing privileges.
                let hint = if Uid::effective().is_root() {
                    "check for an immutable attribute with lsattr, or a security policy denying it"
                } else {
                    "run as root"
                };
                write!(f, "cannot {op} {path}{via}: permission denied ({hint})")
            }
            AccessErrorKind::ReadOnlyFilesystem => write!(
                f,
                "cannot {op} {path}{via}: read-only file system (remount it read-write, or use --dry-run)"
            ),
            AccessErrorKind::NoSpace => write!(
                f,
                "cannot {op} {path}{via}: no space left on device or quota exceeded \
                 (free some space, or use --dry-run)"
            ),
            AccessErrorKind::TooManyLinks => write!(
                f,
                "cannot {op} {path}{via}: too many levels of symbolic links (fix the symlink loop)"
            ),
            AccessErrorKind::CannotReplace { why } => write!(f, "cannot {op} {path}{via}: {why}"),
            AccessErrorKind::ChangedMeanwhile => write!(
                f,
                "cannot {op} {path}{via}: it changed while prepare-image was running (another program \
                 edited it); run again"
            ),
            AccessErrorKind::Other(e) => write!(f, "cannot {op} {path}{via}: {e}"),
        }
    }
}

/// No `source`: the message already ends with the OS error's text, and a
/// source would print it twice in `error: {:#}`.
impl std::error::Error for AccessError {}

pub(super) fn kind_from_errno(e: Errno) -> AccessErrorKind {
    match e {
        Errno::ENOENT => AccessErrorKind::NotFound,
        Errno::EACCES | Errno::EPERM => AccessErrorKind::PermissionDenied,
        Errno::EROFS => AccessErrorKind::ReadOnlyFilesystem,
        Errno::ENOSPC | Errno::EDQUOT => AccessErrorKind::NoSpace,
        Errno::ELOOP => AccessErrorKind::TooManyLinks,
        Errno::EISDIR => AccessErrorKind::NotRegular {
            kind: "a directory",
        },
        e => AccessErrorKind::Other(io::Error::from_raw_os_error(e as i32)),
    }
}

fn kind_from_io(e: io::Error) -> AccessErrorKind {
    match e.raw_os_error() {
        Some(code) => kind_from_errno(Errno::from_raw(code)),
        None => AccessErrorKind::Other(e),
    }
}

/// Adds what was being done to an xattr failure, which the bare errno would not say.
fn xattr_error(what: &str, name: &OsStr, e: io::Error) -> AccessErrorKind {
    match kind_from_io(e) {
        AccessErrorKind::Other(e) => AccessErrorKind::Other(io::Error::new(
            e.kind(),
            format!("{what} extended attribute {}: {e}", name.to_string_lossy()),
        )),
        kind => kind,
    }
}

/// Where errors of one operation point: the requested path, plus the resolved one once known.
struct Ctx {
    op: Op,
    root_display: PathBuf,
    requested: PathBuf,
    resolved: Option<PathBuf>,
}

impl Ctx {
    fn new(root: &Root, op: Op, rel: &Path) -> Ctx {
        Ctx {
            op,
            root_display: root.path.clone(),
            requested: lexical(rel),
            resolved: None,
        }
    }

    fn resolved_to(&mut self, resolved: &Path) {
        if resolved != self.requested {
            self.resolved = Some(resolved.to_path_buf());
        }
    }

    fn err(&self, kind: AccessErrorKind) -> AccessError {
        AccessError {
            op: self.op,
            path: self.root_display.join(&self.requested),
            resolved: self.resolved.as_ref().map(|r| self.root_display.join(r)),
            kind,
        }
    }
}

/// `rel` as a root-relative path for messages: no leading '/', no "." components.
fn lexical(rel: &Path) -> PathBuf {
    rel.components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::CurDir | Component::Prefix(_)
            )
        })
        .collect()
}

/// Every open inside the root goes through here. `name` is a single component (or "."), relative to a
/// directory that is itself inside the root: RESOLVE_IN_ROOT pins ".." and absolute paths to `dir`, and
/// RESOLVE_NO_SYMLINKS (which implies RESOLVE_NO_MAGICLINKS) means a link swapped in after we resolved the
/// path is refused rather than followed.
fn open_in(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    if openat2_unavailable() {
        return open_in_without_openat2(dir, name, flags, mode);
    }
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_SYMLINKS,
        );
    // RESOLVE_IN_ROOT returns EAGAIN when a concurrent rename might have let ".." escape; retrying is
    // what the man page recommends.
    let mut attempts = 0;
    loop {
        match openat2(dir, name, how) {
            Err(Errno::EAGAIN) if attempts < 16 => attempts += 1,
            Err(Errno::ENOSYS) => {
                OPENAT2_MISSING.store(true, Ordering::Relaxed);
                return open_in_without_openat2(dir, name, flags, mode);
            }
            result => return result,
        }
    }
}

/// Set once openat2(2) answered ENOSYS (Linux before 5.6, e.g. a CentOS 7
/// guest running the static binary against `/`).
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Forces the openat(2) fallback, to test it on a kernel that has openat2.
pub const FORCE_OPENAT_VARIABLE: &str = "PREPARE_IMAGE_FORCE_OPENAT";

fn openat2_unavailable() -> bool {
    OPENAT2_MISSING.load(Ordering::Relaxed)
        || std::env::var_os(FORCE_OPENAT_VARIABLE).is_some_and(|v| v == "1")
}

/// The same confinement without openat2: `walk` hands us exactly one path
/// component, never `..` (it resolves `..` and symlinks itself), so plain
/// openat(2) relative to a directory inside the root cannot leave the root;
/// O_NOFOLLOW makes a symlink swapped in meanwhile fail (or, with O_PATH,
/// open as a link, which the callers' type checks refuse) rather than be
/// followed.
fn open_in_without_openat2(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlag,
    mode: Mode,
) -> nix::Result<OwnedFd> {
    let single_component = name != ".." && !name.as_bytes().contains(&b'/') && !name.is_empty();
    if !single_component {
        return Err(Errno::EXDEV);
    }
    nix::fcntl::openat(
        dir,
        name,
        flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        mode,
    )
}

fn file_type_name(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "of an unknown file type",
    }
}

pub(super) fn is_type(st: &FileStat, t: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == t.bits()
}

/// The directory root as a tree for `fs::walk`: each directory an O_PATH descriptor opened
/// relative to its (already resolved) parent, so the root stays enforced by the kernel at every step.
struct FdTree<'a>(BorrowedFd<'a>);

impl Tree for FdTree<'_> {
    type Dir = OwnedFd;

    fn probe(&self, parent: Option<&OwnedFd>, name: &OsStr) -> Result<Found, AccessErrorKind> {
        let dir = parent.map_or(self.0, |d| d.as_fd());
        match readlinkat(dir, name) {
            Ok(target) => Ok(Found::Link(PathBuf::from(target))),
            Err(Errno::EINVAL) => Ok(Found::Present),
            Err(Errno::ENOENT) => Ok(Found::Missing),
            Err(e) => Err(kind_from_errno(e)),
        }
    }

    fn enter(&self, parent: Option<&OwnedFd>, name: &OsStr) -> Result<OwnedFd, AccessErrorKind> {
        let dir = parent.map_or(self.0, |d| d.as_fd());
        open_in(
            dir,
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(kind_from_errno)
    }
}

type Resolved = fs::Resolved<OwnedFd>;

/// Resolves `rel` inside the directory `root` (see `fs::walk`).
fn walk(root: BorrowedFd<'_>, rel: &Path) -> Result<Resolved, AccessErrorKind> {
    fs::walk(&FdTree(root), rel)
}

/// The directory holding the walk's final name.
fn parent_fd<'a>(root: BorrowedFd<'a>, r: &'a Resolved) -> BorrowedFd<'a> {
    r.parent().map_or(root, |d| d.as_fd())
}

/// A file opened for reading after checking (through an O_PATH descriptor, which never triggers a device's
/// or FIFO's open) that it is a regular file.
pub(super) fn open_regular(
    parent: BorrowedFd<'_>,
    name: &OsStr,
) -> Result<(File, FileStat), AccessErrorKind> {
    let probe = open_in(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(kind_from_errno)?;
    let st = fstat(&probe).map_err(kind_from_errno)?;
    if !is_type(&st, SFlag::S_IFREG) {
        return Err(AccessErrorKind::NotRegular {
            kind: file_type_name(&st),
        });
    }
    // O_NONBLOCK: should the entry be swapped for a FIFO after the check, the open returns at once
    // instead of waiting for a writer. O_NOCTTY likewise for a terminal.
    let fd = open_in(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(kind_from_errno)?;
    let st2 = fstat(&fd).map_err(kind_from_errno)?;
    if !is_type(&st2, SFlag::S_IFREG) {
        return Err(AccessErrorKind::NotRegular {
            kind: file_type_name(&st2),
        });
    }
    if (st.st_dev, st.st_ino) != (st2.st_dev, st2.st_ino) {
        return Err(AccessErrorKind::Other(io::Error::other(
            "the file was replaced while being opened; retry",
        )));
    }
    Ok((File::from(fd), st2))
}

impl Root {
    /// Opens the root directory the user named. That path itself is trusted (the user typed it); only
    /// what lies beneath it is not.
    pub fn open(path: &Path) -> anyhow::Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::ENOENT => anyhow!("image root {} does not exist", path.display()),
            Errno::ENOTDIR => anyhow!("image root {} is not a directory", path.display()),
            Errno::EACCES => anyhow!(
                "cannot open image root {}: permission denied (run as root)",
                path.display()
            ),
            e => anyhow!("cannot open image root {}: {}", path.display(), e.desc()),
        })?;
        // Open "." through the same path every later open takes, so a root we
        // cannot work in fails here, once, with a clear message.
        open_in(
            fd.as_fd(),
            OsStr::new("."),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| anyhow!("cannot open image root {}: {}", path.display(), e.desc()))?;
        Ok(Root {
            backend: Backend::Directory(fd),
            path: path.to_path_buf(),
        })
    }

    /// A root read in user space by `fs` (an image's filesystem); `display` names it in messages.
    pub fn from_reader(fs: Box<dyn FsRead>, display: PathBuf) -> Root {
        Root {
            backend: Backend::Reader(fs),
            path: display,
        }
    }

    /// Whether this root can be written (a directory); a user-space root is read-only.
    pub fn is_writable_backend(&self) -> bool {
        matches!(self.backend, Backend::Directory(_))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's descriptor, or the user-space reader.
    fn dir(&self) -> Result<BorrowedFd<'_>, &dyn FsRead> {
        match &self.backend {
            Backend::Directory(fd) => Ok(fd.as_fd()),
            Backend::Reader(reader) => Err(reader.as_ref()),
        }
    }

    /// Names the root differently in messages: an image's root is a temp
    /// mountpoint that means nothing to the user, so its errors name the
    /// image and partition instead.
    pub fn with_display(mut self, display: PathBuf) -> Root {
        self.path = display;
        self
    }

    /// Follows symlinks (confined to the root, at most 40 hops) including the final component and returns
    /// the root-relative path (no leading '/', e.g. "etc/cloud/cloud.cfg" or, for a link, "etc/shadow")
    /// of what it names. The final component need not exist (then this is the lexical path under the
    /// resolved parent), so callers can say where a missing file was looked for.
    pub fn resolve(&self, rel: &Path) -> Result<PathBuf, AccessError> {
        let fd = match self.dir() {
            Ok(fd) => fd,
            Err(reader) => return userspace::resolve(self, reader, rel),
        };
        let ctx = Ctx::new(self, Op::Resolve, rel);
        walk(fd, rel).map(|r| r.rel_path()).map_err(|k| ctx.err(k))
    }

    /// Reads a regular file. Never blocks on a FIFO and never opens a device: the type is checked on an
    /// O_PATH descriptor first, and the real open uses O_NONBLOCK.
    pub fn read_file(&self, rel: &Path) -> Result<FileContents, AccessError> {
        self.read_file_prefix(rel, u64::MAX)
    }

    /// Whether `rel` is a regular file after following links inside the root; any failure means "no",
    /// as with Python's `os.path.isfile()`.
    fn is_regular_file(fd: BorrowedFd<'_>, rel: &Path) -> bool {
        let Ok(r) = walk(fd, rel) else { return false };
        let (true, Some(name)) = (r.exists, r.name.as_deref()) else {
            return false;
        };
        open_in(
            parent_fd(fd, &r),
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .and_then(fstat)
        .is_ok_and(|st| is_type(&st, SFlag::S_IFREG))
    }

    /// Lists a directory: `Ok(None)` when it does not exist (a missing drop-in directory is normal).
    /// Entries are sorted by name bytes, which is the order cloud-init applies `*.cfg` drop-ins in.
    pub fn list_dir(&self, rel: &Path) -> Result<Option<Vec<DirEntry>>, AccessError> {
        let fd = match self.dir() {
            Ok(fd) => fd,
            Err(reader) => return userspace::list_dir(self, reader, rel),
        };
        let mut ctx = Ctx::new(self, Op::List, rel);
        let r = match walk(fd, rel) {
            Ok(r) => r,
            Err(AccessErrorKind::NotFound) => return Ok(None),
            Err(k) => return Err(ctx.err(k)),
        };
        let path = r.rel_path();
        ctx.resolved_to(&path);
        if !r.exists {
            return Ok(None);
        }
        let listed = match r.name.as_deref() {
            None => open_in(
                fd,
                OsStr::new("."),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .map_err(|e| ctx.err(kind_from_errno(e)))?,
            Some(name) => {
                let parent = parent_fd(fd, &r);
                let probe = open_in(
                    parent,
                    name,
                    OFlag::O_PATH | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(|e| ctx.err(kind_from_errno(e)))?;
                let st = fstat(&probe).map_err(|e| ctx.err(kind_from_errno(e)))?;
                if !is_type(&st, SFlag::S_IFDIR) {
                    return Err(ctx.err(AccessErrorKind::NotADirectory {
                        kind: file_type_name(&st),
                    }));
                }
                open_in(
                    parent,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(|e| ctx.err(kind_from_errno(e)))?
            }
        };
        let mut listing = Dir::from_fd(listed).map_err(|e| ctx.err(kind_from_errno(e)))?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|e| ctx.err(kind_from_errno(e)))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let entries = names
            .into_iter()
            .map(|name| DirEntry {
                is_regular_file: Self::is_regular_file(fd, &path.join(&name)),
                name,
            })
            .collect();
        Ok(Some(entries))
    }

    /// Opens the directory `rel` (links followed inside the root) for reading, e.g. to lock it;
    /// `Ok(None)` when it does not exist. Also returns its root-relative path.
    pub fn open_dir(&self, rel: &Path) -> Result<Option<(OwnedFd, PathBuf)>, AccessError> {
        let fd = match self.dir() {
            Ok(fd) => fd,
            Err(reader) => return userspace::open_dir(self, reader, rel),
        };
        let mut ctx = Ctx::new(self, Op::Read, rel);
        let r = match walk(fd, rel) {
            Ok(r) if r.exists => r,
            Ok(_) | Err(AccessErrorKind::NotFound) => return Ok(None),
            Err(k) => return Err(ctx.err(k)),
        };
        let path = r.rel_path();
        ctx.resolved_to(&path);
        let (parent, name) = match r.name.as_deref() {
            None => (fd, OsStr::new(".")),
            Some(name) => (parent_fd(fd, &r), name),
        };
        let fd = open_in(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| ctx.err(kind_from_errno(e)))?;
        Ok(Some((fd, path)))
    }

    /// Whether `rel` exists (following symlinks inside the root); used to name where we looked.
    pub fn exists(&self, rel: &Path) -> bool {
        let fd = match self.dir() {
            Ok(fd) => fd,
            Err(reader) => return userspace::exists(reader, rel),
        };
        walk(fd, rel).is_ok_and(|r| r.exists)
    }

    /// First phase of an atomic replace. Links are resolved first, so a symlinked cloud.cfg has its target
    /// rewritten rather than the link replaced by a file. The new contents go to a temp file next to the
    /// target (created with O_EXCL, named ".NAME.prepare-image-….tmp": the leading dot and the non-".cfg"
    /// ending keep cloud-init from ever reading it), which gets the original's owner, mode and every
    /// extended attribute (SELinux label, POSIX ACLs, capabilities...) and is fsynced, so the rename in
    /// `commit` swaps in a complete file whose metadata matches. A missing target is created as
    /// 0644 root:root. On any error the temp file is removed.
    pub fn prepare_write(&self, rel: &Path, contents: &[u8]) -> Result<PendingWrite, AccessError> {
        let fd = match self.dir() {
            Ok(fd) => fd,
            Err(_) => return userspace::prepare_write(self, rel),
        };
        let mut ctx = Ctx::new(self, Op::Write, rel);
        let r = walk(fd, rel).map_err(|k| ctx.err(k))?;
        let path = r.rel_path();
        ctx.resolved_to(&path);
        let Some(name) = r.name.clone() else {
            return Err(ctx.err(AccessErrorKind::NotRegular {
                kind: "a directory",
            }));
        };
        let parent = parent_fd(fd, &r);
        let original = if r.exists {
            Some(open_regular(parent, &name).map_err(|k| ctx.err(k))?)
        } else {
            None
        };
        let dir = open_in(
            parent,
            OsStr::new("."),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| ctx.err(kind_from_errno(e)))?;
        // An append-only directory would take the temp file but never let it (or the original) go:
        // refuse before creating anything.
        let dir_flags = crate::access::commit::file_flags(dir.as_fd());
        if let Some(why) = crate::access::commit::attribute_problem(dir_flags, "its directory") {
            return Err(ctx.err(AccessErrorKind::CannotReplace { why }));
        }
        let (temp, file) = create_temp(dir.as_fd(), &name).map_err(|k| ctx.err(k))?;
        // From here on an early return drops `pending`, which unlinks the temp file.
        let pending = PendingWrite {
            dir,
            temp: Some(temp),
            name,
            path,
            original: original.as_ref().map(|(_, st)| Original {
                dev: st.st_dev,
                ino: st.st_ino,
                links: st.st_nlink,
            }),
            expected: None,
            root_display: self.path.clone(),
            requested: ctx.requested.clone(),
        };
        fill_temp(file, contents, original.as_ref()).map_err(|k| ctx.err(k))?;
        Ok(pending)
    }
}

pub(super) fn temp_name(final_name: &OsStr) -> OsString {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let suffix = format!(
        ".prepare-image-{}-{:08x}-{}.tmp",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let keep = NAME_MAX.saturating_sub(1 + suffix.len());
    let base = final_name.as_bytes();
    let mut name = Vec::with_capacity(NAME_MAX);
    name.push(b'.');
    name.extend_from_slice(&base[..base.len().min(keep)]);
    name.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(name)
}

fn create_temp(
    dir: BorrowedFd<'_>,
    final_name: &OsStr,
) -> Result<(OsString, File), AccessErrorKind> {
    let mut attempts = 0;
    loop {
        let name = temp_name(final_name);
        // 0600 until the final owner and mode are applied, so the new contents are never more exposed
        // than the original's.
        match open_in(
            dir,
            &name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((name, File::from(fd))),
            Err(Errno::EEXIST) if attempts < 64 => attempts += 1,
            Err(e) => return Err(kind_from_errno(e)),
        }
    }
}

/// Writes the contents and then the metadata, in the order the kernel requires: writing and chown clear
/// setuid/setgid and file capabilities, so ownership comes after the data, the mode after ownership, and
/// the xattrs (which include security.capability) last.
fn fill_temp(
    mut file: File,
    contents: &[u8],
    original: Option<&(File, FileStat)>,
) -> Result<(), AccessErrorKind> {
    file.write_all(contents).map_err(kind_from_io)?;
    let (uid, gid, mode) = match original {
        Some((_, st)) => (st.st_uid, st.st_gid, st.st_mode & 0o7777),
        None => (0, 0, NEW_FILE_MODE),
    };
    fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(kind_from_errno)?;
    let mode_bits = Mode::from_bits_truncate(mode);
    fchmod(&file, mode_bits).map_err(kind_from_errno)?;
    if let Some((orig, _)) = original {
        copy_xattrs(orig, &file)?;
        // Setting an access ACL rewrites the group bits (and may drop setgid for non-root): end with
        // exactly the original's mode. chmod keeps the ACL consistent with it.
        let st = fstat(&file).map_err(kind_from_errno)?;
        if st.st_mode & 0o7777 != mode {
            fchmod(&file, mode_bits).map_err(kind_from_errno)?;
        }
    }
    file.sync_all().map_err(kind_from_io)
}

/// Makes the temp file's extended attributes those of the original: all of the original's are set, and
/// ones the temp file picked up on creation (e.g. an ACL inherited from a default ACL) are removed, except
/// `security.*` labels that a running security module assigns and manages itself.
fn copy_xattrs(src: &File, dst: &File) -> Result<(), AccessErrorKind> {
    let names: Vec<OsString> = match src.list_xattr() {
        Ok(names) => names.collect(),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
        Err(e) => return Err(xattr_error("listing", OsStr::new("names"), e)),
    };
    for name in &names {
        let value = src
            .get_xattr(name)
            .map_err(|e| xattr_error("reading", name, e))?;
        if let Some(value) = value {
            dst.set_xattr(name, &value)
                .map_err(|e| xattr_error("copying", name, e))?;
        }
    }
    let extra: Vec<OsString> = match dst.list_xattr() {
        Ok(list) => list.filter(|n| !names.contains(n)).collect(),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
        Err(e) => return Err(xattr_error("listing", OsStr::new("names"), e)),
    };
    for name in extra {
        if !name.as_bytes().starts_with(b"security.") {
            dst.remove_xattr(&name)
                .map_err(|e| xattr_error("removing", &name, e))?;
        }
    }
    Ok(())
}

impl PendingWrite {
    /// Resolved root-relative path that will be replaced.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many names the file being replaced has (0 for a new file). Replacing a file by rename gives
    /// the name a new inode: the file's other hard links keep the old contents.
    pub fn original_links(&self) -> u64 {
        self.original.map_or(0, |o| o.links)
    }

    /// The bytes the plan was made on: the commit replaces the file only while it still holds exactly
    /// these (another program may have edited it in the meantime).
    pub fn expecting(mut self, bytes: &[u8]) -> PendingWrite {
        self.expected = Some(bytes.to_vec());
        self
    }

    pub(super) fn err(&self, kind: AccessErrorKind) -> AccessError {
        AccessError {
            op: Op::Write,
            path: self.root_display.join(&self.requested),
            resolved: (self.path != self.requested).then(|| self.root_display.join(&self.path)),
            kind,
        }
    }

    /// Commits this one write (see `access::commit::commit_all`).
    pub fn commit(self, backup_suffix: Option<&str>) -> Result<CommitOutcome, CommitError> {
        let mut outcomes = crate::access::commit::commit_all(vec![self], backup_suffix)?;
        Ok(outcomes.pop().unwrap_or(CommitOutcome {
            backup: None,
            backup_existed: false,
        }))
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            // Best effort: Drop cannot report, and a leftover dot-file ending in ".tmp" is ignored by
            // cloud-init anyway.
            let _ = unlinkat(&self.dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

// Reads that do not follow the final component, and removal, for `doctor` and `clean`. Kept in
// their own block: the parents of a path are resolved inside the root exactly as for every other
// access, the final name never is.

/// What a directory entry is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    /// A FIFO, socket or device node.
    Other,
}

/// `lstat` of a name inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryStat {
    /// Root-relative path: the parents resolved inside the root, the final name as given.
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Bytes (`st_size`; for a symlink, the length of its target).
    pub size: u64,
}

/// Deepest directory nesting `remove_tree` descends into; deeper trees are refused, not recursed
/// into without bound.
const MAX_REMOVE_DEPTH: usize = 256;

fn entry_kind(st: &FileStat) -> EntryKind {
    if is_type(st, SFlag::S_IFREG) {
        EntryKind::File
    } else if is_type(st, SFlag::S_IFDIR) {
        EntryKind::Directory
    } else if is_type(st, SFlag::S_IFLNK) {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    }
}

fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<FileStat> {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// The names in a directory (without "." and ".."), sorted.
fn names_in(dir: BorrowedFd<'_>) -> nix::Result<Vec<OsString>> {
    let fd = open_in(
        dir,
        OsStr::new("."),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )?;
    let mut listing = Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// The parent directory of a name, resolved inside the root, and the name itself.
struct ParentAndName {
    /// Root-relative path of the parent after resolving links.
    parent_path: PathBuf,
    parent: OwnedFd,
    name: OsString,
}

impl Root {
    /// Resolves everything but the final component of `rel`. `Ok(None)` when the parent does not
    /// exist; an error when `rel` names the root itself or ends in `..` (nothing to not-follow).
    fn parent_and_name(
        fd: BorrowedFd<'_>,
        ctx: &Ctx,
        rel: &Path,
    ) -> Result<Option<ParentAndName>, AccessError> {
        let name = match rel.components().next_back() {
            Some(Component::Normal(name)) => name.to_os_string(),
            _ => {
                return Err(ctx.err(AccessErrorKind::Other(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the path must end in a name",
                ))));
            }
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let r = match walk(fd, parent_rel) {
            Ok(r) => r,
            Err(AccessErrorKind::NotFound) => return Ok(None),
            Err(k) => return Err(ctx.err(k)),
        };
        if !r.exists {
            return Ok(None);
        }
        let parent_path = r.rel_path();
        let parent = match r.name.as_deref() {
            None => open_in(
                fd,
                OsStr::new("."),
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                Mode::empty(),
            ),
            Some(dir) => open_in(
                parent_fd(fd, &r),
                dir,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                Mode::empty(),
            ),
        };
        match parent {
            Ok(parent) => Ok(Some(ParentAndName {
                parent_path,
                parent,
                name,
            })),
            Err(Errno::ENOTDIR | Errno::ENOENT) => Ok(None),
            Err(e) => Err(ctx.err(kind_from_errno(e))),
        }
    }

    /// Reads at most the first `max` bytes of a regular file, with the checks of `read_file`: a file
    /// in an image is untrusted and may be huge (a sparse terabyte), so readers that need only text
    /// near the start cap what they hold.
    pub fn read_file_prefix(&self, rel: &Path, max: u64) -> Result<FileContents, AccessError> {
        let fd = match self.dir() {
            Ok(fd) => fd,
            Err(reader) => return userspace::read_file_prefix(self, reader, rel, max),
        };
        let mut ctx = Ctx::new(self, Op::Read, rel);
        let r = walk(fd, rel).map_err(|k| ctx.err(k))?;
        let path = r.rel_path();
        ctx.resolved_to(&path);
        if !r.exists {
            return Err(ctx.err(AccessErrorKind::NotFound));
        }
        let Some(name) = r.name.as_deref() else {
            return Err(ctx.err(AccessErrorKind::NotRegular {
                kind: "a directory",
            }));
        };
        let (file, st) = open_regular(parent_fd(fd, &r), name).map_err(|k| ctx.err(k))?;
        let mut bytes = Vec::new();
        file.take(max)
            .read_to_end(&mut bytes)
            .map_err(|e| ctx.err(kind_from_io(e)))?;
        Ok(FileContents {
            path,
            bytes,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        })
    }

    /// Opens a regular file for streaming (a 60 MB initramfs is read in pieces, never held whole),
    /// with the checks of `read_file`. Returns the resolved root-relative path and the file.
    pub fn open_file(&self, rel: &Path) -> Result<(PathBuf, Stream), AccessError> {
        let fd = match self.dir() {
            Ok(fd) => fd,
            Err(reader) => return userspace::open_file(self, reader, rel),
        };
        let mut ctx = Ctx::new(self, Op::Read, rel);
        let r = walk(fd, rel).map_err(|k| ctx.err(k))?;
        let path = r.rel_path();
        ctx.resolved_to(&path);
        let (true, Some(name)) = (r.exists, r.name.as_deref()) else {
            return Err(ctx.err(AccessErrorKind::NotFound));
        };
        let (file, _) = open_regular(parent_fd(fd, &r), name).map_err(|k| ctx.err(k))?;
        Ok((path, Stream::File(file)))
    }

    /// `lstat` inside the root: the parents are resolved (confined), the final name is not
    /// followed. `Ok(None)` when it does not exist.
    pub fn symlink_metadata(&self, rel: &Path) -> Result<Option<EntryStat>, AccessError> {
        let fd = match self.dir() {
            Ok(fd) => fd,
            Err(reader) => return userspace::symlink_metadata(self, reader, rel),
        };
        let ctx = Ctx::new(self, Op::Read, rel);
        let Some(p) = Self::parent_and_name(fd, &ctx, rel)? else {
            return Ok(None);
        };
        match lstat_at(p.parent.as_fd(), &p.name) {
            Ok(st) => Ok(Some(EntryStat {
                path: p.parent_path.join(&p.name),
                kind: entry_kind(&st),
                size: u64::try_from(st.st_size).unwrap_or(0),
            })),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(ctx.err(kind_from_errno(e))),
        }
    }

    /// `readlink` inside the root: the target exactly as stored (not resolved), or `Ok(None)` when
    /// the name is missing or not a symlink.
    pub fn read_link(&self, rel: &Path) -> Result<Option<PathBuf>, AccessError> {
        let fd = match self.dir() {
            Ok(fd) => fd,
            Err(reader) => return userspace::read_link(self, reader, rel),
        };
        let ctx = Ctx::new(self, Op::Read, rel);
        let Some(p) = Self::parent_and_name(fd, &ctx, rel)? else {
            return Ok(None);
        };
        match readlinkat(p.parent.as_fd(), p.name.as_os_str()) {
            Ok(target) => Ok(Some(PathBuf::from(target))),
            Err(Errno::EINVAL | Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(ctx.err(kind_from_errno(e))),
        }
    }

    /// Removes `rel`: a file or a symlink (the link, never what it points to), or a directory with
    /// everything under it, depth first. Nothing is ever followed below the parent of `rel`: each
    /// name is examined with `lstat` and removed with `unlinkat` relative to a descriptor of its
    /// own directory, so a link inside the tree (`var/lib/cloud -> /`) is removed as a link. A
    /// directory on another filesystem (a mount point inside the tree) or nesting deeper than
    /// 256 refuses the whole removal before anything is removed.
    ///
    /// Returns every path removed (or, with `dry_run`, that would be), children before their
    /// directory; empty when `rel` does not exist.
    pub fn remove_tree(&self, rel: &Path, dry_run: bool) -> Result<Vec<EntryStat>, AccessError> {
        let fd = match self.dir() {
            Ok(fd) => fd,
            Err(reader) => return userspace::remove_tree(self, reader, rel, dry_run),
        };
        let ctx = Ctx::new(self, Op::Write, rel);
        let Some(p) = Self::parent_and_name(fd, &ctx, rel)? else {
            return Ok(Vec::new());
        };
        // A first pass that removes nothing finds mount points and over-deep trees, so that a
        // refused removal leaves everything in place.
        let planned = remove_below(
            &ctx,
            p.parent.as_fd(),
            &p.parent_path,
            &p.name,
            None,
            0,
            false,
        )?;
        if dry_run {
            return Ok(planned);
        }
        remove_below(
            &ctx,
            p.parent.as_fd(),
            &p.parent_path,
            &p.name,
            None,
            0,
            true,
        )
    }
}

/// Lists (and with `remove`, removes) `name` inside `dir`, whose root-relative path is `dir_path`.
/// `device` is the filesystem the removal started on.
fn remove_below(
    ctx: &Ctx,
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    name: &OsStr,
    device: Option<u64>,
    depth: usize,
    remove: bool,
) -> Result<Vec<EntryStat>, AccessError> {
    let path = dir_path.join(name);
    let refuse = |why: String| ctx.err(AccessErrorKind::Other(io::Error::other(why)));
    let st = match lstat_at(dir, name) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(ctx.err(kind_from_errno(e))),
    };
    let entry = EntryStat {
        path: path.clone(),
        kind: entry_kind(&st),
        size: u64::try_from(st.st_size).unwrap_or(0),
    };
    let mut out = Vec::new();
    if entry.kind == EntryKind::Directory {
        #[allow(clippy::useless_conversion)] // st_dev is u64 on some targets only
        let dev = u64::from(st.st_dev);
        if device.is_some_and(|d| d != dev) {
            return Err(refuse(format!(
                "{} is on another filesystem (a mount point): unmount it first; nothing was removed",
                path.display()
            )));
        }
        if depth >= MAX_REMOVE_DEPTH {
            return Err(refuse(format!(
                "{} is nested more than {MAX_REMOVE_DEPTH} directories deep; nothing was removed",
                path.display()
            )));
        }
        let sub = open_in(
            dir,
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| ctx.err(kind_from_errno(e)))?;
        for child in names_in(sub.as_fd()).map_err(|e| ctx.err(kind_from_errno(e)))? {
            out.extend(remove_below(
                ctx,
                sub.as_fd(),
                &path,
                &child,
                Some(dev),
                depth + 1,
                remove,
            )?);
        }
    }
    if remove {
        let flag = if entry.kind == EntryKind::Directory {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        unlinkat(dir, name, flag).map_err(|e| ctx.err(kind_from_errno(e)))?;
    }
    out.push(entry);
    Ok(out)
}

#[cfg(test)]
mod no_follow_tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlink_metadata_and_read_link_do_not_follow_the_last_name() {
        let dir = tempfile::tempdir().unwrap();
        let root_path = dir.path();
        std::fs::create_dir_all(root_path.join("usr/bin")).unwrap();
        std::fs::write(root_path.join("usr/bin/python3.11"), "").unwrap();
        symlink("python3.11", root_path.join("usr/bin/python3")).unwrap();
        symlink("usr/bin", root_path.join("bin")).unwrap();
        let root = Root::open(root_path).unwrap();
        let st = root
            .symlink_metadata(Path::new("bin/python3"))
            .unwrap()
            .unwrap();
        assert_eq!(st.kind, EntryKind::Symlink);
        assert_eq!(st.path, Path::new("usr/bin/python3"));
        assert_eq!(
            root.read_link(Path::new("/bin/python3")).unwrap(),
            Some(PathBuf::from("python3.11"))
        );
        assert_eq!(
            root.read_link(Path::new("usr/bin/python3.11")).unwrap(),
            None
        );
        assert_eq!(
            root.symlink_metadata(Path::new("usr/bin/nope")).unwrap(),
            None
        );
        assert_eq!(root.symlink_metadata(Path::new("nope/nope")).unwrap(), None);
    }

    #[test]
    fn remove_tree_removes_links_not_their_targets_and_never_leaves_the_root() {
        let host = tempfile::tempdir().unwrap();
        let canary_dir = host.path().join("canary");
        std::fs::create_dir(&canary_dir).unwrap();
        std::fs::write(canary_dir.join("keep"), "host data").unwrap();
        let image = tempfile::tempdir().unwrap();
        let r = image.path();
        std::fs::create_dir_all(r.join("var/lib/cloud/instances/i-1/sem")).unwrap();
        std::fs::write(r.join("var/lib/cloud/instances/i-1/sem/config_ssh"), "x").unwrap();
        // Hostile links inside the tree: absolute to the "root", and to the host's canary.
        symlink("/", r.join("var/lib/cloud/instance")).unwrap();
        symlink(&canary_dir, r.join("var/lib/cloud/escape")).unwrap();
        std::fs::write(r.join("etc-keep"), "image data").unwrap();
        let root = Root::open(r).unwrap();

        let planned = root.remove_tree(Path::new("var/lib/cloud"), true).unwrap();
        let paths: Vec<_> = planned
            .iter()
            .map(|e| e.path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "var/lib/cloud/escape",
                "var/lib/cloud/instance",
                "var/lib/cloud/instances/i-1/sem/config_ssh",
                "var/lib/cloud/instances/i-1/sem",
                "var/lib/cloud/instances/i-1",
                "var/lib/cloud/instances",
                "var/lib/cloud",
            ]
        );
        assert!(
            r.join("var/lib/cloud/instances/i-1/sem/config_ssh")
                .exists()
        );

        let removed = root.remove_tree(Path::new("var/lib/cloud"), false).unwrap();
        assert_eq!(removed, planned);
        assert!(!r.join("var/lib/cloud").exists());
        assert!(r.join("var/lib").is_dir());
        assert_eq!(
            std::fs::read_to_string(r.join("etc-keep")).unwrap(),
            "image data"
        );
        assert_eq!(
            std::fs::read_to_string(canary_dir.join("keep")).unwrap(),
            "host data"
        );
    }

    #[test]
    fn remove_tree_on_a_link_removes_only_the_link() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("canary"), "host").unwrap();
        let image = tempfile::tempdir().unwrap();
        let r = image.path();
        std::fs::create_dir_all(r.join("var/lib")).unwrap();
        symlink(host.path(), r.join("var/lib/cloud")).unwrap();
        let root = Root::open(r).unwrap();
        let removed = root.remove_tree(Path::new("var/lib/cloud"), false).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].kind, EntryKind::Symlink);
        assert!(host.path().join("canary").exists());
        assert!(r.join("var/lib").is_dir());
        assert!(
            root.remove_tree(Path::new("var/lib/cloud"), false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn remove_tree_through_a_linked_parent_stays_inside_the_root() {
        // var/lib -> / inside the image: var/lib/cloud means the image's /cloud, never the host's.
        let image = tempfile::tempdir().unwrap();
        let r = image.path();
        std::fs::create_dir_all(r.join("var")).unwrap();
        std::fs::create_dir_all(r.join("cloud/x")).unwrap();
        symlink("/", r.join("var/lib")).unwrap();
        let root = Root::open(r).unwrap();
        let removed = root.remove_tree(Path::new("var/lib/cloud"), false).unwrap();
        assert_eq!(removed.last().unwrap().path, Path::new("cloud"));
        assert!(!r.join("cloud").exists());
        assert!(r.join("var/lib").symlink_metadata().is_ok());
    }

    #[test]
    fn read_file_prefix_holds_at_most_what_it_is_asked_for() {
        let image = tempfile::tempdir().unwrap();
        let big = std::fs::File::create(image.path().join("sparse")).unwrap();
        big.set_len(1 << 40).unwrap();
        let root = Root::open(image.path()).unwrap();
        let read = root.read_file_prefix(Path::new("sparse"), 4096).unwrap();
        assert_eq!(read.bytes.len(), 4096);
    }

    #[test]
    fn remove_tree_refuses_the_root_itself() {
        let image = tempfile::tempdir().unwrap();
        let root = Root::open(image.path()).unwrap();
        assert!(root.remove_tree(Path::new("/"), false).is_err());
        assert!(root.remove_tree(Path::new("a/.."), false).is_err());
        assert!(image.path().is_dir());
    }
}

#[cfg(test)]
mod error_text_tests {
    use super::*;

    /// `error: {:#}` prints an error and its sources; the OS error's text is
    /// already in the message, so it must appear once.
    #[test]
    fn an_os_error_is_named_once_in_the_whole_chain() {
        let e = AccessError {
            op: Op::Write,
            path: PathBuf::from("/mnt/img/etc/cloud/cloud.cfg"),
            resolved: None,
            kind: AccessErrorKind::Other(io::Error::from_raw_os_error(libc::EBUSY)),
        };
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(shown.matches("(os error 16)").count(), 1, "{shown}");
        assert_eq!(
            shown,
            "cannot write /mnt/img/etc/cloud/cloud.cfg: Device or resource busy (os error 16)"
        );
    }
}
