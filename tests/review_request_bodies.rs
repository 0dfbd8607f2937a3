//! Review of issues 8 and 9 (request bodies): shapes and spellings by which
//! a configured field still reaches the backend in plaintext through an
//! encrypting route, and offline tools that lose envelopes. Each test is a regression test for one finding of
//! the review and is ignored until its fix lands; run them with
//! `cargo test --test review_request_bodies -- --ignored`.
//!
//! Every assertion is on what the backend read off the wire: a secret that
//! shows up there in plaintext is the bug, whatever the proxy answered. A
//! fix may refuse the request (nothing forwarded) or seal the value; both
//! pass.

mod common;

use common::*;
use common::{review_setup as setup, ReviewSetup as Setup, REVIEW_USERS as USERS};
use http::StatusCode;

/// Sends `body` with `content_type` over HTTP/1.1 and HTTP/2; whatever the
/// proxy answers, it is never a 500.
async fn post_both(s: &Setup, method: &str, path: &str, content_type: &str, body: &str) {
    for (c, v) in s.proxy.clients() {
        let m = http::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = bounded(
            "request",
            c.request(m, s.proxy.url(path))
                .header("content-type", content_type)
                .body(body.to_string())
                .send(),
        )
        .await
        .expect("answer");
        assert_eq!(resp.version(), v);
        let status = resp.status();
        let text = bounded("body", resp.text()).await.unwrap_or_default();
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {path} {body}: {text}"
        );
    }
}

