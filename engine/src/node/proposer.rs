//! The proposer: per-key CASPaxos rounds with memo's KV functions (docs/ARCHITECTURE.md, "The register protocol").
//!
//! # One round
//!
//! A change applies a function to the register's state. The **full round** (2 RTT):
//! Prepare(b) to the members → a quorum of promises, each reporting its accepted
//! `(ballot, state)` → take the state with the highest ballot → apply the folded
//! functions → Accept(b, f(x), next) → a quorum of Accepted → the state is chosen → answer
//! the clients → Commit(b, f(x)) to the members that did not acknowledge (R7: so replicas
//! that missed the Accept converge).
//!
//! A failed precondition still writes back (R2): Accept(b, x) with the state it read, so
//! the state the answer rests on is chosen (the CASSANDRA-12126 / ScyllaDB #6299 lesson).
//! The write-back is skipped only when the promises already meet the read rule R5 (every
//! promise reports the same accepted ballot, or the highest one is marked committed):
//! then `x` is already chosen.
//!
//! # The fast path (R3)
//!
//! Every Accept asks also for a promise of the proposer's next ballot `b.successor()`.
//! When a quorum granted it, the proposer keeps per key `(epoch, next, the state it
//! wrote)`: no other proposer can have a value chosen before `next` is used, since any
//! prepare quorum meets the grantors, who refuse everything at or below `next`. The next
//! change of that key then skips phase 1: Accept(next, f(cached state), next.successor()),
//! one round trip. The entry is taken when used and dropped on any failure; there is at
//! most one outstanding ballot per key per proposer, and requests queued behind it are
//! folded into one function (H2: two values never share a ballot).
//!
//! # Unknown outcomes (R6)
//!
//! Every client write carries an op-id that lands in the state it produces. Once an
//! Accept of an attempt may have been accepted somewhere, a retry may only *recover*: a
//! full round that answers success if the state it finds carries the op-id (and writes
//! it back so it is chosen), and UNAVAILABLE otherwise; it never re-applies the change
//! and never reports a failed precondition. An Accept that *every* member refused was
//! accepted nowhere, so its ops are simply retried.
//!
//! # Tombstone garbage collection (R8)
//!
//! After a Delete is chosen, and after the GC delay, the proposer runs an identity round on
//! the tombstone whose Accept must be acknowledged by *every* member, then sends
//! Drop(key, b_gc). Each member drops the key only if its accepted state is still exactly
//! `(b_gc, tombstone)`, raising the partition floor to cover the key's promise, so no
//! delayed message below the floor can resurrect an older value.
//!
//! # Contention
//!
//! A refusal reports the ballot that beat us; the round counter jumps past it. A failed
//! attempt backs off for a random time up to `min(backoff_max, 1 ms · 2^failures)` drawn
//! from the node's seeded RNG.

use super::timers::{Timer, TimerHandle};
use super::{Forwarded, Node, ReqKey};
use crate::KvError;
use crate::config::PlantedBug;
use crate::ids::{NodeId, OpId};
use crate::kv::{Aborted, Answer, Change, Stamp, State, abort, apply};
use crate::message::{AttemptId, Message, Rejection};
use crate::paxos::acceptor::{Accepted, ReadView, Refusal};
use crate::paxos::ballot::Ballot;
use crate::placement::{EpochRef, partition_of};
use crate::quorum::{MemberSet, QuorumSet, VoteResult};
use crate::storage::Storage;
use crate::time::Instant;
use rand_core::Rng;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

#[derive(Default)]
pub(super) struct Proposer {
    slots: BTreeMap<String, Slot>,
    /// Round counter shared by all keys; only grows.
    round: u64,
    next_attempt: AttemptId,
    gc_pending: usize,
    /// Where the next eviction scan starts, so eviction sweeps the key space in turn.
    evict_cursor: String,
    /// Approximate bytes of the slots holding a fast path (`Config::proposer_bytes_max`).
    fast_bytes: usize,
}

/// Memory of a slot holding a fast path for `key` with `state` ([`crate::mem`]): its share
/// of the map's nodes, the key, and the state's buffers, which hold the whole value.
fn fast_path_bytes(key: &str, state: &Option<State>) -> usize {
    let slot = const { crate::mem::btree_entry_bytes::<String, Slot>() };
    slot + crate::mem::allocation_bytes(key.len()) + state.as_ref().map_or(0, State::heap_bytes)
}

/// Slots an eviction looks at before giving up (the bound is then exceeded briefly).
const EVICTION_SCAN_MAX: usize = 16;
/// Evictions one chosen write may do to bring the proposer back within its bounds.
const EVICTIONS_PER_WRITE_MAX: usize = 4;

/// How long, in request timeouts, a write in doubt whose request was answered by its
/// deadline is still recovered to fence it.
pub(super) const ORPHAN_FENCE_DEADLINES: u32 = 4;

#[derive(Default)]
struct Slot {
    fast: Option<FastPath>,
    /// The round in flight; boxed, so the many idle slots stay small.
    active: Option<Box<Attempt>>,
    queue: VecDeque<Queued>,
    backing_off: bool,
    failures: u32,
    gc_due: bool,
    /// A copier wants the key copied under this joint epoch (F3).
    copy_due: Option<EpochRef>,
    /// The key's partition, computed once.
    partition: Option<crate::placement::PartitionId>,
}

