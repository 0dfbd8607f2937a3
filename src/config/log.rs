//! `log`: level, format, the access log, and whose request ids are kept.

use super::locate::At;
use super::raw::RawLog;
use super::{word, Invalid};

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: LogLevel,
    pub json: bool,
    pub access_log: bool,
    pub trust_request_id: TrustRequestId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Lines for people.
    Text,
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

pub(super) fn compile(l: &RawLog) -> Result<LogSettings, Invalid> {
    let at = At::top("log");
    let level = match &l.level {
        None => LogLevel::default(),
        Some(w) => word(&at.key("level"), w, "")?,
    };
    let format = match &l.format {
        None => LogFormat::default(),
        Some(w) => word(&at.key("format"), w, "")?,
    };
    Ok(LogSettings {
        level,
        json: format == LogFormat::Json,
        access_log: l.access_log.unwrap_or(true),
        trust_request_id: l.trust_request_id.unwrap_or_default(),
    })
}
