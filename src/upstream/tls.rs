//! The rustls client config of an `https://` upstream: its trust (a CA
//! bundle, or the system's roots), and the client certificate for mutual
//! TLS. Built once per load; SNI and the certificate name check use the
//! host of the server URL being connected to.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::UpstreamTls;

/// Why an upstream's TLS settings could not be loaded (said whole: path
/// and cause, never key material).
#[derive(Debug, thiserror::Error)]
#[error("upstreams.{upstream}.tls: {message}")]
pub struct UpstreamTlsError {
    pub upstream: String,
    pub message: String,
}

pub fn client_config(
    upstream: &str,
    t: &UpstreamTls,
) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
    let fail = |message: String| UpstreamTlsError {
        upstream: upstream.to_string(),
        message,
    };
    let mut roots = RootCertStore::empty();
    match &t.ca {
        Some(ca) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .map_err(|e| fail(format!("ca {}: {e}", ca.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| fail(format!("ca {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(fail(format!("ca {}: no certificate in it", ca.display())));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| fail(format!("ca {}: {e}", ca.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                // Fail closed: no roots would refuse every server anyway,
                // and say so at load rather than per request.
                return Err(fail(
                    "no system root certificates were found; install them (ca-certificates) or set tls.ca"
                        .to_string(),
                ));
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &t.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| fail(format!("client_cert {}: {e}", cert.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| fail(format!("client_cert {}: {e}", cert.display())))?;
            if chain.is_empty() {
                return Err(fail(format!(
                    "client_cert {}: no certificate in it",
                    cert.display()
                )));
            }
            // The key's error never quotes the file: it is a secret.
            let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
                fail(format!(
                    "client_key {}: not a PEM private key",
                    key.display()
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| fail(format!("client_cert and client_key: {e}")))?
        }
    };
    // ALPN stays empty here: the connector sets `http/1.1` (and refuses a
    // config that already has protocols).
    Ok(Arc::new(config))
}
