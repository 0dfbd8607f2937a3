//! The proxy's error type and its one mapping to HTTP statuses.
//!
//! Each variant remembers which side caused it (client, upstream, or us),
//! which is what decides 4xx versus 502/504 versus 500.

use http::StatusCode;

use http::header::{self, HeaderValue};
use http::Response;

use crate::body::ProxyBody;
use crate::transform::{DecryptFailure, TransformError};

/// Every code [`ProxyError::reason`] returns, in declaration order. The
/// unit tests below hold the two together; README.md documents each.
pub const REASON_CODES: &[&str] = &[
    "no_route",
    "misdirected_host",
    "bad_path",
    "bad_request",
    "host_required",
    "transfer_coding_not_implemented",
    "body_too_large",
    "headers_too_large",
    "unsupported_media_type",
    "unsupported_encoding",
    "invalid_json",
    "json_too_deep",
    "look_alike",
    "protected_parameter",
    "schema_mismatch",
    "field_too_large",
    "rate_limited",
    "client_body_broken",
    "client_body_timeout",
    "token_missing",
    "token_invalid",
    "certificate_missing",
    "certificate_invalid",
    "credentials_conflict",
    "foreign_subject",
    "subject_erased",
    "subject_erased_write",
    "upstream_connect_failed",
    "upstream_connect_refused",
    "upstream_connect_timeout",
    "upstream_tls_failed",
    "upstream_timeout",
    "upstream_protocol_error",
    "upstream_closed",
    "upstream_body_broken",
    "upstream_body_too_large",
    "upstream_busy",
    "upstream_queue_timeout",
    "decrypt_failed",
    "buffer_limit",
    "audit_unavailable",
    "identity_keys_unavailable",
    "key_store_unavailable",
    "rate_limit_store_unavailable",
    "internal",
];

/// Why the proxy answered a request itself, by the side that failed: the
/// side decides the class of the answer (4xx, 502/504, 5xx) here, in one
/// place, and each variant its exact status and reason code.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Local(#[from] LocalError),
}

/// Caused by the client's request: a 4xx.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("host is not served here")]
    MisdirectedHost,
    #[error("request path is not acceptable: {0}")]
    BadPath(&'static str),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// HTTP/1.1 without Host (RFC 9112 §3.2), or a host-less request whose
    /// path a host-bound route could take.
    #[error("a Host header is required")]
    HostRequired,
    /// A transfer coding other than `chunked` (RFC 9112 §6.1); a 501.
    #[error("transfer codings other than chunked are not implemented")]
    TransferCodingNotImplemented,
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request headers are too large")]
    HeadersTooLarge,
    #[error("unsupported media type: this route only accepts JSON bodies")]
    UnsupportedMediaType,
    /// Never carries the value: error bodies and logs don't echo request content.
    #[error("unsupported content encoding: gzip, deflate and br are accepted, one coding at most")]
    UnsupportedEncoding,
    #[error("request body is not valid JSON")]
    InvalidJson,
    #[error("request body nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error(
        "request body holds a protected field in a shape or spelling this route does not accept"
    )]
    LookAlike,
    /// A query parameter is a protected field (or a spelling of one) that
    /// the route refuses. Never names the client's spelling.
    #[error("the request names a protected field as a parameter this route does not accept")]
    ProtectedParameter,
    #[error("request body is outside this route's schema: {0}")]
    Schema(&'static str),
    #[error("a field of the request body is too large to encrypt")]
    FieldTooLarge,
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("client disconnected or sent a broken body")]
    ClientBody,
    #[error("timed out reading the request body")]
    ClientTimeout,
    /// No valid bearer token on a route with `auth: required` (or a bad
    /// one on `auth: optional`): 401 with `WWW-Authenticate`.
    #[error("{0}")]
    Unauthorized(crate::identity::AuthError),
    /// An answer's field belongs to another tenant or subject
    /// (`on_foreign_subject: error`).
    #[error("a field of the answer belongs to another subject")]
    ForeignSubject,
    /// An answer's field belongs to an erased subject (`on_erased: error`).
    #[error("the data of this subject was erased")]
    Erased,
    /// A write for an erased subject (`on_erased_write: refuse`).
    #[error("this subject was erased; new data is not accepted")]
    ErasedSubjectWrite,
}

