//! Block sources: the bytes of a disk image as a guest sees them, read in
//! user space (no loop device, no mount, no privileges).
//!
//! A [`BlockSource`] is a fixed-length, read-only byte array with exact
//! reads: a raw image file ([`FileSource`], by `pread`), a qcow2 image, an
//! NBD export, or a [`Window`] onto one of them (a partition). Filesystem
//! readers take a window; the ones that want `std::io::Read + Seek` (the
//! `ntfs` crate and others) take a [`Cursor`] over it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A read-only disk of `len()` bytes.
///
/// `read_at` fills all of `buf` or fails: a read that would pass `len()`
/// is an `UnexpectedEof` error, never a short read and never bytes from
/// beyond the end (a partition must not see its neighbour).
pub trait BlockSource: Send + Sync {
    fn len(&self) -> u64;

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The error every source returns for a read past its end.
/// Reads into `buf` until it is full or the reader ends; how many bytes were read.
pub fn read_up_to<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

pub fn past_end(offset: u64, wanted: usize, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {wanted} bytes at offset {offset} passes the end ({len} bytes)"),
    )
}

/// Whether `wanted` bytes at `offset` lie inside `len` bytes.
pub fn in_bounds(offset: u64, wanted: usize, len: u64) -> bool {
    offset
        .checked_add(wanted as u64)
        .is_some_and(|end| end <= len)
}

impl<S: BlockSource + ?Sized> BlockSource for Arc<S> {
    fn len(&self) -> u64 {
        (**self).len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
}

/// A raw image file, read with `pread` (no shared file position, so one
/// source serves any number of readers).
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    /// The file's length is taken once: a raw image does not grow while
    /// it is read, and a fixed length keeps every window's bound stable.
    pub fn new(file: File) -> io::Result<FileSource> {
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }
}

impl BlockSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !in_bounds(offset, buf.len(), self.len) {
            return Err(past_end(offset, buf.len(), self.len));
        }
        self.file.read_exact_at(buf, offset)
    }
}

/// `len` bytes of `source` starting at `offset`: one partition, or the
/// whole disk for a filesystem without a partition table.
#[derive(Clone)]
pub struct Window {
    source: Arc<dyn BlockSource>,
    offset: u64,
    len: u64,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Window {
    /// Fails when the window does not lie inside the source (a partition
    /// table may claim anything).
    pub fn new(source: Arc<dyn BlockSource>, offset: u64, len: u64) -> io::Result<Window> {
        let fits = offset
            .checked_add(len)
            .is_some_and(|end| end <= source.len());
        if !fits {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a partition of {len} bytes at offset {offset} passes the end of the disk ({} bytes)",
                    source.len()
                ),
            ));
        }
        Ok(Window {
            source,
            offset,
            len,
        })
    }

    /// The whole of `source`.
    pub fn whole(source: Arc<dyn BlockSource>) -> Window {
        let len = source.len();
        Window {
            source,
            offset: 0,
            len,
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A `Read + Seek` view starting at the window's first byte.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            window: self.clone(),
            position: 0,
        }
    }
}

impl BlockSource for Window {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !in_bounds(offset, buf.len(), self.len) {
            return Err(past_end(offset, buf.len(), self.len));
        }
        self.source.read_at(buf, self.offset + offset)
    }
}

/// `std::io::Read + Seek` over a window, for readers that want a stream.
/// Reads stop at the window's end (a short read, then 0), as a file's do.
#[derive(Debug, Clone)]
pub struct Cursor {
    window: Window,
    position: u64,
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.window.len.saturating_sub(self.position);
        let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        if n == 0 {
            return Ok(0);
        }
        self.window.read_at(&mut buf[..n], self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.window.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        let Some(target) = target else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the disk",
            ));
        };
        self.position = target;
        Ok(target)
    }
}

/// A disk held in memory, for tests.
#[cfg(test)]
pub(crate) struct Bytes(pub Vec<u8>);

#[cfg(test)]
impl BlockSource for Bytes {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !in_bounds(offset, buf.len(), self.len()) {
            return Err(past_end(offset, buf.len(), self.len()));
        }
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> Arc<dyn BlockSource> {
        Arc::new(Bytes((0..=255).collect()))
    }

    #[test]
    fn a_window_reads_its_own_bytes_and_never_its_neighbours() {
        let w = Window::new(disk(), 16, 16).unwrap();
        let mut buf = [0; 4];
        w.read_at(&mut buf, 12).unwrap();
        assert_eq!(buf, [28, 29, 30, 31]);
        assert!(w.read_at(&mut buf, 13).is_err());
        assert!(w.read_at(&mut buf, u64::MAX).is_err());
        assert!(Window::new(disk(), 250, 7).is_err());
        assert!(Window::new(disk(), u64::MAX, 2).is_err());
    }

    #[test]
    fn a_cursor_reads_and_seeks_like_a_file_of_the_window() {
        let mut c = Window::new(disk(), 100, 10).unwrap().cursor();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        assert_eq!(all, (100..110).collect::<Vec<u8>>());
        c.seek(SeekFrom::End(-2)).unwrap();
        let mut two = [0; 2];
        c.read_exact(&mut two).unwrap();
        assert_eq!(two, [108, 109]);
        assert!(c.seek(SeekFrom::Current(-20)).is_err());
    }

    #[test]
    fn a_file_source_reads_exactly_and_refuses_past_its_end() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"0123456789").unwrap();
        let s = FileSource::new(f).unwrap();
        let mut buf = [0; 3];
        s.read_at(&mut buf, 7).unwrap();
        assert_eq!(&buf, b"789");
        assert!(s.read_at(&mut buf, 8).is_err());
    }
}
