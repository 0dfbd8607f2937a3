//! Review of issues 8 and 9 (headers, connections, answers, operator
//! tools). Each test is a regression test for one finding of the review;
//! those still ignored wait for their fix (run them with
//! `cargo test --test review_edges -- --ignored`). The header findings (3,
//! 11, 14) were moved here from review_request_bodies.rs.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::*;
use common::{review_setup as setup, REVIEW_USERS as USERS};
use http::{Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// A TLS connection to the proxy from the loopback address `src` (Linux
/// routes all of 127.0.0.0/8 to lo, so 127.0.0.2 is another client).
async fn tls_from(
    src: Ipv4Addr,
    proxy: &TestProxy,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let tcp = sock.connect(proxy.https).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio_rustls::TlsConnector::from(proxy.tls_config(alpn))
        .connect(name, tcp)
        .await
}

// ---------------------------------------------------------------------------
// Finding 3: Connection removes the Content-Type the proxy checked
// ---------------------------------------------------------------------------

/// Hop-by-hop removal drops every header the client names in `Connection`,
/// after the body was judged as JSON: `Connection: content-type` makes the
/// backend receive the sealed JSON without a Content-Type. Rack (Rails,
/// Sinatra: "a request body is also assumed to contain form-data when no
/// content-type header is provided and the request_method is POST"),
/// WebOb, Python's cgi and Perl's CGI.pm then parse it as a form, and a
/// JSON string `"x&ssn=078-05-1120&"` becomes the field `ssn`.
#[tokio::test]
async fn connection_cannot_remove_the_content_type_of_a_sealed_body() {
    let s = setup(USERS, "").await;
    // The class: every end-to-end header the proxy judged the request by, or
    // the backend trusts it for, in any case, alone or after an option.
    for (i, conn) in [
        "content-type",
        "Content-Type",
        "close, content-type",
        "keep-alive, CONTENT-TYPE",
        "content-length",
        "Host",
        "authorization",
        "cookie",
        "close,content-encoding",
        "x-forwarded-for",
        "x-request-id",
    ]
    .iter()
    .enumerate()
    {
        let body = format!(r#"{{"note":"x&ssn=078-05-{i:04}&y="}}"#);
        let req = format!(
            "POST /api/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer t\r\nCookie: c=1\r\nConnection: {conn}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let before = s.backend.count();
        let r = s.proxy.raw_h1(req.as_bytes()).await;
        assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        if s.backend.count() > before {
            let rec = s.backend.seen().pop().expect("forwarded");
            for (h, v) in [
                ("content-type", "application/json"),
                ("authorization", "Bearer t"),
                ("cookie", "c=1"),
                ("host", "localhost"),
            ] {
                assert_eq!(
                    rec.header(h),
                    Some(v),
                    "Connection: {conn}: the backend got the body without its {h}: {:?}",
                    rec.headers
                );
            }
        }
        // Refused, with nothing forwarded: never silently dropped.
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "Connection: {conn}");
        assert_eq!(s.backend.count(), before, "Connection: {conn}");
    }
    // Connection options and extension hop-by-hop names still work.
    let body = r#"{"note":"fine"}"#;
    let req = format!(
        "POST /api/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Hop: 1\r\nConnection: keep-alive, x-hop, close\r\n\r\n{body}",
        body.len()
    );
    let r = s.proxy.raw_h1(req.as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK);
    let rec = s.backend.seen().pop().expect("forwarded");
    assert_eq!(rec.header("content-type"), Some("application/json"));
    assert_eq!(rec.header("x-hop"), None);
}

// ---------------------------------------------------------------------------
// Finding 11: client-address headers other than X-Forwarded-For
// ---------------------------------------------------------------------------

/// A client's own X-Forwarded-For is dropped unless the peer is trusted,
/// but its siblings go through: Rails' `request.remote_ip` believes
/// `Client-IP`, nginx-style backends `X-Real-IP`, Akamai/Cloudflare setups
/// `True-Client-IP`; `X-Forwarded-Port`/`-Scheme`/`-Ssl`/`-Prefix` change
/// the URLs and scheme backends think they serve. The backend's audit,
/// allow-lists and rate limits then see an address the client chose.
#[tokio::test]
async fn client_address_headers_from_an_untrusted_peer_are_not_forwarded() {
    let s = setup("", "").await;
    let spoofed = [
        "x-real-ip",
        "client-ip",
        "x-client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "x-forwarded-port",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-forwarded-prefix",
        "x-forwarded-server",
        // The class: the other CDN spellings and the whole X-Forwarded-* family.
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-forwarded-uri",
        "x-original-forwarded-for",
        "forwarded",
    ];
    for (c, v) in s.proxy.clients() {
        let mut req = c.get(s.proxy.url("/anything"));
        for h in spoofed {
            req = req.header(h, "6.6.6.6");
        }
        let resp = bounded("request", req.send()).await.expect("answer");
        assert_eq!(resp.version(), v);
        assert_eq!(resp.status(), StatusCode::OK);
        let rec = s.backend.seen().pop().expect("forwarded");
        let leaked: Vec<&str> = spoofed
            .iter()
            .copied()
            .filter(|h| rec.headers.contains_key(*h))
            .collect();
        assert!(
            leaked.is_empty(),
            "{v:?}: forwarded from an untrusted client: {leaked:?}"
        );
        assert_eq!(rec.header("x-forwarded-for"), Some("127.0.0.1"));
    }
}

// ---------------------------------------------------------------------------
// Finding 14: HTTP/2 cookies reach the backend as several lines
// ---------------------------------------------------------------------------

/// RFC 9113 §8.2.3: cookie fields split by an HTTP/2 client MUST be joined
/// with "; " before the message goes to HTTP/1.1. They are forwarded as
/// several Cookie lines, which many HTTP/1.1 servers read as only the
/// first (or the last) one.
#[tokio::test]
async fn http2_cookie_fields_are_joined_into_one_line_upstream() {
    let s = setup("", "").await;
    let req = Request::get(format!("https://localhost:{}/c", s.proxy.https.port()))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(full_body(""))
        .expect("request");
    let r = s.proxy.h2_raw(req).await;
    assert_eq!(r.status, StatusCode::OK);
    let rec = s.backend.seen().pop().expect("forwarded");
    let lines: Vec<&str> = rec
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(lines, ["a=1; b=2"], "cookie lines upstream");

    // The class: several Cookie lines from an HTTP/1.1 client are the same
    // ambiguity (servers read the first, the last or all of them).
    let r = s
        .proxy
        .raw_h1(b"GET /c HTTP/1.1\r\nHost: localhost\r\nCookie: a=1\r\nCookie: b=2; c=3\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let rec = s.backend.seen().pop().expect("forwarded");
    let lines: Vec<&str> = rec
        .headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(lines, ["a=1; b=2; c=3"], "HTTP/1.1 cookie lines upstream");
}

// ---------------------------------------------------------------------------
// Finding 12: one client can take every connection slot
// ---------------------------------------------------------------------------

/// `limits.max_connections` is one pool for everybody: a single client
/// address that opens that many TLS connections (and keeps each alive with
/// a request a minute, or just reconnects every `header_read_timeout`)
/// leaves every other client with a connection closed at accept. A
/// production edge needs a per-client share (nginx `limit_conn`, HAProxy
/// `src_conn_cur`, Envoy's per-downstream limits) below the global cap.
#[tokio::test]
async fn one_client_cannot_take_every_connection_slot() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let yaml = format!(
        "limits: {{ max_connections: 8, header_read_timeout: 20s }}\n{}",
        catch_all(&backend.url())
    );
    let proxy = TestProxy::start(&yaml).await;
    let attacker = Ipv4Addr::new(127, 0, 0, 1);
    let mut held = Vec::new();
    for _ in 0..8 {
        // Past a per-client share the proxy may refuse these: that is the fix.
        if let Ok(Ok(tls)) =
            tokio::time::timeout(STEP, tls_from(attacker, &proxy, &[b"http/1.1"])).await
        {
            held.push(tls);
        }
    }
    // Another client still gets served.
    let mut tls = bounded(
        "victim handshake",
        tls_from(Ipv4Addr::new(127, 0, 0, 2), &proxy, &[b"http/1.1"]),
    )
    .await
    .expect("a second client could not even complete a TLS handshake");
    bounded(
        "victim write",
        tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
    .await
    .expect("write");
    let r = read_h1_response(&mut tls).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        held.len() < 8,
        "one address holds all {} connection slots",
        held.len()
    );
    drop(held);
}

/// An explicit share is exactly what one address gets, and given back on
/// close; a trusted proxy (many clients behind one address) is exempt.
#[tokio::test]
async fn the_per_client_share_is_exact_and_trusted_proxies_are_exempt() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let me = Ipv4Addr::new(127, 0, 0, 1);
    for (trusted, share) in [("", 3usize), ("trusted_proxies: [\"127.0.0.1\"]\n", 8)] {
        let yaml = format!(
            "{trusted}limits: {{ max_connections: 8, max_connections_per_client: 3, header_read_timeout: 20s }}\n{}",
            catch_all(&backend.url())
        );
        let proxy = TestProxy::start(&yaml).await;
        let mut held = Vec::new();
        for _ in 0..8 {
            let Ok(Ok(mut tls)) =
                tokio::time::timeout(STEP, tls_from(me, &proxy, &[b"http/1.1"])).await
            else {
                continue;
            };
            // A completed handshake can still be a connection the proxy
            // closed at accept: only an answer counts.
            if tls
                .write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .is_err()
            {
                continue;
            }
            let mut buf = [0u8; 12];
            if let Ok(Ok(_)) = tokio::time::timeout(STEP, tls.read_exact(&mut buf)).await {
                if &buf == b"HTTP/1.1 200" {
                    held.push(tls);
                }
            }
        }
        assert_eq!(held.len(), share, "trusted: {trusted:?}");
        let (_, metrics) = admin_get(&proxy, "/metrics").await;
        let refused = metric_value(
            &metrics,
            "fieldseal_connections_closed_total",
            &[("reason", "client_connection_limit")],
        )
        .unwrap_or(0.0);
        assert_eq!(refused, (8 - share) as f64, "trusted: {trusted:?}");
        // Closing one gives its slot back.
        if share == 3 {
            drop(held.pop());
            let got = tokio::time::timeout(STEP, async {
                loop {
                    let c = proxy.h1();
                    if let Ok(r) = c.get(proxy.url("/again")).send().await {
                        break r.status();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            })
            .await
            .expect("a slot came back");
            assert_eq!(got, StatusCode::OK);
        }
    }
}

// ---------------------------------------------------------------------------
// Finding 13: a 204 with Content-Length breaks the HTTP/2 stream
// ---------------------------------------------------------------------------

/// A backend that answers 204 with a Content-Length (forbidden, RFC 9110
/// §8.6, but legacy servers do it) and some bytes: hyper's HTTP/1.1 client
/// reads no body and the proxy relays the header, so its HTTP/2 answer is
/// `:status 204, content-length: 11` with END_STREAM on the HEADERS frame,
/// which RFC 9110 §8.6 forbids a server to send and which curl treats as a
/// broken stream (`HTTP/2 stream 1 was not closed cleanly: PROTOCOL_ERROR`,
/// the request fails). HTTP/1.1 clients are fine: hyper's h1 server drops
/// the header itself.
#[tokio::test]
async fn an_upstream_204_with_content_length_is_a_clean_http2_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let backend = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 204 No Content\r\ncontent-length: 11\r\n\r\n{\"ssn\":\"x\"}",
                    )
                    .await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    let proxy = TestProxy::start(&catch_all(&format!("http://{addr}"))).await;
    let req = http::Request::get(format!("https://localhost:{}/thing", proxy.https.port()))
        .body(full_body(""))
        .expect("request");
    let tls = tls_connect(proxy.https, proxy.tls_config(&[b"h2"])).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = bounded("h2 response", sender.send_request(req))
        .await
        .expect("h2 answer");
    let status = resp.status();
    assert!(
        status == StatusCode::NO_CONTENT || status == StatusCode::BAD_GATEWAY,
        "{status}"
    );
    if status == StatusCode::NO_CONTENT {
        assert_eq!(
            resp.headers().get("content-length"),
            None,
            "the proxy sent a Content-Length on a 204 (RFC 9110 §8.6)"
        );
    }
    backend.abort();
}

// ---------------------------------------------------------------------------
// Finding 15: `check` hangs on a FIFO
// ---------------------------------------------------------------------------

/// `check` opens every file the config names, with a blocking read: a
/// certificate path that is a FIFO (or any special file that never reaches
/// EOF) makes `check`, `run` and a reload hang instead of naming the key.
#[test]
fn check_names_a_certificate_that_is_not_a_regular_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    key_file(dir.path(), "k1");
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    // The class: every file the config names, FIFO or device.
    for (cert, key, ring_file, named) in [
        ("fifo", "server.key", "k1.key", "listen.tls.cert"),
        ("server.crt", "fifo", "k1.key", "listen.tls.key"),
        ("server.crt", "/dev/zero", "k1.key", "listen.tls.key"),
        ("server.crt", "server.key", "fifo", "keys.ring"),
    ] {
        let config = dir.path().join("fieldseal.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: {cert}, key: {key} }} }}\n\
                 admin: off\n\
                 upstreams:\n  legacy: {{ url: \"http://127.0.0.1:9\" }}\n\
                 keys: {{ active: k1, ring: [ {{ id: k1, file: {ring_file} }} ] }}\n\
                 routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: legacy, encrypt: [\"$.ssn\"] }}\n"
            ),
        )
        .expect("write config");
        let config = config.to_str().expect("utf-8 path");
        // run_bin panics if the command outlives its bound: the hang is the bug.
        for verb in ["check", "run"] {
            let out = run_bin(&[verb, "--config", config], b"");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{verb} {named}: {err}");
            assert!(err.contains("not a regular file"), "{verb} {named}: {err}");
            if verb == "check" {
                assert_eq!(out.status.code(), Some(1), "{err}");
                assert!(err.contains(named), "{named}: {err}");
            }
        }
    }
}
