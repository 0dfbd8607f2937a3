//! Identity at the edge: bearer JWTs verified against configured providers
//! (`identity.jwt`), with their keys from a JWKS file, a JWKS URL (cached,
//! refetched on an unknown `kid` at most once per `jwks_min_refresh`, the
//! last good set kept when a fetch fails) or, for HMAC only, a secret file.
//!
//! What a verified token gives the request: its provider, subject and
//! optional tenant, and the claims a route forwards as headers. Verified
//! tokens are cached (by the token, or the SHA-256 of a token over 1 KiB) until their `exp`, at most
//! `VERIFIED_CACHE_MAX` of them, so a repeated token is not verified again.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Most verified tokens kept; at the bound, expired ones are dropped and,
/// if still full, new tokens are verified but not cached.
pub const VERIFIED_CACHE_MAX: usize = 10_000;
/// Longest token looked at (bigger ones are refused unread).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Largest JWKS document read (file or URL).
const MAX_JWKS_LEN: usize = 1024 * 1024;
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// `auth:` of a route.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No token is looked at (the default).
    #[default]
    None,
    /// A token is verified if there is one; none is fine, a bad one is 401.
    Optional,
    /// A valid token is needed: 401 otherwise, nothing forwarded.
    Required,
}

/// Where a route's caller may be identified from (`auth_sources`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthSource {
    /// A bearer JWT verified against `identity.jwt`.
    Jwt,
    /// `identity.header`, believed only from `trusted_proxies` peers.
    Header,
    /// The TLS client certificate verified against `identity.mtls.ca`.
    Mtls,
}

/// `identity.header`: an authenticating proxy in front names the caller in
/// a header. Honoured only when the TCP peer is in `trusted_proxies`; from
/// any other peer these headers are removed from every request, on every
/// route, and never reach a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderIdentitySpec {
    pub name: http::HeaderName,
    pub tenant: Option<http::HeaderName>,
}

/// Longest subject or tenant taken from an identity header.
pub const MAX_HEADER_IDENTITY_LEN: usize = 256;

/// Provider name of principals from `identity.header`.
pub const HEADER_PROVIDER: &str = "header";

impl HeaderIdentitySpec {
    /// The caller the trusted peer named, None when it named no one, or a
    /// 401 reason when what it sent can't be one subject.
    pub fn principal(&self, h: &http::HeaderMap) -> Result<Option<Principal>, AuthError> {
        let one = |name: &http::HeaderName| -> Result<Option<String>, AuthError> {
            let mut values = h.get_all(name).iter();
            let Some(v) = values.next() else {
                return Ok(None);
            };
            if values.next().is_some() {
                return Err(AuthError::Invalid("more than one identity header"));
            }
            let s = v
                .to_str()
                .map_err(|_| AuthError::Invalid("identity header is not text"))?
                .trim();
            if s.is_empty() || s.len() > MAX_HEADER_IDENTITY_LEN {
                return Err(AuthError::Invalid("identity header is empty or too long"));
            }
            Ok(Some(s.to_owned()))
        };
        let Some(subject) = one(&self.name)? else {
            return Ok(None);
        };
        let tenant = match &self.tenant {
            Some(t) => Some(one(t)?.ok_or(AuthError::Invalid("the tenant header is missing"))?),
            None => None,
        };
        Ok(Some(Principal {
            provider: Arc::from(HEADER_PROVIDER),
            subject,
            tenant,
            forwarded: Vec::new(),
            expires: 0,
            // Roles come from verified token payloads only.
            roles: Vec::new(),
        }))
    }

    pub fn names(&self) -> impl Iterator<Item = &http::HeaderName> {
        std::iter::once(&self.name).chain(self.tenant.as_ref())
    }
}

/// Where a provider's verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySourceSpec {
    JwksFile(PathBuf),
    JwksUrl(String),
    /// HMAC secret (HS256/384/512 only), mode 0600.
    HmacSecretFile(PathBuf),
}

