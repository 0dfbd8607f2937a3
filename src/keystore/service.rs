//! Key resolution for requests: scope → reference → data keys, through a
//! bounded cache of unwrapped keys with a TTL, then the store, then the
//! KEK. A warm request touches neither the store nor the KEK.
//!
//! Bounds: at most `max` references cached, each for at most `ttl`; an
//! erasure done through another replica is in force here within `ttl` (the
//! replica that erased evicts at once). Evicted keys are dropped, which
//! wipes their AES key schedules (`aes`'s `zeroize` feature); data keys
//! themselves are wiped right after the field key is derived.
//!
//! The warm path takes only read locks and allocates nothing: the memo of
//! references is looked up with a borrowed key, the cache hands out the
//! key set it holds (an `Arc`), and the counters are atomics, so warm
//! requests on different worker threads do not queue behind each other.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::crypto::{
    data_key_aad, unix_now, DataKey, Keks, RefScope, SubjectKey, SubjectKeys, SubjectRefKey,
    WrapError,
};

use super::{
    KeyStore, StoreError, StoredKey, SubjectRecord, DEPLOYMENT_REFERENCE, REF_SECRET_REFERENCE,
};

/// What a reference resolves to.
#[derive(Clone)]
pub enum Resolved {
    /// Its keys, newest version first; shared with the
    /// cache, so a hit copies no key list.
    Keys(Arc<SubjectKeys>),
    /// No key (and none was asked for).
    Absent,
    /// Erased; no key was created.
    Erased,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Round trips to the store for request keys.
    pub store_reads: u64,
    /// Keys created (first writes).
    pub created: u64,
    /// Requests served from the cache.
    pub hits: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Wrap(#[from] WrapError),
    #[error("the key task failed")]
    Task,
    /// The store or the KEK (an HSM, a KMS) did not answer in time.
    #[error("the key store or key provider did not answer within {0:?}")]
    Timeout(Duration),
}

struct Cached {
    at: Instant,
    value: Resolved,
}

/// How many subject references `KeyService::reference` remembers.
const REF_MEMO_MAX: usize = 10_000;

/// The counters behind `ServiceStats`: atomics, so counting a hit takes
/// no lock.
#[derive(Default)]
struct Counters {
    store_reads: AtomicU64,
    created: AtomicU64,
    hits: AtomicU64,
}

/// What a subject reference is computed from (a memo key).
struct RefInput {
    scope: RefScope,
    tenant: Option<Box<str>>,
    subject: Box<str>,
}

/// (scope, tenant, subject), owned (`RefInput`, in the memo) or borrowed
/// (a tuple, to look one up): the memo is probed without building an owned
/// key. Both hash and compare through `parts`, so they agree.
trait RefKey {
    fn parts(&self) -> (RefScope, Option<&str>, &str);
}

impl RefKey for RefInput {
    fn parts(&self) -> (RefScope, Option<&str>, &str) {
        (self.scope, self.tenant.as_deref(), &self.subject)
    }
}

impl RefKey for (RefScope, Option<&str>, &str) {
    fn parts(&self) -> (RefScope, Option<&str>, &str) {
        (self.0, self.1, self.2)
    }
}

impl PartialEq for dyn RefKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn RefKey + '_ {}

impl Hash for dyn RefKey + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for RefInput {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for RefInput {}

impl Hash for RefInput {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl<'a> Borrow<dyn RefKey + 'a> for RefInput {
    fn borrow(&self) -> &(dyn RefKey + 'a) {
        self
    }
}

pub struct KeyService {
    store: Arc<dyn KeyStore>,
    keks: Keks,
    refs: SubjectRefKey,
    /// References computed before (an HMAC each), so a warm request computes
    /// none; cleared when `REF_MEMO_MAX` is reached, so it stays bounded.
    ref_memo: RwLock<HashMap<RefInput, Arc<str>>>,
    /// Read-locked by hits; write-locked only to fill, evict or drop an
    /// expired entry.
    cache: RwLock<HashMap<String, Cached>>,
    ttl: Duration,
    max: usize,
    stats: Counters,
    deployment: DeploymentKeys,
    /// The last token self-test, and when (`kek_health`).
    kek_checked: tokio::sync::Mutex<Option<(Instant, KekHealth)>>,
}

/// Per token KEK id: Ok, or why its round trip failed.
pub type KekHealth = Vec<(String, Result<(), String>)>;

/// Longest a request waits for an uncached key (store read and unwrap).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// `/readyz` tests the token keys at most this often; calls in between
/// get the last result.
pub const KEK_CHECK_EVERY: Duration = Duration::from_secs(2);
/// A token that has not answered the self-test by then is failed.
const KEK_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What deployment-scoped routes do with the deployment data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentKeys {
    /// None exists: `fs1` under the ring, as without a key store.
    Unused,
    /// It exists (an earlier token key was active) but the active key is
    /// a file or passphrase key: seal `fs1`, open both.
    Open,
    /// The active key is a token key: seal under it, open both.
    Seal,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("store", &self.store.kind())
            .field("keks", &self.keks)
            .finish_non_exhaustive()
    }
}

impl KeyService {
    /// Loads (or, on a new store, creates) the reference secret. Blocking.
    pub fn open(
        store: Arc<dyn KeyStore>,
        keks: Keks,
        ttl: Duration,
        max: usize,
    ) -> Result<KeyService, ServiceError> {
        let secret = match store.get(REF_SECRET_REFERENCE)? {
            SubjectRecord::Keys(keys) => unwrap_one(&keks, REF_SECRET_REFERENCE, &keys[0])?,
            _ => {
                let fresh = DataKey::generate()?;
                let row = wrap_row(&keks, REF_SECRET_REFERENCE, 1, &fresh)?;
                match store.create_first(REF_SECRET_REFERENCE, &row, true)? {
                    // The winner's secret, whoever that was.
                    SubjectRecord::Keys(keys) => unwrap_one(&keks, REF_SECRET_REFERENCE, &keys[0])?,
                    _ => {
                        return Err(ServiceError::Store(StoreError::Corrupt(
                            "the reference secret was not stored".into(),
                        )))
                    }
                }
            }
        };
        let refs = SubjectRefKey::new(&secret).ok_or(ServiceError::Task)?;
        // The deployment data key: made (once per store, whichever replica
        // is first) when a token key is active, used when it exists.
        let sealing = keks.active().kind() == crate::crypto::pkcs11::KIND;
        let deployment = match store.get(DEPLOYMENT_REFERENCE)? {
            // Unwrapped once here, so a row no configured KEK opens stops
            // the load instead of failing every deployment-route request.
            SubjectRecord::Keys(keys) => {
                for row in &keys {
                    unwrap_one(&keks, DEPLOYMENT_REFERENCE, row)?;
                }
                if sealing {
                    DeploymentKeys::Seal
                } else {
                    DeploymentKeys::Open
                }
            }
            _ if sealing => {
                let fresh = DataKey::generate()?;
                let row = wrap_row(&keks, DEPLOYMENT_REFERENCE, 1, &fresh)?;
                match store.create_first(DEPLOYMENT_REFERENCE, &row, true)? {
                    SubjectRecord::Keys(_) => DeploymentKeys::Seal,
                    _ => {
                        return Err(ServiceError::Store(StoreError::Corrupt(
                            "the deployment data key was not stored".into(),
                        )))
                    }
                }
            }
            _ => DeploymentKeys::Unused,
        };
        Ok(KeyService {
            store,
            keks,
            refs,
            ref_memo: RwLock::new(HashMap::new()),
            cache: RwLock::new(HashMap::new()),
            ttl,
            max: max.max(1),
            stats: Counters::default(),
            deployment,
            kek_checked: tokio::sync::Mutex::new(None),
        })
    }

