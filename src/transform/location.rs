//! Where a value is in a document, as the walk's stack of steps: free to
//! keep, formatted only when a failure or a diagnostic needs it.

use std::borrow::Cow;

use super::names::normalized_name;

/// One step down from the root: a member name (unescaped) or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    Key(Cow<'a, str>),
    Index(usize),
}

impl Step<'_> {
    /// The same step, owning its name.
    pub fn into_owned(self) -> Step<'static> {
        match self {
            Step::Key(k) => Step::Key(Cow::Owned(k.into_owned())),
            Step::Index(i) => Step::Index(i),
        }
    }
}

/// Default context of the value at `path`: the nearest member name on the
/// way to the root, or `$` when there is none.
pub fn context<'p>(path: &'p [Step<'_>]) -> &'p str {
    path.iter()
        .rev()
        .find_map(|s| match s {
            Step::Key(k) => Some(k.as_ref()),
            Step::Index(_) => None,
        })
        .unwrap_or("$")
}

/// RFC 9535 normalized path, e.g. `$['a'][0]`.
pub fn normalized(path: &[Step<'_>]) -> String {
    render(path, &mut |out, k| {
        out.push_str("['");
        push_escaped_name(out, k);
        out.push_str("']");
    })
}

/// The location for logs and error messages. Member names can be data
/// (`$['by_ssn']['078-05-1120']`), so only a name the rule itself names
/// (`names`, normalized) is shown, in its normalized form; every other
/// member is `[*]`. Indices are shown.
pub fn redacted(path: &[Step<'_>], names: &[String]) -> String {
    render(path, &mut |out, k| match shown_name(k, names) {
        Some(n) => {
            out.push_str("['");
            push_escaped_name(out, &n);
            out.push_str("']");
        }
        None => out.push_str("[*]"),
    })
}

fn render(path: &[Step<'_>], key: &mut dyn FnMut(&mut String, &str)) -> String {
    let mut out = String::with_capacity(1 + 16 * path.len());
    out.push('$');
    for step in path {
        match step {
            Step::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
            Step::Key(k) => key(&mut out, k),
        }
    }
    out
}

/// Member `key` as a redacted location shows it: normalized, when each of
/// its parts (split as `name_parts` does, digits kept) is one of `names`.
fn shown_name(key: &str, names: &[String]) -> Option<String> {
    let n = normalized_name(key);
    let mut parts = n
        .split(['.', '/', '[', ']'])
        .filter(|p| !p.is_empty())
        .peekable();
    parts.peek()?;
    parts.all(|p| names.iter().any(|m| m == p)).then_some(n)
}

/// Escaping of member names in normalized paths (RFC 9535 §2.7).
fn push_escaped_name(out: &mut String, name: &str) {
    for c in name.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::FieldPath;

    fn key(k: &str) -> Step<'_> {
        Step::Key(Cow::Borrowed(k))
    }

    #[test]
    fn redacted_locations_show_only_rule_names() {
        let path = FieldPath::parse("$.by_ssn[*]['card.number']").expect("path");
        let d = [
            key("BY_SSN"),
            key("078-05-1120"),
            Step::Index(2),
            key("Card.Number"),
        ];
        assert_eq!(
            redacted(&d, path.names()),
            "$['byssn'][*][2]['card.number']",
            "normalized: without word separators"
        );
        assert_eq!(redacted(&d, &[]), "$[*][*][2][*]");
        assert_eq!(redacted(&[key("by_ssn.078-05-1120")], path.names()), "$[*]");
        assert_eq!(
            redacted(&[key("by_ssn\u{0}078-05-1120")], path.names()),
            "$['byssn']"
        );
    }

    #[test]
    fn normalized_escapes() {
        let b = [key("it's\\\u{1}\n"), Step::Index(3)];
        assert_eq!(normalized(&b), "$['it\\'s\\\\\\u0001\\n'][3]");
        assert_eq!(context(&b), "it's\\\u{1}\n");
        assert_eq!(context(&[]), "$");
    }
}
