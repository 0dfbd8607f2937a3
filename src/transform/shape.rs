//! The positive model of an encrypting route's request bodies: what may
//! stand where a protected field could be bound. No HTTP types.
//!
//! Rules select one JSON shape, but backends bind other shapes to the same
//! field: Rails' `wrap_parameters` reads `{"user": {"ssn": …}}` as `ssn`,
//! MongoDB `$set`, Mongoose and lodash expand `"card.number"`, Jackson's
//! `ACCEPT_SINGLE_VALUE_AS_ARRAY` / `UNWRAP_SINGLE_VALUE_ARRAYS` take an
//! object for an array and back, bulk endpoints take a root array of
//! documents. Guessing every binding cannot work, so a value is judged by
//! its **name path** instead: the member names from the root to it, array
//! steps dropped, each member name split into the parts a backend could
//! expand it into (`names::name_parts`) and normalized as the rule matcher
//! normalizes names (`names::normalized_name`). A value that no rule
//! selects is a **look-alike** of a rule when its name path, or the name
//! path of a value holding it, ends with a name sequence the rule stands
//! for (`$.card.number`: `card`,`number`; see [`LookAlikes`]).
//!
//! The sequences of all rules are compiled at load into one deterministic
//! automaton over the rules' names (any other name is one symbol), so a
//! request costs one table step per member name and no allocation.
//!
//! On top, an optional JSON Schema per route ([`RequestSchema`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::names::{name_parts, names_match};
use super::path::NameStep;
use super::FieldRule;

/// What an encrypting route does with a look-alike holding data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LookAlikeMode {
    /// Refuse the request (400), forward nothing.
    #[default]
    Refuse,
    /// Seal the look-alike like the rule's own field.
    Seal,
}

/// What an encrypting route does with Json.NET / System.Text.Json
/// reference metadata (`$ref`, `$values`) in request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JsonReferences {
    /// Refuse the request (400): a reference binds a protected field to
    /// data written under other names.
    #[default]
    Refuse,
    /// Forward them (the backend resolves no references).
    Allow,
}

/// No state accepts (a `u32` index into `LookAlikes::accepts`).
const NONE: u32 = u32::MAX;
/// Refuse rule sets whose automaton would be larger than this many states.
const MAX_STATES: usize = 4096;

/// The look-alike automaton of one route, compiled at load.
///
/// A rule stands for the name sequences of its segments in order: a name
/// selector for its name (split into its parts: `['card.number']` is
/// `card`,`number`); an index or a slice for no name (an array step); a
/// wildcard for no name or any one name (it selects elements and members);
/// a union for any of its selectors (`$['dob','email']`: `dob` or
/// `email`); a descendant segment for any names followed by its selectors.
/// So `$.contacts[*].phone` stands for `contacts`,`phone` and
/// `contacts`,*any*,`phone`; `$.items[0].x` for `items`,`x` (every element's
/// `x`, since array steps are dropped); `$..card.number` for any names then
/// `card`,`number`. A value's name path matches a rule when it ends with one
/// of those sequences, at any depth. A rule that stands for the empty
/// sequence (`$`, `$[0]`, `$.*`, `$..[0]`) makes every unselected value a
/// look-alike; config validation warns about it.
#[derive(Clone)]
pub struct LookAlikes {
    mode: LookAlikeMode,
    /// The alphabet: the rules' normalized names. Symbol `names.len()` is
    /// every other name.
    names: Vec<String>,
    /// Open-addressing table of the ASCII names by `ascii_hash`: the full
    /// hash and symbol + 1 (0 for an empty slot), so a probe compares names
    /// only when the whole hash agrees. Its length is a power of two (or
    /// 0), at least four slots per name, so most probes end at once.
    ascii_table: Vec<(u32, u32)>,
    /// `names.len() + 1`, or 0 when no rule is checked.
    symbols: usize,
    /// `trans[state * symbols + symbol]`.
    trans: Vec<u32>,
    /// Per state: the lowest-numbered rule whose look-alike a value there
    /// is, or `NONE`. Accepting states are absorbing: below a look-alike
    /// everything is one too.
    accepts: Vec<u32>,
    start: u32,
}

