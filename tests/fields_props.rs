//! Property tests for field rules:
//! - the engine selects exactly the locations serde_json_path (the oracle,
//!   used only here) selects, for random documents and paths of our subset,
//!   in the order the tree oracle visits them;
//! - encrypt then decrypt gives back the document, nothing sealed twice.

mod engine;
mod jsonpath_gen;
mod oracle;

use std::collections::BTreeSet;

use engine::{decrypt_document, encrypt_document};
use fieldseal::crypto::{looks_like_envelope, Keyring};
use fieldseal::transform::{DecryptSelection, FieldPath, FieldRule, OnDecryptFailure};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;
use serde_json_path::JsonPath;

const KEYS: &[&str] = &["a", "b", "c", "fs", "it's", "x y", "é", "\n", "\\", "\u{1}"];
const SHORT_KEYS: &[&str] = &["a", "b", "c", "fs", "é"];

fn doc() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(Value::from),
        "[a-z ]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((select(KEYS), inner), 0..5).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn path() -> impl Strategy<Value = String> {
    jsonpath_gen::path(KEYS, SHORT_KEYS)
}

/// RFC 9535 §2.7 normalized path from the oracle's elements. (The oracle's
/// own Display does not escape names.)
fn oracle_locations(path: &str, doc: &Value) -> BTreeSet<String> {
    let p = JsonPath::parse(path).unwrap_or_else(|e| panic!("oracle rejects {path}: {e}"));
    p.query_located(doc)
        .locations()
        .map(|loc| {
            let mut s = String::from("$");
            for el in loc.iter() {
                match el.as_index() {
                    Some(i) => s.push_str(&format!("[{i}]")),
                    None => {
                        let name = el.as_name().unwrap_or_default();
                        let mut esc = String::new();
                        for c in name.chars() {
                            match c {
                                '\u{8}' => esc.push_str("\\b"),
                                '\u{c}' => esc.push_str("\\f"),
                                '\n' => esc.push_str("\\n"),
                                '\r' => esc.push_str("\\r"),
                                '\t' => esc.push_str("\\t"),
                                '\'' => esc.push_str("\\'"),
                                '\\' => esc.push_str("\\\\"),
                                c if (c as u32) < 0x20 => {
                                    esc.push_str(&format!("\\u{:04x}", c as u32))
                                }
                                c => esc.push(c),
                            }
                        }
                        s.push_str(&format!("['{esc}']"));
                    }
                }
            }
            s
        })
        .collect()
}

fn ring() -> Keyring {
    Keyring::from_raw_keys("k1", vec![("k1".into(), [42; 32])]).expect("ring")
}

/// Every envelope string in `v` with the default context of its location.
fn envelopes<'a>(v: &'a Value, ctx: &'a str, out: &mut Vec<(&'a str, &'a str)>) {
    match v {
        Value::String(s) if looks_like_envelope(s) => out.push((s, ctx)),
        Value::Array(a) => a.iter().for_each(|x| envelopes(x, ctx, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| envelopes(x, k, out)),
        _ => {}
    }
}

fn contains_envelope(v: &Value) -> bool {
    let mut out = Vec::new();
    envelopes(v, "$", &mut out);
    !out.is_empty()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn walker_matches_serde_json_path(d in doc(), p in path()) {
        let ours = FieldPath::parse(&p).unwrap_or_else(|e| panic!("{e}"));
        let located = ours.locations(&d);
        let set: BTreeSet<String> = located.iter().cloned().collect();
        prop_assert_eq!(set.len(), located.len(), "duplicates for {}", p);
        prop_assert_eq!(set, oracle_locations(&p, &d), "path {} doc {}", p, d);
        // In the same order as the tree oracle visits them.
        let rule = FieldRule { path: ours, context: None };
        prop_assert_eq!(located, oracle::locations(&d, &rule), "path {} doc {}", p, d);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn encrypt_then_decrypt_is_identity(
        d in doc(),
        paths in prop::collection::vec(path(), 1..4),
    ) {
        let rules: Vec<FieldRule> = paths
            .iter()
            .map(|p| FieldRule { path: FieldPath::parse(p).expect("path"), context: None })
            .collect();
        let r = ring();
        let mut enc = d.clone();
        let rep = encrypt_document(&mut enc, &rules, &r, 1).expect("encrypt");

        // Every seal is visible exactly once, and no envelope holds another.
        let mut found = Vec::new();
        envelopes(&enc, "$", &mut found);
        prop_assert_eq!(found.len(), rep.encrypted);
        for (e, ctx) in &found {
            let inner = r.open_at(e, ctx, None, 1).expect("opens with location context");
            prop_assert!(!contains_envelope(&inner.value));
        }

        // Encrypting again changes nothing.
        let mut twice = enc.clone();
        let rep2 = encrypt_document(&mut twice, &rules, &r, 1).expect("encrypt");
        prop_assert_eq!(rep2.encrypted, 0);
        prop_assert_eq!(&twice, &enc);

        let mut by_paths = enc.clone();
        decrypt_document(&mut by_paths, &DecryptSelection::Paths(rules.clone()), &r,
            OnDecryptFailure::Error, None, 1).expect("decrypt");
        prop_assert_eq!(&by_paths, &d);

        let mut auto = enc.clone();
        let rep3 = decrypt_document(&mut auto, &DecryptSelection::Auto, &r,
            OnDecryptFailure::Error, None, 1).expect("decrypt");
        prop_assert_eq!(&auto, &d);
        prop_assert_eq!(rep3.decrypted, rep.encrypted);
    }
}