impl Slot {
    fn idle(&self) -> bool {
        self.fast.is_none()
            && self.active.is_none()
            && self.queue.is_empty()
            && !self.backing_off
            && !self.gc_due
            && self.copy_due.is_none()
    }
}

/// A granted next ballot (R3).
struct FastPath {
    epoch: EpochRef,
    next: Ballot,
    state: Option<State>,
    /// [`fast_path_bytes`] of the slot, counted in `Proposer::fast_bytes`.
    bytes: usize,
}

#[derive(Clone, Debug)]
pub(super) struct Queued {
    pub(super) req: ReqKey,
    pub(super) change: Change,
    pub(super) op: OpId,
    /// The write's versioning stamp (`Stamp::default()` for reads).
    pub(super) stamp: Stamp,
    /// Set when an earlier attempt may have applied this write (R6).
    pub(super) recover: Option<Recover>,
    /// Set once the request was answered (by its deadline) while the write was still in
    /// doubt: the proposer goes on recovering it until then, to *fence* it (abort it in
    /// the chosen state) rather than apply it, so it cannot land long after its answer.
    pub(super) orphan_until: Option<Instant>,
}

/// Why a write may already have taken effect, and what that allows a retry to prove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recover {
    /// It was proposed, at this ballot or higher ones, in attempts that may have been
    /// accepted somewhere.
    Proposed(Ballot),
    /// It was forwarded to a primary that did not answer: the primary may apply it at any
    /// time, so only finding it counts.
    Forwarded,
}

/// What a recovering write learns from the state phase 1 found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recovery {
    /// The state remembers it: it took effect.
    Applied,
    /// It provably never took effect, and after this round it never can: apply it now.
    NotApplied,
    /// Neither can be shown: answer UNAVAILABLE, and abort it in the state this round
    /// makes chosen, so it can never take effect later.
    Unknown,
    /// The state marks it aborted: an earlier recovery answered UNAVAILABLE for it.
    Aborted,
}

enum Work {
    Ops(Vec<Queued>),
    Gc,
    /// The copier's identity round (F3): write the chosen state back to a joint quorum.
    Copy,
}

enum Phase {
    Prepare {
        views: Vec<ReadView>,
        /// Members whose promise is in `views`.
        promised: MemberSet,
    },
    Accept {
        proposal: Accepted,
        answers: Vec<Result<Answer, KvError>>,
        /// Per op: whether the proposal applies it (so the proposal may carry its effect).
        written: Vec<bool>,
        /// Members that also granted the next ballot (R3).
        grants: MemberSet,
        /// Who must accept: the config's quorums, or every member for R8's collection.
        need: QuorumSet,
    },
}

struct Attempt {
    id: AttemptId,
    ballot: Ballot,
    epoch: EpochRef,
    members: Vec<NodeId>,
    quorum: QuorumSet,
    work: Work,
    phase: Phase,
    /// Members (by index in `members`) that answered the current phase.
    replied: MemberSet,
    /// Members that accepted in phase 2: they hold the chosen state already.
    acked: MemberSet,
    /// Members that refused the current phase.
    refused: MemberSet,
    timer: TimerHandle,
}

impl Attempt {
    fn quorum_is_joint(&self) -> bool {
        matches!(self.quorum, QuorumSet::Joint(..))
    }

    /// The current phase's vote.
    fn vote(&self) -> VoteResult {
        match &self.phase {
            Phase::Prepare { promised, .. } => self.quorum.vote(*promised, self.refused),
            Phase::Accept { need, .. } => need.vote(self.acked, self.refused),
        }
    }
}

impl Proposer {
    pub(super) fn starting_at(next_attempt: AttemptId) -> Self {
        Proposer { next_attempt, ..Proposer::default() }
    }

    pub(super) fn keys(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn fast_bytes(&self) -> usize {
        self.fast_bytes
    }

    /// Forgets one idle key other than `keep` (only its fast-path entry is lost); false if
    /// the scan found none.
    fn evict_one(&mut self, keep: &str) -> bool {
        let cursor = std::mem::take(&mut self.evict_cursor);
        let after =
            self.slots.range::<str, _>((std::ops::Bound::Excluded(cursor.as_str()), std::ops::Bound::Unbounded));
        let before =
            self.slots.range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(cursor.as_str())));
        let candidates = after.chain(before);
        let victim = candidates
            .take(EVICTION_SCAN_MAX)
            .find(|(k, s)| {
                k.as_str() != keep
                    && s.active.is_none()
                    && s.queue.is_empty()
                    && !s.backing_off
                    && !s.gc_due
                    && s.copy_due.is_none()
            })
            .map(|(k, _)| k.clone());
        if let Some(victim) = victim {
            if let Some(fast) = self.slots.remove(&victim).and_then(|s| s.fast) {
                self.fast_bytes -= fast.bytes;
            }
            self.evict_cursor = victim;
            true
        } else {
            self.evict_cursor = cursor;
            false
        }
    }
}

