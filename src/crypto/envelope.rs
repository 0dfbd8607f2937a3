//! The envelopes: byte layout, associated data and a parser that never
//! panics. No keys here; `keyring.rs` does the AEAD.
//!
//! ```text
//! fs1      = "fs1:" key-id ":" base64url-nopad(payload)          (a ring key)
//! fs2      = "fs2:" reference ":" version ":" base64url-nopad(payload)
//!                                                       (a tenant's or subject's data key)
//! payload  = type (1) || issued_at (u64 BE, 8) || nonce (12) || ciphertext || tag (16)
//! ```
//! See `docs/envelope.md` for the full description.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use super::{DecryptError, SealError};

/// Text before the key id; the digit is the format version.
pub const PREFIX: &str = "fs1:";
/// Text before the subject reference of a version 2 envelope.
pub const PREFIX_V2: &str = "fs2:";
/// Domain separation for the AEAD associated data of format version 1.
pub(crate) const AAD_DOMAIN: &[u8] = b"fieldseal-envelope-v1\0";
/// Domain separation for the AEAD associated data of format version 2.
pub(crate) const AAD_DOMAIN_V2: &[u8] = b"fieldseal-envelope-v2\0";

/// Does `b` start with a reserved envelope prefix (`fs1:` or `fs2:`)?
#[inline]
pub fn has_prefix(b: &[u8]) -> bool {
    b.len() >= 4 && b[..2] == *b"fs" && (b[2] == b'1' || b[2] == b'2') && b[3] == b':'
}

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// type (1) + issued_at (8) + nonce (12).
pub(crate) const HEADER_LEN: usize = 1 + 8 + NONCE_LEN;
pub(crate) const MIN_PAYLOAD_LEN: usize = HEADER_LEN + TAG_LEN;
pub const MAX_KEY_ID_LEN: usize = 64;

/// Longest envelope `open` will look at (and `seal` will produce). Checked
/// before any decoding so oversized input costs nothing.
pub const MAX_ENVELOPE_LEN: usize = 4 * 1024 * 1024;

/// Longest plaintext (a string's bytes, or another value's JSON text) that
/// seals into at most `MAX_ENVELOPE_LEN` bytes under a key id of
/// `key_id_len` bytes.
pub fn max_plaintext_len(key_id_len: usize) -> usize {
    // Both prefixes are 4 bytes; for `fs2` the "label" is `reference:version`.
    let room = MAX_ENVELOPE_LEN.saturating_sub(PREFIX.len() + key_id_len + 1);
    // 4 base64 characters carry 3 bytes; a partial group of 2 or 3
    // characters carries 1 or 2.
    let payload = room / 4 * 3
        + match room % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        };
    payload.saturating_sub(HEADER_LEN + TAG_LEN)
}

/// JSON type of the sealed value, stored in the clear (and authenticated) so
/// the plaintext of a string needs no JSON quoting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeTag {
    String,
    Number,
    Bool,
    Null,
    Object,
    Array,
}

impl TypeTag {
    pub(crate) fn of(v: &Value) -> TypeTag {
        match v {
            Value::String(_) => TypeTag::String,
            Value::Number(_) => TypeTag::Number,
            Value::Bool(_) => TypeTag::Bool,
            Value::Null => TypeTag::Null,
            Value::Object(_) => TypeTag::Object,
            Value::Array(_) => TypeTag::Array,
        }
    }

