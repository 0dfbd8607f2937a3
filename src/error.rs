//! The proxy's error type and its one mapping to HTTP statuses.
//!
//! Each variant remembers which side caused it (client, upstream, or us),
//! which is what decides 4xx versus 502/504 versus 500.

use http::StatusCode;

use crate::fields::DecryptFailure;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // --- caused by the client's request ---
    #[error("no route matches this request")]
    NoRoute,
    #[error("host is not served here")]
    MisdirectedHost,
    #[error("request path is not acceptable: {0}")]
    BadPath(&'static str),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request headers are too large")]
    HeadersTooLarge,
    #[error("unsupported media type: this route only accepts JSON bodies")]
    UnsupportedMediaType,
    #[error("unsupported content encoding: {0}")]
    UnsupportedEncoding(String),
    #[error("request body is not valid JSON")]
    InvalidJson,
    #[error("request body nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("client disconnected or sent a broken body")]
    ClientBody,
    #[error("timed out reading the request body")]
    ClientTimeout,

    // --- caused by the upstream ---
    #[error("upstream unreachable")]
    UpstreamConnect,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream failed")]
    UpstreamProtocol,
    #[error("upstream answer could not be read")]
    UpstreamBody,
    #[error("upstream answer exceeds the limit of {limit} bytes")]
    UpstreamTooLarge { limit: u64 },
    #[error("a field in the upstream answer could not be decrypted")]
    Decrypt(DecryptFailure),

    // --- ours ---
    #[error("audit log unavailable")]
    AuditUnavailable,
    #[error("internal error")]
    Internal(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            NoRoute => StatusCode::NOT_FOUND,
            MisdirectedHost => StatusCode::MISDIRECTED_REQUEST,
            BadPath(_) | BadRequest(_) | InvalidJson | TooDeep { .. } | ClientBody => {
                StatusCode::BAD_REQUEST
            }
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            UnsupportedMediaType | UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            UpstreamConnect | UpstreamProtocol | UpstreamBody | UpstreamTooLarge { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Decrypt(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        use ProxyError::*;
        match self {
            NoRoute => "no_route",
            MisdirectedHost => "misdirected_host",
            BadPath(_) => "bad_path",
            BadRequest(_) => "bad_request",
            BodyTooLarge { .. } => "body_too_large",
            HeadersTooLarge => "headers_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            UnsupportedEncoding(_) => "unsupported_encoding",
            InvalidJson => "invalid_json",
            TooDeep { .. } => "too_deep",
            RateLimited { .. } => "rate_limited",
            ClientBody => "client_body",
            ClientTimeout => "client_timeout",
            UpstreamConnect => "connect",
            UpstreamTimeout => "timeout",
            UpstreamProtocol => "protocol",
            UpstreamBody => "body",
            UpstreamTooLarge { .. } => "too_large",
            Decrypt(_) => "decrypt",
            AuditUnavailable => "audit_unavailable",
            Internal(_) => "internal",
        }
    }

    /// True when the upstream, not the client or the proxy, is at fault.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect
                | ProxyError::UpstreamTimeout
                | ProxyError::UpstreamProtocol
                | ProxyError::UpstreamBody
                | ProxyError::UpstreamTooLarge { .. }
        )
    }

    /// The JSON body sent to the client: `{"error": "...", "status": N}`.
    /// Messages never echo request content.
    pub fn body(&self) -> String {
        let status = self.status().as_u16();
        let mut body = serde_json::json!({ "error": self.to_string(), "status": status });
        if let ProxyError::RateLimited { retry_after_secs } = self {
            body["retry_after"] = serde_json::json!(retry_after_secs);
        }
        body.to_string()
    }
}
