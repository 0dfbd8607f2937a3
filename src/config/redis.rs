//! `redis`: where shared rate-limit buckets live. The URL (and with it a
//! password) comes from the environment, or is written here without one.
//! What the settings point at is read when the proxy starts or reloads, and
//! by `check` (`crate::redis_limit::resolve`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::locate::At;
use super::raw::RawRedis;
use super::{duration, invalid, resolve, Invalid};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUrl {
    /// The name of the environment variable holding it.
    Env(String),
    /// Written in the config: holds no password.
    Inline(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: RedisUrl,
    pub password_file: Option<PathBuf>,
    /// Budget of one rate-limit call.
    pub timeout: Duration,
    /// Budget to connect, and of each probe while Redis is down.
    pub connect_timeout: Duration,
    pub key_prefix: String,
    pub ca: Option<PathBuf>,
}

const MAX_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) fn compile(r: &RawRedis, base: &Path) -> Result<RedisSettings, Invalid> {
    let at = At::top("redis");
    let url = match (&r.url_env, &r.url) {
        (Some(_), Some(_)) => {
            return Err(invalid(&at.key("url"), "set url_env or url, not both"));
        }
        (None, None) => {
            return Err(invalid(
                &at,
                "needs url_env (the environment variable holding the URL) or url",
            ));
        }
        (Some(var), None) => {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                return Err(invalid(
                    &at.key("url_env"),
                    "is not an environment variable name",
                ));
            }
            RedisUrl::Env(var.clone())
        }
        (None, Some(u)) => {
            if has_password(u) {
                return Err(invalid(
                    &at.key("url"),
                    "holds a password; secrets never go in this file: use url_env or password_file",
                ));
            }
            RedisUrl::Inline(u.clone())
        }
    };
    let timeout = duration(&at.key("timeout"), &r.timeout, Duration::from_millis(5))?;
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(invalid(
            &at.key("timeout"),
            "must be more than 0 and at most 1s (it is added to a request's latency when Redis is slow)",
        ));
    }
    let connect_timeout = duration(
        &at.key("connect_timeout"),
        &r.connect_timeout,
        Duration::from_secs(1),
    )?;
    if connect_timeout < timeout || connect_timeout > Duration::from_secs(60) {
        return Err(invalid(
            &at.key("connect_timeout"),
            "must be at least redis.timeout and at most 60s",
        ));
    }
    let key_prefix = r
        .key_prefix
        .clone()
        .unwrap_or_else(|| "fieldseal:rl:".into());
    if key_prefix.len() > 128 || key_prefix.chars().any(char::is_control) {
        return Err(invalid(
            &at.key("key_prefix"),
            "must be at most 128 characters, none of them control characters",
        ));
    }
    Ok(RedisSettings {
        url,
        password_file: r.password_file.as_deref().map(|p| resolve(base, p)),
        timeout,
        connect_timeout,
        key_prefix,
        ca: r.ca.as_deref().map(|p| resolve(base, p)),
    })
}

/// `scheme://user:password@host` or `scheme://:password@host`.
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::has_password;

    #[test]
    fn passwords_in_urls_are_found() {
        assert!(has_password("redis://:pw@h:6379/0"));
        assert!(has_password("rediss://user:pw@h/"));
        assert!(!has_password("redis://h:6379/0"));
        assert!(!has_password("redis://user@h:6379/0"));
        assert!(!has_password("redis://h/0?x=a:b@c"));
    }
}
