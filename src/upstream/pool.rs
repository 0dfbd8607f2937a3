//! One server's connections, kept per serving runtime. A request takes an
//! idle connection of its own runtime's slot, or opens one there, so the
//! request and its connection's task run on one thread and nothing is
//! handed between threads (`server.runtime: per_core`; a shared runtime
//! has one slot).
//!
//! Each connection holds one of the server's `max_connections` permits
//! (see `cap`) until it closes, so the cap counts all runtimes together. A
//! request that finds no idle connection of its own and no free permit
//! borrows an idle connection of another runtime (and gives it back to
//! that runtime's slot): at the cap, the runtimes share their connections
//! as one pool would, and none is closed to make room for another.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::cap::{Busy, Cap, CappedIo, Got};
use crate::body::ProxyBody;

type Sender = SendRequest<ProxyBody>;

/// Why a request got no answer head from this pool.
#[derive(Debug)]
pub(super) enum PoolError {
    /// The server's cap refused a new connection: nothing was sent.
    Busy(Busy),
    /// The TCP connect failed or timed out: nothing was sent.
    Connect(std::io::Error),
    /// The TLS handshake failed: nothing was sent.
    Tls(std::io::Error),
    /// The request may have reached the server.
    Send(hyper::Error),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Busy(b) => b.fmt(f),
            PoolError::Connect(e) => write!(f, "connect: {e}"),
            PoolError::Tls(e) => write!(f, "tls: {e}"),
            PoolError::Send(e) => write!(f, "request: {e}"),
        }
    }
}

/// A connection waiting in a slot. `since`: when it was put back (right
/// after its answer head; it is reused once its answer is read).
struct Pooled {
    sender: Sender,
    since: Instant,
}

