//! Would `SafeLoader` raise? The composer (nodes shared through aliases,
//! recursive ones included) and the constructor (`flatten_mapping` for merge
//! keys, hashable keys, the tags SafeLoader knows and what each accepts), on
//! a node graph of our own so that the verdict does not depend on how the
//! caller builds its tree. Collections are constructed in PyYAML's order:
//! a mapping or sequence is built empty at once and filled in a later round
//! (its constructor is a generator), so that the first exception raised is
//! the one PyYAML raises.

use std::collections::HashMap;

use super::parser::{EventKind, Parser};
use super::resolve::{self, scalar_tag};
use super::{ErrorKind, Mark, YamlError};

type Id = usize;

enum Kind {
    Scalar { tag: String, value: String },
    Seq { tag: String, items: Vec<Id> },
    Map { tag: String, entries: Vec<(Id, Id)> },
}

struct Node {
    kind: Kind,
    mark: Mark,
}

impl Node {
    fn id(&self) -> &'static str {
        match self.kind {
            Kind::Scalar { .. } => "scalar",
            Kind::Seq { .. } => "sequence",
            Kind::Map { .. } => "mapping",
        }
    }

    fn tag(&self) -> &str {
        match &self.kind {
            Kind::Scalar { tag, .. } | Kind::Seq { tag, .. } | Kind::Map { tag, .. } => tag,
        }
    }
}

/// Upper bound on mapping entries copied by merge keys; PyYAML copies
/// them too, so a file above it is one cloud-init would take ages on.
const MERGE_WORK_LIMIT: usize = 4 * 1024 * 1024;

/// Deepest nesting of lists and mappings in the text: the document loader's
/// bound (which it also applies with aliases followed); it keeps
/// `flatten_mapping`'s recursion far from the end of the stack.
const MAX_TEXT_NESTING: usize = crate::guest::cloudinit::document::MAX_NESTING;

/// Reads `text` as `yaml.load(text, Loader=SafeLoader)` does and says
/// whether (and how) that raises.
pub fn check(text: &str) -> Result<(), YamlError> {
    let mut parser = Parser::new(text)?;
    let mut graph = Graph::default();
    let root = graph.compose(&mut parser)?;
    let mut constructor = Constructor {
        graph,
        constructed: HashMap::new(),
        next_round: Vec::new(),
        merge_work: 0,
        unsupported: None,
    };
    let Some(root) = root else {
        return parser.take_unsupported().map_or(Ok(()), Err);
    };
    constructor.construct_document(root)?;
    constructor.check_acyclic(root);
    // cloud-init refuses anything but a dict at the top (TypeError), which
    // comes before anything we would not hold inside it. A list or scalar
    // is refused by the caller, which sees it too; a tagged mapping (a set,
    // pairs) only we see.
    let node = constructor.node(root);
    match &node.kind {
        Kind::Map { .. } if node.tag() == resolve::MAP => {}
        Kind::Map { .. } => {
            return Err(refused(
                None,
                format!(
                    "the top level is a {}, not a mapping of settings{}",
                    node.tag(),
                    super::IGNORED_NOTE
                ),
                node.mark,
            ));
        }
        _ => return Ok(()),
    }
    if let Some(e) = parser.take_unsupported().or(constructor.unsupported) {
        return Err(e);
    }
    Ok(())
}

#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
}

/// A collection whose end event has not come yet.
struct Open {
    id: Id,
    /// A mapping's key waiting for its value.
    pending_key: Option<Id>,
}

impl Graph {
    fn add(&mut self, kind: Kind, mark: Mark) -> Id {
        self.nodes.push(Node { kind, mark });
        self.nodes.len() - 1
    }

