//! The YAML file as written by ops: plain serde structs, unknown keys refused.
//! Nothing here is trusted; `super::compile` validates it into `Config`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::audit::AuditFailureMode;
use crate::crypto::index::Normalize;
use crate::headers::{SecurityHeader, UpstreamPolicy};
use crate::logging::{LogFormat, LogLevel, LogPaths, TrustRequestId};
use crate::transform::{JsonReferences, LookAlikeMode, OnDecryptFailure};

// Doc comments on these structs are the descriptions of the JSON Schema
// (`fieldseal config-schema`) that editors show: write them for users.

/// fieldseal configuration. Durations are written `500ms`, `30s`, `2m`;
/// sizes `4096`, `512KiB`, `1MiB`. Relative paths are resolved against the
/// config file's folder. Secrets never go in this file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "fieldseal configuration")]
pub struct RawConfig {
    /// The HTTPS listener.
    pub listen: RawListen,
    /// Optional plain-HTTP listener that only answers 301 to https.
    #[serde(default)]
    pub redirect_http: Option<RawAddress>,
    /// The admin listener: /healthz, /readyz, /metrics, POST /reload. Default 127.0.0.1:9901.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// Host / :authority values (port ignored) that are served; others get 421. Default: any.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// Peers (IPs or CIDR networks) whose X-Forwarded-For is believed. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The backends, by name; routes refer to them.
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Security headers on every answer; routes can override them.
    #[serde(default)]
    pub headers: RawHeaders,
    /// Per-client rate limit shared by routes without their own.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    /// The Redis that `rate_limit.store: redis` keeps buckets in, shared by every replica.
    #[serde(default)]
    pub redis: Option<RawRedis>,
    /// Size and time limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Graceful shutdown on SIGTERM/SIGINT.
    #[serde(default)]
    pub shutdown: RawShutdown,
    /// How the process serves: its runtimes and worker threads.
    #[serde(default)]
    pub server: RawServer,
    /// The keyring: where keys come from (never the keys themselves).
    #[serde(default)]
    pub keys: Option<RawKeys>,
    /// Tamper-evident audit log of requests that encrypted or decrypted fields.
    #[serde(default)]
    pub audit: Option<RawAudit>,
    /// Who the caller is: JWT providers whose bearer tokens routes with
    /// `auth: required | optional` verify.
    #[serde(default)]
    pub identity: Option<RawIdentity>,
    /// Tenant and subject data keys, for routes with `key_scope: tenant | subject`.
    #[serde(default)]
    pub key_store: Option<RawKeyStore>,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// Routes, matched in this order; the first match wins.
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// `ip:port`, e.g. `0.0.0.0:8443`. Changing it needs a restart.
    pub address: String,
    /// Certificates; reloaded on SIGHUP.
    pub tls: RawTls,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Extra certificates chosen by SNI; `cert`/`key` above is the default.
    #[serde(default)]
    pub sni: Vec<RawSniCert>,
    /// From accept to the end of the TLS handshake: a client that sends
    /// nothing, or stops inside its hello, is dropped (plain HTTP sent to
    /// the port gets a 400). Default 10s.
    #[serde(default)]
    pub handshake_timeout: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSniCert {
    /// Server names served with this pair; `*.example.com` for a wildcard.
    pub names: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAddress {
    /// `ip:port`, e.g. `127.0.0.1:9901`.
    pub address: String,
}

/// `admin:` is `off` / `false` (no admin listener) or its settings.
#[derive(Debug)]
pub enum RawAdmin {
    Switch(bool),
    Keyword(Word<Off>),
    Settings(RawAdminSettings),
}

/// The word `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Off {
    Off,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdminSettings {
    /// `ip:port`. Default 127.0.0.1:9901; 0.0.0.0:9901 in a container.
    #[serde(default)]
    pub address: Option<String>,
    /// A file holding the bearer token that protects introspection and reload.
    #[serde(default)]
    pub token_file: Option<String>,
}

/// The schema of what the hand-written `Deserialize` below accepts.
impl JsonSchema for RawAdmin {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RawAdmin".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let settings = g.subschema_for::<RawAdminSettings>();
        schemars::json_schema!({
            "description": "The admin listener's settings, or `off` / `false` for none.",
            "anyOf": [
                { "enum": ["off", false] },
                settings
            ]
        })
    }
}

// By hand rather than `untagged`, so a typo inside the mapping is reported
// with its own message and position.
impl<'de> Deserialize<'de> for RawAdmin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawAdmin;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`off`, or a mapping with `address` and `token_file`")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawAdmin, E> {
                Ok(RawAdmin::Switch(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawAdmin, E> {
                Ok(RawAdmin::Keyword(Word::parse(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<RawAdmin, A::Error> {
                RawAdminSettings::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(RawAdmin::Settings)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `http://host:port` or `https://host:port`, optionally with a path
    /// prefixed to every request. One server; `servers` lists several.
    #[serde(default)]
    pub url: Option<String>,
    /// Several servers of one service (same scheme and path), balanced.
    #[serde(default)]
    pub servers: Option<Vec<String>>,
    /// `round_robin` (default) or `least_requests`.
    #[serde(default)]
    pub balance: Option<String>,
    /// Passive (and optionally active) health of each server.
    #[serde(default)]
    pub health: Option<RawHealth>,
    /// Trust and client certificate for `https://` servers.
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
    /// Connect failure or timeout: 502. Default 2s.
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// No answer in time: 504. Default 30s.
    #[serde(default)]
    pub timeout: Option<String>,
    /// `preserve` (default): forward the client's Host; `upstream`: the URL's authority;
    /// anything else: that literal host.
    #[serde(default)]
    pub host: Option<String>,
    /// Idle pooled connections are closed after this. Default 60s.
    #[serde(default)]
    pub pool_idle_timeout: Option<String>,
    /// Default 256, at most `max_connections`.
    #[serde(default)]
    pub pool_max_idle_per_host: Option<usize>,
    /// Open connections to each server of the upstream, idle ones included;
    /// past it a request waits for one to free up. Default 256.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// How long a request waits for a connection to a server at
    /// `max_connections` before a 503 (`upstream_busy`). Default 1s, less than `timeout`.
    #[serde(default)]
    pub queue_timeout: Option<String>,
    /// Requests that may wait for a connection to one server; more get a
    /// 503 at once. Default `max_connections`.
    #[serde(default)]
    pub max_queued: Option<usize>,
    /// `report` (default): /readyz shows the servers' state but does not
    /// fail for it; `require`: /readyz answers 503 while no server is up.
    #[serde(default)]
    pub readiness: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Failures in a row that take a server out of rotation. Default 3.
    #[serde(default)]
    pub fails: Option<u32>,
    /// How long a failing server is skipped. Default 10s.
    #[serde(default)]
    pub backoff: Option<String>,
    /// Active checks: `GET` this path on every server each `interval`.
    #[serde(default)]
    pub path: Option<String>,
    /// Default 5s; only with `path`.
    #[serde(default)]
    pub interval: Option<String>,
    /// How long one check may take (connect, answer head, body) before it
    /// counts as failed. Default 2s, or `interval` if that is shorter; only with `path`.
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM CA bundle the servers' certificates must chain to (instead of the system roots).
    #[serde(default)]
    pub ca: Option<String>,
    /// PEM client certificate chain for mutual TLS (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<String>,
}

/// A header value (overwrites the upstream's), `false` (not sent), or
/// `{ value, upstream: keep|overwrite }`.
#[derive(Debug, Deserialize, Clone, JsonSchema)]
#[serde(untagged)]
pub enum RawHeaderValue {
    Off(bool),
    Value(String),
    Detailed(RawHeaderDetailed),
}

#[derive(Debug, Deserialize, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderDetailed {
    pub value: String,
    /// `overwrite` (default) the upstream's header, or `keep` it when it sent one.
    #[serde(default)]
    pub upstream: Option<Word<UpstreamPolicy>>,
}

/// Security headers by their config key (`hsts`, `csp`, ...: see
/// `headers::SecurityHeader`); unknown keys are refused, a null value is
/// as good as none.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(transparent)]
pub struct RawHeaders(BTreeMap<SecurityHeader, Option<RawHeaderValue>>);

impl RawHeaders {
    pub fn get(&self, h: SecurityHeader) -> Option<&RawHeaderValue> {
        self.0.get(&h).and_then(Option::as_ref)
    }
}

/// Every security header, described as the header enumeration describes it.
impl JsonSchema for RawHeaders {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RawHeaders".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let value = g.subschema_for::<Option<RawHeaderValue>>();
        let properties: serde_json::Map<String, serde_json::Value> = SecurityHeader::ALL
            .iter()
            .map(|h| {
                let mut v = value.clone().to_value();
                if let Some(o) = v.as_object_mut() {
                    o.insert("description".into(), h.description().into());
                }
                (h.config_key().to_string(), v)
            })
            .collect();
        schemars::json_schema!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false
        })
    }
}

#[derive(Debug, Deserialize, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Sustained rate per client address (IPv6 grouped by /64).
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    /// Requests allowed at once. Default: requests_per_second.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Per-route only: `false` turns the limit off for the route.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Global only: how many client keys are tracked before new ones share one bucket.
    #[serde(default)]
    pub max_tracked_clients: Option<usize>,
    /// `local` (default): this process's memory. `redis`: shared by every replica using the same `redis`, with a local stage in front.
    #[serde(default)]
    pub store: Option<Word<crate::ratelimit::LimitStore>>,
    /// With `store: redis`, required: when Redis is down or slower than `redis.timeout`, `allow` (only the local stage limits) or `deny` (503).
    #[serde(default)]
    pub on_store_error: Option<Word<crate::ratelimit::OnStoreError>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// Environment variable holding the URL, `redis://host:6379/0` or `rediss://host:6380/0` (TLS); it may hold the password. One of url_env or url.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The URL itself, when it holds no password. One of url_env or url.
    #[serde(default)]
    pub url: Option<String>,
    /// File holding the password (AUTH); takes precedence over one in the URL.
    #[serde(default)]
    pub password_file: Option<String>,
    /// Time budget of one rate-limit call; past it the call counts as failed and `on_store_error` decides. Default 5ms.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Budget to connect, and of each probe while Redis is down. Default 1s.
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Prefix of every key written, so deployments can share one Redis. Default `fieldseal:rl:`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// `rediss://` only: PEM CA bundle that verifies the server, instead of the system roots.
    #[serde(default)]
    pub ca: Option<String>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Request bodies; larger: 413, nothing forwarded. Default 1MiB.
    #[serde(default)]
    pub max_body: Option<String>,
    /// Upstream answers buffered for decryption; larger: 502. Default 16MiB.
    #[serde(default)]
    pub max_response_body: Option<String>,
    /// From the TLS handshake to the first complete request head (protocol
    /// detection and the HTTP/2 preface included), and each HTTP/1.1 head.
    /// Default 10s.
    #[serde(default)]
    pub header_read_timeout: Option<String>,
    /// A buffered request body must arrive within this: 408. Default 30s.
    #[serde(default)]
    pub body_read_timeout: Option<String>,
    /// Request header section; larger: 431. Default 32KiB.
    #[serde(default)]
    pub max_header_bytes: Option<String>,
    /// Deeper JSON on a transforming route: 400. Default 64, at most 128.
    #[serde(default)]
    pub max_json_depth: Option<usize>,
    /// Bodies above this are transformed on the blocking pool. Default 64KiB.
    #[serde(default)]
    pub offload_threshold: Option<String>,
    /// Past this, new connections are closed at accept. Default 10000.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Connections one client address (IPv4 address, IPv6 /64) may hold at
    /// once; past this, its new connections are closed at accept. Peers in
    /// trusted_proxies are exempt. Default a quarter of max_connections, at
    /// most 256.
    #[serde(default)]
    pub max_connections_per_client: Option<usize>,
    /// A connection with no request in flight this long is closed (HTTP/1.1
    /// and HTTP/2). Default 60s.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// An answer the client takes no bytes of for this long (it stopped
    /// reading, or its HTTP/2 window stays shut) closes the connection and
    /// frees the upstream connection. Default 30s.
    #[serde(default)]
    pub send_timeout: Option<String>,
    /// Connections older than this are closed gracefully (Connection:
    /// close, GOAWAY). Default 1h.
    #[serde(default)]
    pub max_connection_age: Option<String>,
    /// How long a graceful close may take before the connection is
    /// dropped, whatever is in flight. Default 30s.
    #[serde(default)]
    pub connection_drain_timeout: Option<String>,
    /// Buffered bodies (requests and answers) one connection may hold;
    /// more: 503. At least max_body and max_response_body. Default 32MiB.
    #[serde(default)]
    pub max_buffered_per_connection: Option<String>,
    /// Buffered bodies all connections may hold together; more: 503. At
    /// least max_buffered_per_connection. Default 512MiB.
    #[serde(default)]
    pub max_buffered_total: Option<String>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// `per_core` (default): one single-threaded runtime per worker, each
    /// with its own listening socket (SO_REUSEPORT) and its own upstream
    /// connections, so a request and its upstream connection stay on one
    /// thread. `shared`: one multi-threaded runtime with work stealing (a
    /// slow request can't hold up others of its thread). Needs a restart to
    /// change.
    #[serde(default)]
    pub runtime: Option<Word<crate::config::RuntimeMode>>,
    /// Worker threads (per_core: runtimes). Default: the environment's
    /// TOKIO_WORKER_THREADS, else the number of CPUs. Needs a restart to
    /// change.
    #[serde(default)]
    pub workers: Option<usize>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    /// How long requests in flight may finish after SIGTERM/SIGINT. Default 30s.
    #[serde(default)]
    pub grace_period: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// The id of the ring key that encrypts; the others only decrypt.
    pub active: String,
    /// Every key that may have sealed stored data.
    pub ring: Vec<RawKey>,
    /// PBKDF2-HMAC-SHA256 rounds for passphrase keys. Default 600000, at least 100000.
    #[serde(default)]
    pub pbkdf2_iterations: Option<u32>,
}

/// One key: a key `file`, or a passphrase from `passphrase_env` with a salt.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// 1-64 characters of A-Z a-z 0-9 - _; written into every envelope.
    pub id: String,
    /// Environment variable holding the passphrase.
    #[serde(default)]
    pub passphrase_env: Option<String>,
    /// Environment variable holding the salt (at least 16 bytes).
    #[serde(default)]
    pub salt_env: Option<String>,
    /// File holding the salt (at least 16 bytes).
    #[serde(default)]
    pub salt_file: Option<String>,
    /// Key file from `fieldseal keygen`: 32 random bytes in base64, mode 0600.
    #[serde(default)]
    pub file: Option<String>,
    /// A key in a PKCS#11 token (an HSM): fieldseal never sees its bytes.
    #[serde(default)]
    pub pkcs11: Option<RawPkcs11>,
}

/// Where a PKCS#11 ring key lives and how fieldseal logs in to its token.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPkcs11 {
    /// Path of the PKCS#11 module (shared library), e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: String,
    /// The token's label.
    pub token: String,
    /// The key's `CKA_LABEL` (`fieldseal keys generate` creates it).
    pub label: String,
    /// Environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// File holding the user PIN (mode 0600 or stricter).
    #[serde(default)]
    pub pin_file: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `stdout` or a file path.
    pub sink: String,
    /// Key id whose audit sub-key signs the log; defaults to the active key.
    #[serde(default)]
    pub key: Option<String>,
    /// `refuse` (503 when the log can't be written) or `serve`.
    #[serde(default)]
    pub on_failure: Option<Word<AuditFailureMode>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// trace, debug, info (default), warn or error.
    #[serde(default)]
    pub level: Option<Word<LogLevel>>,
    /// json (default) or text; logs go to stderr.
    #[serde(default)]
    pub format: Option<Word<LogFormat>>,
    /// One line per request (default true).
    #[serde(default)]
    pub access_log: Option<bool>,
    /// What the access log says of the path: pattern (default: the route's
    /// match pattern and a short keyed hash of the path) or full (the
    /// canonical path, a client-supplied string).
    #[serde(default)]
    pub paths: Option<Word<LogPaths>>,
    #[serde(default)]
    pub trust_request_id: Option<TrustRequestId>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique; used in logs, metrics and by the offline tools.
    pub name: String,
    /// Which requests the route takes.
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// Name of an entry of `upstreams`.
    pub upstream: String,
    /// The route's own per-client limit, or `{ enabled: false }`.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    /// Overrides of the global security headers.
    #[serde(default)]
    pub headers: Option<RawHeaders>,
    /// Overrides limits.max_body.
    #[serde(default)]
    pub max_body: Option<String>,
    /// JSONPaths of request fields sealed before the backend sees them.
    #[serde(default)]
    pub encrypt: Vec<RawFieldRule>,
    /// JSONPaths of envelopes opened in answers, or `auto` for every envelope.
    #[serde(default)]
    pub decrypt: Option<RawDecrypt>,
    /// A value that can't be decrypted: `error` (502, default), `null` or `keep`.
    // Written unquoted, `null` (or `~`) is YAML's null value, not a string:
    // it must still mean the `null` mode, never fall back to the default.
    #[serde(default, deserialize_with = "null_is_a_mode")]
    pub on_decrypt_failure: Option<Word<OnDecryptFailure>>,
    /// Refuse envelopes older than this on decrypt (0: no limit).
    #[serde(default)]
    pub max_age: Option<String>,
    /// Names of later encrypting or decrypting routes whose requests this
    /// route is meant to take. An earlier route that takes such requests
    /// refuses the config unless it lists the later route here; then it is
    /// a warning.
    #[serde(default)]
    pub shadows_ok: Vec<String>,
    /// Values no encrypt rule selects but whose member-name path ends with
    /// a rule's names (other shapes and spellings backends bind to the
    /// field, e.g. `{"user": {"ssn": …}}`, `{"card.number": …}`): `refuse`
    /// (400, default) or `seal`.
    #[serde(default)]
    pub look_alikes: Option<Word<LookAlikeMode>>,
    /// A JSON Schema request bodies must satisfy (400 otherwise): a JSON
    /// file, or the schema inline. Needs encrypt rules on the route.
    #[serde(default)]
    pub request_schema: Option<RawSchema>,
    /// Json.NET / System.Text.Json reference metadata (`$ref`, `$values`)
    /// in request bodies, which binds a field to data written under other
    /// names: `refuse` (400, default) or `allow`. Needs encrypt rules.
    #[serde(default)]
    pub json_references: Option<Word<JsonReferences>>,
    /// Bearer token: `none` (default, not looked at), `optional` (verified
    /// when sent) or `required` (401 without a valid one, nothing forwarded).
    #[serde(default)]
    pub auth: Option<Word<crate::identity::AuthMode>>,
    /// Which identity sources a route with `auth` accepts: `jwt`, `header`,
    /// `mtls`. Default: the one configured; needed when `identity` has more
    /// than one. A request with credentials of two accepted sources must
    /// name the same subject (and tenant) in both, else 401.
    #[serde(default)]
    pub auth_sources: Option<Vec<Word<crate::identity::AuthSource>>>,
    /// Whose key seals this route's fields: `deployment` (default: the ring's
    /// active key, `fs1`), `tenant` or `subject` (a data key per tenant or
    /// subject of the verified token, `fs2`; needs `auth: required` and `key_store`).
    #[serde(default)]
    pub key_scope: Option<Word<crate::routes::KeyScope>>,
    /// Whose key computes this route's blind indexes (JSON `index:`, query
    /// and form indexes, indexed `path_params`): by default the route's
    /// `key_scope` on a deployment or tenant route; a subject route must
    /// choose `subject` (finds only that subject's own records) or
    /// `deployment` (finds any record; equal values match across subjects).
    #[serde(default)]
    pub index_scope: Option<Word<crate::routes::KeyScope>>,
    /// An answer's envelope sealed for another tenant or subject: `error`
    /// (403, default), `null` or `keep`.
    #[serde(default, deserialize_with = "null_is_a_mode")]
    pub on_foreign_subject: Option<Word<OnDecryptFailure>>,
    /// An answer's envelope of an erased subject: `error` (410, default),
    /// `null`, `keep` or `marker` (the `erased_marker` string).
    #[serde(default, deserialize_with = "null_is_erased_null")]
    pub on_erased: Option<Word<crate::transform::OnErased>>,
    /// What `on_erased: marker` writes. Default `[erased]`.
    #[serde(default)]
    pub erased_marker: Option<String>,
    /// A write for an erased subject: `refuse` (410, default) or `new_key`
    /// (a fresh key; the old data stays unreadable).
    #[serde(default)]
    pub on_erased_write: Option<Word<crate::routes::OnErasedWrite>>,
    /// Roles whose holders read every subject's envelopes on this route in
    /// plaintext (support staff, say): each a claim of the verified token
    /// and the values that grant it. Every such read is audited with the
    /// reader's and the data subject's references. Writes stay sealed
    /// under the writer's own key. Needs `key_scope: tenant | subject`,
    /// decrypt rules and an `audit` section.
    #[serde(default)]
    pub read_any_subject: Vec<RawRoleRule>,
    /// Query parameters by name: `seal` (the value is sent as an envelope)
    /// or `refuse` (400). A name covers every spelling a backend binds to
    /// it (case, percent escapes, `user[name]`, `user.name`, `name[]`).
    /// On a route with encrypt rules, a parameter spelling an encrypt
    /// rule's field that is not listed here is refused.
    #[serde(default)]
    pub query: Option<BTreeMap<String, RawParam>>,
    /// Blind indexes written beside request fields before they are sealed,
    /// so the backend can still find a record by the field's value.
    #[serde(default)]
    pub index: Vec<RawIndexRule>,
    /// `application/x-www-form-urlencoded` request bodies: fields sealed or
    /// written as their blind index. With this section the route accepts
    /// such forms (otherwise 415); `multipart/form-data` is always refused
    /// (415) on a route with rules.
    #[serde(default)]
    pub form: Option<RawForm>,
    /// For a `match.path` template (`/api/users/by-email/{email}`): what each
    /// captured segment becomes, `{ index: email_idx }` (the segment is
    /// replaced by the blind index of its decoded value) or `refuse` (400).
    /// Parameters not listed are forwarded as they are.
    #[serde(default)]
    pub path_params: Option<BTreeMap<String, RawPathParam>>,
}

