//! The part of a user-space reader that is the same for every crate whose
//! API is "resolve a path to an inode, then stat, read at an offset, read a
//! link, list a directory" (`lamxfs`, `lambutter`): one lock around the
//! crate's `&mut self` handle, the size caps, the panic guard and the file
//! stream. Each crate only says how its calls map to [`InodeFs`].

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::access::image::block::{BlockSource, Window};

use super::{FsRead, MAX_DIR_ENTRIES, MAX_LINK_TARGET, NodeKind, NodeStat, ReadSeek, guarded};

/// Most bytes one `read` asks the crate for: a caller's huge buffer must not
/// become one huge read inside the reader.
const MAX_READ_CHUNK: usize = 1 << 20;

/// A window as both crates' block reader (their `BlockRead` traits have
/// the same shape).
pub(super) struct Source(pub(super) Window);

impl lamxfs::BlockRead for Source {
    type Error = io::Error;

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), io::Error> {
        self.0.read_at(buf, offset)
    }
}

impl lambutter::BlockRead for Source {
    type Error = io::Error;

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), io::Error> {
        self.0.read_at(buf, offset)
    }
}

/// One crate's calls, on resolved absolute paths (see `FsRead`).
pub(super) trait InodeFs: Send + 'static {
    type Inode: Copy + Send + 'static;
    /// For messages: "xfs", "btrfs".
    const NAME: &'static str;

    /// `Ok(None)` when the name does not exist.
    fn resolve(&mut self, path: &[u8]) -> io::Result<Option<Self::Inode>>;
    fn stat(&mut self, inode: &Self::Inode) -> io::Result<NodeStat>;
    /// Called only for a symlink whose size is at most [`MAX_LINK_TARGET`].
    fn read_link(&mut self, path: &[u8]) -> io::Result<Vec<u8>>;
    /// Reads at most `buf.len()` bytes at `offset`; 0 at the end.
    fn read_at(&mut self, inode: &Self::Inode, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// The names, "." and ".." allowed (they are dropped here).
    fn list(&mut self, path: &[u8]) -> io::Result<Vec<Vec<u8>>>;
}

/// The kind a mode's `S_IFMT` bits say.
pub(super) fn kind_of_mode(mode: u32) -> NodeKind {
    match mode & 0o170_000 {
        0o100_000 => NodeKind::File,
        0o040_000 => NodeKind::Directory,
        0o120_000 => NodeKind::Symlink,
        0o010_000 => NodeKind::Fifo,
        0o020_000 => NodeKind::CharDevice,
        0o060_000 => NodeKind::BlockDevice,
        0o140_000 => NodeKind::Socket,
        _ => NodeKind::Unknown,
    }
}

pub(super) fn corrupt(name: &str, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt {name} filesystem: {what}"),
    )
}

/// A crate's handle behind one lock, as an [`FsRead`].
pub(super) struct Locked<F: InodeFs>(Arc<Mutex<F>>);

impl<F: InodeFs> Locked<F> {
    pub(super) fn new(fs: F) -> Locked<F> {
        Locked(Arc::new(Mutex::new(fs)))
    }
}

fn lock<F>(fs: &Mutex<F>) -> MutexGuard<'_, F> {
    // A panic inside a reader call was caught and reported; the handle holds
    // no half-made state we rely on (every call starts from the superblock).
    fs.lock().unwrap_or_else(PoisonError::into_inner)
}

fn found<F: InodeFs>(fs: &mut F, path: &Path) -> io::Result<(F::Inode, NodeStat)> {
    let inode = fs
        .resolve(path.as_os_str().as_bytes())?
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    let st = fs.stat(&inode)?;
    Ok((inode, st))
}

impl<F: InodeFs> FsRead for Locked<F> {
    fn lstat(&self, path: &Path) -> io::Result<Option<NodeStat>> {
        guarded(&format!("{} lstat", F::NAME), || {
            let mut fs = lock(&self.0);
            match fs.resolve(path.as_os_str().as_bytes())? {
                Some(inode) => fs.stat(&inode).map(Some),
                None => Ok(None),
            }
        })
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        guarded(&format!("{} readlink", F::NAME), || {
            let mut fs = lock(&self.0);
            let (_, st) = found(&mut *fs, path)?;
            if st.kind != NodeKind::Symlink {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
            // The crate allocates the whole target: check what it would allocate first.
            if st.size > MAX_LINK_TARGET {
                return Err(corrupt(
                    F::NAME,
                    format!(
                        "symlink {} claims a target of {} bytes",
                        path.display(),
                        st.size
                    ),
                ));
            }
            let target = fs.read_link(path.as_os_str().as_bytes())?;
            if target.len() as u64 != st.size {
                return Err(corrupt(
                    F::NAME,
                    format!(
                        "symlink {} has a target of {} bytes but claims {}",
                        path.display(),
                        target.len(),
                        st.size
                    ),
                ));
            }
            Ok(PathBuf::from(OsString::from_vec(target)))
        })
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadSeek>> {
        guarded(&format!("{} open", F::NAME), || {
            let (inode, st) = found(&mut *lock(&self.0), path)?;
            if st.kind != NodeKind::File {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
            Ok(Box::new(Stream {
                fs: Arc::clone(&self.0),
                inode,
                size: st.size,
                position: 0,
            }) as Box<dyn ReadSeek>)
        })
    }

    fn list(&self, path: &Path) -> io::Result<Vec<OsString>> {
        guarded(&format!("{} list", F::NAME), || {
            let names = lock(&self.0).list(path.as_os_str().as_bytes())?;
            let names: Vec<OsString> = names
                .into_iter()
                .filter(|n| n != b"." && n != b"..")
                .map(OsString::from_vec)
                .collect();
            if names.len() > MAX_DIR_ENTRIES {
                return Err(corrupt(
                    F::NAME,
                    format!("{} has more than {MAX_DIR_ENTRIES} entries", path.display()),
                ));
            }
            Ok(names)
        })
    }
}

/// An open regular file: the inode and a position; every read takes the lock.
struct Stream<F: InodeFs> {
    fs: Arc<Mutex<F>>,
    inode: F::Inode,
    size: u64,
    position: u64,
}

impl<F: InodeFs> io::Read for Stream<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size.saturating_sub(self.position);
        let want = buf
            .len()
            .min(MAX_READ_CHUNK)
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = guarded(&format!("{} read", F::NAME), || {
            lock(&self.fs).read_at(&self.inode, self.position, &mut buf[..want])
        })?;
        if n > want {
            return Err(corrupt(F::NAME, "a read returned more bytes than asked"));
        }
        self.position += n as u64;
        Ok(n)
    }
}

impl<F: InodeFs> io::Seek for Stream<F> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let target = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => self.size.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_name_their_kinds() {
        assert_eq!(kind_of_mode(0o100_644), NodeKind::File);
        assert_eq!(kind_of_mode(0o040_755), NodeKind::Directory);
        assert_eq!(kind_of_mode(0o120_777), NodeKind::Symlink);
        assert_eq!(kind_of_mode(0o010_600), NodeKind::Fifo);
        assert_eq!(kind_of_mode(0o020_600), NodeKind::CharDevice);
        assert_eq!(kind_of_mode(0o060_600), NodeKind::BlockDevice);
        assert_eq!(kind_of_mode(0o140_600), NodeKind::Socket);
        assert_eq!(kind_of_mode(0o170_000), NodeKind::Unknown);
    }
}
