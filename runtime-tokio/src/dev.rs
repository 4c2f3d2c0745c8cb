//! A whole cluster inside one process on loopback, over memory silos (or redb silos in
//! one data directory per node): `memo dev`, and the fixture of the end-to-end tests.

use crate::silo::RedbOptions;
use crate::{CommitMode, Error, Listener, NodeHandle, NodeOptions, PeerTransport, SharedStorage, spawn_node_on};
use memo_engine::{ClusterParams, Config, MemoryStorage, NodeId};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

/// Most nodes a dev cluster may have.
pub const DEV_NODES_MAX: usize = 64;
/// Default partition count of a dev cluster (small: fast to start, enough to spread).
pub const DEV_PARTITIONS_DEFAULT: u32 = 64;
/// redb's page cache per node of a dev cluster.
pub const DEV_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// The cluster token of every dev cluster.
pub const DEV_CLUSTER_TOKEN: &str = "memo-dev";

/// The shape of a dev cluster.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Number of nodes, named `n1`, `n2`, ….
    pub nodes: usize,
    /// Node `i` (from 0) listens on `base_port + i`; 0 picks free ports.
    pub base_port: u16,
    /// The address every node binds.
    pub host: IpAddr,
    /// Partition count (a power of two).
    pub partitions: u32,
    /// Replication factor.
    pub replication: u32,
    /// Seeds the nodes' RNGs (node `i` gets `seed + i`).
    pub seed: u64,
    /// How nodes send batches to each other.
    pub peer_transport: PeerTransport,
    /// Where the nodes keep their data: node `nI` in `DIR/nI`, on redb. `None`: memory
    /// silos, lost at exit.
    pub data_dir: Option<PathBuf>,
    /// How every node encodes the values written to it.
    pub value_policy: crate::policy::ValuePolicy,
    /// Every node's data keys (one key file for the whole dev cluster).
    pub keyring: Option<Arc<crate::policy::crypt::Keyring>>,
}

impl DevOptions {
    /// `nodes` nodes on 127.0.0.1 from `base_port`, 64 partitions, replication 3.
    pub fn new(nodes: usize, base_port: u16, seed: u64) -> Self {
        DevOptions {
            nodes,
            base_port,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            partitions: DEV_PARTITIONS_DEFAULT,
            replication: 3,
            seed,
            peer_transport: PeerTransport::default(),
            data_dir: None,
            value_policy: crate::policy::ValuePolicy::default(),
            keyring: None,
        }
    }

    fn port(&self, i: usize) -> Result<u16, Error> {
        if self.base_port == 0 {
            return Ok(0);
        }
        u16::try_from(i)
            .ok()
            .and_then(|i| self.base_port.checked_add(i))
            .ok_or_else(|| Error::Options("the node ports run past 65535".into()))
    }
}

/// A running dev cluster.
pub struct DevCluster {
    nodes: Vec<NodeHandle>,
}

impl DevCluster {
    /// The nodes, in name order.
    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    /// The nodes, mutably (to wait for one with [`NodeHandle::stopped`]).
    pub fn nodes_mut(&mut self) -> &mut [NodeHandle] {
        &mut self.nodes
    }

    /// Stops every node gracefully, all at once; returns the first error.
    pub async fn shutdown(self) -> Result<(), Error> {
        let stopping: Vec<_> = (self.nodes.into_iter()).map(|node| tokio::spawn(node.shutdown())).collect();
        let mut first_error = Ok(());
        for stop in stopping {
            let outcome = stop.await.unwrap_or(Err(Error::TaskFailed("shutdown")));
            if first_error.is_ok() {
                first_error = outcome;
            }
        }
        first_error
    }
}

/// Binds every node's port first (so port 0 works), then starts the nodes.
pub async fn spawn_dev_cluster(options: DevOptions) -> Result<DevCluster, Error> {
    if options.nodes == 0 || options.nodes > DEV_NODES_MAX {
        return Err(Error::Options(format!("a dev cluster has 1 to {DEV_NODES_MAX} nodes, not {}", options.nodes)));
    }
    let ids: Vec<NodeId> = (1..=options.nodes).map(|i| NodeId::initial(format!("n{i}"))).collect();
    let mut listeners = Vec::with_capacity(options.nodes);
    for i in 0..options.nodes {
        let addr = SocketAddr::new(options.host, options.port(i)?);
        listeners.push(Listener::bind(addr).await?);
    }
    let peers: BTreeMap<NodeId, SocketAddr> =
        (ids.iter().cloned()).zip(listeners.iter().map(Listener::local_addr)).collect();
    let params = ClusterParams {
        partitions: options.partitions,
        replication: options.replication,
        initial_nodes: ids.clone(),
        token: DEV_CLUSTER_TOKEN.into(),
    };
    let mut nodes = Vec::with_capacity(options.nodes);
    for (i, (id, listener)) in ids.into_iter().zip(listeners).enumerate() {
        let mut config = Config::new(id, params.clone());
        config.membership = Some(crate::founders_membership(&config.me, &peers, listener.local_addr()));
        let seed = options.seed.wrapping_add(i as u64);
        let mut node_options = NodeOptions::new(config, listener.local_addr(), peers.clone(), seed);
        node_options.peer_transport = options.peer_transport;
        node_options.value_policy = options.value_policy;
        node_options.keyring = options.keyring.clone();
        let storage: SharedStorage = match &options.data_dir {
            None => Arc::new(MemoryStorage::new()),
            Some(dir) => {
                // Blocking file IO, once per node at start.
                let redb = RedbOptions { cache_bytes: DEV_CACHE_BYTES, ..RedbOptions::default() };
                let name = &node_options.config.me.name;
                let (_, storage) = crate::datadir::open(&dir.join(name), name, &params, &redb)?;
                node_options.policy_file = Some(dir.join(name).join(crate::datadir::POLICY_FILE));
                node_options.commit_mode = CommitMode::Blocking;
                Arc::new(storage)
            }
        };
        nodes.push(spawn_node_on(listener, node_options, storage).await?);
    }
    Ok(DevCluster { nodes })
}