/// `refuse`, or `{ index: name }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawPathParam {
    Keyword(Word<Refuse>),
    Index(RawParamIndex),
}

/// The word `refuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Refuse {
    Refuse,
}

/// `{ encrypt: [ssn], index: [ { field: email, into: email_idx } ] }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawForm {
    /// Field names whose values are sealed (context: the name). A name
    /// covers every spelling a backend binds to it (`SSN`, `user[ssn]`).
    #[serde(default)]
    pub encrypt: Vec<String>,
    /// Fields written as a blind index: a field also listed in `encrypt` is
    /// sealed and its index added after it (`ssn=<envelope>&ssn_idx=<index>`);
    /// otherwise the field is replaced by its index (a search form).
    #[serde(default)]
    pub index: Vec<RawFormIndex>,
}

/// `{ field: email, into: email_idx }`, with the `index:` rule keys.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFormIndex {
    /// The form field's name.
    pub field: String,
    /// The index's name: the same index as an `index:` rule writing it.
    pub into: String,
    /// As in `index:` rules; must agree with any other definition of
    /// `into`. With none of normalize, bits and key, the entry uses the
    /// index as an `index:` rule defines it (else no normalization, 64 bits).
    #[serde(default)]
    pub normalize: Option<Vec<Word<Normalize>>>,
    /// As in `index:` rules. Default 64.
    #[serde(default)]
    pub bits: Option<u16>,
    /// As in `index:` rules.
    #[serde(default)]
    pub key: Option<String>,
}

