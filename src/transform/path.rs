//! Compiled JSONPath field rules applied to a `serde_json::Value`. No HTTP types.
//!
//! Field rules use a subset of RFC 9535 JSONPath (see `docs/fields.md`):
//! `$`, `.name`, `['name']` / `["name"]`, `[0]` / `[-1]`, `[*]` / `.*`,
//! unions `['a','b']` / `[0,2]`, slices `[1:3]` / `[::2]` and descendant
//! segments `..name` / `..[*]` / `..['x']`. Filters and functions are refused.
//!
//! All rules are compiled once and applied together in ONE walk over the
//! `&mut Value`: each node carries the set of (rule, segment) states that
//! reached it. A node matched by a rule is handled before its children, so
//! when rules overlap the outermost match wins and nothing is sealed twice.
//! Locations are only turned into strings when a failure is reported.

use std::time::Duration;

use serde_json::Value;

use crate::crypto::{envelope_key_id, looks_like_envelope, DecryptError, Keyring};

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
    segments: Vec<Segment>,
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

#[derive(Debug, Clone, PartialEq)]
struct Segment {
    descendant: bool,
    selectors: Vec<Selector>,
}

#[derive(Debug, Clone, PartialEq)]
enum Selector {
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
                        .split(['.', '[', ']'])
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
                        Selector::Name(n) => name_parts(n).map(normalized_name).collect(),
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

    /// The normalized member names this path names (see `redacted`).
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Normalized paths (RFC 9535 §2.7) of the values this path selects in
    /// `doc`, in document order without repeats. For diagnostics and tests:
    /// it runs the same walker as the transforms, on a copy of `doc`.
    pub fn locations(&self, doc: &Value) -> Vec<String> {
        let rule = [FieldRule {
            path: self.clone(),
            context: None,
        }];
        let mut copy = doc.clone();
        let mut out = Vec::new();
        let res: Result<(), ()> = walk_rules(&mut copy, &rule, |_, _, loc| {
            out.push(loc.normalized());
            Ok(Flow::Descend)
        });
        // The callback never fails.
        let _ = res;
        out
    }
}

/// Calls `f` once on every value any of `rules` selects (parents first, the
/// first selecting rule's index passed along), without looking inside a
/// value `f` was called on. The transforms are built on the same walk; this
/// is the bare selection, for benchmarks and tools.
pub fn for_each_match(doc: &mut Value, rules: &[FieldRule], mut f: impl FnMut(&mut Value, usize)) {
    let res: Result<(), ()> = walk_rules(doc, rules, |v, rule, _| {
        f(v, rule);
        Ok(Flow::Skip)
    });
    // The callback never fails.
    let _ = res;
}

