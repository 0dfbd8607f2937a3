//! Tenant and subject data keys as field-sealing keys (`fs2` envelopes),
//! and the opaque references that name them.
//!
//! - `SubjectRefKey`: turns (scope, tenant, subject) into the reference an
//!   envelope and the key store carry, so neither ever holds a raw id.
//! - `SubjectKey`: one version of one reference's data key, ready to seal
//!   and open (the HKDF step runs once, when it is built).
//! - `SubjectKeys`: the keys (and erasures) one request may use.

use std::sync::Arc;

use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use zeroize::Zeroizing;

use super::datakey::DataKey;
use super::envelope::{is_valid_key_id, Head};
use super::keyring::{KeyView, SealingKey};
use super::keys::hkdf;

/// HKDF info of the field key derived from a data key.
pub(crate) const FIELD_KEY_INFO_V2: &[u8] = b"fieldseal v2 field encryption";
/// HKDF info of the blind-index root derived from a data key (per-name
/// index keys are derived from the root: `crypto::index`).
pub(crate) const INDEX_ROOT_INFO_V2: &[u8] = b"fieldseal v2 blind index";
/// HKDF info of the HMAC key derived from the reference secret.
const REF_KEY_INFO: &[u8] = b"fieldseal v2 subject reference";
/// HMAC message domain of a reference.
const REF_DOMAIN: &[u8] = b"fieldseal subject ref v1\0";
/// Bytes of HMAC output kept in a reference (128 bits: 22 base64url chars).
pub const REFERENCE_BYTES: usize = 16;

/// Domain of the associated data a stored data key is wrapped with.
const STORE_AAD_DOMAIN: &[u8] = b"fieldseal-data-key-v1\0";

/// The associated data a data key is wrapped with in the key store:
/// `"fieldseal-data-key-v1" 0x00 || u8 len(reference) || reference || u32 BE version`.
/// A wrapped key copied to another reference's or version's row does not
/// unwrap.
pub fn data_key_aad(reference: &str, version: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(STORE_AAD_DOMAIN.len() + 1 + reference.len() + 4);
    a.extend_from_slice(STORE_AAD_DOMAIN);
    // References are at most 64 bytes (`is_valid_key_id`).
    a.push(reference.len().min(255) as u8);
    a.extend_from_slice(reference.as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a
}

/// Whose data key a route seals under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefScope {
    /// One key per tenant.
    Tenant,
    /// One key per subject (within its tenant, when there is one).
    Subject,
}

/// The deployment's secret for subject references. It is a data key of its
/// own, kept wrapped in the key store like any other, so rotating the ring
/// (which only rewraps it) never changes a reference, and a reference says
/// nothing about the subject to anyone without the store and the ring.
pub struct SubjectRefKey {
    mac_key: Zeroizing<[u8; 32]>,
}

impl SubjectRefKey {
    pub fn new(secret: &DataKey) -> Option<SubjectRefKey> {
        Some(SubjectRefKey {
            mac_key: hkdf(secret.expose(), &[REF_KEY_INFO])?,
        })
    }

    /// `base64url(HMAC-SHA256(k, "fieldseal subject ref v1" 0x00 || scope
    /// || u64 BE len(tenant) || tenant || u64 BE len(subject) || subject)[..16])`,
    /// scope `t` (tenant: the subject is empty) or `s`. A missing tenant is
    /// the empty string.
    /// None only if HMAC refused the key, which it cannot.
    pub fn reference(
        &self,
        scope: RefScope,
        tenant: Option<&str>,
        subject: &str,
    ) -> Option<String> {
        let tenant = tenant.unwrap_or("");
        let (scope, subject) = match scope {
            RefScope::Tenant => (b't', ""),
            RefScope::Subject => (b's', subject),
        };
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(self.mac_key.as_ref()).ok()?;
        mac.update(REF_DOMAIN);
        mac.update(&[scope]);
        mac.update(&(tenant.len() as u64).to_be_bytes());
        mac.update(tenant.as_bytes());
        mac.update(&(subject.len() as u64).to_be_bytes());
        mac.update(subject.as_bytes());
        let digest = mac.finalize().into_bytes();
        Some(URL_SAFE_NO_PAD.encode(&digest[..REFERENCE_BYTES]))
    }
}

