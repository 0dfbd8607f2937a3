//! The per-request cost of subject-scoped sealing with a warm cache, beside
//! deployment-scoped sealing of the same 2 KB request, and the pieces a
//! subject-scoped request adds: the cached JWT verification, the subject
//! reference (HMAC), the key lookup in the cache. The cold first write of
//! a new subject (key generated, wrapped, inserted with fsync into SQLite)
//! is measured apart.
//!
//! `cargo bench --bench subject`. Quote ratios from the same run; the
//! machine is shared and noisy.
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use fieldseal::crypto::{Keks, Keyring, RefScope, SubjectKeys};
use fieldseal::identity::{Identity, IdentitySpec, JwtProviderSpec, KeySourceSpec};
use fieldseal::keystore::{KeyService, Resolved, SqliteStore};
use fieldseal::transform::{self, FieldPath, FieldRule, Keys, SealSpec};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// Most `jwt_verify_uncached` requests one counting run makes.
const UNCACHED_POOL: u64 = 200;

fn request() -> Vec<u8> {
    let mut doc = json!({
        "id": 918273, "name": "Ada Lovelace", "email": "ada@example.com",
        "ssn": "123-45-6789",
        "card": { "number": "4111111111111111", "exp": "12/29", "brand": "visa" },
        "contacts": [ { "kind": "home", "phone": "+1 555 0100" }, { "kind": "work", "phone": "+1 555 0199" } ],
        "created_at": "2026-01-02T03:04:05Z", "active": true, "tags": ["vip", "beta"]
    });
    doc["notes"] = json!("lorem ipsum dolor sit amet ".repeat(60));
    serde_json::to_vec(&doc).unwrap()
}

