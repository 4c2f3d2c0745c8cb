//! Node configuration and the named bounds (every queue, batch and in-flight set has one).

use crate::ids::{ClusterId, NodeId};
use std::time::Duration;

/// Largest key, in bytes of UTF-8.
pub const KEY_BYTES_MAX: usize = 4096;
/// Default largest value, in bytes.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Default page size of List when `maxKeys` is 0.
pub const LIST_PAGE_DEFAULT: usize = 1000;
/// Largest replication factor (a partition's members are tracked in 64-bit sets).
pub const REPLICATION_MAX: u32 = 64;
/// Largest page size of List; larger `maxKeys` are clamped, as S3 does.
pub const LIST_PAGE_MAX: usize = 10_000;

/// A known protocol bug the node can be told to have, so tests can prove that the
/// simulator and the checkers find violations. Never set outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Reads answer from the first view that arrives, without a quorum (breaks R5).
    ReadFromOneReplica,
    /// Acceptors accept any ballot, ignoring their promise (breaks Paxos phase 2).
    AcceptIgnoresPromise,
    /// A recovery that cannot tell whether a write took effect answers that it never did
    /// and never will (memo before issue 9): the write may have taken effect and been
    /// forgotten since (breaks the promise of the answer).
    AbortClaimsNeverHappened,
    /// A recovery answers a write it cannot classify *fenced* without recording it as
    /// aborted in the chosen state, so the write can still take effect after the answer
    /// (breaks R6's fence).
    FenceWithoutMarker,
    /// The copier's scan is answered by a member that did not adopt the joint config, so
    /// it may still accept writes of the old epoch after it answered (breaks F3).
    CopierReadsUnfenced,
    /// A member added to a partition keeps the data it held from an earlier spell: it
    /// neither wipes the partition when added back nor releases it when a config leaves
    /// it out (breaks F5; the release alone would hide the missing wipe from a node that
    /// learned it was left out).
    NoWipeOnAdd,
    /// The rebalancer proposes the final config of a joint epoch without copying it
    /// (breaks F4).
    FinalWithoutCopy,
    /// Acceptors compare a message's config by its epoch number only, not its hash, so
    /// a config that leaked without being chosen passes for the chosen one (breaks F4's
    /// whole-config comparison; H9).
    ConfigCheckedByEpochOnly,
    /// A Delete on a versioned key drops the versions before it (breaks V3: they stay
    /// readable until later writes age them out).
    DeleteDropsVersions,
    /// Tombstone garbage collection removes a tombstone whose history still keeps values
    /// (breaks V4).
    GcDropsVersions,
}

/// Static parameters of a cluster, fixed at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterParams {
    /// Number of partitions `P` (a power of two).
    pub partitions: u32,
    /// Replication factor `k`; a cluster smaller than `k` uses all its nodes.
    pub replication: u32,
    /// The initial node list.
    pub initial_nodes: Vec<NodeId>,
    /// The creation token folded into the cluster id.
    pub token: String,
}

impl ClusterParams {
    /// The id of the cluster these parameters create.
    pub fn cluster_id(&self) -> ClusterId {
        ClusterId::derive(self.partitions, self.replication, &self.initial_nodes, &self.token)
    }
}

/// Everything a [`crate::Node`] needs besides storage and a seed.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub me: NodeId,
    /// The cluster.
    pub cluster: ClusterParams,
    /// Largest accepted value, in bytes.
    pub value_bytes_max: usize,
    /// How long a coordinator waits for a quorum in one phase before it retries.
    pub round_timeout: Duration,
    /// How long a one-round-trip read waits for the members it asked first (a quorum)
    /// before it asks the others too (`node/read.rs`). Liveness and latency only.
    pub read_hedge: Duration,
    /// How long a client request may take in total before it fails with UNAVAILABLE.
    pub request_timeout: Duration,
    /// How long the receiving node waits for the primary to answer a forwarded request.
    pub forward_timeout: Duration,
    /// How long a node coordinates a partition's writes itself after its primary failed
    /// to answer a forward, unless it hears from the primary sooner (any message ends the
    /// suspicion). Coordinating locally is always safe; only the fast path is lost.
    pub primary_suspicion: Duration,
    /// Upper bound of the randomized backoff after a ballot conflict.
    pub backoff_max: Duration,
    /// Delay between a chosen tombstone and its garbage collection (R8). Liveness only.
    pub gc_delay: Duration,
    /// Client requests (and forwarded requests) in flight on this node.
    pub requests_in_flight_max: usize,
    /// Requests waiting behind one key's outstanding ballot.
    pub key_queue_max: usize,
    /// Requests folded into one register change.
    pub fold_max: usize,
    /// Keys for which this node keeps proposer state, mostly a granted next ballot (the
    /// fast path). Beyond it, idle entries are evicted; an evicted key's next write takes
    /// a full round.
    pub proposer_keys_max: usize,
    /// Bytes of the proposer's fast-path state (approximate; each holds the key's last
    /// value). Beyond it, idle entries are evicted as beyond `proposer_keys_max`.
    pub proposer_bytes_max: usize,
    /// Outgoing messages queued for the runtime (all peers together).
    pub transmit_queue_max: usize,
    /// Register writes in one persist batch; a full batch is closed and a new one opened.
    pub batch_writes_max: usize,
    /// Bytes of decoded registers kept in memory (approximate). Registers with writes
    /// not yet durable are always kept; clean ones are evicted beyond this bound.
    pub register_cache_bytes_max: usize,
    /// Tombstones waiting for garbage collection.
    pub gc_pending_max: usize,
    /// Keys one List scan returns per partition and round.
    pub list_scan_keys_max: usize,
    /// This node joins an existing cluster: it may be absent from the initial node list,
    /// and learns its partitions from the cluster.
    pub join: bool,
    /// SWIM membership and failure detection (`crate::membership`). `None`: the live set
    /// comes from `Node::handle_membership`, or never, for a static cluster.
    pub membership: Option<crate::membership::MembershipConfig>,
    /// How often the node checks the partitions it rebalances.
    pub rebalance_interval: Duration,
    /// How long a partition's desired members must differ from its config before a move
    /// starts.
    pub rebalance_delay: Duration,
    /// Partitions this node moves at once.
    pub moves_max: usize,
    /// Keys one copy scan asks each old member for.
    pub copy_page_keys: u32,
    /// A protocol bug to plant, for testing the testers only. `None` in production.
    pub planted_bug: Option<PlantedBug>,
}

impl Config {
    /// A configuration with the default bounds and timeouts.
    pub fn new(me: NodeId, cluster: ClusterParams) -> Self {
        Config {
            me,
            cluster,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            round_timeout: Duration::from_millis(500),
            read_hedge: Duration::from_millis(20),
            request_timeout: Duration::from_secs(5),
            forward_timeout: Duration::from_millis(1000),
            primary_suspicion: Duration::from_secs(60),
            backoff_max: Duration::from_millis(20),
            gc_delay: Duration::from_secs(10),
            requests_in_flight_max: 100_000,
            key_queue_max: 1024,
            fold_max: 64,
            proposer_keys_max: 100_000,
            proposer_bytes_max: 32 * 1024 * 1024,
            transmit_queue_max: 1 << 20,
            batch_writes_max: 4096,
            register_cache_bytes_max: 64 * 1024 * 1024,
            gc_pending_max: 100_000,
            list_scan_keys_max: 1024,
            join: false,
            membership: None,
            rebalance_interval: Duration::from_secs(1),
            rebalance_delay: Duration::from_secs(10),
            moves_max: 4,
            copy_page_keys: 256,
            planted_bug: None,
        }
    }
}
