//! prepare-image as a step of a real Packer build.
//!
//! These tests run Debian's `packer` (package `packer`, 1.6.6: HCL2
//! templates, the `null` builder, `shell-local`) offline, with a private
//! HOME, cache, config and temp directory so nothing is written to the
//! machine's Packer configuration. The `null` builder does nothing; the
//! `shell-local` steps run the prepare-image built by cargo on a test image
//! (GPT + ext4 holding a real Tencent Cloud cloud.cfg), raw and qcow2, which
//! is then checked independently of prepare-image: losetup, a read-only
//! mount, and the file's text.
//!
//! They need root (loop devices, mounts) and the Debian packages packer,
//! fdisk (sfdisk), e2fsprogs (mkfs.ext4 -d), util-linux (losetup, mount)
//! and qemu-utils (qemu-img; qemu-storage-daemon for prepare-image on
//! qcow2) with fuse3. A missing tool fails the test with the package to
//! install: a test skipped for a missing tool would prove nothing.
//!
//! Every packer output is printed (eprintln; `cargo test -- --nocapture`).

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod common_images;
use common_images::{LoopDevice, Mount, path_str, run, run_with_input, spawn_error};

const PREPARE_IMAGE: &str = env!("CARGO_BIN_EXE_prepare-image");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const FIXTURE: &str = "tests/fixtures/cloud-cfg/tencent-centos-rhel8.5.cfg";

const MIB: u64 = 1024 * 1024;
/// The root partition: GPT partition 1 at 1 MiB, 64 MiB long.
const PART_START_SECTOR: u64 = 2048;
const PART_SECTORS: u64 = 131072;

fn manifest_path(rel: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join(rel)
}

// ---------------------------------------------------------------------------
// Packer, isolated from the machine

/// A private HOME, cache, config and temp directory for packer.
struct Packer {
    dir: TempDir,
}

/// What a packer run printed, and how it ended.
struct PackerRun {
    code: Option<i32>,
    output: String,
    elapsed: Duration,
}

