//! Ballots (R1): `(epoch, round, node, restart)`, ordered lexicographically.
//!
//! The epoch comes first so that a newer config's rounds always win over an older one's
//! (a stale higher-round value loses, H6). `restart` is the proposer's persisted restart
//! counter, bumped before the node sends anything, so a restarted proposer can never
//! reissue a ballot of an earlier life even though its round counter lives in memory.

use crate::ids::NodeTag;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A Paxos ballot number.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// Config epoch the ballot belongs to.
    pub epoch: u64,
    /// The proposer's round counter.
    pub round: u64,
    /// The proposer.
    pub node: NodeTag,
    /// The proposer's restart counter.
    pub restart: u64,
}

impl Ballot {
    /// Below every real ballot: what an acceptor that never promised anything holds.
    pub const ZERO: Ballot = Ballot { epoch: 0, round: 0, node: NodeTag(0), restart: 0 };

    /// The same proposer's next ballot (the piggybacked promise of the fast path, R3).
    pub fn successor(self) -> Ballot {
        Ballot { round: self.round + 1, ..self }
    }
}

impl fmt::Debug for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}.{}.{:04x}.{}", self.epoch, self.round, self.node.0 & 0xffff, self.restart)
    }
}
