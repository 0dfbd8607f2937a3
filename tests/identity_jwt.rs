//! JWT identity at the edge, through the real proxy: tokens signed in the
//! test with freshly generated RSA (openssl), EC P-256 and Ed25519 (rcgen)
//! keys, a JWKS served by a real local HTTP server whose keys rotate
//! mid-test, and a recording backend that must see nothing of a refused
//! request.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::jwt::*;
use common::*;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A JWKS over plain HTTP on 127.0.0.1, serving whatever `keys` holds now,
/// counting requests; `down` makes it answer 500.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keys = Arc::new(Mutex::new(keys));
        let hits = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (k, h, d) = (keys.clone(), hits.clone(), down.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (k, h, d) = (k.clone(), h.clone(), d.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if d.load(Ordering::SeqCst) {
                        ("500 Internal Server Error", "{}".to_string())
                    } else {
                        let keys = k.lock().unwrap().clone();
                        ("200 OK", json!({ "keys": keys }).to_string())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            keys,
            hits,
            down,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn config(backend: &str, jwks_url: &str) -> String {
    format!(
        r#"upstreams:
  legacy: {{ url: "{backend}" }}
identity:
  clock_skew: 5s
  jwt:
    - name: main
      issuer: "{ISSUER}"
      audiences: [{AUDIENCE}]
      algorithms: [ES256, RS256, EdDSA]
      jwks_url: "{jwks_url}"
      jwks_min_refresh: 2s
      tenant_claim: tid
      max_lifetime: 1h
      typ: [JWT, "at+jwt", ""]
      required_claims: [scope]
      forward_claims: {{ sub: x-user, tid: x-tenant }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: legacy
    auth: required
  - name: open
    match: {{ path_prefix: /open }}
    upstream: legacy
    auth: optional
"#
    )
}

async fn get(
    proxy: &TestProxy,
    path: &str,
    auth: Option<&str>,
    extra: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut rb = proxy.h1().get(proxy.url(path));
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    let resp = bounded("request", rb.send()).await.expect("sent");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = bounded("body", resp.bytes()).await.expect("body").to_vec();
    (status, headers, body)
}

fn assert_401(status: StatusCode, headers: &http::HeaderMap, body: &[u8], what: &str) {
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        String::from_utf8_lossy(body)
    );
    let challenge = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(
        challenge.starts_with("Bearer realm=\"fieldseal\""),
        "{what}: {challenge}"
    );
    assert_error_json(
        status,
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        body,
    );
}

#[tokio::test]
async fn tokens_of_each_algorithm_pass_and_every_bad_token_gets_401_with_nothing_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = rsa_key("rsa-1", dir.path());
    let ec = ec_key("ec-1");
    let ed = ed_key("ed-1");
    let jwks = JwksServer::start(vec![rsa.jwk.clone(), ec.jwk.clone(), ed.jwk.clone()]).await;
    let backend = Backend::start("legacy", Behavior::echo()).await;
    let proxy = TestProxy::start(&config(&backend.url(), &jwks.url)).await;

    // Good tokens, each algorithm; claims forwarded, client copies replaced.
    for key in [&rsa, &ec, &ed] {
        let before = backend.count();
        let token = sign(key, &claims("alice"));
        let (status, _, body) = get(
            &proxy,
            "/api/records",
            Some(&format!("Bearer {token}")),
            &[("x-user", "mallory"), ("x-tenant", "evil")],
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{:?}: {}",
            key.alg,
            String::from_utf8_lossy(&body)
        );
        assert_eq!(backend.count(), before + 1);
        let seen = backend.seen().pop().unwrap();
        assert_eq!(seen.header("x-user"), Some("alice"), "{:?}", key.alg);
        assert_eq!(seen.header("x-tenant"), Some("acme"));
    }
    // The scheme is case-insensitive.
    let token = sign(&ec, &claims("alice"));
    let (status, _, _) = get(&proxy, "/api/x", Some(&format!("bearer {token}")), &[]).await;
    assert_eq!(status, StatusCode::OK);

    // An attacker's own key, published nowhere, under a kid the JWKS has.
    let forger = ec_key("ec-1");
    let forger_dir = dir.path().join("forger");
    std::fs::create_dir(&forger_dir).unwrap();
    let other_rsa = rsa_key("rsa-1", &forger_dir);
    let mut c = claims("alice");
    let mut bad: Vec<(String, Option<String>)> = Vec::new();
    bad.push(("missing".into(), None));
    bad.push((
        "not bearer".into(),
        Some(format!("Basic {}", b64(b"alice:pw"))),
    ));
    bad.push(("garbage".into(), Some("Bearer not.a.jwt".into())));
    bad.push((
        "forged EC".into(),
        Some(format!("Bearer {}", sign(&forger, &claims("alice")))),
    ));
    bad.push((
        "forged RSA".into(),
        Some(format!("Bearer {}", sign(&other_rsa, &claims("alice")))),
    ));
    c["exp"] = json!(now() - 60);
    bad.push(("expired".into(), Some(format!("Bearer {}", sign(&ec, &c)))));
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("exp");
    bad.push(("no exp".into(), Some(format!("Bearer {}", sign(&ec, &c)))));
    let mut c = claims("alice");
    c["nbf"] = json!(now() + 600);
    bad.push((
        "not yet valid".into(),
        Some(format!("Bearer {}", sign(&ec, &c))),
    ));
    let mut c = claims("alice");
    c["iat"] = json!(now() + 600);
    c["exp"] = json!(now() + 900);
    bad.push((
        "issued in the future".into(),
        Some(format!("Bearer {}", sign(&ec, &c))),
    ));
    let mut c = claims("alice");
    c["aud"] = json!("another-api");
    bad.push((
        "wrong audience".into(),
        Some(format!("Bearer {}", sign(&ec, &c))),
    ));
    let mut c = claims("alice");
    c["iss"] = json!("https://evil.test/");
    bad.push((
        "wrong issuer".into(),
        Some(format!("Bearer {}", sign(&ec, &c))),
    ));
    let mut c = claims("alice");
    c["exp"] = json!(now() + 7200);
    bad.push((
        "lifetime over max".into(),
        Some(format!("Bearer {}", sign(&ec, &c))),
    ));
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("scope");
    bad.push((
        "required claim missing".into(),
        Some(format!("Bearer {}", sign(&ec, &c))),
    ));
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("tid");
    bad.push((
        "tenant claim missing".into(),
        Some(format!("Bearer {}", sign(&ec, &c))),
    ));
    bad.push((
        "RS384 not allowed".into(),
        Some(format!(
            "Bearer {}",
            sign_as(
                &rsa,
                Algorithm::RS384,
                Some("rsa-1"),
                Some("JWT"),
                &claims("alice")
            )
        )),
    ));
    bad.push((
        "unknown kid".into(),
        Some(format!(
            "Bearer {}",
            sign_as(
                &ec,
                Algorithm::ES256,
                Some("nope"),
                Some("JWT"),
                &claims("alice")
            )
        )),
    ));
    bad.push((
        "typ not allowed".into(),
        Some(format!(
            "Bearer {}",
            sign_as(
                &ec,
                Algorithm::ES256,
                Some("ec-1"),
                Some("logout+jwt"),
                &claims("alice")
            )
        )),
    ));
    // HS256 signed with the RSA public key's bytes (the classic confusion).
    let confused = {
        let h = Header {
            alg: Algorithm::HS256,
            kid: Some("rsa-1".into()),
            ..Header::default()
        };
        let secret = rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec();
        jsonwebtoken::encode(&h, &claims("alice"), &EncodingKey::from_secret(&secret)).unwrap()
    };
    bad.push((
        "HS256 with a public key".into(),
        Some(format!("Bearer {confused}")),
    ));
    // alg none, hand-made.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("alice").to_string().as_bytes())
    );
    bad.push(("alg none".into(), Some(format!("Bearer {none}"))));
    // A valid token with its payload swapped for bob's.
    let good = sign(&ec, &claims("alice"));
    let parts: Vec<&str> = good.split('.').collect();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims("bob").to_string().as_bytes()),
        parts[2]
    );
    bad.push(("payload swapped".into(), Some(format!("Bearer {swapped}"))));

    let before = backend.count();
    for (what, auth) in &bad {
        let (status, headers, body) = get(&proxy, "/api/records", auth.as_deref(), &[]).await;
        assert_401(status, &headers, &body, what);
        // No token content is echoed.
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("alice") && !text.contains("eyJ"),
            "{what}: {text}"
        );
    }
    // Two Authorization headers: refused, whichever is valid.
    let good = format!("Bearer {}", sign(&ec, &claims("alice")));
    let resp = bounded(
        "two auth",
        proxy
            .h1()
            .get(proxy.url("/api/x"))
            .header("authorization", &good)
            .header("authorization", &good)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        backend.count(),
        before,
        "a refused request reached the backend"
    );

    // auth: optional: no token passes (client copies of claim headers gone), a bad one is 401.
    let (status, _, _) = get(&proxy, "/open/x", None, &[("x-user", "mallory")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend.seen().pop().unwrap().header("x-user"), None);
    let (status, headers, body) = get(&proxy, "/open/x", bad[3].1.as_deref(), &[]).await;
    assert_401(status, &headers, &body, "optional, forged");
    let (status, _, _) = get(&proxy, "/open/x", Some(&good), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        backend.seen().pop().unwrap().header("x-user"),
        Some("alice")
    );
}

