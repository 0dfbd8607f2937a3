//! Per-subject keys from a verified identity, end to end: real TLS clients,
//! tokens signed with a generated EC key, and a backend that stores records
//! by path and answers reads with exactly the bytes it stored. Every
//! behaviour runs against both key stores (`both_stores!`): the embedded
//! SQLite file in a temp dir, and a real PostgreSQL cluster this binary
//! starts (one database per test).

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::jwt::*;
use common::record_store::RecordStore;
use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_fieldseal");
const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Which key store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// The PostgreSQL cluster of this test binary, started on first use; None
/// (the test skips, with a message) when PostgreSQL is not installed.
fn cluster() -> Option<&'static common::pg::PgCluster> {
    static PG: std::sync::OnceLock<Option<common::pg::PgCluster>> = std::sync::OnceLock::new();
    PG.get_or_init(common::pg::PgCluster::start).as_ref()
}

/// Runs `case` once per store: `NAME::sqlite` and `NAME::postgres`
/// (`, threads` on a multi-threaded runtime, for races).
macro_rules! both_stores {
    ($case:ident, threads) => {
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$case(super::Kind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if super::cluster().is_some() {
                    super::$case(super::Kind::Postgres).await
                }
            }
        }
    };
    ($case:ident) => {
        mod $case {
            #[tokio::test]
            async fn sqlite() {
                super::$case(super::Kind::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                if super::cluster().is_some() {
                    super::$case(super::Kind::Postgres).await
                }
            }
        }
    };
}

/// Where a site's keys live.
enum StoreAt {
    Sqlite,
    Postgres {
        url: String,
        cluster: &'static common::pg::PgCluster,
    },
}

/// The files of one deployment: ring key files, the JWKS, the key store,
/// the admin token. Proxies started on it share them (and the backend).
struct Site {
    dir: tempfile::TempDir,
    signer: SigningKey,
    store: StoreAt,
}

impl Site {
    fn new() -> Site {
        Site::on(Kind::Sqlite)
    }

    fn on(kind: Kind) -> Site {
        let store = match kind {
            Kind::Sqlite => StoreAt::Sqlite,
            Kind::Postgres => {
                let cluster = cluster().expect("postgres");
                StoreAt::Postgres {
                    url: cluster.database(),
                    cluster,
                }
            }
        };
        Site::with_store(store)
    }

    fn with_store(store: StoreAt) -> Site {
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
        Site { dir, signer, store }
    }

    /// The `key_store` line naming this site's store.
    fn store_line(&self) -> String {
        match &self.store {
            StoreAt::Sqlite => format!("  sqlite: \"{}/keys.db\"", self.dir.path().display()),
            StoreAt::Postgres { url, .. } => format!("  postgres_url: \"{url}\""),
        }
    }