impl fmt::Debug for LookAlikes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LookAlikes")
            .field("mode", &self.mode)
            .field("names", &self.names)
            .field("states", &self.accepts.len())
            .finish()
    }
}

impl Default for LookAlikes {
    fn default() -> Self {
        LookAlikes::off()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the look-alike check of these rules needs more than {MAX_STATES} automaton states; simplify the rules or set `look_alikes: allow` on some")]
pub struct LookAlikeError;

/// Nondeterministic automaton the deterministic one is built from.
struct Nfa {
    eps: Vec<Vec<usize>>,
    /// `(symbol or None for any, target)`.
    on: Vec<Vec<(Option<usize>, usize)>>,
    /// The rule a state completes.
    finals: Vec<Option<usize>>,
}

impl Nfa {
    fn state(&mut self) -> usize {
        self.eps.push(Vec::new());
        self.on.push(Vec::new());
        self.finals.push(None);
        self.eps.len() - 1
    }

    /// The states reachable from `set` by empty moves, sorted.
    fn closure(&self, mut set: Vec<usize>) -> Vec<usize> {
        let mut i = 0;
        while let Some(&s) = set.get(i) {
            for &t in self.eps.get(s).map(Vec::as_slice).unwrap_or(&[]) {
                if !set.contains(&t) {
                    set.push(t);
                }
            }
            i += 1;
        }
        set.sort_unstable();
        set
    }
}

impl LookAlikes {
    /// No check (routes without encrypt rules, decrypt walks).
    pub const OFF: LookAlikes = LookAlikes {
        mode: LookAlikeMode::Refuse,
        names: Vec::new(),
        ascii_table: Vec::new(),
        symbols: 0,
        trans: Vec::new(),
        accepts: Vec::new(),
        start: 0,
    };

    pub fn off() -> LookAlikes {
        LookAlikes::OFF
    }

    /// The automaton of `rules`, leaving out those whose `checked` is false
    /// (`look_alikes: allow`).
    pub fn compile(
        rules: &[FieldRule],
        checked: &[bool],
        mode: LookAlikeMode,
    ) -> Result<LookAlikes, LookAlikeError> {
        let steps: Vec<(usize, Vec<NameStep>)> = rules
            .iter()
            .enumerate()
            .filter(|(i, _)| checked.get(*i).copied().unwrap_or(true))
            .map(|(i, r)| (i, r.path.name_steps()))
            .collect();
        if steps.is_empty() {
            return Ok(LookAlikes {
                mode,
                ..LookAlikes::off()
            });
        }
        let mut names: Vec<String> = Vec::new();
        for (_, rule) in &steps {
            for step in rule {
                for name in step.sequences.iter().flatten() {
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                }
            }
        }
        let symbol = |n: &str| names.iter().position(|m| m == n);

        // Thompson construction: a shared start that loops on any name
        // (the sequence may end a longer path), one chain per rule.
        let mut nfa = Nfa {
            eps: Vec::new(),
            on: Vec::new(),
            finals: Vec::new(),
        };
        let s0 = nfa.state();
        nfa.on[s0].push((None, s0));
        for (rule, rule_steps) in &steps {
            let mut cur = nfa.state();
            nfa.eps[s0].push(cur);
            for step in rule_steps {
                if step.descendant {
                    nfa.on[cur].push((None, cur));
                }
                let next = nfa.state();
                if step.any {
                    nfa.on[cur].push((None, next));
                }
                for seq in &step.sequences {
                    let mut at = cur;
                    for (k, name) in seq.iter().enumerate() {
                        let to = if k + 1 == seq.len() {
                            next
                        } else {
                            nfa.state()
                        };
                        nfa.on[at].push((symbol(name), to));
                        at = to;
                    }
                    if seq.is_empty() {
                        nfa.eps[cur].push(next);
                    }
                }
                cur = next;
            }
            let f = &mut nfa.finals[cur];
            *f = Some(f.map_or(*rule, |r| r.min(*rule)));
        }

        // Subset construction. Accepting subsets collapse into one
        // absorbing state per rule.
        let symbols = names.len() + 1;
        let mut ids: HashMap<Vec<usize>, u32> = HashMap::new();
        let mut sets: Vec<Vec<usize>> = Vec::new();
        let mut accepts: Vec<u32> = Vec::new();
        let mut accept_state: HashMap<usize, u32> = HashMap::new();
        let mut intern = |set: Vec<usize>,
                          sets: &mut Vec<Vec<usize>>,
                          accepts: &mut Vec<u32>|
         -> Result<u32, LookAlikeError> {
            let rule = set
                .iter()
                .filter_map(|s| nfa.finals.get(*s).copied().flatten())
                .min();
            if let Some(r) = rule {
                if let Some(id) = accept_state.get(&r) {
                    return Ok(*id);
                }
                let id = u32::try_from(sets.len()).map_err(|_| LookAlikeError)?;
                sets.push(Vec::new());
                accepts.push(u32::try_from(r).map_err(|_| LookAlikeError)?);
                accept_state.insert(r, id);
                return Ok(id);
            }
            if let Some(id) = ids.get(&set) {
                return Ok(*id);
            }
            if sets.len() >= MAX_STATES {
                return Err(LookAlikeError);
            }
            let id = u32::try_from(sets.len()).map_err(|_| LookAlikeError)?;
            ids.insert(set.clone(), id);
            sets.push(set);
            accepts.push(NONE);
            Ok(id)
        };
        let start = intern(nfa.closure(vec![s0]), &mut sets, &mut accepts)?;
        let mut trans: Vec<u32> = Vec::new();
        let mut done = 0;
        while done < sets.len() {
            let set = sets[done].clone();
            let absorbing = accepts[done] != NONE;
            for sym in 0..symbols {
                let target = if absorbing {
                    done as u32
                } else {
                    let mut next: Vec<usize> = Vec::new();
                    for &s in &set {
                        for &(on, t) in &nfa.on[s] {
                            if (on.is_none() || on == Some(sym)) && !next.contains(&t) {
                                next.push(t);
                            }
                        }
                    }
                    intern(nfa.closure(next), &mut sets, &mut accepts)?
                };
                trans.push(target);
            }
            done += 1;
        }
        let mut ascii_table = vec![(0u32, 0u32); (4 * names.len() + 1).next_power_of_two()];
        let mask = ascii_table.len() - 1;
        for (sym, n) in names.iter().enumerate().filter(|(_, n)| n.is_ascii()) {
            let h = ascii_hash(n.as_bytes());
            let mut slot = h as usize & mask;
            while ascii_table[slot].1 != 0 {
                slot = (slot + 1) & mask;
            }
            ascii_table[slot] = (h, u32::try_from(sym + 1).map_err(|_| LookAlikeError)?);
        }
        Ok(LookAlikes {
            mode,
            names,
            ascii_table,
            symbols,
            trans,
            accepts,
            start,
        })
    }

    pub fn mode(&self) -> LookAlikeMode {
        self.mode
    }

    /// Is any rule checked?
    pub fn is_on(&self) -> bool {
        self.symbols > 0
    }

    /// The state of the root.
    pub fn start(&self) -> u32 {
        self.start
    }

    /// The rule whose look-alike a value in `state` is, if any.
    pub fn accepting(&self, state: u32) -> Option<usize> {
        match self.accepts.get(state as usize) {
            Some(&r) if r != NONE => Some(r as usize),
            _ => None,
        }
    }

    /// The state of member `key` of a value in `state` (an array element
    /// keeps its array's state). Inlined into the walk: most names take
    /// the one-pass ASCII path, and the rest go to `step_by_parts`.
    #[inline(always)]
    pub fn step(&self, state: u32, key: &str) -> u32 {
        if self.symbols == 0 || self.accepting(state).is_some() {
            return state;
        }
        // Most member names are one ASCII part: one pass hashes it and
        // finds out whether it needs splitting or folding.
        let (mut sum, mut class) = (0u32, DIGIT);
        for &c in key.as_bytes() {
            class &= CLASS[usize::from(c)];
            sum = sum.wrapping_add(WEIGHT[usize::from(c)]);
        }
        if class & PLAIN != 0 {
            if class & ALL_DIGITS != 0 {
                // An array index (or an empty name): no name.
                return state;
            }
            let sym = self.ascii_symbol(finish_hash(sum), key);
            return self.trans_to(state, sym);
        }
        self.step_by_parts(state, key)
    }

    /// A name with separators, escapes or non-ASCII bytes, part by part.
    #[cold]
    #[inline(never)]
    fn step_by_parts(&self, state: u32, key: &str) -> u32 {
        let mut s = state;
        for part in name_parts(key) {
            let sym = self
                .names
                .iter()
                .position(|n| names_match(n, &part))
                .unwrap_or(self.names.len());
            s = self.trans_to(s, sym);
            if self.accepting(s).is_some() {
                break;
            }
        }
        s
    }

    /// The symbol of the ASCII name part `part`, hashed `h`. Inlined into
    /// `step`: most names end at an empty slot.
    #[inline(always)]
    fn ascii_symbol(&self, h: u32, part: &str) -> usize {
        let mask = self.ascii_table.len().wrapping_sub(1);
        let mut slot = h as usize & mask;
        while let Some(&(eh, e)) = self.ascii_table.get(slot) {
            if e == 0 {
                break;
            }
            let sym = e as usize - 1;
            // An ASCII part folds to its lower case without separators; the
            // hash ignores byte order, so a hash hit is checked by name.
            if eh == h && self.is_name(sym, part) {
                return sym;
            }
            slot = (slot + 1) & mask;
        }
        self.names.len()
    }

    /// Is `part` (whose hash hit) the name of symbol `sym`? Out of line:
    /// only a hash hit gets here.
    #[inline(never)]
    fn is_name(&self, sym: usize, part: &str) -> bool {
        self.names.get(sym).is_some_and(|n| names_match(n, part))
    }

    fn trans_to(&self, s: u32, sym: usize) -> u32 {
        self.trans
            .get(s as usize * self.symbols + sym)
            .copied()
            .unwrap_or(s)
    }

    /// The state of the name path `keys` (for tests and tools).
    pub fn state_of<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> u32 {
        keys.into_iter().fold(self.start, |s, k| self.step(s, k))
    }
}

/// `CLASS[b] & PLAIN`: byte `b` needs no splitting or folding;
/// `& ALL_DIGITS`: it is an ASCII digit. ANDed over a name's bytes.
const PLAIN: u8 = 1;
const ALL_DIGITS: u8 = 2;
const DIGIT: u8 = ALL_DIGITS | PLAIN;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 1;
    while b < 128 {
        t[b] = if b >= b'0' as usize && b <= b'9' as usize {
            DIGIT
        } else if matches!(b as u8, b'.' | b'/' | b'[' | b']' | b'\\' | b'"' | b'\'') {
            // Separators of name parts, escapes and quotes (`name_parts`).
            0
        } else {
            PLAIN
        };
        b += 1;
    }
    t
};

/// Hash of an ASCII name, the same for every letter case and without the
/// word separators `_` and `-` (as `names::normalized_name` drops them).
/// A sum of per-byte weights, so the walk's loop over a member name has no
/// multiply chain and no branch per byte; the order of the bytes is lost,
/// and the table's name comparison settles what collides (anagrams).
fn ascii_hash(b: &[u8]) -> u32 {
    finish_hash(
        b.iter()
            .fold(0u32, |h, &c| h.wrapping_add(WEIGHT[usize::from(c)])),
    )
}

/// Spreads a weight sum over the low bits the table's mask keeps
/// (MurmurHash3's 32-bit finalizer).
#[inline]
fn finish_hash(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Per byte: 0 for the word separators `_` and `-`; else a weight that
/// depends only on `b | 0x20` (so both letter cases weigh the same), mixed
/// so that sums of different bytes seldom meet.
static WEIGHT: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut b = 0;
    while b < 256 {
        if b != b'_' as usize && b != b'-' as usize {
            // SplitMix32-style mix of the case-folded byte (never 0 in
            // practice, and a 0 would only make more collisions).
            let mut x = ((b | 0x20) as u32).wrapping_add(0x9e37_79b9);
            x = (x ^ (x >> 16)).wrapping_mul(0x21f0_aaad);
            x = (x ^ (x >> 15)).wrapping_mul(0x735a_2d97);
            t[b] = x ^ (x >> 15);
        }
        b += 1;
    }
    t
};

/// Does a rule stand for the empty name sequence (so that with the check on
/// every value it does not select is its look-alike)?
pub fn matches_everything(rule: &FieldRule) -> bool {
    LookAlikes::compile(std::slice::from_ref(rule), &[true], LookAlikeMode::Refuse)
        .is_ok_and(|l| l.accepting(l.start()).is_some())
}

/// Does `v` hold data: a string, a number, a boolean or a member name, at
/// any depth? A `null`, an empty object or an array of those at a
/// look-alike's place carries nothing; a member name can be data
/// (`{"ssn": {"078-05-1120": null}}`).
pub fn carries_data(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Null => {}
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) if o.is_empty() => {}
            _ => return true,
        }
    }
    false
}

