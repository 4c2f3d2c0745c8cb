//! Prometheus metrics, recorded through the `metrics` facade and served by
//! [`install_prometheus`] on an HTTP port of their own (`GET /metrics`, any path works).
//!
//! Until [`install_prometheus`] is called (tests, simulation, a node started without a
//! metrics address) every hook below returns at once without building a metric key,
//! and no sampler does any work. Install the exporter before starting nodes; hooks
//! called earlier are simply not counted.
//!
//! Every series carries a `node` label (the node's name), since `memo dev` runs several
//! nodes in one process.
//!
//! | metric | kind | labels | source |
//! |---|---|---|---|
//! | `memo_requests_total` | counter | node, rpc, code | each public RPC ([`crate::service`]) |
//! | `memo_request_duration_seconds` | histogram | node, rpc, code | each public RPC |
//! | `memo_paxos_rounds_total` | counter | node, path = fast, full, read, read_fallback | engine `Stats`, sampled |
//! | `memo_paxos_retries_total`, `memo_forwards_total`, `memo_forward_timeouts_total`, `memo_gc_rounds_total`, `memo_keys_dropped_total`, `memo_peer_errors_total`, `memo_transmit_dropped_total`, `memo_storage_errors_total` | counter | node | engine `Stats`, sampled |
//! | `memo_peer_queue_messages` | gauge | node, peer | outbound peer queues, sampled |
//! | `memo_peer_messages_dropped_total` | counter | node, peer | full or closed peer queue |
//! | `memo_fsync_duration_seconds` | histogram | — | one durable group commit (`Storage::commit`: writes + fsync), via [`timed_sync`] |
//! | `memo_commit_group_batches` | histogram | — | persist batches per group commit, via [`timed_sync`] |
//!
//! Engine counters are sampled every [`STATS_SAMPLE_INTERVAL`] and exported as absolute
//! values, so a scrape may lag by up to that interval.

use crate::Error;
use memo_engine::Stats;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::Code;

/// Public RPCs answered, by RPC and status code.
pub const REQUESTS_TOTAL: &str = "memo_requests_total";
/// Time to answer a public RPC, by RPC and status code.
pub const REQUEST_DURATION_SECONDS: &str = "memo_request_duration_seconds";
/// Paxos rounds by path: `fast` (one-round-trip write), `full` (phase 1 ran), `read`
/// (one-round-trip read), `read_fallback` (a read that needed an identity round).
pub const PAXOS_ROUNDS_TOTAL: &str = "memo_paxos_rounds_total";
/// Messages waiting in a peer's outbound queue.
pub const PEER_QUEUE_MESSAGES: &str = "memo_peer_queue_messages";
/// Messages dropped because a peer's outbound queue was full or closed.
pub const PEER_MESSAGES_DROPPED_TOTAL: &str = "memo_peer_messages_dropped_total";
/// Time of one durable group commit (the batches' writes and the fsync, for redb).
pub const FSYNC_DURATION_SECONDS: &str = "memo_fsync_duration_seconds";
/// Persist batches made durable by one `sync` (group commit size).
pub const COMMIT_GROUP_BATCHES: &str = "memo_commit_group_batches";

/// One of the engine's counters: metric name, help text, and the [`Stats`] field.
type EngineCounter = (&'static str, &'static str, fn(&Stats) -> u64);

/// The engine's other counters.
const ENGINE_COUNTERS: [EngineCounter; 9] = [
    ("memo_paxos_retries_total", "Paxos attempts that failed (conflict, timeout) and were retried.", |s| s.retries),
    ("memo_forwards_total", "Requests forwarded to a key's primary.", |s| s.forwards),
    ("memo_forward_timeouts_total", "Forwards whose primary did not answer in time.", |s| s.forward_timeouts),
    ("memo_gc_rounds_total", "Tombstones garbage-collected.", |s| s.gc_rounds),
    ("memo_keys_dropped_total", "Keys this node's acceptor dropped.", |s| s.keys_dropped),
    ("memo_peer_errors_total", "Peer messages refused before the protocol (malformed, wrong cluster).", |s| {
        s.peer_errors
    }),
    ("memo_transmit_dropped_total", "Messages the engine dropped because its transmit queue was full.", |s| {
        s.transmit_dropped
    }),
    ("memo_storage_errors_total", "Silo reads that failed.", |s| s.storage_errors),
    ("memo_read_hedges_total", "Reads that asked every member after the first quorum was slow.", |s| s.read_hedges),
];

