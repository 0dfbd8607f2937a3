//! The data keys of one request on a tenant- or subject-scoped route: the
//! verified subject (from `admit::identify`) → its opaque reference → its
//! keys, through the key service's cache. The request-body stage asks for
//! them with `write` (the first write creates the key), the response-body
//! stage without; both find them in the request's `Exchange`.

use std::sync::Arc;

use super::Exchange;
use crate::crypto::{RefScope, SubjectKeys};
use crate::error::{ClientError, LocalError, ProxyError};
use crate::identity::AuthError;
use crate::keystore::{DeploymentKeys, Resolved};
use crate::routes::{KeyScope, OnErasedWrite};
use crate::state::{RouteRuntime, Runtime};

/// None on a deployment-scoped route. Otherwise the request's keys, or a
/// refusal: 410 for a write of an erased subject (unless the route makes a
/// fresh key), 503 when the store can't give an uncached key (nothing is
/// forwarded then).
pub(super) async fn for_request(
    rt: &Runtime,
    route: &RouteRuntime,
    ex: &mut Exchange,
    write: bool,
) -> Result<Option<Arc<SubjectKeys>>, ProxyError> {
    let scope = match route.route.key_scope {
        KeyScope::Deployment => return deployment_keys(rt, route, ex).await,
        KeyScope::Tenant => RefScope::Tenant,
        KeyScope::Subject => RefScope::Subject,
    };
    if let Some((done, keys)) = &ex.subject_keys {
        if *done || !write {
            return Ok(Some(Arc::clone(keys)));
        }
    }
    let internal = |what| ProxyError::from(LocalError::Internal(what));
    let principal = ex
        .principal
        .as_ref()
        .ok_or_else(|| internal("a subject-scoped route without a verified subject"))?;
    if scope == RefScope::Tenant && principal.tenant.is_none() {
        return Err(ProxyError::from(ClientError::Unauthorized(
            AuthError::Invalid("the tenant claim is missing"),
        )));
    }
    let service = rt
        .key_service
        .as_ref()
        .ok_or_else(|| internal("no key store"))?;
    let reference = service
        .shared_reference(scope, principal.tenant.as_deref(), &principal.subject)
        .ok_or_else(|| internal("subject reference"))?;
    let revive = route.route.on_erased_write == OnErasedWrite::NewKey;
    let resolved = service
        .resolve(&reference, write, revive)
        .await
        .map_err(|e| {
            tracing::error!(request_id = ex.id(), route = %route.route.name, error = %e, "subject keys unavailable");
            ProxyError::from(LocalError::KeyStoreUnavailable)
        })?;
    // Warm: the cache's own set, shared (nothing copied or allocated).
    let keys = match resolved {
        Resolved::Keys(k) => k,
        Resolved::Erased if write => {
            return Err(ProxyError::from(ClientError::ErasedSubjectWrite));
        }
        Resolved::Erased => {
            let mut keys = SubjectKeys::default();
            keys.mark_erased(&reference);
            Arc::new(keys)
        }
        Resolved::Absent => Arc::new(SubjectKeys::default()),
    };
    ex.subject_keys = Some((write, Arc::clone(&keys)));
    Ok(Some(keys))
}

/// On a deployment-scoped route: the deployment data key, when the store
/// has one (`DeploymentKeys::Open | Seal`); None otherwise (`fs1` under
/// the ring only). With a token key active it is what the route seals
/// under, so a token that is down while it is not cached is a 503, with
/// nothing forwarded.
async fn deployment_keys(
    rt: &Runtime,
    route: &RouteRuntime,
    ex: &mut Exchange,
) -> Result<Option<Arc<SubjectKeys>>, ProxyError> {
    let Some(service) = rt.key_service.as_ref() else {
        return Ok(None);
    };
    if service.deployment() == DeploymentKeys::Unused {
        return Ok(None);
    }
    if let Some((_, keys)) = &ex.subject_keys {
        return Ok(Some(Arc::clone(keys)));
    }
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::error!(request_id = ex.id(), route = %route.route.name, error = %e, "deployment data key unavailable");
        ProxyError::from(LocalError::KeyStoreUnavailable)
    };
    let resolved = service
        .deployment_keys()
        .await
        .map_err(|e| unavailable(&e))?;
    let keys = match resolved {
        Resolved::Keys(k) => k,
        _ => return Err(unavailable(&"the key store has no deployment data key")),
    };
    ex.subject_keys = Some((true, Arc::clone(&keys)));
    Ok(Some(keys))
}

/// Most other subjects whose keys one answer is opened with for a
/// `read_any_subject` reader; envelopes of further subjects in the same
/// answer follow `on_foreign_subject` (a listing that large is not one
/// person's case, and each subject costs a key lookup).
pub const MAX_ROLE_SUBJECTS: usize = 100;

