//! Examples for the transform engine (`fieldseal::transform`): the cases a
//! tree cannot show (escaped and duplicate member names, bytes kept as
//! sent) and each of its semantics on a small document, some beside the
//! tree oracle.

mod engine;
mod oracle;

use engine::{decrypt_json, encrypt_json, SERDE_MAX_DEPTH};
use fieldseal::crypto::{looks_like_envelope, Keyring};
use fieldseal::transform::{
    DecryptSelection, FieldPath, FieldRule, OnDecryptFailure, TransformError as StreamError,
};
use oracle::{decrypt_document, encrypt_document_with};
use serde_json::Value;

fn ring() -> Keyring {
    Keyring::from_raw_keys("k1", vec![("k1".into(), [42; 32])]).expect("ring")
}

fn rules(paths: &[&str]) -> Vec<FieldRule> {
    paths
        .iter()
        .map(|p| FieldRule {
            path: FieldPath::parse(p).expect("path"),
            context: None,
        })
        .collect()
}

fn enc(input: &str, paths: &[&str]) -> (String, usize) {
    let (out, rep) = encrypt_json(input.as_bytes(), &rules(paths), &ring(), 1, &[], 64)
        .unwrap_or_else(|e| panic!("{input}: {e}"));
    (String::from_utf8(out).expect("utf8"), rep.encrypted)
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).expect("json")
}

fn dec_auto(s: &str) -> Value {
    let (out, _) = decrypt_json(
        s.as_bytes(),
        &DecryptSelection::Auto,
        &ring(),
        OnDecryptFailure::Error,
        None,
        1,
    )
    .expect("decrypt");
    serde_json::from_slice(&out).expect("json")
}

