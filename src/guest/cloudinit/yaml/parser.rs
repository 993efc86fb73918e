//! PyYAML's `parser.py` (tokens to events), plus the anchor rules of
//! `composer.py` (an alias must name an anchor already seen; an anchor name
//! may not be used twice in a document) and its single-document rule.

use std::collections::HashMap;

use super::scanner::{QuoteStyle, Scanner, Token, TokenKind};
use super::{Mark, YamlError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarStyle {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
    Folded,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    StreamStart,
    StreamEnd,
    DocumentStart {
        explicit: bool,
    },
    DocumentEnd {
        explicit: bool,
    },
    Alias {
        anchor: String,
    },
    Scalar {
        anchor: Option<String>,
        /// The resolved tag (`tag:yaml.org,2002:int`), or `!` for the
        /// non-specific tag, or None.
        tag: Option<String>,
        /// PyYAML's `implicit[0]`: the scalar is resolved by its text (plain
        /// and untagged, or tagged `!`).
        plain_implicit: bool,
        value: String,
        style: ScalarStyle,
    },
    SequenceStart {
        anchor: Option<String>,
        tag: Option<String>,
        flow: bool,
    },
    SequenceEnd,
    MappingStart {
        anchor: Option<String>,
        tag: Option<String>,
        flow: bool,
    },
    MappingEnd,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub start: Mark,
    pub end: Mark,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    StreamStart,
    ImplicitDocumentStart,
    DocumentStart,
    DocumentEnd,
    DocumentContent,
    BlockNode,
    BlockSequenceFirstEntry,
    BlockSequenceEntry,
    IndentlessSequenceEntry,
    BlockMappingFirstKey,
    BlockMappingKey,
    BlockMappingValue,
    FlowSequenceFirstEntry,
    FlowSequenceEntry,
    FlowSequenceEntryMappingKey,
    FlowSequenceEntryMappingValue,
    FlowSequenceEntryMappingEnd,
    FlowMappingFirstKey,
    FlowMappingKey,
    FlowMappingValue,
    FlowMappingEmptyValue,
}

type Result<T> = std::result::Result<T, YamlError>;

fn parser_error(context: Option<(&str, Mark)>, problem: String, mark: Mark) -> YamlError {
    YamlError::marked(context.map(|(c, m)| (c, Some(m))), problem, mark)
}

pub struct Parser {
    scanner: Scanner,
    state: Option<State>,
    states: Vec<State>,
    marks: Vec<Mark>,
    tag_handles: Vec<(String, String)>,
    /// Composer rules: anchors seen in this document (where), and how many
    /// documents have started.
    anchors: HashMap<String, Mark>,
    documents: usize,
    first_document_start: Option<Mark>,
}

fn default_tag_handles() -> Vec<(String, String)> {
    vec![
        ("!".to_string(), "!".to_string()),
        ("!!".to_string(), "tag:yaml.org,2002:".to_string()),
    ]
}

impl Parser {
    pub fn new(text: &str) -> Result<Parser> {
        Ok(Parser {
            scanner: Scanner::new(text)?,
            state: Some(State::StreamStart),
            states: Vec::new(),
            marks: Vec::new(),
            tag_handles: Vec::new(),
            anchors: HashMap::new(),
            documents: 0,
            first_document_start: None,
        })
    }

    /// The next event, or None after the stream's end.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        let Some(state) = self.state else {
            return Ok(None);
        };
        let event = self.step(state)?;
        self.compose_rules(&event)?;
        Ok(Some(event))
    }

    /// What PyYAML reads but we cannot hold, once the stream is read.
    pub fn take_unsupported(&mut self) -> Option<YamlError> {
        self.scanner.take_unsupported()
    }

    /// What PyYAML's composer refuses, checked in event order as it does.
    fn compose_rules(&mut self, event: &Event) -> Result<()> {
        match &event.kind {
            EventKind::DocumentStart { .. } => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(YamlError::marked(
                        Some((
                            "expected a single document in the stream",
                            self.first_document_start,
                        )),
                        "but found another document",
                        event.start,
                    ));
                }
            }
            EventKind::DocumentEnd { .. } => self.anchors.clear(),
            EventKind::Alias { anchor } => {
                if !self.anchors.contains_key(anchor) {
                    return Err(YamlError::marked(
                        None,
                        format!("found undefined alias '{anchor}'"),
                        event.start,
                    ));
                }
            }
            EventKind::Scalar { anchor, .. } => self.define(anchor.as_deref(), event.start)?,
            EventKind::SequenceStart { anchor, .. } | EventKind::MappingStart { anchor, .. } => {
                self.define(anchor.as_deref(), event.start)?
            }
            EventKind::SequenceEnd
            | EventKind::MappingEnd
            | EventKind::StreamStart
            | EventKind::StreamEnd => {}
        }
        Ok(())
    }

    fn define(&mut self, anchor: Option<&str>, mark: Mark) -> Result<()> {
        let Some(anchor) = anchor else {
            return Ok(());
        };
        if let Some(first) = self.anchors.get(anchor) {
            return Err(YamlError::marked(
                Some((
                    &format!("found duplicate anchor '{anchor}'; first occurrence"),
                    Some(*first),
                )),
                "second occurrence",
                mark,
            ));
        }
        self.anchors.insert(anchor.to_string(), mark);
        Ok(())
    }

    fn peek(&mut self) -> Result<&Token> {
        // The scanner always ends with a stream-end token, after which the
        // parser stops asking; running out is an internal error.
        match self.scanner.peek_token()? {
            Some(t) => Ok(t),
            None => Err(YamlError::marked(
                None,
                "unexpected end of the token stream",
                Mark {
                    index: 0,
                    byte: 0,
                    line: 0,
                    column: 0,
                },
            )),
        }
    }

    fn check(&mut self, kinds: &[fn(&TokenKind) -> bool]) -> Result<bool> {
        let token = self.peek()?;
        Ok(kinds.iter().any(|k| k(&token.kind)))
    }

    fn take(&mut self) -> Result<Token> {
        self.peek()?;
        Ok(self.scanner.get_token()?.expect("a token was just peeked"))
    }

    fn pop_state(&mut self) -> Option<State> {
        self.states.pop()
    }

    fn step(&mut self, state: State) -> Result<Event> {
        match state {
            State::StreamStart => {
                let token = self.take()?;
                self.state = Some(State::ImplicitDocumentStart);
                Ok(Event {
                    kind: EventKind::StreamStart,
                    start: token.start,
                    end: token.end,
                })
            }
            State::ImplicitDocumentStart => {
                if !self.check(&[is_directive, is_document_start, is_stream_end])? {
                    self.tag_handles = default_tag_handles();
                    let mark = self.peek()?.start;
                    self.first_document_start.get_or_insert(mark);
                    self.states.push(State::DocumentEnd);
                    self.state = Some(State::BlockNode);
                    Ok(Event {
                        kind: EventKind::DocumentStart { explicit: false },
                        start: mark,
                        end: mark,
                    })
                } else {
                    self.parse_document_start()
                }
            }
            State::DocumentStart => self.parse_document_start(),
            State::DocumentEnd => {
                let token = self.peek()?;
                let start = token.start;
                let mut end = start;
                let mut explicit = false;
                if is_document_end(&token.kind) {
                    end = self.take()?.end;
                    explicit = true;
                }
                self.state = Some(State::DocumentStart);
                Ok(Event {
                    kind: EventKind::DocumentEnd { explicit },
                    start,
                    end,
                })
            }
            State::DocumentContent => {
                if self.check(&[
                    is_directive,
                    is_document_start,
                    is_document_end,
                    is_stream_end,
                ])? {
                    let mark = self.peek()?.start;
                    self.state = self.pop_state();
                    Ok(empty_scalar(mark))
                } else {
                    self.parse_node(true, false)
                }
            }
            State::BlockNode => self.parse_node(true, false),
            State::BlockSequenceFirstEntry => {
                let token = self.take()?;
                self.marks.push(token.start);
                self.parse_block_sequence_entry()
            }
            State::BlockSequenceEntry => self.parse_block_sequence_entry(),
            State::IndentlessSequenceEntry => {
                if self.check(&[is_block_entry])? {
                    let token = self.take()?;
                    if !self.check(&[is_block_entry, is_key, is_value, is_block_end])? {
                        self.states.push(State::IndentlessSequenceEntry);
                        return self.parse_node(true, false);
                    }
                    self.state = Some(State::IndentlessSequenceEntry);
                    return Ok(empty_scalar(token.end));
                }
                let mark = self.peek()?.start;
                self.state = self.pop_state();
                Ok(Event {
                    kind: EventKind::SequenceEnd,
                    start: mark,
                    end: mark,
                })
            }
            State::BlockMappingFirstKey => {
                let token = self.take()?;
                self.marks.push(token.start);
                self.parse_block_mapping_key()
            }
            State::BlockMappingKey => self.parse_block_mapping_key(),
            State::BlockMappingValue => {
                if self.check(&[is_value])? {
                    let token = self.take()?;
                    if !self.check(&[is_key, is_value, is_block_end])? {
                        self.states.push(State::BlockMappingKey);
                        return self.parse_node(true, true);
                    }
                    self.state = Some(State::BlockMappingKey);
                    return Ok(empty_scalar(token.end));
                }
                self.state = Some(State::BlockMappingKey);
                let mark = self.peek()?.start;
                Ok(empty_scalar(mark))
            }
            State::FlowSequenceFirstEntry => {
                let token = self.take()?;
                self.marks.push(token.start);
                self.parse_flow_sequence_entry(true)
            }
            State::FlowSequenceEntry => self.parse_flow_sequence_entry(false),
            State::FlowSequenceEntryMappingKey => {
                let token = self.take()?;
                if !self.check(&[is_value, is_flow_entry, is_flow_sequence_end])? {
                    self.states.push(State::FlowSequenceEntryMappingValue);
                    return self.parse_node(false, false);
                }
                self.state = Some(State::FlowSequenceEntryMappingValue);
                Ok(empty_scalar(token.end))
            }
            State::FlowSequenceEntryMappingValue => {
                if self.check(&[is_value])? {
                    let token = self.take()?;
                    if !self.check(&[is_flow_entry, is_flow_sequence_end])? {
                        self.states.push(State::FlowSequenceEntryMappingEnd);
                        return self.parse_node(false, false);
                    }
                    self.state = Some(State::FlowSequenceEntryMappingEnd);
                    return Ok(empty_scalar(token.end));
                }
                self.state = Some(State::FlowSequenceEntryMappingEnd);
                let mark = self.peek()?.start;
                Ok(empty_scalar(mark))
            }
            State::FlowSequenceEntryMappingEnd => {
                self.state = Some(State::FlowSequenceEntry);
                let mark = self.peek()?.start;
                Ok(Event {
                    kind: EventKind::MappingEnd,
                    start: mark,
                    end: mark,
                })
            }
            State::FlowMappingFirstKey => {
                let token = self.take()?;
                self.marks.push(token.start);
                self.parse_flow_mapping_key(true)
            }
            State::FlowMappingKey => self.parse_flow_mapping_key(false),
            State::FlowMappingValue => {
                if self.check(&[is_value])? {
                    let token = self.take()?;
                    if !self.check(&[is_flow_entry, is_flow_mapping_end])? {
                        self.states.push(State::FlowMappingKey);
                        return self.parse_node(false, false);
                    }
                    self.state = Some(State::FlowMappingKey);
                    return Ok(empty_scalar(token.end));
                }
                self.state = Some(State::FlowMappingKey);
                let mark = self.peek()?.start;
                Ok(empty_scalar(mark))
            }
            State::FlowMappingEmptyValue => {
                self.state = Some(State::FlowMappingKey);
                let mark = self.peek()?.start;
                Ok(empty_scalar(mark))
            }
        }
    }

    fn parse_document_start(&mut self) -> Result<Event> {
        while self.check(&[is_document_end])? {
            self.take()?;
        }
        if !self.check(&[is_stream_end])? {
            let start = self.peek()?.start;
            self.first_document_start.get_or_insert(start);
            self.process_directives()?;
            if !self.check(&[is_document_start])? {
                let token = self.peek()?;
                return Err(parser_error(
                    None,
                    format!("expected '<document start>', but found {}", token.kind.id()),
                    token.start,
                ));
            }
            let token = self.take()?;
            self.states.push(State::DocumentEnd);
            self.state = Some(State::DocumentContent);
            Ok(Event {
                kind: EventKind::DocumentStart { explicit: true },
                start,
                end: token.end,
            })
        } else {
            let token = self.take()?;
            self.state = None;
            Ok(Event {
                kind: EventKind::StreamEnd,
                start: token.start,
                end: token.end,
            })
        }
    }

    fn process_directives(&mut self) -> Result<()> {
        let mut yaml_version = None;
        self.tag_handles = Vec::new();
        while self.check(&[is_directive])? {
            let token = self.take()?;
            match token.kind {
                TokenKind::YamlDirective(major, minor) => {
                    if yaml_version.is_some() {
                        return Err(parser_error(
                            None,
                            "found duplicate YAML directive".to_string(),
                            token.start,
                        ));
                    }
                    if major != 1 {
                        return Err(parser_error(
                            None,
                            "found incompatible YAML document (version 1.* is required)"
                                .to_string(),
                            token.start,
                        ));
                    }
                    yaml_version = Some((major, minor));
                }
                TokenKind::TagDirective(handle, prefix) => {
                    if self.tag_handles.iter().any(|(h, _)| *h == handle) {
                        return Err(parser_error(
                            None,
                            format!("duplicate tag handle '{handle}'"),
                            token.start,
                        ));
                    }
                    self.tag_handles.push((handle, prefix));
                }
                _ => {}
            }
        }
        for (handle, prefix) in default_tag_handles() {
            if !self.tag_handles.iter().any(|(h, _)| *h == handle) {
                self.tag_handles.push((handle, prefix));
            }
        }
        Ok(())
    }

    fn parse_node(&mut self, block: bool, indentless_sequence: bool) -> Result<Event> {
        if let TokenKind::Alias(_) = self.peek()?.kind {
            let token = self.take()?;
            let TokenKind::Alias(anchor) = token.kind else {
                unreachable!("peeked an alias")
            };
            self.state = self.pop_state();
            return Ok(Event {
                kind: EventKind::Alias { anchor },
                start: token.start,
                end: token.end,
            });
        }
        let mut anchor = None;
        let mut tag = None;
        let mut start = None;
        let mut end = None;
        let mut tag_mark = None;
        if let TokenKind::Anchor(_) = self.peek()?.kind {
            let token = self.take()?;
            start = Some(token.start);
            end = Some(token.end);
            if let TokenKind::Anchor(a) = token.kind {
                anchor = Some(a);
            }
            if let TokenKind::Tag(..) = self.peek()?.kind {
                let token = self.take()?;
                tag_mark = Some(token.start);
                end = Some(token.end);
                if let TokenKind::Tag(h, s) = token.kind {
                    tag = Some((h, s));
                }
            }
        } else if let TokenKind::Tag(..) = self.peek()?.kind {
            let token = self.take()?;
            start = Some(token.start);
            tag_mark = Some(token.start);
            end = Some(token.end);
            if let TokenKind::Tag(h, s) = token.kind {
                tag = Some((h, s));
            }
            if let TokenKind::Anchor(_) = self.peek()?.kind {
                let token = self.take()?;
                end = Some(token.end);
                if let TokenKind::Anchor(a) = token.kind {
                    anchor = Some(a);
                }
            }
        }
        let tag = match tag {
            None => None,
            Some((Some(handle), suffix)) => {
                let Some((_, prefix)) = self.tag_handles.iter().find(|(h, _)| *h == handle) else {
                    return Err(parser_error(
                        start.map(|m| ("while parsing a node", m)),
                        format!("found undefined tag handle '{handle}'"),
                        tag_mark.unwrap_or_else(|| start.expect("a tag has a mark")),
                    ));
                };
                Some(format!("{prefix}{suffix}"))
            }
            Some((None, suffix)) => Some(suffix),
        };
        let next = self.peek()?.clone();
        let start = start.unwrap_or(next.start);
        let mut end = end.unwrap_or(next.start);
        if indentless_sequence && is_block_entry(&next.kind) {
            end = next.end;
            self.state = Some(State::IndentlessSequenceEntry);
            return Ok(Event {
                kind: EventKind::SequenceStart {
                    anchor,
                    tag,
                    flow: false,
                },
                start,
                end,
            });
        }
        match next.kind {
            TokenKind::Scalar { .. } => {
                let token = self.take()?;
                let TokenKind::Scalar {
                    value,
                    plain,
                    style,
                } = token.kind
                else {
                    unreachable!("peeked a scalar")
                };
                let plain_implicit = (plain && tag.is_none()) || tag.as_deref() == Some("!");
                self.state = self.pop_state();
                Ok(Event {
                    kind: EventKind::Scalar {
                        anchor,
                        tag,
                        plain_implicit,
                        value,
                        style: match style {
                            QuoteStyle::Plain => ScalarStyle::Plain,
                            QuoteStyle::Single => ScalarStyle::SingleQuoted,
                            QuoteStyle::Double => ScalarStyle::DoubleQuoted,
                            QuoteStyle::Literal => ScalarStyle::Literal,
                            QuoteStyle::Folded => ScalarStyle::Folded,
                        },
                    },
                    start,
                    end: token.end,
                })
            }
            TokenKind::FlowSequenceStart => {
                self.state = Some(State::FlowSequenceFirstEntry);
                Ok(Event {
                    kind: EventKind::SequenceStart {
                        anchor,
                        tag,
                        flow: true,
                    },
                    start,
                    end: next.end,
                })
            }
            TokenKind::FlowMappingStart => {
                self.state = Some(State::FlowMappingFirstKey);
                Ok(Event {
                    kind: EventKind::MappingStart {
                        anchor,
                        tag,
                        flow: true,
                    },
                    start,
                    end: next.end,
                })
            }
            TokenKind::BlockSequenceStart if block => {
                self.state = Some(State::BlockSequenceFirstEntry);
                Ok(Event {
                    kind: EventKind::SequenceStart {
                        anchor,
                        tag,
                        flow: false,
                    },
                    start,
                    end: next.start,
                })
            }
            TokenKind::BlockMappingStart if block => {
                self.state = Some(State::BlockMappingFirstKey);
                Ok(Event {
                    kind: EventKind::MappingStart {
                        anchor,
                        tag,
                        flow: false,
                    },
                    start,
                    end: next.start,
                })
            }
            _ if anchor.is_some() || tag.is_some() => {
                // An anchor or tag with nothing after it: an empty scalar.
                self.state = self.pop_state();
                let plain_implicit = tag.is_none() || tag.as_deref() == Some("!");
                Ok(Event {
                    kind: EventKind::Scalar {
                        anchor,
                        tag,
                        plain_implicit,
                        value: String::new(),
                        style: ScalarStyle::Plain,
                    },
                    start,
                    end,
                })
            }
            other => Err(parser_error(
                Some((
                    if block {
                        "while parsing a block node"
                    } else {
                        "while parsing a flow node"
                    },
                    start,
                )),
                format!("expected the node content, but found {}", other.id()),
                next.start,
            )),
        }
    }

    fn parse_block_sequence_entry(&mut self) -> Result<Event> {
        if self.check(&[is_block_entry])? {
            let token = self.take()?;
            if !self.check(&[is_block_entry, is_block_end])? {
                self.states.push(State::BlockSequenceEntry);
                return self.parse_node(true, false);
            }
            self.state = Some(State::BlockSequenceEntry);
            return Ok(empty_scalar(token.end));
        }
        if !self.check(&[is_block_end])? {
            return Err(self.unexpected(
                "while parsing a block collection",
                "expected <block end>, but found",
            )?);
        }
        self.end_collection(EventKind::SequenceEnd)
    }

    fn parse_block_mapping_key(&mut self) -> Result<Event> {
        if self.check(&[is_key])? {
            let token = self.take()?;
            if !self.check(&[is_key, is_value, is_block_end])? {
                self.states.push(State::BlockMappingValue);
                return self.parse_node(true, true);
            }
            self.state = Some(State::BlockMappingValue);
            return Ok(empty_scalar(token.end));
        }
        if !self.check(&[is_block_end])? {
            return Err(self.unexpected(
                "while parsing a block mapping",
                "expected <block end>, but found",
            )?);
        }
        self.end_collection(EventKind::MappingEnd)
    }

    fn parse_flow_sequence_entry(&mut self, first: bool) -> Result<Event> {
        if !self.check(&[is_flow_sequence_end])? {
            if !first {
                if self.check(&[is_flow_entry])? {
                    self.take()?;
                } else {
                    return Err(self.unexpected(
                        "while parsing a flow sequence",
                        "expected ',' or ']', but got",
                    )?);
                }
            }
            if self.check(&[is_key])? {
                let token = self.peek()?;
                let (start, end) = (token.start, token.end);
                self.state = Some(State::FlowSequenceEntryMappingKey);
                return Ok(Event {
                    kind: EventKind::MappingStart {
                        anchor: None,
                        tag: None,
                        flow: true,
                    },
                    start,
                    end,
                });
            } else if !self.check(&[is_flow_sequence_end])? {
                self.states.push(State::FlowSequenceEntry);
                return self.parse_node(false, false);
            }
        }
        self.end_collection(EventKind::SequenceEnd)
    }

    fn parse_flow_mapping_key(&mut self, first: bool) -> Result<Event> {
        if !self.check(&[is_flow_mapping_end])? {
            if !first {
                if self.check(&[is_flow_entry])? {
                    self.take()?;
                } else {
                    return Err(self.unexpected(
                        "while parsing a flow mapping",
                        "expected ',' or '}', but got",
                    )?);
                }
            }
            if self.check(&[is_key])? {
                let token = self.take()?;
                if !self.check(&[is_value, is_flow_entry, is_flow_mapping_end])? {
                    self.states.push(State::FlowMappingValue);
                    return self.parse_node(false, false);
                }
                self.state = Some(State::FlowMappingValue);
                return Ok(empty_scalar(token.end));
            } else if !self.check(&[is_flow_mapping_end])? {
                self.states.push(State::FlowMappingEmptyValue);
                return self.parse_node(false, false);
            }
        }
        self.end_collection(EventKind::MappingEnd)
    }

    /// The end event of the collection just finished.
    fn end_collection(&mut self, kind: EventKind) -> Result<Event> {
        let token = self.take()?;
        self.state = self.pop_state();
        self.marks.pop();
        Ok(Event {
            kind,
            start: token.start,
            end: token.end,
        })
    }

    /// A token that may not stand here, inside the collection opened last.
    fn unexpected(&mut self, context: &str, expected: &str) -> Result<YamlError> {
        let token = self.peek()?;
        let (id, at) = (token.kind.id(), token.start);
        Ok(parser_error(
            Some((context, self.last_mark())),
            format!("{expected} {id}"),
            at,
        ))
    }

    fn last_mark(&self) -> Mark {
        *self.marks.last().expect("a collection is open")
    }
}

