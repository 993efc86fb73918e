//! Scalars as `SafeLoader` reads them: the implicit resolvers of PyYAML's
//! `resolver.py` (YAML 1.1: `yes` is a bool, `0644` is octal, `1e3` is a
//! string) and the scalar constructors of `constructor.py`, with the
//! exceptions they raise.

use crate::guest::cloudinit::document::Value;

use super::ErrorKind;

pub const TAG_PREFIX: &str = "tag:yaml.org,2002:";
pub const NULL: &str = "tag:yaml.org,2002:null";
pub const BOOL: &str = "tag:yaml.org,2002:bool";
pub const INT: &str = "tag:yaml.org,2002:int";
pub const FLOAT: &str = "tag:yaml.org,2002:float";
pub const STR: &str = "tag:yaml.org,2002:str";
pub const TIMESTAMP: &str = "tag:yaml.org,2002:timestamp";
pub const MERGE: &str = "tag:yaml.org,2002:merge";
pub const VALUE: &str = "tag:yaml.org,2002:value";
pub const BINARY: &str = "tag:yaml.org,2002:binary";
pub const SEQ: &str = "tag:yaml.org,2002:seq";
pub const MAP: &str = "tag:yaml.org,2002:map";
pub const SET: &str = "tag:yaml.org,2002:set";
pub const OMAP: &str = "tag:yaml.org,2002:omap";
pub const PAIRS: &str = "tag:yaml.org,2002:pairs";
/// cloud-init's `_CustomSafeLoader` reads this one as a plain string.
pub const PYTHON_UNICODE: &str = "tag:yaml.org,2002:python/unicode";
const YAML: &str = "tag:yaml.org,2002:yaml";

/// The tag of a scalar node: `Resolver.resolve` for an untagged plain
/// scalar (or one tagged `!`), the explicit tag otherwise, `str` for an
/// untagged quoted or block scalar.
pub fn scalar_tag<'a>(tag: Option<&'a str>, plain_implicit: bool, value: &str) -> &'a str {
    match tag {
        Some(t) if t != "!" => t,
        _ if plain_implicit => implicit_tag(value),
        _ => STR,
    }
}

/// `Resolver.resolve` for a scalar: the resolvers registered for the first
/// character, tried in PyYAML's registration order (bool, float, int, merge,
/// null, timestamp, value, yaml). Python's `$` also matches before one final
/// line break, which a `!`-tagged quoted scalar can carry.
pub fn implicit_tag(value: &str) -> &'static str {
    let body = value.strip_suffix('\n').unwrap_or(value);
    let Some(first) = value.chars().next() else {
        return NULL;
    };
    let candidates: &[&'static str] = match first {
        'y' | 'Y' | 'n' | 'N' | 't' | 'T' | 'f' | 'F' | 'o' | 'O' => {
            if matches!(first, 'n' | 'N') {
                &[BOOL, NULL]
            } else {
                &[BOOL]
            }
        }
        '-' | '+' => &[FLOAT, INT],
        '.' => &[FLOAT],
        '0'..='9' => &[FLOAT, INT, TIMESTAMP],
        '<' => &[MERGE],
        '~' => &[NULL],
        '=' => &[VALUE],
        '!' | '&' | '*' => &[YAML],
        _ => &[],
    };
    for &tag in candidates {
        let hit = match tag {
            BOOL => is_bool_word(body),
            FLOAT => is_float(body),
            INT => is_int(body),
            MERGE => body == "<<",
            NULL => matches!(body, "~" | "null" | "Null" | "NULL" | ""),
            TIMESTAMP => is_implicit_timestamp(body),
            VALUE => body == "=",
            _ => matches!(body, "!" | "&" | "*"),
        };
        if hit {
            return tag;
        }
    }
    STR
}

