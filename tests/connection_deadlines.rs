//! Every phase of a client connection has a deadline, and no client can
//! hold the proxy's resources by being silent, slow or not reading: the TLS
//! handshake, the first request (protocol detection and the HTTP/2 preface
//! included), idle keep-alive, a maximum connection age, a client that stops
//! reading an answer (which must release the upstream connection), buffered
//! answers held for an HTTP/2 client with a zero window, and plain HTTP sent
//! to the TLS port.
//!
//! Deadlines in these configs are 1 s; every assertion allows 10 s or more,
//! so a slow machine makes nothing fail.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a 1 s deadline may take to show, on any machine.
const WITHIN: Duration = Duration::from_secs(10);

/// Reads (and discards) until the peer closes: EOF or an error. Panics if
/// that takes longer than `within`; returns how long it took.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let done = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(done.is_ok(), "{what}: still open after {within:?}");
    start.elapsed()
}

/// One HTTP/1.1 response read off a keep-alive connection (Content-Length
/// bodies only): status, whether it said `Connection: close`, and the body;
/// None when the connection was closed before the first byte of a response.
async fn read_keep_alive_response<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Option<(StatusCode, bool, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = bounded("response head", s.read(&mut byte))
            .await
            .unwrap_or(0);
        if n == 0 {
            assert!(buf.is_empty(), "connection closed inside a response head");
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let status: u16 = head[9..12].parse().expect("status");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("length"))
        .unwrap_or(0);
    let close = head.lines().any(|l| l.trim() == "connection: close");
    let mut body = vec![0u8; len];
    bounded("response body", s.read_exact(&mut body))
        .await
        .expect("a response is never cut short");
    Some((StatusCode::from_u16(status).expect("status"), close, body))
}

