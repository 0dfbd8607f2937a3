//! The positive model of encrypting routes, through the real proxy (real
//! TLS, HTTP/1.1 and HTTP/2 clients, a backend that records every byte it
//! reads): look-alikes of protected fields in the shapes and spellings
//! backends bind (wrappers, root arrays, dotted and bracketed names, single
//! values for arrays and back, case folds, NULs) are refused with nothing
//! forwarded, or sealed on routes that say so; the request schema; and the
//! limits that keep every selected value sealable (no 500 for client input).

mod common;

use std::path::Path;

use common::*;
use fieldseal::crypto::Keyring;
use fieldseal::Config;
use http::{StatusCode, Version};
use serde_json::Value;

fn ring(id: &str, file: &Path) -> Keyring {
    file_ring(id, &[(id, file)])
}

struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn post(c: &reqwest::Client, v: Version, url: &str, body: &str) -> Answer {
    let resp = bounded(
        "request",
        c.post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send(),
    )
    .await
    .expect("request sent");
    assert_eq!(resp.version(), v);
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = bounded("body", resp.bytes()).await.expect("body").to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

async fn get(c: &reqwest::Client, url: &str) -> Answer {
    let resp = bounded("request", c.get(url).send())
        .await
        .expect("request sent");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = bounded("body", resp.bytes()).await.expect("body").to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

/// A JSON string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

const RULES: &str = r#"["$.ssn", "$.card.number", "$.contacts[*].phone", "$.pin"]"#;

/// Bodies a backend binds to a protected field although no rule selects
/// them, each holding `secret` (as data of some JSON type) once: the class
/// of the issue, generated.
fn look_alikes(secret: &str) -> Vec<String> {
    let s = js(secret);
    let mut out = Vec::new();
    let ssn_spellings = [
        "ssn",
        "SSN",
        "Ssn",
        "\u{17F}sn",
        "s\u{17F}n",
        "ssn\u{0}",
        "ssn\u{0}tail",
    ];
    // Resource wrappers (Rails wrap_parameters, JSON:API), bulk arrays,
    // any nesting.
    let wrappers: [fn(&str) -> String; 7] = [
        |x| format!(r#"{{"user": {x}}}"#),
        |x| format!(r#"{{"data": {{"type": "users", "attributes": {x}}}}}"#),
        |x| format!("[{x}]"),
        |x| format!("[[{x}], {{}}]"),
        |x| format!(r#"{{"users": [{{"name": "a"}}, {x}]}}"#),
        |x| format!(r#"{{"a": {{"b": {{"c": {x}}}}}}}"#),
        |x| format!(r#"{{"batch": {{"items": [{x}]}}}}"#),
    ];
    for sp in ssn_spellings {
        for w in &wrappers {
            out.push(w(&format!("{{{}: {s}}}", js(sp))));
        }
    }
    for x in [
        format!(r#"{{"card": {{"number": {s}}}}}"#),
        format!(r#"{{"CARD": {{"Number\u0000": {s}}}}}"#),
        format!(r#"{{"contacts": [{{"phone": {s}}}]}}"#),
        format!(r#"{{"p\u0131n": {s}}}"#),
        format!(r#"{{"P\u0130N": {s}}}"#),
    ] {
        for w in &wrappers[..3] {
            out.push(w(&x));
        }
    }
    // Dotted and bracketed names (MongoDB $set, Mongoose, lodash, Spring
    // and ASP.NET binders), and JSON escapes in names.
    for name in [
        "card.number",
        "Card.Number",
        "card[number]",
        "card['number']",
        "card[\"number\"]",
        "contacts.0.phone",
        "contacts[0].phone",
        "contacts.12.PHONE",
        "user.ssn",
        "data.attributes.ssn",
        "users.0.ssn",
        ".ssn",
        "ssn.",
        "pin.",
    ] {
        out.push(format!("{{{}: {s}}}", js(name)));
    }
    out.push(format!(r#"{{"us\u0065r": {{"\u0073sn": {s}}}}}"#));
    // Jackson: a single value where the rule has an array, an array where
    // it has an object.
    out.push(format!(r#"{{"contacts": {{"phone": {s}}}}}"#));
    out.push(format!(r#"{{"contacts": {{"Phone": {s}}}}}"#));
    out.push(format!(r#"{{"card": [{{"number": {s}}}]}}"#));
    out.push(format!(r#"{{"card": [[{{"number": {s}}}]]}}"#));
    out.push(format!(
        r#"{{"card": [{{"number": {s}}}, {{"number": {s}}}]}}"#
    ));
    // Other JSON types.
    out.push(format!(r#"{{"user": {{"ssn": {{"full": {s}}}}}}}"#));
    out.push(format!(r#"{{"user": {{"ssn": [{s}]}}}}"#));
    out
}

/// Bodies with no look-alike: forwarded as they are (the secret with them).
fn not_look_alikes(secret: &str) -> Vec<String> {
    let s = js(secret);
    vec![
        format!(r#"{{"items": [{{"number": {s}}}]}}"#),
        format!(
            r#"{{"user": {{"name": {s}, "ssn": null, "pin": {{}}, "card": {{"number": []}}}}}}"#
        ),
        format!(r#"{{"ssn_last4": {s}, "cardnumber": {s}, "number": {s}, "phone": {s}}}"#),
        format!(r#"{{"card": {{"exp": {s}}}, "contacts": [{{"kind": {s}}}]}}"#),
        format!(r#"{{"contacts": {{"a": {{"b": {{"phone": {s}}}}}}}}}"#),
    ]
}

struct Setup {
    backend: ScriptedBackend,
    proxy: TestProxy,
    ring: Keyring,
    _keys: tempfile::TempDir,
}

async fn setup(routes: &str) -> Setup {
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path(), "k1");
    let backend = ScriptedBackend::start().await;
    let yaml = format!(
        r#"upstreams:
  legacy: {{ url: "{url}", connect_timeout: 2s, timeout: 20s }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
routes:
{routes}"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    Setup {
        ring: ring("k1", &k1),
        backend,
        proxy,
        _keys: keys,
    }
}

fn assert_refused(a: &Answer, status: StatusCode, secret: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.text());
    assert_error_json(status, a.content_type.as_deref(), &a.body);
    let t = a.text();
    assert!(!t.contains(secret), "the answer echoes the value: {t}");
    for name in ["ssn", "card", "number", "phone", "user", "\\u"] {
        assert!(
            !t.to_lowercase().contains(name),
            "the answer echoes a name: {t}"
        );
    }
}

#[tokio::test]
async fn look_alikes_of_protected_fields_are_refused_and_nothing_is_forwarded() {
    let s = setup(&format!(
        "  - name: users\n    match: {{ path_prefix: /api/users }}\n    upstream: legacy\n    encrypt: {RULES}\n"
    ))
    .await;
    let url = s.proxy.url("/api/users");
    let mut n = 0;
    for (c, v) in s.proxy.clients() {
        for (i, body) in look_alikes("078-05-1120").iter().enumerate() {
            let secret = format!("LA{i}-{v:?}-078-05-1120");
            let body = body.replace("078-05-1120", &secret);
            let a = post(&c, v, &url, &body).await;
            assert_refused(&a, StatusCode::BAD_REQUEST, &secret, &body);
            assert_eq!(s.backend.count(), n, "{body}: forwarded");
            assert!(!s.backend.raw_contains(secret.as_bytes()), "{body}");
        }
        for body in [
            r#"{"user": {"ssn": 780511201}}"#,
            r#"{"user": {"pin": true}}"#,
            r#"{"card.number": 4111111111111111}"#,
            r#"[{"contacts": {"phone": false}}]"#,
        ] {
            let a = post(&c, v, &url, body).await;
            assert_refused(&a, StatusCode::BAD_REQUEST, "78051120", body);
            assert_eq!(s.backend.count(), n, "{body}: forwarded");
        }
        for body in not_look_alikes("visible-4111") {
            let a = post(&c, v, &url, &body).await;
            assert_eq!(a.status, StatusCode::OK, "{body}: {}", a.text());
            n += 1;
            assert_eq!(s.backend.count(), n);
        }
        // The canonical shape is sealed, not refused.
        let a = post(&c, v, &url, r#"{"ssn": "1-2-3", "card": {"number": "4111-9"}, "contacts": [{"phone": "555"}], "pin": 1234}"#).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        n += 1;
        let rec = s.backend.seen().pop().expect("forwarded");
        let got: Value = serde_json::from_slice(&rec.body).expect("json");
        for p in ["/ssn", "/card/number", "/contacts/0/phone", "/pin"] {
            assert!(
                got.pointer(p)
                    .and_then(Value::as_str)
                    .is_some_and(|e| e.starts_with("fs1:k1:")),
                "{p} sealed: {got}"
            );
        }
    }
    assert!(look_alikes("x").len() > 70, "the class, not one example");
}

#[tokio::test]
async fn the_matcher_seals_every_spelling_a_backend_binds() {
    // Java's equalsIgnoreCase (`ı`, `İ`), Go/.NET simple folding (`ſ`,
    // Kelvin sign), and a NUL where C parsers stop: the rule's own field,
    // sealed in place, never refused as a look-alike nor forwarded plain.
    let s = setup(&format!(
        "  - name: users\n    match: {{ path_prefix: /api/users }}\n    upstream: legacy\n    encrypt: {RULES}\n"
    ))
    .await;
    let url = s.proxy.url("/api/users");
    let spellings: &[(&str, &str)] = &[
        ("/ssn", r#"{"SSN\u0000": VAL}"#),
        ("/ssn", r#"{"\u017f\u017fn": VAL}"#),
        ("/ssn", r#"{"ssn\u0000078-05-1120": VAL}"#),
        ("/ssn", r#"{"\u0053sN": VAL}"#),
        ("/pin", r#"{"p\u0131n": VAL}"#),
        ("/pin", r#"{"P\u0130N": VAL}"#),
        ("/pin", r#"{"PIN": VAL}"#),
        ("/card/number", r#"{"CARD": {"nUMBER": VAL}}"#),
        ("/card/number", r#"{"card\u0000": {"number\u0000x": VAL}}"#),
        ("/contacts/0/phone", r#"{"Contacts": [{"PHONE": VAL}]}"#),
    ];
    for (c, v) in s.proxy.clients() {
        for (i, (at, body)) in spellings.iter().enumerate() {
            let secret = format!("MS{i}-{v:?}");
            let body = body.replace("VAL", &js(&secret));
            let before = s.backend.count();
            let a = post(&c, v, &url, &body).await;
            assert_eq!(a.status, StatusCode::OK, "{body}: {}", a.text());
            assert_eq!(s.backend.count(), before + 1);
            let rec = s.backend.seen().pop().expect("forwarded");
            assert!(
                !s.backend.raw_contains(secret.as_bytes()),
                "{body} forwarded plain"
            );
            // The member is forwarded as spelled, its value sealed.
            let got: Value = serde_json::from_slice(&rec.body).expect("json");
            let sent: Value = serde_json::from_str(&body).expect("json");
            let mut g = &got;
            let mut w = &sent;
            for step in at.split('/').skip(1) {
                match step.parse::<usize>() {
                    Ok(k) => {
                        g = &g[k];
                        w = &w[k];
                    }
                    Err(_) => {
                        let (gk, gv) = g.as_object().and_then(|o| o.iter().next()).expect("member");
                        let (wk, wv) = w.as_object().and_then(|o| o.iter().next()).expect("member");
                        assert_eq!(gk, wk);
                        g = gv;
                        w = wv;
                    }
                }
            }
            assert!(
                g.as_str().is_some_and(|e| e.starts_with("fs1:k1:")),
                "{body}: {got}"
            );
        }
    }
}

#[tokio::test]
async fn a_route_that_seals_look_alikes_stores_them_as_ciphertext_and_reads_them_back() {
    let s = setup(&format!(
        "  - name: users\n    match: {{ path_prefix: /api/users }}\n    upstream: legacy\n    look_alikes: seal\n    encrypt: {RULES}\n    decrypt: [\"$.ssn\", \"$.card.number\", \"$.contacts[*].phone\", \"$.pin\"]\n"
    ))
    .await;
    let url = s.proxy.url("/api/users");
    for (c, v) in s.proxy.clients() {
        for (i, body) in look_alikes("078-05-1120").iter().enumerate() {
            let secret = format!("SL{i}-{v:?}-078-05-1120");
            let body = body.replace("078-05-1120", &secret);
            let before = s.backend.count();
            let a = post(&c, v, &url, &body).await;
            assert_eq!(a.status, StatusCode::OK, "{body}: {}", a.text());
            assert_eq!(s.backend.count(), before + 1);
            assert!(
                !s.backend.raw_contains(secret.as_bytes()),
                "{body} forwarded plain"
            );
        }
    }
    // The backend binds the look-alike to its field and answers it in the
    // canonical shape: it opens there, with the rule's default context.
    let c = s.proxy.h1();
    for (body, pointer, answer) in [
        (
            r#"{"user": {"ssn": "SECRET-1"}}"#,
            "/user/ssn",
            r#"{"ssn": E}"#,
        ),
        (
            r#"{"card.number": "SECRET-2"}"#,
            "/card.number",
            r#"{"card": {"number": E}}"#,
        ),
        (
            r#"{"contacts": {"phone": "SECRET-3"}}"#,
            "/contacts/phone",
            r#"{"contacts": [{"phone": E}]}"#,
        ),
        (r#"[{"pin": 4711}]"#, "/0/pin", r#"{"pin": E}"#),
    ] {
        let a = post(&c, Version::HTTP_11, &url, body).await;
        assert_eq!(a.status, StatusCode::OK, "{body}: {}", a.text());
        let rec = s.backend.seen().pop().expect("forwarded");
        let got: Value = serde_json::from_slice(&rec.body).expect("json");
        let env = got
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{pointer} in {got}"))
            .to_string();
        assert!(env.starts_with("fs1:k1:"), "{got}");
        let sent: Value = serde_json::from_str(body).expect("json");
        let want = sent.pointer(pointer).expect("sent value").clone();
        s.backend
            .set_reply("/api/users/1", Reply::json(answer.replace('E', &js(&env))));
        let r = get(&c, &s.proxy.url("/api/users/1")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let back: Value = serde_json::from_slice(&r.body).expect("json");
        assert!(!r.text().contains("fs1:"), "{}", r.text());
        let found = ["/ssn", "/card/number", "/contacts/0/phone", "/pin"]
            .iter()
            .filter_map(|p| back.pointer(p))
            .next()
            .cloned();
        assert_eq!(found, Some(want), "{body}: read back {back}");
    }
    // A look-alike holding an object is sealed whole, so it reads back whole.
    let a = post(
        &c,
        Version::HTTP_11,
        &url,
        r#"{"user": {"contacts": [{"phone": {"cc": "+44", "n": "SECRET-4"}}]}}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let rec = s.backend.seen().pop().expect("forwarded");
    let got: Value = serde_json::from_slice(&rec.body).expect("json");
    let env = got
        .pointer("/user/contacts/0/phone")
        .and_then(Value::as_str)
        .expect("sealed whole");
    let opened = s.ring.open(env, "phone", None).expect("opens as phone");
    assert_eq!(
        opened.value,
        serde_json::json!({"cc": "+44", "n": "SECRET-4"})
    );
}

#[tokio::test]
async fn a_rule_can_opt_out_of_the_look_alike_check() {
    let s = setup(
        "  - name: users\n    match: { path_prefix: /api/users }\n    upstream: legacy\n    encrypt: [{ path: \"$.ssn\", look_alikes: allow }, \"$.card.number\"]\n",
    )
    .await;
    let url = s.proxy.url("/api/users");
    for (c, v) in s.proxy.clients() {
        let a = post(&c, v, &url, r#"{"user": {"ssn": "allowed-plain"}}"#).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert!(s.backend.raw_contains(b"allowed-plain"));
        let before = s.backend.count();
        let a = post(
            &c,
            v,
            &url,
            r#"{"user": {"card": {"number": "still-refused"}}}"#,
        )
        .await;
        assert_refused(&a, StatusCode::BAD_REQUEST, "still-refused", "checked rule");
        assert_eq!(s.backend.count(), before);
        // The rule itself still seals its own field.
        let a = post(&c, v, &url, r#"{"SSN": "own-field"}"#).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert!(!s.backend.raw_contains(b"own-field"));
    }
}

#[test]
fn look_alike_settings_are_validated_at_load() {
    let base = "listen: { address: \"127.0.0.1:0\", tls: { cert: c.pem, key: k.pem } }\nupstreams: { b: { url: \"http://127.0.0.1:1\" } }\nkeys: { active: k1, ring: [ { id: k1, file: k1.key } ] }\nroutes:\n  - name: users\n    match: { path_prefix: /u }\n    upstream: b\n";
    for (extra, key, words) in [
        ("    encrypt: [\"$.ssn\"]\n    look_alikes: ignore\n", "routes[0] (users).look_alikes", "refuse or seal"),
        ("    encrypt: [{ path: \"$.ssn\", look_alikes: seal }]\n", "routes[0] (users).encrypt[0].look_alikes", "allow"),
        ("    decrypt: [{ path: \"$.ssn\", look_alikes: allow }]\n", "routes[0] (users).decrypt[0].look_alikes", "encrypt rules only"),
        ("    look_alikes: seal\n", "routes[0] (users).look_alikes", "has none"),
        ("    request_schema: { type: object }\n", "routes[0] (users).request_schema", "no encrypt rules"),
        ("    encrypt: [\"$.ssn\"]\n    request_schema: { type: 7 }\n", "routes[0] (users).request_schema", "does not compile"),
        ("    encrypt: [\"$.ssn\"]\n    request_schema: { $ref: \"https://example.com/s.json\" }\n", "routes[0] (users).request_schema", "does not compile"),
        ("    encrypt: [\"$.ssn\"]\n    request_schema: missing.json\n", "routes[0] (users).request_schema", "missing.json"),
    ] {
        let yaml = format!("{base}{extra}");
        let err = Config::from_yaml(&yaml, Path::new("/x/fieldseal.yaml"))
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{yaml}"));
        let msg = err.to_string();
        assert!(msg.contains(key) && msg.contains(words), "{extra}: {msg}");
    }
    let ok = format!("{base}    look_alikes: seal\n    encrypt: [\"$.ssn\", {{ path: \"$.x\", look_alikes: allow }}]\n");
    Config::from_yaml(&ok, Path::new("/x/fieldseal.yaml")).expect("valid");
    // A rule that names no member makes everything else a look-alike: said.
    let warned = format!("{base}    encrypt: [\"$.ssn\", \"$[0]\"]\n");
    let c = Config::from_yaml(&warned, Path::new("/x/fieldseal.yaml")).expect("valid");
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("$[0]") && w.contains("look_alikes: allow")),
        "{:?}",
        c.warnings
    );
}

// ---------------------------------------------------------------------------
// The request schema

#[tokio::test]
async fn requests_outside_the_route_s_schema_are_refused_and_nothing_is_forwarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("user.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "additionalProperties": false, "required": ["ssn"],
            "properties": {"ssn": {"type": "string", "pattern": "^[0-9-]+$"},
                           "name": {"type": "string", "maxLength": 20},
                           "tags": {"type": "array", "items": {"type": "string"}}}}"#,
    )
    .expect("schema");
    let s = setup(&format!(
        "  - name: users\n    match: {{ path_prefix: /api/users }}\n    upstream: legacy\n    encrypt: [\"$.ssn\"]\n    request_schema: \"{}\"\n  - name: inline\n    match: {{ path_prefix: /api/inline }}\n    upstream: legacy\n    encrypt: [\"$.card.number\"]\n    request_schema:\n      type: object\n      properties:\n        card: {{ type: object, additionalProperties: false, properties: {{ number: {{ type: string }} }} }}\n",
        schema.display()
    ))
    .await;
    let url = s.proxy.url("/api/users");
    let outside = [
        r#"{"ssn": 78051120}"#,
        r#"{"ssn": "078-05-X"}"#,
        r#"{"name": "SECRET-n"}"#,
        r#"{"ssn": "078-05-1120", "SSN": "SECRET-a"}"#,
        r#"{"ssn": "078-05-1120", "user": {"ssn": "SECRET-b"}}"#,
        r#"{"ssn": "078-05-1120", "name": "SECRET-that-is-too-long-for-it"}"#,
        r#"{"ssn": "078-05-1120", "tags": ["a", 1]}"#,
        r#"[{"ssn": "078-05-1120"}]"#,
        r#""SECRET-root""#,
        // A repeated member: the schema judges one, a backend may read the other.
        r#"{"ssn": "078-05-1120", "name": {"SECRET": 1}, "name": "ok"}"#,
        r#"{"ssn": {"SECRET": 1}, "ssn": "078-05-1120"}"#,
    ];
    for (c, v) in s.proxy.clients() {
        for body in outside {
            let a = post(&c, v, &url, body).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text());
            assert_error_json(StatusCode::BAD_REQUEST, a.content_type.as_deref(), &a.body);
            assert!(
                !a.text().contains("SECRET") && !a.text().contains("078"),
                "{}",
                a.text()
            );
            assert_eq!(s.backend.count(), 0, "{body} forwarded");
        }
        // Invalid JSON and depth keep their own answers.
        let a = post(&c, v, &url, r#"{"ssn": "#).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.text().contains("not valid JSON"), "{}", a.text());
    }
    let c = s.proxy.h2();
    let a = post(
        &c,
        Version::HTTP_2,
        &url,
        r#"{"ssn": "078-05-1120", "name": "Zoë", "tags": ["x"]}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(s.backend.count(), 1);
    assert!(!s.backend.raw_contains(b"078-05-1120"));
    let inline = s.proxy.url("/api/inline");
    let a = post(
        &c,
        Version::HTTP_2,
        &inline,
        r#"{"card": {"number": "4111", "cvv": "SECRET"}}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert_eq!(s.backend.count(), 1);
    let a = post(
        &c,
        Version::HTTP_2,
        &inline,
        r#"{"card": {"number": "4111-55"}}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(!s.backend.raw_contains(b"4111-55"));
}

// ---------------------------------------------------------------------------
// Limits that would let client input get a 500

#[test]
fn limits_that_allow_an_unsealable_field_are_refused_at_load() {
    let base = "listen: { address: \"127.0.0.1:0\", tls: { cert: c.pem, key: k.pem } }\nupstreams: { b: { url: \"http://127.0.0.1:1\" } }\nkeys: { active: k1, ring: [ { id: k1, file: k1.key } ] }\n";
    let cap = fieldseal::crypto::max_plaintext_len(2);
    for (limits, route_extra, rules, key) in [
        (
            "limits: { max_body: 8MiB }\n",
            "",
            "[\"$.ssn\"]",
            "limits.max_body",
        ),
        (
            "",
            "    max_body: 5MiB\n",
            "[\"$.ssn\"]",
            "routes[0] (users).max_body",
        ),
        (
            "",
            &*format!("    max_body: \"{}\"\n", cap + 1),
            "[\"$.ssn\"]",
            "routes[0] (users).max_body",
        ),
        (
            "limits: { max_json_depth: 128 }\n",
            "",
            "[\"$.ssn\"]",
            "limits.max_json_depth",
        ),
        (
            "limits: { max_json_depth: 121 }\n",
            "",
            "[\"$.a.b\", \"$\"]",
            "limits.max_json_depth",
        ),
        (
            "limits: { max_json_depth: 122 }\n",
            "",
            "[\"$..x\"]",
            "limits.max_json_depth",
        ),
        (
            "limits: { max_json_depth: 122 }\n",
            "    look_alikes: seal\n",
            "[\"$.a.b\"]",
            "look_alikes (seal)",
        ),
    ] {
        let yaml = format!("{base}{limits}routes:\n  - name: users\n    match: {{ path_prefix: /u }}\n    upstream: b\n{route_extra}    encrypt: {rules}\n");
        let msg = Config::from_yaml(&yaml, Path::new("/x/f.yaml"))
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{yaml}"))
            .to_string();
        assert!(msg.contains(key), "{yaml}: {msg}");
        assert!(msg.contains("envelope"), "{msg}");
    }
    for (limits, route_extra, rules) in [
        (
            "limits: { max_body: 8MiB }\n",
            &*format!("    max_body: \"{cap}\"\n"),
            "[\"$.ssn\"]",
        ),
        ("limits: { max_json_depth: 121 }\n", "", "[\"$.ssn\"]"),
        (
            "limits: { max_json_depth: 128 }\n",
            "",
            "[\"$.a.b.c.d.e.f.g.h\"]",
        ),
        ("limits: { max_json_depth: 120 }\n", "", "[\"$\"]"),
        ("limits: { max_json_depth: 122 }\n", "", "[\"$.a.b\"]"),
        (
            "limits: { max_json_depth: 121 }\n",
            "    look_alikes: seal\n",
            "[\"$.a.b\"]",
        ),
    ] {
        let yaml = format!("{base}{limits}routes:\n  - name: users\n    match: {{ path_prefix: /u }}\n    upstream: b\n{route_extra}    encrypt: {rules}\n");
        Config::from_yaml(&yaml, Path::new("/x/f.yaml")).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    }
    // Routes that encrypt nothing may take larger bodies.
    let yaml = format!("{base}limits: {{ max_body: 8MiB, max_json_depth: 128 }}\nroutes:\n  - name: files\n    match: {{ path_prefix: /f }}\n    upstream: b\n");
    Config::from_yaml(&yaml, Path::new("/x/f.yaml")).expect("no encrypt rules");
}

/// At the bounds the load check allows, the largest and the deepest
/// selected values are sealed; one level more is a 400, never a 500.
#[tokio::test]
async fn the_largest_and_deepest_values_the_limits_allow_are_sealed() {
    let cap = fieldseal::crypto::max_plaintext_len(2);
    let s = setup(&format!(
        "  - name: big\n    match: {{ path_prefix: /api/big }}\n    upstream: legacy\n    max_body: \"{cap}\"\n    encrypt: [\"$.ssn\"]\n"
    ))
    .await;
    let c = s.proxy.h1();
    // The whole body is the field: `{"ssn":"…"}` of exactly max_body bytes.
    let filler = cap - r#"{"ssn":""}"#.len();
    let body = format!(r#"{{"ssn":"{}"}}"#, "7".repeat(filler));
    assert_eq!(body.len(), cap);
    let a = post(&c, Version::HTTP_11, &s.proxy.url("/api/big"), &body).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        &a.text()[..a.text().len().min(200)]
    );
    let rec = s.backend.seen().pop().expect("forwarded");
    let got: Value = serde_json::from_slice(&rec.body).expect("json");
    let env = got["ssn"].as_str().expect("sealed");
    assert!(env.len() <= fieldseal::crypto::MAX_ENVELOPE_LEN);
    assert_eq!(
        s.ring
            .open(env, "ssn", None)
            .expect("opens")
            .value
            .as_str()
            .map(str::len),
        Some(filler)
    );
    // One byte more is the body limit's 413.
    let body = format!(r#"{{"ssn":"{}"}}"#, "7".repeat(filler + 1));
    let a = post(&c, Version::HTTP_11, &s.proxy.url("/api/big"), &body).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s.backend.count(), 1);
    drop(s);

    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path(), "k1");
    let backend = ScriptedBackend::start().await;
    let proxy = TestProxy::start(&format!(
        "upstreams:\n  legacy: {{ url: \"{}\" }}\nlimits: {{ max_json_depth: 121 }}\nkeys: {{ active: k1, ring: [ {{ id: k1, file: \"{}\" }} ] }}\nroutes:\n  - name: deep\n    match: {{ path_prefix: /api/deep }}\n    upstream: legacy\n    encrypt: [\"$.ssn\"]\n",
        backend.url(),
        k1.display()
    ))
    .await;
    let nest =
        |levels: usize| format!(r#"{{"ssn":{}1{}}}"#, "[".repeat(levels), "]".repeat(levels));
    for (c, v) in proxy.clients() {
        let before = backend.count();
        let a = post(&c, v, &proxy.url("/api/deep"), &nest(120)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(backend.count(), before + 1);
        let a = post(&c, v, &proxy.url("/api/deep"), &nest(121)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
        assert_error_json(StatusCode::BAD_REQUEST, a.content_type.as_deref(), &a.body);
        assert_eq!(backend.count(), before + 1);
    }
}

/// Should a selected value still fail to seal (the engine called with
/// limits the load check would refuse), the answer is a 4xx naming the
/// cause, never a 500.
#[test]
fn an_unsealable_field_is_a_client_error() {
    let yaml = "listen: { address: \"127.0.0.1:0\", tls: { cert: c.pem, key: k.pem } }\nupstreams: { b: { url: \"http://127.0.0.1:1\" } }\nkeys: { active: k1, ring: [ { id: k1, file: k1.key } ] }\nroutes:\n  - name: users\n    match: { path_prefix: /u }\n    upstream: b\n    encrypt: [\"$.ssn\", \"$.a\"]\n";
    let config = Config::from_yaml(yaml, Path::new("/x/f.yaml")).expect("config");
    let route = config.routes.by_name("users").expect("route");
    let r = Keyring::from_raw_keys("k1", vec![("k1".into(), [3; 32])]).expect("ring");
    let big = format!(
        r#"{{"ssn":"{}"}}"#,
        "x".repeat(fieldseal::crypto::MAX_ENVELOPE_LEN)
    );
    let err = fieldseal::proxy::encrypt_body(big.as_bytes(), route, &r).expect_err("too large");
    assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(121), "]".repeat(121));
    let mut deeper = route.clone();
    if let Some(seal) = deeper.seal.as_mut() {
        seal.max_depth = 128;
    }
    let err = fieldseal::proxy::encrypt_body(deep.as_bytes(), &deeper, &r).expect_err("too deep");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{err}");
    // The reserved-prefix guard seals strings outside the rules too.
    let guard = format!(
        r#"{{"note":"fs1:{}"}}"#,
        "x".repeat(fieldseal::crypto::MAX_ENVELOPE_LEN)
    );
    let err = fieldseal::proxy::encrypt_body(guard.as_bytes(), route, &r).expect_err("too large");
    assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE, "{err}");
}
