//! The operator's commands over the real binary: `demo --dir` touching only
//! what it wrote, `check` opening every file and variable and naming key and
//! line, shadowed encrypting routes refused by `check` and `run`, bind
//! failures naming the listener, `init`, completions, man pages and
//! `healthcheck`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::process::Child;
use common::*;
use http::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_fieldseal");

fn bin(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).stdin(Stdio::null());
    c
}

fn output(c: &mut Command) -> Output {
    c.output().expect("run fieldseal")
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

#[cfg(unix)]
fn set_mode(p: &Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
        + 1
}

// ---------------------------------------------------------------------------
// demo --dir
// ---------------------------------------------------------------------------

/// The folder the demo announces: "(config and generated keys in DIR)."
fn announced_dir(lines: &[String]) -> PathBuf {
    let l = lines
        .iter()
        .find(|l| l.contains("config and generated keys in "))
        .expect("demo names its folder");
    let start = l.find(" in ").expect("in") + 4;
    let end = l.rfind(").").expect(").");
    PathBuf::from(&l[start..end])
}

fn start_demo(dir: Option<&Path>, cwd: &Path, tmp: &Path) -> Child {
    let mut cmd = bin(&["demo", "--listen", "127.0.0.1:0"]);
    if let Some(d) = dir {
        cmd.arg("--dir").arg(d);
    }
    cmd.current_dir(cwd).env("TMPDIR", tmp);
    Child::spawn(&mut cmd, &tmp.join("demo.stderr"))
}

#[test]
fn demo_refuses_a_folder_that_holds_files_and_touches_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let work = t.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    std::fs::write(work.join("notes.txt"), b"mine").expect("write");
    #[cfg(unix)]
    set_mode(&work, 0o755);
    for dir in [work.clone(), PathBuf::from(".")] {
        let mut demo = start_demo(Some(&dir), &work, t.path());
        let code = demo.wait();
        let stderr = std::fs::read_to_string(t.path().join("demo.stderr")).unwrap_or_default();
        assert_eq!(code, Some(1), "--dir {}: {stderr}", dir.display());
        assert!(stderr.contains("is not empty"), "{stderr}");
        assert!(stderr.contains("--dir"), "{stderr}");
        assert_eq!(entries(&work), vec!["notes.txt"], "--dir {}", dir.display());
        assert_eq!(
            std::fs::read(work.join("notes.txt")).expect("read"),
            b"mine"
        );
        #[cfg(unix)]
        assert_eq!(mode(&work), 0o755, "the folder's mode is left alone");
    }
    // A file is not a folder.
    let file = work.join("notes.txt");
    let mut demo = start_demo(Some(&file), &work, t.path());
    assert_eq!(demo.wait(), Some(1));
    assert_eq!(std::fs::read(&file).expect("read"), b"mine");
}

#[test]
fn demo_in_an_empty_folder_removes_only_what_it_wrote() {
    let t = tempfile::tempdir().expect("tempdir");
    let work = t.path().join("empty");
    std::fs::create_dir(&work).expect("mkdir");
    #[cfg(unix)]
    set_mode(&work, 0o755);
    let mut demo = start_demo(Some(&work), t.path(), t.path());
    let lines = demo.read_until("Press Ctrl-C");
    assert_eq!(announced_dir(&lines), work);
    // The key store (SQLite in WAL mode: the database, its log and index)
    // is the demo's too: the proxy opened it there.
    assert_eq!(
        entries(&work),
        vec![
            "admin.token",
            "demo.key",
            "fieldseal.yaml",
            "keys.db",
            "keys.db-shm",
            "keys.db-wal",
            "server.crt",
            "server.key"
        ]
    );
    #[cfg(unix)]
    for private in ["admin.token", "demo.key", "server.key", "keys.db"] {
        assert_eq!(mode(&work.join(private)), 0o600, "{private}");
    }
    // Something the user puts there while the demo runs is theirs.
    std::fs::write(work.join("mine.txt"), b"keep me").expect("write");
    demo.signal("-TERM");
    let code = demo.wait();
    let stderr = std::fs::read_to_string(t.path().join("demo.stderr")).unwrap_or_default();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(entries(&work), vec!["mine.txt"]);
    assert_eq!(
        std::fs::read(work.join("mine.txt")).expect("read"),
        b"keep me"
    );
    #[cfg(unix)]
    assert_eq!(mode(&work), 0o755, "the folder's mode is left alone");
}

