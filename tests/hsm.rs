//! A ring key in a real PKCS#11 token (SoftHSM2): tokens initialized by
//! `softhsm2-util` in a temp dir (`SOFTHSM2_CONF`), the proxy over real
//! TLS, the embedded SQLite key store, a backend that stores records by
//! path and answers reads with exactly the bytes it stored.
//!
//! One SoftHSM2 configuration per test process (the module reads
//! `SOFTHSM2_CONF` once, at `C_Initialize`), one token per test; the tests
//! run one at a time (a token coming back makes the module reinitialize,
//! which would cut another test's sessions).
//!
//! Without SoftHSM2 the tests say so and pass, unless `CI` is set: then
//! they fail (`.ci/run` installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::jwt::*;
use common::record_store::RecordStore;
use common::*;
use fieldseal::crypto::pkcs11::{generate, PinSource, Pkcs11Kek, Pkcs11Spec};
use fieldseal::crypto::{data_key_aad, DataKey, KeyEncryptionKey, WrapError};
use http::StatusCode;
use serde_json::{json, Value};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "4321-test-pin";
const PIN_ENV: &str = "FIELDSEAL_TEST_HSM_PIN";
const BIN: &str = env!("CARGO_BIN_EXE_fieldseal");
const SSN_A: &str = "123-45-6789";
const SSN_B: &str = "987-65-4321";

struct Hsm {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    tokens: PathBuf,
}

/// The process's SoftHSM2 configuration, or None (with a message) when
/// SoftHSM2 is not installed and `CI` is not set.
fn hsm() -> Option<&'static Hsm> {
    static HSM: OnceLock<Option<Hsm>> = OnceLock::new();
    HSM.get_or_init(|| {
        let util = Command::new("softhsm2-util").arg("--version").output();
        if !Path::new(MODULE).exists() || util.is_err() {
            if std::env::var_os("CI").is_some() {
                panic!("SoftHSM2 is missing ({MODULE}, softhsm2-util): .ci/run installs the softhsm2 package");
            }
            eprintln!("skipping: SoftHSM2 is not installed (apt-get install softhsm2); CI fails here");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        // Before any C_Initialize in this process; children inherit both.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        std::env::set_var(PIN_ENV, PIN);
        Some(Hsm {
            _dir: dir,
            conf,
            tokens,
        })
    })
    .as_ref()
}

/// One test at a time (see the module comment); a failed test does not
/// poison it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

async fn serial_async() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

impl Hsm {
    /// A fresh token labelled `label`, with the user PIN `PIN`; returns its
    /// directory (SoftHSM2 keeps one directory per token).
    fn init_token(&self, label: &str) -> PathBuf {
        let before: Vec<PathBuf> = self.token_dirs();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                PIN,
                "--so-pin",
                "so-8765",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.token_dirs()
            .into_iter()
            .find(|d| !before.contains(d))
            .expect("the new token's directory")
    }

    fn token_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.tokens)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

fn spec(token: &str) -> Pkcs11Spec {
    Pkcs11Spec {
        module: MODULE.into(),
        token: token.into(),
        label: "kek1".into(),
        pin: PinSource::Env(PIN_ENV.into()),
    }
}

/// The suite's readings of the store.
trait Readings {
    fn stored_json(&self, path: &str) -> Value;
    fn received_text(&self) -> String;
}

impl Readings for RecordStore {
    fn stored_json(&self, path: &str) -> Value {
        serde_json::from_slice(&self.stored(path)).unwrap()
    }

    fn received_text(&self) -> String {
        String::from_utf8_lossy(&self.all_received()).into_owned()
    }
}

/// The files of one deployment: a file ring key, the JWKS, the key store.
struct Site {
    dir: tempfile::TempDir,
    signer: SigningKey,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        key_file(dir.path(), "k1");
        let signer = ec_key("dev-1");
        std::fs::write(
            dir.path().join("jwks.json"),
            json!({"keys": [signer.jwk]}).to_string(),
        )
        .unwrap();
        Site { dir, signer }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `keys` section: `active`, and ring entries `hsm1` (in `token`) and/or `k1` (a file).
    fn ring(&self, active: &str, token: Option<&str>, file_key: bool) -> String {
        let mut out = format!("  active: {active}\n  ring:\n");
        if let Some(t) = token {
            out.push_str(&format!(
                "    - {{ id: hsm1, pkcs11: {{ module: {MODULE}, token: {t}, label: kek1, pin_env: {PIN_ENV} }} }}\n"
            ));
        }
        if file_key {
            out.push_str(&format!(
                "    - {{ id: k1, file: \"{}\" }}\n",
                self.path("k1.key").display()
            ));
        }
        out
    }

