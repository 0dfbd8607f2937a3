//! Proptest generators of JSONPath expressions in the supported subset,
//! shared by the property suites. Each suite passes its own member names.
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::select;

/// A name written inside a quoted selector, with RFC 9535 escapes.
pub fn escape(name: &str, quote: char) -> String {
    let mut out = String::new();
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

pub fn selector(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    let opt = |r: std::ops::Range<i64>| prop::option::of(r);
    prop_oneof![
        select(keys).prop_map(|k| format!("'{}'", escape(k, '\''))),
        select(keys).prop_map(|k| format!("\"{}\"", escape(k, '"'))),
        (-5i64..6).prop_map(|i| i.to_string()),
        Just("*".to_string()),
        (opt(-6..7), opt(-6..7), opt(-3..4)).prop_map(|(s, e, st)| {
            let f = |x: Option<i64>| x.map(|v| v.to_string()).unwrap_or_default();
            match st {
                Some(st) => format!("{}:{}:{}", f(s), f(e), st),
                None => format!("{}:{}", f(s), f(e)),
            }
        }),
    ]
}

/// `short` names appear in dot notation, so they must be plain identifiers.
pub fn segment(
    keys: &'static [&'static str],
    short: &'static [&'static str],
) -> impl Strategy<Value = String> {
    prop_oneof![
        select(short).prop_map(|k| format!(".{k}")),
        Just(".*".to_string()),
        select(short).prop_map(|k| format!("..{k}")),
        Just("..*".to_string()),
        prop::collection::vec(selector(keys), 1..4).prop_map(|s| format!("[{}]", s.join(","))),
        prop::collection::vec(selector(keys), 1..3)
            .prop_map(|s| format!("..[ {} ]", s.join(" , "))),
    ]
}

pub fn path(
    keys: &'static [&'static str],
    short: &'static [&'static str],
) -> impl Strategy<Value = String> {
    prop::collection::vec(segment(keys, short), 0..4).prop_map(|s| format!("${}", s.concat()))
}
