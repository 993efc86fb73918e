//! Formats no Rust reader here reads (vmdk, vhd, vhdx, zstd-compressed
//! qcow2, a qcow2 over a vmdk backing file) are read without root: our own
//! qemu-storage-daemon serves the image read-only over NBD on a unix socket
//! in a private directory, and our client reads it. The answers equal the
//! raw image's; nothing is written; the daemon and its directory are gone
//! after every run, Ctrl-C included.
//!
//! Needs qemu-utils (qemu-img, qemu-storage-daemon) and e2fsprogs.

mod common_images;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common_images::{MIB, Scratch, ext4_from, gpt_disk_around, path_str, run, sha256};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A GPT disk whose partition 2 (ext4) holds Debian bookworm's cloud.cfg
/// (tests/fixtures), after a BIOS boot partition.
fn guest_disk(ctx: &Scratch) -> std::path::PathBuf {
    let tree = ctx.path("tree");
    std::fs::create_dir_all(tree.join("etc/cloud")).unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cloud-cfg/debian-bookworm-22.4.2-1+deb12u4.cfg"
    );
    std::fs::copy(fixture, tree.join("etc/cloud/cloud.cfg")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "guest\n").unwrap();
    std::fs::write(
        tree.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    let fs = ctx.path("root.fs");
    ext4_from(&tree, &fs, 48 * MIB);
    let image = ctx.path("disk.img");
    gpt_disk_around(&image, &fs);
    image
}

/// `qemu-img convert` of `raw` to `format` (with extra `-o` options).
fn convert(ctx: &Scratch, raw: &Path, name: &str, format: &str, options: &[&str]) -> String {
    let out = ctx.path(name);
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", format];
    args.extend_from_slice(options);
    args.extend_from_slice(&[path_str(raw), path_str(&out)]);
    run("qemu-img", &args);
    out.display().to_string()
}

/// The JSON report without the image's own fields (path and format differ).
fn settings(stdout: &str) -> serde_json::Value {
    let mut doc: serde_json::Value = serde_json::from_str(stdout).unwrap();
    let doc_object = doc.as_object_mut().unwrap();
    doc_object.remove("root").unwrap();
    let image = doc_object.remove("image").unwrap();
    assert_eq!(image["partition"], 2, "{image}");
    assert_eq!(image["filesystem"], "ext4", "{image}");
    doc
}

fn leftovers(ctx: &Scratch) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir(&ctx.tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.extend(ctx.processes());
    left
}

#[test]
fn every_format_qemu_reads_is_read_without_root_and_agrees_with_raw() {
    let ctx = Scratch::new();
    let raw = guest_disk(&ctx);
    let base_vmdk = convert(&ctx, &raw, "base.vmdk", "vmdk", &[]);
    let overlay = ctx.path("overlay.qcow2").display().to_string();
    run(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-F", "vmdk", "-b", &base_vmdk, &overlay,
        ],
    );
    let images = [
        (base_vmdk.clone(), "vmdk", false),
        (convert(&ctx, &raw, "disk.vhd", "vpc", &[]), "vhd", false),
        (convert(&ctx, &raw, "disk.vhdx", "vhdx", &[]), "vhdx", false),
        (
            convert(
                &ctx,
                &raw,
                "zstd.qcow2",
                "qcow2",
                &["-c", "-o", "compression_type=zstd"],
            ),
            "qcow2",
            false,
        ),
        (overlay, "qcow2", true),
    ];
    let want = ctx.run_unprivileged(&["status", "--format", "json", path_str(&raw)]);
    assert_eq!(want.code, Some(0), "{want:?}");
    let want_settings = settings(&want.stdout);
    let want_doctor = ctx.run_unprivileged(&["doctor", "--format", "json", path_str(&raw)]);
    assert!(matches!(want_doctor.code, Some(0 | 4)), "{want_doctor:?}");

    for (image, format, backing) in &images {
        let before = sha256(Path::new(image));
        let mut args = vec!["status", "--format", "json"];
        if *backing {
            args.push("--allow-backing");
        }
        args.push(image);
        let got = ctx.run_unprivileged(&args);
        assert_eq!(got.code, Some(0), "{image}: {got:?}");
        let doc: serde_json::Value = serde_json::from_str(&got.stdout).unwrap();
        assert_eq!(doc["image"]["format"], *format, "{image}");
        assert_eq!(settings(&got.stdout), want_settings, "{image}");
        // Root reads the same way: one code path.
        assert_eq!(ctx.run(&args).stdout, got.stdout, "{image} as root");

        let mut doctor = vec!["doctor", "--format", "json"];
        if *backing {
            doctor.push("--allow-backing");
        }
        doctor.push(image);
        let got = ctx.run_unprivileged(&doctor);
        assert_eq!(got.code, want_doctor.code, "{image}: {got:?}");
        let findings = |s: &str| {
            let doc: serde_json::Value = serde_json::from_str(s).unwrap();
            // The image file's own finding names its format and sizes.
            let mut findings = doc["findings"].as_array().unwrap().clone();
            findings.retain(|f| !f["id"].as_str().unwrap().starts_with("image-f"));
            findings
        };
        assert_eq!(
            findings(&got.stdout),
            findings(&want_doctor.stdout),
            "{image}"
        );

        assert_eq!(
            sha256(Path::new(image)),
            before,
            "{image}: a read changed it"
        );
        assert_eq!(leftovers(&ctx), Vec::<String>::new(), "{image}");
    }
    // Without --allow-backing the overlay is refused before qemu opens anything.
    let refused = ctx.run_unprivileged(&["status", &images[4].0]);
    let line = refused.one_error();
    assert!(line.contains("--allow-backing"), "{line}");
    assert_eq!(leftovers(&ctx), Vec::<String>::new());
}

#[test]
fn ctrl_c_while_serving_stops_the_daemon_and_removes_its_socket() {
    let ctx = Scratch::new();
    let raw = guest_disk(&ctx);
    let vhdx = convert(&ctx, &raw, "disk.vhdx", "vhdx", &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_prepare-image"))
        .args(["status", &vhdx])
        .env("TMPDIR", &ctx.tmp)
        .env("PREPARE_IMAGE_PAUSE", "served")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "prepare-image: paused at served (PREPARE_IMAGE_PAUSE)"
    );
    let serving = ctx.processes();
    assert!(
        serving.iter().any(|p| p.contains("qemu-storage-daemon")),
        "{serving:?}"
    );
    let sockets: Vec<_> = std::fs::read_dir(&ctx.tmp).unwrap().collect();
    assert_eq!(sockets.len(), 1, "the daemon's private directory");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGINT");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted by SIGINT"), "{rest}");
    assert_eq!(leftovers(&ctx), Vec::<String>::new());
}