#[derive(Debug, Clone)]
pub struct FieldRule {
    pub path: FieldPath,
    /// None: the context is the name of the member that holds the value.
    pub context: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DecryptSelection {
    Paths(Vec<FieldRule>),
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDecryptFailure {
    #[default]
    Error,
    Null,
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecryptFailure {
    /// Normalized location of the value, e.g. `$['contacts'][0]['phone']`.
    pub location: String,
    pub key_id: Option<String>,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransformReport {
    pub encrypted: usize,
    pub decrypted: usize,
    /// Rule paths (as written) that matched at least one value.
    pub paths: Vec<String>,
    /// Key ids used, without repeats.
    pub key_ids: Vec<String>,
    pub failures: Vec<DecryptFailure>,
}

#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    #[error("field encryption failed")]
    Seal,
    #[error("a field could not be decrypted")]
    Decrypt(DecryptFailure),
}

/// Replaces every value the rules select (any JSON type) by its envelope.
///
/// A selected string that already opens under `ring` with the same context is
/// left as it is; a mere look-alike is sealed like any other value. Where
/// rules overlap, the outermost selected value is sealed once, as a whole.
/// On `Err` the document is partly transformed and must be discarded.
pub fn encrypt_document(
    doc: &mut Value,
    rules: &[FieldRule],
    ring: &Keyring,
    now: u64,
) -> Result<TransformReport, FieldError> {
    encrypt_document_with(doc, rules, ring, now, &[])
}

/// `encrypt_document`, where `named_contexts` are the contexts that rules of
/// the whole configuration name: an envelope outside `rules` that opens under
/// one of them is genuine (sealed by another route) and left alone.
pub fn encrypt_document_with(
    doc: &mut Value,
    rules: &[FieldRule],
    ring: &Keyring,
    now: u64,
    named_contexts: &[String],
) -> Result<TransformReport, FieldError> {
    let mut report = TransformReport::default();
    let mut hit = vec![false; rules.len()];
    // Addresses of the selected nodes (compared, never dereferenced): the
    // second pass must not touch them. Replacing a value keeps its address.
    let mut selected: Vec<*const Value> = Vec::new();
    walk_rules(doc, rules, |node, r, loc| {
        hit[r] = true;
        selected.push(&*node as *const Value);
        let context = rule_context(&rules[r], loc);
        if let Value::String(s) = node {
            if looks_like_envelope(s) && ring.open_at(s, context, None, now).is_ok() {
                return Ok(Flow::Skip);
            }
        }
        let sealed = ring
            .seal_at(node, context, now)
            .map_err(|_| FieldError::Seal)?;
        *node = Value::String(sealed);
        report.encrypted += 1;
        Ok(Flow::Skip)
    })?;
    // The `fs1:` prefix is reserved. A client string elsewhere that uses it
    // without being a genuine envelope for its place is sealed too, so stored
    // data holds only real envelopes: it can't be made to fail decryption
    // (a 502 for every reader on `decrypt: auto` routes) and reads back as
    // the string the client sent.
    walk_all(doc, &Loc::ROOT, &mut |node,
                                    loc|
     -> Result<(), FieldError> {
        let Value::String(s) = &*node else {
            return Ok(());
        };
        if !looks_like_envelope(s) || selected.contains(&(&*node as *const Value)) {
            return Ok(());
        }
        let context = loc.context();
        let genuine = ring.open_at(s, context, None, now).is_ok()
            || named_contexts
                .iter()
                .any(|c| ring.open_at(s, c, None, now).is_ok());
        if genuine {
            return Ok(());
        }
        let sealed = ring
            .seal_at(node, context, now)
            .map_err(|_| FieldError::Seal)?;
        *node = Value::String(sealed);
        report.encrypted += 1;
        Ok(())
    })?;
    if report.encrypted > 0 {
        report.key_ids.push(ring.active_id().to_owned());
    }
    report.paths = matched_paths(rules, &hit);
    Ok(report)
}

/// Opens every selected string that looks like an envelope, with the rule's
/// context (or the location's) and `max_age`. Other values are left alone.
/// With `OnDecryptFailure::Error` the first failure is returned as `Err` and
/// the document, partly transformed, must be discarded.
pub fn decrypt_document(
    doc: &mut Value,
    selection: &DecryptSelection,
    ring: &Keyring,
    on_failure: OnDecryptFailure,
    max_age: Option<Duration>,
    now: u64,
) -> Result<TransformReport, FieldError> {
    let mut report = TransformReport::default();
    let opener = Opener {
        ring,
        on_failure,
        max_age,
        now,
    };
    match selection {
        DecryptSelection::Paths(rules) => {
            let mut hit = vec![false; rules.len()];
            walk_rules(doc, rules, |node, r, loc| {
                hit[r] = true;
                let names = rules[r].path.names();
                opener.open(node, rule_context(&rules[r], loc), loc, names, &mut report)?;
                // A decrypted object may itself hold envelopes that rules select.
                Ok(Flow::Descend)
            })?;
            report.paths = matched_paths(rules, &hit);
        }
        DecryptSelection::Auto => {
            walk_all(doc, &Loc::ROOT, &mut |node, loc| {
                opener.open(node, loc.context(), loc, &[], &mut report)
            })?;
        }
    }
    Ok(report)
}

/// How selected envelopes are opened (shared by the tree and the streaming
/// transform).
#[derive(Clone, Copy)]
pub(crate) struct Opener<'k> {
    pub(crate) ring: &'k Keyring,
    pub(crate) on_failure: OnDecryptFailure,
    pub(crate) max_age: Option<Duration>,
    pub(crate) now: u64,
}

impl Opener<'_> {
    /// Opens `node` if it is a string that looks like an envelope. A failure
    /// is located showing only the member names in `names` (the rule's).
    fn open(
        &self,
        node: &mut Value,
        context: &str,
        loc: &Loc<'_>,
        names: &[String],
        report: &mut TransformReport,
    ) -> Result<(), FieldError> {
        let Value::String(s) = &*node else {
            return Ok(());
        };
        if !looks_like_envelope(s) {
            return Ok(());
        }
        match self.ring.open_at(s, context, self.max_age, self.now) {
            Ok(opened) => {
                note_key(&mut report.key_ids, &opened.key_id);
                *node = opened.value;
                report.decrypted += 1;
            }
            Err(e) => {
                let failure = failure_at(loc, s, e, names);
                match self.on_failure {
                    OnDecryptFailure::Error => return Err(FieldError::Decrypt(failure)),
                    OnDecryptFailure::Null => *node = Value::Null,
                    OnDecryptFailure::Keep => {}
                }
                report.failures.push(failure);
            }
        }
        Ok(())
    }

    /// Continues a decrypt walk inside `node`, a value just opened at
    /// location `steps` whose rule states were `states` (ignored for `Auto`):
    /// the envelopes it holds are opened as `decrypt_document` would.
    pub(crate) fn open_within(
        &self,
        node: &mut Value,
        selection: &DecryptSelection,
        states: &[State],
        steps: &[Step<'_>],
        report: &mut TransformReport,
        hit: &mut [bool],
    ) -> Result<(), FieldError> {
        with_loc(steps, &Loc::ROOT, &mut |loc| match selection {
            DecryptSelection::Paths(rules) => {
                let mut w = RuleWalk {
                    rules,
                    states: states.to_vec(),
                    f: |node: &mut Value, r: usize, loc: &Loc<'_>| {
                        if let Some(h) = hit.get_mut(r) {
                            *h = true;
                        }
                        let names = rules[r].path.names();
                        self.open(node, rule_context(&rules[r], loc), loc, names, report)?;
                        Ok(Flow::Descend)
                    },
                };
                w.visit(node, loc, 0)
            }
            DecryptSelection::Auto => walk_all(node, loc, &mut |node, loc| {
                self.open(node, loc.context(), loc, &[], report)
            }),
        })
    }
}

/// Runs `f` with the `Loc` of `steps` (below `parent`).
fn with_loc<R>(steps: &[Step<'_>], parent: &Loc<'_>, f: &mut dyn FnMut(&Loc<'_>) -> R) -> R {
    match steps.split_first() {
        None => f(parent),
        Some((step, rest)) => {
            let l = Loc {
                parent: Some(parent),
                step: *step,
            };
            with_loc(rest, &l, f)
        }
    }
}

/// The location `steps` below the root for logs: see `Loc::redacted`.
pub(crate) fn redacted_path(steps: &[Step<'_>], names: &[String]) -> String {
    with_loc(steps, &Loc::ROOT, &mut |l| l.redacted(names))
}

/// The failure report for `envelope` at `steps`, selected by a rule naming
/// `names` (none for `decrypt: auto`).
pub(crate) fn failure_for(
    steps: &[Step<'_>],
    envelope: &str,
    e: DecryptError,
    names: &[String],
) -> DecryptFailure {
    DecryptFailure {
        location: redacted_path(steps, names),
        key_id: envelope_key_id(envelope).map(str::to_owned),
        reason: e.reason(),
    }
}

/// Re-encrypts every envelope found anywhere in `doc` under the active key,
/// same context and type; plaintext never leaves this function.
///
/// With `rules`, only the values they select are considered, with their
/// contexts; without, every string that looks like an envelope is opened with
/// its location's default context (so envelopes sealed under a named context
/// need the rules). Every envelope is authenticated; those already under the
/// active key are left unchanged, the others are re-sealed keeping their
/// original `issued_at` so `max_age` still counts from the first sealing.
/// `now` is only the clock used for authentication checks (no `max_age`
/// applies here). Counts: `decrypted` = envelopes opened, `encrypted` =
/// envelopes re-sealed, `key_ids` = key ids the envelopes were found under.
pub fn rewrap_document(
    doc: &mut Value,
    rules: Option<&[FieldRule]>,
    ring: &Keyring,
    now: u64,
) -> Result<TransformReport, FieldError> {
    let mut report = TransformReport::default();
    let active = ring.active_id();
    let mut rewrap = |node: &mut Value,
                      context: &str,
                      loc: &Loc<'_>,
                      names: &[String]|
     -> Result<(), FieldError> {
        let Value::String(s) = &*node else {
            return Ok(());
        };
        if !looks_like_envelope(s) {
            return Ok(());
        }
        let opened = ring
            .open_at(s, context, None, now)
            .map_err(|e| FieldError::Decrypt(failure_at(loc, s, e, names)))?;
        report.decrypted += 1;
        note_key(&mut report.key_ids, &opened.key_id);
        if opened.key_id != active {
            let sealed = ring
                .seal_at(&opened.value, context, opened.issued_at)
                .map_err(|_| FieldError::Seal)?;
            *node = Value::String(sealed);
            report.encrypted += 1;
        }
        Ok(())
    };
    match rules {
        Some(rules) => {
            let mut hit = vec![false; rules.len()];
            walk_rules(doc, rules, |node, r, loc| {
                hit[r] = true;
                rewrap(
                    node,
                    rule_context(&rules[r], loc),
                    loc,
                    rules[r].path.names(),
                )?;
                Ok(Flow::Descend)
            })?;
            // Envelopes outside the rules (default context) must move too:
            // everything under the rules is under the active key by now.
            walk_all(doc, &Loc::ROOT, &mut |node, loc| match &*node {
                Value::String(s) if envelope_key_id(s) == Some(active) => Ok(()),
                _ => rewrap(node, loc.context(), loc, &[]),
            })?;
            report.paths = matched_paths(rules, &hit);
        }
        None => walk_all(doc, &Loc::ROOT, &mut |node, loc| {
            rewrap(node, loc.context(), loc, &[])
        })?,
    }
    Ok(report)
}

/// True when `v` nests deeper than `limit` objects/arrays (a scalar has depth
/// 0, `[]` depth 1). Iterative, with at most `limit + 1` stack entries.
pub fn exceeds_depth(v: &Value, limit: usize) -> bool {
    enum Children<'a> {
        Array(std::slice::Iter<'a, Value>),
        Object(serde_json::map::Values<'a>),
    }
    fn children(v: &Value) -> Option<Children<'_>> {
        match v {
            Value::Array(a) => Some(Children::Array(a.iter())),
            Value::Object(o) => Some(Children::Object(o.values())),
            _ => None,
        }
    }
    let Some(first) = children(v) else {
        return false;
    };
    if limit == 0 {
        return true;
    }
    let mut stack = vec![first];
    while let Some(top) = stack.last_mut() {
        let next = match top {
            Children::Array(it) => it.next(),
            Children::Object(it) => it.next(),
        };
        match next {
            None => {
                stack.pop();
            }
            Some(child) => {
                if let Some(c) = children(child) {
                    if stack.len() >= limit {
                        return true;
                    }
                    stack.push(c);
                }
            }
        }
    }
    false
}

fn rule_context<'a>(rule: &'a FieldRule, loc: &Loc<'a>) -> &'a str {
    rule.context.as_deref().unwrap_or_else(|| loc.context())
}

fn failure_at(loc: &Loc<'_>, envelope: &str, e: DecryptError, names: &[String]) -> DecryptFailure {
    DecryptFailure {
        location: loc.redacted(names),
        key_id: envelope_key_id(envelope).map(str::to_owned),
        reason: e.reason(),
    }
}

pub(crate) fn note_key(ids: &mut Vec<String>, id: &str) {
    if !ids.iter().any(|k| k == id) {
        ids.push(id.to_owned());
    }
}

pub(crate) fn matched_paths(rules: &[FieldRule], hit: &[bool]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (rule, _) in rules.iter().zip(hit).filter(|(_, h)| **h) {
        if !out.iter().any(|p| p == rule.path.as_str()) {
            out.push(rule.path.as_str().to_owned());
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Locations

#[derive(Clone, Copy)]
pub(crate) enum Step<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

/// The location of the node being visited, as a chain of stack frames: free
/// to build, formatted only when a failure needs it.
struct Loc<'a> {
    parent: Option<&'a Loc<'a>>,
    step: Step<'a>,
}

impl<'a> Loc<'a> {
    const ROOT: Loc<'static> = Loc {
        parent: None,
        step: Step::Root,
    };

    /// Default context: the nearest object member name on the way to the
    /// root, or `$` when there is none.
    fn context(&self) -> &'a str {
        let mut at = Some(self);
        while let Some(l) = at {
            if let Step::Key(k) = l.step {
                return k;
            }
            at = l.parent;
        }
        "$"
    }

    /// RFC 9535 normalized path, e.g. `$['a'][0]`.
    fn normalized(&self) -> String {
        self.render(&mut |out, k| {
            out.push_str("['");
            push_escaped_name(out, k);
            out.push_str("']");
        })
    }

    /// The location for logs and error messages. Member names can be data
    /// (`$['by_ssn']['078-05-1120']`), so only a name the rule itself names
    /// (`names`, normalized) is shown, in its normalized form; every other
    /// member is `[*]`. Indices are shown.
    pub(crate) fn redacted(&self, names: &[String]) -> String {
        self.render(&mut |out, k| match shown_name(k, names) {
            Some(n) => {
                out.push_str("['");
                push_escaped_name(out, &n);
                out.push_str("']");
            }
            None => out.push_str("[*]"),
        })
    }

    fn render(&self, key: &mut dyn FnMut(&mut String, &str)) -> String {
        let mut steps = Vec::new();
        let mut at = Some(self);
        while let Some(l) = at {
            steps.push(l.step);
            at = l.parent;
        }
        let mut out = String::with_capacity(16 * steps.len());
        for step in steps.iter().rev() {
            match step {
                Step::Root => out.push('$'),
                Step::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
                Step::Key(k) => key(&mut out, k),
            }
        }
        out
    }
}

/// Member `key` as a redacted location shows it: normalized, when each of
/// its parts (split as `name_parts` does, digits kept) is one of `names`.
fn shown_name(key: &str, names: &[String]) -> Option<String> {
    let n = normalized_name(key);
    let mut parts = n
        .split(['.', '[', ']'])
        .filter(|p| !p.is_empty())
        .peekable();
    parts.peek()?;
    parts.all(|p| names.iter().any(|m| m == p)).then_some(n)
}

/// Escaping of member names in normalized paths (RFC 9535 §2.7).
fn push_escaped_name(out: &mut String, name: &str) {
    for c in name.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
}

// ---------------------------------------------------------------------------
// Walkers

enum Flow {
    /// Also visit the (possibly replaced) node's children.
    Descend,
    /// Do not look inside this node.
    Skip,
}

/// "Segment `seg` of rule `rule` applies to this node's children."
/// `seg == segments.len()` means the rule selects this node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    rule: u32,
    seg: u32,
}

/// Visits, once each and parents first, every node any rule selects; `f`
/// gets the lowest-numbered selecting rule.
fn walk_rules<E, F>(doc: &mut Value, rules: &[FieldRule], f: F) -> Result<(), E>
where
    F: FnMut(&mut Value, usize, &Loc<'_>) -> Result<Flow, E>,
{
    if rules.is_empty() {
        return Ok(());
    }
    // One stack of states shared by the whole walk: a node's states are a
    // range of it, so visiting a node allocates nothing.
    let mut states = Vec::with_capacity(4 * rules.len());
    states.extend((0..rules.len()).map(|r| State {
        rule: r as u32,
        seg: 0,
    }));
    let mut w = RuleWalk { rules, states, f };
    w.visit(doc, &Loc::ROOT, 0)
}

struct RuleWalk<'r, F> {
    rules: &'r [FieldRule],
    states: Vec<State>,
    f: F,
}

impl<'r, E, F> RuleWalk<'r, F>
where
    F: FnMut(&mut Value, usize, &Loc<'_>) -> Result<Flow, E>,
{
    fn advance(&mut self, lo: usize, hi: usize, selects: impl Fn(&Segment) -> bool) -> usize {
        advance_states(self.rules, &mut self.states, lo, hi, selects)
    }

    /// `node`'s states are `states[lo..]`.
    fn visit(&mut self, node: &mut Value, loc: &Loc<'_>, lo: usize) -> Result<(), E> {
        let hi = self.states.len();
        if let Some(r) = selected_rule(self.rules, &self.states[lo..hi]) {
            if let Flow::Skip = (self.f)(node, r, loc)? {
                return Ok(());
            }
        }
        match node {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    let start = self.advance(lo, hi, |seg| seg.selects_member(key));
                    if self.states.len() > start {
                        let l = Loc {
                            parent: Some(loc),
                            step: Step::Key(key),
                        };
                        self.visit(child, &l, start)?;
                        self.states.truncate(start);
                    }
                }
            }
            Value::Array(items) => {
                let n = items.len();
                for (j, child) in items.iter_mut().enumerate() {
                    let start = self.advance(lo, hi, |seg| seg.selects_element(j, n));
                    if self.states.len() > start {
                        let l = Loc {
                            parent: Some(loc),
                            step: Step::Index(j),
                        };
                        self.visit(child, &l, start)?;
                        self.states.truncate(start);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn segment_of(rules: &[FieldRule], s: State) -> Option<&Segment> {
    rules
        .get(s.rule as usize)
        .and_then(|r| r.path.segments.get(s.seg as usize))
}

/// Pushes the states a child gets from the parent's states `lo..hi`: a
/// descendant segment stays in force, a segment that `selects` the child
/// moves on to its next one. Returns where the child's states start.
fn advance_states(
    rules: &[FieldRule],
    states: &mut Vec<State>,
    lo: usize,
    hi: usize,
    selects: impl Fn(&Segment) -> bool,
) -> usize {
    let start = states.len();
    let push_unique = |states: &mut Vec<State>, s: State| {
        if !states[start..].contains(&s) {
            states.push(s);
        }
    };
    for i in lo..hi {
        let s = states[i];
        let Some(seg) = segment_of(rules, s) else {
            continue;
        };
        if seg.descendant {
            push_unique(states, s);
        }
        if selects(seg) {
            push_unique(
                states,
                State {
                    rule: s.rule,
                    seg: s.seg + 1,
                },
            );
        }
    }
    start
}

/// The lowest-numbered rule that selects the node whose states are `states`.
fn selected_rule(rules: &[FieldRule], states: &[State]) -> Option<usize> {
    let mut selected: Option<u32> = None;
    for s in states {
        let len = rules
            .get(s.rule as usize)
            .map_or(0, |r| r.path.segments.len());
        if s.seg as usize == len {
            selected = Some(selected.map_or(s.rule, |m| m.min(s.rule)));
        }
    }
    selected.map(|r| r as usize)
}

/// The rule state machine of `walk_rules`, driven from outside (by the
/// streaming transform): a stack of states where each node's states are a
/// range `lo..hi`, exactly as in `RuleWalk`.
pub(crate) struct RuleStates<'r> {
    rules: &'r [FieldRule],
    states: Vec<State>,
}

/// Array length to pass when no live state needs the real one.
pub(crate) const UNKNOWN_LEN: usize = 1 << 60;

impl<'r> RuleStates<'r> {
    /// The root's states (`0..len()`).
    pub(crate) fn new(rules: &'r [FieldRule]) -> RuleStates<'r> {
        let mut states = Vec::with_capacity(4 * rules.len());
        states.extend((0..rules.len()).map(|r| State {
            rule: r as u32,
            seg: 0,
        }));
        RuleStates { rules, states }
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    pub(crate) fn truncate(&mut self, n: usize) {
        self.states.truncate(n);
    }

    pub(crate) fn states(&self, lo: usize, hi: usize) -> &[State] {
        self.states.get(lo..hi).unwrap_or(&[])
    }

    /// The lowest-numbered rule selecting the node with states `lo..hi`.
    pub(crate) fn selected(&self, lo: usize, hi: usize) -> Option<usize> {
        selected_rule(self.rules, self.states(lo, hi))
    }

    /// States of member `key` of the object with states `lo..hi`, pushed;
    /// returns where they start.
    pub(crate) fn advance_member(&mut self, lo: usize, hi: usize, key: &str) -> usize {
        advance_states(self.rules, &mut self.states, lo, hi, |seg| {
            seg.selects_member(key)
        })
    }

    /// States of element `j` of an array of `n` elements (`UNKNOWN_LEN`
    /// when `needs_len` is false) with states `lo..hi`.
    pub(crate) fn advance_element(&mut self, lo: usize, hi: usize, j: usize, n: usize) -> usize {
        advance_states(self.rules, &mut self.states, lo, hi, |seg| {
            seg.selects_element(j, n)
        })
    }

    /// Does selecting among the elements of an array with states `lo..hi`
    /// depend on its length (negative indices, slice bounds or steps)?
    pub(crate) fn needs_len(&self, lo: usize, hi: usize) -> bool {
        self.states(lo, hi).iter().any(|s| {
            segment_of(self.rules, *s).is_some_and(|seg| {
                seg.selectors.iter().any(|sel| match sel {
                    Selector::Index(i) => *i < 0,
                    Selector::Slice { start, end, step } => {
                        *step < 0 || start.is_some_and(|v| v < 0) || end.is_some_and(|v| v < 0)
                    }
                    Selector::Name(_) | Selector::Wildcard => false,
                })
            })
        })
    }
}

/// Visits every node, parents first (for `decrypt: auto` and rule-less rewrap).
fn walk_all<E>(
    node: &mut Value,
    loc: &Loc<'_>,
    f: &mut dyn FnMut(&mut Value, &Loc<'_>) -> Result<(), E>,
) -> Result<(), E> {
    f(node, loc)?;
    match node {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let l = Loc {
                    parent: Some(loc),
                    step: Step::Key(key),
                };
                walk_all(child, &l, f)?;
            }
        }
        Value::Array(items) => {
            for (j, child) in items.iter_mut().enumerate() {
                let l = Loc {
                    parent: Some(loc),
                    step: Step::Index(j),
                };
                walk_all(child, &l, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The one normalization of member names, shared by the rule matcher and
/// the look-alike check (`shape`): the name up to its first NUL (C parsers
/// and the libraries built on them stop there, so `"ssn\u0000x"` is `ssn`
/// to them), each character folded by [`fold_char`].
pub fn normalized_name(name: &str) -> String {
    fold_name(name).collect()
}

/// [`normalized_name`] as an iterator, allocation-free.
pub(crate) fn fold_name(name: &str) -> impl Iterator<Item = char> + '_ {
    until_nul(name).chars().map(fold_char)
}

fn until_nul(name: &str) -> &str {
    match name.find('\0') {
        Some(i) => name.get(..i).unwrap_or(name),
        None => name,
    }
}

/// Case folding that puts together every pair of characters some backend's
/// case-insensitive binding treats as equal: Go's encoding/json and ASP.NET
/// (Unicode simple case folding: `ſ`~`s`, Kelvin sign~`k`), Java's
/// `equalsIgnoreCase` (equal upper cases, or equal lower cases of the upper
/// cases: dotless `ı`~`i`, `İ`~`i`) and .NET's `OrdinalIgnoreCase`
/// (invariant simple upper-casing). The canonical form of `c` is the simple
/// lower case of its simple upper case, which all of those relations keep
/// (two characters any of them calls equal get the same form). Folding too
/// much only seals or refuses more; folding too little stores plaintext.
pub(crate) fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
        match (it.next(), it.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        }
    }
    // `to_uppercase`/`to_lowercase` are the full mappings; where those are
    // several characters the simple mapping is the character itself, but
    // for U+0130 (whose simple lower case is `i`) and three characters
    // Unicode simple-folds onto another (CaseFolding.txt, `S` status).
    let c = match c {
        '\u{1FD3}' => '\u{390}',
        '\u{1FE3}' => '\u{3B0}',
        '\u{FB05}' => '\u{FB06}',
        c => c,
    };
    let upper = single(c.to_uppercase()).unwrap_or(c);
    if upper == '\u{130}' {
        return 'i';
    }
    single(upper.to_lowercase()).unwrap_or(upper)
}

/// Does member `key` match the rule name `folded` (already normalized)?
/// Backends written with Go's encoding/json, Json.NET, ASP.NET, Jackson
/// (case-insensitive) or C parsers bind `"SSN"`, `"ſſn"`, `"ssn\u0000"`
/// to an `ssn` field, so a rule for `ssn` must seal every such spelling.
pub(crate) fn names_match(folded: &str, key: &str) -> bool {
    let (f, k) = (folded.as_bytes(), key.as_bytes());
    // The common case, without a scan for the NUL: the member spells the
    // rule's name (ASCII letters in any case, other characters as folded)
    // and ends there or at a NUL.
    if let Some(head) = k.get(..f.len()) {
        if head.eq_ignore_ascii_case(f) && k.get(f.len()).is_none_or(|&b| b == 0) {
            return true;
        }
    }
    // An ASCII member folds to its lower case, which was just compared.
    if key.is_ascii() {
        return false;
    }
    until_nul(key).chars().map(fold_char).eq(folded.chars())
}

/// The parts a backend could expand member `name` into: the name up to its
/// first NUL, split at `.`, `[` and `]` (MongoDB `$set`, Mongoose and
/// lodash expand `card.number` and `contacts.0.phone`; Spring's and
/// ASP.NET's binders read `contacts[0].phone`), quotes around a part
/// removed, empty parts and array indices (all digits) dropped. Not folded.
pub(crate) fn name_parts(name: &str) -> impl Iterator<Item = &str> + '_ {
    until_nul(name)
        .split(['.', '[', ']'])
        .map(|p| {
            let b = p.as_bytes();
            match (b.first(), b.last()) {
                (Some(q @ (b'"' | b'\'')), Some(e)) if b.len() >= 2 && q == e => {
                    p.get(1..p.len() - 1).unwrap_or(p)
                }
                _ => p,
            }
        })
        .filter(|p| !p.is_empty() && !p.bytes().all(|b| b.is_ascii_digit()))
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

    fn selects_member(&self, key: &str) -> bool {
        self.selectors.iter().any(|s| match s {
            Selector::Name(n) => names_match(n, key),
            Selector::Wildcard => true,
            Selector::Index(_) | Selector::Slice { .. } => false,
        })
    }

    fn selects_element(&self, j: usize, n: usize) -> bool {
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

    #[test]
    fn depth() {
        let v: Value = serde_json::json!({"a": [1, {"b": []}]});
        // object > array > object > array: depth 4
        assert!(!exceeds_depth(&v, 4));
        assert!(exceeds_depth(&v, 3));
        assert!(!exceeds_depth(&serde_json::json!(1), 0));
        assert!(exceeds_depth(&serde_json::json!([]), 0));
        assert!(!exceeds_depth(&serde_json::json!([]), 1));
    }

    #[test]
    fn folds_every_binding_s_case_rules() {
        // Java equalsIgnoreCase: dotless i, dotted capital I; Go/.NET/Unicode
        // simple folding: long s, Kelvin, Angstrom, final sigma, micro.
        for (a, b) in [
            ("ıd", "id"),
            ("İD", "id"),
            ("ſſn", "ssn"),
            ("\u{212A}ey", "key"),
            ("\u{212B}", "å"),
            ("ΣΑΣ", "σας"),
            ("ς", "σ"),
            ("µ", "μ"),
            ("ǅ", "ǆ"),
            ("ẞ", "ß"),
            ("ΐ", "ΐ"),
            ("Card", "cARD"),
        ] {
            assert_eq!(normalized_name(a), normalized_name(b), "{a} {b}");
            assert!(names_match(&normalized_name(b), a), "{a} {b}");
        }
        assert!(names_match("ssn", "ssn\u{0}"));
        assert!(names_match("ssn", "SSN\u{0}078-05-1120"));
        assert!(!names_match("ssn", "\u{0}ssn"));
        assert!(!names_match("ssn", "ssn "));
        assert!(!names_match("ss", "ß"));
    }

    #[test]
    fn folding_is_idempotent() {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let f = fold_char(c);
            assert_eq!(fold_char(f), f, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn name_parts_split_what_binders_expand() {
        fn parts(s: &str) -> Vec<&str> {
            name_parts(s).collect()
        }
        assert_eq!(parts("card.number"), ["card", "number"]);
        assert_eq!(parts("contacts.0.phone"), ["contacts", "phone"]);
        assert_eq!(parts("contacts[0].phone"), ["contacts", "phone"]);
        assert_eq!(parts("card['number']"), ["card", "number"]);
        assert_eq!(parts("card[\"number\"]"), ["card", "number"]);
        assert_eq!(parts(".ssn."), ["ssn"]);
        assert_eq!(parts("ssn\u{0}.x"), ["ssn"]);
        assert_eq!(parts("123"), Vec::<&str>::new());
        assert_eq!(parts("'"), ["'"]);
    }

    #[test]
    fn redacted_locations_show_only_rule_names() {
        let path = FieldPath::parse("$.by_ssn[*]['card.number']").expect("path");
        let root = Loc::ROOT;
        let a = Loc {
            parent: Some(&root),
            step: Step::Key("BY_SSN"),
        };
        let b = Loc {
            parent: Some(&a),
            step: Step::Key("078-05-1120"),
        };
        let c = Loc {
            parent: Some(&b),
            step: Step::Index(2),
        };
        let d = Loc {
            parent: Some(&c),
            step: Step::Key("Card.Number"),
        };
        assert_eq!(d.redacted(path.names()), "$['by_ssn'][*][2]['card.number']");
        assert_eq!(d.redacted(&[]), "$[*][*][2][*]");
        let e = Loc {
            parent: Some(&root),
            step: Step::Key("by_ssn.078-05-1120"),
        };
        assert_eq!(e.redacted(path.names()), "$[*]");
        let f = Loc {
            parent: Some(&root),
            step: Step::Key("by_ssn\u{0}078-05-1120"),
        };
        assert_eq!(f.redacted(path.names()), "$['by_ssn']");
    }

    #[test]
    fn normalized_escapes() {
        let root = Loc::ROOT;
        let a = Loc {
            parent: Some(&root),
            step: Step::Key("it's\\\u{1}\n"),
        };
        let b = Loc {
            parent: Some(&a),
            step: Step::Index(3),
        };
        assert_eq!(b.normalized(), "$['it\\'s\\\\\\u0001\\n'][3]");
        assert_eq!(b.context(), "it's\\\u{1}\n");
        assert_eq!(root.context(), "$");
    }
}
