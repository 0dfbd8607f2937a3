//! The fleet's key store: one PostgreSQL database shared by every replica.
//!
//! Calls are blocking (the `KeyStore` trait), made from the blocking pool;
//! each runs as a future on the store's own one-thread runtime, which also
//! drives the connections, so neither a blocking call nor PostgreSQL I/O
//! ever runs on the proxy's async workers. Every call is bounded:
//! `connect_timeout` to get a connection (a free one, or a new one) plus
//! `statement_timeout` for the work (also the server's `statement_timeout`),
//! so a stalled database holds a request at most their sum.
//!
//! Pool: at most `pool_max` connections, reused while healthy; a connection
//! that failed or timed out is dropped, never reused. When connecting fails,
//! a breaker fails calls at once (503 for uncached keys, `/readyz` says why)
//! and lets one attempt through per back-off window (250ms doubling to 5s):
//! a database coming back sees one connection per replica, not a storm.
//!
//! Schema: created and migrated under a transaction-scoped advisory lock,
//! so replicas starting at once serialize and each sees the other's tables
//! (plain `CREATE TABLE IF NOT EXISTS` races in PostgreSQL's catalog).
//!
//! First writes and erasures of one reference take a transaction-scoped
//! advisory lock keyed by the reference: `create_first` must check two
//! tables (no key, and no tombstone unless reviving), which a unique
//! constraint alone cannot express, and an erasure racing a first write must
//! not leave a key next to a tombstone. The insert still carries
//! `ON CONFLICT DO NOTHING` on (reference, version) as a second guard.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, GenericClient};

use super::{KeyStore, StoreError, StoredKey, SubjectRecord, SubjectSummary};
use crate::config::{PostgresSettings, PostgresUrl};

/// The schema, one migration per version, applied in order.
const MIGRATIONS: &[&str] = &["
CREATE TABLE IF NOT EXISTS fieldseal_data_keys (
    reference  TEXT    NOT NULL,
    version    INTEGER NOT NULL CHECK (version > 0),
    kek_id     TEXT    NOT NULL,
    wrapped    BYTEA   NOT NULL,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (reference, version)
);
CREATE TABLE IF NOT EXISTS fieldseal_erasures (
    reference    TEXT    PRIMARY KEY,
    erased_at    BIGINT  NOT NULL,
    requested_by TEXT    NOT NULL,
    last_version INTEGER NOT NULL DEFAULT 0
);
"];

/// The advisory lock migrations hold ("fieldsea" in ASCII).
const MIGRATION_LOCK: i64 = 0x6669_656c_6473_6561;

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct PostgresStore {
    inner: Arc<Inner>,
    rt: Option<tokio::runtime::Runtime>,
}

struct Inner {
    config: tokio_postgres::Config,
    tls: RustlsConnect,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
    pool_max: usize,
    breaker: Mutex<Breaker>,
    connect_timeout: Duration,
    statement_timeout: Duration,
}

#[derive(Default)]
struct Breaker {
    /// Set while connecting fails: no attempt before this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("PostgresStore")
            .field("pool_max", &self.inner.pool_max)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // May be dropped on an async worker (a reload): never block there.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn db(e: tokio_postgres::Error) -> StoreError {
    // The client's messages name the server's error, never the URL.
    match e.as_db_error() {
        Some(d) => StoreError::Unavailable(format!("postgres: {}", d.message())),
        None => {
            // With its causes: "error performing TLS handshake: invalid
            // peer certificate: UnknownIssuer" says what to fix.
            let mut m = format!("postgres: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                m.push_str(&format!(": {c}"));
                cause = c.source();
            }
            StoreError::Unavailable(m)
        }
    }
}

/// The URL where the settings say it is, parsed; for `check` and `open`.
/// Errors name the config key and never quote the URL.
pub fn resolve_url(s: &PostgresSettings) -> Result<tokio_postgres::Config, (&'static str, String)> {
    let key = match &s.url {
        PostgresUrl::Env(_) => "postgres_url_env",
        PostgresUrl::File(_) => "postgres_url_file",
        PostgresUrl::Inline(_) => "postgres_url",
    };
    let url = read_url(&s.url).map_err(|e| (key, e.to_string()))?;
    crate::config::parse_postgres_url(&url).map_err(|e| (key, format!("the PostgreSQL URL {e}")))
}

/// Whether every host of `c` is this machine (a Unix socket or loopback),
/// where a connection without TLS stays on the host.
pub fn local_only(c: &tokio_postgres::Config) -> bool {
    c.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    })
}