impl std::fmt::Debug for SubjectRefKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectRefKey(..)")
    }
}

/// One version of the data key behind one reference, as a field key. The
/// data key itself is not kept: only the AES key schedule of the derived
/// field key, which `aes`'s `zeroize` feature wipes on drop.
pub struct SubjectKey {
    reference: String,
    version: u32,
    /// `reference:version`, as the envelopes write it.
    label: String,
    cipher: Aes256Gcm,
    /// The root of this key's blind-index keys (wiped on drop).
    index_root: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKey")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl SubjectKey {
    /// None when the reference is not `[A-Za-z0-9_-]{1,64}` or the version is 0.
    pub fn new(reference: &str, version: u32, dek: &DataKey) -> Option<SubjectKey> {
        if !is_valid_key_id(reference) || version == 0 {
            return None;
        }
        let field = hkdf(dek.expose(), &[FIELD_KEY_INFO_V2])?;
        let cipher = Aes256Gcm::new_from_slice(field.as_ref()).ok()?;
        let index_root = hkdf(dek.expose(), &[INDEX_ROOT_INFO_V2])?;
        Some(SubjectKey {
            reference: reference.to_owned(),
            version,
            label: format!("{reference}:{version}"),
            cipher,
            index_root,
        })
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// `reference:version`.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn view(&self) -> KeyView<'_> {
        KeyView {
            head: Head::V2 {
                reference: &self.reference,
                version: self.version,
            },
            label: &self.label,
            cipher: Some(&self.cipher),
        }
    }

    /// Seals `fs2` envelopes under this key.
    pub fn sealing_key(&self) -> SealingKey<'_> {
        SealingKey::new(self.view())
    }

    pub(crate) fn index_root(&self) -> &[u8; 32] {
        &self.index_root
    }
}

/// The data keys one request may open `fs2` envelopes with, and the
/// references it knows to be erased. Small (the request's own subject, a few
/// versions; more for a reader with a role that may read any subject).
#[derive(Debug, Default, Clone)]
pub struct SubjectKeys {
    keys: Vec<Arc<SubjectKey>>,
    erased: Vec<String>,
}

static NO_SUBJECT_KEYS: SubjectKeys = SubjectKeys {
    keys: Vec::new(),
    erased: Vec::new(),
};

impl SubjectKeys {
    /// No keys: every `fs2` envelope is `ForeignSubject`.
    pub fn none() -> &'static SubjectKeys {
        &NO_SUBJECT_KEYS
    }

    pub fn push(&mut self, key: Arc<SubjectKey>) {
        self.keys.push(key);
    }

    /// The keys held, in the order pushed.
    pub fn keys(&self) -> &[Arc<SubjectKey>] {
        &self.keys
    }

    pub fn mark_erased(&mut self, reference: &str) {
        if !self.is_erased(reference) {
            self.erased.push(reference.to_owned());
        }
    }

    pub fn get(&self, reference: &str, version: u32) -> Option<&SubjectKey> {
        self.keys
            .iter()
            .find(|k| k.version == version && k.reference == reference)
            .map(|k| &**k)
    }

    /// The key new values are sealed under: the first pushed (the store
    /// lists versions newest first).
    pub fn first(&self) -> Option<&SubjectKey> {
        self.keys.first().map(|k| &**k)
    }

    /// Erased: the reference is marked so, or `version` is below the
    /// oldest version held for it (only erasure destroys versions; a key
    /// made after an erasure gets a higher version).
    pub fn is_erased_version(&self, reference: &str, version: u32) -> bool {
        self.is_erased(reference)
            || self
                .keys
                .iter()
                .filter(|k| k.reference == reference)
                .map(|k| k.version)
                .min()
                .is_some_and(|oldest| version < oldest)
    }

    /// Whether any key of `reference` is held, or it is known erased.
    pub fn knows(&self, reference: &str) -> bool {
        self.is_erased(reference) || self.keys.iter().any(|k| k.reference == reference)
    }

    pub fn is_erased(&self, reference: &str) -> bool {
        self.erased.iter().any(|r| r == reference)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.erased.is_empty()
    }
}
