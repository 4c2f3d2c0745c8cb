//! `memo kv`: the public API from the command line. Exit code 0 on success; on an error
//! status, `error: CODE: message` on stderr and exit code 1.

use crate::client::{Output, RESPONSE_BYTES_MAX, connect, describe, print_json};
use clap::{Args, Subcommand};
use memo_proto::kvs::key_value_store_client::KeyValueStoreClient;
use memo_proto::kvs::{
    DeleteRequest, FetchRequest, InsertRequest, ListRequest, ListVersionsRequest, UpdateRequest, UpsertRequest,
    VersionInfo,
};
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
    /// Print the value of KEY, or one of the versions it keeps.
    #[command(disable_version_flag = true)]
    Get {
        key: String,
        /// Print this version (a number from `memo kv versions`) instead of the current value.
        #[arg(long, value_name = "N")]
        version: Option<u64>,
    },
    /// List the versions KEY keeps (see `memo policy set --versions`), oldest first:
    /// number, size in bytes, when it was written (UTC), and whether it is a Delete.
    Versions {
        key: String,
        /// Print aligned text or one JSON document.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
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
        KvCommand::Get { key, version } => {
            let response = client.fetch(FetchRequest { key, version: version.unwrap_or(0) }).await.map_err(describe)?;
            print_value(&response.into_inner().value)?;
        }
        KvCommand::Versions { key, output } => {
            let response = client.list_versions(ListVersionsRequest { key }).await.map_err(describe)?;
            print_versions(&response.into_inner().versions, output)?;
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

/// One version as `memo kv versions --output json` prints it.
#[derive(Debug, serde::Serialize)]
struct VersionLine {
    number: u64,
    size: u64,
    deleted: bool,
    /// Milliseconds since the Unix epoch (0: unknown).
    time_ms: u64,
}

fn print_versions(versions: &[VersionInfo], output: Output) -> Result<(), String> {
    if output == Output::Json {
        let lines: Vec<VersionLine> = (versions.iter())
            .map(|v| VersionLine { number: v.number, size: v.size, deleted: v.deleted, time_ms: v.time_ms })
            .collect();
        return print_json(&lines);
    }
    use crate::client::{Align, table};
    let headers =
        [("VERSION", Align::Right), ("SIZE", Align::Right), ("WRITTEN (UTC)", Align::Left), ("", Align::Left)];
    let rows: Vec<Vec<String>> = (versions.iter())
        .map(|v| {
            let when = if v.time_ms == 0 { "-".to_string() } else { utc(v.time_ms) };
            let what = if v.deleted { "deleted" } else { "" };
            vec![v.number.to_string(), v.size.to_string(), when, what.to_string()]
        })
        .collect();
    crate::client::print(&table(&headers, &rows))
}

/// `YYYY-MM-DD HH:MM:SS.mmm` for milliseconds since the Unix epoch (proleptic Gregorian).
fn utc(ms: u64) -> String {
    let (days, rem) = (ms / 86_400_000, ms % 86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{milli:03}")
}

/// Writes a value as raw bytes followed by a newline.
fn print_value(value: &[u8]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    (out.write_all(value).and_then(|()| out.write_all(b"\n")))
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the value: {e}"))
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(1), "1970-01-01 00:00:00.001");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(utc(1_796_601_599_999), "2026-12-06 23:59:59.999");
    }
}
