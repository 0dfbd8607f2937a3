//! Requests and answers at the edges of the protocol, through the real
//! proxy: host-less requests, path spellings a backend reads as an
//! encrypting route's path, transfer and content codings, a backend's 101,
//! error bodies and logs that must not echo what the client sent, and rate
//! limits once the client table is full. Every test asserts what the backend
//! received.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use http::{Request, StatusCode, Version};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Rate limits once the client table is full
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_full_client_table_still_limits_new_clients_and_keeps_tracked_ones_buckets() {
    let backend = Backend::start("a", Behavior::echo()).await;
    // Client addresses come from X-Forwarded-For (the test's peer is a
    // trusted proxy), so one socket stands for many clients.
    let yaml = format!(
        r#"trusted_proxies: [127.0.0.0/8]
rate_limit: {{ requests_per_second: 1, burst: 2, max_tracked_clients: 2 }}
{}"#,
        catch_all(&backend.url())
    );
    let proxy = TestProxy::start(&yaml).await;
    let c = proxy.h1();
    let ask = |ip: String| {
        let c = c.clone();
        let url = proxy.url("/x");
        async move {
            bounded("request", c.get(url).header("x-forwarded-for", ip).send())
                .await
                .expect("answer")
                .status()
        }
    };
    let started = Instant::now();
    // Two clients fill the table; the first keeps one of its two tokens.
    assert_eq!(ask("192.0.2.1".into()).await, StatusCode::OK);
    assert_eq!(ask("192.0.2.2".into()).await, StatusCode::OK);
    // 100 new clients, 6 requests each, while the table is full.
    let mut admitted_total = 0;
    for i in 0..100u32 {
        let ip = format!("10.9.{}.{}", i / 250, i % 250 + 1);
        let mut admitted = 0;
        for _ in 0..6 {
            match ask(ip.clone()).await {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("{ip}: {other}"),
            }
        }
        // Its burst of 2, plus what refilled while the test ran: never more.
        let refill = started.elapsed().as_secs() as usize + 1;
        assert!(
            admitted <= 2 + refill,
            "{ip} admitted {admitted} of 6 with a burst of 2"
        );
        admitted_total += admitted;
    }
    // The tracked client's own bucket still holds its token.
    assert_eq!(
        ask("192.0.2.1".into()).await,
        StatusCode::OK,
        "a tracked client with a token left was refused"
    );
    assert_eq!(
        backend.count(),
        2 + admitted_total + 1,
        "refused requests reached the backend"
    );
}
// ---------------------------------------------------------------------------
// A route sealing $.ssn, with a catch-all behind it
// ---------------------------------------------------------------------------

fn key_file(dir: &Path) -> PathBuf {
    let p = dir.join("k1.key");
    fieldseal::crypto::write_key_file(&p).expect("key file");
    p
}

fn is_envelope(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with("fs1:k1:"))
}

fn stored_ssn(r: &Recorded) -> Value {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "backend body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&r.body)
        )
    });
    v["ssn"].clone()
}

