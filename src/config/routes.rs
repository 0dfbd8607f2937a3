//! `routes`: each route's match, upstream, limits, headers and field rules
//! compiled into a `routes::Route`; then what the routes do to each other
//! (shadowing, fall-through warnings) and the buffer budget they need.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use http::Method;

use super::limits::{check_buffers, Limits};
use super::locate::At;
use super::rate_limit::{self, GlobalRateLimit};
use super::raw::{
    ParamWord, RawConfig, RawDecrypt, RawFieldRule, RawMatch, RawParam, RawPathParam, RawRoute,
    Refuse, Word,
};
use super::Upstream;
use super::{duration, headers, invalid, invalid_shown, shadowing, shape, size, word, Invalid};
use crate::crypto::index::{valid_bits, MAX_INDEX_BITS, MIN_INDEX_BITS};
use crate::crypto::KeyringSpec;
use crate::routes::template::{PathParamAction, PathTemplate};
use crate::routes::{PathMatch, Route};
use crate::transform::index::{IndexRule, IndexSpec};
use crate::transform::pairs::{PairsSpec, ParamAction, ParamRule};
use crate::transform::{
    DecryptSelection, FieldPath, FieldRule, OnDecryptFailure, OpenSpec, SealSpec,
};

pub(super) struct Routes {
    pub routes: Vec<Route>,
    pub warnings: Vec<String>,
}

pub(super) fn compile(
    raw: &RawConfig,
    upstreams: &[Upstream],
    rate_limit: &GlobalRateLimit,
    limits: &Limits,
    keys: Option<&KeyringSpec>,
    base: &Path,
) -> Result<Routes, Invalid> {
    let registry = index_registry(raw, keys)?;
    let mut routes = Vec::new();
    let mut warnings = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let at = At::top("routes").item(i, &r.name);
        if r.name.is_empty() || !names.insert(r.name.clone()) {
            return Err(invalid_shown(
                at.shown(),
                "route names must be unique and non-empty",
                Some(&at.key("name")),
            ));
        }
        let (route, rule_warnings) = route(
            &at, r, raw, upstreams, rate_limit, limits, keys, base, &registry,
        )?;
        warnings.extend(rule_warnings);
        routes.push(route);
    }
    if routes.is_empty() {
        return Err(invalid(&At::top("routes"), "at least one route is needed"));
    }
    check_buffers(limits, &routes)?;
    let mut all = method_fall_through(&routes);
    all.extend(shadowing::check(&routes, &raw.routes, upstreams)?);
    all.extend(host_fall_through(&routes));
    all.extend(case_fall_through(&routes));
    all.extend(warnings);
    Ok(Routes {
        routes: with_named_contexts(routes),
        warnings: all,
    })
}

