//! Differential property tests: the transform engine (`fieldseal::transform`)
//! against the tree oracle (`tests/oracle`, the reference), on random documents
//! written with random whitespace and escapes, and random paths of the
//! supported JSONPath subset.
//!
//! 1. encrypt: envelopes at exactly the same locations as the tree's output,
//!    same report, and both decrypt (tree) to the input;
//! 2. decrypt of a tree-encrypted document (paths and auto, each failure
//!    mode) equals the tree's decrypt, report included;
//! 3. unselected bytes are kept: decrypting the streamed output gives the
//!    input back byte for byte;
//! 4. malformed inputs (truncations, byte flips, junk) are refused exactly
//!    when serde_json refuses them, and never panic.

mod engine;
mod jsonpath_gen;
mod oracle;

use std::collections::BTreeSet;

use engine::{decrypt_json, encrypt_json};
use fieldseal::crypto::{looks_like_envelope, Keyring};
use fieldseal::transform::{
    DecryptSelection, FieldPath, FieldRule, OnDecryptFailure, TransformError as StreamError,
};
use oracle::{decrypt_document, encrypt_document_with};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

const KEYS: &[&str] = &[
    "a", "b", "c", "ssn", "it's", "x y", "é", "\n", "\\", "\u{1}", "\"", "😀", "fs1:k",
];
const SHORT_KEYS: &[&str] = &["a", "b", "c", "ssn", "é", "😀"];
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1E2",
    "-1.5e-300",
    "3.14159",
    "1e400",
    "123456789012345678901234567890",
    "-0.000001",
    "17",
];
const NOW: u64 = 1_000;

fn ring() -> Keyring {
    Keyring::from_raw_keys("k1", vec![("k1".into(), [42; 32])]).expect("ring")
}

/// Genuine envelopes of a few values and contexts, look-alikes, a broken one.
fn envelope_strings() -> Vec<String> {
    let r = ring();
    let mut out = vec![
        "fs1:".to_string(),
        "fs1:x".to_string(),
        "fs1:k1:AAAA".to_string(),
        "fs1:zz:AAAA".to_string(),
    ];
    for ctx in ["a", "b", "$", "ssn", "named"] {
        for v in [Value::from("v"), serde_json::json!({"a": 1, "b": [true]})] {
            out.push(r.seal_at(&v, ctx, NOW).expect("seal"));
        }
    }
    out
}

fn leaf(with_envelopes: bool) -> BoxedStrategy<Value> {
    let base = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(Value::from),
        select(NUMBERS).prop_map(|n| serde_json::from_str::<Value>(n).expect("number")),
        "[a-z é😀\"\\\\\n\u{1}/\u{7f}\u{2028}]{0,6}".prop_map(Value::String),
    ];
    if with_envelopes {
        prop_oneof![4 => base, 1 => select(envelope_strings()).prop_map(Value::String)].boxed()
    } else {
        prop_oneof![4 => base, 1 => Just(Value::String("fs1:x".into()))].boxed()
    }
}

