//! Compiled routes and matching. Routes match in file order; first match wins.

use std::num::NonZeroU32;

use http::Method;

use crate::headers::SecurityHeaders;
use crate::transform::fold_char;
use crate::transform::pairs::PairsSpec;
use crate::transform::{DecryptSelection, FieldRule, OpenSpec, SealSpec};

pub mod shadow;
pub mod template;
pub use shadow::{shadows, Shadow};

/// `key_scope` of a route: whose key seals its fields.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    /// The ring's active key (`fs1`).
    #[default]
    Deployment,
    /// The data key of the token's tenant (`fs2`).
    Tenant,
    /// The data key of the token's subject (`fs2`).
    Subject,
}

/// `on_erased_write`: a write for an erased subject.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnErasedWrite {
    /// 410, nothing forwarded.
    #[default]
    Refuse,
    /// A fresh key (version 1 again); the erased data stays unreadable.
    NewKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path, exactly.
    Exact(String),
    /// A prefix on segment boundaries: `/api/users` matches `/api/users` and
    /// `/api/users/7`, never `/api/usersX`.
    Prefix(String),
    Any,
}

impl PathMatch {
    /// The pattern as the access log shows it: `/api/users` (exact),
    /// `/api/users/*` (prefix), `*` (any path).
    pub fn pattern(&self) -> String {
        match self {
            PathMatch::Exact(p) => p.clone(),
            PathMatch::Prefix(p) if p.ends_with('/') => format!("{p}*"),
            PathMatch::Prefix(p) => format!("{p}/*"),
            PathMatch::Any => "*".to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    pub requests_per_second: NonZeroU32,
    pub burst: NonZeroU32,
    /// Where the bucket lives; `on_store_error` only matters for Redis.
    pub store: crate::ratelimit::LimitStore,
    pub on_store_error: crate::ratelimit::OnStoreError,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub host: Option<String>,
    pub path: PathMatch,
    /// Compared case-insensitively (Django, Werkzeug and ASP.NET Core read
    /// `post` as POST).
    pub methods: Option<Vec<Method>>,
    /// The path is compared under the name fold (`transform::fold_char`),
    /// escapes decoded. The default for routes that seal or open fields.
    pub case_insensitive: bool,
    pub upstream: usize,
    /// Effective limit for the route (route override, else the global one); None: unlimited.
    pub rate_limit: Option<RateLimitSettings>,
    /// The route has its own `rate_limit` (its own bucket), rather than
    /// sharing the global one.
    pub own_rate_limit: bool,
    pub headers: SecurityHeaders,
    pub max_body: u64,
    /// What request bodies get sealed (None: the route has no encrypt rules).
    pub seal: Option<SealSpec>,
    /// What answers get opened (None: no decrypt rules).
    pub open: Option<OpenSpec>,
    /// `auth`: whether a bearer token is looked at.
    pub auth: crate::identity::AuthMode,
    pub key_scope: KeyScope,
    /// `auth_sources`: where the caller may be identified from (empty
    /// without `auth`).
    pub auth_sources: Vec<crate::identity::AuthSource>,
    /// Whose key computes the route's blind indexes: `Deployment` (the
    /// ring) or the route's own `key_scope` (the request's data key).
    pub index_scope: KeyScope,
    pub on_erased_write: OnErasedWrite,
    /// `read_any_subject`: roles whose holders open every subject's envelopes.
    pub read_any_subject: Vec<crate::identity::RoleRule>,
    /// What query parameters get (None: forwarded as sent; a route with
    /// encrypt rules or a `query:` section always has one).
    pub query: Option<PairsSpec>,
    /// What urlencoded form bodies get (None: the route takes no forms
    /// when it has rules).
    pub form: Option<PairsSpec>,
    /// `match.path` with `{param}` segments: `path` is then the template's
    /// literal prefix, and the forward stage captures and rebuilds.
    pub template: Option<template::PathTemplate>,
    /// Per template parameter, in order: what its segment becomes (None:
    /// forwarded as it is).
    pub path_params: Vec<Option<template::PathParamAction>>,
    /// Index members removed from answers (`drop_in_response`), as written.
    pub drop_in_response: Vec<String>,
}

impl Route {
    /// Whose data keys seal this route's fields: None for the deployment's.
    pub fn ref_scope(&self) -> Option<crate::crypto::RefScope> {
        match self.key_scope {
            KeyScope::Deployment => None,
            KeyScope::Tenant => Some(crate::crypto::RefScope::Tenant),
            KeyScope::Subject => Some(crate::crypto::RefScope::Subject),
        }
    }

    /// Whether a write for an erased subject gets a fresh key.
    pub fn new_key_after_erasure(&self) -> bool {
        self.on_erased_write == OnErasedWrite::NewKey
    }

    pub fn transforms_request(&self) -> bool {
        self.seal.is_some()
    }

    pub fn transforms_response(&self) -> bool {
        self.open.is_some()
    }

    /// The encrypt rules (none when the route seals nothing).
    pub fn encrypt_rules(&self) -> &[FieldRule] {
        self.seal.as_ref().map_or(&[], |s| &s.rules)
    }

    /// The decrypt selection, if the route opens answers.
    pub fn decrypt_selection(&self) -> Option<&DecryptSelection> {
        self.open.as_ref().map(|o| &o.selection)
    }

    /// The rules that say where this route's envelopes live: its decrypt
    /// paths, else its encrypt paths (for `rewrap --route`).
    pub fn decrypt_or_encrypt_rules(&self) -> Vec<FieldRule> {
        match self.decrypt_selection() {
            Some(DecryptSelection::Paths(rules)) => rules.clone(),
            _ => self.encrypt_rules().to_vec(),
        }
    }

    /// `host` is lowercase without port; `path` is the canonical path with
    /// matrix parameters (`;x=y`) already removed from each segment.
    pub fn matches(&self, host: Option<&str>, path: &str, method: &Method) -> bool {
        if let Some(want) = &self.host {
            if host != Some(want.as_str()) {
                return false;
            }
        }
        self.matches_path_and_method(path, method)
    }

    /// Everything but the host.
    pub fn matches_path_and_method(&self, path: &str, method: &Method) -> bool {
        if let Some(methods) = &self.methods {
            // `post` is POST to Django (`REQUEST_METHOD.upper()`), Flask and
            // ASP.NET Core: a case variant must not fall through.
            let m = method.as_str();
            if !methods.iter().any(|x| x.as_str().eq_ignore_ascii_case(m)) {
                return false;
            }
        }
        let (p, exact) = match &self.path {
            PathMatch::Any => return true,
            PathMatch::Exact(p) => (p.trim_end_matches('/'), true),
            PathMatch::Prefix(p) => (p.trim_end_matches('/'), false),
        };
        let Some(rest) = strip_route_prefix(path, p, self.case_insensitive) else {
            return false;
        };
        // Rails (`(.:format)`) and older Spring MVC route `/api/users.json`
        // to `/api/users`, Spring's suffix matching even `/api/users.json.gz`,
        // and many frameworks ignore a trailing slash: every dotted suffix on
        // the route's last segment belongs to the route, or it would fall
        // through to a later route in plaintext.
        let format_suffix = rest.strip_prefix('.').is_some_and(|ext| {
            let ext = ext.strip_suffix('/').unwrap_or(ext);
            !ext.contains('/')
        });
        if exact {
            rest.is_empty() || rest == "/" || format_suffix
        } else {
            rest.is_empty() || rest.starts_with('/') || format_suffix
        }
    }
}

/// What is left of the canonical `path` after the route's `prefix`, if it
/// starts with it. Case-insensitive routes compare decoded characters under
/// the one name fold, the folds backends apply to paths: ASP.NET Core and
/// IIS (`OrdinalIgnoreCase`: `ı`, `ſ` are `I`, `S`), Spring
/// (`equalsIgnoreCase`, `toLowerCase`: `İ` is `i`, the Kelvin sign `k`).
fn strip_route_prefix<'p>(path: &'p str, prefix: &str, case_insensitive: bool) -> Option<&'p str> {
    if !case_insensitive {
        return path.strip_prefix(prefix);
    }
    let (mut i, mut j) = (0, 0);
    while j < prefix.len() {
        let (want, used) = decoded_char(prefix, j)?;
        let (got, len) = decoded_char(path, i)?;
        if fold_char(want) != fold_char(got) {
            return None;
        }
        i += len;
        j += used;
    }
    path.get(i..)
}

