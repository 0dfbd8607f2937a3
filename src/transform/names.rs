//! Member names as backends bind them: the one normalization (NUL cut,
//! word separators, case folding) shared by the rule matcher, the
//! look-alike automaton and redacted locations, and the parts a binder
//! expands a name into.

use std::borrow::Cow;

/// The one normalization of member names, shared by the rule matcher and
/// the look-alike check (`shape`): the name up to its first NUL (C parsers
/// and the libraries built on them stop there, so `"ssn\u0000x"` is `ssn`
/// to them), without the ASCII word separators `_` and `-` (pydantic's
/// `to_camel` aliases, Rails' `underscore`/`camelize` key transforms,
/// Jackson and .NET naming policies bind `card_number`, `cardNumber`,
/// `CardNumber` and `card-number` to one field), each other character
/// folded by [`fold_char`].
pub fn normalized_name(name: &str) -> String {
    fold_name(name).collect()
}

/// [`normalized_name`] as an iterator, allocation-free.
pub(crate) fn fold_name(name: &str) -> impl Iterator<Item = char> + '_ {
    until_nul(name)
        .chars()
        .filter(|c| !is_word_separator(*c))
        .map(fold_char)
}

/// `_` and `-`: dropped from names by [`normalized_name`].
#[inline]
pub(crate) fn is_word_separator(c: char) -> bool {
    c == '_' || c == '-'
}

pub(crate) fn until_nul(name: &str) -> &str {
    // A byte search: `str::find` of a char costs more than the short
    // member names it runs on (it is called per name and rule).
    match name.bytes().position(|b| b == 0) {
        Some(i) => name.get(..i).unwrap_or(name),
        None => name,
    }
}

/// Case folding that puts together every pair of characters some backend's
/// case-insensitive binding treats as equal: Go's encoding/json and ASP.NET
/// (Unicode simple case folding: `ſ`~`s`, Kelvin sign~`k`), Java's
/// `equalsIgnoreCase` (equal upper cases, or equal lower cases of the upper
/// cases: dotless `ı`~`i`, `İ`~`i`) and .NET's `OrdinalIgnoreCase`
/// (invariant simple upper-casing). The canonical form of `c` is the simple
/// lower case of its simple upper case, which all of those relations keep
/// (two characters any of them calls equal get the same form). Folding too
/// much only seals or refuses more; folding too little stores plaintext.
pub(crate) fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
        match (it.next(), it.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        }
    }
    // `to_uppercase`/`to_lowercase` are the full mappings; where those are
    // several characters the simple mapping is the character itself, but
    // for U+0130 (whose simple lower case is `i`) and three characters
    // Unicode simple-folds onto another (CaseFolding.txt, `S` status).
    let c = match c {
        '\u{1FD3}' => '\u{390}',
        '\u{1FE3}' => '\u{3B0}',
        '\u{FB05}' => '\u{FB06}',
        c => c,
    };
    let upper = single(c.to_uppercase()).unwrap_or(c);
    if upper == '\u{130}' {
        return 'i';
    }
    single(upper.to_lowercase()).unwrap_or(upper)
}

/// Does member `key` match the rule name `folded` (already normalized)?
/// Backends written with Go's encoding/json, Json.NET, ASP.NET, Jackson
/// (case-insensitive), pydantic aliases or C parsers bind `"SSN"`, `"ſſn"`,
/// `"s_sn"`, `"ssn\u0000"` to an `ssn` field, so a rule for `ssn` must seal
/// every such spelling.
pub(crate) fn names_match(folded: &str, key: &str) -> bool {
    MemberKey::new(key).matches(folded)
}

/// A member name as the walk compares it against every rule name it tries
/// on it. Most comparisons fail on the first byte (a member no rule names),
/// so the name is not folded ahead: its first folded byte is found once,
/// and tells most names apart with no call; `matches` then folds an ASCII
/// name byte by byte while it compares and stops at the first difference;
/// only a name with a non-ASCII character before that point takes the full
/// fold.
#[derive(Clone, Copy)]
pub(crate) struct MemberKey<'k> {
    raw: &'k str,
    /// The first byte of the name's fold if it is ASCII (`END` for a name
    /// with nothing before its end or NUL but `_` and `-`), or `UNKNOWN`
    /// when that character is not ASCII.
    first: u8,
}

/// `MemberKey::first` of a name whose fold is empty.
const END: u8 = 0;
/// `MemberKey::first` of a name whose first folded character needs the
/// full fold.
const UNKNOWN: u8 = 0x80;

