//! `log`: level, format, the access log, and whose request ids are kept.

use super::locate::At;
use super::raw::RawLog;
use super::{word, Invalid};
use crate::logging::{LogFormat, LogLevel, TrustRequestId};

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: LogLevel,
    pub json: bool,
    pub access_log: bool,
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
        trust_request_id: l.trust_request_id.unwrap_or_default(),
    })
}
