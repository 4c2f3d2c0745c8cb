//! List across partitions (docs/ARCHITECTURE.md, "List"; R9).
//!
//! A List runs in rounds. Each round sends one Scan per node, covering every partition the
//! node is a member of, for keys at or after a cursor; per partition, the first quorum of
//! replies counts. Each scan reply says up to which key it is complete; the round's
//! *frontier* is the smallest such key over all partitions, and only keys up to it are
//! used. Each key is resolved with the read rule R5 over its partition's quorum (a member
//! that did not list a key reports "nothing accepted"); a key whose views disagree is
//! resolved by an identity round through its register slot. Raw key sets are never merged
//! as they are: a listed key is one whose chosen state is a value (R9).
//!
//! The live keys feed a [`PageBuilder`]; when the page is full and one more entry exists,
//! or no frontier remains, the page is answered. Otherwise the next round starts after the
//! frontier, so every round makes progress.

use super::proposer::{Queued, proven_state};
use super::timers::{Timer, TimerHandle};
use super::{Node, Origin, ReqKey};
use crate::KvError;
use crate::config::KEY_BYTES_MAX;
use crate::ids::NodeId;
use crate::kv::{Answer, Change, Stamp};
use crate::list::{ListQuery, PageBuilder};
use crate::message::{Message, Rejection, ScanEntries, ScanPart, ScanRange};
use crate::paxos::acceptor::ReadView;
use crate::placement::{EpochRef, PartitionId};
use crate::quorum::{MemberSet, QuorumSet, VoteResult};
use crate::storage::Storage;
use crate::time::Instant;
use std::collections::BTreeMap;

use super::Response;

#[derive(Default)]
pub(super) struct Lists {
    rounds: BTreeMap<u64, ListRound>,
    /// Scan id → list id.
    scans: BTreeMap<u64, u64>,
    next: u64,
}

struct ListRound {
    req: ReqKey,
    builder: PageBuilder,
    cursor: (String, bool),
    scan: u64,
    parts: BTreeMap<PartitionId, PartScan>,
    waiting: usize,
    frontier: Option<String>,
    /// Keys of this round and whether they are live (`None`: being resolved).
    keys: BTreeMap<String, Option<bool>>,
    /// Identity rounds in flight: request → key.
    resolving: BTreeMap<ReqKey, String>,
    timer: TimerHandle,
}

struct PartScan {
    members: Vec<NodeId>,
    quorum: QuorumSet,
    replies: Vec<(NodeId, ScanEntries)>,
    /// Members whose reply is in `replies`.
    replied: MemberSet,
    refused: MemberSet,
}

impl PartScan {
    fn vote(&self) -> VoteResult {
        self.quorum.vote(self.replied, self.refused)
    }
}

impl Lists {
    pub(super) fn starting_at(next: u64) -> Self {
        Lists { rounds: BTreeMap::new(), scans: BTreeMap::new(), next }
    }
}

impl<S: Storage> Node<S> {
    pub(super) fn start_list(&mut self, req: ReqKey, query: ListQuery, now: Instant) {
        for (name, s) in [("prefix", &query.prefix), ("marker", &query.marker), ("delimiter", &query.delimiter)] {
            if s.len() > KEY_BYTES_MAX {
                let e = KvError::InvalidArgument(format!("{name} is longer than the largest key"));
                self.finish_response(req, Err(e));
                return;
            }
        }
        self.lists.next += 1;
        let id = self.lists.next;
        let round = ListRound {
            req,
            cursor: query.start(),
            builder: PageBuilder::new(query),
            scan: 0,
            parts: BTreeMap::new(),
            waiting: 0,
            frontier: None,
            keys: BTreeMap::new(),
            resolving: BTreeMap::new(),
            timer: self.timers.set(now + self.cfg.request_timeout, Timer::List { list: id }),
        };
        self.lists.rounds.insert(id, round);
        self.scan_round(id);
    }

    fn scan_round(&mut self, id: u64) {
        self.lists.next += 1;
        let scan = self.lists.next;
        let partitions = self.map.partitions();
        let Some(round) = self.lists.rounds.get_mut(&id) else {
            return;
        };
        self.lists.scans.insert(scan, id);
        round.scan = scan;
        round.keys.clear();
        round.frontier = None;
        // Spread the page over the partitions, with headroom for uneven hashing.
        let want = round.builder.remaining() + 1;
        let limit = (2 * want / partitions as usize + 8).min(self.cfg.list_scan_keys_max);
        let range = ScanRange {
            start: round.cursor.0.clone(),
            exclusive: round.cursor.1,
            prefix: round.builder_prefix(),
            limit: limit as u32,
        };
        let mut per_node: BTreeMap<NodeId, Vec<(PartitionId, EpochRef)>> = BTreeMap::new();
        round.parts.clear();
        for config in self.map.iter() {
            let p = config.partition;
            let acceptors = config.acceptors();
            for m in &acceptors {
                per_node.entry(m.clone()).or_default().push((p, self.map.epoch_ref(p)));
            }
            let part = PartScan {
                members: acceptors,
                quorum: config.quorum_set(),
                replies: Vec::new(),
                replied: MemberSet::EMPTY,
                refused: MemberSet::EMPTY,
            };
            round.parts.insert(p, part);
        }
        round.waiting = round.parts.len();
        for (node, partitions) in per_node {
            self.send(node, Message::Scan { id: scan, partitions, range: range.clone() }, None);
        }
    }

