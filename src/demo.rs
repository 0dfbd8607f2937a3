//! `fieldseal demo`: the proxy with a fresh self-signed certificate and key,
//! in front of a small in-memory JSON service, for a first look; and, on a
//! second route, per-subject keys: a development JWT issuer of its own
//! (a generated ES256 key, its JWKS served over local HTTP), subject keys in
//! an embedded SQLite file, and erasure by key destruction.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::body::{self, ProxyBody};

/// One collection of the legacy-style JSON store: keeps whatever it is
/// sent, verbatim, under the next id.
#[derive(Default)]
struct Collection {
    next: u64,
    items: BTreeMap<u64, Value>,
}

/// The demo's backend: `/api/users` (the deployment-scoped route) and
/// `/api/records` (the subject-scoped one). Like many legacy services it
/// checks no caller: whoever asks for a record id gets its bytes.
#[derive(Default)]
struct Store {
    users: Collection,
    records: Collection,
}

impl Store {
    fn collection(&mut self, name: &str) -> Option<&mut Collection> {
        match name {
            "users" => Some(&mut self.users),
            "records" => Some(&mut self.records),
            _ => None,
        }
    }
}

pub async fn start_backend(listener: TcpListener) {
    let store = Arc::new(Mutex::new(Store::default()));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let store = Arc::clone(&store);
                async move { Ok::<_, std::convert::Infallible>(backend(store, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn backend(store: Arc<Mutex<Store>>, req: Request<Incoming>) -> Response<ProxyBody> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let Ok(mut store) = store.lock() else {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "store poisoned"}),
        );
    };
    let not_found = || reply(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
    let Some(rest) = path.strip_prefix("/api/") else {
        return not_found();
    };
    let (name, id) = match rest.split_once('/') {
        Some((name, id)) => (name, Some(id)),
        None => (rest, None),
    };
    let Some(collection) = store.collection(name) else {
        return not_found();
    };
    match (method, id) {
        (Method::POST, None) => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(mut item)) => {
                collection.next += 1;
                let id = collection.next;
                item.insert("id".into(), json!(id));
                let item = Value::Object(item);
                collection.items.insert(id, item.clone());
                reply(StatusCode::CREATED, &item)
            }
            _ => reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": "expected a JSON object"}),
            ),
        },
        (Method::GET, None) => {
            let items: Vec<&Value> = collection.items.values().collect();
            reply(StatusCode::OK, &json!({ "items": items }))
        }
        (Method::GET, Some(id)) => match id
            .parse::<u64>()
            .ok()
            .and_then(|id| collection.items.get(&id))
        {
            Some(item) => reply(StatusCode::OK, item),
            None => reply(StatusCode::NOT_FOUND, &json!({"error": "no such item"})),
        },
        _ => not_found(),
    }
}

/// Where the demo's development issuer serves its key set.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The audience of the demo's tokens.
pub const DEMO_AUDIENCE: &str = "fieldseal-demo";
/// How long the tokens the demo prints are valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// `key_store.cache_ttl` of the demo: how soon an erasure made by another
/// process (`fieldseal subjects erase`) is in force in the running demo.
pub const DEMO_CACHE_TTL: Duration = Duration::from_secs(5);

/// The demo's own identity provider: an ES256 signing key generated at
/// start and held in memory only (never written to disk), its public key
/// as a JWKS, and the tokens it signs.
pub struct DevIssuer {
    issuer: String,
    kid: String,
    key: jsonwebtoken::EncodingKey,
    jwks: String,
}