impl<'k> MemberKey<'k> {
    #[inline]
    pub(crate) fn new(key: &'k str) -> MemberKey<'k> {
        let first = key
            .bytes()
            .find(|&b| b != b'_' && b != b'-')
            .map_or(END, |b| match b {
                0 => END,
                0x01..=0x7F => b.to_ascii_lowercase(),
                _ => UNKNOWN,
            });
        MemberKey { raw: key, first }
    }

    /// `names_match(folded, key)`. `folded` holds no NUL (names are cut
    /// there before they are folded).
    #[inline(always)]
    pub(crate) fn matches(&self, folded: &str) -> bool {
        if self.first != UNKNOWN && folded.as_bytes().first().map_or(END, |&b| b) != self.first {
            return false;
        }
        self.matches_from_start(folded)
    }

    fn matches_from_start(&self, folded: &str) -> bool {
        let want = folded.as_bytes();
        let mut at = 0;
        for &b in self.raw.as_bytes() {
            match b {
                0 => break,
                b'_' | b'-' => {}
                // An ASCII character folds on its own and only to ASCII:
                // a difference here is a difference of the whole fold.
                0x01..=0x7F => {
                    if want.get(at) != Some(&b.to_ascii_lowercase()) {
                        return false;
                    }
                    at += 1;
                }
                // Some non-ASCII characters fold to ASCII (`ſ`, the Kelvin
                // sign): the full fold from here.
                _ => return fold_name(self.raw).eq(folded.chars()),
            }
        }
        at == want.len()
    }
}

/// The parts a backend could expand member `name` into: the name up to its
/// first NUL, split at `.`, `/`, `[` and `]` (MongoDB `$set`, Mongoose and
/// lodash expand `card.number` and `contacts.0.phone`; Spring's and
/// ASP.NET's binders read `contacts[0].phone`; JSON-Pointer-like names
/// `card/number`), array indices (all digits) and empty parts dropped. A
/// quoted bracket part (`card["number"]`, `card['a.b']`) is one part with
/// its quotes removed and its backslash escapes undone, as lodash's
/// `_.toPath` reads it (`card["n\umber"]` is `card`,`number`); elsewhere
/// backslashes and stray quotes are dropped (`dot-prop` reads `a\.b`).
/// Not folded.
pub(crate) fn name_parts(name: &str) -> impl Iterator<Item = Cow<'_, str>> + '_ {
    let s = until_nul(name);
    let b = s.as_bytes();
    let mut out: Vec<Cow<'_, str>> = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'.' | b'/' | b']' => {
                push_plain(s.get(start..i).unwrap_or(""), &mut out);
                i += 1;
                start = i;
            }
            b'[' => {
                push_plain(s.get(start..i).unwrap_or(""), &mut out);
                i += 1;
                start = i;
                if let Some((part, end)) = quoted(s, i) {
                    if b.get(end) == Some(&b']') {
                        out.push(part);
                        i = end + 1;
                        start = i;
                    }
                }
            }
            _ => i += 1,
        }
    }
    push_plain(s.get(start..).unwrap_or(""), &mut out);
    out.into_iter()
        .filter(|p| !p.is_empty() && !p.bytes().all(|b| b.is_ascii_digit()))
}

/// An unquoted part: backslashes and quotes dropped.
fn push_plain<'a>(p: &'a str, out: &mut Vec<Cow<'a, str>>) {
    if p.contains(['\\', '"', '\'']) {
        out.push(Cow::Owned(
            p.chars()
                .filter(|c| !matches!(c, '\\' | '"' | '\''))
                .collect(),
        ));
    } else {
        out.push(Cow::Borrowed(p));
    }
}

