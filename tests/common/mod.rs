//! Shared harness for the integration suites: a recording backend, the proxy
//! started in-process on port-0 listeners, and real TLS clients.
//!
//! Every wait in here is bounded (`bounded`) so a broken proxy fails a test
//! instead of hanging it.
#![allow(dead_code)] // each test crate uses a different part of the harness

pub mod jwt;
pub mod pg;
pub mod process;
pub mod record_store;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fieldseal::{Config, Listeners, Proxy};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous upper bound for any single network step in a test. It only
/// keeps a broken build from hanging; nothing asserts on speed.
/// FIELDSEAL_TEST_RUNTIME=shared (or per_core) runs a suite on that runtime:
/// the `server:` line a test config gets (test-only; a config's own
/// `server:` block wins). Configs rewritten for a reload take it too, since
/// `server` cannot change on reload.
pub fn test_runtime(rest: &str) -> String {
    match std::env::var("FIELDSEAL_TEST_RUNTIME") {
        Ok(mode) if !rest.contains("server:") => {
            format!("server: {{ runtime: {mode}, workers: 2 }}\n")
        }
        _ => String::new(),
    }
}

pub const STEP: Duration = Duration::from_secs(30);

/// Awaits `fut`, panicking with `what` if it takes longer than [`STEP`].
pub async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

// ---------------------------------------------------------------------------
// Recording backend
// ---------------------------------------------------------------------------

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How a backend answers.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Sleep this long (after recording the request) before answering.
    pub delay: Option<Duration>,
    /// Extra response headers, e.g. its own Content-Security-Policy.
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Behavior {
    pub fn echo() -> Behavior {
        Behavior::default()
    }

    pub fn slow(delay: Duration) -> Behavior {
        Behavior {
            delay: Some(delay),
            ..Behavior::default()
        }
    }

    pub fn with_headers(headers: Vec<(&'static str, &'static str)>) -> Behavior {
        Behavior {
            headers,
            ..Behavior::default()
        }
    }
}