/// Caused by the upstream: a 502, or a 504 when it was too slow.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream unreachable")]
    UpstreamConnect,
    #[error("upstream unreachable")]
    UpstreamConnectRefused,
    #[error("upstream unreachable")]
    UpstreamConnectTimeout,
    /// The TLS handshake failed: an untrusted or wrong-name certificate,
    /// or a backend that refused our client certificate.
    #[error("upstream unreachable")]
    UpstreamTls,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream failed")]
    UpstreamProtocol,
    #[error("upstream failed")]
    UpstreamClosed,
    #[error("upstream answer could not be read")]
    UpstreamBody,
    #[error("upstream answer exceeds the limit of {limit} bytes")]
    UpstreamTooLarge { limit: u64 },
    #[error("a field in the upstream answer could not be decrypted")]
    Decrypt(DecryptFailure),
    /// Every server tried was at `max_connections` with its queue full: a
    /// 503, nothing was sent.
    #[error("upstream busy; retry later")]
    UpstreamBusy,
    /// No connection to a server freed up within `queue_timeout`: a 503,
    /// nothing was sent.
    #[error("upstream busy; retry later")]
    UpstreamQueueTimeout,
}

/// Ours: load (503) or a bug (500).
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Buffering this body would pass `limits.max_buffered_per_connection`
    /// or `limits.max_buffered_total`.
    #[error("too much data is buffered; retry later")]
    BufferLimit,
    #[error("audit log unavailable")]
    AuditUnavailable,
    /// No verification key set of the token's provider could be loaded.
    #[error("the identity provider's keys are unavailable")]
    IdentityUnavailable,
    /// The key store (or the key provider) could not give an uncached key.
    #[error("the key store is unavailable")]
    KeyStoreUnavailable,
    /// The shared rate-limit store gave no answer and `on_store_error: deny`.
    #[error("rate limit store unavailable; retry later")]
    RateLimitStore,
    #[error("internal error")]
    Internal(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        use ClientError::*;
        match self {
            ProxyError::Client(e) => match e {
                NoRoute => StatusCode::NOT_FOUND,
                MisdirectedHost => StatusCode::MISDIRECTED_REQUEST,
                BadPath(_)
                | BadRequest(_)
                | HostRequired
                | InvalidJson
                | TooDeep { .. }
                | ClientBody
                | LookAlike
                | ProtectedParameter
                | Schema(_) => StatusCode::BAD_REQUEST,
                TransferCodingNotImplemented => StatusCode::NOT_IMPLEMENTED,
                BodyTooLarge { .. } | FieldTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                UnsupportedMediaType | UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                ClientTimeout => StatusCode::REQUEST_TIMEOUT,
                Unauthorized(_) => StatusCode::UNAUTHORIZED,
                ForeignSubject => StatusCode::FORBIDDEN,
                Erased | ErasedSubjectWrite => StatusCode::GONE,
            },
            ProxyError::Upstream(UpstreamError::UpstreamTimeout) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(
                UpstreamError::UpstreamBusy | UpstreamError::UpstreamQueueTimeout,
            ) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Local(LocalError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Local(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Coarse label of `fieldseal_upstream_errors_total{kind}` (kept stable
    /// for dashboards; the access log's [`reason`](Self::reason) is finer).
    pub fn kind(&self) -> &'static str {
        self.labels().0
    }

    /// The access log's `reason`: one stable code per variant, listed in
    /// [`REASON_CODES`] and documented in README.md ("Reason codes").
    pub fn reason(&self) -> &'static str {
        self.labels().1
    }

    /// (kind, reason) of each variant.
    fn labels(&self) -> (&'static str, &'static str) {
        use ClientError::*;
        use LocalError::*;
        use UpstreamError::*;
        match self {
            ProxyError::Client(e) => match e {
                NoRoute => ("no_route", "no_route"),
                MisdirectedHost => ("misdirected_host", "misdirected_host"),
                BadPath(_) => ("bad_path", "bad_path"),
                BadRequest(_) => ("bad_request", "bad_request"),
                HostRequired => ("host_required", "host_required"),
                TransferCodingNotImplemented => {
                    ("transfer_coding", "transfer_coding_not_implemented")
                }
                BodyTooLarge { .. } => ("body_too_large", "body_too_large"),
                HeadersTooLarge => ("headers_too_large", "headers_too_large"),
                UnsupportedMediaType => ("unsupported_media_type", "unsupported_media_type"),
                UnsupportedEncoding => ("unsupported_encoding", "unsupported_encoding"),
                InvalidJson => ("invalid_json", "invalid_json"),
                TooDeep { .. } => ("too_deep", "json_too_deep"),
                LookAlike => ("look_alike", "look_alike"),
                ProtectedParameter => ("protected_parameter", "protected_parameter"),
                Schema(_) => ("schema", "schema_mismatch"),
                FieldTooLarge => ("field_too_large", "field_too_large"),
                RateLimited { .. } => ("rate_limited", "rate_limited"),
                ClientBody => ("client_body", "client_body_broken"),
                ClientTimeout => ("client_timeout", "client_body_timeout"),
                Unauthorized(e) => ("unauthorized", e.reason()),
                ForeignSubject => ("foreign_subject", "foreign_subject"),
                Erased => ("erased", "subject_erased"),
                ErasedSubjectWrite => ("erased", "subject_erased_write"),
            },
            ProxyError::Upstream(e) => match e {
                UpstreamConnect => ("connect", "upstream_connect_failed"),
                UpstreamConnectRefused => ("connect", "upstream_connect_refused"),
                UpstreamConnectTimeout => ("connect", "upstream_connect_timeout"),
                UpstreamTls => ("connect", "upstream_tls_failed"),
                UpstreamTimeout => ("timeout", "upstream_timeout"),
                UpstreamProtocol => ("protocol", "upstream_protocol_error"),
                UpstreamClosed => ("protocol", "upstream_closed"),
                UpstreamBody => ("body", "upstream_body_broken"),
                UpstreamTooLarge { .. } => ("too_large", "upstream_body_too_large"),
                Decrypt(_) => ("decrypt", "decrypt_failed"),
                UpstreamBusy => ("busy", "upstream_busy"),
                UpstreamQueueTimeout => ("busy", "upstream_queue_timeout"),
            },
            ProxyError::Local(e) => match e {
                BufferLimit => ("buffer_limit", "buffer_limit"),
                AuditUnavailable => ("audit_unavailable", "audit_unavailable"),
                IdentityUnavailable => ("identity_unavailable", "identity_keys_unavailable"),
                KeyStoreUnavailable => ("key_store_unavailable", "key_store_unavailable"),
                RateLimitStore => ("rate_limit_store", "rate_limit_store_unavailable"),
                Internal(_) => ("internal", "internal"),
            },
        }
    }

    /// A fixed explanation to log beside the reason, when the variant has
    /// one. Never anything the client sent.
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            ProxyError::Client(
                ClientError::BadPath(d) | ClientError::BadRequest(d) | ClientError::Schema(d),
            )
            | ProxyError::Local(LocalError::Internal(d)) => Some(d),
            _ => None,
        }
    }

    /// True when the upstream, not the client or the proxy, is at fault
    /// (a decryption failure is counted apart, by its own metric).
    pub fn is_upstream(&self) -> bool {
        matches!(self, ProxyError::Upstream(e) if !matches!(e, UpstreamError::Decrypt(_)))
    }

    /// A request body the transform refused or could not seal: which side
    /// failed decides the answer (invalid, too deep, look-alike, schema and
    /// too large are the client's; a sealing failure is ours).
    pub fn from_request_transform(e: TransformError) -> ProxyError {
        match e {
            TransformError::InvalidJson => ClientError::InvalidJson.into(),
            TransformError::TooDeep { limit } => ClientError::TooDeep { limit }.into(),
            TransformError::LookAlike { .. } => ClientError::LookAlike.into(),
            TransformError::Schema => ClientError::Schema("it does not match").into(),
            TransformError::DuplicateMember => {
                ClientError::Schema("it repeats a member name").into()
            }
            TransformError::Reference => ClientError::BadRequest(
                "request body holds JSON reference metadata ($ref, $values), which this route does not accept",
            )
            .into(),
            TransformError::InvalidPatch => {
                ClientError::BadRequest("request body is not a well-formed JSON Patch document")
                    .into()
            }
            TransformError::FieldTooLarge => ClientError::FieldTooLarge.into(),
            TransformError::Unindexable => ClientError::BadRequest(
                "a field to index is not one string, number or boolean, or is there twice",
            )
            .into(),
            TransformError::IndexSupplied { .. } => ClientError::BadRequest(
                "request body holds a member where fieldseal writes a blind index; indexes are written by fieldseal only",
            )
            .into(),
            TransformError::FieldTooDeep => ClientError::TooDeep {
                limit: crate::crypto::MAX_SEAL_DEPTH,
            }
            .into(),
            TransformError::Seal | TransformError::Decrypt(_) => {
                LocalError::Internal("field encryption failed").into()
            }
        }
    }

    /// A query string or form body the route's pairs spec refused or could
    /// not seal.
    pub fn from_pairs(e: crate::transform::pairs::PairsError) -> ProxyError {
        use crate::transform::pairs::PairsError;
        match e {
            PairsError::Encoding => {
                ClientError::BadRequest("the query string is not validly percent-encoded UTF-8")
                    .into()
            }
            PairsError::Protected { .. } => ClientError::ProtectedParameter.into(),
            PairsError::Seal(e) => ProxyError::from_request_transform(e),
        }
    }

    /// The JSON body sent to the client: `{"error": "...", "status": N}`.
    /// Messages never echo request content.
    pub fn body(&self) -> String {
        let status = self.status().as_u16();
        let mut body = serde_json::json!({ "error": self.to_string(), "status": status });
        if let ProxyError::Client(ClientError::RateLimited { retry_after_secs }) = self {
            body["retry_after"] = serde_json::json!(retry_after_secs);
        }
        body.to_string()
    }
}

