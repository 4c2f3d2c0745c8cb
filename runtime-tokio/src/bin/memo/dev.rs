//! `memo dev`: a whole cluster in this process.

use clap::Args;
use memo_node::dev::DEV_PARTITIONS_DEFAULT;
use memo_node::policy::crypt::{Keyring, nonce_seed};
use memo_node::policy::{Compression, ValuePolicy};
use memo_node::{DevOptions, spawn_dev_cluster};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Node i listens on base-port + i - 1 on 127.0.0.1; 0 picks free ports.
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Partition count (a power of two).
    #[arg(long, default_value_t = DEV_PARTITIONS_DEFAULT)]
    partitions: u32,
    /// Replication factor.
    #[arg(long, default_value_t = 3)]
    replication: u32,
    /// Keep the data durably (redb), node nI in DIR/nI; a later run with the same
    /// directory and flags finds it again. Without it, data lives in memory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Compress the values written to the cluster: none, lz4, zstd or zstd:LEVEL (values
    /// that do not shrink are stored as sent).
    #[arg(long, env = "MEMO_COMPRESSION", default_value = "none")]
    compression: Compression,
    /// The data keys for the prefixes the policy table encrypts (`memo policy set PREFIX
    /// --encryption on`): one `NAME HEX` per line (64 hex digits), oldest first; the last
    /// one encrypts. Every node of the dev cluster uses it.
    #[arg(long, env = "MEMO_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,
    /// Serve Prometheus metrics of every node on this address (HOST:PORT).
    #[arg(long, env = "MEMO_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

pub async fn run(args: DevArgs) -> Result<(), String> {
    if let Some(addr) = args.metrics_addr {
        memo_node::install_prometheus(addr).map_err(|e| e.to_string())?;
    }
    let mut options = DevOptions::new(args.nodes, args.base_port, super::os_seed());
    options.partitions = args.partitions;
    options.replication = args.replication;
    options.data_dir = args.data_dir.clone();
    options.value_policy = ValuePolicy { compression: args.compression, encrypt: false, versions: 0 };
    if let Some(path) = &args.encryption_key_file {
        let seed = nonce_seed(super::os_seed());
        options.keyring = Some(std::sync::Arc::new(Keyring::load(path, seed)?));
    }
    let mut cluster = spawn_dev_cluster(options).await.map_err(|e| e.to_string())?;
    print_banner(&cluster, args.partitions, args.replication, args.data_dir.as_deref());
    let failed = tokio::select! {
        () = super::shutdown_signal() => None,
        outcome = cluster.nodes_mut()[0].stopped() => Some(outcome),
    };
    tracing::info!("stopping the cluster");
    let stopped = cluster.shutdown().await.map_err(|e| e.to_string());
    match failed {
        Some(Err(e)) => Err(e.to_string()),
        Some(Ok(())) | None => stopped,
    }
}

/// What a newcomer needs: where the nodes are and how to talk to them. Each node line
/// reads `  NAME  ADDR` (tests parse it).
/// Writing to a closed stdout (a parent that stopped reading) is not an error worth
/// stopping the cluster for, so write failures are ignored.
fn print_banner(cluster: &memo_node::DevCluster, partitions: u32, replication: u32, data_dir: Option<&Path>) {
    use std::io::Write;
    let nodes = cluster.nodes();
    let storage = match data_dir {
        Some(dir) => format!("redb silos in {}", dir.display()),
        None => "memory silos: data is lost at exit".into(),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "memo dev: {} nodes, {partitions} partitions, replication {replication} ({storage})",
        nodes.len()
    );
    for node in nodes {
        let _ = writeln!(out, "  {}  {}", node.id().name, node.local_addr());
    }
    let (Some(first), Some(last)) = (nodes.first(), nodes.last()) else { return };
    let _ = writeln!(out, "try:");
    let _ = writeln!(out, "  memo kv upsert --endpoint {} hello world", first.local_addr());
    let _ = writeln!(out, "  memo kv get --endpoint {} hello", last.local_addr());
    let next = nodes.len() + 1;
    let port = last.local_addr().port().wrapping_add(1);
    let _ = writeln!(out, "add a node (another terminal):");
    let _ = writeln!(
        out,
        "  memo node run --id n{next} --listen 127.0.0.1:{port} --join {} --cluster-token {}",
        first.local_addr(),
        memo_node::dev::DEV_CLUSTER_TOKEN
    );
    let _ = writeln!(out, "  memo cluster members --endpoint {}", first.local_addr());
    let _ = writeln!(out, "Ctrl-C stops the cluster.");
    let _ = out.flush();
}