impl Packer {
    fn new() -> Packer {
        let dir = tempfile::Builder::new()
            .prefix("packer-test-")
            .tempdir()
            .unwrap();
        for sub in ["home", "cache", "config", "tmp"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        // Fail loudly, with the package to install, before anything else.
        let version = Command::new("packer")
            .arg("version")
            .env("PACKER_CHECKPOINT_DISABLE", "1")
            .env("HOME", dir.path().join("home"))
            .output()
            .unwrap_or_else(|e| spawn_error("packer", e));
        assert!(
            version.status.success(),
            "`packer version` failed: {}",
            String::from_utf8_lossy(&version.stderr)
        );
        Packer { dir }
    }

    /// `packer ARGS` in `cwd`, offline, writing nothing outside our
    /// temporary directory. Both streams are captured together in order
    /// (packer writes its build log to stdout, errors to stderr).
    fn run(&self, cwd: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> PackerRun {
        let d = self.dir.path();
        let log = d.join("tmp").join("packer-output.log");
        let log_file = fs::File::create(&log).unwrap();
        let mut cmd = Command::new("packer");
        cmd.args(args)
            .current_dir(cwd)
            .env("PACKER_CHECKPOINT_DISABLE", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("HOME", d.join("home"))
            .env("PACKER_CACHE_DIR", d.join("cache"))
            .env("PACKER_CONFIG_DIR", d.join("config"))
            .env("TMPDIR", d.join("tmp"))
            .env_remove("PACKER_LOG")
            .env_remove("PACKER_LOG_PATH")
            .env_remove("PACKER_PLUGIN_PATH")
            .envs(extra_env.iter().copied())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let start = Instant::now();
        let status = cmd.status().unwrap_or_else(|e| spawn_error("packer", e));
        let elapsed = start.elapsed();
        let output = fs::read_to_string(&log).unwrap();
        fs::remove_file(&log).unwrap();
        PackerRun {
            code: status.code(),
            output,
            elapsed,
        }
    }

    fn build(&self, cwd: &Path, template: &Path, vars: &[(&str, &str)]) -> PackerRun {
        let mut args = vec!["build".to_string(), "-color=false".to_string()];
        for (k, v) in vars {
            args.push("-var".to_string());
            args.push(format!("{k}={v}"));
        }
        args.push(path_str(template).to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(cwd, &args, &[])
    }

    fn validate(
        &self,
        cwd: &Path,
        template: &Path,
        vars: &[(&str, &str)],
        extra_env: &[(&str, &str)],
    ) -> PackerRun {
        let mut args = vec!["validate".to_string()];
        for (k, v) in vars {
            args.push("-var".to_string());
            args.push(format!("{k}={v}"));
        }
        args.push(path_str(template).to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(cwd, &args, extra_env)
    }
}

fn show(label: &str, run: &PackerRun) {
    eprintln!(
        "---- {label}: packer exit code {:?}, {:.2?} ----\n{}---- end of {label} ----",
        run.code, run.elapsed, run.output
    );
}

// ---------------------------------------------------------------------------
// Test images

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Raw,
    Qcow2,
}

/// A GPT disk image with one ext4 partition (partition 1, at 1 MiB, 64 MiB)
/// holding `etc/cloud/cloud.cfg` = `cloud_cfg`: a tree made into a
/// filesystem with `mkfs.ext4 -d`, copied into the disk with dd; for qcow2,
/// converted with qemu-img. Returns the image's path.
fn make_image(dir: &Path, cloud_cfg: &[u8], format: Format) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("etc/cloud")).unwrap();
    let cfg = tree.join("etc/cloud/cloud.cfg");
    fs::write(&cfg, cloud_cfg).unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();

    let part = dir.join("root.ext4");
    fs::File::create(&part)
        .unwrap()
        .set_len(PART_SECTORS * 512)
        .unwrap();
    run(
        "mkfs.ext4",
        &["-q", "-F", "-d", path_str(&tree), path_str(&part)],
    );

    let raw = dir.join("disk.raw");
    // One MiB before the partition, one after it for the backup GPT.
    fs::File::create(&raw)
        .unwrap()
        .set_len(PART_SECTORS * 512 + 2 * MIB)
        .unwrap();
    run_with_input(
        "sfdisk",
        &["-q", path_str(&raw)],
        &format!(
            "label: gpt\nstart={PART_START_SECTOR}, size={PART_SECTORS}, \
             type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n"
        ),
    );
    run(
        "dd",
        &[
            &format!("if={}", path_str(&part)),
            &format!("of={}", path_str(&raw)),
            "bs=1M",
            &format!("seek={}", PART_START_SECTOR * 512 / MIB),
            "conv=notrunc,sparse",
            "status=none",
        ],
    );
    fs::remove_file(&part).unwrap();
    fs::remove_dir_all(&tree).unwrap();
    match format {
        Format::Raw => raw,
        Format::Qcow2 => {
            let qcow2 = dir.join("disk.qcow2");
            run(
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    path_str(&raw),
                    path_str(&qcow2),
                ],
            );
            fs::remove_file(&raw).unwrap();
            qcow2
        }
    }
}

fn partition_extent(raw: &Path) -> (u64, u64) {
    let json: serde_json::Value = serde_json::from_str(&run("sfdisk", &["-J", path_str(raw)]))
        .expect("sfdisk -J prints JSON");
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt", "{json}");
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{json}");
    let start = parts[0]["start"].as_u64().unwrap();
    let size = parts[0]["size"].as_u64().unwrap();
    (start * sector, size * sector)
}

/// Read etc/cloud/cloud.cfg out of the image without prepare-image: a qcow2
/// is first converted to a raw copy; the raw partition is attached
/// read-only and mounted ro,noload.
fn read_cloud_cfg(image: &Path, format: Format, scratch: &Path) -> String {
    let raw = match format {
        Format::Raw => image.to_path_buf(),
        Format::Qcow2 => {
            let copy = scratch.join("verify-copy.raw");
            run(
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "qcow2",
                    "-O",
                    "raw",
                    path_str(image),
                    path_str(&copy),
                ],
            );
            copy
        }
    };
    let (offset, size) = partition_extent(&raw);
    let (offset, size) = (offset.to_string(), size.to_string());
    let device = LoopDevice::attach(&raw, &["-r", "-o", &offset, "--sizelimit", &size]);
    // noload: never replay a journal, so reading changes nothing.
    let mount = Mount::new(
        &device.path,
        &scratch.join("verify-mnt"),
        "ext4",
        "ro,noload",
    );
    let text = fs::read_to_string(mount.path.join("etc/cloud/cloud.cfg")).unwrap();
    drop(mount);
    drop(device);
    if format == Format::Qcow2 {
        fs::remove_file(&raw).unwrap();
    }
    text
}