/// A JSON Schema a route's request bodies must satisfy, compiled at load.
#[derive(Clone)]
pub struct RequestSchema {
    validator: Arc<jsonschema::Validator>,
}

impl fmt::Debug for RequestSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestSchema")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

impl RequestSchema {
    /// Compiles `schema`. References are resolved only within the schema
    /// itself: nothing is fetched from files or the network.
    pub fn compile(schema: &Value) -> Result<RequestSchema, SchemaError> {
        let validator =
            jsonschema::validator_for(schema).map_err(|e| SchemaError(e.to_string()))?;
        Ok(RequestSchema {
            validator: Arc::new(validator),
        })
    }

    pub fn is_valid(&self, doc: &Value) -> bool {
        self.validator.is_valid(doc)
    }
}

/// Everything a route checks about the shape of a request body besides
/// its rules.
#[derive(Debug, Clone, Default)]
pub struct RequestShape {
    pub look_alikes: LookAlikes,
    /// Every encrypt rule (`look_alikes: allow` or not), refusing: what a
    /// JSON Patch operation may not write (`patch`).
    pub patches: LookAlikes,
    pub schema: Option<RequestSchema>,
    pub references: JsonReferences,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::FieldPath;

    fn rules(paths: &[&str]) -> Vec<FieldRule> {
        paths
            .iter()
            .map(|p| FieldRule {
                path: FieldPath::parse(p).expect("path"),
                context: None,
            })
            .collect()
    }

