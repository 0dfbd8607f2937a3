//! The one walk over a document's bytes, without building a
//! `serde_json::Value` tree: every transform, validation and scan runs it.
//!
//! The input is validated strictly against RFC 8259 while it is walked (one
//! JSON value, whitespace around it, UTF-8, no raw control characters in
//! strings, valid escapes and surrogate pairs, the number grammar, nesting
//! depth). Anything serde_json would refuse is refused: a difference between
//! what this proxy parses and what a backend parses would be a bypass.
//!
//! Rule states follow `select`. Bytes that are not replaced are copied
//! verbatim, so whitespace, key order, escapes and number spelling are kept.
//! Only a selected value is turned into a `Value` (to seal it), and only an
//! opened envelope is serialized. Member names are matched unescaped, and
//! every occurrence of a duplicated member is visited. What happens to each
//! value is `policy`'s decision; an opened container is walked on inside,
//! since it may hold envelopes the rules select. A sealing or decryption
//! failure is reported once the whole input is known to be valid JSON:
//! invalid JSON first, then too deep, then the rest.
//!
//! On request bodies, `encrypt` applies a route's positive model (`shape`):
//! each value carries the state of the look-alike automaton, stepped once
//! per member name, and a value no rule selects in an accepting state is
//! refused or sealed; `encrypt_request` adds the route's JSON Schema.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;

use super::index::IndexRule;
use super::location::{self, Step};
use super::names::{names_match, MemberKey};
use super::policy::{self, Verdict};
use super::select::{RuleStates, UNKNOWN_LEN};
use super::shape::{carries_data, JsonReferences, LookAlikeMode, LookAlikes};
use super::{
    matched_paths, name_parts, FieldRule, Keys, OpenSpec, SealSpec, TransformError, TransformReport,
};
use crate::crypto::index::IndexKey;
use crate::crypto::{
    envelope_key_id, exceeds_depth, has_envelope_prefix, looks_like_envelope, AeadScratch, Keyring,
    SubjectKeys,
};

/// The deepest nesting serde_json parses (its recursion limit): no
/// transform accepts deeper documents.
pub const SERDE_MAX_DEPTH: usize = 127;

type Out = Result<(Vec<u8>, TransformReport), TransformError>;

/// Seals the values `spec`'s rules select in the document `input`, with
/// the route's look-alike policy and the reserved-prefix guard; no schema.
/// Returns the document with the sealed values in place.
pub fn encrypt(input: &[u8], spec: &SealSpec, keys: Keys<'_>, now: u64) -> Out {
    encrypt_counting(input, spec, keys, now).map(|(o, r, _)| (o, r))
}

/// The request transform of an encrypting route: `encrypt`, after the
/// route's schema (if any) accepted the body. Nothing of a refused body may
/// be forwarded.
pub fn encrypt_request(input: &[u8], spec: &SealSpec, keys: Keys<'_>, now: u64) -> Out {
    let Some(schema) = &spec.shape.schema else {
        return encrypt(input, spec, keys, now);
    };
    // Only routes with a schema build a tree. Errors come in the order of
    // the plain transform: invalid JSON, too deep, then the rest.
    let doc: Value = serde_json::from_slice(input).map_err(|_| TransformError::InvalidJson)?;
    let limit = spec.max_depth.min(SERDE_MAX_DEPTH);
    if exceeds_depth(&doc, limit) {
        return Err(TransformError::TooDeep { limit });
    }
    if !schema.is_valid(&doc) {
        return Err(TransformError::Schema);
    }
    let (out, report, members) = encrypt_counting(input, spec, keys, now)?;
    // The tree keeps one of each repeated member, the walk saw them all:
    // the schema judged one value where a backend may read another.
    if members != member_count(&doc) {
        return Err(TransformError::DuplicateMember);
    }
    Ok((out, report))
}

/// Also returns the number of object members in the input.
fn encrypt_counting(
    input: &[u8],
    spec: &SealSpec,
    keys: Keys<'_>,
    now: u64,
) -> Result<(Vec<u8>, TransformReport, usize), TransformError> {
    let src = std::str::from_utf8(input).map_err(|_| TransformError::InvalidJson)?;
    run_sealing(sealing_walker(src, spec, keys, now), spec, keys)
}

/// The walk of `encrypt` over `src`, set up for the route's spec.
fn sealing_walker<'a, 'r>(
    src: &'a str,
    spec: &'r SealSpec,
    keys: Keys<'r>,
    now: u64,
) -> Walker<'a, 'r> {
    let mut w = Walker::new(src, &spec.rules, Mode::Encrypt { spec, keys }, now);
    if !spec.indexes.is_empty() {
        w.index_rules = spec.indexes.rules();
        w.irs = RuleStates::new(spec.indexes.walk_rules());
        w.ihi = w.irs.len();
    }
    w.max_depth = spec.max_depth.min(SERDE_MAX_DEPTH);
    w.look = &spec.shape.look_alikes;
    w.refuses_references = spec.shape.references == JsonReferences::Refuse;
    w
}

fn run_sealing(
    mut w: Walker<'_, '_>,
    spec: &SealSpec,
    keys: Keys<'_>,
) -> Result<(Vec<u8>, TransformReport, usize), TransformError> {
    let mut report = w.run(w.b)?;
    if report.encrypted > 0 {
        report.key_ids.push(keys.seal.id().to_owned());
    }
    report.paths = matched_paths(&spec.rules, &w.hit);
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

/// Opens the envelopes `spec` selects in the document `input`, with the
/// rule's context (or the place's) and `max_age`; other values stay.
/// `InvalidJson` / `TooDeep` mean nothing was opened.
pub fn decrypt(input: &[u8], spec: &OpenSpec, ring: &Keyring, now: u64) -> Out {
    decrypt_with(input, spec, ring, SubjectKeys::none(), now)
}

/// `decrypt`, with the tenant or subject keys that open `fs2` envelopes.
pub fn decrypt_with(
    input: &[u8],
    spec: &OpenSpec,
    ring: &Keyring,
    subjects: &SubjectKeys,
    now: u64,
) -> Out {
    let src = std::str::from_utf8(input).map_err(|_| TransformError::InvalidJson)?;
    let rules = spec.rules();
    let mut w = Walker::new(
        src,
        rules,
        Mode::Decrypt {
            spec,
            ring,
            subjects,
        },
        now,
    );
    let mut report = w.run(input)?;
    if !rules.is_empty() {
        report.paths = matched_paths(rules, &w.hit);
    }
    Ok((w.out, report))
}

/// Re-encrypts every envelope in the document `input` under the sealing
/// key, same context and type; plaintext never leaves the walk.
///
/// With `rules`, the values they select are opened with their contexts,
/// and every other envelope not yet under the sealing key with its place's
/// default context; without, every envelope with its place's context (so
/// envelopes sealed under a named context need the rules). Every envelope
/// opened is authenticated; those already under the sealing key stay as
/// they are, the others are re-sealed keeping their first `issued_at`.
/// `now` is only the clock of the authentication (no `max_age` applies).
/// Counts: `decrypted` = envelopes opened, `encrypted` = envelopes
/// re-sealed, `key_ids` = key ids the envelopes were found under.
pub fn rewrap(input: &[u8], rules: Option<&[FieldRule]>, keys: Keys<'_>, now: u64) -> Out {
    let src = std::str::from_utf8(input).map_err(|_| TransformError::InvalidJson)?;
    let mode = Mode::Rewrap {
        keys,
        has_rules: rules.is_some(),
    };
    let rules = rules.unwrap_or(&[]);
    let mut w = Walker::new(src, rules, mode, now);
    let mut report = w.run(input)?;
    if !rules.is_empty() {
        report.paths = matched_paths(rules, &w.hit);
    }
    Ok((w.out, report))
}

/// Is `input` one valid JSON document nesting at most `max_depth` levels
/// (and at most serde_json's)?
pub fn validate(input: &[u8], max_depth: usize) -> Result<(), TransformError> {
    let src = std::str::from_utf8(input).map_err(|_| TransformError::InvalidJson)?;
    let mut w = Walker::new(src, &[], Mode::Validate, 0);
    w.max_depth = max_depth.min(SERDE_MAX_DEPTH);
    w.run(input).map(|_| ())
}

/// `validate`, and then: does a tree of `input` (`doc`) hold every object
/// member of it? A tree keeps one of each repeated member, the walk sees
/// them all.
pub(crate) fn tree_is_whole(
    input: &[u8],
    doc: &Value,
    max_depth: usize,
) -> Result<bool, TransformError> {
    let src = std::str::from_utf8(input).map_err(|_| TransformError::InvalidJson)?;
    let mut w = Walker::new(src, &[], Mode::Validate, 0);
    w.max_depth = max_depth.min(SERDE_MAX_DEPTH);
    w.run(input)?;
    Ok(w.members == member_count(doc))
}

/// Normalized paths (RFC 9535 §2.7) of the values `rules` select in the
/// document `input`, in document order, each once.
pub fn locations(input: &[u8], rules: &[FieldRule]) -> Result<Vec<String>, TransformError> {
    let src = std::str::from_utf8(input).map_err(|_| TransformError::InvalidJson)?;
    let mut w = Walker::new(src, rules, Mode::Select, 0);
    w.run(input)?;
    Ok(w.found)
}

/// Where `scan_strings` found a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringKind {
    /// A string value.
    Value,
    /// An object member's name.
    MemberName,
}

