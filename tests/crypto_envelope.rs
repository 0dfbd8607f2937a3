//! Round trips, tampering, expiry and rotation of single envelopes.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fieldseal::crypto::{
    envelope_key_id, looks_like_envelope, DecryptError, KeyError, Keyring, MAX_ENVELOPE_LEN,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const NOW: u64 = 1_700_000_000;

fn ring(active: &str, ids: &[&str]) -> Keyring {
    let keys = ids
        .iter()
        .map(|id| {
            let mut k = [0u8; 32];
            // Distinct material per id.
            for (i, b) in id.bytes().enumerate() {
                k[i % 32] ^= b;
            }
            k[31] = 0xa5;
            (id.to_string(), k)
        })
        .collect();
    Keyring::from_raw_keys(active, keys).expect("ring")
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).expect("json")
}

#[test]
fn every_type_round_trips_exactly() {
    let r = ring("k1", &["k1"]);
    for text in [
        r#""plain""#,
        r#""""#,
        r#""Zoë 😀 \u0000 \" \\ \n""#,
        "0",
        "-0",
        "-0.0",
        "1.0e2",
        "100",
        "1E+2",
        "123456789012345678901234567890",
        "-98765432109876543210.000000000000000000001",
        "3.141592653589793238462643383279",
        "true",
        "false",
        "null",
        "[]",
        "{}",
        r#"{"z":1,"a":{"y":[1,2,{"b":null,"a":"x"}],"x":"é"},"m":-0}"#,
        r#"[1,"two",[3.0],{"four":4e0},null,true]"#,
    ] {
        let v = parse(text);
        let sealed = r.seal_at(&v, "ctx", NOW).expect("seal");
        assert!(looks_like_envelope(&sealed));
        assert_eq!(envelope_key_id(&sealed), Some("k1"));
        let opened = r.open_at(&sealed, "ctx", None, NOW).expect("open");
        assert_eq!(opened.value, v, "{text}");
        assert_eq!(opened.value.to_string(), v.to_string(), "{text}");
        assert_eq!(opened.issued_at, NOW);
        assert_eq!(opened.key_id, "k1");
    }
}

#[test]
fn strings_that_look_like_json_stay_strings() {
    let r = ring("k1", &["k1"]);
    for s in ["1", "null", "{}", "[1]", "true", "\"x\""] {
        let v = Value::String(s.into());
        let sealed = r.seal(&v, "c").expect("seal");
        assert_eq!(r.open(&sealed, "c", None).expect("open").value, v);
    }
}

#[test]
fn fresh_nonce_each_time() {
    let r = ring("k1", &["k1"]);
    let v = json!("same");
    let a = r.seal_at(&v, "c", NOW).expect("seal");
    let b = r.seal_at(&v, "c", NOW).expect("seal");
    assert_ne!(a, b);
}

/// Decodes the payload, lets `f` edit it, re-encodes.
fn edit_payload(env: &str, f: impl FnOnce(&mut Vec<u8>)) -> String {
    let (head, b64) = env.rsplit_once(':').expect("envelope");
    let mut p = URL_SAFE_NO_PAD.decode(b64).expect("b64");
    f(&mut p);
    format!("{head}:{}", URL_SAFE_NO_PAD.encode(p))
}

#[test]
fn tampering_each_part_fails() {
    let r = ring("k1", &["k1", "k2"]);
    let env = r.seal_at(&json!("secret"), "ssn", NOW).expect("seal");
    let open = |s: &str| r.open_at(s, "ssn", None, NOW).err();
    assert_eq!(open(&env), None);

    // prefix
    assert_eq!(
        open(&env.replacen("fs1:", "fs2:", 1)),
        Some(DecryptError::Malformed)
    );
    assert_eq!(
        open(&env.replacen("fs1:", "Fs1:", 1)),
        Some(DecryptError::Malformed)
    );
    // key id: unknown, and another id present in the ring
    assert_eq!(
        open(&env.replacen(":k1:", ":k3:", 1)),
        Some(DecryptError::UnknownKey)
    );
    assert_eq!(
        open(&env.replacen(":k1:", ":k2:", 1)),
        Some(DecryptError::AuthFailed)
    );
    assert_eq!(
        open(&env.replacen(":k1:", ":k 1:", 1)),
        Some(DecryptError::Malformed)
    );
    // type: another valid tag, and an unknown one
    assert_eq!(
        open(&edit_payload(&env, |p| p[0] = b'n')),
        Some(DecryptError::AuthFailed)
    );
    assert_eq!(
        open(&edit_payload(&env, |p| p[0] = b'x')),
        Some(DecryptError::Malformed)
    );
    // every single bit of time, nonce, ciphertext and tag
    let len = URL_SAFE_NO_PAD
        .decode(env.rsplit_once(':').expect("env").1)
        .expect("b64")
        .len();
    for byte in 1..len {
        for bit in 0..8 {
            let t = edit_payload(&env, |p| p[byte] ^= 1 << bit);
            assert_eq!(
                open(&t),
                Some(DecryptError::AuthFailed),
                "byte {byte} bit {bit}"
            );
        }
    }
    // moved to another context
    assert_eq!(
        r.open_at(&env, "phone", None, NOW).err(),
        Some(DecryptError::AuthFailed)
    );
    assert_eq!(
        r.open_at(&env, "ssn\0", None, NOW).err(),
        Some(DecryptError::AuthFailed)
    );
}

