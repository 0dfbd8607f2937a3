//! The request id: the client's `X-Request-Id` where it may set one, else
//! ours. It joins the access log, the audit line, the upstream request and
//! the answer.

use std::net::SocketAddr;

use http::header::HeaderValue;
use http::Request;

use crate::config::TrustRequestId;
use crate::headers::X_REQUEST_ID;
use crate::state::Runtime;

/// The id of a request from `peer`.
pub(super) fn for_request<B>(rt: &Runtime, req: &Request<B>, peer: SocketAddr) -> HeaderValue {
    accepted(rt, req, peer).unwrap_or_else(ours)
}

/// The client's `X-Request-Id`, when `log.trust_request_id` lets this peer
/// set it and it is well-formed (see [`is_well_formed_request_id`]), so a
/// trace started in front of the proxy goes on through it.
fn accepted<B>(rt: &Runtime, req: &Request<B>, peer: SocketAddr) -> Option<HeaderValue> {
    let trusted = match rt.config.log.trust_request_id {
        TrustRequestId::Never => false,
        TrustRequestId::Always => true,
        TrustRequestId::TrustedProxies => rt.config.is_trusted_proxy(peer.ip()),
    };
    if !trusted {
        return None;
    }
    let mut values = req.headers().get_all(&X_REQUEST_ID).iter();
    let v = values.next()?;
    // Two ids: neither can be the trace's.
    if values.next().is_some() || !is_well_formed_request_id(v.as_bytes()) {
        return None;
    }
    Some(v.clone())
}

/// 1 to 128 bytes of `A-Z a-z 0-9 - _ . :` (UUIDs, ULIDs, W3C and hex
/// trace ids): nothing that could break a log line or a header.
pub fn is_well_formed_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A request id unique for this process's life: a random per-process prefix
/// and a counter. It only has to correlate log lines, so no syscall per
/// request for fresh randomness.
fn ours() -> HeaderValue {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        // Without the OS RNG, the start time still separates processes.
        if getrandom::getrandom(&mut b).is_err() {
            b = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64))
            .to_le_bytes();
        }
        u64::from_le_bytes(b)
    });
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Written on the stack: the header value is the one allocation.
    let mut id = [0u8; 32];
    hex16(prefix, &mut id[..16]);
    hex16(counter, &mut id[16..]);
    // Hex digits only: always a valid header value.
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
}

/// `v` as 16 lowercase hex digits into `out`.
fn hex16(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate().take(16) {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_ids_are_short_and_plain() {
        assert!(is_well_formed_request_id(
            b"0f8fad5b-d9cb-469f-a165-70867728950e"
        ));
        assert!(is_well_formed_request_id(
            b"00-4bf92f3577b34da6-00f067aa0ba902b7-01"
        ));
        assert!(!is_well_formed_request_id(b""));
        assert!(!is_well_formed_request_id(&[b'a'; 129]));
        assert!(!is_well_formed_request_id(b"a b"));
        assert!(!is_well_formed_request_id(b"a\r\nb"));
    }

    #[test]
    fn our_ids_are_unique_hex() {
        let (a, b) = (ours(), ours());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn hex16_is_format_x016() {
        for v in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut out = [0u8; 16];
            hex16(v, &mut out);
            assert_eq!(
                std::str::from_utf8(&out).expect("ascii"),
                format!("{v:016x}")
            );
        }
    }
}
