//! The request pipeline, stage by stage: canonical request → host check →
//! route → rate limit → request body (stream, or encrypt) → upstream →
//! response body (stream, or decrypt) → headers → audit, metrics, access log.
//!
//! Every stage that can fail returns a `ProxyError`; `handle` turns it into
//! one JSON answer. Nothing is forwarded until the request is fully checked
//! and, on encrypting routes, fully transformed.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::audit::AuditEvent;
use crate::audit::AuditFailureMode;
use crate::body::{self, BufferLimits, CollectError, ConnBuffers, ProxyBody, Reservation};
use crate::config::HostHeader;
use crate::crypto::unix_now;
use crate::crypto::Keyring;
use crate::error::ProxyError;
use crate::headers::{self, X_REQUEST_ID};
use crate::metrics::{RouteLabel, RouteReason, RouteStatus, UpstreamKind};
use crate::routes::{canonical_path, Route};
use crate::state::{Runtime, Shared};
use crate::transform::{self, DecryptFailure, TransformError, TransformReport};

/// What the access log, metrics and audit need to know about one request.
struct Exchange {
    /// Built once and shared (refcounted) by the upstream request, the
    /// response and the logs.
    request_id: HeaderValue,
    method: Method,
    /// The canonical path; only kept when the access log is on.
    path: String,
    route: Option<usize>,
    client: IpAddr,
    user_agent: Option<HeaderValue>,
    upstream_status: Option<u16>,
    /// From sending the request upstream to its answer's head (or failure).
    upstream_elapsed: Option<std::time::Duration>,
    /// Why the proxy answered with its own error instead of the upstream's answer.
    refusal: Option<(&'static str, Option<&'static str>)>,
    bytes_in: u64,
    request_report: TransformReport,
    response_report: TransformReport,
}

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
    buffers: Arc<ConnBuffers>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let rt = shared.runtime.load_full();
    let mut ex = Exchange {
        request_id: accepted_request_id(&rt, &req, peer).unwrap_or_else(request_id),
        method: req.method().clone(),
        // Set to the canonical path once it is known: a path refused as
        // malformed is never logged (it is client input, and may be anything).
        path: String::new(),
        route: None,
        client: peer.ip(),
        user_agent: req.headers().get(header::USER_AGENT).cloned(),
        upstream_status: None,
        upstream_elapsed: None,
        refusal: None,
        bytes_in: 0,
        request_report: TransformReport::default(),
        response_report: TransformReport::default(),
    };
    let result = match pipeline(&shared, &rt, req, peer, &buffers, &mut ex).await {
        Ok(resp) => audit(&shared, &rt, &ex, "ok").map(|()| resp),
        Err(e) => {
            if matches!(e, ProxyError::Decrypt(_)) {
                // The refusal itself is worth an audit line; its failure can't make it worse.
                let _ = audit(&shared, &rt, &ex, "decrypt_failed");
            }
            Err(e)
        }
    };
    let route = ex.route.and_then(|i| rt.config.routes.routes.get(i));
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            if e.is_upstream() {
                let upstream = route
                    .and_then(|r| rt.config.upstreams.get(r.upstream))
                    .map_or("", |u| u.name.as_str());
                shared
                    .metrics
                    .upstream_errors
                    .get_or_create(&UpstreamKind {
                        upstream: upstream.to_string(),
                        kind: e.kind().to_string(),
                    })
                    .inc();
            }
            if let ProxyError::BufferLimit = e {
                shared.metrics.buffer_limit_refusals.inc();
            }
            if let ProxyError::RateLimited { .. } = e {
                if let Some(m) = ex.route.and_then(|i| rt.route_metrics.get(i)) {
                    m.rate_limited.inc();
                }
            }
            ex.refusal = Some((e.reason(), e.detail()));
            error_response(&e)
        }
    };
    let security = route.map_or(&rt.config.default_headers, |r| &r.headers);
    security.apply(response.headers_mut());
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), ex.request_id.clone());
    finish(&shared, &rt, &ex, &response, start);
    Ok(response)
}