/// `{ field: "$.email", into: "$.email_idx", normalize: [trim, lowercase], bits: 64 }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIndexRule {
    /// The field indexed: a JSONPath ending with a member name, without `..`.
    pub field: String,
    /// Where the index goes: a member beside the field (`$.email_idx`). Its
    /// name names the index everywhere (`query: {email: {index: email_idx}}`)
    /// and is part of the index key's derivation.
    pub into: String,
    /// Applied in this fixed order whatever the order written: trim,
    /// lowercase (Unicode full lowercase), nfc, digits (ASCII 0-9 kept).
    #[serde(default)]
    pub normalize: Vec<Word<Normalize>>,
    /// Output length in bits: 32 to 256, a multiple of 8. Default 64.
    #[serde(default)]
    pub bits: Option<u16>,
    /// The ring key the index key is derived from. Default: the active key
    /// (then making another key active changes every index: name one here
    /// to rotate encryption keys without re-indexing).
    #[serde(default)]
    pub key: Option<String>,
    /// Remove the index member (at any depth, any spelling) from this
    /// route's answers before the client sees them. Needs decrypt rules on
    /// the route (answers are read only there). Default false.
    #[serde(default)]
    pub drop_in_response: Option<bool>,
}

/// What a query parameter becomes: `seal` or `refuse`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawParam {
    Keyword(Word<ParamWord>),
    /// `{ index: email_idx }`: the parameter reaches the backend as the
    /// named index (defined by an `index:` rule of any route) of its value.
    Index(RawParamIndex),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParamIndex {
    /// The name of an index defined by an `index:` rule.
    pub index: String,
}

