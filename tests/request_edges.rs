//! Requests and answers at the edges of the protocol, through the real
//! proxy: host-less requests, path spellings a backend reads as an
//! encrypting route's path, transfer and content codings, a backend's 101,
//! error bodies and logs that must not echo what the client sent, and rate
//! limits once the client table is full. Every test asserts what the backend
//! received.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------
// Rate limits once the client table is full
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_full_client_table_still_limits_new_clients_and_keeps_tracked_ones_buckets() {
    let backend = Backend::start("a", Behavior::echo()).await;
    // Client addresses come from X-Forwarded-For (the test's peer is a
    // trusted proxy), so one socket stands for many clients.
    let yaml = format!(
        r#"trusted_proxies: [127.0.0.0/8]
rate_limit: {{ requests_per_second: 1, burst: 2, max_tracked_clients: 2 }}
{}"#,
        catch_all(&backend.url())
    );
    let proxy = TestProxy::start(&yaml).await;
    let c = proxy.h1();
    let ask = |ip: String| {
        let c = c.clone();
        let url = proxy.url("/x");
        async move {
            bounded("request", c.get(url).header("x-forwarded-for", ip).send())
                .await
                .expect("answer")
                .status()
        }
    };
    let started = Instant::now();
    // Two clients fill the table; the first keeps one of its two tokens.
    assert_eq!(ask("192.0.2.1".into()).await, StatusCode::OK);
    assert_eq!(ask("192.0.2.2".into()).await, StatusCode::OK);
    // 100 new clients, 6 requests each, while the table is full.
    let mut admitted_total = 0;
    for i in 0..100u32 {
        let ip = format!("10.9.{}.{}", i / 250, i % 250 + 1);
        let mut admitted = 0;
        for _ in 0..6 {
            match ask(ip.clone()).await {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("{ip}: {other}"),
            }
        }
        // Its burst of 2, plus what refilled while the test ran: never more.
        let refill = started.elapsed().as_secs() as usize + 1;
        assert!(
            admitted <= 2 + refill,
            "{ip} admitted {admitted} of 6 with a burst of 2"
        );
        admitted_total += admitted;
    }
    // The tracked client's own bucket still holds its token.
    assert_eq!(
        ask("192.0.2.1".into()).await,
        StatusCode::OK,
        "a tracked client with a token left was refused"
    );
    assert_eq!(
        backend.count(),
        2 + admitted_total + 1,
        "refused requests reached the backend"
    );
}
// ---------------------------------------------------------------------------
// A route sealing $.ssn, with a catch-all behind it
// ---------------------------------------------------------------------------

fn key_file(dir: &Path) -> PathBuf {
    let p = dir.join("k1.key");
    fieldseal::crypto::write_key_file(&p).expect("key file");
    p
}

fn is_envelope(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with("fs1:k1:"))
}

fn stored_ssn(r: &Recorded) -> Value {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "backend body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&r.body)
        )
    });
    v["ssn"].clone()
}