/// The character at byte `i` of a canonical path, `%XX` escapes decoded
/// (a UTF-8 sequence of them is one character), and the bytes it takes.
fn decoded_char(s: &str, i: usize) -> Option<(char, usize)> {
    let b = s.as_bytes();
    let byte_at = |k: usize| -> Option<u8> {
        let hex = b.get(k..k + 3)?;
        if hex[0] != b'%' {
            return None;
        }
        Some(hex_val(hex[1])? * 16 + hex_val(hex[2])?)
    };
    if b.get(i) != Some(&b'%') {
        let c = s.get(i..)?.chars().next()?;
        return Some((c, c.len_utf8()));
    }
    let lead = byte_at(i)?;
    let n = match lead {
        0..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => return None,
    };
    let mut bytes = [0u8; 4];
    for (k, slot) in bytes.iter_mut().enumerate().take(n) {
        *slot = byte_at(i + 3 * k)?;
    }
    let c = std::str::from_utf8(bytes.get(..n)?).ok()?.chars().next()?;
    Some((c, 3 * n))
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

/// A request without a host reached a route bound to a host: we can't tell
/// whether it was meant for that route, so it is refused, never passed on to
/// a later route (the backend may well take it as the bound host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRequired;

impl RouteTable {
    pub fn by_name(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

impl AsRef<Route> for Route {
    fn as_ref(&self) -> &Route {
        self
    }
}

/// The route a request goes to, among `routes` in match order (the config's
/// routes, or the runtime's bundles of them). A request with no host
/// (HTTP/1.0 without Host, HTTP/2 without :authority) goes to the first
/// route it matches as long as no host-bound route before it matches its
/// path and method; if one does, the answer is `HostRequired`. So it is
/// never given a route it would not have had with the bound host.
pub fn select<'r, R: AsRef<Route>>(
    routes: &'r [R],
    host: Option<&str>,
    path: &str,
    method: &Method,
) -> Result<Option<&'r R>, HostRequired> {
    for r in routes {
        let route = r.as_ref();
        if !route.matches_path_and_method(path, method) {
            continue;
        }
        match (&route.host, host) {
            (None, _) => return Ok(Some(r)),
            (Some(want), Some(h)) if want == h => return Ok(Some(r)),
            (Some(_), Some(_)) => {}
            (Some(_), None) => return Err(HostRequired),
        }
    }
    Ok(None)
}

/// A request path in the one spelling that is both matched and forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    /// Forwarded upstream: dot segments resolved, `//` collapsed, escapes of
    /// unreserved characters decoded, other escapes in upper case.
    pub path: String,
    /// `path` with `;params` cut from every segment, when it has any.
    params_cut: Option<String>,
}

