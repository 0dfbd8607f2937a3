//! Per-client rate limits with governor.
//!
//! Clients are keyed by address, IPv6 grouped by /64 (one subscriber usually
//! owns a whole /64). Memory stays bounded: idle keys are pruned, and at most
//! `max_tracked_clients` keys are held exactly. A tracked client is always
//! judged by its own bucket. Past the cap, a new client is judged by a
//! fixed-size count-min sketch of buckets: each address is hashed to one
//! cell per row and limited by the least used of its cells, and every
//! admission raises all of them. Collisions only make it stricter, so an
//! address in the sketch is never let through more than its own quota;
//! memory does not grow with the number of addresses.
//!
//! With `store: redis` that local limiter is the first of two stages: a
//! request it admits then takes a token from the client's bucket in Redis
//! (`redis_limit`), shared by every replica. Both run GCRA with the same
//! rate and burst. The local stage keeps one client's flood off Redis (it
//! sends Redis at most what the shared limit could admit); it sees only
//! this replica's part of the client's traffic, and can run ahead of the
//! shared bucket only by the requests it passed that Redis refused, which
//! bounds the difference at one emission interval (1/rate): it never
//! refuses a request the shared limit would admit more than 1/rate seconds
//! earlier. (Proof sketch in README, "Shared rate limits".)

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::redis_limit::{Decision, RedisStore, StoreConfigError};
use crate::routes::RateLimitSettings;

/// `rate_limit.store`: where a bucket lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitStore {
    /// In this process: each replica enforces the limit on its own.
    #[default]
    Local,
    /// In the top-level `redis`, shared by every replica using it.
    Redis,
}

/// `rate_limit.on_store_error`: the answer while Redis is down or slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Admit what the local stage admits (each replica's own limit).
    #[default]
    Allow,
    /// Refuse with 503 `rate_limit_store_unavailable`.
    Deny,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client's bucket is empty; it may retry after this long.
    Limited(Duration),
    /// The shared store gave no answer and `on_store_error: deny`.
    StoreUnavailable,
}

/// The Redis stage of a limiter.
struct SharedBucket {
    store: Arc<RedisStore>,
    /// `key_prefix` and the bucket's name (`global`, `route:NAME`).
    prefix: String,
    /// The emission interval in microseconds, as the script reads it.
    interval_us: String,
    burst: u32,
    on_error: OnStoreError,
}

const PRUNE_AT_MOST_EVERY: Duration = Duration::from_secs(1);
const SHARDS: usize = 16;
const SKETCH_ROWS: usize = 4;

pub fn client_key(ip: IpAddr) -> IpAddr {
    match crate::config::canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain numbers behind: still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Governor's GCRA state (the theoretical arrival time of each key), kept
/// exactly for up to `max` keys and in a sketch for the rest.
pub struct ClientStore {
    shards: Vec<Mutex<HashMap<IpAddr, u64>>>,
    hasher: RandomState,
    len: AtomicUsize,
    max: usize,
    /// Set when a key had to go to the sketch; prompts a prune.
    full: AtomicBool,
    sketch: Mutex<Vec<u64>>,
    sketch_width: usize,
}

impl ClientStore {
    fn new(max: usize) -> ClientStore {
        // About one cell per four tracked clients in each row, within bounds:
        // 4 rows of 1,024 to 65,536 cells, 32 KiB to 2 MiB.
        let sketch_width = (max / 4).clamp(1024, 1 << 16).next_power_of_two();
        ClientStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            max,
            full: AtomicBool::new(false),
            sketch: Mutex::new(vec![0; SKETCH_ROWS * sketch_width]),
            sketch_width,
        }
    }

    /// The sketch cells of `key`, one per row. The hash is keyed per process
    /// (SipHash with a random key), so addresses can't be picked to collide.
    fn cells(&self, key: &IpAddr) -> [usize; SKETCH_ROWS] {
        let h = self.hasher.hash_one(key);
        let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
        let mut out = [0; SKETCH_ROWS];
        for (row, cell) in out.iter_mut().enumerate() {
            let col =
                (h1.wrapping_add((row as u64).wrapping_mul(h2)) as usize) & (self.sketch_width - 1);
            *cell = row * self.sketch_width + col;
        }
        out
    }

    fn sketch_measure<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let cells = self.cells(key);
        let mut sketch = lock(&self.sketch);
        let estimate = cells.iter().map(|&c| sketch[c]).min().unwrap_or(0);
        // A cell at 0 (never used) reads as a fresh bucket, like `None`.
        let (t, next) = f(Some(Nanos::from(estimate)))?;
        let next = u64::from(next);
        for &c in &cells {
            sketch[c] = sketch[c].max(next);
        }
        Ok(t)
    }
}

/// The store as governor holds it, shared with the `Limiter` that looks at
/// its size.
pub struct SharedStore(Arc<ClientStore>);

