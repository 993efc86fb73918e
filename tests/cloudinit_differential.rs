//! Differential test against the real thing: Debian's cloud-init 22.4.2.
//!
//! Generates cloud.cfg + drop-in trees from a fixed seed (booleans of every
//! spelling, module entries in every form, block and flow, comments, CRLF,
//! `merge_how` / `merge_type` in string and list forms, `conf_d`, symlinks
//! reaching a file twice, non-UTF-8 names and contents, files PyYAML
//! rejects, non-mapping top levels, `## template: basic`), writes each into
//! a temporary root, and asks one long-lived `/usr/bin/python3` running
//! cloud-init's own `util.read_conf_with_confd` inside that root (tests/judge/cloud_init_judge.py). Per case it compares
//! the merged configuration, whether cloud-init fails, how many files it
//! ignores, and how cloud-init's modules read preserve_hostname,
//! manage_etc_hosts and network.config against our effective configuration
//! and our per-setting verdicts. Any disagreement fails the test.
//!
//! `PREPARE_IMAGE_DIFF_CASES` sets the number of cases (default 1500, about
//! 45 s) and `PREPARE_IMAGE_DIFF_SEED` the seed. The generated YAML stays
//! within what our parser and PyYAML read alike; syntax differences are the
//! YAML differential test's subject.
//!
//! Needs: Debian's python3 with python3-yaml, python3-jinja2,
//! python3-configobj, python3-jsonpatch, python3-jsonschema,
//! python3-netifaces, python3-oauthlib, python3-requests (what
//! `import cloudinit.util` pulls in), apt-get and dpkg-deb to fetch the
//! cloud-init package, and root (the judge chroots into each case).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

mod judge;

use prepare_image::access::root::Root;
use prepare_image::guest::cloudinit::document::Value;
use prepare_image::guest::cloudinit::editor::Edit;
use prepare_image::guest::cloudinit::effective::{self, ConfigSet, Lookup, setting_state};
use prepare_image::guest::cloudinit::profile::{Profile, ProfileEdit};

// ---------------------------------------------------------------------------
// The judge
// ---------------------------------------------------------------------------

