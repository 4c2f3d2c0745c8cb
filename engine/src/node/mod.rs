//! The node: one per process, both coordinator and acceptor for every key it holds.
//!
//! # Driving a node
//!
//! A [`Node`] owns no runtime, clock or randomness source. Methods fall in four groups,
//! in the spirit of `quinn-proto`'s `Connection`:
//!
//! - **Inputs**, each taking `now`: [`Node::handle_request`] (a client request),
//!   [`Node::handle_envelope`] / [`Node::handle_peer_bytes`] (a peer message),
//!   [`Node::handle_timeout`] (the deadline from `poll_timeout` passed) and
//!   [`Node::handle_persisted`] (every batch up to an id is durable).
//! - **Outputs**, drained after every input in this order:
//!   1. [`Node::poll_persist`] until `None`: batches to apply atomically *in order* and make
//!      durable (group commit many batches per sync), then report with `handle_persisted`.
//!   2. [`Node::poll_transmit`] until `None`: envelopes to send.
//!   3. [`Node::poll_reply`] until `None`: answers to client requests.
//!   4. [`Node::poll_timeout`]: when to call `handle_timeout` next.
//! - **Getters**: [`Node::id`], [`Node::map`], [`Node::stats`] and a few gauges
//!   ([`Node::requests_in_flight`], [`Node::registers_cached`], [`Node::suspected_primaries`]).
//!
//! **Durability before speech (R4).** Every message or reply that reports or depends on
//! acceptor state (promises, accepts, read and scan replies, the coordinator's own vote)
//! is held inside the node until every batch that changed that key is durable; it comes
//! out of `poll_transmit` only after the matching `handle_persisted`. Nothing at all is
//! sent before the batch holding the bumped restart counter (R1) is durable.
//!
//! # The protocol
//!
//! Each key is a CASPaxos register (Rystsov 2018) whose acceptors are its partition's
//! members; see [`crate::paxos`]. The proposer side lives in `proposer.rs`, the
//! acceptor's message handling in `acceptor.rs`, the one-round-trip read in `read.rs` and
//! List in `list.rs`; each opens with its own essay.

mod acceptor;
mod list;
mod members;
mod persist;
mod proposer;
mod read;
mod reconfig;
mod timers;

use crate::KvError;
use crate::config::{Config, KEY_BYTES_MAX};
use crate::ids::{ClusterId, NodeId, NodeTag, OpId};
use crate::kv::{Answer, Change, Stamp, Value, Version};
use crate::list::{ListPage, ListQuery};
use crate::message::{self, Envelope, Message, PeerError};
use crate::placement::PartitionMap;
use crate::storage::{BatchId, PersistBatch, Storage};
use crate::time::Instant;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use std::collections::{BTreeMap, VecDeque};

pub use members::MemberInfo;
pub use reconfig::{MoveStats, Moves};
pub use timers::TimerReason;

/// The runtime's name for a client request, echoed in its [`Reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A client request, as the public API carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Insert, Update, Upsert, Delete or Fetch of one key.
    Kv {
        /// The key.
        key: String,
        /// What to do with it.
        change: Change,
        /// What a write asks of the key's history (versioning); ignored by reads.
        stamp: Stamp,
    },
    /// A page of keys (S3 ListObjects semantics).
    List(ListQuery),
}

impl Request {
    /// Insert `value` under `key` if absent.
    pub fn insert(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Request::Kv { key: key.into(), change: Change::Insert(Value::plain(value)), stamp: Stamp::default() }
    }
    /// Replace the value of present `key`.
    pub fn update(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Request::Kv { key: key.into(), change: Change::Update(Value::plain(value)), stamp: Stamp::default() }
    }
    /// Set `key` to `value`.
    pub fn upsert(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Request::Kv { key: key.into(), change: Change::Upsert(Value::plain(value)), stamp: Stamp::default() }
    }
    /// Delete present `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        Request::Kv { key: key.into(), change: Change::Delete, stamp: Stamp::default() }
    }
    /// Read `key`.
    pub fn fetch(key: impl Into<String>) -> Self {
        Request::Kv { key: key.into(), change: Change::Fetch, stamp: Stamp::default() }
    }
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The write took effect.
    Done,
    /// Fetch's value, as stored: the runtime decodes it ([`Value::encoding`]).
    Value(Value),
    /// List's page.
    List(ListPage),
    /// The versions a [`Change::Versions`] asked for, oldest first, values as stored.
    Versions(Vec<Version>),
}

