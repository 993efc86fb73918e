//! Where a YAML 1.2 parser and PyYAML's SafeLoader (what cloud-init reads
//! with) disagree, we now agree with PyYAML. Each case's expectation was
//! taken from Debian's python3-yaml 6.0; the differential test
//! (`pyyaml_differential.rs`) checks the same things on generated cases.

use prepare_image::guest::cloudinit::document::{self, ParseErrorKind, Value};
use prepare_image::guest::cloudinit::editor::{self, Edit};

fn s(text: &str) -> Value {
    Value::Str(text.to_string())
}

fn map(entries: &[(&str, Value)]) -> Value {
    Value::map(entries.iter().map(|(k, v)| (s(k), v.clone())).collect())
}

/// Files PyYAML refuses, so that cloud-init ignores them, with where and
/// what PyYAML reports.
#[test]
fn pyyaml_refusals_are_ours() {
    for (text, line, column, problem) in [
        (
            "preserve_hostname: true\t# note\n",
            1,
            24,
            "found character '\\t' that cannot start any token",
        ),
        (
            "a: 1\t\n",
            1,
            5,
            "found character '\\t' that cannot start any token",
        ),
        (
            "a: [x,\ty]\n",
            1,
            7,
            "found character '\\t' that cannot start any token",
        ),
        (
            "a: [x\t]\n",
            1,
            6,
            "found character '\\t' that cannot start any token",
        ),
        (
            "a:\t1\n",
            1,
            3,
            "found character '\\t' that cannot start any token",
        ),
        ("a: 1 # \u{1}\n", 1, 8, "unacceptable character #x0001"),
        ("# \u{7f}\na: 1\n", 1, 3, "unacceptable character #x007f"),
        ("a: 1\nb: \u{fffe}\n", 2, 4, "unacceptable character #xfffe"),
        ("a: &x 1\nb: &x 2\n", 2, 4, "found duplicate anchor 'x'"),
        (
            "%YAML 2.0\n---\na: 1\n",
            1,
            1,
            "found incompatible YAML document",
        ),
        (
            "%YAML 1.1\n%YAML 1.1\n---\na: 1\n",
            2,
            1,
            "found duplicate YAML directive",
        ),
        (
            "a: =\n",
            1,
            4,
            "could not determine a constructor for the tag 'tag:yaml.org,2002:value'",
        ),
        ("a: 0b_\n", 1, 4, "invalid literal for int() with base 2"),
        ("a: 2001-02-30\n", 1, 4, "day is out of range for month"),
        ("a: *nothing\n", 1, 4, "found undefined alias 'nothing'"),
        ("a: 1\n---\nb: 2\n", 2, 1, "but found another document"),
        (
            "a: !!python/object x\n",
            1,
            4,
            "could not determine a constructor",
        ),
        (
            "b: {x: 1}\na:\n  <<: 1\n",
            3,
            7,
            "expected a mapping or list of mappings for merging",
        ),
        ("a: {[x]: 1}\n", 1, 5, "found unhashable key"),
        ("- a\n", 1, 1, "not a mapping"),
    ] {
        let err = document::parse(text).expect_err(text);
        assert_eq!(
            err.kind,
            ParseErrorKind::IgnoredByCloudInit,
            "{text:?}: {err}"
        );
        assert!(err.is_ignored_by_cloud_init(), "{text:?}");
        assert_eq!(
            (err.line, err.column),
            (Some(line), Some(column)),
            "{text:?}: {err}"
        );
        assert!(err.message.contains(problem), "{text:?}: {err}");
    }
}

