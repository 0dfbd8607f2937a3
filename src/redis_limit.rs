//! The shared stage of a rate limit: GCRA buckets in Redis, one round trip
//! per request (a Lua script called by EVALSHA; on NOSCRIPT it is loaded
//! and called again).
//!
//! A call has a time budget (`redis.timeout`). A call that fails or runs
//! past it marks the store down and drops its connection: from then on
//! requests don't wait on Redis at all (`on_store_error` decides at once),
//! and one background probe per store opens a fresh connection, pings and
//! loads the script, with exponential back-off and jitter, until Redis
//! answers; only then is that connection handed to requests. So an outage
//! costs no latency per request and causes no reconnect storm, however many
//! requests arrive, and the probe is the only thing that ever connects.
//! (The crate's `ConnectionManager` reconnects on its own schedule, with
//! its own retries and sleeps, which requests then wait on past their
//! budget: measured as spurious timeouts right after Redis came back.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::MultiplexedConnection;
use redis::IntoConnectionInfo;
use serde_json::{json, Value};

use crate::config::{RedisSettings, RedisUrl};
use crate::crypto::unix_now;
use crate::metrics::{Metrics, StoreErrorLabel};

/// GCRA (the generic cell rate algorithm, as governor runs it locally) on
/// one key holding the theoretical arrival time in microseconds of Redis's
/// own clock, so replicas' clocks don't matter. ARGV: the emission interval
/// in microseconds (1e6 / rate, may be fractional), the burst. Returns
/// {1, 0} when admitted, {0, microseconds to wait} when not. The key expires
/// when its bucket is full again, so idle clients cost no memory.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - now - tolerance
if wait > 0 then
  return {0, math.ceil(wait)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
";

const MAX_PASSWORD_FILE: u64 = 4096;
const MAX_CA_FILE: u64 = 1 << 20;

/// The probe's first wait after a failure, and its cap.
const PROBE_FIRST: Duration = Duration::from_millis(100);
const PROBE_MAX: Duration = Duration::from_secs(5);

/// The store's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admitted,
    /// Refused; the client may try again after this long.
    Limited(Duration),
}

/// Why the store gave no answer. The labels are the metric's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Marked down by an earlier failure; not asked.
    Down,
    Timeout,
    Connection,
    Auth,
    Script,
    Other,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Down => "down",
            Failure::Timeout => "timeout",
            Failure::Connection => "connection",
            Failure::Auth => "auth",
            Failure::Script => "script",
            Failure::Other => "other",
        }
    }

    fn of(e: &redis::RedisError) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            Failure::Connection
        } else if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed) {
            Failure::Auth
        } else if matches!(e.kind(), redis::ErrorKind::Server(_)) {
            Failure::Script
        } else {
            Failure::Other
        }
    }
}

/// A `redis` section that can't be used. `key` is the config key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfigError {
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for StoreConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis.{}: {}", self.key, self.message)
    }
}

fn config_error(key: &'static str, message: impl Into<String>) -> StoreConfigError {
    StoreConfigError {
        key,
        message: message.into(),
    }
}

/// What the settings point at, read from the environment and files. Never
/// printed: the URL and the password are secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Resolved {
    url: String,
    password: Option<String>,
    ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolved { .. }")
    }
}

