//! Logs and the audit log never carry member names that are data. A field
//! location is logged with only the names its rule names; every other member
//! is `[*]` (`$['by_ssn']['078-05-1120']` is logged `$['by_ssn'][*]`).
//!
//! The proxy runs in-process over real sockets; this test binary installs
//! one global subscriber (JSON, debug level, as `fieldseal run` logs) that
//! captures every line the proxy writes on any thread.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use fieldseal::crypto::Keyring;
use http::StatusCode;

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let writer = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Capture(Arc::clone(&writer)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

fn captured() -> String {
    String::from_utf8_lossy(&logs().lock().expect("log lock")).into_owned()
}

/// Member names that are data: identifiers, emails, names, with the
/// characters a location escapes.
const DATA_NAMES: &[&str] = &[
    "078-05-1120",
    "jane.doe@example.com",
    "Zoë O'Brien",
    "4111111111111111",
    "078051120\u{0}x",
    "dr\\who",
];

fn js(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

#[tokio::test]
async fn failure_and_refusal_logs_and_the_audit_log_hold_no_data_bearing_names() {
    let logs = logs();
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = keys.path().join("k1.key");
    fieldseal::crypto::write_key_file(&k1).expect("key");
    let audit = keys.path().join("audit.log");
    let backend = ScriptedBackend::start().await;
    let proxy = TestProxy::start(&format!(
        r#"upstreams:
  legacy: {{ url: "{url}" }}
keys: {{ active: k1, ring: [ {{ id: k1, file: "{k1}" }} ] }}
audit: {{ sink: "{audit}" }}
log: {{ level: debug }}
routes:
  - name: by-ssn
    match: {{ path_prefix: /by-ssn }}
    upstream: legacy
    decrypt: ["$.by_ssn.*", "$..phone"]
    on_decrypt_failure: "null"
  - name: phones
    match: {{ path_prefix: /phones }}
    upstream: legacy
    decrypt: ["$..phone"]
  - name: auto
    match: {{ path_prefix: /auto }}
    upstream: legacy
    decrypt: auto
    on_decrypt_failure: keep
  - name: users
    match: {{ path_prefix: /users }}
    upstream: legacy
    encrypt: ["$.ssn"]
"#,
        url = backend.url(),
        k1 = k1.display(),
        audit = audit.display(),
    ))
    .await;
    let ring = Keyring::load(&fieldseal::crypto::KeyringSpec {
        active: "k1".into(),
        keys: vec![fieldseal::crypto::KeySpec {
            id: "k1".into(),
            source: fieldseal::crypto::KeySource::File(k1.clone()),
        }],
        pbkdf2_iterations: 100_000,
    })
    .expect("ring");
    // A genuine envelope beside the broken ones, so requests are audited.
    let good = ring.seal(&serde_json::json!("opened"), "ok").expect("seal");
    let bad = "fs1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let c = proxy.h1();
    for (i, name) in DATA_NAMES.iter().enumerate() {
        let n = js(name);
        backend.set_reply(
            &format!("/by-ssn/{i}"),
            Reply::json(format!(
                r#"{{"by_ssn": {{{n}: "{bad}"}}, "people": {{{n}: {{"phone": "{bad}"}}}}}}"#
            )),
        );
        let r = bounded("get", c.get(proxy.url(&format!("/by-ssn/{i}"))).send())
            .await
            .expect("answer");
        assert_eq!(r.status(), StatusCode::OK);
        backend.set_reply(
            &format!("/phones/{i}"),
            Reply::json(format!(
                r#"{{"contacts": {{{n}: [{{"phone": "{bad}"}}]}}}}"#
            )),
        );
        let r = bounded("get", c.get(proxy.url(&format!("/phones/{i}"))).send())
            .await
            .expect("answer");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        backend.set_reply(
            &format!("/auto/{i}"),
            Reply::json(format!(
                r#"{{{n}: {{"x": "{bad}", "ok": "{good}"}}, "list": [{{{n}: "{bad}"}}]}}"#
            )),
        );
        let r = bounded("get", c.get(proxy.url(&format!("/auto/{i}"))).send())
            .await
            .expect("answer");
        assert_eq!(r.status(), StatusCode::OK);
        // A refused look-alike under a data-bearing wrapper name.
        let r = bounded(
            "post",
            c.post(proxy.url("/users"))
                .header("content-type", "application/json")
                .body(format!(r#"{{{n}: {{"ssn": "123"}}}}"#))
                .send(),
        )
        .await
        .expect("answer");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = bounded("body", r.text()).await.expect("body");
        let head: String = name.chars().take(4).collect();
        assert!(!body.contains(&head), "{body}");
    }
    // The proxy logs asynchronously to the request: wait for every line.
    let want = DATA_NAMES.len() * 5;
    for _ in 0..200 {
        if captured().matches("field could not be decrypted").count() >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let text = captured();
    assert!(
        text.matches("field could not be decrypted").count() >= want,
        "decrypt failures logged: {text}"
    );
    // The locations are there, with only the rules' names.
    for loc in [
        // The rule's name, normalized (word separators dropped).
        r#"$['byssn'][*]"#,
        r#"$[*][*]['phone']"#,
        r#"$[*][*][0]['phone']"#,
        r#"$[*][*]"#,
        r#"$[*][0][*]"#,
    ] {
        assert!(text.contains(loc), "{loc} logged: {text}");
    }
    assert!(
        text.contains("look-alike of the protected field $.ssn at $[*]['ssn']"),
        "{text}"
    );
    let audit_text = std::fs::read_to_string(&audit).expect("audit log");
    assert!(
        audit_text.lines().count() >= DATA_NAMES.len() * 2,
        "{audit_text}"
    );
    for name in DATA_NAMES {
        for (what, t) in [("log", &text), ("audit log", &audit_text)] {
            for needle in [
                name.to_string(),
                js(name),
                js(name).trim_matches('"').to_string(),
            ] {
                assert!(!t.contains(&needle), "{what} holds {needle:?}");
            }
            // Also what is left of a name cut at a NUL or an escape.
            let head: String = name
                .chars()
                .take_while(|c| *c != '\0' && *c != '\\')
                .collect();
            if head.len() >= 5 {
                assert!(!t.contains(&head), "{what} holds {head:?}");
            }
        }
    }
    drop(logs);
}
