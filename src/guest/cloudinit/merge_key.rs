//! Where a key's value comes from in a mapping with `<<` merge keys, as
//! PyYAML applies them (`SafeConstructor.flatten_mapping`).
//!
//! PyYAML puts the merged entries before the mapping's own ones and builds a
//! dict in which the last entry wins. So an explicit key wins over a merged
//! one; of several `<<` keys in one mapping the last wins; in `<<: [*a, *b]`
//! the first (`*a`) wins; and a merged mapping's own merges apply inside it
//! first. `status` uses this to name the line that really decides a value,
//! and the editor to know when a value to change is not written where it
//! takes effect.

use crate::guest::cloudinit::document::{Node, NodeKind, Style, Value};

/// An entry of a mapping, explicit or merged in.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub key: &'a Node,
    pub value: &'a Node,
    /// The `<<` key of the searched mapping that brought the entry in;
    /// `None` for an explicit entry.
    pub merge: Option<&'a Node>,
}

pub fn is_merge_key(node: &Node) -> bool {
    matches!(
        &node.kind,
        NodeKind::Scalar { value: Value::Str(s), style: Style::Plain } if s == "<<"
    )
}

/// The entry under `key` that PyYAML keeps for `map`, merges included.
pub fn lookup<'a>(map: &'a Node, key: &str) -> Option<Found<'a>> {
    let NodeKind::Map { entries, .. } = &map.kind else {
        return None;
    };
    if let Some((key, value)) = map.get(key) {
        return Some(Found {
            key,
            value,
            merge: None,
        });
    }
    entries
        .iter()
        .rev()
        .filter(|(k, _)| is_merge_key(k))
        .find_map(|(merge, sources)| {
            let found = match &sources.kind {
                NodeKind::Seq { items, .. } => items.iter().find_map(|s| lookup(s, key)),
                _ => lookup(sources, key),
            }?;
            Some(Found {
                merge: Some(merge),
                ..found
            })
        })
}

/// The string keys `map` has only through its merge keys (not explicitly),
/// each once, in the order they appear in its meaning.
pub fn merged_only_keys(map: &Node) -> Vec<String> {
    let Value::Map(entries) = map.to_value() else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|(k, _)| k.as_str())
        .filter(|k| map.get(k).is_none())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::cloudinit::document::parse;

    fn line_of(text: &str, path: &[&str]) -> Option<(usize, Option<usize>)> {
        let doc = parse(text).unwrap();
        let mut node = doc.root.as_ref()?;
        let mut merge = None;
        let mut line = 0;
        for key in path {
            let found = lookup(node, key)?;
            merge = merge.or(found.merge.map(|m| m.line));
            line = found.key.line;
            node = found.value;
        }
        Some((line, merge))
    }

    #[test]
    fn explicit_wins_then_the_last_merge_key_then_the_first_source() {
        let anchors = "a: &a {x: 1}\nb: &b {x: 2, y: 2}\n";
        // Explicit over merged.
        assert_eq!(
            line_of(&format!("{anchors}c:\n  <<: *a\n  x: 5\n"), &["c", "x"]),
            Some((5, None))
        );
        // Two `<<` keys: the last wins (PyYAML gives x: 2).
        assert_eq!(
            line_of(&format!("{anchors}c:\n  <<: *a\n  <<: *b\n"), &["c", "x"]),
            Some((2, Some(5)))
        );
        // A list of sources: the first wins (PyYAML gives x: 1).
        assert_eq!(
            line_of(&format!("{anchors}c:\n  <<: [*a, *b]\n"), &["c", "x"]),
            Some((1, Some(4)))
        );
        assert_eq!(
            line_of(&format!("{anchors}c:\n  <<: [*a, *b]\n"), &["c", "y"]),
            Some((2, Some(4)))
        );
        // Through a merge inside a merged mapping.
        assert_eq!(
            line_of("a: &a {x: 1}\nb: &b {<<: *a}\n<<: *b\n", &["x"]),
            Some((1, Some(3)))
        );
        assert_eq!(
            line_of(&format!("{anchors}c:\n  <<: *a\n"), &["c", "y"]),
            None
        );
    }

    #[test]
    fn keys_only_merged_in() {
        let doc = parse("d: &d {p: 1, q: 2}\nm:\n  <<: *d\n  q: 3\n").unwrap();
        let m = doc.root.as_ref().unwrap().get("m").unwrap().1;
        assert_eq!(merged_only_keys(m), ["p"]);
    }
}
