//! Would `SafeLoader` raise? The composer (nodes shared through aliases)
//! and the constructor (`flatten_mapping` for merge keys, hashable keys, the
//! tags SafeLoader knows and what each accepts), run on a light node graph so
//! that the verdict does not depend on how the caller builds its own tree.

use std::collections::HashMap;
use std::rc::Rc;

use super::parser::{EventKind, Parser};
use super::resolve::{self, scalar_tag};
use super::{ErrorKind, Mark, YamlError};

enum Kind {
    Scalar {
        tag: String,
        value: String,
    },
    Seq {
        tag: String,
        items: Vec<Rc<Node>>,
    },
    Map {
        tag: String,
        entries: Vec<(Rc<Node>, Rc<Node>)>,
    },
}

/// A mapping's entries, as `flatten_mapping` leaves them.
type Entries = Rc<Vec<(Rc<Node>, Rc<Node>)>>;

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
}

/// Upper bound on mapping entries copied by merge keys; PyYAML copies
/// them too, so a file above it is one cloud-init would take ages on.
const MERGE_WORK_LIMIT: usize = 1_000_000;

/// Reads `text` as `yaml.load(text, Loader=SafeLoader)` does and says
/// whether (and how) that raises.
pub fn check(text: &str) -> Result<(), YamlError> {
    let mut parser = Parser::new(text)?;
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<String, Rc<Node>> = HashMap::new();
    let mut root: Option<Rc<Node>> = None;
    while let Some(event) = parser.next_event()? {
        let finished = match event.kind {
            EventKind::Alias { anchor } => Some(match anchors.get(&anchor) {
                Some(node) => node.clone(),
                // A recursive alias, which the parser reports at the end
                // unless PyYAML raises: an empty collection of the same kind
                // raises what the real one would as a key (unhashable).
                None => Rc::new(Node {
                    kind: match stack
                        .iter()
                        .rev()
                        .find(|o| o.anchor.as_ref() == Some(&anchor))
                    {
                        Some(Open {
                            kind: Kind::Map { tag, .. },
                            ..
                        }) => Kind::Map {
                            tag: tag.clone(),
                            entries: Vec::new(),
                        },
                        _ => Kind::Seq {
                            tag: resolve::SEQ.to_string(),
                            items: Vec::new(),
                        },
                    },
                    mark: event.start,
                }),
            }),
            EventKind::Scalar {
                anchor,
                tag,
                plain_implicit,
                value,
                ..
            } => {
                let tag = scalar_tag(tag.as_deref(), plain_implicit, &value).to_string();
                let node = Rc::new(Node {
                    kind: Kind::Scalar { tag, value },
                    mark: event.start,
                });
                if let Some(a) = anchor {
                    anchors.insert(a, node.clone());
                }
                Some(node)
            }
            EventKind::SequenceStart { anchor, tag, .. } => {
                let tag = collection_tag(tag, resolve::SEQ);
                stack.push(Open::new(
                    anchor,
                    event.start,
                    Kind::Seq {
                        tag,
                        items: Vec::new(),
                    },
                ));
                None
            }
            EventKind::MappingStart { anchor, tag, .. } => {
                let tag = collection_tag(tag, resolve::MAP);
                stack.push(Open::new(
                    anchor,
                    event.start,
                    Kind::Map {
                        tag,
                        entries: Vec::new(),
                    },
                ));
                None
            }
            EventKind::SequenceEnd | EventKind::MappingEnd => {
                let open = stack.pop().expect("the parser balances collections");
                let node = Rc::new(Node {
                    kind: open.kind,
                    mark: open.mark,
                });
                if let Some(a) = open.anchor {
                    anchors.insert(a, node.clone());
                }
                Some(node)
            }
            EventKind::DocumentEnd { .. } => {
                anchors.clear();
                None
            }
            EventKind::StreamStart | EventKind::StreamEnd | EventKind::DocumentStart { .. } => None,
        };
        if let Some(node) = finished {
            match stack.last_mut() {
                None => root = Some(node),
                Some(open) => open.add(node),
            }
        }
    }
    let mut constructor = Constructor::default();
    if let Some(root) = &root {
        constructor.construct(root)?;
    }
    if let Some(e) = parser.take_unsupported().or(constructor.unsupported) {
        return Err(e);
    }
    Ok(())
}