impl DevIssuer {
    /// A fresh P-256 key for the issuer `issuer` (the JWKS server's origin).
    pub fn generate(issuer: String) -> Result<DevIssuer, String> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("cannot generate the demo's signing key: {e}"))?;
        let pem = zeroize::Zeroizing::new(pair.serialize_pem());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| format!("the demo's signing key is unusable: {e}"))?;
        let raw = pair.public_key_raw();
        // An uncompressed point: 0x04, then x and y (32 bytes each).
        if raw.len() != 65 || raw[0] != 4 {
            return Err("the demo's public key is not an uncompressed P-256 point".into());
        }
        let kid = format!("demo-{}", random_b64(6)?);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..]),
        }]})
        .to_string();
        Ok(DevIssuer {
            issuer,
            kid,
            key,
            jwks,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public key set, as served at `JWKS_PATH`.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// A token for `subject`, issued now, valid for `lifetime`.
    pub fn token(&self, subject: &str, lifetime: Duration) -> Result<String, String> {
        let now = crate::crypto::unix_now();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let claims = json!({
            "iss": self.issuer, "aud": DEMO_AUDIENCE, "sub": subject,
            "iat": now, "nbf": now, "exp": now + lifetime.as_secs(),
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("cannot sign the demo's token: {e}"))
    }
}

/// `n` random bytes, base64url without padding.
fn random_b64(n: usize) -> Result<String, String> {
    let mut b = zeroize::Zeroizing::new(vec![0u8; n]);
    getrandom::getrandom(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*b))
}

/// Serves `jwks` at `JWKS_PATH` over plain HTTP on `listener` (loopback
/// only: it is the demo's issuer, as an identity provider's endpoint is).
pub async fn serve_jwks(listener: TcpListener, jwks: String) {
    let jwks = Bytes::from(jwks);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let jwks = jwks.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let jwks = jwks.clone();
                async move {
                    let r = if req.method() == Method::GET && req.uri().path() == JWKS_PATH {
                        let mut r = Response::new(body::full(jwks));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        r
                    } else {
                        reply(StatusCode::NOT_FOUND, &json!({"error": "not found"}))
                    };
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The addresses a demo config names.
#[derive(Debug, Clone, Copy)]
pub struct DemoAddrs {
    /// The proxy's HTTPS listener.
    pub listen: SocketAddr,
    /// The built-in JSON service.
    pub backend: SocketAddr,
    /// The development issuer (its JWKS).
    pub issuer: SocketAddr,
}

impl DemoAddrs {
    /// The issuer name of the demo's tokens: its JWKS server's origin.
    pub fn issuer_url(&self) -> String {
        format!("http://{}", self.issuer)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}{JWKS_PATH}", self.issuer)
    }
}

/// The demo's config, written next to its generated certificate and keys.
pub fn demo_config(a: &DemoAddrs) -> String {
    let (listen, backend) = (a.listen, a.backend);
    let (issuer, jwks_url) = (a.issuer_url(), a.jwks_url());
    let ttl = DEMO_CACHE_TTL.as_secs();
    let lifetime = TOKEN_LIFETIME.as_secs() / 60;
    format!(
        r#"# Generated by `fieldseal demo`.
listen: {{ address: "{listen}", tls: {{ cert: server.crt, key: server.key }} }}
# Erasure through the admin listener needs this bearer token.
admin: {{ address: "127.0.0.1:0", token_file: admin.token }}
upstreams:
  demo: {{ url: "http://{backend}", connect_timeout: 1s, timeout: 10s }}
rate_limit: {{ requests_per_second: 50, burst: 100 }}
keys:
  active: demo
  ring:
    - {{ id: demo, file: demo.key }}
# The demo's development issuer: an ES256 key it generated at start (in
# memory only), its key set served by the demo itself over HTTP.
identity:
  jwt:
    - name: demo
      issuer: "{issuer}"
      audiences: [{DEMO_AUDIENCE}]
      algorithms: [ES256]
      jwks_url: "{jwks_url}"
      max_lifetime: {lifetime}m
      typ: [JWT]
# Subject keys: wrapped by the ring's key, in an embedded SQLite file.
key_store:
  sqlite: keys.db
  cache_ttl: {ttl}s
log: {{ format: text }}
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: demo
    encrypt: ["$.ssn", "$.card.number", "$.contacts[*].phone"]
    decrypt: ["$.ssn", "$..card.number", "$..contacts[*].phone"]
  - name: records
    match: {{ path_prefix: /api/records }}
    upstream: demo
    auth: required
    key_scope: subject
    encrypt: ["$.ssn"]
    decrypt: ["$.ssn"]
    on_foreign_subject: "null"
    on_erased: marker
    erased_marker: "[erased]"
"#
    )
}

/// The demo's working folder. Without `--dir`, a new private folder under
/// the system's temporary directory; with it, a folder that is new or empty,
/// since everything the demo writes is removed when it stops, and only that:
/// files it did not write and folders it did not create are left alone.
#[derive(Debug)]
pub struct DemoDir {
    path: PathBuf,
    /// Folders the demo created, outermost first.
    created: Vec<PathBuf>,
    /// Files the demo wrote.
    files: Vec<PathBuf>,
    /// The admin bearer token it generated (`write`).
    admin_token: Option<zeroize::Zeroizing<String>>,
}

impl DemoDir {
    /// Takes `dir` (or a fresh temporary folder) for the demo, or refuses a
    /// folder that holds anything or is not a folder.
    pub fn claim(dir: Option<&Path>) -> Result<DemoDir, String> {
        let Some(dir) = dir else {
            return Self::temporary();
        };
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => Err(format!("--dir {}: is not a folder", dir.display())),
            Ok(_) => {
                let entries = std::fs::read_dir(dir)
                    .map_err(|e| format!("--dir {}: {e}", dir.display()))?
                    .count();
                if entries > 0 {
                    return Err(format!(
                        "--dir {}: the folder is not empty ({entries} {}). The demo writes its certificate, keys and config into a folder of its own and deletes them when it stops: give a new or empty folder, or leave out --dir for a private temporary one",
                        dir.display(),
                        if entries == 1 { "entry" } else { "entries" }
                    ));
                }
                Ok(DemoDir {
                    path: dir.to_path_buf(),
                    created: Vec::new(),
                    files: Vec::new(),
                    admin_token: None,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut missing = Vec::new();
                let mut cur = Some(dir);
                while let Some(p) = cur.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
                    missing.push(p.to_path_buf());
                    cur = p.parent();
                }
                let mut d = DemoDir {
                    path: dir.to_path_buf(),
                    created: Vec::new(),
                    files: Vec::new(),
                    admin_token: None,
                };
                for p in missing.into_iter().rev() {
                    private_dir(&p).map_err(|e| format!("--dir {}: {e}", p.display()))?;
                    d.created.push(p);
                }
                Ok(d)
            }
            Err(e) => Err(format!("--dir {}: {e}", dir.display())),
        }
    }

    fn temporary() -> Result<DemoDir, String> {
        let tmp = std::env::temp_dir();
        for attempt in 0..16u32 {
            let p = tmp.join(format!("fieldseal-demo-{}-{attempt}", std::process::id()));
            match private_dir(&p) {
                Ok(()) => {
                    return Ok(DemoDir {
                        path: p.clone(),
                        created: vec![p],
                        files: Vec::new(),
                        admin_token: None,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("{}: {e}", p.display())),
            }
        }
        Err(format!(
            "{}: cannot create a private folder for the demo",
            tmp.display()
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the certificate, key, admin token and config; never
    /// overwrites a file. The key store's files (`keys.db` and SQLite's
    /// journals beside it) are counted as the demo's too: the proxy creates
    /// them in this folder, and they go when the demo stops.
    pub fn write(&mut self, addrs: &DemoAddrs) -> Result<PathBuf, String> {
        let pair = crate::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| e.to_string())?;
        self.create("server.key", pair.key_pem.as_bytes(), 0o600)?;
        self.create("server.crt", pair.cert_pem.as_bytes(), 0o644)?;
        let key = self.path.join("demo.key");
        crate::crypto::write_key_file(&key).map_err(|e| e.to_string())?;
        self.files.push(key);
        let token = zeroize::Zeroizing::new(random_b64(32)?);
        self.create("admin.token", format!("{}\n", &*token).as_bytes(), 0o600)?;
        self.admin_token = Some(token);
        for f in ["keys.db", "keys.db-wal", "keys.db-shm", "keys.db-journal"] {
            self.files.push(self.path.join(f));
        }
        self.create("fieldseal.yaml", demo_config(addrs).as_bytes(), 0o600)
    }

    /// The admin token `write` generated.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_ref().map(|t| t.as_str())
    }

    fn create(&mut self, name: &str, bytes: &[u8], mode: u32) -> Result<PathBuf, String> {
        let path = self.path.join(name);
        crate::init::create_new(&path, bytes, mode, &mut self.files)?;
        Ok(path)
    }

    /// Removes what the demo wrote, then the folders it created if nothing
    /// else is in them. Ok(notes) about folders left in place; Err if a file
    /// the demo wrote could not be removed.
    pub fn remove(&mut self) -> Result<Vec<String>, String> {
        let mut failed = Vec::new();
        for f in self.files.drain(..) {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failed.push(format!("{}: {e}", f.display())),
            }
        }
        let mut notes = Vec::new();
        for d in self.created.drain(..).rev() {
            if let Err(e) = std::fs::remove_dir(&d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    notes.push(format!(
                        "left {} in place: it holds files the demo did not write ({e})",
                        d.display()
                    ));
                }
            }
        }
        if failed.is_empty() {
            Ok(notes)
        } else {
            Err(format!("could not remove {}", failed.join(", ")))
        }
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// A folder only its owner can enter (it will hold private keys).
fn private_dir(p: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(p)
}

/// What the demo's second half needs to print: its tokens and how to erase.
pub struct SubjectGuide {
    pub jwks_url: String,
    pub alice: String,
    pub bob: String,
    pub admin_token: String,
    /// This program, to run `subjects erase` with.
    pub program: PathBuf,
    pub config: PathBuf,
}

/// `s` as one word for a POSIX shell: as it is when it holds only safe
/// characters, else in single quotes.
pub fn shell_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub fn instructions(
    listen: SocketAddr,
    backend: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
    s: &SubjectGuide,
) -> String {
    let curl = format!(
        "curl -s --cacert {}",
        shell_word(&dir.join("server.crt").display().to_string())
    );
    let minutes = TOKEN_LIFETIME.as_secs() / 60;
    let ttl = DEMO_CACHE_TTL.as_secs();
    let program = shell_word(&s.program.display().to_string());
    let config = shell_word(&s.config.display().to_string());
    format!(
        r#"
fieldseal demo is running (config and generated keys in {dir}).

  # Store a user through the proxy: ssn, card number and phones are encrypted before the backend sees them.
  {curl} https://{listen}/api/users -H 'content-type: application/json' \
    -d '{{"name":"Ada","ssn":"123-45-6789","card":{{"number":"4111111111111111","exp":"12/29"}},"contacts":[{{"phone":"+1 555 0100"}}]}}'

  # Read it back through the proxy: plaintext again.
  {curl} https://{listen}/api/users/1

  # What the backend really stored: envelopes only.
  curl -s http://{backend}/api/users/1

  # Per-subject keys. The demo runs a development identity provider: an ES256 key
  # generated at start (held in memory only), its JWKS at {jwks_url}
  # Tokens for alice and bob, valid for {minutes} minutes:
  ALICE={alice}
  BOB={bob}

  # alice stores a record on /api/records (auth: required, key_scope: subject): her SSN
  # is sealed under her own data key, created now and stored wrapped in keys.db.
  {curl} https://{listen}/api/records -H "authorization: Bearer $ALICE" \
    -H 'content-type: application/json' -d '{{"owner":"alice","ssn":"078-05-1120"}}'

  # alice reads it back: plaintext.
  {curl} https://{listen}/api/records/1 -H "authorization: Bearer $ALICE"

  # What the backend stored: an fs2 envelope naming alice's key by an opaque reference.
  curl -s http://{backend}/api/records/1

  # bob reads alice's record: "ssn":null (on_foreign_subject: "null"). Without a token: 401.
  {curl} https://{listen}/api/records/1 -H "authorization: Bearer $BOB"

  # Erase alice: every version of her key is destroyed and a tombstone recorded.
  # Through the admin endpoint, with the admin token the demo generated (in force at once):
  ADMIN_TOKEN={admin_token}
  curl -s http://{admin}/subjects/erase -H "authorization: Bearer $ADMIN_TOKEN" \
    -H 'content-type: application/json' -d '{{"subject":"alice","requested_by":"demo"}}'
  # or from the command line (the running demo then drops its cached key within {ttl}s, its key_store.cache_ttl):
  {program} subjects erase alice --config {config}

  # alice reads again: "ssn":"[erased]" (on_erased: marker). The backend's bytes are unchanged.
  {curl} https://{listen}/api/records/1 -H "authorization: Bearer $ALICE"

  # Health, readiness (with the key self-test) and metrics:
  curl -s http://{admin}/readyz
  curl -s http://{admin}/metrics | grep fieldseal_fields

Press Ctrl-C to stop.
"#,
        dir = dir.display(),
        jwks_url = s.jwks_url,
        alice = shell_word(&s.alice),
        bob = shell_word(&s.bob),
        admin_token = shell_word(&s.admin_token),
    )
}
