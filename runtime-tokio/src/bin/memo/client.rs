//! What the client commands (`memo kv`, `memo status`, `memo cluster`, `memo policy`) share: connecting to a node,
//! describing errors, and printing what they list as aligned text or as JSON.

use clap::ValueEnum;
use memo_node::service::code_name;
use memo_proto::admin::admin_client::AdminClient;
use std::io::Write;
use std::time::Duration;
use tonic::Status;
use tonic::transport::Channel;

/// How long connecting to the endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take (the engine answers within its request deadline).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted: a List page of the largest size with the longest keys, or
/// a status listing a million partitions.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Columns of a text table are separated by this many spaces.
const COLUMN_GAP: usize = 2;

/// How a command that lists things prints them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable lines and aligned columns.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// A channel to the node at `endpoint` (`HOST:PORT` or `http://HOST:PORT`).
pub async fn connect(endpoint: &str) -> Result<Channel, String> {
    let uri = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {}", memo_node::peer::error_chain(&e)))
}

/// An admin client (`memo.admin.Admin`) of the node at `endpoint`.
pub async fn admin(endpoint: &str) -> Result<AdminClient<Channel>, String> {
    let channel = connect(endpoint).await?;
    Ok(AdminClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX))
}

/// The node an admin command asks.
#[derive(Debug, clap::Args)]
pub struct EndpointArgs {
    /// The node to ask (HOST:PORT or http://HOST:PORT).
    #[arg(long, env = "MEMO_ENDPOINT", default_value = "127.0.0.1:7001")]
    pub endpoint: String,
}

/// `CODE: message`, e.g. `NOT_FOUND: key not found`.
pub fn describe(status: Status) -> String {
    format!("{}: {}", code_name(status.code()), status.message())
}

/// Writes `text` to stdout. A failed write (a closed pipe) is an error: the output of a
/// listing command is the point of running it.
pub fn print(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    (out.write_all(text.as_bytes()).and_then(|()| out.flush())).map_err(|e| format!("cannot write the output: {e}"))
}

/// Prints `value` as one pretty JSON document followed by a newline.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| format!("cannot encode JSON: {e}"))?;
    text.push('\n');
    print(&text)
}

/// Where a column's cells sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Renders `rows` under `headers` as aligned columns, one line each, without trailing
/// spaces. Rows shorter than the headers leave their last cells empty.
pub fn table(headers: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|(name, _)| name.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|(name, _)| (*name).to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, ((_, align), width)) in headers.iter().zip(&widths).enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            let pad = width - cell.chars().count();
            if i > 0 {
                line.push_str(&" ".repeat(COLUMN_GAP));
            }
            match align {
                Align::Left => line.push_str(&format!("{cell}{}", " ".repeat(pad))),
                Align::Right => line.push_str(&format!("{}{cell}", " ".repeat(pad))),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims_line_ends() {
        let rows = vec![
            vec!["n1".to_string(), "5".to_string(), "long note".to_string()],
            vec!["node-2".to_string(), "123".to_string(), String::new()],
        ];
        let text = table(&[("NODE", Align::Left), ("N", Align::Right), ("NOTE", Align::Left)], &rows);
        assert_eq!(text, "NODE      N  NOTE\nn1        5  long note\nnode-2  123\n");
    }
}
