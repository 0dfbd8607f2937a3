//! Stage 3, forward: the upstream request, built from the canonical form
//! that was matched. A pure function of the request head, so it is tested
//! on `Request<()>`.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Uri, Version};

use std::net::IpAddr;

use crate::config::{HostHeader, Upstream};
use crate::error::{ClientError, LocalError, ProxyError};
use crate::headers::{self, X_REQUEST_ID};
use crate::routes::template::{decode_segment, encode_segment, PathParamAction, PathTemplate};
use crate::transform::pairs::{self, PairsSpec};
use crate::transform::Keys;

/// Where an admitted request goes, and what the upstream request says of it.
pub(super) struct Target<'a> {
    pub upstream: &'a Upstream,
    /// The canonical path that was matched.
    pub path: &'a str,
    /// The request's host, lowercase, and the raw value it was sent with.
    pub host: Option<&'a (String, HeaderValue)>,
    pub peer: IpAddr,
    /// `headers::forwarded_for(peer)`, made once per connection.
    pub forwarded_for: &'a HeaderValue,
    /// The peer's X-Forwarded-For is believed.
    pub peer_trusted: bool,
    pub request_id: &'a HeaderValue,
    /// The route opens answers: ask for one we can read.
    pub reads_answer: bool,
    /// What the route does to query parameters (None: forwarded as sent).
    pub query: Option<&'a PairsSpec>,
    /// The keys parameters are sealed and indexed with.
    pub keys: Option<Keys<'a>>,
    /// Seconds since the epoch, stamped into envelopes.
    pub now: u64,
    /// The route's path template and what its captures become, with the
    /// path it is matched against (`;params` cut) and the route's case rule.
    pub template: Option<Template<'a>>,
}

/// A template route's part of the target.
pub(super) struct Template<'a> {
    pub template: &'a PathTemplate,
    pub params: &'a [Option<PathParamAction>],
    pub match_path: &'a str,
    pub case_insensitive: bool,
}

/// The forwarded path of a template route: each captured segment decoded
/// once, then kept, indexed, or the request refused. Never the plaintext
/// of a protected segment.
fn template_path(
    t: &Template<'_>,
    keys: Option<Keys<'_>>,
    seen: &mut super::PairsSeen,
) -> Result<String, ProxyError> {
    let captured = t
        .template
        .capture(t.match_path, t.case_insensitive)
        .ok_or(ProxyError::from(ClientError::BadPath(
            "the path does not fit the route's template",
        )))?;
    let mut values = Vec::with_capacity(captured.len());
    for (i, seg) in captured.into_iter().enumerate() {
        let value = match t.params.get(i).and_then(Option::as_ref) {
            None => seg.to_owned(),
            Some(PathParamAction::Refuse) => {
                seen.refused = Some(super::PAIRS_PATH);
                return Err(ProxyError::from(ClientError::ProtectedParameter));
            }
            Some(PathParamAction::Index(spec)) => {
                let plain = decode_segment(seg).ok_or(ProxyError::from(ClientError::BadPath(
                    "a path segment is not validly percent-encoded UTF-8",
                )))?;
                let keys = keys.ok_or(ProxyError::from(LocalError::Internal(
                    "an index without keys",
                )))?;
                let index = spec
                    .index(keys.index, &plain)
                    .map_err(ProxyError::from_request_transform)?;
                let report = &mut seen.reports[super::PAIRS_PATH];
                report.indexed += 1;
                if let Some(name) = t.template.params().nth(i) {
                    if !report.rules.iter().any(|r| r == name) {
                        report.rules.push(name.to_owned());
                    }
                }
                encode_segment(&index)
            }
        };
        values.push(value);
    }
    Ok(t.template.build(&values))
}

/// The request the upstream gets ([`upstream_uri`], then [`request`]).
#[cfg(test)]
pub(super) fn forward<B>(
    parts: Parts,
    body: B,
    to: &Target<'_>,
    seen: &mut super::PairsSeen,
) -> Result<Request<B>, ProxyError> {
    let uri = upstream_uri(&parts.uri, to, seen)?;
    Ok(request(parts, body, uri, to))
}

/// The upstream request's URI for the request target `sent`: the
/// (template-rebuilt) path under the upstream's base path, the query as
/// sent or as the route rewrites it. Every refusal of a query pair or a
/// path segment comes from here, and the pipeline calls it before the
/// request body is read: a refused request is answered without waiting
/// for a body it will never forward.
pub(super) fn upstream_uri(
    sent: &Uri,
    to: &Target<'_>,
    seen: &mut super::PairsSeen,
) -> Result<Uri, ProxyError> {
    let upstream = to.upstream;
    let rebuilt = match &to.template {
        Some(t) => Some(template_path(t, to.keys, seen)?),
        None => None,
    };
    let path = rebuilt.as_deref().unwrap_or(to.path);
    // Sized exactly for an unchanged query: `Bytes` takes over a `String`
    // whose length is its capacity without a second allocation.
    let query_len = sent.query().map_or(0, |q| q.len() + 1);
    let mut pq = String::with_capacity(upstream.base_path.len() + path.len() + query_len);
    pq.push_str(&upstream.base_path);
    pq.push_str(path);
    if let Some(q) = sent.query() {
        pq.push('?');
        match to.query {
            None => pq.push_str(q),
            Some(spec) => {
                let report = &mut seen.reports[super::PAIRS_QUERY];
                let rewritten = pairs::rewrite_reporting(q, spec, to.keys, to.now, report)
                    .map_err(|e| {
                        if matches!(e, pairs::PairsError::Protected { .. }) {
                            seen.refused = Some(super::PAIRS_QUERY);
                        }
                        ProxyError::from_pairs(e)
                    })?;
                match rewritten {
                    Some(rewritten) => pq.push_str(&rewritten),
                    None => pq.push_str(q),
                }
            }
        }
    }
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority().clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| {
            ProxyError::from(ClientError::BadRequest(
                "request target cannot be forwarded",
            ))
        })
}

