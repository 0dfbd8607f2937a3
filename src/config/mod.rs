//! Configuration: the YAML is parsed into `raw` structs (unknown keys
//! refused), then each section is validated and compiled once, by the
//! module beside its compiled types (`listen`, `admin`, `upstreams`,
//! `limits`, `rate_limit`, `keys`, `audit`, `log`, `headers`, `routes`).
//! Requests never re-parse. Errors are located by the YAML parser's own
//! positions (`locate`).

mod addresses;
mod admin;
mod audit;
mod headers;
mod identity;
mod key_store;
mod keys;
mod limits;
mod listen;
mod locate;
mod log;
pub mod preflight;
mod rate_limit;
pub mod raw;
mod redis;
mod routes;
mod server;
mod shadowing;
mod shape;
mod units;
mod upstreams;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::crypto::KeyringSpec;
use crate::headers::SecurityHeaders;
use crate::routes::RouteTable;
use crate::tls::TlsSettings;
use locate::At;

pub use self::key_store::{
    parse_url as parse_postgres_url, KeyStoreBackend, KeyStoreSpec, PostgresSettings, PostgresUrl,
};
pub use self::redis::{RedisSettings, RedisUrl};
pub use crate::logging::{LogFormat, LogLevel, LogPaths, TrustRequestId};
pub use admin::DEFAULT_ADDRESS as DEFAULT_ADMIN_ADDRESS;
pub use audit::AuditSettings;
pub use limits::Limits;
pub use log::LogSettings;
pub use rate_limit::GlobalRateLimit;
pub use server::{RuntimeMode, ServerSettings};
pub use units::{canonical as canonical_ip, parse_duration, parse_size, IpNet};
pub use upstreams::{
    ActiveCheck, Balance, Health, HostHeader, Readiness, Server, Upstream, UpstreamTls,
};

/// A configuration error, located in the file when we can tell where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.file, l, c, self.message),
            (Some(l), None) => write!(f, "{}:{}: {}", self.file, l, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub tls: TlsSettings,
    pub redirect_http: Option<SocketAddr>,
    /// None: `admin: off`, no admin listener.
    pub admin: Option<SocketAddr>,
    /// `admin.token_file`: the bearer token for introspection and reload.
    pub admin_token_file: Option<PathBuf>,
    pub allowed_hosts: Option<Vec<String>>,
    pub trusted_proxies: Vec<IpNet>,
    pub upstreams: Vec<Upstream>,
    pub rate_limit: GlobalRateLimit,
    /// `redis`: where `store: redis` buckets live.
    pub redis: Option<RedisSettings>,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    /// `server`: the runtimes and worker threads.
    pub server: ServerSettings,
    pub keys: Option<KeyringSpec>,
    pub audit: Option<AuditSettings>,
    /// `identity`: the JWT providers (None: no route verifies tokens).
    pub identity: Option<crate::identity::IdentitySpec>,
    /// `key_store`: where tenant and subject data keys live.
    pub key_store: Option<KeyStoreSpec>,
    pub log: LogSettings,
    pub routes: RouteTable,
    /// Headers for answers that match no route.
    pub default_headers: SecurityHeaders,
    /// Legal but probably unintended settings, for `check` and the start log.
    pub warnings: Vec<String>,
}

/// A config file is text a person wrote; larger is not one.
pub(crate) const MAX_CONFIG_FILE: u64 = 16 << 20;

impl Config {
    /// Reads and compiles a config file. Relative paths inside it are taken
    /// relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            crate::files::read_regular_text(path, MAX_CONFIG_FILE).map_err(|e| ConfigError {
                file: path.display().to_string(),
                line: None,
                column: None,
                message: format!("cannot read: {e}"),
            })?;
        Config::from_yaml(&text, path)
    }

    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let raw: raw::RawConfig = serde_yaml_ng::from_str(text).map_err(|e| {
            let loc = e.location();
            ConfigError {
                file: file.clone(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                message: strip_location(&e.to_string()),
            }
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        compile(raw, &base, path).map_err(|e| e.located(&file, text))
    }

    pub fn upstream(&self, idx: usize) -> Option<&Upstream> {
        self.upstreams.get(idx)
    }

    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }

    /// One-line summary for `fieldseal check`.
    pub fn summary(&self) -> String {
        let routes = &self.routes.routes;
        let enc = routes.iter().filter(|r| r.transforms_request()).count();
        let dec = routes.iter().filter(|r| r.transforms_response()).count();
        format!(
            "{} routes ({} encrypt, {} decrypt), {} upstreams, {} keys, listening on {}",
            routes.len(),
            enc,
            dec,
            self.upstreams.len(),
            self.keys.as_ref().map_or(0, |k| k.keys.len()),
            self.listen
        )
    }
}

