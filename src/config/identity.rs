//! `identity`: the JWT providers, validated.

use std::path::Path;
use std::time::Duration;

use super::locate::At;
use super::raw::RawIdentity;
use super::{duration, invalid, resolve, word, Invalid};
use crate::identity::{is_hmac, parse_algorithm, IdentitySpec, JwtProviderSpec, KeySourceSpec};

const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

pub(super) fn compile(raw: &RawIdentity, base: &Path) -> Result<IdentitySpec, Invalid> {
    let at = At::top("identity");
    let clock_skew = duration(
        &at.key("clock_skew"),
        &raw.clock_skew,
        Duration::from_secs(60),
    )?;
    if clock_skew > MAX_CLOCK_SKEW {
        return Err(invalid(&at.key("clock_skew"), "must be at most 5m"));
    }
    if raw.jwt.is_empty() && raw.header.is_none() && raw.mtls.is_none() {
        return Err(invalid(
            &at.key("jwt"),
            "needs at least one provider (or an identity `header` or `mtls`)",
        ));
    }
    let mut providers: Vec<JwtProviderSpec> = Vec::new();
    for (i, p) in raw.jwt.iter().enumerate() {
        let at = at.key("jwt").item(i, &p.name);
        if p.name.is_empty() || providers.iter().any(|q| q.name == p.name) {
            return Err(invalid(
                &at.key("name"),
                "provider names must be unique and non-empty",
            ));
        }
        if p.issuer.is_empty() || providers.iter().any(|q| q.issuer == p.issuer) {
            return Err(invalid(
                &at.key("issuer"),
                "issuers must be unique and non-empty",
            ));
        }
        if p.audiences.is_empty() || p.audiences.iter().any(String::is_empty) {
            return Err(invalid(
                &at.key("audiences"),
                "name at least one audience, none empty",
            ));
        }
        let mut algorithms = Vec::new();
        for a in &p.algorithms {
            if a.eq_ignore_ascii_case("none") {
                return Err(invalid(&at.key("algorithms"), "`none` is never accepted"));
            }
            let alg = parse_algorithm(a).ok_or_else(|| {
                invalid(
                    &at.key("algorithms"),
                    format!("{a:?}: expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512"),
                )
            })?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        if algorithms.is_empty() {
            return Err(invalid(
                &at.key("algorithms"),
                "name at least one algorithm",
            ));
        }
        let sources = [&p.jwks_file, &p.jwks_url, &p.hmac_secret_file]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if sources != 1 {
            return Err(invalid(
                &at,
                "give exactly one of jwks_file, jwks_url or hmac_secret_file",
            ));
        }
        let hmac = algorithms.iter().filter(|a| is_hmac(**a)).count();
        let keys = if let Some(f) = &p.hmac_secret_file {
            if hmac != algorithms.len() {
                return Err(invalid(
                    &at.key("algorithms"),
                    "with hmac_secret_file only HS256, HS384 and HS512 can be accepted",
                ));
            }
            KeySourceSpec::HmacSecretFile(resolve(base, f))
        } else {
            if hmac > 0 {
                return Err(invalid(
                    &at.key("algorithms"),
                    "HS256/HS384/HS512 need hmac_secret_file (a JWKS never supplies HMAC secrets)",
                ));
            }
            match (&p.jwks_file, &p.jwks_url) {
                (Some(f), _) => KeySourceSpec::JwksFile(resolve(base, f)),
                (_, Some(u)) => {
                    let ok = u
                        .parse::<http::Uri>()
                        .ok()
                        .filter(|uri| matches!(uri.scheme_str(), Some("http" | "https")))
                        .filter(|uri| uri.host().is_some());
                    if ok.is_none() {
                        return Err(invalid(&at.key("jwks_url"), "must be an http or https URL"));
                    }
                    KeySourceSpec::JwksUrl(u.clone())
                }
                _ => return Err(invalid(&at, "no key source")),
            }
        };
        let max_lifetime = match &p.max_lifetime {
            None => None,
            Some(_) => Some(duration(
                &at.key("max_lifetime"),
                &p.max_lifetime,
                Duration::ZERO,
            )?),
        };
        let jwks_min_refresh = duration(
            &at.key("jwks_min_refresh"),
            &p.jwks_min_refresh,
            Duration::from_secs(60),
        )?;
        if jwks_min_refresh < Duration::from_secs(1) {
            return Err(invalid(&at.key("jwks_min_refresh"), "must be at least 1s"));
        }
        let mut forward_claims = Vec::new();
        for (claim, header) in &p.forward_claims {
            let name = http::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                invalid(
                    &at.key("forward_claims"),
                    format!("{header:?} is not a header name"),
                )
            })?;
            if is_reserved_header(&name) {
                return Err(invalid(
                    &at.key("forward_claims"),
                    format!("{header:?} is a header the proxy manages; choose another name"),
                ));
            }
            forward_claims.push((claim.clone(), name));
        }
        providers.push(JwtProviderSpec {
            name: p.name.clone(),
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            algorithms,
            keys,
            subject_claim: p.subject_claim.clone().unwrap_or_else(|| "sub".into()),
            tenant_claim: p.tenant_claim.clone(),
            max_lifetime,
            typ: p.typ.clone(),
            required_claims: p.required_claims.clone(),
            forward_claims,
            jwks_min_refresh,
        });
    }
    let header = match &raw.header {
        None => None,
        Some(h) => {
            let at = at.key("header");
            let parse = |key: &str, name: &str| {
                let h = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| invalid(&at.key(key), format!("{name:?} is not a header name")))?;
                if is_reserved_header(&h)
                    || providers
                        .iter()
                        .any(|p| p.forward_claims.iter().any(|(_, f)| *f == h))
                {
                    return Err(invalid(
                        &at.key(key),
                        format!("{name:?} is a header the proxy manages or forwards claims in; choose another name"),
                    ));
                }
                Ok(h)
            };
            let name = parse("name", &h.name)?;
            let tenant = h
                .tenant
                .as_deref()
                .map(|t| parse("tenant", t))
                .transpose()?;
            if tenant.as_ref() == Some(&name) {
                return Err(invalid(&at.key("tenant"), "must differ from `name`"));
            }
            Some(crate::identity::HeaderIdentitySpec { name, tenant })
        }
    };
    let mtls = match &raw.mtls {
        None => None,
        Some(m) => {
            let at = at.key("mtls");
            if m.ca.is_empty() {
                return Err(invalid(&at.key("ca"), "name the client CA file"));
            }
            if m.crls.iter().any(String::is_empty) {
                return Err(invalid(&at.key("crls"), "a CRL path is empty"));
            }
            Some(crate::mtls::MtlsSpec {
                ca: resolve(base, &m.ca),
                crls: m.crls.iter().map(|c| resolve(base, c)).collect(),
                subject: word(&at.key("subject"), &m.subject, "")?,
                tenant: m
                    .tenant
                    .as_ref()
                    .map(|t| word(&at.key("tenant"), t, ""))
                    .transpose()?,
                required: m.required,
            })
        }
    };
    Ok(IdentitySpec {
        providers,
        clock_skew,
        header,
        mtls,
        // Filled in from the routes' `read_any_subject` once they are compiled.
        role_claims: Vec::new(),
    })
}

fn is_reserved_header(h: &http::HeaderName) -> bool {
    use http::header::*;
    [
        HOST,
        CONTENT_LENGTH,
        CONTENT_TYPE,
        CONTENT_ENCODING,
        TRANSFER_ENCODING,
        CONNECTION,
        AUTHORIZATION,
        COOKIE,
        UPGRADE,
        TE,
    ]
    .contains(h)
        || h.as_str().starts_with("x-forwarded-")
        || h.as_str() == "forwarded"
        || h.as_str() == "x-request-id"
}
