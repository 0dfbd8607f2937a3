//! `fieldseal demo` as a user meets it: the real binary on free ports, and
//! the commands it prints parsed as a POSIX shell would read them (quotes,
//! `$VAR`, continued lines) and carried out: curl commands over real TLS
//! trusting only the demo's certificate (`--cacert`), the printed
//! `subjects erase` command run as printed. A command that is wrong (a bad
//! port, path, token, body, an unknown variable or option) fails the test.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::Child;
use common::{bounded, STEP};
use http::StatusCode;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fieldseal");
const USER_SSN: &str = "123-45-6789";
const ALICE_SSN: &str = "078-05-1120";

/// The running demo, killed if the test fails before it stops.
struct Demo {
    child: Child,
    dir: PathBuf,
    stderr: PathBuf,
    script: Script,
}

impl Demo {
    fn start(t: &Path) -> Demo {
        let dir = t.join("demo");
        let stderr = t.join("demo.stderr");
        let mut child = Child::spawn(
            Command::new(BIN)
                .args(["demo", "--listen", "127.0.0.1:0", "--dir"])
                .arg(&dir)
                .stdin(Stdio::null()),
            &stderr,
        );
        let lines = child.read_until("Press Ctrl-C");
        Demo {
            child,
            dir,
            stderr,
            script: Script::parse(&lines),
        }
    }

    /// SIGTERM, then the exit code (bounded).
    fn stop(&mut self) -> Option<i32> {
        self.child.signal("-TERM");
        self.child.wait()
    }
}

// ---------------------------------------------------------------------------
// The printed script, read as sh reads it
// ---------------------------------------------------------------------------

/// The commands the demo printed, in order, with the variables it set.
struct Script {
    vars: HashMap<String, String>,
    commands: Vec<Vec<String>>,
}

impl Script {
    /// Indented lines are the script; `#` lines are comments; a line
    /// ending in `\` continues on the next; `NAME=word` sets a variable.
    fn parse(lines: &[String]) -> Script {
        let mut joined: Vec<String> = Vec::new();
        let mut pending: Option<String> = None;
        for l in lines {
            let cont = pending.take();
            if cont.is_none() && !l.starts_with("  ") {
                continue;
            }
            let mut line = cont.unwrap_or_default();
            line.push_str(l.trim());
            match line.strip_suffix('\\') {
                Some(head) => pending = Some(format!("{head} ")),
                None => joined.push(line),
            }
        }
        assert!(pending.is_none(), "a continued line runs off the end");
        let mut vars = HashMap::new();
        let mut commands = Vec::new();
        for line in joined {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((name, value)) = assignment(&line) {
                let words = shell_words(value, &vars);
                assert_eq!(words.len(), 1, "{name}= must set one word: {line}");
                vars.insert(name.to_string(), words[0].clone());
                continue;
            }
            commands.push(shell_words(&line, &vars));
        }
        Script { vars, commands }
    }

    fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("the demo sets no {name}"))
    }
}

fn assignment(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once('=')?;
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        && !value.starts_with(' ');
    ok.then_some((name, value))
}

/// POSIX word splitting of one line: single quotes (literal), double
/// quotes (`$NAME` expanded, `\` escapes `$ " \`), bare `$NAME`, `\x`. An
/// unset variable, an unterminated quote or `$(`/backticks fail the test.
fn shell_words(line: &str, vars: &HashMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut it = line.chars().peekable();
    let expand = |it: &mut std::iter::Peekable<std::str::Chars>, out: &mut String| {
        let mut name = String::new();
        while let Some(&c) = it.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                it.next();
            } else {
                break;
            }
        }
        assert!(!name.is_empty(), "a bare $ or $( in {line:?}");
        out.push_str(
            vars.get(&name)
                .unwrap_or_else(|| panic!("${name} is used before the demo sets it: {line:?}")),
        );
    };
    while let Some(c) = it.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match it.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => panic!("unterminated ' in {line:?}"),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match it.next() {
                        Some('"') => break,
                        Some('\\') => match it.peek() {
                            Some(&c @ ('$' | '"' | '\\' | '`')) => {
                                w.push(c);
                                it.next();
                            }
                            _ => w.push('\\'),
                        },
                        Some('$') => expand(&mut it, w),
                        Some('`') => panic!("backticks in {line:?}"),
                        Some(c) => w.push(c),
                        None => panic!("unterminated \" in {line:?}"),
                    }
                }
            }
            '$' => expand(&mut it, cur.get_or_insert_with(String::new)),
            '\\' => {
                let c = it.next().expect("a trailing backslash");
                cur.get_or_insert_with(String::new).push(c);
            }
            '`' | ';' | '&' | '<' | '>' => panic!("{c:?} in {line:?}: not a plain command"),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = cur {
        words.push(w);
    }
    words
}