/// How often each node's engine counters and peer queue depths are sampled.
pub const STATS_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Histogram buckets for durations, in seconds: 50 µs to 10 s.
#[cfg(not(madsim))]
const SECONDS_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Histogram buckets for group commit sizes (up to the committer's group bound).
#[cfg(not(madsim))]
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Set once an exporter is installed; every hook checks it first.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether metrics are being recorded.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Installs the process-wide Prometheus recorder and serves it over HTTP on `addr`
/// (plain text exposition format, any GET path). Call it once, inside the Tokio runtime
/// that runs the nodes and before starting them. Fails if `addr` cannot be bound or a
/// recorder is already installed. Not available in simulation.
#[cfg(not(madsim))]
pub fn install_prometheus(addr: SocketAddr) -> Result<(), Error> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

    let failed = |e: metrics_exporter_prometheus::BuildError| Error::Ops(format!("metrics on {addr}: {e}"));
    if enabled() {
        return Err(Error::Ops("a metrics exporter is already installed".into()));
    }
    let builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .map_err(failed)?
        .set_buckets_for_metric(Matcher::Full(COMMIT_GROUP_BATCHES.into()), &BATCH_BUCKETS)
        .map_err(failed)?;
    builder.install().map_err(failed)?;
    describe();
    ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

/// Simulation has no exporter: this always fails.
#[cfg(madsim)]
pub fn install_prometheus(addr: SocketAddr) -> Result<(), Error> {
    Err(Error::Ops(format!("no metrics exporter in simulation (asked for {addr})")))
}

/// Registers each metric's help text.
#[cfg(not(madsim))]
fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS_TOTAL, "Public RPCs answered, by RPC and status code.");
    describe_histogram!(REQUEST_DURATION_SECONDS, Unit::Seconds, "Time to answer a public RPC.");
    describe_counter!(PAXOS_ROUNDS_TOTAL, "Paxos rounds by path: fast, full, read, read_fallback.");
    for (name, help, _) in ENGINE_COUNTERS {
        describe_counter!(name, help);
    }
    describe_gauge!(PEER_QUEUE_MESSAGES, "Messages waiting in a peer's outbound queue.");
    describe_counter!(PEER_MESSAGES_DROPPED_TOTAL, "Messages dropped because a peer's outbound queue was full.");
    describe_histogram!(FSYNC_DURATION_SECONDS, Unit::Seconds, "Time of one durable group commit (writes and fsync).");
    describe_histogram!(COMMIT_GROUP_BATCHES, "Persist batches made durable by one group commit.");
}

/// Records one answered public RPC.
pub(crate) fn record_rpc(node: &Arc<str>, rpc: &'static str, code: Code, elapsed: Duration) {
    let code = crate::service::code_name(code);
    ::metrics::counter!(REQUESTS_TOTAL, "node" => node.clone(), "rpc" => rpc, "code" => code).increment(1);
    ::metrics::histogram!(REQUEST_DURATION_SECONDS, "node" => node.clone(), "rpc" => rpc, "code" => code)
        .record(elapsed.as_secs_f64());
}

/// Runs the durable commit of a group of `batches` persist batches, recording its
/// duration and the group size. The committer's hook:
/// `crate::metrics::timed_sync(group.len(), || storage.commit(group))?`.
pub fn timed_sync<T, E>(batches: usize, sync: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    if !enabled() {
        return sync();
    }
    let started = std::time::Instant::now();
    let outcome = sync();
    ::metrics::histogram!(FSYNC_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
    ::metrics::histogram!(COMMIT_GROUP_BATCHES).record(batches as f64);
    outcome
}

/// Counts a message dropped on the way to `peer`.
pub(crate) fn peer_message_dropped(node: &str, peer: &str) {
    if enabled() {
        ::metrics::counter!(PEER_MESSAGES_DROPPED_TOTAL, "node" => node.to_string(), "peer" => peer.to_string())
            .increment(1);
    }
}

/// Exports a node's engine counters as absolute values.
pub fn record_stats(node: &Arc<str>, stats: &Stats) {
    let paths = [
        ("fast", stats.fast_rounds),
        ("full", stats.full_rounds),
        ("read", stats.fast_reads),
        ("read_fallback", stats.read_fallbacks),
    ];
    for (path, rounds) in paths {
        ::metrics::counter!(PAXOS_ROUNDS_TOTAL, "node" => node.clone(), "path" => path).absolute(rounds);
    }
    for (name, _, field) in ENGINE_COUNTERS {
        ::metrics::counter!(name, "node" => node.clone()).absolute(field(stats));
    }
}

/// A node's sampler: every [`STATS_SAMPLE_INTERVAL`] while metrics are enabled, asks
/// the event loop for the engine's counters and reads each peer queue's depth. Holds
/// only weak handles on the queues, so it never keeps a link alive. Ends when the node
/// stops.
#[cfg(not(madsim))]
pub(crate) async fn sample(
    node: Arc<str>,
    control: tokio::sync::mpsc::Sender<crate::node::Control>,
    queues: Vec<(String, tokio::sync::mpsc::WeakSender<Vec<u8>>)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(STATS_SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => {}
        }
        if !enabled() {
            continue;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked = tokio::select! {
            _ = stop.changed() => return,
            sent = control.send(crate::node::Control::Stats(reply)) => sent,
        };
        if asked.is_err() {
            return;
        }
        let Ok(stats) = answer.await else { return };
        record_stats(&node, &stats);
        for (peer, queue) in &queues {
            let Some(queue) = queue.upgrade() else { continue };
            let depth = queue.max_capacity() - queue.capacity();
            ::metrics::gauge!(PEER_QUEUE_MESSAGES, "node" => node.clone(), "peer" => peer.clone()).set(depth as f64);
        }
    }
}
