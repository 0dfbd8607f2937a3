//! Exact, load-independent counts of the field transform: allocator calls
//! per operation (a counting global allocator, in this bench binary only),
//! and a loop of one operation to run under callgrind
//! (`bench/transform-count.sh` takes the difference of two loop lengths, so
//! the setup cancels out).
//!
//!   transform_count [encrypt|decrypt] [2kb|2kb-index|load|64kb] [iterations]
//!
//! `2kb-index` is the 2 KB document on a route that also writes one blind
//! index (`$.email` into `email_idx`, the email sealed too); `load` is
//! `bench/request.json`, the document of `bench/load.sh` (106 members).
//!
//! Without arguments (as `cargo bench` runs it) it prints the allocation
//! counts of both directions on every document.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use fieldseal::config::Config;
use fieldseal::crypto::Keyring;
use fieldseal::proxy::{decrypt_body, encrypt_body};

mod fixtures;
use fixtures::{list_doc, load_doc, user_doc, CONFIG};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY-free: delegates to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counts() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        REALLOCS.load(Ordering::Relaxed),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::from_yaml(CONFIG, std::path::Path::new("/bench.yaml")).expect("config");
    let ring = Keyring::from_raw_keys("k1", vec![("k1".to_string(), [9u8; 32])]).expect("ring");
    let doc = |name: &str| match name {
        "64kb" => ("list", serde_json::to_vec(&list_doc()).expect("doc")),
        "load" => ("user", load_doc()),
        "2kb-index" => (
            "user-indexed",
            serde_json::to_vec(&user_doc()).expect("doc"),
        ),
        _ => ("user", serde_json::to_vec(&user_doc()).expect("doc")),
    };
    if let [op, which, n] = &args[..] {
        let n: usize = n.parse().expect("iterations");
        let (route, raw) = doc(which);
        let route = config.routes.by_name(route).expect("route");
        let sealed = bytes::Bytes::from(encrypt_body(&raw, route, &ring).expect("encrypt").0);
        for _ in 0..n {
            match op.as_str() {
                "encrypt" => {
                    std::hint::black_box(encrypt_body(std::hint::black_box(&raw), route, &ring))
                        .expect("encrypt");
                }
                _ => {
                    std::hint::black_box(
                        decrypt_body(std::hint::black_box(sealed.clone()), route, &ring)
                            .0
                            .expect("decrypt"),
                    );
                }
            }
        }
        return;
    }
    for which in ["2kb", "2kb-index", "load", "64kb"] {
        let (route, raw) = doc(which);
        let route = config.routes.by_name(route).expect("route");
        let sealed = bytes::Bytes::from(encrypt_body(&raw, route, &ring).expect("encrypt").0);
        let (a0, r0) = counts();
        let (_, report) = encrypt_body(&raw, route, &ring).expect("encrypt");
        let (a1, r1) = counts();
        decrypt_body(sealed.clone(), route, &ring)
            .0
            .expect("decrypt");
        let (a2, r2) = counts();
        println!(
            "{which} ({} bytes, {} fields): encrypt {} allocations + {} reallocations, decrypt {} + {}",
            raw.len(),
            report.encrypted,
            a1 - a0,
            r1 - r0,
            a2 - a1,
            r2 - r1
        );
    }
}
