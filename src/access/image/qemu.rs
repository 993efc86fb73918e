//! A raw view of a qcow2, vmdk, vhd or vhdx image, exported by
//! `qemu-storage-daemon` over FUSE, so the raw path (partition table, loop
//! device, mount) works on every format and the image keeps its own format.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::containment::Layer;

pub const DAEMON: &str = "qemu-storage-daemon";
/// Debian ships qemu-storage-daemon in qemu-utils (bookworm-backports and later).
pub const DAEMON_PACKAGE: &str = "qemu-utils";

/// How long the daemon may take to show its FUSE export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(20);
/// Short: the export appears, and the daemon exits after SIGTERM, within a
/// few milliseconds; a long poll would be most of a qcow2 run's time.
const POLL: Duration = Duration::from_millis(1);
/// How long the daemon may take to flush and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running qemu-storage-daemon and the file its FUSE export is mounted on.
#[derive(Debug)]
pub struct RawView {
    child: Option<Child>,
    dir: PathBuf,
    raw: PathBuf,
}

impl RawView {
    /// Starts the daemon. It runs in this process's (private) mount
    /// namespace and is told by the kernel to stop (SIGTERM) if this process
    /// dies, so it never outlives us.
    /// `layers` is the image itself and then the backing files it may
    /// read (see `containment::layers`); the image is writable only when
    /// `writable`, its backing files never.
    pub fn start(layers: &[Layer], writable: bool) -> Result<RawView> {
        let (image, format) = match layers.first() {
            Some(top) => (top.path.as_path(), top.format),
            None => bail!("no image given to {DAEMON}"),
        };
        super::mount::enter_private_namespace()?;
        let dir = super::tempdirs::create("view")?;
        let raw = dir.join("raw");
        std::fs::File::create(&raw).with_context(|| format!("creating {}", raw.display()))?;
        let mut view = RawView {
            child: None,
            dir,
            raw,
        };
        let mut command = Command::new(DAEMON);
        command
            .arg("--blockdev")
            .arg(blockdev(layers, writable)?.to_string())
            .arg("--export")
            .arg(format!(
                "type=fuse,id=raw,node-name={TOP_NODE},mountpoint={},writable={}",
                qemu_escape(&view.raw),
                if writable { "on" } else { "off" }
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal reaches only us,
            // and we stop the daemon after releasing what sits on its export.
            .process_group(0);
        // If we die between fork and prctl, the death signal is never sent:
        // compare the parent after setting it, and give up if it is gone.
        let parent = nix::unistd::getpid();
        // SAFETY: prctl and getppid are async-signal-safe and nothing here
        // allocates; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!("{DAEMON} is needed for {} images but is not installed: install the Debian package {DAEMON_PACKAGE}", format.name())
            } else {
                anyhow!("starting {DAEMON}: {e}")
            }
        })?;
        view.child = Some(child);
        view.wait_for_export(image)?;
        Ok(view)
    }

    /// The raw bytes of the image, as a file.
    pub fn path(&self) -> &Path {
        &self.raw
    }

    fn wait_for_export(&mut self, image: &Path) -> Result<()> {
        let deadline = Instant::now() + EXPORT_TIMEOUT;
        loop {
            if is_mountpoint(&self.raw)? {
                return Ok(());
            }
            let child = self.child.as_mut().expect("started");
            if let Some(status) = child.try_wait()? {
                let message = first_stderr_line(child);
                self.child = None;
                bail!(
                    "{DAEMON} could not open {} ({status}): {message}",
                    image.display(),
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{DAEMON} did not export {} within {:?}",
                    image.display(),
                    EXPORT_TIMEOUT
                );
            }
            crate::access::image::interrupt::check()?;
            std::thread::sleep(POLL);
        }
    }

    /// Stops the daemon (it flushes the image and unmounts its export), then
    /// removes the temp files. Reports errors.
    pub fn close(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // Exactly the daemon we started, by its PID.
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    // Still there after a long grace period: end exactly it.
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(POLL);
            }
        }
        if is_mountpoint(&self.raw).unwrap_or(false) {
            // The daemon is gone but its FUSE mount is not: detach it lazily
            // so the temp file can go.
            let _ = nix::mount::umount2(&self.raw, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_file(&self.raw);
        std::fs::remove_dir(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

impl Drop for RawView {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

const TOP_NODE: &str = "image";

/// The whole block graph, in the JSON form of `--blockdev`: every file qemu
/// opens is named here, and each format node gets an explicit `backing`
/// (`null` below the last layer), so qemu opens nothing the image names on
/// its own. (The dotted form `backing=null` is taken as a node name.)
/// Backing files are always read-only: writes go to the image itself.
fn blockdev(layers: &[Layer], writable: bool) -> Result<serde_json::Value> {
    let mut below = serde_json::Value::Null;
    for (depth, layer) in layers.iter().enumerate().rev() {
        let read_only = depth > 0 || !writable;
        let Some(filename) = layer.path.to_str() else {
            bail!(
                "{} is not a UTF-8 path, which {DAEMON} cannot be given: rename it",
                layer.path.display()
            );
        };
        let mut node = serde_json::json!({
            "driver": layer.format.qemu_driver(),
            "read-only": read_only,
            "file": {
                "driver": "file",
                "filename": filename,
                "read-only": read_only,
            },
        });
        if layer.format.has_backing() {
            node["backing"] = below;
        }
        below = node;
    }
    below["node-name"] = TOP_NODE.into();
    Ok(below)
}

/// qemu's option syntax uses `,` as separator; a literal comma is doubled.
fn qemu_escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Whether `path` is a mountpoint in this process's namespace.
fn is_mountpoint(path: &Path) -> Result<bool> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let wanted = path.display().to_string();
    Ok(mountinfo.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == wanted)
    }))
}

