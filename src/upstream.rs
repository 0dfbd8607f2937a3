//! One upstream as requests use it: its settings, the pooled HTTP/1.1
//! client with its timeouts, and its latency histogram.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::histogram::Histogram;

use crate::body::ProxyBody;
use crate::config::Upstream;
use crate::error::{ProxyError, UpstreamError};

pub struct UpstreamClient {
    /// Where requests go and how their Host is set.
    pub spec: Upstream,
    client: Client<HttpConnector, ProxyBody>,
    timeout: Duration,
    /// `fieldseal_upstream_duration_seconds{upstream}`.
    duration: Histogram,
}

impl UpstreamClient {
    pub fn new(u: &Upstream, duration: Histogram) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(u.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(u.pool_idle_timeout)
            .pool_max_idle_per_host(u.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        UpstreamClient {
            spec: u.clone(),
            client,
            timeout: u.timeout,
            duration,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends the request and waits for the response head, within `timeout`;
    /// the wait is observed in the upstream's histogram.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, ProxyError> {
        let sent = std::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        self.duration.observe(sent.elapsed().as_secs_f64());
        match answer {
            Err(_) => Err(ProxyError::from(UpstreamError::UpstreamTimeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => {
                let err = match io_error_kind(&e) {
                    Some(std::io::ErrorKind::ConnectionRefused) => {
                        ProxyError::from(UpstreamError::UpstreamConnectRefused)
                    }
                    Some(std::io::ErrorKind::TimedOut) => {
                        ProxyError::from(UpstreamError::UpstreamConnectTimeout)
                    }
                    _ => ProxyError::from(UpstreamError::UpstreamConnect),
                };
                tracing::debug!(error = %e, reason = err.reason(), "upstream connect failed");
                Err(err)
            }
            Ok(Err(e)) => {
                // The upstream closed the connection before a whole answer
                // head arrived (often a keep-alive race, or a crash).
                let closed = source_chain(&e)
                    .filter_map(|s| s.downcast_ref::<hyper::Error>())
                    .any(|h| h.is_incomplete_message() || h.is_canceled());
                tracing::debug!(error = %e, closed, "upstream request failed");
                Err(if closed {
                    ProxyError::from(UpstreamError::UpstreamClosed)
                } else {
                    ProxyError::from(UpstreamError::UpstreamProtocol)
                })
            }
        }
    }
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
