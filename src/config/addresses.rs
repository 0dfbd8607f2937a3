//! Listener addresses against each other and against the upstreams: a
//! listener that is also an upstream sends requests back into fieldseal (the
//! redirect listener answering 301 to itself, or the proxy forwarding to
//! its own port), and two listeners on one socket cannot both bind.
//!
//! Decided on literal addresses only: no DNS at load. `localhost` counts as
//! loopback; a wildcard listener (0.0.0.0, ::) counts as every loopback
//! address. Whether some other literal IP is this host's is a question about
//! the machine, asked by `preflight` (`fieldseal check`), not here.

use std::net::{IpAddr, SocketAddr};

use super::{canonical_ip, Server, Upstream};

/// One listener of the config: its key (`listen.address`) and address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listener {
    pub key: &'static str,
    pub address: SocketAddr,
    /// False for the admin listener's default (nothing written in the file).
    pub written: bool,
}

/// Where an upstream URL points, as far as can be told without DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Ip(IpAddr),
    Localhost,
    /// A DNS name: not resolved at load.
    Name,
}

/// A server's host and port (80 or 443 when the URL has none).
pub(crate) fn target(u: &Upstream, server: &Server) -> (Target, u16) {
    let host = server.authority.host();
    let default = if u.scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    let port = server.authority.port_u16().unwrap_or(default);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let t = match bare.parse::<IpAddr>() {
        Ok(ip) => Target::Ip(canonical_ip(ip)),
        Err(_)
            if bare.eq_ignore_ascii_case("localhost")
                || bare.eq_ignore_ascii_case("localhost.") =>
        {
            Target::Localhost
        }
        Err(_) => Target::Name,
    };
    (t, port)
}

/// Whether a connection to `ip` can land on a socket bound to `bound`.
fn lands_on(bound: IpAddr, ip: IpAddr) -> bool {
    let (bound, ip) = (canonical_ip(bound), canonical_ip(ip));
    if bound == ip {
        return true;
    }
    // Connecting to 0.0.0.0 or :: reaches this host's 127.0.0.1 or ::1.
    let local = ip.is_loopback() || ip.is_unspecified();
    match bound {
        // 0.0.0.0 listens on every IPv4 address of the host.
        IpAddr::V4(b) if b.is_unspecified() => ip.is_ipv4() && local,
        // :: listens on every address, IPv4 too on a dual-stack socket
        // (Linux's default).
        IpAddr::V6(b) if b.is_unspecified() => local,
        IpAddr::V4(b) => b == std::net::Ipv4Addr::LOCALHOST && ip.is_unspecified() && ip.is_ipv4(),
        IpAddr::V6(b) => b == std::net::Ipv6Addr::LOCALHOST && ip.is_unspecified() && ip.is_ipv6(),
    }
}

/// Whether connecting to the upstream can reach the listener.
pub(crate) fn reaches(listener: SocketAddr, target: Target, port: u16) -> bool {
    if listener.port() == 0 || listener.port() != port {
        return false;
    }
    match target {
        Target::Ip(ip) => lands_on(listener.ip(), ip),
        // localhost resolves to 127.0.0.1 and ::1; a client tries both.
        Target::Localhost => {
            lands_on(listener.ip(), IpAddr::from([127, 0, 0, 1]))
                || lands_on(listener.ip(), IpAddr::from(std::net::Ipv6Addr::LOCALHOST))
        }
        Target::Name => false,
    }
}

/// Whether two listeners would claim one socket (the second bind fails).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (x, y) = (canonical_ip(a.ip()), canonical_ip(b.ip()));
    x == y
        || (x.is_unspecified() && (x.is_ipv6() || y.is_ipv4()))
        || (y.is_unspecified() && (y.is_ipv6() || x.is_ipv4()))
}

/// A clash between two listeners, or a listener and an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clash {
    pub listener: &'static str,
    pub address: SocketAddr,
    pub written: bool,
    pub message: String,
}

