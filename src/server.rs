//! Listeners: the TLS accept loop, per-connection serving, the plain-HTTP
//! redirect and the admin listener, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::body::{BufferPool, ConnBuffers};
use crate::state::Shared;

/// The sockets fieldseal serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub https: TcpListener,
    pub redirect: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &crate::config::Config) -> Result<Listeners, BindError> {
        let https = bind("listen.address", config.listen).await?;
        let redirect = match config.redirect_http {
            Some(a) => Some(bind("redirect_http.address", a).await?),
            None => None,
        };
        let admin = match config.admin {
            Some(a) => Some(bind("admin.address", a).await?),
            None => None,
        };
        Ok(Listeners {
            https,
            redirect,
            admin,
        })
    }
}

/// A listener that could not bind, named by its config key.
#[derive(Debug, thiserror::Error)]
#[error("{listener} {address}: {}", describe_bind_error(.source))]
pub struct BindError {
    pub listener: &'static str,
    pub address: SocketAddr,
    pub source: std::io::Error,
}

async fn bind(listener: &'static str, address: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError {
            listener,
            address,
            source,
        })
}

fn describe_bind_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::AddrInUse => "address in use (another process listens there)".into(),
        ErrorKind::AddrNotAvailable => "no interface of this host has this address".into(),
        ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".into()
        }
        _ => e.to_string(),
    }
}

fn http_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        // Hyper's own caps sit above ours so that our limit answers first,
        // with a JSON 431 instead of a bare one.
        .max_buf_size(256 * 1024)
        .max_headers(256);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(256 * 1024)
        // What h2 buffers per stream beyond the peer's window; the rest of a
        // buffered answer stays in our body, counted against the budget.
        .max_send_buf_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish within the grace period.
pub async fn serve(shared: Arc<Shared>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    // The redirect listener stops with the HTTPS one; the admin listener
    // stays up while connections drain so /readyz can say "draining".
    let (stop_tx, stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Redirects name the port the HTTPS listener really has: the config may
    // say port 0 when the caller binds the listener itself.
    let https_port = listeners.https.local_addr().ok().map(|a| a.port());
    if let Some(l) = listeners.redirect {
        tasks.push(tokio::spawn(serve_redirect(
            Arc::clone(&shared),
            l,
            https_port,
            stop_rx.clone(),
        )));
    }
    if let Some(l) = listeners.admin {
        tasks.push(tokio::spawn(crate::admin::serve(
            Arc::clone(&shared),
            l,
            admin_stop_rx,
        )));
    }
    let pruner = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                shared.runtime.load().limits.prune_all();
            }
        })
    };

    let pool = Arc::new(BufferPool::new(shared.metrics.buffered_bytes.clone()));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let https = listeners.https;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = https.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let rt = shared.runtime.load();
                if graceful.count() >= rt.config.limits.max_connections {
                    tracing::warn!(%peer, "connection limit reached; closing new connection");
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(Arc::clone(&rt.tls));
                let handshake_timeout = rt.config.tls.handshake_timeout;
                let header_timeout = rt.config.limits.header_read_timeout;
                drop(rt);
                let watcher = graceful.watcher();
                let shared = Arc::clone(&shared);
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            shared.metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            shared.metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    serve_connection(shared, tls, peer, header_timeout, watcher, pool).await;
                });
            }
        }
    }
    drop(https);
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let grace = shared.runtime.load().config.shutdown_grace;
    tracing::info!(
        in_flight = graceful.count(),
        grace_secs = grace.as_secs_f64(),
        "shutting down: draining connections"
    );
    let _ = stop_tx.send(true);
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("grace period over; closing remaining connections"),
    }
    pruner.abort();
    let _ = admin_stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    header_timeout: Duration,
    watcher: hyper_util::server::graceful::Watcher,
    pool: Arc<BufferPool>,
) {
    struct Open<'a>(&'a crate::metrics::Metrics);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.open_connections.dec();
        }
    }
    let metrics_shared = Arc::clone(&shared);
    metrics_shared.metrics.open_connections.inc();
    let _open = Open(&metrics_shared.metrics);
    let buffers = Arc::new(ConnBuffers::new(pool));
    let service = service_fn(move |req| {
        crate::proxy::handle(Arc::clone(&shared), req, peer, Arc::clone(&buffers))
    });
    let builder = http_builder(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Serves plain HTTP/1.1 on `listener` until `stop` changes: the redirect
/// and admin listeners, which answer small requests themselves.
pub(crate) async fn serve_http1<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<crate::body::ProxyBody>> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let fut = handler(req);
                        async move { Ok::<_, std::convert::Infallible>(fut.await) }
                    });
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
                    let _ = b.serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        }
    }
}

/// Plain HTTP: every request gets a 301 to the same path over HTTPS.
async fn serve_redirect(
    shared: Arc<Shared>,
    listener: TcpListener,
    https_port: Option<u16>,
    stop: watch::Receiver<bool>,
) {
    serve_http1(listener, stop, move |req| {
        let resp = redirect_response(&shared, &req, https_port);
        async move { resp }
    })
    .await;
}

fn redirect_response(
    shared: &Shared,
    req: &http::Request<hyper::body::Incoming>,
    https_port: Option<u16>,
) -> http::Response<crate::body::ProxyBody> {
    let rt = shared.runtime.load();
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| a.host().to_ascii_lowercase());
    let allowed = match (&host, &rt.config.allowed_hosts) {
        (Some(h), Some(list)) => list.contains(h),
        (Some(_), None) => true,
        (None, _) => false,
    };
    let mut resp = match host.filter(|_| allowed) {
        None => crate::proxy::error_response(&crate::error::ProxyError::MisdirectedHost),
        Some(h) => {
            let port = https_port.unwrap_or_else(|| rt.config.listen.port());
            let authority = if port == 443 {
                h
            } else {
                format!("{h}:{port}")
            };
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let location = format!("https://{authority}{pq}");
            let mut r = http::Response::new(crate::body::empty());
            *r.status_mut() = http::StatusCode::MOVED_PERMANENTLY;
            if let Ok(v) = http::HeaderValue::from_str(&location) {
                r.headers_mut().insert(http::header::LOCATION, v);
            }
            r
        }
    };
    rt.config.default_headers.apply(resp.headers_mut());
    resp
}
