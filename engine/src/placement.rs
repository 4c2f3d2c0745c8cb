//! Placement: where a key lives (docs/ARCHITECTURE.md, "Placement").
//!
//! A key's address is `blake3("memo/kv/" || key)`; its partition is the first 8 bytes of the
//! address, little-endian, modulo `P` (a power of two, fixed at creation). Each partition
//! has a *chosen* config `{epoch, members, hash}`; its first member is the primary, the
//! preferred coordinator. The static epoch-1 configs of a new cluster are the top `k`
//! nodes of the initial list by rendezvous hash `blake3(partition || node)`, computed
//! identically by every node without talking. Desired members only ever feed
//! Paxos-checked config proposals (the membership issue); requests are routed by the
//! chosen config.

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
#[cfg(test)]
use std::collections::BTreeMap;

/// A partition number, `0..P`.
pub type PartitionId = u32;

/// The 32-byte address of a key.
pub fn address(key: &[u8]) -> [u8; 32] {
    const PREFIX: &[u8] = b"memo/kv/";
    // Most keys are short: hash them in one call from a stack buffer, which skips the
    // incremental hasher's setup (a few hundred instructions on every message's key);
    // the bytes hashed, and so the address, are the same either way.
    const SHORT: usize = 120;
    if key.len() <= SHORT {
        let mut buf = [0u8; PREFIX.len() + SHORT];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        buf[PREFIX.len()..PREFIX.len() + key.len()].copy_from_slice(key);
        return *blake3::hash(&buf[..PREFIX.len() + key.len()]).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.update(PREFIX);
    h.update(key);
    *h.finalize().as_bytes()
}

/// The partition of a key among `partitions` (a power of two).
pub fn partition_of(key: &[u8], partitions: u32) -> PartitionId {
    let addr = address(key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&addr[..8]);
    (u64::from_le_bytes(first) % u64::from(partitions.max(1))) as PartitionId
}

/// The rendezvous score of `node` for `partition`: higher wins.
pub fn rendezvous_score(partition: PartitionId, node: &NodeId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("memo 2026 rendezvous");
    h.update(&partition.to_le_bytes());
    h.update(&node.generation.to_le_bytes());
    h.update(node.name.as_bytes());
    *h.finalize().as_bytes()
}

/// The top `k` of `nodes` for `partition` by rendezvous hash, best first (fewer when there
/// are fewer nodes).
pub fn desired_members(partition: PartitionId, nodes: &[NodeId], k: usize) -> Vec<NodeId> {
    let mut scored: Vec<([u8; 32], &NodeId)> = nodes.iter().map(|n| (rendezvous_score(partition, n), n)).collect();
    // Ties are impossible for distinct ids short of a BLAKE3 collision; the id breaks them
    // anyway so the order is total.
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(k).map(|(_, n)| n.clone()).collect()
}

/// The `(epoch, config hash)` pair every data message carries (fencing, docs/PROTOCOL.md F1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpochRef {
    /// The config's epoch.
    pub epoch: u64,
    /// A hash of the whole config.
    pub hash: u64,
}

/// The chosen config of one partition.
///
/// A *settled* config has `next` empty: its acceptors are `members` and its quorums are
/// their majorities. A *joint* config (F2) moves the partition from `members` to `next`:
/// its acceptors are both lists (see [`PartitionConfig::acceptors`]) and its quorums hold
/// a majority of each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionConfig {
    /// The partition.
    pub partition: PartitionId,
    /// Epoch, starting at 1 for a static initial cluster.
    pub epoch: u64,
    /// The acceptors, primary first; in a joint config, the members it moves away from.
    pub members: Vec<NodeId>,
    /// In a joint config, the members it moves to; empty when settled.
    pub next: Vec<NodeId>,
    /// For every acceptor, the epoch its current spell as an acceptor of this partition
    /// began: 1 for the founders, the joint epoch that added it otherwise. A node that
    /// adopts this config wipes the partition unless the config it held is inside that
    /// spell (F5).
    pub spells: Vec<(NodeId, u64)>,
}