impl<S: Storage> Node<S> {
    /// Routes a client operation: writes go to the partition's primary (the fast path's
    /// home) unless this node is the primary or the primary is suspected; reads are
    /// coordinated here, since the one-round-trip read needs no primary.
    pub(super) fn route(&mut self, req: ReqKey, key: String, change: Change, op: OpId, stamp: Stamp, now: Instant) {
        let p = partition_of(key.as_bytes(), self.map.partitions());
        let primary = self.map.config(p).primary();
        let suspected = self.suspected.get(primary).is_some_and(|until| *until > now);
        if *primary == self.cfg.me || suspected || !change.is_write() {
            self.coordinate(req, key, change, op, stamp, None, now);
            return;
        }
        let primary = primary.clone();
        let seq = self.forward_seq.entry(primary.clone()).or_insert(0);
        *seq += 1;
        let msg = Message::Forward { id: req, seq: *seq, op, stamp, key: key.clone(), change: change.clone() };
        let timer = self.timers.set(now + self.cfg.forward_timeout, Timer::Forward { req });
        if let Some(pending) = self.requests.get_mut(&req) {
            pending.forwarded = Some(Forwarded { to: primary.clone(), key, change, op, stamp, timer });
        }
        self.stats.forwards += 1;
        self.send(primary, msg, None);
    }

    pub(super) fn on_forward_reply(&mut self, from: NodeId, id: u64, result: Result<Answer, KvError>) {
        let Some(pending) = self.requests.get(&id) else {
            return;
        };
        if pending.forwarded.as_ref().is_some_and(|f| f.to == from) {
            self.finish(id, result);
        }
    }

    /// The primary did not answer: bypass it for a while, and find out whether the
    /// forwarded write happened. It may have started, so only recovery is safe (R6).
    pub(super) fn on_forward_timeout(&mut self, req: ReqKey, now: Instant) {
        let Some(pending) = self.requests.get_mut(&req) else {
            return;
        };
        let Some(f) = pending.forwarded.take() else {
            return;
        };
        self.stats.forward_timeouts += 1;
        self.suspected.retain(|_, until| *until > now);
        self.suspected.insert(f.to, now + self.cfg.primary_suspicion);
        self.coordinate(req, f.key, f.change, f.op, f.stamp, Some(Recover::Forwarded), now);
    }

    /// Coordinates an operation on this node: Fetch through the one-round-trip read,
    /// everything else through the key's register slot.
    #[allow(clippy::too_many_arguments)] // the request's parts, as route and on_forward receive them
    pub(super) fn coordinate(
        &mut self,
        req: ReqKey,
        key: String,
        change: Change,
        op: OpId,
        stamp: Stamp,
        recover: Option<Recover>,
        now: Instant,
    ) {
        if !change.is_write() {
            self.start_read(req, key, change, op, now);
            return;
        }
        self.enqueue(key, Queued { req, change, op, stamp, recover, orphan_until: None }, now);
    }

    pub(super) fn enqueue(&mut self, key: String, queued: Queued, now: Instant) {
        let slot = self.proposer.slots.entry(key.clone()).or_default();
        if slot.queue.len() >= self.cfg.key_queue_max {
            let e = KvError::ResourceExhausted("too many requests queued on one key".into());
            self.finish(queued.req, Err(e));
            return;
        }
        slot.queue.push_back(queued);
        self.pump(&key, now);
    }

    /// Starts the key's next attempt if none is outstanding.
    fn pump(&mut self, key: &str, now: Instant) {
        let Some(slot) = self.proposer.slots.get_mut(key) else {
            return;
        };
        if slot.active.is_some() || slot.backing_off {
            return;
        }
        // Requests that already got their answer (deadline) need no round, unless their
        // write is in doubt: then it is fenced for a while (see `Queued::orphan_until`).
        let requests = &self.requests;
        let window = self.cfg.request_timeout.saturating_mul(ORPHAN_FENCE_DEADLINES);
        slot.queue.retain_mut(|q| {
            if requests.contains_key(&q.req) {
                return true;
            }
            if q.recover.is_none() {
                return false;
            }
            now < *q.orphan_until.get_or_insert(now + window)
        });
        // A copy goes first: under steady writes to the key it would never run otherwise
        // (a write chosen at the joint epoch also counts as the copy, see `chosen`).
        let p = *slot.partition.get_or_insert_with(|| partition_of(key.as_bytes(), self.map.partitions()));
        let copy = slot.copy_due.take().filter(|epoch| self.map.epoch_ref(p) == *epoch);
        let work = if copy.is_some() {
            Work::Copy
        } else if let Some(front) = slot.queue.front() {
            let _ = front;
            let n = slot.queue.len().min(self.cfg.fold_max);
            let ops = slot.queue.drain(..n).collect();
            if slot.queue.is_empty() {
                // Most keys are written once in a while: an idle slot keeps no buffer.
                slot.queue = VecDeque::new();
            }
            Work::Ops(ops)
        } else if slot.gc_due {
            slot.gc_due = false;
            Work::Gc
        } else {
            if slot.idle() {
                self.proposer.slots.remove(key);
            }
            return;
        };
        self.start_attempt(key, work, now);
    }

