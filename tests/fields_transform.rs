//! Example-based tests of encrypt / decrypt / rewrap over documents, run
//! through the transform engine.

mod engine;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use engine::{decrypt_document, encrypt_document, rewrap_document};
use fieldseal::crypto::exceeds_depth;
use fieldseal::crypto::{envelope_key_id, looks_like_envelope, Keyring};
use fieldseal::transform::{
    DecryptSelection, FieldPath, FieldRule, OnDecryptFailure, TransformError as FieldError,
    TransformReport,
};
use serde_json::{json, Value};

const NOW: u64 = 1_700_000_000;

fn ring(active: &str, ids: &[&str]) -> Keyring {
    let keys = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_string(), [i as u8 + 1; 32]))
        .collect();
    Keyring::from_raw_keys(active, keys).expect("ring")
}

fn rule(p: &str) -> FieldRule {
    FieldRule {
        path: FieldPath::parse(p).expect("path"),
        context: None,
    }
}

fn rule_ctx(p: &str, ctx: &str) -> FieldRule {
    FieldRule {
        path: FieldPath::parse(p).expect("path"),
        context: Some(ctx.into()),
    }
}

fn decrypt(
    doc: &mut Value,
    rules: Vec<FieldRule>,
    r: &Keyring,
    mode: OnDecryptFailure,
) -> Result<TransformReport, FieldError> {
    decrypt_document(doc, &DecryptSelection::Paths(rules), r, mode, None, NOW)
}

fn sample() -> Value {
    json!({
        "name": "Ada",
        "ssn": "123-45-6789",
        "salary": 123456789012345678901234567890u128.to_string().parse::<Value>().expect("n"),
        "contacts": [
            {"type": "home", "phone": "555-0100"},
            {"type": "work", "phone": "555-0199", "note": null}
        ],
        "tags": ["vip", "early"],
        "address": {"street": "1 Main", "zip": "12345"},
        "active": true
    })
}

#[test]
fn encrypt_decrypt_round_trip_all_types() {
    let r = ring("k1", &["k1"]);
    let rules = vec![
        rule("$.ssn"),
        rule("$.salary"),
        rule("$.contacts[*].phone"),
        rule("$.contacts[1].note"),
        rule("$.tags"),
        rule("$.address"),
        rule("$.active"),
        rule("$.missing.nothing"),
    ];
    let original = sample();
    let mut doc = original.clone();
    let rep = encrypt_document(&mut doc, &rules, &r, NOW).expect("encrypt");
    assert_eq!(rep.encrypted, 8);
    assert_eq!(rep.key_ids, vec!["k1"]);
    assert_eq!(rep.paths.len(), 7, "the missing path is not reported");
    assert!(!rep.paths.contains(&"$.missing.nothing".to_string()));
    for p in [
        "/ssn",
        "/salary",
        "/contacts/0/phone",
        "/contacts/1/note",
        "/tags",
        "/address",
        "/active",
    ] {
        let v = doc.pointer(p).and_then(Value::as_str).unwrap_or_default();
        assert!(looks_like_envelope(v), "{p}");
    }
    assert_eq!(doc["name"], "Ada");
    assert_eq!(doc["contacts"][0]["type"], "home");
    // Key order is kept.
    let keys: Vec<&String> = doc.as_object().expect("obj").keys().collect();
    assert_eq!(
        keys,
        ["name", "ssn", "salary", "contacts", "tags", "address", "active"]
    );

    let rep = decrypt(&mut doc, rules, &r, OnDecryptFailure::Error).expect("decrypt");
    assert_eq!(rep.decrypted, 8);
    assert_eq!(doc, original);
    assert_eq!(doc.to_string(), original.to_string());
}

