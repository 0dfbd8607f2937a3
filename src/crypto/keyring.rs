//! The loaded keys and the AEAD operations on envelopes.

use std::cell::RefCell;
use std::time::Duration;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use serde_json::Value;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::envelope::{self, Head, TypeTag, HEADER_LEN, NONCE_LEN, TAG_LEN};
use super::keys::{self, Master, FIELD_KEY_INFO, SUBKEY_INFO_PREFIX};
use super::subject::SubjectKeys;
use super::{DecryptError, KeyError, KeyIdProblem, KeyringSpec, Opened, SealError};

/// `derive_subkey` purpose and HMAC message of `Keyring::fingerprint`.
const FINGERPRINT_PURPOSE: &str = "key fingerprint";
const FINGERPRINT_LABEL: &[u8] = b"fieldseal key fingerprint v1";

/// Deepest object/array nesting `seal` accepts, so that `open` (serde_json's
/// parser stops at 128 levels) can always read back what was sealed.
pub const MAX_SEAL_DEPTH: usize = 120;

struct KeyEntry {
    id: String,
    /// Built once at load: no key derivation per request.
    cipher: Aes256Gcm,
    /// Kept only for `derive_subkey`.
    master: Master,
    /// Where the master came from: `file`, `passphrase` or `raw`.
    kind: &'static str,
}

impl KeyEntry {
    fn view(&self) -> KeyView<'_> {
        KeyView {
            head: Head::V1 { key_id: &self.id },
            label: &self.id,
            cipher: Some(&self.cipher),
        }
    }
}

/// What sealing and opening need of a key, whichever kind it is: how
/// envelopes name it (`fs1` key id, or `fs2` reference and version) and
/// its AEAD.
#[derive(Clone, Copy)]
pub(crate) struct KeyView<'k> {
    pub(crate) head: Head<'k>,
    pub(crate) label: &'k str,
    /// None for the ring's active key when it lives in a token (no bytes
    /// here): sealing under it fails (`SealError::UnknownKey`).
    pub(crate) cipher: Option<&'k Aes256Gcm>,
}

/// The key a value is sealed under, chosen by the caller: the ring's
/// active key (`Keyring::sealing_key`, `fs1`) or a tenant's or subject's
/// data key (`SubjectKey::sealing_key`, `fs2`). Sealing takes this value,
/// not the ring, so the transforms never know which it is.
#[derive(Clone, Copy)]
pub struct SealingKey<'r> {
    key: KeyView<'r>,
}

impl<'r> SealingKey<'r> {
    pub(crate) fn new(key: KeyView<'r>) -> SealingKey<'r> {
        SealingKey { key }
    }

    /// How the envelopes name the key: the key id (`fs1`), or
    /// `reference:version` (`fs2`).
    pub fn id(&self) -> &'r str {
        self.key.label
    }

    /// Seals with a fresh random nonce, stamped `issued_at`.
    pub fn seal_at(
        &self,
        value: &Value,
        context: &str,
        issued_at: u64,
    ) -> Result<String, SealError> {
        let nonce = fresh_nonce().ok_or(SealError::Rng)?;
        seal_with(self.key, value, context, issued_at, &nonce)
    }

    /// `seal_at` of a string, the envelope appended to `out` as a JSON
    /// string (the walk's output), built in `scratch`: no allocation.
    pub(crate) fn seal_str_into(
        &self,
        plain: &str,
        context: &str,
        issued_at: u64,
        scratch: &mut AeadScratch,
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let nonce = fresh_nonce().ok_or(SealError::Rng)?;
        seal_str_into(self.key, plain, context, issued_at, &nonce, scratch, out)
    }

    /// Deterministic sealing for known-answer test vectors ONLY (see
    /// `Keyring::seal_with_nonce`).
    #[doc(hidden)]
    pub fn seal_with_nonce(
        &self,
        value: &Value,
        context: &str,
        issued_at: u64,
        nonce: [u8; NONCE_LEN],
    ) -> Result<String, SealError> {
        seal_with(self.key, value, context, issued_at, &nonce)
    }
}

