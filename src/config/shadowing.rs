//! What the config does with the routes' shadowing analysis
//! (`routes::shadow`): an earlier route that takes requests a later
//! encrypting or decrypting route was written for refuses the config, unless
//! the earlier route acknowledges it with `shadows_ok: [later-name]`; then
//! it stays a warning in `check` and the start log. A later route without
//! rules that can never match is a warning.

use super::locate::At;
use super::raw::RawRoute;
use super::{invalid_shown, Invalid, Upstream};
use crate::routes::{shadows, Route, Shadow};
use crate::transform::{DecryptSelection, FieldRule};

/// Warnings, or the first unacknowledged shadow as an error (naming how
/// many more there are).
pub(super) fn check(
    routes: &[Route],
    raw: &[RawRoute],
    upstreams: &[Upstream],
) -> Result<Vec<String>, Invalid> {
    let mut warnings = Vec::new();
    let mut refused: Vec<(Shadow, String)> = Vec::new();
    let found = shadows(routes);
    for s in &found {
        let (e, l) = (&routes[s.earlier], &routes[s.later]);
        let protective = l.transforms_request() || l.transforms_response();
        if !protective {
            if s.overlap.is_total() {
                warnings.push(format!(
                    "routes[{}] ({}) never matches: routes[{}] ({}) before it takes {}",
                    s.later,
                    l.name,
                    s.earlier,
                    e.name,
                    s.overlap.describe(&l.name)
                ));
            }
            continue;
        }
        let text = consequence(s, routes, upstreams);
        if raw[s.earlier].shadows_ok.iter().any(|n| n == &l.name) {
            warnings.push(format!(
                "routes[{}] ({}) shadows routes[{}] ({}), acknowledged by shadows_ok: {text}",
                s.earlier, e.name, s.later, l.name
            ));
        } else {
            refused.push((s.clone(), text));
        }
    }
    acknowledgements(routes, raw, &found, &mut warnings)?;
    let Some((first, text)) = refused.first() else {
        return Ok(warnings);
    };
    let (e, l) = (&routes[first.earlier], &routes[first.later]);
    let others: Vec<String> = refused[1..]
        .iter()
        .take(5)
        .map(|(s, _)| {
            format!(
                "routes[{}] ({}) shadows routes[{}] ({})",
                s.earlier, routes[s.earlier].name, s.later, routes[s.later].name
            )
        })
        .collect();
    let more = match refused.len() - 1 {
        0 => String::new(),
        n if n > others.len() => format!(
            ". {n} more unacknowledged shadows: {}, ...",
            others.join(", ")
        ),
        n => format!(
            ". {n} more unacknowledged shadow{}: {}",
            if n == 1 { "" } else { "s" },
            others.join(", ")
        ),
    };
    let at = At::top("routes").item(first.earlier, &e.name);
    Err(invalid_shown(
        at.shown(),
        format!(
            "shadows routes[{}] ({}): {text}. Put the more specific route first, or, if route {:?} is meant to take these requests, add `shadows_ok: [{}]` to it{more}",
            first.later, l.name, e.name, l.name
        ),
        Some(&at.key("name")),
    ))
}

/// Every name in `shadows_ok` must be a route; one this route does not
/// shadow (any more) is a warning, as the acknowledgement would silently
/// cover a shadow that comes back later.
fn acknowledgements(
    routes: &[Route],
    raw: &[RawRoute],
    found: &[Shadow],
    warnings: &mut Vec<String>,
) -> Result<(), Invalid> {
    for (i, r) in raw.iter().enumerate() {
        let at = At::top("routes").item(i, &r.name).key("shadows_ok");
        for (k, name) in r.shadows_ok.iter().enumerate() {
            let Some(j) = routes.iter().position(|x| &x.name == name) else {
                return Err(invalid_shown(
                    at.shown(),
                    format!("{name:?} is not the name of a route"),
                    Some(&at.index(k)),
                ));
            };
            let later = &routes[j];
            let shadowed = found.iter().any(|s| s.earlier == i && s.later == j);
            if !shadowed || !(later.transforms_request() || later.transforms_response()) {
                warnings.push(format!(
                    "routes[{i}] ({}).shadows_ok names route {name:?}, which it does not shadow: remove it so a new shadow is reported",
                    r.name
                ));
            }
        }
    }
    Ok(())
}

/// What goes wrong for the requests the earlier route takes.
fn consequence(s: &Shadow, routes: &[Route], upstreams: &[Upstream]) -> String {
    let (e, l) = (&routes[s.earlier], &routes[s.later]);
    let upstream = upstreams.get(e.upstream).map_or("?", |u| u.name.as_str());
    let mut lost = Vec::new();
    if l.transforms_request() {
        let missing: Vec<&FieldRule> = l
            .encrypt_rules()
            .iter()
            .filter(|r| !e.encrypt_rules().iter().any(|x| same_rule(x, r)))
            .collect();
        if !missing.is_empty() {
            lost.push(format!(
                "its encrypt rules {} are not applied, so those fields reach upstream {upstream:?} in plaintext",
                rules(&missing)
            ));
        } else {
            lost.push(format!(
                "they are sealed by route {:?}'s encrypt rules, not its own, and go to upstream {upstream:?}",
                e.name
            ));
        }
    }
    if l.transforms_response() && !same_decrypt(e.decrypt_selection(), l.decrypt_selection()) {
        lost.push(
            "its decrypt rules are not applied to the answers, so clients get envelopes"
                .to_string(),
        );
    }
    format!(
        "route {:?} takes {}; {}",
        e.name,
        s.overlap.describe(&l.name),
        lost.join(", and ")
    )
}

fn same_rule(a: &FieldRule, b: &FieldRule) -> bool {
    a.path.as_str() == b.path.as_str() && a.context == b.context
}

/// Whether `earlier` opens at least what `later` would have.
fn same_decrypt(earlier: Option<&DecryptSelection>, later: Option<&DecryptSelection>) -> bool {
    match (earlier, later) {
        (Some(DecryptSelection::Auto), _) | (_, None) => true,
        (Some(DecryptSelection::Paths(e)), Some(DecryptSelection::Paths(l))) => {
            l.iter().all(|r| e.iter().any(|x| same_rule(x, r)))
        }
        _ => false,
    }
}

fn rules(rs: &[&FieldRule]) -> String {
    let list: Vec<&str> = rs.iter().map(|r| r.path.as_str()).collect();
    format!("({})", list.join(", "))
}