    /// A deployment-scoped route (`/api/dep`) and a subject-scoped one
    /// (`/api/records`), both sealing and opening `$.ssn`.
    fn yaml(&self, backend: &str, ring: &str, cache_ttl: &str) -> String {
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
  cache_ttl: {cache_ttl}
routes:
  - name: records
    match: {{ path_prefix: /api/records }}
    upstream: legacy
    auth: required
    key_scope: subject
    encrypt: ["$.ssn"]
    decrypt: ["$.ssn"]
  - name: dep
    match: {{ path_prefix: /api/dep }}
    upstream: legacy
    encrypt: ["$.ssn"]
    decrypt: ["$.ssn"]
"#
        )
    }

    fn config_file(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(
            &path,
            format!("listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{yaml}"),
        )
        .unwrap();
        if !self.path("server.crt").exists() {
            write_certs(self.dir.path());
        }
        path
    }

    fn token(&self, sub: &str) -> String {
        sign(&self.signer, &claims(sub))
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("cli runs")
}

async fn answer(rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = bounded("request", rb.send()).await.expect("sent");
    let status = resp.status();
    let body = bounded("body", resp.bytes()).await.expect("body");
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

async fn put(
    p: &TestProxy,
    site: &Site,
    sub: Option<&str>,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let mut rb = p.h1().put(p.url(path)).json(body);
    if let Some(s) = sub {
        rb = rb.bearer_auth(site.token(s));
    }
    answer(rb).await
}

async fn get(p: &TestProxy, site: &Site, sub: Option<&str>, path: &str) -> (StatusCode, Value) {
    let mut rb = p.h1().get(p.url(path));
    if let Some(s) = sub {
        rb = rb.bearer_auth(site.token(s));
    }
    answer(rb).await
}

async fn readyz(p: &TestProxy) -> (StatusCode, Value) {
    let r = bounded("readyz", reqwest::get(p.admin_url("/readyz")))
        .await
        .unwrap();
    let s = r.status();
    (s, r.json().await.unwrap())
}

/// Polls `/readyz` until its status is `want` (generous: never a timing
/// assertion, only a bound on a hang).
async fn readyz_until(p: &TestProxy, want: StatusCode) -> Value {
    for _ in 0..300 {
        let (s, v) = readyz(p).await;
        if s == want {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never became {want}");
}

#[test]
fn a_token_key_wraps_with_bound_associated_data_and_only_its_own_token_unwraps() {
    let Some(hsm) = hsm() else { return };
    let _g = serial();
    hsm.init_token("bind-a");
    hsm.init_token("bind-b");
    generate("hsm1", &spec("bind-a")).unwrap();
    generate("hsm1", &spec("bind-b")).unwrap();
    let a = Pkcs11Kek::new("hsm1", spec("bind-a"));
    let b = Pkcs11Kek::new("hsm1", spec("bind-b"));
    assert_eq!(a.kind(), "pkcs11");
    let dek = DataKey::generate().unwrap();
    let aad = data_key_aad("R_D7ROWZiEw_P5HytO8CZQ", 1);
    let w = a.wrap(&dek, &aad).unwrap();
    assert_eq!(w.len(), 61);
    assert_eq!(a.unwrap(&w, &aad).unwrap().expose(), dek.expose());
    // Two wraps differ (a fresh IV each).
    assert_ne!(w, a.wrap(&dek, &aad).unwrap());
    // Another row, a flipped bit, a cut or extended blob, another token's
    // key of the same label: refused.
    let other = data_key_aad("R_D7ROWZiEw_P5HytO8CZQ", 2);
    assert!(matches!(a.unwrap(&w, &other), Err(WrapError::Unwrap)));
    for i in [0usize, 5, 20, 50, 60] {
        let mut bad = w.clone();
        bad[i] ^= 1;
        let r = a.unwrap(&bad, &aad);
        assert!(
            matches!(r, Err(WrapError::Unwrap | WrapError::Malformed)),
            "byte {i}: {r:?}"
        );
    }
    assert!(matches!(
        a.unwrap(&w[..60], &aad),
        Err(WrapError::Malformed)
    ));
    assert!(matches!(
        a.unwrap(&[w.clone(), vec![0]].concat(), &aad),
        Err(WrapError::Malformed)
    ));
    assert!(matches!(b.unwrap(&w, &aad), Err(WrapError::Unwrap)));
    // A refused unwrap is the token's answer, not a failure: the link stays.
    assert_eq!(a.unwrap(&w, &aad).unwrap().expose(), dek.expose());

    // What `keys` shows instead of a fingerprint: the token's own attributes.
    let info = a.describe().unwrap();
    assert_eq!((info.key_type.as_str(), info.bits), ("CKK_AES", 256));
    assert!(info.sensitive && !info.extractable, "{info:?}");
    let kcv = info.check_value.expect("SoftHSM2 gives CKA_CHECK_VALUE");
    assert_eq!(kcv.len(), 6);
    assert_ne!(
        Some(kcv),
        b.describe().unwrap().check_value,
        "two keys, two check values"
    );

    // Generating over an existing label is refused, and leaves the key as it was.
    let e = generate("hsm1", &spec("bind-a")).unwrap_err();
    assert!(e.contains("refusing to overwrite"), "{e}");
    assert_eq!(a.unwrap(&w, &aad).unwrap().expose(), dek.expose());

    // A wrong PIN: a provider error that names no PIN. (On a token no
    // session of this process is logged in to: a PKCS#11 login holds for
    // the whole process while any of its sessions is open.)
    hsm.init_token("bind-c");
    generate("hsm1", &spec("bind-c")).unwrap();
    std::env::set_var("FIELDSEAL_TEST_WRONG_PIN", "0000-wrong");
    let wrong = Pkcs11Kek::new(
        "hsm1",
        Pkcs11Spec {
            pin: PinSource::Env("FIELDSEAL_TEST_WRONG_PIN".into()),
            ..spec("bind-c")
        },
    );
    let e = wrong.wrap(&dek, &aad).unwrap_err().to_string();
    assert!(e.contains("PinIncorrect"), "{e}");
    assert!(!e.contains("0000-wrong") && !e.contains(PIN), "{e}");
}

/// The PKCS#11 wrapped form against the vector in docs/envelope.md,
/// computed independently (Python `cryptography`) from a known key
/// imported into the token for this test only.
#[test]
fn the_token_wrapped_form_matches_the_documented_vector() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    let Some(hsm) = hsm() else { return };
    let _g = serial();
    hsm.init_token("vector");
    // fieldseal sees the new token first (its module rescans), then this
    // test imports the known key through the same, initialized, module.
    fieldseal::crypto::pkcs11::check_token(&spec("vector")).unwrap();
    let ctx = Pkcs11::new(MODULE).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "vector")
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&PIN.to_string().into()));
    let h: Vec<u8> = (128u8..160).collect();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(b"kek1".to_vec()),
            Attribute::Value(h),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ])
        .unwrap();
    drop(session);
    let kek = Pkcs11Kek::new("hsm1", spec("vector"));
    let d1: [u8; 32] = std::array::from_fn(|i| 32 + i as u8);
    let iv: [u8; 12] = std::array::from_fn(|i| i as u8);
    let w = kek
        .wrap_with_iv(
            &DataKey::from_bytes(d1),
            &data_key_aad("_fieldseal_dk", 1),
            iv,
        )
        .unwrap();
    let hex: String = w.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "01000102030405060708090a0bd3615d0a31035c8cee5d7347047bd38ec4b694fa4092e189f965f98184414a0dd1e5b68abaa8f38894e4bf7ade68653e"
    );
    let back = kek.unwrap(&w, &data_key_aad("_fieldseal_dk", 1)).unwrap();
    assert_eq!(back.expose(), &d1);
}