struct Judge {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Judge {
    fn start() -> Judge {
        let judge_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/judge");
        let fetched = Command::new(judge_dir.join("fetch-cloud-init.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running tests/judge/fetch-cloud-init.sh");
        assert!(
            fetched.status.success(),
            "tests/judge/fetch-cloud-init.sh failed: Debian's cloud-init 22.4.2 is needed as the judge (apt-get download cloud-init)"
        );
        let packages = String::from_utf8(fetched.stdout).unwrap();
        let mut child = Command::new("/usr/bin/python3")
            .arg(judge_dir.join("cloud_init_judge.py"))
            .arg(packages.trim())
            // Names are str with surrogateescape, as under cloud-init's UTF-8 locale.
            .env("PYTHONUTF8", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting /usr/bin/python3 (Debian's python3 is the judge's interpreter)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Judge {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, root: &Path) -> serde_json::Value {
        let request = serde_json::json!({ "root": root.to_str().unwrap() });
        writeln!(self.stdin, "{request}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "the judge stopped (is python3-yaml etc. installed?)"
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("judge answer {line:?}: {e}"))
    }
}

impl Drop for Judge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------

/// splitmix64: a fixed seed gives the same cases everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
}

/// Boolean spellings: YAML 1.1 booleans, strings cloud-init's translate_bool
/// reads, and the ones it does not (`y`, `n`, `2`).
const BOOLS: &[&str] = &[
    "true",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "Y",
    "n",
    "N",
    "'1'",
    "1",
    "0",
    "2",
    "\"yes\"",
    "'Yes '",
    "TRUE",
    "'true'",
    "Off",
    "~",
    "''",
    "[]",
    "{}",
    "1.0",
    "'on'",
    "' on '",
    "\"y\"",
    "template",
    "localhost",
    "'localhost'",
    "LOCALHOST",
    "'template'",
    "[1]",
    "'0'",
    "enabled",
];

const MERGE_HOWS: &[&str] = &[
    "dict(replace)+list()+str()",
    "'dict(no_replace,recurse_list)+list(append)+str()'",
    "'list(append)+dict(recurse_array)+str()'",
    "dict(recurse_str)+str(append)",
    "list(prepend)",
    "dict()",
    "''",
    "'Dict(Replace)+List(Append)'",
    "'dict(replace'",
    "foo()",
    "'dict(recurse_array)+list(prepend)'",
    "'dict(allow_delete)+list()+str()'",
    "'dict(replace,recurse_list) + list(no_replace)'",
    "'list(replace,recurse_dict)+dict(recurse_array)'",
    "[[dict, replace], [list, append]]",
    "[{name: dict, settings: [replace]}]",
    "[{name: list, settings: append}, {name: dict, settings: [recurse_list]}]",
    "[{name: dict, settings: no_replace}]",
    "[dict]",
    "[[dict]]",
    "[[Dict, replace]]",
    "[{name: dict}]",
    "5",
    "~",
    "{dict: 1}",
    "[[m_dict, replace], [m_str, append]]",
    "[{name: '', settings: 5}, [list, prepend]]",
    "[[m_list, append], [dict, recurse_array]]",
    "[[~, x], [dict, replace]]",
    "'dict(recurse_array,recurse_str)+list(replace,recurse_str)+str(append)'",
    "'list(no_replace)+dict(recurse_list)'",
    "'dict(replace)+list(append)+str(append)'",
];

const CONF_DS: &[&str] = &[
    "/etc/cloud/cloud.cfg.d",
    "/etc/cloud",
    "/etc/cloud/other.d",
    "' /etc/cloud/other.d '",
    "etc/cloud/other.d",
    "''",
    "~",
    "false",
    "5",
    "[a]",
    "/nonexistent",
];

const MODULES: &[&str] = &[
    "scripts-user",
    "scripts_user",
    "ntp",
    "update_etc_hosts",
    "[scripts-user, always]",
    "{name: ntp, frequency: always}",
    "[set-passwords]",
];

const SCALARS: &[&str] = &[
    "1", "2", "x", "'x y'", "\"q\"", "~", "0.5", "ab", "cd", "-3", "0x10", "'a:b'", "true",
];

const NUMERIC_KEYS: &[&str] = &["1", "true", "1.0", "'1'"];

/// Texts PyYAML rejects and our parser rejects too; cloud-init ignores them.
const REJECTED: &[&str] = &[
    "a: [1, 2\n",
    "a: 'x\n",
    "a: b: c\n",
    "a: 1\n- b\n",
    "a: {b: 1\n",
    "a: 1\n---\nb: 2\n",
    "a: *nothing\n",
    "a: !!python/object x\n",
];

/// Top levels that are not mappings: cloud-init ignores them.
const NOT_MAPPINGS: &[&str] = &["- a\n- b\n", "5\n", "just text\n", "[1, 2]\n", "true\n"];

/// A value tree rendered as YAML in block or flow style.
enum Tree {
    Scalar(String),
    List(Vec<Tree>),
    Map(Vec<(String, Tree)>),
}

impl Tree {
    fn flow(&self) -> String {
        match self {
            Tree::Scalar(s) => s.clone(),
            Tree::List(items) => format!(
                "[{}]",
                items.iter().map(Tree::flow).collect::<Vec<_>>().join(", ")
            ),
            Tree::Map(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.flow()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// `key:` and the value at `indent`, block style where it has children.
    fn block_entry(&self, key: &str, indent: usize, rng: &mut Rng, out: &mut String) {
        let pad = " ".repeat(indent);
        let comment = if rng.percent(15) { "  # note" } else { "" };
        match self {
            Tree::List(items) if !items.is_empty() && rng.percent(70) => {
                out.push_str(&format!("{pad}{key}:{comment}\n"));
                let dash = if rng.percent(50) { indent } else { indent + 2 };
                for item in items {
                    out.push_str(&format!("{}- {}\n", " ".repeat(dash), item.flow()));
                }
            }
            Tree::Map(entries) if !entries.is_empty() && rng.percent(70) => {
                out.push_str(&format!("{pad}{key}:{comment}\n"));
                for (k, v) in entries {
                    v.block_entry(k, indent + 2, rng, out);
                }
            }
            other => out.push_str(&format!("{pad}{key}: {}{comment}\n", other.flow())),
        }
    }
}

fn scalar(rng: &mut Rng, pool: &[&str]) -> Tree {
    Tree::Scalar(rng.pick(pool).to_string())
}

fn value(rng: &mut Rng, depth: usize) -> Tree {
    match rng.below(if depth > 1 { 2 } else { 4 }) {
        0 | 1 => scalar(rng, SCALARS),
        2 => Tree::List((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        _ => Tree::Map(
            (0..rng.below(4))
                .map(|i| (["x", "y", "z", "w"][i].to_string(), value(rng, depth + 1)))
                .collect(),
        ),
    }
}

/// One configuration file's text.
fn config_text(rng: &mut Rng, is_base: bool, conf_d: Option<&str>) -> String {
    if rng.percent(4) {
        return rng.pick(REJECTED).to_string();
    }
    if rng.percent(3) {
        return rng.pick(NOT_MAPPINGS).to_string();
    }
    if rng.percent(3) {
        return rng.pick(&["", "# only a comment\n", "---\n"]).to_string();
    }
    let mut entries: Vec<(String, Tree)> = Vec::new();
    let keys = [
        "preserve_hostname",
        "manage_etc_hosts",
        "network",
        "cloud_final_modules",
        "cloud_init_modules",
        "a",
        "m",
        "l",
        "s",
        "num",
    ];
    for _ in 0..rng.below(6) {
        let key = *rng.pick(&keys);
        if entries.iter().any(|(k, _)| k == key) {
            continue;
        }
        let tree = match key {
            "preserve_hostname" | "manage_etc_hosts" => scalar(rng, BOOLS),
            "network" => {
                if rng.percent(80) {
                    let mut m = vec![(
                        "config".to_string(),
                        scalar(rng, &["disabled", "enabled", "'disabled'", "Disabled", "1"]),
                    )];
                    if rng.percent(30) {
                        m.push((
                            "renderers".to_string(),
                            Tree::List(vec![scalar(rng, &["eni", "netplan"])]),
                        ));
                    }
                    Tree::Map(m)
                } else {
                    scalar(rng, SCALARS)
                }
            }
            "cloud_final_modules" | "cloud_init_modules" => {
                Tree::List((0..rng.below(4)).map(|_| scalar(rng, MODULES)).collect())
            }
            "s" => scalar(rng, &["ab", "cd", "'e f'"]),
            // Keys Python's dict takes as one: 1, true and 1.0 (one per
            // file: within a file that is the YAML loader's business).
            "num" => {
                if entries
                    .iter()
                    .any(|(k, _)| NUMERIC_KEYS.contains(&k.as_str()))
                {
                    continue;
                }
                let spelled = *rng.pick(NUMERIC_KEYS);
                entries.push((spelled.to_string(), value(rng, 0)));
                continue;
            }
            "l" => Tree::List((0..rng.below(4)).map(|_| scalar(rng, SCALARS)).collect()),
            _ => value(rng, 0),
        };
        entries.push((key.to_string(), tree));
    }
    if rng.percent(20) {
        let key = if rng.percent(75) {
            "merge_how"
        } else {
            "merge_type"
        };
        entries.insert(
            rng.below(entries.len() + 1),
            (key.to_string(), scalar(rng, MERGE_HOWS)),
        );
        if rng.percent(20) {
            entries.push(("merge_type".to_string(), scalar(rng, MERGE_HOWS)));
        }
    }
    if is_base && let Some(conf_d) = conf_d {
        entries.push(("conf_d".to_string(), Tree::Scalar(conf_d.to_string())));
    }
    let mut text = String::new();
    if rng.percent(30) {
        text.push_str("#cloud-config\n");
    } else if rng.percent(3) {
        // Not Jinja: read as it is. (A Jinja template we refuse by design:
        // cloud-init renders it once instance data exists.)
        text.push_str("## template: basic\n");
    }
    if rng.percent(20) {
        // The whole document in flow style.
        text.push_str(&Tree::Map(entries).flow());
        text.push('\n');
    } else {
        for (k, v) in &entries {
            v.block_entry(k, 0, rng, &mut text);
        }
    }
    if rng.percent(10) {
        text = text.replace('\n', "\r\n");
    }
    text
}

enum Node {
    File(Vec<u8>),
    Link(Vec<u8>),
    Dir,
}

/// A tree: root-relative path (bytes) to what is there.
struct Case {
    nodes: Vec<(Vec<u8>, Node)>,
}

const NAMES: &[&[u8]] = &[
    b"00-base.cfg",
    b"10_x.cfg",
    b"50 host.cfg",
    b"99.cfg",
    b"A.cfg",
    b"a.cfg",
    b"\xc3\xa9.cfg",
    b"\xef\xbf\xbf.cfg",
    b"\xff.cfg",
    b"\x80x.cfg",
    b"\xed\xa0\x80.cfg",
    b"z.cfg~",
    b"notes.txt",
    b".hidden.cfg",
    b"x.CFG",
];

fn generate(rng: &mut Rng) -> Case {
    let mut nodes = Vec::new();
    let conf_d = rng.percent(15).then(|| *rng.pick(CONF_DS));
    let base = config_text(rng, true, conf_d);
    if rng.percent(5) {
        nodes.push((
            b"etc/cloud/base/cloud.cfg".to_vec(),
            Node::File(base.into_bytes()),
        ));
        nodes.push((
            b"etc/cloud/cloud.cfg".to_vec(),
            Node::Link(b"/etc/cloud/base/cloud.cfg".to_vec()),
        ));
    } else {
        nodes.push((
            b"etc/cloud/cloud.cfg".to_vec(),
            Node::File(base.into_bytes()),
        ));
    }
    let dir: &[u8] = match conf_d {
        Some(d) if d.contains("other.d") => b"etc/cloud/other.d",
        Some("/etc/cloud") => b"etc/cloud",
        _ => b"etc/cloud/cloud.cfg.d",
    };
    if rng.percent(4) {
        nodes.push((
            b"etc/cloud/cloud.cfg.d".to_vec(),
            Node::File(b"a: 1\n".to_vec()),
        ));
        return Case { nodes };
    }
    let count = rng.below(6);
    let mut names: Vec<&[u8]> = Vec::new();
    for _ in 0..count {
        let name = *rng.pick(NAMES);
        if names.contains(&name) {
            continue;
        }
        names.push(name);
        let path = [dir, b"/", name].concat();
        let node = match rng.below(100) {
            0..=1 => Node::File(b"a: caf\xe9\n".to_vec()),
            2..=79 => Node::File(config_text(rng, false, None).into_bytes()),
            80..=87 if names.len() > 1 => Node::Link(names[rng.below(names.len() - 1)].to_vec()),
            88..=91 => Node::Link(
                rng.pick(&[&b"/etc/cloud/cloud.cfg"[..], b"../cloud.cfg"])
                    .to_vec(),
            ),
            92..=94 => Node::Link(b"missing.cfg".to_vec()),
            95..=97 => Node::Dir,
            _ => Node::Link([b"/", dir, b"/00-base.cfg"].concat()),
        };
        nodes.push((path, node));
    }
    if count == 0 && rng.percent(50) {
        nodes.push((dir.to_vec(), Node::Dir));
    }
    Case { nodes }
}

fn write_case(case: &Case, root: &Path) {
    for (path, node) in &case.nodes {
        let full = root.join(OsStr::from_bytes(path));
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        match node {
            Node::File(bytes) => fs::write(&full, bytes).unwrap(),
            Node::Link(target) => symlink(OsStr::from_bytes(target), &full).unwrap(),
            Node::Dir => fs::create_dir_all(&full).unwrap(),
        }
    }
}

fn describe(case: &Case) -> String {
    case.nodes
        .iter()
        .map(|(p, n)| {
            let what = match n {
                Node::File(b) => format!("{:?}", String::from_utf8_lossy(b)),
                Node::Link(t) => format!("-> {}", String::from_utf8_lossy(t)),
                Node::Dir => "(dir)".to_string(),
            };
            format!("  {}: {what}", String::from_utf8_lossy(p).escape_debug())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// Our verdicts
// ---------------------------------------------------------------------------

fn profile_of(name: &str, edit: Edit) -> Profile {
    Profile {
        name: name.to_string(),
        summary: String::new(),
        edits: vec![ProfileEdit {
            edit,
            warnings: vec![],
        }],
        warnings: vec![],
        source: "test".to_string(),
    }
}

fn set_edit(path: &[&str], value: Value, add_if_missing: bool) -> Edit {
    Edit::Set {
        path: path.iter().map(|s| s.to_string()).collect(),
        value,
        add_if_missing,
    }
}

/// Disagreements of one case, by class.
fn compare(set: &ConfigSet, judge: &serde_json::Value) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    let effective = set.effective();
    let theirs = judge::canonical(&judge["effective"]);
    if judge::canonical(&judge::tagged(&effective)) != theirs {
        found.push(("effective", format!("ours {effective}\n  theirs {theirs}")));
    }
    let ignored = set
        .reads()
        .filter(|&i| set.files[i].ignored.is_some())
        .count() as u64;
    if Some(ignored) != judge["ignored_reads"].as_u64() {
        found.push((
            "ignored-files",
            format!("ours {ignored}, theirs {}", judge["ignored_reads"]),
        ));
    }
    let read = |key: &str| match set.lookup(&[key]) {
        Lookup::Found(v) => effective::reads_as_true(Some(key), v),
        _ => false,
    };
    let network_disabled =
        set.lookup(&["network", "config"]) == Lookup::Found(&Value::Str("disabled".into()));
    let checks = [
        ("preserve_hostname", read("preserve_hostname")),
        ("manage_etc_hosts", read("manage_etc_hosts")),
        ("network_disabled", network_disabled),
    ];
    for (key, ours) in checks {
        if judge[key].as_bool() != Some(ours) {
            found.push((key, format!("ours {ours}, theirs {}", judge[key])));
        }
    }
    // Under the default mergers one file decides each scalar: the one
    // `status` names and the planner edits.
    if set.default_merge() {
        for path in [
            &["preserve_hostname"][..],
            &["manage_etc_hosts"],
            &["network", "config"],
            &["a"],
            &["m", "x"],
        ] {
            if let Lookup::Found(v) = set.lookup(path)
                && !matches!(v, Value::Map(_))
            {
                let decided = set
                    .decider(path)
                    .filter(|d| d.complete)
                    .map(|d| d.node.to_value());
                if decided.as_ref() != Some(v) {
                    found.push((
                        "attribution",
                        format!("{path:?}: effective {v}, decider {decided:?}"),
                    ));
                }
            }
        }
    }
    // The status verdicts, as `status` and `--check` compute them.
    let statuses = [
        (
            "status:preserve_hostname",
            setting_state(
                set,
                &profile_of(
                    "h",
                    set_edit(&["preserve_hostname"], Value::Bool(true), true),
                ),
            )
            .kept,
            judge["preserve_hostname"].as_bool(),
        ),
        (
            "status:manage_etc_hosts",
            setting_state(
                set,
                &profile_of(
                    "e",
                    set_edit(&["manage_etc_hosts"], Value::Bool(false), false),
                ),
            )
            .kept,
            judge["manage_etc_hosts"].as_bool().map(|b| !b),
        ),
        (
            "status:network",
            setting_state(
                set,
                &profile_of(
                    "n",
                    set_edit(&["network", "config"], Value::Str("disabled".into()), true),
                ),
            )
            .kept,
            judge["network_disabled"].as_bool(),
        ),
    ];
    for (class, ours, theirs) in statuses {
        if Some(ours) != theirs {
            found.push((class, format!("ours kept={ours}, theirs {theirs:?}")));
        }
    }
    found
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

#[test]
fn effective_configuration_agrees_with_cloud_init() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the judge chroots into each case: run the tests as root"
    );
    let cases = env_number("PREPARE_IMAGE_DIFF_CASES", 1500);
    let seed = env_number("PREPARE_IMAGE_DIFF_SEED", 0x5eed_c10d);
    let mut rng = Rng(seed);
    let mut judge = Judge::start();
    let mut by_class: BTreeMap<&str, u64> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    let mut refused = 0;
    let work = tempfile::tempdir().unwrap();
    for n in 0..cases {
        let case = generate(&mut rng);
        let root = work.path().join(n.to_string());
        write_case(&case, &root);
        let theirs = judge.ask(&root);
        let ours = Root::open(&root).and_then(|r| effective::load(&r));
        let found: Vec<(&str, String)> = match (&ours, theirs.get("error")) {
            (Err(_), Some(_)) => {
                refused += 1;
                vec![]
            }
            (Ok(set), None) => compare(set, &theirs),
            (Err(e), None) => vec![("refusal", format!("we refuse ({e:#}), cloud-init reads it"))],
            (Ok(_), Some(err)) => {
                vec![("refusal", format!("cloud-init fails ({err}), we read it"))]
            }
        };
        for (class, detail) in found {
            *by_class.entry(class).or_default() += 1;
            if examples.len() < 8 {
                examples.push(format!("case {n} [{class}] {detail}\n{}", describe(&case)));
            }
        }
        fs::remove_dir_all(&root).unwrap();
    }
    let total: u64 = by_class.values().sum();
    eprintln!(
        "cloud-init differential: {cases} cases (seed {seed:#x}), {refused} refused by both, {total} disagreements {by_class:?}"
    );
    assert!(
        total == 0,
        "{total} disagreements with cloud-init 22.4.2 {by_class:?}:\n{}",
        examples.join("\n\n")
    );
}

#[test]
fn python_name_order_is_replicated() {
    // Bytes order and Python's order differ for these: U+FFFF sorts after
    // U+DCFF (an undecodable 0xff), and 0x80 (U+DC80) after é.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/cloud/cloud.cfg.d");
    fs::create_dir_all(&dir).unwrap();
    fs::write(root.path().join("etc/cloud/cloud.cfg"), "a: base\n").unwrap();
    for (name, value) in [
        (&b"\xff.cfg"[..], "ff"),
        (b"\xef\xbf\xbf.cfg", "uffff"),
        (b"\x80.cfg", "x80"),
        (b"\xc3\xa9.cfg", "e-acute"),
    ] {
        fs::write(dir.join(OsStr::from_bytes(name)), format!("a: {value}\n")).unwrap();
    }
    let set = effective::load(&Root::open(root.path()).unwrap()).unwrap();
    let order: Vec<PathBuf> = set
        .drop_ins
        .iter()
        .map(|&i| set.files[i].path.clone())
        .collect();
    let names: Vec<&[u8]> = order
        .iter()
        .map(|p| p.file_name().unwrap().as_bytes())
        .collect();
    assert_eq!(
        names,
        [
            &b"\xc3\xa9.cfg"[..],
            b"\x80.cfg",
            b"\xff.cfg",
            b"\xef\xbf\xbf.cfg"
        ]
    );
    // The last in Python's order wins.
    assert_eq!(set.effective().get("a"), Some(&Value::Str("uffff".into())));
}
