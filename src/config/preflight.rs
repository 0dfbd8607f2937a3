//! What `fieldseal check` does beyond parsing, like `nginx -t`: opens and
//! validates every file and environment variable the config names, and asks
//! this host about its addresses, without serving, deriving keys or writing
//! anything that stays. Each problem names the config key and where it is
//! written (`file:line:column: key: problem`); all of them are reported, not
//! only the first. `run` does the same before it starts.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::addresses::{self, Target};
use super::locate::{self, Needle};
use super::{AuditTarget, Config, ConfigError, TlsSettings};
use crate::crypto::{KeyError, KeySource, SaltSource};
use crate::tls::TlsError;

/// Problems that refuse the config, and warnings about this host.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

/// Checks `cfg` on this host; its file is re-read only to locate problems.
pub fn check(cfg: &Config) -> Report {
    let text = std::fs::read_to_string(&cfg.source).unwrap_or_default();
    check_text(cfg, &text)
}

/// As `check`, with the config's text given.
pub fn check_text(cfg: &Config, text: &str) -> Report {
    let mut p = Preflight {
        cfg,
        text,
        report: Report::default(),
    };
    p.tls();
    p.keys();
    p.admin_token();
    p.audit();
    p.addresses();
    p.report
}

struct Preflight<'a> {
    cfg: &'a Config,
    text: &'a str,
    report: Report,
}

