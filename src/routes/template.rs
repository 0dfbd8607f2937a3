//! Path templates (`/api/users/by-email/{email}`), compiled at load: which
//! segments are literal, which are captured, and how the forwarded path is
//! rebuilt from them.
//!
//! A template route takes every path under its literal prefix (the
//! segments before the first capture), so a request that does not fit the
//! template (`/by-email/a/b`, `/by-email/`) is refused by it, never passed
//! to a later route that would forward the segment in plaintext.

use crate::transform::index::IndexSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segs: Vec<Seg>,
    prefix: String,
}

/// What a captured segment becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathParamAction {
    /// The request is refused (400).
    Refuse,
    /// The segment is replaced by the blind index of its decoded value.
    Index(IndexSpec),
}

impl PathTemplate {
    /// Is `path` a template (does it hold `{`)?
    pub fn is_template(path: &str) -> bool {
        path.contains('{')
    }

    pub fn parse(path: &str) -> Result<PathTemplate, String> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err("must start with /".into());
        };
        let mut segs = Vec::new();
        for s in rest.split('/') {
            if let Some(name) = s.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(format!(
                        "{{{name}}}: a parameter name is letters, digits, _ and -"
                    ));
                }
                if segs.iter().any(|x| x == &Seg::Param(name.to_owned())) {
                    return Err(format!("{{{name}}} appears twice"));
                }
                segs.push(Seg::Param(name.to_owned()));
            } else if s.contains(['{', '}']) {
                return Err("a parameter must be a whole segment, e.g. /users/{id}".into());
            } else if s.is_empty() || s == "." || s == ".." || s.contains(['%', ';']) {
                return Err("literal segments must be canonical (no empty, dot, %-escaped or ;param segments)".into());
            } else {
                segs.push(Seg::Literal(s.to_owned()));
            }
        }
        let mut prefix = String::new();
        for s in &segs {
            match s {
                Seg::Literal(l) => {
                    prefix.push('/');
                    prefix.push_str(l);
                }
                Seg::Param(_) => break,
            }
        }
        if !segs.iter().any(|s| matches!(s, Seg::Param(_))) {
            return Err("a template needs a {parameter}".into());
        }
        if prefix.is_empty() {
            return Err("a template must start with a literal segment".into());
        }
        Ok(PathTemplate {
            source: path.to_owned(),
            segs,
            prefix,
        })
    }

    /// As written in the config (what logs show instead of the path).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The literal segments before the first capture: the route's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().filter_map(|s| match s {
            Seg::Param(p) => Some(p.as_str()),
            Seg::Literal(_) => None,
        })
    }

    /// The captured segments of the canonical match path `path` (`;params`
    /// cut), in template order, or None when it does not fit. A trailing
    /// slash is allowed.
    pub fn capture<'p>(&self, path: &'p str, case_insensitive: bool) -> Option<Vec<&'p str>> {
        let rest = path.strip_prefix('/')?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != self.segs.len() {
            return None;
        }
        let mut out = Vec::new();
        for (seg, part) in self.segs.iter().zip(parts) {
            match seg {
                Seg::Literal(l) => {
                    let eq = if case_insensitive {
                        l.eq_ignore_ascii_case(part)
                    } else {
                        l == part
                    };
                    if !eq {
                        return None;
                    }
                }
                Seg::Param(_) => {
                    if part.is_empty() {
                        return None;
                    }
                    out.push(part);
                }
            }
        }
        Some(out)
    }

    /// The path with each capture replaced by `values` (already encoded
    /// for a path segment), in template order.
    pub fn build(&self, values: &[String]) -> String {
        let mut out = String::new();
        let mut v = values.iter();
        for s in &self.segs {
            out.push('/');
            match s {
                Seg::Literal(l) => out.push_str(l),
                Seg::Param(_) => out.push_str(v.next().map_or("", String::as_str)),
            }
        }
        out
    }
}

/// Percent-decodes a canonical path segment once (no `+` rule in paths);
/// None when an escape is invalid or the result is not UTF-8.
pub fn decode_segment(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes `s` as one path segment: unreserved characters and `:` kept.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_capture_whole_segments() {
        let t = PathTemplate::parse("/api/users/by-email/{email}").expect("t");
        assert_eq!(t.prefix(), "/api/users/by-email");
        assert_eq!(t.params().collect::<Vec<_>>(), ["email"]);
        assert_eq!(
            t.capture("/api/users/by-email/ada@example.com", false),
            Some(vec!["ada@example.com"])
        );
        assert_eq!(
            t.capture("/api/users/by-email/ada%2B1@x.com/", false),
            Some(vec!["ada%2B1@x.com"])
        );
        assert_eq!(t.capture("/api/users/by-email/", false), None);
        assert_eq!(t.capture("/api/users/by-email", false), None);
        assert_eq!(t.capture("/api/users/by-email/a/b", false), None);
        assert_eq!(t.capture("/API/users/by-email/a", false), None);
        assert_eq!(t.capture("/API/users/by-email/a", true), Some(vec!["a"]));
        assert_eq!(
            t.build(&["fsi1:k1:x".into()]),
            "/api/users/by-email/fsi1:k1:x"
        );
        let two = PathTemplate::parse("/t/{tenant}/users/{id}").expect("t");
        assert_eq!(
            two.capture("/t/acme/users/7", false),
            Some(vec!["acme", "7"])
        );
        for bad in [
            "/{x}",
            "/a/{x}/{x}",
            "/a/b{x}",
            "/a/{}",
            "/a/{x y}",
            "/a//{x}",
            "/a/b",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(decode_segment("ada%40x.com").as_deref(), Some("ada@x.com"));
        assert_eq!(decode_segment("a+b").as_deref(), Some("a+b"));
        assert_eq!(decode_segment("%zz"), None);
        assert_eq!(decode_segment("%C0%B3"), None);
        assert_eq!(encode_segment("fsi1:k1:a-_b"), "fsi1:k1:a-_b");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
