//! `upstreams`: the backends, by name, with their timeouts and Host policy.

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::HeaderValue;
use http::Uri;

use super::locate::At;
use super::raw::{RawUpstream, Word};
use super::{duration, invalid, Invalid};

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// `http://host:port`, no path.
    pub authority: http::uri::Authority,
    pub scheme: http::uri::Scheme,
    pub base_path: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub host: HostHeader,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
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
pub(super) fn compile(raw: &BTreeMap<String, RawUpstream>) -> Result<Vec<Upstream>, Invalid> {
    let upstreams = raw
        .iter()
        .map(|(name, u)| upstream(&At::top("upstreams").key(name), name, u))
        .collect::<Result<Vec<_>, _>>()?;
    if upstreams.is_empty() {
        return Err(invalid(
            &At::top("upstreams"),
            "at least one upstream is needed",
        ));
    }
    Ok(upstreams)
}

fn upstream(at: &At, name: &str, u: &RawUpstream) -> Result<Upstream, Invalid> {
    let url = at.key("url");
    let uri: Uri = u
        .url
        .parse()
        .map_err(|_| invalid(&url, format!("{:?} is not a URL", u.url)))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| invalid(&url, "needs a scheme (http://)"))?;
    if scheme != http::uri::Scheme::HTTP {
        return Err(invalid(&url, "only http:// upstreams are supported (fieldseal terminates TLS in front of a local legacy service)"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid(&url, "needs a host"))?;
    if uri.query().is_some() {
        return Err(invalid(&url, "must not have a query"));
    }
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
    Ok(Upstream {
        name: name.to_string(),
        authority,
        scheme,
        base_path: uri.path().trim_end_matches('/').to_string(),
        connect_timeout,
        timeout,
        host,
        pool_idle_timeout: duration(
            &at.key("pool_idle_timeout"),
            &u.pool_idle_timeout,
            Duration::from_secs(60),
        )?,
        pool_max_idle_per_host: u.pool_max_idle_per_host.unwrap_or(256),
    })
}
