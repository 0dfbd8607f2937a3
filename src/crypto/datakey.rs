//! Data keys and the key-encryption keys that wrap them.
//!
//! The key hierarchy (`docs/keys.md`): a *key-encryption key* (KEK: today
//! a ring key, from a file or a passphrase; later an HSM or KMS key) wraps
//! *data keys* (one per tenant or subject, random 256-bit), which the key
//! store holds only wrapped. From a data key HKDF derives the key that
//! seals fields (`SubjectKey`). Rotating the ring rewraps data keys, never
//! records.

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroizing;

use super::envelope::{NONCE_LEN, TAG_LEN};
use super::keyring::{fresh_nonce, Keyring};

/// A random 256-bit data key, in the clear. Wiped on drop; no `Debug` of
/// its bytes, no `Clone` (one owner, so one place wipes it).
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// 32 bytes from the OS CSPRNG.
    pub fn generate() -> Result<DataKey, WrapError> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(k.as_mut()).map_err(|_| WrapError::Rng)?;
        Ok(DataKey(k))
    }

    /// A data key from known bytes (providers, tests, known-answer vectors).
    pub fn from_bytes(mut bytes: [u8; 32]) -> DataKey {
        let k = DataKey(Zeroizing::new(bytes));
        zeroize::Zeroize::zeroize(&mut bytes);
        k
    }

    /// The key bytes, for a provider that wraps them and for HKDF.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Why a data key could not be wrapped or unwrapped. No key bytes, no
/// wrapped bytes in any message.
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error("the operating system random number generator failed")]
    Rng,
    /// The wrapped key does not authenticate under this KEK with this
    /// associated data: another KEK, another subject, or damaged bytes.
    #[error("the wrapped data key does not authenticate")]
    Unwrap,
    #[error("the wrapped data key is malformed")]
    Malformed,
    /// No KEK of that id is configured (e.g. the ring key that wrapped it
    /// was removed before `subjects rewrap` ran).
    #[error("key-encryption key {id:?} is not configured")]
    UnknownKek { id: String },
    /// The provider (an HSM, a KMS) failed or could not be reached; the
    /// message is the provider's, without secrets.
    #[error("key provider {kind} failed: {message}")]
    Provider { kind: &'static str, message: String },
}

/// A key-encryption key: wraps and unwraps data keys, with associated data
/// that binds a wrapped key to what it is for (the key store passes the
/// subject reference and key version).
///
/// Written so that an HSM (PKCS#11) or a cloud KMS can implement it: the
/// KEK's own bytes never leave the implementation, and both calls may be
/// slow and may fail (`WrapError::Provider`). They are blocking calls: async
/// callers run them on the blocking pool (`tokio::task::spawn_blocking`),
/// never on a runtime worker, which is why implementations are
/// `Send + Sync + 'static` and used through `Arc<dyn KeyEncryptionKey>`.
/// How to add a provider: `docs/keys.md`.
pub trait KeyEncryptionKey: Send + Sync + 'static {
    /// Stable id, stored next to every key it wraps (so the store knows
    /// which KEK unwraps a row, and `subjects rewrap` which rows to move).
    fn id(&self) -> &str;
    /// The provider kind, for logs and `subjects show`: `file`, `passphrase`, ...
    fn kind(&self) -> &'static str;
    /// Wraps `dek`; the result is opaque, stored as is.
    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>, WrapError>;
    /// Unwraps what `wrap` returned for the same `aad`.
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, WrapError>;
}

/// Domain separation of the wrapping AEAD's associated data.
const WRAP_AAD_DOMAIN: &[u8] = b"fieldseal-wrap-v1\0";
/// Format byte of a ring-wrapped data key.
const WRAP_FORMAT_V1: u8 = 1;
/// format (1) + nonce (12) + key (32) + tag (16).
pub const RING_WRAPPED_LEN: usize = 1 + NONCE_LEN + 32 + TAG_LEN;
/// `Keyring::derive_subkey` purpose of the wrapping key.
pub(crate) const WRAP_PURPOSE: &str = "data key wrapping";

/// A ring key (file or passphrase) as a KEK: AES-256-GCM under the HKDF
/// sub-key "data key wrapping" of the ring key's master, never the master
/// or the field key itself.
///
/// Wrapped form: `0x01 || nonce (12) || ciphertext (32) || tag (16)`;
/// associated data `"fieldseal-wrap-v1" 0x00 || aad`.
pub struct RingKek {
    id: String,
    kind: &'static str,
    cipher: Aes256Gcm,
}

impl RingKek {
    /// The KEK of ring key `id`, or None when the ring has no such key.
    pub fn from_ring(ring: &Keyring, id: &str) -> Option<RingKek> {
        let sub = ring.derive_subkey(id, WRAP_PURPOSE)?;
        let cipher = Aes256Gcm::new_from_slice(sub.as_ref()).ok()?;
        Some(RingKek {
            id: id.to_owned(),
            kind: ring.source_kind(id).unwrap_or("raw"),
            cipher,
        })
    }

