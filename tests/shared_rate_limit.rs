//! Shared rate limits in a real Redis (Debian's `redis-server`, started here
//! on a free port in a temp dir; `.ci/run` installs it): two proxies sharing
//! a limit admit what one would, not twice as much; Redis stopped or frozen
//! mid-run is answered as `on_store_error` says, with no 500 and no crash;
//! the limit holds again once Redis is back.

mod common;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

const RATE: u64 = 20;
const BURST: u64 = 10;

/// A `redis-server` of our own. Dropping it kills it.
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    child: Option<Child>,
}

fn redis_server_binary() -> PathBuf {
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "redis-server is not installed: these tests need a real Redis \
         (apt-get install redis-server; .ci/run installs it)"
    );
}

fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Redis {
    async fn start(password: Option<&str>) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            password: password.map(str::to_owned),
            child: None,
        };
        r.launch().await;
        r
    }

    fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Starts the server on its port (again, after `kill`) and waits for PING.
    async fn launch(&mut self) {
        let mut cmd = Command::new(redis_server_binary());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        self.child = Some(cmd.spawn().expect("start redis-server"));
        let started = Instant::now();
        loop {
            if self.ping().await {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "redis-server did not answer on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()
    }

    async fn ping(&self) -> bool {
        let Some(mut c) = self.conn().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok()
    }

    /// Redis's own clock, in seconds: the GCRA runs on it.
    async fn time(&self) -> f64 {
        let mut c = self.conn().await.expect("redis connection");
        let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.expect("TIME");
        s as f64 + us as f64 / 1e6
    }

    async fn keys(&self) -> Vec<String> {
        let mut c = self.conn().await.expect("redis connection");
        redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .expect("KEYS")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config of one proxy in front of `backend`, sharing `redis_yaml`.
fn config(backend: &str, redis_yaml: &str, on_store_error: &str) -> String {
    format!(
        "{redis_yaml}\
         rate_limit: {{ requests_per_second: {RATE}, burst: {BURST}, store: redis, on_store_error: {on_store_error} }}\n\
         {}",
        catch_all(backend)
    )
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    limited: u64,
    unavailable: u64,
    other: Vec<u16>,
}

impl Tally {
    fn add(&mut self, t: Tally) {
        self.ok += t.ok;
        self.limited += t.limited;
        self.unavailable += t.unavailable;
        self.other.extend(t.other);
    }
}

/// Requests from four tasks per proxy as fast as they answer, for `for_`.
/// Every answer is one of 200, 429 and 503; a 503 must say why.
async fn flood(proxies: &[&TestProxy], for_: Duration) -> Tally {
    let deadline = Instant::now() + for_;
    let mut tasks = Vec::new();
    for p in proxies {
        for _ in 0..4 {
            let client = p.h1();
            let url = p.url("/api/x");
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::default();
                while Instant::now() < deadline {
                    let r = bounded("request", client.get(&url).send())
                        .await
                        .expect("the proxy answers");
                    match r.status() {
                        StatusCode::OK => t.ok += 1,
                        StatusCode::TOO_MANY_REQUESTS => t.limited += 1,
                        StatusCode::SERVICE_UNAVAILABLE => {
                            let ct = r
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = r.bytes().await.expect("body");
                            assert_error_json(
                                StatusCode::SERVICE_UNAVAILABLE,
                                ct.as_deref(),
                                &body,
                            );
                            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            assert!(
                                v["error"].as_str().unwrap().contains("rate limit store"),
                                "{v}"
                            );
                            t.unavailable += 1;
                        }
                        s => t.other.push(s.as_u16()),
                    }
                }
                t
            }));
        }
    }
    let mut total = Tally::default();
    for t in tasks {
        total.add(t.await.expect("flood task"));
    }
    total
}