/// A route sealing `$.ssn` (opening it in answers) with a pass-through
/// catch-all behind it, which is what makes every bypass dangerous.
async fn sealed_with_catch_all() -> (ScriptedBackend, TestProxy, tempfile::TempDir) {
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path());
    let backend = ScriptedBackend::start().await;
    let yaml = format!(
        r#"upstreams:
  legacy: {{ url: "{url}", timeout: 20s }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn"]
    decrypt: ["$.ssn"]
  - name: all
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    (backend, proxy, keys)
}

fn raw_post(path: &str, host: Option<&str>, version: &str, extra: &str, body: &str) -> String {
    let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
    format!(
        "POST {path} {version}\r\n{host}Content-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

// ---------------------------------------------------------------------------
// Path spellings a backend reads as the encrypting route's path
// ---------------------------------------------------------------------------

/// Generated spellings of `/api/users`, by class: compound and odd format
/// suffixes (Spring's suffix matching), whitespace a backend trims (IIS,
/// .NET, Spring's `trimTokens`) at either end of any segment, encoded `%`
/// (double decoding), escapes that are not UTF-8, and fullwidth forms
/// (NFKC, Windows best-fit).
fn spellings() -> Vec<String> {
    let mut out = Vec::new();
    for suffix in [
        ".json.gz", ".tar.gz", ".x.y.z", ".json.", "..", "..json", ".json/", ".gz/", ".%20json",
    ] {
        out.push(format!("/api/users{suffix}"));
    }
    let spaces = [
        "%20",
        "%C2%A0",
        "%C2%85",
        "%E1%9A%80",
        "%E2%80%80",
        "%E2%80%8A",
        "%E2%80%8B",
        "%E2%80%A8",
        "%E2%80%AF",
        "%E3%80%80",
        "%EF%BB%BF",
        "%20%20",
    ];
    for ws in spaces {
        for shape in [
            "/api/users{}",
            "/api/users{}/",
            "/api/users{}/7",
            "/api/{}users",
            "/api{}/users",
            "/{}api/users",
            "/api/users{}.json",
            "/api/users{};x=1",
            "/api/users.{}",
            "/api/users{}.",
        ] {
            out.push(shape.replace("{}", ws));
        }
    }
    for p in [
        "/api/%2575sers",
        "/api/users%25",
        "/api%252Fusers",
        "/api/%25%37%35sers",
        "/api/users%2520",
        "/api/%252e%252e/api/users",
        "/api/users%C0%AE",
        "/api/users%C0",
        "/api/users%ED%A0%80",
        "/api/%EF%BD%95sers",
        "/api/users%EF%BC%8Ejson",
        "/api%EF%BC%8Fusers",
    ] {
        out.push(p.to_string());
    }
    out
}

#[tokio::test]
async fn path_spellings_of_an_encrypting_route_are_sealed_or_refused_never_forwarded_plain() {
    let (backend, proxy, _keys) = sealed_with_catch_all().await;
    // Sanity: the catch-all forwards plaintext.
    let r = proxy
        .raw_h1(
            raw_post(
                "/elsewhere",
                Some("localhost"),
                "HTTP/1.1",
                "",
                r#"{"ssn":"000-00-0000"}"#,
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(backend.raw_contains(b"000-00-0000"));

    let all = spellings();
    let mut refused = 0;
    for (i, p) in all.iter().enumerate() {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let secret = format!(
                "555-{}-{i:04}",
                if version == Version::HTTP_2 { 22 } else { 11 }
            );
            let doc = format!(r#"{{"ssn":"{secret}"}}"#);
            let before = backend.count();
            let status = if version == Version::HTTP_11 {
                let req = raw_post(p, Some("localhost"), "HTTP/1.1", "", &doc);
                proxy.raw_h1(req.as_bytes()).await.status
            } else {
                let req = Request::post(format!("https://localhost:{}{p}", proxy.https.port()))
                    .header("content-type", "application/json")
                    .body(full_body(doc.clone()))
                    .expect("request");
                proxy.h2_raw(req).await.status
            };
            match status {
                StatusCode::BAD_REQUEST => {
                    refused += 1;
                    assert_eq!(
                        backend.count(),
                        before,
                        "{version:?} {p}: refused but forwarded"
                    );
                }
                StatusCode::OK => {
                    let rec = backend.seen().pop().expect("forwarded");
                    assert!(
                        is_envelope(&stored_ssn(&rec)),
                        "{version:?} {p} forwarded as {} unsealed",
                        rec.path()
                    );
                }
                other => panic!("{version:?} {p}: {other}"),
            }
            assert!(
                !backend.raw_contains(secret.as_bytes()),
                "{version:?} {p}: plaintext reached the backend"
            );
        }
    }
    // The whitespace, percent and UTF-8 classes are refused; suffixes are
    // the route's own.
    assert!(
        refused >= 2 * (all.len() - 9),
        "{refused} of {} refused",
        2 * all.len()
    );
}

// ---------------------------------------------------------------------------
// A hand-built HTTP/2 client: the only way to send a request without
// :authority (and without Host), which no client library produces.
// ---------------------------------------------------------------------------

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name", plain strings.
fn hpack_literal(block: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// Huffman codes of the digits (RFC 7541 Appendix B), all a status needs.
fn huffman_digits(data: &[u8]) -> String {
    let codes: [(u32, u32); 10] = [
        (0b00000, 5),
        (0b00001, 5),
        (0b00010, 5),
        (0b011001, 6),
        (0b011010, 6),
        (0b011011, 6),
        (0b011100, 6),
        (0b011101, 6),
        (0b011110, 6),
        (0b011111, 6),
    ];
    let mut bits: u64 = 0;
    let mut n = 0;
    let mut out = String::new();
    for &b in data {
        bits = (bits << 8) | u64::from(b);
        n += 8;
        'more: loop {
            for (digit, (code, len)) in codes.iter().enumerate() {
                if n >= *len && ((bits >> (n - len)) & ((1 << len) - 1)) as u32 == *code {
                    out.push(char::from(b'0' + digit as u8));
                    n -= len;
                    continue 'more;
                }
            }
            break;
        }
    }
    out
}

/// The `:status` of a response header block (first field, as h2 writes it).
fn hpack_status(block: &[u8]) -> u16 {
    let b = block[0];
    if b & 0x80 != 0 {
        return match b & 0x7f {
            8 => 200,
            9 => 204,
            10 => 206,
            11 => 304,
            12 => 400,
            13 => 404,
            14 => 500,
            i => panic!("indexed field {i} is not a :status"),
        };
    }
    // A literal with the indexed name :status (8), with or without indexing.
    assert!(
        b == 0x48 || b == 0x08 || b == 0x18,
        "unexpected first field {b:#x}"
    );
    let (huffman, len) = (block[1] & 0x80 != 0, usize::from(block[1] & 0x7f));
    let raw = &block[2..2 + len];
    let text = if huffman {
        huffman_digits(raw)
    } else {
        String::from_utf8_lossy(raw).into_owned()
    };
    text.parse().expect("status digits")
}

/// Sends one request over a fresh TLS + HTTP/2 connection, with exactly the
/// header fields given (pseudo-headers included), and returns the status
/// and the body.
async fn h2_frames(proxy: &TestProxy, fields: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    let mut tls = tls_connect(proxy.https, proxy.tls_config(&[b"h2"])).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    let mut block = Vec::new();
    for (n, v) in fields {
        hpack_literal(&mut block, n, v);
    }
    let end_stream = if body.is_empty() { 0x1 } else { 0 };
    out.extend(h2_frame(0x1, 0x4 | end_stream, 1, &block));
    if !body.is_empty() {
        out.extend(h2_frame(0x0, 0x1, 1, body));
    }
    tls.write_all(&out).await.expect("write");
    let mut status = 0;
    let mut data = Vec::new();
    bounded("h2 answer", async {
        loop {
            let mut head = [0u8; 9];
            if tls.read_exact(&mut head).await.is_err() {
                break;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            tls.read_exact(&mut payload).await.expect("frame payload");
            match kind {
                0x4 if flags & 0x1 == 0 => {
                    tls.write_all(&h2_frame(0x4, 0x1, 0, &[]))
                        .await
                        .expect("ack");
                }
                0x1 if stream == 1 => {
                    status = hpack_status(&payload);
                    if flags & 0x1 != 0 {
                        break;
                    }
                }
                0x0 if stream == 1 => {
                    data.extend_from_slice(&payload);
                    if flags & 0x1 != 0 {
                        break;
                    }
                }
                0x3 if stream == 1 => break,
                0x7 => break,
                _ => {}
            }
        }
    })
    .await;
    (status, data)
}

// ---------------------------------------------------------------------------
// Host-less requests never skip a host-bound route
// ---------------------------------------------------------------------------

#[tokio::test]
async fn host_less_requests_never_fall_through_a_host_bound_encrypting_route() {
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path());
    let backend = ScriptedBackend::start().await;
    let yaml = format!(
        r#"upstreams:
  legacy: {{ url: "{url}" }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
routes:
  - name: users
    match: {{ host: api.example.com, path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn"]
  - name: all
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    let secret = "078-05-1120";
    let doc = format!(r#"{{"ssn":"{secret}"}}"#);

    // Refused, nothing forwarded: HTTP/1.1 without Host (RFC 9112 §3.2),
    // also with an absolute-form target; HTTP/1.0 without Host on a path
    // the host-bound route takes; an empty Host.
    for req in [
        raw_post("/api/users", None, "HTTP/1.1", "", &doc),
        raw_post(
            "http://api.example.com/api/users",
            None,
            "HTTP/1.1",
            "",
            &doc,
        ),
        raw_post("/api/users", None, "HTTP/1.0", "", &doc),
        raw_post("/api/users/7.json", None, "HTTP/1.0", "", &doc),
        raw_post("/api/users", Some(""), "HTTP/1.1", "", &doc),
    ] {
        let r = proxy.raw_h1(req.as_bytes()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{req}");
        assert_error_json(r.status, r.header("content-type"), &r.body);
    }
    // HTTP/2 without :authority and without Host.
    let (status, body) = h2_frames(
        &proxy,
        &[
            (":method", "POST"),
            (":scheme", "https"),
            (":path", "/api/users"),
            ("content-type", "application/json"),
        ],
        doc.as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{:?}", String::from_utf8_lossy(&body));
    assert_eq!(
        backend.count(),
        0,
        "a host-less request reached the backend"
    );

    // A path no host-bound route takes is served without a host, over
    // HTTP/1.0 and HTTP/2 (health checkers send such requests).
    let r = proxy
        .raw_h1(b"GET /health HTTP/1.0\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let (status, _) = h2_frames(
        &proxy,
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/health"),
        ],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    // With the bound host, the route seals.
    let r = proxy
        .raw_h1(raw_post("/api/users", Some("api.example.com"), "HTTP/1.1", "", &doc).as_bytes())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = backend.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen[..2].iter().all(|r| r.path() == "/health"));
    assert!(is_envelope(&stored_ssn(&seen[2])));
    assert!(
        !backend.raw_contains(secret.as_bytes()),
        "plaintext reached the backend"
    );

    // The risk that stays (a request with another Host goes past the bound
    // route) is reported by `fieldseal check`.
    let config = fieldseal::Config::from_yaml(
        &std::fs::read_to_string(&proxy.config_path).expect("config"),
        &proxy.config_path,
    )
    .expect("config loads");
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("\"users\" encrypts only for host") && w.contains("\"all\"")),
        "{:?}",
        config.warnings
    );
    let out = run_bin(
        &[
            "check",
            "--config",
            proxy.config_path.to_str().expect("path"),
        ],
        b"",
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: route \"users\" encrypts only for host \"api.example.com\""),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// Raw backends and compressed bodies
// ---------------------------------------------------------------------------

/// A backend speaking raw bytes: it reads a request head (and a
/// Content-Length body), answers `response` and closes.
struct RawBackend {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(response: &'static [u8]) -> RawBackend {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let requests: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let task = {
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = l.accept().await else {
                        continue;
                    };
                    let requests = Arc::clone(&requests);
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        let mut b = [0u8; 4096];
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut b).await {
                                Ok(n @ 1..) => got.extend_from_slice(&b[..n]),
                                _ => return,
                            }
                        }
                        requests.lock().expect("lock").push(got);
                        let _ = s.write_all(response).await;
                        let _ = s.shutdown().await;
                    });
                }
            })
        };
        RawBackend {
            addr,
            requests,
            task,
        }
    }

    fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).expect("br");
    }
    out
}

