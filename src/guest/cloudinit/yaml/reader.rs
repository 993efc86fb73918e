//! PyYAML's `reader.py` for a text already decoded: which characters a YAML
//! 1.1 stream may hold, and positions counted as PyYAML counts them.

use super::{Mark, YamlError};

/// `Reader.NON_PRINTABLE`: everything but these is refused before scanning
/// starts, wherever it sits (a comment included).
fn is_printable(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r' | '\u{20}'..='\u{7E}' | '\u{85}' | '\u{A0}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// The text as characters with a final `'\0'` (PyYAML's end marker), the byte
/// offset of each, and the moving position.
pub struct Reader {
    chars: Vec<char>,
    bytes: Vec<usize>,
    pointer: usize,
    line: usize,
    column: usize,
}

impl Reader {
    pub fn new(text: &str) -> Result<Reader, YamlError> {
        if let Some((position, c)) = text.chars().enumerate().find(|(_, c)| !is_printable(*c)) {
            // PyYAML names the character and its position in characters; we
            // add the line and column so that the user can find it.
            let (line, column) = line_and_column(text, position);
            return Err(YamlError::reader(
                format!(
                    "unacceptable character #x{:04x}: special characters are not allowed",
                    c as u32
                ),
                line,
                column,
            ));
        }
        let mut chars = Vec::with_capacity(text.len() + 1);
        let mut bytes = Vec::with_capacity(text.len() + 1);
        for (b, c) in text.char_indices() {
            chars.push(c);
            bytes.push(b);
        }
        chars.push('\0');
        bytes.push(text.len());
        Ok(Reader {
            chars,
            bytes,
            pointer: 0,
            line: 0,
            column: 0,
        })
    }

    /// The character `offset` ahead; `'\0'` at and past the end.
    pub fn peek(&self, offset: usize) -> char {
        self.chars
            .get(self.pointer + offset)
            .copied()
            .unwrap_or('\0')
    }

    pub fn prefix(&self, length: usize) -> String {
        let end = (self.pointer + length).min(self.chars.len());
        self.chars[self.pointer..end].iter().collect()
    }

    pub fn prefix_is(&self, s: &str) -> bool {
        s.chars().enumerate().all(|(i, c)| self.peek(i) == c)
    }

    pub fn forward(&mut self, length: usize) {
        for _ in 0..length {
            let Some(&c) = self.chars.get(self.pointer) else {
                return;
            };
            if c == '\0' && self.pointer + 1 == self.chars.len() {
                return;
            }
            self.pointer += 1;
            if matches!(c, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
                || (c == '\r' && self.peek(0) != '\n')
            {
                self.line += 1;
                self.column = 0;
            } else if c != '\u{FEFF}' {
                self.column += 1;
            }
        }
    }

    pub fn mark(&self) -> Mark {
        Mark {
            index: self.pointer,
            byte: self.bytes[self.pointer.min(self.bytes.len() - 1)],
            line: self.line,
            column: self.column,
        }
    }

    pub fn index(&self) -> usize {
        self.pointer
    }

    pub fn line(&self) -> usize {
        self.line
    }

    pub fn column(&self) -> usize {
        self.column
    }
}

/// 0-based line and column of the character at `position`, counted as
/// `Reader.forward` counts them.
fn line_and_column(text: &str, position: usize) -> (usize, usize) {
    let (mut line, mut column) = (0, 0);
    let mut chars = text.chars().take(position).peekable();
    while let Some(c) = chars.next() {
        if matches!(c, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
            || (c == '\r' && chars.peek() != Some(&'\n'))
        {
            line += 1;
            column = 0;
        } else if c != '\u{FEFF}' {
            column += 1;
        }
    }
    (line, column)
}
