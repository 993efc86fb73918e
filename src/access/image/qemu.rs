//! A raw view of a qcow2, vmdk, vhd or vhdx image, exported by
//! `qemu-storage-daemon` over FUSE, so the raw path (partition table, loop
//! device, mount) works on every format and the image keeps its own format.

use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::containment::Layer;
use super::format::ImageFormat;

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
        let args = [
            "--blockdev".to_string(),
            blockdev(layers, writable)?.to_string(),
            "--export".to_string(),
            format!(
                "type=fuse,id=raw,node-name={TOP_NODE},mountpoint={},writable={}",
                qemu_escape(&view.raw),
                if writable { "on" } else { "off" }
            ),
        ];
        let child = spawn(&args, format)?;
        view.child = Some(child);
        view.wait_for_export(image)?;
        Ok(view)
    }

    /// The raw bytes of the image, as a file.
    pub fn path(&self) -> &Path {
        &self.raw
    }

    fn wait_for_export(&mut self, image: &Path) -> Result<()> {
        let raw = self.raw.clone();
        wait_until(&mut self.child, image, "export", || {
            Ok(is_mountpoint(&raw)?.then_some(()))
        })
    }

    /// Stops the daemon (it flushes the image and unmounts its export), then
    /// removes the temp files. Reports errors.
    pub fn close(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(child) = self.child.take() {
            stop_child(child)?;
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

/// Starts `qemu-storage-daemon ARGS` as our child: in its own process group
/// (a Ctrl-C at the terminal reaches only us, and we stop the daemon after
/// releasing what uses it) and told by the kernel to stop (SIGTERM) if this
/// process dies, so it never outlives us. Its stderr is piped, for
/// [`first_stderr_line`].
fn spawn(args: &[String], format: ImageFormat) -> Result<Child> {
    let mut command = Command::new(DAEMON);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
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
    command.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("{DAEMON} is needed for {} images but is not installed: install the Debian package {DAEMON_PACKAGE}", format.name())
        } else {
            anyhow!("starting {DAEMON}: {e}")
        }
    })
}

/// Polls `ready` until it gives a value, while the daemon `child` runs:
/// its first stderr line when it exits instead, an error after
/// [`EXPORT_TIMEOUT`] or on Ctrl-C. `what` names the wait ("export").
fn wait_until<T>(
    child: &mut Option<Child>,
    image: &Path,
    what: &str,
    mut ready: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + EXPORT_TIMEOUT;
    loop {
        if let Some(value) = ready()? {
            return Ok(value);
        }
        let running = child.as_mut().expect("started");
        if let Some(status) = running.try_wait()? {
            let message = first_stderr_line(running);
            *child = None;
            bail!(
                "{DAEMON} could not open {} ({status}): {message}",
                image.display(),
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{DAEMON} did not {what} {} within {:?}",
                image.display(),
                EXPORT_TIMEOUT
            );
        }
        crate::access::image::interrupt::check()?;
        std::thread::sleep(POLL);
    }
}

/// Stops a daemon we started: SIGTERM to exactly its PID (it flushes and
/// exits), then, after a long grace period, SIGKILL to exactly it.
fn stop_child(mut child: Child) -> Result<()> {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// The name of the socket an [`NbdServer`] listens on, inside its private
/// directory (`tempdirs::sweep_stale` knows it).
pub const NBD_SOCKET: &str = "nbd.sock";
/// The export's name on that socket.
pub const NBD_EXPORT: &str = "image";

/// A running qemu-storage-daemon serving the image read-only over NBD on a
/// unix socket in a private (0700) directory: the raw bytes of any format
/// qemu reads, for an unprivileged user (no FUSE, no mount namespace).
/// The daemon accepts one connection, ours.
#[derive(Debug)]
pub struct NbdServer {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl NbdServer {
    /// Starts the daemon on `layers` (read-only, every file named, as for
    /// [`RawView`]) and returns it with a connected stream.
    pub fn start(layers: &[Layer]) -> Result<(NbdServer, UnixStream)> {
        let (image, format) = match layers.first() {
            Some(top) => (top.path.as_path(), top.format),
            None => bail!("no image given to {DAEMON}"),
        };
        super::tempdirs::sweep_stale();
        let dir = super::tempdirs::create("nbd")?;
        let socket = dir.join(NBD_SOCKET);
        let mut server = NbdServer {
            child: None,
            dir,
            socket,
        };
        // sun_path holds 108 bytes with its NUL: a long $TMPDIR cannot host the socket.
        if server.socket.as_os_str().len() >= 108 {
            bail!(
                "the temp directory path {} is too long for a unix socket: set TMPDIR to a shorter directory",
                server.dir.display()
            );
        }
        let args = [
            "--blockdev".to_string(),
            blockdev(layers, false)?.to_string(),
            "--nbd-server".to_string(),
            format!(
                "addr.type=unix,addr.path={},max-connections=1",
                qemu_escape(&server.socket)
            ),
            "--export".to_string(),
            format!("type=nbd,id=nbd,node-name={TOP_NODE},name={NBD_EXPORT},writable=off"),
        ];
        server.child = Some(spawn(&args, format)?);
        let stream = server.connect(image)?;
        Ok((server, stream))
    }

    fn connect(&mut self, image: &Path) -> Result<UnixStream> {
        let socket = self.socket.clone();
        wait_until(&mut self.child, image, "serve", || {
            match UnixStream::connect(&socket) {
                Ok(stream) => Ok(Some(stream)),
                // Not listening yet.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => bail!("connecting to {DAEMON} for {}: {e}", image.display()),
            }
        })
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(child) = self.child.take() {
            stop_child(child)?;
        }
        // qemu removes its socket on a clean exit; after a SIGKILL it stays.
        let _ = std::fs::remove_file(&self.socket);
        std::fs::remove_dir(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

impl Drop for NbdServer {
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
