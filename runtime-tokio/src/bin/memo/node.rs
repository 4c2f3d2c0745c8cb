//! `memo node run`: one node of a cluster.

use clap::builder::BoolishValueParser;
use clap::{Args, Subcommand};
use memo_engine::{ClusterParams, Config, MemoryStorage, NodeId};
use memo_node::{CommitMode, NodeOptions, RedbOptions, SharedStorage, datadir, spawn_node};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run a node until Ctrl-C or SIGTERM. With --data-dir its data is durable (redb);
    /// without, it lives in memory and is lost when the node stops.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's name; it must appear in --initial-nodes.
    #[arg(long, env = "MEMO_ID")]
    id: String,
    /// Address to listen on for clients and peers (HOST:PORT).
    #[arg(long, env = "MEMO_LISTEN", value_parser = parse_addr)]
    listen: SocketAddr,
    /// Serve Prometheus metrics on this address (HOST:PORT); off by default.
    #[arg(long, env = "MEMO_METRICS_ADDR", value_parser = parse_addr)]
    metrics_addr: Option<SocketAddr>,
    /// Every node of the initial cluster, this one included: NAME=HOST:PORT,...
    #[arg(long, env = "MEMO_INITIAL_NODES", value_delimiter = ',', value_parser = parse_member, required = true)]
    initial_nodes: Vec<(String, SocketAddr)>,
    /// Partition count (a power of two); fixed when the cluster is created.
    #[arg(long, env = "MEMO_PARTITIONS", default_value_t = 256)]
    partitions: u32,
    /// Replication factor; fixed when the cluster is created.
    #[arg(long, env = "MEMO_REPLICATION", default_value_t = 3)]
    replication: u32,
    /// Creation token folded into the cluster id, so two clusters with the same
    /// members never talk to each other.
    #[arg(long, env = "MEMO_CLUSTER_TOKEN", default_value = "memo")]
    cluster_token: String,
    /// Directory of the node's durable data (created on first start; later starts check
    /// that the flags above still match it). Without it, data lives in memory only.
    #[arg(long, env = "MEMO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Size of the database's page cache, in MiB.
    #[arg(long, env = "MEMO_CACHE_MIB", default_value_t = 64)]
    cache_mib: usize,
    /// Skip verifying every page checksum of the database at start (faster start for a
    /// big database; a damaged file may then go unnoticed).
    #[arg(long, env = "MEMO_SKIP_INTEGRITY_CHECK", value_parser = BoolishValueParser::new())]
    skip_integrity_check: bool,
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    // Host names are resolved once, at start.
    (text.to_socket_addrs().map_err(|e| format!("{text}: {e}"))?).next().ok_or_else(|| format!("{text}: no address"))
}

fn parse_member(text: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = (text.split_once('=')).ok_or_else(|| format!("{text}: expected NAME=HOST:PORT"))?;
    if name.is_empty() {
        return Err(format!("{text}: empty node name"));
    }
    Ok((name.to_string(), parse_addr(addr)?))
}

pub async fn run(command: NodeCommand) -> Result<(), String> {
    let NodeCommand::Run(args) = command;
    if let Some(addr) = args.metrics_addr {
        memo_node::install_prometheus(addr).map_err(|e| e.to_string())?;
    }
    let peers: BTreeMap<NodeId, SocketAddr> =
        (args.initial_nodes.iter()).map(|(name, addr)| (NodeId::initial(name.clone()), *addr)).collect();
    if peers.len() != args.initial_nodes.len() {
        return Err("--initial-nodes names a node twice".into());
    }
    let params = ClusterParams {
        partitions: args.partitions,
        replication: args.replication,
        initial_nodes: peers.keys().cloned().collect(),
        token: args.cluster_token,
    };
    let (me, storage, commit_mode): (NodeId, SharedStorage, CommitMode) = match &args.data_dir {
        Some(dir) => {
            let redb = RedbOptions {
                cache_bytes: args.cache_mib.saturating_mul(1024 * 1024),
                check_integrity_on_open: !args.skip_integrity_check,
                ..RedbOptions::default()
            };
            let (data, storage) = datadir::open(dir, &args.id, &params, &redb).map_err(|e| e.to_string())?;
            let action = if data.created() { "created" } else { "opened" };
            tracing::info!(dir = %data.path().display(), node = %data.node(), "{action} the data dir");
            (data.node().clone(), Arc::new(storage), CommitMode::Blocking)
        }
        None => {
            tracing::warn!("no --data-dir: data lives in memory and is lost when the node stops (not durable)");
            (NodeId::initial(args.id), Arc::new(MemoryStorage::new()), CommitMode::Inline)
        }
    };
    let config = Config::new(me, params);
    let mut options = NodeOptions::new(config, args.listen, peers, super::os_seed());
    options.commit_mode = commit_mode;
    let mut node = spawn_node(options, storage).await.map_err(|e| e.to_string())?;
    let failed = tokio::select! {
        () = super::shutdown_signal() => None,
        outcome = node.stopped() => Some(outcome),
    };
    if let Some(outcome) = failed {
        return outcome.map_err(|e| e.to_string());
    }
    tracing::info!("stopping");
    node.shutdown().await.map_err(|e| e.to_string())
}
