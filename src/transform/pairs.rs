//! Name/value pairs as backends bind them from query strings (and
//! `application/x-www-form-urlencoded` bodies): parsed from `&str`, each
//! pair judged by the same names and look-alike automaton as JSON members,
//! and rewritten in place. No HTTP types.
//!
//! Rack/Rails, Laravel and PHP (`$_REQUEST`), Spring's `@ModelAttribute`
//! and ASP.NET's complex-type binding merge query parameters into the
//! model a JSON body fills, so on a route that seals `$.ssn` the parameter
//! `ssn` (or `user[ssn]`, `user.ssn`, `SSN`, `ssn[]`, `ssn[0]`,
//! `ss%6E`, …) is the same field. A pair is judged by its **decoded** name
//! (percent escapes, `+` for space), split and folded exactly as member
//! names are (`names::name_parts`, the look-alike automaton of `shape`):
//!
//! 1. a name the route's `query:` section covers (its name sequence ends
//!    the pair's) gets that section's action: `seal` (the value becomes an
//!    envelope, the name stays), `refuse` (400);
//! 2. otherwise a name that is a look-alike of an encrypt rule is refused;
//! 3. everything else is copied byte for byte.
//!
//! Both `&` and `;` separate pairs (Rack before 3, Tomcat's and some PHP
//! configurations' `arg_separator.input` accept `;`): splitting at more
//! places than a backend does only judges more names. An invalid percent
//! escape anywhere, or a name or judged value that is not UTF-8 once
//! decoded, refuses the request: backends disagree on what those mean
//! (`%u0073` is `s` to IIS, `%C0%B3` to lenient decoders), so none of
//! them may reach one. A name that still holds percent escapes after
//! decoding is judged decoded twice too (a backend, or a framework in
//! front of it, may decode again); a hit there is refused.

use std::borrow::Cow;

use serde_json::Value;

use super::index::IndexSpec;
use super::names::{name_parts, until_nul};
use super::shape::{LookAlikeError, LookAlikeMode, LookAlikes};
use super::{FieldPath, FieldRule, Keys, TransformError};

/// What happens to a configured parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamAction {
    /// Refuse the request (400).
    Refuse,
    /// The value is sealed into an envelope bound to the name part that
    /// spelled the configured name, as spelled (`Email` for `Email=…`,
    /// `SSN` for `user[SSN]=…`): the member name a backend stores it under
    /// and answers it at, where a decrypt rule opens it (the JSON engine's
    /// location context).
    Seal,
    /// The pair is rewritten into the blind index of its value: the name
    /// part that spelled the configured name becomes the index's name
    /// (`email=x` → `email_idx=<index of x>`, `user[email][]=x` →
    /// `user[email_idx][]=…`), so the backend's own filter finds the
    /// records whose stored index equals it.
    Index(IndexSpec),
    /// Sealed like `Seal`, and the index pair added after it (a form that
    /// creates a record sends the field and its index).
    SealAndIndex(IndexSpec),
    /// The pair is removed (a client's own value for an index fieldseal
    /// writes).
    Drop,
}

/// One entry of a route's `query:` section.
#[derive(Debug, Clone)]
pub struct ParamRule {
    /// As written in the config (also what errors and logs show).
    pub name: String,
    pub action: ParamAction,
}

/// What a route does with the pairs of its query strings, compiled once.
#[derive(Debug, Clone, Default)]
pub struct PairsSpec {
    rules: Vec<ParamRule>,
    /// The configured names, one automaton rule per entry of `rules`.
    named: LookAlikes,
    /// The look-alikes of the route's encrypt rules.
    guard: LookAlikes,
    /// Their paths, as written (for errors and logs).
    guard_paths: Vec<String>,
}

/// Why a `query:` section does not compile.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("parameter name {0:?}: {1}")]
    Name(String, String),
    #[error(transparent)]
    TooLarge(#[from] LookAlikeError),
}

#[derive(Debug, thiserror::Error)]
pub enum PairsError {
    /// An invalid percent escape, or a name or judged value that is not
    /// UTF-8 once decoded.
    #[error("a parameter is not validly percent-encoded UTF-8")]
    Encoding,
    /// `rule` is the config's name for what was hit (a `query:` entry or
    /// an encrypt rule's path), never the client's spelling.
    #[error("a parameter is the protected field {rule}")]
    Protected { rule: String },
    #[error(transparent)]
    Seal(TransformError),
}

