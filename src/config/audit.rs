//! `audit`: where the HMAC-chained audit log goes, which ring key signs it,
//! and what a failed write does.

use std::path::Path;

use super::locate::At;
use super::raw::RawAudit;
use super::{invalid, word, Invalid};
use crate::audit::{AuditFailureMode, AuditSink};
use crate::crypto::KeyringSpec;

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub target: AuditSink,
    pub key_id: String,
    pub on_failure: AuditFailureMode,
}

pub(super) fn compile(
    a: &RawAudit,
    keys: Option<&KeyringSpec>,
    base: &Path,
) -> Result<AuditSettings, Invalid> {
    let at = At::top("audit");
    let Some(keys) = keys else {
        return Err(invalid(
            &at,
            "needs a `keys` section: the log is signed with a sub-key of a ring key",
        ));
    };
    let key_id = a.key.clone().unwrap_or_else(|| keys.active.clone());
    if !keys.keys.iter().any(|k| k.id == key_id) {
        return Err(invalid(
            &at.key("key"),
            format!("key id {key_id:?} is not in keys.ring"),
        ));
    }
    if keys
        .keys
        .iter()
        .any(|k| k.id == key_id && !k.source.has_bytes())
    {
        return Err(invalid(
            &at.key("key"),
            format!("key {key_id:?} is a pkcs11 key: the audit HMAC key is derived from a key's bytes, so name a file or passphrase key of the ring here"),
        ));
    }
    if a.sink.is_empty() {
        return Err(invalid(&at.key("sink"), "must be `stdout` or a file path"));
    }
    let target = match a.sink.parse::<AuditSink>() {
        Ok(AuditSink::File(p)) => AuditSink::File(base.join(p)),
        Ok(sink) => sink,
        Err(never) => match never {},
    };
    let on_failure = match &a.on_failure {
        None => AuditFailureMode::default(),
        Some(w) => word(&at.key("on_failure"), w, "")?,
    };
    Ok(AuditSettings {
        target,
        key_id,
        on_failure,
    })
}
