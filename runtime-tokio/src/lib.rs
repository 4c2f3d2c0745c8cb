//! memo's production runtime: it turns the sans-IO engine ([`memo_engine::Node`]) into
//! a node that serves gRPC.
//!
//! A running node is a handful of tasks:
//! - the **event loop** (`node.rs`), the engine's only driver: client calls, peer
//!   batches, durability reports and timers in; persist batches, envelopes and replies
//!   out, drained in the engine's documented order;
//! - the **committer** ([`committer`]), which applies persist batches to the silo and
//!   group-commits them (one `sync` for everything ready); the durable silo is redb
//!   ([`silo::redb`]) in a data directory ([`datadir`]);
//! - one **outbound link** per peer ([`peer`]), batching messages onto a gRPC stream;
//! - the **gRPC server** on one port for `memo.kvs.KeyValueStore` (the public API,
//!   [`service`]), `memo.peer.Peer` and `memo.admin.Admin` (`memo status`, `admin.rs`),
//!   plus gRPC health and reflection in real builds (`health.rs`);
//! - optionally, **Prometheus metrics** on a port of their own ([`metrics`],
//!   [`install_prometheus`]).
//!
//! Everything is written against `madsim-tokio`/`madsim-tonic` under the names
//! `tokio`/`tonic`, so the same code runs in the deterministic simulator: time comes
//! from an injected [`Clock`], the engine's RNG seed from the caller, and no OS thread is
//! started in simulation.
//!
//! ```no_run
//! # async fn demo() -> Result<(), memo_node::Error> {
//! use memo_node::{DevOptions, spawn_dev_cluster};
//! let cluster = spawn_dev_cluster(DevOptions::new(3, 0, 42)).await?;
//! println!("first node at {}", cluster.nodes()[0].local_addr());
//! cluster.shutdown().await?;
//! # Ok(()) }
//! ```

mod admin;
pub mod clock;
pub mod committer;
pub mod datadir;
pub mod dev;
mod health;
pub mod metrics;
mod node;
pub mod peer;
pub mod policy;
mod server;
pub mod service;
pub mod silo;
mod stream;

pub use clock::{Clock, MonotonicClock};
pub use committer::CommitMode;
pub use datadir::DataDir;
pub use dev::{DevCluster, DevOptions, spawn_dev_cluster};
pub use metrics::install_prometheus;
pub use peer::PeerTransport;
pub use server::Listener;
pub use service::status_from;
pub use silo::{RedbOptions, RedbStorage};

use admin::{AdminService, PeerView};
use health::Health;
use memo_engine::config::KEY_BYTES_MAX;
use memo_engine::storage::StorageError;
use memo_engine::{ClusterId, Config, Node, NodeId, StartError, Stats, Storage};
use node::{Control, EventLoop, Inputs, Outputs, PeerQueues};
use peer::{BatchHeader, Link, PeerService};
use service::{Admission, KvService, REPLY_GRACE};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// The silo a node runs on, shared between the engine (reads) and the committer
/// (writes).
pub type SharedStorage = Arc<dyn Storage + Send + Sync>;

/// How long a stopping node lets in-flight client calls finish before it cuts them off.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long the gRPC server may take to close its connections once the calls are done
/// (peer streams end at once; this only bounds stragglers).
pub const SERVER_STOP_GRACE: Duration = Duration::from_secs(1);