impl PairsSpec {
    /// `rules` (each name parsed as the member name `$['name']`, so
    /// `card.number` stands for `card`,`number`) and the look-alikes of
    /// every encrypt rule in `guard` (a pair is the field itself, not some
    /// other value at another place, so `look_alikes: allow` does not
    /// exempt a rule here).
    pub fn compile(rules: Vec<ParamRule>, guard: &[FieldRule]) -> Result<PairsSpec, SpecError> {
        let as_rules: Vec<FieldRule> = rules
            .iter()
            .map(|r| {
                FieldPath::parse(&member_path(&r.name))
                    .map(|path| FieldRule {
                        path,
                        context: None,
                    })
                    .map_err(|e| SpecError::Name(r.name.clone(), e.message))
            })
            .collect::<Result<_, _>>()?;
        let compile = |r: &[FieldRule]| LookAlikes::compile(r, &[], LookAlikeMode::Refuse);
        Ok(PairsSpec {
            named: compile(&as_rules)?,
            guard: compile(guard)?,
            guard_paths: guard.iter().map(|r| r.path.as_str().to_owned()).collect(),
            rules,
        })
    }

    /// Is any pair judged (else the input is forwarded untouched)?
    pub fn is_on(&self) -> bool {
        self.named.is_on() || self.guard.is_on()
    }

    /// Does a rule seal or index (so a request needs its keys)?
    pub fn needs_keys(&self) -> bool {
        self.rules
            .iter()
            .any(|r| !matches!(r.action, ParamAction::Refuse | ParamAction::Drop))
    }

    pub fn rules(&self) -> &[ParamRule] {
        &self.rules
    }

    /// The verdict on decoded name `name`: a configured rule (and the
    /// byte range of the name part that completed it), or a refusal.
    fn judge(&self, name: &str) -> Verdict {
        if let Some((i, part)) = hit(&self.named, name) {
            return Verdict::Rule(i, part);
        }
        if let Some((r, _)) = hit(&self.guard, name) {
            return Verdict::Refuse(self.guard_paths.get(r).cloned().unwrap_or_default());
        }
        Verdict::Pass
    }
}

enum Verdict {
    Pass,
    Rule(usize, Part),
    Refuse(String),
}

/// `$['name']` with the name quoted for the JSONPath parser.
fn member_path(name: &str) -> String {
    let mut p = String::with_capacity(name.len() + 6);
    p.push_str("$['");
    for c in name.chars() {
        match c {
            '\'' | '\\' => {
                p.push('\\');
                p.push(c);
            }
            c if (c as u32) < 0x20 => p.push_str(&format!("\\u{:04x}", c as u32)),
            c => p.push(c),
        }
    }
    p.push_str("']");
    p
}

/// The rule of `la` whose look-alike the pair name `name` is, and the part
/// that completed it: where in `name` it lies (the whole name when the part
/// is not spelled in it verbatim, e.g. a quoted part with escapes).
fn hit(la: &LookAlikes, name: &str) -> Option<(usize, Part)> {
    if !la.is_on() {
        return None;
    }
    let base = name.as_ptr() as usize;
    let mut s = la.start();
    for part in name_parts(name) {
        s = la.step(s, &part);
        if let Some(r) = la.accepting(s) {
            let span = match &part {
                Cow::Borrowed(p) => (p.as_ptr() as usize)
                    .checked_sub(base)
                    .map(|start| start..start + p.len())
                    .filter(|r| name.get(r.clone()) == Some(*p)),
                Cow::Owned(_) => None,
            };
            return Some((
                r,
                Part {
                    span: span.unwrap_or(0..name.len()),
                    text: part.into_owned(),
                },
            ));
        }
    }
    None
}

/// The name part that spelled a configured name.
#[derive(Debug, Clone)]
struct Part {
    /// Where it is in the decoded name (replaced by an index's name).
    span: std::ops::Range<usize>,
    /// As spelled, escapes undone: the context a sealed value is bound to.
    text: String,
}

/// Rewrites the pairs of `input` (a query string without `?`) as `spec`
/// says, sealing with `keys` (needed only where a rule seals). `None`:
/// nothing changed, forward `input` as it is.
pub fn rewrite(
    input: &str,
    spec: &PairsSpec,
    keys: Option<Keys<'_>>,
    now: u64,
) -> Result<Option<String>, PairsError> {
    rewrite_reporting(input, spec, keys, now, &mut PairsReport::default())
}

