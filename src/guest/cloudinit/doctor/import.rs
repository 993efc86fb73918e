//! What Tencent Cloud's import and a virtio instance need from the files:
//! fstab without /dev/sdX names, no NIC pinned to the build machine's MAC,
//! virtio drivers in the default kernel.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{Context, Id};
use crate::access::image::format::ImageFormat;
use crate::access::image::open::ImageInfo;
use crate::doctor::Evidence;

/// The drivers an instance needs, with their module file under
/// lib/modules/VERSION/kernel, and whether the root filesystem needs it
/// before it is mounted (then a module must be in the initramfs; the NIC's
/// driver is loaded later, from the root filesystem).
const VIRTIO: &[(&str, &str, bool)] = &[
    ("CONFIG_VIRTIO_PCI", "drivers/virtio/virtio_pci.ko", true),
    ("CONFIG_VIRTIO_BLK", "drivers/block/virtio_blk.ko", true),
    ("CONFIG_VIRTIO_NET", "drivers/net/virtio_net.ko", false),
];
/// Where distributions put the initramfs of kernel VERSION.
const INITRAMFS_NAMES: &[&str] = &["initrd.img-{}", "initramfs-{}.img", "initrd-{}"];

pub(super) fn check(ctx: &mut Context<'_>) {
    let mut problem = false;
    if let Some((path, text)) = ctx.read("etc/fstab") {
        for (i, line) in text.lines().enumerate() {
            let device = line.split_whitespace().next().unwrap_or("");
            if is_unstable_disk_name(device) {
                problem = true;
                ctx.report(
                    Id::FstabDeviceName,
                    device.to_string(),
                    Some(Evidence::line(&path, i + 1)),
                    None,
                );
            }
        }
    }
    if let Some((path, text)) = ctx.read("etc/udev/rules.d/70-persistent-net.rules") {
        for (i, line) in text.lines().enumerate() {
            if !line.trim_start().starts_with('#') && line.contains("ATTR{address}==") {
                problem = true;
                let name = line
                    .split("NAME=")
                    .nth(1)
                    .map(|n| n.trim().trim_matches('"'))
                    .unwrap_or("");
                ctx.report(
                    Id::NicPinnedToMac,
                    format!("udev rule names {name}"),
                    Some(Evidence::line(&path, i + 1)),
                    Some(format!("rm /{}", path.display())),
                );
            }
        }
    }
    let scripts = "etc/sysconfig/network-scripts";
    for name in ctx
        .names(scripts)
        .into_iter()
        .filter(|n| n.starts_with("ifcfg-") && n != "ifcfg-lo")
    {
        let Some((path, text)) = ctx.read(&format!("{scripts}/{name}")) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(mac) = line.strip_prefix("HWADDR=")
                && !mac.trim_matches(['"', '\'']).is_empty()
            {
                problem = true;
                ctx.report(
                    Id::NicPinnedToMac,
                    format!("{name}: {line}"),
                    Some(Evidence::line(&path, i + 1)),
                    None,
                );
            }
        }
    }
    if !problem {
        ctx.report(Id::ImportFilesOk, String::new(), None, None);
    }
    check_virtio(ctx);
}

/// Tencent Cloud's import limits, as its documentation states them in GB;
/// read as decimal gigabytes, the stricter reading.
const MAX_VIRTUAL_SIZE: u64 = 500_000_000_000;
const MAX_ACTUAL_SIZE: u64 = 50_000_000_000;

/// The image file itself: a format the import takes (RAW, QCOW2, VHD, VMDK;
/// not VHDX), its virtual size and the bytes it really occupies.
pub(super) fn check_image_file(ctx: &mut Context<'_>, image: &ImageInfo) {
    let evidence = Some(Evidence::file(&image.path));
    let mut problem = false;
    if image.format == ImageFormat::Vhdx {
        problem = true;
        let fix = format!(
            "qemu-img convert -O qcow2 {} IMAGE.qcow2",
            image.path.display()
        );
        ctx.report(
            Id::ImageFormatNotImportable,
            "vhdx",
            evidence.clone(),
            Some(fix),
        );
    }
    // Blocks really allocated, so a sparse raw file counts what it holds.
    let actual = std::fs::metadata(&image.path).map_or(0, |m| m.blocks().saturating_mul(512));
    if image.virtual_size > MAX_VIRTUAL_SIZE {
        problem = true;
        ctx.report(
            Id::ImageTooLarge,
            format!("virtual size {} bytes, above 500 GB", image.virtual_size),
            evidence.clone(),
            None,
        );
    }
    if actual > MAX_ACTUAL_SIZE {
        problem = true;
        ctx.report(
            Id::ImageTooLarge,
            format!("{actual} bytes in the file, above 50 GB"),
            evidence.clone(),
            None,
        );
    }
    if !problem {
        let detail = format!(
            "{}, virtual size {} bytes, {actual} bytes in the file",
            image.format.name(),
            image.virtual_size
        );
        ctx.report(Id::ImageFileOk, detail, evidence, None);
    }
}

