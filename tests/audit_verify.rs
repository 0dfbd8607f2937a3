//! Tamper detection: each manipulation is reported at the documented line
//! with the documented kind (see docs/audit.md).

use std::io::Cursor;
use std::path::Path;

use fieldseal::audit::{
    verify, verify_from, verify_with, AuditEvent, AuditKey, AuditLog, AuditSink, ChainHead,
    TamperKind, VerifyError, VerifyOptions, VerifyReport,
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

/// A changed key is not tampering: when no line under a kid verifies, the
/// verifier says the key does not match and whether the chain's own fields
/// still link up, instead of calling line 1 edited.
#[test]
fn wrong_key_reads_as_a_key_mismatch_not_as_tampering() {
    let l = lines();
    let text = l.join("\n") + "\n";
    let wrong = |_: &str| Some(key_bytes("k9"));
    match verify(Cursor::new(text), wrong) {
        Err(VerifyError::KeyMismatch { line, kid, detail }) => {
            assert_eq!((line, kid.as_str()), (1, "k1"));
            assert!(detail.contains(&format!("{N} line(s)")), "{detail}");
            assert!(detail.contains("still chain"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // With a line removed as well, it says the chain is broken there too.
    let mut gap = lines();
    gap.remove(3);
    let text = gap.join("\n") + "\n";
    match verify(Cursor::new(text), wrong) {
        Err(VerifyError::KeyMismatch {
            line: 1, detail, ..
        }) => {
            assert!(detail.contains("stop chaining at line 4"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_changed_key_after_a_rotation_is_a_key_mismatch_where_its_lines_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, "k1", 3);
    write_log(&path, "k2", 3);
    let text = std::fs::read_to_string(&path).unwrap();
    let k2_changed = |kid: &str| match kid {
        "k1" => Some(key_bytes("k1")),
        _ => Some(key_bytes("k7")),
    };
    match verify(Cursor::new(text), k2_changed) {
        Err(VerifyError::KeyMismatch { line, kid, .. }) => {
            assert_eq!((line, kid.as_str()), (4, "k2"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_edit_is_still_an_edit_when_it_hits_the_first_line_of_a_key() {
    // The key is right (the other lines verify), so a bad first line is
    // tampering, whichever line of the kid comes first.
    for k in [1, 2] {
        let mut l = lines();
        l[k - 1] = l[k - 1].replace("\"POST\"", "\"GET\"");
        assert_tampered(&l, k as u64, TamperKind::Edited);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, "k1", 3);
    write_log(&path, "k2", 3);
    let mut l: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    l[3] = l[3].replace("\"POST\"", "\"GET\"");
    assert_tampered(&l, 4, TamperKind::Edited);
}

#[test]
fn an_expected_head_exposes_a_truncated_or_rewritten_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let head = write_log(&path, "k1", N);
    let text = std::fs::read_to_string(&path).unwrap();
    let expect = |text: &str, head: &ChainHead| {
        verify_with(
            Cursor::new(text.to_string()),
            VerifyOptions {
                from: None,
                expect: Some(head),
            },
            keys,
        )
    };
    // The whole log reaches the head; so does a longer one.
    assert_eq!(expect(&text, &head).unwrap().last, Some(head.clone()));
    let mid = run(&lines_from(&text)[..3]).unwrap().last.unwrap();
    assert_eq!(expect(&text, &mid).unwrap().lines, N as u64);

    // The last two lines cut off: a valid chain, but short of the head.
    let l = lines_from(&text);
    let cut = l[..N - 2].join("\n") + "\n";
    match expect(&cut, &head) {
        Err(VerifyError::Tampered { line, kind, detail }) => {
            assert_eq!((line, kind), (N as u64 - 1, TamperKind::Truncated));
            assert!(detail.contains("2 line(s)"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // An empty file where the head was.
    match expect("", &head) {
        Err(VerifyError::Tampered { kind, .. }) => assert_eq!(kind, TamperKind::Truncated),
        other => panic!("{other:?}"),
    }
    // Rewritten from scratch with the key: every line verifies, but the
    // line at the head's seq is not the one recorded.
    let other = lines_with("forged");
    let forged = other.join("\n") + "\n";
    assert!(
        run(&other).is_ok(),
        "a consistent rewrite verifies on its own"
    );
    match expect(&forged, &head) {
        Err(VerifyError::Tampered { line, kind, .. }) => {
            assert_eq!((line, kind), (N as u64, TamperKind::Rewritten))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn heads_print_and_parse_as_seq_colon_mac() {
    let head = ChainHead {
        seq: 42,
        mac: "ab".repeat(32),
    };
    let text = head.to_string();
    assert_eq!(text, format!("42:{}", "ab".repeat(32)));
    assert_eq!(text.parse::<ChainHead>().unwrap(), head);
    for bad in ["42", "x:ab", "42:AB", &format!("42:{}", "ab".repeat(31))] {
        assert!(bad.parse::<ChainHead>().is_err(), "{bad}");
    }
    // An expected head before the start is a usage error, not a verdict.
    let l = lines();
    let from = run(&l[..3]).unwrap().last.unwrap();
    let early = run(&l[..1]).unwrap().last.unwrap();
    let rest = l[3..].join("\n") + "\n";
    let r = verify_with(
        Cursor::new(rest),
        VerifyOptions {
            from: Some(&from),
            expect: Some(&early),
        },
        keys,
    );
    assert!(matches!(r, Err(VerifyError::Options(_))), "{r:?}");
}

fn lines_from(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
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