impl CanonicalPath {
    /// Matched against routes: `path` with `;params` cut from every segment,
    /// the way servlet containers map it, so `/api;x/users` can't dodge `/api/users`.
    pub fn match_path(&self) -> &str {
        self.params_cut.as_deref().unwrap_or(&self.path)
    }
}

/// Is `raw` canonical as it stands: only unreserved characters and `/`,
/// no empty segment but a trailing one, no `.` or `..` segment? Then
/// `canonical_path` would give it back unchanged (nothing to decode, to
/// collapse, to resolve or to cut), and most request paths are like this.
fn already_canonical(raw: &str) -> bool {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let plain = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'/');
    if !b.iter().all(plain) {
        return false;
    }
    // Segments between the first `/` and the end; a trailing `/` makes an
    // empty last one, which `canonical_path` keeps.
    let inner = raw.get(1..).unwrap_or("");
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    raw == "/"
        || inner
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Canonicalizes a request path, or refuses it. Refused: anything a backend
/// could read as a different path than we matched — encoded `/`, `\`, `%` or
/// control characters, backslashes, bad escapes, escapes that are not UTF-8,
/// fullwidth forms of ASCII, whitespace at either end of a segment, `..`
/// above the root.
pub fn canonical_path(raw: &str) -> Result<CanonicalPath, &'static str> {
    if already_canonical(raw) {
        return Ok(CanonicalPath {
            path: raw.to_owned(),
            params_cut: None,
        });
    }
    canonicalize(raw)
}