    /// What deployment-scoped routes do with the deployment data key.
    pub fn deployment(&self) -> DeploymentKeys {
        self.deployment
    }

    /// The deployment data key(s), through the cache (a miss unwraps with
    /// the KEK on the blocking pool; a token that is down is an error, and
    /// the request gets 503).
    pub async fn deployment_keys(self: &Arc<Self>) -> Result<Resolved, ServiceError> {
        self.resolve(DEPLOYMENT_REFERENCE, false, false).await
    }

    /// The token KEKs' self-tests (`kek_self_test`), cached for
    /// `KEK_CHECK_EVERY` and run on the blocking pool. Empty without token
    /// keys.
    pub async fn kek_health(self: &Arc<Self>) -> KekHealth {
        let ids: Vec<String> = self
            .keks
            .all()
            .iter()
            .filter(|k| k.kind() == crate::crypto::pkcs11::KIND)
            .map(|k| k.id().to_owned())
            .collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut last = self.kek_checked.lock().await;
        if let Some((at, health)) = last.as_ref() {
            if at.elapsed() < KEK_CHECK_EVERY {
                return health.clone();
            }
        }
        let this = Arc::clone(self);
        let run = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .map(|id| {
                    let r = this.kek_self_test(&id).map_err(|e| e.to_string());
                    (id, r)
                })
                .collect::<KekHealth>()
        });
        let health = match tokio::time::timeout(KEK_CHECK_TIMEOUT, run).await {
            Ok(Ok(h)) => h,
            Ok(Err(_)) => self
                .token_ids()
                .map(|id| (id, Err("the self-test task failed".to_owned())))
                .collect(),
            Err(_) => self
                .token_ids()
                .map(|id| {
                    (
                        id,
                        Err("the token did not answer the self-test in time".to_owned()),
                    )
                })
                .collect(),
        };
        *last = Some((Instant::now(), health.clone()));
        health
    }

