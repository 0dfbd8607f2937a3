//! Writing side of the audit log: line format, resuming, refusal, threads.

use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::Arc;

use fieldseal::audit::{
    verify, AuditEvent, AuditFailureMode, AuditKey, AuditLog, AuditSink, TamperKind, VerifyError,
};
use zeroize::Zeroizing;

fn key_bytes(seed: u8) -> Zeroizing<[u8; 32]> {
    Zeroizing::new([seed; 32])
}

fn key(id: &str, seed: u8) -> AuditKey {
    AuditKey::new(id.into(), key_bytes(seed))
}

fn keys(kid: &str) -> Option<Zeroizing<[u8; 32]>> {
    match kid {
        "k1" => Some(key_bytes(1)),
        "k2" => Some(key_bytes(2)),
        _ => None,
    }
}

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("req-{i}"),
        route: "users".into(),
        client: "192.0.2.10:40000".into(),
        user_agent: Some("test-agent/1".into()),
        method: "PUT".into(),
        fields: vec!["$.ssn".into()],
        key_ids: vec!["k2".into()],
        encrypted: 1,
        decrypted: 0,
        outcome: "ok".into(),
    }
}

fn open(path: &Path, k: AuditKey) -> std::io::Result<AuditLog> {
    AuditLog::open(AuditSink::File(path.to_path_buf()), k)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn verify_file(path: &Path) -> Result<u64, VerifyError> {
    verify(Cursor::new(std::fs::read(path).unwrap()), keys).map(|r| r.lines)
}

#[test]
fn line_has_fixed_member_order_and_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path, key("k1", 1)).unwrap();
    log.append(&event(0)).unwrap();
    log.append(&AuditEvent {
        user_agent: None,
        outcome: "decrypt_failed".into(),
        ..event(1)
    })
    .unwrap();
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 2);

    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let members: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        members,
        [
            "audit",
            "seq",
            "ts",
            "kid",
            "prev",
            "request_id",
            "route",
            "client",
            "user_agent",
            "method",
            "fields",
            "key_ids",
            "encrypted",
            "decrypted",
            "outcome",
            "mac"
        ]
    );
    assert!(lines[0].starts_with("{\"audit\":1,\"seq\":1,\"ts\":\""));
    assert_eq!(first["kid"], "k1");
    assert_eq!(first["prev"], "0".repeat(64));
    assert_eq!(first["fields"], serde_json::json!(["$.ssn"]));

    // RFC 3339, UTC, milliseconds: 2024-01-02T03:04:05.678Z
    let ts = first["ts"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');
    assert!(humantime::parse_rfc3339(ts).is_ok());

    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["seq"], 2);
    assert_eq!(second["prev"], first["mac"]);
    assert_eq!(second["user_agent"], serde_json::Value::Null);
    assert_eq!(second["outcome"], "decrypt_failed");
    let mac = second["mac"].as_str().unwrap();
    assert_eq!(mac.len(), 64);
    assert!(mac
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert!(lines[1].ends_with(&format!(",\"mac\":\"{mac}\"}}")));
    assert_eq!(verify_file(&path).unwrap(), 2);
}

#[test]
fn hostile_header_text_stays_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path, key("k1", 1)).unwrap();
    log.append(&AuditEvent {
        user_agent: Some("evil\n{\"audit\":1,\"seq\":99}\r\n\"".into()),
        ..event(0)
    })
    .unwrap();
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    // Never written as sent: the keyed fingerprint stands for it.
    let fp = key("k1", 1).user_agent_fingerprint("evil\n{\"audit\":1,\"seq\":99}\r\n\"");
    assert_eq!(v["user_agent"], fp.as_str());
    assert!(!lines[0].contains("evil"));
    assert_eq!(verify_file(&path).unwrap(), 1);
}

#[test]
fn reopen_resumes_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    {
        let log = open(&path, key("k1", 1)).unwrap();
        log.append(&event(0)).unwrap();
        log.append(&event(1)).unwrap();
    }
    let log = open(&path, key("k1", 1)).unwrap();
    assert_eq!(log.head().unwrap().seq, 2);
    log.append(&event(2)).unwrap();
    let head = log.head().unwrap();
    assert_eq!(head.seq, 3);
    let report = verify(Cursor::new(std::fs::read(&path).unwrap()), keys).unwrap();
    assert_eq!(report.lines, 3);
    assert_eq!(report.last, Some(head));
}

#[test]
fn reopen_with_a_rotated_key_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    open(&path, key("k1", 1))
        .unwrap()
        .append(&event(0))
        .unwrap();
    let log = open(&path, key("k2", 2)).unwrap();
    assert_eq!(log.key_id(), "k2");
    log.append(&event(1)).unwrap();
    assert_eq!(verify_file(&path).unwrap(), 2);
}

#[test]
fn new_file_starts_a_chain_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path, key("k1", 1)).unwrap();
    let head = log.head().unwrap();
    assert_eq!(head.seq, 0);
    assert_eq!(head.mac, "0".repeat(64));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
}

