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
mod pool;
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

thread_local! {
    /// Which serving runtime this thread is (`server.runtime: per_core`);
    /// 0 elsewhere.
    static RUNTIME_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Called once by each per-core serving thread.
pub(crate) fn set_runtime_index(i: usize) {
    RUNTIME_INDEX.with(|c| c.set(i));
}

/// The serving runtime of the calling thread.
pub(crate) fn runtime_index() -> usize {
    RUNTIME_INDEX.with(std::cell::Cell::get)
}

/// The active checks' pooled client: plain HTTP/1.1, or over rustls
/// (requests use `pool::ConnPool`).
enum Pool {
    Plain(Client<Capped<HttpConnector>, ProxyBody>),
    Tls(Client<HttpsConnector<Capped<HttpConnector>>, ProxyBody>),
}

impl Pool {
    fn new(
        u: &Upstream,
        tls: Option<&Arc<rustls::ClientConfig>>,
        cap: Arc<Cap>,
        max_idle: usize,
    ) -> Pool {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(u.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(tls.is_none());
        let connector = Capped::new(connector, cap);
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
    /// Its connections, per serving runtime.
    pool: pool::ConnPool,
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
    /// The active checkers' tasks and the idle reaper while they run.
    checkers: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for UpstreamClient {
    fn drop(&mut self) {
        self.stop_checks();
    }
}

/// In the answer's extensions: the server that gave it (for the access
/// log), when the upstream has more than one (else it is that one).
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
    /// whose servers that stay keep their health; `runtimes`: the serving
    /// runtimes, each of which gets its own connections to every server.
    pub fn new(
        u: &Upstream,
        metrics: &Metrics,
        previous: Option<&UpstreamClient>,
        runtimes: usize,
    ) -> Result<UpstreamClient, UpstreamTlsError> {
        let tls = u
            .tls
            .as_ref()
            .map(|t| tls::client_config(&u.name, t))
            .transpose()?;
        let default_port = if tls.is_some() { 443 } else { 80 };
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
                let cap = Arc::new(Cap::new(
                    u.max_connections,
                    u.queue_timeout,
                    u.max_queued,
                    metrics
                        .upstream_server_connections
                        .get_or_create(&server_label)
                        .clone(),
                    busy("queue_full"),
                    busy("queue_timeout"),
                ));
                // Outside the server's cap (see `check`), one connection.
                let check_pool = u.health.check.as_ref().map(|_| {
                    let one = Arc::new(Cap::new(
                        1,
                        u.queue_timeout,
                        0,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                    ));
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
                let pool = pool::ConnPool::new(
                    &s.authority,
                    default_port,
                    u,
                    tls.as_ref(),
                    cap,
                    runtimes,
                )?;
                Ok(Arc::new(ServerClient {
                    health,
                    label,
                    authority: s.authority.clone(),
                    pool,
                    check_pool,
                    in_flight: AtomicUsize::new(0),
                }))
            })
            .collect::<Result<_, UpstreamTlsError>>()?;
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
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(mut checkers) = self.checkers.lock() else {
            return;
        };
        if !checkers.is_empty() {
            return;
        }
        // Closes connections idle past `pool_idle_timeout` on runtimes
        // that get no requests to notice it.
        let servers = self.servers.clone();
        let every = (self.spec.pool_idle_timeout / 2).max(Duration::from_secs(1));
        let reaper = handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                for s in &servers {
                    s.pool.prune();
                }
            }
        });
        checkers.push(reaper.abort_handle());
        let Some(check) = self.spec.health.check.clone() else {
            return;
        };
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
        let (mut parts, body) = req.into_parts();
        let mut headers = std::mem::take(&mut parts.headers);
        if let [server] = &self.servers[..] {
            // One server, one attempt: nothing can be retried, so the body
            // and the headers go as they are, without a shared slot or a copy.
            let uri = std::mem::take(&mut parts.uri);
            let req = to_server(&parts, uri, server, headers, body);
            let answer = self.attempt(server, req, deadline).await;
            return match answer {
                Ok(resp) => Ok(self.answered(server, resp, sent)),
                Err((err, _)) => {
                    failed(server, &err);
                    self.duration.observe(sent.elapsed().as_secs_f64());
                    Err(err)
                }
            };
        }
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
            // The last attempt takes the headers; an earlier one sends a copy.
            let these = if attempt + 1 == order.len() {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };
            let req = to_server(&parts, parts.uri.clone(), server, these, this_body);
            match self.attempt(server, req, deadline).await {
                Ok(resp) => return Ok(self.answered(server, resp, sent)),
                Err((err, failure)) => {
                    failed(server, &err);
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

    /// A server's answer head: its health and the upstream's histogram learn it.
    fn answered(
        &self,
        server: &ServerClient,
        mut resp: Response<Incoming>,
        sent: Instant,
    ) -> Response<Incoming> {
        server.health.success();
        if self.servers.len() > 1 {
            resp.extensions_mut()
                .insert(ServedBy(server.authority.clone()));
        }
        self.duration.observe(sent.elapsed().as_secs_f64());
        resp
    }

    async fn attempt(
        &self,
        server: &ServerClient,
        req: Request<ProxyBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, (ProxyError, Failure)> {
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::time::timeout_at(deadline, server.pool.send(req)).await;
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

/// A failed attempt counts against the server's health, unless the server
/// was only at its cap (busy, not failing).
fn failed(server: &ServerClient, err: &ProxyError) {
    if !is_busy(err) {
        server.health.failure(Instant::now());
    }
}

/// One attempt's request: the upstream request as built, to `server`.
fn to_server<B>(
    parts: &http::request::Parts,
    uri: Uri,
    server: &ServerClient,
    headers: http::HeaderMap,
    body: B,
) -> Request<B> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = point_at(uri, &server.authority);
    *req.version_mut() = parts.version;
    *req.headers_mut() = headers;
    req
}

/// The upstream request's URI pointed at one server. A URI that already
/// names it (one server: always) is moved as it is; a copy of its `Bytes`
/// would be an allocation per request.
fn point_at(uri: Uri, authority: &http::uri::Authority) -> Uri {
    if uri.authority() == Some(authority) {
        return uri;
    }
    let fallback = uri.clone();
    let mut parts = uri.into_parts();
    parts.authority = Some(authority.clone());
    // Only the authority changed, from one valid value to another.
    Uri::from_parts(parts).unwrap_or(fallback)
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

fn classify(e: &pool::PoolError) -> (ProxyError, Failure) {
    use pool::PoolError as P;
    let err = match e {
        P::Busy(Busy::QueueFull) => UpstreamError::UpstreamBusy,
        P::Busy(Busy::QueueTimeout) => UpstreamError::UpstreamQueueTimeout,
        P::Tls(io) if tls_failure(io) => UpstreamError::UpstreamTls,
        P::Connect(io) | P::Tls(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => UpstreamError::UpstreamConnectRefused,
            std::io::ErrorKind::TimedOut => UpstreamError::UpstreamConnectTimeout,
            _ => UpstreamError::UpstreamConnect,
        },
        P::Send(h) => {
            // The upstream closed the connection before a whole answer
            // head arrived (often a keep-alive race, or a crash).
            let closed = h.is_incomplete_message() || h.is_canceled();
            let err = if closed {
                UpstreamError::UpstreamClosed
            } else {
                UpstreamError::UpstreamProtocol
            };
            return (ProxyError::from(err), Failure::AfterSending);
        }
    };
    (ProxyError::from(err), Failure::BeforeSending)
}

/// A rustls error under the handshake's I/O error (the handshake refused
/// the certificate, or the server refused ours).
fn tls_failure(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
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
        let to = point_at(uri.clone(), &"10.0.0.2:9090".parse().expect("authority"));
        assert_eq!(to.to_string(), "http://10.0.0.2:9090/base/x?a=1");
        // Already there: the same URI back.
        let same = point_at(uri.clone(), &"10.0.0.1:8080".parse().expect("authority"));
        assert_eq!(same, uri);
    }
}
