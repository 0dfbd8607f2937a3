//! What an operator reads, from the real binary: the access log says why
//! every refusal and upstream failure happened, request ids join traces,
//! `FIELDSEAL_LOG` is checked like the YAML, `debug` shows fieldseal's own
//! decisions (not protocol frames), and text logs are coloured only on a
//! terminal.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fieldseal");

/// `fieldseal run` as a child process, stderr in a file; killed on drop.
struct Running {
    child: std::process::Child,
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    log: PathBuf,
    pub cert_pem: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Writes `listen:` (and `admin:` unless `admin` is None) before `rest`
    /// and starts the binary with `env`; returns once it serves.
    async fn start(rest: &str, admin: Option<&str>, env: &[(&str, &str)]) -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_pem = write_certs(dir.path());
        let listen = dead_address();
        let mut yaml = format!(
            "listen: {{ address: \"{listen}\", tls: {{ cert: server.crt, key: server.key }} }}\n"
        );
        let admin_addr = match admin {
            Some(extra) => {
                let a = dead_address();
                yaml.push_str(&format!("admin: {{ address: \"{a}\"{extra} }}\n"));
                Some(a)
            }
            None => {
                yaml.push_str("admin: off\n");
                None
            }
        };
        yaml.push_str(rest);
        let config = dir.path().join("fieldseal.yaml");
        std::fs::write(&config, &yaml).expect("write config");
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .env_remove("FIELDSEAL_LOG")
            .env_remove("NO_COLOR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn fieldseal run");
        let mut r = Running {
            child,
            listen,
            admin: admin_addr,
            log,
            cert_pem,
            _dir: dir,
        };
        r.wait_serving().await;
        r
    }

    /// Until a TLS handshake on the listener succeeds.
    async fn wait_serving(&mut self) {
        let config = tls_client_config(&self.cert_pem, None, &[b"http/1.1"]);
        bounded("fieldseal to serve", async {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("fieldseal exited early with {status}: {}", self.log_text());
                }
                if let Ok(tcp) = tokio::net::TcpStream::connect(self.listen).await {
                    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                    if tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every JSON log line so far.
    fn json_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Access-log lines so far.
    fn access_lines(&self) -> Vec<Value> {
        self.json_lines()
            .into_iter()
            .filter(|v| v["target"] == "fieldseal::access")
            .collect()
    }

    /// Waits (bounded) for the access line of the request with `id`.
    async fn access_line(&self, id: &str) -> Value {
        bounded("access log line", async {
            loop {
                if let Some(v) = self
                    .access_lines()
                    .into_iter()
                    .find(|v| v["request_id"] == id)
                {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.cert_pem).expect("cert"))
            .resolve("localhost", self.listen)
            .timeout(STEP)
            .build()
            .expect("client")
    }

    fn h2_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.cert_pem).expect("cert"))
            .resolve("localhost", self.listen)
            .http2_prior_knowledge()
            .timeout(STEP)
            .build()
            .expect("client")
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.listen.port(), path)
    }

    /// SIGTERM, then wait (bounded) for the exit.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + STEP;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn key_file(dir: &Path) -> PathBuf {
    let p = dir.join("k1.key");
    fieldseal::crypto::write_key_file(&p).expect("key file");
    p
}

/// Sends a GET (or a POST with `body`) and returns status and the response's
/// request id.
async fn send(c: &reqwest::Client, url: &str, body: Option<&str>) -> (StatusCode, String) {
    let rb = match body {
        Some(b) => c
            .post(url)
            .header("content-type", "application/json")
            .body(b.to_string()),
        None => c.get(url),
    };
    let r = rb.send().await.expect("request");
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id on every answer")
        .to_string();
    (r.status(), id)
}