/// The answer to one client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request.
    pub id: RequestId,
    /// Its outcome.
    pub result: Result<Response, KvError>,
}

/// An envelope to deliver to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// What to send, to [`Transmit::to`]; encode with [`crate::message::encode`].
    pub envelope: Envelope,
}

impl Transmit {
    /// The receiver (the envelope's).
    pub fn to(&self) -> &NodeId {
        &self.envelope.to
    }
}

/// Counters for observability and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Writes chosen on the fast path (one round trip).
    pub fast_rounds: u64,
    /// Rounds that ran phase 1.
    pub full_rounds: u64,
    /// Reads answered in one round trip.
    pub fast_reads: u64,
    /// Reads that fell back to an identity round.
    pub read_fallbacks: u64,
    /// Reads whose first members did not make a quorum within `read_hedge`, so that the
    /// others were asked too.
    pub read_hedges: u64,
    /// Attempts that failed (conflict, timeout) and were retried or recovered.
    pub retries: u64,
    /// Requests forwarded to a primary.
    pub forwards: u64,
    /// Forwards whose primary did not answer in time.
    pub forward_timeouts: u64,
    /// Tombstones garbage-collected (Drop sent).
    pub gc_rounds: u64,
    /// Keys this acceptor dropped.
    pub keys_dropped: u64,
    /// Peer messages refused before the protocol (malformed, wrong cluster, …).
    pub peer_errors: u64,
    /// Messages not queued because the transmit queue was full.
    pub transmit_dropped: u64,
    /// Storage reads that failed.
    pub storage_errors: u64,
    /// Writes refused because the state marks them aborted: an earlier recovery answered
    /// UNAVAILABLE for them (R6), typically a late Forward or a stale retry.
    pub aborted_refused: u64,
    /// Writes answered by their request deadline while in doubt, then aborted by a later
    /// recovery so that they cannot land long after their answer (R6).
    pub fenced_after_answer: u64,
}

/// Where an in-flight request came from.
#[derive(Clone, Debug)]
enum Origin {
    /// A client of this node.
    Client(RequestId),
    /// A node that forwarded it here.
    Peer { from: NodeId, id: u64 },
    /// A List on this node that needs this key resolved by an identity round.
    List { list: u64 },
}

/// A request in flight on this node.
#[derive(Debug)]
struct Pending {
    origin: Origin,
    /// The request's deadline timer.
    deadline: timers::TimerHandle,
    /// While forwarded: the primary, and what to recover if it does not answer.
    forwarded: Option<Forwarded>,
}

#[derive(Debug)]
struct Forwarded {
    to: NodeId,
    key: String,
    change: Change,
    op: OpId,
    stamp: Stamp,
    timer: timers::TimerHandle,
}

/// Internal request handle.
type ReqKey = u64;

/// memo's node state machine. See the module docs for the driving contract.
pub struct Node<S: Storage> {
    cfg: Config,
    me_tag: NodeTag,
    cluster: ClusterId,
    restart: u64,
    map: PartitionMap,
    nodes: BTreeMap<NodeId, NodeTag>,
    storage: S,
    rng: ChaCha8Rng,
    persist: persist::Persist,
    timers: timers::Timers,
    /// Messages to self, handled before the input returns.
    inbox: VecDeque<Message>,
    transmits: VecDeque<Transmit>,
    replies: VecDeque<Reply>,
    requests: BTreeMap<ReqKey, Pending>,
    next_req: ReqKey,
    next_op_seq: u64,
    proposer: proposer::Proposer,
    reads: read::Reads,
    lists: list::Lists,
    forwards: acceptor::ForwardWindows,
    /// Primaries that did not answer a forward, until when they are bypassed.
    suspected: BTreeMap<NodeId, Instant>,
    /// Next sequence number of forwards to each primary.
    forward_seq: BTreeMap<NodeId, u64>,
    reconfig: reconfig::Reconfig,
    /// SWIM, when configured (`Config::membership`).
    membership: Option<crate::membership::Membership>,
    stats: Stats,
}

