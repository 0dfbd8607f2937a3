//! The field transforms of `fields`, done in one streaming pass over the
//! body bytes, without building a `serde_json::Value` tree.
//!
//! The input is validated strictly against RFC 8259 while it is walked (one
//! JSON value, whitespace around it, UTF-8, no raw control characters in
//! strings, valid escapes and surrogate pairs, the number grammar, nesting
//! depth). Anything serde_json would refuse is refused: a difference between
//! what this proxy parses and what a backend parses would be a bypass.
//!
//! The rule states follow the same machine as the tree walk
//! (`fields::RuleStates`). Bytes that are not replaced are copied verbatim,
//! so whitespace, key order and number spelling are kept. Only a selected
//! value is turned into a `Value` (to seal it), and only an opened envelope
//! is serialized. Member names are matched unescaped, and every occurrence of
//! a duplicated member is visited.
//!
//! The semantics are those of `fields::encrypt_document_with` and
//! `fields::decrypt_document` (which stay the reference implementation),
//! including the reserved-prefix guard, nested envelopes inside decrypted
//! values and the failure modes. Error priority is the tree path's: invalid
//! JSON, then too deep, then a sealing or decryption failure.
//!
//! On top, `encrypt_request` applies a route's positive model (`shape`):
//! each value carries the state of the look-alike automaton, stepped once
//! per member name, and a value no rule selects in an accepting state is
//! refused or sealed; and the route's JSON Schema, if it has one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::crypto::{looks_like_envelope, Keyring, SealError};
use crate::fields::{
    failure_for, matched_paths, name_parts, note_key, redacted_path, DecryptFailure,
    DecryptSelection, FieldError, FieldRule, OnDecryptFailure, Opener, RuleStates, Step,
    TransformReport, UNKNOWN_LEN,
};
use crate::shape::{carries_data, LookAlikeMode, LookAlikes, RequestShape};

/// The deepest nesting serde_json parses (its recursion limit): the tree
/// path never accepted deeper documents.
pub const SERDE_MAX_DEPTH: usize = 127;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("invalid JSON")]
    InvalidJson,
    #[error("JSON nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("field encryption failed")]
    Seal,
    #[error("a field could not be decrypted")]
    Decrypt(DecryptFailure),
    /// A value no rule selects stands where a backend could bind the
    /// rule's field. `location` shows only the rule's own member names.
    #[error("a look-alike of the protected field {rule} at {location}")]
    LookAlike { rule: String, location: String },
    #[error("the body does not match the route's schema")]
    Schema,
    #[error("the body repeats a member name, which the route's schema cannot judge")]
    DuplicateMember,
    /// The value would seal into more than `crypto::MAX_ENVELOPE_LEN`.
    #[error("a field is too large to seal")]
    FieldTooLarge,
    /// The value nests deeper than `crypto::MAX_SEAL_DEPTH`.
    #[error("a field nests too deeply to seal")]
    FieldTooDeep,
}

impl From<SealError> for StreamError {
    fn from(e: SealError) -> StreamError {
        match e {
            SealError::TooLarge => StreamError::FieldTooLarge,
            SealError::TooDeep => StreamError::FieldTooDeep,
            SealError::Serialize | SealError::Rng | SealError::UnknownKey => StreamError::Seal,
        }
    }
}

/// `fields::encrypt_document_with` on the document in `input`: returns the
/// transformed bytes. `max_depth` as `fields::exceeds_depth` counts it.
/// No look-alike check: this is the tree transform's semantics, streamed.
pub fn encrypt_json(
    input: &[u8],
    rules: &[FieldRule],
    ring: &Keyring,
    now: u64,
    named_contexts: &[String],
    max_depth: usize,
) -> Result<(Vec<u8>, TransformReport), StreamError> {
    encrypt_with(
        input,
        rules,
        &NO_LOOK_ALIKES,
        ring,
        now,
        named_contexts,
        max_depth,
    )
    .map(|(o, r, _)| (o, r))
}

