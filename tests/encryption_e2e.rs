//! Field encryption end to end, through the real proxy: real TLS, HTTP/1.1
//! and HTTP/2 clients, a backend that records every raw byte it reads and
//! answers with what the test chooses (usually what it stored, to simulate
//! a read-back).

mod common;

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use common::*;
use fieldseal::crypto::Keyring;
use http::{Request, StatusCode, Version};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn ring(active: &str, files: &[(&str, &Path)]) -> Keyring {
    file_ring(active, files)
}

/// A reqwest answer read completely.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, n: &str) -> Option<&str> {
        self.headers.get(n).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn assert_error(&self, status: StatusCode, what: &str) {
        assert_eq!(self.status, status, "{what}: body {:?}", self.text());
        assert_error_json(status, self.header("content-type"), &self.body);
    }
}

async fn send(rb: reqwest::RequestBuilder, want: Version) -> Answer {
    let resp = bounded("request", rb.send()).await.expect("request sent");
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = bounded("body", resp.bytes()).await.expect("body");
    assert_eq!(version, want, "protocol version of the answer");
    Answer {
        status,
        headers,
        body,
    }
}

async fn post_json(c: &reqwest::Client, v: Version, url: &str, body: &str) -> Answer {
    send(
        c.post(url)
            .header("content-type", "application/json")
            .body(body.to_string()),
        v,
    )
    .await
}

async fn get(c: &reqwest::Client, v: Version, url: &str) -> Answer {
    send(c.get(url), v).await
}

/// Compact JSON text: with `preserve_order` + `arbitrary_precision` this is
/// byte-exact for values (member order, number spelling).
fn text(v: &Value) -> String {
    serde_json::to_string(v).expect("serialize")
}

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {:?}",
            String::from_utf8_lossy(b)
                .chars()
                .take(400)
                .collect::<String>()
        )
    })
}

fn is_envelope_under(v: &Value, kid: &str) -> bool {
    v.as_str()
        .is_some_and(|s| s.starts_with(&format!("fs1:{kid}:")))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).expect("br");
    }
    out
}

/// The last request the backend saw, checked for the invariants of every
/// forwarded transformed body: JSON, Content-Length equal to the body, not
/// chunked, no Content-Encoding.
fn last_forwarded(b: &ScriptedBackend) -> (Recorded, Value) {
    let r = b.seen().pop().expect("backend received the request");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "upstream Content-Length matches the transformed body"
    );
    assert!(
        r.header("transfer-encoding").is_none(),
        "transformed bodies have a length"
    );
    assert!(
        r.header("content-encoding").is_none(),
        "forwarded body is not encoded"
    );
    let v = parse(&r.body);
    (r, v)
}

// ---------------------------------------------------------------------------
// The story: posted fields stored as ciphertext, read back as plaintext
// ---------------------------------------------------------------------------

/// Every path shape of the issue on one route, overlapping on purpose
/// (`$.card.number` is also matched by `$..card.number`).
const USER_RULES: &str = r#"["$.ssn", "$.card.number", "$.contacts[*].phone", "$..card.number", "$.items[0].x", "$['dob','email']", "$.history[1:3].v"]"#;

/// `USER_RULES` as encrypt rules. The route takes the other elements' `x`
/// and `v` in plaintext, and the look-alike check drops array steps (to it
/// `items[1].x` is `items`,`x` like `items[0].x`), so those two rules opt out.
const USER_ENCRYPT: &str = r#"["$.ssn", "$.card.number", "$.contacts[*].phone", "$..card.number", { path: "$.items[0].x", look_alikes: allow }, "$['dob','email']", { path: "$.history[1:3].v", look_alikes: allow }]"#;

/// The read-back route of another resource: default contexts follow the
/// member names, so `$.items[*].ssn` opens what was posted at `$.ssn`.
const LIST_RULES: &str = r#"["$.items[*].ssn", "$.items[*]..number", "$.items[*].contacts[*].phone", "$.items[*].items[0].x", "$.items[*]['dob','email']", "$.items[*].history[*].v"]"#;

/// A document whose selected values span every JSON type, with fields around
/// them whose spelling must survive (number text, member order, `-0`, big
/// integers, non-ASCII).
fn user_doc(tag: &str) -> String {
    format!(
        r#"{{"name":"Zoë Q {tag}","ssn":"123-45-{tag}","card":{{"number":41111111{tag},"exp":"12/29","holder":"ZOE"}},"contacts":[{{"type":"home","phone":"555-01{tag}"}},{{"type":"work","phone":{{"cc":"+44","n":"20794{tag}"}}}},{{"type":"fax","phone":["555-99{tag}","ext-7{tag}"]}},{{"type":"none","phone":null}},{{"type":"flag","phone":true}},{{"type":"num","phone":15550{tag}.50}}],"orders":[{{"id":1,"payment":{{"card":{{"number":"5500-0000-{tag}","cvv_hint":"none"}}}}}}],"items":[{{"x":"item-zero-secret-{tag}","y":"visible-0"}},{{"x":"item-one-visible-{tag}","y":"visible-1"}}],"dob":"1990-01-{tag}","email":"zoe{tag}@example.test","nickname":"zq","history":[{{"v":"hist-0-visible-{tag}"}},{{"v":"hist-1-secret-{tag}"}},{{"v":"hist-2-secret-{tag}"}},{{"v":"hist-3-visible-{tag}"}}],"amount":100.50,"rate":0.000001,"big":123456789012345678901234567890,"neg0":-0,"active":false,"nothing":null,"tags":["a","b"]}}"#
    )
}

