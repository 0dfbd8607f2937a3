//! Tamper detection: each manipulation is reported at the documented line
//! with the documented kind (see docs/audit.md).

use std::io::Cursor;
use std::path::Path;

use fieldseal::audit::{
    verify, verify_from, AuditEvent, AuditKey, AuditLog, AuditSink, ChainHead, TamperKind,
    VerifyError, VerifyReport,
};
use zeroize::Zeroizing;

const N: usize = 6;

fn key_bytes(id: &str) -> Zeroizing<[u8; 32]> {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ id.as_bytes()[id.len() - 1];
    }
    Zeroizing::new(k)
}

fn keys(kid: &str) -> Option<Zeroizing<[u8; 32]>> {
    matches!(kid, "k1" | "k2").then(|| key_bytes(kid))
}

fn event_with(prefix: &str, i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("{prefix}-{i}"),
        route: "users".into(),
        client: "10.0.0.7:5123".into(),
        user_agent: Some("curl/8".into()),
        method: "POST".into(),
        fields: vec!["$.ssn".into(), "$.card.number".into()],
        key_ids: vec!["k1".into()],
        encrypted: 2,
        decrypted: 0,
        outcome: "ok".into(),
    }
}

fn write_log(path: &Path, kid: &str, count: usize) -> ChainHead {
    write_log_with(path, kid, count, "req")
}

fn write_log_with(path: &Path, kid: &str, count: usize, prefix: &str) -> ChainHead {
    let log = AuditLog::open(
        AuditSink::File(path.to_path_buf()),
        AuditKey::new(kid.into(), key_bytes(kid)),
    )
    .unwrap();
    for i in 0..count {
        log.append(&event_with(prefix, i)).unwrap();
    }
    log.head().unwrap()
}

/// A fresh log of N lines under k1, as lines without newlines.
fn lines() -> Vec<String> {
    lines_with("req")
}

fn lines_with(prefix: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log_with(&path, "k1", N, prefix);
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn run(lines: &[String]) -> Result<VerifyReport, VerifyError> {
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    verify(Cursor::new(text), keys)
}

#[track_caller]
fn assert_tampered(lines: &[String], want_line: u64, want_kind: TamperKind) {
    match run(lines) {
        Err(VerifyError::Tampered { line, kind, detail }) => {
            assert_eq!(
                (line, kind),
                (want_line, want_kind),
                "detail: {detail}\nlog:\n{}",
                lines.join("\n")
            );
            assert!(!detail.is_empty());
        }
        other => panic!("expected {want_kind:?} at line {want_line}, got {other:?}"),
    }
}

#[test]
fn untouched_log_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let head = write_log(&path, "k1", N);
    let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let report = verify(file, keys).unwrap();
    assert_eq!(report.lines, N as u64);
    assert_eq!(report.last, Some(head));
}

#[test]
fn empty_log_passes() {
    let report = verify(Cursor::new(""), keys).unwrap();
    assert_eq!(report.lines, 0);
    assert_eq!(report.last, None);
}

#[test]
fn removed_line_is_reported_at_its_position() {
    for k in 1..N {
        let mut l = lines();
        l.remove(k - 1);
        assert_tampered(&l, k as u64, TamperKind::Removed);
    }
}

#[test]
fn removed_run_of_lines_is_reported_at_the_gap() {
    let mut l = lines();
    l.drain(1..4); // lines 2..=4
    assert_tampered(&l, 2, TamperKind::Removed);
}

#[test]
fn removed_tail_is_invisible_without_an_anchor_but_caught_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let anchor = write_log(&path, "k1", N);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut l: Vec<String> = text.lines().map(str::to_owned).collect();
    l.pop();
    let report = run(&l).unwrap();
    assert_eq!(report.lines, (N - 1) as u64);
    let last = report.last.unwrap();
    assert_eq!(last.seq, (N - 1) as u64);
    assert_ne!(last, anchor, "an external anchor exposes the truncation");
}