/// An HTTP/1.1 backend on 127.0.0.1:0 that records everything it is sent and
/// answers with a JSON echo: `{"backend", "method", "path", "query", "body"}`.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    accept: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str, behavior: Behavior) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let behavior = Arc::new(behavior);
        let name_owned = name.to_string();
        let accept = {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let seen = Arc::clone(&seen);
                    let behavior = Arc::clone(&behavior);
                    let name = name_owned.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let seen = Arc::clone(&seen);
                            let behavior = Arc::clone(&behavior);
                            let name = name.clone();
                            async move {
                                Ok::<_, Infallible>(answer(&name, &seen, &behavior, req).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            })
        };
        Backend {
            name: name.to_string(),
            addr,
            seen,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the backend has received so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().expect("backend lock").clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("backend lock").len()
    }

    /// Waits (bounded) until the backend has received at least `n` requests.
    pub async fn wait_for(&self, n: usize) {
        bounded("backend to receive a request", async {
            while self.count() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(
    name: &str,
    seen: &Mutex<Vec<Recorded>>,
    behavior: &Behavior,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let echo = serde_json::json!({
        "backend": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "body": String::from_utf8_lossy(&body),
    });
    seen.lock().expect("backend lock").push(Recorded {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
    });
    if let Some(d) = behavior.delay {
        tokio::time::sleep(d).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(echo.to_string())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (k, v) in &behavior.headers {
        resp.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    resp
}

/// An address nothing listens on: bound, then released, for a child
/// process to bind. The port comes from below the kernel's ephemeral range
/// (32768-60999 on Linux), which port 0 would draw from: there, any
/// outgoing connection of a test running beside this one could take it
/// between our release and the child's bind.
pub fn dead_address() -> SocketAddr {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            let addr = l.local_addr().expect("addr");
            drop(l);
            return addr;
        }
    }
    panic!("no free port in 20000-31999");
}

// ---------------------------------------------------------------------------
// The proxy, in-process
// ---------------------------------------------------------------------------

/// Writes a self-signed certificate for localhost and 127.0.0.1 into `dir`
/// and returns the certificate PEM.
/// One upstream `legacy` at `url` and one route `all` that takes every path.
pub fn catch_all(url: &str) -> String {
    format!(
        r#"upstreams:
  legacy: {{ url: "{url}" }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: legacy
"#
    )
}

pub fn write_certs(dir: &Path) -> Vec<u8> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let (cert, _key) = fieldseal::tls::write_self_signed(dir, &names, false).expect("certs");
    std::fs::read(cert).expect("read cert")
}

pub struct TestProxy {
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub redirect: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub cert_pem: Vec<u8>,
    pub proxy: Proxy,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<()>>,
}

impl TestProxy {
    /// Starts the proxy. `rest` is the YAML after `listen:`/`admin:` (which
    /// the harness writes, with the ports it bound). With `redirect`, a
    /// plain-HTTP redirect listener is bound too.
    pub async fn start_with(rest: &str, redirect: bool) -> TestProxy {
        TestProxy::start_full(rest, redirect, "127.0.0.1:0", "", "").await
    }

    /// Like `start`, with the admin listener bound to `admin_bind` and
    /// `admin_extra` (e.g. `, token_file: admin.token`) in its settings.
    pub async fn start_admin(rest: &str, admin_bind: &str, admin_extra: &str) -> TestProxy {
        TestProxy::start_full(rest, false, admin_bind, admin_extra, "").await
    }

    /// Like `start`, with `tls_extra` (e.g. `handshake_timeout: 1s`) added
    /// to the `listen.tls` block the harness writes.
    pub async fn start_tls(rest: &str, tls_extra: &str) -> TestProxy {
        TestProxy::start_full(rest, false, "127.0.0.1:0", "", tls_extra).await
    }

    async fn start_full(
        rest: &str,
        redirect: bool,
        admin_bind: &str,
        admin_extra: &str,
        tls_extra: &str,
    ) -> TestProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_pem = write_certs(dir.path());
        // As `run` binds it: SO_REUSEPORT, so each serving runtime of
        // `server.runtime: per_core` binds its own socket on this port.
        let https =
            fieldseal::bind_shared("listen.address", "127.0.0.1:0".parse().expect("address"))
                .expect("bind https");
        let admin = TcpListener::bind(admin_bind).await.expect("bind admin");
        let redirect_l = if redirect {
            Some(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind redirect"),
            )
        } else {
            None
        };
        let https_addr = https.local_addr().expect("addr");
        let admin_addr = admin.local_addr().expect("addr");
        let redirect_addr = redirect_l.as_ref().map(|l| l.local_addr().expect("addr"));
        let tls_extra = if tls_extra.is_empty() {
            String::new()
        } else {
            format!(", {tls_extra}")
        };
        let mut yaml = format!(
            "listen: {{ address: \"{https_addr}\", tls: {{ cert: server.crt, key: server.key{tls_extra} }} }}\n\
             admin: {{ address: \"{admin_addr}\"{admin_extra} }}\n"
        );
        if let Some(r) = redirect_addr {
            yaml.push_str(&format!("redirect_http: {{ address: \"{r}\" }}\n"));
        }
        yaml.push_str(&test_runtime(rest));
        yaml.push_str(rest);
        let config_path = dir.path().join("fieldseal.yaml");
        std::fs::write(&config_path, &yaml).expect("write config");
        let config = Config::from_yaml(&yaml, &config_path)
            .unwrap_or_else(|e| panic!("test config does not load: {e}\n{yaml}"));
        let proxy = Proxy::new(config).expect("proxy loads");
        let (tx, rx) = oneshot::channel::<()>();
        let serving = tokio::spawn(proxy.clone().serve(
            Listeners {
                https,
                redirect: redirect_l,
                admin: Some(admin),
            },
            async move {
                let _ = rx.await;
            },
        ));
        TestProxy {
            https: https_addr,
            admin: admin_addr,
            redirect: redirect_addr,
            dir,
            config_path,
            cert_pem,
            proxy,
            shutdown: Some(tx),
            serving: Some(serving),
        }
    }

    pub async fn start(rest: &str) -> TestProxy {
        TestProxy::start_with(rest, false).await
    }

    /// `https://localhost:PORT{path}` (clients resolve localhost to the proxy).
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.https.port(), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    fn reqwest_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.cert_pem).expect("cert pem"))
            .resolve("localhost", self.https)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(STEP)
    }

    /// A reqwest client that only speaks HTTP/1.1.
    pub fn h1(&self) -> reqwest::Client {
        self.reqwest_builder().http1_only().build().expect("client")
    }

    /// A reqwest client that only speaks HTTP/2 (ALPN h2).
    pub fn h2(&self) -> reqwest::Client {
        self.reqwest_builder()
            .http2_prior_knowledge()
            .build()
            .expect("client")
    }

    /// A reqwest client presenting `identity_pem` (its certificate chain,
    /// leaf first, and private key, PEM) as its TLS client certificate;
    /// HTTP/2 only when `h2`, else HTTP/1.1 only.
    pub fn with_client_cert(&self, identity_pem: &[u8], h2: bool) -> reqwest::Client {
        let id = reqwest::Identity::from_pem(identity_pem).expect("client identity");
        let b = self.reqwest_builder().identity(id);
        let b = if h2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        };
        b.build().expect("client")
    }

    /// Both clients with the version each must produce.
    pub fn clients(&self) -> [(reqwest::Client, Version); 2] {
        [(self.h1(), Version::HTTP_11), (self.h2(), Version::HTTP_2)]
    }

    pub fn tls_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        tls_client_config(&self.cert_pem, None, alpn)
    }

    /// Sends hand-written HTTP/1.1 bytes over TLS and reads the answer to EOF
    /// (the request should carry `Connection: close`).
    pub async fn raw_h1(&self, request: &[u8]) -> RawResponse {
        raw_h1_over(self.https, self.tls_config(&[b"http/1.1"]), request).await
    }

    /// One request over a fresh HTTP/2 connection (hyper client, so the URI
    /// and :authority are sent exactly as given, no normalization).
    pub async fn h2_raw(&self, req: Request<BoxBody<Bytes, std::io::Error>>) -> RawResponse {
        let tls = tls_connect(self.https, self.tls_config(&[b"h2"])).await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "h2 negotiated"
        );
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let resp = bounded("h2 response", sender.send_request(req))
            .await
            .expect("h2 request");
        let (parts, body) = resp.into_parts();
        let body = bounded("h2 body", body.collect())
            .await
            .expect("h2 body")
            .to_bytes();
        RawResponse {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: body.to_vec(),
        }
    }

    /// Stops serving and waits (bounded) for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.serving.take() {
            bounded("proxy shutdown", h).await.expect("serve task");
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A body for `h2_raw`: the bytes, with a known length.
pub fn full_body(b: impl Into<Bytes>) -> BoxBody<Bytes, std::io::Error> {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A body of unknown length (no Content-Length, no size hint).
pub fn streaming_body(chunks: Vec<Bytes>) -> BoxBody<Bytes, std::io::Error> {
    let frames = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(hyper::body::Frame::data(c))),
    );
    http_body_util::StreamBody::new(frames).boxed()
}

