//! Differential test of our YAML reading against the real thing: Debian's
//! `/usr/bin/python3` with python3-yaml (PyYAML's pure-Python SafeLoader, as
//! cloud-init 22.4's `util.load_yaml` uses it), run as one long-lived judge
//! process (`tests/judge/pyyaml_judge.py`).
//!
//! Cases are generated from a fixed seed: cloud.cfg-like documents with every
//! entry form (block and flow, one line or several, `]` in column 0, empty
//! entries), comments, anchors and aliases (duplicate, undefined), merge
//! keys (good and bad), directives and document markers, plain, quoted and
//! block scalars, odd numbers, booleans, timestamps and tags; then mutated:
//! tabs put in place of spaces or added anywhere, control characters, NEL,
//! LS, PS, CR and CRLF line breaks, a BOM, characters dropped or doubled.
//!
//! Per case the verdicts must agree: cloud-init reads the file (and then the
//! meanings, encoded as tagged JSON so that int, float, str, bool and
//! timestamp differ, must be equal), or it ignores it ("refused"), or it
//! fails on it ("crashes"), or it reads something prepare-image does not
//! hold ("unsupported"). Default 3000 cases; `PREPARE_IMAGE_DIFF_CASES=N`
//! runs N (and `PREPARE_IMAGE_DIFF_SEED=S` another seed).
//!
//! Needs Debian packages: python3, python3-yaml.

mod judge;

use judge::{Judge, Rng};