/// The client's `X-Request-Id`, when `log.trust_request_id` lets this peer
/// set it and it is well-formed (see [`is_well_formed_request_id`]), so a
/// trace started in front of the proxy goes on through it.
fn accepted_request_id<B>(rt: &Runtime, req: &Request<B>, peer: SocketAddr) -> Option<HeaderValue> {
    use crate::config::TrustRequestId;
    let trusted = match rt.config.log.trust_request_id {
        TrustRequestId::Never => false,
        TrustRequestId::Always => true,
        TrustRequestId::TrustedProxies => rt.config.is_trusted_proxy(peer.ip()),
    };
    if !trusted {
        return None;
    }
    let mut values = req.headers().get_all(&X_REQUEST_ID).iter();
    let v = values.next()?;
    // Two ids: neither can be the trace's.
    if values.next().is_some() || !is_well_formed_request_id(v.as_bytes()) {
        return None;
    }
    Some(v.clone())
}

/// 1 to 128 bytes of `A-Z a-z 0-9 - _ . :` (UUIDs, ULIDs, W3C and hex
/// trace ids): nothing that could break a log line or a header.
pub fn is_well_formed_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A request id unique for this process's life: a random per-process prefix
/// and a counter. It only has to correlate log lines, so no syscall per
/// request for fresh randomness.
fn request_id() -> HeaderValue {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        // Without the OS RNG, the start time still separates processes.
        if getrandom::getrandom(&mut b).is_err() {
            b = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64))
            .to_le_bytes();
        }
        u64::from_le_bytes(b)
    });
    let id = format!(
        "{prefix:016x}{:016x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    // Hex digits only: always a valid header value.
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("-"))
}

impl Exchange {
    fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}

/// The proxy's own answer for a refusal: JSON, never cached.
pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(e.body()));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let ProxyError::RateLimited { retry_after_secs } = e {
        h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    resp
}

fn finish(
    shared: &Shared,
    rt: &Runtime,
    ex: &Exchange,
    response: &Response<ProxyBody>,
    start: Instant,
) {
    let route = ex
        .route
        .and_then(|i| rt.config.routes.routes.get(i))
        .map_or("", |r| r.name.as_str());
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    let m = &shared.metrics;
    m.requests
        .get_or_create(&RouteStatus {
            route: route.to_string(),
            status,
        })
        .inc();
    match ex.route.and_then(|i| rt.route_metrics.get(i)) {
        Some(rm) => rm.request_duration.observe(elapsed.as_secs_f64()),
        None => m
            .request_duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64()),
    }
    if rt.config.log.access_log {
        let bytes_out = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let upstream = ex
            .route
            .and_then(|i| rt.config.routes.routes.get(i))
            .and_then(|r| rt.config.upstreams.get(r.upstream));
        let (reason, detail) = ex.refusal.map_or((None, None), |(r, d)| (Some(r), d));
        tracing::info!(
            target: "fieldseal::access",
            request_id = ex.id(),
            method = %ex.method,
            path = %ex.path,
            route,
            status,
            reason,
            detail,
            upstream = upstream.map(|u| u.name.as_str()),
            // Only when the request went (or tried to go) there.
            upstream_addr = upstream
                .filter(|_| ex.upstream_elapsed.is_some())
                .map(|u| u.authority.as_str()),
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
}

/// Milliseconds rounded to the microsecond: a number with at most 3
/// decimals, the same precision on every line.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// One audit event per request that encrypted or decrypted fields.
fn audit(shared: &Shared, rt: &Runtime, ex: &Exchange, outcome: &str) -> Result<(), ProxyError> {
    let Some(audit) = &rt.audit else {
        return Ok(());
    };
    let (req, resp) = (&ex.request_report, &ex.response_report);
    if req.encrypted == 0 && resp.decrypted == 0 && resp.failures.is_empty() {
        return Ok(());
    }
    let Some(route) = ex.route.and_then(|i| rt.config.routes.routes.get(i)) else {
        return Ok(());
    };
    let union = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .chain(b.iter().filter(|x| !a.contains(x)))
            .cloned()
            .collect()
    };
    let fields = union(&req.paths, &resp.paths);
    let key_ids = union(&req.key_ids, &resp.key_ids);
    let event = AuditEvent {
        request_id: ex.id().to_string(),
        route: route.name.clone(),
        client: ex.client.to_string(),
        user_agent: ex
            .user_agent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
        method: ex.method.to_string(),
        fields,
        key_ids,
        encrypted: req.encrypted,
        decrypted: resp.decrypted,
        outcome: outcome.to_string(),
    };
    match audit.log.append(&event) {
        Ok(()) => Ok(()),
        Err(e) => {
            shared.metrics.audit_failures.inc();
            tracing::error!(request_id = ex.id(), error = %e, "audit log write failed");
            match audit.on_failure {
                AuditFailureMode::Refuse => Err(ProxyError::AuditUnavailable),
                AuditFailureMode::Serve => Ok(()),
            }
        }
    }
}

