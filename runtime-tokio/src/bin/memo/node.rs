//! `memo node run`: one node of a cluster.

use clap::{Args, Subcommand};
use memo_engine::{ClusterParams, Config, MemoryStorage, NodeId};
use memo_node::{NodeOptions, SharedStorage, spawn_node};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run a node until Ctrl-C or SIGTERM. Data lives in memory for now (the durable
    /// redb silo and its --data-dir come next).
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
    let config = Config::new(NodeId::initial(args.id), params);
    let options = NodeOptions::new(config, args.listen, peers, super::os_seed());
    let storage: SharedStorage = Arc::new(MemoryStorage::new());
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
