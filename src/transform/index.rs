//! Blind index rules on JSON bodies: `{field: "$.email", into:
//! "$.email_idx"}` writes the index of each selected value into a sibling
//! member. No HTTP types.
//!
//! Request bodies are indexed by the one streaming walk (`stream`), which
//! computes the index from the field's plaintext as it passes and writes
//! the member right after the field; a member the client sent under the
//! index's name refuses the request there. The tree functions here serve
//! stored records (`fieldseal index`), where an existing index member is
//! recomputed and envelopes are opened first.

use serde_json::{Map, Value};

use super::names::{names_match, normalized_name};
use super::path::Segment;
use super::{FieldPath, FieldRule, Keys, TransformError};
use crate::crypto::index::{IndexKey, Normalize};
use crate::crypto::{Keyring, SubjectKey};

/// How one named index is computed, the same wherever it is used (JSON
/// bodies, query parameters): the config refuses two definitions of one
/// name that differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// The index's name (the member or parameter it is written into); it
    /// is part of the key derivation.
    pub name: String,
    /// Sorted and without repeats; applied in the fixed order.
    pub normalize: Vec<Normalize>,
    pub bits: u16,
    /// The ring key the index key is derived from; None: the active key.
    pub key_id: Option<String>,
}

/// The key a request's (or a record's) indexes are computed under: the
/// route's `index_scope`, resolved.
#[derive(Debug, Clone, Copy)]
pub enum IndexKeys<'k> {
    /// The deployment: the spec's ring key (`key:`, default the active one).
    Ring(&'k Keyring),
    /// The newest data key of the request's tenant or subject.
    DataKey(&'k SubjectKey),
}

impl IndexSpec {
    /// The index of `value` under `keys`.
    pub fn index(&self, keys: IndexKeys<'_>, value: &str) -> Result<String, TransformError> {
        Ok(self.key(keys)?.index(value, &self.normalize, self.bits))
    }

    /// This index's key under `keys` (derived once per document by the
    /// request walk).
    pub fn key(&self, keys: IndexKeys<'_>) -> Result<IndexKey, TransformError> {
        match keys {
            IndexKeys::Ring(ring) => {
                let key_id = self.key_id.as_deref().unwrap_or(ring.active_id());
                IndexKey::derive(ring, key_id, &self.name)
            }
            IndexKeys::DataKey(k) => IndexKey::derive_for_data_key(k, &self.name),
        }
        .ok_or(TransformError::Seal)
    }
}

/// One `index:` rule of a route, compiled at load: the selected field's
/// parent (every segment but the last), the field's name, and the index.
#[derive(Debug, Clone)]
pub struct IndexRule {
    pub field: FieldPath,
    pub spec: IndexSpec,
}

impl IndexRule {
    /// `field` must end with a member name and hold no descendant segment
    /// (the index goes beside the value, at one place).
    pub fn new(field: FieldPath, spec: IndexSpec) -> Result<IndexRule, &'static str> {
        let segs = field.segments();
        if segs.iter().any(Segment::is_descendant) {
            return Err("an indexed field cannot use `..`");
        }
        match segs.last() {
            Some(last) if last.single_name().is_some() => Ok(IndexRule { field, spec }),
            _ => Err("an indexed field must end with one member name (e.g. `$.email`)"),
        }
    }
}

/// Most `index:` rules one route may have (the walk keeps one bit per rule
/// for each object it is in).
pub const MAX_INDEX_RULES: usize = 64;

/// A route's `index:` rules, compiled for the streaming walk: rule `i`
/// gives walk rules `2i` (its field) and `2i + 1` (the member it writes,
/// beside the field), stepped by the walk's own rule states.
#[derive(Debug, Clone, Default)]
pub struct IndexRules {
    rules: Vec<IndexRule>,
    walk: Vec<FieldRule>,
}

impl IndexRules {
    /// At most [`MAX_INDEX_RULES`] rules (checked at load).
    pub fn new(rules: Vec<IndexRule>) -> Result<IndexRules, &'static str> {
        if rules.len() > MAX_INDEX_RULES {
            return Err("a route may have at most 64 `index:` rules");
        }
        let mut walk = Vec::with_capacity(2 * rules.len());
        for r in &rules {
            let into = r
                .field
                .sibling(&r.spec.name)
                .ok_or("an indexed field must end with one member name (e.g. `$.email`)")?;
            walk.push(FieldRule {
                path: r.field.clone(),
                context: None,
            });
            walk.push(FieldRule {
                path: into,
                context: None,
            });
        }
        Ok(IndexRules { rules, walk })
    }

    pub fn rules(&self) -> &[IndexRule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The walk's rules (see the type).
    pub(crate) fn walk_rules(&self) -> &[FieldRule] {
        &self.walk
    }
}

