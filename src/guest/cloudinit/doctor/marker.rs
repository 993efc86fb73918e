//! Requirement lines of Python package metadata (PEP 508): the distribution
//! name, and whether an environment marker holds for the interpreter that
//! runs cloud-init. Extras are never installed by the distribution's package,
//! so a requirement that needs an `extra` does not count.

/// A requirement's distribution name, PEP 503-normalised, and its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub name: String,
    /// The name as written, for messages.
    pub display: String,
    pub marker: Option<String>,
}

/// PEP 503: lowercase, every run of `-`, `_` and `.` becomes one `-`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            separator = true;
        } else {
            if separator && !out.is_empty() {
                out.push('-');
            }
            separator = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Parses `PyYAML (>=3.0) ; python_version >= "3"` or `jsonschema[format]`.
/// `None` for a line that names no distribution.
pub fn parse_requirement(line: &str) -> Option<Requirement> {
    let (spec, marker) = match line.split_once(';') {
        Some((spec, marker)) => (spec, Some(marker.trim().to_string())),
        None => (line, None),
    };
    let spec = spec.trim();
    let end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(spec.len());
    let display = &spec[..end];
    if display.is_empty() {
        return None;
    }
    Some(Requirement {
        name: normalize(display),
        display: display.to_string(),
        marker: marker.filter(|m| !m.is_empty()),
    })
}

/// The interpreter a marker is evaluated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Environment {
    /// `(major, minor)` when known.
    pub python: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(String),
    Open,
    Close,
}

fn tokenize(marker: &str) -> Option<Vec<Token>> {
    let chars: Vec<char> = marker.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            tokens.push(Token::Open);
            i += 1;
        } else if c == ')' {
            tokens.push(Token::Close);
            i += 1;
        } else if c == '"' || c == '\'' {
            let close = chars[i + 1..].iter().position(|&d| d == c)? + i + 1;
            tokens.push(Token::Quoted(chars[i + 1..close].iter().collect()));
            i = close + 1;
        } else if "<>=!~".contains(c) {
            let start = i;
            while i < chars.len() && "<>=!~".contains(chars[i]) {
                i += 1;
            }
            tokens.push(Token::Op(chars[start..i].iter().collect()));
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_.".contains(chars[i])) {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            return None;
        }
    }
    Some(tokens)
}

/// Three-valued: `None` when the marker uses something we cannot know
/// offline (then the requirement is not held against the image).
pub fn evaluate(marker: &str, env: Environment) -> Option<bool> {
    let tokens = tokenize(marker)?;
    let mut parser = MarkerParser {
        tokens: &tokens,
        at: 0,
        env,
        depth: 0,
    };
    let value = parser.or()?;
    (parser.at == tokens.len()).then_some(value)?
}

struct MarkerParser<'a> {
    tokens: &'a [Token],
    at: usize,
    env: Environment,
    depth: usize,
}

/// Nesting beyond this is not a marker anyone writes; refusing it bounds the recursion.
const MAX_MARKER_DEPTH: usize = 32;

