//! Stage 6, finish: what every answer gets (security headers, the request
//! id), and what every request leaves behind (metrics, the access log line,
//! the audit line).

use std::time::Instant;

use http::header;
use http::Response;

use super::Exchange;
use crate::audit::{AuditEvent, AuditFailureMode};
use crate::body::ProxyBody;
use crate::config::LogPaths;
use crate::error::{ClientError, LocalError, ProxyError};
use crate::headers::X_REQUEST_ID;
use crate::metrics::{RouteLabel, RouteStatus, UpstreamKind};
use crate::state::{Runtime, Shared};

/// The answer as the client gets it, with the request counted and logged.
pub(super) fn finish(
    shared: &Shared,
    rt: &Runtime,
    ex: &Exchange,
    mut response: Response<ProxyBody>,
    start: Instant,
) -> Response<ProxyBody> {
    let route = ex.route.as_deref();
    let security = route.map_or(&rt.config.default_headers, |r| &r.route.headers);
    // Room for what is added here: the map grows once, not header by header.
    response.headers_mut().reserve(security.headers.len() + 1);
    security.apply(response.headers_mut());
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), ex.request_id.clone());

    let route_name = route.map_or("", |r| r.route.name.as_str());
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    let m = &shared.metrics;
    match route {
        Some(r) => {
            r.metrics.requests.inc(status);
            r.metrics.request_duration.observe(elapsed.as_secs_f64());
        }
        None => {
            m.requests
                .get_or_create(&RouteStatus {
                    route: String::new(),
                    status,
                })
                .inc();
            m.request_duration
                .get_or_create(&RouteLabel {
                    route: String::new(),
                })
                .observe(elapsed.as_secs_f64());
        }
    }
    if rt.config.log.access_log {
        let bytes_out = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let upstream = route.map(|r| &r.upstream.spec);
        let (reason, detail) = ex.refusal.map_or((None, None), |(r, d)| (Some(r), d));
        // The path is client input: by default only the route's pattern and
        // a keyed hash of it are logged (`log.paths`).
        let known = !ex.path.is_empty();
        let path = match rt.config.log.paths {
            LogPaths::Full => known.then(|| ex.path.clone()),
            LogPaths::Pattern => route.map(|r| r.route.path.pattern()),
        };
        let path_hash = known.then(|| rt.path_key.hash(&ex.path));
        tracing::info!(
            target: "fieldseal::access",
            request_id = ex.id(),
            method = %ex.method,
            path,
            path_hash,
            route = route_name,
            status,
            reason,
            detail,
            upstream = upstream.map(|u| u.name.as_str()),
            // Only when the request went (or tried to go) there.
            upstream_addr = upstream
                .filter(|_| ex.upstream_elapsed.is_some())
                .map(|u| ex.upstream_server.as_ref().unwrap_or(u.authority()).as_str()),
            upstream_status = ex.upstream_status,
            upstream_ms = ex.upstream_elapsed.map(millis),
            latency_ms = millis(elapsed),
            bytes_in = ex.bytes_in,
            bytes_out,
            client = %ex.client,
            fields_encrypted = ex.request_report.encrypted,
            fields_decrypted = ex.response_report.decrypted,
            fields_failed = ex.response_report.failures.len(),
        );
    }
    response
}

/// The metrics a refusal counts, by what was refused.
pub(super) fn count_refusal(shared: &Shared, ex: &Exchange, e: &ProxyError) {
    let route = ex.route.as_deref();
    if e.is_upstream() {
        let upstream = route.map_or("", |r| r.upstream.spec.name.as_str());
        shared
            .metrics
            .upstream_errors
            .get_or_create(&UpstreamKind {
                upstream: upstream.to_string(),
                kind: e.kind().to_string(),
            })
            .inc();
    }
    match e {
        ProxyError::Local(LocalError::BufferLimit) => {
            shared.metrics.buffer_limit_refusals.inc();
        }
        ProxyError::Client(ClientError::RateLimited { .. }) => {
            if let Some(r) = route {
                r.metrics.rate_limited.inc();
            }
        }
        _ => {}
    }
}

/// Milliseconds rounded to the microsecond: a number with at most 3
/// decimals, the same precision on every line.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// One audit event per request that encrypted or decrypted fields.
pub(super) fn audit(
    shared: &Shared,
    rt: &Runtime,
    ex: &Exchange,
    outcome: &str,
) -> Result<(), ProxyError> {
    let Some(audit) = &rt.audit else {
        return Ok(());
    };
    let (req, resp) = (&ex.request_report, &ex.response_report);
    // Pairs outside the JSON body, named by their rule as `query:email`,
    // `form:ssn`, `path:email`.
    let mut pair_fields = Vec::new();
    let mut pairs_sealed = 0;
    for (source, r) in ex.pairs.reports.iter().enumerate() {
        let kind = crate::metrics::PAIR_SOURCES[source];
        pair_fields.extend(r.rules.iter().map(|n| format!("{kind}:{n}")));
        pairs_sealed += r.sealed;
    }
    if req.encrypted == 0
        && resp.decrypted == 0
        && resp.failures.is_empty()
        && pair_fields.is_empty()
    {
        return Ok(());
    }
    let Some(route) = &ex.route else {
        return Ok(());
    };
    let union = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .chain(b.iter().filter(|x| !a.contains(x)))
            .cloned()
            .collect()
    };
    let event = AuditEvent {
        request_id: ex.id().to_string(),
        route: route.route.name.clone(),
        client: ex.client.to_string(),
        // Fingerprinted by the audit log, never written as sent.
        user_agent: ex
            .user_agent
            .as_ref()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        method: ex.method.to_string(),
        fields: union(&union(&req.paths, &resp.paths), &pair_fields),
        key_ids: union(&req.key_ids, &resp.key_ids),
        encrypted: req.encrypted + pairs_sealed,
        decrypted: resp.decrypted,
        outcome: outcome.to_string(),
    };
    match audit.log.append_with(&event, ex.role_access.as_ref()) {
        Ok(()) => Ok(()),
        Err(e) => {
            shared.metrics.audit_failures.inc();
            tracing::error!(request_id = ex.id(), error = %e, "audit log write failed");
            // Another subject's data never goes out unaudited, whatever
            // `on_failure` says for the rest.
            if ex.role_access.is_some() {
                return Err(ProxyError::from(LocalError::AuditUnavailable));
            }
            match audit.on_failure {
                AuditFailureMode::Refuse => Err(ProxyError::from(LocalError::AuditUnavailable)),
                AuditFailureMode::Serve => Ok(()),
            }
        }
    }
}
