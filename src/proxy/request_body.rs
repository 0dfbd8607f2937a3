//! Stage 2, the request body: streamed untouched, or (on a route that
//! seals) buffered within `max_body`, decoded, and sealed in one pass.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;

use super::{offload, Exchange, Held};
use crate::body::{self, CollectError, ProxyBody};
use crate::crypto::{unix_now, Keyring, SubjectKeys};
use crate::error::{ClientError, LocalError, ProxyError};
use crate::routes::Route;
use crate::state::{RouteRuntime, Runtime};
use crate::transform::index::IndexKeys;
use crate::transform::{self, Keys, SealSpec, TransformError, TransformReport};

/// The body to forward for `parts`. Refusals come before a byte is sent.
pub(super) async fn request_body<B>(
    rt: &Runtime,
    route: &Arc<RouteRuntime>,
    parts: &mut Parts,
    incoming: B,
    held: &Held<'_>,
    ex: &mut Exchange,
) -> Result<ProxyBody, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max_body = route.route.max_body;
    let declared_len = content_length(&parts.headers)?;
    if declared_len.is_some_and(|n| n > max_body) {
        return Err(ProxyError::from(ClientError::BodyTooLarge {
            limit: max_body,
        }));
    }
    let read_timeout = rt.config.limits.body_read_timeout;
    let form_spec = route.route.form.as_ref();
    if route.seal.is_none() && form_spec.is_none() {
        if declared_len.is_some() || incoming.is_end_stream() {
            // Known length within the limit: stream it untouched.
            ex.bytes_in = declared_len.unwrap_or(0);
            return Ok(body::boxed(incoming));
        }
        // Unknown length: buffer up to the limit so an oversized body is
        // refused before a single byte reaches the upstream.
        let mut reservation = held.reserve();
        let raw = read_client_body(incoming, max_body, read_timeout, &mut reservation).await?;
        ex.bytes_in = raw.len() as u64;
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(raw.len()));
        return Ok(body::reserved(raw, reservation));
    }
    let mut reservation = held.reserve();
    let raw = read_client_body(incoming, max_body, read_timeout, &mut reservation).await?;
    ex.bytes_in = raw.len() as u64;
    if raw.is_empty() {
        parts.headers.remove(header::CONTENT_ENCODING);
        return Ok(body::empty());
    }
    // Two Content-Types could let the backend read the body as something
    // other than the JSON we sealed.
    if crate::headers::repeated(&parts.headers, header::CONTENT_TYPE) {
        return Err(ProxyError::from(ClientError::BadRequest(
            "more than one Content-Type",
        )));
    }
    // What the route can transform: JSON with encrypt rules, urlencoded
    // forms with a `form:` section. Anything else (multipart included)
    // could carry the fields past us: 415.
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    let form = match (form_spec, &route.seal) {
        (Some(f), _) if body::is_form(content_type) => Some(f),
        (_, Some(_)) if body::is_json(content_type) => None,
        _ => return Err(ProxyError::from(ClientError::UnsupportedMediaType)),
    };
    let json_patch = body::is_json_patch(content_type);
    // Every Content-Encoding line counts (`identity` then `gzip` is gzip);
    // one coding at most, and the value is never echoed.
    let codings = body::codings(parts.headers.get_all(header::CONTENT_ENCODING))
        .filter(|c| c.len() <= 1)
        .ok_or(ProxyError::from(ClientError::UnsupportedEncoding))?;
    let plain =
        body::decode_all(raw, &codings, max_body, &mut reservation).map_err(|e| match e {
            CollectError::TooLarge => {
                ProxyError::from(ClientError::BodyTooLarge { limit: max_body })
            }
            CollectError::OverBudget => ProxyError::from(LocalError::BufferLimit),
            _ => ProxyError::from(ClientError::BadRequest(
                "request body could not be decompressed",
            )),
        })?;
    let input = plain.len() as u64;
    if let Some(spec) = form {
        let text = std::str::from_utf8(&plain)
            .map_err(|_| ProxyError::from(ClientError::BadRequest("the form body is not UTF-8")))?;
        let subject = super::subject_keys::for_request(rt, route, ex, true).await?;
        let keys = match rt.keyring.as_deref() {
            Some(ring) => Some(request_keys(&route.route, ring, subject.as_deref())?),
            None => None,
        };
        let report = &mut ex.pairs.reports[super::PAIRS_FORM];
        let out = transform::pairs::rewrite_reporting(text, spec, keys, unix_now(), report)
            .map_err(|e| {
                if matches!(e, transform::pairs::PairsError::Protected { .. }) {
                    ex.pairs.refused = Some(super::PAIRS_FORM);
                }
                ProxyError::from_pairs(e)
            })?;
        let out = match out {
            Some(o) => {
                // Counted before it is held, with the input, then alone.
                if !reservation.try_grow(o.len() as u64) {
                    return Err(ProxyError::from(LocalError::BufferLimit));
                }
                reservation.shrink_to(reservation.bytes().saturating_sub(input));
                Bytes::from(o)
            }
            None => plain,
        };
        parts.headers.remove(header::CONTENT_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        return Ok(body::reserved(out, reservation));
    }
    let Some(seal) = &route.seal else {
        return Err(ProxyError::from(ClientError::UnsupportedMediaType));
    };
    let subject = super::subject_keys::for_request(rt, route, ex, true).await?;
    let (sealed, report) = {
        let (route, seal) = (Arc::clone(route), Arc::clone(seal));
        offload(rt, plain.len(), move || {
            // A JSON Patch names the fields it writes in data: judged
            // before the walk, which reads it as plain JSON.
            transform::check_patch(&plain, &seal.spec, json_patch).map_err(|e| {
                tracing::debug!(route = %route.route.name, error = %e, "request refused");
                ProxyError::from_request_transform(e)
            })?;
            seal_with(
                &plain,
                &route.route,
                &seal.spec,
                &seal.keys,
                subject.as_deref(),
            )
        })
        .await??
    };
    route
        .metrics
        .fields_encrypted
        .inc_by(report.encrypted as u64);
    if let Some(counter) = &route.sealed_under {
        counter.count(report.encrypted as u64);
    }
    tracing::debug!(
        request_id = ex.id(),
        fields = report.encrypted,
        key_id = route.sealed_under.as_ref().map(|c| c.key_id()),
        "request fields sealed"
    );
    ex.request_report = report;
    parts.headers.remove(header::CONTENT_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(sealed.len()));
    // The sealed body is counted before it is held: with the input (which
    // the transform held alongside it), then alone.
    if !reservation.try_grow(sealed.len() as u64) {
        return Err(ProxyError::from(LocalError::BufferLimit));
    }
    reservation.shrink_to(reservation.bytes().saturating_sub(input));
    Ok(body::reserved(Bytes::from(sealed), reservation))
}