fn is_bool_word(s: &str) -> bool {
    matches!(
        s,
        "yes"
            | "Yes"
            | "YES"
            | "no"
            | "No"
            | "NO"
            | "true"
            | "True"
            | "TRUE"
            | "false"
            | "False"
            | "FALSE"
            | "on"
            | "On"
            | "ON"
            | "off"
            | "Off"
            | "OFF"
    )
}

/// A cursor over ASCII text for the resolver's regular expressions.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn eat(&mut self, pred: impl Fn(u8) -> bool) -> bool {
        if self.b.get(self.i).is_some_and(|&c| pred(c)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn eat_many(&mut self, pred: impl Fn(u8) -> bool) -> usize {
        let start = self.i;
        while self.eat(&pred) {}
        self.i - start
    }
    fn lit(&mut self, s: &str) -> bool {
        if self.b[self.i..].starts_with(s.as_bytes()) {
            self.i += s.len();
            true
        } else {
            false
        }
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
    fn sign(&mut self) {
        self.eat(|c| c == b'-' || c == b'+');
    }
    /// `(?::[0-5]?[0-9])+`
    fn sexagesimal_tail(&mut self) -> bool {
        let mut groups = 0;
        while self.b.get(self.i) == Some(&b':') {
            let save = self.i;
            self.i += 1;
            let two = matches!(self.b.get(self.i), Some(b'0'..=b'5'))
                && self.b.get(self.i + 1).is_some_and(u8::is_ascii_digit);
            if two {
                self.i += 2;
            } else if self.eat(|c| c.is_ascii_digit()) {
            } else {
                self.i = save;
                break;
            }
            groups += 1;
        }
        groups > 0
    }
    /// `(?:[eE][-+][0-9]+)?`
    fn optional_exponent(&mut self) {
        let save = self.i;
        if self.eat(|c| c == b'e' || c == b'E')
            && self.eat(|c| c == b'-' || c == b'+')
            && self.eat_many(|c| c.is_ascii_digit()) > 0
        {
            return;
        }
        self.i = save;
    }
}

fn digit_or_underscore(c: u8) -> bool {
    c.is_ascii_digit() || c == b'_'
}

fn full_match(s: &str, pattern: impl Fn(&mut Cursor) -> bool) -> bool {
    let mut c = Cursor {
        b: s.as_bytes(),
        i: 0,
    };
    pattern(&mut c) && c.done()
}

fn is_float(s: &str) -> bool {
    // [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    full_match(s, |c| {
        c.sign();
        c.eat(|b| b.is_ascii_digit()) && {
            c.eat_many(digit_or_underscore);
            c.lit(".")
        } && {
            c.eat_many(digit_or_underscore);
            c.optional_exponent();
            true
        }
    })
    // \.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    || full_match(s, |c| {
        c.lit(".") && c.eat(|b| b.is_ascii_digit()) && {
            c.eat_many(digit_or_underscore);
            c.optional_exponent();
            true
        }
    })
    // [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    || full_match(s, |c| {
        c.sign();
        c.eat(|b| b.is_ascii_digit()) && {
            c.eat_many(digit_or_underscore);
            c.sexagesimal_tail()
        } && c.lit(".") && {
            c.eat_many(digit_or_underscore);
            true
        }
    })
    || full_match(s, |c| {
        c.sign();
        c.lit(".") && (c.lit("inf") || c.lit("Inf") || c.lit("INF"))
    })
    || matches!(s, ".nan" | ".NaN" | ".NAN")
}