    fn token_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.keks
            .all()
            .iter()
            .filter(|k| k.kind() == crate::crypto::pkcs11::KIND)
            .map(|k| k.id().to_owned())
    }

    /// A wrap and unwrap round trip through KEK `id` (with a token key:
    /// proves the token answers now), and an unwrap with other associated
    /// data that must fail. Blocking.
    pub fn kek_self_test(&self, id: &str) -> Result<(), ServiceError> {
        let kek = self
            .keks
            .get(id)
            .ok_or_else(|| WrapError::UnknownKek { id: id.to_owned() })?;
        let probe = DataKey::generate()?;
        let aad = b"fieldseal-kek-self-test";
        let wrapped = kek.wrap(&probe, aad)?;
        let back = kek.unwrap(&wrapped, aad)?;
        if back.expose() != probe.expose() {
            return Err(ServiceError::Wrap(WrapError::Unwrap));
        }
        match kek.unwrap(&wrapped, b"fieldseal-kek-self-test-other") {
            Err(WrapError::Unwrap) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => Err(ServiceError::Wrap(WrapError::Provider {
                kind: kek.kind(),
                message: "the associated data is not authenticated".into(),
            })),
        }
    }

    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    pub fn keks(&self) -> &Keks {
        &self.keks
    }

    /// A snapshot of the counters (each read on its own: one taken while
    /// requests run may be a few counts apart between fields).
    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            store_reads: self.stats.store_reads.load(Ordering::Relaxed),
            created: self.stats.created.load(Ordering::Relaxed),
            hits: self.stats.hits.load(Ordering::Relaxed),
        }
    }

    /// The opaque reference of a tenant or subject.
    pub fn reference(
        &self,
        scope: RefScope,
        tenant: Option<&str>,
        subject: &str,
    ) -> Option<String> {
        self.shared_reference(scope, tenant, subject)
            .map(|r| String::from(&*r))
    }

    /// As [`reference`](Self::reference), shared with the memo: a
    /// remembered reference costs a read lock and a reference count, no
    /// allocation and no HMAC.
    pub fn shared_reference(
        &self,
        scope: RefScope,
        tenant: Option<&str>,
        subject: &str,
    ) -> Option<Arc<str>> {
        let probe: &dyn RefKey = &(scope, tenant, subject);
        if let Some(r) = self
            .ref_memo
            .read()
            .ok()
            .and_then(|m| m.get(probe).map(Arc::clone))
        {
            return Some(r);
        }
        let reference: Arc<str> = Arc::from(self.refs.reference(scope, tenant, subject)?);
        if let Ok(mut m) = self.ref_memo.write() {
            if m.len() >= REF_MEMO_MAX {
                m.clear();
            }
            m.insert(
                RefInput {
                    scope,
                    tenant: tenant.map(Box::from),
                    subject: Box::from(subject),
                },
                Arc::clone(&reference),
            );
        }
        Some(reference)
    }

    /// Drops `reference` from the cache (after an erasure here).
    pub fn evict(&self, reference: &str) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(reference);
        }
    }

    /// The keys of `reference`. With `create`, a reference without keys gets
    /// version 1 (one per reference, however many replicas race); an erased
    /// one only when `revive` (else `Erased`).
    pub async fn resolve(
        self: &Arc<Self>,
        reference: &str,
        create: bool,
        revive: bool,
    ) -> Result<Resolved, ServiceError> {
        if let Some(hit) = self.cached(reference) {
            let usable = match &hit {
                Resolved::Keys(_) => true,
                Resolved::Erased => !(create && revive),
                Resolved::Absent => !create,
            };
            if usable {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit);
            }
        }
        let this = Arc::clone(self);
        let reference = reference.to_owned();
        let task =
            tokio::task::spawn_blocking(move || this.resolve_blocking(&reference, create, revive));
        // A hung store or token fails the request closed (503) instead of
        // holding it; the blocking call itself finishes or fails on its own.
        match tokio::time::timeout(RESOLVE_TIMEOUT, task).await {
            Ok(joined) => joined.map_err(|_| ServiceError::Task)?,
            Err(_) => Err(ServiceError::Timeout(RESOLVE_TIMEOUT)),
        }
    }

    /// As `resolve`, on the calling thread (the offline tools). Blocking.
    pub fn resolve_now(
        &self,
        reference: &str,
        create: bool,
        revive: bool,
    ) -> Result<Resolved, ServiceError> {
        if let Some(hit) = self.cached(reference) {
            if matches!(hit, Resolved::Keys(_)) {
                return Ok(hit);
            }
        }
        self.resolve_blocking(reference, create, revive)
    }

    /// [`resolve`](Self::resolve) on this thread (offline tools). Blocking.
    pub(crate) fn resolve_blocking(
        &self,
        reference: &str,
        create: bool,
        revive: bool,
    ) -> Result<Resolved, ServiceError> {
        self.stats.store_reads.fetch_add(1, Ordering::Relaxed);
        let mut record = self.store.get(reference)?;
        let wants_key = match &record {
            SubjectRecord::Absent => create,
            SubjectRecord::Erased { .. } => create && revive,
            SubjectRecord::Keys(_) => false,
        };
        if wants_key {
            // After an erasure, above every destroyed version.
            let version = match &record {
                SubjectRecord::Erased { last_version, .. } => last_version.saturating_add(1),
                _ => 1,
            };
            let dek = DataKey::generate()?;
            let row = wrap_row(&self.keks, reference, version, &dek)?;
            record = self.store.create_first(reference, &row, revive)?;
            self.stats.created.fetch_add(1, Ordering::Relaxed);
        }
        let resolved = match record {
            SubjectRecord::Absent => Resolved::Absent,
            SubjectRecord::Erased { .. } => Resolved::Erased,
            SubjectRecord::Keys(rows) => {
                let mut keys = SubjectKeys::default();
                for row in &rows {
                    let dek = unwrap_one(&self.keks, reference, row)?;
                    let key = SubjectKey::new(reference, row.version, &dek).ok_or_else(|| {
                        StoreError::Corrupt(format!("bad reference or version {}", row.version))
                    })?;
                    keys.push(Arc::new(key));
                }
                Resolved::Keys(Arc::new(keys))
            }
        };
        if !matches!(resolved, Resolved::Absent) {
            self.remember(reference, resolved.clone());
        }
        Ok(resolved)
    }

    fn cached(&self, reference: &str) -> Option<Resolved> {
        {
            let cache = self.cache.read().ok()?;
            let c = cache.get(reference)?;
            if c.at.elapsed() < self.ttl {
                return Some(c.value.clone());
            }
        }
        // Expired: dropped under the write lock, unless another request
        // refilled it in between.
        if let Ok(mut cache) = self.cache.write() {
            if cache
                .get(reference)
                .is_some_and(|c| c.at.elapsed() >= self.ttl)
            {
                cache.remove(reference);
            }
        }
        None
    }

    fn remember(&self, reference: &str, value: Resolved) {
        let Ok(mut cache) = self.cache.write() else {
            return;
        };
        if cache.len() >= self.max && !cache.contains_key(reference) {
            let ttl = self.ttl;
            cache.retain(|_, c| c.at.elapsed() < ttl);
            if cache.len() >= self.max {
                if let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, c)| c.at)
                    .map(|(k, _)| k.clone())
                {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(
            reference.to_owned(),
            Cached {
                at: Instant::now(),
                value,
            },
        );
    }

    /// Erases the keys of (scope, tenant, subject): every version destroyed,
    /// a tombstone recorded with `requested_by`. Returns the reference and
    /// how many versions were destroyed. Blocking.
    pub fn erase_subject(
        &self,
        scope: RefScope,
        tenant: Option<&str>,
        subject: &str,
        requested_by: &str,
    ) -> Result<(String, usize), ServiceError> {
        let reference = self
            .reference(scope, tenant, subject)
            .ok_or(ServiceError::Task)?;
        let n = self.erase(&reference, requested_by)?;
        Ok((reference, n))
    }

    /// Erases `reference` in the store and here. Blocking.
    pub fn erase(&self, reference: &str, requested_by: &str) -> Result<usize, ServiceError> {
        let n = self.store.erase(reference, requested_by, unix_now())?;
        self.evict(reference);
        Ok(n)
    }

    /// Rewraps every stored key not under the active KEK. Returns (moved,
    /// already current). Blocking.
    pub fn rewrap_all(&self) -> Result<(usize, usize), ServiceError> {
        let active = self.keks.active();
        let (mut moved, mut current) = (0, 0);
        for (reference, row) in self.store.all_keys()? {
            if row.kek_id == active.id() {
                current += 1;
                continue;
            }
            let dek = unwrap_one(&self.keks, &reference, &row)?;
            let wrapped = active.wrap(&dek, &data_key_aad(&reference, row.version))?;
            if self
                .store
                .rewrap(&reference, row.version, &row.kek_id, active.id(), &wrapped)?
            {
                moved += 1;
            }
        }
        Ok((moved, current))
    }
}

