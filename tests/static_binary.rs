//! The static build (scripts/build-static.sh) is what the Packer in-guest
//! path uploads into whatever distribution is being built, so it must not
//! depend on anything in the guest: no dynamic loader (PT_INTERP), no shared
//! libraries (DT_NEEDED), and it must run in a root that holds nothing but
//! itself. The build goes to its own target directory (under cargo's
//! CARGO_TARGET_TMPDIR) so the normal build is not clobbered; the first run
//! compiles a release build (about a minute and a half), later runs reuse it.
//!
//! Needs root (chroot) and the toolchain's x86_64-unknown-linux-gnu target
//! with glibc's static libraries (Debian: libc6-dev, already needed to link
//! anything).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const FIXTURE: &str = "tests/fixtures/cloud-cfg/tencent-centos-rhel8.5.cfg";

/// Build once per test binary (the tests run in parallel), with the script
/// users run.
fn static_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let start = Instant::now();
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("static");
        let script = Path::new(MANIFEST_DIR).join("scripts/build-static.sh");
        let out = Command::new("bash")
            .arg(&script)
            .current_dir(MANIFEST_DIR)
            .env("CARGO_TARGET_DIR", &target_dir)
            .output()
            .expect("could not run bash scripts/build-static.sh");
        assert!(
            out.status.success(),
            "scripts/build-static.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            path.is_file(),
            "the script printed {path:?}, which is not a file"
        );
        eprintln!(
            "static build: {} in {:.2?}",
            path.display(),
            start.elapsed()
        );
        path
    })
}

// ---------------------------------------------------------------------------
// A minimal ELF reader: the program headers and the dynamic section.

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: i64 = 0;
const DT_NEEDED: i64 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;

#[derive(Debug)]
struct ProgramHeader {
    p_type: u32,
    offset: u64,
    filesz: u64,
}

