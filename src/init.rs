//! `fieldseal init`: a commented starter config with a development
//! certificate and a real key, ready for `fieldseal check` and `run`.
//! Never overwrites: if any file it would write exists, nothing is written.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "fieldseal.yaml";
pub const SCHEMA_FILE: &str = "fieldseal.schema.json";
const CERT: &str = "certs/server.crt";
const CERT_KEY: &str = "certs/server.key";
const KEY: &str = "keys/k1.key";

/// The files `write` creates, relative to its folder.
pub const FILES: [&str; 5] = [CONFIG_FILE, SCHEMA_FILE, CERT, CERT_KEY, KEY];

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// `http://host:port` of the service to protect.
    pub upstream: String,
}

/// The starter config. It is compiled with the real loader before anything
/// is written, so `init` never leaves a config that `check` refuses.
pub fn starter_config(o: &Options) -> String {
    format!(
        r#"# yaml-language-server: $schema={SCHEMA_FILE}
# fieldseal starter config, written by `fieldseal init`.
#
#   fieldseal check --config {CONFIG_FILE}    validate it (opens every file it names)
#   fieldseal run --config {CONFIG_FILE}      serve
#
# Every key, with its default: config/example.yaml in the fieldseal sources,
# or `fieldseal config-schema` ({SCHEMA_FILE} here, for editors).
# Relative paths are resolved against this file's folder. Secrets never go in
# this file, only paths of files or names of environment variables.

# The HTTPS listener. certs/ holds a self-signed DEVELOPMENT certificate for
# localhost and 127.0.0.1: point cert/key at your real chain (leaf first) and key.
listen:
  address: "{listen}"
  tls:
    cert: {CERT}
    key: {CERT_KEY}

# /healthz, /readyz, /metrics and POST /reload. Keep it off public networks
# (in a container, 0.0.0.0:9901 with the port published on the host's loopback).
admin:
  address: "{admin}"

# The service fieldseal protects (plain HTTP, usually on this host).
upstreams:
  app:
    url: "{upstream}"
    connect_timeout: 2s
    timeout: 30s

# keys/k1.key is a real random key (`fieldseal keygen`), mode 0600. BACK IT UP:
# what it seals cannot be opened without it. Rotation: add a key, reload,
# make it active, reload (README, "Keys and rotation").
keys:
  active: k1
  ring:
    - {{ id: k1, file: {KEY} }}

log:
  level: info
  format: text                     # json for log collectors

# Routes match in this order and the first match wins: put specific routes
# before general ones. `fieldseal check` refuses a config where an earlier
# route takes requests of a later encrypting route (`shadows_ok` acknowledges it).
routes:
  - name: users
    match: {{ path_prefix: /api/users }}    # also /api/users/7, /api/users.json
    upstream: app
    # Request bodies: these JSON fields reach the service only as envelopes.
    encrypt: ["$.ssn", "$.card.number"]
    # Answers: envelopes at these places are opened again for the client.
    decrypt: ["$.ssn", "$.card.number"]

  - name: everything-else
    match: {{ path_prefix: / }}
    upstream: app
"#,
        listen = o.listen,
        admin = o.admin,
        upstream = o.upstream,
    )
}

/// Writes the starter files into `dir` (created if missing). Refuses, and
/// writes nothing, when any of them already exists.
pub fn write(dir: &Path, o: &Options) -> Result<Vec<PathBuf>, String> {
    let text = starter_config(o);
    crate::config::Config::from_yaml(&text, &dir.join(CONFIG_FILE))
        .map_err(|e| format!("the starter config would not load: {e}"))?;
    if dir.exists() && !dir.is_dir() {
        return Err(format!("{}: is not a folder", dir.display()));
    }
    let present: Vec<String> = FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !present.is_empty() {
        return Err(format!(
            "{} already exist{}; init never overwrites: move them away or choose another --dir",
            present.join(", "),
            if present.len() == 1 { "s" } else { "" }
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let result = write_files(dir, &text, &mut written);
    if result.is_err() {
        // All or nothing: a half-written set would block the next attempt.
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
    }
    result.map(|()| written)
}

fn write_files(dir: &Path, text: &str, written: &mut Vec<PathBuf>) -> Result<(), String> {
    private_dir(&dir.join("keys"))?;
    private_dir(&dir.join("certs"))?;
    let key = dir.join(KEY);
    crate::crypto::write_key_file(&key).map_err(|e| e.to_string())?;
    written.push(key);
    let pair = crate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| e.to_string())?;
    let schema = crate::config::schema_json();
    for (name, bytes, mode) in [
        (CERT_KEY, pair.key_pem.as_bytes(), 0o600),
        (CERT, pair.cert_pem.as_bytes(), 0o644),
        (SCHEMA_FILE, schema.as_bytes(), 0o644),
        (CONFIG_FILE, text.as_bytes(), 0o644),
    ] {
        create_new(&dir.join(name), bytes, mode, written)?;
    }
    Ok(())
}

/// A folder for private files (0700); an existing one is kept as it is.
fn private_dir(p: &Path) -> Result<(), String> {
    if p.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Creates `path` with `mode` (never over an existing file) and writes
/// `bytes`. The path goes into `created` as soon as the file exists, so a
/// caller that cleans up also removes a file whose write failed.
pub(crate) fn create_new(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    created: &mut Vec<PathBuf>,
) -> Result<(), String> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    let _ = mode;
    let mut f = o
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    created.push(path.to_path_buf());
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            listen: "127.0.0.1:8443".parse().unwrap(),
            admin: "127.0.0.1:9901".parse().unwrap(),
            upstream: "http://127.0.0.1:8080".into(),
        }
    }

    #[test]
    fn starter_config_compiles_with_an_encrypting_route() {
        let c = crate::config::Config::from_yaml(
            &starter_config(&opts()),
            Path::new("/srv/fieldseal/fieldseal.yaml"),
        )
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(c.routes.by_name("users").unwrap().transforms_request());
        assert_eq!(c.tls.cert, Path::new("/srv/fieldseal/certs/server.crt"));
    }

    #[test]
    fn a_starter_config_that_would_not_load_is_not_written() {
        let dir = std::env::temp_dir().join(format!("fieldseal-init-test-{}", std::process::id()));
        let mut o = opts();
        // The upstream on the listener's own socket: refused at load.
        o.upstream = "http://127.0.0.1:8443".into();
        let e = write(&dir, &o).unwrap_err();
        assert!(e.contains("listen.address"), "{e}");
        assert!(!dir.exists(), "nothing written");
    }
}
