//! The admin listener, apart from traffic.
//!
//! Open, for probes and scrapers: `GET /healthz`, `/readyz`, `/metrics`.
//! Protected, because they show the configuration or change state:
//! `GET /routes`, `/keys`, `/info`, `GET` and `POST /reload`. With
//! `admin.token_file` they need `Authorization: Bearer <token>`; without
//! one they are served only when the admin listener is bound to a loopback
//! address (so only local processes reach them), and refused otherwise.
//!
//! `POST /subjects/erase` destroys a subject's keys: it always needs the
//! token (`admin.token_file`), on any listener, as it cannot be undone.

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{self, ProxyBody};
use crate::crypto::KeySource;
use crate::routes::PathMatch;
use crate::state::Shared;
use crate::transform::{DecryptSelection, FieldRule, OnDecryptFailure};

/// Paths that need the token (or a loopback listener when there is none).
const PROTECTED: &[&str] = &["/reload", "/routes", "/keys", "/info", ERASE_PATH];
/// Destroys a subject's keys; needs the admin token even on loopback.
const ERASE_PATH: &str = "/subjects/erase";
/// Largest erase request body read.
const MAX_ERASE_BODY: usize = 4096;
const OPEN: &[&str] = &["/healthz", "/readyz", "/metrics"];

pub async fn serve(shared: Arc<Shared>, listener: TcpListener, stop: watch::Receiver<bool>) {
    // What is bound decides, not what the config says (tests and `demo`
    // bind their own listener).
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    crate::listener::serve_http1(listener, stop, move |req| {
        let shared = Arc::clone(&shared);
        async move { route(&shared, loopback, req).await }
    })
    .await;
}

fn json_response(status: StatusCode, value: Value) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json_response(
        status,
        json!({ "error": message, "status": status.as_u16() }),
    )
}

async fn route<B>(shared: &Arc<Shared>, loopback: bool, req: Request<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path();
    if path == ERASE_PATH && shared.runtime.load().admin_token.is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "erasing a subject needs admin.token_file (a bearer token), on any listener",
        );
    }
    if PROTECTED.contains(&path) {
        if let Some(refused) = refusal(shared, loopback, &req) {
            return refused;
        }
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => readyz(shared).await,
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(body::full(shared.metrics.encode()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::POST, "/reload") => match shared.reload().await {
            Ok(summary) => json_response(
                StatusCode::OK,
                json!({ "status": "reloaded", "summary": summary }),
            ),
            Err(e) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "status": "refused", "error": e.to_string(), "serving": "previous configuration" }),
            ),
        },
        (&Method::GET, "/reload") => json_response(
            StatusCode::OK,
            json!({ "last_reload": last_reload(shared) }),
        ),
        (&Method::POST, ERASE_PATH) => erase(shared, req).await,
        (&Method::GET, "/routes") => json_response(StatusCode::OK, routes(shared)),
        (&Method::GET, "/keys") => json_response(StatusCode::OK, keys(shared)),
        (&Method::GET, "/info") => json_response(StatusCode::OK, info(shared, loopback)),
        (_, p) if OPEN.contains(&p) || PROTECTED.contains(&p) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseRequest {
    subject: String,
    #[serde(default)]
    tenant: Option<String>,
    /// `subject` (default) or `tenant`.
    #[serde(default)]
    scope: Option<String>,
    /// Who asked (an operator or ticket id), recorded in the tombstone and audit.
    #[serde(default)]
    requested_by: Option<String>,
}