/// Calls `f` on every string of the document `input`, unescaped, member
/// names included (every occurrence of a repeated one), in document order,
/// as the walk goes: on `Err` the calls so far were about a document that
/// turned out invalid.
pub fn scan_strings(
    input: &[u8],
    mut f: impl FnMut(&str, StringKind),
) -> Result<(), TransformError> {
    let src = std::str::from_utf8(input).map_err(|_| TransformError::InvalidJson)?;
    let mut w = Walker::new(src, &[], Mode::Scan, 0);
    w.scan = Some(&mut f);
    w.run(input).map(|_| ())
}

/// What a walk does with what it finds.
#[derive(Clone, Copy)]
enum Mode<'r> {
    /// Only validate.
    Validate,
    /// Record the locations the rules select.
    Select,
    /// Hand every string to the scan callback.
    Scan,
    Encrypt {
        spec: &'r SealSpec,
        keys: Keys<'r>,
    },
    Decrypt {
        spec: &'r OpenSpec,
        ring: &'r Keyring,
        subjects: &'r SubjectKeys,
    },
    Rewrap {
        keys: Keys<'r>,
        has_rules: bool,
    },
}

impl Mode<'_> {
    /// Are strings outside the rules looked at (the guard, `decrypt: auto`,
    /// rewrap, scans)?
    fn checks_strings(&self) -> bool {
        match self {
            Mode::Validate | Mode::Select => false,
            Mode::Scan | Mode::Encrypt { .. } | Mode::Rewrap { .. } => true,
            Mode::Decrypt { spec, .. } => spec.rules().is_empty(),
        }
    }
}

struct Walker<'a, 'r> {
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    /// `src[..copied]` is already in `out` (verbatim or replaced).
    copied: usize,
    /// Whether the walk writes `out` (a transform) or only reads.
    copies: bool,
    max_depth: usize,
    rules: &'r [FieldRule],
    rs: RuleStates<'r>,
    hit: Vec<bool>,
    path: Vec<Step<'a>>,
    now: u64,
    mode: Mode<'r>,
    checks_strings: bool,
    report: TransformReport,
    /// The first sealing or decryption failure: reported once the whole
    /// input is known to be valid JSON.
    failed: Option<TransformError>,
    /// Element counts of arrays, by offset of their `[`, found while
    /// counting an enclosing array (so each array is counted once).
    counts: HashMap<usize, usize>,
    recording: bool,
    /// The route's look-alike automaton (off unless encrypting).
    look: &'r LookAlikes,
    /// Members named `$ref` or `$values` fail the walk (`json_references`).
    refuses_references: bool,
    /// Object members seen (each once).
    members: usize,
    /// `Select`: the locations found.
    found: Vec<String>,
    /// `Scan`: the callback.
    scan: Option<&'r mut ScanFn<'r>>,
    /// The buffers every value sealed or opened reuses.
    aead: AeadScratch,
    /// Encrypt: the route's blind indexes, written beside their fields.
    index_rules: &'r [IndexRule],
    /// The states of the index walk rules (`IndexRules`: rule `i`'s field
    /// is walk rule `2i`, the member it writes `2i + 1`), stepped with
    /// `rs`; the current value's are `ilo..ihi`.
    irs: RuleStates<'r>,
    ilo: usize,
    ihi: usize,
    /// The index keys, by rule, derived when first used.
    index_keys: Vec<Option<IndexKey>>,
    /// Encrypt: values outside every rule take `guard`'s loop (off only in
    /// tests, to compare it with the walk value by value).
    guard_loop: bool,
}

type ScanFn<'r> = dyn FnMut(&str, StringKind) + 'r;

/// The automaton of walks that check no look-alikes.
static NO_LOOK_ALIKES: LookAlikes = LookAlikes::OFF;

impl<'a, 'r> Walker<'a, 'r> {
    #[inline]
    fn new(src: &'a str, rules: &'r [FieldRule], mode: Mode<'r>, now: u64) -> Walker<'a, 'r> {
        // Room for the envelopes of the fields a request usually has.
        let grows = match mode {
            Mode::Encrypt { spec, .. } => 96 * rules.len() + 48 * spec.indexes.len() + 64,
            Mode::Validate | Mode::Select | Mode::Scan => 0,
            Mode::Decrypt { .. } | Mode::Rewrap { .. } => 64,
        };
        let copies = !matches!(mode, Mode::Validate | Mode::Select | Mode::Scan);
        Walker {
            src,
            b: src.as_bytes(),
            pos: 0,
            out: Vec::with_capacity(if copies { src.len() + grows } else { 0 }),
            copied: 0,
            copies,
            max_depth: SERDE_MAX_DEPTH,
            rules,
            rs: RuleStates::new(rules),
            hit: vec![false; rules.len()],
            path: Vec::new(),
            now,
            checks_strings: mode.checks_strings(),
            mode,
            report: TransformReport::default(),
            failed: None,
            counts: HashMap::new(),
            recording: false,
            look: &NO_LOOK_ALIKES,
            refuses_references: false,
            members: 0,
            found: Vec::new(),
            scan: None,
            aead: AeadScratch::default(),
            index_rules: &[],
            irs: RuleStates::new(&[]),
            ilo: 0,
            ihi: 0,
            index_keys: Vec::new(),
            guard_loop: true,
        }
    }

