//! Compiled JSONPath field rules applied to a `serde_json::Value`. No HTTP types.
//!
//! STUB: the public API below is the contract; the bodies are being written.

use std::time::Duration;

use serde_json::Value;

use crate::crypto::Keyring;

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
}

impl FieldPath {
    pub fn parse(s: &str) -> Result<FieldPath, PathError> {
        Ok(FieldPath {
            source: s.to_string(),
        })
    }
    pub fn as_str(&self) -> &str {
        &self.source
    }
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

pub fn encrypt_document(
    _doc: &mut Value,
    _rules: &[FieldRule],
    _ring: &Keyring,
    _now: u64,
) -> Result<TransformReport, FieldError> {
    Err(FieldError::Seal)
}

pub fn decrypt_document(
    _doc: &mut Value,
    _selection: &DecryptSelection,
    _ring: &Keyring,
    _on_failure: OnDecryptFailure,
    _max_age: Option<Duration>,
    _now: u64,
) -> Result<TransformReport, FieldError> {
    Ok(TransformReport::default())
}

/// Re-encrypts every envelope found anywhere in `doc` under the active key,
/// same context and type; plaintext never leaves this function.
pub fn rewrap_document(
    _doc: &mut Value,
    _rules: Option<&[FieldRule]>,
    _ring: &Keyring,
    _now: u64,
) -> Result<TransformReport, FieldError> {
    Err(FieldError::Seal)
}

/// True when `v` nests deeper than `limit` objects/arrays.
pub fn exceeds_depth(_v: &Value, _limit: usize) -> bool {
    false
}
