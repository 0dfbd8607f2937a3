//! The YAML file as written by ops: plain serde structs, unknown keys refused.
//! Nothing here is trusted; `super::compile` validates it into `Config`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: RawListen,
    #[serde(default)]
    pub redirect_http: Option<RawAddress>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub headers: RawHeaders,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub keys: Option<RawKeys>,
    #[serde(default)]
    pub audit: Option<RawAudit>,
    #[serde(default)]
    pub log: RawLog,
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub address: String,
    pub tls: RawTls,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    /// Extra certificates chosen by SNI; `cert`/`key` above is the default.
    #[serde(default)]
    pub sni: Vec<RawSniCert>,
    #[serde(default)]
    pub handshake_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniCert {
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAddress {
    pub address: String,
}

/// `admin:` is `off` / `false` (no admin listener) or its settings.
#[derive(Debug)]
pub enum RawAdmin {
    Switch(bool),
    Keyword(String),
    Settings(RawAdminSettings),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminSettings {
    #[serde(default)]
    pub address: Option<String>,
    /// A file holding the bearer token that protects introspection and reload.
    #[serde(default)]
    pub token_file: Option<String>,
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
                Ok(RawAdmin::Keyword(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<RawAdmin, A::Error> {
                RawAdminSettings::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(RawAdmin::Settings)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    /// `preserve` (default): forward the client's Host; `upstream`: the URL's authority;
    /// anything else: that literal host.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub pool_idle_timeout: Option<String>,
    #[serde(default)]
    pub pool_max_idle_per_host: Option<usize>,
}

/// A header either as a plain value (overwrites the upstream's), `false`
/// (not set), or `{ value, upstream: keep|overwrite }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawHeaderValue {
    Off(bool),
    Value(String),
    Detailed(RawHeaderDetailed),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderDetailed {
    pub value: String,
    #[serde(default)]
    pub upstream: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    #[serde(default)]
    pub hsts: Option<RawHeaderValue>,
    #[serde(default)]
    pub csp: Option<RawHeaderValue>,
    #[serde(default)]
    pub x_content_type_options: Option<RawHeaderValue>,
    #[serde(default)]
    pub x_frame_options: Option<RawHeaderValue>,
    #[serde(default)]
    pub referrer_policy: Option<RawHeaderValue>,
    #[serde(default)]
    pub x_xss_protection: Option<RawHeaderValue>,
    #[serde(default)]
    pub permissions_policy: Option<RawHeaderValue>,
    #[serde(default)]
    pub cross_origin_opener_policy: Option<RawHeaderValue>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    #[serde(default)]
    pub burst: Option<u32>,
    /// Per-route only: `false` turns the limit off for the route.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Global only: how many client keys are tracked before new ones share one bucket.
    #[serde(default)]
    pub max_tracked_clients: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default)]
    pub max_body: Option<String>,
    #[serde(default)]
    pub max_response_body: Option<String>,
    #[serde(default)]
    pub header_read_timeout: Option<String>,
    #[serde(default)]
    pub body_read_timeout: Option<String>,
    #[serde(default)]
    pub max_header_bytes: Option<String>,
    #[serde(default)]
    pub max_json_depth: Option<usize>,
    #[serde(default)]
    pub offload_threshold: Option<String>,
    #[serde(default)]
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    #[serde(default)]
    pub grace_period: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub active: String,
    pub ring: Vec<RawKey>,
    #[serde(default)]
    pub pbkdf2_iterations: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    #[serde(default)]
    pub passphrase_env: Option<String>,
    #[serde(default)]
    pub salt_env: Option<String>,
    #[serde(default)]
    pub salt_file: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `stdout` or a file path.
    pub sink: String,
    /// Key id whose audit sub-key signs the log; defaults to the active key.
    #[serde(default)]
    pub key: Option<String>,
    /// `refuse` (503 when the log can't be written) or `serve`.
    #[serde(default)]
    pub on_failure: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub access_log: Option<bool>,
    #[serde(default)]
    pub trust_request_id: Option<super::TrustRequestId>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    pub upstream: String,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub headers: Option<RawHeaders>,
    #[serde(default)]
    pub max_body: Option<String>,
    #[serde(default)]
    pub encrypt: Vec<RawFieldRule>,
    #[serde(default)]
    pub decrypt: Option<RawDecrypt>,
    /// `error`, `null` or `keep`. Written unquoted, `null` (or `~`) is YAML's
    /// null value, not a string: it must still mean the `null` mode, never
    /// fall back to the default.
    #[serde(default, deserialize_with = "null_is_a_mode")]
    pub on_decrypt_failure: Option<String>,
    #[serde(default)]
    pub max_age: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub case_insensitive: Option<bool>,
}

/// `"$.ssn"` or `{ path: "$.ssn", context: ssn }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawFieldRule {
    Path(String),
    Detailed(RawFieldRuleDetailed),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFieldRuleDetailed {
    pub path: String,
    #[serde(default)]
    pub context: Option<String>,
}

/// `auto`, or a list of rules.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawDecrypt {
    Keyword(String),
    Rules(Vec<RawFieldRule>),
}

/// Only called when the key is present: an explicit YAML null there is the
/// `null` mode (`on_decrypt_failure: null`), not "unset".
fn null_is_a_mode<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let v: Option<String> = Option::deserialize(d)?;
    Ok(Some(v.unwrap_or_else(|| "null".to_string())))
}
