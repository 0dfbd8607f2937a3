//! The test oracle: the field transforms written a second, simpler way, on
//! a `serde_json::Value` tree. The proxy and the offline commands run only
//! the streaming engine (`fieldseal::transform`); the property tests check
//! that engine against this one. It shares the compiled paths (which
//! member or element a segment selects) and the location format, nothing
//! else: walk, state sets, policy and failure modes are its own.
//!
//! Semantics: every value any rule selects is visited once, parents first,
//! with the lowest-numbered selecting rule; where rules overlap, the
//! outermost match wins and nothing is sealed twice.
#![allow(dead_code)]

use std::borrow::Cow;
use std::time::Duration;

use fieldseal::crypto::{envelope_key_id, looks_like_envelope, DecryptError, Keyring};
use fieldseal::transform::location::{self, Step};
use fieldseal::transform::{
    DecryptFailure, DecryptSelection, FieldRule, OnDecryptFailure, TransformReport,
};
use serde_json::Value;

#[derive(Debug)]
pub enum OracleError {
    Seal,
    Decrypt(DecryptFailure),
}

enum Flow {
    Descend,
    Skip,
}

/// (rule, segment): segment `seg` of rule `rule` applies to the children.
type States = Vec<(usize, usize)>;

fn child_states(
    rules: &[FieldRule],
    states: &States,
    member: Option<&str>,
    index: (usize, usize),
) -> States {
    let mut out: States = Vec::new();
    for &(r, s) in states {
        let Some(seg) = rules[r].path.segments().get(s) else {
            continue;
        };
        let mut add = |st| {
            if !out.contains(&st) {
                out.push(st)
            }
        };
        if seg.is_descendant() {
            add((r, s));
        }
        let selects = match member {
            Some(k) => seg.selects_member(k),
            None => seg.selects_element(index.0, index.1),
        };
        if selects {
            add((r, s + 1));
        }
    }
    out
}

fn selected(rules: &[FieldRule], states: &States) -> Option<usize> {
    states
        .iter()
        .filter(|(r, s)| rules[*r].path.segments().len() == *s)
        .map(|(r, _)| *r)
        .min()
}

