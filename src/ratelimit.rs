//! Per-client rate limits with governor.
//!
//! Clients are keyed by address, IPv6 grouped by /64 (one subscriber usually
//! owns a whole /64). Memory stays bounded: idle keys are pruned, and once
//! `max_tracked_clients` keys are live, requests from the flood share one
//! overflow bucket instead of growing the map.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;
use crate::routes::RateLimitSettings;

/// How often (in requests) the map size is looked at; `len()` visits every shard.
const SIZE_CHECK_EVERY: u64 = 64;
const PRUNE_AT_MOST_EVERY: Duration = Duration::from_secs(1);

pub fn client_key(ip: IpAddr) -> IpAddr {
    match crate::config::canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

pub struct Limiter {
    keyed: DefaultKeyedRateLimiter<IpAddr>,
    overflow: DefaultDirectRateLimiter,
    clock: DefaultClock,
    max_tracked: usize,
    calls: AtomicU64,
    full: AtomicBool,
    started: Instant,
    last_prune_ms: AtomicU64,
}

fn quota(s: RateLimitSettings) -> Quota {
    Quota::per_second(s.requests_per_second).allow_burst(s.burst)
}

impl Limiter {
    pub fn new(settings: RateLimitSettings, max_tracked: usize) -> Limiter {
        // The overflow bucket stands for many clients at once: give it the
        // capacity of a few of them rather than one.
        let scale =
            |n: NonZeroU32| n.saturating_mul(NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN));
        let overflow_quota = Quota::per_second(scale(settings.requests_per_second))
            .allow_burst(scale(settings.burst));
        Limiter {
            keyed: RateLimiter::keyed(quota(settings)),
            overflow: RateLimiter::direct(overflow_quota),
            clock: DefaultClock::default(),
            max_tracked,
            calls: AtomicU64::new(0),
            full: AtomicBool::new(false),
            started: Instant::now(),
            last_prune_ms: AtomicU64::new(0),
        }
    }

    /// Ok, or the time until the client may try again.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let key = client_key(client);
        if self.calls.fetch_add(1, Ordering::Relaxed) % SIZE_CHECK_EVERY == 0 {
            let full = self.keyed.len() >= self.max_tracked && {
                self.prune_throttled();
                self.keyed.len() >= self.max_tracked
            };
            self.full.store(full, Ordering::Relaxed);
        }
        if self.full.load(Ordering::Relaxed) {
            return self
                .overflow
                .check()
                .map_err(|nu| nu.wait_time_from(self.clock.now()));
        }
        self.keyed
            .check_key(&key)
            .map_err(|nu| nu.wait_time_from(self.clock.now()))
    }

    fn prune_throttled(&self) {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        let due = now_ms.saturating_sub(last) >= PRUNE_AT_MOST_EVERY.as_millis() as u64;
        if due
            && self
                .last_prune_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.prune();
        }
    }

    /// Drops keys whose state is back to "fresh": they hold no information.
    pub fn prune(&self) {
        self.keyed.retain_recent();
        self.keyed.shrink_to_fit();
    }

    pub fn tracked(&self) -> usize {
        self.keyed.len()
    }
}

/// The limiters of one config: routes that use the global default share its
/// bucket (a client's total rate); a route with its own limit has its own.
pub struct RateLimits {
    per_route: Vec<Option<Arc<Limiter>>>,
    global: Option<(RateLimitSettings, Arc<Limiter>)>,
    /// Each route's own limiter by route name, to carry it over a reload.
    own: Vec<(String, RateLimitSettings, Arc<Limiter>)>,
    max_tracked: usize,
}

impl RateLimits {
    pub fn new(config: &Config) -> RateLimits {
        RateLimits::carry_over(config, None)
    }

    /// Like `new`, but keeps `previous`'s buckets whose settings did not
    /// change (the global one; a route's own, by route name), so a reload
    /// does not hand every client a fresh burst.
    pub fn carry_over(config: &Config, previous: Option<&RateLimits>) -> RateLimits {
        let max = config.rate_limit.max_tracked_clients;
        let prev = previous.filter(|p| p.max_tracked == max);
        let global = config.rate_limit.default.map(|s| {
            let lim = prev
                .and_then(|p| p.global.as_ref())
                .filter(|(g, _)| *g == s)
                .map_or_else(|| Arc::new(Limiter::new(s, max)), |(_, l)| Arc::clone(l));
            (s, lim)
        });
        let mut own = Vec::new();
        let per_route = config
            .routes
            .routes
            .iter()
            .map(|r| {
                r.rate_limit.map(|s| match &global {
                    Some((g, lim)) if *g == s && !r.own_rate_limit => Arc::clone(lim),
                    _ => {
                        let lim = prev
                            .and_then(|p| p.own.iter().find(|(n, ps, _)| *n == r.name && *ps == s))
                            .map_or_else(
                                || Arc::new(Limiter::new(s, max)),
                                |(_, _, l)| Arc::clone(l),
                            );
                        own.push((r.name.clone(), s, Arc::clone(&lim)));
                        lim
                    }
                })
            })
            .collect();
        RateLimits {
            per_route,
            global,
            own,
            max_tracked: max,
        }
    }

    pub fn for_route(&self, index: usize) -> Option<&Limiter> {
        self.per_route.get(index).and_then(|l| l.as_deref())
    }

    pub fn prune_all(&self) {
        for l in self.per_route.iter().flatten() {
            l.prune();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rps: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            requests_per_second: NonZeroU32::new(rps).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn burst_then_refused_with_wait() {
        let l = Limiter::new(settings(1, 3), 1000);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(ip).is_ok());
        }
        let wait = l.check(ip).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // Another client is not affected.
        assert!(l.check("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_grouped_by_64() {
        let l = Limiter::new(settings(1, 1), 1000);
        assert!(l.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(l.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn memory_stays_bounded_under_address_flood() {
        let max = 5_000;
        let l = Limiter::new(settings(1, 1), max);
        for i in 0u32..200_000 {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            let _ = l.check(ip);
        }
        // Checked every SIZE_CHECK_EVERY calls, so at most that many past the cap.
        assert!(
            l.tracked() <= max + SIZE_CHECK_EVERY as usize,
            "tracked {} keys with a cap of {max}",
            l.tracked()
        );
    }

    #[test]
    fn a_route_with_its_own_limit_has_its_own_bucket_even_with_equal_settings() {
        let yaml = r#"
listen: { address: "127.0.0.1:0", tls: { cert: c.pem, key: k.pem } }
upstreams: { b: { url: "http://127.0.0.1:1" } }
rate_limit: { requests_per_second: 1, burst: 1 }
routes:
  - { name: shared-a, match: { path_prefix: /a }, upstream: b }
  - { name: shared-b, match: { path_prefix: /b }, upstream: b }
  - { name: own, match: { path_prefix: /own }, upstream: b, rate_limit: { requests_per_second: 1, burst: 1 } }
  - { name: off, match: { path_prefix: /off }, upstream: b, rate_limit: { enabled: false } }
"#;
        let config = Config::from_yaml(yaml, std::path::Path::new("/t.yaml")).unwrap();
        let limits = RateLimits::new(&config);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(limits.for_route(0).unwrap().check(ip).is_ok());
        assert!(
            limits.for_route(1).unwrap().check(ip).is_err(),
            "routes without a limit share the global bucket"
        );
        assert!(
            limits.for_route(2).unwrap().check(ip).is_ok(),
            "own limit, own bucket"
        );
        assert!(limits.for_route(3).is_none());
    }
}
