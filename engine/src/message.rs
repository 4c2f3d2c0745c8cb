//! Node-to-node messages. The engine defines them and their codec (postcard); the runtime
//! carries the encoded bytes inside `memo.peer.Batch`. Every data message names its
//! partition's `(epoch, config hash)` so the membership issue can fence reconfigurations
//! (docs/PROTOCOL.md, F1–F6) without changing the format.

use crate::KvError;
use crate::ids::{ClusterId, NodeId, OpId};
use crate::kv::{Answer, Change, Stamp};
use crate::paxos::acceptor::{Accepted, ReadView, Refusal};
use crate::paxos::ballot::Ballot;
use crate::placement::{EpochRef, PartitionConfig, PartitionId};
use crate::reconfig::decree::AcceptedDecree;
use serde::{Deserialize, Serialize};

/// Largest encoded envelope accepted from the network, in bytes (a value at the largest
/// configurable size plus headroom).
pub const ENVELOPE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One message between two nodes of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's cluster; a mismatch is refused.
    pub cluster: ClusterId,
    /// The sender.
    pub from: NodeId,
    /// The intended receiver (name and generation).
    pub to: NodeId,
    /// The payload.
    pub message: Message,
}

/// An acceptor's refusal of a data message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// A ballot conflict.
    Refused(Refusal),
    /// The message's `(epoch, hash)` is not the acceptor's: here is its config.
    Config(PartitionConfig),
    /// The acceptor could not read its storage.
    Storage,
    /// The acceptor accepted a decree for the next epoch (F1): the partition is moving,
    /// and it takes no more data operations of this epoch. Retry once the move settles.
    Moving,
}

/// Identifies one attempt of a proposer (R1): replies echo it and only matching replies
/// count.
pub type AttemptId = u64;

/// The payload of an [`Envelope`].
///
/// Field glossary (the same name means the same thing in every variant): `key` is the
/// register's key; `epoch` the sender's `(epoch, config hash)` of the key's partition;
/// `ballot` the proposer's ballot; `attempt` the proposer's attempt id, echoed by replies
/// (R1); `accepted` a ballot with the state proposed at it; `result` the acceptor's answer
/// or refusal; `id` the coordinator's request or scan id, echoed by the reply.
#[allow(missing_docs)] // see the glossary above
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Phase 1.
    Prepare { key: String, epoch: EpochRef, ballot: Ballot, attempt: AttemptId },
    /// Phase 1 reply.
    Promise { key: String, ballot: Ballot, attempt: AttemptId, result: Result<ReadView, Rejection> },
    /// Phase 2, with the fast path's piggybacked promise of `next` (R3).
    Accept {
        key: String,
        epoch: EpochRef,
        ballot: Ballot,
        attempt: AttemptId,
        accepted: Accepted,
        next: Option<Ballot>,
    },
    /// Phase 2 reply: `Ok(granted)` says whether `next` was promised.
    Accepted { key: String, ballot: Ballot, attempt: AttemptId, result: Result<bool, Rejection> },
    /// The state chosen at `accepted.ballot` (R7).
    Commit { key: String, epoch: EpochRef, accepted: Accepted },
    /// A linearizable read (R5); no disk write. `history`: whether the reader needs the
    /// key's versions (only a read of versions does; the view leaves them out otherwise).
    Read { key: String, epoch: EpochRef, attempt: AttemptId, history: bool },
    /// Read reply.
    ReadReply { key: String, attempt: AttemptId, result: Result<ReadView, Rejection> },
    /// Drop a garbage-collected tombstone (R8).
    Drop { key: String, epoch: EpochRef, ballot: Ballot },
    /// A client request forwarded to the partition's primary (at most one hop).
    Forward { id: u64, seq: u64, op: OpId, stamp: Stamp, key: String, change: Change },
    /// The primary's answer to a forward.
    ForwardReply { id: u64, result: Result<Answer, KvError> },
    /// One List round: raw register views of keys in the given partitions.
    Scan { id: u64, partitions: Vec<(PartitionId, EpochRef)>, range: ScanRange },
    /// Scan reply, one entry per requested partition in the same order.
    ScanReply { id: u64, partitions: Vec<ScanPart> },
    /// Phase 1 of the decree that decides the config after `epoch` (F1).
    ConfigPrepare { partition: PartitionId, epoch: EpochRef, ballot: Ballot },
    /// Its reply: what the acceptor accepted in that instance.
    ConfigPromise { partition: PartitionId, ballot: Ballot, result: Result<Option<AcceptedDecree>, Rejection> },
    /// Phase 2 of a decree.
    ConfigAccept { partition: PartitionId, epoch: EpochRef, ballot: Ballot, proposal: PartitionConfig },
    /// Its reply.
    ConfigAccepted { partition: PartitionId, ballot: Ballot, result: Result<(), Rejection> },
    /// A chosen config: adopt it if it is newer (F1, F5, F6).
    ConfigCommit { config: PartitionConfig },
    /// The copier's fenced scan (F3): adopt the joint `config`, then report the keys with
    /// any accepted state from `start` on.
    CopyScan { id: u64, config: PartitionConfig, start: String, exclusive: bool, limit: u32 },
    /// Its reply: the keys, and the partition's abort watermarks (R6) on the first page.
    CopyScanReply { id: u64, result: Result<(ScanEntries, Vec<OpId>), Rejection> },
    /// The copier's last step (F3): merge these abort watermarks of collected keys into
    /// the partition's, at the joint `epoch`.
    CopyAborts { id: u64, partition: PartitionId, epoch: EpochRef, aborted: Vec<OpId> },
    /// Its reply.
    CopyAbortsAck { id: u64, result: Result<(), Rejection> },
    /// Anti-entropy of the partition map: the sender's epoch of every partition. The
    /// receiver sends back the configs it holds newer, and its own digest (with `reply`
    /// set) if the sender holds some newer. `retired` are the members the sender knows
    /// left or were removed (`crate::membership`, M2).
    MapDigest { epochs: Vec<u64>, reply: bool, retired: Vec<crate::membership::Member> },
    /// A SWIM datagram (`crate::membership`); accepted from nodes not known yet, since
    /// that is how joining nodes introduce themselves.
    Swim { data: Vec<u8> },
}

