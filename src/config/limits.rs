//! `limits`: sizes and deadlines, checked against each other at load so no
//! request can meet a limit that makes it unservable.

use std::time::Duration;

use super::locate::At;
use super::raw::RawLimits;
use super::{duration, invalid, size, Invalid};
use crate::routes::Route;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: u64,
    pub max_response_body: u64,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_json_depth: usize,
    /// Bodies larger than this are transformed on the blocking pool.
    pub offload_threshold: usize,
    pub max_connections: usize,
    /// What one client address (IPv4 address, IPv6 /64) may hold of
    /// `max_connections`; trusted proxies are exempt.
    pub max_connections_per_client: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A response the client takes no bytes of for this long closes its
    /// connection (and so releases the upstream connection behind it).
    pub send_timeout: Duration,
    /// Connections older than this are closed gracefully...
    pub max_connection_age: Duration,
    /// ...and dropped this long after a graceful close began.
    pub connection_drain_timeout: Duration,
    /// Bodies the proxy holds (buffered requests and answers), per
    /// connection and for the whole process.
    pub max_buffered_per_connection: u64,
    pub max_buffered_total: u64,
}

pub(super) fn compile(l: &RawLimits) -> Result<Limits, Invalid> {
    let at = At::top("limits");
    let secs = |key: &str, v: &Option<String>, default: u64| {
        duration(&at.key(key), v, Duration::from_secs(default))
    };
    let bytes = |key: &str, v: &Option<String>, default: u64| size(&at.key(key), v, default);
    let max_connections = l.max_connections.unwrap_or(10_000);
    let limits = Limits {
        max_body: bytes("max_body", &l.max_body, 1 << 20)?,
        max_response_body: bytes("max_response_body", &l.max_response_body, 16 << 20)?,
        header_read_timeout: secs("header_read_timeout", &l.header_read_timeout, 10)?,
        body_read_timeout: secs("body_read_timeout", &l.body_read_timeout, 30)?,
        max_header_bytes: bytes("max_header_bytes", &l.max_header_bytes, 32 << 10)? as usize,
        max_json_depth: l.max_json_depth.unwrap_or(64),
        offload_threshold: bytes("offload_threshold", &l.offload_threshold, 64 << 10)? as usize,
        max_connections,
        max_connections_per_client: l
            .max_connections_per_client
            .unwrap_or_else(|| default_per_client(max_connections)),
        idle_timeout: secs("idle_timeout", &l.idle_timeout, 60)?,
        send_timeout: secs("send_timeout", &l.send_timeout, 30)?,
        max_connection_age: secs("max_connection_age", &l.max_connection_age, 3600)?,
        connection_drain_timeout: secs(
            "connection_drain_timeout",
            &l.connection_drain_timeout,
            30,
        )?,
        max_buffered_per_connection: bytes(
            "max_buffered_per_connection",
            &l.max_buffered_per_connection,
            32 << 20,
        )?,
        max_buffered_total: bytes("max_buffered_total", &l.max_buffered_total, 512 << 20)?,
    };
    if [
        limits.header_read_timeout,
        limits.body_read_timeout,
        limits.idle_timeout,
        limits.send_timeout,
        limits.max_connection_age,
        limits.connection_drain_timeout,
    ]
    .iter()
    .any(Duration::is_zero)
    {
        return Err(invalid(&at, "timeouts must be greater than zero"));
    }
    if limits.max_connections == 0 {
        return Err(invalid(&at.key("max_connections"), "must be at least 1"));
    }
    if limits.max_connections_per_client == 0
        || limits.max_connections_per_client > limits.max_connections
    {
        return Err(invalid(
            &at.key("max_connections_per_client"),
            "must be between 1 and limits.max_connections",
        ));
    }
    if limits.max_json_depth == 0 || limits.max_json_depth > 128 {
        return Err(invalid(
            &at.key("max_json_depth"),
            "must be between 1 and 128",
        ));
    }
    Ok(limits)
}

/// Limits that load but leave the proxy open to one client.
pub(super) fn warnings(limits: &Limits) -> Vec<String> {
    let mut out = Vec::new();
    if limits.max_connections_per_client == limits.max_connections && limits.max_connections > 1 {
        out.push(
            "limits.max_connections_per_client equals limits.max_connections: one client address \
             can hold every connection slot and lock every other client out"
                .to_string(),
        );
    }
    out
}

/// A quarter of the slots, at most 256: enough for a NAT or an office
/// behind one address, while one address can never take every slot.
fn default_per_client(max_connections: usize) -> usize {
    (max_connections / 4).clamp(1, 256)
}

/// Every buffered body must fit the connection's budget, and one connection
/// the process's; otherwise some request could never be served.
pub(super) fn check_buffers(limits: &Limits, routes: &[Route]) -> Result<(), Invalid> {
    let at = At::top("limits");
    let largest_body = routes.iter().map(|r| r.max_body).max().unwrap_or(0);
    let need = largest_body.max(limits.max_response_body);
    if limits.max_buffered_per_connection < need {
        return Err(invalid(
            &at.key("max_buffered_per_connection"),
            format!("must be at least the largest max_body or max_response_body ({need} bytes)"),
        ));
    }
    if limits.max_buffered_total < limits.max_buffered_per_connection {
        return Err(invalid(
            &at.key("max_buffered_total"),
            "must be at least limits.max_buffered_per_connection",
        ));
    }
    Ok(())
}
