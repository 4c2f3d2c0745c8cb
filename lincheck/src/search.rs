//! The Wing–Gong / Lowe search over the operations of one key.
//!
//! See the crate documentation for the algorithm; this module is its
//! mechanics. Operations with an observed outcome ("known") are searched
//! individually; operations with an unknown outcome are grouped into
//! [`Class`]es of identical rules, because once invoked they are
//! interchangeable: only *how many* of each class were used matters.

use std::collections::HashMap;

use crate::model::{ABSENT, Rule, State};

/// One operation of the key, ready for the search.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prepared {
    /// The transition the operation performs.
    pub rule: Rule,
    /// Invocation time.
    pub call: u64,
    /// Completion time (clamped to be at least `call`); meaningless when the
    /// rule is uncertain, unless the operation is fenced.
    pub ret: u64,
    /// An uncertain operation that, if it took effect, did so by `ret`.
    pub fenced: bool,
    /// Index of the operation in the caller's list, for reports.
    pub label: usize,
}

/// Unknown-outcome operations with the same rule (and the same deadline, for
/// fenced ones).
struct Class {
    rule: Rule,
    /// For fenced operations: their common completion time, after which none of
    /// them can take effect.
    deadline: Option<u64>,
    /// Invocation times, sorted.
    calls: Vec<u64>,
    /// Labels, in the same order.
    labels: Vec<usize>,
}

impl Class {
    /// How many members were invoked no later than `horizon`.
    fn invoked_by(&self, horizon: u64) -> usize {
        self.calls.partition_point(|&call| call <= horizon)
    }
}

/// The operations of one key, indexed for the search.
pub(crate) struct Problem {
    /// Operations with an observed outcome.
    known: Vec<Prepared>,
    /// Indices into `known` sorted by (return time, index).
    by_return: Vec<usize>,
    /// For each known operation, its position in `by_return`.
    return_pos: Vec<usize>,
    /// Indices into `known` sorted by (call time, index).
    by_call: Vec<usize>,
    /// Operations with an unknown outcome, grouped by rule.
    classes: Vec<Class>,
}

/// Why the search stopped without finding a linearization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeadEnd {
    /// How many operations (known and unknown) the deepest partial
    /// linearization orders.
    pub prefix_len: usize,
    /// How many of those are known operations.
    pub known_len: usize,
    /// Labels of the last few operations of that partial linearization.
    pub tail: Vec<usize>,
    /// The register after that partial linearization.
    pub state: State,
    /// Label of the pending known operation that returns first, which no
    /// extension of the partial linearization could place.
    pub blocked: usize,
}

/// Longest run of unknown operations between two known ones worth trying.
const MAX_RUN: usize = 2;

/// How many operations of the deepest partial linearization a report shows.
const TAIL: usize = 8;

/// The result of a search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A linearization exists.
    Linearizable { states: u64 },
    /// No linearization exists.
    Violation { deepest: Option<DeadEnd> },
    /// The budget ran out first.
    GaveUp { states: u64 },
}

/// A step of a linearization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Linearize this known operation.
    Known(usize),
    /// Let one more member of this class of unknown operations take effect.
    Unknown(usize),
}

/// A node of the search tree: the operations linearized so far (encoded as
/// described on [`Seen`]) and the register state they produce.
struct Node {
    state: State,
    /// First position in `by_return` not yet linearized.
    ret_ptr: usize,
    /// Linearized positions in `by_return` beyond `ret_ptr`, sorted.
    extras: Vec<usize>,
    /// Classes of the unknown operations used, sorted, with repetition.
    used: Vec<usize>,
    /// First position in `by_call` not yet linearized.
    call_ptr: usize,
    /// Number of unknown operations linearized since the last known one.
    run_len: usize,
    /// The state before those unknown operations (`ABSENT` when `run_len` is 0).
    run_start: State,
    /// The latest invocation among the operations linearized so far: a fenced
    /// operation that completed before it can no longer be linearized.
    max_call: u64,
    /// Which candidate to try next.
    cursor: Cursor,
    /// The step that created this node (`None` at the root).
    via: Option<Step>,
}

/// Iteration over the candidates of a node: known operations by call time,
/// then classes of unknown operations. The order only affects speed.
#[derive(Clone, Copy)]
enum Cursor {
    Known(usize),
    Unknown(usize),
}