#[allow(clippy::too_many_arguments)]
fn route(
    at: &At,
    r: &RawRoute,
    raw: &RawConfig,
    upstreams: &[Upstream],
    rate_limit: &GlobalRateLimit,
    limits: &Limits,
    keys: Option<&KeyringSpec>,
    base: &Path,
    registry: &[(IndexSpec, At)],
) -> Result<(Route, Vec<String>), Invalid> {
    let upstream = upstreams
        .iter()
        .position(|u| u.name == r.upstream)
        .ok_or_else(|| {
            invalid(
                &at.key("upstream"),
                format!("{:?} is not defined under upstreams", r.upstream),
            )
        })?;
    let m = &r.matcher;
    let (path, methods, template) = matcher(&at.key("match"), m)?;
    let path_params = path_params(at, r, template.as_ref(), keys, registry)?;
    let global = raw.rate_limit.as_ref();
    let limit = rate_limit::route(
        &at.key("rate_limit"),
        r.rate_limit.as_ref(),
        global,
        rate_limit,
    )?;
    let headers = headers::compile(&at.key("headers"), &raw.headers, r.headers.as_ref())?;
    let max_body = size(&at.key("max_body"), &r.max_body, limits.max_body)?;

    let (mut seal, open, warnings) = rules(at, r, limits, keys, max_body, base)?;
    let indexes = index_rules(at, r, registry)?;
    match seal.as_mut() {
        Some(s) => {
            s.indexes = crate::transform::index::IndexRules::new(indexes)
                .map_err(|m| invalid(&at.key("index"), m))?
        }
        None if !indexes.is_empty() => {
            return Err(invalid(
                &at.key("index"),
                "needs encrypt rules on the route (an indexed field is sealed too)",
            ))
        }
        None => {}
    }
    let query = query(at, r, seal.as_ref(), keys, registry)?;
    let mut drop_in_response = Vec::new();
    for (j, x) in r.index.iter().enumerate() {
        if x.drop_in_response == Some(true) {
            if open.is_none() {
                return Err(invalid(
                    &at.key("index").index(j).key("drop_in_response"),
                    "needs decrypt rules on the route (only their answers are read)",
                ));
            }
            drop_in_response.extend(into_name(&x.into).map(str::to_owned));
        }
    }
    let form = form(at, r, seal.as_ref(), registry)?;
    if form.is_some() && keys.is_none() {
        return Err(invalid(&at.key("form"), "needs a `keys` section"));
    }
    let auth = match &r.auth {
        None => crate::identity::AuthMode::None,
        Some(w) => super::word(&at.key("auth"), w, "")?,
    };
    let key_scope = match &r.key_scope {
        None => crate::routes::KeyScope::Deployment,
        Some(w) => super::word(&at.key("key_scope"), w, "")?,
    };
    let on_erased_write = match &r.on_erased_write {
        None => crate::routes::OnErasedWrite::Refuse,
        Some(w) => super::word(&at.key("on_erased_write"), w, "")?,
    };
    // Query and form pairs are sealed, and blind indexes keyed, under
    // the deployment's ring key's bytes (`fs1`, HKDF sub-keys).
    let deployment_keyed = r.form.is_some()
        || !r.index.is_empty()
        || r.query.as_ref().is_some_and(|q| {
            q.values().any(|p| {
                matches!(
                    p,
                    RawParam::Keyword(Word::Known(ParamWord::Seal)) | RawParam::Index(_)
                )
            })
        })
        || r.path_params
            .as_ref()
            .is_some_and(|p| p.values().any(|x| matches!(x, RawPathParam::Index(_))));
    let token_active = keys.is_some_and(|k| {
        k.keys
            .iter()
            .any(|x| x.id == k.active && !x.source.has_bytes())
    });
    if key_scope != crate::routes::KeyScope::Deployment {
        if auth != crate::identity::AuthMode::Required {
            return Err(invalid(
                &at.key("key_scope"),
                "a tenant or subject scope needs `auth: required` (the key belongs to the token's subject)",
            ));
        }
        if raw.key_store.is_none() {
            return Err(invalid(
                &at.key("key_scope"),
                "a tenant or subject scope needs a `key_store` section",
            ));
        }
        if seal.is_none() && open.is_none() {
            return Err(invalid(
                &at.key("key_scope"),
                "needs encrypt or decrypt rules on the route",
            ));
        }
    }
    let index_scope = index_scope(at, r, key_scope)?;
    // A blind index keyed by the deployment (on any route) needs the ring
    // key's bytes; so do pairs sealed on a deployment-scoped route.
    let deployment_indexed = !r.index.is_empty()
        || r.query
            .as_ref()
            .is_some_and(|q| q.values().any(|p| matches!(p, RawParam::Index(_))))
        || r.path_params
            .as_ref()
            .is_some_and(|p| p.values().any(|x| matches!(x, RawPathParam::Index(_))));
    if token_active
        && ((deployment_keyed && key_scope == crate::routes::KeyScope::Deployment)
            || (deployment_indexed && index_scope == crate::routes::KeyScope::Deployment))
    {
        return Err(invalid(
            &at.key("key_scope"),
            "the active key is a pkcs11 key: blind indexes keyed by the deployment, and on a deployment-scoped route `form:` and `query: {name: seal}`, are sealed or keyed with a ring key's bytes, which a token key does not give (not available yet with a token key active)",
        ));
    }
    let read_any_subject = read_any_subject(at, r, raw, key_scope, open.is_some())?;
    let route = Route {
        name: r.name.clone(),
        host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
        path,
        methods,
        // A route that seals or opens fields owns every case spelling of
        // its path by default: Express, ASP.NET Core and IIS route
        // `/API/Users` to the `/api/users` handler, and a narrower match
        // would send that body to a later route in plaintext.
        case_insensitive: m
            .case_insensitive
            .unwrap_or(seal.is_some() || open.is_some()),
        upstream,
        rate_limit: limit,
        own_rate_limit: r
            .rate_limit
            .as_ref()
            .is_some_and(|rl| rl.enabled != Some(false)),
        headers,
        max_body,
        seal,
        open,
        auth,
        // Resolved against `identity` once both are compiled.
        auth_sources: Vec::new(),
        key_scope,
        index_scope,
        on_erased_write,
        read_any_subject,
        query,
        form,
        template,
        path_params,
        drop_in_response,
    };
    Ok((route, warnings))
}