// ---------------------------------------------------------------------------
// An answer given before the request body is read
// ---------------------------------------------------------------------------

/// A 413 given on a Content-Length, or part-way through a chunked body,
/// reaches a client still sending the rest, on either runtime: the proxy
/// closes such a connection lingering (FIN, then reads the rest away) rather
/// than with unread bytes, which would reset it and lose the answer. Twenty
/// rounds each, as a reset is a race the client often, not always, loses.
#[tokio::test]
async fn a_413_before_the_body_is_read_reaches_a_client_still_sending() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let big = "x".repeat(1024 * 1024);
    let mut chunked = String::new();
    for piece in big.as_bytes().chunks(16 * 1024) {
        chunked.push_str(&format!("{:x}\r\n", piece.len()));
        chunked.push_str(std::str::from_utf8(piece).expect("ascii"));
        chunked.push_str("\r\n");
    }
    chunked.push_str("0\r\n\r\n");
    for runtime in ["shared", "per_core"] {
        let yaml = format!(
            "server: {{ runtime: {runtime}, workers: 2 }}\nupstreams:\n  legacy: {{ url: \"{}\" }}\nroutes:\n  - name: small\n    match: {{ path_prefix: / }}\n    upstream: legacy\n    max_body: \"1024\"\n",
            backend.url()
        );
        let proxy = TestProxy::start(&yaml).await;
        let c = proxy.h1();
        for round in 0..20 {
            let r = bounded(
                "413 on a Content-Length",
                c.post(proxy.url("/upload")).body(big.clone()).send(),
            )
            .await
            .unwrap_or_else(|e| panic!("{runtime}, round {round}: no answer: {e:?}"));
            assert_eq!(
                r.status(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "{runtime}, round {round}"
            );
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = bounded("413 body", r.bytes())
                .await
                .unwrap_or_else(|e| panic!("{runtime}, round {round}: body: {e:?}"));
            assert_error_json(StatusCode::PAYLOAD_TOO_LARGE, ct.as_deref(), &body);

            let req = format!(
                "POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
            );
            let r = proxy.raw_h1(req.as_bytes()).await;
            assert_eq!(
                r.status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{runtime}, round {round}: chunked"
            );
            assert_error_json(r.status, r.header("content-type"), &r.body);
        }
        proxy.stop().await;
    }
    assert_eq!(backend.count(), 0, "an over-limit body was forwarded");
}