/// `--keep hostname` held: `preserve_hostname: true` at the top level, no
/// `scripts-user` left, and every other line of the original kept in order.
fn assert_hostname_kept(original: &str, edited: &str) {
    assert!(
        edited.lines().any(|l| l == "preserve_hostname: true"),
        "no top-level `preserve_hostname: true`:\n{edited}"
    );
    assert!(
        !edited.contains("scripts-user"),
        "scripts-user is still there:\n{edited}"
    );
    let before: Vec<&str> = original
        .lines()
        .filter(|l| !l.contains("scripts-user"))
        .collect();
    let after: Vec<&str> = edited
        .lines()
        .filter(|l| *l != "preserve_hostname: true")
        .collect();
    assert_eq!(before, after, "other lines changed:\n{edited}");
}

/// A cheap content hash, to prove a file was not modified.
fn file_hash(path: &Path) -> u64 {
    let mut file = fs::File::open(path).unwrap();
    let mut hasher = DefaultHasher::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return hasher.finish();
        }
        hasher.write(&buf[..n]);
    }
}

fn assert_no_loop_device_on(image: &Path) {
    let attached = run("losetup", &["-j", path_str(image)]);
    assert!(
        attached.trim().is_empty(),
        "a loop device is still attached to {}: {attached}",
        image.display()
    );
}

// ---------------------------------------------------------------------------
// The on-artifact example, run as written

fn on_artifact_template() -> PathBuf {
    manifest_path("examples/packer/on-artifact.pkr.hcl")
}

fn check_on_artifact_example(format: Format) {
    let start = Instant::now();
    let packer = Packer::new();
    let work = TempDir::new().unwrap();
    let original = fs::read_to_string(manifest_path(FIXTURE)).unwrap();
    let image = make_image(work.path(), original.as_bytes(), format);

    let build = packer.build(
        work.path(),
        &on_artifact_template(),
        &[
            ("prepare_image_binary", PREPARE_IMAGE),
            ("keep", "hostname"),
            ("image", path_str(&image)),
        ],
    );
    show(&format!("on-artifact example, {format:?} image"), &build);
    assert_eq!(build.code, Some(0), "the build failed:\n{}", build.output);
    for needle in [
        // The edit: the diff and the summary ...
        "Running post-processor: prepare-image (type shell-local)",
        "+preserve_hostname: true",
        "- - scripts-user",
        // ... the clean in the same run (nothing left by a boot here) ...
        "clean: 0 path(s), 0 bytes in ",
        // ... then the check, which found nothing pending (exit 0).
        "Running post-processor: prepare-image-check (type shell-local)",
        "Builds finished.",
    ] {
        assert!(
            build.output.contains(needle),
            "packer output lacks {needle:?}:\n{}",
            build.output
        );
    }

    if format == Format::Raw {
        assert_no_loop_device_on(&image);
    } else {
        let info: serde_json::Value = serde_json::from_str(&run(
            "qemu-img",
            &["info", "--output=json", path_str(&image)],
        ))
        .unwrap();
        assert_eq!(info["format"], "qcow2", "the image changed format: {info}");
        run("qemu-img", &["check", path_str(&image)]);
    }
    let edited = read_cloud_cfg(&image, format, work.path());
    assert_hostname_kept(&original, &edited);
    eprintln!(
        "on-artifact example, {format:?}: test took {:.2?} (packer {:.2?})",
        start.elapsed(),
        build.elapsed
    );
}

#[test]
fn on_artifact_example_keeps_the_hostname_in_a_raw_image() {
    check_on_artifact_example(Format::Raw);
}

#[test]
fn on_artifact_example_keeps_the_hostname_in_a_qcow2_image() {
    check_on_artifact_example(Format::Qcow2);
}

/// A keep that cannot hold (here: cloud.cfg is a Jinja template, exit 1)
/// fails the example's build at its first step, and nothing is written.
#[test]
fn on_artifact_example_fails_the_build_when_a_keep_cannot_hold() {
    let start = Instant::now();
    let packer = Packer::new();
    let work = TempDir::new().unwrap();
    let original = fs::read_to_string(manifest_path(FIXTURE)).unwrap();
    let jinja = format!("## template:jinja\n{original}");
    let image = make_image(work.path(), jinja.as_bytes(), Format::Raw);

    let build = packer.build(
        work.path(),
        &on_artifact_template(),
        &[
            ("prepare_image_binary", PREPARE_IMAGE),
            ("keep", "hostname"),
            ("image", path_str(&image)),
        ],
    );
    show("on-artifact example, Jinja cloud.cfg", &build);
    assert_ne!(
        build.code,
        Some(0),
        "the build succeeded:\n{}",
        build.output
    );
    for needle in [
        "Running post-processor: prepare-image (type shell-local)",
        "error: ",
        "Jinja",
        "Post-processor failed: Script exited with non-zero exit status: 1",
    ] {
        assert!(
            build.output.contains(needle),
            "packer output lacks {needle:?}:\n{}",
            build.output
        );
    }
    assert!(
        !build.output.contains("prepare-image-check"),
        "the check ran after a failed step:\n{}",
        build.output
    );
    // The real run mounted the filesystem read-write before it read
    // cloud.cfg, so the ext4 superblock changed; cloud.cfg must not have.
    assert_no_loop_device_on(&image);
    let unchanged = read_cloud_cfg(&image, Format::Raw, work.path());
    assert_eq!(unchanged, jinja, "cloud.cfg was modified");
    eprintln!("Jinja failure: test took {:.2?}", start.elapsed());
}

