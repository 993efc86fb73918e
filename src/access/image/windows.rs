//! Windows images: the NTFS partition holding `Windows/System32/config/SYSTEM`,
//! found and read in user space (no loop device, no mount), and the one
//! write path, ntfs-3g on a loop device, opened only after the volume was
//! found clean.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use super::block::{BlockSource, Cursor, FileSource, Window};
use super::containment;
use super::format::{self, ImageFormat};
use super::fstype::FsKind;
use super::interrupt;
use super::loopdev::LoopDevice;
use super::open::ImageInfo;
use super::partition::{self, Layout, Partition};
use super::qemu::RawView;
use crate::access::fs::ntfs::{NtfsVolume, SYSTEM_HIVE, UNFINISHED_REMEDY};

/// A Windows image opened for reading: its layout, the system volume, and
/// the qemu view a non-raw image is read through (stopped on close or drop).
#[derive(Debug)]
pub struct WindowsImage {
    pub info: ImageInfo,
    pub layout: Layout,
    /// Every partition's filesystem, in layout order.
    pub kinds: Vec<(Partition, FsKind)>,
    /// `None` only once a reopen for writing has failed: then the image
    /// is only closed.
    volume: Option<NtfsVolume<Cursor>>,
    /// The system partition.
    pub partition: Partition,
    raw_path: PathBuf,
    view: Option<RawView>,
    allow_backing: bool,
}

impl WindowsImage {
    /// `IMAGE (partition N)`, for messages.
    pub fn display(&self) -> String {
        format!(
            "{} (partition {})",
            self.info.path.display(),
            self.partition.number
        )
    }

    /// The system volume, read through the image's block source.
    pub fn volume(&mut self) -> &mut NtfsVolume<Cursor> {
        self.volume
            .as_mut()
            .expect("a WindowsImage whose reopen failed is only closed")
    }

    /// Refuses a volume Windows left unfinished (dirty, hibernated, unclean
    /// log): one line naming what was found and what to do.
    pub fn refuse_unfinished(&mut self) -> Result<()> {
        let display = self.display();
        let found = self.volume().unfinished().with_context(|| display)?;
        if found.is_empty() {
            return Ok(());
        }
        let what: Vec<String> = found.iter().map(|u| u.describe()).collect();
        bail!(
            "{}: {}; prepare-image never repairs what Windows left unfinished: {UNFINISHED_REMEDY}",
            self.display(),
            what.join(", ")
        )
    }

    pub fn close(mut self) -> Result<()> {
        match self.view.take() {
            Some(view) => view.close(),
            None => Ok(()),
        }
    }

    /// The same system partition opened again for writing, just before a
    /// write: the looks before it are read-only (a qemu view opened
    /// read-write may touch the image file even when nothing is written),
    /// and the image is checked again for other users (a VM, a loop device,
    /// another run). The caller verifies that what it planned on is
    /// unchanged (the hive bytes, the conf texts) before writing. After an
    /// error the image is only closed.
    pub fn reopen_writable(&mut self) -> Result<()> {
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "{}: writing a Windows image mounts it with ntfs-3g on a loop device, which needs root: run prepare-image as root (nothing written)",
                self.display()
            );
        }
        // Our reads let go of the image first: a qemu-storage-daemon serving
        // them (NBD) holds qemu's lock on it, which a writer cannot share.
        self.volume = None;
        if let Some(view) = self.view.take() {
            view.close()?;
        }
        let reopened = probe(
            &self.info.path,
            Some(self.partition.number),
            self.allow_backing,
            true,
        )?
        .ok_or_else(|| {
            anyhow!(
                "{}: Windows is no longer found on this partition: the image changed while prepare-image looked at it; nothing written",
                self.display()
            )
        })?;
        *self = reopened;
        Ok(())
    }
}

