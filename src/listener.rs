//! The sockets fieldseal listens on, bound once: the traffic listener, the
//! plain-HTTP redirect and the admin listener; and the small HTTP/1.1
//! accept loop the redirect and admin listeners share. The TLS traffic
//! itself is served by `server`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The sockets fieldseal serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub https: TcpListener,
    pub redirect: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &crate::config::Config) -> Result<Listeners, BindError> {
        let https = bind_shared("listen.address", config.listen)?;
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
#[error("{listener} {address}: {}", describe_bind_error(.error))]
pub struct BindError {
    pub listener: &'static str,
    pub address: SocketAddr,
    pub error: std::io::Error,
}

async fn bind(listener: &'static str, address: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address).await.map_err(|error| BindError {
        listener,
        address,
        error,
    })
}

/// Binds a listening socket with SO_REUSEPORT (and SO_REUSEADDR, as
/// tokio's `bind` sets it), so that each serving runtime can bind its own
/// socket on the same address and the kernel spreads new connections over
/// them. Only sockets of the same user can join (Linux). Port 0 picks a
/// free port; the other runtimes then bind the one it got.
pub fn bind_shared(listener: &'static str, address: SocketAddr) -> Result<TcpListener, BindError> {
    reuseport_socket(address)
        .and_then(|s| s.listen(LISTEN_BACKLOG))
        .map_err(|error| BindError {
            listener,
            address,
            error,
        })
}

/// tokio's own backlog for `TcpListener::bind`.
const LISTEN_BACKLOG: u32 = 1024;

fn reuseport_socket(address: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    Ok(socket)
}

/// Another socket on `first`'s address for a serving runtime: its own
/// (SO_REUSEPORT) when `first` allows that, else a duplicate of `first`
/// (the runtimes then share one accept queue). Made outside any runtime.
pub(crate) fn sibling(first: &std::net::TcpListener) -> std::io::Result<std::net::TcpListener> {
    let address = first.local_addr()?;
    let own = reuseport_socket(address).and_then(|s| {
        // `listen` registers with the current runtime; the caller moves the
        // socket to the runtime that serves it.
        let l = s.listen(LISTEN_BACKLOG)?;
        l.into_std()
    });
    match own {
        Ok(l) => Ok(l),
        Err(e) => {
            tracing::warn!(%address, error = %e, "cannot bind another socket on the listen address (was it bound without SO_REUSEPORT?); the runtimes share one accept queue");
            first.try_clone()
        }
    }
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
