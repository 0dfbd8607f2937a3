//! The proxy and the offline commands run one field-transform engine: the
//! same input gives the same bytes through either, repeated member names,
//! escapes and number spellings included. (The offline commands used to
//! parse each document into a tree, which kept one copy of a repeated
//! member and re-spelled escapes; they now feed its bytes to the engine.)

mod common;

use common::*;
use fieldseal::crypto::{looks_like_envelope, Keyring};
use serde_json::Value;

/// Compact, as the offline commands write a document: a repeated `ssn`
/// (twice, once in another case), escapes and a number spelled its own way.
const INPUT: &str = r#"{"ssn":"123-45-6789","name":"Ad\u00e9 \/ L","SSN":"second copy","n":1.50E2,"card":{"number":"4111 1111","number":"4222 2222"},"contacts":[{"phone":"555-0100"},{"phone":"555-0199","phone":"555-0198"}],"ssn":"third copy"}"#;

struct Setup {
    backend: ScriptedBackend,
    proxy: TestProxy,
    keys: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let keys = tempfile::tempdir().expect("tempdir");
        let k1 = key_file(keys.path(), "k1");
        let backend = ScriptedBackend::start().await;
        let yaml = format!(
            r#"upstreams:
  legacy: {{ url: "{url}" }}
keys:
  active: k1
  ring:
    - {{ id: k1, file: "{k1}" }}
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: legacy
    encrypt: ["$.ssn", "$.card.number", "$.contacts[*].phone"]
    decrypt: ["$.ssn", "$.card.number", "$.contacts[*].phone"]
"#,
            url = backend.url(),
            k1 = k1.display(),
        );
        let proxy = TestProxy::start(&yaml).await;
        Setup {
            backend,
            proxy,
            keys,
        }
    }

    fn ring(&self) -> Keyring {
        file_ring("k1", &[("k1", &self.keys.path().join("k1.key"))])
    }

    /// `fieldseal <verb> --route users` over `input`: its one output line.
    fn cli(&self, verb: &str, input: &[u8]) -> Vec<u8> {
        let config = self.proxy.config_path.to_str().expect("utf-8 path");
        let out = run_bin(&[verb, "--config", config, "--route", "users"], input);
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut stdout = out.stdout;
        assert_eq!(stdout.pop(), Some(b'\n'), "one line");
        assert!(!stdout.contains(&b'\n'), "one line");
        stdout
    }
}

/// `doc` with each envelope replaced by a marker, and the envelopes in
/// document order.
fn masked(doc: &[u8]) -> (String, Vec<String>) {
    let text = std::str::from_utf8(doc).expect("utf-8");
    let mut out = String::new();
    let mut envelopes = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"fs1:") {
        out.push_str(&rest[..at]);
        let end = rest[at + 1..].find('"').expect("closing quote") + at + 2;
        envelopes.push(rest[at + 1..end - 1].to_string());
        out.push_str("\"<sealed>\"");
        rest = &rest[end..];
    }
    out.push_str(rest);
    (out, envelopes)
}

#[tokio::test]
async fn the_proxy_and_the_cli_seal_and_open_the_same_bytes() {
    let s = Setup::start().await;
    let c = s.proxy.h1();

    // Sealed by the proxy on the way to the backend...
    let resp = bounded(
        "post",
        c.post(s.proxy.url("/api/users"))
            .header("content-type", "application/json")
            .body(INPUT)
            .send(),
    )
    .await
    .expect("post");
    assert_eq!(resp.status(), 200);
    let seen = s.backend.seen();
    let by_proxy = seen.last().expect("forwarded").body.to_vec();
    // ...and by `fieldseal encrypt`.
    let by_cli = s.cli("encrypt", INPUT.as_bytes());

    // Every copy of every selected member is sealed, the rest is the same
    // bytes (envelopes differ only by their random nonces).
    let (proxy_text, proxy_envelopes) = masked(&by_proxy);
    let (cli_text, cli_envelopes) = masked(&by_cli);
    assert_eq!(proxy_text, cli_text);
    assert_eq!(
        cli_text,
        r#"{"ssn":"<sealed>","name":"Ad\u00e9 \/ L","SSN":"<sealed>","n":1.50E2,"card":{"number":"<sealed>","number":"<sealed>"},"contacts":[{"phone":"<sealed>"},{"phone":"<sealed>","phone":"<sealed>"}],"ssn":"<sealed>"}"#
    );
    let ring = s.ring();
    let contexts = [
        "ssn", "SSN", "number", "number", "phone", "phone", "phone", "ssn",
    ];
    assert_eq!(proxy_envelopes.len(), contexts.len());
    for ((p, c), context) in proxy_envelopes.iter().zip(&cli_envelopes).zip(contexts) {
        assert!(looks_like_envelope(p) && looks_like_envelope(c));
        let (a, b) = (
            ring.open_at(p, context, None, fieldseal::crypto::unix_now()),
            ring.open_at(c, context, None, fieldseal::crypto::unix_now()),
        );
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a.value, b.value, "{context}"),
            _ => panic!("{context}: an envelope does not open"),
        }
    }

    // Opening: the proxy's answer and `fieldseal decrypt` are the same
    // bytes, and they are the document first sent.
    for stored in [&by_proxy, &by_cli] {
        s.backend.set_reply(
            "/api/users/1",
            Reply::json(bytes::Bytes::from(stored.clone())),
        );
        let resp = bounded("get", c.get(s.proxy.url("/api/users/1")).send())
            .await
            .expect("get");
        assert_eq!(resp.status(), 200);
        let read_by_proxy = bounded("body", resp.bytes()).await.expect("body").to_vec();
        let read_by_cli = s.cli("decrypt", stored);
        assert_eq!(
            String::from_utf8_lossy(&read_by_proxy),
            String::from_utf8_lossy(&read_by_cli)
        );
        assert_eq!(String::from_utf8_lossy(&read_by_cli), INPUT);
    }

    // `rewrap` and `keys --scan` read every copy as well.
    let config = s.proxy.config_path.to_str().expect("utf-8 path");
    let scan = run_bin(&["keys", "--config", config, "--scan"], &by_cli);
    assert!(scan.status.success());
    let report = String::from_utf8_lossy(&scan.stdout);
    assert!(report.contains("  k1: 8"), "{report}");
    let rewrapped = s.cli("rewrap", &by_cli);
    let (text, envelopes) = masked(&rewrapped);
    assert_eq!(text, cli_text);
    assert_eq!(envelopes, cli_envelopes, "already under the active key");
    let _: Value = serde_json::from_slice(&rewrapped).expect("JSON");
}