#[test]
fn reopen_refuses_garbage_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    open(&path, key("k1", 1))
        .unwrap()
        .append(&event(0))
        .unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"hello\":\"world\"}\n")
        .unwrap();
    let err = open(&path, key("k1", 1)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("not a valid audit line"), "{err}");
}

#[test]
fn reopen_refuses_partial_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    open(&path, key("k1", 1))
        .unwrap()
        .append(&event(0))
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}{}", &text[..40])).unwrap();
    let err = open(&path, key("k1", 1)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn reopen_refuses_an_edited_last_line_under_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    {
        let log = open(&path, key("k1", 1)).unwrap();
        log.append(&event(0)).unwrap();
        log.append(&event(1)).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("req-1", "req-X")).unwrap();
    let err = open(&path, key("k1", 1)).unwrap_err();
    assert!(err.to_string().contains("MAC"), "{err}");
}

#[test]
fn reopen_finds_the_last_line_past_the_scan_chunk() {
    // Lines longer than the backwards-scan chunk and many of them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    {
        let log = open(&path, key("k1", 1)).unwrap();
        for i in 0..5 {
            log.append(&AuditEvent {
                fields: (0..1000).map(|f| format!("$.field_{f}")).collect(),
                ..event(i)
            })
            .unwrap();
        }
    }
    assert!(std::fs::metadata(&path).unwrap().len() > 5 * 10_000);
    let log = open(&path, key("k1", 1)).unwrap();
    assert_eq!(log.head().unwrap().seq, 5);
    log.append(&event(5)).unwrap();
    assert_eq!(verify_file(&path).unwrap(), 6);
}

#[test]
fn concurrent_appends_form_one_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = Arc::new(open(&path, key("k2", 2)).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..50 {
                    log.append(&event(t * 1000 + i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(verify_file(&path).unwrap(), 400);
    let seqs: Vec<u64> = read_lines(&path)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());
}

#[test]
fn tampering_with_a_written_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path, key("k1", 1)).unwrap();
    for i in 0..4 {
        log.append(&event(i)).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("req-2", "req-7")).unwrap();
    match verify_file(&path) {
        Err(VerifyError::Tampered { line, kind, .. }) => {
            assert_eq!((line, kind), (3, TamperKind::Edited))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn key_debug_hides_bytes() {
    let k = AuditKey::new("k7".into(), Zeroizing::new([0xAB; 32]));
    let shown = format!("{k:?}");
    assert!(shown.contains("k7"));
    assert!(
        !shown.contains("171") && !shown.to_lowercase().contains("ab, "),
        "{shown}"
    );
}

#[test]
fn log_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AuditLog>();
}

#[test]
fn failure_mode_parses_from_config() {
    let refuse: AuditFailureMode = serde_yaml_ng::from_str("refuse").unwrap();
    let serve: AuditFailureMode = serde_yaml_ng::from_str("serve").unwrap();
    assert_eq!(refuse, AuditFailureMode::Refuse);
    assert_eq!(serve, AuditFailureMode::Serve);
    assert!(serde_yaml_ng::from_str::<AuditFailureMode>("ignore").is_err());
    assert_eq!(AuditFailureMode::default(), AuditFailureMode::Refuse);
}

#[test]
fn sink_parses_from_config_text() {
    assert_eq!("stdout".parse::<AuditSink>().unwrap(), AuditSink::Stdout);
    assert_eq!(
        "/var/log/fieldseal/audit.log".parse::<AuditSink>().unwrap(),
        AuditSink::File("/var/log/fieldseal/audit.log".into())
    );
}

#[test]
fn stdout_sink_opens_at_genesis() {
    let log = AuditLog::open(AuditSink::Stdout, key("k1", 1)).unwrap();
    assert_eq!(log.head().unwrap().seq, 0);
}

/// Finding 18 of the review of issues 8/9: the User-Agent is client input
/// and is never written; its fingerprint is keyed (no dictionary of agents
/// maps it back without the key), stable under one key, and short.
#[test]
fn the_user_agent_is_written_as_a_keyed_fingerprint() {
    let (k1, k2) = (key("k1", 1), key("k2", 2));
    let a = k1.user_agent_fingerprint("curl/8.5.0");
    assert_eq!(a, k1.user_agent_fingerprint("curl/8.5.0"), "stable");
    assert_ne!(a, k1.user_agent_fingerprint("curl/8.5.1"));
    assert_ne!(a, k2.user_agent_fingerprint("curl/8.5.0"), "keyed");
    assert!(a.starts_with("ua1:") && a.len() == 20, "{a}");
    assert!(a[4..].bytes().all(|b| b.is_ascii_hexdigit()));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path, key("k1", 1)).unwrap();
    log.append(&AuditEvent {
        user_agent: Some("curl/8.5.0".into()),
        ..event(0)
    })
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("curl"), "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v["user_agent"], a.as_str());
    assert_eq!(verify_file(&path).unwrap(), 1);
}