/// The quoted part starting at `s[i]` (a `"` or `'`), unescaped, and the
/// index after its closing quote; None if `s[i]` is no quote or it is not
/// closed.
fn quoted(s: &str, i: usize) -> Option<(Cow<'_, str>, usize)> {
    let q = *s.as_bytes().get(i)?;
    if q != b'"' && q != b'\'' {
        return None;
    }
    let body = s.get(i + 1..)?;
    let mut out: Option<String> = None;
    let mut chars = body.char_indices();
    while let Some((k, c)) = chars.next() {
        if c == char::from(q) {
            let part = match out {
                Some(o) => Cow::Owned(o),
                None => Cow::Borrowed(body.get(..k)?),
            };
            return Some((part, i + 1 + k + 1));
        }
        if c == '\\' {
            let o = out.get_or_insert_with(|| body.get(..k).unwrap_or("").to_owned());
            if let Some((_, e)) = chars.next() {
                o.push(e);
            }
            continue;
        }
        if let Some(o) = out.as_mut() {
            o.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_key_matches_exactly_what_its_full_fold_equals() {
        let folded = ["", "ssn", "s", "card", "cardnumber", "\u{fc}nd", "k", "1a"];
        let mut keys: Vec<String> = Vec::new();
        for base in ["", "ssn", "card", "number", "\u{fc}nd", "1a", "a"] {
            for pre in [
                "", "_", "-_-", "\u{0}", "S", "\u{17f}", "\u{212a}", "\u{dc}", "C", "1",
            ] {
                for post in ["", "\u{0}x", "_", "N", "\u{17f}"] {
                    keys.push(format!("{pre}{base}{post}"));
                }
            }
        }
        for key in &keys {
            let k = MemberKey::new(key);
            for f in folded {
                let full: String = fold_name(key).collect();
                assert_eq!(k.matches(f), full == f, "{key:?} against {f:?}");
            }
        }
    }

    #[test]
    fn folds_every_binding_s_case_rules() {
        // Java equalsIgnoreCase: dotless i, dotted capital I; Go/.NET/Unicode
        // simple folding: long s, Kelvin, Angstrom, final sigma, micro.
        for (a, b) in [
            ("ıd", "id"),
            ("İD", "id"),
            ("ſſn", "ssn"),
            ("\u{212A}ey", "key"),
            ("\u{212B}", "å"),
            ("ΣΑΣ", "σας"),
            ("ς", "σ"),
            ("µ", "μ"),
            ("ǅ", "ǆ"),
            ("ẞ", "ß"),
            ("ΐ", "ΐ"),
            ("Card", "cARD"),
        ] {
            assert_eq!(normalized_name(a), normalized_name(b), "{a} {b}");
            assert!(names_match(&normalized_name(b), a), "{a} {b}");
        }
        assert!(names_match("ssn", "ssn\u{0}"));
        assert!(names_match("ssn", "SSN\u{0}078-05-1120"));
        assert!(!names_match("ssn", "\u{0}ssn"));
        assert!(!names_match("ssn", "ssn "));
        assert!(!names_match("ss", "ß"));
    }

    #[test]
    fn folding_is_idempotent() {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let f = fold_char(c);
            assert_eq!(fold_char(f), f, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn name_parts_split_what_binders_expand() {
        fn parts(s: &str) -> Vec<String> {
            name_parts(s).map(|p| p.into_owned()).collect()
        }
        assert_eq!(parts("card.number"), ["card", "number"]);
        assert_eq!(parts("contacts.0.phone"), ["contacts", "phone"]);
        assert_eq!(parts("contacts[0].phone"), ["contacts", "phone"]);
        assert_eq!(parts("card['number']"), ["card", "number"]);
        assert_eq!(parts("card[\"number\"]"), ["card", "number"]);
        assert_eq!(parts(".ssn."), ["ssn"]);
        assert_eq!(parts("ssn\u{0}.x"), ["ssn"]);
        assert_eq!(parts("123"), Vec::<String>::new());
        assert_eq!(parts("'"), Vec::<String>::new());
        // JSON-Pointer-like names, lodash escapes in quoted parts, quoted
        // parts holding separators, dot-prop's `\.`.
        assert_eq!(parts("card/number"), ["card", "number"]);
        assert_eq!(parts("/contacts/0/phone"), ["contacts", "phone"]);
        assert_eq!(parts("card[\"n\\umber\"]"), ["card", "number"]);
        assert_eq!(parts("card['nu\\mber']"), ["card", "number"]);
        assert_eq!(parts("user[\"\\ssn\"]"), ["user", "ssn"]);
        assert_eq!(parts("contacts[0][\"pho\\ne\"]"), ["contacts", "phone"]);
        assert_eq!(parts("a[\"x.y]z\"].b"), ["a", "x.y]z", "b"]);
        assert_eq!(parts("a[\"b\\\"c\"]"), ["a", "b\"c"]);
        assert_eq!(parts("card\\.number"), ["card", "number"]);
        assert_eq!(parts("card[\"number"), ["card", "number"]);
        assert_eq!(parts("'ssn'"), ["ssn"]);
    }

    #[test]
    fn word_separators_are_dropped() {
        for (a, b) in [
            ("card_number", "cardNumber"),
            ("card-number", "CardNumber"),
            ("cardnumber", "CARD_NUMBER"),
            ("postal_code", "postalCode"),
            ("_ssn_", "ssn"),
            ("s-s-n", "SSN"),
        ] {
            assert_eq!(normalized_name(a), normalized_name(b), "{a} {b}");
            assert!(names_match(&normalized_name(b), a), "{a} {b}");
            assert!(names_match(&normalized_name(a), b), "{a} {b}");
        }
        assert_eq!(normalized_name("card_number"), "cardnumber");
        // Only ASCII `_` and `-`: other punctuation stays a difference.
        assert!(!names_match("ssn", "s.sn"));
        assert!(!names_match("ssn", "s sn"));
        assert!(!names_match("ssn", "s\u{2010}sn"));
        assert!(!names_match("ssn", "ssn2"));
        assert!(names_match("ssn", "Ss_N\u{0}x"));
        assert!(names_match("ssn", "ſ_ſn"));
        // The one-pass comparison: an ASCII prefix that matches, then a
        // character that folds to ASCII; a difference before or after it.
        assert!(names_match("ssn", "Sſn"));
        assert!(names_match("ssn", "s-ſN"));
        assert!(!names_match("ssn", "xſn"));
        assert!(!names_match("ssn", "sſx"));
        assert!(!names_match("ssn", "sſ"));
        assert!(!names_match("ssn", "ss"));
        assert!(!names_match("ss", "ssn"));
        assert!(names_match("kelvin", "\u{212A}ELVIN"));
    }
}