    fn run(&mut self, input: &[u8]) -> Result<TransformReport, TransformError> {
        match self.document() {
            Ok(()) => {}
            Err(TransformError::TooDeep { .. }) => {
                // What serde_json refuses is invalid, the rest is too deep
                // for the configured limit.
                return Err(match serde_json::from_slice::<Value>(input) {
                    Ok(_) => TransformError::TooDeep {
                        limit: self.max_depth,
                    },
                    Err(_) => TransformError::InvalidJson,
                });
            }
            Err(e) => return Err(e),
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.copies {
            let rest = self.b.get(self.copied..).unwrap_or(&[]);
            self.out.extend_from_slice(rest);
            self.copied = self.b.len();
        }
        Ok(std::mem::take(&mut self.report))
    }

    fn document(&mut self) -> Result<(), TransformError> {
        self.ws();
        let la = self.look.start();
        self.value(0, 0, true, la)?;
        self.ws();
        if self.pos != self.b.len() {
            return Err(TransformError::InvalidJson);
        }
        Ok(())
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

    fn literal(&mut self, word: &[u8]) -> Result<(), Invalid> {
        if self.b.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Invalid)
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
    fn number(&mut self) -> Result<(), Invalid> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Invalid),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(Invalid);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(Invalid);
            }
        }
        Ok(())
    }

    /// A literal or a number at `pos` (anything else there is invalid).
    #[inline(always)]
    fn scalar(&mut self) -> Result<(), Invalid> {
        match self.peek() {
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Invalid),
        }
    }

    fn hex4(&mut self) -> Result<u32, Invalid> {
        let digits = self.b.get(self.pos..self.pos + 4).ok_or(Invalid)?;
        let mut v = 0u32;
        for d in digits {
            let x = char::from(*d).to_digit(16).ok_or(Invalid)?;
            v = v * 16 + x;
        }
        self.pos += 4;
        Ok(v)
    }

    /// A string at `pos` (its `"`): returns the range of its contents and
    /// whether it holds escapes. Inlined, so the range stays in registers:
    /// only the flag comes back from the lexing loop.
    #[inline(always)]
    fn string(&mut self) -> Result<(usize, usize, bool), Invalid> {
        let from = self.pos + 1;
        // Most member names and many values end within their first sixteen
        // bytes: a word test per eight bytes here, with no call.
        let mut resume = from;
        for _ in 0..2 {
            let Some(w) = self.b.get(resume..).and_then(word) else {
                break;
            };
            match word_end(w) {
                WordEnd::Quote(n) => {
                    self.pos = resume + n + 1;
                    return Ok((from, resume + n, false));
                }
                WordEnd::Plain => resume += 8,
                WordEnd::Other => break,
            }
        }
        self.pos = resume;
        let escaped = self.string_contents()?;
        // `pos` is past the closing quote.
        Ok((from, self.pos - 1, escaped))
    }

    /// Lexes string contents from `pos` up to and past the closing quote;
    /// returns whether they hold escapes.
    fn string_contents(&mut self) -> Result<bool, Invalid> {
        let mut escaped = false;
        loop {
            // Plain bytes in bulk (UTF-8 was checked for the whole input).
            match plain_run(self.b.get(self.pos..).unwrap_or(&[])) {
                Some(n) => self.pos += n,
                None => return Err(Invalid),
            }
            match self.peek() {
                None => return Err(Invalid),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
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
                                        return Err(Invalid);
                                    }
                                    self.pos += 2;
                                    if !(0xDC00..=0xDFFF).contains(&self.hex4()?) {
                                        return Err(Invalid);
                                    }
                                }
                                0xDC00..=0xDFFF => return Err(Invalid),
                                _ => {}
                            }
                        }
                        _ => return Err(Invalid),
                    }
                }
                Some(c) if c < 0x20 => return Err(Invalid),
                Some(_) => self.pos += 1,
            }
        }
    }

    /// Do the unescaped string contents `from..to` start with `fs1:` or `fs2:`?
    fn reserved(&self, from: usize, to: usize) -> bool {
        self.b.get(from..to).is_some_and(has_envelope_prefix)
    }

    /// The text of string contents `from..to` (validated by `string`).
    fn text(&self, from: usize, to: usize, escaped: bool) -> Result<Cow<'a, str>, TransformError> {
        unescaped(self.src, from, to, escaped)
    }

    // -- walking -----------------------------------------------------------

    /// The value at `pos`, inside `depth` containers, with rule states
    /// `lo..` (the stack's end) and look-alike state `la`. With `track`
    /// false it is only validated.
    fn value(
        &mut self,
        depth: usize,
        lo: usize,
        track: bool,
        la: u32,
    ) -> Result<(), TransformError> {
        let hi = self.rs.len();
        let track = track && (hi > lo || self.checks_strings);
        if !track && !self.recording {
            return self.skip(depth);
        }
        if track
            && hi == lo
            && self.ihi == self.ilo
            && self.guard_loop
            && matches!(self.mode, Mode::Encrypt { .. })
            && self.scan.is_none()
            && matches!(self.peek(), Some(b'{' | b'['))
            && self.look.accepting(la).is_none()
        {
            return self.guard(depth, hi, la);
        }
        let start = self.pos;
        if track && hi > lo {
            if let Some(r) = self.rs.selected(lo, hi) {
                if let Some(h) = self.hit.get_mut(r) {
                    *h = true;
                }
                match &self.mode {
                    Mode::Encrypt { .. } => {
                        self.value(depth, hi, false, la)?;
                        return self.seal_value(r, start, false);
                    }
                    Mode::Select => self.found.push(location::normalized(&self.path)),
                    Mode::Decrypt { .. } | Mode::Rewrap { .. } if self.peek() == Some(b'"') => {
                        let (from, to, escaped) = self.string()?;
                        return self.at_string(Some(r), lo, hi, start, (from, to, escaped));
                    }
                    _ => {}
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
                    // A container no rule selects inside is sealed whole
                    // (if it carries data); one a rule may select inside is
                    // sealed whole only if it carries data, else walked so
                    // the rule seals what it selects.
                    LookAlikeMode::Seal
                        if !container || hi == lo || self.carries_data_ahead(depth, hi, la)? =>
                    {
                        self.value(depth, hi, false, la)?;
                        return self.seal_value(r, start, true);
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
                // Most strings are plain data: only one that spells the
                // reserved prefix (or any string, for a scan) goes further.
                if track
                    && self.checks_strings
                    && (escaped || self.scan.is_some() || self.reserved(from, to))
                {
                    self.at_string(None, lo, hi, start, (from, to, escaped))?;
                }
                Ok(())
            }
            _ => Ok(self.scalar()?),
        }
    }

    /// Does the value at `pos` carry data (`shape::carries_data`)? The
    /// position is left unmoved and nothing is counted.
    fn carries_data_ahead(
        &mut self,
        depth: usize,
        hi: usize,
        la: u32,
    ) -> Result<bool, TransformError> {
        let start = self.pos;
        let was = self.recording;
        self.recording = true;
        let res = self.value(depth, hi, false, la);
        self.recording = was;
        let end = self.pos;
        self.pos = start;
        res?;
        let raw = self.src.get(start..end).or_invalid()?;
        let v: Value = serde_json::from_str(raw).map_err(|_| TransformError::InvalidJson)?;
        Ok(carries_data(&v))
    }

    fn within_depth(&self, depth: usize) -> Result<(), TransformError> {
        if depth > self.max_depth {
            return Err(TransformError::TooDeep {
                limit: self.max_depth,
            });
        }
        Ok(())
    }

    /// After a member or element: `,` (true) or the closing `close` (false).
    fn next_item(&mut self, close: u8) -> Result<bool, Invalid> {
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
            _ => Err(Invalid),
        }
    }

    fn object(
        &mut self,
        depth: usize,
        lo: usize,
        hi: usize,
        track: bool,
        la: u32,
    ) -> Result<(), TransformError> {
        self.within_depth(depth)?;
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        // Index rules whose field this object holds (one bit per rule).
        let mut indexed_here = 0u64;
        loop {
            let (from, to, escaped) = self.member_head()?;
            if !self.recording {
                self.members += 1;
            }
            if track {
                let key = self.text(from, to, escaped)?;
                if let Some(scan) = self.scan.as_mut() {
                    scan(&key, StringKind::MemberName);
                }
                let (ilo, ihi) = (self.ilo, self.ihi);
                let (start, istart) = if ihi > ilo {
                    let member = MemberKey::new(&key);
                    let start = if hi > lo {
                        self.rs.advance_key(lo, hi, &member)
                    } else {
                        hi
                    };
                    (start, self.irs.advance_key(ilo, ihi, &member))
                } else if hi > lo {
                    (self.rs.advance_member(lo, hi, &key), ihi)
                } else {
                    (hi, ihi)
                };
                let writes = match ihi > ilo {
                    true => self.index_member(istart, &mut indexed_here),
                    false => 0,
                };
                if let Some(r) = self.look.accepting(la) {
                    // A member name inside a look-alike is data
                    // (`{"ssn": {"078-05-1120": null}}`) and cannot be
                    // sealed where it stands: unless a rule seals the
                    // member's value (and so names the member), the
                    // request is refused. (Seal mode seals such an object
                    // whole before it gets here.)
                    if self.rs.selected(start, self.rs.len()).is_none() {
                        self.look_alike_failure(r);
                    }
                }
                if self.refuses_references && is_reference_member(&key) {
                    self.fail(TransformError::Reference);
                }
                let la = self.look.step(la, &key);
                self.path.push(Step::Key(key));
                let value_start = self.pos;
                if ihi > ilo {
                    (self.ilo, self.ihi) = (istart, self.irs.len());
                }
                self.value(depth, start, true, la)?;
                if writes != 0 {
                    self.write_indexes(writes, value_start)?;
                }
                if ihi > ilo {
                    self.irs.truncate(istart);
                    (self.ilo, self.ihi) = (ilo, ihi);
                }
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
    ) -> Result<(), TransformError> {
        self.within_depth(depth)?;
        let open = self.pos;
        let (ilo, ihi) = (self.ilo, self.ihi);
        let n = if track
            && ((hi > lo && self.rs.needs_len(lo, hi))
                || (ihi > ilo && self.irs.needs_len(ilo, ihi)))
        {
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
                if ihi > ilo {
                    let istart = self.irs.advance_element(ilo, ihi, j, n);
                    (self.ilo, self.ihi) = (istart, self.irs.len());
                }
                self.path.push(Step::Index(j));
                self.value(depth, start, true, la)?;
                self.path.pop();
                self.rs.truncate(start);
                if ihi > ilo {
                    self.irs.truncate(self.ilo);
                    (self.ilo, self.ihi) = (ilo, ihi);
                }
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

    /// A value nothing looks into (not tracked, not recording), inside
    /// `depth` containers: validated and stepped over in one loop, the open
    /// containers kept as bits of a word instead of a call per value.
    /// Accepts exactly what `value` accepts, with the same depth limit, and
    /// counts the members.
    fn skip(&mut self, depth: usize) -> Result<(), TransformError> {
        // Bit `i` set: the `i`-th open container (outermost first) is an object.
        let mut objects: u64 = 0;
        let mut open = 0usize;
        loop {
            // A value at `pos`.
            match self.peek() {
                Some(b'{' | b'[') if open == 64 => {
                    // Deeper than the word holds: this container in a call
                    // of its own (once every 64 levels).
                    self.skip(depth + open)?;
                }
                Some(c @ (b'{' | b'[')) => {
                    self.within_depth(depth + open + 1)?;
                    self.pos += 1;
                    self.ws();
                    let object = c == b'{';
                    if self.peek() == Some(if object { b'}' } else { b']' }) {
                        self.pos += 1;
                    } else {
                        let bit = 1u64 << open;
                        objects = if object {
                            objects | bit
                        } else {
                            objects & !bit
                        };
                        open += 1;
                        if object {
                            self.member_name()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                _ => self.scalar()?,
            }
            // After a value: close the containers that end here, up to
            // the next value.
            loop {
                let Some(top) = open.checked_sub(1) else {
                    return Ok(());
                };
                let object = objects >> top & 1 == 1;
                if !self.next_item(if object { b'}' } else { b']' })? {
                    open = top;
                    continue;
                }
                if object {
                    self.member_name()?;
                }
                break;
            }
        }
    }

    /// Encrypt, at a value outside every rule and index rule (states
    /// `hi..hi`) whose look-alike state `la` does not accept: what the walk
    /// does there, in one loop with the open containers on a fixed stack
    /// instead of a call of `value` and a path step per value. Member names
    /// are counted, checked for references and stepped through the
    /// look-alike automaton; strings are checked for escapes and the
    /// reserved prefix. A value that needs more (one whose look-alike state
    /// accepts, a string the guard must read, a container past the stack)
    /// gets the walk itself, with the path built from the stack.
    fn guard(&mut self, depth: usize, hi: usize, la: u32) -> Result<(), TransformError> {
        let mut stack = [Level::default(); GUARD_LEVELS];
        let mut open = 0usize;
        // The look-alike state of the value at `pos`.
        let mut la = la;
        loop {
            let start = self.pos;
            match self.peek() {
                _ if self.look.accepting(la).is_some() => {
                    let base = self.enter_path(&stack[..open])?;
                    let res = self.value(depth + open, hi, true, la);
                    self.path.truncate(base);
                    res?;
                }
                Some(b'{' | b'[') if open == GUARD_LEVELS => {
                    let base = self.enter_path(&stack[..open])?;
                    let res = self.value(depth + open, hi, true, la);
                    self.path.truncate(base);
                    res?;
                }
                Some(c @ (b'{' | b'[')) => {
                    self.within_depth(depth + open + 1)?;
                    self.pos += 1;
                    self.ws();
                    let object = c == b'{';
                    if self.peek() == Some(if object { b'}' } else { b']' }) {
                        self.pos += 1;
                    } else {
                        let level = stack.get_mut(open).or_invalid()?;
                        *level = Level {
                            la,
                            object,
                            ..Level::default()
                        };
                        open += 1;
                        if object {
                            la = self.guard_member(level)?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    let (from, to, escaped) = self.string()?;
                    if escaped || self.reserved(from, to) {
                        let base = self.enter_path(&stack[..open])?;
                        let res = self.at_string(None, hi, hi, start, (from, to, escaped));
                        self.path.truncate(base);
                        res?;
                    }
                }
                _ => self.scalar()?,
            }
            // After a value: close the containers that end here, up to
            // the next value.
            loop {
                let Some(top) = open.checked_sub(1) else {
                    return Ok(());
                };
                let level = stack.get_mut(top).or_invalid()?;
                if !self.next_item(if level.object { b'}' } else { b']' })? {
                    open = top;
                    continue;
                }
                la = if level.object {
                    self.guard_member(level)?
                } else {
                    level.at += 1;
                    level.la
                };
                break;
            }
        }
    }

    /// `guard`: the member name at `pos`, its `:` and the whitespace
    /// around, as the walk's `object` takes them; returns the look-alike
    /// state of the member's value.
    fn guard_member(&mut self, level: &mut Level) -> Result<u32, TransformError> {
        let (from, to, escaped) = self.member_head()?;
        self.members += 1;
        (level.at, level.to, level.escaped) = (from, to, escaped);
        let key = self.text(from, to, escaped)?;
        if self.refuses_references && is_reference_member(&key) {
            self.fail(TransformError::Reference);
        }
        Ok(self.look.step(level.la, &key))
    }

    /// Pushes the path steps of `guard`'s open containers; returns the
    /// path's length before.
    fn enter_path(&mut self, levels: &[Level]) -> Result<usize, TransformError> {
        let base = self.path.len();
        for level in levels {
            let step = if level.object {
                Step::Key(self.text(level.at, level.to, level.escaped)?)
            } else {
                Step::Index(level.at)
            };
            self.path.push(step);
        }
        Ok(base)
    }

    /// A skipped object's member name, its `:` and the whitespace around.
    fn member_name(&mut self) -> Result<(), Invalid> {
        self.member_head()?;
        self.members += 1;
        Ok(())
    }

    /// An object member's name at `pos`, its `:` and the whitespace
    /// around: returns the name's contents range and whether it holds
    /// escapes.
    #[inline(always)]
    fn member_head(&mut self) -> Result<(usize, usize, bool), Invalid> {
        if self.peek() != Some(b'"') {
            return Err(Invalid);
        }
        let name = self.string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(Invalid);
        }
        self.pos += 1;
        self.ws();
        Ok(name)
    }

    /// Number of elements of the array at `pos`, which is left unmoved. The
    /// arrays inside are counted on the way, so none is scanned twice.
    fn element_count(&mut self, depth: usize, hi: usize) -> Result<usize, TransformError> {
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

    // -- blind indexes -----------------------------------------------------

    /// A member whose index states start at `istart`: the index rules
    /// whose field it is (returned, one bit per rule, and added to
    /// `indexed_here`, the object's). A field met twice in one object (two
    /// spellings, or one repeated) fails the request: each occurrence is
    /// sealed, and one index can't describe both. A member where an index
    /// is written fails it too: an index is only ever written by fieldseal.
    fn index_member(&mut self, istart: usize, indexed_here: &mut u64) -> u64 {
        let selecting = self.irs.selecting(istart, self.irs.len());
        let mut writes = 0u64;
        let mut bits = selecting;
        while bits != 0 {
            let w = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let (i, is_into) = (w / 2, w % 2 == 1);
            let rules: &'r [IndexRule] = self.index_rules;
            let Some(rule) = rules.get(i) else {
                continue;
            };
            if is_into {
                self.fail(TransformError::IndexSupplied {
                    name: rule.spec.name.clone(),
                });
            } else if *indexed_here & (1 << i) != 0 {
                self.fail(TransformError::Unindexable);
            } else {
                *indexed_here |= 1 << i;
                writes |= 1 << i;
            }
        }
        writes
    }

    /// After the member value `src[value_start..pos]` (sealed or kept in
    /// the output): the members of index rules `writes` (one bit per rule),
    /// each the index of the value's plaintext, which is the input's. A
    /// string is indexed as its characters, a number as its text as sent,
    /// `true`/`false` as those words; `null` writes none; an object or an
    /// array fails the request.
    fn write_indexes(&mut self, writes: u64, value_start: usize) -> Result<(), TransformError> {
        let Mode::Encrypt { keys, .. } = self.mode else {
            return Ok(());
        };
        if self.failed.is_some() {
            return Ok(());
        }
        let src: &'a str = self.src;
        let raw = src.get(value_start..self.pos).or_invalid()?;
        let text = match raw.as_bytes().first() {
            Some(b'n') => return Ok(()),
            Some(b'{' | b'[') => {
                self.fail(TransformError::Unindexable);
                return Ok(());
            }
            Some(b'"') => unescaped(src, value_start + 1, self.pos - 1, raw.contains('\\'))?,
            _ => Cow::Borrowed(raw),
        };
        self.flush(self.pos);
        let rules: &'r [IndexRule] = self.index_rules;
        let mut bits = writes;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let Some(rule) = rules.get(i) else {
                continue;
            };
            if self.index_keys.is_empty() {
                self.index_keys.resize_with(rules.len(), || None);
            }
            if matches!(self.index_keys.get(i), Some(None)) {
                match rule.spec.key(keys.index) {
                    Ok(k) => {
                        if let Some(slot) = self.index_keys.get_mut(i) {
                            *slot = Some(k);
                        }
                    }
                    Err(e) => {
                        self.fail(e);
                        return Ok(());
                    }
                }
            }
            let Some(Some(key)) = self.index_keys.get(i) else {
                continue;
            };
            self.out.push(b',');
            serde_json::to_writer(&mut self.out, &rule.spec.name)
                .map_err(|_| TransformError::Seal)?;
            // The index text is ASCII (`fsi1:`, a key id or reference,
            // base64url): no escape needed.
            self.out.extend_from_slice(b":\"");
            key.index_into(&text, &rule.spec.normalize, rule.spec.bits, &mut self.out);
            self.out.push(b'"');
        }
        self.copied = self.pos;
        Ok(())
    }

    // -- what happens to a value -------------------------------------------

    /// Default context: the nearest member name, or `$`.
    fn location_context(&self) -> Cow<'a, str> {
        for s in self.path.iter().rev() {
            if let Step::Key(k) = s {
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

    /// The member names a failure under rule `rule` may show.
    fn rule_names(&self, rule: Option<usize>) -> &'r [String] {
        let rules: &'r [FieldRule] = self.rules;
        rule.and_then(|r| rules.get(r))
            .map_or(&[][..], |r| r.path.names())
    }

    /// Writes what `verdict` says for the value `src[start..pos]`, whose
    /// rule states are `lo..hi`.
    #[inline]
    fn apply(
        &mut self,
        verdict: Verdict,
        start: usize,
        lo: usize,
        hi: usize,
    ) -> Result<(), TransformError> {
        match verdict {
            Verdict::Keep => Ok(()),
            Verdict::Null => self.replace(start, &Value::Null),
            Verdict::Replace(v @ (Value::Object(_) | Value::Array(_)))
                if matches!(self.mode, Mode::Decrypt { .. }) =>
            {
                self.open_within(v, start, lo, hi)
            }
            Verdict::Replace(v) => self.replace(start, &v),
            Verdict::Sealed(envelope) => self.replace(start, &envelope),
            Verdict::Written => {
                self.copied = self.pos;
                Ok(())
            }
            Verdict::OpenedString => {
                self.flush(start);
                let plain = self.aead.plaintext();
                // `open` checked that it is UTF-8. Most opened strings
                // (numbers, names, addresses) need no escaping: copied as
                // they are; the rest go through serde_json, which checks
                // UTF-8 again on that rare path.
                if plain_run(plain).is_none() {
                    self.out.reserve(plain.len() + 2);
                    self.out.push(b'"');
                    self.out.extend_from_slice(plain);
                    self.out.push(b'"');
                } else {
                    let s = std::str::from_utf8(plain).map_err(|_| TransformError::Seal)?;
                    serde_json::to_writer(&mut self.out, s).map_err(|_| TransformError::Seal)?;
                }
                self.copied = self.pos;
                Ok(())
            }
            Verdict::Fail(e) => {
                self.failed = Some(e);
                Ok(())
            }
        }
    }

    /// Copies the input up to `start` to the output.
    fn flush(&mut self, start: usize) {
        if start > self.copied {
            let before = self.b.get(self.copied..start).unwrap_or(&[]);
            self.out.extend_from_slice(before);
            self.copied = start;
        }
    }

    /// Replaces `src[start..pos]` in the output by the JSON of `v`.
    fn replace(&mut self, start: usize, v: &impl serde::Serialize) -> Result<(), TransformError> {
        self.flush(start);
        serde_json::to_writer(&mut self.out, v).map_err(|_| TransformError::Seal)?;
        self.copied = self.pos;
        Ok(())
    }

    /// A container just opened at `src[start..pos]` (states `lo..hi`) may
    /// itself hold envelopes: its JSON is walked on, as if it stood there.
    fn open_within(
        &mut self,
        v: Value,
        start: usize,
        lo: usize,
        hi: usize,
    ) -> Result<(), TransformError> {
        // A `Value` always serializes.
        let text = serde_json::to_string(&v).map_err(|_| TransformError::Seal)?;
        let mut inner = Walker::new(&text, self.rules, self.mode, self.now);
        inner.rs = RuleStates::resumed(self.rules, self.rs.states(lo, hi));
        inner.path = self.path.iter().cloned().map(Step::into_owned).collect();
        // The opened value was parsed once, within serde_json's limit.
        inner.max_depth = usize::MAX;
        let result = inner.run(text.as_bytes());
        for (h, inner) in self.hit.iter_mut().zip(&inner.hit) {
            *h |= *inner;
        }
        match result {
            Ok(report) => {
                self.report.decrypted += report.decrypted;
                for id in &report.key_ids {
                    self.report.note_key(id);
                }
                self.report.failures.extend(report.failures);
                let before = self.b.get(self.copied..start).unwrap_or(&[]);
                self.out.extend_from_slice(before);
                self.out.extend_from_slice(&inner.out);
                self.copied = self.pos;
            }
            Err(e) => self.failed = Some(e),
        }
        Ok(())
    }

    /// Encrypt: the value `src[start..pos]` was selected by rule `r`, or
    /// (`look_alike`) is a look-alike of rule `r` on a route that seals
    /// those. A look-alike holding no data (`null`, empty containers) stays.
    fn seal_value(
        &mut self,
        r: usize,
        start: usize,
        look_alike: bool,
    ) -> Result<(), TransformError> {
        let Mode::Encrypt { keys, .. } = self.mode else {
            return Ok(());
        };
        if self.failed.is_some() {
            return Ok(());
        }
        let src: &'a str = self.src;
        let raw = src.get(start..self.pos).or_invalid()?;
        let context = |w: &Self| {
            if look_alike {
                w.look_alike_context(r)
            } else {
                w.rule_context(Some(r))
            }
        };
        if raw.starts_with('"') {
            // A string (always data) is sealed from its contents straight
            // into the output: no `Value`, no envelope `String`.
            let inner = raw.get(1..raw.len() - 1).or_invalid()?;
            let plain = if inner.contains('\\') {
                Cow::Owned(unescape(inner)?)
            } else {
                Cow::Borrowed(inner)
            };
            let context = context(self);
            self.flush(start);
            let verdict = policy::seal_str(
                &plain,
                &context,
                keys,
                self.now,
                &mut self.report,
                (&mut self.aead, &mut self.out),
            );
            return self.apply(verdict, start, 0, 0);
        }
        let value: Value = serde_json::from_str(raw).map_err(|_| TransformError::InvalidJson)?;
        if look_alike && !carries_data(&value) {
            return Ok(());
        }
        let context = context(self);
        let verdict = policy::seal(value, &context, keys, self.now, &mut self.report);
        if let (Verdict::Replace(_), Some(h)) = (&verdict, self.hit.get_mut(r)) {
            *h = true;
        }
        self.apply(verdict, start, 0, 0)
    }

    /// A look-alike is sealed with its rule's context, else with the last
    /// part of the nearest member name (`number` for `"card.number"`): the
    /// name the backend stores it under and answers it at, where the
    /// route's decrypt rule opens it.
    fn look_alike_context(&self, r: usize) -> Cow<'a, str> {
        if let Some(c) = self.rules.get(r).and_then(|r| r.context.as_deref()) {
            return Cow::Owned(c.to_owned());
        }
        for s in self.path.iter().rev() {
            if let Step::Key(k) = s {
                return match name_parts(k).last() {
                    Some(p) if p.len() < k.len() => Cow::Owned(p.into_owned()),
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
    ) -> Result<(), TransformError> {
        match self.peek() {
            Some(b'n') => return Ok(self.literal(b"null")?),
            Some(b'"') => {
                let (from, to, escaped) = self.string()?;
                let reserved = if escaped {
                    looks_like_envelope(&self.text(from, to, escaped)?)
                } else {
                    self.reserved(from, to)
                };
                if reserved {
                    return self.at_string(None, lo, hi, start, (from, to, escaped));
                }
            }
            _ => self.value(depth, hi, false, 0)?,
        }
        self.look_alike_failure(r);
        Ok(())
    }

    /// The request fails as a look-alike of rule `r` at the current place
    /// (shown with the rule's own names only), unless it failed already.
    fn look_alike_failure(&mut self, r: usize) {
        if self.failed.is_none() {
            let rule = self.rules.get(r);
            self.failed = Some(TransformError::LookAlike {
                rule: rule.map_or_else(String::new, |r| r.path.as_str().to_owned()),
                location: location::redacted(&self.path, self.rule_names(Some(r))),
            });
        }
    }

    /// The first failure is the one reported.
    fn fail(&mut self, e: TransformError) {
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }

    /// The string `src[start..pos]` (contents `from..to`, `escaped` if it
    /// holds escapes), selected by rule `rule` (None: outside the rules),
    /// with rule states `lo..hi`.
    fn at_string(
        &mut self,
        rule: Option<usize>,
        lo: usize,
        hi: usize,
        start: usize,
        (from, to, escaped): (usize, usize, bool),
    ) -> Result<(), TransformError> {
        if let Some(scan) = self.scan.as_mut() {
            let s = unescaped(self.src, from, to, escaped)?;
            scan(&s, StringKind::Value);
            return Ok(());
        }
        // Only a string that starts with the reserved prefix can be an
        // envelope (an escape may spell the prefix).
        if (!escaped && !self.reserved(from, to)) || self.failed.is_some() {
            return Ok(());
        }
        let s = self.text(from, to, escaped)?;
        if !looks_like_envelope(&s) {
            return Ok(());
        }
        let now = self.now;
        let verdict = match self.mode {
            Mode::Encrypt { spec, keys } => {
                let context = self.location_context();
                policy::guard(
                    &s,
                    &context,
                    &spec.named_contexts,
                    keys,
                    now,
                    &mut self.report,
                )
            }
            Mode::Decrypt {
                spec,
                ring,
                subjects,
            } => {
                let context = self.rule_context(rule);
                let names = self.rule_names(rule);
                policy::open(
                    &s,
                    &context,
                    spec,
                    (ring, subjects),
                    now,
                    &mut self.report,
                    (&self.path, names),
                    &mut self.aead,
                )
            }
            Mode::Rewrap { keys, has_rules } => {
                // With rules, an envelope outside them already under the
                // sealing key stays as it is, unopened.
                if rule.is_none() && has_rules && envelope_key_id(&s) == Some(keys.seal.id()) {
                    return Ok(());
                }
                let context = self.rule_context(rule);
                let names = self.rule_names(rule);
                policy::rewrap(
                    &s,
                    &context,
                    keys,
                    now,
                    &mut self.report,
                    (&self.path, names),
                )
            }
            Mode::Validate | Mode::Select | Mode::Scan => Verdict::Keep,
        };
        self.apply(verdict, start, lo, hi)
    }
}

/// `Option::ok_or(TransformError::InvalidJson)` without building the error
/// on the path that succeeds: `ok_or` makes it first and drops it after,
/// and the drop of an error with `String` fields was a call per member name
/// in the walk (1.7% of the load document's encrypt in callgrind).
/// The lexer's one failure: the input is not JSON. Zero-sized, so the
/// lexing functions return in registers (a `Result` with a
/// `TransformError`, which holds `String`s, comes back through memory);
/// `?` turns it into `TransformError::InvalidJson`.
#[derive(Debug)]
struct Invalid;

/// Containers `Walker::guard` keeps open on its own stack; deeper ones go
/// through the walk (and a fresh stack).
const GUARD_LEVELS: usize = 16;

/// One container open in `Walker::guard`.
#[derive(Clone, Copy, Default)]
struct Level {
    /// An array's current element, or where an object's current member
    /// name starts (its contents `at..to`, `escaped` if they hold escapes).
    at: usize,
    to: usize,
    /// The container's look-alike state (its elements').
    la: u32,
    object: bool,
    escaped: bool,
}

impl From<Invalid> for TransformError {
    #[inline]
    fn from(_: Invalid) -> TransformError {
        TransformError::InvalidJson
    }
}

trait OrInvalid<T> {
    fn or_invalid(self) -> Result<T, TransformError>;
}

impl<T> OrInvalid<T> for Option<T> {
    #[inline]
    fn or_invalid(self) -> Result<T, TransformError> {
        match self {
            Some(v) => Ok(v),
            None => Err(TransformError::InvalidJson),
        }
    }
}

/// Bytes a string's contents can't hold as they are: `"`, `\` and the
/// control characters (RFC 8259 §7).
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Bytes checked at once by `plain_run`.
const RUN_LANES: usize = 16;

/// Offset of the first byte of `b` that ends a run of plain string
/// contents (`STRING_STOP`), if any. The first eight bytes are tested as one
/// word (most member names and many values end there); then blocks of
/// `RUN_LANES` bytes without a branch per byte (the compiler turns the
/// block's test into a few vector compares), and in the block that holds
/// the stop, its two words find its offset. Only the input's last bytes,
/// after its last whole block, go byte by byte through the table.
#[inline]
fn plain_run(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    if let Some(w) = word(b) {
        if let Some(i) = stop_in_word(w) {
            return Some(i);
        }
        at = 8;
    }
    let rest = b.get(at..)?;
    let mut blocks = rest.chunks_exact(RUN_LANES);
    for block in &mut blocks {
        let mut stop = false;
        for &c in block {
            stop |= (c == b'"') | (c == b'\\') | (c < 0x20);
        }
        if stop {
            let hi = block.get(8..).unwrap_or(&[]);
            let i = word(block)
                .and_then(stop_in_word)
                .or_else(|| word(hi).and_then(stop_in_word).map(|i| i + 8));
            return Some(at + i.unwrap_or(0));
        }
        at += RUN_LANES;
    }
    blocks
        .remainder()
        .iter()
        .position(|&c| STRING_STOP[usize::from(c)])
        .map(|n| at + n)
}

/// The first eight bytes of `b` as a little-endian word, if it has eight.
#[inline]
fn word(b: &[u8]) -> Option<u64> {
    b.first_chunk::<8>().map(|w| u64::from_le_bytes(*w))
}

/// Offset of the first `STRING_STOP` byte of the eight bytes `w` (little
/// endian), if any: the classic zero-byte test on `w ^ '"'` and `w ^ '\\'`
/// and the less-than test on `w` against 0x20 mark the high bit of each
/// matching byte. A borrow can mark a byte above a real match, never below
/// the first one, so the lowest mark is exact.
#[inline]
fn stop_in_word(w: u64) -> Option<usize> {
    let marks = bytes_below(w ^ (ONES * u64::from(b'"')), 1)
        | bytes_below(w ^ (ONES * u64::from(b'\\')), 1)
        | bytes_below(w, 0x20);
    (marks != 0).then(|| (marks.trailing_zeros() / 8) as usize)
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// The high bit of each byte of `w` below `n`, exact up to the lowest
/// (a borrow out of a marked byte can mark the ones above it).
#[inline(always)]
fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & (ONES << 7)
}

/// How the first eight bytes of string contents go on.
#[derive(Debug, PartialEq, Eq)]
enum WordEnd {
    /// The closing quote at this offset, plain bytes before it.
    Quote(usize),
    /// Eight plain bytes.
    Plain,
    /// An escape or a control character first.
    Other,
}

#[inline(always)]
fn word_end(w: u64) -> WordEnd {
    match stop_in_word(w) {
        None => WordEnd::Plain,
        Some(i) if (w >> (8 * i)) as u8 == b'"' => WordEnd::Quote(i),
        Some(_) => WordEnd::Other,
    }
}

/// Json.NET's and System.Text.Json's reference metadata (`$ref`, and
/// `$values` of a preserved array), in any spelling the name matcher
/// folds: `{"card": {"$ref": "1"}}` binds `card` to the object whose `$id`
/// is `1`, wherever it stands and under whatever names.
fn is_reference_member(key: &str) -> bool {
    key.starts_with('$') && (names_match("$ref", key) || names_match("$values", key))
}

fn unescaped(
    src: &str,
    from: usize,
    to: usize,
    escaped: bool,
) -> Result<Cow<'_, str>, TransformError> {
    let raw = src.get(from..to).or_invalid()?;
    if escaped {
        unescape(raw).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(raw))
    }
}
/// Decodes the escapes of valid JSON string contents.
fn unescape(raw: &str) -> Result<String, TransformError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('\\') {
        out.push_str(rest.get(..i).or_invalid()?);
        let esc = rest.get(i + 1..).or_invalid()?;
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
                        return Err(TransformError::InvalidJson);
                    }
                    let lo = hex4(esc.get(7..11))?;
                    if !(0xDC00..=0xDFFF).contains(&lo) {
                        return Err(TransformError::InvalidJson);
                    }
                    (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), 11)
                } else {
                    (hi, 5)
                };
                out.push(char::from_u32(code).or_invalid()?);
                rest = esc.get(used..).or_invalid()?;
                continue;
            }
            _ => return Err(TransformError::InvalidJson),
        };
        out.push(c);
        rest = esc.get(1..).or_invalid()?;
    }
    out.push_str(rest);
    Ok(out)
}

fn hex4(digits: Option<&str>) -> Result<u32, TransformError> {
    let d = digits.or_invalid()?;
    if !d.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TransformError::InvalidJson);
    }
    u32::from_str_radix(d, 16).map_err(|_| TransformError::InvalidJson)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keyring;
    use crate::transform::{DecryptSelection, FieldPath};
    use proptest::prelude::*;
    use proptest::sample::select;

    /// Nesting of a valid document's text (a scalar is 0), every
    /// occurrence of a repeated member included.
    fn depth_of(doc: &str) -> usize {
        let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
        for c in doc.bytes() {
            match (in_string, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, b'\\') => escaped = true,
                (true, false, b'"') | (false, _, b'"') => in_string = !in_string,
                (false, _, b'{' | b'[') => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                (false, _, b'}' | b']') => depth -= 1,
                _ => {}
            }
        }
        deepest
    }

    /// The members one walk of `mode` counts, if it accepts `doc`.
    fn members_seen(doc: &str, mode: Mode<'_>, max_depth: usize) -> Option<usize> {
        let mut ignore = |_: &str, _: StringKind| {};
        let mut w = Walker::new(doc, &[], mode, 0);
        if matches!(w.mode, Mode::Scan) {
            w.scan = Some(&mut ignore);
        }
        w.max_depth = max_depth;
        w.run(doc.as_bytes()).ok().map(|_| w.members)
    }

    /// Pieces of JSON and of broken JSON: brackets of both kinds, stray
    /// separators, strings ending in and past the word tests, numbers and
    /// words, right and wrong.
    #[rustfmt::skip]
    const PIECES: &[&str] = &[
        "{", "}", "[", "]", ",", ":", " ", "\n", "\"a\"", "\"a name past sixteen\"", "\"x\\ny\"",
        "\"\"", "1", "-0.5e3", "01", "1.", "true", "fals", "null", "{}", "[]", "\"k\":",
    ];

    /// Valid documents, spaced and nested.
    fn json_text() -> impl Strategy<Value = String> {
        let leaf = select(
            &[
                "1",
                "null",
                "\"v\"",
                "\"a longer string value\"",
                "true",
                "-2.5E+3",
            ][..],
        )
        .prop_map(str::to_owned);
        leaf.prop_recursive(8, 64, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((select(&["a", "b", "ssn", "a"][..]), inner), 0..5).prop_map(
                    |m| {
                        let members: Vec<String> =
                            m.iter().map(|(k, v)| format!("\"{k}\" : {v}")).collect();
                        format!("{{ {} }}", members.join(" ,"))
                    }
                ),
            ]
        })
    }

    /// Valid documents, pieces, and valid documents with one piece put in
    /// or one byte taken out.
    fn documents() -> impl Strategy<Value = String> {
        prop_oneof![
            json_text(),
            prop::collection::vec(select(PIECES), 0..24).prop_map(|p| p.concat()),
            (json_text(), any::<prop::sample::Index>(), select(PIECES)).prop_map(|(d, i, p)| {
                let at = i.index(d.len() + 1);
                format!("{}{p}{}", &d[..at], &d[at..])
            }),
            (json_text(), any::<prop::sample::Index>()).prop_map(|(mut d, i)| {
                d.remove(i.index(d.len()));
                d
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// The walk steps over what nothing looks into in one loop
        /// (`skip`): it accepts what serde_json accepts within each depth
        /// limit, as the walk that tracks every value does, counts the same
        /// members, and a decrypting walk that skips most of the document
        /// judges it alike.
        #[test]
        fn the_skipping_walk_judges_and_counts_like_the_tracking_walk(doc in documents()) {
            let parsed = serde_json::from_str::<Value>(&doc).ok();
            let depth = parsed.as_ref().map(|_| depth_of(&doc));
            for limit in [0, 1, 2, 3, 6, SERDE_MAX_DEPTH] {
                let want = depth.is_some_and(|d| d <= limit);
                prop_assert_eq!(validate(doc.as_bytes(), limit).is_ok(), want, "{:?} within {}", doc, limit);
                let skipped = members_seen(&doc, Mode::Validate, limit);
                prop_assert_eq!(skipped, members_seen(&doc, Mode::Scan, limit), "{:?}", doc);
                prop_assert_eq!(skipped.is_some(), want, "{:?}", doc);
            }
            let ring = Keyring::from_raw_keys("k1", vec![("k1".to_string(), [5u8; 32])]).expect("ring");
            let rules = vec![FieldRule { path: FieldPath::parse("$.a.b").expect("path"), context: None }];
            let spec = OpenSpec::new(DecryptSelection::Paths(rules));
            prop_assert_eq!(decrypt(doc.as_bytes(), &spec, &ring, 0).is_ok(), parsed.is_some(), "{:?}", doc);
        }
    }

    /// Member names of `guarded_text`, as JSON spells them: names of the
    /// rules and look-alikes of them, references in two spellings,
    /// escaped and NUL-cut names, and names nothing knows.
    #[rustfmt::skip]
    const GUARD_NAMES: &[&str] = &[
        "x", "y", "s", "S", "a", "b", "card", "CARD", "number", "Num_ber", "card.number",
        "$ref", "$values", "$REF", "_s", "\\u0073", "s\\u0000x", "a name past sixteen",
    ];

    /// Documents whose values are mostly outside the rules (`$.s`,
    /// `$.a[*].b`, `$.card.number`, and `$.x[-1].y`, whose arrays are
    /// counted first by a walk that only records), with look-alikes, references, the
    /// reserved prefix (plain and escaped), escapes, and nesting past
    /// `GUARD_LEVELS`.
    fn guarded_text() -> impl Strategy<Value = String> {
        #[rustfmt::skip]
        let leaf = select(&[
            "1", "null", "\"v\"", "\"fs1:abc\"", "\"\\u0066s1:x\"", "\"a\\nb\"",
            "\"a longer string value\"", "true", "[]", "{}", "-2.5E+3",
        ][..])
        .prop_map(str::to_owned);
        leaf.prop_recursive(20, 96, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((select(GUARD_NAMES), inner), 0..4).prop_map(|m| {
                    let members: Vec<String> =
                        m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    /// `out` with every envelope (fresh nonces) as `"E"`.
    fn envelopes_masked(out: &[u8]) -> String {
        let text = String::from_utf8_lossy(out);
        let mut masked = String::new();
        let mut rest: &str = &text;
        while let Some(at) = rest.find("\"fs1:") {
            masked.push_str(&rest[..at]);
            let end = rest[at + 1..].find('"').map_or(rest.len(), |e| at + e + 2);
            masked.push_str("\"E\"");
            rest = &rest[end..];
        }
        masked.push_str(rest);
        masked
    }

    fn sealed(doc: &str, spec: &SealSpec, ring: &Keyring, guard_loop: bool) -> String {
        let mut w = sealing_walker(doc, spec, ring.into(), 0);
        w.guard_loop = guard_loop;
        match run_sealing(w, spec, ring.into()) {
            Ok((out, report, members)) => format!(
                "{} {} {:?} {:?} {} {members}",
                envelopes_masked(&out),
                report.encrypted,
                report.paths,
                report.key_ids,
                report.failures.len()
            ),
            Err(e) => format!("{e:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        /// `guard`'s loop does what the walk does value by value, in both
        /// look-alike modes, with references refused and allowed: the same
        /// output (envelopes aside), report, member count, or error.
        #[test]
        fn the_guard_loop_seals_and_refuses_like_the_walk(doc in guarded_text()) {
            let ring = Keyring::from_raw_keys("k1", vec![("k1".to_string(), [5u8; 32])]).expect("ring");
            let rules: Vec<FieldRule> = ["$.s", "$.a[*].b", "$.card.number", "$.x[-1].y"]
                .iter()
                .map(|p| FieldRule { path: FieldPath::parse(p).expect("path"), context: None })
                .collect();
            for mode in [LookAlikeMode::Seal, LookAlikeMode::Refuse] {
                for references in [JsonReferences::Refuse, JsonReferences::Allow] {
                    let mut spec = SealSpec::new(rules.clone());
                    spec.shape.look_alikes = LookAlikes::compile(&rules, &[], mode).expect("compile");
                    spec.shape.references = references;
                    let looped = sealed(&doc, &spec, &ring, true);
                    prop_assert_eq!(&looped, &sealed(&doc, &spec, &ring, false), "{:?} {:?}", mode, references);
                }
            }
        }
    }

    /// The openings and closings of `n` containers, objects (opened by
    /// `object`) and arrays (by `array`) alternating from the outside.
    fn nesting(n: usize, object: &str, array: &str) -> (String, String) {
        let (mut open, mut close) = (String::new(), String::new());
        for i in 0..n {
            let (o, c) = if i % 2 == 0 {
                (object, '}')
            } else {
                (array, ']')
            };
            open.push_str(o);
            close.insert(0, c);
        }
        (open, close)
    }

    /// Past `GUARD_LEVELS` (and twice past it), a look-alike, a reserved
    /// string and a reference at each depth: the loop hands the deeper
    /// containers to the walk, which takes them as it does without the loop.
    #[test]
    fn deep_guarded_documents_seal_and_refuse_like_the_walk() {
        let ring = Keyring::from_raw_keys("k1", vec![("k1".to_string(), [5u8; 32])]).expect("ring");
        let rules: Vec<FieldRule> = ["$.s", "$.card.number"]
            .iter()
            .map(|p| FieldRule {
                path: FieldPath::parse(p).expect("path"),
                context: None,
            })
            .collect();
        let inner = [
            "{\"S\":\"v\"}",
            "\"fs1:abc\"",
            "{\"$ref\":\"1\"}",
            "{\"card\":{\"Number\":\"4111\"}}",
            "[1,{\"y\":2}]",
        ];
        for n in [1, 15, 16, 17, 31, 32, 33, 48, 60] {
            for value in inner {
                let (open, close) = nesting(n, "{\"x\":1,\"k\":", "[0,");
                let doc = format!("{open}{value}{close}");
                for mode in [LookAlikeMode::Seal, LookAlikeMode::Refuse] {
                    let mut spec = SealSpec::new(rules.clone());
                    spec.shape.look_alikes =
                        LookAlikes::compile(&rules, &[], mode).expect("compile");
                    let looped = sealed(&doc, &spec, &ring, true);
                    assert_eq!(
                        looped,
                        sealed(&doc, &spec, &ring, false),
                        "{n} {value} {mode:?}"
                    );
                }
            }
        }
    }

    /// Nesting past the skip's word of open containers (64) and past
    /// serde_json's limit, objects and arrays alternating: accepted up to
    /// the limit, and without one (an opened value's walk), at any depth;
    /// a wrong closing bracket at any level is refused.
    #[test]
    fn deep_documents_are_skipped_at_every_level() {
        for n in [1, 2, 63, 64, 65, 66, 127, 128, 129, 130, 200] {
            let (open, close) = nesting(n, "{\"k\":", "[");
            let doc = format!("{open}1{close}");
            assert_eq!(
                validate(doc.as_bytes(), SERDE_MAX_DEPTH).is_ok(),
                n <= SERDE_MAX_DEPTH,
                "{n}"
            );
            for limit in [n - 1, n] {
                assert_eq!(
                    members_seen(&doc, Mode::Validate, limit).is_some(),
                    limit >= n,
                    "{n} {limit}"
                );
            }
            assert_eq!(
                members_seen(&doc, Mode::Validate, usize::MAX),
                Some(n.div_ceil(2)),
                "{n}"
            );
            for at in [0, n / 2, n - 1] {
                // The closing bracket of level `at` (from the inside) of the other kind.
                let mut bad = close.clone().into_bytes();
                bad[at] = if bad[at] == b'}' { b']' } else { b'}' };
                let bad = format!("{open}1{}", String::from_utf8(bad).expect("ascii"));
                assert_eq!(
                    members_seen(&bad, Mode::Validate, usize::MAX),
                    None,
                    "{n} {at}"
                );
            }
        }
    }

    fn by_table(b: &[u8]) -> Option<usize> {
        b.iter().position(|&c| STRING_STOP[usize::from(c)])
    }

    #[test]
    fn plain_run_finds_the_first_stop_as_the_table_does() {
        // Every byte value at every offset of a block, alone and after a
        // second stop candidate further on, over fillers that straddle the
        // bit tricks' edges (0x20 and the high bit).
        for len in [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40] {
            for filler in [b'a', b' ', 0x7F, 0x80, 0xFF, 0x21, 0x5D] {
                for at in 0..len {
                    for c in 0..=255u8 {
                        let mut b = vec![filler; len];
                        b[at] = c;
                        assert_eq!(plain_run(&b), by_table(&b), "{len} {filler:#x} {at} {c:#x}");
                        if at + 1 < len {
                            b[at + 1] = b'"';
                            assert_eq!(
                                plain_run(&b),
                                by_table(&b),
                                "{len} {filler:#x} {at} {c:#x} +"
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(plain_run(b""), None);
    }

    #[test]
    fn word_end_agrees_with_the_table() {
        let by_bytes = |b: &[u8; 8]| match by_table(b) {
            Some(i) if b[i] == b'"' => WordEnd::Quote(i),
            Some(_) => WordEnd::Other,
            None => WordEnd::Plain,
        };
        for filler in [b'a', b' ', 0x7F, 0x80, 0xFF, 0x21, 0x23, 0x5D, 0x5B, 0x1F] {
            for at in 0..8 {
                for c in 0..=255u8 {
                    let mut b = [filler; 8];
                    b[at] = c;
                    let w = u64::from_le_bytes(b);
                    assert_eq!(word_end(w), by_bytes(&b), "{filler:#x} {at} {c:#x}");
                    for (next, d) in [(b'"', 1), (b'\\', 1), (0x01, 1), (b'"', 2)] {
                        if at + d < 8 {
                            b[at + d] = next;
                            let w = u64::from_le_bytes(b);
                            assert_eq!(
                                word_end(w),
                                by_bytes(&b),
                                "{filler:#x} {at} {c:#x} {next:#x}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn strings_that_end_in_the_first_word_or_after_it_lex_alike() {
        // Each length around the fast path's edge, plain, escaped and
        // broken: the walk's verdict is serde_json's.
        for len in 0..28 {
            for tail in ["", "\\n", "\\u00e9", "\u{1}", "\"x", "\u{e9}"] {
                let body = format!("{}{}", "a".repeat(len), tail);
                for doc in [
                    format!("\"{body}\""),
                    format!("{{\"{body}\": 1}}"),
                    format!("[\"{body}\",2]"),
                ] {
                    let ours = validate(doc.as_bytes(), 64).is_ok();
                    let serde = serde_json::from_str::<Value>(&doc);
                    assert_eq!(ours, serde.is_ok(), "{doc:?}");
                    // And the walk's string is the one serde_json read:
                    // its span ends where the contents do.
                    if let Ok(v) = serde {
                        let mut seen = Vec::new();
                        scan_strings(doc.as_bytes(), |s, _| seen.push(s.to_owned()))
                            .expect("valid");
                        let want = match &v {
                            Value::String(s) => s.clone(),
                            Value::Object(m) => m.keys().next().cloned().expect("member"),
                            Value::Array(a) => a[0].as_str().expect("string").to_owned(),
                            _ => unreachable!("{doc:?}"),
                        };
                        assert_eq!(seen, [want], "{doc:?}");
                    }
                }
            }
        }
    }

    /// An opened string is written as serde_json writes it: copied as it is
    /// when nothing in it needs escaping, escaped otherwise (every byte
    /// that needs it, at every place, in short and long strings).
    #[test]
    fn opened_strings_are_written_as_serde_json_writes_them() {
        use super::super::{DecryptSelection, FieldPath};
        let ring = Keyring::from_raw_keys("k1", vec![("k1".to_string(), [9u8; 32])]).expect("ring");
        let rules = vec![FieldRule {
            path: FieldPath::parse("$.s").expect("path"),
            context: None,
        }];
        let open = OpenSpec::new(DecryptSelection::Paths(rules.clone()));
        let mut plains: Vec<String> = vec![
            String::new(),
            "078-05-1120".into(),
            "caf\u{e9} \u{1F600} \u{7f} /".into(),
            "x".repeat(40),
        ];
        for c in ['"', '\\', '\n', '\u{0}', '\u{1f}', '\t', '\u{8}'] {
            for at in [0, 3, 9, 17, 39] {
                let mut p: Vec<char> = "a".repeat(40).chars().collect();
                p[at] = c;
                plains.push(p.into_iter().collect());
                plains.push(p_short(c, at));
            }
        }
        for plain in plains {
            let doc = serde_json::to_vec(&serde_json::json!({ "s": plain })).expect("doc");
            let (sealed, _) =
                encrypt(&doc, &SealSpec::new(rules.clone()), Keys::from(&ring), 5).expect("seal");
            let (opened, rep) = decrypt(&sealed, &open, &ring, 5).expect("open");
            assert_eq!(rep.decrypted, 1);
            assert_eq!(opened, doc, "{plain:?}");
        }
    }

    fn p_short(c: char, at: usize) -> String {
        let mut p: Vec<char> = "abc".chars().collect();
        p.insert(at.min(3), c);
        p.into_iter().collect()
    }
}
