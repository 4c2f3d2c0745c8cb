//! memo's KV semantics as register functions (docs/ARCHITECTURE.md, "The register protocol"): each client write is a function
//! from the register's current state to its next state plus an answer. Insert is "if
//! absent, set, else ALREADY_EXISTS"; Update "if present, set, else NOT_FOUND"; Upsert
//! "set"; Delete "if present, tombstone, else NOT_FOUND". Fetch and the identity round
//! change nothing.
//!
//! # Versioning
//!
//! A key written under a policy rule with `--versions N` keeps its last `N` versions
//! *inside its register state* ([`History`]), so the history is chosen by Paxos with the
//! value and travels with it (Accepts, read views, copies to new replicas). The node
//! where a write enters the cluster reads `N` from its policy table and stamps the write
//! with it and its wall-clock time ([`Stamp`]); [`apply`] does the rest.
//!
//! - **V1 one order.** A version's number is the count of writes that took effect on the
//!   register since numbering began, assigned by [`apply`] over the chosen sequence of
//!   states. Every replica's state descends from the chosen ones, so version 7 of a key
//!   is the same value on every node, and numbers never repeat while the register lives.
//! - **V2 the stamp decides.** How many versions a write keeps is the stamp's, fixed where
//!   the write entered; a write racing a rule change keeps either count, never a mix, and a
//!   rule that stops versioning drops the history at the next write (the numbers go on).
//!   Whatever the count, the earlier versions' values are kept within
//!   [`HISTORY_BYTES_MAX`], oldest dropped first, so a register always fits a message.
//! - **V3 a Delete is a version.** It makes the key absent and takes the next number; the
//!   versions before it stay readable until later writes age them out.
//! - **V4 garbage collection spares histories.** Tombstone GC (R8) only removes a tombstone
//!   whose history keeps no value ([`State::collectable`]).
//!
//! Keys never written under such a rule carry no history and cost nothing: their states,
//! messages and stored registers are byte for byte what they were before versioning.

use crate::ids::OpId;
use crate::paxos::ballot::Ballot;
use serde::{Deserialize, Serialize};

/// How many recent writes a state remembers (see [`Applied`]).
pub const RECENT_OPS_MAX: usize = 4;

/// How many aborted writes a state names one by one (see [`Aborts`]).
pub const ABORTED_OPS_MAX: usize = 8;

/// How many per-node abort watermarks a state keeps (see [`Aborts`]): more nodes than this
/// with evicted markers on one key, and the oldest watermark is forgotten.
pub const ABORT_WATERMARKS_MAX: usize = 32;

/// A write that took effect, remembered in the states that follow it (R6 recovery): the op
/// and the ballot of the proposal that first applied it. Along the chain of chosen states
/// these entries appear in the order the writes took effect, and their ballots never
/// decrease, which lets a recovering proposer *prove* that its write did not take effect
/// (see `node::proposer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The proposal's ballot.
    pub ballot: Ballot,
    /// The write.
    pub op: OpId,
}

/// The writes of a key that a recovery declared aborted (R6), inherited by every later
/// state of the key.
///
/// A recovering coordinator that does not find its write in the state it is about to make
/// chosen adds the write's op-id here and answers UNAVAILABLE only once that state is
/// chosen. Every later chosen state descends from it (Paxos), so it inherits the marker,
/// and [`apply`] refuses a marked write: a delayed Forward, a stale retry or a replay of
/// that write can no longer take effect.
///
/// Op-ids of one node are minted in increasing `(restart, seq)` order, so every marker
/// refuses, besides its own write, every write of the same node minted before it that the
/// state does not remember as applied: such a write is as late as the aborted one (found
/// by the simulator, seed 141: a Delete answered UNAVAILABLE by its deadline, before any
/// recovery, landed after a newer write; a later write of the same node had been aborted).
/// The cost is an UNAVAILABLE answer (an unknown outcome) for an older write of that node
/// to that key still in flight when the newer one was aborted.
///
/// The last [`ABORTED_OPS_MAX`] aborted writes are named one by one (`ops`); an older
/// marker is folded into its node's watermark (`below`), which refuses the same writes.
/// At most [`ABORT_WATERMARKS_MAX`] nodes keep a watermark per key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aborts {
    /// The most recently aborted writes, oldest first.
    pub ops: Vec<OpId>,
    /// Per node (at most one entry each, least recently raised first): the highest evicted
    /// aborted write. Writes of that node at or below it are refused.
    pub below: Vec<OpId>,
}

