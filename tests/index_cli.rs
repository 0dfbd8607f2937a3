//! `fieldseal index`: a database that already holds envelopes (or still
//! plaintext) gets its blind indexes written, equal to what the proxy
//! writes and queries for; index key rotation recomputes them.

mod common;

use common::{file_ring, run_bin};
use fieldseal::crypto::index::{IndexKey, Normalize};
use serde_json::{json, Value};

fn config(dir: &std::path::Path, key: &str) -> std::path::PathBuf {
    let text = format!(
        r#"listen: {{ address: "127.0.0.1:8443", tls: {{ cert: server.crt, key: server.key }} }}
upstreams:
  legacy: {{ url: "http://127.0.0.1:8080" }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: k1.key }}
    - {{ id: k2, file: k2.key }}
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.email"]
    index:
      - {{ field: "$.email", into: "$.email_idx", normalize: [trim, lowercase], bits: 64, key: {key} }}
  - name: plain
    match: {{ path_prefix: / }}
    upstream: legacy
"#
    );
    let path = dir.join("fieldseal.yaml");
    std::fs::write(&path, text).expect("config");
    path
}

#[test]
fn index_backfills_from_plaintext_and_envelopes_and_recomputes_on_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    for id in ["k1", "k2"] {
        fieldseal::crypto::write_key_file(&dir.path().join(format!("{id}.key"))).expect("key");
    }
    let ring = file_ring(
        "k1",
        &[
            ("k1", &dir.path().join("k1.key")),
            ("k2", &dir.path().join("k2.key")),
        ],
    );
    let want = |key: &str, v: &str| {
        IndexKey::derive(&ring, key, "email_idx")
            .expect("key")
            .index(v, &[Normalize::Trim, Normalize::Lowercase], 64)
    };
    let env = ring.seal(&json!("Ada@Example.com"), "email").expect("seal");
    let input = format!(
        "{}\n{}\n{}\n{}\n",
        json!({"id": 1, "email": env}),
        json!({"id": 2, "email": " grace@example.org"}),
        json!({"id": 3, "email": env, "email_idx": "stale"}),
        json!({"id": 4, "name": "no email"}),
    );
    let cfg = config(dir.path(), "k1");
    let out = run_bin(
        &["index", "-c", cfg.to_str().expect("p"), "-r", "users"],
        input.as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3 blind indexes written"), "{stderr}");
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(docs.len(), 4);
    assert_eq!(docs[0]["email_idx"], json!(want("k1", "ada@example.com")));
    assert_eq!(
        docs[0]["email"],
        json!(env),
        "envelopes are left as they are"
    );
    assert_eq!(docs[1]["email_idx"], json!(want("k1", "grace@example.org")));
    assert_eq!(
        docs[2]["email_idx"], docs[0]["email_idx"],
        "a stale index is recomputed"
    );
    assert!(docs[3].get("email_idx").is_none());
    assert!(
        !stderr.contains("ada") && !stderr.contains("grace"),
        "{stderr}"
    );

    // Rotation: the index's key becomes k2; the same run recomputes.
    let cfg = config(dir.path(), "k2");
    let again = String::from_utf8_lossy(&out.stdout).into_owned();
    let out = run_bin(
        &["index", "-c", cfg.to_str().expect("p"), "-r", "users"],
        again.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .expect("line"),
    )
    .expect("json");
    assert_eq!(first["email_idx"], json!(want("k2", "ada@example.com")));

    // An envelope that does not open stops the run, naming no value.
    let bad = format!("{}\n", json!({"email": "fs1:k1:AAAA"}));
    let out = run_bin(
        &["index", "-c", cfg.to_str().expect("p"), "-r", "users"],
        bad.as_bytes(),
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    // A route without index rules is an error.
    let out = run_bin(
        &["index", "-c", cfg.to_str().expect("p"), "-r", "plain"],
        b"{}\n",
    );
    assert!(!out.status.success());
}
