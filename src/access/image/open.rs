//! Image files as targets: from an image file to a mounted root filesystem,
//! and back, releasing everything in reverse order on every path out.
//!
//! Order of acquisition: private mount namespace → (qcow2/vmdk/vhd/vhdx:
//! qemu-storage-daemon's raw view) → loop device for the root partition →
//! mount → confined root. Each has one guard; `close` releases them in
//! reverse order and reports errors, `Drop` does the same without panicking.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

use super::containment;
use super::format::{self, ImageFormat};
use super::fstype::{self, FsKind};
use super::interrupt;
use super::inuse;
use super::loopdev::{self, LoopDevice};
use super::mount::{Mount, MountError};
use super::partition::{self, Partition, Table};
use super::qemu::RawView;
use super::unclean;
use crate::access::fs::btrfs::{self, choose_subvolume};
use crate::access::fs::xfs;
use crate::access::root::Root;

/// What a run worked on, for every report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub path: PathBuf,
    pub format: ImageFormat,
    /// "gpt (512-byte sectors)", "gpt (4096-byte sectors)", "mbr" or "none".
    pub table: String,
    /// Linux partition number; 0 for a filesystem with no partition table.
    pub partition: u32,
    pub filesystem: String,
    /// The disk's size as a guest sees it (the raw view's length).
    pub virtual_size: u64,
}

/// A mounted image. Fields drop in declaration order: the root's descriptor
/// first (it pins the mount), then the mount, the loop device, the raw file
/// and the qemu view.
#[derive(Debug)]
pub struct OpenedImage {
    root: Option<Root>,
    mount: Option<Mount>,
    loop_device: Option<LoopDevice>,
    raw: Option<File>,
    view: Option<RawView>,
    pub info: ImageInfo,
}

impl OpenedImage {
    /// An image read in user space: nothing attached or mounted, nothing to release.
    pub(super) fn in_user_space(root: Root, info: ImageInfo) -> OpenedImage {
        OpenedImage {
            root: Some(root),
            mount: None,
            loop_device: None,
            raw: None,
            view: None,
            info,
        }
    }

    pub fn root(&self) -> &Root {
        self.root.as_ref().expect("open until closed")
    }