    fn start_attempt(&mut self, key: &str, work: Work, now: Instant) {
        // The slot exists: `pump` found it.
        let slot = self.proposer.slots.get_mut(key).expect("slot exists");
        let p = *slot.partition.get_or_insert_with(|| partition_of(key.as_bytes(), self.map.partitions()));
        let config = self.map.config(p);
        let epoch = self.map.epoch_ref(p);
        let members = config.acceptors();
        let quorum = config.quorum_set();
        self.proposer.next_attempt += 1;
        let id = self.proposer.next_attempt;
        // A recovering write needs phase 1 to find what happened to it.
        let recover = matches!(&work, Work::Ops(ops) if ops.iter().any(|q| q.recover.is_some()));
        let fast = slot.fast.take();
        if let Some(f) = &fast {
            self.proposer.fast_bytes -= f.bytes;
        }
        let fast = fast.filter(|f| f.epoch == epoch && !recover && matches!(work, Work::Ops(_)));
        let (ballot, phase) = match fast {
            Some(f) => {
                let Work::Ops(ops) = &work else { unreachable!("filtered above") };
                let bug = self.cfg.planted_bug;
                let Proposal { state, answers, written, refused, .. } = propose(&f.state, None, ops, f.next, bug);
                self.stats.aborted_refused += refused;
                let proposal = Accepted { ballot: f.next, state };
                let need = quorum;
                self.stats.fast_rounds += 1;
                (f.next, Phase::Accept { proposal, answers, written, grants: MemberSet::EMPTY, need })
            }
            None => {
                self.proposer.round += 1;
                let ballot =
                    Ballot { epoch: epoch.epoch, round: self.proposer.round, node: self.me_tag, restart: self.restart };
                self.stats.full_rounds += 1;
                (ballot, Phase::Prepare { views: Vec::new(), promised: MemberSet::EMPTY })
            }
        };
        self.proposer.round = self.proposer.round.max(ballot.round);
        let timer = self.timers.set(now + self.cfg.round_timeout, Timer::Attempt { key: key.to_string(), attempt: id });
        let none = MemberSet::EMPTY;
        let attempt = Attempt {
            id,
            ballot,
            epoch,
            members,
            quorum,
            work,
            phase,
            replied: none,
            acked: none,
            refused: none,
            timer,
        };
        let msg = match &attempt.phase {
            Phase::Prepare { .. } => Message::Prepare { key: key.to_string(), epoch, ballot, attempt: id },
            Phase::Accept { proposal, .. } => Message::Accept {
                key: key.to_string(),
                epoch,
                ballot,
                attempt: id,
                accepted: proposal.clone(),
                next: Some(ballot.successor()),
            },
        };
        let members = attempt.members.clone();
        slot.active = Some(Box::new(attempt));
        self.send_all(&members, msg);
    }

    /// The active attempt of `key` and the index of `from` among its members, if
    /// `(attempt, ballot)` names it and `from` is a member that has not answered this
    /// phase yet. `accept` names the phase the reply belongs to: a promise that arrives
    /// after phase 1 is complete must not count as the member's phase-2 answer.
    fn attempt_for(
        &mut self,
        key: &str,
        attempt: AttemptId,
        ballot: Ballot,
        from: &NodeId,
        accept: bool,
    ) -> Option<(&mut Attempt, usize)> {
        let a = self.proposer.slots.get_mut(key)?.active.as_mut()?;
        let in_phase = matches!(a.phase, Phase::Accept { .. }) == accept;
        if a.id != attempt || a.ballot != ballot || !in_phase {
            return None;
        }
        let index = a.members.iter().position(|m| m == from)?;
        if !a.replied.insert(index) {
            return None;
        }
        Some((a, index))
    }

