//! Member names as backends bind them: the one normalization (NUL cut,
//! case folding) shared by the rule matcher, the look-alike automaton and
//! redacted locations, and the parts a binder expands a name into.

/// The one normalization of member names, shared by the rule matcher and
/// the look-alike check (`shape`): the name up to its first NUL (C parsers
/// and the libraries built on them stop there, so `"ssn\u0000x"` is `ssn`
/// to them), each character folded by [`fold_char`].
pub fn normalized_name(name: &str) -> String {
    fold_name(name).collect()
}

/// [`normalized_name`] as an iterator, allocation-free.
pub(crate) fn fold_name(name: &str) -> impl Iterator<Item = char> + '_ {
    until_nul(name).chars().map(fold_char)
}

pub(crate) fn until_nul(name: &str) -> &str {
    match name.find('\0') {
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
/// (case-insensitive) or C parsers bind `"SSN"`, `"ſſn"`, `"ssn\u0000"`
/// to an `ssn` field, so a rule for `ssn` must seal every such spelling.
pub(crate) fn names_match(folded: &str, key: &str) -> bool {
    let (f, k) = (folded.as_bytes(), key.as_bytes());
    // The common case, without a scan for the NUL: the member spells the
    // rule's name (ASCII letters in any case, other characters as folded)
    // and ends there or at a NUL.
    if let Some(head) = k.get(..f.len()) {
        if head.eq_ignore_ascii_case(f) && k.get(f.len()).is_none_or(|&b| b == 0) {
            return true;
        }
    }
    // An ASCII member folds to its lower case, which was just compared.
    if key.is_ascii() {
        return false;
    }
    until_nul(key).chars().map(fold_char).eq(folded.chars())
}

/// The parts a backend could expand member `name` into: the name up to its
/// first NUL, split at `.`, `[` and `]` (MongoDB `$set`, Mongoose and
/// lodash expand `card.number` and `contacts.0.phone`; Spring's and
/// ASP.NET's binders read `contacts[0].phone`), quotes around a part
/// removed, empty parts and array indices (all digits) dropped. Not folded.
pub(crate) fn name_parts(name: &str) -> impl Iterator<Item = &str> + '_ {
    until_nul(name)
        .split(['.', '[', ']'])
        .map(|p| {
            let b = p.as_bytes();
            match (b.first(), b.last()) {
                (Some(q @ (b'"' | b'\'')), Some(e)) if b.len() >= 2 && q == e => {
                    p.get(1..p.len() - 1).unwrap_or(p)
                }
                _ => p,
            }
        })
        .filter(|p| !p.is_empty() && !p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        fn parts(s: &str) -> Vec<&str> {
            name_parts(s).collect()
        }
        assert_eq!(parts("card.number"), ["card", "number"]);
        assert_eq!(parts("contacts.0.phone"), ["contacts", "phone"]);
        assert_eq!(parts("contacts[0].phone"), ["contacts", "phone"]);
        assert_eq!(parts("card['number']"), ["card", "number"]);
        assert_eq!(parts("card[\"number\"]"), ["card", "number"]);
        assert_eq!(parts(".ssn."), ["ssn"]);
        assert_eq!(parts("ssn\u{0}.x"), ["ssn"]);
        assert_eq!(parts("123"), Vec::<&str>::new());
        assert_eq!(parts("'"), ["'"]);
    }
}