fn is_int(s: &str) -> bool {
    let signed = |c: &mut Cursor, rest: &dyn Fn(&mut Cursor) -> bool| {
        c.sign();
        rest(c)
    };
    full_match(s, |c| {
        signed(c, &|c| {
            c.lit("0b") && c.eat_many(|b| b == b'0' || b == b'1' || b == b'_') > 0
        })
    }) || full_match(s, |c| {
        signed(c, &|c| {
            c.lit("0") && c.eat_many(|b| (b'0'..=b'7').contains(&b) || b == b'_') > 0
        })
    }) || full_match(s, |c| {
        signed(c, &|c| {
            c.lit("0")
                || (c.eat(|b| (b'1'..=b'9').contains(&b)) && {
                    c.eat_many(digit_or_underscore);
                    true
                })
        })
    }) || full_match(s, |c| {
        signed(c, &|c| {
            c.lit("0x") && c.eat_many(|b| b.is_ascii_hexdigit() || b == b'_') > 0
        })
    }) || full_match(s, |c| {
        signed(c, &|c| {
            c.eat(|b| (b'1'..=b'9').contains(&b)) && {
                c.eat_many(digit_or_underscore);
                c.sexagesimal_tail()
            }
        })
    })
}

fn digits(c: &mut Cursor, min: usize, max: usize) -> Option<u32> {
    let start = c.i;
    while c.i - start < max && c.eat(|b| b.is_ascii_digit()) {}
    if c.i - start < min {
        return None;
    }
    std::str::from_utf8(&c.b[start..c.i]).ok()?.parse().ok()
}

/// The implicit resolver's timestamp: `YYYY-MM-DD` exactly, or a date with a
/// time part.
fn is_implicit_timestamp(s: &str) -> bool {
    let date_only = full_match(s, |c| {
        digits(c, 4, 4).is_some()
            && c.lit("-")
            && digits(c, 2, 2).is_some()
            && c.lit("-")
            && digits(c, 2, 2).is_some()
    });
    date_only || parse_timestamp(s).is_some_and(|t| t.time.is_some())
}

struct TimestampParts {
    year: u32,
    month: u32,
    day: u32,
    time: Option<TimeParts>,
}

struct TimeParts {
    hour: u32,
    minute: u32,
    second: u32,
    fraction: String,
    /// `Z`, or sign, hours and minutes.
    tz: Option<Option<(bool, u32, u32)>>,
}

/// `SafeConstructor.timestamp_regexp`.
fn parse_timestamp(s: &str) -> Option<TimestampParts> {
    let mut c = Cursor {
        b: s.as_bytes(),
        i: 0,
    };
    let year = digits(&mut c, 4, 4)?;
    c.lit("-").then_some(())?;
    let month = digits(&mut c, 1, 2)?;
    c.lit("-").then_some(())?;
    let day = digits(&mut c, 1, 2)?;
    if c.done() {
        return Some(TimestampParts {
            year,
            month,
            day,
            time: None,
        });
    }
    if !(c.eat(|b| b == b'T' || b == b't') || c.eat_many(|b| b == b' ' || b == b'\t') > 0) {
        return None;
    }
    let hour = digits(&mut c, 1, 2)?;
    c.lit(":").then_some(())?;
    let minute = digits(&mut c, 2, 2)?;
    c.lit(":").then_some(())?;
    let second = digits(&mut c, 2, 2)?;
    let mut fraction = String::new();
    if c.lit(".") {
        let start = c.i;
        c.eat_many(|b| b.is_ascii_digit());
        fraction = s[start..c.i].to_string();
    }
    let mut tz = None;
    if !c.done() {
        c.eat_many(|b| b == b' ' || b == b'\t');
        if c.lit("Z") {
            tz = Some(None);
        } else {
            let negative = if c.lit("-") {
                true
            } else if c.lit("+") {
                false
            } else {
                return None;
            };
            let h = digits(&mut c, 1, 2)?;
            let m = if c.lit(":") { digits(&mut c, 2, 2)? } else { 0 };
            tz = Some(Some((negative, h, m)));
        }
    }
    c.done().then_some(TimestampParts {
        year,
        month,
        day,
        time: Some(TimeParts {
            hour,
            minute,
            second,
            fraction,
            tz,
        }),
    })
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        _ => 28,
    }
}