impl Preflight<'_> {
    fn error(&mut self, key: String, message: String, at: &[Needle]) {
        let (line, column) = at
            .iter()
            .find_map(|n| locate::locate(self.text, n))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        self.report.errors.push(ConfigError {
            file: self.cfg.source.display().to_string(),
            line,
            column,
            message: format!("{key}: {message}"),
        });
    }

    /// How a path may be written in the file: as resolved, or relative to
    /// the config's folder.
    fn written(&self, key: &str, path: &Path, after: Option<&Needle>) -> Vec<Needle> {
        let base = self.cfg.source.parent().unwrap_or(Path::new(""));
        let mut forms = vec![path.display().to_string()];
        if let Ok(rel) = path.strip_prefix(base) {
            forms.push(rel.display().to_string());
        }
        let mut out = Vec::new();
        for f in &forms {
            out.push(match after {
                Some(a) => Needle::value_after(key, f, a.clone()),
                None => Needle::value(key, f),
            });
        }
        out
    }

    fn tls(&mut self) {
        let t = &self.cfg.tls;
        self.pair("listen.tls", &t.cert, &t.key, None);
        for (i, sni) in t.sni.iter().enumerate() {
            let after = Needle::Text("sni:".into());
            self.pair(
                &format!("listen.tls.sni[{i}]"),
                &sni.cert,
                &sni.key,
                Some(&after),
            );
        }
    }

    /// One certificate and key, loaded as the server loads them.
    fn pair(&mut self, key: &str, cert: &Path, private: &Path, after: Option<&Needle>) {
        let settings = TlsSettings {
            cert: cert.to_path_buf(),
            key: private.to_path_buf(),
            sni: Vec::new(),
            handshake_timeout: self.cfg.tls.handshake_timeout,
        };
        match crate::tls::server_config(&settings) {
            Ok(_) => {}
            Err(TlsError::Cert { reason, .. }) => {
                let at = self.written("cert", cert, after);
                self.error(
                    format!("{key}.cert"),
                    format!(
                        "{}: cannot read certificate chain: {reason}",
                        cert.display()
                    ),
                    &at,
                );
                // The key is read after the chain: check it on its own too,
                // so both problems show at once.
                use rustls_pki_types::pem::PemObject;
                if let Err(e) = rustls_pki_types::PrivateKeyDer::from_pem_file(private) {
                    let at = self.written("key", private, after);
                    self.error(
                        format!("{key}.key"),
                        format!("{}: cannot read private key: {e}", private.display()),
                        &at,
                    );
                }
            }
            Err(e @ (TlsError::Key { .. } | TlsError::Pair { .. })) => {
                let at = self.written("key", private, after);
                self.error(format!("{key}.key"), e.to_string(), &at);
            }
            Err(e) => {
                let at = self.written("cert", cert, after);
                self.error(key.to_string(), e.to_string(), &at);
            }
        }
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(private) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                self.report.warnings.push(format!(
                    "{key}.key: {} has mode {mode:04o}: any user of this host can read the TLS private key (chmod 600)",
                    private.display()
                ));
            }
        }
    }

    fn keys(&mut self) {
        let Some(spec) = &self.cfg.keys else { return };
        for (i, k) in spec.keys.iter().enumerate() {
            let Err(e) = crate::crypto::check_source(&k.id, &k.source) else {
                continue;
            };
            let prefix = format!("keys.ring[{i}] ({})", k.id);
            let after = Needle::key_id(&k.id);
            let (field, at) = match (&e, &k.source) {
                (KeyError::EnvMissing { var, .. } | KeyError::EnvEmpty { var, .. }, source) => {
                    let field = match source {
                        KeySource::Passphrase { env, .. } if env == var => "passphrase_env",
                        _ => "salt_env",
                    };
                    (field, vec![Needle::value_after(field, var, after)])
                }
                (KeyError::SaltTooShort { .. } | KeyError::Read { .. }, source) => match source {
                    KeySource::Passphrase {
                        salt: SaltSource::File(p),
                        ..
                    } => ("salt_file", self.written("salt_file", p, Some(&after))),
                    KeySource::Passphrase {
                        salt: SaltSource::Env(v),
                        ..
                    } => ("salt_env", vec![Needle::value_after("salt_env", v, after)]),
                    KeySource::File(p) => ("file", self.written("file", p, Some(&after))),
                },
                (_, KeySource::File(p)) => ("file", self.written("file", p, Some(&after))),
                (_, KeySource::Passphrase { env, .. }) => (
                    "passphrase_env",
                    vec![Needle::value_after("passphrase_env", env, after)],
                ),
            };
            self.error(format!("{prefix}.{field}"), e.to_string(), &at);
        }
    }

    /// The admin bearer token file, read as the proxy reads it (its content
    /// is never shown).
    fn admin_token(&mut self) {
        let Some(path) = &self.cfg.admin_token_file else {
            return;
        };
        if let Err(e) = crate::admin::AdminToken::load(path) {
            let at = self.written("token_file", path, None);
            self.error("admin.token_file".to_string(), e, &at);
        }
    }

    /// The audit file can be appended to, or created in its folder. The
    /// chain's last line is checked when `run` opens it.
    fn audit(&mut self) {
        let Some(AuditTarget::File(path)) = self.cfg.audit.as_ref().map(|a| &a.target) else {
            return;
        };
        let problem = match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => Some("is not a regular file".to_string()),
            Ok(_) => std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .err()
                .map(|e| format!("cannot be opened for appending: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => creatable(path)
                .err()
                .map(|e| format!("cannot be created: {e}")),
            Err(e) => Some(e.to_string()),
        };
        if let Some(p) = problem {
            let at = self.written("sink", path, None);
            self.error(
                "audit.sink".to_string(),
                format!("{}: {p}", path.display()),
                &at,
            );
        }
    }

    /// Listeners on addresses this host doesn't have, and upstreams that are
    /// this host's own address where a wildcard listener listens.
    fn addresses(&mut self) {
        let mut listeners = vec![("listen.address", self.cfg.listen)];
        listeners.extend(self.cfg.redirect_http.map(|a| ("redirect_http.address", a)));
        listeners.extend(self.cfg.admin.map(|a| ("admin.address", a)));
        for &(key, addr) in &listeners {
            let ip = addr.ip();
            if !ip.is_unspecified() && !ip.is_loopback() && !link_local(ip) && !is_local(ip) {
                self.error(
                    key.to_string(),
                    format!("{addr}: no interface of this host has the address {ip}, so it cannot listen there"),
                    &[Needle::value("address", &addr.to_string())],
                );
            }
        }
        for u in &self.cfg.upstreams {
            let (Target::Ip(ip), port) = addresses::target(u) else {
                continue;
            };
            if ip.is_loopback() || ip.is_unspecified() || !is_local(ip) {
                continue; // loopback is decided at load, other hosts can't loop
            }
            for &(key, addr) in &listeners {
                let wildcard = addr.ip().is_unspecified() && (addr.is_ipv6() || ip.is_ipv4());
                if wildcard && addr.port() == port && port != 0 {
                    let url = format!("{}://{}", u.scheme, u.authority);
                    self.error(
                        format!("upstreams.{}.url", u.name),
                        format!("{url}: {ip} is an address of this host, where {key} {addr} listens: fieldseal would send requests to itself"),
                        &[Needle::value("url", &url), Needle::Text(u.authority.to_string())],
                    );
                }
            }
        }
    }
}

/// A file can be created in `path`'s folder: a probe file is made and
/// removed again.
fn creatable(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = dir.join(format!(".fieldseal-check-{}-{nanos}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Whether `ip` is an address of this host: binding a socket to it (port 0,
/// nothing sent) succeeds only then.
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// IPv6 link-local addresses need a scope to bind; not asked.
fn link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}
