//! Checkers over a recorded run.
//!
//! - **Per-key linearizability** of Insert/Update/Upsert/Delete/Fetch: memo-lincheck
//!   (Wing–Gong with Lowe's memoization, one key at a time). Unknown outcomes may or may
//!   not have taken effect, at any point after their invocation; fenced ones only before
//!   their answer; aborted ones never.
//! - **List consistency** ([`check_lists`]), two sound per-key rules (List is not a
//!   snapshot across keys, so nothing is checked between keys):
//!   1. *No phantom keys*: a listed key matches the request (prefix, after the marker)
//!      and some Insert/Update/Upsert on it that did not definitely fail (Insert
//!      ALREADY_EXISTS and Update NOT_FOUND definitely wrote nothing) was invoked before
//!      the List completed.
//!   2. *No lost keys*: a key in the List's range (prefix, after the marker, and not
//!      past the last item of a truncated page) that was written by a write that
//!      *succeeded before the List was invoked* must be listed, unless some Delete on it
//!      could have taken effect after that write: a Delete invoked before the List
//!      completed that did not definitely fail (NOT_FOUND) and did not definitely
//!      complete before the write was invoked.
//!
//!   Weaker than linearizability of List as a per-key read (a listed key is not checked
//!   against a definite absence during the whole call, e.g. a Delete that succeeded
//!   before the List and no write after it); rule 1 only catches keys that could never
//!   have existed yet. Both rules are sound: a linearizable store never breaks them.
//! - **Replica convergence** is checked by the run itself on the disks (`run.rs`).

use crate::history::ListRecord;
use memo_lincheck::{CheckError, Checker, Command, Operation, Outcome};
use std::collections::BTreeMap;
use std::fmt;

/// Budget of the linearizability search, in states per key.
pub const LINCHECK_STATES_MAX: u64 = 5_000_000;

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Some key's history admits no linearization.
    NotLinearizable(String),
    /// The linearizability search gave up (no verdict: shorten the run or raise the
    /// budget).
    TooComplex(String),
    /// A List broke one of the rules of [`check_lists`].
    List(String),
    /// An operation of the liveness phase did not succeed within its bound.
    Liveness(String),
    /// Replicas of a key disagree after the liveness phase.
    NotConverged(String),
    /// The replicas agree, but not on the key's final write: a write whose outcome was
    /// unknown took effect after the final write was acknowledged (a "zombie" write).
    /// Linearizability allows it (an unknown write may take effect at any later time);
    /// memo's design does not mean to, so the run fails.
    LateWrite(String),
    /// Something impossible happened (an unexpected status code, a node that could not
    /// start or stopped by itself).
    Anomaly(String),
    /// The simulation panicked (an assertion in node code, a harness bug).
    Panic(String),
}

impl Failure {
    /// A short name of the failure's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::NotLinearizable(_) => "not linearizable",
            Failure::TooComplex(_) => "linearizability check too complex",
            Failure::List(_) => "list inconsistent",
            Failure::Liveness(_) => "liveness",
            Failure::NotConverged(_) => "replicas diverge",
            Failure::LateWrite(_) => "late write after the final write",
            Failure::Anomaly(_) => "anomaly",
            Failure::Panic(_) => "panic",
        }
    }

    /// A one-word tag (the child report's encoding).
    pub fn tag(&self) -> &'static str {
        match self {
            Failure::NotLinearizable(_) => "nonlinearizable",
            Failure::TooComplex(_) => "toocomplex",
            Failure::List(_) => "list",
            Failure::Liveness(_) => "liveness",
            Failure::NotConverged(_) => "diverged",
            Failure::LateWrite(_) => "latewrite",
            Failure::Anomaly(_) => "anomaly",
            Failure::Panic(_) => "panic",
        }
    }

    /// The failure for a [`Failure::tag`] and text.
    pub fn from_tag(tag: &str, text: String) -> Option<Failure> {
        Some(match tag {
            "nonlinearizable" => Failure::NotLinearizable(text),
            "toocomplex" => Failure::TooComplex(text),
            "list" => Failure::List(text),
            "liveness" => Failure::Liveness(text),
            "diverged" => Failure::NotConverged(text),
            "latewrite" => Failure::LateWrite(text),
            "anomaly" => Failure::Anomaly(text),
            "panic" => Failure::Panic(text),
            _ => return None,
        })
    }

    /// The explanation.
    pub fn text(&self) -> &str {
        match self {
            Failure::NotLinearizable(t)
            | Failure::TooComplex(t)
            | Failure::List(t)
            | Failure::Liveness(t)
            | Failure::NotConverged(t)
            | Failure::LateWrite(t)
            | Failure::Anomaly(t)
            | Failure::Panic(t) => t,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.text())
    }
}