#[derive(Debug)]
struct Elf {
    e_type: u16,
    program_headers: Vec<ProgramHeader>,
    /// The d_tag of every dynamic entry before DT_NULL.
    dynamic_tags: Vec<i64>,
    /// The interpreter's path, if PT_INTERP is present.
    interpreter: Option<String>,
    /// The names of the symbols .symtab defines (None: no .symtab, stripped).
    defined_symbols: Option<Vec<String>>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Parse a 64-bit little-endian x86_64 ELF file (panics on anything else).
fn parse_elf(b: &[u8]) -> Elf {
    assert!(b.len() >= 64 && &b[..4] == b"\x7fELF", "not an ELF file");
    assert_eq!(b[4], 2, "not ELFCLASS64");
    assert_eq!(b[5], 1, "not little-endian");
    assert_eq!(u16_at(b, 0x12), EM_X86_64, "not x86_64");
    let e_type = u16_at(b, 0x10);
    let phoff = u64_at(b, 0x20) as usize;
    let phentsize = u16_at(b, 0x36) as usize;
    let phnum = u16_at(b, 0x38) as usize;
    assert!(phentsize >= 56, "program header entries too small");
    let program_headers: Vec<ProgramHeader> = (0..phnum)
        .map(|i| {
            let h = phoff + i * phentsize;
            ProgramHeader {
                p_type: u32_at(b, h),
                offset: u64_at(b, h + 8),
                filesz: u64_at(b, h + 32),
            }
        })
        .collect();
    let interpreter = program_headers
        .iter()
        .find(|h| h.p_type == PT_INTERP)
        .map(|h| {
            let raw = &b[h.offset as usize..(h.offset + h.filesz) as usize];
            String::from_utf8_lossy(raw.split(|&c| c == 0).next().unwrap()).into_owned()
        });
    let mut dynamic_tags = Vec::new();
    if let Some(h) = program_headers.iter().find(|h| h.p_type == PT_DYNAMIC) {
        let start = h.offset as usize;
        let end = start + h.filesz as usize;
        for entry in (start..end).step_by(16) {
            let tag = u64_at(b, entry) as i64;
            if tag == DT_NULL {
                break;
            }
            dynamic_tags.push(tag);
        }
    }
    Elf {
        e_type,
        program_headers,
        dynamic_tags,
        interpreter,
        defined_symbols: defined_symbols(b),
    }
}

const SHT_SYMTAB: u32 = 2;
const SHN_UNDEF: u16 = 0;

/// The names of the symbols defined in .symtab (the section headers'
/// SHT_SYMTAB and its string table), or None if there is no .symtab.
fn defined_symbols(b: &[u8]) -> Option<Vec<String>> {
    let shoff = u64_at(b, 0x28) as usize;
    let shentsize = u16_at(b, 0x3a) as usize;
    let shnum = u16_at(b, 0x3c) as usize;
    let section = |i: usize| {
        let h = shoff + i * shentsize;
        (
            u32_at(b, h + 4),           // sh_type
            u64_at(b, h + 24) as usize, // sh_offset
            u64_at(b, h + 32) as usize, // sh_size
            u32_at(b, h + 40) as usize, // sh_link
            u64_at(b, h + 56) as usize, // sh_entsize
        )
    };
    let (_, offset, size, link, entsize) = (0..shnum).map(section).find(|s| s.0 == SHT_SYMTAB)?;
    let (_, str_offset, str_size, _, _) = section(link);
    let strings = &b[str_offset..str_offset + str_size];
    let names = (offset..offset + size)
        .step_by(entsize.max(24))
        .filter(|&sym| u16_at(b, sym + 6) != SHN_UNDEF)
        .map(|sym| {
            let name = &strings[u32_at(b, sym) as usize..];
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        })
        .collect();
    Some(names)
}

fn elf_of(path: &Path) -> Elf {
    parse_elf(&fs::read(path).unwrap())
}

#[test]
fn elf_reader_sees_the_interpreter_of_the_normal_build() {
    // The normal (dynamic) build has an interpreter and needs libc: if the
    // reader saw neither, the static checks below would prove nothing.
    let elf = elf_of(Path::new(env!("CARGO_BIN_EXE_prepare-image")));
    let interpreter = elf.interpreter.as_deref().unwrap_or_default();
    assert!(interpreter.contains("ld-linux"), "{elf:?}");
    assert!(elf.dynamic_tags.contains(&DT_NEEDED), "{elf:?}");
}

#[test]
fn static_build_has_no_interpreter_and_needs_no_library() {
    let elf = elf_of(static_binary());
    // rustc links a static PIE (ET_DYN, self-relocating) on this target.
    assert!(
        elf.e_type == ET_DYN || elf.e_type == ET_EXEC,
        "not an executable: {elf:?}"
    );
    assert_eq!(
        elf.interpreter, None,
        "the static build asks for a dynamic loader"
    );
    assert!(
        !elf.program_headers.iter().any(|h| h.p_type == PT_INTERP),
        "{elf:?}"
    );
    assert!(
        !elf.dynamic_tags.contains(&DT_NEEDED),
        "the static build needs shared libraries: {elf:?}"
    );
}

/// glibc's caveat for static binaries: the NSS functions (user, group and
/// host lookups) dlopen the guest's libnss_*.so at run time, which must then
/// match the glibc we linked; the linker warns "Using 'getpwnam' in
/// statically linked applications requires at runtime the shared libraries
/// from the glibc version used for linking" (rustc does not show linker
/// warnings). prepare-image uses none of them (owners are copied as numeric
/// ids), so no lookup can fail in an old guest. This keeps it so.
#[test]
fn static_build_does_not_use_nss() {
    const NSS_ENTRY_POINTS: &[&str] = &[
        "getpwnam",
        "getpwnam_r",
        "getpwuid",
        "getpwuid_r",
        "getpwent",
        "getgrnam",
        "getgrnam_r",
        "getgrgid",
        "getgrgid_r",
        "getgrent",
        "getgrouplist",
        "initgroups",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname_r",
        "gethostbyname2_r",
        "gethostbyaddr",
        "getservbyname",
        "getspnam",
    ];
    let elf = elf_of(static_binary());
    let symbols = elf.defined_symbols.expect(
        "the static build has no .symtab (stripped?): cannot check it for NSS; \
         keep symbols in the release profile or adapt this test",
    );
    let used: Vec<&String> = symbols
        .iter()
        .filter(|s| NSS_ENTRY_POINTS.contains(&s.as_str()))
        .collect();
    assert!(
        used.is_empty(),
        "the static build links NSS lookups {used:?}: in a guest they dlopen \
         that guest's libnss_*.so, which must match the glibc linked here"
    );
}

// ---------------------------------------------------------------------------
// Running in a root that holds nothing but the binary

/// A fresh empty directory with only the static binary in it, at /prepare-image.
fn empty_root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("static-chroot-")
        .tempdir()
        .unwrap();
    let inside = root.path().join("prepare-image");
    fs::copy(static_binary(), &inside).unwrap();
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// `chroot` found on the host's PATH (the child's environment is cleared,
/// and Command would look the program up in the child's PATH).
fn chroot_program() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chroot"))
        .find(|candidate| candidate.is_file())
        .expect("no `chroot` on PATH (coreutils; the test needs root)")
}

