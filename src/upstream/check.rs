//! Active health checks: one task per server, `GET health.path` every
//! `health.interval` (jittered, so replicas and servers don't check in
//! step), each check bounded by `health.timeout` as a whole. A 2xx or 3xx
//! answer is a success, anything else (another status, a connect or TLS
//! failure, no answer in time) a failure, recorded in the server's health
//! like a request's attempt.
//!
//! A check goes out like a real request to the server (same TLS trust and
//! client certificate, the upstream's Host policy) but on a connection of
//! its own: a server at `max_connections` is busy, not unhealthy, and a
//! check must not take a connection from requests.
//!
//! The tasks belong to the `UpstreamClient` of one config: started when
//! that config starts serving, stopped when a reload replaces it, at
//! shutdown, and in any case when it is dropped. A task holds no lock and
//! waits on nothing but its own timers and its one check, so a server whose
//! health path hangs costs one task waiting out its timeout.

use std::sync::Arc;

use http::header::{HeaderValue, HOST, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::BodyExt;

use crate::config::ActiveCheck;

use super::ServerClient;

/// The most of a check's answer body read (to keep its connection for the
/// next check); a longer one is dropped with its connection.
const MAX_CHECK_BODY: usize = 64 * 1024;

/// What a server's checker sends.
pub(super) struct CheckSpec {
    pub check: ActiveCheck,
    pub scheme: http::uri::Scheme,
    /// Set when the upstream sends a fixed Host; else the server's authority.
    pub host: Option<HeaderValue>,
}

/// Runs the checks of one server until the task is aborted.
pub(super) async fn run(server: Arc<ServerClient>, spec: Arc<CheckSpec>) {
    let mut jitter = Jitter::new();
    // The first check within one interval of the start, not all at once.
    tokio::time::sleep(spec.check.interval.mul_f64(jitter.unit())).await;
    loop {
        let (ok, result) = check_once(&server, &spec).await;
        server.health.checked(ok, result);
        // ±10% around the interval.
        let factor = 0.9 + 0.2 * jitter.unit();
        tokio::time::sleep(spec.check.interval.mul_f64(factor)).await;
    }
}

/// Passed, and what was seen: the status code, `timeout` or `no_answer`.
async fn check_once(server: &ServerClient, spec: &CheckSpec) -> (bool, String) {
    let no_answer = || (false, "no_answer".to_string());
    let Some(pool) = server.check_pool.as_ref() else {
        return no_answer();
    };
    let uri = Uri::builder()
        .scheme(spec.scheme.clone())
        .authority(server.authority.clone())
        .path_and_query(spec.check.path.clone())
        .build();
    let Ok(uri) = uri else {
        return no_answer();
    };
    let mut req = Request::new(crate::body::full(bytes::Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static("fieldseal-health-check"),
    );
    if let Some(host) = &spec.host {
        headers.insert(HOST, host.clone());
    }
    let outcome = tokio::time::timeout(spec.check.timeout, async {
        let resp = pool.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read (a bounded part of) the body so the connection can be reused.
        let mut body = resp.into_body();
        let mut read = 0usize;
        while read <= MAX_CHECK_BODY {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) | None => break,
            }
        }
        Ok::<_, String>(status)
    })
    .await;
    match outcome {
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => {
            (true, status.as_u16().to_string())
        }
        Ok(Ok(status)) => {
            tracing::debug!(server = %server.label, status = status.as_u16(), "upstream health check failed");
            (false, status.as_u16().to_string())
        }
        Ok(Err(error)) => {
            tracing::debug!(server = %server.label, %error, "upstream health check failed");
            no_answer()
        }
        Err(_) => {
            tracing::debug!(server = %server.label, timeout = ?spec.check.timeout, "upstream health check timed out");
            (false, "timeout".to_string())
        }
    }
}

/// A small xorshift generator for the jitter, seeded from the OS.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let mut seed = [0u8; 8];
        // Without randomness the checks are merely in step: not a failure.
        let _ = getrandom::getrandom(&mut seed);
        Jitter(u64::from_le_bytes(seed) | 1)
    }

    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_unit_interval_and_varies() {
        let mut j = Jitter::new();
        let draws: Vec<f64> = (0..1000).map(|_| j.unit()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((300..700).contains(&low), "{low} of 1000 below 0.5");
    }
}
