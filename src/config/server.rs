//! `server`: how the process serves: one runtime per worker thread, or one
//! shared multi-threaded runtime, and how many worker threads.

use super::locate::At;
use super::raw::RawServer;
use super::{invalid, word, Invalid};

/// `server.runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeMode {
    /// One single-threaded runtime per worker, each with its own listening
    /// socket (SO_REUSEPORT) and its own upstream connections.
    // The default: on the quiet-machine A/B of docs/BENCHMARKS.md it served
    // 28% more requests at 16% less CPU each than `shared`.
    #[default]
    PerCore,
    /// One multi-threaded runtime whose workers share the connections.
    Shared,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub runtime: RuntimeMode,
    /// None: TOKIO_WORKER_THREADS, else the number of CPUs.
    pub workers: Option<usize>,
}

/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

impl ServerSettings {
    /// The number of worker threads (per_core: runtimes): `server.workers`,
    /// else TOKIO_WORKER_THREADS (tokio's own knob, kept with its meaning),
    /// else the number of CPUs this process may use.
    pub fn worker_count(&self) -> usize {
        self.workers
            .or_else(|| {
                std::env::var("TOKIO_WORKER_THREADS")
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .filter(|n| (1..=MAX_WORKERS).contains(n))
            })
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
    }
}

pub(super) fn compile(raw: &RawServer) -> Result<ServerSettings, Invalid> {
    let at = At::top("server");
    let runtime = match &raw.runtime {
        None => RuntimeMode::default(),
        Some(w) => word(&at.key("runtime"), w, "")?,
    };
    if let Some(n) = raw.workers {
        if !(1..=MAX_WORKERS).contains(&n) {
            return Err(invalid(
                &at.key("workers"),
                format!("must be between 1 and {MAX_WORKERS}"),
            ));
        }
    }
    Ok(ServerSettings {
        runtime,
        workers: raw.workers,
    })
}