/// `chroot ROOT /prepare-image ARGS`, with an environment as bare as the root.
fn in_chroot(root: &Path, args: &[&str]) -> Output {
    Command::new(chroot_program())
        .arg(root)
        .arg("/prepare-image")
        .args(args)
        .env_clear()
        .env("PATH", "/")
        .output()
        .expect("could not run chroot (coreutils; the test needs root)")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn static_build_runs_in_an_empty_chroot() {
    let start = Instant::now();
    let root = empty_root();
    let entries: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["prepare-image"], "the root is not empty");

    let out = in_chroot(root.path(), &["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!("prepare-image {}\n", env!("CARGO_PKG_VERSION"))
    );

    let out = in_chroot(root.path(), &["profiles"]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("hostname"), "{out:?}");

    for args in [&["completions", "bash"][..], &["man"][..]] {
        let out = in_chroot(root.path(), args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
    }
    eprintln!("empty chroot: {:.2?}", start.elapsed());
}

/// The in-guest path in miniature: the binary runs against `/` of a root
/// that holds nothing else but etc/cloud/cloud.cfg (no libc, no /proc, no
/// /dev): check, edit, check again, and the JSON report.
#[test]
fn static_build_keeps_the_hostname_of_a_bare_root() {
    let start = Instant::now();
    let root = empty_root();
    fs::create_dir_all(root.path().join("etc/cloud")).unwrap();
    let original = fs::read_to_string(Path::new(MANIFEST_DIR).join(FIXTURE)).unwrap();
    let cfg = root.path().join("etc/cloud/cloud.cfg");
    fs::write(&cfg, &original).unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();

    let out = in_chroot(root.path(), &["--keep", "hostname", "--check", "/"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(fs::read_to_string(&cfg).unwrap(), original);

    let out = in_chroot(root.path(), &["--keep", "hostname", "/"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let edited = fs::read_to_string(&cfg).unwrap();
    assert!(
        edited.lines().any(|l| l == "preserve_hostname: true"),
        "{edited}"
    );
    assert!(!edited.contains("scripts-user"), "{edited}");

    let out = in_chroot(
        root.path(),
        &["--keep", "hostname", "--check", "--format", "json", "/"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mode"], "check", "{report}");
    assert_eq!(report["result"], "unchanged", "{report}");
    assert_eq!(report["settings"][0]["after"]["state"], "kept", "{report}");
    eprintln!("bare root: {:.2?}", start.elapsed());
}
