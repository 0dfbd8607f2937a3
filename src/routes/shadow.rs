//! Shadowing: which earlier route takes requests that a later route was
//! written for. Routes match in file order and the first match wins, so an
//! earlier `/api` silently takes `/api/patients` and everything its rules
//! would have sealed goes upstream without them.
//!
//! Pure over compiled routes. Overlap is decided with `Route::matches`
//! itself, on candidate requests built from both routes' hosts, methods and
//! path spellings, so the analysis cannot drift from the matcher: the tests
//! compare it with the matcher over an exhaustive set of paths.

use http::Method;

use super::{PathMatch, Route};

/// An earlier route that takes some or all requests a later route matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// Index of the route that wins.
    pub earlier: usize,
    /// Index of the route that loses those requests.
    pub later: usize,
    pub overlap: Overlap,
}

/// What an earlier route takes of a later one's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// Which of the later route's hosts the earlier one takes.
    pub hosts: HostOverlap,
    /// Which of the later route's methods the earlier one takes.
    pub methods: MethodOverlap,
    /// Whether the earlier route takes every path the later one matches.
    pub all_paths: bool,
    /// One request that both match (and so goes to the earlier route).
    pub example: ExampleRequest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOverlap {
    /// Every host the later route matches.
    All,
    /// Only this host (the earlier route is bound to it, the later is not).
    Only(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodOverlap {
    /// Every method the later route matches.
    All,
    /// Only these methods.
    Only(Vec<Method>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleRequest {
    /// None: any Host header.
    pub host: Option<String>,
    pub method: Method,
    pub path: String,
}

impl Overlap {
    /// The earlier route takes every request the later one matches: the
    /// later route never sees a request.
    pub fn is_total(&self) -> bool {
        self.hosts == HostOverlap::All && self.methods == MethodOverlap::All && self.all_paths
    }

    /// What the earlier route takes, in words, with an example request:
    /// "every request that route "b" matches (e.g. POST /b)", or "(some of)
    /// the GET requests for host h that route "b" matches (e.g. ...)".
    pub fn describe(&self, later: &str) -> String {
        let example = &self.example;
        if self.is_total() {
            return format!("every request that route {later:?} matches (e.g. {example})");
        }
        let mut s = String::new();
        if !self.all_paths {
            s.push_str("some of ");
        }
        s.push_str("the ");
        if let MethodOverlap::Only(ms) = &self.methods {
            let ms: Vec<&str> = ms.iter().map(Method::as_str).collect();
            s.push_str(&ms.join("/"));
            s.push(' ');
        }
        s.push_str("requests");
        if let HostOverlap::Only(h) = &self.hosts {
            s.push_str(&format!(" for host {h}"));
        }
        format!("{s} that route {later:?} matches (e.g. {example})")
    }
}

impl std::fmt::Display for ExampleRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if let Some(h) = &self.host {
            write!(f, " on host {h}")?;
        }
        Ok(())
    }
}

/// Every pair (earlier, later) of routes where the earlier one takes
/// requests the later one matches, in route order.
pub fn shadows(routes: &[Route]) -> Vec<Shadow> {
    let mut out = Vec::new();
    for (j, later) in routes.iter().enumerate() {
        for (i, earlier) in routes[..j].iter().enumerate() {
            if let Some(overlap) = shadow(earlier, later) {
                out.push(Shadow {
                    earlier: i,
                    later: j,
                    overlap,
                });
            }
        }
    }
    out
}

/// Whether `earlier` (placed before `later`) takes any of `later`'s
/// requests, and which.
pub fn shadow(earlier: &Route, later: &Route) -> Option<Overlap> {
    let (host, hosts) = host_overlap(earlier, later)?;
    let (methods, method_overlap) = method_overlap(earlier, later)?;
    let method = representative(&methods);
    let (path, all_paths) = path_overlap(earlier, later, host.as_deref(), &method)?;
    Some(Overlap {
        hosts,
        methods: method_overlap,
        all_paths,
        example: ExampleRequest { host, method, path },
    })
}

/// (the Host of an example request both match, how much of `later` it is).
fn host_overlap(earlier: &Route, later: &Route) -> Option<(Option<String>, HostOverlap)> {
    match (&earlier.host, &later.host) {
        (None, h) => Some((h.clone(), HostOverlap::All)),
        (Some(e), None) => Some((Some(e.clone()), HostOverlap::Only(e.clone()))),
        (Some(e), Some(l)) if e == l => Some((Some(l.clone()), HostOverlap::All)),
        _ => None,
    }
}

/// (methods both match, how much of `later` they are). An empty list of
/// shared methods means "any method" (neither route lists any).
fn method_overlap(earlier: &Route, later: &Route) -> Option<(Vec<Method>, MethodOverlap)> {
    match (&earlier.methods, &later.methods) {
        (None, None) => Some((Vec::new(), MethodOverlap::All)),
        (None, Some(l)) => Some((l.clone(), MethodOverlap::All)),
        (Some(e), None) => Some((e.clone(), MethodOverlap::Only(e.clone()))),
        (Some(e), Some(l)) => {
            let mut shared: Vec<Method> = Vec::new();
            for m in l {
                if e.contains(m) && !shared.contains(m) {
                    shared.push(m.clone());
                }
            }
            if shared.is_empty() {
                return None;
            }
            let all = l.iter().all(|m| shared.contains(m));
            let overlap = if all {
                MethodOverlap::All
            } else {
                MethodOverlap::Only(shared.clone())
            };
            Some((shared, overlap))
        }
    }
}

/// A method for the example: one that carries a body when there is one,
/// since bodies are what encrypt rules protect.
fn representative(methods: &[Method]) -> Method {
    [Method::POST, Method::PUT, Method::PATCH]
        .into_iter()
        .find(|m| methods.is_empty() || methods.contains(m))
        .or_else(|| methods.first().cloned())
        .unwrap_or(Method::POST)
}

/// The route's path as matched: trailing `/` trimmed, empty for the root or
/// a route without a path.
fn spelling(r: &Route) -> &str {
    match &r.path {
        PathMatch::Exact(p) | PathMatch::Prefix(p) => p.trim_end_matches('/'),
        PathMatch::Any => "",
    }
}

/// `top` over the start of `under`: a path spelled as the case-sensitive
/// route needs it where the two overlap, and as the other one beyond.
fn overlay(top: &str, under: &str) -> String {
    match under.get(top.len()..) {
        Some(rest) if under.len() >= top.len() => format!("{top}{rest}"),
        _ => top.to_string(),
    }
}

/// Request paths built on `base`, in every spelling a route owns: itself,
/// a trailing slash, a format suffix, and deeper segments.
fn spellings(base: &str) -> impl Iterator<Item = String> + '_ {
    ["", "/", ".json", ".", "/x", "/x/y", "/x.json"]
        .into_iter()
        .map(move |s| format!("{base}{s}"))
        .filter(|p| p.starts_with('/'))
        .chain(base.is_empty().then(|| "/".to_string()))
}

/// (a path both match, whether `earlier` takes every path `later` matches).
fn path_overlap(
    earlier: &Route,
    later: &Route,
    host: Option<&str>,
    method: &Method,
) -> Option<(String, bool)> {
    let both = |p: &str| earlier.matches(host, p, method) && later.matches(host, p, method);
    let (e, l) = (spelling(earlier), spelling(later));
    // Two matching paths share one of the routes' spellings as a prefix, so
    // a common path, if any, is built on the longer spelling, cased as the
    // case-sensitive route needs it.
    let bases = [l.to_string(), e.to_string(), overlay(e, l), overlay(l, e)];
    let example = bases.iter().flat_map(|b| spellings(b)).find(|p| both(p))?;
    // Every spelling `later` owns, in every case it accepts, must go to
    // `earlier` for the shadow to cover all its paths.
    let mut probes: Vec<String> = vec![l.to_string(), overlay(e, l)];
    if later.case_insensitive {
        probes.push(l.to_ascii_lowercase());
        probes.push(l.to_ascii_uppercase());
    }
    let all = probes
        .iter()
        .flat_map(|b| spellings(b))
        .filter(|p| later.matches(host, p, method))
        .all(|p| earlier.matches(host, &p, method));
    Some((example, all))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::tests::named as route;

    fn prefix(name: &str, p: &str) -> Route {
        route(name, PathMatch::Prefix(p.into()))
    }

    fn exact(name: &str, p: &str) -> Route {
        route(name, PathMatch::Exact(p.into()))
    }

    #[test]
    fn a_shorter_prefix_takes_every_request_of_a_longer_one() {
        let s = shadow(&prefix("api", "/api"), &prefix("patients", "/api/patients")).unwrap();
        assert!(s.is_total(), "{s:?}");
        assert_eq!(s.example.path, "/api/patients");
        assert_eq!(s.example.method, Method::POST);
        assert_eq!(
            s.describe("patients"),
            "every request that route \"patients\" matches (e.g. POST /api/patients)"
        );
        // The other order is the intended one: specific first.
        let s = shadow(&prefix("patients", "/api/patients"), &prefix("api", "/api")).unwrap();
        assert!(!s.is_total() && !s.all_paths, "{s:?}");
        assert!(shadow(&prefix("a", "/api/p"), &prefix("b", "/api/patients")).is_none());
        assert!(shadow(
            &prefix("a", "/api/patientsX"),
            &prefix("b", "/api/patients")
        )
        .is_none());
    }

    #[test]
    fn catch_alls_and_the_root() {
        let any = route("any", PathMatch::Any);
        let root = prefix("root", "/");
        let only_root = exact("only-root", "/");
        let p = prefix("p", "/api/patients");
        assert!(shadow(&any, &p).unwrap().is_total());
        assert!(shadow(&root, &p).unwrap().is_total());
        assert!(shadow(&root, &any).unwrap().is_total());
        assert!(shadow(&only_root, &p).is_none());
        let s = shadow(&only_root, &root).unwrap();
        assert_eq!(s.example.path, "/");
        assert!(!s.all_paths);
    }

    #[test]
    fn spellings_a_route_owns_are_taken_by_exact_earlier_routes() {
        // `/api/patients.json` and `/api/patients/` belong to a prefix route.
        let p = prefix("patients", "/api/patients");
        for earlier in ["/api/patients.json", "/api/patients", "/api/patients/"] {
            let s = shadow(&exact("e", earlier), &p).unwrap_or_else(|| panic!("{earlier}"));
            assert!(!s.all_paths, "{earlier}: {s:?}");
            assert!(p.matches(None, &s.example.path, &s.example.method));
        }
        // An exact later route is wholly taken by an exact earlier one
        // with the same path, and by a prefix.
        let e = exact("one", "/api/patients");
        assert!(shadow(&exact("same", "/api/patients/"), &e)
            .unwrap()
            .is_total());
        assert!(shadow(&prefix("api", "/api"), &e).unwrap().is_total());
        // A prefix ending in a format suffix takes only that spelling.
        let s = shadow(&prefix("json", "/api/patients.json"), &p).unwrap();
        assert_eq!(s.example.path, "/api/patients.json");
        assert!(!s.all_paths);
    }

    #[test]
    fn case_insensitive_routes() {
        let mut ci_api = prefix("api", "/API");
        ci_api.case_insensitive = true;
        let p = prefix("patients", "/api/patients");
        assert!(shadow(&ci_api, &p).unwrap().is_total());

        // A case-sensitive earlier route takes only the spelling it knows of
        // a case-insensitive later one.
        let mut ci_p = prefix("patients", "/api/patients");
        ci_p.case_insensitive = true;
        let s = shadow(&prefix("api", "/api"), &ci_p).unwrap();
        assert!(!s.all_paths, "{s:?}");
        // ...even when the spellings differ in case.
        let s = shadow(&prefix("Api", "/Api"), &ci_p).unwrap();
        assert_eq!(s.example.path, "/Api/patients");
        // Both case-sensitive, different case: no overlap.
        assert!(shadow(&prefix("Api", "/Api"), &p).is_none());
    }

    #[test]
    fn methods_limit_the_overlap() {
        let mut earlier = prefix("api", "/api");
        let mut later = prefix("patients", "/api/patients");
        earlier.methods = Some(vec![Method::GET]);
        let s = shadow(&earlier, &later).unwrap();
        assert_eq!(s.methods, MethodOverlap::Only(vec![Method::GET]));
        assert_eq!(s.example.method, Method::GET);
        assert_eq!(
            s.describe("p"),
            "the GET requests that route \"p\" matches (e.g. GET /api/patients)"
        );

        later.methods = Some(vec![Method::POST, Method::PUT]);
        assert!(shadow(&earlier, &later).is_none(), "GET vs POST/PUT");
        earlier.methods = Some(vec![Method::PUT, Method::DELETE]);
        let s = shadow(&earlier, &later).unwrap();
        assert_eq!(s.methods, MethodOverlap::Only(vec![Method::PUT]));
        earlier.methods = Some(vec![Method::PUT, Method::POST, Method::GET]);
        assert!(shadow(&earlier, &later).unwrap().is_total());
        earlier.methods = None;
        let s = shadow(&earlier, &later).unwrap();
        assert!(s.is_total());
        assert_eq!(s.example.method, Method::POST);
    }

    #[test]
    fn hosts_limit_the_overlap() {
        let mut earlier = prefix("api", "/api");
        let mut later = prefix("patients", "/api/patients");
        later.host = Some("records.example".into());
        // A host-less route takes the requests of a host-bound one.
        let s = shadow(&earlier, &later).unwrap();
        assert!(s.is_total());
        assert_eq!(s.example.host.as_deref(), Some("records.example"));
        // A route bound to another host takes none.
        earlier.host = Some("other.example".into());
        assert!(shadow(&earlier, &later).is_none());
        // A host-bound earlier route takes the later one's requests on its host only.
        later.host = None;
        let s = shadow(&earlier, &later).unwrap();
        assert_eq!(s.hosts, HostOverlap::Only("other.example".into()));
        assert!(
            s.describe("p")
                .starts_with("the requests for host other.example that"),
            "{}",
            s.describe("p")
        );
    }

    #[test]
    fn shadows_lists_every_pair_in_order() {
        let routes = vec![
            prefix("all", "/"),
            prefix("api", "/api"),
            prefix("patients", "/api/patients"),
            prefix("other", "/other"),
        ];
        let pairs: Vec<(usize, usize)> = shadows(&routes)
            .iter()
            .map(|s| (s.earlier, s.later))
            .collect();
        assert_eq!(pairs, vec![(0, 1), (0, 2), (1, 2), (0, 3)]);
    }

    /// Every route path shape the matcher knows, checked against the matcher
    /// itself over an exhaustive set of request paths: `shadow` says "some
    /// overlap" exactly when some path matches both, gives a path that does,
    /// and says "all paths" exactly when every path the later route matches
    /// goes to the earlier one.
    #[test]
    fn path_analysis_agrees_with_the_matcher() {
        // `%C4%B1` is `ı`, which case-insensitive routes fold to `i`.
        let segments = [
            "a", "A", "b", "B", "a.json", "A.json", "b.json", "B.json", "x", "i", "%C4%B1",
        ];
        let mut universe = vec!["/".to_string()];
        let mut level = vec![String::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for prefix in &level {
                for s in segments {
                    next.push(format!("{prefix}/{s}"));
                }
            }
            for p in &next {
                universe.push(p.clone());
                universe.push(format!("{p}/"));
                universe.push(format!("{p}."));
            }
            level = next;
        }
        let paths = [
            "/",
            "/a",
            "/A",
            "/b",
            "/a/",
            "/a/b",
            "/A/b",
            "/a/B",
            "/a.json",
            "/a/b.json",
            "/i",
            "/%C4%B1",
        ];
        let mut routes = vec![route("any", PathMatch::Any)];
        for p in paths {
            for ci in [false, true] {
                let mut e = exact(p, p);
                e.case_insensitive = ci;
                let mut x = prefix(p, p);
                x.case_insensitive = ci;
                routes.push(e);
                routes.push(x);
            }
        }
        let m = Method::POST;
        let mut checked = 0;
        for earlier in &routes {
            for later in &routes {
                let matched: Vec<&String> = universe
                    .iter()
                    .filter(|u| later.matches(None, u, &m))
                    .collect();
                let overlap = matched.iter().any(|u| earlier.matches(None, u, &m));
                let covered = matched.iter().all(|u| earlier.matches(None, u, &m));
                let got = shadow(earlier, later);
                let what = format!(
                    "earlier {:?} ci={} vs later {:?} ci={}: {got:?}",
                    earlier.path, earlier.case_insensitive, later.path, later.case_insensitive
                );
                assert_eq!(got.is_some(), overlap, "overlap: {what}");
                if let Some(s) = got {
                    assert!(
                        earlier.matches(None, &s.example.path, &m)
                            && later.matches(None, &s.example.path, &m),
                        "example: {what}"
                    );
                    assert_eq!(s.all_paths, covered, "all paths: {what}");
                }
                checked += 1;
            }
        }
        assert_eq!(checked, routes.len() * routes.len());
    }

    /// Hosts and methods, against the matcher, over every combination.
    #[test]
    fn host_and_method_analysis_agrees_with_the_matcher() {
        let hosts = [None, Some("a.example"), Some("b.example")];
        let methods: [Option<Vec<Method>>; 4] = [
            None,
            Some(vec![Method::GET]),
            Some(vec![Method::POST]),
            Some(vec![Method::GET, Method::POST]),
        ];
        let req_hosts = [
            None,
            Some("a.example"),
            Some("b.example"),
            Some("c.example"),
        ];
        let req_methods = [Method::GET, Method::POST, Method::PUT];
        let mut routes = Vec::new();
        for h in hosts {
            for ms in &methods {
                let mut r = prefix("r", "/api");
                r.host = h.map(str::to_string);
                r.methods = ms.clone();
                routes.push(r);
            }
        }
        for earlier in &routes {
            for later in &routes {
                let mut overlap = false;
                let mut covered = true;
                for h in req_hosts {
                    for m in &req_methods {
                        if later.matches(h, "/api", m) {
                            let e = earlier.matches(h, "/api", m);
                            overlap |= e;
                            covered &= e;
                        }
                    }
                }
                let got = shadow(earlier, later);
                let what = format!(
                    "earlier {:?} {:?} vs later {:?} {:?}: {got:?}",
                    earlier.host, earlier.methods, later.host, later.methods
                );
                assert_eq!(got.is_some(), overlap, "{what}");
                if let Some(s) = got {
                    assert_eq!(s.is_total(), covered, "{what}");
                    let ex = &s.example;
                    assert!(
                        earlier.matches(ex.host.as_deref(), &ex.path, &ex.method)
                            && later.matches(ex.host.as_deref(), &ex.path, &ex.method),
                        "example: {what}"
                    );
                }
            }
        }
    }
}