#[tokio::test]
async fn jwks_rotation_refetches_on_unknown_kid_at_most_once_per_interval_and_keeps_the_last_good_set(
) {
    let old = ec_key("2024");
    let jwks = JwksServer::start(vec![old.jwk.clone()]).await;
    let backend = Backend::start("legacy", Behavior::echo()).await;
    let proxy = TestProxy::start(&config(&backend.url(), &jwks.url)).await;

    let auth = |k: &SigningKey, sub: &str| format!("Bearer {}", sign(k, &claims(sub)));
    let (status, _, _) = get(&proxy, "/api/a", Some(&auth(&old, "alice")), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks.hits(), 1, "first token fetches the set");

    // The issuer rotates: a new key, the old one still published.
    let new = ed_key("2025");
    jwks.keys.lock().unwrap().push(new.jwk.clone());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, body) = get(&proxy, "/api/a", Some(&auth(&new, "bob")), &[]).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(jwks.hits(), 2, "the unknown kid refetched once");

    // A flood of unknown kids within the interval: at most one more fetch.
    let stranger = ec_key("unknown");
    for i in 0..10 {
        let (status, _, _) = get(
            &proxy,
            "/api/a",
            Some(&auth(&stranger, &format!("s{i}"))),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(jwks.hits() <= 3, "refetches are bounded: {}", jwks.hits());

    // The JWKS server fails: the last good set is kept.
    jwks.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, _) = get(&proxy, "/api/a", Some(&auth(&stranger, "x")), &[]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "unknown key stays unknown"
    );
    let (status, _, _) = get(&proxy, "/api/a", Some(&auth(&new, "carol")), &[]).await;
    assert_eq!(status, StatusCode::OK, "the last good set still verifies");
    let (status, _, _) = get(&proxy, "/api/a", Some(&auth(&old, "dave")), &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unreachable_jwks_with_no_good_set_is_503_and_nothing_is_forwarded() {
    let backend = Backend::start("legacy", Behavior::echo()).await;
    let dead = format!("http://{}/jwks.json", dead_address());
    let proxy = TestProxy::start(&config(&backend.url(), &dead)).await;
    let k = ec_key("k");
    let (status, headers, body) = get(
        &proxy,
        "/api/a",
        Some(&format!("Bearer {}", sign(&k, &claims("alice")))),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error_json(
        status,
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        &body,
    );
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn a_repeated_token_is_verified_once() {
    use fieldseal::identity::{Identity, IdentitySpec, JwtProviderSpec, KeySourceSpec};
    let dir = tempfile::tempdir().unwrap();
    let k = ed_key("k");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys": [k.jwk]}).to_string()).unwrap();
    let spec = IdentitySpec {
        clock_skew: Duration::from_secs(5),
        role_claims: Vec::new(),
        header: None,
        mtls: None,
        providers: vec![JwtProviderSpec {
            name: "file".into(),
            issuer: ISSUER.into(),
            audiences: vec![AUDIENCE.into()],
            algorithms: vec![Algorithm::EdDSA],
            keys: KeySourceSpec::JwksFile(path),
            subject_claim: "sub".into(),
            tenant_claim: None,
            max_lifetime: None,
            typ: None,
            required_claims: vec![],
            forward_claims: vec![],
            jwks_min_refresh: Duration::from_secs(60),
        }],
    };
    let id = Identity::load(&spec).unwrap();
    let token = sign(&k, &claims("alice"));
    for _ in 0..5 {
        let Ok(p) = id.verify(&token).await else {
            panic!("a valid token does not verify")
        };
        assert_eq!(p.subject, "alice");
    }
    let (verified, hits, fetches) = id.stats();
    assert_eq!((verified, hits, fetches), (1, 4, 0));
    // An expired token is never served from anywhere.
    let mut c = claims("bob");
    c["exp"] = json!(now() - 100);
    assert!(id.verify(&sign(&k, &c)).await.is_err());
}

#[test]
fn config_refuses_none_hmac_without_secret_and_auth_without_identity() {
    let base = |extra: &str| {
        format!(
            "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: a.crt, key: a.key }} }}\n\
             upstreams: {{ b: {{ url: \"http://127.0.0.1:1\" }} }}\n{extra}\
             routes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: b, auth: required }}\n"
        )
    };
    let load = |y: &str| fieldseal::Config::from_yaml(y, std::path::Path::new("/tmp/x.yaml"));
    let e = load(&base("")).unwrap_err();
    assert!(e.message.contains("identity"), "{e}");
    let provider = |algs: &str, src: &str| {
        format!(
            "identity:\n  jwt:\n    - {{ name: m, issuer: i, audiences: [a], algorithms: [{algs}], {src} }}\n"
        )
    };
    for (algs, src, want) in [
        ("none", "jwks_file: j.json", "none"),
        ("HS256", "jwks_file: j.json", "hmac_secret_file"),
        ("RS256, HS256", "hmac_secret_file: s", "only HS256"),
        (
            "RS256",
            "jwks_file: j.json, jwks_url: \"https://x/\"",
            "exactly one",
        ),
        ("XX1", "jwks_file: j.json", "expected"),
    ] {
        let e = load(&base(&provider(algs, src))).unwrap_err();
        assert!(e.message.contains(want), "{algs} {src}: {e}");
    }
}
