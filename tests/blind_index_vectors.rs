//! Known-answer vectors of the blind index (docs/blind-index.md), produced
//! independently by `tests/vectors/blind_index.py` (Python's `hmac`,
//! `hashlib`, `unicodedata`; no fieldseal code).

use fieldseal::crypto::index::{IndexKey, Normalize};
use fieldseal::crypto::{DataKey, Keyring, SubjectKey};

/// (scope, index name, value, steps, bits, index).
type Vector = (
    &'static str,
    &'static str,
    &'static str,
    &'static [Normalize],
    u16,
    &'static str,
);

#[test]
fn blind_index_known_answers() {
    use Normalize::*;
    let master: [u8; 32] = std::array::from_fn(|i| i as u8);
    let ring = Keyring::from_raw_keys("k1", vec![("k1".into(), master)]).expect("ring");
    let cases: &[Vector] = &[
        (
            "deployment",
            "email_idx",
            "  Ada@Example.COM ",
            &[Trim, Lowercase],
            64,
            "fsi1:k1:l9ZPY5xpU20",
        ),
        (
            "deployment",
            "email_idx",
            "ada@example.com",
            &[Trim, Lowercase],
            64,
            "fsi1:k1:l9ZPY5xpU20",
        ),
        (
            "deployment",
            "ssn_idx",
            "078-05-1120",
            &[Digits],
            64,
            "fsi1:k1:-WsbS0Iuru8",
        ),
        (
            "deployment",
            "ssn_idx",
            "078 05 1120",
            &[Trim, Digits],
            32,
            "fsi1:k1:-WsbSw",
        ),
        (
            "deployment",
            "name_idx",
            "Cafe\u{301} \u{39F}\u{394}\u{39F}\u{3A3}",
            &[Lowercase, Nfc],
            128,
            "fsi1:k1:2WSQdJpKS-E7YwbNQqgvpw",
        ),
        (
            "deployment",
            "email_idx",
            "ada@example.com",
            &[],
            256,
            "fsi1:k1:l9ZPY5xpU226Yo_6Rib54snkxJgUPC7OOKPuzjrc8M0",
        ),
        (
            "deployment",
            "email_idx",
            "\u{3000}Ada@Example.com\u{1c}",
            &[Trim, Lowercase],
            64,
            "fsi1:k1:rCj5s_kCiEM",
        ),
    ];
    for (scope, name, value, steps, bits, want) in cases {
        assert_eq!(*scope, "deployment");
        let key = IndexKey::derive(&ring, "k1", name).expect("key");
        assert_eq!(&key.index(value, steps, *bits), want, "{name} {value:?}");
    }
}

/// (reference, version, index name, value, steps, bits, index).
type DataKeyVector = (
    &'static str,
    u32,
    &'static str,
    &'static str,
    &'static [Normalize],
    u16,
    &'static str,
);

/// Tenant (or subject) scope: the index key comes from the data key.
#[test]
fn data_key_blind_index_known_answers() {
    use Normalize::*;
    let dek: [u8; 32] = std::array::from_fn(|i| (i + 32) as u8);
    let cases: &[DataKeyVector] = &[
        (
            "acmeRef",
            1,
            "email_idx",
            "ada@example.com",
            &[Trim, Lowercase],
            64,
            "fsi2:acmeRef:1:4vFbuBJYc8I",
        ),
        (
            "acmeRef",
            1,
            "email_idx",
            " Ada@Example.COM",
            &[Trim, Lowercase],
            64,
            "fsi2:acmeRef:1:4vFbuBJYc8I",
        ),
        (
            "acmeRef",
            2,
            "ssn_idx",
            "078-05-1120",
            &[Digits],
            128,
            "fsi2:acmeRef:2:I7tQBShZOZjEfWzLq8guig",
        ),
    ];
    for (reference, version, name, value, steps, bits, want) in cases {
        let key = SubjectKey::new(reference, *version, &DataKey::from_bytes(dek)).expect("key");
        let index = IndexKey::derive_for_data_key(&key, name).expect("index key");
        assert_eq!(&index.index(value, steps, *bits), want, "{name} {value:?}");
    }
}
