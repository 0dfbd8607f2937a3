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

const BIN: &str = env!("CARGO_BIN_EXE_fieldseal");
const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// The files of one deployment: ring key files, the JWKS, the key store,
/// the admin token. Proxies started on it share them (and the backend).
struct Site {
    dir: tempfile::TempDir,
    signer: SigningKey,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        key_file(dir.path(), "k1");
        key_file(dir.path(), "k2");
        let signer = ec_key("dev-1");
        std::fs::write(
            dir.path().join("jwks.json"),
            json!({"keys": [signer.jwk]}).to_string(),
        )
        .unwrap();
        let token = dir.path().join("admin.token");
        std::fs::write(&token, ADMIN_TOKEN).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Site { dir, signer }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The config after `listen`/`admin`: `ring` is the `keys` section body.
    fn yaml(&self, backend: &str, ring: &str, store_extra: &str, route_extra: &str) -> String {
        let d = self.dir.path().display();
        format!(
            r#"upstreams:
  legacy: {{ url: "{backend}" }}
keys:
{ring}
identity:
  jwt:
    - name: dev
      issuer: "{ISSUER}"
      audiences: [{AUDIENCE}]
      algorithms: [ES256]
      jwks_file: "{d}/jwks.json"
key_store:
  sqlite: "{d}/keys.db"
{store_extra}
routes:
  - name: records
    match: {{ path_prefix: /api/records }}
    upstream: legacy
    auth: required
    key_scope: subject
    encrypt: ["$.ssn"]
    decrypt: ["$.ssn"]
{route_extra}"#
        )
    }

    fn ring(&self, active: &str, ids: &[&str]) -> String {
        let d = self.dir.path().display();
        let mut out = format!("  active: {active}\n  ring:\n");
        for id in ids {
            out.push_str(&format!("    - {{ id: {id}, file: \"{d}/{id}.key\" }}\n"));
        }
        out
    }

