//! The acceptor's side of the node: applies the pure transitions of
//! [`crate::paxos::acceptor`] to registers read through the overlay, persists the result,
//! and answers once the answer's state is durable (R4).
//!
//! Every data message is checked against the partition's `(epoch, config hash)`; a
//! mismatch is refused with the acceptor's own config so the coordinator can refresh
//! (docs/PROTOCOL.md, F1–F6). Drop (R8) removes a key only when its accepted state is exactly the GC
//! round's tombstone and, in the same batch, raises the partition floor.
//!
//! This file also holds the primary's side of forwarding: a per-forwarder window of
//! recently seen forward sequence numbers, so a duplicated or replayed Forward never
//! applies a client's change twice.

use super::persist::Write;
use super::{Node, Origin};
use crate::config::PlantedBug;
use crate::ids::{NodeId, NodeTag, OpId};
use crate::kv::{Aborts, Change, Stamp};
use crate::message::{AttemptId, Message, Rejection, ScanEntries, ScanPart, ScanRange};
use crate::paxos::acceptor::{Accepted, ReadView, Register};
use crate::paxos::ballot::Ballot;
use crate::placement::{EpochRef, PartitionId, partition_of};
use crate::storage::{self, BatchId, Storage};
use crate::time::Instant;
use std::collections::BTreeMap;

/// Forwards a primary remembers per forwarder, as a sliding window of sequence numbers.
pub(super) const FORWARD_WINDOW: u64 = 1024;

#[derive(Default)]
pub(super) struct ForwardWindows {
    windows: BTreeMap<NodeTag, Window>,
}

struct Window {
    restart: u64,
    highest: u64,
    /// Bit `i` set: sequence `highest - i` was seen.
    seen: [u64; (FORWARD_WINDOW / 64) as usize],
}

impl ForwardWindows {
    /// Records forward `seq` of `op`'s node life; false if it is a duplicate or too old to
    /// tell (then it must not run).
    pub(super) fn admit(&mut self, op: OpId, seq: u64) -> bool {
        let w = self.windows.entry(op.node).or_insert(Window { restart: op.restart, highest: 0, seen: [0; 16] });
        if op.restart < w.restart {
            return false;
        }
        if op.restart > w.restart {
            *w = Window { restart: op.restart, highest: 0, seen: [0; 16] };
        }
        if seq > w.highest {
            w.shift(seq - w.highest);
            w.highest = seq;
            w.set(0);
            return true;
        }
        let age = w.highest - seq;
        if age >= FORWARD_WINDOW || w.get(age) {
            return false;
        }
        w.set(age);
        true
    }
}

impl Window {
    fn get(&self, age: u64) -> bool {
        self.seen[(age / 64) as usize] & (1 << (age % 64)) != 0
    }
    fn set(&mut self, age: u64) {
        self.seen[(age / 64) as usize] |= 1 << (age % 64);
    }
    fn shift(&mut self, by: u64) {
        if by >= FORWARD_WINDOW {
            self.seen = [0; 16];
            return;
        }
        let mut next = [0u64; 16];
        for age in 0..FORWARD_WINDOW - by {
            if self.get(age) {
                let a = age + by;
                next[(a / 64) as usize] |= 1 << (a % 64);
            }
        }
        self.seen = next;
    }
}

impl<S: Storage> Node<S> {
    /// The partition of `key` if `epoch` is its current config, else the refusal to send.
    fn fence(&self, key: &str, epoch: EpochRef) -> Result<PartitionId, Rejection> {
        let p = partition_of(key.as_bytes(), self.map.partitions());
        self.fence_partition(p, epoch)?;
        Ok(p)
    }

    /// Whether `epoch` names the config of `p` this node holds: its epoch number and its
    /// hash (F4; H9: a config accepted but never chosen has the chosen one's number).
    pub(super) fn holds_config(&self, p: PartitionId, epoch: EpochRef) -> bool {
        let mine = self.map.epoch_ref(p);
        if self.cfg.planted_bug == Some(PlantedBug::ConfigCheckedByEpochOnly) {
            return mine.epoch == epoch.epoch;
        }
        mine == epoch
    }