/// The keys of one configuration: one active key that seals, any number of
/// older keys that only open. Key bytes are wiped on drop (the AES key
/// schedule via the `aes/zeroize` feature, the masters via `Zeroizing`).
pub struct Keyring {
    keys: Vec<KeyEntry>,
    /// Index of the active key in `keys`; None when it is a token key.
    active: Option<usize>,
    active_id: String,
    /// Ring keys that live in a PKCS#11 token: named here (so `contains`
    /// and `ids` know them) but with no bytes, so nothing derives from
    /// them; their `KeyEncryptionKey`s are built by `Keks::for_ring`.
    token_ids: Vec<String>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active_id())
            .field("ids", &self.ids())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Reads every key of `spec` (PBKDF2 runs here, once per passphrase key).
    pub fn load(spec: &KeyringSpec) -> Result<Keyring, KeyError> {
        check_ids(&spec.active, spec.keys.iter().map(|k| k.id.as_str()))?;
        let mut masters = Vec::with_capacity(spec.keys.len());
        let mut token_ids = Vec::new();
        for k in &spec.keys {
            if !k.source.has_bytes() {
                token_ids.push(k.id.clone());
                continue;
            }
            let master = keys::load_master(&k.id, &k.source, spec.pbkdf2_iterations)?;
            masters.push((k.id.clone(), master, k.source.kind()));
        }
        Keyring::build(&spec.active, masters, token_ids)
    }

    /// A ring from raw 32-byte masters (tests, benches, tools). The same
    /// HKDF step as `load` is applied, so envelopes are interchangeable.
    pub fn from_raw_keys(active: &str, keys: Vec<(String, [u8; 32])>) -> Result<Keyring, KeyError> {
        let masters: Vec<(String, Master, &'static str)> = keys
            .into_iter()
            .map(|(id, mut raw)| {
                let m = Zeroizing::new(raw);
                zeroize::Zeroize::zeroize(&mut raw);
                (id, m, "raw")
            })
            .collect();
        check_ids(active, masters.iter().map(|(id, _, _)| id.as_str()))?;
        Keyring::build(active, masters, Vec::new())
    }

    fn build(
        active: &str,
        masters: Vec<(String, Master, &'static str)>,
        token_ids: Vec<String>,
    ) -> Result<Keyring, KeyError> {
        warn_on_shared_material(&masters);
        let mut keys = Vec::with_capacity(masters.len());
        for (id, master, kind) in masters {
            let aes = keys::hkdf(&master, &[FIELD_KEY_INFO])
                .ok_or_else(|| KeyError::Derive { id: id.clone() })?;
            let cipher = Aes256Gcm::new_from_slice(aes.as_ref())
                .map_err(|_| KeyError::Derive { id: id.clone() })?;
            keys.push(KeyEntry {
                id,
                cipher,
                master,
                kind,
            });
        }
        let index = keys.iter().position(|k| k.id == active);
        if index.is_none() && !token_ids.iter().any(|t| t == active) {
            return Err(KeyError::ActiveMissing {
                id: active.to_owned(),
            });
        }
        Ok(Keyring {
            keys,
            active: index,
            active_id: active.to_owned(),
            token_ids,
        })
    }

    pub fn active_id(&self) -> &str {
        &self.active_id
    }

    /// Every ring key id: those with bytes here, then the token keys.
    pub fn ids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.id.as_str())
            .chain(self.token_ids.iter().map(String::as_str))
            .collect()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.entry(id).is_some() || self.token_ids.iter().any(|t| t == id)
    }

    /// Whether the active key's bytes are here (a file or passphrase key)
    /// rather than in a token. When not, deployment-scoped routes seal
    /// under the deployment data key (`docs/keys.md`), and nothing derives
    /// from the active key.
    pub fn active_has_bytes(&self) -> bool {
        self.active.is_some()
    }

    /// Ring keys that live in a token.
    pub fn token_ids(&self) -> &[String] {
        &self.token_ids
    }

    /// Seals under the active key, stamped with the current time.
    pub fn seal(&self, value: &Value, context: &str) -> Result<String, SealError> {
        self.seal_at(value, context, super::unix_now())
    }

    /// Seals under the active key with a fresh random nonce.
    pub fn seal_at(
        &self,
        value: &Value,
        context: &str,
        issued_at: u64,
    ) -> Result<String, SealError> {
        self.sealing_key().seal_at(value, context, issued_at)
    }

    /// The key new envelopes are sealed under: the active one.
    /// When the active key is a token key, sealing under this fails
    /// (`SealError::UnknownKey`): callers seal under the deployment data
    /// key then.
    pub fn sealing_key(&self) -> SealingKey<'_> {
        match self.active.and_then(|i| self.keys.get(i)) {
            Some(k) => SealingKey::new(k.view()),
            None => SealingKey::new(KeyView {
                head: Head::V1 {
                    key_id: &self.active_id,
                },
                label: &self.active_id,
                cipher: None,
            }),
        }
    }

    /// Deterministic sealing for known-answer test vectors ONLY: reusing a
    /// nonce under one key destroys GCM's confidentiality and integrity.
    #[doc(hidden)]
    pub fn seal_with_nonce(
        &self,
        key_id: &str,
        value: &Value,
        context: &str,
        issued_at: u64,
        nonce: [u8; NONCE_LEN],
    ) -> Result<String, SealError> {
        let k = self.entry(key_id).ok_or(SealError::UnknownKey)?;
        seal_with(k.view(), value, context, issued_at, &nonce)
    }

    pub fn open(
        &self,
        envelope: &str,
        context: &str,
        max_age: Option<Duration>,
    ) -> Result<Opened, DecryptError> {
        self.open_at(envelope, context, max_age, super::unix_now())
    }

    /// Opens an envelope sealed for `context`. `max_age` of None or zero means
    /// no limit; otherwise `issued_at + max_age < now` is `Expired`. The age is
    /// checked only after authentication, so an edited time is `AuthFailed`.
    /// An `fs2` envelope needs its data key: see `open_with`.
    pub fn open_at(
        &self,
        envelope: &str,
        context: &str,
        max_age: Option<Duration>,
        now: u64,
    ) -> Result<Opened, DecryptError> {
        self.open_with(SubjectKeys::none(), envelope, context, max_age, now)
    }

    /// Opens an `fs1` envelope with the ring, or an `fs2` one with the data
    /// key `subjects` holds for its reference and version. An `fs2`
    /// envelope whose reference `subjects` knows as erased is `Erased`; one
    /// whose key it does not hold is `ForeignSubject`.
    pub fn open_with(
        &self,
        subjects: &SubjectKeys,
        envelope: &str,
        context: &str,
        max_age: Option<Duration>,
        now: u64,
    ) -> Result<Opened, DecryptError> {
        let mut scratch = AeadScratch::default();
        let o = self.open_in(subjects, envelope, context, max_age, now, &mut scratch)?;
        Ok(Opened {
            value: o.tag.rebuild(scratch.plaintext())?,
            key_id: o.key_id.to_owned(),
            issued_at: o.issued_at,
            subject: o.subject.map(str::to_owned),
        })
    }

    /// `open_with`, decoding and decrypting in `scratch` (reused across
    /// envelopes, wiped on drop): the plaintext is then
    /// `scratch.plaintext()`, still to be rebuilt as a value of `tag` (a
    /// string's plaintext is its UTF-8 bytes). The same checks in the same
    /// order as `open_with`, without an allocation per envelope.
    pub(crate) fn open_in<'k, 'e>(
        &'k self,
        subjects: &'k SubjectKeys,
        envelope: &'e str,
        context: &str,
        max_age: Option<Duration>,
        now: u64,
        scratch: &mut AeadScratch,
    ) -> Result<OpenedIn<'k, 'e>, DecryptError> {
        let (head, tag, issued_at) = envelope::parse_into(envelope, &mut scratch.payload)?;
        let (key, subject) = match head {
            Head::V1 { key_id } => (
                self.entry(key_id).ok_or(DecryptError::UnknownKey)?.view(),
                None,
            ),
            Head::V2 { reference, version } => match subjects.get(reference, version) {
                Some(k) => (k.view(), Some(reference)),
                None if subjects.is_erased_version(reference, version) => {
                    return Err(DecryptError::Erased)
                }
                None => return Err(DecryptError::ForeignSubject),
            },
        };
        decrypt_in_place(key, head, tag, issued_at, context, scratch)?;
        if let Some(limit) = max_age.map(|d| d.as_secs()).filter(|s| *s > 0) {
            if issued_at.saturating_add(limit) < now {
                return Err(DecryptError::Expired);
            }
        }
        Ok(OpenedIn {
            tag,
            key_id: key.label,
            issued_at,
            subject,
        })
    }

    /// Encrypts and decrypts a probe under every key; (key id, Ok or reason).
    pub fn self_test(&self) -> Vec<(String, Result<(), String>)> {
        let probe = serde_json::json!({"fieldseal": "self-test", "n": 1, "ok": true});
        let now = super::unix_now();
        self.keys
            .iter()
            .map(|k| (k.id.clone(), self_test_one(self, k, &probe, now)))
            .collect()
    }

    /// A 32-byte sub-key of key `id` for another purpose (the audit log's HMAC).
    /// HKDF-SHA256 of the key's master with info `"fieldseal v1 subkey\0" || purpose`,
    /// so it is independent of the field encryption key.
    pub fn derive_subkey(&self, id: &str, purpose: &str) -> Option<Zeroizing<[u8; 32]>> {
        self.derive_subkey_bytes(id, purpose.as_bytes())
    }

    /// [`derive_subkey`](Self::derive_subkey) for a purpose that holds
    /// separator bytes (the blind index's `name 0x00 scope`).
    pub fn derive_subkey_bytes(&self, id: &str, purpose: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        let k = self.entry(id)?;
        keys::hkdf(&k.master, &[SUBKEY_INFO_PREFIX, purpose])
    }

    /// A public fingerprint of key `id`, to compare rings across replicas
    /// without showing a key: the first 16 bytes, in hex, of
    /// HMAC-SHA256(sub-key "key fingerprint", "fieldseal key fingerprint v1").
    /// Learning a key from it is as hard as inverting HMAC and HKDF.
    pub fn fingerprint(&self, id: &str) -> Option<String> {
        use hmac::Mac;
        let sub = self.derive_subkey(id, FINGERPRINT_PURPOSE)?;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(sub.as_ref()).ok()?;
        mac.update(FINGERPRINT_LABEL);
        let digest = mac.finalize().into_bytes();
        Some(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Where key `id` came from: `file`, `passphrase` or `raw` (tests, tools).
    pub fn source_kind(&self, id: &str) -> Option<&'static str> {
        self.entry(id).map(|k| k.kind).or_else(|| {
            self.token_ids
                .iter()
                .any(|t| t == id)
                .then_some(super::pkcs11::KIND)
        })
    }

    fn entry(&self, id: &str) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| k.id == id)
    }
}