/// `POST /subjects/erase {"subject": "...", "tenant": "...", "requested_by": "..."}`.
async fn erase<B>(shared: &Arc<Shared>, req: Request<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let rt = shared.runtime.load_full();
    let Some(service) = rt.key_service.clone() else {
        return error(StatusCode::CONFLICT, "no key_store is configured");
    };
    let Ok(collected) = http_body_util::Limited::new(req.into_body(), MAX_ERASE_BODY)
        .collect()
        .await
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body could not be read or is too large",
        );
    };
    let Ok(ask) = serde_json::from_slice::<EraseRequest>(&collected.to_bytes()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"subject\": \"...\", \"tenant\": \"...\" (optional), \"scope\": \"subject\" | \"tenant\", \"requested_by\": \"...\"}",
        );
    };
    let scope = match ask.scope.as_deref() {
        None | Some("subject") => crate::crypto::RefScope::Subject,
        Some("tenant") => crate::crypto::RefScope::Tenant,
        Some(_) => return error(StatusCode::BAD_REQUEST, "scope must be subject or tenant"),
    };
    if ask.subject.is_empty() && scope == crate::crypto::RefScope::Subject {
        return error(StatusCode::BAD_REQUEST, "subject must not be empty");
    }
    let by = format!(
        "admin:{}",
        ask.requested_by
            .as_deref()
            .unwrap_or("token")
            .chars()
            .take(128)
            .collect::<String>()
    );
    let by2 = by.clone();
    let done = tokio::task::spawn_blocking(move || {
        service.erase_subject(scope, ask.tenant.as_deref(), &ask.subject, &by2)
    })
    .await;
    match done {
        Ok(Ok((reference, destroyed))) => {
            shared.metrics.subject_erasures.inc();
            // Audited by reference (never the raw id), with who asked.
            tracing::warn!(reference = %reference, destroyed, requested_by = %by, "subject erased");
            if let Some(a) = &rt.audit {
                let _ = a.log.append(&crate::audit::AuditEvent {
                    request_id: format!("erase-{}", crate::crypto::unix_now()),
                    route: "admin".into(),
                    client: by.clone(),
                    user_agent: None,
                    method: "ERASE".into(),
                    fields: vec![],
                    key_ids: vec![reference.clone()],
                    encrypted: 0,
                    decrypted: 0,
                    outcome: "erased".into(),
                });
            }
            json_response(
                StatusCode::OK,
                json!({ "status": "erased", "reference": reference, "versions_destroyed": destroyed }),
            )
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "subject erasure failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the key store is unavailable",
            )
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the erase task failed"),
    }
}

/// The answer refusing a protected path, if it is refused. With a token:
/// the request must carry it. Without: only a loopback listener serves it.
fn refusal<B>(shared: &Shared, loopback: bool, req: &Request<B>) -> Option<Response<ProxyBody>> {
    let rt = shared.runtime.load();
    match &rt.admin_token {
        Some(token) => {
            let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
            let presented = match (values.next(), values.next()) {
                (Some(v), None) => bearer(v.as_bytes()),
                _ => None,
            };
            if presented.is_some_and(|t| token.matches(t)) {
                return None;
            }
            tracing::warn!(
                path = req.uri().path(),
                "admin request refused: missing or wrong bearer token"
            );
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this admin endpoint needs Authorization: Bearer <admin token>",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fieldseal admin\""),
            );
            Some(r)
        }
        None if loopback => None,
        None => Some(error(
            StatusCode::FORBIDDEN,
            "this admin endpoint is served without a token only on a loopback listener: set admin.token_file",
        )),
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme in any case).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = v.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let t = rest.trim_ascii();
    (!t.is_empty()).then_some(t)
}

fn last_reload(shared: &Shared) -> Value {
    shared
        .last_reload
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .map_or(Value::Null, |s| json!(s))
}

fn rules(rules: &[FieldRule]) -> Value {
    rules
        .iter()
        .map(|r| json!({ "path": r.path.as_str(), "context": r.context }))
        .collect()
}

/// The compiled routes in match order, as requests see them.
fn routes(shared: &Shared) -> Value {
    let rt = shared.runtime.load();
    let config = &rt.config;
    let found = crate::routes::shadows(&config.routes.routes);
    let list: Vec<Value> = config
        .routes
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let shadows: Vec<Value> = found
                .iter()
                .filter(|s| s.earlier == i)
                .map(|s| {
                    let later = &config.routes.routes[s.later];
                    json!({
                        "route": later.name,
                        "index": s.later,
                        "every_request": s.overlap.is_total(),
                        "example": s.overlap.example.to_string(),
                    })
                })
                .collect();
            let (kind, path) = match &r.path {
                PathMatch::Exact(p) => ("path", Some(p.as_str())),
                PathMatch::Prefix(p) => ("path_prefix", Some(p.as_str())),
                PathMatch::Any => ("any", None),
            };
            let upstream = config.upstream(r.upstream).map(|u| {
                json!({
                    "name": u.name,
                    "address": u.authority().as_str(),
                    "servers": u.servers.iter().map(|s| format!("{}://{}", u.scheme, s.authority)).collect::<Vec<_>>(),
                    "base_path": u.base_path,
                })
            });
            let decrypt = match r.decrypt_selection() {
                None => Value::Null,
                Some(DecryptSelection::Auto) => json!("auto"),
                Some(DecryptSelection::Paths(p)) => rules(p),
            };
            let headers: serde_json::Map<String, Value> = r
                .headers
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.as_str().to_string(),
                        json!(h.value.to_str().unwrap_or("")),
                    )
                })
                .collect();
            json!({
                "index": i,
                "name": r.name,
                "match": {
                    "host": r.host,
                    "kind": kind,
                    "path": path,
                    "methods": r.methods.as_ref().map(|ms| ms.iter().map(Method::as_str).collect::<Vec<_>>()),
                    "case_insensitive": r.case_insensitive,
                },
                "upstream": upstream,
                "rate_limit": r.rate_limit.map(|l| json!({
                    "requests_per_second": l.requests_per_second.get(),
                    "burst": l.burst.get(),
                    "bucket": if r.own_rate_limit { "route" } else { "global" },
                })),
                "max_body": r.max_body,
                "encrypt": rules(r.encrypt_rules()),
                "decrypt": decrypt,
                "on_decrypt_failure": r.open.as_ref().map_or(OnDecryptFailure::Error, |o| o.on_failure),
                "max_age_secs": r.open.as_ref().and_then(|o| o.max_age).map(|d| d.as_secs()),
                "headers": headers,
                // The later routes this one takes requests from
                // (`routes::shadow`); the config's warnings say which are
                // acknowledged by `shadows_ok`.
                "shadows": shadows,
            })
        })
        .collect();
    json!({ "routes": list, "warnings": config.warnings })
}