impl Aborts {
    /// Whether there is nothing to refuse.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.below.is_empty()
    }

    /// Whether the write `op` must be refused: it, or a later write of the same node, was
    /// aborted. (A write that node minted earlier and that has still not taken effect is
    /// as late as the aborted one, or later: its client has been answered or will be
    /// answered UNAVAILABLE; refusing it keeps it from landing after newer writes.)
    pub fn refuses(&self, op: OpId) -> bool {
        let covers = |w: &OpId| w.node == op.node && (op.restart, op.seq) <= (w.restart, w.seq);
        self.ops.iter().any(covers) || self.below.iter().any(covers)
    }

    /// Records `op` as aborted. Idempotent.
    pub fn add(&mut self, op: OpId) {
        if self.refuses(op) {
            return;
        }
        self.ops.push(op);
        while self.ops.len() > ABORTED_OPS_MAX {
            let evicted = self.ops.remove(0);
            self.raise(evicted);
        }
    }

    /// Raises `op.node`'s watermark to at least `op`: every write of that node at or
    /// below `op` is refused from now on.
    pub fn raise(&mut self, op: OpId) {
        let mut w = op;
        if let Some(i) = self.below.iter().position(|b| b.node == op.node) {
            let old = self.below.remove(i);
            if (old.restart, old.seq) > (op.restart, op.seq) {
                w = old;
            }
        }
        self.below.push(w);
        if self.below.len() > ABORT_WATERMARKS_MAX {
            self.below.remove(0);
        }
        // Markers the watermark now covers are redundant.
        self.ops.retain(|o| !(o.node == w.node && (o.restart, o.seq) <= (w.restart, w.seq)));
    }
}

/// How the bytes of a value are encoded: opaque to the engine, which stores it with the
/// bytes and hands both back on reads. The runtime gives it a meaning (compression,
/// encryption: `memo_node::policy`); `Encoding::PLAIN` is the bytes as the client sent
/// them, and every value written before encodings existed reads back as plain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Encoding(pub u8);

impl Encoding {
    /// The bytes as the client sent them.
    pub const PLAIN: Encoding = Encoding(0);
}

/// A value as the cluster stores and carries it: its bytes and how they are encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// The (encoded) bytes.
    pub bytes: Vec<u8>,
    /// How `bytes` encode the client's value.
    pub encoding: Encoding,
}

impl Value {
    /// Bytes stored as the client sent them.
    pub fn plain(bytes: impl Into<Vec<u8>>) -> Self {
        Value { bytes: bytes.into(), encoding: Encoding::PLAIN }
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Value::plain(bytes)
    }
}

/// The most versions a key may keep (`memo policy set --versions N`): every Accept and
/// every read view of a versioned key carries its whole history.
pub const VERSIONS_MAX: u16 = 100;

/// The most bytes of earlier versions' values a state keeps: a register travels whole in
/// every Accept, so its history must fit a peer message (`message::ENVELOPE_BYTES_MAX`,
/// 64 MiB) beside the largest value, whatever `--versions` says. The oldest versions go
/// first.
pub const HISTORY_BYTES_MAX: usize = 32 * 1024 * 1024;

/// What a write asks of its key's history, fixed by the node where the write entered the
/// cluster and carried with it to whichever node applies it (versioning, rule V2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// How many versions of the key to keep, this write's included (0 and 1: no history;
    /// at most [`VERSIONS_MAX`]).
    pub keep: u16,
    /// When the write entered the cluster: milliseconds since the Unix epoch on the entry
    /// node's clock (0: unknown). Recorded, never compared.
    pub at_ms: u64,
}

/// One version of a key: a value, or a Delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Its number in the key's chosen order (V1); 0 for the current value of a key whose
    /// writes were never numbered.
    pub number: u64,
    /// When its write entered the cluster ([`Stamp::at_ms`]; 0: unknown).
    pub at_ms: u64,
    /// The value, or `None` for a Delete.
    pub value: Option<Value>,
}

/// The numbered history of a key written under a versioning policy (V1–V4): the number
/// and time of the state's own write, and the versions before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The number of the write that made this state.
    pub number: u64,
    /// When that write entered the cluster.
    pub at_ms: u64,
    /// The earlier versions kept, oldest first, numbers consecutive up to `number - 1`.
    pub earlier: Vec<Version>,
}

/// What a register holds once something was ever chosen for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// A live value.
    Value {
        /// The bytes, encoded as `encoding` says.
        value: Vec<u8>,
        /// How `value` is encoded.
        encoding: Encoding,
        /// The last writes of this key's history, oldest first, at most
        /// [`RECENT_OPS_MAX`].
        recent: Vec<Applied>,
        /// Writes a recovery declared aborted.
        aborted: Aborts,
        /// The numbered versions, once a write under a versioning policy numbered them
        /// (`None`: never; the common case costs nothing).
        history: Option<Box<History>>,
    },
    /// A deleted key, kept until garbage collection (R8). A recovery that aborts a write
    /// on an absent key also leaves a tombstone, to carry the marker.
    Tombstone {
        /// As for `Value`.
        recent: Vec<Applied>,
        /// As for `Value`.
        aborted: Aborts,
        /// As for `Value`: a versioned Delete keeps the versions before it (V3).
        history: Option<Box<History>>,
    },
}