fn check_ids<'a>(active: &str, ids: impl Iterator<Item = &'a str> + Clone) -> Result<(), KeyError> {
    let id = |i: usize| ids.clone().nth(i).unwrap_or_default().to_owned();
    super::check_key_ids(active, ids.clone()).map_err(|p| match p {
        KeyIdProblem::Invalid(i) => KeyError::InvalidId { id: id(i) },
        KeyIdProblem::Duplicate(i) => KeyError::DuplicateId { id: id(i) },
        KeyIdProblem::NoKeys => KeyError::NoKeys,
        KeyIdProblem::ActiveMissing => KeyError::ActiveMissing {
            id: active.to_owned(),
        },
    })
}

/// Two ids with the same material make a rotation meaningless; say so (ids
/// only) but do not refuse, as it is not unsafe. Compared in constant time.
fn warn_on_shared_material(masters: &[(String, Master, &'static str)]) {
    for (i, (a, ma, _)) in masters.iter().enumerate() {
        for (b, mb, _) in &masters[i + 1..] {
            if bool::from(ma.as_ref().ct_eq(mb.as_ref())) {
                tracing::warn!(key_a = %a, key_b = %b, "two key ids have the same key material");
            }
        }
    }
}

/// Nonces fetched from the OS CSPRNG per call of `getrandom`.
const NONCE_BATCH: usize = 32;

struct NoncePool {
    buf: [u8; NONCE_LEN * NONCE_BATCH],
    used: usize,
}

thread_local! {
    static NONCES: RefCell<NoncePool> = const {
        RefCell::new(NoncePool { buf: [0; NONCE_LEN * NONCE_BATCH], used: NONCE_BATCH })
    };
}

/// A fresh 96-bit nonce from the OS CSPRNG. One syscall fills a thread's
/// pool of 32; each nonce is handed out exactly once. (A syscall per value
/// cost more than the AES-GCM work itself on short fields.)
pub(crate) fn fresh_nonce() -> Option<[u8; NONCE_LEN]> {
    NONCES.with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        if pool.used == NONCE_BATCH {
            getrandom::getrandom(&mut pool.buf).ok()?;
            pool.used = 0;
        }
        let start = pool.used * NONCE_LEN;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&pool.buf[start..start + NONCE_LEN]);
        // Never hand the same bytes out twice, even if a refill failed later.
        pool.buf[start..start + NONCE_LEN].fill(0);
        pool.used += 1;
        Some(nonce)
    })
}