fn doc(with_envelopes: bool) -> impl Strategy<Value = Value> {
    leaf(with_envelopes).prop_recursive(5, 64, 5, |inner| {
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

fn rules_strategy() -> impl Strategy<Value = Vec<FieldRule>> {
    prop::collection::vec(
        (path(), prop::option::of(select(&["named", "a"][..]))),
        1..4,
    )
    .prop_map(|ps| {
        ps.into_iter()
            .map(|(p, ctx)| FieldRule {
                path: FieldPath::parse(&p).expect("path"),
                context: ctx.map(str::to_string),
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------
// A writer with random whitespace and escapes.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }
}

struct Writer {
    rng: Rng,
    out: String,
    /// Normalized locations written compactly (canonical serde_json).
    compact: BTreeSet<String>,
}

impl Writer {
    fn ws(&mut self) {
        while self.rng.chance(3) {
            let c = [' ', '\n', '\t', '\r'][(self.rng.next() % 4) as usize];
            self.out.push(c);
        }
    }

    fn string(&mut self, s: &str) {
        if looks_like_envelope(s) && !self.compact.is_empty() {
            // Sealed by the guard: comes back canonical.
            self.out
                .push_str(&serde_json::to_string(s).expect("json string"));
            return;
        }
        self.out.push('"');
        for c in s.chars() {
            let u = |out: &mut String, c: char| {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            };
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' if self.rng.chance(2) => self.out.push_str("\\n"),
                '/' if self.rng.chance(2) => self.out.push_str("\\/"),
                c if (c as u32) < 0x20 => u(&mut self.out, c),
                c if self.rng.chance(4) => u(&mut self.out, c),
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn value(&mut self, v: &Value, loc: &str) {
        if self.compact.contains(loc) {
            self.out.push_str(&serde_json::to_string(v).expect("json"));
            return;
        }
        match v {
            Value::String(s) => self.string(s),
            Value::Array(a) => {
                self.out.push('[');
                self.ws();
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        self.ws();
                        self.out.push(',');
                        self.ws();
                    }
                    self.value(x, &format!("{loc}[{i}]"));
                }
                self.ws();
                self.out.push(']');
            }
            Value::Object(o) => {
                self.out.push('{');
                self.ws();
                for (i, (k, x)) in o.iter().enumerate() {
                    if i > 0 {
                        self.ws();
                        self.out.push(',');
                        self.ws();
                    }
                    self.string(k);
                    self.ws();
                    self.out.push(':');
                    self.ws();
                    self.value(x, &format!("{loc}['{}']", normalized_name(k)));
                }
                self.ws();
                self.out.push('}');
            }
            other => self.out.push_str(&other.to_string()),
        }
    }
}

fn normalized_name(name: &str) -> String {
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
            c if (c as u32) < 0x20 => esc.push_str(&format!("\\u{:04x}", c as u32)),
            c => esc.push(c),
        }
    }
    esc
}

fn write(v: &Value, seed: u64, compact: BTreeSet<String>) -> String {
    let mut w = Writer {
        rng: Rng(seed | 1),
        out: String::new(),
        compact,
    };
    w.ws();
    w.value(v, "$");
    w.ws();
    w.out
}

/// Normalized locations of the envelope strings in `v`.
fn envelope_locations(v: &Value, loc: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) if looks_like_envelope(s) => {
            out.insert(loc.to_string());
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                envelope_locations(x, &format!("{loc}[{i}]"), out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                envelope_locations(x, &format!("{loc}['{}']", normalized_name(k)), out);
            }
        }
        _ => {}
    }
}

fn tree_decrypt(v: &Value, sel: &DecryptSelection, mode: OnDecryptFailure) -> Option<Value> {
    let mut d = v.clone();
    decrypt_document(&mut d, sel, &ring(), mode, None, NOW).ok()?;
    Some(d)
}

fn named() -> Vec<String> {
    vec!["named".to_string()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// (1) Same locations sealed as the tree, same report, both decrypt back.
    #[test]
    fn encrypt_matches_the_tree(d in doc(true), rules in rules_strategy(), seed in any::<u64>()) {
        let r = ring();
        let text = write(&d, seed, BTreeSet::new());
        let parsed: Value = serde_json::from_str(&text).expect("valid");
        prop_assert_eq!(&parsed, &d);

        let (out, rep) = encrypt_json(text.as_bytes(), &rules, &r, NOW, &named(), 64)
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        let ours: Value = serde_json::from_slice(&out).expect("output is JSON");

        let mut tree = d.clone();
        let trep = encrypt_document_with(&mut tree, &rules, &r, NOW, &named()).expect("tree");

        let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
        envelope_locations(&ours, "$", &mut a);
        envelope_locations(&tree, "$", &mut b);
        prop_assert_eq!(a, b, "{}", text);
        prop_assert_eq!(&rep, &trep);

        // Both decrypt (rule contexts, then location contexts) alike, and
        // to what the input decrypts to.
        let all = |v: &Value| -> Option<Value> {
            let x = tree_decrypt(v, &DecryptSelection::Paths(rules.clone()), OnDecryptFailure::Keep)?;
            tree_decrypt(&x, &DecryptSelection::Auto, OnDecryptFailure::Keep)
        };
        prop_assert_eq!(all(&ours), all(&tree));
        prop_assert_eq!(all(&ours), all(&d));
    }

    /// (2) Decrypting a tree-encrypted document: same Value and report as
    /// the tree's decrypt, in every mode.
    #[test]
    fn decrypt_matches_the_tree(d in doc(true), rules in rules_strategy(), seed in any::<u64>(), auto in any::<bool>()) {
        let r = ring();
        let mut sealed = d.clone();
        encrypt_document_with(&mut sealed, &rules, &r, NOW, &named()).expect("tree");
        // Raw look-alikes and broken envelopes (not through the guard) too.
        let text = write(&d, seed ^ 0x55, BTreeSet::new());
        let sealed_text = write(&sealed, seed, BTreeSet::new());
        let sel = if auto { DecryptSelection::Auto } else { DecryptSelection::Paths(rules.clone()) };
        for input in [&sealed_text, &text] {
            let v: Value = serde_json::from_str(input).expect("valid");
            for mode in [OnDecryptFailure::Keep, OnDecryptFailure::Null, OnDecryptFailure::Error] {
                let ours = decrypt_json(input.as_bytes(), &sel, &r, mode, None, NOW);
                let mut tree = v.clone();
                let trep = decrypt_document(&mut tree, &sel, &r, mode, None, NOW);
                match (ours, trep) {
                    (Ok((out, rep)), Ok(trep)) => {
                        let ov: Value = serde_json::from_slice(&out).expect("json");
                        prop_assert_eq!(&ov, &tree);
                        prop_assert_eq!(rep.decrypted, trep.decrypted);
                        prop_assert_eq!(rep.paths, trep.paths);
                        prop_assert_eq!(rep.key_ids, trep.key_ids);
                        let f = |v: &[fieldseal::transform::DecryptFailure]| -> BTreeSet<String> {
                            v.iter().map(|f| format!("{} {:?} {}", f.location, f.key_id, f.reason)).collect()
                        };
                        prop_assert_eq!(f(&rep.failures), f(&trep.failures));
                    }
                    (Err(StreamError::Decrypt(_)), Err(_)) => {}
                    (o, t) => prop_assert!(false, "stream {:?} tree {:?}", o.map(|x| x.1), t.map(|_| ())),
                }
            }
        }
    }

    /// (3) Only selected values change: decrypting the streamed output gives
    /// the input back byte for byte (selected values and `fs1:` strings are
    /// written canonically in the input, the rest with random spacing and
    /// escapes).
    #[test]
    fn unselected_bytes_are_kept(d in doc(false), rules in rules_strategy(), seed in any::<u64>()) {
        let r = ring();
        let mut compact = BTreeSet::new();
        for rule in &rules {
            compact.extend(rule.path.locations(&d));
        }
        // Marks the writer as "canonical fs1 strings" even with no match.
        compact.insert("-".into());
        let text = write(&d, seed, compact);
        let (out, _) = encrypt_json(text.as_bytes(), &rules, &r, NOW, &[], 64).expect("encrypt");
        let (back, _) = decrypt_json(&out, &DecryptSelection::Paths(rules.clone()), &r, OnDecryptFailure::Keep, None, NOW)
            .expect("decrypt");
        let (back, _) = decrypt_json(&back, &DecryptSelection::Auto, &r, OnDecryptFailure::Keep, None, NOW)
            .expect("decrypt");
        prop_assert_eq!(String::from_utf8(back).expect("utf8"), text);
    }

    /// (4) Malformed input: refused exactly when serde_json refuses it.
    #[test]
    fn malformed_input_is_refused_like_serde_json(
        d in doc(true),
        rules in rules_strategy(),
        seed in any::<u64>(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        junk in prop::collection::vec(select(&b"{}[]\",:\\ 0123456789.eE+-tfnrulasx\x01\xff\xc3\xa9"[..]), 0..12),
    ) {
        let text = write(&d, seed, BTreeSet::new()).into_bytes();
        let mut inputs: Vec<Vec<u8>> = vec![text[..cut.index(text.len() + 1)].to_vec(), junk];
        let mut flipped = text.clone();
        for (i, b) in &flips {
            let at = i.index(flipped.len());
            flipped[at] = *b;
        }
        inputs.push(flipped);
        let r = ring();
        for input in inputs {
            let serde_ok = serde_json::from_slice::<Value>(&input).is_ok();
            let enc = encrypt_json(&input, &rules, &r, NOW, &named(), 64);
            match &enc {
                Ok(_) => prop_assert!(serde_ok, "accepted what serde_json refuses: {:?}", String::from_utf8_lossy(&input)),
                Err(StreamError::InvalidJson) => prop_assert!(!serde_ok, "refused what serde_json accepts: {:?}", String::from_utf8_lossy(&input)),
                Err(e) => prop_assert!(false, "{e}"),
            }
            let dec = decrypt_json(&input, &DecryptSelection::Auto, &r, OnDecryptFailure::Keep, None, NOW);
            prop_assert_eq!(dec.is_ok(), serde_ok);
        }
    }
}
