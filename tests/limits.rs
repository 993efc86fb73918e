//! Hostile cloud.cfg texts against the real binary: aliases that multiply
//! ("billion laughs"), deep nesting and huge mappings must finish quickly, in
//! bounded memory, and either give cloud-init's reading or a one-line error
//! (exit 1) — never an abort, a stack overflow or an out-of-memory kill.
//!
//! The child runs with its address space capped (so that a regression fails
//! fast instead of eating the machine's memory) and its peak RSS is read from
//! `wait4`'s rusage.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Far above what reading any of these files needs once aliases are shared.
const MAX_RSS_BYTES: u64 = 200 * 1024 * 1024;
/// The address space the child may reserve: a copying loader hits it quickly.
const ADDRESS_SPACE_CAP: u64 = 2 * 1024 * 1024 * 1024;

struct Run {
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
    /// CPU time (user + system) of the run: unlike the wall clock it does
    /// not grow when other work shares the machine.
    cpu: Duration,
    max_rss_bytes: u64,
}

/// A root holding `text` as etc/cloud/cloud.cfg.
fn root_with(text: &str) -> TempDir {
    let root = TempDir::new().unwrap();
    fs::create_dir_all(root.path().join("etc/cloud")).unwrap();
    fs::write(root.path().join("etc/cloud/cloud.cfg"), text).unwrap();
    root
}

