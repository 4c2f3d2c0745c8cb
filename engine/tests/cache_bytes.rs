//! The caches' byte counts against the heap they take.
//!
//! The register cache and the proposer's fast-path state are bounded in bytes, and a
//! node's memory is planned from those bounds (docs/OPERATIONS.md, "Sizing memory and
//! disk"), so their counts must not fall short of what the entries take. This binary
//! counts every allocation (its own global allocator, hence one test alone in its file)
//! and compares a cluster whose caches keep everything with one whose caches keep
//! nothing, after the same writes.

use memo_engine::message::Envelope;
use memo_engine::{ClusterParams, Config, Instant, MemoryStorage, Node, NodeId, Request, RequestId, Storage};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;
use std::collections::VecDeque;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type N = Node<Arc<MemoryStorage>>;

/// Bytes allocated and not freed.
fn heap() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64 + s.bytes_reallocated as i64
}

/// What a cluster's caches count and what its heap grew by.
struct Measured {
    heap: i64,
    registers: usize,
    register_bytes: usize,
    proposer_bytes: usize,
}

/// Three nodes write each of `keys` keys `passes` times (16-byte keys, 100-byte values),
/// each write at the key's primary, delivering messages and persisting batches at once.
fn run(keys: usize, passes: usize, register_cache: usize, proposer: usize) -> Measured {
    let start = heap();
    let ids: Vec<NodeId> = (0..3).map(|i| NodeId::initial(format!("n{i}"))).collect();
    let params = ClusterParams { partitions: 64, replication: 3, initial_nodes: ids.clone(), token: "t".into() };
    let storages: Vec<Arc<MemoryStorage>> = (0..3).map(|_| Arc::new(MemoryStorage::new())).collect();
    let mut nodes: Vec<N> = (0..3)
        .map(|i| {
            let mut cfg = Config::new(ids[i].clone(), params.clone());
            cfg.register_cache_bytes_max = register_cache;
            cfg.proposer_bytes_max = proposer;
            cfg.proposer_keys_max = if proposer == 0 { 0 } else { usize::MAX };
            Node::new(cfg, storages[i].clone(), i as u64, Instant::ZERO).unwrap()
        })
        .collect();
    let names: Vec<String> = (0..keys).map(|i| format!("key-{i:012}")).collect();
    let primaries: Vec<usize> = names
        .iter()
        .map(|k| ids.iter().position(|n| n == nodes[0].map().config_of(k.as_bytes()).primary()).unwrap())
        .collect();
    let mut net: VecDeque<(usize, Envelope)> = VecDeque::new();
    let mut now = 1_000u64;
    let mut answered = 0;
    for i in 0..keys * passes {
        let k = i % keys;
        now += 5_000;
        let at = Instant::from_nanos(now);
        let p = primaries[k];
        nodes[p].handle_request(RequestId(i as u64), Request::upsert(names[k].clone(), vec![7u8; 100]), at);
        let mut pending = vec![p];
        while let Some(n) = pending.pop() {
            loop {
                let mut progressed = false;
                while let Some(b) = nodes[n].poll_persist() {
                    storages[n].write(&b).unwrap();
                    nodes[n].handle_persisted(b.id, at);
                    progressed = true;
                }
                while let Some(t) = nodes[n].poll_transmit() {
                    net.push_back((ids.iter().position(|x| x == t.to()).unwrap(), t.envelope));
                    progressed = true;
                }
                while nodes[n].poll_reply().is_some() {
                    answered += 1;
                }
                if !progressed {
                    break;
                }
            }
            while let Some((to, env)) = net.pop_front() {
                nodes[to].handle_envelope(env, at).unwrap();
                pending.push(to);
            }
        }
    }
    assert_eq!(answered, keys * passes, "every write answered");
    Measured {
        heap: heap() - start,
        registers: nodes.iter().map(|n| n.registers_cached().0).sum(),
        register_bytes: nodes.iter().map(|n| n.registers_cached().1).sum(),
        proposer_bytes: nodes.iter().map(|n| n.proposer_bytes()).sum(),
    }
}

/// `counted` covers the heap the cache took, and by at most a quarter more (the size
/// classes the count rounds to, which this allocator may not use).
fn assert_honest(what: &str, counted: usize, heap: i64) {
    let counted = counted as i64;
    eprintln!("{what}: counts {counted} bytes for a heap of {heap}");
    assert!(counted >= heap, "{what}: counts {counted} bytes for a heap of {heap}");
    assert!(counted <= heap + heap / 4, "{what}: counts {counted} bytes for a heap of only {heap}");
}

#[test]
fn the_caches_count_at_least_the_heap_they_take() {
    const KEYS: usize = 3_000;
    for passes in [1, 3] {
        let none = run(KEYS, passes, 0, 0);
        // Caches bounded at 0 still hold a few entries (the proposer keeps the key it
        // just wrote; the register cache, writes not durable yet).
        assert!(none.registers <= 9 && none.proposer_bytes < 4096, "{} registers cached", none.registers);
        let registers = run(KEYS, passes, usize::MAX, 0);
        assert_eq!(registers.registers, 3 * KEYS, "every replica of every key cached");
        let counted = registers.register_bytes - none.register_bytes;
        assert_honest(&format!("register cache, {passes} passes"), counted, registers.heap - none.heap);
        let proposer = run(KEYS, passes, 0, usize::MAX);
        let counted = proposer.proposer_bytes - none.proposer_bytes + proposer.register_bytes - none.register_bytes;
        assert_honest(&format!("proposer, {passes} passes"), counted, proposer.heap - none.heap);
    }
}
