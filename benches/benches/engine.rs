//! Engine-only benchmarks: the CPU cost of memo's sans-IO core, all three nodes included.
//!
//! Three `Node<Arc<MemoryStorage>>` live in one thread and are pumped directly, with no
//! runtime, network, disk or simulator in between: after every input a node is drained in
//! the documented order — every persist batch is applied to its memory silo and reported
//! durable at once (one `handle_persisted` for the batches drained together, as a group
//! commit does), then its envelopes are queued for their receivers, then its replies are
//! counted. Envelopes are handed over as values (`handle_envelope`), or, in the `_codec`
//! variant, encoded and decoded with `memo_engine::message` so the codec's share shows.
//! Time is a fake `Instant` advanced by [`STEP`] per operation (so the timer table holds
//! what it would hold at that rate); the OS clock is never read.
//!
//! Keys are 16 bytes, values 100 bytes. Each benchmark checks, outside the timed loop, that
//! it measured what it names (fast rounds, full rounds, fast reads) and that every request
//! succeeded.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use memo_engine::message::{self, Envelope, Message};
use memo_engine::placement::{PartitionMap, partition_of};
use memo_engine::storage;
use memo_engine::{ClusterParams, Config, Instant, MemoryStorage, Node, NodeId, Request, RequestId, Storage};
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const NODES: usize = 3;
const PARTITIONS: u32 = 256;
const KEYS: usize = 1024;
const VALUE_BYTES: usize = 100;
const BATCH: usize = 64;
/// Fake time per operation: 5 µs, the goal's 200,000 operations per second.
const STEP: Duration = Duration::from_micros(5);

/// An envelope on its way: as a value, or as bytes (codec variant).
// Boxing the envelope would add an allocation per message to what is measured; one run
// only ever uses one variant, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Wire {
    Value(Envelope),
    Bytes(Vec<u8>),
}

struct Cluster {
    nodes: Vec<Node<Arc<MemoryStorage>>>,
    ids: Vec<NodeId>,
    net: VecDeque<(usize, Wire)>,
    codec: bool,
    now: Instant,
    next_request: u64,
    /// Replies received, and how many of them were errors.
    answered: u64,
    failed: u64,
}

/// Summed counters of every node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    fast_rounds: u64,
    full_rounds: u64,
    fast_reads: u64,
    read_fallbacks: u64,
    retries: u64,
    forwards: u64,
}

impl Cluster {
    fn new(codec: bool) -> Self {
        let ids: Vec<NodeId> = (0..NODES).map(|i| NodeId::initial(format!("n{i}"))).collect();
        let params =
            ClusterParams { partitions: PARTITIONS, replication: 3, initial_nodes: ids.clone(), token: "bench".into() };
        let now = Instant::from_nanos(1_000_000_000);
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let cfg = Config::new(id.clone(), params.clone());
                Node::new(cfg, Arc::new(MemoryStorage::new()), i as u64, now).expect("node starts")
            })
            .collect();
        let mut c = Cluster { nodes, ids, net: VecDeque::new(), codec, now, next_request: 0, answered: 0, failed: 0 };
        for i in 0..NODES {
            c.drain(i);
        }
        c.pump();
        c
    }

    fn map(&self) -> &PartitionMap {
        self.nodes[0].map()
    }

    fn index_of(&self, id: &NodeId) -> usize {
        self.ids.iter().position(|n| n == id).expect("a node of the cluster")
    }

    /// The node index of `key`'s primary.
    fn primary(&self, key: &str) -> usize {
        self.index_of(self.map().config_of(key.as_bytes()).primary())
    }

    /// Drains node `i` in the documented order.
    fn drain(&mut self, i: usize) {
        let Cluster { nodes, ids, net, codec, now, answered, failed, .. } = self;
        let node = &mut nodes[i];
        loop {
            let mut last = None;
            while let Some(batch) = node.poll_persist() {
                node.storage().write(&batch).expect("memory write");
                last = Some(batch.id);
            }
            let Some(batch) = last else { break };
            node.handle_persisted(batch, *now);
        }
        while let Some(t) = node.poll_transmit() {
            let to = ids.iter().position(|n| n == t.to()).expect("known node");
            let wire = if *codec { Wire::Bytes(message::encode(&t.envelope)) } else { Wire::Value(t.envelope) };
            net.push_back((to, wire));
        }
        while let Some(r) = node.poll_reply() {
            *answered += 1;
            if r.result.is_err() {
                *failed += 1;
            }
            black_box(r);
        }
    }

    /// Delivers messages until none is left.
    fn pump(&mut self) {
        while let Some((to, wire)) = self.net.pop_front() {
            let now = self.now;
            match wire {
                Wire::Value(e) => self.nodes[to].handle_envelope(e, now),
                Wire::Bytes(b) => self.nodes[to].handle_peer_bytes(&b, now),
            }
            .expect("valid envelope");
            self.drain(to);
        }
    }

    /// Advances fake time and fires due timers.
    fn tick(&mut self, by: Duration) {
        self.now = self.now + by;
        for i in 0..NODES {
            if self.nodes[i].poll_timeout().is_some_and(|(at, _)| at <= self.now) {
                self.nodes[i].handle_timeout(self.now);
                self.drain(i);
            }
        }
    }

    fn submit(&mut self, node: usize, request: Request) {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        self.nodes[node].handle_request(id, request, self.now);
        self.drain(node);
    }

    /// One request at a time: submit, pump until its reply.
    fn call(&mut self, node: usize, request: Request) {
        let answered = self.answered;
        self.tick(STEP);
        self.submit(node, request);
        self.pump();
        debug_assert_eq!(self.answered, answered + 1, "a reply once the network is idle");
    }

    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for n in &self.nodes {
            let s = n.stats();
            t.fast_rounds += s.fast_rounds;
            t.full_rounds += s.full_rounds;
            t.fast_reads += s.fast_reads;
            t.read_fallbacks += s.read_fallbacks;
            t.retries += s.retries;
            t.forwards += s.forwards;
        }
        t
    }

    fn assert_all_succeeded(&self, what: &str) {
        assert_eq!(self.answered, self.next_request, "{what}: every request answered");
        assert_eq!(self.failed, 0, "{what}: {} requests failed", self.failed);
        assert!(self.net.is_empty(), "{what}: the network is idle");
    }
}

