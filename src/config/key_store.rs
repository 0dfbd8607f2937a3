//! `key_store`: where tenant and subject data keys live. Either one SQLite
//! file (one host) or a PostgreSQL database (a fleet of replicas). The
//! PostgreSQL URL (and with it a password) comes from the environment or a
//! file, or is written here without one; it is read when the store opens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::locate::At;
use super::raw::RawKeyStore;
use super::{duration, invalid, resolve, Invalid};

/// `key_store`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStoreSpec {
    pub backend: KeyStoreBackend,
    pub cache_ttl: Duration,
    pub cache_max: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStoreBackend {
    Sqlite(PathBuf),
    Postgres(PostgresSettings),
}

/// Where the PostgreSQL URL is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresUrl {
    /// The name of the environment variable holding it.
    Env(String),
    /// A file holding it (a mounted secret), trimmed.
    File(PathBuf),
    /// Written in the config: holds no password.
    Inline(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    pub url: PostgresUrl,
    /// CA bundle the server's certificate must chain to (else the system roots).
    pub ca: Option<PathBuf>,
    /// Most connections this replica opens.
    pub pool_max: usize,
    /// Budget to get a connection (waiting for a free one, or connecting).
    pub connect_timeout: Duration,
    /// Budget of one store operation once connected (also set as the
    /// server's `statement_timeout`).
    pub statement_timeout: Duration,
}

/// "A few seconds at most": a stalled database never holds a request longer.
const MAX_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_POOL: usize = 64;

pub(super) fn compile(k: &RawKeyStore, base: &Path) -> Result<KeyStoreSpec, Invalid> {
    let at = At::top("key_store");
    let pg_keys = [
        k.postgres_url_env.is_some(),
        k.postgres_url_file.is_some(),
        k.postgres_url.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let pg_only = k.ca.is_some()
        || k.pool_max.is_some()
        || k.connect_timeout.is_some()
        || k.statement_timeout.is_some();
    let backend = match (k.sqlite.as_deref(), pg_keys) {
        (Some(_), n) if n > 0 => {
            return Err(invalid(
                &at,
                "set sqlite or a postgres_url_* key, not both",
            ))
        }
        (Some(""), _) => return Err(invalid(&at.key("sqlite"), "must not be empty")),
        (Some(p), _) => {
            if pg_only {
                return Err(invalid(
                    &at,
                    "ca, pool_max, connect_timeout and statement_timeout are PostgreSQL settings; the sqlite store takes none",
                ));
            }
            KeyStoreBackend::Sqlite(resolve(base, p))
        }
        (None, 0) => {
            return Err(invalid(
                &at,
                "name the store: `sqlite: /var/lib/fieldseal/keys.db` (one host) or `postgres_url_env: FIELDSEAL_PG_URL` (a fleet)",
            ))
        }
        (None, 1) => KeyStoreBackend::Postgres(postgres(k, &at, base)?),
        (None, _) => {
            return Err(invalid(
                &at,
                "set one of postgres_url_env, postgres_url_file, postgres_url",
            ))
        }
    };
    let cache_ttl = duration(&at.key("cache_ttl"), &k.cache_ttl, Duration::from_secs(60))?;
    if cache_ttl.is_zero() {
        return Err(invalid(&at.key("cache_ttl"), "must be more than 0s"));
    }
    Ok(KeyStoreSpec {
        backend,
        cache_ttl,
        cache_max: k.cache_max.unwrap_or(10_000).max(1),
    })
}

fn postgres(k: &RawKeyStore, at: &At, base: &Path) -> Result<PostgresSettings, Invalid> {
    let url = if let Some(var) = &k.postgres_url_env {
        if var.is_empty() || var.contains('=') || var.contains('\0') {
            return Err(invalid(
                &at.key("postgres_url_env"),
                "is not an environment variable name",
            ));
        }
        PostgresUrl::Env(var.clone())
    } else if let Some(f) = &k.postgres_url_file {
        if f.is_empty() {
            return Err(invalid(&at.key("postgres_url_file"), "must not be empty"));
        }
        PostgresUrl::File(resolve(base, f))
    } else {
        let u = k.postgres_url.clone().unwrap_or_default();
        match parse_url(&u) {
            Err(e) => return Err(invalid(&at.key("postgres_url"), e)),
            Ok(c) if c.get_password().is_some() => {
                return Err(invalid(
                    &at.key("postgres_url"),
                    "holds a password; secrets never go in this file: use postgres_url_env or postgres_url_file",
                ))
            }
            Ok(_) => PostgresUrl::Inline(u),
        }
    };
    let connect_timeout = duration(
        &at.key("connect_timeout"),
        &k.connect_timeout,
        Duration::from_secs(2),
    )?;
    if connect_timeout.is_zero() || connect_timeout > MAX_TIMEOUT {
        return Err(invalid(
            &at.key("connect_timeout"),
            "must be more than 0 and at most 10s (a request waits for it when the database is down)",
        ));
    }
    let statement_timeout = duration(
        &at.key("statement_timeout"),
        &k.statement_timeout,
        Duration::from_secs(2),
    )?;
    if statement_timeout < Duration::from_millis(10) || statement_timeout > MAX_TIMEOUT {
        return Err(invalid(
            &at.key("statement_timeout"),
            "must be at least 10ms and at most 10s (a request waits for it when the database stalls)",
        ));
    }
    let pool_max = k.pool_max.unwrap_or(8);
    if pool_max == 0 || pool_max > MAX_POOL {
        return Err(invalid(&at.key("pool_max"), "must be 1 to 64"));
    }
    Ok(PostgresSettings {
        url,
        ca: k.ca.as_deref().map(|p| resolve(base, p)),
        pool_max,
        connect_timeout,
        statement_timeout,
    })
}

/// A `postgres://` URL or a `key=value` connection string, as the client
/// reads it. The error never quotes the string (it may hold a password).
pub fn parse_url(s: &str) -> Result<tokio_postgres::Config, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("is empty".into());
    }
    let c: tokio_postgres::Config = s.parse().map_err(|_| {
        "is not a PostgreSQL URL (postgres://user@host:5432/db?sslmode=require)".to_string()
    })?;
    if c.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn passwords_are_found_in_every_spelling() {
        for with in [
            "postgres://u:pw@h/db",
            "postgresql://u:pw@h:5432/db",
            "postgres://u@h/db?password=pw",
            "host=h user=u password=pw dbname=db",
            "postgres://:pw@h/db",
        ] {
            assert!(parse_url(with).unwrap().get_password().is_some(), "{with}");
        }
        for without in [
            "postgres://u@h/db",
            "postgres://h/db?sslmode=require",
            "host=h user=u dbname=db",
        ] {
            assert!(
                parse_url(without).unwrap().get_password().is_none(),
                "{without}"
            );
        }
        assert!(parse_url("").is_err());
        assert!(parse_url("not a url at all ===").is_err());
        let e = parse_url("postgres://u:secretpw@h/db?bogus=1").unwrap_err();
        assert!(!e.contains("secretpw"));
    }
}