/// Two proxies flooding one shared bucket: what they admit together stays
/// within the GCRA bound measured on Redis's clock (burst + rate x elapsed),
/// where two unshared limiters would admit about twice that.
async fn assert_shared(redis: &Redis, a: &TestProxy, b: &TestProxy, what: &str) {
    let before = [store_status(a).await.1, store_status(b).await.1];
    let t0 = redis.time().await;
    let tally = flood(&[a, b], Duration::from_secs(2)).await;
    let elapsed = redis.time().await - t0;
    let bound = BURST as f64 + RATE as f64 * elapsed + 1.0;
    assert!(
        tally.other.is_empty(),
        "{what}: unexpected statuses {tally:?}"
    );
    let after = [store_status(a).await.1, store_status(b).await.1];
    assert_eq!(
        tally.unavailable, 0,
        "{what}: Redis is up: {tally:?}, store before: {before:?}, after: {after:?}"
    );
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            b["failures"], a["failures"],
            "{what}: no call failed: {b} {a}"
        );
    }
    assert!(
        (tally.ok as f64) <= bound,
        "{what}: two proxies admitted {} in {elapsed:.2}s; a shared limit admits at most {bound:.1} ({tally:?})",
        tally.ok
    );
    assert!(tally.ok >= 1, "{what}: nothing admitted: {tally:?}");
    assert!(tally.limited > 0, "{what}: nothing refused: {tally:?}");
    let keys = redis.keys().await;
    assert!(
        keys.iter().any(|k| k.ends_with("global:127.0.0.1")),
        "{what}: the bucket is keyed by client address: {keys:?}"
    );
}

async fn store_status(p: &TestProxy) -> (StatusCode, serde_json::Value) {
    let (status, body) = admin_get(p, "/readyz").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
    (status, v["checks"]["rate_limit_store"].clone())
}