fn unescape_mountinfo(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(n as char);
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// The first line a helper that ended wrote on its (piped) stderr: why it
/// ended, for a one-line error.
pub(super) fn first_stderr_line(child: &mut Child) -> String {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    stderr
        .lines()
        .next()
        .unwrap_or("no message")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::image::format::ImageFormat;

    fn layer(path: &str, format: ImageFormat) -> Layer {
        Layer {
            path: PathBuf::from(path),
            format,
        }
    }

    #[test]
    fn a_single_image_gets_an_explicit_null_backing() {
        let graph = blockdev(&[layer("/i/disk.qcow2", ImageFormat::Qcow2)], true).unwrap();
        assert_eq!(
            graph,
            serde_json::json!({
                "driver": "qcow2",
                "node-name": "image",
                "read-only": false,
                "file": {"driver": "file", "filename": "/i/disk.qcow2", "read-only": false},
                "backing": null,
            })
        );
    }

    #[test]
    fn backing_files_are_read_only_and_the_chain_ends_in_null() {
        let graph = blockdev(
            &[
                layer("/i/top.qcow2", ImageFormat::Qcow2),
                layer("/i/mid.vmdk", ImageFormat::Vmdk),
                layer("/i/base,1.img", ImageFormat::Raw),
            ],
            true,
        )
        .unwrap();
        assert_eq!(graph["read-only"], false);
        let mid = &graph["backing"];
        assert_eq!(mid["driver"], "vmdk");
        assert_eq!(mid["read-only"], true);
        assert_eq!(mid["file"]["read-only"], true);
        let base = &mid["backing"];
        assert_eq!(
            base,
            &serde_json::json!({
                "driver": "raw",
                "read-only": true,
                "file": {"driver": "file", "filename": "/i/base,1.img", "read-only": true},
            })
        );
        // Read-only runs write nothing at all.
        let graph = blockdev(&[layer("/i/top.qcow2", ImageFormat::Qcow2)], false).unwrap();
        assert_eq!(graph["read-only"], true);
    }
}