async fn pipeline(
    shared: &Shared,
    rt: &Arc<Runtime>,
    req: Request<Incoming>,
    peer: SocketAddr,
    buffers: &Arc<ConnBuffers>,
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, ProxyError> {
    let config = &rt.config;
    let (mut parts, incoming) = req.into_parts();
    let budget = BufferLimits {
        per_connection: config.limits.max_buffered_per_connection,
        total: config.limits.max_buffered_total,
    };

    // 1. The request as we will match and forward it.
    if headers::header_bytes(&parts.headers) > config.limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    check_transfer_coding(&parts.headers)?;
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
    if parts.version == Version::HTTP_11 && !parts.headers.contains_key(header::HOST) {
        return Err(ProxyError::HostRequired);
    }
    let host = request_host(&parts)?;
    if let Some(allowed) = &config.allowed_hosts {
        let ok = host
            .as_ref()
            .is_some_and(|(h, _)| allowed.iter().any(|a| a == h));
        if !ok {
            return Err(ProxyError::MisdirectedHost);
        }
    }
    let canon = canonical_path(parts.uri.path()).map_err(ProxyError::BadPath)?;
    if config.log.access_log {
        ex.path.clone_from(&canon.path);
    }

    // 2. Route.
    let host_name = host.as_ref().map(|(h, _)| h.as_str());
    let index = config
        .routes
        .select(host_name, &canon.match_path, &parts.method)
        .map_err(|_| ProxyError::HostRequired)?
        .ok_or(ProxyError::NoRoute)?;
    let route = route_at(rt, index)?;
    ex.route = Some(index);
    tracing::debug!(request_id = ex.id(), route = %route.name, "route matched");

    // 3. Rate limit, per client.
    let peer_trusted = config.is_trusted_proxy(peer.ip());
    ex.client =
        headers::client_address(&parts.headers, peer.ip(), |ip| config.is_trusted_proxy(ip));
    if let Some(limiter) = rt.limits.for_route(index) {
        limiter
            .check(ex.client)
            .map_err(|wait| ProxyError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            })?;
    }

    // 4. Request body.
    let declared_len = content_length(&parts.headers)?;
    if declared_len.is_some_and(|n| n > route.max_body) {
        return Err(ProxyError::BodyTooLarge {
            limit: route.max_body,
        });
    }
    let out_body = if route.transforms_request() {
        let ring = keyring(rt)?;
        let mut held = buffers.reserve(budget);
        let raw = read_client_body(incoming, route.max_body, rt, &mut held).await?;
        ex.bytes_in = raw.len() as u64;
        if raw.is_empty() {
            parts.headers.remove(header::CONTENT_ENCODING);
            body::empty()
        } else {
            // Two Content-Types could let the backend read the body as
            // something other than the JSON we sealed.
            if parts
                .headers
                .get_all(header::CONTENT_TYPE)
                .iter()
                .nth(1)
                .is_some()
            {
                return Err(ProxyError::BadRequest("more than one Content-Type"));
            }
            if !body::is_json(parts.headers.get(header::CONTENT_TYPE)) {
                return Err(ProxyError::UnsupportedMediaType);
            }
            // Every Content-Encoding line counts (`identity` then `gzip`
            // is gzip); one coding at most, and the value is never echoed.
            let codings = body::codings(parts.headers.get_all(header::CONTENT_ENCODING))
                .filter(|c| c.len() <= 1)
                .ok_or(ProxyError::UnsupportedEncoding)?;
            let plain = body::decode_all(raw, &codings, route.max_body).map_err(|e| match e {
                CollectError::TooLarge => ProxyError::BodyTooLarge {
                    limit: route.max_body,
                },
                _ => ProxyError::BadRequest("request body could not be decompressed"),
            })?;
            held.set(plain.len() as u64);
            let (sealed, report) = offload(rt, plain.len(), move |rt| {
                encrypt_body(&plain, route_at(rt, index)?, keyring(rt)?)
            })
            .await?;
            if let Some(m) = rt.route_metrics.get(index) {
                m.fields_encrypted.inc_by(report.encrypted as u64);
            }
            shared
                .metrics
                .count_encryptions(ring.active_id(), report.encrypted as u64);
            tracing::debug!(
                request_id = ex.id(),
                fields = report.encrypted,
                key_id = ring.active_id(),
                "request fields sealed"
            );
            ex.request_report = report;
            parts.headers.remove(header::CONTENT_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(sealed.len()));
            held.set(sealed.len() as u64);
            body::reserved(Bytes::from(sealed), held)
        }
    } else if declared_len.is_some() || incoming_is_empty(&incoming) {
        // Known length within the limit: stream it untouched.
        ex.bytes_in = declared_len.unwrap_or(0);
        body::boxed(incoming)
    } else {
        // Unknown length: buffer up to the limit so an oversized body is
        // refused before a single byte reaches the upstream.
        let mut held = buffers.reserve(budget);
        let raw = read_client_body(incoming, route.max_body, rt, &mut held).await?;
        ex.bytes_in = raw.len() as u64;
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(raw.len()));
        body::reserved(raw, held)
    };

    // 5. The upstream request, built from the canonical form we matched.
    let upstream = config
        .upstreams
        .get(route.upstream)
        .ok_or(ProxyError::Internal("route upstream"))?;
    let client = rt
        .upstreams
        .get(route.upstream)
        .ok_or(ProxyError::Internal("route upstream"))?;
    let mut pq = String::with_capacity(upstream.base_path.len() + canon.path.len() + 64);
    pq.push_str(&upstream.base_path);
    pq.push_str(&canon.path);
    if let Some(q) = parts.uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let uri = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
    let mut headers = std::mem::take(&mut parts.headers);
    headers::remove_hop_by_hop(&mut headers);
    headers::remove_routing_overrides(&mut headers);
    headers.remove(header::EXPECT);
    headers::set_forwarded(
        &mut headers,
        peer.ip(),
        peer_trusted,
        host.as_ref().and_then(|(_, raw)| raw.to_str().ok()),
    );
    match &upstream.host {
        HostHeader::Preserve => match &host {
            Some((_, raw)) => {
                headers.insert(header::HOST, raw.clone());
            }
            None => {
                headers.remove(header::HOST);
            }
        },
        HostHeader::Upstream => {
            headers.remove(header::HOST);
        }
        HostHeader::Fixed(v) => {
            headers.insert(header::HOST, v.clone());
        }
    }
    headers.insert(X_REQUEST_ID.clone(), ex.request_id.clone());
    if route.transforms_response() {
        // Ask for an answer we can read; a compressed one is still decoded below.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let mut up_req = Request::new(out_body);
    *up_req.method_mut() = parts.method.clone();
    *up_req.uri_mut() = uri;
    *up_req.version_mut() = Version::HTTP_11;
    *up_req.headers_mut() = headers;

    let sent = Instant::now();
    let resp = client.send(up_req).await;
    ex.upstream_elapsed = Some(sent.elapsed());
    if let Some(h) = rt.upstream_metrics.get(route.upstream) {
        h.observe(sent.elapsed().as_secs_f64());
    }
    let resp = resp?;
    let (mut rparts, rbody) = resp.into_parts();
    ex.upstream_status = Some(rparts.status.as_u16());
    // We never ask the upstream for an upgrade (Upgrade is hop-by-hop and
    // removed), so a 101 is a broken upstream; on HTTP/2 it is forbidden.
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::UpstreamProtocol);
    }
    // A transfer coding hyper does not undo (`gzip, chunked`) would reach
    // the client as coded bytes with nothing saying so.
    if !transfer_coding_is_chunked_only(&rparts.headers) {
        return Err(ProxyError::UpstreamProtocol);
    }
    headers::remove_hop_by_hop(&mut rparts.headers);
    rparts.version = Version::HTTP_11;

    // 6. Response body.
    let decrypting = route.transforms_response() && may_have_body(&parts.method, rparts.status);
    // Two Content-Types: a client could read the answer as JSON where we did
    // not, and get envelopes still sealed.
    if decrypting
        && rparts
            .headers
            .get_all(header::CONTENT_TYPE)
            .iter()
            .nth(1)
            .is_some()
    {
        return Err(ProxyError::UpstreamProtocol);
    }
    let body = if decrypting && body::is_json(rparts.headers.get(header::CONTENT_TYPE)) {
        // Read before buffering: an answer with codings we can't undo is
        // refused without holding it.
        let codings = body::codings(rparts.headers.get_all(header::CONTENT_ENCODING))
            .filter(|c| c.len() <= body::MAX_STACKED_CODINGS)
            .ok_or(ProxyError::UpstreamProtocol)?;
        let mut held = buffers.reserve(budget);
        let raw = body::collect_reserved(
            rbody,
            config.limits.max_response_body,
            client.timeout(),
            &mut held,
        )
        .await
        .map_err(|e| match e {
            CollectError::TooLarge => ProxyError::UpstreamTooLarge {
                limit: config.limits.max_response_body,
            },
            CollectError::Timeout => ProxyError::UpstreamTimeout,
            CollectError::Broken => ProxyError::UpstreamBody,
            CollectError::OverBudget => ProxyError::BufferLimit,
        })?;
        let plain = body::decode_all(raw, &codings, config.limits.max_response_body).map_err(
            |e| match e {
                CollectError::TooLarge => ProxyError::UpstreamTooLarge {
                    limit: config.limits.max_response_body,
                },
                _ => ProxyError::UpstreamBody,
            },
        )?;
        held.set(plain.len() as u64);
        let (out, report) = offload(rt, plain.len(), move |rt| {
            Ok(decrypt_body(plain, route_at(rt, index)?, keyring(rt)?))
        })
        .await?;
        let m = &shared.metrics;
        for f in &report.failures {
            m.decrypt_failures
                .get_or_create(&RouteReason {
                    route: route.name.clone(),
                    reason: f.reason.to_string(),
                })
                .inc();
            tracing::warn!(
                request_id = ex.id(),
                route = %route.name,
                field = %f.location,
                key_id = f.key_id.as_deref().unwrap_or("-"),
                reason = f.reason,
                "field could not be decrypted"
            );
        }
        if let Some(rm) = rt.route_metrics.get(index) {
            rm.fields_decrypted.inc_by(report.decrypted as u64);
        }
        let out = match out {
            Ok(out) => out,
            Err(failure) => {
                ex.response_report = report;
                return Err(ProxyError::Decrypt(failure));
            }
        };
        tracing::debug!(
            request_id = ex.id(),
            fields = report.decrypted,
            failed = report.failures.len(),
            "response fields opened"
        );
        ex.response_report = report;
        rparts.headers.remove(header::CONTENT_ENCODING);
        rparts.headers.remove("content-md5");
        rparts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        weaken_etag(&mut rparts.headers);
        held.set(out.len() as u64);
        body::reserved(Bytes::from(out), held)
    } else {
        body::boxed(body::IdleTimeout::new(rbody, client.timeout()))
    };
    Ok(Response::from_parts(rparts, body))
}

