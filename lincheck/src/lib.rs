//! A pure, dependency-free, deterministic linearizability checker for histories of
//! memo's key-value API.
//!
//! # What is checked
//!
//! A *history* is a list of [`Operation`]s: each was invoked by a client at some
//! time, and either completed with an observed [`Outcome`] at a later time or
//! ended with [`Outcome::Unknown`] (a timeout, `UNAVAILABLE`, a crash of the
//! client...). The history is *linearizable* (Herlihy & Wing, 1990) if every
//! operation can be assigned a single instant, its *linearization point*, such
//! that
//!
//! 1. the point lies within the operation's interval `[invoked_at, completed_at]`
//!    (for an unknown outcome: anywhere after `invoked_at`, or nowhere at all —
//!    the operation may never have taken effect), and
//! 2. executing the operations one at a time in the order of their points, on a
//!    sequential model, produces exactly the outcomes the clients observed.
//!
//! The sequential model is memo's per-key register: each key is absent at first;
//! `Insert(v)` sets it if absent and otherwise fails with `AlreadyExists`;
//! `Update(v)` sets it if present and otherwise fails with `NotFound`;
//! `Upsert(v)` sets it; `Delete` removes it if present and otherwise fails with
//! `NotFound`; `Fetch` returns the value or `NotFound`. A failed precondition is
//! an observation like a read: it must be linearized where the precondition
//! really fails.
//!
//! # Locality: one key at a time
//!
//! Linearizability is *local* (Herlihy & Wing): a history is linearizable iff its
//! restriction to every object is. Each key is an independent object, so the
//! [`Checker`] partitions the history by key and checks every key separately —
//! the "P-compositionality" of Horn & Kroening (2015), which is also what makes
//! Porcupine fast. Keys are visited in lexicographic order (a `BTreeMap`) and the
//! first key without a linearization is reported, so results are deterministic.
//! The cost of the whole check is the sum, not the product, of the per-key costs.
//!
//! # The search: Wing & Gong with Lowe's memoization
//!
//! Per key, the checker runs the backtracking search of Wing & Gong (1993) as
//! improved by Lowe (2017), in the form popularised by Porcupine:
//!
//! * Conceptually the history is a sequence of *call* and *return* events sorted
//!   by time. The search state is the set of operations linearized so far plus
//!   the register state they produce. From a state, the *candidates* are the
//!   operations not yet linearized whose call precedes the first pending return:
//!   an operation that returned before another was called must be linearized
//!   first. Each candidate whose outcome is legal in the current state is tried
//!   in turn (depth first); when none works the search backtracks.
//! * Lowe's observation: two different orders that linearize the *same set* of
//!   operations and reach the *same register state* have identical futures. A
//!   cache of visited (set, state) pairs prunes the second one, which turns the
//!   exponential blow-up of plain Wing & Gong into something close to linear for
//!   histories with bounded concurrency. Values are interned into small integers
//!   per key, so a register state is one machine word.
//! * The set of linearized operations is stored compactly (all operations up to
//!   the first pending return, plus the few concurrent ones linearized early),
//!   rather than as a full bitset, so memory stays proportional to concurrency.
//!
//! ## The tie rule: intervals are closed
//!
//! Operation `a` must precede operation `b` only if `a.completed_at <
//! b.invoked_at` (strictly). An operation that returns at `t` and one invoked at
//! `t` are concurrent and may be linearized in either order. This is the
//! conservative choice for timestamps of limited resolution: it never reports a
//! violation that a finer clock could explain away. An operation with
//! `completed_at < invoked_at` is treated as if it completed at `invoked_at`.
//!
//! ## Unknown outcomes
//!
//! Jepsen's Knossos calls these `:info` operations. An operation whose outcome is
//! [`Outcome::Unknown`] has a call event but no return event: it may be
//! linearized anywhere after its invocation — even after every other operation,
//! as if its completion were +∞ — or not at all. Concretely:
//!
//! * a `Fetch` with an unknown outcome constrains nothing and is dropped;
//! * an unknown write never blocks the search (it has no return), and when all
//!   operations with observed outcomes are linearized, the unknown ones still
//!   pending are dropped: they did not take effect;
//! * when linearized, an unknown write does what the real command would do in
//!   that state (an unknown `Insert` on a present key changes nothing).
//!
//! Unknown writes are the main source of search cost, since each may or may not
//! have happened at every point. Two prunings keep them in check, both sound
//! because they only skip states whose verdict equals that of a state explored
//! anyway: an unknown write that would not change the register is never
//! linearized, and a state is skipped when a visited one has the same observed
//! operations, the same register, and a *subset* of its unknown operations
//! (optional operations not yet used only widen the future). Candidates with
//! observed outcomes are tried before unknown ones.
//!
//! ## Fenced and aborted outcomes
//!
//! An operation whose outcome is [`Outcome::Fenced`] is an unknown one with a
//! return event that bounds it: it may be linearized anywhere in its interval,
//! or not at all. It never blocks the search either; it is admitted only while
//! every operation already linearized was invoked no later than its
//! completion (an operation invoked after the fenced one returned cannot
//! precede it). An [`Outcome::Aborted`] operation never took effect: it
//! constrains nothing and writes nothing, so a Fetch that returns its value
//! has no linearization.
//!
//! ## Budget
//!
//! Linearizability checking is NP-complete in general (Gibbons & Korach, 1997).
//! [`Checker::states_max`] bounds the number of search states explored per key;
//! past it, the check stops with [`CheckError::TooComplex`] rather than running
//! forever.
//!
//! # References
//!
//! * M. Herlihy, J. Wing. *Linearizability: A Correctness Condition for
//!   Concurrent Objects.* ACM TOPLAS 12(3), 1990.
//! * J. Wing, C. Gong. *Testing and Verifying Concurrent Objects.* Journal of
//!   Parallel and Distributed Computing 17(1–2), 1993.
//! * G. Lowe. *Testing for Linearizability.* Concurrency and Computation:
//!   Practice and Experience 29(4), 2017.
//! * A. Horn, D. Kroening. *Faster Linearizability Checking via
//!   P-Compositionality.* FORTE 2015.
//! * P. Gibbons, E. Korach. *Testing Shared Memories.* SIAM Journal on Computing
//!   26(4), 1997.
//! * A. Athalye. *Porcupine: a fast linearizability checker in Go.*
//!   <https://github.com/anishathalye/porcupine>
//! * K. Kingsbury. *Knossos.* <https://github.com/jepsen-io/knossos>
//! * CASSANDRA-12126, a read flip after a failed lightweight transaction, found
//!   by exactly this kind of check.
//!
//! # Example
//!
//! ```
//! use memo_lincheck::{Command, History, Outcome, check};
//!
//! let mut history = History::new();
//! let write = history.invoke(1, "k", Command::Upsert(b"v".to_vec()), 0);
//! let read = history.invoke(2, "k", Command::Fetch, 1);
//! history.complete(read, Outcome::Value(b"v".to_vec()), 3);
//! history.complete(write, Outcome::Ok, 4);
//! assert!(check(&history.operations()).is_ok());
//! ```