/// How to open a connection to the server.
struct Connector {
    /// Host (brackets of an IPv6 literal removed) and port, to connect to.
    host: String,
    port: u16,
    connect_timeout: Duration,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

pub(super) struct ConnPool {
    /// One per serving runtime, indexed by `runtime_index()`.
    slots: Vec<Mutex<Vec<Pooled>>>,
    cap: Arc<Cap>,
    connector: Connector,
    idle_timeout: Duration,
    /// Idle connections a slot keeps (`pool_max_idle_per_host` shared out).
    max_idle: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ConnPool {
    /// `runtimes`: the serving runtimes (slots); `tls`: the client config
    /// for an https upstream.
    pub(super) fn new(
        authority: &http::uri::Authority,
        default_port: u16,
        u: &crate::config::Upstream,
        tls: Option<&Arc<rustls::ClientConfig>>,
        cap: Arc<Cap>,
        runtimes: usize,
    ) -> Result<ConnPool, super::UpstreamTlsError> {
        let runtimes = runtimes.max(1);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = match tls {
            None => None,
            Some(config) => {
                let mut config = (**config).clone();
                if config.alpn_protocols.is_empty() {
                    config.alpn_protocols = vec![b"http/1.1".to_vec()];
                }
                let name = match host.parse::<IpAddr>() {
                    Ok(ip) => ServerName::IpAddress(ip.into()),
                    Err(_) => {
                        ServerName::try_from(host.clone()).map_err(|_| super::UpstreamTlsError {
                            upstream: u.name.clone(),
                            message: format!("{host:?} is not a name a certificate can have"),
                        })?
                    }
                };
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(ConnPool {
            slots: (0..runtimes).map(|_| Mutex::new(Vec::new())).collect(),
            cap,
            connector: Connector {
                port: authority.port_u16().unwrap_or(default_port),
                host,
                connect_timeout: u.connect_timeout,
                tls,
            },
            idle_timeout: u.pool_idle_timeout,
            max_idle: u.pool_max_idle_per_host.div_ceil(runtimes),
        })
    }

    fn slot(&self) -> usize {
        super::runtime_index() % self.slots.len()
    }

    /// Sends `req` (absolute URI pointing at this server) and waits for
    /// the answer head. A pooled connection that closed before it took
    /// the request is passed over, and the request goes out on another.
    pub(super) async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        prepare(&mut req);
        let slot = self.slot();
        loop {
            let (home, mut sender, reused) = match self.checkout(slot) {
                Some(s) => (slot, s, true),
                None => match self
                    .cap
                    .acquire_or(|| self.borrow(slot))
                    .await
                    .map_err(PoolError::Busy)?
                {
                    Got::Permit(permit) => (slot, self.open(permit).await?, false),
                    Got::Borrowed((home, s)) => (home, s, true),
                },
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(home, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the pooled connection was closing.
                    Some(back) if reused => req = back,
                    _ => return Err(PoolError::Send(e.into_error())),
                },
            }
        }
    }

    /// An idle connection of `mine`, else of another slot, with the slot
    /// it belongs to.
    fn borrow(&self, mine: usize) -> Option<(usize, Sender)> {
        let n = self.slots.len();
        (0..n)
            .map(|d| (mine + d) % n)
            .find_map(|slot| self.checkout(slot).map(|s| (slot, s)))
    }

    /// The newest connection of `slot` ready for a request; on the way,
    /// drops closed ones, ones idle past `idle_timeout` and idle ones past
    /// `max_idle`. Connections still reading an answer stay.
    fn checkout(&self, slot: usize) -> Option<Sender> {
        self.sweep(&mut lock(&self.slots[slot]), true)
    }

    /// One pass over a slot, newest first: drops closed connections, idle
    /// ones past `idle_timeout` and idle ones past `max_idle`; with `take`,
    /// removes and returns the newest ready one still within its idle time.
    fn sweep(&self, pooled: &mut Vec<Pooled>, take: bool) -> Option<Sender> {
        let now = Instant::now();
        let mut found = None;
        let mut idle = 0;
        let mut k = pooled.len();
        while k > 0 {
            k -= 1;
            let p = &pooled[k];
            if p.sender.is_closed() {
                pooled.remove(k);
                continue;
            }
            if !p.sender.is_ready() {
                continue;
            }
            if take && found.is_none() && now.duration_since(p.since) < self.idle_timeout {
                found = Some(pooled.remove(k).sender);
                continue;
            }
            idle += 1;
            if idle > self.max_idle || now.duration_since(p.since) >= self.idle_timeout {
                pooled.remove(k);
            }
        }
        found
    }

    fn checkin(&self, slot: usize, sender: Sender) {
        if self.max_idle == 0 {
            // Not kept: closes once its answer is read.
            return;
        }
        lock(&self.slots[slot]).push(Pooled {
            sender,
            since: Instant::now(),
        });
    }

    /// Drops closed and expired connections of every slot (the reaper).
    pub(super) fn prune(&self) {
        for slot in &self.slots {
            self.sweep(&mut lock(slot), false);
        }
    }

    /// A new connection on this runtime, holding one of the server's
    /// permits until it closes.
    async fn open(&self, permit: tokio::sync::OwnedSemaphorePermit) -> Result<Sender, PoolError> {
        let c = &self.connector;
        let connect = TcpStream::connect((c.host.as_str(), c.port));
        let tcp = match tokio::time::timeout(c.connect_timeout, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(PoolError::Connect(e)),
            Err(_) => {
                return Err(PoolError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        match &c.tls {
            None => self.handshake(tcp, permit).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(PoolError::Tls)?;
                self.handshake(tls, permit).await
            }
        }
    }

    async fn handshake<T>(
        &self,
        io: T,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Sender, PoolError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = CappedIo::hold(&self.cap, TokioIo::new(io), permit);
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(PoolError::Send)?;
        // On this runtime: the request and its connection share a thread.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// What hyper's pooled client did before writing a request: origin-form
/// target, and a Host from the URI when the request has none.
fn prepare(req: &mut Request<ProxyBody>) {
    // Taken, not borrowed: its path and query then move into the origin
    // form, where a copy of their `Bytes` was an allocation per request.
    let uri = std::mem::take(req.uri_mut());
    if !req.headers().contains_key(HOST) {
        if let Some(host) = uri.host() {
            let default = match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            };
            let value = match uri.port_u16() {
                Some(p) if p != default => HeaderValue::from_str(&format!("{host}:{p}")),
                _ => HeaderValue::from_str(host),
            };
            if let Ok(v) = value {
                req.headers_mut().insert(HOST, v);
            }
        }
    }
    let origin = match uri.into_parts().path_and_query {
        Some(pq) if pq.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq);
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
    *req.uri_mut() = origin;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(uri: &str, host: Option<&str>) -> Request<ProxyBody> {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        let mut req = b.body(crate::body::empty()).expect("request");
        prepare(&mut req);
        req
    }

    #[test]
    fn the_request_target_is_origin_form_with_a_host_from_the_uri() {
        let r = prepared("http://10.0.0.2:9090/a/b?x=1", None);
        assert_eq!(r.uri().to_string(), "/a/b?x=1");
        assert_eq!(r.headers()[HOST], "10.0.0.2:9090");
        let r = prepared("http://legacy/", None);
        assert_eq!(r.uri().to_string(), "/");
        assert_eq!(r.headers()[HOST], "legacy");
        let r = prepared("https://legacy:443/x", None);
        assert_eq!(r.headers()[HOST], "legacy");
        // A Host the route set stays.
        let r = prepared("http://10.0.0.2:9090/x", Some("api.example"));
        assert_eq!(r.headers()[HOST], "api.example");
    }
}
