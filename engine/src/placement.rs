//! Placement: where a key lives (DESIGN §3).
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

/// A partition number, `0..P`.
pub type PartitionId = u32;

/// The 32-byte address of a key.
pub fn address(key: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"memo/kv/");
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

/// The `(epoch, config hash)` pair every data message carries (fencing, DESIGN §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpochRef {
    /// The config's epoch.
    pub epoch: u64,
    /// A hash of the whole config.
    pub hash: u64,
}

/// The chosen config of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionConfig {
    /// The partition.
    pub partition: PartitionId,
    /// Epoch, starting at 1 for a static initial cluster.
    pub epoch: u64,
    /// The acceptors, primary first.
    pub members: Vec<NodeId>,
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

    /// Smallest number of members that forms a quorum (a majority).
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.members.iter().any(|m| m == node)
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
        let configs = (0..partitions)
            .map(|p| PartitionConfig { partition: p, epoch: 1, members: desired_members(p, nodes, k) })
            .collect::<Vec<_>>();
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

    /// Adopts `config` if it is newer than the one held. Returns whether it changed.
    pub fn adopt(&mut self, config: PartitionConfig) -> bool {
        let Some(slot) = self.configs.get_mut(config.partition as usize) else {
            return false;
        };
        if config.epoch <= slot.epoch || config.members.is_empty() {
            return false;
        }
        self.refs[config.partition as usize] = config.epoch_ref();
        *slot = config;
        true
    }
}