/// `index_scope`: whose key computes the route's blind indexes. Only the
/// combinations whose meaning is written down (docs/blind-index.md) load.
fn index_scope(
    at: &At,
    r: &RawRoute,
    key_scope: crate::routes::KeyScope,
) -> Result<crate::routes::KeyScope, Invalid> {
    use crate::routes::KeyScope;
    let indexes = !r.index.is_empty()
        || r.form.as_ref().is_some_and(|f| !f.index.is_empty())
        || r.query
            .as_ref()
            .is_some_and(|q| q.values().any(|p| matches!(p, RawParam::Index(_))))
        || r.path_params
            .as_ref()
            .is_some_and(|p| p.values().any(|x| matches!(x, RawPathParam::Index(_))));
    let at = at.key("index_scope");
    let chosen = match &r.index_scope {
        None => None,
        Some(w) => Some(word::<KeyScope>(&at, w, "")?),
    };
    if chosen.is_some() && !indexes {
        return Err(invalid(&at, "the route writes no blind index"));
    }
    match (key_scope, chosen) {
        (KeyScope::Subject, None) if indexes => Err(invalid(
            &at,
            "a subject route's blind indexes need an explicit `index_scope`: `subject` (a search finds only the searching subject's own records) or `deployment` (any record is found, and equal values are equal across all subjects)",
        )),
        (ks, None) => Ok(ks),
        (_, Some(KeyScope::Deployment)) => Ok(KeyScope::Deployment),
        (KeyScope::Deployment, Some(_)) => Err(invalid(
            &at,
            "a deployment route has no tenant or subject key: its indexes are keyed by the deployment",
        )),
        (KeyScope::Tenant, Some(KeyScope::Tenant)) => Ok(KeyScope::Tenant),
        (KeyScope::Tenant, Some(_)) => Err(invalid(
            &at,
            "a tenant route holds the tenant's key, not a subject's: `tenant` or `deployment`",
        )),
        (KeyScope::Subject, Some(KeyScope::Subject)) => Ok(KeyScope::Subject),
        (KeyScope::Subject, Some(_)) => Err(invalid(
            &at,
            "not available: a subject route holds the subject's key, not its tenant's (a tenant-wide index beside per-subject keys is not built yet): `subject` or `deployment`",
        )),
    }
}

type Matcher = (PathMatch, Option<Vec<Method>>, Option<PathTemplate>);

