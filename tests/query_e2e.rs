//! Query strings on protected routes, through the real proxy (real TLS,
//! HTTP/1.1 and HTTP/2 clients, a backend that records every byte it
//! reads): a parameter that spells an encrypt rule's field, in any of the
//! spellings Rails/Rack, PHP, Spring and ASP.NET bind (case, percent
//! escapes, `+`, `user[ssn]`, `user.ssn`, `ssn[]`, `ssn[0]`, `;` as a
//! separator, repeats), is refused with nothing forwarded; a `query:`
//! entry seals it instead; invalid escapes are refused; everything else
//! reaches the backend byte for byte.

mod common;

use common::*;
use http::StatusCode;

struct Setup {
    backend: ScriptedBackend,
    proxy: TestProxy,
    ring: fieldseal::crypto::Keyring,
    _keys: tempfile::TempDir,
}

async fn setup() -> Setup {
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
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number", {{ path: "$.pin", look_alikes: allow }}]
  - name: search
    match: {{ path_prefix: /api/search }}
    upstream: legacy
    encrypt: ["$.ssn", "$.email"]
    query:
      email: seal
      ssn: refuse
  - name: plain
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    Setup {
        ring: file_ring("k1", &[("k1", &k1)]),
        backend,
        proxy,
        _keys: keys,
    }
}

/// Percent-encodes every byte of `s`.
fn pct_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Percent-encodes every other byte, lower-case hex.
fn pct_some(s: &str) -> String {
    s.bytes()
        .enumerate()
        .map(|(i, b)| {
            if i % 2 == 0 {
                format!("%{b:02x}")
            } else {
                (b as char).to_string()
            }
        })
        .collect()
}

fn flip_case(s: &str) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Names a backend binds to `$.ssn` / `$.card.number`, generated.
fn protected_names() -> Vec<String> {
    let mut base: Vec<String> = Vec::new();
    for n in ["ssn", "card.number", "card[number]"] {
        for shaped in [
            n.to_string(),
            format!("{n}[]"),
            format!("{n}[0]"),
            format!("user[{n}]"),
            format!("user.{n}"),
            format!("data[attributes][{n}]"),
            format!("{n}%00"),
            format!("{n}[x]"),
        ] {
            base.push(shaped);
        }
    }
    base.push("\u{17F}sn".into());
    let mut out = Vec::new();
    for b in &base {
        out.push(b.clone());
        out.push(flip_case(b));
        out.push(b.to_uppercase());
        if !b.contains('%') && b.is_ascii() {
            out.push(pct_all(b));
            out.push(pct_some(b));
        } else if !b.is_ascii() {
            out.push(pct_all(b));
        }
    }
    out
}

/// Query strings holding `secret` under a protected name, generated.
fn protected_queries(secret: &str) -> Vec<String> {
    let mut out = Vec::new();
    let v_plus = secret.replace('-', "+");
    for name in protected_names() {
        out.push(format!("{name}={secret}"));
        out.push(format!("page=2&{name}={secret}"));
        out.push(format!("page=2;{name}={v_plus}"));
        out.push(format!("{name}={secret}&{name}={secret}"));
        out.push(format!("q=a&&{name}={}", pct_all(secret)));
    }
    out
}