use std::collections::BTreeMap;
use std::fmt;

mod model;
mod search;

use model::{ABSENT, State};
use search::{DeadEnd, Prepared, Problem, Verdict};

/// A stored value (bytes).
pub type Value = Vec<u8>;

/// A command on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Set the value if the key is absent; otherwise fail with `AlreadyExists`.
    Insert(Value),
    /// Set the value if the key is present; otherwise fail with `NotFound`.
    Update(Value),
    /// Set the value unconditionally.
    Upsert(Value),
    /// Remove the key if present; otherwise fail with `NotFound`.
    Delete,
    /// Read the value; `NotFound` if absent.
    Fetch,
}

/// What the client observed when an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A write succeeded.
    Ok,
    /// A `Fetch` found this value.
    Value(Value),
    /// An `Insert` found the key present.
    AlreadyExists,
    /// A `Fetch`, `Update` or `Delete` found the key absent.
    NotFound,
    /// The client does not know whether the operation took effect (timeout,
    /// unavailable, crash). If it did, it took effect after its invocation.
    Unknown,
    /// The client does not know whether the operation took effect, but knows
    /// that it will not take effect after the answer: if it did, it took effect
    /// within `[invoked_at, completed_at]`. memo answers this way when a
    /// recovery *fenced* a write whose outcome it could not establish (R6).
    Fenced,
    /// The operation never took effect and never will (a definite failure that
    /// changed nothing, such as an aborted transaction).
    Aborted,
}

