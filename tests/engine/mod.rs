//! The transform engine (`fieldseal::transform`) called the way the tests
//! read best: on bytes with the rules and keys spelled out, or on a parsed
//! document (serialized, transformed, parsed back).
#![allow(dead_code)]

use std::time::Duration;

use fieldseal::crypto::Keyring;
use fieldseal::transform::{
    self, DecryptSelection, FieldRule, OnDecryptFailure, OpenSpec, RequestShape, SealSpec,
    TransformError, TransformReport,
};
use serde_json::Value;

pub use fieldseal::transform::SERDE_MAX_DEPTH;

pub type Out = Result<(Vec<u8>, TransformReport), TransformError>;

fn seal_spec(rules: &[FieldRule], named: &[String], max_depth: usize) -> SealSpec {
    SealSpec {
        named_contexts: named.to_vec(),
        max_depth,
        ..SealSpec::new(rules.to_vec())
    }
}

/// Seals `rules` (no look-alike check) with the active key of `ring`.
pub fn encrypt_json(
    input: &[u8],
    rules: &[FieldRule],
    ring: &Keyring,
    now: u64,
    named: &[String],
    max_depth: usize,
) -> Out {
    transform::encrypt(input, &seal_spec(rules, named, max_depth), ring.into(), now)
}

/// A route's request transform: look-alikes and the schema of `shape`.
pub fn encrypt_request(
    input: &[u8],
    rules: &[FieldRule],
    shape: &RequestShape,
    ring: &Keyring,
    now: u64,
    named: &[String],
    max_depth: usize,
) -> Out {
    let spec = SealSpec {
        shape: shape.clone(),
        ..seal_spec(rules, named, max_depth)
    };
    transform::encrypt_request(input, &spec, ring.into(), now)
}

pub fn decrypt_json(
    input: &[u8],
    selection: &DecryptSelection,
    ring: &Keyring,
    on_failure: OnDecryptFailure,
    max_age: Option<Duration>,
    now: u64,
) -> Out {
    let spec = OpenSpec {
        on_failure,
        max_age,
        ..OpenSpec::new(selection.clone())
    };
    transform::decrypt(input, &spec, ring, now)
}

/// The engine on a parsed document: `doc` is replaced by the result.
fn on_value(
    doc: &mut Value,
    f: impl FnOnce(&[u8]) -> Out,
) -> Result<TransformReport, TransformError> {
    let input = serde_json::to_vec(doc).expect("a Value serializes");
    let (out, report) = f(&input)?;
    *doc = serde_json::from_slice(&out).expect("the engine writes JSON");
    Ok(report)
}

pub fn encrypt_document(
    doc: &mut Value,
    rules: &[FieldRule],
    ring: &Keyring,
    now: u64,
) -> Result<TransformReport, TransformError> {
    on_value(doc, |b| {
        encrypt_json(b, rules, ring, now, &[], SERDE_MAX_DEPTH)
    })
}

pub fn decrypt_document(
    doc: &mut Value,
    selection: &DecryptSelection,
    ring: &Keyring,
    on_failure: OnDecryptFailure,
    max_age: Option<Duration>,
    now: u64,
) -> Result<TransformReport, TransformError> {
    on_value(doc, |b| {
        decrypt_json(b, selection, ring, on_failure, max_age, now)
    })
}

pub fn rewrap_document(
    doc: &mut Value,
    rules: Option<&[FieldRule]>,
    ring: &Keyring,
    now: u64,
) -> Result<TransformReport, TransformError> {
    on_value(doc, |b| transform::rewrap(b, rules, ring.into(), now))
}