// ---------------------------------------------------------------------------
// curl, as the printed options mean it
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Curl {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    cacert: Option<PathBuf>,
}

impl Curl {
    /// The options the demo may use; any other fails the test.
    fn parse(words: &[String]) -> Curl {
        assert_eq!(words[0], "curl");
        let mut c = Curl {
            method: String::new(),
            url: String::new(),
            headers: Vec::new(),
            body: None,
            cacert: None,
        };
        let mut method = None;
        let mut it = words[1..].iter();
        while let Some(w) = it.next() {
            let mut arg = || {
                it.next()
                    .unwrap_or_else(|| panic!("{w} needs a value"))
                    .clone()
            };
            match w.as_str() {
                "-s" | "--silent" => {}
                "--cacert" => c.cacert = Some(PathBuf::from(arg())),
                "-H" | "--header" => {
                    let h = arg();
                    let (n, v) = h.split_once(':').unwrap_or_else(|| panic!("header {h:?}"));
                    c.headers.push((n.trim().to_string(), v.trim().to_string()));
                }
                "-d" | "--data" => c.body = Some(arg()),
                "-X" | "--request" => method = Some(arg()),
                u if u.starts_with("http://") || u.starts_with("https://") => {
                    assert!(c.url.is_empty(), "two URLs in {words:?}");
                    c.url = u.to_string();
                }
                other => panic!("curl option {other:?} the test does not know: {words:?}"),
            }
        }
        assert!(!c.url.is_empty(), "no URL in {words:?}");
        c.method = method.unwrap_or_else(|| if c.body.is_some() { "POST" } else { "GET" }.into());
        c
    }

    fn bearer(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.strip_prefix("Bearer "))
    }

    fn path(&self) -> &str {
        let rest = self.url.split_once("://").expect("scheme").1;
        rest.find('/').map_or("/", |i| &rest[i..])
    }

    fn without_auth(&self) -> Curl {
        let mut c = self.clone();
        c.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
        c
    }

    /// Carries the request out: https only with the given CA file (curl
    /// without `-k` verifies; so does this), http as it is.
    async fn run(&self) -> (StatusCode, Vec<u8>) {
        let mut b = reqwest::Client::builder().timeout(STEP);
        if self.url.starts_with("https://") {
            let ca = self
                .cacert
                .as_ref()
                .unwrap_or_else(|| panic!("an https command without --cacert: {}", self.url));
            let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("{}: {e}", ca.display()));
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM"));
        }
        let client = b.build().expect("client");
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).expect("method");
        let mut rb = client.request(method, &self.url);
        for (n, v) in &self.headers {
            rb = rb.header(n, v);
        }
        if let Some(body) = &self.body {
            // curl -d sends form content type unless a header says otherwise.
            if !self
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            {
                rb = rb.header("content-type", "application/x-www-form-urlencoded");
            }
            rb = rb.body(body.clone());
        }
        let resp = bounded(&self.url, rb.send())
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", self.method, self.url));
        let status = resp.status();
        let body = bounded("body", resp.bytes()).await.expect("body").to_vec();
        (status, body)
    }

    async fn json(&self) -> (StatusCode, Value) {
        let (s, b) = self.run().await;
        let v = serde_json::from_slice(&b).unwrap_or_else(|_| {
            panic!(
                "{} {}: not JSON: {}",
                self.method,
                self.url,
                String::from_utf8_lossy(&b)
            )
        });
        (s, v)
    }
}

// ---------------------------------------------------------------------------
// The flow
// ---------------------------------------------------------------------------

/// What each printed command is, in the order a user runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    UserPost,
    UserGet,
    BackendUser,
    AlicePost,
    AliceGet,
    BackendRecord,
    BobGet,
    AdminErase,
    CliErase,
    Readyz,
    Metrics,
}

enum Cmd {
    Curl(Curl),
    Program(Vec<String>),
}

