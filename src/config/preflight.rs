//! What `fieldseal check` does beyond parsing, like `nginx -t`: opens and
//! validates every file and environment variable the config names, and asks
//! this host about its addresses, without serving, deriving keys or writing
//! anything that stays. Each problem names the config key and where it is
//! written (`file:line:column: key: problem`); all of them are reported, not
//! only the first. `run` does the same before it starts.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::addresses::{self, Target};
use super::locate::At;
use super::{Config, ConfigError};
use crate::audit::AuditSink;
use crate::crypto::{KeyError, KeySource, SaltSource};
use crate::tls::TlsError;
use crate::tls::TlsSettings;

/// Problems that refuse the config, and warnings about this host.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

/// Checks `cfg` on this host; its file is re-read only to locate problems.
pub fn check(cfg: &Config) -> Report {
    let text =
        crate::files::read_regular_text(&cfg.source, super::MAX_CONFIG_FILE).unwrap_or_default();
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
    p.redis();
    p.key_store();
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
    /// A problem with what is written at `at`.
    fn error(&mut self, at: &At, message: String) {
        let (line, column) = at
            .position(self.text)
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        self.report.errors.push(ConfigError {
            file: self.cfg.source.display().to_string(),
            line,
            column,
            message: format!("{}: {message}", at.shown()),
        });
    }

    fn tls(&mut self) {
        let t = &self.cfg.tls;
        let at = At::top("listen").key("tls");
        self.pair(&at, &t.cert, &t.key);
        for (i, sni) in t.sni.iter().enumerate() {
            self.pair(&at.key("sni").index(i), &sni.cert, &sni.key);
        }
        if let Some(auth) = &t.client_auth {
            let at = At::top("identity").key("mtls");
            match crate::tls::client_verifier(auth, crate::tls::provider()) {
                Ok(_) => {}
                Err(e @ TlsError::Crl { .. }) => self.error(&at.key("crls"), e.to_string()),
                Err(e @ TlsError::ClientCa { .. }) => self.error(&at.key("ca"), e.to_string()),
                Err(e) => self.error(&at, e.to_string()),
            }
        }
    }

    /// One certificate and key, loaded as the server loads them.
    fn pair(&mut self, at: &At, cert: &Path, private: &Path) {
        let settings = TlsSettings {
            cert: cert.to_path_buf(),
            key: private.to_path_buf(),
            sni: Vec::new(),
            handshake_timeout: self.cfg.tls.handshake_timeout,
            client_auth: None,
        };
        match crate::tls::server_config(&settings) {
            Ok(_) => {}
            Err(TlsError::Cert { reason, .. }) => {
                self.error(
                    &at.key("cert"),
                    format!(
                        "{}: cannot read certificate chain: {reason}",
                        cert.display()
                    ),
                );
                // The key is read after the chain: check it on its own too,
                // so both problems show at once.
                if let Err(e) = crate::tls::read_private_key(private) {
                    self.error(
                        &at.key("key"),
                        format!("{}: cannot read private key: {e}", private.display()),
                    );
                }
            }
            Err(e @ (TlsError::Key { .. } | TlsError::Pair { .. })) => {
                self.error(&at.key("key"), e.to_string());
            }
            Err(e) => self.error(at, e.to_string()),
        }
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(private) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                self.report.warnings.push(format!(
                    "{}: {} has mode {mode:04o}: any user of this host can read the TLS private key (chmod 600)",
                    at.key("key").shown(),
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
            let entry = At::top("keys").key("ring").item(i, &k.id);
            let field = match (&e, &k.source) {
                (KeyError::EnvMissing { var, .. } | KeyError::EnvEmpty { var, .. }, source) => {
                    match source {
                        KeySource::Passphrase { env, .. } if env == var => "passphrase_env",
                        _ => "salt_env",
                    }
                }
                (KeyError::SaltTooShort { .. } | KeyError::Read { .. }, source) => match source {
                    KeySource::Passphrase {
                        salt: SaltSource::File(_),
                        ..
                    } => "salt_file",
                    KeySource::Passphrase {
                        salt: SaltSource::Env(_),
                        ..
                    } => "salt_env",
                    KeySource::File(_) => "file",
                    KeySource::Pkcs11(_) => "pkcs11",
                },
                (_, KeySource::File(_)) => "file",
                (_, KeySource::Passphrase { .. }) => "passphrase_env",
                (_, KeySource::Pkcs11(_)) => "pkcs11",
            };
            self.error(&entry.key(field), e.to_string());
        }
    }

    /// The admin bearer token file, read as the proxy reads it (its content
    /// is never shown).
    /// The Redis URL (from its environment variable), password file and CA
    /// bundle are readable and well formed. Redis itself is not contacted:
    /// the proxy serves while it is down (`on_store_error`).
    fn redis(&mut self) {
        let Some(r) = &self.cfg.redis else { return };
        if let Err(e) = crate::redis_limit::resolve(r) {
            self.error(&At::top("redis").key(e.key), e.message);
        }
        let rl = &self.cfg.rate_limit;
        let uses = rl
            .default
            .iter()
            .chain(
                self.cfg
                    .routes
                    .routes
                    .iter()
                    .filter_map(|r| r.rate_limit.as_ref()),
            )
            .any(|s| s.store == crate::ratelimit::LimitStore::Redis);
        if !uses {
            self.report
                .warnings
                .push("redis: no rate_limit names store: redis; the section is unused".into());
        }
    }

    /// `key_store`: the PostgreSQL URL (env or file) and CA bundle are there
    /// and well formed, and what an operator would get wrong is warned
    /// about. The database itself is not contacted (`run` needs it).
    fn key_store(&mut self) {
        let Some(spec) = &self.cfg.key_store else {
            return;
        };
        let at = At::top("key_store");
        let scoped = self
            .cfg
            .routes
            .routes
            .iter()
            .any(|r| r.key_scope != crate::routes::KeyScope::Deployment);
        if !scoped {
            self.report.warnings.push(
                "key_store: no route has key_scope tenant or subject; the section is unused".into(),
            );
        }
        if spec.cache_ttl > std::time::Duration::from_secs(300) {
            self.report.warnings.push(format!(
                "key_store.cache_ttl: an erasure through another replica or the CLI takes up to {} to be in force on this one",
                humantime::format_duration(spec.cache_ttl)
            ));
        }
        let super::KeyStoreBackend::Postgres(pg) = &spec.backend else {
            return;
        };
        match crate::keystore::resolve_postgres_url(pg) {
            Err((key, e)) => self.error(&at.key(key), e),
            Ok(c) => {
                let tls_required = c.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
                if !tls_required && !crate::keystore::postgres_local_only(&c) {
                    self.report.warnings.push(
                        "key_store: the PostgreSQL URL does not require TLS to a host that is not this one (wrapped keys and the password would cross the network in clear if the server allows it): add ?sslmode=require".into(),
                    );
                }
                if pg.ca.is_some() && !tls_required {
                    self.report.warnings.push(
                        "key_store.ca is set but the URL does not say sslmode=require: TLS is only tried (sslmode=prefer) or off".into(),
                    );
                }
            }
        }
        if let Some(ca) = &pg.ca {
            if let Err(e) = crate::keystore::postgres_tls_check(ca) {
                self.error(&at.key("ca"), e);
            }
        }
    }

    fn admin_token(&mut self) {
        let Some(path) = &self.cfg.admin_token_file else {
            return;
        };
        if let Err(e) = crate::crypto::AdminToken::load(path) {
            self.error(&At::top("admin").key("token_file"), e);
        }
    }

    /// The audit file can be appended to, or created in its folder. The
    /// chain's last line is checked when `run` opens it.
    fn audit(&mut self) {
        let Some(AuditSink::File(path)) = self.cfg.audit.as_ref().map(|a| &a.target) else {
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
            self.error(
                &At::top("audit").key("sink"),
                format!("{}: {p}", path.display()),
            );
        }
    }

    /// Listeners on addresses this host doesn't have, and upstreams that are
    /// this host's own address where a wildcard listener listens.
    fn addresses(&mut self) {
        let mut listeners = vec![("listen", self.cfg.listen)];
        listeners.extend(self.cfg.redirect_http.map(|a| ("redirect_http", a)));
        listeners.extend(self.cfg.admin.map(|a| ("admin", a)));
        for &(section, addr) in &listeners {
            let ip = addr.ip();
            if !ip.is_unspecified() && !ip.is_loopback() && !link_local(ip) && !is_local(ip) {
                self.error(
                    &At::top(section).key("address"),
                    format!("{addr}: no interface of this host has the address {ip}, so it cannot listen there"),
                );
            }
        }
        for (u, server) in self
            .cfg
            .upstreams
            .iter()
            .flat_map(|u| u.servers.iter().map(move |s| (u, s)))
        {
            let (Target::Ip(ip), port) = addresses::target(u, server) else {
                continue;
            };
            if ip.is_loopback() || ip.is_unspecified() || !is_local(ip) {
                continue; // loopback is decided at load, other hosts can't loop
            }
            for &(section, addr) in &listeners {
                let wildcard = addr.ip().is_unspecified() && (addr.is_ipv6() || ip.is_ipv4());
                if wildcard && addr.port() == port && port != 0 {
                    let url = format!("{}://{}", u.scheme, server.authority);
                    self.error(
                        &At::top("upstreams").key(&u.name).key("url"),
                        format!("{url}: {ip} is an address of this host, where {section}.address {addr} listens: fieldseal would send requests to itself"),
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
