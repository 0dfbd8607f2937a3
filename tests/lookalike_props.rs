//! Property tests for the look-alike check of encrypting routes (`shape`),
//! against an oracle written here from the rule of the README: a value's
//! name path is its member names from the root, array steps dropped, each
//! name cut at a NUL, split at `.`, `/`, `[`, `]` (a quoted bracket part
//! kept whole, its quotes removed and backslash escapes undone; elsewhere
//! quotes and backslashes dropped; empty and all-digit parts dropped),
//! without `_` and `-`, and case-folded; it is a look-alike of a rule when
//! the name path of the value or of one holding it ends with a name
//! sequence the rule stands for. Member names inside a look-alike are data
//! too, unless a rule selects the member's value.
//!
//! On random documents spelled with random case folds, NULs, dotted and
//! bracketed names, wrappers and arrays, and random rules:
//! 1. `refuse`: the request is refused exactly when the plain transform
//!    would forward a look-alike holding data in plaintext; otherwise the
//!    output is the plain transform's;
//! 2. `seal`: no look-alike holding data leaves in plaintext, nothing else
//!    changes, and each sealed look-alike opens to the value sent, with the
//!    rule's context or the last part of its member name;
//! 3. the matcher folds like the check: any spelling of a rule's names at
//!    the rule's place is sealed by the rule itself.

mod engine;

use engine::{encrypt_json, encrypt_request};
use fieldseal::crypto::{looks_like_envelope, Keyring};
use fieldseal::transform::location::{self, Step};
use fieldseal::transform::{
    locations, FieldPath, FieldRule, LookAlikeMode, LookAlikes, RequestShape,
    TransformError as StreamError,
};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

const NOW: u64 = 1_000;

fn ring() -> Keyring {
    Keyring::from_raw_keys("k1", vec![("k1".into(), [7; 32])]).expect("ring")
}

/// Spellings a backend binds to one name: (spelling, canonical name).
const SPELLINGS: &[(&str, &str)] = &[
    ("ssn", "ssn"),
    ("SSN", "ssn"),
    ("Ssn", "ssn"),
    ("\u{17F}sn", "ssn"),
    ("s\u{17F}n", "ssn"),
    ("card", "card"),
    ("CARD", "card"),
    ("Card", "card"),
    ("number", "number"),
    ("NUMBER", "number"),
    ("nUmber", "number"),
    ("id", "id"),
    ("ID", "id"),
    ("\u{131}d", "id"),
    ("\u{130}d", "id"),
    ("kind", "kind"),
    ("KIND", "kind"),
    ("\u{212A}ind", "kind"),
    ("k\u{131}nd", "kind"),
];

/// Member names of the documents: spellings, names no rule has, names with
/// a NUL, dotted and bracketed names.
const KEYS: &[&str] = &[
    "ssn",
    "SSN",
    "\u{17F}sn",
    "card",
    "Card",
    "number",
    "NUMBER",
    "id",
    "\u{131}d",
    "\u{130}d",
    "kind",
    "\u{212A}ind",
    "user",
    "items",
    "x",
    "0",
    "17",
    "",
    "ssn\u{0}",
    "ssn\u{0}tail",
    "card\u{0}.x",
    "card.number",
    "Card.Number",
    "card[number]",
    "card['number']",
    "card[\"Number\"]",
    "items.0.ssn",
    "user.ssn",
    "x[0].kind",
    "0.ssn",
    "ssn.x",
    "card.0.number",
    "ID.kind",
    ".id.",
    "s_sn",
    "S-S-N",
    "card_number",
    "card/number",
    "card[\"n\\umber\"]",
    "x['k\\ind']",
    "u[\"a.ssn\"]",
    "card\\.number",
    "'id'",
    "_",
];

/// Names the generated rules use (normalized by the proxy).
const RULE_NAMES: &[&str] = &[
    "ssn", "SSN", "card", "number", "id", "ID", "kind", "items", "user",
];

// ---------------------------------------------------------------------------
// The oracle

fn canonical(part: &str) -> String {
    let part: String = part.chars().filter(|c| !matches!(c, '_' | '-')).collect();
    SPELLINGS
        .iter()
        .find(|(s, _)| *s == part)
        .map_or_else(|| part.to_lowercase(), |(_, c)| c.to_string())
}

