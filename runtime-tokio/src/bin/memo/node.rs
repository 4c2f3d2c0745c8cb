//! `memo node run`: one node of a cluster.

use crate::LogFormat;
use clap::builder::BoolishValueParser;
use clap::{Args, Subcommand};
use memo_engine::{ClusterParams, Config, MemoryStorage, NodeId};
use memo_node::policy::crypt::{Keyring, nonce_seed};
use memo_node::policy::{Compression, ValuePolicy};
use memo_node::{CommitMode, NodeOptions, RedbOptions, SharedStorage, datadir, spawn_node};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run a node until Ctrl-C or SIGTERM. With --data-dir its data is durable (redb);
    /// without, it lives in memory and is lost when the node stops.
    Run(RunArgs),
}

/// `memo node run`'s flags. Each one can also come from a `MEMO_*` variable or from the
/// `--config` file ([`FileSettings`]); a flag beats its variable, which beats the file,
/// which beats the default. Defaults are applied in [`Settings::load`], so that a value
/// that was not given is told apart from a default one.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Read these settings from a TOML file (keys are the flag names in snake_case, e.g.
    /// initial_nodes; see docs/memo.example.toml); flags and MEMO_* variables override it.
    #[arg(long, env = "MEMO_CONFIG")]
    config: Option<PathBuf>,
    /// This node's name: one of --initial-nodes for a founding node, or a name no live
    /// member has for a node that joins. Required.
    #[arg(long, env = "MEMO_ID")]
    id: Option<String>,
    /// Address to listen on for clients and peers (HOST:PORT). Required.
    #[arg(long, env = "MEMO_LISTEN", value_parser = parse_addr)]
    listen: Option<SocketAddr>,
    /// Serve Prometheus metrics on this address (HOST:PORT); off by default.
    #[arg(long, env = "MEMO_METRICS_ADDR", value_parser = parse_addr)]
    metrics_addr: Option<SocketAddr>,
    /// Every node of the initial cluster, this one included: NAME=HOST:PORT,... Required
    /// to create a cluster; not with --join.
    #[arg(long, env = "MEMO_INITIAL_NODES", value_delimiter = ',', value_parser = parse_member)]
    initial_nodes: Vec<(String, SocketAddr)>,
    /// Join a running cluster through any of its members (HOST:PORT,...): the node learns
    /// the cluster's parameters from it. Only for a new node; its data dir then records
    /// the cluster, and restarts need no --join.
    #[arg(long, env = "MEMO_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// The address the other nodes reach this one at, when it is not --listen (a node
    /// listening on 0.0.0.0). [default: the --initial-nodes entry, else --listen]
    #[arg(long, env = "MEMO_ADVERTISE", value_parser = parse_addr)]
    advertise: Option<SocketAddr>,
    /// How long a partition's desired members must differ from its members before it
    /// moves (e.g. 10s, 2m). [default: 10s]
    #[arg(long, env = "MEMO_REBALANCE_DELAY", value_parser = parse_duration)]
    rebalance_delay: Option<Duration>,
    /// How long a node must be down before its partitions are re-replicated elsewhere.
    /// [default: 10m]
    #[arg(long, env = "MEMO_EVICTION_DELAY", value_parser = parse_duration)]
    eviction_delay: Option<Duration>,
    /// Partitions this node moves at once. [default: 4]
    #[arg(long, env = "MEMO_MOVES_MAX")]
    moves_max: Option<usize>,
    /// Partition count (a power of two); fixed when the cluster is created. [default: 256]
    #[arg(long, env = "MEMO_PARTITIONS")]
    partitions: Option<u32>,
    /// Replication factor; fixed when the cluster is created. [default: 3]
    #[arg(long, env = "MEMO_REPLICATION")]
    replication: Option<u32>,
    /// Creation token folded into the cluster id, so two clusters with the same
    /// members never talk to each other. [default: memo]
    #[arg(long, env = "MEMO_CLUSTER_TOKEN")]
    cluster_token: Option<String>,
    /// Directory of the node's durable data (created on first start; later starts check
    /// that the flags above still match it). Without it, data lives in memory only.
    #[arg(long, env = "MEMO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Size of the database's page cache, in MiB. [default: 64]
    #[arg(long, env = "MEMO_CACHE_MIB")]
    cache_mib: Option<usize>,
    /// Memory for decoded registers (the engine's cache of recently used keys), in MiB.
    /// [default: 64]
    #[arg(long, env = "MEMO_REGISTER_CACHE_MIB")]
    register_cache_mib: Option<usize>,
    /// Compress the values clients write to this node: none, lz4, zstd or zstd:LEVEL
    /// (values that do not shrink are stored as sent). Every value records how it was
    /// stored, so nodes with different settings read each other's values. [default: none]
    #[arg(long, env = "MEMO_COMPRESSION")]
    compression: Option<Compression>,
    /// The data keys for the prefixes the policy table encrypts: one `NAME HEX` per line
    /// (64 hex digits), oldest first; the last one encrypts. Required once the cluster
    /// encrypts anything.
    #[arg(long, env = "MEMO_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,
    /// Skip verifying every page checksum of the database at start (faster start for a
    /// big database; a damaged file may then go unnoticed). =false undoes a config file's
    /// true.
    #[arg(
        long,
        env = "MEMO_SKIP_INTEGRITY_CHECK",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    skip_integrity_check: Option<bool>,
}

