//! Where something is written in the YAML file, for an error's line and
//! column, from the YAML parser's own positions: the path to the node is
//! followed through the parsed document, and the parser's mark of the node
//! found is the answer. Nothing is searched for in the text.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A place in the config file: the key as messages show it
/// (`routes[0] (users).match.path`) and the path to its node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct At {
    shown: String,
    path: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

impl At {
    /// The top-level key `key`.
    pub(crate) fn top(key: &str) -> At {
        At::default().key(key)
    }

    /// Member `key` of this mapping.
    pub(crate) fn key(&self, key: &str) -> At {
        let mut at = self.clone();
        if !at.shown.is_empty() {
            at.shown.push('.');
        }
        at.shown.push_str(key);
        at.path.push(Step::Key(key.to_owned()));
        at
    }

    /// Element `i` of this sequence.
    pub(crate) fn index(&self, i: usize) -> At {
        let mut at = self.clone();
        at.shown.push_str(&format!("[{i}]"));
        at.path.push(Step::Index(i));
        at
    }

    /// Element `i` of this sequence, shown with its name: `routes[0] (users)`.
    pub(crate) fn item(&self, i: usize, name: &str) -> At {
        let mut at = self.index(i);
        at.shown.push_str(&format!(" ({name})"));
        at
    }

    /// The key as messages show it.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// 1-based (line, column) of the node in `text`, as the YAML parser
    /// marked it; None when it is not written (a default).
    pub(crate) fn position(&self, text: &str) -> Option<(usize, usize)> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        match Seek(&self.path).deserialize(de) {
            Ok(()) => None,
            // The text parsed once already: the one error is ours, at the node.
            Err(e) => e.location().map(|l| (l.line(), l.column())),
        }
    }
}

/// Follows `path` through the document; at its end, fails, so that the
/// parser attaches its mark of that node to the error.
struct Seek<'p>(&'p [Step]);

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0 {
            [] => d.deserialize_any(Here),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a node on the path")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(want), rest)) = self.0.split_first() else {
            return drain_map(map);
        };
        while let Some(key) = map.next_key::<String>()? {
            if &key == want {
                map.next_value_seed(Seek(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(want), rest)) = self.0.split_first() else {
            return drain_seq(seq);
        };
        let mut i = 0;
        loop {
            let more = if i == *want {
                seq.next_element_seed(Seek(rest))?
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    // A scalar where the path goes on: the node is not written.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The node found: every kind of node is refused.
struct Here;

impl Visitor<'_> for Here {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nothing: this is where an error is")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment naming k2 and /run/k2.key
listen: { address: \"0.0.0.0:8443\", tls: { cert: certs/server.crt, key: certs/server.key } }
upstreams:
  legacy: { url: \"http://0.0.0.0:8443\" }
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
    fn nodes_are_found_by_their_path_not_by_their_text() {
        let at = |a: At| a.position(TEXT);
        // The upstream URL holds the same text as the listener address.
        assert_eq!(at(At::top("listen").key("address")), Some((2, 20)));
        assert_eq!(
            at(At::top("upstreams").key("legacy").key("url")),
            Some((4, 18))
        );
        assert_eq!(at(At::top("listen").key("tls").key("key")), Some((2, 72)));
        let ring = At::top("keys").key("ring");
        assert_eq!(at(ring.index(1).key("id")), Some((9, 11)));
        assert_eq!(at(ring.index(1).key("file")), Some((10, 13)));
        // Route names: under `routes`, not the key id spelled the same.
        assert_eq!(at(At::top("routes").index(0).key("name")), Some((12, 11)));
        assert_eq!(at(At::top("routes").index(1).key("name")), Some((14, 13)));
        // A whole mapping is where it starts.
        assert_eq!(at(At::top("routes").index(0)), Some((12, 5)));
        // Not written: no position.
        assert_eq!(at(At::top("admin").key("address")), None);
        assert_eq!(at(At::top("routes").index(5)), None);
        assert_eq!(at(At::top("keys").key("active").key("x")), None);
    }

    #[test]
    fn keys_are_shown_with_names_and_indices() {
        let r = At::top("routes").item(0, "users").key("match").key("path");
        assert_eq!(r.shown(), "routes[0] (users).match.path");
        assert_eq!(At::top("keys").key("ring").index(2).shown(), "keys.ring[2]");
    }
}