/// Room in a client message beyond the key and the value (protobuf framing).
pub const KV_MESSAGE_HEADROOM_BYTES: usize = 64 * 1024;

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options are inconsistent (e.g. a node of the cluster has no address).
    #[error("invalid options: {0}")]
    Options(String),
    /// The engine refused to start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// The silo failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data directory cannot be used.
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    /// The node's copy of the policy table cannot be loaded.
    #[error(transparent)]
    Policy(#[from] policy::table::PolicyError),
    /// One of the node's tasks stopped unexpectedly (its error was logged).
    #[error("the node's {0} stopped unexpectedly")]
    TaskFailed(&'static str),
    /// An operations endpoint (gRPC reflection, the metrics exporter) could not be set up.
    #[error("{0}")]
    Ops(String),
}

/// Everything a node needs besides its silo.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The engine's configuration (this node, the cluster, bounds and timeouts).
    pub config: Config,
    /// Where to listen for clients and peers (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where every other node of the cluster listens. Entries for this node are ignored.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Seed of the engine's RNG (backoff jitter). Draw it from the OS in production and
    /// from the simulator's seed in simulation.
    pub seed: u64,
    /// The node's clock.
    pub clock: Arc<dyn Clock>,
    /// How batches travel to peers.
    pub peer_transport: PeerTransport,
    /// How the committer calls the silo.
    pub commit_mode: CommitMode,
    /// How this node encodes the values clients write to it when no rule of the
    /// cluster's policy table covers their key ([`policy`]).
    pub value_policy: policy::ValuePolicy,
    /// The node's data keys (`--encryption-key-file`), for prefixes the policy table
    /// encrypts.
    pub keyring: Option<Arc<policy::crypt::Keyring>>,
    /// Where the node saves its copy of the policy table (`None`: kept in memory only).
    pub policy_file: Option<std::path::PathBuf>,
    /// How often the node rereads the policy table from the cluster (`None`: only when a
    /// change is pushed to it).
    pub policy_refresh: Option<Duration>,
}

impl NodeOptions {
    /// Options with a [`MonotonicClock`] starting now, streamed peer links and inline
    /// commits. Call it inside the runtime that will drive the node.
    pub fn new(config: Config, listen: SocketAddr, peers: BTreeMap<NodeId, SocketAddr>, seed: u64) -> Self {
        NodeOptions {
            config,
            listen,
            peers,
            seed,
            clock: Arc::new(MonotonicClock::new()),
            peer_transport: PeerTransport::default(),
            commit_mode: CommitMode::default(),
            value_policy: policy::ValuePolicy::default(),
            keyring: None,
            policy_file: None,
            policy_refresh: Some(policy::table::REFRESH_INTERVAL),
        }
    }

    /// Checks that every other node of the initial list has an address (unless membership
    /// runs: then addresses come from SWIM).
    fn check(&self) -> Result<(), Error> {
        if self.config.membership.is_some() {
            return Ok(());
        }
        let me = &self.config.me;
        let missing: Vec<String> = (self.config.cluster.initial_nodes.iter())
            .filter(|n| *n != me && !self.peers.contains_key(*n))
            .map(|n| n.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::Options(format!("no address for node(s) {}", missing.join(", "))))
    }
}

/// SWIM settings for a founding node: it advertises its own entry of the peer table (or
/// the address it listens on) and starts from the other founders.
pub fn founders_membership(
    me: &NodeId,
    peers: &BTreeMap<NodeId, SocketAddr>,
    listen: SocketAddr,
) -> memo_engine::membership::MembershipConfig {
    let addr = peers.get(me).copied().unwrap_or(listen).to_string();
    let seeds = (peers.iter())
        .filter(|(id, _)| *id != me)
        .map(|(id, a)| memo_engine::membership::Member {
            node: id.clone(),
            addr: a.to_string(),
            bump: 0,
            retired: false,
        })
        .collect();
    memo_engine::membership::MembershipConfig::new(addr, seeds)
}

/// A running node. Dropping it stops the node abruptly; prefer [`NodeHandle::shutdown`].
pub struct NodeHandle {
    id: NodeId,
    cluster: ClusterId,
    addr: SocketAddr,
    control: mpsc::Sender<Control>,
    admission: Arc<Admission>,
    health: Health,
    stop_server: watch::Sender<bool>,
    stop_node: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    event_loop: Option<JoinHandle<Result<(), Error>>>,
    committer: JoinHandle<Result<(), StorageError>>,
    links: Vec<JoinHandle<()>>,
    left: watch::Receiver<bool>,
}