impl PartitionConfig {
    /// The config's `(epoch, hash)`.
    pub fn epoch_ref(&self) -> EpochRef {
        let mut h = blake3::Hasher::new_derive_key("memo 2026 partition config");
        h.update(&self.partition.to_le_bytes());
        h.update(&self.epoch.to_le_bytes());
        for m in &self.members {
            h.update(&(m.name.len() as u64).to_le_bytes());
            h.update(m.name.as_bytes());
            h.update(&m.generation.to_le_bytes());
        }
        h.update(b"next");
        for m in &self.next {
            h.update(&(m.name.len() as u64).to_le_bytes());
            h.update(m.name.as_bytes());
            h.update(&m.generation.to_le_bytes());
        }
        h.update(b"spells");
        for (m, since) in &self.spells {
            h.update(&(m.name.len() as u64).to_le_bytes());
            h.update(m.name.as_bytes());
            h.update(&m.generation.to_le_bytes());
            h.update(&since.to_le_bytes());
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.finalize().as_bytes()[..8]);
        EpochRef { epoch: self.epoch, hash: u64::from_le_bytes(first) }
    }

    /// The preferred coordinator.
    pub fn primary(&self) -> &NodeId {
        // A config always has at least one member: `PartitionMap` builds them from a
        // non-empty node list and rejects empty ones from the network.
        &self.members[0]
    }

    /// A settled config whose members all began their spell at epoch 1 (a founding
    /// config).
    pub fn founding(partition: PartitionId, members: Vec<NodeId>) -> Self {
        let spells = members.iter().map(|m| (m.clone(), 1)).collect();
        PartitionConfig { partition, epoch: 1, members, next: Vec::new(), spells }
    }

    /// The joint config that moves this settled config to `next` (F2); nodes of `next`
    /// that are not members begin their spell at the joint epoch.
    pub fn joint_to(&self, next: Vec<NodeId>) -> PartitionConfig {
        let epoch = self.epoch + 1;
        let mut spells = self.spells.clone();
        spells.extend(next.iter().filter(|n| !self.members.contains(n)).map(|n| (n.clone(), epoch)));
        PartitionConfig { partition: self.partition, epoch, members: self.members.clone(), next, spells }
    }

    /// The settled config that ends this joint config with `members` (its `next` to finish,
    /// its `members` to abort), keeping each member's spell.
    pub fn settle_to(&self, members: Vec<NodeId>) -> PartitionConfig {
        let spells = self.spells.iter().filter(|(n, _)| members.contains(n)).cloned().collect();
        PartitionConfig { partition: self.partition, epoch: self.epoch + 1, members, next: Vec::new(), spells }
    }

    /// The epoch at which `node`'s current spell as an acceptor began.
    pub fn since(&self, node: &NodeId) -> Option<u64> {
        self.spells.iter().find(|(n, _)| n == node).map(|(_, s)| *s)
    }

    /// Whether the config is joint (moving from `members` to `next`).
    pub fn is_joint(&self) -> bool {
        !self.next.is_empty()
    }

    /// Every acceptor, each once: `members`, then the members of `next` not among them.
    /// Quorum sets and [`crate::quorum::MemberSet`]s index this list.
    pub fn acceptors(&self) -> Vec<NodeId> {
        let mut all = self.members.clone();
        all.extend(self.next.iter().filter(|n| !self.members.contains(n)).cloned());
        all
    }

    /// The config's quorums over [`PartitionConfig::acceptors`]: majorities of `members`,
    /// or in a joint config a majority of `members` and one of `next` (F2). Every quorum
    /// decision goes through it (`crate::quorum`, rule Q3).
    pub fn quorum_set(&self) -> crate::quorum::QuorumSet {
        use crate::quorum::{MemberSet, QuorumSet};
        if !self.is_joint() {
            return QuorumSet::majority(self.members.len());
        }
        let all = self.acceptors();
        let new = MemberSet::of(all.iter().enumerate().filter(|(_, a)| self.next.contains(a)).map(|(i, _)| i));
        QuorumSet::Joint(MemberSet::first(self.members.len()), new)
    }

