//! The traffic listener and who may use it: `listen` (address and TLS),
//! `redirect_http`, `allowed_hosts`, `trusted_proxies`, and the check that
//! no listener is an upstream or shares a socket with another.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::admin::AdminSettings;
use super::locate::At;
use super::{address, addresses, duration, invalid, invalid_shown, raw, resolve, Invalid};
use super::{IpNet, Upstream};
use crate::tls::{SniCert, TlsSettings};

/// `listen`: the address and the certificates.
pub(super) fn compile(
    l: &raw::RawListen,
    base: &Path,
) -> Result<(SocketAddr, TlsSettings), Invalid> {
    let at = At::top("listen");
    let listen = address(&at.key("address"), &l.address)?;
    let tls_at = at.key("tls");
    let sni = l
        .tls
        .sni
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if s.names.is_empty() {
                return Err(invalid(
                    &tls_at.key("sni").index(i).key("names"),
                    "must name at least one server name",
                ));
            }
            Ok(SniCert {
                names: s.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                cert: resolve(base, &s.cert),
                key: resolve(base, &s.key),
            })
        })
        .collect::<Result<_, _>>()?;
    let tls = TlsSettings {
        cert: resolve(base, &l.tls.cert),
        key: resolve(base, &l.tls.key),
        sni,
        handshake_timeout: duration(
            &tls_at.key("handshake_timeout"),
            &l.tls.handshake_timeout,
            Duration::from_secs(10),
        )?,
        // From `identity.mtls`, set once identity is compiled.
        client_auth: None,
    };
    Ok((listen, tls))
}

/// `redirect_http`: plain HTTP that only answers 301.
pub(super) fn redirect(r: Option<&raw::RawAddress>) -> Result<Option<SocketAddr>, Invalid> {
    r.map(|r| address(&At::top("redirect_http").key("address"), &r.address))
        .transpose()
}

/// `allowed_hosts`, lowercase; never empty.
pub(super) fn allowed_hosts(hosts: Option<&[String]>) -> Result<Option<Vec<String>>, Invalid> {
    let Some(hosts) = hosts else {
        return Ok(None);
    };
    if hosts.is_empty() {
        return Err(invalid(
            &At::top("allowed_hosts"),
            "is empty: it would refuse every request (remove the key to allow any host)",
        ));
    }
    Ok(Some(
        hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
    ))
}

/// `trusted_proxies`: IPs and CIDR networks.
pub(super) fn trusted_proxies(list: &[String]) -> Result<Vec<IpNet>, Invalid> {
    let at = At::top("trusted_proxies");
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .map_err(|m| invalid_shown(at.shown(), m, Some(&at.index(i))))
        })
        .collect()
}

/// Trusted networks wider than an IPv4 /8 or an IPv6 /32 load, with a
/// warning: every client in them is believed about its address and scheme
/// (X-Forwarded-For, X-Real-IP, Client-IP...) and is exempt from
/// `limits.max_connections_per_client`.
pub(super) fn trusted_proxy_warnings(written: &[String], nets: &[IpNet]) -> Vec<String> {
    written
        .iter()
        .zip(nets)
        .enumerate()
        .filter(|(_, (_, n))| match n.prefix() {
            (p, true) => p < 8,
            (p, false) => p < 32,
        })
        .map(|(i, (w, _))| {
            format!(
                "trusted_proxies[{i}] ({w}) is wider than an IPv4 /8 or IPv6 /32: every client in it \
                 is believed about its own address (X-Forwarded-For, X-Real-IP, Client-IP...) and \
                 is exempt from limits.max_connections_per_client"
            )
        })
        .collect()
}

/// Listeners that are upstreams, or share a socket, are refused at load.
pub(super) fn check_listeners(
    listen: SocketAddr,
    redirect_http: Option<SocketAddr>,
    admin: &AdminSettings,
    upstreams: &[Upstream],
) -> Result<(), Invalid> {
    let mut listeners = vec![addresses::Listener {
        key: "listen.address",
        address: listen,
        written: true,
    }];
    listeners.extend(redirect_http.map(|address| addresses::Listener {
        key: "redirect_http.address",
        address,
        written: true,
    }));
    listeners.extend(admin.address.map(|address| addresses::Listener {
        key: "admin.address",
        address,
        written: admin.written,
    }));
    match addresses::clash(&listeners, upstreams) {
        None => Ok(()),
        Some(c) if c.written => {
            let (section, key) = c.listener.split_once('.').unwrap_or((c.listener, ""));
            Err(invalid(&At::top(section).key(key), c.message))
        }
        Some(c) => Err(invalid_shown(
            c.listener,
            format!("{} (the default admin address)", c.message),
            None,
        )),
    }
}