fn seal_with(
    k: KeyView<'_>,
    value: &Value,
    context: &str,
    issued_at: u64,
    nonce: &[u8; NONCE_LEN],
) -> Result<String, SealError> {
    let tag = TypeTag::of(value);
    let guess = match value {
        Value::String(s) => s.len(),
        _ => 64,
    };
    // Plaintext goes straight into the payload buffer and is encrypted in place.
    let mut buf = Zeroizing::new(Vec::with_capacity(HEADER_LEN + guess + TAG_LEN));
    start_payload(&mut buf, tag, issued_at, nonce);
    match value {
        Value::String(s) => buf.extend_from_slice(s.as_bytes()),
        Value::Object(_) | Value::Array(_) if super::exceeds_depth(value, MAX_SEAL_DEPTH) => {
            return Err(SealError::TooDeep)
        }
        other => serde_json::to_writer(SecretWriter(&mut buf), other)
            .map_err(|_| SealError::Serialize)?,
    }
    let mut aad = Vec::new();
    finish_payload(k, tag, issued_at, context, nonce, &mut buf, &mut aad)?;
    Ok(envelope::encode(k.head, k.label, &buf))
}

/// Writes plaintext into a buffer that grows by `envelope::reserve_secret`
/// (`Vec`'s own growth would free the old copy unwiped).
struct SecretWriter<'b>(&'b mut Vec<u8>);