/// One `identity.jwt` entry, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtProviderSpec {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySourceSpec,
    pub subject_claim: String,
    pub tenant_claim: Option<String>,
    pub max_lifetime: Option<Duration>,
    /// Accepted `typ` header values (compared case-insensitively); None: any.
    pub typ: Option<Vec<String>>,
    pub required_claims: Vec<String>,
    /// Claim → header sent to the backend (client copies removed first).
    pub forward_claims: Vec<(String, http::HeaderName)>,
    pub jwks_min_refresh: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentitySpec {
    pub providers: Vec<JwtProviderSpec>,
    pub clock_skew: Duration,
    /// The claims some route's `read_any_subject` names: a verified
    /// token's values of these (and only these) are kept with its principal.
    pub role_claims: Vec<String>,
    /// `identity.header`, if configured.
    pub header: Option<HeaderIdentitySpec>,
    /// `identity.mtls`, if configured.
    pub mtls: Option<crate::mtls::MtlsSpec>,
}

/// One entry of a route's `read_any_subject`: a verified token whose claim
/// `claim` holds one of `values` (exactly, case-sensitively; the claim a
/// string or an array of strings) reads every subject's data on the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRule {
    pub claim: String,
    pub values: Vec<String>,
    /// Only tokens of this `identity.jwt` provider count (None: any).
    pub provider: Option<String>,
}

/// Most values of one role claim kept with a principal; a longer array is
/// not a list of roles anyone grants, and counts as holding none.
pub const MAX_ROLE_VALUES: usize = 64;

impl IdentitySpec {
    /// The sources this configuration can identify callers from.
    pub fn sources(&self) -> Vec<AuthSource> {
        let mut out = Vec::new();
        if !self.providers.is_empty() {
            out.push(AuthSource::Jwt);
        }
        if self.header.is_some() {
            out.push(AuthSource::Header);
        }
        if self.mtls.is_some() {
            out.push(AuthSource::Mtls);
        }
        out
    }

    /// Whether `source` can name a tenant at all: some JWT provider has a
    /// `tenant_claim`, the identity header a `tenant` header, mTLS a
    /// `tenant`. A tenant-scoped route whose sources name none could only
    /// ever answer 401.
    pub fn names_tenant(&self, source: AuthSource) -> bool {
        match source {
            AuthSource::Jwt => self.providers.iter().any(|p| p.tenant_claim.is_some()),
            AuthSource::Header => self.header.as_ref().is_some_and(|h| h.tenant.is_some()),
            AuthSource::Mtls => self.mtls.as_ref().is_some_and(|m| m.tenant.is_some()),
        }
    }

    /// Every header some provider forwards (removed from client requests on
    /// every route that looks at tokens).
    pub fn forwarded_headers(&self) -> Vec<http::HeaderName> {
        let mut out: Vec<http::HeaderName> = Vec::new();
        for p in &self.providers {
            for (_, h) in &p.forward_claims {
                if !out.contains(h) {
                    out.push(h.clone());
                }
            }
        }
        out
    }
}

