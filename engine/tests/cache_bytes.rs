//! The caches' byte counts against the heap they take.
//!
//! The register cache and the proposer's fast-path state are bounded in bytes, and a
//! node's memory is planned from those bounds (docs/OPERATIONS.md, "Sizing memory and
//! disk"), so their counts must not fall short of what the entries take. This binary
//! counts every allocation (its own global allocator, hence one test alone in its file)
//! and compares a cluster whose caches keep everything with one whose caches keep
//! nothing, after the same writes.

use memo_engine::testing::Direct;
use memo_engine::{Instant, Request, RequestId};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

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
    let mut cluster = Direct::new(3, 64, |cfg| {
        cfg.register_cache_bytes_max = register_cache;
        cfg.proposer_bytes_max = proposer;
        cfg.proposer_keys_max = if proposer == 0 { 0 } else { usize::MAX };
    });
    let names: Vec<String> = (0..keys).map(|i| format!("key-{i:012}")).collect();
    let primaries: Vec<usize> = names.iter().map(|k| cluster.primary(k)).collect();
    let mut answered = 0;
    for i in 0..keys * passes {
        let k = i % keys;
        let at = Instant::from_nanos(1_000 + 5_000 * i as u64);
        let request = Request::upsert(names[k].clone(), vec![7u8; 100]);
        answered += cluster.run(primaries[k], RequestId(i as u64), request, at);
    }
    assert_eq!(answered, keys * passes, "every write answered");
    let nodes = &cluster.nodes;
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