    /// Records member `index`'s refusal; true if the phase can no longer succeed.
    fn refused(&mut self, key: &str, from: &NodeId, index: usize, rejection: Rejection) -> bool {
        match rejection {
            Rejection::Refused(Refusal::Promised(b)) => self.proposer.round = self.proposer.round.max(b.round),
            Rejection::Config(c) => self.learn_config(from, c),
            Rejection::Refused(Refusal::BallotReused) | Rejection::Storage | Rejection::Moving => {}
        }
        let Some(a) = self.proposer.slots.get_mut(key).and_then(|s| s.active.as_mut()) else {
            return false;
        };
        a.refused.insert(index);
        a.vote() == VoteResult::Lost
    }

    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        key: String,
        ballot: Ballot,
        attempt: AttemptId,
        result: Result<ReadView, Rejection>,
        now: Instant,
    ) {
        let Some((a, index)) = self.attempt_for(&key, attempt, ballot, &from, false) else {
            return;
        };
        let Phase::Prepare { views, promised } = &mut a.phase else {
            return;
        };
        match result {
            Ok(view) => {
                views.push(view);
                promised.insert(index);
                if a.vote() == VoteResult::Won {
                    self.promised_by_quorum(&key, now);
                }
            }
            Err(rejection) => {
                if self.refused(&key, &from, index, rejection) {
                    self.fail_attempt(&key, false, now);
                }
            }
        }
    }

    /// Phase 1 is complete: compute the proposal and send phase 2 (or answer at once when
    /// nothing changes and the promises already prove the state chosen).
    fn promised_by_quorum(&mut self, key: &str, now: Instant) {
        let Some(a) = self.proposer.slots.get_mut(key).and_then(|s| s.active.as_mut()) else {
            return;
        };
        let Phase::Prepare { views, .. } = &a.phase else {
            return;
        };
        let found = Found {
            head: views.iter().filter_map(|v| v.accepted.as_ref()).map(|a| a.ballot).max(),
            floor: views.iter().map(|v| v.floor).max().unwrap_or_default(),
        };
        let current = highest_state(views);
        let proven = read_rule_holds(views);
        let (state, answers, written, need, next) = match &a.work {
            Work::Copy => {
                if current.is_none() {
                    // Nothing was ever chosen that a quorum remembers: nothing to copy.
                    let epoch = a.epoch;
                    self.answer_without_write(key, Vec::new(), now);
                    self.copy_key_done(key, epoch, now);
                    return;
                }
                (current.clone(), Vec::new(), Vec::new(), a.quorum, None)
            }
            Work::Gc => {
                if a.quorum_is_joint() {
                    // R8: no collection while the partition moves; try again later.
                    self.fail_attempt(key, false, now);
                    return;
                }
                let gc_ignores_versions = self.cfg.planted_bug == Some(PlantedBug::GcDropsVersions);
                let collectable = current
                    .as_ref()
                    .is_some_and(|s| s.collectable() || (gc_ignores_versions && matches!(s, State::Tombstone { .. })));
                if !collectable {
                    // Reinserted since the Delete, or a history keeps values (V4): nothing
                    // to collect.
                    self.abandon_gc(key, now);
                    return;
                }
                (current.clone(), Vec::new(), Vec::new(), QuorumSet::unanimous(a.members.len()), None)
            }
            Work::Ops(ops) => {
                // A key that garbage collection removed keeps its aborted writes as the
                // partition's watermarks (R6): the ops apply to an absent state that
                // refuses them, and a new state inherits them.
                let base = match (&current, reborn(views)) {
                    (None, Some(aborted)) => Some(State::Tombstone { recent: Vec::new(), aborted, history: None }),
                    _ => current.clone(),
                };
                let bug = self.cfg.planted_bug;
                let Proposal { mut state, answers, written, refused, fenced } =
                    propose(&base, Some(found), ops, a.ballot, bug);
                self.stats.fenced_after_answer += fenced;
                if state == base {
                    state = current.clone(); // nothing changed: no tombstone for a watermark
                }
                self.stats.aborted_refused += refused;
                (state, answers, written, a.quorum, Some(a.ballot.successor()))
            }
        };
        if state == current && proven && matches!(a.work, Work::Ops(_)) {
            self.answer_without_write(key, answers, now);
            return;
        }
        let proposal = Accepted { ballot: a.ballot, state };
        let msg = Message::Accept {
            key: key.to_string(),
            epoch: a.epoch,
            ballot: a.ballot,
            attempt: a.id,
            accepted: proposal.clone(),
            next,
        };
        a.phase = Phase::Accept { proposal, answers, written, grants: MemberSet::EMPTY, need };
        a.replied = MemberSet::EMPTY;
        a.refused = MemberSet::EMPTY;
        let members = a.members.clone();
        self.send_all(&members, msg);
    }

    fn answer_without_write(&mut self, key: &str, answers: Vec<Result<Answer, KvError>>, now: Instant) {
        let Some(slot) = self.proposer.slots.get_mut(key) else {
            return;
        };
        let Some(a) = slot.active.take() else { return };
        self.timers.cancel(a.timer);
        slot.failures = 0;
        if let Work::Ops(ops) = a.work {
            for (q, answer) in ops.into_iter().zip(answers) {
                self.finish(q.req, answer);
            }
        }
        self.pump(key, now);
    }

    pub(super) fn on_accepted(
        &mut self,
        from: NodeId,
        key: String,
        ballot: Ballot,
        attempt: AttemptId,
        result: Result<bool, Rejection>,
        now: Instant,
    ) {
        let Some((a, index)) = self.attempt_for(&key, attempt, ballot, &from, true) else {
            return;
        };
        let Phase::Accept { grants, .. } = &mut a.phase else {
            return;
        };
        match result {
            Ok(granted) => {
                if granted {
                    grants.insert(index);
                }
                a.acked.insert(index);
                if a.vote() == VoteResult::Won {
                    self.chosen(&key, now);
                }
            }
            Err(rejection) => {
                // Refused by every member: accepted nowhere, so its writes may be retried.
                let mut refused = a.refused;
                refused.insert(index);
                let all = refused == MemberSet::first(a.members.len());
                if self.refused(&key, &from, index, rejection) {
                    self.fail_attempt(&key, !all, now);
                }
            }
        }
    }

    /// The proposal is chosen: answer, commit, and keep the fast path if it was granted.
    fn chosen(&mut self, key: &str, now: Instant) {
        let Some(slot) = self.proposer.slots.get_mut(key) else {
            return;
        };
        let Some(a) = slot.active.take() else { return };
        self.timers.cancel(a.timer);
        let Phase::Accept { proposal, answers, grants, .. } = a.phase else {
            return;
        };
        slot.failures = 0;
        let is_gc = matches!(a.work, Work::Gc);
        if !is_gc && a.quorum.is_quorum(grants) {
            let next = a.ballot.successor();
            let bytes = fast_path_bytes(key, &proposal.state);
            let fast = FastPath { epoch: a.epoch, next, state: proposal.state.clone(), bytes };
            if let Some(old) = slot.fast.replace(fast) {
                self.proposer.fast_bytes -= old.bytes;
            }
            self.proposer.fast_bytes += bytes;
            self.proposer.round = self.proposer.round.max(next.round);
            // Both bounds, a few evictions at most per write (a scan may find no idle key).
            for _ in 0..EVICTIONS_PER_WRITE_MAX {
                let over = self.proposer.slots.len() > self.cfg.proposer_keys_max
                    || self.proposer.fast_bytes > self.cfg.proposer_bytes_max;
                if !over || !self.proposer.evict_one(key) {
                    break;
                }
            }
        }
        let deleted = proposal.state.as_ref().is_some_and(|s| {
            s.collectable()
                || (self.cfg.planted_bug == Some(PlantedBug::GcDropsVersions) && matches!(s, State::Tombstone { .. }))
        });
        let key_s = key.to_string();
        if is_gc {
            self.stats.gc_rounds += 1;
            self.send_all(&a.members, Message::Drop { key: key_s, epoch: a.epoch, ballot: a.ballot });
        } else {
            // Commit carries the state to the members that did not acknowledge it yet
            // (R7: that is how replicas that missed the Accept converge). Members that
            // acknowledged hold it already; for them a Commit would only set the committed
            // flag, a read optimization that R5's same-ballot rule covers once every
            // replica holds the state.
            let laggards: Vec<NodeId> =
                a.members.iter().enumerate().filter(|(i, _)| !a.acked.contains(*i)).map(|(_, m)| m.clone()).collect();
            self.send_all(&laggards, Message::Commit { key: key_s, epoch: a.epoch, accepted: proposal });
        }
        // Any state chosen at a joint epoch sits on a joint quorum: the key is copied.
        if matches!(a.quorum, QuorumSet::Joint(..)) {
            self.copy_key_done(key, a.epoch, now);
        }
        if let Work::Ops(ops) = a.work {
            let wrote_delete =
                ops.iter().zip(&answers).any(|(q, r)| q.change == Change::Delete && r == &Ok(Answer::Done));
            for (q, answer) in ops.into_iter().zip(answers) {
                self.finish(q.req, answer);
            }
            if deleted && wrote_delete {
                self.schedule_gc(key, now);
            }
        }
        self.pump(key, now);
    }

    /// An attempt failed. `maybe_accepted`: some member may hold its Accept, so its writes
    /// may only recover from now on (R6).
    fn fail_attempt(&mut self, key: &str, maybe_accepted: bool, now: Instant) {
        let Some(slot) = self.proposer.slots.get_mut(key) else {
            return;
        };
        let Some(a) = slot.active.take() else { return };
        self.timers.cancel(a.timer);
        self.stats.retries += 1;
        if let Some(old) = slot.fast.take() {
            self.proposer.fast_bytes -= old.bytes;
        }
        slot.failures = slot.failures.saturating_add(1);
        let written = match &a.phase {
            Phase::Accept { written, .. } if maybe_accepted => written.clone(),
            _ => Vec::new(),
        };
        match a.work {
            Work::Ops(ops) => {
                for (i, mut q) in ops.into_iter().enumerate().rev() {
                    if written.get(i).copied().unwrap_or(false) {
                        // Keep the lowest ballot it was ever proposed at: the proof of
                        // "not applied" must cover every earlier proposal.
                        let lowest = match q.recover {
                            Some(Recover::Proposed(b)) => b.min(a.ballot),
                            _ => a.ballot,
                        };
                        q.recover = Some(Recover::Proposed(lowest));
                    }
                    slot.queue.push_front(q);
                }
            }
            Work::Copy => slot.copy_due = Some(a.epoch),
            Work::Gc => {
                // Some member is unreachable or busy: try again after another delay.
                self.timers.set(now + self.cfg.gc_delay, Timer::Gc { key: key.to_string() });
                self.proposer.gc_pending += 1;
            }
        }
        let ceiling = Duration::from_millis(1).saturating_mul(1 << slot.failures.min(16)).min(self.cfg.backoff_max);
        let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX).max(1);
        let delay = Duration::from_nanos(self.rng.next_u64() % ceiling_ns);
        slot.backing_off = true;
        self.timers.set(now + delay, Timer::Backoff { key: key.to_string() });
    }

    pub(super) fn on_attempt_timeout(&mut self, key: String, attempt: AttemptId, now: Instant) {
        let active = self.proposer.slots.get(&key).and_then(|s| s.active.as_ref());
        if active.is_some_and(|a| a.id == attempt) {
            self.fail_attempt(&key, true, now);
        }
    }

    pub(super) fn on_backoff(&mut self, key: String, now: Instant) {
        if let Some(slot) = self.proposer.slots.get_mut(&key) {
            slot.backing_off = false;
        }
        self.pump(&key, now);
    }

    fn schedule_gc(&mut self, key: &str, now: Instant) {
        if self.proposer.gc_pending >= self.cfg.gc_pending_max {
            return; // the tombstone stays until a later delete collects it
        }
        self.proposer.gc_pending += 1;
        self.timers.set(now + self.cfg.gc_delay, Timer::Gc { key: key.to_string() });
    }

    /// Queues the copier's identity round of `key` under the key's current (joint) epoch.
    pub(super) fn enqueue_copy(&mut self, key: String, now: Instant) {
        let p = partition_of(key.as_bytes(), self.map.partitions());
        let epoch = self.map.epoch_ref(p);
        self.proposer.slots.entry(key.clone()).or_default().copy_due = Some(epoch);
        self.pump(&key, now);
    }

    pub(super) fn on_gc_due(&mut self, key: String, now: Instant) {
        self.proposer.gc_pending = self.proposer.gc_pending.saturating_sub(1);
        self.proposer.slots.entry(key.clone()).or_default().gc_due = true;
        self.pump(&key, now);
    }

    fn abandon_gc(&mut self, key: &str, now: Instant) {
        if let Some(a) = self.proposer.slots.get_mut(key).and_then(|s| s.active.take()) {
            self.timers.cancel(a.timer);
        }
        self.pump(key, now);
    }
}

