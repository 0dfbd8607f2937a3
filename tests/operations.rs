//! Operations, end to end: hot reload under traffic and with broken configs,
//! key rotation by reload, exact Prometheus metrics after known traffic, the
//! audit log written by the proxy, and `/readyz`.
//!
//! The offline CLI side of rotation (`rewrap`, `keys --scan`) is in
//! `tests/rewrap_cli.rs`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Key files `k1`, `k2`, `k3` (32 random bytes, mode 0600) in their own folder.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        for id in ["k1", "k2", "k3"] {
            fieldseal::crypto::write_key_file(&dir.path().join(format!("{id}.key")))
                .expect("write key file");
        }
        Keys { dir }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.key"))
    }

    /// A `keys:` section with `ids` in the ring and `active` active.
    fn yaml(&self, active: &str, ids: &[&str]) -> String {
        let mut s = format!("keys:\n  active: {active}\n  ring:\n");
        for id in ids {
            s.push_str(&format!(
                "    - {{ id: {id}, file: \"{}\" }}\n",
                self.path(id).display()
            ));
        }
        s
    }
}

/// Rewrites the proxy's config file with the same listener lines the harness
/// wrote at start and a new `rest`. Written to a temporary name and renamed,
/// so a reload never reads half a file.
fn rewrite_config(p: &TestProxy, rest: &str) {
    let mut yaml = format!(
        "listen: {{ address: \"{}\", tls: {{ cert: server.crt, key: server.key }} }}\n\
         admin: {{ address: \"{}\" }}\n",
        p.https, p.admin
    );
    if let Some(r) = p.redirect {
        yaml.push_str(&format!("redirect_http: {{ address: \"{r}\" }}\n"));
    }
    yaml.push_str(&test_runtime(rest));
    yaml.push_str(rest);
    let tmp = p.config_path.with_extension("yaml.tmp");
    std::fs::write(&tmp, &yaml).expect("write config");
    std::fs::rename(&tmp, &p.config_path).expect("replace config");
}

fn admin_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .expect("admin client")
}

/// A reqwest answer read completely.
struct Answer {
    status: StatusCode,
    version: Version,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, n: &str) -> Option<&str> {
        self.headers.get(n).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn try_send(rb: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
    let resp = bounded("request", rb.send()).await?;
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = bounded("body", resp.bytes()).await?;
    Ok(Answer {
        status,
        version,
        headers,
        body,
    })
}

async fn send(rb: reqwest::RequestBuilder) -> Answer {
    try_send(rb).await.expect("request")
}

fn post_json(c: &reqwest::Client, url: &str, v: &Value) -> reqwest::RequestBuilder {
    c.post(url)
        .header("content-type", "application/json")
        .body(v.to_string())
}

async fn admin_get(p: &TestProxy, path: &str) -> Answer {
    send(admin_client().get(p.admin_url(path))).await
}

async fn admin_reload(p: &TestProxy) -> Answer {
    send(admin_client().post(p.admin_url("/reload"))).await
}

async fn scrape(p: &TestProxy) -> Scrape {
    let a = admin_get(p, "/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    Scrape::parse(&a.text())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

// --- A tiny Prometheus / OpenMetrics text parser ----------------------------

type Labels = BTreeMap<String, String>;

/// One scrape: every sample by name and exact label set, and `# TYPE`s.
#[derive(Debug, Default)]
struct Scrape {
    samples: HashMap<String, Vec<(Labels, f64)>>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() || line == "# EOF" {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                    panic!("bad TYPE line {line:?}");
                };
                s.types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, rest) = parse_series(line);
            let value = rest
                .split_whitespace()
                .next()
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
            };
            let series = s.samples.entry(name).or_default();
            assert!(
                !series.iter().any(|(l, _)| *l == labels),
                "duplicate series {line:?}"
            );
            series.push((labels, value));
        }
        s
    }

    /// The value of `name` with exactly `labels` (no more, no fewer).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .get(name)?
            .iter()
            .find(|(l, _)| *l == want)
            .map(|(_, v)| *v)
    }

    /// Like `get`, panicking with the series that do exist.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name}{labels:?}; series of that name: {:?}",
                self.samples.get(name)
            )
        })
    }

    fn series(&self, name: &str) -> Vec<(Labels, f64)> {
        self.samples.get(name).cloned().unwrap_or_default()
    }

    /// Series with a value other than 0. Per-route counters exist at 0 from
    /// the moment a config loads (so `rate()` works from the start); only the
    /// ones that moved are traffic.
    fn nonzero(&self, name: &str) -> Vec<(Labels, f64)> {
        self.series(name)
            .into_iter()
            .filter(|(_, v)| *v != 0.0)
            .collect()
    }
}

/// `name{a="x",b="y"} rest` → (name, labels, rest).
fn parse_series(line: &str) -> (String, Labels, &str) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = line[..name_end].to_string();
    let mut labels = Labels::new();
    if !line[name_end..].starts_with('{') {
        return (name, labels, &line[name_end..]);
    }
    let mut chars = line[name_end + 1..].char_indices().peekable();
    let base = name_end + 1;
    loop {
        // label name up to '=' (or the closing brace of an empty/ended set)
        let mut key = String::new();
        loop {
            match chars.next() {
                Some((i, '}')) if key.is_empty() => return (name, labels, &line[base + i + 1..]),
                Some((_, '=')) => break,
                Some((_, c)) => key.push(c),
                None => panic!("unterminated labels in {line:?}"),
            }
        }
        assert!(
            matches!(chars.next(), Some((_, '"'))),
            "label value not quoted in {line:?}"
        );
        let mut val = String::new();
        loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, c)) => val.push(c),
                    None => panic!("bad escape in {line:?}"),
                },
                Some((_, '"')) => break,
                Some((_, c)) => val.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        assert!(
            labels.insert(key.clone(), val).is_none(),
            "label {key} twice in {line:?}"
        );
        match chars.next() {
            Some((_, ',')) => continue,
            Some((i, '}')) => return (name, labels, &line[base + i + 1..]),
            other => panic!("unexpected {other:?} after a label in {line:?}"),
        }
    }
}

