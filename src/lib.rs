//! fieldseal: a TLS-terminating reverse proxy that encrypts configured JSON
//! fields before they reach a legacy backend and decrypts them on the way back.
#![forbid(unsafe_code)]

// What the binary, the tests and the benchmarks use.
pub mod audit;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod error;
pub mod healthcheck;
pub mod identity;
pub mod init;
pub mod keystore;
pub mod logging;
pub mod mtls;
pub mod offline;
pub mod proxy;
pub mod tls;
pub mod transform;

mod admin;
mod body;
mod build_info;
mod client_slots;
mod files;
mod headers;
mod listener;
mod metrics;
mod ratelimit;
mod redis_limit;
mod routes;
mod server;
mod state;
mod upstream;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use listener::{bind_shared, BindError, Listeners};
pub use state::LoadError;

use state::Shared;

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

    /// Re-reads the config file; on error the running config stays.
    /// The key service of the loaded config (tenant and subject keys), if any.
    pub fn key_service(&self) -> Option<Arc<keystore::KeyService>> {
        self.shared.runtime.load().key_service.clone()
    }

    /// The JWT verifiers of the loaded config, if any.
    pub fn identity(&self) -> Option<Arc<identity::Identity>> {
        self.shared.runtime.load().identity.clone()
    }

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
