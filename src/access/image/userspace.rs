//! Opening an image for reading in user space: a block source for its
//! format, a window per partition, a filesystem reader per partition. No
//! loop device, no mount, no privileges; the kernel never parses the
//! image's filesystem. Writes still mount (see `open`), but are planned on
//! this read first.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};

use super::block::{BlockSource, FileSource, Window};
use super::containment;
use super::format::{self, ImageFormat};
use super::fstype::FsKind;
use super::interrupt;
use super::nbd::NbdSource;
use super::open::{self, ImageInfo, OpenedImage, RootMarker};
use super::partition::{self, Partition};
use super::qcow2::Qcow2Source;
use crate::access::fs::{self, btrfs};
use crate::access::root::Root;

/// Why an image cannot be read in user space, though the kernel may mount it.
#[derive(Debug)]
pub struct NeedsKernel(pub String);

/// A partition's root read in user space (with the btrfs subvolume it is in), or why the
/// kernel is needed; the outer error refuses the image outright.
type Loaded = std::result::Result<(Root, Option<String>), NeedsKernel>;

/// The disk as a guest sees it, for `format`: raw by `pread`, qcow2 by imago, and every
/// other format (or a qcow2 imago refuses, e.g. zstd-compressed) over NBD from our own
/// qemu-storage-daemon. Backing files only as `containment` allows (refusals are errors).
/// `Err(NeedsKernel)` is kept for the readers' sake: no format needs the kernel now.
pub fn block_source(
    path: &Path,
    file: File,
    format: ImageFormat,
    allow_backing: bool,
) -> Result<std::result::Result<Arc<dyn BlockSource>, NeedsKernel>> {
    if format == ImageFormat::Raw {
        return Ok(Ok(Arc::new(FileSource::new(file)?)));
    }
    let layers = containment::layers(path, &file, format, allow_backing)?;
    // What imago refuses, qemu reads.
    if format == ImageFormat::Qcow2
        && let Ok(source) = fs::guarded("opening qcow2", || Qcow2Source::open(file, &layers))
    {
        return Ok(Ok(Arc::new(source)));
    }
    Ok(Ok(Arc::new(NbdSource::start(&layers)?)))
}

/// Opens `path` read-only in user space and finds its root partition as `open::open` does.
/// `Ok(Err(NeedsKernel))` when some part of it has no user-space reader.
pub fn open(
    path: &Path,
    partition: Option<u32>,
    allow_backing: bool,
    marker: RootMarker,
) -> Result<std::result::Result<OpenedImage, NeedsKernel>> {
    let display = path.display().to_string();
    let mut image = File::open(path).with_context(|| format!("opening image {display}"))?;
    open::refuse_if_in_use(&image, &display)?;
    let format =
        format::detect(&mut image).with_context(|| format!("reading the header of {display}"))?;
    interrupt::check()?;
    let source = match block_source(path, image, format, allow_backing)? {
        Ok(source) => source,
        Err(why) => return Ok(Err(why)),
    };
    let disk = Window::whole(source.clone());
    let layout = partition::read_layout(&mut disk.cursor(), source.len())
        .map_err(|e| anyhow!("{display}: {e}"))?;
    let kinds = open::partition_kinds(&mut disk.cursor(), &layout, &display)?;
    open::refuse_unrecognised(&display, format, &layout, &kinds)?;

    // The root of partition `p`: on btrfs, the subvolume that holds the marker when the
    // default one does not (Fedora's layout), named as `subvol=` would mount it.
    let load = |p: &Partition, kind: &FsKind| -> Result<Loaded> {
        let window = match Window::new(source.clone(), p.offset, p.size) {
            Ok(window) => window,
            Err(e) => return Ok(Err(NeedsKernel(format!("partition {}: {e}", p.number)))),
        };
        let loaded = if *kind == FsKind::Btrfs {
            btrfs::load_root(window, &display, p.number, Path::new(marker.path))?
        } else {
            match fs::reader_for(kind, window) {
                Some(reader) => reader.map(|reader| (reader, None)),
                None => {
                    return Ok(Err(NeedsKernel(format!(
                        "partition {} ({}) has no user-space reader yet",
                        p.number,
                        kind.name()
                    ))));
                }
            }
        };
        let (reader, subvolume) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                return Ok(Err(NeedsKernel(format!(
                    "partition {} ({}) could not be read in user space: {e}",
                    p.number,
                    kind.name()
                ))));
            }
        };
        let name = PathBuf::from(format!("{display} (partition {})", p.number));
        Ok(Ok((Root::from_reader(reader, name), subvolume)))
    };

    let (chosen, kind, subvolume, root) = match partition {
        Some(number) => {
            let (p, kind) = open::chosen_by_hand(&display, &kinds, number)?;
            match load(&p, &kind)? {
                Ok((root, subvolume)) => (p, kind, subvolume, root),
                Err(why) => return Ok(Err(why)),
            }
        }
        None => {
            let mut candidates = Vec::new();
            let mut roots = Vec::new();
            let mut dangling = None;
            for (p, kind) in &kinds {
                if kind.mount_type().is_none() {
                    continue;
                }
                let (root, subvolume) = match load(p, kind)? {
                    Ok(loaded) => loaded,
                    Err(why) => return Ok(Err(why)),
                };
                interrupt::check()?;
                if root.exists(Path::new(marker.path)) {
                    candidates.push((p.clone(), *kind, subvolume));
                    roots.push(root);
                } else if let Some(target) = open::dangling_link_target(&root, marker.path) {
                    dangling.get_or_insert((p.number, target));
                }
            }
            // Nothing is refused here: reading needs no kernel support (XFS v4 reads).
            let (p, kind, subvolume) = open::pick(
                &display,
                &kinds,
                candidates,
                dangling,
                None,
                marker.path,
                marker.missing_hint,
            )?;
            (p, kind, subvolume, roots.remove(0))
        }
    };
    let info = ImageInfo {
        path: path.to_path_buf(),
        format,
        table: open::table_name(layout.table),
        partition: chosen.number,
        filesystem: open::filesystem_name(kind, subvolume.as_deref()),
        virtual_size: source.len(),
    };
    Ok(Ok(OpenedImage::in_user_space(root, info)))
}
