//! Identities: the cluster, the nodes, client operations (docs/ARCHITECTURE.md, "Placement"; R6).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies one cluster: a hash of its creation parameters (partition count, replication
/// factor, the sorted initial node list and a creation token, like etcd's
/// `--initial-cluster-token`). Checked on every peer message, so two clusters that share
/// addresses never exchange data.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub [u8; 32]);

impl ClusterId {
    /// Derives the id of a cluster created with these parameters.
    pub fn derive(partitions: u32, replication: u32, initial: &[NodeId], token: &str) -> Self {
        let mut nodes: Vec<&NodeId> = initial.iter().collect();
        nodes.sort();
        let mut h = blake3::Hasher::new_derive_key("memo 2026 cluster id");
        h.update(&partitions.to_le_bytes());
        h.update(&replication.to_le_bytes());
        h.update(&(nodes.len() as u64).to_le_bytes());
        for n in nodes {
            h.update(&(n.name.len() as u64).to_le_bytes());
            h.update(n.name.as_bytes());
            h.update(&n.generation.to_le_bytes());
        }
        h.update(token.as_bytes());
        ClusterId(*h.finalize().as_bytes())
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A node: its name plus a generation. Generation 0 is reserved for the nodes of the
/// initial list at cluster creation (so static configs can name them without talking); a
/// data dir created later gets a fresh generation, so a node that lost its disk comes back
/// as a new node, never as the old one with amnesia.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Operator-chosen name, unique in the cluster.
    pub name: String,
    /// Incarnation of the node's data dir.
    pub generation: u64,
}

impl NodeId {
    /// A node of the initial list (generation 0).
    pub fn initial(name: impl Into<String>) -> Self {
        NodeId { name: name.into(), generation: 0 }
    }

    /// The compact tag used inside ballots and op-ids: the first 8 bytes of a BLAKE3 hash of
    /// the id. Two distinct nodes share a tag with probability 2^-64 per pair; the node
    /// table refuses to hold two nodes with one tag.
    pub fn tag(&self) -> NodeTag {
        let mut h = blake3::Hasher::new_derive_key("memo 2026 node tag");
        h.update(&self.generation.to_le_bytes());
        h.update(self.name.as_bytes());
        let bytes = h.finalize();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&bytes.as_bytes()[..8]);
        NodeTag(u64::from_le_bytes(tag))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.generation)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The compact, totally ordered form of a [`NodeId`] used in ballots and op-ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeTag(pub u64);

/// Identifies one client operation across forwards and retries (R6): minted by the node
/// that first received the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId {
    /// The node that minted it.
    pub node: NodeTag,
    /// That node's restart counter when it minted it.
    pub restart: u64,
    /// A per-restart sequence number.
    pub seq: u64,
}
