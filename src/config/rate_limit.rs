//! `rate_limit`: the per-client limit routes share, and the settings a
//! route's own `rate_limit` compiles to.

use std::num::NonZeroU32;

use super::locate::At;
use super::raw::RawRateLimit;
use super::{invalid, Invalid};
use crate::routes::RateLimitSettings;

#[derive(Debug, Clone)]
pub struct GlobalRateLimit {
    pub default: Option<RateLimitSettings>,
    pub max_tracked_clients: usize,
}

pub(super) fn compile(raw: Option<&RawRateLimit>) -> Result<GlobalRateLimit, Invalid> {
    let at = At::top("rate_limit");
    let default = raw.map(|r| settings(&at, r)).transpose()?.flatten();
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
    })
}

/// A route's limit: its own (what it leaves out taken from the global
/// one), off, or the global one.
pub(super) fn route(
    at: &At,
    own: Option<&RawRateLimit>,
    global: Option<&RawRateLimit>,
    shared: Option<RateLimitSettings>,
) -> Result<Option<RateLimitSettings>, Invalid> {
    let Some(rl) = own else {
        return Ok(shared);
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
    };
    settings(at, &merged)
}

fn settings(at: &At, r: &RawRateLimit) -> Result<Option<RateLimitSettings>, Invalid> {
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
    Ok(Some(RateLimitSettings {
        requests_per_second: rps,
        burst,
    }))
}