/// The name parts of one member name, as sent (not folded).
fn split(name: &str) -> Vec<String> {
    let c: Vec<char> = name.split('\0').next().unwrap_or("").chars().collect();
    let plain = |p: &[char]| -> String {
        p.iter()
            .filter(|c| !matches!(c, '\\' | '"' | '\''))
            .collect()
    };
    let mut parts = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < c.len() {
        match c[i] {
            '.' | '/' | ']' => {
                parts.push(plain(&c[start..i]));
                i += 1;
                start = i;
            }
            '[' => {
                parts.push(plain(&c[start..i]));
                i += 1;
                start = i;
                // A quoted part, closed by its quote and then `]`.
                if let Some(&q) = c.get(i).filter(|q| matches!(q, '"' | '\'')) {
                    let mut part = String::new();
                    let mut j = i + 1;
                    while j < c.len() && c[j] != q {
                        if c[j] == '\\' {
                            j += 1;
                        }
                        if let Some(&d) = c.get(j) {
                            part.push(d);
                        }
                        j += 1;
                    }
                    if j < c.len() && c.get(j + 1) == Some(&']') {
                        parts.push(part);
                        i = j + 2;
                        start = i;
                    }
                }
            }
            _ => i += 1,
        }
    }
    parts.push(plain(&c[start..]));
    parts
        .into_iter()
        .filter(|p| !p.is_empty() && !p.chars().all(|c| c.is_ascii_digit()))
        .collect()
}