/// Waits (generously: the probe backs off up to 5s) until `p` sees Redis again.
async fn wait_until_up(p: &TestProxy) {
    let started = Instant::now();
    loop {
        let (_, s) = store_status(p).await;
        if s["status"] == "ok" {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the store never came back: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until_down(p: &TestProxy) -> serde_json::Value {
    let started = Instant::now();
    loop {
        // A request notices the failure; readiness does not probe on its own.
        let _ = p.h1().get(p.url("/api/probe")).send().await;
        let (status, s) = store_status(p).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "a store outage leaves the proxy ready"
        );
        if s["status"] == "down" {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the store never showed down: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(p: &TestProxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = admin_get(p, "/metrics").await;
    metric_value(&text, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_two_proxies_share_one_limit_and_keep_serving_while_redis_is_frozen_or_gone() {
    let mut redis = Redis::start(Some("s3cret-pw")).await;
    let backend = Backend::start("legacy", Behavior::echo()).await;
    // The URL, with its password, comes from the environment.
    let var = "FIELDSEAL_TEST_REDIS_URL_ALLOW";
    std::env::set_var(var, redis.url());
    // The largest budget: on a loaded machine only the freeze runs past it.
    let redis_yaml = format!("redis: {{ url_env: {var}, timeout: 1s }}\n");
    let a = TestProxy::start(&config(&backend.url(), &redis_yaml, "allow")).await;
    let b = TestProxy::start(&config(&backend.url(), &redis_yaml, "allow")).await;
    wait_until_up(&a).await;
    wait_until_up(&b).await;

    assert_shared(&redis, &a, &b, "at start").await;

    // Frozen: every call runs past its budget.
    redis.signal("-STOP");
    let s = wait_until_down(&a).await;
    assert_eq!(s["last_error"], "timeout", "{s}");
    let started = Instant::now();
    let tally = flood(&[&a, &b], Duration::from_secs(1)).await;
    assert!(tally.other.is_empty(), "frozen: {tally:?}");
    assert_eq!(tally.unavailable, 0, "allow never answers 503: {tally:?}");
    assert!(
        tally.ok > 0,
        "allow admits what the local stage admits: {tally:?}"
    );
    // The local stage still limits each proxy on its own.
    let local_bound = 2.0 * (BURST as f64 + RATE as f64 * started.elapsed().as_secs_f64() + 1.0);
    assert!(
        tally.ok as f64 <= local_bound,
        "frozen: {tally:?} > {local_bound}"
    );
    assert!(
        metric(
            &a,
            "fieldseal_rate_limit_store_errors_total",
            &[("reason", "timeout")]
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &a,
            "fieldseal_rate_limit_store_fallback_total",
            &[("outcome", "allowed")]
        )
        .await
            >= 1.0
    );
    redis.signal("-CONT");
    wait_until_up(&a).await;
    wait_until_up(&b).await;
    assert_shared(&redis, &a, &b, "after a freeze").await;

    // Gone: killed, then started again on the same port (empty).
    redis.kill();
    wait_until_down(&a).await;
    let tally = flood(&[&a, &b], Duration::from_secs(1)).await;
    assert!(tally.other.is_empty(), "down: {tally:?}");
    assert_eq!(tally.unavailable, 0, "down: {tally:?}");
    assert!(tally.ok > 0, "down: {tally:?}");
    redis.launch().await;
    wait_until_up(&a).await;
    wait_until_up(&b).await;
    assert_shared(&redis, &a, &b, "after a restart").await;
    let (_, up) = admin_get(&a, "/metrics").await;
    assert!(up.contains("fieldseal_rate_limit_store_up 1"), "{up}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deny_answers_503_and_forwards_nothing_while_redis_is_down_then_limits_again() {
    let mut redis = Redis::start(Some("another-pw")).await;
    let backend = Backend::start("legacy", Behavior::echo()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("redis.password");
    std::fs::write(&pw, "another-pw\n").expect("write password");
    let redis_yaml = format!(
        "redis: {{ url: \"redis://127.0.0.1:{}/0\", password_file: \"{}\", key_prefix: \"deny:\", timeout: 1s }}\n",
        redis.port,
        pw.display()
    );
    let a = TestProxy::start(&config(&backend.url(), &redis_yaml, "deny")).await;
    let b = TestProxy::start(&config(&backend.url(), &redis_yaml, "deny")).await;
    wait_until_up(&a).await;
    wait_until_up(&b).await;

    assert_shared(&redis, &a, &b, "at start").await;
    assert!(redis.keys().await.iter().all(|k| k.starts_with("deny:")));

    redis.kill();
    wait_until_down(&a).await;
    wait_until_down(&b).await;
    let forwarded = backend.count();
    let tally = flood(&[&a, &b], Duration::from_secs(1)).await;
    assert!(tally.other.is_empty(), "down: {tally:?}");
    assert_eq!(
        tally.ok, 0,
        "deny admits nothing while Redis is down: {tally:?}"
    );
    assert!(tally.unavailable > 0, "deny answers 503: {tally:?}");
    assert_eq!(backend.count(), forwarded, "nothing reached the backend");
    for p in [&a, &b] {
        assert!(
            metric(
                p,
                "fieldseal_rate_limit_store_fallback_total",
                &[("outcome", "denied")]
            )
            .await
                >= 1.0
        );
        let (_, text) = admin_get(p, "/metrics").await;
        assert!(text.contains("fieldseal_rate_limit_store_up 0"), "{text}");
    }

    redis.launch().await;
    wait_until_up(&a).await;
    wait_until_up(&b).await;
    assert_shared(&redis, &a, &b, "after a restart").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn store_config_is_checked_at_load_and_by_check() {
    let base = catch_all("http://127.0.0.1:9");
    let listen = "listen: { address: \"127.0.0.1:0\", tls: { cert: c.pem, key: k.pem } }\n";
    let load = |extra: &str| {
        fieldseal::Config::from_yaml(&format!("{listen}{extra}{base}"), Path::new("/t/f.yaml"))
    };
    let err = |extra: &str| load(extra).unwrap_err().to_string();
    let e = err("rate_limit: { requests_per_second: 5, store: redis, on_store_error: allow }\n");
    assert!(e.contains("rate_limit.store") && e.contains("redis"), "{e}");
    let e = err("redis: { url_env: R }\nrate_limit: { requests_per_second: 5, store: redis }\n");
    assert!(
        e.contains("rate_limit.on_store_error") && e.contains("required"),
        "{e}"
    );
    let e = err("redis: { url_env: R }\nrate_limit: { requests_per_second: 5, store: redis, on_store_error: maybe }\n");
    assert!(e.contains("allow or deny"), "{e}");
    let e = err("redis: { url: \"redis://:hunter2@h:6379/0\" }\n");
    assert!(e.contains("redis.url") && !e.contains("hunter2"), "{e}");
    let e = err("redis: { url_env: R, timeout: 2s }\n");
    assert!(e.contains("redis.timeout"), "{e}");
    let e = err("redis: { url_env: R, url: \"redis://h/\" }\n");
    assert!(e.contains("not both"), "{e}");
    let e = err("rate_limit: { requests_per_second: 5, store: memcached, on_store_error: allow }\nredis: { url_env: R }\n");
    assert!(e.contains("local or redis"), "{e}");

    // `check` reads the environment: an unset variable is an error there.
    let yaml = format!(
        "{listen}redis: {{ url_env: FIELDSEAL_TEST_REDIS_NEVER_SET }}\nrate_limit: {{ requests_per_second: 5, store: redis, on_store_error: allow }}\n{base}"
    );
    let c = fieldseal::Config::from_yaml(&yaml, Path::new("/t/f.yaml")).unwrap();
    let report = fieldseal::config::preflight::check_text(&c, &yaml);
    let all: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert!(
        all.iter().any(|e| e.contains("redis.url_env")
            && e.contains("FIELDSEAL_TEST_REDIS_NEVER_SET is not set")),
        "{all:?}"
    );
}

/// `rediss://`: the store talks TLS (rustls) to a redis-server with a test
/// certificate, verified against `redis.ca`; a CA that did not sign it is
/// never trusted, and the proxy keeps serving by `on_store_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rediss_verifies_the_server_against_the_configured_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path()); // server.crt / server.key for localhost and 127.0.0.1
    let other = tempfile::tempdir().expect("tempdir");
    write_certs(other.path()); // another self-signed certificate: the wrong CA
    let port = free_port();
    let mut server = Command::new(redis_server_binary())
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-auth-clients",
            "no",
        ])
        .arg("--tls-cert-file")
        .arg(dir.path().join("server.crt"))
        .arg("--tls-key-file")
        .arg(dir.path().join("server.key"))
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server with TLS");
    let backend = Backend::start("legacy", Behavior::echo()).await;
    let yaml = |ca: &Path| {
        config(
            &backend.url(),
            &format!(
                "redis: {{ url: \"rediss://127.0.0.1:{port}/0\", ca: \"{}\", timeout: 1s }}\n",
                ca.display()
            ),
            "deny",
        )
    };
    let good = TestProxy::start(&yaml(&dir.path().join("server.crt"))).await;
    let bad = TestProxy::start(&yaml(&other.path().join("server.crt"))).await;
    wait_until_up(&good).await;
    let tally = flood(&[&good], Duration::from_secs(1)).await;
    assert!(
        tally.other.is_empty() && tally.unavailable == 0,
        "{tally:?}"
    );
    assert!(
        tally.ok > 0 && tally.limited > 0,
        "limited over TLS: {tally:?}"
    );

    // The wrong CA: the store never comes up, and deny answers 503.
    let s = wait_until_down(&bad).await;
    assert_ne!(s["status"], "ok", "{s}");
    let r = bad
        .h1()
        .get(bad.url("/api/x"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (_, s) = store_status(&bad).await;
    assert_eq!(
        s["status"], "down",
        "an untrusted server is never used: {s}"
    );
    good.stop().await;
    bad.stop().await;
    let _ = server.kill();
    let _ = server.wait();
}
