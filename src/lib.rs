//! fieldseal: a TLS-terminating reverse proxy that encrypts configured JSON
//! fields before they reach a legacy backend and decrypts them on the way back.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod body;
pub mod build_info;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod error;
pub mod headers;
pub mod healthcheck;
pub mod init;
pub mod logging;
pub mod metrics;
pub mod offline;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod state;
pub mod tls;
pub mod transform;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use server::Listeners;
pub use state::{LoadError, Shared};

/// A loaded proxy: config compiled, certificates and keys loaded. Cloning
/// gives another handle to the same proxy (for reload or metrics).
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    /// Loads everything the config names. Slow parts (PBKDF2) happen here,
    /// once, never per request.
    pub fn new(config: Config) -> Result<Proxy, LoadError> {
        let metrics = metrics::Metrics::new();
        let runtime = state::Runtime::build(config, None, &metrics)?;
        Ok(Proxy {
            shared: Arc::new(Shared::new(runtime, metrics)),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Re-reads the config file; on error the running config stays.
    pub async fn reload(&self) -> Result<String, LoadError> {
        self.shared.reload().await
    }

    pub async fn serve(self, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        server::serve(self.shared, listeners, shutdown).await;
    }
}

/// Starts the proxy in-process (used by tests): `run(config, listeners, shutdown)`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LoadError> {
    let proxy = Proxy::new(config)?;
    proxy.serve(listeners, shutdown).await;
    Ok(())
}