/// Parses an algorithm name of the config. `none` is never one.
pub fn parse_algorithm(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

pub fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Whether `s` can be a subject or tenant, whichever source named it (a
/// token's claim, a client certificate): any non-empty text.
pub fn is_subject_text(s: &str) -> bool {
    !s.is_empty()
}

/// Who a verified token says the caller is. No `Debug`: it holds claims.
#[derive(Clone)]
pub struct Principal {
    pub provider: Arc<str>,
    pub subject: String,
    pub tenant: Option<String>,
    /// (header, value) pairs to forward, already validated as header values.
    pub forwarded: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The token's `exp`, Unix seconds.
    pub expires: u64,
    /// (claim, its string values) for each of `IdentitySpec::role_claims`
    /// the token carries, from the verified payload only.
    pub roles: Vec<(String, Vec<String>)>,
}

impl Principal {
    /// Whether this principal holds a role `rule` names.
    pub fn holds(&self, rule: &RoleRule) -> bool {
        if rule
            .provider
            .as_deref()
            .is_some_and(|p| p != &*self.provider)
        {
            return false;
        }
        self.roles
            .iter()
            .filter(|(claim, _)| *claim == rule.claim)
            .any(|(_, values)| values.iter().any(|v| rule.values.contains(v)))
    }

    /// Whether this principal holds any role of `rules`.
    pub fn holds_any(&self, rules: &[RoleRule]) -> bool {
        rules.iter().any(|r| self.holds(r))
    }
}

/// The string values of a role claim: a string is one value (never split
/// on spaces or commas), an array contributes its string members; numbers,
/// objects, nested arrays and `null` are no role at all.
fn role_values(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) if !s.is_empty() => vec![s.clone()],
        Value::Array(items) if items.len() <= MAX_ROLE_VALUES => items
            .iter()
            .filter_map(|i| i.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Why a request gets 401 (or, for `KeysUnavailable`, 503). Reasons are
/// fixed strings: never token content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the bearer token is invalid: {0}")]
    Invalid(&'static str),
    /// No verification key set could be loaded for the token's provider.
    #[error("the identity provider's keys are unavailable")]
    KeysUnavailable,
    /// A route that takes only client certificates got a connection without one.
    #[error("a client certificate is required")]
    CertificateMissing,
    /// The connection's verified certificate names no one we can use.
    #[error("the client certificate is not accepted: {0}")]
    Certificate(&'static str),
    /// Two credentials of one request (a certificate and a token or an
    /// identity header) name different callers.
    #[error("the request's credentials name different callers")]
    Conflict,
}

impl AuthError {
    /// The `error` parameter of `WWW-Authenticate` (RFC 6750 §3.1).
    /// Certificate refusals name no standard scheme (there is none for TLS
    /// client certificates): `ClientCertificate` tells a client what to present.
    pub fn challenge(&self) -> &'static str {
        match self {
            AuthError::Missing => "Bearer realm=\"fieldseal\"",
            AuthError::CertificateMissing | AuthError::Certificate(_) => {
                "ClientCertificate realm=\"fieldseal\""
            }
            _ => "Bearer realm=\"fieldseal\", error=\"invalid_token\"",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Invalid(_) => "token_invalid",
            AuthError::KeysUnavailable => "identity_keys_unavailable",
            AuthError::CertificateMissing => "certificate_missing",
            AuthError::Certificate(_) => "certificate_invalid",
            AuthError::Conflict => "credentials_conflict",
        }
    }
}

/// A provider's current verification keys.
enum Keys {
    Hmac(DecodingKey),
    Jwks(Vec<JwksKey>),
}

struct JwksKey {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
    /// Key family, to pick a key for a token without `kid`.
    family: Family,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Okp,
}

fn family_of(a: Algorithm) -> Option<Family> {
    match a {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Okp),
        _ => None,
    }
}

struct Provider {
    spec: JwtProviderSpec,
    /// `IdentitySpec::role_claims`, kept from verified payloads.
    role_claims: Arc<[String]>,
    name: Arc<str>,
    /// The last good key set (None: never loaded).
    keys: Mutex<Option<Arc<Keys>>>,
    /// When the URL was last fetched (success or not), to bound refetches.
    last_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time; others wait and then use its result.
    fetching: tokio::sync::Mutex<()>,
}

struct CachedPrincipal {
    principal: Principal,
    /// `exp` + skew: not valid after this (Unix seconds).
    valid_until: u64,
    provider: usize,
}

/// Tokens up to this length key the verified-token cache by their own bytes
/// (an exact comparison, no digest to compute per request); longer ones by
/// their SHA-256, so the cache holds at most `VERIFIED_CACHE_MAX` × this many
/// bytes of keys (10 MiB).
const EXACT_KEY_MAX: usize = 1024;

/// The verified-token cache's key: the token, or the SHA-256 of a long one.
#[derive(Debug, Clone)]
enum TokenKey {
    Exact(Box<str>),
    Digest([u8; 32]),
}

/// A `TokenKey` borrowed from the request's token: the cache is probed with
/// it, so a hit copies no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TokenRef<'a> {
    Exact(&'a str),
    Digest([u8; 32]),
}

impl<'a> TokenRef<'a> {
    fn of(token: &'a str) -> TokenRef<'a> {
        if token.len() <= EXACT_KEY_MAX {
            TokenRef::Exact(token)
        } else {
            TokenRef::Digest(Sha256::digest(token.as_bytes()).into())
        }
    }

    fn owned(self) -> TokenKey {
        match self {
            TokenRef::Exact(t) => TokenKey::Exact(t.into()),
            TokenRef::Digest(d) => TokenKey::Digest(d),
        }
    }
}

impl TokenKey {
    #[cfg(test)]
    fn of(token: &str) -> TokenKey {
        TokenRef::of(token).owned()
    }
}

/// Either form of the key; both hash and compare through `view`, so a
/// `TokenRef` finds the `TokenKey` it equals.
trait TokenView {
    fn view(&self) -> TokenRef<'_>;
}

impl TokenView for TokenKey {
    fn view(&self) -> TokenRef<'_> {
        match self {
            TokenKey::Exact(t) => TokenRef::Exact(t),
            TokenKey::Digest(d) => TokenRef::Digest(*d),
        }
    }
}

impl TokenView for TokenRef<'_> {
    fn view(&self) -> TokenRef<'_> {
        *self
    }
}

