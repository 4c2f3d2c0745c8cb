//! `memo cluster`: the membership of a running cluster (`memo.admin.Admin/Members`,
//! `Leave`, `Remove`). Exit code 0 on success; on an error, `error: ...` on stderr and
//! exit code 1, as `memo kv`.

use crate::client::{Align, EndpointArgs, Output, admin, describe, print, print_json, table};
use clap::{Args, Subcommand};
use memo_proto::admin::{LeaveRequest, MembersRequest, MembersResponse, RemoveRequest};
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List every member: id, address, state (alive, suspect, dead, evicted, left) and the
    /// partitions it holds, and the rebalancing the asked node is doing.
    Members(MembersArgs),
    /// Ask the node at --endpoint to leave: its partitions move to the others first, then
    /// it reports `left` and stops.
    Leave(EndpointArgs),
    /// Remove a dead node at once (no eviction delay), through any member.
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Print aligned text or one JSON document.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// The name of the node to remove.
    node: String,
}

pub async fn run(command: ClusterCommand) -> Result<(), String> {
    match command {
        ClusterCommand::Members(args) => {
            let mut client = admin(&args.endpoint.endpoint).await?;
            let response = client.members(MembersRequest {}).await.map_err(describe)?.into_inner();
            let report = Report::from(response);
            match args.output {
                Output::Json => print_json(&report),
                Output::Text => print(&report.text()),
            }
        }
        ClusterCommand::Leave(args) => {
            let mut client = admin(&args.endpoint).await?;
            client.leave(LeaveRequest {}).await.map_err(describe)?;
            print(&format!(
                "{} is leaving: its partitions move to the other nodes, then it stops (watch `memo cluster members`)\n",
                args.endpoint
            ))
        }
        ClusterCommand::Remove(args) => {
            let mut client = admin(&args.endpoint.endpoint).await?;
            client.remove(RemoveRequest { node: args.node.clone() }).await.map_err(describe)?;
            print(&format!("{} removed: its partitions move to the other nodes\n", args.node))
        }
    }
}

/// The members as `memo cluster members` prints them; the JSON document of
/// `--output json`.
#[derive(Debug, Serialize)]
struct Report {
    node: String,
    cluster: String,
    members: Vec<Member>,
    moves: Moves,
}

#[derive(Debug, Serialize)]
struct Member {
    id: String,
    generation: u64,
    addr: String,
    state: String,
    partitions: u32,
}

#[derive(Debug, Serialize)]
struct Moves {
    in_flight: u32,
    queued: u32,
    keys_copied: u64,
}

impl From<MembersResponse> for Report {
    fn from(r: MembersResponse) -> Self {
        let moves = r.moves.unwrap_or_default();
        Report {
            node: r.node,
            cluster: r.cluster.map(|c| c.id).unwrap_or_default(),
            members: (r.members.into_iter())
                .map(|m| Member {
                    id: m.name,
                    generation: m.generation,
                    addr: m.address,
                    state: m.state,
                    partitions: m.partitions,
                })
                .collect(),
            moves: Moves { in_flight: moves.in_flight, queued: moves.queued, keys_copied: moves.keys_copied },
        }
    }
}

impl Report {
    fn text(&self) -> String {
        let headers = [
            ("ID", Align::Left),
            ("GENERATION", Align::Right),
            ("ADDRESS", Align::Left),
            ("STATE", Align::Left),
            ("PARTITIONS", Align::Right),
        ];
        let rows: Vec<Vec<String>> = (self.members.iter())
            .map(|m| {
                vec![m.id.clone(), m.generation.to_string(), m.addr.clone(), m.state.clone(), m.partitions.to_string()]
            })
            .collect();
        format!(
            "members as {} sees them (cluster {}):\n{}moves by {}: {} in flight, {} queued, {} keys copied\n",
            self.node,
            self.cluster,
            table(&headers, &rows),
            self.node,
            self.moves.in_flight,
            self.moves.queued,
            self.moves.keys_copied
        )
    }
}