/// The abort watermarks the promises report for a key with nothing accepted anywhere in
/// the quorum, if any (the partition's, from collected keys; see `Persist::partition_aborts`).
fn reborn(views: &[ReadView]) -> Option<crate::kv::Aborts> {
    let mut aborts = crate::kv::Aborts::default();
    for op in views.iter().flat_map(|v| &v.aborted) {
        aborts.raise(*op);
    }
    (!aborts.is_empty()).then_some(aborts)
}

/// The state with the highest accepted ballot among promises (`None`: absent).
fn highest_state(views: &[ReadView]) -> Option<State> {
    views.iter().filter_map(|v| v.accepted.as_ref()).max_by_key(|a| a.ballot).and_then(|a| a.state.clone())
}

/// R5: the highest accepted state among a quorum of views is chosen if every view reports
/// the same accepted ballot, or if the view with the highest ballot is marked committed.
pub(super) fn read_rule_holds(views: &[ReadView]) -> bool {
    let Some(first) = views.first() else {
        return false;
    };
    let ballot = |v: &ReadView| v.accepted.as_ref().map(|a| a.ballot);
    if views.iter().all(|v| ballot(v) == ballot(first)) {
        return true;
    }
    // Any view at the highest ballot that says committed proves that ballot's state chosen
    // (`max_by_key` alone would look at the last of several such views only).
    let top = views.iter().map(ballot).max().flatten();
    views.iter().any(|v| v.committed && ballot(v) == top)
}