/// For stored records (`fieldseal index`): `doc` with every rule's index
/// written beside its field (None when `rules` is empty); a member already
/// under the index's name is recomputed, and a field that holds an
/// envelope is opened first (with its member name as
/// the context, the proxy's default) and indexed by its plaintext, which
/// never leaves this function. Also returns how many indexes were written.
pub fn add_indexes_opening(
    doc: &[u8],
    rules: &[IndexRule],
    keys: Keys<'_>,
    now: u64,
) -> Result<Option<(Vec<u8>, usize)>, TransformError> {
    add_indexes_counting(doc, rules, keys, Some(now))
}

/// `open`: envelopes are opened (at that time) and indexed by plaintext.
fn add_indexes_counting(
    doc: &[u8],
    rules: &[IndexRule],
    keys: Keys<'_>,
    open: Option<u64>,
) -> Result<Option<(Vec<u8>, usize)>, TransformError> {
    if rules.is_empty() {
        return Ok(None);
    }
    let mut written = 0;
    let mut v: Value = serde_json::from_slice(doc).map_err(|_| TransformError::InvalidJson)?;
    for rule in rules {
        let segs = rule.field.segments();
        let (last, parent) = match segs.split_last() {
            Some(x) => x,
            None => continue,
        };
        let mut result = Ok(());
        visit_parents(&mut v, parent, &mut |obj| {
            if result.is_ok() {
                result = index_member(obj, last, rule, keys, open).map(|n| written += n);
            }
        });
        result?;
    }
    serde_json::to_vec(&v)
        .map(|d| Some((d, written)))
        .map_err(|_| TransformError::InvalidJson)
}

/// `doc` without the members named (in any spelling a backend binds) one
/// of `names`, at any depth; None when it is not JSON (it is then left as
/// it is).
pub fn drop_members(doc: &[u8], names: &[String]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(doc).ok()?;
    let folded: Vec<String> = names.iter().map(|n| normalized_name(n)).collect();
    let mut stack = vec![&mut v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(o) => {
                o.retain(|k, _| !folded.iter().any(|f| names_match(f, k)));
                stack.extend(o.values_mut());
            }
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
    serde_json::to_vec(&v).ok()
}

/// Calls `f` on every object `segs` selects below `v`.
fn visit_parents(v: &mut Value, segs: &[Segment], f: &mut dyn FnMut(&mut Map<String, Value>)) {
    let Some((seg, rest)) = segs.split_first() else {
        if let Value::Object(o) = v {
            f(o);
        }
        return;
    };
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if seg.selects_member(k) {
                    visit_parents(child, rest, f);
                }
            }
        }
        Value::Array(a) => {
            let n = a.len();
            for (j, child) in a.iter_mut().enumerate() {
                if seg.selects_element(j, n) {
                    visit_parents(child, rest, f);
                }
            }
        }
        _ => {}
    }
}

