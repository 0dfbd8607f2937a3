//! Envelope parsing and opening must never panic, whatever the input.
//! Input: `<context>\n<envelope>` (no newline: context "ssn"). The ring holds
//! the masters of docs/envelope.md, so the seed vectors authenticate and the
//! fuzzer also reaches the plaintext rebuilding code.
//!
//! Run (stable toolchain; RUSTC_BOOTSTRAP enables the nightly-only flags):
//!   cargo install cargo-fuzz
//!   mkdir -p fuzz/corpus/envelope_open
//!   RUSTC_BOOTSTRAP=1 cargo fuzz run envelope_open \
//!     fuzz/corpus/envelope_open fuzz/seeds/envelope_open -- -max_total_time=60
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use fieldseal::crypto::{envelope_key_id, looks_like_envelope, Keyring};
use libfuzzer_sys::fuzz_target;

fn ring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        let m1: [u8; 32] = std::array::from_fn(|i| i as u8);
        let m2: [u8; 32] = std::array::from_fn(|i| 31 - i as u8);
        Keyring::from_raw_keys("k1", vec![("k1".into(), m1), ("k2-2024_b".into(), m2)])
            .expect("fuzz ring")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (context, envelope) = text.split_once('\n').unwrap_or(("ssn", &text));
    let ring = ring();
    let _ = looks_like_envelope(envelope);
    let _ = envelope_key_id(envelope);
    let _ = ring.open_at(
        envelope,
        context,
        Some(Duration::from_secs(60)),
        1_700_000_000,
    );
    let _ = ring.open_at(envelope, context, None, 0);
    // Reach the base64 and AEAD paths even from short random inputs.
    let _ = ring.open_at(&format!("fs1:k1:{envelope}"), context, None, 0);
});