fn keyring(rt: &Runtime) -> Result<&Keyring, ProxyError> {
    // Config validation refuses rules without keys; this is the fail-closed backstop.
    rt.keyring
        .as_deref()
        .ok_or(ProxyError::Internal("no keyring for a transforming route"))
}

fn incoming_is_empty(b: &Incoming) -> bool {
    http_body::Body::is_end_stream(b)
}

async fn read_client_body(
    incoming: Incoming,
    limit: u64,
    rt: &Runtime,
    held: &mut Reservation,
) -> Result<Bytes, ProxyError> {
    body::collect_reserved(incoming, limit, rt.config.limits.body_read_timeout, held)
        .await
        .map_err(|e| match e {
            CollectError::TooLarge => ProxyError::BodyTooLarge { limit },
            CollectError::Timeout => ProxyError::ClientTimeout,
            CollectError::Broken => ProxyError::ClientBody,
            CollectError::OverBudget => ProxyError::BufferLimit,
        })
}

/// The transfer codings of a message across all its Transfer-Encoding
/// lines, lowercase. None when a value is not text.
fn transfer_codings(h: &HeaderMap) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for v in h.get_all(header::TRANSFER_ENCODING) {
        for t in v.to_str().ok()?.split(',') {
            let t = t.trim();
            if !t.is_empty() {
                out.push(t.to_ascii_lowercase());
            }
        }
    }
    Some(out)
}