/// Classifies every printed command; a command the test cannot place (or
/// a piped one other than the metrics grep) fails it.
fn steps(script: &Script) -> Vec<(Step, Cmd)> {
    let alice = script.var("ALICE");
    let bob = script.var("BOB");
    let admin = script.var("ADMIN_TOKEN");
    let mut out = Vec::new();
    for words in &script.commands {
        if let Some(bar) = words.iter().position(|w| w == "|") {
            assert_eq!(&words[bar + 1..], ["grep", "fieldseal_fields"], "{words:?}");
            let c = Curl::parse(&words[..bar]);
            assert_eq!(c.path(), "/metrics");
            out.push((Step::Metrics, Cmd::Curl(c)));
            continue;
        }
        if words[0] != "curl" {
            out.push((Step::CliErase, Cmd::Program(words.clone())));
            continue;
        }
        let c = Curl::parse(words);
        let https = c.url.starts_with("https://");
        let step = match (https, c.method.as_str(), c.path(), c.bearer()) {
            (true, "POST", "/api/users", None) => Step::UserPost,
            (true, "GET", "/api/users/1", None) => Step::UserGet,
            (false, "GET", "/api/users/1", None) => Step::BackendUser,
            (true, "POST", "/api/records", Some(t)) if t == alice => Step::AlicePost,
            (true, "GET", "/api/records/1", Some(t)) if t == alice => Step::AliceGet,
            (false, "GET", "/api/records/1", None) => Step::BackendRecord,
            (true, "GET", "/api/records/1", Some(t)) if t == bob => Step::BobGet,
            (false, "POST", "/subjects/erase", Some(t)) if t == admin => Step::AdminErase,
            (false, "GET", "/readyz", None) => Step::Readyz,
            _ => panic!("a printed command the flow does not know: {words:?}"),
        };
        out.push((step, Cmd::Curl(c)));
    }
    let order: Vec<Step> = out.iter().map(|(s, _)| *s).collect();
    use Step::*;
    assert_eq!(
        order,
        [
            UserPost,
            UserGet,
            BackendUser,
            AlicePost,
            AliceGet,
            BackendRecord,
            BobGet,
            AdminErase,
            CliErase,
            AliceGet,
            Readyz,
            Metrics
        ],
        "the printed flow"
    );
    out
}

