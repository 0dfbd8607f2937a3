//! Step 3 and 4 of key rotation with the real binary: `fieldseal rewrap`
//! re-encrypts stored NDJSON under the active key, and `fieldseal keys --scan`
//! shows the envelopes moving from the old key id to the new one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::run_bin;
use serde_json::{json, Value};

fn ok(out: &Output, what: &str) -> Vec<u8> {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn docs(ndjson: &[u8]) -> Vec<Value> {
    std::str::from_utf8(ndjson)
        .expect("utf-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect()
}

/// Every envelope string in `v`, at any depth.
fn envelopes(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.starts_with("fs1:") => out.push(s.clone()),
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    out
}

/// Key files and config files in one folder.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        for id in ["k1", "k2"] {
            fieldseal::crypto::write_key_file(&dir.path().join(format!("{id}.key")))
                .expect("key file");
        }
        Setup { dir }
    }

    /// A config with `ring` (ids) and `active`, and the `users` route whose
    /// `notes` field has a named context; `contacts` seals `$.email`.
    fn config(&self, name: &str, active: &str, ring: &[&str]) -> PathBuf {
        let mut keys = format!("keys:\n  active: {active}\n  ring:\n");
        for id in ring {
            keys.push_str(&format!("    - {{ id: {id}, file: {id}.key }}\n"));
        }
        let text = format!(
            r#"listen: {{ address: "127.0.0.1:8443", tls: {{ cert: server.crt, key: server.key }} }}
upstreams:
  legacy: {{ url: "http://127.0.0.1:8080" }}
{keys}routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number", {{ path: "$.notes", context: user_notes }}]
    decrypt: ["$.ssn", "$.card.number", {{ path: "$.notes", context: user_notes }}]
  - name: contacts
    match: {{ path_prefix: /api/contacts }}
    upstream: legacy
    encrypt: ["$.email"]
    decrypt: ["$.email"]
"#
        );
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The stored documents before encryption, as exported (NDJSON). Document 1
/// has no `notes`; `12.50` checks that number spelling survives.
const PLAIN: &str = r#"{"id":1,"name":"Ann","ssn":"111-11-1111","card":{"number":"4000 0000 0000 0001","exp":"01/30"},"amount":12.50}
{"id":2,"name":"Bob","ssn":"222-22-2222","card":{"number":"4000 0000 0000 0002","exp":"02/30"},"notes":"prefers calls after 6pm"}
{"id":3,"name":"Cy","ssn":333224444,"card":{"number":"4000 0000 0000 0003","exp":"03/30"},"notes":{"private":"allergic to penicillin"},"tags":["a","b"]}
"#;

/// The plaintexts that must never appear once encrypted.
const SECRETS: &[&str] = &[
    "111-11-1111",
    "222-22-2222",
    "333224444",
    "4000 0000 0000 000",
    "prefers calls",
    "penicillin",
];

/// A document without its encrypted members.
fn unencrypted_part(v: &Value) -> Value {
    let mut v = v.clone();
    let o = v.as_object_mut().expect("object");
    o.remove("ssn");
    o.remove("notes");
    if let Some(card) = o.get_mut("card").and_then(Value::as_object_mut) {
        card.remove("number");
    }
    v
}

fn ndjson(docs: &[Value]) -> Vec<u8> {
    let mut s = String::new();
    for d in docs {
        s.push_str(&d.to_string());
        s.push('\n');
    }
    s.into_bytes()
}

/// `keys --scan` output → (id, count) per listed id.
fn scan(config: &Path, input: &[u8]) -> Vec<(String, u64)> {
    let out = ok(
        &run_bin(&["keys", "--config", p(config), "--scan"], input),
        "keys --scan",
    );
    let text = String::from_utf8(out).expect("utf-8");
    let census = text
        .split("envelopes per key id:")
        .nth(1)
        .unwrap_or_else(|| panic!("no census in {text:?}"));
    census
        .lines()
        .filter_map(|l| {
            let (id, n) = l.trim().split_once(": ")?;
            Some((id.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn rewrap_moves_every_envelope_to_the_active_key_without_writing_plaintext() {
    let s = Setup::new();
    let k1 = s.config("k1.yaml", "k1", &["k1"]);
    let both = s.config("both.yaml", "k2", &["k1", "k2"]);
    let only_k2 = s.config("k2.yaml", "k2", &["k2"]);
    let plain = PLAIN.as_bytes().to_vec();
    let originals = docs(&plain);

    // Backfill under k1.
    let sealed = ok(
        &run_bin(&["encrypt", "--config", p(&k1), "--route", "users"], &plain),
        "encrypt",
    );
    let sealed_docs = docs(&sealed);
    assert_eq!(sealed_docs.len(), 3);
    let before: Vec<String> = sealed_docs.iter().flat_map(envelopes).collect();
    assert_eq!(before.len(), 8, "2 + 3 + 3 sealed fields: {before:?}");
    assert!(
        before.iter().all(|e| e.starts_with("fs1:k1:")),
        "{before:?}"
    );
    for secret in SECRETS {
        assert!(!contains(&sealed, secret), "{secret} in the k1 backfill");
    }
    assert_eq!(
        scan(&both, &sealed),
        vec![("k1".to_string(), 8), ("k2".to_string(), 0)]
    );

    // Without --route the named context of `notes` is unknown: refused at
    // document 2, and nothing of document 2 is written.
    let out = run_bin(&["rewrap", "--config", p(&both)], &sealed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(0),
        "rewrap without --route must fail"
    );
    assert!(
        stderr.contains("document 2"),
        "names the document: {stderr}"
    );
    let partial = docs(&out.stdout);
    assert_eq!(partial.len(), 1, "only document 1 is written: {partial:?}");
    assert_eq!(partial[0]["id"], 1);
    assert!(envelopes(&partial[0])
        .iter()
        .all(|e| e.starts_with("fs1:k2:")));
    for secret in SECRETS {
        assert!(!contains(&out.stdout, secret), "{secret} in rewrap stdout");
        assert!(!stderr.contains(secret), "{secret} in rewrap stderr");
    }
    for e in envelopes(&sealed_docs[1]) {
        assert!(!contains(&out.stdout, &e), "document 2 half-written");
    }

    // With --route: everything moves to k2.
    let out = run_bin(
        &["rewrap", "--config", p(&both), "--route", "users"],
        &sealed,
    );
    let rewrapped = ok(&out, "rewrap --route users");
    for secret in SECRETS {
        assert!(!contains(&rewrapped, secret), "{secret} in rewrap output");
        assert!(!contains(&out.stderr, secret), "{secret} in rewrap stderr");
    }
    let new_docs = docs(&rewrapped);
    assert_eq!(new_docs.len(), 3);
    let after: Vec<String> = new_docs.iter().flat_map(envelopes).collect();
    assert_eq!(after.len(), 8, "{after:?}");
    assert!(after.iter().all(|e| e.starts_with("fs1:k2:")), "{after:?}");
    for e in &before {
        assert!(!contains(&rewrapped, e), "an old envelope survived");
    }
    for (new, old) in new_docs.iter().zip(&originals) {
        assert_eq!(unencrypted_part(new), unencrypted_part(old));
    }
    assert!(contains(&rewrapped, "12.50"), "number spelling kept");
    assert_eq!(
        scan(&both, &rewrapped),
        vec![("k1".to_string(), 0), ("k2".to_string(), 8)]
    );

    // Only k2 is needed to read it back, and k1 alone no longer can.
    let opened = ok(
        &run_bin(
            &["decrypt", "--config", p(&only_k2), "--route", "users"],
            &rewrapped,
        ),
        "decrypt with only k2",
    );
    assert_eq!(docs(&opened), originals);
    assert_eq!(opened, plain, "byte for byte the export we started from");
    let only_k1 = s.config("only-k1.yaml", "k1", &["k1"]);
    let out = run_bin(
        &["decrypt", "--config", p(&only_k1), "--route", "users"],
        &rewrapped,
    );
    assert_ne!(
        out.status.code(),
        Some(0),
        "k1 alone must not open k2 envelopes"
    );
    for secret in SECRETS {
        assert!(!contains(&out.stdout, secret));
    }

    // Rewrapping again changes nothing: everything is under the active key.
    let again = ok(
        &run_bin(
            &["rewrap", "--config", p(&both), "--route", "users"],
            &rewrapped,
        ),
        "rewrap again",
    );
    assert_eq!(again, rewrapped);
}

/// `--route` is documented as adding a route's named contexts; the command
/// still promises every envelope of the input under the active key.
#[test]
fn rewrap_with_route_also_moves_envelopes_outside_the_routes_rules() {
    let s = Setup::new();
    let k1 = s.config("k1.yaml", "k1", &["k1"]);
    let both = s.config("both.yaml", "k2", &["k1", "k2"]);
    let doc = json!({"id": 9, "ssn": "999-99-9999", "email": "x@example.com", "notes": "n"});
    let sealed = ok(
        &run_bin(
            &["encrypt", "--config", p(&k1), "--route", "users"],
            &ndjson(&[doc]),
        ),
        "encrypt users",
    );
    let sealed = ok(
        &run_bin(
            &["encrypt", "--config", p(&k1), "--route", "contacts"],
            &sealed,
        ),
        "encrypt contacts",
    );
    assert_eq!(
        scan(&both, &sealed),
        vec![("k1".to_string(), 3), ("k2".to_string(), 0)]
    );
    let out = run_bin(
        &["rewrap", "--config", p(&both), "--route", "users"],
        &sealed,
    );
    let rewrapped = ok(&out, "rewrap --route users");
    assert!(!contains(&rewrapped, "x@example.com"));
    assert_eq!(
        scan(&both, &rewrapped),
        vec![("k1".to_string(), 0), ("k2".to_string(), 3)],
        "rewrap exited 0 but left envelopes under the old key: {}",
        String::from_utf8_lossy(&rewrapped)
    );
}