/// Partition count when neither a flag nor the file sets it.
const PARTITIONS_DEFAULT: u32 = 256;
/// Replication factor when neither a flag nor the file sets it.
const REPLICATION_DEFAULT: u32 = 3;
/// Cluster token when neither a flag nor the file sets it.
const CLUSTER_TOKEN_DEFAULT: &str = "memo";
/// redb's page cache, in MiB, when neither a flag nor the file sets it.
const CACHE_MIB_DEFAULT: usize = 64;
/// The engine's register cache, in MiB, when neither a flag nor the file sets it.
const REGISTER_CACHE_MIB_DEFAULT: usize = 64;
/// The rebalance delay when neither a flag nor the file sets it.
const REBALANCE_DELAY_DEFAULT: Duration = Duration::from_secs(10);
/// The eviction delay when neither a flag nor the file sets it.
const EVICTION_DELAY_DEFAULT: Duration = Duration::from_secs(600);
/// Moves at once when neither a flag nor the file sets it.
const MOVES_MAX_DEFAULT: usize = 4;

/// The `--config` file: every setting of `memo node run`, under its flag's name in
/// snake_case, all optional. Unknown keys are an error, so a typo never goes unnoticed.
/// Addresses and `initial_nodes` entries are written as on the command line.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    id: Option<String>,
    listen: Option<String>,
    metrics_addr: Option<String>,
    initial_nodes: Option<Vec<String>>,
    join: Option<Vec<String>>,
    advertise: Option<String>,
    rebalance_delay: Option<String>,
    eviction_delay: Option<String>,
    moves_max: Option<usize>,
    partitions: Option<u32>,
    replication: Option<u32>,
    cluster_token: Option<String>,
    data_dir: Option<PathBuf>,
    cache_mib: Option<usize>,
    register_cache_mib: Option<usize>,
    compression: Option<String>,
    encryption_key_file: Option<PathBuf>,
    skip_integrity_check: Option<bool>,
    log_format: Option<LogFormat>,
}

impl FileSettings {
    /// Reads and parses `path`; every error names the file (and the line, for syntax
    /// errors and unknown keys) on one line.
    fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|why| format!("config file {}{why}", path.display()))
    }

    /// Parses the text of a config file; an error reads `, line N: what`.
    fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().replace('\n', " ");
            let Some(span) = e.span() else { return format!(": {message}") };
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let key = text.get(span.clone()).unwrap_or_default();
            let hint = if message.starts_with("unknown field") && key.contains('-') {
                " (keys are snake_case, e.g. initial_nodes)"
            } else {
                ""
            };
            format!(", line {line}: {message}{hint}")
        })
    }
}

