//! The event loop: one task owns the engine's [`Node`] and is its only driver.
//!
//! Inputs arrive on channels (client calls with a reply slot, inbound peer batches,
//! the committer's durable id, control queries) or from the timer the engine asked
//! for. After every input the loop drains the engine's outputs in the documented order
//! (`memo_engine::node`): persist batches to the committer, then envelopes to the
//! peers' outbound queues, then replies to their callers. Nothing in the loop blocks
//! on the network: outbound queues are bounded and drop when full (the protocol
//! tolerates loss). The loop only waits on the committer's queue, which is the
//! backpressure a slow disk must exert.

use crate::clock::Clock;
use crate::{Error, SharedStorage};
use memo_engine::placement::{PartitionConfig, PartitionId};
use memo_engine::storage::BatchId;
use memo_engine::{KvError, Node, NodeId, PersistBatch, Request, RequestId, Response, Stats, Transmit};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Client calls queued for the loop; a full queue answers RESOURCE_EXHAUSTED at once.
pub const CALL_QUEUE_MAX: usize = 4096;
/// Inbound peer batches queued for the loop; a full queue makes the peer server wait,
/// which slows the sender down through gRPC flow control.
pub const INBOUND_QUEUE_BATCHES_MAX: usize = 1024;
/// Control queries queued for the loop.
pub const CONTROL_QUEUE_MAX: usize = 16;
/// Partition configs copied out of the loop per [`Control::Partitions`] query, so that
/// a status query over many partitions holds the loop for a short while at a time.
pub const PARTITIONS_PER_QUERY_MAX: u32 = 1024;

/// The outcome of one client request.
pub(crate) type CallResult = Result<Response, KvError>;

/// A client request with the slot its answer goes to.
pub(crate) struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<CallResult>,
}

/// Queries about the node, answered by the loop between inputs.
pub(crate) enum Control {
    /// The engine's counters.
    Stats(oneshot::Sender<Stats>),
    /// The node's gauges and counters ([`LoopStatus`]).
    Status(oneshot::Sender<LoopStatus>),
    /// The configs of partitions `from..`, at most [`PARTITIONS_PER_QUERY_MAX`] of them
    /// (none when `from` is past the last partition).
    Partitions { from: PartitionId, reply: oneshot::Sender<Vec<PartitionConfig>> },
    /// The members and the rebalancing in progress.
    Members(oneshot::Sender<MembersAnswer>),
    /// Leave the cluster.
    Leave(LeaveReply),
    /// Remove the member with this name.
    Remove { name: String, reply: oneshot::Sender<Result<(), String>> },
}

/// Where the answer to a leave goes.
pub(crate) type LeaveReply = oneshot::Sender<Result<(), String>>;

/// The answer to [`Control::Members`].
pub(crate) struct MembersAnswer {
    pub members: Vec<memo_engine::node::MemberInfo>,
    pub moves: memo_engine::node::Moves,
    pub partitions: u32,
}

/// What the loop knows about its node, copied out for `memo status`.
#[derive(Clone, Debug)]
pub(crate) struct LoopStatus {
    pub stats: Stats,
    pub restart: u64,
    pub partitions: u32,
    pub requests_in_flight: usize,
    pub proposer_keys: usize,
    pub registers_cached: usize,
    pub register_cache_bytes: usize,
    /// The newest batch the committer reported durable.
    pub durable_batch: BatchId,
    /// The newest batch handed to the committer.
    pub submitted_batch: BatchId,
    /// Peer messages queued for the links, and their encoded bytes.
    pub peer_messages_sent: u64,
    pub peer_bytes_sent: u64,
    /// Batches the links sent (one gRPC message each).
    pub peer_batches_sent: u64,
    /// Primaries bypassed after a forward timed out, with the time left.
    pub suspected: Vec<(NodeId, Duration)>,
}

/// The loop's input channels.
pub(crate) struct Inputs {
    pub calls: mpsc::Receiver<Call>,
    pub inbound: mpsc::Receiver<Vec<Vec<u8>>>,
    pub durable: watch::Receiver<BatchId>,
    pub control: mpsc::Receiver<Control>,
    pub stop: watch::Receiver<bool>,
}

/// Each peer's outbound queue of encoded envelopes.
pub(crate) type PeerQueues = BTreeMap<NodeId, mpsc::Sender<Vec<u8>>>;

/// Where the loop's outputs go.
pub(crate) struct Outputs {
    pub commits: mpsc::Sender<PersistBatch>,
    pub peers: PeerQueues,
    /// Makes links to peers that membership introduces (joined nodes).
    pub links: crate::LinkFactory,
    /// Set once the node has left the cluster ([`Node::has_left`]).
    pub left: watch::Sender<bool>,
}

