//! Where something is written in the YAML text, for an error's line and
//! column. The raw structs carry no positions once deserialized, so errors
//! found after parsing point at the text that says the thing they are about.

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Needle {
    /// The first line (not a comment) where this text appears.
    Text(String),
    /// The value written for `key:` (`key: value`, `{ key: "value" }`), on
    /// the line of `after` or below it.
    Value {
        key: String,
        value: String,
        after: Option<Box<Needle>>,
    },
    /// The `name:` of the route with this name, below the top-level `routes:`.
    Route(String),
}

impl Needle {
    pub(crate) fn value(key: &str, value: &str) -> Needle {
        Needle::Value {
            key: key.to_string(),
            value: value.to_string(),
            after: None,
        }
    }

    /// `key: value` at or below where `after` is written.
    pub(crate) fn value_after(key: &str, value: &str, after: Needle) -> Needle {
        Needle::Value {
            key: key.to_string(),
            value: value.to_string(),
            after: Some(Box::new(after)),
        }
    }

    /// The ring entry `id: <id>` under `keys:`.
    pub(crate) fn key_id(id: &str) -> Needle {
        Needle::value_after("id", id, Needle::Text("keys:".into()))
    }
}

/// 1-based (line, column) of the needle in `text`.
pub(crate) fn locate(text: &str, needle: &Needle) -> Option<(usize, usize)> {
    match needle {
        Needle::Text(t) => find_text(text, 0, t),
        Needle::Value { key, value, after } => {
            let from = after
                .as_deref()
                .and_then(|a| locate(text, a))
                .map_or(0, |(l, _)| l - 1);
            find_value(text, from, key, value)
                .or_else(|| find_text(text, from, value))
                .or_else(|| find_text(text, 0, value))
        }
        Needle::Route(name) => {
            let from = text
                .lines()
                .position(|l| l.starts_with("routes:"))
                .unwrap_or(0);
            find_value(text, from, "name", name).or_else(|| find_text(text, from, name))
        }
    }
}

fn lines_from(text: &str, from: usize) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .skip(from)
        .filter(|(_, l)| !l.trim_start().starts_with('#'))
}

fn find_text(text: &str, from: usize, needle: &str) -> Option<(usize, usize)> {
    if needle.is_empty() {
        return None;
    }
    lines_from(text, from).find_map(|(i, line)| line.find(needle).map(|c| (i + 1, c + 1)))
}

/// A value ends where a plain YAML scalar in flow or block style would.
fn ends_token(rest: &str) -> bool {
    rest.chars()
        .next()
        .is_none_or(|c| c.is_whitespace() || matches!(c, ',' | '}' | ']' | '"' | '\'' | '#'))
}

fn find_value(text: &str, from: usize, key: &str, value: &str) -> Option<(usize, usize)> {
    let pattern = format!("{key}:");
    for (i, line) in lines_from(text, from) {
        let mut start = 0;
        while let Some(off) = line[start..].find(&pattern) {
            let at = start + off;
            start = at + pattern.len();
            let before_ok = line[..at]
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || matches!(c, '{' | ',' | '-'));
            if !before_ok {
                continue;
            }
            let after = &line[start..];
            let trimmed = after.trim_start();
            let unquoted = trimmed.trim_start_matches(['"', '\'', '[']);
            if let Some(rest) = unquoted.strip_prefix(value) {
                if ends_token(rest) {
                    let col = line.len() - unquoted.len();
                    return Some((i + 1, col + 1));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment naming k2 and /run/k2.key
listen: { address: \"0.0.0.0:8443\", tls: { cert: certs/server.crt, key: certs/server.key } }
upstreams:
  legacy: { url: \"http://127.0.0.1:8443\" }
keys:
  active: k2
  ring:
    - { id: k1, file: /run/k1.key }
    - id: k2
      file: /run/k2.key
routes:
  - name: k1
    match: { path_prefix: /api }
  - { name: \"patients\", match: { path_prefix: /api/patients } }
";

    #[test]
    fn finds_values_by_key_not_by_first_mention() {
        // The upstream URL holds the same text as the listener address.
        assert_eq!(
            locate(TEXT, &Needle::value("address", "0.0.0.0:8443")),
            Some((2, 21))
        );
        assert_eq!(
            locate(TEXT, &Needle::value("key", "certs/server.key")),
            Some((2, 72))
        );
        assert_eq!(locate(TEXT, &Needle::key_id("k2")), Some((9, 11)));
        let file = Needle::value_after("file", "/run/k2.key", Needle::key_id("k2"));
        assert_eq!(locate(TEXT, &file), Some((10, 13)));
        // Route names: below `routes:`, not the key id spelled the same.
        assert_eq!(locate(TEXT, &Needle::Route("k1".into())), Some((12, 11)));
        assert_eq!(
            locate(TEXT, &Needle::Route("patients".into())),
            Some((14, 14))
        );
        // A value is a whole token: `k` is not `k1`.
        assert_eq!(find_value(TEXT, 0, "id", "k"), None);
        assert_eq!(locate(TEXT, &Needle::Text(String::new())), None);
    }
}