/// The request transform of an encrypting route: `encrypt_json` with the
/// route's look-alike check, after its schema (if any) accepted the body.
/// Nothing of a refused body may be forwarded.
pub fn encrypt_request(
    input: &[u8],
    rules: &[FieldRule],
    shape: &RequestShape,
    ring: &Keyring,
    now: u64,
    named_contexts: &[String],
    max_depth: usize,
) -> Result<(Vec<u8>, TransformReport), StreamError> {
    let Some(schema) = &shape.schema else {
        return encrypt_with(
            input,
            rules,
            &shape.look_alikes,
            ring,
            now,
            named_contexts,
            max_depth,
        )
        .map(|(o, r, _)| (o, r));
    };
    // Only routes with a schema build a tree. Errors come in the order of
    // the plain transform: invalid JSON, too deep, then the rest.
    let doc: Value = serde_json::from_slice(input).map_err(|_| StreamError::InvalidJson)?;
    if crate::fields::exceeds_depth(&doc, max_depth.min(SERDE_MAX_DEPTH)) {
        return Err(StreamError::TooDeep {
            limit: max_depth.min(SERDE_MAX_DEPTH),
        });
    }
    if !schema.is_valid(&doc) {
        return Err(StreamError::Schema);
    }
    let (out, report, members) = encrypt_with(
        input,
        rules,
        &shape.look_alikes,
        ring,
        now,
        named_contexts,
        max_depth,
    )?;
    // The tree keeps one of each repeated member, the stream saw them all:
    // the schema judged one value where a backend may read another.
    if members != member_count(&doc) {
        return Err(StreamError::DuplicateMember);
    }
    Ok((out, report))
}

/// `encrypt_request` without a schema on a parsed document (the offline
/// `encrypt`): the same engine and look-alike policy as the proxy.
pub fn encrypt_value(
    doc: &mut Value,
    rules: &[FieldRule],
    look_alikes: &LookAlikes,
    ring: &Keyring,
    now: u64,
    named_contexts: &[String],
) -> Result<TransformReport, StreamError> {
    let input = serde_json::to_vec(&*doc).map_err(|_| StreamError::InvalidJson)?;
    let (out, report, _) = encrypt_with(
        &input,
        rules,
        look_alikes,
        ring,
        now,
        named_contexts,
        SERDE_MAX_DEPTH,
    )?;
    *doc = serde_json::from_slice(&out).map_err(|_| StreamError::InvalidJson)?;
    Ok(report)
}

/// Also returns the number of object members in the input.
fn encrypt_with(
    input: &[u8],
    rules: &[FieldRule],
    look_alikes: &LookAlikes,
    ring: &Keyring,
    now: u64,
    named_contexts: &[String],
    max_depth: usize,
) -> Result<(Vec<u8>, TransformReport, usize), StreamError> {
    let src = std::str::from_utf8(input).map_err(|_| StreamError::InvalidJson)?;
    let mut w = Walker::new(src, rules, ring, now, max_depth, rules.len());
    w.mode = Mode::Encrypt {
        named: named_contexts,
    };
    w.look = look_alikes;
    let mut report = w.run(input)?;
    if report.encrypted > 0 {
        report.key_ids.push(ring.active_id().to_owned());
    }
    report.paths = matched_paths(rules, &w.hit);
    Ok((w.out, report, w.members))
}

fn member_count(v: &Value) -> usize {
    let mut n = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => {
                n += o.len();
                stack.extend(o.values());
            }
            _ => {}
        }
    }
    n
}

/// `fields::decrypt_document` on the document in `input`: returns the
/// transformed bytes. `InvalidJson` / `TooDeep` mean nothing was decrypted.
pub fn decrypt_json(
    input: &[u8],
    selection: &DecryptSelection,
    ring: &Keyring,
    on_failure: OnDecryptFailure,
    max_age: Option<Duration>,
    now: u64,
    max_depth: usize,
) -> Result<(Vec<u8>, TransformReport), StreamError> {
    let src = std::str::from_utf8(input).map_err(|_| StreamError::InvalidJson)?;
    let rules: &[FieldRule] = match selection {
        DecryptSelection::Paths(rules) => rules,
        DecryptSelection::Auto => &[],
    };
    let mut w = Walker::new(src, rules, ring, now, max_depth, 0);
    w.mode = Mode::Decrypt {
        selection,
        opener: Opener {
            ring,
            on_failure,
            max_age,
            now,
        },
        auto: matches!(selection, DecryptSelection::Auto),
    };
    let mut report = w.run(input)?;
    if !rules.is_empty() {
        report.paths = matched_paths(rules, &w.hit);
    }
    Ok((w.out, report))
}

enum Mode<'r> {
    Encrypt {
        named: &'r [String],
    },
    Decrypt {
        selection: &'r DecryptSelection,
        opener: Opener<'r>,
        auto: bool,
    },
}

