//! Everything that parses what a client or a backend controls, fed
//! arbitrary bytes and mutations: `fs2` envelopes (from the backend's
//! answers), bearer tokens and JWKS documents. Never a panic, only typed
//! errors; and no single-character change of a genuine `fs2` envelope
//! ever opens.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::jwt::*;
use fieldseal::crypto::{DataKey, Keyring, SubjectKey, SubjectKeys};
use fieldseal::identity::{Identity, IdentitySpec, JwtProviderSpec, KeySourceSpec};
use proptest::prelude::*;
use serde_json::json;

const REFERENCE: &str = "R_D7ROWZiEw_P5HytO8CZQ";
const CONTEXT: &str = "ssn";

fn ring() -> Keyring {
    Keyring::from_raw_keys("k1", vec![("k1".into(), [7; 32])]).unwrap()
}

fn subject_keys() -> SubjectKeys {
    let mut sk = SubjectKeys::default();
    sk.push(Arc::new(
        SubjectKey::new(REFERENCE, 3, &DataKey::from_bytes([9; 32])).unwrap(),
    ));
    sk
}

fn genuine(value: &serde_json::Value) -> String {
    let sk = subject_keys();
    sk.first()
        .unwrap()
        .sealing_key()
        .seal_at(value, CONTEXT, 1_700_000_000)
        .unwrap()
}

/// Characters an envelope is written in, and a few it never holds.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_:=+/. ";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_strings_never_open_and_never_panic(
        tail in "[A-Za-z0-9_:=+/-]{0,200}",
        prefix in prop::sample::select(vec!["fs2:", "fs1:", "fs2:R_D7ROWZiEw_P5HytO8CZQ:3:", ""]),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let (ring, sk) = (ring(), subject_keys());
        let s = format!("{prefix}{tail}");
        prop_assert!(ring.open_with(&sk, &s, CONTEXT, None, 1_700_000_000).is_err());
        let lossy = format!("fs2:{}", String::from_utf8_lossy(&bytes));
        prop_assert!(ring.open_with(&sk, &lossy, CONTEXT, None, 1_700_000_000).is_err());
        let _ = fieldseal::crypto::envelope_subject(&s);
        let _ = fieldseal::crypto::envelope_subject(&lossy);
    }

    #[test]
    fn no_change_to_one_character_of_a_genuine_fs2_envelope_opens(
        value in prop_oneof![
            any::<i64>().prop_map(|n| json!(n)),
            "[ -~]{0,40}".prop_map(|s| json!(s)),
            any::<bool>().prop_map(|b| json!({"b": b})),
        ],
        at in any::<prop::sample::Index>(),
        with in prop::sample::select(ALPHABET.to_vec()),
    ) {
        let (ring, sk) = (ring(), subject_keys());
        let env = genuine(&value);
        let opened = ring.open_with(&sk, &env, CONTEXT, None, 1_700_000_000).unwrap();
        prop_assert_eq!(&opened.value, &value);
        let i = at.index(env.len());
        prop_assume!(env.as_bytes()[i] != with);
        let mut b = env.clone().into_bytes();
        b[i] = with;
        let tampered = String::from_utf8(b).unwrap();
        prop_assert!(
            ring.open_with(&sk, &tampered, CONTEXT, None, 1_700_000_000).is_err(),
            "{} opened", tampered
        );
        // Truncated, extended, or under another field's context: no.
        prop_assert!(ring.open_with(&sk, &env[..i], CONTEXT, None, 1_700_000_000).is_err());
        let longer = format!("{env}{}", with as char);
        prop_assert!(ring.open_with(&sk, &longer, CONTEXT, None, 1_700_000_000).is_err());
        prop_assert!(ring.open_with(&sk, &env, "card", None, 1_700_000_000).is_err());
    }
}

fn identity_with_jwks(dir: &std::path::Path, jwks: &str) -> Result<Identity, String> {
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks).unwrap();
    Identity::load(&IdentitySpec {
        clock_skew: Duration::from_secs(60),
        role_claims: vec!["roles".into()],
        header: None,
        mtls: None,
        providers: vec![JwtProviderSpec {
            name: "p".into(),
            issuer: ISSUER.into(),
            audiences: vec![AUDIENCE.into()],
            algorithms: vec![jsonwebtoken::Algorithm::ES256],
            keys: KeySourceSpec::JwksFile(path),
            subject_claim: "sub".into(),
            tenant_claim: None,
            max_lifetime: None,
            typ: None,
            required_claims: vec![],
            forward_claims: vec![],
            jwks_min_refresh: Duration::from_secs(60),
        }],
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_and_mutated_tokens_are_typed_errors(
        junk in "[A-Za-z0-9_.=-]{0,300}",
        at in any::<prop::sample::Index>(),
        with in prop::sample::select(b"ABCxyz019-_.=".to_vec()),
        roles in prop_oneof![
            Just(json!("support")),
            Just(json!(["support"])),
            Just(json!([["support"]])),
            Just(json!({"a": 1})),
            Just(json!(null)),
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let key = ec_key("k");
        let id = identity_with_jwks(dir.path(), &json!({"keys": [key.jwk]}).to_string()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        prop_assert!(rt.block_on(id.verify(&junk)).is_err());
        let mut c = claims("alice");
        c["roles"] = roles;
        let token = sign(&key, &c);
        prop_assert!(rt.block_on(id.verify(&token)).is_ok());
        let i = at.index(token.len());
        prop_assume!(token.as_bytes()[i] != with);
        let mut b = token.clone().into_bytes();
        b[i] = with;
        let tampered = String::from_utf8(b).unwrap();
        // Only the genuine token's own subject could ever come back.
        if let Ok(p) = rt.block_on(id.verify(&tampered)) {
            prop_assert_eq!(p.subject, "alice");
        }
    }

    #[test]
    fn arbitrary_and_mutated_jwks_documents_load_or_fail_without_panic(
        junk in "[ -~]{0,300}",
        at in any::<prop::sample::Index>(),
        with in prop::sample::select(b"{}[]\",:0aZ-_ ".to_vec()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let _ = identity_with_jwks(dir.path(), &junk);
        let genuine = json!({"keys": [ec_key("a").jwk, ed_key("b").jwk]}).to_string();
        prop_assert!(identity_with_jwks(dir.path(), &genuine).is_ok());
        let i = at.index(genuine.len());
        let mut b = genuine.into_bytes();
        b[i] = with;
        let _ = identity_with_jwks(dir.path(), &String::from_utf8_lossy(&b));
    }
}