    pub(super) fn on_scan_reply(&mut self, from: NodeId, scan: u64, parts: Vec<ScanPart>, now: Instant) {
        let Some(&id) = self.lists.scans.get(&scan) else {
            return;
        };
        let Some(round) = self.lists.rounds.get_mut(&id) else {
            return;
        };
        if round.scan != scan {
            return;
        }
        let mut failed = false;
        let mut learned = Vec::new();
        for part in parts {
            let Some(ps) = round.parts.get_mut(&part.partition) else {
                continue;
            };
            let Some(index) = ps.members.iter().position(|m| *m == from) else {
                continue;
            };
            if ps.vote() != VoteResult::Pending || ps.replied.contains(index) || ps.refused.contains(index) {
                continue;
            }
            match part.result {
                Ok(entries) => {
                    ps.replies.push((from.clone(), entries));
                    ps.replied.insert(index);
                    if ps.vote() == VoteResult::Won {
                        round.waiting -= 1;
                    }
                }
                Err(rejection) => {
                    ps.refused.insert(index);
                    failed |= ps.vote() == VoteResult::Lost;
                    if let Rejection::Config(c) = rejection {
                        learned.push(c);
                    }
                }
            }
        }
        let waiting = round.waiting;
        for c in learned {
            self.learn_config(&from, c);
        }
        if failed {
            self.fail_list(id, "a partition refused the scan");
        } else if waiting == 0 {
            self.lists.scans.remove(&scan);
            self.merge_scan(id, now);
        }
    }

    /// Every partition answered: resolve the round's keys up to the frontier.
    fn merge_scan(&mut self, id: u64, now: Instant) {
        let Some(round) = self.lists.rounds.get_mut(&id) else {
            return;
        };
        let frontier =
            round.parts.values().flat_map(|ps| ps.replies.iter().filter_map(|(_, e)| e.complete_to.clone())).min();
        let mut unresolved = Vec::new();
        for ps in round.parts.values() {
            let mut views: BTreeMap<&str, Vec<ReadView>> = BTreeMap::new();
            for (_, entries) in &ps.replies {
                for (key, view) in &entries.entries {
                    if frontier.as_ref().is_none_or(|f| key <= f) {
                        views.entry(key).or_default().push(view.clone());
                    }
                }
            }
            for (key, mut vs) in views {
                // A member of the quorum that did not list the key has accepted nothing
                // for it.
                vs.resize(
                    ps.replies.len(),
                    ReadView { accepted: None, committed: false, floor: Default::default(), aborted: Vec::new() },
                );
                match proven_state(&vs) {
                    Some(state) => {
                        round.keys.insert(key.to_string(), Some(state.is_some_and(|s| s.value().is_some())));
                    }
                    None => {
                        round.keys.insert(key.to_string(), None);
                        unresolved.push(key.to_string());
                    }
                }
            }
        }
        round.frontier = frontier;
        for key in unresolved {
            self.resolve_key(id, key, now);
        }
        self.build_if_resolved(id);
    }

    fn resolve_key(&mut self, id: u64, key: String, now: Instant) {
        let req = self.register_request(Origin::List { list: id }, now);
        let op = self.mint_op();
        if let Some(round) = self.lists.rounds.get_mut(&id) {
            round.resolving.insert(req, key.clone());
        }
        self.stats.read_fallbacks += 1;
        self.enqueue(
            key,
            Queued { req, change: Change::Fetch, op, stamp: Stamp::default(), recover: None, orphan_until: None },
            now,
        );
    }

    pub(super) fn list_key_resolved(&mut self, id: u64, req: ReqKey, result: Result<Answer, KvError>) {
        let Some(round) = self.lists.rounds.get_mut(&id) else {
            return;
        };
        let Some(key) = round.resolving.remove(&req) else {
            return;
        };
        let live = match result {
            Ok(Answer::Value(_)) => true,
            Ok(_) | Err(KvError::NotFound) => false,
            Err(_) => {
                self.fail_list(id, "a key could not be resolved");
                return;
            }
        };
        round.keys.insert(key, Some(live));
        self.build_if_resolved(id);
    }

    fn build_if_resolved(&mut self, id: u64) {
        let Some(round) = self.lists.rounds.get_mut(&id) else {
            return;
        };
        if !round.resolving.is_empty() || round.keys.values().any(Option::is_none) {
            return;
        }
        let mut complete = round.frontier.is_none();
        for (key, live) in &round.keys {
            if *live == Some(true) && !round.builder.offer(key) {
                complete = true;
                break;
            }
        }
        if !complete && let Some(f) = round.frontier.take() {
            round.cursor = (f, true);
            self.scan_round(id);
            return;
        }
        let Some(round) = self.lists.rounds.remove(&id).inspect(|r| self.timers.cancel(r.timer)) else {
            return;
        };
        self.lists.scans.retain(|_, l| *l != id);
        let page = round.builder.finish();
        self.finish_response(round.req, Ok(Response::List(page)));
    }

    fn fail_list(&mut self, id: u64, why: &str) {
        let Some(round) = self.lists.rounds.remove(&id).inspect(|r| self.timers.cancel(r.timer)) else {
            return;
        };
        self.lists.scans.retain(|_, l| *l != id);
        self.finish_response(round.req, Err(KvError::Unavailable(format!("list: {why}"))));
    }

    pub(super) fn on_list_timeout(&mut self, id: u64, _now: Instant) {
        self.fail_list(id, "no quorum answered before the deadline");
    }
}

impl ListRound {
    fn builder_prefix(&self) -> String {
        self.builder.prefix().to_string()
    }
}