/// The first clash, if any.
pub(crate) fn clash(listeners: &[Listener], upstreams: &[Upstream]) -> Option<Clash> {
    for (i, l) in listeners.iter().enumerate() {
        for other in &listeners[..i] {
            if same_socket(other.address, l.address) {
                return Some(Clash {
                    listener: l.key,
                    address: l.address,
                    written: l.written,
                    message: format!(
                        "{} is the socket {} {} already listens on: one of the two cannot bind; give them different ports",
                        l.address, other.key, other.address
                    ),
                });
            }
        }
        for (u, server) in upstreams
            .iter()
            .flat_map(|u| u.servers.iter().map(move |s| (u, s)))
        {
            let (t, port) = target(u, server);
            if reaches(l.address, t, port) {
                let wildcard = if l.address.ip().is_unspecified() {
                    format!(" ({} listens on every local address)", l.address.ip())
                } else {
                    String::new()
                };
                return Some(Clash {
                    listener: l.key,
                    address: l.address,
                    written: l.written,
                    message: format!(
                        "{}{wildcard} is also where upstream {:?} ({}://{}) is reached: fieldseal would send requests to itself; move the listener or the upstream to another port",
                        l.address, u.name, u.scheme, server.authority
                    ),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn t(s: &str) -> Target {
        match s.parse::<IpAddr>() {
            Ok(ip) => Target::Ip(canonical_ip(ip)),
            Err(_) if s == "localhost" => Target::Localhost,
            Err(_) => Target::Name,
        }
    }

    #[test]
    fn a_listener_reached_by_an_upstream() {
        let yes = [
            ("0.0.0.0:8080", "127.0.0.1"),
            ("0.0.0.0:8080", "127.0.0.5"),
            ("0.0.0.0:8080", "localhost"),
            ("0.0.0.0:8080", "0.0.0.0"),
            ("[::]:8080", "127.0.0.1"),
            ("[::]:8080", "::1"),
            ("[::]:8080", "localhost"),
            ("127.0.0.1:8080", "127.0.0.1"),
            ("127.0.0.1:8080", "localhost"),
            ("127.0.0.1:8080", "0.0.0.0"),
            ("127.0.0.1:8080", "::ffff:127.0.0.1"),
            ("[::1]:8080", "localhost"),
            ("10.1.2.3:8080", "10.1.2.3"),
        ];
        for (l, u) in yes {
            assert!(reaches(a(l), t(u), 8080), "{l} <- {u}");
        }
        let no = [
            ("0.0.0.0:8080", "10.1.2.3"), // maybe another host: asked by preflight
            ("0.0.0.0:8080", "::1"),      // an IPv4-only socket
            ("127.0.0.1:8080", "127.0.0.2"),
            ("127.0.0.1:8080", "::1"),
            ("127.0.0.5:8080", "0.0.0.0"),
            ("10.1.2.3:8080", "127.0.0.1"),
            ("0.0.0.0:8080", "legacy.internal"),
        ];
        for (l, u) in no {
            assert!(!reaches(a(l), t(u), 8080), "{l} <- {u}");
        }
        assert!(!reaches(a("0.0.0.0:8081"), t("127.0.0.1"), 8080), "port");
        assert!(
            !reaches(a("127.0.0.1:0"), t("127.0.0.1"), 0),
            "port 0 picks a free port"
        );
    }

    #[test]
    fn two_listeners_on_one_socket() {
        assert!(same_socket(a("0.0.0.0:9901"), a("127.0.0.1:9901")));
        assert!(same_socket(a("127.0.0.1:9901"), a("0.0.0.0:9901")));
        assert!(same_socket(a("[::]:9901"), a("127.0.0.1:9901")));
        assert!(same_socket(a("127.0.0.1:9901"), a("127.0.0.1:9901")));
        assert!(!same_socket(a("127.0.0.1:9901"), a("127.0.0.2:9901")));
        assert!(!same_socket(a("0.0.0.0:9901"), a("[::1]:9901")));
        assert!(!same_socket(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!same_socket(a("0.0.0.0:9901"), a("0.0.0.0:9902")));
    }
}
