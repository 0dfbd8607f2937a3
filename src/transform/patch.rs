//! JSON Patch (RFC 6902) request bodies on encrypting routes. No HTTP types.
//!
//! A patch names the field it writes in data: `{"op": "replace", "path":
//! "/ssn", "value": "078-05-1120"}` writes `ssn` although no member of the
//! body is called `ssn`, and `move`/`copy` write a field from another one
//! without the value standing in the body at all. ASP.NET Core's
//! `JsonPatchDocument<T>`, Spring with json-patch, fast-json-patch and
//! every RFC 6902 library apply such operations to the model. So each
//! operation is judged by the name path it writes: the pointer's reference
//! tokens (`~1` is `/`, `~0` is `~`; indices and `-` are array steps) and,
//! below them, the names inside `value`, through the route's look-alike
//! automaton over **every** encrypt rule (`look_alikes: allow` does not
//! apply to patches). An operation whose value carries data at a protected
//! place, or that moves or copies into a place whose path spells a rule's
//! name, fails the request: a value inside a patch is never sealed (the
//! backend could not tell an envelope from the plaintext it patches in).
//!
//! Checked: bodies declared `application/json-patch+json`, which must be a
//! patch, and any other JSON body whose root is an array holding an object
//! with string `op` and `path` members (libraries apply a patch whatever
//! its media type).

use serde_json::{Map, Value};

use super::names::{name_parts, names_match, normalized_name};
use super::shape::{carries_data, LookAlikes};
use super::stream::{scan_strings, tree_is_whole, StringKind};
use super::{FieldRule, SealSpec, TransformError};

/// Refuses a JSON Patch body that writes a field `spec`'s rules protect.
/// `declared`: the media type says JSON Patch, so the body must be one.
/// Other bodies pass unless they are shaped like a patch.
pub fn check_patch(input: &[u8], spec: &SealSpec, declared: bool) -> Result<(), TransformError> {
    let look = &spec.shape.patches;
    if !declared && first_byte(input) != Some(b'[') {
        return Ok(());
    }
    // A root array without any member named `op` (bulk documents) is no
    // patch: found with one walk, without building a tree.
    if !declared {
        let mut op_named = false;
        let scanned = scan_strings(input, |s, kind| {
            op_named |= kind == StringKind::MemberName && names_match("op", s);
        });
        if scanned.is_err() || !op_named {
            return Ok(());
        }
    }
    // Invalid JSON and depth are the walk's to report, in its order.
    let Ok(doc) = serde_json::from_slice::<Value>(input) else {
        return if declared {
            Err(TransformError::InvalidJson)
        } else {
            Ok(())
        };
    };
    let ops: Vec<&Map<String, Value>> = match &doc {
        Value::Array(items) => items
            .iter()
            .filter_map(|op| op.as_object().filter(|o| is_operation(o)))
            .collect(),
        _ => Vec::new(),
    };
    if declared {
        let all_ops = matches!(&doc, Value::Array(items) if items.len() == ops.len());
        if !all_ops {
            return Err(TransformError::InvalidPatch);
        }
    } else if ops.is_empty() {
        return Ok(());
    }
    // A repeated member (`"path"` twice) is read by one library as the
    // first and by another as the last: the tree would judge only one.
    if !tree_is_whole(input, &doc, spec.max_depth)? {
        return Err(TransformError::InvalidPatch);
    }
    if !look.is_on() {
        return Ok(());
    }
    for (i, op) in ops.iter().enumerate() {
        check_operation(look, &spec.rules, op, i)?;
    }
    Ok(())
}

fn first_byte(input: &[u8]) -> Option<u8> {
    input
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// An object with a string member `op` and a string member `path` (names
/// folded as the matcher folds them: case-insensitive binders read `"Path"`).
fn is_operation(o: &Map<String, Value>) -> bool {
    let string = |name: &str| {
        o.iter()
            .any(|(k, v)| v.is_string() && normalized_name(k) == name)
    };
    string("op") && string("path")
}

/// The one member of `o` whose name normalizes to `name`; two are
/// ambiguous (which one a binder takes is its choice).
fn member<'v>(o: &'v Map<String, Value>, name: &str) -> Result<Option<&'v Value>, TransformError> {
    let mut found = o.iter().filter(|(k, _)| normalized_name(k) == name);
    let first = found.next().map(|(_, v)| v);
    if found.next().is_some() {
        return Err(TransformError::InvalidPatch);
    }
    Ok(first)
}

fn check_operation(
    look: &LookAlikes,
    rules: &[FieldRule],
    op: &Map<String, Value>,
    index: usize,
) -> Result<(), TransformError> {
    // The rule as written and the operation's index: no client content.
    let failure = |r: usize| TransformError::LookAlike {
        rule: rules
            .get(r)
            .map_or_else(String::new, |r| r.path.as_str().to_owned()),
        location: format!("$[{index}]"),
    };
    let Some(Value::String(path)) = member(op, "path")? else {
        return Err(TransformError::InvalidPatch);
    };
    let tokens = pointer_tokens(path)?;
    let state = tokens.iter().fold(look.start(), |s, t| look.step(s, t));
    // Any operation's value is checked, whatever its `op` says (`test`
    // sends the value too, extensions add their own operations).
    if let Some(value) = member(op, "value")? {
        if let Some(r) = data_look_alike(look, state, value) {
            return Err(failure(r));
        }
    }
    // `move`/`copy` write data the body does not show: refused into a
    // protected place, or into a place whose path names a rule's member
    // (copying an object to `/card` writes `card.number`).
    if member(op, "from")?.is_some() {
        if let Some(r) = look.accepting(state) {
            return Err(failure(r));
        }
        let named = rules.iter().position(|rule| {
            tokens.iter().any(|t| {
                name_parts(t).any(|p| rule.path.names().iter().any(|n| names_match(n, &p)))
            })
        });
        if let Some(r) = named {
            return Err(failure(r));
        }
    }
    Ok(())
}

