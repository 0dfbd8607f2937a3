//! Field rules: a subset of RFC 9535 JSONPath (see `docs/fields.md`),
//! compiled once at load: `$`, `.name`, `['name']` / `["name"]`, `[0]` /
//! `[-1]`, `[*]` / `.*`, unions `['a','b']` / `[0,2]`, slices `[1:3]` /
//! `[::2]` and descendant segments `..name` / `..[*]` / `..['x']`. Filters
//! and functions are refused. Names are kept normalized (`names`), the form
//! the matcher compares.

use serde_json::Value;

use super::names::{name_parts, normalized_name, until_nul, MemberKey};
use super::FieldRule;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath {path:?}: {message}")]
pub struct PathError {
    pub path: String,
    pub message: String,
}

/// A JSONPath compiled once at load.
#[derive(Debug, Clone)]
pub struct FieldPath {
    source: String,
    pub(crate) segments: Vec<Segment>,
    /// Every member name the path names, normalized, whole and split into
    /// its parts: the names a logged location may show (`redacted`).
    names: Vec<String>,
}

/// One segment of a rule as the look-alike check (`shape`) reads it: member
/// names only, array steps dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameStep {
    /// A descendant segment: any member names may come first.
    pub(crate) descendant: bool,
    /// The name sequences the step stands for, normalized: one per name
    /// selector (split by `name_parts`), and an empty one for an index or a
    /// slice (an array step adds no name).
    pub(crate) sequences: Vec<Vec<String>>,
    /// A wildcard: no name (an element) or any one name (a member).
    pub(crate) any: bool,
}

/// One segment of a path: its selectors apply to a value's children, or
/// (`descendant`) to every value below it.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub(crate) descendant: bool,
    pub(crate) selectors: Vec<Selector>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Selector {
    Name(String),
    Index(i64),
    Wildcard,
    Slice {
        start: Option<i64>,
        end: Option<i64>,
        step: i64,
    },
}

impl FieldPath {
    pub fn parse(s: &str) -> Result<FieldPath, PathError> {
        let segments = Parser::new(s).query()?;
        let mut names: Vec<String> = Vec::new();
        for seg in &segments {
            for sel in &seg.selectors {
                if let Selector::Name(n) = sel {
                    let parts = until_nul(n)
                        .split(['.', '/', '[', ']'])
                        .filter(|p| !p.is_empty());
                    for name in std::iter::once(n.as_str()).chain(parts) {
                        if !names.iter().any(|m| m == name) {
                            names.push(name.to_owned());
                        }
                    }
                }
            }
        }
        Ok(FieldPath {
            source: s.to_string(),
            segments,
            names,
        })
    }

    /// The path of member `name` beside what this path selects: every
    /// segment but the last, then `name` (normalized). None for the root
    /// path `$`.
    pub(crate) fn sibling(&self, name: &str) -> Option<FieldPath> {
        let (_, parent) = self.segments.split_last()?;
        let mut segments = parent.to_vec();
        segments.push(Segment::new(false, vec![Selector::Name(name.to_owned())]));
        let normalized = normalized_name(name);
        let mut names = self.names.clone();
        if !names.contains(&normalized) {
            names.push(normalized);
        }
        Some(FieldPath {
            source: name.to_owned(),
            segments,
            names,
        })
    }

    /// The path as the look-alike check reads it (see `NameStep`).
    pub(crate) fn name_steps(&self) -> Vec<NameStep> {
        self.segments
            .iter()
            .map(|seg| {
                let mut step = NameStep {
                    descendant: seg.descendant,
                    sequences: Vec::new(),
                    any: false,
                };
                for sel in &seg.selectors {
                    let seq: Vec<String> = match sel {
                        Selector::Name(n) => name_parts(n).map(|p| normalized_name(&p)).collect(),
                        Selector::Wildcard => {
                            step.any = true;
                            Vec::new()
                        }
                        Selector::Index(_) | Selector::Slice { .. } => Vec::new(),
                    };
                    if !step.sequences.contains(&seq) {
                        step.sequences.push(seq);
                    }
                }
                step
            })
            .collect()
    }

    /// Number of segments: a value the path selects is at least this many
    /// steps below the root.
    pub fn min_depth(&self) -> usize {
        self.segments.len()
    }

    /// The normalized member names this path names: the only ones a
    /// redacted location shows (`location::redacted`).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Normalized paths (RFC 9535 §2.7) of the values this path selects in
    /// `doc`, in document order without repeats. For diagnostics and tests:
    /// the streaming walk of the transforms, run on `doc`'s JSON.
    pub fn locations(&self, doc: &Value) -> Vec<String> {
        let rule = [FieldRule {
            path: self.clone(),
            context: None,
        }];
        // A `Value` always serializes, and its JSON always parses.
        let json = serde_json::to_vec(doc).unwrap_or_default();
        super::locations(&json, &rule).unwrap_or_default()
    }

