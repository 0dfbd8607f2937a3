//! Field encryption core: envelope format, AEAD, key loading and the keyring.
//! Pure: bytes and JSON values in and out, no HTTP types.
//!
//! - `envelope`: the `fs1:` and `fs2:` string formats and their associated data.
//! - `keys`: reading key material (PBKDF2 passphrases, key files) and HKDF.
//! - `keyring`: the loaded keys, `seal` / `open`.
//! - `datakey`: data keys and the key-encryption-key interface that wraps
//!   them (`KeyEncryptionKey`; the ring's keys implement it).
//! - `subject`: tenant and subject data keys as field keys, and references.
//! - `index`: blind indexes (keyed, truncated HMACs of normalized values).
//! - `token`: the admin bearer token, a secret read like a key file.
//!
//! The byte layout, derivations and test vectors are in `docs/envelope.md`;
//! the key hierarchy and how to add a key provider in `docs/keys.md`.

use std::path::PathBuf;

use serde_json::Value;

mod datakey;
mod envelope;
pub mod index;
mod keyring;
mod keys;
pub mod pkcs11;
mod subject;
mod token;

pub use datakey::{DataKey, Keks, KeyEncryptionKey, RingKek, WrapError, RING_WRAPPED_LEN};
pub(crate) use envelope::TypeTag;
pub use envelope::{
    has_prefix as has_envelope_prefix, is_valid_key_id, max_plaintext_len, parse_version,
    MAX_ENVELOPE_LEN, MAX_KEY_ID_LEN, NONCE_LEN, PREFIX, PREFIX_V2,
};
pub(crate) use keyring::AeadScratch;
pub use keyring::{Keyring, SealingKey, MAX_SEAL_DEPTH};
pub(crate) use keys::looser_than_0600;
pub use keys::{check_source, write_key_file, MIN_SALT_LEN};
pub use subject::{
    data_key_aad, RefScope, SubjectKey, SubjectKeys, SubjectRefKey, REFERENCE_BYTES,
};
pub use token::AdminToken;

/// How the keyring is described once the YAML is validated (no secret in it,
/// only where to find one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringSpec {
    pub active: String,
    pub keys: Vec<KeySpec>,
    pub pbkdf2_iterations: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub id: String,
    pub source: KeySource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A passphrase in an environment variable, stretched with PBKDF2-HMAC-SHA256.
    Passphrase { env: String, salt: SaltSource },
    /// A file holding 32 random bytes in base64, mode 0600.
    File(PathBuf),
    /// A key in a PKCS#11 token: never read, only used by the token to
    /// wrap and unwrap data keys (`pkcs11::Pkcs11Kek`).
    Pkcs11(pkcs11::Pkcs11Spec),
}

impl KeySource {
    /// `file`, `passphrase` or `pkcs11`.
    pub fn kind(&self) -> &'static str {
        match self {
            KeySource::File(_) => "file",
            KeySource::Passphrase { .. } => "passphrase",
            KeySource::Pkcs11(_) => pkcs11::KIND,
        }
    }

    /// Whether fieldseal holds the key's bytes (file, passphrase) or only
    /// a handle to it in a token.
    pub fn has_bytes(&self) -> bool {
        !matches!(self, KeySource::Pkcs11(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaltSource {
    Env(String),
    File(PathBuf),
}

pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 600_000;
pub const MIN_PBKDF2_ITERATIONS: u32 = 100_000;

/// Why a keyring could not be built. Messages name the key id and the
/// environment variable or file involved, never a secret or salt value,
/// and say the whole of it (no `source` to print a second time).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the keyring has no keys")]
    NoKeys,
    #[error("key id {id:?} is invalid: use 1 to 64 characters from A-Z a-z 0-9 _ -")]
    InvalidId { id: String },
    #[error("key id {id:?} is listed more than once")]
    DuplicateId { id: String },
    #[error("the active key {id:?} is not in the keyring")]
    ActiveMissing { id: String },
    #[error("key {id:?}: pbkdf2_iterations is {iterations}, at least {min} are required")]
    TooFewIterations {
        id: String,
        iterations: u32,
        min: u32,
    },
    #[error("key {id:?}: environment variable {var} is not set")]
    EnvMissing { id: String, var: String },
    #[error("key {id:?}: environment variable {var} is empty")]
    EnvEmpty { id: String, var: String },
    #[error("key {id:?}: the salt from {origin} is {len} bytes, at least {min} are required")]
    SaltTooShort {
        id: String,
        /// `environment variable NAME` or `file PATH`.
        origin: String,
        len: usize,
        min: usize,
    },
    #[error("key {id:?}: cannot read {}: {error}", path.display())]
    Read {
        id: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "key {id:?}: key file {} has mode {mode:04o}; it must be 0600 or stricter (chmod 600 {})",
        path.display(),
        path.display()
    )]
    Permissions {
        id: String,
        path: PathBuf,
        mode: u32,
    },
    #[error("key {id:?}: key file {}: {problem}", path.display())]
    KeyFile {
        id: String,
        path: PathBuf,
        problem: &'static str,
    },
    #[error("{} already exists; refusing to overwrite a key file", path.display())]
    Exists { path: PathBuf },
    #[error("cannot write key file {}: {error}", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the operating system random number generator failed")]
    Rng,
    #[error("key {id:?}: key derivation failed")]
    Derive { id: String },
    /// A PKCS#11 key: the module, token, PIN source or key (no PIN in it).
    #[error("key {id:?}: {message}")]
    Token { id: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("not a fieldseal envelope")]
    Malformed,
    #[error("unknown key id")]
    UnknownKey,
    #[error("authentication failed")]
    AuthFailed,
    #[error("envelope older than max_age")]
    Expired,
    /// An `fs2` envelope sealed for a tenant or subject whose key this
    /// request does not hold.
    #[error("sealed for another subject")]
    ForeignSubject,
    /// An `fs2` envelope whose subject's keys were erased.
    #[error("the subject's keys were erased")]
    Erased,
}

impl DecryptError {
    /// Stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecryptError::Malformed => "malformed",
            DecryptError::UnknownKey => "unknown_key",
            DecryptError::AuthFailed => "auth_failed",
            DecryptError::Expired => "expired",
            DecryptError::ForeignSubject => "foreign_subject",
            DecryptError::Erased => "erased",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("value could not be serialized")]
    Serialize,
    #[error("random number generator failed")]
    Rng,
    /// The envelope would be longer than `MAX_ENVELOPE_LEN`, so `open` would refuse it.
    #[error("value too large to seal")]
    TooLarge,
    /// The value nests deeper than `MAX_SEAL_DEPTH`, so `open` could not read it back.
    #[error("value nests too deeply to seal")]
    TooDeep,
    /// `seal_with_nonce` was given a key id that is not in the ring.
    #[error("unknown key id")]
    UnknownKey,
}