impl MarkerParser<'_> {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w == word)
    }

    // Each level returns Option<Option<bool>>: outer None = syntax error, inner None = unknown.
    fn or(&mut self) -> Option<Option<bool>> {
        let mut value = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            let right = self.and()?;
            value = match (value, right) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            };
        }
        Some(value)
    }

    fn and(&mut self) -> Option<Option<bool>> {
        let mut value = self.atom()?;
        while self.peek_word("and") {
            self.at += 1;
            let right = self.atom()?;
            value = match (value, right) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            };
        }
        Some(value)
    }

    fn atom(&mut self) -> Option<Option<bool>> {
        if self.tokens.get(self.at) == Some(&Token::Open) {
            self.depth += 1;
            if self.depth > MAX_MARKER_DEPTH {
                return None;
            }
            self.at += 1;
            let value = self.or()?;
            if self.tokens.get(self.at) != Some(&Token::Close) {
                return None;
            }
            self.at += 1;
            self.depth -= 1;
            return Some(value);
        }
        let left = self.operand()?;
        let op = match self.tokens.get(self.at)? {
            Token::Op(op) => op.clone(),
            Token::Word(w) if w == "in" => "in".to_string(),
            Token::Word(w)
                if w == "not"
                    && matches!(self.tokens.get(self.at + 1), Some(Token::Word(x)) if x == "in") =>
            {
                self.at += 1;
                "not in".to_string()
            }
            _ => return None,
        };
        self.at += 1;
        let right = self.operand()?;
        Some(match (left, right) {
            (Some(l), Some(r)) => compare(&l, &op, &r),
            _ => None,
        })
    }

    /// A quoted literal, or a variable's value (`None` inside when unknown).
    fn operand(&mut self) -> Option<Option<String>> {
        let token = self.tokens.get(self.at)?.clone();
        self.at += 1;
        match token {
            Token::Quoted(s) => Some(Some(s)),
            Token::Word(variable) => Some(self.variable(&variable)),
            _ => None,
        }
    }

    fn variable(&self, name: &str) -> Option<String> {
        let python = self.env.python;
        match name {
            "python_version" => python.map(|(a, b)| format!("{a}.{b}")),
            "python_full_version" => python.map(|(a, b)| format!("{a}.{b}.0")),
            "sys_platform" => Some("linux".into()),
            "platform_system" => Some("Linux".into()),
            "os_name" => Some("posix".into()),
            "platform_python_implementation" => Some("CPython".into()),
            "implementation_name" => Some("cpython".into()),
            // No extra is ever installed by a distribution package.
            "extra" => Some(String::new()),
            _ => None,
        }
    }
}

fn version_parts(v: &str) -> Option<Vec<u64>> {
    v.split('.').map(|p| p.parse().ok()).collect()
}

fn compare(left: &str, op: &str, right: &str) -> Option<bool> {
    if op == "in" {
        return Some(right.contains(left));
    }
    if op == "not in" {
        return Some(!right.contains(left));
    }
    if let (Some(mut l), Some(mut r)) = (version_parts(left), version_parts(right)) {
        let len = l.len().max(r.len());
        l.resize(len, 0);
        r.resize(len, 0);
        let ord = l.cmp(&r);
        return match op {
            "==" | "===" => Some(ord.is_eq()),
            "!=" => Some(!ord.is_eq()),
            "<" => Some(ord.is_lt()),
            "<=" => Some(ord.is_le()),
            ">" => Some(ord.is_gt()),
            ">=" => Some(ord.is_ge()),
            _ => None,
        };
    }
    match op {
        "==" | "===" => Some(left == right),
        "!=" => Some(left != right),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PY36: Environment = Environment {
        python: Some((3, 6)),
    };

    #[test]
    fn names_are_normalised_as_pep_503_says() {
        assert_eq!(normalize("PyYAML"), "pyyaml");
        assert_eq!(normalize("jsonschema__Draft.4"), "jsonschema-draft-4");
        assert_eq!(
            parse_requirement("PyYAML (>=3.0) ; python_version >= \"3\"").unwrap(),
            Requirement {
                name: "pyyaml".into(),
                display: "PyYAML".into(),
                marker: Some("python_version >= \"3\"".into())
            }
        );
        assert_eq!(
            parse_requirement("jsonschema[format]>=3").unwrap().name,
            "jsonschema"
        );
        assert_eq!(parse_requirement("   "), None);
    }

    #[test]
    fn markers_are_evaluated_for_the_interpreter() {
        for (marker, expected) in [
            ("python_version >= \"3\"", Some(true)),
            ("python_version < '3.5'", Some(false)),
            (
                "python_version == \"3.6\" and sys_platform == 'linux'",
                Some(true),
            ),
            ("extra == \"test\"", Some(false)),
            (
                "(extra == 'a' or python_version > '3.10') and os_name == 'posix'",
                Some(false),
            ),
            ("platform_machine == 'x86_64'", None),
            (
                "platform_machine == 'x86_64' or python_version >= '3'",
                Some(true),
            ),
            ("'linux' in sys_platform", Some(true)),
            ("python_version >=", None),
            ("((((", None),
        ] {
            assert_eq!(evaluate(marker, PY36), expected, "{marker}");
        }
        let unknown = Environment { python: None };
        assert_eq!(evaluate("python_version >= '3'", unknown), None);
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed_without_bound() {
        let marker = format!(
            "{}os_name == 'posix'{}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        assert_eq!(evaluate(&marker, PY36), None);
    }
}
