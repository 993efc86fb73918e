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

use super::block::{Cursor, FileSource, Window};
use super::containment;
use super::format::{self, ImageFormat};
use super::fstype::{self, FsKind};
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
    pub volume: NtfsVolume<Cursor>,
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

    /// Refuses a volume Windows left unfinished (dirty, hibernated, unclean
    /// log): one line naming what was found and what to do.
    pub fn refuse_unfinished(&mut self) -> Result<()> {
        let found = self.volume.unfinished().with_context(|| self.display())?;
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
    /// unchanged (the hive bytes, the conf texts) before writing.
    pub fn reopen_writable(&mut self) -> Result<()> {
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
/// `writable` makes a non-raw image's qemu view writable, for a later
/// [`NtfsWriteMount`]; the reads here never write.
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
    if format != ImageFormat::Raw && !nix::unistd::geteuid().is_root() {
        // The NTFS reader does not yet read through the user-space block
        // sources (imago): a non-raw image needs qemu-storage-daemon's view
        // and a mount namespace, i.e. root. Without root, the image goes on
        // to the Linux path, which reads it in user space or asks for root.
        return Ok(None);
    }
    let (mut raw, raw_path, view) = if format == ImageFormat::Raw {
        (image, path.to_path_buf(), None)
    } else {
        let layers = containment::layers(path, &image, format, allow_backing)?;
        let view = RawView::start(&layers, writable)?;
        let raw_path = view.path().to_path_buf();
        let raw =
            File::open(&raw_path).with_context(|| format!("opening the raw view of {display}"))?;
        (raw, raw_path, Some(view))
    };
    let found = find_system(&mut raw, &display, partition);
    let (layout, kinds, chosen) = match found {
        Ok(Some(found)) => found,
        Ok(None) | Err(_) => {
            if let Some(view) = view {
                view.close()?;
            }
            return found.map(|_| None);
        }
    };
    let volume = NtfsVolume::open(partition_cursor(&raw, &chosen)?)?;
    let virtual_size = raw.metadata()?.len();
    let info = ImageInfo {
        path: path.to_path_buf(),
        format,
        table: super::open::table_name(layout.table),
        partition: chosen.number,
        filesystem: "ntfs".to_string(),
        virtual_size,
    };
    Ok(Some(WindowsImage {
        info,
        layout,
        kinds,
        volume,
        partition: chosen,
        raw_path,
        view,
        allow_backing,
    }))
}

/// The partition `p` of the raw disk as a stream for the NTFS reader.
fn partition_cursor(raw: &File, p: &Partition) -> Result<Cursor> {
    let disk = Arc::new(FileSource::new(raw.try_clone()?)?);
    Ok(Window::new(disk, p.offset, p.size)?.cursor())
}

type Found = (Layout, Vec<(Partition, FsKind)>, Partition);

fn find_system(raw: &mut File, display: &str, partition: Option<u32>) -> Result<Option<Found>> {
    let size = raw.metadata()?.len();
    let layout = partition::read_layout(raw, size).map_err(|e| anyhow!("{display}: {e}"))?;
    let mut kinds = Vec::new();
    for p in &layout.partitions {
        let kind = fstype::detect(raw, p.offset)
            .with_context(|| format!("reading partition {} of {display}", p.number))?;
        kinds.push((p.clone(), kind));
    }
    let mut systems = Vec::new();
    for (p, kind) in &kinds {
        if *kind != FsKind::Ntfs || partition.is_some_and(|n| n != p.number) {
            continue;
        }
        // A partition the reader cannot open is not the system volume.
        let Ok(mut volume) = NtfsVolume::open(partition_cursor(raw, p)?) else {
            continue;
        };
        if volume.exists(SYSTEM_HIVE) {
            systems.push(p.clone());
        }
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
