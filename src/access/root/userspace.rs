//! `Root`'s reads when its filesystem is read in user space (`access::fs`):
//! the same walk, the same answers and the same error texts as the directory
//! root, so callers cannot tell the two apart. Such a root is read-only.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::{
    AccessError, AccessErrorKind, Ctx, DirEntry, EntryKind, EntryStat, FileContents,
    MAX_REMOVE_DEPTH, Op, Root,
};
use crate::access::fs::{self, FsRead, NodeKind, NodeStat, ReaderTree, Stream, kind_from_reader};

type Resolved = fs::Resolved<PathBuf>;

fn walk(reader: &dyn FsRead, rel: &Path) -> Result<Resolved, AccessErrorKind> {
    fs::walk(&ReaderTree(reader), rel)
}

/// Absolute path in the image of the walk's final name (`/` for the root).
fn absolute(r: &Resolved) -> PathBuf {
    match r.name.as_deref() {
        Some(name) => ReaderTree::absolute(r.parent(), name),
        None => PathBuf::from("/"),
    }
}

fn lstat(reader: &dyn FsRead, path: &Path) -> Result<Option<NodeStat>, AccessErrorKind> {
    reader.lstat(path).map_err(kind_from_reader)
}

fn entry_kind(kind: NodeKind) -> EntryKind {
    match kind {
        NodeKind::File => EntryKind::File,
        NodeKind::Directory => EntryKind::Directory,
        NodeKind::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

fn read_only(ctx: &Ctx) -> AccessError {
    ctx.err(AccessErrorKind::CannotReplace {
        why: "the image is read in user space, read-only; writing needs it mounted (run as root)"
            .into(),
    })
}

pub(super) fn resolve(
    root: &Root,
    reader: &dyn FsRead,
    rel: &Path,
) -> Result<PathBuf, AccessError> {
    let ctx = Ctx::new(root, Op::Resolve, rel);
    walk(reader, rel)
        .map(|r| r.rel_path())
        .map_err(|k| ctx.err(k))
}

pub(super) fn exists(reader: &dyn FsRead, rel: &Path) -> bool {
    walk(reader, rel).is_ok_and(|r| r.exists)
}

fn is_regular_file(reader: &dyn FsRead, rel: &Path) -> bool {
    let Ok(r) = walk(reader, rel) else {
        return false;
    };
    r.exists
        && r.name.is_some()
        && lstat(reader, &absolute(&r))
            .is_ok_and(|st| st.is_some_and(|st| st.kind == NodeKind::File))
}

pub(super) fn list_dir(
    root: &Root,
    reader: &dyn FsRead,
    rel: &Path,
) -> Result<Option<Vec<DirEntry>>, AccessError> {
    let mut ctx = Ctx::new(root, Op::List, rel);
    let r = match walk(reader, rel) {
        Ok(r) => r,
        Err(AccessErrorKind::NotFound) => return Ok(None),
        Err(k) => return Err(ctx.err(k)),
    };
    let path = r.rel_path();
    ctx.resolved_to(&path);
    if !r.exists {
        return Ok(None);
    }
    let dir = absolute(&r);
    if r.name.is_some() {
        match lstat(reader, &dir).map_err(|k| ctx.err(k))? {
            None => return Ok(None),
            Some(st) if st.kind != NodeKind::Directory => {
                return Err(ctx.err(AccessErrorKind::NotADirectory {
                    kind: st.kind.article_name(),
                }));
            }
            Some(_) => {}
        }
    }
    let mut names = reader
        .list(&dir)
        .map_err(|e| ctx.err(kind_from_reader(e)))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(Some(
        names
            .into_iter()
            .map(|name| DirEntry {
                is_regular_file: is_regular_file(reader, &path.join(&name)),
                name,
            })
            .collect(),
    ))
}

/// Nothing to lock: the image is only read, and nothing else writes through this reader.
pub(super) fn open_dir(
    _root: &Root,
    _reader: &dyn FsRead,
    _rel: &Path,
) -> Result<Option<(std::os::fd::OwnedFd, PathBuf)>, AccessError> {
    Ok(None)
}

pub(super) fn prepare_write(root: &Root, rel: &Path) -> Result<super::PendingWrite, AccessError> {
    Err(read_only(&Ctx::new(root, Op::Write, rel)))
}

/// Walks to a regular file: its resolved path, absolute path and stat.
fn regular(
    ctx: &mut Ctx,
    reader: &dyn FsRead,
    rel: &Path,
) -> Result<(PathBuf, PathBuf, NodeStat), AccessError> {
    let r = walk(reader, rel).map_err(|k| ctx.err(k))?;
    let path = r.rel_path();
    ctx.resolved_to(&path);
    if !r.exists {
        return Err(ctx.err(AccessErrorKind::NotFound));
    }
    if r.name.is_none() {
        return Err(ctx.err(AccessErrorKind::NotRegular {
            kind: "a directory",
        }));
    }
    let abs = absolute(&r);
    let st = lstat(reader, &abs)
        .map_err(|k| ctx.err(k))?
        .ok_or_else(|| ctx.err(AccessErrorKind::NotFound))?;
    if st.kind != NodeKind::File {
        return Err(ctx.err(AccessErrorKind::NotRegular {
            kind: st.kind.article_name(),
        }));
    }
    Ok((path, abs, st))
}

pub(super) fn read_file_prefix(
    root: &Root,
    reader: &dyn FsRead,
    rel: &Path,
    max: u64,
) -> Result<FileContents, AccessError> {
    let mut ctx = Ctx::new(root, Op::Read, rel);
    let (path, abs, st) = regular(&mut ctx, reader, rel)?;
    let file = reader
        .open(&abs)
        .map_err(|e| ctx.err(kind_from_reader(e)))?;
    let mut bytes = Vec::new();
    // The stated size caps what is held as well as `max`: a reader must not grow a buffer past it.
    file.take(max.min(st.size))
        .read_to_end(&mut bytes)
        .map_err(|e| ctx.err(kind_from_reader(e)))?;
    Ok(FileContents {
        path,
        bytes,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
    })
}

pub(super) fn open_file(
    root: &Root,
    reader: &dyn FsRead,
    rel: &Path,
) -> Result<(PathBuf, Stream), AccessError> {
    let mut ctx = Ctx::new(root, Op::Read, rel);
    let (path, abs, _) = regular(&mut ctx, reader, rel)?;
    let file = reader
        .open(&abs)
        .map_err(|e| ctx.err(kind_from_reader(e)))?;
    Ok((path, Stream::Reader(file)))
}

/// The parent of `rel` resolved inside the root, and the final name (not followed): its
/// root-relative and absolute paths. `Ok(None)` when the parent is missing or not a directory.
fn parent_and_name(
    ctx: &Ctx,
    reader: &dyn FsRead,
    rel: &Path,
) -> Result<Option<(PathBuf, PathBuf, OsString)>, AccessError> {
    let name = match rel.components().next_back() {
        Some(Component::Normal(name)) => name.to_os_string(),
        _ => {
            return Err(ctx.err(AccessErrorKind::Other(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path must end in a name",
            ))));
        }
    };
    let r = match walk(reader, rel.parent().unwrap_or(Path::new(""))) {
        Ok(r) => r,
        Err(AccessErrorKind::NotFound) => return Ok(None),
        Err(k) => return Err(ctx.err(k)),
    };
    if !r.exists {
        return Ok(None);
    }
    let parent = absolute(&r);
    match lstat(reader, &parent).map_err(|k| ctx.err(k))? {
        Some(st) if st.kind == NodeKind::Directory => {
            Ok(Some((r.rel_path().join(&name), parent.join(&name), name)))
        }
        _ => Ok(None),
    }
}

pub(super) fn symlink_metadata(
    root: &Root,
    reader: &dyn FsRead,
    rel: &Path,
) -> Result<Option<EntryStat>, AccessError> {
    let ctx = Ctx::new(root, Op::Read, rel);
    let Some((path, abs, _)) = parent_and_name(&ctx, reader, rel)? else {
        return Ok(None);
    };
    Ok(lstat(reader, &abs)
        .map_err(|k| ctx.err(k))?
        .map(|st| EntryStat {
            path,
            kind: entry_kind(st.kind),
            size: st.size,
        }))
}

pub(super) fn read_link(
    root: &Root,
    reader: &dyn FsRead,
    rel: &Path,
) -> Result<Option<PathBuf>, AccessError> {
    let ctx = Ctx::new(root, Op::Read, rel);
    let Some((_, abs, _)) = parent_and_name(&ctx, reader, rel)? else {
        return Ok(None);
    };
    match lstat(reader, &abs).map_err(|k| ctx.err(k))? {
        Some(st) if st.kind == NodeKind::Symlink => reader
            .read_link(&abs)
            .map(Some)
            .map_err(|e| ctx.err(kind_from_reader(e))),
        _ => Ok(None),
    }
}

/// Plans a removal (`dry_run`): every path below `rel`, children before their directory, as the
/// directory root lists them. Removing needs the image mounted.
pub(super) fn remove_tree(
    root: &Root,
    reader: &dyn FsRead,
    rel: &Path,
    dry_run: bool,
) -> Result<Vec<EntryStat>, AccessError> {
    let ctx = Ctx::new(root, Op::Write, rel);
    if !dry_run {
        return Err(read_only(&ctx));
    }
    let Some((path, abs, _)) = parent_and_name(&ctx, reader, rel)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    plan_below(&ctx, reader, &path, &abs, 0, &mut out)?;
    Ok(out)
}

fn plan_below(
    ctx: &Ctx,
    reader: &dyn FsRead,
    path: &Path,
    abs: &Path,
    depth: usize,
    out: &mut Vec<EntryStat>,
) -> Result<(), AccessError> {
    let Some(st) = lstat(reader, abs).map_err(|k| ctx.err(k))? else {
        return Ok(());
    };
    if st.kind == NodeKind::Directory {
        if depth >= MAX_REMOVE_DEPTH {
            return Err(ctx.err(AccessErrorKind::Other(std::io::Error::other(format!(
                "{} is nested more than {MAX_REMOVE_DEPTH} directories deep; nothing was removed",
                path.display()
            )))));
        }
        let mut names = reader.list(abs).map_err(|e| ctx.err(kind_from_reader(e)))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let name: &OsStr = &name;
            plan_below(
                ctx,
                reader,
                &path.join(name),
                &abs.join(name),
                depth + 1,
                out,
            )?;
        }
    }
    out.push(EntryStat {
        path: path.to_path_buf(),
        kind: entry_kind(st.kind),
        size: st.size,
    });
    Ok(())
}