    /// Releases everything in reverse order; the first error is returned,
    /// after every release has been tried.
    pub fn close(mut self) -> Result<()> {
        self.root.take();
        let mut first_error = None;
        if let Some(m) = self.mount.take()
            && let Err(e) = m.close()
        {
            first_error.get_or_insert(e);
        }
        if let Some(l) = self.loop_device.take()
            && let Err(e) = l.close()
        {
            first_error.get_or_insert(e);
        }
        self.raw.take();
        if let Some(v) = self.view.take()
            && let Err(e) = v.close()
        {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What tells the root partition of an image: a root-relative file only the
/// root holds, and what to suggest when no partition holds it. The caller
/// chooses: a keep needs cloud.cfg, `doctor` must also open images without
/// cloud-init (by `etc/os-release`).
#[derive(Debug, Clone, Copy)]
pub struct RootMarker {
    pub path: &'static str,
    pub missing_hint: &'static str,
}

/// Opens `path` and mounts its root filesystem: the partition holding
/// `marker`, or `partition` when given. Read-only unless `writable`; a
/// read-only pass never replays a journal, so the image file stays
/// byte-identical.
/// With `allow_backing`, a qcow2 or vmdk overlay may read its backing chain
/// (regular files only, read-only); without it, an image that names any file
/// outside itself is refused before qemu sees it.
pub fn open(
    path: &Path,
    writable: bool,
    partition: Option<u32>,
    allow_backing: bool,
    marker: RootMarker,
) -> Result<OpenedImage> {
    // Reads go through user space; the kernel mounts only to write, or for a root user when
    // no user-space reader reads the image yet.
    if !writable && !kernel_read_forced() {
        match super::userspace::open(path, partition, allow_backing, marker)? {
            Ok(opened) => return Ok(opened),
            Err(why) if !nix::unistd::geteuid().is_root() => bail!(
                "{}: {}; reading it needs a loop device and a mount: run prepare-image as root",
                path.display(),
                why.0
            ),
            Err(_) => {}
        }
    }
    preflight()?;
    super::tempdirs::sweep_stale();
    let display = path.display().to_string();
    let mut image = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .with_context(|| format!("opening image {display}"))?;
    refuse_if_in_use(&image, &display)?;
    let format =
        format::detect(&mut image).with_context(|| format!("reading the header of {display}"))?;
    interrupt::check()?;

    let mut opened = OpenedImage {
        root: None,
        mount: None,
        loop_device: None,
        raw: None,
        view: None,
        info: ImageInfo {
            path: path.to_path_buf(),
            format,
            table: String::new(),
            partition: 0,
            filesystem: String::new(),
            virtual_size: 0,
        },
    };
    let raw_path = if format == ImageFormat::Raw {
        path.to_path_buf()
    } else {
        let layers = containment::layers(path, &image, format, allow_backing)?;
        let view = RawView::start(&layers, writable)?;
        let raw_path = view.path().to_path_buf();
        opened.view = Some(view);
        raw_path
    };
    let mut raw = if format == ImageFormat::Raw {
        image
    } else {
        OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&raw_path)
            .with_context(|| format!("opening the raw view of {display}"))?
    };
    let size = raw.metadata()?.len();
    opened.info.virtual_size = size;
    let layout = partition::read_layout(&mut raw, size).map_err(|e| anyhow!("{display}: {e}"))?;
    opened.info.table = table_name(layout.table);
    let kinds = partition_kinds(&mut raw, &layout, &display)?;
    refuse_unrecognised(&display, format, &layout, &kinds)?;

    let (chosen, kind, subvolume, probe) = match partition {
        Some(number) => {
            let (p, kind) = chosen_by_hand(&display, &kinds, number)?;
            // A btrfs root may sit in a subvolume even when the partition
            // is chosen by hand; otherwise the directory flow says what is
            // missing.
            let subvolume = if kind == FsKind::Btrfs {
                match probe_partition(&raw, &raw_path, &display, &p, kind, false, marker.path)? {
                    Probed::Found { subvolume, .. } => subvolume,
                    Probed::Missing { .. } => None,
                    Probed::Refused(why) => return Err(why),
                }
            } else {
                None
            };
            (p, kind, subvolume, None)
        }
        None => find_root(&raw, &raw_path, &display, &kinds, !writable, marker)?,
    };
    let (loop_device, mount) = match probe {
        // Read-only and already mounted read-only by the probe: use it.
        Some(probe) => {
            interrupt::pause_point("attached")?;
            probe
        }
        None => {
            let fstype = kind.mount_type().expect("checked mountable");
            if !writable {
                refuse_if_replay_pending(&raw, &display, &chosen, kind)?;
            }
            let loop_device =
                LoopDevice::attach(&raw, &raw_path, chosen.offset, chosen.size, !writable)?;
            interrupt::pause_point("attached")?;
            let options = mount_options(kind, writable, subvolume.as_deref());
            let mount = match Mount::new(loop_device.path(), fstype, !writable, &options) {
                Ok(mount) => mount,
                Err(e) => {
                    loop_device.close()?;
                    if let Some(refusal) = xfs_v4_refusal(&raw, &display, &chosen, kind) {
                        return Err(refusal);
                    }
                    if !writable && let Some(refusal) = replay_refused(&e, &display, &chosen, kind)
                    {
                        return Err(refusal);
                    }
                    return Err(e.context(format!("partition {} of {display}", chosen.number)));
                }
            };
            (loop_device, mount)
        }
    };
    let name = PathBuf::from(format!("{display} (partition {})", chosen.number));
    opened.root = Some(Root::open(mount.path())?.with_display(name));
    opened.mount = Some(mount);
    opened.loop_device = Some(loop_device);
    opened.raw = Some(raw);
    opened.info.partition = chosen.number;
    opened.info.filesystem = filesystem_name(kind, subvolume.as_deref());
    interrupt::check()?;
    Ok(opened)
}

/// Forces the root user's kernel read, the fallback when no user-space reader serves an image,
/// to test it on images user space reads.
pub const FORCE_KERNEL_READ_VARIABLE: &str = "PREPARE_IMAGE_FORCE_KERNEL_READ";

fn kernel_read_forced() -> bool {
    std::env::var_os(FORCE_KERNEL_READ_VARIABLE).is_some_and(|v| v == "1")
}

/// How a report names the root's filesystem: with the btrfs subvolume that holds it, as mounted.
pub(super) fn filesystem_name(kind: FsKind, subvolume: Option<&str>) -> String {
    match subvolume {
        Some(name) => format!("{} subvol={name}", kind.name()),
        None => kind.name().to_string(),
    }
}

/// How a report names a partition table.
pub(super) fn table_name(table: Table) -> String {
    match table {
        Table::Gpt { sector_size } => format!("gpt ({sector_size}-byte sectors)"),
        Table::Mbr => "mbr".to_string(),
        Table::None => "none".to_string(),
    }
}

/// What each partition holds (a disk without a table is one partition, number 0).
pub(super) fn partition_kinds<R: std::io::Read + std::io::Seek + ?Sized>(
    raw: &mut R,
    layout: &partition::Layout,
    display: &str,
) -> Result<Vec<(Partition, FsKind)>> {
    let mut kinds = Vec::new();
    for p in &layout.partitions {
        kinds.push((
            p.clone(),
            fstype::detect(raw, p.offset)
                .with_context(|| format!("reading partition {} of {display}", p.number))?,
        ));
    }
    interrupt::check()?;
    Ok(kinds)
}

/// Partition `number` (from --partition), if it exists and holds a filesystem that can be read.
pub(super) fn chosen_by_hand(
    display: &str,
    kinds: &[(Partition, FsKind)],
    number: u32,
) -> Result<(Partition, FsKind)> {
    let (p, kind) = kinds
        .iter()
        .find(|(p, _)| p.number == number)
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "{display} has no partition {number} (it has: {})",
                describe(kinds)
            )
        })?;
    refuse_unmountable(display, &p, &kind)?;
    Ok((p, kind))
}