/// `match`: the path (exact, prefix, template or any) and the methods.
fn matcher(at: &At, m: &RawMatch) -> Result<Matcher, Invalid> {
    let mut template = None;
    let path = match (&m.path, &m.path_prefix) {
        (Some(_), Some(_)) => return Err(invalid(at, "set either path or path_prefix, not both")),
        (Some(p), None) if PathTemplate::is_template(p) => {
            let t = PathTemplate::parse(p).map_err(|e| invalid(&at.key("path"), e))?;
            let prefix = route_path(&at.key("path"), t.prefix())?;
            template = Some(t);
            PathMatch::Prefix(prefix)
        }
        (Some(p), None) => PathMatch::Exact(route_path(&at.key("path"), p)?),
        (None, Some(p)) => PathMatch::Prefix(route_path(&at.key("path_prefix"), p)?),
        (None, None) => PathMatch::Any,
    };
    let methods = m
        .methods
        .as_ref()
        .map(|ms| {
            ms.iter()
                .enumerate()
                .map(|(j, s)| {
                    Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|_| {
                        invalid_shown(
                            at.key("methods").shown(),
                            format!("{s:?} is not an HTTP method"),
                            Some(&at.key("methods").index(j)),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok((path, methods, template))
}

/// `path_params`: per template parameter, what its segment becomes.
fn path_params(
    at: &At,
    r: &RawRoute,
    template: Option<&PathTemplate>,
    keys: Option<&KeyringSpec>,
    registry: &[(IndexSpec, At)],
) -> Result<Vec<Option<PathParamAction>>, Invalid> {
    let Some(entries) = &r.path_params else {
        return Ok(Vec::new());
    };
    let at = at.key("path_params");
    let Some(t) = template else {
        return Err(invalid(
            &at,
            "needs a `match.path` template with {parameters}",
        ));
    };
    for name in entries.keys() {
        if !t.params().any(|p| p == name) {
            return Err(invalid(
                &at.key(name),
                "is not a {parameter} of the route's path",
            ));
        }
    }
    t.params()
        .map(|p| {
            let Some(e) = entries.get(p) else {
                return Ok(None);
            };
            let at = at.key(p);
            Ok(Some(match e {
                RawPathParam::Keyword(w) => match word(&at, w, "")? {
                    Refuse::Refuse => PathParamAction::Refuse,
                },
                RawPathParam::Index(i) => {
                    if keys.is_none() {
                        return Err(invalid(&at, "blind indexes need a `keys` section"));
                    }
                    PathParamAction::Index(
                        registry
                            .iter()
                            .find(|(s, _)| s.name == i.index)
                            .map(|(s, _)| s.clone())
                            .ok_or_else(|| {
                                invalid(
                                    &at.key("index"),
                                    format!("no `index:` rule of any route writes {:?}", i.index),
                                )
                            })?,
                    )
                }
            }))
        })
        .collect()
}

/// A route's transforms, and the warnings its rules deserve.
type Rules = (Option<SealSpec>, Option<OpenSpec>, Vec<String>);

/// The field rules: what request bodies get sealed (with the look-alike
/// model and schema) and what answers get opened, and the warnings they
/// deserve.
fn rules(
    at: &At,
    r: &RawRoute,
    limits: &Limits,
    keys: Option<&KeyringSpec>,
    max_body: u64,
    base: &Path,
) -> Result<Rules, Invalid> {
    let encrypt = r
        .encrypt
        .iter()
        .enumerate()
        .map(|(j, f)| field_rule(&at.key("encrypt").index(j), f))
        .collect::<Result<Vec<_>, _>>()?;
    let checked = r
        .encrypt
        .iter()
        .enumerate()
        .map(|(j, f)| shape::rule_checked(&at.key("encrypt").index(j), f))
        .collect::<Result<Vec<_>, _>>()?;
    let (request_shape, warnings) = shape::compile_route(at, r, &encrypt, &checked, base)?;
    shape::check_sealable(at, r, &encrypt, &request_shape, max_body, limits, keys)?;
    let decrypt = match &r.decrypt {
        None => None,
        Some(RawDecrypt::Keyword(Word::Known(_))) => Some(DecryptSelection::Auto),
        Some(RawDecrypt::Keyword(Word::Unknown(k))) => {
            return Err(invalid(
                &at.key("decrypt"),
                format!("{k:?}: expected `auto` or a list of JSONPaths"),
            ))
        }
        Some(RawDecrypt::Rules(rules)) => Some(DecryptSelection::Paths(
            rules
                .iter()
                .enumerate()
                .map(|(j, f)| {
                    let at = at.key("decrypt").index(j);
                    shape::no_look_alikes(&at, f)?;
                    field_rule(&at, f)
                })
                .collect::<Result<Vec<_>, _>>()?,
        )),
    };
    if (!encrypt.is_empty() || decrypt.is_some()) && keys.is_none() {
        return Err(invalid_shown(
            at.shown(),
            "has encrypt/decrypt rules but there is no `keys` section",
            Some(&at.key("name")),
        ));
    }
    let on_failure = match &r.on_decrypt_failure {
        None => OnDecryptFailure::default(),
        Some(w) => word(&at.key("on_decrypt_failure"), w, "")?,
    };
    let max_age = duration(&at.key("max_age"), &r.max_age, Duration::ZERO)?;
    let seal = (!encrypt.is_empty()).then(|| SealSpec {
        rules: encrypt,
        shape: request_shape,
        named_contexts: Vec::new(),
        max_depth: limits.max_json_depth,
        indexes: crate::transform::index::IndexRules::default(),
    });
    let on_foreign = match &r.on_foreign_subject {
        None => OnDecryptFailure::Error,
        Some(w) => word(&at.key("on_foreign_subject"), w, "")?,
    };
    let on_erased = match &r.on_erased {
        None => crate::transform::OnErased::Error,
        Some(w) => word(&at.key("on_erased"), w, "")?,
    };
    let open = decrypt.map(|selection| OpenSpec {
        selection,
        on_failure,
        max_age: (!max_age.is_zero()).then_some(max_age),
        on_foreign,
        on_erased,
        erased_marker: r.erased_marker.clone().unwrap_or_else(|| "[erased]".into()),
    });
    Ok((seal, open, warnings))
}

/// The route's `query:` section with the guard of its encrypt rules: a
/// route that seals bodies or names parameters judges every query pair.
fn query(
    at: &At,
    r: &RawRoute,
    seal: Option<&SealSpec>,
    keys: Option<&KeyringSpec>,
    registry: &[(IndexSpec, At)],
) -> Result<Option<PairsSpec>, Invalid> {
    let entries = r.query.as_ref();
    if entries.is_none() && seal.is_none() {
        return Ok(None);
    }
    let at = at.key("query");
    let mut params = Vec::new();
    for (name, p) in entries.into_iter().flatten() {
        let at = at.key(name);
        if name.is_empty() || name.len() > 255 {
            return Err(invalid(&at, "a parameter name must be 1 to 255 bytes"));
        }
        let action = match p {
            RawParam::Keyword(w) => match word(&at, w, "")? {
                ParamWord::Seal => ParamAction::Seal,
                ParamWord::Refuse => ParamAction::Refuse,
            },
            RawParam::Index(i) => ParamAction::Index(
                registry
                    .iter()
                    .find(|(s, _)| s.name == i.index)
                    .map(|(s, _)| s.clone())
                    .ok_or_else(|| {
                        invalid(
                            &at.key("index"),
                            format!("no `index:` rule of any route writes {:?}", i.index),
                        )
                    })?,
            ),
        };
        if !matches!(action, ParamAction::Refuse) && keys.is_none() {
            return Err(invalid(&at, "sealing needs a `keys` section"));
        }
        params.push(ParamRule {
            name: name.clone(),
            action,
        });
    }
    let guard = seal.map_or(&[][..], |s| &s.rules);
    PairsSpec::compile(params, guard)
        .map(Some)
        .map_err(|e| invalid(&at, e.to_string()))
}

/// Every index any route's `index:` rules define, by name: one name, one
/// definition (the same normalization, length and key wherever it is
/// written or queried).
fn index_registry(
    raw: &RawConfig,
    keys: Option<&KeyringSpec>,
) -> Result<Vec<(IndexSpec, At)>, Invalid> {
    let mut out: Vec<(IndexSpec, At)> = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let route_at = At::top("routes").item(i, &r.name);
        let body = r.index.iter().enumerate().map(|(j, x)| {
            let at = route_at.key("index").index(j);
            (at, &x.into, &x.normalize, x.bits, &x.key)
        });
        let form = r
            .form
            .iter()
            .flat_map(|f| f.index.iter().enumerate())
            .filter(|(_, x)| x.normalize.is_some() || x.bits.is_some() || x.key.is_some())
            .map(|(j, x)| {
                let at = route_at.key("form").key("index").index(j);
                let normalize = x.normalize.as_ref().unwrap_or(&NO_STEPS);
                (at, &x.into, normalize, x.bits, &x.key)
            });
        for (at, into, normalize_words, bits, key) in body.chain(form) {
            let x = IndexDef {
                into,
                normalize: normalize_words,
                bits,
                key,
            };
            let name = into_name(x.into).ok_or_else(|| {
                invalid(
                    &at.key("into"),
                    "must be a member beside the field, e.g. `$.email_idx` (letters, digits, _ and -)",
                )
            })?;
            let mut normalize = Vec::new();
            for (k, w) in x.normalize.iter().enumerate() {
                normalize.push(word(&at.key("normalize").index(k), w, "")?);
            }
            normalize.sort_unstable();
            normalize.dedup();
            let bits = x.bits.unwrap_or(64);
            if !valid_bits(bits) {
                return Err(invalid(
                    &at.key("bits"),
                    format!(
                        "{bits}: must be {MIN_INDEX_BITS} to {MAX_INDEX_BITS}, a multiple of 8"
                    ),
                ));
            }
            let Some(keys) = keys else {
                return Err(invalid(&at, "blind indexes need a `keys` section"));
            };
            if let Some(k) = x.key {
                if !keys.keys.iter().any(|s| &s.id == k) {
                    return Err(invalid(
                        &at.key("key"),
                        format!("{k:?} is not in the keyring"),
                    ));
                }
            }
            let spec = IndexSpec {
                name: name.to_owned(),
                normalize,
                bits,
                key_id: x.key.clone(),
            };
            match out.iter().find(|(s, _)| s.name == spec.name) {
                Some((s, _)) if *s != spec => {
                    return Err(invalid(
                        &at,
                        format!(
                            "index {:?} is defined again with another normalize, bits or key; one name, one definition",
                            spec.name
                        ),
                    ))
                }
                Some(_) => {}
                None => out.push((spec, at)),
            }
        }
    }
    // Form entries that only name an index use its definition, or define
    // it with the defaults.
    for (i, r) in raw.routes.iter().enumerate() {
        for (j, x) in r.form.iter().flat_map(|f| f.index.iter().enumerate()) {
            let at = At::top("routes")
                .item(i, &r.name)
                .key("form")
                .key("index")
                .index(j);
            let name = into_name(&x.into)
                .ok_or_else(|| invalid(&at.key("into"), "letters, digits, _ and - only"))?;
            if keys.is_none() {
                return Err(invalid(&at, "blind indexes need a `keys` section"));
            }
            if !out.iter().any(|(s, _)| s.name == name) {
                let spec = IndexSpec {
                    name: name.to_owned(),
                    normalize: Vec::new(),
                    bits: 64,
                    key_id: None,
                };
                out.push((spec, at));
            }
        }
    }
    Ok(out)
}

static NO_STEPS: Vec<Word<crate::crypto::index::Normalize>> = Vec::new();

/// The keys of an index definition, in `index:` rules and `form.index`.
struct IndexDef<'a> {
    into: &'a str,
    normalize: &'a [Word<crate::crypto::index::Normalize>],
    bits: Option<u16>,
    key: &'a Option<String>,
}

/// The route's `form:` section: its names sealed or indexed, with the
/// guard of its encrypt rules.
fn form(
    at: &At,
    r: &RawRoute,
    seal: Option<&SealSpec>,
    registry: &[(IndexSpec, At)],
) -> Result<Option<PairsSpec>, Invalid> {
    let Some(f) = &r.form else {
        return Ok(None);
    };
    let at = at.key("form");
    let lookup = |into: &str, at: &At| {
        let name = into_name(into).unwrap_or_default();
        registry
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| invalid(at, "not a valid index name"))
    };
    let mut params: Vec<ParamRule> = Vec::new();
    for (j, name) in f.encrypt.iter().enumerate() {
        if name.is_empty() || name.len() > 255 {
            return Err(invalid(
                &at.key("encrypt").index(j),
                "must be 1 to 255 bytes",
            ));
        }
        let index = f.index.iter().enumerate().find(|(_, x)| &x.field == name);
        let action = match index {
            Some((k, x)) => {
                ParamAction::SealAndIndex(lookup(&x.into, &at.key("index").index(k).key("into"))?)
            }
            None => ParamAction::Seal,
        };
        params.push(ParamRule {
            name: name.clone(),
            action,
        });
    }
    for (k, x) in f.index.iter().enumerate() {
        let spec = lookup(&x.into, &at.key("index").index(k).key("into"))?;
        if !f.encrypt.contains(&x.field) {
            params.push(ParamRule {
                name: x.field.clone(),
                action: ParamAction::Index(spec.clone()),
            });
        }
        // A client's own value for the index fieldseal writes goes.
        if !params.iter().any(|p| p.name == spec.name) {
            params.push(ParamRule {
                name: spec.name.clone(),
                action: ParamAction::Drop,
            });
        }
    }
    let guard = seal.map_or(&[][..], |s| &s.rules);
    PairsSpec::compile(params, guard)
        .map(Some)
        .map_err(|e| invalid(&at, e.to_string()))
}

/// The member name `into` writes: the last segment of `$.a.b_idx` or
/// `$['a']['b_idx']`, letters, digits, `_` and `-` only.
fn into_name(into: &str) -> Option<&str> {
    let last = if !into.starts_with('$') {
        into
    } else if let Some(head) = into.strip_suffix("']").or_else(|| into.strip_suffix("\"]")) {
        head.rsplit_once(['\'', '"'])?.1
    } else {
        into.rsplit_once('.')?.1
    };
    (!last.is_empty()
        && last
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then_some(last)
}

/// The route's `index:` rules: each field with its index, the index
/// member beside the field.
fn index_rules(
    at: &At,
    r: &RawRoute,
    registry: &[(IndexSpec, At)],
) -> Result<Vec<IndexRule>, Invalid> {
    let mut out = Vec::new();
    for (j, x) in r.index.iter().enumerate() {
        let at = at.key("index").index(j);
        let field = FieldPath::parse(&x.field)
            .map_err(|e| invalid(&at.key("field"), format!("invalid JSONPath: {}", e.message)))?;
        let into = FieldPath::parse(&x.into)
            .map_err(|e| invalid(&at.key("into"), format!("invalid JSONPath: {}", e.message)))?;
        let (fs, is) = (field.segments(), into.segments());
        let beside = fs.len() == is.len()
            && !fs.is_empty()
            && fs[..fs.len() - 1] == is[..is.len() - 1]
            && is.last().is_some_and(|s| s.single_name().is_some());
        if !beside {
            return Err(invalid(
                &at.key("into"),
                "must be a member beside the field (`$.email` → `$.email_idx`)",
            ));
        }
        let name = into_name(&x.into).unwrap_or_default();
        let spec = registry
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| invalid(&at.key("into"), "not a valid index name"))?;
        out.push(IndexRule::new(field, spec).map_err(|m| invalid(&at.key("field"), m))?);
    }
    Ok(out)
}

fn route_path(at: &At, p: &str) -> Result<String, Invalid> {
    if !p.starts_with('/') {
        return Err(invalid(at, format!("{p:?} must start with /")));
    }
    // Routes are matched against the canonical request path, so a route
    // written in a non-canonical spelling could never match.
    match crate::routes::canonical_path(p) {
        Ok(c) if c.path == p || c.path.trim_end_matches('/') == p.trim_end_matches('/') => {
            Ok(p.to_string())
        }
        _ => Err(invalid(
            at,
            format!("{p:?} is not in canonical form (no //, dot segments, %-escapes or ;params)"),
        )),
    }
}

fn field_rule(at: &At, f: &RawFieldRule) -> Result<FieldRule, Invalid> {
    let (path, context) = match f {
        RawFieldRule::Path(p) => (p.as_str(), None),
        RawFieldRule::Detailed(d) => (d.path.as_str(), d.context.clone()),
    };
    let compiled = FieldPath::parse(path)
        .map_err(|e| invalid(at, format!("invalid JSONPath {path:?}: {}", e.message)))?;
    if let Some(c) = &context {
        if c.is_empty() || c.len() > 255 {
            return Err(invalid(&at.key("context"), "must be 1 to 255 bytes"));
        }
    }
    Ok(FieldRule {
        path: compiled,
        context,
    })
}

/// Gives every sealing route the list of contexts that any rule names.
fn with_named_contexts(mut routes: Vec<Route>) -> Vec<Route> {
    let mut named: Vec<String> = Vec::new();
    for r in &routes {
        let decrypt = r.open.as_ref().map_or(&[][..], OpenSpec::rules);
        for c in r
            .encrypt_rules()
            .iter()
            .chain(decrypt)
            .filter_map(|f| f.context.as_ref())
        {
            if !named.contains(c) {
                named.push(c.clone());
            }
        }
    }
    for seal in routes.iter_mut().filter_map(|r| r.seal.as_mut()) {
        seal.named_contexts = named.clone();
    }
    routes
}

/// An encrypting route limited to some methods lets the other methods on its
/// paths fall through to a later route, which forwards them in plaintext.
fn method_fall_through(routes: &[Route]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let Some(methods) = &r.methods else { continue };
        if !r.transforms_request() {
            continue;
        }
        for later in &routes[i + 1..] {
            let host_overlaps = later.host.is_none() || later.host == r.host;
            let other_methods = later
                .methods
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| !methods.contains(m)));
            if host_overlaps
                && other_methods
                && path_covers(&later.path, &r.path)
                && !later.transforms_request()
            {
                let listed: Vec<&str> = methods.iter().map(Method::as_str).collect();
                out.push(format!(
                    "route {:?} encrypts only {} requests; other methods on its paths fall through to route {:?}, which forwards their bodies unencrypted",
                    r.name,
                    listed.join("/"),
                    later.name
                ));
                break;
            }
        }
    }
    out
}