/// `construct_yaml_timestamp`: Python's `str()` of the `date` or
/// `datetime` it builds, or the `ValueError` Python raises for an
/// impossible date.
fn construct_timestamp(value: &str) -> Result<String, (ErrorKind, String)> {
    let Some(t) = parse_timestamp(value) else {
        // `timestamp_regexp.match()` gives None, and `.groupdict()` on it
        // raises AttributeError, which cloud-init does not catch.
        return Err((
            ErrorKind::Crashes,
            format!("'{value}' is not a timestamp (PyYAML raises AttributeError)"),
        ));
    };
    let invalid = |what: &str| Err((ErrorKind::Refused, format!("{what} in timestamp '{value}'")));
    if t.year == 0 {
        return invalid("year 0 is out of range");
    }
    if !(1..=12).contains(&t.month) {
        return invalid("month must be in 1..12");
    }
    if t.day == 0 || t.day > days_in_month(t.year, t.month) {
        return invalid("day is out of range for month");
    }
    let date = format!("{:04}-{:02}-{:02}", t.year, t.month, t.day);
    let Some(time) = t.time else {
        return Ok(date);
    };
    if time.hour > 23 {
        return invalid("hour must be in 0..23");
    }
    if time.minute > 59 {
        return invalid("minute must be in 0..59");
    }
    if time.second > 59 {
        return invalid("second must be in 0..59");
    }
    let mut micro: String = time.fraction.chars().take(6).collect();
    while micro.len() < 6 {
        micro.push('0');
    }
    let micro: u32 = micro.parse().unwrap_or(0);
    let mut text = format!(
        "{date} {:02}:{:02}:{:02}",
        time.hour, time.minute, time.second
    );
    if micro != 0 {
        text.push_str(&format!(".{micro:06}"));
    }
    match time.tz {
        None => {}
        Some(None) => text.push_str("+00:00"),
        Some(Some((negative, h, m))) => {
            let minutes = h * 60 + m;
            if minutes >= 24 * 60 {
                return invalid("offset must be a timedelta strictly between -24 and 24 hours");
            }
            let sign = if negative && minutes != 0 { '-' } else { '+' };
            text.push_str(&format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60));
        }
    }
    Ok(text)
}

/// Python's `int(text, base)` on text already stripped of underscores:
/// surrounding whitespace and a sign allowed, and the base's own prefix.
fn python_int(text: &str, base: u32) -> Result<Option<i128>, String> {
    let t = text.trim_matches(is_python_space);
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let prefix = match base {
        2 => Some("0b"),
        8 => Some("0o"),
        16 => Some("0x"),
        _ => None,
    };
    let t = match prefix {
        Some(p) if t.len() > 2 && t.get(..2).is_some_and(|h| h.eq_ignore_ascii_case(p)) => &t[2..],
        _ => t,
    };
    if t.is_empty() || !t.chars().all(|c| c.is_digit(base)) {
        return Err(format!(
            "invalid literal for int() with base {base}: '{text}'"
        ));
    }
    // Base 10 refuses a leading zero on a non-zero number ("012").
    if base == 10 && t.len() > 1 && t.starts_with('0') && t.chars().any(|c| c != '0') {
        return Err(format!("invalid literal for int() with base 10: '{text}'"));
    }
    Ok(i128::from_str_radix(t, base)
        .ok()
        .map(|v| if negative { -v } else { v }))
}

fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

fn too_big(value: &str) -> (ErrorKind, String) {
    (
        ErrorKind::Unsupported,
        format!("the integer {value} is too large for prepare-image"),
    )
}