    fn look(paths: &[&str]) -> LookAlikes {
        LookAlikes::compile(&rules(paths), &[], LookAlikeMode::Refuse).expect("compile")
    }

    fn hit(l: &LookAlikes, path: &[&str]) -> Option<usize> {
        l.accepting(l.state_of(path.iter().copied()))
    }

    #[test]
    fn sequences_end_a_name_path() {
        let l = look(&["$.ssn", "$.card.number", "$.contacts[*].phone"]);
        assert_eq!(hit(&l, &["ssn"]), Some(0));
        assert_eq!(hit(&l, &["user", "ssn"]), Some(0));
        assert_eq!(hit(&l, &["user", "ssn", "x"]), Some(0), "absorbing");
        assert_eq!(hit(&l, &["card", "number"]), Some(1));
        assert_eq!(hit(&l, &["card.number"]), Some(1));
        assert_eq!(hit(&l, &["a", "card[number]"]), Some(1));
        assert_eq!(hit(&l, &["CARD", "nUmber\u{0}x"]), Some(1));
        assert_eq!(hit(&l, &["items", "number"]), None);
        assert_eq!(hit(&l, &["card"]), None);
        assert_eq!(hit(&l, &["number"]), None);
        assert_eq!(hit(&l, &["contacts", "phone"]), Some(2));
        assert_eq!(hit(&l, &["contacts", "home", "phone"]), Some(2));
        assert_eq!(hit(&l, &["contacts.0.phone"]), Some(2));
        assert_eq!(hit(&l, &["contacts", "a", "b", "phone"]), None);
        assert_eq!(hit(&l, &["phone"]), None);
        assert_eq!(hit(&l, &["ſſn"]), Some(0));
        assert_eq!(hit(&l, &["SSN"]), Some(0));
        assert_eq!(hit(&l, &["ssns"]), None);
        assert_eq!(hit(&l, &["card", "0", "number"]), Some(1), "an index key");
        assert_eq!(hit(&l, &["card", "", "NUMBER"]), Some(1), "an empty key");
        assert_eq!(hit(&l, &["card", "x0", "number"]), None);
        assert_eq!(hit(&l, &["Card", "n\u{fc}mber"]), None);
        assert_eq!(hit(&l, &["CARD", "\u{2c}number"]), None);
        assert_eq!(hit(&l, &[]), None);
    }