/// The keyring as loaded: ids, which is active, where each comes from and
/// its fingerprint (never a key).
fn keys(shared: &Shared) -> Value {
    let rt = shared.runtime.load();
    let (Some(spec), Some(ring)) = (&rt.config.keys, &rt.keyring) else {
        return json!({ "keys": [], "active": null });
    };
    let list: Vec<Value> = spec
        .keys
        .iter()
        .map(|k| {
            let source = match &k.source {
                KeySource::File(p) => json!({ "kind": "file", "path": p.display().to_string() }),
                KeySource::Passphrase { env, .. } => {
                    json!({ "kind": "passphrase", "env": env })
                }
                KeySource::Pkcs11(p) => json!({
                    "kind": "pkcs11",
                    "module": p.module.display().to_string(),
                    "token": p.token,
                    "label": p.label,
                }),
            };
            json!({
                "id": k.id,
                "active": k.id == ring.active_id(),
                "source": source,
                "fingerprint": ring.fingerprint(&k.id),
            })
        })
        .collect();
    json!({
        "active": ring.active_id(),
        "keys": list,
        "audit_key": rt.audit.as_ref().map(|a| a.key_id.as_str()),
    })
}

fn info(shared: &Shared, loopback: bool) -> Value {
    let rt = shared.runtime.load();
    json!({
        "version": crate::build_info::VERSION,
        "git_commit": crate::build_info::GIT_COMMIT,
        "rustc": crate::build_info::RUSTC,
        "started_at": shared.started_at,
        "config": shared.config_path.display().to_string(),
        "summary": rt.config.summary(),
        "last_reload": last_reload(shared),
        "admin": {
            "auth": if rt.admin_token.is_some() { "token" } else if loopback { "loopback" } else { "none" },
        },
    })
}

/// Ready when the config is loaded and every key in the ring encrypts and
/// decrypts a probe (the encryption health check).
/// Each upstream's servers: up or in back-off, failures in a row, the
/// latest active check. An upstream with no server up fails readiness only
/// with `readiness: require`: by default it is shown, not decisive, since
/// every replica shares the backend and taking them all out of the load
/// balancer would turn one backend's outage into a full one (the routes of
/// other upstreams included), while a replica that stays in answers 502
/// with a reason and recovers with the backend.
fn upstreams_status(
    upstreams: &[std::sync::Arc<crate::upstream::UpstreamClient>],
) -> (Value, bool) {
    let now = std::time::Instant::now();
    let mut ready = true;
    let all: serde_json::Map<String, Value> = upstreams
        .iter()
        .map(|u| {
            let servers: Vec<Value> = u
                .servers
                .iter()
                .map(|s| {
                    let up = s.health.is_up(now);
                    let mut v = json!({
                        "server": s.label,
                        "status": if up { "up" } else { "backoff" },
                        "fails_in_a_row": s.health.fails_in_a_row(),
                    });
                    if !up {
                        v["backoff_left_secs"] = json!(s.health.backoff_left(now));
                    }
                    if let Some(c) = s.health.last_check() {
                        v["last_check"] = json!({ "ok": c.ok, "at": c.at, "result": c.result });
                    }
                    v
                })
                .collect();
            let up = u.servers_up();
            let status = match up {
                0 => "down",
                n if n == u.servers.len() => "ok",
                _ => "degraded",
            };
            let required = u.spec.readiness == crate::config::Readiness::Require;
            if required && up == 0 {
                ready = false;
            }
            (
                u.spec.name.clone(),
                json!({
                    "status": status,
                    "servers_up": up,
                    "readiness": if required { "require" } else { "report" },
                    "servers": servers,
                }),
            )
        })
        .collect();
    (Value::Object(all), ready)
}