fn empty_scalar(mark: Mark) -> Event {
    Event {
        kind: EventKind::Scalar {
            anchor: None,
            tag: None,
            plain_implicit: true,
            value: String::new(),
            style: ScalarStyle::Plain,
        },
        start: mark,
        end: mark,
    }
}

fn is_directive(k: &TokenKind) -> bool {
    matches!(
        k,
        TokenKind::YamlDirective(..) | TokenKind::TagDirective(..) | TokenKind::OtherDirective
    )
}
fn is_document_start(k: &TokenKind) -> bool {
    matches!(k, TokenKind::DocumentStart)
}
fn is_document_end(k: &TokenKind) -> bool {
    matches!(k, TokenKind::DocumentEnd)
}
fn is_stream_end(k: &TokenKind) -> bool {
    matches!(k, TokenKind::StreamEnd)
}
fn is_block_entry(k: &TokenKind) -> bool {
    matches!(k, TokenKind::BlockEntry)
}
fn is_block_end(k: &TokenKind) -> bool {
    matches!(k, TokenKind::BlockEnd)
}
fn is_key(k: &TokenKind) -> bool {
    matches!(k, TokenKind::Key)
}
fn is_value(k: &TokenKind) -> bool {
    matches!(k, TokenKind::Value)
}
fn is_flow_entry(k: &TokenKind) -> bool {
    matches!(k, TokenKind::FlowEntry)
}
fn is_flow_sequence_end(k: &TokenKind) -> bool {
    matches!(k, TokenKind::FlowSequenceEnd)
}
fn is_flow_mapping_end(k: &TokenKind) -> bool {
    matches!(k, TokenKind::FlowMappingEnd)
}