/// What PyYAML reads, and how.
#[test]
fn pyyaml_readings_are_ours() {
    let list = |items: &[&str]| Value::seq(items.iter().map(|i| s(i)).collect());
    for (text, meaning) in [
        // NEL, LS and PS end lines in YAML 1.1.
        (
            "a: 1\u{85}b: 2\n",
            map(&[("a", Value::Int(1)), ("b", Value::Int(2))]),
        ),
        (
            "a: x\u{2028}b: 2\n",
            map(&[("a", s("x")), ("b", Value::Int(2))]),
        ),
        ("a: x\u{85}  y\n", map(&[("a", s("x y"))])),
        (
            "a: 1 # c\u{2029}b: 2\n",
            map(&[("a", Value::Int(1)), ("b", Value::Int(2))]),
        ),
        // A flow list closed in column 0.
        ("key: [\n  a\n]\n", map(&[("key", list(&["a"]))])),
        ("key: [\n]\n", map(&[("key", list(&[]))])),
        (
            "key: {\n  a: 1\n}\n",
            map(&[("key", map(&[("a", Value::Int(1))]))]),
        ),
        // A document end marker with a comment.
        ("a: 1\n... # end\n", map(&[("a", Value::Int(1))])),
        // `=` as a key is a string.
        ("=: 1\n", map(&[("=", Value::Int(1))])),
        // A tab inside a quoted scalar or after a block indicator's spaces.
        ("a: 'x\ty'\n", map(&[("a", s("x\ty"))])),
        // Python dict keys: 1 and true are one key.
        ("1: a\ntrue: b\n", Value::map(vec![(Value::Int(1), s("b"))])),
        (
            "a: 2001-12-14 21:59:43.10 -5\n",
            map(&[(
                "a",
                Value::Timestamp("2001-12-14 21:59:43.100000-05:00".into()),
            )]),
        ),
        ("a: !!python/unicode x\n", map(&[("a", s("x"))])),
        ("a: ! 'yes'\n", map(&[("a", Value::Bool(true))])),
        // Two `<<` keys: the later one's value wins; in one list, the first.
        ("<<: {u: []}\n<<: {u: 1}\n", map(&[("u", Value::Int(1))])),
        (
            "a: &a {u: 1}\nb: &b {u: 2}\nc:\n  <<: [*a, *b]\n",
            map(&[
                ("a", map(&[("u", Value::Int(1))])),
                ("b", map(&[("u", Value::Int(2))])),
                ("c", map(&[("u", Value::Int(1))])),
            ]),
        ),
        // A mapping merged into itself adds nothing.
        (
            "b: &b\n  x: 1\n  <<: [*b]\n",
            map(&[("b", map(&[("x", Value::Int(1))]))]),
        ),
    ] {
        let doc = document::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(doc.to_value(), meaning, "{text:?}");
    }
}

#[test]
fn jinja_templates_are_found_with_cloud_inits_pattern() {
    for text in [
        "## template: jinja\na: 1\n",
        "## template:jinja\n",
        "##Template: JINJA \n",
        "##\ttemplate:  jinja\r\n",
    ] {
        let err = document::parse(text).expect_err(text);
        assert!(err.message.contains("Jinja"), "{text:?}: {err}");
        assert!(!err.is_ignored_by_cloud_init(), "{text:?}");
    }
    for text in [
        "# template: jinja\n",
        "## template: basic\n",
        "a: 1\n## template: jinja\n",
    ] {
        document::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    }
}

#[test]
fn the_last_entry_of_a_list_closed_in_column_0_can_be_removed() {
    let remove = Edit::RemoveModule {
        module: "set_hostname".to_string(),
    };
    let list =
        |items: &[&str]| Value::seq(items.iter().map(|i| Value::Str(i.to_string())).collect());
    for (text, want) in [
        (
            "cloud_init_modules: [\n  migrator,\n  set_hostname\n]\n",
            list(&["migrator"]),
        ),
        ("cloud_init_modules: [\n  set_hostname\n]\n", list(&[])),
        (
            "cloud_init_modules: [\n  migrator, set_hostname,\n]\n",
            list(&["migrator"]),
        ),
    ] {
        let edited = editor::apply(text, std::slice::from_ref(&remove))
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let meaning = document::parse(&edited.text)
            .unwrap_or_else(|e| panic!("{text:?} -> {:?}: {e}", edited.text))
            .to_value();
        assert_eq!(
            meaning,
            map(&[("cloud_init_modules", want)]),
            "{text:?} -> {:?}",
            edited.text
        );
        assert!(edited.text.ends_with("]\n"), "{:?}", edited.text);
    }
}

#[test]
fn keys_are_added_before_a_commented_document_end() {
    let set = Edit::Set {
        path: vec!["preserve_hostname".to_string()],
        value: Value::Bool(true),
        add_if_missing: true,
    };
    for (text, want) in [
        (
            "a: 1\n... # end\n",
            "a: 1\npreserve_hostname: true\n... # end\n",
        ),
        (
            "a: 1\n...\n# x\n...\n",
            "a: 1\npreserve_hostname: true\n...\n# x\n...\n",
        ),
    ] {
        let edited = editor::apply(text, std::slice::from_ref(&set))
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(edited.text, want, "{text:?}");
    }
}
