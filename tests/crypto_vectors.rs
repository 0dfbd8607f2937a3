//! Known-answer vectors from docs/envelope.md. They were produced
//! independently (Python `cryptography`, see the doc) and must stay stable:
//! changing one means the envelope format changed.

use fieldseal::crypto::Keyring;
use serde_json::Value;

struct Vector {
    master: [u8; 32],
    key_id: &'static str,
    context: &'static str,
    value: &'static str,
    issued_at: u64,
    nonce: [u8; 12],
    envelope: &'static str,
}

fn seq(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn rev() -> [u8; 32] {
    std::array::from_fn(|i| 31 - i as u8)
}

fn nonce(start: u8) -> [u8; 12] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn vectors() -> Vec<Vector> {
    vec![
        Vector {
            master: seq(0),
            key_id: "k1",
            context: "ssn",
            value: r#""123-45-6789""#,
            issued_at: 1_700_000_000,
            nonce: nonce(0),
            envelope: "fs1:k1:cwAAAABlU_EAAAECAwQFBgcICQoL9LRz9T0H10z2LMrn6rLUMY_OKSDKUbwqHCqf",
        },
        Vector {
            master: seq(0),
            key_id: "k1",
            context: "amount",
            value: "12345678901234567890.50",
            issued_at: 1_700_000_000,
            nonce: nonce(12),
            envelope: "fs1:k1:bgAAAABlU_EADA0ODxAREhMUFRYXxI79_66NK_bElAP_9EZTNMYJetDhaQZMrajwo7eFBTSpH01HcA4J",
        },
        Vector {
            master: rev(),
            key_id: "k2-2024_b",
            context: "$",
            value: r#"{"b":true,"a":[1,null,"xé"]}"#,
            issued_at: 0,
            nonce: [0xff; 12],
            envelope: "fs1:k2-2024_b:bwAAAAAAAAAA________________OMAdyqgq_XJhj_8hNXE0f1bJLIYvbBJvvtM1_kGu4kDGuRNDIM8xnbuLiD8q",
        },
        Vector {
            master: seq(0),
            key_id: "k1",
            context: "",
            value: "null",
            issued_at: 1,
            nonce: [0; 12],
            envelope: "fs1:k1:egAAAAAAAAABAAAAAAAAAAAAAAAAabIEGEr5YpePJis-Uz1issgqB7k",
        },
        Vector {
            master: seq(0),
            key_id: "k1",
            context: "flag",
            value: "false",
            issued_at: u64::MAX,
            nonce: nonce(100),
            envelope: "fs1:k1:Yv__________ZGVmZ2hpamtsbW5voQlb95en6v9DIp1IrVrjfiJn9iGy",
        },
        Vector {
            master: rev(),
            key_id: "k2-2024_b",
            context: "tags",
            value: "[]",
            issued_at: 1_700_000_000,
            nonce: nonce(200),
            envelope: "fs1:k2-2024_b:YQAAAABlU_EAyMnKy8zNzs_Q0dLTKisHKQCzugh47BNsrWtprQ0U",
        },
        Vector {
            master: seq(0),
            key_id: "k1",
            context: "name",
            value: r#""Zoë 😀""#,
            issued_at: 1_700_000_000,
            nonce: nonce(24),
            envelope: "fs1:k1:cwAAAABlU_EAGBkaGxwdHh8gISIjxsRKu2F99VjQR8swG-e4Kn6KcHRSTIh3zg",
        },
        Vector {
            master: seq(0),
            key_id: "k1",
            context: "empty",
            value: r#""""#,
            issued_at: 1_700_000_000,
            nonce: nonce(36),
            envelope: "fs1:k1:cwAAAABlU_EAJCUmJygpKissLS4vD0_3I8PKLgBo7OuLplcJCw",
        },
    ]
}

#[test]
fn vectors_seal_and_open() {
    for v in vectors() {
        let ring =
            Keyring::from_raw_keys(v.key_id, vec![(v.key_id.to_string(), v.master)]).expect("ring");
        let value: Value = serde_json::from_str(v.value).expect("json");
        let sealed = ring
            .seal_with_nonce(v.key_id, &value, v.context, v.issued_at, v.nonce)
            .expect("seal");
        assert_eq!(sealed, v.envelope, "vector for {}", v.value);

        let opened = ring
            .open_at(v.envelope, v.context, None, v.issued_at)
            .expect("open");
        assert_eq!(opened.value, value);
        // Same text, not just equal values (numbers keep their spelling).
        assert_eq!(opened.value.to_string(), value.to_string());
        assert_eq!(opened.key_id, v.key_id);
        assert_eq!(opened.issued_at, v.issued_at);
    }
}

#[test]
fn subkey_vector() {
    let ring = Keyring::from_raw_keys("k1", vec![("k1".into(), seq(0))]).expect("ring");
    let sub = ring.derive_subkey("k1", "audit-log").expect("subkey");
    assert_eq!(
        hex(sub.as_ref()),
        "7930c4148cf7f437badd82a8f5f2822ad75d288a266ea1b5c5b9fdc30786ec18"
    );
    assert!(ring.derive_subkey("nope", "audit-log").is_none());
    let other = ring.derive_subkey("k1", "something else").expect("subkey");
    assert_ne!(sub.as_ref(), other.as_ref());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn fingerprint_vectors() {
    // docs/envelope.md, computed independently (Python hmac/hashlib).
    let ring = Keyring::from_raw_keys(
        "k1",
        vec![("k1".into(), seq(0)), ("k2-2024_b".into(), rev())],
    )
    .expect("ring");
    assert_eq!(
        ring.fingerprint("k1").as_deref(),
        Some("91cdeebcd9e68d88f6193ebb9075f065")
    );
    assert_eq!(
        ring.fingerprint("k2-2024_b").as_deref(),
        Some("e119ad090596c4e200dc860f4be073db")
    );
    assert!(ring.fingerprint("nope").is_none());
    // The id is not part of it: the same material under another name has
    // the same fingerprint, which is what lets replicas compare rings.
    let renamed = Keyring::from_raw_keys("x", vec![("x".into(), seq(0))]).expect("ring");
    assert_eq!(renamed.fingerprint("x"), ring.fingerprint("k1"));
    // It is not any key or sub-key the ring uses.
    let fp = ring.fingerprint("k1").unwrap();
    let audit = hex(ring
        .derive_subkey("k1", "fieldseal audit log v1")
        .unwrap()
        .as_ref());
    assert!(!audit.starts_with(&fp));
    assert!(!"d99be21e3a861f7e7720b22b532d199a8be70c3d6e5906ddf6d72f761a91c349".starts_with(&fp));
}

// ---- fs2: data keys wrapped by the ring, subject references, envelopes ----

use fieldseal::crypto::{
    data_key_aad, DataKey, KeyEncryptionKey, RefScope, RingKek, SubjectKey, SubjectKeys,
    SubjectRefKey,
};

/// R = bytes 96..127, the reference secret of docs/envelope.md.
fn ref_key() -> SubjectRefKey {
    SubjectRefKey::new(&DataKey::from_bytes(seq(96))).unwrap()
}

#[test]
fn subject_reference_vectors() {
    let k = ref_key();
    let r = |scope, tenant, subject| k.reference(scope, tenant, subject).unwrap();
    assert_eq!(
        r(RefScope::Subject, Some("acme"), "alice"),
        "R_D7ROWZiEw_P5HytO8CZQ"
    );
    assert_eq!(
        r(RefScope::Subject, None, "alice"),
        "OVt_jObF8vjTZxaMB34g0g"
    );
    assert_eq!(
        r(RefScope::Subject, Some(""), "alice"),
        "OVt_jObF8vjTZxaMB34g0g"
    );
    assert_eq!(
        r(RefScope::Tenant, Some("acme"), "ignored"),
        "6w9ZYFIjxRN7hZnaeaNaiw"
    );
    // Length prefixes: ("ab","c") and ("a","bc") differ.
    assert_ne!(
        r(RefScope::Subject, Some("ab"), "c"),
        r(RefScope::Subject, Some("a"), "bc")
    );
}

#[test]
fn ring_wrap_vector() {
    let ring = Keyring::from_raw_keys("k1", vec![("k1".into(), seq(0))]).unwrap();
    let kek = RingKek::from_ring(&ring, "k1").unwrap();
    let aad = data_key_aad("R_D7ROWZiEw_P5HytO8CZQ", 1);
    let w = kek
        .wrap_with_nonce(&DataKey::from_bytes(seq(32)), &aad, nonce(0))
        .unwrap();
    let expected = "01000102030405060708090a0b809b099b76f53b35d4643deb15b32b760098a10036ac22f6fb085ee13c946e098be422b5bd5c2866a76ec88c6b8e1679";
    assert_eq!(hex(&w), expected);
    let back = kek.unwrap(&w, &aad).unwrap();
    assert_eq!(back.expose(), &seq(32));
    assert!(kek
        .unwrap(&w, &data_key_aad("R_D7ROWZiEw_P5HytO8CZQ", 2))
        .is_err());
    assert_eq!(kek.kind(), "raw");
}

struct V2 {
    dek: [u8; 32],
    reference: &'static str,
    version: u32,
    context: &'static str,
    value: &'static str,
    issued_at: u64,
    nonce: [u8; 12],
    envelope: &'static str,
}

fn v2_vectors() -> Vec<V2> {
    vec![
        // The deployment data key's reserved reference (a PKCS#11 ring key
        // active): the same fs2 form.
        V2 {
            dek: seq(32),
            reference: "_fieldseal_dk",
            version: 1,
            context: "ssn",
            value: r#""123-45-6789""#,
            issued_at: 1_700_000_000,
            nonce: nonce(0),
            envelope: "fs2:_fieldseal_dk:1:cwAAAABlU_EAAAECAwQFBgcICQoLOJ5sTqUIeK1ZbDXiumGZfF9hPVr-siYiiDte",
        },
        V2 {
            dek: seq(32),
            reference: "R_D7ROWZiEw_P5HytO8CZQ",
            version: 1,
            context: "ssn",
            value: r#""123-45-6789""#,
            issued_at: 1_700_000_000,
            nonce: nonce(0),
            envelope: "fs2:R_D7ROWZiEw_P5HytO8CZQ:1:cwAAAABlU_EAAAECAwQFBgcICQoLOJ5sTqUIeK1ZbDWH6nY2fggMvLQ4Rbz9MC4t",
        },
        V2 {
            dek: seq(32),
            reference: "R_D7ROWZiEw_P5HytO8CZQ",
            version: 1,
            context: "amount",
            value: "12345678901234567890.50",
            issued_at: 1_700_000_000,
            nonce: nonce(12),
            envelope: "fs2:R_D7ROWZiEw_P5HytO8CZQ:1:bgAAAABlU_EADA0ODxAREhMUFRYXQ-cPgNpkkO-GkbaPa3HsqpnaF2Uy-8A-PCK9MzJaV4mq2g9OjvCk",
        },
        V2 {
            dek: seq(64),
            reference: "OVt_jObF8vjTZxaMB34g0g",
            version: u32::MAX,
            context: "",
            value: "null",
            issued_at: 0,
            nonce: [0; 12],
            envelope: "fs2:OVt_jObF8vjTZxaMB34g0g:4294967295:egAAAAAAAAAAAAAAAAAAAAAAAAAAZnosqE7NYsgMCsIoH9paMYgNAfY",
        },
        V2 {
            dek: seq(64),
            reference: "6w9ZYFIjxRN7hZnaeaNaiw",
            version: 7,
            context: "$",
            value: r#"{"b":true,"a":[1,null,"xé"]}"#,
            issued_at: u64::MAX,
            nonce: [0xff; 12],
            envelope: "fs2:6w9ZYFIjxRN7hZnaeaNaiw:7:b___________________________9HAA_mWbKO1ZqEjUIUk8IgoT2tS-fjVQhyGc4t7YmW-X0IIOvkhbbxjCRLz0",
        },
    ]
}

#[test]
fn fs2_vectors_seal_and_open() {
    let ring = Keyring::from_raw_keys("k1", vec![("k1".into(), seq(0))]).unwrap();
    for v in v2_vectors() {
        let key = std::sync::Arc::new(
            SubjectKey::new(v.reference, v.version, &DataKey::from_bytes(v.dek)).unwrap(),
        );
        let value: Value = serde_json::from_str(v.value).unwrap();
        let sealed = key
            .sealing_key()
            .seal_with_nonce(&value, v.context, v.issued_at, v.nonce)
            .unwrap();
        assert_eq!(sealed, v.envelope, "{}", v.context);

        let mut keys = SubjectKeys::default();
        keys.push(std::sync::Arc::clone(&key));
        let opened = ring
            .open_with(&keys, v.envelope, v.context, None, v.issued_at)
            .unwrap();
        assert_eq!(opened.value, value);
        assert_eq!(opened.subject.as_deref(), Some(v.reference));
        assert_eq!(opened.key_id, format!("{}:{}", v.reference, v.version));

        // Without the key: another subject's data. Erased: so reported.
        let none = ring.open_with(SubjectKeys::none(), v.envelope, v.context, None, 0);
        assert_eq!(
            none.err(),
            Some(fieldseal::crypto::DecryptError::ForeignSubject)
        );
        let mut erased = SubjectKeys::default();
        erased.mark_erased(v.reference);
        let e = ring.open_with(&erased, v.envelope, v.context, None, 0);
        assert_eq!(e.err(), Some(fieldseal::crypto::DecryptError::Erased));
        // Another context, or the same bytes under another reference or version.
        assert!(ring.open_with(&keys, v.envelope, "other", None, 0).is_err());
        let other_version = SubjectKey::new(
            v.reference,
            v.version.wrapping_add(1).max(1),
            &DataKey::from_bytes(v.dek),
        )
        .unwrap();
        let moved = v.envelope.replacen(
            &format!(":{}:", v.version),
            &format!(":{}:", other_version.version()),
            1,
        );
        let mut ov = SubjectKeys::default();
        ov.push(std::sync::Arc::new(other_version));
        assert_eq!(
            ring.open_with(&ov, &moved, v.context, None, 0).err(),
            Some(fieldseal::crypto::DecryptError::AuthFailed)
        );
    }
}

#[test]
fn fs1_still_opens_beside_fs2() {
    let ring = Keyring::from_raw_keys("k1", vec![("k1".into(), seq(0))]).unwrap();
    let v = &vectors()[0];
    let mut keys = SubjectKeys::default();
    keys.push(std::sync::Arc::new(
        SubjectKey::new("R_D7ROWZiEw_P5HytO8CZQ", 1, &DataKey::from_bytes(seq(32))).unwrap(),
    ));
    let opened = ring
        .open_with(&keys, v.envelope, v.context, None, 0)
        .unwrap();
    assert_eq!(opened.value, serde_json::json!("123-45-6789"));
    assert_eq!(opened.subject, None);
}
