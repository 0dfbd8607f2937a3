//! Differential property tests of the scanner's fast paths against
//! serde_json: string contents are skipped in blocks of bytes (a stop at
//! any offset of a block: `"`, `\`, a control character), member names are
//! folded once per name, and sealed or opened strings are written straight
//! into the output. Arbitrary byte strings, as values, member names and
//! whole documents, are accepted exactly when serde_json accepts them, by
//! every walk; a selected string seals and opens back to itself.

mod engine;

use engine::{decrypt_json, encrypt_json};
use fieldseal::crypto::Keyring;
use fieldseal::transform::{validate, DecryptSelection, FieldPath, FieldRule, OnDecryptFailure};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

const NOW: u64 = 1_000;

/// Bytes that end or break a string (quote, backslash, controls, a bad
/// UTF-8 byte), escape letters, hex digits, and many plain bytes, so that
/// stops fall at every offset of a block.
const ALPHABET: &[u8] =
    b"\"\\\x00\x01\x1f\x7f\xff\xc3\xa9\xe2\x82\xac/bfnrtu0123456789abcdefABCDEF xyz_-:{}[],.";

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Mostly plain, long runs with the odd special byte.
        (
            prop::collection::vec(select(&b"lorem ipsum dolor sit amet"[..]), 0..70),
            prop::collection::vec((any::<prop::sample::Index>(), select(ALPHABET)), 0..4)
        )
            .prop_map(|(mut v, specials)| {
                for (i, b) in specials {
                    if !v.is_empty() {
                        let at = i.index(v.len());
                        v[at] = b;
                    }
                }
                v
            }),
        prop::collection::vec(select(ALPHABET), 0..70),
        prop::collection::vec(any::<u8>(), 0..70),
    ]
}

fn ring() -> Keyring {
    Keyring::from_raw_keys("k1", vec![("k1".to_string(), [5u8; 32])]).expect("ring")
}

fn rules() -> Vec<FieldRule> {
    ["$.s", "$.a[*]", "$..deep"]
        .iter()
        .map(|p| FieldRule {
            path: FieldPath::parse(p).expect("path"),
            context: None,
        })
        .collect()
}

/// The documents one byte string is put in: alone, as a string value, a
/// selected value, a member name, an array element.
fn documents(b: &[u8]) -> Vec<Vec<u8>> {
    let wrap = |pre: &[u8], post: &[u8]| [pre, b, post].concat();
    vec![
        b.to_vec(),
        wrap(b"\"", b"\""),
        wrap(b"{\"s\":\"", b"\"}"),
        wrap(b"{\"", b"\":1,\"s\":\"x\"}"),
        wrap(b"{\"a\":[\"", b"\",2]}"),
        wrap(
            b"{\"x\":{\"deep\":\"",
            b"\"},\"y\":\"plain text that runs on\"}",
        ),
        wrap(b"[\"", b"\", \"fs1:"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every walk accepts exactly what serde_json accepts.
    #[test]
    fn strings_are_judged_like_serde_json(b in bytes()) {
        let r = ring();
        let rules = rules();
        for doc in documents(&b) {
            let serde_ok = serde_json::from_slice::<Value>(&doc).is_ok();
            let shown = String::from_utf8_lossy(&doc).into_owned();
            prop_assert_eq!(validate(&doc, 64).is_ok(), serde_ok, "validate {:?}", shown);
            let enc = encrypt_json(&doc, &rules, &r, NOW, &[], 64);
            prop_assert_eq!(enc.is_ok(), serde_ok, "encrypt {:?}", shown);
            let dec = decrypt_json(&doc, &DecryptSelection::Auto, &r, OnDecryptFailure::Keep, None, NOW);
            prop_assert_eq!(dec.is_ok(), serde_ok, "decrypt {:?}", shown);
            if let Ok((sealed, _)) = enc {
                // Sealed into the output: valid JSON that opens to the input's value.
                let want: Value = serde_json::from_slice(&doc).expect("valid");
                let sealed_v: Value = serde_json::from_slice(&sealed).expect("sealed output is JSON");
                let (opened, _) = decrypt_json(&sealed, &DecryptSelection::Auto, &r, OnDecryptFailure::Error, None, NOW)
                    .expect("opens");
                let opened: Value = serde_json::from_slice(&opened).expect("opened output is JSON");
                prop_assert_eq!(opened, want, "round trip of {:?} via {:?}", shown, sealed_v);
            }
        }
    }
}