/// Why a node could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The silo could not be read.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

impl<S: Storage> Node<S> {
    /// Starts a node over `storage`. `seed` seeds its RNG (backoff jitter). The restart
    /// counter is bumped into the first persist batch; nothing is sent before it is
    /// durable (R1).
    pub fn new(cfg: Config, storage: S, seed: u64, now: Instant) -> Result<Self, StartError> {
        let params = &cfg.cluster;
        if params.initial_nodes.is_empty() {
            return Err(StartError::Config("the initial node list is empty".into()));
        }
        if !params.partitions.is_power_of_two() || params.partitions > 1 << 20 {
            return Err(StartError::Config(format!(
                "partitions must be a power of two up to 2^20, got {}",
                params.partitions
            )));
        }
        if params.replication > crate::config::REPLICATION_MAX {
            return Err(StartError::Config(format!(
                "replication factor {} is over the limit of {}",
                params.replication,
                crate::config::REPLICATION_MAX
            )));
        }
        if !params.initial_nodes.contains(&cfg.me) && !cfg.join {
            return Err(StartError::Config(format!("{} is not in the initial node list", cfg.me)));
        }
        let mut nodes = BTreeMap::new();
        for n in &params.initial_nodes {
            if nodes.values().any(|t| *t == n.tag()) {
                return Err(StartError::Config(format!("node {n} collides with another node's tag")));
            }
            nodes.insert(n.clone(), n.tag());
        }
        let map = PartitionMap::initial(params.partitions, params.replication, &params.initial_nodes);
        let mut persist = persist::Persist::default();
        let restart = persist.bump_restart(&storage, cfg.batch_writes_max, cfg.register_cache_bytes_max)?;
        nodes.entry(cfg.me.clone()).or_insert_with(|| cfg.me.tag());
        let _ = now;
        let mut node = Node {
            me_tag: cfg.me.tag(),
            cluster: params.cluster_id(),
            restart,
            map,
            nodes,
            storage,
            rng: ChaCha8Rng::seed_from_u64(seed),
            persist,
            timers: timers::Timers::default(),
            inbox: VecDeque::new(),
            transmits: VecDeque::new(),
            replies: VecDeque::new(),
            requests: BTreeMap::new(),
            next_req: life_base(restart),
            next_op_seq: 0,
            proposer: proposer::Proposer::starting_at(life_base(restart)),
            reads: read::Reads::starting_at(life_base(restart)),
            lists: list::Lists::starting_at(life_base(restart)),
            forwards: acceptor::ForwardWindows::default(),
            suspected: BTreeMap::new(),
            forward_seq: BTreeMap::new(),
            reconfig: reconfig::Reconfig::default(),
            membership: None,
            stats: Stats::default(),
            cfg,
        };
        node.load_reconfig()?;
        node.start_membership(seed, now)?;
        Ok(node)
    }

    // ----- getters -----

    /// This node.
    pub fn id(&self) -> &NodeId {
        &self.cfg.me
    }