/// `construct_yaml_int`.
fn construct_int(raw: &str) -> Result<Value, (ErrorKind, String)> {
    let value: String = raw.chars().filter(|&c| c != '_').collect();
    let Some(first) = value.chars().next() else {
        return Err((
            ErrorKind::Crashes,
            "an empty !!int (PyYAML raises IndexError)".to_string(),
        ));
    };
    let negative = first == '-';
    let value = if first == '-' || first == '+' {
        &value[1..]
    } else {
        &value[..]
    };
    let refused = |m: String| (ErrorKind::Refused, m);
    let magnitude = if value == "0" {
        Some(0)
    } else if let Some(rest) = value.strip_prefix("0b") {
        python_int(rest, 2).map_err(refused)?
    } else if let Some(rest) = value.strip_prefix("0x") {
        python_int(rest, 16).map_err(refused)?
    } else if value.starts_with('0') {
        python_int(value, 8).map_err(refused)?
    } else if value.contains(':') {
        let mut total: Option<i128> = Some(0);
        for part in value.split(':') {
            let digit = python_int(part, 10).map_err(refused)?;
            total = total
                .zip(digit)
                .and_then(|(t, d)| t.checked_mul(60)?.checked_add(d));
        }
        total
    } else {
        python_int(value, 10).map_err(refused)?
    };
    let magnitude = magnitude.ok_or_else(|| too_big(raw))?;
    Ok(Value::Int(if negative { -magnitude } else { magnitude }))
}

/// Python's `float()` of a text.
fn python_float(text: &str) -> Result<f64, String> {
    let t = text.trim_matches(is_python_space);
    let ok = !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !t.contains("0x");
    ok.then(|| t.parse::<f64>().ok())
        .flatten()
        .ok_or_else(|| format!("could not convert string to float: '{text}'"))
}

/// `construct_yaml_float`.
fn construct_float(raw: &str) -> Result<Value, (ErrorKind, String)> {
    let value: String = raw
        .chars()
        .filter(|&c| c != '_')
        .collect::<String>()
        .to_lowercase();
    let Some(first) = value.chars().next() else {
        return Err((
            ErrorKind::Crashes,
            "an empty !!float (PyYAML raises IndexError)".to_string(),
        ));
    };
    let sign = if first == '-' { -1.0 } else { 1.0 };
    let value = if first == '-' || first == '+' {
        &value[1..]
    } else {
        &value[..]
    };
    let refused = |m: String| (ErrorKind::Refused, m);
    Ok(Value::Float(if value == ".inf" {
        sign * f64::INFINITY
    } else if value == ".nan" {
        f64::NAN
    } else if value.contains(':') {
        let mut parts = Vec::new();
        for part in value.split(':') {
            parts.push(python_float(part).map_err(refused)?);
        }
        let mut total = 0.0;
        let mut base = 1.0;
        for digit in parts.iter().rev() {
            total += digit * base;
            base *= 60.0;
        }
        sign * total
    } else {
        sign * python_float(value).map_err(refused)?
    }))
}

/// Python's `base64.decodebytes` (`binascii.a2b_base64`, not strict):
/// characters outside the alphabet are skipped, padding ends the data, and
/// a final group of one character or without its padding is an error.
fn check_base64(text: &str) -> Result<(), String> {
    let mut quad_pos = 0;
    let mut pads = 0;
    let mut data_chars = 0;
    for b in text.bytes() {
        if b == b'=' {
            pads += 1;
            if quad_pos >= 2 && quad_pos + pads >= 4 {
                return Ok(());
            }
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/') {
            continue;
        }
        data_chars += 1;
        pads = 0;
        quad_pos = (quad_pos + 1) % 4;
    }
    match quad_pos {
        0 => Ok(()),
        1 => Err(format!(
            "Invalid base64-encoded string: number of data characters ({data_chars}) cannot be 1 more than a multiple of 4"
        )),
        _ => Err("Incorrect padding".to_string()),
    }
}