impl Problem {
    /// Indexes `ops` for the search.
    pub(crate) fn new(ops: Vec<Prepared>) -> Self {
        let (known, mut unknown): (Vec<Prepared>, Vec<Prepared>) = ops.into_iter().partition(|op| op.rule.is_certain());
        let mut by_return: Vec<usize> = (0..known.len()).collect();
        by_return.sort_by_key(|&i| (known[i].ret, i));
        let mut return_pos = vec![0; known.len()];
        for (at, &op) in by_return.iter().enumerate() {
            return_pos[op] = at;
        }
        let mut by_call: Vec<usize> = (0..known.len()).collect();
        by_call.sort_by_key(|&i| (known[i].call, i));
        unknown.sort_by_key(|op| (op.call, op.label));
        let mut classes: Vec<Class> = Vec::new();
        let mut class_of: HashMap<(Rule, Option<u64>), usize> = HashMap::new();
        for op in unknown {
            let deadline = op.fenced.then_some(op.ret);
            let at = *class_of.entry((op.rule, deadline)).or_insert_with(|| {
                let (calls, labels) = (Vec::new(), Vec::new());
                classes.push(Class { rule: op.rule, deadline, calls, labels });
                classes.len() - 1
            });
            classes[at].calls.push(op.call);
            classes[at].labels.push(op.label);
        }
        Problem { known, by_return, return_pos, by_call, classes }
    }

    /// Searches for a linearization, exploring at most `budget` new states.
    pub(crate) fn search(&self, budget: u64) -> Verdict {
        if self.known.is_empty() {
            return Verdict::Linearizable { states: 0 };
        }
        let mut done = Bits::new(self.known.len());
        let mut seen = Seen::default();
        let root = Node {
            state: ABSENT,
            ret_ptr: 0,
            extras: Vec::new(),
            used: Vec::new(),
            call_ptr: 0,
            run_len: 0,
            run_start: ABSENT,
            max_call: 0,
            cursor: Cursor::Known(0),
            via: None,
        };
        seen.visit(&root);
        let mut stack = vec![root];
        let mut states = 0u64;
        let mut deepest: Option<DeadEnd> = None;
        while let Some(top) = stack.last_mut() {
            let Some(step) = self.next_candidate(top, &done) else {
                self.note_dead_end(&stack, &mut deepest);
                if let Some(Step::Known(op)) = stack.pop().and_then(|node| node.via) {
                    done.clear(op);
                }
                continue;
            };
            let Some(next) = self.admit(top, step) else {
                continue;
            };
            let child = self.child(top, step, next, &mut done);
            if child.ret_ptr == self.known.len() {
                return Verdict::Linearizable { states };
            }
            if !seen.visit(&child) {
                if let Step::Known(op) = step {
                    done.clear(op);
                }
                continue;
            }
            states += 1;
            if states > budget {
                return Verdict::GaveUp { states };
            }
            stack.push(child);
        }
        Verdict::Violation { deepest }
    }

    /// The next step that may be taken at `node`: a known operation not yet
    /// linearized, or a class with an unused member, invoked no later than
    /// the earliest return among the pending known operations (intervals are
    /// closed, so an operation called exactly when another returns is
    /// concurrent with it).
    fn next_candidate(&self, node: &mut Node, done: &Bits) -> Option<Step> {
        // The search never keeps a node whose known operations are all
        // linearized, so `ret_ptr` indexes a pending known operation.
        let horizon = self.known[*self.by_return.get(node.ret_ptr)?].ret;
        loop {
            match node.cursor {
                Cursor::Known(at) => match self.by_call.get(at) {
                    Some(&op) if self.known[op].call <= horizon => {
                        node.cursor = Cursor::Known(at + 1);
                        if !done.get(op) {
                            return Some(Step::Known(op));
                        }
                    }
                    _ => node.cursor = Cursor::Unknown(0),
                },
                Cursor::Unknown(class) => {
                    let members = self.classes.get(class)?.invoked_by(horizon);
                    node.cursor = Cursor::Unknown(class + 1);
                    if count(&node.used, class) < members {
                        return Some(Step::Unknown(class));
                    }
                }
            }
        }
    }

    /// The state after taking `step` at `node`, or `None` if the step is
    /// illegal there or would make the order non-canonical (see the crate
    /// documentation): a run of unknown operations between two known ones has
    /// at most two operations, each changing the state, the second one only
    /// when the first enabled it, and is followed by a known operation that
    /// was illegal before the run.
    fn admit(&self, node: &Node, step: Step) -> Option<State> {
        match step {
            Step::Known(op) => {
                let rule = self.known[op].rule;
                let next = rule.apply(node.state)?;
                let run_needed = node.run_len == 0 || rule.apply(node.run_start).is_none();
                run_needed.then_some(next)
            }
            Step::Unknown(class) => {
                let Class { rule, deadline, .. } = self.classes[class];
                if deadline.is_some_and(|deadline| deadline < node.max_call) {
                    return None;
                }
                let next = rule.apply(node.state)?;
                let enabled_by_run = node.run_len == 0 || rule.apply(node.run_start) == Some(node.run_start);
                let useful = next != node.state && node.run_len < MAX_RUN && enabled_by_run;
                useful.then_some(next)
            }
        }
    }