/// Reads the URL, the password file and the CA bundle and checks them
/// without connecting (what `check` does too). Messages never include the
/// URL or the password.
pub fn resolve(s: &RedisSettings) -> Result<Resolved, StoreConfigError> {
    let url = match &s.url {
        RedisUrl::Env(var) => std::env::var(var).map_err(|e| {
            let why = match e {
                std::env::VarError::NotPresent => "is not set",
                std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
            };
            config_error("url_env", format!("environment variable {var} {why}"))
        })?,
        RedisUrl::Inline(u) => u.clone(),
    };
    let key = match s.url {
        RedisUrl::Env(_) => "url_env",
        RedisUrl::Inline(_) => "url",
    };
    let url = url.trim().to_owned();
    let tls = if url.starts_with("rediss://") {
        true
    } else if url.starts_with("redis://") {
        false
    } else {
        return Err(config_error(
            key,
            "the URL must start with redis:// or rediss:// (TLS)",
        ));
    };
    if url.as_str().into_connection_info().is_err() {
        // The parser's message may repeat the URL, and with it a password.
        return Err(config_error(key, "the URL does not parse"));
    }
    let password = s
        .password_file
        .as_ref()
        .map(|p| {
            // Opened as every file the config names: a FIFO can't hang a load.
            let text = crate::files::read_regular_text(p, MAX_PASSWORD_FILE).map_err(|e| {
                config_error("password_file", format!("cannot read {}: {e}", p.display()))
            })?;
            let pw = text.trim_end_matches(['\r', '\n']).to_owned();
            if pw.is_empty() {
                return Err(config_error(
                    "password_file",
                    format!("{} is empty", p.display()),
                ));
            }
            Ok(pw)
        })
        .transpose()?;
    let ca = match &s.ca {
        None => None,
        Some(_) if !tls => {
            return Err(config_error(
                "ca",
                "is set but the URL is redis:// (plain); use rediss:// for TLS",
            ))
        }
        Some(p) => {
            let pem = crate::files::read_regular(p, MAX_CA_FILE)
                .map_err(|e| config_error("ca", format!("cannot read {}: {e}", p.display())))?;
            if pem_certificates(&pem) == 0 {
                return Err(config_error(
                    "ca",
                    format!("{} holds no PEM certificate", p.display()),
                ));
            }
            Some(pem)
        }
    };
    Ok(Resolved { url, password, ca })
}

/// How many PEM certificates `pem` holds, up to the first that doesn't parse.
fn pem_certificates(pem: &[u8]) -> usize {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .take_while(Result::is_ok)
        .count()
}

fn client(r: &Resolved) -> Result<redis::Client, StoreConfigError> {
    let mut info = r
        .url
        .as_str()
        .into_connection_info()
        .map_err(|_| config_error("url", "the URL does not parse"))?;
    if let Some(pw) = &r.password {
        let settings = info.redis_settings().clone().set_password(pw);
        info = info.set_redis_settings(settings);
    }
    let built = match &r.ca {
        None => redis::Client::open(info),
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
    };
    built.map_err(|_| config_error("url", "cannot build a client for this URL"))
}

/// The metric handles of the store.
#[derive(Clone)]
pub struct StoreMetrics {
    errors: Family<StoreErrorLabel, Counter>,
    pub fallback_allowed: Counter,
    pub fallback_denied: Counter,
    up: Gauge,
}

