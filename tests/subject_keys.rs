//! Per-subject keys from a verified identity, end to end: real TLS clients,
//! tokens signed with a generated EC key, the embedded SQLite key store in
//! a temp dir, and a backend that stores records by path and answers reads
//! with exactly the bytes it stored.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::jwt::*;
use common::*;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Stores the body of every PUT at its path; a GET answers it back. Keeps
/// every raw body it was sent.
struct RecordStore {
    url: String,
    records: Arc<Mutex<HashMap<String, Bytes>>>,
    received: Arc<Mutex<Vec<Bytes>>>,
}

impl RecordStore {
    async fn start() -> RecordStore {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let records: Arc<Mutex<HashMap<String, Bytes>>> = Arc::default();
        let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let (r, rx) = (records.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (r, rx) = (r.clone(), rx.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (r, rx) = (r.clone(), rx.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let method = req.method().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            rx.lock().unwrap().push(body.clone());
                            let out = if method == Method::PUT {
                                r.lock().unwrap().insert(path, body);
                                Bytes::from_static(b"{\"stored\":true}")
                            } else {
                                r.lock()
                                    .unwrap()
                                    .get(&path)
                                    .cloned()
                                    .unwrap_or(Bytes::from_static(b"{}"))
                            };
                            let mut resp = http::Response::new(Full::new(out));
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        RecordStore {
            url: format!("http://{addr}"),
            records,
            received,
        }
    }

    fn stored(&self, path: &str) -> Bytes {
        self.records.lock().unwrap().get(path).cloned().unwrap()
    }

    fn put(&self, path: &str, body: Bytes) {
        self.records.lock().unwrap().insert(path.into(), body);
    }

    fn all_received(&self) -> Vec<u8> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.to_vec())
            .collect()
    }
}

struct World {
    proxy: TestProxy,
    backend: RecordStore,
    signer: SigningKey,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(route_extra: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let k1 = key_file(dir.path(), "k1");
        let signer = ec_key("dev-1");
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [signer.jwk]}).to_string()).unwrap();
        let db = dir.path().join("keys.db");
        let backend = RecordStore::start().await;
        let yaml = format!(
            r#"upstreams:
  legacy: {{ url: "{url}" }}
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
      jwks_file: "{jwks}"
key_store:
  sqlite: "{db}"
  cache_ttl: 60s
routes:
  - name: records
    match: {{ path_prefix: /api/records }}
    upstream: legacy
    auth: required
    key_scope: subject
    encrypt: ["$.ssn"]
    decrypt: ["$.ssn"]
{route_extra}"#,
            url = backend.url,
            k1 = k1.display(),
            jwks = jwks.display(),
            db = db.display(),
        );
        let proxy = TestProxy::start(&yaml).await;
        World {
            proxy,
            backend,
            signer,
            _dir: dir,
        }
    }

    fn token(&self, sub: &str) -> String {
        sign(&self.signer, &claims(sub))
    }

    async fn put(&self, sub: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let rb = self
            .proxy
            .h1()
            .put(self.proxy.url(path))
            .bearer_auth(self.token(sub))
            .json(body);
        answer(rb).await
    }

    async fn get(&self, sub: &str, path: &str) -> (StatusCode, Value) {
        let rb = self
            .proxy
            .h1()
            .get(self.proxy.url(path))
            .bearer_auth(self.token(sub));
        answer(rb).await
    }
}

