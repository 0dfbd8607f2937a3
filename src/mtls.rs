//! Identity from a TLS client certificate (`identity.mtls`).
//!
//! The listener asks for a client certificate and rustls verifies its chain
//! against `identity.mtls.ca` (and the CRLs) during the handshake; a chain
//! that does not verify ends the handshake. Of a verified chain only the
//! leaf is read, once per connection ([`PeerCertificate::from_der`]): every
//! subject alternative name of the kinds we use and the subject DN's CN,
//! OU and O. Each request on the connection carries it as an extension
//! ([`ClientCertificate`]); the identity stage picks the configured subject
//! from it ([`MtlsSpec::principal`]): exactly one value of that kind, or the
//! request is refused. Nothing of a certificate is ever logged.

use std::path::PathBuf;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{AuthError, Principal};

/// Provider name of principals from a client certificate.
pub const MTLS_PROVIDER: &str = "mtls";

/// Which value of the certificate names the subject (`identity.mtls.subject`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CertSubject {
    /// The one URI subject alternative name (e.g. `spiffe://example.org/alice`).
    SanUri,
    /// The one rfc822Name (e-mail) subject alternative name.
    SanEmail,
    /// The one dNSName subject alternative name (compared in lowercase).
    SanDns,
    /// The one commonName (CN) of the subject DN.
    Cn,
}

/// Which value of the certificate names the tenant (`identity.mtls.tenant`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CertTenant {
    /// The one organizationalUnitName (OU) of the subject DN.
    Ou,
    /// The one organizationName (O) of the subject DN.
    O,
}

/// `identity.mtls`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsSpec {
    /// PEM bundle of the CA certificates client chains must end in.
    pub ca: PathBuf,
    /// PEM CRLs; when given, the leaf's issuer must have one.
    pub crls: Vec<PathBuf>,
    pub subject: CertSubject,
    pub tenant: Option<CertTenant>,
    /// The handshake itself refuses a client without a certificate.
    pub required: bool,
}

/// The values of one kind in a certificate. `unreadable` counts values of
/// that kind that are not text: they make the kind unusable (one readable
/// value beside an unreadable one is not "exactly one").
#[derive(Default, Clone)]
struct Values {
    text: Vec<String>,
    unreadable: usize,
}

impl Values {
    fn one(&self) -> Result<&str, &'static str> {
        match (self.text.as_slice(), self.unreadable) {
            ([v], 0) => Ok(v),
            ([], 0) => Err("the client certificate has no value for the configured subject or tenant"),
            _ => Err("the client certificate has more than one value for the configured subject or tenant"),
        }
    }
}

/// What the identity stage may read of a connection's verified leaf
/// certificate. No `Debug` with contents: it holds subjects.
#[derive(Clone)]
pub struct PeerCertificate {
    uris: Values,
    emails: Values,
    dns: Values,
    cns: Values,
    ous: Values,
    os: Values,
    /// `notAfter`, Unix seconds: a connection outliving its certificate
    /// stops being that subject.
    not_after: i64,
    /// The leaf could not be parsed (or its SAN extension could not):
    /// nothing can be taken from it.
    unreadable: bool,
}

impl std::fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("unreadable", &self.unreadable)
            .finish_non_exhaustive()
    }
}

/// A request extension: the verified client certificate of its connection.
/// Only the server inserts it (a client cannot send extensions).
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Arc<PeerCertificate>);

impl PeerCertificate {
    /// Reads the leaf of a chain rustls verified. A certificate we can't
    /// fully read yields one that names no one (every request on an mTLS
    /// route then gets 401), never a partial reading.
    pub fn from_der(der: &[u8]) -> PeerCertificate {
        let mut out = PeerCertificate {
            uris: Values::default(),
            emails: Values::default(),
            dns: Values::default(),
            cns: Values::default(),
            ous: Values::default(),
            os: Values::default(),
            not_after: 0,
            unreadable: true,
        };
        let Ok((rest, cert)) = X509Certificate::from_der(der) else {
            return out;
        };
        if !rest.is_empty() {
            return out;
        }
        out.not_after = cert.validity().not_after.timestamp();
        // Err: the extension appears twice or does not parse.
        let Ok(san) = cert.subject_alternative_name() else {
            return out;
        };
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::URI(v) => push(&mut out.uris, Some(v)),
                GeneralName::RFC822Name(v) => push(&mut out.emails, Some(email(v).as_str())),
                GeneralName::DNSName(v) => push(&mut out.dns, Some(dns(v).as_str())),
                // Invalid data of a kind we'd read counts against that kind.
                GeneralName::Invalid(tag, _) => match tag.0 {
                    1 => out.emails.unreadable += 1,
                    2 => out.dns.unreadable += 1,
                    6 => out.uris.unreadable += 1,
                    _ => {}
                },
                _ => {}
            }
        }
        let subject = cert.subject();
        for a in subject.iter_common_name() {
            push(&mut out.cns, a.as_str().ok());
        }
        for a in subject.iter_organizational_unit() {
            push(&mut out.ous, a.as_str().ok());
        }
        for a in subject.iter_organization() {
            push(&mut out.os, a.as_str().ok());
        }
        out.unreadable = false;
        out
    }

    fn subject(&self, kind: CertSubject) -> &Values {
        match kind {
            CertSubject::SanUri => &self.uris,
            CertSubject::SanEmail => &self.emails,
            CertSubject::SanDns => &self.dns,
            CertSubject::Cn => &self.cns,
        }
    }

    fn tenant(&self, kind: CertTenant) -> &Values {
        match kind {
            CertTenant::Ou => &self.ous,
            CertTenant::O => &self.os,
        }
    }
}