fn transfer_coding_is_chunked_only(h: &HeaderMap) -> bool {
    transfer_codings(h).is_some_and(|t| t.is_empty() || t == ["chunked"])
}

/// hyper undoes `chunked` and drops any coding listed before it, so
/// `Transfer-Encoding: gzip, chunked` would reach the backend as gzip bytes
/// labelled as nothing. RFC 9112 §6.1: a coding we don't implement is a 501;
/// `chunked` twice is malformed.
fn check_transfer_coding(h: &HeaderMap) -> Result<(), ProxyError> {
    let Some(codings) = transfer_codings(h) else {
        return Err(ProxyError::TransferCodingNotImplemented);
    };
    if codings.iter().any(|c| c != "chunked") {
        return Err(ProxyError::TransferCodingNotImplemented);
    }
    if codings.len() > 1 {
        return Err(ProxyError::BadRequest("chunked applied more than once"));
    }
    Ok(())
}

fn content_length(h: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    let mut values = h.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Content-Length"));
    }
    first
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or(ProxyError::BadRequest("invalid Content-Length"))
}

fn may_have_body(method: &Method, status: StatusCode) -> bool {
    method != Method::HEAD
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// A transformed body is not the upstream's byte sequence: its ETag can only
/// stand as a weak validator.
fn weaken_etag(h: &mut HeaderMap) {
    if let Some(tag) = h.get(header::ETAG).and_then(|v| v.to_str().ok()) {
        if !tag.starts_with("W/") {
            if let Ok(weak) = HeaderValue::from_str(&format!("W/{tag}")) {
                h.insert(header::ETAG, weak);
            }
        }
    }
}

/// The request's host, lowercase without port, and the raw value to forward.
/// HTTP/2's :authority and HTTP/1.1's Host must agree when both are given.
fn request_host(parts: &Parts) -> Result<Option<(String, HeaderValue)>, ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let uri_host = parts.uri.authority();
    let raw = match (uri_host, header_host) {
        (Some(a), Some(h)) => {
            if !a.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) {
                return Err(ProxyError::BadRequest(
                    "Host header and request target disagree",
                ));
            }
            h.clone()
        }
        (Some(a), None) => HeaderValue::from_str(a.as_str())
            .map_err(|_| ProxyError::BadRequest("invalid authority"))?,
        (None, Some(h)) => h.clone(),
        (None, None) => return Ok(None),
    };
    let auth: http::uri::Authority = raw
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProxyError::BadRequest("invalid Host header"))?;
    if auth.as_str().contains('@') {
        return Err(ProxyError::BadRequest("userinfo is not allowed in Host"));
    }
    Ok(Some((
        auth.host().trim_end_matches('.').to_ascii_lowercase(),
        raw,
    )))
}