    /// The partition map as this node knows it.
    pub fn map(&self) -> &PartitionMap {
        &self.map
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Keys for which this node holds proposer state (bounded by
    /// `Config::proposer_keys_max`).
    pub fn proposer_keys(&self) -> usize {
        self.proposer.keys()
    }

    /// Bytes of the fast-path state this node's proposer keeps (bounded by
    /// `Config::proposer_bytes_max`).
    pub fn proposer_bytes(&self) -> usize {
        self.proposer.fast_bytes()
    }

    /// Requests in flight on this node: its own clients' and those forwarded to it
    /// (bounded by `Config::requests_in_flight_max`).
    pub fn requests_in_flight(&self) -> usize {
        self.requests.len()
    }

    /// Registers in the cache, and their approximate size in bytes (kept near
    /// `Config::register_cache_bytes_max`; entries with writes not yet durable stay).
    pub fn registers_cached(&self) -> (usize, usize) {
        self.persist.cached()
    }

    /// The primaries this node bypasses at `now` because a forward to them timed out,
    /// each with the instant its suspicion ends.
    pub fn suspected_primaries(&self, now: Instant) -> impl Iterator<Item = (&NodeId, Instant)> {
        self.suspected.iter().filter(move |(_, until)| **until > now).map(|(node, until)| (node, *until))
    }

    /// The restart counter of this life (R1).
    pub fn restart(&self) -> u64 {
        self.restart
    }

    /// The silo.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The cluster this node belongs to.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    // ----- inputs -----

    /// A client request. The answer comes out of [`Node::poll_reply`].
    pub fn handle_request(&mut self, id: RequestId, request: Request, now: Instant) {
        if self.requests.len() >= self.cfg.requests_in_flight_max {
            let e = KvError::ResourceExhausted("too many requests in flight on this node".into());
            self.replies.push_back(Reply { id, result: Err(e) });
            return;
        }
        match request {
            Request::Kv { key, change, stamp } => {
                if let Err(e) = self.validate(&key, &change) {
                    self.replies.push_back(Reply { id, result: Err(e) });
                    return;
                }
                let req = self.register_request(Origin::Client(id), now);
                let op = self.mint_op();
                self.route(req, key, change, op, stamp, now);
            }
            Request::List(query) => {
                let req = self.register_request(Origin::Client(id), now);
                self.start_list(req, query, now);
            }
        }
        self.drive(now);
    }

    /// A peer message as bytes off the wire.
    pub fn handle_peer_bytes(&mut self, bytes: &[u8], now: Instant) -> Result<(), PeerError> {
        let envelope = message::decode(bytes).inspect_err(|_| self.stats.peer_errors += 1)?;
        self.handle_envelope(envelope, now)
    }

    /// A decoded peer message. Refused (with an error, never a panic) if it belongs to
    /// another cluster, another node, or is malformed.
    pub fn handle_envelope(&mut self, envelope: Envelope, now: Instant) -> Result<(), PeerError> {
        if let Err(e) = self.check_envelope(&envelope) {
            self.stats.peer_errors += 1;
            return Err(e);
        }
        // A node we hear from is alive: forward to it again.
        if !self.suspected.is_empty() {
            self.suspected.remove(&envelope.from);
        }
        self.dispatch(envelope.from, envelope.message, now);
        self.drive(now);
        Ok(())
    }

    /// Every batch with an id up to `batch` is durable.
    pub fn handle_persisted(&mut self, batch: BatchId, now: Instant) {
        let released = self.persist.persisted(batch);
        for (to, msg) in released {
            self.emit(to, msg);
        }
        self.drive(now);
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            self.on_timer(timer, now);
            self.drive(now);
        }
    }

    // ----- outputs -----

    /// The next batch to persist (drain first).
    pub fn poll_persist(&mut self) -> Option<PersistBatch> {
        self.persist.take_batch()
    }

    /// The next envelope to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next client reply.
    pub fn poll_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }

