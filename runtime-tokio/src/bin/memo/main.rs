//! `memo`: run a node, a whole dev cluster, or talk to one.
//!
//! ```text
//! memo dev                                   # a 3-node cluster on 127.0.0.1:7001-7003
//! memo node run --id n1 --listen 0.0.0.0:7001 --initial-nodes n1=10.0.0.1:7001,... \
//!     --data-dir /var/lib/memo
//! memo kv upsert --endpoint 127.0.0.1:7001 hello world
//! memo kv get hello
//! memo status --endpoint 127.0.0.1:7001
//! memo node run --id n4 --listen 127.0.0.1:7004 --join 127.0.0.1:7001
//! memo cluster members --endpoint 127.0.0.1:7001
//! ```

mod client;
mod cluster;
mod dev;
mod kv;
mod node;
mod policy;
mod status;

/// mimalloc instead of glibc's malloc: a node allocates and frees many small buffers per
/// request (messages, keys, values), and glibc's malloc took about 13% of a loaded
/// cluster's CPU (docs/PERFORMANCE.md). Real builds only; the simulator keeps the default.
/// Built with `no_thp`: mimalloc does not ask for transparent huge pages, each of which
/// the kernel zeroes whole (2 MiB) at its first touch. On three durable nodes, with them,
/// that zeroing was 4% of the machine's CPU, and a node held 10-15 MiB more.
#[cfg(not(madsim))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// memo: a decentralized, elastic, resilient key-value store.
#[derive(Debug, Parser)]
#[command(name = "memo", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default: info for servers,
    /// warn for client commands).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MEMO_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    #[default]
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole cluster inside this process on loopback (memory silos, data lost at
    /// exit, unless --data-dir). For trying memo out and for development.
    Dev(dev::DevArgs),
    /// Run and manage a node.
    #[command(subcommand)]
    Node(Box<node::NodeCommand>),
    /// Read and write keys through a node's public API.
    Kv(kv::KvArgs),
    /// Show the cluster as one node sees it: its nodes and their links, how the
    /// partitions are spread over them, and the node's own counters.
    Status(status::StatusArgs),
    /// See and change the cluster's membership: members, leave, remove.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// See and change the cluster's policy table: how values are stored, by key prefix.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // A config file's log_format applies only if neither the flag nor its variable did.
    let log_format = match matches.value_source("log_format") {
        Some(ValueSource::DefaultValue) | None => None,
        Some(_) => Some(cli.log_format),
    };
    match run(cli.command, log_format).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `command`, logging in `format` if it was given (text if not).
async fn run(command: Command, format: Option<LogFormat>) -> Result<(), String> {
    match command {
        Command::Dev(args) => {
            init_logs(format.unwrap_or_default(), "info");
            dev::run(args).await
        }
        Command::Node(command) => {
            let node::NodeCommand::Run(args) = *command;
            // Before the logs: the config file may choose their format.
            let settings = node::Settings::load(args)?;
            init_logs(format.or(settings.log_format).unwrap_or_default(), "info");
            node::run(settings).await
        }
        Command::Kv(args) => {
            init_logs(format.unwrap_or_default(), "warn");
            kv::run(args).await
        }
        Command::Status(args) => {
            init_logs(format.unwrap_or_default(), "warn");
            status::run(args).await
        }
        Command::Cluster(command) => {
            init_logs(format.unwrap_or_default(), "warn");
            cluster::run(command).await
        }
        Command::Policy(command) => {
            init_logs(format.unwrap_or_default(), "warn");
            policy::run(command).await
        }
    }
}

fn init_logs(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Resolves when the process is asked to stop: Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(all(unix, not(madsim)))]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops memo"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A seed for the engine's RNG from the OS: std's `RandomState` keys come from the OS
/// generator (in simulation madsim intercepts that, so runs stay reproducible). The
/// RNG only jitters backoff, so this need not be cryptographic.
fn os_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}