    /// Whether data operations of `partition` at `epoch` may run here: `epoch` must be the
    /// config this node holds, this node one of its acceptors, and no decree for the next
    /// epoch accepted here (F1).
    pub(super) fn fence_partition(&self, p: PartitionId, epoch: EpochRef) -> Result<(), Rejection> {
        let config = self.map.config(p);
        if !self.holds_config(p, epoch) || !config.contains(&self.cfg.me) {
            return Err(Rejection::Config(config.clone()));
        }
        if self.reconfig.fenced(p, config.epoch) {
            return Err(Rejection::Moving);
        }
        Ok(())
    }

    fn load(&mut self, partition: PartitionId, key: &str) -> Result<Register, Rejection> {
        self.persist.register(&self.storage, partition, key).map_err(|_| {
            self.stats.storage_errors += 1;
            Rejection::Storage
        })
    }

    /// Runs `f` on the register of `key` after the epoch check. Storage failures become
    /// refusals (the coordinator retries elsewhere).
    fn with_register<R>(
        &mut self,
        key: &str,
        epoch: EpochRef,
        f: impl FnOnce(&mut Register, Ballot) -> (Result<R, Rejection>, Option<Write>),
    ) -> (Result<R, Rejection>, Option<BatchId>) {
        let p = match self.fence(key, epoch) {
            Ok(p) => p,
            Err(e) => return (Err(e), None),
        };
        match self.persist.update(&self.storage, p, key, f) {
            Ok(outcome) => outcome,
            Err(_) => {
                self.stats.storage_errors += 1;
                (Err(Rejection::Storage), None)
            }
        }
    }