/// The proposal for `ops` on `current` at `ballot` (see [`Proposal`]). `found` is what
/// phase 1 found (`None` on the fast path, which never carries recovering writes).
///
/// A recovering write whose fate is unknown is recorded as aborted in the new state (R6):
/// its UNAVAILABLE answer is given only once that state is chosen, and from then on every
/// chosen state descends from it and refuses the write, wherever it is proposed (a primary
/// executing a late Forward, on its fast path or not, or a proposer's retry).
fn propose(
    current: &Option<State>,
    found: Option<Found>,
    ops: &[Queued],
    ballot: Ballot,
    bug: Option<PlantedBug>,
) -> Proposal {
    let mut state = current.clone();
    let mut answers = Vec::with_capacity(ops.len());
    let mut written = Vec::with_capacity(ops.len());
    let mut refused = 0;
    let mut fenced = 0;
    for q in ops {
        let recovery = q.recover.map(|r| recovery(current.as_ref(), found, q.op, r));
        if q.orphan_until.is_some() {
            // Answered already: never apply it now, fence it unless it is known applied.
            if matches!(recovery, Some(Recovery::NotApplied | Recovery::Unknown)) {
                abort(&mut state, q.op);
                fenced += 1;
            }
            answers.push(Err(KvError::fenced("it was answered by its deadline, then aborted")));
            written.push(false);
            continue;
        }
        let answer = match recovery {
            Some(Recovery::Applied) => Ok(Answer::Done),
            Some(Recovery::Unknown) => match bug {
                Some(PlantedBug::AbortClaimsNeverHappened) => {
                    abort(&mut state, q.op);
                    Err(KvError::Unavailable(
                        "the outcome of this write was unknown; it is now aborted and will never take effect".into(),
                    ))
                }
                Some(PlantedBug::FenceWithoutMarker) => {
                    Err(KvError::fenced("its outcome is unknown, and this recovery aborted it"))
                }
                _ => {
                    abort(&mut state, q.op);
                    Err(KvError::fenced("its outcome is unknown, and this recovery aborted it"))
                }
            },
            Some(Recovery::Aborted) => {
                refused += 1;
                Err(aborted())
            }
            Some(Recovery::NotApplied) | None => {
                let answer = apply(&mut state, &q.change, q.op, q.stamp, ballot).map_err(|Aborted| {
                    refused += 1;
                    aborted()
                });
                if bug == Some(PlantedBug::DeleteDropsVersions)
                    && q.change == Change::Delete
                    && let Some(State::Tombstone { history: Some(h), .. }) = &mut state
                {
                    h.earlier.clear(); // V3 broken on purpose
                }
                answer
            }
        };
        let applied_now = recovery.is_none_or(|r| r == Recovery::NotApplied);
        written.push(applied_now && answer == Ok(Answer::Done) && q.change.is_write());
        answers.push(answer);
    }
    Proposal { state, answers, written, refused, fenced }
}