pub(super) fn refuse_unrecognised(
    display: &str,
    format: ImageFormat,
    layout: &partition::Layout,
    kinds: &[(Partition, FsKind)],
) -> Result<()> {
    if layout.table == Table::None && kinds.iter().all(|(_, k)| *k == FsKind::Unknown) {
        // Neither a table nor a filesystem: "no partition holds cloud.cfg;
        // is cloud-init installed?" would send the user the wrong way.
        if format == ImageFormat::Raw {
            bail!(
                "{display} is not a disk image prepare-image can read: it has no qcow2, vmdk, vhd or vhdx header, no partition table (GPT or MBR) and no filesystem it recognises (ext2/3/4, xfs, btrfs)"
            );
        }
        bail!(
            "{display} ({}) holds no partition table (GPT or MBR) and no filesystem prepare-image recognises: is the disk empty?",
            format.name()
        );
    }
    Ok(())
}

fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "image files are mounted with loop devices, which needs root: run prepare-image as root (e.g. with sudo)"
        );
    }
    if !Path::new(loopdev::LOOP_CONTROL).exists() {
        bail!(
            "{} is missing: this kernel has no loop device support (modprobe loop)",
            loopdev::LOOP_CONTROL
        );
    }
    Ok(())
}

/// How long loop devices that detach themselves on last close (autoclear)
/// may take to go: those of a run that just ended are still attached while
/// a device scanner (udev's blkid, LVM, btrfs device scan) holds them open
/// for a moment, and those of a killed run until the kernel has torn down
/// its mount namespace. A device that stays (`mount -o loop`) is refused.
const AUTOCLEAR_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

pub(super) fn refuse_if_in_use(image: &File, display: &str) -> Result<()> {
    let mut attached = loopdev::attached_to(image);
    let deadline = std::time::Instant::now() + AUTOCLEAR_GRACE;
    while !attached.is_empty()
        && attached.iter().all(|d| loopdev::autoclears(d))
        && std::time::Instant::now() < deadline
    {
        interrupt::check()?;
        std::thread::sleep(std::time::Duration::from_millis(20));
        attached = loopdev::attached_to(image);
    }
    if !attached.is_empty() {
        let devices: Vec<String> = attached.iter().map(|d| d.display().to_string()).collect();
        bail!(
            "{display} is already attached to {}: detach it (or stop what uses it) before editing the image",
            devices.join(", ")
        );
    }
    let writers = inuse::writers(image);
    if let Some(w) = writers.first() {
        bail!(
            "{display} is open for writing by process {} ({}): stop it (a running VM?) before editing the image",
            w.pid,
            w.command
        );
    }
    Ok(())
}