/// 16-byte keys.
fn key(prefix: &str, i: u64) -> String {
    let k = format!("{prefix}{i:0width$}", width = 16 - prefix.len());
    debug_assert_eq!(k.len(), 16);
    k
}

fn value() -> Vec<u8> {
    vec![0xab; VALUE_BYTES]
}

/// A cluster where each of [`KEYS`] keys was written once at its primary, so each has a
/// fast-path entry there; the keys and their primaries.
fn warm(codec: bool) -> (Cluster, Vec<(String, usize)>) {
    let mut c = Cluster::new(codec);
    let keys: Vec<(String, usize)> = (0..KEYS as u64)
        .map(|i| {
            let k = key("key-", i);
            let p = c.primary(&k);
            (k, p)
        })
        .collect();
    for (k, p) in &keys {
        c.call(*p, Request::upsert(k.clone(), value()));
    }
    let t = c.totals();
    assert_eq!(t.full_rounds, KEYS as u64, "each key's first write runs phase 1");
    assert_eq!(c.answered, KEYS as u64);
    c.assert_all_succeeded("warm-up");
    (c, keys)
}

fn fast_path_write(crit: &mut Criterion) {
    let mut group = crit.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    for codec in [false, true] {
        let (mut c, keys) = warm(codec);
        let before = c.totals();
        let mut writes = 0u64;
        let name = if codec { "fast_path_write_codec" } else { "fast_path_write" };
        group.bench_function(name, |b| {
            b.iter(|| {
                let (k, p) = &keys[writes as usize % KEYS];
                c.call(*p, Request::upsert(k.clone(), value()));
                writes += 1;
            })
        });
        let after = c.totals();
        assert_eq!(after.fast_rounds - before.fast_rounds, writes, "{name}: every write took the fast path");
        assert_eq!(after.full_rounds, before.full_rounds, "{name}: no phase 1");
        assert_eq!(after.forwards, 0, "{name}: submitted at the primary");
        assert_eq!(after.retries, 0, "{name}: no retries");
        c.assert_all_succeeded(name);
    }
    group.finish();
}

fn full_round_write(crit: &mut Criterion) {
    let mut group = crit.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    let mut c = Cluster::new(false);
    let map = c.map().clone();
    let ids: Vec<NodeId> = c.ids.clone();
    let mut fresh = 0u64;
    let before = c.totals();
    let mut writes = 0u64;
    group.bench_function("full_round_write", |b| {
        b.iter_batched(
            || {
                fresh += 1;
                let k = key("new-", fresh);
                let primary = map.config_of(k.as_bytes()).primary();
                let p = ids.iter().position(|n| n == primary).expect("known node");
                (k, p)
            },
            |(k, p)| {
                c.call(p, Request::insert(k, value()));
                writes += 1;
            },
            BatchSize::SmallInput,
        )
    });
    let after = c.totals();
    assert_eq!(after.full_rounds - before.full_rounds, writes, "every Insert of a fresh key ran phase 1");
    assert_eq!(after.fast_rounds, before.fast_rounds, "no fast path");
    assert_eq!(after.retries, 0, "no retries");
    c.assert_all_succeeded("full_round_write");
    group.finish();
}

