//! Fuzzing of the YAML reader and the editor: arbitrary bytes and strings
//! into `document::parse` and into `editor::apply` with every edit of the
//! built-in profiles must return (Ok or Err), never panic, and quickly; and
//! short strings from a YAML-ish alphabet must get PyYAML's verdict (the
//! judge of `pyyaml_differential.rs`).
//!
//! Deterministic by default (fixed seed); `PROPTEST_CASES=N` sets the
//! proptest case count, `PREPARE_IMAGE_FUZZ_CASES=N` the judged strings
//! (default 4000). Needs Debian packages: python3, python3-yaml.

mod judge;

use std::time::{Duration, Instant};

use prepare_image::guest::cloudinit::document;
use prepare_image::guest::cloudinit::editor::{self, Edit};
use prepare_image::guest::cloudinit::profile;
use proptest::prelude::*;

/// Far above what any of these inputs needs (a few milliseconds), far
/// below a hang.
const TIME_LIMIT: Duration = Duration::from_secs(5);

fn all_profile_edits() -> Vec<Edit> {
    profile::built_in()
        .into_iter()
        .flat_map(|p| p.edits.into_iter().map(|e| e.edit))
        .collect()
}

fn read_and_edit(text: &str, edits: &[Edit]) {
    let started = Instant::now();
    let parsed = document::parse(text);
    if let Ok(doc) = &parsed {
        let _ = doc.to_value();
    }
    let _ = editor::apply(text, edits);
    assert!(
        started.elapsed() < TIME_LIMIT,
        "{text:?} took {:?}",
        started.elapsed()
    );
}

/// Pieces that make the scanner and parser take their rarer paths.
const ALPHABET: &[&str] = &[
    " ",
    " ",
    "  ",
    "\t",
    "\n",
    "\n",
    "\r\n",
    "\r",
    "-",
    "- ",
    ":",
    ": ",
    "?",
    "? ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "#",
    "# c",
    "&a",
    "&b",
    "*a",
    "*b",
    "!",
    "!!str",
    "!!int",
    "!!set",
    "|",
    ">",
    "'",
    "\"",
    "%",
    "%YAML 1.1",
    "---",
    "...",
    "@",
    "a",
    "b",
    "key",
    "1",
    "0",
    ".",
    "0x",
    "1.5",
    "yes",
    "~",
    "=",
    "<<",
    "\\",
    "\\t",
    "\\x",
    "\u{85}",
    "\u{2028}",
    "\u{feff}",
    "\u{1}",
    "é",
    "2001-01-01",
];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        read_and_edit(&String::from_utf8_lossy(&bytes), &all_profile_edits());
    }

    #[test]
    fn arbitrary_strings_never_panic(text in "\\PC{0,200}") {
        read_and_edit(&text, &all_profile_edits());
    }

    #[test]
    fn yaml_ish_strings_never_panic(
        pieces in proptest::collection::vec(0..ALPHABET.len(), 0..60)
    ) {
        let text: String = pieces.iter().map(|&i| ALPHABET[i]).collect();
        read_and_edit(&text, &all_profile_edits());
    }
}

#[test]
fn deep_and_wide_inputs_stay_bounded() {
    let edits = all_profile_edits();
    for text in [
        "[".repeat(200),
        format!("a: {}{}\n", "[".repeat(100), "]".repeat(100)),
        "- ".repeat(200) + "x\n",
        "a: 'x".to_string() + &"\n".repeat(10_000),
        format!("a: {}\n", "x ".repeat(20_000)),
        "? ".repeat(300),
        "&a ".repeat(300),
    ] {
        read_and_edit(&text, &edits);
    }
}

#[test]
fn short_yaml_ish_strings_get_pyyamls_verdict() {
    let count: usize = std::env::var("PREPARE_IMAGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let mut rng = judge::Rng::new(0xF0CC_ACC1A);
    let cases: Vec<String> = (0..count)
        .map(|_| {
            (0..1 + rng.below(14))
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect()
        })
        .collect();
    let verdicts = judge::Judge::start().run(&cases);
    let total = judge::compare_and_report("fuzz vs PyYAML", &cases, &verdicts);
    assert_eq!(
        total, 0,
        "we disagree with PyYAML on {total} of {count} strings"
    );
}