#[test]
fn prometheus_parser_reads_names_labels_and_values() {
    let s = Scrape::parse(
        "# HELP x_total A counter.\n# TYPE x counter\nx_total{route=\"a\\\"b\",status=\"200\"} 7\n\
         x_total{route=\"\",status=\"404\"} 3\n# TYPE g gauge\ng 0\nh_count{route=\"r\"} 2\n\
         h_bucket{le=\"+Inf\",route=\"r\"} 2\nt 1.5e9\n# EOF\n",
    );
    assert_eq!(
        s.get("x_total", &[("route", "a\"b"), ("status", "200")]),
        Some(7.0)
    );
    assert_eq!(
        s.get("x_total", &[("status", "404"), ("route", "")]),
        Some(3.0)
    );
    assert_eq!(s.get("x_total", &[("route", "")]), None, "exact label set");
    assert_eq!(s.get("g", &[]), Some(0.0));
    assert_eq!(s.types.get("g").map(String::as_str), Some("gauge"));
    assert_eq!(s.get("h_count", &[("route", "r")]), Some(2.0));
    assert_eq!(s.get("t", &[]), Some(1.5e9));
}

// --- A small JSON store backend ---------------------------------------------

/// One request as the store received it.
#[derive(Debug, Clone)]
struct Stored {
    method: Method,
    path: String,
    body: Bytes,
}

/// An HTTP/1.1 backend that keeps what it is sent: POST/PUT stores the body
/// verbatim under the path and answers `{"stored": path}`; GET returns what
/// is stored there (or 404). Optionally sleeps before answering.
struct Store {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Stored>>>,
    accept: JoinHandle<()>,
}