    /// The segments, in order (for tests that walk a tree themselves).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

impl Segment {
    fn new(descendant: bool, mut selectors: Vec<Selector>) -> Segment {
        // Selection is a set of locations, so repeated selectors add nothing.
        // Names are kept normalized, the form the matcher compares.
        let mut unique: Vec<Selector> = Vec::with_capacity(selectors.len());
        for s in selectors.drain(..) {
            let s = match s {
                Selector::Name(n) => Selector::Name(normalized_name(&n)),
                other => other,
            };
            if !unique.contains(&s) {
                unique.push(s);
            }
        }
        Segment {
            descendant,
            selectors: unique,
        }
    }

    /// The member name when the segment selects exactly one (normalized).
    pub fn single_name(&self) -> Option<&str> {
        match self.selectors.as_slice() {
            [Selector::Name(n)] if !self.descendant => Some(n),
            _ => None,
        }
    }

    /// A descendant segment (`..`): it applies at any depth below.
    pub fn is_descendant(&self) -> bool {
        self.descendant
    }

    /// Does the segment select member `key` (matched as backends bind it)?
    pub fn selects_member(&self, key: &str) -> bool {
        self.selects_key(&MemberKey::new(key))
    }

    /// `selects_member`, of a name prepared once for every segment.
    pub(crate) fn selects_key(&self, key: &MemberKey<'_>) -> bool {
        self.selectors.iter().any(|s| match s {
            Selector::Name(n) => key.matches(n),
            Selector::Wildcard => true,
            Selector::Index(_) | Selector::Slice { .. } => false,
        })
    }