/// What [`propose`] computed.
struct Proposal {
    /// The state to propose.
    state: Option<State>,
    /// Each op's answer, given once the state is chosen.
    answers: Vec<Result<Answer, KvError>>,
    /// Per op: whether its effect is in `state`.
    written: Vec<bool>,
    /// Ops refused because the state marks them aborted.
    refused: u64,
    /// Ops answered by their deadline and aborted by this proposal.
    fenced: u64,
}

/// The answer to a write the state marks aborted. It may have taken effect before the
/// recovery that aborted it and been forgotten since (issue 9), so it is fenced, never
/// "did not happen".
fn aborted() -> KvError {
    KvError::fenced("an earlier recovery aborted it")
}

/// What happened to a write that may have been applied (R6), given the state `current`
/// at the highest accepted ballot `head` that phase 1 found. That state is about to be
/// chosen (written back, or changed, at this round's ballot), so it is the head of the
/// key's chain of chosen states: every chosen state is derived from the previous one.
///
/// - The state remembers the op: it took effect.
/// - A forwarded op may still be started by the primary: only finding it counts.
/// - Otherwise let `b` be the lowest ballot the op was proposed at. If it took effect, it
///   did so in a state at ballot `b` or higher, and every later state of the chain has a
///   higher ballot. So if the head's ballot is below `b`, it never took effect. And since
///   the recent writes are kept in chain order with non-decreasing ballots, an entry
///   below `b` that is still remembered is older than the op would be, which would then
///   be remembered too: it never took effect. Once this round's state is chosen at a
///   ballot above every earlier proposal, none of them can be chosen later, so applying
///   the op now applies it exactly once.
/// - Nothing accepted anywhere in the quorum: had the op taken effect, a quorum accepted a
///   state at `b` or above, which meets this quorum; so it either is still there (it is
///   not) or it was collected, which raised the floor of every member that dropped it to
///   above `b`. If every floor is below `b`, it never took effect.
fn recovery(current: Option<&State>, found: Option<Found>, op: OpId, recover: Recover) -> Recovery {
    if current.is_some_and(|s| s.carries(op)) {
        return Recovery::Applied;
    }
    if current.is_some_and(|s| s.refuses(op)) {
        return Recovery::Aborted;
    }
    let (Recover::Proposed(lowest), Some(found)) = (recover, found) else { return Recovery::Unknown };
    let proven = match found.head {
        None => found.floor < lowest,
        Some(head) => head < lowest || current.is_some_and(|s| s.recent().iter().any(|a| a.ballot < lowest)),
    };
    if proven { Recovery::NotApplied } else { Recovery::Unknown }
}

/// What phase 1 found about a key besides its state.
#[derive(Clone, Copy, Debug)]
struct Found {
    /// The highest accepted ballot, if any member accepted anything.
    head: Option<Ballot>,
    /// The highest GC floor reported by a member with nothing accepted.
    floor: Ballot,
}

/// The state a quorum of read views proves chosen, if the read rule holds.
pub(super) fn proven_state(views: &[ReadView]) -> Option<Option<State>> {
    read_rule_holds(views).then(|| highest_state(views))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(round: Option<u64>, committed: bool) -> ReadView {
        let accepted = round.map(|round| Accepted {
            ballot: Ballot { epoch: 2, round, node: Default::default(), restart: 0 },
            state: Some(State::Tombstone { recent: Vec::new(), aborted: Default::default(), history: None }),
        });
        ReadView { accepted, committed, floor: Ballot::default(), aborted: Vec::new() }
    }

    /// R5 on a joint config (F2): the rule takes the views of whatever quorum the vote
    /// declared won, and a joint quorum is a quorum of each config, so "every view of the
    /// quorum carries ballot b" still means b is accepted by a quorum of both: chosen.
    #[test]
    fn the_read_rule_holds_on_the_views_of_a_joint_quorum() {
        // Old members {0, 1, 2}, new {2, 3, 4}: {0, 2, 3} is a joint quorum, {0, 1, 2} is not.
        let joint = QuorumSet::Joint(MemberSet::of([0, 1, 2]), MemberSet::of([2, 3, 4]));
        assert!(joint.is_quorum(MemberSet::of([0, 2, 3])));
        assert!(!joint.is_quorum(MemberSet::of([0, 1, 2])), "a majority of the old members alone");
        // The joint quorum's views agree: proven.
        assert!(read_rule_holds(&[view(Some(7), false), view(Some(7), false), view(Some(7), false)]));
        // A new member lags behind: not proven, unless the highest view is committed.
        assert!(!read_rule_holds(&[view(Some(7), false), view(Some(7), false), view(None, false)]));
        assert!(read_rule_holds(&[view(Some(7), true), view(Some(7), false), view(None, false)]));
    }
}