/// Which keys a scan covers: `start <= key` (or `start < key` when `exclusive`), keys
/// beginning with `prefix`, at most `limit` per partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRange {
    /// Lower bound.
    pub start: String,
    /// Whether `start` itself is excluded.
    pub exclusive: bool,
    /// Only keys with this prefix.
    pub prefix: String,
    /// Keys per partition.
    pub limit: u32,
}

/// One partition's part of a scan reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPart {
    /// The partition.
    pub partition: PartitionId,
    /// Keys in order with their views, or the refusal.
    pub result: Result<ScanEntries, Rejection>,
}

/// Keys of one partition with their register views.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanEntries {
    /// `(key, view)` in key order, for keys that ever accepted a state.
    pub entries: Vec<(String, ReadView)>,
    /// `None` if the scan covered the whole range; `Some(k)` if it stopped early and only
    /// keys up to and including `k` are covered.
    pub complete_to: Option<String>,
}

/// Why a peer message was refused before it reached the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The bytes are not an envelope.
    #[error("malformed peer message: {0}")]
    Malformed(String),
    /// The envelope is larger than [`ENVELOPE_BYTES_MAX`].
    #[error("peer message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Another cluster's message.
    #[error("message from cluster {got:?}, this is cluster {expected:?}")]
    WrongCluster {
        /// This node's cluster.
        expected: ClusterId,
        /// The sender's.
        got: ClusterId,
    },
    /// Addressed to another node (or another generation of this name).
    #[error("message for {0}, not for this node")]
    WrongReceiver(NodeId),
    /// The sender is not a node of this cluster.
    #[error("message from unknown node {0}")]
    UnknownSender(NodeId),
    /// A field is out of range (key too long, unknown partition, …).
    #[error("invalid peer message: {0}")]
    Invalid(String),
}

/// Encodes an envelope.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail: postcard only errors on writers that
    // run out of room and on types serde cannot represent, and these types have neither.
    postcard::to_stdvec(envelope).expect("envelope encodes")
}

/// Decodes an envelope, refusing anything malformed or oversized.
pub fn decode(bytes: &[u8]) -> Result<Envelope, PeerError> {
    if bytes.len() > ENVELOPE_BYTES_MAX {
        return Err(PeerError::TooLarge(bytes.len()));
    }
    postcard::from_bytes(bytes).map_err(|e| PeerError::Malformed(e.to_string()))
}
