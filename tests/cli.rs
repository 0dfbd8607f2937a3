//! The real binary: `fieldseal check` and graceful shutdown on SIGTERM.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_fieldseal");

/// A port that was free a moment ago (bound, then released), for the child.
fn free_port() -> SocketAddr {
    dead_address()
}

fn config_text(listen: SocketAddr, admin: SocketAddr, upstream: &str, typo: bool) -> String {
    let connect = if typo {
        "conect_timeout"
    } else {
        "connect_timeout"
    };
    format!(
        r#"listen:
  address: "{listen}"
  tls:
    cert: server.crt
    key: server.key
admin:
  address: "{admin}"
allowed_hosts: [localhost, 127.0.0.1]
upstreams:
  legacy:
    url: "{upstream}"
    {connect}: 1s
    timeout: 20s
shutdown:
  grace_period: 20s
log:
  level: warn
routes:
  - name: users
    match: {{ path_prefix: /api/users, methods: [GET, POST] }}
    upstream: legacy
"#
    )
}

fn check(path: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run fieldseal check")
}

#[test]
fn check_names_file_line_column_and_key_of_a_typo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(
        "127.0.0.1:8443".parse().unwrap(),
        "127.0.0.1:9901".parse().unwrap(),
        "http://127.0.0.1:8080",
        true,
    );
    let path = dir.path().join("fieldseal.yaml");
    std::fs::write(&path, &text).expect("write");
    // Where the typo is, 1-based, as an editor shows it.
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("conect_timeout").map(|c| (i + 1, c + 1)))
        .expect("typo in text");

    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let location = format!("{}:{line}:{col}", path.display());
    assert!(
        stderr.contains(&location),
        "stderr should name {location}: {stderr}"
    );
    assert!(stderr.contains("conect_timeout"), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout for a bad config");
}

#[test]
fn check_accepts_a_valid_config_with_a_one_line_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(
        "127.0.0.1:8443".parse().unwrap(),
        "127.0.0.1:9901".parse().unwrap(),
        "http://127.0.0.1:8080",
        false,
    );
    let path = dir.path().join("fieldseal.yaml");
    std::fs::write(&path, &text).expect("write");
    // `check` opens the files the config names, like `nginx -t`.
    write_certs(dir.path());
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("1 routes"), "{stdout}");
}

#[test]
fn check_with_missing_file_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.yaml");
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("absent.yaml"), "{stderr}");
}

/// Kills the child if a test fails before it exits.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_request_finish() {
    let backend = Backend::start("slow", Behavior::slow(Duration::from_secs(2))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_pem = write_certs(dir.path());
    let listen = free_port();
    let admin = free_port();
    let path = dir.path().join("fieldseal.yaml");
    std::fs::write(&path, config_text(listen, admin, &backend.url(), false)).expect("write");
    let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
    let mut child = Child(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn fieldseal run"),
    );
    let log_text = || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();

    // Ready when /healthz answers on the admin port.
    let plain = reqwest::Client::builder()
        .timeout(STEP)
        .build()
        .expect("client");
    bounded("proxy readiness", async {
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("fieldseal exited early with {status}: {}", log_text());
            }
            if let Ok(r) = plain.get(format!("http://{admin}/healthz")).send().await {
                if r.status() == StatusCode::OK {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&cert_pem).expect("cert"))
        .resolve("localhost", listen)
        .http1_only()
        .timeout(STEP)
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/api/users/42", listen.port());
    let in_flight = tokio::spawn(async move {
        let r = client.get(url).send().await?;
        let status = r.status();
        let body = r.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    // The request is at the backend (which now sleeps 2 s): signal.
    backend.wait_for(1).await;
    let pid = child.0.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill -TERM {pid}");

    // New connections are refused once the listener is closed...
    bounded("HTTPS listener to close after SIGTERM", async {
        loop {
            match tokio::net::TcpStream::connect(listen).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;

    // ...while the request in flight completes with its answer.
    let (status, body) = bounded("in-flight request", in_flight)
        .await
        .expect("request task")
        .unwrap_or_else(|e| panic!("in-flight request failed: {e}\n{}", log_text()));
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v["path"], "/api/users/42");
    assert_eq!(v["backend"], "slow");

    let status = bounded("process exit", async {
        loop {
            if let Some(s) = child.0.try_wait().expect("try_wait") {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(status.code(), Some(0), "exit status; log: {}", log_text());
    assert_eq!(backend.count(), 1);
}
