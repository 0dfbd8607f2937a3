//! The rule side of a route, compiled once: the look-alike automaton, the
//! request schema, and the limits that keep every value sealable.

use std::path::Path;

use super::locate::At;
use super::raw::Word;
use super::{invalid, invalid_shown, raw, resolve, word, Invalid, Limits};
use crate::crypto::{max_plaintext_len, KeyringSpec, MAX_SEAL_DEPTH};
use crate::transform::shape::{
    matches_everything, JsonReferences, LookAlikeMode, LookAlikes, RequestSchema, RequestShape,
};
use crate::transform::FieldRule;

/// Largest schema file read at load.
const MAX_SCHEMA_FILE: u64 = 1 << 20;

/// Is encrypt rule `f` in the look-alike check (not `look_alikes: allow`)?
pub(super) fn rule_checked(at: &At, f: &raw::RawFieldRule) -> Result<bool, Invalid> {
    match f {
        raw::RawFieldRule::Path(_) => Ok(true),
        raw::RawFieldRule::Detailed(d) => match &d.look_alikes {
            None => Ok(true),
            Some(Word::Known(raw::Allow::Allow)) => Ok(false),
            Some(Word::Unknown(o)) => Err(invalid(
                &at.key("look_alikes"),
                format!("{o:?}: a rule can only say `allow` (the route's `look_alikes` chooses refuse or seal)"),
            )),
        },
    }
}

/// Decrypt rules have no look-alikes: answers are not bound by a backend.
pub(super) fn no_look_alikes(at: &At, f: &raw::RawFieldRule) -> Result<(), Invalid> {
    match f {
        raw::RawFieldRule::Detailed(d) if d.look_alikes.is_some() => Err(invalid(
            &at.key("look_alikes"),
            "applies to encrypt rules only",
        )),
        _ => Ok(()),
    }
}

/// The route's `RequestShape`, with the warnings it deserves.
pub(super) fn compile_route(
    at: &At,
    r: &raw::RawRoute,
    encrypt: &[FieldRule],
    checked: &[bool],
    base: &Path,
) -> Result<(RequestShape, Vec<String>), Invalid> {
    let mode = match &r.look_alikes {
        None => LookAlikeMode::default(),
        Some(w) => word(
            &at.key("look_alikes"),
            w,
            " (a rule opts out with `look_alikes: allow`)",
        )?,
    };
    if encrypt.is_empty() {
        if r.look_alikes.is_some() {
            return Err(invalid(
                &at.key("look_alikes"),
                "applies to encrypt rules, and this route has none",
            ));
        }
        if r.json_references.is_some() {
            return Err(invalid(
                &at.key("json_references"),
                "applies to encrypting routes, and this route has no encrypt rules",
            ));
        }
        if r.request_schema.is_some() {
            return Err(invalid(
                &at.key("request_schema"),
                "is checked where an encrypting route reads the body, and this route has no encrypt rules",
            ));
        }
        return Ok((RequestShape::default(), Vec::new()));
    }
    let look_alikes = LookAlikes::compile(encrypt, checked, mode)
        .map_err(|e| invalid(&at.key("encrypt"), e.to_string()))?;
    // JSON Patch operations are judged against every rule, refusing.
    let patches = LookAlikes::compile(encrypt, &[], LookAlikeMode::Refuse)
        .map_err(|e| invalid(&at.key("encrypt"), e.to_string()))?;
    let references = match &r.json_references {
        None => JsonReferences::default(),
        Some(w) => word(&at.key("json_references"), w, "")?,
    };
    let mut warnings = Vec::new();
    if references == JsonReferences::Allow {
        warnings.push(format!(
            "route {:?}: json_references: allow forwards $ref/$values members; a backend that resolves references (Json.NET PreserveReferencesHandling, System.Text.Json ReferenceHandler.Preserve) binds the protected fields to data written under other names, in plaintext",
            r.name
        ));
    }
    for (j, rule) in encrypt.iter().enumerate() {
        let on = checked.get(j).copied().unwrap_or(true);
        if on && rule.path.min_depth() > 0 && matches_everything(rule) {
            warnings.push(format!(
                "route {:?}: encrypt rule {} names no member, so every value it does not select is its look-alike and is {}; set `look_alikes: allow` on the rule if the route must accept other values",
                r.name,
                rule.path.as_str(),
                match mode {
                    LookAlikeMode::Refuse => "refused",
                    LookAlikeMode::Seal => "sealed",
                }
            ));
        }
    }
    let schema = match &r.request_schema {
        None => None,
        Some(raw_schema) => Some(compile_schema(&at.key("request_schema"), raw_schema, base)?),
    };
    Ok((
        RequestShape {
            look_alikes,
            patches,
            schema,
            references,
        },
        warnings,
    ))
}