/// The settings a node runs with, once flags, variables, file and defaults are merged.
#[derive(Debug, PartialEq)]
pub struct Settings {
    id: String,
    listen: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    initial_nodes: Vec<(String, SocketAddr)>,
    join: Vec<String>,
    advertise: Option<SocketAddr>,
    rebalance_delay: Duration,
    eviction_delay: Duration,
    moves_max: usize,
    partitions: u32,
    replication: u32,
    cluster_token: String,
    data_dir: Option<PathBuf>,
    cache_mib: usize,
    register_cache_mib: usize,
    compression: Compression,
    encryption_key_file: Option<PathBuf>,
    skip_integrity_check: bool,
    /// From the file only: `--log-format` and `MEMO_LOG_FORMAT` belong to `memo` itself
    /// and override this.
    pub log_format: Option<LogFormat>,
}

impl Settings {
    /// Merges `args` over the `--config` file, if any, over the defaults.
    pub fn load(args: RunArgs) -> Result<Self, String> {
        let (file, file_name) = match &args.config {
            Some(path) => (FileSettings::read(path)?, path.display().to_string()),
            None => (FileSettings::default(), String::new()),
        };
        Self::merge(args, file, &file_name)
    }

    /// Merges `args` over `file` (read from `file_name`) over the defaults.
    fn merge(args: RunArgs, file: FileSettings, file_name: &str) -> Result<Self, String> {
        let missing = |what: &str, flag: &str, var: &str, key: &str| {
            format!("missing {what}: give {flag}, set {var}, or set {key} in the --config file")
        };
        let in_file = |key: &str, why: String| format!("config file {file_name}: {key}: {why}");
        let listen = match (args.listen, &file.listen) {
            (Some(addr), _) => addr,
            (None, Some(text)) => parse_addr(text).map_err(|why| in_file("listen", why))?,
            (None, None) => return Err(missing("the address to listen on", "--listen", "MEMO_LISTEN", "listen")),
        };
        let metrics_addr = match (args.metrics_addr, &file.metrics_addr) {
            (Some(addr), _) => Some(addr),
            (None, Some(text)) => Some(parse_addr(text).map_err(|why| in_file("metrics_addr", why))?),
            (None, None) => None,
        };
        let join = if args.join.is_empty() { file.join.unwrap_or_default() } else { args.join };
        let initial_nodes = match (args.initial_nodes.is_empty(), &file.initial_nodes) {
            (false, _) => args.initial_nodes,
            (true, Some(members)) => (members.iter())
                .map(|text| parse_member(text))
                .collect::<Result<_, _>>()
                .map_err(|why| in_file("initial_nodes", why))?,
            // A joining node learns the cluster from its seed; a node whose data dir says
            // it joined needs neither (checked when the data dir is read).
            (true, None) => Vec::new(),
        };
        if !join.is_empty() && !initial_nodes.is_empty() {
            return Err("--join and --initial-nodes exclude each other: a node creates a cluster or joins one".into());
        }
        let advertise = match (args.advertise, &file.advertise) {
            (Some(addr), _) => Some(addr),
            (None, Some(text)) => Some(parse_addr(text).map_err(|why| in_file("advertise", why))?),
            (None, None) => None,
        };
        let duration = |flag: Option<Duration>, key: &str, text: &Option<String>, default: Duration| match (flag, text)
        {
            (Some(d), _) => Ok(d),
            (None, Some(text)) => parse_duration(text).map_err(|why| in_file(key, why)),
            (None, None) => Ok(default),
        };
        let rebalance_delay =
            duration(args.rebalance_delay, "rebalance_delay", &file.rebalance_delay, REBALANCE_DELAY_DEFAULT)?;
        let eviction_delay =
            duration(args.eviction_delay, "eviction_delay", &file.eviction_delay, EVICTION_DELAY_DEFAULT)?;
        let compression = match (args.compression, &file.compression) {
            (Some(c), _) => c,
            (None, Some(text)) => text.parse().map_err(|why| in_file("compression", why))?,
            (None, None) => Compression::None,
        };
        Ok(Settings {
            id: (args.id.or(file.id)).ok_or_else(|| missing("the node's name", "--id", "MEMO_ID", "id"))?,
            listen,
            metrics_addr,
            initial_nodes,
            join,
            advertise,
            rebalance_delay,
            eviction_delay,
            moves_max: args.moves_max.or(file.moves_max).unwrap_or(MOVES_MAX_DEFAULT),
            partitions: args.partitions.or(file.partitions).unwrap_or(PARTITIONS_DEFAULT),
            replication: args.replication.or(file.replication).unwrap_or(REPLICATION_DEFAULT),
            cluster_token: (args.cluster_token.or(file.cluster_token))
                .unwrap_or_else(|| CLUSTER_TOKEN_DEFAULT.to_string()),
            data_dir: args.data_dir.or(file.data_dir),
            cache_mib: args.cache_mib.or(file.cache_mib).unwrap_or(CACHE_MIB_DEFAULT),
            register_cache_mib: (args.register_cache_mib.or(file.register_cache_mib))
                .unwrap_or(REGISTER_CACHE_MIB_DEFAULT),
            compression,
            encryption_key_file: args.encryption_key_file.or(file.encryption_key_file),
            skip_integrity_check: args.skip_integrity_check.or(file.skip_integrity_check).unwrap_or(false),
            log_format: file.log_format,
        })
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    // Host names are resolved once, at start.
    (text.to_socket_addrs().map_err(|e| format!("{text}: {e}"))?).next().ok_or_else(|| format!("{text}: no address"))
}

/// A duration such as `500ms`, `30s`, `10m` or `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text}: expected a duration such as 500ms, 30s, 10m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{text}: expected a duration such as 500ms, 30s, 10m or 1h")),
    };
    Ok(d)
}

