//! The admin listener, apart from traffic: `/healthz`, `/readyz`,
//! `/metrics`, and `POST /reload`.

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{self, ProxyBody};
use crate::state::Shared;

pub async fn serve(shared: Arc<Shared>, listener: TcpListener, stop: watch::Receiver<bool>) {
    crate::server::serve_http1(listener, stop, move |req| {
        let shared = Arc::clone(&shared);
        async move { route(&shared, req).await }
    })
    .await;
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
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

async fn route<B>(shared: &Shared, req: Request<B>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => readyz(shared),
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
        (_, "/healthz" | "/readyz" | "/metrics" | "/reload") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({ "error": "method not allowed", "status": 405 }),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": "not found", "status": 404 }),
        ),
    }
}

fn last_reload(shared: &Shared) -> serde_json::Value {
    shared
        .last_reload
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .map_or(serde_json::Value::Null, |s| json!(s))
}

/// Ready when the config is loaded and every key in the ring encrypts and
/// decrypts a probe (the encryption health check).
fn readyz(shared: &Shared) -> Response<ProxyBody> {
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
            let all_ok = !results.is_empty() && results.iter().all(|(_, r)| r.is_ok());
            ready &= all_ok;
            let per_key: serde_json::Map<String, serde_json::Value> = results
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
    if let Some(a) = &rt.audit {
        checks.insert(
            "audit".into(),
            json!({ "status": "ok", "key_id": a.key_id }),
        );
    }
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
