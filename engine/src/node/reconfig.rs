//! The node's side of reconfiguration: it feeds [`crate::reconfig`]'s state machines (the
//! decree acceptor and round, the copier, the planner) with messages, timers and the
//! membership, and applies what they decide. The algorithm and its rules (F1–F6) are in
//! [`crate::reconfig`].
//!
//! - **Acceptor.** Each partition's decree instance state is persisted (`d` + partition)
//!   and every promise or accept is answered once durable (R4). While the instance of
//!   the current epoch holds an accepted proposal, data operations of that epoch are
//!   refused with `Rejection::Moving` (F1).
//! - **Adopting a config** ([`Node::adopt_config`]) persists it (`c` + partition), resets
//!   the decree instance, wipes the partition when this node's spell in the new config
//!   began after the config it held (F5), and learns the new members' tags.
//! - **Rebalancer.** Every `rebalance_interval` the node looks at the partitions it is the
//!   rebalancer of ([`plan::rebalancer`]) and starts at most `moves_max` moves: a decree
//!   round for a joint config once the desired members have differed for
//!   `rebalance_delay`, a copier for a joint config, then the decree for its final config.
//!   A node whose decree instance accepted a proposal that nobody finished finishes it.

use super::timers::{Timer, TimerHandle};
use super::{Node, persist::Write};
use crate::config::PlantedBug;
use crate::ids::{NodeId, OpId};
use crate::kv::Aborts;
use crate::message::{Message, Rejection, ScanEntries, ScanRange};
use crate::paxos::ballot::Ballot;
use crate::placement::{EpochRef, PartitionConfig, PartitionId};
use crate::reconfig::copy::{Copier, ScanStep};
use crate::reconfig::decree::{AcceptedDecree, DecreeAcceptor, DecreeRound, Step};
use crate::reconfig::plan;
use crate::storage::{self, Storage, StorageError};
use crate::time::Instant;
use std::collections::BTreeMap;

/// Counters of the moves this node ran or took part in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoveStats {
    /// Decrees this node saw chosen as their proposer.
    pub decrees_chosen: u64,
    /// Joint configs this node's decrees started.
    pub moves_started: u64,
    /// Final configs this node's decrees chose after a complete copy.
    pub moves_finished: u64,
    /// Joint configs this node's decrees aborted back to the old members.
    pub moves_aborted: u64,
    /// Keys this node's copiers copied.
    pub keys_copied: u64,
    /// Partitions this node wiped before answering as an added member (F5).
    pub partitions_wiped: u64,
    /// Partitions whose registers this node deleted once a chosen config no longer
    /// listed it (their disk space is reclaimed).
    pub partitions_released: u64,
    /// Configs this node adopted.
    pub configs_adopted: u64,
}

/// The rebalancing this node is doing, for `memo cluster members`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Partitions this node is moving now (a decree round or a copy in flight).
    pub in_flight: usize,
    /// Partitions this node rebalances whose desired members differ from their config,
    /// not moving yet (waiting for the rebalance delay or for a free slot).
    pub queued: usize,
    /// Keys copied by this node's copiers so far.
    pub keys_copied: u64,
}

/// Configs one map digest answer pushes at most (the rest follow on later ticks).
const MAP_PUSH_MAX: usize = 256;

#[derive(Default)]
pub(super) struct Reconfig {
    /// Decree instance state, by partition (absent: fresh).
    decrees: BTreeMap<PartitionId, DecreeAcceptor>,
    rounds: BTreeMap<PartitionId, Round>,
    copiers: BTreeMap<PartitionId, Copier>,
    /// Copy scans in flight → their partition.
    scans: BTreeMap<u64, PartitionId>,
    /// The live nodes, sorted; empty until the runtime reports a membership.
    live: Vec<NodeId>,
    /// Since when a partition's desired members differ from its config.
    differs_since: BTreeMap<PartitionId, Instant>,
    /// Since when this node's decree instance of a partition is fenced with no round.
    fenced_since: BTreeMap<PartitionId, Instant>,
    next_id: u64,
    round: u64,
    tick: Option<TimerHandle>,
    pub(super) stats: MoveStats,
}

