//! The field transform allocates per document, not per value: sealing or
//! opening 200 fields takes no more allocator calls than 4 (a counting
//! global allocator, in this test binary only; one test, so one thread).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use fieldseal::crypto::Keyring;
use fieldseal::transform::{self, FieldPath, FieldRule, Keys, OpenSpec, SealSpec};
use serde_json::{json, Value};

struct Counting;

static CALLS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn calls(f: impl FnOnce()) -> u64 {
    let before = CALLS.load(Ordering::Relaxed);
    f();
    CALLS.load(Ordering::Relaxed) - before
}

fn doc(n: usize) -> Vec<u8> {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({ "id": i, "ssn": format!("{i:03}-45-6789"), "note": "x".repeat(40 + i % 50), "card": { "number": "4111111111111111" } }))
        .collect();
    serde_json::to_vec(&json!({ "items": items })).expect("doc")
}

#[test]
fn allocations_do_not_grow_with_fields() {
    let ring = Keyring::from_raw_keys("k1", vec![("k1".to_string(), [3u8; 32])]).expect("ring");
    let rules: Vec<FieldRule> = ["$.items[*].ssn", "$.items[*].card.number"]
        .iter()
        .map(|p| FieldRule {
            path: FieldPath::parse(p).expect("path"),
            context: None,
        })
        .collect();
    let seal = SealSpec::new(rules.clone());
    let open = OpenSpec::new(transform::DecryptSelection::Paths(rules));
    let mut counts = Vec::new();
    for n in [2, 100] {
        let raw = doc(n);
        let mut sealed = Vec::new();
        let enc = calls(|| {
            let (out, report) =
                transform::encrypt(&raw, &seal, Keys::from(&ring), 1_000).expect("encrypt");
            assert_eq!(report.encrypted, 2 * n);
            sealed = out;
        });
        let mut opened = Vec::new();
        let dec = calls(|| {
            let (out, report) = transform::decrypt(&sealed, &open, &ring, 1_000).expect("decrypt");
            assert_eq!(report.decrypted, 2 * n);
            opened = out;
        });
        assert_eq!(
            serde_json::from_slice::<Value>(&opened).expect("json"),
            serde_json::from_slice::<Value>(&raw).expect("json")
        );
        counts.push((enc, dec));
    }
    let (small, large) = (counts[0], counts[1]);
    println!("allocator calls (encrypt, decrypt): 4 fields {small:?}, 200 fields {large:?}");
    // A few more for buffers that grow with the document (the output
    // doubling past its estimate, the rule-state stack), none per value:
    // 200 values against 4.
    assert!(
        large.0 <= small.0 + 8,
        "encrypt: {} allocator calls for 4 fields, {} for 200",
        small.0,
        large.0
    );
    assert!(
        large.1 <= small.1 + 8,
        "decrypt: {} allocator calls for 4 fields, {} for 200",
        small.1,
        large.1
    );
}
