//! `upstreams`: the backends, by name, with their servers, balancing,
//! health, TLS, timeouts and Host policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderValue;
use http::Uri;

use super::locate::At;
use super::raw::{RawHealth, RawUpstream, RawUpstreamTls, Word};
use super::{duration, invalid, resolve, word, Invalid};

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// The servers, in the order written; at least one. All have the same
    /// scheme and path.
    pub servers: Vec<Server>,
    pub scheme: http::uri::Scheme,
    pub base_path: String,
    pub balance: Balance,
    pub health: Health,
    /// Set for `https://` servers.
    pub tls: Option<UpstreamTls>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub host: HostHeader,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Per server: open connections, idle ones included.
    pub max_connections: usize,
    /// The longest wait for a connection at `max_connections`.
    pub queue_timeout: Duration,
    /// Per server: requests waiting for a connection.
    pub max_queued: usize,
    pub readiness: Readiness,
}

/// Whether /readyz fails while this upstream has no server up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Shown, not decisive (the default).
    Report,
    /// 503 while no server is up.
    Require,
}

impl Upstream {
    /// The first server's authority (what the upstream request is built
    /// with; the client points it at the server it picks).
    pub fn authority(&self) -> &http::uri::Authority {
        &self.servers[0].authority
    }
}

/// One server of an upstream: `scheme://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub authority: http::uri::Authority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastRequests,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Failures in a row that put a server in back-off.
    pub fails: u32,
    pub backoff: Duration,
    /// Active checks: `GET path` on each server every `interval`.
    pub check: Option<ActiveCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    /// Asked of each server as written (not under the URL's path).
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
    /// For the whole check: connect, answer head and body.
    pub timeout: Duration,
}

/// Trust for `https://` servers. No `ca`: the system's roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    /// Certificate chain and key for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// Forward the client's Host.
    Preserve,
    /// Use the upstream URL's authority.
    Upstream,
    Fixed(HeaderValue),
}

/// The words `upstreams.*.host` takes besides a literal host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum HostWord {
    Preserve,
    Upstream,
}

/// The upstreams in a stable order (by name); routes refer to them by
/// their index in it.
pub(super) fn compile(
    raw: &BTreeMap<String, RawUpstream>,
    base: &Path,
) -> Result<Vec<Upstream>, Invalid> {
    let upstreams = raw
        .iter()
        .map(|(name, u)| upstream(&At::top("upstreams").key(name), name, u, base))
        .collect::<Result<Vec<_>, _>>()?;
    if upstreams.is_empty() {
        return Err(invalid(
            &At::top("upstreams"),
            "at least one upstream is needed",
        ));
    }
    Ok(upstreams)
}

/// One server URL: its scheme, authority and path.
fn server_url(at: &At, s: &str) -> Result<(http::uri::Scheme, Server, String), Invalid> {
    let uri: Uri = s
        .parse()
        .map_err(|_| invalid(at, format!("{s:?} is not a URL")))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| invalid(at, "needs a scheme (http:// or https://)"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(invalid(
            at,
            "only http:// and https:// upstreams are supported",
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid(at, "needs a host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid(at, "must not carry user credentials"));
    }
    if uri.query().is_some() {
        return Err(invalid(at, "must not have a query"));
    }
    let path = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, Server { authority }, path))
}

fn upstream(at: &At, name: &str, u: &RawUpstream, base: &Path) -> Result<Upstream, Invalid> {
    let written: Vec<(At, &String)> = match (&u.url, &u.servers) {
        (Some(url), None) => vec![(at.key("url"), url)],
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, s)| (at.key("servers").index(i), s))
            .collect(),
        (Some(_), Some(_)) => {
            return Err(invalid(
                at,
                "has both url and servers; write one (servers for several)",
            ))
        }
        (None, None) => return Err(invalid(at, "needs url or servers")),
    };
    if written.is_empty() {
        return Err(invalid(&at.key("servers"), "lists no server"));
    }
    let mut servers: Vec<Server> = Vec::with_capacity(written.len());
    let mut first: Option<(http::uri::Scheme, String)> = None;
    for (sat, s) in &written {
        let (scheme, server, path) = server_url(sat, s)?;
        match &first {
            None => first = Some((scheme, path)),
            Some((sch, p)) => {
                if *sch != scheme || *p != path {
                    return Err(invalid(
                        sat,
                        "all servers of an upstream need the same scheme and path",
                    ));
                }
            }
        }
        if servers.contains(&server) {
            return Err(invalid(sat, "is listed twice"));
        }
        servers.push(server);
    }
    let (scheme, base_path) = first.ok_or_else(|| invalid(at, "needs url or servers"))?;
    let host = match u.host.as_deref().map(Word::<HostWord>::parse) {
        None | Some(Word::Known(HostWord::Preserve)) => HostHeader::Preserve,
        Some(Word::Known(HostWord::Upstream)) => HostHeader::Upstream,
        Some(Word::Unknown(literal)) => HostHeader::Fixed(
            HeaderValue::from_str(&literal)
                .map_err(|_| invalid(&at.key("host"), "is not a valid Host value"))?,
        ),
    };
    let connect_timeout = duration(
        &at.key("connect_timeout"),
        &u.connect_timeout,
        Duration::from_secs(2),
    )?;
    let timeout = duration(&at.key("timeout"), &u.timeout, Duration::from_secs(30))?;
    if connect_timeout.is_zero() || timeout.is_zero() {
        return Err(invalid(at, "timeouts must be greater than zero"));
    }
    let balance = match &u.balance {
        None => Balance::RoundRobin,
        Some(b) => word(&at.key("balance"), &Word::<Balance>::parse(b), "")?,
    };
    let health = health(&at.key("health"), u.health.as_ref())?;
    let tls = tls(&at.key("tls"), u.tls.as_ref(), &scheme, base)?;
    let cap = cap(at, u, timeout)?;
    let readiness = match &u.readiness {
        None => Readiness::Report,
        Some(r) => word(&at.key("readiness"), &Word::<Readiness>::parse(r), "")?,
    };
    Ok(Upstream {
        name: name.to_string(),
        servers,
        scheme,
        base_path,
        balance,
        health,
        tls,
        connect_timeout,
        timeout,
        host,
        pool_idle_timeout: duration(
            &at.key("pool_idle_timeout"),
            &u.pool_idle_timeout,
            Duration::from_secs(60),
        )?,
        pool_max_idle_per_host: cap.idle,
        max_connections: cap.max_connections,
        queue_timeout: cap.queue_timeout,
        max_queued: cap.max_queued,
        readiness,
    })
}