/// A latency is a number of milliseconds with at most 3 decimals.
#[track_caller]
fn assert_millis(v: &Value, what: &str) {
    let n = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    assert!(n >= 0.0, "{what}: {n}");
    let text = v.to_string();
    let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(decimals <= 3, "{what}: {text} has more than 3 decimals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_says_why_each_request_was_refused_or_failed() {
    let live = Backend::start("live", Behavior::echo()).await;
    let slow = Backend::start("slow", Behavior::slow(Duration::from_secs(5))).await;
    let store = ScriptedBackend::start().await;
    store.set_default_reply(Reply::json(r#"{"ssn":"fs1:k1:not-an-envelope"}"#));
    let dead = dead_address();
    let keys = tempfile::tempdir().expect("tempdir");
    let key = key_file(keys.path());
    let rest = format!(
        r#"log: {{ level: info, format: json }}
keys: {{ active: k1, ring: [ {{ id: k1, file: "{key}" }} ] }}
upstreams:
  live: {{ url: "{live}" }}
  slow: {{ url: "{slow}", timeout: 300ms }}
  dead: {{ url: "http://{dead}" }}
  store: {{ url: "{store}" }}
routes:
  - {{ name: limited, match: {{ path_prefix: /limited }}, upstream: live, rate_limit: {{ requests_per_second: 1, burst: 1 }} }}
  - {{ name: small, match: {{ path_prefix: /small }}, upstream: live, max_body: 16 }}
  - {{ name: sealed, match: {{ path_prefix: /sealed }}, upstream: live, encrypt: ["$.ssn"] }}
  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow }}
  - {{ name: dead, match: {{ path_prefix: /dead }}, upstream: dead }}
  - {{ name: opened, match: {{ path_prefix: /opened }}, upstream: store, decrypt: ["$.ssn"] }}
  - {{ name: live, match: {{ path_prefix: /live }}, upstream: live }}
"#,
        key = key.display(),
        live = live.url(),
        slow = slow.url(),
        store = store.url(),
    );
    let mut p = Running::start(&rest, Some(""), &[]).await;
    let c = p.client();

    let live_addr = live.addr.to_string();
    let slow_addr = slow.addr.to_string();
    let dead_addr = dead.to_string();
    let store_addr = store.addr.to_string();
    // (path, body, status, reason, upstream server when it was contacted)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        u16,
        Option<&'a str>,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        ("/live/1", None, 200, None, Some(&live_addr)),
        ("/nothing/here", None, 404, Some("no_route"), None),
        ("/limited/a", None, 200, None, Some(&live_addr)),
        ("/limited/b", None, 429, Some("rate_limited"), None),
        (
            "/small",
            Some(r#"{"a":"0123456789012345678901234567890"}"#),
            413,
            Some("body_too_large"),
            None,
        ),
        (
            "/sealed",
            Some(r#"{"ssn": "123-45-6789" oops"#),
            400,
            Some("invalid_json"),
            None,
        ),
        (
            "/dead",
            None,
            502,
            Some("upstream_connect_refused"),
            Some(&dead_addr),
        ),
        (
            "/slow",
            None,
            504,
            Some("upstream_timeout"),
            Some(&slow_addr),
        ),
        (
            "/opened",
            None,
            502,
            Some("decrypt_failed"),
            Some(&store_addr),
        ),
    ];
    for (path, body, status, reason, upstream) in cases {
        let (got, id) = send(&c, &p.url(path), body).await;
        assert_eq!(got.as_u16(), status, "{path}: {}", p.log_text());
        let line = p.access_line(&id).await;
        assert_eq!(line["status"], status, "{path}: {line}");
        assert_eq!(
            line["level"], "INFO",
            "{path}: access lines are at info: {line}"
        );
        // The path is client input: the default log says the route's
        // pattern (none without a route) and a keyed hash of the path.
        let canonical = path.split('?').next().unwrap();
        let pattern = (reason != Some("no_route"))
            .then(|| format!("/{}/*", canonical.split('/').nth(1).unwrap()));
        assert_eq!(
            line.get("path").and_then(|v| v.as_str()),
            pattern.as_deref(),
            "{line}"
        );
        let hash = line["path_hash"].as_str().unwrap_or_default();
        assert!(
            hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{path}: {line}"
        );
        if canonical.matches('/').count() > 1 {
            assert!(!line.to_string().contains(canonical), "{path}: {line}");
        }
        match reason {
            Some(r) => assert_eq!(line["reason"], r, "{path}: {line}"),
            None => assert!(
                line.get("reason").is_none(),
                "{path}: no reason on success: {line}"
            ),
        }
        match upstream {
            Some(u) => assert_eq!(line["upstream_addr"], u, "{path}: {line}"),
            None => assert!(line.get("upstream_addr").is_none(), "{line}"),
        }
        // The route's upstream is named whenever a route matched.
        if path != "/nothing/here" {
            assert!(line["upstream"].is_string(), "{path}: {line}");
        }
        assert_millis(&line["latency_ms"], path);
        if reason.is_some_and(|r| r.starts_with("upstream_")) {
            assert!(line.get("upstream_status").is_none(), "{path}: {line}");
            assert_millis(&line["upstream_ms"], path);
        }
        if let Some(up) = line.get("upstream_ms") {
            assert_millis(up, path);
        }
        // Never a value the client sent.
        let text = line.to_string();
        assert!(!text.contains("123-45-6789"), "{text}");
        assert!(!text.contains("0123456789012345"), "{text}");
    }
    // The reasons are in the README, where operators look them up.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    for code in fieldseal::error::REASON_CODES {
        assert!(
            readme.contains(&format!("`{code}`")),
            "README documents {code}"
        );
    }
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_request_id_is_kept_and_any_other_replaced() {
    let live = Backend::start("live", Behavior::echo()).await;
    let run = |trust: &str| {
        format!(
            "log: {{ level: info, format: json{trust} }}\ntrusted_proxies: [127.0.0.1]\n{}",
            catch_all(&live.url())
        )
    };
    let mut p = Running::start(&run(""), Some(""), &[]).await;
    let c = p.client();
    let send_id = |id: &str| c.get(p.url("/x")).header("x-request-id", id).send();
    // Well-formed, from a trusted peer (127.0.0.1): kept end to end.
    let id = "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7";
    let r = send_id(id).await.expect("request");
    assert_eq!(r.headers()["x-request-id"], id);
    assert_eq!(live.seen().last().unwrap().header("x-request-id"), Some(id));
    assert_eq!(p.access_line(id).await["status"], 200);
    // Not well-formed: too long, or characters outside the safe set.
    for bad in [
        "a".repeat(129),
        "id with spaces".into(),
        "id\"quote".into(),
        "a/b".into(),
    ] {
        let r = send_id(&bad).await.expect("request");
        let ours = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(ours, bad);
        assert_eq!(ours.len(), 32, "{ours}");
        assert!(ours.bytes().all(|b| b.is_ascii_hexdigit()), "{ours}");
        assert_eq!(
            live.seen().last().unwrap().header("x-request-id"),
            Some(ours.as_str())
        );
        assert!(!p.log_text().contains(&bad), "a refused id is not logged");
    }
    p.stop();

    // `never`: even a trusted proxy's id is replaced.
    let mut p = Running::start(&run(", trust_request_id: never"), Some(""), &[]).await;
    let r = p
        .client()
        .get(p.url("/x"))
        .header("x-request-id", "trace-1")
        .send()
        .await
        .expect("request");
    assert_ne!(r.headers()["x-request-id"], "trace-1");
    p.stop();

    // Default with no trusted proxies: a client's id is not believed.
    let rest = format!("log: {{ format: json }}\n{}", catch_all(&live.url()));
    let mut p = Running::start(&rest, Some(""), &[]).await;
    let r = p
        .client()
        .get(p.url("/x"))
        .header("x-request-id", "trace-2")
        .send()
        .await
        .expect("request");
    assert_ne!(r.headers()["x-request-id"], "trace-2");
    p.stop();

    // `always`: any client's well-formed id.
    let rest = format!(
        "log: {{ format: json, trust_request_id: always }}\n{}",
        catch_all(&live.url())
    );
    let mut p = Running::start(&rest, Some(""), &[]).await;
    let r = p
        .client()
        .get(p.url("/x"))
        .header("x-request-id", "trace-3")
        .send()
        .await
        .expect("request");
    assert_eq!(r.headers()["x-request-id"], "trace-3");
    p.stop();
}

/// Runs `fieldseal run` for a config that must not start.
fn run_refused(rest: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    write_certs(dir.path());
    let yaml = format!(
        "listen: {{ address: \"{}\", tls: {{ cert: server.crt, key: server.key }} }}\nadmin: {{ address: \"{}\" }}\n{rest}",
        dead_address(),
        dead_address()
    );
    let config = dir.path().join("fieldseal.yaml");
    std::fs::write(&config, yaml).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env_remove("FIELDSEAL_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + STEP;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("fieldseal run started with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_fieldseal_log_is_an_error_like_the_yaml_level() {
    let upstream = format!("http://{}", dead_address());
    for bad in ["verbose", "warning", "info,fieldseal=loud", "h2"] {
        let out = run_refused(&catch_all(&upstream), &[("FIELDSEAL_LOG", bad)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: started anyway");
        assert!(err.contains("FIELDSEAL_LOG"), "{bad}: {err}");
        assert!(
            err.contains(bad.split(',').next_back().unwrap()),
            "{bad}: {err}"
        );
    }
    // The same word in the YAML is refused too.
    let out = run_refused(
        &format!("log: {{ level: verbose }}\n{}", catch_all(&upstream)),
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.level"));

    // A valid value that names only a target keeps the access log.
    let live = Backend::start("live", Behavior::echo()).await;
    let rest = format!("log: {{ format: json }}\n{}", catch_all(&live.url()));
    let mut p = Running::start(&rest, None, &[("FIELDSEAL_LOG", "h2=warn")]).await;
    let (status, id) = send(&p.client(), &p.url("/a"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p.access_line(&id).await["status"], 200);
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_shows_fieldseals_decisions_not_protocol_frames() {
    let live = Backend::start("live", Behavior::echo()).await;
    let rest = format!(
        "log: {{ level: debug, format: json }}\n{}",
        catch_all(&live.url())
    );
    let mut p = Running::start(&rest, Some(""), &[]).await;
    let (_, id1) = send(&p.h2_client(), &p.url("/h2"), None).await;
    let (_, id2) = send(&p.client(), &p.url("/h1"), Some("{}")).await;
    p.access_line(&id1).await;
    p.access_line(&id2).await;
    p.stop();
    let lines = p.json_lines();
    let noisy: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            let t = v["target"].as_str().unwrap_or("");
            !t.starts_with("fieldseal") && matches!(v["level"].as_str(), Some("DEBUG" | "TRACE"))
        })
        .collect();
    assert!(noisy.is_empty(), "library debug lines at debug: {noisy:#?}");
    let decisions: Vec<&Value> = lines
        .iter()
        .filter(|v| v["level"] == "DEBUG" && v["message"] == "route matched")
        .collect();
    assert_eq!(decisions.len(), 2, "{}", p.log_text());
    assert!(decisions.iter().all(|v| v["route"] == "all"));

    // At trace, the libraries speak too (they are only held back, not cut).
    let mut p = Running::start(&rest, Some(""), &[("FIELDSEAL_LOG", "trace")]).await;
    send(&p.h2_client(), &p.url("/h2"), None).await;
    p.stop();
    assert!(
        p.json_lines()
            .iter()
            .any(|v| v["target"].as_str().is_some_and(|t| t.starts_with("h2")
                || t.starts_with("hyper")
                || t.starts_with("rustls"))),
        "no library line at trace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_carry_no_colour_codes_when_not_on_a_terminal() {
    let live = Backend::start("live", Behavior::echo()).await;
    let rest = format!(
        "log: {{ level: info, format: text }}\n{}",
        catch_all(&live.url())
    );
    let mut p = Running::start(&rest, Some(""), &[]).await;
    let (status, id) = send(&p.client(), &p.url("/a"), None).await;
    assert_eq!(status, StatusCode::OK);
    bounded("access line", async {
        while !p.log_text().contains(&id) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    p.stop();
    let text = p.log_text();
    assert!(text.contains("fieldseal::access"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape in a log file: {text:?}"
    );
}

// ---------------------------------------------------------------------------
// The admin listener: off, token, introspection, process metrics
// ---------------------------------------------------------------------------

/// The ports `pid` listens on (TCP), each once: with `server.runtime:
/// per_core` every serving runtime has its own socket on the HTTPS port.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for row in text.lines().skip(1) {
            let f: Vec<&str> = row.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().expect("port");
                ports.push(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_off_binds_no_admin_listener() {
    let live = Backend::start("live", Behavior::echo()).await;
    let rest = format!("log: {{ format: json }}\n{}", catch_all(&live.url()));
    let mut p = Running::start(&rest, None, &[]).await;
    assert_eq!(
        listening_ports(p.child.id()),
        vec![p.listen.port()],
        "only the HTTPS listener: {}",
        p.log_text()
    );
    let (status, _) = send(&p.client(), &p.url("/a"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        p.json_lines()
            .iter()
            .any(|v| v["message"] == "fieldseal serving" && v["admin"] == "off"),
        "{}",
        p.log_text()
    );
    p.stop();

    // The same config with the admin listener on: two listeners.
    let mut p = Running::start(&rest, Some(""), &[]).await;
    let admin = p.admin.expect("admin address");
    let mut want = vec![p.listen.port(), admin.port()];
    want.sort_unstable();
    assert_eq!(listening_ports(p.child.id()), want);
    p.stop();

    // `false` means the same, `true` or another word is an error.
    let path = std::path::Path::new("/etc/fieldseal.yaml");
    for (admin, ok) in [
        ("false", true),
        ("off", true),
        ("true", false),
        ("on", false),
    ] {
        let yaml = format!(
            "listen: {{ address: \"127.0.0.1:8443\", tls: {{ cert: a, key: b }} }}\nadmin: {admin}\n{}",
            catch_all("http://127.0.0.1:1")
        );
        match fieldseal::Config::from_yaml(&yaml, path) {
            Ok(c) => {
                assert!(ok, "admin: {admin} accepted");
                assert_eq!(c.admin, None);
            }
            Err(e) => {
                assert!(!ok, "admin: {admin}: {e}");
                assert!(e.message.starts_with("admin:"), "{e}");
            }
        }
    }
    // A typo inside the mapping names the key.
    let yaml = format!(
        "listen: {{ address: \"127.0.0.1:8443\", tls: {{ cert: a, key: b }} }}\nadmin: {{ adress: \"127.0.0.1:1\" }}\n{}",
        catch_all("http://127.0.0.1:1")
    );
    let e = fieldseal::Config::from_yaml(&yaml, path).unwrap_err();
    assert!(e.message.contains("adress"), "{e}");
    assert_eq!(e.line, Some(2), "{e}");
}

const TOKEN: &str = "0123456789abcdef-admin-token-for-tests";

fn write_token(dir: &Path, name: &str, token: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).expect("token file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// One request to the admin listener with optional bearer token.
async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .expect("client");
    let url = format!("http://{admin}{path}");
    let mut rb = match method {
        "POST" => c.post(url),
        _ => c.get(url),
    };
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.expect("admin request");
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.text().await.expect("body"))
}

fn users_routes(url: &str, key: &Path) -> String {
    format!(
        r#"keys: {{ active: k1, ring: [ {{ id: k1, file: "{key}" }} ] }}
upstreams:
  legacy: {{ url: "{url}" }}
routes:
  - name: users
    match: {{ path_prefix: /api/users, methods: [GET, POST] }}
    upstream: legacy
    rate_limit: {{ requests_per_second: 10, burst: 20 }}
    encrypt: ["$.ssn", {{ path: "$.notes", context: user_notes }}]
    decrypt: auto
    on_decrypt_failure: "null"
  - name: rest
    match: {{ path_prefix: / }}
    upstream: legacy
"#,
        key = key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_needs_the_admin_token_and_probes_do_not() {
    let live = Backend::start("live", Behavior::echo()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    let token = write_token(dir.path(), "admin.token", TOKEN, 0o600);
    let extra = format!(", token_file: \"{}\"", token.display());
    let proxy =
        TestProxy::start_admin(&users_routes(&live.url(), &key), "127.0.0.1:0", &extra).await;

    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, _) = admin_call(proxy.admin, "GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "{path} stays open for probes");
    }
    for (method, path) in [
        ("GET", "/routes"),
        ("GET", "/keys"),
        ("GET", "/info"),
        ("GET", "/reload"),
        ("POST", "/reload"),
    ] {
        for wrong in [
            None,
            Some("wrong-token-wrong-token"),
            Some(&TOKEN[..TOKEN.len() - 1]),
        ] {
            let (status, headers, body) = admin_call(proxy.admin, method, path, wrong).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {wrong:?}: {body}"
            );
            assert!(
                headers["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer"),
                "{headers:?}"
            );
            assert!(!body.contains(TOKEN));
        }
        let (status, _, body) = admin_call(proxy.admin, method, path, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {body}");
    }

    // The routes, in match order, with what each does.
    let (_, _, body) = admin_call(proxy.admin, "GET", "/routes", Some(TOKEN)).await;
    let v: Value = serde_json::from_str(&body).expect("json");
    let routes = v["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 2);
    let users = &routes[0];
    assert_eq!(users["name"], "users");
    assert_eq!(users["index"], 0);
    assert_eq!(users["match"]["kind"], "path_prefix");
    assert_eq!(users["match"]["path"], "/api/users");
    assert_eq!(
        users["match"]["methods"],
        serde_json::json!(["GET", "POST"])
    );
    assert_eq!(users["upstream"]["name"], "legacy");
    assert_eq!(users["upstream"]["address"], live.addr.to_string());
    assert_eq!(users["rate_limit"]["requests_per_second"], 10);
    assert_eq!(users["rate_limit"]["bucket"], "route");
    assert_eq!(
        users["encrypt"],
        serde_json::json!([
            { "path": "$.ssn", "context": null },
            { "path": "$.notes", "context": "user_notes" }
        ])
    );
    assert_eq!(users["decrypt"], "auto");
    assert_eq!(users["on_decrypt_failure"], "null");
    assert!(
        users.get("shadows").is_some(),
        "a field for the shadowing analysis"
    );
    assert_eq!(routes[1]["name"], "rest");
    assert_eq!(routes[1]["encrypt"], serde_json::json!([]));
    assert_eq!(routes[1]["decrypt"], Value::Null);

    // The keyring: ids, active, source, fingerprint; never a key.
    let (_, _, body) = admin_call(proxy.admin, "GET", "/keys", Some(TOKEN)).await;
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["active"], "k1");
    let k = &v["keys"][0];
    assert_eq!(k["id"], "k1");
    assert_eq!(k["active"], true);
    assert_eq!(k["source"]["kind"], "file");
    let ring = fieldseal::crypto::Keyring::load(&fieldseal::crypto::KeyringSpec {
        active: "k1".into(),
        keys: vec![fieldseal::crypto::KeySpec {
            id: "k1".into(),
            source: fieldseal::crypto::KeySource::File(key.clone()),
        }],
        pbkdf2_iterations: 600_000,
    })
    .expect("ring");
    assert_eq!(k["fingerprint"], ring.fingerprint("k1").unwrap());
    let key_text = std::fs::read_to_string(&key).expect("key");
    assert!(!body.contains(key_text.trim()), "{body}");

    // Build info and the last reload.
    let (_, _, body) = admin_call(proxy.admin, "GET", "/info", Some(TOKEN)).await;
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["rustc"].as_str().unwrap().starts_with("rustc "), "{v}");
    assert!(
        v["git_commit"].as_str().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    assert_eq!(v["admin"]["auth"], "token");
    assert!(v["started_at"].as_u64().unwrap() > 1_600_000_000);

    // Reload rotates the token: the old one stops working.
    let new = "fedcba9876543210-the-next-admin-token";
    write_token(dir.path(), "admin.token", new, 0o600);
    let (status, _, body) = admin_call(proxy.admin, "POST", "/reload", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = admin_call(proxy.admin, "GET", "/keys", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = admin_call(proxy.admin, "GET", "/keys", Some(new)).await;
    assert_eq!(status, StatusCode::OK);

    // A token file anyone can read is refused at reload; the old token stays.
    write_token(
        dir.path(),
        "admin.token",
        "another-token-another-token",
        0o644,
    );
    let (status, _, body) = admin_call(proxy.admin, "POST", "/reload", Some(new)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.contains("admin.token_file") && body.contains("0644"),
        "{body}"
    );
    assert!(!body.contains("another-token"), "{body}");
    let (status, _, _) = admin_call(proxy.admin, "GET", "/keys", Some(new)).await;
    assert_eq!(status, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_introspection_is_served_only_on_loopback() {
    let live = Backend::start("live", Behavior::echo()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    let rest = users_routes(&live.url(), &key);

    let local = TestProxy::start_admin(&rest, "127.0.0.1:0", "").await;
    for path in ["/routes", "/keys", "/info", "/reload"] {
        let (status, _, body) = admin_call(local.admin, "GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "{path} on loopback: {body}");
    }
    let (_, _, body) = admin_call(local.admin, "GET", "/info", None).await;
    assert!(body.contains("\"auth\":\"loopback\""), "{body}");
    local.stop().await;

    // Bound to every interface without a token: refused, probes still open.
    let open = TestProxy::start_admin(&rest, "0.0.0.0:0", "").await;
    for (method, path) in [
        ("GET", "/routes"),
        ("GET", "/keys"),
        ("GET", "/info"),
        ("POST", "/reload"),
    ] {
        let (status, _, body) = admin_call(open.admin, method, path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert!(body.contains("admin.token_file"), "{body}");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, _) = admin_call(open.admin, "GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    open.stop().await;

    // A token file with a loose mode stops the start, naming the key.
    let token = write_token(dir.path(), "loose.token", TOKEN, 0o640);
    let yaml = format!(
        "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert: {c}, key: {k} }} }}\nadmin: {{ token_file: \"{t}\" }}\n{rest}",
        c = local_cert(dir.path()).0.display(),
        k = local_cert(dir.path()).1.display(),
        t = token.display()
    );
    let cfg = fieldseal::Config::from_yaml(&yaml, &dir.path().join("f.yaml")).expect("config");
    assert_eq!(
        cfg.admin,
        Some("127.0.0.1:9901".parse().unwrap()),
        "address defaults"
    );
    let e = fieldseal::Proxy::new(cfg).err().expect("refused");
    let msg = e.to_string();
    assert!(
        msg.starts_with("admin.token_file:") && msg.contains("0640"),
        "{msg}"
    );
    assert!(!msg.contains(TOKEN), "{msg}");
}

/// A self-signed pair in `dir`, written once.
fn local_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
    if !c.exists() {
        write_certs(dir);
    }
    (c, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_process_and_build_info_and_a_fresh_start_is_a_successful_load() {
    let live = Backend::start("live", Behavior::echo()).await;
    let rest = format!("log: {{ format: json }}\n{}", catch_all(&live.url()));
    let mut p = Running::start(&rest, Some(""), &[]).await;
    let admin = p.admin.expect("admin");
    let (status, _, text) = admin_call(admin, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert_eq!(
        value("fieldseal_last_reload_success"),
        1.0,
        "boot counts as a load"
    );
    let now = fieldseal::crypto::unix_now() as f64;
    let loaded = value("fieldseal_last_reload_timestamp_seconds");
    assert!(loaded > now - 600.0 && loaded <= now, "{loaded}");
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_virtual_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_cpu_seconds_total") >= 0.0);
    let start = value("process_start_time_seconds");
    assert!(
        start > now - 600.0 && start <= now + 1.0,
        "{start} vs {now}"
    );
    assert!(
        text.contains(&format!(
            "fieldseal_build_info{{version=\"{}\",",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        text.contains("# TYPE process_cpu_seconds counter"),
        "{text}"
    );
    p.stop();
}

/// The lead's decision on the review of issues 8/9: a path is a
/// client-supplied string (ids, e-mail addresses, tokens, field values in
/// `/api/users/078-05-1120`), so by default the access log says the route's
/// match pattern and a short keyed hash of the canonical path (the same path
/// hashes alike, so requests still correlate); `log.paths: full` logs the
/// canonical path.
#[tokio::test]
async fn the_access_log_says_the_route_pattern_and_a_path_hash_unless_told_full() {
    let live = Backend::start("live", Behavior::echo()).await;
    for paths in ["", "full"] {
        let log = if paths.is_empty() {
            "log: { level: info, format: json }".to_string()
        } else {
            format!("log: {{ level: info, format: json, paths: {paths} }}")
        };
        let rest = format!(
            r#"{log}
upstreams:
  live: {{ url: "{live}" }}
routes:
  - {{ name: one, match: {{ path: /api/me }}, upstream: live }}
  - {{ name: users, match: {{ path_prefix: /api/users }}, upstream: live }}
  - {{ name: rest, match: {{ path_prefix: / }}, upstream: live }}
"#,
            live = live.url(),
        );
        let p = Running::start(&rest, None, &[]).await;
        let c = p.client();
        let mut hashes = Vec::new();
        for (sent, canonical, pattern) in [
            (
                "/api/users/078-05-1120",
                "/api/users/078-05-1120",
                "/api/users/*",
            ),
            (
                "/api//users/./078-05-1120",
                "/api/users/078-05-1120",
                "/api/users/*",
            ),
            (
                "/api/users/078-05-1121",
                "/api/users/078-05-1121",
                "/api/users/*",
            ),
            ("/api/me", "/api/me", "/api/me"),
            ("/x/alice@example.com", "/x/alice@example.com", "/*"),
        ] {
            let (status, id) = send(&c, &p.url(sent), None).await;
            assert_eq!(status, StatusCode::OK);
            let line = p.access_line(&id).await;
            let hash = line["path_hash"].as_str().expect("path_hash").to_string();
            assert_eq!(hash.len(), 12, "{line}");
            hashes.push(hash);
            if paths == "full" {
                assert_eq!(line["path"], canonical, "{line}");
            } else {
                assert_eq!(line["path"], pattern, "{line}");
                for secret in ["078-05-112", "alice"] {
                    assert!(!line.to_string().contains(secret), "{line}");
                }
            }
        }
        assert_eq!(hashes[0], hashes[1], "one canonical path, one hash");
        assert_ne!(hashes[0], hashes[2], "two paths, two hashes");
        assert!(!p
            .log_text()
            .contains(if paths == "full" { "never" } else { "078-05" }));
    }
}