/// The words of a query parameter's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamWord {
    /// Sealed into an envelope bound to the parameter's name.
    Seal,
    /// The request is refused (400).
    Refuse,
}

/// `key_store`: where tenant and subject data keys are kept (wrapped).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKeyStore {
    /// The embedded store: a SQLite file (created mode 0600). One host.
    #[serde(default)]
    pub sqlite: Option<String>,
    /// A fleet's store: the environment variable holding the PostgreSQL URL
    /// (`postgres://user:password@host:5432/db?sslmode=require`).
    #[serde(default)]
    pub postgres_url_env: Option<String>,
    /// A file holding the PostgreSQL URL (a mounted secret).
    #[serde(default)]
    pub postgres_url_file: Option<String>,
    /// The PostgreSQL URL written here; refused if it holds a password.
    #[serde(default)]
    pub postgres_url: Option<String>,
    /// PostgreSQL: CA bundle (PEM) the server's certificate must chain to;
    /// else the system's roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// PostgreSQL: most connections per replica. Default 8, at most 64.
    #[serde(default)]
    pub pool_max: Option<usize>,
    /// PostgreSQL: budget to get a connection. Default 2s, at most 10s.
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// PostgreSQL: budget of one store operation. Default 2s, at most 10s.
    #[serde(default)]
    pub statement_timeout: Option<String>,
    /// How long an unwrapped key stays cached (and so the bound for an
    /// erasure through another replica to take effect here). Default 60s.
    #[serde(default)]
    pub cache_ttl: Option<String>,
    /// Most references with cached keys. Default 10000.
    #[serde(default)]
    pub cache_max: Option<usize>,
}