fn case_count() -> usize {
    std::env::var("PREPARE_IMAGE_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn seed() -> u64 {
    std::env::var("PREPARE_IMAGE_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_CAFE)
}

const KEYS: &[&str] = &[
    "preserve_hostname",
    "manage_etc_hosts",
    "cloud_init_modules",
    "users",
    "ntp",
    "a",
    "b b",
    "on",
    "1",
    "0x1F",
    "~",
    "'quoted key'",
    "\"dq\"",
    "-x",
    "?x",
    ":x",
    "a:b",
    "=",
    "? complex",
    "!!str 5",
    "&k key",
    "x#y",
    "é",
    "2001-12-14",
    "1.0",
    "true",
];

const PLAIN: &[&str] = &[
    "scripts-user",
    "localhost",
    "1",
    "true",
    "false",
    "0644",
    "1.5",
    "x y",
    "~",
    "2001-12-14",
    "ssh",
    "yes",
    "no",
    "a_b",
    "-1",
    "0.5e+3",
    "12:30",
    "http://x/y",
    "a, b",
    "x-y",
    "'",
    "yes",
    "No",
    "ON",
    "off",
    "y",
    "n",
    "Y",
    "~",
    "null",
    "NULL",
    "nUll",
    "0644",
    "08",
    "0x1F",
    "0xg",
    "0b101",
    "0b_",
    "0x_",
    "0_",
    "1_000",
    "190:20:30",
    "1:60",
    "1:5",
    "-1:30",
    "1e3",
    "1.0e+3",
    "1.0E-3",
    ".5",
    "-.5",
    "+.5",
    "+.inf",
    "-.Inf",
    ".nan",
    "-.nan",
    ".NaN",
    "1.",
    "1_.5",
    "1:30.5",
    "0.",
    "-0",
    "+0",
    "-0.0",
    "+12",
    "012345678",
    "123456789012345678901234567890123456789012",
    "2001-12-14",
    "2001-1-14",
    "2001-12-14 21:59:43.10 -5",
    "2001-12-14t21:59:43Z",
    "2001-12-14T21:59:43.1234567+05:30",
    "2001-02-30",
    "2000-02-29",
    "1900-02-29",
    "2001-12-14 25:00:00",
    "2001-12-14 21:59:43 +24",
    "2001-12-14 21:59",
    "0000-01-01",
    "=",
    "<<",
    "a b",
    "a #b",
    "a#b",
    "a:b",
    "a: b",
    "x,y",
    "[x",
    "x]",
    "{x",
    "é",
    "日本",
    "scripts-user",
    "localhost",
    "true",
    "True",
    "TRUE",
    "tRue",
    "- x",
    "-x",
    "?x",
    "%x",
    "@x",
    "`x",
    "|x",
    ">x",
    "!x",
    "&x",
    "*x",
    "'x",
    "\"x",
    "a\u{85}b",
    "a\u{2028}b",
    "a\u{a0}b",
    "\u{feff}x",
    "a\tb",
    "1\t",
    "\u{1F600}",
];

const QUOTED: &[&str] = &[
    "'yes'",
    "\"no\"",
    "'1'",
    "\"a b\"",
    "'x'",
    "\"\\t\"",
    "'#c'",
    "\"é\"",
    "'it''s'",
    "''",
    "'a\n  b'",
    "'a\n\n  b'",
    "'unterminated",
    "\"\"",
    "\"a\\tb\"",
    "\"\\x41\\u00e9\\U0001F600\"",
    "\"\\N\\_\\L\\P\"",
    "\"\\ud800\"",
    "\"\\U00110000\"",
    "\"\\q\"",
    "\"a\\\n  b\"",
    "\"a\n  b\"",
    "\"tab\there\"",
    "\"\\\"quoted\\\"\"",
    "'a'b'",
    "\"a\n---\nb\"",
    "'a\n...\n'",
    "\"\\x4\"",
    "\"\\/\"",
    "\"\\e\\0\\a\"",
    "'#not comment'",
];

const BLOCK: &[&str] = &[
    "|\n  line1\n  line2\n",
    "|-\n  line1\n\n",
    "|+\n  line1\n\n",
    ">\n  folded\n  text\n\n  para\n",
    ">-\n  a\n   b\n  c\n",
    "|2\n    indented\n",
    "|0\n  x\n",
    "|\n x\n",
    "| # comment\n  x\n",
    "|x\n  x\n",
    ">\n\n  after blank\n",
    "|\n  a\n b\n",
    "|\n\t x\n",
    "|1+\n  x\n",
];

const TAGS: &[&str] = &[
    "!!str",
    "!!str",
    "!!python/unicode",
    "!",
    "!!str",
    "!!int",
    "!!float",
    "!!bool",
    "!!null",
    "!!timestamp",
    "!!binary",
    "!!set",
    "!!omap",
    "!!pairs",
    "!!seq",
    "!!map",
    "!!python/unicode",
    "!!python/object",
    "!foo",
    "!",
    "!<tag:yaml.org,2002:str>",
    "!!merge",
    "!!value",
    "!e!x",
    "!!str%41",
];

const COMMENTS: &[&str] = &[
    "# c",
    "#c",
    "# é",
    "#\t",
    "# \u{feff}",
    "# \u{85}",
    "# \u{1}",
    "# \u{7f}",
    "# \u{fffe}",
];

/// Mostly from the first `common` items (which read well), sometimes from
/// all: so that a good share of the cases is valid YAML.
fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    let common = (items.len() / 3).max(1);
    if rng.below(4) == 0 {
        items[rng.below(items.len())]
    } else {
        items[rng.below(common)]
    }
}

/// A scalar, a collection, an alias, or a tagged or anchored node, as text
/// to put after `key: ` at indentation `indent`.
fn value(rng: &mut Rng, indent: usize, depth: usize, anchors: &mut Vec<String>) -> String {
    let pad = " ".repeat(indent + 2);
    match rng.below(if depth > 2 { 6 } else { 14 }) {
        0 | 1 | 12 | 13 => pick(rng, PLAIN).to_string(),
        2 => pick(rng, QUOTED).replace('\n', &format!("\n{pad}")),
        3 => {
            let b = pick(rng, BLOCK);
            // Indent the block's lines under the key.
            b.replace("\n  ", &format!("\n{pad}"))
        }
        4 if !anchors.is_empty() && rng.below(8) != 0 => {
            format!("*{}", anchors[rng.below(anchors.len())])
        }
        4 if rng.below(6) == 0 => format!("*{}", ["a", "b", "zz"][rng.below(3)]),
        5 => format!("{} {}", pick(rng, TAGS), pick(rng, PLAIN)),
        6 | 7 => flow(rng, indent, depth, anchors),
        8 | 9 => {
            let body = block_mapping(rng, indent + 2, depth + 1, anchors);
            format!("\n{body}")
        }
        10 => {
            let dash_indent = if rng.below(2) == 0 {
                indent
            } else {
                indent + 2
            };
            let body = block_sequence(rng, dash_indent, depth + 1, anchors);
            format!("\n{body}")
        }
        _ => {
            let name = ["a", "b", "c"][rng.below(3)].to_string();
            let inner = if rng.below(2) == 0 && depth < 3 {
                format!("\n{}", block_mapping(rng, indent + 2, depth + 1, anchors))
            } else {
                value(rng, indent, depth + 1, anchors)
            };
            anchors.push(name.clone());
            let tag = if rng.below(4) == 0 {
                format!("{} ", pick(rng, TAGS))
            } else {
                String::new()
            };
            format!("{tag}&{name} {inner}")
        }
    }
}

fn flow(rng: &mut Rng, indent: usize, depth: usize, anchors: &mut Vec<String>) -> String {
    let n = rng.below(4);
    let mapping = rng.below(3) == 0;
    let mut items = Vec::new();
    for _ in 0..n {
        let item = match rng.below(8) {
            0 if depth < 3 => flow(rng, indent, depth + 1, anchors),
            1 => pick(rng, QUOTED).replace('\n', " "),
            2 => format!("{}: {}", pick(rng, PLAIN), pick(rng, PLAIN)),
            3 => format!("? {}", pick(rng, PLAIN)),
            4 if !anchors.is_empty() => format!("*{}", anchors[rng.below(anchors.len())]),
            4 if rng.below(6) == 0 => format!("*{}", ["a", "b"][rng.below(2)]),
            _ => pick(rng, PLAIN).to_string(),
        };
        items.push(item);
    }
    let (open, close) = if mapping { ("{", "}") } else { ("[", "]") };
    let sep = [", ", ",", " ,", ",\n  ", ",\n", "\n, "][rng.below(6)];
    let mut body = items.join(sep);
    if rng.below(6) == 0 {
        body.push(',');
    }
    match rng.below(5) {
        // Over several lines, closed in column 0 or indented.
        0 => format!("{open}\n{}{body}\n{close}", " ".repeat(indent + 2)),
        1 => format!(
            "{open}\n{}{body}\n{}{close}",
            " ".repeat(indent + 2),
            " ".repeat(indent)
        ),
        2 => format!("{open} # c\n  {body} {close}"),
        _ => format!("{open}{body}{close}"),
    }
}

fn block_sequence(rng: &mut Rng, indent: usize, depth: usize, anchors: &mut Vec<String>) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for _ in 0..1 + rng.below(3) {
        let item = match rng.below(5) {
            0 => String::new(),
            1 if depth < 4 => {
                // A mapping as an entry: `- name: x` and more keys under it.
                let body = block_mapping(rng, indent + 2, depth + 1, anchors);
                body.trim_start().to_string()
            }
            _ => value(rng, indent, depth + 1, anchors),
        };
        let sep = if item.starts_with('\n') || item.is_empty() {
            ""
        } else {
            " "
        };
        out.push_str(&format!("{pad}-{sep}{item}\n"));
        if rng.below(5) == 0 {
            out.push_str(&format!("{pad}{}\n", pick(rng, COMMENTS)));
        }
    }
    out
}