fn index_member(
    obj: &mut Map<String, Value>,
    last: &Segment,
    rule: &IndexRule,
    keys: Keys<'_>,
    open: Option<u64>,
) -> Result<usize, TransformError> {
    let into = normalized_name(&rule.spec.name);
    // Whatever the client wrote under the index's name goes.
    obj.retain(|k, _| !names_match(&into, k));
    let mut found = obj.iter().filter(|(k, _)| last.selects_member(k));
    let Some((key, value)) = found.next() else {
        return Ok(0);
    };
    if found.next().is_some() {
        // `email` and `EMAIL`: a backend binds one of them, which one is
        // not ours to guess.
        return Err(TransformError::Unindexable);
    }
    let opened;
    let value = match (value, open) {
        (Value::String(s), Some(now)) if crate::crypto::looks_like_envelope(s) => {
            opened = keys
                .open_at(s, key, None, now)
                .map_err(|e| {
                    TransformError::Decrypt(super::DecryptFailure {
                        location: format!("$[*]['{}']", rule.field.as_str()),
                        key_id: crate::crypto::envelope_key_id(s).map(str::to_owned),
                        reason: e.reason(),
                    })
                })?
                .value;
            &opened
        }
        (v, _) => v,
    };
    let text = match value {
        Value::Null => return Ok(0),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(_) | Value::Object(_) => return Err(TransformError::Unindexable),
    };
    let index = rule.spec.index(keys.index, &text)?;
    obj.insert(rule.spec.name.clone(), Value::String(index));
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_raw_keys("k1", vec![("k1".into(), [3u8; 32])]).expect("ring")
    }

    fn rule(field: &str, name: &str) -> IndexRule {
        IndexRule::new(
            FieldPath::parse(field).expect("path"),
            IndexSpec {
                name: name.into(),
                normalize: vec![Normalize::Trim, Normalize::Lowercase],
                bits: 64,
                key_id: None,
            },
        )
        .expect("rule")
    }

    fn run(doc: &str, rules: &[IndexRule]) -> Result<Value, TransformError> {
        let ring = ring();
        let out = add_indexes_opening(doc.as_bytes(), rules, Keys::from(&ring), 0)?
            .expect("changed")
            .0;
        Ok(serde_json::from_slice(&out).expect("json"))
    }

    #[test]
    fn the_index_goes_beside_the_field_and_replaces_a_forged_one() {
        let r = [rule("$.email", "email_idx")];
        let spec = &r[0].spec;
        let ring = ring();
        let want = spec
            .index(IndexKeys::Ring(&ring), "ada@example.com")
            .expect("index");
        let v = run(
            r#"{"email": " Ada@Example.com", "EMAIL_IDX": "forged"}"#,
            &r,
        )
        .expect("ok");
        assert_eq!(v["email_idx"], Value::String(want.clone()));
        assert!(v.get("EMAIL_IDX").is_none());
        assert_eq!(v["email"], " Ada@Example.com", "sealed later, not here");
        let v = run(r#"{"Email": "ada@example.com"}"#, &r).expect("ok");
        assert_eq!(v["email_idx"], Value::String(want));
        let v = run(r#"{"name": "x", "email_idx": "forged"}"#, &r).expect("ok");
        assert!(v.get("email_idx").is_none());
        let v = run(r#"{"email": null}"#, &r).expect("ok");
        assert!(v.get("email_idx").is_none());
        for bad in [
            r#"{"email": "a", "EMAIL": "b"}"#,
            r#"{"email": {"x": 1}}"#,
            r#"{"email": ["a"]}"#,
        ] {
            assert!(
                matches!(run(bad, &r), Err(TransformError::Unindexable)),
                "{bad}"
            );
        }
        assert!(matches!(run("{", &r), Err(TransformError::InvalidJson)));
    }

    #[test]
    fn nested_fields_and_numbers() {
        let r = [rule("$.users[*].ssn", "ssn_idx")];
        let v = run(
            r#"{"users": [{"ssn": 78051120}, {"ssn": "78051120"}, {}]}"#,
            &r,
        )
        .expect("ok");
        assert_eq!(v["users"][0]["ssn_idx"], v["users"][1]["ssn_idx"]);
        assert!(v["users"][2].get("ssn_idx").is_none());
    }

    /// The request walk: `encrypt` seals `sealed`, `rules` index.
    fn walk(doc: &str, sealed: &[&str], rules: Vec<IndexRule>) -> Result<String, TransformError> {
        let ring = ring();
        let mut spec = super::super::SealSpec::new(
            sealed
                .iter()
                .map(|p| FieldRule {
                    path: FieldPath::parse(p).expect("path"),
                    context: None,
                })
                .collect(),
        );
        spec.indexes = IndexRules::new(rules).expect("rules");
        let (out, _) = super::super::encrypt_request(doc.as_bytes(), &spec, Keys::from(&ring), 7)?;
        Ok(String::from_utf8(out).expect("utf-8"))
    }

    fn want(name: &str, value: &str) -> String {
        rule("$.x", name)
            .spec
            .index(IndexKeys::Ring(&ring()), value)
            .expect("index")
    }

    #[test]
    fn the_walk_writes_the_index_right_after_the_field_and_copies_the_rest() {
        let doc = r#"{ "b" : 1,  "email":" Ada@Example.com" , "a": [ 1.50E2 ] }"#;
        let out = walk(doc, &["$.email"], vec![rule("$.email", "email_idx")]).expect("ok");
        let idx = want("email_idx", "ada@example.com");
        let (head, tail) = out.split_once(r#","email_idx":""#).expect("index member");
        assert!(head.starts_with(r#"{ "b" : 1,  "email":"fs1:"#), "{out}");
        assert_eq!(tail, format!(r#"{idx}" , "a": [ 1.50E2 ] }}"#));
        // The field kept as it is when no encrypt rule selects it; escapes
        // are indexed by their characters.
        let out = walk(
            r#"{"email":"\u0041da@example.com"}"#,
            &[],
            vec![rule("$.email", "email_idx")],
        )
        .expect("ok");
        assert_eq!(
            out,
            format!(r#"{{"email":"\u0041da@example.com","email_idx":"{idx}"}}"#)
        );
    }

    #[test]
    fn the_walk_indexes_what_the_tree_did() {
        let r = || {
            vec![
                rule("$.users[*].ssn", "ssn_idx"),
                rule("$.email", "email_idx"),
            ]
        };
        for doc in [
            r#"{"users": [{"ssn": 78051120}, {"ssn": "78051120"}, {}, {"ssn": null}, {"SSN": true}], "Email": " X@Y.z "}"#,
            r#"{"email": null, "users": []}"#,
            r#"{"users": {"ssn": "not in an array"}, "e_mail": "a@b.c"}"#,
            r#"[{"email": "root is an array"}]"#,
        ] {
            let tree = run(doc, &r()).expect("tree");
            let out: Value =
                serde_json::from_str(&walk(doc, &["$.users[*].ssn"], r()).expect("walk"))
                    .expect("json");
            let indexes = |v: &Value| {
                let mut found = Vec::new();
                let mut stack = vec![("$".to_string(), v.clone())];
                while let Some((at, v)) = stack.pop() {
                    match v {
                        Value::Object(o) => {
                            for (k, v) in o {
                                if k.ends_with("_idx") {
                                    found.push((format!("{at}.{k}"), v.clone()));
                                }
                                stack.push((format!("{at}.{k}"), v));
                            }
                        }
                        Value::Array(a) => {
                            for (j, v) in a.into_iter().enumerate() {
                                stack.push((format!("{at}[{j}]"), v));
                            }
                        }
                        _ => {}
                    }
                }
                found.sort_by(|a, b| a.0.cmp(&b.0));
                found
            };
            assert_eq!(indexes(&out), indexes(&tree), "{doc}");
        }
        // A number is indexed by its text as sent.
        let out = walk(
            r#"{"email": 1.50E2}"#,
            &[],
            vec![rule("$.email", "email_idx")],
        )
        .expect("ok");
        assert!(out.contains(&want("email_idx", "1.50E2")), "{out}");
        // Negative indices need the array's length.
        let out = walk(
            r#"{"users": [{"ssn": "a"}, {"ssn": "b"}]}"#,
            &[],
            vec![rule("$.users[-1].ssn", "ssn_idx")],
        )
        .expect("ok");
        assert_eq!(out.matches("ssn_idx").count(), 1, "{out}");
        assert!(out.contains(&want("ssn_idx", "b")), "{out}");
    }

    #[test]
    fn the_walk_refuses_what_a_client_must_not_choose_or_that_one_index_cant_describe() {
        let r = || vec![rule("$.users[*].email", "email_idx")];
        for doc in [
            // The index's member, in any spelling, any value, before or after the field.
            r#"{"users": [{"email": "a", "email_idx": "forged"}]}"#,
            r#"{"users": [{"EmailIdx": null}]}"#,
            r#"{"users": [{"email-idx": "x", "email": "a"}]}"#,
            r#"{"users": [{"email_idx": {"x": 1}}]}"#,
        ] {
            assert!(
                matches!(
                    walk(doc, &["$.users[*].email"], r()),
                    Err(TransformError::IndexSupplied { .. })
                ),
                "{doc}"
            );
        }
        for doc in [
            // Twice in one object: the same spelling (a tree kept the last),
            // or two.
            r#"{"users": [{"email": "a", "email": "b"}]}"#,
            r#"{"users": [{"email": "a", "EMAIL": "a"}]}"#,
            r#"{"users": [{"email": {"x": 1}}]}"#,
            r#"{"users": [{"email": ["a"]}]}"#,
        ] {
            assert!(
                matches!(
                    walk(doc, &["$.users[*].email"], r()),
                    Err(TransformError::Unindexable)
                ),
                "{doc}"
            );
        }
        // Outside the field's parents, the name is the client's.
        let out = walk(
            r#"{"email_idx": "x", "users": [{"email": "a"}, {"email": "a"}]}"#,
            &[],
            r(),
        )
        .expect("ok");
        assert_eq!(out.matches(&want("email_idx", "a")).count(), 2, "{out}");
        // Invalid JSON is invalid, whatever came before.
        assert!(matches!(
            walk(r#"{"users": [{"email": "a", "email": "b"}]"#, &[], r()),
            Err(TransformError::InvalidJson)
        ));
    }

    #[test]
    fn descendants_and_non_names_are_refused_at_load() {
        for p in ["$..email", "$.a[0]", "$.*", "$['a','b']"] {
            assert!(
                IndexRule::new(FieldPath::parse(p).expect("p"), rule("$.x", "x_idx").spec).is_err(),
                "{p}"
            );
        }
    }
}