/// Visits the selected nodes; `f` gets the node, its rule and its path.
fn walk_rules<F>(doc: &mut Value, rules: &[FieldRule], f: &mut F) -> Result<(), OracleError>
where
    F: FnMut(&mut Value, usize, &[Step<'static>]) -> Result<Flow, OracleError>,
{
    let states: States = (0..rules.len()).map(|r| (r, 0)).collect();
    visit(doc, rules, states, &mut Vec::new(), f)
}

fn visit<F>(
    node: &mut Value,
    rules: &[FieldRule],
    states: States,
    path: &mut Vec<Step<'static>>,
    f: &mut F,
) -> Result<(), OracleError>
where
    F: FnMut(&mut Value, usize, &[Step<'static>]) -> Result<Flow, OracleError>,
{
    if states.is_empty() {
        return Ok(());
    }
    if let Some(r) = selected(rules, &states) {
        if let Flow::Skip = f(node, r, path)? {
            return Ok(());
        }
    }
    match node {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let s = child_states(rules, &states, Some(k), (0, 0));
                path.push(Step::Key(Cow::Owned(k.clone())));
                visit(child, rules, s, path, f)?;
                path.pop();
            }
        }
        Value::Array(items) => {
            let n = items.len();
            for (j, child) in items.iter_mut().enumerate() {
                let s = child_states(rules, &states, None, (j, n));
                path.push(Step::Index(j));
                visit(child, rules, s, path, f)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

fn walk_all<F>(
    node: &mut Value,
    path: &mut Vec<Step<'static>>,
    f: &mut F,
) -> Result<(), OracleError>
where
    F: FnMut(&mut Value, &[Step<'static>]) -> Result<(), OracleError>,
{
    f(node, path)?;
    match node {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                path.push(Step::Key(Cow::Owned(k.clone())));
                walk_all(child, path, f)?;
                path.pop();
            }
        }
        Value::Array(items) => {
            for (j, child) in items.iter_mut().enumerate() {
                path.push(Step::Index(j));
                walk_all(child, path, f)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

fn context_of<'a>(rule: &'a FieldRule, path: &'a [Step<'static>]) -> &'a str {
    rule.context
        .as_deref()
        .unwrap_or_else(|| location::context(path))
}

fn failure(path: &[Step<'_>], envelope: &str, e: DecryptError, names: &[String]) -> DecryptFailure {
    DecryptFailure {
        location: location::redacted(path, names),
        key_id: envelope_key_id(envelope).map(str::to_owned),
        reason: e.reason(),
    }
}

fn note(ids: &mut Vec<String>, id: &str) {
    if !ids.iter().any(|k| k == id) {
        ids.push(id.to_owned());
    }
}

fn matched(rules: &[FieldRule], hit: &[bool]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (rule, _) in rules.iter().zip(hit).filter(|(_, h)| **h) {
        if !out.iter().any(|p| p == rule.path.as_str()) {
            out.push(rule.path.as_str().to_owned());
        }
    }
    out
}

/// Every selected value (any type) becomes its envelope, unless it is a
/// string that opens with the same context; then every other string with
/// the reserved prefix that is not genuine for its place or a named context
/// is sealed too. On `Err` the document is partly transformed.
pub fn encrypt_document_with(
    doc: &mut Value,
    rules: &[FieldRule],
    ring: &Keyring,
    now: u64,
    named_contexts: &[String],
) -> Result<TransformReport, OracleError> {
    let mut report = TransformReport::default();
    let mut hit = vec![false; rules.len()];
    let mut selected: Vec<Vec<Step<'static>>> = Vec::new();
    walk_rules(doc, rules, &mut |node, r, path| {
        hit[r] = true;
        selected.push(path.to_vec());
        let context = context_of(&rules[r], path);
        if let Value::String(s) = node {
            if looks_like_envelope(s) && ring.open_at(s, context, None, now).is_ok() {
                return Ok(Flow::Skip);
            }
        }
        let sealed = ring
            .seal_at(node, context, now)
            .map_err(|_| OracleError::Seal)?;
        *node = Value::String(sealed);
        report.encrypted += 1;
        Ok(Flow::Skip)
    })?;
    walk_all(doc, &mut Vec::new(), &mut |node, path| {
        let Value::String(s) = &*node else {
            return Ok(());
        };
        if !looks_like_envelope(s) || selected.iter().any(|p| p == path) {
            return Ok(());
        }
        let context = location::context(path);
        let genuine = ring.open_at(s, context, None, now).is_ok()
            || named_contexts
                .iter()
                .any(|c| ring.open_at(s, c, None, now).is_ok());
        if genuine {
            return Ok(());
        }
        let sealed = ring
            .seal_at(node, context, now)
            .map_err(|_| OracleError::Seal)?;
        *node = Value::String(sealed);
        report.encrypted += 1;
        Ok(())
    })?;
    if report.encrypted > 0 {
        report.key_ids.push(ring.active_id().to_owned());
    }
    report.paths = matched(rules, &hit);
    Ok(report)
}

pub fn encrypt_document(
    doc: &mut Value,
    rules: &[FieldRule],
    ring: &Keyring,
    now: u64,
) -> Result<TransformReport, OracleError> {
    encrypt_document_with(doc, rules, ring, now, &[])
}

struct Opener<'k> {
    ring: &'k Keyring,
    on_failure: OnDecryptFailure,
    max_age: Option<Duration>,
    now: u64,
}

impl Opener<'_> {
    fn open(
        &self,
        node: &mut Value,
        context: &str,
        path: &[Step<'_>],
        names: &[String],
        report: &mut TransformReport,
    ) -> Result<(), OracleError> {
        let Value::String(s) = &*node else {
            return Ok(());
        };
        if !looks_like_envelope(s) {
            return Ok(());
        }
        match self.ring.open_at(s, context, self.max_age, self.now) {
            Ok(opened) => {
                note(&mut report.key_ids, &opened.key_id);
                *node = opened.value;
                report.decrypted += 1;
            }
            Err(e) => {
                let f = failure(path, s, e, names);
                match self.on_failure {
                    OnDecryptFailure::Error => return Err(OracleError::Decrypt(f)),
                    OnDecryptFailure::Null => *node = Value::Null,
                    OnDecryptFailure::Keep => {}
                }
                report.failures.push(f);
            }
        }
        Ok(())
    }
}

/// Opens every selected envelope (with `Auto`, every one), then goes on
/// inside what it opened.
pub fn decrypt_document(
    doc: &mut Value,
    selection: &DecryptSelection,
    ring: &Keyring,
    on_failure: OnDecryptFailure,
    max_age: Option<Duration>,
    now: u64,
) -> Result<TransformReport, OracleError> {
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
            walk_rules(doc, rules, &mut |node, r, path| {
                hit[r] = true;
                let names = rules[r].path.names();
                opener.open(node, context_of(&rules[r], path), path, names, &mut report)?;
                Ok(Flow::Descend)
            })?;
            report.paths = matched(rules, &hit);
        }
        DecryptSelection::Auto => {
            walk_all(doc, &mut Vec::new(), &mut |node, path| {
                opener.open(node, location::context(path), path, &[], &mut report)
            })?;
        }
    }
    Ok(report)
}

/// Every envelope re-sealed under the active key (with `rules`: theirs
/// with their contexts, then the others not yet under it with their
/// places').
pub fn rewrap_document(
    doc: &mut Value,
    rules: Option<&[FieldRule]>,
    ring: &Keyring,
    now: u64,
) -> Result<TransformReport, OracleError> {
    let mut report = TransformReport::default();
    let active = ring.active_id().to_owned();
    let mut rewrap = |node: &mut Value, context: &str, path: &[Step<'_>], names: &[String]| {
        let Value::String(s) = &*node else {
            return Ok(());
        };
        if !looks_like_envelope(s) {
            return Ok(());
        }
        let opened = ring
            .open_at(s, context, None, now)
            .map_err(|e| OracleError::Decrypt(failure(path, s, e, names)))?;
        report.decrypted += 1;
        note(&mut report.key_ids, &opened.key_id);
        if opened.key_id != active {
            let sealed = ring
                .seal_at(&opened.value, context, opened.issued_at)
                .map_err(|_| OracleError::Seal)?;
            *node = Value::String(sealed);
            report.encrypted += 1;
        }
        Ok(())
    };
    match rules {
        Some(rules) => {
            let mut hit = vec![false; rules.len()];
            walk_rules(doc, rules, &mut |node, r, path| {
                hit[r] = true;
                rewrap(
                    node,
                    context_of(&rules[r], path),
                    path,
                    rules[r].path.names(),
                )?;
                Ok(Flow::Descend)
            })?;
            walk_all(doc, &mut Vec::new(), &mut |node, path| match &*node {
                Value::String(s) if envelope_key_id(s) == Some(active.as_str()) => Ok(()),
                _ => rewrap(node, location::context(path), path, &[]),
            })?;
            report.paths = matched(rules, &hit);
        }
        None => walk_all(doc, &mut Vec::new(), &mut |node, path| {
            rewrap(node, location::context(path), path, &[])
        })?,
    }
    Ok(report)
}

/// Normalized paths of the values `rule` selects, in document order.
pub fn locations(doc: &Value, rule: &FieldRule) -> Vec<String> {
    let mut copy = doc.clone();
    let mut out = Vec::new();
    let rules = std::slice::from_ref(rule);
    let _ = walk_rules(&mut copy, rules, &mut |_, _, path| {
        out.push(location::normalized(path));
        Ok(Flow::Descend)
    });
    out
}