fn block_mapping(rng: &mut Rng, indent: usize, depth: usize, anchors: &mut Vec<String>) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for _ in 0..1 + rng.below(if depth == 0 { 5 } else { 3 }) {
        let merge = rng.below(8) == 0;
        let key = if merge {
            "<<".to_string()
        } else {
            pick(rng, KEYS).to_string()
        };
        let v = if merge && !anchors.is_empty() && rng.below(4) != 0 {
            // A merge key mostly merges what it may: an anchored mapping
            // (or a list of them), written before.
            let a = &anchors[rng.below(anchors.len())];
            match rng.below(3) {
                0 => format!("[*{a}, {{z: 1}}]"),
                _ => format!("*{a}"),
            }
        } else if depth > 3 {
            pick(rng, PLAIN).to_string()
        } else {
            value(rng, indent, depth, anchors)
        };
        let sep = if v.starts_with('\n') { "" } else { " " };
        let comment = match rng.below(30) {
            0..=4 => format!(" {}", pick(rng, COMMENTS)),
            5 => format!("\t{}", pick(rng, COMMENTS)),
            _ => String::new(),
        };
        if v.starts_with('\n') {
            out.push_str(&format!("{pad}{key}:{comment}{v}"));
        } else {
            out.push_str(&format!("{pad}{key}:{sep}{v}{comment}\n"));
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

fn document(rng: &mut Rng) -> String {
    let mut anchors = Vec::new();
    let mut text = String::new();
    match rng.below(40) {
        0 => text.push_str("%YAML 1.1\n---\n"),
        1 => text.push_str("%YAML 2.0\n---\n"),
        2 => text.push_str("%YAML 1.1\n%YAML 1.1\n---\n"),
        3 => text.push_str("%TAG !e! tag:example.com,2000:\n---\n"),
        4 => text.push_str("%FOO bar baz\n--- \n"),
        5 => text.push_str("--- # c\n"),
        6 => text.push_str("#cloud-config\n"),
        7 => text.push_str("## template: jinja\n"),
        8 => text.push_str("%YAML 1.1\n"),
        _ => {}
    }
    text.push_str(&block_mapping(rng, 0, 0, &mut anchors));
    match rng.below(10) {
        0 => text.push_str("...\n"),
        1 => text.push_str("... # end\n"),
        2 => text.push_str("---\nb: 2\n"),
        3 => text.push_str("...\n# after\n...\n"),
        4 => text.push_str("...\n---\n"),
        _ => {}
    }
    text
}

const SPECIALS: &[char] = &[
    '\t', '\t', '\t', ' ', '\r', '\u{85}', '\u{2028}', '\u{2029}', '\u{1}', '\u{7f}', '\u{feff}',
    '#', ':', '-', '[', ']', '{', '}', ',', '&', '*', '!', '|', '>', '\'', '"', '%', '?', '\n',
];

fn char_boundaries(text: &str) -> Vec<usize> {
    text.char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect()
}

/// Small random changes that make a valid text invalid, or valid in a way
/// parsers disagree on.
fn mutate(rng: &mut Rng, mut text: String) -> String {
    match rng.below(8) {
        0 => text = text.replace('\n', "\r\n"),
        1 => text = text.replace('\n', ["\r", "\u{85}", "\u{2028}", "\u{2029}"][rng.below(4)]),
        2 => text.insert(0, '\u{feff}'),
        _ => {}
    }
    for _ in 0..rng.below(3) {
        let bounds = char_boundaries(&text);
        let at = bounds[rng.below(bounds.len())];
        match rng.below(6) {
            0 | 1 => {
                // A space becomes a tab, or a tab goes before a line end.
                if let Some(sp) = text[at..].find(' ') {
                    text.replace_range(at + sp..at + sp + 1, "\t");
                }
            }
            2 => {
                if let Some(nl) = text[at..].find('\n') {
                    text.insert(at + nl, '\t');
                }
            }
            3 => text.insert(at, SPECIALS[rng.below(SPECIALS.len())]),
            4 => {
                if at < text.len() {
                    let end = text[at..].chars().next().map_or(at, |c| at + c.len_utf8());
                    text.replace_range(at..end, "");
                }
            }
            _ => {
                if let Some(nl) = text[at..].find('\n') {
                    text.insert(at + nl, ' ');
                }
            }
        }
    }
    text
}

#[test]
fn pyyaml_and_we_read_yaml_alike() {
    let count = case_count();
    let mut rng = Rng::new(seed());
    let cases: Vec<String> = (0..count)
        .map(|i| {
            let doc = document(&mut rng);
            // Half unchanged, so that many cases are valid.
            if i % 2 == 0 {
                doc
            } else {
                mutate(&mut rng, doc)
            }
        })
        .collect();
    let verdicts = Judge::start().run(&cases);
    let total = judge::compare_and_report("PyYAML differential", &cases, &verdicts);
    assert_eq!(
        total, 0,
        "we disagree with PyYAML on {total} of {count} cases"
    );
}
