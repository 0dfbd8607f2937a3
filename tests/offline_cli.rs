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
fn keys_lists_ids_sources_and_fingerprints() {
    let s = Setup::new("k2");
    let out = s.run(&["keys"], "");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let ring = s.ring();
    let fp = |id: &str| ring.fingerprint(id).expect("fingerprint");
    assert_eq!(
        stdout(&out),
        format!(
            "k1  file        fingerprint {}\nk2  file        fingerprint {}  (active)\n",
            fp("k1"),
            fp("k2")
        )
    );
    // Never the key itself.
    for id in ["k1", "k2"] {
        let key = std::fs::read_to_string(s.dir.path().join(format!("{id}.key"))).expect("key");
        assert!(!stdout(&out).contains(key.trim()), "{id}'s key printed");
    }
    // A key that cannot be loaded is a setup error (exit 3), naming it.
    std::fs::remove_file(s.dir.path().join("k1.key")).expect("rm");
    let out = s.run(&["keys"], "");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("k1"), "{}", stderr(&out));
}

fn envelope_input(s: &Setup) -> String {
    // Envelopes under k1 (3), k2 (2), and one id not in the ring.
    let ring = s.ring();
    let k1 = |v: &str| ring.seal(&json!(v), "ssn").expect("seal");
    let k2 = Keyring::from_raw_keys("k2", vec![("k2".into(), [2u8; 32])]).expect("ring");
    let k9 = Keyring::from_raw_keys("k9", vec![("k9".into(), [9u8; 32])]).expect("ring");
    format!(
        "{}\n{}\n\n{}\n",
        text(&json!({ "ssn": k1("a"), "card": { "number": k1("b") } })),
        text(
            &json!({ "ssn": k2.seal(&json!("c"), "ssn").expect("seal"), "list": [k1("d"), k2.seal(&json!(1), "list").expect("seal")] })
        ),
        text(&json!({ "x": k9.seal(&json!("e"), "x").expect("seal"), "plain": "fs1" })),
    )
}

#[test]
fn keys_scan_counts_envelopes_per_key() {
    let s = Setup::new("k2");
    let out = s.run(&["keys", "--scan"], &envelope_input(&s));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let report = stdout(&out);
    assert!(report.starts_with("k1\nk2  (active)\n"), "{report}");
    assert!(report.contains("  k1: 3\n"), "{report}");
    assert!(report.contains("  k2: 2\n"), "{report}");
    assert!(report.contains("  k9: 1  (NOT IN RING"), "{report}");
    assert!(report.contains("scanned 3 documents (4 lines)"), "{report}");
    assert!(!report.contains("INCOMPLETE"), "{report}");
}

/// A scan that could not read every document never passes for complete:
/// counts are lower bounds, said so, and the exit code is 1.
#[test]
fn keys_scan_with_unreadable_input_is_incomplete_and_fails() {
    let s = Setup::new("k2");
    let input = envelope_input(&s).replacen("\n\n", "\nnot json\n", 1);
    let out = s.run(&["keys", "--scan"], &input);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let report = stdout(&out);
    assert!(report.contains("  k1: at least 3\n"), "{report}");
    assert!(report.contains("  k2: at least 2\n"), "{report}");
    assert!(
        report.contains("INCOMPLETE: 1 of 4 documents could not be read (line 3)"),
        "{report}"
    );
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));
    // Every count line says "at least".
    let census = report
        .split("envelopes per key id:")
        .nth(1)
        .expect("census");
    for l in census.lines().filter(|l| l.starts_with("  ")) {
        assert!(l.contains("at least"), "{l}");
    }
}

