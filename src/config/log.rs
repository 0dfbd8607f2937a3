//! `log`: level, format, the access log, and whose request ids are kept.

use super::locate::At;
use super::raw::RawLog;
use super::{word, Invalid};
use crate::logging::{LogFormat, LogLevel, LogPaths, TrustRequestId};

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: LogLevel,
    pub json: bool,
    pub access_log: bool,
    pub paths: LogPaths,
    pub trust_request_id: TrustRequestId,
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
        paths: match &l.paths {
            None => LogPaths::default(),
            Some(w) => word(&at.key("paths"), w, "")?,
        },
        trust_request_id: l.trust_request_id.unwrap_or_default(),
    })
}

/// Log settings that load but put client input in the log.
pub(super) fn warnings(log: &LogSettings) -> Vec<String> {
    let mut out = Vec::new();
    if log.access_log && log.paths == LogPaths::Full {
        out.push(
            "log.paths: full writes every request's path into the access log: paths are \
             client input and can hold ids, tokens or field values (the default, pattern, \
             logs the route's pattern and a keyed hash)"
                .to_string(),
        );
    }
    out
}