#[tokio::test]
async fn protected_parameters_are_refused_in_every_spelling_and_nothing_is_forwarded() {
    let s = setup().await;
    let mut checked = 0;
    for (c, v) in s.proxy.clients() {
        for (i, q) in protected_queries("078-05-1120").iter().enumerate() {
            let secret = format!("Q{i}x{v:?}x078-05-1120").replace(['/', '.'], "");
            let q = q.replace("078-05-1120", &secret);
            for (method, path) in [("POST", "/api/users"), ("GET", "/api/users/7")] {
                let url = s.proxy.url(&format!("{path}?{q}"));
                let req = match method {
                    "POST" => c
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(r#"{"name": "a"}"#),
                    _ => c.get(&url),
                };
                let resp = bounded("request", req.send()).await.expect("sent");
                assert_eq!(resp.version(), v);
                let status = resp.status();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string);
                let body = bounded("body", resp.bytes()).await.expect("body");
                assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}?{q}");
                assert_error_json(status, ct.as_deref(), &body);
                let text = String::from_utf8_lossy(&body).to_lowercase();
                assert!(!text.contains(&secret.to_lowercase()), "echoed: {text}");
                assert!(!text.contains("ssn"), "echoed a name: {text}");
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "{checked}");
    assert_eq!(s.backend.count(), 0, "a refused request was forwarded");
    assert!(!s.backend.raw_contains(b"078-05-1120"));
    s.proxy.stop().await;
}

#[tokio::test]
async fn invalid_escapes_are_refused_and_other_parameters_pass_verbatim() {
    let s = setup().await;
    let mut forwarded = 0;
    for (c, v) in s.proxy.clients() {
        for q in [
            "a=%zz",
            "a=%4",
            "a=%",
            "%u0073sn=1",
            "%C0%B3sn=1",
            "%FF%FE=1",
            "ssn%E2=1",
        ] {
            let resp = bounded(
                "request",
                c.get(s.proxy.url(&format!("/api/users?{q}"))).send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.version(), v);
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
        }
        assert_eq!(s.backend.count(), forwarded);
        for q in [
            "page=2&sort=name",
            "ssn_last4=1120&number=5&card=visa&pins=1",
            "q=ssn%3D078&x=%2B;y=a+b",
            "name=%E2%82%AC&&empty=",
            // A value nothing judges may be any bytes.
            "blob=%E2%82",
        ] {
            let resp = bounded(
                "request",
                c.get(s.proxy.url(&format!("/api/users?{q}"))).send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.status(), StatusCode::OK, "{q}");
            forwarded += 1;
            let seen = s.backend.seen();
            let last = seen.last().expect("seen");
            assert_eq!(last.uri.query(), Some(q), "forwarded verbatim");
        }
    }
    // A route without encrypt rules or `query:` is not inspected at all.
    let resp = bounded(
        "request",
        s.proxy.h1().get(s.proxy.url("/other?ssn=1&a=%zz")).send(),
    )
    .await
    .expect("sent");
    assert_eq!(resp.status(), StatusCode::OK);
    s.proxy.stop().await;
}

#[tokio::test]
async fn a_query_entry_seals_the_parameter_and_refuses_the_refused_one() {
    let s = setup().await;
    let mut n = 0;
    for (c, v) in s.proxy.clients() {
        // The envelope is bound to the name as spelled: the member the
        // backend stores it under and answers it at.
        for (q, context) in [
            ("email=ada%40example.com&page=1", "email"),
            ("EMAIL=ada@example.com&page=1", "EMAIL"),
            ("user%5BEmail%5D=ada@example.com&page=1", "Email"),
            ("e%6Dail=ada%40example.com;page=1", "email"),
        ] {
            let resp = bounded(
                "request",
                c.get(s.proxy.url(&format!("/api/search?{q}"))).send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.version(), v);
            assert_eq!(resp.status(), StatusCode::OK, "{q}");
            n += 1;
            let seen = s.backend.seen();
            let got = seen
                .last()
                .expect("seen")
                .uri
                .query()
                .expect("query")
                .to_string();
            assert!(!got.contains("ada"), "{got}");
            let (name, rest) = got.split_once('=').expect("pair");
            let (env, tail) = rest.split_once(['&', ';']).expect("tail");
            assert_eq!(tail, "page=1", "{got}");
            assert!(name.to_lowercase().contains("email"), "{got}");
            let env = env.replace("%3A", ":");
            let opened = s.ring.open(&env, context, None).expect("opens").value;
            assert_eq!(opened, serde_json::json!("ada@example.com"), "{q}");
        }
        for q in ["ssn=1", "SSN[]=1", "x=1&user.ssn=1"] {
            let resp = bounded(
                "request",
                c.get(s.proxy.url(&format!("/api/search?{q}"))).send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
        }
        assert_eq!(s.backend.count(), n);
    }
    assert!(!s.backend.raw_contains(b"ada@example"));
    assert!(!s.backend.raw_contains(b"ada%40example"));
    s.proxy.stop().await;
}

/// A refused query (or path segment) is answered from the request head:
/// the proxy does not wait for a body it will never forward. The client
/// here declares a large body, sends a little of it and then nothing, on
/// a proxy whose body read timeout is far beyond the test's bound: a proxy
/// that read the body first would answer 408 only after that timeout (and
/// the bounded wait fails first). Over HTTP/1.1 and HTTP/2; the backend
/// sees nothing.
#[tokio::test]
async fn a_refused_query_is_answered_before_the_body_is_read() {
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path(), "k1");
    let backend = ScriptedBackend::start().await;
    let yaml = format!(
        r#"upstreams:
  legacy: {{ url: "{url}" }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
limits:
  max_body: 2MiB
  body_read_timeout: 600s
routes:
  - name: by-ssn
    match: {{ path: "/api/by-ssn/{{ssn}}" }}
    upstream: legacy
    encrypt: ["$.ssn"]
    path_params: {{ ssn: refuse }}
  - name: search
    match: {{ path_prefix: /api/search }}
    upstream: legacy
    encrypt: ["$.ssn", "$.email"]
    query:
      email: seal
      ssn: refuse
"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    let declared = 2_000_000;
    let first = format!(r#"{{"note": "{}"#, "x".repeat(60_000));
    let targets = [
        "/api/search?ssn=078-05-1120",
        "/api/search?page=1&User%5BSSN%5D=078-05-1120",
        "/api/by-ssn/078-05-1120",
    ];
    for target in targets {
        // HTTP/1.1: the head, part of the body, then silence (the
        // connection stays open).
        let mut tls = tls_connect(proxy.https, proxy.tls_config(&[b"http/1.1"])).await;
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{first}"
        );
        bounded("write", tls.write_all(head.as_bytes()))
            .await
            .expect("write");
        let _ = tls.flush().await;
        let mut buf = Vec::new();
        let answer = bounded("the answer, before the body", async {
            loop {
                let mut chunk = [0u8; 4096];
                let n = tls.read(&mut chunk).await.unwrap_or(0);
                buf.extend_from_slice(&chunk[..n]);
                let done = buf
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .is_some_and(|end| {
                        let r = parse_h1_response(&buf);
                        r.header("content-length")
                            .and_then(|l| l.parse::<usize>().ok())
                            .is_some_and(|l| buf.len() >= end + 4 + l)
                    });
                if done || n == 0 {
                    return parse_h1_response(&buf);
                }
            }
        })
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "h1 {target}");
        assert_eq!(
            answer.json()["error"],
            "the request names a protected field as a parameter this route does not accept",
            "h1 {target}"
        );
        drop(tls);

        // HTTP/2: a request body that sends one chunk and never ends.
        let tls = tls_connect(proxy.https, proxy.tls_config(&[b"h2"])).await;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(
            hyper::body::Frame::data(bytes::Bytes::from(first.clone())),
        )])
        .chain(futures_util::stream::pending());
        let req = http::Request::post(proxy.url(target))
            .header("content-type", "application/json")
            .header("content-length", declared)
            .body(http_body_util::StreamBody::new(chunks))
            .expect("request");
        let resp = bounded("the h2 answer, before the body", sender.send_request(req))
            .await
            .expect("h2 response");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "h2 {target}");
        let body = bounded("h2 body", resp.into_body().collect())
            .await
            .expect("h2 body")
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            body["error"],
            "the request names a protected field as a parameter this route does not accept",
            "h2 {target}"
        );
    }
    assert_eq!(backend.count(), 0, "a refused request was forwarded");
    assert!(backend.raw_bytes().iter().all(Vec::is_empty));
    proxy.stop().await;
}