fn assert_never_plain(s: &Setup, secret: &str, what: &str) {
    assert!(
        !s.backend.raw_contains(secret.as_bytes()),
        "{what}: the backend read {secret:?} in plaintext:\n{}",
        s.backend
            .raw_bytes()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
}

// ---------------------------------------------------------------------------
// Finding 1: JSON Patch names the protected field in data
// ---------------------------------------------------------------------------

/// `application/json-patch+json` (RFC 6902) passes the JSON media type
/// check, but the field a patch writes is named by a JSON Pointer in a
/// string (`"path": "/ssn"`), and its value sits under `value`, which no
/// rule and no look-alike names. ASP.NET Core's `JsonPatchDocument<T>`,
/// Spring with json-patch and every RFC 6902 library apply it to the model:
/// the SSN is stored in plaintext. `copy`/`move` write a protected field
/// from an unprotected one without the value ever standing at a protected
/// name.
#[tokio::test]
async fn json_patch_cannot_write_a_protected_field_in_plaintext() {
    let s = setup(USERS, "").await;
    for (i, patch) in [
        r#"[{"op":"replace","path":"/ssn","value":"SECRET"}]"#,
        r#"[{"op":"add","path":"/card/number","value":"SECRET"}]"#,
        r#"[{"op":"add","path":"/contacts/0/phone","value":"SECRET"}]"#,
        r#"[{"op":"add","path":"/SSN","value":"SECRET"}]"#,
        r#"[{"op":"add","path":"/card","value":{"number":"SECRET"}}]"#,
        r#"[{"op":"test","path":"/ssn","value":"SECRET"}]"#,
        // Pointer escapes, dotted tokens, binders' case folds, a missing
        // leading slash, the whole document, an array append.
        r#"[{"op":"add","path":"/card~1number","value":"SECRET"}]"#,
        r#"[{"op":"add","path":"/card.number","value":"SECRET"}]"#,
        r#"[{"Op":"add","Path":"/Ssn","Value":"SECRET"}]"#,
        r#"[{"op":"add","path":"ssn","value":"SECRET"}]"#,
        r#"[{"op":"replace","path":"","value":{"user":{"ssn":"SECRET"}}}]"#,
        r#"[{"op":"add","path":"/contacts/-","value":{"phone":"SECRET"}}]"#,
        // A repeated member: libraries read the first or the last.
        r#"[{"op":"add","path":"/nickname","path":"/ssn","value":"SECRET"}]"#,
    ]
    .iter()
    .enumerate()
    {
        let secret = format!("078-05-{i:04}");
        let body = patch.replace("SECRET", &secret);
        // Declared as JSON Patch, and as plain JSON (fast-json-patch and
        // friends apply whatever body they are handed).
        for content_type in ["application/json-patch+json", "application/json"] {
            post_both(&s, "PATCH", "/api/users/7", content_type, &body).await;
        }
        assert_never_plain(&s, &secret, &body);
    }
    // Json.NET / System.Text.Json reference handling binds `card` to the
    // object `$id` 1, whose `number` is the card number.
    for (i, body) in [
        r#"{"other":{"$id":"1","number":"SECRET"},"card":{"$ref":"1"}}"#,
        r#"{"other":{"$id":"1","number":"SECRET"},"card":{"$REF":"1"}}"#,
        r#"{"x":{"$id":"2","$values":[{"phone":"SECRET"}]},"contacts":{"$ref":"2"}}"#,
        r#"{"contacts":{"$id":"2","$values":[{"phone":"SECRET"}]}}"#,
    ]
    .iter()
    .enumerate()
    {
        let secret = format!("4111-0000-{i:04}");
        let body = body.replace("SECRET", &secret);
        post_both(&s, "POST", "/api/users", "application/json", &body).await;
        assert_never_plain(&s, &secret, &body);
    }
    // A plaintext value moved or copied into a protected field: nothing
    // of it may be forwarded, since the proxy cannot seal it there.
    let before = s.backend.count();
    for patch in [
        r#"[{"op":"add","path":"/nickname","value":"078-05-1120"},{"op":"move","from":"/nickname","path":"/ssn"}]"#,
        r#"[{"op":"copy","from":"/nickname","path":"/card/number"}]"#,
    ] {
        post_both(
            &s,
            "PATCH",
            "/api/users/7",
            "application/json-patch+json",
            patch,
        )
        .await;
    }
    assert_eq!(
        s.backend.count(),
        before,
        "a patch that moves or copies data into a protected field was forwarded"
    );
}

// ---------------------------------------------------------------------------
// Finding 6: member names below a look-alike are data too
// ---------------------------------------------------------------------------

/// The look-alike check counts only scalars as data, so an object of names
/// at a look-alike's place passes (refuse mode) or stays unsealed (seal
/// mode): `{"user": {"ssn": {"078-05-1120": null}}}`. At the rule's own
/// place the same object is sealed whole, and docs/fields.md says member
/// names can be data (`{"by_ssn": {"078-05-1120": …}}`). A backend that
/// stores the wrapper as it is (a document store, a JSON column, Rails'
/// `wrap_parameters` into a serialized attribute) stores the SSN.
#[tokio::test]
async fn member_names_below_a_look_alike_are_not_forwarded_in_plaintext() {
    let routes = r#"  - name: refusing
    match: { path_prefix: /api/users }
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number"]
  - name: sealing
    match: { path_prefix: /api/people }
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number"]
    look_alikes: seal
"#;
    let s = setup(routes, "").await;
    for path in ["/api/users", "/api/people"] {
        for (i, body) in [
            r#"{"user": {"ssn": {"SECRET": null}}}"#,
            r#"{"user": {"ssn": {"SECRET": {}}}}"#,
            r#"{"user": {"ssn": {"SECRET": []}}}"#,
            r#"[{"ssn": {"SECRET": [null]}}]"#,
            r#"{"Card.Number": {"SECRET": null}}"#,
            r#"{"user": {"ssn": {"x": {"SECRET": null}}}}"#,
        ]
        .iter()
        .enumerate()
        {
            let secret = format!("078-05-{i:02}{}", path.len());
            let body = body.replace("SECRET", &secret);
            post_both(&s, "POST", path, "application/json", &body).await;
            assert_never_plain(&s, &secret, &format!("{path} {body}"));
        }
    }
}

// ---------------------------------------------------------------------------
// Finding 7: word separators in member names
// ---------------------------------------------------------------------------

/// Name folding covers case but not word separators, which backends fold
/// too: pydantic with `alias_generator=to_camel, populate_by_name=True`
/// (FastAPI's common setup) binds both `card_number` and `cardNumber`;
/// Rails APIs that `deep_transform_keys(&:underscore)` (or olive_branch)
/// bind `cardNumber`, `CardNumber` and `card-number` to `card_number`;
/// Jackson's `@JsonAlias` and .NET naming policies do the same per field.
#[tokio::test]
async fn word_separator_spellings_of_a_rule_name_are_sealed_or_refused() {
    let routes = r#"  - name: cards
    match: { path_prefix: /api/cards }
    upstream: legacy
    encrypt: ["$.card_number", "$.billing.postalCode"]
"#;
    let s = setup(routes, "").await;
    for (i, body) in [
        r#"{"cardNumber": "SECRET"}"#,
        r#"{"CardNumber": "SECRET"}"#,
        r#"{"card-number": "SECRET"}"#,
        r#"{"cardnumber": "SECRET"}"#,
        r#"{"user": {"cardNumber": "SECRET"}}"#,
        r#"{"billing": {"postal_code": "SECRET"}}"#,
        r#"{"billing": {"postal-code": "SECRET"}}"#,
        r#"{"Billing": {"PostalCode": "SECRET"}}"#,
        r#"{"CARD_NUMBER": "SECRET"}"#,
        r#"{"card__number": "SECRET"}"#,
        r#"{"billing.postal-code": "SECRET"}"#,
        r#"{"-card-number-": "SECRET"}"#,
    ]
    .iter()
    .enumerate()
    {
        let secret = format!("4111-1111-{i:04}");
        let body = body.replace("SECRET", &secret);
        post_both(&s, "POST", "/api/cards", "application/json", &body).await;
        assert_never_plain(&s, &secret, &body);
    }
}

// ---------------------------------------------------------------------------
// Finding 8: lodash-style paths with escapes
// ---------------------------------------------------------------------------

/// `fields::name_parts` removes the quotes of a bracketed part but keeps
/// its backslashes, while lodash's `_.set`/`_.toPath` (which the README
/// names as a motivation) unescapes them: `card["n\umber"]` and
/// `card['nu\mber']` are `["card", "number"]` to lodash
/// (`node -e 'console.log(require("lodash").toPath("card[\"n\\\\umber\"]"))'`).
#[tokio::test]
async fn lodash_escaped_bracket_paths_are_look_alikes() {
    let s = setup(USERS, "").await;
    for (i, body) in [
        r#"{"card[\"n\\umber\"]": "SECRET"}"#,
        r#"{"card['nu\\mber']": "SECRET"}"#,
        r#"{"user[\"\\ssn\"]": "SECRET"}"#,
        r#"{"contacts[0][\"pho\\ne\"]": "SECRET"}"#,
        // JSON-Pointer-like names, quoted parts holding separators,
        // dot-prop's escaped dot, stray quotes.
        r#"{"card/number": "SECRET"}"#,
        r#"{"/contacts/0/phone": "SECRET"}"#,
        r#"{"user[\"card\"][\"number\"]": "SECRET"}"#,
        r#"{"card\\.number": "SECRET"}"#,
        r#"{"'ssn'": "SECRET"}"#,
        r#"{"card[\"number": "SECRET"}"#,
    ]
    .iter()
    .enumerate()
    {
        let secret = format!("4111-2222-{i:04}");
        let body = body.replace("SECRET", &secret);
        serde_json::from_str::<serde_json::Value>(&body).expect("test body is JSON");
        post_both(&s, "POST", "/api/users", "application/json", &body).await;
        assert_never_plain(&s, &secret, &body);
    }
}

// ---------------------------------------------------------------------------
// Finding 16: offline tools drop repeated members
// ---------------------------------------------------------------------------

/// (Moved here from tests/review_edges.rs; the one streaming engine of the
/// refactor already keeps every occurrence, so this passes as it is.)
/// The proxy seals and forwards every occurrence of a repeated member
/// (README: "every occurrence of a duplicated key is sealed"), so stored
/// JSON text can hold `{"ssn": E1, "ssn": E2}`. The offline tools read
/// documents into a map that keeps one value per name: `keys --scan`
/// prints `k1: 0` and exits 0 for a document holding a k1 envelope (the
/// very count issue 9 says must never be printed), and `rewrap` and
/// `decrypt` silently write the document without it.
#[test]
fn offline_tools_count_and_keep_every_envelope_of_a_repeated_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    fieldseal::crypto::write_key_file(&dir.path().join("k1.key")).expect("key file");
    let config = dir.path().join("fieldseal.yaml");
    std::fs::write(
        &config,
        r#"listen: { address: "127.0.0.1:8443", tls: { cert: server.crt, key: server.key } }
upstreams:
  legacy: { url: "http://127.0.0.1:8080" }
keys:
  active: k1
  ring:
    - { id: k1, file: k1.key }
routes:
  - name: users
    match: { path_prefix: /api/users }
    upstream: legacy
    encrypt: ["$.ssn"]
    decrypt: ["$.ssn"]
"#,
    )
    .expect("config");
    let config = config.to_str().expect("utf-8 path");
    let sealed = run_bin(
        &["encrypt", "--config", config, "--route", "users"],
        br#"{"ssn":"078-05-1120"}"#,
    );
    assert!(sealed.status.success(), "{sealed:?}");
    let doc: serde_json::Value = serde_json::from_slice(&sealed.stdout).expect("json");
    let envelope = doc["ssn"].as_str().expect("envelope").to_string();
    assert!(envelope.starts_with("fs1:k1:"));

    // An envelope, then a later repetition of the member.
    let dump = format!("{{\"ssn\":\"{envelope}\",\"ssn\":\"plain\"}}\n");
    let scan = run_bin(&["keys", "--config", config, "--scan"], dump.as_bytes());
    let out = String::from_utf8_lossy(&scan.stdout);
    assert!(
        scan.status.code() == Some(1) || out.contains("k1: 1"),
        "keys --scan established a count it could not: exit {:?}\n{out}",
        scan.status.code()
    );
    let twice = format!("{{\"ssn\":\"{envelope}\",\"ssn\":\"{envelope}\"}}\n");
    let scan = run_bin(&["keys", "--config", config, "--scan"], twice.as_bytes());
    let out = String::from_utf8_lossy(&scan.stdout);
    assert!(
        scan.status.code() == Some(1) || out.contains("k1: 2"),
        "two envelopes counted as: exit {:?}\n{out}",
        scan.status.code()
    );
    for verb in [
        &["rewrap", "--config", config][..],
        &["decrypt", "--config", config, "--route", "users"][..],
    ] {
        let run = run_bin(verb, dump.as_bytes());
        let out = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.code() == Some(1) || out.matches("\"ssn\"").count() == 2,
            "{verb:?} dropped a member without saying so: exit {:?}, wrote {out}",
            run.status.code()
        );
    }
}