// ---------------------------------------------------------------------------
// Raw TLS helpers
// ---------------------------------------------------------------------------

/// A rustls client config trusting `cert_pem`, with the ring provider,
/// optionally limited to some protocol versions, offering `alpn`.
pub fn tls_client_config(
    cert_pem: &[u8],
    versions: Option<&[&'static rustls::SupportedProtocolVersion]>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(cert.expect("cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = match versions {
        Some(v) => builder.with_protocol_versions(v),
        None => builder.with_safe_default_protocol_versions(),
    }
    .expect("versions");
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = bounded("tcp connect", TcpStream::connect(addr))
        .await
        .expect("tcp connect");
    let name = ServerName::try_from("localhost").expect("server name");
    bounded(
        "tls handshake",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("tls handshake")
}

/// A parsed HTTP response from the raw clients.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

pub async fn raw_h1_over(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    request: &[u8],
) -> RawResponse {
    let mut tls = tls_connect(addr, config).await;
    bounded("write request", tls.write_all(request))
        .await
        .expect("write request");
    let _ = tls.flush().await;
    read_h1_response(&mut tls).await
}

/// Reads one HTTP/1.1 response: reads to EOF, then parses it (Content-Length
/// or chunked body).
pub async fn read_h1_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> RawResponse {
    let mut buf = Vec::new();
    // An abrupt close after a complete answer (e.g. TLS close_notify
    // missing) is fine: we parse what arrived.
    let _ = bounded("read response", stream.read_to_end(&mut buf)).await;
    parse_h1_response(&buf)
}

pub fn parse_h1_response(buf: &[u8]) -> RawResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no complete response head: {:?}",
                String::from_utf8_lossy(buf)
            )
        });
    let head = std::str::from_utf8(&buf[..end]).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    let version = match parts.next() {
        Some("HTTP/1.1") => Version::HTTP_11,
        Some("HTTP/1.0") => Version::HTTP_10,
        other => panic!("unexpected version {other:?}"),
    };
    let status: StatusCode = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let mut headers = HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':').expect("header line");
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes()).expect("header name"),
            HeaderValue::from_str(v.trim()).expect("header value"),
        );
    }
    let rest = &buf[end + 4..];
    let chunked = headers
        .get(http::header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else if let Some(n) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        assert!(rest.len() >= n, "body shorter than Content-Length");
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    RawResponse {
        status,
        version,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_str = std::str::from_utf8(&data[..eol]).expect("chunk size");
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size hex");
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Assertions shared by the suites
// ---------------------------------------------------------------------------

/// The security headers every answer carries (CSP checked separately, it
/// varies per route).
pub fn assert_security_headers(headers: &HeaderMap, what: &str) {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    assert_eq!(
        get("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains"),
        "HSTS on {what}"
    );
    assert!(
        get("content-security-policy").is_some(),
        "CSP on {what}: {headers:?}"
    );
    assert_eq!(
        get("x-content-type-options"),
        Some("nosniff"),
        "X-Content-Type-Options on {what}"
    );
    assert_eq!(
        get("x-frame-options"),
        Some("DENY"),
        "X-Frame-Options on {what}"
    );
    assert_eq!(
        get("referrer-policy"),
        Some("no-referrer"),
        "Referrer-Policy on {what}"
    );
    assert_eq!(
        get("x-xss-protection"),
        Some("0"),
        "X-XSS-Protection on {what}"
    );
}

/// The proxy's own error answers: JSON `{"error": "...", "status": N}`.
pub fn assert_error_json(status: StatusCode, content_type: Option<&str>, body: &[u8]) {
    assert_eq!(
        content_type,
        Some("application/json"),
        "error answers are JSON"
    );
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "error body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    assert_eq!(v["status"], status.as_u16(), "status field in {v}");
    assert!(
        v["error"].as_str().is_some_and(|s| !s.is_empty()),
        "error message in {v}"
    );
}

// ===========================================================================
// Field-encryption suites (encryption_e2e.rs, offline_cli.rs): a scripted
// backend that records the raw bytes it reads and answers with bodies the
// test chooses (e.g. the envelopes it stored, to simulate a read-back).
// Append-only section.
// ===========================================================================

/// What a [`ScriptedBackend`] answers: status, headers and exact body bytes.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    /// `200 application/json` with `body`.
    pub fn json(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// What a scripted backend answers when the test set nothing for a path.
pub fn default_reply() -> Reply {
    Reply::json(r#"{"stored":true}"#)
}

/// The raw bytes read from each connection, one shared buffer per connection.
type RawLogs = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// Counts and records the bytes read from one TCP connection.
struct TapIo {
    inner: TcpStream,
    log: Arc<Mutex<Vec<u8>>>,
}

impl tokio::io::AsyncRead for TapIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &res {
            let new = buf.filled()[before..].to_vec();
            self.log.lock().expect("tap lock").extend_from_slice(&new);
        }
        res
    }
}

impl tokio::io::AsyncWrite for TapIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP/1.1 backend on 127.0.0.1:0 that records every request (parsed,
/// and every raw byte read from every connection) and answers with the
/// [`Reply`] set for the request's path, else with the default reply.
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    raw: RawLogs,
    replies: Arc<Mutex<std::collections::HashMap<String, Reply>>>,
    default: Arc<Mutex<Reply>>,
    accept: JoinHandle<()>,
}

impl ScriptedBackend {
    pub async fn start() -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let raw: RawLogs = Arc::default();
        let replies: Arc<Mutex<std::collections::HashMap<String, Reply>>> = Arc::default();
        let default = Arc::new(Mutex::new(default_reply()));
        let accept = {
            let (seen, raw, replies, default) = (
                Arc::clone(&seen),
                Arc::clone(&raw),
                Arc::clone(&replies),
                Arc::clone(&default),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let log: Arc<Mutex<Vec<u8>>> = Arc::default();
                    raw.lock().expect("raw lock").push(Arc::clone(&log));
                    let (seen, replies, default) = (
                        Arc::clone(&seen),
                        Arc::clone(&replies),
                        Arc::clone(&default),
                    );
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let (seen, replies, default) = (
                                Arc::clone(&seen),
                                Arc::clone(&replies),
                                Arc::clone(&default),
                            );
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                let reply = replies
                                    .lock()
                                    .expect("replies lock")
                                    .get(parts.uri.path())
                                    .cloned()
                                    .unwrap_or_else(|| {
                                        default.lock().expect("default lock").clone()
                                    });
                                seen.lock().expect("backend lock").push(Recorded {
                                    method: parts.method,
                                    uri: parts.uri,
                                    version: parts.version,
                                    headers: parts.headers,
                                    body,
                                });
                                let mut resp = Response::new(Full::new(reply.body));
                                *resp.status_mut() = reply.status;
                                for (k, v) in &reply.headers {
                                    resp.headers_mut().append(
                                        http::HeaderName::from_bytes(k.as_bytes())
                                            .expect("reply header name"),
                                        HeaderValue::from_str(v).expect("reply header value"),
                                    );
                                }
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(TapIo { inner: tcp, log }), svc)
                            .await;
                    });
                }
            })
        };
        ScriptedBackend {
            addr,
            seen,
            raw,
            replies,
            default,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer requests for exactly `path` with `reply` from now on.
    pub fn set_reply(&self, path: &str, reply: Reply) {
        self.replies
            .lock()
            .expect("replies lock")
            .insert(path.to_string(), reply);
    }

    /// Answer requests for paths without their own reply with `reply`.
    pub fn set_default_reply(&self, reply: Reply) {
        *self.default.lock().expect("default lock") = reply;
    }

    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().expect("backend lock").clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("backend lock").len()
    }

    /// Every byte read so far, one buffer per connection.
    pub fn raw_bytes(&self) -> Vec<Vec<u8>> {
        self.raw
            .lock()
            .expect("raw lock")
            .iter()
            .map(|l| l.lock().expect("tap lock").clone())
            .collect()
    }

    /// True when `needle` occurs in the raw bytes of any connection.
    pub fn raw_contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty()
            && self
                .raw_bytes()
                .iter()
                .any(|b| b.windows(needle.len()).any(|w| w == needle))
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The value of a counter line `name{labels} N` in an OpenMetrics text,
/// where every `label="value"` pair of `labels` must appear (any order).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = rest.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let all = labels
            .iter()
            .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")));
        if all {
            value.split_whitespace().next()?.parse().ok()
        } else {
            None
        }
    })
}

