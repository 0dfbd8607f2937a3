//! The pooled HTTP/1.1 client to each upstream, with its timeouts.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::config::Upstream;
use crate::error::ProxyError;

#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, ProxyBody>,
    timeout: Duration,
}

impl UpstreamClient {
    pub fn new(u: &Upstream) -> UpstreamClient {
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
            client,
            timeout: u.timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends the request and waits for the response head, within `timeout`.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => {
                let timed_out = std::error::Error::source(&e)
                    .map(|s| s.to_string().contains("timed out"))
                    .unwrap_or(false);
                tracing::debug!(error = %e, timed_out, "upstream connect failed");
                Err(ProxyError::UpstreamConnect)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upstream request failed");
                Err(ProxyError::UpstreamProtocol)
            }
        }
    }
}
