//! The proxy core end to end: real sockets, real TLS, HTTP/1.1 and HTTP/2.
//! None of these routes encrypt fields (that is a separate suite).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode, Version};

/// Backends behind the standard config, and the proxy in front of them.
struct Fixture {
    /// `legacy`: most routes.
    a: Backend,
    /// `other`: the routes that prove which route won.
    b: Backend,
    /// `slow`: sleeps 3 s; its upstream times out after 1 s.
    slow: Backend,
    /// `styled`: sends its own CSP and X-Frame-Options.
    styled: Backend,
    proxy: TestProxy,
}

impl Fixture {
    async fn start() -> Fixture {
        let a = Backend::start("a", Behavior::echo()).await;
        let b = Backend::start("b", Behavior::echo()).await;
        let slow = Backend::start("slow", Behavior::slow(Duration::from_secs(3))).await;
        let styled = Backend::start(
            "styled",
            Behavior::with_headers(vec![
                ("content-security-policy", "upstream-csp"),
                ("x-frame-options", "SAMEORIGIN"),
            ]),
        )
        .await;
        let dead = dead_address();
        let yaml = format!(
            r#"allowed_hosts: [localhost, 127.0.0.1]
upstreams:
  legacy: {{ url: "{a}", connect_timeout: 1s, timeout: 10s }}
  other: {{ url: "{b}", connect_timeout: 1s, timeout: 10s }}
  slow: {{ url: "{slow}", connect_timeout: 1s, timeout: 1s }}
  styled: {{ url: "{styled}", connect_timeout: 1s, timeout: 10s }}
  dead: {{ url: "http://{dead}", connect_timeout: 1s, timeout: 2s }}
headers: {{ hsts: "max-age=31536000; includeSubDomains", csp: "default-src 'self'" }}
limits: {{ max_body: 1KiB, header_read_timeout: 5s }}
shutdown: {{ grace_period: 10s }}
routes:
  - name: report
    match: {{ path: /api/users/report }}
    upstream: other
  - name: users
    match: {{ path_prefix: /api/users, methods: [GET, POST, PUT, PATCH] }}
    upstream: legacy
    headers: {{ csp: "default-src 'none'" }}
  - name: orders
    match: {{ path_prefix: /api/orders }}
    upstream: legacy
  - name: orders-special
    match: {{ path: /api/orders/special }}
    upstream: other
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: legacy
    rate_limit: {{ requests_per_second: 1, burst: 3 }}
  - name: dead
    match: {{ path_prefix: /dead }}
    upstream: dead
  - name: slow
    match: {{ path_prefix: /slow }}
    upstream: slow
  - name: keep
    match: {{ path_prefix: /keep }}
    upstream: styled
    headers:
      csp: {{ value: "default-src 'none'", upstream: keep }}
      x_frame_options: {{ value: DENY, upstream: keep }}
  - name: overwrite
    match: {{ path_prefix: /overwrite }}
    upstream: styled
"#,
            a = a.url(),
            b = b.url(),
            slow = slow.url(),
            styled = styled.url(),
        );
        let proxy = TestProxy::start(&yaml).await;
        Fixture {
            a,
            b,
            slow,
            styled,
            proxy,
        }
    }

    fn total_seen(&self) -> usize {
        self.a.count() + self.b.count() + self.slow.count() + self.styled.count()
    }
}

/// A reqwest answer read completely.
struct Answer {
    status: StatusCode,

    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, n: &str) -> Option<&str> {
        self.headers.get(n).and_then(|v| v.to_str().ok())
    }

    fn assert_error(&self, status: StatusCode) {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        assert_error_json(status, self.header("content-type"), &self.body);
    }
}

async fn send(rb: reqwest::RequestBuilder, want: Version) -> Answer {
    let resp = bounded("request", rb.send()).await.expect("request sent");
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = bounded("body", resp.bytes()).await.expect("body");
    assert_eq!(version, want, "protocol version of the answer");
    Answer {
        status,

        headers,
        body,
    }
}

async fn get(c: &reqwest::Client, v: Version, url: &str) -> Answer {
    send(c.get(url), v).await
}

// --- 1. routing ------------------------------------------------------------

