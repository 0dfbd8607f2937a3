//! A legacy search screen behind fieldseal: a store backend that keeps the
//! JSON it is sent and filters by query parameters (`GET
//! /api/users?email_idx=…` returns the records whose `email_idx` equals
//! it). Through the proxy, over HTTP/1.1 and HTTP/2: a record created with
//! an email is found with `?email=` in several spellings, the backend only
//! ever receives envelopes and the index, and refusals leave it untouched.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

#[derive(Default)]
struct Store {
    records: Vec<Value>,
    /// Every request line and body the store received.
    received: Vec<String>,
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let h = u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex");
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

async fn store_answer(store: &Mutex<Store>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut s = store.lock().expect("store");
    s.received.push(format!(
        "{} {} {}",
        parts.method,
        parts.uri,
        String::from_utf8_lossy(&body)
    ));
    let is_form = parts.headers.get("content-type").is_some_and(|v| {
        v.as_bytes()
            .starts_with(b"application/x-www-form-urlencoded")
    });
    let answer = if parts.method == http::Method::POST && is_form {
        // A PHP/Rails-style create form: each pair becomes a member.
        let mut v = serde_json::Map::new();
        for (k, val) in std::str::from_utf8(&body)
            .expect("utf-8 form")
            .split('&')
            .filter_map(|p| p.split_once('='))
        {
            v.insert(decode(k), Value::String(decode(val)));
        }
        let v = Value::Object(v);
        s.records.push(v.clone());
        v
    } else if parts.method == http::Method::POST {
        let v: Value = serde_json::from_slice(&body).expect("the store gets JSON");
        s.records.push(v.clone());
        v
    } else if let Some(idx) = parts.uri.path().strip_prefix("/api/users/by-email/") {
        let idx = decode(idx);
        let found: Vec<Value> = s
            .records
            .iter()
            .filter(|r| r.get("email_idx").and_then(Value::as_str) == Some(idx.as_str()))
            .cloned()
            .collect();
        Value::Array(found)
    } else {
        let filters: Vec<(String, String)> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect();
        let found: Vec<Value> = s
            .records
            .iter()
            .filter(|r| {
                filters
                    .iter()
                    .all(|(k, v)| r.get(k).and_then(Value::as_str) == Some(v))
            })
            .cloned()
            .collect();
        Value::Array(found)
    };
    let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn start_store() -> (String, Arc<Mutex<Store>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store: Arc<Mutex<Store>> = Arc::default();
    let st = Arc::clone(&store);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let st = Arc::clone(&st);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let st = Arc::clone(&st);
                    async move { Ok::<_, Infallible>(store_answer(&st, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), store)
}

#[tokio::test]
async fn a_record_is_found_by_its_email_and_the_store_never_sees_it() {
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path(), "k1");
    let audit = keys.path().join("audit.log");
    let (url, store) = start_store().await;
    let proxy = TestProxy::start(&format!(
        r#"upstreams:
  store: {{ url: "{url}" }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
audit: {{ sink: "{audit}" }}
routes:
  - name: by-email
    match: {{ path: "/api/users/by-email/{{email}}" }}
    upstream: store
    encrypt: ["$.email", "$.ssn"]
    decrypt: ["$..email", "$..ssn"]
    path_params: {{ email: {{ index: email_idx }} }}
    shadows_ok: [users]
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: store
    encrypt: ["$.email", "$.ssn"]
    decrypt: ["$..email", "$..ssn"]
    index:
      - {{ field: "$.email", into: "$.email_idx", normalize: [trim, lowercase], bits: 64, drop_in_response: true }}
    query:
      email: {{ index: email_idx }}
      ssn: refuse
    form: {{ encrypt: [ssn, email], index: [ {{ field: email, into: email_idx }} ] }}
"#,
        k1 = k1.display(),
        audit = audit.display(),
    ))
    .await;
    let h1 = proxy.h1();
    // A client never chooses an index: a member where one is written, in
    // any spelling, refuses the body, and so does an indexed field that
    // is there twice (each copy would be sealed, one index can't describe
    // both).
    for (c, _) in proxy.clients() {
        for body in [
            r#"{"name": "Ada", "email": " Ada@Example.com", "ssn": "078-05-1120", "email_idx": "forged"}"#,
            r#"{"EmailIdx": null, "name": "Ada"}"#,
            r#"{"email": "a@example.com", "email": "b@example.com"}"#,
            r#"{"email": "a@example.com", "EMAIL": "b@example.com"}"#,
            r#"{"email": ["a@example.com"]}"#,
        ] {
            let resp = bounded(
                "refused",
                c.post(proxy.url("/api/users"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        }
    }
    assert!(
        store.lock().expect("store").received.is_empty(),
        "refusals forwarded"
    );
    let created = bounded(
        "create",
        h1.post(proxy.url("/api/users"))
            .header("content-type", "application/json")
            .body(r#"{"name": "Ada", "email": " Ada@Example.com", "ssn": "078-05-1120"}"#)
            .send(),
    )
    .await
    .expect("sent");
    assert_eq!(created.status(), StatusCode::OK);
    let stored = store.lock().expect("store").records[0].clone();
    let idx = stored["email_idx"]
        .as_str()
        .expect("index written")
        .to_string();
    assert!(idx.starts_with("fsi1:k1:"), "{idx}");
    assert!(stored["email"].as_str().expect("email").starts_with("fs1:"));

    for (c, v) in proxy.clients() {
        for q in [
            "email=ada%40example.com",
            "EMAIL=+ADA@example.COM+",
            "e%6Dail=Ada%40Example.com",
            "Email=ada@example.com&name=Ada",
        ] {
            let resp = bounded(
                "search",
                c.get(proxy.url(&format!("/api/users?{q}"))).send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.version(), v);
            assert_eq!(resp.status(), StatusCode::OK, "{q}");
            let found: Value = bounded("body", resp.json()).await.expect("json");
            let found = found.as_array().expect("array").clone();
            assert_eq!(found.len(), 1, "{q}: {found:?}");
            assert!(found[0].get("email_idx").is_none(), "dropped from answers");
            assert_eq!(
                found[0]["email"],
                json!(" Ada@Example.com"),
                "opened on the way out"
            );
            assert_eq!(found[0]["ssn"], json!("078-05-1120"));
        }
        let none = bounded(
            "search",
            c.get(proxy.url("/api/users?email=bob@example.com")).send(),
        )
        .await
        .expect("sent");
        let none: Value = bounded("body", none.json()).await.expect("json");
        assert_eq!(none, json!([]));
        let before = store.lock().expect("store").received.len();
        for q in ["ssn=078-05-1120", "user[ssn]=078-05-1120", "email=%zz"] {
            let resp = bounded(
                "refused",
                c.get(proxy.url(&format!("/api/users?{q}"))).send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
        }
        assert_eq!(
            store.lock().expect("store").received.len(),
            before,
            "refusals forwarded"
        );
    }
    // A path template: the segment reaches the store as the index.
    for (c, v) in proxy.clients() {
        for p in [
            "/api/users/by-email/ada@example.com",
            "/api/users/by-email/ADA%40Example.com",
            "/api/users/by-email/Ada@Example.COM/",
            "/api/users/by-email/ada@example.com;jsessionid=ada@example.com",
        ] {
            let resp = bounded("by path", c.get(proxy.url(p)).send())
                .await
                .expect("sent");
            assert_eq!(resp.version(), v);
            let status = resp.status();
            let found: Value = bounded("body", resp.json()).await.expect("json");
            assert_eq!(status, StatusCode::OK, "{p}: {found}");
            assert_eq!(found.as_array().map(Vec::len), Some(1), "{p}: {found}");
            assert_eq!(found[0]["email"], json!(" Ada@Example.com"));
            let last = store
                .lock()
                .expect("store")
                .received
                .last()
                .cloned()
                .unwrap_or_default();
            assert!(
                last.starts_with(&format!("GET /api/users/by-email/{idx} ")),
                "{last}"
            );
        }
        let n = store.lock().expect("store").received.len();
        for p in [
            "/api/users/by-email/",
            "/api/users/by-email",
            "/api/users/by-email/ada@example.com/x",
            "/api/users/by-email/%C0%B3",
        ] {
            let resp = bounded("refused", c.get(proxy.url(p)).send())
                .await
                .expect("sent");
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{p}");
        }
        assert_eq!(
            store.lock().expect("store").received.len(),
            n,
            "refusals forwarded"
        );
    }

    // A form post creates a second record, found the same way.
    for (c, v) in proxy.clients() {
        let before = store.lock().expect("store").records.len();
        let resp = bounded(
            "form",
            c.post(proxy.url("/api/users"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("name=Grace&user%5BSSN%5D=123-45-6789&Email=Grace%40Example.org+&email_idx=forged&v={v:?}"))
                .send(),
        )
        .await
        .expect("sent");
        assert_eq!(resp.status(), StatusCode::OK);
        let rec = store.lock().expect("store").records[before].clone();
        assert!(
            rec["user[SSN]"].as_str().expect("ssn").starts_with("fs1:"),
            "{rec}"
        );
        assert!(
            rec["Email"].as_str().expect("email").starts_with("fs1:"),
            "{rec}"
        );
        assert!(
            rec["email_idx"]
                .as_str()
                .expect("index")
                .starts_with("fsi1:k1:"),
            "{rec}"
        );
        assert_eq!(rec["name"], json!("Grace"));
        let found = bounded(
            "search",
            c.get(proxy.url("/api/users?email=grace@example.org&name=Grace"))
                .send(),
        )
        .await
        .expect("sent");
        let found: Value = bounded("body", found.json()).await.expect("json");
        assert!(!found.as_array().expect("array").is_empty(), "{found}");
        // Bodies the route cannot transform are refused with nothing sent.
        let n = store.lock().expect("store").received.len();
        for (ct, body) in [
            ("multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"ssn\"\r\n\r\n123-45-6789\r\n--x--\r\n"),
            ("text/plain", "ssn=123-45-6789"),
            ("application/x-www-form-urlencoded; charset=iso-8859-1", "ssn=123-45-6789"),
            ("application/x-www-form-urlencoded, a+json", "ssn=123-45-6789"),
        ] {
            let resp = bounded("refused", c.post(proxy.url("/api/users")).header("content-type", ct).body(body).send())
                .await
                .expect("sent");
            assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        }
        for body in ["ssn=%zz", "pin=1&ssn=%C0%B3", "card=1&user.ssn[]=%FF"] {
            let resp = bounded(
                "refused",
                c.post(proxy.url("/api/users"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        }
        assert_eq!(
            store.lock().expect("store").received.len(),
            n,
            "refusals forwarded"
        );
    }
    let received = store
        .lock()
        .expect("store")
        .received
        .join("\n")
        .to_lowercase();
    for plain in [
        "ada@example",
        "ada%40example",
        "bob@example",
        "078-05-1120",
        "forged",
        "grace@example",
        "grace%40example",
        "123-45-6789",
    ] {
        assert!(
            !received.contains(plain),
            "the store received {plain}: {received}"
        );
    }
    // Pairs are counted per route, by source and action.
    let (status, metrics) = admin_get(&proxy, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for (route, source, action, want) in [
        ("users", "query", "indexed", 12.0),
        ("users", "query", "refused", 4.0),
        ("users", "query", "sealed", 0.0),
        ("users", "form", "sealed", 4.0),
        ("users", "form", "indexed", 2.0),
        ("by-email", "path", "indexed", 8.0),
        ("by-email", "path", "refused", 0.0),
    ] {
        let n = metric_value(
            &metrics,
            "fieldseal_pairs_total",
            &[("route", route), ("source", source), ("action", action)],
        );
        assert_eq!(n, Some(want), "{route} {source} {action}:\n{metrics}");
    }
    proxy.stop().await;
    // ... and named by rule, never by value, in the audit record.
    let audit = std::fs::read_to_string(&audit).expect("audit log");
    let mut fields = std::collections::BTreeSet::new();
    for line in audit.lines() {
        let v: Value = serde_json::from_str(line).expect("audit line");
        for f in v["fields"].as_array().expect("fields") {
            fields.insert(f.as_str().expect("name").to_string());
        }
    }
    for want in ["query:email", "form:ssn", "form:email", "path:email"] {
        assert!(fields.contains(want), "{want}: {fields:?}");
    }
    let lower = audit.to_lowercase();
    assert!(!lower.contains("ada@") && !lower.contains("grace@") && !lower.contains("ssn]"));
}

/// Index keys follow the route's key scope: on a `key_scope: tenant` route
/// each tenant's indexes are keyed by its own data key. The store filters
/// by index only (it knows nothing of tenants), so what separates the
/// tenants here is the index itself: equal emails of two tenants get
/// different indexes, and one tenant's search never finds another's record.
#[tokio::test]
async fn tenant_indexes_find_only_the_tenants_own_records() {
    use common::jwt::*;
    let dir = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(dir.path(), "k1");
    let signer = ec_key("dev-1");
    std::fs::write(
        dir.path().join("jwks.json"),
        json!({"keys": [signer.jwk]}).to_string(),
    )
    .expect("jwks");
    let (url, store) = start_store().await;
    let d = dir.path().display();
    let yaml = format!(
        r#"upstreams:
  store: {{ url: "{url}" }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
identity:
  jwt:
    - name: dev
      issuer: "{ISSUER}"
      audiences: [{AUDIENCE}]
      algorithms: [ES256]
      jwks_file: "{d}/jwks.json"
      tenant_claim: tid
key_store:
  sqlite: "{d}/keys.db"
routes:
  - name: by-email
    match: {{ path: "/api/users/by-email/{{email}}" }}
    upstream: store
    auth: required
    key_scope: tenant
    encrypt: ["$.email", "$.ssn"]
    decrypt: ["$..email", "$..ssn"]
    path_params: {{ email: {{ index: email_idx }} }}
    shadows_ok: [users]
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: store
    auth: required
    key_scope: tenant
    encrypt: ["$.email", "$.ssn"]
    decrypt: ["$..email", "$..ssn"]
    index:
      - {{ field: "$.email", into: "$.email_idx", normalize: [trim, lowercase], bits: 64, drop_in_response: true }}
    query:
      email: {{ index: email_idx }}
      name: seal
      ssn: refuse
    form: {{ encrypt: [ssn, email], index: [ {{ field: email, into: email_idx }} ] }}
"#,
        k1 = k1.display()
    );
    let proxy = TestProxy::start(&yaml).await;
    let token = |tid: &str| {
        let mut c = claims(&format!("clerk-of-{tid}"));
        c["tid"] = json!(tid);
        sign(&signer, &c)
    };
    let (acme, globex, initech) = (token("acme"), token("globex"), token("initech"));
    let h1 = proxy.h1();
    // The same email, normalized alike, in two tenants.
    for (tok, email, ssn) in [
        (&acme, " Ada@Example.com", "078-05-1120"),
        (&globex, "ada@example.com ", "219-09-9999"),
    ] {
        let forged = bounded(
            "forged",
            h1.post(proxy.url("/api/users"))
                .bearer_auth(tok)
                .json(&json!({"email": email, "ssn": ssn, "email_idx": "forged"}))
                .send(),
        )
        .await
        .expect("sent");
        assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
        let resp = bounded(
            "create",
            h1.post(proxy.url("/api/users"))
                .bearer_auth(tok)
                .json(&json!({"email": email, "ssn": ssn}))
                .send(),
        )
        .await
        .expect("sent");
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(
        store.lock().expect("store").records.len(),
        2,
        "no forged record"
    );
    let records = store.lock().expect("store").records.clone();
    let idx = |r: &Value| r["email_idx"].as_str().expect("index").to_string();
    let (ia, ig) = (idx(&records[0]), idx(&records[1]));
    assert!(
        ia.starts_with("fsi2:") && ig.starts_with("fsi2:"),
        "{ia} {ig}"
    );
    let mac = |s: &str| s.rsplit(':').next().expect("mac").to_string();
    assert_ne!(ia, ig);
    assert_ne!(mac(&ia), mac(&ig), "equal values, unrelated indexes");
    for r in &records {
        assert!(r["email"].as_str().expect("email").starts_with("fs2:"));
    }

    for (c, v) in proxy.clients() {
        for (tok, want_ssn) in [(&acme, "078-05-1120"), (&globex, "219-09-9999")] {
            for q in [
                "email=ada%40example.com",
                "EMAIL=+ADA@example.COM+",
                "e%6Dail=Ada%40Example.com",
            ] {
                let resp = bounded(
                    "search",
                    c.get(proxy.url(&format!("/api/users?{q}")))
                        .bearer_auth(tok)
                        .send(),
                )
                .await
                .expect("sent");
                assert_eq!(resp.version(), v);
                assert_eq!(resp.status(), StatusCode::OK, "{q}");
                let found: Value = bounded("body", resp.json()).await.expect("json");
                let found = found.as_array().expect("array").clone();
                assert_eq!(
                    found.len(),
                    1,
                    "{q}: only the tenant's own record: {found:?}"
                );
                assert_eq!(found[0]["ssn"], json!(want_ssn));
                assert!(found[0].get("email_idx").is_none());
            }
            let resp = bounded(
                "by path",
                c.get(proxy.url("/api/users/by-email/ADA%40example.com"))
                    .bearer_auth(tok)
                    .send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.status(), StatusCode::OK);
            let found: Value = bounded("body", resp.json()).await.expect("json");
            assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
            assert_eq!(found[0]["ssn"], json!(want_ssn));
        }
        // A third tenant finds nothing: neither record's index is its own.
        let resp = bounded(
            "search",
            c.get(proxy.url("/api/users?email=ada@example.com"))
                .bearer_auth(&initech)
                .send(),
        )
        .await
        .expect("sent");
        assert_eq!(resp.status(), StatusCode::OK);
        let found: Value = bounded("body", resp.json()).await.expect("json");
        assert_eq!(found, json!([]));
        // Without a token nothing is forwarded.
        let n = store.lock().expect("store").received.len();
        let resp = bounded(
            "anonymous",
            c.get(proxy.url("/api/users?email=ada@example.com")).send(),
        )
        .await
        .expect("sent");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(store.lock().expect("store").received.len(), n);
    }

    // A form post and a sealed query parameter: under the tenant's key.
    let resp = bounded(
        "form",
        h1.post(proxy.url("/api/users"))
            .bearer_auth(&globex)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("Email=Grace%40Example.org&ssn=123-45-6789")
            .send(),
    )
    .await
    .expect("sent");
    assert_eq!(resp.status(), StatusCode::OK);
    let rec = store.lock().expect("store").records[2].clone();
    assert!(
        rec["Email"].as_str().expect("email").starts_with("fs2:"),
        "{rec}"
    );
    assert!(
        rec["ssn"].as_str().expect("ssn").starts_with("fs2:"),
        "{rec}"
    );
    let gi = idx(&rec);
    assert_eq!(
        gi.rsplit_once(':').map(|x| x.0),
        ig.rsplit_once(':').map(|x| x.0),
        "globex's key"
    );
    for (tok, n) in [(&globex, 1), (&acme, 0)] {
        let resp = bounded(
            "search",
            h1.get(proxy.url("/api/users?email=grace@example.org"))
                .bearer_auth(tok)
                .send(),
        )
        .await
        .expect("sent");
        let found: Value = bounded("body", resp.json()).await.expect("json");
        assert_eq!(found.as_array().map(Vec::len), Some(n), "{found}");
    }
    let resp = bounded(
        "sealed parameter",
        h1.get(proxy.url("/api/users?name=Grace+Hopper"))
            .bearer_auth(&acme)
            .send(),
    )
    .await
    .expect("sent");
    assert_eq!(resp.status(), StatusCode::OK);
    let last = store
        .lock()
        .expect("store")
        .received
        .last()
        .cloned()
        .unwrap_or_default();
    assert!(last.starts_with("GET /api/users?name=fs2%3A"), "{last}");

    let received = store
        .lock()
        .expect("store")
        .received
        .join("\n")
        .to_lowercase();
    for plain in [
        "ada@example",
        "ada%40example",
        "078-05-1120",
        "219-09-9999",
        "forged",
        "grace@example",
        "grace%40example",
        "grace+hopper",
        "123-45-6789",
    ] {
        assert!(
            !received.contains(plain),
            "the store received {plain}: {received}"
        );
    }
    proxy.stop().await;

    // The backfill derives the same tenant-keyed values, the tenant read
    // from each record: from an envelope and from plaintext.
    let cfg = dir.path().join("fieldseal.yaml");
    std::fs::write(
        &cfg,
        format!("listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{yaml}"),
    )
    .expect("config");
    let cfg = cfg.to_str().expect("path");
    let input = format!(
        "{}\n{}\n",
        json!({"tenant": {"id": "acme"}, "email": records[0]["email"]}),
        json!({"tenant": {"id": "globex"}, "email": "ADA@example.com", "email_idx": "stale"}),
    );
    let args = [
        "index",
        "-c",
        cfg,
        "-r",
        "users",
        "--tenant-path",
        "$.tenant.id",
    ];
    let out = run_bin(&args, input.as_bytes());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(docs[0]["email_idx"], json!(ia));
    assert_eq!(docs[1]["email_idx"], json!(ig));
    // Another tenant's envelope does not open under this record's tenant;
    // a record without its tenant, or no --tenant-path, is not indexed.
    for (input, args) in [
        (
            json!({"tenant": {"id": "globex"}, "email": records[0]["email"]}),
            &args[..],
        ),
        (json!({"email": "ada@example.com"}), &args[..]),
        (json!({"tenant": {"id": "acme"}, "email": "a"}), &args[..5]),
    ] {
        let out = run_bin(args, format!("{input}\n").as_bytes());
        assert!(!out.status.success(), "{input}");
        assert!(out.stdout.is_empty(), "{input}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("ada@"), "{stderr}");
    }
}