/// The upstream request to `uri` (from [`upstream_uri`]): hop-by-hop and
/// routing-override headers removed, X-Forwarded-* set, Host as the
/// upstream wants it, our request id, and (when the route opens answers)
/// a request for an identity body.
pub(super) fn request<B>(mut parts: Parts, body: B, uri: Uri, to: &Target<'_>) -> Request<B> {
    let upstream = to.upstream;
    let mut headers = std::mem::take(&mut parts.headers);
    headers::remove_hop_by_hop(&mut headers);
    headers::remove_routing_overrides(&mut headers);
    headers.remove(header::EXPECT);
    headers::join_cookies(&mut headers);
    let host = to.host;
    headers::set_forwarded(
        &mut headers,
        to.peer,
        to.forwarded_for,
        to.peer_trusted,
        host.map(|(_, raw)| raw),
    );
    match (&upstream.host, host) {
        (HostHeader::Preserve, Some((_, raw))) => {
            headers.insert(header::HOST, raw.clone());
        }
        (HostHeader::Preserve, None) | (HostHeader::Upstream, _) => {
            headers.remove(header::HOST);
        }
        (HostHeader::Fixed(v), _) => {
            headers.insert(header::HOST, v.clone());
        }
    }
    headers.insert(X_REQUEST_ID.clone(), to.request_id.clone());
    if to.reads_answer {
        // Ask for an answer we can read; a compressed one is still decoded.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let mut up = Request::new(body);
    *up.method_mut() = parts.method;
    *up.uri_mut() = uri;
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = headers;
    up
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn upstream(host: HostHeader) -> Upstream {
        Upstream {
            name: "legacy".into(),
            servers: vec![crate::config::Server {
                authority: "10.0.0.1:8080".parse().expect("authority"),
            }],
            scheme: http::uri::Scheme::HTTP,
            base_path: "/base".into(),
            balance: crate::config::Balance::RoundRobin,
            health: crate::config::Health {
                fails: 3,
                backoff: Duration::from_secs(10),
                check: None,
            },
            tls: None,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            host,
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            max_connections: 1,
            queue_timeout: Duration::from_millis(100),
            max_queued: 1,
            readiness: crate::config::Readiness::Report,
        }
    }

    fn sent(req: http::request::Builder, host: &HostHeader, reads_answer: bool) -> Request<()> {
        let (parts, ()) = req.body(()).expect("request").into_parts();
        let raw = parts.headers.get(header::HOST).cloned();
        let host_pair = raw.map(|r| ("api.example".to_string(), r));
        let upstream = upstream(host.clone());
        let id = HeaderValue::from_static("req-1");
        let peer = "192.0.2.1".parse().expect("ip");
        let forwarded_for = headers::forwarded_for(peer);
        let target = Target {
            upstream: &upstream,
            path: "/api/users/7",
            host: host_pair.as_ref(),
            peer,
            forwarded_for: &forwarded_for,
            peer_trusted: false,
            request_id: &id,
            reads_answer,
            query: None,
            keys: None,
            now: 0,
            template: None,
        };
        forward(parts, (), &target, &mut super::super::PairsSeen::default()).expect("forwarded")
    }

    #[test]
    fn the_canonical_path_goes_under_the_base_path_with_the_query_as_sent() {
        let up = sent(
            http::Request::post("/api//users/./7?a=%2F&b")
                .header("host", "API.example")
                .version(Version::HTTP_2),
            &HostHeader::Preserve,
            false,
        );
        assert_eq!(
            up.uri().to_string(),
            "http://10.0.0.1:8080/base/api/users/7?a=%2F&b"
        );
        assert_eq!(up.method(), http::Method::POST);
        assert_eq!(up.version(), Version::HTTP_11);
        assert_eq!(up.headers()[header::HOST], "API.example");
        assert_eq!(up.headers()["x-request-id"], "req-1");
        assert_eq!(up.headers()["x-forwarded-for"], "192.0.2.1");
        assert!(up.headers().get(header::ACCEPT_ENCODING).is_none());
    }

    #[test]
    fn hop_by_hop_routing_overrides_and_expect_never_reach_the_upstream() {
        let up = sent(
            http::Request::get("/x")
                .header("host", "api.example")
                .header("connection", "close, x-secret")
                .header("x-secret", "1")
                .header("te", "trailers")
                .header("proxy-authorization", "Basic eA==")
                .header("x-original-url", "/admin")
                .header("x-http-method-override", "DELETE")
                .header("expect", "100-continue")
                .header("x-request-id", "client-chosen")
                .header("accept-encoding", "gzip"),
            &HostHeader::Upstream,
            true,
        );
        for gone in [
            "connection",
            "x-secret",
            "te",
            "proxy-authorization",
            "x-original-url",
            "x-http-method-override",
            "expect",
            "host",
        ] {
            assert!(up.headers().get(gone).is_none(), "{gone}");
        }
        assert_eq!(up.headers()["x-request-id"], "req-1");
        assert_eq!(up.headers()[header::ACCEPT_ENCODING], "identity");
    }

    #[test]
    fn a_fixed_host_replaces_the_clients() {
        let fixed = HostHeader::Fixed(HeaderValue::from_static("legacy.internal"));
        let up = sent(
            http::Request::get("/x").header("host", "api.example"),
            &fixed,
            false,
        );
        assert_eq!(up.headers()[header::HOST], "legacy.internal");
        let none = sent(http::Request::get("/x"), &HostHeader::Preserve, false);
        assert!(none.headers().get(header::HOST).is_none());
    }
}