impl PartialEq for dyn TokenView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for dyn TokenView + '_ {}

impl Hash for dyn TokenView + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.view().hash(state);
    }
}

impl PartialEq for TokenKey {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for TokenKey {}

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.view().hash(state);
    }
}

impl<'a> Borrow<dyn TokenView + 'a> for TokenKey {
    fn borrow(&self) -> &(dyn TokenView + 'a) {
        self
    }
}

/// Indexes of `Identity::stats`.
const VERIFICATIONS: usize = 0;
const HITS: usize = 1;
const JWKS_FETCHES: usize = 2;

/// The verifiers of one configuration.
pub struct Identity {
    providers: Vec<Provider>,
    skew: Duration,
    /// Read-locked by hits, write-locked to add.
    cache: RwLock<HashMap<TokenKey, CachedPrincipal>>,
    /// Counters for tests and metrics: (verifications, cache hits, JWKS
    /// fetches), atomics so a hit takes no lock to count.
    stats: [AtomicU64; 3],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("providers", &self.providers.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads JWKS files and HMAC secrets now (a bad one fails the load);
    /// JWKS URLs are fetched when first needed.
    pub fn load(spec: &IdentitySpec) -> Result<Identity, String> {
        let mut providers = Vec::with_capacity(spec.providers.len());
        let role_claims: Arc<[String]> = spec.role_claims.clone().into();
        for p in &spec.providers {
            let keys = match &p.keys {
                KeySourceSpec::JwksFile(path) => {
                    let text = read_limited(path, false)
                        .map_err(|e| format!("identity.jwt {:?}: {e}", p.name))?;
                    let text = String::from_utf8_lossy(&text);
                    Some(Arc::new(parse_jwks(&text).map_err(|e| {
                        format!("identity.jwt {:?}: {}: {e}", p.name, path.display())
                    })?))
                }
                KeySourceSpec::HmacSecretFile(path) => {
                    let secret = read_limited(path, true)
                        .map_err(|e| format!("identity.jwt {:?}: {e}", p.name))?;
                    let secret = secret.trim_ascii();
                    if secret.len() < 32 {
                        return Err(format!(
                            "identity.jwt {:?}: {} holds fewer than 32 bytes; an HMAC secret must be at least 32",
                            p.name,
                            path.display()
                        ));
                    }
                    Some(Arc::new(Keys::Hmac(DecodingKey::from_secret(secret))))
                }
                KeySourceSpec::JwksUrl(_) => None,
            };
            providers.push(Provider {
                name: Arc::from(p.name.as_str()),
                spec: p.clone(),
                role_claims: Arc::clone(&role_claims),
                keys: Mutex::new(keys),
                last_fetch: Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Identity {
            providers,
            skew: spec.clock_skew,
            cache: RwLock::new(HashMap::new()),
            stats: Default::default(),
        })
    }

    /// (full verifications, cache hits, JWKS fetches) so far.
    pub fn stats(&self) -> (u64, u64, u64) {
        let [v, h, f] = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (get(v), get(h), get(f))
    }

    /// Verifies `token` (the bearer credential, without `Bearer `).
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("malformed"));
        }
        let now = crate::crypto::unix_now();
        let digest = TokenRef::of(token);
        if let Some(p) = self.cached(&digest, now) {
            self.count(HITS);
            return Ok(p);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("malformed"))?;
        let issuer = unverified_issuer(token).ok_or(AuthError::Invalid("malformed"))?;
        let (index, provider) = self
            .providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.spec.issuer == issuer)
            .ok_or(AuthError::Invalid("unknown issuer"))?;
        if !provider.spec.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid("algorithm not allowed"));
        }
        if let Some(allowed) = &provider.spec.typ {
            let ok = match &header.typ {
                Some(t) => allowed.iter().any(|a| a.eq_ignore_ascii_case(t)),
                None => allowed.iter().any(|a| a.is_empty()),
            };
            if !ok {
                return Err(AuthError::Invalid("typ not allowed"));
            }
        }
        let key = self
            .key_for(provider, header.alg, header.kid.as_deref())
            .await?;
        self.count(VERIFICATIONS);
        let claims = self.check(provider, token, &key, header.alg, now)?;
        let principal = principal(provider, &claims)?;
        self.remember(digest.owned(), &principal, index, now);
        Ok(principal)
    }

    fn count(&self, which: usize) {
        if let Some(c) = self.stats.get(which) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn cached(&self, digest: &TokenRef<'_>, now: u64) -> Option<Principal> {
        let cache = self.cache.read().ok()?;
        let probe: &dyn TokenView = digest;
        let c = cache.get(probe)?;
        (now <= c.valid_until && c.provider < self.providers.len()).then(|| c.principal.clone())
    }

    fn remember(&self, digest: TokenKey, p: &Principal, provider: usize, now: u64) {
        let Ok(mut cache) = self.cache.write() else {
            return;
        };
        if cache.len() >= VERIFIED_CACHE_MAX {
            cache.retain(|_, c| c.valid_until >= now);
            if cache.len() >= VERIFIED_CACHE_MAX {
                return;
            }
        }
        cache.insert(
            digest,
            CachedPrincipal {
                principal: p.clone(),
                valid_until: p.expires.saturating_add(self.skew.as_secs()),
                provider,
            },
        );
    }

    /// The signature, `exp` (required), `nbf`, `iat`, issuer, audience,
    /// lifetime and required claims.
    fn check(
        &self,
        provider: &Provider,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
        now: u64,
    ) -> Result<Map<String, Value>, AuthError> {
        let spec = &provider.spec;
        let mut v = Validation::new(alg);
        v.leeway = self.skew.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[spec.issuer.as_str()]);
        v.set_audience(&spec.audiences);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthError::Invalid(match e.kind() {
                K::ExpiredSignature => "expired",
                K::ImmatureSignature => "not yet valid",
                K::InvalidAudience => "wrong audience",
                K::InvalidIssuer => "wrong issuer",
                K::InvalidSignature => "bad signature",
                K::InvalidAlgorithm => "algorithm not allowed",
                K::MissingRequiredClaim(_) => "a required claim is missing",
                _ => "malformed",
            })
        })?;
        let claims = data.claims;
        let num = |name: &str| claims.get(name).and_then(Value::as_u64);
        let exp = num("exp").ok_or(AuthError::Invalid("malformed"))?;
        let skew = self.skew.as_secs();
        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_u64().ok_or(AuthError::Invalid("malformed"))?;
            if iat > now.saturating_add(skew) {
                return Err(AuthError::Invalid("issued in the future"));
            }
        }
        if let Some(max) = spec.max_lifetime {
            let iat = num("iat").ok_or(AuthError::Invalid("a required claim is missing"))?;
            if exp.saturating_sub(iat) > max.as_secs() {
                return Err(AuthError::Invalid("lifetime too long"));
            }
        }
        for c in &spec.required_claims {
            if claims.get(c).is_none_or(Value::is_null) {
                return Err(AuthError::Invalid("a required claim is missing"));
            }
        }
        Ok(claims)
    }

    /// The key for a token's `alg` and `kid`: from the current set, else
    /// (JWKS URL only) from a refetch, at most once per `jwks_min_refresh`.
    async fn key_for(
        &self,
        provider: &Provider,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<DecodingKey, AuthError> {
        let current = provider.keys.lock().ok().and_then(|k| k.clone());
        if let Some(keys) = &current {
            if let Some(k) = pick(keys, alg, kid) {
                return Ok(k);
            }
        }
        let KeySourceSpec::JwksUrl(url) = &provider.spec.keys else {
            return Err(AuthError::Invalid("unknown key"));
        };
        let _one = provider.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let fresh = provider.keys.lock().ok().and_then(|k| k.clone());
        if let Some(keys) = &fresh {
            if !same(&fresh, &current) {
                if let Some(k) = pick(keys, alg, kid) {
                    return Ok(k);
                }
            }
        }
        let due = provider
            .last_fetch
            .lock()
            .ok()
            .map(|t| t.is_none_or(|t| t.elapsed() >= provider.spec.jwks_min_refresh))
            .unwrap_or(false);
        if due {
            if let Ok(mut t) = provider.last_fetch.lock() {
                *t = Some(Instant::now());
            }
            self.count(JWKS_FETCHES);
            match fetch_jwks(url).await.and_then(|t| parse_jwks(&t)) {
                Ok(keys) => {
                    let keys = Arc::new(keys);
                    if let Ok(mut k) = provider.keys.lock() {
                        *k = Some(Arc::clone(&keys));
                    }
                    return pick(&keys, alg, kid).ok_or(AuthError::Invalid("unknown key"));
                }
                Err(e) => {
                    // The last good set stays; the problem is logged, not shown.
                    tracing::warn!(provider = %provider.name, error = %e, "JWKS fetch failed");
                }
            }
        }
        match provider.keys.lock().ok().and_then(|k| k.clone()) {
            Some(keys) => pick(&keys, alg, kid).ok_or(AuthError::Invalid("unknown key")),
            None => Err(AuthError::KeysUnavailable),
        }
    }
}