/// `canonical_path` of a path that is not already canonical.
fn canonicalize(raw: &str) -> Result<CanonicalPath, &'static str> {
    if !raw.starts_with('/') {
        return Err("path must start with /");
    }
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    // Escaped bytes above 0x7f, checked as UTF-8 once their run ends.
    let mut utf8_run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' && !utf8_run.is_empty() {
            check_utf8_run(&mut utf8_run)?;
        }
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("truncated percent-escape")?;
                let v = hex_val(hex[0])
                    .zip(hex_val(hex[1]))
                    .map(|(h, l)| h * 16 + l)
                    .ok_or("invalid percent-escape")?;
                if v < 0x80 && !utf8_run.is_empty() {
                    check_utf8_run(&mut utf8_run)?;
                }
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(char::from(v));
                } else if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                    return Err("encoded slash, backslash or control character");
                } else if v == b'%' {
                    // A backend or framework that decodes twice would read
                    // `%2575` as `u`: a second spelling of every path.
                    return Err("encoded percent sign");
                } else if v == b'?' || v == b'#' {
                    // The same class: decoded once more (or by a router
                    // that decodes before it splits), `%3F` ends the path
                    // and `%23` starts a fragment, so `/api/users%3Fx`
                    // reaches a backend as `/api/users`.
                    return Err("encoded question mark or number sign");
                } else {
                    if v >= 0x80 {
                        utf8_run.push(v);
                    }
                    decoded.push('%');
                    decoded.push(char::from(HEX[usize::from(v >> 4)]));
                    decoded.push(char::from(HEX[usize::from(v & 15)]));
                }
                i += 3;
            }
            b'\\' => return Err("backslash in path"),
            0..=0x20 | 0x7f.. => return Err("control, space or non-ASCII byte in path"),
            _ => {
                decoded.push(char::from(b));
                i += 1;
            }
        }
    }
    if !utf8_run.is_empty() {
        check_utf8_run(&mut utf8_run)?;
    }
    let trailing = decoded.len() > 1 && decoded.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        // `.;x` and `..;x` are dot segments to a servlet container, and a
        // segment of only `;params` is an empty one (`/api/;x/users` is
        // `/api//users`, i.e. `/api/users`): dropped like `//`.
        let bare = seg.split(';').next().unwrap_or("");
        if trims_to_other_name(seg) {
            return Err("whitespace at the start or end of a path segment");
        }
        match bare {
            "" => {}
            "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err("path climbs above the root");
                }
            }
            _ => segments.push(seg),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &segments {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || trailing {
        path.push('/');
    }
    let params_cut = segments.iter().any(|seg| seg.contains(';')).then(|| {
        let mut cut = String::with_capacity(path.len());
        for seg in &segments {
            cut.push('/');
            cut.push_str(seg.split(';').next().unwrap_or(""));
        }
        if cut.is_empty() || trailing {
            cut.push('/');
        }
        cut
    });
    Ok(CanonicalPath { path, params_cut })
}

/// A run of escaped non-ASCII bytes must be UTF-8 (an overlong `%C0%AE` is a
/// `.` to some old decoders) and hold no character whose compatibility form
/// (NFKC) contains ASCII: fullwidth forms (`%EF%BC%8F`, `／`, is `/`),
/// `‥` (U+2025) is `..`, `․` (U+2024) and `﹒` (U+FE52) are `.`, `﹨`
/// (U+FE68) is `\`, `ﬁ` is `fi`, `Ｋ`/`K` (Kelvin) is `K` — each a second
/// spelling of path syntax or of a name to a backend that normalizes (Python
/// and .NET `normalize`, Windows best-fit mapping).
fn check_utf8_run(run: &mut Vec<u8>) -> Result<(), &'static str> {
    let ok = std::str::from_utf8(run).map_err(|_| "escaped bytes are not UTF-8")?;
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    let mut buf = [0u8; 4];
    if ok.chars().any(|c| {
        nfkc.normalize(c.encode_utf8(&mut buf))
            .bytes()
            .any(|b| b.is_ascii())
    }) {
        return Err("compatibility form of an ASCII character in path");
    }
    run.clear();
    Ok(())
}

