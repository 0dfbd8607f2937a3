//! Stage 1, admit: the request as it will be matched and forwarded, its
//! route, and the client's rate limit. Nothing of the body is read yet.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::Version;

use super::Exchange;
use crate::error::{ClientError, LocalError, ProxyError};
use crate::headers;
use crate::identity::{AuthError, AuthMode, AuthSource, Principal};
use crate::mtls::ClientCertificate;
use crate::ratelimit::Refused;
use crate::routes::{canonical_path, CanonicalPath};
use crate::state::{RouteRuntime, Runtime};

/// A request that may go on: where it goes, and what was learned on the way.
pub(super) struct Admitted {
    pub route: Arc<RouteRuntime>,
    /// Matched, and forwarded.
    pub path: CanonicalPath,
    /// The host, lowercase without port, and the raw value to forward.
    pub host: Option<(String, HeaderValue)>,
    /// The peer (the TCP connection's), and whether its X-Forwarded-For is believed.
    pub peer: IpAddr,
    pub peer_trusted: bool,
}

/// On a route with `auth`, who the caller is: from the connection's
/// verified client certificate (`mtls`), the bearer token (`jwt`) or a
/// trusted proxy's header (`header`), among the route's `auth_sources`.
/// 401 when none is presented on `required`, when a presented one is bad
/// (on either mode: a bad credential is never skipped for another), and
/// when a certificate and a token or header name different callers (they
/// are never merged: with both, they must agree, and the token's
/// principal, with its roles and forwarded claims, is the one used).
/// Claims are set as the configured headers after every client copy of
/// them was removed. An `identity.header` is believed only from a
/// `trusted_proxies` peer: anyone else's copy is removed first, on every route.
pub(super) async fn identify(
    rt: &Runtime,
    route: &RouteRuntime,
    parts: &mut Parts,
    peer_trusted: bool,
) -> Result<Option<Principal>, ProxyError> {
    // Never forwarded, whatever the route.
    let cert = parts.extensions.remove::<ClientCertificate>();
    if let Some(h) = rt.header_identity.as_ref().filter(|_| !peer_trusted) {
        for name in h.names() {
            parts.headers.remove(name);
        }
    }
    let mode = route.route.auth;
    if mode == AuthMode::None {
        return Ok(None);
    }
    for h in &rt.identity_headers {
        parts.headers.remove(h);
    }
    let sources = &route.route.auth_sources;
    let unauthorized = |e: AuthError| ProxyError::from(ClientError::Unauthorized(e));
    let mtls = rt.config.identity.as_ref().and_then(|i| i.mtls.as_ref());
    let from_cert = match (sources.contains(&AuthSource::Mtls), &cert, mtls) {
        (true, Some(c), Some(spec)) => Some(
            spec.principal(&c.0, crate::crypto::unix_now())
                .map_err(unauthorized)?,
        ),
        _ => None,
    };
    let from_request = token_or_header(rt, sources, parts).await?;
    let principal = match (from_cert, from_request) {
        (Some(c), Some(r)) => {
            if c.subject != r.subject || c.tenant != r.tenant {
                return Err(unauthorized(AuthError::Conflict));
            }
            r
        }
        (Some(c), None) => c,
        (None, Some(r)) => r,
        (None, None) => {
            return match mode {
                AuthMode::Optional => Ok(None),
                _ if sources.iter().all(|s| *s == AuthSource::Mtls) => {
                    Err(unauthorized(AuthError::CertificateMissing))
                }
                _ => Err(unauthorized(AuthError::Missing)),
            };
        }
    };
    for (name, value) in &principal.forwarded {
        parts.headers.insert(name.clone(), value.clone());
    }
    Ok(Some(principal))
}

