//! The process model: `server.runtime: per_core` serves on one
//! single-threaded runtime per worker, each with its own socket on the
//! listen address. Connections spread over all of them, a reload reaches
//! every one, a drain waits for connections on every one, and the shared
//! runtime still serves.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

const WORKERS: usize = 3;
/// Connections per test: with the kernel spreading them by their ports,
/// a runtime gets none of 48 with odds of about 3 in 10^8.
const CONNECTIONS: usize = 48;

/// One keep-alive HTTP/1.1 connection over TLS.
async fn connect(proxy: &TestProxy) -> SendRequest<Empty<Bytes>> {
    let tls = tls_connect(proxy.https, proxy.tls_config(&[b"http/1.1"])).await;
    let (sender, conn) = bounded(
        "h1 handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(tls)),
    )
    .await
    .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

/// GET `path` on `sender`: the status and the JSON echo.
async fn get(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, serde_json::Value) {
    bounded("connection ready", sender.ready())
        .await
        .expect("connection usable");
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .expect("request");
    let resp = bounded("answer", sender.send_request(req))
        .await
        .expect("answer");
    let status = resp.status();
    let body = bounded("body", resp.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// `fieldseal_runtime_connections` of each runtime 0..WORKERS.
async fn per_runtime(proxy: &TestProxy) -> Vec<f64> {
    let (status, text) = admin_get(proxy, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    (0..WORKERS)
        .map(|i| {
            metric_value(
                &text,
                "fieldseal_runtime_connections",
                &[("runtime", &i.to_string())],
            )
            .unwrap_or(0.0)
        })
        .collect()
}

/// Waits until the runtimes hold `n` connections together, and returns
/// each one's count.
async fn held(proxy: &TestProxy, n: usize) -> Vec<f64> {
    bounded("connections counted", async {
        loop {
            let counts = per_runtime(proxy).await;
            if counts.iter().sum::<f64>() == n as f64 {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn per_core(routes: &str) -> String {
    format!("server: {{ runtime: per_core, workers: {WORKERS} }}\n{routes}")
}

#[tokio::test]
async fn connections_spread_over_every_runtime_and_each_serves() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let proxy = TestProxy::start(&per_core(&catch_all(&backend.url()))).await;
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(connect(&proxy).await);
    }
    let counts = held(&proxy, CONNECTIONS).await;
    assert!(
        counts.iter().all(|&c| c > 0.0),
        "every runtime holds some of the {CONNECTIONS} connections: {counts:?}"
    );
    for (i, c) in conns.iter_mut().enumerate() {
        for k in 0..2 {
            let (status, v) = get(c, &format!("/c{i}/{k}")).await;
            assert_eq!(status, StatusCode::OK, "connection {i} request {k}: {v}");
            assert_eq!(v["path"], format!("/c{i}/{k}"));
        }
    }
    assert_eq!(backend.count(), 2 * CONNECTIONS);
    drop(conns);
    held(&proxy, 0).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_reaches_connections_on_every_runtime() {
    let a = Backend::start("a", Behavior::echo()).await;
    let b = Backend::start("b", Behavior::echo()).await;
    let proxy = TestProxy::start(&per_core(&catch_all(&a.url()))).await;
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(connect(&proxy).await);
    }
    let counts = held(&proxy, CONNECTIONS).await;
    assert!(counts.iter().all(|&c| c > 0.0), "{counts:?}");
    for c in &mut conns {
        let (status, v) = get(c, "/before").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["backend"], "a");
    }
    // The same config, now pointing at b.
    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    std::fs::write(&proxy.config_path, text.replace(&a.url(), &b.url())).expect("write");
    bounded("reload", proxy.proxy.reload())
        .await
        .expect("reload succeeds");
    // Connections opened before the reload, on every runtime, and new ones.
    for _ in 0..CONNECTIONS {
        conns.push(connect(&proxy).await);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let (status, v) = get(c, "/after").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["backend"], "b", "connection {i} still on the old config");
    }
    assert_eq!(a.count(), CONNECTIONS);
    assert_eq!(b.count(), 2 * CONNECTIONS);
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_that_changes_the_runtimes_is_refused() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let proxy = TestProxy::start(&per_core(&catch_all(&backend.url()))).await;
    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    let changed = text.replace(
        &format!("workers: {WORKERS}"),
        &format!("workers: {}", WORKERS + 1),
    );
    assert_ne!(changed, text);
    std::fs::write(&proxy.config_path, changed).expect("write");
    let err = bounded("reload", proxy.proxy.reload())
        .await
        .expect_err("server settings need a restart");
    assert!(err.to_string().contains("server"), "{err}");
    // Still serving on the old settings.
    let mut c = connect(&proxy).await;
    assert_eq!(get(&mut c, "/still").await.0, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_on_every_runtime() {
    let slow = Backend::start("slow", Behavior::slow(Duration::from_secs(2))).await;
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
    let proxy = TestProxy::start(&per_core(&yaml)).await;
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(connect(&proxy).await);
    }
    let counts = held(&proxy, CONNECTIONS).await;
    assert!(counts.iter().all(|&c| c > 0.0), "{counts:?}");
    let in_flight: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| tokio::spawn(async move { get(&mut c, &format!("/hold/{i}")).await }))
        .collect();
    slow.wait_for(CONNECTIONS).await;
    let https = proxy.https;
    let stopping = tokio::spawn(proxy.stop());
    // Every runtime's socket closes: new connections are refused.
    bounded("listeners close", async {
        loop {
            match tokio::net::TcpStream::connect(https).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    for (i, t) in in_flight.into_iter().enumerate() {
        let (status, v) = bounded("in-flight request", t).await.expect("task");
        assert_eq!(status, StatusCode::OK, "request {i} cut by the drain: {v}");
        assert_eq!(v["path"], format!("/hold/{i}"));
    }
    bounded("serve returns", stopping).await.expect("stop");
}

#[tokio::test]
async fn the_shared_runtime_still_serves_both_protocols() {
    let backend = Backend::start("a", Behavior::echo()).await;
    let yaml = format!(
        "server: {{ runtime: shared, workers: 2 }}\n{}",
        catch_all(&backend.url())
    );
    let proxy = TestProxy::start(&yaml).await;
    for (c, v) in proxy.clients() {
        let r = bounded("answer", c.get(proxy.url("/shared")).send())
            .await
            .expect("answer");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.version(), v);
    }
    // Its one accept loop is runtime 0.
    let mut c = connect(&proxy).await;
    assert_eq!(get(&mut c, "/x").await.0, StatusCode::OK);
    assert_eq!(per_runtime(&proxy).await[0], 1.0);
    drop(c);
    proxy.stop().await;
}

#[test]
fn server_settings_are_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let base = "listen: { address: \"127.0.0.1:0\", tls: { cert: server.crt, key: server.key } }\n";
    let routes = catch_all("http://127.0.0.1:9");
    for (server, needle) in [
        ("server: { workers: 0 }", "server.workers"),
        ("server: { workers: 100000 }", "server.workers"),
        ("server: { runtime: threads }", "server.runtime"),
        ("server: { runtimes: 2 }", "runtimes"),
    ] {
        let text = format!("{base}{server}\n{routes}");
        let err =
            fieldseal::Config::from_yaml(&text, &dir.path().join("f.yaml")).expect_err(server);
        assert!(err.to_string().contains(needle), "{server}: {err}");
    }
    let text = format!("{base}server: {{ runtime: shared, workers: 4 }}\n{routes}");
    let c = fieldseal::Config::from_yaml(&text, &dir.path().join("f.yaml")).expect("loads");
    assert_eq!(c.server.runtime, fieldseal::config::RuntimeMode::Shared);
    assert_eq!(c.server.worker_count(), 4);
}