/// A route that seals or opens fields but says `case_insensitive: false`
/// lets other case spellings of its paths fall through to a later route
/// that seals nothing (a backend that ignores path case then stores the
/// body in plaintext). A warning: the operator chose it, for a backend
/// that routes case-sensitively.
fn case_fall_through(routes: &[Route]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        if r.case_insensitive || !(r.transforms_request() || r.transforms_response()) {
            continue;
        }
        let base = match &r.path {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p.as_str(),
            PathMatch::Any => continue,
        };
        let method = r
            .methods
            .as_ref()
            .and_then(|ms| ms.first().cloned())
            .unwrap_or(Method::POST);
        let host = r.host.as_deref();
        let probes = [
            base.to_ascii_uppercase(),
            base.to_ascii_lowercase(),
            alternating_case(base),
        ];
        let behind = probes
            .iter()
            .filter(|p| !r.matches(host, p, &method))
            .find_map(|p| {
                routes[i + 1..]
                    .iter()
                    .find(|l| l.matches(host, p, &method) && !l.transforms_request())
            });
        if let Some(later) = behind {
            out.push(format!(
                "route {:?} matches its path case-sensitively (case_insensitive: false) although it encrypts or decrypts fields; other case spellings of its paths go to route {:?}, which forwards their bodies unencrypted (remove case_insensitive: false unless the backend routes paths case-sensitively)",
                r.name, later.name
            ));
        }
    }
    out
}