/// `/dev/sda1`, `/dev/hdb`: names that change when the disk is virtio.
fn is_unstable_disk_name(device: &str) -> bool {
    let Some(rest) = device
        .strip_prefix("/dev/sd")
        .or_else(|| device.strip_prefix("/dev/hd"))
    else {
        return false;
    };
    rest.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Orders kernel versions as people read them: `5.10.0-9` < `5.10.0-10`.
fn version_key(version: &str) -> Vec<(u64, String)> {
    version
        .split(['.', '-', '_', '+'])
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            (
                digits.parse().unwrap_or(0),
                part[digits.len()..].to_string(),
            )
        })
        .collect()
}

fn check_virtio(ctx: &mut Context<'_>) {
    // The default kernel: the newest, which is what grub's first entry boots.
    let Some(version) = ctx
        .names("boot")
        .into_iter()
        .filter_map(|n| n.strip_prefix("config-").map(str::to_string))
        .max_by_key(|v| version_key(v))
    else {
        ctx.report(Id::KernelConfigNotFound, "no boot/config-*", None, None);
        return;
    };
    let Some((path, text)) = ctx.read(&format!("boot/config-{version}")) else {
        ctx.report(
            Id::KernelConfigNotFound,
            format!("boot/config-{version} is not readable"),
            None,
            None,
        );
        return;
    };
    let modules = format!("lib/modules/{version}/kernel");
    let mut as_modules = Vec::new();
    let mut needed_early = Vec::new();
    let mut problem = false;
    for (option, module, early) in VIRTIO {
        let setting = text.lines().enumerate().find_map(|(i, line)| {
            let value = line.strip_prefix(option)?.strip_prefix('=')?;
            Some((i + 1, value.trim().to_string()))
        });
        match setting {
            Some((_, value)) if value == "y" => {}
            Some((line, value)) if value == "m" => {
                let module_path = Path::new(&modules).join(module);
                let dir = module_path
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let file = module_path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // Any compression: .ko, .ko.xz, .ko.zst, .ko.gz.
                if ctx.names(&dir).iter().any(|n| n.starts_with(&file)) {
                    as_modules.push(option.to_string());
                    if *early {
                        needed_early.push((*option, file, line));
                    }
                } else {
                    problem = true;
                    ctx.report(
                        Id::VirtioMissing,
                        format!(
                            "{option}=m, but {}* is not in the image",
                            module_path.display()
                        ),
                        Some(Evidence::line(&path, line)),
                        None,
                    );
                }
            }
            Some((line, value)) => {
                problem = true;
                ctx.report(
                    Id::VirtioMissing,
                    format!("{option}={value}"),
                    Some(Evidence::line(&path, line)),
                    None,
                );
            }
            None => {
                problem = true;
                ctx.report(
                    Id::VirtioMissing,
                    format!("{option} is not set"),
                    Some(Evidence::file(&path)),
                    None,
                );
            }
        }
    }
    let mut initramfs_detail = String::new();
    if !needed_early.is_empty() {
        match check_initramfs(ctx, &version, &path, &needed_early) {
            Ok(detail) => initramfs_detail = detail,
            Err(()) => problem = true,
        }
    }
    if !problem {
        let detail = if as_modules.is_empty() {
            format!("{version}: built in")
        } else {
            format!(
                "{version}: {} as modules{initramfs_detail}",
                as_modules.join(", ")
            )
        };
        ctx.report(Id::VirtioPresent, detail, None, None);
    }
}