/// A route sealing `$.ssn` (opening it in answers) with a pass-through
/// catch-all behind it, which is what makes every bypass dangerous.
async fn sealed_with_catch_all() -> (ScriptedBackend, TestProxy, tempfile::TempDir) {
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path());
    let backend = ScriptedBackend::start().await;
    let yaml = format!(
        r#"upstreams:
  legacy: {{ url: "{url}", timeout: 20s }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn"]
    decrypt: ["$.ssn"]
  - name: all
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    (backend, proxy, keys)
}

fn raw_post(path: &str, host: Option<&str>, version: &str, extra: &str, body: &str) -> String {
    let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
    format!(
        "POST {path} {version}\r\n{host}Content-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

// ---------------------------------------------------------------------------
// Path spellings a backend reads as the encrypting route's path
// ---------------------------------------------------------------------------

/// Generated spellings of `/api/users`, by class: compound and odd format
/// suffixes (Spring's suffix matching), whitespace a backend trims (IIS,
/// .NET, Spring's `trimTokens`) at either end of any segment, encoded `%`
/// (double decoding), escapes that are not UTF-8, and fullwidth forms
/// (NFKC, Windows best-fit).
fn spellings() -> Vec<String> {
    let mut out = Vec::new();
    for suffix in [
        ".json.gz", ".tar.gz", ".x.y.z", ".json.", "..", "..json", ".json/", ".gz/", ".%20json",
    ] {
        out.push(format!("/api/users{suffix}"));
    }
    let spaces = [
        "%20",
        "%C2%A0",
        "%C2%85",
        "%E1%9A%80",
        "%E2%80%80",
        "%E2%80%8A",
        "%E2%80%8B",
        "%E2%80%A8",
        "%E2%80%AF",
        "%E3%80%80",
        "%EF%BB%BF",
        "%20%20",
    ];
    for ws in spaces {
        for shape in [
            "/api/users{}",
            "/api/users{}/",
            "/api/users{}/7",
            "/api/{}users",
            "/api{}/users",
            "/{}api/users",
            "/api/users{}.json",
            "/api/users{};x=1",
            "/api/users.{}",
            "/api/users{}.",
        ] {
            out.push(shape.replace("{}", ws));
        }
    }
    for p in [
        "/api/%2575sers",
        "/api/users%25",
        "/api%252Fusers",
        "/api/%25%37%35sers",
        "/api/users%2520",
        "/api/%252e%252e/api/users",
        "/api/users%C0%AE",
        "/api/users%C0",
        "/api/users%ED%A0%80",
        "/api/%EF%BD%95sers",
        "/api/users%EF%BC%8Ejson",
        "/api%EF%BC%8Fusers",
    ] {
        out.push(p.to_string());
    }
    out
}

#[tokio::test]
async fn path_spellings_of_an_encrypting_route_are_sealed_or_refused_never_forwarded_plain() {
    let (backend, proxy, _keys) = sealed_with_catch_all().await;
    // Sanity: the catch-all forwards plaintext.
    let r = proxy
        .raw_h1(
            raw_post(
                "/elsewhere",
                Some("localhost"),
                "HTTP/1.1",
                "",
                r#"{"ssn":"000-00-0000"}"#,
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(backend.raw_contains(b"000-00-0000"));

    let all = spellings();
    let mut refused = 0;
    for (i, p) in all.iter().enumerate() {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let secret = format!(
                "555-{}-{i:04}",
                if version == Version::HTTP_2 { 22 } else { 11 }
            );
            let doc = format!(r#"{{"ssn":"{secret}"}}"#);
            let before = backend.count();
            let status = if version == Version::HTTP_11 {
                let req = raw_post(p, Some("localhost"), "HTTP/1.1", "", &doc);
                proxy.raw_h1(req.as_bytes()).await.status
            } else {
                let req = Request::post(format!("https://localhost:{}{p}", proxy.https.port()))
                    .header("content-type", "application/json")
                    .body(full_body(doc.clone()))
                    .expect("request");
                proxy.h2_raw(req).await.status
            };
            match status {
                StatusCode::BAD_REQUEST => {
                    refused += 1;
                    assert_eq!(
                        backend.count(),
                        before,
                        "{version:?} {p}: refused but forwarded"
                    );
                }
                StatusCode::OK => {
                    let rec = backend.seen().pop().expect("forwarded");
                    assert!(
                        is_envelope(&stored_ssn(&rec)),
                        "{version:?} {p} forwarded as {} unsealed",
                        rec.path()
                    );
                }
                other => panic!("{version:?} {p}: {other}"),
            }
            assert!(
                !backend.raw_contains(secret.as_bytes()),
                "{version:?} {p}: plaintext reached the backend"
            );
        }
    }
    // The whitespace, percent and UTF-8 classes are refused; suffixes are
    // the route's own.
    assert!(
        refused >= 2 * (all.len() - 9),
        "{refused} of {} refused",
        2 * all.len()
    );
}