/// The caller a request's own headers name, on `sources`: a bearer token
/// where accepted decides; else a trusted proxy's header. None when
/// neither is presented; an error when one is but it is bad.
async fn token_or_header(
    rt: &Runtime,
    sources: &[AuthSource],
    parts: &Parts,
) -> Result<Option<Principal>, ProxyError> {
    let unauthorized = |e: AuthError| ProxyError::from(ClientError::Unauthorized(e));
    let has_bearer = parts.headers.contains_key(header::AUTHORIZATION);
    let jwt = sources.contains(&AuthSource::Jwt);
    if !(jwt && has_bearer) && sources.contains(&AuthSource::Header) {
        if let Some(h) = rt.header_identity.as_ref() {
            if let Some(p) = h.principal(&parts.headers).map_err(unauthorized)? {
                return Ok(Some(p));
            }
        }
    }
    if !jwt {
        return Ok(None);
    }
    let identity = rt
        .identity
        .as_ref()
        .ok_or(ProxyError::from(LocalError::Internal(
            "identity is not configured",
        )))?;
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(unauthorized(AuthError::Invalid(
            "more than one Authorization header",
        )));
    }
    let Some(value) = first else {
        return Ok(None);
    };
    let token = bearer(value).ok_or(unauthorized(AuthError::Invalid("not a bearer token")))?;
    match identity.verify(token).await {
        Ok(p) => Ok(Some(p)),
        Err(AuthError::KeysUnavailable) => Err(ProxyError::from(LocalError::IdentityUnavailable)),
        Err(e) => Err(unauthorized(e)),
    }
}

