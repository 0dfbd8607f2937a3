//! Configuration: the YAML is parsed into `raw` structs (unknown keys refused),
//! then validated and compiled once into `Config`. Requests never re-parse.

mod addresses;
mod locate;
pub mod preflight;
pub mod raw;
mod shadowing;
mod shape;
mod units;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::audit::AuditFailureMode;
use crate::crypto::{KeySource, KeySpec, KeyringSpec, SaltSource};
use crate::headers::{
    SecurityHeader, SecurityHeaders, UpstreamPolicy, DEFAULT_HEADERS, HEADER_NAMES,
};
use crate::routes::{PathMatch, RateLimitSettings, Route, RouteTable};
use crate::transform::{
    DecryptSelection, FieldPath, FieldRule, OnDecryptFailure, OpenSpec, SealSpec,
};
use locate::Needle;

pub use units::{canonical as canonical_ip, parse_duration, parse_size, IpNet};

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
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sni: Vec<SniCert>,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SniCert {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// Forward the client's Host.
    Preserve,
    /// Use the upstream URL's authority.
    Upstream,
    Fixed(HeaderValue),
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// `http://host:port`, no path.
    pub authority: http::uri::Authority,
    pub scheme: http::uri::Scheme,
    pub base_path: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub host: HostHeader,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: u64,
    pub max_response_body: u64,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_json_depth: usize,
    /// Bodies larger than this are transformed on the blocking pool.
    pub offload_threshold: usize,
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A response the client takes no bytes of for this long closes its
    /// connection (and so releases the upstream connection behind it).
    pub send_timeout: Duration,
    /// Connections older than this are closed gracefully...
    pub max_connection_age: Duration,
    /// ...and dropped this long after a graceful close began.
    pub connection_drain_timeout: Duration,
    /// Bodies the proxy holds (buffered requests and answers), per
    /// connection and for the whole process.
    pub max_buffered_per_connection: u64,
    pub max_buffered_total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub target: AuditTarget,
    pub key_id: String,
    pub on_failure: AuditFailureMode,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: String,
    pub json: bool,
    pub access_log: bool,
    pub trust_request_id: TrustRequestId,
}

/// Whose `X-Request-Id` the proxy keeps (`log.trust_request_id`) instead of
/// making its own: a well-formed id from such a peer joins our log lines to
/// the trace it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrustRequestId {
    /// Only from peers in `trusted_proxies` (the default).
    #[default]
    TrustedProxies,
    /// Never: every request gets an id of ours.
    Never,
    /// From any client (only when every client is a proxy of yours).
    Always,
}

#[derive(Debug, Clone)]
pub struct GlobalRateLimit {
    pub default: Option<RateLimitSettings>,
    pub max_tracked_clients: usize,
}

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
    pub limits: Limits,
    pub shutdown_grace: Duration,
    pub keys: Option<KeyringSpec>,
    pub audit: Option<AuditSettings>,
    pub log: LogSettings,
    pub routes: RouteTable,
    /// Headers for answers that match no route.
    pub default_headers: SecurityHeaders,
    /// Legal but probably unintended settings, for `check` and the start log.
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads and compiles a config file. Relative paths inside it are taken
    /// relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
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
        let enc = self
            .routes
            .routes
            .iter()
            .filter(|r| r.transforms_request())
            .count();
        let dec = self
            .routes
            .routes
            .iter()
            .filter(|r| r.transforms_response())
            .count();
        format!(
            "{} routes ({} encrypt, {} decrypt), {} upstreams, {} keys, listening on {}",
            self.routes.routes.len(),
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

/// A validation failure: the key path, the problem, and what to look for in
/// the text to give its line and column.
#[derive(Debug)]
struct Invalid {
    key: String,
    message: String,
    at: Option<Needle>,
}

impl Invalid {
    fn located(self, file: &str, text: &str) -> ConfigError {
        let (line, column) = self
            .at
            .and_then(|n| locate::locate(text, &n))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        ConfigError {
            file: file.to_string(),
            line,
            column,
            message: format!("{}: {}", self.key, self.message),
        }
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>, needle: Option<&str>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
        at: needle.map(|n| Needle::Text(n.to_string())),
    }
}

fn invalid_at(key: impl Into<String>, message: impl Into<String>, at: Needle) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
        at: Some(at),
    }
}

fn duration(key: &str, v: &Option<String>, default: Duration) -> Result<Duration, Invalid> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|m| invalid(key, m, Some(s))),
    }
}