async fn readyz(shared: &Shared) -> Response<ProxyBody> {
    let rt = shared.runtime.load();
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    checks.insert(
        "config".into(),
        json!({ "status": "ok", "routes": rt.config.routes.routes.len() }),
    );
    match &rt.keyring {
        None => {
            checks.insert(
                "keys".into(),
                json!({ "status": "ok", "detail": "no keyring configured" }),
            );
        }
        Some(ring) => {
            let results = ring.self_test();
            // Token keys have no bytes here: their round trip is the
            // `key_providers` check below.
            let all_ok = (!results.is_empty() || !ring.token_ids().is_empty())
                && results.iter().all(|(_, r)| r.is_ok());
            ready &= all_ok;
            let per_key: serde_json::Map<String, Value> = results
                .into_iter()
                .map(|(id, r)| {
                    let v = match r {
                        Ok(()) => json!({ "status": "ok" }),
                        Err(reason) => json!({ "status": "failed", "reason": reason }),
                    };
                    (id, v)
                })
                .collect();
            checks.insert(
                "keys".into(),
                json!({ "status": if all_ok { "ok" } else { "failed" }, "active": ring.active_id(), "self_test": per_key }),
            );
        }
    }
    if let Some(service) = &rt.key_service {
        // One round trip to the store (SQLite: a local read; PostgreSQL:
        // bounded by its timeouts), on the blocking pool: never on a worker.
        let store = Arc::clone(service.store());
        let probe = Arc::clone(&store);
        let pinged = tokio::task::spawn_blocking(move || probe.ping())
            .await
            .unwrap_or_else(|_| {
                Err(crate::keystore::StoreError::Unavailable(
                    "the probe task failed".into(),
                ))
            });
        match pinged {
            Ok(()) => {
                checks.insert(
                    "key_store".into(),
                    json!({ "status": "ok", "kind": store.kind() }),
                );
            }
            Err(e) => {
                ready = false;
                checks.insert(
                    "key_store".into(),
                    json!({ "status": "failed", "kind": store.kind(), "reason": e.to_string() }),
                );
            }
        }
    }
    if let Some(service) = &rt.key_service {
        // Token keys: a wrap/unwrap round trip in the token, at most once
        // per `KEK_CHECK_EVERY` (cached), off the runtime's workers.
        let tested = service.kek_health().await;
        if !tested.is_empty() {
            let all_ok = tested.iter().all(|(_, r)| r.is_ok());
            ready &= all_ok;
            let per_key: serde_json::Map<String, Value> = tested
                .into_iter()
                .map(|(id, r)| {
                    let v = match r {
                        Ok(()) => json!({ "status": "ok", "kind": crate::crypto::pkcs11::KIND }),
                        Err(reason) => json!({ "status": "failed", "kind": crate::crypto::pkcs11::KIND, "reason": reason }),
                    };
                    (id, v)
                })
                .collect();
            checks.insert(
                "key_providers".into(),
                json!({ "status": if all_ok { "ok" } else { "failed" }, "self_test": per_key }),
            );
        }
    }
    if let Some(a) = &rt.audit {
        checks.insert(
            "audit".into(),
            json!({ "status": "ok", "key_id": a.key_id }),
        );
    }
    if let Some(store) = rt.limits.store() {
        // Shown, not counted against readiness: every replica shares the
        // store, so failing them all would turn a rate-limit outage into a
        // full one; `rate_limit.on_store_error` decides instead.
        checks.insert("rate_limit_store".into(), store.status());
    }
    let (upstreams, upstreams_ready) = upstreams_status(&rt.upstreams);
    ready &= upstreams_ready;
    checks.insert("upstreams".into(), upstreams);
    checks.insert("last_reload".into(), last_reload(shared));
    if shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
        ready = false;
        checks.insert("shutdown".into(), json!({ "status": "draining" }));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_trimmed() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
    }
}
