//! Blind indexes: a keyed, truncated HMAC of a field's normalized value,
//! so a backend can find a record by a protected value it never holds.
//! The construction and its known-answer vectors are in
//! `docs/blind-index.md`.
//!
//! Deployment scope (ring key K):
//!
//! ```text
//! index key = HKDF-SHA256(master of ring key K, no salt,
//!             info = "fieldseal v1 subkey" 0x00 "fieldseal blind index v1" 0x00
//!                    "deployment" 0x00 name)
//! index     = "fsi1:" K ":" base64url(HMAC-SHA256(index key, normalize(value))[..bits/8])
//! ```
//!
//! Tenant or subject scope: the key comes from that tenant's (subject's)
//! data key instead ([`IndexKey::derive_for_data_key`]), `fsi2:` text form.
//!
//! The key is derived per index name and scope, separately from every
//! encryption key (a different HKDF info), so an index key learns nothing
//! about the field key and two indexes of the same value differ.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;

use super::keys::hkdf;
use super::subject::INDEX_ROOT_INFO_V2;
use super::{Keyring, SubjectKey};

/// The text form's version prefix: deployment-scoped (a ring key).
pub const INDEX_PREFIX: &str = "fsi1:";
/// The text form's version prefix: under a tenant's or subject's data key.
pub const INDEX_PREFIX_V2: &str = "fsi2:";
/// Shortest and longest output, in bits (multiples of 8).
pub const MIN_INDEX_BITS: u16 = 32;
pub const MAX_INDEX_BITS: u16 = 256;
/// `purpose` of `Keyring::derive_subkey`, before the scope and the name.
const INDEX_PURPOSE: &[u8] = b"fieldseal blind index v1\0";
/// The scope label of ring-derived index keys (the only ring scope: tenant
/// and subject indexes are keyed by their data keys).
const DEPLOYMENT_SCOPE: &[u8] = b"deployment";

/// One normalization step. Whatever order a rule lists them in, they run
/// in this order: trim, lowercase, NFC, digits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// Leading and trailing Unicode White_Space removed.
    Trim,
    /// Unicode full lowercase mapping (`str::to_lowercase`: SpecialCasing
    /// included, final sigma by context; the same as Python's `str.lower`).
    Lowercase,
    /// Unicode Normalization Form C.
    Nfc,
    /// Only the ASCII digits 0-9 are kept.
    Digits,
}

/// One index's key, derived per index name: the HMAC state is keyed here,
/// so each value only clones it.
#[derive(Clone)]
pub struct IndexKey {
    /// The text form up to the MAC: `fsi1:K:` or `fsi2:reference:version:`.
    head: String,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexKey")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl IndexKey {
    /// The deployment-scoped key of index `name`, from ring key `key_id`
    /// (None when the ring has no such key): one key for every record of
    /// the deployment.
    pub fn derive(ring: &Keyring, key_id: &str, name: &str) -> Option<IndexKey> {
        let purpose = [INDEX_PURPOSE, DEPLOYMENT_SCOPE, b"\0", name.as_bytes()].concat();
        let sub = ring.derive_subkey_bytes(key_id, &purpose)?;
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(sub.as_ref()).ok()?;
        Some(IndexKey {
            head: format!("{INDEX_PREFIX}{key_id}:"),
            mac,
        })
    }

    /// The key of index `name` under one tenant's (or subject's) data key:
    /// it finds only records indexed under that same data key, and the
    /// same value under two data keys gives unrelated indexes.
    ///
    /// ```text
    /// root      = HKDF-SHA256(data key, no salt, info = "fieldseal v2 blind index")
    /// index key = HKDF-SHA256(root, no salt, info = "fieldseal v2 blind index" 0x00 name)
    /// index     = "fsi2:" reference ":" version ":" base64url(HMAC(index key, value)[..bits/8])
    /// ```
    pub fn derive_for_data_key(key: &SubjectKey, name: &str) -> Option<IndexKey> {
        let sub = hkdf(
            key.index_root(),
            &[INDEX_ROOT_INFO_V2, b"\0", name.as_bytes()],
        )?;
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(sub.as_ref()).ok()?;
        Some(IndexKey {
            head: format!("{INDEX_PREFIX_V2}{}:{}:", key.reference(), key.version()),
            mac,
        })
    }

    /// The text form of the index of `value`, normalized by `steps`,
    /// truncated to `bits` (a multiple of 8 in the valid range; checked at
    /// load).
    pub fn index(&self, value: &str, steps: &[Normalize], bits: u16) -> String {
        let mut out = Vec::with_capacity(self.head.len() + 44);
        self.index_into(value, steps, bits, &mut out);
        // Only the ASCII head and base64url were written.
        String::from_utf8(out).unwrap_or_default()
    }

    /// [`IndexKey::index`], appended to `out` (the request walk writes it
    /// straight into the document: no `String` per value).
    pub fn index_into(&self, value: &str, steps: &[Normalize], bits: u16, out: &mut Vec<u8>) {
        let normalized = normalize(value, steps);
        let mut mac = self.mac.clone();
        mac.update(normalized.as_bytes());
        let digest = mac.finalize().into_bytes();
        let n = usize::from(bits / 8).clamp(1, digest.len());
        out.extend_from_slice(self.head.as_bytes());
        // 32 bytes of MAC are at most 43 characters of base64url.
        let mut text = [0u8; 44];
        if let Ok(len) = URL_SAFE_NO_PAD.encode_slice(&digest[..n], &mut text) {
            out.extend_from_slice(text.get(..len).unwrap_or(&[]));
        }
    }
}

