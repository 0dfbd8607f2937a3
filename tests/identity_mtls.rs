//! Mutual TLS as an identity source, through the real proxy: a test CA
//! (and a second, untrusted one) generated here with rcgen, client
//! certificates with URI, e-mail and DNS SANs and subject DNs, presented by
//! real TLS clients over HTTP/1.1 and HTTP/2; a subject-scoped route on the
//! embedded key store, and a route that takes a certificate or a token.

mod common;

use common::jwt::*;
use common::record_store::RecordStore;
use common::*;
use http::{StatusCode, Version};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};

const SSN_A: &str = "123-45-6789";
const ALICE: &str = "spiffe://fieldseal.test/alice";
const BOB: &str = "spiffe://fieldseal.test/bob";

/// A certificate authority of the test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// This CA's own certificate, PEM, when it is an intermediate the
    /// client sends along (empty for a root).
    chain_pem: String,
}

impl Ca {
    fn root(name: &str) -> Ca {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            cert,
            key,
            chain_pem: String::new(),
        }
    }

    /// An intermediate CA under this one, itself carrying `sans` (a CA's
    /// names must never be taken for the client's).
    fn intermediate(&self, name: &str, sans: Vec<SanType>) -> Ca {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = sans;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let chain_pem = format!("{}{}", cert.pem(), self.chain_pem);
        Ca {
            cert,
            key,
            chain_pem,
        }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A client certificate (leaf, then this CA's chain, then the key, PEM).
    fn issue(&self, sans: Vec<SanType>, dn: &[(DnType, &str)], serial: u64) -> Vec<u8> {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.subject_alt_names = sans;
        p.serial_number = Some(serial.into());
        p.is_ca = IsCa::NoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        format!("{}{}{}", cert.pem(), self.chain_pem, key.serialize_pem()).into_bytes()
    }
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn email(s: &str) -> SanType {
    SanType::Rfc822Name(s.try_into().unwrap())
}

fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

/// The files of one deployment: the client CA, a ring key, a JWKS (for
/// the route that also takes tokens), the key store.
struct Site {
    dir: tempfile::TempDir,
    ca: Ca,
    signer: SigningKey,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        key_file(dir.path(), "k1");
        let ca = Ca::root("fieldseal test client CA");
        std::fs::write(dir.path().join("client-ca.pem"), ca.pem()).unwrap();
        let signer = ec_key("dev-1");
        std::fs::write(
            dir.path().join("jwks.json"),
            json!({"keys": [signer.jwk]}).to_string(),
        )
        .unwrap();
        Site { dir, ca, signer }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `mtls` is the body of `identity.mtls` after `ca`; `tenant_claim`
    /// the JWT provider's (`""`: none).
    fn yaml(&self, records: &str, echo: &str, mtls: &str, tenant_claim: &str) -> String {
        let tenant_claim = if tenant_claim.is_empty() {
            String::new()
        } else {
            format!("\n      tenant_claim: {tenant_claim}")
        };
        format!(
            r#"upstreams:
  records: {{ url: "{records}" }}
  echo: {{ url: "{echo}" }}
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
      jwks_file: "{jwks}"{tenant_claim}
  mtls:
    ca: "{ca}"
{mtls}
key_store:
  sqlite: "{db}"
routes:
  - name: records
    match: {{ path_prefix: /api/records }}
    upstream: records
    auth: required
    auth_sources: [mtls]
    key_scope: subject
    encrypt: ["$.ssn"]
    decrypt: ["$.ssn"]
    on_foreign_subject: "null"
  - name: either
    match: {{ path_prefix: /either }}
    upstream: echo
    auth: required
    auth_sources: [mtls, jwt]
  - name: open
    match: {{ path_prefix: /open }}
    upstream: echo
"#,
            k1 = self.path("k1.key"),
            jwks = self.path("jwks.json"),
            ca = self.path("client-ca.pem"),
            db = self.path("keys.db"),
        )
    }

    fn token(&self, sub: &str) -> String {
        sign(&self.signer, &claims(sub))
    }
}

struct World {
    site: Site,
    proxy: TestProxy,
    records: RecordStore,
    echo: Backend,
}

impl World {
    async fn start(mtls: &str) -> World {
        World::start_with(mtls, "").await
    }

    async fn start_with(mtls: &str, tenant_claim: &str) -> World {
        let site = Site::new();
        let records = RecordStore::start().await;
        let echo = Backend::start("echo", Behavior::echo()).await;
        let yaml = site.yaml(&records.url, &echo.url(), mtls, tenant_claim);
        let proxy = TestProxy::start(&yaml).await;
        World {
            site,
            proxy,
            records,
            echo,
        }
    }

    /// A client presenting `identity` (None: no certificate).
    fn client(&self, identity: Option<&[u8]>, h2: bool) -> reqwest::Client {
        match (identity, h2) {
            (Some(id), h2) => self.proxy.with_client_cert(id, h2),
            (None, false) => self.proxy.h1(),
            (None, true) => self.proxy.h2(),
        }
    }
}

/// The status, WWW-Authenticate and JSON body of an answer; Err when the
/// request failed below HTTP (a refused handshake).
async fn send(
    rb: reqwest::RequestBuilder,
) -> Result<(StatusCode, Version, Option<String>, Value), String> {
    let resp = bounded("request", rb.send())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let version = resp.version();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = bounded("body", resp.bytes())
        .await
        .map_err(|e| format!("{e:?}"))?;
    if status.is_client_error() {
        assert_error_json(status, ct.as_deref(), &body);
    }
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    Ok((status, version, challenge, v))
}

fn assert_refused_401(
    got: Result<(StatusCode, Version, Option<String>, Value), String>,
    challenge: &str,
    message: &str,
    what: &str,
) {
    let (status, _, c, v) = got.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {v}");
    let c = c.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(c.starts_with(challenge), "{what}: {c}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains(message), "{what}: {error}");
}

#[tokio::test]
async fn alice_by_certificate_writes_and_reads_and_bobs_certificate_cannot_read_it() {
    let w = World::start("    subject: san_uri").await;
    let alice = w.site.ca.issue(vec![uri(ALICE)], &[], 1);
    let bob = w.site.ca.issue(vec![uri(BOB)], &[], 2);
    for h2 in [false, true] {
        let version = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let path = format!("/api/records/a-{h2}");
        let (a, b) = (w.client(Some(&alice), h2), w.client(Some(&bob), h2));
        let put = a
            .put(w.proxy.url(&path))
            .json(&json!({"name": "A", "ssn": SSN_A}));
        let (s, v, _, _) = send(put).await.unwrap();
        assert_eq!((s, v), (StatusCode::OK, version));
        let (s, _, _, body) = send(a.get(w.proxy.url(&path))).await.unwrap();
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            body,
            json!({"name": "A", "ssn": SSN_A}),
            "alice reads her own"
        );

        // Sealed under alice's subject key: no plaintext and no raw subject
        // reached the backend.
        let stored: Value = serde_json::from_slice(&w.records.stored(&path)).unwrap();
        assert!(
            stored["ssn"].as_str().unwrap().starts_with("fs2:"),
            "{stored}"
        );
        let raw = String::from_utf8_lossy(&w.records.all_received()).into_owned();
        assert!(!raw.contains(SSN_A), "plaintext reached the backend");
        assert!(!raw.contains("alice"), "the subject reached the backend");

        // Bob's certificate reads the record, never alice's plaintext.
        let (s, _, _, body) = send(b.get(w.proxy.url(&path))).await.unwrap();
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["ssn"], Value::Null, "{body}");
        assert_eq!(body["name"], "A");
    }
}

#[tokio::test]
async fn no_certificate_or_one_naming_zero_or_two_subjects_is_401_and_nothing_is_forwarded() {
    let w = World::start("    subject: san_uri").await;
    let two = w.site.ca.issue(vec![uri(ALICE), uri(BOB)], &[], 3);
    let none = w.site.ca.issue(
        vec![email("alice@fieldseal.test"), dns("alice.fieldseal.test")],
        &[(DnType::CommonName, ALICE)],
        4,
    );
    for h2 in [false, true] {
        let before = w.records.count();
        let bare = w.client(None, h2);
        for rb in [
            bare.get(w.proxy.url("/api/records/a")),
            bare.put(w.proxy.url("/api/records/a"))
                .json(&json!({"ssn": SSN_A})),
        ] {
            assert_refused_401(
                send(rb).await,
                "ClientCertificate realm=\"fieldseal\"",
                "a client certificate is required",
                "no certificate",
            );
        }
        for (id, what) in [(&two, "two SAN URIs"), (&none, "no SAN URI")] {
            let c = w.client(Some(id), h2);
            let put = c
                .put(w.proxy.url("/api/records/a"))
                .json(&json!({"ssn": SSN_A}));
            assert_refused_401(
                send(put).await,
                "ClientCertificate realm=\"fieldseal\"",
                "client certificate",
                what,
            );
            assert_refused_401(
                send(c.get(w.proxy.url("/api/records/a"))).await,
                "ClientCertificate realm=\"fieldseal\"",
                "client certificate",
                what,
            );
        }
        assert_eq!(w.records.count(), before, "a refused request was forwarded");
        // A route without auth still serves clients without a certificate.
        let (s, _, _, _) = send(bare.get(w.proxy.url("/open/x"))).await.unwrap();
        assert_eq!(s, StatusCode::OK);
    }
    assert!(!String::from_utf8_lossy(&w.records.all_received()).contains(SSN_A));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let w = World::start("    subject: san_uri").await;
    let other = Ca::root("fieldseal test client CA");
    // Same subject, same issuer name: only the signature tells them apart.
    let forged = other.issue(vec![uri(ALICE)], &[], 1);
    let alice = w.site.ca.issue(vec![uri(ALICE)], &[], 1);
    let put = w
        .client(Some(&alice), false)
        .put(w.proxy.url("/api/records/a"))
        .json(&json!({"ssn": SSN_A}));
    assert_eq!(send(put).await.unwrap().0, StatusCode::OK);
    let before = w.records.count();
    for h2 in [false, true] {
        let c = w.client(Some(&forged), h2);
        for rb in [
            c.get(w.proxy.url("/api/records/a")),
            c.get(w.proxy.url("/open/x")),
        ] {
            match send(rb).await {
                Err(_) => {}
                Ok((s, _, _, v)) => {
                    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
                    assert_ne!(v["ssn"], json!(SSN_A));
                }
            }
        }
    }
    assert_eq!(
        w.records.count(),
        before,
        "nothing of a forged client was forwarded"
    );
    assert_eq!(w.echo.count(), 0);
}

#[tokio::test]
async fn only_the_leaf_of_a_verified_chain_names_the_caller() {
    let w = World::start("    subject: san_uri").await;
    // The client sends leaf + intermediate; the intermediate carries a
    // SAN URI of its own, which must never be taken for the caller.
    let mid = w
        .site
        .ca
        .intermediate("fieldseal test issuing CA", vec![uri(BOB)]);
    let alice = mid.issue(vec![uri(ALICE)], &[], 10);
    for h2 in [false, true] {
        let c = w.client(Some(&alice), h2);
        let (s, _, _, v) = send(
            c.get(w.proxy.url("/either/x"))
                .bearer_auth(w.site.token(ALICE)),
        )
        .await
        .unwrap();
        assert_eq!(s, StatusCode::OK, "the leaf is alice: {v}");
        let got = send(
            c.get(w.proxy.url("/either/x"))
                .bearer_auth(w.site.token(BOB)),
        )
        .await;
        assert_refused_401(
            got,
            "Bearer",
            "credentials name different callers",
            "the intermediate's name",
        );
    }
    assert_eq!(w.echo.count(), 2);
}

#[tokio::test]
async fn a_certificate_and_a_token_must_name_the_same_caller_and_a_bad_token_is_never_skipped() {
    let w = World::start("    subject: san_uri").await;
    let alice = w.site.ca.issue(vec![uri(ALICE)], &[], 1);
    for h2 in [false, true] {
        let with = w.client(Some(&alice), h2);
        let bare = w.client(None, h2);
        let url = w.proxy.url("/either/x");
        // Either alone is enough.
        for rb in [
            with.get(&url),
            bare.get(&url).bearer_auth(w.site.token(ALICE)),
            with.get(&url).bearer_auth(w.site.token(ALICE)),
        ] {
            let (s, _, _, v) = send(rb).await.unwrap();
            assert_eq!(s, StatusCode::OK, "{v}");
        }
        let before = w.echo.count();
        assert_refused_401(
            send(with.get(&url).bearer_auth(w.site.token(BOB))).await,
            "Bearer",
            "credentials name different callers",
            "certificate alice, token bob",
        );
        assert_refused_401(
            send(with.get(&url).bearer_auth("not.a.token")).await,
            "Bearer",
            "bearer token is invalid",
            "a good certificate and a bad token",
        );
        // Neither: the route takes a token, so the challenge is Bearer.
        assert_refused_401(
            send(bare.get(&url)).await,
            "Bearer realm=\"fieldseal\"",
            "bearer token is required",
            "no credential",
        );
        assert_eq!(w.echo.count(), before, "a refused request was forwarded");
    }
}

/// For each `subject` kind, a certificate holding every kind with a
/// different value: the route that takes a certificate or a token accepts
/// a token for exactly the configured value and no other.
#[tokio::test]
async fn each_subject_kind_takes_its_own_value() {
    let sans = vec![
        uri(ALICE),
        email("Alice@FieldSeal.Test"),
        dns("Alice.FieldSeal.Test"),
    ];
    let dn = [
        (DnType::CommonName, "Alice Example"),
        (DnType::OrganizationalUnitName, "acme"),
        (DnType::OrganizationName, "Example Corp"),
    ];
    let cases = [
        ("    subject: san_uri", "", ALICE),
        // The domain of an address and a DNS name are case-insensitive.
        ("    subject: san_email", "", "Alice@fieldseal.test"),
        ("    subject: san_dns", "", "alice.fieldseal.test"),
        // `claims()` puts tid "acme" in every token.
        ("    subject: cn\n    tenant: ou", "tid", "Alice Example"),
    ];
    for (mtls, tenant_claim, expected) in cases {
        let w = World::start_with(mtls, tenant_claim).await;
        let cert = w.site.ca.issue(sans.clone(), &dn, 1);
        let c = w.client(Some(&cert), false);
        let url = w.proxy.url("/either/x");
        let (s, _, _, v) = send(c.get(&url).bearer_auth(w.site.token(expected)))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK, "{mtls}: {v}");
        for other in [
            ALICE,
            "Alice@FieldSeal.Test",
            "alice.fieldseal.test",
            "Alice Example",
            "acme",
        ] {
            if other == expected {
                continue;
            }
            assert_refused_401(
                send(c.get(&url).bearer_auth(w.site.token(other))).await,
                "Bearer",
                "credentials name different callers",
                &format!("{mtls}: token for {other}"),
            );
        }
        assert_eq!(w.echo.count(), 1, "{mtls}");
    }
}

