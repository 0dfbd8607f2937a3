//! Which rules select which value: the rule state machine the streaming
//! walk drives. Each value's states are a range `lo..hi` of one stack shared
//! by the whole walk, so visiting a value allocates nothing.

use super::names::MemberKey;
use super::path::{Segment, Selector};
use super::FieldRule;

/// "Segment `seg` of rule `rule` applies to this node's children."
/// `seg == segments.len()` means the rule selects this node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    rule: u32,
    seg: u32,
}

fn segment_of(rules: &[FieldRule], s: State) -> Option<&Segment> {
    rules
        .get(s.rule as usize)
        .and_then(|r| r.path.segments.get(s.seg as usize))
}

/// Pushes the states a child gets from the parent's states `lo..hi`: a
/// descendant segment stays in force, a segment that `selects` the child
/// moves on to its next one. Returns where the child's states start.
fn advance_states(
    rules: &[FieldRule],
    states: &mut Vec<State>,
    lo: usize,
    hi: usize,
    selects: impl Fn(&Segment) -> bool,
) -> usize {
    let start = states.len();
    let push_unique = |states: &mut Vec<State>, s: State| {
        if !states[start..].contains(&s) {
            states.push(s);
        }
    };
    for i in lo..hi {
        let s = states[i];
        let Some(seg) = segment_of(rules, s) else {
            continue;
        };
        if seg.descendant {
            push_unique(states, s);
        }
        if selects(seg) {
            push_unique(
                states,
                State {
                    rule: s.rule,
                    seg: s.seg + 1,
                },
            );
        }
    }
    start
}

/// The lowest-numbered rule that selects the node whose states are `states`.
fn selected_rule(rules: &[FieldRule], states: &[State]) -> Option<usize> {
    let mut selected: Option<u32> = None;
    for s in states {
        let len = rules
            .get(s.rule as usize)
            .map_or(0, |r| r.path.segments.len());
        if s.seg as usize == len {
            selected = Some(selected.map_or(s.rule, |m| m.min(s.rule)));
        }
    }
    selected.map(|r| r as usize)
}

/// The rule states of a walk: a stack where each value's states are a
/// range `lo..hi`.
pub(crate) struct RuleStates<'r> {
    rules: &'r [FieldRule],
    states: Vec<State>,
}

/// Array length to pass when no live state needs the real one.
pub(crate) const UNKNOWN_LEN: usize = 1 << 60;

impl<'r> RuleStates<'r> {
    /// The root's states (`0..len()`): every rule at its first segment.
    pub(crate) fn new(rules: &'r [FieldRule]) -> RuleStates<'r> {
        let mut states = Vec::with_capacity(4 * rules.len());
        states.extend((0..rules.len()).map(|r| State {
            rule: r as u32,
            seg: 0,
        }));
        RuleStates { rules, states }
    }

    /// A walk that starts where another left off: its root has `states`
    /// (a value opened at that place, walked on inside).
    pub(crate) fn resumed(rules: &'r [FieldRule], states: &[State]) -> RuleStates<'r> {
        RuleStates {
            rules,
            states: states.to_vec(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    pub(crate) fn truncate(&mut self, n: usize) {
        self.states.truncate(n);
    }

    pub(crate) fn states(&self, lo: usize, hi: usize) -> &[State] {
        self.states.get(lo..hi).unwrap_or(&[])
    }

    /// The lowest-numbered rule selecting the node with states `lo..hi`.
    pub(crate) fn selected(&self, lo: usize, hi: usize) -> Option<usize> {
        selected_rule(self.rules, self.states(lo, hi))
    }

    /// States of member `key` of the object with states `lo..hi`, pushed;
    /// returns where they start.
    pub(crate) fn advance_member(&mut self, lo: usize, hi: usize, key: &str) -> usize {
        self.advance_key(lo, hi, &MemberKey::new(key))
    }

    /// `advance_member`, of a name prepared once for several state stacks.
    pub(crate) fn advance_key(&mut self, lo: usize, hi: usize, key: &MemberKey<'_>) -> usize {
        advance_states(self.rules, &mut self.states, lo, hi, |seg| {
            seg.selects_key(key)
        })
    }

    /// Every rule selecting the node with states `lo..hi`, as a bit set
    /// (rules 0 to 127; the caller keeps to that many).
    pub(crate) fn selecting(&self, lo: usize, hi: usize) -> u128 {
        let mut set = 0u128;
        for s in self.states(lo, hi) {
            let len = self
                .rules
                .get(s.rule as usize)
                .map_or(0, |r| r.path.segments.len());
            if s.seg as usize == len && s.rule < 128 {
                set |= 1 << s.rule;
            }
        }
        set
    }

    /// States of element `j` of an array of `n` elements (`UNKNOWN_LEN`
    /// when `needs_len` is false) with states `lo..hi`.
    pub(crate) fn advance_element(&mut self, lo: usize, hi: usize, j: usize, n: usize) -> usize {
        advance_states(self.rules, &mut self.states, lo, hi, |seg| {
            seg.selects_element(j, n)
        })
    }

    /// Does selecting among the elements of an array with states `lo..hi`
    /// depend on its length (negative indices, slice bounds or steps)?
    pub(crate) fn needs_len(&self, lo: usize, hi: usize) -> bool {
        self.states(lo, hi).iter().any(|s| {
            segment_of(self.rules, *s).is_some_and(|seg| {
                seg.selectors.iter().any(|sel| match sel {
                    Selector::Index(i) => *i < 0,
                    Selector::Slice { start, end, step } => {
                        *step < 0 || start.is_some_and(|v| v < 0) || end.is_some_and(|v| v < 0)
                    }
                    Selector::Name(_) | Selector::Wildcard => false,
                })
            })
        })
    }
}
