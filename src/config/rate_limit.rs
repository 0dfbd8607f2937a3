//! `rate_limit`: the per-client limit routes share, and the settings a
//! route's own `rate_limit` compiles to.

use std::num::NonZeroU32;

use super::locate::At;
use super::raw::RawRateLimit;
use super::{invalid, word, Invalid};
use crate::ratelimit::{LimitStore, OnStoreError};
use crate::routes::RateLimitSettings;

#[derive(Debug, Clone)]
pub struct GlobalRateLimit {
    pub default: Option<RateLimitSettings>,
    pub max_tracked_clients: usize,
    /// A top-level `redis` section exists (`store: redis` needs one).
    pub redis_configured: bool,
}

pub(super) fn compile(
    raw: Option<&RawRateLimit>,
    redis_configured: bool,
) -> Result<GlobalRateLimit, Invalid> {
    let at = At::top("rate_limit");
    let default = raw
        .map(|r| settings(&at, r, redis_configured))
        .transpose()?
        .flatten();
    let max_tracked_clients = raw.and_then(|r| r.max_tracked_clients).unwrap_or(100_000);
    if max_tracked_clients == 0 {
        return Err(invalid(
            &at.key("max_tracked_clients"),
            "must be at least 1",
        ));
    }
    Ok(GlobalRateLimit {
        default,
        max_tracked_clients,
        redis_configured,
    })
}

/// A route's limit: its own (what it leaves out taken from the global
/// one), off, or the global one.
pub(super) fn route(
    at: &At,
    own: Option<&RawRateLimit>,
    global: Option<&RawRateLimit>,
    shared: &GlobalRateLimit,
) -> Result<Option<RateLimitSettings>, Invalid> {
    let Some(rl) = own else {
        return Ok(shared.default);
    };
    if rl.enabled == Some(false) {
        return Ok(None);
    }
    if rl.max_tracked_clients.is_some() {
        return Err(invalid(
            &at.key("max_tracked_clients"),
            "can only be set on the global rate_limit",
        ));
    }
    let merged = RawRateLimit {
        requests_per_second: rl
            .requests_per_second
            .or(global.and_then(|g| g.requests_per_second)),
        burst: rl.burst.or(global.and_then(|g| g.burst)),
        enabled: None,
        max_tracked_clients: None,
        store: rl
            .store
            .clone()
            .or_else(|| global.and_then(|g| g.store.clone())),
        on_store_error: rl
            .on_store_error
            .clone()
            .or_else(|| global.and_then(|g| g.on_store_error.clone())),
    };
    settings(at, &merged, shared.redis_configured)
}

fn settings(
    at: &At,
    r: &RawRateLimit,
    redis_configured: bool,
) -> Result<Option<RateLimitSettings>, Invalid> {
    if r.enabled == Some(false) {
        return Ok(None);
    }
    let rps_at = at.key("requests_per_second");
    let rps = r
        .requests_per_second
        .ok_or_else(|| invalid(&rps_at, "is required"))?;
    let rps = NonZeroU32::new(rps).ok_or_else(|| invalid(&rps_at, "must be at least 1"))?;
    let burst = NonZeroU32::new(r.burst.unwrap_or(rps.get()))
        .ok_or_else(|| invalid(&at.key("burst"), "must be at least 1"))?;
    let store_at = at.key("store");
    let store = r
        .store
        .as_ref()
        .map(|w| word(&store_at, w, ""))
        .transpose()?
        .unwrap_or_default();
    let error_at = at.key("on_store_error");
    let on_store_error = r
        .on_store_error
        .as_ref()
        .map(|w| word(&error_at, w, ""))
        .transpose()?;
    let on_store_error = match (store, on_store_error) {
        (LimitStore::Redis, None) => {
            return Err(invalid(
                &error_at,
                "is required with store: redis (allow: only the local stage limits while Redis is down; deny: 503)",
            ))
        }
        (LimitStore::Redis, Some(_)) if !redis_configured => {
            return Err(invalid(
                &store_at,
                "redis needs a top-level `redis` section (url_env or url)",
            ))
        }
        // A local bucket has no store to fail: the word is kept (a route
        // may inherit it and name store: redis) but never applies.
        (_, e) => e.unwrap_or(OnStoreError::Allow),
    };
    Ok(Some(RateLimitSettings {
        requests_per_second: rps,
        burst,
        store,
        on_store_error,
    }))
}