#[test]
fn swapped_adjacent_lines_are_reordered_at_the_first() {
    for k in 1..N {
        let mut l = lines();
        l.swap(k - 1, k);
        assert_tampered(&l, k as u64, TamperKind::Reordered);
    }
}

#[test]
fn line_moved_later_or_earlier_is_reordered() {
    let mut l = lines();
    let moved = l.remove(1); // line 2 moved to the end
    l.push(moved);
    assert_tampered(&l, 2, TamperKind::Reordered);

    let mut l = lines();
    let moved = l.remove(4); // line 5 moved to position 2
    l.insert(1, moved);
    assert_tampered(&l, 2, TamperKind::Reordered);
}

#[test]
fn edited_field_is_reported_at_the_line() {
    for k in 1..=N {
        let mut l = lines();
        let edited = l[k - 1].replace("\"outcome\":\"ok\"", "\"outcome\":\"refused\"");
        assert_ne!(edited, l[k - 1]);
        l[k - 1] = edited;
        assert_tampered(&l, k as u64, TamperKind::Edited);
    }
}

#[test]
fn edited_seq_prev_or_mac_is_reported_as_edited() {
    let mut l = lines();
    l[2] = l[2].replace("\"seq\":3,", "\"seq\":9,");
    assert_tampered(&l, 3, TamperKind::Edited);

    let mut l = lines();
    let prev_at = l[2].find("\"prev\":\"").unwrap() + 8;
    let digit = if &l[2][prev_at..prev_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    l[2].replace_range(prev_at..prev_at + 1, digit);
    assert_tampered(&l, 3, TamperKind::Edited);

    let mut l = lines();
    let mac_at = l[2].find("\"mac\":\"").unwrap() + 7;
    let digit = if &l[2][mac_at..mac_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    l[2].replace_range(mac_at..mac_at + 1, digit);
    assert_tampered(&l, 3, TamperKind::Edited);
}

#[test]
fn edited_count_is_reported_as_edited() {
    let mut l = lines();
    l[3] = l[3].replace("\"encrypted\":2,", "\"encrypted\":0,");
    assert_tampered(&l, 4, TamperKind::Edited);
}

#[test]
fn inserted_copy_of_an_earlier_line_is_reported_at_the_copy() {
    for k in 2..=N {
        for j in 1..k {
            let mut l = lines();
            let copy = l[j - 1].clone();
            l.insert(k - 1, copy);
            assert_tampered(&l, k as u64, TamperKind::Inserted);
        }
    }
}

#[test]
fn inserted_copy_of_a_later_line_is_reported_at_the_copy() {
    for k in 1..N {
        for j in (k + 1)..=N {
            let mut l = lines();
            let copy = l[j - 1].clone();
            l.insert(k - 1, copy);
            assert_tampered(&l, k as u64, TamperKind::Inserted);
        }
    }
}

#[test]
fn inserted_copy_at_the_end_is_reported() {
    let mut l = lines();
    let copy = l[N - 1].clone();
    l.push(copy);
    assert_tampered(&l, N as u64 + 1, TamperKind::Inserted);
}

#[test]
fn inserted_forged_line_is_reported_at_the_forgery() {
    for k in 1..=N {
        // A forger can read seq and prev, but cannot compute the MAC.
        let mut l = lines();
        let forged = l[k - 1].replace("\"request_id\":\"req-", "\"request_id\":\"forged-");
        l.insert(k - 1, forged);
        assert_tampered(&l, k as u64, TamperKind::Inserted);
    }
}

#[test]
fn forged_line_appended_at_the_tail_reads_as_edited() {
    // Documented limit: with no following line, a bad MAC at the tail cannot
    // be told apart from an edit of that line.
    let mut l = lines();
    let forged = l[N - 1]
        .replace(&format!("\"seq\":{N},"), &format!("\"seq\":{},", N + 1))
        .replace("req-", "forged-");
    l.push(forged);
    assert_tampered(&l, N as u64 + 1, TamperKind::Edited);
}

#[test]
fn line_from_another_chain_is_inserted() {
    // A different log under the same key: its lines carry valid MACs.
    let other = lines_with("other");
    let mut l = lines();
    l.insert(3, other[3].clone()); // seq 4 as expected, but the wrong prev
    assert_tampered(&l, 4, TamperKind::Inserted);

    let mut l = lines();
    l[3] = other[3].clone(); // substituted rather than inserted
    assert_tampered(&l, 4, TamperKind::Inserted);

    // A foreign line with a later seq: the expected line follows, but the
    // foreign line's own predecessor is nowhere in this log.
    let mut l = lines();
    l.insert(3, other[4].clone());
    assert_tampered(&l, 4, TamperKind::Inserted);

    // Replaced by a foreign line with a later seq: line 4 is simply gone.
    let mut l = lines();
    l[3] = other[4].clone();
    assert_tampered(&l, 4, TamperKind::Removed);
}

#[test]
fn unknown_kid_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, "k1", 2);
    write_log(&path, "k3", 2); // reopened under a key the verifier lacks
    let text = std::fs::read_to_string(&path).unwrap();
    match verify(Cursor::new(text), keys) {
        Err(VerifyError::Tampered { line: 3, kind, .. }) => {
            assert_eq!(kind, TamperKind::UnknownKey)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rotated_key_chain_verifies_with_both_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, "k1", 3);
    let head = write_log(&path, "k2", 3);
    let text = std::fs::read_to_string(&path).unwrap();
    let report = verify(Cursor::new(text.clone()), keys).unwrap();
    assert_eq!(report.lines, 6);
    assert_eq!(report.last, Some(head));
    let kids: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["kid"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kids, ["k1", "k1", "k1", "k2", "k2", "k2"]);
    // Only k1 known: the first k2 line is flagged.
    let only_k1 = |kid: &str| (kid == "k1").then(|| key_bytes("k1"));
    match verify(Cursor::new(text), only_k1) {
        Err(VerifyError::Tampered { line, kind, .. }) => {
            assert_eq!((line, kind), (4, TamperKind::UnknownKey))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_key_reads_as_edited() {
    let l = lines();
    let text = l.join("\n") + "\n";
    let wrong = |_: &str| Some(key_bytes("k9"));
    match verify(Cursor::new(text), wrong) {
        Err(VerifyError::Tampered { line, kind, .. }) => {
            assert_eq!((line, kind), (1, TamperKind::Edited))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_lines_are_reported() {
    let mut l = lines();
    l.insert(2, "not json".into());
    assert_tampered(&l, 3, TamperKind::Malformed);

    let mut l = lines();
    l.insert(2, String::new());
    assert_tampered(&l, 3, TamperKind::Malformed);

    // An extra member, even with the mac suffix intact.
    let mut l = lines();
    l[1] = l[1].replace("{\"audit\":1,", "{\"audit\":1,\"extra\":1,");
    assert_tampered(&l, 2, TamperKind::Malformed);

    // Uppercase hex: the MAC has one spelling only.
    let mut l = lines();
    let at = l[1].len() - 66;
    let upper = l[1][at..].to_uppercase();
    l[1].replace_range(at.., &upper);
    assert_tampered(&l, 2, TamperKind::Malformed);
}

#[test]
fn partial_last_line_is_malformed() {
    let l = lines();
    let mut text = l.join("\n") + "\n";
    text.push_str(&l[0][..20]);
    match verify(Cursor::new(text), keys) {
        Err(VerifyError::Tampered { line, kind, .. }) => {
            assert_eq!((line, kind), (N as u64 + 1, TamperKind::Malformed))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn chain_must_start_at_genesis_unless_anchored() {
    let l = lines();
    let tail = &l[2..];
    // Head removed: the first line is not seq 1.
    assert_tampered(tail, 1, TamperKind::Removed);
    // With the previous file's last position, the rest verifies.
    let before = run(&l[..2]).unwrap().last.unwrap();
    let text = tail.join("\n") + "\n";
    let report = verify_from(Cursor::new(text), Some(&before), keys).unwrap();
    assert_eq!(report.lines, (N - 2) as u64);
    assert_eq!(report.last.unwrap().seq, N as u64);
}