fn ssn(v: &Value) -> &Value {
    v.get("ssn").unwrap_or_else(|| panic!("no ssn in {v}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EraseBy {
    Admin,
    Cli,
}

/// Runs the printed flow, erasing alice through `by` (the other erase
/// command is left out, as a user picks one).
async fn printed_flow(by: EraseBy) {
    let t = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo::start(t.path());
    let steps = steps(&demo.script);
    let curl = |s: Step, nth: usize| -> &Curl {
        let found = steps.iter().filter(|(k, _)| *k == s).nth(nth);
        match found {
            Some((_, Cmd::Curl(c))) => c,
            _ => panic!("no {s:?}"),
        }
    };

    // The deployment-scoped route, as before: plaintext to the client, fs1 at the backend.
    let (s, v) = curl(Step::UserPost, 0).json().await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(ssn(&v), USER_SSN);
    let (s, v) = curl(Step::UserGet, 0).json().await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ssn(&v), USER_SSN);
    assert_eq!(v["card"]["number"], "4111111111111111");
    let (s, raw) = curl(Step::BackendUser, 0).run().await;
    assert_eq!(s, StatusCode::OK);
    let stored: Value = serde_json::from_slice(&raw).expect("json");
    assert!(
        ssn(&stored).as_str().unwrap().starts_with("fs1:"),
        "{stored}"
    );
    for plain in [USER_SSN, "4111111111111111", "+1 555 0100"] {
        assert!(!String::from_utf8_lossy(&raw).contains(plain), "{plain}");
    }

    // The JWKS the proxy fetches holds one public EC key and nothing private.
    let jwks_url = jwks_url_of(&demo);
    let jwks: Value = reqwest::get(&jwks_url)
        .await
        .expect("the JWKS is served")
        .json()
        .await
        .expect("JSON");
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{jwks}");
    assert_eq!(keys[0]["kty"], "EC");
    assert!(keys[0].get("d").is_none(), "a private key in the JWKS");

    // alice writes and reads plaintext; the backend holds an fs2 envelope.
    let (s, v) = curl(Step::AlicePost, 0).json().await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(ssn(&v), ALICE_SSN);
    assert_eq!(v["id"], 1);
    let (s, v) = curl(Step::AliceGet, 0).json().await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(ssn(&v), ALICE_SSN);
    let (s, stored_raw) = curl(Step::BackendRecord, 0).run().await;
    assert_eq!(s, StatusCode::OK);
    let stored: Value = serde_json::from_slice(&stored_raw).expect("json");
    let envelope = ssn(&stored).as_str().expect("a string");
    assert!(envelope.starts_with("fs2:"), "{stored}");
    assert!(!String::from_utf8_lossy(&stored_raw).contains(ALICE_SSN));

    // bob gets the record with the ssn null (on_foreign_subject: "null");
    // without a token the same request is 401.
    let (s, v) = curl(Step::BobGet, 0).json().await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(ssn(&v), &Value::Null, "{v}");
    assert_eq!(v["owner"], "alice");
    let (s, v) = curl(Step::BobGet, 0).without_auth().json().await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");

    // Erase alice, one way or the other.
    match by {
        EraseBy::Admin => {
            let (s, v) = curl(Step::AdminErase, 0).json().await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(v["status"], "erased");
            assert_eq!(v["versions_destroyed"], 1);
        }
        EraseBy::Cli => {
            let Some((_, Cmd::Program(words))) = steps.iter().find(|(s, _)| *s == Step::CliErase)
            else {
                panic!("no erase command");
            };
            assert_eq!(
                std::fs::canonicalize(&words[0]).expect("the printed program exists"),
                std::fs::canonicalize(BIN).expect("bin"),
                "the printed program is this fieldseal"
            );
            let out = Command::new(&words[0])
                .args(&words[1..])
                .stdin(Stdio::null())
                .output()
                .expect("run the printed erase command");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{words:?}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("erased (1 key versions destroyed)"),
                "{stdout}"
            );
        }
    }

    // alice now reads the marker (on_erased: marker). After the command-line
    // erase the demo may serve its cached key until key_store.cache_ttl
    // has passed: until then alice's plaintext, never anything else.
    let after = curl(Step::AliceGet, 1);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (s, v) = after.json().await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if ssn(&v) == "[erased]" {
            break;
        }
        assert_eq!(
            by,
            EraseBy::Cli,
            "in force at once after the admin erase: {v}"
        );
        assert_eq!(ssn(&v), ALICE_SSN, "{v}");
        assert!(Instant::now() < deadline, "the erase never took effect");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, raw_after) = curl(Step::BackendRecord, 0).run().await;
    assert_eq!(raw_after, stored_raw, "the backend's bytes are unchanged");
    // A new write for alice follows the tombstone (on_erased_write: refuse):
    // 410, and nothing reaches the backend.
    let (s, v) = curl(Step::AlicePost, 0).json().await;
    assert_eq!(s, StatusCode::GONE, "{v}");
    let (s, _) = curl(Step::BackendRecord, 0).run().await;
    assert_eq!(s, StatusCode::OK);
    let backend = curl(Step::BackendRecord, 0)
        .url
        .replace("/api/records/1", "/api/records");
    let list: Value = reqwest::get(&backend)
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");

    let (s, _) = curl(Step::Readyz, 0).run().await;
    assert_eq!(s, StatusCode::OK);
    let (s, metrics) = curl(Step::Metrics, 0).run().await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&metrics).contains("fieldseal_fields"));

    // What the demo wrote, and nothing of it left after it stops.
    let mut files: Vec<String> = std::fs::read_dir(&demo.dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f == "keys.db"),
        "the key store is in the demo's folder: {files:?}"
    );
    for f in &files {
        assert!(
            [
                "admin.token",
                "demo.key",
                "fieldseal.yaml",
                "keys.db",
                "keys.db-shm",
                "keys.db-wal",
                "server.crt",
                "server.key"
            ]
            .contains(&f.as_str()),
            "the demo wrote {f}"
        );
    }
    let code = demo.stop();
    let stderr = std::fs::read_to_string(&demo.stderr).unwrap_or_default();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!demo.dir.exists(), "the demo's folder is removed: {stderr}");
    for secret in [demo.script.var("ALICE"), demo.script.var("ADMIN_TOKEN")] {
        assert!(!stderr.contains(secret), "a token in the demo's log");
    }
}

/// The JWKS URL the demo prints in its comment ("its JWKS at URL").
fn jwks_url_of(demo: &Demo) -> String {
    let config = std::fs::read_to_string(demo.dir.join("fieldseal.yaml")).expect("config");
    let line = config
        .lines()
        .find(|l| l.trim_start().starts_with("jwks_url:"))
        .expect("the demo config names a jwks_url");
    line.split('"').nth(1).expect("quoted").to_string()
}

#[tokio::test]
async fn the_printed_flow_works_with_the_admin_erase() {
    printed_flow(EraseBy::Admin).await;
}

#[tokio::test]
async fn the_printed_flow_works_with_the_command_line_erase() {
    printed_flow(EraseBy::Cli).await;
}
