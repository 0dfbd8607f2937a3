//! Query strings on protected routes, through the real proxy (real TLS,
//! HTTP/1.1 and HTTP/2 clients, a backend that records every byte it
//! reads): a parameter that spells an encrypt rule's field, in any of the
//! spellings Rails/Rack, PHP, Spring and ASP.NET bind (case, percent
//! escapes, `+`, `user[ssn]`, `user.ssn`, `ssn[]`, `ssn[0]`, `;` as a
//! separator, repeats), is refused with nothing forwarded; a `query:`
//! entry seals it instead; invalid escapes are refused; everything else
//! reaches the backend byte for byte.

mod common;

use common::*;
use http::StatusCode;

struct Setup {
    backend: ScriptedBackend,
    proxy: TestProxy,
    ring: fieldseal::crypto::Keyring,
    _keys: tempfile::TempDir,
}

async fn setup() -> Setup {
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
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number", {{ path: "$.pin", look_alikes: allow }}]
  - name: search
    match: {{ path_prefix: /api/search }}
    upstream: legacy
    encrypt: ["$.ssn", "$.email"]
    query:
      email: seal
      ssn: refuse
  - name: plain
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    Setup {
        ring: file_ring("k1", &[("k1", &k1)]),
        backend,
        proxy,
        _keys: keys,
    }
}

/// Percent-encodes every byte of `s`.
fn pct_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Percent-encodes every other byte, lower-case hex.
fn pct_some(s: &str) -> String {
    s.bytes()
        .enumerate()
        .map(|(i, b)| {
            if i % 2 == 0 {
                format!("%{b:02x}")
            } else {
                (b as char).to_string()
            }
        })
        .collect()
}

fn flip_case(s: &str) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Names a backend binds to `$.ssn` / `$.card.number`, generated.
fn protected_names() -> Vec<String> {
    let mut base: Vec<String> = Vec::new();
    for n in ["ssn", "card.number", "card[number]"] {
        for shaped in [
            n.to_string(),
            format!("{n}[]"),
            format!("{n}[0]"),
            format!("user[{n}]"),
            format!("user.{n}"),
            format!("data[attributes][{n}]"),
            format!("{n}%00"),
            format!("{n}[x]"),
        ] {
            base.push(shaped);
        }
    }
    base.push("\u{17F}sn".into());
    let mut out = Vec::new();
    for b in &base {
        out.push(b.clone());
        out.push(flip_case(b));
        out.push(b.to_uppercase());
        if !b.contains('%') && b.is_ascii() {
            out.push(pct_all(b));
            out.push(pct_some(b));
        } else if !b.is_ascii() {
            out.push(pct_all(b));
        }
    }
    out
}

/// Query strings holding `secret` under a protected name, generated.
fn protected_queries(secret: &str) -> Vec<String> {
    let mut out = Vec::new();
    let v_plus = secret.replace('-', "+");
    for name in protected_names() {
        out.push(format!("{name}={secret}"));
        out.push(format!("page=2&{name}={secret}"));
        out.push(format!("page=2;{name}={v_plus}"));
        out.push(format!("{name}={secret}&{name}={secret}"));
        out.push(format!("q=a&&{name}={}", pct_all(secret)));
    }
    out
}

