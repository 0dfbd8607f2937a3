//! The stages without a socket: a runtime compiled from the demo's config
//! (a generated certificate and data key in a private temporary folder),
//! requests and answers built in memory. What the socket-level suites in
//! `tests/` check end to end, checked here stage by stage.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{finish, request_body, response_body, Exchange, Held};
use crate::body::{BufferLimits, BufferPool, ConnBuffers, ProxyBody};
use crate::config::Config;
use crate::demo::DemoDir;
use crate::error::{ClientError, ProxyError, UpstreamError};
use crate::metrics::{Metrics, RouteStatus};
use crate::state::{RouteRuntime, Runtime, Shared};

const SSN: &str = "078-05-1120";
const CARD: &str = "4111111111111111";

struct Fixture {
    dir: DemoDir,
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
    buffers: Arc<ConnBuffers>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.dir.remove();
    }
}

impl Fixture {
    fn new() -> Fixture {
        let mut dir = DemoDir::claim(None).expect("a private folder");
        // Nothing listens or connects: the addresses are only compiled.
        let listen = "127.0.0.1:9".parse().expect("address");
        let backend = "127.0.0.1:10".parse().expect("address");
        let issuer = "127.0.0.1:11".parse().expect("address");
        let addrs = crate::demo::DemoAddrs {
            listen,
            backend,
            issuer,
        };
        let path = dir.write(&addrs).expect("demo files");
        let config = Config::load(&path).expect("the demo config loads");
        let metrics = Metrics::new();
        let runtime = Runtime::build(config, None, &metrics).expect("runtime");
        let shared = Arc::new(Shared::new(runtime, metrics));
        let rt = shared.runtime.load_full();
        let buffers = Arc::new(ConnBuffers::new(Arc::new(BufferPool::default())));
        Fixture {
            dir,
            shared,
            rt,
            buffers,
        }
    }

    /// The demo's first route, `users`, which seals and opens fields.
    fn users(&self) -> Arc<RouteRuntime> {
        let route = Arc::clone(&self.rt.routes[0]);
        assert_eq!(route.route.name, "users");
        route
    }

    fn held(&self) -> Held<'_> {
        let limits = &self.rt.config.limits;
        Held {
            buffers: &self.buffers,
            budget: BufferLimits {
                per_connection: limits.max_buffered_per_connection,
                total: limits.max_buffered_total,
            },
        }
    }

    fn exchange(&self, route: Option<Arc<RouteRuntime>>) -> Exchange {
        let mut ex = Exchange::new(
            HeaderValue::from_static("test-request-1"),
            Method::POST,
            "127.0.0.1".parse().expect("address"),
            None,
        );
        ex.path = "/api/users".into();
        ex.route = route;
        ex
    }

    /// Runs the request-body stage on `body` with `headers`; the bytes it
    /// would forward and the headers as it left them.
    async fn seal(
        &self,
        headers: &[(&str, &str)],
        body: &'static str,
    ) -> (Result<(Bytes, http::HeaderMap), ProxyError>, Exchange) {
        let mut req = Request::post("/api/users");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (mut parts, ()) = req.body(()).expect("request").into_parts();
        let incoming = Full::new(Bytes::from_static(body.as_bytes()));
        let route = self.users();
        let mut ex = self.exchange(Some(Arc::clone(&route)));
        let held = self.held();
        let out =
            request_body::request_body(&self.rt, &route, &mut parts, incoming, &held, &mut ex)
                .await;
        let out = match out {
            Ok(b) => Ok((collect(b).await, parts.headers)),
            Err(e) => Err(e),
        };
        (out, ex)
    }

    /// Runs the response-body stage on an upstream answer.
    async fn open(
        &self,
        answer: Response<Full<Bytes>>,
    ) -> (Result<Response<ProxyBody>, ProxyError>, Exchange) {
        let route = self.users();
        let mut ex = self.exchange(Some(Arc::clone(&route)));
        let held = self.held();
        let out = response_body::response_body(
            &self.shared,
            &self.rt,
            &route,
            &Method::GET,
            answer,
            &held,
            &mut ex,
        )
        .await;
        (out, ex)
    }
}

