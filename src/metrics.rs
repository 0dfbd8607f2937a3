//! Prometheus metrics (prometheus-client). One `Metrics` lives for the whole
//! process, across reloads, and is shared by every request.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// AES-GCM with random 96-bit nonces: NIST SP 800-38D caps one key at 2^32
/// encryptions to keep the chance of a nonce collision below 2^-32.
pub const NONCE_BOUND: u64 = 1 << 32;
/// Warn when a key has done this many encryptions in this process.
pub const NONCE_WARN_AT: u64 = NONCE_BOUND / 4 * 3;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReason {
    pub route: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamKind {
    pub upstream: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabel {
    pub key_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    pub fields_encrypted: Family<RouteLabel, Counter>,
    pub fields_decrypted: Family<RouteLabel, Counter>,
    pub decrypt_failures: Family<RouteReason, Counter>,
    pub rate_limited: Family<RouteLabel, Counter>,
    pub upstream_errors: Family<UpstreamKind, Counter>,
    pub open_connections: Gauge,
    pub tls_handshake_failures: Counter,
    pub encryptions: Family<KeyLabel, Counter>,
    pub reloads: Family<OutcomeLabel, Counter>,
    pub last_reload_timestamp: Gauge<f64, AtomicU64>,
    pub last_reload_success: Gauge,
    pub audit_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fieldseal");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            fields_encrypted: Family::default(),
            fields_decrypted: Family::default(),
            decrypt_failures: Family::default(),
            rate_limited: Family::default(),
            upstream_errors: Family::default(),
            open_connections: Gauge::default(),
            tls_handshake_failures: Counter::default(),
            encryptions: Family::default(),
            reloads: Family::default(),
            last_reload_timestamp: Gauge::default(),
            last_reload_success: Gauge::default(),
            audit_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by route and status",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Whole request latency as the proxy sees it, by route",
            m.request_duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending the request upstream to its response headers, by upstream",
            m.upstream_duration.clone(),
        );
        registry.register(
            "fields_encrypted",
            "Field values encrypted in requests, by route",
            m.fields_encrypted.clone(),
        );
        registry.register(
            "fields_decrypted",
            "Field values decrypted in responses, by route",
            m.fields_decrypted.clone(),
        );
        registry.register(
            "decrypt_failures",
            "Field values that could not be decrypted, by route and reason",
            m.decrypt_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by route",
            m.rate_limited.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures, by upstream and kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections currently open",
            m.open_connections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "encryptions",
            "AES-GCM encryptions, by key id (random-nonce bound: 2^32 per key)",
            m.encryptions.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads, by outcome",
            m.reloads.clone(),
        );
        registry.register(
            "last_reload_timestamp_seconds",
            "Unix time of the last reload attempt",
            m.last_reload_timestamp.clone(),
        );
        registry.register(
            "last_reload_success",
            "1 if the last reload succeeded",
            m.last_reload_success.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit events that could not be written",
            m.audit_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts `n` encryptions under `key_id` and warns once the key nears
    /// the random-nonce bound. Returns true when this call crossed a threshold.
    pub fn count_encryptions(&self, key_id: &str, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        let before = self
            .encryptions
            .get_or_create(&KeyLabel {
                key_id: key_id.to_string(),
            })
            .inc_by(n);
        let after = before.saturating_add(n);
        let warned = before < NONCE_WARN_AT && after >= NONCE_WARN_AT;
        let passed = before < NONCE_BOUND && after >= NONCE_BOUND;
        if warned && !passed {
            tracing::warn!(
                key_id,
                encryptions = after,
                bound = NONCE_BOUND,
                "key is nearing the AES-GCM random-nonce bound: rotate to a new key"
            );
        }
        if passed {
            tracing::error!(
                key_id,
                encryptions = after,
                bound = NONCE_BOUND,
                "key has passed the AES-GCM random-nonce bound: rotate now"
            );
        }
        warned || passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_bound_warning_fires_once_at_each_threshold() {
        let m = Metrics::new();
        assert!(!m.count_encryptions("k1", 10));
        assert!(!m.count_encryptions("k1", NONCE_WARN_AT - 11));
        assert!(m.count_encryptions("k1", 1), "crossing 3/4 of 2^32 warns");
        assert!(!m.count_encryptions("k1", 1), "warns once");
        assert!(
            m.count_encryptions("k1", NONCE_BOUND),
            "passing the bound logs an error"
        );
        assert!(!m.count_encryptions("k2", 5), "counts are per key id");
        let text = m.encode();
        assert!(
            text.contains("fieldseal_encryptions_total{key_id=\"k2\"} 5"),
            "{text}"
        );
    }
}