    pub(crate) fn byte(self) -> u8 {
        match self {
            TypeTag::String => b's',
            TypeTag::Number => b'n',
            TypeTag::Bool => b'b',
            TypeTag::Null => b'z',
            TypeTag::Object => b'o',
            TypeTag::Array => b'a',
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<TypeTag> {
        Some(match b {
            b's' => TypeTag::String,
            b'n' => TypeTag::Number,
            b'b' => TypeTag::Bool,
            b'z' => TypeTag::Null,
            b'o' => TypeTag::Object,
            b'a' => TypeTag::Array,
            _ => return None,
        })
    }

    /// Rebuilds the value from authenticated plaintext. A plaintext that is
    /// not exactly one JSON value of the tagged type is refused even though
    /// it authenticated: only a holder of the key could have made it, and
    /// returning a different type would break the "same value back" promise.
    pub(crate) fn rebuild(self, plaintext: &[u8]) -> Result<Value, DecryptError> {
        if self == TypeTag::String {
            return std::str::from_utf8(plaintext)
                .map(|s| Value::String(s.to_owned()))
                .map_err(|_| DecryptError::Malformed);
        }
        let v: Value = serde_json::from_slice(plaintext).map_err(|_| DecryptError::Malformed)?;
        if TypeTag::of(&v) == self {
            Ok(v)
        } else {
            Err(DecryptError::Malformed)
        }
    }
}

/// `[A-Za-z0-9_-]{1,64}`: safe in the envelope (no `:`), in logs and in YAML.
pub fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A subject key's version in an `fs2` envelope: decimal, 1 to 4294967295,
/// no sign, no leading zero (one text form per version).
pub fn parse_version(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse::<u32>().ok().filter(|v| *v > 0)
}

/// Which key an envelope names, as it names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head<'a> {
    /// `fs1`: a key of the ring.
    V1 { key_id: &'a str },
    /// `fs2`: version `version` of the data key behind the opaque `reference`.
    V2 { reference: &'a str, version: u32 },
}

/// Syntactic split of an envelope into its head, its label (`key-id`, or
/// `reference:version`) and its base64 part; no decoding.
pub(crate) fn split(s: &str) -> Option<(Head<'_>, &str, &str)> {
    if let Some(rest) = s.strip_prefix(PREFIX) {
        let (id, b64) = rest.split_once(':')?;
        return is_valid_key_id(id).then_some((Head::V1 { key_id: id }, id, b64));
    }
    let rest = s.strip_prefix(PREFIX_V2)?;
    let (reference, tail) = rest.split_once(':')?;
    let (version, b64) = tail.split_once(':')?;
    if !is_valid_key_id(reference) {
        return None;
    }
    let version = parse_version(version)?;
    let label = &rest[..reference.len() + 1 + tail.len() - b64.len() - 1];
    Some((Head::V2 { reference, version }, label, b64))
}

/// Parses without any key, decoding the payload into `payload` (cleared
/// first; a buffer the caller reuses): the head, type and time. Every
/// malformed input is `Malformed`; a syntactically fine but unknown type
/// byte is also `Malformed` (it is checked again by the AEAD). The payload
/// is then: nonce at `HEADER_LEN - NONCE_LEN..HEADER_LEN`, ciphertext after
/// it, AEAD tag in the last `TAG_LEN` bytes.
pub(crate) fn parse_into<'a>(
    s: &'a str,
    payload: &mut Vec<u8>,
) -> Result<(Head<'a>, TypeTag, u64), DecryptError> {
    if s.len() > MAX_ENVELOPE_LEN {
        return Err(DecryptError::Malformed);
    }
    let (head, _, b64) = split(s).ok_or(DecryptError::Malformed)?;
    // Cheap length check before allocating: 4 base64 chars per 3 bytes, no padding.
    if b64.len() < encoded_len(MIN_PAYLOAD_LEN) {
        return Err(DecryptError::Malformed);
    }
    // The engine refuses padding and non-canonical trailing bits, so each
    // payload has exactly one textual form.
    payload.clear();
    reserve_secret(payload, b64.len() / 4 * 3 + 2);
    URL_SAFE_NO_PAD
        .decode_vec(b64, payload)
        .map_err(|_| DecryptError::Malformed)?;
    if payload.len() < MIN_PAYLOAD_LEN {
        return Err(DecryptError::Malformed);
    }
    let tag = TypeTag::from_byte(payload[0]).ok_or(DecryptError::Malformed)?;
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&payload[1..9]);
    Ok((head, tag, u64::from_be_bytes(ts)))
}

/// Smallest capacity a reused payload or associated-data buffer gets, so
/// that the fields of one document (most are short) never make it grow.
pub(crate) const SCRATCH_FLOOR: usize = 256;

/// `buf.reserve(additional)` for a buffer that holds plaintext. A buffer
/// that must grow is copied into a new one (at least `SCRATCH_FLOOR`
/// bytes, at least twice as large) and wiped: growing it in place would let
/// the allocator copy the plaintext and free the old block unwiped.
pub(crate) fn reserve_secret(buf: &mut Vec<u8>, additional: usize) {
    let need = buf.len().saturating_add(additional);
    if buf.capacity() < need {
        let mut fresh = Vec::with_capacity(need.max(2 * buf.capacity()).max(SCRATCH_FLOOR));
        fresh.extend_from_slice(buf);
        zeroize::Zeroize::zeroize(buf);
        *buf = fresh;
    }
}

/// Length of unpadded base64 for `n` bytes.
pub(crate) fn encoded_len(n: usize) -> usize {
    (n / 3) * 4
        + match n % 3 {
            0 => 0,
            1 => 2,
            _ => 3,
        }
}

/// Associated data: binds version, key (id, or reference and key version),
/// type, time and the field context, each length-prefixed where variable so
/// no two headers share an encoding.
/// Written into `a` (cleared first; a buffer the caller reuses).
pub(crate) fn aad_into(
    head: Head<'_>,
    tag: TypeTag,
    issued_at: u64,
    context: &str,
    a: &mut Vec<u8>,
) {
    a.clear();
    // Not secret, but reused: one allocation per walk, not one per length.
    a.reserve(
        (AAD_DOMAIN_V2.len() + 1 + MAX_KEY_ID_LEN + 4 + 1 + 8 + 8 + context.len())
            .max(SCRATCH_FLOOR),
    );
    match head {
        Head::V1 { key_id } => {
            a.extend_from_slice(AAD_DOMAIN);
            // Key ids are at most 64 bytes (validated before we get here).
            a.push(key_id.len() as u8);
            a.extend_from_slice(key_id.as_bytes());
        }
        Head::V2 { reference, version } => {
            a.extend_from_slice(AAD_DOMAIN_V2);
            // References are at most 64 bytes, like key ids.
            a.push(reference.len() as u8);
            a.extend_from_slice(reference.as_bytes());
            a.extend_from_slice(&version.to_be_bytes());
        }
    }
    a.push(tag.byte());
    a.extend_from_slice(&issued_at.to_be_bytes());
    a.extend_from_slice(&(context.len() as u64).to_be_bytes());
    a.extend_from_slice(context.as_bytes());
}

/// Writes `fs1:<id>:<base64url(payload)>` or `fs2:<reference>:<version>:<...>`.
pub(crate) fn encode(head: Head<'_>, label: &str, payload: &[u8]) -> String {
    let prefix = match head {
        Head::V1 { .. } => PREFIX,
        Head::V2 { .. } => PREFIX_V2,
    };
    let mut out =
        String::with_capacity(prefix.len() + label.len() + 1 + encoded_len(payload.len()));
    out.push_str(prefix);
    out.push_str(label);
    out.push(':');
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    out
}

/// `encode`, appended to `out` as a JSON string (quoted: the envelope's
/// characters need no escaping), without an intermediate `String`.
pub(crate) fn encode_json_into(
    head: Head<'_>,
    label: &str,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SealError> {
    let prefix = match head {
        Head::V1 { .. } => PREFIX,
        Head::V2 { .. } => PREFIX_V2,
    };
    let b64 = encoded_len(payload.len());
    out.reserve(prefix.len() + label.len() + b64 + 3);
    out.push(b'"');
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(label.as_bytes());
    out.push(b':');
    let at = out.len();
    out.resize(at + b64, 0);
    // The slice is exactly the encoded length, so this does not fail.
    let written = out
        .get_mut(at..)
        .and_then(|tail| URL_SAFE_NO_PAD.encode_slice(payload, tail).ok());
    if written != Some(b64) {
        return Err(SealError::Serialize);
    }
    out.push(b'"');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_buffer_is_kept_while_it_fits_and_replaced_when_it_must_grow() {
        let mut buf = Vec::new();
        reserve_secret(&mut buf, 10);
        assert!(buf.is_empty() && buf.capacity() >= SCRATCH_FLOOR);
        buf.extend_from_slice(b"plaintext");
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        let room = cap - buf.len();
        reserve_secret(&mut buf, room);
        assert_eq!(buf, b"plaintext");
        assert_eq!(
            (buf.as_ptr(), buf.capacity()),
            (ptr, cap),
            "reused while it fits"
        );
        reserve_secret(&mut buf, 4 * SCRATCH_FLOOR);
        assert_eq!(buf, b"plaintext", "the contents move to the new buffer");
        assert!(buf.capacity() >= 4 * SCRATCH_FLOOR + b"plaintext".len());
        // A parsed envelope leaves the buffer no larger than the floor.
        let mut payload = Vec::new();
        let e = format!("fs1:k:{}", "A".repeat(encoded_len(MIN_PAYLOAD_LEN)));
        let _ = parse_into(&e, &mut payload);
        assert_eq!(payload.capacity(), SCRATCH_FLOOR);
    }

    #[test]
    fn max_plaintext_is_the_bound() {
        for id in [1usize, 2, 7, 64] {
            let n = max_plaintext_len(id);
            let len = |n: usize| PREFIX.len() + id + 1 + encoded_len(HEADER_LEN + n + TAG_LEN);
            assert!(len(n) <= MAX_ENVELOPE_LEN, "{id}");
            assert!(len(n + 1) > MAX_ENVELOPE_LEN, "{id}");
        }
    }

    #[test]
    fn encoded_len_matches_engine() {
        for n in 0..100 {
            assert_eq!(encoded_len(n), URL_SAFE_NO_PAD.encode(vec![0u8; n]).len());
        }
    }

    #[test]
    fn rebuild_checks_type() {
        assert_eq!(
            TypeTag::Number.rebuild(b"\"x\"").err(),
            Some(DecryptError::Malformed)
        );
        assert_eq!(
            TypeTag::Object.rebuild(b"[]").err(),
            Some(DecryptError::Malformed)
        );
        assert_eq!(TypeTag::Null.rebuild(b"null ").ok(), Some(Value::Null));
        assert_eq!(
            TypeTag::Bool.rebuild(b"true1").err(),
            Some(DecryptError::Malformed)
        );
        assert_eq!(
            TypeTag::String.rebuild(&[0xff]).err(),
            Some(DecryptError::Malformed)
        );
        assert_eq!(
            TypeTag::Array.rebuild(b"").err(),
            Some(DecryptError::Malformed)
        );
    }

    #[test]
    fn split_v2_label() {
        let (head, label, b64) = split("fs2:abc_-:42:AAAA").unwrap();
        assert_eq!(
            head,
            Head::V2 {
                reference: "abc_-",
                version: 42
            }
        );
        assert_eq!(label, "abc_-:42");
        assert_eq!(b64, "AAAA");
        assert_eq!(parse_version("4294967295"), Some(u32::MAX));
        assert!(
            has_prefix(b"fs2:x")
                && has_prefix(b"fs1:")
                && !has_prefix(b"fs3:")
                && !has_prefix(b"fs1")
        );
    }

    #[test]
    fn key_ids() {
        assert!(is_valid_key_id("k1"));
        assert!(is_valid_key_id("A-z_09"));
        assert!(is_valid_key_id(&"a".repeat(64)));
        assert!(!is_valid_key_id(&"a".repeat(65)));
        assert!(!is_valid_key_id(""));
        assert!(!is_valid_key_id("a:b"));
        assert!(!is_valid_key_id("é"));
        assert!(!is_valid_key_id("a b"));
    }

    #[test]
    fn parse_rejects_garbage_without_panic() {
        for s in [
            "",
            "fs1",
            "fs1:",
            "fs1::",
            "fs1:k1",
            "fs1:k1:",
            "fs1:k1:AAAA",
            "fs2:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "fs1:k:1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "fs1:k1:@@@@AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "fs2:r:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "fs2:r:0:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "fs2:r:01:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "fs2:r:+1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "fs2:r:4294967296:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "fs2:r.x:1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "fs2::1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(parse_into(s, &mut Vec::new()).is_err(), "{s}");
        }
    }
}