impl Outcome {
    /// Whether the client observed what the operation did (success, a value, a
    /// failed precondition): the operation has a return event the search must
    /// place.
    pub fn is_observed(&self) -> bool {
        !matches!(self, Outcome::Unknown | Outcome::Fenced | Outcome::Aborted)
    }
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued the operation (informational only).
    pub client: u64,
    /// The key the operation acts on.
    pub key: String,
    /// What was asked.
    pub command: Command,
    /// What was observed.
    pub outcome: Outcome,
    /// When the operation was invoked, in any monotone time unit.
    pub invoked_at: u64,
    /// When the outcome was observed, in the same unit; ignored when the outcome
    /// is [`Outcome::Unknown`] or [`Outcome::Aborted`], clamped to `invoked_at`
    /// if smaller.
    pub completed_at: u64,
}

/// How memo's *fenced* UNAVAILABLE messages begin. It is memo's wire contract, kept
/// here so the checker states independently what it holds a server to; memo-engine's
/// `FENCED_PREFIX` must equal it (a test there checks).
pub const FENCED_PREFIX: &str = "fenced: ";

/// What an UNAVAILABLE answer's message promises about its write; a checker must hold
/// every promise a message makes (a promise filed under "unknown" can never be seen
/// broken):
///
/// - a message that begins with [`FENCED_PREFIX`]: if the write took effect, it did so
///   before the answer, and it never will after it ([`Outcome::Fenced`]);
/// - a message that says the write never took or will never take effect: it never
///   happened ([`Outcome::Aborted`]). memo sends none (issue 9: the one it sent could not
///   be proven), but a message that says so is held to it;
/// - anything else: it may or may not have happened, at any time ([`Outcome::Unknown`]).
pub fn promise_of_unavailable(message: &str) -> Outcome {
    if message.starts_with(FENCED_PREFIX) {
        Outcome::Fenced
    } else if message.contains("never take effect") || message.contains("never took effect") {
        Outcome::Aborted
    } else {
        Outcome::Unknown
    }
}

/// Handle to an operation recorded in a [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

/// Records a concurrent history: [`History::invoke`] returns a handle,
/// [`History::complete`] fills in the outcome.
#[derive(Default, Clone, Debug)]
pub struct History {
    ops: Vec<Operation>,
    completed: Vec<bool>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` invoked `command` on `key` at time `at`.
    pub fn invoke(&mut self, client: u64, key: impl Into<String>, command: Command, at: u64) -> OpId {
        self.ops.push(Operation {
            client,
            key: key.into(),
            command,
            outcome: Outcome::Unknown,
            invoked_at: at,
            completed_at: at,
        });
        self.completed.push(false);
        OpId(self.ops.len() - 1)
    }

    /// Records that operation `id` ended with `outcome` at time `at`.
    ///
    /// # Panics
    ///
    /// If `id` was not returned by this history's [`History::invoke`], or the
    /// operation was already completed: both are programming errors in the
    /// test harness.
    pub fn complete(&mut self, id: OpId, outcome: Outcome, at: u64) {
        assert!(id.0 < self.ops.len(), "unknown operation {id:?}");
        assert!(!self.completed[id.0], "operation {id:?} completed twice");
        self.completed[id.0] = true;
        let op = &mut self.ops[id.0];
        op.outcome = outcome;
        op.completed_at = at;
    }

    /// All operations in invocation order of the calls to
    /// [`History::invoke`]; operations never completed have
    /// [`Outcome::Unknown`].
    pub fn operations(&self) -> Vec<Operation> {
        self.ops.clone()
    }

    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A key whose operations admit no linearization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// All operations on the key, sorted by `invoked_at` (stable); the
    /// explanation refers to them as `#index` in this list.
    pub operations: Vec<Operation>,
    /// Why no linearization exists, in prose.
    pub explanation: String,
}