/// `identity`: JWT providers.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// The providers; a token is verified by the one whose `issuer` it names.
    #[serde(default)]
    pub jwt: Vec<RawJwtProvider>,
    /// A header an authenticating proxy in front names the caller in,
    /// believed only from `trusted_proxies` peers (removed from everyone
    /// else's requests on every route).
    #[serde(default)]
    pub header: Option<RawHeaderIdentity>,
    /// TLS client certificates: the listener asks for one, verifies it
    /// against `ca`, and routes whose `auth_sources` name `mtls` take the
    /// caller from it.
    #[serde(default)]
    pub mtls: Option<RawMtlsIdentity>,
    /// Tolerance for `exp`, `nbf` and `iat` against this host's clock. Default 60s, at most 5m.
    #[serde(default)]
    pub clock_skew: Option<String>,
}

/// `identity.mtls`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMtlsIdentity {
    /// PEM file of the CA certificates a client certificate's chain must
    /// end in (only these: not the system's roots). Reloaded on SIGHUP.
    pub ca: String,
    /// PEM CRL files. When given, the client certificate's issuer must have
    /// one of them and a revoked certificate fails the handshake. Reloaded on SIGHUP.
    #[serde(default)]
    pub crls: Vec<String>,
    /// Which value names the subject: `san_uri`, `san_email`, `san_dns`
    /// (subject alternative names) or `cn` (the subject DN's common name).
    /// Exactly one such value must be present, else 401.
    pub subject: Word<crate::mtls::CertSubject>,
    /// Which value names the tenant, if any: `ou` or `o` of the subject DN
    /// (exactly one, else 401).
    #[serde(default)]
    pub tenant: Option<Word<crate::mtls::CertTenant>>,
    /// `true`: the handshake refuses a client without a certificate (on
    /// every route). Default `false`: a certificate is asked for but
    /// optional, and routes decide.
    #[serde(default)]
    pub required: bool,
}

