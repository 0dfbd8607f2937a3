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
fn a_subject_route_loads_pairs_under_its_key_and_indexes_only_with_an_explicit_scope() {
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
    // Sealed under the request's subject key: no index involved.
    for extra in [
        "    form: { encrypt: [ssn] }\n",
        "    query: { ssn: seal }\n",
        "    query: { ssn: refuse }\n",
    ] {
        assert!(load(extra).is_ok(), "{extra}: {:?}", load(extra).err());
    }
    let index = "    index: [ { field: \"$.ssn\", into: \"$.ssn_idx\" } ]\n";
    // An index on a subject route means little by default: the scope must be chosen.
    for extra in [
        index.to_string(),
        format!("{index}    query: {{ ssn: {{ index: ssn_idx }} }}\n"),
    ] {
        let e = load(&extra).expect_err(&extra).to_string();
        assert!(e.contains("explicit `index_scope`"), "{extra}: {e}");
    }
    for scope in ["subject", "deployment"] {
        let extra = format!("{index}    index_scope: {scope}\n");
        assert!(load(&extra).is_ok(), "{extra}: {:?}", load(&extra).err());
    }
    // Combinations without a written meaning fail closed, with the reason.
    for (extra, why) in [
        (format!("{index}    index_scope: tenant\n"), "not available"),
        (
            "    index_scope: subject\n".to_string(),
            "writes no blind index",
        ),
    ] {
        let e = load(&extra).expect_err(&extra).to_string();
        assert!(e.contains(why), "{extra}: {e}");
    }
}
