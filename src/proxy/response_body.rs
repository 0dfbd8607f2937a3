//! Stage 5, the response body: streamed as is (with an idle deadline), or
//! (on a route that opens answers) buffered within
//! `limits.max_response_body`, decoded, and opened in one pass.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version};

use super::admit::transfer_codings;
use super::{offload, Exchange, Held};
use crate::body::{self, CollectError, ProxyBody};
use crate::crypto::{unix_now, Keyring, SubjectKeys};
use crate::error::{ClientError, LocalError, ProxyError, UpstreamError};
use crate::headers;
use crate::metrics::RouteReason;
use crate::routes::Route;
use crate::state::{RouteRuntime, Runtime, Shared, Transform};
use crate::transform::{self, DecryptFailure, OpenSpec, TransformError, TransformReport};

/// The answer to send the client for the upstream's `answer` to `method`.
pub(super) async fn response_body<B>(
    shared: &Shared,
    rt: &Runtime,
    route: &Arc<RouteRuntime>,
    method: &Method,
    answer: Response<B>,
    held: &Held<'_>,
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parts, incoming) = answer.into_parts();
    // We never ask the upstream for an upgrade (Upgrade is hop-by-hop and
    // removed), so a 101 is a broken upstream; on HTTP/2 it is forbidden.
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::from(UpstreamError::UpstreamProtocol));
    }
    // A transfer coding hyper does not undo (`gzip, chunked`) would reach
    // the client as coded bytes with nothing saying so.
    if !transfer_codings(&parts.headers).is_some_and(|t| t.is_empty() || t == ["chunked"]) {
        return Err(ProxyError::from(UpstreamError::UpstreamProtocol));
    }
    headers::remove_hop_by_hop(&mut parts.headers);
    // RFC 9110 §8.6: a server must not send Content-Length in a 1xx or 204
    // answer (which never has content). Legacy upstreams do; relayed to
    // HTTP/2 it is a stream curl rejects as a protocol error. A 304's
    // Content-Length describes the selected representation and may stay.
    if parts.status.is_informational() || parts.status == StatusCode::NO_CONTENT {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    parts.version = Version::HTTP_11;
    let timeout = route.upstream.timeout();
    let open = route
        .open
        .as_ref()
        .filter(|_| may_have_body(method, parts.status));
    let Some(open) = open else {
        return Ok(Response::from_parts(
            parts,
            body::boxed(body::IdleTimeout::new(incoming, timeout)),
        ));
    };
    // Two Content-Types: a client could read the answer as JSON where we
    // did not, and get envelopes still sealed.
    if crate::headers::repeated(&parts.headers, header::CONTENT_TYPE) {
        return Err(ProxyError::from(UpstreamError::UpstreamProtocol));
    }
    if !body::is_json(parts.headers.get(header::CONTENT_TYPE)) {
        return Ok(Response::from_parts(
            parts,
            body::boxed(body::IdleTimeout::new(incoming, timeout)),
        ));
    }
    opened(shared, rt, route, open, parts, incoming, held, ex).await
}