#[test]
fn forged_time_is_auth_failed_not_expired() {
    let r = ring("k1", &["k1"]);
    let env = r.seal_at(&json!(1), "c", NOW).expect("seal");
    // Back-date by a year: would be expired if time were trusted before the tag.
    let forged = edit_payload(&env, |p| {
        let t = (NOW - 365 * 86400).to_be_bytes();
        p[1..9].copy_from_slice(&t);
    });
    let err = r
        .open_at(&forged, "c", Some(Duration::from_secs(60)), NOW)
        .err();
    assert_eq!(err, Some(DecryptError::AuthFailed));
}

#[test]
fn base64_and_length_problems_are_malformed() {
    let r = ring("k1", &["k1"]);
    let env = r.seal_at(&json!("secret"), "c", NOW).expect("seal");
    let open = |s: &str| r.open_at(s, "c", None, NOW).err();
    let m = Some(DecryptError::Malformed);
    assert_eq!(open(&format!("{env}=")), m, "padding");
    // One more character is either an impossible length or one more byte.
    assert!(matches!(
        open(&format!("{env}A")),
        Some(DecryptError::Malformed | DecryptError::AuthFailed)
    ));
    assert_eq!(open(&env.replace('_', "/")), m, "standard alphabet");
    let mut bad = env.clone();
    bad.insert(12, '@');
    assert_eq!(open(&bad), m);
    assert_eq!(open(&format!("{env}\n")), m);
    assert_eq!(open(&format!(" {env}")), m);
    assert_eq!(open(""), m);
    assert_eq!(open("fs1:k1:"), m);
    assert_eq!(open("fs1:k1"), m);
    assert_eq!(open("fs1::AAAA"), m);
    // every truncation fails, none panics
    for cut in 0..env.len() {
        let t = &env[..cut];
        let e = open(t);
        assert!(
            matches!(e, Some(DecryptError::Malformed | DecryptError::AuthFailed)),
            "cut {cut}: {e:?}"
        );
    }
    // non-canonical trailing bits in the last base64 character
    let last = env.chars().last().expect("last");
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for c in alphabet.chars().filter(|c| *c != last) {
        let mut t = env.clone();
        t.pop();
        t.push(c);
        assert!(open(&t).is_some(), "{c}");
    }
    // oversized input is refused before decoding
    let huge = format!("fs1:k1:{}", "A".repeat(MAX_ENVELOPE_LEN));
    assert_eq!(open(&huge), m);
}

#[test]
fn max_age() {
    let r = ring("k1", &["k1"]);
    let env = r.seal_at(&json!("x"), "c", NOW).expect("seal");
    let age = Some(Duration::from_secs(100));
    assert!(r.open_at(&env, "c", age, NOW + 100).is_ok());
    assert_eq!(
        r.open_at(&env, "c", age, NOW + 101).err(),
        Some(DecryptError::Expired)
    );
    assert!(r.open_at(&env, "c", Some(Duration::ZERO), u64::MAX).is_ok());
    assert!(r.open_at(&env, "c", None, u64::MAX).is_ok());
    // issued in the future (clock skew) is not expired
    assert!(r.open_at(&env, "c", age, NOW - 1000).is_ok());
    let late = r.seal_at(&json!("x"), "c", u64::MAX).expect("seal");
    assert!(r.open_at(&late, "c", age, NOW).is_ok());
}

#[test]
fn rotation() {
    let old = ring("k1", &["k1"]);
    let sealed_k1 = old.seal_at(&json!({"a": 1}), "c", NOW).expect("seal");

    let rotated = ring("k2", &["k1", "k2"]);
    assert_eq!(rotated.active_id(), "k2");
    let opened = rotated
        .open_at(&sealed_k1, "c", None, NOW)
        .expect("open old");
    assert_eq!(opened.key_id, "k1");
    assert_eq!(opened.value, json!({"a": 1}));
    let new = rotated.seal_at(&json!(2), "c", NOW).expect("seal");
    assert_eq!(envelope_key_id(&new), Some("k2"));

    let retired = ring("k2", &["k2"]);
    assert_eq!(
        retired.open_at(&sealed_k1, "c", None, NOW).err(),
        Some(DecryptError::UnknownKey)
    );
    assert!(retired.open_at(&new, "c", None, NOW).is_ok());
    assert!(retired.contains("k2") && !retired.contains("k1"));
    assert_eq!(rotated.ids(), vec!["k1", "k2"]);
}