/// Runs `prepare-image status ROOT`, killing it after `limit`.
fn status(root: &Path, limit: Duration) -> Run {
    let out_dir = TempDir::new().unwrap();
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut command = Command::new(env!("CARGO_BIN_EXE_prepare-image"));
    command
        .arg("status")
        .arg(root)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap());
    // SAFETY: only setrlimit, which is async-signal-safe, runs in the child.
    unsafe {
        command.pre_exec(|| {
            let cap = libc::rlimit {
                rlim_cur: ADDRESS_SPACE_CAP,
                rlim_max: ADDRESS_SPACE_CAP,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    // Reaped below with wait4 (not Child::wait), which also gives its rusage.
    #[allow(clippy::zombie_processes)]
    let child = command.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut wait_status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, not yet reaped; the pointers are valid.
        let reaped = unsafe { libc::wait4(pid, &mut wait_status, libc::WNOHANG, &mut usage) };
        assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
        if reaped == pid {
            break;
        }
        if started.elapsed() > limit {
            // SAFETY: pid is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::wait4(pid, &mut wait_status, 0, &mut usage) };
            panic!("prepare-image status ran longer than {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Run {
        exit_code: libc::WIFEXITED(wait_status).then(|| libc::WEXITSTATUS(wait_status)),
        stdout: fs::read_to_string(stdout_path).unwrap(),
        stderr: fs::read_to_string(stderr_path).unwrap(),
        cpu: cpu_time(&usage),
        // ru_maxrss is in KiB on Linux.
        max_rss_bytes: usage.ru_maxrss as u64 * 1024,
    }
}

fn cpu_time(usage: &libc::rusage) -> Duration {
    let seconds = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Nested aliases: `levels` lists, each repeating the previous one's alias
/// `width` times; expanded, the last holds width^levels strings.
fn billion_laughs(levels: usize, width: usize) -> String {
    let names: Vec<String> = ('a'..='z').take(levels).map(String::from).collect();
    let mut text = format!(
        "#cloud-config\n{}: &{} [{}]\n",
        names[0],
        names[0],
        vec!["\"lol\""; width].join(", ")
    );
    for pair in names.windows(2) {
        let alias = format!("*{}", pair[0]);
        text += &format!(
            "{}: &{} [{}]\n",
            pair[1],
            pair[1],
            vec![alias; width].join(", ")
        );
    }
    text
}

fn assert_bounded(run: &Run, what: &str) {
    // Memory is the bound asserted; time is only guarded by the kill limit
    // of `status` (a hang, not a speed target).
    assert!(
        run.max_rss_bytes < MAX_RSS_BYTES,
        "{what}: peak RSS {} MiB",
        run.max_rss_bytes / (1024 * 1024)
    );
}

/// A one-line error naming the file, with line and column, and exit 1.
fn assert_refused(run: &Run, what: &str, wanted: &str) {
    assert_eq!(run.exit_code, Some(1), "{what}: {}", run.stderr);
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "{what}: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("cloud.cfg: line "),
        "{what}: {}",
        run.stderr
    );
    assert!(run.stderr.contains(wanted), "{what}: {}", run.stderr);
    // A bound is ours: the file is not said to be invalid for cloud-init.
    if run.stderr.contains("beyond what prepare-image reads") {
        assert!(
            !run.stderr.contains("cloud-init would ignore"),
            "{what}: {}",
            run.stderr
        );
    }
}

#[test]
fn billion_laughs_are_read_in_linear_memory() {
    for (levels, width) in [(9, 9), (10, 10)] {
        let text = billion_laughs(levels, width);
        // 10 levels of 10 is the 514-byte file of the issue.
        assert!(text.len() <= 514, "{} bytes", text.len());
        let root = root_with(&(text + "preserve_hostname: true\n"));
        let run = status(root.path(), Duration::from_secs(30));
        let what = format!("{levels} levels of {width} aliases");
        assert_eq!(run.exit_code, Some(0), "{what}: {}", run.stderr);
        assert_bounded(&run, &what);
        let hostname = run
            .stdout
            .lines()
            .find(|l| l.starts_with("hostname "))
            .unwrap_or_else(|| panic!("{what}: {}", run.stdout));
        assert!(
            hostname.contains("kept") && hostname.contains("preserve_hostname: true"),
            "{what}: {hostname}"
        );
    }
}

#[test]
fn merge_keys_over_aliases_stay_linear() {
    // Each mapping merges the previous one ten times and nests it twice.
    let mut text = String::from("m0: &m0 {k0: 1, k1: 2, k2: 3, k3: 4, k4: 5}\n");
    for i in 1..12 {
        let previous = format!("*m{}", i - 1);
        text += &format!(
            "m{i}: &m{i} {{<<: [{}], a{i}: {previous}, b{i}: {previous}}}\n",
            [previous.as_str(); 10].join(", ")
        );
    }
    let root = root_with(&(text.clone() + "preserve_hostname: true\n"));
    fs::create_dir_all(root.path().join("etc/cloud/cloud.cfg.d")).unwrap();
    // The same DAG again in a drop-in: merging two files must not expand it.
    fs::write(
        root.path().join("etc/cloud/cloud.cfg.d/50-again.cfg"),
        &text,
    )
    .unwrap();
    let run = status(root.path(), Duration::from_secs(30));
    assert_eq!(run.exit_code, Some(0), "{}", run.stderr);
    assert_bounded(&run, "merge keys");
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = 10_000;
    for (what, text) in [
        ("block lists", format!("a:\n{}x\n", "- ".repeat(deep))),
        (
            "block mappings",
            (0..400)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect::<String>()
                + "v\n",
        ),
        (
            "flow lists",
            format!("a: {}{}\n", "[".repeat(deep), "]".repeat(deep)),
        ),
        (
            "flow mappings",
            format!("a: {}1{}\n", "{x: ".repeat(deep), "}".repeat(deep)),
        ),
    ] {
        let root = root_with(&text);
        let run = status(root.path(), Duration::from_secs(30));
        assert_refused(&run, what, "");
        // The nesting bound stops every form first.
        assert!(
            run.stderr.contains("nested more than 128 levels"),
            "{what}: {}",
            run.stderr
        );
        assert_bounded(&run, what);
    }
}

#[test]
fn nesting_through_aliases_is_bounded() {
    // Each anchor nests the previous one a level deeper: the text is flat,
    // the meaning is 300 levels deep.
    let mut text = String::from("l0: &l0 [x]\n");
    for i in 1..300 {
        text += &format!("l{i}: &l{i} [*l{}]\n", i - 1);
    }
    let run = status(root_with(&text).path(), Duration::from_secs(30));
    assert_refused(&run, "aliases", "nested more than");
}

#[test]
fn many_keys_are_read_in_linear_time() {
    // Linear means ten times the keys cost about ten times the CPU time; a
    // quadratic key index would cost a hundred times. Compared within one
    // run, on CPU time, so a loaded machine does not decide the verdict.
    let cpu = |keys: usize| {
        let mut text: String = (0..keys).map(|i| format!("key{i}: {i}\n")).collect();
        // Duplicates: PyYAML keeps the last value at the first position.
        text += "key7: again\npreserve_hostname: false\npreserve_hostname: true\n";
        let run = status(root_with(&text).path(), Duration::from_secs(120));
        assert_eq!(run.exit_code, Some(0), "{keys} keys: {}", run.stderr);
        assert!(
            run.stdout.contains("preserve_hostname: true"),
            "{}",
            run.stdout
        );
        run.cpu
    };
    let small = cpu(10_000).max(Duration::from_millis(1));
    let large = cpu(100_000);
    let ratio = large.as_secs_f64() / small.as_secs_f64();
    assert!(
        ratio < 30.0,
        "10x the keys took {ratio:.1}x the CPU time ({small:?} -> {large:?}): not linear"
    );
}

#[test]
fn a_huge_document_is_refused() {
    let text = "# padding\n".repeat(500_000);
    let run = status(root_with(&text).path(), Duration::from_secs(30));
    assert_eq!(run.exit_code, Some(1), "{}", run.stderr);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("4 MiB, beyond what prepare-image reads"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_setting_holding_a_billion_laughs_is_shown_shortened() {
    let text = billion_laughs(10, 10) + "preserve_hostname: *j\nmanage_etc_hosts: *j\n";
    let run = status(root_with(&text).path(), Duration::from_secs(30));
    assert_eq!(run.exit_code, Some(0), "{}", run.stderr);
    assert_bounded(&run, "a setting through aliases");
    let hostname = run
        .stdout
        .lines()
        .find(|l| l.starts_with("hostname "))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    // A list is not a boolean: cloud-init does not keep the hostname.
    assert!(hostname.contains("overwritten"), "{hostname}");
    assert!(
        hostname.len() < 4096 && hostname.contains('…'),
        "{hostname}"
    );
}