fn parse_member(text: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = (text.split_once('=')).ok_or_else(|| format!("{text}: expected NAME=HOST:PORT"))?;
    if name.is_empty() {
        return Err(format!("{text}: empty node name"));
    }
    Ok((name.to_string(), parse_addr(addr)?))
}

pub async fn run(args: Settings) -> Result<(), String> {
    if let Some(addr) = args.metrics_addr {
        memo_node::install_prometheus(addr).map_err(|e| e.to_string())?;
    }
    let recorded = match &args.data_dir {
        Some(dir) => datadir::recorded(dir).map_err(|e| e.to_string())?,
        None => None,
    };
    if recorded.is_some() && !args.join.is_empty() {
        tracing::info!("the data dir records its cluster: --join is not needed and is ignored");
    }
    let joined = recorded.as_ref().is_some_and(|r| r.joined);
    let joining = recorded.is_none() && !args.join.is_empty();
    // Where the cluster's parameters come from: the seed (a new node joining), the data
    // dir (a node that joined earlier), or the flags (a founding node).
    let (params, peers, seed): (ClusterParams, BTreeMap<NodeId, SocketAddr>, Option<Seed>) = if joining {
        let seed = ask_seeds(&args.join, &args.id, &args.cluster_token).await?;
        (seed.params.clone(), BTreeMap::new(), Some(seed))
    } else if joined {
        let recorded = recorded.as_ref().expect("joined implies recorded");
        (recorded.params.clone(), BTreeMap::new(), None)
    } else {
        if args.initial_nodes.is_empty() {
            return Err("missing the initial nodes: give --initial-nodes (or MEMO_INITIAL_NODES, or initial_nodes in \
                        the --config file) to create a cluster, or --join SEED to join one"
                .into());
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
            token: args.cluster_token.clone(),
        };
        (params, peers, None)
    };
    let generation = || super::os_seed().max(1);
    let (me, storage, commit_mode): (NodeId, SharedStorage, CommitMode) = match &args.data_dir {
        Some(dir) => {
            let redb = RedbOptions {
                cache_bytes: args.cache_mib.saturating_mul(1024 * 1024),
                check_integrity_on_open: !args.skip_integrity_check,
                ..RedbOptions::default()
            };
            let opened = if joining || joined {
                datadir::open_joining(dir, &args.id, generation(), &params, &redb)
            } else {
                datadir::open(dir, &args.id, &params, &redb)
            };
            let (data, storage) = opened.map_err(|e| e.to_string())?;
            let action = if data.created() { "created" } else { "opened" };
            tracing::info!(dir = %data.path().display(), node = %data.node(), "{action} the data dir");
            (data.node().clone(), Arc::new(storage), CommitMode::Blocking)
        }
        None => {
            tracing::warn!("no --data-dir: data lives in memory and is lost when the node stops (not durable)");
            let me = if joining {
                NodeId { name: args.id.clone(), generation: generation() }
            } else {
                NodeId::initial(args.id.clone())
            };
            (me, Arc::new(MemoryStorage::new()), CommitMode::Inline)
        }
    };
    let mut config = Config::new(me.clone(), params);
    config.join = joining || joined;
    config.rebalance_delay = args.rebalance_delay;
    config.moves_max = args.moves_max.max(1);
    config.register_cache_bytes_max = args.register_cache_mib.saturating_mul(1024 * 1024);
    let mut membership = memo_node::founders_membership(&me, &peers, args.advertise.unwrap_or(args.listen));
    if let Some(addr) = args.advertise {
        membership.addr = addr.to_string();
    } else if config.join {
        membership.addr = args.listen.to_string();
    }
    membership.eviction_delay = args.eviction_delay;
    if let Some(seed) = &seed {
        membership.seeds = vec![seed.member.clone()];
    }
    config.membership = Some(membership);
    let mut options = NodeOptions::new(config, args.listen, peers, super::os_seed());
    options.commit_mode = commit_mode;
    options.value_policy = ValuePolicy { compression: args.compression, encrypt: false, versions: 0 };
    options.keyring = match &args.encryption_key_file {
        Some(path) => Some(Arc::new(Keyring::load(path, nonce_seed(super::os_seed()))?)),
        None => None,
    };
    options.policy_file = args.data_dir.as_ref().map(|dir| dir.join(datadir::POLICY_FILE));
    let mut node = spawn_node(options, storage).await.map_err(|e| e.to_string())?;
    if let Some(seed) = &seed {
        tracing::info!(seed = %seed.member.addr, node = %me, "joining the cluster");
    }
    let left = node.left();
    let failed = tokio::select! {
        () = super::shutdown_signal() => None,
        () = left => {
            tracing::info!("this node left the cluster; stopping");
            None
        }
        outcome = node.stopped() => Some(outcome),
    };
    if let Some(outcome) = failed {
        return outcome.map_err(|e| e.to_string());
    }
    tracing::info!("stopping");
    node.shutdown().await.map_err(|e| e.to_string())
}

