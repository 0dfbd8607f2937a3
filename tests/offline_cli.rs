//! The offline tools of the real binary: `encrypt`, `decrypt`, `rewrap`,
//! `keygen`, `keys [--scan]`, and `check` on bad field paths.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::run_bin;
use fieldseal::crypto::{KeySource, KeySpec, Keyring, KeyringSpec};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_fieldseal");

/// A config (with key files k1, k2) in its own temp dir.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn config_text(active: &str, routes: &str) -> String {
    format!(
        r#"listen: {{ address: "127.0.0.1:8443", tls: {{ cert: server.crt, key: server.key }} }}
upstreams:
  legacy: {{ url: "http://127.0.0.1:8080" }}
keys:
  active: {active}
  ring:
    - {{ id: k1, file: k1.key }}
    - {{ id: k2, file: k2.key }}
routes:
{routes}"#
    )
}

const ROUTES: &str = r#"  - name: users
    match: { path_prefix: /api/users }
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number", "$.contacts[*].phone"]
    decrypt: ["$.ssn", "$..card.number", "$.contacts[*].phone"]
  - name: plain
    match: { path_prefix: / }
    upstream: legacy
"#;

impl Setup {
    fn new(active: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        for id in ["k1", "k2"] {
            fieldseal::crypto::write_key_file(&dir.path().join(format!("{id}.key")))
                .expect("key file");
        }
        let config = dir.path().join("fieldseal.yaml");
        std::fs::write(&config, config_text(active, ROUTES)).expect("config");
        Setup { dir, config }
    }

    fn set_active(&self, active: &str) {
        std::fs::write(&self.config, config_text(active, ROUTES)).expect("config");
    }

    fn ring(&self) -> Keyring {
        Keyring::load(&KeyringSpec {
            active: "k1".into(),
            keys: ["k1", "k2"]
                .iter()
                .map(|id| KeySpec {
                    id: id.to_string(),
                    source: KeySource::File(self.dir.path().join(format!("{id}.key"))),
                })
                .collect(),
            pbkdf2_iterations: 100_000,
        })
        .expect("ring")
    }

    /// Runs `fieldseal <args> --config <config>` with `stdin`.
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let config = self.config.to_str().expect("utf-8 path");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config]);
        run_bin(&all, stdin.as_bytes())
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("output line {l:?}: {e}")))
        .collect()
}

fn text(v: &Value) -> String {
    serde_json::to_string(v).expect("json")
}

fn is_envelope_under(v: &Value, kid: &str) -> bool {
    v.as_str()
        .is_some_and(|s| s.starts_with(&format!("fs1:{kid}:")))
}

fn doc(n: u32) -> Value {
    json!({
        "id": n,
        "name": format!("user {n}"),
        "ssn": format!("123-45-{n:04}"),
        "card": { "number": 4111111111110000u64 + u64::from(n), "exp": "12/29" },
        "contacts": [
            { "type": "home", "phone": format!("555-01{n:02}") },
            { "type": "work", "phone": { "cc": "+44", "n": format!("2079{n:04}") } },
            { "type": "none", "phone": null },
        ],
        "amount": 12.50,
    })
}

fn assert_sealed(out: &Value, original: &Value, kid: &str) {
    for p in [
        "/ssn",
        "/card/number",
        "/contacts/0/phone",
        "/contacts/1/phone",
        "/contacts/2/phone",
    ] {
        assert!(
            is_envelope_under(out.pointer(p).expect("pointer"), kid),
            "{p} in {out}"
        );
    }
    for p in ["/id", "/name", "/card/exp", "/contacts/0/type", "/amount"] {
        assert_eq!(out.pointer(p), original.pointer(p), "{p} untouched");
    }
}