// Transfer codings: only chunked
// ---------------------------------------------------------------------------

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_501_and_nothing_is_forwarded() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let proxy = TestProxy::start(&catch_all(&backend.url())).await;
    let chunked_body = "3\r\nabc\r\n0\r\n\r\n";
    let cases: [(&str, StatusCode); 5] = [
        (
            "Transfer-Encoding: gzip, chunked\r\n",
            StatusCode::NOT_IMPLEMENTED,
        ),
        (
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            StatusCode::NOT_IMPLEMENTED,
        ),
        (
            "Transfer-Encoding: identity, chunked\r\n",
            StatusCode::NOT_IMPLEMENTED,
        ),
        (
            "Transfer-Encoding: x-custom , chunked\r\n",
            StatusCode::NOT_IMPLEMENTED,
        ),
        (
            "Transfer-Encoding: chunked, chunked\r\n",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (te, want) in cases {
        let req = format!(
            "POST /upload HTTP/1.1\r\nHost: localhost\r\n{te}Connection: close\r\n\r\n{chunked_body}"
        );
        let r = proxy.raw_h1(req.as_bytes()).await;
        assert_eq!(r.status, want, "{te}");
        assert_error_json(r.status, r.header("content-type"), &r.body);
        assert_security_headers(&r.headers, te);
    }
    assert_eq!(
        backend.count(),
        0,
        "a body with a coding we don't undo was forwarded"
    );
    // Plain chunked still works.
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunked_body}"
    );
    let r = proxy.raw_h1(req.as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&backend.seen()[0].body[..], b"abc");
}