#[test]
fn demo_removes_the_folders_it_created_unless_they_hold_other_files() {
    let t = tempfile::tempdir().expect("tempdir");
    // A new folder two levels deep: both levels are the demo's.
    let new = t.path().join("a").join("b");
    let mut demo = start_demo(Some(&new), t.path(), t.path());
    demo.read_until("Press Ctrl-C");
    #[cfg(unix)]
    assert_eq!(mode(&new), 0o700, "a folder the demo creates is private");
    demo.signal("-TERM");
    assert_eq!(demo.wait(), Some(0));
    assert!(!t.path().join("a").exists(), "created folders removed");
    assert!(t.path().exists());

    // Without --dir: a private folder under TMPDIR, removed at the end...
    let tmp = t.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    let mut demo = start_demo(None, t.path(), &tmp);
    let lines = demo.read_until("Press Ctrl-C");
    let dir = announced_dir(&lines);
    assert!(dir.starts_with(&tmp), "{}", dir.display());
    #[cfg(unix)]
    assert_eq!(mode(&dir), 0o700);
    demo.signal("-INT");
    assert_eq!(demo.wait(), Some(0));
    assert_eq!(
        entries(&tmp),
        vec!["demo.stderr"],
        "temporary folder removed"
    );

    // ...unless the user put a file into it: then the folder and that file stay.
    let mut demo = start_demo(None, t.path(), &tmp);
    let dir = announced_dir(&demo.read_until("Press Ctrl-C"));
    std::fs::write(dir.join("mine.txt"), b"keep me").expect("write");
    demo.signal("-TERM");
    assert_eq!(demo.wait(), Some(0));
    assert_eq!(entries(&dir), vec!["mine.txt"]);
    let stderr = std::fs::read_to_string(tmp.join("demo.stderr")).unwrap_or_default();
    assert!(
        stderr.contains("left") && stderr.contains("in place"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// check: files and variables, keys and lines
// ---------------------------------------------------------------------------

/// A config naming a certificate that doesn't exist, a key file of mode
/// 0644, an unset passphrase variable and an audit file in a missing folder.
fn broken_files_config(dir: &Path) -> (PathBuf, String) {
    std::fs::write(
        dir.join("k2.key"),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )
    .expect("key");
    #[cfg(unix)]
    set_mode(&dir.join("k2.key"), 0o644);
    std::fs::write(
        dir.join("admin.token"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .expect("token");
    #[cfg(unix)]
    set_mode(&dir.join("admin.token"), 0o644);
    let text = format!(
        r#"listen:
  address: "127.0.0.1:8443"
  tls:
    cert: certs/missing.crt
    key: certs/missing.key
admin:
  address: "127.0.0.1:9901"
  token_file: admin.token
upstreams:
  legacy: {{ url: "http://127.0.0.1:8080" }}
keys:
  active: k2
  ring:
    - id: k1
      passphrase_env: FIELDSEAL_TEST_UNSET_PASSPHRASE
      salt_env: FIELDSEAL_TEST_UNSET_SALT
    - {{ id: k2, file: k2.key }}
audit:
  sink: {}/no-such-folder/audit.log
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn"]
"#,
        dir.display()
    );
    let path = dir.join("fieldseal.yaml");
    std::fs::write(&path, &text).expect("config");
    (path, text)
}

fn check_cmd(path: &Path, extra: &[&str]) -> Output {
    let mut c = bin(&["check", "--config"]);
    c.arg(path).args(extra);
    c.env_remove("FIELDSEAL_TEST_UNSET_PASSPHRASE")
        .env_remove("FIELDSEAL_TEST_UNSET_SALT");
    output(&mut c)
}

#[test]
fn check_opens_every_file_and_variable_and_names_key_and_line() {
    let t = tempfile::tempdir().expect("tempdir");
    let (path, text) = broken_files_config(t.path());
    let out = check_cmd(&path, &[]);
    let stderr = utf8(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "no ok line: {}", utf8(&out.stdout));
    let p = path.display();
    let expect = [
        (
            line_of(&text, "cert: certs/missing.crt"),
            "listen.tls.cert:",
            "missing.crt",
        ),
        (
            line_of(&text, "passphrase_env:"),
            "keys.ring[0] (k1).passphrase_env:",
            "FIELDSEAL_TEST_UNSET_PASSPHRASE is not set",
        ),
        (
            line_of(&text, "file: k2.key"),
            "keys.ring[1] (k2).file:",
            "mode 0644",
        ),
        (line_of(&text, "sink:"), "audit.sink:", "no-such-folder"),
        (
            line_of(&text, "token_file:"),
            "admin.token_file:",
            "mode 0644",
        ),
    ];
    for (line, key, problem) in expect {
        let found = stderr.lines().any(|l| {
            l.starts_with(&format!("{p}:{line}:")) && l.contains(key) && l.contains(problem)
        });
        assert!(found, "want {p}:{line}:COL: {key} ... {problem}\n{stderr}");
    }
    // The key file's bytes and the passphrase variable's name are fine to
    // print; no key material is.
    assert!(!stderr.contains("AAAAAAAA"), "{stderr}");
    assert!(!stderr.contains("0123456789abcdef"), "{stderr}");

    // Fixed one by one, the errors go away until check says ok.
    write_certs(&t.path().join("certs"));
    let fixed = text
        .replace("certs/missing.crt", "certs/server.crt")
        .replace("certs/missing.key", "certs/server.key")
        .replace(&format!("{}/no-such-folder/", t.path().display()), "");
    std::fs::write(&path, &fixed).expect("config");
    #[cfg(unix)]
    set_mode(&t.path().join("k2.key"), 0o600);
    #[cfg(unix)]
    set_mode(&t.path().join("admin.token"), 0o600);
    let mut c = bin(&["check", "--config"]);
    c.arg(&path)
        .env(
            "FIELDSEAL_TEST_UNSET_PASSPHRASE",
            "correct horse battery staple",
        )
        .env("FIELDSEAL_TEST_UNSET_SALT", "0123456789abcdef0123");
    let out = output(&mut c);
    assert_eq!(out.status.code(), Some(0), "{}", utf8(&out.stderr));
    assert!(
        utf8(&out.stdout).contains(": ok: "),
        "{}",
        utf8(&out.stdout)
    );
    assert!(
        !t.path().join("audit.log").exists(),
        "check creates no audit file"
    );
    assert_eq!(
        entries(t.path()),
        vec!["admin.token", "certs", "fieldseal.yaml", "k2.key"]
    );
}

#[test]
fn check_no_load_skips_files_and_load_is_still_accepted() {
    let t = tempfile::tempdir().expect("tempdir");
    let (path, _) = broken_files_config(t.path());
    let out = check_cmd(&path, &["--no-load"]);
    assert_eq!(out.status.code(), Some(0), "{}", utf8(&out.stderr));
    let stdout = utf8(&out.stdout);
    assert!(
        stdout.contains(": ok: ") && stdout.contains("--no-load"),
        "{stdout}"
    );
    // `--load` was the old opt-in; it is the default now and still accepted.
    let out = check_cmd(&path, &["--load"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(utf8(&out.stderr).contains("listen.tls.cert"));
    let out = check_cmd(&path, &["--load", "--no-load"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "contradictory flags are a usage error"
    );
}

#[test]
fn check_refuses_a_redirect_listener_that_is_its_own_upstream() {
    // The example config's old shape: redirect_http on 0.0.0.0:8080, the
    // upstream on 127.0.0.1:8080, so the redirect answered itself.
    let t = tempfile::tempdir().expect("tempdir");
    let text = "listen: { address: \"0.0.0.0:8443\", tls: { cert: c.crt, key: c.key } }\n\
                redirect_http: { address: \"0.0.0.0:8080\" }\n\
                upstreams:\n  legacy: { url: \"http://127.0.0.1:8080\" }\n\
                routes:\n  - { name: all, match: { path_prefix: / }, upstream: legacy }\n";
    let path = t.path().join("fieldseal.yaml");
    std::fs::write(&path, text).expect("config");
    let out = check_cmd(&path, &["--no-load"]);
    let stderr = utf8(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:2:", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("redirect_http.address: 0.0.0.0:8080"),
        "{stderr}"
    );
    assert!(stderr.contains("upstream \"legacy\""), "{stderr}");
}

// ---------------------------------------------------------------------------
// Shadowed encrypting routes, over the real binary
// ---------------------------------------------------------------------------

fn shadow_config(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: &str,
    ack: bool,
) -> PathBuf {
    if !dir.join("server.crt").exists() {
        write_certs(dir);
    }
    let key = dir.join("k1.key");
    if !key.exists() {
        fieldseal::crypto::write_key_file(&key).expect("key");
    }
    let ack = if ack {
        "    shadows_ok: [patients]\n"
    } else {
        ""
    };
    let text = format!(
        r#"listen: {{ address: "{listen}", tls: {{ cert: server.crt, key: server.key }} }}
admin: {{ address: "{admin}" }}
upstreams:
  records: {{ url: "{upstream}", connect_timeout: 1s, timeout: 10s }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: k1.key }}
log: {{ level: info, format: text }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: records
{ack}  - name: patients
    match: {{ path_prefix: /api/patients }}
    upstream: records
    encrypt: ["$.ssn"]
"#
    );
    let path = dir.join("fieldseal.yaml");
    std::fs::write(&path, text).expect("config");
    path
}

#[test]
fn check_and_run_refuse_an_encrypting_route_shadowed_by_an_earlier_route() {
    let t = tempfile::tempdir().expect("tempdir");
    let path = shadow_config(
        t.path(),
        dead_address(),
        dead_address(),
        "http://127.0.0.1:9",
        false,
    );
    let text = std::fs::read_to_string(&path).expect("read");
    let line = line_of(&text, "name: api");
    for args in [&["check", "--config"][..], &["run", "--config"][..]] {
        let mut c = bin(args);
        c.arg(&path);
        let out = output(&mut c);
        let stderr = utf8(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{}:{line}:", path.display())),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("routes[0] (api): shadows routes[1] (patients)"),
            "{stderr}"
        );
        assert!(
            stderr.contains("$.ssn") && stderr.contains("plaintext"),
            "{stderr}"
        );
        assert!(stderr.contains("shadows_ok: [patients]"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_shadow_runs_and_stays_a_warning_in_check_and_the_start_log() {
    let backend = Backend::start("records", Behavior::echo()).await;
    let t = tempfile::tempdir().expect("tempdir");
    let (listen, admin) = (dead_address(), dead_address());
    let path = shadow_config(t.path(), listen, admin, &backend.url(), true);

    let mut c = bin(&["check", "--config"]);
    c.arg(&path);
    let out = output(&mut c);
    let stderr = utf8(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: routes[0] (api) shadows routes[1] (patients)"),
        "{stderr}"
    );
    assert!(stderr.contains("acknowledged"), "{stderr}");

    let log = t.path().join("run.stderr");
    let mut run = Child::spawn(bin(&["run", "--config"]).arg(&path), &log);
    wait_healthy(admin, &mut run, &log).await;
    let started = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        started.contains("routes[0] (api) shadows routes[1] (patients)"),
        "start log: {started}"
    );
    // The healthcheck command sees the same admin listener.
    let out = output(bin(&["healthcheck", "--config"]).arg(&path));
    assert_eq!(out.status.code(), Some(0), "{}", utf8(&out.stderr));
    run.signal("-TERM");
    assert_eq!(run.wait(), Some(0));
}

/// The admin listener's /routes lists, for each route, the later routes it
/// takes requests from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_show_which_later_routes_each_route_shadows() {
    let backend = Backend::start("records", Behavior::echo()).await;
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("k1.key");
    fieldseal::crypto::write_key_file(&key).expect("key");
    let rest = format!(
        r#"upstreams:
  records: {{ url: "{url}" }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{key}" }}
routes:
  - name: api
    match: {{ path_prefix: /api, methods: [GET] }}
    upstream: records
    shadows_ok: [patients]
  - name: patients
    match: {{ path_prefix: /api/patients }}
    upstream: records
    encrypt: ["$.ssn"]
"#,
        url = backend.url(),
        key = key.display()
    );
    let proxy = TestProxy::start(&rest).await;
    let (status, body) = admin_get(&proxy, "/routes").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let shadows = &v["routes"][0]["shadows"];
    assert_eq!(shadows[0]["route"], "patients", "{v}");
    assert_eq!(shadows[0]["every_request"], false, "GET only: {v}");
    assert_eq!(shadows[0]["example"], "GET /api/patients", "{v}");
    assert_eq!(v["routes"][1]["shadows"], serde_json::json!([]), "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("acknowledged")),
        "{v}"
    );
    proxy.stop().await;
}

async fn wait_healthy(admin: SocketAddr, child: &mut Child, log: &Path) {
    let client = reqwest::Client::builder()
        .timeout(STEP)
        .build()
        .expect("client");
    bounded("proxy readiness", async {
        loop {
            if let Ok(Some(status)) = child.child.try_wait() {
                panic!(
                    "fieldseal exited early with {status}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if let Ok(r) = client.get(format!("http://{admin}/healthz")).send().await {
                if r.status() == StatusCode::OK {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// run: a listener that cannot bind is named
// ---------------------------------------------------------------------------

#[test]
fn run_names_the_listener_and_address_that_cannot_bind() {
    let t = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr");
    let cases = [
        ("listen.address", busy, dead_address()),
        ("admin.address", dead_address(), busy),
    ];
    for (key, listen, admin) in cases {
        let path = shadow_config(t.path(), listen, admin, "http://127.0.0.1:9", true);
        let out = output(bin(&["run", "--config"]).arg(&path));
        let stderr = utf8(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let want = format!("{key} {busy}: address in use");
        assert!(stderr.contains(&want), "want {want:?} in {stderr}");
    }
    drop(taken);
}

#[test]
fn run_refuses_what_check_refuses_before_binding_anything() {
    let t = tempfile::tempdir().expect("tempdir");
    let (path, text) = broken_files_config(t.path());
    let mut c = bin(&["run", "--config"]);
    c.arg(&path).env_remove("FIELDSEAL_TEST_UNSET_PASSPHRASE");
    let out = output(&mut c);
    let stderr = utf8(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = line_of(&text, "file: k2.key");
    assert!(
        stderr.contains(&format!("{}:{line}:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("keys.ring[1] (k2).file"), "{stderr}");
}

// ---------------------------------------------------------------------------
// init
// ---------------------------------------------------------------------------

#[test]
fn init_writes_a_starter_that_check_accepts_and_never_overwrites() {
    let t = tempfile::tempdir().expect("tempdir");
    // An unrelated file in the folder is fine: only init's own names matter.
    std::fs::write(t.path().join("README"), b"mine").expect("write");
    let out = output(bin(&["init", "--dir"]).arg(t.path()));
    assert_eq!(out.status.code(), Some(0), "{}", utf8(&out.stderr));
    assert_eq!(
        entries(t.path()),
        vec![
            "README",
            "certs",
            "fieldseal.schema.json",
            "fieldseal.yaml",
            "keys"
        ]
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&t.path().join("keys")), 0o700);
        assert_eq!(mode(&t.path().join("keys/k1.key")), 0o600);
        assert_eq!(mode(&t.path().join("certs/server.key")), 0o600);
    }
    let config = t.path().join("fieldseal.yaml");
    let starter = std::fs::read_to_string(&config).expect("config");
    assert!(starter.contains("# "), "commented");
    let out = output(bin(&["check", "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(0), "{}", utf8(&out.stderr));
    assert!(out.stderr.is_empty(), "no warnings: {}", utf8(&out.stderr));

    // A second init refuses and changes nothing.
    let key = std::fs::read(t.path().join("keys/k1.key")).expect("key");
    let out = output(bin(&["init", "--dir"]).arg(t.path()));
    let stderr = utf8(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already exist") && stderr.contains("never overwrites"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(t.path().join("keys/k1.key")).expect("key"),
        key
    );
    assert_eq!(std::fs::read_to_string(&config).expect("config"), starter);

    // One file in the way is enough to refuse, and nothing else is written.
    let other = t.path().join("other");
    std::fs::create_dir_all(other.join("keys")).expect("mkdir");
    std::fs::write(other.join("keys/k1.key"), b"not mine to replace").expect("write");
    let out = output(bin(&["init", "--dir"]).arg(&other));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(entries(&other), vec!["keys"]);
    assert_eq!(
        std::fs::read(other.join("keys/k1.key")).expect("read"),
        b"not mine to replace"
    );
}

/// The starter config, run by the real binary: an SSN posted through it
/// reaches the backend only as an envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_starter_config_serves_and_seals_end_to_end() {
    let backend = Backend::start("app", Behavior::echo()).await;
    let t = tempfile::tempdir().expect("tempdir");
    let (listen, admin) = (dead_address(), dead_address());
    let out = output(
        bin(&["init", "--dir"])
            .arg(t.path())
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string()])
            .args(["--upstream", &backend.url()]),
    );
    assert_eq!(out.status.code(), Some(0), "{}", utf8(&out.stderr));
    let config = t.path().join("fieldseal.yaml");
    let log = t.path().join("run.stderr");
    let mut run = Child::spawn(bin(&["run", "--config"]).arg(&config), &log);
    wait_healthy(admin, &mut run, &log).await;

    let cert = std::fs::read(t.path().join("certs/server.crt")).expect("cert");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).expect("pem"))
        .resolve("localhost", listen)
        .timeout(STEP)
        .build()
        .expect("client");
    let r = client
        .post(format!("https://localhost:{}/api/users", listen.port()))
        .header("content-type", "application/json")
        .body(r#"{"name":"Ada","ssn":"123-45-6789"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    let body = String::from_utf8_lossy(&seen[0].body);
    assert!(
        !body.contains("123-45-6789"),
        "plaintext reached the backend: {body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        v["ssn"].as_str().is_some_and(|s| s.starts_with("fs1:")),
        "{body}"
    );
    run.signal("-TERM");
    assert_eq!(run.wait(), Some(0));
}

// ---------------------------------------------------------------------------
// completions, man, healthcheck
// ---------------------------------------------------------------------------

const SUBCOMMANDS: [&str; 8] = [
    "run",
    "check",
    "demo",
    "init",
    "config-schema",
    "completions",
    "healthcheck",
    "rewrap",
];

#[test]
fn completions_are_generated_for_each_shell() {
    let bash = output(&mut bin(&["completions", "bash"]));
    assert_eq!(bash.status.code(), Some(0));
    let script = utf8(&bash.stdout);
    for s in SUBCOMMANDS {
        assert!(script.contains(s), "bash completion lacks {s}");
    }
    assert!(script.contains("--no-load"), "options complete too");
    // The script is valid bash.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fieldseal.bash");
    std::fs::write(&file, &bash.stdout).expect("write");
    let n = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("bash");
    assert!(n.status.success(), "{}", utf8(&n.stderr));

    let zsh = output(&mut bin(&["completions", "zsh"]));
    assert!(utf8(&zsh.stdout).starts_with("#compdef fieldseal"));
    let fish = output(&mut bin(&["completions", "fish"]));
    assert!(utf8(&fish.stdout).contains("complete -c fieldseal"));
    let bad = output(&mut bin(&["completions", "tcsh"]));
    assert_eq!(bad.status.code(), Some(2), "unknown shell is a usage error");
}

#[test]
fn man_pages_are_generated_from_the_cli() {
    let out = output(&mut bin(&["man"]));
    assert_eq!(out.status.code(), Some(0));
    let page = utf8(&out.stdout);
    assert!(page.contains(".TH fieldseal 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for s in SUBCOMMANDS {
        assert!(
            page.contains(&format!("fieldseal\\-{}(1)", s.replace('-', "\\-"))),
            "lacks {s}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = output(bin(&["man", "--out-dir"]).arg(dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", utf8(&out.stderr));
    let check = std::fs::read_to_string(dir.path().join("fieldseal-check.1")).expect("page");
    assert!(check.contains("no\\-load"), "{check}");
    assert!(dir.path().join("fieldseal-audit-verify.1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_answers_by_exit_code() {
    let backend = Backend::start("b", Behavior::echo()).await;
    let proxy = TestProxy::start(&catch_all(&backend.url())).await;
    let admin = proxy.admin.to_string();
    let ok = tokio::task::spawn_blocking(move || {
        let healthz = output(&mut bin(&["healthcheck", "--address", &admin]));
        let readyz = output(&mut bin(&["healthcheck", "--address", &admin, "--ready"]));
        (healthz, readyz)
    })
    .await
    .expect("task");
    assert_eq!(ok.0.status.code(), Some(0), "{}", utf8(&ok.0.stderr));
    assert!(utf8(&ok.0.stdout).contains("/healthz: ok"));
    assert_eq!(ok.1.status.code(), Some(0), "{}", utf8(&ok.1.stderr));

    // A config whose admin listens on every address is probed on loopback.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!("admin: {{ address: \"0.0.0.0:{}\" }}\n", proxy.admin.port()),
    )
    .expect("write");
    let out =
        tokio::task::spawn_blocking(move || output(bin(&["healthcheck", "--config"]).arg(&config)))
            .await
            .expect("task");
    assert_eq!(out.status.code(), Some(0), "{}", utf8(&out.stderr));
    proxy.stop().await;

    // Nothing listening: exit 1, saying why.
    let dead = dead_address().to_string();
    let out = tokio::task::spawn_blocking(move || {
        output(&mut bin(&[
            "healthcheck",
            "--address",
            &dead,
            "--timeout",
            "2s",
        ]))
    })
    .await
    .expect("task");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        utf8(&out.stderr).contains("fieldseal healthcheck:"),
        "{}",
        utf8(&out.stderr)
    );
}
