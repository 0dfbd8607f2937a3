//! Prometheus metrics (prometheus-client). One `Metrics` lives for the whole
//! process, across reloads, and is shared by every request.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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

/// One server of an upstream (`scheme://host:port`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub upstream: String,
    pub server: String,
}

/// A protected name/value pair outside a JSON body: where (`query`,
/// `form`, `path`) and what happened to it (`sealed`, `indexed`, `refused`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PairLabel {
    pub route: String,
    pub source: &'static str,
    pub action: &'static str,
}

/// Where a pair was.
pub const PAIR_SOURCES: [&str; 3] = ["query", "form", "path"];
/// What happened to it.
pub const PAIR_ACTIONS: [&str; 3] = ["sealed", "indexed", "refused"];

/// One route's pair counters, by source and action (indexes into
/// `PAIR_SOURCES` and `PAIR_ACTIONS`).
#[derive(Clone)]
pub struct PairCounters(Vec<Counter>);

impl PairCounters {
    pub fn add(&self, source: usize, action: usize, n: u64) {
        if n > 0 {
            if let Some(c) = self.0.get(source * PAIR_ACTIONS.len() + action) {
                c.inc_by(n);
            }
        }
    }
}

/// A server and why a request was refused a connection to it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerReason {
    pub upstream: String,
    pub server: String,
    pub reason: String,
}

/// A server and the outcome of an active health check of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerOutcome {
    pub upstream: String,
    pub server: String,
    pub outcome: String,
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