#[test]
fn default_context_follows_the_member_name() {
    let r = ring("k1", &["k1"]);
    let mut posted = json!({"ssn": "123", "tags": ["a", "b"]});
    encrypt_document(&mut posted, &[rule("$.ssn"), rule("$.tags[*]")], &r, NOW).expect("enc");
    // The backend returns the stored values somewhere else.
    let mut returned = json!({
        "items": [{"ssn": posted["ssn"].clone()}],
        "tags": [posted["tags"][1].clone()],
        "other": {"tags": posted["tags"][0].clone()}
    });
    let mut auto = returned.clone();
    decrypt(
        &mut returned,
        vec![rule("$.items[*].ssn"), rule("$.tags[0]"), rule("$..tags")],
        &r,
        OnDecryptFailure::Error,
    )
    .expect("paths");
    assert_eq!(
        returned,
        json!({"items": [{"ssn": "123"}], "tags": ["b"], "other": {"tags": "a"}})
    );
    decrypt_document(
        &mut auto,
        &DecryptSelection::Auto,
        &r,
        OnDecryptFailure::Error,
        None,
        NOW,
    )
    .expect("auto");
    assert_eq!(auto, returned);

    // The root and root-level array elements use "$".
    let mut root = json!("secret");
    encrypt_document(&mut root, &[rule("$")], &r, NOW).expect("root");
    assert!(r.open_at(root.as_str().expect("s"), "$", None, NOW).is_ok());
    let mut arr = json!([1, 2]);
    encrypt_document(&mut arr, &[rule("$[0]")], &r, NOW).expect("arr");
    assert!(r
        .open_at(arr[0].as_str().expect("s"), "$", None, NOW)
        .is_ok());
}

