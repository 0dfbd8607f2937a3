//! TLS termination: protocol versions and ALPN, from real clients and a
//! hand-built legacy ClientHello.

mod common;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn fixture() -> (Backend, TestProxy) {
    let backend = Backend::start("a", Behavior::echo()).await;
    let yaml = format!(
        r#"allowed_hosts: [localhost, 127.0.0.1]
upstreams:
  legacy: {{ url: "{}" }}
routes:
  - name: all
    match: {{ path_prefix: /api }}
    upstream: legacy
"#,
        backend.url()
    );
    let proxy = TestProxy::start(&yaml).await;
    (backend, proxy)
}

/// A TLS 1.1 ClientHello as an old client sends it: legacy_version 0x0302,
/// no supported_versions extension, TLS 1.0/1.1-era cipher suites.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x02]); // client_version: TLS 1.1
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // session_id: empty
    let suites: [u16; 6] = [
        0xc014, // TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA
        0xc013, // TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
        0x0035, // TLS_RSA_WITH_AES_256_CBC_SHA
        0x002f, // TLS_RSA_WITH_AES_128_CBC_SHA
        0x000a, // TLS_RSA_WITH_3DES_EDE_CBC_SHA
        0x00ff, // TLS_EMPTY_RENEGOTIATION_INFO_SCSV
    ];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null only
    let mut ext = Vec::new();
    // server_name: localhost
    let name = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0); // host_name
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    ext.extend_from_slice(&0x0000u16.to_be_bytes());
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    // supported_groups (elliptic_curves): secp256r1, secp384r1
    ext.extend_from_slice(&0x000au16.to_be_bytes());
    ext.extend_from_slice(&6u16.to_be_bytes());
    ext.extend_from_slice(&4u16.to_be_bytes());
    ext.extend_from_slice(&0x0017u16.to_be_bytes());
    ext.extend_from_slice(&0x0018u16.to_be_bytes());
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&0x000bu16.to_be_bytes());
    ext.extend_from_slice(&2u16.to_be_bytes());
    ext.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut hs = vec![0x01]; // ClientHello
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake record, TLS 1.0 record layer
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn tls11_client_hello_is_refused() {
    let (backend, proxy) = fixture().await;
    let mut tcp = bounded("connect", tokio::net::TcpStream::connect(proxy.https))
        .await
        .expect("connect");
    bounded("send hello", tcp.write_all(&tls11_client_hello()))
        .await
        .expect("send hello");
    let mut answer = Vec::new();
    // Reads until the server closes (or resets) the connection.
    let _ = bounded("server answer", tcp.read_to_end(&mut answer)).await;
    // Closing without a word is a refusal too; anything sent must be alerts.
    let mut rest = &answer[..];
    let mut alerts = 0;
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "truncated record header: {answer:02x?}");
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let (kind, payload) = (rest[0], &rest[5..(5 + len).min(rest.len())]);
        assert!(
            !(kind == 22 && payload.first() == Some(&2)),
            "the server answered a TLS 1.1 hello with a ServerHello: {answer:02x?}"
        );
        assert_eq!(
            kind, 21,
            "expected only TLS alert records, got {answer:02x?}"
        );
        assert_eq!(payload.first(), Some(&2), "a fatal alert: {answer:02x?}");
        // rustls says handshake_failure (40); protocol_version (70) would do as well.
        assert!(
            matches!(payload.get(1), Some(40 | 70)),
            "alert description: {answer:02x?}"
        );
        alerts += 1;
        rest = &rest[(5 + len).min(rest.len())..];
    }
    assert!(alerts <= 1, "one alert, then close: {answer:02x?}");
    assert_eq!(backend.count(), 0);
}

async fn get_over(
    proxy: &TestProxy,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> (
    RawResponse,
    Option<rustls::ProtocolVersion>,
    Option<Vec<u8>>,
) {
    let mut tls = tls_connect(proxy.https, config).await;
    let version = tls.get_ref().1.protocol_version();
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        proxy.https.port()
    );
    bounded("write", tls.write_all(req.as_bytes()))
        .await
        .expect("write");
    (read_h1_response(&mut tls).await, version, alpn)
}

