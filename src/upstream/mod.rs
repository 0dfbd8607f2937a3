//! One upstream as requests use it: its servers, each with its own pool
//! (plain or TLS) and health, the balancing between them, the retries of
//! a failed attempt on another server, and the upstream's metrics.
//!
//! What is retried, and why it is safe:
//! - a failure before anything reached a server (connect refused or timed
//!   out, TLS handshake refused): for every method, since no server saw
//!   the request;
//! - the connection closed or broke before an answer head: only for
//!   idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), since a
//!   server may have acted on the request;
//! - never once any byte of the request body was taken to be sent (the
//!   body is handed out once, and a retry needs it untouched), and never
//!   after the answer deadline (`timeout`), which covers all attempts.
//!
//! Each attempt goes to a different server; a 502 comes only when every
//! server was tried or the failure cannot be retried.
//!
//! Each server's connections are capped (`max_connections`, see `cap`): a
//! request refused a connection sent nothing, so it is retried like a
//! connect failure, but a busy server is not counted as failing; when no
//! server had room the answer is a 503.

mod body;
mod cap;
mod check;
mod health;
mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::body::ProxyBody;
use crate::config::{Balance, Upstream};
use crate::error::{ProxyError, UpstreamError};
use crate::metrics::{Metrics, ServerLabel, ServerReason, UpstreamLabel};

use cap::{Busy, Cap, Capped};

use health::Admit;
pub use health::ServerHealth;
pub use tls::UpstreamTlsError;

/// A server's pooled client: plain HTTP/1.1, or over rustls; either way
/// each connection holds one of the server's `max_connections` permits.
enum Pool {
    Plain(Client<Capped<HttpConnector>, ProxyBody>),
    Tls(Client<HttpsConnector<Capped<HttpConnector>>, ProxyBody>),
}

