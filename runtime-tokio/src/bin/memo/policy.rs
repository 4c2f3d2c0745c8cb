//! `memo policy`: the cluster's policy table (`memo.admin.Admin/PolicyList`, `PolicySet`,
//! `PolicyDelete`; docs/OPERATIONS.md, "Policies"). Exit code 0 on success; on an error,
//! or when a change is stored but some member did not confirm it, `error: ...` on stderr
//! and exit code 1.

use crate::client::{Align, EndpointArgs, Output, admin, describe, print, print_json, table};
use clap::{Args, Subcommand};
use memo_node::policy::Compression;
use memo_proto::admin::{PolicyChangeResponse, PolicyDeleteRequest, PolicyListRequest, PolicyRule, PolicySetRequest};
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Set the rule of a key prefix (the longest matching prefix wins; "" is the
    /// default for every key). It applies to writes made after it; stored values keep
    /// their encoding.
    Set(SetArgs),
    /// List the rules, as stored in the cluster.
    List(ListArgs),
    /// Delete the rule of a key prefix.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// The key prefix ("" for every key).
    prefix: String,
    /// How new values under the prefix are compressed: none, lz4, zstd or zstd:LEVEL.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// Whether new values under the prefix are encrypted at rest (every node needs the
    /// keys: --encryption-key-file).
    #[arg(long, value_enum, default_value_t = Switch::Off)]
    encryption: Switch,
    /// How many versions of each key under the prefix to keep, the current one included
    /// (1: no history; at most 100). Read them with `memo kv versions` and
    /// `memo kv get --version`.
    #[arg(long, default_value_t = 1)]
    versions: u64,
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Print aligned text or one JSON document.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// The key prefix whose rule goes.
    prefix: String,
}

pub async fn run(command: PolicyCommand) -> Result<(), String> {
    match command {
        PolicyCommand::Set(args) => {
            let rule = PolicyRule {
                prefix: args.prefix.clone(),
                compression: args.compression.to_string(),
                encryption: args.encryption == Switch::On,
                versions: args.versions,
            };
            let mut client = admin(&args.endpoint.endpoint).await?;
            let answer = client.policy_set(PolicySetRequest { rule: Some(rule) }).await.map_err(describe)?;
            changed(&format!("rule for {:?} set", args.prefix), answer.into_inner())
        }
        PolicyCommand::Delete(args) => {
            let mut client = admin(&args.endpoint.endpoint).await?;
            let request = PolicyDeleteRequest { prefix: args.prefix.clone() };
            let answer = client.policy_delete(request).await.map_err(describe)?;
            changed(&format!("rule for {:?} deleted", args.prefix), answer.into_inner())
        }
        PolicyCommand::List(args) => {
            let mut client = admin(&args.endpoint.endpoint).await?;
            let answer = client.policy_list(PolicyListRequest {}).await.map_err(describe)?.into_inner();
            let report = Report {
                revision: answer.revision,
                node_revision: answer.node_revision,
                rules: (answer.rules.into_iter())
                    .map(|r| Rule {
                        prefix: r.prefix,
                        compression: r.compression,
                        encryption: r.encryption,
                        versions: r.versions.max(1),
                    })
                    .collect(),
                keys: answer.keys.into_iter().map(|k| DataKey { name: k.name, fingerprint: k.fingerprint }).collect(),
            };
            match args.output {
                Output::Json => print_json(&report),
                Output::Text => print(&report.text()),
            }
        }
    }
}

/// Reports a stored change; an error if some member did not confirm it.
fn changed(what: &str, answer: PolicyChangeResponse) -> Result<(), String> {
    if answer.unconfirmed.is_empty() {
        return print(&format!("{what} (revision {}), confirmed by every member\n", answer.revision));
    }
    Err(format!(
        "{what} (revision {}), but not confirmed by {}: they apply it once they reach the cluster again \
         (each node rereads the table every 10 s); writes through them may use the old rule until then",
        answer.revision,
        answer.unconfirmed.join(", ")
    ))
}

/// The table as `memo policy list` prints it; the JSON document of `--output json`.
#[derive(Debug, Serialize)]
struct Report {
    revision: u64,
    node_revision: u64,
    rules: Vec<Rule>,
    keys: Vec<DataKey>,
}

#[derive(Debug, Serialize)]
struct Rule {
    prefix: String,
    compression: String,
    encryption: bool,
    versions: u64,
}

#[derive(Debug, Serialize)]
struct DataKey {
    name: String,
    fingerprint: String,
}

impl Report {
    fn text(&self) -> String {
        let headers = [
            ("PREFIX", Align::Left),
            ("COMPRESSION", Align::Left),
            ("ENCRYPTION", Align::Left),
            ("VERSIONS", Align::Right),
        ];
        let on_off = |on: bool| if on { "on" } else { "off" }.to_string();
        let rows: Vec<Vec<String>> = (self.rules.iter())
            .map(|r| {
                vec![format!("{:?}", r.prefix), r.compression.clone(), on_off(r.encryption), r.versions.to_string()]
            })
            .collect();
        let rules = if rows.is_empty() {
            "no rules: every node compresses as its --compression says\n".to_string()
        } else {
            table(&headers, &rows)
        };
        let keys: String =
            self.keys.iter().map(|k| format!("data key {} (fingerprint {})\n", k.name, k.fingerprint)).collect();
        format!("policy table, revision {}:\n{rules}{keys}", self.revision)
    }
}