/// One serving runtime (`server.runtime: per_core`: one per worker thread;
/// `shared`: the one accept loop, "0").
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuntimeLabel {
    pub runtime: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabel {
    pub key_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
    rustc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseReason {
    pub reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// One route's metric handles, looked up once per config load so a request
/// doesn't allocate label strings or take the family's lock for them.
#[derive(Clone)]
pub struct RouteMetrics {
    pub requests: StatusCounters,
    pub request_duration: Histogram,
    pub fields_encrypted: Counter,
    pub fields_decrypted: Counter,
    pub rate_limited: Counter,
    /// Data subjects a `read_any_subject` role holder read, per request.
    pub role_subject_reads: Counter,
    pub pairs: PairCounters,
}

/// One route's `requests_total` counters by status: each looked up in the
/// family the first time its status is answered, then kept, so a request
/// doesn't allocate the route label. At most one per HTTP status code.
#[derive(Clone)]
pub struct StatusCounters {
    route: String,
    family: Family<RouteStatus, Counter>,
    seen: Arc<RwLock<Vec<(u16, Counter)>>>,
}

impl StatusCounters {
    pub fn inc(&self, status: u16) {
        let read = self.seen.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, c)) = read.iter().find(|(s, _)| *s == status) {
            c.inc();
            return;
        }
        drop(read);
        let c = self
            .family
            .get_or_create(&RouteStatus {
                route: self.route.clone(),
                status,
            })
            .clone();
        c.inc();
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if !seen.iter().any(|(s, _)| *s == status) {
            seen.push((status, c));
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    pub fields_encrypted: Family<RouteLabel, Counter>,
    pub fields_decrypted: Family<RouteLabel, Counter>,
    pub decrypt_failures: Family<RouteReason, Counter>,
    pub pairs: Family<PairLabel, Counter>,
    pub rate_limited: Family<RouteLabel, Counter>,
    pub upstream_errors: Family<UpstreamKind, Counter>,
    /// Requests sent again to another server of their upstream.
    pub upstream_retries: Family<UpstreamLabel, Counter>,
    /// Failed attempts (connect, TLS, closed, timeout), by server.
    pub upstream_server_failures: Family<ServerLabel, Counter>,
    /// Times a server was put in back-off.
    pub upstream_server_backoffs: Family<ServerLabel, Counter>,
    /// 1 while a server takes requests, 0 while in back-off.
    pub upstream_server_up: Family<ServerLabel, Gauge>,
    /// Open connections to a server (idle pooled ones included).
    pub upstream_server_connections: Family<ServerLabel, Gauge>,
    /// Connects refused at a server's `max_connections`, by reason
    /// (`queue_full`, `queue_timeout`).
    pub upstream_server_busy: Family<ServerReason, Counter>,
    /// Active health checks, by outcome (`ok`, `failed`).
    pub upstream_health_checks: Family<ServerOutcome, Counter>,
    pub open_connections: Gauge,
    /// Client connections open on each serving runtime, handshakes included.
    pub runtime_connections: Family<RuntimeLabel, Gauge>,
    pub tls_handshake_failures: Counter,
    pub encryptions: Family<KeyLabel, Counter>,
    pub reloads: Family<OutcomeLabel, Counter>,
    pub last_reload_timestamp: Gauge<f64, AtomicU64>,
    pub last_reload_success: Gauge,
    pub audit_failures: Counter,
    pub buffered_bytes: Gauge,
    pub buffer_limit_refusals: Counter,
    /// Subjects erased through this process's admin endpoint.
    pub subject_erasures: Counter,
    /// Data subjects read by holders of a `read_any_subject` role, by route
    /// (one per subject per request).
    pub role_subject_reads: Family<RouteLabel, Counter>,
    pub connections_closed: Family<CloseReason, Counter>,
    pub rate_limit_store_errors: Family<StoreErrorLabel, Counter>,
    pub rate_limit_store_fallback: Family<OutcomeLabel, Counter>,
    pub rate_limit_store_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("fieldseal");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            fields_encrypted: Family::default(),
            fields_decrypted: Family::default(),
            decrypt_failures: Family::default(),
            pairs: Family::default(),
            rate_limited: Family::default(),
            upstream_errors: Family::default(),
            upstream_retries: Family::default(),
            upstream_server_failures: Family::default(),
            upstream_server_backoffs: Family::default(),
            upstream_server_up: Family::default(),
            upstream_server_connections: Family::default(),
            upstream_server_busy: Family::default(),
            upstream_health_checks: Family::default(),
            open_connections: Gauge::default(),
            runtime_connections: Family::default(),
            tls_handshake_failures: Counter::default(),
            encryptions: Family::default(),
            reloads: Family::default(),
            last_reload_timestamp: Gauge::default(),
            last_reload_success: Gauge::default(),
            audit_failures: Counter::default(),
            buffered_bytes: Gauge::default(),
            buffer_limit_refusals: Counter::default(),
            subject_erasures: Counter::default(),
            role_subject_reads: Family::default(),
            connections_closed: Family::default(),
            rate_limit_store_errors: Family::default(),
            rate_limit_store_fallback: Family::default(),
            rate_limit_store_up: Gauge::default(),
            registry: Registry::default(),
        };
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::build_info::VERSION,
                commit: crate::build_info::GIT_COMMIT,
                rustc: crate::build_info::RUSTC,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say what is running",
            build,
        );
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
            "pairs",
            "Protected query, form and path pairs sealed, indexed or refused, by route, source and action",
            m.pairs.clone(),
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
            "upstream_retries",
            "Requests sent again to another server of the upstream after a failed attempt",
            m.upstream_retries.clone(),
        );
        registry.register(
            "upstream_server_failures",
            "Failed attempts on an upstream server (connect, TLS, closed, timeout)",
            m.upstream_server_failures.clone(),
        );
        registry.register(
            "upstream_server_backoffs",
            "Times an upstream server was taken out of rotation for its back-off",
            m.upstream_server_backoffs.clone(),
        );
        registry.register(
            "upstream_server_up",
            "1 while an upstream server takes requests, 0 during its back-off",
            m.upstream_server_up.clone(),
        );
        registry.register(
            "upstream_server_connections",
            "Open connections to an upstream server, idle pooled ones included (at most its max_connections)",
            m.upstream_server_connections.clone(),
        );
        registry.register(
            "upstream_server_busy",
            "Requests refused a connection to an upstream server at its max_connections, by reason (queue_full, queue_timeout)",
            m.upstream_server_busy.clone(),
        );
        registry.register(
            "upstream_health_checks",
            "Active health checks of an upstream server, by outcome (ok, failed)",
            m.upstream_health_checks.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections currently open",
            m.open_connections.clone(),
        );
        registry.register(
            "runtime_connections",
            "Client connections open on each serving runtime (server.runtime: per_core has one per worker), handshakes included",
            m.runtime_connections.clone(),
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
            "Unix time of the last configuration load: the start, or the last reload attempt",
            m.last_reload_timestamp.clone(),
        );
        registry.register(
            "last_reload_success",
            "1 if the last configuration load (the start, or the last reload) succeeded",
            m.last_reload_success.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit events that could not be written",
            m.audit_failures.clone(),
        );
        registry.register(
            "buffered_bytes",
            "Bytes of request and response bodies the proxy holds right now",
            m.buffered_bytes.clone(),
        );
        registry.register(
            "buffer_limit_refusals",
            "Requests answered 503 because limits.max_buffered_per_connection or max_buffered_total was reached",
            m.buffer_limit_refusals.clone(),
        );
        registry.register(
            "subject_erasures",
            "Subjects whose keys were erased through the admin endpoint",
            m.subject_erasures.clone(),
        );
        registry.register(
            "role_subject_reads",
            "Other subjects' data read under a read_any_subject role (one per data subject per request), by route; each is audited",
            m.role_subject_reads.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections the proxy closed on a deadline or a limit, by reason",
            m.connections_closed.clone(),
        );
        registry.register(
            "rate_limit_store_errors",
            "Calls to the rate-limit store (Redis) that failed or ran past redis.timeout, by reason",
            m.rate_limit_store_errors.clone(),
        );
        registry.register(
            "rate_limit_store_fallback",
            "Requests decided by rate_limit.on_store_error because the store gave no answer, by outcome",
            m.rate_limit_store_fallback.clone(),
        );
        registry.register(
            "rate_limit_store_up",
            "1 while the rate-limit store (Redis) answers, 0 while it is down or not yet connected",
            m.rate_limit_store_up.clone(),
        );
        root.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry: root,
            ..m
        }
    }

    pub fn route_handles(&self, route: &str) -> RouteMetrics {
        let label = RouteLabel {
            route: route.to_string(),
        };
        RouteMetrics {
            requests: StatusCounters {
                route: route.to_string(),
                family: self.requests.clone(),
                seen: Arc::default(),
            },
            request_duration: self.request_duration.get_or_create(&label).clone(),
            fields_encrypted: self.fields_encrypted.get_or_create(&label).clone(),
            fields_decrypted: self.fields_decrypted.get_or_create(&label).clone(),
            rate_limited: self.rate_limited.get_or_create(&label).clone(),
            role_subject_reads: self.role_subject_reads.get_or_create(&label).clone(),
            pairs: PairCounters(
                PAIR_SOURCES
                    .iter()
                    .flat_map(|source| {
                        PAIR_ACTIONS.iter().map(move |action| PairLabel {
                            route: route.to_string(),
                            source,
                            action,
                        })
                    })
                    .map(|l| self.pairs.get_or_create(&l).clone())
                    .collect(),
            ),
        }
    }

    pub fn upstream_handle(&self, upstream: &str) -> Histogram {
        self.upstream_duration
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_string(),
            })
            .clone()
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
        self.key_counter(key_id).count(n)
    }

    /// The encryption counter of `key_id`, for a route to keep (a request
    /// then neither allocates the label nor takes the family's lock).
    pub fn key_counter(&self, key_id: &str) -> KeyCounter {
        let label = KeyLabel {
            key_id: key_id.to_string(),
        };
        KeyCounter {
            counter: self.encryptions.get_or_create(&label).clone(),
            key_id: label.key_id,
        }
    }
}