/// Reads the URL where the settings say it is. Errors never quote it.
fn read_url(url: &PostgresUrl) -> Result<String, StoreError> {
    match url {
        PostgresUrl::Inline(u) => Ok(u.clone()),
        PostgresUrl::Env(var) => std::env::var(var).map_err(|_| {
            unavailable(format!(
                "key_store.postgres_url_env: the environment variable {var} is not set"
            ))
        }),
        PostgresUrl::File(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                unavailable(format!(
                    "key_store.postgres_url_file {}: {e}",
                    path.display()
                ))
            }),
    }
}

pub(crate) fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            let fail = |e: &dyn std::fmt::Display| {
                unavailable(format!("key_store.ca {}: {e}", ca.display()))
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .map_err(|e| fail(&e))?
                .collect::<Result<_, _>>()
                .map_err(|e| fail(&e))?;
            if certs.is_empty() {
                return Err(fail(&"no certificate in it"));
            }
            for c in certs {
                roots.add(c).map_err(|e| fail(&e))?;
            }
        }
        None => {
            // Without roots any TLS handshake fails, which is closed: the
            // error then says so when connecting.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(unavailable)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl PostgresStore {
    /// Reads the URL, connects, creates or migrates the schema. Blocking.
    pub fn open(s: &PostgresSettings) -> Result<PostgresStore, StoreError> {
        let mut config =
            resolve_url(s).map_err(|(key, e)| unavailable(format!("key_store.{key}: {e}")))?;
        let ms = s.statement_timeout.as_millis();
        // The server stops a statement (and a lock wait) at the same bound
        // as this side, and never keeps a transaction we abandoned open.
        let server = format!(
            "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={}",
            ms.saturating_mul(2).max(1000)
        );
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {server}"),
            _ => server,
        };
        config
            .options(options)
            .connect_timeout(s.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("fieldseal");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fieldseal-pg")
            .enable_all()
            .build()
            .map_err(unavailable)?;
        let store = PostgresStore {
            inner: Arc::new(Inner {
                config,
                tls: RustlsConnect(tls_config(s.ca.as_deref())?),
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(s.pool_max)),
                pool_max: s.pool_max,
                breaker: Mutex::new(Breaker {
                    backoff: BACKOFF_FIRST,
                    ..Breaker::default()
                }),
                connect_timeout: s.connect_timeout,
                statement_timeout: s.statement_timeout,
            }),
            rt: Some(rt),
        };
        store.run(|inner| async move { inner.migrate().await })?;
        Ok(store)
    }

    /// Runs `op` on the store's runtime and waits for it, bounded.
    fn run<T, F>(&self, op: impl FnOnce(Arc<Inner>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| unavailable("the store is closed"))?;
        let bound = self.inner.connect_timeout + self.inner.statement_timeout;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = op(Arc::clone(&self.inner));
        let inner = Arc::clone(&self.inner);
        rt.spawn(async move {
            let r = match tokio::time::timeout(bound, fut).await {
                Ok(r) => r,
                Err(_) => {
                    // A server that stops answering is treated as down: the
                    // next calls fail at once instead of each waiting.
                    let failure = format!(
                        "postgres did not answer within {}",
                        humantime::format_duration(bound)
                    );
                    inner.trip(&failure);
                    Err(unavailable(failure))
                }
            };
            let _ = tx.send(r);
        });
        rx.recv_timeout(bound + Duration::from_secs(1))
            .map_err(|_| unavailable("postgres did not answer in time"))?
    }

    /// Operations on one pooled connection; the connection goes back to the
    /// pool only if `op` succeeded.
    fn with<T, F>(&self, op: impl FnOnce(Pooled) -> F + Send + 'static) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<(T, Pooled), StoreError>> + Send + 'static,
    {
        self.run(|inner| async move {
            let conn = inner.get().await?;
            let (out, mut conn) = op(conn).await?;
            conn.healthy = true;
            inner.answered();
            Ok(out)
        })
    }
}

/// A connection borrowed from the pool, with its permit.
struct Pooled {
    client: Option<Client>,
    inner: Arc<Inner>,
    healthy: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Pooled {
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        self.client
            .as_mut()
            .ok_or_else(|| unavailable("no connection"))
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if self.healthy && !c.is_closed() {
                if let Ok(mut idle) = self.inner.idle.lock() {
                    idle.push(c);
                }
            } else if c.is_closed() {
                // The server went away: the idle ones are likely dead too.
                if let Ok(mut idle) = self.inner.idle.lock() {
                    idle.retain(|c| !c.is_closed());
                }
            }
        }
    }
}