/// What a rewrite did, for metrics and the audit record: counts, and the
/// config's names of the rules that sealed or indexed (never a client's
/// spelling, never a value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairsReport {
    pub sealed: usize,
    pub indexed: usize,
    /// Rule names, without repeats.
    pub rules: Vec<String>,
}

impl PairsReport {
    fn hit(&mut self, rule: &str) {
        if !self.rules.iter().any(|r| r == rule) {
            self.rules.push(rule.to_owned());
        }
    }
}

/// [`rewrite`], adding what it did to `report`.
pub fn rewrite_reporting(
    input: &str,
    spec: &PairsSpec,
    keys: Option<Keys<'_>>,
    now: u64,
    report: &mut PairsReport,
) -> Result<Option<String>, PairsError> {
    if !spec.is_on() {
        return Ok(None);
    }
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut start = 0;
    let bytes = input.as_bytes();
    while start <= input.len() {
        let end = bytes
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'&' || b == b';'))
            .map_or(input.len(), |i| start + i);
        let seg = input.get(start..end).ok_or(PairsError::Encoding)?;
        if let Some(replacement) = judge_pair(seg, spec, keys, now, report)? {
            let o = out.get_or_insert_with(|| String::with_capacity(input.len() + 128));
            o.push_str(input.get(copied..start).ok_or(PairsError::Encoding)?);
            o.push_str(&replacement);
            copied = end;
        }
        start = end + 1;
    }
    Ok(out.map(|mut o| {
        o.push_str(input.get(copied..).unwrap_or(""));
        o
    }))
}

/// One pair `seg` (`name`, `name=value`): `None` to copy it, or what
/// replaces it.
fn judge_pair(
    seg: &str,
    spec: &PairsSpec,
    keys: Option<Keys<'_>>,
    now: u64,
    report: &mut PairsReport,
) -> Result<Option<String>, PairsError> {
    let (raw_name, raw_value) = match seg.find('=') {
        Some(i) => (&seg[..i], Some(&seg[i + 1..])),
        None => (seg, None),
    };
    check_escapes(raw_value.unwrap_or(""))?;
    if raw_name.is_empty() {
        return Ok(None);
    }
    let name = decode(raw_name)?;
    let verdict = match spec.judge(&name) {
        Verdict::Pass if name.contains('%') => {
            // Decoded twice, as a second decoder would.
            match decode(&name) {
                Ok(twice) => match spec.judge(&twice) {
                    Verdict::Pass => Verdict::Pass,
                    Verdict::Rule(i, _) => Verdict::Refuse(
                        spec.rules
                            .get(i)
                            .map(|r| r.name.clone())
                            .unwrap_or_default(),
                    ),
                    refuse => refuse,
                },
                Err(_) => Verdict::Pass,
            }
        }
        v => v,
    };
    let (rule, part) = match verdict {
        Verdict::Pass => {
            if let Some(raw) = raw_value {
                judge_value(raw, spec)?;
            }
            return Ok(None);
        }
        Verdict::Refuse(rule) => return Err(PairsError::Protected { rule }),
        Verdict::Rule(i, part) => (spec.rules.get(i).ok_or(PairsError::Encoding)?, part),
    };
    let name = until_nul(&name);
    let value = || decode(raw_value.unwrap_or(""));
    let keys = || keys.ok_or(PairsError::Seal(TransformError::Seal));
    let mut out = String::new();
    match &rule.action {
        ParamAction::Refuse => {
            return Err(PairsError::Protected {
                rule: rule.name.clone(),
            })
        }
        ParamAction::Drop => {}
        ParamAction::Seal => {
            let context = part.text.as_str();
            seal_pair(&mut out, name, &value()?, context, keys()?, now)?;
            report.sealed += 1;
            report.hit(&rule.name);
        }
        ParamAction::Index(index) => {
            index_pair(&mut out, name, &part.span, &value()?, index, keys()?)?;
            report.indexed += 1;
            report.hit(&rule.name);
        }
        ParamAction::SealAndIndex(index) => {
            let context = part.text.as_str();
            let (v, k) = (value()?, keys()?);
            seal_pair(&mut out, name, &v, context, k, now)?;
            out.push('&');
            index_pair(&mut out, name, &part.span, &v, index, k)?;
            report.sealed += 1;
            report.indexed += 1;
            report.hit(&rule.name);
        }
    }
    Ok(Some(out))
}