impl StateStore for SharedStore {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

impl ClientStore {
    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut map = lock(shard);
        if let Some(tat) = map.get_mut(key) {
            let (t, next) = f(Some(Nanos::from(*tat)))?;
            *tat = next.into();
            return Ok(t);
        }
        let room = self
            .len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l < self.max).then_some(l + 1)
            })
            .is_ok();
        if room {
            return match f(None) {
                Ok((t, next)) => {
                    map.insert(*key, next.into());
                    Ok(t)
                }
                Err(e) => {
                    self.len.fetch_sub(1, Ordering::AcqRel);
                    Err(e)
                }
            };
        }
        drop(map);
        self.full.store(true, Ordering::Relaxed);
        self.sketch_measure(key, f)
    }

    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = u64::from(drop_below);
        for shard in &self.shards {
            let mut map = lock(shard);
            let before = map.len();
            map.retain(|_, tat| *tat > drop_below);
            self.len.fetch_sub(before - map.len(), Ordering::AcqRel);
        }
        self.full.store(false, Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        for shard in &self.shards {
            lock(shard).shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}

pub struct Limiter {
    keyed: RateLimiter<IpAddr, SharedStore, DefaultClock>,
    shared: Option<SharedBucket>,
    store: Arc<ClientStore>,
    clock: DefaultClock,
    started: Instant,
    last_prune_ms: AtomicU64,
}

fn quota(s: RateLimitSettings) -> Quota {
    Quota::per_second(s.requests_per_second).allow_burst(s.burst)
}

impl Limiter {
    pub fn new(settings: RateLimitSettings, max_tracked: usize) -> Limiter {
        let clock = DefaultClock::default();
        let store = Arc::new(ClientStore::new(max_tracked));
        Limiter {
            keyed: RateLimiter::new(
                quota(settings),
                SharedStore(Arc::clone(&store)),
                clock.clone(),
            ),
            shared: None,
            store,
            clock,
            started: Instant::now(),
            last_prune_ms: AtomicU64::new(0),
        }
    }

    /// A limiter whose second stage is `bucket` in `store` (with
    /// `store: redis`; otherwise `store` is not used).
    fn with_store(
        settings: RateLimitSettings,
        max_tracked: usize,
        store: Option<&Arc<RedisStore>>,
        bucket: &str,
    ) -> Limiter {
        let mut l = Limiter::new(settings, max_tracked);
        if let (crate::ratelimit::LimitStore::Redis, Some(store)) = (settings.store, store) {
            l.shared = Some(SharedBucket {
                prefix: format!("{}{bucket}:", store.key_prefix()),
                store: Arc::clone(store),
                interval_us: format!(
                    "{}",
                    1_000_000f64 / f64::from(settings.requests_per_second.get())
                ),
                burst: settings.burst.get(),
                on_error: settings.on_store_error,
            });
        }
        l
    }

    /// Both stages: the local bucket, then the shared one when there is one.
    pub async fn admit(&self, client: IpAddr) -> Result<(), Refused> {
        self.check(client).map_err(Refused::Limited)?;
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let key = format!("{}{}", shared.prefix, client_key(client));
        match shared
            .store
            .take(&key, &shared.interval_us, shared.burst)
            .await
        {
            Ok(Decision::Admitted) => Ok(()),
            Ok(Decision::Limited(wait)) => Err(Refused::Limited(wait)),
            Err(_) => match shared.on_error {
                OnStoreError::Allow => {
                    shared.store.metrics().fallback_allowed.inc();
                    Ok(())
                }
                OnStoreError::Deny => {
                    shared.store.metrics().fallback_denied.inc();
                    Err(Refused::StoreUnavailable)
                }
            },
        }
    }

    /// Ok, or the time until the client may try again.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let key = client_key(client);
        let result = self
            .keyed
            .check_key(&key)
            .map_err(|nu| nu.wait_time_from(self.clock.now()));
        if self.store.full.load(Ordering::Relaxed) {
            // Make room for new clients among keys that are fresh again.
            self.prune_throttled();
        }
        result
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

/// Each route's limiter, in the config's route order (None: unlimited).
pub type RouteLimiters = Vec<Option<Arc<Limiter>>>;

/// The limiters of one config: routes that use the global default share its
/// bucket (a client's total rate); a route with its own limit has its own.
pub struct RateLimits {
    /// The Redis of `store: redis` buckets, when the config has one.
    store: Option<Arc<RedisStore>>,
    global: Option<(RateLimitSettings, Arc<Limiter>)>,
    /// Each route's own limiter by route name, to carry it over a reload.
    own: Vec<(String, RateLimitSettings, Arc<Limiter>)>,
    max_tracked: usize,
}

impl RateLimits {
    /// The limiters of `config`, keeping `previous`'s buckets whose settings
    /// did not change (the global one; a route's own, by route name), so a
    /// reload does not hand every client a fresh burst; and its Redis store
    /// (and connection) when the `redis` settings did not change. Also
    /// returns each route's limiter, in the config's route order (None:
    /// unlimited).
    pub fn carry_over(
        config: &Config,
        previous: Option<&RateLimits>,
        metrics: &Metrics,
    ) -> Result<(RateLimits, RouteLimiters), StoreConfigError> {
        let max = config.rate_limit.max_tracked_clients;
        let store = config
            .redis
            .as_ref()
            .map(|r| RedisStore::new(r, previous.and_then(|p| p.store.as_ref()), metrics))
            .transpose()?;
        let same_store = match (previous.and_then(|p| p.store.as_ref()), &store) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let prev = previous.filter(|p| p.max_tracked == max && same_store);
        let make = |s: RateLimitSettings, bucket: &str| {
            Arc::new(Limiter::with_store(s, max, store.as_ref(), bucket))
        };
        let global = config.rate_limit.default.map(|s| {
            let lim = prev
                .and_then(|p| p.global.as_ref())
                .filter(|(g, _)| *g == s)
                .map_or_else(|| make(s, "global"), |(_, l)| Arc::clone(l));
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
                                || make(s, &format!("route:{}", r.name)),
                                |(_, _, l)| Arc::clone(l),
                            );
                        own.push((r.name.clone(), s, Arc::clone(&lim)));
                        lim
                    }
                })
            })
            .collect();
        let limits = RateLimits {
            store,
            global,
            own,
            max_tracked: max,
        };
        Ok((limits, per_route))
    }

    /// The Redis store, for /readyz.
    pub fn store(&self) -> Option<&Arc<RedisStore>> {
        self.store.as_ref()
    }

    pub fn prune_all(&self) {
        let own = self.own.iter().map(|(_, _, l)| l);
        for l in self.global.iter().map(|(_, l)| l).chain(own) {
            l.prune();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn settings(rps: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            requests_per_second: NonZeroU32::new(rps).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
            store: LimitStore::Local,
            on_store_error: OnStoreError::Allow,
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
        assert!(
            l.tracked() <= max,
            "tracked {} keys with a cap of {max}",
            l.tracked()
        );
    }

    #[test]
    fn past_the_cap_every_new_client_still_gets_only_its_own_share() {
        // Once the map is full, ten requests from each new address: each gets
        // at most its burst of 3 (its own share), however many came before.
        // (The old overflow bucket let the first ones take 16 bursts' worth,
        // then refused everyone, tracked clients included.)
        let l = Limiter::new(settings(1, 3), 100);
        for i in 0u32..100 {
            assert!(l.check(IpAddr::V4((0x0a00_0000 + i).into())).is_ok());
        }
        assert_eq!(l.tracked(), 100);
        let started = Instant::now();
        let admitted = |ip: IpAddr| (0..10).filter(|_| l.check(ip).is_ok()).count();
        // Refill while the test ran is the only way to get more than 3.
        let share = || 3 + started.elapsed().as_secs() as usize + 1;
        // A few hundred new clients in a sketch of 4 x 1,024 cells: a client
        // is only refused outright when all four of its cells are taken.
        let mut starved = 0;
        for i in 0u32..200 {
            let n = admitted(IpAddr::V4((0x0b00_0000 + i).into()));
            assert!(n <= share(), "new client admitted {n} times");
            if n == 0 {
                starved += 1;
            }
        }
        assert!(starved <= 5, "{starved} of 200 new clients got nothing");
        // A flood far larger than the sketch makes it stricter, never looser.
        for i in 0u32..5_000 {
            let n = admitted(IpAddr::V4((0x0c00_0000 + i).into()));
            assert!(n <= share(), "flooding client admitted {n} times");
        }
        assert!(l.tracked() <= 100);
    }

    #[test]
    fn a_tracked_client_keeps_its_own_bucket_while_the_map_is_full() {
        let l = Limiter::new(settings(1, 2), 50);
        let mine: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check(mine).is_ok(), "first of a burst of 2");
        for i in 0u32..49 {
            let _ = l.check(IpAddr::V4((0x0a00_0000 + i).into()));
        }
        // A flood of new addresses exhausting whatever they share...
        for i in 0u32..5_000 {
            let ip = IpAddr::V4((0x0c00_0000 + i).into());
            for _ in 0..5 {
                let _ = l.check(ip);
            }
        }
        // ...leaves the tracked client's own token where it was.
        assert!(l.check(mine).is_ok(), "tracked client lost its own token");
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
        let (_, per_route) = RateLimits::carry_over(&config, None, &Metrics::new()).unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let route = |i: usize| per_route[i].as_deref();
        assert!(route(0).unwrap().check(ip).is_ok());
        assert!(
            route(1).unwrap().check(ip).is_err(),
            "routes without a limit share the global bucket"
        );
        assert!(route(2).unwrap().check(ip).is_ok(), "own limit, own bucket");
        assert!(route(3).is_none());
    }
}