#[test]
fn escaped_member_name_is_selected_by_its_unescaped_name() {
    let (out, n) = enc(r#"{"s\u0073n":"1","x":"2"}"#, &["$.ssn"]);
    assert_eq!(n, 1);
    let v = parse(&out);
    let sealed = v["ssn"].as_str().expect("string");
    assert!(looks_like_envelope(sealed));
    // The name is kept as sent; the context is the unescaped name.
    assert!(out.starts_with(r#"{"s\u0073n":"fs1:"#), "{out}");
    let opened = ring().open_at(sealed, "ssn", None, 1).expect("opens");
    assert_eq!(opened.value, Value::String("1".into()));
    assert_eq!(dec_auto(&out), parse(r#"{"ssn":"1","x":"2"}"#));
}

#[test]
fn every_duplicate_member_is_sealed() {
    let (out, n) = enc(r#"{"ssn":"1","a":0,"ssn":{"b":2}}"#, &["$.ssn"]);
    assert_eq!(n, 2);
    assert!(!out.contains("\"1\""), "{out}");
    assert!(!out.contains("\"b\""), "{out}");
    assert_eq!(out.matches("\"fs1:").count(), 2, "{out}");
    // What a backend keeping the first or the last one sees is sealed.
    let (back, _) = decrypt_json(
        out.as_bytes(),
        &DecryptSelection::Paths(rules(&["$.ssn"])),
        &ring(),
        OnDecryptFailure::Error,
        None,
        1,
    )
    .expect("decrypt");
    assert_eq!(
        String::from_utf8(back).expect("utf8"),
        r#"{"ssn":"1","a":0,"ssn":{"b":2}}"#
    );
}

#[test]
fn negative_index_and_slices_need_the_length() {
    let (out, n) = enc(r#"{"a":[1,[2,3],"x",4]}"#, &["$.a[-1]", "$.a[1][-2]"]);
    assert_eq!(n, 2);
    let v = parse(&out);
    assert_eq!(v["a"][0], 1);
    assert!(looks_like_envelope(v["a"][1][0].as_str().expect("sealed")));
    assert_eq!(v["a"][1][1], 3);
    assert_eq!(v["a"][2], "x");
    assert!(looks_like_envelope(v["a"][3].as_str().expect("sealed")));

    let (out, n) = enc(r#"[0,1,2,3,4,5]"#, &["$[::-2]"]);
    assert_eq!(n, 3);
    let v = parse(&out);
    for (i, x) in v.as_array().expect("array").iter().enumerate() {
        assert_eq!(x.is_string(), i % 2 == 1, "{out}");
    }
    // Nested arrays under a descendant negative index.
    let (out, n) = enc(r#"[[1,[2,3]],[4,5,[6]]]"#, &["$..[-1]"]);
    let mut tree = parse(r#"[[1,[2,3]],[4,5,[6]]]"#);
    let rep =
        encrypt_document_with(&mut tree, &rules(&["$..[-1]"]), &ring(), 1, &[]).expect("tree");
    assert_eq!(n, rep.encrypted);
    assert_eq!(dec_auto(&out), parse(r#"[[1,[2,3]],[4,5,[6]]]"#));
}

#[test]
fn descendant_segment() {
    let input = r#"{"a":{"ssn":1,"b":[{"ssn":"x"},{"c":{"ssn":null}}]},"ssn":true}"#;
    let (out, n) = enc(input, &["$..ssn"]);
    // The outer `ssn` and each nested one (none is inside another).
    assert_eq!(n, 4);
    assert!(!out.contains("\"ssn\":1") && !out.contains("\"x\""));
    assert_eq!(dec_auto(&out), parse(input));
}

#[test]
fn unselected_bytes_are_kept_byte_for_byte() {
    let input = "{ \"n\" : 1E2 ,\n \"big\": 123456789012345678901234567890.5e-7, \"s\": \"caf\\u00e9\\/\" ,\"ssn\":\"1\" }\n";
    let (out, n) = enc(input, &["$.ssn"]);
    assert_eq!(n, 1);
    let head = "{ \"n\" : 1E2 ,\n \"big\": 123456789012345678901234567890.5e-7, \"s\": \"caf\\u00e9\\/\" ,\"ssn\":\"fs1:";
    assert!(out.starts_with(head), "{out}");
    assert!(out.ends_with("\" }\n"), "{out}");
    // Nothing selected: the output is the input.
    let (same, n) = enc(input, &["$.nope"]);
    assert_eq!(n, 0);
    assert_eq!(same, input);
}

#[test]
fn numbers_are_sealed_with_their_digits() {
    let (out, _) = enc(r#"{"n":1E2,"m":-0.10}"#, &["$.n", "$.m"]);
    // A sealed number is the `Value` serde_json makes of its text (as on the
    // tree path: `1E2` comes back as `1e+2`, the digits are kept).
    let v = dec_auto(&out);
    assert_eq!(v, parse(r#"{"n":1E2,"m":-0.10}"#));
    assert_eq!(
        serde_json::to_string(&v).expect("json"),
        r#"{"n":1e+2,"m":-0.10}"#
    );
}

#[test]
fn auto_and_failure_modes() {
    let r = ring();
    let good = r
        .seal_at(
            &serde_json::json!({"inner": r.seal_at(&Value::from(7), "inner", 1).expect("seal")}),
            "a",
            1,
        )
        .expect("seal");
    let bad = "fs1:k1:AAAA";
    let input = format!(r#"{{"a":"{good}","b":"{bad}","c":"plain"}}"#);

    // Auto opens every envelope, also inside a decrypted value.
    let (out, rep) = decrypt_json(
        input.as_bytes(),
        &DecryptSelection::Auto,
        &r,
        OnDecryptFailure::Keep,
        None,
        1,
    )
    .expect("keep");
    assert_eq!(rep.decrypted, 2);
    assert_eq!(rep.failures.len(), 1);
    // `auto` names no member, so failure locations show none.
    assert_eq!(rep.failures[0].location, "$[*]");
    assert_eq!(rep.key_ids, vec!["k1".to_string()]);
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        format!(r#"{{"a":{{"inner":7}},"b":"{bad}","c":"plain"}}"#)
    );

    let (out, rep) = decrypt_json(
        input.as_bytes(),
        &DecryptSelection::Auto,
        &r,
        OnDecryptFailure::Null,
        None,
        1,
    )
    .expect("null");
    assert_eq!(rep.failures.len(), 1);
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        r#"{"a":{"inner":7},"b":null,"c":"plain"}"#
    );

    match decrypt_json(
        input.as_bytes(),
        &DecryptSelection::Auto,
        &r,
        OnDecryptFailure::Error,
        None,
        1,
    ) {
        Err(StreamError::Decrypt(f)) => {
            assert_eq!(f.location, "$[*]");
            assert_eq!(f.key_id.as_deref(), Some("k1"));
        }
        other => panic!(
            "expected a decrypt failure, got {:?}",
            other.map(|(o, _)| o)
        ),
    }
    // Invalid JSON wins over a decryption failure (nothing was parsed on
    // the tree path).
    let broken = format!("{input} x");
    assert!(matches!(
        decrypt_json(
            broken.as_bytes(),
            &DecryptSelection::Auto,
            &r,
            OnDecryptFailure::Error,
            None,
            1,
        ),
        Err(StreamError::InvalidJson)
    ));

    // Paths: the same as the tree path, incl. the nested envelope under `..`.
    let sel = DecryptSelection::Paths(rules(&["$.a", "$..inner", "$.b"]));
    let (out, rep) =
        decrypt_json(input.as_bytes(), &sel, &r, OnDecryptFailure::Keep, None, 1).expect("paths");
    let mut tree = parse(&input);
    let trep =
        decrypt_document(&mut tree, &sel, &r, OnDecryptFailure::Keep, None, 1).expect("tree");
    assert_eq!(parse(std::str::from_utf8(&out).expect("utf8")), tree);
    assert_eq!(rep, trep);
}

#[test]
fn reserved_prefix_guard() {
    let r = ring();
    let genuine = r.seal_at(&Value::from("x"), "note", 1).expect("seal");
    let other_route = r.seal_at(&Value::from("y"), "elsewhere", 1).expect("seal");
    let input = format!(
        r#"{{"note":"{genuine}","o":"{other_route}","fake":"fs1:nope","esc":"\u0066s1:x","ssn":"{genuine}"}}"#
    );
    let (out, rep) = encrypt_json(
        input.as_bytes(),
        &rules(&["$.ssn"]),
        &r,
        1,
        &["elsewhere".to_string()],
        64,
    )
    .expect("encrypt");
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["note"], Value::String(genuine.clone()));
    assert_eq!(v["o"], Value::String(other_route));
    // Look-alikes (also spelled with an escape) are sealed, and the selected
    // envelope of another context too: 3 seals.
    assert_eq!(rep.encrypted, 3);
    let opened = r
        .open_at(v["esc"].as_str().expect("s"), "esc", None, 1)
        .expect("open");
    assert_eq!(opened.value, Value::from("fs1:x"));
    let mut tree = parse(&input);
    let trep = encrypt_document_with(
        &mut tree,
        &rules(&["$.ssn"]),
        &r,
        1,
        &["elsewhere".to_string()],
    )
    .expect("tree");
    assert_eq!(rep, trep);
}

#[test]
fn refusals() {
    let r = ring();
    let e = |s: &[u8]| encrypt_json(s, &rules(&["$.a"]), &r, 1, &[], 3).err();
    for bad in [
        &b""[..],
        b" ",
        b"{",
        b"{\"a\":1,}",
        b"[1,]",
        b"01",
        b"1.",
        b"-",
        b".5",
        b"1e",
        b"+1",
        b"\"\\ud800\"",
        b"\"\\udc00\"",
        b"\"\\ud800\\u0041\"",
        b"\"\\x\"",
        b"\"\x01\"",
        b"\"\xff\"",
        b"tru",
        b"nulll",
        b"{} {}",
        b"{'a':1}",
        b"\xef\xbb\xbf{}",
        b"[1 2]",
        b"{\"a\" 1}",
        b"NaN",
    ] {
        assert!(
            matches!(e(bad), Some(StreamError::InvalidJson)),
            "{:?} {:?}",
            String::from_utf8_lossy(bad),
            e(bad)
        );
        assert!(serde_json::from_slice::<Value>(bad).is_err());
    }
    assert!(matches!(
        e(b"[[[[1]]]]"),
        Some(StreamError::TooDeep { limit: 3 })
    ));
    assert!(e(b"[[[1]]]").is_none());
    // Invalid JSON wins over depth, as when the tree was parsed first.
    assert!(matches!(e(b"[[[[1]]]] x"), Some(StreamError::InvalidJson)));
}

#[test]
fn depth_limit_matches_serde_json() {
    let r = ring();
    for depth in [
        SERDE_MAX_DEPTH - 1,
        SERDE_MAX_DEPTH,
        SERDE_MAX_DEPTH + 1,
        SERDE_MAX_DEPTH + 2,
    ] {
        let doc = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let serde_ok = serde_json::from_str::<Value>(&doc).is_ok();
        let ours = encrypt_json(doc.as_bytes(), &rules(&["$.a"]), &r, 1, &[], 128);
        assert_eq!(ours.is_ok(), serde_ok, "depth {depth}");
        if !serde_ok {
            assert!(matches!(ours, Err(StreamError::InvalidJson)));
        }
    }
}

/// Go's encoding/json, Json.NET and ASP.NET bind any casing of a member name
/// (Go even `ſ` for `s` and the Kelvin sign for `k`) to the same field, so a
/// rule for `ssn` seals every casing, on the proxy path and the tree path.
#[test]
fn member_names_match_in_any_case() {
    let input =
        r#"{"SSN":"1","Ssn":"2","\u017f\u017fn":"3","ssn":"4","ssnx":"5","card":{"NUMBER":"6"}}"#;
    let (out, n) = enc(input, &["$.ssn", "$.card.number"]);
    assert_eq!(n, 5, "{out}");
    let v = parse(&out);
    for k in ["SSN", "Ssn", "ſſn", "ssn"] {
        assert!(
            looks_like_envelope(v[k].as_str().expect("string")),
            "{k}: {out}"
        );
    }
    assert_eq!(v["ssnx"], "5");
    assert!(looks_like_envelope(
        v["card"]["NUMBER"].as_str().expect("string")
    ));
    // Each value's context is its member name as sent: auto-decrypt restores all.
    assert_eq!(dec_auto(&out), parse(input));
    // The tree transform (offline tools) selects the same.
    let mut doc = parse(input);
    let report =
        oracle::encrypt_document(&mut doc, &rules(&["$.ssn", "$.card.number"]), &ring(), 1)
            .expect("tree encrypt");
    assert_eq!(report.encrypted, 5);
}