// ---------------------------------------------------------------------------
// A check that does not hold stops the build

/// Only `--check`, on an image nothing has edited: the check exits 3, and
/// Packer must stop there. The first form mirrors in-guest.pkr.hcl (the
/// check is a provisioner), the second on-artifact.pkr.hcl (a chain of
/// post-processors).
const CHECK_AS_PROVISIONER: &str = r#"
variable "prepare_image_binary" {
  type = string
}
variable "image" {
  type = string
}
source "null" "check" {
  communicator = "none"
}
build {
  sources = ["source.null.check"]
  provisioner "shell-local" {
    inline = ["'${var.prepare_image_binary}' --keep hostname --check '${var.image}'"]
  }
  provisioner "shell-local" {
    inline = ["echo provisioner-after-the-check"]
  }
  post-processor "shell-local" {
    name   = "post-processor-after-the-check"
    inline = ["echo post-processor-after-the-check"]
  }
}
"#;

const CHECK_AS_POST_PROCESSOR: &str = r#"
variable "prepare_image_binary" {
  type = string
}
variable "image" {
  type = string
}
source "null" "check" {
  communicator = "none"
}
build {
  sources = ["source.null.check"]
  post-processors {
    post-processor "shell-local" {
      name   = "prepare-image-check"
      inline = ["'${var.prepare_image_binary}' --keep hostname --check '${var.image}'"]
    }
    post-processor "shell-local" {
      name   = "step-after-the-check"
      inline = ["echo step-after-the-check"]
    }
  }
}
"#;

#[test]
fn failing_check_stops_the_packer_build() {
    let start = Instant::now();
    let packer = Packer::new();
    let work = TempDir::new().unwrap();
    let original = fs::read_to_string(manifest_path(FIXTURE)).unwrap();
    let image = make_image(work.path(), original.as_bytes(), Format::Raw);
    let before = file_hash(&image);

    for (label, template, failed_step) in [
        (
            "failing check as a provisioner",
            CHECK_AS_PROVISIONER,
            "Script exited with non-zero exit status: 3",
        ),
        (
            "failing check as a post-processor",
            CHECK_AS_POST_PROCESSOR,
            "Post-processor failed: Script exited with non-zero exit status: 3",
        ),
    ] {
        let path = work.path().join("check.pkr.hcl");
        fs::write(&path, template).unwrap();
        let build = packer.build(
            work.path(),
            &path,
            &[
                ("prepare_image_binary", PREPARE_IMAGE),
                ("image", path_str(&image)),
            ],
        );
        show(label, &build);
        assert_eq!(
            build.code,
            Some(1),
            "{label}: packer did not fail:\n{}",
            build.output
        );
        for needle in [
            // prepare-image names what is pending ...
            "- - scripts-user",
            "+preserve_hostname: true",
            "pending",
            // ... and packer names the failing step and its exit code.
            failed_step,
            "errored",
            "no artifacts were created",
        ] {
            assert!(
                build.output.contains(needle),
                "{label}: packer output lacks {needle:?}:\n{}",
                build.output
            );
        }
        if template == CHECK_AS_POST_PROCESSOR {
            assert!(
                build
                    .output
                    .contains("Running post-processor: prepare-image-check (type shell-local)"),
                "{label}: the failing step is not named:\n{}",
                build.output
            );
        }
        assert!(
            !build.output.contains("after-the-check"),
            "{label}: a step after the failed check ran:\n{}",
            build.output
        );
        fs::remove_file(&path).unwrap();
    }
    assert_eq!(file_hash(&image), before, "--check modified the image");
    assert_no_loop_device_on(&image);
    let unchanged = read_cloud_cfg(&image, Format::Raw, work.path());
    assert_eq!(unchanged, original);
    eprintln!("failing check: test took {:.2?}", start.elapsed());
}

// ---------------------------------------------------------------------------
// The example templates parse, and so do the sources in their comments

