//! `memo kv`: the public API from the command line. Exit code 0 on success; on an error
//! status, `error: CODE: message` on stderr and exit code 1.

use crate::client::{Output, RESPONSE_BYTES_MAX, connect, describe, print_json};
use clap::{Args, Subcommand};
use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{DeleteRequest, FetchRequest, InsertRequest, ListRequest, UpdateRequest, UpsertRequest};
use std::io::Write;
use tonic::transport::Channel;

#[derive(Debug, Args)]
pub struct KvArgs {
    /// The node to talk to (HOST:PORT or http://HOST:PORT).
    #[arg(long, global = true, env = "MEMO_ENDPOINT", default_value = "127.0.0.1:7001")]
    endpoint: String,

    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Store VALUE under KEY, which must not exist yet.
    Insert { key: String, value: String },
    /// Replace the value of KEY, which must exist.
    Update { key: String, value: String },
    /// Store VALUE under KEY, whether it exists or not.
    Upsert { key: String, value: String },
    /// Print the value of KEY.
    Get { key: String },
    /// Remove KEY.
    Delete { key: String },
    /// List keys (S3 ListObjects semantics), one per line; rolled-up prefixes too. With
    /// --output json, one JSON document: {"items", "prefixes", "truncated", "next_marker"}.
    List(ListArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Only keys after this one (exclusive; it need not exist).
    #[arg(long, default_value = "")]
    marker: String,
    /// Roll keys containing this (after the prefix) up into common prefixes.
    #[arg(long, default_value = "")]
    delimiter: String,
    /// Largest page (items plus prefixes); 0 means 1000.
    #[arg(long, default_value_t = 0)]
    max_keys: u64,
    /// Print the page as text lines or as one JSON document.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// A List page as `memo kv list --output json` prints it.
#[derive(Debug, serde::Serialize)]
struct ListPage<'a> {
    /// Keys, in order.
    items: Vec<&'a str>,
    /// Rolled-up common prefixes, in order.
    prefixes: &'a [String],
    /// Whether there is more after this page.
    truncated: bool,
    /// Where the next page starts (`--marker`), when truncated.
    next_marker: Option<&'a str>,
}

pub async fn run(args: KvArgs) -> Result<(), String> {
    let channel = connect(&args.endpoint).await?;
    let mut client = KeyValueStoreClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX);
    match args.command {
        KvCommand::Insert { key, value } => {
            let request = InsertRequest { key, value: value.into_bytes() };
            client.insert(request).await.map_err(describe)?;
            println!("OK");
        }
        KvCommand::Update { key, value } => {
            let request = UpdateRequest { key, value: value.into_bytes() };
            client.update(request).await.map_err(describe)?;
            println!("OK");
        }
        KvCommand::Upsert { key, value } => {
            let request = UpsertRequest { key, value: value.into_bytes() };
            client.upsert(request).await.map_err(describe)?;
            println!("OK");
        }
        KvCommand::Get { key } => {
            let response = client.fetch(FetchRequest { key }).await.map_err(describe)?;
            print_value(&response.into_inner().value)?;
        }
        KvCommand::Delete { key } => {
            client.delete(DeleteRequest { key }).await.map_err(describe)?;
            println!("OK");
        }
        KvCommand::List(list) => run_list(&mut client, list).await?,
    }
    Ok(())
}

async fn run_list(client: &mut KeyValueStoreClient<Channel>, args: ListArgs) -> Result<(), String> {
    let request =
        ListRequest { prefix: args.prefix, marker: args.marker, delimiter: args.delimiter, max_keys: args.max_keys };
    let page = client.list(request).await.map_err(describe)?.into_inner();
    // Items and prefixes are each sorted; merged, in key order, as S3 does, the last one
    // is where the next page starts.
    let mut lines: Vec<&str> = page.items.iter().map(|item| item.key.as_str()).collect();
    lines.extend(page.prefixes.iter().map(String::as_str));
    lines.sort_unstable();
    let next_marker = page.truncated.then(|| lines.last().copied().unwrap_or_default());
    if args.output == Output::Json {
        let items = page.items.iter().map(|item| item.key.as_str()).collect();
        return print_json(&ListPage { items, prefixes: &page.prefixes, truncated: page.truncated, next_marker });
    }
    let mut text = String::new();
    for line in &lines {
        text.push_str(line);
        text.push('\n');
    }
    crate::client::print(&text)?;
    if let Some(marker) = next_marker {
        eprintln!("(truncated: continue with --marker '{marker}')");
    }
    Ok(())
}

/// Writes a value as raw bytes followed by a newline.
fn print_value(value: &[u8]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    (out.write_all(value).and_then(|()| out.write_all(b"\n")))
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the value: {e}"))
}
