//! What a request reads: one `Runtime` per loaded config, swapped atomically
//! on reload, and the process-wide `Shared` state around it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use zeroize::Zeroizing;

use crate::audit::AuditFailureMode;
use crate::audit::{AuditKey, AuditLog, AuditSink};
use crate::config::{Config, ConfigError};
use crate::crypto::{unix_now, KeyError, Keyring};
use crate::metrics::{Metrics, RouteMetrics};
use crate::ratelimit::{Limiter, RateLimits};
use crate::routes::Route;
use crate::tls::TlsError;
use crate::transform::{OpenSpec, SealSpec};
use crate::upstream::UpstreamClient;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Said whole, like the key errors it wraps (no source to repeat).
    #[error("keys: {0}")]
    Keys(KeyError),
    #[error("audit log: {0}")]
    Audit(String),
    #[error(transparent)]
    UpstreamTls(#[from] crate::upstream::UpstreamTlsError),
    /// Said whole: the message names its `redis.*` key, never the URL.
    #[error("{0}")]
    RateLimitStore(crate::redis_limit::StoreConfigError),
    #[error("admin.token_file: {0}")]
    AdminToken(String),
    #[error("{0}")]
    Identity(String),
    #[error("key_store: {0}")]
    KeyStore(String),
    #[error("{0} cannot change on reload; restart to apply it")]
    NeedsRestart(&'static str),
    #[error("the reload task failed before finishing")]
    ReloadTask,
    /// The loader refuses this; checked again where the keys are attached.
    #[error("route {0:?} has encrypt or decrypt rules but there are no keys")]
    NoKeys(String),
}

pub struct Audit {
    pub log: Arc<AuditLog>,
    pub target: AuditSink,
    pub key_id: String,
    pub on_failure: AuditFailureMode,
}

/// Everything compiled from one config file.
pub struct Runtime {
    pub config: Config,
    /// The upstreams in config order (routes hold them too).
    pub upstreams: Vec<Arc<UpstreamClient>>,
    pub tls: Arc<rustls::ServerConfig>,
    pub keyring: Option<Arc<Keyring>>,
    /// The routes in match order, each with all a request on it needs.
    pub routes: Vec<Arc<RouteRuntime>>,
    pub limits: RateLimits,
    pub audit: Option<Audit>,
    /// `admin.token_file`, read at each load so a reload rotates it.
    pub admin_token: Option<crate::crypto::AdminToken>,
    /// Keys the access log's `path_hash`.
    pub path_key: PathKey,
    /// The JWT verifiers (`identity`), with their key sets and token cache.
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// Headers some provider forwards claims in: removed from every client
    /// request on routes that look at tokens.
    pub identity_headers: Vec<http::HeaderName>,
    /// `identity.header`: believed from trusted proxies, removed from
    /// everyone else's requests on every route.
    pub header_identity: Option<crate::identity::HeaderIdentitySpec>,
    /// Tenant and subject data keys (`key_store`), with their cache.
    pub key_service: Option<Arc<crate::keystore::KeyService>>,
}

/// The access log's path hash key: a sub-key of the active key (so
/// replicas sharing a ring hash alike), or, without keys, random for the
/// process (kept across reloads).
#[derive(Clone)]
pub struct PathKey(Arc<Zeroizing<[u8; 32]>>);

/// The sub-key purpose of [`PathKey`].
const PATH_KEY_PURPOSE: &str = "fieldseal access log path v1";

impl PathKey {
    fn for_runtime(
        keyring: Option<&Keyring>,
        previous: Option<&Runtime>,
    ) -> Result<PathKey, LoadError> {
        if let Some(k) = keyring.and_then(|r| r.derive_subkey(r.active_id(), PATH_KEY_PURPOSE)) {
            return Ok(PathKey(Arc::new(k)));
        }
        if let Some(p) = previous {
            return Ok(p.path_key.clone());
        }
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(k.as_mut()).map_err(|_| LoadError::Keys(KeyError::Rng))?;
        Ok(PathKey(Arc::new(k)))
    }

    /// `path_hash`: the first 6 bytes (12 hex digits) of HMAC-SHA256 of the
    /// canonical path: enough to tell paths apart in a log, too short to
    /// be a lookup key into anything but this log.
    pub fn hash(&self, path: &str) -> String {
        use hmac::Mac;
        let Ok(mut m) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0[..]) else {
            return String::new();
        };
        m.update(path.as_bytes());
        m.finalize().into_bytes()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// One route, compiled once with everything a request on it uses: the
/// route, its rate limiter, its metric handles, its upstream and its field
/// transforms with their keys. A request holds an `Arc` of it.
pub struct RouteRuntime {
    pub route: Route,
    /// None: unlimited.
    pub limiter: Option<Arc<Limiter>>,
    pub metrics: RouteMetrics,
    pub upstream: Arc<UpstreamClient>,
    /// What request bodies get sealed, and with which keys.
    pub seal: Option<Arc<Transform<SealSpec>>>,
    /// The encryptions counter of what seals this route's fields: the
    /// deployment's active key, or the tenant or subject keys.
    pub sealed_under: Option<crate::metrics::KeyCounter>,
    /// What answers get opened, and with which keys.
    pub open: Option<Arc<Transform<OpenSpec>>>,
}

/// A route's transform and the keyring it uses.
pub struct Transform<S> {
    pub spec: S,
    pub keys: Arc<Keyring>,
}

impl AsRef<Route> for Arc<RouteRuntime> {
    fn as_ref(&self) -> &Route {
        &self.route
    }
}

/// A route's transform `spec` with the ring's keys (the loader refuses
/// rules without keys; here that is checked again, as a load error).
fn with_keys<S>(
    spec: Option<S>,
    keyring: &Option<Arc<Keyring>>,
    route: &str,
) -> Result<Option<Arc<Transform<S>>>, LoadError> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let keys = keyring
        .as_ref()
        .ok_or_else(|| LoadError::NoKeys(route.to_owned()))?;
    Ok(Some(Arc::new(Transform {
        spec,
        keys: Arc::clone(keys),
    })))
}

impl Runtime {
    /// Starts the upstreams' active health checks: when this config starts
    /// serving.
    pub fn start_checks(&self) {
        for u in &self.upstreams {
            u.start_checks();
        }
    }

    /// Stops them: when a reload replaces this config, and at shutdown.
    pub fn stop_checks(&self) {
        for u in &self.upstreams {
            u.stop_checks();
        }
    }

    /// Builds a runtime: loads certificates and keys, opens the audit log
    /// (or reuses `previous`'s when its sink and key are unchanged, so the
    /// hash chain goes on without a second writer), and compiles every
    /// route into its `RouteRuntime` with its `metrics` handles.
    pub fn build(
        config: Config,
        previous: Option<&Runtime>,
        metrics: &Metrics,
    ) -> Result<Runtime, LoadError> {
        let tls = crate::tls::server_config(&config.tls)?;
        let keyring = match &config.keys {
            Some(spec) => Some(Arc::new(Keyring::load(spec).map_err(LoadError::Keys)?)),
            None => None,
        };
        let audit = match (&config.audit, &keyring) {
            (Some(a), Some(ring)) => {
                // Same sink: keep its one writer and chain (a second handle
                // opened on it would fork the chain with requests in flight).
                let same_sink = previous
                    .and_then(|p| p.audit.as_ref())
                    .filter(|p| p.target == a.target);
                let key = || {
                    ring.derive_subkey(&a.key_id, crate::audit::KEY_PURPOSE)
                        .map(|k| AuditKey::new(a.key_id.clone(), k))
                        .ok_or_else(|| {
                            LoadError::Audit(format!("key {:?} is not in the ring", a.key_id))
                        })
                };
                let log = match same_sink {
                    Some(p) if p.key_id == a.key_id => Arc::clone(&p.log),
                    Some(p) => Arc::new(p.log.rekeyed(key()?)),
                    None => Arc::new(
                        AuditLog::open(a.target.clone(), key()?)
                            .map_err(|e| LoadError::Audit(e.to_string()))?,
                    ),
                };
                Some(Audit {
                    log,
                    target: a.target.clone(),
                    key_id: a.key_id.clone(),
                    on_failure: a.on_failure,
                })
            }
            _ => None,
        };
        let admin_token = config
            .admin_token_file
            .as_deref()
            .map(crate::crypto::AdminToken::load)
            .transpose()
            .map_err(LoadError::AdminToken)?;
        let identity = config
            .identity
            .as_ref()
            .map(|spec| crate::identity::Identity::load(spec).map(Arc::new))
            .transpose()
            .map_err(LoadError::Identity)?;
        let header_identity = config.identity.as_ref().and_then(|i| i.header.clone());
        let identity_headers = config
            .identity
            .as_ref()
            .map(|i| i.forwarded_headers())
            .unwrap_or_default();
        let key_service = match (&config.key_store, &keyring, &config.keys) {
            (Some(spec), Some(ring), Some(keys)) => {
                let keks = crate::crypto::Keks::for_ring(ring, keys)
                    .ok_or_else(|| LoadError::KeyStore("the active key has no KEK".into()))?;
                Some(Arc::new(
                    crate::keystore::open_service(spec, keks).map_err(LoadError::KeyStore)?,
                ))
            }
            _ => None,
        };
        // Each serving runtime gets its own upstream connections.
        let runtimes = match config.server.runtime {
            crate::config::RuntimeMode::PerCore => config.server.worker_count(),
            crate::config::RuntimeMode::Shared => 1,
        };
        let upstreams: Vec<Arc<UpstreamClient>> = config
            .upstreams
            .iter()
            .map(|u| {
                // Servers that stay keep their health (a reload is not a
                // reason to send traffic to a server known to be down).
                let before = previous
                    .and_then(|p| p.upstreams.iter().find(|o| o.spec.name == u.name))
                    .map(|o| &**o);
                UpstreamClient::new(u, metrics, before, runtimes).map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        // Buckets survive a reload: clients don't get a fresh burst from it.
        let (limits, limiters) =
            RateLimits::carry_over(&config, previous.map(|p| &p.limits), metrics)
                .map_err(LoadError::RateLimitStore)?;
        let routes = config
            .routes
            .routes
            .iter()
            .zip(limiters)
            .map(|(route, limiter)| {
                // The index was checked against `upstreams` by the loader.
                let upstream = Arc::clone(&upstreams[route.upstream]);
                let seal = with_keys(route.seal.clone(), &keyring, &route.name)?;
                // Subject keys are not metric labels (one per subject would be unbounded).
                let sealed_under = seal.as_ref().map(|s| {
                    metrics.key_counter(match route.key_scope {
                        crate::routes::KeyScope::Deployment => s.keys.active_id(),
                        crate::routes::KeyScope::Tenant => "tenant-keys",
                        crate::routes::KeyScope::Subject => "subject-keys",
                    })
                });
                Ok(Arc::new(RouteRuntime {
                    route: route.clone(),
                    limiter,
                    metrics: metrics.route_handles(&route.name),
                    upstream,
                    seal,
                    sealed_under,
                    open: with_keys(route.open.clone(), &keyring, &route.name)?,
                }))
            })
            .collect::<Result<_, LoadError>>()?;
        let path_key = PathKey::for_runtime(keyring.as_deref(), previous)?;
        Ok(Runtime {
            path_key,
            upstreams,
            config,
            tls,
            keyring,
            routes,
            limits,
            audit,
            admin_token,
            identity,
            identity_headers,
            header_identity,
            key_service,
        })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    /// Unix seconds.
    pub time: u64,
    pub ok: bool,
    pub message: String,
}

pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    pub config_path: PathBuf,
    /// Unix seconds when this proxy was built (its first config load).
    pub started_at: u64,
    pub last_reload: Mutex<Option<ReloadStatus>>,
    /// Set once shutdown has begun: /readyz answers 503 so load balancers
    /// stop sending new traffic while connections drain.
    pub draining: std::sync::atomic::AtomicBool,
    /// Serializes reloads so two never race to swap.
    reload_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    pub fn new(runtime: Runtime, metrics: Metrics) -> Shared {
        let config_path = runtime.config.source.clone();
        let started_at = unix_now();
        // The boot load is a successful load: a dashboard alerting on
        // `fieldseal_last_reload_success == 0` must not fire for a fresh start.
        metrics.last_reload_success.set(1);
        metrics.last_reload_timestamp.set(started_at as f64);
        Shared {
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            config_path,
            started_at,
            last_reload: Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Re-reads the config file, certificates and keys, validates all of it,
    /// then swaps. On any error the running config stays in force.
    pub async fn reload(self: &Arc<Self>) -> Result<String, LoadError> {
        let _guard = self.reload_lock.lock().await;
        let path = self.config_path.clone();
        let current = self.runtime.load_full();
        let shared = Arc::clone(self);
        // Key stretching (PBKDF2) and file reads must not stall the workers.
        let result = tokio::task::spawn_blocking(move || -> Result<Runtime, LoadError> {
            let config = Config::load(&path)?;
            if config.listen != current.config.listen {
                return Err(LoadError::NeedsRestart("listen.address"));
            }
            if config.admin != current.config.admin {
                return Err(LoadError::NeedsRestart("admin.address"));
            }
            if config.redirect_http != current.config.redirect_http {
                return Err(LoadError::NeedsRestart("redirect_http.address"));
            }
            // The runtimes and their sockets are made once, at start.
            if config.server != current.config.server {
                return Err(LoadError::NeedsRestart("server"));
            }
            Runtime::build(config, Some(&current), &shared.metrics)
        })
        .await
        .unwrap_or(Err(LoadError::ReloadTask));
        let now = unix_now();
        self.metrics.last_reload_timestamp.set(now as f64);
        let status = match result {
            Ok(rt) => {
                let summary = rt.config.summary();
                // The new checkers start before the old ones stop: no gap.
                rt.start_checks();
                let old = self.runtime.swap(Arc::new(rt));
                old.stop_checks();
                self.metrics
                    .reloads
                    .get_or_create(&crate::metrics::OutcomeLabel {
                        outcome: "success".into(),
                    })
                    .inc();
                self.metrics.last_reload_success.set(1);
                tracing::info!(config = %self.config_path.display(), %summary, "configuration reloaded");
                Ok(summary)
            }
            Err(e) => {
                self.metrics
                    .reloads
                    .get_or_create(&crate::metrics::OutcomeLabel {
                        outcome: "failure".into(),
                    })
                    .inc();
                self.metrics.last_reload_success.set(0);
                tracing::error!(config = %self.config_path.display(), error = %e, "reload refused; the previous configuration keeps serving");
                Err(e)
            }
        };
        let record = ReloadStatus {
            time: now,
            ok: status.is_ok(),
            message: match &status {
                Ok(s) => s.clone(),
                Err(e) => e.to_string(),
            },
        };
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(record);
        }
        status
    }
}