/// The value of a pair no rule names (`raw`, as sent), judged for the
/// fields it may carry: decoded once, and again when it still holds `%`
/// (a backend, or code in front of it, may decode again), each time
/// lossily (a backend that parses it may replace bytes that are not UTF-8
/// rather than refuse them), then [`judge_json_value`].
fn judge_value(raw: &str, spec: &PairsSpec) -> Result<(), PairsError> {
    if !raw.bytes().any(|b| matches!(b, b'{' | b'[' | b'%')) {
        return Ok(());
    }
    let once = decode_lossy(raw);
    judge_json_value(&once, spec, 0)?;
    if once.contains('%') {
        judge_json_value(&decode_lossy(&once), spec, 0)?;
    }
    Ok(())
}

/// How deep JSON held in a JSON string is judged (`{"q": "{\"ssn\": 1}"}`).
const MAX_JSON_IN_JSON: usize = 4;

/// A value that is itself JSON (`?filter={"ssn":"…"}`, `q=[{"user":{…}}]`):
/// a backend that parses it reads its members as fields, so each member's
/// path from the value's root is judged as a pair name would be; a hit is
/// refused (a sealed or indexed value inside it would not be what the
/// backend expects either). A string member that is itself JSON is judged
/// the same way. A value that is not strict JSON but starts like it may
/// still be JSON to a lenient parser (Json.NET, JSON5: single quotes,
/// unquoted names, comments, trailing commas): its names are found by
/// [`lenient_names`] and judged the same way. Anything else passes as it
/// did.
fn judge_json_value(value: &str, spec: &PairsSpec, depth: usize) -> Result<(), PairsError> {
    let trimmed = value.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
        return Ok(());
    }
    let mut path = String::new();
    match serde_json::from_str::<Value>(trimmed) {
        Ok(doc) => judge_members(&doc, &mut path, spec, depth),
        Err(_) => lenient_names(trimmed, &mut |name| judge_path(name, spec)),
    }
}

/// The verdict on one member path inside a JSON value.
fn judge_path(path: &str, spec: &PairsSpec) -> Result<(), PairsError> {
    match spec.judge(path) {
        Verdict::Pass => Ok(()),
        Verdict::Rule(i, _) => Err(PairsError::Protected {
            rule: spec
                .rules
                .get(i)
                .map(|r| r.name.clone())
                .unwrap_or_default(),
        }),
        Verdict::Refuse(rule) => Err(PairsError::Protected { rule }),
    }
}

