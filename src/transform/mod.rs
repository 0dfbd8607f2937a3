//! The field transform: the one engine that seals configured JSON fields in
//! requests, opens them in answers, re-seals stored data under a new key and
//! counts envelopes, for the proxy and every offline command alike. No HTTP
//! types.
//!
//! - `path`: field rules (a JSONPath subset), compiled once at load;
//! - `names`: member names as backends bind them (NUL cut, case folding);
//! - `select`: which rules select which value, stepped per member/element;
//! - `policy`: what happens to one value (keep, replace, null, fail);
//! - `stream`: the one walk over a document's bytes, which validates the
//!   JSON strictly, copies unselected bytes verbatim and applies the policy;
//! - `shape`: the positive model of a route's request bodies (look-alikes,
//!   request schema);
//! - `location`: where a value is, shown redacted in logs and errors;
//! - `index`: blind index rules, written beside JSON fields by the walk;
//! - `pairs`: query strings (and urlencoded forms) judged by the same
//!   names and look-alikes, rewritten in place.
//!
//! Each function takes one document's bytes and returns the transformed
//! bytes with a [`TransformReport`]; the keys are passed in ([`Keys`]).

pub mod index;
pub mod location;
mod names;
pub mod pairs;
mod patch;
pub mod path;
mod policy;
mod select;
pub mod shape;
mod stream;

use std::time::Duration;

use crate::crypto::{DecryptError, Keyring, Opened, SealingKey, SubjectKeys};

pub(crate) use names::fold_char;
pub(crate) use names::name_parts;
pub use names::normalized_name;
pub use patch::check_patch;
pub use path::{FieldPath, PathError};
pub use shape::{JsonReferences, LookAlikeMode, LookAlikes, RequestSchema, RequestShape};
pub use stream::{
    decrypt, decrypt_with, encrypt, encrypt_request, locations, rewrap, scan_strings, validate,
    StringKind, SERDE_MAX_DEPTH,
};

/// One rule: a path and the context its values are bound to.
#[derive(Debug, Clone)]
pub struct FieldRule {
    pub path: FieldPath,
    /// None: the context is the name of the member that holds the value.
    pub context: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DecryptSelection {
    Paths(Vec<FieldRule>),
    /// Every envelope in the answer, opened with its place's context.
    Auto,
}

/// What an answer gets where an envelope does not open
/// (`on_decrypt_failure`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnDecryptFailure {
    /// The answer is refused (502).
    #[default]
    Error,
    /// The value becomes `null`.
    Null,
    /// The envelope stays as it is.
    Keep,
}

/// What an answer gets where an envelope is sealed for an erased subject
/// (`on_erased`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnErased {
    /// The answer is refused (410 Gone).
    #[default]
    Error,
    /// The value becomes `null`.
    Null,
    /// The envelope stays as it is.
    Keep,
    /// The value becomes the route's `erased_marker` string.
    Marker,
}

/// What a route seals in request bodies, compiled once at load.
#[derive(Debug, Clone, Default)]
pub struct SealSpec {
    pub rules: Vec<FieldRule>,
    /// Look-alikes and the request schema of the route.
    pub shape: RequestShape,
    /// Contexts that rules of the whole configuration name: an envelope
    /// outside `rules` that opens under one of them is genuine (sealed by
    /// another route) and left alone by the reserved-prefix guard.
    pub named_contexts: Vec<String>,
    /// Deeper documents are refused.
    pub max_depth: usize,
    /// Blind indexes written beside fields as the walk passes them.
    pub indexes: index::IndexRules,
}

impl SealSpec {
    /// Seals `rules`; no look-alike check, no schema, serde_json's depth.
    pub fn new(rules: Vec<FieldRule>) -> SealSpec {
        SealSpec {
            rules,
            shape: RequestShape::default(),
            named_contexts: Vec::new(),
            max_depth: SERDE_MAX_DEPTH,
            indexes: index::IndexRules::default(),
        }
    }

    /// The same rules and look-alike policy for stored records (the
    /// offline `encrypt`): no request schema, serde_json's depth.
    pub fn for_stored_data(&self) -> SealSpec {
        SealSpec {
            rules: self.rules.clone(),
            shape: RequestShape {
                look_alikes: self.shape.look_alikes.clone(),
                patches: LookAlikes::off(),
                schema: None,
                references: self.shape.references,
            },
            named_contexts: self.named_contexts.clone(),
            max_depth: SERDE_MAX_DEPTH,
            // Stored records are indexed by `fieldseal index`, which
            // recomputes an index member; `encrypt` seals only.
            indexes: index::IndexRules::default(),
        }
    }
}

/// What a route opens in answers, compiled once at load.
#[derive(Debug, Clone)]
pub struct OpenSpec {
    pub selection: DecryptSelection,
    pub on_failure: OnDecryptFailure,
    /// Envelopes sealed longer ago are refused.
    pub max_age: Option<Duration>,
    /// An `fs2` envelope of another tenant or subject (`on_foreign_subject`).
    pub on_foreign: OnDecryptFailure,
    /// An `fs2` envelope of an erased subject (`on_erased`).
    pub on_erased: OnErased,
    /// The string `on_erased: marker` writes.
    pub erased_marker: String,
}

