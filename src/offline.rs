//! The offline commands on the same code as the proxy: `encrypt`, `decrypt`,
//! `rewrap` and the key census of `keys --scan`. Input is one JSON document
//! or a stream of them (NDJSON); output is one compact document per line.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};

use serde_json::Value;

use crate::crypto::{envelope_key_id, looks_like_envelope, Keyring};
use crate::fields::{self, FieldRule};
use crate::routes::Route;
use crate::state::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("input document {doc}: not valid JSON: {reason}")]
    Json { doc: u64, reason: String },
    #[error("input document {doc}: {reason}")]
    Transform { doc: u64, reason: String },
    #[error("route {0:?} has no {1} rules")]
    NoRules(String, &'static str),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub documents: u64,
    pub fields: u64,
}

pub enum Mode<'a> {
    Encrypt(&'a Route),
    Decrypt(&'a Route),
    /// Re-encrypt under the active key; a route's rules name custom contexts.
    Rewrap(Option<&'a [FieldRule]>),
}

/// Reads documents from `input`, transforms each, writes one per line.
/// Stops at the first failure: a half-transformed backup is worse than none.
pub fn transform_stream(
    mode: Mode<'_>,
    ring: &Keyring,
    input: impl Read,
    mut output: impl Write,
) -> Result<Stats, OfflineError> {
    if let Mode::Encrypt(r) = &mode {
        if r.encrypt.is_empty() {
            return Err(OfflineError::NoRules(r.name.clone(), "encrypt"));
        }
    }
    if let Mode::Decrypt(r) = &mode {
        if r.decrypt.is_none() {
            return Err(OfflineError::NoRules(r.name.clone(), "decrypt"));
        }
    }
    let mut stats = Stats::default();
    let stream =
        serde_json::Deserializer::from_reader(std::io::BufReader::new(input)).into_iter::<Value>();
    for doc in stream {
        let n = stats.documents + 1;
        let mut doc = doc.map_err(|e| OfflineError::Json {
            doc: n,
            reason: e.to_string(),
        })?;
        let now = unix_now();
        let report = match &mode {
            Mode::Encrypt(route) => fields::encrypt_document_with(
                &mut doc,
                &route.encrypt,
                ring,
                now,
                &route.named_contexts,
            ),
            Mode::Decrypt(route) => match &route.decrypt {
                Some(sel) => fields::decrypt_document(
                    &mut doc,
                    sel,
                    ring,
                    route.on_decrypt_failure,
                    route.max_age,
                    now,
                ),
                None => return Err(OfflineError::NoRules(route.name.clone(), "decrypt")),
            },
            Mode::Rewrap(rules) => fields::rewrap_document(&mut doc, *rules, ring, now),
        }
        .map_err(|e| OfflineError::Transform {
            doc: n,
            reason: match e {
                fields::FieldError::Decrypt(f) => format!(
                    "field {} (key {}) could not be decrypted: {}",
                    f.location,
                    f.key_id.as_deref().unwrap_or("?"),
                    f.reason
                ),
                other => other.to_string(),
            },
        })?;
        stats.fields += (report.encrypted + report.decrypted) as u64;
        serde_json::to_writer(&mut output, &doc).map_err(|e| OfflineError::Io(e.into()))?;
        output.write_all(b"\n")?;
        stats.documents = n;
    }
    output.flush()?;
    Ok(stats)
}

/// Counts envelopes per key id in an NDJSON stream, so ops know when a
/// retired key protects nothing any more. Lines that aren't JSON are counted
/// apart rather than stopping the census.
pub fn key_census(input: impl BufRead) -> Result<(BTreeMap<String, u64>, u64), OfflineError> {
    let mut counts = BTreeMap::new();
    let mut unreadable = 0;
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => count_envelopes(&v, &mut counts),
            Err(_) => unreadable += 1,
        }
    }
    Ok((counts, unreadable))
}

fn count_envelopes(v: &Value, counts: &mut BTreeMap<String, u64>) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if looks_like_envelope(s) => {
                if let Some(id) = envelope_key_id(s) {
                    *counts.entry(id.to_string()).or_insert(0) += 1;
                }
            }
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
}