impl std::io::Write for SecretWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        envelope::reserve_secret(self.0, b.len());
        self.0.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `seal_with` for a string (its UTF-8 bytes), the envelope appended to
/// `out` as a JSON string; the payload is built and encrypted in `scratch`.
/// The same bytes as `seal_with` of `Value::String`, without an allocation.
fn seal_str_into(
    k: KeyView<'_>,
    plain: &str,
    context: &str,
    issued_at: u64,
    nonce: &[u8; NONCE_LEN],
    scratch: &mut AeadScratch,
    out: &mut Vec<u8>,
) -> Result<(), SealError> {
    let buf = &mut scratch.payload;
    buf.clear();
    envelope::reserve_secret(buf, HEADER_LEN + plain.len() + TAG_LEN);
    start_payload(buf, TypeTag::String, issued_at, nonce);
    buf.extend_from_slice(plain.as_bytes());
    finish_payload(
        k,
        TypeTag::String,
        issued_at,
        context,
        nonce,
        buf,
        &mut scratch.aad,
    )?;
    envelope::encode_json_into(k.head, k.label, buf, out)
}

/// type || issued_at || nonce: the payload up to the plaintext.
fn start_payload(buf: &mut Vec<u8>, tag: TypeTag, issued_at: u64, nonce: &[u8; NONCE_LEN]) {
    buf.push(tag.byte());
    buf.extend_from_slice(&issued_at.to_be_bytes());
    buf.extend_from_slice(nonce);
}

