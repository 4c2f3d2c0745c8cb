//! `memo status`: the cluster as one node sees it (`memo.admin.Admin/Status`). Exit code
//! 0 on success; on an error, `error: ...` on stderr and exit code 1, as `memo kv`.

use crate::client::{Align, Output, admin, describe, print, print_json, table};
use clap::Args;
use memo_proto::admin::{LinkState, NodeInfo, NodeStats, PartitionInfo, StatusRequest, StatusResponse};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node to ask (HOST:PORT or http://HOST:PORT).
    #[arg(long, env = "MEMO_ENDPOINT", default_value = "127.0.0.1:7001")]
    endpoint: String,
    /// Also list every partition with its primary and replicas.
    #[arg(long)]
    partitions: bool,
    /// Print aligned text or one JSON document.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub async fn run(args: StatusArgs) -> Result<(), String> {
    let mut client = admin(&args.endpoint).await?;
    let request = StatusRequest { partitions: args.partitions };
    let response = client.status(request).await.map_err(describe)?.into_inner();
    let mut report = Report::new(response, args.partitions);
    // The membership summary of `memo cluster members`; left out if the node cannot say.
    if let Ok(members) = client.members(memo_proto::admin::MembersRequest {}).await {
        report.membership = Some(Membership::from(members.into_inner()));
    }
    match args.output {
        Output::Json => print_json(&report),
        Output::Text => print(&report.text()),
    }
}

/// A status as `memo status` prints it: the response with its optional parts filled in
/// and its enums named. This is the JSON document of `--output json`.
#[derive(Debug, Serialize)]
struct Report {
    node: String,
    generation: u64,
    listen_address: String,
    version: String,
    cluster: Cluster,
    nodes: Vec<Node>,
    stats: Stats,
    /// Present only with `--partitions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<Vec<Partition>>,
    /// Members by state and the moves in progress (`memo cluster members` has the list).
    #[serde(skip_serializing_if = "Option::is_none")]
    membership: Option<Membership>,
}

#[derive(Debug, Default, Serialize)]
struct Membership {
    /// Members per state (alive, suspect, dead, evicted, left).
    states: std::collections::BTreeMap<String, u32>,
    moves_in_flight: u32,
    moves_queued: u32,
    keys_copied: u64,
}

impl From<memo_proto::admin::MembersResponse> for Membership {
    fn from(r: memo_proto::admin::MembersResponse) -> Self {
        let mut states = std::collections::BTreeMap::new();
        for m in r.members {
            *states.entry(m.state).or_default() += 1;
        }
        let moves = r.moves.unwrap_or_default();
        Membership {
            states,
            moves_in_flight: moves.in_flight,
            moves_queued: moves.queued,
            keys_copied: moves.keys_copied,
        }
    }
}

#[derive(Debug, Serialize)]
struct Cluster {
    id: String,
    partitions: u32,
    replication: u32,
}

#[derive(Debug, Serialize)]
struct Node {
    name: String,
    generation: u64,
    address: String,
    /// `self`, `connecting`, `connected`, `down`, `no_address` or `unknown`.
    link: &'static str,
    link_error: Option<String>,
    queued_messages: u64,
    suspected: bool,
    suspected_for_ms: Option<u64>,
    primary_partitions: u32,
    replica_partitions: u32,
}

#[derive(Debug, Serialize)]
struct Partition {
    id: u32,
    epoch: u64,
    primary: String,
    replicas: Vec<String>,
}

/// The node's gauges and counters: a JSON object, and a two-column table in text, with
/// the same names in the same order.
#[derive(Debug)]
struct Stats(NodeStats);