/// What `SafeConstructor` (with cloud-init's `python/unicode`) builds for a
/// scalar node with this tag, or the exception it raises.
pub fn construct_scalar(tag: &str, value: &str) -> Result<Value, (ErrorKind, String)> {
    match tag {
        NULL => Ok(Value::Null),
        BOOL => match value.to_lowercase().as_str() {
            "yes" | "true" | "on" => Ok(Value::Bool(true)),
            "no" | "false" | "off" => Ok(Value::Bool(false)),
            _ => Err((
                ErrorKind::Crashes,
                format!("'{value}' is not a !!bool (PyYAML raises KeyError)"),
            )),
        },
        INT => construct_int(value),
        FLOAT => construct_float(value),
        STR | PYTHON_UNICODE => Ok(Value::Str(value.to_string())),
        TIMESTAMP => construct_timestamp(value).map(Value::Timestamp),
        BINARY => {
            if !value.is_ascii() {
                Err((
                    ErrorKind::Refused,
                    "failed to convert base64 data into ascii".to_string(),
                ))
            } else if let Err(m) = check_base64(value) {
                Err((
                    ErrorKind::Refused,
                    format!("failed to decode base64 data: {m}"),
                ))
            } else {
                Err((
                    ErrorKind::Unsupported,
                    "a !!binary value; prepare-image does not work on files with binary data"
                        .to_string(),
                ))
            }
        }
        other => Err((
            ErrorKind::Refused,
            format!("could not determine a constructor for the tag '{other}'"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_tags_follow_the_resolver_table() {
        for (text, tag) in [
            ("yes", BOOL),
            ("y", STR),
            ("NO", BOOL),
            ("", NULL),
            ("~", NULL),
            ("Null", NULL),
            ("0644", INT),
            ("08", STR),
            ("0b_", INT),
            ("0x1F", INT),
            ("1_000", INT),
            ("190:20:30", INT),
            ("1:60", STR),
            ("1e3", STR),
            ("1.0e3", STR),
            ("1.0e+3", FLOAT),
            (".5", FLOAT),
            ("-.5", STR),
            ("+.inf", FLOAT),
            ("-.nan", STR),
            ("1.", FLOAT),
            ("1:30.5", FLOAT),
            ("<<", MERGE),
            ("=", VALUE),
            ("2001-12-14", TIMESTAMP),
            ("2001-1-14", STR),
            ("2001-12-14t21:59:43.10-05:00", TIMESTAMP),
            ("2001-12-14 21:59:43.10 -5", TIMESTAMP),
            ("2001-12-14 21:59", STR),
        ] {
            assert_eq!(implicit_tag(text), tag, "{text:?}");
        }
    }

    #[test]
    fn constructors_build_what_python_builds() {
        assert_eq!(
            construct_scalar(INT, "0b_").unwrap_err().0,
            ErrorKind::Refused
        );
        assert_eq!(construct_scalar(INT, "0o17").unwrap(), Value::Int(15));
        assert_eq!(construct_scalar(INT, "1:30").unwrap(), Value::Int(90));
        assert_eq!(construct_scalar(INT, "").unwrap_err().0, ErrorKind::Crashes);
        // Found by the fuzz test: a multi-byte character right after "0".
        assert_eq!(
            construct_scalar(INT, "0\u{feff}x").unwrap_err().0,
            ErrorKind::Refused
        );
        assert_eq!(construct_scalar(FLOAT, "1").unwrap(), Value::Float(1.0));
        assert_eq!(
            construct_scalar(FLOAT, "1:30.5").unwrap(),
            Value::Float(90.5)
        );
        assert_eq!(
            construct_scalar(BOOL, "y").unwrap_err().0,
            ErrorKind::Crashes
        );
        assert_eq!(
            construct_scalar(TIMESTAMP, "2001-2-29").unwrap_err().0,
            ErrorKind::Refused
        );
        assert_eq!(
            construct_scalar(TIMESTAMP, "2001-12-14 21:59:43.10 -5").unwrap(),
            Value::Timestamp("2001-12-14 21:59:43.100000-05:00".into())
        );
        assert_eq!(
            construct_scalar(VALUE, "=").unwrap_err().0,
            ErrorKind::Refused
        );
    }
}