/// A query or form value that is itself JSON (`?filter={"ssn":"…"}`) is
/// read by a backend that parses it as the fields it names: through the
/// proxy, over HTTP/1.1 and HTTP/2, a protected name inside it in any
/// spelling (percent-encoded, nested in arrays, another case, lenient
/// JSON, encoded twice, JSON inside a JSON string) refuses the request
/// with `protected_parameter`, and the backend sees nothing; JSON that
/// names no protected field passes byte for byte.
#[tokio::test]
async fn json_in_query_and_form_values_is_judged_by_the_fields_it_names() {
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = key_file(keys.path(), "k1");
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
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number", "$.email"]
    query:
      email: seal
    form: {{ encrypt: [email] }}
"#,
        url = backend.url(),
        k1 = k1.display(),
    );
    let proxy = TestProxy::start(&yaml).await;
    let secret = "078-05-1120";
    let refused: Vec<String> = [
        r#"filter={"ssn":"078-05-1120"}"#,
        "filter=%7B%22ssn%22%3A%22078-05-1120%22%7D",
        "filter=%7b%22SSN%22%3a%22078-05-1120%22%7d",
        r#"filter=[{"and":[{"User":{"S_S-N":"078-05-1120"}}]}]"#,
        r#"q={"card":{"Number":"078-05-1120"}}"#,
        r#"where={"email":"078-05-1120"}"#,
        r#"filter={"s\u0073n":"078-05-1120"}"#,
        "filter={'ssn':'078-05-1120'}",
        "filter={ssn:'078-05-1120'}",
        "filter=%257B%2522ssn%2522%253A%2522078-05-1120%2522%257D",
        r#"filter={"q":"{\"ssn\":\"078-05-1120\"}"}"#,
        "page=2&filter=+%7B%22ssn%22:%22078-05-1120%22%7D",
    ]
    .iter()
    .map(|q| {
        // The query as a client library sends it: what reqwest would
        // escape is escaped here, the rest kept as written.
        q.replace('"', "%22")
            .replace(' ', "%20")
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('\\', "%5C")
    })
    .collect();
    let harmless = [
        "filter=%7B%22name%22%3A%22Ada%22%2C%22tags%22%3A%5B%22a%22%2C%22ssn%22%5D%7D",
        "q=%5B%7B%22card%22%3A%7B%22holder%22%3A%22Ada%22%7D%7D%5D",
        "filter=%7Bname%3A%27ssn%27%7D",
    ];
    for (c, v) in proxy.clients() {
        for q in &refused {
            for form in [false, true] {
                let req = match form {
                    false => c.get(proxy.url(&format!("/api/users?{q}"))),
                    true => c
                        .post(proxy.url("/api/users"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(q.clone()),
                };
                let resp = bounded("request", req.send()).await.expect("sent");
                assert_eq!(resp.version(), v);
                let status = resp.status();
                let body: serde_json::Value = bounded("body", resp.json()).await.expect("json");
                assert_eq!(
                    status,
                    StatusCode::BAD_REQUEST,
                    "{q} (form: {form}): {body}"
                );
                assert_eq!(
                    body["error"],
                    "the request names a protected field as a parameter this route does not accept",
                    "{q} (form: {form})"
                );
                assert!(!body.to_string().contains(secret), "echoed");
            }
        }
        assert_eq!(backend.count(), 0, "a refused request was forwarded");
    }
    let mut n = 0;
    for (c, _) in proxy.clients() {
        for q in harmless {
            let resp = bounded("get", c.get(proxy.url(&format!("/api/users?{q}"))).send())
                .await
                .expect("sent");
            assert_eq!(resp.status(), StatusCode::OK, "{q}");
            n += 1;
            let seen = backend.seen();
            assert_eq!(seen.len(), n);
            assert_eq!(seen[n - 1].uri.query(), Some(q), "forwarded verbatim");
            let resp = bounded(
                "form",
                c.post(proxy.url("/api/users"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(q)
                    .send(),
            )
            .await
            .expect("sent");
            assert_eq!(resp.status(), StatusCode::OK, "form {q}");
            n += 1;
            let seen = backend.seen();
            assert_eq!(seen.len(), n);
            assert_eq!(&seen[n - 1].body[..], q.as_bytes(), "forwarded verbatim");
        }
    }
    assert!(!backend.raw_contains(secret.as_bytes()));
    proxy.stop().await;
}
