//! Passive health of one server: `fails` failed attempts in a row take it
//! out of rotation for `backoff`; then one request probes it (the others
//! still skip it), and a success brings it back while a failure renews the
//! back-off.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::Health;
use crate::metrics::{Metrics, ServerLabel, ServerOutcome};

/// Whether a request may use a server now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Up,
    /// Its back-off is over and this request is the one that probes it.
    Probe,
    Down,
}

pub struct ServerHealth {
    fails_limit: u32,
    backoff: Duration,
    /// Failed attempts in a row.
    fails: AtomicU32,
    /// 0: up; else nanoseconds after `base` when the back-off ends.
    down_until: AtomicU64,
    base: Instant,
    failures: Counter,
    backoffs: Counter,
    up: Gauge,
    checks_ok: Counter,
    checks_failed: Counter,
    last_check: Mutex<Option<LastCheck>>,
}

/// The outcome of a server's latest active check, for /readyz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheck {
    pub ok: bool,
    /// Unix seconds.
    pub at: u64,
    /// The answer's status code, or `timeout` / `no_answer`.
    pub result: String,
}

impl ServerHealth {
    pub(super) fn new(upstream: &str, server: &str, h: &Health, m: &Metrics) -> ServerHealth {
        let label = ServerLabel {
            upstream: upstream.to_string(),
            server: server.to_string(),
        };
        let outcome = |o: &str| {
            m.upstream_health_checks
                .get_or_create(&ServerOutcome {
                    upstream: upstream.to_string(),
                    server: server.to_string(),
                    outcome: o.to_string(),
                })
                .clone()
        };
        let up = m.upstream_server_up.get_or_create(&label).clone();
        up.set(1);
        ServerHealth {
            fails_limit: h.fails,
            backoff: h.backoff,
            fails: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            base: Instant::now(),
            failures: m.upstream_server_failures.get_or_create(&label).clone(),
            backoffs: m.upstream_server_backoffs.get_or_create(&label).clone(),
            up,
            checks_ok: outcome("ok"),
            checks_failed: outcome("failed"),
            last_check: Mutex::new(None),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        // +1: 0 means "up"; u64 nanoseconds last 584 years.
        t.saturating_duration_since(self.base).as_nanos() as u64 + 1
    }

    /// Not in back-off (its back-off may have just ended).
    pub fn is_up(&self, now: Instant) -> bool {
        let d = self.down_until.load(Ordering::Acquire);
        d == 0 || self.nanos(now) >= d
    }

    /// The latest active check, if any ran.
    pub fn last_check(&self) -> Option<LastCheck> {
        self.last_check.lock().ok().and_then(|l| l.clone())
    }

    /// Seconds until the back-off ends (0: not in back-off).
    pub fn backoff_left(&self, now: Instant) -> f64 {
        let d = self.down_until.load(Ordering::Acquire);
        let n = self.nanos(now);
        if d == 0 || n >= d {
            0.0
        } else {
            (d - n) as f64 / 1e9
        }
    }

    /// Whether this server's state can be kept by a config with `h`.
    pub(super) fn same_settings(&self, h: &Health) -> bool {
        self.fails_limit == h.fails && self.backoff == h.backoff
    }

    /// Failed attempts in a row.
    pub fn fails_in_a_row(&self) -> u32 {
        self.fails.load(Ordering::Relaxed)
    }

    /// Whether this request may use the server; when its back-off is over,
    /// the first request to ask probes it and the back-off is extended for
    /// the others until that probe's outcome is known.
    pub(super) fn admits(&self, now: Instant) -> Admit {
        let d = self.down_until.load(Ordering::Acquire);
        if d == 0 {
            return Admit::Up;
        }
        let n = self.nanos(now);
        if n < d {
            return Admit::Down;
        }
        let again = n + self.backoff.as_nanos() as u64;
        match self
            .down_until
            .compare_exchange(d, again, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Admit::Probe,
            Err(_) => Admit::Down,
        }
    }

    /// When the back-off ends (0: not in back-off), for ordering.
    pub(super) fn back_at(&self) -> u64 {
        self.down_until.load(Ordering::Acquire)
    }

    pub(super) fn success(&self) {
        self.fails.store(0, Ordering::Relaxed);
        if self.down_until.swap(0, Ordering::AcqRel) != 0 {
            self.up.set(1);
        }
    }

    /// The outcome of one active check: counted like a request's attempt
    /// (a passing check also ends a back-off at once).
    pub(super) fn checked(&self, ok: bool, result: String) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Ok(mut last) = self.last_check.lock() {
            *last = Some(LastCheck { ok, at, result });
        }
        if ok {
            self.checks_ok.inc();
            self.success();
        } else {
            self.checks_failed.inc();
            self.failure(Instant::now());
        }
    }

    pub(super) fn failure(&self, now: Instant) {
        self.failures.inc();
        let fails = self.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if fails < self.fails_limit {
            return;
        }
        let n = self.nanos(now);
        let before = self
            .down_until
            .swap(n + self.backoff.as_nanos() as u64, Ordering::AcqRel);
        // A new back-off, not another in-flight failure during one.
        if before == 0 || before <= n || before > n + self.backoff.as_nanos() as u64 / 2 {
            self.backoffs.inc();
        }
        self.up.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(fails: u32, backoff: Duration) -> ServerHealth {
        let h = Health {
            fails,
            backoff,
            check: None,
        };
        ServerHealth::new("u", "http://s", &h, &Metrics::new())
    }

    #[test]
    fn fails_in_a_row_take_a_server_out_and_its_back_off_lets_one_probe_in() {
        let h = health(2, Duration::from_secs(10));
        let t0 = Instant::now();
        h.failure(t0);
        assert_eq!(h.admits(t0), Admit::Up, "one failure is not enough");
        h.success();
        h.failure(t0);
        assert_eq!(h.admits(t0), Admit::Up, "a success resets the count");
        h.failure(t0);
        assert_eq!(h.admits(t0), Admit::Down);
        assert!(!h.is_up(t0 + Duration::from_secs(9)));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(h.admits(later), Admit::Probe, "one request probes");
        assert_eq!(h.admits(later), Admit::Down, "the others still skip it");
        h.failure(later);
        assert_eq!(h.admits(later + Duration::from_secs(5)), Admit::Down);
        let again = later + Duration::from_secs(11);
        assert_eq!(h.admits(again), Admit::Probe);
        h.success();
        assert_eq!(h.admits(again), Admit::Up);
    }
}