/// Uncomment the commented-out `source` blocks of an example template: each
/// starts with `# source "` and ends with `# }`.
fn commented_sources(template: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in template.lines() {
        if let Some(block) = current.as_mut() {
            let text = line.strip_prefix("# ").or_else(|| line.strip_prefix('#'));
            let text = text.unwrap_or_else(|| panic!("unterminated source block: {line}"));
            block.push_str(text);
            block.push('\n');
            if text == "}" {
                let block = current.take().unwrap();
                let mut words = block.split('"');
                let kind = words.nth(1).unwrap().to_string();
                let name = words.nth(1).unwrap().to_string();
                blocks.push((format!("source.{kind}.{name}"), block));
            }
        } else if line.starts_with("# source \"") {
            current = Some(format!("{}\n", &line[2..]));
        }
    }
    assert!(current.is_none(), "unterminated commented source block");
    blocks
}

/// The template with its active `source "null"` block replaced by an
/// uncommented example source, and `sources` naming it.
fn with_source(template: &str, reference: &str, block: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    let mut replaced = false;
    for line in template.lines() {
        if line.starts_with("source \"null\"") {
            skipping = true;
            out.push_str(block);
            continue;
        }
        if skipping {
            if line == "}" {
                skipping = false;
            }
            continue;
        }
        if line.trim_start().starts_with("sources = [\"source.null.") {
            out.push_str(&format!("  sources = [\"{reference}\"]\n"));
            replaced = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(replaced, "no `sources = [\"source.null....\"]` line");
    // validate checks a checksum's form, and downloads `file:` ones: give
    // the placeholder a well-formed value.
    out.replace(
        "sha256:<the image's sha256, from CHECKSUM next to it>",
        &format!("sha256:{}", "0".repeat(64)),
    )
}

#[test]
fn example_templates_validate() {
    let start = Instant::now();
    let packer = Packer::new();
    let work = TempDir::new().unwrap();
    let in_guest = manifest_path("examples/packer/in-guest.pkr.hcl");
    let on_artifact = on_artifact_template();
    let in_guest_vars: &[(&str, &str)] = &[
        ("keep", "hostname,dns"),
        ("ssh_host", "192.0.2.10"),
        ("prepare_image_binary", PREPARE_IMAGE),
    ];
    let on_artifact_vars: &[(&str, &str)] = &[
        ("keep", "hostname,dns"),
        ("image", "output-centos/centos.qcow2"),
    ];

    for (template, vars) in [(&in_guest, in_guest_vars), (&on_artifact, on_artifact_vars)] {
        let run = packer.validate(work.path(), template, vars, &[]);
        show(&format!("packer validate {}", template.display()), &run);
        assert_eq!(run.code, Some(0), "{}", run.output);

        // The keep list reaches a shell: anything but a comma list of
        // names is refused by the variable's validation.
        let mut bad: Vec<(&str, &str)> = vars.to_vec();
        bad[0] = ("keep", "hostname; reboot");
        let run = packer.validate(work.path(), template, &bad, &[]);
        assert_eq!(run.code, Some(1), "{}", run.output);
        assert!(
            run.output.contains("must be a comma list of profile names"),
            "{}",
            run.output
        );

        // The sources shown in comments are valid too (offline: dummy
        // credentials, a well-formed checksum, empty seed files).
        let text = fs::read_to_string(template).unwrap();
        let blocks = commented_sources(&text);
        assert!(
            !blocks.is_empty(),
            "{} shows no example source",
            template.display()
        );
        fs::create_dir_all(work.path().join("seed")).unwrap();
        fs::write(work.path().join("seed/user-data"), "#cloud-config\n").unwrap();
        fs::write(work.path().join("seed/meta-data"), "").unwrap();
        for (reference, block) in blocks {
            let variant = work.path().join("variant.pkr.hcl");
            fs::write(&variant, with_source(&text, &reference, &block)).unwrap();
            let run = packer.validate(
                work.path(),
                &variant,
                vars,
                &[
                    ("TENCENTCLOUD_SECRET_ID", "dummy-id"),
                    ("TENCENTCLOUD_SECRET_KEY", "dummy-key"),
                ],
            );
            show(
                &format!("packer validate {} with {reference}", template.display()),
                &run,
            );
            assert_eq!(run.code, Some(0), "{reference}: {}", run.output);
        }
    }

    // Canonical formatting.
    let run = packer.run(
        work.path(),
        &["fmt", "-check", path_str(&manifest_path("examples/packer"))],
        &[],
    );
    assert_eq!(
        run.code,
        Some(0),
        "`packer fmt` would change: {}",
        run.output
    );
    eprintln!("validate: test took {:.2?}", start.elapsed());
}
