//! Header handling: hop-by-hop removal, X-Forwarded-*, and security headers.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// What to do when the upstream already sent a header we also set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamPolicy {
    #[default]
    Overwrite,
    Keep,
}

/// The security headers fieldseal sets on every answer: each one's config
/// key, HTTP name, default and description, in this one place (the config
/// loader, its JSON Schema and the answers all read them here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecurityHeader {
    Hsts,
    Csp,
    XContentTypeOptions,
    XFrameOptions,
    ReferrerPolicy,
    XXssProtection,
    PermissionsPolicy,
    CrossOriginOpenerPolicy,
}

impl SecurityHeader {
    /// Every one, in the order they are set.
    pub const ALL: [SecurityHeader; 8] = [
        SecurityHeader::Hsts,
        SecurityHeader::Csp,
        SecurityHeader::XContentTypeOptions,
        SecurityHeader::XFrameOptions,
        SecurityHeader::ReferrerPolicy,
        SecurityHeader::XXssProtection,
        SecurityHeader::PermissionsPolicy,
        SecurityHeader::CrossOriginOpenerPolicy,
    ];

    /// Its key under `headers:` in the config.
    pub fn config_key(self) -> &'static str {
        match self {
            SecurityHeader::Hsts => "hsts",
            SecurityHeader::Csp => "csp",
            SecurityHeader::XContentTypeOptions => "x_content_type_options",
            SecurityHeader::XFrameOptions => "x_frame_options",
            SecurityHeader::ReferrerPolicy => "referrer_policy",
            SecurityHeader::XXssProtection => "x_xss_protection",
            SecurityHeader::PermissionsPolicy => "permissions_policy",
            SecurityHeader::CrossOriginOpenerPolicy => "cross_origin_opener_policy",
        }
    }

    pub fn http_name(self) -> HeaderName {
        HeaderName::from_static(match self {
            SecurityHeader::Hsts => "strict-transport-security",
            SecurityHeader::Csp => "content-security-policy",
            SecurityHeader::XContentTypeOptions => "x-content-type-options",
            SecurityHeader::XFrameOptions => "x-frame-options",
            SecurityHeader::ReferrerPolicy => "referrer-policy",
            SecurityHeader::XXssProtection => "x-xss-protection",
            SecurityHeader::PermissionsPolicy => "permissions-policy",
            SecurityHeader::CrossOriginOpenerPolicy => "cross-origin-opener-policy",
        })
    }

    /// The value sent when the config says nothing: current OWASP Secure
    /// Headers advice for an API. X-XSS-Protection is "0" because the
    /// legacy XSS auditor caused vulnerabilities and is gone from browsers;
    /// CSP replaces it.
    pub fn default_value(self) -> Option<&'static str> {
        match self {
            SecurityHeader::Hsts => Some("max-age=31536000; includeSubDomains"),
            SecurityHeader::Csp => Some("default-src 'none'; frame-ancestors 'none'"),
            SecurityHeader::XContentTypeOptions => Some("nosniff"),
            SecurityHeader::XFrameOptions => Some("DENY"),
            SecurityHeader::ReferrerPolicy => Some("no-referrer"),
            SecurityHeader::XXssProtection => Some("0"),
            SecurityHeader::PermissionsPolicy | SecurityHeader::CrossOriginOpenerPolicy => None,
        }
    }

    /// What the config's JSON Schema says of it.
    pub fn description(self) -> &'static str {
        match self {
            SecurityHeader::Hsts => "Strict-Transport-Security.",
            SecurityHeader::Csp => "Content-Security-Policy.",
            SecurityHeader::XContentTypeOptions => "X-Content-Type-Options (default nosniff).",
            SecurityHeader::XFrameOptions => "X-Frame-Options (default DENY).",
            SecurityHeader::ReferrerPolicy => "Referrer-Policy (default no-referrer).",
            SecurityHeader::XXssProtection => "X-XSS-Protection (default \"0\").",
            SecurityHeader::PermissionsPolicy => "Permissions-Policy (not sent unless set).",
            SecurityHeader::CrossOriginOpenerPolicy => {
                "Cross-Origin-Opener-Policy (not sent unless set)."
            }
        }
    }

    /// The header whose config key is `key`.
    pub fn from_config_key(key: &str) -> Option<SecurityHeader> {
        SecurityHeader::ALL
            .into_iter()
            .find(|h| h.config_key() == key)
    }
}

/// One header set on answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSetting {
    pub name: HeaderName,
    pub value: HeaderValue,
    pub policy: UpstreamPolicy,
}

/// The compiled set of security headers for one route (global defaults
/// merged with the route's overrides at load).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityHeaders {
    pub headers: Vec<HeaderSetting>,
}

impl SecurityHeaders {
    /// Adds the headers to a response. Applied to every response, the
    /// proxy's own errors included.
    pub fn apply(&self, map: &mut HeaderMap) {
        for h in &self.headers {
            if h.policy == UpstreamPolicy::Keep && map.contains_key(&h.name) {
                continue;
            }
            map.insert(h.name.clone(), h.value.clone());
        }
    }
}