fn push(values: &mut Values, v: Option<&str>) {
    match v {
        Some(s) => values.text.push(s.to_owned()),
        None => values.unreadable += 1,
    }
}

/// DNS names are case-insensitive; one spelling per name.
fn dns(v: &str) -> String {
    v.trim_end_matches('.').to_ascii_lowercase()
}

/// The domain of an address is case-insensitive, its local part is not.
fn email(v: &str) -> String {
    match v.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => v.to_owned(),
    }
}

impl MtlsSpec {
    /// Who the certificate says the caller is, or a 401 reason. `now` in
    /// Unix seconds.
    pub fn principal(&self, cert: &PeerCertificate, now: u64) -> Result<Principal, AuthError> {
        if cert.unreadable {
            return Err(AuthError::Certificate(
                "the client certificate could not be read",
            ));
        }
        if i64::try_from(now).unwrap_or(i64::MAX) > cert.not_after {
            return Err(AuthError::Certificate("the client certificate has expired"));
        }
        let subject = cert
            .subject(self.subject)
            .one()
            .map_err(AuthError::Certificate)?;
        if !crate::identity::is_subject_text(subject) {
            return Err(AuthError::Certificate(
                "the client certificate's subject is empty",
            ));
        }
        let tenant = match self.tenant {
            None => None,
            Some(kind) => {
                let t = cert.tenant(kind).one().map_err(AuthError::Certificate)?;
                if !crate::identity::is_subject_text(t) {
                    return Err(AuthError::Certificate(
                        "the client certificate's tenant is empty",
                    ));
                }
                Some(t.to_owned())
            }
        };
        Ok(Principal {
            provider: Arc::from(MTLS_PROVIDER),
            subject: subject.to_owned(),
            tenant,
            forwarded: Vec::new(),
            expires: u64::try_from(cert.not_after).unwrap_or(0),
            // Roles come from verified token payloads only.
            roles: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subject: CertSubject, tenant: Option<CertTenant>) -> MtlsSpec {
        MtlsSpec {
            ca: PathBuf::new(),
            crls: Vec::new(),
            subject,
            tenant,
            required: false,
        }
    }

    fn cert(sans: Vec<rcgen::SanType>, dn: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = sans;
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        let key = rcgen::KeyPair::generate().expect("key");
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().expect("ia5"))
    }

    fn subject_of(der: &[u8], s: CertSubject, t: Option<CertTenant>) -> Result<String, AuthError> {
        spec(s, t)
            .principal(&PeerCertificate::from_der(der), crate::crypto::unix_now())
            .map(|p| format!("{}|{}", p.subject, p.tenant.unwrap_or_default()))
    }

    #[test]
    fn each_kind_takes_its_one_value_and_refuses_zero_or_several() {
        let der = cert(
            vec![
                uri("spiffe://example.org/alice"),
                rcgen::SanType::Rfc822Name("alice@Example.ORG".try_into().expect("ia5")),
                rcgen::SanType::DnsName("Alice.Example.org.".try_into().expect("ia5")),
            ],
            &[
                (rcgen::DnType::CommonName, "Alice A"),
                (rcgen::DnType::OrganizationalUnitName, "tenant-7"),
            ],
        );
        use CertSubject::*;
        assert_eq!(
            subject_of(&der, SanUri, None).unwrap(),
            "spiffe://example.org/alice|"
        );
        assert_eq!(
            subject_of(&der, SanEmail, None).unwrap(),
            "alice@example.org|"
        );
        assert_eq!(
            subject_of(&der, SanDns, None).unwrap(),
            "alice.example.org|"
        );
        assert_eq!(
            subject_of(&der, Cn, Some(CertTenant::Ou)).unwrap(),
            "Alice A|tenant-7"
        );
        // No O in the DN: the tenant is missing, never guessed.
        assert!(subject_of(&der, Cn, Some(CertTenant::O)).is_err());

        let two = cert(vec![uri("urn:a"), uri("urn:b")], &[]);
        assert!(subject_of(&two, SanUri, None).is_err());
        assert!(subject_of(&two, SanEmail, None).is_err());
        assert!(subject_of(&two, Cn, None).is_err());
        // (rcgen writes one value per DN attribute type: two CNs or OUs are
        // tested end to end with certificates from the openssl CLI.)
        let empty_cn = cert(vec![], &[(rcgen::DnType::CommonName, "")]);
        assert!(subject_of(&empty_cn, Cn, None).is_err());
    }

    #[test]
    fn garbage_or_trailing_bytes_name_no_one() {
        let der = cert(vec![uri("urn:a")], &[]);
        let mut longer = der.clone();
        longer.push(0);
        for bad in [&b"not a certificate"[..], &der[..der.len() - 1], &longer] {
            let c = PeerCertificate::from_der(bad);
            assert!(spec(CertSubject::SanUri, None).principal(&c, 0).is_err());
        }
    }

    #[test]
    fn an_expired_certificate_names_no_one() {
        let der = cert(vec![uri("urn:a")], &[]);
        let c = PeerCertificate::from_der(&der);
        let s = spec(CertSubject::SanUri, None);
        assert!(s.principal(&c, crate::crypto::unix_now()).is_ok());
        assert!(s.principal(&c, u64::MAX).is_err());
    }
}