/// The reference tokens of JSON Pointer `p` (RFC 6901), unescaped, without
/// array steps (`-`; indices are dropped by the automaton). A pointer
/// without its leading `/` is read as if it had one (some binders do).
fn pointer_tokens(p: &str) -> Result<Vec<String>, TransformError> {
    let p = p.strip_prefix('/').unwrap_or(p);
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for raw in p.split('/') {
        let mut t = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '~' {
                match chars.next() {
                    Some('0') => t.push('~'),
                    Some('1') => t.push('/'),
                    _ => return Err(TransformError::InvalidPatch),
                }
            } else {
                t.push(c);
            }
        }
        if t != "-" {
            out.push(t);
        }
    }
    Ok(out)
}

/// The rule whose look-alike some data in `v` (standing in `state`) is.
fn data_look_alike(look: &LookAlikes, state: u32, v: &Value) -> Option<usize> {
    let mut stack = vec![(state, v)];
    while let Some((s, v)) = stack.pop() {
        if let Some(r) = look.accepting(s) {
            if carries_data(v) {
                return Some(r);
            }
            continue;
        }
        match v {
            Value::Object(m) => stack.extend(m.iter().map(|(k, x)| (look.step(s, k), x))),
            Value::Array(a) => stack.extend(a.iter().map(|x| (s, x))),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::{FieldPath, LookAlikeMode, RequestShape};

    fn spec(paths: &[&str]) -> SealSpec {
        let rules: Vec<FieldRule> = paths
            .iter()
            .map(|p| FieldRule {
                path: FieldPath::parse(p).expect("path"),
                context: None,
            })
            .collect();
        let patches = LookAlikes::compile(&rules, &[], LookAlikeMode::Refuse).expect("compile");
        let mut s = SealSpec::new(rules);
        s.shape = RequestShape {
            patches,
            ..RequestShape::default()
        };
        s
    }

    fn refused(s: &SealSpec, body: &str, declared: bool) -> bool {
        check_patch(body.as_bytes(), s, declared).is_err()
    }

    #[test]
    fn operations_writing_protected_fields_are_refused() {
        let s = spec(&["$.ssn", "$.card.number", "$.contacts[*].phone"]);
        for body in [
            r#"[{"op":"replace","path":"/ssn","value":"x"}]"#,
            r#"[{"op":"add","path":"/card/number","value":"x"}]"#,
            r#"[{"op":"add","path":"/contacts/0/phone","value":"x"}]"#,
            r#"[{"op":"add","path":"/contacts/-","value":{"phone":"x"}}]"#,
            r#"[{"op":"add","path":"/SSN","value":"x"}]"#,
            r#"[{"op":"add","path":"ssn","value":"x"}]"#,
            r#"[{"op":"add","path":"/card","value":{"number":"x"}}]"#,
            r#"[{"op":"add","path":"/card~1number","value":"x"}]"#,
            r#"[{"op":"add","path":"/card.number","value":"x"}]"#,
            r#"[{"op":"add","path":"","value":{"user":{"ssn":"x"}}}]"#,
            r#"[{"op":"test","path":"/ssn","value":"x"}]"#,
            r#"[{"op":"add","path":"/ssn","value":{"078-05-1120":null}}]"#,
            r#"[{"Op":"add","Path":"/ssn","Value":"x"}]"#,
            r#"[{"op":"move","from":"/nickname","path":"/ssn"}]"#,
            r#"[{"op":"copy","from":"/nickname","path":"/card/number"}]"#,
            r#"[{"op":"copy","from":"/billing","path":"/card"}]"#,
            r#"[{"op":"add","path":"/nickname","value":"x"},{"op":"move","from":"/nickname","path":"/user/ssn"}]"#,
        ] {
            assert!(refused(&s, body, true), "{body}");
            assert!(refused(&s, body, false), "undeclared: {body}");
        }
    }

    #[test]
    fn other_operations_pass() {
        let s = spec(&["$.ssn", "$.card.number"]);
        for body in [
            r#"[{"op":"replace","path":"/nickname","value":"x"}]"#,
            r#"[{"op":"remove","path":"/ssn"}]"#,
            r#"[{"op":"replace","path":"/ssn","value":null}]"#,
            r#"[{"op":"add","path":"/items/0/number","value":"x"}]"#,
            r#"[{"op":"move","from":"/ssn","path":"/old"}]"#,
            r#"[]"#,
        ] {
            assert!(!refused(&s, body, true), "{body}");
        }
        // Not a patch: the walk judges it.
        for body in [
            r#"{"op":"add","path":"/ssn"}"#,
            r#"[1, 2]"#,
            r#"[{"op":"x"}]"#,
        ] {
            assert!(!refused(&s, body, false), "{body}");
        }
    }

    #[test]
    fn malformed_or_ambiguous_patches_are_refused() {
        let s = spec(&["$.ssn"]);
        for body in [
            r#"{"op":"add","path":"/x","value":1}"#,
            r#"[{"op":"add","value":1}]"#,
            r#"[{"op":"add","path":"/x~2","value":1}]"#,
            r#"[{"op":"add","path":"/x","path":"/ssn","value":"x"}]"#,
            r#"[{"op":"add","path":"/x","PATH":"/ssn","value":"x"}]"#,
            r#"[{"op":"add","path":"/x","value":"a","value":"b"}]"#,
        ] {
            assert!(refused(&s, body, true), "{body}");
        }
        assert!(refused(
            &s,
            r#"[{"op":"add","path":"/x","path":"/ssn","value":"x"}]"#,
            false
        ));
    }
}
