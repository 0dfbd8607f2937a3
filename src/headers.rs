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

/// End-to-end headers: what the message means to the backend, and what the
/// proxy reads to decide (Host, Content-*, Authorization...). The standard
/// fields (the IANA registry's common ones), by name or by family prefix,
/// plus the ones this proxy sets or a backend trusts it for.
static END_TO_END: [&str; 40] = [
    "age",
    "allow",
    "authorization",
    "baggage",
    "cache-control",
    "cookie",
    "date",
    "digest",
    "dnt",
    "etag",
    "expect",
    "expires",
    "forwarded",
    "from",
    "host",
    "idempotency-key",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "origin",
    "pragma",
    "priority",
    "range",
    "referer",
    "repr-digest",
    "signature",
    "signature-input",
    "traceparent",
    "tracestate",
    "upgrade-insecure-requests",
    "user-agent",
    "via",
    "want-digest",
    "warning",
    "x-api-key",
    "x-csrf-token",
    "x-request-id",
    "x-requested-with",
    "x-xsrf-token",
];

static END_TO_END_PREFIXES: [&str; 7] = [
    "content-",
    "accept",
    "access-control-",
    "if-",
    "sec-",
    "x-forwarded-",
    "x-original-",
];

/// The first `Connection` token of a request that names an end-to-end
/// header (see [`END_TO_END`]), if any. Hop-by-hop removal would drop it
/// after the proxy judged the request with it: `Connection: content-type`
/// makes the backend get a sealed JSON body without its type, which Rack
/// and CGI then parse as a form. Such a request is refused, never
/// forwarded without the header. Connection options (`close`,
/// `keep-alive`, `upgrade`, `te`...) and extension names (`X-Hop`) stay
/// allowed; the latter are removed as hop-by-hop headers.
pub fn connection_names_end_to_end(map: &HeaderMap) -> Option<HeaderName> {
    for v in map.get_all(header::CONNECTION) {
        // A value that is not text names nothing hyper or we would remove.
        let Ok(v) = v.to_str() else { continue };
        for token in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
                continue;
            };
            let n = name.as_str();
            if END_TO_END.contains(&n) || END_TO_END_PREFIXES.iter().any(|p| n.starts_with(p)) {
                return Some(name);
            }
        }
    }
    None
}

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

/// Headers by which a client claims an address, scheme, port, host or path
/// prefix for itself (Rails' `remote_ip` believes Client-IP, nginx setups
/// X-Real-IP, CDN setups True-Client-IP / CF-Connecting-IP...). Believed
/// only from a trusted proxy; from anyone else they are removed, with every
/// `X-Forwarded-*` and `X-Original-*` header (the prefixes are the class:
/// -Port, -Scheme, -Ssl, -Prefix, -Server, -Uri...).
static CLIENT_CLAIMS: [HeaderName; 14] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-originating-ip"),
    HeaderName::from_static("x-remote-ip"),
    HeaderName::from_static("x-remote-addr"),
    HeaderName::from_static("x-proxyuser-ip"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("front-end-https"),
];

const CLIENT_CLAIM_PREFIXES: [&str; 2] = ["x-forwarded-", "x-original-"];