    /// The node reached from `parent` by taking `step` to `state`; marks a
    /// known operation in `done`.
    fn child(&self, parent: &Node, step: Step, state: State, done: &mut Bits) -> Node {
        let mut ret_ptr = parent.ret_ptr;
        let mut extras = parent.extras.clone();
        let mut used = parent.used.clone();
        let call = match step {
            Step::Known(op) => self.known[op].call,
            Step::Unknown(class) => self.classes[class].calls[count(&parent.used, class)],
        };
        let max_call = parent.max_call.max(call);
        let (run_len, run_start) = match step {
            Step::Known(op) => {
                done.set(op);
                let at = self.return_pos[op];
                if at == ret_ptr {
                    ret_ptr += 1;
                    let consumed = extras.iter().zip(ret_ptr..).take_while(|(e, r)| *e == r);
                    let consumed = consumed.count();
                    ret_ptr += consumed;
                    extras.drain(..consumed);
                } else {
                    insert_sorted(&mut extras, at);
                }
                (0, ABSENT)
            }
            Step::Unknown(class) => {
                insert_sorted(&mut used, class);
                match parent.run_len {
                    0 => (1, parent.state),
                    len => (len + 1, parent.run_start),
                }
            }
        };
        let mut call_ptr = parent.call_ptr;
        while self.by_call.get(call_ptr).is_some_and(|&op| done.get(op)) {
            call_ptr += 1;
        }
        let cursor = Cursor::Known(call_ptr);
        let via = Some(step);
        Node { state, ret_ptr, extras, used, call_ptr, run_len, run_start, max_call, cursor, via }
    }

    /// Remembers the top of `stack` (about to be abandoned) if it orders more
    /// known operations than any dead end so far.
    fn note_dead_end(&self, stack: &[Node], deepest: &mut Option<DeadEnd>) {
        let Some(top) = stack.last() else { return };
        let known_len = top.ret_ptr + top.extras.len();
        if deepest.as_ref().is_some_and(|d| d.known_len >= known_len) {
            return;
        }
        let Some(&blocked) = self.by_return.get(top.ret_ptr) else {
            return;
        };
        let tail = stack[stack.len().saturating_sub(TAIL)..].iter().filter_map(|node| self.label(node)).collect();
        *deepest = Some(DeadEnd {
            prefix_len: stack.len() - 1,
            known_len,
            tail,
            state: top.state,
            blocked: self.known[blocked].label,
        });
    }

    /// Label of the operation whose step created `node`. For a class of
    /// unknown operations, the n-th use is attributed to its n-th member.
    fn label(&self, node: &Node) -> Option<usize> {
        match node.via? {
            Step::Known(op) => Some(self.known[op].label),
            Step::Unknown(class) => {
                let nth = count(&node.used, class).checked_sub(1)?;
                self.classes[class].labels.get(nth).copied()
            }
        }
    }
}

/// Number of occurrences of `value` in sorted `list`.
fn count(list: &[usize], value: usize) -> usize {
    list.partition_point(|&v| v <= value) - list.partition_point(|&v| v < value)
}

fn insert_sorted(list: &mut Vec<usize>, value: usize) {
    let at = list.partition_point(|&v| v <= value);
    list.insert(at, value);
}

/// Whether sorted multiset `small` is included in sorted multiset `large`.
fn is_submultiset(small: &[usize], large: &[usize]) -> bool {
    let mut rest = large.iter();
    small.iter().all(|s| rest.by_ref().any(|l| l == s))
}

/// Lowe's cache of visited nodes.
///
/// The set of linearized operations is encoded exactly and compactly: known
/// operations are "every position of `by_return` before `ret_ptr`, plus
/// `extras`" (only operations concurrent with the earliest pending return can
/// be in `extras`); unknown ones are counted per class.
///
/// Unknown operations are optional, so a node is *dominated* by a visited node
/// with the same known operations, state and run whose used unknown
/// operations are fewer (a sub-multiset): everything that can follow the
/// larger node can follow the smaller one. Dominated nodes are pruned.
#[derive(Default)]
struct Seen {
    /// Key `[state, run_len, run_start, ret_ptr, extras..]` → the multisets of
    /// used classes visited with it, none included in another.
    map: HashMap<Vec<usize>, Vec<Vec<usize>>>,
    scratch: Vec<usize>,
}

impl Seen {
    /// Records `node`; returns false if it is dominated by a visited node.
    fn visit(&mut self, node: &Node) -> bool {
        self.scratch.clear();
        let head = [node.state, node.run_len, node.run_start, node.ret_ptr];
        self.scratch.extend(head);
        self.scratch.extend_from_slice(&node.extras);
        if let Some(sets) = self.map.get_mut(self.scratch.as_slice()) {
            if sets.iter().any(|seen| is_submultiset(seen, &node.used)) {
                return false;
            }
            sets.retain(|seen| !is_submultiset(&node.used, seen));
            sets.push(node.used.clone());
        } else {
            self.map.insert(self.scratch.clone(), vec![node.used.clone()]);
        }
        true
    }
}

/// A fixed-size bitset.
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Self {
        Bits(vec![0; len.div_ceil(64)])
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}