/// `/api/users` as `/ApI/UsErS`: a spelling neither all upper nor all lower.
fn alternating_case(p: &str) -> String {
    p.chars()
        .enumerate()
        .map(|(k, c)| {
            if k % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Host-less requests can't skip a host-bound route (`routes::select`),
/// but a request for the same path with any other Host still goes past it.
/// When a later route without a host takes those paths and seals nothing, a
/// backend that ignores Host (most single-site legacy services) stores what
/// the bound route would have sealed, in plaintext.
fn host_fall_through(routes: &[Route]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let Some(host) = &r.host else { continue };
        if !r.transforms_request() {
            continue;
        }
        let behind = routes[i + 1..].iter().find(|later| {
            later.host.is_none()
                && !later.transforms_request()
                && path_covers(&later.path, &r.path)
                && later.methods.as_ref().is_none_or(|ms| {
                    r.methods
                        .as_ref()
                        .is_none_or(|rs| rs.iter().any(|m| ms.contains(m)))
                })
        });
        if let Some(later) = behind {
            out.push(format!(
                "route {:?} encrypts only for host {host:?}; its paths with any other Host fall through to route {:?}, which forwards their bodies unencrypted (bind {:?} to hosts, or give it the same encrypt rules, unless its backend routes by Host)",
                r.name, later.name, later.name
            ));
        }
    }
    out
}

/// True when every path `inner` matches is also matched by `outer`.
fn path_covers(outer: &PathMatch, inner: &PathMatch) -> bool {
    match (outer, inner) {
        (PathMatch::Any, _) => true,
        (PathMatch::Prefix(p), PathMatch::Prefix(q) | PathMatch::Exact(q)) => {
            let p = p.trim_end_matches('/');
            q.starts_with(p) && (q.len() == p.len() || q[p.len()..].starts_with('/'))
        }
        (PathMatch::Exact(p), PathMatch::Exact(q)) => p == q,
        _ => false,
    }
}

/// `read_any_subject`: only where envelopes belong to subjects (a tenant or
/// subject scope), where answers are opened, and where every read can be
/// audited.
fn read_any_subject(
    at: &At,
    r: &RawRoute,
    raw: &RawConfig,
    key_scope: crate::routes::KeyScope,
    opens: bool,
) -> Result<Vec<crate::identity::RoleRule>, Invalid> {
    if r.read_any_subject.is_empty() {
        return Ok(Vec::new());
    }
    let at = at.key("read_any_subject");
    if key_scope == crate::routes::KeyScope::Deployment {
        return Err(invalid(
            &at,
            "needs `key_scope: tenant` or `subject` (on a deployment-scoped route every reader already opens every envelope)",
        ));
    }
    if !opens {
        return Err(invalid(&at, "needs decrypt rules on the route"));
    }
    if raw.audit.is_none() {
        return Err(invalid(
            &at,
            "needs an `audit` section: every read of another subject's data is audited",
        ));
    }
    let providers: Vec<&str> = raw
        .identity
        .iter()
        .flat_map(|i| i.jwt.iter().map(|p| p.name.as_str()))
        .collect();
    let mut out = Vec::new();
    for (i, rule) in r.read_any_subject.iter().enumerate() {
        let at = at.index(i);
        if rule.claim.is_empty() {
            return Err(invalid(&at.key("claim"), "name a claim"));
        }
        if rule.values.is_empty() || rule.values.iter().any(String::is_empty) {
            return Err(invalid(
                &at.key("values"),
                "name at least one value, none empty",
            ));
        }
        if let Some(p) = &rule.provider {
            if !providers.contains(&p.as_str()) {
                return Err(invalid(
                    &at.key("provider"),
                    format!("{p:?} is not the name of an identity.jwt provider"),
                ));
            }
        }
        out.push(crate::identity::RoleRule {
            claim: rule.claim.clone(),
            values: rule.values.clone(),
            provider: rule.provider.clone(),
        });
    }
    Ok(out)
}