/// JSON pointers of the values `USER_RULES` select in `user_doc`.
const SEALED: &[&str] = &[
    "/ssn",
    "/card/number",
    "/contacts/0/phone",
    "/contacts/1/phone",
    "/contacts/2/phone",
    "/contacts/3/phone",
    "/contacts/4/phone",
    "/contacts/5/phone",
    "/orders/0/payment/card/number",
    "/items/0/x",
    "/dob",
    "/email",
    "/history/1/v",
    "/history/2/v",
];

/// The selected plaintext values of `user_doc(tag)` as text (the backend
/// must never see them).
fn secrets(tag: &str) -> Vec<String> {
    [
        "123-45-{t}",
        "41111111{t}",
        "555-01{t}",
        "20794{t}",
        "555-99{t}",
        "ext-7{t}",
        "15550{t}.50",
        "5500-0000-{t}",
        "item-zero-secret-{t}",
        "1990-01-{t}",
        "zoe{t}@example.test",
        "hist-1-secret-{t}",
        "hist-2-secret-{t}",
    ]
    .iter()
    .map(|s| s.replace("{t}", tag))
    .collect()
}

/// Values the rules do not select, which must be forwarded as they are.
fn visible(tag: &str) -> Vec<String> {
    vec![
        format!("item-one-visible-{tag}"),
        format!("hist-0-visible-{tag}"),
        format!("hist-3-visible-{tag}"),
        format!("Zo\u{eb} Q {tag}"),
    ]
}

struct Story {
    backend: ScriptedBackend,
    proxy: TestProxy,
    _keys: tempfile::TempDir,
}