/// One input, taken by [`EventLoop::next_input`].
enum Input {
    Call(Call),
    Peer(Vec<Vec<u8>>),
    Durable(BatchId),
    Control(Control),
    Timer,
    Stop,
    CommitterGone,
}

/// The loop's state. See the module docs.
pub(crate) struct EventLoop {
    pub node: Node<SharedStorage>,
    pub clock: Arc<dyn Clock>,
    pub inputs: Inputs,
    pub outputs: Outputs,
    /// Reply slots of requests the engine has not answered yet. Bounded by the
    /// engine's `requests_in_flight_max`: beyond it the engine answers at once, and it
    /// answers every request by its deadline.
    pub waiting: BTreeMap<RequestId, oneshot::Sender<CallResult>>,
    pub next_request: u64,
    /// The newest persist batch handed to the committer.
    pub submitted_batch: BatchId,
    /// Peer messages queued for the links so far, and their encoded bytes.
    pub peer_messages_sent: u64,
    pub peer_bytes_sent: u64,
    /// Answers to accepted leaves, each sent once the batch recording the retirement is
    /// durable (`None`: that batch is not submitted yet).
    pub leaves: Vec<(Option<BatchId>, LeaveReply)>,
}

impl EventLoop {
    /// Runs until told to stop (`Ok`) or until the committer fails (`Err`).
    pub async fn run(mut self) -> Result<(), Error> {
        // The engine's first persist batch holds the bumped restart counter (R1).
        self.drain().await?;
        loop {
            match self.next_input().await {
                Input::Call(call) => self.on_call(call),
                Input::Peer(messages) => self.on_peer_batch(messages).await?,
                Input::Durable(id) => {
                    self.node.handle_persisted(id, self.clock.now());
                    self.answer_durable_leaves(id);
                }
                Input::Control(control) => self.on_control(control),
                Input::Timer => self.node.handle_timeout(self.clock.now()),
                Input::Stop => return Ok(()),
                Input::CommitterGone => return Err(Error::TaskFailed("committer")),
            }
            self.drain().await?;
        }
    }

    /// Waits for the next input. Branches are polled in random order (seeded in
    /// simulation), so no input source can starve another.
    async fn next_input(&mut self) -> Input {
        let timer = self.timer_deadline();
        let inputs = &mut self.inputs;
        tokio::select! {
            _ = inputs.stop.changed() => Input::Stop,
            changed = inputs.durable.changed() => match changed {
                Ok(()) => Input::Durable(*inputs.durable.borrow_and_update()),
                Err(_) => Input::CommitterGone,
            },
            Some(control) = inputs.control.recv() => Input::Control(control),
            Some(batch) = inputs.inbound.recv() => Input::Peer(batch),
            Some(call) = inputs.calls.recv() => Input::Call(call),
            () = sleep_until(timer), if timer.is_some() => Input::Timer,
            else => Input::Stop,
        }
    }

    /// The engine's next deadline on tokio's clock. Converting through "time left"
    /// keeps this right for any [`Clock`], skewed or not.
    fn timer_deadline(&self) -> Option<tokio::time::Instant> {
        let (at, _reason) = self.node.poll_timeout()?;
        let left = at.saturating_since(self.clock.now());
        Some(tokio::time::Instant::now() + left)
    }

    fn on_call(&mut self, call: Call) {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.waiting.insert(id, call.reply);
        self.node.handle_request(id, call.request, self.clock.now());
    }

