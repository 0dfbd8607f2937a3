//! The key store: tenant and subject data keys, kept only wrapped by a
//! key-encryption key, versioned, with erasure tombstones. One blocking
//! trait (`KeyStore`), implemented over embedded SQLite (`sqlite`, one
//! host) and PostgreSQL (`postgres`, a fleet of replicas); the
//! service that resolves a request's keys through a bounded, expiring
//! cache of unwrapped keys is `service`.
//!
//! Rows hold the opaque reference (never a raw subject id), the version,
//! the id of the KEK that wrapped the key, the wrapped bytes and the
//! creation time. The deployment's reference secret is one more row, under
//! the reserved reference `_fieldseal_ref`.

mod postgres;
mod service;
mod sqlite;

pub use postgres::{
    local_only as postgres_local_only, resolve_url as resolve_postgres_url, PostgresStore,
};
pub use service::{DeploymentKeys, KeyService, Resolved, ServiceError, ServiceStats};
pub use sqlite::SqliteStore;

/// Opens the key service a config describes (`key_store` + `keys`), for
/// the proxy and the `subjects` commands alike. Blocking; with a token key
/// active it talks to the token (the reference secret and the deployment
/// data key are unwrapped here).
pub fn open_service(
    spec: &crate::config::KeyStoreSpec,
    keks: crate::crypto::Keks,
) -> Result<KeyService, String> {
    let store: std::sync::Arc<dyn KeyStore> = match &spec.backend {
        crate::config::KeyStoreBackend::Sqlite(path) => {
            std::sync::Arc::new(SqliteStore::open(path).map_err(|e| e.to_string())?)
        }
        crate::config::KeyStoreBackend::Postgres(pg) => {
            std::sync::Arc::new(PostgresStore::open(pg).map_err(|e| e.to_string())?)
        }
    };
    KeyService::open(store, keks, spec.cache_ttl, spec.cache_max).map_err(|e| e.to_string())
}

/// Whether `ca` is a readable PEM bundle with at least one certificate.
pub fn postgres_tls_check(ca: &std::path::Path) -> Result<(), String> {
    postgres::tls_config(Some(ca))
        .map(|_| ())
        .map_err(|e| match e {
            StoreError::Unavailable(m) | StoreError::Corrupt(m) => m,
        })
}

/// The reserved reference of the deployment's subject-reference secret.
/// Subject references are 22 base64url characters, so none can equal it.
pub const REF_SECRET_REFERENCE: &str = "_fieldseal_ref";

/// The reserved reference of the deployment data key: what
/// deployment-scoped routes seal under (`fs2` envelopes naming
/// `_fieldseal_dk:VERSION`) when the active ring key is a token key, which
/// has no bytes to seal `fs1` with. An ordinary row: wrapped by the
/// active KEK, rewrapped on rotation, never erased.
pub const DEPLOYMENT_REFERENCE: &str = "_fieldseal_dk";

/// Whether a reference is one of fieldseal's own rows, not a subject's.
pub fn is_reserved(reference: &str) -> bool {
    reference == REF_SECRET_REFERENCE || reference == DEPLOYMENT_REFERENCE
}

/// One wrapped version of a data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub version: u32,
    pub kek_id: String,
    pub wrapped: Vec<u8>,
    /// Unix seconds.
    pub created_at: u64,
}

/// What the store holds for one reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectRecord {
    /// No key yet, not erased.
    Absent,
    /// Its keys, newest version first.
    Keys(Vec<StoredKey>),
    /// Erased at this time (Unix seconds): no key, and none is created
    /// unless the route's policy says so. `last_version` is the newest
    /// version destroyed, so a fresh key after erasure gets a higher one and
    /// envelopes of the erased versions stay erased.
    Erased { at: u64, last_version: u32 },
}

/// A reference as `subjects list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSummary {
    pub reference: String,
    pub versions: Vec<u32>,
    pub kek_ids: Vec<String>,
    pub created_at: Option<u64>,
    pub erased_at: Option<u64>,
    pub erased_by: Option<String>,
}

impl SubjectSummary {
    /// Folds one key row into `out`, whose rows come ordered by reference:
    /// a reference's versions and wrapping keys gather in one summary.
    pub(crate) fn add_key(
        out: &mut Vec<SubjectSummary>,
        reference: String,
        version: u32,
        kek: String,
        created: u64,
    ) {
        match out.last_mut().filter(|s| s.reference == reference) {
            Some(s) => {
                s.versions.push(version);
                if !s.kek_ids.contains(&kek) {
                    s.kek_ids.push(kek);
                }
                s.created_at = s.created_at.map(|c| c.min(created));
            }
            None => out.push(SubjectSummary {
                reference,
                versions: vec![version],
                kek_ids: vec![kek],
                created_at: Some(created),
                erased_at: None,
                erased_by: None,
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed; requests that need an
    /// uncached key get 503.
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    /// A row is not what fieldseal writes.
    #[error("key store holds a malformed row: {0}")]
    Corrupt(String),
}

/// A store of wrapped data keys. Blocking calls: the key service runs them
/// on the blocking pool. Implementations must make `create_first` atomic
/// across every process sharing the store (two replicas seeing a subject's
/// first write at once end up with one key: the loser gets the winner's).
pub trait KeyStore: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// Every version of `reference`, or its tombstone.
    fn get(&self, reference: &str) -> Result<SubjectRecord, StoreError>;
    /// Stores `key` as version 1 of `reference` unless it already has a key
    /// or a tombstone (then nothing is written); returns what is stored
    /// afterwards. With `revive`, a tombstone is replaced (a fresh key after
    /// erasure, `on_erased_write: new_key`).
    fn create_first(
        &self,
        reference: &str,
        key: &StoredKey,
        revive: bool,
    ) -> Result<SubjectRecord, StoreError>;
    /// Destroys every version of `reference` and records a tombstone, in one
    /// transaction. Returns how many versions were destroyed.
    fn erase(&self, reference: &str, requested_by: &str, at: u64) -> Result<usize, StoreError>;
    /// Replaces the wrapping of one version (ring rotation), if it is still
    /// wrapped by `old_kek`. Returns whether a row changed.
    fn rewrap(
        &self,
        reference: &str,
        version: u32,
        old_kek: &str,
        new_kek: &str,
        wrapped: &[u8],
    ) -> Result<bool, StoreError>;
    /// Every reference, with its versions or tombstone.
    fn list(&self) -> Result<Vec<SubjectSummary>, StoreError>;
    /// Every stored key (for `rewrap`).
    fn all_keys(&self) -> Result<Vec<(String, StoredKey)>, StoreError>;
    /// A cheap round trip, for `/readyz`.
    fn ping(&self) -> Result<(), StoreError>;
}
