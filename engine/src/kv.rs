//! memo's KV semantics as register functions (DESIGN §4): each client write is a function
//! from the register's current state to its next state plus an answer. Insert is "if
//! absent, set, else ALREADY_EXISTS"; Update "if present, set, else NOT_FOUND"; Upsert
//! "set"; Delete "if present, tombstone, else NOT_FOUND". Fetch and the identity round
//! change nothing.

use crate::ids::OpId;
use serde::{Deserialize, Serialize};

/// What a register holds once something was ever chosen for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// A live value.
    Value {
        /// The bytes.
        value: Vec<u8>,
        /// The op-ids of the writes folded into the change that produced this state (R6).
        ops: Vec<OpId>,
    },
    /// A deleted key, kept until garbage collection (R8).
    Tombstone {
        /// The op-ids of the writes folded into the change that produced this state.
        ops: Vec<OpId>,
    },
}

impl State {
    /// The value, if live.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            State::Value { value, .. } => Some(value),
            State::Tombstone { .. } => None,
        }
    }

    /// The op-ids that produced this state.
    pub fn ops(&self) -> &[OpId] {
        match self {
            State::Value { ops, .. } | State::Tombstone { ops } => ops,
        }
    }

    /// Whether the write `op` produced this state.
    pub fn carries(&self, op: OpId) -> bool {
        self.ops().contains(&op)
    }
}

/// The value of a register as the KV API sees it: `None` is absent (never written, or
/// deleted).
pub fn visible(state: Option<&State>) -> Option<&[u8]> {
    state.and_then(State::value)
}

/// A client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Set if absent, else ALREADY_EXISTS.
    Insert(Vec<u8>),
    /// Set if present, else NOT_FOUND.
    Update(Vec<u8>),
    /// Set.
    Upsert(Vec<u8>),
    /// Tombstone if present, else NOT_FOUND.
    Delete,
    /// Read the value (linearizable).
    Fetch,
}

impl Change {
    /// Whether this change can modify the register.
    pub fn is_write(&self) -> bool {
        !matches!(self, Change::Fetch)
    }
}

/// The answer to one operation, before it is mapped to a gRPC status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The write took effect.
    Done,
    /// The value read.
    Value(Vec<u8>),
    /// Insert on a present key.
    AlreadyExists,
    /// Update, Delete or Fetch on an absent key.
    NotFound,
}

/// Applies `change` (made by `op`) to `state` in place and returns its answer. A change whose
/// precondition fails leaves the state untouched.
pub fn apply(state: &mut Option<State>, change: &Change, op: OpId) -> Answer {
    let present = visible(state.as_ref()).is_some();
    let next = match change {
        Change::Fetch => {
            return match visible(state.as_ref()) {
                Some(v) => Answer::Value(v.to_vec()),
                None => Answer::NotFound,
            };
        }
        Change::Insert(_) if present => return Answer::AlreadyExists,
        Change::Update(_) | Change::Delete if !present => return Answer::NotFound,
        Change::Insert(v) | Change::Update(v) | Change::Upsert(v) => State::Value {
            value: v.clone(),
            ops: vec![op],
        },
        Change::Delete => State::Tombstone { ops: vec![op] },
    };
    *state = Some(next);
    Answer::Done
}

/// Applies a fold of changes in order, merging the op-ids of every write that took effect
/// into the final state so that each can later recover its outcome (R6).
pub fn apply_fold<'a>(
    state: &mut Option<State>,
    changes: impl IntoIterator<Item = (&'a Change, OpId)>,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut folded: Vec<OpId> = Vec::new();
    for (change, op) in changes {
        let answer = apply(state, change, op);
        if answer == Answer::Done && change.is_write() {
            folded.push(op);
        }
        answers.push(answer);
    }
    if folded.len() > 1 {
        match state {
            Some(State::Value { ops, .. }) | Some(State::Tombstone { ops }) => *ops = folded,
            None => unreachable!("a write that took effect leaves a state"),
        }
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeTag;

    fn op(seq: u64) -> OpId {
        OpId {
            node: NodeTag(1),
            restart: 1,
            seq,
        }
    }

    #[test]
    fn each_change_has_its_precondition() {
        // (initial, change, answer, visible after)
        let v = |s: &str| s.as_bytes().to_vec();
        let live = Some(State::Value {
            value: v("a"),
            ops: vec![op(0)],
        });
        let dead = Some(State::Tombstone { ops: vec![op(0)] });
        let table: Vec<(Option<State>, Change, Answer, Option<Vec<u8>>)> = vec![
            (None, Change::Insert(v("x")), Answer::Done, Some(v("x"))),
            (
                dead.clone(),
                Change::Insert(v("x")),
                Answer::Done,
                Some(v("x")),
            ),
            (
                live.clone(),
                Change::Insert(v("x")),
                Answer::AlreadyExists,
                Some(v("a")),
            ),
            (None, Change::Update(v("x")), Answer::NotFound, None),
            (dead.clone(), Change::Update(v("x")), Answer::NotFound, None),
            (
                live.clone(),
                Change::Update(v("x")),
                Answer::Done,
                Some(v("x")),
            ),
            (None, Change::Upsert(v("x")), Answer::Done, Some(v("x"))),
            (
                live.clone(),
                Change::Upsert(v("x")),
                Answer::Done,
                Some(v("x")),
            ),
            (None, Change::Delete, Answer::NotFound, None),
            (dead.clone(), Change::Delete, Answer::NotFound, None),
            (live.clone(), Change::Delete, Answer::Done, None),
            (None, Change::Fetch, Answer::NotFound, None),
            (dead, Change::Fetch, Answer::NotFound, None),
            (live, Change::Fetch, Answer::Value(v("a")), Some(v("a"))),
        ];
        for (i, (mut state, change, answer, after)) in table.into_iter().enumerate() {
            assert_eq!(apply(&mut state, &change, op(9)), answer, "row {i}");
            assert_eq!(
                visible(state.as_ref()).map(<[u8]>::to_vec),
                after,
                "row {i}"
            );
        }
    }

    #[test]
    fn a_fold_keeps_every_effective_write_op() {
        let mut state = None;
        let changes = [
            Change::Insert(b"a".to_vec()),
            Change::Insert(b"b".to_vec()),
            Change::Upsert(b"c".to_vec()),
        ];
        let answers = apply_fold(&mut state, changes.iter().zip([op(1), op(2), op(3)]));
        assert_eq!(
            answers,
            vec![Answer::Done, Answer::AlreadyExists, Answer::Done]
        );
        let state = state.expect("written");
        assert!(state.carries(op(1)) && state.carries(op(3)) && !state.carries(op(2)));
        assert_eq!(state.value(), Some(&b"c"[..]));
    }
}