fn judge_members(
    v: &Value,
    path: &mut String,
    spec: &PairsSpec,
    depth: usize,
) -> Result<(), PairsError> {
    match v {
        Value::Object(members) => {
            for (name, inner) in members {
                let len = path.len();
                if len > 0 {
                    path.push('.');
                }
                path.push_str(name);
                judge_path(path, spec)?;
                judge_members(inner, path, spec, depth)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for item in items {
                judge_members(item, path, spec, depth)?;
            }
        }
        Value::String(s) if depth < MAX_JSON_IN_JSON => judge_json_value(s, spec, depth + 1)?,
        _ => {}
    }
    Ok(())
}

/// The member names of text a lenient JSON parser may read as an object
/// (`{'ssn': 1}`, `{ssn: 1}`, `{"a": 1,}`, comments): every quoted string
/// (`'` or `"`, escapes decoded) or bare word followed by `:`, as a path
/// of the names of the objects around it (`user.ssn`), handed to `f`.
/// Over-approximates on purpose: a word that a parser would not read as a
/// name may be judged too.
fn lenient_names(
    text: &str,
    f: &mut dyn FnMut(&str) -> Result<(), PairsError>,
) -> Result<(), PairsError> {
    // One entry per open container: the name its current member has.
    let mut names: Vec<Option<String>> = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut last: Option<String> = None;
    while let Some((i, c)) = chars.next() {
        match c {
            '{' | '[' => {
                names.push(None);
                last = None;
            }
            '}' | ']' => {
                names.pop();
                last = None;
            }
            ':' => {
                if let Some(name) = last.take() {
                    if let Some(top) = names.last_mut() {
                        *top = Some(name);
                    }
                    let path: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
                    f(&path.join("."))?;
                }
            }
            '"' | '\'' => {
                let mut s = String::new();
                while let Some((_, d)) = chars.next() {
                    match d {
                        d if d == c => break,
                        '\\' => match chars.next().map(|(_, e)| e) {
                            Some(e @ ('u' | 'x')) => {
                                let digits = if e == 'u' { 4 } else { 2 };
                                let hex: String = (0..digits)
                                    .filter_map(|_| chars.next())
                                    .map(|(_, h)| h)
                                    .collect();
                                if let Some(ch) =
                                    u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
                                {
                                    s.push(ch);
                                }
                            }
                            Some(e) => s.push(e),
                            None => break,
                        },
                        d => s.push(d),
                    }
                }
                last = Some(s);
            }
            '/' if matches!(chars.peek(), Some((_, '/' | '*'))) => {
                // A comment: to the end of the line, or to `*/`.
                let block = matches!(chars.next(), Some((_, '*')));
                let mut prev = ' ';
                for (_, d) in chars.by_ref() {
                    if (!block && d == '\n') || (block && prev == '*' && d == '/') {
                        break;
                    }
                    prev = d;
                }
            }
            c if c.is_whitespace() || c == ',' => {
                if c == ',' {
                    last = None;
                }
            }
            _ => {
                // A bare word, up to a delimiter.
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if d.is_whitespace()
                        || matches!(d, ':' | ',' | '{' | '}' | '[' | ']' | '"' | '\'')
                    {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                last = text.get(i..end).map(str::to_owned);
            }
        }
    }
    Ok(())
}

/// `s` percent-decoded (`+` for space) as a lenient decoder reads it: an
/// invalid escape stays as it is, bytes that are not UTF-8 become U+FFFD.
fn decode_lossy(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let escaped = match c {
            b'%' => b
                .get(i + 1)
                .copied()
                .and_then(hex)
                .zip(b.get(i + 2).copied().and_then(hex)),
            _ => None,
        };
        match (c, escaped) {
            (_, Some((h, l))) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// `name=<envelope of value>`.
fn seal_pair(
    out: &mut String,
    name: &str,
    value: &str,
    context: &str,
    keys: Keys<'_>,
    now: u64,
) -> Result<(), PairsError> {
    let sealed = keys
        .seal
        .seal_at(&Value::String(value.to_owned()), context, now)
        .map_err(|e| PairsError::Seal(e.into()))?;
    encode_into(out, name);
    out.push('=');
    encode_into(out, &sealed);
    Ok(())
}

/// `name` with its part at `part` renamed to the index's name, `=` the
/// index of `value`.
fn index_pair(
    out: &mut String,
    name: &str,
    part: &std::ops::Range<usize>,
    value: &str,
    index: &IndexSpec,
    keys: Keys<'_>,
) -> Result<(), PairsError> {
    let text = index.index(keys.index, value).map_err(PairsError::Seal)?;
    encode_into(out, name.get(..part.start).unwrap_or(""));
    encode_into(out, &index.name);
    encode_into(out, name.get(part.end..).unwrap_or(""));
    out.push('=');
    encode_into(out, &text);
    Ok(())
}

/// Every `%` starts a two-hex-digit escape.
fn check_escapes(s: &str) -> Result<(), PairsError> {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(off) = b.get(i..).and_then(|r| r.iter().position(|&c| c == b'%')) {
        let at = i + off;
        match (b.get(at + 1), b.get(at + 2)) {
            (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i = at + 3,
            _ => return Err(PairsError::Encoding),
        }
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Form decoding: `+` is a space, `%XX` a byte; the result must be UTF-8.
/// Strict: a `%` without two hex digits is an error.
pub fn decode(s: &str) -> Result<Cow<'_, str>, PairsError> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let h = b.get(i + 1).copied().and_then(hex);
                let l = b.get(i + 2).copied().and_then(hex);
                match (h, l) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(PairsError::Encoding),
                }
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PairsError::Encoding)
}

/// Percent-encodes `s` for a query string or form body: everything but
/// RFC 3986 unreserved characters is escaped (so `+`, `&`, `;`, `=` in a
/// value can't change how it splits).
pub fn encode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keyring;

    fn ring() -> Keyring {
        Keyring::from_raw_keys("k1", vec![("k1".into(), [7u8; 32])]).expect("ring")
    }

    fn spec(params: &[(&str, ParamAction)], guard: &[&str]) -> PairsSpec {
        let guard: Vec<FieldRule> = guard
            .iter()
            .map(|p| FieldRule {
                path: FieldPath::parse(p).expect("path"),
                context: None,
            })
            .collect();
        let rules = params
            .iter()
            .map(|(n, a)| ParamRule {
                name: (*n).into(),
                action: a.clone(),
            })
            .collect();
        PairsSpec::compile(rules, &guard).expect("spec")
    }

    fn run(q: &str, s: &PairsSpec) -> Result<Option<String>, PairsError> {
        let ring = ring();
        rewrite(q, s, Some((&ring).into()), 1_700_000_000)
    }

    #[test]
    fn look_alikes_of_encrypt_rules_are_refused_in_every_spelling() {
        let s = spec(&[], &["$.ssn", "$.card.number"]);
        for q in [
            "ssn=078-05-1120",
            "a=1&ssn=1",
            "a=1;ssn=1",
            "SSN=1",
            "Ssn=1",
            "%73sn=1",
            "%53%53%4E=1",
            "ss%6e=1",
            "ssn[]=1",
            "ssn[0]=1",
            "ssn%5B%5D=1",
            "user[ssn]=1",
            "user%5Bssn%5D=1",
            "user.ssn=1",
            "ssn%00=1",
            "ssn%00x=1",
            "%C5%BFsn=1",
            "ssn",
            "ssn=",
            "card.number=4111",
            "card[number]=4111",
            "Card%5BNumber%5D=4111",
            "x=1&&ssn=2",
            "ssn[a]=1",
            "%2573sn=1",
        ] {
            assert!(
                matches!(run(q, &s), Err(PairsError::Protected { .. })),
                "{q}"
            );
        }
        for q in [
            "",
            "a=1",
            "ssns=1",
            "ssn_last4=1",
            "number=1",
            "card=1",
            "q=ssn",
            "q=ssn%3D1",
            "&&",
            "=ssn",
        ] {
            assert_eq!(run(q, &s).expect(q), None, "{q}");
        }
    }

    #[test]
    fn a_value_that_is_json_holding_a_protected_name_is_refused() {
        let s = spec(
            &[("email", ParamAction::Refuse)],
            &["$.ssn", "$.card.number"],
        );
        for q in [
            r#"filter={"ssn":"078-05-1120"}"#,
            "filter=%7B%22ssn%22%3A%22078-05-1120%22%7D",
            r#"filter=+{"SSN":1}"#,
            r#"filter={"S_S-N":1}"#,
            r#"q=[{"user":{"ssn":1}}]"#,
            r#"q={"card":{"number":"4111"}}"#,
            r#"q={"a":[{"b":{"card":{"number":1}}}]}"#,
            r#"where={"email":"ada@example.com"}"#,
            r#"a=1&filter={"x":1,"ssn":null}"#,
        ] {
            assert!(
                matches!(run(q, &s), Err(PairsError::Protected { .. })),
                "{q} passed"
            );
        }
        for q in [
            r#"filter={"name":"ada"}"#,
            r#"q={"card":{"holder":"ada"}}"#,
            "q=[draft]",
            "q={not json",
            r#"q="ssn""#,
            r#"q=["ssn"]"#,
        ] {
            assert_eq!(run(q, &s).expect(q), None, "{q}");
        }
    }

    #[test]
    fn json_values_a_lenient_or_second_reader_parses_are_judged_too() {
        let s = spec(&[], &["$.ssn", "$.card.number"]);
        for q in [
            // Lenient parsers (Json.NET, JSON5): quotes, bare names, comments, trailing commas.
            "filter={'ssn':'078-05-1120'}",
            "filter={ssn:1}",
            "filter={ SSN : 1 }",
            "filter={\"a\":1,\"ssn\":1,}",
            "filter={/* c */\"ssn\":1}",
            "filter={'s\\u0073n':1}",
            "q=[{user:{card:{'number':1}}}]",
            // Not UTF-8: a lossy parser still reads the names.
            "filter=%7B%22ssn%22:%22078%FF%22%7D",
            // Encoded twice: a second decoder reads JSON.
            "filter=%257B%2522ssn%2522%253A1%257D",
            // JSON in a JSON string.
            r#"filter={"q":"{\"ssn\":1}"}"#,
            r#"filter=["[{\"card\":{\"number\":1}}]"]"#,
        ] {
            assert!(
                matches!(run(q, &s), Err(PairsError::Protected { .. })),
                "{q} passed"
            );
        }
        for q in [
            "filter={'name':'ssn'}",
            "filter={time: 10:30}",
            "q={draft",
            "filter=%257B%2522name%2522%253A1%257D",
            "note=100%25",
        ] {
            assert_eq!(run(q, &s).expect(q), None, "{q}");
        }
    }

    #[test]
    fn bad_escapes_and_non_utf8_are_refused() {
        let s = spec(&[], &["$.ssn"]);
        for q in [
            "a=%",
            "a=%4",
            "a=%zz",
            "%u0073sn=1",
            "a%=1",
            "%C0%B3sn=1",
            "%FF=1",
        ] {
            assert!(matches!(run(q, &s), Err(PairsError::Encoding)), "{q}");
        }
    }

    #[test]
    fn configured_names_are_sealed_or_refused_and_the_rest_is_kept() {
        let s = spec(
            &[("ssn", ParamAction::Seal), ("pin", ParamAction::Refuse)],
            &["$.ssn", "$.pin", "$.card.number"],
        );
        let ring = ring();
        let out = run("a=1;b=%2B&SSN=078-05-1120&c", &s)
            .expect("ok")
            .expect("changed");
        let (head, tail) = out.split_at("a=1;b=%2B&".len());
        assert_eq!(head, "a=1;b=%2B&");
        let (name, rest) = tail.split_once('=').expect("pair");
        assert_eq!(name, "SSN");
        let (env, c) = rest.split_once('&').expect("c");
        assert_eq!(c, "c");
        let env = decode(env).expect("decodes");
        assert!(env.starts_with("fs1:"));
        let opened = ring
            .open(&env, "SSN", None)
            .expect("opens as spelled")
            .value;
        assert_eq!(opened, Value::String("078-05-1120".into()));
        assert!(!out.contains("078"));
        // `+` is a space in the value.
        let out = run("ssn=a+b", &s).expect("ok").expect("changed");
        let env = decode(out.strip_prefix("ssn=").expect("name")).expect("d");
        assert_eq!(
            ring.open(&env, "ssn", None).expect("opens").value,
            Value::String("a b".into())
        );
        for q in ["pin=1", "PIN[]=1", "x[pin]=1", "card.number=1"] {
            assert!(
                matches!(run(q, &s), Err(PairsError::Protected { .. })),
                "{q}"
            );
        }
        // A double-encoded configured name is refused, not sealed.
        assert!(matches!(
            run("%2573sn=1", &s),
            Err(PairsError::Protected { .. })
        ));
    }

    #[test]
    fn an_index_entry_rewrites_the_name_and_the_value() {
        use crate::crypto::index::Normalize;
        let idx = IndexSpec {
            name: "email_idx".into(),
            normalize: vec![Normalize::Trim, Normalize::Lowercase],
            bits: 64,
            key_id: None,
        };
        let s = spec(&[("email", ParamAction::Index(idx.clone()))], &["$.email"]);
        let want = idx
            .index(
                super::super::index::IndexKeys::Ring(&ring()),
                "ada@example.com",
            )
            .expect("index");
        let mut enc = String::new();
        encode_into(&mut enc, &want);
        for (q, name) in [
            ("email=ada%40example.com", "email_idx"),
            ("EMAIL=+Ada@Example.com", "email_idx"),
            ("e%6Dail=ada@example.com", "email_idx"),
            ("email[]=ada@example.com", "email_idx%5B%5D"),
            ("user[Email]=ada@example.com", "user%5Bemail_idx%5D"),
            ("user.email=ada@example.com", "user.email_idx"),
            ("email%00x=ada@example.com", "email_idx"),
        ] {
            let out = run(&format!("page=2&{q}&x=1"), &s)
                .expect(q)
                .expect("changed");
            assert_eq!(out, format!("page=2&{name}={enc}&x=1"), "{q}");
            assert!(!out.to_lowercase().contains("ada"), "{q}");
        }
        assert!(matches!(
            run("%2565mail=x", &s),
            Err(PairsError::Protected { .. })
        ));
    }

    mod props {
        use super::*;
        use crate::crypto::index::Normalize;
        use proptest::prelude::*;

        /// A spelling a backend binds to `base`: per-character case, per-byte
        /// percent escapes (either hex case), a wrapper, a NUL tail.
        fn spelling(base: &'static str) -> impl Strategy<Value = String> {
            (
                proptest::collection::vec(any::<(bool, u8)>(), base.len()),
                0usize..7,
                any::<bool>(),
            )
                .prop_map(move |(bits, wrap, nul)| {
                    let mut name = String::new();
                    for (c, (upper, enc)) in base.chars().zip(bits) {
                        let c = if upper { c.to_ascii_uppercase() } else { c };
                        match enc % 4 {
                            0 => name.push_str(&format!("%{:02X}", c as u32)),
                            1 => name.push_str(&format!("%{:02x}", c as u32)),
                            _ => name.push(c),
                        }
                    }
                    let name = match wrap {
                        0 => name,
                        1 => format!("{name}[]"),
                        2 => format!("{name}%5B3%5D"),
                        3 => format!("user[{name}]"),
                        4 => format!("user.{name}"),
                        5 => format!("a%5Bb%5D[{name}]"),
                        _ => format!("{name}[x]"),
                    };
                    if nul {
                        format!("{name}%00tail")
                    } else {
                        name
                    }
                })
        }

        fn value() -> impl Strategy<Value = String> {
            "[a-z0-9 .@-]{0,12}".prop_map(|v| format!("{v}zq7secret{v}"))
        }

        fn encode_value(v: &str, plus: bool) -> String {
            let mut out = String::new();
            encode_into(&mut out, v);
            if plus {
                out.replace("%20", "+")
            } else {
                out
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            /// No configured parameter and no look-alike of an encrypt rule
            /// leaves `rewrite` with its value in plaintext, however spelled.
            #[test]
            fn no_protected_value_passes_in_plaintext(
                which in 0usize..3,
                ssn in spelling("ssn"),
                email in spelling("email"),
                card in spelling("card.number"),
                v in value(),
                plus in any::<bool>(),
                sep in prop_oneof![Just('&'), Just(';')],
                before in "[a-z]{1,5}=[a-z0-9]{0,5}",
                after in "[a-z]{1,5}=[a-z0-9]{0,5}",
                repeat in any::<bool>(),
            ) {
                let idx = IndexSpec {
                    name: "email_idx".into(),
                    normalize: vec![Normalize::Trim, Normalize::Lowercase],
                    bits: 64,
                    key_id: None,
                };
                let s = spec(
                    &[
                        ("ssn", ParamAction::Seal),
                        ("email", ParamAction::Index(idx)),
                    ],
                    &["$.ssn", "$.email", "$.card.number"],
                );
                let name = [ssn, email, card][which].clone();
                let pair = format!("{name}={}", encode_value(&v, plus));
                let mut q = format!("{before}{sep}{pair}{sep}{after}");
                if repeat {
                    q.push(sep);
                    q.push_str(&pair);
                }
                match run(&q, &s) {
                    Err(e) => prop_assert!(
                        which == 2 && matches!(e, PairsError::Protected { .. }),
                        "a configured name is rewritten, a look-alike refused: {q}: {e}"
                    ),
                    Ok(out) => {
                        let out = out.unwrap_or(q.clone());
                        let decoded = decode(&out).map(|d| d.to_lowercase()).unwrap_or_default();
                        prop_assert!(!out.to_lowercase().contains("zq7secret"), "{q} -> {out}");
                        prop_assert!(!decoded.contains("zq7secret"), "{q} -> {out}");
                        prop_assert!(which != 2, "a look-alike passed: {q}");
                    }
                }
            }
        }
    }

    #[test]
    fn codecs() {
        assert_eq!(decode("a+b%20c").expect("d"), "a b c");
        assert_eq!(decode("%e2%82%ac").expect("d"), "€");
        let mut s = String::new();
        encode_into(&mut s, "a b+&;=€:~");
        assert_eq!(s, "a%20b%2B%26%3B%3D%E2%82%AC%3A~");
        assert_eq!(member_path("it's"), r"$['it\'s']");
    }
}