async fn collect(body: ProxyBody) -> Bytes {
    body.collect().await.expect("body").to_bytes()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn the_request_body_stage_forwards_envelopes_and_their_length() {
    let f = Fixture::new();
    let body = r#"{"name":"Ada","ssn":"078-05-1120","card":{"number":"4111111111111111"},"contacts":[{"phone":"555-0100"},{"phone":"555-0101"}]}"#;
    let (out, ex) = f.seal(&[("content-type", "application/json")], body).await;
    let (bytes, headers) = out.expect("sealed");
    for plain in [SSN, CARD, "555-0100", "555-0101"] {
        assert!(!contains(&bytes, plain), "{plain} forwarded in plaintext");
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON out");
    assert_eq!(v["name"], "Ada");
    for sealed in [&v["ssn"], &v["card"]["number"], &v["contacts"][1]["phone"]] {
        assert!(
            sealed.as_str().is_some_and(|s| s.starts_with("fs1:")),
            "{v}"
        );
    }
    assert_eq!(
        headers.get(header::CONTENT_LENGTH),
        Some(&HeaderValue::from(bytes.len()))
    );
    assert_eq!(ex.request_report.encrypted, 4);
    assert_eq!(ex.bytes_in, body.len() as u64);
    // Sealed twice, the same document gives other envelopes (fresh nonces).
    let (again, _) = f.seal(&[("content-type", "application/json")], body).await;
    assert_ne!(again.expect("sealed").0, bytes);
}

#[tokio::test]
async fn the_request_body_stage_refuses_what_it_cannot_seal() {
    let f = Fixture::new();
    let ssn = r#"{"ssn":"078-05-1120"}"#;
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'static str,
        fn(&ProxyError) -> bool,
    );
    let cases: [Case; 6] = [
        (&[("content-type", "text/plain")], ssn, |e| {
            matches!(e, ProxyError::Client(ClientError::UnsupportedMediaType))
        }),
        (
            &[
                ("content-type", "application/json"),
                ("content-type", "text/plain"),
            ],
            ssn,
            |e| matches!(e, ProxyError::Client(ClientError::BadRequest(_))),
        ),
        (
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip, br"),
            ],
            ssn,
            |e| matches!(e, ProxyError::Client(ClientError::UnsupportedEncoding)),
        ),
        (
            &[
                ("content-type", "application/json"),
                ("content-length", "99999999999"),
            ],
            ssn,
            |e| matches!(e, ProxyError::Client(ClientError::BodyTooLarge { .. })),
        ),
        // Not JSON at all, and JSON that a lenient parser would take.
        (
            &[("content-type", "application/json")],
            "ssn=078-05-1120",
            |e| matches!(e, ProxyError::Client(_)),
        ),
        (
            &[("content-type", "application/json")],
            r#"{"ssn":"078-05-1120",}"#,
            |e| matches!(e, ProxyError::Client(_)),
        ),
    ];
    for (i, (headers, body, expected)) in cases.into_iter().enumerate() {
        let (out, ex) = f.seal(headers, body).await;
        match out {
            Err(e) => assert!(expected(&e), "case {i}: {e:?}"),
            Ok((bytes, _)) => panic!("case {i} forwarded {} bytes", bytes.len()),
        }
        assert_eq!(ex.request_report.encrypted, 0, "case {i}");
    }
    // Nothing stays reserved once the refused bodies are gone.
    assert_eq!(f.buffers.used(), 0);
}