    /// Every byte the key store holds (the SQLite file, or a pg_dump).
    fn store_bytes(&self) -> Vec<u8> {
        match &self.store {
            // The database and its write-ahead log (recent commits live there).
            StoreAt::Sqlite => ["keys.db", "keys.db-wal"]
                .iter()
                .flat_map(|f| std::fs::read(self.path(f)).unwrap_or_default())
                .collect(),
            StoreAt::Postgres { url, cluster } => cluster.dump(common::pg::db_name(url)),
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The config after `listen`/`admin`: `ring` is the `keys` section body.
    fn yaml(&self, backend: &str, ring: &str, store_extra: &str, route_extra: &str) -> String {
        let d = self.dir.path().display();
        let store = self.store_line();
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
{store}
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
    async fn start(kind: Kind, route_extra: &str) -> World {
        World::start_with(kind, "", route_extra).await
    }

    async fn start_with(kind: Kind, store_extra: &str, route_extra: &str) -> World {
        let site = Site::on(kind);
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

    /// A second proxy on the same store and backend (another replica),
    /// with `store_extra` in its `key_store` and `route_extra` in its route.
    async fn replica(&self, store_extra: &str, route_extra: &str) -> TestProxy {
        let yaml = self.site.yaml(
            &self.backend.url,
            &self.site.ring("k1", &["k1"]),
            store_extra,
            route_extra,
        );
        let token = format!(
            ", token_file: \"{}\"",
            self.site.path("admin.token").display()
        );
        TestProxy::start_admin(&yaml, "127.0.0.1:0", &token).await
    }

    async fn put_via(
        &self,
        p: &TestProxy,
        sub: &str,
        path: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        let rb = p
            .h1()
            .put(p.url(path))
            .bearer_auth(self.token(sub))
            .json(body);
        answer(rb).await
    }

    async fn get_via(&self, p: &TestProxy, sub: &str, path: &str) -> (StatusCode, Value) {
        let rb = p.h1().get(p.url(path)).bearer_auth(self.token(sub));
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

both_stores!(a_subject_reads_its_own_data_and_no_other_subject_ever_sees_it);
async fn a_subject_reads_its_own_data_and_no_other_subject_ever_sees_it(kind: Kind) {
    let w = World::start(kind, "    on_foreign_subject: \"null\"\n").await;

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
    let db = String::from_utf8_lossy(&w.site.store_bytes()).into_owned();
    assert!(
        db.contains("fieldseal_data_keys"),
        "the dump holds the keys table"
    );
    assert!(
        !db.contains("alice"),
        "the raw subject id is in the key store"
    );
    assert!(!db.contains(SSN_A), "plaintext is in the key store");

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

both_stores!(foreign_subject_error_is_403_and_old_fs1_data_stays_readable);
async fn foreign_subject_error_is_403_and_old_fs1_data_stays_readable(kind: Kind) {
    let w = World::start(kind, "").await;
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

both_stores!(a_warm_request_makes_no_store_round_trip_and_the_first_write_creates_one_key);
async fn a_warm_request_makes_no_store_round_trip_and_the_first_write_creates_one_key(kind: Kind) {
    let w = World::start(kind, "").await;
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

both_stores!(subject_scope_needs_a_verified_token);
async fn subject_scope_needs_a_verified_token(kind: Kind) {
    let w = World::start(kind, "").await;
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

both_stores!(erase_destroys_the_keys_reads_follow_on_erased_and_writes_the_tombstone);
async fn erase_destroys_the_keys_reads_follow_on_erased_and_writes_the_tombstone(kind: Kind) {
    let w = World::start(kind, "    on_erased: \"null\"\n").await;
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

both_stores!(after_erasure_new_key_policy_and_marker_and_410);
async fn after_erasure_new_key_policy_and_marker_and_410(kind: Kind) {
    let w = World::start(
        kind,
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
    let w = World::start(kind, "").await;
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

both_stores!(a_cli_erase_from_another_process_is_in_force_within_the_cache_ttl);
async fn a_cli_erase_from_another_process_is_in_force_within_the_cache_ttl(kind: Kind) {
    let w = World::start_with(kind, "  cache_ttl: 1s\n", "    on_erased: \"null\"\n").await;
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
    let w = World::start(Kind::Sqlite, "").await;
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

both_stores!(rotating_the_ring_rewraps_every_subject_key_and_all_data_still_reads);
async fn rotating_the_ring_rewraps_every_subject_key_and_all_data_still_reads(kind: Kind) {
    let site = Site::on(kind);
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

both_stores!(
    two_replicas_racing_first_writes_of_one_subject_make_exactly_one_key,
    threads
);
async fn two_replicas_racing_first_writes_of_one_subject_make_exactly_one_key(kind: Kind) {
    let w = World::start(kind, "").await;
    let other = w.replica("", "").await;
    let w = Arc::new(w);
    let other = Arc::new(other);
    // Open the connections first (other subjects), so the race below is not
    // spread out by TLS handshakes.
    let mut warm = Vec::new();
    for i in 0..40 {
        let (w, other) = (Arc::clone(&w), Arc::clone(&other));
        warm.push(tokio::spawn(async move {
            let p = if i % 2 == 0 { &w.proxy } else { &*other };
            w.get_via(p, &format!("warm{i}"), "/api/records/none")
                .await
                .0
        }));
    }
    for t in warm {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    // Many first writes of one subject at once, half through each replica.
    let start = Arc::new(tokio::sync::Barrier::new(40));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (w, other, start) = (Arc::clone(&w), Arc::clone(&other), Arc::clone(&start));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let path = format!("/api/records/race{i}");
            let body = json!({"ssn": format!("{SSN_A}-{i}")});
            if i % 2 == 0 {
                w.put("racer", &path, &body).await
            } else {
                w.put_via(&other, "racer", &path, &body).await
            }
        }));
    }
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // Exactly one key for the subject (plus the shared reference secret).
    let list = w.proxy.proxy.key_service().unwrap().store().list().unwrap();
    let keyed: Vec<_> = list
        .iter()
        .filter(|s| s.reference != fieldseal::keystore::REF_SECRET_REFERENCE)
        .collect();
    assert_eq!(keyed.len(), 1, "{list:?}");
    assert_eq!(keyed[0].versions, vec![1], "{list:?}");
    // Every record reads back through both replicas, all under that key.
    for i in 0..40 {
        let path = format!("/api/records/race{i}");
        let stored: Value = serde_json::from_slice(&w.backend.stored(&path)).unwrap();
        let (reference, version) =
            fieldseal::crypto::envelope_subject(stored["ssn"].as_str().unwrap()).unwrap();
        assert_eq!(reference, keyed[0].reference);
        assert_eq!(version, 1);
        let want = json!(format!("{SSN_A}-{i}"));
        assert_eq!(w.get("racer", &path).await.1["ssn"], want);
        assert_eq!(w.get_via(&other, "racer", &path).await.1["ssn"], want);
    }
}

both_stores!(an_erase_through_one_replica_is_in_force_on_the_other_within_the_cache_ttl);
async fn an_erase_through_one_replica_is_in_force_on_the_other_within_the_cache_ttl(kind: Kind) {
    let w = World::start_with(kind, "  cache_ttl: 1s\n", "    on_erased: \"null\"\n").await;
    let other = w
        .replica("  cache_ttl: 1s\n", "    on_erased: \"null\"\n")
        .await;
    let (s, _) = w
        .put("gina", "/api/records/g", &json!({"ssn": SSN_A}))
        .await;
    assert_eq!(s, StatusCode::OK);
    // The other replica reads it (and caches the key).
    assert_eq!(
        w.get_via(&other, "gina", "/api/records/g").await.1["ssn"],
        json!(SSN_A)
    );
    // Erased through the first replica's admin endpoint: in force there at once.
    let resp = w.erase("gina", Some(ADMIN_TOKEN)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(w.get("gina", "/api/records/g").await.1["ssn"], Value::Null);
    // And on the other one once its cached key is older than cache_ttl.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        w.get_via(&other, "gina", "/api/records/g").await.1["ssn"],
        Value::Null
    );
    let n = w.backend.received.lock().unwrap().len();
    let (s, v) = w
        .put_via(&other, "gina", "/api/records/g2", &json!({"ssn": SSN_B}))
        .await;
    assert_eq!(s, StatusCode::GONE, "{v}");
    assert_eq!(w.backend.received.lock().unwrap().len(), n);
}

/// PostgreSQL stopped under a running proxy: uncached subjects get 503 and
/// nothing is forwarded, cached ones keep working until their TTL, /readyz
/// says why, and the proxy recovers by itself when the server is back.
#[tokio::test]
async fn postgres_stopped_mid_run_gives_503_for_uncached_subjects_and_recovers() {
    let Some(own) = common::pg::PgCluster::start() else {
        return;
    };
    // Its own cluster: this test stops it.
    let own: &'static common::pg::PgCluster = Box::leak(Box::new(own));
    let site = Site::with_store(StoreAt::Postgres {
        url: own.database(),
        cluster: own,
    });
    let backend = RecordStore::start().await;
    let ttl = std::time::Duration::from_secs(4);
    let yaml = site.yaml(
        &backend.url,
        &site.ring("k1", &["k1"]),
        "  cache_ttl: 4s\n  connect_timeout: 1s\n  statement_timeout: 1s\n",
        "",
    );
    let token = format!(", token_file: \"{}\"", site.path("admin.token").display());
    let proxy = TestProxy::start_admin(&yaml, "127.0.0.1:0", &token).await;
    let w = World {
        proxy,
        backend,
        site,
    };
    let (s, _) = w
        .put("erin", "/api/records/e", &json!({"ssn": SSN_A}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let cached_at = std::time::Instant::now();

    own.stop_server();
    let n = w.backend.received.lock().unwrap().len();
    let (s, v) = w
        .put("frank", "/api/records/f", &json!({"ssn": SSN_B}))
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"], "the key store is unavailable", "{v}");
    assert_eq!(
        w.backend.received.lock().unwrap().len(),
        n,
        "forwarded while the store is down"
    );
    assert!(!String::from_utf8_lossy(&w.backend.all_received()).contains(SSN_B));
    // Many at once: every one refused, none forwarded.
    let w = Arc::new(w);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let w = Arc::clone(&w);
        tasks.push(tokio::spawn(async move {
            w.put(&format!("u{i}"), "/api/records/x", &json!({"ssn": SSN_B}))
                .await
                .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(w.backend.received.lock().unwrap().len(), n);
    let ready: Value = reqwest::get(w.proxy.admin_url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let check = &ready["checks"]["key_store"];
    assert_eq!(check["status"], "failed", "{ready}");
    assert_eq!(check["kind"], "postgres", "{ready}");
    assert!(
        check["reason"].as_str().unwrap().contains("postgres"),
        "{ready}"
    );
    // A cached subject keeps working while its key is younger than the TTL
    // (checked only if this slow machine got here in time).
    let (s, v) = w.get("erin", "/api/records/e").await;
    if cached_at.elapsed() < ttl {
        assert_eq!((s, &v["ssn"]), (StatusCode::OK, &json!(SSN_A)), "{v}");
    }
    // Past the TTL it needs the store again: 503.
    tokio::time::sleep(ttl.saturating_sub(cached_at.elapsed())).await;
    assert_eq!(
        w.get("erin", "/api/records/e").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // The server comes back on the same port: the proxy recovers by itself.
    own.start_server();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (s, _) = w
            .put("frank", "/api/records/f", &json!({"ssn": SSN_B}))
            .await;
        if s == StatusCode::OK {
            break;
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(std::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        w.get("frank", "/api/records/f").await.1["ssn"],
        json!(SSN_B)
    );
    assert_eq!(w.get("erin", "/api/records/e").await.1["ssn"], json!(SSN_A));
    let ready: Value = reqwest::get(w.proxy.admin_url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["key_store"]["status"], "ok", "{ready}");
}

// The store's own guarantee, under the most contention a test can make:
// threads released at once, each with its own candidate key, all calling
// `create_first` for one reference on separate connections.
both_stores!(concurrent_create_first_calls_store_one_key_and_all_see_it);
async fn concurrent_create_first_calls_store_one_key_and_all_see_it(kind: Kind) {
    use fieldseal::keystore::{KeyStore, StoredKey, SubjectRecord};
    let site = Site::on(kind);
    let cfg = site.config_file(
        "store.yaml",
        &site.yaml(
            "http://127.0.0.1:9",
            &site.ring("k1", &["k1"]),
            if kind == Kind::Postgres {
                "  pool_max: 16\n"
            } else {
                ""
            },
            "",
        ),
    );
    let cfg = fieldseal::config::Config::load(&cfg).unwrap();
    let spec = cfg.key_store.clone().unwrap();
    let store: Arc<dyn KeyStore> = tokio::task::spawn_blocking(move || match &spec.backend {
        fieldseal::config::KeyStoreBackend::Sqlite(p) => {
            Arc::new(fieldseal::keystore::SqliteStore::open(p).unwrap()) as Arc<dyn KeyStore>
        }
        fieldseal::config::KeyStoreBackend::Postgres(pg) => {
            Arc::new(fieldseal::keystore::PostgresStore::open(pg).unwrap())
        }
    })
    .await
    .unwrap();
    for round in 0..5 {
        let reference = format!("race-reference-{round}");
        let n = 16;
        let start = Arc::new(std::sync::Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let (store, start, reference) =
                    (Arc::clone(&store), Arc::clone(&start), reference.clone());
                std::thread::spawn(move || {
                    let key = StoredKey {
                        version: 1,
                        kek_id: "k1".into(),
                        wrapped: vec![i as u8; 60],
                        created_at: 1,
                    };
                    start.wait();
                    store.create_first(&reference, &key, false)
                })
            })
            .collect();
        let mut seen = Vec::new();
        for t in threads {
            match t.join().unwrap() {
                Ok(SubjectRecord::Keys(keys)) => {
                    assert_eq!(keys.len(), 1, "{keys:?}");
                    seen.push(keys[0].wrapped.clone());
                }
                other => panic!("create_first: {other:?}"),
            }
        }
        // Every caller got the one winner's key, and only it is stored.
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "two first keys");
        match store.get(&reference).unwrap() {
            SubjectRecord::Keys(keys) => assert_eq!(keys.len(), 1),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn check_validates_the_postgres_store_and_warns_what_an_operator_gets_wrong() {
    let site = Site::new();
    write_certs(site.dir.path());
    let sqlite_line = site.store_line();
    let run = |store: &str, url: Option<&str>| {
        let yaml = site
            .yaml("http://127.0.0.1:9", &site.ring("k1", &["k1"]), "", "")
            .replace(&sqlite_line, store);
        let cfg = site.config_file("check.yaml", &yaml);
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["check", "--config", cfg.to_str().unwrap()]);
        match url {
            Some(u) => cmd.env("FIELDSEAL_TEST_PG_URL", u),
            None => cmd.env_remove("FIELDSEAL_TEST_PG_URL"),
        };
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !err.contains("s3cret"),
            "the URL's password was shown: {err}"
        );
        (out.status.success(), err)
    };
    let env = "  postgres_url_env: FIELDSEAL_TEST_PG_URL";
    let (ok, err) = run(env, None);
    assert!(
        !ok && err.contains("postgres_url_env") && err.contains("not set"),
        "{err}"
    );
    let (ok, err) = run(env, Some("postgres://fs:s3cret@db.example.com:5432/fs"));
    assert!(ok, "{err}");
    assert!(err.contains("sslmode=require"), "{err}");
    let (ok, err) = run(
        env,
        Some("postgres://fs:s3cret@db.example.com/fs?sslmode=require"),
    );
    assert!(ok && !err.contains("sslmode"), "{err}");
    let (ok, err) = run(
        env,
        Some("postgres://fs:s3cret@127.0.0.1/fs?sslmode=disable"),
    );
    assert!(ok && !err.contains("sslmode"), "{err}");
    let (ok, err) = run(env, Some("not a url s3cret"));
    assert!(!ok && err.contains("PostgreSQL URL"), "{err}");
    let (ok, err) = run(
        &format!("{env}\n  ca: missing-ca.pem"),
        Some("postgres://fs@db.example.com/fs?sslmode=require"),
    );
    assert!(!ok && err.contains("key_store.ca"), "{err}");
    let (ok, err) = run("  postgres_url_file: missing-url", None);
    assert!(!ok && err.contains("postgres_url_file"), "{err}");
    let (ok, err) = run("  postgres_url: \"postgres://fs:s3cret@db/fs\"", None);
    assert!(!ok && err.contains("password"), "{err}");
}

/// A TCP relay to PostgreSQL that can stall: while stalled it accepts and
/// holds connections without a byte either way, and stops relaying on the
/// ones it had (a hung server or a silent network). Counts accepts.
struct StallingRelay {
    port: u16,
    stalled: tokio::sync::watch::Sender<bool>,
    accepts: Arc<std::sync::atomic::AtomicUsize>,
}

impl StallingRelay {
    async fn start(target_port: u16) -> StallingRelay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stalled, watch) = tokio::sync::watch::channel(false);
        let accepts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepts);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let stalled_now = *watch.borrow();
                    if stalled_now {
                        // Hold it, silent, until the test ends.
                        std::future::pending::<()>().await;
                    }
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    let stalled_mid = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        _ = async { let _ = watch.wait_for(|s| *s).await; } => true,
                    };
                    if stalled_mid {
                        // Keep both sockets open, relay nothing.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        StallingRelay {
            port,
            stalled,
            accepts,
        }
    }

    fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }

    fn accepts(&self) -> usize {
        self.accepts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A database that stops answering (not refusing: silent) never holds a
/// request past connect_timeout + statement_timeout: 503, nothing forwarded.
/// While it stays down, requests fail at once instead of each opening a
/// connection (no reconnect storm); when it answers again the proxy recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_postgres_gives_503_within_the_bound_without_a_reconnect_storm() {
    let Some(pg) = cluster() else {
        return;
    };
    let relay = StallingRelay::start(pg.port).await;
    let url = pg
        .database()
        .replace(&format!(":{}/", pg.port), &format!(":{}/", relay.port));
    let site = Site::with_store(StoreAt::Postgres { url, cluster: pg });
    let backend = RecordStore::start().await;
    let yaml = site.yaml(
        &backend.url,
        &site.ring("k1", &["k1"]),
        "  pool_max: 4\n  connect_timeout: 1s\n  statement_timeout: 1s\n",
        "",
    );
    let proxy = TestProxy::start(&yaml).await;
    let w = Arc::new(World {
        proxy,
        backend,
        site,
    });
    let (s, _) = w.put("ann", "/api/records/a", &json!({"ssn": SSN_A})).await;
    assert_eq!(s, StatusCode::OK);

    relay.stall(true);
    let n = w.backend.received.lock().unwrap().len();
    // The pooled connection hangs, then a new one gets no answer: 503, bounded
    // (`answer` gives up after 30s; the store's bound is 2s).
    let (s, v) = w.put("ben", "/api/records/b", &json!({"ssn": SSN_B})).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(w.backend.received.lock().unwrap().len(), n);
    // The cached subject is untouched by the outage.
    assert_eq!(w.get("ann", "/api/records/a").await.1["ssn"], json!(SSN_A));
    let n = w.backend.received.lock().unwrap().len();
    // The breaker is open now: a burst of uncached subjects fails without a
    // connection each (at most one probe per back-off window gets through).
    let before = relay.accepts();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let w = Arc::clone(&w);
        tasks.push(tokio::spawn(async move {
            w.put(
                &format!("burst{i}"),
                "/api/records/x",
                &json!({"ssn": SSN_B}),
            )
            .await
            .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let during = relay.accepts() - before;
    assert!(
        during <= 3,
        "{during} connections opened for 30 requests while down"
    );
    assert_eq!(
        w.backend.received.lock().unwrap().len(),
        n,
        "forwarded while the store hangs"
    );

    relay.stall(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (s, _) = w.put("ben", "/api/records/b", &json!({"ssn": SSN_B})).await;
        if s == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(w.get("ben", "/api/records/b").await.1["ssn"], json!(SSN_B));
}

/// TLS to PostgreSQL with rustls: a server that accepts only TLS, a
/// certificate for `localhost`. `sslmode=require` with the right `ca`
/// connects (and the session is TLS); without TLS the server refuses; a
/// wrong CA or a host name the certificate doesn't name is refused by us.
#[test]
fn postgres_over_tls_verifies_the_server_certificate_against_ca() {
    use fieldseal::config::{PostgresSettings, PostgresUrl};
    use fieldseal::keystore::{KeyStore, PostgresStore};
    let Some(own) = common::pg::PgCluster::start() else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) =
        fieldseal::tls::write_self_signed(certs.path(), &["localhost".to_string()], false).unwrap();
    own.require_tls(&cert, &key);
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _) =
        fieldseal::tls::write_self_signed(other.path(), &["localhost".to_string()], false).unwrap();
    let db = common::pg::db_name(&own.database()).to_string();
    let open = |host: &str, mode: &str, ca: &std::path::Path| {
        PostgresStore::open(&PostgresSettings {
            url: PostgresUrl::Inline(format!(
                "postgres://fieldseal@{host}:{}/{db}?sslmode={mode}",
                own.port
            )),
            ca: Some(ca.to_path_buf()),
            pool_max: 2,
            connect_timeout: std::time::Duration::from_secs(5),
            statement_timeout: std::time::Duration::from_secs(5),
        })
    };
    let store = open("localhost", "require", &cert).expect("TLS with the right CA");
    store.ping().unwrap();
    assert_eq!(
        own.sql(&db, "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'fieldseal' AND s.ssl").trim(),
        "1",
        "the store's session is not TLS"
    );
    drop(store);
    let e = open("localhost", "disable", &cert).unwrap_err().to_string();
    assert!(e.contains("postgres"), "{e}");
    let e = open("localhost", "require", &wrong_ca)
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "wrong CA: {e}");
    let e = open("127.0.0.1", "require", &cert).unwrap_err().to_string();
    assert!(
        e.to_lowercase().contains("certificate"),
        "name mismatch: {e}"
    );
}

impl Site {
    /// Runs the CLI with `input` on stdin: (exit code, stdout, stderr).
    fn cli_with_stdin(&self, args: &[&str], input: &str) -> (i32, String, String) {
        use std::io::Write;
        let mut child = std::process::Command::new(BIN)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cli runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }
}

// Data sealed under the deployment's keys (fs1) before the route became
// subject-scoped, moved offline onto each record's subject key: through the
// CLI binary, then read back through the proxy by its owner only.
both_stores!(subjects_rewrap_moves_fs1_dumps_onto_each_records_subject_key);
async fn subjects_rewrap_moves_fs1_dumps_onto_each_records_subject_key(kind: Kind) {
    let w = World::start(kind, "").await;
    let ring = file_ring("k1", &[("k1", &w.site.path("k1.key"))]);
    let fs1_a = ring.seal(&json!(SSN_A), "ssn").unwrap();
    let fs1_b = ring.seal(&json!(SSN_B), "ssn").unwrap();
    let dump = format!(
        "{}\n{}\n",
        json!({"id": "a", "owner_id": "alice", "ssn": fs1_a}),
        json!({"id": "b", "owner_id": 4242, "ssn": fs1_b})
    );
    let yaml = w
        .site
        .yaml(&w.backend.url, &w.site.ring("k1", &["k1"]), "", "");
    let cfg = w.site.config_file("cli.yaml", &yaml);
    let cfg = cfg.to_str().unwrap();
    let args = [
        "subjects",
        "rewrap",
        "--config",
        cfg,
        "--route",
        "records",
        "--subject-path",
        "$.owner_id",
    ];
    let (code, out, err) = w.site.cli_with_stdin(&args, &dump);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("2 re-sealed under their subject's key"),
        "{err}"
    );
    assert!(!out.contains(&fs1_a) && !out.contains(&fs1_b), "{out}");
    assert!(
        !out.contains(SSN_A) && !out.contains(SSN_B),
        "plaintext written"
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert!(l["ssn"].as_str().unwrap().starts_with("fs2:"), "{l}");
    }
    // The backend gets the rewrapped records; their owners read them.
    w.backend
        .put("/api/records/a", Bytes::from(lines[0].to_string()));
    w.backend
        .put("/api/records/b", Bytes::from(lines[1].to_string()));
    assert_eq!(
        w.get("alice", "/api/records/a").await.1["ssn"],
        json!(SSN_A)
    );
    assert_eq!(w.get("4242", "/api/records/b").await.1["ssn"], json!(SSN_B));
    // No one else: alice's record is not readable by 4242, nor the reverse.
    assert_eq!(
        w.get("4242", "/api/records/a").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        w.get("alice", "/api/records/b").await.0,
        StatusCode::FORBIDDEN
    );
    // The proxy and the CLI made one key per subject between them.
    let (s, _) = w
        .put("alice", "/api/records/a2", &json!({"ssn": SSN_B}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let list = w.site.cli(&["subjects", "list", "--config", cfg]);
    assert_eq!(list.lines().count(), 2, "{list}");

    // A record without a subject fails (exit 1), never written unsealed.
    let bad = format!("{}\n", json!({"id": "c", "ssn": fs1_a}));
    let (code, out, err) = w.site.cli_with_stdin(&args, &bad);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("no subject"), "{err}");

    // Offline encrypt under subject keys: plaintext in, each owner's fs2 out.
    let plain = format!(
        "{}\n",
        json!({"id": "d", "owner_id": "alice", "ssn": SSN_A})
    );
    let (code, out, err) = w.site.cli_with_stdin(
        &[
            "encrypt",
            "--config",
            cfg,
            "--route",
            "records",
            "--subject-path",
            "$.owner_id",
        ],
        &plain,
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(SSN_A), "{out}");
    let sealed: Value = serde_json::from_str(out.trim()).unwrap();
    w.backend
        .put("/api/records/d", Bytes::from(sealed.to_string()));
    assert_eq!(
        w.get("alice", "/api/records/d").await.1["ssn"],
        json!(SSN_A)
    );
    assert_eq!(
        w.get("4242", "/api/records/d").await.0,
        StatusCode::FORBIDDEN
    );

    // A deployment-scoped route is refused for --subject-path.
    let (code, _, err) = w.site.cli_with_stdin(
        &[
            "subjects",
            "rewrap",
            "--config",
            cfg,
            "--route",
            "nope",
            "--subject-path",
            "$.owner_id",
        ],
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("no route named"), "{err}");
}

// The tenant variant: tokens carry a tenant claim, so a subject's key is
// the tenant-qualified one. `--tenant-path` reads each record's tenant, and
// the same subject id in two tenants gets two keys; each record reads back
// through the proxy for its own tenant's subject only.
both_stores!(subjects_rewrap_with_a_tenant_path_moves_records_onto_their_tenant_qualified_subject);
async fn subjects_rewrap_with_a_tenant_path_moves_records_onto_their_tenant_qualified_subject(
    kind: Kind,
) {
    let site = Site::on(kind);
    let backend = RecordStore::start().await;
    let with_tenant = |y: String| {
        y.replace(
            "      jwks_file:",
            "      tenant_claim: tid\n      jwks_file:",
        )
    };
    let yaml = with_tenant(site.yaml(&backend.url, &site.ring("k1", &["k1"]), "", ""));
    assert!(yaml.contains("tenant_claim: tid"));
    let token = format!(", token_file: \"{}\"", site.path("admin.token").display());
    let proxy = TestProxy::start_admin(&yaml, "127.0.0.1:0", &token).await;
    let w = World {
        proxy,
        backend,
        site,
    };
    let tok = |tenant: &str, sub: &str| {
        let mut c = claims(sub);
        c["tid"] = json!(tenant);
        sign(&w.site.signer, &c)
    };
    let ring = file_ring("k1", &[("k1", &w.site.path("k1.key"))]);
    let fs1_a = ring.seal(&json!(SSN_A), "ssn").unwrap();
    let fs1_b = ring.seal(&json!(SSN_B), "ssn").unwrap();
    let fs1_c = ring.seal(&json!("555-55-5555"), "ssn").unwrap();
    // The same subject id, alice, in two tenants; and a numeric tenant.
    let dump = format!(
        "{}\n{}\n{}\n",
        json!({"id": "a", "org": {"id": "acme"}, "owner_id": "alice", "ssn": fs1_a}),
        json!({"id": "b", "org": {"id": "globex"}, "owner_id": "alice", "ssn": fs1_b}),
        json!({"id": "c", "org": {"id": 77}, "owner_id": "bob", "ssn": fs1_c}),
    );
    let cfg = w.site.config_file("cli.yaml", &yaml);
    let cfg = cfg.to_str().unwrap();
    let args = [
        "subjects",
        "rewrap",
        "--config",
        cfg,
        "--route",
        "records",
        "--subject-path",
        "$.owner_id",
        "--tenant-path",
        "$.org.id",
    ];
    let (code, out, err) = w.site.cli_with_stdin(&args, &dump);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("3 re-sealed under their subject's key"),
        "{err}"
    );
    for secret in [SSN_A, SSN_B, "555-55-5555"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "plaintext written"
        );
    }
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let reference = |l: &Value| -> String {
        let e = l["ssn"].as_str().unwrap();
        assert!(e.starts_with("fs2:"), "{l}");
        e.split(':').nth(1).unwrap().to_string()
    };
    // Each record under the reference `subjects show` gives for its tenant
    // and subject: acme/alice and globex/alice are different keys.
    for (l, tenant, sub) in [
        (&lines[0], "acme", "alice"),
        (&lines[1], "globex", "alice"),
        (&lines[2], "77", "bob"),
    ] {
        let show = w
            .site
            .cli(&["subjects", "show", sub, "--tenant", tenant, "--config", cfg]);
        let r = reference(l);
        assert!(show.starts_with(&r), "{tenant}/{sub}: {show} vs {l}");
        assert!(!show.contains("no key"), "{show}");
    }
    assert_ne!(reference(&lines[0]), reference(&lines[1]));
    let unqualified = w.site.cli(&["subjects", "show", "alice", "--config", cfg]);
    assert!(unqualified.contains("no key"), "{unqualified}");

    for (i, l) in lines.iter().enumerate() {
        w.backend
            .put(&format!("/api/records/{i}"), Bytes::from(l.to_string()));
    }
    let read = |tenant: &'static str, sub: &'static str, i: usize| {
        let t = tok(tenant, sub);
        let w = &w;
        async move { w.get_with(&t, &format!("/api/records/{i}")).await }
    };
    // Its own tenant's subject reads each record...
    assert_eq!(read("acme", "alice", 0).await.1["ssn"], json!(SSN_A));
    assert_eq!(read("globex", "alice", 1).await.1["ssn"], json!(SSN_B));
    assert_eq!(read("77", "bob", 2).await.1["ssn"], json!("555-55-5555"));
    // ...and no one else: not the same subject id in the other tenant, not
    // another subject of the same tenant, not a token without the record's
    // tenant.
    for (tenant, sub, i) in [
        ("globex", "alice", 0),
        ("acme", "alice", 1),
        ("acme", "bob", 0),
        ("acme", "bob", 2),
        ("globex", "bob", 2),
    ] {
        let (s, v) = read(tenant, sub, i).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{tenant}/{sub} reading {i}: {v}");
    }
    // Reads made no key; the CLI made exactly the three.
    let list = w.site.cli(&["subjects", "list", "--config", cfg]);
    assert_eq!(list.lines().count(), 3, "{list}");

    // Without --tenant-path on a config whose tokens carry a tenant, the
    // records land on the unqualified subject, which no token names: the
    // owner reads 403, never another's data.
    let (code, out, err) = w.site.cli_with_stdin(&args[..8], &dump);
    assert_eq!(code, 0, "{err}");
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    w.backend
        .put("/api/records/u", Bytes::from(first.to_string()));
    let t = tok("acme", "alice");
    assert_eq!(
        w.get_with(&t, "/api/records/u").await.0,
        StatusCode::FORBIDDEN
    );

    // A record without its tenant fails (exit 1), nothing written.
    let bad = format!(
        "{}\n",
        json!({"id": "d", "owner_id": "alice", "ssn": fs1_a})
    );
    let (code, out, err) = w.site.cli_with_stdin(&args, &bad);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(!err.contains(SSN_A));
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
        (header, "    auth_sources: [kerberos]\n", "expected"),
        // A known source, but not configured here.
        (header, "    auth_sources: [mtls]\n", "not configured"),
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