#[tokio::test]
async fn routing_first_match_exact_prefix_segments_and_methods() {
    let f = Fixture::start().await;
    for (c, v) in f.proxy.clients() {
        // The exact route comes first and wins over the overlapping prefix.
        let r = get(&c, v, &f.proxy.url("/api/users/report")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["backend"], "b");
        assert_eq!(r.json()["path"], "/api/users/report");
        // Exact means exact: a sub-path falls through to the prefix route.
        let r = get(&c, v, &f.proxy.url("/api/users/report/2024")).await;
        assert_eq!(r.json()["backend"], "a");
        // The prefix itself and paths below it.
        for p in ["/api/users", "/api/users/", "/api/users/7"] {
            let r = get(&c, v, &f.proxy.url(p)).await;
            assert_eq!(r.status, StatusCode::OK, "{p}");
            assert_eq!(r.json()["backend"], "a", "{p}");
            assert_eq!(r.json()["path"], p);
        }
        // The query string is forwarded untouched.
        let r = get(&c, v, &f.proxy.url("/api/users/7?fields=a,b&x=%20")).await;
        assert_eq!(r.json()["query"], "fields=a,b&x=%20");
        // First match, not most specific: the earlier prefix shadows the later exact route.
        let r = get(&c, v, &f.proxy.url("/api/orders/special")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["backend"], "a");
        // Prefixes match on segment boundaries only.
        let before = f.total_seen();
        let r = get(&c, v, &f.proxy.url("/api/usersX")).await;
        r.assert_error(StatusCode::NOT_FOUND);
        let r = get(&c, v, &f.proxy.url("/api/user")).await;
        r.assert_error(StatusCode::NOT_FOUND);
        // A method outside the route's list matches nothing.
        let r = send(c.delete(f.proxy.url("/api/users/7")), v).await;
        r.assert_error(StatusCode::NOT_FOUND);
        assert_eq!(f.total_seen(), before, "refused requests reached a backend");
        // Methods in the list go through with their body.
        let r = send(
            c.post(f.proxy.url("/api/users"))
                .header("content-type", "application/json")
                .body(r#"{"name":"ada"}"#),
            v,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["method"], "POST");
        assert_eq!(r.json()["body"], r#"{"name":"ada"}"#);
        let last = f.a.seen().pop().expect("backend saw the POST");
        assert_eq!(last.method, Method::POST);
        assert_eq!(&last.body[..], br#"{"name":"ada"}"#);
        // Upstream requests are always HTTP/1.1.
        assert_eq!(last.version, Version::HTTP_11);
    }
}

// --- 2. no route -----------------------------------------------------------

#[tokio::test]
async fn no_route_is_404_json_and_backend_sees_nothing() {
    let f = Fixture::start().await;
    for (c, v) in f.proxy.clients() {
        for p in ["/", "/nothing/here", "/apix"] {
            let r = get(&c, v, &f.proxy.url(p)).await;
            r.assert_error(StatusCode::NOT_FOUND);
            assert_security_headers(&r.headers, "404");
            // No route: the global CSP.
            assert_eq!(
                r.header("content-security-policy"),
                Some("default-src 'self'")
            );
            assert!(r.header("x-request-id").is_some());
        }
    }
    assert_eq!(f.total_seen(), 0);
}

// --- 3. hop-by-hop and forwarding headers ----------------------------------

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_over_http1() {
    let f = Fixture::start().await;
    let port = f.proxy.https.port();
    let req = format!(
        "GET /api/users/1 HTTP/1.1\r\n\
         Host: localhost:{port}\r\n\
         Connection: close, X-Secret-Hop\r\n\
         X-Secret-Hop: do-not-forward\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: websocket\r\n\
         Proxy-Authorization: Basic c2VjcmV0\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Custom: 1\r\n\
         X-Forwarded-For: 6.6.6.6\r\n\
         X-Forwarded-Host: evil.example\r\n\
         X-Forwarded-Proto: http\r\n\
         X-End-To-End: kept\r\n\
         \r\n"
    );
    let r = f.proxy.raw_h1(req.as_bytes()).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let seen = f.a.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    for h in [
        "connection",
        "x-secret-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "proxy-custom",
    ] {
        assert!(
            s.headers.get(h).is_none(),
            "hop-by-hop header {h} reached the backend: {:?}",
            s.headers
        );
    }
    assert_eq!(s.header("x-end-to-end"), Some("kept"));
    // An untrusted peer's claims are replaced, not extended.
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(s.header("x-forwarded-proto"), Some("https"));
    let host = format!("localhost:{port}");
    assert_eq!(s.header("x-forwarded-host"), Some(host.as_str()));
    assert_eq!(s.header("host"), Some(host.as_str()), "Host is preserved");
    // One request id, upstream and back.
    let sent = s.header("x-request-id").expect("x-request-id upstream");
    assert!(!sent.is_empty());
    assert_eq!(r.header("x-request-id"), Some(sent));
}

#[tokio::test]
async fn forwarding_headers_and_request_id_over_both_protocols() {
    let f = Fixture::start().await;
    let host = format!("localhost:{}", f.proxy.https.port());
    for (i, (c, v)) in f.proxy.clients().into_iter().enumerate() {
        let r = send(
            c.get(f.proxy.url("/api/users/1"))
                .header("x-forwarded-for", "6.6.6.6, 7.7.7.7")
                .header("x-forwarded-host", "evil.example")
                .header("forwarded", "for=6.6.6.6")
                .header("x-request-id", "client-chosen"),
            v,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let seen = f.a.seen();
        assert_eq!(seen.len(), i + 1);
        let s = &seen[i];
        assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"), "{v:?}");
        assert_eq!(s.header("x-forwarded-proto"), Some("https"), "{v:?}");
        assert_eq!(s.header("x-forwarded-host"), Some(host.as_str()), "{v:?}");
        assert!(s.headers.get("forwarded").is_none(), "{v:?}");
        let id = s.header("x-request-id").expect("request id upstream");
        assert_ne!(id, "client-chosen", "the proxy picks the request id");
        assert_eq!(r.header("x-request-id"), Some(id), "{v:?}");
    }
    // Each request gets its own id.
    let seen = f.a.seen();
    assert_ne!(
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id")
    );
}

// --- 4. security headers ---------------------------------------------------

#[tokio::test]
async fn security_headers_on_success_and_per_route_csp() {
    let f = Fixture::start().await;
    for (c, v) in f.proxy.clients() {
        let r = get(&c, v, &f.proxy.url("/api/users/1")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_security_headers(&r.headers, "200 on users");
        assert_eq!(
            r.header("content-security-policy"),
            Some("default-src 'none'"),
            "route override"
        );
        let r = get(&c, v, &f.proxy.url("/api/orders/1")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_security_headers(&r.headers, "200 on orders");
        assert_eq!(
            r.header("content-security-policy"),
            Some("default-src 'self'"),
            "global value"
        );
    }
}

#[tokio::test]
async fn security_headers_keep_or_overwrite_the_upstreams_own() {
    let f = Fixture::start().await;
    for (c, v) in f.proxy.clients() {
        let r = get(&c, v, &f.proxy.url("/keep/x")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-security-policy"), Some("upstream-csp"));
        assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
        assert_eq!(
            r.headers.get_all("content-security-policy").iter().count(),
            1
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

        let r = get(&c, v, &f.proxy.url("/overwrite/x")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("content-security-policy"),
            Some("default-src 'self'")
        );
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(
            r.headers.get_all("content-security-policy").iter().count(),
            1
        );
        assert_eq!(r.headers.get_all("x-frame-options").iter().count(), 1);
        assert_security_headers(&r.headers, "overwrite");
    }
}

// --- 5. rate limit ---------------------------------------------------------

#[tokio::test]
async fn rate_limit_429_after_burst_never_reaches_backend() {
    let f = Fixture::start().await;
    // Per client and route: HTTP/2 shares the bucket with HTTP/1.1 (same peer).
    let c = f.proxy.h2();
    let v = Version::HTTP_2;
    // The burst is there from the start.
    for i in 0..3 {
        let r = get(&c, v, &f.proxy.url("/limited/x")).await;
        assert_eq!(r.status, StatusCode::OK, "request {i} within the burst");
    }
    // 1 request/s refills: unless each request took over a second, one of
    // the next ones is refused.
    let mut ok = 3;
    let mut limited = None;
    for _ in 0..20 {
        let r = get(&c, v, &f.proxy.url("/limited/x")).await;
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited = Some(r);
                break;
            }
            s => panic!("unexpected {s}"),
        }
    }
    let r = limited.expect("a 429 after the burst");
    r.assert_error(StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    assert_security_headers(&r.headers, "429");
    assert_eq!(
        f.a.count(),
        ok,
        "only the allowed requests reached the backend"
    );
    // HTTP/1.1 is refused as well: same client.
    let r = get(&f.proxy.h1(), Version::HTTP_11, &f.proxy.url("/limited/x")).await;
    if r.status == StatusCode::TOO_MANY_REQUESTS {
        r.assert_error(StatusCode::TOO_MANY_REQUESTS);
        assert!(r.header("retry-after").is_some());
        assert_security_headers(&r.headers, "429 over HTTP/1.1");
        assert_eq!(f.a.count(), ok);
    }
    // Other routes are not limited.
    for _ in 0..5 {
        let r = get(&c, v, &f.proxy.url("/api/orders/1")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
}

// --- 6. dead upstream -------------------------------------------------------

#[tokio::test]
async fn dead_upstream_is_502() {
    let f = Fixture::start().await;
    for (c, v) in f.proxy.clients() {
        // `bounded` (30 s) is the only clock here: promptness, not speed.
        let r = get(&c, v, &f.proxy.url("/dead/x")).await;
        r.assert_error(StatusCode::BAD_GATEWAY);
        assert_security_headers(&r.headers, "502");
        assert!(r.header("x-request-id").is_some());
    }
}

// --- 7. slow upstream -------------------------------------------------------

#[tokio::test]
async fn slow_upstream_is_504() {
    let f = Fixture::start().await;
    for (c, v) in f.proxy.clients() {
        let r = get(&c, v, &f.proxy.url("/slow/x")).await;
        r.assert_error(StatusCode::GATEWAY_TIMEOUT);
        assert_security_headers(&r.headers, "504");
    }
    assert_eq!(f.slow.count(), 2, "the request did reach the slow backend");
}

// --- 8. body limit -----------------------------------------------------------

#[tokio::test]
async fn oversized_body_with_content_length_is_413() {
    let f = Fixture::start().await;
    let big = vec![b'x'; 2048];
    for (c, v) in f.proxy.clients() {
        let r = send(
            c.post(f.proxy.url("/api/users"))
                .header("content-type", "application/json")
                .body(big.clone()),
            v,
        )
        .await;
        r.assert_error(StatusCode::PAYLOAD_TOO_LARGE);
        assert_security_headers(&r.headers, "413");
        assert_eq!(
            r.header("content-security-policy"),
            Some("default-src 'none'"),
            "413 on a route carries the route's CSP"
        );
        // At the limit is fine.
        let r = send(c.post(f.proxy.url("/api/users")).body(vec![b'y'; 1024]), v).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let seen = f.a.seen();
    assert_eq!(
        seen.len(),
        2,
        "only the in-limit bodies reached the backend"
    );
    assert!(seen.iter().all(|s| s.body.len() == 1024));
}

#[tokio::test]
async fn oversized_chunked_body_is_413_over_http1() {
    let f = Fixture::start().await;
    let port = f.proxy.https.port();
    let mut req = format!(
        "POST /api/users HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'x'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = f.proxy.raw_h1(&req).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_json(r.status, r.header("content-type"), &r.body);
    assert_security_headers(&r.headers, "413 chunked");

    // A small chunked body goes through, with a Content-Length upstream.
    let small = format!(
        "POST /api/users HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
    let r = f.proxy.raw_h1(small.as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = f.a.seen();
    assert_eq!(
        seen.len(),
        1,
        "the oversized body never reached the backend"
    );
    assert_eq!(&seen[0].body[..], b"hello world");
}

#[tokio::test]
async fn oversized_streamed_body_is_413_over_http2() {
    let f = Fixture::start().await;
    let chunks = (0..4).map(|_| Bytes::from(vec![b'x'; 512])).collect();
    let req = Request::post(f.proxy.url("/api/users"))
        .header("content-type", "application/json")
        .body(streaming_body(chunks))
        .expect("request");
    let r = f.proxy.h2_raw(req).await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_json(r.status, r.header("content-type"), &r.body);
    assert_security_headers(&r.headers, "413 h2 stream");
    assert_eq!(f.a.count(), 0, "backend saw nothing");

    let req = Request::post(f.proxy.url("/api/users"))
        .body(streaming_body(vec![
            Bytes::from_static(b"hello"),
            Bytes::from_static(b" world"),
        ]))
        .expect("request");
    let r = f.proxy.h2_raw(req).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = f.a.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].body[..], b"hello world");
}

// --- 9. non-canonical paths --------------------------------------------------

const CANONICALIZED: &[&str] = &["/api//users", "/api/./users", "/api/%75sers"];
const REFUSED_PATHS: &[&str] = &["/api%2fusers", "/api%2Fusers", "/..", "/api/../../users"];

#[tokio::test]
async fn non_canonical_paths_over_http1() {
    let f = Fixture::start().await;
    let port = f.proxy.https.port();
    for (i, p) in CANONICALIZED.iter().enumerate() {
        let req =
            format!("GET {p} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n");
        let r = f.proxy.raw_h1(req.as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK, "{p}");
        let seen = f.a.seen();
        assert_eq!(seen.len(), i + 1, "{p}");
        assert_eq!(seen[i].uri.path(), "/api/users", "backend path for {p}");
    }
    for p in REFUSED_PATHS {
        let req =
            format!("GET {p} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n");
        let r = f.proxy.raw_h1(req.as_bytes()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{p}");
        assert_error_json(r.status, r.header("content-type"), &r.body);
        assert_security_headers(&r.headers, "400");
    }
    assert_eq!(
        f.total_seen(),
        CANONICALIZED.len(),
        "refused paths reached a backend"
    );
}

#[tokio::test]
async fn non_canonical_paths_over_http2() {
    let f = Fixture::start().await;
    for (i, p) in CANONICALIZED.iter().enumerate() {
        let req = Request::get(f.proxy.url(p))
            .body(full_body(Bytes::new()))
            .expect("request");
        let r = f.proxy.h2_raw(req).await;
        assert_eq!(r.status, StatusCode::OK, "{p}");
        let seen = f.a.seen();
        assert_eq!(seen.len(), i + 1, "{p}");
        assert_eq!(seen[i].uri.path(), "/api/users", "backend path for {p}");
    }
    for p in REFUSED_PATHS {
        let req = Request::get(f.proxy.url(p))
            .body(full_body(Bytes::new()))
            .expect("request");
        let r = f.proxy.h2_raw(req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{p}");
        assert_error_json(r.status, r.header("content-type"), &r.body);
    }
    assert_eq!(f.total_seen(), CANONICALIZED.len());
}

// --- 10. host check ------------------------------------------------------------

#[tokio::test]
async fn host_not_allowed_is_421() {
    let f = Fixture::start().await;
    let req = "GET /api/users HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    let r = f.proxy.raw_h1(req.as_bytes()).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    assert_error_json(r.status, r.header("content-type"), &r.body);
    assert_security_headers(&r.headers, "421");

    // HTTP/2: the :authority is what counts.
    let port = f.proxy.https.port();
    let req = Request::get(format!("https://evil.example:{port}/api/users"))
        .body(full_body(Bytes::new()))
        .expect("request");
    let r = f.proxy.h2_raw(req).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    assert_error_json(r.status, r.header("content-type"), &r.body);

    // The allowed names work, with or without a port, in any case.
    for host in ["localhost", "LOCALHOST", "127.0.0.1:443"] {
        let req = format!("GET /api/users HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = f.proxy.raw_h1(req.as_bytes()).await;
        assert_eq!(r.status, StatusCode::OK, "Host: {host}");
    }
    assert_eq!(
        f.total_seen(),
        3,
        "the misdirected requests reached a backend"
    );
}

// --- 16. header size ------------------------------------------------------------

#[tokio::test]
async fn oversized_headers_are_431_json() {
    let f = Fixture::start().await;
    let filler = "v".repeat(1000);
    for (c, v) in f.proxy.clients() {
        let mut rb = c.get(f.proxy.url("/api/users"));
        for i in 0..40 {
            rb = rb.header(format!("x-filler-{i}"), filler.as_str());
        }
        let r = send(rb, v).await;
        r.assert_error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_security_headers(&r.headers, "431");
    }
    assert_eq!(f.total_seen(), 0);
}

// --- 14. admin -------------------------------------------------------------------

#[tokio::test]
async fn admin_health_ready_and_metrics() {
    let f = Fixture::start().await;
    let admin = reqwest::Client::builder()
        .timeout(STEP)
        .build()
        .expect("client");

    let r = bounded("healthz", admin.get(f.proxy.admin_url("/healthz")).send())
        .await
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: serde_json::Value = r.json().await.expect("healthz JSON");
    assert_eq!(v["status"], "ok");

    let r = bounded("readyz", admin.get(f.proxy.admin_url("/readyz")).send())
        .await
        .expect("readyz");
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.expect("readyz JSON");
    assert_eq!(v["status"], "ready", "{v}");
    assert!(v["checks"].is_object(), "{v}");
    assert_eq!(v["checks"]["config"]["status"], "ok", "{v}");
    assert_eq!(v["checks"]["config"]["routes"], 9, "{v}");

    // Traffic first, then its metrics.
    for (c, ver) in f.proxy.clients() {
        assert_eq!(
            get(&c, ver, &f.proxy.url("/api/users/1")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            get(&c, ver, &f.proxy.url("/nope")).await.status,
            StatusCode::NOT_FOUND
        );
    }
    let r = bounded("metrics", admin.get(f.proxy.admin_url("/metrics")).send())
        .await
        .expect("metrics");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("metrics text");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("fieldseal_requests_total{")
                && l.contains(r#"route="users""#)
                && l.contains(r#"status="200""#)
        })
        .unwrap_or_else(|| panic!("no users/200 request counter in:\n{text}"));
    let n: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("counter value");
    assert_eq!(n, 2.0, "{line}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("fieldseal_requests_total{") && l.contains(r#"status="404""#)),
        "404s are counted:\n{text}"
    );

    // Unknown admin paths are a JSON 404.
    let r = bounded("admin 404", admin.get(f.proxy.admin_url("/nope")).send())
        .await
        .expect("admin 404");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

// --- 15. plain-HTTP redirect ---------------------------------------------------------

#[tokio::test]
async fn plain_http_redirects_to_https_same_path() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let yaml = format!(
        r#"allowed_hosts: [localhost, 127.0.0.1]
{routes}"#,
        routes = catch_all(&backend.url())
    );
    let proxy = TestProxy::start_with(&yaml, true).await;
    let redirect = proxy.redirect.expect("redirect listener");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(STEP)
        .build()
        .expect("client");
    let r = bounded(
        "redirect",
        client
            .get(format!("http://{redirect}/api/users/7?x=1"))
            .header("host", "localhost")
            .send(),
    )
    .await
    .expect("redirect answer");
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    let want = format!("https://localhost:{}/api/users/7?x=1", proxy.https.port());
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some(want.as_str())
    );
    assert_security_headers(r.headers(), "301");
    // A host we don't serve is not redirected anywhere.
    let r = bounded(
        "redirect refused",
        client
            .get(format!("http://{redirect}/x"))
            .header("host", "evil.example")
            .send(),
    )
    .await
    .expect("answer");
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    assert!(r.headers().get("location").is_none());
    assert_eq!(backend.count(), 0);
    proxy.stop().await;
}

/// The redirect's port must be the one the HTTPS listener really has, also
/// when the config says port 0 and the caller binds the listener.
#[tokio::test]
async fn redirect_uses_the_bound_https_port() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let yaml = format!(
        r#"listen: {{ address: "127.0.0.1:0", tls: {{ cert: server.crt, key: server.key }} }}
redirect_http: {{ address: "127.0.0.1:0" }}
{routes}"#,
        routes = catch_all(&backend.url())
    );
    let path = dir.path().join("fieldseal.yaml");
    let config = fieldseal::Config::from_yaml(&yaml, &path).expect("config");
    let proxy = fieldseal::Proxy::new(config).expect("proxy");
    let https = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_port = https.local_addr().unwrap().port();
    let redirect_addr = redirect.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(proxy.serve(
        fieldseal::Listeners {
            https,
            redirect: Some(redirect),
            admin: None,
        },
        async move {
            let _ = rx.await;
        },
    ));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(STEP)
        .build()
        .expect("client");
    let r = bounded(
        "redirect",
        client
            .get(format!("http://{redirect_addr}/a/b"))
            .header("host", "localhost")
            .send(),
    )
    .await
    .expect("answer");
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some(format!("https://localhost:{https_port}/a/b").as_str())
    );
    let _ = tx.send(());
    bounded("shutdown", serving).await.expect("serve");
}

// --- graceful shutdown in-process ------------------------------------------------------

#[tokio::test]
async fn in_process_shutdown_finishes_in_flight_request() {
    let slow = Backend::start("slow2", Behavior::slow(Duration::from_secs(2))).await;
    let yaml = format!(
        r#"upstreams:
  legacy: {{ url: "{}", timeout: 20s }}
shutdown: {{ grace_period: 20s }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
        slow.url()
    );
    let proxy = TestProxy::start(&yaml).await;
    let client = proxy.h1();
    let url = proxy.url("/hold");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    slow.wait_for(1).await;
    let https = proxy.https;
    let readyz = proxy.admin_url("/readyz");
    let stopping = tokio::spawn(proxy.stop());
    // New connections are refused once the listener is gone.
    bounded("listener closes", async {
        loop {
            match tokio::net::TcpStream::connect(https).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    // While connections drain, the admin listener still answers and says so,
    // so a load balancer stops sending traffic here.
    let ready = bounded("readyz while draining", reqwest::get(&readyz))
        .await
        .expect("admin still up while draining");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(v["checks"]["shutdown"]["status"], "draining", "{v}");
    let resp = bounded("in-flight request", in_flight)
        .await
        .expect("task")
        .expect("in-flight request completes");
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["path"], "/hold");
    bounded("serve returns", stopping).await.expect("stop");
}

// --- more: trusted proxies, response hop-by-hop, slow clients ------------------------

#[tokio::test]
async fn trusted_peer_forwarded_for_chain_is_extended() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let yaml = format!(
        r#"trusted_proxies: [127.0.0.0/8]
{routes}"#,
        routes = catch_all(&backend.url())
    );
    let proxy = TestProxy::start(&yaml).await;
    for (c, v) in proxy.clients() {
        let r = send(
            c.get(proxy.url("/x")).header("x-forwarded-for", "6.6.6.6"),
            v,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for s in backend.seen() {
        assert_eq!(s.header("x-forwarded-for"), Some("6.6.6.6, 127.0.0.1"));
        assert_eq!(s.header("x-forwarded-proto"), Some("https"));
    }
}

#[tokio::test]
async fn hop_by_hop_headers_from_the_upstream_are_stripped() {
    let backend = Backend::start(
        "hoppy",
        Behavior::with_headers(vec![
            ("connection", "x-internal"),
            ("x-internal", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic realm=\"inner\""),
            ("x-visible", "yes"),
        ]),
    )
    .await;
    let yaml = catch_all(&backend.url());
    let proxy = TestProxy::start(&yaml).await;
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        proxy.https.port()
    );
    let r = proxy.raw_h1(req.as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-visible"), Some("yes"));
    for h in ["x-internal", "keep-alive", "proxy-authenticate"] {
        assert!(
            r.headers.get(h).is_none(),
            "{h} reached the client: {:?}",
            r.headers
        );
    }
    let r = send(proxy.h2().get(proxy.url("/x")), Version::HTTP_2).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-visible"), Some("yes"));
    assert!(r.headers.get("x-internal").is_none());
}

#[tokio::test]
async fn slow_clients_are_disconnected() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let yaml = format!(
        r#"upstreams:
  legacy: {{ url: "{}" }}
limits: {{ header_read_timeout: 1s }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
        backend.url()
    );
    let proxy = TestProxy::start(&yaml).await;
    // Half a request head, then silence: the connection is closed.
    let mut tls = tls_connect(proxy.https, proxy.tls_config(&[b"http/1.1"])).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = bounded("slow header connection closed", tls.read_to_end(&mut buf)).await;
    assert_eq!(backend.count(), 0);
}

/// KNOWN CORE BUG (reported, not fixed here): `upstreams.*.timeout` only
/// bounds the wait for the response head (`UpstreamClient::send`). On a
/// streaming route, an upstream that sends its head and then stalls keeps
/// the client's response open forever. Expected: once the timeout passes,
/// the body ends with an error (the status is already out, so the stream
/// must be aborted) instead of hanging.
#[tokio::test]
async fn stalled_upstream_body_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stalled = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                .await;
            held.push(s); // never finishes the body
        }
    });
    let yaml = format!(
        r#"upstreams:
  legacy: {{ url: "http://{addr}", timeout: 1s }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    upstream: legacy
"#
    );
    let proxy = TestProxy::start(&yaml).await;
    let mut tls = tls_connect(proxy.https, proxy.tls_config(&[b"http/1.1"])).await;
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        proxy.https.port()
    );
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    // Passes only if the proxy closes the connection on its own.
    let _ = bounded("stalled body to be cut off", tls.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    stalled.abort();
}