    #[test]
    fn the_ascii_hash_ignores_case_and_separators_and_collisions_are_compared() {
        use crate::transform::names::normalized_name;
        // Every ASCII byte but NUL (where names end), in both cases, with
        // separators between: the raw name hashes as its normalized form
        // does (the weights of CR and DEL share `b | 0x20` with `-`, `_`).
        for c in 0x01u8..0x80 {
            for name in [
                format!("{}x{}", c as char, c as char),
                format!("_{}-Card_{}", c as char, c as char),
                format!("A{}b", (c as char).to_ascii_uppercase()),
            ] {
                assert_eq!(
                    ascii_hash(name.as_bytes()),
                    ascii_hash(normalized_name(&name).as_bytes()),
                    "{name:?}"
                );
            }
        }
        assert_eq!(ascii_hash(b"Card_Number"), ascii_hash(b"cardnumber"));
        assert_ne!(ascii_hash(b"ssn"), ascii_hash(b"sn"));
        // Anagrams share a hash; only the rule's own spelling is its name.
        assert_eq!(ascii_hash(b"ssn"), ascii_hash(b"nss"));
        let l = look(&["$.ssn", "$.card.number"]);
        assert_eq!(hit(&l, &["nss"]), None);
        assert_eq!(hit(&l, &["sns"]), None);
        assert_eq!(hit(&l, &["S-s_N"]), Some(0));
        assert_eq!(hit(&l, &["card", "numbre"]), None);
        assert_eq!(hit(&l, &["card", "NumBer"]), Some(1));
    }