    /// Whether `node` is an acceptor.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.members.iter().chain(&self.next).any(|m| m == node)
    }

    /// The members this config's epoch added: in a joint config, the members of `next`
    /// that are not in `members`. They hold no state of the partition that this epoch may
    /// rely on (F5).
    pub fn added(&self) -> impl Iterator<Item = &NodeId> {
        self.next.iter().filter(|n| !self.members.contains(n))
    }

    /// Checks a config that came from the network: members present, distinct, within the
    /// replication bound.
    pub fn validate(&self, partitions: u32) -> Result<(), String> {
        if self.partition >= partitions {
            return Err(format!("partition {} of {partitions}", self.partition));
        }
        let max = crate::config::REPLICATION_MAX as usize;
        if self.members.is_empty() || self.members.len() > max || self.next.len() > max {
            return Err("a config needs 1 to 64 members".into());
        }
        let all = self.acceptors();
        if all.len() > max {
            return Err("a joint config has at most 64 acceptors".into());
        }
        for list in [&self.members, &self.next] {
            let mut sorted = list.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != list.len() {
                return Err("a member is listed twice".into());
            }
        }
        let mut spelled: Vec<&NodeId> = self.spells.iter().map(|(n, _)| n).collect();
        spelled.sort();
        spelled.dedup();
        let mut sorted: Vec<&NodeId> = all.iter().collect();
        sorted.sort();
        if spelled != sorted || self.spells.len() != all.len() {
            return Err("every acceptor needs exactly one spell".into());
        }
        if self.spells.iter().any(|(_, s)| *s == 0 || *s > self.epoch) {
            return Err("a spell begins between epoch 1 and the config's epoch".into());
        }
        Ok(())
    }
}

/// Every partition's chosen config, as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMap {
    configs: Vec<PartitionConfig>,
    /// `configs[i].epoch_ref()`, cached: every data message is checked against it.
    refs: Vec<EpochRef>,
}

impl PartitionMap {
    /// The epoch-1 map of a new static cluster. `nodes` must not be empty.
    pub fn initial(partitions: u32, replication: u32, nodes: &[NodeId]) -> Self {
        assert!(!nodes.is_empty(), "a cluster needs at least one node");
        assert!(partitions.is_power_of_two(), "P must be a power of two");
        let k = (replication.max(1) as usize).min(nodes.len());
        let configs =
            (0..partitions).map(|p| PartitionConfig::founding(p, desired_members(p, nodes, k))).collect::<Vec<_>>();
        let refs = configs.iter().map(PartitionConfig::epoch_ref).collect();
        PartitionMap { configs, refs }
    }

    /// Number of partitions `P`.
    pub fn partitions(&self) -> u32 {
        self.configs.len() as u32
    }

    /// The config of `partition`, which must be `< P`.
    pub fn config(&self, partition: PartitionId) -> &PartitionConfig {
        &self.configs[partition as usize]
    }

    /// The `(epoch, hash)` of `partition`'s config, which must be `< P`.
    pub fn epoch_ref(&self, partition: PartitionId) -> EpochRef {
        self.refs[partition as usize]
    }

    /// The config of the partition `key` lives in.
    pub fn config_of(&self, key: &[u8]) -> &PartitionConfig {
        self.config(partition_of(key, self.partitions()))
    }

    /// All configs, by partition.
    pub fn iter(&self) -> impl Iterator<Item = &PartitionConfig> {
        self.configs.iter()
    }