async fn answer(rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = bounded("request", rb.send()).await.expect("sent");
    let status = resp.status();
    let body = bounded("body", resp.bytes()).await.expect("body");
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

const SSN_A: &str = "123-45-6789";
const SSN_B: &str = "987-65-4321";

#[tokio::test]
async fn a_subject_reads_its_own_data_and_no_other_subject_ever_sees_it() {
    let w = World::start("    on_foreign_subject: \"null\"\n").await;

    // A writes and reads back plaintext.
    let (s, _) = w
        .put(
            "alice",
            "/api/records/a",
            &json!({"name": "A", "ssn": SSN_A}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = w.get("alice", "/api/records/a").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"name": "A", "ssn": SSN_A}));

    // The backend holds an fs2 envelope: no plaintext, no raw subject id, no key.
    let stored: Value = serde_json::from_slice(&w.backend.stored("/api/records/a")).unwrap();
    let env = stored["ssn"].as_str().unwrap().to_string();
    assert!(env.starts_with("fs2:"), "{env}");
    let raw = String::from_utf8_lossy(&w.backend.all_received()).into_owned();
    assert!(!raw.contains(SSN_A), "plaintext reached the backend");
    assert!(
        !raw.contains("alice"),
        "the raw subject id reached the backend"
    );
    let (reference, version) = fieldseal::crypto::envelope_subject(&env).unwrap();
    assert_eq!(version, 1);
    assert_eq!(reference.len(), 22);
    // The key store holds the key only wrapped: its bytes are not the data key
    // (which would open the envelope) and the file has no plaintext either.
    let db = std::fs::read(w._dir.path().join("keys.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains("alice"));

    // B reads A's record: on_foreign_subject null, never A's plaintext.
    let (s, v) = w.get("bob", "/api/records/a").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ssn"], Value::Null, "{v}");
    assert_eq!(v["name"], "A");

    // B posts A's copied envelope into B's own record, then reads it.
    let (s, _) = w.put("bob", "/api/records/b", &json!({"ssn": env})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = w.get("bob", "/api/records/b").await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(v["ssn"], json!(SSN_A), "B read A's plaintext");
    assert_eq!(v["ssn"], json!(env), "B gets back the string B sent");
    // It was re-sealed under B's own key, not stored as A's envelope.
    let b_stored: Value = serde_json::from_slice(&w.backend.stored("/api/records/b")).unwrap();
    let b_env = b_stored["ssn"].as_str().unwrap();
    let (b_ref, _) = fieldseal::crypto::envelope_subject(b_env).unwrap();
    assert_ne!(b_ref, reference);

    // B's own data works, and A cannot read it.
    let (s, _) = w
        .put("bob", "/api/records/b2", &json!({"ssn": SSN_B}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(w.get("bob", "/api/records/b2").await.1["ssn"], json!(SSN_B));
    assert_eq!(
        w.get("alice", "/api/records/b2").await.1["ssn"],
        Value::Null
    );

    // A legacy fs1 envelope pasted into a write is not trusted as genuine on
    // a subject-scoped route: it is sealed as the string it is.
    let ring = file_ring("k1", &[("k1", &w._dir.path().join("k1.key"))]);
    let fs1 = ring.seal(&json!(SSN_A), "ssn").unwrap();
    let (s, _) = w.put("bob", "/api/records/b3", &json!({"ssn": fs1})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(w.get("bob", "/api/records/b3").await.1["ssn"], json!(fs1));
}

#[tokio::test]
async fn foreign_subject_error_is_403_and_old_fs1_data_stays_readable() {
    let w = World::start("").await;
    let (s, _) = w
        .put("alice", "/api/records/a", &json!({"ssn": SSN_A}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = w.get("bob", "/api/records/a").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(!v.to_string().contains(SSN_A));

    // Data sealed before the route became subject-scoped (fs1) still opens.
    let ring = file_ring("k1", &[("k1", &w._dir.path().join("k1.key"))]);
    let fs1 = ring.seal(&json!(SSN_B), "ssn").unwrap();
    w.backend.put(
        "/api/records/legacy",
        Bytes::from(json!({"ssn": fs1}).to_string()),
    );
    let (s, v) = w.get("alice", "/api/records/legacy").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ssn"], json!(SSN_B));
}

#[tokio::test]
async fn a_warm_request_makes_no_store_round_trip_and_the_first_write_creates_one_key() {
    let w = World::start("").await;
    let service = w.proxy.proxy.key_service().expect("key service");
    let before = service.stats();
    w.put("carol", "/api/records/c", &json!({"ssn": SSN_A}))
        .await;
    let after_first = service.stats();
    assert_eq!(after_first.created - before.created, 1);
    assert_eq!(after_first.store_reads - before.store_reads, 1);
    for i in 0..5 {
        let (s, _) = w
            .put(
                "carol",
                &format!("/api/records/c{i}"),
                &json!({"ssn": SSN_A}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            w.get("carol", &format!("/api/records/c{i}")).await.1["ssn"],
            json!(SSN_A)
        );
    }
    let warm = service.stats();
    assert_eq!(
        warm.store_reads, after_first.store_reads,
        "warm requests read the store"
    );
    assert_eq!(warm.created, after_first.created);
    assert!(warm.hits >= after_first.hits + 10);
    // One key in the store for carol.
    let list = service.store().list().unwrap();
    let with_keys: Vec<_> = list.iter().filter(|s| !s.versions.is_empty()).collect();
    // carol + the reference secret.
    assert_eq!(with_keys.len(), 2, "{list:?}");
}

#[tokio::test]
async fn subject_scope_needs_a_verified_token() {
    let w = World::start("").await;
    let resp = bounded(
        "no token",
        w.proxy
            .h1()
            .put(w.proxy.url("/api/records/x"))
            .json(&json!({"ssn": SSN_A}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(w.backend.all_received().is_empty());
}