    #[test]
    fn the_one_pass_step_agrees_with_the_step_by_parts() {
        let l = look(&["$.ssn", "$.card.number", "$.contacts[*].phone", "$.a.b0"]);
        let mut names: Vec<String> = vec![String::new(), "0".into(), "0042".into()];
        for base in ["ssn", "S_s-N", "number", "b0", "0b", "x", "12a", "phone"] {
            names.push(base.to_owned());
            // Every ASCII byte and a non-ASCII one, first, inside and last.
            for c in (1u8..0x80).map(char::from).chain(['é', '\u{0}']) {
                names.push(format!("{c}{base}"));
                names.push(format!("{base}{c}"));
                names.push(format!("s{c}sn"));
            }
            // Long names of separators, plain bytes and digits.
            for len in [254usize, 255, 256] {
                let pad = |c: &str| c.repeat(len.saturating_sub(base.len()));
                names.push(format!("{}{base}", pad("_")));
                names.push(format!("{}{base}", pad("~")));
                names.push(format!("{}{base}", pad("9")));
                names.push(format!("{}.{base}", pad("-")));
                names.push(pad("7"));
            }
        }
        for parent in [&[][..], &["card"][..], &["contacts", "x"][..], &["a"][..]] {
            let s = l.state_of(parent.iter().copied());
            for n in &names {
                assert_eq!(l.step(s, n), l.step_by_parts(s, n), "{parent:?} {n:?}");
            }
        }
        // The long names still match where they should.
        let long_ssn = format!("{}ssn", "_".repeat(255));
        assert_eq!(hit(&l, &[&long_ssn]), Some(0));
        assert_eq!(
            hit(&l, &["card", &format!("{}NUMBER", "-".repeat(300))]),
            Some(1)
        );
        assert_eq!(hit(&l, &["a", &"9".repeat(256), "b0"]), Some(3));
        assert_eq!(hit(&l, &[&format!("{}ssn", "_".repeat(65_533))]), Some(0));
    }