    /// `Composer.compose_document`: an anchor names its node from its start,
    /// so an alias inside the node makes a cycle, as in PyYAML.
    fn compose(&mut self, parser: &mut Parser) -> Result<Option<Id>, YamlError> {
        let mut stack: Vec<Open> = Vec::new();
        let mut anchors: HashMap<String, Id> = HashMap::new();
        let mut root = None;
        while let Some(event) = parser.next_event()? {
            let sequence = matches!(event.kind, EventKind::SequenceStart { .. });
            let (finished, anchor) = match event.kind {
                EventKind::Alias { anchor } => {
                    // The parser has refused an alias to an unknown anchor.
                    (anchors.get(&anchor).copied(), None)
                }
                EventKind::Scalar {
                    anchor,
                    tag,
                    plain_implicit,
                    value,
                    ..
                } => {
                    let tag = scalar_tag(tag.as_deref(), plain_implicit, &value).to_string();
                    (
                        Some(self.add(Kind::Scalar { tag, value }, event.start)),
                        anchor,
                    )
                }
                EventKind::SequenceStart { anchor, tag, .. }
                | EventKind::MappingStart { anchor, tag, .. } => {
                    let kind = if sequence {
                        Kind::Seq {
                            tag: collection_tag(tag, resolve::SEQ),
                            items: Vec::new(),
                        }
                    } else {
                        Kind::Map {
                            tag: collection_tag(tag, resolve::MAP),
                            entries: Vec::new(),
                        }
                    };
                    if stack.len() >= MAX_TEXT_NESTING {
                        return Err(error(
                            ErrorKind::Bound,
                            None,
                            format!(
                                "lists and mappings nested more than {MAX_TEXT_NESTING} levels deep, {} \
                                 (a real cloud.cfg nests fewer than ten; PyYAML itself gives up near 450)",
                                super::BEYOND_A_BOUND
                            ),
                            event.start,
                        ));
                    }
                    let id = self.add(kind, event.start);
                    if let Some(a) = anchor {
                        anchors.insert(a, id);
                    }
                    stack.push(Open {
                        id,
                        pending_key: None,
                    });
                    (None, None)
                }
                EventKind::SequenceEnd | EventKind::MappingEnd => {
                    (stack.pop().map(|open| open.id), None)
                }
                EventKind::DocumentEnd { .. } => {
                    anchors.clear();
                    (None, None)
                }
                EventKind::StreamStart | EventKind::StreamEnd | EventKind::DocumentStart { .. } => {
                    (None, None)
                }
            };
            let Some(id) = finished else {
                continue;
            };
            if let Some(a) = anchor {
                anchors.insert(a, id);
            }
            match stack.last_mut() {
                None => root = Some(id),
                Some(open) => {
                    let pending = open.pending_key.take();
                    match (&mut self.nodes[open.id].kind, pending) {
                        (Kind::Seq { items, .. }, _) => items.push(id),
                        (Kind::Map { entries, .. }, Some(key)) => entries.push((key, id)),
                        (Kind::Map { .. }, None) => open.pending_key = Some(id),
                        (Kind::Scalar { .. }, _) => unreachable!("scalars hold no children"),
                    }
                }
            }
        }
        Ok(root)
    }
}

