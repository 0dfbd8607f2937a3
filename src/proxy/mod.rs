//! The request pipeline as named stages, in request order:
//!
//! 1. [`admit`]: the request as it will be matched and forwarded (header
//!    limits, transfer codings, host, canonical path), its route, the
//!    client's rate limit; then, on routes with `auth`, who the caller is
//!    (a verified bearer JWT, or 401);
//! 2. [`request_body`]: streamed as is, or buffered and sealed;
//! 3. [`forward`]: the upstream request, built from the canonical form that
//!    was matched;
//! 4. the upstream, through the route's pooled client;
//! 5. [`response_body`]: streamed as is, or buffered, decoded and opened;
//! 6. [`finish`]: security headers, request id, metrics, access log, audit.
//!
//! Every stage that can fail returns a `ProxyError`; [`handle`] turns it
//! into the one JSON answer (`error::respond`). Nothing is forwarded until
//! the request is fully checked and, on encrypting routes, fully sealed.

mod admit;
mod finish;
mod forward;
mod request_body;
mod request_id;
mod response_body;
mod subject_keys;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::body::{BufferLimits, ConnBuffers, ProxyBody};
use crate::error::{LocalError, ProxyError, UpstreamError};
use crate::state::{RouteRuntime, Runtime, Shared};
use crate::transform::TransformReport;

pub use request_body::encrypt_body;
pub use request_id::is_well_formed_request_id;
pub use response_body::decrypt_body;

/// What the access log, metrics and audit need to know about one request,
/// filled in as the stages learn it.
struct Exchange {
    /// Built once and shared (refcounted) by the upstream request, the
    /// response and the logs.
    request_id: HeaderValue,
    method: Method,
    /// The canonical path; only kept when the access log is on.
    path: String,
    route: Option<Arc<RouteRuntime>>,
    client: IpAddr,
    user_agent: Option<HeaderValue>,
    upstream_status: Option<u16>,
    /// The server of the upstream that answered (None: the upstream's one server).
    upstream_server: Option<http::uri::Authority>,
    /// From sending the request upstream to its answer's head (or failure).
    upstream_elapsed: Option<std::time::Duration>,
    /// Why the proxy answered with its own error instead of the upstream's answer.
    refusal: Option<(&'static str, Option<&'static str>)>,
    bytes_in: u64,
    request_report: TransformReport,
    response_report: TransformReport,
    /// Who the verified token says the caller is (routes with `auth`).
    principal: Option<crate::identity::Principal>,
    /// The caller's data keys on a tenant- or subject-scoped route, once
    /// resolved (and whether for a write, which may have created one).
    subject_keys: Option<(bool, Arc<crate::crypto::SubjectKeys>)>,
    /// Other subjects whose data a `read_any_subject` role holder read in
    /// this request (audited with the reader's reference; refused if that
    /// audit line can't be written).
    role_access: Option<crate::audit::SubjectAccess>,
    /// Protected query, form and path pairs sealed, indexed or refused.
    pairs: PairsSeen,
}

/// What happened to a request's protected pairs, by source (indexes of
/// `metrics::PAIR_SOURCES`: query, form, path).
#[derive(Default)]
struct PairsSeen {
    reports: [crate::transform::pairs::PairsReport; 3],
    /// The source of the pair that refused the request.
    refused: Option<usize>,
}

const PAIRS_QUERY: usize = 0;
const PAIRS_FORM: usize = 1;
const PAIRS_PATH: usize = 2;

impl Exchange {
    fn new(
        request_id: HeaderValue,
        method: Method,
        client: IpAddr,
        user_agent: Option<HeaderValue>,
    ) -> Exchange {
        Exchange {
            request_id,
            method,
            // Set to the canonical path once it is known: a path refused as
            // malformed is never logged (it is client input, and may be anything).
            path: String::new(),
            route: None,
            client,
            user_agent,
            upstream_status: None,
            upstream_server: None,
            upstream_elapsed: None,
            refusal: None,
            bytes_in: 0,
            request_report: TransformReport::default(),
            response_report: TransformReport::default(),
            principal: None,
            subject_keys: None,
            role_access: None,
            pairs: PairsSeen::default(),
        }
    }

    fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}

/// What the requests of one client connection share, made once when it
/// is accepted.
pub struct Conn {
    pub peer: SocketAddr,
    /// The peer's address as an X-Forwarded-For value.
    pub forwarded_for: HeaderValue,
    pub buffers: Arc<ConnBuffers>,
}

impl Conn {
    pub fn new(peer: SocketAddr, buffers: ConnBuffers) -> Conn {
        Conn {
            peer,
            forwarded_for: crate::headers::forwarded_for(peer.ip()),
            buffers: Arc::new(buffers),
        }
    }
}

