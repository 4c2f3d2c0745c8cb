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
use crate::policy::table::{self, Policies, PolicyTable};
use crate::service::status_from;
use memo_engine::membership::MemberState;
use memo_engine::placement::PartitionConfig;
use memo_engine::{ClusterId, KvError, NodeId};
use memo_proto::admin::admin_client::AdminClient;
use memo_proto::admin::admin_server::Admin;
use memo_proto::admin::{
    ClusterInfo, DataKeyInfo, LeaveRequest, LeaveResponse, LinkState, MemberInfo, MembersRequest, MembersResponse,
    Moves, NodeInfo, NodeStats, PartitionInfo, PolicyChangeResponse, PolicyDeleteRequest, PolicyInstallRequest,
    PolicyInstallResponse, PolicyListRequest, PolicyListResponse, PolicyRule, PolicySetRequest, RemoveRequest,
    RemoveResponse, StatusRequest, StatusResponse,
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
    /// For the policy table's reads and swaps ([`crate::policy::table`]).
    pub kv: crate::service::KvService,
    pub policies: Arc<Policies>,
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
        read_hedges: stats.read_hedges,
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

impl AdminService {
    /// Changes the policy table in the cluster, applies it here, and pushes it to every
    /// other member (docs in [`crate::policy::table`]).
    async fn change_policy(
        &self,
        edit: impl Fn(&mut PolicyTable) -> Result<(), Status>,
    ) -> Result<PolicyChangeResponse, Status> {
        let table = table::change(&self.kv, edit).await?;
        self.policies.install(table.clone()).map_err(|e| Status::internal(e.to_string()))?;
        let unconfirmed = self.push_policy(&table).await?;
        if !unconfirmed.is_empty() {
            tracing::warn!(revision = table.revision, ?unconfirmed, "members did not confirm the policy table");
        }
        Ok(PolicyChangeResponse { revision: table.revision, unconfirmed })
    }

    /// Sends `table` to every other member at once; returns the names of those that did
    /// not confirm it within [`table::INSTALL_TIMEOUT`] (down ones included).
    async fn push_policy(&self, table: &PolicyTable) -> Result<Vec<String>, Status> {
        let members = self.ask(Control::Members).await?.members;
        let bytes = table.encode();
        let mut unconfirmed = Vec::new();
        let mut pushes = Vec::new();
        for member in members {
            if member.id.name == self.me.name || member.state == MemberState::Left {
                continue;
            }
            let addr = (member.addr.parse().ok()).or_else(|| self.peers.get(&member.id).map(|p| p.address));
            match (member.state, addr) {
                (MemberState::Alive | MemberState::Suspect, Some(addr)) => {
                    let request = PolicyInstallRequest { table: bytes.clone() };
                    pushes.push((member.id.name, tokio::spawn(install_on(addr, request))));
                }
                _ => unconfirmed.push(member.id.name),
            }
        }
        for (name, push) in pushes {
            match push.await {
                Ok(Ok(revision)) if revision >= table.revision => {}
                Ok(Ok(revision)) => {
                    tracing::warn!(node = %name, revision, "a member applies an older policy table");
                    unconfirmed.push(name);
                }
                Ok(Err(status)) => {
                    tracing::warn!(node = %name, %status, "a member did not confirm the policy table");
                    unconfirmed.push(name);
                }
                Err(_) => unconfirmed.push(name),
            }
        }
        unconfirmed.sort();
        Ok(unconfirmed)
    }
}

/// Sends a table to the member at `addr`; its answer is the revision it applies.
async fn install_on(addr: SocketAddr, request: PolicyInstallRequest) -> Result<u64, Status> {
    let call = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(table::INSTALL_TIMEOUT);
        let channel = endpoint.connect().await.map_err(|e| Status::unavailable(crate::peer::error_chain(&e)))?;
        let answer = AdminClient::new(channel).policy_install(request).await?;
        Ok(answer.into_inner().revision)
    };
    match tokio::time::timeout(table::INSTALL_TIMEOUT, call).await {
        Ok(answer) => answer,
        Err(_) => Err(Status::unavailable("no answer in time")),
    }
}

fn rules_of(table: &PolicyTable) -> Vec<PolicyRule> {
    (table.rules.iter())
        .map(|(prefix, rule)| PolicyRule {
            prefix: prefix.clone(),
            compression: rule.compression.to_string(),
            encryption: rule.encrypt,
            versions: u64::from(rule.versions),
        })
        .collect()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn policy_list(
        &self,
        _: tonic::Request<PolicyListRequest>,
    ) -> Result<tonic::Response<PolicyListResponse>, Status> {
        let (_, table) = table::read(&self.kv).await?;
        // What the cluster holds is at least as new as any push: apply it if this node
        // missed one.
        let node_revision = self
            .policies
            .install(table.clone())
            .map_err(|e| Status::failed_precondition(format!("this node cannot apply the table: {e}")))?;
        let keys = (table.keys.iter())
            .map(|(name, fingerprint)| DataKeyInfo { name: name.clone(), fingerprint: fingerprint.to_string() })
            .collect();
        Ok(tonic::Response::new(PolicyListResponse {
            revision: table.revision,
            rules: rules_of(&table),
            node_revision,
            keys,
        }))
    }

    async fn policy_set(
        &self,
        request: tonic::Request<PolicySetRequest>,
    ) -> Result<tonic::Response<PolicyChangeResponse>, Status> {
        let rule = request.into_inner().rule.ok_or_else(|| Status::invalid_argument("the request carries no rule"))?;
        let policy =
            table::parse_rule(&rule.compression, rule.encryption, rule.versions).map_err(Status::invalid_argument)?;
        table::validate_prefix(&rule.prefix).map_err(Status::invalid_argument)?;
        // An encrypting rule records this node's key fingerprints (E5): the keys the
        // other nodes must hold the same bytes for.
        let keys = match (policy.encrypt, self.policies.keyring()) {
            (false, _) => BTreeMap::new(),
            (true, Some(keyring)) => keyring.fingerprints(),
            (true, None) => {
                return Err(Status::failed_precondition(
                    "this node has no --encryption-key-file: set an encrypting rule through a node that has the keys",
                ));
            }
        };
        let answer = self
            .change_policy(|table| {
                table.check_keys(&keys).map_err(Status::failed_precondition)?;
                table.keys.extend(keys.clone());
                table.set(rule.prefix.clone(), policy).map_err(Status::failed_precondition)
            })
            .await?;
        Ok(tonic::Response::new(answer))
    }

    async fn policy_delete(
        &self,
        request: tonic::Request<PolicyDeleteRequest>,
    ) -> Result<tonic::Response<PolicyChangeResponse>, Status> {
        let prefix = request.into_inner().prefix;
        let answer = self
            .change_policy(|table| match table.rules.remove(&prefix) {
                Some(_) => Ok(()),
                None => Err(Status::not_found(format!("no rule for the prefix {prefix:?}"))),
            })
            .await?;
        Ok(tonic::Response::new(answer))
    }

    async fn policy_install(
        &self,
        request: tonic::Request<PolicyInstallRequest>,
    ) -> Result<tonic::Response<PolicyInstallResponse>, Status> {
        let table = PolicyTable::decode(&request.into_inner().table).map_err(Status::invalid_argument)?;
        let revision = self.policies.install(table).map_err(|e| {
            tracing::error!(error = %e, "refused a policy table");
            Status::failed_precondition(e.to_string())
        })?;
        Ok(tonic::Response::new(PolicyInstallResponse { revision }))
    }

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