#[tokio::test]
async fn the_response_body_stage_opens_envelopes_and_drops_stale_headers() {
    let f = Fixture::new();
    let route = f.users();
    let ring = f.rt.keyring.as_ref().expect("demo ring");
    let (sealed, _) =
        super::encrypt_body(br#"{"ssn":"078-05-1120","n":1}"#, &route.route, ring).expect("seal");
    let answer = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, sealed.len())
        .header(header::ETAG, "\"v1\"")
        .header("content-md5", "stale")
        .header(header::CONNECTION, "x-hop")
        .header("x-hop", "1")
        .body(Full::new(Bytes::from(sealed)))
        .expect("answer");
    let (out, ex) = f.open(answer).await;
    let resp = out.expect("opened");
    let headers = resp.headers().clone();
    let body = collect(resp.into_body()).await;
    assert_eq!(&body[..], br#"{"ssn":"078-05-1120","n":1}"#);
    assert_eq!(ex.response_report.decrypted, 1);
    assert_eq!(
        headers.get(header::CONTENT_LENGTH),
        Some(&HeaderValue::from(body.len()))
    );
    // The bytes changed: a strong validator would be a lie, an MD5 wrong,
    // and hop-by-hop headers are the upstream connection's, not the client's.
    assert_eq!(
        headers.get(header::ETAG),
        Some(&HeaderValue::from_static("W/\"v1\""))
    );
    assert!(headers.get("content-md5").is_none());
    assert!(headers.get("x-hop").is_none());
    assert!(headers.get(header::CONNECTION).is_none());
}

#[tokio::test]
async fn the_response_body_stage_refuses_broken_upstream_answers() {
    let f = Fixture::new();
    let ring = f.rt.keyring.as_ref().expect("demo ring");
    let (sealed, _) =
        super::encrypt_body(br#"{"ssn":"078-05-1120"}"#, &f.users().route, ring).expect("seal");
    let answer = |b: http::response::Builder, body: Vec<u8>| {
        b.header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("answer")
    };
    let cases = [
        // An upgrade we never asked for.
        answer(
            Response::builder().status(StatusCode::SWITCHING_PROTOCOLS),
            Vec::new(),
        ),
        // Two Content-Types: a client could read JSON where we did not.
        answer(
            Response::builder().header(header::CONTENT_TYPE, "text/plain"),
            sealed.clone(),
        ),
        // A transfer coding that would reach the client still coded.
        answer(
            Response::builder().header(header::TRANSFER_ENCODING, "gzip, chunked"),
            sealed.clone(),
        ),
        // A content coding we don't undo.
        answer(
            Response::builder().header(header::CONTENT_ENCODING, "x-unknown"),
            sealed.clone(),
        ),
    ];
    for (i, a) in cases.into_iter().enumerate() {
        let (out, _) = f.open(a).await;
        match out {
            Err(ProxyError::Upstream(UpstreamError::UpstreamProtocol))
            | Err(ProxyError::Upstream(UpstreamError::UpstreamBody)) => {}
            Err(e) => panic!("case {i}: {e:?}"),
            Ok(r) => panic!("case {i}: passed with {}", r.status()),
        }
    }
}

#[tokio::test]
async fn the_finish_stage_adds_security_headers_and_the_request_id_and_counts() {
    let f = Fixture::new();
    let ex = f.exchange(Some(f.users()));
    let answer = Response::builder()
        .status(StatusCode::CREATED)
        // The upstream's own id is replaced by ours: one id per request.
        .header("x-request-id", "from-upstream")
        .body(crate::body::empty())
        .expect("answer");
    let out = finish::finish(&f.shared, &f.rt, &ex, answer, Instant::now());
    let h = out.headers();
    assert_eq!(out.status(), StatusCode::CREATED);
    assert_eq!(h.get_all("x-request-id").iter().count(), 1);
    assert_eq!(h.get("x-request-id"), Some(&ex.request_id));
    for name in [
        "strict-transport-security",
        "x-content-type-options",
        "content-security-policy",
    ] {
        assert!(h.contains_key(name), "{name} missing: {h:?}");
    }
    let counted = f
        .shared
        .metrics
        .requests
        .get_or_create(&RouteStatus {
            route: "users".into(),
            status: 201,
        })
        .get();
    assert_eq!(counted, 1);
}