/// Why a history was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// The operations on some key admit no linearization.
    NotLinearizable(Violation),
    /// The search for some key exceeded [`Checker::states_max`].
    TooComplex {
        /// The key whose search gave up.
        key: String,
        /// Number of operations on that key.
        operations: usize,
        /// Number of search states explored before giving up.
        states_explored: u64,
    },
}

/// Statistics of a successful check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Number of distinct keys in the history.
    pub keys: usize,
    /// Number of operations in the history (including dropped unknown Fetches).
    pub operations: usize,
    /// Search states explored, summed over keys.
    pub states_explored: u64,
}

/// The linearizability checker, with its search budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checker {
    /// Maximum number of search states explored per key before giving up with
    /// [`CheckError::TooComplex`].
    pub states_max: u64,
}

impl Default for Checker {
    /// A budget of 2 000 000 states per key.
    fn default() -> Self {
        Checker { states_max: 2_000_000 }
    }
}

impl Checker {
    /// Checks that `ops` is linearizable, key by key in key order; reports the
    /// first key that is not (or whose search exceeds the budget).
    pub fn check(&self, ops: &[Operation]) -> Result<CheckReport, CheckError> {
        let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
        for op in ops {
            by_key.entry(op.key.as_str()).or_default().push(op);
        }
        let mut report = CheckReport { keys: by_key.len(), operations: ops.len(), states_explored: 0 };
        for (key, mut key_ops) in by_key {
            key_ops.sort_by_key(|op| op.invoked_at);
            report.states_explored += self.check_key(key, &key_ops)?;
        }
        Ok(report)
    }

    /// Checks the operations of one key (sorted by invocation); returns the
    /// number of states explored.
    fn check_key(&self, key: &str, ops: &[&Operation]) -> Result<u64, CheckError> {
        let violation = |explanation: String| {
            let operations = ops.iter().map(|&op| op.clone()).collect();
            CheckError::NotLinearizable(Violation { key: key.to_string(), operations, explanation })
        };
        let compiled =
            model::compile(ops).map_err(|(at, why)| violation(format!("#{at} can never be linearized: {why}.")))?;
        let prepared = ops
            .iter()
            .zip(&compiled.rules)
            .enumerate()
            .filter_map(|(label, (op, rule))| {
                rule.map(|rule| Prepared {
                    rule,
                    call: op.invoked_at,
                    ret: op.completed_at.max(op.invoked_at),
                    fenced: op.outcome == Outcome::Fenced,
                    label,
                })
            })
            .collect();
        match Problem::new(prepared).search(self.states_max) {
            Verdict::Linearizable { states } => Ok(states),
            Verdict::Violation { deepest, .. } => Err(violation(explain(deepest.as_ref(), ops, &compiled.values))),
            Verdict::GaveUp { states } => {
                Err(CheckError::TooComplex { key: key.to_string(), operations: ops.len(), states_explored: states })
            }
        }
    }
}

/// Checks `ops` with the default budget: `Checker::default().check(ops)`.
pub fn check(ops: &[Operation]) -> Result<CheckReport, CheckError> {
    Checker::default().check(ops)
}

/// Prose for a failed search.
fn explain(deepest: Option<&DeadEnd>, ops: &[&Operation], values: &[Option<&[u8]>]) -> String {
    let Some(end) = deepest else {
        return "no order of the operations is consistent with their outcomes.".to_string();
    };
    let completed = ops.iter().filter(|op| op.outcome.is_observed()).count();
    let mut tail: Vec<String> = end.tail.iter().map(|label| format!("#{label}")).collect();
    if end.prefix_len > tail.len() {
        tail.insert(0, format!("... ({} earlier)", end.prefix_len - tail.len()));
    }
    let prefix = if tail.is_empty() { "nothing".to_string() } else { tail.join(", ") };
    let blocked = ops.get(end.blocked).map_or(String::new(), |op| format!(" ({})", Brief(op)));
    format!(
        "no order of the operations is consistent with their outcomes.\n\
         The longest consistent order found places {known} of the {completed} operations with \
         observed outcomes ({len} operations in all: {prefix}); after it the key {state}, \
         and #{b}{blocked} cannot be placed next, nor after any operation that may precede it.",
        known = end.known_len,
        len = end.prefix_len,
        state = describe_state(values, end.state),
        b = end.blocked,
    )
}

