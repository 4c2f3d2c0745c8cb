//! The sequential specification of one key, compiled into small transition rules.
//!
//! A key is a register that is either absent or holds a value. Values are interned
//! per key into small integers ([`State`]), so that a search state is a handful of
//! machine words no matter how large the stored values are.

use std::collections::{HashMap, HashSet};

use crate::{Command, Operation, Outcome};

/// Interned register state: [`ABSENT`] or the id of a value written on the key.
pub(crate) type State = usize;

/// The state of a key that holds no value (also the initial state).
pub(crate) const ABSENT: State = 0;

/// What the register must look like for an operation to be legal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Guard {
    /// Any state.
    Any,
    /// The key holds no value.
    Absent,
    /// The key holds some value.
    Present,
    /// The key holds exactly this value.
    Holds(State),
}

impl Guard {
    fn admits(self, state: State) -> bool {
        match self {
            Guard::Any => true,
            Guard::Absent => state == ABSENT,
            Guard::Present => state != ABSENT,
            Guard::Holds(value) => state == value,
        }
    }
}

/// One operation as a transition of the register.
///
/// A *certain* rule (the client saw the outcome) is illegal where its guard fails.
/// An *uncertain* rule (outcome unknown) never fails: where its guard fails the
/// real operation would have returned an error and changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Rule {
    guard: Guard,
    /// The state after the operation, or `None` to keep the current one.
    set: Option<State>,
    certain: bool,
}

impl Rule {
    /// The state after applying the operation to `state`, or `None` if the
    /// observed outcome is impossible in `state`.
    pub(crate) fn apply(self, state: State) -> Option<State> {
        if self.guard.admits(state) {
            Some(self.set.unwrap_or(state))
        } else if self.certain {
            None
        } else {
            Some(state)
        }
    }

    /// Whether the client saw the outcome (the operation has a return event).
    pub(crate) fn is_certain(self) -> bool {
        self.certain
    }
}

/// The compiled operations of one key, plus the table to print interned values.
pub(crate) struct Compiled<'a> {
    /// One entry per input operation; `None` for operations that constrain
    /// nothing (Fetch with an unknown outcome).
    pub rules: Vec<Option<Rule>>,
    /// `values[id - 1]` is the value interned as `id`; `None` for the id shared
    /// by all values that no Fetch returns.
    pub values: Vec<Option<&'a [u8]>>,
}

/// Why a key's history is rejected before any search: the position of the
/// offending operation and a sentence explaining it.
pub(crate) type Rejection = (usize, String);

/// Compiles the operations of one key (in the order given) into rules.
///
/// Values that no Fetch returns are indistinguishable to every operation (only
/// their presence is observable), so they all share one id: this abstraction
/// is exact and makes unknown writes of such values interchangeable, which
/// keeps the search small.
///
/// Fails on an operation that no register could produce in any state: an
/// outcome that does not belong to the command (a Fetch returning `Ok`), or a
/// Fetch returning a value that no operation on the key could have written.
pub(crate) fn compile<'a>(ops: &[&'a Operation]) -> Result<Compiled<'a>, Rejection> {
    let read: HashSet<&[u8]> = ops
        .iter()
        .filter_map(|op| match (&op.command, &op.outcome) {
            (Command::Fetch, Outcome::Value(value)) => Some(value.as_slice()),
            _ => None,
        })
        .collect();
    let mut ids: HashMap<&'a [u8], State> = HashMap::new();
    let mut values: Vec<Option<&'a [u8]>> = Vec::new();
    let mut unread: Option<State> = None;
    for value in ops.iter().filter_map(|op| written_value(op)) {
        let value = value.as_slice();
        if ids.contains_key(value) {
            continue;
        }
        let id = if read.contains(value) {
            values.push(Some(value));
            values.len()
        } else {
            *unread.get_or_insert_with(|| {
                values.push(None);
                values.len()
            })
        };
        ids.insert(value, id);
    }
    let mut rules = Vec::with_capacity(ops.len());
    for (position, op) in ops.iter().enumerate() {
        let rule = compile_one(op, &ids).map_err(|why| (position, why))?;
        rules.push(rule);
    }
    Ok(Compiled { rules, values })
}

/// The value an operation may store, if it can change the register to a value.
fn written_value(op: &Operation) -> Option<&Vec<u8>> {
    match (&op.command, &op.outcome) {
        (
            Command::Insert(value) | Command::Update(value) | Command::Upsert(value),
            Outcome::Ok | Outcome::Unknown | Outcome::Fenced,
        ) => Some(value),
        _ => None,
    }
}

fn compile_one(op: &Operation, ids: &HashMap<&[u8], State>) -> Result<Option<Rule>, String> {
    let certain = |guard, set| Ok(Some(Rule { guard, set, certain: true }));
    let maybe = |guard, set| Ok(Some(Rule { guard, set, certain: false }));
    // Every written value was interned by `compile`; a miss means "never written".
    let id = |value: &Vec<u8>| ids.get(value.as_slice()).copied();
    match (&op.command, &op.outcome) {
        (Command::Fetch, Outcome::Unknown | Outcome::Fenced) | (_, Outcome::Aborted) => Ok(None),
        (Command::Fetch, Outcome::Value(value)) => match id(value) {
            Some(state) => certain(Guard::Holds(state), None),
            None => Err(format!("{} returned a value that no operation on this key writes", op.command)),
        },
        (Command::Fetch, Outcome::NotFound) => certain(Guard::Absent, None),
        (Command::Insert(v), Outcome::Ok) => certain(Guard::Absent, id(v)),
        (Command::Insert(v), Outcome::Unknown | Outcome::Fenced) => maybe(Guard::Absent, id(v)),
        (Command::Insert(_), Outcome::AlreadyExists) => certain(Guard::Present, None),
        (Command::Update(v), Outcome::Ok) => certain(Guard::Present, id(v)),
        (Command::Update(v), Outcome::Unknown | Outcome::Fenced) => maybe(Guard::Present, id(v)),
        (Command::Update(_), Outcome::NotFound) => certain(Guard::Absent, None),
        (Command::Upsert(v), Outcome::Ok) => certain(Guard::Any, id(v)),
        (Command::Upsert(v), Outcome::Unknown | Outcome::Fenced) => maybe(Guard::Any, id(v)),
        (Command::Delete, Outcome::Ok) => certain(Guard::Present, Some(ABSENT)),
        (Command::Delete, Outcome::Unknown | Outcome::Fenced) => maybe(Guard::Any, Some(ABSENT)),
        (Command::Delete, Outcome::NotFound) => certain(Guard::Absent, None),
        (command, outcome) => Err(format!("outcome {outcome} is impossible for {command}")),
    }
}