impl NodeHandle {
    /// This node.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The cluster it belongs to (checked on every peer batch).
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine's counters, or `None` once the node has stopped.
    pub async fn stats(&self) -> Option<Stats> {
        let (reply, answer) = oneshot::channel();
        self.control.send(Control::Stats(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Resolves once the node has left the cluster (after a leave, when no partition
    /// lists it any more). Cancel-safe; pending forever if it never leaves.
    pub fn left(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut left = self.left.clone();
        async move {
            if left.wait_for(|left| *left).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves when the node stops by itself (a failed silo); `Ok` if it was stopped.
    /// Cancel-safe.
    pub async fn stopped(&mut self) -> Result<(), Error> {
        let Some(event_loop) = self.event_loop.as_mut() else {
            return Ok(());
        };
        let outcome = event_loop.await;
        self.event_loop = None;
        outcome.map_err(|_| Error::TaskFailed("event loop"))?
    }

    /// Stops the node gracefully: gRPC health turns NOT_SERVING and new client calls are
    /// refused with UNAVAILABLE while the admitted ones finish (for up to
    /// [`SHUTDOWN_GRACE`], with peer traffic still flowing); then the server closes, and
    /// the engine, the committer (after committing what is queued) and the links stop.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.health.set_serving(false).await;
        if !self.admission.drain(SHUTDOWN_GRACE).await {
            tracing::warn!(node = %self.id, "in-flight calls outlived the grace period");
        }
        self.stop_server.send_replace(true);
        let served = match tokio::time::timeout(SERVER_STOP_GRACE, &mut self.server).await {
            Ok(joined) => joined.map_err(|_| Error::TaskFailed("server"))?,
            Err(_) => {
                self.server.abort();
                Ok(())
            }
        };
        self.stop_node.send_replace(true);
        let stopped = self.stopped().await;
        let committed = (&mut self.committer).await;
        for link in &self.links {
            link.abort();
        }
        served?;
        stopped?;
        committed.map_err(|_| Error::TaskFailed("committer"))??;
        tracing::info!(node = %self.id, "stopped");
        Ok(())
    }
}

/// Binds `options.listen` and starts a node on it.
pub async fn spawn_node(options: NodeOptions, storage: SharedStorage) -> Result<NodeHandle, Error> {
    let listener = Listener::bind(options.listen).await?;
    spawn_node_on(listener, options, storage).await
}

/// Starts a node on an already bound listener (`options.listen` is ignored).
pub async fn spawn_node_on(
    listener: Listener,
    options: NodeOptions,
    storage: SharedStorage,
) -> Result<NodeHandle, Error> {
    options.check()?;
    let me = options.config.me.clone();
    let addr = listener.local_addr();
    let reply_timeout = options.config.request_timeout + REPLY_GRACE;
    let kv_message_bytes_max = options.config.value_bytes_max + KEY_BYTES_MAX + KV_MESSAGE_HEADROOM_BYTES;
    let node = Node::new(options.config.clone(), storage.clone(), options.seed, options.clock.now())?;
    let (stop_node, stop_node_rx) = watch::channel(false);
    let (stop_server, stop_server_rx) = watch::channel(false);
    let (calls, calls_rx) = mpsc::channel(node::CALL_QUEUE_MAX);
    let (inbound, inbound_rx) = mpsc::channel(node::INBOUND_QUEUE_BATCHES_MAX);
    let (control, control_rx) = mpsc::channel(node::CONTROL_QUEUE_MAX);
    let name: Arc<str> = me.name.as_str().into();

    // This node's data keys: sent with every peer batch, checked against every batch in.
    let fingerprints = Arc::new(options.keyring.as_ref().map(|k| k.fingerprints()).unwrap_or_default());
    let header = BatchHeader {
        cluster: node.cluster(),
        from: me.clone(),
        restart: node.restart(),
        batches_sent: Default::default(),
        keys: (fingerprints.iter())
            .map(|(name, fingerprint)| memo_proto::peer::DataKeyFingerprint {
                name: name.clone(),
                fingerprint: fingerprint.0.to_vec(),
            })
            .collect(),
    };
    let (peers, links, views) = make_links(&options, &header);
    let link_factory =
        LinkFactory { header: header.clone(), transport: options.peer_transport, stop: stop_node_rx.clone() };
    let (left_tx, left) = watch::channel(false);

    // The services first: nothing is running yet if they cannot be set up.
    let admission = Arc::new(Admission::default());
    let policies = Arc::new(policy::table::Policies::open(
        options.value_policy,
        options.policy_file.clone(),
        options.keyring.clone(),
    )?);
    let kv = KvService {
        calls,
        reply_timeout,
        admission: admission.clone(),
        node: name.clone(),
        policies: policies.clone(),
        value_bytes_max: options.config.value_bytes_max,
    };
    let peer = PeerService { cluster: node.cluster(), keys: fingerprints, inbound, stop: stop_server_rx.clone() };
    let admin = AdminService {
        control: control.clone(),
        me: me.clone(),
        address: options.peers.get(&me).copied(),
        listen: addr,
        cluster: node.cluster(),
        replication: options.config.cluster.replication,
        initial_nodes: {
            let mut names: Vec<String> = options.config.cluster.initial_nodes.iter().map(|n| n.name.clone()).collect();
            names.sort();
            names
        },
        peers: Arc::new(views),
        kv: kv.clone(),
        policies: policies.clone(),
    };
    let refresher = options
        .policy_refresh
        .map(|interval| policy::table::refresh(kv.clone(), policies.clone(), interval, stop_node_rx.clone()));
    let health = Health::default();
    let router = server::router(kv, kv_message_bytes_max, peer.clone(), admin, &health)?;

    let (commits, commits_rx) = mpsc::channel(committer::COMMIT_QUEUE_BATCHES_MAX);
    let (durable_tx, durable) = watch::channel(0);
    let committer = tokio::spawn(
        committer::Committer { storage, mode: options.commit_mode, batches: commits_rx, durable: durable_tx }.run(),
    );

    let links = (links.into_iter()).map(|link| tokio::spawn(link.run(stop_node_rx.clone()))).collect();
    #[cfg(not(madsim))]
    {
        let queues = (peers.iter()).map(|(id, queue)| (id.name.clone(), queue.downgrade())).collect();
        tokio::spawn(metrics::sample(name, control.clone(), queues, stop_node_rx.clone()));
    }

    let event_loop = EventLoop {
        node,
        clock: options.clock.clone(),
        inputs: Inputs { calls: calls_rx, inbound: inbound_rx, durable, control: control_rx, stop: stop_node_rx },
        outputs: Outputs { commits, peers, links: link_factory, left: left_tx },
        waiting: BTreeMap::new(),
        next_request: 0,
        submitted_batch: 0,
        peer_messages_sent: 0,
        peer_bytes_sent: 0,
        leaves: Vec::new(),
    };
    let event_loop = tokio::spawn(event_loop.run());
    if let Some(refresher) = refresher {
        tokio::spawn(refresher);
    }
    health.set_serving(true).await;
    let server = tokio::spawn(server::serve(listener, router, peer, stop_server_rx));
    tracing::info!(node = %me, %addr, "serving");
    Ok(NodeHandle {
        id: me,
        cluster: header.cluster,
        addr,
        control,
        admission,
        health,
        stop_server,
        stop_node,
        server,
        event_loop: Some(event_loop),
        committer,
        links,
        left,
    })
}

/// Makes outbound links to peers learned after the start (they run until the node stops).
pub(crate) struct LinkFactory {
    header: BatchHeader,
    transport: PeerTransport,
    stop: watch::Receiver<bool>,
}

impl LinkFactory {
    /// Batches every link of this node sent so far.
    pub(crate) fn batches_sent(&self) -> u64 {
        self.header.batches_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts a link to `id` at `addr`; returns its queue.
    pub(crate) fn spawn(&self, id: NodeId, addr: SocketAddr) -> mpsc::Sender<Vec<u8>> {
        let (link, queue, _status) = Link::new(id, addr, self.header.clone(), self.transport);
        tokio::spawn(link.run(self.stop.clone()));
        queue
    }
}

/// One outbound link per other node with an address (not running yet), with the
/// loop's queues to them and the admin service's view of them.
fn make_links(options: &NodeOptions, header: &BatchHeader) -> (PeerQueues, Vec<Link>, BTreeMap<NodeId, PeerView>) {
    let mut queues = BTreeMap::new();
    let mut links = Vec::new();
    let mut views = BTreeMap::new();
    for (id, addr) in &options.peers {
        if *id == options.config.me {
            continue;
        }
        let (link, queue, status) = Link::new(id.clone(), *addr, header.clone(), options.peer_transport);
        views.insert(id.clone(), PeerView { address: *addr, link: status, queue: queue.downgrade() });
        queues.insert(id.clone(), queue);
        links.push(link);
    }
    (queues, links, views)
}
