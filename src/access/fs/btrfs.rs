//! btrfs read in user space with the `lambutter` crate (single device;
//! zstd, zlib and lzo extents), and where the root is: the default
//! subvolume, or, in Fedora's layout (the default left at the top level),
//! the one top-level subvolume that holds it.
//!
//! A tree log left by a crash holds the fsyncs since the last commit, which
//! the guest's kernel replays at its next mount; `lambutter` reads the last
//! commit only, so a btrfs with a log root is refused before it is read
//! (`image::unclean`), as is the kernel read, which skips the log
//! (`rescue=nologreplay`).

use std::io;
use std::path::Path;

use anyhow::{Result, bail};
use lambutter::{Btrfs, Error};

use super::inode_fs::{InodeFs, Locked, Source, corrupt, kind_of_mode};
use super::{FsRead, NodeStat, ReaderTree, guarded, walk};
use crate::access::image::block::{BlockSource, Window};

/// The id of the top-level subvolume (BTRFS_FS_TREE_OBJECTID).
const TOP_LEVEL: u64 = 5;
/// The inode number of every subvolume's root directory
/// (BTRFS_FIRST_FREE_OBJECTID): how a directory entry tells it is a subvolume.
pub const SUBVOLUME_ROOT_INO: u64 = 256;

fn to_io(e: Error) -> io::Error {
    match e {
        Error::NotFound => io::Error::from(io::ErrorKind::NotFound),
        Error::UnsupportedFeature(f)
        | Error::UnsupportedProfile(f)
        | Error::UnsupportedChecksum(f) => io::Error::new(
            io::ErrorKind::Unsupported,
            format!("btrfs feature not readable in user space: {f}"),
        ),
        e => corrupt("btrfs", e),
    }
}

struct Handle(Btrfs<Source>);

impl InodeFs for Handle {
    type Inode = lambutter::Inode;
    const NAME: &'static str = "btrfs";