fn same(a: &Option<Arc<Keys>>, b: &Option<Arc<Keys>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The key of `keys` for `alg` and `kid`. Without `kid`, only when exactly
/// one key of the algorithm's family could be meant.
fn pick(keys: &Keys, alg: Algorithm, kid: Option<&str>) -> Option<DecodingKey> {
    match keys {
        Keys::Hmac(k) => is_hmac(alg).then(|| k.clone()),
        Keys::Jwks(set) => {
            let family = family_of(alg)?;
            let fits = |k: &&JwksKey| k.family == family && k.alg.is_none_or(|a| a == alg);
            match kid {
                Some(kid) => set
                    .iter()
                    .filter(fits)
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .map(|k| k.key.clone()),
                None => {
                    let mut it = set.iter().filter(fits);
                    let first = it.next()?;
                    it.next().is_none().then(|| first.key.clone())
                }
            }
        }
    }
}

/// A JWKS document's asymmetric keys; `oct` (symmetric) keys are refused
/// (HMAC secrets come from a file only, so a public JWKS can't carry one).
fn parse_jwks(text: &str) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut out = Vec::new();
    for jwk in &set.keys {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Okp,
            AlgorithmParameters::OctetKey(_) => continue,
        };
        if let Some(jsonwebtoken::jwk::PublicKeyUse::Encryption) = jwk.common.public_key_use {
            continue;
        }
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| parse_algorithm(&format!("{a:?}")));
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a key is unusable: {e}"))?;
        out.push(JwksKey {
            kid: jwk.common.key_id.clone(),
            alg,
            family,
            key,
        });
    }
    if out.is_empty() {
        return Err("the key set holds no signature key".into());
    }
    Ok(Keys::Jwks(out))
}