/// Why [`apply`] refused a write: a recovery answered UNAVAILABLE for it after finding it
/// absent, and recorded it as aborted in the chosen state, so it may never take effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aborted;

impl State {
    /// The value, if live.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            State::Value { value, .. } => Some(value),
            State::Tombstone { .. } => None,
        }
    }

    /// The value and its encoding, if live.
    pub fn stored(&self) -> Option<Value> {
        match self {
            State::Value { value, encoding, .. } => Some(Value { bytes: value.clone(), encoding: *encoding }),
            State::Tombstone { .. } => None,
        }
    }

    /// The recent writes of this key, oldest first.
    pub fn recent(&self) -> &[Applied] {
        match self {
            State::Value { recent, .. } | State::Tombstone { recent, .. } => recent,
        }
    }

    /// The writes a recovery declared aborted (R6); see [`Aborts`].
    pub fn aborted(&self) -> &Aborts {
        match self {
            State::Value { aborted, .. } | State::Tombstone { aborted, .. } => aborted,
        }
    }

    /// The numbered history, if a versioned write ever numbered this key.
    pub fn history(&self) -> Option<&History> {
        match self {
            State::Value { history, .. } | State::Tombstone { history, .. } => history.as_deref(),
        }
    }

    /// The key's versions, oldest first, the current one last: the numbered history, or
    /// the live value alone as version 0 if the key's writes were never numbered. With
    /// `number`, only that version (none if it is not kept); only what is returned is
    /// copied.
    pub fn versions(&self, number: Option<u64>) -> Vec<Version> {
        let wanted = |n: u64| number.is_none_or(|w| w == n);
        let (current, at_ms, earlier) = match self.history() {
            Some(h) => (h.number, h.at_ms, h.earlier.as_slice()),
            None if self.value().is_none() => return Vec::new(),
            None => (0, 0, &[][..]),
        };
        let mut out: Vec<Version> = earlier.iter().filter(|v| wanted(v.number)).cloned().collect();
        if wanted(current) {
            out.push(Version { number: current, at_ms, value: self.stored() });
        }
        out
    }

    /// A copy without the history (what a read of the current value needs), made without
    /// copying the history.
    pub fn without_history(&self) -> State {
        match self {
            State::Value { value, encoding, recent, aborted, .. } => State::Value {
                value: value.clone(),
                encoding: *encoding,
                recent: recent.clone(),
                aborted: aborted.clone(),
                history: None,
            },
            State::Tombstone { recent, aborted, .. } => {
                State::Tombstone { recent: recent.clone(), aborted: aborted.clone(), history: None }
            }
        }
    }

    /// Whether tombstone garbage collection (R8) may remove this state: a tombstone whose
    /// history keeps no value (V4: versions a Delete left readable stay until they age out).
    pub fn collectable(&self) -> bool {
        matches!(self, State::Tombstone { .. })
            && self.history().is_none_or(|h| h.earlier.iter().all(|v| v.value.is_none()))
    }

    /// Bytes the allocator gave the buffers this state owns (the value, recent and aborted
    /// writes, the history), for the memory bounds of the caches that keep states: each
    /// buffer's capacity, rounded to its size class ([`crate::mem`]).
    pub fn heap_bytes(&self) -> usize {
        use crate::mem::{allocation_bytes, vec_bytes};
        let (value, recent, aborted, history) = match self {
            State::Value { value, recent, aborted, history, .. } => (vec_bytes(value), recent, aborted, history),
            State::Tombstone { recent, aborted, history } => (0, recent, aborted, history),
        };
        value
            + vec_bytes(recent)
            + vec_bytes(&aborted.ops)
            + vec_bytes(&aborted.below)
            + history.as_ref().map_or(0, |h| {
                allocation_bytes(std::mem::size_of::<History>())
                    + vec_bytes(&h.earlier)
                    + h.earlier.iter().map(|v| v.value.as_ref().map_or(0, |v| vec_bytes(&v.bytes))).sum::<usize>()
            })
    }

    /// Whether the write `op` is among the recent writes.
    pub fn carries(&self, op: OpId) -> bool {
        self.recent().iter().any(|a| a.op == op)
    }

    /// Whether the write `op` was declared aborted.
    pub fn refuses(&self, op: OpId) -> bool {
        self.aborted().refuses(op)
    }
}