impl StoreMetrics {
    pub fn new(m: &Metrics) -> StoreMetrics {
        // One statement each: a family's handle guards its lock until the
        // statement ends, and a second get_or_create would wait on it.
        let outcome = |o: &str| crate::metrics::OutcomeLabel { outcome: o.into() };
        let fallback_allowed = m
            .rate_limit_store_fallback
            .get_or_create(&outcome("allowed"))
            .clone();
        let fallback_denied = m
            .rate_limit_store_fallback
            .get_or_create(&outcome("denied"))
            .clone();
        StoreMetrics {
            errors: m.rate_limit_store_errors.clone(),
            fallback_allowed,
            fallback_denied,
            up: m.rate_limit_store_up.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Health {
    /// Unix seconds of the last change between up and down.
    since: u64,
    last_error: Option<Failure>,
}

/// One Redis, shared by every limiter of a config that names it and kept
/// across reloads while its settings are unchanged.
pub struct RedisStore {
    settings: RedisSettings,
    resolved: Resolved,
    client: redis::Client,
    /// The probe's connection once it answered; None while down.
    conn: ArcSwapOption<MultiplexedConnection>,
    script: redis::Script,
    /// Set by a failed call; cleared by the probe when Redis answers.
    down: AtomicBool,
    /// Becomes true at the first connection: until then a request waits
    /// for it (within its budget) rather than fall back at start-up.
    connected: tokio::sync::watch::Sender<bool>,
    probing: AtomicBool,
    /// Calls that failed or ran out of time, since start.
    failures: AtomicU64,
    health: Mutex<Health>,
    metrics: StoreMetrics,
    /// Handed to the probe task so it ends when the store is dropped.
    this: Weak<RedisStore>,
}

impl RedisStore {
    /// A store for `settings`, or `previous` when it was built from the
    /// same settings and what they point at is unchanged (its connection
    /// goes on). Connects lazily, in the background.
    pub fn new(
        settings: &RedisSettings,
        previous: Option<&Arc<RedisStore>>,
        metrics: &Metrics,
    ) -> Result<Arc<RedisStore>, StoreConfigError> {
        let resolved = resolve(settings)?;
        if let Some(p) = previous.filter(|p| p.settings == *settings && p.resolved == resolved) {
            return Ok(Arc::clone(p));
        }
        let client = client(&resolved)?;
        let store = Arc::new_cyclic(|this| RedisStore {
            settings: settings.clone(),
            resolved,
            client,
            conn: ArcSwapOption::empty(),
            script: redis::Script::new(GCRA),
            down: AtomicBool::new(false),
            connected: tokio::sync::watch::Sender::new(false),
            probing: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            health: Mutex::new(Health {
                since: unix_now(),
                last_error: None,
            }),
            metrics: StoreMetrics::new(metrics),
            this: this.clone(),
        });
        store.metrics.up.set(0);
        // Down until the probe connects: now, when there is a runtime to do
        // it on (else at the first request), so no request pays for it.
        store.down.store(true, Ordering::Release);
        store.start_probe(Duration::ZERO);
        Ok(store)
    }

    pub fn key_prefix(&self) -> &str {
        &self.settings.key_prefix
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Takes one token from `key`'s bucket (rate given as its emission
    /// interval in microseconds), within the time budget.
    pub async fn take(
        &self,
        key: &str,
        interval_us: &str,
        burst: u32,
    ) -> Result<Decision, Failure> {
        let Some(conn) = self.current().await else {
            return Err(Failure::Down);
        };
        let mut conn = (*conn).clone();
        let mut call = self.script.prepare_invoke();
        call.key(key).arg(interval_us).arg(burst);
        let answer = tokio::time::timeout(
            self.settings.timeout,
            call.invoke_async::<(i64, i64)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((1, _))) => Ok(Decision::Admitted),
            Ok(Ok((_, wait_us))) => Ok(Decision::Limited(Duration::from_micros(
                u64::try_from(wait_us).unwrap_or(0),
            ))),
            Ok(Err(e)) => Err(self.failed(Failure::of(&e))),
            Err(_) => Err(self.failed(Failure::Timeout)),
        }
    }

    /// The connection to use, or None while the store is down.
    async fn current(&self) -> Option<Arc<MultiplexedConnection>> {
        if !self.down.load(Ordering::Acquire) {
            if let Some(c) = self.conn.load_full() {
                return Some(c);
            }
        }
        // Started at creation when there was a runtime; else now.
        self.start_probe(Duration::ZERO);
        if *self.connected.borrow() {
            return None;
        }
        // Not connected yet since start: wait for it within the budget.
        let mut first = self.connected.subscribe();
        let _ = tokio::time::timeout(self.settings.timeout, first.wait_for(|c| *c)).await;
        if self.down.load(Ordering::Acquire) {
            None
        } else {
            self.conn.load_full()
        }
    }

    fn failed(&self, why: Failure) -> Failure {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .errors
            .get_or_create(&StoreErrorLabel {
                reason: why.label(),
            })
            .inc();
        if let Ok(mut h) = self.health.lock() {
            h.last_error = Some(why);
        }
        if !self.down.swap(true, Ordering::AcqRel) {
            // The probe connects afresh; requests in flight keep theirs.
            self.conn.store(None);
            if let Ok(mut h) = self.health.lock() {
                h.since = unix_now();
            }
            self.metrics.up.set(0);
            tracing::warn!(
                reason = why.label(),
                "rate-limit store failed; rate_limit.on_store_error decides until it answers again"
            );
            self.start_probe(PROBE_FIRST);
        }
        why
    }

    /// One probe at a time: waits, pings and loads the script, doubling
    /// its wait (with jitter) until Redis answers, then marks the store up.
    fn start_probe(&self, first: Duration) {
        if self.probing.load(Ordering::Acquire) || self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.this.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::Release);
            return;
        };
        rt.spawn(async move {
            let mut wait = first;
            let started = Instant::now();
            loop {
                tokio::time::sleep(jitter(wait)).await;
                let Some(store) = this.upgrade() else { return };
                match store.connect().await {
                    Ok(conn) => {
                        store.conn.store(Some(Arc::new(conn)));
                        store.recovered(started.elapsed());
                        return;
                    }
                    Err(why) => {
                        if let Ok(mut h) = store.health.lock() {
                            h.last_error = Some(why);
                        }
                    }
                }
                wait = (wait * 2).clamp(PROBE_FIRST, PROBE_MAX);
            }
        });
    }

    /// A new connection that answered PING and holds the script.
    async fn connect(&self) -> Result<MultiplexedConnection, Failure> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(None);
        let work = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| Failure::of(&e))?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|e| Failure::of(&e))?;
            self.script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(|e| Failure::of(&e))?;
            Ok(conn)
        };
        tokio::time::timeout(self.settings.connect_timeout, work)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }

    fn recovered(&self, after: Duration) {
        if let Ok(mut h) = self.health.lock() {
            h.since = unix_now();
        }
        self.metrics.up.set(1);
        self.down.store(false, Ordering::Release);
        self.probing.store(false, Ordering::Release);
        self.connected.send_replace(true);
        let had_failed = self.failures.load(Ordering::Relaxed) > 0;
        if had_failed {
            tracing::info!(
                after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                "rate-limit store answers again"
            );
        } else {
            tracing::info!("rate-limit store connected");
        }
    }

    /// What /readyz shows.
    pub fn status(&self) -> Value {
        let h = self.health.lock().map(|h| *h).unwrap_or(Health {
            since: 0,
            last_error: None,
        });
        let down = self.down.load(Ordering::Acquire);
        let mut v = json!({
            "status": if down { "down" } else { "ok" },
            "since": h.since,
            "failures": self.failures.load(Ordering::Relaxed),
            "timeout_ms": u64::try_from(self.settings.timeout.as_millis()).unwrap_or(u64::MAX),
        });
        if let (Some(e), Some(map)) = (h.last_error, v.as_object_mut()) {
            map.insert("last_error".into(), json!(e.label()));
        }
        v
    }
}