/// The `iss` claim of a token, before its signature is checked: only to
/// choose the provider whose keys then verify it.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

fn principal(provider: &Provider, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
    let spec = &provider.spec;
    let text = |name: &str| -> Option<String> {
        match claims.get(name)? {
            Value::String(s) if is_subject_text(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let subject =
        text(&spec.subject_claim).ok_or(AuthError::Invalid("the subject claim is missing"))?;
    let tenant = match &spec.tenant_claim {
        Some(c) => Some(text(c).ok_or(AuthError::Invalid("the tenant claim is missing"))?),
        None => None,
    };
    let mut forwarded = Vec::new();
    for (claim, header) in &spec.forward_claims {
        let Some(v) = claims.get(claim) else { continue };
        let s = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // A claim that is not a valid header value is not forwarded at all.
        if let Ok(hv) = http::HeaderValue::from_str(&s) {
            forwarded.push((header.clone(), hv));
        }
    }
    Ok(Principal {
        provider: Arc::clone(&provider.name),
        subject,
        tenant,
        forwarded,
        expires: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        roles: provider
            .role_claims
            .iter()
            .filter_map(|c| claims.get(c).map(|v| (c.clone(), role_values(v))))
            .filter(|(_, v)| !v.is_empty())
            .collect(),
    })
}

/// A JWKS file or HMAC secret: opened non-blocking and only as a regular
/// file (`files::open_regular`), so a FIFO or device never hangs a load.
fn read_limited(path: &Path, secret: bool) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let at = path.display();
    let file = crate::files::open_regular(path).map_err(|e| format!("cannot read {at}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {at}: {e}"))?;
    if secret {
        if let Some(mode) = crate::crypto::looser_than_0600(&meta) {
            return Err(format!(
                "{at} has mode {mode:04o}; it must be 0600 or stricter (chmod 600 {at})"
            ));
        }
    }
    let mut buf = Vec::new();
    file.take(MAX_JWKS_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {at}: {e}"))?;
    if buf.len() > MAX_JWKS_LEN {
        return Err(format!("{at} is larger than {MAX_JWKS_LEN} bytes"));
    }
    Ok(buf)
}

/// GET `url` (http or https; https verified against the system's CA
/// bundle), within `JWKS_FETCH_TIMEOUT`, at most `MAX_JWKS_LEN` bytes.
async fn fetch_jwks(url: &str) -> Result<String, String> {
    tokio::time::timeout(JWKS_FETCH_TIMEOUT, fetch(url))
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn fetch(url: &str) -> Result<String, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let uri: http::Uri = url.parse().map_err(|_| "invalid URL".to_string())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must be http or https".into()),
    };
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let req = http::Request::get(path)
        .header(
            http::header::HOST,
            uri.authority().map_or("", |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|_| "invalid URL".to_string())?;
    let resp = if https {
        let stream = tls_connect(&host, tcp).await?;
        send(hyper_util::rt::TokioIo::new(stream), req).await?
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), req).await?
    };
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_LEN)
        .collect()
        .await
        .map_err(|_| "the answer could not be read or is too large".to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8".to_string())
}

async fn send<T>(
    io: T,
    req: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))
}

