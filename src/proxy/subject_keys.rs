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
        .reference(scope, principal.tenant.as_deref(), &principal.subject)
        .ok_or_else(|| internal("subject reference"))?;
    let revive = route.route.on_erased_write == OnErasedWrite::NewKey;
    let resolved = service
        .resolve(&reference, write, revive)
        .await
        .map_err(|e| {
            tracing::error!(request_id = ex.id(), route = %route.route.name, error = %e, "subject keys unavailable");
            ProxyError::from(LocalError::KeyStoreUnavailable)
        })?;
    let mut keys = SubjectKeys::default();
    match resolved {
        Resolved::Keys(k) => {
            for key in k {
                keys.push(key);
            }
        }
        Resolved::Erased if write => {
            return Err(ProxyError::from(ClientError::ErasedSubjectWrite));
        }
        Resolved::Erased => keys.mark_erased(&reference),
        Resolved::Absent => {}
    }
    let keys = Arc::new(keys);
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
    let mut keys = SubjectKeys::default();
    match resolved {
        Resolved::Keys(k) => {
            for key in k {
                keys.push(key);
            }
        }
        _ => return Err(unavailable(&"the key store has no deployment data key")),
    }
    let keys = Arc::new(keys);
    ex.subject_keys = Some((true, Arc::clone(&keys)));
    Ok(Some(keys))
}