/// Opens `path` read-only and looks for Windows: `None` when no NTFS
/// partition holds `Windows/System32/config/SYSTEM` (not a Windows image).
/// `partition` chooses the system partition when several hold it.
///
/// Reads go through the user-space block source of the image's format
/// (`userspace::block_source`: no root, no loop device, no mount), the same
/// one the Linux path reads through. Only `writable` (a write is about to
/// follow, through [`NtfsWriteMount`]) reads through qemu-storage-daemon's
/// raw view, which the write then uses; and a root user falls back to a
/// read-only view where no user-space source reads the format yet. Without
/// root such an image is refused in one line: whether it holds Windows is
/// not known, so it must not go on to the Linux path as if it did not.
pub fn probe(
    path: &Path,
    partition: Option<u32>,
    allow_backing: bool,
    writable: bool,
) -> Result<Option<WindowsImage>> {
    let display = path.display().to_string();
    let mut image = File::open(path).with_context(|| format!("opening image {display}"))?;
    if writable {
        // As for a Linux image: a running VM, a loop device or another
        // prepare-image run writing it would corrupt it under our edit.
        // Checked before our own qemu-storage-daemon opens it for writing.
        super::open::refuse_if_in_use(&image, &display)?;
    }
    let format =
        format::detect(&mut image).with_context(|| format!("reading the header of {display}"))?;
    let disk = if writable {
        Disk::through_view(path, image, format, allow_backing, true)?
    } else {
        let file = image
            .try_clone()
            .with_context(|| format!("opening image {display}"))?;
        match super::userspace::block_source(path, file, format, allow_backing)? {
            Ok(source) => Disk {
                source,
                raw_path: path.to_path_buf(),
                view: None,
            },
            Err(why) if !nix::unistd::geteuid().is_root() => bail!(
                "{display}: {}; reading it needs root (qemu-storage-daemon's view of the disk): run prepare-image as root",
                why.0
            ),
            Err(_) => Disk::through_view(path, image, format, allow_backing, false)?,
        }
    };
    let Disk {
        source,
        raw_path,
        view,
    } = disk;
    let found = find_system(&source, &display, partition).and_then(|found| match found {
        Some((layout, kinds, chosen)) => {
            let volume = NtfsVolume::open(partition_cursor(&source, &chosen)?)?;
            Ok(Some((layout, kinds, chosen, volume)))
        }
        None => Ok(None),
    });
    let (layout, kinds, chosen, volume) = match found {
        Ok(Some(found)) => found,
        Ok(None) | Err(_) => {
            if let Some(view) = view {
                view.close()?;
            }
            return found.map(|_| None);
        }
    };
    let info = ImageInfo {
        path: path.to_path_buf(),
        format,
        table: super::open::table_name(layout.table),
        partition: chosen.number,
        filesystem: "ntfs".to_string(),
        virtual_size: source.len(),
    };
    Ok(Some(WindowsImage {
        info,
        layout,
        kinds,
        volume: Some(volume),
        partition: chosen,
        raw_path,
        view,
        allow_backing,
    }))
}

/// The disk as the guest sees it, and where a write reaches it: the image
/// file itself (raw), or the file qemu-storage-daemon's view exports.
struct Disk {
    source: Arc<dyn BlockSource>,
    raw_path: PathBuf,
    view: Option<RawView>,
}

impl Disk {
    /// The disk through qemu-storage-daemon's raw view (a raw image is its
    /// own view), read by `pread` on the exported file.
    fn through_view(
        path: &Path,
        image: File,
        format: ImageFormat,
        allow_backing: bool,
        writable: bool,
    ) -> Result<Disk> {
        let display = path.display();
        if format == ImageFormat::Raw {
            return Ok(Disk {
                source: Arc::new(FileSource::new(image)?),
                raw_path: path.to_path_buf(),
                view: None,
            });
        }
        let layers = containment::layers(path, &image, format, allow_backing)?;
        let view = RawView::start(&layers, writable)?;
        let raw_path = view.path().to_path_buf();
        let raw = File::open(&raw_path)
            .and_then(FileSource::new)
            .with_context(|| format!("opening the raw view of {display}"));
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                view.close()?;
                return Err(e);
            }
        };
        Ok(Disk {
            source: Arc::new(raw),
            raw_path,
            view: Some(view),
        })
    }
}