/// One step of the location of the value being walked.
enum Frame<'a> {
    Key(Cow<'a, str>),
    Index(usize),
}

struct Walker<'a, 'r> {
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    /// `src[..copied]` is already in `out` (verbatim or replaced).
    copied: usize,
    max_depth: usize,
    rules: &'r [FieldRule],
    rs: RuleStates<'r>,
    hit: Vec<bool>,
    path: Vec<Frame<'a>>,
    ring: &'r Keyring,
    now: u64,
    mode: Mode<'r>,
    report: TransformReport,
    /// The first sealing or decryption failure: reported once the whole
    /// input is known to be valid JSON (the tree path parsed first).
    failed: Option<StreamError>,
    /// Element counts of arrays, by offset of their `[`, found while
    /// counting an enclosing array (so each array is counted once).
    counts: HashMap<usize, usize>,
    recording: bool,
    /// The route's look-alike automaton (off unless encrypting a request).
    look: &'r LookAlikes,
    /// Object members seen (each once).
    members: usize,
}

/// The automaton of walks that check no look-alikes.
static NO_LOOK_ALIKES: LookAlikes = LookAlikes::OFF;

impl<'a, 'r> Walker<'a, 'r> {
    fn new(
        src: &'a str,
        rules: &'r [FieldRule],
        ring: &'r Keyring,
        now: u64,
        max_depth: usize,
        expected_fields: usize,
    ) -> Walker<'a, 'r> {
        Walker {
            src,
            b: src.as_bytes(),
            pos: 0,
            out: Vec::with_capacity(src.len() + 96 * expected_fields + 64),
            copied: 0,
            max_depth: max_depth.min(SERDE_MAX_DEPTH),
            rules,
            rs: RuleStates::new(rules),
            hit: vec![false; rules.len()],
            path: Vec::new(),
            ring,
            now,
            mode: Mode::Encrypt { named: &[] },
            report: TransformReport::default(),
            failed: None,
            counts: HashMap::new(),
            recording: false,
            look: &NO_LOOK_ALIKES,
            members: 0,
        }
    }