/// Runs a body transform inline, or on the blocking pool when the body is
/// larger than `limits.offload_threshold`, so a 1 MiB document doesn't
/// stall the other connections of this worker thread.
async fn offload<T, F>(rt: &Arc<Runtime>, len: usize, f: F) -> Result<T, ProxyError>
where
    T: Send + 'static,
    F: FnOnce(&Runtime) -> Result<T, ProxyError> + Send + 'static,
{
    if len <= rt.config.limits.offload_threshold {
        return f(rt);
    }
    let rt = Arc::clone(rt);
    tokio::task::spawn_blocking(move || f(&rt))
        .await
        .map_err(|_| ProxyError::Internal("transform task failed"))?
}

fn route_at(rt: &Runtime, index: usize) -> Result<&Route, ProxyError> {
    rt.config
        .routes
        .routes
        .get(index)
        .ok_or(ProxyError::Internal("route"))
}

pub fn encrypt_body(
    raw: &[u8],
    route: &Route,
    ring: &Keyring,
) -> Result<(Vec<u8>, TransformReport), ProxyError> {
    let Some(spec) = &route.seal else {
        return Ok((raw.to_vec(), TransformReport::default()));
    };
    // One streaming pass over the bytes (see `transform`): strict JSON
    // validation, depth limit, the route's schema and look-alike check,
    // sealing; unselected bytes copied verbatim.
    transform::encrypt_request(raw, spec, ring.into(), unix_now()).map_err(|e| match e {
        TransformError::InvalidJson => ProxyError::InvalidJson,
        TransformError::TooDeep { limit } => ProxyError::TooDeep { limit },
        TransformError::LookAlike { .. } => {
            // The rule and a location showing only its own names: no
            // client content.
            tracing::debug!(route = %route.name, error = %e, "request refused");
            ProxyError::LookAlike
        }
        TransformError::Schema => ProxyError::Schema("it does not match"),
        TransformError::DuplicateMember => ProxyError::Schema("it repeats a member name"),
        TransformError::FieldTooLarge => ProxyError::FieldTooLarge,
        TransformError::FieldTooDeep => ProxyError::TooDeep {
            limit: crate::crypto::MAX_SEAL_DEPTH,
        },
        TransformError::Seal | TransformError::Decrypt(_) => {
            tracing::error!(route = %route.name, error = %e, "field encryption failed");
            ProxyError::Internal("field encryption failed")
        }
    })
}