/// Records `op` as aborted in `state` (R6): an absent key becomes a tombstone carrying the
/// marker. Idempotent.
pub fn abort(state: &mut Option<State>, op: OpId) {
    let s =
        state.get_or_insert_with(|| State::Tombstone { recent: Vec::new(), aborted: Aborts::default(), history: None });
    match s {
        State::Value { aborted, .. } | State::Tombstone { aborted, .. } => aborted.add(op),
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
    Insert(Value),
    /// Set if present, else NOT_FOUND.
    Update(Value),
    /// Set.
    Upsert(Value),
    /// Tombstone if present, else NOT_FOUND.
    Delete,
    /// Read the value (linearizable).
    Fetch,
    /// Read the key's versions (linearizable): all of them, oldest first, or only the one
    /// numbered `number` (none if it is not kept). Answers [`Answer::Versions`].
    Versions {
        /// One version, or all.
        number: Option<u64>,
    },
    /// Set to `value` if the stored value is `expected`, bytes and encoding (`None`:
    /// absent), else CONFLICT and nothing changes: a compare-and-set for memo's own
    /// read-modify-write records (the policy table). Not on the public API.
    Swap {
        /// The value the key must hold.
        expected: Option<Value>,
        /// The value it gets.
        value: Value,
    },
}

impl Change {
    /// Whether this change can modify the register.
    pub fn is_write(&self) -> bool {
        !matches!(self, Change::Fetch | Change::Versions { .. })
    }
}

/// The answer to one operation, before it is mapped to a gRPC status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The write took effect.
    Done,
    /// The value read.
    Value(Value),
    /// Insert on a present key.
    AlreadyExists,
    /// Update, Delete or Fetch on an absent key.
    NotFound,
    /// Swap on a key that does not hold the expected value.
    Conflict,
    /// The versions a [`Change::Versions`] asked for, oldest first.
    Versions(Vec<Version>),
}

/// Applies `change` (made by `op`, stamped `stamp`, proposed at `ballot`) to `state` in
/// place and returns its answer. A change whose precondition fails leaves the state
/// untouched.
///
/// Every write first checks its op-id against the state (R6): a write the state already
/// remembers took effect before and answers `Done` without applying again (a replayed
/// Forward whose dedup window was lost in a restart); a write the state marks aborted is
/// refused with [`Aborted`] and changes nothing.
///
/// A write that takes effect on a numbered key, or that asks to keep versions, gets the
/// next version number (see [`next_history`]).
pub fn apply(
    state: &mut Option<State>,
    change: &Change,
    op: OpId,
    stamp: Stamp,
    ballot: Ballot,
) -> Result<Answer, Aborted> {
    let present = visible(state.as_ref()).is_some();
    if change.is_write() {
        if state.as_ref().is_some_and(|s| s.carries(op)) {
            return Ok(Answer::Done);
        }
        if state.as_ref().is_some_and(|s| s.refuses(op)) {
            return Err(Aborted);
        }
    }
    let (value, encoding) = match change {
        Change::Fetch => {
            return Ok(match state.as_ref().and_then(State::stored) {
                Some(v) => Answer::Value(v),
                None => Answer::NotFound,
            });
        }
        Change::Versions { number } => return Ok(Answer::Versions(versions(state.as_ref(), *number))),
        Change::Insert(_) if present => return Ok(Answer::AlreadyExists),
        Change::Update(_) | Change::Delete if !present => return Ok(Answer::NotFound),
        Change::Swap { expected, .. } if state.as_ref().and_then(State::stored) != *expected => {
            return Ok(Answer::Conflict);
        }
        Change::Insert(v) | Change::Update(v) | Change::Upsert(v) | Change::Swap { value: v, .. } => {
            (Some(v.bytes.clone()), v.encoding)
        }
        Change::Delete => (None, Encoding::PLAIN),
    };
    // The write takes effect: the state it replaces hands its parts over, uncopied.
    let (mut recent, aborted, history, replaced) = match state.take() {
        Some(State::Value { value, encoding, recent, aborted, history }) => {
            (recent, aborted, history, Some(Some(Value { bytes: value, encoding })))
        }
        Some(State::Tombstone { recent, aborted, history }) => (recent, aborted, history, Some(None)),
        None => (Vec::new(), Aborts::default(), None, None),
    };
    recent.push(Applied { ballot, op });
    if recent.len() > RECENT_OPS_MAX {
        recent.drain(..recent.len() - RECENT_OPS_MAX);
    }
    let history = next_history(history, replaced, stamp);
    *state = Some(match value {
        Some(value) => State::Value { value, encoding, recent, aborted, history },
        None => State::Tombstone { recent, aborted, history },
    });
    Ok(Answer::Done)
}