/// `identity.header`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderIdentity {
    /// The header holding the subject, e.g. `X-Authenticated-User`.
    pub name: String,
    /// The header holding the tenant (then required with the subject).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// One JWT issuer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwtProvider {
    /// Unique name, for logs.
    pub name: String,
    /// The `iss` claim tokens must carry, exactly.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted: RS256, RS384, RS512, PS256, PS384,
    /// PS512, ES256, ES384, EdDSA; HS256/384/512 only with `hmac_secret_file`.
    /// `none` is never accepted.
    pub algorithms: Vec<String>,
    /// Verification keys from a JWKS file (read at load and on reload).
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Verification keys from a JWKS URL (http or https): fetched when first
    /// needed, refetched on an unknown `kid` at most once per
    /// `jwks_min_refresh`; the last good set is kept when a fetch fails.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// For HS* algorithms only: a file (mode 0600) holding the shared secret, at least 32 bytes.
    #[serde(default)]
    pub hmac_secret_file: Option<String>,
    /// The claim that names the subject. Default `sub`.
    #[serde(default)]
    pub subject_claim: Option<String>,
    /// The claim that names the tenant (required in tokens when set).
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Longest accepted `exp - iat` (tokens then need `iat`). Default: no limit.
    #[serde(default)]
    pub max_lifetime: Option<String>,
    /// Accepted `typ` header values (case-insensitive; `""` accepts a token
    /// without `typ`). Default: any.
    #[serde(default)]
    pub typ: Option<Vec<String>>,
    /// Claims every token must carry (not null).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claims sent to the backend as headers (`claim: header-name`); any
    /// copy of those headers the client sent is removed first.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Shortest time between two fetches of `jwks_url`. Default 60s, at least 1s.
    #[serde(default)]
    pub jwks_min_refresh: Option<String>,
}