fn wrap_row(
    keks: &Keks,
    reference: &str,
    version: u32,
    dek: &DataKey,
) -> Result<StoredKey, WrapError> {
    let kek = keks.active();
    Ok(StoredKey {
        version,
        kek_id: kek.id().to_owned(),
        wrapped: kek.wrap(dek, &data_key_aad(reference, version))?,
        created_at: unix_now(),
    })
}

fn unwrap_one(keks: &Keks, reference: &str, row: &StoredKey) -> Result<DataKey, WrapError> {
    keks.unwrap(
        &row.kek_id,
        &row.wrapped,
        &data_key_aad(reference, row.version),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keyring;
    use crate::keystore::SqliteStore;

    fn service(dir: &tempfile::TempDir, ttl: Duration, max: usize) -> Arc<KeyService> {
        let ring = Keyring::from_raw_keys("k1", vec![("k1".into(), [7; 32])]).unwrap();
        let store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        Arc::new(KeyService::open(Arc::new(store), Keks::from_ring(&ring), ttl, max).unwrap())
    }

    #[test]
    fn a_remembered_reference_is_the_computed_one_and_inputs_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Duration::from_secs(60), 10);
        let direct = s.refs.reference(RefScope::Subject, Some("t"), "a").unwrap();
        let first = s
            .shared_reference(RefScope::Subject, Some("t"), "a")
            .unwrap();
        let again = s
            .shared_reference(RefScope::Subject, Some("t"), "a")
            .unwrap();
        assert_eq!(&*first, direct);
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second comes from the memo"
        );
        assert_eq!(
            s.reference(RefScope::Subject, Some("t"), "a").unwrap(),
            direct
        );
        // Each part of the input tells references apart, memo or not.
        let others = [
            s.reference(RefScope::Subject, None, "a").unwrap(),
            s.reference(RefScope::Subject, Some(""), "a").unwrap(),
            s.reference(RefScope::Subject, Some("t"), "b").unwrap(),
            s.reference(RefScope::Subject, Some("ta"), "").unwrap(),
            s.reference(RefScope::Tenant, Some("t"), "a").unwrap(),
        ];
        for (i, o) in others.iter().enumerate() {
            assert_ne!(o, &direct, "input {i}");
        }
        // No tenant and an empty tenant are one reference (the format's
        // rule), each remembered under its own input.
        assert_eq!(others[0], others[1]);
        assert_eq!(
            s.reference(RefScope::Tenant, Some("t"), "x").unwrap(),
            others[4]
        );
    }

    #[test]
    fn the_memo_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Duration::from_secs(60), 10);
        for i in 0..REF_MEMO_MAX + 5 {
            s.reference(RefScope::Subject, None, &format!("s{i}"))
                .unwrap();
        }
        let n = s.ref_memo.read().unwrap().len();
        assert!(n <= REF_MEMO_MAX && n > 0, "{n}");
    }

    #[test]
    fn warm_hits_are_counted_and_share_the_cached_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Duration::from_secs(60), 10);
        let r = s.reference(RefScope::Subject, None, "alice").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let Resolved::Keys(a) = rt.block_on(s.resolve(&r, true, false)).unwrap() else {
            panic!("no key")
        };
        let before = s.stats();
        assert_eq!((before.created, before.store_reads, before.hits), (1, 1, 0));
        let Resolved::Keys(b) = rt.block_on(s.resolve(&r, true, false)).unwrap() else {
            panic!("no key")
        };
        assert!(Arc::ptr_eq(&a, &b), "a hit hands out the cached set");
        assert_eq!(b.first().unwrap().reference(), r);
        let after = s.stats();
        assert_eq!((after.created, after.store_reads, after.hits), (1, 1, 1));
    }

    #[test]
    fn an_expired_entry_is_read_again_and_the_cache_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Duration::ZERO, 2);
        let r = s.reference(RefScope::Subject, None, "alice").unwrap();
        assert!(matches!(
            s.resolve_now(&r, true, false),
            Ok(Resolved::Keys(_))
        ));
        assert!(s.cached(&r).is_none(), "a zero TTL expires at once");
        assert!(s.cache.read().unwrap().get(&r).is_none(), "and is dropped");
        assert!(matches!(
            s.resolve_now(&r, false, false),
            Ok(Resolved::Keys(_))
        ));
        assert_eq!(s.stats().store_reads, 2);

        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Duration::from_secs(60), 2);
        for who in ["a", "b", "c", "d"] {
            let r = s.reference(RefScope::Subject, None, who).unwrap();
            assert!(matches!(
                s.resolve_now(&r, true, false),
                Ok(Resolved::Keys(_))
            ));
        }
        assert_eq!(s.cache.read().unwrap().len(), 2);
        let c = s.reference(RefScope::Subject, None, "c").unwrap();
        let d = s.reference(RefScope::Subject, None, "d").unwrap();
        assert!(
            s.cached(&c).is_some() && s.cached(&d).is_some(),
            "the newest stay"
        );
        s.evict(&c);
        assert!(s.cached(&c).is_none());
        assert!(s.cached(&d).is_some());
    }
}