/// Encrypts the plaintext after the header of `buf` in place and appends
/// the tag, once the envelope is known to fit.
fn finish_payload(
    k: KeyView<'_>,
    tag: TypeTag,
    issued_at: u64,
    context: &str,
    nonce: &[u8; NONCE_LEN],
    buf: &mut Vec<u8>,
    aad: &mut Vec<u8>,
) -> Result<(), SealError> {
    let total =
        envelope::PREFIX.len() + k.label.len() + 1 + envelope::encoded_len(buf.len() + TAG_LEN);
    if total > envelope::MAX_ENVELOPE_LEN {
        return Err(SealError::TooLarge);
    }
    envelope::aad_into(k.head, tag, issued_at, context, aad);
    let auth = k
        .cipher
        .ok_or(SealError::UnknownKey)?
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut buf[HEADER_LEN..])
        .map_err(|_| SealError::TooLarge)?;
    buf.extend_from_slice(&auth);
    Ok(())
}

/// Authenticates and decrypts `scratch`'s payload in place: the plaintext
/// is then between `HEADER_LEN` and the (now meaningless) tag.
fn decrypt_in_place(
    k: KeyView<'_>,
    head: Head<'_>,
    tag: TypeTag,
    issued_at: u64,
    context: &str,
    scratch: &mut AeadScratch,
) -> Result<(), DecryptError> {
    envelope::aad_into(head, tag, issued_at, context, &mut scratch.aad);
    let payload = &mut scratch.payload[..];
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&payload[HEADER_LEN - NONCE_LEN..HEADER_LEN]);
    let split = payload.len() - TAG_LEN;
    let (body, auth) = payload.split_at_mut(split);
    let auth = *Tag::from_slice(auth);
    k.cipher
        .ok_or(DecryptError::UnknownKey)?
        .decrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &scratch.aad,
            &mut body[HEADER_LEN..],
            &auth,
        )
        .map_err(|_| DecryptError::AuthFailed)
}

/// Buffers a walk reuses for every value it seals or opens, so that
/// neither allocates per value: the payload (plaintext, then ciphertext, or
/// the reverse; wiped on drop) and the associated data.
#[derive(Default)]
pub(crate) struct AeadScratch {
    payload: Zeroizing<Vec<u8>>,
    aad: Vec<u8>,
}

impl AeadScratch {
    /// The plaintext `Keyring::open_in` left in the buffer.
    pub(crate) fn plaintext(&self) -> &[u8] {
        let end = self.payload.len().saturating_sub(TAG_LEN);
        self.payload.get(HEADER_LEN..end).unwrap_or(&[])
    }
}

/// What `Keyring::open_in` found (the plaintext stays in the scratch).
pub(crate) struct OpenedIn<'k, 'e> {
    pub(crate) tag: TypeTag,
    /// The ring key id (`fs1`), or `reference:version` (`fs2`).
    pub(crate) key_id: &'k str,
    pub(crate) issued_at: u64,
    /// The reference of the tenant or subject (`fs2` only).
    pub(crate) subject: Option<&'e str>,
}

