//! TLS termination: rustls server config from PEM files, SNI, ALPN.
//! TLS 1.2 and 1.3 only, with the ring provider's forward-secret AEAD suites.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The certificates of the traffic listener (`listen.tls`).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sni: Vec<SniCert>,
    pub handshake_timeout: Duration,
    /// `identity.mtls`: ask clients for a certificate and verify it.
    pub client_auth: Option<ClientAuth>,
}

/// How the listener verifies client certificates (from `identity.mtls`).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// PEM bundle of the CAs client chains must end in.
    pub ca: PathBuf,
    /// PEM CRLs; when any is given, the leaf's issuer must have one.
    pub crls: Vec<PathBuf>,
    /// Refuse the handshake of a client that sends no certificate.
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct SniCert {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read certificate chain: {reason}")]
    Cert { path: String, reason: String },
    #[error("{path}: cannot read private key: {reason}")]
    Key { path: String, reason: String },
    #[error("{cert} and {key} do not form a usable pair: {reason}")]
    Pair {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("{path}: cannot read client CA certificates: {reason}")]
    ClientCa { path: String, reason: String },
    #[error("{path}: cannot read CRL: {reason}")]
    Crl { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("{path}: {reason}")]
    Write { path: String, reason: String },
}

pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // Forward-secret AEAD suites only. The ring provider's TLS 1.2 suites are
    // all ECDHE + AES-GCM/ChaCha20-Poly1305 already; the filter keeps it so.
    p.cipher_suites.retain(|s| {
        let name = format!("{:?}", s.suite());
        name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_")
    });
    Arc::new(p)
}

/// Certificates and keys are small; a larger file is not one.
const MAX_PEM_FILE: u64 = 1 << 20;

/// Reads a PEM private key (from a regular file only, see
/// [`crate::files::open_regular`]). The error text never contains key bytes.
pub(crate) fn read_private_key(key: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = zeroize::Zeroizing::new(
        crate::files::read_regular(key, MAX_PEM_FILE).map_err(|e| e.to_string())?,
    );
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| e.to_string())
}

fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.display().to_string(),
        reason,
    };
    let pem =
        crate::files::read_regular(cert, MAX_PEM_FILE).map_err(|e| cert_err(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no certificate found".into()));
    }
    let der = read_private_key(key).map_err(|reason| TlsError::Key {
        path: key.display().to_string(),
        reason,
    })?;
    let ck = CertifiedKey::from_der(chain, der, provider).map_err(|e| TlsError::Pair {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(ck))
}

/// Picks a certificate by SNI; unknown or absent names get the default one.
struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.exact.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(Arc::clone(&self.default));
        };
        let name = name.to_ascii_lowercase();
        if let Some(ck) = self.exact.get(&name) {
            return Some(Arc::clone(ck));
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = self.wildcard.get(parent) {
                return Some(Arc::clone(ck));
            }
        }
        Some(Arc::clone(&self.default))
    }
}

/// Builds the server config. Called at start and on every reload.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let default = load_pair(&settings.cert, &settings.key, &provider)?;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for sni in &settings.sni {
        let ck = load_pair(&sni.cert, &sni.key, &provider)?;
        for name in &sni.names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_string(), Arc::clone(&ck)),
                None => exact.insert(name.clone(), Arc::clone(&ck)),
            };
        }
    }
    let resolver = SniResolver {
        default,
        exact,
        wildcard,
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &settings.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => builder.with_client_cert_verifier(client_verifier(auth, provider)?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The verifier of client certificates: chains to `auth.ca` only (webpki:
/// signatures, validity dates, the clientAuth key usage, name
/// constraints), revocation of the leaf checked against `auth.crls` when
/// any is given (a leaf whose issuer has no CRL is then refused: an
/// unknown status is not taken as good).
pub fn client_verifier(
    auth: &ClientAuth,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    use rustls_pki_types::CertificateRevocationListDer;
    let ca_err = |reason: String| TlsError::ClientCa {
        path: auth.ca.display().to_string(),
        reason,
    };
    let pem =
        crate::files::read_regular(&auth.ca, MAX_PEM_FILE).map_err(|e| ca_err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ca_err(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificate found".into()));
    }
    let mut crls = Vec::new();
    for path in &auth.crls {
        let crl_err = |reason: String| TlsError::Crl {
            path: path.display().to_string(),
            reason,
        };
        let pem =
            crate::files::read_regular(path, MAX_PEM_FILE).map_err(|e| crl_err(e.to_string()))?;
        let before = crls.len();
        for crl in CertificateRevocationListDer::pem_slice_iter(&pem) {
            crls.push(crl.map_err(|e| crl_err(e.to_string()))?);
        }
        if crls.len() == before {
            return Err(crl_err("no CRL found".into()));
        }
    }
    let mut b =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if !crls.is_empty() {
        b = b.with_crls(crls).only_check_end_entity_revocation();
    }
    if !auth.required {
        b = b.allow_unauthenticated();
    }
    b.build().map_err(|e| TlsError::Config(e.to_string()))
}

/// A self-signed development certificate and key (PEM) for the given names.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
}

pub fn self_signed(names: &[String]) -> Result<SelfSigned, TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(SelfSigned {
        cert_pem: ck.cert.pem(),
        key_pem: zeroize::Zeroizing::new(ck.key_pair.serialize_pem()),
    })
}

/// Writes `server.crt` and `server.key` (mode 0600) into `dir`.
pub fn write_self_signed(
    dir: &Path,
    names: &[String],
    overwrite: bool,
) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
    use std::io::Write;
    let pair = self_signed(names)?;
    std::fs::create_dir_all(dir).map_err(|e| TlsError::Write {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    let open = |p: &Path, mode: u32| {
        let mut o = std::fs::OpenOptions::new();
        o.write(true);
        if overwrite {
            o.create(true).truncate(true);
        } else {
            o.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(mode);
        }
        let _ = mode;
        o.open(p).map_err(|e| TlsError::Write {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
    };
    let mut kf = open(&key_path, 0o600)?;
    kf.write_all(pair.key_pem.as_bytes())
        .map_err(|e| TlsError::Write {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
    let mut cf = open(&cert_path, 0o644)?;
    cf.write_all(pair.cert_pem.as_bytes())
        .map_err(|e| TlsError::Write {
            path: cert_path.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok((cert_path, key_path))
}