fn linearizable_read(crit: &mut Criterion) {
    let mut group = crit.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    let (mut c, keys) = warm(false);
    let before = c.totals();
    let mut reads = 0u64;
    group.bench_function("linearizable_read", |b| {
        b.iter(|| {
            let (k, _) = &keys[reads as usize % KEYS];
            // Reads are coordinated by whichever node receives them.
            c.call(reads as usize % NODES, Request::fetch(k.clone()));
            reads += 1;
        })
    });
    let after = c.totals();
    assert_eq!(after.fast_reads - before.fast_reads, reads, "every read took one round trip");
    assert_eq!(after.read_fallbacks, before.read_fallbacks, "no fallback");
    assert_eq!(after.full_rounds, before.full_rounds, "no write round");
    assert_eq!(after.fast_rounds, before.fast_rounds, "no write round");
    c.assert_all_succeeded("linearizable_read");
    group.finish();
}

fn batched_fast_path_write(crit: &mut Criterion) {
    let mut group = crit.benchmark_group("engine");
    group.throughput(Throughput::Elements(BATCH as u64));
    let (mut c, keys) = warm(false);
    let before = c.totals();
    let mut batches = 0u64;
    group.bench_function("batched_fast_path_write", |b| {
        b.iter(|| {
            let first = (batches as usize * BATCH) % KEYS;
            let answered = c.answered;
            c.tick(STEP * BATCH as u32);
            for (k, p) in &keys[first..first + BATCH] {
                c.submit(*p, Request::upsert(k.clone(), value()));
            }
            c.pump();
            debug_assert_eq!(c.answered, answered + BATCH as u64);
            batches += 1;
        })
    });
    let after = c.totals();
    assert_eq!(after.fast_rounds - before.fast_rounds, batches * BATCH as u64, "every write took the fast path");
    assert_eq!(after.full_rounds, before.full_rounds, "no phase 1");
    assert_eq!(after.retries, 0, "no retries");
    c.assert_all_succeeded("batched_fast_path_write");
    group.finish();
}

/// A warm cluster whose first key was written often enough to fill its state's
/// recent-writes list (steady state); the key and its primary.
fn steady_key() -> (Cluster, String, usize) {
    let (mut c, keys) = warm(false);
    let (k, p) = keys[0].clone();
    for _ in 0..2 * memo_engine::kv::RECENT_OPS_MAX {
        c.call(p, Request::upsert(k.clone(), value()));
    }
    (c, k, p)
}

/// A real Accept envelope, as the primary sends it on the fast path in steady state.
fn accept_envelope() -> Envelope {
    let (mut c, k, p) = steady_key();
    c.tick(STEP);
    c.submit(p, Request::upsert(k, value()));
    let accept = c
        .net
        .iter()
        .find_map(|(_, w)| match w {
            Wire::Value(e) if matches!(e.message, Message::Accept { .. }) => Some(e.clone()),
            _ => None,
        })
        .expect("the primary sends Accept to its peers");
    c.pump();
    accept
}

/// A register as an acceptor stores it after many writes (its recent-writes list full).
fn stored_register() -> Vec<u8> {
    let (c, k, p) = steady_key();
    let sk = storage::register_key(partition_of(k.as_bytes(), PARTITIONS), k.as_bytes());
    let bytes = c.nodes[p].storage().get(&sk).expect("memory read").expect("the primary stores the key");
    let register = storage::decode_register(&bytes).expect("a valid register");
    let recent = register.accepted.as_ref().and_then(|a| a.state.as_ref()).map_or(0, |s| s.recent().len());
    assert_eq!(recent, memo_engine::kv::RECENT_OPS_MAX);
    bytes
}

fn codec(crit: &mut Criterion) {
    let envelope = accept_envelope();
    let bytes = message::encode(&envelope);
    let stored = stored_register();
    let register = storage::decode_register(&stored).expect("a valid register");
    let mut group = crit.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    // What every acceptor does at least twice per write (Accept, Commit): decode the
    // stored register, encode the new one.
    group.bench_function("register_encode", |b| b.iter(|| storage::encode_register(black_box(&register))));
    group.bench_function("register_decode", |b| {
        b.iter(|| storage::decode_register(black_box(&stored)).expect("decodes"))
    });
    group.bench_function("accept_encode", |b| b.iter(|| message::encode(black_box(&envelope))));
    group.bench_function("accept_decode", |b| b.iter(|| message::decode(black_box(&bytes)).expect("decodes")));
    group.bench_function("accept_encode_decode", |b| {
        b.iter(|| message::decode(&message::encode(black_box(&envelope))).expect("decodes"))
    });
    group.finish();
    assert_eq!(message::decode(&bytes), Ok(envelope));
    println!(
        "codec sizes: Accept envelope {} bytes, stored register {} bytes (value {VALUE_BYTES})",
        bytes.len(),
        stored.len()
    );
}

criterion_group!(benches, fast_path_write, full_round_write, linearizable_read, batched_fast_path_write, codec);
criterion_main!(benches);