fn self_test_one(ring: &Keyring, k: &KeyEntry, probe: &Value, now: u64) -> Result<(), String> {
    const CONTEXT: &str = "fieldseal-self-test";
    let nonce = fresh_nonce().ok_or_else(|| "random number generator failed".to_owned())?;
    let sealed = seal_with(k.view(), probe, CONTEXT, now, &nonce)
        .map_err(|e| format!("seal failed: {e}"))?;
    let opened = ring
        .open_at(&sealed, CONTEXT, None, now)
        .map_err(|e| format!("open failed: {}", e.reason()))?;
    if opened.key_id != k.id || &opened.value != probe {
        return Err("round trip returned a different value".to_owned());
    }
    if ring
        .open_at(&sealed, "fieldseal-self-test-other", None, now)
        .is_ok()
    {
        return Err("context is not authenticated".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_raw_keys("k1", vec![("k1".to_string(), [7u8; 32])]).unwrap()
    }

    /// The walk's allocation-free sealing writes exactly the envelope of
    /// `seal_with`, quoted, after whatever `out` held.
    #[test]
    fn seal_str_into_is_seal_with() {
        let ring = ring();
        let k = ring.entry("k1").expect("k1").view();
        let mut scratch = AeadScratch::default();
        for (i, plain) in ["", "x", "123-45-6789", "é\"\\\u{1}", &"long ".repeat(300)]
            .into_iter()
            .enumerate()
        {
            let nonce = [i as u8; NONCE_LEN];
            let want = seal_with(k, &Value::String(plain.to_owned()), "ssn", 42, &nonce).unwrap();
            let mut out = b"[1,".to_vec();
            seal_str_into(k, plain, "ssn", 42, &nonce, &mut scratch, &mut out).unwrap();
            assert_eq!(out, format!("[1,\"{want}\"").into_bytes(), "{plain:?}");
        }
    }

    /// Values whose JSON outgrows the first guess (64 bytes) several times
    /// are written through `SecretWriter` byte for byte as serde_json
    /// writes them, and open to themselves.
    #[test]
    fn values_that_outgrow_the_payload_guess_seal_and_open() {
        let ring = ring();
        for n in [0, 1, 10, 100, 1000] {
            let v = serde_json::json!({"card": {"number": "4111".repeat(n), "list": vec![n; n]}});
            let mut buf = Vec::with_capacity(8);
            serde_json::to_writer(SecretWriter(&mut buf), &v).unwrap();
            assert_eq!(buf, serde_json::to_vec(&v).unwrap(), "{n}");
            let env = ring.seal_at(&v, "card", 42).unwrap();
            assert_eq!(
                ring.open_at(&env, "card", None, 42).unwrap().value,
                v,
                "{n}"
            );
        }
    }

    /// `open_in` leaves the plaintext in the scratch, with the checks of
    /// `open_with` (context, age), reusing the buffers.
    #[test]
    fn open_in_round_trip() {
        let ring = ring();
        let mut scratch = AeadScratch::default();
        for plain in ["a", "", &"z".repeat(1000)] {
            let env = ring
                .seal_at(&Value::String(plain.to_owned()), "c", 10)
                .unwrap();
            let o = ring
                .open_in(SubjectKeys::none(), &env, "c", None, 10, &mut scratch)
                .unwrap();
            assert_eq!((o.tag, o.key_id, o.issued_at), (TypeTag::String, "k1", 10));
            assert_eq!(scratch.plaintext(), plain.as_bytes());
            let wrong = ring.open_in(SubjectKeys::none(), &env, "d", None, 10, &mut scratch);
            assert_eq!(wrong.err(), Some(DecryptError::AuthFailed));
            let old = ring.open_in(
                SubjectKeys::none(),
                &env,
                "c",
                Some(Duration::from_secs(5)),
                16,
                &mut scratch,
            );
            assert_eq!(old.err(), Some(DecryptError::Expired));
        }
    }
}