/// The history of the state a write makes on top of the state it replaces, given as that
/// state's `history` and its content (`replaced`: `None` for no state, `Some(None)` for a
/// tombstone, `Some(Some(value))` for a value) (versioning, V1–V3):
///
/// - a key is numbered from its first write stamped to keep more than one version, and
///   stays numbered: every later write that takes effect gets the next number, whatever
///   its stamp (so numbers never restart while the register lives);
/// - the version it replaces (a value, or a Delete as a version with no value) joins the
///   earlier versions; a live value written before numbering began becomes version 1;
/// - the newest `stamp.keep` versions are kept, this write's included, as long as the
///   earlier ones' values fit in [`HISTORY_BYTES_MAX`] (the oldest go first).
///
/// A pure function of the chosen state and the write: every replica that holds the state
/// holds the same numbers (V1).
pub fn next_history(
    history: Option<Box<History>>,
    replaced: Option<Option<Value>>,
    stamp: Stamp,
) -> Option<Box<History>> {
    if history.is_none() && stamp.keep <= 1 {
        return None;
    }
    let replaced = replaced.flatten();
    let (base, at_ms, mut history) = match history {
        Some(h) => (h.number, h.at_ms, h),
        None => (u64::from(replaced.is_some()), 0, Box::default()),
    };
    let earlier = &mut history.earlier;
    if base > 0 {
        earlier.push(Version { number: base, at_ms, value: replaced });
    }
    let earlier_max = usize::from(stamp.keep.clamp(1, VERSIONS_MAX)) - 1;
    if earlier.len() > earlier_max {
        earlier.drain(..earlier.len() - earlier_max);
    }
    let size = |v: &Version| v.value.as_ref().map_or(0, |v| v.bytes.len());
    let mut bytes: usize = earlier.iter().map(size).sum();
    let mut over = 0;
    while bytes > HISTORY_BYTES_MAX {
        bytes -= size(&earlier[over]);
        over += 1;
    }
    earlier.drain(..over);
    history.number = base + 1;
    history.at_ms = stamp.at_ms;
    Some(history)
}

/// The versions of `state` a [`Change::Versions`] asks for.
pub fn versions(state: Option<&State>, number: Option<u64>) -> Vec<Version> {
    state.map(|s| s.versions(number)).unwrap_or_default()
}