/// More than one `name` line: a message a reader could take two ways.
pub fn repeated(map: &HeaderMap, name: header::HeaderName) -> bool {
    map.get_all(name).iter().nth(1).is_some()
}

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): Connection and every header
/// it names, plus the fixed list and any `Proxy-*` header.
pub fn remove_hop_by_hop(map: &mut HeaderMap) {
    let named: Vec<HeaderName> = map
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        map.remove(name);
    }
    for name in &HOP_BY_HOP {
        map.remove(name);
    }
    let proxy: Vec<HeaderName> = map
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        map.remove(name);
    }
}

/// Headers some backends (IIS URL Rewrite, Symfony, Zend, Rails, Spring's
/// HiddenHttpMethodFilter...) obey to change the path or method they route
/// on. A request matched as `POST /static/x` must not be routed upstream as
/// `/api/users`, so they never reach the backend.
static ROUTING_OVERRIDES: [HeaderName; 5] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

pub fn remove_routing_overrides(map: &mut HeaderMap) {
    for name in &ROUTING_OVERRIDES {
        map.remove(name);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets X-Forwarded-For/-Proto/-Host. When the peer is a trusted proxy its
/// X-Forwarded-For chain is kept and the peer appended; otherwise whatever
/// the client claimed is dropped.
pub fn set_forwarded(map: &mut HeaderMap, peer: IpAddr, peer_trusted: bool, host: Option<&str>) {
    let chain = if peer_trusted {
        let prior: Vec<&str> = map
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            peer.to_string()
        } else {
            format!("{}, {}", prior.join(", "), peer)
        }
    } else {
        peer.to_string()
    };
    map.remove(&X_FORWARDED_FOR);
    map.remove(header::FORWARDED);
    if let Ok(v) = HeaderValue::from_str(&chain) {
        map.insert(X_FORWARDED_FOR.clone(), v);
    }
    map.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    map.remove(&X_FORWARDED_HOST);
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        map.insert(X_FORWARDED_HOST.clone(), h);
    }
}

/// The client address for rate limiting: the peer, or, when the peer is a
/// trusted proxy, the right-most X-Forwarded-For entry that is not trusted.
pub fn client_address(
    map: &HeaderMap,
    peer: IpAddr,
    is_trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    if !is_trusted(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in map.get_all(&X_FORWARDED_FOR).iter() {
        let Ok(s) = v.to_str() else { return peer };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A malformed chain can't be trusted any further than the peer.
                Err(_) => return peer,
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// Total size of the request's header section as the limit counts it.
pub fn header_bytes(map: &HeaderMap) -> usize {
    map.iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut m = HeaderMap::new();
        m.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret-Hop"),
        );
        m.insert("x-secret-hop", HeaderValue::from_static("1"));
        m.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        m.insert(header::TE, HeaderValue::from_static("trailers"));
        m.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        m.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        m.insert("x-keep", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut m);
        assert_eq!(m.len(), 1);
        assert!(m.contains_key("x-keep"));
    }

    #[test]
    fn forwarded_for_from_untrusted_peer_is_replaced() {
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        set_forwarded(
            &mut m,
            "10.0.0.9".parse().unwrap(),
            false,
            Some("api.example"),
        );
        assert_eq!(m["x-forwarded-for"], "10.0.0.9");
        assert_eq!(m["x-forwarded-proto"], "https");
        assert_eq!(m["x-forwarded-host"], "api.example");
    }

    #[test]
    fn client_address_walks_trusted_chain() {
        let trusted = |ip: IpAddr| ip.to_string().starts_with("10.");
        let mut m = HeaderMap::new();
        m.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2, 10.0.0.2"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_address(&m, peer, trusted),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        let outsider: IpAddr = "3.3.3.3".parse().unwrap();
        assert_eq!(client_address(&m, outsider, trusted), outsider);
    }

    #[test]
    fn keep_policy_respects_upstream_value() {
        let sh = SecurityHeaders {
            headers: vec![
                HeaderSetting {
                    name: header::CONTENT_SECURITY_POLICY,
                    value: HeaderValue::from_static("default-src 'none'"),
                    policy: UpstreamPolicy::Keep,
                },
                HeaderSetting {
                    name: header::X_FRAME_OPTIONS,
                    value: HeaderValue::from_static("DENY"),
                    policy: UpstreamPolicy::Overwrite,
                },
            ],
        };
        let mut m = HeaderMap::new();
        m.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("upstream"),
        );
        m.insert(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("SAMEORIGIN"),
        );
        sh.apply(&mut m);
        assert_eq!(m[header::CONTENT_SECURITY_POLICY], "upstream");
        assert_eq!(m[header::X_FRAME_OPTIONS], "DENY");
    }
}
