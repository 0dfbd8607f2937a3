//! `https://` upstreams: a test CA made here with rcgen, real TLS backends
//! (tokio-rustls) on 127.0.0.1, certificate name checks, and mutual TLS.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("ca key");
        let cert = p.self_signed(&key).expect("ca cert");
        Ca { cert, key }
    }

    /// A leaf certificate for `names`, server or client.
    fn issue(&self, names: &[&str], client: bool) -> (rcgen::Certificate, KeyPair) {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("leaf key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("leaf cert");
        (cert, key)
    }

    fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.cert.pem()).expect("write ca");
        path
    }
}

fn der_key(k: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()))
}

/// What a TLS backend saw.
#[derive(Default)]
struct Seen {
    served: AtomicUsize,
    sni: Mutex<Vec<Option<String>>>,
    client_certs: AtomicUsize,
    /// Path and Host of each request.
    requests: Mutex<Vec<(String, String)>>,
}

/// An HTTP/1.1 backend over TLS with `cert`; with `client_ca`, it requires
/// a client certificate issued by it.
async fn tls_backend(
    cert: &rcgen::Certificate,
    key: &KeyPair,
    client_ca: Option<&Ca>,
) -> (SocketAddr, Arc<Seen>, JoinHandle<()>) {
    let provider = fieldseal::tls::provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).expect("client ca");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            der_key(key),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                {
                    let conn = tls.get_ref().1;
                    s.sni
                        .lock()
                        .expect("lock")
                        .push(conn.server_name().map(str::to_string));
                    if conn.peer_certificates().is_some_and(|c| !c.is_empty()) {
                        s.client_certs.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = Arc::clone(&s);
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    s.requests
                        .lock()
                        .expect("lock")
                        .push((req.uri().path().to_string(), host));
                    async move {
                        s.served.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"{\"over\":\"tls\"}",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen, task)
}

fn https_upstream(url: &str, tls: &str) -> String {
    format!(
        "upstreams:\n  legacy:\n    url: \"{url}\"\n    tls: {{ {tls} }}\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: legacy\n"
    )
}

async fn get(proxy: &TestProxy) -> (StatusCode, String) {
    let r = proxy
        .h1()
        .get(proxy.url("/x"))
        .send()
        .await
        .expect("request");
    let status = r.status();
    (status, r.text().await.unwrap_or_default())
}

fn connect_errors(metrics: &str) -> f64 {
    metric_value(
        metrics,
        "fieldseal_upstream_errors_total",
        &[("upstream", "legacy"), ("kind", "connect")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn an_https_upstream_is_reached_through_a_configured_ca_with_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("fieldseal test CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"], false);
    let (addr, seen, _task) = tls_backend(&cert, &key, None).await;

    let by_name = TestProxy::start(&https_upstream(
        &format!("https://localhost:{}", addr.port()),
        &format!("ca: \"{}\"", ca_path.display()),
    ))
    .await;
    let (status, body) = get(&by_name).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "{\"over\":\"tls\"}");
    assert_eq!(
        seen.sni.lock().expect("lock").as_slice(),
        &[Some("localhost".to_string())]
    );

    // By IP: checked against the IP SAN, no SNI (RFC 6066 has no IP names).
    let by_ip = TestProxy::start(&https_upstream(
        &format!("https://{addr}"),
        &format!("ca: \"{}\"", ca_path.display()),
    ))
    .await;
    let (status, body) = get(&by_ip).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(seen.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_wrong_name_or_untrusted_certificate_is_refused_with_502_and_nothing_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("fieldseal test CA");
    let ca_path = ca.write(dir.path(), "ca.pem");

    // Trusted CA, but issued for another name.
    let (cert, key) = ca.issue(&["billing.other.example"], false);
    let (addr, seen, _task) = tls_backend(&cert, &key, None).await;
    let proxy = TestProxy::start(&https_upstream(
        &format!("https://localhost:{}", addr.port()),
        &format!("ca: \"{}\"", ca_path.display()),
    ))
    .await;
    let (status, body) = get(&proxy).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_error_json(status, Some("application/json"), body.as_bytes());
    assert_eq!(
        seen.served.load(Ordering::SeqCst),
        0,
        "no request over a refused handshake"
    );
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    assert!(connect_errors(&metrics) >= 1.0, "{metrics}");

    // The right name, from a CA that is not the configured one.
    let other = Ca::new("someone else's CA");
    let (cert, key) = other.issue(&["localhost", "127.0.0.1"], false);
    let (addr, seen, _task) = tls_backend(&cert, &key, None).await;
    let proxy = TestProxy::start(&https_upstream(
        &format!("https://localhost:{}", addr.port()),
        &format!("ca: \"{}\"", ca_path.display()),
    ))
    .await;
    let (status, body) = get(&proxy).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(seen.served.load(Ordering::SeqCst), 0);

    // A plain-HTTP server behind an https:// URL: refused, never spoken to in clear.
    let plain = Backend::start("plain", Behavior::echo()).await;
    let proxy = TestProxy::start(&https_upstream(
        &format!("https://localhost:{}", plain.addr.port()),
        &format!("ca: \"{}\"", ca_path.display()),
    ))
    .await;
    let (status, body) = get(&proxy).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(plain.count(), 0);
}

#[tokio::test]
async fn mutual_tls_is_accepted_by_a_backend_that_requires_it_and_refused_without_the_cert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("fieldseal test CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let (cert, key) = ca.issue(&["localhost"], false);
    let (addr, seen, _task) = tls_backend(&cert, &key, Some(&ca)).await;
    let (client, client_key) = ca.issue(&["fieldseal-client"], true);
    let cert_path = dir.path().join("client.crt");
    let key_path = dir.path().join("client.key");
    std::fs::write(&cert_path, client.pem()).expect("write");
    std::fs::write(&key_path, client_key.serialize_pem()).expect("write");
    let url = format!("https://localhost:{}", addr.port());

    let with_cert = TestProxy::start(&https_upstream(
        &url,
        &format!(
            "ca: \"{}\", client_cert: \"{}\", client_key: \"{}\"",
            ca_path.display(),
            cert_path.display(),
            key_path.display()
        ),
    ))
    .await;
    let (status, body) = get(&with_cert).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(seen.client_certs.load(Ordering::SeqCst), 1);
    assert_eq!(seen.served.load(Ordering::SeqCst), 1);

    let without = TestProxy::start(&https_upstream(
        &url,
        &format!("ca: \"{}\"", ca_path.display()),
    ))
    .await;
    let (status, body) = get(&without).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        seen.served.load(Ordering::SeqCst),
        1,
        "nothing served without the cert"
    );
}

#[test]
fn upstream_tls_settings_are_checked_at_load() {
    let load = |yaml: &str| {
        fieldseal::Config::from_yaml(
            &format!("listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: a.crt, key: a.key }} }}\n{yaml}"),
            Path::new("/tmp/fieldseal.yaml"),
        )
    };
    let refused = [
        (
            https_upstream("http://127.0.0.1:9", "ca: ca.pem"),
            "only for https",
        ),
        (
            https_upstream("https://127.0.0.1:9", "client_cert: c.pem"),
            "client_key",
        ),
        (
            https_upstream("https://127.0.0.1:9", "client_key: k.pem"),
            "client_cert",
        ),
        (
            https_upstream("https://127.0.0.1:9", "verify: false"),
            "verify",
        ),
    ];
    for (yaml, says) in refused {
        let e = match load(&yaml) {
            Ok(_) => panic!("loaded: {yaml}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(says), "{e}");
    }
    assert!(load(&https_upstream("https://127.0.0.1:9", "ca: ca.pem")).is_ok());
}

#[tokio::test]
async fn a_ca_file_that_holds_no_certificate_is_a_load_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let yaml =
        format!(
        "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: server.crt, key: server.key }} }}\n{}",
        https_upstream("https://127.0.0.1:9", &format!("ca: \"{}\"", empty.display()))
    );
    write_certs(dir.path());
    let config_path = dir.path().join("fieldseal.yaml");
    let config = fieldseal::Config::from_yaml(&yaml, &config_path).expect("config loads");
    let e = match fieldseal::Proxy::new(config) {
        Ok(_) => panic!("a CA file without a certificate was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("upstreams.legacy.tls") && e.contains("no certificate"),
        "{e}"
    );
}

/// Waits until the upstream's health check counter `outcome` reaches `n`.
async fn checks_reach(proxy: &TestProxy, outcome: &str, n: f64) {
    bounded("health checks", async {
        loop {
            let (_, m) = admin_get(proxy, "/metrics").await;
            let got = metric_value(
                &m,
                "fieldseal_upstream_health_checks_total",
                &[("upstream", "legacy"), ("outcome", outcome)],
            );
            if got.unwrap_or(0.0) >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn active_checks_go_over_tls_like_requests_client_certificate_and_host_included() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("fieldseal test CA");
    let ca_path = ca.write(dir.path(), "ca.pem");
    let (cert, key) = ca.issue(&["localhost"], false);
    let (addr, seen, _task) = tls_backend(&cert, &key, Some(&ca)).await;
    let (client, client_key) = ca.issue(&["fieldseal-client"], true);
    let cert_path = dir.path().join("client.crt");
    let key_path = dir.path().join("client.key");
    std::fs::write(&cert_path, client.pem()).expect("write");
    std::fs::write(&key_path, client_key.serialize_pem()).expect("write");
    let tls = format!(
        "ca: \"{}\", client_cert: \"{}\", client_key: \"{}\"",
        ca_path.display(),
        cert_path.display(),
        key_path.display()
    );
    let checks = "    host: legacy.internal\n    health: { fails: 1, backoff: 300s, path: /healthz, interval: 100ms }\n";
    let yaml = https_upstream(&format!("https://localhost:{}", addr.port()), &tls)
        .replace("routes:", &format!("{checks}routes:"));
    let proxy = TestProxy::start(&yaml).await;
    checks_reach(&proxy, "ok", 2.0).await;
    {
        let requests = seen.requests.lock().expect("lock");
        assert!(
            requests
                .iter()
                .any(|(p, h)| p == "/healthz" && h == "legacy.internal"),
            "{requests:?}"
        );
    }
    assert!(seen.client_certs.load(Ordering::SeqCst) >= 1);
    assert!(seen
        .sni
        .lock()
        .expect("lock")
        .iter()
        .all(|s| s.as_deref() == Some("localhost")));

    // A certificate for another name fails the checks as it fails requests.
    let (wrong, wrong_key) = ca.issue(&["other.example"], false);
    let (waddr, wseen, _wtask) = tls_backend(&wrong, &wrong_key, None).await;
    let yaml = https_upstream(
        &format!("https://localhost:{}", waddr.port()),
        &format!("ca: \"{}\"", ca_path.display()),
    )
    .replace("routes:", &format!("{checks}routes:"));
    let wrong_proxy = TestProxy::start(&yaml).await;
    checks_reach(&wrong_proxy, "failed", 2.0).await;
    let (_, m) = admin_get(&wrong_proxy, "/metrics").await;
    let server = format!("https://localhost:{}", waddr.port());
    assert_eq!(
        metric_value(
            &m,
            "fieldseal_upstream_server_up",
            &[("upstream", "legacy"), ("server", server.as_str())]
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(wseen.served.load(Ordering::SeqCst), 0, "nothing was sent");
}