fn spec() -> SealSpec {
    let rule = |p: &str| FieldRule {
        path: FieldPath::parse(p).unwrap(),
        context: None,
    };
    SealSpec::new(vec![
        rule("$.ssn"),
        rule("$.card.number"),
        rule("$.contacts[*].phone"),
    ])
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ring = Keyring::from_raw_keys("k1", vec![("k1".into(), [7; 32])]).unwrap();
    let store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    let service = Arc::new(
        KeyService::open(
            Arc::new(store),
            Keks::from_ring(&ring),
            Duration::from_secs(600),
            10_000,
        )
        .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // A JWT provider from a JWKS file, and one token (cached after the first).
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": b64(&raw[1..33]), "y": b64(&raw[33..])}]})
            .to_string(),
    )
    .unwrap();
    let identity = Identity::load(&IdentitySpec {
        clock_skew: Duration::from_secs(60),
        role_claims: Vec::new(),
        header: None,
        mtls: None,
        providers: vec![JwtProviderSpec {
            name: "b".into(),
            issuer: "https://id/".into(),
            audiences: vec!["api".into()],
            algorithms: vec![Algorithm::ES256],
            keys: KeySourceSpec::JwksFile(jwks),
            subject_claim: "sub".into(),
            tenant_claim: None,
            max_lifetime: None,
            typ: None,
            required_claims: vec![],
            forward_claims: vec![],
            jwks_min_refresh: Duration::from_secs(60),
        }],
    })
    .unwrap();
    let now = fieldseal::crypto::unix_now();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k".into());
    let signing = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    // Distinct tokens (a `jti` apart) are distinct cache entries: each one's
    // first verification is a full one.
    let sign = |sub: &str, jti: u64| {
        jsonwebtoken::encode(
            &h,
            &json!({"iss": "https://id/", "aud": "api", "sub": sub, "exp": now + 86_400, "jti": jti}),
            &signing,
        )
        .unwrap()
    };
    let token = sign("alice", 0);

    let body = request();
    let spec = spec();
    let deployment = || transform::encrypt_request(&body, &spec, (&ring).into(), now).unwrap();
    let seal_under = |sk: &SubjectKeys| {
        let keys = Keys {
            seal: sk.first().unwrap().sealing_key(),
            ring: &ring,
            subjects: sk,
            subject_only: true,
            index: fieldseal::transform::index::IndexKeys::DataKey(sk.first().unwrap()),
        };
        transform::encrypt_request(&body, &spec, keys, now).unwrap()
    };
    // What a deployment-scoped route with the same token does: the proxy
    // verifies it there too, so this (not `deployment_seal`) is the
    // native routes' baseline.
    let deployment_jwt = || {
        std::hint::black_box(rt.block_on(identity.verify(&token)).is_ok());
        deployment()
    };
    // Warm: what a subject-scoped request does besides the transform (as
    // `proxy::subject_keys::for_request`: the memo's reference, the
    // cache's key set).
    let subject_warm = || {
        let p = rt.block_on(identity.verify(&token)).ok().unwrap();
        let reference = service
            .shared_reference(RefScope::Subject, None, &p.subject)
            .unwrap();
        let Resolved::Keys(sk) = rt
            .block_on(service.resolve(&reference, true, false))
            .unwrap()
        else {
            panic!("no key")
        };
        seal_under(&sk)
    };
    // The same in one task, as the proxy runs a request: the verification
    // and the key lookup are awaited in one future, so this pays one
    // `block_on` (as `deployment_seal_jwt` does), not two.
    let subject_warm_one_task = || {
        let sk = rt.block_on(async {
            let p = identity.verify(&token).await.ok().unwrap();
            let reference = service
                .shared_reference(RefScope::Subject, None, &p.subject)
                .unwrap();
            match service.resolve(&reference, true, false).await.unwrap() {
                Resolved::Keys(sk) => sk,
                _ => panic!("no key"),
            }
        });
        seal_under(&sk)
    };
    let cold = |n: u64| {
        let reference = service
            .reference(RefScope::Subject, None, &format!("new-{n}"))
            .unwrap();
        rt.block_on(service.resolve(&reference, true, false))
            .is_ok()
    };

    // `SUBJECT_COUNT="CASE N"`: run CASE exactly N times and exit, for
    // instruction counts under callgrind (bench/subject-count.sh runs two
    // N and takes the difference, so setup and the first write cancel out).
    if let Ok(spec) = std::env::var("SUBJECT_COUNT") {
        let (case, n) = spec.split_once(' ').expect("SUBJECT_COUNT=\"CASE N\"");
        let n: u64 = n.parse().expect("N");
        // Signed in setup, the same number whatever N, so signing cancels
        // out of the difference and only the verifications remain.
        let fresh: Vec<String> = if case == "jwt_verify_uncached" {
            assert!(
                n <= UNCACHED_POOL,
                "jwt_verify_uncached: N at most {UNCACHED_POOL}"
            );
            (1..=UNCACHED_POOL).map(|i| sign("alice", i)).collect()
        } else {
            Vec::new()
        };
        for i in 0..n {
            match case {
                "deployment_seal" => drop(std::hint::black_box(deployment())),
                "deployment_seal_jwt" => drop(std::hint::black_box(deployment_jwt())),
                "subject_seal_warm" => drop(std::hint::black_box(subject_warm())),
                "subject_seal_warm_one_task" => drop(std::hint::black_box(subject_warm_one_task())),
                "jwt_verify_cached" => {
                    std::hint::black_box(rt.block_on(identity.verify(&token)).is_ok());
                }
                "jwt_verify_uncached" => {
                    let ok = rt.block_on(identity.verify(&fresh[i as usize])).is_ok();
                    assert!(std::hint::black_box(ok), "a fresh token verifies");
                }
                "cold_first_write_new_subject" => {
                    std::hint::black_box(cold(i));
                }
                other => panic!("unknown case {other}"),
            }
        }
        std::process::exit(0);
    }

    let mut g = c.benchmark_group("subject");
    g.bench_function("deployment_seal", |b| b.iter(deployment));
    g.bench_function("deployment_seal_jwt", |b| b.iter(deployment_jwt));
    g.bench_function("subject_seal_warm", |b| b.iter(subject_warm));
    g.bench_function("subject_seal_warm_one_task", |b| {
        b.iter(subject_warm_one_task)
    });
    g.bench_function("jwt_verify_cached", |b| {
        b.iter(|| rt.block_on(identity.verify(&token)).is_ok())
    });
    let mut jti = 1_000_000u64;
    g.bench_function("jwt_verify_uncached", |b| {
        b.iter_batched(
            || {
                jti += 1;
                sign("alice", jti)
            },
            |t| rt.block_on(identity.verify(&t)).is_ok(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("subject_reference", |b| {
        b.iter(|| service.reference(RefScope::Subject, Some("acme"), "alice"))
    });
    let mut n = 1_000_000u64;
    g.sample_size(20);
    g.bench_function("cold_first_write_new_subject", |b| {
        b.iter(|| {
            n += 1;
            cold(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