/// `GET` on the admin listener (plain HTTP/1.1), body as text.
pub async fn admin_get(proxy: &TestProxy, path: &str) -> (StatusCode, String) {
    admin_request(proxy, "GET", path).await
}

/// One request to the admin listener over a fresh plain-HTTP/1.1 connection.
pub async fn admin_request(proxy: &TestProxy, method: &str, path: &str) -> (StatusCode, String) {
    let mut tcp = bounded("admin connect", TcpStream::connect(proxy.admin))
        .await
        .expect("admin connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    bounded("admin write", tcp.write_all(req.as_bytes()))
        .await
        .expect("admin write");
    let r = read_h1_response(&mut tcp).await;
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

/// Runs `fieldseal args...` with `stdin`, killing it if it outlives [`STEP`].
pub fn run_bin(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fieldseal"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn fieldseal");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // The child may exit early on an error and close its end: ignore EPIPE.
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = std::time::Instant::now() + STEP;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fieldseal {args:?} did not finish within {STEP:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    std::process::Output {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    }
}

// ---------------------------------------------------------------------------
// Key files
// ---------------------------------------------------------------------------

/// Writes a fresh key file (mode 0600) named `<id>.key` into `dir`.
pub fn key_file(dir: &Path, id: &str) -> PathBuf {
    let path = dir.join(format!("{id}.key"));
    fieldseal::crypto::write_key_file(&path).expect("write key file");
    path
}

/// A keyring over the same key files the proxy reads, for making envelopes.
pub fn file_ring(active: &str, files: &[(&str, &Path)]) -> fieldseal::crypto::Keyring {
    use fieldseal::crypto::{KeySource, KeySpec, Keyring, KeyringSpec};
    Keyring::load(&KeyringSpec {
        active: active.to_string(),
        keys: files
            .iter()
            .map(|(id, p)| KeySpec {
                id: id.to_string(),
                source: KeySource::File(p.to_path_buf()),
            })
            .collect(),
        pbkdf2_iterations: 100_000,
    })
    .expect("test keyring")
}

/// The review suites' proxy: a recording backend behind `routes` (YAML list
/// items), the top-level sections in `extra`, one key, and a plaintext
/// catch-all after the routes (where a mistaken match would land).
pub struct ReviewSetup {
    pub backend: ScriptedBackend,
    pub proxy: TestProxy,
    _keys: tempfile::TempDir,
}

pub async fn review_setup(routes: &str, extra: &str) -> ReviewSetup {
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path(), "k1");
    let backend = ScriptedBackend::start().await;
    let yaml = format!(
        r#"upstreams:
  legacy: {{ url: "{url}", connect_timeout: 2s, timeout: 20s }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
{extra}
routes:
{routes}  - name: everything-else
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    ReviewSetup {
        backend,
        proxy,
        _keys: keys,
    }
}

/// The review's encrypting route.
pub const REVIEW_USERS: &str = r#"  - name: users
    match: { path_prefix: /api/users }
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number", "$.contacts[*].phone"]
"#;
