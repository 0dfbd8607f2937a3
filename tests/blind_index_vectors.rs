//! Known-answer vectors of the blind index (docs/blind-index.md), produced
//! independently by `tests/vectors/blind_index.py` (Python's `hmac`,
//! `hashlib`, `unicodedata`; no fieldseal code).

use fieldseal::crypto::index::{IndexKey, IndexScope, Normalize};
use fieldseal::crypto::Keyring;

/// (tenant or "" for the deployment, index name, value, steps, bits, index).
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
            "",
            "email_idx",
            "  Ada@Example.COM ",
            &[Trim, Lowercase],
            64,
            "fsi1:k1:l9ZPY5xpU20",
        ),
        (
            "",
            "email_idx",
            "ada@example.com",
            &[Trim, Lowercase],
            64,
            "fsi1:k1:l9ZPY5xpU20",
        ),
        (
            "",
            "ssn_idx",
            "078-05-1120",
            &[Digits],
            64,
            "fsi1:k1:-WsbS0Iuru8",
        ),
        (
            "",
            "ssn_idx",
            "078 05 1120",
            &[Trim, Digits],
            32,
            "fsi1:k1:-WsbSw",
        ),
        (
            "",
            "name_idx",
            "Cafe\u{301} \u{39F}\u{394}\u{39F}\u{3A3}",
            &[Lowercase, Nfc],
            128,
            "fsi1:k1:2WSQdJpKS-E7YwbNQqgvpw",
        ),
        (
            "acme",
            "email_idx",
            "ada@example.com",
            &[Trim, Lowercase],
            64,
            "fsi1:k1:pXIp4AIXjRo",
        ),
        (
            "",
            "email_idx",
            "ada@example.com",
            &[],
            256,
            "fsi1:k1:l9ZPY5xpU226Yo_6Rib54snkxJgUPC7OOKPuzjrc8M0",
        ),
        (
            "",
            "email_idx",
            "\u{3000}Ada@Example.com\u{1c}",
            &[Trim, Lowercase],
            64,
            "fsi1:k1:rCj5s_kCiEM",
        ),
    ];
    for (tenant, name, value, steps, bits, want) in cases {
        let scope = if tenant.is_empty() {
            IndexScope::Deployment
        } else {
            IndexScope::Tenant(tenant)
        };
        let key = IndexKey::derive(&ring, "k1", scope, name).expect("key");
        assert_eq!(&key.index(value, steps, *bits), want, "{name} {value:?}");
    }
}