    fn run(&mut self, input: &[u8]) -> Result<TransformReport, StreamError> {
        let walked = self.document();
        match walked {
            Ok(()) => {}
            Err(StreamError::TooDeep { .. }) => {
                // As on the tree path: what serde_json refuses is invalid,
                // the rest is too deep for the configured limit.
                return Err(match serde_json::from_slice::<Value>(input) {
                    Ok(_) => StreamError::TooDeep {
                        limit: self.max_depth,
                    },
                    Err(_) => StreamError::InvalidJson,
                });
            }
            Err(e) => return Err(e),
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let rest = self.b.get(self.copied..).unwrap_or(&[]);
        self.out.extend_from_slice(rest);
        self.copied = self.b.len();
        Ok(std::mem::take(&mut self.report))
    }

    fn document(&mut self) -> Result<(), StreamError> {
        self.ws();
        let la = self.look.start();
        self.value(0, 0, true, la)?;
        self.ws();
        if self.pos != self.b.len() {
            return Err(StreamError::InvalidJson);
        }
        Ok(())
    }

    fn encrypting(&self) -> bool {
        matches!(self.mode, Mode::Encrypt { .. })
    }

    /// Are strings outside the rules looked at (guard, `decrypt: auto`)?
    fn checks_strings(&self) -> bool {
        match self.mode {
            Mode::Encrypt { .. } => true,
            Mode::Decrypt { auto, .. } => auto,
        }
    }

    // -- lexing ------------------------------------------------------------

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), StreamError> {
        if self.b.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(StreamError::InvalidJson)
        }
    }

    fn digits(&mut self) -> usize {
        let from = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - from
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), StreamError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(StreamError::InvalidJson),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(StreamError::InvalidJson);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(StreamError::InvalidJson);
            }
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, StreamError> {
        let digits = self
            .b
            .get(self.pos..self.pos + 4)
            .ok_or(StreamError::InvalidJson)?;
        let mut v = 0u32;
        for d in digits {
            let x = char::from(*d)
                .to_digit(16)
                .ok_or(StreamError::InvalidJson)?;
            v = v * 16 + x;
        }
        self.pos += 4;
        Ok(v)
    }

    /// A string at `pos` (its `"`): returns the range of its contents and
    /// whether it holds escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), StreamError> {
        self.pos += 1;
        let from = self.pos;
        let mut escaped = false;
        loop {
            // Plain bytes in bulk (UTF-8 was checked for the whole input).
            let plain = self
                .b
                .get(self.pos..)
                .unwrap_or(&[])
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            match plain {
                Some(n) => self.pos += n,
                None => return Err(StreamError::InvalidJson),
            }
            match self.peek() {
                None => return Err(StreamError::InvalidJson),
                Some(b'"') => {
                    let to = self.pos;
                    self.pos += 1;
                    return Ok((from, to, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1;
                        }
                        Some(b'u') => {
                            self.pos += 1;
                            match self.hex4()? {
                                0xD800..=0xDBFF => {
                                    if self.b.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                        return Err(StreamError::InvalidJson);
                                    }
                                    self.pos += 2;
                                    if !(0xDC00..=0xDFFF).contains(&self.hex4()?) {
                                        return Err(StreamError::InvalidJson);
                                    }
                                }
                                0xDC00..=0xDFFF => return Err(StreamError::InvalidJson),
                                _ => {}
                            }
                        }
                        _ => return Err(StreamError::InvalidJson),
                    }
                }
                Some(c) if c < 0x20 => return Err(StreamError::InvalidJson),
                Some(_) => self.pos += 1,
            }
        }
    }

    /// The text of string contents `from..to` (validated by `string`).
    fn text(&self, from: usize, to: usize, escaped: bool) -> Result<Cow<'a, str>, StreamError> {
        let src: &'a str = self.src;
        let raw = src.get(from..to).ok_or(StreamError::InvalidJson)?;
        if !escaped {
            return Ok(Cow::Borrowed(raw));
        }
        unescape(raw).map(Cow::Owned)
    }

    // -- walking -----------------------------------------------------------

    /// The value at `pos`, inside `depth` containers, with rule states
    /// `lo..` (the stack's end) and look-alike state `la`. With `track`
    /// false it is only validated.
    fn value(&mut self, depth: usize, lo: usize, track: bool, la: u32) -> Result<(), StreamError> {
        let hi = self.rs.len();
        let track = track && (hi > lo || self.checks_strings());
        let start = self.pos;
        if track && hi > lo {
            if let Some(r) = self.rs.selected(lo, hi) {
                if let Some(h) = self.hit.get_mut(r) {
                    *h = true;
                }
                if self.encrypting() {
                    self.value(depth, hi, false, la)?;
                    return self.seal_selected(r, start, false);
                }
                if self.peek() == Some(b'"') {
                    let (from, to, escaped) = self.string()?;
                    return self.open_string(Some(r), lo, hi, start, from, to, escaped);
                }
            }
        }
        if track {
            if let Some(r) = self.look.accepting(la) {
                // A look-alike (only request walks have an automaton). A
                // container is walked on while a rule may still select
                // inside it; its members are look-alikes too.
                let container = matches!(self.peek(), Some(b'{' | b'['));
                match self.look.mode() {
                    LookAlikeMode::Seal if !container || hi == lo => {
                        self.value(depth, hi, false, la)?;
                        return self.seal_selected(r, start, true);
                    }
                    LookAlikeMode::Refuse if !container => {
                        return self.refuse_look_alike(r, lo, hi, start, depth);
                    }
                    _ => {}
                }
            }
        }
        match self.peek() {
            Some(b'{') => self.object(depth + 1, lo, hi, track, la),
            Some(b'[') => self.array(depth + 1, lo, hi, track, la),
            Some(b'"') => {
                let (from, to, escaped) = self.string()?;
                if track && self.checks_strings() {
                    self.check_string(lo, hi, start, from, to, escaped)?;
                }
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(StreamError::InvalidJson),
        }
    }

    /// After a member or element: `,` (true) or the closing `close` (false).
    fn next_item(&mut self, close: u8) -> Result<bool, StreamError> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                self.ws();
                Ok(true)
            }
            Some(c) if c == close => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(StreamError::InvalidJson),
        }
    }

    fn object(
        &mut self,
        depth: usize,
        lo: usize,
        hi: usize,
        track: bool,
        la: u32,
    ) -> Result<(), StreamError> {
        if depth > self.max_depth {
            return Err(StreamError::TooDeep {
                limit: self.max_depth,
            });
        }
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(StreamError::InvalidJson);
            }
            let (from, to, escaped) = self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(StreamError::InvalidJson);
            }
            self.pos += 1;
            self.ws();
            if !self.recording {
                self.members += 1;
            }
            if track {
                let key = self.text(from, to, escaped)?;
                let start = if hi > lo {
                    self.rs.advance_member(lo, hi, &key)
                } else {
                    hi
                };
                let la = self.look.step(la, &key);
                self.path.push(Frame::Key(key));
                self.value(depth, start, true, la)?;
                self.path.pop();
                self.rs.truncate(start);
            } else {
                self.value(depth, hi, false, la)?;
            }
            if !self.next_item(b'}')? {
                return Ok(());
            }
        }
    }

    fn array(
        &mut self,
        depth: usize,
        lo: usize,
        hi: usize,
        track: bool,
        la: u32,
    ) -> Result<(), StreamError> {
        if depth > self.max_depth {
            return Err(StreamError::TooDeep {
                limit: self.max_depth,
            });
        }
        let open = self.pos;
        let n = if track && hi > lo && self.rs.needs_len(lo, hi) {
            self.element_count(depth, hi)?
        } else {
            UNKNOWN_LEN
        };
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            if self.recording {
                self.counts.insert(open, 0);
            }
            return Ok(());
        }
        let mut j = 0;
        loop {
            if track {
                let start = if hi > lo {
                    self.rs.advance_element(lo, hi, j, n)
                } else {
                    hi
                };
                self.path.push(Frame::Index(j));
                self.value(depth, start, true, la)?;
                self.path.pop();
                self.rs.truncate(start);
            } else {
                self.value(depth, hi, false, la)?;
            }
            j += 1;
            if !self.next_item(b']')? {
                if self.recording {
                    self.counts.insert(open, j);
                }
                return Ok(());
            }
        }
    }

    /// Number of elements of the array at `pos`, which is left unmoved. The
    /// arrays inside are counted on the way, so none is scanned twice.
    fn element_count(&mut self, depth: usize, hi: usize) -> Result<usize, StreamError> {
        let open = self.pos;
        if let Some(n) = self.counts.get(&open) {
            return Ok(*n);
        }
        let was = self.recording;
        self.recording = true;
        let res = self.array(depth, hi, hi, false, 0);
        self.recording = was;
        self.pos = open;
        res?;
        Ok(self.counts.get(&open).copied().unwrap_or(0))
    }

    // -- transforms --------------------------------------------------------

    /// Default context: the nearest member name, or `$`.
    fn location_context(&self) -> Cow<'a, str> {
        for f in self.path.iter().rev() {
            if let Frame::Key(k) = f {
                return k.clone();
            }
        }
        Cow::Borrowed("$")
    }

    fn rule_context(&self, rule: Option<usize>) -> Cow<'a, str> {
        match rule
            .and_then(|r| self.rules.get(r))
            .and_then(|r| r.context.as_deref())
        {
            Some(c) => Cow::Owned(c.to_owned()),
            None => self.location_context(),
        }
    }

    /// Replaces `src[start..pos]` in the output by the JSON of `v`.
    fn replace(&mut self, start: usize, v: &impl serde::Serialize) -> Result<(), StreamError> {
        let before = self.b.get(self.copied..start).unwrap_or(&[]);
        self.out.extend_from_slice(before);
        serde_json::to_writer(&mut self.out, v).map_err(|_| StreamError::Seal)?;
        self.copied = self.pos;
        Ok(())
    }

    /// Encrypt: the value `src[start..pos]` was selected by rule `r`, or
    /// (`look_alike`) is a look-alike of rule `r` on a route that seals
    /// those. A look-alike holding no data (`null`, empty containers) stays.
    fn seal_selected(
        &mut self,
        r: usize,
        start: usize,
        look_alike: bool,
    ) -> Result<(), StreamError> {
        if self.failed.is_some() {
            return Ok(());
        }
        let src: &'a str = self.src;
        let raw = src.get(start..self.pos).ok_or(StreamError::InvalidJson)?;
        let value = if raw.starts_with('"') {
            let inner = raw.get(1..raw.len() - 1).ok_or(StreamError::InvalidJson)?;
            let s = if inner.contains('\\') {
                unescape(inner)?
            } else {
                inner.to_owned()
            };
            Value::String(s)
        } else {
            serde_json::from_str(raw).map_err(|_| StreamError::InvalidJson)?
        };
        if look_alike && !carries_data(&value) {
            return Ok(());
        }
        let context = if look_alike {
            self.look_alike_context(r)
        } else {
            self.rule_context(Some(r))
        };
        if let Value::String(s) = &value {
            if looks_like_envelope(s) && self.ring.open_at(s, &context, None, self.now).is_ok() {
                return Ok(());
            }
        }
        match self.ring.seal_at(&value, &context, self.now) {
            Ok(sealed) => {
                self.replace(start, &sealed)?;
                self.report.encrypted += 1;
                if let Some(h) = self.hit.get_mut(r) {
                    *h = true;
                }
            }
            Err(e) => self.failed = Some(e.into()),
        }
        Ok(())
    }

    /// A look-alike is sealed with its rule's context, else with the last
    /// part of the nearest member name (`number` for `"card.number"`): the
    /// name the backend stores it under and answers it at, where the
    /// route's decrypt rule opens it.
    fn look_alike_context(&self, r: usize) -> Cow<'a, str> {
        if let Some(c) = self.rules.get(r).and_then(|r| r.context.as_deref()) {
            return Cow::Owned(c.to_owned());
        }
        for f in self.path.iter().rev() {
            if let Frame::Key(k) = f {
                return match name_parts(k).last() {
                    Some(p) if p.len() < k.len() => Cow::Owned(p.to_owned()),
                    _ => k.clone(),
                };
            }
        }
        Cow::Borrowed("$")
    }

    /// Refuse mode: the scalar at `pos` is a look-alike of rule `r`. Data
    /// fails the request once the whole input is known to be JSON; `null`
    /// carries none, and a string with the reserved prefix is never
    /// forwarded as it is anyway (the guard keeps or seals it).
    fn refuse_look_alike(
        &mut self,
        r: usize,
        lo: usize,
        hi: usize,
        start: usize,
        depth: usize,
    ) -> Result<(), StreamError> {
        match self.peek() {
            Some(b'n') => return self.literal(b"null"),
            Some(b'"') => {
                let (from, to, escaped) = self.string()?;
                let raw = self.b.get(from..to).unwrap_or(&[]);
                let reserved = if escaped {
                    looks_like_envelope(&self.text(from, to, escaped)?)
                } else {
                    raw.starts_with(crate::crypto::PREFIX.as_bytes())
                };
                if reserved {
                    return self.check_string(lo, hi, start, from, to, escaped);
                }
            }
            _ => self.value(depth, hi, false, 0)?,
        }
        if self.failed.is_none() {
            let names = self.rules.get(r).map_or(&[][..], |r| r.path.names());
            self.failed = Some(StreamError::LookAlike {
                rule: self
                    .rules
                    .get(r)
                    .map_or_else(String::new, |r| r.path.as_str().to_owned()),
                location: redacted_path(&steps(&self.path), names),
            });
        }
        Ok(())
    }

    /// A string outside the rules: the reserved-prefix guard (encrypt) or
    /// `decrypt: auto`.
    fn check_string(
        &mut self,
        lo: usize,
        hi: usize,
        start: usize,
        from: usize,
        to: usize,
        escaped: bool,
    ) -> Result<(), StreamError> {
        let raw = self.b.get(from..to).unwrap_or(&[]);
        if !escaped && !raw.starts_with(crate::crypto::PREFIX.as_bytes()) {
            return Ok(());
        }
        if let Mode::Decrypt { .. } = self.mode {
            return self.open_string(None, lo, hi, start, from, to, escaped);
        }
        let Mode::Encrypt { named } = self.mode else {
            return Ok(());
        };
        if self.failed.is_some() {
            return Ok(());
        }
        let s = self.text(from, to, escaped)?;
        if !looks_like_envelope(&s) {
            return Ok(());
        }
        let context = self.location_context();
        let genuine = self.ring.open_at(&s, &context, None, self.now).is_ok()
            || named
                .iter()
                .any(|c| self.ring.open_at(&s, c, None, self.now).is_ok());
        if genuine {
            return Ok(());
        }
        match self
            .ring
            .seal_at(&Value::String(s.into_owned()), &context, self.now)
        {
            Ok(sealed) => {
                self.replace(start, &sealed)?;
                self.report.encrypted += 1;
            }
            Err(e) => self.failed = Some(e.into()),
        }
        Ok(())
    }

    /// Decrypt: the string `src[start..pos]` (contents `from..to`) is
    /// selected by rule `rule` (None: `auto`); its states are `lo..hi`.
    #[allow(clippy::too_many_arguments)]
    fn open_string(
        &mut self,
        rule: Option<usize>,
        lo: usize,
        hi: usize,
        start: usize,
        from: usize,
        to: usize,
        escaped: bool,
    ) -> Result<(), StreamError> {
        if self.failed.is_some() {
            return Ok(());
        }
        let s = self.text(from, to, escaped)?;
        if !looks_like_envelope(&s) {
            return Ok(());
        }
        let (selection, opener) = match self.mode {
            Mode::Decrypt {
                selection, opener, ..
            } => (selection, opener),
            Mode::Encrypt { .. } => return Ok(()),
        };
        let context = self.rule_context(rule);
        match self.ring.open_at(&s, &context, opener.max_age, self.now) {
            Ok(opened) => {
                note_key(&mut self.report.key_ids, &opened.key_id);
                self.report.decrypted += 1;
                let mut value = opened.value;
                if matches!(value, Value::Object(_) | Value::Array(_)) {
                    // A decrypted value may itself hold envelopes: as on the
                    // tree path, the walk goes on inside it.
                    let steps = steps(&self.path);
                    let res = opener.open_within(
                        &mut value,
                        selection,
                        self.rs.states(lo, hi),
                        &steps,
                        &mut self.report,
                        &mut self.hit,
                    );
                    drop(steps);
                    match res {
                        Ok(()) => {}
                        Err(FieldError::Decrypt(f)) => {
                            self.failed = Some(StreamError::Decrypt(f));
                            return Ok(());
                        }
                        Err(FieldError::Seal) => {
                            self.failed = Some(StreamError::Seal);
                            return Ok(());
                        }
                    }
                }
                self.replace(start, &value)?;
            }
            Err(e) => {
                let names = rule
                    .and_then(|r| self.rules.get(r))
                    .map_or(&[][..], |r| r.path.names());
                let failure = failure_for(&steps(&self.path), &s, e, names);
                match opener.on_failure {
                    OnDecryptFailure::Error => {
                        self.failed = Some(StreamError::Decrypt(failure));
                        return Ok(());
                    }
                    OnDecryptFailure::Null => self.replace(start, &Value::Null)?,
                    OnDecryptFailure::Keep => {}
                }
                self.report.failures.push(failure);
            }
        }
        Ok(())
    }
}