impl Pool {
    fn new(
        u: &Upstream,
        tls: Option<&Arc<rustls::ClientConfig>>,
        cap: Cap,
        max_idle: usize,
    ) -> Pool {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(u.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(tls.is_none());
        let connector = Capped::new(connector, Arc::new(cap));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(u.pool_idle_timeout)
            .pool_max_idle_per_host(max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        match tls {
            None => Pool::Plain(builder.build(connector)),
            Some(config) => {
                // https only: a plain connection is never made.
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((**config).clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(connector);
                Pool::Tls(builder.build(https))
            }
        }
    }

    fn request(&self, req: Request<ProxyBody>) -> ResponseFuture {
        match self {
            Pool::Plain(c) => c.request(req),
            Pool::Tls(c) => c.request(req),
        }
    }
}

/// One server of the upstream: where it is, its pool, its health.
pub struct ServerClient {
    /// `scheme://host:port`, as metrics and /readyz show it.
    pub label: String,
    authority: http::uri::Authority,
    pool: Pool,
    /// The active checks' own pool (one connection), when configured.
    check_pool: Option<Pool>,
    /// Shared with the same server of the next config when a reload keeps
    /// it (and its health settings).
    pub health: Arc<ServerHealth>,
    /// Requests sent and not yet answered (head), for `least_requests`.
    in_flight: AtomicUsize,
}

pub struct UpstreamClient {
    /// Where requests go and how their Host is set.
    pub spec: Upstream,
    pub servers: Vec<Arc<ServerClient>>,
    /// Round-robin position.
    next: AtomicUsize,
    timeout: Duration,
    /// `fieldseal_upstream_duration_seconds{upstream}`.
    duration: Histogram,
    retries: Counter,
    /// The active checkers' tasks while they run.
    checkers: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for UpstreamClient {
    fn drop(&mut self) {
        self.stop_checks();
    }
}

/// In the answer's extensions: the server that gave it (for the access log).
#[derive(Debug, Clone)]
pub struct ServedBy(pub http::uri::Authority);

/// How an attempt failed, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Nothing reached the server.
    BeforeSending,
    /// The request may have reached the server.
    AfterSending,
}

impl UpstreamClient {
    /// `previous`: the upstream of this name in the config being replaced,
    /// whose servers that stay keep their health.
    pub fn new(
        u: &Upstream,
        metrics: &Metrics,
        previous: Option<&UpstreamClient>,
    ) -> Result<UpstreamClient, UpstreamTlsError> {
        let tls = u
            .tls
            .as_ref()
            .map(|t| tls::client_config(&u.name, t))
            .transpose()?;
        let servers = u
            .servers
            .iter()
            .map(|s| {
                let label = format!("{}://{}", u.scheme, s.authority);
                let server_label = ServerLabel {
                    upstream: u.name.clone(),
                    server: label.clone(),
                };
                let busy = |reason: &str| {
                    metrics
                        .upstream_server_busy
                        .get_or_create(&ServerReason {
                            upstream: u.name.clone(),
                            server: label.clone(),
                            reason: reason.to_string(),
                        })
                        .clone()
                };
                let cap = Cap::new(
                    u.max_connections,
                    u.queue_timeout,
                    u.max_queued,
                    metrics
                        .upstream_server_connections
                        .get_or_create(&server_label)
                        .clone(),
                    busy("queue_full"),
                    busy("queue_timeout"),
                );
                // Outside the server's cap (see `check`), one connection.
                let check_pool = u.health.check.as_ref().map(|_| {
                    let one = Cap::new(
                        1,
                        u.queue_timeout,
                        0,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                    );
                    Pool::new(u, tls.as_ref(), one, 1)
                });
                let kept = previous
                    .and_then(|p| p.servers.iter().find(|o| o.label == label))
                    .map(|o| &o.health)
                    .filter(|h| h.same_settings(&u.health));
                let health = match kept {
                    Some(h) => Arc::clone(h),
                    None => Arc::new(ServerHealth::new(&u.name, &label, &u.health, metrics)),
                };
                Arc::new(ServerClient {
                    health,
                    label,
                    authority: s.authority.clone(),
                    pool: Pool::new(u, tls.as_ref(), cap, u.pool_max_idle_per_host),
                    check_pool,
                    in_flight: AtomicUsize::new(0),
                })
            })
            .collect();
        let name = UpstreamLabel {
            upstream: u.name.clone(),
        };
        Ok(UpstreamClient {
            spec: u.clone(),
            servers,
            next: AtomicUsize::new(0),
            timeout: u.timeout,
            duration: metrics.upstream_handle(&u.name),
            retries: metrics.upstream_retries.get_or_create(&name).clone(),
            checkers: Mutex::new(Vec::new()),
        })
    }

    /// Starts a checker per server when `health.path` is set (once; a
    /// second call does nothing). Needs a tokio runtime; without one (a
    /// config only checked, never served) nothing starts.
    pub fn start_checks(&self) {
        let Some(check) = self.spec.health.check.clone() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(mut checkers) = self.checkers.lock() else {
            return;
        };
        if !checkers.is_empty() {
            return;
        }
        let host = match &self.spec.host {
            crate::config::HostHeader::Fixed(v) => Some(v.clone()),
            _ => None,
        };
        let spec = Arc::new(check::CheckSpec {
            check,
            scheme: self.spec.scheme.clone(),
            host,
        });
        for server in &self.servers {
            let task = handle.spawn(check::run(Arc::clone(server), Arc::clone(&spec)));
            checkers.push(task.abort_handle());
        }
    }

    /// Stops the checkers (a reload replaced this config, or shutdown).
    pub fn stop_checks(&self) {
        if let Ok(mut checkers) = self.checkers.lock() {
            for c in checkers.drain(..) {
                c.abort();
            }
        }
    }

    /// Checker tasks running now.
    pub fn checks_running(&self) -> usize {
        self.checkers
            .lock()
            .map(|c| c.iter().filter(|h| !h.is_finished()).count())
            .unwrap_or(0)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Servers taking requests now (not in back-off).
    pub fn servers_up(&self) -> usize {
        let now = Instant::now();
        self.servers.iter().filter(|s| s.health.is_up(now)).count()
    }

    /// The servers in the order this request tries them: those not in
    /// back-off by the balance policy, then (a last resort rather than a
    /// 502) those in back-off, soonest back first.
    fn order(&self) -> Vec<usize> {
        let n = self.servers.len();
        if n == 1 {
            return vec![0];
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let (mut probe, mut up, mut down) = (Vec::new(), Vec::with_capacity(n), Vec::new());
        for i in (0..n).map(|k| (start + k) % n) {
            match self.servers[i].health.admits(now) {
                Admit::Up => up.push(i),
                Admit::Probe => probe.push(i),
                Admit::Down => down.push(i),
            }
        }
        if self.spec.balance == Balance::LeastRequests {
            // Stable: ties keep the round-robin order.
            up.sort_by_key(|&i| self.servers[i].in_flight.load(Ordering::Relaxed));
        }
        down.sort_by_key(|&i| self.servers[i].health.back_at());
        // A probe goes first: it is what ends a back-off.
        probe.extend(up);
        probe.extend(down);
        probe
    }

    /// Sends the request and waits for the response head, within `timeout`
    /// (for all attempts together); the wait is observed in the upstream's
    /// histogram. A failed attempt is retried on the next server when that
    /// is safe (see the module comment).
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, ProxyError> {
        let sent = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (parts, body) = req.into_parts();
        let idempotent = is_idempotent(&parts.method);
        let order = self.order();
        let body = body::Once::new(body);
        let mut last = None;
        for (attempt, &i) in order.iter().enumerate() {
            let server = &self.servers[i];
            let Some(this_body) = body.take() else {
                break; // the body went out with an earlier attempt
            };
            if attempt > 0 {
                self.retries.inc();
            }
            let mut req = Request::new(this_body);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = point_at(&parts.uri, &server.authority);
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers.clone();
            match self.attempt(server, req, deadline).await {
                Ok(mut resp) => {
                    server.health.success();
                    resp.extensions_mut()
                        .insert(ServedBy(server.authority.clone()));
                    self.duration.observe(sent.elapsed().as_secs_f64());
                    return Ok(resp);
                }
                Err((err, failure)) => {
                    // A server at its cap is busy, not failing.
                    if !is_busy(&err) {
                        server.health.failure(Instant::now());
                    }
                    let retry = match failure {
                        Failure::BeforeSending => true,
                        Failure::AfterSending => idempotent,
                    };
                    let timed_out =
                        matches!(err, ProxyError::Upstream(UpstreamError::UpstreamTimeout));
                    last = Some(err);
                    if !retry || timed_out || body.started() {
                        break;
                    }
                }
            }
        }
        self.duration.observe(sent.elapsed().as_secs_f64());
        Err(last.unwrap_or(ProxyError::Upstream(UpstreamError::UpstreamConnect)))
    }

    async fn attempt(
        &self,
        server: &ServerClient,
        req: Request<ProxyBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, (ProxyError, Failure)> {
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::time::timeout_at(deadline, server.pool.request(req)).await;
        server.in_flight.fetch_sub(1, Ordering::Relaxed);
        match answer {
            Err(_) => Err((
                ProxyError::from(UpstreamError::UpstreamTimeout),
                Failure::AfterSending,
            )),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let (err, failure) = classify(&e);
                tracing::debug!(error = %e, server = %server.label, reason = err.reason(), "upstream attempt failed");
                Err((err, failure))
            }
        }
    }
}

/// The upstream request's URI pointed at one server.
fn point_at(uri: &Uri, authority: &http::uri::Authority) -> Uri {
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(authority.clone());
    // Only the authority changed, from one valid value to another.
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

fn is_busy(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::Upstream(UpstreamError::UpstreamBusy | UpstreamError::UpstreamQueueTimeout)
    )
}

/// RFC 9110 9.2.2: repeating these has the effect of sending them once.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn classify(e: &hyper_util::client::legacy::Error) -> (ProxyError, Failure) {
    if e.is_connect() {
        let busy = source_chain(e).find_map(|s| s.downcast_ref::<Busy>());
        let err = if let Some(busy) = busy {
            match busy {
                Busy::QueueFull => UpstreamError::UpstreamBusy,
                Busy::QueueTimeout => UpstreamError::UpstreamQueueTimeout,
            }
        } else if tls_failure(e) {
            UpstreamError::UpstreamTls
        } else {
            match io_error_kind(e) {
                Some(std::io::ErrorKind::ConnectionRefused) => {
                    UpstreamError::UpstreamConnectRefused
                }
                Some(std::io::ErrorKind::TimedOut) => UpstreamError::UpstreamConnectTimeout,
                _ => UpstreamError::UpstreamConnect,
            }
        };
        return (ProxyError::from(err), Failure::BeforeSending);
    }
    // The upstream closed the connection before a whole answer head
    // arrived (often a keep-alive race, or a crash).
    let closed = source_chain(e)
        .filter_map(|s| s.downcast_ref::<hyper::Error>())
        .any(|h| h.is_incomplete_message() || h.is_canceled());
    let err = if closed {
        UpstreamError::UpstreamClosed
    } else {
        UpstreamError::UpstreamProtocol
    };
    (ProxyError::from(err), Failure::AfterSending)
}

fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// The kind of the I/O error under a connect failure, if there is one.
fn io_error_kind(e: &hyper_util::client::legacy::Error) -> Option<std::io::ErrorKind> {
    source_chain(e)
        .find_map(|s| s.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

/// A rustls error under the connect failure (the handshake refused the
/// certificate, or the server refused ours). An `io::Error` hides what it
/// wraps from `source()`, so it is looked into.
fn tls_failure(e: &hyper_util::client::legacy::Error) -> bool {
    source_chain(e).any(|s| {
        s.downcast_ref::<rustls::Error>().is_some()
            || s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_are_retried_after_sending() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(&m.parse().expect("method")), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "LOCK"] {
            assert!(!is_idempotent(&m.parse().expect("method")), "{m}");
        }
    }

    #[test]
    fn a_server_is_pointed_at_with_path_and_query_kept() {
        let uri: Uri = "http://10.0.0.1:8080/base/x?a=1".parse().expect("uri");
        let to = point_at(&uri, &"10.0.0.2:9090".parse().expect("authority"));
        assert_eq!(to.to_string(), "http://10.0.0.2:9090/base/x?a=1");
    }
}