fn compile_schema(
    at: &At,
    raw_schema: &raw::RawSchema,
    base: &Path,
) -> Result<RequestSchema, Invalid> {
    let value: serde_json::Value = match raw_schema {
        raw::RawSchema::File(p) => {
            let path = resolve(base, p);
            let text =
                read_limited(&path).map_err(|e| invalid(at, format!("{}: {e}", path.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| invalid(at, format!("{}: not JSON: {e}", path.display())))?
        }
        raw::RawSchema::Inline(v) => {
            serde_json::to_value(v).map_err(|e| invalid(at, format!("not a JSON value: {e}")))?
        }
    };
    RequestSchema::compile(&value)
        .map_err(|e| invalid(at, format!("the schema does not compile: {e}")))
}

fn read_limited(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = crate::files::open_regular(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_SCHEMA_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_SCHEMA_FILE {
        return Err(format!("larger than {MAX_SCHEMA_FILE} bytes"));
    }
    Ok(text)
}

/// Every value an encrypting route may seal must fit an envelope, or a
/// client could get a 500 for a body the limits let in: the largest field
/// is a whole body (`max_body`, after decoding; a selected value's JSON is
/// never longer than its text in the body), the deepest one sits as high
/// as the shallowest rule lets it (a sealed look-alike container one
/// member below the root).
pub(super) fn check_sealable(
    at: &At,
    r: &raw::RawRoute,
    encrypt: &[FieldRule],
    shape: &RequestShape,
    max_body: u64,
    limits: &Limits,
    keys: Option<&KeyringSpec>,
) -> Result<(), Invalid> {
    let Some(shallowest) = encrypt.iter().min_by_key(|f| f.path.min_depth()) else {
        return Ok(());
    };
    let seals_look_alikes =
        shape.look_alikes.is_on() && shape.look_alikes.mode() == LookAlikeMode::Seal;
    let highest = if seals_look_alikes {
        shallowest.path.min_depth().min(1)
    } else {
        shallowest.path.min_depth()
    };
    if let Some(keys) = keys {
        let cap = max_plaintext_len(keys.active.len()) as u64;
        if max_body > cap {
            let (which, place) = if r.max_body.is_some() {
                (at.key("max_body").shown().to_string(), at.key("max_body"))
            } else {
                (
                    format!("limits.max_body (the max_body of {})", at.shown()),
                    At::top("limits").key("max_body"),
                )
            };
            return Err(invalid_shown(
                which,
                format!(
                    "{max_body} bytes let one field of an encrypting route be larger than an envelope can hold ({cap} bytes under the active key {:?}); lower it to {cap} or less",
                    keys.active
                ),
                Some(&place),
            ));
        }
    }
    let deepest = limits.max_json_depth.saturating_sub(highest);
    if deepest > MAX_SEAL_DEPTH {
        let what = if highest < shallowest.path.min_depth() {
            format!("{}.look_alikes (seal)", at.shown())
        } else {
            let j = encrypt
                .iter()
                .position(|f| std::ptr::eq(f, shallowest))
                .unwrap_or(0);
            format!("{}.encrypt[{j}] ({})", at.shown(), shallowest.path.as_str())
        };
        return Err(invalid(
            &At::top("limits").key("max_json_depth"),
            format!(
                "{} lets {what} seal a value nested {deepest} levels deep, but an envelope holds at most {MAX_SEAL_DEPTH}; lower limits.max_json_depth to {} or less",
                limits.max_json_depth,
                MAX_SEAL_DEPTH + highest
            ),
        ));
    }
    Ok(())
}