/// The credential of `Authorization: Bearer <token>` (scheme case-insensitive,
/// RFC 7235 §2.1), or None.
fn bearer(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    let (scheme, token) = s.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// Checks the request head, finds its route and takes a token from the
/// client's bucket. `ex` learns the canonical path, the route and the
/// client as soon as each is known, for the access log of a refusal.
pub(super) async fn admit(
    rt: &Runtime,
    parts: &Parts,
    peer: SocketAddr,
    ex: &mut Exchange,
) -> Result<Admitted, ProxyError> {
    let config = &rt.config;
    if headers::header_bytes(&parts.headers) > config.limits.max_header_bytes {
        return Err(ProxyError::from(ClientError::HeadersTooLarge));
    }
    check_transfer_coding(&parts.headers)?;
    if headers::connection_names_end_to_end(&parts.headers).is_some() {
        return Err(ProxyError::from(ClientError::BadRequest(
            "Connection names an end-to-end header",
        )));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
    if parts.version == Version::HTTP_11 && !parts.headers.contains_key(header::HOST) {
        return Err(ProxyError::from(ClientError::HostRequired));
    }
    let host = request_host(parts)?;
    if let Some(allowed) = &config.allowed_hosts {
        let ok = host
            .as_ref()
            .is_some_and(|(h, _)| allowed.iter().any(|a| a == h));
        if !ok {
            return Err(ProxyError::from(ClientError::MisdirectedHost));
        }
    }
    let path = canonical_path(parts.uri.path()).map_err(ClientError::BadPath)?;
    if config.log.access_log {
        ex.path.clone_from(&path.path);
    }

    let host_name = host.as_ref().map(|(h, _)| h.as_str());
    let route = crate::routes::select(&rt.routes, host_name, path.match_path(), &parts.method)
        .map_err(|_| ProxyError::from(ClientError::HostRequired))?
        .ok_or(ProxyError::from(ClientError::NoRoute))?;
    ex.route = Some(Arc::clone(route));
    if let Some(t) = &route.route.template {
        // A captured segment may be a protected value: the log shows the
        // template, never the path as sent.
        if config.log.access_log {
            ex.path = t.source().to_owned();
        }
    }
    tracing::debug!(request_id = ex.id(), route = %route.route.name, "route matched");

    let peer_trusted = config.is_trusted_proxy(peer.ip());
    ex.client =
        headers::client_address(&parts.headers, peer.ip(), |ip| config.is_trusted_proxy(ip));
    if let Some(limiter) = &route.limiter {
        limiter
            .admit(ex.client)
            .await
            .map_err(|refused| match refused {
                Refused::Limited(wait) => ProxyError::from(ClientError::RateLimited {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                }),
                Refused::StoreUnavailable => ProxyError::from(LocalError::RateLimitStore),
            })?;
    }
    Ok(Admitted {
        route: Arc::clone(route),
        path,
        host,
        peer: peer.ip(),
        peer_trusted,
    })
}

/// The transfer codings of a message across all its Transfer-Encoding
/// lines, lowercase. None when a value is not text.
pub(super) fn transfer_codings(h: &HeaderMap) -> Option<Vec<String>> {
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

/// hyper undoes `chunked` and drops any coding listed before it, so
/// `Transfer-Encoding: gzip, chunked` would reach the backend as gzip bytes
/// labelled as nothing. RFC 9112 §6.1: a coding we don't implement is a 501;
/// `chunked` twice is malformed.
fn check_transfer_coding(h: &HeaderMap) -> Result<(), ProxyError> {
    let Some(codings) = transfer_codings(h) else {
        return Err(ProxyError::Client(
            ClientError::TransferCodingNotImplemented,
        ));
    };
    if codings.iter().any(|c| c != "chunked") {
        return Err(ProxyError::Client(
            ClientError::TransferCodingNotImplemented,
        ));
    }
    if codings.len() > 1 {
        return Err(ProxyError::from(ClientError::BadRequest(
            "chunked applied more than once",
        )));
    }
    Ok(())
}

/// The request's host, lowercase without port, and the raw value to forward.
/// HTTP/2's :authority and HTTP/1.1's Host must agree when both are given.
fn request_host(parts: &Parts) -> Result<Option<(String, HeaderValue)>, ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::from(ClientError::BadRequest(
            "more than one Host header",
        )));
    }
    let uri_host = parts.uri.authority();
    let raw = match (uri_host, header_host) {
        (Some(a), Some(h)) => {
            if !a.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) {
                return Err(ProxyError::from(ClientError::BadRequest(
                    "Host header and request target disagree",
                )));
            }
            h.clone()
        }
        (Some(a), None) => HeaderValue::from_str(a.as_str())
            .map_err(|_| ProxyError::from(ClientError::BadRequest("invalid authority")))?,
        (None, Some(h)) => h.clone(),
        (None, None) => return Ok(None),
    };
    let auth: http::uri::Authority =
        raw.to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(ProxyError::from(ClientError::BadRequest(
                "invalid Host header",
            )))?;
    if auth.as_str().contains('@') {
        return Err(ProxyError::from(ClientError::BadRequest(
            "userinfo is not allowed in Host",
        )));
    }
    Ok(Some((
        auth.host().trim_end_matches('.').to_ascii_lowercase(),
        raw,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::request::Builder) -> Parts {
        req.body(()).expect("request").into_parts().0
    }

    #[test]
    fn the_host_is_lowercased_without_port_and_kept_raw_for_forwarding() {
        let p = parts(http::Request::get("/x").header("host", "API.Example.:8443"));
        let (host, raw) = request_host(&p).expect("ok").expect("a host");
        assert_eq!(host, "api.example");
        assert_eq!(raw, "API.Example.:8443");
        let h2 = parts(
            http::Request::get("https://api.example/x")
                .version(Version::HTTP_2)
                .header("host", "api.example"),
        );
        assert_eq!(
            request_host(&h2).expect("ok").expect("host").0,
            "api.example"
        );
        assert!(request_host(&parts(http::Request::get("/x")))
            .expect("ok")
            .is_none());
    }

    #[test]
    fn hosts_that_disagree_or_carry_userinfo_are_bad_requests() {
        for req in [
            http::Request::get("https://a.example/x").header("host", "b.example"),
            http::Request::get("/x")
                .header("host", "a.example")
                .header("host", "a.example"),
            http::Request::get("/x").header("host", "user@a.example"),
            http::Request::get("/x").header("host", "a example"),
        ] {
            match request_host(&parts(req)) {
                Err(ProxyError::Client(ClientError::BadRequest(_))) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn only_one_chunked_is_a_transfer_coding_we_take() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_str(v).expect("v"),
                );
            }
            check_transfer_coding(&h)
        };
        assert!(te(&[]).is_ok());
        assert!(te(&["chunked"]).is_ok());
        assert!(te(&["Chunked "]).is_ok());
        for bad in [&["gzip, chunked"][..], &["gzip", "chunked"], &["identity"]] {
            assert!(
                matches!(
                    te(bad),
                    Err(ProxyError::Client(
                        ClientError::TransferCodingNotImplemented
                    ))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            te(&["chunked", "chunked"]),
            Err(ProxyError::Client(ClientError::BadRequest(_)))
        ));
    }
}