/// Issue 9, defect 1: the README says to drop the old key when the scan
/// shows 0. A pretty-printed export or a JSON array was counted as 0 (and
/// exit 0) while `rewrap` reads it: the scan must count what rewrap reads.
#[test]
fn keys_scan_reads_every_form_rewrap_reads() {
    let s = Setup::new("k1");
    let docs: Vec<Value> = (1..=3).map(doc).collect();
    let input: String = docs.iter().map(|d| format!("{}\n", text(d))).collect();
    let enc = s.run(&["encrypt", "--route", "users"], &input);
    assert!(enc.status.success(), "stderr: {}", stderr(&enc));
    let sealed = lines(&enc);
    let pretty_one = serde_json::to_string_pretty(&sealed[0]).expect("json");
    let pretty_many: String = sealed
        .iter()
        .map(|d| serde_json::to_string_pretty(d).expect("json") + "\n")
        .collect();
    let array = serde_json::to_string_pretty(&Value::Array(sealed.clone())).expect("json");
    let compact_array = text(&Value::Array(sealed.clone()));
    s.set_active("k2");
    let forms = [
        ("ndjson", stdout(&enc), 15),
        ("one pretty document", pretty_one, 5),
        ("pretty documents", pretty_many, 15),
        ("pretty array", array, 15),
        ("compact array", compact_array, 15),
    ];
    for (what, input, envelopes) in &forms {
        let scan = s.run(&["keys", "--scan"], input);
        let report = stdout(&scan);
        assert!(
            report.contains(&format!("  k1: {envelopes}\n")),
            "{what}: {report}"
        );
        assert_eq!(scan.status.code(), Some(0), "{what}: {}", stderr(&scan));
    }
    for (what, input, envelopes) in forms {
        // rewrap reads the same input and finds the same envelopes.
        let re = s.run(&["rewrap"], &input);
        assert_eq!(re.status.code(), Some(0), "{what}: {}", stderr(&re));
        assert!(
            stderr(&re).contains(&format!(
                "{envelopes} envelopes: {envelopes} re-sealed under k2"
            )),
            "{what}: {}",
            stderr(&re)
        );
        let after = s.run(&["keys", "--scan"], &stdout(&re));
        assert!(
            stdout(&after).contains("  k1: 0\n"),
            "{what}: {}",
            stdout(&after)
        );
        assert!(
            stdout(&after).contains(&format!("  k2: {envelopes}\n")),
            "{what}: {}",
            stdout(&after)
        );
    }
}

#[test]
fn keys_scan_finds_envelopes_rewrap_cannot_reach_and_ones_with_no_key_id() {
    let s = Setup::new("k1");
    let ring = s.ring();
    let e = ring.seal(&json!("x"), "ssn").expect("seal");
    let input = text(&json!({
        "ssn": e,
        "raw_json": format!("{{\"ssn\":\"{e}\"}}"),
        e.clone(): true,
        "broken": "fs1:",
    }));
    let out = s.run(&["keys", "--scan"], &input);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains(
            "  k1: 3  (2 of them inside longer strings or member names, which rewrap does not re-encrypt)"
        ),
        "{report}"
    );
    assert!(
        report.contains("strings that start with fs1: but name no valid key id: 1"),
        "{report}"
    );
}