/// A JSON Schema: the path of a JSON file (relative to this config), or
/// the schema itself written in YAML.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawSchema {
    /// Path of a JSON Schema file.
    File(String),
    /// The schema inline.
    Inline(#[schemars(with = "serde_json::Map<String, serde_json::Value>")] serde_yaml_ng::Value),
}

/// One role of `read_any_subject`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoleRule {
    /// A top-level claim of the verified token's payload, e.g. `roles`.
    /// Its value is a string (one role, never split) or an array of strings.
    pub claim: String,
    /// Values that grant the role, compared exactly (case-sensitively).
    pub values: Vec<String>,
    /// Only tokens of this `identity.jwt` provider grant it. Default: any provider.
    #[serde(default)]
    pub provider: Option<String>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Host / :authority (port ignored). Default: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// An exact path (also with a trailing slash or a format suffix), or a
    /// template with `{param}` segments (`/api/users/by-email/{email}`),
    /// which takes every path under its literal prefix and refuses those
    /// that do not fit it.
    #[serde(default)]
    pub path: Option<String>,
    /// A path prefix on segment boundaries: /api/users matches /api/users/7, not /api/usersX.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Default: any method. On an encrypting route, other methods fall through to later routes.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Match the path under the name fold (every case spelling, escapes
    /// decoded). Default: true on routes that encrypt or decrypt fields,
    /// false elsewhere.
    #[serde(default)]
    pub case_insensitive: Option<bool>,
}