#[tokio::test]
async fn an_upstream_answer_with_a_transfer_coding_other_than_chunked_is_502() {
    let raw = RawBackend::start(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    let proxy = TestProxy::start(&catch_all(&format!("http://{}", raw.addr))).await;
    for (c, v) in proxy.clients() {
        let r = bounded("request", c.get(proxy.url("/x")).send())
            .await
            .expect("answer");
        assert_eq!(r.version(), v);
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
    assert_eq!(raw.count(), 2);
}

// ---------------------------------------------------------------------------
// A backend's 101 is never relayed
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_101_is_502_over_both_protocols() {
    let raw = RawBackend::start(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nraw bytes of another protocol",
    )
    .await;
    let proxy = TestProxy::start(&catch_all(&format!("http://{}", raw.addr))).await;
    for (c, v) in proxy.clients() {
        // No upgrade asked for, and one asked for: upgrades are not proxied.
        for ask in [false, true] {
            let mut rb = c.get(proxy.url("/socket"));
            if ask && v == Version::HTTP_11 {
                rb = rb
                    .header("upgrade", "websocket")
                    .header("connection", "upgrade");
            }
            let r = bounded("request", rb.send()).await.expect("answer");
            assert_eq!(r.version(), v);
            assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{v:?} ask={ask}");
            let body = r.bytes().await.expect("body");
            assert_error_json(StatusCode::BAD_GATEWAY, Some("application/json"), &body);
        }
    }
    let raw_req = proxy
        .raw_h1(b"GET /socket HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_req.status, StatusCode::BAD_GATEWAY);
    assert!(!String::from_utf8_lossy(&raw_req.body).contains("another protocol"));
    assert_eq!(raw.count(), 5);
}

// ---------------------------------------------------------------------------
// Content-Encoding across several lines
// ---------------------------------------------------------------------------

#[tokio::test]
async fn content_encoding_is_read_across_all_lines_both_ways() {
    let (backend, proxy, _keys) = sealed_with_catch_all().await;
    let plain = r#"{"ssn":"123-45-6789","name":"ce"}"#;

    // Requests: `identity` then `gzip` on two lines is gzip: decoded, sealed.
    for (c, v) in proxy.clients() {
        let before = backend.count();
        let mut h = http::HeaderMap::new();
        h.append("content-encoding", "identity".parse().expect("value"));
        h.append("content-encoding", "gzip".parse().expect("value"));
        h.insert("content-type", "application/json".parse().expect("value"));
        let r = bounded(
            "post",
            c.post(proxy.url("/api/users"))
                .headers(h)
                .body(gzip(plain.as_bytes()))
                .send(),
        )
        .await
        .expect("answer");
        assert_eq!(r.version(), v);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(backend.count(), before + 1);
        let rec = backend.seen().pop().expect("forwarded");
        assert!(is_envelope(&stored_ssn(&rec)), "{v:?}");
        assert!(rec.header("content-encoding").is_none());
        // Two codings over two lines (`gzip`, `gzip`): refused like one line.
        let mut h = http::HeaderMap::new();
        h.append("content-encoding", "gzip".parse().expect("value"));
        h.append("content-encoding", "gzip".parse().expect("value"));
        h.insert("content-type", "application/json".parse().expect("value"));
        let r = bounded(
            "post",
            c.post(proxy.url("/api/users"))
                .headers(h)
                .body(gzip(&gzip(plain.as_bytes())))
                .send(),
        )
        .await
        .expect("answer");
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(backend.count(), before + 1);
    }
    assert!(!backend.raw_contains(b"123-45-6789"));

    // Answers: what the backend stored, compressed and labelled over
    // several lines, comes back decoded and decrypted.
    let stored = backend.seen().pop().expect("stored").body;
    let cases: Vec<(&str, Vec<&str>, Vec<u8>, StatusCode)> = vec![
        (
            "identity+gzip",
            vec!["identity", "gzip"],
            gzip(&stored),
            StatusCode::OK,
        ),
        (
            "gzip+identity",
            vec!["gzip", "identity"],
            gzip(&stored),
            StatusCode::OK,
        ),
        (
            "gzip,br on two lines",
            vec!["gzip", "br"],
            brotli(&gzip(&stored)),
            StatusCode::OK,
        ),
        (
            "gzip, br on one line",
            vec!["gzip, br"],
            brotli(&gzip(&stored)),
            StatusCode::OK,
        ),
        (
            "three codings",
            vec!["gzip", "gzip", "gzip"],
            gzip(&gzip(&gzip(&stored))),
            StatusCode::BAD_GATEWAY,
        ),
        (
            "identity+compress",
            vec!["identity", "compress"],
            stored.to_vec(),
            StatusCode::BAD_GATEWAY,
        ),
    ];
    for (n, (what, lines, body, want)) in cases.into_iter().enumerate() {
        let path = format!("/api/users/ce/{n}");
        let mut reply = Reply::json(body);
        for l in &lines {
            reply = reply.header("content-encoding", l);
        }
        backend.set_reply(&path, reply);
        for (c, v) in proxy.clients() {
            let r = bounded("get", c.get(proxy.url(&path)).send())
                .await
                .expect("answer");
            assert_eq!(r.version(), v);
            assert_eq!(r.status(), want, "{what} {v:?}");
            let ce = r.headers().get("content-encoding").cloned();
            let text = r.text().await.expect("text");
            if want == StatusCode::OK {
                assert!(
                    ce.is_none(),
                    "{what}: decoded answer keeps no Content-Encoding"
                );
                let v: Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text:?}"));
                assert_eq!(v["ssn"], "123-45-6789", "{what}");
                assert_eq!(v["name"], "ce");
            } else {
                assert!(!text.contains("fs1:"), "{what}: {text}");
            }
        }
    }
}

#[tokio::test]
async fn an_answer_with_two_content_types_on_a_decrypting_route_is_502() {
    let (backend, proxy, _keys) = sealed_with_catch_all().await;
    backend.set_reply(
        "/api/users/ct",
        Reply {
            status: StatusCode::OK,
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("content-type".into(), "application/json".into()),
            ],
            body: Bytes::from_static(br#"{"ssn":"fs1:k1:not-opened"}"#),
        },
    );
    for (c, v) in proxy.clients() {
        let r = bounded("get", c.get(proxy.url("/api/users/ct")).send())
            .await
            .expect("answer");
        assert_eq!(r.version(), v);
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
    assert_eq!(backend.count(), 2);
}

// ---------------------------------------------------------------------------
// Error bodies and logs never echo what the client sent
// ---------------------------------------------------------------------------

/// Everything fieldseal logs in this test binary, at every level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("log lock").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let writer = {
            let buf = Arc::clone(&buf);
            move || Sink(Arc::clone(&buf))
        };
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("fieldseal=trace")
            .with_ansi(false)
            .with_writer(writer)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}

#[tokio::test]
async fn refusals_never_echo_client_supplied_strings() {
    let logs = captured_logs();
    let (backend, proxy, _keys) = sealed_with_catch_all().await;
    let marker = "zq7-client-said-this";
    let doc = r#"{"ssn":"1"}"#;
    let cases = [
        // An unknown Content-Encoding (the 415 used to quote it).
        raw_post("/api/users", Some("localhost"), "HTTP/1.1", &format!("Content-Encoding: {marker}\r\n"), doc),
        raw_post("/api/users", Some("localhost"), "HTTP/1.1", &format!("Content-Encoding: gzip, {marker}\r\n"), doc),
        // An unknown transfer coding.
        format!(
            "POST /api/users HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: {marker}, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        ),
        // A Content-Type that is not JSON, a bad Host, a bad path.
        raw_post("/api/users", Some("localhost"), "HTTP/1.1", "", doc)
            .replace("application/json", &format!("application/{marker}")),
        raw_post("/api/users", Some(&format!("{marker}@localhost")), "HTTP/1.1", "", doc),
        raw_post(&format!("/api/{marker}%25"), Some("localhost"), "HTTP/1.1", "", doc),
    ];
    for req in &cases {
        let r = proxy.raw_h1(req.as_bytes()).await;
        assert!(
            r.status.is_client_error() || r.status.is_server_error(),
            "{req}"
        );
        assert_error_json(r.status, r.header("content-type"), &r.body);
        assert!(
            !String::from_utf8_lossy(&r.body).contains(marker),
            "error body echoes the request: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        for (k, v) in &r.headers {
            assert!(
                !v.to_str().unwrap_or("").contains(marker),
                "header {k} echoes the request"
            );
        }
    }
    // The same over HTTP/2 for the Content-Encoding.
    let req = Request::post(proxy.url("/api/users"))
        .header("content-type", "application/json")
        .header("content-encoding", marker)
        .body(full_body(doc))
        .expect("request");
    let r = proxy.h2_raw(req).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(!String::from_utf8_lossy(&r.body).contains(marker));
    assert_eq!(backend.count(), 0);
    let text = String::from_utf8_lossy(&logs.lock().expect("log lock")).into_owned();
    assert!(
        text.contains("unsupported_encoding") && text.contains("transfer_coding_not_implemented"),
        "fieldseal's refusals were logged and captured:\n{text}"
    );
    assert!(
        !text.contains(marker),
        "a log line echoes the request:\n{text}"
    );
}