/// "is absent", "holds "v"", or "holds a value that no Fetch returns".
fn describe_state(values: &[Option<&[u8]>], state: State) -> String {
    if state == ABSENT {
        return "is absent".to_string();
    }
    match state.checked_sub(1).and_then(|i| values.get(i)) {
        Some(Some(value)) => format!("holds {}", ValueDisplay(value)),
        _ => "holds a value that no Fetch returns".to_string(),
    }
}

/// Formats a value as a quoted string when it is short printable ASCII, and as
/// (possibly truncated) hexadecimal otherwise.
struct ValueDisplay<'a>(&'a [u8]);

impl fmt::Display for ValueDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 32;
        let bytes = self.0;
        if bytes.len() <= 2 * SHOWN && bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
            // Checked just above: every byte is printable ASCII, hence UTF-8.
            let text = std::str::from_utf8(bytes).unwrap_or_default();
            return write!(f, "{text:?}");
        }
        write!(f, "0x")?;
        for byte in bytes.iter().take(SHOWN) {
            write!(f, "{byte:02x}")?;
        }
        if bytes.len() > SHOWN {
            write!(f, "...({} bytes)", bytes.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for Command {
    /// `Insert("v")`, `Update(0x00ff)`, `Delete`, `Fetch`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Insert(v) => write!(f, "Insert({})", ValueDisplay(v)),
            Command::Update(v) => write!(f, "Update({})", ValueDisplay(v)),
            Command::Upsert(v) => write!(f, "Upsert({})", ValueDisplay(v)),
            Command::Delete => write!(f, "Delete"),
            Command::Fetch => write!(f, "Fetch"),
        }
    }
}

impl fmt::Display for Outcome {
    /// `Ok`, `Value("v")`, `AlreadyExists`, `NotFound`, `Unknown`, `Fenced`,
    /// `Aborted`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => write!(f, "Ok"),
            Outcome::Value(v) => write!(f, "Value({})", ValueDisplay(v)),
            Outcome::AlreadyExists => write!(f, "AlreadyExists"),
            Outcome::NotFound => write!(f, "NotFound"),
            Outcome::Unknown => write!(f, "Unknown"),
            Outcome::Fenced => write!(f, "Fenced"),
            Outcome::Aborted => write!(f, "Aborted"),
        }
    }
}

/// An operation without its key: `Upsert("v") -> Ok`.
struct Brief<'a>(&'a Operation);

impl fmt::Display for Brief<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.0.command, self.0.outcome)
    }
}

impl fmt::Display for Operation {
    /// `[10, 20] client 3 "key": Upsert("v") -> Ok`; unknown outcomes show the
    /// interval as `[10, ?]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, ", self.invoked_at)?;
        match self.outcome {
            Outcome::Unknown | Outcome::Aborted => write!(f, "?]")?,
            _ => write!(f, "{}]", self.completed_at)?,
        }
        write!(f, " client {} {:?}: {}", self.client, self.key, Brief(self))
    }
}

impl fmt::Display for Violation {
    /// A multi-line report: the key, the explanation, then every operation on
    /// the key sorted by invocation time and numbered as in the explanation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?} is not linearizable: {}", self.key, self.explanation)?;
        write!(
            f,
            "{} operations on {:?}, by invocation time (intervals are closed):",
            self.operations.len(),
            self.key
        )?;
        for (index, op) in self.operations.iter().enumerate() {
            write!(f, "\n  #{index:<4} {op}")?;
        }
        Ok(())
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NotLinearizable(violation) => violation.fmt(f),
            CheckError::TooComplex { key, operations, states_explored } => write!(
                f,
                "gave up checking key {key:?} ({operations} operations) after exploring \
                 {states_explored} states; raise Checker::states_max or shorten the history"
            ),
        }
    }
}

impl std::error::Error for CheckError {}

#[cfg(test)]
mod tests;