    pub(super) fn on_prepare(
        &mut self,
        from: NodeId,
        key: String,
        epoch: EpochRef,
        ballot: Ballot,
        attempt: AttemptId,
    ) {
        // The promise itself is volatile: the durable promise ceiling covers it (see
        // `persist`). The reply waits for the key's earlier writes (the view it reports)
        // and, when this ballot raises the ceiling, for the ceiling's batch.
        let (result, mut gate) = self.with_register(&key, epoch, |reg, floor| match reg.prepare(ballot) {
            Ok(view) => (Ok(with_floor(view, floor)), Some(Write::Volatile)),
            Err(refusal) => (Err(Rejection::Refused(refusal)), None),
        });
        if result.is_ok() {
            gate = gate.max(self.persist.cover_promise(ballot));
        }
        let result = result.and_then(|view| self.with_partition_aborts(&key, view));
        self.send(from, Message::Promise { key, ballot, attempt, result }, gate);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_accept(
        &mut self,
        from: NodeId,
        key: String,
        epoch: EpochRef,
        ballot: Ballot,
        attempt: AttemptId,
        accepted: Accepted,
        next: Option<Ballot>,
    ) {
        if accepted.ballot != ballot {
            // Malformed: the proposal must be at the message's ballot. Not worth a reply.
            self.stats.peer_errors += 1;
            return;
        }
        if self.cfg.planted_bug == Some(PlantedBug::AcceptIgnoresPromise) {
            // The planted bug: forget the promise (down to the accepted ballot, which keeps
            // the register's own invariant) before checking it.
            let _ = self.with_register(&key, epoch, |reg, _| {
                reg.promised = reg.accepted_ballot().unwrap_or(Ballot::ZERO).min(reg.promised);
                (Ok(()), None)
            });
        }
        let (result, gate) = self.with_register(&key, epoch, |reg, _| match reg.accept(ballot, accepted.state, next) {
            Ok(granted) => (Ok(granted), Some(Write::Reported)),
            Err(refusal) => (Err(Rejection::Refused(refusal)), None),
        });
        self.send(from, Message::Accepted { key, ballot, attempt, result }, gate);
    }

    pub(super) fn on_commit(&mut self, key: String, epoch: EpochRef, accepted: Accepted) {
        // A Commit has no reply: a refusal or storage failure just leaves the replica as is.
        let _ = self.with_register(&key, epoch, |reg, floor| {
            let before = reg.accepted_ballot();
            if !reg.commit(accepted.ballot, accepted.state, floor) {
                return (Ok(()), None);
            }
            // Installing a missed state is reported state (R7); a flag alone is not.
            let installed = reg.accepted_ballot() != before;
            (Ok(()), Some(if installed { Write::Reported } else { Write::MemoryOnly }))
        });
    }

    pub(super) fn on_read(&mut self, from: NodeId, key: String, epoch: EpochRef, attempt: AttemptId, history: bool) {
        let (result, gate) = self.with_register(&key, epoch, |reg, floor| {
            let view = if history { reg.view() } else { reg.view_without_history() };
            (Ok(with_floor(view, floor)), None)
        });
        self.send(from, Message::ReadReply { key, attempt, result }, gate);
    }

    pub(super) fn on_drop(&mut self, key: String, epoch: EpochRef, ballot: Ballot) {
        let Ok(p) = self.fence(&key, epoch) else {
            return;
        };
        let Ok(reg) = self.load(p, &key) else { return };
        if !reg.droppable_at(ballot) {
            return;
        }
        let Ok(floor) = self.persist.floor(&self.storage, p) else {
            return;
        };
        // The key's abort markers outlive it, as partition watermarks: a write aborted on
        // the key must stay refused if the key is written again (R6).
        if let Some(state) = reg.accepted.as_ref().and_then(|a| a.state.as_ref())
            && !state.aborted().is_empty()
        {
            let Ok(before) = self.persist.partition_aborts(&self.storage, p) else {
                return;
            };
            let mut aborts = Aborts { ops: Vec::new(), below: before.clone() };
            for op in state.aborted().ops.iter().chain(&state.aborted().below) {
                aborts.raise(*op);
            }
            if aborts.below != before {
                self.persist.put_partition_aborts(p, aborts.below);
            }
        }
        self.persist.put_floor(p, reg.floor_after_drop(floor, ballot));
        self.persist.put_register(p, &key, None, Write::Reported);
        self.stats.keys_dropped += 1;
    }

    pub(super) fn on_scan(
        &mut self,
        from: NodeId,
        id: u64,
        partitions: Vec<(PartitionId, EpochRef)>,
        range: ScanRange,
    ) {
        let mut parts = Vec::with_capacity(partitions.len());
        let mut gate = None;
        for (p, epoch) in partitions {
            let result = if let Err(rejection) = self.fence_partition(p, epoch) {
                Err(rejection)
            } else {
                // List only needs to know which keys hold a value: the views leave the
                // keys' version histories out.
                self.scan_partition(p, &range, false).inspect(|entries| {
                    for (k, _) in &entries.entries {
                        gate = gate.max(self.persist.gate(p, k));
                    }
                })
            };
            parts.push(ScanPart { partition: p, result });
        }
        self.send(from, Message::ScanReply { id, partitions: parts }, gate);
    }

    /// Keys of one partition in `range`, with their views (with the version histories if
    /// `history`), merging the overlay over the silo.
    pub(super) fn scan_partition(
        &mut self,
        p: PartitionId,
        range: &ScanRange,
        history: bool,
    ) -> Result<ScanEntries, Rejection> {
        let limit = range.limit.clamp(1, 100_000) as usize;
        let from =
            if range.start.as_str() > range.prefix.as_str() { range.start.as_str() } else { range.prefix.as_str() };
        let start = storage::register_key(p, from.as_bytes());
        let end = match prefix_successor(range.prefix.as_bytes()) {
            Some(succ) => storage::register_key(p, &succ),
            None => storage::register_key(p + 1, b""),
        };
        // Read past the limit (registers that only hold a promise are skipped) and learn
        // where the silo's answer stops being complete.
        let rows = self.storage.scan(&start, &end, limit + 2).map_err(|_| {
            self.stats.storage_errors += 1;
            Rejection::Storage
        })?;
        let silo_last = (rows.len() >= limit + 2)
            .then(|| rows.last().and_then(|(sk, _)| String::from_utf8(sk[5..].to_vec()).ok()))
            .flatten();
        let mut keys: Vec<String> =
            rows.into_iter().filter_map(|(sk, _)| String::from_utf8(sk[5..].to_vec()).ok()).collect();
        keys.extend(self.persist.pending_keys(&start, &end));
        keys.sort();
        keys.dedup();
        keys.retain(|k| !(range.exclusive && *k == range.start));
        if let Some(last) = &silo_last {
            keys.retain(|k| k <= last);
        }
        let mut entries: Vec<(String, _)> = Vec::new();
        let mut complete_to = silo_last;
        for key in keys {
            let reg = self.load(p, &key)?;
            if reg.accepted.is_none() {
                continue; // dropped, or only promised: nothing to report
            }
            if entries.len() == limit {
                complete_to = entries.last().map(|(k, _)| k.clone());
                break;
            }
            entries.push((key, if history { reg.view() } else { reg.view_without_history() }));
        }
        Ok(ScanEntries { entries, complete_to })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_forward(
        &mut self,
        from: NodeId,
        id: u64,
        seq: u64,
        op: OpId,
        stamp: Stamp,
        key: String,
        change: Change,
        now: Instant,
    ) {
        if self.nodes.get(&from) != Some(&op.node) || !self.forwards.admit(op, seq) {
            return; // a duplicate, a replay from an older life, or a forged op-id
        }
        if self.requests.len() >= self.cfg.requests_in_flight_max {
            let e = crate::KvError::ResourceExhausted("too many requests in flight on the primary".into());
            self.send(from, Message::ForwardReply { id, result: Err(e) }, None);
            return;
        }
        let req = self.register_request(Origin::Peer { from, id }, now);
        self.coordinate(req, key, change, op, stamp, None, now);
    }
}

/// Adds the partition floor to the view of a key with nothing accepted.
impl<S: Storage> Node<S> {
    /// Adds the partition's abort watermarks to a view of a key with nothing accepted.
    fn with_partition_aborts(&mut self, key: &str, mut view: ReadView) -> Result<ReadView, Rejection> {
        if view.accepted.is_some() {
            return Ok(view);
        }
        let p = partition_of(key.as_bytes(), self.map.partitions());
        view.aborted = self.persist.partition_aborts(&self.storage, p).map_err(|_| {
            self.stats.storage_errors += 1;
            Rejection::Storage
        })?;
        Ok(view)
    }
}

fn with_floor(mut view: ReadView, floor: Ballot) -> ReadView {
    if view.accepted.is_none() {
        view.floor = floor;
    }
    view
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(restart: u64) -> OpId {
        OpId { node: NodeTag(7), restart, seq: 0 }
    }

    #[test]
    fn the_forward_window_admits_each_sequence_once() {
        let mut w = ForwardWindows::default();
        assert!(w.admit(op(1), 5));
        assert!(!w.admit(op(1), 5), "duplicate");
        assert!(w.admit(op(1), 3), "reordered but new");
        assert!(!w.admit(op(1), 3));
        assert!(w.admit(op(1), 5 + FORWARD_WINDOW));
        assert!(!w.admit(op(1), 5), "too old to tell: refused");
        assert!(w.admit(op(1), 6 + FORWARD_WINDOW));
        assert!(!w.admit(op(0), 10_000), "an older life of the forwarder");
        assert!(w.admit(op(2), 1), "a newer life starts a new window");
    }

    #[test]
    fn prefix_successor_skips_trailing_ff() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[0x61, 0xff]), Some(vec![0x62]));
        assert_eq!(prefix_successor(&[0xff]), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
