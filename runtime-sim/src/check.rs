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
//! - **Versions** ([`check_versions`]) of keys whose rule keeps `N > 1` versions (every
//!   write to them is stamped, since the rules are confirmed before the workload):
//!   1. *A listing is a window*: consecutive numbers from 1 up, the newest `min(N, last)`
//!      (the simulation's values are far below the history's byte bound).
//!   2. *Numbers never go back*: a read invoked after another completed sees a last
//!      number at least as high (a versioned key is never collected: V4).
//!   3. *One version, one content everywhere*: every read of version `n` of a key, from
//!      any node, finds the same value (or the same Delete).
//!   4. *Only written values*: a version's value was written to that key by a write
//!      invoked before the read completed.
//! - **Replica convergence** is checked by the run itself on the disks (`run.rs`).

use crate::history::{ListRecord, VersionsRecord, VersionsResult};
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
    /// A versioning read broke one of the rules of [`check_versions`].
    Versions(String),
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
            Failure::Versions(_) => "versions inconsistent",
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
            Failure::Versions(_) => "versions",
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
            "versions" => Failure::Versions(text),
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
            | Failure::Versions(t)
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

/// Checks the versioning reads against each other and the writes (rules in the module
/// docs); `keep` says how many versions a key keeps. One message per broken rule.
pub fn check_versions(ops: &[Operation], reads: &[VersionsRecord], keep: impl Fn(&str) -> u16) -> Vec<String> {
    let mut problems = Vec::new();
    // (key, number) → (the read that saw it first, its content: Some(value) or None for
    // a Delete; a listing only says which of the two).
    let mut deleted: BTreeMap<(&str, u64), (usize, bool)> = BTreeMap::new();
    let mut values: BTreeMap<(&str, u64), (usize, &[u8])> = BTreeMap::new();
    // The number each read proves the key had reached, with the read's interval, and
    // whether it is the key's last one then (a listing) or only a lower bound (a fetch).
    let mut reached: Vec<(&str, u64, u64, u64, usize, bool)> = Vec::new();
    for (i, r) in reads.iter().enumerate() {
        let key = r.key.as_str();
        match &r.result {
            VersionsResult::Listed(listed) => {
                let last = listed.last().map_or(0, |v| v.0);
                let expected: Vec<u64> = (last.saturating_sub(u64::from(keep(key).max(1))) + 1..=last).collect();
                let numbers: Vec<u64> = listed.iter().map(|v| v.0).collect();
                if numbers != expected {
                    problems.push(format!("V{i}: {key} listed versions {numbers:?}, expected the window {expected:?}"));
                }
                for &(n, d) in listed {
                    match deleted.get(&(key, n)) {
                        Some(&(j, seen)) if seen != d => problems.push(format!(
                            "V{i}: {key} version {n} listed as {}, V{j} listed it as {}",
                            what(d),
                            what(seen)
                        )),
                        Some(_) => {}
                        None => {
                            deleted.insert((key, n), (i, d));
                        }
                    }
                }
                reached.push((key, last, r.invoked_at, r.completed_at, i, true));
            }
            VersionsResult::Fetched(n, Some(value)) => {
                if let Some(&(j, true)) = deleted.get(&(key, *n)) {
                    problems.push(format!("V{i}: {key} version {n} has a value, V{j} listed it as a Delete"));
                }
                match values.get(&(key, *n)) {
                    Some(&(j, seen)) if seen != value.as_slice() => {
                        problems.push(format!("V{i}: {key} version {n} is not the value V{j} read"))
                    }
                    Some(_) => {}
                    None => {
                        values.insert((key, *n), (i, value));
                    }
                }
                let written = ops.iter().any(|op| {
                    op.key == key
                        && matches!(&op.command, Command::Insert(v) | Command::Update(v) | Command::Upsert(v) if v == value)
                        && !definitely_failed(op)
                        && op.invoked_at <= r.completed_at
                });
                if !written {
                    problems.push(format!("V{i}: {key} version {n} holds a value no write to it wrote"));
                }
                reached.push((key, *n, r.invoked_at, r.completed_at, i, false));
            }
            VersionsResult::Fetched(_, None) => {} // aged out since the listing: nothing to hold
        }
    }
    for &(key, last, invoked, _, i, exact) in &reached {
        let before = reached.iter().filter(|r| r.0 == key && r.3 < invoked).max_by_key(|r| r.1);
        if let Some(&(_, low, _, _, j, _)) = before.filter(|r| exact && last < r.1) {
            problems.push(format!("V{i}: {key} reached version {last} only, after V{j} saw version {low}"));
        }
    }
    if problems.len() > VERSION_PROBLEMS_MAX {
        let more = problems.len() - VERSION_PROBLEMS_MAX;
        problems.truncate(VERSION_PROBLEMS_MAX);
        problems.push(format!("and {more} more"));
    }
    problems
}

/// Problems [`check_versions`] reports one by one; the rest are counted.
const VERSION_PROBLEMS_MAX: usize = 10;

fn what(deleted: bool) -> &'static str {
    if deleted { "a Delete" } else { "a value" }
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