    fn resolve(&mut self, path: &[u8]) -> io::Result<Option<lambutter::Inode>> {
        let path = lambutter::Path::new(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a btrfs path"))?;
        match self.0.resolve(path) {
            Ok(inode) => Ok(Some(inode)),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    fn stat(&mut self, inode: &lambutter::Inode) -> io::Result<NodeStat> {
        let m = self.0.metadata(inode).map_err(to_io)?;
        Ok(NodeStat {
            kind: kind_of_mode(m.mode),
            size: m.size,
            mode: m.mode & 0o7777,
            uid: m.uid,
            gid: m.gid,
        })
    }

    fn read_link(&mut self, path: &[u8]) -> io::Result<Vec<u8>> {
        let path = lambutter::Path::new(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a btrfs path"))?;
        self.0.read_link(path).map_err(to_io)
    }

    fn read_at(
        &mut self,
        inode: &lambutter::Inode,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        self.0.read_file_at(inode, offset, buf).map_err(to_io)
    }

    fn list(&mut self, path: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let path = lambutter::Path::new(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a btrfs path"))?;
        let entries = self.0.read_dir(path).map_err(to_io)?;
        Ok(entries.into_iter().map(|e| e.name).collect())
    }
}

/// The btrfs in `window` at its default subvolume, as a plain mount shows it.
pub fn load(window: Window) -> io::Result<Box<dyn FsRead>> {
    guarded("loading btrfs", || {
        let len = window.len();
        let fs = Btrfs::open(Source(window), len).map_err(to_io)?;
        Ok(Box::new(Locked::new(Handle(fs))) as Box<dyn FsRead>)
    })
}

/// The btrfs in `window` at top-level subvolume `name`, as `subvol=NAME` mounts it.
pub fn load_subvolume(window: Window, name: &str) -> io::Result<Box<dyn FsRead>> {
    guarded("loading a btrfs subvolume", || {
        let len = window.len();
        let path = format!("/{name}");
        let path = lambutter::Path::new(path.as_bytes())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a btrfs path"))?;
        let fs = Btrfs::open_subvol_path(Source(window), len, path).map_err(to_io)?;
        Ok(Box::new(Locked::new(Handle(fs))) as Box<dyn FsRead>)
    })
}

/// The names of the subvolumes directly under the top level.
fn top_level_subvolumes(window: Window) -> io::Result<Vec<String>> {
    guarded("listing btrfs subvolumes", || {
        let len = window.len();
        let mut fs = Btrfs::open_subvol_id(Source(window), len, TOP_LEVEL).map_err(to_io)?;
        let root = lambutter::Path::new(b"/").expect("\"/\" is a path");
        let entries = fs.read_dir(root).map_err(to_io)?;
        Ok(entries
            .into_iter()
            .filter(|e| {
                e.inode.objectid() == SUBVOLUME_ROOT_INO && e.inode.subvolume() != TOP_LEVEL
            })
            .filter_map(|e| String::from_utf8(e.name).ok())
            .collect())
    })
}

fn holds(fs: &dyn FsRead, marker: &Path) -> bool {
    walk(&ReaderTree(fs), marker).is_ok_and(|r| r.exists)
}

/// A btrfs root: its reader, and the top-level subvolume it is in (`None`: the default one).
pub type RootFs = (Box<dyn FsRead>, Option<String>);

/// The btrfs root in `window`: the default subvolume when it holds
/// `marker`, else the one top-level subvolume that does (its name is
/// returned), else the default subvolume (the caller says what is missing).
/// The outer error refuses the layout (several subvolumes hold the root);
/// the inner one is a read that failed (the kernel may still mount it).
pub fn load_root(
    window: Window,
    display: &str,
    number: u32,
    marker: &Path,
) -> Result<io::Result<RootFs>> {
    let default = match load(window.clone()) {
        Ok(fs) => fs,
        Err(e) => return Ok(Err(e)),
    };
    if holds(&*default, marker) {
        return Ok(Ok((default, None)));
    }
    let names = match top_level_subvolumes(window.clone()) {
        Ok(names) => names,
        Err(e) => return Ok(Err(e)),
    };
    let holding = names
        .into_iter()
        .filter(|name| load_subvolume(window.clone(), name).is_ok_and(|fs| holds(&*fs, marker)))
        .collect();
    Ok(
        match choose_subvolume(holding, display, number, &marker.display().to_string())? {
            Some(name) => load_subvolume(window, &name).map(|fs| (fs, Some(name))),
            None => Ok((default, None)),
        },
    )
}

/// The one subvolume that holds the root; several (a root and its
/// snapshots) cannot be told apart here, and a name mount(2) cannot take
/// (a comma ends the option) is refused rather than mangled.
pub fn choose_subvolume(
    mut holding: Vec<String>,
    display: &str,
    number: u32,
    marker: &str,
) -> Result<Option<String>> {
    holding.sort();
    match holding.as_slice() {
        [] => Ok(None),
        [name] if name.contains(',') => bail!(
            "{display}: partition {number} holds /{marker} in btrfs subvolume {name:?}, whose name has a comma, which the subvol= mount option cannot take: rename the subvolume, or make it the default one (btrfs subvolume set-default)"
        ),
        [name] => Ok(Some(name.clone())),
        _ => bail!(
            "{display}: several btrfs subvolumes of partition {number} hold /{marker} ({}); make the one the guest boots the default subvolume (btrfs subvolume set-default) and run again",
            holding.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subvolume_is_chosen_several_or_a_comma_are_refused() {
        let choose = |names: &[&str]| {
            choose_subvolume(
                names.iter().map(|n| n.to_string()).collect(),
                "d.img",
                2,
                "etc/cloud/cloud.cfg",
            )
        };
        assert_eq!(choose(&[]).unwrap(), None);
        assert_eq!(choose(&["root"]).unwrap(), Some("root".to_string()));
        assert_eq!(
            choose(&["root-snap", "root"]).unwrap_err().to_string(),
            "d.img: several btrfs subvolumes of partition 2 hold /etc/cloud/cloud.cfg (root, root-snap); make the one the guest boots the default subvolume (btrfs subvolume set-default) and run again"
        );
        assert!(
            choose(&["a,b"])
                .unwrap_err()
                .to_string()
                .contains("has a comma")
        );
    }
}