/// The partition `p` of the disk as a stream for the NTFS reader.
fn partition_cursor(disk: &Arc<dyn BlockSource>, p: &Partition) -> Result<Cursor> {
    Ok(Window::new(disk.clone(), p.offset, p.size)?.cursor())
}

type Found = (Layout, Vec<(Partition, FsKind)>, Partition);

fn find_system(
    disk: &Arc<dyn BlockSource>,
    display: &str,
    partition: Option<u32>,
) -> Result<Option<Found>> {
    let whole = Window::whole(disk.clone());
    let layout = partition::read_layout(&mut whole.cursor(), disk.len())
        .map_err(|e| anyhow!("{display}: {e}"))?;
    let kinds = super::open::partition_kinds(&mut whole.cursor(), &layout, display)?;
    let mut systems = Vec::new();
    for (p, kind) in &kinds {
        if *kind != FsKind::Ntfs || partition.is_some_and(|n| n != p.number) {
            continue;
        }
        // A partition the reader cannot open (or that passes the end of
        // the disk) is not the system volume.
        let Ok(mut volume) = partition_cursor(disk, p).and_then(NtfsVolume::open) else {
            continue;
        };
        if volume.exists(SYSTEM_HIVE) {
            systems.push(p.clone());
        }
        interrupt::check()?;
    }
    match systems.len() {
        0 => Ok(None),
        1 => {
            let chosen = systems.remove(0);
            Ok(Some((layout, kinds, chosen)))
        }
        _ => bail!(
            "{display}: several partitions hold {SYSTEM_HIVE} ({}); choose one with --partition N",
            systems
                .iter()
                .map(|p| p.number.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// How long ntfs-3g may take to mount, and to flush and exit after unmount.
const NTFS3G_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(5);

/// The system volume mounted read-write by ntfs-3g on a loop device: the
/// only way prepare-image writes NTFS. Released in reverse order (unmount,
/// wait for ntfs-3g to flush and exit, detach the loop device) by `close`,
/// and by `Drop` on every other path.
#[derive(Debug)]
pub struct NtfsWriteMount {
    mountpoint: PathBuf,
    mounted: bool,
    child: Option<Child>,
    loop_device: Option<LoopDevice>,
    _raw: File,
}

impl NtfsWriteMount {
    /// Mounts the system partition of `image` read-write, after its volume
    /// was found clean (the caller runs [`WindowsImage::refuse_unfinished`]
    /// first: ntfs-3g mounts a dirty volume read-write without a word).
    /// `-o norecover`: never replay or reset the log. The mount is then
    /// checked to really be read-write: on a hibernated volume or an unclean
    /// log ntfs-3g falls back to read-only and still exits 0.
    pub fn open(image: &WindowsImage) -> Result<NtfsWriteMount> {
        super::mount::enter_private_namespace()?;
        let raw = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image.raw_path)
            .with_context(|| format!("opening {} for writing", image.info.path.display()))?;
        let loop_device = LoopDevice::attach(
            &raw,
            &image.raw_path,
            image.partition.offset,
            image.partition.size,
            false,
        )?;
        let mountpoint = super::tempdirs::create("ntfs")?;
        let mut mount = NtfsWriteMount {
            mountpoint,
            mounted: false,
            child: None,
            loop_device: Some(loop_device),
            _raw: raw,
        };
        let device = mount
            .loop_device
            .as_ref()
            .expect("attached")
            .path()
            .to_path_buf();
        let child = Command::new("ntfs-3g")
            .arg("-o")
            // no_detach: ntfs-3g stays our child, so we know when it has
            // flushed and exited. Never `recover` or `remove_hiberfile`.
            .arg("norecover,no_detach,nosuid,nodev,noexec")
            .arg(&device)
            .arg(&mount.mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    anyhow!("ntfs-3g is needed to write a Windows image but is not installed: install the Debian package ntfs-3g")
                } else {
                    anyhow!("starting ntfs-3g: {e}")
                }
            })?;
        mount.child = Some(child);
        mount.wait_mounted(&image.display())?;
        Ok(mount)
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    fn wait_mounted(&mut self, display: &str) -> Result<()> {
        let deadline = Instant::now() + NTFS3G_TIMEOUT;
        loop {
            if let Some(options) = mount_options(&self.mountpoint)? {
                self.mounted = true;
                if !options.split(',').any(|o| o == "rw") {
                    bail!(
                        "{display}: ntfs-3g mounted the volume read-only ({options}), which it does on a hibernated volume or an unclean log; {UNFINISHED_REMEDY}"
                    );
                }
                return Ok(());
            }
            let child = self.child.as_mut().expect("started");
            if let Some(status) = child.try_wait()? {
                let message = super::qemu::first_stderr_line(child);
                self.child = None;
                bail!("{display}: ntfs-3g could not mount the volume ({status}): {message}");
            }
            if Instant::now() > deadline {
                bail!("{display}: ntfs-3g did not mount within {NTFS3G_TIMEOUT:?}");
            }
            crate::access::image::interrupt::check()?;
            std::thread::sleep(POLL);
        }
    }

    /// Unmounts, waits for ntfs-3g to write its last metadata and exit, and
    /// detaches the loop device; reports the first error.
    pub fn close(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        let mut first_error = None;
        if self.mounted {
            match nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty()) {
                Ok(()) => self.mounted = false,
                Err(e) => {
                    first_error.get_or_insert(anyhow!(
                        "unmounting {} failed: {e}",
                        self.mountpoint.display()
                    ));
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            if self.mounted {
                // Could not unmount: stop ntfs-3g, which unmounts on SIGTERM.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + NTFS3G_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            first_error.get_or_insert(anyhow!(
                                "ntfs-3g ended with {status} after unmounting"
                            ));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        first_error.get_or_insert(anyhow!(
                            "ntfs-3g did not exit within {NTFS3G_TIMEOUT:?} of unmounting"
                        ));
                        break;
                    }
                    Err(e) => {
                        first_error.get_or_insert(anyhow!("waiting for ntfs-3g: {e}"));
                        break;
                    }
                }
            }
            self.mounted = false;
        }
        if let Some(device) = self.loop_device.take()
            && let Err(e) = device.close()
        {
            first_error.get_or_insert(e);
        }
        let _ = std::fs::remove_dir(&self.mountpoint);
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for NtfsWriteMount {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// The mount options of whatever is mounted at `mountpoint` in this
/// process's namespace (field 6 of /proc/self/mountinfo), or `None`.
fn mount_options(mountpoint: &Path) -> Result<Option<String>> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(mountinfo_options(&info, &mountpoint.to_string_lossy()))
}

/// The options of the last mount at `mountpoint` in a mountinfo text
/// (mountinfo escapes space, tab, newline and backslash as octal).
pub fn mountinfo_options(info: &str, mountpoint: &str) -> Option<String> {
    let escaped = mountpoint
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4) == Some(&escaped.as_str()))
            .then(|| fields.get(5).map(|s| s.to_string()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_of_the_last_mount_at_a_path() {
        let info = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuseblk /dev/loop0 rw\n\
                    37 35 98:0 / /mnt/a\\040b ro,nosuid - fuseblk /dev/loop0 ro\n\
                    38 35 98:0 / /mnt/c rw - ext4 /dev/sda1 rw\n";
        assert_eq!(
            mountinfo_options(info, "/mnt/a b").as_deref(),
            Some("ro,nosuid")
        );
        assert_eq!(mountinfo_options(info, "/mnt/c").as_deref(), Some("rw"));
        assert_eq!(mountinfo_options(info, "/mnt/d"), None);
    }
}