/// The modules the root filesystem needs must be in the kernel's initramfs:
/// `Ok` with a note for the summary, `Err` when a finding was reported.
fn check_initramfs(
    ctx: &mut Context<'_>,
    version: &str,
    config: &Path,
    needed: &[(&str, String, usize)],
) -> Result<String, ()> {
    let found = INITRAMFS_NAMES.iter().find_map(|pattern| {
        let rel = format!("boot/{}", pattern.replace("{}", version));
        ctx.root.open_file(Path::new(&rel)).ok()
    });
    let Some((initramfs, file)) = found else {
        for (option, _, line) in needed {
            ctx.report(
                Id::VirtioMissing,
                format!("{option}=m, but the kernel has no initramfs in boot/ to load it from"),
                Some(Evidence::line(config, *line)),
                None,
            );
        }
        return Err(());
    };
    // Which of the needed modules appear: `.../virtio_blk.ko`, or compressed `.../virtio_blk.ko.zst`.
    let mut present = vec![false; needed.len()];
    let scanned = super::initramfs::for_each_name(file, &mut |name| {
        let base = name.rsplit('/').next().unwrap_or(name);
        for ((_, module, _), seen) in needed.iter().zip(present.iter_mut()) {
            if base == module
                || base
                    .strip_prefix(module.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
            {
                *seen = true;
            }
        }
    });
    if let Err(e) = scanned {
        ctx.report(
            Id::InitramfsUnreadable,
            format!("{e:#}"),
            Some(Evidence::file(&initramfs)),
            None,
        );
        return Err(());
    }
    let mut missing = false;
    for ((option, module, line), seen) in needed.iter().zip(present) {
        if !seen {
            missing = true;
            ctx.report(
                Id::VirtioMissing,
                format!("{option}=m, but {module} is not in {}", initramfs.display()),
                Some(Evidence::line(config, *line)),
                None,
            );
        }
    }
    if missing {
        return Err(());
    }
    Ok(format!(", in {}", initramfs.display()))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::doctor::Severity;

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut v = vec!["5.10.0-10-amd64", "5.10.0-9-amd64", "4.19.0-21-amd64"];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v, ["4.19.0-21-amd64", "5.10.0-9-amd64", "5.10.0-10-amd64"]);
    }

    #[test]
    fn fstab_naming_sd_or_hd_disks_is_an_error_at_its_line() {
        let t = Tree::debian();
        t.file("etc/fstab", "# /dev/sda1 in a comment\nUUID=1 / ext4 defaults 0 1\n/dev/sda2 /data ext4 defaults 0 2\n/dev/hdb1 none swap sw 0 0\n/dev/vdb1 /x ext4 defaults 0 0\n");
        assert_eq!(
            problems(&t.diagnose()),
            vec![
                (
                    "fstab-device-name".into(),
                    Severity::Error,
                    Some("etc/fstab:3".into())
                ),
                (
                    "fstab-device-name".into(),
                    Severity::Error,
                    Some("etc/fstab:4".into())
                ),
            ]
        );
    }

    #[test]
    fn nics_pinned_to_a_mac_are_warnings() {
        let t = Tree::debian();
        t.file(
            "etc/udev/rules.d/70-persistent-net.rules",
            "# generated\nSUBSYSTEM==\"net\", ACTION==\"add\", ATTR{address}==\"52:54:00:12:34:56\", NAME=\"eth0\"\n",
        )
        .file("etc/sysconfig/network-scripts/ifcfg-eth0", "DEVICE=eth0\nHWADDR=52:54:00:12:34:56\n")
        .file("etc/sysconfig/network-scripts/ifcfg-eth1", "DEVICE=eth1\nHWADDR=\n");
        assert_eq!(
            problems(&t.diagnose()),
            vec![
                (
                    "nic-pinned-to-mac".into(),
                    Severity::Warning,
                    Some("etc/udev/rules.d/70-persistent-net.rules:2".into())
                ),
                (
                    "nic-pinned-to-mac".into(),
                    Severity::Warning,
                    Some("etc/sysconfig/network-scripts/ifcfg-eth0:2".into())
                ),
            ]
        );
    }

    #[test]
    fn virtio_is_checked_in_the_newest_kernel_config_and_its_modules() {
        let t = Tree::debian();
        // An older kernel without virtio does not matter; the newest decides.
        t.file(
            "boot/config-5.10.0-9-amd64",
            "# CONFIG_VIRTIO_BLK is not set\n",
        )
        .file(
            "boot/config-6.1.0-13-amd64",
            "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=m\n# CONFIG_VIRTIO_NET is not set\n",
        );
        assert_eq!(
            problems(&t.diagnose()),
            vec![
                (
                    "virtio-driver-missing".into(),
                    Severity::Error,
                    Some("boot/config-6.1.0-13-amd64:2".into())
                ),
                (
                    "virtio-driver-missing".into(),
                    Severity::Error,
                    Some("boot/config-6.1.0-13-amd64".into())
                ),
            ]
        );
        t.file(
            "boot/config-6.1.0-13-amd64",
            "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_NET=m\n",
        )
        .file(
            "usr/lib/modules/6.1.0-13-amd64/kernel/drivers/net/virtio_net.ko.xz",
            "",
        );
        // The NIC's driver is loaded from the root filesystem: no initramfs needed.
        let findings = t.diagnose();
        assert_eq!(problems(&findings), vec![]);
        assert!(
            the(&findings, "virtio-drivers-present")
                .detail
                .ends_with("CONFIG_VIRTIO_NET as modules")
        );
    }

    fn image_findings(
        format: ImageFormat,
        virtual_size: u64,
        file: &Path,
    ) -> Vec<(String, Severity, Option<String>)> {
        let t = Tree::debian();
        let info = ImageInfo {
            path: file.to_path_buf(),
            format,
            table: "gpt (512-byte sectors)".into(),
            partition: 1,
            filesystem: "ext4".into(),
            virtual_size,
        };
        let root = crate::access::root::Root::open(t.path()).unwrap();
        let findings = super::super::diagnose(&root, Some(&info)).unwrap();
        findings
            .iter()
            .filter(|f| f.id.starts_with("image-"))
            .map(|f| {
                (
                    f.id.clone(),
                    f.severity,
                    f.evidence.as_ref().map(ToString::to_string),
                )
            })
            .collect()
    }

    #[test]
    fn the_image_file_must_be_a_format_and_size_the_import_takes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        // Sparse: 600 GB long, nothing allocated.
        std::fs::File::create(&file)
            .unwrap()
            .set_len(600_000_000_000)
            .unwrap();
        let name = Some(file.display().to_string());
        assert_eq!(
            image_findings(ImageFormat::Raw, 600_000_000_000, &file),
            [("image-too-large".to_string(), Severity::Error, name.clone())]
        );
        assert_eq!(
            image_findings(ImageFormat::Vhdx, 1 << 30, &file),
            [(
                "image-format-not-importable".to_string(),
                Severity::Error,
                name.clone()
            )]
        );
        assert_eq!(
            image_findings(ImageFormat::Qcow2, 500_000_000_000, &file),
            [("image-file-importable".to_string(), Severity::Ok, name)]
        );
    }

    #[test]
    fn modules_the_root_needs_must_be_in_the_initramfs() {
        use super::super::initramfs::tests::{compress, cpio};
        let t = Tree::debian();
        let version = "6.1.0-13-amd64";
        t.file(
            &format!("boot/config-{version}"),
            "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO_NET=m\n",
        )
        .file(
            &format!("usr/lib/modules/{version}/kernel/drivers/block/virtio_blk.ko"),
            "",
        )
        .file(
            &format!("usr/lib/modules/{version}/kernel/drivers/net/virtio_net.ko"),
            "",
        );
        // No initramfs at all: the root disk cannot be found.
        assert_eq!(
            problems(&t.diagnose()),
            vec![(
                "virtio-driver-missing".into(),
                Severity::Error,
                Some(format!("boot/config-{version}:2"))
            )]
        );
        // An initramfs (microcode part + gzip) without virtio_blk.
        let mut image = cpio(&[("kernel/x86/microcode/AuthenticAMD.bin", b"u")]);
        image.extend(compress("gzip", &cpio(&[("init", b"")])));
        std::fs::write(t.path().join(format!("boot/initrd.img-{version}")), &image).unwrap();
        let findings = t.diagnose();
        assert_eq!(
            problems(&findings),
            vec![(
                "virtio-driver-missing".into(),
                Severity::Error,
                Some(format!("boot/config-{version}:2"))
            )]
        );
        assert!(
            the(&findings, "virtio-driver-missing")
                .detail
                .contains("virtio_blk.ko is not in boot/initrd.img-")
        );
        // With it (compressed module, zstd initramfs): present; virtio_net may stay on the root.
        let mut image = cpio(&[("kernel/x86/microcode/AuthenticAMD.bin", b"u")]);
        let main = cpio(&[(
            &format!("usr/lib/modules/{version}/kernel/drivers/block/virtio_blk.ko.zst"),
            b"",
        )]);
        image.extend(compress("zstd", &main));
        std::fs::write(t.path().join(format!("boot/initrd.img-{version}")), &image).unwrap();
        let findings = t.diagnose();
        assert_eq!(problems(&findings), vec![]);
        assert!(
            the(&findings, "virtio-drivers-present")
                .detail
                .ends_with(&format!(", in boot/initrd.img-{version}"))
        );
        // Garbage where the initramfs should be.
        std::fs::write(
            t.path().join(format!("boot/initrd.img-{version}")),
            b"garbage",
        )
        .unwrap();
        assert_eq!(
            problems(&t.diagnose()),
            vec![(
                "initramfs-unreadable".into(),
                Severity::Warning,
                Some(format!("boot/initrd.img-{version}"))
            )]
        );
    }

    #[test]
    fn no_kernel_config_is_a_warning() {
        let t = Tree::debian();
        t.remove("boot/config-6.1.0-13-amd64");
        assert_eq!(
            problems(&t.diagnose()),
            vec![("kernel-config-not-found".into(), Severity::Warning, None)]
        );
    }
}
