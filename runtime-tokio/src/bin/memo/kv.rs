//! `memo kv`: the public API from the command line. Exit code 0 on success; on an error
//! status, `error: CODE: message` on stderr and exit code 1.

use clap::{Args, Subcommand};
use memo_node::service::code_name;
use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{DeleteRequest, FetchRequest, InsertRequest, ListRequest, UpdateRequest, UpsertRequest};
use std::io::Write;
use std::time::Duration;
use tonic::Status;
use tonic::transport::Channel;

/// How long connecting to the endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take (the engine answers within its request deadline).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted: a List page of the largest size with the longest keys.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

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
    /// List keys (S3 ListObjects semantics), one per line; rolled-up prefixes too.
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
}

pub async fn run(args: KvArgs) -> Result<(), String> {
    let mut client = connect(&args.endpoint).await?;
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
    // Items and prefixes are each sorted; print them merged, in key order, as S3 does.
    let mut lines: Vec<&str> = page.items.iter().map(|item| item.key.as_str()).collect();
    lines.extend(page.prefixes.iter().map(String::as_str));
    lines.sort_unstable();
    for line in &lines {
        println!("{line}");
    }
    if page.truncated {
        let last = lines.last().copied().unwrap_or_default();
        eprintln!("(truncated: continue with --marker '{last}')");
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

async fn connect(endpoint: &str) -> Result<KeyValueStoreClient<Channel>, String> {
    let uri = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let channel = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {}", source_chain(&e)))?;
    Ok(KeyValueStoreClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX))
}

/// `CODE: message`, e.g. `NOT_FOUND: key not found`.
fn describe(status: Status) -> String {
    format!("{}: {}", code_name(status.code()), status.message())
}

/// An error with its causes, which is where transport errors keep the useful part.
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