/// `d` scaled by a random factor in [0.5, 1.5), so replicas that lost Redis
/// together don't all come back at the same instant.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    if getrandom::getrandom(&mut b).is_err() {
        return d;
    }
    let f = 0.5 + f64::from(u16::from_le_bytes(b)) / 65536.0;
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn settings(url: RedisUrl) -> RedisSettings {
        RedisSettings {
            url,
            password_file: None,
            timeout: Duration::from_millis(5),
            connect_timeout: Duration::from_secs(1),
            key_prefix: "t:".into(),
            ca: None,
        }
    }

    #[test]
    fn resolve_refuses_what_cannot_work_without_echoing_the_url() {
        let bad = settings(RedisUrl::Inline("http://user:hunter2@h/".into()));
        let e = resolve(&bad).unwrap_err();
        assert_eq!(e.key, "url");
        assert!(!e.message.contains("hunter2"), "{e}");
        let unset = settings(RedisUrl::Env("FIELDSEAL_TEST_UNSET_REDIS_URL".into()));
        let e = resolve(&unset).unwrap_err();
        assert_eq!(e.key, "url_env");
        assert!(e.message.contains("is not set"), "{e}");
        let mut plain_ca = settings(RedisUrl::Inline("redis://127.0.0.1:1/".into()));
        plain_ca.ca = Some(PathBuf::from("/nonexistent.pem"));
        assert_eq!(resolve(&plain_ca).unwrap_err().key, "ca");
        let mut no_pw = settings(RedisUrl::Inline("redis://127.0.0.1:1/".into()));
        no_pw.password_file = Some(PathBuf::from("/nonexistent/pw"));
        assert_eq!(resolve(&no_pw).unwrap_err().key, "password_file");
        assert!(resolve(&settings(RedisUrl::Inline(
            "rediss://cache.internal:6380/2".into()
        )))
        .is_ok());
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j < Duration::from_millis(1500));
        }
    }
}