/// The location `path` as `fields` steps.
fn steps<'p>(path: &'p [Frame<'_>]) -> Vec<Step<'p>> {
    path.iter()
        .map(|f| match f {
            Frame::Key(k) => Step::Key(k),
            Frame::Index(i) => Step::Index(*i),
        })
        .collect()
}

/// Decodes the escapes of valid JSON string contents.
fn unescape(raw: &str) -> Result<String, StreamError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('\\') {
        out.push_str(rest.get(..i).ok_or(StreamError::InvalidJson)?);
        let esc = rest.get(i + 1..).ok_or(StreamError::InvalidJson)?;
        let mut chars = esc.chars();
        let c = match chars.next() {
            Some('"') => '"',
            Some('\\') => '\\',
            Some('/') => '/',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('u') => {
                let hi = hex4(esc.get(1..5))?;
                let (code, used) = if (0xD800..=0xDBFF).contains(&hi) {
                    if esc.get(5..7) != Some("\\u") {
                        return Err(StreamError::InvalidJson);
                    }
                    let lo = hex4(esc.get(7..11))?;
                    if !(0xDC00..=0xDFFF).contains(&lo) {
                        return Err(StreamError::InvalidJson);
                    }
                    (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), 11)
                } else {
                    (hi, 5)
                };
                out.push(char::from_u32(code).ok_or(StreamError::InvalidJson)?);
                rest = esc.get(used..).ok_or(StreamError::InvalidJson)?;
                continue;
            }
            _ => return Err(StreamError::InvalidJson),
        };
        out.push(c);
        rest = esc.get(1..).ok_or(StreamError::InvalidJson)?;
    }
    out.push_str(rest);
    Ok(out)
}

fn hex4(digits: Option<&str>) -> Result<u32, StreamError> {
    let d = digits.ok_or(StreamError::InvalidJson)?;
    if !d.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StreamError::InvalidJson);
    }
    u32::from_str_radix(d, 16).map_err(|_| StreamError::InvalidJson)
}