#[tokio::test]
async fn tls12_only_client_succeeds() {
    let (backend, proxy) = fixture().await;
    let config = tls_client_config(
        &proxy.cert_pem,
        Some(&[&rustls::version::TLS12]),
        &[b"http/1.1"],
    );
    let (resp, version, alpn) = get_over(&proxy, config).await;
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn tls13_only_client_succeeds() {
    let (backend, proxy) = fixture().await;
    let config = tls_client_config(
        &proxy.cert_pem,
        Some(&[&rustls::version::TLS13]),
        &[b"http/1.1"],
    );
    let (resp, version, _) = get_over(&proxy, config).await;
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn alpn_negotiates_h2_when_offered() {
    let (_backend, proxy) = fixture().await;
    for versions in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = tls_client_config(&proxy.cert_pem, Some(&[versions]), &[b"h2", b"http/1.1"]);
        let tls = tls_connect(proxy.https, config).await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "{:?}",
            versions.version
        );
    }
    // Without ALPN the connection is HTTP/1.1 and still served.
    let config = tls_client_config(&proxy.cert_pem, None, &[]);
    let (resp, _, alpn) = get_over(&proxy, config).await;
    assert_eq!(alpn, None);
    assert_eq!(resp.status, StatusCode::OK);

    // And reqwest over h2 really gets HTTP/2 answers.
    let r = bounded("h2 get", proxy.h2().get(proxy.url("/api/x")).send())
        .await
        .expect("h2 request");
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);
    let r = bounded("h1 get", proxy.h1().get(proxy.url("/api/x")).send())
        .await
        .expect("h1 request");
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn certificate_is_valid_for_ip_address_too() {
    let (_backend, proxy) = fixture().await;
    let config = tls_client_config(&proxy.cert_pem, None, &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(proxy.https)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("ip name");
    bounded(
        "handshake by IP",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("the certificate covers 127.0.0.1");
}

#[tokio::test]
async fn silent_tcp_client_is_dropped_after_handshake_timeout() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let yaml = catch_all(&backend.url());
    // The harness writes `listen`; a handshake timeout needs the tls block,
    // so build this one by hand.
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let https = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = https.local_addr().unwrap();
    let text = format!(
        "listen: {{ address: \"{addr}\", tls: {{ cert: server.crt, key: server.key, handshake_timeout: 1s }} }}\n{yaml}"
    );
    let config = fieldseal::Config::from_yaml(&text, &dir.path().join("f.yaml")).expect("config");
    let proxy = fieldseal::Proxy::new(config).expect("proxy");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(proxy.serve(
        fieldseal::Listeners {
            https,
            redirect: None,
            admin: None,
        },
        async move {
            let _ = rx.await;
        },
    ));
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    let _ = bounded("server drops a silent client", tcp.read_to_end(&mut buf)).await;
    assert!(
        buf.is_empty(),
        "nothing is sent to a client that never said hello"
    );
    let _ = tx.send(());
    bounded("shutdown", serving).await.expect("serve");
}

/// Several certificates on one listener, chosen by SNI: exact names, a
/// wildcard, and the default pair for any other name.
#[tokio::test]
async fn sni_selects_the_certificate_by_name() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let (default_dir, sni_dir) = (dir.path().join("default"), dir.path().join("sni"));
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (dc, dk) = fieldseal::tls::write_self_signed(&default_dir, &names(&["localhost"]), false)
        .expect("default pair");
    let (sc, sk) =
        fieldseal::tls::write_self_signed(&sni_dir, &names(&["api.test", "*.wild.test"]), false)
            .expect("sni pair");
    let settings = fieldseal::tls::TlsSettings {
        cert: dc.clone(),
        key: dk,
        sni: vec![fieldseal::tls::SniCert {
            names: names(&["api.test", "*.wild.test"]),
            cert: sc.clone(),
            key: sk,
        }],
        handshake_timeout: std::time::Duration::from_secs(5),
        client_auth: None,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(
        fieldseal::tls::server_config(&settings).expect("server config"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });

    let der = |p: &std::path::Path| CertificateDer::from_pem_file(p).expect("cert pem");
    let (default_der, sni_der) = (der(&dc), der(&sc));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(default_der.clone()).expect("root");
    roots.add(sni_der.clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    for (name, want) in [
        ("api.test", &sni_der),
        ("x.wild.test", &sni_der),
        ("localhost", &default_der),
    ] {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let server_name = ServerName::try_from(name.to_string()).expect("name");
        let tls = bounded("handshake", connector.connect(server_name, tcp))
            .await
            .unwrap_or_else(|e| panic!("{name}: handshake failed: {e}"));
        let got = tls.get_ref().1.peer_certificates().expect("peer certs");
        assert_eq!(&got[0], want, "{name} got the wrong certificate");
    }
    server.abort();
}