    /// Does the segment select element `j` of an array of `n`?
    pub fn selects_element(&self, j: usize, n: usize) -> bool {
        self.selectors.iter().any(|s| match s {
            Selector::Name(_) => false,
            Selector::Wildcard => true,
            Selector::Index(i) => normalize_index(*i, n) == Some(j),
            Selector::Slice { start, end, step } => slice_contains(*start, *end, *step, j, n),
        })
    }
}

fn normalize_index(i: i64, n: usize) -> Option<usize> {
    let n = i64::try_from(n).ok()?;
    let k = if i < 0 { n + i } else { i };
    if (0..n).contains(&k) {
        usize::try_from(k).ok()
    } else {
        None
    }
}

/// RFC 9535 §2.3.4.2 slice semantics, as membership of index `j`.
fn slice_contains(start: Option<i64>, end: Option<i64>, step: i64, j: usize, n: usize) -> bool {
    let (Ok(n), Ok(j)) = (i64::try_from(n), i64::try_from(j)) else {
        return false;
    };
    let norm = |i: i64| if i >= 0 { i } else { n + i };
    if step > 0 {
        let lower = norm(start.unwrap_or(0)).clamp(0, n);
        let upper = norm(end.unwrap_or(n)).clamp(0, n);
        lower <= j && j < upper && (j - lower) % step == 0
    } else if step < 0 {
        let upper = start.map_or(n - 1, norm).clamp(-1, n - 1);
        let lower = end.map_or(-1, norm).clamp(-1, n - 1);
        lower < j && j <= upper && (upper - j) % step.unsigned_abs() as i64 == 0
    } else {
        false
    }
}

// ---------------------------------------------------------------------------
// Parser

/// RFC 9535 §2.1: integers are limited to the I-JSON exact range.
const MAX_INT: i64 = (1 << 53) - 1;

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Parser<'a> {
        Parser { src, pos: 0 }
    }

    fn err<T>(&self, what: &str) -> Result<T, PathError> {
        Err(PathError {
            path: self.src.to_owned(),
            message: format!("{what} (at byte {})", self.pos),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_char(&self) -> Option<char> {
        self.src.get(self.pos..).and_then(|s| s.chars().next())
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_blank(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn query(&mut self) -> Result<Vec<Segment>, PathError> {
        if !self.eat(b'$') {
            return self.err("a field path must start with '$'");
        }
        let mut segments = Vec::new();
        loop {
            self.skip_blank();
            match self.peek() {
                None => {
                    if self
                        .src
                        .as_bytes()
                        .last()
                        .is_some_and(|b| b.is_ascii_whitespace())
                    {
                        return self.err("unexpected whitespace at the end");
                    }
                    return Ok(segments);
                }
                Some(b'[') => {
                    let sels = self.bracketed()?;
                    segments.push(Segment::new(false, sels));
                }
                Some(b'.') => {
                    self.pos += 1;
                    let descendant = self.eat(b'.');
                    let sels = match self.peek() {
                        Some(b'[') if descendant => self.bracketed()?,
                        Some(b'*') => {
                            self.pos += 1;
                            vec![Selector::Wildcard]
                        }
                        _ => match self.shorthand_name() {
                            Some(name) => vec![Selector::Name(name)],
                            None if descendant => {
                                return self.err("expected a member name, '*' or '[' after '..'")
                            }
                            None => return self.err("expected a member name or '*' after '.'"),
                        },
                    };
                    segments.push(Segment::new(descendant, sels));
                }
                Some(b'?') => return self.err("filter selectors are not supported in field rules"),
                Some(b'(') => {
                    return self.err("function extensions are not supported in field rules")
                }
                Some(_) => {
                    let c = self.peek_char().unwrap_or('?');
                    return self.err(&format!("unexpected character {c:?}"));
                }
            }
        }
    }

    /// `name-first *name-char`, or None without consuming anything.
    fn shorthand_name(&mut self) -> Option<String> {
        let rest = self.src.get(self.pos..)?;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            let first_ok = c.is_ascii_alphabetic() || c == '_' || !c.is_ascii();
            if first_ok || (i > 0 && c.is_ascii_digit()) {
                end = i + c.len_utf8();
            } else {
                break;
            }
        }
        if end == 0 {
            return None;
        }
        self.pos += end;
        Some(rest[..end].to_owned())
    }

    /// `[ selector *(, selector) ]`
    fn bracketed(&mut self) -> Result<Vec<Selector>, PathError> {
        self.pos += 1; // '['
        let mut sels = Vec::new();
        loop {
            self.skip_blank();
            sels.push(self.selector()?);
            self.skip_blank();
            if self.eat(b']') {
                return Ok(sels);
            }
            if !self.eat(b',') {
                return match self.peek() {
                    None => self.err("missing ']'"),
                    Some(_) => self.err("expected ',' or ']'"),
                };
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, PathError> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => Ok(Selector::Name(self.string_literal(q)?)),
            Some(b'*') => {
                self.pos += 1;
                Ok(Selector::Wildcard)
            }
            Some(b'?') => self.err("filter selectors are not supported in field rules"),
            Some(b'-' | b'0'..=b'9' | b':') => self.index_or_slice(),
            None => self.err("missing selector and ']'"),
            Some(_) => self.err("expected a quoted name, an index, a slice or '*'"),
        }
    }

    fn index_or_slice(&mut self) -> Result<Selector, PathError> {
        let start = self.opt_int()?;
        self.skip_blank();
        if !self.eat(b':') {
            return match start {
                Some(i) => Ok(Selector::Index(i)),
                None => self.err("expected an index"),
            };
        }
        self.skip_blank();
        let end = self.opt_int()?;
        self.skip_blank();
        let mut step = None;
        if self.eat(b':') {
            self.skip_blank();
            step = self.opt_int()?;
        }
        Ok(Selector::Slice {
            start,
            end,
            step: step.unwrap_or(1),
        })
    }

    /// `"0" / ["-"] DIGIT1 *DIGIT`, within ±(2^53 - 1).
    fn opt_int(&mut self) -> Result<Option<i64>, PathError> {
        let begin = self.pos;
        let neg = self.eat(b'-');
        let digits_at = self.pos;
        let mut v: i64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            if self.pos > digits_at && self.src.as_bytes().get(digits_at) == Some(&b'0') {
                return self.err("integers must not have leading zeros");
            }
            v = match v
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(d - b'0')))
            {
                Some(v) if v <= MAX_INT => v,
                _ => return self.err("integer out of range"),
            };
            self.pos += 1;
        }
        if self.pos == digits_at {
            if neg {
                return self.err("expected digits after '-'");
            }
            self.pos = begin;
            return Ok(None);
        }
        if neg && v == 0 {
            return self.err("'-0' is not a valid integer");
        }
        Ok(Some(if neg { -v } else { v }))
    }

    /// RFC 9535 string literal, quote `q`, with its escapes.
    fn string_literal(&mut self, q: u8) -> Result<String, PathError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek_char() else {
                return self.err("unterminated string");
            };
            match c {
                c if c as u32 == u32::from(q) => {
                    self.pos += 1;
                    return Ok(out);
                }
                '\\' => {
                    self.pos += 1;
                    let e = self.peek();
                    self.pos += 1;
                    match e {
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'/') => out.push('/'),
                        Some(b'\\') => out.push('\\'),
                        Some(b) if b == q => out.push(char::from(q)),
                        Some(b'u') => out.push(self.unicode_escape()?),
                        _ => {
                            self.pos -= 1;
                            return self.err("invalid escape in string");
                        }
                    }
                }
                c if (c as u32) < 0x20 => {
                    return self.err("control characters in strings must be escaped")
                }
                c => {
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
    }

    /// After `\u`: 4 hex digits, or a surrogate pair `XXXX\uXXXX`.
    fn unicode_escape(&mut self) -> Result<char, PathError> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if !(self.eat(b'\\') && self.eat(b'u')) {
                    return self.err("high surrogate not followed by a low surrogate");
                }
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return self.err("high surrogate not followed by a low surrogate");
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return self.err("lone low surrogate"),
            c => c,
        };
        match char::from_u32(code) {
            Some(c) => Ok(c),
            None => self.err("invalid \\u escape"),
        }
    }

    fn hex4(&mut self) -> Result<u32, PathError> {
        let Some(digits) = self.src.get(self.pos..self.pos + 4) else {
            return self.err("expected 4 hex digits after \\u");
        };
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.err("expected 4 hex digits after \\u");
        }
        match u32::from_str_radix(digits, 16) {
            Ok(v) => {
                self.pos += 4;
                Ok(v)
            }
            Err(_) => self.err("expected 4 hex digits after \\u"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(s: &str) -> Vec<Segment> {
        match FieldPath::parse(s) {
            Ok(p) => p.segments,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_subset() {
        assert!(segs("$").is_empty());
        assert_eq!(segs("$.a.b").len(), 2);
        assert_eq!(segs("$['a']").len(), 1);
        assert_eq!(
            segs("$[\"a\\\"b\", 'c\\'d', 'e\\u00e9']")[0].selectors,
            vec![
                Selector::Name("a\"b".into()),
                Selector::Name("c'd".into()),
                Selector::Name("eé".into())
            ]
        );
        assert_eq!(segs("$[-1]")[0].selectors, vec![Selector::Index(-1)]);
        assert_eq!(
            segs("$[::2]")[0].selectors,
            vec![Selector::Slice {
                start: None,
                end: None,
                step: 2
            }]
        );
        assert!(segs("$..a")[0].descendant);
        assert!(segs("$..[*]")[0].descendant);
        assert!(segs("$..*")[0].descendant);
        assert_eq!(segs("$ .a [ 0 , 1 ]").len(), 2);
        assert_eq!(
            segs("$['\\ud83d\\ude00']")[0].selectors,
            vec![Selector::Name("😀".into())]
        );
    }

    #[test]
    fn refuses_bad_paths() {
        for (p, msg) in [
            ("a", "must start with '$'"),
            ("$[?(@.a)]", "filter selectors are not supported"),
            ("$[?@.a]", "filter selectors are not supported"),
            ("$.a.length()", "function extensions"),
            ("$.", "expected a member name"),
            ("$..", "expected a member name, '*' or '['"),
            ("$[", "missing selector"),
            ("$[0", "missing ']'"),
            ("$['a]", "unterminated"),
            ("$[01]", "leading zeros"),
            ("$[-0]", "'-0'"),
            ("$[9007199254740992]", "out of range"),
            ("$['\\x']", "invalid escape"),
            ("$[\"\\'\"]", "invalid escape"),
            ("$['\\ud800']", "surrogate"),
            ("$.a ", "whitespace"),
            ("$.1a", "expected a member name"),
            ("$a", "unexpected character"),
        ] {
            match FieldPath::parse(p) {
                Ok(_) => panic!("{p} should fail"),
                Err(e) => {
                    assert!(e.message.contains(msg), "{p}: {}", e.message);
                    assert_eq!(e.path, p);
                }
            }
        }
    }

    #[test]
    fn slices() {
        let sel = |s: Option<i64>, e: Option<i64>, st: i64, n: usize| -> Vec<usize> {
            (0..n).filter(|j| slice_contains(s, e, st, *j, n)).collect()
        };
        assert_eq!(sel(Some(1), Some(3), 1, 5), vec![1, 2]);
        assert_eq!(sel(None, None, 2, 5), vec![0, 2, 4]);
        assert_eq!(sel(None, None, -1, 3), vec![0, 1, 2]);
        assert_eq!(sel(Some(-1), None, -2, 5), vec![0, 2, 4]);
        assert_eq!(sel(None, None, 0, 5), Vec::<usize>::new());
        assert_eq!(sel(Some(-2), None, 1, 5), vec![3, 4]);
    }
}