    /// Feeds a peer batch message by message, draining after each one as the engine's
    /// contract asks. Bad bytes from the network are logged and dropped.
    async fn on_peer_batch(&mut self, messages: Vec<Vec<u8>>) -> Result<(), Error> {
        let count = messages.len();
        for (i, bytes) in messages.into_iter().enumerate() {
            if let Err(e) = self.node.handle_peer_bytes(&bytes, self.clock.now()) {
                tracing::debug!(error = %e, "dropped a peer message");
            }
            // The caller drains after the last one.
            if i + 1 < count {
                self.drain().await?;
            }
        }
        Ok(())
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Stats(reply) => {
                let _ = reply.send(self.node.stats().clone());
            }
            Control::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Control::Partitions { from, reply } => {
                let map = self.node.map();
                let end = from.saturating_add(PARTITIONS_PER_QUERY_MAX).min(map.partitions());
                let _ = reply.send((from..end).map(|p| map.config(p).clone()).collect());
            }
            Control::Members(reply) => {
                let now = self.clock.now();
                let members = self.node.members(now);
                let partitions = self.node.map().partitions();
                let _ = reply.send(MembersAnswer { members, moves: self.node.moves(), partitions });
            }
            Control::Leave(reply) => {
                let outcome = self.node.leave(self.clock.now());
                match outcome {
                    Ok(()) => {
                        tracing::info!("leaving the cluster: partitions move to the other nodes");
                        // Answered once the retirement is durable: a crash cannot undo it then.
                        self.leaves.push((None, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Control::Remove { name, reply } => {
                let now = self.clock.now();
                let id = self.node.members(now).into_iter().map(|m| m.id).find(|id| id.name == name);
                let outcome = match id {
                    Some(id) => self.node.remove(&id, now),
                    None => Err(format!("no member {name}")),
                };
                if outcome.is_ok() {
                    tracing::info!(node = %name, "removed from the cluster");
                }
                let _ = reply.send(outcome);
            }
        }
    }

    fn status(&self) -> LoopStatus {
        let now = self.clock.now();
        let (registers_cached, register_cache_bytes) = self.node.registers_cached();
        let suspected = (self.node.suspected_primaries(now))
            .map(|(node, until)| (node.clone(), until.saturating_since(now)))
            .collect();
        LoopStatus {
            stats: self.node.stats().clone(),
            restart: self.node.restart(),
            partitions: self.node.map().partitions(),
            requests_in_flight: self.node.requests_in_flight(),
            proposer_keys: self.node.proposer_keys(),
            registers_cached,
            register_cache_bytes,
            durable_batch: *self.inputs.durable.borrow(),
            submitted_batch: self.submitted_batch,
            peer_messages_sent: self.peer_messages_sent,
            peer_bytes_sent: self.peer_bytes_sent,
            peer_batches_sent: self.outputs.links.batches_sent(),
            suspected,
        }
    }

    /// Drains the engine's outputs in the documented order.
    async fn drain(&mut self) -> Result<(), Error> {
        while let Some(batch) = self.node.poll_persist() {
            let id = batch.id;
            if self.outputs.commits.send(batch).await.is_err() {
                return Err(Error::TaskFailed("committer"));
            }
            self.submitted_batch = id;
        }
        for (batch, _) in &mut self.leaves {
            batch.get_or_insert(self.submitted_batch);
        }
        while let Some(transmit) = self.node.poll_transmit() {
            self.transmit(transmit);
        }
        while let Some(reply) = self.node.poll_reply() {
            // The caller may have gone away (client cancelled); nothing to do then.
            if let Some(slot) = self.waiting.remove(&reply.id) {
                let _ = slot.send(reply.result);
            }
        }
        if !*self.outputs.left.borrow() && self.node.has_left() {
            tracing::info!("left the cluster: no partition lists this node any more");
            self.outputs.left.send_replace(true);
        }
        Ok(())
    }

    /// Answers the leaves whose retirement batch is durable by `durable`.
    fn answer_durable_leaves(&mut self, durable: BatchId) {
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.leaves).into_iter().partition(|(b, _)| b.is_some_and(|b| b <= durable));
        self.leaves = waiting;
        for (_, reply) in done {
            let _ = reply.send(Ok(()));
        }
    }

    /// Queues an envelope for its peer's link, or drops it: loss is part of the
    /// protocol's fault model, and the engine's timers retry.
    fn transmit(&mut self, transmit: Transmit) {
        if !self.outputs.peers.contains_key(transmit.to()) {
            // A node membership introduced: link to it at the address it announced.
            let addr = self.node.address_of(transmit.to()).and_then(|a| a.parse().ok());
            let Some(addr) = addr else {
                tracing::debug!(to = %transmit.to(), "no address for peer; message dropped");
                return;
            };
            let queue = self.outputs.links.spawn(transmit.to().clone(), addr);
            tracing::info!(peer = %transmit.to(), %addr, "linked to a new peer");
            self.outputs.peers.insert(transmit.to().clone(), queue);
        }
        let Some(queue) = self.outputs.peers.get(transmit.to()) else { return };
        let bytes = memo_engine::message::encode(&transmit.envelope);
        let len = bytes.len() as u64;
        if queue.try_send(bytes).is_ok() {
            self.peer_messages_sent += 1;
            self.peer_bytes_sent += len;
        } else {
            tracing::trace!(to = %transmit.to(), "peer queue full or closed; message dropped");
            crate::metrics::peer_message_dropped(&self.node.id().name, &transmit.to().name);
        }
    }
}

/// Sleeps until `deadline`; never called without one (the select guard checks).
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}