const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

async fn tls_connect(
    host: &str,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for path in CA_BUNDLES {
        if let Ok(iter) = CertificateDer::pem_file_iter(path) {
            for cert in iter.flatten() {
                let _ = roots.add(cert);
            }
            break;
        }
    }
    if roots.is_empty() {
        return Err("no CA bundle found to verify the JWKS server".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|_| "invalid host name".to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_tells_every_token_apart_and_digests_only_long_ones() {
        let short = "a".repeat(EXACT_KEY_MAX);
        let long = "a".repeat(EXACT_KEY_MAX + 1);
        assert_eq!(TokenKey::of(&short), TokenKey::Exact(short.clone().into()));
        assert!(matches!(TokenKey::of(&long), TokenKey::Digest(_)));
        assert_ne!(
            TokenKey::of(&short),
            TokenKey::of(&"b".repeat(EXACT_KEY_MAX))
        );
        let mut other_long = long.clone();
        other_long.replace_range(0..1, "b");
        assert_ne!(TokenKey::of(&long), TokenKey::of(&other_long));
        assert_eq!(TokenKey::of(&long), TokenKey::of(&long.clone()));
    }

    #[test]
    fn a_borrowed_token_finds_its_cached_key_and_no_other() {
        let tokens = [
            "a".repeat(10),
            "a".repeat(EXACT_KEY_MAX),
            "a".repeat(EXACT_KEY_MAX + 1),
        ];
        let mut m = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            m.insert(TokenKey::of(t), i);
        }
        for (i, t) in tokens.iter().enumerate() {
            let probe = TokenRef::of(t);
            let probe: &dyn TokenView = &probe;
            assert_eq!(m.get(probe), Some(&i), "token {i}");
        }
        for t in [
            "b".repeat(10),
            "a".repeat(11),
            "b".repeat(EXACT_KEY_MAX + 1),
        ] {
            let probe = TokenRef::of(&t);
            let probe: &dyn TokenView = &probe;
            assert_eq!(m.get(probe), None);
        }
    }
    use serde_json::json;

    fn principal(provider: &str, roles: &[(&str, Value)]) -> Principal {
        Principal {
            provider: Arc::from(provider),
            subject: "s".into(),
            tenant: None,
            forwarded: Vec::new(),
            expires: 0,
            roles: roles
                .iter()
                .map(|(c, v)| (c.to_string(), role_values(v)))
                .collect(),
        }
    }

    fn rule(claim: &str, values: &[&str], provider: Option<&str>) -> RoleRule {
        RoleRule {
            claim: claim.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
            provider: provider.map(str::to_owned),
        }
    }

    #[test]
    fn a_role_is_an_exact_string_or_array_member_of_the_named_claim() {
        let r = rule("roles", &["support"], None);
        assert!(principal("p", &[("roles", json!("support"))]).holds(&r));
        assert!(principal("p", &[("roles", json!(["x", "support"]))]).holds(&r));
        for v in [
            json!("Support"),
            json!("support admin"),
            json!([["support"]]),
            json!({"support": true}),
            json!(1),
            json!(null),
        ] {
            assert!(!principal("p", &[("roles", v.clone())]).holds(&r), "{v}");
        }
        assert!(!principal("p", &[("groups", json!("support"))]).holds(&r));
        let many: Vec<String> = (0..=MAX_ROLE_VALUES).map(|i| format!("r{i}")).collect();
        let mut many = json!(many);
        many.as_array_mut().unwrap().push(json!("support"));
        assert!(!principal("p", &[("roles", many)]).holds(&r));
    }

    #[cfg(unix)]
    #[test]
    fn a_jwks_file_or_secret_that_is_not_a_regular_file_fails_the_load_without_hanging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("jwks.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        for special in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
            for secret in [false, true] {
                let e = read_limited(special, secret).expect_err("not a regular file");
                assert!(e.contains("not a regular file"), "{e}");
            }
        }
    }

    #[test]
    fn a_rule_with_a_provider_counts_only_that_providers_tokens() {
        let r = rule("roles", &["support"], Some("main"));
        assert!(principal("main", &[("roles", json!("support"))]).holds(&r));
        assert!(!principal("other", &[("roles", json!("support"))]).holds(&r));
        assert!(principal("other", &[("roles", json!("support"))])
            .holds_any(&[r, rule("roles", &["support"], Some("other"))]));
    }
}