    /// Writes a full config file (for the CLI) and returns its path.
    fn config_file(&self, name: &str, yaml: &str) -> std::path::PathBuf {
        let path = self.path(name);
        let full = format!(
            "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{yaml}"
        );
        std::fs::write(&path, full).unwrap();
        path
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(BIN)
            .args(args)
            .output()
            .expect("cli runs");
        assert!(
            out.status.success(),
            "fieldseal {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

struct World {
    proxy: TestProxy,
    backend: RecordStore,
    site: Site,
}

impl World {
    async fn start(route_extra: &str) -> World {
        World::start_with("", route_extra).await
    }

    async fn start_with(store_extra: &str, route_extra: &str) -> World {
        let site = Site::new();
        let backend = RecordStore::start().await;
        let yaml = site.yaml(
            &backend.url,
            &site.ring("k1", &["k1"]),
            store_extra,
            route_extra,
        );
        let token = format!(", token_file: \"{}\"", site.path("admin.token").display());
        let proxy = TestProxy::start_admin(&yaml, "127.0.0.1:0", &token).await;
        World {
            proxy,
            backend,
            site,
        }
    }

    fn token(&self, sub: &str) -> String {
        sign(&self.site.signer, &claims(sub))
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

    async fn erase(&self, subject: &str, token: Option<&str>) -> reqwest::Response {
        let mut rb = reqwest::Client::new()
            .post(self.proxy.admin_url("/subjects/erase"))
            .json(&json!({"subject": subject, "requested_by": "ticket-42"}));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        bounded("erase", rb.send()).await.unwrap()
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
    let db = std::fs::read(w.site.path("keys.db")).unwrap();
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
    let ring = file_ring("k1", &[("k1", &w.site.path("k1.key"))]);
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
    let ring = file_ring("k1", &[("k1", &w.site.path("k1.key"))]);
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

#[tokio::test]
async fn erase_destroys_the_keys_reads_follow_on_erased_and_writes_the_tombstone() {
    let w = World::start("    on_erased: \"null\"\n").await;
    let (s, _) = w
        .put(
            "alice",
            "/api/records/a",
            &json!({"name": "A", "ssn": SSN_A}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        w.get("alice", "/api/records/a").await.1["ssn"],
        json!(SSN_A)
    );
    let before = w.backend.stored("/api/records/a");

    // The admin endpoint needs the token.
    assert_eq!(
        w.erase("alice", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        w.erase("alice", Some("wrong-token-wrong-token"))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let resp = w.erase("alice", Some(ADMIN_TOKEN)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["versions_destroyed"], 1);
    let reference = v["reference"].as_str().unwrap().to_string();
    assert!(!reference.contains("alice"));

    // Reads: on_erased null; the backend's bytes are unchanged.
    let (s, v) = w.get("alice", "/api/records/a").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"name": "A", "ssn": null}));
    assert_eq!(w.backend.stored("/api/records/a"), before);

    // A later write is refused (on_erased_write: refuse), nothing forwarded.
    let n = w.backend.received.lock().unwrap().len();
    let (s, v) = w
        .put("alice", "/api/records/a2", &json!({"ssn": SSN_B}))
        .await;
    assert_eq!(s, StatusCode::GONE, "{v}");
    assert_eq!(w.backend.received.lock().unwrap().len(), n);

    // Others are untouched; the store shows the tombstone; metrics count it.
    let (s, _) = w.put("bob", "/api/records/b", &json!({"ssn": SSN_B})).await;
    assert_eq!(s, StatusCode::OK);
    let list = w.proxy.proxy.key_service().unwrap().store().list().unwrap();
    let t = list.iter().find(|s| s.reference == reference).unwrap();
    assert!(t.versions.is_empty() && t.erased_at.is_some());
    assert_eq!(t.erased_by.as_deref(), Some("admin:ticket-42"));
    let metrics = reqwest::get(w.proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("fieldseal_subject_erasures_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn after_erasure_new_key_policy_and_marker_and_410() {
    let w = World::start(
        "    on_erased: marker\n    erased_marker: \"[gone]\"\n    on_erased_write: new_key\n",
    )
    .await;
    w.put("alice", "/api/records/old", &json!({"ssn": SSN_A}))
        .await;
    assert_eq!(
        w.erase("alice", Some(ADMIN_TOKEN)).await.status(),
        StatusCode::OK
    );
    // A fresh key for new data; the old data stays erased (marker).
    let (s, _) = w
        .put("alice", "/api/records/new", &json!({"ssn": SSN_B}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        w.get("alice", "/api/records/new").await.1["ssn"],
        json!(SSN_B)
    );
    assert_eq!(
        w.get("alice", "/api/records/old").await.1["ssn"],
        json!("[gone]")
    );
    let stored: Value = serde_json::from_slice(&w.backend.stored("/api/records/new")).unwrap();
    assert_eq!(
        fieldseal::crypto::envelope_subject(stored["ssn"].as_str().unwrap())
            .unwrap()
            .1,
        2
    );

    // on_erased: error (the default) answers 410.
    let w = World::start("").await;
    w.put("carol", "/api/records/c", &json!({"ssn": SSN_A}))
        .await;
    assert_eq!(
        w.erase("carol", Some(ADMIN_TOKEN)).await.status(),
        StatusCode::OK
    );
    let (s, v) = w.get("carol", "/api/records/c").await;
    assert_eq!(s, StatusCode::GONE, "{v}");
    assert!(!v.to_string().contains(SSN_A));
}

#[tokio::test]
async fn a_cli_erase_from_another_process_is_in_force_within_the_cache_ttl() {
    let w = World::start_with("  cache_ttl: 1s\n", "    on_erased: \"null\"\n").await;
    w.put("dave", "/api/records/d", &json!({"ssn": SSN_A}))
        .await;
    assert_eq!(w.get("dave", "/api/records/d").await.1["ssn"], json!(SSN_A));
    let yaml = w
        .site
        .yaml(&w.backend.url, &w.site.ring("k1", &["k1"]), "", "");
    let cfg = w.site.config_file("cli.yaml", &yaml);
    let out = w.site.cli(&[
        "subjects",
        "erase",
        "dave",
        "--config",
        cfg.to_str().unwrap(),
        "--requested-by",
        "dpo",
    ]);
    assert!(out.contains("erased (1 key versions destroyed)"), "{out}");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(w.get("dave", "/api/records/d").await.1["ssn"], Value::Null);
    let list = w
        .site
        .cli(&["subjects", "list", "--config", cfg.to_str().unwrap()]);
    assert!(
        list.contains("erased") && list.contains("cli:dpo"),
        "{list}"
    );
    assert!(!list.contains("dave"));
}

#[tokio::test]
async fn the_store_failing_gives_503_for_uncached_subjects_and_recovers() {
    let w = World::start("").await;
    w.put("erin", "/api/records/e", &json!({"ssn": SSN_A}))
        .await;
    // The store breaks under the proxy (its table vanishes).
    let side = rusqlite::Connection::open(w.site.path("keys.db")).unwrap();
    side.execute_batch("ALTER TABLE fieldseal_data_keys RENAME TO broken")
        .unwrap();
    let n = w.backend.received.lock().unwrap().len();
    let (s, v) = w
        .put("frank", "/api/records/f", &json!({"ssn": SSN_B}))
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(
        w.backend.received.lock().unwrap().len(),
        n,
        "forwarded while the store is down"
    );
    assert!(!String::from_utf8_lossy(&w.backend.all_received()).contains(SSN_B));
    // /readyz says why.
    let r = reqwest::get(w.proxy.admin_url("/readyz")).await.unwrap();
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["checks"]["key_store"]["status"], "failed", "{ready}");
    // A cached subject keeps working.
    assert_eq!(w.get("erin", "/api/records/e").await.1["ssn"], json!(SSN_A));
    // The store comes back.
    side.execute_batch("ALTER TABLE broken RENAME TO fieldseal_data_keys")
        .unwrap();
    let (s, _) = w
        .put("frank", "/api/records/f", &json!({"ssn": SSN_B}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        w.get("frank", "/api/records/f").await.1["ssn"],
        json!(SSN_B)
    );
}

#[tokio::test]
async fn rotating_the_ring_rewraps_every_subject_key_and_all_data_still_reads() {
    let site = Site::new();
    let backend = RecordStore::start().await;
    let yaml = site.yaml(&backend.url, &site.ring("k1", &["k1"]), "", "");
    let proxy = TestProxy::start(&yaml).await;
    let subjects = ["s1", "s2", "s3"];
    for (i, s) in subjects.iter().enumerate() {
        let rb = proxy
            .h1()
            .put(proxy.url(&format!("/api/records/{i}")))
            .bearer_auth(sign(&site.signer, &claims(s)))
            .json(&json!({"ssn": format!("{SSN_A}-{i}")}));
        assert_eq!(answer(rb).await.0, StatusCode::OK);
    }
    proxy.stop().await;
    let stored_before = backend.all_received();

    // k2 becomes active; rewrap moves every stored key (and the reference secret) onto it.
    let both = site.yaml(&backend.url, &site.ring("k2", &["k1", "k2"]), "", "");
    let cfg = site.config_file("rotate.yaml", &both);
    let out = site.cli(&["subjects", "rewrap", "--config", cfg.to_str().unwrap()]);
    assert!(out.starts_with("4 keys rewrapped under k2"), "{out}");
    let again = site.cli(&["subjects", "rewrap", "--config", cfg.to_str().unwrap()]);
    assert!(
        again.starts_with("0 keys rewrapped under k2, 4 already"),
        "{again}"
    );

    // k1 removed: every record still reads, the backend's data untouched.
    let only_k2 = site.yaml(&backend.url, &site.ring("k2", &["k2"]), "", "");
    let proxy = TestProxy::start(&only_k2).await;
    for (i, s) in subjects.iter().enumerate() {
        let rb = proxy
            .h1()
            .get(proxy.url(&format!("/api/records/{i}")))
            .bearer_auth(sign(&site.signer, &claims(s)));
        let (status, v) = answer(rb).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["ssn"], json!(format!("{SSN_A}-{i}")));
    }
    assert_eq!(
        backend.all_received()[..stored_before.len()],
        stored_before[..]
    );
}

#[test]
fn a_subject_route_refuses_pairs_and_indexes_keyed_by_the_deployment() {
    let site = Site::new();
    let ring = site.ring("k1", &["k1"]);
    let load = |route_extra: &str| {
        let yaml = site.yaml("http://127.0.0.1:9", &ring, "", route_extra);
        let full = format!(
            "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{yaml}"
        );
        fieldseal::config::Config::from_yaml(&full, &site.path("fieldseal.yaml"))
    };
    assert!(load("").is_ok(), "{:?}", load("").err());
    for extra in [
        "    form: { encrypt: [ssn] }\n",
        "    query: { ssn: seal }\n",
        "    index: [ { field: \"$.ssn\", into: \"$.ssn_idx\" } ]\n",
        "    index: [ { field: \"$.ssn\", into: \"$.ssn_idx\" } ]\n    query: { ssn: { index: ssn_idx } }\n",
    ] {
        let e = load(extra).expect_err(extra).to_string();
        assert!(e.contains("deployment's key"), "{extra}: {e}");
    }
    // Refusing a parameter binds it to no key: allowed.
    assert!(load("    query: { ssn: refuse }\n").is_ok());
}

// ---- read_any_subject: roles that read every subject's data -------------

/// The route of `World` with a support role, on_foreign_subject null, and
/// the audit log in the site's directory (`audit_extra` adds to it).
async fn support_world(audit_extra: &str, sink: Option<&str>) -> World {
    World::start_with_site(|site| {
        let sink = sink.map_or_else(
            || site.path("audit.log").display().to_string(),
            str::to_owned,
        );
        (
            format!("audit:\n  sink: \"{sink}\"\n  key: k1\n{audit_extra}"),
            "    on_foreign_subject: \"null\"\n    on_erased: \"null\"\n    read_any_subject:\n      - { claim: roles, values: [support, dpo] }\n".to_string(),
        )
    })
    .await
}

impl World {
    /// `World::start_with`, with both extras computed from the site.
    async fn start_with_site(extras: impl FnOnce(&Site) -> (String, String)) -> World {
        World::start_edited(extras, |y| y).await
    }

    /// `start_with_site`, the config then passed through `edit`.
    async fn start_edited(
        extras: impl FnOnce(&Site) -> (String, String),
        edit: impl FnOnce(String) -> String,
    ) -> World {
        let site = Site::new();
        let backend = RecordStore::start().await;
        let (store_extra, route_extra) = extras(&site);
        let yaml = edit(site.yaml(
            &backend.url,
            &site.ring("k1", &["k1"]),
            &store_extra,
            &route_extra,
        ));
        let token = format!(", token_file: \"{}\"", site.path("admin.token").display());
        let proxy = TestProxy::start_admin(&yaml, "127.0.0.1:0", &token).await;
        World {
            proxy,
            backend,
            site,
        }
    }

    async fn get_with(&self, token: &str, path: &str) -> (StatusCode, Value) {
        answer(self.proxy.h1().get(self.proxy.url(path)).bearer_auth(token)).await
    }

    fn token_with(&self, sub: &str, extra: Value) -> String {
        let mut c = claims(sub);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(&self.site.signer, &c)
    }

    fn reference(&self, sub: &str) -> String {
        self.proxy
            .proxy
            .key_service()
            .unwrap()
            .reference(fieldseal::crypto::RefScope::Subject, None, sub)
            .unwrap()
    }

    fn audit_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.site.path("audit.log")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn metrics(&self) -> String {
        reqwest::get(self.proxy.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_support_role_reads_any_subject_and_every_read_is_audited_by_reference() {
    let w = support_world("", None).await;
    let (s, _) = w
        .put(
            "alice",
            "/api/records/a",
            &json!({"name": "A", "ssn": SSN_A}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = w
        .put(
            "carol",
            "/api/records/c",
            &json!({"name": "C", "ssn": SSN_B}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Without the role: on_foreign_subject, as before.
    assert_eq!(w.get("bob", "/api/records/a").await.1["ssn"], Value::Null);
    assert!(w
        .audit_lines()
        .iter()
        .all(|l| l.get("reader").is_none() && l.get("subjects").is_none()));

    // With it, as an array or as a plain string: plaintext.
    let sam = w.token_with("sam", json!({"roles": ["viewer", "support"]}));
    let (s, v) = w.get_with(&sam, "/api/records/a").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"name": "A", "ssn": SSN_A}));
    let dora = w.token_with("dora", json!({"roles": "dpo"}));
    let (s, v) = w.get_with(&dora, "/api/records/c").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ssn"], json!(SSN_B));

    // Each read is one audit line naming reader and data subject by
    // reference; no raw subject id, no value, and the chain verifies.
    let lines = w.audit_lines();
    let reads: Vec<&Value> = lines.iter().filter(|l| l.get("reader").is_some()).collect();
    assert_eq!(reads.len(), 2, "{lines:?}");
    assert_eq!(reads[0]["reader"], json!(w.reference("sam")));
    assert_eq!(reads[0]["subjects"], json!([w.reference("alice")]));
    assert_eq!(reads[1]["reader"], json!(w.reference("dora")));
    assert_eq!(reads[1]["subjects"], json!([w.reference("carol")]));
    let text = std::fs::read_to_string(w.site.path("audit.log")).unwrap();
    for secret in ["alice", "carol", "sam", "dora", SSN_A, SSN_B] {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }
    let ring = file_ring("k1", &[("k1", &w.site.path("k1.key"))]);
    let report = fieldseal::audit::verify(std::io::Cursor::new(text.as_bytes()), |kid| {
        ring.derive_subkey(kid, fieldseal::audit::KEY_PURPOSE)
    })
    .expect("the chain verifies");
    assert_eq!(report.lines, lines.len() as u64);
    let m = w.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "fieldseal_role_subject_reads_total",
            &[("route", "records")]
        ),
        Some(2.0),
        "{m}"
    );

    // A role holder reading its own data, or a record with no envelope of
    // another subject, is no cross-subject read.
    let (s, _) = w
        .put_with(&sam, "/api/records/s", &json!({"ssn": SSN_B}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        w.get_with(&sam, "/api/records/s").await.1["ssn"],
        json!(SSN_B)
    );
    assert_eq!(
        w.audit_lines()
            .iter()
            .filter(|l| l.get("reader").is_some())
            .count(),
        2
    );

    // An erased subject reads as on_erased for the role holder too.
    assert_eq!(
        w.erase("alice", Some(ADMIN_TOKEN)).await.status(),
        StatusCode::OK
    );
    let (s, v) = w.get_with(&sam, "/api/records/a").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ssn"], Value::Null, "{v}");
    assert_eq!(v["name"], "A");
}

impl World {
    async fn put_with(&self, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        answer(
            self.proxy
                .h1()
                .put(self.proxy.url(path))
                .bearer_auth(token)
                .json(body),
        )
        .await
    }
}

#[tokio::test]
async fn a_role_never_lets_its_holder_write_under_another_subjects_key() {
    let w = support_world("", None).await;
    w.put("alice", "/api/records/a", &json!({"ssn": SSN_A}))
        .await;
    let stored: Value = serde_json::from_slice(&w.backend.stored("/api/records/a")).unwrap();
    let a_env = stored["ssn"].as_str().unwrap().to_string();
    let sam = w.token_with("sam", json!({"roles": ["support"]}));
    let sam_ref = w.reference("sam");
    // A plaintext write to alice's record, and alice's copied envelope
    // posted back: both sealed under sam's own key, never alice's.
    for (path, body) in [
        ("/api/records/a", json!({"ssn": SSN_B})),
        ("/api/records/s", json!({"ssn": a_env})),
    ] {
        let (s, _) = w.put_with(&sam, path, &body).await;
        assert_eq!(s, StatusCode::OK);
        let stored: Value = serde_json::from_slice(&w.backend.stored(path)).unwrap();
        let env = stored["ssn"].as_str().unwrap();
        let (reference, _) = fieldseal::crypto::envelope_subject(env).unwrap();
        assert_eq!(reference, sam_ref, "{path}");
    }
    // Alice cannot read what sam wrote into her record.
    assert_eq!(w.get("alice", "/api/records/a").await.1["ssn"], Value::Null);
}

#[tokio::test]
async fn role_spellings_and_places_that_are_not_the_verified_claim_grant_nothing() {
    let w = support_world("", None).await;
    w.put("alice", "/api/records/a", &json!({"ssn": SSN_A}))
        .await;
    let reads_foreign = |v: &Value| v["ssn"] == json!(SSN_A);
    // Claim values that only look like the role.
    for roles in [
        json!("Support"),
        json!("SUPPORT"),
        json!(" support"),
        json!("support "),
        json!("support admin"),
        json!("support,dpo"),
        json!(["Support"]),
        json!([["support"]]),
        json!({"support": true}),
        json!([{"name": "support"}]),
        json!(1),
        json!(true),
        json!(null),
        json!([]),
        json!(""),
    ] {
        let t = w.token_with("eve", json!({"roles": roles}));
        let (s, v) = w.get_with(&t, "/api/records/a").await;
        assert_eq!(s, StatusCode::OK, "{roles}");
        assert!(!reads_foreign(&v), "roles {roles} read alice's data");
    }
    // The value under another claim name, or the claim name in other case.
    for extra in [
        json!({"role": ["support"]}),
        json!({"Roles": ["support"]}),
        json!({"scope": "support"}),
        json!({"sub": "support"}),
    ] {
        let t = w.token_with("eve", extra.clone());
        let v = w.get_with(&t, "/api/records/a").await.1;
        assert!(!reads_foreign(&v), "{extra} read alice's data");
    }
    // The role in the token's (JOSE) header, not its payload.
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": "dev-1", "roles": ["support"]});
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims("eve").to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &w.site.signer.encoding,
        jsonwebtoken::Algorithm::ES256,
    )
    .unwrap();
    let v = w
        .get_with(&format!("{msg}.{sig}"), "/api/records/a")
        .await
        .1;
    assert!(!reads_foreign(&v), "a header role read alice's data");
    // The role in request headers a client can set (and in a forwarded-claim
    // style header), with a valid role-less token.
    let eve = w.token("eve");
    for (name, value) in [
        ("x-roles", "support"),
        ("roles", "support"),
        ("x-authenticated-roles", "support"),
        ("x-forwarded-roles", "support"),
    ] {
        let (s, v) = answer(
            w.proxy
                .h1()
                .get(w.proxy.url("/api/records/a"))
                .bearer_auth(&eve)
                .header(name, value),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert!(!reads_foreign(&v), "header {name} read alice's data");
    }
    let before = w.backend.received.lock().unwrap().len();
    // No token at all, a role header instead: 401, nothing forwarded.
    let resp = bounded(
        "no token",
        w.proxy
            .h1()
            .get(w.proxy.url("/api/records/a"))
            .header("x-roles", "support")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A token claiming the role, signed by a key the JWKS doesn't hold: 401.
    let forger = ec_key("dev-1");
    let mut c = claims("eve");
    c["roles"] = json!(["support"]);
    let forged = sign(&forger, &c);
    let (s, v) = w.get_with(&forged, "/api/records/a").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(!reads_foreign(&v));
    // The genuine token with its payload edited to add the role: 401.
    let genuine = w.token_with("eve", json!({"roles": ["viewer"]}));
    let parts: Vec<&str> = genuine.split('.').collect();
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        w.get_with(&edited, "/api/records/a").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        w.backend.received.lock().unwrap().len(),
        before,
        "a refused request reached the backend"
    );
    assert!(w.audit_lines().iter().all(|l| l.get("reader").is_none()));
}

#[tokio::test]
async fn a_role_read_that_cannot_be_audited_is_refused_even_with_on_failure_serve() {
    let w = support_world("  on_failure: serve\n", Some("/dev/full")).await;
    w.put("alice", "/api/records/a", &json!({"ssn": SSN_A}))
        .await;
    // Alice's own read is served (on_failure: serve) ...
    assert_eq!(
        w.get("alice", "/api/records/a").await.1["ssn"],
        json!(SSN_A)
    );
    // ... but sam's cross-subject read is never served unaudited.
    let sam = w.token_with("sam", json!({"roles": ["support"]}));
    let (s, v) = w.get_with(&sam, "/api/records/a").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(!v.to_string().contains(SSN_A));
}

#[test]
fn read_any_subject_needs_a_subject_scope_decrypt_rules_an_audit_log_and_known_providers() {
    let site = Site::new();
    let ring = site.ring("k1", &["k1"]);
    let load = |store_extra: &str, route_extra: &str| {
        let yaml = site.yaml("http://127.0.0.1:9", &ring, store_extra, route_extra);
        let full = format!(
            "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{yaml}"
        );
        fieldseal::config::Config::from_yaml(&full, &site.path("fieldseal.yaml"))
    };
    let audit = "audit: { sink: stdout, key: k1 }\n";
    let role = "    read_any_subject: [ { claim: roles, values: [support] } ]\n";
    let c = load(audit, role).expect("loads");
    assert_eq!(c.identity.as_ref().unwrap().role_claims, ["roles"]);
    let e = load("", role).expect_err("no audit").to_string();
    assert!(e.contains("audit"), "{e}");
    for (extra, needle) in [
        (
            "    read_any_subject: [ { claim: roles, values: [] } ]\n",
            "value",
        ),
        (
            "    read_any_subject: [ { claim: roles, values: [\"\"] } ]\n",
            "value",
        ),
        (
            "    read_any_subject: [ { claim: \"\", values: [a] } ]\n",
            "claim",
        ),
        (
            "    read_any_subject: [ { claim: roles, values: [a], provider: other } ]\n",
            "provider",
        ),
        (
            "    read_any_subject: [ { claim: roles, values: [a], extra: 1 } ]\n",
            "extra",
        ),
    ] {
        let e = load(audit, extra).expect_err(extra).to_string();
        assert!(e.contains(needle), "{extra}: {e}");
    }
    assert!(load(
        audit,
        "    read_any_subject: [ { claim: roles, values: [a], provider: dev } ]\n"
    )
    .is_ok());
    // On a deployment-scoped route (which may be `auth: optional`) there is
    // no subject to cross: refused at load.
    let yaml = site
        .yaml("http://127.0.0.1:9", &ring, audit, "")
        .replace("    key_scope: subject\n", "")
        .replace("auth: required", "auth: optional");
    let full = format!(
        "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{yaml}{role}"
    );
    let e = fieldseal::config::Config::from_yaml(&full, &site.path("fieldseal.yaml"))
        .expect_err("deployment scope")
        .to_string();
    assert!(e.contains("key_scope"), "{e}");
}

// ---- identity.header: believed only from trusted_proxies ----------------

const USER_HEADER: &str = "x-authenticated-user";
const TENANT_HEADER: &str = "x-tenant";

/// The records route accepting `jwt` and `header`, an `open` route without
/// auth on an echo backend, and `trusted_proxies` as given.
async fn header_world(trusted: &str, echo: &Backend) -> World {
    let echo_url = echo.url();
    World::start_edited(
        |_| {
            (
                format!("trusted_proxies: [\"{trusted}\"]\n"),
                "    on_foreign_subject: \"null\"\n    auth_sources: [jwt, header]\n  - name: open\n    match: { path_prefix: /open }\n    upstream: echo\n".to_string(),
            )
        },
        |y| {
            y.replacen(
                "identity:\n",
                "identity:\n  header: { name: X-Authenticated-User, tenant: X-Tenant }\n",
                1,
            )
            .replacen("upstreams:\n", &format!("upstreams:\n  echo: {{ url: \"{echo_url}\" }}\n"), 1)
        },
    )
    .await
}

impl World {
    async fn as_header(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.proxy.h1().request(method, self.proxy.url(path));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        answer(rb).await
    }

    fn tenant_reference(&self, tenant: &str, sub: &str) -> String {
        self.proxy
            .proxy
            .key_service()
            .unwrap()
            .reference(fieldseal::crypto::RefScope::Subject, Some(tenant), sub)
            .unwrap()
    }
}

#[tokio::test]
async fn a_trusted_proxys_identity_header_names_the_subject() {
    let echo = Backend::start("echo", Behavior::echo()).await;
    let w = header_world("127.0.0.1/32", &echo).await;
    let alice = [(USER_HEADER, "alice"), (TENANT_HEADER, "acme")];
    let (s, v) = w
        .as_header(
            Method::PUT,
            "/api/records/a",
            &alice,
            Some(&json!({"ssn": SSN_A})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let stored: Value = serde_json::from_slice(&w.backend.stored("/api/records/a")).unwrap();
    let (reference, _) =
        fieldseal::crypto::envelope_subject(stored["ssn"].as_str().unwrap()).unwrap();
    assert_eq!(reference, w.tenant_reference("acme", "alice"));
    let (s, v) = w
        .as_header(Method::GET, "/api/records/a", &alice, None)
        .await;
    assert_eq!((s, &v["ssn"]), (StatusCode::OK, &json!(SSN_A)));
    let bob = [(USER_HEADER, "bob"), (TENANT_HEADER, "acme")];
    let v = w
        .as_header(Method::GET, "/api/records/a", &bob, None)
        .await
        .1;
    assert_eq!(v["ssn"], Value::Null);
    // Alice of another tenant is another subject.
    let other = [(USER_HEADER, "alice"), (TENANT_HEADER, "globex")];
    let v = w
        .as_header(Method::GET, "/api/records/a", &other, None)
        .await
        .1;
    assert_eq!(v["ssn"], Value::Null);
    // What can't be one subject is a 401: no tenant, two users, empty.
    let before = w.backend.received.lock().unwrap().len();
    for bad in [
        &[(USER_HEADER, "alice")][..],
        &[
            (USER_HEADER, "alice"),
            (USER_HEADER, "bob"),
            (TENANT_HEADER, "acme"),
        ],
        &[(USER_HEADER, " "), (TENANT_HEADER, "acme")],
        &[(USER_HEADER, "alice"), (TENANT_HEADER, "")],
    ] {
        let (s, _) = w
            .as_header(
                Method::PUT,
                "/api/records/x",
                bad,
                Some(&json!({"ssn": SSN_A})),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad:?}");
    }
    assert_eq!(w.backend.received.lock().unwrap().len(), before);
    // A bearer token, where accepted, decides over the header.
    let (s, _) = answer(
        w.proxy
            .h1()
            .put(w.proxy.url("/api/records/t"))
            .bearer_auth(w.token("bob"))
            .header(USER_HEADER, "alice")
            .header(TENANT_HEADER, "acme")
            .json(&json!({"ssn": SSN_B})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let stored: Value = serde_json::from_slice(&w.backend.stored("/api/records/t")).unwrap();
    let (reference, _) =
        fieldseal::crypto::envelope_subject(stored["ssn"].as_str().unwrap()).unwrap();
    assert_eq!(reference, w.reference("bob"));
    // From a trusted peer the header is the proxy's to pass on.
    let (s, _) = w.as_header(Method::GET, "/open/x", &alice, None).await;
    assert_eq!(s, StatusCode::OK);
    let seen = echo.seen();
    assert_eq!(seen.last().unwrap().header(USER_HEADER), Some("alice"));
}

#[tokio::test]
async fn an_identity_header_from_an_untrusted_peer_is_ignored_and_never_forwarded() {
    let echo = Backend::start("echo", Behavior::echo()).await;
    let w = header_world("10.0.0.0/8", &echo).await;
    let alice = [(USER_HEADER, "alice"), (TENANT_HEADER, "acme")];
    // auth: required, the header only: 401, nothing forwarded.
    for method in [Method::PUT, Method::GET] {
        let body = (method == Method::PUT).then(|| json!({"ssn": SSN_A}));
        let (s, v) = w
            .as_header(method.clone(), "/api/records/a", &alice, body.as_ref())
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {v}");
    }
    assert!(w.backend.all_received().is_empty());
    // With a valid token, the token's subject counts, and the header is gone.
    let (s, _) = answer(
        w.proxy
            .h1()
            .put(w.proxy.url("/api/records/b"))
            .bearer_auth(w.token("bob"))
            .header(USER_HEADER, "alice")
            .header(TENANT_HEADER, "acme")
            .json(&json!({"ssn": SSN_B})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let stored: Value = serde_json::from_slice(&w.backend.stored("/api/records/b")).unwrap();
    let (reference, _) =
        fieldseal::crypto::envelope_subject(stored["ssn"].as_str().unwrap()).unwrap();
    assert_eq!(reference, w.reference("bob"));
    // A route without auth: the request goes on, the header never does,
    // in any case spelling or repeated.
    for headers in [
        &alice[..],
        &[("X-AUTHENTICATED-USER", "alice"), ("X-Tenant", "acme")],
        &[(USER_HEADER, "alice"), (USER_HEADER, "root")],
    ] {
        let (s, _) = w.as_header(Method::GET, "/open/x", headers, None).await;
        assert_eq!(s, StatusCode::OK);
        let seen = echo.seen();
        let last = seen.last().unwrap();
        assert!(last.headers.get(USER_HEADER).is_none(), "{headers:?}");
        assert!(last.headers.get(TENANT_HEADER).is_none(), "{headers:?}");
    }
}

#[test]
fn identity_sources_are_named_per_route_when_there_is_more_than_one() {
    let site = Site::new();
    let ring = site.ring("k1", &["k1"]);
    let load = |identity_extra: &str, route_extra: &str| {
        let yaml = site
            .yaml("http://127.0.0.1:9", &ring, "", route_extra)
            .replacen("identity:\n", &format!("identity:\n{identity_extra}"), 1);
        let full = format!(
            "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{yaml}"
        );
        fieldseal::config::Config::from_yaml(&full, &site.path("fieldseal.yaml"))
    };
    let header = "  header: { name: X-Authenticated-User }\n";
    assert!(load("", "").is_ok());
    let e = load(header, "").expect_err("ambiguous").to_string();
    assert!(e.contains("auth_sources"), "{e}");
    assert!(load(header, "    auth_sources: [header]\n").is_ok());
    assert!(load(header, "    auth_sources: [jwt, header]\n").is_ok());
    for (identity, route, needle) in [
        ("", "    auth_sources: [header]\n", "not configured"),
        (header, "    auth_sources: []\n", "at least one"),
        (header, "    auth_sources: [mtls]\n", "expected"),
        (
            "  header: { name: Authorization }\n",
            "    auth_sources: [header]\n",
            "manages",
        ),
        (
            "  header: { name: X-U, tenant: x-u }\n",
            "    auth_sources: [header]\n",
            "differ",
        ),
    ] {
        let e = load(identity, route).expect_err(route).to_string();
        assert!(e.contains(needle), "{identity}{route}: {e}");
    }
}