impl Story {
    async fn start() -> Story {
        let keys = tempfile::tempdir().expect("tempdir");
        let k1 = key_file(keys.path(), "k1");
        let backend = ScriptedBackend::start().await;
        let yaml = format!(
            r#"allowed_hosts: [localhost, 127.0.0.1]
upstreams:
  legacy: {{ url: "{url}", connect_timeout: 2s, timeout: 20s }}
limits: {{ max_body: 64KiB }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: {USER_ENCRYPT}
    decrypt: {USER_RULES}
  - name: list
    match: {{ path_prefix: /api/list }}
    upstream: legacy
    decrypt: {LIST_RULES}
  - name: auto
    match: {{ path_prefix: /api/auto }}
    upstream: legacy
    encrypt: {USER_ENCRYPT}
    decrypt: auto
"#,
            url = backend.url(),
            k1 = k1.display(),
        );
        let proxy = TestProxy::start(&yaml).await;
        Story {
            backend,
            proxy,
            _keys: keys,
        }
    }
}

/// Puts the original values back at the sealed pointers.
fn restore(stored: &Value, original: &Value) -> Value {
    let mut v = stored.clone();
    for p in SEALED {
        *v.pointer_mut(p).expect("pointer in stored doc") =
            original.pointer(p).expect("pointer in original").clone();
    }
    v
}

#[tokio::test]
async fn posted_fields_are_stored_as_ciphertext_and_read_back_as_plaintext() {
    let s = Story::start().await;
    let mut stored_docs = Vec::new();
    let mut originals = Vec::new();
    for (i, (c, v)) in s.proxy.clients().into_iter().enumerate() {
        let tag = format!("{}{}", 70 + i, 11 + i);
        let doc = user_doc(&tag);
        let original = parse(doc.as_bytes());
        let r = post_json(&c, v, &s.proxy.url("/api/users"), &doc).await;
        assert_eq!(r.status, StatusCode::OK, "{v:?}: {}", r.text());
        let (rec, stored) = last_forwarded(&s.backend);
        assert_eq!(rec.path(), "/api/users");

        // No byte the backend read holds a selected plaintext value ...
        for secret in secrets(&tag) {
            assert!(
                !s.backend.raw_contains(secret.as_bytes()),
                "{v:?}: plaintext {secret:?} reached the backend"
            );
        }
        // ... while the values around them arrived (the search does work).
        for shown in visible(&tag) {
            assert!(
                s.backend.raw_contains(shown.as_bytes()),
                "{v:?}: unselected value {shown:?} missing upstream"
            );
        }
        // Every selected value is an envelope under the active key ...
        for p in SEALED {
            let e = stored.pointer(p).expect("sealed pointer");
            assert!(is_envelope_under(e, "k1"), "{v:?}: {p} is {e}");
        }
        // ... and nothing else changed, byte for byte, member order included.
        assert_eq!(
            text(&restore(&stored, &original)),
            text(&original),
            "{v:?}: unselected fields changed"
        );
        assert_eq!(stored["amount"].to_string(), "100.50");
        assert_eq!(stored["big"].to_string(), "123456789012345678901234567890");
        assert_eq!(stored["neg0"].to_string(), "-0");

        // Read-back on the same route: the backend returns what it stored.
        let id_path = format!("/api/users/{i}");
        s.backend.set_reply(&id_path, Reply::json(rec.body.clone()));
        let r = get(&c, v, &s.proxy.url(&id_path)).await;
        assert_eq!(r.status, StatusCode::OK, "{v:?}: {}", r.text());
        assert!(
            !r.text().contains("fs1:"),
            "{v:?}: envelope reached the client"
        );
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        // Exactly the original JSON values and types: string, number (as
        // spelled), object, array, null, bool.
        assert_eq!(text(&r.json()), text(&original), "{v:?}: read-back");
        assert_eq!(
            r.json()["contacts"][5]["phone"].to_string(),
            format!("15550{tag}.50")
        );
        assert!(r.json()["contacts"][3]["phone"].is_null());
        assert_eq!(r.json()["contacts"][4]["phone"], json!(true));
        assert!(r.json()["contacts"][1]["phone"].is_object());
        assert!(r.json()["contacts"][2]["phone"].is_array());
        assert!(r.json()["card"]["number"].is_number());

        stored_docs.push(stored);
        originals.push(original);
    }

    // Read-back on another route, where the records sit under `$.items[*]`:
    // default contexts are member names, so they open there too.
    let listed = json!({ "items": stored_docs, "count": 2 });
    s.backend.set_reply("/api/list", Reply::json(text(&listed)));
    for (c, v) in s.proxy.clients() {
        let r = get(&c, v, &s.proxy.url("/api/list")).await;
        assert_eq!(r.status, StatusCode::OK, "{v:?}: {}", r.text());
        assert!(!r.text().contains("fs1:"), "{v:?}: {}", r.text());
        assert_eq!(
            text(&r.json()),
            text(&json!({ "items": originals, "count": 2 })),
            "{v:?}: list read-back"
        );
    }
}

// ---------------------------------------------------------------------------
// decrypt: auto, compressed answers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn compressed_answers_are_decrypted_and_upstream_is_asked_for_identity() {
    let s = Story::start().await;
    let mut n = 0;
    for (c, v) in s.proxy.clients() {
        let tag = if v == Version::HTTP_2 { "2222" } else { "1111" };
        let doc = user_doc(tag);
        let original = parse(doc.as_bytes());
        let r = post_json(&c, v, &s.proxy.url("/api/auto"), &doc).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let (rec, stored) = last_forwarded(&s.backend);
        for p in SEALED {
            assert!(
                is_envelope_under(stored.pointer(p).expect("ptr"), "k1"),
                "{p}"
            );
        }
        // Answers compressed each way, on the auto route and on a route
        // with decrypt paths; the client asks for compression itself.
        for (coding, body) in [
            ("gzip", gzip(&rec.body)),
            ("br", brotli(&rec.body)),
            ("identity", rec.body.to_vec()),
        ] {
            for route in ["/api/auto", "/api/users"] {
                n += 1;
                let path = format!("{route}/{n}");
                s.backend.set_reply(
                    &path,
                    Reply::json(body.clone()).header("content-encoding", coding),
                );
                let r = send(
                    c.get(s.proxy.url(&path))
                        .header("accept-encoding", "gzip, br"),
                    v,
                )
                .await;
                assert_eq!(r.status, StatusCode::OK, "{coding} {path}: {}", r.text());
                assert!(
                    r.header("content-encoding").is_none(),
                    "{coding} {path}: decoded answer keeps no Content-Encoding"
                );
                assert!(!r.text().contains("fs1:"), "{coding} {path}: {}", r.text());
                assert_eq!(text(&r.json()), text(&original), "{coding} {path}");
                let up = s.backend.seen().pop().expect("request");
                assert_eq!(up.path(), path);
                assert_eq!(
                    up.header("accept-encoding"),
                    Some("identity"),
                    "decrypting routes ask the upstream for identity"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Look-alikes and genuine envelopes in requests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn look_alike_envelopes_are_sealed_and_genuine_ones_left_alone() {
    use base64::Engine;
    let s = Story::start().await;
    for (c, v) in s.proxy.clients() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("987-65-4321");
        let fake = format!("fs1:k1:{b64}");
        let doc = json!({ "ssn": fake, "name": "x" });
        let r = post_json(&c, v, &s.proxy.url("/api/users"), &text(&doc)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let (rec, stored) = last_forwarded(&s.backend);
        assert_ne!(
            stored["ssn"], doc["ssn"],
            "{v:?}: look-alike passed through"
        );
        assert!(is_envelope_under(&stored["ssn"], "k1"));
        assert!(
            !s.backend.raw_contains(b64.as_bytes()),
            "{v:?}: the look-alike's payload reached the backend"
        );
        // It reads back as the string the client sent.
        let path = format!("/api/users/fake-{v:?}");
        s.backend.set_reply(&path, Reply::json(rec.body.clone()));
        let r = get(&c, v, &s.proxy.url(&path)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json(), doc);

        // A genuine envelope for the same context is forwarded unchanged.
        let genuine = stored["ssn"].clone();
        let doc2 = json!({ "ssn": genuine, "name": "y" });
        let r = post_json(&c, v, &s.proxy.url("/api/users"), &text(&doc2)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let (_, stored2) = last_forwarded(&s.backend);
        assert_eq!(stored2["ssn"], genuine, "{v:?}: genuine envelope re-sealed");

        // A genuine envelope from another field (context) is sealed again:
        // it cannot be moved into `ssn` as is.
        let doc3 = json!({ "ssn": "x", "dob": genuine });
        let r = post_json(&c, v, &s.proxy.url("/api/users"), &text(&doc3)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let (_, stored3) = last_forwarded(&s.backend);
        assert!(is_envelope_under(&stored3["dob"], "k1"));
        assert_ne!(
            stored3["dob"], genuine,
            "{v:?}: envelope moved across contexts"
        );
    }
}

// ---------------------------------------------------------------------------
// Fail closed
// ---------------------------------------------------------------------------

struct Closed {
    backend: ScriptedBackend,
    proxy: TestProxy,
    _keys: tempfile::TempDir,
}

impl Closed {
    async fn start() -> Closed {
        let keys = tempfile::tempdir().expect("tempdir");
        let k1 = key_file(keys.path(), "k1");
        let backend = ScriptedBackend::start().await;
        let yaml = format!(
            r#"allowed_hosts: [localhost, 127.0.0.1]
upstreams:
  legacy: {{ url: "{url}", connect_timeout: 2s, timeout: 20s }}
limits: {{ max_body: 4KiB, max_json_depth: 8 }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn"]
  - name: plain
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
            url = backend.url(),
            k1 = k1.display(),
        );
        let proxy = TestProxy::start(&yaml).await;
        Closed {
            backend,
            proxy,
            _keys: keys,
        }
    }
}

fn nested(depth: usize) -> String {
    format!(
        r#"{{"ssn":"1","x":{}0{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[tokio::test]
async fn refused_request_bodies_never_reach_the_backend() {
    let f = Closed::start().await;
    let url = f.proxy.url("/api/users");
    let big = format!(r#"{{"ssn":"123-45-6789","pad":"{}"}}"#, "p".repeat(5000));
    let bomb = gzip(format!(r#"{{"ssn":"1","pad":"{}"}}"#, "a".repeat(1 << 20)).as_bytes());
    assert!(bomb.len() < 4096, "the bomb itself fits the limit");
    for (c, v) in f.proxy.clients() {
        let before = f.backend.count();
        let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
            (
                "text/plain body",
                c.post(&url)
                    .header("content-type", "text/plain")
                    .body(r#"{"ssn":"123-45-6789"}"#),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "form body",
                c.post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("ssn=123-45-6789"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "no content type",
                c.post(&url).body(r#"{"ssn":"123-45-6789"}"#),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "json in a latin1 charset",
                c.post(&url)
                    .header("content-type", "application/json; charset=latin1")
                    .body(r#"{"ssn":"123-45-6789"}"#),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "malformed JSON",
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(r#"{"ssn":"123-45-6789","#),
                StatusCode::BAD_REQUEST,
            ),
            (
                "two JSON documents",
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(r#"{"ssn":"123-45-6789"} {"ssn":"2"}"#),
                StatusCode::BAD_REQUEST,
            ),
            (
                "too large (content-length)",
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(big.clone()),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                "deeper than max_json_depth",
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(nested(8)),
                StatusCode::BAD_REQUEST,
            ),
            (
                "deeper than the parser allows",
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(nested(200)),
                StatusCode::BAD_REQUEST,
            ),
            (
                "compress",
                c.post(&url)
                    .header("content-type", "application/json")
                    .header("content-encoding", "compress")
                    .body(r#"{"ssn":"123-45-6789"}"#),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "stacked gzip, gzip",
                c.post(&url)
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip, gzip")
                    .body(gzip(&gzip(br#"{"ssn":"123-45-6789"}"#))),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "gzip that is not gzip",
                c.post(&url)
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(r#"{"ssn":"123-45-6789"}"#),
                StatusCode::BAD_REQUEST,
            ),
            (
                "gzip inflating past max_body",
                c.post(&url)
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(bomb.clone()),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (what, rb, want) in cases {
            let r = send(rb, v).await;
            r.assert_error(want, &format!("{v:?} {what}"));
            assert_security_headers(&r.headers, what);
            assert_eq!(
                f.backend.count(),
                before,
                "{v:?} {what}: backend was reached"
            );
        }
        // Within depth: accepted (the limit is not off by one the other way).
        let r = post_json(&c, v, &url, &nested(7)).await;
        assert_eq!(r.status, StatusCode::OK, "{v:?} depth 8: {}", r.text());
        let (_, stored) = last_forwarded(&f.backend);
        assert!(is_envelope_under(&stored["ssn"], "k1"));
    }

    // Too large without a Content-Length: HTTP/1.1 chunked and an HTTP/2 stream.
    let before = f.backend.count();
    let chunk = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let req = format!(
        "POST /api/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}"
    );
    let r = f.proxy.raw_h1(req.as_bytes()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "h1 chunked");
    assert_error_json(r.status, r.header("content-type"), &r.body);
    let chunks: Vec<Bytes> = big
        .as_bytes()
        .chunks(1000)
        .map(Bytes::copy_from_slice)
        .collect();
    let req = Request::post(f.proxy.url("/api/users"))
        .header("content-type", "application/json")
        .body(streaming_body(chunks))
        .expect("request");
    let r = f.proxy.h2_raw(req).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "h2 stream");
    assert_error_json(r.status, r.header("content-type"), &r.body);
    assert_eq!(
        f.backend.count(),
        before,
        "oversized streams reached the backend"
    );
    assert!(!f.backend.raw_contains(b"123-45-6789"));
}

#[tokio::test]
async fn gzip_request_is_decoded_and_sealed() {
    let f = Closed::start().await;
    let doc = r#"{"ssn":"123-45-6789","name":"gz"}"#;
    for (c, v) in f.proxy.clients() {
        for (coding, body) in [
            ("gzip", gzip(doc.as_bytes())),
            ("br", brotli(doc.as_bytes())),
        ] {
            let r = send(
                c.post(f.proxy.url("/api/users"))
                    .header("content-type", "application/json")
                    .header("content-encoding", coding)
                    .body(body),
                v,
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{v:?} {coding}: {}", r.text());
            let (_, stored) = last_forwarded(&f.backend);
            assert!(is_envelope_under(&stored["ssn"], "k1"), "{stored}");
            assert_eq!(stored["name"], "gz");
        }
    }
    assert!(!f.backend.raw_contains(b"123-45-6789"));
}

/// Spellings of `/api/users` that a backend (or servlet container) reads as
/// that path; the encrypting route must match every one of them.
const BYPASSES: &[&str] = &[
    "/api//users",
    "/api/./users",
    "/api/%75sers",
    "/api;x=1/users",
    "/api/users/../users",
    "/api/x/../users",
    "/api/%2e/users",
    "/api/users/./",
    "//api/users",
    "/api/;/users",
    "/api/;x=1/users",
    "/;x/api/users",
    "/api/;x/../api/users",
];

#[tokio::test]
async fn path_spellings_cannot_route_plaintext_past_the_encrypting_route() {
    let f = Closed::start().await;
    // Sanity: the catch-all really forwards plaintext.
    let (c, v) = (f.proxy.h1(), Version::HTTP_11);
    let r = post_json(
        &c,
        v,
        &f.proxy.url("/elsewhere"),
        r#"{"ssn":"000-00-0000"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(f.backend.raw_contains(b"000-00-0000"));

    for (i, p) in BYPASSES.iter().enumerate() {
        let secret = format!("555-55-{i:04}");
        let body = format!(r#"{{"ssn":"{secret}"}}"#);
        // HTTP/1.1, bytes exactly as written.
        let req = format!(
            "POST {p} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let r = f.proxy.raw_h1(req.as_bytes()).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "h1 {p}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let (rec, stored) = last_forwarded(&f.backend);
        assert!(is_envelope_under(&stored["ssn"], "k1"), "h1 {p}: {stored}");
        assert!(
            rec.path().starts_with("/api") && rec.path().ends_with("/users")
                || rec.path() == "/api/users/",
            "h1 {p} forwarded as {}",
            rec.path()
        );
        // HTTP/2, :path exactly as written.
        let req = Request::post(format!("https://localhost:{}{p}", f.proxy.https.port()))
            .header("content-type", "application/json")
            .body(full_body(body.clone()))
            .expect("request");
        let r = f.proxy.h2_raw(req).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "h2 {p}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let (_, stored) = last_forwarded(&f.backend);
        assert!(is_envelope_under(&stored["ssn"], "k1"), "h2 {p}: {stored}");
        assert!(
            !f.backend.raw_contains(secret.as_bytes()),
            "{p}: plaintext reached the backend"
        );
    }
}

// ---------------------------------------------------------------------------
// on_decrypt_failure through the proxy
// ---------------------------------------------------------------------------

#[tokio::test]
async fn undecryptable_answers_follow_on_decrypt_failure() {
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path(), "k1");
    let backend = ScriptedBackend::start().await;
    let mut yaml = format!(
        r#"allowed_hosts: [localhost, 127.0.0.1]
upstreams:
  legacy: {{ url: "{url}", connect_timeout: 2s, timeout: 20s }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
routes:
"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    for mode in ["error", "null", "keep"] {
        yaml.push_str(&format!(
            r#"  - name: fail-{mode}
    match: {{ path_prefix: /fail/{mode} }}
    upstream: legacy
    decrypt: ["$.ssn", "$.card.number", "$.old", "$.good"]
    on_decrypt_failure: {mode}
    max_age: 1h
"#
        ));
    }
    let proxy = TestProxy::start(&yaml).await;

    let ring1 = ring("k1", &[("k1", &k1)]);
    let now = fieldseal::crypto::unix_now();
    let good = ring1
        .seal(&json!("good-plaintext-1"), "good")
        .expect("seal");
    let mut tampered = ring1
        .seal(&json!("tampered-plaintext"), "ssn")
        .expect("seal");
    {
        // Flip one base64 character in the middle of the payload.
        let at = tampered.len() - 20;
        let old = tampered.as_bytes()[at];
        let new = if old == b'A' { "B" } else { "A" };
        tampered.replace_range(at..at + 1, new);
    }
    let other = Keyring::from_raw_keys("k9", vec![("k9".into(), [9u8; 32])]).expect("ring");
    let unknown = other
        .seal(&json!("unknown-key-plaintext"), "number")
        .expect("seal");
    let expired = ring1
        .seal_at(&json!("expired-plaintext"), "old", now - 7200)
        .expect("seal");
    let fresh_old = ring1.seal(&json!("fresh-old"), "old").expect("seal");
    let cases = [
        ("auth_failed", json!({ "ssn": tampered, "good": good })),
        (
            "unknown_key",
            json!({ "card": { "number": unknown }, "good": good }),
        ),
        ("expired", json!({ "old": expired, "good": good })),
    ];
    let plaintexts = [
        "good-plaintext-1",
        "tampered-plaintext",
        "unknown-key-plaintext",
        "expired-plaintext",
    ];

    for (c, v) in proxy.clients() {
        // error: 502, and neither envelope nor plaintext reaches the client.
        for (i, (reason, doc)) in cases.iter().enumerate() {
            let path = format!("/fail/error/{reason}/{v:?}");
            backend.set_reply(&path, Reply::json(text(doc)));
            let r = get(&c, v, &proxy.url(&path)).await;
            r.assert_error(
                StatusCode::BAD_GATEWAY,
                &format!("{v:?} error {reason} ({i})"),
            );
            assert_security_headers(&r.headers, "decrypt failure");
            assert!(!r.text().contains("fs1:"), "{}", r.text());
            for p in plaintexts {
                assert!(!r.text().contains(p), "{p} in {}", r.text());
            }
        }
        // null and keep: one answer with all three failures and a good field.
        let all = json!({
            "ssn": tampered,
            "card": { "number": unknown, "brand": "visa" },
            "old": expired,
            "good": good,
            "name": "n",
        });
        backend.set_reply("/fail/null/all", Reply::json(text(&all)));
        let r = get(&c, v, &proxy.url("/fail/null/all")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.json(),
            json!({
                "ssn": null,
                "card": { "number": null, "brand": "visa" },
                "old": null,
                "good": "good-plaintext-1",
                "name": "n",
            })
        );
        backend.set_reply("/fail/keep/all", Reply::json(text(&all)));
        let r = get(&c, v, &proxy.url("/fail/keep/all")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let mut want = all.clone();
        want["good"] = json!("good-plaintext-1");
        assert_eq!(r.json(), want);
        // max_age is a limit, not a ban: a fresh envelope opens.
        backend.set_reply(
            "/fail/error/fresh",
            Reply::json(text(&json!({ "old": fresh_old }))),
        );
        let r = get(&c, v, &proxy.url("/fail/error/fresh")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json(), json!({ "old": "fresh-old" }));
    }

    let (status, metrics) = admin_get(&proxy, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for route in ["fail-error", "fail-null", "fail-keep"] {
        for reason in ["auth_failed", "unknown_key", "expired"] {
            let n = metric_value(
                &metrics,
                "fieldseal_decrypt_failures_total",
                &[("route", route), ("reason", reason)],
            )
            .unwrap_or_else(|| {
                panic!("no decrypt failure metric for {route}/{reason}:\n{metrics}")
            });
            assert_eq!(n, 2.0, "{route}/{reason}: one per client protocol");
        }
    }
}

// ---------------------------------------------------------------------------
// Rotation through the proxy
// ---------------------------------------------------------------------------

fn rotation_yaml(header: &str, url: &str, ring: &str, active: &str) -> String {
    format!(
        r#"{header}allowed_hosts: [localhost, 127.0.0.1]
upstreams:
  legacy: {{ url: "{url}", connect_timeout: 2s, timeout: 20s }}
keys:
  active: {active}
  pbkdf2_iterations: 100000
  ring:
{ring}routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number"]
    decrypt: ["$.ssn", "$..card.number"]
"#
    )
}

#[tokio::test]
async fn rotation_old_data_still_opens_new_data_uses_the_new_key() {
    let keys = tempfile::tempdir().expect("tempdir");
    let k2 = key_file(keys.path(), "k2");
    // k1 is a passphrase key (unique env names: tests share the process).
    std::env::set_var(
        "FS_E2E_ROT_K1_PASS",
        "rotation test passphrase, not a secret",
    );
    std::env::set_var("FS_E2E_ROT_K1_SALT", "rotation-e2e-salt-0001");
    let k1_line =
        "    - { id: k1, passphrase_env: FS_E2E_ROT_K1_PASS, salt_env: FS_E2E_ROT_K1_SALT }\n";
    let k2_line = format!("    - {{ id: k2, file: \"{}\" }}\n", k2.display());
    let backend = ScriptedBackend::start().await;
    let proxy = TestProxy::start(&rotation_yaml("", &backend.url(), k1_line, "k1")).await;
    let written = std::fs::read_to_string(&proxy.config_path).expect("config");
    let header: String = written
        .lines()
        .take_while(|l| {
            ["listen:", "admin:", "server:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let listeners = header.lines().filter(|l| !l.starts_with("server:"));
    assert_eq!(listeners.count(), 2, "harness header: {written}");

    let post = |tag: &str| format!(r#"{{"ssn":"ssn-{tag}","card":{{"number":"card-{tag}"}}}}"#);
    let (c, v) = (proxy.h1(), Version::HTTP_11);
    let (c2, v2) = (proxy.h2(), Version::HTTP_2);

    // 1. Data written under k1.
    let doc_a = post("aaaa");
    let r = post_json(&c, v, &proxy.url("/api/users"), &doc_a).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let (rec_a, stored_a) = last_forwarded(&backend);
    assert!(is_envelope_under(&stored_a["ssn"], "k1"), "{stored_a}");

    // 2. Add k2 (not active yet), reload over the admin listener.
    let two = format!("{k1_line}{k2_line}");
    std::fs::write(
        &proxy.config_path,
        rotation_yaml(&header, &backend.url(), &two, "k1"),
    )
    .expect("write config");
    let (status, body) = admin_request(&proxy, "POST", "/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let doc_b = post("bbbb");
    let r = post_json(&c2, v2, &proxy.url("/api/users"), &doc_b).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let (rec_b, stored_b) = last_forwarded(&backend);
    assert!(
        is_envelope_under(&stored_b["ssn"], "k1"),
        "k2 not active yet: {stored_b}"
    );

    // 3. Make k2 active, reload through the API this time.
    std::fs::write(
        &proxy.config_path,
        rotation_yaml(&header, &backend.url(), &two, "k2"),
    )
    .expect("write config");
    proxy.proxy.reload().await.expect("reload");
    let doc_c = post("cccc");
    let mut recs = vec![(rec_a, doc_a), (rec_b, doc_b)];
    for (cl, ver) in [(&c, v), (&c2, v2)] {
        let r = post_json(cl, ver, &proxy.url("/api/users"), &doc_c).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let (rec_c, stored_c) = last_forwarded(&backend);
        assert!(is_envelope_under(&stored_c["ssn"], "k2"), "{stored_c}");
        assert!(is_envelope_under(&stored_c["card"]["number"], "k2"));
        recs.push((rec_c, doc_c.clone()));
    }
    for s in ["ssn-aaaa", "ssn-bbbb", "ssn-cccc", "card-aaaa", "card-cccc"] {
        assert!(
            !backend.raw_contains(s.as_bytes()),
            "{s} reached the backend"
        );
    }

    // Old (k1) and new (k2) data both read back, on both protocols.
    for (i, (rec, doc)) in recs.iter().enumerate() {
        let path = format!("/api/users/rot/{i}");
        backend.set_reply(&path, Reply::json(rec.body.clone()));
        for (cl, ver) in [(&c, v), (&c2, v2)] {
            let r = get(cl, ver, &proxy.url(&path)).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
            assert_eq!(r.json(), parse(doc.as_bytes()), "{path}");
        }
    }
    // Dropping k1 too early is a valid config, but its data then no longer
    // opens: 502, fail closed, never the envelope or a guess.
    std::fs::write(
        &proxy.config_path,
        rotation_yaml(&header, &backend.url(), &k2_line, "k2"),
    )
    .expect("write config");
    proxy.proxy.reload().await.expect("reload without k1");
    let r = get(&c, v, &proxy.url("/api/users/rot/0")).await;
    r.assert_error(StatusCode::BAD_GATEWAY, "k1 data after k1 was dropped");
    let r = get(&c, v, &proxy.url("/api/users/rot/2")).await;
    assert_eq!(r.status, StatusCode::OK, "k2 data still opens");
}

// ---------------------------------------------------------------------------
// Large bodies (blocking-pool path)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn large_documents_round_trip_through_the_blocking_pool() {
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path(), "k1");
    let backend = ScriptedBackend::start().await;
    let yaml = format!(
        r#"allowed_hosts: [localhost, 127.0.0.1]
upstreams:
  legacy: {{ url: "{url}", connect_timeout: 2s, timeout: 20s }}
limits: {{ max_body: 1MiB, offload_threshold: 1KiB }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
routes:
  - name: bulk
    match: {{ path_prefix: /api/bulk }}
    upstream: legacy
    encrypt: ["$.records[*].ssn"]
    decrypt: ["$.records[*].ssn"]
"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    for (c, v) in proxy.clients() {
        let records: Vec<Value> = (0..500)
            .map(|i| {
                json!({
                    "id": i,
                    "ssn": format!("bulk-{v:?}-secret-{i:05}"),
                    "pad": "z".repeat(360),
                })
            })
            .collect();
        let doc = json!({ "records": records });
        let body = text(&doc);
        assert!(body.len() > 200_000, "{}", body.len());
        let r = post_json(&c, v, &proxy.url("/api/bulk"), &body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let (rec, stored) = last_forwarded(&backend);
        let sealed = stored["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| is_envelope_under(&r["ssn"], "k1"))
            .count();
        assert_eq!(sealed, 500);
        assert!(!backend.raw_contains(format!("bulk-{v:?}-secret-").as_bytes()));

        let path = format!("/api/bulk/{v:?}");
        backend.set_reply(&path, Reply::json(rec.body.clone()));
        let r = get(&c, v, &proxy.url(&path)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(text(&r.json()), body, "{v:?}: large read-back");
    }
}

// ---------------------------------------------------------------------------
// Number spelling
// ---------------------------------------------------------------------------

/// What README and docs/envelope.md promise for numbers, untouched or sealed:
/// every digit is kept (big integers, trailing zeros, `-0`); the only
/// re-spelling is the exponent marker, written `e` with an explicit sign
/// (`1E2` becomes `1e+2`), which serde_json's number parser normalizes.
#[tokio::test]
async fn numbers_keep_their_digits_through_forwarding_and_round_trip() {
    let s = Story::start().await;
    let (c, v) = (s.proxy.h1(), Version::HTTP_11);
    let doc = r#"{"ssn":1.0e2,"amount":1E2,"big":12345678901234567890123,"price":0.1000,"neg":-0,"x":"y"}"#;
    let r = post_json(&c, v, &s.proxy.url("/api/users"), doc).await;
    assert_eq!(r.status, StatusCode::OK);
    let rec = s.backend.seen().pop().expect("forwarded");
    let body = String::from_utf8_lossy(&rec.body).into_owned();
    // Everything but the selected value is forwarded byte for byte (the
    // streaming transform copies unselected bytes: `1E2` stays `1E2`).
    let (head, rest) = body.split_at(body.find("fs1:").expect("sealed") - 1);
    assert_eq!(head, r#"{"ssn":"#, "forwarded: {body}");
    let after = rest
        .get(1..)
        .and_then(|r| r.find('"'))
        .expect("envelope end");
    assert_eq!(
        &rest[after + 2..],
        r#","amount":1E2,"big":12345678901234567890123,"price":0.1000,"neg":-0,"x":"y"}"#,
        "unselected bytes changed: {body}"
    );
    assert!(
        !body.contains("1.0e"),
        "the selected number is sealed: {body}"
    );
    s.backend
        .set_reply("/api/users/1", Reply::json(rec.body.clone()));
    let r = get(&c, v, &s.proxy.url("/api/users/1")).await;
    assert_eq!(
        r.text(),
        r#"{"ssn":1.0e+2,"amount":1E2,"big":12345678901234567890123,"price":0.1000,"neg":-0,"x":"y"}"#,
        "read-back"
    );
}

// ---------------------------------------------------------------------------
// Review findings: how backends read names, media types and paths
// ---------------------------------------------------------------------------

/// Each of these was a way to get plaintext stored with a catch-all route
/// behind the encrypting one: a member name in another case (Go, .NET bind
/// it to `ssn`), a format suffix (Rails, older Spring route `/api/users.json`
/// to `/api/users`), and an `X-Original-URL` that IIS-style backends route on.
#[tokio::test]
async fn backend_readings_of_names_paths_and_override_headers_cannot_store_plaintext() {
    let f = Closed::start().await;
    let (c, v) = (f.proxy.h1(), Version::HTTP_11);
    for (i, (path, body)) in [
        ("/api/users", r#"{"SSN":"SECRET-0"}"#),
        ("/api/users", "{\"\\u017f\\u017fn\":\"SECRET-1\"}"),
        ("/api/users.json", r#"{"ssn":"SECRET-2"}"#),
        ("/api/users/", r#"{"Ssn":"SECRET-3"}"#),
    ]
    .into_iter()
    .enumerate()
    {
        let r = post_json(&c, v, &f.proxy.url(path), body).await;
        assert_eq!(r.status, StatusCode::OK, "{path} {body}");
        let secret = format!("SECRET-{i}");
        assert!(
            !f.backend.raw_contains(secret.as_bytes()),
            "{path} {body}: plaintext stored"
        );
    }
    let before = f.backend.count();
    let r = send(
        c.post(f.proxy.url("/static/x"))
            .header("content-type", "application/json")
            .header("x-original-url", "/api/users")
            .header("x-http-method-override", "PUT")
            .body(r#"{"note":"plain route"}"#),
        v,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let rec = f.backend.seen().pop().expect("forwarded");
    assert_eq!(f.backend.count(), before + 1);
    assert!(
        rec.header("x-original-url").is_none(),
        "routing override forwarded"
    );
    assert!(
        rec.header("x-http-method-override").is_none(),
        "method override forwarded"
    );
}

/// PHP, Rack and Rails cut a media type at `,`, `;` or a space: a header a
/// lax check takes for JSON is a form to them, and a JSON string can then
/// carry form fields. Such bodies are refused on encrypting routes.
#[tokio::test]
async fn media_types_a_backend_could_read_as_a_form_are_refused() {
    let f = Closed::start().await;
    let (c, v) = (f.proxy.h1(), Version::HTTP_11);
    let body = r#"{"x":"&ssn=123-45-6789&y="}"#;
    for ct in [
        "application/x-www-form-urlencoded, application/a+json",
        "application/x-www-form-urlencoded a+json",
        "application/json, text/plain",
    ] {
        let r = send(
            c.post(f.proxy.url("/api/users"))
                .header("content-type", ct)
                .body(body),
            v,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
    }
    assert_eq!(f.backend.count(), 0, "nothing reached the backend");
}