/// The connection cap of each server and its queue, checked against the
/// pool and the answer deadline.
struct CapSettings {
    max_connections: usize,
    idle: usize,
    queue_timeout: Duration,
    max_queued: usize,
}

fn cap(at: &At, u: &RawUpstream, timeout: Duration) -> Result<CapSettings, Invalid> {
    let max_connections = u.max_connections.unwrap_or(256);
    if max_connections == 0 {
        return Err(invalid(&at.key("max_connections"), "must be at least 1"));
    }
    // Idle pooled connections count against the cap: more could never be
    // kept.
    let idle = match u.pool_max_idle_per_host {
        None => max_connections.min(256),
        Some(n) if n > max_connections => {
            return Err(invalid(
                &at.key("pool_max_idle_per_host"),
                format!("is more than max_connections ({max_connections}): idle connections count against it"),
            ))
        }
        Some(n) => n,
    };
    let queue_timeout = duration(
        &at.key("queue_timeout"),
        &u.queue_timeout,
        Duration::from_secs(1).min(timeout / 2),
    )?;
    if queue_timeout.is_zero() {
        return Err(invalid(
            &at.key("queue_timeout"),
            "must be greater than zero",
        ));
    }
    // The wait is part of the answer deadline; one as long would turn
    // every busy answer into a 504.
    if queue_timeout >= timeout {
        return Err(invalid(
            &at.key("queue_timeout"),
            "must be less than the upstream's timeout",
        ));
    }
    let max_queued = u.max_queued.unwrap_or(max_connections);
    Ok(CapSettings {
        max_connections,
        idle,
        queue_timeout,
        max_queued,
    })
}

fn health(at: &At, h: Option<&RawHealth>) -> Result<Health, Invalid> {
    let empty = RawHealth {
        fails: None,
        backoff: None,
        path: None,
        interval: None,
        timeout: None,
    };
    let h = h.unwrap_or(&empty);
    let fails = h.fails.unwrap_or(3);
    if fails == 0 {
        return Err(invalid(&at.key("fails"), "must be at least 1"));
    }
    let backoff = duration(&at.key("backoff"), &h.backoff, Duration::from_secs(10))?;
    if backoff.is_zero() {
        return Err(invalid(&at.key("backoff"), "must be greater than zero"));
    }
    if h.path.is_none() {
        for (key, set) in [
            ("interval", h.interval.is_some()),
            ("timeout", h.timeout.is_some()),
        ] {
            if set {
                return Err(invalid(&at.key(key), "needs health.path"));
            }
        }
    }
    let check = active_check(at, h)?;
    Ok(Health {
        fails,
        backoff,
        check,
    })
}

fn active_check(at: &At, h: &RawHealth) -> Result<Option<ActiveCheck>, Invalid> {
    Ok(match &h.path {
        None => None,
        Some(p) => {
            let path: http::uri::PathAndQuery = p
                .parse()
                .ok()
                .filter(|_| p.starts_with('/'))
                .ok_or_else(|| invalid(&at.key("path"), "must be a path starting with /"))?;
            let interval = duration(&at.key("interval"), &h.interval, Duration::from_secs(5))?;
            if interval < Duration::from_millis(100) {
                return Err(invalid(&at.key("interval"), "must be at least 100ms"));
            }
            let timeout = duration(
                &at.key("timeout"),
                &h.timeout,
                Duration::from_secs(2).min(interval),
            )?;
            if timeout.is_zero() {
                return Err(invalid(&at.key("timeout"), "must be greater than zero"));
            }
            Some(ActiveCheck {
                path,
                interval,
                timeout,
            })
        }
    })
}

fn tls(
    at: &At,
    t: Option<&RawUpstreamTls>,
    scheme: &http::uri::Scheme,
    base: &Path,
) -> Result<Option<UpstreamTls>, Invalid> {
    if *scheme != http::uri::Scheme::HTTPS {
        return match t {
            Some(_) => Err(invalid(at, "is only for https:// servers")),
            None => Ok(None),
        };
    }
    let Some(t) = t else {
        return Ok(Some(UpstreamTls {
            ca: None,
            client: None,
        }));
    };
    let client = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => Some((resolve(base, c), resolve(base, k))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(&at.key("client_key"), "is needed with client_cert"))
        }
        (None, Some(_)) => {
            return Err(invalid(&at.key("client_cert"), "is needed with client_key"))
        }
    };
    Ok(Some(UpstreamTls {
        ca: t.ca.as_deref().map(|c| resolve(base, c)),
        client,
    }))
}