#[test]
fn same_id_different_material_fails_auth() {
    let a = Keyring::from_raw_keys("k1", vec![("k1".into(), [1; 32])]).expect("ring");
    let b = Keyring::from_raw_keys("k1", vec![("k1".into(), [2; 32])]).expect("ring");
    let env = a.seal_at(&json!("x"), "c", NOW).expect("seal");
    assert_eq!(
        b.open_at(&env, "c", None, NOW).err(),
        Some(DecryptError::AuthFailed)
    );
}

#[test]
fn self_test_covers_every_key() {
    let r = ring("k2", &["k1", "k2", "old_3"]);
    let results = r.self_test();
    let ids: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, vec!["k1", "k2", "old_3"]);
    assert!(results.iter().all(|(_, r)| r.is_ok()));
}

#[test]
fn ring_construction_errors() {
    let k = |id: &str| (id.to_string(), [7u8; 32]);
    assert!(matches!(
        Keyring::from_raw_keys("k1", vec![]),
        Err(KeyError::NoKeys)
    ));
    assert!(matches!(
        Keyring::from_raw_keys("k1", vec![k("k1"), k("k1")]),
        Err(KeyError::DuplicateId { .. })
    ));
    assert!(matches!(
        Keyring::from_raw_keys("k9", vec![k("k1")]),
        Err(KeyError::ActiveMissing { .. })
    ));
    for bad in ["", "a:b", "a b", "ü", &"x".repeat(65)] {
        assert!(
            matches!(
                Keyring::from_raw_keys(bad, vec![k(bad)]),
                Err(KeyError::InvalidId { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(Keyring::from_raw_keys(&"x".repeat(64), vec![k(&"x".repeat(64))]).is_ok());
}

#[test]
fn debug_shows_no_key_material() {
    let r = Keyring::from_raw_keys("k1", vec![("k1".into(), [0xab; 32])]).expect("ring");
    let d = format!("{r:?}");
    assert!(d.contains("k1"));
    assert!(!d.to_lowercase().contains("ab, ab") && !d.contains("171"));
}

#[test]
fn helpers() {
    assert!(looks_like_envelope("fs1:"));
    assert!(!looks_like_envelope("fs1"));
    assert!(!looks_like_envelope("FS1:k1:x"));
    assert_eq!(envelope_key_id("fs1:k1:abc"), Some("k1"));
    assert_eq!(envelope_key_id("fs1:k1"), None);
    assert_eq!(envelope_key_id("fs1::abc"), None);
    assert_eq!(envelope_key_id("fs1:a b:abc"), None);
    assert_eq!(envelope_key_id("xx1:k1:abc"), None);
}

fn number_text() -> impl Strategy<Value = String> {
    "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?"
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number_text().prop_map(|t| serde_json::from_str::<Value>(&t).expect("number")),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_value_round_trips(v in json_value(), ctx in any::<String>(), t in any::<u64>()) {
        let r = ring("k1", &["k1"]);
        let sealed = r.seal_at(&v, &ctx, t).expect("seal");
        let opened = r.open_at(&sealed, &ctx, None, t).expect("open");
        prop_assert_eq!(opened.value.to_string(), v.to_string());
        prop_assert_eq!(&opened.value, &v);
        prop_assert_eq!(opened.issued_at, t);
    }

    #[test]
    fn open_never_panics(s in any::<String>()) {
        let r = ring("k1", &["k1"]);
        let _ = r.open_at(&s, "c", Some(Duration::from_secs(1)), NOW);
        let with_prefix = format!("fs1:k1:{s}");
        prop_assert!(r.open_at(&with_prefix, "c", None, NOW).is_err());
    }
}

#[test]
fn deep_values_seal_only_if_they_can_be_opened() {
    let r = ring("k1", &["k1"]);
    let nest = |depth: usize| {
        let mut v = json!(1);
        for _ in 0..depth {
            v = json!([v]);
        }
        v
    };
    let ok = nest(120);
    let sealed = r.seal_at(&ok, "c", NOW).expect("120 levels");
    assert_eq!(r.open_at(&sealed, "c", None, NOW).expect("open").value, ok);
    assert!(matches!(
        r.seal_at(&nest(121), "c", NOW),
        Err(fieldseal::crypto::SealError::TooDeep)
    ));
}