fn collection_tag(tag: Option<String>, default: &str) -> String {
    match tag {
        Some(t) if t != "!" => t,
        _ => default.to_string(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hashable {
    Yes,
    No,
}

struct Constructor {
    graph: Graph,
    constructed: HashMap<Id, Hashable>,
    /// Collections built empty, to be filled in the next round (PyYAML's
    /// `state_generators`).
    next_round: Vec<Id>,
    merge_work: usize,
    /// The first thing PyYAML reads but we cannot hold; reported only when
    /// nothing makes PyYAML raise.
    unsupported: Option<YamlError>,
}

fn error(kind: ErrorKind, context: Option<(&str, Mark)>, problem: String, mark: Mark) -> YamlError {
    let mut e = YamlError::marked(context.map(|(c, m)| (c, Some(m))), problem, mark);
    e.kind = kind;
    e
}

fn refused(context: Option<(&str, Mark)>, problem: String, mark: Mark) -> YamlError {
    error(ErrorKind::Refused, context, problem, mark)
}

impl Constructor {
    fn node(&self, id: Id) -> &Node {
        &self.graph.nodes[id]
    }

    fn note_unsupported(&mut self, message: String, mark: Mark) {
        if self.unsupported.is_none() {
            self.unsupported = Some(error(ErrorKind::Unsupported, None, message, mark));
        }
    }

    /// `construct_document`: the root, then round after round of the
    /// collections it left to fill.
    fn construct_document(&mut self, root: Id) -> Result<(), YamlError> {
        self.construct_object(root)?;
        while !self.next_round.is_empty() {
            let round = std::mem::take(&mut self.next_round);
            for id in round {
                self.fill(id)?;
            }
        }
        Ok(())
    }

    /// `construct_object`: each node once, however many aliases reach it.
    fn construct_object(&mut self, id: Id) -> Result<Hashable, YamlError> {
        if let Some(&h) = self.constructed.get(&id) {
            return Ok(h);
        }
        let node = self.node(id);
        let mark = node.mark;
        let tag = node.tag().to_string();
        let h = match &node.kind {
            _ if is_collection_tag(&tag) => {
                // A generator: the empty collection now, its content later.
                self.next_round.push(id);
                Hashable::No
            }
            Kind::Scalar { value, .. } => match resolve::construct_scalar(&tag, value) {
                Ok(_) => Hashable::Yes,
                Err((ErrorKind::Unsupported, m)) => {
                    self.note_unsupported(m, mark);
                    Hashable::Yes
                }
                Err((kind, m)) => return Err(error(kind, None, m, mark)),
            },
            Kind::Map { .. } if is_scalar_tag(&tag) => {
                // SafeConstructor.construct_scalar reads a mapping with a
                // `=` key as that key's value: PyYAML may accept it, but we
                // do not hold such a thing.
                let value = match self.scalar_through_value_key(id) {
                    ValueKey::Scalar(value) => value,
                    ValueKey::Missing => {
                        return Err(refused(
                            None,
                            "expected a scalar node, but found mapping".to_string(),
                            mark,
                        ));
                    }
                    ValueKey::Cycle => {
                        return Err(error(
                            ErrorKind::Crashes,
                            None,
                            "`=` keys lead back to their own mapping (PyYAML raises RecursionError)"
                                .to_string(),
                            mark,
                        ));
                    }
                };
                if tag == resolve::TIMESTAMP {
                    // construct_yaml_timestamp matches its regex against
                    // the node's value, here a list: TypeError.
                    return Err(refused(
                        None,
                        "expected string or bytes-like object".to_string(),
                        mark,
                    ));
                }
                if let Err((kind, m)) = resolve::construct_scalar(&tag, &value)
                    && kind != ErrorKind::Unsupported
                {
                    return Err(error(kind, None, m, mark));
                }
                self.note_unsupported(
                    "a mapping read as a scalar through a `=` key".to_string(),
                    mark,
                );
                Hashable::Yes
            }
            Kind::Seq { .. } if is_scalar_tag(&tag) => {
                return Err(refused(
                    None,
                    "expected a scalar node, but found sequence".to_string(),
                    mark,
                ));
            }
            _ => {
                return Err(refused(
                    None,
                    format!("could not determine a constructor for the tag '{tag}'"),
                    mark,
                ));
            }
        };
        self.constructed.insert(id, h);
        Ok(h)
    }

    /// The body of a collection constructor, after its first `yield`.
    fn fill(&mut self, id: Id) -> Result<(), YamlError> {
        let node = self.node(id);
        let mark = node.mark;
        let tag = node.tag().to_string();
        match (&node.kind, tag.as_str()) {
            (Kind::Seq { items, .. }, resolve::SEQ) => {
                for item in items.clone() {
                    self.construct_object(item)?;
                }
            }
            (Kind::Seq { items, .. }, resolve::OMAP | resolve::PAIRS) => {
                let context = if tag == resolve::OMAP {
                    "while constructing an ordered map"
                } else {
                    "while constructing pairs"
                };
                for item in items.clone() {
                    let sub = self.node(item);
                    let Kind::Map { entries, .. } = &sub.kind else {
                        return Err(refused(
                            Some((context, mark)),
                            format!("expected a mapping of length 1, but found {}", sub.id()),
                            sub.mark,
                        ));
                    };
                    if entries.len() != 1 {
                        return Err(refused(
                            Some((context, mark)),
                            format!(
                                "expected a single mapping item, but found {} items",
                                entries.len()
                            ),
                            sub.mark,
                        ));
                    }
                    let (k, v) = entries[0];
                    self.construct_object(k)?;
                    self.construct_object(v)?;
                }
                self.note_unsupported(
                    format!("a {tag} collection; prepare-image does not work on those"),
                    mark,
                );
            }
            (Kind::Map { .. }, resolve::MAP | resolve::SET) => {
                self.flatten(id)?;
                let Kind::Map { entries, .. } = &self.node(id).kind else {
                    unreachable!("a mapping stays one")
                };
                for (key, value) in entries.clone() {
                    if self.construct_object(key)? == Hashable::No {
                        return Err(refused(
                            Some(("while constructing a mapping", mark)),
                            "found unhashable key".to_string(),
                            self.node(key).mark,
                        ));
                    }
                    self.construct_object(value)?;
                }
                if tag == resolve::SET {
                    self.note_unsupported(
                        "a !!set; prepare-image does not work on those".to_string(),
                        mark,
                    );
                }
            }
            (Kind::Map { .. }, resolve::SEQ) => {
                return Err(refused(
                    None,
                    "expected a sequence node, but found mapping".to_string(),
                    mark,
                ));
            }
            (Kind::Seq { .. }, _) => {
                return Err(refused(
                    None,
                    "expected a mapping node, but found sequence".to_string(),
                    mark,
                ));
            }
            (Kind::Map { .. }, _) => {
                return Err(refused(
                    Some(("while constructing an ordered map", mark)),
                    "expected a sequence, but found mapping".to_string(),
                    mark,
                ));
            }
            (Kind::Scalar { .. }, resolve::SEQ) => {
                return Err(refused(
                    None,
                    "expected a sequence node, but found scalar".to_string(),
                    mark,
                ));
            }
            (Kind::Scalar { .. }, resolve::MAP | resolve::SET) => {
                return Err(refused(
                    None,
                    "expected a mapping node, but found scalar".to_string(),
                    mark,
                ));
            }
            (Kind::Scalar { .. }, _) => {
                return Err(refused(
                    Some(("while constructing an ordered map", mark)),
                    "expected a sequence, but found scalar".to_string(),
                    mark,
                ));
            }
        }
        Ok(())
    }

    /// `flatten_mapping`, step by step as PyYAML does it, in place: a merge
    /// key is removed before its value is flattened, which is what makes a
    /// mapping that merges itself finite.
    fn flatten(&mut self, id: Id) -> Result<(), YamlError> {
        let mark = self.node(id).mark;
        // PyYAML copies merged entries, the same pair as often as it is
        // merged; the verdict depends only on which pairs there are, in the
        // order they first come, so each is kept once (a chain of mappings
        // that each merge the previous one ten times stays linear).
        let mut merge = UniquePairs::default();
        let mut index = 0;
        while let Some((key, value)) = self.entries_ref(id).get(index).copied() {
            if self.node(key).tag() != resolve::MERGE {
                // A `=` key of a mapping read as one is a string from now
                // on, also where its node is reached again.
                if let Kind::Scalar { tag, .. } = &mut self.graph.nodes[key].kind
                    && tag == resolve::VALUE
                {
                    *tag = resolve::STR.to_string();
                }
                index += 1;
                continue;
            }
            if let Kind::Map { entries, .. } = &mut self.graph.nodes[id].kind {
                entries.remove(index);
            }
            match &self.node(value).kind {
                Kind::Map { .. } => {
                    self.flatten(value)?;
                    let added = merge.extend(self.entries_ref(value));
                    self.spend_merge_work(added, mark)?;
                }
                Kind::Seq { items, .. } => {
                    let mut submerge = Vec::new();
                    for sub in items.clone() {
                        if !matches!(self.node(sub).kind, Kind::Map { .. }) {
                            return Err(refused(
                                Some(("while constructing a mapping", mark)),
                                format!(
                                    "expected a mapping for merging, but found {}",
                                    self.node(sub).id()
                                ),
                                self.node(sub).mark,
                            ));
                        }
                        self.flatten(sub)?;
                        submerge.push(sub);
                    }
                    for sub in submerge.into_iter().rev() {
                        let added = merge.extend(self.entries_ref(sub));
                        self.spend_merge_work(added, mark)?;
                    }
                }
                Kind::Scalar { .. } => {
                    return Err(refused(
                        Some(("while constructing a mapping", mark)),
                        "expected a mapping or list of mappings for merging, but found scalar"
                            .to_string(),
                        self.node(value).mark,
                    ));
                }
            }
        }
        if !merge.pairs.is_empty() {
            merge.extend(self.entries_ref(id));
            if let Kind::Map { entries, .. } = &mut self.graph.nodes[id].kind {
                *entries = merge.pairs;
            }
        }
        Ok(())
    }

    /// `SafeConstructor.construct_scalar` on a mapping: the value under its
    /// first `=` key, followed down while it is a mapping.
    fn scalar_through_value_key(&self, mut id: Id) -> ValueKey {
        for _ in 0..=self.graph.nodes.len() {
            match &self.node(id).kind {
                Kind::Scalar { value, .. } => return ValueKey::Scalar(value.clone()),
                Kind::Map { entries, .. } => {
                    match entries
                        .iter()
                        .find(|&&(k, _)| self.node(k).tag() == resolve::VALUE)
                    {
                        Some(&(_, v)) => id = v,
                        None => return ValueKey::Missing,
                    }
                }
                Kind::Seq { .. } => return ValueKey::Missing,
            }
        }
        ValueKey::Cycle
    }

    /// Counts entries copied by merge keys, before copying them.
    fn spend_merge_work(&mut self, entries: usize, mark: Mark) -> Result<(), YamlError> {
        self.merge_work += entries;
        if self.merge_work > MERGE_WORK_LIMIT {
            return Err(error(
                ErrorKind::Bound,
                None,
                format!(
                    "merge keys copy more than {MERGE_WORK_LIMIT} entries, {}: write the values out, or use fewer merge keys",
                    super::BEYOND_A_BOUND
                ),
                mark,
            ));
        }
        Ok(())
    }

    fn entries_ref(&self, id: Id) -> &[(Id, Id)] {
        match &self.node(id).kind {
            Kind::Map { entries, .. } => entries,
            _ => &[],
        }
    }

    /// After construction: a node graph with a cycle is a recursive Python
    /// object, which prepare-image does not hold.
    fn check_acyclic(&mut self, root: Id) {
        #[derive(Clone, Copy, PartialEq)]
        enum Color {
            White,
            Grey,
            Black,
        }
        let mut color = vec![Color::White; self.graph.nodes.len()];
        // Iterative depth-first walk: (node, next child index).
        let mut stack: Vec<(Id, usize)> = vec![(root, 0)];
        color[root] = Color::Grey;
        while let Some(top) = stack.last_mut() {
            let id = top.0;
            let child = match &self.graph.nodes[id].kind {
                Kind::Scalar { .. } => None,
                Kind::Seq { items, .. } => items.get(top.1).copied(),
                Kind::Map { entries, .. } => entries
                    .get(top.1 / 2)
                    .map(|&(k, v)| if top.1 % 2 == 0 { k } else { v }),
            };
            let Some(child) = child else {
                color[id] = Color::Black;
                stack.pop();
                continue;
            };
            top.1 += 1;
            match color[child] {
                Color::White => {
                    color[child] = Color::Grey;
                    stack.push((child, 0));
                }
                Color::Grey => {
                    let mark = self.graph.nodes[child].mark;
                    self.note_unsupported(
                        "an alias refers to a collection that contains it (a recursive \
                         structure); prepare-image cannot work on that"
                            .to_string(),
                        mark,
                    );
                    return;
                }
                Color::Black => {}
            }
        }
    }
}

/// Where `=` keys lead from a mapping read as a scalar.
enum ValueKey {
    Scalar(String),
    /// A mapping without a `=` key, or a list.
    Missing,
    /// Back to a mapping already passed: PyYAML recurses until it fails.
    Cycle,
}

/// Mapping entries, each (key node, value node) pair once, in first-seen
/// order.
#[derive(Default)]
struct UniquePairs {
    pairs: Vec<(Id, Id)>,
    seen: std::collections::HashSet<(Id, Id)>,
}

impl UniquePairs {
    /// Adds the pairs not seen yet; returns how many were added.
    fn extend(&mut self, entries: &[(Id, Id)]) -> usize {
        let before = self.pairs.len();
        for &pair in entries {
            if self.seen.insert(pair) {
                self.pairs.push(pair);
            }
        }
        self.pairs.len() - before
    }
}

fn is_collection_tag(tag: &str) -> bool {
    matches!(
        tag,
        resolve::SEQ | resolve::MAP | resolve::SET | resolve::OMAP | resolve::PAIRS
    )
}

fn is_scalar_tag(tag: &str) -> bool {
    matches!(
        tag,
        resolve::NULL
            | resolve::BOOL
            | resolve::INT
            | resolve::FLOAT
            | resolve::STR
            | resolve::PYTHON_UNICODE
            | resolve::TIMESTAMP
            | resolve::BINARY
    )
}