    /// Deterministic wrapping for known-answer vectors ONLY.
    #[doc(hidden)]
    pub fn wrap_with_nonce(
        &self,
        dek: &DataKey,
        aad: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, WrapError> {
        let full = wrap_aad(aad);
        let mut out = Vec::with_capacity(RING_WRAPPED_LEN);
        out.push(WRAP_FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(dek.expose());
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &full, &mut out[1 + NONCE_LEN..])
            .map_err(|_| WrapError::Malformed)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }
}

fn wrap_aad(aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(WRAP_AAD_DOMAIN.len() + aad.len());
    full.extend_from_slice(WRAP_AAD_DOMAIN);
    full.extend_from_slice(aad);
    full
}

impl KeyEncryptionKey for RingKek {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn wrap(&self, dek: &DataKey, aad: &[u8]) -> Result<Vec<u8>, WrapError> {
        let nonce = fresh_nonce().ok_or(WrapError::Rng)?;
        self.wrap_with_nonce(dek, aad, nonce)
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, WrapError> {
        if wrapped.len() != RING_WRAPPED_LEN || wrapped[0] != WRAP_FORMAT_V1 {
            return Err(WrapError::Malformed);
        }
        let nonce = &wrapped[1..1 + NONCE_LEN];
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&wrapped[1 + NONCE_LEN..1 + NONCE_LEN + 32]);
        let tag = Tag::from_slice(&wrapped[1 + NONCE_LEN + 32..]);
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), &wrap_aad(aad), key.as_mut(), tag)
            .map_err(|_| WrapError::Unwrap)?;
        Ok(DataKey(key))
    }
}

/// The KEKs a deployment has: the active one wraps new data keys, every one
/// unwraps the rows it wrapped.
#[derive(Clone)]
pub struct Keks {
    active: Arc<dyn KeyEncryptionKey>,
    all: Vec<Arc<dyn KeyEncryptionKey>>,
}

impl fmt::Debug for Keks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keks")
            .field("active", &self.active.id())
            .field("ids", &self.all.iter().map(|k| k.id()).collect::<Vec<_>>())
            .finish()
    }
}

impl Keks {
    /// One KEK per ring key; the ring's active key is the active KEK. For
    /// rings of file and passphrase keys only (tests, tools); a configured
    /// ring goes through `for_ring`.
    pub fn from_ring(ring: &Keyring) -> Keks {
        let all: Vec<Arc<dyn KeyEncryptionKey>> = ring
            .ids()
            .into_iter()
            .filter_map(|id| RingKek::from_ring(ring, id))
            .map(|k| Arc::new(k) as Arc<dyn KeyEncryptionKey>)
            .collect();
        let active = all
            .iter()
            .find(|k| k.id() == ring.active_id())
            .cloned()
            .unwrap_or_else(|| Arc::clone(&all[0]));
        Keks { active, all }
    }

    /// The KEKs of a configured ring: file and passphrase keys from `ring`
    /// (which loaded them), token keys as `Pkcs11Kek`s (which connect on
    /// first use). None when the active key is neither.
    pub fn for_ring(ring: &Keyring, spec: &super::KeyringSpec) -> Option<Keks> {
        let mut all: Vec<Arc<dyn KeyEncryptionKey>> = Vec::with_capacity(spec.keys.len());
        for k in &spec.keys {
            match &k.source {
                super::KeySource::Pkcs11(p) => {
                    all.push(Arc::new(super::pkcs11::Pkcs11Kek::new(&k.id, p.clone())))
                }
                _ => all.push(Arc::new(RingKek::from_ring(ring, &k.id)?)),
            }
        }
        Keks::new(ring.active_id(), all)
    }

    /// Every KEK, the active one among them.
    pub fn all(&self) -> &[Arc<dyn KeyEncryptionKey>] {
        &self.all
    }

    /// From providers; `active` must be among them (else None).
    pub fn new(active: &str, all: Vec<Arc<dyn KeyEncryptionKey>>) -> Option<Keks> {
        let a = all.iter().find(|k| k.id() == active).cloned()?;
        Some(Keks { active: a, all })
    }

    pub fn active(&self) -> &Arc<dyn KeyEncryptionKey> {
        &self.active
    }

    pub fn get(&self, id: &str) -> Option<&Arc<dyn KeyEncryptionKey>> {
        self.all.iter().find(|k| k.id() == id)
    }

    /// Unwraps a row wrapped by KEK `kek_id`.
    pub fn unwrap(&self, kek_id: &str, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, WrapError> {
        self.get(kek_id)
            .ok_or_else(|| WrapError::UnknownKek {
                id: kek_id.to_owned(),
            })?
            .unwrap(wrapped, aad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_raw_keys("a", vec![("a".into(), [1; 32]), ("b".into(), [2; 32])]).unwrap()
    }

    #[test]
    fn wrap_round_trip_and_binding() {
        let ring = ring();
        let keks = Keks::from_ring(&ring);
        assert_eq!(keks.active().id(), "a");
        let dek = DataKey::generate().unwrap();
        let w = keks.active().wrap(&dek, b"subject r1 v1").unwrap();
        assert_eq!(w.len(), RING_WRAPPED_LEN);
        let back = keks.unwrap("a", &w, b"subject r1 v1").unwrap();
        assert_eq!(back.expose(), dek.expose());
        // Another subject's AAD, another KEK, a flipped bit: refused.
        assert!(matches!(
            keks.unwrap("a", &w, b"subject r2 v1"),
            Err(WrapError::Unwrap)
        ));
        assert!(matches!(
            keks.unwrap("b", &w, b"subject r1 v1"),
            Err(WrapError::Unwrap)
        ));
        assert!(matches!(
            keks.unwrap("c", &w, b"subject r1 v1"),
            Err(WrapError::UnknownKek { .. })
        ));
        let mut bad = w.clone();
        bad[20] ^= 1;
        assert!(matches!(
            keks.unwrap("a", &bad, b"subject r1 v1"),
            Err(WrapError::Unwrap)
        ));
        assert!(matches!(
            keks.unwrap("a", &w[..60], b"subject r1 v1"),
            Err(WrapError::Malformed)
        ));
        // Two wraps of one key differ (fresh nonce).
        assert_ne!(w, keks.active().wrap(&dek, b"subject r1 v1").unwrap());
        assert_eq!(format!("{dek:?}"), "DataKey(..)");
    }
}