#[test]
fn moved_to_another_field_fails() {
    let r = ring("k1", &["k1"]);
    let mut doc = json!({"ssn": "123"});
    encrypt_document(&mut doc, &[rule("$.ssn")], &r, NOW).expect("enc");
    let mut moved = json!({"name": doc["ssn"].clone()});
    let err = decrypt(
        &mut moved,
        vec![rule("$.name")],
        &r,
        OnDecryptFailure::Error,
    )
    .expect_err("moved");
    match err {
        FieldError::Decrypt(f) => {
            assert_eq!(f.location, "$['name']");
            assert_eq!(f.reason, "auth_failed");
            assert_eq!(f.key_id.as_deref(), Some("k1"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn named_context_overrides() {
    let r = ring("k1", &["k1"]);
    let mut doc = json!({"a": {"tax": "x"}, "b": {"tax": "y"}});
    encrypt_document(&mut doc, &[rule_ctx("$..tax", "tax-id")], &r, NOW).expect("enc");
    let mut plain_rule = doc.clone();
    let rep = decrypt(
        &mut plain_rule,
        vec![rule("$..tax")],
        &r,
        OnDecryptFailure::Keep,
    )
    .expect("keep");
    assert_eq!(rep.failures.len(), 2);
    assert_eq!(plain_rule, doc, "kept");
    decrypt(
        &mut doc,
        vec![rule_ctx("$..tax", "tax-id")],
        &r,
        OnDecryptFailure::Error,
    )
    .expect("named");
    assert_eq!(doc, json!({"a": {"tax": "x"}, "b": {"tax": "y"}}));
}

#[test]
fn existing_envelopes_and_look_alikes() {
    let r = ring("k1", &["k1"]);
    let mut doc = json!({"ssn": "123"});
    encrypt_document(&mut doc, &[rule("$.ssn")], &r, NOW).expect("enc");
    let sealed = doc.clone();
    // Already sealed for this context: left alone.
    let rep = encrypt_document(&mut doc, &[rule("$.ssn")], &r, NOW).expect("again");
    assert_eq!(rep.encrypted, 0);
    assert_eq!(doc, sealed);

    // A client-made look-alike (plaintext in base64) is sealed like anything else.
    let mut payload = vec![b's'];
    payload.extend_from_slice(&NOW.to_be_bytes());
    payload.extend_from_slice(&[0; 12]);
    payload.extend_from_slice(b"plaintext-look-alike");
    let fake = format!("fs1:k1:{}", URL_SAFE_NO_PAD.encode(&payload));
    let mut doc = json!({"ssn": fake});
    let rep = encrypt_document(&mut doc, &[rule("$.ssn")], &r, NOW).expect("fake");
    assert_eq!(rep.encrypted, 1);
    let back = r
        .open_at(doc["ssn"].as_str().expect("s"), "ssn", None, NOW)
        .expect("open");
    assert_eq!(back.value, json!(fake));

    // A real envelope for ANOTHER context is sealed again (it does not open here).
    let mut doc = json!({"phone": sealed["ssn"].clone()});
    let rep = encrypt_document(&mut doc, &[rule("$.phone")], &r, NOW).expect("other ctx");
    assert_eq!(rep.encrypted, 1);
    // An envelope under a key this ring lacks is sealed too.
    let foreign = ring("zz", &["zz"])
        .seal_at(&json!("x"), "ssn", NOW)
        .expect("seal");
    let mut doc = json!({"ssn": foreign});
    assert_eq!(
        encrypt_document(&mut doc, &[rule("$.ssn")], &r, NOW)
            .expect("enc")
            .encrypted,
        1
    );
}

#[test]
fn overlapping_rules_seal_once() {
    let r = ring("k1", &["k1"]);
    let original = json!({"a": {"b": "x", "c": [1, {"b": 2}]}, "b": "top"});
    for rules in [
        vec![rule("$.a"), rule("$.a.b")],
        vec![rule("$.a.b"), rule("$.a")],
        vec![rule("$..b"), rule("$.a"), rule("$['a']")],
        vec![rule_ctx("$.a", "one"), rule_ctx("$.a", "two")],
        vec![rule("$.a.c[*]"), rule("$..*")],
    ] {
        let mut doc = original.clone();
        let rep = encrypt_document(&mut doc, &rules, &r, NOW).expect("enc");
        // The outermost match wins; nothing inside it is sealed separately.
        let sealed_a = doc["a"].as_str().expect("a sealed");
        let inner = r
            .open_at(
                sealed_a,
                rules[0].context.as_deref().unwrap_or("a"),
                None,
                NOW,
            )
            .or_else(|_| r.open_at(sealed_a, "one", None, NOW))
            .expect("a opens");
        assert_eq!(inner.value, original["a"]);
        assert!(rep.encrypted <= 2);
        decrypt(&mut doc, rules.clone(), &r, OnDecryptFailure::Error).expect("dec");
        assert_eq!(doc, original);
    }
}

#[test]
fn failure_modes() {
    let r = ring("k1", &["k1"]);
    let good = r.seal_at(&json!("ok"), "v", NOW).expect("seal");
    let tampered = {
        // One base64 character inside the nonce changed.
        let t = r.seal_at(&json!("secret-value"), "v", NOW).expect("seal");
        let i = "fs1:k1:".len() + 14;
        let c = if &t[i..=i] == "A" { "B" } else { "A" };
        format!("{}{c}{}", &t[..i], &t[i + 1..])
    };
    let doc = json!({"rows": [
        {"v": good},
        {"v": tampered.clone()},
        {"v": "legacy plain"},
        {"v": 17},
        {"v": "fs1:nokey:AAAA"},
        {"v": "fs1:gone:cwAAAABlU_EAAAECAwQFBgcICQoL9LRz9T0H10z2LMrn6rLUMY_OKSDKUbwqHCqf"}
    ]});
    let rules = || vec![rule("$.rows[*].v")];

    let mut d = doc.clone();
    match decrypt(&mut d, rules(), &r, OnDecryptFailure::Error) {
        Err(FieldError::Decrypt(f)) => {
            assert_eq!(f.location, "$['rows'][1]['v']");
            assert_eq!(f.reason, "auth_failed");
            assert_eq!(f.key_id.as_deref(), Some("k1"));
        }
        other => panic!("{other:?}"),
    }

    let mut d = doc.clone();
    let rep = decrypt(&mut d, rules(), &r, OnDecryptFailure::Null).expect("null");
    assert_eq!(rep.decrypted, 1);
    assert_eq!(
        d,
        json!({"rows": [{"v": "ok"}, {"v": null}, {"v": "legacy plain"}, {"v": 17}, {"v": null}, {"v": null}]})
    );
    let reasons: Vec<(&str, Option<&str>, &str)> = rep
        .failures
        .iter()
        .map(|f| (f.location.as_str(), f.key_id.as_deref(), f.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("$['rows'][1]['v']", Some("k1"), "auth_failed"),
            ("$['rows'][4]['v']", Some("nokey"), "malformed"),
            ("$['rows'][5]['v']", Some("gone"), "unknown_key"),
        ]
    );
    // Failures never carry the value.
    assert!(!format!("{:?}", rep.failures).contains("secret"));

    let mut d = doc.clone();
    let rep = decrypt(&mut d, rules(), &r, OnDecryptFailure::Keep).expect("keep");
    assert_eq!(rep.failures.len(), 3);
    assert_eq!(d["rows"][1]["v"], json!(tampered));
    assert_eq!(d["rows"][0]["v"], "ok");
}

#[test]
fn expiry_through_documents() {
    let r = ring("k1", &["k1"]);
    let mut doc = json!({"otp": "1234"});
    encrypt_document(&mut doc, &[rule("$.otp")], &r, NOW).expect("enc");
    let sel = DecryptSelection::Paths(vec![rule("$.otp")]);
    let age = Some(Duration::from_secs(300));
    let mut late = doc.clone();
    let rep = decrypt_document(&mut late, &sel, &r, OnDecryptFailure::Null, age, NOW + 301)
        .expect("late");
    assert_eq!(rep.failures[0].reason, "expired");
    assert_eq!(late, json!({"otp": null}));
    decrypt_document(&mut doc, &sel, &r, OnDecryptFailure::Error, age, NOW + 300).expect("in time");
    assert_eq!(doc, json!({"otp": "1234"}));
}

#[test]
fn rewrap_moves_everything_to_the_active_key() {
    let old = ring("k1", &["k1"]);
    let original = json!({"ssn": "1", "list": [{"phone": "2"}, {"phone": 3}], "tax": {"id": "t"}});
    let mut doc = original.clone();
    encrypt_document(&mut doc, &[rule("$.ssn"), rule("$..phone")], &old, NOW - 50).expect("enc");
    encrypt_document(&mut doc, &[rule_ctx("$.tax", "tax-ctx")], &old, NOW - 50).expect("enc");

    let both = ring("k2", &["k1", "k2"]);
    // Without rules the named-context value cannot be opened: error, nothing leaks.
    let mut d = doc.clone();
    match rewrap_document(&mut d, None, &both, NOW) {
        // No rule names `tax`, so the location shows no member name.
        Err(FieldError::Decrypt(f)) => assert_eq!(f.location, "$[*]"),
        other => panic!("{other:?}"),
    }

    let mut d = doc.clone();
    let rules = [
        rule("$.ssn"),
        rule("$.list[*].phone"),
        rule_ctx("$.tax", "tax-ctx"),
    ];
    let rep = rewrap_document(&mut d, Some(&rules), &both, NOW).expect("rewrap");
    assert_eq!((rep.decrypted, rep.encrypted), (4, 4));
    assert_eq!(rep.key_ids, vec!["k1"]);
    let mut all = Vec::new();
    collect(&d, &mut all);
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|e| envelope_key_id(e) == Some("k2")));
    // issued_at is kept, so max_age still counts from the first sealing.
    let opened = both
        .open_at(d["ssn"].as_str().expect("s"), "ssn", None, NOW)
        .expect("open");
    assert_eq!(opened.issued_at, NOW - 50);

    // Second pass: already under the active key, left unchanged but verified.
    let before = d.clone();
    let rep = rewrap_document(&mut d, Some(&rules), &both, NOW).expect("again");
    assert_eq!((rep.decrypted, rep.encrypted), (4, 0));
    assert_eq!(d, before);

    // The retired ring reads it all.
    // Same material as k2 in `both` (second entry there).
    let new_only = Keyring::from_raw_keys("k2", vec![("k2".into(), [2; 32])]).expect("ring");
    let mut plain = d.clone();
    decrypt(
        &mut plain,
        rules.to_vec(),
        &new_only,
        OnDecryptFailure::Error,
    )
    .expect("dec");
    assert_eq!(plain, original);

    // Rule-less rewrap of default-context envelopes.
    let mut doc = original.clone();
    encrypt_document(&mut doc, &[rule("$..phone"), rule("$.ssn")], &old, NOW).expect("enc");
    let rep = rewrap_document(&mut doc, None, &both, NOW).expect("rewrap all");
    assert_eq!(rep.encrypted, 3);
    decrypt_document(
        &mut doc,
        &DecryptSelection::Auto,
        &new_only,
        OnDecryptFailure::Error,
        None,
        NOW,
    )
    .expect("auto");
    assert_eq!(doc, original);

    // A tampered envelope makes rewrap fail.
    let mut doc =
        json!({"ssn": "fs1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"});
    assert!(matches!(
        rewrap_document(&mut doc, None, &both, NOW),
        Err(FieldError::Decrypt(_))
    ));
}

fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if looks_like_envelope(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect(x, out)),
        _ => {}
    }
}

#[test]
fn auto_decrypts_nested_envelopes() {
    let r = ring("k1", &["k1"]);
    let inner = r.seal_at(&json!("deep"), "b", NOW).expect("seal");
    let outer = r.seal_at(&json!({"b": inner}), "a", NOW).expect("seal");
    let mut doc = json!({"a": outer});
    let rep = decrypt_document(
        &mut doc,
        &DecryptSelection::Auto,
        &r,
        OnDecryptFailure::Error,
        None,
        NOW,
    )
    .expect("auto");
    assert_eq!(doc, json!({"a": {"b": "deep"}}));
    assert_eq!(rep.decrypted, 2);
}

#[test]
fn paths_select_what_rfc_9535_says() {
    let doc = json!({
        "a": [10, 11, 12, 13, 14],
        "o": {"x": {"name": 1}, "y": [{"name": 2}], "it's": 3},
        "name": 0
    });
    let locs = |p: &str| FieldPath::parse(p).expect("path").locations(&doc);
    assert_eq!(locs("$.a[-1]"), ["$['a'][4]"]);
    assert_eq!(locs("$.a[1:3]"), ["$['a'][1]", "$['a'][2]"]);
    assert_eq!(locs("$.a[::2]"), ["$['a'][0]", "$['a'][2]", "$['a'][4]"]);
    assert_eq!(locs("$.a[0,2,0]"), ["$['a'][0]", "$['a'][2]"]);
    assert_eq!(locs("$.a[9]"), Vec::<String>::new());
    assert_eq!(
        locs("$..name"),
        ["$['o']['x']['name']", "$['o']['y'][0]['name']", "$['name']"]
    );
    assert_eq!(locs("$.o['it\\'s']"), ["$['o']['it\\'s']"]);
    assert_eq!(locs("$.o[\"x\",'y']"), ["$['o']['x']", "$['o']['y']"]);
    assert_eq!(locs("$.o.*").len(), 3);
    assert_eq!(locs("$"), ["$"]);
    assert_eq!(locs("$..[0]"), ["$['a'][0]", "$['o']['y'][0]"]);
}

#[test]
fn filter_and_bad_paths_are_refused() {
    let e = FieldPath::parse("$.items[?(@.secret)]").expect_err("filter");
    assert!(e
        .message
        .contains("filter selectors are not supported in field rules"));
    assert!(e.to_string().contains("$.items[?(@.secret)]"));
    let e = FieldPath::parse("$.a[").expect_err("syntax");
    assert!(e.message.contains("at byte"), "{e}");
}

#[test]
fn depth_limit() {
    let mut v = json!(1);
    for _ in 0..200 {
        v = json!([v]);
    }
    assert!(exceeds_depth(&v, 199));
    assert!(!exceeds_depth(&v, 200));
    let wide = json!({"a": [[[]]], "b": [[[[]]]], "c": 1});
    assert!(!exceeds_depth(&wide, 5));
    assert!(exceeds_depth(&wide, 4));
}

#[test]
fn reserved_prefix_outside_the_rules_is_sealed_so_auto_decrypt_cannot_be_broken() {
    let r = ring("k1", &["k1"]);
    let genuine_elsewhere = r.seal_at(&json!("kept"), "note", NOW).expect("seal");
    let original = json!({
        "ssn": "123-45-6789",
        "nickname": "fs1:x",
        "nested": { "n": "fs1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" },
        "note": genuine_elsewhere,
        "plain": "hello"
    });
    let mut doc = original.clone();
    let report = encrypt_document(&mut doc, &[rule("$.ssn")], &r, NOW).expect("encrypt");
    // ssn by the rule, nickname and nested.n because they squat the prefix.
    assert_eq!(report.encrypted, 3, "{doc}");
    assert_eq!(
        doc["note"], original["note"],
        "a genuine envelope for its place is left alone"
    );
    assert_eq!(doc["plain"], "hello");
    for p in ["/ssn", "/nickname", "/nested/n"] {
        let s = doc.pointer(p).and_then(Value::as_str).expect("string");
        assert!(
            r.open_at(s, p.rsplit('/').next().unwrap_or(""), None, NOW)
                .is_ok(),
            "{p} is a genuine envelope"
        );
    }
    // Every reader of a `decrypt: auto` route gets exactly what was sent.
    let mut read = doc.clone();
    decrypt_document(
        &mut read,
        &DecryptSelection::Auto,
        &r,
        OnDecryptFailure::Error,
        None,
        NOW,
    )
    .expect("auto decrypt does not fail on client-planted look-alikes");
    let mut expected = original.clone();
    expected["note"] = json!("kept");
    assert_eq!(read, expected);
}

#[test]
fn envelopes_other_routes_sealed_under_a_named_context_are_left_alone() {
    let r = ring("k1", &["k1"]);
    let notes = r.seal_at(&json!("n"), "user_notes", NOW).expect("seal");
    let doc = json!({ "email": "x@example.com", "notes": notes });
    let (out, report) = engine::encrypt_json(
        &serde_json::to_vec(&doc).expect("json"),
        &[rule("$.email")],
        &r,
        NOW,
        &["user_notes".to_string()],
        engine::SERDE_MAX_DEPTH,
    )
    .expect("encrypt");
    let doc: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(report.encrypted, 1, "only the email: {doc}");
    assert_eq!(
        doc["notes"],
        json!(notes),
        "the named-context envelope is untouched"
    );
}