/// The proxy's own answer for a refusal, the one synthetic response: the
/// status and JSON body of `e`, never cached (the caller adds the security
/// headers and the request id, as to every answer).
pub fn respond(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(crate::body::full(e.body()));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let ProxyError::Client(ClientError::RateLimited { retry_after_secs }) = e {
        h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    if let ProxyError::Client(ClientError::Unauthorized(a)) = e {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(a.challenge()),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One value of every variant. The exhaustive match makes a new variant
    /// a compile error here until it is added, so it cannot go without a
    /// reason code.
    fn one_of_each() -> Vec<ProxyError> {
        use ClientError::*;
        use LocalError::*;
        use UpstreamError::*;
        let client = vec![
            NoRoute,
            MisdirectedHost,
            BadPath("p"),
            BadRequest("r"),
            HostRequired,
            TransferCodingNotImplemented,
            BodyTooLarge { limit: 1 },
            HeadersTooLarge,
            UnsupportedMediaType,
            UnsupportedEncoding,
            InvalidJson,
            TooDeep { limit: 1 },
            LookAlike,
            ProtectedParameter,
            Schema("s"),
            FieldTooLarge,
            RateLimited {
                retry_after_secs: 1,
            },
            ClientBody,
            ClientTimeout,
            Unauthorized(crate::identity::AuthError::Missing),
            Unauthorized(crate::identity::AuthError::Invalid("x")),
            Unauthorized(crate::identity::AuthError::CertificateMissing),
            Unauthorized(crate::identity::AuthError::Certificate("c")),
            Unauthorized(crate::identity::AuthError::Conflict),
            ForeignSubject,
            Erased,
            ErasedSubjectWrite,
        ];
        let upstream = vec![
            UpstreamConnect,
            UpstreamConnectRefused,
            UpstreamConnectTimeout,
            UpstreamTls,
            UpstreamTimeout,
            UpstreamProtocol,
            UpstreamClosed,
            UpstreamBody,
            UpstreamTooLarge { limit: 1 },
            UpstreamBusy,
            UpstreamQueueTimeout,
            Decrypt(DecryptFailure {
                location: "$".into(),
                key_id: None,
                reason: "auth_failed",
            }),
        ];
        let local = vec![
            BufferLimit,
            AuditUnavailable,
            IdentityUnavailable,
            KeyStoreUnavailable,
            RateLimitStore,
            Internal("i"),
        ];
        // The exhaustive matches make a new variant a compile error here
        // until it is added, so it cannot go without a reason code.
        for e in &client {
            match e {
                NoRoute
                | MisdirectedHost
                | BadPath(_)
                | BadRequest(_)
                | HostRequired
                | TransferCodingNotImplemented
                | BodyTooLarge { .. }
                | HeadersTooLarge
                | UnsupportedMediaType
                | UnsupportedEncoding
                | InvalidJson
                | TooDeep { .. }
                | LookAlike
                | ProtectedParameter
                | Schema(_)
                | FieldTooLarge
                | RateLimited { .. }
                | ClientBody
                | ClientTimeout
                | Unauthorized(_)
                | ForeignSubject
                | Erased
                | ErasedSubjectWrite => {}
            }
        }
        for e in &upstream {
            match e {
                UpstreamConnect
                | UpstreamConnectRefused
                | UpstreamConnectTimeout
                | UpstreamTls
                | UpstreamTimeout
                | UpstreamProtocol
                | UpstreamClosed
                | UpstreamBody
                | UpstreamTooLarge { .. }
                | UpstreamBusy
                | UpstreamQueueTimeout
                | Decrypt(_) => {}
            }
        }
        for e in &local {
            match e {
                BufferLimit | AuditUnavailable | IdentityUnavailable | KeyStoreUnavailable
                | RateLimitStore | Internal(_) => {}
            }
        }
        let client = client.into_iter().map(ProxyError::from);
        let upstream = upstream.into_iter().map(ProxyError::from);
        client
            .chain(upstream)
            .chain(local.into_iter().map(ProxyError::from))
            .collect()
    }

    #[test]
    fn the_side_decides_the_class_of_the_answer() {
        for e in one_of_each() {
            let status = e.status().as_u16();
            match &e {
                ProxyError::Client(_) => assert!((400..500).contains(&status) || status == 501),
                ProxyError::Upstream(_) => assert!((502..=504).contains(&status)),
                ProxyError::Local(_) => assert!(matches!(status, 500 | 503)),
            }
        }
    }

    #[test]
    fn every_variant_has_its_own_listed_reason_code() {
        let reasons: Vec<&str> = one_of_each().iter().map(ProxyError::reason).collect();
        assert_eq!(
            reasons, REASON_CODES,
            "REASON_CODES lists reason() in order"
        );
        let mut unique = reasons.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), reasons.len(), "one code per variant");
        for r in reasons {
            assert!(
                r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r}: codes are snake_case"
            );
        }
    }

    #[test]
    fn upstream_failures_are_upstream_and_answer_502_or_504() {
        for e in one_of_each() {
            let upstream = e.reason().starts_with("upstream_");
            assert_eq!(e.is_upstream(), upstream, "{}", e.reason());
            // A server at its connection cap is busy, not broken: 503.
            let busy = matches!(e.reason(), "upstream_busy" | "upstream_queue_timeout");
            if busy {
                assert_eq!(e.status().as_u16(), 503, "{}", e.reason());
            } else if upstream {
                assert!(
                    matches!(e.status().as_u16(), 502 | 504),
                    "{}: {}",
                    e.reason(),
                    e.status()
                );
            }
        }
    }
}