/// One key id's encryption counter (see [`Metrics::key_counter`]).
#[derive(Clone)]
pub struct KeyCounter {
    key_id: String,
    counter: Counter,
}

impl KeyCounter {
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// [`Metrics::count_encryptions`] on this key id.
    pub fn count(&self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        let key_id = self.key_id.as_str();
        let before = self.counter.inc_by(n);
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

/// The standard `process_*` metrics, read from `/proc` on every scrape
/// (Linux; elsewhere they are left out).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, Option<f64>); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                p.start_time,
            ),
            ("process_threads", "Number of OS threads", p.threads),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// Linux's USER_HZ, the unit of the times in `/proc/<pid>/stat`: fixed at
/// 100 by the kernel ABI (what Prometheus' own process collector assumes).
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time: Option<f64>,
    threads: Option<f64>,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64);
        let mut p = ProcessStats::parse(&stat, &status, &limits, &boot)?;
        p.open_fds = fds;
        Some(p)
    }

    /// From the texts of `/proc/self/stat`, `/proc/self/status`,
    /// `/proc/self/limits` and `/proc/stat`.
    fn parse(stat: &str, status: &str, limits: &str, boot: &str) -> Option<ProcessStats> {
        // The command name is in parentheses and may hold spaces or `)`.
        let after = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // `f[0]` is field 3 (state) of proc(5).
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let cpu_seconds = (field(14)? + field(15)?) / USER_HZ;
        let kib = |key: &str| {
            status.lines().find_map(|l| {
                let v = l.strip_prefix(key)?.trim();
                v.strip_suffix("kB").unwrap_or(v).trim().parse::<f64>().ok()
            })
        };
        let btime = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok());
        let max_fds = limits.lines().find_map(|l| {
            let rest = l.strip_prefix("Max open files")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        });
        Some(ProcessStats {
            cpu_seconds,
            resident_bytes: kib("VmRSS:").map(|k| k * 1024.0),
            virtual_bytes: field(23),
            open_fds: None,
            max_fds,
            start_time: btime.zip(field(22)).map(|(b, t)| b + t / USER_HZ),
            threads: kib("Threads:"),
        })
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
        // A route's kept counter is the family's.
        let kept = m.key_counter("k2");
        assert!(!kept.count(2));
        assert!(
            m.encode()
                .contains("fieldseal_encryptions_total{key_id=\"k2\"} 7"),
            "{}",
            m.encode()
        );
    }

    #[test]
    fn a_routes_kept_status_counters_are_the_familys() {
        let m = Metrics::new();
        let a = m.route_handles("a");
        // A second config load's handles count on the same series.
        let again = m.route_handles("a");
        a.requests.inc(200);
        a.requests.inc(200);
        again.requests.inc(200);
        a.requests.inc(404);
        m.requests
            .get_or_create(&RouteStatus {
                route: "a".into(),
                status: 404,
            })
            .inc();
        let text = m.encode();
        for line in [
            "fieldseal_requests_total{route=\"a\",status=\"200\"} 3",
            "fieldseal_requests_total{route=\"a\",status=\"404\"} 2",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}

#[cfg(test)]
mod process_tests {
    use super::*;

    #[test]
    fn proc_texts_parse_into_process_metrics() {
        let stat = "4242 (fs (worker) 1) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    250 125 0 0 20 0 9 0 123456 987654321 2000 18446744073709551615";
        let status = "Name:\tfieldseal\nThreads:\t9\nVmRSS:\t   8192 kB\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let p = ProcessStats::parse(stat, status, limits, boot).expect("parses");
        assert_eq!(p.cpu_seconds, 3.75);
        assert_eq!(p.resident_bytes, Some(8192.0 * 1024.0));
        assert_eq!(p.virtual_bytes, Some(987654321.0));
        assert_eq!(p.max_fds, Some(1024.0));
        assert_eq!(p.start_time, Some(1700000000.0 + 1234.56));
        assert_eq!(p.threads, Some(9.0));
        assert!(ProcessStats::parse("garbage", "", "", "").is_none());
    }

    #[test]
    fn scrape_has_process_and_build_info_metrics() {
        let text = Metrics::new().encode();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
            "fieldseal_build_info{",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
        assert!(!text.contains("fieldseal_process_"), "{text}");
    }
}