impl OpenSpec {
    pub fn new(selection: DecryptSelection) -> OpenSpec {
        OpenSpec {
            selection,
            on_failure: OnDecryptFailure::Error,
            max_age: None,
            on_foreign: OnDecryptFailure::Error,
            on_erased: OnErased::Error,
            erased_marker: String::new(),
        }
    }

    /// The rules, when the selection names paths.
    pub fn rules(&self) -> &[FieldRule] {
        match &self.selection {
            DecryptSelection::Paths(rules) => rules,
            DecryptSelection::Auto => &[],
        }
    }
}

/// The keys one transform uses: the key values are sealed under, resolved
/// by the caller (the ring's active key, or a tenant's or subject's data
/// key), the ring that opens `fs1` envelopes and the data keys that open
/// `fs2` ones.
#[derive(Clone, Copy)]
pub struct Keys<'k> {
    pub seal: SealingKey<'k>,
    pub ring: &'k Keyring,
    pub subjects: &'k SubjectKeys,
    /// Only `fs2` envelopes under `subjects` count as genuine (request
    /// bodies on a tenant- or subject-scoped route: a ring envelope or
    /// another subject's, pasted in by the client, is sealed as a string).
    pub subject_only: bool,
    /// What blind indexes are computed under (the route's `index_scope`).
    pub index: index::IndexKeys<'k>,
}

impl<'k> From<&'k Keyring> for Keys<'k> {
    /// Seal under the ring's active key; no data keys.
    fn from(ring: &'k Keyring) -> Keys<'k> {
        Keys {
            seal: ring.sealing_key(),
            ring,
            subjects: SubjectKeys::none(),
            subject_only: false,
            index: index::IndexKeys::Ring(ring),
        }
    }
}

impl Keys<'_> {
    #[inline]
    pub(crate) fn open_at(
        &self,
        s: &str,
        context: &str,
        max_age: Option<Duration>,
        now: u64,
    ) -> Result<Opened, DecryptError> {
        if self.subject_only && crate::crypto::envelope_subject(s).is_none() {
            return Err(DecryptError::ForeignSubject);
        }
        self.ring.open_with(self.subjects, s, context, max_age, now)
    }
}

/// A value that could not be opened: where (redacted), under which key id,
/// and why; never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecryptFailure {
    /// Redacted location of the value, e.g. `$['contacts'][0]['phone']`.
    pub location: String,
    pub key_id: Option<String>,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransformReport {
    /// Values sealed (`rewrap`: envelopes re-sealed under the sealing key).
    pub encrypted: usize,
    /// Envelopes opened.
    pub decrypted: usize,
    /// Rule paths (as written) that matched at least one value.
    pub paths: Vec<String>,
    /// Key ids used, without repeats.
    pub key_ids: Vec<String>,
    /// Envelopes that did not open but whose document was kept
    /// (`on_decrypt_failure: null | keep`).
    pub failures: Vec<DecryptFailure>,
}

impl TransformReport {
    #[inline]
    pub(crate) fn note_key(&mut self, id: &str) {
        if !self.key_ids.iter().any(|k| k == id) {
            self.key_ids.push(id.to_owned());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
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
    /// A member named `$ref` or `$values` on a route that refuses them.
    #[error("the body holds JSON reference metadata ($ref, $values)")]
    Reference,
    /// A JSON Patch document that is not one (or is ambiguous).
    #[error("the body is not a well-formed JSON Patch document")]
    InvalidPatch,
    /// The value would seal into more than `crypto::MAX_ENVELOPE_LEN`.
    #[error("a field is too large to seal")]
    FieldTooLarge,
    /// A field to index is an object or an array, or is there twice in
    /// one object (two spellings, or one name repeated).
    #[error("a field to index is not one string, number or boolean")]
    Unindexable,
    /// The body holds a member where a blind index would be written
    /// (beside an indexed field's place, in any spelling a backend binds
    /// to the index's name): an index is only ever written by fieldseal.
    #[error("the body holds a member under the blind index name {name}")]
    IndexSupplied { name: String },
    /// The value nests deeper than `crypto::MAX_SEAL_DEPTH`.
    #[error("a field nests too deeply to seal")]
    FieldTooDeep,
}

impl From<crate::crypto::SealError> for TransformError {
    fn from(e: crate::crypto::SealError) -> TransformError {
        use crate::crypto::SealError;
        match e {
            SealError::TooLarge => TransformError::FieldTooLarge,
            SealError::TooDeep => TransformError::FieldTooDeep,
            SealError::Serialize | SealError::Rng | SealError::UnknownKey => TransformError::Seal,
        }
    }
}

/// The rule paths (as written, without repeats) of the rules in `hit`.
#[inline]
fn matched_paths(rules: &[FieldRule], hit: &[bool]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (rule, _) in rules.iter().zip(hit).filter(|(_, h)| **h) {
        if !out.iter().any(|p| p == rule.path.as_str()) {
            out.push(rule.path.as_str().to_owned());
        }
    }
    out
}
