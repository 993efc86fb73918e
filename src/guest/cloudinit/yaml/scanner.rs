//! PyYAML's `scanner.py`: text to tokens. Method names follow PyYAML's so
//! that each step can be checked against the original.

use std::collections::{BTreeMap, VecDeque};

use super::reader::Reader;
use super::{Mark, YamlError, py_repr};

/// `'\0 \t\r\n\x85\u2028\u2029'`: end of text, blank or line break.
fn is_blank_or_end(c: char) -> bool {
    matches!(
        c,
        '\0' | ' ' | '\t' | '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// `'\0 \r\n\x85\u2028\u2029'`: as above, but a tab is not a separator.
fn is_space_or_end(c: char) -> bool {
    matches!(
        c,
        '\0' | ' ' | '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// `'\0\r\n\x85\u2028\u2029'`.
fn is_break_or_end(c: char) -> bool {
    matches!(c, '\0' | '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// `'\r\n\x85\u2028\u2029'`.
fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuoteStyle {
    Plain,
    Single,
    Double,
    Literal,
    Folded,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    StreamStart,
    StreamEnd,
    /// `%YAML major.minor`
    YamlDirective(u64, u64),
    /// `%TAG handle prefix`
    TagDirective(String, String),
    /// Any other directive: PyYAML skips it.
    OtherDirective,
    DocumentStart,
    DocumentEnd,
    BlockSequenceStart,
    BlockMappingStart,
    BlockEnd,
    FlowSequenceStart,
    FlowMappingStart,
    FlowSequenceEnd,
    FlowMappingEnd,
    Key,
    Value,
    BlockEntry,
    FlowEntry,
    Alias(String),
    Anchor(String),
    /// Handle (None for a verbatim `!<...>` or a lone `!`) and suffix.
    Tag(Option<String>, String),
    Scalar {
        value: String,
        plain: bool,
        style: QuoteStyle,
    },
}

impl TokenKind {
    /// PyYAML's `Token.id`, used in its messages.
    pub fn id(&self) -> &'static str {
        match self {
            TokenKind::StreamStart => "<stream start>",
            TokenKind::StreamEnd => "<stream end>",
            TokenKind::YamlDirective(..)
            | TokenKind::TagDirective(..)
            | TokenKind::OtherDirective => "<directive>",
            TokenKind::DocumentStart => "<document start>",
            TokenKind::DocumentEnd => "<document end>",
            TokenKind::BlockSequenceStart => "<block sequence start>",
            TokenKind::BlockMappingStart => "<block mapping start>",
            TokenKind::BlockEnd => "<block end>",
            TokenKind::FlowSequenceStart => "'['",
            TokenKind::FlowMappingStart => "'{'",
            TokenKind::FlowSequenceEnd => "']'",
            TokenKind::FlowMappingEnd => "'}'",
            TokenKind::Key => "'?'",
            TokenKind::Value => "':'",
            TokenKind::BlockEntry => "'-'",
            TokenKind::FlowEntry => "','",
            TokenKind::Alias(_) => "<alias>",
            TokenKind::Anchor(_) => "<anchor>",
            TokenKind::Tag(..) => "<tag>",
            TokenKind::Scalar { .. } => "<scalar>",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub kind: TokenKind,
    pub start: Mark,
    pub end: Mark,
}

struct SimpleKey {
    token_number: usize,
    required: bool,
    index: usize,
    line: usize,
    column: usize,
    mark: Mark,
}

type Result<T> = std::result::Result<T, YamlError>;

fn scanner_error(
    context: &str,
    context_mark: Option<Mark>,
    problem: String,
    mark: Mark,
) -> YamlError {
    YamlError::marked(Some((context, context_mark)), problem, mark)
}

pub struct Scanner {
    r: Reader,
    done: bool,
    flow_level: usize,
    tokens: VecDeque<Token>,
    tokens_taken: usize,
    indent: isize,
    indents: Vec<isize>,
    allow_simple_key: bool,
    possible_simple_keys: BTreeMap<usize, SimpleKey>,
    /// A `\uD800`-style escape: Python holds a lone surrogate, Rust cannot.
    unsupported: Option<YamlError>,
}

impl Scanner {
    pub fn new(text: &str) -> Result<Scanner> {
        let r = Reader::new(text)?;
        let mut s = Scanner {
            r,
            done: false,
            flow_level: 0,
            tokens: VecDeque::new(),
            tokens_taken: 0,
            indent: -1,
            indents: Vec::new(),
            allow_simple_key: true,
            possible_simple_keys: BTreeMap::new(),
            unsupported: None,
        };
        let mark = s.r.mark();
        s.tokens.push_back(Token {
            kind: TokenKind::StreamStart,
            start: mark,
            end: mark,
        });
        Ok(s)
    }

    pub fn take_unsupported(&mut self) -> Option<YamlError> {
        self.unsupported.take()
    }

    fn fill(&mut self) -> Result<()> {
        while self.need_more_tokens()? {
            self.fetch_more_tokens()?;
        }
        Ok(())
    }

    pub fn peek_token(&mut self) -> Result<Option<&Token>> {
        self.fill()?;
        Ok(self.tokens.front())
    }

    pub fn get_token(&mut self) -> Result<Option<Token>> {
        self.fill()?;
        let token = self.tokens.pop_front();
        if token.is_some() {
            self.tokens_taken += 1;
        }
        Ok(token)
    }

    fn need_more_tokens(&mut self) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        if self.tokens.is_empty() {
            return Ok(true);
        }
        self.stale_possible_simple_keys()?;
        Ok(self.next_possible_simple_key() == Some(self.tokens_taken))
    }

    fn fetch_more_tokens(&mut self) -> Result<()> {
        self.scan_to_next_token();
        self.stale_possible_simple_keys()?;
        self.unwind_indent(self.r.column() as isize);
        let ch = self.r.peek(0);
        match ch {
            '\0' => return self.fetch_stream_end(),
            '%' if self.check_directive() => return self.fetch_directive(),
            '-' if self.check_document_start() => {
                return self.fetch_document_indicator(TokenKind::DocumentStart);
            }
            '.' if self.check_document_end() => {
                return self.fetch_document_indicator(TokenKind::DocumentEnd);
            }
            '[' => return self.fetch_flow_collection_start(TokenKind::FlowSequenceStart),
            '{' => return self.fetch_flow_collection_start(TokenKind::FlowMappingStart),
            ']' => return self.fetch_flow_collection_end(TokenKind::FlowSequenceEnd),
            '}' => return self.fetch_flow_collection_end(TokenKind::FlowMappingEnd),
            ',' => return self.fetch_flow_entry(),
            '-' if self.check_block_entry() => return self.fetch_block_entry(),
            '?' if self.check_key() => return self.fetch_key(),
            ':' if self.check_value() => return self.fetch_value(),
            '*' => return self.fetch_anchor(true),
            '&' => return self.fetch_anchor(false),
            '!' => return self.fetch_tag(),
            '|' if self.flow_level == 0 => return self.fetch_block_scalar(false),
            '>' if self.flow_level == 0 => return self.fetch_block_scalar(true),
            '\'' => return self.fetch_flow_scalar(false),
            '"' => return self.fetch_flow_scalar(true),
            _ => {}
        }
        if self.check_plain() {
            return self.fetch_plain();
        }
        Err(scanner_error(
            "while scanning for the next token",
            None,
            format!(
                "found character {} that cannot start any token",
                py_repr(ch)
            ),
            self.r.mark(),
        ))
    }

    fn next_possible_simple_key(&self) -> Option<usize> {
        self.possible_simple_keys
            .values()
            .map(|k| k.token_number)
            .min()
    }

    fn stale_possible_simple_keys(&mut self) -> Result<()> {
        let levels: Vec<usize> = self.possible_simple_keys.keys().copied().collect();
        for level in levels {
            let key = &self.possible_simple_keys[&level];
            if key.line != self.r.line() || self.r.index() - key.index > 1024 {
                if key.required {
                    return Err(scanner_error(
                        "while scanning a simple key",
                        Some(key.mark),
                        "could not find expected ':'".to_string(),
                        self.r.mark(),
                    ));
                }
                self.possible_simple_keys.remove(&level);
            }
        }
        Ok(())
    }

    fn save_possible_simple_key(&mut self) -> Result<()> {
        let required = self.flow_level == 0 && self.indent == self.r.column() as isize;
        if self.allow_simple_key {
            self.remove_possible_simple_key()?;
            let token_number = self.tokens_taken + self.tokens.len();
            let key = SimpleKey {
                token_number,
                required,
                index: self.r.index(),
                line: self.r.line(),
                column: self.r.column(),
                mark: self.r.mark(),
            };
            self.possible_simple_keys.insert(self.flow_level, key);
        }
        Ok(())
    }

    fn remove_possible_simple_key(&mut self) -> Result<()> {
        if let Some(key) = self.possible_simple_keys.remove(&self.flow_level)
            && key.required
        {
            return Err(scanner_error(
                "while scanning a simple key",
                Some(key.mark),
                "could not find expected ':'".to_string(),
                self.r.mark(),
            ));
        }
        Ok(())
    }

    fn unwind_indent(&mut self, column: isize) {
        if self.flow_level > 0 {
            return;
        }
        while self.indent > column {
            let mark = self.r.mark();
            self.indent = self.indents.pop().unwrap_or(-1);
            self.tokens.push_back(Token {
                kind: TokenKind::BlockEnd,
                start: mark,
                end: mark,
            });
        }
    }

    fn add_indent(&mut self, column: isize) -> bool {
        if self.indent < column {
            self.indents.push(self.indent);
            self.indent = column;
            true
        } else {
            false
        }
    }

    fn push(&mut self, kind: TokenKind, start: Mark, end: Mark) {
        self.tokens.push_back(Token { kind, start, end });
    }

    /// Moves one character on and returns the marks around it.
    fn forward_token(&mut self, kind: TokenKind) {
        let start = self.r.mark();
        self.r.forward(1);
        let end = self.r.mark();
        self.push(kind, start, end);
    }

    fn fetch_stream_end(&mut self) -> Result<()> {
        self.unwind_indent(-1);
        self.remove_possible_simple_key()?;
        self.allow_simple_key = false;
        self.possible_simple_keys.clear();
        let mark = self.r.mark();
        self.push(TokenKind::StreamEnd, mark, mark);
        self.done = true;
        Ok(())
    }

    fn fetch_directive(&mut self) -> Result<()> {
        self.unwind_indent(-1);
        self.remove_possible_simple_key()?;
        self.allow_simple_key = false;
        let token = self.scan_directive()?;
        self.tokens.push_back(token);
        Ok(())
    }

    fn fetch_document_indicator(&mut self, kind: TokenKind) -> Result<()> {
        self.unwind_indent(-1);
        self.remove_possible_simple_key()?;
        self.allow_simple_key = false;
        let start = self.r.mark();
        self.r.forward(3);
        let end = self.r.mark();
        self.push(kind, start, end);
        Ok(())
    }

    fn fetch_flow_collection_start(&mut self, kind: TokenKind) -> Result<()> {
        self.save_possible_simple_key()?;
        self.flow_level += 1;
        self.allow_simple_key = true;
        self.forward_token(kind);
        Ok(())
    }

    fn fetch_flow_collection_end(&mut self, kind: TokenKind) -> Result<()> {
        self.remove_possible_simple_key()?;
        // PyYAML lets the level go below zero on a stray `]`; the parser then
        // refuses the token. Saturating keeps the same "not in flow" meaning.
        self.flow_level = self.flow_level.saturating_sub(1);
        self.allow_simple_key = false;
        self.forward_token(kind);
        Ok(())
    }

    fn fetch_flow_entry(&mut self) -> Result<()> {
        self.allow_simple_key = true;
        self.remove_possible_simple_key()?;
        self.forward_token(TokenKind::FlowEntry);
        Ok(())
    }

    fn fetch_block_entry(&mut self) -> Result<()> {
        self.open_block_collection(
            "sequence entries are not allowed here",
            TokenKind::BlockSequenceStart,
        )?;
        self.allow_simple_key = true;
        self.remove_possible_simple_key()?;
        self.forward_token(TokenKind::BlockEntry);
        Ok(())
    }

    fn fetch_key(&mut self) -> Result<()> {
        self.open_block_collection(
            "mapping keys are not allowed here",
            TokenKind::BlockMappingStart,
        )?;
        self.allow_simple_key = self.flow_level == 0;
        self.remove_possible_simple_key()?;
        self.forward_token(TokenKind::Key);
        Ok(())
    }

    /// Outside flow context, a `-` or `?` may only come where a simple key
    /// could, and opens a block collection when it is further indented.
    fn open_block_collection(&mut self, refusal: &str, start: TokenKind) -> Result<()> {
        if self.flow_level == 0 {
            if !self.allow_simple_key {
                return Err(YamlError::marked(None, refusal, self.r.mark()));
            }
            if self.add_indent(self.r.column() as isize) {
                let mark = self.r.mark();
                self.push(start, mark, mark);
            }
        }
        Ok(())
    }

    fn fetch_value(&mut self) -> Result<()> {
        if let Some(key) = self.possible_simple_keys.remove(&self.flow_level) {
            let at = key.token_number - self.tokens_taken;
            self.tokens.insert(
                at,
                Token {
                    kind: TokenKind::Key,
                    start: key.mark,
                    end: key.mark,
                },
            );
            if self.flow_level == 0 && self.add_indent(key.column as isize) {
                self.tokens.insert(
                    at,
                    Token {
                        kind: TokenKind::BlockMappingStart,
                        start: key.mark,
                        end: key.mark,
                    },
                );
            }
            self.allow_simple_key = false;
        } else {
            if self.flow_level == 0 {
                if !self.allow_simple_key {
                    return Err(YamlError::marked(
                        None,
                        "mapping values are not allowed here",
                        self.r.mark(),
                    ));
                }
                if self.add_indent(self.r.column() as isize) {
                    let mark = self.r.mark();
                    self.push(TokenKind::BlockMappingStart, mark, mark);
                }
            }
            self.allow_simple_key = self.flow_level == 0;
            self.remove_possible_simple_key()?;
        }
        self.forward_token(TokenKind::Value);
        Ok(())
    }

    fn fetch_anchor(&mut self, alias: bool) -> Result<()> {
        self.save_possible_simple_key()?;
        self.allow_simple_key = false;
        let token = self.scan_anchor(alias)?;
        self.tokens.push_back(token);
        Ok(())
    }

    fn fetch_tag(&mut self) -> Result<()> {
        self.save_possible_simple_key()?;
        self.allow_simple_key = false;
        let token = self.scan_tag()?;
        self.tokens.push_back(token);
        Ok(())
    }

    fn fetch_block_scalar(&mut self, folded: bool) -> Result<()> {
        self.allow_simple_key = true;
        self.remove_possible_simple_key()?;
        let token = self.scan_block_scalar(folded)?;
        self.tokens.push_back(token);
        Ok(())
    }

    fn fetch_flow_scalar(&mut self, double: bool) -> Result<()> {
        self.save_possible_simple_key()?;
        self.allow_simple_key = false;
        let token = self.scan_flow_scalar(double)?;
        self.tokens.push_back(token);
        Ok(())
    }

    fn fetch_plain(&mut self) -> Result<()> {
        self.save_possible_simple_key()?;
        self.allow_simple_key = false;
        let token = self.scan_plain()?;
        self.tokens.push_back(token);
        Ok(())
    }

    fn check_directive(&self) -> bool {
        self.r.column() == 0
    }

    fn check_document_start(&self) -> bool {
        self.r.column() == 0 && self.r.prefix_is("---") && is_blank_or_end(self.r.peek(3))
    }

    fn check_document_end(&self) -> bool {
        self.r.column() == 0 && self.r.prefix_is("...") && is_blank_or_end(self.r.peek(3))
    }

    fn check_block_entry(&self) -> bool {
        is_blank_or_end(self.r.peek(1))
    }

    fn check_key(&self) -> bool {
        self.flow_level > 0 || is_blank_or_end(self.r.peek(1))
    }

    fn check_value(&self) -> bool {
        self.flow_level > 0 || is_blank_or_end(self.r.peek(1))
    }

    fn check_plain(&self) -> bool {
        let ch = self.r.peek(0);
        !(is_blank_or_end(ch) || "-?:,[]{}#&*!|>'\"%@`".contains(ch))
            || (!is_blank_or_end(self.r.peek(1))
                && (ch == '-' || (self.flow_level == 0 && (ch == '?' || ch == ':'))))
    }

    fn scan_to_next_token(&mut self) {
        if self.r.index() == 0 && self.r.peek(0) == '\u{FEFF}' {
            self.r.forward(1);
        }
        loop {
            self.skip_spaces();
            self.skip_comment();
            if self.scan_line_break().is_empty() {
                break;
            }
            if self.flow_level == 0 {
                self.allow_simple_key = true;
            }
        }
    }

    fn scan_directive(&mut self) -> Result<Token> {
        let start = self.r.mark();
        self.r.forward(1);
        let name = self.scan_directive_name(start)?;
        let kind;
        let end;
        if name == "YAML" {
            let (major, minor) = self.scan_yaml_directive_value(start)?;
            kind = TokenKind::YamlDirective(major, minor);
            end = self.r.mark();
        } else if name == "TAG" {
            let (handle, prefix) = self.scan_tag_directive_value(start)?;
            kind = TokenKind::TagDirective(handle, prefix);
            end = self.r.mark();
        } else {
            end = self.r.mark();
            while !is_break_or_end(self.r.peek(0)) {
                self.r.forward(1);
            }
            kind = TokenKind::OtherDirective;
        }
        self.scan_ignored_line("while scanning a directive", start)?;
        Ok(Token { kind, start, end })
    }

    fn directive_error(&self, start: Mark, problem: String) -> YamlError {
        scanner_error(
            "while scanning a directive",
            Some(start),
            problem,
            self.r.mark(),
        )
    }

    fn scan_directive_name(&mut self, start: Mark) -> Result<String> {
        let mut length = 0;
        while is_word_char(self.r.peek(length)) {
            length += 1;
        }
        if length == 0 {
            return Err(self.directive_error(
                start,
                format!(
                    "expected alphabetic or numeric character, but found {}",
                    py_repr(self.r.peek(length))
                ),
            ));
        }
        let value = self.r.prefix(length);
        self.r.forward(length);
        let ch = self.r.peek(0);
        if !is_space_or_end(ch) {
            return Err(self.directive_error(
                start,
                format!(
                    "expected alphabetic or numeric character, but found {}",
                    py_repr(ch)
                ),
            ));
        }
        Ok(value)
    }

    fn scan_yaml_directive_value(&mut self, start: Mark) -> Result<(u64, u64)> {
        self.skip_spaces();
        let major = self.scan_yaml_directive_number(start)?;
        if self.r.peek(0) != '.' {
            return Err(self.directive_error(
                start,
                format!(
                    "expected a digit or '.', but found {}",
                    py_repr(self.r.peek(0))
                ),
            ));
        }
        self.r.forward(1);
        let minor = self.scan_yaml_directive_number(start)?;
        if !is_space_or_end(self.r.peek(0)) {
            return Err(self.directive_error(
                start,
                format!(
                    "expected a digit or ' ', but found {}",
                    py_repr(self.r.peek(0))
                ),
            ));
        }
        Ok((major, minor))
    }

    fn scan_yaml_directive_number(&mut self, start: Mark) -> Result<u64> {
        let ch = self.r.peek(0);
        if !ch.is_ascii_digit() {
            return Err(self.directive_error(
                start,
                format!("expected a digit, but found {}", py_repr(ch)),
            ));
        }
        let mut length = 0;
        while self.r.peek(length).is_ascii_digit() {
            length += 1;
        }
        // Python's int() has no limit; only "is it 1" matters for the major
        // version, so saturate instead of failing on a long number.
        let digits = self.r.prefix(length);
        let value = digits.trim_start_matches('0').parse::<u64>().unwrap_or(
            if digits.trim_start_matches('0').is_empty() {
                0
            } else {
                u64::MAX
            },
        );
        self.r.forward(length);
        Ok(value)
    }

    fn scan_tag_directive_value(&mut self, start: Mark) -> Result<(String, String)> {
        self.skip_spaces();
        let handle = self.scan_tag_handle("directive", start)?;
        if self.r.peek(0) != ' ' {
            return Err(self.directive_error(
                start,
                format!("expected ' ', but found {}", py_repr(self.r.peek(0))),
            ));
        }
        self.skip_spaces();
        let prefix = self.scan_tag_uri("directive", start)?;
        if !is_space_or_end(self.r.peek(0)) {
            return Err(self.directive_error(
                start,
                format!("expected ' ', but found {}", py_repr(self.r.peek(0))),
            ));
        }
        Ok((handle, prefix))
    }

    /// The rest of a directive or block scalar header line: spaces, a
    /// comment, then a line break or the end.
    fn scan_ignored_line(&mut self, context: &str, start: Mark) -> Result<()> {
        self.skip_spaces();
        self.skip_comment();
        let ch = self.r.peek(0);
        if !is_break_or_end(ch) {
            return Err(scanner_error(
                context,
                Some(start),
                format!(
                    "expected a comment or a line break, but found {}",
                    py_repr(ch)
                ),
                self.r.mark(),
            ));
        }
        self.scan_line_break();
        Ok(())
    }

    fn skip_spaces(&mut self) {
        while self.r.peek(0) == ' ' {
            self.r.forward(1);
        }
    }

    fn skip_comment(&mut self) {
        if self.r.peek(0) == '#' {
            while !is_break_or_end(self.r.peek(0)) {
                self.r.forward(1);
            }
        }
    }

    fn scan_anchor(&mut self, alias: bool) -> Result<Token> {
        let start = self.r.mark();
        let context = if alias {
            "while scanning an alias"
        } else {
            "while scanning an anchor"
        };
        self.r.forward(1);
        let mut length = 0;
        while is_word_char(self.r.peek(length)) {
            length += 1;
        }
        if length == 0 {
            return Err(scanner_error(
                context,
                Some(start),
                format!(
                    "expected alphabetic or numeric character, but found {}",
                    py_repr(self.r.peek(0))
                ),
                self.r.mark(),
            ));
        }
        let value = self.r.prefix(length);
        self.r.forward(length);
        let ch = self.r.peek(0);
        if !(is_blank_or_end(ch) || "?:,]}%@`".contains(ch)) {
            return Err(scanner_error(
                context,
                Some(start),
                format!(
                    "expected alphabetic or numeric character, but found {}",
                    py_repr(ch)
                ),
                self.r.mark(),
            ));
        }
        let end = self.r.mark();
        let kind = if alias {
            TokenKind::Alias(value)
        } else {
            TokenKind::Anchor(value)
        };
        Ok(Token { kind, start, end })
    }

    fn scan_tag(&mut self) -> Result<Token> {
        let start = self.r.mark();
        let ch = self.r.peek(1);
        let handle;
        let suffix;
        if ch == '<' {
            handle = None;
            self.r.forward(2);
            suffix = self.scan_tag_uri("tag", start)?;
            if self.r.peek(0) != '>' {
                return Err(scanner_error(
                    "while parsing a tag",
                    Some(start),
                    format!("expected '>', but found {}", py_repr(self.r.peek(0))),
                    self.r.mark(),
                ));
            }
            self.r.forward(1);
        } else if is_blank_or_end(ch) {
            handle = None;
            suffix = "!".to_string();
            self.r.forward(1);
        } else {
            let mut length = 1;
            let mut use_handle = false;
            let mut c = ch;
            while !is_space_or_end(c) {
                if c == '!' {
                    use_handle = true;
                    break;
                }
                length += 1;
                c = self.r.peek(length);
            }
            if use_handle {
                handle = Some(self.scan_tag_handle("tag", start)?);
            } else {
                handle = Some("!".to_string());
                self.r.forward(1);
            }
            suffix = self.scan_tag_uri("tag", start)?;
        }
        let ch = self.r.peek(0);
        if !is_space_or_end(ch) {
            return Err(scanner_error(
                "while scanning a tag",
                Some(start),
                format!("expected ' ', but found {}", py_repr(ch)),
                self.r.mark(),
            ));
        }
        let end = self.r.mark();
        Ok(Token {
            kind: TokenKind::Tag(handle, suffix),
            start,
            end,
        })
    }

    fn scan_block_scalar(&mut self, folded: bool) -> Result<Token> {
        let mut chunks = String::new();
        let start = self.r.mark();
        self.r.forward(1);
        let (chomping, increment) = self.scan_block_scalar_indicators(start)?;
        self.scan_ignored_line("while scanning a block scalar", start)?;
        let min_indent = (self.indent + 1).max(1) as usize;
        let indent;
        let mut breaks;
        let mut end;
        match increment {
            None => {
                let (b, max_indent, e) = self.scan_block_scalar_indentation();
                breaks = b;
                end = e;
                indent = min_indent.max(max_indent);
            }
            Some(increment) => {
                indent = min_indent + increment - 1;
                let (b, e) = self.scan_block_scalar_breaks(indent);
                breaks = b;
                end = e;
            }
        }
        let mut line_break = String::new();
        while self.r.column() == indent && self.r.peek(0) != '\0' {
            chunks.push_str(&breaks.concat());
            let leading_non_space = !matches!(self.r.peek(0), ' ' | '\t');
            let mut length = 0;
            while !is_break_or_end(self.r.peek(length)) {
                length += 1;
            }
            chunks.push_str(&self.r.prefix(length));
            self.r.forward(length);
            line_break = self.scan_line_break();
            let (b, e) = self.scan_block_scalar_breaks(indent);
            breaks = b;
            end = e;
            if self.r.column() == indent && self.r.peek(0) != '\0' {
                if folded
                    && line_break == "\n"
                    && leading_non_space
                    && !matches!(self.r.peek(0), ' ' | '\t')
                {
                    if breaks.is_empty() {
                        chunks.push(' ');
                    }
                } else {
                    chunks.push_str(&line_break);
                }
            } else {
                break;
            }
        }
        if chomping != Some(false) {
            chunks.push_str(&line_break);
        }
        if chomping == Some(true) {
            chunks.push_str(&breaks.concat());
        }
        Ok(Token {
            kind: TokenKind::Scalar {
                value: chunks,
                plain: false,
                style: if folded {
                    QuoteStyle::Folded
                } else {
                    QuoteStyle::Literal
                },
            },
            start,
            end,
        })
    }

    fn block_scalar_error(&self, start: Mark, problem: String) -> YamlError {
        scanner_error(
            "while scanning a block scalar",
            Some(start),
            problem,
            self.r.mark(),
        )
    }

    fn scan_block_scalar_indicators(
        &mut self,
        start: Mark,
    ) -> Result<(Option<bool>, Option<usize>)> {
        let mut chomping = None;
        let mut increment = None;
        let zero = "expected indentation indicator in the range 1-9, but found 0".to_string();
        let ch = self.r.peek(0);
        if ch == '+' || ch == '-' {
            chomping = Some(ch == '+');
            self.r.forward(1);
            let ch = self.r.peek(0);
            if let Some(d) = ch.to_digit(10) {
                if d == 0 {
                    return Err(self.block_scalar_error(start, zero));
                }
                increment = Some(d as usize);
                self.r.forward(1);
            }
        } else if let Some(d) = ch.to_digit(10) {
            if d == 0 {
                return Err(self.block_scalar_error(start, zero));
            }
            increment = Some(d as usize);
            self.r.forward(1);
            let ch = self.r.peek(0);
            if ch == '+' || ch == '-' {
                chomping = Some(ch == '+');
                self.r.forward(1);
            }
        }
        let ch = self.r.peek(0);
        if !is_space_or_end(ch) {
            return Err(self.block_scalar_error(
                start,
                format!(
                    "expected chomping or indentation indicators, but found {}",
                    py_repr(ch)
                ),
            ));
        }
        Ok((chomping, increment))
    }

    fn scan_block_scalar_indentation(&mut self) -> (Vec<String>, usize, Mark) {
        let mut chunks = Vec::new();
        let mut max_indent = 0;
        let mut end = self.r.mark();
        while matches!(self.r.peek(0), ' ') || is_break(self.r.peek(0)) {
            if self.r.peek(0) != ' ' {
                chunks.push(self.scan_line_break());
                end = self.r.mark();
            } else {
                self.r.forward(1);
                max_indent = max_indent.max(self.r.column());
            }
        }
        (chunks, max_indent, end)
    }

    fn scan_block_scalar_breaks(&mut self, indent: usize) -> (Vec<String>, Mark) {
        let mut chunks = Vec::new();
        let mut end = self.r.mark();
        while self.r.column() < indent && self.r.peek(0) == ' ' {
            self.r.forward(1);
        }
        while is_break(self.r.peek(0)) {
            chunks.push(self.scan_line_break());
            end = self.r.mark();
            while self.r.column() < indent && self.r.peek(0) == ' ' {
                self.r.forward(1);
            }
        }
        (chunks, end)
    }

    fn scan_flow_scalar(&mut self, double: bool) -> Result<Token> {
        let mut chunks = String::new();
        let start = self.r.mark();
        let quote = self.r.peek(0);
        self.r.forward(1);
        self.scan_flow_scalar_non_spaces(double, start, &mut chunks)?;
        while self.r.peek(0) != quote {
            self.scan_flow_scalar_spaces(double, start, &mut chunks)?;
            self.scan_flow_scalar_non_spaces(double, start, &mut chunks)?;
        }
        self.r.forward(1);
        let end = self.r.mark();
        Ok(Token {
            kind: TokenKind::Scalar {
                value: chunks,
                plain: false,
                style: if double {
                    QuoteStyle::Double
                } else {
                    QuoteStyle::Single
                },
            },
            start,
            end,
        })
    }

    fn scan_flow_scalar_non_spaces(
        &mut self,
        double: bool,
        start: Mark,
        chunks: &mut String,
    ) -> Result<()> {
        loop {
            let mut length = 0;
            while !(is_blank_or_end(self.r.peek(length))
                || matches!(self.r.peek(length), '\'' | '"' | '\\'))
            {
                length += 1;
            }
            if length > 0 {
                chunks.push_str(&self.r.prefix(length));
                self.r.forward(length);
            }
            let ch = self.r.peek(0);
            if !double && ch == '\'' && self.r.peek(1) == '\'' {
                chunks.push('\'');
                self.r.forward(2);
            } else if (double && ch == '\'') || (!double && (ch == '"' || ch == '\\')) {
                chunks.push(ch);
                self.r.forward(1);
            } else if double && ch == '\\' {
                self.r.forward(1);
                let ch = self.r.peek(0);
                if let Some(replacement) = escape_replacement(ch) {
                    chunks.push(replacement);
                    self.r.forward(1);
                } else if let Some(length) = escape_code_length(ch) {
                    self.r.forward(1);
                    for k in 0..length {
                        if !self.r.peek(k).is_ascii_hexdigit() {
                            return Err(scanner_error(
                                "while scanning a double-quoted scalar",
                                Some(start),
                                format!(
                                    "expected escape sequence of {length} hexadecimal numbers, but found {}",
                                    py_repr(self.r.peek(k))
                                ),
                                self.r.mark(),
                            ));
                        }
                    }
                    let code = u32::from_str_radix(&self.r.prefix(length), 16).unwrap_or(u32::MAX);
                    let c = match char::from_u32(code) {
                        Some(c) => c,
                        None if (0xD800..0xE000).contains(&code) => {
                            // Python holds a lone surrogate in a str; we
                            // cannot, so the file is one we do not support.
                            if self.unsupported.is_none() {
                                let mut e = scanner_error(
                                    "while scanning a double-quoted scalar",
                                    Some(start),
                                    format!(
                                        "the escape \\{ch}{} is a lone surrogate, which prepare-image cannot hold",
                                        self.r.prefix(length)
                                    ),
                                    self.r.mark(),
                                );
                                e.kind = super::ErrorKind::Unsupported;
                                self.unsupported = Some(e);
                            }
                            '\u{FFFD}'
                        }
                        None => {
                            // chr() raises ValueError past U+10FFFF, which
                            // cloud-init catches.
                            return Err(scanner_error(
                                "while scanning a double-quoted scalar",
                                Some(start),
                                "chr() arg not in range(0x110000)".to_string(),
                                self.r.mark(),
                            ));
                        }
                    };
                    chunks.push(c);
                    self.r.forward(length);
                } else if is_break(ch) {
                    self.scan_line_break();
                    self.scan_flow_scalar_breaks(start, chunks)?;
                } else {
                    return Err(scanner_error(
                        "while scanning a double-quoted scalar",
                        Some(start),
                        format!("found unknown escape character {}", py_repr(ch)),
                        self.r.mark(),
                    ));
                }
            } else {
                return Ok(());
            }
        }
    }

    fn scan_flow_scalar_spaces(
        &mut self,
        _double: bool,
        start: Mark,
        chunks: &mut String,
    ) -> Result<()> {
        let mut length = 0;
        while matches!(self.r.peek(length), ' ' | '\t') {
            length += 1;
        }
        let whitespaces = self.r.prefix(length);
        self.r.forward(length);
        let ch = self.r.peek(0);
        if ch == '\0' {
            return Err(scanner_error(
                "while scanning a quoted scalar",
                Some(start),
                "found unexpected end of stream".to_string(),
                self.r.mark(),
            ));
        } else if is_break(ch) {
            let line_break = self.scan_line_break();
            let mut breaks = String::new();
            self.scan_flow_scalar_breaks(start, &mut breaks)?;
            if line_break != "\n" {
                chunks.push_str(&line_break);
            } else if breaks.is_empty() {
                chunks.push(' ');
            }
            chunks.push_str(&breaks);
        } else {
            chunks.push_str(&whitespaces);
        }
        Ok(())
    }

    fn scan_flow_scalar_breaks(&mut self, start: Mark, chunks: &mut String) -> Result<()> {
        loop {
            if (self.r.prefix_is("---") || self.r.prefix_is("..."))
                && is_blank_or_end(self.r.peek(3))
            {
                return Err(scanner_error(
                    "while scanning a quoted scalar",
                    Some(start),
                    "found unexpected document separator".to_string(),
                    self.r.mark(),
                ));
            }
            while matches!(self.r.peek(0), ' ' | '\t') {
                self.r.forward(1);
            }
            if is_break(self.r.peek(0)) {
                chunks.push_str(&self.scan_line_break());
            } else {
                return Ok(());
            }
        }
    }

    fn scan_plain(&mut self) -> Result<Token> {
        let mut chunks = String::new();
        let start = self.r.mark();
        let mut end = start;
        let indent = self.indent + 1;
        let mut spaces: Option<String> = Some(String::new());
        loop {
            let mut length = 0;
            if self.r.peek(0) == '#' {
                break;
            }
            loop {
                let ch = self.r.peek(length);
                if is_blank_or_end(ch)
                    || (ch == ':'
                        && (is_blank_or_end(self.r.peek(length + 1))
                            || (self.flow_level > 0 && ",[]{}".contains(self.r.peek(length + 1)))))
                    || (self.flow_level > 0 && ",?[]{}".contains(ch))
                {
                    break;
                }
                length += 1;
            }
            if length == 0 {
                break;
            }
            self.allow_simple_key = false;
            chunks.push_str(spaces.as_deref().unwrap_or(""));
            chunks.push_str(&self.r.prefix(length));
            self.r.forward(length);
            end = self.r.mark();
            spaces = self.scan_plain_spaces();
            match &spaces {
                None => break,
                Some(s) if s.is_empty() => break,
                Some(_) => {}
            }
            if self.r.peek(0) == '#'
                || (self.flow_level == 0 && (self.r.column() as isize) < indent)
            {
                break;
            }
        }
        Ok(Token {
            kind: TokenKind::Scalar {
                value: chunks,
                plain: true,
                style: QuoteStyle::Plain,
            },
            start,
            end,
        })
    }

    /// `None` where PyYAML returns None (a document marker follows), else the
    /// folded whitespace (empty when there was none).
    fn scan_plain_spaces(&mut self) -> Option<String> {
        let mut chunks = String::new();
        let mut length = 0;
        while self.r.peek(length) == ' ' {
            length += 1;
        }
        let whitespaces = self.r.prefix(length);
        self.r.forward(length);
        let ch = self.r.peek(0);
        let document_marker =
            |r: &Reader| (r.prefix_is("---") || r.prefix_is("...")) && is_blank_or_end(r.peek(3));
        if is_break(ch) {
            let line_break = self.scan_line_break();
            self.allow_simple_key = true;
            if document_marker(&self.r) {
                return None;
            }
            let mut breaks = String::new();
            while self.r.peek(0) == ' ' || is_break(self.r.peek(0)) {
                if self.r.peek(0) == ' ' {
                    self.r.forward(1);
                } else {
                    breaks.push_str(&self.scan_line_break());
                    if document_marker(&self.r) {
                        return None;
                    }
                }
            }
            if line_break != "\n" {
                chunks.push_str(&line_break);
            } else if breaks.is_empty() {
                chunks.push(' ');
            }
            chunks.push_str(&breaks);
        } else if !whitespaces.is_empty() {
            chunks.push_str(&whitespaces);
        }
        Some(chunks)
    }

    fn scan_tag_handle(&mut self, name: &str, start: Mark) -> Result<String> {
        let context = format!("while scanning a {name}");
        let ch = self.r.peek(0);
        if ch != '!' {
            return Err(scanner_error(
                &context,
                Some(start),
                format!("expected '!', but found {}", py_repr(ch)),
                self.r.mark(),
            ));
        }
        let mut length = 1;
        let mut ch = self.r.peek(length);
        if ch != ' ' {
            while is_word_char(ch) {
                length += 1;
                ch = self.r.peek(length);
            }
            if ch != '!' {
                self.r.forward(length);
                return Err(scanner_error(
                    &context,
                    Some(start),
                    format!("expected '!', but found {}", py_repr(ch)),
                    self.r.mark(),
                ));
            }
            length += 1;
        }
        let value = self.r.prefix(length);
        self.r.forward(length);
        Ok(value)
    }

    fn scan_tag_uri(&mut self, name: &str, start: Mark) -> Result<String> {
        let mut chunks = String::new();
        let mut length = 0;
        let mut ch = self.r.peek(length);
        while ch.is_ascii_alphanumeric() || "-;/?:@&=+$,_.!~*'()[]%".contains(ch) {
            if ch == '%' {
                chunks.push_str(&self.r.prefix(length));
                self.r.forward(length);
                length = 0;
                chunks.push_str(&self.scan_uri_escapes(name, start)?);
            } else {
                length += 1;
            }
            ch = self.r.peek(length);
        }
        if length > 0 {
            chunks.push_str(&self.r.prefix(length));
            self.r.forward(length);
        }
        if chunks.is_empty() {
            return Err(scanner_error(
                &format!("while parsing a {name}"),
                Some(start),
                format!("expected URI, but found {}", py_repr(ch)),
                self.r.mark(),
            ));
        }
        Ok(chunks)
    }

    fn scan_uri_escapes(&mut self, name: &str, start: Mark) -> Result<String> {
        let mut codes = Vec::new();
        let mark = self.r.mark();
        while self.r.peek(0) == '%' {
            self.r.forward(1);
            for k in 0..2 {
                if !self.r.peek(k).is_ascii_hexdigit() {
                    return Err(scanner_error(
                        &format!("while scanning a {name}"),
                        Some(start),
                        format!(
                            "expected URI escape sequence of 2 hexadecimal numbers, but found {}",
                            py_repr(self.r.peek(k))
                        ),
                        self.r.mark(),
                    ));
                }
            }
            codes.push(u8::from_str_radix(&self.r.prefix(2), 16).unwrap_or(0));
            self.r.forward(2);
        }
        String::from_utf8(codes).map_err(|_| {
            scanner_error(
                &format!("while scanning a {name}"),
                Some(start),
                "'utf-8' codec can't decode the escaped bytes".to_string(),
                mark,
            )
        })
    }

    fn scan_line_break(&mut self) -> String {
        let ch = self.r.peek(0);
        if matches!(ch, '\r' | '\n' | '\u{85}') {
            if self.r.prefix_is("\r\n") {
                self.r.forward(2);
            } else {
                self.r.forward(1);
            }
            "\n".to_string()
        } else if matches!(ch, '\u{2028}' | '\u{2029}') {
            self.r.forward(1);
            ch.to_string()
        } else {
            String::new()
        }
    }
}

fn escape_replacement(c: char) -> Option<char> {
    Some(match c {
        '0' => '\0',
        'a' => '\x07',
        'b' => '\x08',
        't' | '\t' => '\t',
        'n' => '\n',
        'v' => '\x0B',
        'f' => '\x0C',
        'r' => '\r',
        'e' => '\x1B',
        ' ' => ' ',
        '"' => '"',
        '\\' => '\\',
        '/' => '/',
        'N' => '\u{85}',
        '_' => '\u{A0}',
        'L' => '\u{2028}',
        'P' => '\u{2029}',
        _ => return None,
    })
}

fn escape_code_length(c: char) -> Option<usize> {
    match c {
        'x' => Some(2),
        'u' => Some(4),
        'U' => Some(8),
        _ => None,
    }
}