impl Store {
    async fn start(delay: Option<Duration>) -> Store {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind store");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Stored>>> = Arc::default();
        let data: Arc<Mutex<HashMap<String, Bytes>>> = Arc::default();
        let accept = {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let seen = Arc::clone(&seen);
                    let data = Arc::clone(&data);
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let seen = Arc::clone(&seen);
                            let data = Arc::clone(&data);
                            async move {
                                Ok::<_, Infallible>(store_answer(&seen, &data, delay, req).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            })
        };
        Store { addr, seen, accept }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Stored> {
        self.seen.lock().expect("store lock").clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("store lock").len()
    }

    async fn wait_for(&self, n: usize) {
        bounded("store to receive a request", async {
            while self.count() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// The last body stored under `path`, as JSON.
    fn stored(&self, path: &str) -> Value {
        let s = self
            .seen()
            .into_iter()
            .rev()
            .find(|s| s.path == path && s.method != Method::GET)
            .unwrap_or_else(|| panic!("nothing stored at {path}"));
        serde_json::from_slice(&s.body).expect("stored JSON")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn store_answer(
    seen: &Mutex<Vec<Stored>>,
    data: &Mutex<HashMap<String, Bytes>>,
    delay: Option<Duration>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    seen.lock().expect("store lock").push(Stored {
        method: parts.method.clone(),
        path: path.clone(),
        body: body.clone(),
    });
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let (status, out) = match parts.method {
        Method::POST | Method::PUT => {
            data.lock().expect("store lock").insert(path.clone(), body);
            (
                StatusCode::OK,
                Bytes::from(json!({ "stored": path }).to_string()),
            )
        }
        _ => match data.lock().expect("store lock").get(&path) {
            Some(b) => (StatusCode::OK, b.clone()),
            None => (
                StatusCode::NOT_FOUND,
                Bytes::from(json!({ "error": "not stored" }).to_string()),
            ),
        },
    };
    let mut resp = Response::new(Full::new(out));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

// --- The real binary, every wait bounded ------------------------------------

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------
// 1. Reload under steady traffic
// ---------------------------------------------------------------------------

fn steady_config(backend: &Backend, keys: &Keys, csp: &str, with_new_route: bool) -> String {
    let mut s = format!(
        "upstreams:\n  legacy: {{ url: \"{}\", connect_timeout: 2s, timeout: 20s }}\n\
         headers: {{ csp: \"{csp}\" }}\n{}\
         routes:\n  - name: users\n    match: {{ path_prefix: /api/users }}\n    upstream: legacy\n    \
         encrypt: [\"$.ssn\"]\n",
        backend.url(),
        keys.yaml("k1", &["k1"]),
    );
    if with_new_route {
        s.push_str("  - name: new\n    match: { path_prefix: /api/new }\n    upstream: legacy\n");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_steady_traffic_loses_no_request() {
    let keys = Keys::new();
    let backend = Backend::start("a", Behavior::echo()).await;
    let proxy = TestProxy::start(&steady_config(&backend, &keys, "csp-0", false)).await;

    // Before: /api/new is no route.
    let before = send(proxy.h1().get(proxy.url("/api/new/1"))).await;
    assert_eq!(before.status, StatusCode::NOT_FOUND, "{}", before.text());
    assert_eq!(backend.count(), 0);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (client, want) = if t % 2 == 0 {
            (proxy.h1(), Version::HTTP_11)
        } else {
            (proxy.h2(), Version::HTTP_2)
        };
        let url = proxy.url(&format!("/api/users/{t}"));
        let (stop, ok, failures) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
        tasks.push(tokio::spawn(async move {
            let mut mine = 0usize;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let ssn = format!("ssn-{t}-{n}");
                match try_send(post_json(&client, &url, &json!({ "ssn": ssn, "n": n }))).await {
                    Ok(a)
                        if a.status == StatusCode::OK
                            && a.version == want
                            && a.json()["backend"] == "a"
                            && !a.json()["body"].as_str().unwrap_or("").contains(&ssn) =>
                    {
                        mine += 1;
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(a) => failures.lock().unwrap().push(format!(
                        "task {t} request {n}: {} {:?} {}",
                        a.status,
                        a.version,
                        a.text()
                    )),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("task {t} request {n}: {e}")),
                }
            }
            mine
        }));
    }

    // Waits (bounded) until the clients have made `more` successful requests.
    let progress = |more: usize| {
        let ok = Arc::clone(&ok);
        async move {
            let target = ok.load(Ordering::SeqCst) + more;
            bounded("client traffic to progress", async {
                while ok.load(Ordering::SeqCst) < target {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
        }
    };

    progress(20).await;
    // Four reloads over the admin listener, one through the library; the
    // first only changes a header, the rest also add the new route.
    for i in 1..=5 {
        rewrite_config(
            &proxy,
            &steady_config(&backend, &keys, &format!("csp-{i}"), i >= 2),
        );
        if i == 3 {
            let summary = bounded("proxy.reload()", proxy.proxy.reload())
                .await
                .expect("library reload");
            assert!(!summary.is_empty());
        } else {
            let r = admin_reload(&proxy).await;
            assert_eq!(r.status, StatusCode::OK, "reload {i}: {}", r.text());
            assert_eq!(r.json()["status"], "reloaded");
        }
        progress(10).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut per_task = Vec::new();
    for t in tasks {
        per_task.push(bounded("client task", t).await.expect("client task"));
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests during reloads: {failures:#?}",
        failures.len()
    );
    let total: usize = per_task.iter().sum();
    assert_eq!(total, ok.load(Ordering::SeqCst));
    assert!(
        per_task.iter().all(|&n| n > 0),
        "every client made progress: {per_task:?}"
    );
    // Every success reached the backend, and never with a plaintext SSN.
    assert_eq!(backend.count(), total, "backend saw every request once");
    for r in backend.seen() {
        let doc: Value = serde_json::from_slice(&r.body).expect("JSON at the backend");
        let ssn = doc["ssn"].as_str().expect("ssn");
        assert!(ssn.starts_with("fs1:k1:"), "sealed at the backend: {ssn}");
    }

    // After: the new route is in force, with the new header value.
    for (c, v) in proxy.clients() {
        let a = send(c.get(proxy.url("/api/new/7"))).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.version, v);
        assert_eq!(a.json()["path"], "/api/new/7");
        assert_eq!(a.header("content-security-policy"), Some("csp-5"));
        let a = send(post_json(
            &c,
            &proxy.url("/api/users/x"),
            &json!({"ssn": "s"}),
        ))
        .await;
        assert_eq!(a.header("content-security-policy"), Some("csp-5"));
    }
    assert_eq!(backend.seen().last().unwrap().path(), "/api/users/x");
    let m = scrape(&proxy).await;
    assert_eq!(
        m.value("fieldseal_reloads_total", &[("outcome", "success")]),
        5.0
    );
    assert_eq!(
        m.get("fieldseal_reloads_total", &[("outcome", "failure")]),
        None
    );
    assert_eq!(m.value("fieldseal_last_reload_success", &[]), 1.0);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Broken configs on reload
// ---------------------------------------------------------------------------

fn users_config(upstream: &str, keys_yaml: &str) -> String {
    format!(
        "upstreams:\n  legacy: {{ url: \"{upstream}\", connect_timeout: 2s, timeout: 20s }}\n{keys_yaml}\
         routes:\n  - name: users\n    match: {{ path_prefix: /api/users }}\n    upstream: legacy\n    \
         encrypt: [\"$.ssn\"]\n"
    )
}

/// Asserts the old config still serves: /api/users works, /api/other doesn't exist.
async fn assert_old_config_serves(proxy: &TestProxy, backend: &Backend) {
    let n = backend.count();
    for (c, v) in proxy.clients() {
        let a = send(post_json(
            &c,
            &proxy.url("/api/users/1"),
            &json!({"ssn": "x"}),
        ))
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.version, v);
        let a = send(c.get(proxy.url("/api/other"))).await;
        assert_eq!(
            a.status,
            StatusCode::NOT_FOUND,
            "the refused route is not in force"
        );
    }
    assert_eq!(backend.count(), n + 2);
}

/// Asserts `GET /reload`, `/readyz` and the metrics all report the failed
/// reload, made between `t0` and now, with `needle` in its message; and
/// `failures` failed reloads so far.
async fn assert_failed_reload_reported(proxy: &TestProxy, t0: u64, needle: &str, failures: f64) {
    let now = fieldseal::crypto::unix_now();
    let g = admin_get(proxy, "/reload").await;
    assert_eq!(g.status, StatusCode::OK);
    let last = &g.json()["last_reload"];
    assert_eq!(last["ok"], false, "{last}");
    let time = last["time"].as_u64().expect("time");
    assert!(
        (t0..=now).contains(&time),
        "reload time {time} in {t0}..={now}"
    );
    assert!(
        last["message"].as_str().unwrap().contains(needle),
        "GET /reload names {needle:?}: {last}"
    );
    let r = admin_get(proxy, "/readyz").await;
    let ready = r.json();
    assert_eq!(ready["checks"]["last_reload"], *last, "/readyz: {ready}");
    let m = scrape(proxy).await;
    assert_eq!(
        m.value("fieldseal_reloads_total", &[("outcome", "failure")]),
        failures
    );
    assert_eq!(m.value("fieldseal_last_reload_success", &[]), 0.0);
    assert_eq!(
        m.value("fieldseal_last_reload_timestamp_seconds", &[]),
        time as f64
    );
}

#[tokio::test]
async fn broken_config_on_reload_is_refused_and_the_old_one_keeps_serving() {
    let keys = Keys::new();
    let backend = Backend::start("a", Behavior::echo()).await;
    let good = users_config(&backend.url(), &keys.yaml("k1", &["k1"]));
    let proxy = TestProxy::start(&good).await;
    assert_eq!(
        admin_get(&proxy, "/reload").await.json()["last_reload"],
        Value::Null
    );
    let t0 = fieldseal::crypto::unix_now();

    // (a) An unknown key (a typo) with a new route that must not come into force.
    let typo = format!(
        "{}  - name: other\n    match: {{ path_prefix: /api/other }}\n    upstream: legacy\n    \
         conect_timeout: 1s\n",
        good
    );
    rewrite_config(&proxy, &typo);
    let r = admin_reload(&proxy).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["status"], "refused");
    let err = body["error"].as_str().expect("error message");
    assert!(
        err.contains("conect_timeout"),
        "names the unknown key: {err}"
    );
    assert_old_config_serves(&proxy, &backend).await;
    assert_failed_reload_reported(&proxy, t0, "conect_timeout", 1.0).await;
    let m = scrape(&proxy).await;
    assert_eq!(
        m.get("fieldseal_reloads_total", &[("outcome", "success")]),
        None
    );

    // (b) A key file that does not exist.
    let missing = keys.dir.path().join("k9.key");
    let bad_keys = users_config(
        &backend.url(),
        &format!(
            "keys:\n  active: k9\n  ring:\n    - {{ id: k9, file: \"{}\" }}\n",
            missing.display()
        ),
    );
    rewrite_config(
        &proxy,
        &format!("{bad_keys}  - name: other\n    match: {{ path_prefix: /api/other }}\n    upstream: legacy\n"),
    );
    let r = admin_reload(&proxy).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains("k9"), "names the key file or id: {err}");
    assert_old_config_serves(&proxy, &backend).await;
    assert_failed_reload_reported(&proxy, t0, "k9", 2.0).await;

    // (c) A certificate path that does not exist.
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    rewrite_config(&proxy, &good);
    let bad_cert = std::fs::read_to_string(&proxy.config_path)
        .unwrap()
        .replace("cert: server.crt", "cert: missing.crt");
    assert_ne!(text, bad_cert);
    std::fs::write(&proxy.config_path, &bad_cert).unwrap();
    let r = admin_reload(&proxy).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains("missing.crt"), "names the certificate: {err}");
    assert_old_config_serves(&proxy, &backend).await;
    assert_failed_reload_reported(&proxy, t0, "missing.crt", 3.0).await;

    // (d) A listener address change needs a restart.
    let moved = std::fs::read_to_string(&proxy.config_path)
        .unwrap()
        .replace("cert: missing.crt", "cert: server.crt")
        .replace(&proxy.https.to_string(), "127.0.0.1:1");
    std::fs::write(&proxy.config_path, &moved).unwrap();
    let r = admin_reload(&proxy).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("listen.address"));
    assert_failed_reload_reported(&proxy, t0, "listen.address", 4.0).await;

    // Fixed: the next reload succeeds and everything reports it.
    rewrite_config(
        &proxy,
        &format!("{good}  - name: other\n    match: {{ path_prefix: /api/other }}\n    upstream: legacy\n"),
    );
    let r = admin_reload(&proxy).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let last = admin_get(&proxy, "/reload").await.json()["last_reload"].clone();
    assert_eq!(last["ok"], true, "{last}");
    let m = scrape(&proxy).await;
    assert_eq!(
        m.value("fieldseal_reloads_total", &[("outcome", "success")]),
        1.0
    );
    assert_eq!(
        m.value("fieldseal_reloads_total", &[("outcome", "failure")]),
        4.0
    );
    assert_eq!(m.value("fieldseal_last_reload_success", &[]), 1.0);
    let a = send(proxy.h1().get(proxy.url("/api/other"))).await;
    assert_eq!(a.status, StatusCode::OK, "the new route is in force now");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Key rotation by reload
// ---------------------------------------------------------------------------

fn rotation_config(store: &Store, keys_yaml: &str) -> String {
    format!(
        "upstreams:\n  store: {{ url: \"{}\", connect_timeout: 2s, timeout: 20s }}\n{keys_yaml}\
         routes:\n  - name: users\n    match: {{ path_prefix: /api/users }}\n    upstream: store\n    \
         encrypt: [\"$.ssn\", \"$.card.number\"]\n    decrypt: [\"$.ssn\", \"$.card.number\"]\n",
        store.url()
    )
}

fn user(n: u32) -> Value {
    json!({ "name": format!("user {n}"), "ssn": format!("123-45-{n:04}"), "card": { "number": format!("4111 1111 1111 {n:04}"), "exp": "12/30" } })
}

#[tokio::test]
async fn rotation_by_reload_keeps_old_values_readable_and_seals_new_ones_under_the_new_key() {
    let keys = Keys::new();
    let store = Store::start(None).await;
    let proxy = TestProxy::start(&rotation_config(&store, &keys.yaml("k1", &["k1"]))).await;
    let c = proxy.h2();

    for n in 1..=2 {
        let a = send(post_json(
            &c,
            &proxy.url(&format!("/api/users/{n}")),
            &user(n),
        ))
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        let stored = store.stored(&format!("/api/users/{n}"));
        assert!(
            stored["ssn"].as_str().unwrap().starts_with("fs1:k1:"),
            "{stored}"
        );
        assert!(stored["card"]["number"]
            .as_str()
            .unwrap()
            .starts_with("fs1:k1:"));
    }

    // Step 1: k2 joins the ring, k1 stays active.
    rewrite_config(
        &proxy,
        &rotation_config(&store, &keys.yaml("k1", &["k1", "k2"])),
    );
    let r = admin_reload(&proxy).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Step 2: k2 becomes active.
    rewrite_config(
        &proxy,
        &rotation_config(&store, &keys.yaml("k2", &["k1", "k2"])),
    );
    let r = admin_reload(&proxy).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let ready = admin_get(&proxy, "/readyz").await.json();
    assert_eq!(ready["checks"]["keys"]["active"], "k2", "{ready}");

    // Values stored under k1 still read back in plaintext.
    for n in 1..=2 {
        let a = send(c.get(proxy.url(&format!("/api/users/{n}")))).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(a.json(), user(n));
    }
    // New values are sealed under k2, and read back too.
    for n in 3..=5 {
        let a = send(post_json(
            &c,
            &proxy.url(&format!("/api/users/{n}")),
            &user(n),
        ))
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        let stored = store.stored(&format!("/api/users/{n}"));
        for v in [&stored["ssn"], &stored["card"]["number"]] {
            assert!(v.as_str().unwrap().starts_with("fs1:k2:"), "{stored}");
        }
        assert_eq!(stored["card"]["exp"], "12/30");
        let a = send(c.get(proxy.url(&format!("/api/users/{n}")))).await;
        assert_eq!(a.json(), user(n));
    }
    let m = scrape(&proxy).await;
    assert_eq!(
        m.value("fieldseal_encryptions_total", &[("key_id", "k1")]),
        4.0
    );
    assert_eq!(
        m.value("fieldseal_encryptions_total", &[("key_id", "k2")]),
        6.0
    );
    assert_eq!(
        m.value("fieldseal_fields_encrypted_total", &[("route", "users")]),
        10.0
    );
    assert_eq!(
        m.value("fieldseal_fields_decrypted_total", &[("route", "users")]),
        10.0
    );
    assert_eq!(
        m.value("fieldseal_reloads_total", &[("outcome", "success")]),
        2.0
    );

    // Dropping k1 before rewrapping: the old values can no longer be read,
    // and the proxy refuses rather than hand out an envelope.
    rewrite_config(&proxy, &rotation_config(&store, &keys.yaml("k2", &["k2"])));
    assert_eq!(admin_reload(&proxy).await.status, StatusCode::OK);
    let a = send(c.get(proxy.url("/api/users/1"))).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    assert!(!a.text().contains("fs1:"), "no envelope in the refusal");
    let a = send(c.get(proxy.url("/api/users/3"))).await;
    assert_eq!(a.json(), user(3));
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Metrics move by exactly the traffic sent
// ---------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_exactly_the_traffic_sent() {
    let keys = Keys::new();
    let backend = Backend::start("a", Behavior::echo()).await;
    let dead = dead_address();
    let yaml = format!(
        "upstreams:\n  legacy: {{ url: \"{}\", connect_timeout: 2s, timeout: 20s }}\n  \
         gone: {{ url: \"http://{dead}\", connect_timeout: 2s, timeout: 5s }}\n{}\
         routes:\n  - name: enc\n    match: {{ path_prefix: /api/enc }}\n    upstream: legacy\n    \
         encrypt: [\"$.a\", \"$.b\"]\n  \
         - name: limited\n    match: {{ path_prefix: /limited }}\n    upstream: legacy\n    \
         rate_limit: {{ requests_per_second: 1, burst: 1 }}\n  \
         - name: dead\n    match: {{ path_prefix: /dead }}\n    upstream: gone\n",
        backend.url(),
        keys.yaml("k1", &["k1"]),
    );
    let proxy = TestProxy::start(&yaml).await;
    let before = scrape(&proxy).await;
    assert!(before.series("fieldseal_requests_total").is_empty());

    let clients = proxy.clients();
    // 7 successful encrypting requests with 2 fields each, over h1 and h2.
    for i in 0..7 {
        let (c, _) = &clients[i % 2];
        let a = send(post_json(
            c,
            &proxy.url("/api/enc"),
            &json!({"a": "x", "b": i, "c": "plain"}),
        ))
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    }
    // 3 to no route.
    for i in 0..3 {
        let (c, _) = &clients[i % 2];
        let a = send(c.get(proxy.url("/nowhere"))).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    }
    // Until exactly 2 are rate limited (a slow machine may see a token refill).
    let (mut limited_ok, mut limited_429) = (0, 0);
    bounded("two rate-limited requests", async {
        while limited_429 < 2 {
            let a = send(clients[0].0.get(proxy.url("/limited"))).await;
            match a.status {
                StatusCode::OK => limited_ok += 1,
                StatusCode::TOO_MANY_REQUESTS => limited_429 += 1,
                s => panic!("unexpected {s} from /limited"),
            }
        }
    })
    .await;
    assert!(limited_ok >= 1, "the burst admits the first request");
    // 1 to a dead upstream.
    let a = send(clients[1].0.get(proxy.url("/dead"))).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);

    let m = scrape(&proxy).await;
    let ok_limited = f64::from(limited_ok);
    // Exactly these request series, with exactly these counts.
    let mut requests: Vec<(String, String, f64)> = m
        .series("fieldseal_requests_total")
        .into_iter()
        .map(|(l, v)| (l["route"].clone(), l["status"].clone(), v))
        .collect();
    requests.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert_eq!(
        requests,
        vec![
            ("".into(), "404".into(), 3.0),
            ("dead".into(), "502".into(), 1.0),
            ("enc".into(), "200".into(), 7.0),
            ("limited".into(), "200".into(), ok_limited),
            ("limited".into(), "429".into(), 2.0),
        ]
    );
    assert_eq!(
        m.value("fieldseal_fields_encrypted_total", &[("route", "enc")]),
        14.0
    );
    assert_eq!(m.nonzero("fieldseal_fields_encrypted_total").len(), 1);
    assert_eq!(
        m.value("fieldseal_encryptions_total", &[("key_id", "k1")]),
        14.0
    );
    assert_eq!(m.series("fieldseal_encryptions_total").len(), 1);
    assert_eq!(
        m.value("fieldseal_rate_limited_total", &[("route", "limited")]),
        2.0
    );
    assert_eq!(m.nonzero("fieldseal_rate_limited_total").len(), 1);
    assert_eq!(
        m.value(
            "fieldseal_upstream_errors_total",
            &[("upstream", "gone"), ("kind", "connect")]
        ),
        1.0
    );
    assert_eq!(m.series("fieldseal_upstream_errors_total").len(), 1);
    assert!(m.nonzero("fieldseal_fields_decrypted_total").is_empty());
    assert!(m.series("fieldseal_decrypt_failures_total").is_empty());

    // Histograms: one observation per request, per route.
    for (route, n) in [
        ("enc", 7.0),
        ("", 3.0),
        ("limited", ok_limited + 2.0),
        ("dead", 1.0),
    ] {
        assert_eq!(
            m.value(
                "fieldseal_request_duration_seconds_count",
                &[("route", route)]
            ),
            n,
            "request_duration count for route {route:?}"
        );
        let inf = m.value(
            "fieldseal_request_duration_seconds_bucket",
            &[("route", route), ("le", "+Inf")],
        );
        assert_eq!(inf, n, "+Inf bucket holds every observation");
    }
    assert_eq!(
        m.types
            .get("fieldseal_request_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    // Upstream time: every request that was sent upstream (the dead one too).
    assert_eq!(
        m.value(
            "fieldseal_upstream_duration_seconds_count",
            &[("upstream", "legacy")]
        ),
        7.0 + ok_limited
    );
    assert_eq!(
        m.value(
            "fieldseal_upstream_duration_seconds_count",
            &[("upstream", "gone")]
        ),
        1.0
    );
    assert_eq!(backend.count() as f64, 7.0 + ok_limited);

    // The connection gauge is a gauge, and falls back to 0 once clients leave.
    assert_eq!(
        m.types
            .get("fieldseal_open_connections")
            .map(String::as_str),
        Some("gauge")
    );
    assert!(m.value("fieldseal_open_connections", &[]) >= 1.0);
    drop(clients);
    bounded("open connections to drop to 0", async {
        loop {
            if scrape(&proxy)
                .await
                .value("fieldseal_open_connections", &[])
                == 0.0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let m = scrape(&proxy).await;
    assert_eq!(m.value("fieldseal_tls_handshake_failures_total", &[]), 0.0);
    assert_eq!(m.value("fieldseal_audit_write_failures_total", &[]), 0.0);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// 6. The audit log, written by the proxy
// ---------------------------------------------------------------------------

fn audit_config(store: &Store, keys: &Keys, sink: &Path, key: &str, on_failure: &str) -> String {
    format!(
        "upstreams:\n  store: {{ url: \"{}\", connect_timeout: 2s, timeout: 20s }}\n{}\
         audit: {{ sink: \"{}\", key: {key}, on_failure: {on_failure} }}\n\
         routes:\n  - name: users\n    match: {{ path_prefix: /api/users }}\n    upstream: store\n    \
         encrypt: [\"$.ssn\", \"$.card.number\"]\n    decrypt: [\"$.ssn\", \"$.card.number\"]\n  \
         - name: plain\n    match: {{ path_prefix: /plain }}\n    upstream: store\n",
        store.url(),
        keys.yaml("k1", &["k1", "k2"]),
        sink.display(),
    )
}

fn audit_verify(log: &Path, config: &Path) -> Output {
    run_bin(
        &[
            "audit",
            "verify",
            path_str(log),
            "--config",
            path_str(config),
        ],
        b"",
    )
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// A user agent that tries to look like the start of another audit line.
const UA: &str = "ops-test \",\"outcome\":\"forged\"} {\"audit\":1,";

#[tokio::test]
async fn audit_log_has_one_line_per_transforming_request_and_never_a_value() {
    let keys = Keys::new();
    let store = Store::start(None).await;
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("audit.log");
    let proxy = TestProxy::start(&audit_config(&store, &keys, &log, "k1", "refuse")).await;

    // (request id, method, encrypted, decrypted) of each request that must be logged.
    let mut expected: Vec<(String, &str, u64, u64)> = Vec::new();
    let mut plaintexts = Vec::new();
    for (i, (c, _)) in proxy.clients().iter().enumerate() {
        for n in 0..2u32 {
            let id = i as u32 * 10 + n;
            let u = user(id);
            plaintexts.push(u["ssn"].as_str().unwrap().to_string());
            plaintexts.push(u["card"]["number"].as_str().unwrap().to_string());
            let a = send(
                post_json(c, &proxy.url(&format!("/api/users/{id}")), &u).header("user-agent", UA),
            )
            .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text());
            expected.push((a.header("x-request-id").unwrap().into(), "POST", 2, 0));
            let a = send(c.get(proxy.url(&format!("/api/users/{id}")))).await;
            assert_eq!(a.json(), u);
            expected.push((a.header("x-request-id").unwrap().into(), "GET", 0, 2));
            // Pass-through traffic is never audited, even with a value in it.
            let a = send(post_json(c, &proxy.url("/plain/1"), &u)).await;
            assert_eq!(a.status, StatusCode::OK);
            let a = send(c.get(proxy.url("/plain/1"))).await;
            assert_eq!(a.status, StatusCode::OK);
            // A matching route that transforms nothing (no envelope in the answer).
            let a = send(c.get(proxy.url("/api/users/none"))).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND);
        }
    }

    let bytes = std::fs::read(&log).expect("audit log");
    for p in &plaintexts {
        assert!(!contains(&bytes, p), "audit log holds the value {p:?}");
    }
    let lines = audit_lines(&log);
    assert_eq!(
        lines.len(),
        expected.len(),
        "one line per transforming request"
    );
    let audit_key = file_ring("k1", &[("k1", &keys.path("k1"))])
        .derive_subkey("k1", fieldseal::audit::KEY_PURPOSE)
        .expect("audit key");
    let fingerprint =
        fieldseal::audit::AuditKey::new("k1".into(), audit_key).user_agent_fingerprint(UA);
    assert!(
        fingerprint.starts_with("ua1:") && fingerprint.len() == 20,
        "{fingerprint}"
    );
    assert!(
        !contains(&bytes, "ops-test"),
        "the user agent text is logged"
    );
    for (i, (line, (rid, method, enc, dec))) in lines.iter().zip(&expected).enumerate() {
        assert_eq!(line["seq"], i as u64 + 1);
        assert_eq!(line["kid"], "k1");
        assert_eq!(line["request_id"], rid.as_str(), "line {}: {line}", i + 1);
        assert_eq!(line["route"], "users");
        assert_eq!(line["method"], *method);
        assert_eq!(line["fields"], json!(["$.ssn", "$.card.number"]));
        assert_eq!(line["key_ids"], json!(["k1"]));
        assert_eq!(line["encrypted"], *enc);
        assert_eq!(line["decrypted"], *dec);
        assert_eq!(line["outcome"], "ok");
        // The client's User-Agent is client-supplied text, never logged:
        // its keyed fingerprint under the audit key stands for it.
        let ua = if *method == "POST" {
            json!(fingerprint)
        } else {
            Value::Null
        };
        assert_eq!(line["user_agent"], ua, "user agent fingerprinted");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "client addresses are personal data");
    }

    let out = audit_verify(&log, &proxy.config_path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{} lines", lines.len())));

    // Remove a middle line: verify exits 1 naming it.
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, l)| l)
        .collect();
    let cut = logdir.path().join("cut.log");
    std::fs::write(&cut, kept.join("\n") + "\n").unwrap();
    let out = audit_verify(&cut, &proxy.config_path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("line 4"), "names the line: {stderr}");
    assert!(stderr.to_lowercase().contains("removed"), "{stderr}");
    proxy.stop().await;
}

#[tokio::test]
async fn audit_sink_that_cannot_be_written_refuses_or_serves_as_configured() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("SKIP: no /dev/full here, cannot make an audit write fail deterministically");
        return;
    }
    let keys = Keys::new();
    let store = Store::start(None).await;
    let proxy = TestProxy::start(&audit_config(&store, &keys, full, "k1", "refuse")).await;
    let c = proxy.h1();

    // Refuse: every write fails with ENOSPC, the client gets 503.
    let a = send(post_json(&c, &proxy.url("/api/users/1"), &user(1))).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert_error_json(a.status, a.header("content-type"), &a.body);
    assert!(!a.text().contains("fs1:"));
    // NB: the write happens after the upstream answered, so the backend
    // already has this request (see the report).
    assert_eq!(store.count(), 1);
    let a = send(c.get(proxy.url("/api/users/1"))).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert!(!a
        .text()
        .contains(&user(1)["ssn"].as_str().unwrap().to_string()));
    // Traffic that needs no audit line is unaffected.
    let a = send(c.get(proxy.url("/plain/x"))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "the store's own 404");
    let m = scrape(&proxy).await;
    assert_eq!(m.value("fieldseal_audit_write_failures_total", &[]), 2.0);
    assert_eq!(
        m.value(
            "fieldseal_requests_total",
            &[("route", "users"), ("status", "503")]
        ),
        2.0
    );

    // Serve: the same failure is counted and the request answered.
    rewrite_config(&proxy, &audit_config(&store, &keys, full, "k1", "serve"));
    let r = admin_reload(&proxy).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let a = send(c.get(proxy.url("/api/users/1"))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json(), user(1));
    let m = scrape(&proxy).await;
    assert_eq!(m.value("fieldseal_audit_write_failures_total", &[]), 3.0);
    proxy.stop().await;
}

/// The audit key is rotated by reload while a request is in flight: the
/// request that started on the old config finishes and writes its line, the
/// new config writes its own. The file must stay one verifiable chain.
#[tokio::test]
async fn audit_chain_stays_intact_when_the_audit_key_rotates_with_a_request_in_flight() {
    let keys = Keys::new();
    let slow = Store::start(Some(Duration::from_millis(1500))).await;
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("audit.log");
    let proxy = TestProxy::start(&audit_config(&slow, &keys, &log, "k1", "refuse")).await;
    let c = proxy.h1();

    let a = send(post_json(&c, &proxy.url("/api/users/1"), &user(1))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(audit_lines(&log).len(), 1);

    // A request in flight on the k1 config...
    let in_flight = {
        let c = proxy.h2();
        let url = proxy.url("/api/users/2");
        tokio::spawn(async move { send(post_json(&c, &url, &user(2))).await })
    };
    slow.wait_for(2).await;
    // ...while the audit key rotates to k2.
    rewrite_config(&proxy, &audit_config(&slow, &keys, &log, "k2", "refuse"));
    let r = admin_reload(&proxy).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let late = bounded("in-flight request", in_flight).await.unwrap();
    assert_eq!(late.status, StatusCode::OK, "{}", late.text());
    let a = send(post_json(&c, &proxy.url("/api/users/3"), &user(3))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());

    let lines = audit_lines(&log);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3], "one chain, no fork: {lines:#?}");
    assert_eq!(lines[2]["kid"], "k2");
    let out = audit_verify(&log, &proxy.config_path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// 7. /readyz
// ---------------------------------------------------------------------------

#[tokio::test]
async fn readyz_reports_every_keys_self_test_and_the_last_reload() {
    let keys = Keys::new();
    let backend = Backend::start("a", Behavior::echo()).await;
    let good = users_config(&backend.url(), &keys.yaml("k2", &["k1", "k2", "k3"]));
    let proxy = TestProxy::start(&good).await;

    let check = |r: &Answer, ids: &[&str], active: &str| {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["status"], "ready", "{v}");
        let keys = &v["checks"]["keys"];
        assert_eq!(keys["status"], "ok", "{v}");
        assert_eq!(keys["active"], active);
        let tests = keys["self_test"].as_object().expect("self_test object");
        let mut got: Vec<&str> = tests.keys().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, ids, "a self-test result per key id: {v}");
        for (id, t) in tests {
            assert_eq!(t["status"], "ok", "self-test of {id}: {v}");
        }
        assert_eq!(v["checks"]["config"]["status"], "ok");
        assert_eq!(v["checks"]["config"]["routes"], 1);
        v
    };
    let v = check(
        &admin_get(&proxy, "/readyz").await,
        &["k1", "k2", "k3"],
        "k2",
    );
    assert_eq!(
        v["checks"]["last_reload"],
        Value::Null,
        "no reload yet: {v}"
    );

    // A successful reload to a smaller ring.
    let t0 = fieldseal::crypto::unix_now();
    rewrite_config(
        &proxy,
        &users_config(&backend.url(), &keys.yaml("k3", &["k2", "k3"])),
    );
    assert_eq!(admin_reload(&proxy).await.status, StatusCode::OK);
    let v = check(&admin_get(&proxy, "/readyz").await, &["k2", "k3"], "k3");
    let last = &v["checks"]["last_reload"];
    assert_eq!(last["ok"], true, "{v}");
    let t = last["time"].as_u64().expect("time");
    assert!(t >= t0 && t <= fieldseal::crypto::unix_now());
    assert_eq!(
        *last,
        admin_get(&proxy, "/reload").await.json()["last_reload"]
    );

    // A failed one: the old ring is still tested and the failure is shown.
    rewrite_config(&proxy, "upstreams: {}\nroutes: []\nbogus: 1\n");
    assert_eq!(
        admin_reload(&proxy).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let v = check(&admin_get(&proxy, "/readyz").await, &["k2", "k3"], "k3");
    let last = &v["checks"]["last_reload"];
    assert_eq!(last["ok"], false, "{v}");
    assert!(last["time"].as_u64().unwrap() >= t);
    assert!(last["message"].as_str().unwrap().contains("bogus"), "{v}");

    // Liveness and method checks on the admin listener.
    assert_eq!(admin_get(&proxy, "/healthz").await.json()["status"], "ok");
    let r = send(admin_client().post(proxy.admin_url("/readyz"))).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = send(admin_client().get(proxy.admin_url("/nope"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// Reload and rate limits
// ---------------------------------------------------------------------------

/// A reload must not hand every client a fresh burst: the buckets of
/// unchanged limits carry over. Speed-independent: whatever the machine's
/// pace, a limiter admits at most `burst + rate × elapsed` (+1 for rounding).
#[tokio::test]
async fn reload_does_not_reset_rate_limits() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let yaml = format!(
        "upstreams:\n  legacy: {{ url: \"{}\" }}\n\
         rate_limit: {{ requests_per_second: 1, burst: 4 }}\n\
         routes:\n  - name: own\n    match: {{ path_prefix: /own }}\n    upstream: legacy\n    \
         rate_limit: {{ requests_per_second: 1, burst: 3 }}\n  \
         - name: global\n    match: {{ path_prefix: /global }}\n    upstream: legacy\n",
        backend.url()
    );
    let proxy = TestProxy::start(&yaml).await;
    let c = proxy.h1();
    let start = Instant::now();
    let mut admitted = HashMap::from([("/own", 0u32), ("/global", 0u32)]);
    for round in 0..4 {
        if round > 0 {
            // The same file again, and once with an unrelated change.
            if round == 2 {
                rewrite_config(&proxy, &format!("{yaml}  - name: extra\n    match: {{ path: /extra }}\n    upstream: legacy\n"));
            }
            let r = admin_reload(&proxy).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
        for path in ["/own", "/global"] {
            for _ in 0..5 {
                let a = send(c.get(proxy.url(path))).await;
                match a.status {
                    StatusCode::OK => *admitted.get_mut(path).unwrap() += 1,
                    StatusCode::TOO_MANY_REQUESTS => {}
                    s => panic!("{s} from {path}"),
                }
            }
        }
    }
    let refill = start.elapsed().as_secs_f64().ceil() as u32 + 1;
    assert!(
        admitted["/own"] <= 3 + refill,
        "own bucket reset by reloads: {admitted:?}, {refill}"
    );
    assert!(
        admitted["/global"] <= 4 + refill,
        "global bucket reset by reloads: {admitted:?}, {refill}"
    );

    // A changed limit is a new bucket.
    rewrite_config(&proxy, &yaml.replace("burst: 3", "burst: 2"));
    assert_eq!(admin_reload(&proxy).await.status, StatusCode::OK);
    let a = send(c.get(proxy.url("/own"))).await;
    assert_eq!(a.status, StatusCode::OK, "new settings, new bucket");
    proxy.stop().await;
}