impl Stats {
    /// Every stat with its name. The destructuring is exhaustive, so a new field of
    /// `NodeStats` cannot be forgotten here.
    fn rows(&self) -> [(&'static str, u64); 23] {
        let NodeStats {
            restart,
            requests_in_flight,
            proposer_keys,
            registers_cached,
            register_cache_bytes,
            durable_batch,
            submitted_batch,
            fast_rounds,
            full_rounds,
            fast_reads,
            read_fallbacks,
            read_hedges,
            retries,
            forwards,
            forward_timeouts,
            gc_rounds,
            keys_dropped,
            peer_errors,
            transmit_dropped,
            storage_errors,
            peer_messages_sent,
            peer_bytes_sent,
            peer_batches_sent,
        } = self.0;
        [
            ("restart", restart),
            ("requests_in_flight", requests_in_flight),
            ("proposer_keys", proposer_keys),
            ("registers_cached", registers_cached),
            ("register_cache_bytes", register_cache_bytes),
            ("durable_batch", durable_batch),
            ("submitted_batch", submitted_batch),
            ("fast_rounds", fast_rounds),
            ("full_rounds", full_rounds),
            ("fast_reads", fast_reads),
            ("read_fallbacks", read_fallbacks),
            ("read_hedges", read_hedges),
            ("retries", retries),
            ("forwards", forwards),
            ("forward_timeouts", forward_timeouts),
            ("gc_rounds", gc_rounds),
            ("keys_dropped", keys_dropped),
            ("peer_errors", peer_errors),
            ("transmit_dropped", transmit_dropped),
            ("storage_errors", storage_errors),
            ("peer_messages_sent", peer_messages_sent),
            ("peer_bytes_sent", peer_bytes_sent),
            ("peer_batches_sent", peer_batches_sent),
        ]
    }
}

impl Serialize for Stats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let rows = self.rows();
        let mut map = serializer.serialize_map(Some(rows.len()))?;
        for (name, value) in rows {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

impl Report {
    /// The report of `response`, with partitions if they were asked for.
    fn new(response: StatusResponse, with_partitions: bool) -> Self {
        let cluster = response.cluster.unwrap_or_default();
        Report {
            node: response.node,
            generation: response.generation,
            listen_address: response.listen_address,
            version: response.version,
            cluster: Cluster { id: cluster.id, partitions: cluster.partitions, replication: cluster.replication },
            nodes: response.nodes.into_iter().map(Node::from).collect(),
            stats: Stats(response.stats.unwrap_or_default()),
            partitions: with_partitions.then(|| response.partitions.into_iter().map(Partition::from).collect()),
            membership: None,
        }
    }
}

impl From<NodeInfo> for Node {
    fn from(node: NodeInfo) -> Self {
        let link = match LinkState::try_from(node.link) {
            Ok(LinkState::Self_) => "self",
            Ok(LinkState::Connecting) => "connecting",
            Ok(LinkState::Connected) => "connected",
            Ok(LinkState::Down) => "down",
            Ok(LinkState::NoAddress) => "no_address",
            // A newer node may report a state this memo does not know.
            Ok(LinkState::Unspecified) | Err(_) => "unknown",
        };
        Node {
            name: node.name,
            generation: node.generation,
            address: node.address,
            link,
            link_error: (!node.link_error.is_empty()).then_some(node.link_error),
            queued_messages: node.queued_messages,
            suspected: node.suspected,
            suspected_for_ms: node.suspected.then_some(node.suspected_for_ms),
            primary_partitions: node.primary_partitions,
            replica_partitions: node.replica_partitions,
        }
    }
}

impl From<PartitionInfo> for Partition {
    fn from(partition: PartitionInfo) -> Self {
        Partition { id: partition.id, epoch: partition.epoch, primary: partition.primary, replicas: partition.replicas }
    }
}

impl Report {
    /// The text form: a header, the node table, the stats, and the partitions if asked.
    fn text(&self) -> String {
        let mut out = format!(
            "node {} (generation {}) listening on {}, memo {}\ncluster {}: {} partitions, replication {}\n\n",
            self.node,
            self.generation,
            self.listen_address,
            self.version,
            self.cluster.id,
            self.cluster.partitions,
            self.cluster.replication,
        );
        if let Some(m) = &self.membership {
            let states: Vec<String> = m.states.iter().map(|(state, n)| format!("{n} {state}")).collect();
            out += &format!(
                "members: {}; moves by this node: {} in flight, {} queued, {} keys copied\n\n",
                states.join(", "),
                m.moves_in_flight,
                m.moves_queued,
                m.keys_copied
            );
        }
        out += &self.node_table();
        out.push('\n');
        out += &self.stats_table();
        if let Some(partitions) = &self.partitions {
            out.push('\n');
            out += &partition_table(partitions);
        }
        out
    }

    fn node_table(&self) -> String {
        let headers = [
            ("NODE", Align::Left),
            ("ADDRESS", Align::Left),
            ("LINK", Align::Left),
            ("QUEUED", Align::Right),
            ("PRIMARY", Align::Right),
            ("REPLICA", Align::Right),
            ("NOTES", Align::Left),
        ];
        let rows: Vec<Vec<String>> = (self.nodes.iter())
            .map(|node| {
                let mut notes = Vec::new();
                if let Some(error) = &node.link_error {
                    notes.push(error.clone());
                }
                if let Some(ms) = node.suspected_for_ms {
                    notes.push(format!("suspected as a primary for {} s more", ms.div_ceil(1000)));
                }
                let queued = if node.link == "self" { "-".into() } else { node.queued_messages.to_string() };
                vec![
                    node.name.clone(),
                    node.address.clone(),
                    node.link.into(),
                    queued,
                    node.primary_partitions.to_string(),
                    node.replica_partitions.to_string(),
                    notes.join("; "),
                ]
            })
            .collect();
        table(&headers, &rows)
    }

    fn stats_table(&self) -> String {
        let rows: Vec<Vec<String>> =
            self.stats.rows().iter().map(|(name, value)| vec![(*name).to_string(), value.to_string()]).collect();
        table(&[("STAT", Align::Left), ("VALUE", Align::Right)], &rows)
    }
}

fn partition_table(partitions: &[Partition]) -> String {
    let headers =
        [("PARTITION", Align::Right), ("EPOCH", Align::Right), ("PRIMARY", Align::Left), ("REPLICAS", Align::Left)];
    let rows: Vec<Vec<String>> = (partitions.iter())
        .map(|p| vec![p.id.to_string(), p.epoch.to_string(), p.primary.clone(), p.replicas.join(",")])
        .collect();
    table(&headers, &rows)
}