/// The JSON Schema (draft 2020-12) of the config file, generated from the
/// raw structs the loader parses (`fieldseal config-schema`). It describes
/// the shape; values (durations, JSONPaths, addresses) are checked by `check`.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(raw::RawConfig);
    // Serializing a schema (a JSON value) cannot fail.
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// serde_yaml_ng appends " at line L column C"; we print the location first.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

/// The whole file, section by section.
fn compile(raw: raw::RawConfig, base: &Path, source: &Path) -> Result<Config, Invalid> {
    let (listen, mut tls) = listen::compile(&raw.listen, base)?;
    let redirect_http = listen::redirect(raw.redirect_http.as_ref())?;
    let admin = admin::compile(raw.admin.as_ref(), base)?;
    let allowed_hosts = listen::allowed_hosts(raw.allowed_hosts.as_deref())?;
    let trusted_proxies = listen::trusted_proxies(&raw.trusted_proxies)?;
    let upstreams = upstreams::compile(&raw.upstreams, base)?;
    let redis = raw
        .redis
        .as_ref()
        .map(|r| self::redis::compile(r, base))
        .transpose()?;
    let rate_limit = rate_limit::compile(raw.rate_limit.as_ref(), redis.is_some())?;
    let limits = limits::compile(&raw.limits)?;
    let keys = raw
        .keys
        .as_ref()
        .map(|k| keys::compile(k, base))
        .transpose()?;
    let audit = raw
        .audit
        .as_ref()
        .map(|a| audit::compile(a, keys.as_ref(), base))
        .transpose()?;
    let mut identity = raw
        .identity
        .as_ref()
        .map(|i| identity::compile(i, base))
        .transpose()?;
    tls.client_auth =
        identity
            .as_ref()
            .and_then(|i| i.mtls.as_ref())
            .map(|m| crate::tls::ClientAuth {
                ca: m.ca.clone(),
                crls: m.crls.clone(),
                required: m.required,
            });
    let key_store = match &raw.key_store {
        None => None,
        Some(k) => {
            if keys.is_none() {
                return Err(invalid(
                    &At::top("key_store"),
                    "needs a `keys` section: its keys wrap the stored data keys",
                ));
            }
            Some(key_store::compile(k, base)?)
        }
    };
    if let Some(k) = &keys {
        let token_active = k
            .keys
            .iter()
            .any(|x| x.id == k.active && !x.source.has_bytes());
        if token_active && key_store.is_none() {
            return Err(invalid(
                &At::top("keys").key("active"),
                format!("{:?} is a pkcs11 key: deployment-scoped routes then seal under a deployment data key kept wrapped in the key store, so a `key_store` section is needed", k.active),
            ));
        }
    }
    let log = log::compile(&raw.log)?;
    let default_headers = headers::compile(&At::top("headers"), &raw.headers, None)?;
    let mut routes = routes::compile(&raw, &upstreams, &rate_limit, &limits, keys.as_ref(), base)?;
    let configured = identity.as_ref().map(|i| i.sources()).unwrap_or_default();
    for (i, (r, raw_r)) in routes.routes.iter_mut().zip(&raw.routes).enumerate() {
        let at = At::top("routes").item(i, &raw_r.name);
        if r.auth == crate::identity::AuthMode::None {
            if raw_r.auth_sources.is_some() {
                return Err(invalid(
                    &at.key("auth_sources"),
                    "needs `auth: required` or `optional`",
                ));
            }
            continue;
        }
        if identity.is_none() {
            return Err(invalid(
                &at.key("auth"),
                "needs an `identity` section with at least one jwt provider",
            ));
        }
        r.auth_sources = match &raw_r.auth_sources {
            None if configured.len() > 1 => return Err(invalid(
                &at.key("auth_sources"),
                "identity has more than one source: name the ones this route accepts (jwt, header, mtls)",
            )),
            None => configured.clone(),
            Some(list) => {
                let mut out = Vec::new();
                for (j, w) in list.iter().enumerate() {
                    let s = word(&at.key("auth_sources").index(j), w, "")?;
                    if !configured.contains(&s) {
                        return Err(invalid(
                            &at.key("auth_sources").index(j),
                            format!("{s:?} is not configured in `identity`"),
                        ));
                    }
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
                if out.is_empty() {
                    return Err(invalid(&at.key("auth_sources"), "name at least one source"));
                }
                out
            }
        };
        if r.key_scope == crate::routes::KeyScope::Tenant
            && !identity
                .as_ref()
                .is_some_and(|i| r.auth_sources.iter().any(|s| i.names_tenant(*s)))
        {
            return Err(invalid(
                &at.key("key_scope"),
                "tenant keys need a tenant, and none of this route's identity sources names one: set a jwt provider's tenant_claim, identity.header.tenant or identity.mtls.tenant",
            ));
        }
    }
    if let Some(identity) = identity.as_mut() {
        for rule in routes.routes.iter().flat_map(|r| &r.read_any_subject) {
            if !identity.role_claims.contains(&rule.claim) {
                identity.role_claims.push(rule.claim.clone());
            }
        }
    }
    listen::check_listeners(listen, redirect_http, &admin, &upstreams)?;
    let shutdown_grace = duration(
        &At::top("shutdown").key("grace_period"),
        &raw.shutdown.grace_period,
        Duration::from_secs(30),
    )?;
    let server = server::compile(&raw.server)?;
    let mut warnings = routes.warnings;
    warnings.extend(listen::trusted_proxy_warnings(
        &raw.trusted_proxies,
        &trusted_proxies,
    ));
    warnings.extend(limits::warnings(&limits));
    warnings.extend(log::warnings(&log));
    Ok(Config {
        source: source.to_path_buf(),
        listen,
        tls,
        redirect_http,
        admin: admin.address,
        admin_token_file: admin.token_file,
        allowed_hosts,
        trusted_proxies,
        upstreams,
        rate_limit,
        redis,
        limits,
        shutdown_grace,
        server,
        keys,
        audit,
        identity,
        key_store,
        log,
        routes: RouteTable {
            routes: routes.routes,
        },
        default_headers,
        warnings,
    })
}

/// A validation failure: the key as shown, the problem, and the node it is
/// about (for its line and column).
#[derive(Debug)]
struct Invalid {
    key: String,
    message: String,
    at: Option<At>,
}

impl Invalid {
    fn located(self, file: &str, text: &str) -> ConfigError {
        let (line, column) = self
            .at
            .and_then(|at| at.position(text))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        ConfigError {
            file: file.to_string(),
            line,
            column,
            message: format!("{}: {}", self.key, self.message),
        }
    }
}

/// `at` is wrong: `message`, located where `at` is written.
fn invalid(at: &At, message: impl Into<String>) -> Invalid {
    Invalid {
        key: at.shown().to_string(),
        message: message.into(),
        at: Some(at.clone()),
    }
}

/// As `invalid`, with the key shown as `key` (more than the place says).
fn invalid_shown(key: impl Into<String>, message: impl Into<String>, at: Option<&At>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
        at: at.cloned(),
    }
}

fn duration(at: &At, v: &Option<String>, default: Duration) -> Result<Duration, Invalid> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|m| invalid(at, m)),
    }
}

fn size(at: &At, v: &Option<String>, default: u64) -> Result<u64, Invalid> {
    match v {
        None => Ok(default),
        Some(s) => parse_size(s).map_err(|m| invalid(at, m)),
    }
}

fn address(at: &At, s: &str) -> Result<SocketAddr, Invalid> {
    s.parse::<SocketAddr>()
        .map_err(|_| invalid(at, format!("{s:?} is not an ip:port address")))
}

/// A word of enumeration `T`, or the error naming the words it takes.
fn word<T: serde::de::DeserializeOwned + Clone>(
    at: &At,
    w: &raw::Word<T>,
    hint: &str,
) -> Result<T, Invalid> {
    match w {
        raw::Word::Known(t) => Ok(t.clone()),
        raw::Word::Unknown(s) => Err(invalid(
            at,
            format!("{s:?}: expected {}{hint}", raw::Word::<T>::expected()),
        )),
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests;