/// A client certificate made by the openssl command line (rcgen writes one
/// value per DN attribute type; openssl writes `subj` as given, repeated
/// attributes included), signed by `ca`, with `ext` as its v3 extensions.
fn openssl_issue(ca: &Ca, dir: &std::path::Path, subj: &str, ext: &str, serial: u64) -> Vec<u8> {
    let p = |n: &str| dir.join(format!("{serial}-{n}"));
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    std::fs::write(p("ca.key"), ca.key.serialize_pem()).unwrap();
    std::fs::write(p("ext.cnf"), ext).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |n: &str| p(n).display().to_string();
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &s("key.pem"),
        "-subj",
        subj,
        "-out",
        &s("req.csr"),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &s("req.csr"),
        "-CA",
        &s("ca.pem"),
        "-CAkey",
        &s("ca.key"),
        "-set_serial",
        &serial.to_string(),
        "-days",
        "2",
        "-extfile",
        &s("ext.cnf"),
        "-out",
        &s("cert.pem"),
    ]);
    let mut out = std::fs::read(p("cert.pem")).unwrap();
    out.extend(std::fs::read(p("key.pem")).unwrap());
    out
}

const CLIENT_EXT: &str = "keyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";

#[tokio::test]
async fn a_dn_value_named_twice_names_no_one() {
    let w = World::start("    subject: cn").await;
    let d = w.site.dir.path();
    let one = openssl_issue(&w.site.ca, d, "/OU=a/CN=alice", CLIENT_EXT, 20);
    let two_cn = openssl_issue(&w.site.ca, d, "/CN=alice/CN=bob", CLIENT_EXT, 21);
    let multi = openssl_issue(&w.site.ca, d, "/CN=alice+CN=bob", CLIENT_EXT, 22);
    let url = w.proxy.url("/either/x");
    let (s, _, _, v) = send(
        w.client(Some(&one), false)
            .get(&url)
            .bearer_auth(w.site.token("alice")),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    for (id, what) in [(&two_cn, "two CN RDNs"), (&multi, "a multi-valued RDN")] {
        for h2 in [false, true] {
            assert_refused_401(
                send(w.client(Some(id), h2).get(&url)).await,
                "ClientCertificate",
                "more than one value",
                what,
            );
        }
    }
    assert_eq!(w.echo.count(), 1);
}

#[tokio::test]
async fn a_tenant_from_the_certificate_must_be_exactly_one() {
    let w = World::start("    subject: san_uri\n    tenant: ou").await;
    let d = w.site.dir.path();
    let ext = format!("{CLIENT_EXT}subjectAltName=URI:{ALICE}\n");
    let no_ou = w.site.ca.issue(vec![uri(ALICE)], &[], 1);
    let two_ou = openssl_issue(&w.site.ca, d, "/OU=a/OU=b/CN=x", &ext, 30);
    for id in [&no_ou, &two_ou] {
        for h2 in [false, true] {
            assert_refused_401(
                send(w.client(Some(id), h2).get(w.proxy.url("/api/records/a"))).await,
                "ClientCertificate",
                "client certificate",
                "tenant",
            );
        }
    }
    assert_eq!(w.records.count(), 0);
    // One OU is the tenant: the request goes through.
    let one_ou = openssl_issue(&w.site.ca, d, "/OU=a/CN=x", &ext, 31);
    let (s, _, _, v) = send(
        w.client(Some(&one_ou), false)
            .get(w.proxy.url("/api/records/a")),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn required_refuses_the_handshake_of_a_client_without_a_certificate() {
    let w = World::start("    subject: san_uri\n    required: true").await;
    let alice = w.site.ca.issue(vec![uri(ALICE)], &[], 1);
    for h2 in [false, true] {
        assert!(
            send(w.client(None, h2).get(w.proxy.url("/open/x")))
                .await
                .is_err(),
            "a client without a certificate was served"
        );
        let (s, _, _, _) = send(w.client(Some(&alice), h2).get(w.proxy.url("/open/x")))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(w.echo.count(), 2);
}

#[tokio::test]
async fn a_revoked_certificate_fails_the_handshake() {
    let site = Site::new();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: 1u64.into(),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: 66u64.into(),
            revocation_time: rcgen::date_time_ymd(2021, 1, 1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&site.ca.cert, &site.ca.key)
    .unwrap();
    std::fs::write(site.dir.path().join("client-ca.crl"), crl.pem().unwrap()).unwrap();
    let records = RecordStore::start().await;
    let echo = Backend::start("echo", Behavior::echo()).await;
    let mtls = format!(
        "    subject: san_uri\n    crls: [\"{}\"]",
        site.path("client-ca.crl")
    );
    let proxy = TestProxy::start(&site.yaml(&records.url, &echo.url(), &mtls, "")).await;
    let revoked = site.ca.issue(vec![uri(ALICE)], &[], 66);
    let good = site.ca.issue(vec![uri(ALICE)], &[], 67);
    for h2 in [false, true] {
        let url = proxy.url("/either/x");
        assert!(
            send(proxy.with_client_cert(&revoked, h2).get(&url))
                .await
                .is_err(),
            "a revoked certificate was accepted"
        );
        let (s, _, _, _) = send(proxy.with_client_cert(&good, h2).get(&url))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK);
    }
    assert_eq!(echo.count(), 2);
}

#[test]
fn the_mtls_section_is_checked_at_load() {
    let site = Site::new();
    let load = |mtls: &str, routes_extra: &str| {
        let yaml = format!(
            "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{}{routes_extra}",
            site.yaml("http://127.0.0.1:9", "http://127.0.0.1:9", mtls, "")
        );
        fieldseal::Config::from_yaml(&yaml, &site.dir.path().join("f.yaml"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(load("    subject: san_uri", "").is_ok());
    for (mtls, needle) in [
        ("    subject: upn", "identity.mtls.subject"),
        ("    subject: cn\n    tenant: email", "identity.mtls.tenant"),
        ("    subject: cn\n    ca_file: x", "ca_file"),
        ("", "subject"),
    ] {
        let e = load(mtls, "").expect_err(mtls);
        assert!(e.contains(needle), "{mtls}: {e}");
    }
    // With two sources configured, a route names the ones it takes.
    let e = load(
        "    subject: san_uri",
        "  - name: unnamed\n    match: { path_prefix: /u }\n    upstream: echo\n    auth: required\n",
    )
    .expect_err("auth_sources needed");
    assert!(e.contains("auth_sources"), "{e}");
    // `mtls` is only a source where it is configured.
    let yaml = r#"listen: { address: "127.0.0.1:0", tls: { cert: server.crt, key: server.key } }
upstreams:
  echo: { url: "http://127.0.0.1:9" }
identity:
  header: { name: X-User }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: echo
    auth: required
    auth_sources: [mtls]
"#;
    let e = fieldseal::Config::from_yaml(yaml, &site.dir.path().join("g.yaml"))
        .map(|_| ())
        .expect_err("mtls not configured")
        .to_string();
    assert!(e.contains("not configured"), "{e}");
}

/// A tenant-scoped route needs a source that can name a tenant: with none,
/// every request could only get 401, so the load fails and says where.
#[test]
fn a_tenant_route_whose_sources_name_no_tenant_fails_the_load() {
    let site = Site::new();
    let load = |mtls: &str, tenant_claim: &str, sources: &str| {
        let yaml = format!(
            "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{}",
            site.yaml("http://127.0.0.1:9", "http://127.0.0.1:9", mtls, tenant_claim)
                .replace("key_scope: subject", "key_scope: tenant")
                .replace("auth_sources: [mtls]\n", &format!("auth_sources: {sources}\n"))
        );
        fieldseal::Config::from_yaml(&yaml, &site.dir.path().join("t.yaml"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for (mtls, claim, sources) in [
        ("    subject: san_uri", "", "[mtls]"),
        ("    subject: san_uri", "", "[mtls, jwt]"),
        // The JWT provider names tenants, but the route doesn't take JWTs.
        ("    subject: san_uri", "tid", "[mtls]"),
    ] {
        let e = load(mtls, claim, sources).expect_err(sources);
        assert!(e.contains("key_scope") && e.contains("tenant"), "{e}");
    }
    for (mtls, claim, sources) in [
        ("    subject: cn\n    tenant: o", "", "[mtls]"),
        ("    subject: san_uri", "tid", "[mtls, jwt]"),
    ] {
        assert!(
            load(mtls, claim, sources).is_ok(),
            "{mtls} {claim} {sources}"
        );
    }
}

#[tokio::test]
async fn an_unreadable_client_ca_fails_the_load() {
    let site = Site::new();
    std::fs::write(site.dir.path().join("client-ca.pem"), "not a certificate\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let yaml = format!(
        "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: \"{d}/server.crt\", key: \"{d}/server.key\" }} }}\n{}",
        site.yaml("http://127.0.0.1:9", "http://127.0.0.1:9", "    subject: san_uri", ""),
        d = dir.path().display()
    );
    let config = fieldseal::Config::from_yaml(&yaml, &site.dir.path().join("f.yaml")).unwrap();
    let report = fieldseal::config::preflight::check_text(&config, &yaml);
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.message.contains("identity.mtls.ca") && e.message.contains("client CA")),
        "{:?}",
        report.errors
    );
    let e = fieldseal::Proxy::new(config).err().expect("the load fails");
    assert!(e.to_string().contains("client CA"), "{e}");
}

static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
    std::sync::OnceLock::new();

struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every line the proxies of this binary log, at debug (as `fieldseal run`
/// logs at its most verbose usual level), JSON.
fn captured_logs() -> String {
    let buf = LOGS.get_or_init(|| {
        let buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>> = Default::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Capture(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    });
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

#[tokio::test]
async fn nothing_of_a_certificate_is_logged() {
    captured_logs();
    let w = World::start("    subject: san_uri").await;
    let alice = w.site.ca.issue(
        vec![uri("spiffe://fieldseal.test/carol-7q")],
        &[(DnType::CommonName, "Carol CN-7q")],
        1,
    );
    let two = w.site.ca.issue(
        vec![uri("spiffe://fieldseal.test/carol-7q"), uri("urn:dave-7q")],
        &[],
        2,
    );
    let forged = Ca::root("other CA").issue(vec![uri("urn:erin-7q")], &[], 3);
    for h2 in [false, true] {
        let c = w.client(Some(&alice), h2);
        let put = c
            .put(w.proxy.url("/api/records/c"))
            .json(&json!({"ssn": SSN_A}));
        assert_eq!(send(put).await.unwrap().0, StatusCode::OK);
        let token = w.site.token("frank-7q");
        let (s, ..) = send(c.get(w.proxy.url("/either/x")).bearer_auth(token))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, ..) = send(w.client(Some(&two), h2).get(w.proxy.url("/api/records/c")))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(
            send(w.client(Some(&forged), h2).get(w.proxy.url("/open/x")))
                .await
                .is_err()
        );
    }
    let logs = captured_logs();
    assert!(logs.contains("401"), "the refusals were logged: {logs}");
    for secret in ["carol", "Carol", "dave-7q", "erin-7q", "frank-7q", SSN_A] {
        assert!(!logs.contains(secret), "{secret} was logged");
    }
}