#[derive(Debug, Clone)]
enum Seg {
    Name(&'static str),
    Union(&'static str, &'static str),
    Index,
    Slice,
    Wild,
    Desc(&'static str),
}

#[derive(Debug, Clone)]
struct TestRule {
    segs: Vec<Seg>,
    context: Option<&'static str>,
    checked: bool,
}

impl TestRule {
    fn path(&self) -> String {
        let mut p = String::from("$");
        for s in &self.segs {
            match s {
                Seg::Name(n) => p.push_str(&format!(".{n}")),
                Seg::Union(a, b) => p.push_str(&format!("['{a}','{b}']")),
                Seg::Index => p.push_str("[0]"),
                Seg::Slice => p.push_str("[:2]"),
                Seg::Wild => p.push_str("[*]"),
                Seg::Desc(n) => p.push_str(&format!("..{n}")),
            }
        }
        p
    }

    /// Does `names` (canonical) equal a name sequence of `segs`?
    fn whole(segs: &[Seg], names: &[String]) -> bool {
        let Some((first, rest)) = segs.split_first() else {
            return names.is_empty();
        };
        let is = |n: &str, i: usize| names.get(i).is_some_and(|m| *m == canonical(n));
        match first {
            Seg::Name(n) => is(n, 0) && TestRule::whole(rest, &names[1..]),
            Seg::Union(a, b) => (is(a, 0) || is(b, 0)) && TestRule::whole(rest, &names[1..]),
            Seg::Index | Seg::Slice => TestRule::whole(rest, names),
            Seg::Wild => {
                TestRule::whole(rest, names)
                    || (!names.is_empty() && TestRule::whole(rest, &names[1..]))
            }
            Seg::Desc(n) => {
                (0..names.len()).any(|k| is(n, k) && TestRule::whole(rest, &names[k + 1..]))
            }
        }
    }

    /// Does a name sequence of the rule end `names`?
    fn ends(&self, names: &[String]) -> bool {
        (0..=names.len()).any(|j| TestRule::whole(&self.segs, &names[j..]))
    }
}

/// The rule a value with name path `names` is a look-alike of: the lowest
/// checked rule matching the shortest prefix that matches any.
fn look_alike_of(rules: &[TestRule], names: &[String]) -> Option<usize> {
    (0..=names.len()).find_map(|i| rules.iter().position(|r| r.checked && r.ends(&names[..i])))
}

fn name_path(keys: &[&str]) -> Vec<String> {
    keys.iter()
        .flat_map(|k| split(k))
        .map(|p| canonical(&p))
        .collect()
}

fn is_data(v: &Value) -> bool {
    match v {
        Value::String(s) => !looks_like_envelope(s),
        Value::Number(_) | Value::Bool(_) => true,
        _ => false,
    }
}

/// Keys (as sent) of every plaintext data leaf of `v` that is a look-alike,
/// and of every member of a look-alike object whose value no rule selects
/// (`selected`: the normalized locations the rules select).
fn plaintext_look_alikes(
    v: &Value,
    keys: &mut Vec<String>,
    steps: &mut Vec<Step<'static>>,
    ctx: (&[TestRule], &[String]),
    out: &mut Vec<Vec<String>>,
) {
    let (rules, selected) = ctx;
    match v {
        Value::Object(o) => {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let inside = look_alike_of(rules, &name_path(&refs)).is_some();
            for (k, x) in o {
                keys.push(k.clone());
                steps.push(Step::Key(k.clone().into()));
                if inside && !selected.contains(&location::normalized(steps)) {
                    out.push(keys.clone());
                }
                plaintext_look_alikes(x, keys, steps, ctx, out);
                steps.pop();
                keys.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                steps.push(Step::Index(i));
                plaintext_look_alikes(x, keys, steps, ctx, out);
                steps.pop();
            }
        }
        v if is_data(v) => {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            if look_alike_of(rules, &name_path(&refs)).is_some() {
                out.push(keys.clone());
            }
        }
        _ => {}
    }
}

fn carries_data(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => a.iter().any(carries_data),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn is_envelope(v: &Value) -> bool {
    v.as_str().is_some_and(looks_like_envelope)
}

/// Walks the original `d`, the plain transform's `a` and the sealing
/// route's `b` together (seal mode, property 2).
fn compare_sealed(
    d: &Value,
    a: &Value,
    b: &Value,
    keys: &mut Vec<String>,
    rules: &[TestRule],
    r: &Keyring,
) -> Result<(), String> {
    if is_envelope(b) && !is_envelope(a) {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let Some(rule) = look_alike_of(rules, &name_path(&refs)) else {
            return Err(format!("sealed at {keys:?}, not a look-alike"));
        };
        if !carries_data(d) {
            return Err(format!("sealed {d} at {keys:?}, which holds no data"));
        }
        let context = match rules[rule].context {
            Some(c) => c.to_string(),
            None => match keys.last() {
                Some(k) => split(k).last().map_or_else(|| k.clone(), |p| p.to_string()),
                None => "$".to_string(),
            },
        };
        let opened = r
            .open_at(b.as_str().unwrap_or_default(), &context, None, NOW)
            .map_err(|e| format!("look-alike at {keys:?} does not open with {context:?}: {e:?}"))?;
        return if opened.value == *d {
            Ok(())
        } else {
            Err(format!(
                "look-alike at {keys:?} opens to {} not {d}",
                opened.value
            ))
        };
    }
    match (d, a, b) {
        (_, a, b) if is_envelope(a) => {
            if is_envelope(b) {
                Ok(())
            } else {
                Err(format!("{keys:?}: sealed by the plain transform only"))
            }
        }
        (Value::Object(od), Value::Object(oa), Value::Object(ob)) => {
            if oa.len() != ob.len() || od.len() != oa.len() {
                return Err(format!("{keys:?}: members differ"));
            }
            for ((k, xd), (xa, xb)) in od.iter().zip(oa.values().zip(ob.values())) {
                keys.push(k.clone());
                compare_sealed(xd, xa, xb, keys, rules, r)?;
                keys.pop();
            }
            Ok(())
        }
        (Value::Array(vd), Value::Array(va), Value::Array(vb)) => {
            if va.len() != vb.len() || vd.len() != va.len() {
                return Err(format!("{keys:?}: elements differ"));
            }
            for (xd, (xa, xb)) in vd.iter().zip(va.iter().zip(vb.iter())) {
                compare_sealed(xd, xa, xb, keys, rules, r)?;
            }
            Ok(())
        }
        (_, a, b) if a == b => Ok(()),
        (_, a, b) => Err(format!("{keys:?}: {a} became {b}")),
    }
}

/// Equal, with every envelope equal to every other (fresh nonces).
fn same_modulo_envelopes(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (a, b) if is_envelope(a) && is_envelope(b) => true,
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((k, v), (l, w))| k == l && same_modulo_envelopes(v, w))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_modulo_envelopes(v, w))
        }
        (a, b) => a == b,
    }
}

