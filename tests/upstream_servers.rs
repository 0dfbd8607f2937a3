//! Upstreams of several servers: balancing, passive health with back-off,
//! and retries only where they are safe. Real backends on 127.0.0.1 that
//! can be killed (every connection dropped) and brought back.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A backend whose `kill` drops its listener and every open connection,
/// like a crashed process. Answers `{"backend": name, "body": ...}` after
/// `delay`, so requests are in flight when it dies.
struct Killable {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Killable {
    async fn start(name: &'static str, at: Option<SocketAddr>, delay: Duration) -> Killable {
        let listener =
            TcpListener::bind(at.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr")))
                .await
                .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&served);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let count = Arc::clone(&count);
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let count = Arc::clone(&count);
                        async move {
                            let body = req.into_body().collect().await.map(|c| c.to_bytes());
                            tokio::time::sleep(delay).await;
                            count.fetch_add(1, Ordering::SeqCst);
                            let echo = serde_json::json!({
                                "backend": name,
                                "body": String::from_utf8_lossy(&body.unwrap_or_default()),
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                echo.to_string(),
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Killable { addr, served, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Drops the listener and every connection (aborting the task drops its
    /// JoinSet, which aborts each connection task).
    async fn kill(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

fn upstream_yaml(servers: &[String], extra: &str) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "upstreams:\n  legacy:\n    servers: [{list}]\n{extra}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: legacy\n"
    )
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    bounded(what, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Idempotent requests from `workers` clients until `stop`; every status
/// that is not 200 is kept.
fn load(
    proxy: &TestProxy,
    workers: usize,
    stop: &Arc<AtomicBool>,
    sent: &Arc<AtomicUsize>,
    failed: &Arc<Mutex<Vec<String>>>,
) -> Vec<JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let client = proxy.h1();
            let url = proxy.url("/items/1");
            let (stop, sent, failed) = (Arc::clone(stop), Arc::clone(sent), Arc::clone(failed));
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    // Idempotent and without a body: a PUT whose body went
                    // out to the dying server is (rightly) not sent again.
                    let method = ["GET", "DELETE", "HEAD", "OPTIONS"][(w + i) % 4];
                    let req = client.request(method.parse().expect("method"), &url);
                    match req.send().await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            let _ = r.bytes().await;
                        }
                        Ok(r) => {
                            let line = format!(
                                "{method} {}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                            failed.lock().expect("lock").push(line);
                        }
                        Err(e) => failed
                            .lock()
                            .expect("lock")
                            .push(format!("{method}: client error: {e}")),
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_three_backends_killed_mid_load_fails_no_idempotent_request() {
    let delay = Duration::from_millis(5);
    let a = Killable::start("a", None, delay).await;
    let b = Killable::start("b", None, delay).await;
    let c = Killable::start("c", None, delay).await;
    let b_addr = b.addr;
    let yaml = upstream_yaml(
        &[a.url(), b.url(), c.url()],
        "    balance: round_robin\n    health: { fails: 2, backoff: 500ms }\n",
    );
    let proxy = TestProxy::start(&yaml).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let workers = load(&proxy, 8, &stop, &sent, &failed);

    wait_until("every backend to take traffic", || {
        a.served() >= 20 && b.served() >= 20 && c.served() >= 20
    })
    .await;
    let (a_before, c_before) = (a.served(), c.served());
    b.kill().await;
    wait_until("traffic to move to the others", || {
        a.served() >= a_before + 100 && c.served() >= c_before + 100
    })
    .await;

    // Brought back on the same address: its back-off over, it is tried
    // again and takes traffic again.
    let b = Killable::start("b", Some(b_addr), delay).await;
    wait_until(
        "the revived backend to be retried after its back-off",
        || b.served() >= 10,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        bounded("load worker", w).await.expect("worker");
    }
    let failed = failed.lock().expect("lock").clone();
    assert!(
        failed.is_empty(),
        "{} of {} idempotent requests failed: {:?}",
        failed.len(),
        sent.load(Ordering::SeqCst),
        &failed[..failed.len().min(5)]
    );

    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let server = format!("http://{b_addr}");
    let labels = [("upstream", "legacy"), ("server", server.as_str())];
    let backoffs = metric_value(
        &metrics,
        "fieldseal_upstream_server_backoffs_total",
        &labels,
    );
    assert!(backoffs.unwrap_or(0.0) >= 1.0, "{metrics}");
    let failures = metric_value(
        &metrics,
        "fieldseal_upstream_server_failures_total",
        &labels,
    );
    assert!(failures.unwrap_or(0.0) >= 2.0, "{metrics}");
    let retries = metric_value(
        &metrics,
        "fieldseal_upstream_retries_total",
        &[("upstream", "legacy")],
    );
    assert!(retries.unwrap_or(0.0) >= 1.0, "{metrics}");
    assert_eq!(
        metric_value(&metrics, "fieldseal_upstream_server_up", &labels),
        Some(1.0),
        "the revived server is up again: {metrics}"
    );
}

/// Accepts connections, reads a request head, and closes without answering
/// (a backend crashing on each request). Counts the requests it read.
async fn closer() -> (SocketAddr, Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&buf);
                let first = line.lines().next().unwrap_or_default().to_string();
                log.lock().expect("lock").push(first);
                // Dropped: the connection closes with no answer.
            });
        }
    });
    (addr, seen, task)
}

#[tokio::test]
async fn a_request_that_may_have_reached_a_server_is_retried_only_when_idempotent() {
    let (dead, seen, _task) = closer().await;
    let good = Backend::start("good", Behavior::echo()).await;
    // fails: high, so the closing server stays in rotation for every request.
    let yaml = upstream_yaml(
        &[format!("http://{dead}"), good.url()],
        "    health: { fails: 1000, backoff: 1s }\n",
    );
    let proxy = TestProxy::start(&yaml).await;
    let client = proxy.h1();
    let n = 10;
    for i in 0..n {
        let r = client
            .get(proxy.url(&format!("/get/{i}")))
            .send()
            .await
            .expect("get");
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "a GET is retried on the other server"
        );
    }
    let gets_closed = seen.lock().expect("lock").len();
    assert!(
        gets_closed >= 1,
        "round robin sent some GETs to the closing server"
    );

    let mut bad_gateway = 0;
    for i in 0..n {
        let r = client
            .post(proxy.url(&format!("/post/{i}")))
            .body(format!("{{\"i\":{i}}}"))
            .send()
            .await
            .expect("post");
        match r.status() {
            StatusCode::OK => {}
            StatusCode::BAD_GATEWAY => bad_gateway += 1,
            s => panic!("unexpected {s}"),
        }
    }
    let posts_closed = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.starts_with("POST "))
        .count();
    let posts_good = good
        .seen()
        .iter()
        .filter(|r| r.method == http::Method::POST)
        .count();
    assert!(
        posts_closed >= 1,
        "round robin sent some POSTs to the closing server"
    );
    assert_eq!(
        bad_gateway, posts_closed,
        "every POST the closing server read is a 502, never sent again"
    );
    assert_eq!(posts_good + posts_closed, n, "no POST reached two servers");
}

#[tokio::test]
async fn a_connect_failure_is_retried_for_any_method_with_the_body_whole() {
    let good = Backend::start("good", Behavior::echo()).await;
    let yaml = upstream_yaml(
        &[format!("http://{}", dead_address()), good.url()],
        "    health: { fails: 1000, backoff: 1s }\n",
    );
    let proxy = TestProxy::start(&yaml).await;
    let client = proxy.h1();
    for i in 0..6 {
        let sent = format!("{{\"post\":{i}}}");
        let r = client
            .post(proxy.url("/p"))
            .body(sent.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::OK);
        let echo: serde_json::Value = r.json().await.expect("json");
        assert_eq!(echo["backend"], "good");
        assert_eq!(
            echo["body"],
            sent.as_str(),
            "the body reached the server whole"
        );
    }
    assert_eq!(good.count(), 6);
}

#[tokio::test]
async fn a_502_comes_only_when_no_server_can_take_the_request() {
    let yaml = upstream_yaml(
        &[
            format!("http://{}", dead_address()),
            format!("http://{}", dead_address()),
        ],
        "",
    );
    let proxy = TestProxy::start(&yaml).await;
    let r = proxy.h1().get(proxy.url("/x")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["status"], 502, "{body}");
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    assert_eq!(
        metric_value(
            &metrics,
            "fieldseal_upstream_retries_total",
            &[("upstream", "legacy")]
        ),
        Some(1.0),
        "the second server was tried once: {metrics}"
    );
}

#[tokio::test]
async fn round_robin_spreads_requests_over_every_server() {
    let backends = [
        Backend::start("a", Behavior::echo()).await,
        Backend::start("b", Behavior::echo()).await,
        Backend::start("c", Behavior::echo()).await,
    ];
    let urls: Vec<String> = backends.iter().map(Backend::url).collect();
    let proxy = TestProxy::start(&upstream_yaml(&urls, "")).await;
    let client = proxy.h1();
    for _ in 0..30 {
        let r = client.get(proxy.url("/x")).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK);
    }
    for b in &backends {
        assert_eq!(b.count(), 10, "{}", b.name);
    }
}