#[test]
fn encrypt_then_decrypt_json_and_ndjson_restores_exactly() {
    let s = Setup::new("k1");

    // One JSON document (pretty-printed input is fine; output is one line).
    let one = doc(1);
    let input = serde_json::to_string_pretty(&one).expect("json");
    let enc = s.run(&["encrypt", "--route", "users"], &input);
    assert!(enc.status.success(), "stderr: {}", stderr(&enc));
    let sealed = lines(&enc);
    assert_eq!(sealed.len(), 1);
    assert_sealed(&sealed[0], &one, "k1");
    for plain in ["123-45-0001", "4111111111110001", "555-0101", "20790001"] {
        assert!(!stdout(&enc).contains(plain), "{plain} in output");
    }
    let dec = s.run(&["decrypt", "--route", "users"], &stdout(&enc));
    assert!(dec.status.success(), "stderr: {}", stderr(&dec));
    let opened = lines(&dec);
    assert_eq!(opened.len(), 1);
    assert_eq!(text(&opened[0]), text(&one));

    // NDJSON, three lines.
    let docs: Vec<Value> = (1..=3).map(doc).collect();
    let input: String = docs.iter().map(|d| format!("{}\n", text(d))).collect();
    let enc = s.run(&["encrypt", "--route", "users"], &input);
    assert!(enc.status.success(), "stderr: {}", stderr(&enc));
    assert!(stderr(&enc).contains("3 documents"), "{}", stderr(&enc));
    let sealed = lines(&enc);
    assert_eq!(sealed.len(), 3);
    for (out, original) in sealed.iter().zip(&docs) {
        assert_sealed(out, original, "k1");
    }
    let dec = s.run(&["decrypt", "--route", "users"], &stdout(&enc));
    assert!(dec.status.success(), "stderr: {}", stderr(&dec));
    assert_eq!(stdout(&dec), input, "decrypt restores the NDJSON exactly");

    // Encrypting again is idempotent: genuine envelopes are left alone.
    let again = s.run(&["encrypt", "--route", "users"], &stdout(&enc));
    assert!(again.status.success(), "stderr: {}", stderr(&again));
    assert_eq!(stdout(&again), stdout(&enc));
}

#[test]
fn malformed_input_exits_non_zero_and_writes_nothing_further() {
    let s = Setup::new("k1");
    // A single broken document: nothing at all on stdout.
    let out = s.run(&["encrypt", "--route", "users"], r#"{"ssn":"123-45-6789","#);
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "", "nothing written");
    assert!(stderr(&out).contains("not valid JSON"), "{}", stderr(&out));

    // NDJSON broken on line 2: line 1 was out already, nothing after it.
    let input = format!(
        "{}\n{{\"ssn\": \"999-99-9999\" oops\n{}\n",
        text(&doc(1)),
        text(&doc(3))
    );
    let out = s.run(&["encrypt", "--route", "users"], &input);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("document 2"), "{}", stderr(&out));
    let written = lines(&out);
    assert_eq!(written.len(), 1, "stdout: {}", stdout(&out));
    assert_sealed(&written[0], &doc(1), "k1");
    assert!(!stdout(&out).contains("999-99-9999"));
    assert!(!stdout(&out).contains("123-45-0003"));

    // Decrypt stops on an envelope it cannot open, names where, not what.
    let enc = s.run(&["encrypt", "--route", "users"], &text(&doc(4)));
    let mut bad: Value = serde_json::from_str(stdout(&enc).trim()).expect("json");
    let env = bad["ssn"].as_str().expect("envelope").to_string();
    let at = env.len() - 10;
    let flipped = if &env[at..at + 1] == "A" { "B" } else { "A" };
    bad["ssn"] = json!(format!("{}{flipped}{}", &env[..at], &env[at + 1..]));
    let input = format!("{}\n{}\n", stdout(&enc).trim(), text(&bad));
    let out = s.run(&["decrypt", "--route", "users"], &input);
    assert!(!out.status.success());
    assert_eq!(lines(&out).len(), 1, "stdout: {}", stdout(&out));
    assert!(stderr(&out).contains("$['ssn']"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("123-45-0004"));

    // A route without rules is an error, not a copy.
    let out = s.run(&["encrypt", "--route", "plain"], &text(&doc(1)));
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "");
}

#[test]
fn keygen_writes_0600_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new.key");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .expect("keygen");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let meta = std::fs::metadata(&path).expect("key file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let first = std::fs::read(&path).expect("read");
    {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8_lossy(&first).trim())
            .expect("base64");
        assert_eq!(key.len(), 32);
    }
    assert!(!stdout(&out).contains(String::from_utf8_lossy(&first).trim()));

    let again = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .expect("keygen");
    assert!(!again.status.success(), "overwrote a key file");
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read(&path).expect("read"), first, "key unchanged");
}