type DecryptOutcome = (Result<Vec<u8>, DecryptFailure>, TransformReport);

pub fn decrypt_body(raw: Bytes, route: &Route, ring: &Keyring) -> DecryptOutcome {
    let Some(spec) = &route.open else {
        return (Ok(raw.to_vec()), TransformReport::default());
    };
    match transform::decrypt(&raw, spec, ring, unix_now()) {
        Ok((out, report)) => (Ok(out), report),
        Err(TransformError::InvalidJson | TransformError::TooDeep { .. }) => {
            // Not JSON after all (e.g. a truncated error page): it holds no
            // field we could find, so it goes out as the upstream sent it.
            tracing::debug!(route = %route.name, "JSON response did not parse; passed through");
            (Ok(raw.to_vec()), TransformReport::default())
        }
        Err(TransformError::Decrypt(f)) => {
            let report = TransformReport {
                failures: vec![f.clone()],
                ..TransformReport::default()
            };
            (Err(f), report)
        }
        Err(e) => {
            tracing::error!(route = %route.name, error = %e, "field decryption failed");
            let f = DecryptFailure {
                location: "$".into(),
                key_id: None,
                reason: "internal",
            };
            (
                Err(f.clone()),
                TransformReport {
                    failures: vec![f],
                    ..TransformReport::default()
                },
            )
        }
    }
}