// ---------------------------------------------------------------------------
// Generators

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        4 => select(RULE_NAMES).prop_map(Seg::Name),
        1 => (select(RULE_NAMES), select(RULE_NAMES)).prop_map(|(a, b)| Seg::Union(a, b)),
        1 => Just(Seg::Index),
        1 => Just(Seg::Slice),
        1 => Just(Seg::Wild),
        1 => select(RULE_NAMES).prop_map(Seg::Desc),
    ]
}

fn rules() -> impl Strategy<Value = Vec<TestRule>> {
    prop::collection::vec(
        (
            prop::collection::vec(seg(), 1..4),
            prop::option::of(Just("named")),
            prop::bool::weighted(0.85),
        )
            .prop_map(|(segs, context, checked)| TestRule {
                segs,
                context,
                checked,
            }),
        1..4,
    )
}

fn doc() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-100i64..100).prop_map(Value::from),
        "[a-z]{0,3}".prop_map(Value::String),
        Just(Value::String("fs1:x".into())),
    ];
    leaf.prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((select(KEYS), inner), 0..4).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn compiled(rules: &[TestRule], mode: LookAlikeMode) -> (Vec<FieldRule>, RequestShape) {
    let fr: Vec<FieldRule> = rules
        .iter()
        .map(|r| FieldRule {
            path: FieldPath::parse(&r.path()).unwrap_or_else(|e| panic!("{e}")),
            context: r.context.map(str::to_string),
        })
        .collect();
    let checked: Vec<bool> = rules.iter().map(|r| r.checked).collect();
    let look_alikes = LookAlikes::compile(&fr, &checked, mode).expect("automaton");
    (
        fr,
        RequestShape {
            look_alikes,
            schema: None,
            ..RequestShape::default()
        },
    )
}

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("output is JSON")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// (1) Refused exactly when the plain transform would let a look-alike
    /// with data through; otherwise the same output.
    #[test]
    fn refuse_mode_refuses_exactly_the_plaintext_look_alikes(d in doc(), rs in rules()) {
        let r = ring();
        let (fr, shape) = compiled(&rs, LookAlikeMode::Refuse);
        let input = serde_json::to_vec(&d).expect("doc");
        let (plain, _) = encrypt_json(&input, &fr, &r, NOW, &[], 64).expect("plain transform");
        let plain = parse(&plain);
        let selected = locations(&input, &fr).expect("locations");
        let mut leaks = Vec::new();
        plaintext_look_alikes(&plain, &mut Vec::new(), &mut Vec::new(), (&rs, &selected), &mut leaks);
        match encrypt_request(&input, &fr, &shape, &r, NOW, &[], 64) {
            Err(StreamError::LookAlike { rule, location }) => {
                prop_assert!(!leaks.is_empty(), "refused for nothing: {} {} doc {}", rule, location, d);
                prop_assert!(fr.iter().any(|f| f.path.as_str() == rule));
            }
            Ok((out, _)) => {
                prop_assert!(leaks.is_empty(), "look-alikes {:?} forwarded in plaintext: doc {} rules {:?}", leaks, d, rs);
                prop_assert!(same_modulo_envelopes(&parse(&out), &plain));
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    /// (2) Sealed look-alikes: none left in plaintext, nothing else touched,
    /// each opens to what was sent.
    #[test]
    fn seal_mode_leaves_no_plaintext_look_alike(d in doc(), rs in rules()) {
        let r = ring();
        let (fr, shape) = compiled(&rs, LookAlikeMode::Seal);
        let input = serde_json::to_vec(&d).expect("doc");
        let (plain, _) = encrypt_json(&input, &fr, &r, NOW, &[], 64).expect("plain transform");
        let plain = parse(&plain);
        let (out, _) = encrypt_request(&input, &fr, &shape, &r, NOW, &[], 64).expect("seal mode");
        let out = parse(&out);
        let selected = locations(&input, &fr).expect("locations");
        let mut leaks = Vec::new();
        plaintext_look_alikes(&out, &mut Vec::new(), &mut Vec::new(), (&rs, &selected), &mut leaks);
        prop_assert!(leaks.is_empty(), "left in plaintext: {:?} doc {} rules {:?} out {}", leaks, d, rs, out);
        if let Err(e) = compare_sealed(&d, &plain, &out, &mut Vec::new(), &rs, &r) {
            prop_assert!(false, "{} doc {} rules {:?} out {}", e, d, rs, out);
        }
    }

    /// (3) Any spelling of a chain of rule names at the rule's own place is
    /// sealed by the rule, whatever the look-alike mode.
    #[test]
    fn the_matcher_seals_every_spelling(
        chain in prop::collection::vec(select(&["ssn", "card", "number", "id", "kind"][..]), 1..4),
        picks in prop::collection::vec(0usize..8, 3),
        nul in prop::collection::vec(any::<bool>(), 3),
        leaf in prop_oneof!["[a-z]{1,4}".prop_map(Value::String), (0i64..9).prop_map(Value::from)],
    ) {
        let r = ring();
        let path = format!("$.{}", chain.join("."));
        let rule = TestRule { segs: chain.iter().map(|n| Seg::Name(n)).collect(), context: None, checked: true };
        let (fr, shape) = compiled(std::slice::from_ref(&rule), LookAlikeMode::Refuse);
        prop_assert_eq!(fr[0].path.as_str(), path.as_str());
        let mut v = leaf.clone();
        for (i, name) in chain.iter().enumerate().rev() {
            let spellings: Vec<&str> = SPELLINGS.iter().filter(|(_, c)| c == name).map(|(s, _)| *s).collect();
            let mut key = spellings[picks[i] % spellings.len()].to_string();
            if nul[i] {
                key.push_str("\u{0}junk");
            }
            v = Value::Object([(key, v)].into_iter().collect());
        }
        let input = serde_json::to_vec(&v).expect("doc");
        for (out, _) in [
            encrypt_json(&input, &fr, &r, NOW, &[], 64).expect("plain"),
            encrypt_request(&input, &fr, &shape, &r, NOW, &[], 64).expect("checked"),
        ] {
            let out = parse(&out);
            let mut at = &out;
            for _ in &chain {
                at = at.as_object().and_then(|o| o.values().next()).expect("member");
            }
            prop_assert!(is_envelope(at), "{} not sealed in {}", v, out);
        }
    }
}

#[test]
fn the_issue_s_examples() {
    let r = ring();
    let rs = vec![
        TestRule {
            segs: vec![Seg::Name("ssn")],
            context: None,
            checked: true,
        },
        TestRule {
            segs: vec![Seg::Name("card"), Seg::Name("number")],
            context: None,
            checked: true,
        },
    ];
    let (fr, shape) = compiled(&rs, LookAlikeMode::Refuse);
    for body in [
        r#"{"user": {"ssn": "078-05-1120"}}"#,
        r#"[{"ssn": "078-05-1120"}]"#,
        r#"{"card": [{"number": "4111"}]}"#,
        r#"{"card.number": "4111"}"#,
        r#"{"wrap": {"CARD": {"Number": 4111}}}"#,
        r#"{"contacts": {"x": {"card[number]": true}}}"#,
    ] {
        match encrypt_request(body.as_bytes(), &fr, &shape, &r, NOW, &[], 64) {
            Err(StreamError::LookAlike { location, .. }) => {
                assert!(
                    !location.contains("078") && !location.contains("4111"),
                    "{location}"
                )
            }
            other => panic!(
                "{body}: {:?}",
                other.map(|(o, _)| String::from_utf8_lossy(&o).into_owned())
            ),
        }
    }
    for body in [
        r#"{"items": [{"number": "4111"}]}"#,
        r#"{"user": {"ssn": null, "card": {"number": []}}}"#,
        r#"{"ssn": "078-05-1120", "card": {"number": "4111"}}"#,
    ] {
        let (out, _) = encrypt_request(body.as_bytes(), &fr, &shape, &r, NOW, &[], 64)
            .unwrap_or_else(|e| panic!("{body}: {e}"));
        let out = String::from_utf8(out).expect("utf8");
        assert!(
            !out.contains("078-05") && (body.contains("items") || !out.contains("4111")),
            "{out}"
        );
    }
}
