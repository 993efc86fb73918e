//! The PyYAML judge (`pyyaml_judge.py`, one long-lived Debian python3
//! process) and our side of the same protocol, for the differential tests;
//! its encoding of Python values (`tagged`, `canonical`) is also the
//! cloud-init judge's (`cloud_init_judge.py`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use prepare_image::guest::cloudinit::document::{self, ParseErrorKind, Value};
use serde_json::{Value as J, json};

/// Debian's interpreter, which has Debian's python3-yaml (the PATH may
/// lead to another python without it).
const PYTHON: &str = "/usr/bin/python3";

pub struct Judge {
    child: Child,
}

impl Judge {
    pub fn start() -> Judge {
        Judge::script(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/judge/pyyaml_judge.py"),
            &[],
        )
    }

    /// oslo.config's judge (`oslo_config_judge.py`), same protocol: a
    /// file's text in, what Cloudbase-Init's options read as out.
    pub fn oslo_config() -> Judge {
        Judge::script(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/judge/oslo_config_judge.py"
            ),
            &[("PYTHONUTF8", "1")],
        )
    }

    /// `env`: oslo.config opens files in the locale's encoding, so its judge
    /// runs in Python's UTF-8 mode whatever the machine's locale.
    fn script(script: &str, env: &[(&str, &str)]) -> Judge {
        let child = Command::new(PYTHON)
            .arg(script)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PYTHON} {script}: {e} (install python3-yaml and python3-oslo.config: .ci/run)"));
        Judge { child }
    }

    /// PyYAML's verdict on each text, in order.
    pub fn run(mut self, texts: &[String]) -> Vec<J> {
        let mut stdin = self.child.stdin.take().expect("piped stdin");
        let lines: Vec<String> = texts
            .iter()
            .map(|t| serde_json::to_string(t).expect("a string serializes"))
            .collect();
        // Write from another thread so that neither pipe fills up.
        let writer = std::thread::spawn(move || {
            for line in lines {
                writeln!(stdin, "{line}").expect("writing to the judge");
            }
        });
        let stdout = BufReader::new(self.child.stdout.take().expect("piped stdout"));
        let verdicts: Vec<J> = stdout
            .lines()
            .map(|l| serde_json::from_str(&l.expect("reading the judge")).expect("judge JSON"))
            .collect();
        writer.join().expect("writer thread");
        let status = self.child.wait().expect("waiting for the judge");
        assert!(status.success(), "the judge failed: {status}");
        assert_eq!(verdicts.len(), texts.len(), "the judge answered every case");
        verdicts
    }
}

/// Our verdict, in the judge's protocol.
pub fn ours(text: &str) -> J {
    match document::parse(text) {
        Ok(doc) => json!({"ok": true, "value": tagged(&doc.to_value())}),
        Err(e) => {
            let kind = match e.kind {
                ParseErrorKind::IgnoredByCloudInit => "refused",
                ParseErrorKind::CloudInitFails => "crashes",
                ParseErrorKind::Unsupported => "unsupported",
                #[allow(unreachable_patterns)]
                _ => "other",
            };
            json!({"ok": false, "kind": kind, "error": e.to_string()})
        }
    }
}

/// A value as the judge encodes Python objects.
pub fn tagged(v: &Value) -> J {
    match v {
        Value::Null => json!(["null"]),
        Value::Bool(b) => json!(["bool", b]),
        Value::Int(i) => json!(["int", i.to_string()]),
        Value::Float(f) if f.is_nan() => json!(["float", "nan"]),
        Value::Float(f) => {
            let hex: String = f.to_be_bytes().iter().map(|b| format!("{b:02x}")).collect();
            json!(["float", hex])
        }
        Value::Str(s) => json!(["str", s]),
        Value::Timestamp(s) if s.len() == 10 => json!(["date", s]),
        Value::Timestamp(s) => json!(["datetime", s]),
        Value::Seq(items) => json!(["seq", items.iter().map(tagged).collect::<Vec<_>>()]),
        Value::Map(entries) => json!([
            "map",
            entries
                .iter()
                .map(|(k, v)| json!([tagged(k), tagged(v)]))
                .collect::<Vec<_>>()
        ]),
    }
}

/// Map entries sorted by key, so that key order does not count.
pub fn canonical(v: &J) -> J {
    match v {
        J::Array(a) if a.first() == Some(&json!("map")) => {
            let mut entries: Vec<J> = a[1]
                .as_array()
                .map(|es| {
                    es.iter()
                        .map(|e| json!([canonical(&e[0]), canonical(&e[1])]))
                        .collect()
                })
                .unwrap_or_default();
            entries.sort_by_key(|e| e[0].to_string());
            json!(["map", entries])
        }
        J::Array(a) => J::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

pub fn outcome(v: &J) -> String {
    if v["ok"] == json!(true) {
        "ok".to_string()
    } else {
        v["kind"].as_str().unwrap_or("?").to_string()
    }
}

/// None when both agree; else a class name for the report.
pub fn disagreement(theirs: &J, mine: &J) -> Option<String> {
    let (t, m) = (outcome(theirs), outcome(mine));
    if t != m {
        return Some(format!("PyYAML {t}, ours {m}"));
    }
    if t == "ok" && canonical(&theirs["value"]) != canonical(&mine["value"]) {
        return Some("both read it, meanings differ".to_string());
    }
    None
}

/// Compares our verdict with PyYAML's on every case, prints the counts of
/// outcomes and of disagreements by class (with examples), and returns the
/// number of disagreements.
pub fn compare_and_report(title: &str, cases: &[String], verdicts: &[J]) -> usize {
    let mut by_class: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (text, theirs)) in cases.iter().zip(verdicts).enumerate() {
        *outcomes.entry(outcome(theirs)).or_default() += 1;
        if let Some(class) = disagreement(theirs, &ours(text)) {
            by_class.entry(class).or_default().push(i);
        }
    }
    let total: usize = by_class.values().map(Vec::len).sum();
    println!(
        "{title}: {} cases, PyYAML's outcomes {outcomes:?}, {total} disagreements",
        cases.len()
    );
    for (class, idx) in &by_class {
        println!("  {class}: {}", idx.len());
        for &i in idx.iter().take(3) {
            println!(
                "    case {i}: {:?}\n      PyYAML: {}\n      ours:   {}",
                cases[i],
                verdicts[i],
                ours(&cases[i])
            );
        }
    }
    total
}

/// xorshift64*: a fixed seed gives the same cases on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