#[tokio::test]
async fn data_sealed_under_an_hsm_wrapped_key_opens_after_a_restart_and_not_with_another_token() {
    let Some(hsm) = hsm() else { return };
    let _g = serial_async().await;
    hsm.init_token("restart");
    hsm.init_token("restart-other");
    generate("hsm1", &spec("restart")).unwrap();
    generate("hsm1", &spec("restart-other")).unwrap();
    let site = Site::new();
    let backend = RecordStore::start().await;
    let yaml = site.yaml(
        &backend.url,
        &site.ring("hsm1", Some("restart"), false),
        "60s",
    );
    let proxy = TestProxy::start(&yaml).await;

    let (s, v) = put(&proxy, &site, None, "/api/dep/1", &json!({"ssn": SSN_A})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = put(
        &proxy,
        &site,
        Some("alice"),
        "/api/records/a",
        &json!({"ssn": SSN_B}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The deployment route sealed under the deployment data key (fs2,
    // reserved reference), the subject route under alice's.
    let dep = backend.stored_json("/api/dep/1")["ssn"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(dep.starts_with("fs2:_fieldseal_dk:1:"), "{dep}");
    let sub = backend.stored_json("/api/records/a")["ssn"]
        .as_str()
        .unwrap()
        .to_owned();
    let (reference, _) = fieldseal::crypto::envelope_subject(&sub).unwrap();
    assert_eq!(reference.len(), 22);
    let raw = backend.received_text();
    assert!(
        !raw.contains(SSN_A) && !raw.contains(SSN_B),
        "plaintext reached the backend"
    );
    let (s, ready) = readyz(&proxy).await;
    assert_eq!(s, StatusCode::OK, "{ready}");
    assert_eq!(
        ready["checks"]["key_providers"]["self_test"]["hsm1"]["status"], "ok",
        "{ready}"
    );
    proxy.stop().await;

    // A new proxy: nothing cached, every key unwrapped by the token again.
    let proxy = TestProxy::start(&yaml).await;
    assert_eq!(
        get(&proxy, &site, None, "/api/dep/1").await.1["ssn"],
        json!(SSN_A)
    );
    assert_eq!(
        get(&proxy, &site, Some("alice"), "/api/records/a").await.1["ssn"],
        json!(SSN_B)
    );
    proxy.stop().await;

    // Another token with a key of the same label: the store's keys do not
    // unwrap, so the proxy does not start (and so opens nothing).
    let other = site.yaml(
        &backend.url,
        &site.ring("hsm1", Some("restart-other"), false),
        "60s",
    );
    let path = site.config_file("other.yaml", &other);
    let cfg = fieldseal::config::Config::from_yaml(&std::fs::read_to_string(&path).unwrap(), &path)
        .unwrap();
    let e = fieldseal::Proxy::new(cfg).err().expect("refused");
    assert!(e.to_string().contains("does not authenticate"), "{e}");
    // Nor does the other token's key open the deployment key's row directly.
    let b = Pkcs11Kek::new("hsm1", spec("restart-other"));
    let store = fieldseal::keystore::SqliteStore::open(&site.path("keys.db")).unwrap();
    use fieldseal::keystore::KeyStore;
    let fieldseal::keystore::SubjectRecord::Keys(rows) = store.get("_fieldseal_dk").unwrap() else {
        panic!("no deployment data key row");
    };
    assert_eq!(rows[0].kek_id, "hsm1");
    assert!(matches!(
        b.unwrap(&rows[0].wrapped, &data_key_aad("_fieldseal_dk", 1)),
        Err(WrapError::Unwrap)
    ));
}

#[tokio::test]
async fn a_removed_token_fails_readyz_and_uncached_sealing_with_503_and_nothing_forwarded_then_recovers(
) {
    let Some(hsm) = hsm() else { return };
    let _g = serial_async().await;
    let dir = hsm.init_token("removable");
    generate("hsm1", &spec("removable")).unwrap();
    let site = Site::new();
    let backend = RecordStore::start().await;
    let yaml = site.yaml(
        &backend.url,
        &site.ring("hsm1", Some("removable"), false),
        "1s",
    );
    let proxy = TestProxy::start(&yaml).await;
    let (s, _) = put(
        &proxy,
        &site,
        Some("erin"),
        "/api/records/e",
        &json!({"ssn": SSN_A}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = put(&proxy, &site, None, "/api/dep/1", &json!({"ssn": SSN_A})).await;
    assert_eq!(s, StatusCode::OK);
    readyz_until(&proxy, StatusCode::OK).await;

    // The token goes away while the proxy runs.
    let away = hsm.tokens.parent().unwrap().join("removed-token");
    std::fs::rename(&dir, &away).unwrap();
    let ready = readyz_until(&proxy, StatusCode::SERVICE_UNAVAILABLE).await;
    let check = &ready["checks"]["key_providers"]["self_test"]["hsm1"];
    assert_eq!(check["status"], "failed", "{ready}");
    assert!(
        check["reason"].as_str().unwrap().contains("removable"),
        "{ready}"
    );
    assert!(!ready.to_string().contains(PIN));
    // Past the cache TTL: every key must come from the token, which is gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = backend.count();
    for (sub, path) in [
        (Some("frank"), "/api/records/f"),
        (Some("erin"), "/api/records/e2"),
        (None, "/api/dep/2"),
    ] {
        let (s, v) = put(&proxy, &site, sub, path, &json!({"ssn": SSN_B})).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{path}: {v}");
        assert!(v["error"].is_string() || v["error"].is_object(), "{v}");
    }
    assert_eq!(backend.count(), n, "forwarded while the token was gone");
    assert!(!backend.received_text().contains(SSN_B));
    // Reads that need the keys are refused too (not served sealed or empty).
    let (s, _) = get(&proxy, &site, None, "/api/dep/1").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);

    // It comes back: ready again, and everything works, old data included.
    std::fs::rename(&away, &dir).unwrap();
    readyz_until(&proxy, StatusCode::OK).await;
    let mut ok = false;
    for _ in 0..50 {
        if put(
            &proxy,
            &site,
            Some("frank"),
            "/api/records/f",
            &json!({"ssn": SSN_B}),
        )
        .await
        .0 == StatusCode::OK
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "sealing never recovered");
    assert_eq!(
        get(&proxy, &site, Some("frank"), "/api/records/f").await.1["ssn"],
        json!(SSN_B)
    );
    assert_eq!(
        get(&proxy, &site, Some("erin"), "/api/records/e").await.1["ssn"],
        json!(SSN_A)
    );
    assert_eq!(
        get(&proxy, &site, None, "/api/dep/1").await.1["ssn"],
        json!(SSN_A)
    );
    let (s, _) = put(&proxy, &site, None, "/api/dep/2", &json!({"ssn": SSN_B})).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn rotating_from_a_file_key_to_an_hsm_key_with_subjects_rewrap() {
    let Some(hsm) = hsm() else { return };
    let _g = serial_async().await;
    hsm.init_token("rotate");
    let site = Site::new();
    let backend = RecordStore::start().await;
    // Before: the file key k1 is the whole ring.
    let before = site.yaml(&backend.url, &site.ring("k1", None, true), "60s");
    let proxy = TestProxy::start(&before).await;
    for (i, s) in ["s1", "s2"].iter().enumerate() {
        let (st, _) = put(
            &proxy,
            &site,
            Some(s),
            &format!("/api/records/{i}"),
            &json!({"ssn": format!("{SSN_A}-{i}")}),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, _) = put(&proxy, &site, None, "/api/dep/old", &json!({"ssn": SSN_A})).await;
    assert_eq!(st, StatusCode::OK);
    assert!(backend.stored_json("/api/dep/old")["ssn"]
        .as_str()
        .unwrap()
        .starts_with("fs1:k1:"));
    proxy.stop().await;

    // The HSM key is created by the CLI, made active, and rewrap moves
    // every stored key onto it.
    let after = site.yaml(
        &backend.url,
        &site.ring("hsm1", Some("rotate"), true),
        "60s",
    );
    let cfg = site.config_file("rotate.yaml", &after);
    let cfg_s = cfg.to_str().unwrap();
    let out = cli(&["keys", "generate", "hsm1", "--config", cfg_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = cli(&["keys", "generate", "hsm1", "--config", cfg_s]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"),
        "{again:?}"
    );
    let out = cli(&["subjects", "rewrap", "--config", cfg_s]);
    let text = String::from_utf8_lossy(&out.stdout);
    // Two subjects and the reference secret moved; the deployment data key
    // was made under hsm1 when the service opened.
    assert!(
        out.status.success() && text.starts_with("3 keys rewrapped under hsm1, 1 already"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let proxy = TestProxy::start(&after).await;
    for (i, s) in ["s1", "s2"].iter().enumerate() {
        assert_eq!(
            get(&proxy, &site, Some(s), &format!("/api/records/{i}"))
                .await
                .1["ssn"],
            json!(format!("{SSN_A}-{i}"))
        );
    }
    // fs1 under the file key stays readable and unchanged; new writes on
    // the deployment route go under the deployment data key.
    assert_eq!(
        get(&proxy, &site, None, "/api/dep/old").await.1["ssn"],
        json!(SSN_A)
    );
    let (st, _) = put(&proxy, &site, None, "/api/dep/new", &json!({"ssn": SSN_B})).await;
    assert_eq!(st, StatusCode::OK);
    assert!(backend.stored_json("/api/dep/new")["ssn"]
        .as_str()
        .unwrap()
        .starts_with("fs2:_fieldseal_dk:1:"));
    assert_eq!(
        get(&proxy, &site, None, "/api/dep/new").await.1["ssn"],
        json!(SSN_B)
    );
    proxy.stop().await;

    // With k1 gone, every subject key still unwraps (they are all under hsm1).
    let only_hsm = site.yaml(
        &backend.url,
        &site.ring("hsm1", Some("rotate"), false),
        "60s",
    );
    let proxy = TestProxy::start(&only_hsm).await;
    assert_eq!(
        get(&proxy, &site, Some("s2"), "/api/records/1").await.1["ssn"],
        json!(format!("{SSN_A}-1"))
    );
    assert_eq!(
        get(&proxy, &site, None, "/api/dep/new").await.1["ssn"],
        json!(SSN_B)
    );
}

#[test]
fn keys_lists_a_token_key_and_check_validates_the_section() {
    let Some(hsm) = hsm() else { return };
    let _g = serial();
    hsm.init_token("listing");
    let site = Site::new();
    let yaml = site.yaml(
        "http://127.0.0.1:9",
        &site.ring("hsm1", Some("listing"), true),
        "60s",
    );
    let cfg = site.config_file("keys.yaml", &yaml);
    let cfg_s = cfg.to_str().unwrap();
    // Missing key: check says how to make it.
    let out = cli(&["keys", "generate", "hsm1", "--config", cfg_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["keys", "--config", cfg_s]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text.lines().find(|l| l.starts_with("hsm1")).unwrap();
    assert!(
        line.contains("pkcs11") && line.contains("(active)"),
        "{line}"
    );
    assert!(
        line.contains("CKK_AES 256 bits")
            && line.contains("sensitive=true")
            && line.contains("extractable=false"),
        "{line}"
    );
    assert!(line.contains("check value "), "{line}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("k1") && l.contains("fingerprint")),
        "{text}"
    );
    assert!(!text.contains(PIN));

    let out = cli(&["check", "--config", cfg_s]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A token that is not there, a module that is not there, an unset PIN: each refused.
    for (bad, want) in [
        (
            yaml.replace("token: listing", "token: nosuch"),
            "no token labelled",
        ),
        (
            yaml.replace(MODULE, "/nonexistent/libpkcs11.so"),
            "is not a file",
        ),
        (
            yaml.replace(PIN_ENV, "FIELDSEAL_TEST_UNSET_PIN"),
            "FIELDSEAL_TEST_UNSET_PIN",
        ),
    ] {
        let p = site.config_file("bad.yaml", &bad);
        let out = cli(&["check", "--config", p.to_str().unwrap()]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{want}: {all}");
        assert!(all.contains(want), "{want}: {all}");
        assert!(!all.contains(PIN));
    }
}

#[test]
fn an_hsm_active_key_needs_a_key_store_and_refuses_what_needs_key_bytes() {
    let site = Site::new();
    let load = |yaml: &str| {
        let full = format!("listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{yaml}");
        fieldseal::config::Config::from_yaml(&full, &site.path("fieldseal.yaml"))
    };
    let ring = site.ring("hsm1", Some("t"), true);
    let ok = site.yaml("http://127.0.0.1:9", &ring, "60s");
    assert!(load(&ok).is_ok(), "{:?}", load(&ok).err());
    let no_store = ok.replace(
        &format!(
            "key_store:\n  sqlite: \"{}/keys.db\"\n  cache_ttl: 60s\n",
            site.dir.path().display()
        ),
        "",
    );
    let e = load(&no_store).unwrap_err().to_string();
    assert!(e.contains("key_store"), "{e}");
    let form = ok.replace("    encrypt: [\"$.ssn\"]\n    decrypt: [\"$.ssn\"]\n\"#", "").replace(
        "  - name: dep\n    match: { path_prefix: /api/dep }\n    upstream: legacy\n",
        "  - name: dep\n    match: { path_prefix: /api/dep }\n    upstream: legacy\n    query: { ssn: seal }\n",
    );
    let e = load(&form).unwrap_err().to_string();
    assert!(e.contains("pkcs11"), "{e}");
    let audit = format!("{ok}audit: {{ sink: stdout }}\n");
    let e = load(&audit).unwrap_err().to_string();
    assert!(e.contains("pkcs11"), "{e}");
    assert!(load(&format!("{ok}audit: {{ sink: stdout, key: k1 }}\n")).is_ok());
    for bad in [
        ring.replace(
            "pin_env: FIELDSEAL_TEST_HSM_PIN",
            "pin_env: X, pin_file: /p",
        ),
        ring.replace(", pin_env: FIELDSEAL_TEST_HSM_PIN", ""),
        ring.replace("pkcs11: {", "file: x, pkcs11: {"),
        ring.replace("label: kek1", "label: \"\""),
        ring.replace("label: kek1", "label: kek1, pin: \"1234\""),
    ] {
        assert!(
            load(&site.yaml("http://127.0.0.1:9", &bad, "60s")).is_err(),
            "{bad}"
        );
    }
}

/// A ring whose active key is in a token: loads without touching it, names
/// it, derives nothing from it and refuses to seal `fs1` under it, while
/// its file keys still open what they sealed.
#[test]
fn a_token_active_ring_has_no_bytes_to_seal_or_derive_with() {
    use fieldseal::crypto::{KeySource, KeySpec, Keyring, KeyringSpec, SealError};
    let dir = tempfile::tempdir().unwrap();
    let k1 = key_file(dir.path(), "k1");
    let file_only = Keyring::load(&KeyringSpec {
        active: "k1".into(),
        keys: vec![KeySpec {
            id: "k1".into(),
            source: KeySource::File(k1.clone()),
        }],
        pbkdf2_iterations: 600_000,
    })
    .unwrap();
    let old = file_only.seal(&json!(SSN_A), "ssn").unwrap();
    let ring = Keyring::load(&KeyringSpec {
        active: "hsm1".into(),
        keys: vec![
            KeySpec {
                id: "hsm1".into(),
                source: KeySource::Pkcs11(spec("never-contacted")),
            },
            KeySpec {
                id: "k1".into(),
                source: KeySource::File(k1),
            },
        ],
        pbkdf2_iterations: 600_000,
    })
    .unwrap();
    assert_eq!(ring.active_id(), "hsm1");
    assert!(!ring.active_has_bytes());
    assert!(ring.contains("hsm1") && ring.contains("k1"));
    assert_eq!(ring.source_kind("hsm1"), Some("pkcs11"));
    assert!(matches!(
        ring.seal(&json!(SSN_A), "ssn"),
        Err(SealError::UnknownKey)
    ));
    assert!(ring.derive_subkey("hsm1", "anything").is_none());
    assert!(ring.fingerprint("hsm1").is_none());
    assert_eq!(ring.open(&old, "ssn", None).unwrap().value, json!(SSN_A));
    // The self-test covers the keys with bytes; token keys are /readyz's
    // key_providers check.
    let ids: Vec<String> = ring.self_test().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["k1"]);
}