async fn scrape(proxy: &TestProxy) -> String {
    let (status, text) = admin_get(proxy, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    text
}

/// A metric without labels (`name value`).
fn plain_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

fn closed_count(text: &str, reason: &str) -> f64 {
    metric_value(
        text,
        "fieldseal_connections_closed_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Silent and stalled sockets cannot lock everyone out
// ---------------------------------------------------------------------------

#[tokio::test]
async fn silent_and_stalled_sockets_are_closed_and_a_real_client_gets_served() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let yaml = format!(
        // One client holds every slot here, so its share is all of them.
        "limits: {{ max_connections: 5, max_connections_per_client: 5, header_read_timeout: 1s }}\n{}",
        catch_all(&backend.url())
    );
    let proxy = TestProxy::start_tls(&yaml, "handshake_timeout: 1s").await;

    // Five sockets, one per phase a client can stop in; together they hold
    // every connection slot.
    let mut silent_tcp = TcpStream::connect(proxy.https).await.expect("connect");
    let mut half_hello = TcpStream::connect(proxy.https).await.expect("connect");
    // A TLS record header announcing a ClientHello that never comes.
    half_hello
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .expect("write");
    let mut silent_h1 = tls_connect(proxy.https, proxy.tls_config(&[b"http/1.1"])).await;
    let mut half_preface = tls_connect(proxy.https, proxy.tls_config(&[b"h2"])).await;
    half_preface
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    let mut silent_no_alpn = tls_connect(proxy.https, proxy.tls_config(&[])).await;

    closed_within(&mut silent_tcp, WITHIN, "TCP connection that sent nothing").await;
    closed_within(&mut half_hello, WITHIN, "half a ClientHello").await;
    closed_within(&mut silent_h1, WITHIN, "TLS done, no request (http/1.1)").await;
    closed_within(&mut half_preface, WITHIN, "half an HTTP/2 preface").await;
    closed_within(
        &mut silent_no_alpn,
        WITHIN,
        "TLS done, no request (no ALPN)",
    )
    .await;

    // The slots are free again: a real client is served (its task may need
    // a moment to see the close, hence the retries).
    let client = proxy.h1();
    let served = tokio::time::timeout(WITHIN, async {
        loop {
            if let Ok(r) = client.get(proxy.url("/real")).send().await {
                break r.status();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a real client is served once the silent sockets are gone");
    assert_eq!(served, StatusCode::OK);
    assert_eq!(
        backend.count(),
        1,
        "only the real request reached the backend"
    );
    assert_eq!(backend.seen()[0].path(), "/real");
    let m = scrape(&proxy).await;
    assert!(closed_count(&m, "handshake_timeout") >= 2.0, "{m}");
    // HTTP/1.1's own header timer may be the one that fires first.
    assert!(
        closed_count(&m, "first_request_timeout") + closed_count(&m, "header_timeout") >= 3.0,
        "{m}"
    );
}

#[tokio::test]
async fn connections_without_a_request_or_idle_between_requests_are_closed() {
    let backend = Backend::start("a", Behavior::echo()).await;
    // A first-request deadline of 1 s.
    let strict_first = TestProxy::start(&format!(
        "limits: {{ header_read_timeout: 1s }}\n{}",
        catch_all(&backend.url())
    ))
    .await;
    // HTTP/2 preface and SETTINGS, then nothing.
    let tls = tls_connect(strict_first.https, strict_first.tls_config(&[b"h2"])).await;
    let (_send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    bounded("h2 without requests closed", async {
        let _ = tokio::time::timeout(WITHIN, conn)
            .await
            .expect("h2 connection with no request still open");
    })
    .await;

    // An idle timeout of 1 s, far below the header timeout: it is the idle
    // deadline that closes these.
    let idle = TestProxy::start(&format!(
        "limits: {{ header_read_timeout: 30s, idle_timeout: 1s }}\n{}",
        catch_all(&backend.url())
    ))
    .await;
    // HTTP/2: one request, then quiet.
    let tls = tls_connect(idle.https, idle.tls_config(&[b"h2"])).await;
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut send = bounded("h2 ready", send.ready()).await.expect("ready");
    let req = Request::get(idle.url("/h2-once"))
        .body(())
        .expect("request");
    let (resp, _) = send.send_request(req, true).expect("send");
    let resp = bounded("h2 response", resp).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    while let Some(chunk) = bounded("h2 body", body.data()).await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let _ = tokio::time::timeout(WITHIN, conn)
        .await
        .expect("idle HTTP/2 connection still open");

    // HTTP/1.1 keep-alive: one request, then quiet.
    let mut tls = tls_connect(idle.https, idle.tls_config(&[b"http/1.1"])).await;
    tls.write_all(b"GET /h1-once HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let (status, close, _) = read_keep_alive_response(&mut tls).await.expect("an answer");
    assert_eq!(status, StatusCode::OK);
    assert!(!close, "a keep-alive answer");
    closed_within(&mut tls, WITHIN, "idle HTTP/1.1 keep-alive connection").await;

    assert_eq!(backend.count(), 2);
    let m = scrape(&idle).await;
    assert!(closed_count(&m, "idle") >= 2.0, "{m}");
    let m = scrape(&strict_first).await;
    assert!(closed_count(&m, "first_request_timeout") >= 1.0, "{m}");
}

#[tokio::test]
async fn a_busy_connection_is_closed_gracefully_at_max_connection_age() {
    // Each answer takes 200 ms, and requests follow each other at once: the
    // age is most likely reached with one in flight.
    let backend = Backend::start("slowish", Behavior::slow(Duration::from_millis(200))).await;
    let proxy = TestProxy::start(&format!(
        "limits: {{ max_connection_age: 1s, connection_drain_timeout: 5s }}\n{}",
        catch_all(&backend.url())
    ))
    .await;
    let mut tls = tls_connect(proxy.https, proxy.tls_config(&[b"http/1.1"])).await;
    let started = Instant::now();
    let mut answered = 0;
    loop {
        assert!(
            started.elapsed() < WITHIN,
            "connection still serving after {WITHIN:?}"
        );
        if tls
            .write_all(b"GET /busy HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
        // Graceful: an exchange in flight is answered in full, the last one
        // with `Connection: close`; between exchanges the connection may
        // simply close (a client retries a request that was never read).
        match read_keep_alive_response(&mut tls).await {
            Some((status, close, _)) => {
                assert_eq!(status, StatusCode::OK);
                answered += 1;
                if close {
                    break;
                }
            }
            None => break,
        }
    }
    closed_within(&mut tls, WITHIN, "connection past its age").await;
    assert!(answered >= 1);
    backend.wait_for(answered).await;
    let m = scrape(&proxy).await;
    assert!(closed_count(&m, "max_age") >= 1.0, "{m}");
}

#[tokio::test]
async fn a_client_trickling_its_body_is_cut_off_at_max_connection_age() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let proxy = TestProxy::start(&format!(
        "limits: {{ max_connection_age: 1s, connection_drain_timeout: 1s }}\n{}",
        catch_all(&backend.url())
    ))
    .await;
    let tls = tls_connect(proxy.https, proxy.tls_config(&[b"http/1.1"])).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    wr.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n")
        .await
        .expect("write head");
    // One byte every 100 ms: never idle, never done.
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            if wr.write_all(b"x").await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    closed_within(&mut rd, WITHIN, "connection of a client trickling its body").await;
    trickle.abort();
    assert!(
        backend.seen().iter().all(|r| r.body.len() < 100_000),
        "the trickled body was never completed upstream"
    );
}

// ---------------------------------------------------------------------------
// A client that stops reading releases the upstream connection
// ---------------------------------------------------------------------------

/// A raw HTTP/1.1 backend that answers every request with an endless chunked
/// body and records when the proxy closed its connection (a write failed).
struct Firehose {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicU64>,
    released: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Firehose {
    async fn start() -> Firehose {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let connections = Arc::new(AtomicU64::new(0));
        let released: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let task = {
            let (connections, released) = (Arc::clone(&connections), Arc::clone(&released));
            tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = l.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let released = Arc::clone(&released);
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut b = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut b).await {
                                Ok(n @ 1..) => head.extend_from_slice(&b[..n]),
                                _ => return,
                            }
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                            .await;
                        let mut chunk = b"10000\r\n".to_vec();
                        chunk.extend_from_slice(&[b'z'; 0x10000]);
                        chunk.extend_from_slice(b"\r\n");
                        // At most 1 GiB: far more than any socket buffers.
                        for _ in 0..16_384 {
                            if s.write_all(&chunk).await.is_err() {
                                released.lock().expect("lock").push(Instant::now());
                                return;
                            }
                        }
                    });
                }
            })
        };
        Firehose {
            addr,
            connections,
            released,
            task,
        }
    }

    fn released(&self) -> usize {
        self.released.lock().expect("lock").len()
    }
}

impl Drop for Firehose {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_releases_the_upstream_connection() {
    let firehose = Firehose::start().await;
    // The upstream timeout is far longer than the test: only the send
    // timeout can free the upstream connection.
    let proxy = TestProxy::start(&format!(
        r#"upstreams:
  legacy: {{ url: "http://{}", timeout: 120s }}
limits: {{ send_timeout: 1s }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
        firehose.addr
    ))
    .await;

    // HTTP/1.1: the request, then never a read.
    let mut h1 = tls_connect(proxy.https, proxy.tls_config(&[b"http/1.1"])).await;
    h1.write_all(b"GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    bounded("upstream released for the HTTP/1.1 client", async {
        while firehose.released() < 1 {
            assert!(
                started.elapsed() < WITHIN,
                "upstream still held after {WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    closed_within(&mut h1, WITHIN, "the non-reading HTTP/1.1 client").await;

    // HTTP/2: the response head, then no WINDOW_UPDATE ever.
    let tls = tls_connect(proxy.https, proxy.tls_config(&[b"h2"])).await;
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut send = bounded("h2 ready", send.ready()).await.expect("ready");
    let (resp, _) = send
        .send_request(
            Request::get(proxy.url("/stream")).body(()).expect("req"),
            true,
        )
        .expect("send");
    let resp = bounded("h2 response head", resp).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let _held_body = resp.into_body(); // never read, never released
    let started = Instant::now();
    bounded("upstream released for the HTTP/2 client", async {
        while firehose.released() < 2 {
            assert!(
                started.elapsed() < WITHIN,
                "upstream still held after {WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _ = tokio::time::timeout(WITHIN, conn)
        .await
        .expect("the stalled HTTP/2 connection is closed");
    assert_eq!(firehose.connections.load(Ordering::SeqCst), 2);
    let m = scrape(&proxy).await;
    assert!(closed_count(&m, "send_timeout") >= 2.0, "{m}");
}

// ---------------------------------------------------------------------------
// HTTP/2 zero window: buffered answers are bounded and released
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_http2_client_with_a_zero_window_cannot_pin_buffered_answers() {
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = keys.path().join("k1.key");
    fieldseal::crypto::write_key_file(&k1).expect("key");
    let backend = ScriptedBackend::start().await;
    // A 1 MB JSON answer on a decrypting route: buffered whole.
    let doc = format!(r#"{{"ssn":"x","pad":"{}"}}"#, "p".repeat(1_000_000));
    backend.set_default_reply(Reply::json(doc));
    let total: u64 = 6 << 20;
    let proxy = TestProxy::start(&format!(
        r#"upstreams:
  legacy: {{ url: "{url}", timeout: 30s }}
limits:
  max_response_body: 2MiB
  max_buffered_per_connection: 4MiB
  max_buffered_total: 6MiB
  send_timeout: 1s
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
routes:
  - name: users
    match: {{ path_prefix: / }}
    upstream: legacy
    decrypt: ["$.ssn"]
"#,
        url = backend.url(),
        k1 = k1.display(),
    ))
    .await;

    // Two connections that announce SETTINGS_INITIAL_WINDOW_SIZE = 0 and ask
    // for 20 large answers each.
    let mut conns = Vec::new();
    // Held, never read: the window stays at 0.
    let mut held_bodies = Vec::new();
    let mut ok = Vec::new();
    let mut refused = 0;
    for c in 0..2 {
        let tls = tls_connect(proxy.https, proxy.tls_config(&[b"h2"])).await;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tls)
            .await
            .expect("h2 handshake");
        conns.push(tokio::spawn(conn));
        let mut send = bounded("h2 ready", send.ready()).await.expect("ready");
        let mut pending = Vec::new();
        for i in 0..20 {
            let req = Request::get(proxy.url(&format!("/users/{c}/{i}")))
                .body(())
                .expect("request");
            let (resp, _) = send.send_request(req, true).expect("send");
            pending.push(resp);
        }
        let mut statuses = Vec::new();
        for resp in pending {
            let resp = bounded("response head", resp).await.expect("response");
            statuses.push(resp.status());
            held_bodies.push(resp.into_body());
        }
        let answered = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        refused += statuses
            .iter()
            .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
            .count();
        assert_eq!(
            answered
                + statuses
                    .iter()
                    .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
                    .count(),
            20,
            "every stream gets 200 or 503: {statuses:?}"
        );
        // 1 MB answers in a 4 MiB connection budget.
        assert!(answered <= 4, "connection {c} holds {answered} answers");
        ok.push(answered);
    }
    assert!(ok.iter().sum::<usize>() <= 6, "6 MiB in all: {ok:?}");
    let m = scrape(&proxy).await;
    let held = plain_metric(&m, "fieldseal_buffered_bytes");
    assert!(held <= total as f64, "buffered {held} bytes, limit {total}");
    assert!(plain_metric(&m, "fieldseal_buffer_limit_refusals_total") >= refused as f64);

    // No progress for the send timeout: both connections are closed and
    // everything they held is released.
    for conn in conns {
        let _ = tokio::time::timeout(WITHIN, conn)
            .await
            .expect("zero-window connection still open");
    }
    drop(held_bodies);
    let started = Instant::now();
    loop {
        let m = scrape(&proxy).await;
        if plain_metric(&m, "fieldseal_buffered_bytes") == 0.0 {
            assert!(closed_count(&m, "send_timeout") >= 2.0, "{m}");
            break;
        }
        assert!(started.elapsed() < WITHIN, "buffers still held:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Plain HTTP on the TLS port
// ---------------------------------------------------------------------------

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_400_not_silence() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let proxy = TestProxy::start(&catch_all(&backend.url())).await;
    for request in [
        &b"GET /api/users HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &b"POST /api/users HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}"[..],
    ] {
        let mut tcp = TcpStream::connect(proxy.https).await.expect("connect");
        tcp.write_all(request).await.expect("write");
        let r = read_h1_response(&mut tcp).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_error_json(r.status, r.header("content-type"), &r.body);
        assert!(
            String::from_utf8_lossy(&r.body).contains("plain HTTP request sent to the HTTPS port"),
            "{:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("connection"), Some("close"));
        assert_security_headers(&r.headers, "plain-HTTP 400");
    }
    assert_eq!(backend.count(), 0);
    // TLS clients are unaffected.
    let r = bounded("tls request", proxy.h1().get(proxy.url("/x")).send())
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let m = scrape(&proxy).await;
    assert_eq!(closed_count(&m, "plain_http"), 2.0, "{m}");
}
