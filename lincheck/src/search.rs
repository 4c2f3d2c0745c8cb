//! The Wing–Gong / Lowe search over the operations of one key.
//!
//! See the crate documentation for the algorithm; this module is its mechanics.
//! Positions: every operation of the key has an index into [`Problem::ops`];
//! completed ("known") operations additionally have a position in
//! [`Problem::by_return`], unknown-outcome ones a position in
//! [`Problem::unknown_by_call`].

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
    /// rule is uncertain.
    pub ret: u64,
    /// Index of the operation in the caller's list, for reports.
    pub label: usize,
}

impl Prepared {
    fn known(&self) -> bool {
        self.rule.is_certain()
    }
}

/// The operations of one key, indexed for the search.
pub(crate) struct Problem {
    ops: Vec<Prepared>,
    /// Known operations sorted by (return time, index).
    by_return: Vec<usize>,
    /// For each operation, its position in `by_return` or `unknown_by_call`.
    position: Vec<usize>,
    /// Known operations sorted by (call time, index).
    known_by_call: Vec<usize>,
    /// Unknown-outcome operations sorted by (call time, index).
    unknown_by_call: Vec<usize>,
    /// For an unknown operation, the next one (by call) with the same rule.
    twin: Vec<Option<usize>>,
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
    Violation {
        states: u64,
        deepest: Option<DeadEnd>,
    },
    /// The budget ran out first.
    GaveUp { states: u64 },
}

/// A node of the search tree: the operations linearized so far (encoded as
/// described on [`Seen`]) and the register state they produce.
struct Node {
    state: State,
    /// First position in `by_return` not yet linearized.
    ret_ptr: usize,
    /// Linearized positions in `by_return` beyond `ret_ptr`, sorted.
    extras: Vec<usize>,
    /// Linearized positions in `unknown_by_call`, sorted.
    unknowns: Vec<usize>,
    /// First position in `known_by_call` not yet linearized.
    call_ptr: usize,
    /// Number of unknown operations linearized since the last known one.
    run_len: usize,
    /// The state before those unknown operations (`ABSENT` when `run_len` is 0).
    run_start: State,
    /// Which candidate to try next.
    cursor: Cursor,
    /// The operation whose linearization created this node (`None` at the root).
    via: Option<usize>,
}

/// Iteration over the candidates of a node: known operations first, then
/// unknown ones (both by call time). The order only affects speed.
#[derive(Clone, Copy)]
enum Cursor {
    Known(usize),
    Unknown(usize),
}

impl Problem {
    /// Indexes `ops` for the search.
    pub(crate) fn new(ops: Vec<Prepared>) -> Self {
        let (mut known, mut unknown): (Vec<usize>, Vec<usize>) =
            (0..ops.len()).partition(|&i| ops[i].known());
        let mut by_return = known.clone();
        by_return.sort_by_key(|&i| (ops[i].ret, i));
        known.sort_by_key(|&i| (ops[i].call, i));
        unknown.sort_by_key(|&i| (ops[i].call, i));
        let mut position = vec![0; ops.len()];
        for list in [&by_return, &unknown] {
            for (at, &op) in list.iter().enumerate() {
                position[op] = at;
            }
        }
        let mut twin = vec![None; ops.len()];
        let mut latest: HashMap<Rule, usize> = HashMap::new();
        for &op in unknown.iter().rev() {
            twin[op] = latest.insert(ops[op].rule, op);
        }
        Problem {
            ops,
            by_return,
            position,
            known_by_call: known,
            unknown_by_call: unknown,
            twin,
        }
    }

    /// Searches for a linearization, exploring at most `budget` new states.
    pub(crate) fn search(&self, budget: u64) -> Verdict {
        let known = self.by_return.len();
        if known == 0 {
            return Verdict::Linearizable { states: 0 };
        }
        let mut done = Bits::new(self.ops.len());
        let mut seen = Seen::default();
        let root = Node {
            state: ABSENT,
            ret_ptr: 0,
            extras: Vec::new(),
            unknowns: Vec::new(),
            call_ptr: 0,
            run_len: 0,
            run_start: ABSENT,
            cursor: Cursor::Known(0),
            via: None,
        };
        seen.visit(&root);
        let mut stack = vec![root];
        let mut states = 0u64;
        let mut deepest: Option<DeadEnd> = None;
        while let Some(top) = stack.last_mut() {
            let Some(op) = self.next_candidate(top, &done) else {
                self.note_dead_end(&stack, &mut deepest);
                if let Some(via) = stack.pop().and_then(|node| node.via) {
                    done.clear(via);
                }
                continue;
            };
            let Some(next) = self.admit(top, op, &done) else {
                continue;
            };
            done.set(op);
            let child = self.child(top, op, next, &done);
            if child.ret_ptr == known {
                return Verdict::Linearizable { states };
            }
            if !seen.visit(&child) {
                done.clear(op);
                continue;
            }
            states += 1;
            if states > budget {
                return Verdict::GaveUp { states };
            }
            stack.push(child);
        }
        Verdict::Violation { states, deepest }
    }

    /// The next operation that may be linearized at `node`: any operation not
    /// yet linearized whose call is no later than the earliest return among
    /// the pending known operations (intervals are closed, so an operation
    /// called exactly when another returns is concurrent with it).
    fn next_candidate(&self, node: &mut Node, done: &Bits) -> Option<usize> {
        // The caller never keeps a node whose known operations are all
        // linearized, so `ret_ptr` indexes a pending known operation.
        let horizon = self.horizon(node)?;
        loop {
            let (list, at) = match node.cursor {
                Cursor::Known(at) => (&self.known_by_call, at),
                Cursor::Unknown(at) => (&self.unknown_by_call, at),
            };
            match list.get(at) {
                Some(&op) if self.ops[op].call <= horizon => {
                    node.cursor = match node.cursor {
                        Cursor::Known(_) => Cursor::Known(at + 1),
                        Cursor::Unknown(_) => Cursor::Unknown(at + 1),
                    };
                    if !done.get(op) {
                        return Some(op);
                    }
                }
                _ => match node.cursor {
                    Cursor::Known(_) => node.cursor = Cursor::Unknown(0),
                    Cursor::Unknown(_) => return None,
                },
            }
        }
    }