/// A collection whose end event has not come yet.
struct Open {
    anchor: Option<String>,
    mark: Mark,
    kind: Kind,
    /// A mapping's key waiting for its value.
    pending_key: Option<Rc<Node>>,
}

impl Open {
    fn new(anchor: Option<String>, mark: Mark, kind: Kind) -> Open {
        Open {
            anchor,
            mark,
            kind,
            pending_key: None,
        }
    }

    fn add(&mut self, node: Rc<Node>) {
        match &mut self.kind {
            Kind::Seq { items, .. } => items.push(node),
            Kind::Map { entries, .. } => match self.pending_key.take() {
                Some(key) => entries.push((key, node)),
                None => self.pending_key = Some(node),
            },
            Kind::Scalar { .. } => unreachable!("scalars hold no children"),
        }
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

#[derive(Default)]
struct Constructor {
    constructed: HashMap<*const Node, Hashable>,
    flattened: HashMap<*const Node, Entries>,
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

impl Constructor {
    fn note_unsupported(&mut self, message: String, mark: Mark) {
        if self.unsupported.is_none() {
            self.unsupported = Some(error(ErrorKind::Unsupported, None, message, mark));
        }
    }

    /// `construct_object`: each node once, however many aliases reach it.
    fn construct(&mut self, node: &Rc<Node>) -> Result<Hashable, YamlError> {
        let id = Rc::as_ptr(node);
        if let Some(&h) = self.constructed.get(&id) {
            return Ok(h);
        }
        let h = self.construct_new(node)?;
        self.constructed.insert(id, h);
        Ok(h)
    }

    fn construct_new(&mut self, node: &Rc<Node>) -> Result<Hashable, YamlError> {
        match &node.kind {
            Kind::Scalar { tag, value } => match resolve::construct_scalar(tag, value) {
                Ok(_) => Ok(Hashable::Yes),
                Err((ErrorKind::Unsupported, m)) => {
                    self.note_unsupported(m, node.mark);
                    Ok(Hashable::Yes)
                }
                Err((kind, m)) => Err(error(kind, None, m, node.mark)),
            },
            Kind::Seq { tag, items } => match tag.as_str() {
                resolve::SEQ => {
                    for item in items {
                        self.construct(item)?;
                    }
                    Ok(Hashable::No)
                }
                resolve::OMAP | resolve::PAIRS => {
                    let context = if tag == resolve::OMAP {
                        "while constructing an ordered map"
                    } else {
                        "while constructing pairs"
                    };
                    for item in items {
                        let Kind::Map { entries, .. } = &item.kind else {
                            return Err(error(
                                ErrorKind::Refused,
                                Some((context, node.mark)),
                                format!("expected a mapping of length 1, but found {}", item.id()),
                                item.mark,
                            ));
                        };
                        if entries.len() != 1 {
                            return Err(error(
                                ErrorKind::Refused,
                                Some((context, node.mark)),
                                format!(
                                    "expected a single mapping item, but found {} items",
                                    entries.len()
                                ),
                                item.mark,
                            ));
                        }
                        self.construct(&entries[0].0)?;
                        self.construct(&entries[0].1)?;
                    }
                    self.note_unsupported(
                        format!("a {tag} collection; prepare-image does not work on those"),
                        node.mark,
                    );
                    Ok(Hashable::No)
                }
                resolve::MAP | resolve::SET => Err(error(
                    ErrorKind::Refused,
                    None,
                    "expected a mapping node, but found sequence".to_string(),
                    node.mark,
                )),
                t if is_scalar_tag(t) => Err(error(
                    ErrorKind::Refused,
                    None,
                    "expected a scalar node, but found sequence".to_string(),
                    node.mark,
                )),
                other => Err(undefined(other, node.mark)),
            },
            Kind::Map { tag, entries } => match tag.as_str() {
                resolve::MAP | resolve::SET => {
                    let flat = self.flatten(node)?;
                    for (key, value) in flat.iter() {
                        // flatten_mapping retags a `=` key as a string.
                        let value_key =
                            matches!(&key.kind, Kind::Scalar { tag, .. } if tag == resolve::VALUE);
                        if !value_key && self.construct(key)? == Hashable::No {
                            return Err(error(
                                ErrorKind::Refused,
                                Some(("while constructing a mapping", node.mark)),
                                "found unhashable key".to_string(),
                                key.mark,
                            ));
                        }
                        self.construct(value)?;
                    }
                    if tag == resolve::SET {
                        self.note_unsupported(
                            "a !!set; prepare-image does not work on those".to_string(),
                            node.mark,
                        );
                    }
                    Ok(Hashable::No)
                }
                resolve::OMAP | resolve::PAIRS => Err(error(
                    ErrorKind::Refused,
                    Some(("while constructing an ordered map", node.mark)),
                    "expected a sequence, but found mapping".to_string(),
                    node.mark,
                )),
                t if is_scalar_tag(t) => {
                    // SafeConstructor.construct_scalar reads a mapping with a
                    // `=` key as that key's value; too odd to support.
                    let has_value_key = entries.iter().any(
                        |(k, _)| matches!(&k.kind, Kind::Scalar { tag, .. } if tag == resolve::VALUE),
                    );
                    if has_value_key {
                        self.note_unsupported(
                            "a mapping read as a scalar through a `=` key".to_string(),
                            node.mark,
                        );
                        Ok(Hashable::Yes)
                    } else {
                        Err(error(
                            ErrorKind::Refused,
                            None,
                            "expected a scalar node, but found mapping".to_string(),
                            node.mark,
                        ))
                    }
                }
                other => Err(undefined(other, node.mark)),
            },
        }
    }

    /// `flatten_mapping`: merge keys replaced by the entries they bring.
    fn flatten(&mut self, node: &Rc<Node>) -> Result<Entries, YamlError> {
        let id = Rc::as_ptr(node);
        if let Some(done) = self.flattened.get(&id) {
            return Ok(done.clone());
        }
        let Kind::Map { entries, .. } = &node.kind else {
            return Ok(Rc::new(Vec::new()));
        };
        let mut merge = Vec::new();
        let mut own = Vec::new();
        for (key, value) in entries {
            let is_merge = matches!(&key.kind, Kind::Scalar { tag, .. } if tag == resolve::MERGE);
            if !is_merge {
                own.push((key.clone(), value.clone()));
                continue;
            }
            match &value.kind {
                Kind::Map { .. } => merge.extend(self.flatten(value)?.iter().cloned()),
                Kind::Seq { items, .. } => {
                    let mut submerge = Vec::new();
                    for sub in items {
                        if !matches!(sub.kind, Kind::Map { .. }) {
                            return Err(error(
                                ErrorKind::Refused,
                                Some(("while constructing a mapping", node.mark)),
                                format!("expected a mapping for merging, but found {}", sub.id()),
                                sub.mark,
                            ));
                        }
                        submerge.push(self.flatten(sub)?);
                    }
                    for sub in submerge.iter().rev() {
                        merge.extend(sub.iter().cloned());
                    }
                }
                Kind::Scalar { .. } => {
                    return Err(error(
                        ErrorKind::Refused,
                        Some(("while constructing a mapping", node.mark)),
                        "expected a mapping or list of mappings for merging, but found scalar"
                            .to_string(),
                        value.mark,
                    ));
                }
            }
        }
        self.merge_work += merge.len() + own.len();
        if self.merge_work > MERGE_WORK_LIMIT {
            return Err(error(
                ErrorKind::Unsupported,
                None,
                format!(
                    "merge keys copy more than {MERGE_WORK_LIMIT} entries; prepare-image refuses such a file"
                ),
                node.mark,
            ));
        }
        merge.extend(own);
        let flat = Rc::new(merge);
        self.flattened.insert(id, flat.clone());
        Ok(flat)
    }
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

fn undefined(tag: &str, mark: Mark) -> YamlError {
    error(
        ErrorKind::Refused,
        None,
        format!("could not determine a constructor for the tag '{tag}'"),
        mark,
    )
}