/// A reader's keys for one answer: its own (`own`), plus, when the caller
/// holds a role of the route's `read_any_subject`, the keys of every other
/// subject whose `fs2` envelope the answer holds (looked up, never
/// created). Returns the keys and, for a role reader, its own reference and
/// the references looked up; the caller audits those that actually opened.
pub(super) async fn for_role_reader(
    rt: &Runtime,
    route: &RouteRuntime,
    ex: &Exchange,
    own: Option<Arc<SubjectKeys>>,
    body: &[u8],
) -> Result<(Option<Arc<SubjectKeys>>, Option<(String, Vec<String>)>), ProxyError> {
    let rules = &route.route.read_any_subject;
    let scope = match route.route.key_scope {
        KeyScope::Deployment => return Ok((own, None)),
        KeyScope::Tenant => RefScope::Tenant,
        KeyScope::Subject => RefScope::Subject,
    };
    // Only a verified token's payload grants a role: `ex.principal` is set
    // by `admit::identify` alone.
    let Some(principal) = ex.principal.as_ref().filter(|p| p.holds_any(rules)) else {
        return Ok((own, None));
    };
    let internal = |what| ProxyError::from(LocalError::Internal(what));
    let service = rt
        .key_service
        .as_ref()
        .ok_or_else(|| internal("no key store"))?;
    let reader = service
        .reference(scope, principal.tenant.as_deref(), &principal.subject)
        .ok_or_else(|| internal("subject reference"))?;
    let mut keys = own.as_deref().cloned().unwrap_or_default();
    let mut looked_up: Vec<String> = Vec::new();
    for reference in fs2_references(body) {
        if reference == reader || looked_up.iter().any(|r| r == reference) || keys.knows(reference)
        {
            continue;
        }
        if looked_up.len() == MAX_ROLE_SUBJECTS {
            tracing::warn!(request_id = ex.id(), route = %route.route.name, "an answer holds more subjects than a role reader opens; the rest follow on_foreign_subject");
            break;
        }
        let resolved = service
            .resolve(reference, false, false)
            .await
            .map_err(|e| {
                tracing::error!(request_id = ex.id(), route = %route.route.name, error = %e, "subject keys unavailable");
                ProxyError::from(LocalError::KeyStoreUnavailable)
            })?;
        match resolved {
            Resolved::Keys(k) => k.keys().iter().for_each(|key| keys.push(Arc::clone(key))),
            Resolved::Erased => keys.mark_erased(reference),
            Resolved::Absent => {}
        }
        looked_up.push(reference.to_owned());
    }
    Ok((Some(Arc::new(keys)), Some((reader, looked_up))))
}

/// The references of the `fs2` envelopes in `body`, in order (repeats
/// included). A scan of the raw bytes: an envelope hidden behind JSON
/// escapes is not found here, and so stays foreign when opened.
fn fs2_references(body: &[u8]) -> impl Iterator<Item = &str> {
    const PREFIX: &[u8] = b"fs2:";
    let mut at = 0;
    std::iter::from_fn(move || {
        while let Some(i) = body[at..].windows(PREFIX.len()).position(|w| w == PREFIX) {
            let start = at + i;
            let end = body[start + PREFIX.len()..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':')))
                .map_or(body.len(), |n| start + PREFIX.len() + n);
            at = end.max(start + 1);
            let Ok(candidate) = std::str::from_utf8(&body[start..end]) else {
                continue;
            };
            if let Some((reference, _)) = crate::crypto::envelope_subject(candidate) {
                return Some(reference);
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::fs2_references;

    #[test]
    fn references_are_found_in_any_json_place_and_junk_is_skipped() {
        let a = "fs2:R_D7ROWZiEw_P5HytO8CZQ:1:cwAAAABlU_EAAAECAwQFBgcICQoLOJ5sTqUIeK1ZbDWH6nY2fggMvLQ4Rbz9MC4t";
        let b = "fs2:OVt_jObF8vjTZxaMB34g0g:4294967295:egAAAAAAAAAAAAAAAAAAAAAAAAAAZnosqE7NYsgMCsIoH9paMYgNAfY";
        let body =
            format!(r#"{{"x":"fs2:","y":"fs2:bad","a":"{a}","list":["{b}","{a}"],"z":"fs2:{{"}}"#);
        let refs: Vec<&str> = fs2_references(body.as_bytes()).collect();
        assert_eq!(
            refs,
            [
                "R_D7ROWZiEw_P5HytO8CZQ",
                "OVt_jObF8vjTZxaMB34g0g",
                "R_D7ROWZiEw_P5HytO8CZQ"
            ]
        );
        assert_eq!(fs2_references(b"fs2:").count(), 0);
        assert_eq!(fs2_references(b"").count(), 0);
    }
}