/// Is `bits` a valid output length?
pub fn valid_bits(bits: u16) -> bool {
    (MIN_INDEX_BITS..=MAX_INDEX_BITS).contains(&bits) && bits % 8 == 0
}

/// `value` with `steps` applied in their fixed order (trim, lowercase,
/// NFC, digits), whatever order `steps` lists them in.
pub fn normalize<'v>(value: &'v str, steps: &[Normalize]) -> Cow<'v, str> {
    let has = |s: Normalize| steps.contains(&s);
    let mut v: Cow<'v, str> = Cow::Borrowed(value);
    if has(Normalize::Trim) {
        v = match v {
            Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
            Cow::Owned(o) => Cow::Owned(o.trim().to_owned()),
        };
    }
    if has(Normalize::Lowercase) && v.chars().any(|c| c.to_lowercase().ne(std::iter::once(c))) {
        v = Cow::Owned(v.to_lowercase());
    }
    if has(Normalize::Nfc) && !v.is_ascii() {
        v = Cow::Owned(v.nfc().collect());
    }
    if has(Normalize::Digits) && !v.bytes().all(|b| b.is_ascii_digit()) {
        v = Cow::Owned(v.chars().filter(char::is_ascii_digit).collect());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_raw_keys(
            "k1",
            vec![("k1".into(), [1u8; 32]), ("k2".into(), [2u8; 32])],
        )
        .expect("ring")
    }

    #[test]
    fn normalization_runs_in_its_fixed_order() {
        use Normalize::*;
        assert_eq!(
            normalize("  Ada@Example.COM ", &[Trim, Lowercase]),
            "ada@example.com"
        );
        assert_eq!(normalize(" A ", &[Lowercase, Trim]), "a");
        assert_eq!(normalize("078-05-1120", &[Digits]), "078051120");
        assert_eq!(normalize("Cafe\u{301}", &[Nfc]), "Caf\u{e9}");
        assert_eq!(normalize("ΟΔΟΣ", &[Lowercase]), "οδος");
        assert_eq!(normalize("\u{3000}x\u{a0}", &[Trim]), "x");
        assert!(matches!(
            normalize("abc", &[Trim, Lowercase, Nfc]),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn indexes_are_equal_for_equal_normalized_inputs_and_differ_across_names_scopes_keys() {
        let r = ring();
        let steps = [Normalize::Trim, Normalize::Lowercase];
        let k = IndexKey::derive(&r, "k1", "email_idx").expect("key");
        let a = k.index("Ada@Example.com", &steps, 64);
        assert_eq!(a, k.index("  ada@example.com", &steps, 64));
        assert!(a.starts_with("fsi1:k1:"));
        assert_eq!(a.len(), "fsi1:k1:".len() + 11);
        assert_ne!(a, k.index("bob@example.com", &steps, 64));
        let other_name = IndexKey::derive(&r, "k1", "ssn_idx").expect("k");
        assert_ne!(a, other_name.index("ada@example.com", &steps, 64));
        let k2 = IndexKey::derive(&r, "k2", "email_idx").expect("k");
        let b = k2.index("ada@example.com", &steps, 64);
        assert!(b.starts_with("fsi1:k2:"));
        assert_ne!(a["fsi1:k1:".len()..], b["fsi1:k2:".len()..]);
        assert!(IndexKey::derive(&r, "nope", "e").is_none());
        assert_eq!(k.index("x", &steps, 256).len(), "fsi1:k1:".len() + 43);
    }

    #[test]
    fn data_key_indexes_differ_across_tenants_names_and_the_ring() {
        use crate::crypto::DataKey;
        let steps = [Normalize::Trim, Normalize::Lowercase];
        let t1 = SubjectKey::new("refA", 1, &DataKey::from_bytes([1u8; 32])).expect("key");
        let t2 = SubjectKey::new("refB", 1, &DataKey::from_bytes([2u8; 32])).expect("key");
        let i1 = IndexKey::derive_for_data_key(&t1, "email_idx").expect("k");
        let a = i1.index(" Ada@Example.com", &steps, 64);
        assert_eq!(a, i1.index("ada@example.com", &steps, 64));
        assert!(a.starts_with("fsi2:refA:1:"), "{a}");
        let i2 = IndexKey::derive_for_data_key(&t2, "email_idx").expect("k");
        let b = i2.index("ada@example.com", &steps, 64);
        assert_ne!(a["fsi2:refA:1:".len()..], b["fsi2:refB:1:".len()..]);
        let other_name = IndexKey::derive_for_data_key(&t1, "ssn_idx").expect("k");
        assert_ne!(a, other_name.index("ada@example.com", &steps, 64));
        // The ring master equal to the data key's bytes still gives another key.
        let r = Keyring::from_raw_keys("k1", vec![("k1".into(), [1u8; 32])]).expect("ring");
        let ring_index = IndexKey::derive(&r, "k1", "email_idx").expect("k");
        assert_ne!(
            a["fsi2:refA:1:".len()..],
            ring_index.index("ada@example.com", &steps, 64)["fsi1:k1:".len()..]
        );
    }

    #[test]
    fn bit_lengths() {
        for b in [32, 40, 64, 128, 256] {
            assert!(valid_bits(b), "{b}");
        }
        for b in [0, 8, 24, 33, 63, 264, 512] {
            assert!(!valid_bits(b), "{b}");
        }
    }
}