/// Applies a fold of changes in order; each write that takes effect is remembered in the
/// state's recent writes.
pub fn apply_fold<'a>(
    state: &mut Option<State>,
    changes: impl IntoIterator<Item = (&'a Change, OpId, Stamp)>,
    ballot: Ballot,
) -> Vec<Result<Answer, Aborted>> {
    changes.into_iter().map(|(change, op, stamp)| apply(state, change, op, stamp, ballot)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeTag;

    /// No versioning.
    const NO: Stamp = Stamp { keep: 0, at_ms: 0 };

    fn op(seq: u64) -> OpId {
        OpId { node: NodeTag(1), restart: 1, seq }
    }

    fn b(round: u64) -> Ballot {
        Ballot { epoch: 1, round, node: NodeTag(1), restart: 1 }
    }

    #[test]
    fn each_change_has_its_precondition() {
        // (initial, change, answer, visible after)
        let v = |s: &str| Value::plain(s);
        let old = vec![Applied { ballot: b(1), op: op(0) }];
        let live = Some(State::Value {
            value: b"a".to_vec(),
            encoding: Encoding::PLAIN,
            recent: old.clone(),
            aborted: Aborts::default(),
            history: None,
        });
        let dead = Some(State::Tombstone { recent: old, aborted: Aborts::default(), history: None });
        type Row = (Option<State>, Change, Answer, Option<Value>);
        let table: Vec<Row> = vec![
            (None, Change::Insert(v("x")), Answer::Done, Some(v("x"))),
            (dead.clone(), Change::Insert(v("x")), Answer::Done, Some(v("x"))),
            (live.clone(), Change::Insert(v("x")), Answer::AlreadyExists, Some(v("a"))),
            (None, Change::Update(v("x")), Answer::NotFound, None),
            (dead.clone(), Change::Update(v("x")), Answer::NotFound, None),
            (live.clone(), Change::Update(v("x")), Answer::Done, Some(v("x"))),
            (None, Change::Upsert(v("x")), Answer::Done, Some(v("x"))),
            (live.clone(), Change::Upsert(v("x")), Answer::Done, Some(v("x"))),
            (None, Change::Delete, Answer::NotFound, None),
            (dead.clone(), Change::Delete, Answer::NotFound, None),
            (live.clone(), Change::Delete, Answer::Done, None),
            (None, Change::Fetch, Answer::NotFound, None),
            (dead.clone(), Change::Fetch, Answer::NotFound, None),
            (live.clone(), Change::Fetch, Answer::Value(v("a")), Some(v("a"))),
            (None, Change::Swap { expected: None, value: v("x") }, Answer::Done, Some(v("x"))),
            (dead.clone(), Change::Swap { expected: None, value: v("x") }, Answer::Done, Some(v("x"))),
            (live.clone(), Change::Swap { expected: None, value: v("x") }, Answer::Conflict, Some(v("a"))),
            (live.clone(), Change::Swap { expected: Some(v("a")), value: v("x") }, Answer::Done, Some(v("x"))),
            (live.clone(), Change::Swap { expected: Some(v("b")), value: v("x") }, Answer::Conflict, Some(v("a"))),
            (dead, Change::Swap { expected: Some(v("a")), value: v("x") }, Answer::Conflict, None),
            // The encoding is part of the value a swap expects.
            (
                live,
                Change::Swap { expected: Some(Value { bytes: b"a".to_vec(), encoding: Encoding(1) }), value: v("x") },
                Answer::Conflict,
                Some(v("a")),
            ),
        ];
        for (i, (mut state, change, answer, after)) in table.into_iter().enumerate() {
            assert_eq!(apply(&mut state, &change, op(9), NO, b(2)), Ok(answer.clone()), "row {i}");
            assert_eq!(state.as_ref().and_then(State::stored), after, "row {i}");
            let remembered = state.as_ref().is_some_and(|s| s.carries(op(9)));
            assert_eq!(remembered, answer == Answer::Done && change.is_write(), "row {i}");
        }
    }

    #[test]
    fn a_fold_remembers_every_effective_write_in_order() {
        let mut state = None;
        let changes = [
            Change::Insert(b"a".to_vec().into()),
            Change::Insert(b"b".to_vec().into()),
            Change::Upsert(b"c".to_vec().into()),
        ];
        let answers = apply_fold(&mut state, changes.iter().zip([op(1), op(2), op(3)]).map(|(c, o)| (c, o, NO)), b(5));
        assert_eq!(answers, vec![Ok(Answer::Done), Ok(Answer::AlreadyExists), Ok(Answer::Done)]);
        let state = state.expect("written");
        assert!(state.carries(op(1)) && state.carries(op(3)) && !state.carries(op(2)));
        assert_eq!(state.value(), Some(&b"c"[..]));
        assert_eq!(state.recent().iter().map(|a| a.op).collect::<Vec<_>>(), vec![op(1), op(3)]);
    }

    #[test]
    fn the_recent_window_keeps_the_newest_writes() {
        let mut state = None;
        for i in 0..20 {
            apply(&mut state, &Change::Upsert(vec![i as u8].into()), op(i), NO, b(i)).unwrap();
        }
        let recent = state.expect("written").recent().to_vec();
        assert_eq!(recent.len(), RECENT_OPS_MAX);
        assert_eq!(recent.first().map(|a| a.op), Some(op(20 - RECENT_OPS_MAX as u64)));
        assert_eq!(recent.last().map(|a| a.op), Some(op(19)));
    }

    #[test]
    fn an_abort_also_refuses_the_older_unapplied_writes_of_its_node() {
        // Madsim seed 141: a Delete answered UNAVAILABLE by its deadline, before any
        // recovery marked it, landed after a newer acknowledged write; a later write of
        // the same node had been aborted on that key meanwhile.
        let of = |node: u64, restart: u64, seq: u64| OpId { node: crate::ids::NodeTag(node), restart, seq };
        let mut state = None;
        abort(&mut state, of(7, 2, 37));
        let aborted = state.as_ref().expect("a tombstone carries the marker").aborted().clone();
        assert!(aborted.refuses(of(7, 2, 37)));
        assert!(aborted.refuses(of(7, 2, 24)), "older, same node and life");
        assert!(aborted.refuses(of(7, 1, 900)), "an earlier life of the same node");
        assert!(!aborted.refuses(of(7, 2, 38)), "minted after the aborted write");
        assert!(!aborted.refuses(of(7, 3, 1)), "a later life");
        assert!(!aborted.refuses(of(8, 2, 24)), "another node");
        assert_eq!(apply(&mut state, &Change::Delete, of(7, 2, 24), NO, b(1)), Err(Aborted));
        assert_eq!(apply(&mut state, &Change::Upsert(b"v".to_vec().into()), of(7, 2, 38), NO, b(2)), Ok(Answer::Done));
    }

    #[test]
    fn a_write_is_applied_at_most_once_and_never_after_its_abort() {
        let v = |s: &str| Change::Upsert(s.as_bytes().to_vec().into());
        let mut state = None;
        assert_eq!(apply(&mut state, &v("a"), op(1), NO, b(1)), Ok(Answer::Done));
        assert_eq!(apply(&mut state, &v("b"), op(2), NO, b(2)), Ok(Answer::Done));
        // A replay of op 1 is remembered: no second effect.
        assert_eq!(apply(&mut state, &v("a"), op(1), NO, b(3)), Ok(Answer::Done));
        assert_eq!(visible(state.as_ref()), Some(&b"b"[..]));
        // Op 3 is aborted: refused, state untouched; the marker is inherited by later states.
        abort(&mut state, op(3));
        abort(&mut state, op(3));
        assert_eq!(state.as_ref().map(|s| s.aborted().ops.len()), Some(1), "idempotent");
        let before = state.clone();
        assert_eq!(apply(&mut state, &v("c"), op(3), NO, b(4)), Err(Aborted));
        assert_eq!(state, before);
        assert_eq!(apply(&mut state, &Change::Delete, op(4), NO, b(5)), Ok(Answer::Done));
        assert_eq!(apply(&mut state, &Change::Insert(b"d".to_vec().into()), op(3), NO, b(6)), Err(Aborted));
        assert_eq!(apply(&mut state, &Change::Fetch, op(3), NO, b(6)), Ok(Answer::NotFound), "reads are not writes");
    }

    #[test]
    fn an_abort_on_an_absent_key_leaves_a_tombstone_and_evicted_markers_become_watermarks() {
        let mut state = None;
        abort(&mut state, op(0));
        assert!(
            matches!(&state, Some(State::Tombstone { recent, aborted, .. }) if recent.is_empty() && aborted.ops == [op(0)])
        );
        assert_eq!(visible(state.as_ref()), None);
        assert_eq!(apply(&mut state, &Change::Insert(b"x".to_vec().into()), op(1), NO, b(1)), Ok(Answer::Done));
        for i in 2..20 {
            abort(&mut state, op(i));
        }
        let s = state.clone().expect("written");
        assert_eq!(s.aborted().ops.len(), ABORTED_OPS_MAX);
        assert_eq!(s.aborted().ops.first(), Some(&op(20 - ABORTED_OPS_MAX as u64)));
        assert_eq!(s.aborted().ops.last(), Some(&op(19)));
        assert_eq!(s.aborted().below, vec![op(19 - ABORTED_OPS_MAX as u64)], "one watermark for the node");
        for i in 0..20 {
            assert!(s.refuses(op(i)), "op {i}: evicted markers stay covered");
        }
        assert!(!s.refuses(op(20)), "a newer write of the node is not");
        let other = OpId { node: NodeTag(2), restart: 1, seq: 3 };
        assert!(!s.refuses(other), "nor another node's");
        // The write applied before the aborts is remembered, so a replay is Done, not refused.
        assert_eq!(apply(&mut state, &Change::Insert(b"x".to_vec().into()), op(1), NO, b(2)), Ok(Answer::Done));
        // A later life of the node is above the watermark.
        assert!(!s.refuses(OpId { node: NodeTag(1), restart: 2, seq: 0 }));
    }

    #[test]
    fn watermarks_are_bounded_per_key() {
        let mut a = Aborts::default();
        for n in 0..(ABORT_WATERMARKS_MAX as u64 + 5) {
            for seq in 0..=ABORTED_OPS_MAX as u64 {
                a.add(OpId { node: NodeTag(n), restart: 1, seq });
            }
        }
        assert!(a.below.len() <= ABORT_WATERMARKS_MAX);
        assert!(a.ops.len() <= ABORTED_OPS_MAX);
        let last = OpId { node: NodeTag(ABORT_WATERMARKS_MAX as u64 + 4), restart: 1, seq: 0 };
        assert!(a.refuses(last));
    }

    fn keep(n: u16, at_ms: u64) -> Stamp {
        Stamp { keep: n, at_ms }
    }

    fn numbers(state: &Option<State>) -> Vec<(u64, Option<Vec<u8>>)> {
        versions(state.as_ref(), None).into_iter().map(|v| (v.number, v.value.map(|v| v.bytes))).collect()
    }

    fn some(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn versioned_writes_are_numbered_in_order_and_the_newest_n_are_kept() {
        let mut state = None;
        for (i, v) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let i = i as u64;
            assert_eq!(
                apply(&mut state, &Change::Upsert(Value::plain(v)), op(i), keep(3, 100 + i), b(i)),
                Ok(Answer::Done)
            );
        }
        assert_eq!(numbers(&state), vec![(2, some("b")), (3, some("c")), (4, some("d"))]);
        let third = versions(state.as_ref(), Some(3));
        assert_eq!(third, vec![Version { number: 3, at_ms: 102, value: Some(Value::plain("c")) }]);
        assert!(versions(state.as_ref(), Some(1)).is_empty(), "aged out");
        assert_eq!(
            apply(&mut state, &Change::Versions { number: Some(4) }, op(9), NO, b(9)),
            Ok(Answer::Versions(vec![Version { number: 4, at_ms: 103, value: Some(Value::plain("d")) }]))
        );
        // A write refused by its precondition, or replayed, takes no number.
        assert_eq!(
            apply(&mut state, &Change::Insert(Value::plain("x")), op(10), keep(3, 1), b(10)),
            Ok(Answer::AlreadyExists)
        );
        assert_eq!(apply(&mut state, &Change::Upsert(Value::plain("d")), op(3), keep(3, 1), b(11)), Ok(Answer::Done));
        assert_eq!(numbers(&state).last().map(|v| v.0), Some(4));
    }

    #[test]
    fn a_delete_is_a_version_and_leaves_the_earlier_ones_readable() {
        let mut state = None;
        apply(&mut state, &Change::Upsert(Value::plain("a")), op(1), keep(3, 1), b(1)).unwrap();
        apply(&mut state, &Change::Upsert(Value::plain("b")), op(2), keep(3, 2), b(2)).unwrap();
        apply(&mut state, &Change::Delete, op(3), keep(3, 3), b(3)).unwrap();
        assert_eq!(visible(state.as_ref()), None);
        assert_eq!(apply(&mut state, &Change::Fetch, op(9), NO, b(9)), Ok(Answer::NotFound));
        assert_eq!(numbers(&state), vec![(1, some("a")), (2, some("b")), (3, None)]);
        let s = state.clone().expect("a tombstone");
        assert!(!s.collectable(), "V4: versions with values keep the tombstone");
        // Writes after the Delete go on counting; once only Deletes are left, the
        // tombstone may be collected.
        apply(&mut state, &Change::Insert(Value::plain("c")), op(4), keep(3, 4), b(4)).unwrap();
        assert_eq!(numbers(&state), vec![(2, some("b")), (3, None), (4, some("c"))]);
        apply(&mut state, &Change::Delete, op(5), keep(2, 5), b(5)).unwrap();
        apply(&mut state, &Change::Insert(Value::plain("e")), op(6), keep(2, 6), b(6)).unwrap();
        apply(&mut state, &Change::Delete, op(7), keep(2, 7), b(7)).unwrap();
        assert_eq!(numbers(&state), vec![(6, some("e")), (7, None)]);
        apply(&mut state, &Change::Insert(Value::plain("f")), op(8), keep(2, 8), b(8)).unwrap();
        apply(&mut state, &Change::Delete, op(9), keep(1, 9), b(9)).unwrap();
        assert_eq!(numbers(&state), vec![(9, None)]);
        assert!(state.expect("a tombstone").collectable());
    }

    #[test]
    fn numbering_starts_at_the_first_versioned_write_and_never_restarts() {
        // A key written before versioning applied: its live value becomes version 1.
        let mut state = None;
        apply(&mut state, &Change::Upsert(Value::plain("old")), op(1), NO, b(1)).unwrap();
        assert_eq!(numbers(&state), vec![(0, some("old"))], "an unnumbered key shows its value as version 0");
        let Some(State::Value { recent, .. }) = &state else { panic!("a value") };
        let recent = recent.capacity();
        assert_eq!(
            state.as_ref().map(State::heap_bytes),
            Some(8 + crate::mem::allocation_bytes(recent * std::mem::size_of::<Applied>()))
        );
        apply(&mut state, &Change::Upsert(Value::plain("new")), op(2), keep(5, 7), b(2)).unwrap();
        assert_eq!(numbers(&state), vec![(1, some("old")), (2, some("new"))]);
        // Versioning turned off again: the history is dropped, the numbers go on.
        apply(&mut state, &Change::Upsert(Value::plain("later")), op(3), NO, b(3)).unwrap();
        assert_eq!(numbers(&state), vec![(3, some("later"))]);
        // A key deleted before versioning starts from 1; an absent key lists nothing.
        let mut dead = None;
        apply(&mut dead, &Change::Upsert(Value::plain("x")), op(1), NO, b(1)).unwrap();
        apply(&mut dead, &Change::Delete, op(2), NO, b(2)).unwrap();
        assert!(numbers(&dead).is_empty());
        apply(&mut dead, &Change::Insert(Value::plain("y")), op(3), keep(2, 3), b(3)).unwrap();
        assert_eq!(numbers(&dead), vec![(1, some("y"))]);
        assert!(versions(None, None).is_empty());
    }

    #[test]
    fn the_history_is_bounded_by_versions_max() {
        let mut state = None;
        for i in 0..(u64::from(VERSIONS_MAX) + 20) {
            apply(&mut state, &Change::Upsert(Value::plain(vec![1])), op(i), keep(u16::MAX, i), b(i)).unwrap();
        }
        let all = numbers(&state);
        assert_eq!(all.len(), usize::from(VERSIONS_MAX));
        assert_eq!(all.last().map(|v| v.0), Some(u64::from(VERSIONS_MAX) + 20));
    }

    #[test]
    fn the_history_fits_a_message_whatever_the_count() {
        let big = vec![7u8; 1024 * 1024];
        let mut state = None;
        for i in 0..60 {
            apply(&mut state, &Change::Upsert(Value::plain(big.clone())), op(i), keep(VERSIONS_MAX, i), b(i)).unwrap();
        }
        let h = state.as_ref().and_then(State::history).expect("numbered");
        assert_eq!(h.number, 60);
        let kept: usize = h.earlier.iter().map(|v| v.value.as_ref().map_or(0, |v| v.bytes.len())).sum();
        assert!(kept <= HISTORY_BYTES_MAX, "{kept}");
        assert_eq!(h.earlier.len(), HISTORY_BYTES_MAX / big.len(), "the newest that fit");
        assert_eq!(h.earlier.last().map(|v| v.number), Some(59), "consecutive up to the current one");
    }
}