#[test]
fn keys_lists_ids_and_scan_counts_envelopes_per_key() {
    let s = Setup::new("k2");
    let out = s.run(&["keys"], "");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "k1\nk2  (active)\n");

    // Envelopes under k1 (3), k2 (2), and one id not in the ring.
    let ring = s.ring();
    let k1 = |v: &str| ring.seal(&json!(v), "ssn").expect("seal");
    let k2 = Keyring::from_raw_keys("k2", vec![("k2".into(), [2u8; 32])]).expect("ring");
    let k9 = Keyring::from_raw_keys("k9", vec![("k9".into(), [9u8; 32])]).expect("ring");
    let input = format!(
        "{}\n{}\nnot json\n\n{}\n",
        text(&json!({ "ssn": k1("a"), "card": { "number": k1("b") } })),
        text(
            &json!({ "ssn": k2.seal(&json!("c"), "ssn").expect("seal"), "list": [k1("d"), k2.seal(&json!(1), "list").expect("seal")] })
        ),
        text(&json!({ "x": k9.seal(&json!("e"), "x").expect("seal"), "plain": "fs1" })),
    );
    let out = s.run(&["keys", "--scan"], &input);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let report = stdout(&out);
    assert!(report.contains("  k1: 3\n"), "{report}");
    assert!(report.contains("  k2: 2\n"), "{report}");
    assert!(report.contains("  k9: 1  (NOT IN RING"), "{report}");
    assert!(report.contains("(1 lines were not JSON)"), "{report}");
}

#[test]
fn rewrap_moves_everything_to_the_active_key() {
    let s = Setup::new("k1");
    let docs: Vec<Value> = (1..=3).map(doc).collect();
    let input: String = docs.iter().map(|d| format!("{}\n", text(d))).collect();
    let enc = s.run(&["encrypt", "--route", "users"], &input);
    assert!(enc.status.success(), "stderr: {}", stderr(&enc));
    let scan = s.run(&["keys", "--scan"], &stdout(&enc));
    assert!(stdout(&scan).contains("  k1: 15\n"), "{}", stdout(&scan));

    s.set_active("k2");
    let re = s.run(&["rewrap"], &stdout(&enc));
    assert!(re.status.success(), "stderr: {}", stderr(&re));
    for plain in ["123-45-0001", "555-0102"] {
        assert!(!stdout(&re).contains(plain), "rewrap wrote plaintext");
    }
    let scan = s.run(&["keys", "--scan"], &stdout(&re));
    assert!(stdout(&scan).contains("  k1: 0\n"), "{}", stdout(&scan));
    assert!(stdout(&scan).contains("  k2: 15\n"), "{}", stdout(&scan));
    let dec = s.run(&["decrypt", "--route", "users"], &stdout(&re));
    assert!(dec.status.success(), "stderr: {}", stderr(&dec));
    assert_eq!(stdout(&dec), input);
}

fn check(dir: &Path, encrypt: &str) -> Output {
    let routes = format!(
        r#"  - name: plain-first
    match: {{ path_prefix: /other }}
    upstream: legacy
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn", {encrypt}]
"#
    );
    let path = dir.join(format!("check-{}.yaml", encrypt.len()));
    std::fs::write(&path, config_text("k1", &routes)).expect("config");
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("check")
}

#[test]
fn check_names_route_and_path_of_a_bad_field_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, why) in [
        ("$.ssn[", "missing selector"),
        ("$[?(@.a)]", "filter selectors are not supported"),
        ("$.card..", "expected a member name"),
    ] {
        let out = check(dir.path(), &format!("\"{path}\""));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{path}: {err}");
        assert!(err.contains("users"), "{path}: route not named: {err}");
        assert!(!err.contains("plain-first"), "{path}: wrong route: {err}");
        assert!(err.contains(path), "{path}: path not named: {err}");
        assert!(err.contains(why), "{path}: {err}");
    }
    // The same file with a good path passes.
    let out = check(dir.path(), "\"$.card.number\"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