/// Seals a request body as `route` says, with `ring`'s active key: the
/// stage's work without a socket (benchmarks and tests call it).
pub fn encrypt_body(
    raw: &[u8],
    route: &Route,
    ring: &Keyring,
) -> Result<(Vec<u8>, TransformReport), ProxyError> {
    match &route.seal {
        Some(spec) => seal_with(raw, route, spec, ring, None),
        None => Ok((raw.to_vec(), TransformReport::default())),
    }
}

fn seal_with(
    raw: &[u8],
    route: &Route,
    spec: &SealSpec,
    ring: &Keyring,
    subject: Option<&SubjectKeys>,
) -> Result<(Vec<u8>, TransformReport), ProxyError> {
    let keys = request_keys(route, ring, subject)?;
    // One streaming pass over the bytes: strict JSON validation, depth
    // limit, the route's schema and look-alike check, sealing; unselected
    // bytes copied verbatim.
    transform::encrypt_request(raw, spec, keys, unix_now()).map_err(|e| {
        match &e {
            // The rule and a location showing only its own names: no
            // client content.
            TransformError::LookAlike { .. } => {
                tracing::debug!(route = %route.name, error = %e, "request refused")
            }
            TransformError::Seal | TransformError::Decrypt(_) => {
                tracing::error!(route = %route.name, error = %e, "field encryption failed")
            }
            _ => {}
        }
        ProxyError::from_request_transform(e)
    })
}

/// The keys of one request on `route`: the ring's, or on a tenant or
/// subject route the request's data keys (the newest seals); blind indexes
/// under the key the route's `index_scope` names.
pub(super) fn request_keys<'k>(
    route: &Route,
    ring: &'k Keyring,
    subject: Option<&'k SubjectKeys>,
) -> Result<Keys<'k>, ProxyError> {
    let Some(sk) = subject else {
        return Ok(Keys::from(ring));
    };
    if route.key_scope == crate::routes::KeyScope::Deployment {
        // The deployment data key opens `fs2:_fieldseal_dk` envelopes; it
        // seals only when the active ring key is in a token (no bytes here
        // to seal `fs1` with).
        return Ok(Keys {
            seal: match sk.first() {
                Some(k) if !ring.active_has_bytes() => k.sealing_key(),
                _ => ring.sealing_key(),
            },
            ring,
            subjects: sk,
            subject_only: false,
            index: IndexKeys::Ring(ring),
        });
    }
    let newest = sk.first().ok_or(ProxyError::from(LocalError::Internal(
        "no subject key to seal with",
    )))?;
    let index = match route.index_scope {
        crate::routes::KeyScope::Deployment => IndexKeys::Ring(ring),
        _ => IndexKeys::DataKey(newest),
    };
    Ok(Keys {
        seal: newest.sealing_key(),
        ring,
        subjects: sk,
        subject_only: true,
        index,
    })
}

async fn read_client_body<B>(
    incoming: B,
    limit: u64,
    timeout: std::time::Duration,
    held: &mut crate::body::Reservation,
) -> Result<Bytes, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    body::collect_reserved(incoming, limit, timeout, held)
        .await
        .map_err(|e| match e {
            CollectError::TooLarge => ProxyError::from(ClientError::BodyTooLarge { limit }),
            CollectError::Timeout => ProxyError::from(ClientError::ClientTimeout),
            CollectError::Broken => ProxyError::from(ClientError::ClientBody),
            CollectError::OverBudget => ProxyError::from(LocalError::BufferLimit),
        })
}

fn content_length(h: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    let mut values = h.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProxyError::from(ClientError::BadRequest(
            "more than one Content-Length",
        )));
    }
    first
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or(ProxyError::from(ClientError::BadRequest(
            "invalid Content-Length",
        )))
}