/// What a joining node learned from a seed.
struct Seed {
    params: ClusterParams,
    member: memo_engine::membership::Member,
}

/// Asks the seeds, in turn, for the cluster's parameters and members. Refuses a token
/// that does not derive the cluster's id, and a name a live member already has.
async fn ask_seeds(seeds: &[String], name: &str, token: &str) -> Result<Seed, String> {
    use memo_proto::admin::MembersRequest;
    use memo_proto::admin::admin_client::AdminClient;
    let mut errors = Vec::new();
    for seed in seeds {
        let channel = match crate::client::connect(seed).await {
            Ok(channel) => channel,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let answer = match AdminClient::new(channel).members(MembersRequest {}).await {
            Ok(answer) => answer.into_inner(),
            Err(e) => {
                errors.push(format!("{seed}: {}", crate::client::describe(e)));
                continue;
            }
        };
        let cluster = answer.cluster.unwrap_or_default();
        let params = ClusterParams {
            partitions: cluster.partitions,
            replication: cluster.replication,
            initial_nodes: cluster.initial_nodes.iter().cloned().map(NodeId::initial).collect(),
            token: token.to_string(),
        };
        if memo_node::datadir::hex(&params.cluster_id().0) != cluster.id {
            return Err(format!(
                "cannot join through {seed}: its cluster's id does not derive from --cluster-token {token:?} (a wrong \
                 token, or another cluster)"
            ));
        }
        let taken =
            answer.members.iter().any(|m| m.name == name && matches!(m.state.as_str(), "alive" | "suspect" | "dead"));
        if taken {
            return Err(format!("cannot join as {name:?}: a member of the cluster already has that name"));
        }
        let Some(me) = answer.members.iter().find(|m| m.name == answer.node && m.generation == answer.generation)
        else {
            errors.push(format!("{seed}: it does not list itself as a member"));
            continue;
        };
        let member = memo_engine::membership::Member {
            node: NodeId { name: me.name.clone(), generation: me.generation },
            addr: me.address.clone(),
            bump: 0,
            retired: false,
        };
        return Ok(Seed { params, member });
    }
    Err(format!("cannot join: no seed answered ({})", errors.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `memo node run`'s flags alone, to parse test command lines.
    #[derive(Debug, Parser)]
    struct Run {
        #[command(flatten)]
        args: RunArgs,
    }

    fn args(flags: &[&str]) -> RunArgs {
        let argv = std::iter::once("run").chain(flags.iter().copied());
        Run::try_parse_from(argv).expect("the flags parse").args
    }

    fn repo_file(path: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    const FILE: &str = r#"
id = "n1"
listen = "127.0.0.1:7001"
initial_nodes = ["n1=127.0.0.1:7001", "n2=127.0.0.1:7002"]
partitions = 16
cluster_token = "from-the-file"
skip_integrity_check = true
log_format = "json"
"#;

    #[test]
    fn the_example_config_sets_every_key_and_the_docs_describe_each() {
        let file = FileSettings::parse(&repo_file("docs/memo.example.toml")).expect("the example parses");
        // Exhaustive: a new setting does not compile here until the example has it.
        let FileSettings {
            id,
            listen,
            metrics_addr,
            initial_nodes,
            join,
            advertise,
            rebalance_delay,
            eviction_delay,
            moves_max,
            partitions,
            replication,
            cluster_token,
            data_dir,
            cache_mib,
            register_cache_mib,
            compression,
            encryption_key_file,
            skip_integrity_check,
            log_format,
        } = &file;
        assert!(id.is_some() && listen.is_some() && metrics_addr.is_some() && initial_nodes.is_some());
        assert!(join.is_some() && advertise.is_some() && rebalance_delay.is_some() && eviction_delay.is_some());
        assert!(moves_max.is_some() && register_cache_mib.is_some() && compression.is_some());
        assert!(encryption_key_file.is_some());
        assert!(partitions.is_some() && replication.is_some() && cluster_token.is_some() && data_dir.is_some());
        assert!(cache_mib.is_some() && skip_integrity_check.is_some() && log_format.is_some());

        let keys = toml::Table::try_from(&file).expect("the settings serialize");
        let operations = repo_file("docs/OPERATIONS.md");
        for key in keys.keys() {
            assert!(operations.contains(&format!("`{key}`")), "docs/OPERATIONS.md does not describe `{key}`");
        }
        let settings = Settings::merge(args(&[]), file, "example").expect("the example is complete");
        assert_eq!(settings.initial_nodes.len(), 3);
        assert_eq!(
            (settings.rebalance_delay, settings.eviction_delay),
            (Duration::from_secs(10), Duration::from_secs(600))
        );
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file = FileSettings::parse(FILE).expect("parses");
        let flags = args(&["--partitions", "32", "--listen", "127.0.0.1:7101", "--skip-integrity-check=false"]);
        let settings = Settings::merge(flags, file, "test.toml").expect("complete");
        assert_eq!(settings.id, "n1");
        assert_eq!(settings.partitions, 32);
        assert_eq!(settings.listen, "127.0.0.1:7101".parse().expect("an address"));
        assert!(!settings.skip_integrity_check);
        assert_eq!(settings.cluster_token, "from-the-file");
        assert_eq!(settings.initial_nodes.len(), 2);
        assert_eq!(settings.log_format, Some(LogFormat::Json));
        assert_eq!(settings.replication, REPLICATION_DEFAULT);
        assert_eq!(settings.cache_mib, CACHE_MIB_DEFAULT);
        assert_eq!(settings.register_cache_mib, REGISTER_CACHE_MIB_DEFAULT);
        assert_eq!(settings.data_dir, None);

        let flags = args(&["--skip-integrity-check", "--initial-nodes", "n1=127.0.0.1:1"]);
        let settings = Settings::merge(flags, FileSettings::default(), "").expect_err("no id, no listen");
        assert!(settings.contains("--listen"), "{settings}");
    }

    #[test]
    fn durations_read_as_operators_write_them_and_bad_ones_say_how() {
        let table = [("500ms", 500), ("30s", 30_000), ("10m", 600_000), ("1h", 3_600_000), ("0s", 0)];
        for (text, ms) in table {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "10", "s", "1.5s", "10d", "-1s"] {
            assert!(parse_duration(bad).unwrap_err().contains("500ms, 30s, 10m or 1h"), "{bad}");
        }
    }

    #[test]
    fn join_and_initial_nodes_exclude_each_other() {
        let flags = args(&["--id", "n4", "--listen", "127.0.0.1:7004", "--join", "127.0.0.1:7001"]);
        let settings = Settings::merge(flags, FileSettings::default(), "").expect("a joining node needs no list");
        assert_eq!(settings.join, ["127.0.0.1:7001"]);
        let both =
            args(&["--id", "n4", "--listen", "127.0.0.1:7004", "--join", "a:1", "--initial-nodes", "n1=127.0.0.1:1"]);
        let error = Settings::merge(both, FileSettings::default(), "").expect_err("both");
        assert!(error.contains("exclude each other"), "{error}");
    }

    #[test]
    fn a_bare_skip_integrity_check_flag_means_true() {
        assert_eq!(args(&["--skip-integrity-check"]).skip_integrity_check, Some(true));
        assert_eq!(args(&[]).skip_integrity_check, None);
    }

    #[test]
    fn missing_settings_name_the_flag_the_variable_and_the_key() {
        let flags = args(&["--listen", "127.0.0.1:7001", "--initial-nodes", "n1=127.0.0.1:7001"]);
        let error = Settings::merge(flags, FileSettings::default(), "").expect_err("no id");
        assert_eq!(error, "missing the node's name: give --id, set MEMO_ID, or set id in the --config file");
    }

    #[test]
    fn config_file_errors_are_one_line_with_the_line_number() {
        let table = [
            ("id = \"n1\"\nlisten_addr = \"x\"\n", ", line 2: unknown field `listen_addr`, expected one of"),
            ("initial-nodes = []\n", ", line 1: unknown field `initial-nodes`"),
            ("id = \"n1\"\npartitions = \"many\"\n", ", line 2: invalid type: string \"many\", expected u32"),
            ("id = \"n1\"\nlisten = \n", ", line 2: "),
            ("log_format = \"xml\"\n", ", line 1: unknown variant `xml`"),
        ];
        for (text, expected) in table {
            let error = FileSettings::parse(text).expect_err(text);
            assert!(error.starts_with(expected), "{text:?}: {error}");
            assert!(!error.contains('\n'), "{text:?}: {error}");
        }
        let kebab = FileSettings::parse("cache-mib = 1\n").expect_err("kebab-case");
        assert!(kebab.ends_with("(keys are snake_case, e.g. initial_nodes)"), "{kebab}");
    }

    #[test]
    fn a_bad_address_in_the_file_names_the_file_and_the_key() {
        let file = FileSettings::parse("id = \"n1\"\nlisten = \"nowhere\"\n").expect("parses");
        let error = Settings::merge(args(&[]), file, "/etc/memo.toml").expect_err("a bad address");
        assert!(error.starts_with("config file /etc/memo.toml: listen: nowhere: "), "{error}");
    }

    #[test]
    fn an_unreadable_config_file_is_an_error_naming_it() {
        let error = FileSettings::read(Path::new("/nonexistent/memo.toml")).expect_err("no such file");
        assert!(error.starts_with("cannot read the config file /nonexistent/memo.toml: "), "{error}");
    }
}