fn describe(kinds: &[(Partition, FsKind)]) -> String {
    kinds
        .iter()
        .map(|(p, k)| format!("{} {}", p.number, k.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn refuse_unmountable(display: &str, p: &Partition, kind: &FsKind) -> Result<()> {
    match kind {
        FsKind::ExtExternalJournal => bail!(
            "{display}: partition {} is ext4 with its journal on another device; mounting it would open that device on this host, so prepare-image does not (give it an internal journal first, on a copy: tune2fs -f -O ^has_journal, then tune2fs -j)",
            p.number
        ),
        FsKind::BtrfsMultiDevice => bail!(
            "{display}: partition {} is btrfs spanning several devices; the kernel would assemble it with any device of the same filesystem id on this host, so prepare-image does not mount it (make a single-device copy first)",
            p.number
        ),
        FsKind::Lvm2Pv | FsKind::Luks => bail!(
            "{display}: partition {} is {}; a root filesystem inside LVM or LUKS is not supported yet (edit it from a running system or a chroot)",
            p.number,
            kind.name()
        ),
        _ if kind.mount_type().is_none() => bail!(
            "{display}: partition {} holds {}, not a root filesystem prepare-image can mount (ext2/3/4, xfs, btrfs)",
            p.number,
            kind.name()
        ),
        _ => Ok(()),
    }
}

/// What the root marker (e.g. `etc/cloud/cloud.cfg`) says when it is a symbolic link to nothing
/// (the link as written). The directory is resolved inside the root first.
pub(super) fn dangling_link_target(root: &Root, marker: &str) -> Option<PathBuf> {
    let cfg = Path::new(marker);
    if root.exists(cfg) {
        return None;
    }
    root.read_link(cfg).ok().flatten()
}

/// A partition probed read-only and still mounted, so a read-only run can
/// use it as it is instead of attaching and mounting it a second time.
type Probe = (LoopDevice, Mount);

/// The mount(2) data string for the root: the no-replay option of a
/// read-only mount, and the subvolume that holds the root, if any.
fn mount_options(kind: FsKind, writable: bool, subvolume: Option<&str>) -> String {
    let no_replay = if writable {
        ""
    } else {
        kind.read_only_options()
    };
    let subvol = subvolume.map(|name| format!("subvol={name}"));
    [Some(no_replay.to_string()), subvol]
        .into_iter()
        .flatten()
        .filter(|o| !o.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// What probing one partition for the root marker found.
enum Probed {
    /// The marker is there: in the filesystem's default view, or (btrfs) in
    /// the top-level subvolume `subvolume`. `probe` is the read-only mount
    /// of the default view when it was asked to be kept.
    Found {
        subvolume: Option<String>,
        probe: Option<Probe>,
    },
    /// Not there; `dangling` is the marker's link target when the marker is
    /// a symbolic link to nothing.
    Missing { dangling: Option<PathBuf> },
    /// It did not mount, and why is known (XFS v4 on a kernel without it).
    Refused(anyhow::Error),
}

/// Why an XFS that the kernel refused to mount cannot be edited here, when
/// it is v4 (`crc=0`): kernels built without `CONFIG_XFS_SUPPORT_V4` (the
/// default since it was deprecated) cannot mount it at all. Reads do not
/// need the kernel (user space reads v4); a write does.
fn xfs_v4_refusal(raw: &File, display: &str, p: &Partition, kind: FsKind) -> Option<anyhow::Error> {
    use std::os::unix::fs::FileExt as _;
    if kind != FsKind::Xfs {
        return None;
    }
    let mut sb = [0u8; 128];
    raw.read_exact_at(&mut sb, p.offset).ok()?;
    let version = xfs::Geometry::parse(&sb)?.version;
    (version == 4).then(|| {
        anyhow!(
            "{display}: partition {} is XFS v4 (crc=0), which this host's kernel cannot mount, so prepare-image cannot write to it: make the edit inside the guest, or on a host whose kernel supports XFS v4",
            p.number
        )
    })
}

/// Refuses to mount partition `p` read-only when its journal or log needs a replay (the
/// superblock says so): the mount would show the stale state, not what the guest boots with.
/// The image's own partition, not a probe's: a dirty partition may be the root.
fn refuse_if_replay_pending(raw: &File, display: &str, p: &Partition, kind: FsKind) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let read_at = |buf: &mut [u8], at: u64| raw.read_exact_at(buf, p.offset.saturating_add(at));
    let pending = unclean::replay_pending(kind, read_at)
        .with_context(|| format!("reading partition {} of {display}", p.number))?;
    if pending == Some(true) {
        return Err(unclean::refusal(
            display,
            p.number,
            kind,
            unclean::KERNEL_READ_DOES_NOT_REPLAY,
        ));
    }
    Ok(())
}

/// The refusal of a read-only mount the kernel failed with EROFS: on the read-only loop device
/// it cannot replay the journal or log that needs it (XFS, whose superblock does not say).
fn replay_refused(
    e: &anyhow::Error,
    display: &str,
    p: &Partition,
    kind: FsKind,
) -> Option<anyhow::Error> {
    (MountError::errno_of(e) == Some(nix::errno::Errno::EROFS)).then(|| {
        unclean::refusal(
            display,
            p.number,
            kind,
            unclean::KERNEL_READ_DOES_NOT_REPLAY,
        )
    })
}

/// Mounts `p` read-only and looks for `marker`; on btrfs, when the default
/// subvolume lacks it, in the top-level subvolumes too (Fedora's layout:
/// the root in subvolume `root`, the default left at the top level).
fn probe_partition(
    raw: &File,
    raw_path: &Path,
    display: &str,
    p: &Partition,
    kind: FsKind,
    keep_probe: bool,
    marker: &str,
) -> Result<Probed> {
    let fstype = kind.mount_type().expect("checked mountable");
    refuse_if_replay_pending(raw, display, p, kind)?;
    let device = LoopDevice::attach(raw, raw_path, p.offset, p.size, true)?;
    let mount = match Mount::new(device.path(), fstype, true, kind.read_only_options()) {
        Ok(mount) => mount,
        // A filesystem that does not mount cannot be the root we want;
        // if it is the only candidate, the caller says why.
        Err(e) => {
            device.close()?;
            if let Some(refusal) = replay_refused(&e, display, p, kind) {
                return Err(refusal);
            }
            return Ok(match xfs_v4_refusal(raw, display, p, kind) {
                Some(refusal) => Probed::Refused(refusal),
                None => Probed::Missing { dangling: None },
            });
        }
    };
    let root = Root::open(mount.path()).ok();
    let found = root.as_ref().is_some_and(|r| r.exists(Path::new(marker)));
    let dangling = if found {
        None
    } else {
        root.as_ref().and_then(|r| dangling_link_target(r, marker))
    };
    drop(root);
    if found && keep_probe {
        return Ok(Probed::Found {
            subvolume: None,
            probe: Some((device, mount)),
        });
    }
    mount.close()?;
    if found {
        device.close()?;
        return Ok(Probed::Found {
            subvolume: None,
            probe: None,
        });
    }
    let subvolume = if kind == FsKind::Btrfs {
        btrfs_subvolume_holding(&device, display, p, marker)
    } else {
        Ok(None)
    };
    device.close()?;
    Ok(match subvolume? {
        Some(name) => Probed::Found {
            subvolume: Some(name),
            probe: None,
        },
        None => Probed::Missing { dangling },
    })
}

/// The top-level subvolume of the btrfs on `device` that holds `marker`:
/// the top level (subvolid=5) is mounted read-only and each subvolume
/// directory in it is looked into, confined like any root.
fn btrfs_subvolume_holding(
    device: &LoopDevice,
    display: &str,
    p: &Partition,
    marker: &str,
) -> Result<Option<String>> {
    use std::os::unix::fs::MetadataExt as _;
    let options = format!("{},subvolid=5", FsKind::Btrfs.read_only_options());
    let Ok(top) = Mount::new(device.path(), "btrfs", true, &options) else {
        return Ok(None);
    };
    let mut holding = Vec::new();
    let entries = std::fs::read_dir(top.path()).with_context(|| {
        format!(
            "listing the top level of partition {} of {display}",
            p.number
        )
    });
    for entry in entries?.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = top.path().join(&name);
        let is_subvolume = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_dir() && m.ino() == btrfs::SUBVOLUME_ROOT_INO);
        if is_subvolume && Root::open(&path).is_ok_and(|r| r.exists(Path::new(marker))) {
            holding.push(name);
        }
    }
    top.close()?;
    choose_subvolume(holding, display, p.number, marker)
}

/// Probes every mountable partition read-only for the root marker.
/// Returns the one that holds it (and the btrfs subvolume it is in), with
/// its probe mount when it is kept.
fn find_root(
    raw: &File,
    raw_path: &Path,
    display: &str,
    kinds: &[(Partition, FsKind)],
    keep_probe: bool,
    marker: RootMarker,
) -> Result<(Partition, FsKind, Option<String>, Option<Probe>)> {
    let RootMarker {
        path: marker,
        missing_hint: hint,
    } = marker;
    let mut candidates = Vec::new();
    let mut kept: Option<Probe> = None;
    // A partition whose cloud.cfg is a link to nothing: the likely root,
    // named when no partition holds a readable cloud.cfg.
    let mut dangling: Option<(u32, PathBuf)> = None;
    // A partition the kernel cannot mount for a known reason: the likely
    // root, named when no partition holds the marker.
    let mut refused: Option<anyhow::Error> = None;
    for (p, kind) in kinds {
        if kind.mount_type().is_none() {
            continue;
        }
        let keep = keep_probe && kept.is_none();
        match probe_partition(raw, raw_path, display, p, *kind, keep, marker)? {
            Probed::Found { subvolume, probe } => {
                if probe.is_some() {
                    kept = probe;
                }
                candidates.push((p.clone(), *kind, subvolume));
            }
            Probed::Missing {
                dangling: Some(target),
            } => {
                dangling.get_or_insert((p.number, target));
            }
            Probed::Missing { dangling: None } => {}
            Probed::Refused(why) => {
                refused.get_or_insert(why);
            }
        }
        interrupt::check()?;
    }
    let (p, kind, subvolume) = pick(display, kinds, candidates, dangling, refused, marker, hint)?;
    Ok((p, kind, subvolume, kept))
}

/// The root among the partitions that hold the marker (each with the btrfs
/// subvolume it is in, if any), or why there is none: a partition refused
/// for a known reason (XFS v4 to write) is named before "no partition holds".
pub(super) fn pick(
    display: &str,
    kinds: &[(Partition, FsKind)],
    mut candidates: Vec<(Partition, FsKind, Option<String>)>,
    dangling: Option<(u32, PathBuf)>,
    refused: Option<anyhow::Error>,
    marker: &str,
    hint: &str,
) -> Result<(Partition, FsKind, Option<String>)> {
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => {
            if let Some((p, kind)) = kinds.iter().find(|(_, k)| {
                matches!(
                    k,
                    FsKind::Lvm2Pv
                        | FsKind::Luks
                        | FsKind::ExtExternalJournal
                        | FsKind::BtrfsMultiDevice
                )
            }) {
                refuse_unmountable(display, p, kind)?;
            }
            if let Some(why) = refused {
                return Err(why);
            }
            if let Some((number, target)) = dangling {
                bail!(
                    "{display}: partition {number} has /{marker}, but it is a symbolic link to {}, which does not exist in the image (links are followed inside the image, never on the host): fix the link in the image",
                    target.display()
                );
            }
            bail!(
                "{display}: no partition holds /{marker} (partitions: {}); {hint}",
                if kinds.is_empty() {
                    "none".to_string()
                } else {
                    describe(kinds)
                }
            )
        }
        _ => {
            let found: Vec<(Partition, FsKind)> =
                candidates.iter().map(|(p, k, _)| (p.clone(), *k)).collect();
            bail!(
                "{display}: several partitions hold /{marker} ({}); choose one with --partition N",
                describe(&found)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_join_no_replay_and_subvolume() {
        assert_eq!(mount_options(FsKind::Btrfs, true, None), "");
        assert_eq!(
            mount_options(FsKind::Btrfs, false, None),
            "rescue=nologreplay"
        );
        assert_eq!(
            mount_options(FsKind::Btrfs, true, Some("root")),
            "subvol=root"
        );
        assert_eq!(
            mount_options(FsKind::Btrfs, false, Some("root")),
            "rescue=nologreplay,subvol=root"
        );
        assert_eq!(mount_options(FsKind::Xfs, false, None), "");
    }
}