/// Removes what an untrusted client claims about where it is (see
/// [`CLIENT_CLAIMS`]); the proxy's own X-Forwarded-For/-Proto/-Host are set
/// after this.
pub fn remove_client_claims(map: &mut HeaderMap) {
    for name in &CLIENT_CLAIMS {
        map.remove(name);
    }
    let prefixed: Vec<HeaderName> = map
        .keys()
        .filter(|k| {
            CLIENT_CLAIM_PREFIXES
                .iter()
                .any(|p| k.as_str().starts_with(p))
        })
        .cloned()
        .collect();
    for name in prefixed {
        map.remove(name);
    }
    map.remove(header::FORWARDED);
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split Cookie into several fields;
/// they are joined with "; " before the message goes on as HTTP/1.1. Lines
/// from an HTTP/1.1 client are joined the same way: several Cookie lines are
/// read as the first, the last or all of them by different servers.
pub fn join_cookies(map: &mut HeaderMap) {
    if !repeated(map, header::COOKIE) {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in map.get_all(header::COOKIE) {
        if v.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    map.remove(header::COOKIE);
    // Joined valid field values are a valid field value.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        map.insert(header::COOKIE, v);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The peer's address as an X-Forwarded-For value: made once per
/// connection, so a request doesn't format it again.
pub fn forwarded_for(peer: IpAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::from_str(&peer.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Sets X-Forwarded-For/-Proto/-Host. When the peer is a trusted proxy its
/// X-Forwarded-For chain is kept and the peer appended; otherwise whatever
/// the client claimed is dropped. `peer_value` is `forwarded_for(peer)`;
/// `host` the request's Host as sent (forwarded when it is visible ASCII).
pub fn set_forwarded(
    map: &mut HeaderMap,
    peer: IpAddr,
    peer_value: &HeaderValue,
    peer_trusted: bool,
    host: Option<&HeaderValue>,
) {
    let chain = if peer_trusted {
        let prior: Vec<&str> = map
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            Some(peer_value.clone())
        } else {
            HeaderValue::from_str(&format!("{}, {}", prior.join(", "), peer)).ok()
        }
    } else {
        remove_client_claims(map);
        Some(peer_value.clone())
    };
    map.remove(&X_FORWARDED_FOR);
    map.remove(header::FORWARDED);
    if let Some(v) = chain {
        map.insert(X_FORWARDED_FOR.clone(), v);
    }
    map.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    map.remove(&X_FORWARDED_HOST);
    if let Some(h) = host.filter(|h| h.to_str().is_ok()) {
        map.insert(X_FORWARDED_HOST.clone(), h.clone());
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
    fn connection_may_name_options_and_extensions_but_no_end_to_end_header() {
        let named = |conn: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONNECTION, HeaderValue::from_str(conn).unwrap());
            connection_names_end_to_end(&m).map(|n| n.to_string())
        };
        for ok in [
            "close",
            "Keep-Alive, TE",
            "Upgrade, HTTP2-Settings",
            "close, X-Secret-Hop",
            "trailer, transfer-encoding, proxy-connection",
        ] {
            assert_eq!(named(ok), None, "{ok}");
        }
        for h in [
            "Content-Type",
            "content-length",
            "CONTENT-ENCODING",
            "host",
            "authorization",
            "cookie",
            "x-forwarded-for",
            "x-request-id",
            "accept",
            "if-match",
            "origin",
        ] {
            assert_eq!(
                named(&format!("keep-alive, {h}")),
                Some(h.to_ascii_lowercase()),
                "{h}"
            );
        }
    }

    #[test]
    fn client_claims_from_an_untrusted_peer_are_removed_and_kept_from_a_trusted_one() {
        let claims = [
            "x-real-ip",
            "client-ip",
            "x-forwarded-port",
            "x-forwarded-anything",
            "x-original-forwarded-for",
            "forwarded",
        ];
        for trusted in [false, true] {
            let mut m = HeaderMap::new();
            for c in claims {
                m.insert(
                    HeaderName::from_static(c),
                    HeaderValue::from_static("6.6.6.6"),
                );
            }
            m.insert("x-keep", HeaderValue::from_static("yes"));
            let peer = "10.0.0.9".parse().unwrap();
            set_forwarded(&mut m, peer, &forwarded_for(peer), trusted, None);
            assert!(m.contains_key("x-keep"));
            for c in claims {
                // Forwarded is replaced by X-Forwarded-For either way.
                let kept = trusted && c != "forwarded";
                assert_eq!(m.contains_key(c), kept, "{c} trusted={trusted}");
            }
        }
    }

    #[test]
    fn cookie_lines_are_joined() {
        let mut m = HeaderMap::new();
        m.append(header::COOKIE, HeaderValue::from_static("a=1"));
        m.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        join_cookies(&mut m);
        let lines: Vec<_> = m.get_all(header::COOKIE).iter().collect();
        assert_eq!(lines, ["a=1; b=2; c=3"]);
        let mut one = HeaderMap::new();
        one.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1");
    }

    #[test]
    fn forwarded_for_from_untrusted_peer_is_replaced() {
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let peer = "10.0.0.9".parse().unwrap();
        let host = HeaderValue::from_static("api.example");
        set_forwarded(&mut m, peer, &forwarded_for(peer), false, Some(&host));
        assert_eq!(m["x-forwarded-for"], "10.0.0.9");
        assert_eq!(m["x-forwarded-proto"], "https");
        assert_eq!(m["x-forwarded-host"], "api.example");
    }

    #[test]
    fn a_trusted_peer_is_appended_to_the_chain_and_v6_peers_are_written_plain() {
        let mut m = HeaderMap::new();
        m.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        m.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        let peer: IpAddr = "2001:db8::7".parse().unwrap();
        set_forwarded(&mut m, peer, &forwarded_for(peer), true, None);
        assert_eq!(m["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 2001:db8::7");
        assert!(!m.contains_key("x-forwarded-host"));
        // A Host that is not visible ASCII is not echoed as X-Forwarded-Host.
        let mut m = HeaderMap::new();
        let odd = HeaderValue::from_bytes(b"caf\xc3\xa9.example").unwrap();
        set_forwarded(&mut m, peer, &forwarded_for(peer), false, Some(&odd));
        assert_eq!(m["x-forwarded-for"], "2001:db8::7");
        assert!(!m.contains_key("x-forwarded-host"));
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
