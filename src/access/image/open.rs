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
use super::mount::Mount;
use super::partition::{self, Partition, Table};
use super::qemu::RawView;
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
    if !writable {
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

    let (chosen, kind, probe) = match partition {
        Some(number) => {
            let (p, kind) = chosen_by_hand(&display, &kinds, number)?;
            (p, kind, None)
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
            let loop_device =
                LoopDevice::attach(&raw, &raw_path, chosen.offset, chosen.size, !writable)?;
            interrupt::pause_point("attached")?;
            let options = if writable {
                ""
            } else {
                kind.read_only_options()
            };
            let mount = Mount::new(loop_device.path(), fstype, !writable, options)
                .with_context(|| format!("partition {} of {display}", chosen.number))?;
            (loop_device, mount)
        }
    };
    let name = PathBuf::from(format!("{display} (partition {})", chosen.number));
    opened.root = Some(Root::open(mount.path())?.with_display(name));
    opened.mount = Some(mount);
    opened.loop_device = Some(loop_device);
    opened.raw = Some(raw);
    opened.info.partition = chosen.number;
    opened.info.filesystem = kind.name().to_string();
    interrupt::check()?;
    Ok(opened)
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

/// Probes every mountable partition read-only for `etc/cloud/cloud.cfg`.
/// Returns the one that holds it, with its probe mount when it is kept.
fn find_root(
    raw: &File,
    raw_path: &Path,
    display: &str,
    kinds: &[(Partition, FsKind)],
    keep_probe: bool,
    marker: RootMarker,
) -> Result<(Partition, FsKind, Option<Probe>)> {
    let RootMarker {
        path: marker,
        missing_hint: hint,
    } = marker;
    let mut candidates = Vec::new();
    let mut kept: Option<Probe> = None;
    // A partition whose cloud.cfg is a link to nothing: the likely root,
    // named when no partition holds a readable cloud.cfg.
    let mut dangling: Option<(u32, PathBuf)> = None;
    for (p, kind) in kinds {
        let Some(fstype) = kind.mount_type() else {
            continue;
        };
        let device = LoopDevice::attach(raw, raw_path, p.offset, p.size, true)?;
        let mount = match Mount::new(device.path(), fstype, true, kind.read_only_options()) {
            Ok(mount) => mount,
            // A filesystem that does not mount cannot be the root we want;
            // if it is the only candidate, say why below.
            Err(_) => {
                device.close()?;
                continue;
            }
        };
        let root = Root::open(mount.path()).ok();
        let found = root.as_ref().is_some_and(|r| r.exists(Path::new(marker)));
        if !found && let Some(target) = root.as_ref().and_then(|r| dangling_link_target(r, marker))
        {
            dangling.get_or_insert((p.number, target));
        }
        drop(root);
        if found && keep_probe && kept.is_none() {
            kept = Some((device, mount));
        } else {
            mount.close()?;
            device.close()?;
        }
        interrupt::check()?;
        if found {
            candidates.push((p.clone(), *kind));
        }
    }
    let (p, kind) = pick(display, kinds, candidates, dangling, marker, hint)?;
    Ok((p, kind, kept))
}

/// The root among the partitions that hold the marker, or why there is none.
pub(super) fn pick(
    display: &str,
    kinds: &[(Partition, FsKind)],
    mut candidates: Vec<(Partition, FsKind)>,
    dangling: Option<(u32, PathBuf)>,
    marker: &str,
    hint: &str,
) -> Result<(Partition, FsKind)> {
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
        _ => bail!(
            "{display}: several partitions hold /{marker} ({}); choose one with --partition N",
            describe(&candidates)
        ),
    }
}
