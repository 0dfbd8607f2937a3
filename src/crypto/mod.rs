//! Field encryption core: envelope format, AEAD, key loading and the keyring.
//! Pure: bytes and JSON values in and out, no HTTP types.
//!
//! STUB: the public API below is the contract; the bodies are being written.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaltSource {
    Env(String),
    File(PathBuf),
}

pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 600_000;
pub const MIN_PBKDF2_ITERATIONS: u32 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store not implemented")]
    Unimplemented,
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
}

impl DecryptError {
    /// Stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecryptError::Malformed => "malformed",
            DecryptError::UnknownKey => "unknown_key",
            DecryptError::AuthFailed => "auth_failed",
            DecryptError::Expired => "expired",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("value could not be serialized")]
    Serialize,
    #[error("random number generator failed")]
    Rng,
}

pub struct Opened {
    pub value: Value,
    pub key_id: String,
    pub issued_at: u64,
}

pub struct Keyring {
    active: String,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    pub fn load(_spec: &KeyringSpec) -> Result<Keyring, KeyError> {
        Err(KeyError::Unimplemented)
    }
    pub fn from_raw_keys(
        active: &str,
        _keys: Vec<(String, [u8; 32])>,
    ) -> Result<Keyring, KeyError> {
        Ok(Keyring {
            active: active.to_string(),
        })
    }
    pub fn active_id(&self) -> &str {
        &self.active
    }
    pub fn ids(&self) -> Vec<&str> {
        vec![self.active.as_str()]
    }
    pub fn contains(&self, id: &str) -> bool {
        id == self.active
    }
    pub fn seal(&self, _value: &Value, _context: &str) -> Result<String, SealError> {
        Err(SealError::Rng)
    }
    pub fn seal_at(
        &self,
        _value: &Value,
        _context: &str,
        _issued_at: u64,
    ) -> Result<String, SealError> {
        Err(SealError::Rng)
    }
    pub fn open(
        &self,
        _envelope: &str,
        _context: &str,
        _max_age: Option<Duration>,
    ) -> Result<Opened, DecryptError> {
        Err(DecryptError::Malformed)
    }
    pub fn open_at(
        &self,
        _envelope: &str,
        _context: &str,
        _max_age: Option<Duration>,
        _now: u64,
    ) -> Result<Opened, DecryptError> {
        Err(DecryptError::Malformed)
    }
    /// Encrypts and decrypts a probe under every key; (key id, Ok or reason).
    pub fn self_test(&self) -> Vec<(String, Result<(), String>)> {
        Vec::new()
    }
    /// A 32-byte sub-key of key `id` for another purpose (the audit log's HMAC).
    pub fn derive_subkey(&self, _id: &str, _purpose: &str) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        None
    }
}

/// Cheap syntactic check, no crypto: does the string have the envelope prefix?
pub fn looks_like_envelope(s: &str) -> bool {
    s.starts_with("fs1:")
}

/// The key id an envelope names, if it parses.
pub fn envelope_key_id(s: &str) -> Option<&str> {
    let rest = s.strip_prefix("fs1:")?;
    rest.split(':').next()
}

/// `fieldseal keygen`: 32 bytes from the OS CSPRNG, base64, mode 0600, never overwrites.
pub fn write_key_file(_path: &std::path::Path) -> Result<(), KeyError> {
    Err(KeyError::Unimplemented)
}
