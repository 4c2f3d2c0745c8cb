//! The `memo.admin.Admin` operations service, behind `memo status`: the cluster as one
//! node sees it.
//!
//! Everything the engine knows is copied out of the event loop through its control
//! queue, as [`crate::NodeHandle::stats`] does: one query for the node's gauges and
//! counters, then the partition map in slices of
//! [`PARTITIONS_PER_QUERY_MAX`](crate::node::PARTITIONS_PER_QUERY_MAX) configs,
//! so that a big map never holds the loop for long. The slices are taken one loop turn
//! apart: each partition's entry is consistent, the map as a whole may mix epochs if a
//! config changes meanwhile. Link states come straight from the links' watch channels
//! ([`crate::peer::LinkStatus`]), without the loop.

use crate::node::{Control, LoopStatus};
use crate::peer::{LinkState as PeerLinkState, LinkStatus};
use crate::service::status_from;
use memo_engine::placement::PartitionConfig;
use memo_engine::{ClusterId, KvError, NodeId};
use memo_proto::admin::admin_server::Admin;
use memo_proto::admin::{
    ClusterInfo, LeaveRequest, LeaveResponse, LinkState, MemberInfo, MembersRequest, MembersResponse, Moves, NodeInfo,
    NodeStats, PartitionInfo, RemoveRequest, RemoveResponse, StatusRequest, StatusResponse,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

/// How long one Status call may take before it fails with UNAVAILABLE.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Another node as the admin service sees it: its address, the outbound link's
/// published status, and the link's queue (weak, so it does not keep the link alive).
pub(crate) struct PeerView {
    pub address: SocketAddr,
    pub link: watch::Receiver<LinkStatus>,
    pub queue: mpsc::WeakSender<Vec<u8>>,
}

/// The service: the node's identity, its links, and a handle on the loop's control queue.
#[derive(Clone)]
pub(crate) struct AdminService {
    pub control: mpsc::Sender<Control>,
    pub me: NodeId,
    /// Where the other nodes reach this one, if the peer table says.
    pub address: Option<SocketAddr>,
    pub listen: SocketAddr,
    pub cluster: ClusterId,
    pub replication: u32,
    /// The names of the cluster's founding nodes, sorted (a joining node derives the
    /// cluster id from them and its token).
    pub initial_nodes: Vec<String>,
    pub peers: Arc<BTreeMap<NodeId, PeerView>>,
}

/// Partitions a node is primary of, and holds a replica of (primaries included).
#[derive(Clone, Copy, Debug, Default)]
struct Share {
    primary: u32,
    replica: u32,
}

impl AdminService {
    /// Sends one control query and waits for its answer.
    async fn ask<T>(&self, query: impl FnOnce(oneshot::Sender<T>) -> Control) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        let gone = || status_from(KvError::Unavailable("the node is stopping".into()));
        self.control.send(query(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    async fn status(&self, request: StatusRequest) -> Result<StatusResponse, Status> {
        let status = self.ask(Control::Status).await?;
        let mut shares: BTreeMap<NodeId, Share> = BTreeMap::new();
        let mut partitions = Vec::new();
        let mut from = 0;
        while from < status.partitions {
            let configs = self.ask(|reply| Control::Partitions { from, reply }).await?;
            if configs.is_empty() {
                break;
            }
            from = from.saturating_add(configs.len() as u32);
            for config in configs {
                count(&mut shares, &config);
                if request.partitions {
                    partitions.push(partition_info(config));
                }
            }
        }
        Ok(StatusResponse {
            node: self.me.name.clone(),
            generation: self.me.generation,
            listen_address: self.listen.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            cluster: Some(self.cluster_info(status.partitions)),
            nodes: self.nodes(&shares, &status),
            partitions,
            stats: Some(node_stats(&status)),
        })
    }

    fn cluster_info(&self, partitions: u32) -> ClusterInfo {
        ClusterInfo {
            id: crate::datadir::hex(&self.cluster.0),
            partitions,
            replication: self.replication,
            initial_nodes: self.initial_nodes.clone(),
        }
    }

    async fn members(&self) -> Result<MembersResponse, Status> {
        let answer = self.ask(Control::Members).await?;
        let members = (answer.members.into_iter())
            .map(|m| MemberInfo {
                name: m.id.name,
                generation: m.id.generation,
                address: m.addr,
                state: member_state(m.state).into(),
                partitions: m.partitions,
            })
            .collect();
        let moves = Moves {
            in_flight: answer.moves.in_flight as u32,
            queued: answer.moves.queued as u32,
            keys_copied: answer.moves.keys_copied,
        };
        Ok(MembersResponse {
            node: self.me.name.clone(),
            generation: self.me.generation,
            cluster: Some(self.cluster_info(answer.partitions)),
            members,
            moves: Some(moves),
        })
    }

    /// This node, every peer, and any other node the map names, by id.
    fn nodes(&self, shares: &BTreeMap<NodeId, Share>, status: &LoopStatus) -> Vec<NodeInfo> {
        let mut ids: Vec<&NodeId> = shares.keys().chain(self.peers.keys()).chain([&self.me]).collect();
        ids.sort();
        ids.dedup();
        let suspected: BTreeMap<&NodeId, Duration> = status.suspected.iter().map(|(id, left)| (id, *left)).collect();
        (ids.into_iter())
            .map(|id| {
                let share = shares.get(id).copied().unwrap_or_default();
                let mut info = NodeInfo {
                    name: id.name.clone(),
                    generation: id.generation,
                    primary_partitions: share.primary,
                    replica_partitions: share.replica,
                    ..NodeInfo::default()
                };
                if let Some(left) = suspected.get(id) {
                    info.suspected = true;
                    info.suspected_for_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                }
                self.describe_link(id, &mut info);
                info
            })
            .collect()
    }

    /// Fills in where `id` is and how the link to it is doing.
    fn describe_link(&self, id: &NodeId, info: &mut NodeInfo) {
        if *id == self.me {
            info.address = self.address.unwrap_or(self.listen).to_string();
            info.set_link(LinkState::Self_);
            return;
        }
        let Some(peer) = self.peers.get(id) else {
            info.set_link(LinkState::NoAddress);
            return;
        };
        info.address = peer.address.to_string();
        let link = peer.link.borrow().clone();
        info.set_link(match link.state {
            PeerLinkState::Connecting => LinkState::Connecting,
            PeerLinkState::Connected => LinkState::Connected,
            PeerLinkState::Down => LinkState::Down,
        });
        info.link_error = link.error.unwrap_or_default();
        if let Some(queue) = peer.queue.upgrade() {
            info.queued_messages = (queue.max_capacity() - queue.capacity()) as u64;
        }
    }
}

fn count(shares: &mut BTreeMap<NodeId, Share>, config: &PartitionConfig) {
    for (i, member) in config.members.iter().enumerate() {
        let share = shares.entry(member.clone()).or_default();
        share.replica += 1;
        if i == 0 {
            share.primary += 1;
        }
    }
}

fn partition_info(config: PartitionConfig) -> PartitionInfo {
    PartitionInfo {
        id: config.partition,
        epoch: config.epoch,
        primary: config.members.first().map(|m| m.name.clone()).unwrap_or_default(),
        replicas: config.members.into_iter().map(|m| m.name).collect(),
    }
}

fn node_stats(status: &LoopStatus) -> NodeStats {
    let stats = &status.stats;
    NodeStats {
        restart: status.restart,
        requests_in_flight: status.requests_in_flight as u64,
        proposer_keys: status.proposer_keys as u64,
        registers_cached: status.registers_cached as u64,
        register_cache_bytes: status.register_cache_bytes as u64,
        durable_batch: status.durable_batch,
        submitted_batch: status.submitted_batch,
        fast_rounds: stats.fast_rounds,
        full_rounds: stats.full_rounds,
        fast_reads: stats.fast_reads,
        read_fallbacks: stats.read_fallbacks,
        retries: stats.retries,
        forwards: stats.forwards,
        forward_timeouts: stats.forward_timeouts,
        gc_rounds: stats.gc_rounds,
        keys_dropped: stats.keys_dropped,
        peer_errors: stats.peer_errors,
        transmit_dropped: stats.transmit_dropped,
        storage_errors: stats.storage_errors,
        peer_messages_sent: status.peer_messages_sent,
        peer_bytes_sent: status.peer_bytes_sent,
        peer_batches_sent: status.peer_batches_sent,
    }
}

/// The name `memo cluster members` shows for a member state.
pub fn member_state(state: memo_engine::membership::MemberState) -> &'static str {
    use memo_engine::membership::MemberState;
    match state {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Dead => "dead",
        MemberState::Evicted => "evicted",
        MemberState::Left => "left",
    }
}

/// A refused leave or remove, as a status: NOT_FOUND for an unknown node,
/// FAILED_PRECONDITION otherwise.
fn refused(why: String) -> Status {
    if why.starts_with("no member") { Status::not_found(why) } else { Status::failed_precondition(why) }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn members(&self, _: tonic::Request<MembersRequest>) -> Result<tonic::Response<MembersResponse>, Status> {
        match tokio::time::timeout(STATUS_TIMEOUT, AdminService::members(self)).await {
            Ok(answer) => answer.map(tonic::Response::new),
            Err(_) => Err(status_from(KvError::Unavailable("the node did not answer in time".into()))),
        }
    }

    async fn leave(&self, _: tonic::Request<LeaveRequest>) -> Result<tonic::Response<LeaveResponse>, Status> {
        let answer = self.ask(Control::Leave).await?;
        answer.map(|()| tonic::Response::new(LeaveResponse {})).map_err(refused)
    }

    async fn remove(&self, request: tonic::Request<RemoveRequest>) -> Result<tonic::Response<RemoveResponse>, Status> {
        let name = request.into_inner().node;
        if name.is_empty() {
            return Err(Status::invalid_argument("which node? the request names none"));
        }
        let answer = self.ask(|reply| Control::Remove { name, reply }).await?;
        answer.map(|()| tonic::Response::new(RemoveResponse {})).map_err(refused)
    }

    async fn status(&self, request: tonic::Request<StatusRequest>) -> Result<tonic::Response<StatusResponse>, Status> {
        let request = request.into_inner();
        match tokio::time::timeout(STATUS_TIMEOUT, AdminService::status(self, request)).await {
            Ok(answer) => answer.map(tonic::Response::new),
            Err(_) => Err(status_from(KvError::Unavailable("the node did not answer in time".into()))),
        }
    }
}