    /// The state after linearizing `op` at `node`, or `None` if `op` is illegal
    /// there or the order would not be canonical (see the crate documentation):
    /// a run of unknown operations between two known ones has at most two
    /// operations, each changing the state, and is followed by a known
    /// operation that was illegal before the run; among unknown operations
    /// with the same effect, the one invoked last is used first.
    fn admit(&self, node: &Node, op: usize, done: &Bits) -> Option<State> {
        let rule = self.ops[op].rule;
        let next = rule.apply(node.state)?;
        let exp = std::env::var("EXP").unwrap_or_default();
        if exp.contains('n') {
            if !rule.is_certain() && next == node.state {
                return None;
            }
            return Some(next);
        }
        if rule.is_certain() {
            let needed_run = node.run_len == 0 || rule.apply(node.run_start).is_none();
            return needed_run.then_some(next);
        }
        if next == node.state || node.run_len >= MAX_RUN {
            return None;
        }
        let horizon = self.horizon(node)?;
        if exp.contains('t') {
            return Some(next);
        }
        let mut twin = self.twin[op];
        while let Some(later) = twin.filter(|&t| self.ops[t].call <= horizon) {
            if !done.get(later) {
                return None;
            }
            twin = self.twin[later];
        }
        Some(next)
    }

    /// The earliest return among pending known operations.
    fn horizon(&self, node: &Node) -> Option<u64> {
        self.by_return.get(node.ret_ptr).map(|&op| self.ops[op].ret)
    }

    /// The node reached from `parent` by linearizing `op` (already set in `done`).
    fn child(&self, parent: &Node, op: usize, state: State, done: &Bits) -> Node {
        let mut ret_ptr = parent.ret_ptr;
        let mut extras = parent.extras.clone();
        let mut unknowns = parent.unknowns.clone();
        let at = self.position[op];
        if !self.ops[op].known() {
            insert_sorted(&mut unknowns, at);
        } else if at == ret_ptr {
            ret_ptr += 1;
            let mut consumed = 0;
            while extras.get(consumed) == Some(&ret_ptr) {
                consumed += 1;
                ret_ptr += 1;
            }
            extras.drain(..consumed);
        } else {
            insert_sorted(&mut extras, at);
        }
        let mut call_ptr = parent.call_ptr;
        while self
            .known_by_call
            .get(call_ptr)
            .is_some_and(|&o| done.get(o))
        {
            call_ptr += 1;
        }
        let (run_len, run_start) = match (self.ops[op].known(), parent.run_len) {
            (true, _) => (0, ABSENT),
            (false, 0) => (1, parent.state),
            (false, len) => (len + 1, parent.run_start),
        };
        Node {
            state,
            ret_ptr,
            extras,
            unknowns,
            call_ptr,
            run_len,
            run_start,
            cursor: Cursor::Known(call_ptr),
            via: Some(op),
        }
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
        let prefix_len = stack.len() - 1;
        let tail = stack[stack.len().saturating_sub(TAIL)..]
            .iter()
            .filter_map(|node| node.via)
            .map(|op| self.ops[op].label)
            .collect();
        *deepest = Some(DeadEnd {
            prefix_len,
            known_len,
            tail,
            state: top.state,
            blocked: self.ops[blocked].label,
        });
    }
}

fn insert_sorted(list: &mut Vec<usize>, value: usize) {
    let at = list.partition_point(|&v| v < value);
    list.insert(at, value);
}

/// Whether sorted `small` is a subset of sorted `large`.
fn is_subset(small: &[usize], large: &[usize]) -> bool {
    let mut rest = large.iter();
    small.iter().all(|s| rest.by_ref().any(|l| l == s))
}

/// Lowe's cache of visited nodes.
///
/// The set of linearized operations is encoded exactly and compactly: known
/// operations are "every position of `by_return` before `ret_ptr`, plus
/// `extras`" (only operations concurrent with the earliest pending return can
/// be in `extras`), unknown ones are listed explicitly.
///
/// Unknown operations are optional, so a node is *dominated* by a visited node
/// with the same known set and state whose unknown set is a subset of its own:
/// everything that can follow the larger node can follow the smaller one. Such
/// nodes are pruned, which is sound because both lead to the same verdict.
#[derive(Default)]
struct Seen {
    /// Key `[state, ret_ptr, extras..]` → the unknown sets visited with it,
    /// none a subset of another.
    map: HashMap<Vec<usize>, Vec<Vec<usize>>>,
    scratch: Vec<usize>,
}

impl Seen {
    /// Records `node`; returns false if it is dominated by a visited node.
    fn visit(&mut self, node: &Node) -> bool {
        self.scratch.clear();
        self.scratch
            .extend([node.state, node.run_len, node.run_start, node.ret_ptr]);
        self.scratch.extend_from_slice(&node.extras);
        if let Some(sets) = self.map.get_mut(self.scratch.as_slice()) {
            if sets.iter().any(|seen| is_subset(seen, &node.unknowns)) {
                return false;
            }
            sets.retain(|seen| !is_subset(&node.unknowns, seen));
            sets.push(node.unknowns.clone());
        } else {
            self.map
                .insert(self.scratch.clone(), vec![node.unknowns.clone()]);
        }
        true
    }
}

/// A fixed-size bitset over operation indices.
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