    /// Adopts `config` if it is newer than the one held and well formed. Returns the
    /// config it replaced, if it changed.
    pub fn adopt(&mut self, config: PartitionConfig) -> Option<PartitionConfig> {
        let partitions = self.partitions();
        let slot = self.configs.get_mut(config.partition as usize)?;
        if config.epoch <= slot.epoch || config.validate(partitions).is_err() {
            return None;
        }
        self.refs[config.partition as usize] = config.epoch_ref();
        Some(std::mem::replace(slot, config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| NodeId::initial(format!("n{i}"))).collect()
    }

    #[test]
    fn quorum_is_a_majority_of_the_members() {
        // (members, quorum, failures tolerated)
        let table = [(1, 1, 0), (2, 2, 0), (3, 2, 1), (4, 3, 1), (5, 3, 2), (6, 4, 2), (7, 4, 3)];
        for (members, quorum, tolerated) in table {
            let config = PartitionConfig::founding(0, nodes(members));
            let q = config.quorum_set();
            assert!(q.is_quorum(crate::quorum::MemberSet::first(quorum)), "{members} members");
            assert!(!q.is_quorum(crate::quorum::MemberSet::first(quorum - 1)), "{members} members");
            assert_eq!(members - quorum, tolerated, "{members} members");
        }
    }

    #[test]
    fn the_replication_factor_is_capped_by_the_cluster_size() {
        // (nodes, k, members per partition)
        let table = [(1, 3, 1), (2, 3, 2), (3, 3, 3), (5, 3, 3), (5, 5, 5), (7, 3, 3), (3, 0, 1)];
        for (n, k, expected) in table {
            let map = PartitionMap::initial(16, k, &nodes(n));
            for config in map.iter() {
                assert_eq!(config.members.len(), expected, "{n} nodes, k={k}");
                let mut distinct = config.members.clone();
                distinct.sort();
                distinct.dedup();
                assert_eq!(distinct.len(), expected, "members are distinct");
            }
        }
    }

    #[test]
    fn addresses_partitions_and_primaries_never_change() {
        // Placement is part of the on-disk and wire format: a change here moves data. These
        // values were computed once and frozen; a failure means placement drifted.
        // (key, first 8 address bytes, partition of 256, partition of 64)
        let table = [
            ("", "7eaab3dabb7e0d1d", 126, 62),
            ("k", "75630968b1007037", 117, 53),
            ("hello", "cd37a68c2ff02180", 205, 13),
            ("memo/kv", "4239716a310f7e86", 66, 2),
        ];
        for (key, prefix, p256, p64) in table {
            let hex: String = address(key.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, prefix, "address of {key:?}");
            assert_eq!(partition_of(key.as_bytes(), 256), p256, "partition of {key:?}");
            assert_eq!(partition_of(key.as_bytes(), 64), p64, "partition of {key:?}");
        }
        let map = PartitionMap::initial(4, 3, &nodes(3));
        let order = |p: u32| map.config(p).members.iter().map(|m| m.name.clone()).collect::<Vec<_>>().join(",");
        assert_eq!([order(0), order(1), order(2), order(3)], ["n1,n2,n0", "n0,n2,n1", "n1,n2,n0", "n2,n0,n1"]);
        assert_eq!(NodeId::initial("n0").tag().0, 16119235579269278490);
    }

    #[test]
    fn short_keys_hash_in_one_call_to_the_same_address() {
        for len in [0, 1, 16, 55, 56, 57, 63, 64, 119, 120, 121, 200, 1024, 4096] {
            let key: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let mut h = blake3::Hasher::new();
            h.update(b"memo/kv/");
            h.update(&key);
            assert_eq!(address(&key), *h.finalize().as_bytes(), "a key of {len} bytes");
        }
    }

    #[test]
    fn every_node_computes_the_same_epoch_one_map_from_any_list_order() {
        let mut list = nodes(5);
        let a = PartitionMap::initial(64, 3, &list);
        list.reverse();
        let b = PartitionMap::initial(64, 3, &list);
        assert_eq!(a, b);
        for p in 0..64 {
            assert_eq!(a.epoch_ref(p), a.config(p).epoch_ref());
        }
    }

    #[test]
    fn rendezvous_spreads_primaries_and_moves_little_when_a_node_joins() {
        let before = PartitionMap::initial(256, 3, &nodes(5));
        let mut primaries = BTreeMap::<NodeId, u32>::new();
        for c in before.iter() {
            *primaries.entry(c.primary().clone()).or_default() += 1;
        }
        // 256 partitions over 5 nodes: about 51 each.
        assert!(primaries.values().all(|&n| (30..=75).contains(&n)), "{primaries:?}");
        let after = PartitionMap::initial(256, 3, &nodes(6));
        let moved: usize = before
            .iter()
            .zip(after.iter())
            .map(|(a, b)| a.members.iter().filter(|m| !b.members.contains(m)).count())
            .sum();
        // A sixth node should take about k/6 of the 768 replicas, not reshuffle them.
        assert!((64..=200).contains(&moved), "{moved} replicas moved");
    }

    #[test]
    fn a_newer_config_is_adopted_and_an_older_or_empty_one_is_not() {
        let mut map = PartitionMap::initial(4, 3, &nodes(3));
        let mut newer = map.config(1).clone();
        newer.epoch = 2;
        newer.members.reverse();
        assert!(map.adopt(newer.clone()).is_some());
        let founding = |p, members| PartitionConfig { epoch: 9, ..PartitionConfig::founding(p, members) };
        assert_eq!(map.config(1), &newer);
        assert_eq!(map.epoch_ref(1), newer.epoch_ref());
        let mut older = newer.clone();
        older.epoch = 1;
        assert!(map.adopt(older).is_none());
        assert!(map.adopt(founding(2, vec![])).is_none());
        assert!(map.adopt(founding(99, nodes(1))).is_none());
        let mut twice = nodes(2);
        twice.push(twice[0].clone());
        assert!(map.adopt(founding(2, twice)).is_none());
        let mut unspelled = founding(2, nodes(2));
        unspelled.spells.pop();
        assert!(map.adopt(unspelled).is_none());
        assert!(map.adopt(founding(2, nodes(2))).is_some());
    }
}