#[tokio::test]
async fn protected_parameters_are_refused_in_every_spelling_and_nothing_is_forwarded() {
    let s = setup().await;
    let mut checked = 0;
    for (c, v) in s.proxy.clients() {
        for (i, q) in protected_queries("078-05-1120").iter().enumerate() {
            let secret = format!("Q{i}x{v:?}x078-05-1120").replace(['/', '.'], "");
            let q = q.replace("078-05-1120", &secret);
            for (method, path) in [("POST", "/api/users"), ("GET", "/api/users/7")] {
                let url = s.proxy.url(&format!("{path}?{q}"));
                let req = match method {
                    "POST" => c
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(r#"{"name": "a"}"#),
                    _ => c.get(&url),
                };
                let resp = bounded("request", req.send()).await.expect("sent");
                assert_eq!(resp.version(), v);
                let status = resp.status();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string);
                let body = bounded("body", resp.bytes()).await.expect("body");
                assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}?{q}");
                assert_error_json(status, ct.as_deref(), &body);
                let text = String::from_utf8_lossy(&body).to_lowercase();
                assert!(!text.contains(&secret.to_lowercase()), "echoed: {text}");
                assert!(!text.contains("ssn"), "echoed a name: {text}");
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "{checked}");
    assert_eq!(s.backend.count(), 0, "a refused request was forwarded");
    assert!(!s.backend.raw_contains(b"078-05-1120"));
    s.proxy.stop().await;
}

#[tokio::test]
async fn invalid_escapes_are_refused_and_other_parameters_pass_verbatim() {
    let s = setup().await;
    let mut forwarded = 0;
    for (c, v) in s.proxy.clients() {
        for q in [
            "a=%zz",
            "a=%4",
            "a=%",
            "%u0073sn=1",
            "%C0%B3sn=1",
            "%FF%FE=1",
            "ssn%E2=1",
        ] {
            let resp = bounded(
                "request",
                c.get(s.proxy.url(&format!("/api/users?{q}"))).send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.version(), v);
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
        }
        assert_eq!(s.backend.count(), forwarded);
        for q in [
            "page=2&sort=name",
            "ssn_last4=1120&number=5&card=visa&pins=1",
            "q=ssn%3D078&x=%2B;y=a+b",
            "name=%E2%82%AC&&empty=",
            // A value nothing judges may be any bytes.
            "blob=%E2%82",
        ] {
            let resp = bounded(
                "request",
                c.get(s.proxy.url(&format!("/api/users?{q}"))).send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.status(), StatusCode::OK, "{q}");
            forwarded += 1;
            let seen = s.backend.seen();
            let last = seen.last().expect("seen");
            assert_eq!(last.uri.query(), Some(q), "forwarded verbatim");
        }
    }
    // A route without encrypt rules or `query:` is not inspected at all.
    let resp = bounded(
        "request",
        s.proxy.h1().get(s.proxy.url("/other?ssn=1&a=%zz")).send(),
    )
    .await
    .expect("sent");
    assert_eq!(resp.status(), StatusCode::OK);
    s.proxy.stop().await;
}

#[tokio::test]
async fn a_query_entry_seals_the_parameter_and_refuses_the_refused_one() {
    let s = setup().await;
    let mut n = 0;
    for (c, v) in s.proxy.clients() {
        // The envelope is bound to the name as spelled: the member the
        // backend stores it under and answers it at.
        for (q, context) in [
            ("email=ada%40example.com&page=1", "email"),
            ("EMAIL=ada@example.com&page=1", "EMAIL"),
            ("user%5BEmail%5D=ada@example.com&page=1", "Email"),
            ("e%6Dail=ada%40example.com;page=1", "email"),
        ] {
            let resp = bounded(
                "request",
                c.get(s.proxy.url(&format!("/api/search?{q}"))).send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.version(), v);
            assert_eq!(resp.status(), StatusCode::OK, "{q}");
            n += 1;
            let seen = s.backend.seen();
            let got = seen
                .last()
                .expect("seen")
                .uri
                .query()
                .expect("query")
                .to_string();
            assert!(!got.contains("ada"), "{got}");
            let (name, rest) = got.split_once('=').expect("pair");
            let (env, tail) = rest.split_once(['&', ';']).expect("tail");
            assert_eq!(tail, "page=1", "{got}");
            assert!(name.to_lowercase().contains("email"), "{got}");
            let env = env.replace("%3A", ":");
            let opened = s.ring.open(&env, context, None).expect("opens").value;
            assert_eq!(opened, serde_json::json!("ada@example.com"), "{q}");
        }
        for q in ["ssn=1", "SSN[]=1", "x=1&user.ssn=1"] {
            let resp = bounded(
                "request",
                c.get(s.proxy.url(&format!("/api/search?{q}"))).send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
        }
        assert_eq!(s.backend.count(), n);
    }
    assert!(!s.backend.raw_contains(b"ada@example"));
    assert!(!s.backend.raw_contains(b"ada%40example"));
    s.proxy.stop().await;
}