    /// When the next timer is due, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        self.timers.next()
    }

    // ----- internals shared by the sub-state machines -----

    fn validate(&self, key: &str, change: &Change) -> Result<(), KvError> {
        validate_key(key)?;
        let value_len = match change {
            Change::Insert(v) | Change::Update(v) | Change::Upsert(v) | Change::Swap { value: v, .. } => v.bytes.len(),
            Change::Delete | Change::Fetch | Change::Versions { .. } => 0,
        };
        validate_value_len(value_len, self.cfg.value_bytes_max)
    }

    fn register_request(&mut self, origin: Origin, now: Instant) -> ReqKey {
        let req = self.next_req;
        self.next_req += 1;
        let deadline = self.timers.set(now + self.cfg.request_timeout, timers::Timer::Request { req });
        self.requests.insert(req, Pending { origin, deadline, forwarded: None });
        req
    }

    fn mint_op(&mut self) -> OpId {
        self.next_op_seq += 1;
        OpId { node: self.me_tag, restart: self.restart, seq: self.next_op_seq }
    }

    /// Answers a request (if it is still waiting) and forgets it.
    fn finish(&mut self, req: ReqKey, result: Result<Answer, KvError>) {
        let Some(pending) = self.forget(req) else {
            return;
        };
        match pending.origin {
            Origin::Client(id) => {
                let result = result.and_then(answer_to_response);
                self.replies.push_back(Reply { id, result });
            }
            Origin::Peer { from, id } => {
                self.send(from, Message::ForwardReply { id, result }, None);
            }
            Origin::List { list } => self.list_key_resolved(list, req, result),
        }
    }

    fn finish_response(&mut self, req: ReqKey, result: Result<Response, KvError>) {
        let Some(pending) = self.forget(req) else {
            return;
        };
        if let Origin::Client(id) = pending.origin {
            self.replies.push_back(Reply { id, result });
        }
    }

    /// Removes a request and its timers.
    fn forget(&mut self, req: ReqKey) -> Option<Pending> {
        let pending = self.requests.remove(&req)?;
        self.timers.cancel(pending.deadline);
        if let Some(f) = &pending.forwarded {
            self.timers.cancel(f.timer);
        }
        Some(pending)
    }

    /// Sends `msg` to `to`, held until batch `gate` (and the restart batch) is durable.
    fn send(&mut self, to: NodeId, msg: Message, gate: Option<BatchId>) {
        match self.persist.hold(gate) {
            Some(batch) => self.persist.hold_until(batch, to, msg),
            None => self.emit(to, msg),
        }
    }

    /// Releases a message now.
    fn emit(&mut self, to: NodeId, msg: Message) {
        if to == self.cfg.me {
            self.inbox.push_back(msg);
            return;
        }
        if self.transmits.len() >= self.cfg.transmit_queue_max {
            // Dropping is safe: the protocol tolerates message loss; rounds time out.
            self.stats.transmit_dropped += 1;
            return;
        }
        let envelope = Envelope { cluster: self.cluster, from: self.cfg.me.clone(), to, message: msg };
        self.transmits.push_back(Transmit { envelope });
    }

    /// Sends one message to several nodes, cloning it for all but the last.
    fn send_all(&mut self, to: &[NodeId], msg: Message) {
        let Some((last, rest)) = to.split_last() else { return };
        for m in rest {
            self.send(m.clone(), msg.clone(), None);
        }
        self.send(last.clone(), msg, None);
    }

    /// Handles messages to self until none are left.
    fn drive(&mut self, now: Instant) {
        while let Some(msg) = self.inbox.pop_front() {
            let me = self.cfg.me.clone();
            self.dispatch(me, msg, now);
        }
    }

    fn dispatch(&mut self, from: NodeId, msg: Message, now: Instant) {
        match msg {
            Message::Prepare { key, epoch, ballot, attempt } => self.on_prepare(from, key, epoch, ballot, attempt),
            Message::Accept { key, epoch, ballot, attempt, accepted, next } => {
                self.on_accept(from, key, epoch, ballot, attempt, accepted, next)
            }
            Message::Commit { key, epoch, accepted } => self.on_commit(key, epoch, accepted),
            Message::Read { key, epoch, attempt, history } => self.on_read(from, key, epoch, attempt, history),
            Message::Drop { key, epoch, ballot } => self.on_drop(key, epoch, ballot),
            Message::Scan { id, partitions, range } => self.on_scan(from, id, partitions, range),
            Message::Promise { key, ballot, attempt, result } => {
                self.on_promise(from, key, ballot, attempt, result, now)
            }
            Message::Accepted { key, ballot, attempt, result } => {
                self.on_accepted(from, key, ballot, attempt, result, now)
            }
            Message::ReadReply { key, attempt, result } => self.on_read_reply(from, key, attempt, result, now),
            Message::ScanReply { id, partitions } => self.on_scan_reply(from, id, partitions, now),
            Message::Forward { id, seq, op, stamp, key, change } => {
                self.on_forward(from, id, seq, op, stamp, key, change, now)
            }
            Message::ForwardReply { id, result } => self.on_forward_reply(from, id, result),
            Message::ConfigPrepare { partition, epoch, ballot } => {
                self.on_config_prepare(from, partition, epoch, ballot)
            }
            Message::ConfigPromise { partition, ballot, result } => {
                self.on_config_promise(from, partition, ballot, result, now)
            }
            Message::ConfigAccept { partition, epoch, ballot, proposal } => {
                self.on_config_accept(from, partition, epoch, ballot, proposal, now)
            }
            Message::ConfigAccepted { partition, ballot, result } => {
                self.on_config_accepted(from, partition, ballot, result, now)
            }
            Message::ConfigCommit { config } => self.on_config_commit(config),
            Message::CopyScan { id, config, start, exclusive, limit } => {
                self.on_copy_scan(from, id, config, start, exclusive, limit)
            }
            Message::CopyScanReply { id, result } => self.on_copy_scan_reply(from, id, result, now),
            Message::MapDigest { epochs, reply, retired } => {
                self.on_map_digest(from, epochs, reply);
                self.on_retired(retired, now);
            }
            Message::CopyAborts { id, partition, epoch, aborted } => {
                self.on_copy_aborts(from, id, partition, epoch, aborted)
            }
            Message::CopyAbortsAck { id, result } => self.on_copy_aborts_ack(from, id, result, now),
            Message::Swim { data } => self.on_swim(data, now),
        }
    }

    fn check_envelope(&self, envelope: &Envelope) -> Result<(), PeerError> {
        if envelope.cluster != self.cluster {
            return Err(PeerError::WrongCluster { expected: self.cluster, got: envelope.cluster });
        }
        if envelope.to != self.cfg.me {
            return Err(PeerError::WrongReceiver(envelope.to.clone()));
        }
        let introduces = matches!(envelope.message, Message::Swim { .. }) && self.membership.is_some();
        if !self.nodes.contains_key(&envelope.from) && !introduces {
            return Err(PeerError::UnknownSender(envelope.from.clone()));
        }
        if envelope.from == self.cfg.me {
            return Err(PeerError::Invalid("a node does not send to itself over the network".into()));
        }
        self.check_message(&envelope.message)
    }

    fn check_message(&self, msg: &Message) -> Result<(), PeerError> {
        let key = match msg {
            Message::Prepare { key, .. }
            | Message::Promise { key, .. }
            | Message::Accept { key, .. }
            | Message::Accepted { key, .. }
            | Message::Commit { key, .. }
            | Message::Read { key, .. }
            | Message::ReadReply { key, .. }
            | Message::Drop { key, .. }
            | Message::Forward { key, .. } => Some(key),
            Message::Scan { partitions, range, .. } => {
                if partitions.iter().any(|(p, _)| *p >= self.map.partitions()) {
                    return Err(PeerError::Invalid("scan of an unknown partition".into()));
                }
                if range.prefix.len() > KEY_BYTES_MAX || range.start.len() > KEY_BYTES_MAX {
                    return Err(PeerError::Invalid("scan bound longer than a key".into()));
                }
                None
            }
            Message::ConfigPrepare { partition, .. }
            | Message::ConfigPromise { partition, .. }
            | Message::ConfigAccepted { partition, .. } => {
                if *partition >= self.map.partitions() {
                    return Err(PeerError::Invalid("config message for an unknown partition".into()));
                }
                None
            }
            Message::ConfigAccept { partition, proposal: config, .. } => {
                if *partition >= self.map.partitions() || config.partition != *partition {
                    return Err(PeerError::Invalid("config message for an unknown partition".into()));
                }
                config.validate(self.map.partitions()).map_err(PeerError::Invalid)?;
                None
            }
            Message::ConfigCommit { config } => {
                config.validate(self.map.partitions()).map_err(PeerError::Invalid)?;
                None
            }
            Message::CopyScan { config, start, .. } => {
                config.validate(self.map.partitions()).map_err(PeerError::Invalid)?;
                if !config.is_joint() {
                    return Err(PeerError::Invalid("a copy scan names a joint config".into()));
                }
                if start.len() > KEY_BYTES_MAX {
                    return Err(PeerError::Invalid("scan bound longer than a key".into()));
                }
                None
            }
            Message::CopyAborts { partition, aborted, .. } => {
                if *partition >= self.map.partitions() || aborted.len() > 4096 {
                    return Err(PeerError::Invalid("abort watermarks of an unknown partition, or too many".into()));
                }
                None
            }
            Message::Swim { data } => {
                if data.len() > crate::membership::SWIM_BYTES_MAX {
                    return Err(PeerError::TooLarge(data.len()));
                }
                None
            }
            Message::MapDigest { epochs, retired, .. } => {
                if retired.len() > RETIRED_GOSSIP_MAX {
                    return Err(PeerError::Invalid("too many retired members in a digest".into()));
                }
                if epochs.len() != self.map.partitions() as usize {
                    return Err(PeerError::Invalid("a map digest has one epoch per partition".into()));
                }
                None
            }
            Message::ScanReply { .. }
            | Message::ForwardReply { .. }
            | Message::CopyScanReply { .. }
            | Message::CopyAbortsAck { .. } => None,
        };
        if let Some(key) = key {
            validate_key(key).map_err(|e| PeerError::Invalid(e.to_string()))?;
        }
        if let Message::Forward { change, .. } = msg {
            self.validate("k", change).map_err(|e| PeerError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    fn on_timer(&mut self, timer: timers::Timer, now: Instant) {
        use timers::Timer;
        match timer {
            Timer::Request { req } => {
                // A write still forwarded to a primary that has not answered may yet run
                // there: after answering, fence it (R6, `Queued::orphan_until`).
                let forwarded = self.requests.get_mut(&req).and_then(|p| p.forwarded.take());
                let e = KvError::Unavailable("no quorum answered before the request deadline".into());
                self.finish(req, Err(e));
                if let Some(f) = forwarded {
                    self.timers.cancel(f.timer);
                    let until = now + self.cfg.request_timeout.saturating_mul(proposer::ORPHAN_FENCE_DEADLINES);
                    let recover = Some(proposer::Recover::Forwarded);
                    let fence = proposer::Queued {
                        req,
                        change: f.change,
                        op: f.op,
                        stamp: f.stamp,
                        recover,
                        orphan_until: Some(until),
                    };
                    self.enqueue(f.key, fence, now);
                }
            }
            Timer::Forward { req } => self.on_forward_timeout(req, now),
            Timer::Attempt { key, attempt } => self.on_attempt_timeout(key, attempt, now),
            Timer::Backoff { key } => self.on_backoff(key, now),
            Timer::Read { read } => self.on_read_timeout(read, now),
            Timer::ReadHedge { read } => self.on_read_hedge(read, now),
            Timer::Gc { key } => self.on_gc_due(key, now),
            Timer::List { list } => self.on_list_timeout(list, now),
            Timer::Rebalance => self.on_rebalance_tick(now),
            Timer::Decree { partition, round } => self.on_decree_timeout(partition, round),
            Timer::CopyScan { id } => self.on_copy_scan_timeout(id),
            Timer::Swim(t) => self.on_swim_timer(*t, now),
        }
    }
}

/// Retired members one map digest carries at most.
pub(crate) const RETIRED_GOSSIP_MAX: usize = 4096;

/// The first id of this life's request, attempt, read and scan counters. Replies echo
/// these ids, and a reply sent to an earlier life of this node may arrive after a restart:
/// ids of different lives must never collide, so each life counts from its restart counter
/// times 2^40 (a trillion ids per life).
fn life_base(restart: u64) -> u64 {
    restart.wrapping_shl(40)
}

fn answer_to_response(answer: Answer) -> Result<Response, KvError> {
    match answer {
        Answer::Done => Ok(Response::Done),
        Answer::Value(v) => Ok(Response::Value(v)),
        Answer::AlreadyExists => Err(KvError::AlreadyExists),
        Answer::NotFound => Err(KvError::NotFound),
        Answer::Conflict => Err(KvError::Conflict),
        Answer::Versions(v) => Ok(Response::Versions(v)),
    }
}

/// Checks a value's length against the node's limit ([`Config::value_bytes_max`]).
pub fn validate_value_len(len: usize, max: usize) -> Result<(), KvError> {
    if len > max {
        return Err(KvError::InvalidArgument(format!("value of {len} bytes is over the limit of {max} bytes")));
    }
    Ok(())
}

/// Checks a key against the API's limits: 1 to [`KEY_BYTES_MAX`] bytes of UTF-8.
pub fn validate_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidArgument("the key is empty".into()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(KvError::InvalidArgument(format!(
            "key of {} bytes is over the limit of {KEY_BYTES_MAX} bytes",
            key.len()
        )));
    }
    Ok(())
}