    #[test]
    fn unions_indices_descendants() {
        let l = look(&[
            "$['dob','email']",
            "$.items[0].x",
            "$..card.number",
            "$.a..b",
        ]);
        assert_eq!(hit(&l, &["dob"]), Some(0));
        assert_eq!(hit(&l, &["w", "email"]), Some(0));
        assert_eq!(hit(&l, &["items", "x"]), Some(1));
        assert_eq!(hit(&l, &["x"]), None);
        assert_eq!(hit(&l, &["p", "q", "card", "number"]), Some(2));
        assert_eq!(hit(&l, &["a", "b"]), Some(3));
        assert_eq!(hit(&l, &["a", "z", "y", "b"]), Some(3));
        assert_eq!(hit(&l, &["b"]), None);
        assert_eq!(hit(&l, &["ı", "a.q.b"]), Some(3));
    }

    #[test]
    fn empty_sequences_and_allowed_rules() {
        for p in ["$", "$[0]", "$.*", "$..[1:2]", "$['0']"] {
            assert!(matches_everything(&rules(&[p])[0]), "{p}");
        }
        for p in ["$.a", "$..a", "$[*].a"] {
            assert!(!matches_everything(&rules(&[p])[0]), "{p}");
        }
        let r = rules(&["$.ssn", "$.card.number"]);
        let l = LookAlikes::compile(&r, &[false, true], LookAlikeMode::Seal).expect("compile");
        assert_eq!(hit(&l, &["user", "ssn"]), None);
        assert_eq!(hit(&l, &["user", "card", "number"]), Some(1));
        assert_eq!(l.mode(), LookAlikeMode::Seal);
        let none = LookAlikes::compile(&r, &[false, false], LookAlikeMode::Seal).expect("c");
        assert!(!none.is_on());
        assert_eq!(hit(&none, &["ssn"]), None);
    }

    #[test]
    fn lowest_rule_wins() {
        let l = look(&["$.a.ssn", "$.ssn"]);
        assert_eq!(hit(&l, &["a", "ssn"]), Some(0));
        assert_eq!(hit(&l, &["b", "ssn"]), Some(1));
    }

    #[test]
    fn data() {
        assert!(!carries_data(&serde_json::json!([null, {}, []])));
        assert!(carries_data(&serde_json::json!({"a": null})));
        assert!(carries_data(&serde_json::json!({"a": [null, {}, []]})));
        assert!(carries_data(
            &serde_json::json!({"a": [null, {"b": false}]})
        ));
        assert!(carries_data(&serde_json::json!("")));
    }
}