/// A backend that holds every request until `release`, then answers 200;
/// counts the connections it accepted (and the most open at once).
struct Stalled {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl Stalled {
    async fn start() -> Stalled {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (release, released) = tokio::sync::watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let most_open = Arc::new(AtomicUsize::new(0));
        let (acc, op, most) = (
            Arc::clone(&accepted),
            Arc::clone(&open),
            Arc::clone(&most_open),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let now = op.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let op = Arc::clone(&op);
                let released = released.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let mut released = released.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            let _ = released.wait_for(|r| *r).await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"{\"ok\":true}",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    op.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Stalled {
            addr,
            accepted,
            open,
            most_open,
            release,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_backend_gets_at_most_max_connections_and_the_excess_a_503() {
    let a = Stalled::start().await;
    let b = Stalled::start().await;
    let cap = 3;
    let yaml = upstream_yaml(
        &[a.url(), b.url()],
        &format!("    max_connections: {cap}\n    queue_timeout: 200ms\n    timeout: 60s\n"),
    );
    let proxy = TestProxy::start(&yaml).await;
    // One HTTP/2 client with many streams, and HTTP/1.1 clients beside it.
    let h2 = proxy.h2();
    let mut pending = JoinSet::new();
    let total = 40;
    for i in 0..total {
        let client = if i % 4 == 0 { proxy.h1() } else { h2.clone() };
        let url = proxy.url(&format!("/items/{i}"));
        pending.spawn(async move {
            let r = client.get(url).send().await.expect("send");
            let status = r.status();
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = r.bytes().await.expect("body");
            (status, ct, body)
        });
    }
    // Both servers at their cap are held; every other request is refused
    // (on each server in turn: a retry is capped too) while they are.
    let held = 2 * cap;
    let mut refused = 0;
    while refused < total - held {
        let (status, ct, body) = bounded("a refused request", pending.join_next())
            .await
            .expect("a request left")
            .expect("task");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
        assert_error_json(status, ct.as_deref(), &body);
        refused += 1;
    }
    for s in [&a, &b] {
        assert_eq!(s.accepted.load(Ordering::SeqCst), cap, "accepted");
        assert_eq!(s.open.load(Ordering::SeqCst), cap, "open");
    }
    let (_, m) = admin_get(&proxy, "/metrics").await;
    let a_url = a.url();
    let a_labels = [("upstream", "legacy"), ("server", a_url.as_str())];
    assert_eq!(
        metric_value(&m, "fieldseal_upstream_server_connections", &a_labels),
        Some(cap as f64),
        "{m}"
    );
    let busy: f64 = ["queue_full", "queue_timeout"]
        .iter()
        .filter_map(|r| {
            metric_value(
                &m,
                "fieldseal_upstream_server_busy_total",
                &[("server", a_url.as_str()), ("reason", r)],
            )
        })
        .sum();
    assert!(busy >= 1.0, "{m}");
    let kind = metric_value(
        &m,
        "fieldseal_upstream_errors_total",
        &[("upstream", "legacy"), ("kind", "busy")],
    );
    assert_eq!(kind, Some((total - held) as f64), "{m}");

    // The backend answers again: the held requests are answered, and new
    // ones go through on the same connections.
    a.release.send_replace(true);
    b.release.send_replace(true);
    while let Some(done) = bounded("a held request", pending.join_next()).await {
        let (status, _, body) = done.expect("task");
        assert_eq!(status, StatusCode::OK, "{body:?}");
    }
    // As many at once as both servers' connections and queues take.
    let mut after = JoinSet::new();
    for i in 0..2 * cap {
        let client = if i % 4 == 0 { proxy.h1() } else { h2.clone() };
        let url = proxy.url("/after");
        after.spawn(async move { client.get(url).send().await.expect("send").status() });
    }
    while let Some(done) = bounded("a request after", after.join_next()).await {
        assert_eq!(done.expect("task"), StatusCode::OK);
    }
    for s in [&a, &b] {
        assert!(
            s.most_open.load(Ordering::SeqCst) <= cap,
            "never past the cap"
        );
    }
}

/// How a [`Checked`] backend answers its health path (`/healthz`).
const HEALTH_OK: u8 = 0;
/// Every path, the health path included, answers 503.
const ALL_FAIL: u8 = 1;
/// The health path never answers (other paths do).
const HEALTH_HANGS: u8 = 2;

/// A backend whose health can be switched; counts health checks and other
/// requests apart.
struct Checked {
    addr: SocketAddr,
    mode: Arc<std::sync::atomic::AtomicU8>,
    checks: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

impl Checked {
    async fn start(name: &'static str) -> Checked {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(HEALTH_OK));
        let checks = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (m, c, s) = (Arc::clone(&mode), Arc::clone(&checks), Arc::clone(&served));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (m, c, s) = (Arc::clone(&m), Arc::clone(&c), Arc::clone(&s));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (m, c, s) = (Arc::clone(&m), Arc::clone(&c), Arc::clone(&s));
                        async move {
                            let health = req.uri().path() == "/healthz";
                            let agent = req
                                .headers()
                                .get("user-agent")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let mode = m.load(Ordering::SeqCst);
                            if health {
                                assert_eq!(agent, "fieldseal-health-check");
                                c.fetch_add(1, Ordering::SeqCst);
                                if mode == HEALTH_HANGS {
                                    std::future::pending::<()>().await;
                                }
                            } else {
                                s.fetch_add(1, Ordering::SeqCst);
                            }
                            let mut resp = Response::new(Full::new(Bytes::from(
                                serde_json::json!({ "backend": name }).to_string(),
                            )));
                            if mode == ALL_FAIL {
                                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Checked {
            addr,
            mode,
            checks,
            served,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// Waits until `fieldseal_upstream_server_up` of `server` is `want`.
async fn server_up_is(proxy: &TestProxy, server: &str, want: f64) -> String {
    let labels = [("upstream", "legacy"), ("server", server)];
    bounded("the server's state to change", async {
        loop {
            let (_, m) = admin_get(proxy, "/metrics").await;
            if metric_value(&m, "fieldseal_upstream_server_up", &labels) == Some(want) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_failing_server_out_before_any_request_fails_and_bring_it_back() {
    let a = Checked::start("a").await;
    let b = Checked::start("b").await;
    // A back-off far longer than the test: only a passing check brings b back.
    let yaml = upstream_yaml(
        &[a.url(), b.url()],
        "    health: { fails: 2, backoff: 300s, path: /healthz, interval: 100ms, timeout: 1s }\n",
    );
    let proxy = TestProxy::start(&yaml).await;
    let client = proxy.h1();
    wait_until("the first checks", || a.checks() >= 1 && b.checks() >= 1).await;
    for _ in 0..4 {
        let r = client.get(proxy.url("/x")).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert!(b.served() >= 1, "b takes traffic while healthy");

    // b breaks: its checks see it first, and no client request reaches it.
    b.set(ALL_FAIL);
    let b_url = b.url();
    let m = server_up_is(&proxy, &b_url, 0.0).await;
    let failed = metric_value(
        &m,
        "fieldseal_upstream_health_checks_total",
        &[("server", b_url.as_str()), ("outcome", "failed")],
    );
    assert!(failed.unwrap_or(0.0) >= 2.0, "{m}");
    let b_before = b.served();
    for _ in 0..10 {
        let r = client.get(proxy.url("/x")).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK, "no request failed");
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["backend"], "a");
    }
    assert_eq!(
        b.served(),
        b_before,
        "no request went to b while it was down"
    );

    // b answers again: a passing check brings it back long before its back-off ends.
    b.set(HEALTH_OK);
    server_up_is(&proxy, &b_url, 1.0).await;
    for _ in 0..6 {
        let r = client.get(proxy.url("/x")).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert!(b.served() > b_before, "b takes traffic again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_health_path_takes_its_server_out_and_holds_up_nothing_else() {
    let a = Checked::start("a").await;
    let b = Checked::start("b").await;
    b.set(HEALTH_HANGS);
    let yaml = upstream_yaml(
        &[a.url(), b.url()],
        "    health: { fails: 2, backoff: 300s, path: /healthz, interval: 100ms, timeout: 200ms }\n",
    );
    let proxy = TestProxy::start(&yaml).await;
    server_up_is(&proxy, &b.url(), 0.0).await;
    // a's checker goes on beside b's hung ones, requests are answered (by
    // a), and the admin endpoints too.
    let a_checks = a.checks();
    wait_until("a's checks to go on", || a.checks() >= a_checks + 3).await;
    for _ in 0..6 {
        let r = proxy.h2().get(proxy.url("/x")).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK);
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["backend"], "a");
    }
    let (status, _) = admin_get(&proxy, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let hung = b.checks();
    assert!(hung >= 2, "each check timed out and the next one went out");

    // Shutdown is not held up by a hung check, and stops every checker.
    bounded("shutdown", proxy.stop()).await;
    let (a_after, b_after) = (a.checks(), b.checks());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        (a.checks(), b.checks()),
        (a_after, b_after),
        "checks after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_stops_the_old_checkers_and_starts_the_new_ones() {
    let a = Checked::start("a").await;
    let b = Checked::start("b").await;
    let c = Checked::start("c").await;
    let health = "    health: { fails: 2, backoff: 10s, path: /healthz, interval: 100ms }\n";
    let proxy = TestProxy::start(&upstream_yaml(&[a.url(), b.url()], health)).await;
    wait_until("b's checks", || b.checks() >= 2).await;
    assert_eq!(c.checks(), 0);

    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    let changed = text.replace(&b.url(), &c.url());
    assert_ne!(text, changed);
    let tmp = proxy.config_path.with_extension("new");
    std::fs::write(&tmp, changed).expect("write");
    std::fs::rename(&tmp, &proxy.config_path).expect("rename");
    proxy.proxy.reload().await.expect("reload");

    wait_until("c's checks", || c.checks() >= 2).await;
    let b_after = b.checks();
    let a_from = a.checks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.checks(), b_after, "the removed server is checked no more");
    // One checker on a, not the old one beside the new: at most one check
    // per 90ms (the interval less its jitter), whatever the machine's speed.
    let a_in_a_second = a.checks() - a_from;
    assert!(
        (1..=12).contains(&a_in_a_second),
        "{a_in_a_second} checks of a in 1s"
    );
}

async fn readyz(proxy: &TestProxy) -> (StatusCode, serde_json::Value) {
    let (status, body) = admin_get(proxy, "/readyz").await;
    (status, serde_json::from_str(&body).expect("readyz json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_shows_every_server_and_fails_only_while_a_required_upstream_has_none_up() {
    let a = Checked::start("a").await;
    let b = Checked::start("b").await;
    let c = Checked::start("c").await;
    let health = "{ fails: 1, backoff: 300s, path: /healthz, interval: 100ms }";
    let yaml = format!(
        "upstreams:\n  legacy:\n    servers: [\"{}\", \"{}\"]\n    health: {health}\n    readiness: require\n  \
         other:\n    url: \"{}\"\n    health: {health}\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: legacy\n",
        a.url(),
        b.url(),
        c.url()
    );
    let proxy = TestProxy::start(&yaml).await;
    wait_until("the first checks", || {
        a.checks() >= 1 && b.checks() >= 1 && c.checks() >= 1
    })
    .await;
    let (status, r) = readyz(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let legacy = &r["checks"]["upstreams"]["legacy"];
    assert_eq!(legacy["status"], "ok", "{r}");
    assert_eq!(legacy["readiness"], "require", "{r}");
    let first = &legacy["servers"][0];
    assert_eq!(first["server"], a.url().as_str(), "{r}");
    assert_eq!(first["status"], "up", "{r}");
    assert_eq!(first["last_check"]["ok"], true, "{r}");
    assert_eq!(first["last_check"]["result"], "200", "{r}");

    // An upstream that only reports: down, and still ready.
    c.set(ALL_FAIL);
    server_up_is_in(&proxy, "other", &c.url(), 0.0).await;
    let (status, r) = readyz(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["checks"]["upstreams"]["other"]["status"], "down", "{r}");

    // One server of the required upstream down: degraded, still ready.
    b.set(ALL_FAIL);
    server_up_is(&proxy, &b.url(), 0.0).await;
    let (status, r) = readyz(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let legacy = &r["checks"]["upstreams"]["legacy"];
    assert_eq!(legacy["status"], "degraded", "{r}");
    assert_eq!(legacy["servers_up"], 1, "{r}");
    let second = &legacy["servers"][1];
    assert_eq!(second["status"], "backoff", "{r}");
    assert_eq!(second["last_check"]["ok"], false, "{r}");
    assert_eq!(second["last_check"]["result"], "503", "{r}");
    assert!(
        second["backoff_left_secs"].as_f64().unwrap_or(0.0) > 0.0,
        "{r}"
    );

    // None up: not ready; and ready again once one answers.
    a.set(ALL_FAIL);
    server_up_is(&proxy, &a.url(), 0.0).await;
    let (status, r) = readyz(&proxy).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{r}");
    assert_eq!(r["checks"]["upstreams"]["legacy"]["status"], "down", "{r}");
    a.set(HEALTH_OK);
    server_up_is(&proxy, &a.url(), 1.0).await;
    let (status, r) = readyz(&proxy).await;
    assert_eq!(status, StatusCode::OK, "{r}");
}

/// Waits until `fieldseal_upstream_server_up` of `server` in `upstream` is `want`.
async fn server_up_is_in(proxy: &TestProxy, upstream: &str, server: &str, want: f64) {
    let labels = [("upstream", upstream), ("server", server)];
    bounded("the server's state to change", async {
        loop {
            let (_, m) = admin_get(proxy, "/metrics").await;
            if metric_value(&m, "fieldseal_upstream_server_up", &labels) == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_reload_keeps_the_health_of_the_servers_that_stay() {
    let dead = format!("http://{}", dead_address());
    let good = Backend::start("good", Behavior::echo()).await;
    let more = Backend::start("more", Behavior::echo()).await;
    let health = "    health: { fails: 1, backoff: 300s }\n";
    let proxy = TestProxy::start(&upstream_yaml(&[dead.clone(), good.url()], health)).await;
    let client = proxy.h1();
    for _ in 0..2 {
        let r = client.get(proxy.url("/x")).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK);
    }
    server_up_is(&proxy, &dead, 0.0).await;
    let retries = |m: &str| {
        metric_value(
            m,
            "fieldseal_upstream_retries_total",
            &[("upstream", "legacy")],
        )
    };
    let (_, m) = admin_get(&proxy, "/metrics").await;
    let before = retries(&m);
    assert_eq!(before, Some(1.0), "the dead server was tried once: {m}");

    // A reload that adds a server: the dead one stays in its back-off.
    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    let changed = text.replace(
        &format!("\"{}\"]", good.url()),
        &format!("\"{}\", \"{}\"]", good.url(), more.url()),
    );
    assert_ne!(text, changed);
    let tmp = proxy.config_path.with_extension("new");
    std::fs::write(&tmp, changed).expect("write");
    std::fs::rename(&tmp, &proxy.config_path).expect("rename");
    proxy.proxy.reload().await.expect("reload");

    let (_, r) = readyz(&proxy).await;
    let servers = &r["checks"]["upstreams"]["legacy"]["servers"];
    assert_eq!(servers[0]["server"], dead.as_str(), "{r}");
    assert_eq!(servers[0]["status"], "backoff", "{r}");
    assert_eq!(servers[2]["status"], "up", "{r}");
    for _ in 0..6 {
        let r = client.get(proxy.url("/x")).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let (_, m) = admin_get(&proxy, "/metrics").await;
    assert_eq!(retries(&m), before, "no request tried the dead server: {m}");
    assert_eq!(
        metric_value(
            &m,
            "fieldseal_upstream_server_up",
            &[("upstream", "legacy"), ("server", dead.as_str())]
        ),
        Some(0.0),
        "{m}"
    );
    assert!(more.count() >= 1, "the new server takes traffic");
}