/// `"$.ssn"` or `{ path: "$.ssn", context: ssn }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawFieldRule {
    Path(String),
    Detailed(RawFieldRuleDetailed),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFieldRuleDetailed {
    /// A JSONPath, e.g. `$.ssn`.
    pub path: String,
    /// A named context the value is bound to (decrypt rules must name it too).
    #[serde(default)]
    pub context: Option<String>,
    /// Encrypt rules only: `allow` lets this field's look-alikes pass (see
    /// the route's `look_alikes`).
    #[serde(default)]
    pub look_alikes: Option<Word<Allow>>,
}

/// The word `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Allow {
    Allow,
}

/// `auto`, or a list of rules.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawDecrypt {
    Keyword(Word<Auto>),
    Rules(Vec<RawFieldRule>),
}

/// The word `auto`: every envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Auto {
    Auto,
}

/// Only called when the key is present: an explicit YAML null there is the
/// `null` mode (`on_decrypt_failure: null`), not "unset".
fn null_is_a_mode<'de, D>(d: D) -> Result<Option<Word<OnDecryptFailure>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let v: Option<Word<OnDecryptFailure>> = Option::deserialize(d)?;
    Ok(Some(v.unwrap_or(Word::Known(OnDecryptFailure::Null))))
}

fn null_is_erased_null<'de, D>(d: D) -> Result<Option<Word<crate::transform::OnErased>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let v: Option<Word<crate::transform::OnErased>> = Option::deserialize(d)?;
    Ok(Some(
        v.unwrap_or(Word::Known(crate::transform::OnErased::Null)),
    ))
}

/// An enumeration written as a word, read by the enum's own serde derive,
/// so its words are spelled once, on the enum. A word that is none of them
/// is kept, so the section that reads it can refuse it with its key, its
/// place and the words it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word<T> {
    Known(T),
    Unknown(String),
}

impl<T: DeserializeOwned> Word<T> {
    pub fn parse(s: &str) -> Word<T> {
        match T::deserialize(serde::de::value::StrDeserializer::<Variants>::new(s)) {
            Ok(t) => Word::Known(t),
            Err(_) => Word::Unknown(s.to_owned()),
        }
    }

    /// The words `T` takes, as a message says them: `refuse or seal`.
    pub fn expected() -> String {
        let words = match T::deserialize(serde::de::value::StrDeserializer::<Variants>::new("")) {
            Err(Variants(words)) => words,
            Ok(_) => &[],
        };
        match words {
            [] => String::new(),
            [one] => (*one).to_string(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Word<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Word::parse(&s))
    }
}

impl<T: JsonSchema> JsonSchema for Word<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

/// The error of reading a word with an enum's derive: the variants it
/// lists when the word is none of them.
#[derive(Debug)]
struct Variants(&'static [&'static str]);

impl std::fmt::Display for Variants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl std::error::Error for Variants {}

impl serde::de::Error for Variants {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Variants(&[])
    }

    fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
        Variants(expected)
    }
}