/// The answer of a route that opens answers, JSON: buffered within
/// `limits.max_response_body`, decoded, its envelopes opened.
#[allow(clippy::too_many_arguments)]
async fn opened<B>(
    shared: &Shared,
    rt: &Runtime,
    route: &Arc<RouteRuntime>,
    open: &Arc<Transform<OpenSpec>>,
    mut parts: http::response::Parts,
    incoming: B,
    held: &Held<'_>,
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let timeout = route.upstream.timeout();
    // Read before buffering: an answer with codings we can't undo is
    // refused without holding it.
    let codings = body::codings(parts.headers.get_all(header::CONTENT_ENCODING))
        .filter(|c| c.len() <= body::MAX_STACKED_CODINGS)
        .ok_or(ProxyError::from(UpstreamError::UpstreamProtocol))?;
    let limit = rt.config.limits.max_response_body;
    let mut reservation = held.reserve();
    let raw = body::collect_reserved(incoming, limit, timeout, &mut reservation)
        .await
        .map_err(|e| match e {
            CollectError::TooLarge => ProxyError::from(UpstreamError::UpstreamTooLarge { limit }),
            CollectError::Timeout => ProxyError::from(UpstreamError::UpstreamTimeout),
            CollectError::Broken => ProxyError::from(UpstreamError::UpstreamBody),
            CollectError::OverBudget => ProxyError::from(LocalError::BufferLimit),
        })?;
    let plain = body::decode_all(raw, &codings, limit, &mut reservation).map_err(|e| match e {
        CollectError::TooLarge => ProxyError::from(UpstreamError::UpstreamTooLarge { limit }),
        CollectError::OverBudget => ProxyError::from(LocalError::BufferLimit),
        _ => ProxyError::from(UpstreamError::UpstreamBody),
    })?;
    let input = plain.len() as u64;
    let subject = super::subject_keys::for_request(rt, route, ex, false).await?;
    let (subject, role) = if route.route.read_any_subject.is_empty() {
        (subject, None)
    } else {
        super::subject_keys::for_role_reader(rt, route, ex, subject, &plain).await?
    };
    let (out, report) = {
        let (route, open) = (Arc::clone(route), Arc::clone(open));
        offload(rt, plain.len(), move || {
            let subjects = subject.as_deref().unwrap_or(SubjectKeys::none());
            open_with(plain, &route.route, &open.spec, &open.keys, subjects)
        })
        .await?
    };
    for f in &report.failures {
        shared
            .metrics
            .decrypt_failures
            .get_or_create(&RouteReason {
                route: route.route.name.clone(),
                reason: f.reason.to_string(),
            })
            .inc();
        tracing::warn!(
            request_id = ex.id(),
            route = %route.route.name,
            field = %f.location,
            key_id = f.key_id.as_deref().unwrap_or("-"),
            reason = f.reason,
            "field could not be decrypted"
        );
    }
    route
        .metrics
        .fields_decrypted
        .inc_by(report.decrypted as u64);
    if let Some((reader, looked_up)) = role {
        // Read: a looked-up subject one of whose keys opened an envelope.
        let subjects: Vec<String> = looked_up
            .into_iter()
            .filter(|r| {
                report.key_ids.iter().any(|k| {
                    k.strip_prefix(r.as_str())
                        .is_some_and(|v| v.starts_with(':'))
                })
            })
            .collect();
        if !subjects.is_empty() {
            route
                .metrics
                .role_subject_reads
                .inc_by(subjects.len() as u64);
            ex.role_access = Some(crate::audit::SubjectAccess { reader, subjects });
        }
    }
    let out = match out {
        Ok(out) => out,
        Err(failure) => {
            ex.response_report = report;
            return Err(match failure.reason {
                "erased" => ProxyError::from(ClientError::Erased),
                "foreign_subject" => ProxyError::from(ClientError::ForeignSubject),
                _ => ProxyError::from(UpstreamError::Decrypt(failure)),
            });
        }
    };
    tracing::debug!(
        request_id = ex.id(),
        fields = report.decrypted,
        failed = report.failures.len(),
        "response fields opened"
    );
    ex.response_report = report;
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove("content-md5");
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    weaken_etag(&mut parts.headers);
    // The opened body is counted before it is held: with the input (which
    // the transform held alongside it), then alone.
    if !reservation.try_grow(out.len() as u64) {
        return Err(ProxyError::from(LocalError::BufferLimit));
    }
    reservation.shrink_to(reservation.bytes().saturating_sub(input));
    Ok(Response::from_parts(
        parts,
        body::reserved(Bytes::from(out), reservation),
    ))
}

type DecryptOutcome = (Result<Vec<u8>, DecryptFailure>, TransformReport);

/// Opens an answer's body as `route` says, with `ring`: the stage's work
/// without a socket (benchmarks and tests call it).
pub fn decrypt_body(raw: Bytes, route: &Route, ring: &Keyring) -> DecryptOutcome {
    match &route.open {
        Some(spec) => open_with(raw, route, spec, ring, SubjectKeys::none()),
        None => (Ok(raw.to_vec()), TransformReport::default()),
    }
}

fn open_with(
    raw: Bytes,
    route: &Route,
    spec: &OpenSpec,
    ring: &Keyring,
    subjects: &SubjectKeys,
) -> DecryptOutcome {
    match transform::decrypt_with(&raw, spec, ring, subjects, unix_now()) {
        Ok((out, report)) if route.drop_in_response.is_empty() => (Ok(out), report),
        Ok((out, report)) => {
            let out = transform::index::drop_members(&out, &route.drop_in_response).unwrap_or(out);
            (Ok(out), report)
        }
        Err(TransformError::InvalidJson | TransformError::TooDeep { .. }) => {
            // Not JSON after all (e.g. a truncated error page): it holds no
            // field we could find, so it goes out as the upstream sent it.
            tracing::debug!(route = %route.name, "JSON response did not parse; passed through");
            (Ok(raw.to_vec()), TransformReport::default())
        }
        Err(e) => {
            let failure = match e {
                TransformError::Decrypt(f) => f,
                e => {
                    tracing::error!(route = %route.name, error = %e, "field decryption failed");
                    DecryptFailure {
                        location: "$".into(),
                        key_id: None,
                        reason: "internal",
                    }
                }
            };
            let report = TransformReport {
                failures: vec![failure.clone()],
                ..TransformReport::default()
            };
            (Err(failure), report)
        }
    }
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