/// `--keep-going`: failed documents go to the failures file with their
/// input lines (never a value), the rest is processed, exit 1.
#[test]
fn keep_going_writes_failures_apart_and_processes_the_rest() {
    let s = Setup::new("k1");
    let docs: Vec<Value> = (1..=5).map(doc).collect();
    let input: String = docs.iter().map(|d| format!("{}\n", text(d))).collect();
    let enc = s.run(&["encrypt", "--route", "users"], &input);
    let mut sealed = lines(&enc);
    // Document 2: a tampered envelope. Line 4: not JSON (cut short).
    let env = sealed[1]["ssn"].as_str().expect("envelope").to_string();
    let at = env.len() - 10;
    let flipped = if &env[at..at + 1] == "A" { "B" } else { "A" };
    sealed[1]["ssn"] = json!(format!("{}{flipped}{}", &env[..at], &env[at + 1..]));
    let mut text_lines: Vec<String> = sealed.iter().map(text).collect();
    let cut = text_lines[3].len() / 2;
    text_lines[3].truncate(cut);
    let input = text_lines.join("\n") + "\n";
    let failures = s.dir.path().join("failures.ndjson");
    let f = failures.to_str().expect("path");

    let out = s.run(
        &[
            "decrypt",
            "--route",
            "users",
            "--keep-going",
            "--failures",
            f,
        ],
        &input,
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let written = lines(&out);
    let ids: Vec<u64> = written
        .iter()
        .map(|d| d["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, vec![1, 3, 5], "the good documents, in order");
    for (w, n) in written.iter().zip([1, 3, 5]) {
        assert_eq!(text(w), text(&doc(n)));
    }
    let recorded: Vec<Value> = std::fs::read_to_string(&failures)
        .expect("failures file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(recorded[0]["document"], 2);
    assert_eq!(recorded[0]["line"], 2);
    assert_eq!(recorded[0]["kind"], "transform");
    assert!(recorded[0]["error"].as_str().unwrap().contains("$['ssn']"));
    assert_eq!(recorded[1]["document"], 4);
    assert_eq!(recorded[1]["line"], 4);
    assert_eq!(recorded[1]["kind"], "invalid_json");
    let failures_text = std::fs::read_to_string(&failures).expect("failures");
    for plain in ["123-45-000", "555-01", "user "] {
        assert!(
            !failures_text.contains(plain),
            "{plain} in the failures file"
        );
        assert!(!stderr(&out).contains(plain), "{plain} on stderr");
    }
    assert!(
        !failures_text.contains("fs1:"),
        "no envelope in the failures file"
    );
    let err = stderr(&out);
    assert!(
        err.contains("decrypt: 5 documents read, 3 written, 2 failed; 15 envelopes opened"),
        "{err}"
    );
    assert!(
        err.contains("2 documents failed and are not in the output"),
        "{err}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&failures).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Without --keep-going the same input stops at document 2.
    let out = s.run(&["decrypt", "--route", "users"], &input);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(lines(&out).len(), 1);
    assert!(
        stderr(&out).contains("stopped at input document 2 (line 2)"),
        "{}",
        stderr(&out)
    );

    // --keep-going needs --failures, and the reverse: usage errors (2).
    for args in [
        vec!["decrypt", "--route", "users", "--keep-going"],
        vec!["decrypt", "--route", "users", "--failures", f],
    ] {
        let out = s.run(&args, &input);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "");
    }
}

#[test]
fn exit_codes_tell_setup_errors_from_failed_documents() {
    let s = Setup::new("k1");
    // Setup: no such route, unreadable config, a missing key file: 3.
    let out = s.run(&["encrypt", "--route", "nope"], "{}");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = run_bin(
        &["rewrap", "--config", "/nonexistent/fieldseal.yaml"],
        b"{}",
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.run(&["encrypt", "--route", "plain"], "{}");
    assert_eq!(
        out.status.code(),
        Some(3),
        "a route without rules: {}",
        stderr(&out)
    );
    // Usage: 2.
    let out = s.run(&["encrypt"], "{}");
    assert_eq!(out.status.code(), Some(2));
    // Data: 1.
    let out = s.run(&["encrypt", "--route", "users"], "{\"ssn\": ");
    assert_eq!(out.status.code(), Some(1));
    // And all good: 0, with documents and fields counted apart.
    let out = s.run(&["encrypt", "--route", "users"], &text(&doc(1)));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out)
            .contains("encrypt: 1 documents read, 1 written, 0 failed; 5 fields sealed under k1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn progress_is_drawn_on_a_terminal_only() {
    let s = Setup::new("k1");
    let docs: String = (1..=50).map(|n| format!("{}\n", text(&doc(n)))).collect();
    // Not a terminal (a pipe): no progress line, no control characters.
    let out = s.run(&["encrypt", "--route", "users"], &docs);
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(!err.contains('\r') && !err.contains('\u{1b}'), "{err:?}");
    assert_eq!(err.lines().count(), 1, "only the summary: {err:?}");

    // A terminal: `script` gives the command a pseudo-terminal for stderr
    // (stdin and stdout are files), which is what an operator sees.
    if Command::new("script").arg("--version").output().is_err() {
        panic!("`script` (util-linux) is needed for this test");
    }
    let input = s.dir.path().join("in.ndjson");
    std::fs::write(&input, &docs).expect("input");
    let output = s.dir.path().join("out.ndjson");
    let cmd = format!(
        "{BIN} encrypt --config {} --route users < {} > {}",
        s.config.display(),
        input.display(),
        output.display()
    );
    let tty = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script");
    assert!(
        tty.status.success(),
        "{}",
        String::from_utf8_lossy(&tty.stderr)
    );
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(shown.contains("\rencrypt: 1 documents"), "{shown:?}");
    assert!(shown.contains("documents/s"), "{shown:?}");
    assert!(shown.contains("ETA "), "input size known: {shown:?}");
    assert!(shown.contains("\r\u{1b}[K"), "progress cleared: {shown:?}");
    assert!(shown.contains("50 documents read, 50 written"), "{shown:?}");
    assert_eq!(
        std::fs::read_to_string(&output)
            .expect("output")
            .lines()
            .count(),
        50
    );
}

/// `audit verify` over the binary: the head it prints, `--from` and
/// `--expect`, and a key mismatch told apart from tampering (exit 4).
#[test]
fn audit_verify_prints_its_head_and_checks_from_and_expect() {
    use fieldseal::audit::{AuditEvent, AuditKey, AuditLog, AuditSink};
    let s = Setup::new("k1");
    let ring = s.ring();
    let key = || {
        AuditKey::new(
            "k1".into(),
            ring.derive_subkey("k1", fieldseal::audit::KEY_PURPOSE)
                .expect("audit key"),
        )
    };
    let write = |path: &Path, n: usize| {
        let log = AuditLog::open(AuditSink::File(path.to_path_buf()), key()).expect("open");
        for i in 0..n {
            log.append(&AuditEvent {
                request_id: format!("r{i}"),
                route: "users".into(),
                method: "POST".into(),
                outcome: "ok".into(),
                ..AuditEvent::default()
            })
            .expect("append");
        }
        log.head().expect("head")
    };
    let first = s.dir.path().join("audit-1.log");
    let head1 = write(&first, 3);
    let verify = |file: &Path, extra: &[&str]| {
        let mut args = vec!["audit", "verify", file.to_str().expect("path")];
        args.extend_from_slice(extra);
        s.run(&args, "")
    };
    let out = verify(&first, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok: 3 lines, chain intact from seq 1 to seq 3"));
    assert!(stdout(&out).contains(&format!("head: {}:{}\n", head1.seq, head1.mac)));

    // The next file continues the chain: verify it from the printed head.
    let second = s.dir.path().join("audit-2.log");
    std::fs::copy(&first, &second).expect("copy");
    let head2 = write(&second, 2);
    let tail: String = std::fs::read_to_string(&second)
        .expect("read")
        .lines()
        .skip(3)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&second, tail).expect("write");
    let from = format!("{}:{}", head1.seq, head1.mac);
    let out = verify(&second, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "without --from it starts mid-chain"
    );
    let out = verify(&second, &["--from", &from]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("chain intact from seq 4 to seq 5"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(&format!("head: 5:{}", head2.mac)));

    // --expect a head recorded earlier: a cut tail is caught.
    let expect = format!("{}:{}", head2.seq, head2.mac);
    let out = verify(&second, &["--from", &from, "--expect", &expect]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cut: String = std::fs::read_to_string(&second)
        .expect("read")
        .lines()
        .take(1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&second, cut).expect("write");
    let out = verify(&second, &["--from", &from, "--expect", &expect]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    // A malformed head is a usage error.
    let out = verify(&second, &["--from", "3:nothex"]);
    assert_eq!(out.status.code(), Some(2));

    // The key changed (another k1 file): a key mismatch, exit 4, not tampering.
    std::fs::remove_file(s.dir.path().join("k1.key")).expect("rm");
    fieldseal::crypto::write_key_file(&s.dir.path().join("k1.key")).expect("new k1");
    let out = verify(&first, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("key mismatch"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("edited"), "{}", stderr(&out));
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
    // Only the file is under test here; its certificate and key files are
    // not written, so `check` must not open them.
    Command::new(BIN)
        .args(["check", "--no-load", "--config"])
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

/// The backfill follows the route's look-alike setting, as the proxy does:
/// a look-alike of a protected field never comes out in plaintext.
#[test]
fn encrypt_refuses_or_seals_look_alikes_like_the_proxy() {
    let s = Setup::new("k1");
    std::fs::write(
        &s.config,
        config_text(
            "k1",
            r#"  - name: refuse
    match: { path_prefix: /a }
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number"]
  - name: seal
    match: { path_prefix: /b }
    upstream: legacy
    look_alikes: seal
    encrypt: ["$.ssn", "$.card.number"]
"#,
        ),
    )
    .expect("config");
    for doc in [
        r#"{"user": {"ssn": "078-05-1120"}}"#,
        r#"[{"SSN": "078-05-1120"}]"#,
        r#"{"card.number": "078-05-1120"}"#,
        r#"{"card": [{"number": "078-05-1120"}]}"#,
        r#"{"by_id": {"078-05-1120": {"card": {"number": "4111-SECRET"}}}}"#,
    ] {
        let out = s.run(&["encrypt", "--route", "refuse"], doc);
        assert!(!out.status.success(), "{doc}: {}", stdout(&out));
        assert_eq!(stdout(&out), "", "{doc}: nothing written");
        let err = stderr(&out);
        assert!(err.contains("look-alike of the protected field"), "{err}");
        assert!(
            !err.contains("078-05-1120"),
            "the error shows no data: {err}"
        );

        let out = s.run(&["encrypt", "--route", "seal"], doc);
        assert!(out.status.success(), "{doc}: {}", stderr(&out));
        let value = if doc.contains("4111-SECRET") {
            "4111-SECRET"
        } else {
            "078-05-1120\""
        };
        assert!(!stdout(&out).contains(value), "{}", stdout(&out));
        assert!(stdout(&out).contains("fs1:k1:"), "{}", stdout(&out));
    }
}