fn size(key: &str, v: &Option<String>, default: u64) -> Result<u64, Invalid> {
    match v {
        None => Ok(default),
        Some(s) => parse_size(s).map_err(|m| invalid(key, m, Some(s))),
    }
}

fn address(key: &str, s: &str) -> Result<SocketAddr, Invalid> {
    s.parse::<SocketAddr>().map_err(|_| {
        invalid_at(
            key,
            format!("{s:?} is not an ip:port address"),
            Needle::value("address", s),
        )
    })
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn compile(raw: raw::RawConfig, base: &Path, source: &Path) -> Result<Config, Invalid> {
    let listen = address("listen.address", &raw.listen.address)?;
    let tls = TlsSettings {
        cert: resolve(base, &raw.listen.tls.cert),
        key: resolve(base, &raw.listen.tls.key),
        sni: raw
            .listen
            .tls
            .sni
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if s.names.is_empty() {
                    return Err(invalid(
                        format!("listen.tls.sni[{i}].names"),
                        "must name at least one server name",
                        None,
                    ));
                }
                Ok(SniCert {
                    names: s.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                    cert: resolve(base, &s.cert),
                    key: resolve(base, &s.key),
                })
            })
            .collect::<Result<_, _>>()?,
        handshake_timeout: duration(
            "listen.tls.handshake_timeout",
            &raw.listen.tls.handshake_timeout,
            Duration::from_secs(10),
        )?,
    };
    let redirect_http = raw
        .redirect_http
        .as_ref()
        .map(|r| address("redirect_http.address", &r.address))
        .transpose()?;
    let default_admin = SocketAddr::from(([127, 0, 0, 1], 9901));
    let (admin, admin_token_file) = match &raw.admin {
        None => (Some(default_admin), None),
        Some(raw::RawAdmin::Switch(false)) => (None, None),
        Some(raw::RawAdmin::Keyword(k)) if k == "off" => (None, None),
        Some(raw::RawAdmin::Switch(true)) | Some(raw::RawAdmin::Keyword(_)) => {
            return Err(invalid(
                "admin",
                "expected `off` (no admin listener) or { address: \"127.0.0.1:9901\", token_file: ... }",
                Some("admin"),
            ))
        }
        Some(raw::RawAdmin::Settings(a)) => {
            let addr = match &a.address {
                Some(s) => address("admin.address", s)?,
                None => default_admin,
            };
            let token = match a.token_file.as_deref() {
                Some("") => {
                    return Err(invalid(
                        "admin.token_file",
                        "is empty: give the path of a file holding the token",
                        Some("token_file"),
                    ))
                }
                Some(p) => Some(resolve(base, p)),
                None => None,
            };
            (Some(addr), token)
        }
    };
    let allowed_hosts = raw.allowed_hosts.as_ref().map(|hs| {
        hs.iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    });
    if let Some(hs) = &allowed_hosts {
        if hs.is_empty() {
            return Err(invalid(
                "allowed_hosts",
                "is empty: it would refuse every request (remove the key to allow any host)",
                Some("allowed_hosts"),
            ));
        }
    }
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .map_err(|m| invalid("trusted_proxies", m, Some(s)))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Upstreams, kept in a stable order; routes refer to them by index.
    let mut upstreams = Vec::new();
    let mut upstream_index = BTreeMap::new();
    for (name, u) in &raw.upstreams {
        let key = format!("upstreams.{name}");
        let uri: Uri = u.url.parse().map_err(|_| {
            invalid(
                format!("{key}.url"),
                format!("{:?} is not a URL", u.url),
                Some(&u.url),
            )
        })?;
        let scheme = uri.scheme().cloned().ok_or_else(|| {
            invalid(
                format!("{key}.url"),
                "needs a scheme (http://)",
                Some(&u.url),
            )
        })?;
        if scheme != http::uri::Scheme::HTTP {
            return Err(invalid(format!("{key}.url"), "only http:// upstreams are supported (fieldseal terminates TLS in front of a local legacy service)", Some(&u.url)));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid(format!("{key}.url"), "needs a host", Some(&u.url)))?;
        if uri.query().is_some() {
            return Err(invalid(
                format!("{key}.url"),
                "must not have a query",
                Some(&u.url),
            ));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        let host = match u.host.as_deref() {
            None | Some("preserve") => HostHeader::Preserve,
            Some("upstream") => HostHeader::Upstream,
            Some(other) => HostHeader::Fixed(HeaderValue::from_str(other).map_err(|_| {
                invalid(
                    format!("{key}.host"),
                    "is not a valid Host value",
                    Some(other),
                )
            })?),
        };
        let connect_timeout = duration(
            &format!("{key}.connect_timeout"),
            &u.connect_timeout,
            Duration::from_secs(2),
        )?;
        let timeout = duration(
            &format!("{key}.timeout"),
            &u.timeout,
            Duration::from_secs(30),
        )?;
        if connect_timeout.is_zero() || timeout.is_zero() {
            return Err(invalid(key, "timeouts must be greater than zero", None));
        }
        upstream_index.insert(name.clone(), upstreams.len());
        upstreams.push(Upstream {
            name: name.clone(),
            authority,
            scheme,
            base_path,
            connect_timeout,
            timeout,
            host,
            pool_idle_timeout: duration(
                &format!("{key}.pool_idle_timeout"),
                &u.pool_idle_timeout,
                Duration::from_secs(60),
            )?,
            pool_max_idle_per_host: u.pool_max_idle_per_host.unwrap_or(256),
        });
    }
    if upstreams.is_empty() {
        return Err(invalid(
            "upstreams",
            "at least one upstream is needed",
            Some("upstreams"),
        ));
    }

    let global_rl = match &raw.rate_limit {
        None => None,
        Some(r) => rate_limit("rate_limit", r)?,
    };
    let max_tracked_clients = raw
        .rate_limit
        .as_ref()
        .and_then(|r| r.max_tracked_clients)
        .unwrap_or(100_000);
    if max_tracked_clients == 0 {
        return Err(invalid(
            "rate_limit.max_tracked_clients",
            "must be at least 1",
            None,
        ));
    }

    let l = &raw.limits;
    let limits = Limits {
        max_body: size("limits.max_body", &l.max_body, 1 << 20)?,
        max_response_body: size("limits.max_response_body", &l.max_response_body, 16 << 20)?,
        header_read_timeout: duration(
            "limits.header_read_timeout",
            &l.header_read_timeout,
            Duration::from_secs(10),
        )?,
        body_read_timeout: duration(
            "limits.body_read_timeout",
            &l.body_read_timeout,
            Duration::from_secs(30),
        )?,
        max_header_bytes: size("limits.max_header_bytes", &l.max_header_bytes, 32 << 10)? as usize,
        max_json_depth: l.max_json_depth.unwrap_or(64),
        offload_threshold: size("limits.offload_threshold", &l.offload_threshold, 64 << 10)?
            as usize,
        max_connections: l.max_connections.unwrap_or(10_000),
        idle_timeout: duration(
            "limits.idle_timeout",
            &l.idle_timeout,
            Duration::from_secs(60),
        )?,
        send_timeout: duration(
            "limits.send_timeout",
            &l.send_timeout,
            Duration::from_secs(30),
        )?,
        max_connection_age: duration(
            "limits.max_connection_age",
            &l.max_connection_age,
            Duration::from_secs(3600),
        )?,
        connection_drain_timeout: duration(
            "limits.connection_drain_timeout",
            &l.connection_drain_timeout,
            Duration::from_secs(30),
        )?,
        max_buffered_per_connection: size(
            "limits.max_buffered_per_connection",
            &l.max_buffered_per_connection,
            32 << 20,
        )?,
        max_buffered_total: size(
            "limits.max_buffered_total",
            &l.max_buffered_total,
            512 << 20,
        )?,
    };
    if limits.header_read_timeout.is_zero()
        || limits.body_read_timeout.is_zero()
        || limits.idle_timeout.is_zero()
        || limits.send_timeout.is_zero()
        || limits.max_connection_age.is_zero()
        || limits.connection_drain_timeout.is_zero()
    {
        return Err(invalid(
            "limits",
            "timeouts must be greater than zero",
            None,
        ));
    }
    if limits.max_json_depth == 0 || limits.max_json_depth > 128 {
        return Err(invalid(
            "limits.max_json_depth",
            "must be between 1 and 128",
            None,
        ));
    }

    let keys = raw
        .keys
        .as_ref()
        .map(compile_keys)
        .transpose()?
        .map(|mut k| {
            for key in &mut k.keys {
                if let KeySource::File(p) = &key.source {
                    key.source = KeySource::File(resolve(base, &p.to_string_lossy()));
                }
                if let KeySource::Passphrase {
                    salt: SaltSource::File(p),
                    ..
                } = &mut key.source
                {
                    *p = resolve(base, &p.to_string_lossy());
                }
            }
            k
        });

    let audit = match &raw.audit {
        None => None,
        Some(a) => {
            let Some(keys) = &keys else {
                return Err(invalid(
                    "audit",
                    "needs a `keys` section: the log is signed with a sub-key of a ring key",
                    Some("audit"),
                ));
            };
            let key_id = a.key.clone().unwrap_or_else(|| keys.active.clone());
            if !keys.keys.iter().any(|k| k.id == key_id) {
                return Err(invalid(
                    "audit.key",
                    format!("key id {key_id:?} is not in keys.ring"),
                    Some(&key_id),
                ));
            }
            let target = match a.sink.as_str() {
                "stdout" | "-" => AuditTarget::Stdout,
                "" => {
                    return Err(invalid(
                        "audit.sink",
                        "must be `stdout` or a file path",
                        Some("sink"),
                    ))
                }
                p => AuditTarget::File(resolve(base, p)),
            };
            let on_failure = match a.on_failure.as_deref() {
                None | Some("refuse") => AuditFailureMode::Refuse,
                Some("serve") => AuditFailureMode::Serve,
                Some(o) => {
                    return Err(invalid(
                        "audit.on_failure",
                        format!("{o:?}: expected `refuse` or `serve`"),
                        Some(o),
                    ))
                }
            };
            Some(AuditSettings {
                target,
                key_id,
                on_failure,
            })
        }
    };

    let log = LogSettings {
        level: raw.log.level.clone().unwrap_or_else(|| "info".into()),
        json: match raw.log.format.as_deref() {
            None | Some("json") => true,
            Some("text") => false,
            Some(o) => {
                return Err(invalid(
                    "log.format",
                    format!("{o:?}: expected `json` or `text`"),
                    Some(o),
                ))
            }
        },
        access_log: raw.log.access_log.unwrap_or(true),
        trust_request_id: raw.log.trust_request_id.unwrap_or_default(),
    };
    if !["trace", "debug", "info", "warn", "error"].contains(&log.level.as_str()) {
        return Err(invalid(
            "log.level",
            format!(
                "{:?}: expected trace, debug, info, warn or error",
                log.level
            ),
            Some(&log.level),
        ));
    }

    let default_headers = compile_headers("headers", &raw.headers, None)?;

    let mut routes = Vec::new();
    let mut rule_warnings = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let key = format!("routes[{i}] ({})", r.name);
        if r.name.is_empty() || !names.insert(r.name.clone()) {
            return Err(invalid(
                key,
                "route names must be unique and non-empty",
                Some(&r.name),
            ));
        }
        let upstream = *upstream_index.get(&r.upstream).ok_or_else(|| {
            invalid(
                format!("{key}.upstream"),
                format!("{:?} is not defined under upstreams", r.upstream),
                Some(&r.upstream),
            )
        })?;
        let m = &r.matcher;
        let path = match (&m.path, &m.path_prefix) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    format!("{key}.match"),
                    "set either path or path_prefix, not both",
                    None,
                ))
            }
            (Some(p), None) => PathMatch::Exact(check_route_path(&format!("{key}.match.path"), p)?),
            (None, Some(p)) => {
                PathMatch::Prefix(check_route_path(&format!("{key}.match.path_prefix"), p)?)
            }
            (None, None) => PathMatch::Any,
        };
        let methods = m
            .methods
            .as_ref()
            .map(|ms| {
                ms.iter()
                    .map(|s| {
                        Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|_| {
                            invalid(
                                format!("{key}.match.methods"),
                                format!("{s:?} is not an HTTP method"),
                                Some(s),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let rate_limit = match &r.rate_limit {
            None => global_rl,
            Some(rl) if rl.enabled == Some(false) => None,
            Some(rl) => {
                let merged = raw::RawRateLimit {
                    requests_per_second: rl
                        .requests_per_second
                        .or(raw.rate_limit.as_ref().and_then(|g| g.requests_per_second)),
                    burst: rl.burst.or(raw.rate_limit.as_ref().and_then(|g| g.burst)),
                    enabled: None,
                    max_tracked_clients: None,
                };
                if rl.max_tracked_clients.is_some() {
                    return Err(invalid(
                        format!("{key}.rate_limit.max_tracked_clients"),
                        "can only be set on the global rate_limit",
                        None,
                    ));
                }
                rate_limit(&format!("{key}.rate_limit"), &merged)?
            }
        };
        let headers = compile_headers(&format!("{key}.headers"), &raw.headers, r.headers.as_ref())?;
        let max_body = size(&format!("{key}.max_body"), &r.max_body, limits.max_body)?;
        let encrypt = r
            .encrypt
            .iter()
            .enumerate()
            .map(|(j, f)| field_rule(&format!("{key}.encrypt[{j}]"), f))
            .collect::<Result<Vec<_>, _>>()?;
        let checked = r
            .encrypt
            .iter()
            .enumerate()
            .map(|(j, f)| shape::rule_checked(&format!("{key}.encrypt[{j}]"), f))
            .collect::<Result<Vec<_>, _>>()?;
        let (request_shape, warnings) = shape::compile_route(&key, r, &encrypt, &checked, base)?;
        rule_warnings.extend(warnings);
        shape::check_sealable(
            &key,
            r,
            &encrypt,
            &request_shape,
            max_body,
            &limits,
            keys.as_ref(),
        )?;
        let decrypt = match &r.decrypt {
            None => None,
            Some(raw::RawDecrypt::Keyword(k)) if k == "auto" => Some(DecryptSelection::Auto),
            Some(raw::RawDecrypt::Keyword(k)) => {
                return Err(invalid(
                    format!("{key}.decrypt"),
                    format!("{k:?}: expected `auto` or a list of JSONPaths"),
                    Some(k),
                ))
            }
            Some(raw::RawDecrypt::Rules(rules)) => Some(DecryptSelection::Paths(
                rules
                    .iter()
                    .enumerate()
                    .map(|(j, f)| {
                        let key = format!("{key}.decrypt[{j}]");
                        shape::no_look_alikes(&key, f)?;
                        field_rule(&key, f)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )),
        };
        if (!encrypt.is_empty() || decrypt.is_some()) && keys.is_none() {
            return Err(invalid(
                key,
                "has encrypt/decrypt rules but there is no `keys` section",
                Some(&r.name),
            ));
        }
        let on_decrypt_failure = match r.on_decrypt_failure.as_deref() {
            None | Some("error") => OnDecryptFailure::Error,
            Some("null") => OnDecryptFailure::Null,
            Some("keep") => OnDecryptFailure::Keep,
            Some(o) => {
                return Err(invalid(
                    format!("{key}.on_decrypt_failure"),
                    format!("{o:?}: expected error, null or keep"),
                    Some(o),
                ))
            }
        };
        let max_age = duration(&format!("{key}.max_age"), &r.max_age, Duration::ZERO)?;
        let max_age = (!max_age.is_zero()).then_some(max_age);
        routes.push(Route {
            name: r.name.clone(),
            host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
            path,
            methods,
            case_insensitive: m.case_insensitive.unwrap_or(false),
            upstream,
            rate_limit,
            own_rate_limit: r
                .rate_limit
                .as_ref()
                .is_some_and(|rl| rl.enabled != Some(false)),
            headers,
            max_body,
            seal: (!encrypt.is_empty()).then(|| SealSpec {
                rules: encrypt,
                shape: request_shape,
                named_contexts: Vec::new(),
                max_depth: limits.max_json_depth,
            }),
            open: decrypt.map(|selection| OpenSpec {
                selection,
                on_failure: on_decrypt_failure,
                max_age,
            }),
        });
    }
    if routes.is_empty() {
        return Err(invalid(
            "routes",
            "at least one route is needed",
            Some("routes"),
        ));
    }
    check_buffer_limits(&limits, &routes)?;
    let mut warnings = route_warnings(&routes);
    warnings.extend(shadowing::check(&routes, &raw.routes, &upstreams)?);
    warnings.extend(host_fallthrough_warnings(&routes));
    warnings.extend(rule_warnings);
    let admin_written =
        matches!(&raw.admin, Some(raw::RawAdmin::Settings(a)) if a.address.is_some());
    check_listeners(listen, redirect_http, admin, admin_written, &upstreams)?;

    Ok(Config {
        source: source.to_path_buf(),
        listen,
        tls,
        redirect_http,
        admin,
        admin_token_file,
        allowed_hosts,
        trusted_proxies,
        upstreams,
        rate_limit: GlobalRateLimit {
            default: global_rl,
            max_tracked_clients,
        },
        limits,
        shutdown_grace: duration(
            "shutdown.grace_period",
            &raw.shutdown.grace_period,
            Duration::from_secs(30),
        )?,
        keys,
        audit,
        log,
        warnings,
        routes: RouteTable {
            routes: with_named_contexts(routes),
        },
        default_headers,
    })
}

/// Gives every sealing route the list of contexts that any rule names.
fn with_named_contexts(mut routes: Vec<Route>) -> Vec<Route> {
    let mut named: Vec<String> = Vec::new();
    for r in &routes {
        let decrypt = r.open.as_ref().map_or(&[][..], OpenSpec::rules);
        for c in r
            .encrypt_rules()
            .iter()
            .chain(decrypt)
            .filter_map(|f| f.context.as_ref())
        {
            if !named.contains(c) {
                named.push(c.clone());
            }
        }
    }
    for seal in routes.iter_mut().filter_map(|r| r.seal.as_mut()) {
        seal.named_contexts = named.clone();
    }
    routes
}

/// An encrypting route limited to some methods lets the other methods on its
/// paths fall through to a later route, which forwards them in plaintext.
fn route_warnings(routes: &[Route]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let Some(methods) = &r.methods else { continue };
        if !r.transforms_request() {
            continue;
        }
        for later in &routes[i + 1..] {
            let host_overlaps = later.host.is_none() || later.host == r.host;
            let other_methods = later
                .methods
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| !methods.contains(m)));
            let covers = match (&later.path, &r.path) {
                (PathMatch::Any, _) => true,
                (PathMatch::Prefix(p), PathMatch::Prefix(q) | PathMatch::Exact(q)) => {
                    let p = p.trim_end_matches('/');
                    q.starts_with(p) && (q.len() == p.len() || q[p.len()..].starts_with('/'))
                }
                (PathMatch::Exact(p), PathMatch::Exact(q)) => p == q,
                _ => false,
            };
            if host_overlaps && other_methods && covers && !later.transforms_request() {
                let listed: Vec<&str> = methods.iter().map(Method::as_str).collect();
                out.push(format!(
                    "route {:?} encrypts only {} requests; other methods on its paths fall through to route {:?}, which forwards their bodies unencrypted",
                    r.name,
                    listed.join("/"),
                    later.name
                ));
                break;
            }
        }
    }
    out
}

/// Listeners that are upstreams, or share a socket, are refused at load.
fn check_listeners(
    listen: SocketAddr,
    redirect_http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    admin_written: bool,
    upstreams: &[Upstream],
) -> Result<(), Invalid> {
    let mut listeners = vec![addresses::Listener {
        key: "listen.address",
        address: listen,
        written: true,
    }];
    listeners.extend(redirect_http.map(|address| addresses::Listener {
        key: "redirect_http.address",
        address,
        written: true,
    }));
    listeners.extend(admin.map(|address| addresses::Listener {
        key: "admin.address",
        address,
        written: admin_written,
    }));
    match addresses::clash(&listeners, upstreams) {
        None => Ok(()),
        Some(c) if c.written => Err(invalid_at(
            c.listener,
            c.message,
            Needle::value("address", &c.address.to_string()),
        )),
        Some(c) => Err(invalid(
            c.listener,
            format!("{} (the default admin address)", c.message),
            None,
        )),
    }
}

/// Host-less requests can't skip a host-bound route (`RouteTable::select`),
/// but a request for the same path with any other Host still goes past it.
/// When a later route without a host takes those paths and seals nothing, a
/// backend that ignores Host (most single-site legacy services) stores what
/// the bound route would have sealed, in plaintext.
fn host_fallthrough_warnings(routes: &[Route]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let Some(host) = &r.host else { continue };
        if !r.transforms_request() {
            continue;
        }
        let behind = routes[i + 1..].iter().find(|later| {
            later.host.is_none()
                && !later.transforms_request()
                && path_covers(&later.path, &r.path)
                && later.methods.as_ref().is_none_or(|ms| {
                    r.methods
                        .as_ref()
                        .is_none_or(|rs| rs.iter().any(|m| ms.contains(m)))
                })
        });
        if let Some(later) = behind {
            out.push(format!(
                "route {:?} encrypts only for host {host:?}; its paths with any other Host fall through to route {:?}, which forwards their bodies unencrypted (bind {:?} to hosts, or give it the same encrypt rules, unless its backend routes by Host)",
                r.name, later.name, later.name
            ));
        }
    }
    out
}

/// True when every path `inner` matches is also matched by `outer`.
fn path_covers(outer: &PathMatch, inner: &PathMatch) -> bool {
    match (outer, inner) {
        (PathMatch::Any, _) => true,
        (PathMatch::Prefix(p), PathMatch::Prefix(q) | PathMatch::Exact(q)) => {
            let p = p.trim_end_matches('/');
            q.starts_with(p) && (q.len() == p.len() || q[p.len()..].starts_with('/'))
        }
        (PathMatch::Exact(p), PathMatch::Exact(q)) => p == q,
        _ => false,
    }
}

/// Every buffered body must fit the connection's budget, and one connection
/// the process's; otherwise some request could never be served.
fn check_buffer_limits(limits: &Limits, routes: &[Route]) -> Result<(), Invalid> {
    let largest_body = routes.iter().map(|r| r.max_body).max().unwrap_or(0);
    let need = largest_body.max(limits.max_response_body);
    if limits.max_buffered_per_connection < need {
        return Err(invalid(
            "limits.max_buffered_per_connection",
            format!("must be at least the largest max_body or max_response_body ({need} bytes)"),
            Some("max_buffered_per_connection"),
        ));
    }
    if limits.max_buffered_total < limits.max_buffered_per_connection {
        return Err(invalid(
            "limits.max_buffered_total",
            "must be at least limits.max_buffered_per_connection",
            Some("max_buffered_total"),
        ));
    }
    Ok(())
}

fn check_route_path(key: &str, p: &str) -> Result<String, Invalid> {
    if !p.starts_with('/') {
        return Err(invalid(key, format!("{p:?} must start with /"), Some(p)));
    }
    // Routes are matched against the canonical request path, so a route
    // written in a non-canonical spelling could never match.
    match crate::routes::canonical_path(p) {
        Ok(c) if c.path == p || c.path.trim_end_matches('/') == p.trim_end_matches('/') => {
            Ok(p.to_string())
        }
        _ => Err(invalid(
            key,
            format!("{p:?} is not in canonical form (no //, dot segments, %-escapes or ;params)"),
            Some(p),
        )),
    }
}

fn rate_limit(key: &str, r: &raw::RawRateLimit) -> Result<Option<RateLimitSettings>, Invalid> {
    if r.enabled == Some(false) {
        return Ok(None);
    }
    let rps = r
        .requests_per_second
        .ok_or_else(|| invalid(format!("{key}.requests_per_second"), "is required", None))?;
    let rps = NonZeroU32::new(rps).ok_or_else(|| {
        invalid(
            format!("{key}.requests_per_second"),
            "must be at least 1",
            None,
        )
    })?;
    let burst = NonZeroU32::new(r.burst.unwrap_or(rps.get()))
        .ok_or_else(|| invalid(format!("{key}.burst"), "must be at least 1", None))?;
    Ok(Some(RateLimitSettings {
        requests_per_second: rps,
        burst,
    }))
}

fn field_rule(key: &str, f: &raw::RawFieldRule) -> Result<FieldRule, Invalid> {
    let (path, context) = match f {
        raw::RawFieldRule::Path(p) => (p.as_str(), None),
        raw::RawFieldRule::Detailed(d) => (d.path.as_str(), d.context.clone()),
    };
    let compiled = FieldPath::parse(path).map_err(|e| {
        invalid(
            key,
            format!("invalid JSONPath {path:?}: {}", e.message),
            Some(path),
        )
    })?;
    if let Some(c) = &context {
        if c.is_empty() || c.len() > 255 {
            return Err(invalid(
                format!("{key}.context"),
                "must be 1 to 255 bytes",
                Some(c),
            ));
        }
    }
    Ok(FieldRule {
        path: compiled,
        context,
    })
}

fn compile_keys(k: &raw::RawKeys) -> Result<KeyringSpec, Invalid> {
    let iterations = k
        .pbkdf2_iterations
        .unwrap_or(crate::crypto::DEFAULT_PBKDF2_ITERATIONS);
    if iterations < crate::crypto::MIN_PBKDF2_ITERATIONS {
        return Err(invalid(
            "keys.pbkdf2_iterations",
            format!("{iterations} is below the minimum of {} (OWASP advises 600000 for PBKDF2-HMAC-SHA256)", crate::crypto::MIN_PBKDF2_ITERATIONS),
            Some(&iterations.to_string()),
        ));
    }
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for (i, key) in k.ring.iter().enumerate() {
        let kp = format!("keys.ring[{i}] ({})", key.id);
        if !seen.insert(key.id.clone()) {
            return Err(invalid(kp, "duplicate key id", Some(&key.id)));
        }
        if key.id.is_empty()
            || key.id.len() > 64
            || !key
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                kp,
                "key ids are 1-64 characters of A-Z a-z 0-9 - _",
                Some(&key.id),
            ));
        }
        let source = match (&key.passphrase_env, &key.file) {
            (Some(env), None) => {
                let salt = match (&key.salt_env, &key.salt_file) {
                    (Some(e), None) => SaltSource::Env(e.clone()),
                    (None, Some(f)) => SaltSource::File(PathBuf::from(f)),
                    _ => {
                        return Err(invalid(
                            kp,
                            "a passphrase key needs exactly one of salt_env or salt_file",
                            Some(&key.id),
                        ))
                    }
                };
                KeySource::Passphrase {
                    env: env.clone(),
                    salt,
                }
            }
            (None, Some(f)) => {
                if key.salt_env.is_some() || key.salt_file.is_some() {
                    return Err(invalid(
                        kp,
                        "salt_env/salt_file only go with passphrase_env",
                        Some(&key.id),
                    ));
                }
                KeySource::File(PathBuf::from(f))
            }
            _ => return Err(invalid(
                kp,
                "set exactly one of passphrase_env or file (key material never goes in the YAML)",
                Some(&key.id),
            )),
        };
        keys.push(KeySpec {
            id: key.id.clone(),
            source,
        });
    }
    if keys.is_empty() {
        return Err(invalid("keys.ring", "needs at least one key", Some("ring")));
    }
    if !seen.contains(&k.active) {
        return Err(invalid(
            "keys.active",
            format!("{:?} is not in keys.ring", k.active),
            Some(&k.active),
        ));
    }
    Ok(KeyringSpec {
        active: k.active.clone(),
        keys,
        pbkdf2_iterations: iterations,
    })
}