/// True when a backend that trims names would read another one: a piece of
/// the segment (escapes decoded) between its edges, dots and `;` starts or
/// ends with whitespace. IIS trims `users%20` and Windows trailing dots and
/// spaces, .NET trims names, Spring's suffix matching strips `.json` before
/// binding what is left.
fn trims_to_other_name(segment: &str) -> bool {
    if !segment.contains('%') {
        return false;
    }
    let text = percent_decode_lossy(segment);
    let ws = |c: char| c.is_whitespace() || matches!(c, '\u{200B}' | '\u{FEFF}' | '\u{180E}');
    text.split(['.', ';'])
        .any(|piece| piece.starts_with(ws) || piece.ends_with(ws))
}

/// `%XX` decoded (the path was validated before); other bytes as they are.
fn percent_decode_lossy(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex_val),
            b.get(i + 2).copied().and_then(hex_val),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A route named `name` on `path` that transforms nothing.
    pub(crate) fn named(name: &str, path: PathMatch) -> Route {
        Route {
            name: name.into(),
            host: None,
            path,
            methods: None,
            case_insensitive: false,
            upstream: 0,
            rate_limit: None,
            own_rate_limit: false,
            headers: SecurityHeaders::default(),
            max_body: 1024,
            seal: None,
            open: None,
            auth: crate::identity::AuthMode::None,
            key_scope: KeyScope::Deployment,
            auth_sources: Vec::new(),
            index_scope: KeyScope::Deployment,
            on_erased_write: OnErasedWrite::Refuse,
            read_any_subject: Vec::new(),
            query: None,
            form: None,
            template: None,
            path_params: Vec::new(),
            drop_in_response: Vec::new(),
        }
    }

    fn route(path: PathMatch) -> Route {
        named("r", path)
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let r = route(PathMatch::Prefix("/api/users".into()));
        assert!(r.matches(None, "/api/users", &Method::GET));
        assert!(r.matches(None, "/api/users/", &Method::GET));
        assert!(r.matches(None, "/api/users/7", &Method::GET));
        assert!(!r.matches(None, "/api/usersX", &Method::GET));
        assert!(
            r.matches(None, "/api/users.json", &Method::POST),
            "format suffix"
        );
        assert!(r.matches(None, "/api/users.", &Method::POST));
        assert!(!r.matches(None, "/api/users.json/x", &Method::POST));
        assert!(!r.matches(None, "/api/user", &Method::GET));
        assert!(!r.matches(None, "/API/users", &Method::GET));
        let root = route(PathMatch::Prefix("/".into()));
        assert!(root.matches(None, "/anything", &Method::GET));
        assert!(root.matches(None, "/", &Method::GET));
    }

    #[test]
    fn case_insensitive_prefix() {
        let mut r = route(PathMatch::Prefix("/api/users".into()));
        r.case_insensitive = true;
        assert!(r.matches(None, "/API/Users/1", &Method::GET));
        // The name fold, escapes decoded: ı, İ, ſ, the Kelvin sign.
        let mut k = route(PathMatch::Exact("/api/kyc".into()));
        k.case_insensitive = true;
        for p in [
            "/api/u%C5%BFers",
            "/API/U%C5%BFERS/7",
            "/api/us%c3%89rs",
            "/api/users.json",
        ] {
            let want = !p.contains("%c3");
            assert_eq!(r.matches(None, p, &Method::POST), want, "{p}");
        }
        assert!(k.matches(None, "/api/%E2%84%AAyc", &Method::POST));
        let mut p = route(PathMatch::Prefix("/api/patients".into()));
        p.case_insensitive = true;
        assert!(p.matches(None, "/api/pat%C4%B1ents", &Method::POST));
        assert!(p.matches(None, "/api/PAT%C4%B0ENTS", &Method::POST));
        assert!(!p.matches(None, "/api/pat%C4%B1ent", &Method::POST));
        assert!(!p.matches(None, "/api/pat%C4%B1entsX", &Method::POST));
        // Case-sensitive routes compare the canonical bytes.
        assert!(!route(PathMatch::Prefix("/api/users".into())).matches(
            None,
            "/api/u%C5%BFers",
            &Method::POST
        ));
        // A route written with an escape matches its folds too.
        let mut e = route(PathMatch::Prefix("/caf%C3%A9".into()));
        e.case_insensitive = true;
        assert!(e.matches(None, "/CAF%C3%89/x", &Method::GET));
        assert!(!e.matches(None, "/cafe", &Method::GET));
    }

    #[test]
    fn methods_match_in_any_case() {
        let mut r = route(PathMatch::Prefix("/api/orders".into()));
        r.methods = Some(vec![Method::POST, Method::PUT]);
        for m in ["post", "Post", "pOST", "put", "POST"] {
            let m = Method::from_bytes(m.as_bytes()).expect("method");
            assert!(r.matches(None, "/api/orders", &m), "{m}");
        }
        assert!(!r.matches(None, "/api/orders", &Method::GET));
        assert!(!r.matches(
            None,
            "/api/orders",
            &Method::from_bytes(b"posts").expect("method")
        ));
    }

    #[test]
    fn host_and_methods() {
        let mut r = route(PathMatch::Exact("/x".into()));
        r.host = Some("a.example".into());
        r.methods = Some(vec![Method::POST]);
        assert!(r.matches(Some("a.example"), "/x", &Method::POST));
        assert!(!r.matches(Some("b.example"), "/x", &Method::POST));
        assert!(!r.matches(None, "/x", &Method::POST));
        assert!(!r.matches(Some("a.example"), "/x", &Method::GET));
        assert!(!r.matches(Some("a.example"), "/x/y", &Method::POST));
        assert!(
            r.matches(Some("a.example"), "/x/", &Method::POST),
            "trailing slash"
        );
        assert!(
            r.matches(Some("a.example"), "/x.json", &Method::POST),
            "format suffix"
        );
        assert!(!r.matches(Some("a.example"), "/xy", &Method::POST));
    }

    fn canon(p: &str) -> Result<(String, String), &'static str> {
        canonical_path(p).map(|c| {
            let m = c.match_path().to_owned();
            (c.path, m)
        })
    }

    #[test]
    fn the_fast_path_gives_what_the_full_canonicalization_gives() {
        // Every path up to 7 characters over an alphabet with the syntax
        // that matters (`/`, `.`, `;`, `%`, unreserved characters): where
        // the fast path takes a path, the full one must agree exactly.
        let alphabet = ['/', 'a', '.', '-', '~', ';', '%', '2', 'e', 'Z'];
        let mut taken = 0;
        let mut paths = vec![String::from("/")];
        for _ in 0..6 {
            let mut next = Vec::new();
            for p in &paths {
                for c in alphabet {
                    let mut q = p.clone();
                    q.push(c);
                    next.push(q);
                }
            }
            for p in &next {
                if already_canonical(p) {
                    taken += 1;
                    let full = canonicalize(p).map(|c| (c.path.clone(), c.match_path().to_owned()));
                    assert_eq!(full, Ok((p.clone(), p.clone())), "{p}");
                }
            }
            paths = next;
        }
        assert!(already_canonical("/"));
        assert!(taken > 10_000, "{taken}");
    }

    #[test]
    fn canonical_paths_close_spelling_bypasses() {
        let same = |p: &str| (p.to_string(), p.to_string());
        assert_eq!(canon("/api/users"), Ok(same("/api/users")));
        assert_eq!(canon("/api//users"), Ok(same("/api/users")));
        assert_eq!(canon("/api/./users"), Ok(same("/api/users")));
        assert_eq!(canon("/api/x/../users"), Ok(same("/api/users")));
        assert_eq!(canon("/api/%75sers"), Ok(same("/api/users")));
        assert_eq!(canon("/api/%2e%2E/api/users"), Ok(same("/api/users")));
        assert_eq!(canon("/api/users/"), Ok(same("/api/users/")));
        assert_eq!(canon("/"), Ok(same("/")));
        assert_eq!(canon("/a%c3%a9"), Ok(same("/a%C3%A9")));
        assert_eq!(
            canon("/api;jsessionid=1/users;x"),
            Ok(("/api;jsessionid=1/users;x".into(), "/api/users".into()))
        );
        assert_eq!(canon("/api/x/..;/users"), Ok(same("/api/users")));
        assert_eq!(canon("/api/;/users"), Ok(same("/api/users")));
        assert_eq!(canon("/api/;x=1/users"), Ok(same("/api/users")));
        assert_eq!(canon("/;x/api/users"), Ok(same("/api/users")));
        assert_eq!(canon("/api/users/;x"), Ok(same("/api/users")));
        assert!(canon("/api%2fusers").is_err());
        assert!(canon("/api%5cusers").is_err());
        assert!(canon("/api\\users").is_err());
        assert!(canon("/api/%00").is_err());
        assert!(canon("/%zz").is_err());
        assert!(canon("/%4").is_err());
        assert!(canon("/..").is_err());
        assert!(canon("api").is_err());
    }

    #[test]
    fn spellings_a_backend_decodes_twice_trims_or_folds_are_refused() {
        // Encoded percent: `%2575` is `u` to a backend that decodes twice.
        for p in ["/api/%2575sers", "/api/users%25", "/%25", "/api%252Fusers"] {
            assert!(canon(p).is_err(), "{p}");
        }
        // Whitespace at an edge of a segment, a dot-separated piece or a
        // `;param`, in every Unicode spelling.
        for p in [
            "/api/users%20",
            "/api/users%20/7",
            "/api/%20users",
            "/api/users%C2%A0",
            "/api/users%E3%80%80",
            "/api/users%E2%80%8B",
            "/api/users%EF%BB%BF",
            "/api/users%20.",
            "/api/users.%20",
            "/api/users%20.json",
            "/api/users%20;x",
            "/api/users;x%20",
        ] {
            assert!(canon(p).is_err(), "{p}");
        }
        // Escapes that are not UTF-8 (overlong `.`, lone bytes, surrogates)
        // and characters whose NFKC form holds ASCII: fullwidth forms, the
        // two-dot leader, one-dot leader, small full stop, small reverse
        // solidus, ligatures, the Kelvin sign; encoded `?` and `#`.
        for p in [
            "/api/users%C0%AE",
            "/api/users%C0",
            "/api/%ED%A0%80",
            "/api/%EF%BD%95sers",
            "/api%EF%BC%8Fusers",
            "/api/x/%E2%80%A5/users",
            "/api/users%E2%80%A4json",
            "/api/users%EF%B9%92json",
            "/api%EF%B9%A8users",
            "/api/%EF%AC%81le",
            "/api/%E2%84%AAyc",
            "/api/users%3Fx",
            "/api/users%3f",
            "/api/users%23x",
        ] {
            assert!(canon(p).is_err(), "{p}");
        }
        // Inner spaces and real non-ASCII names are fine.
        assert_eq!(
            canon("/files/my%20doc"),
            Ok(("/files/my%20doc".into(), "/files/my%20doc".into()))
        );
        assert_eq!(
            canon("/caf%C3%A9/x"),
            Ok(("/caf%C3%A9/x".into(), "/caf%C3%A9/x".into()))
        );
    }

    #[test]
    fn every_dotted_suffix_of_the_last_segment_belongs_to_the_route() {
        for r in [
            route(PathMatch::Prefix("/api/users".into())),
            route(PathMatch::Exact("/api/users".into())),
        ] {
            for p in [
                "/api/users.json.gz",
                "/api/users.tar.gz",
                "/api/users..",
                "/api/users.json/",
                "/api/users.a.b.c",
            ] {
                assert!(r.matches(None, p, &Method::POST), "{:?} {p}", r.path);
            }
            assert!(!r.matches(None, "/api/users.json/x", &Method::POST));
            assert!(!r.matches(None, "/api/usersjson", &Method::POST));
        }
    }

    #[test]
    fn a_host_less_request_stops_at_a_host_bound_route_it_would_match() {
        let mut bound = named("bound", PathMatch::Prefix("/api/users".into()));
        bound.host = Some("api.example".into());
        let catch_all = named("catch_all", PathMatch::Prefix("/".into()));
        let routes = vec![bound, catch_all];
        let get = Method::GET;
        let pick = |host: Option<&str>, path: &str| {
            select(&routes, host, path, &get).map(|r| r.map(|r| r.name.as_str()))
        };
        assert_eq!(pick(None, "/api/users"), Err(HostRequired));
        assert_eq!(pick(None, "/api/users.json"), Err(HostRequired));
        assert_eq!(pick(None, "/health"), Ok(Some("catch_all")));
        assert_eq!(pick(Some("api.example"), "/api/users"), Ok(Some("bound")));
        assert_eq!(
            pick(Some("other.example"), "/api/users"),
            Ok(Some("catch_all"))
        );
        let empty: Vec<Route> = Vec::new();
        assert_eq!(
            select(&empty, None, "/", &get).map(|r| r.is_some()),
            Ok(false)
        );
    }
}
