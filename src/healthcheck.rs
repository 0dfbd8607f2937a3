//! `fieldseal healthcheck`: one HTTP/1.1 GET on the admin listener, for
//! container health checks (the runtime image has no curl). Exit 0 means the
//! admin listener answered 200.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The admin listener when the config sets none.
pub const DEFAULT_ADMIN: SocketAddr = crate::config::DEFAULT_ADMIN_ADDRESS;

/// The admin address to probe, from a config file. Only `admin.address` is
/// read, so a config being edited (not yet reloaded) does not fail a healthy
/// proxy's probe. A wildcard address is probed on loopback.
pub fn admin_address(config: &Path) -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| format!("{}: not YAML: {e}", config.display()))?;
    let admin = match doc.get("admin") {
        None | Some(serde_yaml_ng::Value::Null) => return Ok(DEFAULT_ADMIN),
        Some(a) if a.is_mapping() => a,
        Some(_) => {
            return Err(format!(
            "{}: admin is not an address mapping (is the admin listener off?): nothing to probe",
            config.display()
        ))
        }
    };
    let written = match admin.get("address") {
        None => return Ok(DEFAULT_ADMIN),
        Some(v) => v
            .as_str()
            .ok_or_else(|| format!("{}: admin.address is not a string", config.display()))?,
    };
    let addr: SocketAddr = written.parse().map_err(|_| {
        format!(
            "{}: admin.address {written:?} is not an ip:port address",
            config.display()
        )
    })?;
    Ok(probe_address(addr))
}

/// Where a client on this host reaches a listener bound to `addr`.
pub fn probe_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// GET `path` on `addr`; Ok when the answer's status is 200, within `timeout` overall.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {}", humantime::format_duration(timeout)))
    };
    let mut tcp = TcpStream::connect_timeout(&addr, left()?).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fieldseal-healthcheck\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    // The status line is all we need; read until it is complete.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        tcp.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    match status {
        "200" => Ok(()),
        "" => Err("no HTTP answer".into()),
        s => Err(format!("answered {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr_of(yaml: &str) -> Result<SocketAddr, String> {
        let dir = std::env::temp_dir().join(format!(
            "fieldseal-healthcheck-{}-{}",
            std::process::id(),
            yaml.len()
        ));
        std::fs::write(&dir, yaml).map_err(|e| e.to_string())?;
        let r = admin_address(&dir);
        let _ = std::fs::remove_file(&dir);
        r
    }

    #[test]
    fn the_admin_address_is_read_from_the_config_alone() {
        assert_eq!(addr_of("listen: {}\n"), Ok(DEFAULT_ADMIN));
        assert_eq!(
            addr_of("admin: { address: \"0.0.0.0:9902\" }\n"),
            Ok("127.0.0.1:9902".parse().unwrap())
        );
        assert_eq!(
            addr_of("admin: { address: \"[::]:9903\" }\n"),
            Ok("[::1]:9903".parse().unwrap())
        );
        assert_eq!(
            addr_of("admin: { address: \"10.0.0.7:9901\" }\n"),
            Ok("10.0.0.7:9901".parse().unwrap())
        );
        // The rest of the file may be mid-edit: only admin.address matters.
        assert_eq!(
            addr_of("admin: { address: \"127.0.0.1:9904\" }\nroutes: [ { nme: x } ]\n"),
            Ok("127.0.0.1:9904".parse().unwrap())
        );
        assert!(addr_of("admin: off\n").unwrap_err().contains("off"));
        assert!(addr_of("admin: { address: nine }\n").is_err());
    }
}