struct Round {
    id: u64,
    decree: DecreeRound,
    timer: TimerHandle,
}

impl Reconfig {
    /// Whether data operations of `partition`'s current epoch are refused (F1).
    pub(super) fn fenced(&self, partition: PartitionId, epoch: u64) -> bool {
        self.decrees.get(&partition).is_some_and(|d| d.epoch == epoch && d.fenced())
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl<S: Storage> Node<S> {
    /// Loads the persisted configs and decree instances (at start).
    pub(super) fn load_reconfig(&mut self) -> Result<(), StorageError> {
        for (sk, bytes) in scan_all(&self.storage, b'c')? {
            let config: PartitionConfig = postcard::from_bytes(&bytes)
                .map_err(|e| StorageError(format!("corrupt partition config under {sk:?}: {e}")))?;
            config
                .validate(self.map.partitions())
                .map_err(|e| StorageError(format!("invalid partition config under {sk:?}: {e}")))?;
            for n in config.acceptors() {
                self.learn_node(n);
            }
            self.persist.set_epoch(config.partition, config.epoch);
            self.map.adopt(config);
        }
        for (sk, bytes) in scan_all(&self.storage, b'd')? {
            let decree: DecreeAcceptor = postcard::from_bytes(&bytes)
                .map_err(|e| StorageError(format!("corrupt decree state under {sk:?}: {e}")))?;
            let p = u32::from_be_bytes(sk[1..5].try_into().map_err(|_| StorageError("corrupt decree key".into()))?);
            if p < self.map.partitions() && decree.epoch == self.map.config(p).epoch {
                self.reconfig.decrees.insert(p, decree);
            }
        }
        Ok(())
    }

    /// The membership changed: `live` are the nodes placement may use. Partitions whose
    /// desired members differ move after the rebalance delay.
    pub fn handle_membership(&mut self, live: Vec<NodeId>, now: Instant) {
        self.set_live(live, now);
        self.drive(now);
    }

    /// The live set changed (from `handle_membership` or SWIM).
    pub(super) fn set_live(&mut self, live: Vec<NodeId>, now: Instant) {
        let mut live = live;
        live.sort();
        live.dedup();
        for n in &live {
            self.learn_node(n.clone());
        }
        self.reconfig.live = live;
        if self.reconfig.tick.is_none() {
            let at = now + self.cfg.rebalance_interval;
            self.reconfig.tick = Some(self.timers.set(at, Timer::Rebalance));
        }
    }

    /// The live set as the rebalancer sees it.
    pub fn live(&self) -> &[NodeId] {
        &self.reconfig.live
    }

    /// The rebalancing in progress on this node.
    pub fn moves(&self) -> Moves {
        let live = &self.reconfig.live;
        let mut queued = 0;
        let mut in_flight = 0;
        for config in self.map.iter() {
            let p = config.partition;
            if self.reconfig.rounds.contains_key(&p) || self.reconfig.copiers.contains_key(&p) {
                in_flight += 1;
            } else if !live.is_empty()
                && plan::rebalancer(config, live) == Some(&self.cfg.me)
                && plan::next_config(config, live, self.cfg.cluster.replication as usize).is_some()
            {
                queued += 1;
            }
        }
        Moves { in_flight, queued, keys_copied: self.reconfig.stats.keys_copied }
    }

    /// A one-line account of the moves in flight (for test failures).
    pub fn moves_debug(&self) -> String {
        let rounds: Vec<String> = self
            .reconfig
            .rounds
            .iter()
            .map(|(p, r)| format!("p{p}: decree {:?} accepting={}", r.decree.ballot, r.decree.accepting()))
            .collect();
        let copiers: Vec<String> = self
            .reconfig
            .copiers
            .iter()
            .map(|(p, c)| {
                format!(
                    "p{p}: copy scanning={} copying={} complete={} copied={}",
                    c.scanning(),
                    c.copying(),
                    c.complete(),
                    c.copied
                )
            })
            .collect();
        format!("rounds {rounds:?} copiers {copiers:?} decrees {:?}", self.reconfig.decrees)
    }

    /// Counters of reconfiguration.
    pub fn move_stats(&self) -> &MoveStats {
        &self.reconfig.stats
    }

    /// Adds a node to the table of known senders, unless its tag collides with another's.
    pub(super) fn learn_node(&mut self, node: NodeId) {
        if self.nodes.contains_key(&node) {
            return;
        }
        let tag = node.tag();
        if self.nodes.values().any(|t| *t == tag) {
            return; // 2^-64 per pair; such a node is never heard
        }
        self.nodes.insert(node, tag);
    }

    /// A config some peer holds. Adopts it if newer; if older and the peer is an acceptor
    /// of the config this node holds, sends it this node's config so it catches up.
    pub(super) fn learn_config(&mut self, from: &NodeId, config: PartitionConfig) {
        let p = config.partition;
        if p >= self.map.partitions() {
            return;
        }
        let mine = self.map.config(p);
        if config.epoch > mine.epoch {
            self.adopt_config(config);
        } else if config.epoch < mine.epoch && mine.contains(from) {
            let mine = mine.clone();
            self.send(from.clone(), Message::ConfigCommit { config: mine }, None);
        }
    }

    /// Adopts a chosen config if it is newer than the one held (F6): persists it, resets the
    /// decree instance, and wipes the partition if this node was added since the config it
    /// held (F5), or if the config no longer lists it. Returns whether it was adopted.
    ///
    /// Releasing a partition is safe once a chosen config leaves this node out: that
    /// config was reached through a joint epoch whose copy completed (F4), so no quorum of
    /// it or of any later epoch counts on this node's registers, and a message of an older
    /// epoch is refused here by its config. Should the node be added back, F5 wipes again.
    pub(super) fn adopt_config(&mut self, config: PartitionConfig) -> bool {
        let p = config.partition;
        if p >= self.map.partitions()
            || config.epoch <= self.map.config(p).epoch
            || config.validate(self.map.partitions()).is_err()
        {
            return false;
        }
        let me = self.cfg.me.clone();
        let held = self.map.config(p);
        let continuing = held.contains(&me) && config.since(&me).is_some_and(|s| s <= held.epoch);
        if config.contains(&me) && !continuing && self.cfg.planted_bug != Some(PlantedBug::NoWipeOnAdd) {
            // F5: this node's data of the partition is from before its spell; it must not
            // answer at this epoch with it.
            // The spell's first epoch becomes the partition floor: a recovering write of an
            // older epoch finds nothing here and must not conclude that it never happened,
            // since a key it wrote may have been collected before the move (R6, R8).
            let since = config.since(&me).unwrap_or(config.epoch);
            let floor = match self.persist.floor(&self.storage, p) {
                Ok(floor) => floor.max(Ballot { epoch: since, ..Ballot::ZERO }),
                Err(_) => {
                    self.stats.storage_errors += 1;
                    return false;
                }
            };
            if self.wipe_partition(p).is_err() {
                self.stats.storage_errors += 1;
                return false;
            }
            self.persist.put_floor(p, floor);
            self.reconfig.stats.partitions_wiped += 1;
        } else if held.contains(&me) && !config.contains(&me) && self.cfg.planted_bug != Some(PlantedBug::NoWipeOnAdd) {
            if self.wipe_partition(p).is_err() {
                self.stats.storage_errors += 1;
                return false;
            }
            self.reconfig.stats.partitions_released += 1;
        }
        for n in config.acceptors() {
            self.learn_node(n);
        }
        let bytes = postcard::to_stdvec(&config).expect("config encodes");
        self.persist.put_raw(storage::config_key(p), Some(bytes));
        if self.reconfig.decrees.remove(&p).is_some() {
            self.persist.put_raw(storage::decree_key(p), None);
        }
        self.reconfig.fenced_since.remove(&p);
        self.reconfig.differs_since.remove(&p);
        if self.reconfig.copiers.get(&p).is_some_and(|c| c.epoch() != config.epoch_ref()) {
            self.drop_copier(p);
        }
        if let Some(r) = self.reconfig.rounds.get(&p)
            && r.decree.base.epoch < config.epoch
        {
            let r = self.reconfig.rounds.remove(&p).expect("round exists");
            self.timers.cancel(r.timer);
        }
        self.persist.set_epoch(p, config.epoch);
        self.map.adopt(config);
        self.reconfig.stats.configs_adopted += 1;
        true
    }

    /// Deletes every register of `partition` (F5, or released), in the open batch.
    fn wipe_partition(&mut self, p: PartitionId) -> Result<(), StorageError> {
        let start = storage::register_key(p, b"");
        let end = storage::register_key(p + 1, b"");
        let mut keys = Vec::new();
        let mut from = start.clone();
        loop {
            let rows = self.storage.scan(&from, &end, 1024)?;
            let Some((last, _)) = rows.last() else { break };
            from = last.clone();
            from.push(0);
            let full = rows.len() == 1024;
            keys.extend(rows.into_iter().filter_map(|(sk, _)| String::from_utf8(sk[5..].to_vec()).ok()));
            if !full {
                break;
            }
        }
        keys.extend(self.persist.pending_keys(&start, &end));
        keys.sort();
        keys.dedup();
        for key in keys {
            self.persist.put_register(p, &key, None, Write::Reported);
        }
        Ok(())
    }

    // ----- acceptor -----

    fn decree_mut(&mut self, p: PartitionId) -> &mut DecreeAcceptor {
        let epoch = self.map.config(p).epoch;
        let d = self.reconfig.decrees.entry(p).or_insert_with(|| DecreeAcceptor::fresh(epoch));
        if d.epoch != epoch {
            *d = DecreeAcceptor::fresh(epoch);
        }
        d
    }

    fn persist_decree(&mut self, p: PartitionId) -> Option<crate::storage::BatchId> {
        let d = self.reconfig.decrees.get(&p)?;
        let bytes = postcard::to_stdvec(d).expect("decree encodes");
        Some(self.persist.put_raw(storage::decree_key(p), Some(bytes)))
    }

    pub(super) fn on_config_prepare(&mut self, from: NodeId, p: PartitionId, epoch: EpochRef, ballot: Ballot) {
        if !self.holds_config(p, epoch) {
            let result = Err(Rejection::Config(self.map.config(p).clone()));
            self.send(from, Message::ConfigPromise { partition: p, ballot, result }, None);
            return;
        }
        let result = self.decree_mut(p).prepare(ballot).map_err(Rejection::Refused);
        let gate = if result.is_ok() { self.persist_decree(p) } else { None };
        self.send(from, Message::ConfigPromise { partition: p, ballot, result }, gate);
    }

    pub(super) fn on_config_accept(
        &mut self,
        from: NodeId,
        p: PartitionId,
        epoch: EpochRef,
        ballot: Ballot,
        proposal: PartitionConfig,
        now: Instant,
    ) {
        let config = self.map.config(p);
        if !self.holds_config(p, epoch) {
            let result = Err(Rejection::Config(config.clone()));
            self.send(from, Message::ConfigAccepted { partition: p, ballot, result }, None);
            return;
        }
        if proposal.epoch != config.epoch + 1 || proposal.partition != p {
            return; // malformed: a decree decides the next epoch of its own partition
        }
        let result = self.decree_mut(p).accept(ballot, proposal).map_err(Rejection::Refused);
        // The accept and the refusal of this epoch's data operations are one batch (F1).
        let gate = if result.is_ok() { self.persist_decree(p) } else { None };
        if result.is_ok() {
            self.reconfig.fenced_since.entry(p).or_insert(now);
        }
        self.send(from, Message::ConfigAccepted { partition: p, ballot, result }, gate);
    }

    pub(super) fn on_config_commit(&mut self, config: PartitionConfig) {
        self.adopt_config(config);
    }

    /// The copier's fenced scan (F3): adopt the joint config first, then read.
    pub(super) fn on_copy_scan(
        &mut self,
        from: NodeId,
        id: u64,
        config: PartitionConfig,
        start: String,
        exclusive: bool,
        limit: u32,
    ) {
        let p = config.partition;
        let unfenced = self.cfg.planted_bug == Some(PlantedBug::CopierReadsUnfenced);
        if !unfenced {
            self.adopt_config(config.clone());
        }
        let result = if self.map.epoch_ref(p) != config.epoch_ref() && !unfenced {
            Err(Rejection::Config(self.map.config(p).clone()))
        } else {
            let range = ScanRange { start, exclusive, prefix: String::new(), limit };
            self.scan_partition(p, &range, true).and_then(|entries| {
                let aborted = self.persist.partition_aborts(&self.storage, p).map_err(|_| {
                    self.stats.storage_errors += 1;
                    Rejection::Storage
                })?;
                Ok((entries, aborted))
            })
        };
        let mut gate = None;
        if let Ok((entries, _)) = &result {
            for (k, _) in &entries.entries {
                gate = gate.max(self.persist.gate(p, k));
            }
        }
        self.send(from, Message::CopyScanReply { id, result }, gate);
    }

    // ----- map anti-entropy -----

    fn digest(&self) -> Vec<u64> {
        self.map.iter().map(|c| c.epoch).collect()
    }

    /// A peer's map digest: push the configs this node holds newer, and ask for the ones
    /// it holds older by answering with its own digest.
    pub(super) fn on_map_digest(&mut self, from: NodeId, epochs: Vec<u64>, reply: bool) {
        let mut behind = false;
        let mut pushed = 0;
        for (p, theirs) in epochs.into_iter().enumerate() {
            let mine = self.map.config(p as PartitionId);
            if mine.epoch > theirs && pushed < MAP_PUSH_MAX {
                pushed += 1;
                let config = mine.clone();
                self.send(from.clone(), Message::ConfigCommit { config }, None);
            } else if mine.epoch < theirs {
                behind = true;
            }
        }
        if behind && !reply {
            let epochs = self.digest();
            let retired = self.retired_gossip();
            self.send(from, Message::MapDigest { epochs, reply: true, retired }, None);
        }
    }

    // ----- rebalancer -----

    pub(super) fn on_rebalance_tick(&mut self, now: Instant) {
        self.reconfig.tick = Some(self.timers.set(now + self.cfg.rebalance_interval, Timer::Rebalance));
        // Announce again if alone; a down member's eviction delay may have passed.
        self.membership_tick(now);
        self.refresh_live(now);
        let live = self.reconfig.live.clone();
        if live.is_empty() {
            return;
        }
        // Gossip the map to one live peer per tick: a config whose commit was lost still
        // reaches every node (digest and pull).
        let peers: Vec<&NodeId> = live.iter().filter(|n| **n != self.cfg.me).collect();
        if !peers.is_empty() {
            let peer = peers[(rand_core::Rng::next_u64(&mut self.rng) % peers.len() as u64) as usize].clone();
            let epochs = self.digest();
            let retired = self.retired_gossip();
            self.send(peer, Message::MapDigest { epochs, reply: false, retired }, None);
        }
        let k = self.cfg.cluster.replication as usize;
        let me = self.cfg.me.clone();
        let mut busy = self.reconfig.rounds.len() + self.reconfig.copiers.len();
        for p in 0..self.map.partitions() {
            if self.reconfig.rounds.contains_key(&p) {
                continue;
            }
            let config = self.map.config(p);
            // A decree accepted here that nobody finished keeps this epoch fenced: finish it.
            let decree = self.reconfig.decrees.get(&p).filter(|d| d.epoch == config.epoch);
            if let Some((_, accepted)) = decree.and_then(|d| d.accepted.clone()) {
                let since = *self.reconfig.fenced_since.entry(p).or_insert(now);
                let first = plan::rebalancer(config, &live) == Some(&me);
                let wait = if first { self.cfg.round_timeout } else { self.cfg.round_timeout.saturating_mul(4) };
                if now.saturating_since(since) >= wait {
                    self.start_decree(p, accepted, now);
                }
                continue;
            }
            if plan::rebalancer(config, &live) != Some(&me) {
                self.reconfig.differs_since.remove(&p);
                continue;
            }
            let Some(target) = plan::next_config(config, &live, k) else {
                self.reconfig.differs_since.remove(&p);
                continue;
            };
            if config.is_joint() {
                let aborting = target.members == config.members;
                let copied = self.reconfig.copiers.get(&p).is_some_and(|c| c.complete());
                if aborting || copied || self.cfg.planted_bug == Some(PlantedBug::FinalWithoutCopy) {
                    self.drop_copier(p);
                    self.start_decree(p, target, now);
                } else if !self.reconfig.copiers.contains_key(&p) {
                    if busy >= self.cfg.moves_max {
                        continue;
                    }
                    busy += 1;
                    self.start_copier(p, now);
                } else if self.reconfig.copiers.get(&p).is_some_and(|c| !c.scanning() && !c.copying()) {
                    self.next_copy_page(p, now); // a scan or merge that timed out
                }
                continue;
            }
            let since = *self.reconfig.differs_since.entry(p).or_insert(now);
            if now.saturating_since(since) < self.cfg.rebalance_delay || busy >= self.cfg.moves_max {
                continue;
            }
            busy += 1;
            self.start_decree(p, target, now);
        }
    }

    fn start_decree(&mut self, p: PartitionId, want: PartitionConfig, now: Instant) {
        let base = self.map.config(p).clone();
        if want.epoch != base.epoch + 1 {
            return;
        }
        self.reconfig.round += 1;
        let ballot = Ballot { epoch: base.epoch, round: self.reconfig.round, node: self.me_tag, restart: self.restart };
        let decree = DecreeRound::new(base, ballot, want);
        let id = self.reconfig.next_id();
        let timer = self.timers.set(now + self.cfg.round_timeout, Timer::Decree { partition: p, round: id });
        let acceptors = decree.acceptors().to_vec();
        let epoch = self.map.epoch_ref(p);
        self.reconfig.rounds.insert(p, Round { id, decree, timer });
        self.send_all(&acceptors, Message::ConfigPrepare { partition: p, epoch, ballot });
    }

    pub(super) fn on_decree_timeout(&mut self, p: PartitionId, round: u64) {
        if self.reconfig.rounds.get(&p).is_some_and(|r| r.id == round) {
            self.reconfig.rounds.remove(&p);
        }
    }

    pub(super) fn on_config_promise(
        &mut self,
        from: NodeId,
        p: PartitionId,
        ballot: Ballot,
        result: Result<Option<AcceptedDecree>, Rejection>,
        now: Instant,
    ) {
        let Some(r) = self.reconfig.rounds.get_mut(&p).filter(|r| r.decree.ballot == ballot) else { return };
        let step = match result {
            Ok(accepted) => r.decree.on_promise(&from, Ok(accepted)),
            Err(rejection) => {
                let step = r.decree.on_promise(&from, Err(()));
                self.note_rejection(&from, rejection);
                step
            }
        };
        self.decree_step(p, step, now);
    }

    pub(super) fn on_config_accepted(
        &mut self,
        from: NodeId,
        p: PartitionId,
        ballot: Ballot,
        result: Result<(), Rejection>,
        now: Instant,
    ) {
        let Some(r) = self.reconfig.rounds.get_mut(&p).filter(|r| r.decree.ballot == ballot) else { return };
        let step = r.decree.on_accepted(&from, result.is_ok());
        if let Err(rejection) = result {
            self.note_rejection(&from, rejection);
        }
        self.decree_step(p, step, now);
    }

    fn note_rejection(&mut self, from: &NodeId, rejection: Rejection) {
        match rejection {
            Rejection::Refused(crate::paxos::acceptor::Refusal::Promised(b)) => {
                self.reconfig.round = self.reconfig.round.max(b.round);
            }
            Rejection::Config(c) => self.learn_config(from, c),
            _ => {}
        }
    }

    fn decree_step(&mut self, p: PartitionId, step: Step, now: Instant) {
        match step {
            Step::Wait => {}
            Step::Accept(proposal) => {
                let Some(r) = self.reconfig.rounds.get(&p) else { return };
                let acceptors = r.decree.acceptors().to_vec();
                let msg = Message::ConfigAccept {
                    partition: p,
                    epoch: r.decree.base.epoch_ref(),
                    ballot: r.decree.ballot,
                    proposal,
                };
                self.send_all(&acceptors, msg);
            }
            Step::Lost => {
                if let Some(r) = self.reconfig.rounds.remove(&p) {
                    self.timers.cancel(r.timer);
                }
            }
            Step::Chosen(chosen) => {
                let Some(r) = self.reconfig.rounds.remove(&p) else { return };
                self.timers.cancel(r.timer);
                let stats = &mut self.reconfig.stats;
                stats.decrees_chosen += 1;
                let base = &r.decree.base;
                if chosen.is_joint() {
                    stats.moves_started += 1;
                } else if base.is_joint() && chosen.members == base.next {
                    stats.moves_finished += 1;
                } else if base.is_joint() {
                    stats.moves_aborted += 1;
                }
                let mut to = base.acceptors();
                to.extend(chosen.acceptors().into_iter().filter(|a| !base.contains(a)));
                to.retain(|n| *n != self.cfg.me);
                self.adopt_config(chosen.clone());
                self.send_all(&to, Message::ConfigCommit { config: chosen.clone() });
                let live = &self.reconfig.live;
                if chosen.is_joint() && plan::rebalancer(&chosen, live) == Some(&self.cfg.me) {
                    self.start_copier(p, now);
                }
            }
        }
    }

    // ----- copier -----

    fn start_copier(&mut self, p: PartitionId, now: Instant) {
        let joint = self.map.config(p).clone();
        if !joint.is_joint() {
            return;
        }
        self.reconfig.copiers.insert(p, Copier::new(joint));
        self.next_copy_page(p, now);
    }

    fn drop_copier(&mut self, p: PartitionId) {
        if let Some(c) = self.reconfig.copiers.remove(&p)
            && let Some(id) = c.page_id()
        {
            self.reconfig.scans.remove(&id);
        }
    }

    /// The copier's next step: scan the next page, or merge the watermarks once every key
    /// is copied (unless that step is in flight).
    fn next_copy_page(&mut self, p: PartitionId, now: Instant) {
        let id = self.reconfig.next_id();
        let limit = self.cfg.copy_page_keys;
        let Some(copier) = self.reconfig.copiers.get_mut(&p) else { return };
        if copier.keys_done() {
            if copier.merge_id().is_none() {
                let (to, aborted) = copier.start_merge(id);
                let epoch = copier.epoch();
                self.reconfig.scans.insert(id, p);
                self.timers.set(now + self.cfg.round_timeout, Timer::CopyScan { id });
                self.send_all(&to, Message::CopyAborts { id, partition: p, epoch, aborted });
            }
            return;
        }
        if copier.complete() || copier.scanning() || copier.copying() {
            return;
        }
        let (targets, start, exclusive) = copier.start_page(id);
        let config = copier.joint().clone();
        self.reconfig.scans.insert(id, p);
        self.timers.set(now + self.cfg.round_timeout, Timer::CopyScan { id });
        self.send_all(&targets, Message::CopyScan { id, config, start, exclusive, limit });
    }

    pub(super) fn on_copy_scan_timeout(&mut self, id: u64) {
        if let Some(p) = self.reconfig.scans.remove(&id)
            && let Some(c) = self.reconfig.copiers.get_mut(&p)
        {
            // The next tick scans the page, or merges the watermarks, again.
            c.scan_timed_out(id);
            c.merge_timed_out(id);
        }
    }

    /// The copier's watermark merge (F3, R6): merge them at the joint epoch, then ack once
    /// durable.
    pub(super) fn on_copy_aborts(
        &mut self,
        from: NodeId,
        id: u64,
        p: PartitionId,
        epoch: EpochRef,
        aborted: Vec<OpId>,
    ) {
        let mut gate = None;
        let result = self.fence_partition(p, epoch).and_then(|()| {
            let before = self.persist.partition_aborts(&self.storage, p).map_err(|_| {
                self.stats.storage_errors += 1;
                Rejection::Storage
            })?;
            let mut aborts = Aborts { ops: Vec::new(), below: before.clone() };
            for op in aborted {
                aborts.raise(op);
            }
            if aborts.below != before {
                gate = Some(self.persist.put_partition_aborts(p, aborts.below));
            }
            Ok(())
        });
        self.send(from, Message::CopyAbortsAck { id, result }, gate);
    }

    pub(super) fn on_copy_aborts_ack(&mut self, from: NodeId, id: u64, result: Result<(), Rejection>, now: Instant) {
        let Some(&p) = self.reconfig.scans.get(&id) else { return };
        match result {
            Ok(()) => {
                let Some(copier) = self.reconfig.copiers.get_mut(&p) else { return };
                if copier.on_merge_ack(&from, id) {
                    self.reconfig.scans.remove(&id);
                    self.copy_progress(p, now);
                }
            }
            Err(rejection) => self.note_rejection(&from, rejection),
        }
    }

    pub(super) fn on_copy_scan_reply(
        &mut self,
        from: NodeId,
        id: u64,
        result: Result<(ScanEntries, Vec<OpId>), Rejection>,
        now: Instant,
    ) {
        let Some(&p) = self.reconfig.scans.get(&id) else { return };
        let Some(copier) = self.reconfig.copiers.get_mut(&p) else { return };
        let step = match result {
            Ok(entries) => copier.on_scan_reply(&from, id, Ok(entries)),
            Err(rejection) => {
                let step = copier.on_scan_reply(&from, id, Err(()));
                self.note_rejection(&from, rejection);
                step
            }
        };
        match step {
            ScanStep::Wait => {}
            ScanStep::Retry => {
                self.reconfig.scans.remove(&id);
            }
            ScanStep::Copy(keys) => {
                self.reconfig.scans.remove(&id);
                if keys.is_empty() {
                    if let Some(c) = self.reconfig.copiers.get_mut(&p) {
                        c.page_copied();
                    }
                    self.copy_progress(p, now);
                    return;
                }
                for key in keys {
                    self.enqueue_copy(key, now);
                }
            }
        }
    }

    /// The identity round of `key` at `epoch` completed (`Work::Copy`).
    pub(super) fn copy_key_done(&mut self, key: &str, epoch: EpochRef, now: Instant) {
        let p = crate::placement::partition_of(key.as_bytes(), self.map.partitions());
        let Some(copier) = self.reconfig.copiers.get_mut(&p) else { return };
        if copier.epoch() != epoch {
            return; // a copy under another epoch does not count for this one
        }
        let before = copier.copied;
        let page_done = copier.key_copied(key);
        self.reconfig.stats.keys_copied += copier.copied - before;
        if page_done {
            self.copy_progress(p, now);
        }
    }

    /// A page is copied: scan the next one, or finish the move (F4).
    fn copy_progress(&mut self, p: PartitionId, now: Instant) {
        let Some(copier) = self.reconfig.copiers.get(&p) else { return };
        if !copier.complete() {
            self.next_copy_page(p, now);
            return;
        }
        let config = self.map.config(p).clone();
        if config.epoch_ref() != copier.epoch() || self.reconfig.rounds.contains_key(&p) {
            return;
        }
        if let Some(target) = plan::next_config(&config, &self.reconfig.live, self.cfg.cluster.replication as usize) {
            self.start_decree(p, target, now);
        }
    }
}

/// Every silo entry whose key starts with the byte `prefix`.
fn scan_all(silo: &impl Storage, prefix: u8) -> Result<crate::storage::Entries, StorageError> {
    scan_prefix(silo, &[prefix])
}

/// Every silo entry whose key starts with `prefix` (which must not end in 0xff).
pub(super) fn scan_prefix(silo: &impl Storage, prefix: &[u8]) -> Result<crate::storage::Entries, StorageError> {
    let mut out = Vec::new();
    let mut from = prefix.to_vec();
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    loop {
        let rows = silo.scan(&from, &end, 1024)?;
        let full = rows.len() == 1024;
        let Some((last, _)) = rows.last() else { break };
        from = last.clone();
        from.push(0);
        out.extend(rows);
        if !full {
            break;
        }
    }
    Ok(out)
}