/// Checks per-key linearizability; `Ok` with the number of states explored.
pub fn check_linearizable(ops: &[Operation]) -> Result<u64, Failure> {
    match (Checker { states_max: LINCHECK_STATES_MAX }).check(ops) {
        Ok(report) => Ok(report.states_explored),
        Err(e @ CheckError::NotLinearizable(_)) => Err(Failure::NotLinearizable(e.to_string())),
        Err(e @ CheckError::TooComplex { .. }) => Err(Failure::TooComplex(e.to_string())),
    }
}

/// Whether `key` is in the range a List request covers (before truncation).
fn requested(list: &ListRecord, key: &str) -> bool {
    key.starts_with(&list.prefix) && key > list.marker.as_str()
}

fn is_write(c: &Command) -> bool {
    matches!(c, Command::Insert(_) | Command::Update(_) | Command::Upsert(_))
}

/// A write that definitely changed nothing.
fn definitely_failed(op: &Operation) -> bool {
    matches!(op.outcome, Outcome::AlreadyExists | Outcome::NotFound | Outcome::Aborted)
}

/// Checks every completed List against the key operations; returns one message per
/// broken rule (empty: consistent). See the module docs for the rules.
pub fn check_lists(ops: &[Operation], lists: &[ListRecord]) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut problems = Vec::new();
    for (index, list) in lists.iter().enumerate() {
        let Some(result) = &list.result else { continue };
        for item in &result.items {
            if !requested(list, item) {
                problems.push(format!(
                    "L{index} listed {item:?}, outside prefix {:?} / marker {:?}",
                    list.prefix, list.marker
                ));
                continue;
            }
            let written = by_key.get(item.as_str()).is_some_and(|key_ops| {
                key_ops
                    .iter()
                    .any(|op| is_write(&op.command) && !definitely_failed(op) && op.invoked_at <= list.completed_at)
            });
            if !written {
                problems.push(format!("L{index} listed {item:?}, which no write invoked before the List completed"));
            }
        }
        let last = result.items.last().map(String::as_str);
        for (key, key_ops) in &by_key {
            if !requested(list, key) || result.items.iter().any(|i| i == key) {
                continue;
            }
            if result.truncated && last.is_none_or(|last| *key > last) {
                continue;
            }
            let lost = key_ops.iter().find(|w| {
                is_write(&w.command)
                    && w.outcome == Outcome::Ok
                    && w.completed_at < list.invoked_at
                    && !key_ops.iter().any(|d| may_delete_after(d, w, list))
            });
            if let Some(w) = lost {
                problems.push(format!(
                    "L{index} (client {}, [{}, {}]) missed {key:?}: written by {} -> Ok at [{}, {}], and no Delete could have removed it since",
                    list.client, list.invoked_at, list.completed_at, w.command, w.invoked_at, w.completed_at
                ));
            }
        }
    }
    problems
}

/// Whether Delete `d` may have taken effect after write `w` and before `list` read.
fn may_delete_after(d: &Operation, w: &Operation, list: &ListRecord) -> bool {
    d.command == Command::Delete
        && d.invoked_at <= list.completed_at
        && match d.outcome {
            Outcome::Ok | Outcome::Fenced => d.completed_at >= w.invoked_at,
            Outcome::Unknown => true,
            _ => false,
        }
}