/// A successfully opened envelope. Deliberately no `Debug`: it holds plaintext.
pub struct Opened {
    pub value: Value,
    /// The ring key id (`fs1`), or `reference:version` (`fs2`).
    pub key_id: String,
    pub issued_at: u64,
    /// The reference of the tenant or subject (`fs2` only).
    pub subject: Option<String>,
}

/// Cheap syntactic check, no crypto: does the string have an envelope
/// prefix (`fs1:` or `fs2:`)?
///
/// Only the prefix is checked on purpose: both are reserved, so a damaged or
/// truncated envelope still counts as one and is reported as a decrypt
/// failure instead of being passed on as if it were plain data.
pub fn looks_like_envelope(s: &str) -> bool {
    envelope::has_prefix(s.as_bytes())
}

/// The key an envelope names, if the prefix and name are well formed: the
/// key id (`fs1`) or `reference:version` (`fs2`).
pub fn envelope_key_id(s: &str) -> Option<&str> {
    envelope::split(s).map(|(_, label, _)| label)
}

/// The tenant or subject reference and key version of an `fs2` envelope.
pub fn envelope_subject(s: &str) -> Option<(&str, u32)> {
    match envelope::split(s)?.0 {
        envelope::Head::V2 { reference, version } => Some((reference, version)),
        envelope::Head::V1 { .. } => None,
    }
}

/// Why a ring's key ids are refused, with the index of the id at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyIdProblem {
    /// Not 1 to 64 characters of A-Z a-z 0-9 - _ (what an envelope holds).
    Invalid(usize),
    /// The same id as an earlier entry.
    Duplicate(usize),
    NoKeys,
    /// The active id is not among them.
    ActiveMissing,
}

/// The rules for a ring's key ids, checked here for the config loader and
/// the keyring alike: each id valid and listed once, at least one, and the
/// active one among them.
pub fn check_key_ids<'a>(
    active: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), KeyIdProblem> {
    let mut seen: Vec<&str> = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        if !is_valid_key_id(id) {
            return Err(KeyIdProblem::Invalid(i));
        }
        if seen.contains(&id) {
            return Err(KeyIdProblem::Duplicate(i));
        }
        seen.push(id);
    }
    if seen.is_empty() {
        return Err(KeyIdProblem::NoKeys);
    }
    if !seen.contains(&active) {
        return Err(KeyIdProblem::ActiveMissing);
    }
    Ok(())
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

/// Seconds since the Unix epoch; 0 if the clock is before 1970.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn key_id_rules() {
        assert_eq!(check_key_ids("a", ["a", "b"]), Ok(()));
        assert_eq!(
            check_key_ids("a", ["a", "b c"]),
            Err(KeyIdProblem::Invalid(1))
        );
        assert_eq!(
            check_key_ids("a", ["a", "b", "a"]),
            Err(KeyIdProblem::Duplicate(2))
        );
        assert_eq!(check_key_ids("a", []), Err(KeyIdProblem::NoKeys));
        assert_eq!(check_key_ids("c", ["a"]), Err(KeyIdProblem::ActiveMissing));
        assert_eq!(check_key_ids("a", [""]), Err(KeyIdProblem::Invalid(0)));
    }
}