impl Inner {
    async fn get(self: &Arc<Self>) -> Result<Pooled, StoreError> {
        let permit = tokio::time::timeout(
            self.connect_timeout,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "all {} postgres connections stayed busy",
                self.pool_max
            ))
        })?
        .map_err(unavailable)?;
        let reused = self.idle.lock().ok().and_then(|mut idle| {
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    return Some(c);
                }
            }
            None
        });
        let client = match reused {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Pooled {
            client: Some(client),
            inner: Arc::clone(self),
            healthy: false,
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        {
            let mut b = self
                .breaker
                .lock()
                .map_err(|_| unavailable("breaker lock poisoned"))?;
            if let Some(at) = b.retry_at {
                let now = Instant::now();
                if now < at {
                    return Err(unavailable(format!(
                        "postgres unreachable ({}); next attempt in {}ms",
                        b.last_error,
                        (at - now).as_millis()
                    )));
                }
                // This caller is the one attempt of the window.
                b.retry_at = Some(now + self.connect_timeout + b.backoff);
            }
        }
        let attempt =
            tokio::time::timeout(self.connect_timeout, self.config.connect(self.tls.clone())).await;
        let failure = match attempt {
            Ok(Ok((client, connection))) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                if let Ok(mut b) = self.breaker.lock() {
                    if b.retry_at.take().is_some() {
                        tracing::info!("key store: postgres is reachable again");
                    }
                    b.backoff = BACKOFF_FIRST;
                }
                return Ok(client);
            }
            Ok(Err(e)) => match db(e) {
                StoreError::Unavailable(m) | StoreError::Corrupt(m) => m,
            },
            Err(_) => format!(
                "connecting took longer than {}",
                humantime::format_duration(self.connect_timeout)
            ),
        };
        self.trip(&failure);
        Err(unavailable(failure))
    }

    /// A call succeeded: a breaker a timeout opened closes, and the back-off
    /// starts again from its first step.
    fn answered(&self) {
        if let Ok(mut b) = self.breaker.lock() {
            if b.retry_at.take().is_some() {
                tracing::info!("key store: postgres answers again");
            }
            b.backoff = BACKOFF_FIRST;
        }
    }

    /// Opens the breaker: no new connection before the back-off elapses.
    fn trip(&self, failure: &str) {
        if let Ok(mut b) = self.breaker.lock() {
            if b.retry_at.is_none() {
                tracing::error!(error = %failure, "key store: postgres unreachable");
            }
            b.retry_at = Some(Instant::now() + b.backoff);
            b.backoff = (b.backoff * 2).min(BACKOFF_MAX);
            b.last_error = failure.to_owned();
        }
    }

    async fn migrate(self: Arc<Self>) -> Result<(), StoreError> {
        let mut conn = self.get().await?;
        let client = conn.client()?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS fieldseal_schema (
                 only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
                 version  INTEGER NOT NULL
             )",
        )
        .await
        .map_err(db)?;
        let at: i32 = tx
            .query_opt("SELECT version FROM fieldseal_schema", &[])
            .await
            .map_err(db)?
            .map(|r| r.get(0))
            .unwrap_or(0);
        let known = MIGRATIONS.len() as i32;
        if at > known {
            return Err(StoreError::Corrupt(format!(
                "the postgres schema is version {at}, newer than this fieldseal knows ({known})"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(at.max(0) as usize) {
            tx.batch_execute(sql).await.map_err(db)?;
            tracing::info!(version = i + 1, "key store: postgres schema migrated");
        }
        tx.execute(
            "INSERT INTO fieldseal_schema (only_row, version) VALUES (TRUE, $1)
             ON CONFLICT (only_row) DO UPDATE SET version = excluded.version",
            &[&known],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        conn.healthy = true;
        Ok(())
    }
}

/// The advisory lock of one reference: 64 bits of a hash, the same on every
/// replica. A collision only serializes two references' first writes.
fn reference_lock(reference: &str) -> i64 {
    let h = Sha256::new()
        .chain_update(b"fieldseal-reference-lock\0")
        .chain_update(reference.as_bytes())
        .finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    i64::from_be_bytes(b)
}

fn version_of(v: i32) -> u32 {
    v.max(0) as u32
}

fn time_of(t: i64) -> u64 {
    t.max(0) as u64
}

/// Keys and tombstone of `reference`, in one statement (one snapshot).
async fn read(c: &impl GenericClient, reference: &str) -> Result<SubjectRecord, StoreError> {
    let rows = c
        .query(
            "SELECT TRUE, version, kek_id, wrapped, created_at FROM fieldseal_data_keys
              WHERE reference = $1
             UNION ALL
             SELECT FALSE, last_version, '', NULL, erased_at FROM fieldseal_erasures
              WHERE reference = $1
             ORDER BY 1 DESC, 2 DESC",
            &[&reference],
        )
        .await
        .map_err(db)?;
    let mut keys = Vec::new();
    let mut erased = None;
    for r in rows {
        let is_key: bool = r.try_get(0).map_err(db)?;
        let version: i32 = r.try_get(1).map_err(db)?;
        let at: i64 = r.try_get(4).map_err(db)?;
        if is_key {
            keys.push(StoredKey {
                version: version_of(version),
                kek_id: r.try_get(2).map_err(db)?,
                wrapped: r.try_get(3).map_err(db)?,
                created_at: time_of(at),
            });
        } else {
            erased = Some((time_of(at), version_of(version)));
        }
    }
    Ok(match (keys.is_empty(), erased) {
        (false, _) => SubjectRecord::Keys(keys),
        (true, Some((at, last_version))) => SubjectRecord::Erased { at, last_version },
        (true, None) => SubjectRecord::Absent,
    })
}

fn to_i32(v: u32) -> i32 {
    v.min(i32::MAX as u32) as i32
}

fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl KeyStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn get(&self, reference: &str) -> Result<SubjectRecord, StoreError> {
        let reference = reference.to_owned();
        self.with(move |mut conn| async move {
            let out = read(conn.client()?, &reference).await?;
            Ok((out, conn))
        })
    }

    fn create_first(
        &self,
        reference: &str,
        key: &StoredKey,
        revive: bool,
    ) -> Result<SubjectRecord, StoreError> {
        let (reference, key) = (reference.to_owned(), key.clone());
        self.with(move |mut conn| async move {
            let tx = conn.client()?.transaction().await.map_err(db)?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&reference_lock(&reference)],
            )
            .await
            .map_err(db)?;
            let write = match read(&tx, &reference).await? {
                SubjectRecord::Absent => true,
                SubjectRecord::Erased { .. } => revive,
                SubjectRecord::Keys(_) => false,
            };
            if write {
                tx.execute(
                    "DELETE FROM fieldseal_erasures WHERE reference = $1",
                    &[&reference],
                )
                .await
                .map_err(db)?;
                tx.execute(
                    "INSERT INTO fieldseal_data_keys (reference, version, kek_id, wrapped, created_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        &reference,
                        &to_i32(key.version),
                        &key.kek_id,
                        &key.wrapped,
                        &to_i64(key.created_at),
                    ],
                )
                .await
                .map_err(db)?;
            }
            let after = read(&tx, &reference).await?;
            tx.commit().await.map_err(db)?;
            Ok((after, conn))
        })
    }

    fn erase(&self, reference: &str, requested_by: &str, at: u64) -> Result<usize, StoreError> {
        let (reference, by) = (reference.to_owned(), requested_by.to_owned());
        self.with(move |mut conn| async move {
            let tx = conn.client()?.transaction().await.map_err(db)?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&reference_lock(&reference)],
            )
            .await
            .map_err(db)?;
            let newest: Option<i32> = tx
                .query_one(
                    "SELECT MAX(version) FROM fieldseal_data_keys WHERE reference = $1",
                    &[&reference],
                )
                .await
                .map_err(db)?
                .try_get(0)
                .map_err(db)?;
            let n = tx
                .execute(
                    "DELETE FROM fieldseal_data_keys WHERE reference = $1",
                    &[&reference],
                )
                .await
                .map_err(db)?;
            tx.execute(
                "INSERT INTO fieldseal_erasures (reference, erased_at, requested_by, last_version)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (reference) DO UPDATE SET erased_at = excluded.erased_at,
                     requested_by = excluded.requested_by,
                     last_version = GREATEST(fieldseal_erasures.last_version, excluded.last_version)",
                &[&reference, &to_i64(at), &by, &newest.unwrap_or(0)],
            )
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok((n as usize, conn))
        })
    }

    fn rewrap(
        &self,
        reference: &str,
        version: u32,
        old_kek: &str,
        new_kek: &str,
        wrapped: &[u8],
    ) -> Result<bool, StoreError> {
        let (reference, old, new, wrapped) = (
            reference.to_owned(),
            old_kek.to_owned(),
            new_kek.to_owned(),
            wrapped.to_vec(),
        );
        self.with(move |mut conn| async move {
            let n = conn
                .client()?
                .execute(
                    "UPDATE fieldseal_data_keys SET kek_id = $1, wrapped = $2
                     WHERE reference = $3 AND version = $4 AND kek_id = $5",
                    &[&new, &wrapped, &reference, &to_i32(version), &old],
                )
                .await
                .map_err(db)?;
            Ok((n == 1, conn))
        })
    }

    fn list(&self) -> Result<Vec<SubjectSummary>, StoreError> {
        self.with(|mut conn| async move {
            let c = conn.client()?;
            let mut out: Vec<SubjectSummary> = Vec::new();
            for r in c
                .query(
                    "SELECT reference, version, kek_id, created_at FROM fieldseal_data_keys
                     ORDER BY reference, version",
                    &[],
                )
                .await
                .map_err(db)?
            {
                let reference: String = r.try_get(0).map_err(db)?;
                let version = version_of(r.try_get(1).map_err(db)?);
                let kek: String = r.try_get(2).map_err(db)?;
                let created = time_of(r.try_get(3).map_err(db)?);
                SubjectSummary::add_key(&mut out, reference, version, kek, created);
            }
            for r in c
                .query(
                    "SELECT reference, erased_at, requested_by FROM fieldseal_erasures ORDER BY reference",
                    &[],
                )
                .await
                .map_err(db)?
            {
                out.push(SubjectSummary {
                    reference: r.try_get(0).map_err(db)?,
                    versions: vec![],
                    kek_ids: vec![],
                    created_at: None,
                    erased_at: Some(time_of(r.try_get(1).map_err(db)?)),
                    erased_by: Some(r.try_get(2).map_err(db)?),
                });
            }
            Ok((out, conn))
        })
    }

    fn all_keys(&self) -> Result<Vec<(String, StoredKey)>, StoreError> {
        self.with(|mut conn| async move {
            let rows = conn
                .client()?
                .query(
                    "SELECT reference, version, kek_id, wrapped, created_at FROM fieldseal_data_keys
                     ORDER BY reference, version",
                    &[],
                )
                .await
                .map_err(db)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push((
                    r.try_get(0).map_err(db)?,
                    StoredKey {
                        version: version_of(r.try_get(1).map_err(db)?),
                        kek_id: r.try_get(2).map_err(db)?,
                        wrapped: r.try_get(3).map_err(db)?,
                        created_at: time_of(r.try_get(4).map_err(db)?),
                    },
                ));
            }
            Ok((out, conn))
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        // Reads both tables, so a lost schema shows too.
        self.with(|mut conn| async move {
            conn.client()?
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM fieldseal_data_keys WHERE reference = $1)
                          + (SELECT COUNT(*) FROM fieldseal_erasures WHERE reference = $1)",
                    &[&super::REF_SECRET_REFERENCE],
                )
                .await
                .map_err(db)?;
            Ok(((), conn))
        })
    }
}

/// rustls for tokio-postgres: the server's certificate is verified against
/// `ca` (or the system roots) and the URL's host name.
#[derive(Clone)]
struct RustlsConnect(Arc<rustls::ClientConfig>);

struct RustlsConnectOne {
    config: Arc<rustls::ClientConfig>,
    name: Option<ServerName<'static>>,
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnectOne;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnectOne, io::Error> {
        Ok(RustlsConnectOne {
            config: Arc::clone(&self.0),
            // Checked when TLS is used (not for a Unix socket).
            name: ServerName::try_from(domain.to_owned()).ok(),
        })
    }
}

impl<S> TlsConnect<S> for RustlsConnectOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the host is not a TLS server name",
                )
            })?;
            tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::reference_lock;

    #[test]
    fn reference_locks_are_stable_and_distinct() {
        assert_eq!(reference_lock("abc"), reference_lock("abc"));
        assert_ne!(reference_lock("abc"), reference_lock("abd"));
        assert_ne!(reference_lock("abc"), super::MIGRATION_LOCK);
    }
}