fn compile_headers(
    key: &str,
    global: &raw::RawHeaders,
    route: Option<&raw::RawHeaders>,
) -> Result<SecurityHeaders, Invalid> {
    let pick = |name: &str, h: &raw::RawHeaders| -> Option<raw::RawHeaderValue> {
        match name {
            "hsts" => h.hsts.clone(),
            "csp" => h.csp.clone(),
            "x_content_type_options" => h.x_content_type_options.clone(),
            "x_frame_options" => h.x_frame_options.clone(),
            "referrer_policy" => h.referrer_policy.clone(),
            "x_xss_protection" => h.x_xss_protection.clone(),
            "permissions_policy" => h.permissions_policy.clone(),
            "cross_origin_opener_policy" => h.cross_origin_opener_policy.clone(),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for (cfg_name, http_name) in HEADER_NAMES {
        let chosen = route
            .and_then(|r| pick(cfg_name, r))
            .or_else(|| pick(cfg_name, global))
            .or_else(|| {
                DEFAULT_HEADERS
                    .iter()
                    .find(|(n, _)| n == cfg_name)
                    .map(|(_, v)| raw::RawHeaderValue::Value((*v).to_string()))
            });
        let (value, policy) = match chosen {
            None | Some(raw::RawHeaderValue::Off(false)) => continue,
            Some(raw::RawHeaderValue::Off(true)) => {
                return Err(invalid(
                    format!("{key}.{cfg_name}"),
                    "`true` is not a value: give the header value, or `false` to not send it",
                    None,
                ))
            }
            Some(raw::RawHeaderValue::Value(v)) => (v, UpstreamPolicy::Overwrite),
            Some(raw::RawHeaderValue::Detailed(d)) => {
                let policy = match d.upstream.as_deref() {
                    None | Some("overwrite") => UpstreamPolicy::Overwrite,
                    Some("keep") => UpstreamPolicy::Keep,
                    Some(o) => {
                        return Err(invalid(
                            format!("{key}.{cfg_name}.upstream"),
                            format!("{o:?}: expected keep or overwrite"),
                            Some(o),
                        ))
                    }
                };
                (d.value, policy)
            }
        };
        let value = HeaderValue::from_str(&value).map_err(|_| {
            invalid(
                format!("{key}.{cfg_name}"),
                "is not a valid header value",
                Some(&value),
            )
        })?;
        out.push(SecurityHeader {
            name: HeaderName::from_static(http_name),
            value,
            policy,
        });
    }
    Ok(SecurityHeaders { headers: out })
}

#[cfg(test)]
mod tests;