/// One request, start to answer: the stages, then the refusal (if any) as
/// the one synthetic answer, then `finish`.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    conn: Arc<Conn>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let peer = conn.peer;
    let rt = shared.runtime.load_full();
    let mut ex = Exchange::new(
        request_id::for_request(&rt, &req, peer),
        req.method().clone(),
        peer.ip(),
        req.headers().get(header::USER_AGENT).cloned(),
    );
    let result = match stages(&shared, &rt, req, &conn, &mut ex).await {
        Ok(resp) => finish::audit(&shared, &rt, &ex, "ok").map(|()| resp),
        Err(e) => {
            if matches!(e, ProxyError::Upstream(UpstreamError::Decrypt(_))) {
                // The refusal itself is worth an audit line; its failure can't make it worse.
                let _ = finish::audit(&shared, &rt, &ex, "decrypt_failed");
            }
            Err(e)
        }
    };
    if let Some(route) = &ex.route {
        let m = &route.metrics.pairs;
        for (source, r) in ex.pairs.reports.iter().enumerate() {
            m.add(source, 0, r.sealed as u64);
            m.add(source, 1, r.indexed as u64);
        }
        if let Some(source) = ex.pairs.refused {
            m.add(source, 2, 1);
        }
    }
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            finish::count_refusal(&shared, &ex, &e);
            ex.refusal = Some((e.reason(), e.detail()));
            crate::error::respond(&e)
        }
    };
    Ok(finish::finish(&shared, &rt, &ex, response, start))
}

/// The stages of one request, in order.
async fn stages(
    shared: &Shared,
    rt: &Runtime,
    req: Request<Incoming>,
    conn: &Conn,
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, incoming) = req.into_parts();
    let admitted = admit::admit(rt, &parts, conn.peer, ex).await?;
    let route = Arc::clone(&admitted.route);
    ex.principal = admit::identify(rt, &route, &mut parts, admitted.peer_trusted).await?;
    // Query pairs and path segments sealed or indexed under the request's
    // own data key (tenant and subject routes).
    let needs_keys = (parts.uri.query().is_some()
        && route.route.query.as_ref().is_some_and(|q| q.needs_keys()))
        || route
            .route
            .path_params
            .iter()
            .any(|p| matches!(p, Some(crate::routes::template::PathParamAction::Index(_))));
    let subject = match needs_keys {
        true => subject_keys::for_request(rt, &route, ex, true).await?,
        false => None,
    };
    let keys = match rt.keyring.as_deref() {
        Some(ring) => Some(request_body::request_keys(
            &route.route,
            ring,
            subject.as_deref(),
        )?),
        None => None,
    };
    // The request's id, shared (a refcount) so the body stage may borrow
    // the exchange in between.
    let request_id = ex.request_id.clone();
    let target = || forward::Target {
        upstream: &route.upstream.spec,
        path: &admitted.path.path,
        host: admitted.host.as_ref(),
        peer: admitted.peer,
        forwarded_for: &conn.forwarded_for,
        peer_trusted: admitted.peer_trusted,
        request_id: &request_id,
        reads_answer: route.open.is_some(),
        query: route.route.query.as_ref(),
        keys,
        now: crate::crypto::unix_now(),
        template: route.route.template.as_ref().map(|t| forward::Template {
            template: t,
            params: &route.route.path_params,
            match_path: admitted.path.match_path(),
            case_insensitive: route.route.case_insensitive,
        }),
    };
    // The query and the path are judged (sealed, indexed or refused)
    // before the body is read: a refused one is answered at once, not
    // after waiting for a body that is never forwarded.
    let uri = forward::upstream_uri(&parts.uri, &target(), &mut ex.pairs)?;
    let limits = &rt.config.limits;
    let held = Held {
        buffers: &conn.buffers,
        budget: BufferLimits {
            per_connection: limits.max_buffered_per_connection,
            total: limits.max_buffered_total,
        },
    };
    let body = request_body::request_body(rt, &route, &mut parts, incoming, &held, ex).await?;
    let method = parts.method.clone();
    let upstream_req = forward::request(parts, body, uri, &target());

    let sent = Instant::now();
    let answer = route.upstream.send(upstream_req).await;
    ex.upstream_elapsed = Some(sent.elapsed());
    let answer = answer?;
    ex.upstream_status = Some(answer.status().as_u16());
    ex.upstream_server = answer
        .extensions()
        .get::<crate::upstream::ServedBy>()
        .map(|s| s.0.clone());

    response_body::response_body(shared, rt, &route, &method, answer, &held, ex).await
}

/// Where a stage that buffers a body reserves its bytes.
struct Held<'a> {
    buffers: &'a Arc<ConnBuffers>,
    budget: BufferLimits,
}

impl Held<'_> {
    fn reserve(&self) -> crate::body::Reservation {
        self.buffers.reserve(self.budget)
    }
}

/// Runs a body transform inline, or on the blocking pool when the body is
/// larger than `limits.offload_threshold`, so a 1 MiB document doesn't
/// stall the other connections of this worker thread.
async fn offload<T, F>(rt: &Runtime, len: usize, f: F) -> Result<T, ProxyError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if len <= rt.config.limits.offload_threshold {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ProxyError::from(LocalError::Internal("transform task failed")))
}
